#!/usr/bin/env bash
# Issue 4's measurements: a burst of N concurrent first requests to a
# function at zero instances (the `ping` container and the `hello` wasm
# component), the host memory of one idle pre-warmed container, and the
# gateway's memory with 1,000 deployed idle functions. Needs root, curl and
# a release build (cargo build --release -p wisp -p wisp-function-artifacts
# -p wisp-benches).
#
#   benches/scripts/burst-and-density.sh [N]
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-100}
wisp=target/release/wisp
burst=target/release/burst
artifacts() { target/release/wisp-function-artifacts | awk -v k="$1" '$1==k{print $2}'; }
dir=$(mktemp -d)
port=18933
export WISP_GATEWAY=http://127.0.0.1:$port WISP_DATA_DIR=$dir
WISP_LOG=warn "$wisp" serve --listen 127.0.0.1:$port >"$dir.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$dir" "$dir.log"' EXIT
until curl -fs "$WISP_GATEWAY/healthz" >/dev/null; do sleep 0.01; done
rss() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
# Unique set size: pages only this process holds (what killing it frees).
uss() { awk '/^Private_(Clean|Dirty):/{s+=$2} END{print s}' "/proc/$1/smaps_rollup"; }

"$wisp" deploy ping --image "$(artifacts ping-docker)" >/dev/null
"$wisp" deploy hello "$(artifacts hello)" >/dev/null
echo "== burst from zero: $n concurrent first requests"
echo "ping (container, concurrency 8, max 10): $("$burst" "$WISP_GATEWAY/function/ping/ping" "$n")"
echo "   instances afterwards: $("$wisp" ls | awk '$1=="ping"{print $4}')"
echo "hello (wasm):                            $("$burst" "$WISP_GATEWAY/function/hello/" "$n")"

echo "== idle memory of one pre-warmed container instance (ping, --min 1)"
"$wisp" deploy idle --image "$(artifacts ping-docker)" --min 1 >/dev/null
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
token=$(cat "$dir/token")
digest=$(curl -fs -H "Authorization: Bearer $token" "$WISP_GATEWAY/system/function/hello" | sed -n 's/.*"image":"\(sha256:[0-9a-f]*\)".*/\1/p')
for i in $(seq 1000); do
  curl -fs -o /dev/null -H "Authorization: Bearer $token" -d "{\"service\":\"h$i\",\"image\":\"$digest\"}" "$WISP_GATEWAY/system/functions"
done
sleep 2
after=$(rss $server)
echo "gateway RSS: $before KiB with 4 functions → $after KiB with 1004 ($(( (after - before) * 1024 / 1000 )) bytes per idle function)"
