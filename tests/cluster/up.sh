#!/usr/bin/env bash
# Starts a whole Kubernetes cluster in network namespaces (see lib.sh for
# the topology), with NO kube-proxy, and deploys sliceproxy from daemonset/
# as a real DaemonSet, then CoreDNS (upstream's addon manifest):
#
#   tests/cluster/up.sh [--nodes 1|2] [--mode iptables|nftables]
#
# Needs root, ./build.sh's binaries, ./images.sh's archives and the
# sliceproxy image archive in $SLICEPROXY_IMAGE (scripts/conformance.sh
# does all of that). On failure it leaves the cluster up for inspection;
# the caller tears down with down.sh (conformance.sh does, via a trap).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

NODES=2
MODE=iptables
while (($#)); do
  case $1 in
    --nodes) NODES=$2; shift 2 ;;
    --mode) MODE=$2; shift 2 ;;
    *) die "usage: $0 [--nodes 1|2] [--mode iptables|nftables]" ;;
  esac
done
[[ $NODES == 1 || $NODES == 2 ]] || die "--nodes must be 1 or 2"
[[ $MODE == iptables || $MODE == nftables ]] || die "--mode must be iptables or nftables"
[[ $(id -u) -eq 0 ]] || die "run as root"
: "${SLICEPROXY_IMAGE:?set SLICEPROXY_IMAGE to the sliceproxy image archive (scripts/check-runtime-image.sh --image)}"
: "${CLUSTER_IMAGES:?set CLUSTER_IMAGES to the archives tests/cluster/images.sh printed (space-separated)}"
for b in "$CP_BIN"/{etcd,kube-apiserver,kubectl} "$K8S_BIN"/{kube-controller-manager,kube-scheduler,kubelet} \
  "$CTD_BIN"/{containerd,containerd-shim-runc-v2,ctr} "$RUNC_BIN" "$CNI_BIN"/{bridge,host-local,loopback,portmap}; do
  [[ -x $b ]] || die "$b is missing (tests/cluster/build.sh; Debian's containernetworking-plugins)"
done
[[ -e /run/netns/$NS_CP || -e /run/netns/$NS_BR ]] && die "cluster $CLUSTER_ID exists: run tests/cluster/down.sh first"

mkdir -p "$STATE"/{pki,logs,pids,ns,etcd}
echo "$NODES" > "$STATE/nodes.count"

# --- PKI: one CA; the API server's serving cert; tokens for every client ----------
pki=$STATE/pki
gen_pki() {
  cd "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj "/CN=sliceproxy-cluster-ca" 2>/dev/null
  local san="IP:10.96.0.1,IP:$CP_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
  openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -out apiserver.crt \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san") 2>/dev/null
  # The API server's client identity towards kubelets (exec, logs, port-forward).
  openssl req -newkey rsa:2048 -nodes -keyout apiserver-kubelet.key -out apiserver-kubelet.csr \
    -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" 2>/dev/null
  openssl x509 -req -in apiserver-kubelet.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -out apiserver-kubelet.crt \
    -extfile <(printf 'extendedKeyUsage=clientAuth\n') 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  # token,user,uid,"groups": static tokens keep the bench free of CSR plumbing.
  local t
  : > tokens.csv
  tok() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
  t=$(tok); echo "$t,admin,admin,\"system:masters\"" >> tokens.csv; kubeconfig admin "$t"
  t=$(tok); echo "$t,system:kube-controller-manager,kcm" >> tokens.csv; kubeconfig kube-controller-manager "$t"
  t=$(tok); echo "$t,system:kube-scheduler,scheduler" >> tokens.csv; kubeconfig kube-scheduler "$t"
  for n in 1 2; do
    t=$(tok); echo "$t,system:node:$(node_name "$n"),node-$n,\"system:nodes\"" >> tokens.csv
    kubeconfig "kubelet-$n" "$t"
  done
  cd - >/dev/null
}
kubeconfig() {  # kubeconfig NAME TOKEN -> $pki/NAME.kubeconfig
  cat > "$pki/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: $APISERVER
    certificate-authority: $pki/ca.crt
users:
- name: $1
  user:
    token: $2
contexts:
- name: local
  context: {cluster: local, user: $1}
current-context: local
EOF
}
log "certificates and tokens in $pki"
gen_pki

