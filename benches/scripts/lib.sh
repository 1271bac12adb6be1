# Shell functions shared by benches/compare.sh and benches/scripts/*.sh.
# Source it from the repository root:   . benches/scripts/lib.sh
# Binaries are taken from ${CARGO_TARGET_DIR:-target}/release, where
# `cargo build --release` puts them; WISP_BIN names another `wisp` binary
# (a build kept aside, to compare two builds on the same artifacts).

release=${CARGO_TARGET_DIR:-target}/release
wisp=${WISP_BIN:-$release/wisp}

# artifact NAME → the path of an example function or image, as
# `wisp-function-artifacts` lists them (hello, ping, ping-docker, …).
artifact() { "$release/wisp-function-artifacts" | awk -v k="$1" '$1==k{print $2}'; }

# start_wisp PORT LOG [ARG…]: `wisp serve --listen 127.0.0.1:PORT ARG…` in
# the background, its output to LOG; sets $server to its pid and returns
# once /healthz answers (fails if the server exits first). The environment
# (WISP_LOG, WISP_DATA_DIR, …) is the caller's: `WISP_LOG=warn start_wisp …`.
start_wisp() {
  local port=$1 log=$2
  shift 2
  "$wisp" serve --listen "127.0.0.1:$port" "$@" >"$log" 2>&1 &
  server=$!
  until curl -fs "http://127.0.0.1:$port/healthz" >/dev/null; do
    if ! kill -0 "$server" 2>/dev/null; then
      echo "wisp serve on port $port exited; its log: $log" >&2
      return 1
    fi
    sleep 0.01
  done
}

# stop_wisp: ends the server start_wisp started, if any, and waits for it.
stop_wisp() {
  [ -n "${server:-}" ] || return 0
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  server=
}

# start_anchor PING_PORT PROXY_PORT: the ping binary straight on the host
# on PING_PORT and the minimal hyper proxy in front of it on PROXY_PORT, in
# the background; appends their pids (ping's, then the proxy's) to the
# array anchor_pids, for the caller to kill.
start_anchor() {
  PORT=$1 "$(artifact ping)" >/dev/null 2>&1 &
  anchor_pids+=($!)
  "$release/proxy" "127.0.0.1:$2" "http://127.0.0.1:$1" >/dev/null 2>&1 &
  anchor_pids+=($!)
}

# serve_ping BINARY PORT DIR: `wisp serve` from the `wisp` binary BINARY
# (the "$wisp" of later calls) on PORT, with a fresh data dir below DIR
# (emptied first) and `ping` deployed: one build's turn when builds are
# compared one after another.
serve_ping() {
  wisp=$1
  rm -rf "$3"; mkdir -p "$3"
  export WISP_GATEWAY=http://127.0.0.1:$2 WISP_DATA_DIR=$3/wisp
  WISP_LOG=warn start_wisp "$2" "$3/wisp.log"
  "$wisp" deploy ping --image "$(artifact ping-docker)" >/dev/null
}

# deploy_warm_set: deploys the functions of the warm rows as compare.sh
# measures them — `hello` (a fresh instance per request), `hello-reuse`
# (--instance-reuse 1000) and `ping` (one container taking 256 requests at
# once) — with "$wisp", to WISP_GATEWAY.
deploy_warm_set() {
  "$wisp" deploy hello "$(artifact hello)" >/dev/null
  "$wisp" deploy hello-reuse "$(artifact hello)" --instance-reuse 1000 >/dev/null
  "$wisp" deploy ping --image "$(artifact ping-docker)" --max 1 --concurrency 256 >/dev/null
}

# image_of NAME → the artifact digest the deployed function NAME runs. Needs
# WISP_GATEWAY and WISP_DATA_DIR (for the token).
image_of() {
  curl -fs -H "Authorization: Bearer $(cat "$WISP_DATA_DIR/token")" "$WISP_GATEWAY/system/function/$1" |
    sed -n 's/.*"image":"\(sha256:[0-9a-f]*\)".*/\1/p'
}

