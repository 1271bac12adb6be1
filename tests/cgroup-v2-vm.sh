#!/usr/bin/env bash
# Runs the cgroup module's unit tests and the container end-to-end tests
# that depend on cgroups (memory/OOM, pids, CPU, isolation, nothing left
# after teardown, a delegated cgroup) on a pure cgroup v2 host: a Debian
# kernel booted under QEMU (TCG emulation) with `cgroup_no_v1=all`, from an
# initramfs holding busybox, the `wisp` binary, the test binaries and the
# example images. Development and CI machines are often v1 or hybrid; this
# proves the v2 path on a real v2 kernel.
#
#   bash tests/cgroup-v2-vm.sh            # the chosen tests
#   bash tests/cgroup-v2-vm.sh FILTER...  # other e2e tests (libtest filters)
#   WISP_BIN=/path/to/wisp bash tests/cgroup-v2-vm.sh   # that server binary
#
# Needs root only to apt-get what is missing (qemu-system-x86, cpio,
# busybox-static, binutils); installs nothing else on the host. The kernel
# package is downloaded and unpacked (`dpkg -x`) into
# `$CARGO_TARGET_DIR/cgroup-v2-vm/`, with the console log. Exits non-zero
# if a test fails, the guest does not report, or the VM outlives
# `WISP_VM_TIMEOUT` seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir=${CARGO_TARGET_DIR:-$PWD/target}
cache=$target_dir/cgroup-v2-vm
timeout_s=${WISP_VM_TIMEOUT:-600}
log=$cache/console.log

