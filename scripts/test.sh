#!/usr/bin/env bash
# The one test command: every tier of sliceproxy's tests.
#   1. pure tests (conversion, tracker, policy, property tests, golden renders),
#   2. control-plane tests against a real etcd + kube-apiserver built from the
#      Go module proxy into ~/.cache/sliceproxy (skipped build when cached).
# A missing prerequisite fails the run; nothing is skipped silently.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in cargo go; do
    command -v "$tool" >/dev/null || { echo "scripts/test.sh: '$tool' is required" >&2; exit 1; }
done

# Binaries may come from elsewhere (a laptop without Go): set all three of
# SLICEPROXY_KUBE_APISERVER, SLICEPROXY_ETCD and SLICEPROXY_KUBECTL.
if [[ -z "${SLICEPROXY_KUBE_APISERVER:-}" || -z "${SLICEPROXY_ETCD:-}" || -z "${SLICEPROXY_KUBECTL:-}" ]]; then
    tests/controlplane/build.sh
fi

# --all-targets also builds the benchmarks and runs each once in test mode.
cargo test --all-targets --locked
