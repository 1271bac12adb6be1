#!/usr/bin/env bash
# The main job: builds wisp and the example functions, starts `wisp serve`
# with them deployed, invokes them, and shows how to call them. The server
# keeps running in the foreground; Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

cargo build --release --locked -p wisp -p wisp-function-artifacts
wisp=target/release/wisp
export WISP_LISTEN=${WISP_LISTEN:-127.0.0.1:8080}
export WISP_GATEWAY="http://$WISP_LISTEN"
export WISP_DATA_DIR=${WISP_DATA_DIR:-$PWD/.wisp-demo}

log="$WISP_DATA_DIR.log"
"$wisp" serve >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT INT TERM
for _ in $(seq 100); do
  curl -fs "$WISP_GATEWAY/healthz" >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { cat "$log" >&2; echo "wisp serve exited" >&2; exit 1; }
  sleep 0.1
done

# Container functions need root (namespaces, cgroups, overlayfs).
containers=$([ "$(id -u)" = 0 ] && echo yes || echo no)
while read -r name path; do
  case "$name" in
    hello) "$wisp" deploy hello "$path" --env GREETING=Hello ;;
    cgi-echo) "$wisp" deploy cgi-echo "$path" ;;
    ping-docker) if [ "$containers" = yes ]; then "$wisp" deploy ping --image "$path" --env GREETING=Hi; fi ;;
    cgi-echo-native-oci) if [ "$containers" = yes ]; then "$wisp" deploy cgi-echo-native --image "$path" --protocol cgi; fi ;;
  esac
done < <(target/release/wisp-function-artifacts)

# A component from another toolchain: Python, built with componentize-py.
pybuild=$(mktemp -d)
PYTHONDONTWRITEBYTECODE=1 componentize-py -d functions/hello-py/wit -w wisp:examples/hello-py \
  componentize -p functions/hello-py app -o "$pybuild/hello-py.wasm" >/dev/null
"$wisp" deploy hello-py "$pybuild/hello-py.wasm"
rm -rf "$pybuild"

echo
echo "== wisp invoke hello --path '/demo?name=you' --data 'a body'"
"$wisp" invoke hello --path '/demo?name=you' --data 'a body'
echo
echo "== wisp invoke cgi-echo --path '/x?status=201' --data 'cgi body' -i"
"$wisp" invoke cgi-echo --path '/x?status=201' --data 'cgi body' -i
echo
echo "== curl $WISP_GATEWAY/function/hello-py/from-curl -d 'hi'"
curl -s "$WISP_GATEWAY/function/hello-py/from-curl" -d 'hi'
if [ "$containers" = yes ]; then
  echo
  echo "== curl $WISP_GATEWAY/function/ping/ping   (an OCI image in a microcontainer)"
  curl -s -D - "$WISP_GATEWAY/function/ping/ping" | grep -i -e '^server-timing' -e pong
  echo
  echo "== curl '$WISP_GATEWAY/function/cgi-echo-native/x?y=1' -d 'native cgi'"
  curl -s "$WISP_GATEWAY/function/cgi-echo-native/x?y=1" -d 'native cgi'
  echo
  echo "== wisp images"
  "$wisp" images
else
  echo
  echo "(not root: container functions are skipped; run as root to see them)"
fi
echo
echo "== wisp invoke hello --async --data 'later'   (queued, run in the background)"
"$wisp" invoke hello --async --data 'later'
echo
echo "== wisp ls"
"$wisp" ls
cat <<MSG

wisp is serving on $WISP_GATEWAY (data in $WISP_DATA_DIR, log in $log). Try:
  curl '$WISP_GATEWAY/function/hello/anything?name=curl' -d 'hi there'
  curl -i '$WISP_GATEWAY/function/cgi-echo/path?status=404'
  curl '$WISP_GATEWAY/function/hello-py/any/path' -d 'from curl'
  curl '$WISP_GATEWAY/function/ping/echo?name=you' -d 'to a container'
  $wisp deploy NAME --image image.tar     # docker save / OCI archive / OCI layout dir
  $wisp deploy NAME --binary ./static-server --port 8080
  curl -i -X POST '$WISP_GATEWAY/async-function/hello' -H 'X-Callback-Url: https://hooks.example.com/done' -d 'later'
  echo -n s3cret | $wisp secret create api-key && $wisp deploy NAME --image image.tar --secret api-key
  $wisp history hello && $wisp rollback hello
  WISP_DATA_DIR=$WISP_DATA_DIR $wisp ls
  WISP_DATA_DIR=$WISP_DATA_DIR $wisp deploy NAME your-component.wasm
The control API token is in $WISP_DATA_DIR/token (the CLI reads it from there).
Press Ctrl-C to stop.
MSG
wait $server
