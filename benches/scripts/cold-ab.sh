#!/usr/bin/env bash
# Sequential container cold starts (compare.sh's "container cold start"
# row) of two wisp builds, side by side: each round starts `wisp serve`
# from each binary in turn (the order swapped every round), deploys `ping`,
# warms up with 20 cold starts, then times N cold starts of copies of
# `ping` by one worker (`wisp bench ping --mode cold`, which deletes each
# copy after its call, in the background). Prints each run's client p50
# and p99 and the server's start p50 and p99; then the medians over the
# rounds and the median of the per-round B/A ratios of the client p50.
#
#   benches/scripts/cold-ab.sh WISP_A WISP_B [ROUNDS] [N]
#
# WISP_A and WISP_B are `wisp` binaries (copies of target/release/wisp
# built from the two commits); the artifacts come from
# ${CARGO_TARGET_DIR:-target}/release. Needs root.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/scripts/lib.sh
[ $# -ge 2 ] || { echo "usage: $0 WISP_A WISP_B [ROUNDS] [N]" >&2; exit 2; }
a=$1 b=$2 rounds=${3:-10} n=${4:-300}
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
port=18957
dir=$(mktemp -d)
trap 'stop_wisp; rm -rf "$dir"' EXIT
runs=$dir/runs
: >"$runs"

one_build() { # ROUND BINARY
  serve_ping "$2" "$port" "$dir/data"
  "$wisp" bench ping --mode cold --requests 20 --path /ping >/dev/null
  "$wisp" bench ping --mode cold --requests "$n" --path /ping --json "$dir/run.json" >/dev/null
  stop_wisp
  local side=B
  [ "$2" = "$a" ] && side=A
  python3 - "$dir/run.json" "$1" "$side" <<'PY' | tee -a "$runs"
import json, sys
r = json.load(open(sys.argv[1]))
start = r["phases"]["start"]
print(f"round {sys.argv[2]} {sys.argv[3]} client p50 {r['latency']['p50_ms']:.3f} p99 {r['latency']['p99_ms']:.3f} ms"
      f"  start p50 {start['p50_ms']:.3f} p99 {start['p99_ms']:.3f} ms")
PY
}

alternate "$rounds" "$a" "$b" one_build
python3 - "$runs" <<'PY'
import sys, statistics as st, collections
runs = [l.split() for l in open(sys.argv[1])]
by = collections.defaultdict(list)
rounds = collections.defaultdict(dict)
for r in runs:
    by[r[2]].append((float(r[5]), float(r[7]), float(r[11]), float(r[13])))
    rounds[r[1]][r[2]] = float(r[5])
for side in ("A", "B"):
    v = by[side]
    print(f"{side}: median client p50 {st.median(x[0] for x in v):.3f} p99 {st.median(x[1] for x in v):.3f} ms,"
          f" start p50 {st.median(x[2] for x in v):.3f} p99 {st.median(x[3] for x in v):.3f} ms ({len(v)} runs)")
ratios = [d["B"] / d["A"] for d in rounds.values() if len(d) == 2]
print(f"B/A client p50 per round: median {st.median(ratios):.3f} ({' '.join(f'{x:.2f}' for x in ratios)})")
PY
