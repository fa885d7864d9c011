//! Rule-text safety: for any valid random table, with names as hostile as
//! the API server allows (63-character labels, digits and dashes
//! everywhere), the rendered `iptables-restore` input
//! - is accepted by the real `iptables-restore` in a fresh network
//!   namespace this test creates and deletes (`input-<pid>-<n>`), and
//! - holds no rule outside our own `SP-` chains except jumps from the
//!   built-in chains into them;
//!
//! and an object whose name carries a newline is refused at conversion,
//! so its text never reaches a rule.
//!
//! Uses only `IptablesDataplane::render_full`, the `Tracker` and `snapshot`.
//! Needs root and `iptables-nft-restore` (installed by `.ci/run`).
//! `SLICEPROXY_RULE_CASES` sets the number of random tables (default 12).

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use proptest::prelude::*;
use serde_json::{Value, json};
use sliceproxy::dataplane::frontends::NodeSettings;
use sliceproxy::dataplane::iptables::IptablesDataplane;
use sliceproxy::model::IpFamily;
use sliceproxy::policy::NodeContext;
use sliceproxy::snapshot::RenderInput;
use sliceproxy::track::Tracker;
use sliceproxy::watch::convert;

const BUILTIN: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// A network namespace of this test, deleted by name when dropped.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("input-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip")
            .success();
        assert!(ok, "ip netns add {name} (needs root)");
        Netns(name)
    }

    fn restore(&self, input: &str) -> Result<(), String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, "iptables-nft-restore", "-w"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn save(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "iptables-nft-save"])
            .output()
            .expect("iptables-nft-save");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn dns1123_label() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9]", "[a-z0-9][-a-z0-9]{0,61}[a-z0-9]", Just("9".repeat(63))]
}

fn dns1035_label() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]",
        "[a-z][-a-z0-9]{0,61}[a-z0-9]",
        Just(format!("a{}", "-9".repeat(31)))
    ]
}

/// One Service and its slice, all valid, as JSON objects.
fn service_and_slice(i: usize) -> impl Strategy<Value = (Value, Value)> {
    (
        dns1123_label(),
        dns1035_label(),
        proptest::collection::btree_set(dns1123_label(), 1..4),
        proptest::sample::select(vec!["ClusterIP", "NodePort", "LoadBalancer"]),
        any::<bool>(), // externalTrafficPolicy Local
        any::<bool>(), // affinity
        proptest::collection::vec((1..255u8, any::<bool>(), any::<bool>()), 0..6),
        proptest::collection::vec("[1-9][0-9]?\\.[0-9]{1,2}\\.0\\.0/(8|16|24)", 0..3),
    )
        .prop_map(move |(ns, name, port_names, ty, local, affinity, eps, ranges)| {
            let protocols = ["TCP", "UDP", "SCTP"];
            let ports: Vec<Value> = port_names
                .iter()
                .enumerate()
                .map(|(k, n)| {
                    let mut p = json!({"name": n, "port": 1000 + k, "protocol": protocols[k % 3]});
                    if ty != "ClusterIP" {
                        p["nodePort"] = json!(30000 + i * 4 + k);
                    }
                    p
                })
                .collect();
            let mut spec = json!({
                "type": ty, "clusterIP": format!("10.96.{}.{}", i / 200, i % 200 + 1), "ports": ports,
                "externalIPs": [format!("198.51.100.{}", i % 250 + 1)],
            });
            spec["externalTrafficPolicy"] = json!(if local { "Local" } else { "Cluster" });
            if affinity {
                spec["sessionAffinity"] = json!("ClientIP");
            }
            let mut svc = json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"namespace": ns, "name": name}, "spec": spec});
            if ty == "LoadBalancer" {
                svc["spec"]["loadBalancerSourceRanges"] = json!(ranges);
                svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": format!("203.0.113.{}", i % 250 + 1), "ipMode": "VIP"}]}});
            }
            let endpoints: Vec<Value> = eps
                .iter()
                .map(|(host, ready, here)| {
                    json!({"addresses": [format!("10.244.{}.{host}", i % 250)],
                           "conditions": {"ready": ready, "serving": true, "terminating": !ready},
                           "nodeName": if *here { "node-a" } else { "node-b" }})
                })
                .collect();
            let slice_ports: Vec<Value> = port_names
                .iter()
                .enumerate()
                .map(|(k, n)| json!({"name": n, "port": 8000 + k, "protocol": protocols[k % 3]}))
                .collect();
            let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"namespace": svc["metadata"]["namespace"], "name": format!("{}-x{i}", svc["metadata"]["name"].as_str().unwrap().chars().take(50).collect::<String>()),
                             "labels": {"kubernetes.io/service-name": svc["metadata"]["name"]}},
                "addressType": "IPv4", "endpoints": endpoints, "ports": slice_ports});
            (svc, slice)
        })
}

fn table() -> impl Strategy<Value = Vec<(Value, Value)>> {
    (1..6usize).prop_flat_map(|n| (0..n).map(service_and_slice).collect::<Vec<_>>())
}

fn rule_config(masquerade_all: bool) -> NodeSettings {
    NodeSettings::new(
        &["10.244.0.0/16".parse().unwrap()],
        masquerade_all,
        &["192.168.50.10".parse().unwrap()],
    )
}

