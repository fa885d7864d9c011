#!/usr/bin/env bash
# The one test command: every tier of sliceproxy's tests, after rustfmt and
# clippy (-D warnings).
#   1. pure tests (conversion, tracker, policy, rule rendering, strict fakes,
#      property tests, golden renders),
#   2. control-plane tests against a real etcd + kube-apiserver built from the
#      Go module proxy into ~/.cache/sliceproxy (skipped build when cached),
#   3. dataplane tests: real rules and real packets in network namespaces the
#      tests create (iptables mode on this kernel; IPVS mode inside a qemu VM
#      running Debian's kernel, image cached in ~/.cache/sliceproxy/vm).
# A missing prerequisite fails the run; nothing is skipped silently.
# `.ci/run` installs the Debian packages (as root) and then runs this.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in cargo cargo-clippy rustfmt go ip iptables-nft-restore iptables-legacy-restore ip6tables-nft-restore ipset qemu-system-x86_64 depmod; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "scripts/test.sh: missing ${missing[*]}; run .ci/run once as root (it installs them)" >&2
    exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "scripts/test.sh: the dataplane tests create network namespaces and rules: run as root" >&2
    exit 1
fi

# Binaries may come from elsewhere (a laptop without Go): set all three of
# SLICEPROXY_KUBE_APISERVER, SLICEPROXY_ETCD and SLICEPROXY_KUBECTL.
if [[ -z "${SLICEPROXY_KUBE_APISERVER:-}" || -z "${SLICEPROXY_ETCD:-}" || -z "${SLICEPROXY_KUBECTL:-}" ]]; then
    tests/controlplane/build.sh
fi

# Style and lints first (cheap, and the project's CI checks): rustfmt, and
# clippy over every target (the test fakes included, through the `testing`
# feature) and over the shipped library and binary alone (without them).
cargo fmt --all --check
cargo clippy --all-targets --locked -- -D warnings
cargo clippy --lib --bins --locked -- -D warnings

# --all-targets also builds the benchmarks and runs each once in test mode.
cargo test --all-targets --locked
