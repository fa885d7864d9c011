#!/usr/bin/env bash
# Builds the OCI image archives the cluster runs, without a registry or a
# container engine, under exactly the names the e2e framework of the pinned
# release asks for (test/utils/image/manifest.go) and the CoreDNS addon
# manifest uses:
#
#   registry.k8s.io/pause:<tag>                          build/pause: /pause, USER 65535:65535
#   registry.k8s.io/e2e-test-images/agnhost:<version>    test/images/agnhost/Dockerfile's
#       equivalent on Debian instead of Alpine: /agnhost (+ agnhost-2), dig/nslookup, curl,
#       nc, ip/ss, iperf, bash, ipcs, socat, /coredns, porter's certs, /uploads, user 1000
#       and group 50000
#   registry.k8s.io/coredns/coredns:<version>            /coredns, USER 65532 (distroless nonroot)
#   registry.k8s.io/e2e-test-images/nginx:<tag>          Debian's nginx, `nginx -g 'daemon off;'` on :80
#       (the EndpointSlice/Endpoints conformance tests run it)
#   registry.k8s.io/e2e-test-images/busybox:<tag>        Debian's busybox-static, CMD sh
#       (the framework's default pod image)
#   registry.k8s.io/e2e-test-images/glibc-dns-testing:<tag>  test/images/glibc-dns-testing/Dockerfile:
#       Debian bookworm + dnsutils (dig, nslookup, host) and /coredns, CMD bash (the glibc
#       prober of the [sig-network] DNS conformance tests)
#
# Archives go to <cache>/cluster/images/ (printed, one per line, on stdout);
# an archive whose inputs did not change is reused. Needs root (debootstrap,
# chroot) and the binaries of ./build.sh. The sliceproxy image is built by
# scripts/check-runtime-image.sh --image (the Dockerfile's runtime stage).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cp_dir=$here/../controlplane
# shellcheck source=../controlplane/versions.env
source "$cp_dir/versions.env"
# shellcheck source=versions.env
source "$here/versions.env"

