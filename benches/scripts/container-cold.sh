#!/usr/bin/env bash
# Container cold starts: N requests to the `ping` image, each to a function
# with zero instances (N copies of the function, each called once and then
# removed), timed from the request to the first response byte, with the
# server's phase breakdown from its log. Then, on the same machine and the
# same root filesystem (ping's layer plus a static /bin/true), N runs of
# `crun run` executing /bin/true, for comparison. Needs root, crun, curl and
# a release build (cargo build --release -p wisp -p wisp-function-artifacts;
# binaries from ${CARGO_TARGET_DIR:-target}/release).
#
#   benches/scripts/container-cold.sh [N]
#
# Phases: cgroup_ns = joining the cgroup, cgroup namespace, loopback (in a
# pre-made sandbox this happened before the request); assign = request →
# the sandbox has its plan (with none pre-made: includes making one, i.e.
# clone into new namespaces); rootfs = hostname, tmpfs + overlay mounts,
# pivot_root, /proc /dev /tmp, user namespace; limits = init waiting for
# the gateway's `Start` (the cgroup's limits written); exec = the command
# to the zygote (forked, privileges dropped and seccomp applied ahead) and
# its execve; ready = exec → the port accepts.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/scripts/lib.sh
n=${1:-200}
archive=$(artifact ping-docker)
dir=$(mktemp -d)
port=18932
export WISP_GATEWAY=http://127.0.0.1:$port WISP_DATA_DIR=$dir
trap 'stop_wisp; rm -rf "$dir" "$dir.log"' EXIT

# One run of N cold starts with `$1` pre-made sandboxes.
run() {
  rm -rf "${dir:?}"/*
  WISP_PREMADE_SANDBOXES=$1 WISP_LOG_FORMAT=json WISP_LOG=info start_wisp $port "$dir.log"
  # One image upload, then N functions naming the same artifact.
  "$wisp" deploy ping-0 --image "$archive" >/dev/null
  local digest
  digest=$(image_of ping-0)
  for i in $(seq "$n"); do deploy_digest "ping-$i" "$digest"; done
  local client=()
  for i in $(seq "$n"); do
    sleep 0.02 # let the pre-made pool refill, as it would between real requests
    client+=("$(curl -s -o /dev/null -w '%{time_starttransfer}' "http://127.0.0.1:$port/function/ping-$i/ping" | awk '{printf "%.3f", $1*1000}')")
    "$wisp" rm "ping-$i" >/dev/null
  done
  stop_wisp
  echo "wisp, $1 pre-made sandboxes: ping cold start, request → first response byte (curl time_starttransfer):"
  echo "  total         $(printf '%s\n' "${client[@]}" | stats)"
  echo "  server phases (log lines 'container started'; premade=$(grep -c '"premade":true' "$dir.log") of $n):"
  for phase in cgroup_ns_ms assign_ms rootfs_ms limits_ms exec_ms ready_ms total_ms; do
    printf '    %-12s %s\n' "${phase%_ms}" "$(grep '"container started"' "$dir.log" | sed -n "s/.*\"$phase\":\([0-9.e-]*\).*/\1/p" | stats)"
  done
}

run 2
run 0

# crun on the same rootfs: ping's unpacked layer plus a static /bin/true.
if command -v crun >/dev/null; then
  make_bundle "$(ls -d "$dir"/images/layers/*/diff | head -1)" "$dir/bundle"
  echo "crun run /bin/true, same rootfs:"
  echo "  total         $(runtime_times "$dir/bundle" crun "$n" | stats)"
fi
