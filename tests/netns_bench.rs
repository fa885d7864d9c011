//! Self-tests of the network-namespace bench (tests/support/netns.rs) with no
//! proxy rules at all: plain routing between pods, nodes and the external
//! client, probe outcomes, and teardown. Needs root.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use support::netns::{Cluster, ECHO_PORTS, Family, Node, Outcome, Proto};

const ANSWER: Duration = Duration::from_secs(3);
const SILENCE: Duration = Duration::from_millis(800);

fn addr(c: &Cluster, name: &str, family: Family, port: u16) -> SocketAddr {
    SocketAddr::new(c.ip(name, family), port)
}

fn netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn answered(backend: &str, seen: IpAddr) -> Outcome {
    Outcome::Answered {
        backend: backend.to_string(),
        seen_client: seen,
    }
}

#[test]
fn pods_answer_on_the_same_node_and_across_nodes() {
    let c = Cluster::builder()
        .pod("a1", Node::A)
        .pod("a2", Node::A)
        .pod("b1", Node::B)
        .pod("b2", Node::B)
        .build();
    for pod in ["a1", "a2", "b1", "b2"] {
        c.start_echo(pod);
    }
    let pairs = [
        ("a1", "a2"),
        ("a2", "a1"),
        ("a1", "b1"),
        ("b1", "a2"),
        ("b2", "b1"),
        ("b2", "a1"),
    ];
    for (from, to) in pairs {
        for family in [Family::V4, Family::V6] {
            for proto in [Proto::Tcp, Proto::Udp] {
                for port in ECHO_PORTS {
                    let got = c.probe(from, proto, addr(&c, to, family, port), ANSWER);
                    assert_eq!(
                        got,
                        answered(to, c.ip(from, family)),
                        "{from} -> {to} {family:?} {proto:?} port {port}"
                    );
                }
            }
        }
    }
}

#[test]
fn nodes_and_client_reach_each_other() {
    let c = Cluster::builder().pod("a1", Node::A).pod("b1", Node::B).build();
    for ns in ["a1", "b1", "node-a", "node-b"] {
        c.start_echo(ns);
    }
    for family in [Family::V4, Family::V6] {
        for proto in [Proto::Tcp, Proto::Udp] {
            // The external client reaches node-a (and node-b) on the LAN.
            for node in ["node-a", "node-b"] {
                let got = c.probe("client", proto, addr(&c, node, family, 8080), ANSWER);
                assert_eq!(
                    got,
                    answered(node, c.ip("client", family)),
                    "client -> {node} {family:?} {proto:?}"
                );
            }
            // A node reaches its own and the other node's pods from its LAN address.
            for (node, pod) in [("node-a", "a1"), ("node-a", "b1"), ("node-b", "a1")] {
                let got = c.probe(node, proto, addr(&c, pod, family, 9090), ANSWER);
                assert_eq!(
                    got,
                    answered(pod, c.ip(node, family)),
                    "{node} -> {pod} {family:?} {proto:?}"
                );
            }
            // A pod reaches the other node's LAN address.
            let got = c.probe("a1", proto, addr(&c, "node-b", family, 5353), ANSWER);
            assert_eq!(
                got,
                answered("node-b", c.ip("a1", family)),
                "a1 -> node-b {family:?} {proto:?}"
            );
        }
    }
    // Node sysctls: forwarding on, rp_filter off, route_localnet left at 0.
    for node in ["node-a", "node-b"] {
        for (key, want) in [
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv6/conf/all/forwarding", "1"),
            ("net/ipv4/conf/all/rp_filter", "0"),
            ("net/ipv4/conf/lan0/rp_filter", "0"),
            ("net/ipv4/conf/all/route_localnet", "0"),
        ] {
            let got = c.run(node, &["cat", &format!("/proc/sys/{key}")]);
            assert_eq!(got.trim(), want, "{node} {key}");
        }
    }
    // The namespaces route the service ranges (else connect() would fail
    // before nat OUTPUT could DNAT).
    for ns in ["a1", "node-a", "client"] {
        for range in [
            "10.96.0.1",
            "fd00:96::1",
            "198.51.100.1",
            "2001:db8:51::1",
            "203.0.113.1",
            "2001:db8:113::1",
        ] {
            let out = c.run(ns, &["ip", "route", "get", range]);
            assert!(!out.contains("unreachable"), "{ns} has no route to {range}: {out}");
        }
    }
}

#[test]
fn client_source_addresses_are_seen() {
    let c = Cluster::builder().build();
    c.start_echo("node-a");
    c.start_echo("node-b");
    for src in ["198.51.100.7", "2001:db8:51::7"] {
        let src: IpAddr = src.parse().unwrap();
        c.add_address("client", src);
        let family = if src.is_ipv4() { Family::V4 } else { Family::V6 };
        for node in ["node-a", "node-b"] {
            for proto in [Proto::Tcp, Proto::Udp] {
                let got = c.probe_from("client", Some(src), proto, addr(&c, node, family, 8080), ANSWER);
                assert_eq!(got, answered(node, src), "client[{src}] -> {node} {proto:?}");
            }
        }
    }
}

#[test]
fn closed_port_is_refused() {
    let c = Cluster::builder().pod("a1", Node::A).pod("b1", Node::B).build();
    c.start_echo("b1");
    for family in [Family::V4, Family::V6] {
        for proto in [Proto::Tcp, Proto::Udp] {
            // Repeated on purpose: the ICMP rate limit is off in the bench,
            // so every UDP probe gets its port unreachable.
            for i in 0..8 {
                let got = c.probe("a1", proto, addr(&c, "b1", family, 7777), ANSWER);
                assert_eq!(got, Outcome::Refused, "a1 -> b1:7777 {family:?} {proto:?} try {i}");
            }
        }
    }
}

