#!/usr/bin/env bash
# Deploy by reference from a local registry, timed to the first response:
# `wisp deploy ping --image 127.0.0.1:PORT/ping:1` (pull + unpack + store)
# then the first request, N times each
#   cold:    the image store is empty (the function removed and the store
#            pruned between rounds);
#   present: the store holds the layers (the function removed only; the
#            tag is still asked of the registry, as every deploy of a tag is);
# and beside it `skopeo copy docker://… dir:…` (download only, no unpack)
# and, if podman is installed, `podman pull` (after `podman rmi`).
#
#   benches/scripts/pull.sh [N]
#
# Needs docker-registry, skopeo and a release build (cargo build --release
# -p wisp -p wisp-function-artifacts).
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/scripts/lib.sh
n=${1:-20}
dir=$(mktemp -d)
port=18951
reg_port=18952
registry=127.0.0.1:$reg_port
export WISP_GATEWAY=http://127.0.0.1:$port WISP_DATA_DIR=$dir/wisp
cat >"$dir/registry.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $dir/registry
http:
  addr: $registry
EOF
docker-registry serve "$dir/registry.yml" >"$dir/registry.log" 2>&1 &
registry_pid=$!
trap 'stop_wisp; kill $registry_pid 2>/dev/null; rm -rf "$dir"' EXIT
until curl -fs "http://$registry/v2/" >/dev/null; do sleep 0.05; done
skopeo copy --quiet --dest-tls-verify=false "docker-archive:$(artifact ping-docker)" "docker://$registry/ping:1"

WISP_LOG=warn start_wisp $port "$dir/wisp.log" --data-dir "$dir/wisp" \
  --insecure-registry "$registry" --prune-grace 0s --prune-interval 0s
ms() { echo $((($2 - $1) / 1000))e-3 | awk '{printf "%.3f\n", $1}'; }
round() { # round: deploy by reference and the first response, in ms
  local t0 t1
  t0=$(date +%s%N)
  "$wisp" deploy ping --image "$registry/ping:1" >/dev/null
  curl -fs -o /dev/null "$WISP_GATEWAY/function/ping/ping"
  t1=$(date +%s%N)
  ms "$t0" "$t1"
}
cold=(); present=(); skopeo=(); podman=()
for _ in $(seq "$n"); do
  "$wisp" rm ping >/dev/null 2>&1 || true
  # The removed version lets go of its image once drained: prune until
  # the store is empty.
  for _ in $(seq 100); do
    "$wisp" prune >/dev/null
    [ -z "$(ls -A "$dir/wisp/images/layers")" ] && break
    sleep 0.05
  done
  cold+=("$(round)")
  "$wisp" rm ping >/dev/null
  present+=("$(round)")
  rm -rf "$dir/skopeo"
  t0=$(date +%s%N)
  skopeo copy --quiet --src-tls-verify=false "docker://$registry/ping:1" "dir:$dir/skopeo"
  skopeo+=("$(ms "$t0" "$(date +%s%N)")")
  if command -v podman >/dev/null; then
    podman rmi -f "$registry/ping:1" >/dev/null 2>&1 || true
    t0=$(date +%s%N)
    podman pull -q --tls-verify=false "$registry/ping:1" >/dev/null
    podman+=("$(ms "$t0" "$(date +%s%N)")")
  fi
done
echo "wisp deploy by reference + first response, empty store:   $(printf '%s\n' "${cold[@]}" | stats)"
echo "wisp deploy by reference + first response, layers present: $(printf '%s\n' "${present[@]}" | stats)"
echo "skopeo copy docker:// → dir: (download only):             $(printf '%s\n' "${skopeo[@]}" | stats)"
if [ ${#podman[@]} -gt 0 ]; then
  echo "podman pull (after podman rmi):                             $(printf '%s\n' "${podman[@]}" | stats)"
fi
