#!/usr/bin/env bash
# Latency of the first request after `wisp serve` starts (a cold start: the
# function's precompiled code is mapped and linked on that request), repeated
# N times with a fresh server each time. Prints the p50, p99 and mean of the
# client-side time and of the server's reported start phase.
#
#   benches/scripts/first-request.sh [N]
#
# Needs curl and a release build (cargo build --release -p wisp -p
# wisp-function-artifacts; binaries from ${CARGO_TARGET_DIR:-target}/release).
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/scripts/lib.sh
n=${1:-30}
hello=$(artifact hello)
dir=$(mktemp -d)
port=18931
trap 'stop_wisp; rm -rf "$dir"' EXIT

WISP_LOG=warn start_wisp $port /dev/null --data-dir "$dir"
WISP_GATEWAY=http://127.0.0.1:$port WISP_DATA_DIR=$dir "$wisp" deploy hello "$hello" >/dev/null
stop_wisp

total=(); phase=()
for _ in $(seq "$n"); do
  WISP_LOG=warn start_wisp $port /dev/null --data-dir "$dir"
  out=$(curl -s -o /dev/null -D - -w 'TOTAL %{time_total}\n' "http://127.0.0.1:$port/function/hello")
  stop_wisp
  total+=("$(awk '/^TOTAL/{printf "%.3f", $2*1000}' <<<"$out")")
  phase+=("$(sed -n 's/.*start;dur=\([0-9.]*\).*/\1/p' <<<"$out" | tr -d '\r')")
done

echo "first request, client side (curl time_total): $(printf '%s\n' "${total[@]}" | stats)"
echo "server-reported start phase (Server-Timing):   $(printf '%s\n' "${phase[@]}" | stats)"
