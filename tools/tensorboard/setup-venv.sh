#!/usr/bin/env bash
# Create tools/tensorboard/.venv (git-ignored) with the pinned TensorBoard in requirements.txt.
# Needs Python 3 and access to PyPI (~30 MB download). Only the optional compatibility check
# (check_events.py, and the Rust test that runs it when this venv exists) uses it; `.ci/run` makes
# it so that CI runs that test.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../venv.sh
source "$HERE/../venv.sh"
make_venv "$HERE" "${PYTHON:-python3}"
"$HERE/.venv/bin/python" -c "import tensorboard; print('tensorboard', tensorboard.__version__)"
