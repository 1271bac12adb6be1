#!/usr/bin/env bash
# Wake-ups per request of two wisp builds, side by side: for `hello` (wasm,
# a fresh instance per request), `hello-reuse` (--instance-reuse 1000) and a
# warm `ping` container, `wrk` for SECONDS while `perf stat` counts the
# gateway's CPU time, context switches and futex calls; the order of the
# builds is swapped every round. Counts per request are deterministic where
# timings on a shared host are not.
#
#   benches/scripts/wakes.sh WISP_A WISP_B [ROUNDS] [CONNECTIONS] [SECONDS]
#
# WISP_A and WISP_B are `wisp` binaries (copies of target/release/wisp
# built from the two commits); the artifacts come from
# ${CARGO_TARGET_DIR:-target}/release. Needs root (installs wrk and perf
# if missing) and curl.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/scripts/lib.sh
[ $# -ge 2 ] || { echo "usage: $0 WISP_A WISP_B [ROUNDS] [CONNECTIONS] [SECONDS]" >&2; exit 2; }
a=$1 b=$2 rounds=${3:-3} conns=${4:-1} seconds=${5:-4}
threads=$([ "$conns" -gt 1 ] && echo 2 || echo 1)
install_missing wrk perf
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
port=18953
dir=$(mktemp -d)
trap 'stop_wisp; rm -rf "$dir"' EXIT

one_build() { # ROUND BINARY
  rm -rf "$dir"; mkdir -p "$dir"
  export WISP_GATEWAY=http://127.0.0.1:$port WISP_DATA_DIR=$dir
  wisp=$2
  WISP_LOG=warn start_wisp $port "$dir/wisp.log"
  deploy_warm_set
  local f
  for f in hello hello-reuse ping/ping; do
    wrk -t1 -c"$conns" -d1s "$WISP_GATEWAY/function/$f" >/dev/null
    perf stat -x, -e task-clock,context-switches,syscalls:sys_enter_futex -p "$server" \
      -o "$dir/perf.txt" -- sleep "$seconds" &
    local perf=$!
    wrk -t"$threads" -c"$conns" -d"${seconds}s" --latency "$WISP_GATEWAY/function/$f" >"$dir/wrk.txt"
    wait "$perf"
    local n p50
    n=$(awk '/requests in/{print $1}' "$dir/wrk.txt")
    p50=$(awk '$1=="50%"{print $2}' "$dir/wrk.txt")
    awk -F, -v n="$n" -v f="$f" -v r="$1" -v b="$(basename "$2")" -v p="$p50" -v s="$seconds" '
      BEGIN { printf "round %s %-10s %-12s %8.0f req/s  p50 %-8s", r, b, f, n / s, p }
      $3 ~ /task-clock/ { printf "  %6.1f us CPU", 1000 * $1 / n }
      $3 ~ /context-switches/ { printf "  %5.2f cs", $1 / n }
      $3 ~ /futex/ { printf "  %5.2f futex" , $1 / n }
      END { print " a request" }' "$dir/perf.txt"
  done
  stop_wisp
}

alternate "$rounds" "$a" "$b" one_build
