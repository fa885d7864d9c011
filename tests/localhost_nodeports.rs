//! Node ports on 127.0.0.1 with real packets, in namespaces named `lh-*`
//! (deleted by name on drop, also when a check fails): a client process in
//! the node's namespace connects to `127.0.0.1:<nodePort>` and reaches the
//! endpoint in a pod namespace, masqueraded; with the setting off it does
//! not. iptables mode (`--iptables-localhost-nodeports`, kube-proxy's) and
//! nftables mode (`--nftables-localhost-nodeports`, our opt-in).
//!
//! Needs root and `iptables-nft` (installed by `.ci/run`).

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use sliceproxy::dataplane::exec::HostExec;
use sliceproxy::dataplane::frontends::NodeSettings;
use sliceproxy::dataplane::iptables::{IptablesConfig, IptablesDataplane};
use sliceproxy::dataplane::nftables::netlink::Nft;
use sliceproxy::dataplane::nftables::{NftSettings, NftablesConfig, NftablesDataplane, Scheduler};
use sliceproxy::dataplane::xtables::Variant;
use sliceproxy::dataplane::{Dataplane, SyncScope};
use sliceproxy::model::IpFamily;
use sliceproxy::snapshot::RenderInput;
use support::netns::{Cluster, Family, Node, Outcome, Proto};

const NODE_PORT: u16 = 30080;

