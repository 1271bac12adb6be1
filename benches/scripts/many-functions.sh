#!/usr/bin/env bash
# Scale in functions: N copies of the wasm `hello` deployed on one server
# (default 10,000), mostly idle, then a rotating 1 % invoked. Reports:
#   - deploy latency of the first and the last 500 deploys (p50/p99),
#   - the gateway's RSS after the deploys and after the invocations, and
#     its open files,
#   - the gateway's CPU while every function is idle (10 s),
#   - `GET /system/functions` and `wisp ls` at that size,
#   - `GET /metrics` size and time.
#
#   benches/scripts/many-functions.sh [N]
#
# Needs a release build (cargo build --release -p wisp -p wisp-function-artifacts).
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/scripts/lib.sh
n=${1:-10000}
dir=$(mktemp -d)
port=18961
export WISP_GATEWAY=http://127.0.0.1:$port WISP_DATA_DIR=$dir/wisp
trap 'stop_wisp; rm -rf "$dir"' EXIT
WISP_LOG=warn start_wisp $port "$dir/wisp.log" --data-dir "$dir/wisp"
token=$(cat "$WISP_DATA_DIR/token")
auth=(-H "Authorization: Bearer $token")
digest=$(curl -fs "${auth[@]}" --data-binary @"$(artifact hello)" "$WISP_GATEWAY/system/artifacts" |
  sed -n 's/.*"digest":"\(sha256:[0-9a-f]*\)".*/\1/p')

rss_kib() { awk '/^VmRSS/{print $2}' "/proc/$server/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$server/stat"; }
ms_of() { awk '{printf "%.3f\n", $1 * 1000}'; }

rss_before=$(rss_kib)
# One curl per deploy, timed by curl: the deploy itself, one at a time.
: >"$dir/deploys"
started=$(date +%s%N)
for i in $(seq "$n"); do
  curl -fs -o /dev/null -w '%{time_total}\n' "${auth[@]}" \
    -d "{\"service\":\"f$i\",\"image\":\"$digest\"}" "$WISP_GATEWAY/system/functions" >>"$dir/deploys"
done
deploy_s=$((($(date +%s%N) - started) / 1000000))
rss_deployed=$(rss_kib)

ticks0=$(cpu_ticks)
sleep 10
ticks1=$(cpu_ticks)
hz=$(getconf CLK_TCK)

list_ms=$(for _ in 1 2 3 4 5; do
  curl -fs -o /dev/null -w '%{time_total}\n' "${auth[@]}" "$WISP_GATEWAY/system/functions"
done | ms_of | pct 0.5)
ls_ms=$( (time -p "$wisp" ls >/dev/null) 2>&1 | awk '/^real/{printf "%.0f", $2 * 1000}')

# A rotating 1 %: 100 rounds, each invoking a different 1 % of the functions.
step=$((n / 100))
[ "$step" -ge 1 ] || step=1
for round in $(seq 0 99); do
  for j in $(seq 1 "$step"); do
    echo "$WISP_GATEWAY/function/f$(((round * step + j - 1) % n + 1))"
  done
done | xargs -P 8 -n 50 curl -fs -o /dev/null
rss_invoked=$(rss_kib)
fds=$(ls "/proc/$server/fd" | wc -l)
metrics_bytes=$(curl -fs "$WISP_GATEWAY/metrics" | wc -c)
metrics_ms=$(curl -fs -o /dev/null -w '%{time_total}\n' "$WISP_GATEWAY/metrics" | ms_of)

echo "functions deployed:                          $n in ${deploy_s} ms"
echo "deploy, first 500:                           $(head -500 "$dir/deploys" | ms_of | stats)"
echo "deploy, last 500:                            $(tail -500 "$dir/deploys" | ms_of | stats)"
echo "gateway RSS: empty / $n deployed / after 1 % rounds: $((rss_before / 1024)) / $((rss_deployed / 1024)) / $((rss_invoked / 1024)) MiB"
echo "gateway open files after the 1 % rounds:     $fds"
echo "gateway CPU while all idle (10 s):           $(((ticks1 - ticks0) * 1000 / hz)) ms"
echo "GET /system/functions (p50 of 5):            $list_ms ms"
echo "wisp ls:                                     $ls_ms ms"
echo "GET /metrics:                                $metrics_bytes bytes, $metrics_ms ms"