# The container tests whose outcome depends on the cgroup hierarchy: the
# limits, isolation, teardown, the sweep of another server's cgroups, a
# delegated cgroup; and a plain start from each image format. The rest of
# tests/e2e/container.rs is about images and protocols (covered on the
# host; they pass here too), and the `run_as` test needs util-linux's
# setpriv, which the guest lacks.
default_tests=(
  container::the_sandbox_is_isolated
  container::a_memory_hog_is_oom_killed_and_its_sandbox_replaced
  container::a_kept_cgroup_carries_nothing_over_to_the_next_function
  container::a_fork_bomb_stops_at_the_pids_limit
  container::a_cpu_hog_is_throttled_at_its_cpu_limit
  container::a_function_never_runs_in_an_idle_cgroup
  container::nothing_is_left_behind_after_teardown_or_a_crash
  container::on_cgroup_v2_a_server_alone_in_its_cgroup_moves_to_a_leaf
  container::a_starting_server_leaves_a_live_servers_sandboxes_alone
  container::sandboxes_start_from_a_mount_table_without_the_hosts_mounts
  container::ping_runs_from_a_docker_archive_and_an_oci_layout
  container::the_server_turns_on_cgroup2_favordynmods_unless_asked_not_to
)
if [ $# -gt 0 ]; then
  test_args=("$@")
else
  test_args=(--exact "${default_tests[@]}")
fi

say() { echo "cgroup-v2-vm: $*" >&2; }

# --- host tools -----------------------------------------------------------
need_debs=()
command -v qemu-system-x86_64 >/dev/null || need_debs+=(qemu-system-x86)
command -v cpio >/dev/null || need_debs+=(cpio)
command -v strip >/dev/null || need_debs+=(binutils)
if [ ! -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then
  need_debs+=(busybox-static)
fi
if [ ${#need_debs[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    say "missing ${need_debs[*]}: apt-get install them as root"
    exit 1
  fi
  say "apt-get install ${need_debs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_debs[@]}" >/dev/null
fi

# --- kernel ---------------------------------------------------------------
# The package linux-image-amd64 points at (e.g. linux-image-6.1.0-57-amd64),
# or $WISP_VM_KERNEL_PKG.
mkdir -p "$cache"
kernel_pkg=${WISP_VM_KERNEL_PKG:-}
if [ -z "$kernel_pkg" ]; then
  kernel_pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }')
fi
if [ -z "$kernel_pkg" ]; then
  apt-get update -qq
  kernel_pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ { print $2; exit }')
fi
kernel_root=$cache/$kernel_pkg
if [ ! -d "$kernel_root/boot" ]; then
  say "downloading $kernel_pkg"
  rm -rf "$kernel_root.tmp" && mkdir -p "$kernel_root.tmp"
  (cd "$kernel_root.tmp" && apt-get download -q "$kernel_pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  dpkg -x "$kernel_root.tmp"/*.deb "$kernel_root.tmp/root"
  mv "$kernel_root.tmp/root" "$kernel_root"
  rm -rf "$kernel_root.tmp"
fi
vmlinuz=$(echo "$kernel_root"/boot/vmlinuz-*)
overlay_ko=$(find "$kernel_root/lib/modules" -name overlay.ko | head -n 1)
[ -f "$vmlinuz" ] && [ -f "$overlay_ko" ] || { say "no kernel or overlay.ko in $kernel_root"; exit 1; }

# --- binaries -------------------------------------------------------------
# From cargo's JSON messages on stdin: the executable of target $1, or with
# `out`, the OUT_DIRs of the artifacts crate's build script.
from_cargo() {
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if sys.argv[1] == "out":
        if m.get("reason") == "build-script-executed" and "wisp-function-artifacts" in m["package_id"]:
            print(m["out_dir"])
    elif m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$1" | sort -u
}
# The same cargo invocations as scripts/test.sh, so that after it nothing
# is rebuilt (a narrower package set unifies features differently). Each
# binary is copied, stripped, as soon as it is built: another build
# sharing the target dir may replace it. `WISP_BIN` (a file named `wisp`)
# is used instead of the server built here.
say "building wisp and the tests"
mkdir -p "$cache/bin"
json=$(cargo build --locked --message-format=json)
strip -o "$cache/bin/wisp" "${WISP_BIN:-$(from_cargo wisp <<<"$json")}"
json=$(cargo test --locked --no-run --message-format=json)
strip -o "$cache/bin/e2e" "$(from_cargo e2e <<<"$json")"
strip -o "$cache/bin/runner-unit" "$(from_cargo wisp_runner <<<"$json")"
artifacts_out=$(from_cargo out <<<"$json")

# --- initramfs ------------------------------------------------------------
root=$cache/initramfs
rm -rf "$root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,root,etc,newroot,opt/wisp,lib/modules}
cp /bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
cp "$cache/bin/wisp" "$cache/bin/e2e" "$cache/bin/runner-unit" "$root/opt/wisp/"
cp "$overlay_ko" "$root/lib/modules/"
# Shared libraries, at the paths the binaries' interpreter looks for them.
for lib in $(ldd "$cache/bin/wisp" "$cache/bin/e2e" "$cache/bin/runner-unit" |
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\/.*[^:]$/ { print $1 }' | sort -u); do
  cp --parents -L "$lib" "$root"
done
# The example images, at the absolute paths compiled into the test binary.
for path in $(for out in $artifacts_out; do grep -o '"/[^"]*"' "$out/paths.rs" | tr -d '"'; done | sort -u); do
  mkdir -p "$root$(dirname "$path")"
  cp -R "$path" "$root$path" || say "warning: no $path (the tests that use it will fail)"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
printf '%s\n' "${test_args[@]}" >"$root/opt/wisp/tests"
# PID 1, first on the initramfs: pivot_root(2) refuses to leave the
# initramfs (rootfs), so the system moves to a tmpfs first, as an ordinary
# host's root is a real mount. (/tmp is on it too: the target dir, and so
# the example images, may be below /tmp.)
cat >"$root/init" <<'INIT'
#!/bin/sh
/bin/busybox mount -t tmpfs -o mode=755 root /newroot
for entry in /*; do
  case "$entry" in /newroot|/proc|/sys|/dev) ;; *) /bin/busybox cp -a "$entry" /newroot/ ;; esac
done
/bin/busybox mkdir -p /newroot/proc /newroot/sys /newroot/dev
/bin/busybox chmod 1777 /newroot/tmp
exec /bin/busybox switch_root /newroot /opt/wisp/guest
INIT
# PID 1 on the tmpfs: a pure cgroup v2 host with loopback only; runs the
# tests, reports, powers off.
cat >"$root/opt/wisp/guest" <<'GUEST'
#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin HOME=/root TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# As systemd mounts it: the server must keep these options.
mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 /sys/fs/cgroup
ip link set lo up
insmod /lib/modules/overlay.ko
echo "kernel $(uname -r); cgroup controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
grep cgroup /proc/mounts
cd /tmp
start=$(date +%s)
export RUST_BACKTRACE=1
rc=0
echo "== wisp-runner unit tests of the cgroup module, on the real hierarchy"
/opt/wisp/runner-unit --test-threads=1 container::cgroup:: || rc=$?
echo "== end-to-end tests"
WISP_BIN=/opt/wisp/wisp /opt/wisp/e2e --test-threads=1 $(cat /opt/wisp/tests) || rc=$?
echo "WISP-VM-RESULT rc=$rc seconds=$(( $(date +%s) - start ))"
poweroff -f
GUEST
chmod +x "$root/opt/wisp/guest"
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet) >"$cache/initramfs.cpio"

# --- boot -----------------------------------------------------------------
# TCG, not KVM: /dev/kvm may exist where a guest hangs under it (it did on
# the development machine), and emulation needs nothing from the host. One
# vCPU: with two (multi-threaded TCG) a run on a loaded host once stalled
# for good (an RCU stall, a vCPU's timer never firing), and one was no
# slower. A hung task panics the guest, which ends QEMU (-no-reboot) at
# once instead of at the timeout.
say "booting $(basename "$vmlinuz") ($(du -m "$cache/initramfs.cpio" | cut -f1) MiB initramfs), timeout ${timeout_s}s"
started=$(date +%s)
set +e
timeout -k 10 "$timeout_s" qemu-system-x86_64 \
  -accel tcg -cpu max -smp 1 -m 2G \
  -kernel "$vmlinuz" -initrd "$cache/initramfs.cpio" \
  -append "console=ttyS0 cgroup_no_v1=all panic=-1 hung_task_panic=1 quiet" \
  -display none -serial stdio -monitor none -no-reboot </dev/null | tee "$log"
qemu_rc=${PIPESTATUS[0]}
set -e
say "VM ran $(( $(date +%s) - started ))s; console log in $log"
result=$(grep -a -o 'WISP-VM-RESULT rc=[0-9]*' "$log" | tail -n 1 || true)
if [ -z "$result" ]; then
  say "the guest did not report a result (qemu exit $qemu_rc$([ "$qemu_rc" = 124 ] && echo ': timed out'))"
  exit 1
fi
[ "$result" = "WISP-VM-RESULT rc=0" ] || { say "tests failed ($result)"; exit 1; }
say "passed"