#[test]
fn dropped_traffic_times_out() {
    let c = Cluster::builder().pod("a1", Node::A).pod("b1", Node::B).build();
    c.start_echo("b1");
    // A blackhole route on node-a: forwarded packets vanish without an ICMP
    // error. (A blackhole in the *sending* namespace fails connect() at once
    // with EINVAL instead.)
    c.run("node-a", &["ip", "route", "add", "blackhole", "10.96.99.99/32"]);
    c.run(
        "node-a",
        &["ip", "-6", "route", "add", "blackhole", "fd00:96::9:9999/128"],
    );
    // A DROP rule inside b1 for port 9090 only.
    c.run("b1", &["nft", "add table inet bench"]);
    c.run(
        "b1",
        &[
            "nft",
            "add chain inet bench input { type filter hook input priority 0; }",
        ],
    );
    c.run(
        "b1",
        &[
            "nft",
            "add rule inet bench input meta l4proto { tcp, udp } th dport 9090 drop",
        ],
    );
    // Every silent probe waits out its timeout: run them all at once.
    std::thread::scope(|s| {
        for family in [Family::V4, Family::V6] {
            let hole: IpAddr = match family {
                Family::V4 => "10.96.99.99".parse().unwrap(),
                Family::V6 => "fd00:96::9:9999".parse().unwrap(),
            };
            for proto in [Proto::Tcp, Proto::Udp] {
                let c = &c;
                for from in ["client", "a1"] {
                    s.spawn(move || {
                        let got = c.probe(from, proto, SocketAddr::new(hole, 80), SILENCE);
                        assert_eq!(got, Outcome::TimedOut, "{from} -> blackhole {hole} {proto:?}");
                    });
                }
                s.spawn(move || {
                    let got = c.probe("a1", proto, addr(c, "b1", family, 9090), SILENCE);
                    assert_eq!(got, Outcome::TimedOut, "a1 -> b1:9090 (dropped) {family:?} {proto:?}");
                });
                s.spawn(move || {
                    let got = c.probe("a1", proto, addr(c, "b1", family, 8080), ANSWER);
                    assert_eq!(
                        got,
                        answered("b1", c.ip("a1", family)),
                        "a1 -> b1:8080 {family:?} {proto:?}"
                    );
                });
            }
        }
    });
}

#[test]
fn established_connection_keeps_answering() {
    let c = Cluster::builder().pod("a1", Node::A).pod("b1", Node::B).build();
    c.start_echo("b1");
    for family in [Family::V4, Family::V6] {
        let mut conn = c.connect("a1", addr(&c, "b1", family, 8080));
        let local = conn.local_addr().unwrap();
        for _ in 0..3 {
            let line = conn.ping().expect("ping on the established connection");
            assert_eq!(line, format!("b1 {local}"));
        }
    }
}

#[test]
fn teardown_removes_every_namespace_on_panic() {
    let mut names: Vec<String> = Vec::new();
    let mut sleeper: Option<Child> = None;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let c = Cluster::builder().pod("p1", Node::A).pod("p2", Node::B).build();
        c.start_echo("p1");
        let _conn = c.connect("p2", addr(&c, "p1", Family::V4, 8080));
        // A process left running inside a namespace must not stop teardown.
        let ns = c.ns("node-b").to_string();
        let child = sleeper.insert(
            Command::new("ip")
                .args(["netns", "exec", &ns, "sleep", "600"])
                .spawn()
                .unwrap(),
        );
        // `ip netns exec` enters the namespace, then execs sleep under the
        // same pid: wait until the namespace lists it.
        let pid = child.id().to_string();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !c
            .run("lan", &["ip", "netns", "pids", &ns])
            .split_whitespace()
            .any(|p| p == pid)
        {
            assert!(Instant::now() < deadline, "sleeper never showed up in {ns}");
            std::thread::sleep(Duration::from_millis(10));
        }
        names = c.namespaces().map(|(_, real)| real.to_string()).collect();
        panic!("deliberate panic with a live cluster");
    }));
    assert!(result.is_err());
    assert_eq!(names.len(), 6, "lan, node-a, node-b, client, p1, p2: {names:?}");
    let list = netns_list();
    for name in &names {
        assert!(
            !list.lines().any(|l| l.split_whitespace().next() == Some(name)),
            "{name} survived: {list}"
        );
    }
    let status = sleeper.expect("sleeper started").wait().expect("wait for sleeper");
    assert_eq!(status.signal(), Some(9), "sleeper was not killed: {status}");
}

#[test]
fn teardown_removes_a_partial_build() {
    // The second pod's namespace name is too long for `ip netns add`, so
    // the build panics after creating lan, the nodes, the client and the
    // first pod; those must be gone afterwards.
    let unique = format!("partial{}", std::process::id());
    let result = catch_unwind(AssertUnwindSafe(|| {
        Cluster::builder()
            .pod(&unique, Node::A)
            .pod(&"x".repeat(300), Node::B)
            .build()
    }));
    assert!(result.is_err(), "build with an over-long namespace name should fail");
    let list = netns_list();
    assert!(!list.contains(&unique), "partial build left namespaces behind: {list}");
}
