#!/usr/bin/env bash
# A 3-node wisp cluster on this machine (a 3-member etcd on loopback, its
# data on /dev/shm) and what it costs: `hello` (wasm) called on its home
# node directly and through another node (the forwarding hop), on 1 and 64
# connections; the cluster's throughput with load on all three nodes
# against one node alone; and the time from a deploy on one node to the
# first 200 through another.
#
#   benches/scripts/cluster.sh [SECONDS]
#
# Needs etcd (Debian etcd-server), wrk, curl and a release build.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/scripts/lib.sh
seconds=${1:-5}
work=$(mktemp -d -p /dev/shm)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
unset RUST_BACKTRACE

# etcd: three members.
initial="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$work/e$i" \
    --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
    --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
    --initial-cluster "$initial" --initial-cluster-state new --log-level warn >"$work/e$i.log" 2>&1 &
  pids+=($!)
done
endpoints=http://127.0.0.1:23791,http://127.0.0.1:23792,http://127.0.0.1:23793
until curl -fs http://127.0.0.1:23791/health | grep -q true; do sleep 0.1; done
echo "bench-cluster-token-$(date +%s)-0123456789" >"$work/token"

# Three nodes, and one alone for comparison.
for i in 1 2 3; do
  WISP_LOG=warn WISP_DATA_DIR="$work/n$i" "$wisp" serve --listen "127.0.0.1:1896$i" \
    --token-file "$work/token" --etcd "$endpoints" --node-name "n$i" >"$work/n$i.log" 2>&1 &
  pids+=($!)
done
WISP_LOG=warn WISP_DATA_DIR="$work/alone" "$wisp" serve --listen 127.0.0.1:18969 \
  --token-file "$work/token" >"$work/alone.log" 2>&1 &
pids+=($!)
for port in 18961 18962 18963 18969; do
  until curl -fs "http://127.0.0.1:$port/healthz" >/dev/null; do sleep 0.05; done
done
export WISP_TOKEN
WISP_TOKEN=$(cat "$work/token")
until [ "$(WISP_GATEWAY=http://127.0.0.1:18961 "$wisp" nodes | grep -c '^n[123] ')" = 3 ]; do sleep 0.1; done

# Deploy on n1; time until n2 and n3 answer 200.
start=$(date +%s%N)
WISP_GATEWAY=http://127.0.0.1:18961 "$wisp" deploy hello "$(artifact hello)" >/dev/null
for port in 18962 18963; do
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/function/hello")" = 200 ]; do :; done
done
echo "deploy on n1 → first 200 on n2 and n3: $(( ($(date +%s%N) - start) / 1000000 )) ms (the deploy's own answer included)"
WISP_GATEWAY=http://127.0.0.1:18969 "$wisp" deploy hello "$(artifact hello)" >/dev/null

# Which node is hello's home: the one that counts the calls.
for port in 18961 18962 18963; do curl -s -o /dev/null "http://127.0.0.1:$port/function/hello"; done
home=
for port in 18961 18962 18963; do
  n=$(curl -s "http://127.0.0.1:$port/metrics" | sed -n 's/^gateway_function_invocation_total{code="200",function_name="hello"} //p')
  if [ -n "$n" ] && [ "${n%.*}" -ge 3 ]; then home=$port; fi
done
other=18961; [ "$home" = 18961 ] && other=18962
echo "home of hello: 127.0.0.1:$home; through 127.0.0.1:$other"

row() {
  local p50 p99 rps
  read -r p50 p99 rps < <(wrk_run "$2" "$3" "$seconds")
  printf '%-44s p50 %7.3f ms  p99 %7.3f ms  %9.0f req/s\n' "$1" "$p50" "$p99" "$rps"
}
for c in 1 64; do
  row "hello on its home node, $c conn." "http://127.0.0.1:$home/function/hello" $c
  row "hello through another node, $c conn." "http://127.0.0.1:$other/function/hello" $c
done
row "hello on a node alone, 64 conn." "http://127.0.0.1:18969/function/hello" 64

# Load on all three nodes at once (a load balancer's spread).
loaders=()
for port in 18961 18962 18963; do
  wrk -t1 -c22 -d"${seconds}s" "http://127.0.0.1:$port/function/hello" >"$work/wrk$port" &
  loaders+=($!)
done
wait "${loaders[@]}"
total=$(cat "$work"/wrk1896? | awk '/Requests\/sec/ {s+=$2} END {printf "%.0f", s}')
echo "3-node cluster, 22 connections on each node: $total req/s in all"
