#!/usr/bin/env bash
# The project's test command: every crate's tests on the CPU backend, and the device tests again
# on wgpu when a Vulkan driver is present (`.ci/run` installs Mesa's software driver).
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
exec cargo test --workspace --features seqtopk-backend/wgpu "$@"
