#!/usr/bin/env bash
# What the open loop's pacing costs the bench: `wisp bench --url` against the
# minimal hyper proxy in front of the ping binary on the host, at RATE req/s
# for 5 s per pacing; the bench's and the proxy's CPU per request and the
# bench's context switches per request over the middle 3 s (from /proc), with
# the run's p50 and p99.
#
#   benches/scripts/pacing-cost.sh RATE [PACING…]     # default: group exact tick
#
# Needs a release build (binaries from ${CARGO_TARGET_DIR:-target}/release).
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/scripts/lib.sh
rate=$1
shift
[ $# -gt 0 ] || set -- group exact tick
work=$(mktemp -d)
anchor_pids=()
trap 'kill "${anchor_pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT
start_anchor 18971 18972
proxy_pid=${anchor_pids[1]}
sleep 0.5
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
switches() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}'; }
for pacing in "$@"; do
  "$wisp" bench --url http://127.0.0.1:18972/ping --mode rate --rate "$rate" --duration 5s \
    --pacing "$pacing" --json "$work/run.json" >/dev/null 2>&1 &
  bench=$!
  sleep 1.5
  b0=$(cpu $bench) p0=$(cpu $proxy_pid) s0=$(switches $bench)
  sleep 3
  b1=$(cpu $bench) p1=$(cpu $proxy_pid) s1=$(switches $bench)
  wait $bench
  python3 - "$pacing" "$rate" "$b0" "$b1" "$p0" "$p1" "$s0" "$s1" "$work/run.json" <<'PY'
import json, os, sys
pacing, rate = sys.argv[1], float(sys.argv[2])
b0, b1, p0, p1, s0, s1 = map(int, sys.argv[3:9])
run = json.load(open(sys.argv[9]))
ticks = os.sysconf("SC_CLK_TCK")
n = rate * 3
lat = run["latency"]
print(f"{pacing:6} {rate:8.0f} req/s: bench {(b1 - b0) / ticks * 1e6 / n:5.1f} µs/request, "
      f"proxy {(p1 - p0) / ticks * 1e6 / n:5.1f} µs/request, bench context switches/request "
      f"{(s1 - s0) / n:.2f}; p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms, "
      f"{run['throughput_rps']:.0f} req/s answered")
PY
done
