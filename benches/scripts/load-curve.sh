#!/usr/bin/env bash
# Load and overload (issue 13, target 6), tried as a user would: for each
# function, `wisp bench NAME --mode curve` — its closed-loop peak (64
# workers, the median of three runs of SECONDS), then an open loop (at most
# 256 in flight) at 50/75/90/110/150 % of that peak, SECONDS each. Per
# step: goodput (200s per second), the share answered 429, other failures,
# p50/p99 from each request's due time.
# With OUT=DIR it keeps each curve as DIR/load-NAME.json and .svg.
#
#   benches/scripts/load-curve.sh [SECONDS]            # default 5 per step
#   FUNCTIONS="ping ping-max" OUT=docs benches/scripts/load-curve.sh
#
# Functions: `ping` (container, defaults: concurrency 8, max 10),
# `ping-max` (the same with --max 200), `hello` (wasm), and the anchor
# `proxy`: the minimal hyper proxy in front of the ping binary run straight
# on the host, loaded by the same generator (`wisp bench --url`) — what
# this host and generator give a server with nothing of wisp's in its path.
# Needs root, curl and a release build (binaries from
# ${CARGO_TARGET_DIR:-target}/release).
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/scripts/lib.sh
seconds=${1:-5}
functions=${FUNCTIONS:-ping ping-max hello proxy}
steps=${STEPS:-50,75,90,110,150}
dir=$(mktemp -d)
out=${OUT:-$dir}
port=18951
export WISP_GATEWAY=http://127.0.0.1:$port WISP_DATA_DIR=$dir
anchor_pids=()
trap 'stop_wisp; kill "${anchor_pids[@]}" 2>/dev/null; rm -rf "$dir" "$dir.log"' EXIT
WISP_LOG=warn start_wisp $port "$dir.log"
start_anchor $((port + 1)) $((port + 2))

"$wisp" deploy ping --image "$(artifact ping-docker)" >/dev/null
"$wisp" deploy ping-max --image "$(artifact ping-docker)" --max 200 >/dev/null
"$wisp" deploy hello "$(artifact hello)" >/dev/null

path_of() { case $1 in ping*) echo /ping ;; *) echo / ;; esac; }
instances() {
  curl -fs -H "Authorization: Bearer $(cat "$WISP_DATA_DIR/token")" "$WISP_GATEWAY/system/function/$1" |
    sed -n 's/.*"availableReplicas":\([0-9]*\).*/\1/p'
}
for f in $functions; do
  if [ "$f" = proxy ]; then
    target=(--url "http://127.0.0.1:$((port + 2))/ping")
  else
    target=("$f" --path "$(path_of "$f")")
  fi
  "$wisp" bench "${target[@]}" --mode curve --steps "$steps" --duration "${seconds}s" \
    --json "$out/load-$f.json" --plot "$out/load-$f.svg"
  [ "$f" = proxy ] || echo "instances of $f afterwards: $(instances "$f")"
  echo
  sleep 1
done
