//! Real packets through a small layout loaded over netlink: a client, a
//! node and two pods, each in its own namespace (veths only between them,
//! no route to the host). TCP and UDP to a ClusterIP and TCP to a NodePort
//! must reach both endpoints.

mod nft_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nft_support::Netns;
use sliceproxy::dataplane::nftables::layout::{self, Selection, Settings, SvcSpec, Variant};
use sliceproxy::dataplane::nftables::model::{TCP, UDP};
use sliceproxy::dataplane::nftables::tx::Batch;

/// Run an echo server (TCP and UDP on `port`) inside `ns` that answers
/// with `reply`, until `stop`.
fn echo(ns: &Netns, port: u16, reply: &'static str, stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    let path = format!("/run/netns/{}", ns.name);
    let enter = move || {
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    };
    let (e1, s1) = (enter.clone(), stop.clone());
    let tcp = std::thread::spawn(move || {
        e1();
        let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
        l.set_nonblocking(true).unwrap();
        while !s1.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((mut c, _)) => {
                    c.set_nonblocking(false).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut b = [0u8; 16];
                    let _ = c.read(&mut b);
                    let _ = c.write_all(reply.as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    let (e2, s2) = (enter, stop);
    let udp = std::thread::spawn(move || {
        e2();
        let s = UdpSocket::bind(("0.0.0.0", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut b = [0u8; 64];
        while !s2.load(Ordering::SeqCst) {
            if let Ok((_, from)) = s.recv_from(&mut b) {
                let _ = s.send_to(reply.as_bytes(), from);
            }
        }
    });
    vec![tcp, udp]
}

fn tcp_ask(to: SocketAddr) -> Option<String> {
    let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    c.write_all(b"hi").ok()?;
    let mut s = String::new();
    c.read_to_string(&mut s).ok()?;
    Some(s)
}

fn udp_ask(to: SocketAddr) -> Option<String> {
    // A fresh socket per question: a new source port, a new conntrack
    // entry, a new endpoint choice.
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.send_to(b"hi", to).ok()?;
    let mut b = [0u8; 64];
    let n = s.recv(&mut b).ok()?;
    Some(String::from_utf8_lossy(&b[..n]).into_owned())
}

/// Answers from 40 tries; both pods must answer, and nothing else.
fn both_answer(client: &Netns, what: &str, ask: fn(SocketAddr) -> Option<String>, to: SocketAddr) {
    let answers: Vec<String> = client.enter(|| (0..40).filter_map(|_| ask(to)).collect());
    let a = answers.iter().filter(|s| *s == "pod-a").count();
    let b = answers.iter().filter(|s| *s == "pod-b").count();
    assert!(
        a > 0 && b > 0 && a + b == answers.len() && answers.len() >= 36,
        "{what} {to}: pod-a {a}, pod-b {b}, answers {answers:?}"
    );
}

#[test]
fn clusterip_and_nodeport_reach_both_endpoints_modulus_selection() {
    packets(Selection::Modulus, Variant::PerService);
}

#[test]
fn clusterip_and_nodeport_reach_both_endpoints_range_selection() {
    packets(Selection::Ranges, Variant::PerService);
}

#[test]
fn clusterip_and_nodeport_reach_both_endpoints_concatenated_range_selection() {
    packets(Selection::RangesConcat, Variant::PerService);
}

#[test]
fn clusterip_and_nodeport_reach_both_endpoints_shared_pick_chains() {
    packets(Selection::Modulus, Variant::Shared);
}

#[test]
fn clusterip_and_nodeport_reach_both_endpoints_global_masquerade() {
    packets(Selection::Modulus, Variant::PerServiceGlobalMasq);
}

fn packets(selection: Selection, variant: Variant) {
    let (client, node, pa, pb) = (Netns::new("pk"), Netns::new("pk"), Netns::new("pk"), Netns::new("pk"));
    // Links: node <-> client, node <-> each pod. Veth ends are created in
    // the node namespace and moved; nothing touches the root namespace.
    let link = |peer: &Netns, here: &str, there: &str, node_ip: &str, peer_ip: &str| {
        node.must(&["ip", "link", "add", here, "type", "veth", "peer", "name", there]);
        node.must(&["ip", "link", "set", there, "netns", &peer.name]);
        node.must(&["ip", "addr", "add", node_ip, "dev", here]);
        node.must(&["ip", "link", "set", here, "up"]);
        peer.must(&["ip", "addr", "add", peer_ip, "dev", there]);
        peer.must(&["ip", "link", "set", there, "up"]);
    };
    link(&client, "n-cl", "cl-n", "192.168.77.1/24", "192.168.77.2/24");
    link(&pa, "n-pa", "pa-n", "10.244.1.1/24", "10.244.1.10/24");
    link(&pb, "n-pb", "pb-n", "10.244.2.1/24", "10.244.2.10/24");
    node.must(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    client.must(&["ip", "route", "add", "10.96.0.0/16", "via", "192.168.77.1"]);
    pa.must(&["ip", "route", "add", "default", "via", "10.244.1.1"]);
    pb.must(&["ip", "route", "add", "default", "via", "10.244.2.1"]);

    let eps = vec![
        ("10.244.1.10".parse().unwrap(), 8080),
        ("10.244.2.10".parse().unwrap(), 8080),
    ];
    let services = vec![
        SvcSpec {
            id: 1,
            cluster_ip: "10.96.0.10".parse().unwrap(),
            proto: TCP,
            port: 80,
            node_port: Some(30080),
            endpoints: eps.clone(),
        },
        SvcSpec {
            id: 2,
            cluster_ip: "10.96.0.11".parse().unwrap(),
            proto: UDP,
            port: 53,
            node_port: None,
            endpoints: eps,
        },
    ];
    let settings = Settings {
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        selection,
        variant,
    };
    let table = layout::build(&services, &settings);
    let mut nft = node.nft();
    for tx in layout::cold_load(&table, 10) {
        nft.commit(&Batch::build(&tx, &table).unwrap()).unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = echo(&pa, 8080, "pod-a", stop.clone());
    threads.extend(echo(&pb, 8080, "pod-b", stop.clone()));
    // Servers up: each pod answers directly.
    let t0 = Instant::now();
    while client.enter(|| tcp_ask("10.244.1.10:8080".parse().unwrap())).is_none()
        && t0.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(50));
    }

    both_answer(&client, "TCP ClusterIP", tcp_ask, "10.96.0.10:80".parse().unwrap());
    both_answer(&client, "UDP ClusterIP", udp_ask, "10.96.0.11:53".parse().unwrap());
    both_answer(&client, "TCP NodePort", tcp_ask, "192.168.77.1:30080".parse().unwrap());
    // A port the table does not know gets nothing.
    assert_eq!(client.enter(|| tcp_ask("10.96.0.10:81".parse().unwrap())), None);

    stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
}

// === Through the backend: model objects -> Tracker -> NftablesDataplane ===

mod backend {
    use std::collections::BTreeSet;
    use std::net::IpAddr;

    use sliceproxy::dataplane::nftables::{NftablesConfig, NftablesDataplane};
    use sliceproxy::dataplane::{Dataplane, SyncScope};
    use sliceproxy::model::IpFamily;
    use sliceproxy::track::ChangeSet;

    use super::nft_support::topology::{CLIENT, Outcome, Topology, matrix, node_a_settings, slice};

    fn pods(outcomes: &[Outcome]) -> BTreeSet<String> {
        outcomes.iter().filter_map(|o| o.pod().map(str::to_string)).collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// Every outcome answered, by exactly `want` (each at least once).
    #[track_caller]
    fn served_by(what: &str, outcomes: &[Outcome], want: &[&str]) {
        assert!(
            outcomes.iter().all(|o| o.pod().is_some()) && pods(outcomes) == set(want),
            "{what}: {outcomes:?}, want answers from {want:?}"
        );
    }

    fn seen(o: &Outcome) -> IpAddr {
        match o {
            Outcome::Answered(_, ip) => *ip,
            other => panic!("no answer: {other:?}"),
        }
    }

    #[test]
    fn every_frontend_kind_through_the_backend() {
        let topo = Topology::new("bk");
        let mut t = matrix();
        let mut dp = NftablesDataplane::new(
            Box::new(topo.node.nft()),
            NftablesConfig::new(vec![IpFamily::V4, IpFamily::V6], node_a_settings()),
        );
        dp.sync(t.table(), &SyncScope::Full).expect("full sync");
        let (client, pa1, pa2) = (&topo.client, topo.pod("pa1"), topo.pod("pa2"));
        let client_ip: IpAddr = CLIENT.parse().unwrap();

        // ClusterIP from outside the cluster CIDR: both endpoints, masqueraded.
        let o = topo.ask_n(client, "tcp", "10.96.0.10:80", 24);
        served_by("ClusterIP from the client", &o, &["pa1", "pb1"]);
        assert!(o.iter().all(|o| seen(o) != client_ip), "masqueraded: {o:?}");
        // From a pod: not masqueraded.
        let o = topo.ask_n(pa2, "tcp", "10.96.0.10:80", 24);
        served_by("ClusterIP from a pod", &o, &["pa1", "pb1"]);
        assert!(
            o.iter().all(|o| seen(o) == "10.244.1.20".parse::<IpAddr>().unwrap()),
            "{o:?}"
        );
        // NodePort on the node's address, external IP.
        served_by(
            "NodePort",
            &topo.ask_n(client, "tcp", "192.168.50.10:30080", 24),
            &["pa1", "pb1"],
        );
        served_by(
            "external IP",
            &topo.ask_n(client, "tcp", "198.51.100.5:80", 24),
            &["pa1", "pb1"],
        );
        // IPv6 cluster IP.
        served_by(
            "IPv6 ClusterIP",
            &topo.ask_n(client, "tcp", "[fd00:96::10]:80", 4),
            &["pa1"],
        );
        // UDP.
        served_by(
            "UDP ClusterIP",
            &topo.ask_n(pa2, "udp", "10.96.0.53:53", 24),
            &["pa1", "pb1"],
        );
        // Unknown port of a cluster IP: refused; unallocated cluster IP: dropped.
        assert_eq!(
            topo.ask(client, "tcp", "10.96.0.10:81"),
            Outcome::Refused,
            "unknown port"
        );
        assert_eq!(
            topo.ask(client, "tcp", "10.96.0.99:80"),
            Outcome::TimedOut,
            "unallocated"
        );
        // No endpoints: refused (TCP and UDP).
        assert_eq!(
            topo.ask(client, "tcp", "10.96.0.20:80"),
            Outcome::Refused,
            "no endpoints"
        );
        // ETP=Local without a local endpoint: the node port drops; the
        // cluster IP (Cluster policy inside) still serves.
        assert_eq!(
            topo.ask(client, "tcp", "192.168.50.10:30081"),
            Outcome::TimedOut,
            "ETP=Local"
        );
        served_by(
            "ETP=Local service's ClusterIP",
            &topo.ask_n(pa2, "tcp", "10.96.0.21:80", 4),
            &["pb1"],
        );
        // Load-balancer source ranges.
        served_by(
            "LB admitted",
            &topo.ask_n(client, "tcp", "203.0.113.10:80", 4),
            &["pa1"],
        );
        assert_eq!(
            topo.ask(client, "tcp", "203.0.113.11:80"),
            Outcome::TimedOut,
            "LB source range"
        );
        // ClientIP affinity: every connection from one client to one backend.
        let o = topo.ask_n(client, "tcp", "10.96.0.30:80", 12);
        assert!(
            o.iter().all(|o| o.pod().is_some()) && pods(&o).len() == 1,
            "affinity: {o:?}"
        );
        // Hairpin: pa1 reaches itself through a cluster IP, masqueraded.
        let o = topo.ask_n(pa1, "tcp", "10.96.0.40:80", 4);
        served_by("hairpin", &o, &["pa1"]);
        assert!(
            o.iter().all(|o| seen(o) != "10.244.1.10".parse::<IpAddr>().unwrap()),
            "{o:?}"
        );

        // A partial sync: pb1 leaves web; only pa1 answers. Then web has no
        // endpoints: refused; then pb1 is back.
        let c = t.apply_slice(slice("web", "v4", "IPv4", "TCP", &[("10.244.1.10", "node-a")]));
        dp.sync(t.table(), &SyncScope::Partial(c)).expect("partial sync");
        served_by(
            "after pb1 left",
            &topo.ask_n(client, "tcp", "10.96.0.10:80", 12),
            &["pa1"],
        );
        let c = t.apply_slice(slice("web", "v4", "IPv4", "TCP", &[]));
        dp.sync(t.table(), &SyncScope::Partial(c)).expect("partial sync");
        assert_eq!(
            topo.ask(client, "tcp", "10.96.0.10:80"),
            Outcome::Refused,
            "no endpoints left"
        );
        let mut c = ChangeSet::new();
        c.merge(t.apply_slice(slice(
            "web",
            "v4",
            "IPv4",
            "TCP",
            &[("10.244.1.10", "node-a"), ("10.244.2.10", "node-b")],
        )));
        dp.sync(t.table(), &SyncScope::Partial(c)).expect("partial sync");
        served_by(
            "pb1 back",
            &topo.ask_n(client, "tcp", "192.168.50.10:30080", 24),
            &["pa1", "pb1"],
        );

        dp.cleanup().expect("cleanup");
        assert_eq!(
            topo.node.must(&["nft", "list", "ruleset"]).trim(),
            "",
            "cleanup leaves nothing"
        );
    }
}
