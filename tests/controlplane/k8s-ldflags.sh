# Sourced by build.sh and ../cluster/build.sh: the -ldflags every Kubernetes
# binary of this release is built with. Needs $here (this directory) and
# K8S_VERSION; sets k8s_ldflags.

# Release date of the tag (from the module proxy's .info), used as buildDate
# so that builds are reproducible.
release_date() {
  (cd "$here/$1" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' "$2")
}

# Kubernetes version stamping, as hack/lib/version.sh does it: the same -X
# flags for k8s.io/component-base/version (kube-apiserver; also feeds the
# "binary version" used for emulation/compatibility versions, which must
# parse as 1.MINOR) and k8s.io/client-go/pkg/version (kubectl's client side).
# gitCommit is left empty: the module proxy does not record the commit hash
# (the default would print the literal "$Format:%H$").
k8s_minor=${K8S_VERSION#v1.}; k8s_minor=${k8s_minor%%.*}
k8s_date=$(release_date k8s k8s.io/kubernetes)
[[ -n "$k8s_date" ]] || { echo "could not read the release date of k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
  k8s_ldflags+=" -X $pkg.gitCommit= -X $pkg.buildDate=$k8s_date"
done
