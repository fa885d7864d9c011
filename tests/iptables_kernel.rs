//! The iptables mode against the real kernel, in network namespaces these
//! tests create and delete by name:
//! - the periodic drift check sees a deleted canary chain, a flushed
//!   built-in chain and a flushed table, and a full sync repairs each to
//!   exactly the rules of the first sync (namespaces `sync-drift-<pid>-*`);
//! - `render --proxy-mode iptables` output piped into `iptables-restore` on
//!   a fresh node routes real packets, and without the jumps from the
//!   built-in chains it would not (a namespace cluster `slpx-<pid>-*`).
//!
//! Needs root, `iptables-nft` and `iptables-legacy` (installed by `.ci/run`).

mod support;

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use sliceproxy::dataplane::exec::HostExec;
use sliceproxy::dataplane::frontends::NodeSettings;
use sliceproxy::dataplane::iptables::{IptablesConfig, IptablesDataplane};
use sliceproxy::dataplane::xtables::Variant;
use sliceproxy::dataplane::{Dataplane, Drift, SyncScope};
use sliceproxy::model::IpFamily;
use sliceproxy::snapshot::RenderInput;
use support::netns::{Cluster, Family, Node, Outcome, Proto};

/// A namespace of this test, deleted by name when dropped (also on panic).
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("sync-drift-{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "ip netns add {name} (needs root)");
        Netns(name)
    }

    fn run(&self, cmd: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(cmd)
            .output()
            .expect("ip netns exec");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

const OBJECTS: &str = "
apiVersion: v1
kind: Service
metadata: {namespace: default, name: web}
spec: {clusterIP: 10.96.0.30, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: default, name: web-1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.2.2]}, {addresses: [10.244.2.3]}]
ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {namespace: default, name: dns}
spec: {clusterIP: 10.96.0.31, ports: [{name: dns, port: 53, targetPort: 5353, protocol: UDP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: default, name: dns-1, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
endpoints: [{addresses: [10.244.2.2]}]
ports: [{name: dns, port: 5353, protocol: UDP}]
";

/// Our rules as the kernel holds them, without counters.
fn ours(ns: &Netns, tool: &str) -> String {
    ns.run(&[tool])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.find(" [") {
            Some(i) if l.starts_with(':') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn drift_is_seen_and_repaired(variant: Variant, tag: &str) {
    let (iptables, save) = match variant {
        Variant::Nft => ("iptables-nft", "iptables-nft-save"),
        Variant::Legacy => ("iptables-legacy", "iptables-legacy-save"),
    };
    let ns = Netns::new(tag);
    let input = RenderInput::parse(OBJECTS, "node-a").expect("objects");
    assert!(input.errors.is_empty(), "{:?}", input.errors);
    let table = input.tracker.table();
    let mut dp = IptablesDataplane::new(
        Box::new(HostExec::in_netns(&ns.0)),
        IptablesConfig {
            families: vec![IpFamily::V4],
            variant,
            settings: NodeSettings::new(&["10.244.0.0/16".parse().unwrap()], false, &[]),
            node_ports: None,
        },
    );
    dp.sync(table, &SyncScope::Full).expect("first full sync");
    let synced = ours(&ns, save);
    assert!(synced.contains(":SP-CANARY"), "{synced}");
    assert_eq!(dp.check_drift().unwrap(), Drift::None, "nothing drifted yet");

    // Each kind of drift is seen, and a full sync puts back exactly the first sync's rules.
    let drifts: [(&str, &[&[&str]]); 4] = [
        ("canary", &[&[iptables, "-t", "nat", "-X", "SP-CANARY"]]),
        ("canary", &[&[iptables, "-t", "filter", "-X", "SP-CANARY"]]),
        ("PREROUTING", &[&[iptables, "-t", "nat", "-F", "PREROUTING"]]),
        (
            "canary",
            &[&[iptables, "-t", "nat", "-F"], &[iptables, "-t", "nat", "-X"]],
        ),
    ];
    for (what, commands) in drifts {
        for cmd in commands {
            ns.run(cmd);
        }
        assert_ne!(ours(&ns, save), synced, "{commands:?} changed nothing");
        match dp.check_drift().expect("drift check") {
            Drift::Found(found) => assert!(found.contains(what), "{commands:?}: {found}"),
            Drift::None => panic!("{commands:?} went unseen"),
        }
        dp.sync(table, &SyncScope::Full).expect("repair");
        assert_eq!(ours(&ns, save), synced, "repaired after {commands:?}");
        assert_eq!(dp.check_drift().unwrap(), Drift::None);
    }
}

#[test]
fn drift_check_sees_flushes_and_a_full_sync_repairs_them_nft() {
    drift_is_seen_and_repaired(Variant::Nft, "nft");
}

#[test]
fn drift_check_sees_flushes_and_a_full_sync_repairs_them_legacy() {
    drift_is_seen_and_repaired(Variant::Legacy, "legacy");
}

fn restore(cluster: &Cluster, ns: &str, input: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", cluster.ns(ns), "iptables-restore"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("iptables-restore");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "iptables-restore: {}\n{input}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rendered_rules_loaded_on_a_fresh_node_route_packets() {
    let cluster = Cluster::builder()
        .pod("a1", Node::A)
        .pod("b1", Node::B)
        .pod("b2", Node::B)
        .build();
    for pod in ["b1", "b2"] {
        cluster.start_echo(pod);
    }
    let (b1, b2) = (cluster.ip("b1", Family::V4), cluster.ip("b2", Family::V4));
    let objects = OBJECTS
        .replace("10.244.2.2", &b1.to_string())
        .replace("10.244.2.3", &b2.to_string());
    let file = std::env::temp_dir().join(format!("sync-render-{}.yaml", std::process::id()));
    std::fs::write(&file, objects).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sliceproxy"))
        .args(["render", "-f", file.to_str().unwrap(), "--proxy-mode", "iptables"])
        .args(["--ip-family", "ipv4", "--hostname-override", "node-a"])
        .args(["--cluster-cidr", "10.244.0.0/16"])
        .output()
        .expect("sliceproxy render");
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rendered = String::from_utf8(out.stdout).unwrap();
    let web: SocketAddr = "10.96.0.30:80".parse().unwrap();
    let dns: SocketAddr = "10.96.0.31:53".parse().unwrap();
    let probe = |proto, target| cluster.probe("a1", proto, target, Duration::from_millis(1500));
    assert!(
        !matches!(probe(Proto::Tcp, web), Outcome::Answered { .. }),
        "no rules yet: nothing answers"
    );

    // Without the jumps from the built-in chains no packet reaches our chains
    // (what `render` printed before): the check below can fail.
    let no_jumps: String = rendered
        .lines()
        .filter(|l| !l.starts_with("-I "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(no_jumps, rendered, "render prints the jumps");
    restore(&cluster, "node-a", &no_jumps);
    assert!(
        !matches!(probe(Proto::Tcp, web), Outcome::Answered { .. }),
        "chains without jumps route nothing"
    );

    // The output as printed, on a fresh node (`iptables-restore` flushes the tables).
    restore(&cluster, "node-a", &rendered);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        match probe(Proto::Tcp, web) {
            Outcome::Answered { backend, .. } => {
                seen.insert(backend);
            }
            other => panic!("web through the rendered rules: {other:?}"),
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["b1", "b2"]);
    match probe(Proto::Udp, dns) {
        Outcome::Answered { backend, .. } => assert_eq!(backend, "b1"),
        other => panic!("dns through the rendered rules: {other:?}"),
    }
}
