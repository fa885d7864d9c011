//! The `sliceproxy` binary as an operator runs it: exit statuses, messages
//! that name the field and the value, and `render` output against golden
//! files (regenerate with `UPDATE_GOLDEN=1 cargo test --test cli`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sliceproxy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sliceproxy"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("NODE_NAME")
        .output()
        .expect("run sliceproxy")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        expected == actual,
        "{} differs from the output:\n{actual}",
        path.display()
    );
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sliceproxy-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write temp file");
    path
}

const EXAMPLE: &[&str] = &[
    "render",
    "-f",
    "examples/cluster.yaml",
    "--hostname-override",
    "node-a",
    "--cluster-cidr",
    "10.244.0.0/16,fd00:244::/32",
];

#[test]
fn render_example_table_matches_golden() {
    let out = sliceproxy(EXAMPLE);
    assert!(out.status.success(), "{}", stderr(&out));
    golden("render-node-a.txt", &stdout(&out));
}

#[test]
fn render_example_json_matches_golden() {
    let mut args = EXAMPLE.to_vec();
    args.extend(["-o", "json"]);
    let out = sliceproxy(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert!(rows.as_array().is_some_and(|r| !r.is_empty()));
    golden("render-node-a.json", &stdout(&out));
}

#[test]
fn render_from_another_node_sees_other_local_endpoints() {
    let out = sliceproxy(&[
        "render",
        "-f",
        "examples/cluster.yaml",
        "--hostname-override",
        "node-b",
        "--ip-family",
        "ipv4",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    // node-cache has its only endpoint on node-b: not dropped there.
    let line = text
        .lines()
        .find(|l| l.starts_with("demo/node-cache"))
        .expect("node-cache row");
    assert!(line.contains("10.244.2.40:6379") && !line.contains("drop"), "{line}");
    assert!(!text.contains("fd00:"), "--ip-family ipv4 prints no IPv6 rows");
}

#[test]
fn render_reads_a_kubectl_list_and_skips_other_kinds() {
    let list = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: one, namespace: ns}
  spec: {clusterIP: 10.96.0.1, ports: [{name: http, port: 80}]}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: one-1, namespace: ns, labels: {kubernetes.io/service-name: one}}
  addressType: IPv4
  ports: [{name: http, port: 8080}]
  endpoints: [{addresses: [10.244.1.1]}]
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: c, namespace: ns}
"#;
    let path = temp_file("list.yaml", list);
    let out = sliceproxy(&[
        "render",
        "-f",
        path.to_str().unwrap(),
        "--hostname-override",
        "n1",
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["servicePort"], "ns/one:http/TCP");
    assert_eq!(rows[0]["routes"][0]["endpoints"][0], "10.244.1.1:8080");
}

#[test]
fn render_reports_a_malformed_object_and_renders_the_rest() {
    let text = r#"
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: ns}
spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: good, namespace: ns}
spec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}
"#;
    let path = temp_file("bad.yaml", text);
    let out = sliceproxy(&["render", "-f", path.to_str().unwrap(), "--hostname-override", "n1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("ns/bad") && err.contains("spec.clusterIPs[0]") && err.contains("10.96.0.300"),
        "{err}"
    );
    assert!(stdout(&out).contains("ns/good"), "the valid Service is still rendered");
}

#[test]
fn render_of_a_missing_file_fails_clearly() {
    let out = sliceproxy(&["render", "-f", "no/such/file.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no/such/file.yaml"));
}

#[test]
fn invalid_flag_value_exits_2_naming_flag_and_value() {
    for (args, field, value) in [
        (vec!["--sync-period", "soon"], "--sync-period", "soon"),
        (vec!["--proxy-mode", "userspace"], "--proxy-mode", "userspace"),
        (vec!["--cluster-cidr", "10.0.0.0/33"], "--cluster-cidr", "10.0.0.0/33"),
        (
            vec!["--healthz-bind-address", "nowhere:x"],
            "--healthz-bind-address",
            "nowhere:x",
        ),
    ] {
        let out = sliceproxy(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(field) && err.contains(value), "{args:?}: {err}");
    }
}

