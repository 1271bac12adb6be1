#!/usr/bin/env bash
# Two wisp builds side by side on the warm container hop: `ping` (one
# instance, 256 requests at once) through each build in turn, the order
# swapped every round, with the minimal hyper proxy and `ping` direct
# measured in the same rounds. Prints p50, p99 and req/s of each, and the
# gateway's CPU time and context switches per request (perf stat, if
# installed).
#
#   benches/scripts/hop-ab.sh WISP_A WISP_B [ROUNDS] [CONNECTIONS] [SECONDS]
#
# WISP_A and WISP_B are `wisp` binaries (copies of target/release/wisp
# built from the two commits); the artifacts and the proxy come from
# ${CARGO_TARGET_DIR:-target}/release. Needs curl and root (installs wrk
# if missing; perf stat is used if installed).
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/scripts/lib.sh
[ $# -ge 2 ] || { echo "usage: $0 WISP_A WISP_B [ROUNDS] [CONNECTIONS] [SECONDS]" >&2; exit 2; }
a=$1 b=$2 rounds=${3:-5} conns=${4:-1} seconds=${5:-5}
install_missing wrk
port=18952
dir=$(mktemp -d)
anchor_pids=()
trap 'kill "${anchor_pids[@]}" 2>/dev/null; stop_wisp; rm -rf "$dir"' EXIT
start_anchor 18941 18942
sleep 1

line() { printf 'round %s %-6s p50 %7.3f ms  p99 %7.3f ms  %8.0f req/s%s\n' "$@"; }
through() { # ROUND LABEL BINARY
  rm -rf "$dir"; mkdir -p "$dir"
  export WISP_GATEWAY=http://127.0.0.1:$port WISP_DATA_DIR=$dir
  wisp=$3
  WISP_LOG=warn start_wisp $port "$dir/wisp.log"
  "$wisp" deploy ping --image "$(artifact ping-docker)" --max 1 --concurrency 256 >/dev/null
  wrk_run "$WISP_GATEWAY/function/ping/ping" "$conns" 2 >/dev/null
  local extra="" p50 p99 rps perf=""
  if command -v perf >/dev/null; then
    perf stat -x, -e task-clock,context-switches -p "$server" -o "$dir/perf.txt" -- sleep "$seconds" &
    perf=$!
  fi
  read -r p50 p99 rps < <(wrk_run "$WISP_GATEWAY/function/ping/ping" "$conns" "$seconds")
  [ -z "$perf" ] || wait "$perf" || true
  if [ -s "$dir/perf.txt" ]; then
    extra=$(awk -F, -v n="$(awk -v r="$rps" -v s="$seconds" 'BEGIN {print r * s}')" '
      $3=="task-clock" {cpu=$1} $3=="context-switches" {cs=$1}
      END {printf "  gateway %.1f us CPU, %.2f context switches a request", cpu * 1000 / n, cs / n}' "$dir/perf.txt")
  fi
  line "$1" "$2" "$p50" "$p99" "$rps" "$extra"
  stop_wisp
}
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then through "$r" A "$a"; through "$r" B "$b"
  else through "$r" B "$b"; through "$r" A "$a"; fi
  read -r p50 p99 rps < <(wrk_run http://127.0.0.1:18942/ping "$conns" "$seconds"); line "$r" proxy "$p50" "$p99" "$rps" ""
  read -r p50 p99 rps < <(wrk_run http://127.0.0.1:18941/ping "$conns" "$seconds"); line "$r" direct "$p50" "$p99" "$rps" ""
done
