# Shared by tests/cluster/{up,down,smoke}.sh and scripts/conformance.sh
# (sourced, not run). Names, addresses and paths of one cluster in a box.
#
# Topology (every namespace created here, named "$CLUSTER_ID-...", none
# with a route to the host's network; nothing runs in the root namespace
# except the tooling's own `ip`/`nsenter`):
#
#   $CLUSTER_ID-br   a bridge (br0) joining the others on 172.31.250.0/24
#   $CLUSTER_ID-cp   172.31.250.2: etcd (loopback), kube-apiserver :6443,
#                    kube-controller-manager, kube-scheduler, kubectl, e2e.test
#   $CLUSTER_ID-n1   172.31.250.11: node-1, containerd + kubelet, pods 10.244.1.0/24
#   $CLUSTER_ID-n2   172.31.250.12: node-2, containerd + kubelet, pods 10.244.2.0/24
#
# Each node also gets its own mount namespace (bound at
# $STATE/ns/<node>.mnt) shared by its containerd, shims and kubelet, so every
# mount they make (overlay rootfs, pod netns, kubelet volumes) disappears
# with them; its own cgroup root (/sliceproxy-$CLUSTER_ID-<node> in every
# v1 hierarchy), containerd root/state/socket, kubelet root dir and CNI dirs
# under $STATE.

CLUSTER_ID=${CLUSTER_ID:-cluster}
[[ $CLUSTER_ID =~ ^[a-z][a-z0-9-]{0,15}$ ]] || { echo "CLUSTER_ID must match [a-z][a-z0-9-]{0,15}" >&2; exit 2; }
STATE=${STATE:-${TMPDIR:-/tmp}/sliceproxy-$CLUSTER_ID}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../controlplane/versions.env
source "$repo/tests/controlplane/versions.env"
# shellcheck source=versions.env
source "$repo/tests/cluster/versions.env"
cache_root=${SLICEPROXY_CACHE:-${HOME:?HOME is not set}/.cache/sliceproxy}
CP_BIN=$cache_root/controlplane/$K8S_VERSION-$ETCD_VERSION
K8S_BIN=$cache_root/cluster/k8s-$K8S_VERSION
CTD_BIN=$cache_root/cluster/containerd-$CONTAINERD_VERSION
RUNC_BIN=$cache_root/cluster/runc-$RUNC_VERSION/runc
CNI_BIN=/usr/lib/cni   # Debian's containernetworking-plugins

NS_BR=$CLUSTER_ID-br
NS_CP=$CLUSTER_ID-cp
CP_IP=172.31.250.2
NODE_NET=172.31.250.0/24
SERVICE_CIDR=10.96.0.0/16
CLUSTER_CIDR=10.244.0.0/16
DNS_IP=10.96.0.10
APISERVER=https://$CP_IP:6443

# node_ns N, node_name N, node_ip N, pod_cidr N (N = 1, 2)
node_ns() { echo "$CLUSTER_ID-n$1"; }
node_name() { echo "node-$1"; }
node_ip() { echo "172.31.250.$((10 + $1))"; }
pod_cidr() { echo "10.244.$1.0/24"; }
node_dir() { echo "$STATE/nodes/node-$1"; }
cgroup_root() { echo "/sliceproxy-$CLUSTER_ID-node-$1"; }

log() { printf '%s cluster: %s\n' "$(date +%T)" "$*" >&2; }
die() { printf '%s cluster: error: %s\n' "$(date +%T)" "$*" >&2; exit 1; }

# in_cp CMD...: run in the control-plane namespace.
in_cp() { ip netns exec "$NS_CP" "$@"; }
# kc ARGS...: kubectl as cluster-admin, from the control-plane namespace.
kc() { in_cp "$CP_BIN/kubectl" --kubeconfig "$STATE/pki/admin.kubeconfig" "$@"; }
# in_node N CMD...: run in node N's network and mount namespaces.
in_node() {
  local n=$1; shift
  nsenter --net="/run/netns/$(node_ns "$n")" --mount="$STATE/ns/node-$n.mnt" -- "$@"
}
# ctr_node N ARGS...: ctr against node N's containerd, in the k8s.io namespace.
ctr_node() {
  local n=$1; shift
  in_node "$n" "$CTD_BIN/ctr" --address "$(node_dir "$n")/containerd/containerd.sock" -n k8s.io "$@"
}

# spawn NAME CMD...: starts CMD in its own session, logs to $STATE/logs/NAME.log,
# records its PID in $STATE/pids/NAME.pid (down.sh kills by these PIDs).
spawn() {
  local name=$1; shift
  mkdir -p "$STATE/logs" "$STATE/pids"
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$STATE/pids/$name.pid"
}

# wait_for SECONDS WHAT CMD...: polls CMD once a second until it succeeds.
wait_for() {
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { log "timed out after ${secs}s waiting for $what"; return 1; }
    sleep 1
  done
}
