#!/usr/bin/env bash
# Upstream's judgement: a whole cluster in network namespaces, sliceproxy as
# its only service proxy (a real DaemonSet from daemonset/), and the e2e
# conformance tests of the pinned Kubernetes release run against it.
#
#   scripts/conformance.sh [--mode iptables|nftables] [--focus REGEX] [--skip REGEX]
#                          [--nodes 1|2] [--smoke]
#
# Builds what is missing (tests/cluster/build.sh, images.sh, the sliceproxy
# image), starts the cluster (tests/cluster/up.sh), runs e2e.test with the
# focus from the control-plane namespace, prints pass/fail/skip per test,
# keeps the JUnit report under target/conformance/ (path printed) and tears
# everything down (tests/cluster/down.sh), also on failure and Ctrl-C.
# --smoke runs tests/cluster/smoke.sh instead of e2e.test (one Service
# reached from a pod; what CI runs). Needs root. Default focus: every
# [sig-network] conformance test (the Services ones and the others that
# go through the service proxy: EndpointSlices, DNS via the kube-dns
# Service, the API server's service proxy, ...).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

MODE=iptables
NODES=2
FOCUS='\[sig-network\].*\[Conformance\]'
SKIP=''
SMOKE=''
while (($#)); do
  case $1 in
    --mode) MODE=$2; shift 2 ;;
    --focus) FOCUS=$2; shift 2 ;;
    --skip) SKIP=$2; shift 2 ;;
    --nodes) NODES=$2; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ $(id -u) -eq 0 ]] || { echo "conformance.sh: run as root (namespaces, mounts, cgroups)" >&2; exit 1; }
missing=()
for tool in go gcc pkg-config python3 openssl debootstrap nsenter unshare ip setcap; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
[[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
pkg-config --exists libseccomp 2>/dev/null || missing+=(libseccomp-dev)
if ((${#missing[@]})); then
  echo "conformance.sh: missing ${missing[*]} (.ci/run installs them)" >&2
  exit 1
fi

export CLUSTER_ID=${CLUSTER_ID:-conformance}
# shellcheck source=../tests/cluster/lib.sh
source tests/cluster/lib.sh
t0=$SECONDS

# --- build what is missing -------------------------------------------------------------
tests/cluster/build.sh ${SMOKE:+--no-e2e}
mapfile -t archives < <(tests/cluster/images.sh)
export CLUSTER_IMAGES="${archives[*]}"
cargo build --release --locked --bin sliceproxy
img_dir=$cache_root/cluster/images
SLICEPROXY_IMAGE=$img_dir/sliceproxy-$(sha256sum target/release/sliceproxy Dockerfile scripts/check-runtime-image.sh | sha256sum | cut -c1-12).tar
export SLICEPROXY_IMAGE
if [[ ! -f $SLICEPROXY_IMAGE ]]; then
  # The rootfs (debootstrap of the Dockerfile's runtime packages) is kept between runs.
  ROOTFS=$cache_root/cluster/sliceproxy-rootfs KEEP_ROOTFS=1 \
    scripts/check-runtime-image.sh --image "$SLICEPROXY_IMAGE" --name docker.io/library/sliceproxy:latest >&2
fi
build_s=$((SECONDS - t0))
log "build step: ${build_s}s"

# --- the cluster -------------------------------------------------------------------------
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  log "tearing down $CLUSTER_ID"
  tests/cluster/down.sh || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
tests/cluster/down.sh >/dev/null 2>&1 || true   # leftovers of an earlier run, by name
t1=$SECONDS
tests/cluster/up.sh --nodes "$NODES" --mode "$MODE"
up_s=$((SECONDS - t1))
log "cluster up in ${up_s}s"
log "sliceproxy's first full sync, from kubectl logs:"
for n in $(seq 1 "$NODES"); do
  pod=$(kc -n kube-system get pods -l app.kubernetes.io/name=sliceproxy \
    --field-selector "spec.nodeName=$(node_name "$n")" -o jsonpath='{.items[0].metadata.name}')
  kc -n kube-system logs "$pod" | grep -m1 -i 'full' | sed "s/^/  $pod: /" >&2 || log "  $pod: no full sync in its log yet"
done

if [[ -n $SMOKE ]]; then
  tests/cluster/smoke.sh
  log "smoke OK (build ${build_s}s, cluster up ${up_s}s, total $((SECONDS - t0))s)"
  exit 0
fi

# --- upstream's e2e tests ------------------------------------------------------------------
rc=0
tests/cluster/e2e.sh --mode "$MODE" --focus "$FOCUS" ${SKIP:+--skip "$SKIP"} || rc=$?
log "build ${build_s}s, cluster up ${up_s}s, total $((SECONDS - t0))s"
exit "$rc"
