#!/usr/bin/env bash
# Create tools/study/.venv (git-ignored) with the pinned packages of requirements.txt, which
# plot.py uses to draw docs/study/*.png from the runs' TensorBoard event files. Needs PyPI.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"
if [ ! -x "$HERE/.venv/bin/python" ]; then
  "$PY" -m venv "$HERE/.venv"
fi
"$HERE/.venv/bin/pip" install --quiet --upgrade pip
"$HERE/.venv/bin/pip" install --quiet -r "$HERE/requirements.txt"
