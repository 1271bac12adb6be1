#!/usr/bin/env bash
# Container cold starts: N requests to the `ping` image, each to a function
# with zero instances (N copies of the function, each called once and then
# removed), timed from the request to the first response byte, with the
# server's phase breakdown from its log. Then, on the same machine and the
# same root filesystem (ping's layer plus a static /bin/true), N runs of
# `crun run` executing /bin/true, for comparison. Needs root, crun, curl and
# target/release/wisp (cargo build --release).
#
#   benches/scripts/container-cold.sh [N]
#
# Phases: cgroup_ns = joining the cgroup, cgroup namespace, loopback (in a
# pre-made sandbox this happened before the request); assign = request →
# the sandbox has its plan (with none pre-made: includes making one, i.e.
# clone into new namespaces); rootfs = hostname, tmpfs + overlay mounts,
# pivot_root, /proc /dev /tmp, user namespace; exec = fork + privileges
# dropped + seccomp + execve; ready = exec → the port accepts.
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-200}
wisp=target/release/wisp
archive=$(target/release/wisp-function-artifacts | awk '$1=="ping-docker"{print $2}')
dir=$(mktemp -d)
port=18932
export WISP_GATEWAY=http://127.0.0.1:$port WISP_DATA_DIR=$dir
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$dir"' EXIT

stats() { sort -n | awk '{a[NR]=$1; s+=$1} END {p99=int(NR*0.99+0.999); if (p99>NR) p99=NR; printf "p50 %7.3f ms  p99 %7.3f ms  mean %7.3f ms  (n=%d)\n", a[int((NR+1)/2)], a[p99], s/NR, NR}'; }

# One run of N cold starts with `$1` pre-made sandboxes.
run() {
  rm -rf "$dir"/*
  WISP_PREMADE_SANDBOXES=$1 WISP_LOG_FORMAT=json WISP_LOG=info "$wisp" serve --listen 127.0.0.1:$port >"$dir.log" 2>&1 &
  server=$!
  until curl -fs "http://127.0.0.1:$port/healthz" >/dev/null; do sleep 0.01; done
  # One image upload, then N functions naming the same artifact.
  "$wisp" deploy ping-0 --image "$archive" >/dev/null
  local token digest
  token=$(cat "$dir/token")
  digest=$(curl -fs -H "Authorization: Bearer $token" "http://127.0.0.1:$port/system/function/ping-0" | sed -n 's/.*"image":"\(sha256:[0-9a-f]*\)".*/\1/p')
  for i in $(seq "$n"); do
    curl -fs -o /dev/null -H "Authorization: Bearer $token" \
      -d "{\"service\":\"ping-$i\",\"image\":\"$digest\"}" "http://127.0.0.1:$port/system/functions"
  done
  local client=()
  for i in $(seq "$n"); do
    sleep 0.02 # let the pre-made pool refill, as it would between real requests
    client+=("$(curl -s -o /dev/null -w '%{time_starttransfer}' "http://127.0.0.1:$port/function/ping-$i/ping" | awk '{printf "%.3f", $1*1000}')")
    "$wisp" rm "ping-$i" >/dev/null
  done
  kill $server; wait $server 2>/dev/null || true
  echo "wisp, $1 pre-made sandboxes: ping cold start, request → first response byte (curl time_starttransfer):"
  echo "  total         $(printf '%s\n' "${client[@]}" | stats)"
  echo "  server phases (log lines 'container started'; premade=$(grep -c '"premade":true' "$dir.log") of $n):"
  for phase in cgroup_ns_ms assign_ms rootfs_ms exec_ms ready_ms total_ms; do
    printf '    %-12s %s\n' "${phase%_ms}" "$(grep '"container started"' "$dir.log" | sed -n "s/.*\"$phase\":\([0-9.e-]*\).*/\1/p" | stats)"
  done
}

run 2
run 0

# crun on the same rootfs: ping's unpacked layer plus a static /bin/true.
if command -v crun >/dev/null; then
  bundle="$dir/bundle"
  mkdir -p "$bundle/rootfs/bin"
  layer=$(ls -d "$dir"/images/layers/*/diff | head -1)
  rm -rf "$bundle"; mkdir -p "$bundle/rootfs/bin"
  cp -a "$layer/." "$bundle/rootfs/"
  cp /bin/busybox "$bundle/rootfs/bin/busybox" 2>/dev/null && ln -sf busybox "$bundle/rootfs/bin/true"
  (cd "$bundle" && crun spec && sed -i 's/"sh"/"\/bin\/true"/; s/"terminal": true/"terminal": false/' config.json)
  # crun 1.8 refuses this host's hybrid cgroup layout while hugetlb sits in
  # the v2 mount: run it where that mount is gone.
  times=$(unshare -m bash -c '
    umount /sys/fs/cgroup/unified 2>/dev/null || true
    cd "$1"
    for i in $(seq "$2"); do
      s=$EPOCHREALTIME; crun run "bench-$$-$i" >/dev/null 2>&1 </dev/null; e=$EPOCHREALTIME
      awk -v s="$s" -v e="$e" "BEGIN { printf \"%.3f\\n\", (e - s) * 1000 }"
    done' _ "$bundle" "$n")
  echo "crun run /bin/true, same rootfs:"
  echo "  total         $(stats <<<"$times")"
fi
