# Sourced by the tools' setup-venv.sh scripts: one copy of how a tool's git-ignored venv is made.

# make_venv DIR PYTHON: creates DIR/.venv with PYTHON when it is missing, then installs the pinned
# packages of DIR/requirements.txt into it (after upgrading its pip).
make_venv() {
  local dir="$1" py="$2"
  if [ ! -x "$dir/.venv/bin/python" ]; then
    "$py" -m venv "$dir/.venv"
  fi
  "$dir/.venv/bin/pip" install --quiet --upgrade pip
  "$dir/.venv/bin/pip" install --quiet -r "$dir/requirements.txt"
}
