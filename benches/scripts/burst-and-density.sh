#!/usr/bin/env bash
# Issue 4's measurements: a burst of N concurrent first requests to a
# function at zero instances (the `ping` container and the `hello` wasm
# component), the host memory of one idle pre-warmed container, and the
# gateway's memory with 1,000 deployed idle functions. The bursts are
# `wisp bench --mode burst`, which sends them to a fresh copy of the
# function and removes it afterwards. Needs root, curl and a release build
# (cargo build --release -p wisp -p wisp-function-artifacts; binaries from
# ${CARGO_TARGET_DIR:-target}/release).
#
#   benches/scripts/burst-and-density.sh [N]
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/scripts/lib.sh
n=${1:-100}
dir=$(mktemp -d)
port=18933
export WISP_GATEWAY=http://127.0.0.1:$port WISP_DATA_DIR=$dir
trap 'stop_wisp; rm -rf "$dir" "$dir.log"' EXIT
WISP_LOG=warn start_wisp $port "$dir.log"
rss() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
# Unique set size: pages only this process holds (what killing it frees).
uss() { awk '/^Private_(Clean|Dirty):/{s+=$2} END{print s}' "/proc/$1/smaps_rollup"; }

"$wisp" deploy ping --image "$(artifact ping-docker)" >/dev/null
"$wisp" deploy hello "$(artifact hello)" >/dev/null
echo "== burst from zero: $n concurrent first requests"
echo "-- ping (container, concurrency 8, max 10)"
"$wisp" bench ping --mode burst --concurrency "$n" --path /ping
echo "-- hello (wasm)"
"$wisp" bench hello --mode burst --concurrency "$n"

echo "== idle memory of one pre-warmed container instance (ping, --min 1)"
"$wisp" deploy idle --image "$(artifact ping-docker)" --min 1 >/dev/null
sleep 1
cg=$(find /sys/fs/cgroup/memory/ /sys/fs/cgroup/ -maxdepth 6 -type d -name "sandbox-$server-*" 2>/dev/null | head -20)
for d in $cg; do
  procs=$(cat "$d/cgroup.procs" 2>/dev/null | tr '\n' ' ')
  [ -n "$procs" ] || continue
  comms=$(for p in $procs; do cat /proc/$p/comm; done | tr '\n' ' ')
  case "$comms" in *ping*) ;; *) continue ;; esac
  usage=$(cat "$d/memory.usage_in_bytes" 2>/dev/null || cat "$d/memory.current")
  handler=0; init_uss=0; init_rss=0
  for p in $procs; do
    if [ "$(cat /proc/$p/comm)" = ping ]; then handler=$(rss "$p"); else init_uss=$(uss "$p"); init_rss=$(rss "$p"); fi
  done
  echo "processes: $comms"
  echo "cgroup memory charged: $((usage / 1024)) KiB (handler, init, scratch tmpfs, kernel objects)"
  echo "handler RSS $handler KiB; init: $init_uss KiB unique ($init_rss KiB RSS, the rest shared copy-on-write with the spawner)"
  break
done

echo "== gateway memory with 1000 deployed idle functions"
before=$(rss $server)
deployed=$("$wisp" ls | awk 'NR > 1' | wc -l)
digest=$(image_of hello)
for i in $(seq 1000); do deploy_digest "h$i" "$digest"; done
sleep 2
after=$(rss $server)
echo "gateway RSS: $before KiB with $deployed functions → $after KiB with $((deployed + 1000)) ($(( (after - before) * 1024 / 1000 )) bytes per idle function)"
