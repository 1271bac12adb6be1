#!/usr/bin/env bash
# Load and overload (issue 13, target 6), tried as a user would: each
# function's closed-loop peak (`wisp bench --mode warm`, 64 workers), then
# an open loop (`wisp bench --mode rate`) at 50/75/90/110/150 % of it. Per
# step: goodput (200s per second), the share answered 429, any other
# failure, and p50/p99 of every answer measured from its due time. Writes
# one load-latency curve per function (SVG) when OUT is set.
#
#   benches/scripts/load-curve.sh [SECONDS]            # default 5 per step
#   FUNCTIONS="ping ping-max" OUT=docs benches/scripts/load-curve.sh
#
# Functions: `ping` (container, defaults: concurrency 8, max 10),
# `ping-max` (the same with --max 200), `hello` (wasm). Needs root, curl,
# python3 and a release build (binaries from ${CARGO_TARGET_DIR:-target}/release).
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/scripts/lib.sh
seconds=${1:-5}
functions=${FUNCTIONS:-ping ping-max hello}
steps=${STEPS:-50 75 90 110 150}
dir=$(mktemp -d)
port=18941
export WISP_GATEWAY=http://127.0.0.1:$port WISP_DATA_DIR=$dir
trap 'stop_wisp; rm -rf "$dir" "$dir.log"' EXIT
WISP_LOG=warn start_wisp $port "$dir.log"

"$wisp" deploy ping --image "$(artifact ping-docker)" >/dev/null
"$wisp" deploy ping-max --image "$(artifact ping-docker)" --max 200 >/dev/null
"$wisp" deploy hello "$(artifact hello)" >/dev/null

path_of() { case $1 in ping*) echo /ping ;; *) echo / ;; esac; }
instances() {
  curl -fs -H "Authorization: Bearer $(cat "$WISP_DATA_DIR/token")" "$WISP_GATEWAY/system/function/$1" |
    sed -n 's/.*"availableReplicas":\([0-9]*\).*/\1/p'
}

printf '%-9s %5s %9s %9s %7s %7s %9s %9s %9s\n' function load offered goodput "429 %" "other" "p50 ms" "p99 ms" instances
for f in $functions; do
  p=$(path_of "$f")
  "$wisp" bench "$f" --mode warm --concurrency 64 --duration "${seconds}s" --path "$p" --json "$dir/$f-peak.json" >/dev/null
  peak=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(round(r["statuses"].get("200",0)/r["elapsed_s"]))' "$dir/$f-peak.json")
  printf '%-9s %5s %9s %9s %7s %7s %9s %9s %9s\n' "$f" peak "-" "$peak" "" "" "" "" "$(instances "$f")"
  for s in $steps; do
    rate=$((peak * s / 100))
    "$wisp" bench "$f" --mode rate --rate "$rate" --duration "${seconds}s" --path "$p" --json "$dir/$f-$s.json" >/dev/null
    n=$(instances "$f")
    python3 - "$dir/$f-$s.json" "$f" "$s" "$rate" "${n:-?}" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
st = r["statuses"]; total = sum(st.values()) or 1
ok = st.get("200", 0); shed = st.get("429", 0); other = total - ok - shed
print("%-9s %4s%% %9s %9.0f %7.1f %7d %9.3f %9.3f %9s" % (sys.argv[2], sys.argv[3], sys.argv[4],
      ok / r["elapsed_s"], 100.0 * shed / total, other, r["latency"]["p50_ms"], r["latency"]["p99_ms"], sys.argv[5]))
EOF
    sleep 1
  done
done
if [ -n "${OUT:-}" ]; then
  python3 - "$dir" "$OUT" $functions <<'EOF'
import json, sys, os
d, out, fns = sys.argv[1], sys.argv[2], sys.argv[3:]
print("per-step JSON kept in", out)
for f in fns:
    rows = []
    for s in (50, 75, 90, 110, 150):
        p = os.path.join(d, f"{f}-{s}.json")
        if os.path.exists(p):
            rows.append((s, json.load(open(p))))
    json.dump([{"load": s, **r} for s, r in rows], open(os.path.join(out, f"load-{f}.json"), "w"), indent=1)
EOF
fi
