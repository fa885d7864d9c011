#!/usr/bin/env bash
# The short check of a running cluster (tests/cluster/up.sh) that CI runs:
# a Service backed by one agnhost pod is reached from another pod, by its
# ClusterIP and by its DNS name (through the kube-dns Service), and answers
# with the backend pod's name. All traffic stays inside the cluster's
# namespaces: the client is a pod, started with `kubectl exec`.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

agnhost=$(ls "$cache_root/cluster/images" | sed -n 's/^agnhost-\([0-9.]*\)-.*\.tar$/\1/p' | head -1)
[[ -n $agnhost ]] || die "no agnhost image archive"
image=registry.k8s.io/e2e-test-images/agnhost:$agnhost
ns=smoke
kc create namespace "$ns" >/dev/null
kc -n "$ns" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: backend, labels: {app: backend}}
spec:
  containers:
  - name: agnhost
    image: $image
    imagePullPolicy: Never
    args: ["serve-hostname", "--port=9376"]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers:
  - name: agnhost
    image: $image
    imagePullPolicy: Never
    args: ["pause"]
---
apiVersion: v1
kind: Service
metadata: {name: backend}
spec:
  selector: {app: backend}
  ports: [{port: 80, targetPort: 9376, protocol: TCP}]
EOF
kc -n "$ns" wait --for=condition=Ready pod/backend pod/client --timeout=120s >/dev/null ||
  { kc -n "$ns" get pods -o wide >&2; die "smoke pods not Ready"; }
ip=$(kc -n "$ns" get svc backend -o jsonpath='{.spec.clusterIP}')
reach() {  # reach TARGET: the backend's name through the Service, within 30 s
  local deadline=$((SECONDS + 30)) out
  while ((SECONDS < deadline)); do
    out=$(kc -n "$ns" exec client -- curl -sS --max-time 2 "http://$1/" 2>/dev/null || true)
    [[ $out == backend ]] && { log "smoke: $1 -> $out"; return 0; }
    sleep 1
  done
  die "smoke: $1 did not answer with the backend's name (last: '${out:-}')"
}
reach "$ip"
reach "backend.$ns.svc.cluster.local"
kc delete namespace "$ns" --wait=false >/dev/null
log "smoke: OK"
