#!/usr/bin/env bash
# Build the cached VM image used by tests/support/vm.rs: Debian's cloud kernel
# (which, unlike the CI host kernel, has IPVS and loadable modules) plus a base
# initramfs with busybox, iproute2's `ip`, optional iptables/ipset, the kernel
# modules the dataplane tests need, and an /init that runs a test binary.
#
# Idempotent: everything lands in ${SLICEPROXY_CACHE:-~/.cache/sliceproxy}/vm,
# and a stamp file makes a second run a no-op. Needs: apt-get (Debian), dpkg-deb,
# depmod (kmod), gzip. The test binary itself is added per run by vm.rs as a
# second cpio archive appended to this one (the kernel unpacks both).
set -euo pipefail

CACHE="${SLICEPROXY_CACHE:-$HOME/.cache/sliceproxy}/vm"
# Bump when this script's output changes, so stale caches are rebuilt.
IMAGE_FORMAT=4
OUT="$CACHE/image"
STAMP="$OUT/stamp"

up_to_date() { [[ -f "$STAMP" && "$(cat "$STAMP")" == "$IMAGE_FORMAT" && "${1:-}" != "--force" ]]; }
if up_to_date "${1:-}"; then
    echo "vm image up to date in $OUT"
    exit 0
fi
# Test binaries may call this concurrently: one builder at a time.
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if up_to_date "${1:-}"; then
    echo "vm image up to date in $OUT"
    exit 0
fi

need() { command -v "$1" >/dev/null 2>&1 || { echo "build-image.sh: missing '$1' ($2)" >&2; exit 1; }; }
need apt-get "run on Debian"
need dpkg-deb "dpkg"
need depmod "apt-get install kmod"
need gzip "apt-get install gzip"
need flock "apt-get install util-linux"
need ldd "apt-get install libc-bin"

mkdir -p "$CACHE/debs"
cd "$CACHE/debs"

# The meta-package names the current versioned kernel package; resolve it so
# the download is one concrete, cacheable .deb.
resolve_kernel_pkg() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9].*-cloud-amd64$/ {print $2; exit}'
}
kpkg="$(resolve_kernel_pkg || true)"
if [[ -z "$kpkg" ]]; then
    apt-get update -qq
    kpkg="$(resolve_kernel_pkg)"
fi
[[ -n "$kpkg" ]] || { echo "build-image.sh: cannot resolve linux-image-cloud-amd64" >&2; exit 1; }

fetch_deb() { # name: download unless a matching .deb is cached
    local name="$1"
    if ! ls "${name}"_*.deb >/dev/null 2>&1; then
        apt-get download "$name" >/dev/null 2>&1 || { apt-get update -qq && apt-get download "$name"; }
    fi
    ls "${name}"_*.deb | head -n1
}
kdeb="$(fetch_deb "$kpkg")"
bdeb="$(fetch_deb busybox-static)"

rm -rf "$CACHE/kroot" "$CACHE/broot" "$CACHE/initrd" "$OUT.tmp"
dpkg-deb -x "$kdeb" "$CACHE/kroot"
dpkg-deb -x "$bdeb" "$CACHE/broot"
KVER="$(ls "$CACHE/kroot/lib/modules" | head -n1)"
MODDIR="$CACHE/kroot/lib/modules/$KVER"
depmod -b "$CACHE/kroot" "$KVER"

R="$CACHE/initrd"
mkdir -p "$R"/{bin,sbin,proc,sys,dev,run,tmp,etc,test,lib/modules/"$KVER"}
cp "$CACHE/broot/bin/busybox" "$R/bin/busybox"
for applet in $("$R/bin/busybox" --list); do
    # Real tools shipped below win: busybox-static's shell runs its own
    # applets before searching PATH, so they must not exist as applets here.
    case "$applet" in busybox | ip | iptables* | ip6tables* | ipset | modprobe) continue ;; esac
    ln -sf busybox "$R/bin/$applet"
done
# The kernel's module autoloader calls /sbin/modprobe (set again in /init).
ln -sf ../bin/busybox "$R/sbin/modprobe"
ln -sf busybox "$R/bin/modprobe"

# Modules: a wanted set (globs over module names), closed over modules.dep.
wanted='^(ip_vs.*|nf_conntrack|nf_conntrack_netlink|nf_defrag_ipv[46]|nf_nat|nf_tables|nft_.*|nf_reject_ipv[46]|nfnetlink|x_tables|xt_.*|ip6?_tables|ip6?table_.*|ip6?t_.*|ip_set.*|libcrc32c|dummy|veth|bridge|br_netfilter|stp|llc|sctp|ipip|ip_tunnel|tunnel4)$'
awk -F: -v re="$wanted" '{n=$1; sub(/.*\//,"",n); sub(/\.ko.*/,"",n); gsub(/-/,"_",n); if (n ~ re) print $1}' \
    "$MODDIR/modules.dep" >"$CACHE/wanted.txt"
