#!/usr/bin/env bash
# Container starts on a host with many mounts (a Kubernetes node or a
# Docker host has hundreds), for two wisp builds side by side: each round
# runs both builds (the order swapped every round) on the host as it is,
# then again with K extra tmpfs mounts (unmounted after the round). Each
# run starts `wisp serve`, deploys `ping`, warms up with 50 cold starts,
# then times N back-to-back cold starts by one worker (`wisp bench ping
# --mode cold --concurrency 1`) and 1,000 by two (the start rate).
#
#   benches/scripts/host-mounts.sh WISP_A WISP_B [ROUNDS] [K] [N]
#
# WISP_A and WISP_B are `wisp` binaries (copies of target/release/wisp
# built from the two commits); the artifacts come from
# ${CARGO_TARGET_DIR:-target}/release. Needs root.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/scripts/lib.sh
[ $# -ge 2 ] || { echo "usage: $0 WISP_A WISP_B [ROUNDS] [K] [N]" >&2; exit 2; }
a=$1 b=$2 rounds=${3:-2} k=${4:-300} n=${5:-300}
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
port=18955
dir=$(mktemp -d)
many=$(mktemp -d)
unmount_all() { for i in $(seq "$k"); do umount "$many/$i" 2>/dev/null || true; done; }
trap 'stop_wisp; unmount_all; rm -rf "$dir" "$many"' EXIT

summary() { # JSON → "p50 / p99 ms, rootfs p50, starts/s"
  python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l, ph = r["latency"], r.get("phases", {})
root = ph.get("rootfs", {}).get("p50_ms", float("nan"))
print(f"p50 {l['p50_ms']:5.2f} / p99 {l['p99_ms']:6.2f} ms, rootfs p50 {root:4.2f} ms, {r['throughput_rps']:6.1f} starts/s")
PY
}

one_build() { # ROUND BINARY
  serve_ping "$2" "$port" "$dir"
  "$wisp" bench ping --mode cold --requests 50 --concurrency 1 --path /ping >/dev/null
  sleep 1
  "$wisp" bench ping --mode cold --requests "$n" --concurrency 1 --path /ping --json "$dir/one.json" >/dev/null
  "$wisp" bench ping --mode cold --requests 1000 --concurrency 2 --path /ping --json "$dir/two.json" >/dev/null
  printf 'round %s  %4s mounts  %-16s 1 worker: %s | 2 workers: %s\n' "$1" "$(wc -l </proc/self/mountinfo)" \
    "$(basename "$2")" "$(summary "$dir/one.json")" "$(summary "$dir/two.json" | sed 's/.*, //')"
  stop_wisp
}

for r in $(seq "$rounds"); do
  first=$a second=$b
  [ $((r % 2)) = 1 ] || { first=$b second=$a; }
  one_build "$r" "$first"; one_build "$r" "$second"
  for i in $(seq "$k"); do mkdir -p "$many/$i"; mount -t tmpfs -o size=64k tmpfs "$many/$i"; done
  one_build "$r" "$second"; one_build "$r" "$first"
  unmount_all
done
