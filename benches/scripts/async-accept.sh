#!/bin/bash
# benches/scripts/async-accept.sh: measures asynchronous-call acceptance: wrk POSTs to /async-function/hello
# (no callback), against a fresh data dir; then how long the queue takes to drain.
set -e
BIN=${BIN:-/work/main/target/release/wisp}
D=$(mktemp -d /tmp/asyncbench.XXXX)
$BIN serve --data-dir $D --listen 127.0.0.1:18181 --log warn > $D/log 2>&1 &
P=$!
trap "kill $P; rm -rf $D" EXIT
sleep 1
export WISP_GATEWAY=http://127.0.0.1:18181 WISP_DATA_DIR=$D
$BIN deploy hello /work/main/target/wasm-guests/wasm32-wasip2/release/hello.wasm > /dev/null
cat > $D/post.lua <<'L'
wrk.method = "POST"
wrk.body = "payload"
L
for c in 1 16; do
  echo "== async accept, $c connections"
  wrk -t1 -c$c -d5s -s $D/post.lua http://127.0.0.1:18181/async-function/hello | grep -E "Requests/sec|Latency|Non-2xx"
  start=$(date +%s%N)
  while curl -s http://127.0.0.1:18181/metrics | grep -q 'wisp_async_queue_depth{function_name="hello"} [1-9]'; do sleep 0.1; done
  echo "drained $(( ($(date +%s%N) - start) / 1000000 )) ms after wrk"
done
echo "== sync, 16 connections"
wrk -t1 -c16 -d5s -s $D/post.lua http://127.0.0.1:18181/function/hello | grep -E "Requests/sec|Latency"
curl -s http://127.0.0.1:18181/metrics | grep -E "^wisp_async_calls_total"
