#!/usr/bin/env bash
# Builds everything the whole-cluster bench runs, from the Go module proxy
# and Debian's compiler, into a cache OUTSIDE the repository, one directory
# per version (an up-to-date directory is left alone):
#
#   <cache>/controlplane/<k8s>-<etcd>/     etcd kube-apiserver kubectl kube-proxy (../controlplane/build.sh)
#   <cache>/cluster/k8s-<k8s>/             kube-controller-manager kube-scheduler kubelet agnhost e2e.test
#   <cache>/cluster/containerd-<v>/        containerd containerd-shim-runc-v2 ctr
#   <cache>/cluster/runc-<v>/              runc (CGO + libseccomp: apt-get install libseccomp-dev)
#   <cache>/cluster/coredns-<v>/           coredns
#   <cache>/cluster/pause-<tag>/           pause (build/pause/linux/pause.c, gcc -static)
#
# <cache> is ${SLICEPROXY_CACHE:-$HOME/.cache/sliceproxy}. Prints nothing on
# stdout; logs go to stderr. Versions: ../controlplane/versions.env and
# versions.env beside this script; the pause and agnhost tags are the ones
# the e2e framework of that release asks for (test/utils/image/manifest.go).
#
#   tests/cluster/build.sh [--no-e2e]    # --no-e2e: everything but e2e.test (the smoke needs no e2e)
set -euo pipefail
WANT_E2E=1
case ${1:-} in
  --no-e2e) WANT_E2E='' ;;
  '') ;;
  *) echo "usage: $0 [--no-e2e]" >&2; exit 2 ;;
esac
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cp_dir=$here/../controlplane
# shellcheck source=../controlplane/versions.env
source "$cp_dir/versions.env"
# shellcheck source=versions.env
source "$here/versions.env"

log() { echo "cluster/build.sh: $*" >&2; }
die() { echo "cluster/build.sh: error: $*" >&2; exit 1; }

cache_root=${SLICEPROXY_CACHE:-${HOME:?HOME is not set}/.cache/sliceproxy}
export GOWORK=off GOFLAGS="-mod=readonly ${GOFLAGS:-}"

