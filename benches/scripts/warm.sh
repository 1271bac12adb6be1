#!/usr/bin/env bash
# Warm requests through wisp, by wrk: `hello` (wasm, a fresh instance per
# request) with 64 and 1 connections, and `ping` (a warm container, one
# instance taking 256 requests at once) with 64 and 1. Prints p50, p99 and
# requests per second of each. Quick enough to run before and after a
# change, alternating the two builds (CARGO_TARGET_DIR=A, then B, …).
#
#   benches/scripts/warm.sh [SECONDS]
#
# Needs wrk, curl, root (for ping) and a release build (binaries from
# ${CARGO_TARGET_DIR:-target}/release).
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/scripts/lib.sh
seconds=${1:-5}
dir=$(mktemp -d)
port=18935
export WISP_GATEWAY=http://127.0.0.1:$port WISP_DATA_DIR=$dir
trap 'stop_wisp; rm -rf "$dir"' EXIT

WISP_LOG=warn start_wisp $port "$dir/wisp.log"
"$wisp" deploy hello "$(artifact hello)" >/dev/null
"$wisp" deploy ping --image "$(artifact ping-docker)" --max 1 --concurrency 256 >/dev/null
# Warm both up: instances started, connections made.
wrk_run "$WISP_GATEWAY/function/hello/" 8 1 >/dev/null
wrk_run "$WISP_GATEWAY/function/ping/ping" 8 1 >/dev/null

row() {
  local p50 p99 rps
  read -r p50 p99 rps < <(wrk_run "$2" "$3" "$seconds")
  printf '%-34s p50 %7.3f ms  p99 %7.3f ms  %9.0f req/s\n' "$1" "$p50" "$p99" "$rps"
}
row "hello (wasm), 64 connections" "$WISP_GATEWAY/function/hello/" 64
row "hello (wasm), 1 connection" "$WISP_GATEWAY/function/hello/" 1
row "ping (container), 64 connections" "$WISP_GATEWAY/function/ping/ping" 64
row "ping (container), 1 connection" "$WISP_GATEWAY/function/ping/ping" 1
