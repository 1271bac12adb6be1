#!/usr/bin/env bash
# Runs wisp's whole test suite: unit, property and end-to-end tests (the
# end-to-end tests start the real `wisp` binary, so it is built first).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --locked
cargo test --locked "$@"