# --- network: a bridge namespace, the control plane, the nodes -----------------------
ip netns add "$NS_BR"
ip -n "$NS_BR" link set lo up
ip -n "$NS_BR" link add br0 type bridge
ip -n "$NS_BR" link set br0 up
# attach NS IFNAME ADDR: a veth from the bridge into NS, addressed ADDR/24.
attach() {
  local ns=$1 peer=$2 addr=$3
  ip -n "$NS_BR" link add "$peer" type veth peer name eth0 netns "$ns"
  ip -n "$NS_BR" link set "$peer" master br0 up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
}
ip netns add "$NS_CP"
attach "$NS_CP" v-cp "$CP_IP"
for n in $(seq 1 "$NODES"); do
  ns=$(node_ns "$n")
  ip netns add "$ns"
  attach "$ns" "v-n$n" "$(node_ip "$n")"
  # Pods route through their node: forwarding on, and the node's pod-facing
  # bridge (cni0) is the pods' gateway. Cluster IPs need a route on the node
  # for node-originated traffic (no default route here): via the node network.
  ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
  ip -n "$ns" route add "$SERVICE_CIDR" dev eth0
done
# Every namespace reaches every pod CIDR through the node that owns it.
for n in $(seq 1 "$NODES"); do
  for other in "$NS_CP" $(for m in $(seq 1 "$NODES"); do [[ $m == "$n" ]] || node_ns "$m"; done); do
    ip -n "$other" route add "$(pod_cidr "$n")" via "$(node_ip "$n")"
  done
done

# --- control plane ------------------------------------------------------------------
log "starting etcd and kube-apiserver in $NS_CP"
spawn etcd ip netns exec "$NS_CP" "$CP_BIN/etcd" --name=cluster --data-dir="$STATE/etcd" \
  --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
  --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
  --initial-cluster=cluster=http://127.0.0.1:2380 --unsafe-no-fsync=true --log-level=warn
spawn kube-apiserver ip netns exec "$NS_CP" "$CP_BIN/kube-apiserver" \
  --etcd-servers=http://127.0.0.1:2379 --bind-address=0.0.0.0 --secure-port=6443 \
  --advertise-address="$CP_IP" --service-cluster-ip-range="$SERVICE_CIDR" \
  --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" --token-auth-file="$pki/tokens.csv" \
  --kubelet-client-certificate="$pki/apiserver-kubelet.crt" --kubelet-client-key="$pki/apiserver-kubelet.key" \
  --kubelet-preferred-address-types=InternalIP \
  --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --allow-privileged=true --profiling=false --v=1
wait_for 120 "kube-apiserver /readyz" kc get --raw=/readyz || die "kube-apiserver did not become ready (see $STATE/logs/kube-apiserver.log)"

log "starting kube-controller-manager and kube-scheduler"
spawn kube-controller-manager ip netns exec "$NS_CP" "$K8S_BIN/kube-controller-manager" \
  --kubeconfig="$pki/kube-controller-manager.kubeconfig" \
  --authentication-kubeconfig="$pki/kube-controller-manager.kubeconfig" \
  --authorization-kubeconfig="$pki/kube-controller-manager.kubeconfig" \
  --use-service-account-credentials=true --service-account-private-key-file="$pki/sa.key" \
  --root-ca-file="$pki/ca.crt" --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" --allocate-node-cidrs=false \
  --bind-address=127.0.0.1 --leader-elect=false --profiling=false --v=1
spawn kube-scheduler ip netns exec "$NS_CP" "$K8S_BIN/kube-scheduler" \
  --kubeconfig="$pki/kube-scheduler.kubeconfig" \
  --authentication-kubeconfig="$pki/kube-scheduler.kubeconfig" \
  --authorization-kubeconfig="$pki/kube-scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false --profiling=false --v=1

# --- nodes --------------------------------------------------------------------------
# A file where nothing listens, in the node network: pods with dnsPolicy
# Default (CoreDNS's upstream) resolve external names nowhere rather than
# through the host.
echo "nameserver 172.31.250.53" > "$STATE/resolv.conf"

# The ns/ dir must be a private mount for namespace files to be bound in it.
mount --bind "$STATE/ns" "$STATE/ns"
mount --make-private "$STATE/ns"

