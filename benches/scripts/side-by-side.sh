#!/usr/bin/env bash
# Warm throughput of two wisp builds served at the same time: both servers
# run side by side with `hello` (wasm, a fresh instance per request),
# `hello-reuse` (--instance-reuse 1000) and a warm `ping` container
# deployed, and `wrk` alternates between them every SECONDS, the order
# swapped each round. A drift of the host then hits both builds within
# seconds of each other, which rounds of minutes (`wakes.sh`) cannot
# promise. Prints req/s per round and the ratio B/A per round, with the
# median of the ratios.
#
#   benches/scripts/side-by-side.sh WISP_A WISP_B [ROUNDS] [CONNECTIONS] [SECONDS]
#
# WISP_A and WISP_B are `wisp` binaries (copies of target/release/wisp
# built from the two commits); the artifacts come from
# ${CARGO_TARGET_DIR:-target}/release. Needs root (installs wrk if
# missing) and curl.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/scripts/lib.sh
[ $# -ge 2 ] || { echo "usage: $0 WISP_A WISP_B [ROUNDS] [CONNECTIONS] [SECONDS]" >&2; exit 2; }
a=$1 b=$2 rounds=${3:-8} conns=${4:-64} seconds=${5:-2}
threads=$([ "$conns" -gt 1 ] && echo 2 || echo 1)
install_missing wrk
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
port_a=18983 port_b=18984
dir=$(mktemp -d)
servers=()
trap 'kill "${servers[@]}" 2>/dev/null; wait "${servers[@]}" 2>/dev/null; rm -rf "$dir"' EXIT

serve() { # BINARY PORT
  wisp=$1
  mkdir -p "$dir/$2"
  export WISP_GATEWAY=http://127.0.0.1:$2 WISP_DATA_DIR=$dir/$2
  WISP_LOG=warn start_wisp "$2" "$dir/$2.log"
  servers+=("$server")
  server=
  deploy_warm_set
}
serve "$a" $port_a
serve "$b" $port_b

rps() { # PORT FUNCTION
  wrk -t"$threads" -c"$conns" -d"${seconds}s" "http://127.0.0.1:$1/function/$2" | awk '/Requests\/sec/{print $2}'
}
for f in hello hello-reuse ping/ping; do
  rps $port_a $f >/dev/null
  rps $port_b $f >/dev/null
  ratios=()
  for r in $(seq "$rounds"); do
    if [ $((r % 2)) = 1 ]; then ra=$(rps $port_a $f); rb=$(rps $port_b $f)
    else rb=$(rps $port_b $f); ra=$(rps $port_a $f); fi
    ratio=$(awk -v a="$ra" -v b="$rb" 'BEGIN { printf "%.3f", b / a }')
    ratios+=("$ratio")
    printf 'round %s %-12s A %8.0f req/s  B %8.0f req/s  B/A %s\n' "$r" "$f" "$ra" "$rb" "$ratio"
  done
  printf '%-12s B/A per round: %s; median %s\n' "$f" "${ratios[*]}" "$(printf '%s\n' "${ratios[@]}" | pct 0.5)"
done
