#!/usr/bin/env bash
# Create tools/study/.venv (git-ignored) with the pinned packages of requirements.txt, which
# plot.py uses to draw docs/study/*.png from the runs' TensorBoard event files. Needs PyPI.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../venv.sh
source "$HERE/../venv.sh"
make_venv "$HERE" "${PYTHON:-python3}"
