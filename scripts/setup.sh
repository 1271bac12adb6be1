#!/usr/bin/env bash
# Installs what building wisp needs on a fresh machine: the wasm and static
# musl targets the example functions compile to. Sourced by demo.sh and test.sh.
set -euo pipefail
need_targets=()
installed=$(rustup target list --installed)
for target in wasm32-wasip1 wasm32-wasip2 x86_64-unknown-linux-musl; do
  grep -qx "$target" <<<"$installed" || need_targets+=("$target")
done
if [ ${#need_targets[@]} -gt 0 ]; then
  echo "setup: rustup target add ${need_targets[*]}"
  rustup target add "${need_targets[@]}"
fi
for component in rustfmt clippy; do
  rustup component list --installed | grep -q "^$component" || rustup component add "$component"
done
# componentize-py builds the Python example (a component from another
# toolchain, which the end-to-end tests deploy).
if ! command -v componentize-py >/dev/null 2>&1; then
  echo "setup: pip install componentize-py"
  python3 -m pip install --quiet --disable-pip-version-check componentize-py==0.25.1
  hash -r
fi
# The end-to-end tests build container root filesystems from a static
# busybox (Debian's busybox-static) and scrape wisp with a real Prometheus.
need_debs=()
if [ ! -x /bin/busybox ] || ! /bin/busybox ls /proc/self/ >/dev/null 2>&1 || ldd /bin/busybox >/dev/null 2>&1; then
  need_debs+=(busybox-static)
fi
command -v prometheus >/dev/null 2>&1 || need_debs+=(prometheus)
# schemathesis runs from a virtualenv; Debian's python3 makes one only with
# python3-venv (ensurepip).
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_debs+=(python3-venv)
# The registry tests run Debian's docker-registry (distribution 2.8), push
# the example images to it with skopeo, and make its htpasswd file.
command -v docker-registry >/dev/null 2>&1 || need_debs+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || need_debs+=(skopeo)
command -v htpasswd >/dev/null 2>&1 || need_debs+=(apache2-utils)
# The bearer-token test's token server signs its tokens with openssl.
command -v openssl >/dev/null 2>&1 || need_debs+=(openssl)
# Cluster mode talks to etcd: the client crate compiles etcd's protobuf
# definitions with protoc, and the cluster tests run a 3-member etcd.
command -v protoc >/dev/null 2>&1 || need_debs+=(protobuf-compiler)
# protoc's own well-known types (google/protobuf/descriptor.proto, which
# etcd's definitions import) come with libprotobuf-dev, only a Recommends
# of protobuf-compiler, which --no-install-recommends leaves out.
[ -f /usr/include/google/protobuf/descriptor.proto ] || need_debs+=(libprotobuf-dev)
command -v etcd >/dev/null 2>&1 || need_debs+=(etcd-server)
if [ ${#need_debs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: apt-get install ${need_debs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_debs[@]}" >/dev/null
  else
    echo "setup: warning: missing ${need_debs[*]} (apt-get install them as root); some end-to-end tests will fail" >&2
  fi
fi
# schemathesis fuzzes the control API against OpenFaaS's spec
# (tests/e2e/spec.rs): the versions pinned in tests/openapi/requirements.txt,
# in a virtualenv in the cargo target dir, where the test looks for it.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
requirements="$root/tests/openapi/requirements.txt"
venv="${CARGO_TARGET_DIR:-$root/target}/schemathesis"
pinned=$(sed -n 's/^schemathesis==//p' "$requirements")
if [ "$("$venv/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version $pinned" ]; then
  echo "setup: schemathesis $pinned in $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
fi
# boto3 calls the Lambda Invoke API as AWS users' code does
# (tests/e2e/lambda.rs): pinned in tests/aws/requirements.txt.
aws_requirements="$root/tests/aws/requirements.txt"
aws_venv="${CARGO_TARGET_DIR:-$root/target}/aws"
pinned=$(sed -n 's/^boto3==//p' "$aws_requirements")
if [ "$("$aws_venv/bin/python" -c 'import boto3; print(boto3.__version__)' 2>/dev/null)" != "$pinned" ]; then
  echo "setup: boto3 $pinned in $aws_venv"
  rm -rf "$aws_venv"
  python3 -m venv "$aws_venv"
  "$aws_venv/bin/pip" install --quiet --disable-pip-version-check -r "$aws_requirements"
fi
ric_requirements="$root/tests/aws/awslambdaric.txt"
ric_dir="${CARGO_TARGET_DIR:-$root/target}/awslambdaric"
pinned=$(sed -n 's/^awslambdaric==//p' "$ric_requirements")
if [ ! -d "$ric_dir/awslambdaric-$pinned.dist-info" ]; then
  echo "setup: awslambdaric $pinned in $ric_dir"
  rm -rf "$ric_dir"
  "$aws_venv/bin/pip" install --quiet --disable-pip-version-check --target "$ric_dir" -r "$ric_requirements"
fi
# The Kubernetes manifests (deploy/kubernetes/) are validated offline
# against the Kubernetes schemas kubernetes-validate bundles
# (tests/e2e/cluster.rs).
k8s_requirements="$root/deploy/kubernetes/requirements.txt"
k8s_venv="${CARGO_TARGET_DIR:-$root/target}/k8s-validate"
pinned=$(sed -n 's/^kubernetes-validate==//p' "$k8s_requirements")
if [ "$("$k8s_venv/bin/kubernetes-validate" --version 2>/dev/null | awk '{print $NF}')" != "$pinned" ]; then
  echo "setup: kubernetes-validate $pinned in $k8s_venv"
  rm -rf "$k8s_venv"
  python3 -m venv "$k8s_venv"
  "$k8s_venv/bin/pip" install --quiet --disable-pip-version-check -r "$k8s_requirements"
fi
