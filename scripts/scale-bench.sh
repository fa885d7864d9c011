#!/usr/bin/env bash
# Side by side with upstream kube-proxy (issue 14): builds what is missing
# (control plane + kube-proxy of the same release, sliceproxy and the bench
# in release mode), then runs the driver. Root only. Every argument is passed
# to `scale-bench run` (see `--help`), e.g.
#
#   scripts/scale-bench.sh --sizes 200,1000,5000,10000 --modes iptables,nftables,ipvs \
#       --proxies sliceproxy,kube-proxy --out target/scale-bench
#
# Writes one JSON file per (size, mode, proxy) run, the proxies' logs, and
# results.md + *.svg into --out (default target/scale-bench). Regenerate the
# table and plots from existing JSON files with:
#
#   target/release/examples/scale-bench report --results DIR
#
# Quick setting (fits in CI): scripts/scale-bench.sh --quick
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
  echo "scripts/scale-bench.sh: needs root (network namespaces, cgroups, rules)" >&2
  exit 2
fi
args=("$@")
if [[ "${1:-}" == "--quick" ]]; then
  # 200 services x 10 endpoints, both modes upstream has here, short windows.
  args=(--sizes 200 --modes iptables,nftables,ipvs --idle-secs 20 --changes 15 --rate 1
        --traced-changes 2 --probe-tries 20 "${@:2}")
fi
bin_dir=$(scripts/build-kube-proxy.sh | tail -n 1)
cargo build --release --locked --bin sliceproxy --example scale-bench >&2
exec target/release/examples/scale-bench run --bin-dir "$bin_dir" \
  --sliceproxy target/release/sliceproxy "${args[@]}"