# Add dependencies (modules.dep lines are "mod.ko: dep1.ko dep2.ko ...").
awk -F': *' 'NR==FNR {want[$1]=1; next} ($1 in want) {print $1; n=split($2,d," "); for(i=1;i<=n;i++) print d[i]}' \
    "$CACHE/wanted.txt" "$MODDIR/modules.dep" | sort -u >"$CACHE/modules.txt"
while read -r rel; do
    mkdir -p "$R/lib/modules/$KVER/$(dirname "$rel")"
    cp "$MODDIR/$rel" "$R/lib/modules/$KVER/$rel"
done <"$CACHE/modules.txt"
cp "$MODDIR"/modules.{order,builtin,builtin.modinfo} "$R/lib/modules/$KVER/" 2>/dev/null || true
depmod -b "$R" "$KVER"

# Userland binaries from the host (Debian, same libc as the guest needs) with
# their shared libraries. iproute2's ip is required (busybox ip lacks netns);
# iptables/ipset are optional.
copy_with_libs() { # path [dest]
    local src="$1" dest="${2:-$1}"
    mkdir -p "$R$(dirname "$dest")"
    cp -L "$src" "$R$dest"
    ldd "$src" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
        [[ -e "$R$lib" ]] && continue
        mkdir -p "$R$(dirname "$lib")"
        cp -L "$lib" "$R$lib"
    done
}
if [[ -x /usr/sbin/ip || -x /sbin/ip ]]; then
    ipbin="$(command -v /usr/sbin/ip /sbin/ip | head -n1)"
    copy_with_libs "$ipbin" /usr/sbin/ip
else
    echo "build-image.sh: iproute2's ip not found (apt-get install iproute2)" >&2
    exit 1
fi
for tool in xtables-nft-multi xtables-legacy-multi ipset; do
    p="$(command -v "$tool" 2>/dev/null || true)"
    [[ -n "$p" ]] && copy_with_libs "$p" "/usr/sbin/$tool"
done
if [[ -e "$R/usr/sbin/xtables-nft-multi" ]]; then
    for t in iptables ip6tables iptables-save iptables-restore ip6tables-save ip6tables-restore; do
        ln -sf xtables-nft-multi "$R/usr/sbin/$t"
    done
    # iptables loads its match/target extensions (libxt_*.so) at run time.
    for xtdir in /usr/lib/x86_64-linux-gnu/xtables /lib/x86_64-linux-gnu/xtables /usr/lib/xtables; do
        [[ -d "$xtdir" ]] || continue
        for so in "$xtdir"/*.so; do copy_with_libs "$so"; done
        break
    done
fi

# Modules loaded at boot. IPVS's genetlink family only exists once ip_vs is
# loaded (it has no genl family alias for autoloading); schedulers and xt_/nft_
# modules autoload through /sbin/modprobe on first use.
cat >"$R/etc/vm-modules" <<'MODS'
ip_vs
ip_vs_rr
ip_vs_wrr
ip_vs_sh
nf_conntrack
dummy
veth
MODS

cat >"$R/init" <<'INIT'
#!/bin/sh
# VM init: mount, load modules, run /test/bin with /test/args, print the marker.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
echo /sbin/modprobe >/proc/sys/kernel/modprobe
for m in $(cat /etc/vm-modules /test/modules 2>/dev/null); do
    modprobe "$m" || echo "vm-init: modprobe $m failed"
done
ip link set lo up
export SLICEPROXY_IN_VM=1 HOME=/tmp
[ -f /test/env ] && . /test/env
set --
if [ -f /test/args ]; then
    while IFS= read -r a; do set -- "$@" "$a"; done </test/args
fi
/test/bin "$@"
status=$?
echo "$(cat /test/marker) $status"
poweroff -f
INIT
chmod 755 "$R/init"

mkdir -p "$OUT.tmp"
cp "$CACHE/kroot/boot/vmlinuz-$KVER" "$OUT.tmp/vmlinuz"
(cd "$R" && find . | "$R/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -1) >"$OUT.tmp/base.cpio.gz"
cp "$R/bin/busybox" "$OUT.tmp/busybox"
echo "$KVER" >"$OUT.tmp/kernel-version"
echo "$IMAGE_FORMAT" >"$OUT.tmp/stamp"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
echo "vm image built in $OUT (kernel $KVER, $(wc -l <"$CACHE/modules.txt") modules)"
