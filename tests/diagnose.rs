//! `sliceproxy diagnose`: one scenario per cause, each from a snapshot file
//! through the binary (exit status, cause named, JSON), and the live path
//! against a real kube-apiserver.

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support::controlplane::shared;

const NODE: &str = "node-a";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sliceproxy"))
}

fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sliceproxy-diagnose-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Run diagnose on `yaml` for demo/web; returns (exit code, JSON, text).
fn run(name: &str, yaml: &str, extra: &[&str]) -> (i32, Value, String) {
    let file = write(&format!("{name}.yaml"), yaml);
    let base = |o: &str| {
        let mut c = bin();
        c.args([
            "diagnose",
            "demo/web",
            "-f",
            file.to_str().unwrap(),
            "--hostname-override",
            NODE,
            "-o",
            o,
        ]);
        c.args(extra);
        c.output().unwrap()
    };
    let json = base("json");
    let text = base("table");
    assert_eq!(json.status.code(), text.status.code());
    let v: Value = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&json.stdout),
            String::from_utf8_lossy(&json.stderr)
        )
    });
    (
        json.status.code().unwrap(),
        v,
        String::from_utf8_lossy(&text.stdout).to_string(),
    )
}

fn causes(v: &Value, severity: &str) -> Vec<String> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == severity)
        .map(|f| f["cause"].as_str().unwrap().to_string())
        .collect()
}

const NODE_A: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a, labels: {topology.kubernetes.io/zone: zone-a}}
"#;

fn service(extra_spec: &str, labels: &str) -> String {
    format!(
        r#"
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: demo{labels}}}
spec:
  clusterIP: 10.96.0.10
  selector: {{app: web, tier: front}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
{extra_spec}
"#
    )
}

fn pod(ns: &str, name: &str, labels: &str) -> String {
    format!(
        r#"
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}
spec:
  containers: [{{name: c, image: x, ports: [{{name: web, containerPort: 8080}}]}}]
status:
  conditions: [{{type: Ready, status: "True"}}]
"#
    )
}

fn slice(endpoints: &str, port_name: &str) -> String {
    format!(
        r#"
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: demo, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: {port_name}, port: 8080, protocol: TCP}}]
endpoints:
{endpoints}
"#
    )
}

const READY_REMOTE: &str = "  - {addresses: [10.244.2.1], conditions: {ready: true}, nodeName: node-b}";
const READY_LOCAL: &str = "  - {addresses: [10.244.1.1], conditions: {ready: true}, nodeName: node-a}";

