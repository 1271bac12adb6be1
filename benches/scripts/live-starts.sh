#!/usr/bin/env bash
# What a container start costs with other sandboxes running, for two wisp
# builds side by side: each round and each count K of warm sandboxes starts
# `wisp serve` from each binary in turn (the order swapped every round),
# deploys `ping`, deploys K copies of it and calls each once (K warm
# sandboxes, idle), then runs 3,000 cold starts of further copies by 2
# workers (`wisp bench ping --mode cold --concurrency 2`) and, for 2.5 s in
# the middle of that run, counts the starts (the server's
# `wisp_cold_start_phase_seconds_count`) and the CPU time of the server's
# process tree (gateway, spawner and the sandboxes it reaped) and of the
# whole machine. Prints starts/s and CPU milliseconds per start.
#
#   benches/scripts/live-starts.sh WISP_A WISP_B [ROUNDS] [K…]
#
# WISP_A and WISP_B are `wisp` binaries (copies of target/release/wisp
# built from the two commits); K defaults to "0 600". Needs root.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/scripts/lib.sh
[ $# -ge 2 ] || { echo "usage: $0 WISP_A WISP_B [ROUNDS] [K…]" >&2; exit 2; }
a=$1 b=$2 rounds=${3:-3}
shift $(( $# < 3 ? $# : 3 ))
counts=${*:-0 600}
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
port=18955
dir=$(mktemp -d)
trap 'stop_wisp; rm -rf "$dir"' EXIT

# CPU clock ticks of the server's tree: the gateway, and the spawner with
# the sandboxes it reaped (their time is added to its children's).
tree_ticks() { awk '{t += $14+$15+$16+$17} END {print t}' "/proc/$server/stat" "/proc/$1/stat"; }
busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
starts() {
  curl -fs "http://127.0.0.1:$port/metrics" |
    awk '/^wisp_cold_start_phase_seconds_count\{backend="container",phase="exec"\}/{print $2}'
}

one_build() { # ROUND BINARY
  serve_ping "$2" "$port" "$dir"
  "$wisp" bench ping --mode cold --requests 50 --concurrency 2 --path /ping >/dev/null
  local digest i
  digest=$(image_of ping)
  for i in $(seq 1 "$warm"); do
    deploy_digest "warm-$i" "$digest"
    curl -fs -o /dev/null "http://127.0.0.1:$port/function/warm-$i/ping"
  done
  local spawner
  spawner=$(pgrep -P "$server" -x wisp-spawner | head -1)
  "$wisp" bench ping --mode cold --requests 3000 --concurrency 2 --path /ping >/dev/null &
  local bench=$! s0
  s0=$(starts)
  # The copies are deployed first; measure once they are being called.
  until [ "$(starts)" != "$s0" ]; do sleep 0.05; done
  sleep 0.5
  local c0 m0 n0 t0 c1 m1 n1 t1
  c0=$(tree_ticks "$spawner") m0=$(busy_ticks) n0=$(starts) t0=$(date +%s.%N)
  sleep 2.5
  c1=$(tree_ticks "$spawner") m1=$(busy_ticks) n1=$(starts) t1=$(date +%s.%N)
  wait "$bench"
  awk -v r="$1" -v b="$(basename "$2")" -v k="$warm" -v tick="$(getconf CLK_TCK)" \
    -v n0="$n0" -v n1="$n1" -v t0="$t0" -v t1="$t1" -v c0="$c0" -v c1="$c1" -v m0="$m0" -v m1="$m1" \
    'BEGIN {
      n = n1 - n0
      printf "round %s %-12s warm %4s: %6.1f starts/s  server %6.3f ms/start  machine %6.3f ms/start\n",
        r, b, k, n / (t1 - t0), (c1 - c0) * 1000 / tick / n, (m1 - m0) * 1000 / tick / n
    }'
  stop_wisp
}

for warm in $counts; do
  alternate "$rounds" "$a" "$b" one_build
done
