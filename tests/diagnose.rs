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

/// A network namespace `diag-<pid>-<n>` with `lo` up, deleted by name on
/// drop (also when the test panics). Nothing in it routes anywhere.
struct DiagNetns(String);

impl DiagNetns {
    fn new() -> DiagNetns {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "diag-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let ok = Command::new("ip").args(["netns", "add", &name]).status().unwrap();
        assert!(ok.success(), "ip netns add {name} (needs root)");
        let ns = DiagNetns(name);
        assert!(ns.exec(&["ip", "link", "set", "lo", "up"]).status.success());
        ns
    }

    /// `ip netns exec NAME cmd...`, with `stdin` when given.
    fn exec_with(&self, cmd: &[&str], stdin: Option<&str>) -> std::process::Output {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }

    fn exec(&self, cmd: &[&str]) -> std::process::Output {
        self.exec_with(cmd, None)
    }
}

impl Drop for DiagNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// `diagnose --proxy-mode nftables` inside a namespace where the script
/// `render --proxy-mode nftables` prints was loaded by `nft -f`: every
/// Service of the example is reported programmed as planned (read back over
/// netlink); with one dispatch element deleted by `nft delete element`, the
/// finding names exactly that frontend; with our tables gone, a clear
/// finding and no crash.
#[test]
fn nftables_tables_in_a_namespace_compared_with_the_plan() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster.yaml");
    let example = example.to_str().unwrap();
    let common = [
        "-f",
        example,
        "--hostname-override",
        NODE,
        "--cluster-cidr",
        "10.244.0.0/16,fd00:244::/32",
        "--proxy-mode",
        "nftables",
    ];
    let rendered = bin().arg("render").args(common).output().unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let script = String::from_utf8(rendered.stdout).unwrap();
    assert!(script.contains("10.96.0.10 . tcp . 80 : goto"), "the example changed");

    let ns = DiagNetns::new();
    let loaded = ns.exec_with(&["nft", "-f", "-"], Some(&script));
    assert!(
        loaded.status.success(),
        "nft -f: {}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let sliceproxy = env!("CARGO_BIN_EXE_sliceproxy");
    let diagnose = |service: &str| -> (i32, Value) {
        let mut cmd = vec![sliceproxy, "diagnose", service];
        cmd.extend(common);
        cmd.extend(["-o", "json"]);
        let out = ns.exec(&cmd);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{service}: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap(), v)
    };
    let evidence = |v: &Value, cause: &str| -> Vec<String> {
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["cause"] == cause)
            .flat_map(|f| f["evidence"].as_array().cloned().unwrap_or_default())
            .map(|e| e.as_str().unwrap().to_string())
            .collect()
    };
    for svc in [
        "web",
        "dns",
        "api",
        "shop",
        "shop-remote",
        "node-cache",
        "legacy",
        "empty",
        "v6-only",
    ] {
        let (_, v) = diagnose(&format!("demo/{svc}"));
        let reasons = causes(&v, "reason");
        assert!(
            !reasons.iter().any(|r| r == "programmed-differs" || r == "rules-absent"),
            "{svc}: {v:#}"
        );
        assert!(
            causes(&v, "note").contains(&"programmed-as-planned".to_string()),
            "{svc}: {v:#}"
        );
    }
    let (code, v) = diagnose("demo/web");
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["trafficShouldFlow"], true);

    // One dispatch element gone: web's cluster IP port 80 reaches nothing.
    let deleted = ns.exec(&[
        "nft",
        "delete",
        "element",
        "ip",
        "sliceproxy",
        "service-ips",
        "{ 10.96.0.10 . tcp . 80 }",
    ]);
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
    let (code, v) = diagnose("demo/web");
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(causes(&v, "reason"), vec!["programmed-differs"], "{v:#}");
    let ev = evidence(&v, "programmed-differs");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(
        ev[0].starts_with("ClusterIP 10.96.0.10:80 TCP:") && ev[0].ends_with("programmed: (no rule)"),
        "{ev:?}"
    );
    let (code, _) = diagnose("demo/shop");
    assert_eq!(code, 0, "other services unaffected");

    // Our tables gone: a finding that says so, not a crash.
    for family in ["ip", "ip6"] {
        assert!(
            ns.exec(&["nft", "delete", "table", family, "sliceproxy"])
                .status
                .success()
        );
    }
    let (code, v) = diagnose("demo/web");
    assert_eq!(code, 1);
    let absent: Vec<&Value> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["cause"] == "rules-absent")
        .collect();
    assert_eq!(absent.len(), 2, "{v:#}");
    assert!(
        absent
            .iter()
            .any(|f| f["message"].as_str().unwrap().contains("table ip sliceproxy")),
        "{v:#}"
    );
}
