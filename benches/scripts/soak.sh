#!/usr/bin/env bash
# Soak: open-loop load (`wisp bench --mode rate`) on a wasm function, an
# HTTP container and a CGI container for SOAK_SECONDS (default 600) while
# functions are redeployed, scaled, their handlers killed and throwaway
# functions deployed and deleted. Reports the answers that were neither 2xx
# nor a deliberate 429, and the gateway's RSS and open file descriptors,
# the sandbox cgroups and the overlay mounts at the start and at the end
# (after everything scaled to zero): all must be flat or zero.
#
#   benches/scripts/soak.sh            # ten minutes
#   SOAK_SECONDS=60 benches/scripts/soak.sh
#
# Needs root, curl and a release build (binaries from
# ${CARGO_TARGET_DIR:-target}/release). Not a CI test: it takes minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/scripts/lib.sh
seconds=${SOAK_SECONDS:-600}
dir=$(mktemp -d)
port=18936
export WISP_GATEWAY=http://127.0.0.1:$port WISP_DATA_DIR=$dir
trap 'stop_wisp; rm -rf "$dir"' EXIT

WISP_LOG=warn start_wisp $port "$dir/wisp.log"
quiet() { "$@" >/dev/null; }
quiet "$wisp" deploy hello "$(artifact hello)"
quiet "$wisp" deploy ping --image "$(artifact ping-docker)" --idle-timeout 5s
quiet "$wisp" deploy echo --image "$(artifact cgi-echo-native-docker)" --protocol cgi --idle-timeout 5s

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$server/status"; }
fds() { find "/proc/$server/fd" -mindepth 1 -maxdepth 1 | wc -l; }
cgroups() { find /sys/fs/cgroup -maxdepth 7 -type d -name "sandbox-$server.*" 2>/dev/null | wc -l; }
mounts() { grep -c "$dir" /proc/self/mountinfo || true; }
snapshot() {
  printf '%-6s rss %7d KiB  fds %5d  sandbox cgroups %3d  mounts %3d\n' \
    "$1" "$(rss_kib)" "$(fds)" "$(cgroups)" "$(mounts)"
}

# Warm up, then let everything idle out: the baseline is a server that has
# served each kind once.
for f in hello ping echo; do curl -fs -o /dev/null "$WISP_GATEWAY/function/$f/"; done
sleep 8
start=$(snapshot start)

bench() {
  "$wisp" bench "$1" --mode rate --rate "$2" --concurrency 64 --duration "${seconds}s" \
    --json "$dir/$1.json" >"$dir/$1.out" 2>&1
}
bench hello 300 &
hello=$!
bench ping 100 &
ping=$!
bench echo 30 &
echo_=$!

# Churn until the load stops.
SECONDS=0
end=$seconds
round=0
trend=()
while [ $SECONDS -lt $end ]; do
  round=$((round + 1))
  case $((round % 4)) in
    0) quiet "$wisp" deploy hello "$(artifact hello)" ;;                 # a new revision
    1) quiet "$wisp" scale ping --min $((round % 3)) ;;                  # pre-warm, then not
    2) pkill -9 -x ping || true ;;                                       # a handler dies
    3) quiet "$wisp" deploy "tmp-$round" "$(artifact hello)"
       curl -fs -o /dev/null "$WISP_GATEWAY/function/tmp-$round/" || true
       quiet "$wisp" rm "tmp-$round" ;;
  esac
  sleep 5
  # A snapshot a minute, to tell a plateau from a leak.
  if [ $((round % 12)) -eq 0 ]; then trend+=("$(snapshot "${SECONDS}s")"); fi
done
wait $hello $ping $echo_ || true
quiet "$wisp" scale ping --min 0
sleep 8

echo "soak: $seconds s of open-loop load while redeploying, scaling and killing handlers"
for f in hello ping echo; do
  python3 - "$dir/$f.json" "$f" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["statuses"]
bad = {k: v for k, v in s.items() if not k.startswith("2") and k != "429"}
print(f'{sys.argv[2]:6} {r["requests"]:8d} requests  p50 {r["latency"]["p50_ms"]:.3f} ms'
      f'  p99 {r["latency"]["p99_ms"]:.3f} ms  429s {s.get("429", 0)}  other non-2xx {bad or 0}')
EOF
done
echo "$start"
printf '%s\n' "${trend[@]}"
snapshot end