#[test]
fn healthy_service_exits_zero() {
    let yaml = [
        NODE_A,
        &service("", ""),
        &slice(&format!("{READY_LOCAL}\n{READY_REMOTE}"), "http"),
    ]
    .concat();
    let (code, v, text) = run("ok", &yaml, &[]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(v["trafficShouldFlow"], true);
    assert!(causes(&v, "reason").is_empty(), "{text}");
    assert!(text.contains("verdict: traffic should flow"), "{text}");
}

#[test]
fn no_slices_selector_matches_nothing_near_matches_and_other_namespace() {
    let yaml = [
        NODE_A,
        &service("", ""),
        &pod("demo", "web-typo", "app: web, tier: frontend"),
        &pod("other", "web-elsewhere", "app: web, tier: front"),
        &pod("demo", "unrelated", "app: db"),
    ]
    .concat();
    let (code, v, text) = run("noslices", &yaml, &[]);
    assert_eq!(code, 1, "{text}");
    let reasons = causes(&v, "reason");
    for cause in [
        "no-endpoint-slices",
        "selector-matches-no-pod",
        "nearly-matching-pods",
        "pods-in-other-namespace",
    ] {
        assert!(
            reasons.contains(&cause.to_string()),
            "{cause} not in {reasons:?}\n{text}"
        );
    }
    assert!(
        text.contains("demo/web-typo: tier=frontend (selector wants front)"),
        "{text}"
    );
    assert!(text.contains("other/web-elsewhere"), "{text}");
    assert!(!text.contains("demo/unrelated"), "{text}");
}

#[test]
fn endpoints_not_ready_or_only_terminating() {
    let not_ready = "  - {addresses: [10.244.2.1], conditions: {ready: false}, nodeName: node-b, targetRef: {kind: Pod, name: web-0}}";
    let yaml = [NODE_A, &service("", ""), &slice(not_ready, "http")].concat();
    let (code, v, text) = run("notready", &yaml, &[]);
    assert_eq!(code, 1);
    assert_eq!(causes(&v, "reason"), vec!["endpoints-not-ready"], "{text}");
    assert!(text.contains("not ready: 10.244.2.1 (web-0 on node-b)"), "{text}");

    let terminating =
        "  - {addresses: [10.244.2.1], conditions: {ready: false, serving: true, terminating: true}, nodeName: node-b}";
    let yaml = [NODE_A, &service("", ""), &slice(terminating, "http")].concat();
    let (code, v, text) = run("terminating", &yaml, &[]);
    assert_eq!(code, 0, "the terminating fallback still serves: {text}");
    assert_eq!(causes(&v, "note"), vec!["endpoints-terminating"], "{text}");
}

#[test]
fn port_name_and_named_target_port_mismatch() {
    let yaml = [NODE_A, &service("", ""), &slice(READY_REMOTE, "web")].concat();
    let (code, v, text) = run("portname", &yaml, &[]);
    assert_eq!(code, 1);
    assert!(
        causes(&v, "reason").contains(&"port-name-mismatch".to_string()),
        "{text}"
    );
    assert!(text.contains("\"web\"=8080"), "{text}");

    let svc = service("", "").replace("targetPort: 8080", "targetPort: http-alt");
    let yaml = [
        NODE_A,
        &svc,
        &pod("demo", "web-0", "app: web, tier: front"),
        &slice(READY_REMOTE, "http"),
    ]
    .concat();
    let (code, v, text) = run("targetport", &yaml, &[]);
    assert_eq!(code, 1);
    assert_eq!(causes(&v, "reason"), vec!["target-port-mismatch"], "{text}");
    assert!(text.contains("demo/web-0: container ports web=8080"), "{text}");
}

#[test]
fn local_traffic_policy_without_a_local_endpoint() {
    let yaml = [
        NODE_A,
        &service("  internalTrafficPolicy: Local", ""),
        &slice(READY_REMOTE, "http"),
    ]
    .concat();
    let (code, v, text) = run("itp", &yaml, &[]);
    assert_eq!(code, 1);
    assert_eq!(causes(&v, "reason"), vec!["no-local-endpoint"], "{text}");
    assert!(
        text.contains("internalTrafficPolicy: Local") && text.contains("10.244.2.1:8080 on node-b"),
        "{text}"
    );
    // The same from node-b, which has the endpoint: fine.
    let file = write("itp-b.yaml", &yaml);
    let out = bin()
        .args([
            "diagnose",
            "demo/web",
            "-f",
            file.to_str().unwrap(),
            "--hostname-override",
            "node-b",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn topology_hints_restricting_this_node() {
    let hinted = "  - {addresses: [10.244.1.1], conditions: {ready: true}, nodeName: node-a, hints: {forZones: [{name: zone-a}]}}\n  - {addresses: [10.244.2.1], conditions: {ready: true}, nodeName: node-b, hints: {forZones: [{name: zone-b}]}}";
    let yaml = [NODE_A, &service("", ""), &slice(hinted, "http")].concat();
    let (code, v, text) = run("topology", &yaml, &[]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(causes(&v, "note"), vec!["topology-hints"], "{text}");
    assert!(
        text.contains("excluded here: 10.244.2.1:8080") && text.contains("node zone: zone-a"),
        "{text}"
    );
}

#[test]
fn service_handed_to_another_proxy() {
    let yaml = [
        NODE_A,
        &service("", ", labels: {service.kubernetes.io/service-proxy-name: cilium}"),
        &slice(READY_REMOTE, "http"),
    ]
    .concat();
    let (code, v, text) = run("proxyname", &yaml, &[]);
    assert_eq!(code, 1);
    assert_eq!(causes(&v, "reason"), vec!["handed-to-other-proxy"], "{text}");
    assert!(text.contains("cilium"), "{text}");
}

#[test]
fn missing_service_and_bad_target() {
    let (code, v, _) = run("missing", NODE_A, &[]);
    assert_eq!(code, 1);
    assert_eq!(causes(&v, "reason"), vec!["service-not-found"]);
    let out = bin()
        .args(["diagnose", "no-slash", "-f", "/dev/null"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn programmed_rules_compared_with_what_should_be() {
    let yaml = [
        NODE_A,
        &service("", ""),
        &slice(&format!("{READY_LOCAL}\n{READY_REMOTE}"), "http"),
    ]
    .concat();
    let file = write("programmed.yaml", &yaml);
    // What the agent would program: the iptables render of the same file.
    let rendered = bin()
        .args([
            "render",
            "-f",
            file.to_str().unwrap(),
            "--hostname-override",
            NODE,
            "--proxy-mode",
            "iptables",
        ])
        .output()
        .unwrap();
    assert!(rendered.status.success());
    let good = write("good.rules", &String::from_utf8_lossy(&rendered.stdout));
    let (code, _, text) = run("programmed", &yaml, &["--iptables-save", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    // A stale node: one endpoint missing from its rules.
    let stale: String = String::from_utf8_lossy(&rendered.stdout)
        .lines()
        .filter(|l| !l.contains("10.244.2.1"))
        .map(|l| format!("{l}\n"))
        .collect();
    let stale = write("stale.rules", &stale);
    let (code, v, text) = run("programmed", &yaml, &["--iptables-save", stale.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(causes(&v, "reason"), vec!["programmed-differs"], "{text}");
    assert!(text.contains("programmed: 10.244.1.1:8080"), "{text}");
}

#[test]
fn live_against_the_api_server() {
    let cp = shared();
    let ns = cp.new_namespace("diagnose");
    let other = cp.new_namespace("diagnose-other");
    let apply = |yaml: String| {
        let f = write(&format!("live-{}.yaml", yaml.len()), &yaml);
        cp.kubectl_ok(["apply", "-f", f.to_str().unwrap()]);
    };
    apply(
        service("", "")
            .replace("namespace: demo", &format!("namespace: {ns}"))
            .replace("  clusterIP: 10.96.0.10\n", ""),
    );
    apply(pod(&ns, "web-typo", "app: web, tier: frontend"));
    apply(pod(&other, "web-elsewhere", "app: web, tier: front"));
    let out = bin()
        .args([
            "diagnose",
            &format!("{ns}/web"),
            "-o",
            "json",
            "--hostname-override",
            NODE,
            "--kubeconfig",
        ])
        .arg(cp.kubeconfig_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let reasons = causes(&v, "reason");
    for cause in [
        "no-endpoint-slices",
        "selector-matches-no-pod",
        "nearly-matching-pods",
        "pods-in-other-namespace",
    ] {
        assert!(reasons.contains(&cause.to_string()), "{cause} not in {v:#}");
    }
}

/// Every Service of the example, diagnosed against the rules `render`
/// prints for both families: the structural comparison finds no
/// difference (also for Services that reject, drop or short-circuit); with
/// one endpoint's DNAT rule gone, exactly that Service differs.
#[test]
fn programmed_rules_of_the_example_match_the_plan() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster.yaml");
    let example = example.to_str().unwrap();
    let cidrs = "10.244.0.0/16,fd00:244::/32";
    let mut rules = String::new();
    for family in ["ipv4", "ipv6"] {
        let out = bin()
            .args([
                "render",
                "-f",
                example,
                "--hostname-override",
                NODE,
                "--cluster-cidr",
                cidrs,
                "--proxy-mode",
                "iptables",
                "--ip-family",
                family,
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        rules.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    let diagnose = |service: &str, dump: &std::path::Path| -> Vec<String> {
        let out = bin()
            .args(["diagnose", service, "-f", example, "--hostname-override", NODE])
            .args(["--cluster-cidr", cidrs, "-o", "json", "--iptables-save"])
            .arg(dump)
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        causes(&v, "reason")
    };
    let good = write("example.rules", &rules);
    let services = [
        "web",
        "dns",
        "api",
        "shop",
        "shop-remote",
        "node-cache",
        "legacy",
        "empty",
        "v6-only",
    ];
    for svc in services {
        let reasons = diagnose(&format!("demo/{svc}"), &good);
        assert!(
            !reasons.contains(&"programmed-differs".to_string()),
            "{svc}: {reasons:?}"
        );
    }
    // One DNAT rule of demo/api gone: its frontends reach one endpoint less.
    let api_endpoint = "--to-destination 10.244.1.20:8443";
    assert!(rules.contains(api_endpoint), "the example changed");
    let stale: String = rules
        .lines()
        .filter(|l| !l.contains(api_endpoint))
        .map(|l| format!("{l}\n"))
        .collect();
    let stale = write("example-stale.rules", &stale);
    assert!(diagnose("demo/api", &stale).contains(&"programmed-differs".to_string()));
    assert!(!diagnose("demo/web", &stale).contains(&"programmed-differs".to_string()));
}
