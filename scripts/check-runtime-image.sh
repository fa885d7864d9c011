#!/usr/bin/env bash
# Checks the Dockerfile's runtime stage without a container engine: builds a
# minimal Debian rootfs with debootstrap holding exactly the packages the
# Dockerfile's runtime stage installs, copies the release binary in, and runs
# it in a chroot. Needs root and debootstrap (apt-get install debootstrap).
#
#   scripts/check-runtime-image.sh            # rootfs in $ROOTFS (default /tmp/sliceproxy-rootfs)
#   KEEP_ROOTFS=1 scripts/check-runtime-image.sh   # reuse it on the next run
#   scripts/check-runtime-image.sh --image OUT.tar [--name sliceproxy:latest]
#       after the checks, also writes the image itself as an OCI archive
#       (`ctr images import OUT.tar`): the Dockerfile's runtime stage, i.e.
#       debian:bookworm-slim (minbase with the slim image's dpkg path
#       excludes) + the same packages without recommends, apt lists removed,
#       /usr/local/bin/sliceproxy, ENTRYPOINT ["/usr/local/bin/sliceproxy"].
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE_OUT=""
IMAGE_NAME="sliceproxy:latest"
while (($#)); do
  case $1 in
    --image) IMAGE_OUT=$(realpath -m "$2"); shift 2 ;;
    --name) IMAGE_NAME=$2; shift 2 ;;
    *) echo "usage: $0 [--image OUT.tar [--name NAME:TAG]]" >&2; exit 2 ;;
  esac
done

ROOTFS=${ROOTFS:-/tmp/sliceproxy-rootfs}
SUITE=${SUITE:-bookworm}
# The mirror apt already uses on this machine (so a registry-only network works).
MIRROR=${MIRROR:-$(grep -rhoE '^(URIs:|deb) *https?://[^ ]+/debian/?' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
  | grep -oE 'https?://[^ ]+' | head -1 || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

# The runtime packages, read from the Dockerfile so the two cannot drift.
PACKAGES=$(sed -n 's/^ARG RUNTIME_PACKAGES="\(.*\)"/\1/p' Dockerfile)
[ -n "$PACKAGES" ] || { echo "no ARG RUNTIME_PACKAGES in Dockerfile" >&2; exit 1; }

cargo build --release --locked --bin sliceproxy

start=$(date +%s)
if [ ! -x "$ROOTFS/usr/sbin/iptables" ] || [ -z "${KEEP_ROOTFS:-}" ]; then
  rm -rf "$ROOTFS"
  # debian:bookworm-slim is minbase plus these dpkg excludes (docs, man pages,
  # locales): install the packages under the same rule, as `docker build` would.
  mkdir -p "$ROOTFS/etc/dpkg/dpkg.cfg.d"
  cat > "$ROOTFS/etc/dpkg/dpkg.cfg.d/docker" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
SLIM
  debootstrap --variant=minbase --include="$(echo "$PACKAGES" | tr ' ' ',')" "$SUITE" "$ROOTFS" "$MIRROR"
  # The Dockerfile's `rm -rf /var/lib/apt/lists/*`, and no downloaded .debs.
  rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/archives/*.deb
fi
end=$(date +%s)
echo "debootstrap: $((end - start)) s, rootfs $(du -sh "$ROOTFS" | cut -f1)"

install -m 0755 target/release/sliceproxy "$ROOTFS/usr/local/bin/sliceproxy"
mkdir -p "$ROOTFS/examples"
cp examples/cluster.yaml "$ROOTFS/examples/cluster.yaml"

in_root() { chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

in_root sliceproxy --version
in_root sliceproxy render -f /examples/cluster.yaml --hostname-override node-a \
  --cluster-cidr 10.244.0.0/16,fd00:244::/48 >/dev/null
in_root sliceproxy render -f /examples/cluster.yaml --hostname-override node-a \
  --cluster-cidr 10.244.0.0/16 --proxy-mode iptables | head -3
# Every tool the dataplane execs resolves inside the image.
for tool in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore \
  iptables-nft-save iptables-nft-restore iptables-legacy-save iptables-legacy-restore ip ipset sysctl; do
  in_root sh -c "command -v $tool" >/dev/null || { echo "missing in image: $tool" >&2; exit 1; }
done
in_root iptables --version
in_root ip -V
# The binary links only what the image has.
if in_root ldd /usr/local/bin/sliceproxy 2>/dev/null | grep -q 'not found'; then
  echo "missing shared libraries:" >&2; in_root ldd /usr/local/bin/sliceproxy >&2; exit 1
fi
echo "runtime image check: OK"

if [ -n "$IMAGE_OUT" ]; then
  # Only what the Dockerfile puts there: drop the check's example file.
  rm -rf "$ROOTFS/examples"
  python3 tests/cluster/oci-archive.py --rootfs "$ROOTFS" --name "$IMAGE_NAME" \
    --entrypoint '["/usr/local/bin/sliceproxy"]' -o "$IMAGE_OUT"
  echo "image $IMAGE_NAME written to $IMAGE_OUT"
fi
