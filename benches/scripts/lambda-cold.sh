#!/usr/bin/env bash
# Lambda functions: cold starts (zero → first response byte) of the
# `lambda_runtime` example (functions/lambda-hello, an image whose
# entrypoint is /var/runtime/bootstrap) beside the `http` example of the
# same kind (ping: a static Rust server), N each, every request to a
# function with zero instances (N copies, each called once and removed);
# then warm requests/s of each, one connection and 16. Needs root, curl,
# wrk and a release build (cargo build --release -p wisp -p
# wisp-function-artifacts).
#
#   benches/scripts/lambda-cold.sh [N]
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/scripts/lib.sh
n=${1:-100}
dir=$(mktemp -d)
port=18933
export WISP_GATEWAY=http://127.0.0.1:$port WISP_DATA_DIR=$dir
trap 'stop_wisp; rm -rf "$dir" "$dir.log"' EXIT

# cold NAME ARCHIVE PATH: N cold starts of ARCHIVE, requesting PATH.
cold() {
  rm -rf "${dir:?}"/*
  WISP_LOG_FORMAT=json WISP_LOG=info start_wisp $port "$dir.log"
  "$wisp" deploy "$1-0" --image "$2" >/dev/null
  local digest
  digest=$(image_of "$1-0")
  for i in $(seq "$n"); do deploy_digest "$1-$i" "$digest"; done
  local client=()
  for i in $(seq "$n"); do
    sleep 0.02 # let the pre-made pool refill, as it would between real requests
    client+=("$(curl -s -o /dev/null -w '%{time_starttransfer}' "http://127.0.0.1:$port/function/$1-$i$3" | awk '{printf "%.3f", $1*1000}')")
    "$wisp" rm "$1-$i" >/dev/null
  done
  echo "$1 cold start, request → first response byte: $(printf '%s\n' "${client[@]}" | stats)"
  printf '  server: ready (exec → listening / first `next`) %s\n' "$(grep '"container started"' "$dir.log" | sed -n 's/.*"ready_ms":\([0-9.e-]*\).*/\1/p' | stats)"
  printf '  server: total %s\n' "$(grep '"container started"' "$dir.log" | sed -n 's/.*"total_ms":\([0-9.e-]*\).*/\1/p' | stats)"
  for c in 1 16; do
    read -r p50 p99 rps < <(wrk_run "http://127.0.0.1:$port/function/$1-0$3" "$c")
    printf '  warm, %2d connection(s): %s req/s, p50 %s ms, p99 %s ms\n' "$c" "$rps" "$p50" "$p99"
  done
  stop_wisp
}

cold lambda "$(artifact lambda-hello-docker)" /plain
cold ping "$(artifact ping-docker)" /ping
