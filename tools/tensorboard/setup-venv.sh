#!/usr/bin/env bash
# Create tools/tensorboard/.venv (git-ignored) with the pinned TensorBoard in requirements.txt.
# Needs Python 3 and access to PyPI (~30 MB download). Only the optional compatibility check
# (check_events.py, and the Rust test that runs it when this venv exists) uses it; `.ci/run` makes
# it so that CI runs that test.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"
if [ ! -x "$HERE/.venv/bin/python" ]; then
  "$PY" -m venv "$HERE/.venv"
fi
"$HERE/.venv/bin/pip" install --quiet --upgrade pip
"$HERE/.venv/bin/pip" install --quiet -r "$HERE/requirements.txt"
"$HERE/.venv/bin/python" -c "import tensorboard; print('tensorboard', tensorboard.__version__)"