# deploy_digest NAME DIGEST: deploys NAME running the uploaded artifact
# DIGEST through the control API (quicker than the CLI for many copies).
deploy_digest() {
  curl -fs -o /dev/null -H "Authorization: Bearer $(cat "$WISP_DATA_DIR/token")" \
    -d "{\"service\":\"$1\",\"image\":\"$2\"}" "$WISP_GATEWAY/system/functions"
}

# pct P: reads numbers, one a line; prints the P-quantile (0 < P ≤ 1) by
# nearest rank.
pct() { sort -n | awk -v p="$1" '{a[NR]=$1} END {i=int(NR*p+0.999); if (i<1) i=1; if (i>NR) i=NR; print a[i]}'; }

# stats: reads milliseconds, one a line; prints p50, p99 (nearest rank,
# as pct) and mean.
stats() {
  sort -n | awk '{a[NR]=$1; s+=$1}
    END {
      if (NR == 0) { print "no samples"; exit }
      p50=int(NR*0.5+0.999); p99=int(NR*0.99+0.999); if (p99>NR) p99=NR
      printf "p50 %7.3f ms  p99 %7.3f ms  mean %7.3f ms  (n=%d)\n", a[p50], a[p99], s/NR, NR
    }'
}

# make_bundle LAYER BUNDLE: an OCI runtime bundle in BUNDLE for crun and
# runc that runs /bin/true in a root filesystem made of the unpacked layer
# LAYER (ping's, from wisp's image store) plus a static busybox as
# /bin/true.
make_bundle() {
  rm -rf "$2"
  mkdir -p "$2/rootfs/bin"
  cp -a "$1/." "$2/rootfs/"
  cp /bin/busybox "$2/rootfs/bin/busybox"
  ln -sf busybox "$2/rootfs/bin/true"
  (cd "$2" && crun spec && sed -i 's/"sh"/"\/bin\/true"/; s/"terminal": true/"terminal": false/' config.json)
}

# runtime_times BUNDLE RUNTIME N → N lines of milliseconds, one `RUNTIME
# run` of BUNDLE each. crun 1.8 refuses this host's hybrid cgroup layout
# while hugetlb sits in the v2 mount: they run where it is unmounted.
runtime_times() {
  unshare -m bash -c '
    umount /sys/fs/cgroup/unified 2>/dev/null || true
    cd "$1"
    for i in $(seq "$3"); do
      s=$EPOCHREALTIME; "$2" run "bench-$$-$i" >/dev/null 2>&1 </dev/null; e=$EPOCHREALTIME
      "$2" delete -f "bench-$$-$i" >/dev/null 2>&1 || true
      awk -v s="$s" -v e="$e" "BEGIN { printf \"%.3f\\n\", (e - s) * 1000 }"
    done' _ "$1" "$2" "$3"
}

# wrk_run URL CONNECTIONS [SECONDS] → "p50_ms p99_ms req/s" of a closed
# loop by wrk (default 5 s; at most 2 threads, the machine's cores).
wrk_run() {
  wrk -t"$(( $2 < 2 ? $2 : 2 ))" -c"$2" -d"${3:-5}s" --latency "$1" | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    $1=="50%" {p50=ms($2)} $1=="99%" {p99=ms($2)} /Requests\/sec/ {rps=$2}
    END {print p50, p99, rps}'
}

# install_missing TOOL…: installs the Debian packages of the tools that are
# not on PATH (perf comes in linux-perf; the others are their own package).
install_missing() {
  local tool need=()
  for tool in "$@"; do
    command -v "$tool" >/dev/null || need+=("$([ "$tool" = perf ] && echo linux-perf || echo "$tool")")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# alternate ROUNDS A B FN: runs `FN ROUND A` and `FN ROUND B` for every
# round, the order swapped each round (A first in odd rounds), so that a
# drift of the machine does not favour either build.
alternate() {
  local rounds=$1 a=$2 b=$3 fn=$4 r
  for r in $(seq "$rounds"); do
    if [ $((r % 2)) = 1 ]; then "$fn" "$r" "$a"; "$fn" "$r" "$b"
    else "$fn" "$r" "$b"; "$fn" "$r" "$a"; fi
  done
}