#[test]
fn unknown_flag_exits_2() {
    let out = sliceproxy(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn invalid_config_file_value_exits_2_naming_field_and_value() {
    let path = temp_file(
        "kube-proxy.yaml",
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\niptables:\n  syncPeriod: -5s\n",
    );
    let out = sliceproxy(&["--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("iptables.syncPeriod") && err.contains("-5s"), "{err}");
}

#[test]
fn flags_override_the_config_file_in_render() {
    let path = temp_file(
        "cfg.yaml",
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nhostnameOverride: node-b\nclusterCIDR: 10.244.0.0/16\n",
    );
    let base = [
        "render",
        "-f",
        "examples/cluster.yaml",
        "--config",
        path.to_str().unwrap(),
        "--ip-family",
        "ipv4",
    ];
    let from_file = stdout(&sliceproxy(&base));
    let mut args = base.to_vec();
    args.extend(["--hostname-override", "node-a"]);
    let overridden = stdout(&sliceproxy(&args));
    let row = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("demo/node-cache"))
            .map(str::to_string)
    };
    assert!(
        !row(&from_file).expect("row").contains("drop"),
        "node-b has node-cache's endpoint"
    );
    assert!(
        row(&overridden).expect("row").contains("drop"),
        "node-a has none: the flag won"
    );
}

#[test]
fn version_prints() {
    let out = sliceproxy(&["--version"]);
    assert!(out.status.success());
    assert!(stdout(&out).starts_with("sliceproxy "));
}

#[test]
fn render_iptables_rules_match_golden_for_both_families() {
    for (family, golden_file) in [
        ("ipv4", "iptables-node-a-ipv4.txt"),
        ("ipv6", "iptables-node-a-ipv6.txt"),
    ] {
        let mut args = EXAMPLE.to_vec();
        args.extend(["--proxy-mode", "iptables", "--ip-family", family]);
        let out = sliceproxy(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(
            text.starts_with("*nat\n") && text.trim_end().ends_with("COMMIT"),
            "restore input:\n{text}"
        );
        golden(golden_file, &text);
    }
}

#[test]
fn render_nftables_prints_the_script_of_a_full_sync_for_both_families() {
    let mut args = EXAMPLE.to_vec();
    args.extend(["--proxy-mode", "nftables"]);
    let out = sliceproxy(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("table ip sliceproxy") && text.contains("table ip6 sliceproxy"),
        "script:\n{text}"
    );
    golden("nftables-node-a-cli.nft", &text);
    let mut args = EXAMPLE.to_vec();
    args.extend(["--proxy-mode", "nftables", "--ip-family", "ipv6"]);
    let out = sliceproxy(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        !text.contains("table ip sliceproxy") && text.contains("table ip6 sliceproxy"),
        "script:\n{text}"
    );
}

#[test]
fn render_reports_a_type_error_in_a_list_item_with_its_field_path_and_renders_the_rest() {
    let text = r#"apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata: {name: bad, namespace: ns}
  spec: {clusterIP: 10.96.0.1, ports: [{port: "eighty"}]}
- apiVersion: v1
  kind: Service
  metadata: {name: good, namespace: ns}
  spec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}
kind: List
"#;
    let path = temp_file("list-type-error.yaml", text);
    let out = sliceproxy(&["render", "-f", path.to_str().unwrap(), "--hostname-override", "n1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("Service ns/bad: spec.ports[0].port: invalid type: string \"eighty\"") && err.contains("items[0]"),
        "{err}"
    );
    assert!(stdout(&out).contains("ns/good"), "the valid item is still rendered");
    let out = sliceproxy(&[
        "render",
        "-f",
        path.to_str().unwrap(),
        "--hostname-override",
        "n1",
        "--proxy-mode",
        "iptables",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("ns/good"), "iptables output too");
}
