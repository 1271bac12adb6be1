#!/usr/bin/env bash
# The container start rate of two wisp builds, side by side: each round
# starts `wisp serve` from each binary in turn (the order swapped every
# round), deploys `ping`, warms up with 50 cold starts, then times N cold
# starts of copies of `ping` by 2 workers (`wisp bench ping --mode cold
# --concurrency 2`). Prints starts per second, request p50, p99 and max.
#
#   benches/scripts/rate-ab.sh WISP_A WISP_B [ROUNDS] [N]
#
# WISP_A and WISP_B are `wisp` binaries (copies of target/release/wisp
# built from the two commits); the artifacts come from
# ${CARGO_TARGET_DIR:-target}/release. Needs root.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/scripts/lib.sh
[ $# -ge 2 ] || { echo "usage: $0 WISP_A WISP_B [ROUNDS] [N]" >&2; exit 2; }
a=$1 b=$2 rounds=${3:-4} n=${4:-1000}
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
port=18954
dir=$(mktemp -d)
trap 'stop_wisp; rm -rf "$dir"' EXIT

one_build() { # ROUND BINARY
  serve_ping "$2" "$port" "$dir"
  "$wisp" bench ping --mode cold --requests 50 --concurrency 2 --path /ping >/dev/null
  sleep 2
  "$wisp" bench ping --mode cold --requests "$n" --concurrency 2 --path /ping --json "$dir/r.json" >/dev/null
  python3 - "$dir/r.json" "$1" "$(basename "$2")" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency"]
print(f"round {sys.argv[2]} {sys.argv[3]:<10} {r['throughput_rps']:7.1f} starts/s  "
      f"p50 {l['p50_ms']:6.2f} ms  p99 {l['p99_ms']:6.2f} ms  max {l['max_ms']:7.2f} ms  "
      f"statuses {r.get('statuses')}")
PY
  stop_wisp
}

alternate "$rounds" "$a" "$b" one_build
