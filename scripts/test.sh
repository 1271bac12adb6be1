#!/usr/bin/env bash
# Runs wisp's whole test suite: unit, property and end-to-end tests (the
# end-to-end tests start the real `wisp` binary, so it is built first),
# then the cgroup tests again in a pure cgroup v2 VM.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --locked
cargo test --locked "$@"
# The cgroup v2 path on a real v2 kernel, in a VM (the host may be v1 or
# hybrid; see CONTRIBUTING.md). Not when only some tests were asked for.
if [ $# -eq 0 ]; then
  bash tests/cgroup-v2-vm.sh
fi