k8s_src=$(cd "$cp_dir/k8s" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
[[ -d "$k8s_src/test/e2e" ]] || die "k8s.io/kubernetes $K8S_VERSION source not in the module cache (run go mod download in $cp_dir/k8s)"

# image_tag NAME: the tag test/utils/image/manifest.go gives configs[NAME].
image_tag() {
  sed -n "s/^[[:space:]]*configs\[$1\] = Config{[^,]*, \"[^\"]*\", \"\([^\"]*\)\"}.*/\1/p" \
    "$k8s_src/test/utils/image/manifest.go"
}

# Builds into dir/.build.XXXX, then renames each file into place, so an
# interrupted run never leaves a half-written binary behind.
# build_into DIR FILE... -- COMMAND (run with $out set to the scratch dir)
build_into() {
  local dir=$1; shift
  local files=()
  while [[ $1 != -- ]]; do files+=("$1"); shift; done; shift
  mkdir -p "$dir"
  local out; out=$(mktemp -d "$dir/.build.XXXXXX")
  if ! (export out; eval "$*"); then rm -rf "$out"; die "building ${files[*]} failed"; fi
  for f in "${files[@]}"; do mv -f "$out/$f" "$dir/$f"; done
  rm -rf "$out"
}

# version_of BINARY ARGS...: what BINARY ARGS prints, read to the end. Never
# `binary --version | grep -q`: grep -q exits at its first match, the binary's
# next write gets SIGPIPE and pipefail turns a cached binary into a rebuild
# (seen under load: runc rebuilt although `runc --version` was right).
version_of() { "$@" 2>/dev/null || true; }

k8s_version_of() { "$1" --version 2>/dev/null | sed -n 's/^Kubernetes \(v[^[:space:]]*\).*/\1/p'; }

# --- containerd ------------------------------------------------------------------
ctd_dir=$cache_root/cluster/containerd-$CONTAINERD_VERSION
ctd_pkg=github.com/containerd/containerd/v2
if grep -q " $CONTAINERD_VERSION " <<<"$(version_of "$ctd_dir/containerd" --version)" &&
   [[ -x "$ctd_dir/containerd-shim-runc-v2" && -x "$ctd_dir/ctr" ]]; then
  log "containerd $CONTAINERD_VERSION is cached"
else
  log "building containerd $CONTAINERD_VERSION"
  # Static (CGO off), as containerd's static release; the version stamp as its Makefile sets it.
  ctd_ldflags="-s -w -X $ctd_pkg/version.Version=$CONTAINERD_VERSION -X $ctd_pkg/version.Revision=module-proxy -X $ctd_pkg/version.Package=$ctd_pkg"
  export ctd_ldflags ctd_pkg
  build_into "$ctd_dir" containerd containerd-shim-runc-v2 ctr -- '
    cd "'"$here"'/modules/containerd" &&
    CGO_ENABLED=0 go build -buildvcs=false -trimpath -tags "urfave_cli_no_docs osusergo netgo static_build" \
      -ldflags "$ctd_ldflags" -o "$out/" $ctd_pkg/cmd/containerd $ctd_pkg/cmd/ctr &&
    CGO_ENABLED=0 go build -buildvcs=false -trimpath -tags "urfave_cli_no_docs no_grpc" \
      -ldflags "$ctd_ldflags" -o "$out/" $ctd_pkg/cmd/containerd-shim-runc-v2'
fi

# --- runc ----------------------------------------------------------------------
runc_dir=$cache_root/cluster/runc-$RUNC_VERSION
runc_v=$(version_of "$runc_dir/runc" --version)
if grep -q "^runc version ${RUNC_VERSION#v}$" <<<"$runc_v" && grep -q '^libseccomp' <<<"$runc_v"; then
  log "runc $RUNC_VERSION is cached"
else
  log "building runc $RUNC_VERSION (CGO, libseccomp)"
  pkg-config --exists libseccomp || die "libseccomp-dev and pkg-config are needed to build runc (apt-get install libseccomp-dev pkg-config)"
  # runc's Makefile tags minus libpathrs (a Rust library Debian does not ship; runc
  # then uses its built-in pathrs-lite). Static like runc's release binary.
  export RUNC_VERSION
  build_into "$runc_dir" runc -- '
    cd "'"$here"'/modules/runc" &&
    CGO_ENABLED=1 go build -buildvcs=false -trimpath -tags "seccomp urfave_cli_no_docs netgo osusergo" \
      -ldflags "-s -w -X main.version=${RUNC_VERSION#v} -X main.gitCommit=module-proxy -extldflags -static" \
      -o "$out/runc" github.com/opencontainers/runc'
fi

# --- CoreDNS -------------------------------------------------------------------
coredns_dir=$cache_root/cluster/coredns-$COREDNS_VERSION
if grep -q "^CoreDNS-${COREDNS_VERSION#v}$" <<<"$(version_of "$coredns_dir/coredns" -version)"; then
  log "coredns $COREDNS_VERSION is cached"
else
  log "building coredns $COREDNS_VERSION"
  build_into "$coredns_dir" coredns -- '
    cd "'"$here"'/modules/coredns" &&
    CGO_ENABLED=0 go build -buildvcs=false -trimpath -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=module-proxy" \
      -o "$out/coredns" github.com/coredns/coredns'
fi

# --- pause -----------------------------------------------------------------------
pause_tag=$(image_tag Pause)
[[ -n "$pause_tag" ]] || die "no configs[Pause] in manifest.go"
pause_dir=$cache_root/cluster/pause-$pause_tag
if [[ -x "$pause_dir/pause" ]] && grep -q "^pause.c v$pause_tag-" <<<"$(version_of "$pause_dir/pause" -v)"; then
  log "pause $pause_tag is cached"
else
  log "building pause $pause_tag"
  command -v gcc >/dev/null || die "gcc is needed to build pause (apt-get install gcc libc6-dev)"
  # build/pause/Makefile's CFLAGS; REV is the git description upstream, here the Kubernetes tag.
  export pause_tag k8s_src K8S_VERSION
  build_into "$pause_dir" pause -- '
    gcc -Os -Wall -Werror -static -DVERSION="v$pause_tag-$K8S_VERSION" -o "$out/pause" "$k8s_src/build/pause/linux/pause.c"'
fi
# --- Kubernetes (last: the slowest) ----------------------------------------------
# The control plane (it also checks that the k8s wrapper module matches versions.env).
"$cp_dir/build.sh" >/dev/null


k8s_dir=$cache_root/cluster/k8s-$K8S_VERSION
agnhost_version=$(cat "$k8s_src/test/images/agnhost/VERSION")
[[ "$(image_tag Agnhost)" == "$agnhost_version" ]] ||
  die "manifest.go wants agnhost $(image_tag Agnhost) but test/images/agnhost/VERSION is $agnhost_version"
k8s_up_to_date() {
  local b
  for b in kube-controller-manager kube-scheduler kubelet; do
    [[ "$(k8s_version_of "$k8s_dir/$b" || true)" == "$K8S_VERSION" ]] || return 1
  done
  [[ "$("$k8s_dir/agnhost" --version 2>/dev/null || true)" == "app version $agnhost_version" ]] || return 1
  [[ -z $WANT_E2E || "$("$k8s_dir/e2e.test" --version 2>/dev/null || true)" == "$K8S_VERSION" ]] || return 1
}
if k8s_up_to_date; then
  log "kubernetes $K8S_VERSION node binaries and e2e.test are cached"
else
  here_k8s=$cp_dir
  (
    here=$here_k8s
    # shellcheck source=../controlplane/k8s-ldflags.sh
    source "$cp_dir/k8s-ldflags.sh"
    export CGO_ENABLED=0 k8s_ldflags agnhost_version
    log "building kube-controller-manager, kube-scheduler, kubelet, agnhost $K8S_VERSION (several minutes)"
    build_into "$k8s_dir" kube-controller-manager kube-scheduler kubelet agnhost -- '
      cd "'"$cp_dir"'/k8s" &&
      go build -buildvcs=false -trimpath -ldflags "$k8s_ldflags" -o "$out/" \
        k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
        k8s.io/kubernetes/cmd/kubelet &&
      go build -buildvcs=false -trimpath -ldflags "-s -w -X main.Version=$agnhost_version" \
        -o "$out/agnhost" k8s.io/kubernetes/test/images/agnhost'
    [[ -n $WANT_E2E ]] || exit 0
    # -vet=off: go test runs vet on every package otherwise (minutes, and not our code).
    log "building e2e.test $K8S_VERSION (go test -c k8s.io/kubernetes/test/e2e; the slowest step)"
    build_into "$k8s_dir" e2e.test -- '
      cd "'"$cp_dir"'/k8s" &&
      go test -c -vet=off -buildvcs=false -trimpath -ldflags "$k8s_ldflags" -o "$out/e2e.test" k8s.io/kubernetes/test/e2e'
  )
  k8s_up_to_date || die "the kubernetes binaries in $k8s_dir do not report $K8S_VERSION"
fi

log "all cluster binaries are in $cache_root/cluster"