log() { echo "cluster/images.sh: $*" >&2; }
die() { echo "cluster/images.sh: error: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap and chroot)"
command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"

cache_root=${SLICEPROXY_CACHE:-${HOME:?HOME is not set}/.cache/sliceproxy}
images=$cache_root/cluster/images
mkdir -p "$images"
k8s_src=$(cd "$cp_dir/k8s" && GOWORK=off go list -m -f '{{.Dir}}' k8s.io/kubernetes)
image_tag() {
  sed -n "s/^[[:space:]]*configs\[$1\] = Config{[^,]*, \"[^\"]*\", \"\([^\"]*\)\"}.*/\1/p" \
    "$k8s_src/test/utils/image/manifest.go"
}
pause_tag=$(image_tag Pause)
agnhost_tag=$(image_tag Agnhost)
nginx_tag=$(image_tag Nginx)
busybox_tag=$(image_tag BusyBox)
glibc_dns_tag=$(image_tag GlibcDnsTesting)
k8s_bin=$cache_root/cluster/k8s-$K8S_VERSION
pause_bin=$cache_root/cluster/pause-$pause_tag/pause
coredns_bin=$cache_root/cluster/coredns-$COREDNS_VERSION/coredns
for b in "$k8s_bin/agnhost" "$pause_bin" "$coredns_bin"; do
  [[ -x $b ]] || die "$b is missing: run tests/cluster/build.sh"
done

SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-$(grep -rhoE '^(URIs:|deb) *https?://[^ ]+/debian/?' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
  | grep -oE 'https?://[^ ]+' | head -1 || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

# key FILE_OR_STRING...: a short hash of the inputs, part of each archive's name.
key() {
  local x
  for x in "$@"; do if [[ -f $x ]]; then sha256sum "$x"; else echo "$x"; fi; done | sha256sum | cut -c1-12
}

scratch=$(mktemp -d "${TMPDIR:-/tmp}/sliceproxy-images.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# --- pause: FROM scratch, one static binary --------------------------------------
pause_tar=$images/pause-$pause_tag-$(key "$pause_bin" "$here/oci-archive.py").tar
if [[ ! -f $pause_tar ]]; then
  mkdir -p "$scratch/pause"
  install -m 0755 "$pause_bin" "$scratch/pause/pause"
  python3 "$here/oci-archive.py" --rootfs "$scratch/pause" --name "registry.k8s.io/pause:$pause_tag" \
    --entrypoint '["/pause"]' --user 65535:65535 -o "$pause_tar"
fi
echo "$pause_tar"

# --- CoreDNS: distroless-like, nonroot, binding :53 through a file capability --
coredns_tar=$images/coredns-$COREDNS_VERSION-$(key "$coredns_bin" "$here/oci-archive.py").tar
if [[ ! -f $coredns_tar ]]; then
  r=$scratch/coredns
  mkdir -p "$r/etc/ssl/certs" "$r/tmp"
  chmod 1777 "$r/tmp"
  install -m 0755 "$coredns_bin" "$r/coredns"
  # The upstream image grants cap_net_bind_service on the binary (it runs as
  # nonroot); without it a non-root process loses the capability at exec.
  setcap cap_net_bind_service=+ep "$r/coredns"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$r/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$r/etc/group"
  python3 "$here/oci-archive.py" --rootfs "$r" --name "registry.k8s.io/coredns/coredns:$COREDNS_VERSION" \
    --entrypoint '["/coredns"]' --user 65532:65532 --expose 53/tcp --expose 53/udp -o "$coredns_tar"
fi
echo "$coredns_tar"

# --- agnhost --------------------------------------------------------------------
# The Alpine packages of test/images/agnhost/Dockerfile, as Debian packages:
# bind-tools -> bind9-dnsutils (dig, nslookup), curl, netcat-openbsd (nc),
# iproute2 (ip, ss), iperf, bash, util-linux-misc -> util-linux (ipcs), socat.
agnhost_packages="bind9-dnsutils curl netcat-openbsd iproute2 iperf bash util-linux socat ca-certificates"
agnhost_tar=$images/agnhost-$agnhost_tag-$(key "$k8s_bin/agnhost" "$coredns_bin" "$here/oci-archive.py" "$agnhost_packages" "$SUITE" "$here/images.sh").tar
if [[ ! -f $agnhost_tar ]]; then
  r=$scratch/agnhost
  log "debootstrap $SUITE minbase + $agnhost_packages (about a minute)"
  debootstrap --variant=minbase --include="${agnhost_packages// /,}" "$SUITE" "$r" "$MIRROR" >"$scratch/debootstrap.log" 2>&1 ||
    { tail -20 "$scratch/debootstrap.log" >&2; die "debootstrap failed"; }
  install -m 0755 "$k8s_bin/agnhost" "$r/agnhost"
  ln -s agnhost "$r/agnhost-2"
  install -m 0755 "$coredns_bin" "$r/coredns"
  install -m 0644 "$k8s_src/test/images/agnhost/porter/localhost.crt" "$r/localhost.crt"
  install -m 0600 "$k8s_src/test/images/agnhost/porter/localhost.key" "$r/localhost.key"
  mkdir -p "$r/uploads"
  ln -sf /usr/bin/iperf "$r/usr/local/bin/iperf"
  chroot "$r" groupadd -g 50000 group-defined-in-image
  chroot "$r" useradd -u 1000 -M -G group-defined-in-image user-defined-in-image
  # As the Dockerfile's `rm -rf /var/cache/apk/*`: no package caches in the image.
  rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/*
  python3 "$here/oci-archive.py" --rootfs "$r" --name "registry.k8s.io/e2e-test-images/agnhost:$agnhost_tag" \
    --entrypoint '["/agnhost"]' --cmd '["pause"]' \
    --expose 80/tcp --expose 8080/tcp --expose 8081/tcp --expose 9376/tcp --expose 5000/tcp -o "$agnhost_tar"
  rm -rf "$r"
fi
echo "$agnhost_tar"

# --- nginx and busybox: small Debian images under the e2e names ---------------------
nginx_tar=$images/nginx-$nginx_tag-$(key "$here/oci-archive.py" "$SUITE" "$here/images.sh").tar
if [[ ! -f $nginx_tar ]]; then
  r=$scratch/nginx
  log "debootstrap $SUITE minbase + nginx-light"
  debootstrap --variant=minbase --include=nginx-light "$SUITE" "$r" "$MIRROR" >"$scratch/debootstrap.log" 2>&1 ||
    { tail -20 "$scratch/debootstrap.log" >&2; die "debootstrap failed"; }
  rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/*
  python3 "$here/oci-archive.py" --rootfs "$r" --name "registry.k8s.io/e2e-test-images/nginx:$nginx_tag" \
    --cmd '["nginx", "-g", "daemon off;"]' --expose 80/tcp -o "$nginx_tar"
  rm -rf "$r"
fi
echo "$nginx_tar"

busybox_tar=$images/busybox-$busybox_tag-$(key "$here/oci-archive.py" "$SUITE" "$here/images.sh").tar
if [[ ! -f $busybox_tar ]]; then
  r=$scratch/busybox
  mkdir -p "$r/bin" "$r/tmp" "$r/etc" "$scratch/bb"
  (cd "$scratch/bb" && apt-get download -q busybox-static >/dev/null) || die "apt-get download busybox-static failed"
  dpkg-deb -x "$scratch"/bb/busybox-static_*.deb "$scratch/bb/x"
  install -m 0755 "$scratch/bb/x/bin/busybox" "$r/bin/busybox"
  for applet in $("$r/bin/busybox" --list); do [[ -e $r/bin/$applet ]] || ln -s busybox "$r/bin/$applet"; done
  chmod 1777 "$r/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n' > "$r/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$r/etc/group"
  python3 "$here/oci-archive.py" --rootfs "$r" --name "registry.k8s.io/e2e-test-images/busybox:$busybox_tag" \
    --cmd '["sh"]' -o "$busybox_tar"
fi
echo "$busybox_tar"

# --- glibc-dns-testing: test/images/glibc-dns-testing ----------------------------------
# Upstream: FROM debian:bookworm-slim, `apt-get install dnsutils`, and CoreDNS
# v1.5.0's release tarball unpacked to /coredns (downloaded from GitHub, which
# this machine cannot reach; the DNS conformance tests' probes run only sh,
# seq, dig and getent in it, so /coredns is the cluster's CoreDNS build).
# The base image's CMD is bash.
glibc_dns_packages="dnsutils"
glibc_dns_tar=$images/glibc-dns-testing-$glibc_dns_tag-$(key "$coredns_bin" "$here/oci-archive.py" "$glibc_dns_packages" "$SUITE" "$here/images.sh").tar
if [[ ! -f $glibc_dns_tar ]]; then
  r=$scratch/glibc-dns
  log "debootstrap $SUITE minbase + $glibc_dns_packages"
  debootstrap --variant=minbase --include="${glibc_dns_packages// /,}" "$SUITE" "$r" "$MIRROR" >"$scratch/debootstrap.log" 2>&1 ||
    { tail -20 "$scratch/debootstrap.log" >&2; die "debootstrap failed"; }
  install -m 0755 "$coredns_bin" "$r/coredns"
  # As the Dockerfile's `apt-get clean && rm -rf /var/lib/apt/lists/*`.
  rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/*
  python3 "$here/oci-archive.py" --rootfs "$r" --name "registry.k8s.io/e2e-test-images/glibc-dns-testing:$glibc_dns_tag" \
    --cmd '["bash"]' -o "$glibc_dns_tar"
  rm -rf "$r"
fi
echo "$glibc_dns_tar"