fn objects(pod: IpAddr) -> String {
    format!(
        "
apiVersion: v1
kind: Service
metadata: {{namespace: default, name: web}}
spec: {{type: NodePort, clusterIP: 10.96.0.40, ports: [{{name: http, port: 80, targetPort: 8080, nodePort: {NODE_PORT}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{namespace: default, name: web-1, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
endpoints: [{{addresses: [{pod}], nodeName: node-b}}]
ports: [{{name: http, port: 8080, protocol: TCP}}]
"
    )
}

fn cluster() -> Cluster {
    let c = Cluster::builder().prefix("lh-").pod("b1", Node::B).build();
    c.start_echo("b1");
    c
}

fn settings(cluster: &Cluster, localhost: bool) -> NodeSettings {
    let node_ip = cluster.ip("node-a", Family::V4);
    NodeSettings::new(&["10.244.0.0/16".parse().unwrap()], false, &[node_ip]).with_localhost_node_ports(localhost)
}

fn localhost() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), NODE_PORT)
}

fn probe(cluster: &Cluster) -> Outcome {
    cluster.probe("node-a", Proto::Tcp, localhost(), Duration::from_millis(1500))
}

/// The node's own address still serves the node port (the setting adds
/// loopback, it takes nothing away).
fn node_address_answers(cluster: &Cluster) {
    let target = SocketAddr::new(cluster.ip("node-a", Family::V4), NODE_PORT);
    let seen = cluster.probe("node-a", Proto::Tcp, target, Duration::from_millis(1500));
    assert_eq!(seen.backend(), Some("b1"), "{target}: {seen:?}");
}

fn answered_masqueraded(cluster: &Cluster, what: &str) {
    match probe(cluster) {
        Outcome::Answered { backend, seen_client } => {
            assert_eq!(backend, "b1", "{what}");
            assert!(
                !seen_client.is_loopback(),
                "{what}: a loopback source cannot leave the node, it must be masqueraded (saw {seen_client})"
            );
            let node_addrs = cluster.run("node-a", &["ip", "-4", "-o", "addr", "show"]);
            assert!(
                node_addrs.contains(&format!("inet {seen_client}/")),
                "{what}: masqueraded to an address of node-a, saw {seen_client}:\n{node_addrs}"
            );
        }
        other => panic!("{what}: 127.0.0.1:{NODE_PORT} from node-a: {other:?}"),
    }
}

fn not_answered(cluster: &Cluster, what: &str) {
    let seen = probe(cluster);
    assert!(!matches!(seen, Outcome::Answered { .. }), "{what}: {seen:?}");
}

fn iptables_dp(cluster: &Cluster, localhost: bool) -> IptablesDataplane {
    IptablesDataplane::new(
        Box::new(HostExec::in_netns(cluster.ns("node-a"))),
        IptablesConfig {
            families: vec![IpFamily::V4],
            variant: Variant::Nft,
            settings: settings(cluster, localhost),
            node_ports: None,
        },
    )
}

#[test]
fn iptables_mode_serves_node_ports_on_localhost_only_when_on() {
    let cluster = cluster();
    let input = RenderInput::parse(&objects(cluster.ip("b1", Family::V4)), "node-a").expect("objects");
    assert!(input.errors.is_empty(), "{:?}", input.errors);
    let table = input.tracker.table();
    // The agent sets this at start in iptables mode when the setting is on
    // (dataplane::build), as kube-proxy does; here the test plays the agent.
    cluster.run("node-a", &["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"]);

    // Off (with route_localnet on): nothing answers on loopback.
    iptables_dp(&cluster, false)
        .sync(table, &SyncScope::Full)
        .expect("sync off");
    node_address_answers(&cluster);
    not_answered(&cluster, "iptables, setting off");

    // On: a new agent on the same node; the endpoint answers, masqueraded.
    iptables_dp(&cluster, true)
        .sync(table, &SyncScope::Full)
        .expect("sync on");
    answered_masqueraded(&cluster, "iptables, setting on");
    node_address_answers(&cluster);
    let save = cluster.run("node-a", &["iptables-nft-save", "-t", "filter"]);
    assert!(save.contains("-j SP-LOCALNET"), "{save}");

    // Off again: the loopback rules and the guard go, loopback stops answering.
    iptables_dp(&cluster, false)
        .sync(table, &SyncScope::Full)
        .expect("sync off again");
    not_answered(&cluster, "iptables, turned off again");
    let save = cluster.run("node-a", &["iptables-nft-save"]);
    assert!(!save.contains("SP-LOCALNET") && !save.contains("127.0.0.0/8"), "{save}");
    node_address_answers(&cluster);
}

/// Run `f` on a thread inside node-a's namespace (the nftables dataplane
/// talks netlink, and sets route_localnet, in the calling thread's).
fn in_node_a<T: Send>(cluster: &Cluster, f: impl FnOnce() -> T + Send) -> T {
    let path = cluster.netns_path("node-a");
    std::thread::scope(|s| {
        s.spawn(|| {
            let fd = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in node-a")
    })
}

fn nft_sync(cluster: &Cluster, table: &sliceproxy::track::BackendTable, localhost: bool) {
    let s = settings(cluster, localhost);
    in_node_a(cluster, || {
        let kernel = Nft::open().expect("nf_tables netlink");
        let cfg = NftablesConfig::new(
            vec![IpFamily::V4],
            NftSettings {
                node: s,
                scheduler: Scheduler::Random,
            },
        );
        NftablesDataplane::new(Box::new(kernel), cfg)
            .sync(table, &SyncScope::Full)
            .expect("nftables full sync");
    });
}

#[test]
fn nftables_mode_serves_node_ports_on_localhost_only_with_its_opt_in() {
    let cluster = cluster();
    let input = RenderInput::parse(&objects(cluster.ip("b1", Family::V4)), "node-a").expect("objects");
    assert!(input.errors.is_empty(), "{:?}", input.errors);
    let table = input.tracker.table();
    let route_localnet = || cluster.run("node-a", &["sysctl", "-n", "net.ipv4.conf.all.route_localnet"]);
    // A new namespace copies the host's value (devconf_inherit_init_net=0);
    // start from the kernel's default whatever the host has.
    cluster.run("node-a", &["sysctl", "-w", "net.ipv4.conf.all.route_localnet=0"]);
    assert_eq!(route_localnet().trim(), "0", "reset in the node namespace");

    nft_sync(&cluster, table, false);
    node_address_answers(&cluster);
    not_answered(&cluster, "nftables, default (off)");
    assert_eq!(route_localnet().trim(), "0", "left alone when off");

    nft_sync(&cluster, table, true);
    assert_eq!(route_localnet().trim(), "1", "the nftables mode sets it itself");
    answered_masqueraded(&cluster, "nftables, opt-in on");
    node_address_answers(&cluster);

    nft_sync(&cluster, table, false);
    not_answered(&cluster, "nftables, turned off again");
}

/// Deletes the network namespace by name when dropped (also on failure).
struct NetnsGuard(String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

#[test]
fn a_bad_kubeconfig_fails_before_the_agent_changes_the_node() {
    // The agent reads its kubeconfig before it touches the node: no
    // route_localnet, no rules, no other mode's cleanup when it cannot
    // even start (found by running it with a missing kubeconfig).
    let name = format!("lh-kc-{}", std::process::id());
    let guard = NetnsGuard(name.clone());
    let status = std::process::Command::new("ip").args(["netns", "add", &name]).status();
    assert!(status.map(|s| s.success()).unwrap_or(false), "ip netns add {name}");
    let sysctl = || {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &name,
                "sysctl",
                "-n",
                "net.ipv4.conf.all.route_localnet",
            ])
            .output()
            .expect("sysctl");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // Not asserted to be 0 first: a new namespace copies the host's value.
    let before = sysctl();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &name, env!("CARGO_BIN_EXE_sliceproxy")])
        .args([
            "--kubeconfig",
            "/nonexistent/kubeconfig",
            "--hostname-override",
            "node-a",
        ])
        .args(["--healthz-bind-address", "", "--metrics-bind-address", ""])
        .output()
        .expect("run the agent");
    assert!(!out.status.success(), "the agent must fail without a kubeconfig");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/kubeconfig"), "{stderr}");
    assert_eq!(
        sysctl(),
        before,
        "route_localnet changed by an agent that never started"
    );
    let save = std::process::Command::new("ip")
        .args(["netns", "exec", &name, "iptables-save"])
        .output()
        .expect("iptables-save");
    assert!(
        !String::from_utf8_lossy(&save.stdout).contains("SP-"),
        "rules written by an agent that never started"
    );
    drop(guard);
}