/// Every line is a table header, a chain of ours (or a built-in one), a
/// rule in one of our chains, a jump from a built-in chain into ours, or
/// COMMIT; quotes balance on every line.
fn check_only_our_rules(text: &str) -> Result<(), String> {
    for line in text.lines() {
        let ok = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            [] => true,
            [t] if t.starts_with('*') || *t == "COMMIT" => true,
            [c, ..] if c.starts_with(':') => {
                let name = &c[1..];
                name.starts_with("SP-") || BUILTIN.contains(&name)
            }
            [op, chain, rest @ ..] if ["-A", "-I", "-D", "-R"].contains(op) => {
                if chain.starts_with("SP-") {
                    true
                } else if BUILTIN.contains(chain) {
                    rest.windows(2).any(|w| w[0] == "-j" && w[1].starts_with("SP-"))
                } else {
                    false
                }
            }
            [op, chain] if ["-F", "-X"].contains(op) => chain.starts_with("SP-"),
            _ => false,
        };
        if !ok {
            return Err(format!("a line outside our chains: {line:?}"));
        }
        if line.matches('"').count() % 2 != 0 {
            return Err(format!("unbalanced quotes: {line:?}"));
        }
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("SLICEPROXY_RULE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn rendered_rules_of_any_valid_table_load_and_stay_in_our_chains(objects in table(), masq in any::<bool>()) {
        let mut tracker = Tracker::new(NodeContext::new("node-a"));
        for (svc, slice) in objects {
            let svc: core::Service = serde_json::from_value(svc).unwrap();
            let slice: discovery::EndpointSlice = serde_json::from_value(slice).unwrap();
            let s = convert::service(&svc);
            prop_assert!(s.is_ok(), "a valid Service was refused: {:?}", s.err());
            tracker.apply_service(s.unwrap());
            let sl = convert::slice(&slice);
            prop_assert!(sl.is_ok(), "a valid slice was refused: {:?}", sl.err());
            if let Some(sl) = sl.unwrap() {
                tracker.apply_slice(sl);
            }
        }
        let text = IptablesDataplane::render_full(tracker.table(), IpFamily::V4, &rule_config(masq));
        if let Err(e) = check_only_our_rules(&text) {
            prop_assert!(false, "{e}\n{text}");
        }
        let ns = Netns::new();
        if let Err(e) = ns.restore(&text) {
            prop_assert!(false, "iptables-restore refused it: {e}\n{text}");
        }
        // What the kernel now holds is ours too.
        let saved = ns.save();
        let saved: String = saved.lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).collect();
        if let Err(e) = check_only_our_rules(&saved) {
            prop_assert!(false, "after loading: {e}\n{saved}");
        }
    }
}

#[test]
fn a_name_with_a_newline_never_reaches_a_rule() {
    let crafted = "apiVersion: v1
kind: Service
metadata: {namespace: default, name: \"web\\n-A INPUT -j ACCEPT\\n#\"}
spec: {type: NodePort, clusterIP: 10.96.0.9, ports: [{name: \"http\\n-I INPUT -j ACCEPT\", port: 80, nodePort: 30080}]}
---
apiVersion: v1
kind: Service
metadata: {namespace: \"ns\\n-A FORWARD -j ACCEPT\", name: web}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: default, name: web-1, labels: {kubernetes.io/service-name: \"web\\n-A INPUT -j ACCEPT\\n#\"}}
addressType: IPv4
endpoints: [{addresses: [10.244.0.1]}]
ports: [{name: http, port: 8080, protocol: TCP}]
";
    let input = RenderInput::parse(crafted, "node-a").expect("readable");
    assert_eq!(input.errors.len(), 3, "{:?}", input.errors);
    let fields: Vec<&str> = input.errors.iter().map(|e| e.error.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "metadata.name",
            "metadata.namespace",
            "metadata.labels[kubernetes.io/service-name]"
        ]
    );
    assert_eq!(input.tracker.table().plans().count(), 0);
    let text = IptablesDataplane::render_full(input.tracker.table(), IpFamily::V4, &rule_config(false));
    // Nothing of the crafted objects is left: the same text as no objects.
    let empty = Tracker::new(NodeContext::new("node-a"));
    assert_eq!(
        text,
        IptablesDataplane::render_full(empty.table(), IpFamily::V4, &rule_config(false))
    );
    assert!(!text.contains("-A INPUT") && !text.contains("-A FORWARD") && !text.contains("web"));
    check_only_our_rules(&text).unwrap();
}

#[test]
fn the_checker_catches_foreign_rules() {
    for bad in [
        "*filter\n-A INPUT -j ACCEPT\nCOMMIT\n",
        "*nat\n-A SP-SERVICES -m comment --comment \"a\n-A INPUT -j ACCEPT\nCOMMIT\n",
        "*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n",
        "*nat\n-I OUTPUT -j KUBE-SERVICES\nCOMMIT\n",
        "*nat\n-X INPUT\nCOMMIT\n",
    ] {
        assert!(check_only_our_rules(bad).is_err(), "{bad}");
    }
    assert!(check_only_our_rules("*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j SP-SERVICES\nCOMMIT\n").is_ok());
}
