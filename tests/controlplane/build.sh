#!/usr/bin/env bash
# Builds kube-apiserver, kubectl, kube-proxy and etcd for sliceproxy's tests
# into a cache OUTSIDE the repository:
#
#   ${SLICEPROXY_CACHE:-$HOME/.cache/sliceproxy}/controlplane/<K8S_VERSION>-<ETCD_VERSION>/
#
# (versions from versions.env; tests/support/controlplane.rs computes the same
# path). Skips the build when the cached binaries exist and report the
# expected versions. Prints the bin dir on its last line.
#
# Measured on 2 cores with v1.34.4: 3m22s with an empty GOCACHE but modules
# already downloaded; 5m48s fully cold (also downloads ~670 MB into
# GOMODCACHE); cached re-run: 0.1 s. v1.37.2 (+ kube-proxy): 3m25s with a
# warm GOCACHE. In CI, cache this script's output dir keyed on
# versions.env (and/or Go's GOCACHE and GOMODCACHE).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
: "${K8S_VERSION:?versions.env must set K8S_VERSION}"
: "${ETCD_VERSION:?versions.env must set ETCD_VERSION}"

die() { echo "build.sh: error: $*" >&2; exit 1; }
log() { echo "build.sh: $*" >&2; }

command -v go >/dev/null || die "go is not installed (need Go >= 1.24)"

cache_root=${SLICEPROXY_CACHE:-${HOME:?HOME is not set}/.cache/sliceproxy}
bin_dir="$cache_root/controlplane/${K8S_VERSION}-${ETCD_VERSION}"

# Build exactly what go.mod/go.sum say; never let the build edit them.
export GOWORK=off GOFLAGS="-mod=readonly ${GOFLAGS:-}"

# Version probes. Each prints nothing (and fails) when the binary is absent
# or broken.
apiserver_version() { "$1" --version 2>/dev/null | sed -n 's/^Kubernetes \(v[^[:space:]]*\).*/\1/p'; }
kubectl_version()   { "$1" version --client 2>/dev/null | sed -n 's/^Client Version: \(v[^[:space:]]*\).*/\1/p'; }
etcd_version()      { "$1" --version 2>/dev/null | sed -n 's/^etcd Version: \([^[:space:]]*\).*/v\1/p'; }

up_to_date() {
  local d=$1
  [[ -x "$d/kube-apiserver" && -x "$d/kubectl" && -x "$d/kube-proxy" && -x "$d/etcd" ]] || return 1
  [[ "$(apiserver_version "$d/kube-apiserver" || true)" == "$K8S_VERSION" ]] || return 1
  [[ "$(apiserver_version "$d/kube-proxy" || true)" == "$K8S_VERSION" ]] || return 1
  [[ "$(kubectl_version "$d/kubectl" || true)" == "$K8S_VERSION" ]] || return 1
  [[ "$(etcd_version "$d/etcd" || true)" == "$ETCD_VERSION" ]] || return 1
}

if up_to_date "$bin_dir"; then
  log "cached binaries are up to date (kubernetes $K8S_VERSION, etcd $ETCD_VERSION)"
  echo "$bin_dir"
  exit 0
fi

# go.mod must have been regenerated after versions.env changed.
mod_version() { (cd "$here/$1" && go list -m -f '{{.Version}}' "$2"); }
[[ "$(mod_version k8s k8s.io/kubernetes)" == "$K8S_VERSION" ]] ||
  die "k8s/go.mod does not require k8s.io/kubernetes $K8S_VERSION; run $here/gen-gomod.sh"
[[ "$(mod_version etcd go.etcd.io/etcd/server/v3)" == "$ETCD_VERSION" ]] ||
  die "etcd/go.mod does not require go.etcd.io/etcd/server/v3 $ETCD_VERSION; run $here/gen-gomod.sh"

# Build into a scratch dir next to the destination, then rename each binary
# into place, so an interrupted or concurrent run never leaves a half-written
# binary where the tests look.
mkdir -p "$bin_dir"
tmp=$(mktemp -d "$bin_dir/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# shellcheck source=k8s-ldflags.sh
source "$here/k8s-ldflags.sh"

# etcd's version is a constant in go.etcd.io/etcd/api/v3/version; only GitSHA
# is stamped by etcd's ./build script. We have no SHA from the proxy either.
etcd_ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=none(built-from-module-${ETCD_VERSION})"

# CGO off: static binaries, like upstream's release builds, and no C toolchain needed.
export CGO_ENABLED=0

log "building etcd $ETCD_VERSION"
(cd "$here/etcd" && go build -buildvcs=false -trimpath -ldflags "$etcd_ldflags" -o "$tmp/etcd" go.etcd.io/etcd/server/v3)
log "building kube-apiserver, kubectl and kube-proxy $K8S_VERSION (slow: several minutes on a cold Go build cache)"
# One go build for the three: shared packages compile once. kube-proxy is
# upstream's, for the side-by-side benchmark (issue 14).
(cd "$here/k8s" && go build -buildvcs=false -trimpath -ldflags "$k8s_ldflags" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kube-proxy)

for b in etcd kube-apiserver kubectl kube-proxy; do mv -f "$tmp/$b" "$bin_dir/$b"; done

up_to_date "$bin_dir" || {
  log "built binaries report unexpected versions:"
  "$bin_dir/kube-apiserver" --version >&2 || true
  "$bin_dir/kubectl" version --client >&2 || true
  "$bin_dir/kube-proxy" --version >&2 || true
  "$bin_dir/etcd" --version >&2 || true
  die "version check failed after build"
}
log "built kubernetes $K8S_VERSION and etcd $ETCD_VERSION"
echo "$bin_dir"
