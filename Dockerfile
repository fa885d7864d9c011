# sliceproxy: a node-level kube-proxy replacement.
#
#   docker build -t sliceproxy .
#
# Without a container engine, scripts/check-runtime-image.sh builds the same
# runtime rootfs with debootstrap and runs the binary in a chroot.

# --- build ---------------------------------------------------------------
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin sliceproxy \
 && install -m 0755 target/release/sliceproxy /sliceproxy

# --- runtime -------------------------------------------------------------
FROM debian:bookworm-slim
# Exactly the userspace tools the agent execs:
#   iptables  - iptables/ip6tables(-nft|-legacy)(-save|-restore), the iptables mode
#   iproute2  - `ip netns exec` for namespaced execution, and `ip` for
#               operators (node addresses are read over rtnetlink, not `ip`)
#   ipset     - the IPVS mode's sets (`ipset restore`, `ipset save`, `ipset swap`)
#   procps    - `sysctl`, the IPVS mode's kernel settings (vs.conntrack, ...)
# Not installed: nftables (no nftables mode is built yet), conntrack (stale
# UDP flows are cleared over ctnetlink), ipvsadm (IPVS is programmed over
# generic netlink).
ARG RUNTIME_PACKAGES="iptables iproute2 ipset procps"
RUN apt-get update \
 && apt-get install -y --no-install-recommends ${RUNTIME_PACKAGES} \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /sliceproxy /usr/local/bin/sliceproxy
ENTRYPOINT ["/usr/local/bin/sliceproxy"]
