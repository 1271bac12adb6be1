#!/usr/bin/env bash
# Latency of the first request after `wisp serve` starts (a cold start: the
# function's precompiled code is mapped and linked on that request), repeated
# N times with a fresh server each time. Prints each sample and the median
# and p99 of the client-side time and of the server's reported start phase.
#
#   benches/scripts/first-request.sh [N]     (needs target/release/wisp)
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-30}
wisp=target/release/wisp
hello=$(target/release/wisp-function-artifacts | awk '$1=="hello"{print $2}')
dir=$(mktemp -d)
port=18931
trap 'rm -rf "$dir"' EXIT

start_server() {
  WISP_LOG=warn "$wisp" serve --listen 127.0.0.1:$port --data-dir "$dir" >/dev/null 2>&1 &
  server=$!
  until curl -fs "http://127.0.0.1:$port/healthz" >/dev/null; do sleep 0.01; done
}

start_server
WISP_GATEWAY=http://127.0.0.1:$port WISP_DATA_DIR=$dir "$wisp" deploy hello "$hello" >/dev/null
kill $server; wait $server || true

total=(); phase=()
for _ in $(seq "$n"); do
  start_server
  out=$(curl -s -o /dev/null -D - -w 'TOTAL %{time_total}\n' "http://127.0.0.1:$port/function/hello")
  kill $server; wait $server || true
  total+=("$(awk '/^TOTAL/{printf "%.3f", $2*1000}' <<<"$out")")
  phase+=("$(sed -n 's/.*start;dur=\([0-9.]*\).*/\1/p' <<<"$out" | tr -d '\r')")
done

stats() { sort -n | awk '{a[NR]=$1} END {p99=int(NR*0.99+0.999); if (p99>NR) p99=NR; printf "median %.3f ms  p99 %.3f ms  (n=%d)\n", a[int((NR+1)/2)], a[p99], NR}'; }
echo "first request, client side (curl time_total): $(printf '%s\n' "${total[@]}" | stats)"
echo "server-reported start phase (Server-Timing):   $(printf '%s\n' "${phase[@]}" | stats)"
