#!/usr/bin/env bash
# Runs upstream's e2e.test against a running cluster (tests/cluster/up.sh),
# from the control-plane namespace, and prints pass/fail/skip per test:
#
#   tests/cluster/e2e.sh --mode iptables|nftables --focus REGEX [--skip REGEX]
#
# The JUnit report, e2e.test's output, every component's log and the
# sliceproxy pods' logs go to target/conformance/<mode>-<time>/ (printed).
# Exit status: e2e.test's.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"
MODE=iptables
FOCUS='\[sig-network\].*\[Conformance\]'
SKIP=''
while (($#)); do
  case $1 in
    --mode) MODE=$2; shift 2 ;;
    --focus) FOCUS=$2; shift 2 ;;
    --skip) SKIP=$2; shift 2 ;;
    *) die "usage: $0 --mode iptables|nftables --focus REGEX [--skip REGEX]" ;;
  esac
done
NODES=$(cat "$STATE/nodes.count")
report=$repo/target/conformance/$MODE-$(date +%Y%m%d-%H%M%S)
mkdir -p "$report"
log "e2e.test --ginkgo.focus='$FOCUS' ${SKIP:+--ginkgo.skip='$SKIP' }(report: $report)"
t2=$SECONDS
set +e
in_cp env PATH="$CP_BIN:/usr/sbin:/usr/bin:/sbin:/bin" HOME="$STATE" \
  "$K8S_BIN/e2e.test" \
  --kubeconfig="$STATE/pki/admin.kubeconfig" --provider=skeleton \
  --kubectl-path="$CP_BIN/kubectl" \
  --ginkgo.focus="$FOCUS" ${SKIP:+--ginkgo.skip="$SKIP"} \
  --ginkgo.timeout=3h --ginkgo.no-color --ginkgo.v \
  --report-dir="$report" --report-prefix="$MODE" \
  --allowed-not-ready-nodes=0 --dump-logs-on-failure=false \
  > "$report/e2e.log" 2>&1
e2e_rc=$?
set -e
e2e_s=$((SECONDS - t2))
cp "$STATE"/logs/*.log "$report/" 2>/dev/null || true
kc -n kube-system logs -l app.kubernetes.io/name=sliceproxy --tail=-1 --prefix > "$report/sliceproxy.log" 2>&1 || true

junit=$(ls "$report"/junit*.xml 2>/dev/null | head -1)
[[ -n $junit ]] || { tail -40 "$report/e2e.log" >&2; die "e2e.test wrote no JUnit report (exit $e2e_rc)"; }
python3 - "$junit" "$MODE" <<'EOF' | tee "$report/summary.txt"
import sys, xml.etree.ElementTree as ET
junit, mode = sys.argv[1], sys.argv[2]
rows = {"passed": [], "failed": [], "skipped": []}
tc_reason = {}
for tc in ET.parse(junit).getroot().iter("testcase"):
    name = tc.get("name", "")
    if name.startswith("[SynchronizedBeforeSuite]") or name.startswith("[SynchronizedAfterSuite]") or name.startswith("[ReportAfterSuite]") or name.startswith("[ReportBeforeSuite]"):
        continue
    status = tc.get("status") or ("failed" if tc.find("failure") is not None or tc.find("error") is not None
                                  else "skipped" if tc.find("skipped") is not None else "passed")
    if status not in rows:
        status = "failed"
    # Specs outside the focus are listed as <skipped message="skipped"/>; a spec
    # that skipped itself says why ("skipped - <reason>"): keep only those.
    sk = tc.find("skipped")
    if status == "skipped" and (sk is None or (sk.get("message") or "skipped") == "skipped"):
        continue
    rows[status].append((name, float(tc.get("time", 0))))
    if status == "skipped":
        tc_reason[name] = (sk.get("message") or "")[:200]
for status in ("passed", "failed", "skipped"):
    for name, t in sorted(rows[status]):
        print(f"{status.upper():8} {t:7.1f}s  {name}")
        if status == "skipped":
            msg = tc_reason.get(name, "")
            if msg:
                print(f"{'':18}{msg}")
print(f"{mode}: {len(rows['passed'])} passed, {len(rows['failed'])} failed, {len(rows['skipped'])} skipped")
EOF
log "e2e: ${e2e_s}s (exit $e2e_rc) on $NODES node(s)"
log "JUnit report: $junit"
exit "$e2e_rc"
