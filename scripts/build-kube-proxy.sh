#!/usr/bin/env bash
# Builds upstream kube-proxy (k8s.io/kubernetes/cmd/kube-proxy) of the SAME
# release as the test kube-apiserver into the same cache directory, so the
# side-by-side benchmark (scripts/scale-bench.sh) finds it at
# <bin dir>/kube-proxy, where <bin dir> is the last line printed by
# tests/controlplane/build.sh.
#
# If tests/controlplane/build.sh already builds kube-proxy (issue 13 adds it
# to the cache), this script only checks the version and prints the bin dir.
# Otherwise it copies the wrapper module (tests/controlplane/k8s) to a scratch
# directory OUTSIDE the repository, adds cmd/kube-proxy to its tool list,
# completes go.sum from the Go module proxy (`go mod tidy`; the build list is
# fixed by k8s.io/kubernetes's own go.mod, only checksums are added) and builds
# with exactly build.sh's ldflags (version stamping, -s -w, CGO off).
#
# Prints the bin dir on its last line. Measured on this 2-core machine: see
# the README ("Side by side with kube-proxy").
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cp_dir="$repo/tests/controlplane"
# shellcheck source=../tests/controlplane/versions.env
source "$cp_dir/versions.env"
: "${K8S_VERSION:?versions.env must set K8S_VERSION}"

die() { echo "build-kube-proxy.sh: error: $*" >&2; exit 1; }
log() { echo "build-kube-proxy.sh: $*" >&2; }

command -v go >/dev/null || die "go is not installed (need Go >= 1.24)"
bin_dir=$("$cp_dir/build.sh" | tail -n 1)
[[ -d "$bin_dir" ]] || die "tests/controlplane/build.sh did not print a bin dir (got '$bin_dir')"

kube_proxy_version() { "$1" --version 2>/dev/null | sed -n 's/^Kubernetes \(v[^[:space:]]*\).*/\1/p'; }

if [[ -x "$bin_dir/kube-proxy" && "$(kube_proxy_version "$bin_dir/kube-proxy" || true)" == "$K8S_VERSION" ]]; then
  log "cached kube-proxy $K8S_VERSION is up to date"
  echo "$bin_dir"
  exit 0
fi

cache_root=${SLICEPROXY_CACHE:-${HOME:?HOME is not set}/.cache/sliceproxy}
work="$cache_root/kube-proxy-module/$K8S_VERSION"
mkdir -p "$work"
cp -f "$cp_dir/k8s/go.mod" "$cp_dir/k8s/go.sum" "$work/"
export GOWORK=off
if ! grep -q 'k8s.io/kubernetes/cmd/kube-proxy' "$work/go.mod"; then
  # Add the tool line inside the existing `tool (` block.
  sed -i 's#^tool (#tool (\n\tk8s.io/kubernetes/cmd/kube-proxy#' "$work/go.mod"
fi
grep -q 'k8s.io/kubernetes/cmd/kube-proxy' "$work/go.mod" || die "could not add kube-proxy to the module's tool list"
log "completing go.sum for cmd/kube-proxy in $work"
(cd "$work" && GOFLAGS=-mod=mod go mod tidy)
want=$(cd "$cp_dir/k8s" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
got=$(cd "$work" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
[[ "$want" == "$got" && "$got" == "$K8S_VERSION" ]] || die "module resolves k8s.io/kubernetes $got, expected $K8S_VERSION"

# The same stamping as tests/controlplane/build.sh.
k8s_minor=${K8S_VERSION#v1.}; k8s_minor=${k8s_minor%%.*}
k8s_date=$(cd "$work" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)
[[ -n "$k8s_date" ]] || die "could not read the release date of k8s.io/kubernetes@$K8S_VERSION"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
  ldflags+=" -X $pkg.gitCommit= -X $pkg.buildDate=$k8s_date"
done

tmp=$(mktemp -d "$bin_dir/.build-kube-proxy.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
log "building kube-proxy $K8S_VERSION (several minutes on a cold Go build cache)"
start=$(date +%s)
(cd "$work" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -buildvcs=false -trimpath -ldflags "$ldflags" \
  -o "$tmp/kube-proxy" k8s.io/kubernetes/cmd/kube-proxy)
mv -f "$tmp/kube-proxy" "$bin_dir/kube-proxy"
[[ "$(kube_proxy_version "$bin_dir/kube-proxy" || true)" == "$K8S_VERSION" ]] ||
  die "built kube-proxy reports '$("$bin_dir/kube-proxy" --version 2>&1)', expected $K8S_VERSION"
log "built kube-proxy $K8S_VERSION in $(($(date +%s) - start)) s"
echo "$bin_dir"