start_node() {
  local n=$1 ns dir name ip cidr
  ns=$(node_ns "$n"); dir=$(node_dir "$n"); name=$(node_name "$n"); ip=$(node_ip "$n"); cidr=$(pod_cidr "$n")
  mkdir -p "$dir"/{containerd,cni/net.d,cni/ipam,kubelet,pod-logs,runc,sysctl}
  log "starting $name in $ns ($ip, pods $cidr)"

  # The node's own mount namespace, entered together with its network namespace.
  touch "$STATE/ns/node-$n.mnt"
  unshare --mount="$STATE/ns/node-$n.mnt" --propagation private true
  # sysfs of the node's network namespace (as `ip netns exec` does), keeping the cgroup mounts.
  in_node "$n" sh -ec '
    mkdir -p /run/sliceproxy-cg-'"$CLUSTER_ID-$n"'
    mount --rbind /sys/fs/cgroup /run/sliceproxy-cg-'"$CLUSTER_ID-$n"'
    umount -l /sys
    mount -t sysfs sysfs /sys
    mount --move /run/sliceproxy-cg-'"$CLUSTER_ID-$n"' /sys/fs/cgroup
    rmdir /run/sliceproxy-cg-'"$CLUSTER_ID-$n"'
  '
  # kubelet sets vm.overcommit_memory, vm.panic_on_oom, kernel.panic,
  # kernel.panic_on_oops and kernel.keys.root_max{keys,bytes} machine-wide
  # unless they already have its values. This machine is shared, so the
  # node's mount namespace sees read-only files holding those values instead
  # (protectKernelDefaults then only checks them); containers get their own /proc.
  local key val
  for kv in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
    kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
    key=${kv%=*}; val=${kv#*=}
    echo "$val" > "$dir/sysctl/${key//\//.}"
    in_node "$n" mount --bind -o ro "$dir/sysctl/${key//\//.}" "/proc/sys/$key"
  done

  # CNI: a bridge per node, host-local addresses from the node's pod CIDR.
  cat > "$dir/cni/net.d/10-bridge.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "cluster",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni/ipam",
        "ranges": [[{"subnet": "$cidr", "gateway": "${cidr%.0/24}.1"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

  cat > "$dir/containerd/config.toml" <<EOF
version = 3
root = "$dir/containerd/root"
state = "$dir/containerd/state"
# Nothing outside \$STATE: no /opt/containerd, no NRI socket, no tracing.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.erofs"]
[grpc]
  address = "$dir/containerd/containerd.sock"
[ttrpc]
  address = "$dir/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "registry.k8s.io/pause:$PAUSE_TAG"
[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  # This machine withholds CAP_SYS_RESOURCE even from root, so nothing may lower
  # its oom_score_adj (runc failed to set a sandbox's -998): clamp every
  # container's to containerd's own, as containerd does for rootless setups.
  restrict_oom_score_adj = true
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      # The sandbox image is imported; a pull would leave the box.
      disable_pause_image_pull = true
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$RUNC_BIN"
        Root = "$dir/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["$CNI_BIN"]
    conf_dir = "$dir/cni/net.d"
    max_conf_num = 1
[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF
  # The shim is found on PATH, next to containerd.
  spawn "containerd-$n" env PATH="$CTD_BIN:/usr/sbin:/usr/bin:/sbin:/bin" \
    nsenter --net="/run/netns/$ns" --mount="$STATE/ns/node-$n.mnt" -- \
    "$CTD_BIN/containerd" --config "$dir/containerd/config.toml"
  wait_for 60 "containerd on $name" ctr_node "$n" version ||
    die "containerd on $name did not start (see $STATE/logs/containerd-$n.log)"

  local archive
  for archive in $CLUSTER_IMAGES "$SLICEPROXY_IMAGE"; do
    ctr_node "$n" images import --platform linux/amd64 "$archive" >/dev/null ||
      die "importing $archive into $name failed"
  done

  cat > "$dir/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This kernel has cgroup v1 only; kubelet >= 1.35 refuses it unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $(cgroup_root "$n")
cgroupsPerQOS: true
containerRuntimeEndpoint: unix://$dir/containerd/containerd.sock
address: $ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization:
  mode: Webhook
clusterDNS: [$DNS_IP]
clusterDomain: cluster.local
resolvConf: $STATE/resolv.conf
podLogsDir: $dir/pod-logs
protectKernelDefaults: true
failSwapOn: false
rotateCertificates: false
serverTLSBootstrap: false
# Images are imported, never pulled: never garbage-collect them either.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# No disk-based eviction ("0%" disables a signal, as kind does): a node's
# filesystem is the host's, shared with other work, and under disk pressure the
# eviction manager deletes every image no running pod uses (agnhost, nginx,
# ...), which nothing can pull back: a first nftables run lost them when the
# host's disk reached 99% and every test then sat in ImagePullBackOff.
evictionHard:
  memory.available: 100Mi
  nodefs.available: "0%"
  imagefs.available: "0%"
  nodefs.inodesFree: "0%"
EOF
  # kubelet wants its cgroup root to exist in every v1 hierarchy; a new
  # cpuset group starts with no CPUs or memory nodes: copy the parent's.
  local h
  for h in /sys/fs/cgroup/*/; do
    [[ -e $h/cgroup.procs ]] || continue
    mkdir -p "$h$(cgroup_root "$n")"
    if [[ -e $h/cpuset.cpus ]]; then
      cat "$h/cpuset.cpus" > "$h$(cgroup_root "$n")/cpuset.cpus"
      cat "$h/cpuset.mems" > "$h$(cgroup_root "$n")/cpuset.mems"
    fi
  done
  spawn "kubelet-$n" nsenter --net="/run/netns/$ns" --mount="$STATE/ns/node-$n.mnt" -- \
    "$K8S_BIN/kubelet" --config="$dir/kubelet/config.yaml" --kubeconfig="$pki/kubelet-$n.kubeconfig" \
    --root-dir="$dir/kubelet" --cert-dir="$dir/kubelet/pki" --hostname-override="$name" --node-ip="$ip" --v=1
}
PAUSE_TAG=$(for a in $CLUSTER_IMAGES; do basename "$a"; done | sed -n 's/^pause-\([0-9.]*\)-.*/\1/p')
[[ -n $PAUSE_TAG ]] || die "no pause archive in CLUSTER_IMAGES"
for n in $(seq 1 "$NODES"); do start_node "$n"; done

node_ready() { [[ "$(kc get node "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]; }
for n in $(seq 1 "$NODES"); do
  wait_for 180 "$(node_name "$n") Ready" node_ready "$(node_name "$n")" ||
    die "$(node_name "$n") is not Ready (see $STATE/logs/kubelet-$n.log)"
done
log "nodes Ready: $(kc get nodes -o name | tr '\n' ' ')"

# --- sliceproxy from daemonset/, as shipped, with this cluster's values --------------
overlay=$STATE/sliceproxy-overlay
mkdir -p "$overlay"
cp -r "$repo/daemonset" "$overlay/base"
# The values daemonset/configmap.yaml leaves to each cluster (its comments
# say so): the pod CIDR and the API server's real address; and the mode.
sed -i -e "s|^\(    clusterCIDR:\).*|\1 $CLUSTER_CIDR|" -e "s|^\(    mode:\).*|\1 $MODE|" \
  -e "s|^\(          server:\).*|\1 $APISERVER|" "$overlay/base/configmap.yaml"
grep -q "clusterCIDR: $CLUSTER_CIDR" "$overlay/base/configmap.yaml" && grep -q "server: $APISERVER" "$overlay/base/configmap.yaml" ||
  die "daemonset/configmap.yaml no longer has the clusterCIDR and server lines this script sets"
cat > "$overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [base]
# The image imported into every node (never pulled; IfNotPresent as shipped).
images:
  - name: sliceproxy
    newName: docker.io/library/sliceproxy
    newTag: latest
EOF
log "deploying sliceproxy (mode $MODE): kubectl apply -k"
kc apply -k "$overlay" >/dev/null
ds_ready() {
  local want have
  want=$(kc -n kube-system get ds sliceproxy -o jsonpath='{.status.desiredNumberScheduled}')
  have=$(kc -n kube-system get ds sliceproxy -o jsonpath='{.status.numberReady}')
  [[ -n $want && $want == "$NODES" && $have == "$want" ]]
}
wait_for 180 "the sliceproxy DaemonSet Ready on $NODES node(s)" ds_ready || {
  kc -n kube-system get pods -o wide >&2 || true
  kc -n kube-system logs ds/sliceproxy --tail=50 >&2 || true
  die "sliceproxy DaemonSet not Ready"
}
kc -n kube-system get pods -l app.kubernetes.io/name=sliceproxy -o wide >&2

# --- CoreDNS: upstream's addon manifest (the Services tests reach Services by name) -----
k8s_src=$(cd "$repo/tests/controlplane/k8s" && GOWORK=off go list -m -f '{{.Dir}}' k8s.io/kubernetes)
sed -e "s/__DNS__DOMAIN__/cluster.local/g; s/__DNS__SERVER__/$DNS_IP/g; s/__DNS__MEMORY__LIMIT__/170Mi/g" \
  -e "s|registry.k8s.io/coredns/coredns:v[0-9.]*|registry.k8s.io/coredns/coredns:$COREDNS_VERSION|" \
  "$k8s_src/cluster/addons/dns/coredns/coredns.yaml.base" > "$STATE/coredns.yaml"
kc apply -f "$STATE/coredns.yaml" >/dev/null
# Upstream's manifest keeps one replica; the e2e framework waits for kube-system to be Ready.
wait_for 180 "CoreDNS Ready" kc -n kube-system wait --for=condition=Available deploy/coredns --timeout=1s || {
  kc -n kube-system get pods -o wide >&2 || true
  kc -n kube-system logs deploy/coredns --tail=30 >&2 || true
  die "CoreDNS not Available"
}
log "cluster $CLUSTER_ID is up: $NODES node(s), sliceproxy ($MODE) and CoreDNS Ready; kubeconfig $pki/admin.kubeconfig"
