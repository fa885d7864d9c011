#!/usr/bin/env bash
# Semantic differential of kube-proxy's and sliceproxy's iptables rules
# (issue 14): the same snapshot in a real API server, each proxy in turn in a
# fresh node namespace, both dumps run through the iptables interpreter for
# every frontend and client class. Root only. Exit 1 on an unexplained
# difference.
#
#   scripts/proxy-diff.sh                                  # examples/cluster.yaml, node-a
#   scripts/proxy-diff.sh --generate 300 --seed 14 --out target/proxy-diff-gen
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
  echo "scripts/proxy-diff.sh: needs root (network namespaces, rules)" >&2
  exit 2
fi
args=("$@")
if [[ $# -eq 0 ]]; then
  args=(--snapshot examples/cluster.yaml --node node-a --out target/proxy-diff)
fi
bin_dir=$(scripts/build-kube-proxy.sh | tail -n 1)
cargo build --release --locked --bin sliceproxy --example scale-bench >&2
exec target/release/examples/scale-bench diff --bin-dir "$bin_dir" \
  --sliceproxy target/release/sliceproxy "${args[@]}"
