//! A small cluster of `nft-` namespaces for real packets through the
//! nftables backend, and builders of model objects (converted the way the
//! watch layer converts them, then tracked by the real `Tracker`).
//!
//! ```text
//!   client 192.168.50.100 / fd00:50::100
//!      │ veth 192.168.50.0/24, fd00:50::/64
//!   node-a .10 / ::10  (our table)          ── veth 192.168.60.0/24 ──  node-b .11
//!      │ veth 10.244.1.0/28, fd00:244:1::/120   │ veth 10.244.1.16/28       │ veth 10.244.2.0/24
//!   pa1 10.244.1.10 / fd00:244:1::10          pa2 10.244.1.20              pb1 10.244.2.10
//! ```
//! Veth ends are created inside node-a and moved; nothing touches the root
//! namespace and no namespace has a route to the host. Every namespace is
//! deleted by name when the [`Topology`] drops, also when a test panics.
#![allow(dead_code)] // each test binary uses part of it

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sliceproxy::dataplane::frontends::NodeSettings;
use sliceproxy::dataplane::nftables::{NftSettings, Scheduler};
use sliceproxy::model::{Service, Slice};
use sliceproxy::policy::NodeContext;
use sliceproxy::track::Tracker;
use sliceproxy::watch::convert;

use super::Netns;

/// The port every echo server listens on (TCP and UDP).
pub const ECHO_PORT: u16 = 8080;
/// node-a's address towards the client (serves node ports).
pub const NODE_A: &str = "192.168.50.10";
/// node-a's IPv6 address towards the client.
pub const NODE_A_V6: &str = "fd00:50::10";
/// node-a's address towards node-b.
pub const NODE_A_B: &str = "192.168.60.10";
/// The client's address.
pub const CLIENT: &str = "192.168.50.100";

/// What a probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An echo server answered: its pod name and the client address it saw.
    Answered(String, IpAddr),
    /// TCP reset or ICMP port unreachable.
    Refused,
    /// Nothing within the timeout.
    TimedOut,
}

impl Outcome {
    /// The pod that answered, if any.
    pub fn pod(&self) -> Option<&str> {
        match self {
            Outcome::Answered(p, _) => Some(p),
            _ => None,
        }
    }
}

/// The namespaces and echo servers; dropped: servers stopped, namespaces
/// deleted by name.
pub struct Topology {
    /// Where the table lives.
    pub node: Netns,
    /// Outside the cluster.
    pub client: Netns,
    /// The other node.
    pub node_b: Netns,
    /// Pods by name: `pa1`, `pa2` (on node-a), `pb1` (on node-b).
    pub pods: Vec<(&'static str, Netns)>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Topology {
    /// Build it; `tag` goes into the namespace names.
    pub fn new(tag: &str) -> Topology {
        let node = Netns::new(&format!("{tag}-a"));
        let client = Netns::new(&format!("{tag}-cl"));
        let node_b = Netns::new(&format!("{tag}-b"));
        let pa1 = Netns::new(&format!("{tag}-pa1"));
        let pa2 = Netns::new(&format!("{tag}-pa2"));
        let pb1 = Netns::new(&format!("{tag}-pb1"));
        let link = |from: &Netns, peer: &Netns, here: &str, there: &str, addrs: &[(&str, &str)]| {
            from.must(&["ip", "link", "add", here, "type", "veth", "peer", "name", there]);
            from.must(&["ip", "link", "set", there, "netns", &peer.name]);
            for (mine, theirs) in addrs {
                from.must(&["ip", "addr", "add", mine, "dev", here, "nodad"]);
                peer.must(&["ip", "addr", "add", theirs, "dev", there, "nodad"]);
            }
            from.must(&["ip", "link", "set", here, "up"]);
            peer.must(&["ip", "link", "set", there, "up"]);
        };
        link(
            &node,
            &client,
            "a-cl",
            "cl-a",
            &[
                ("192.168.50.10/24", "192.168.50.100/24"),
                ("fd00:50::10/64", "fd00:50::100/64"),
            ],
        );
        link(
            &node,
            &node_b,
            "a-b",
            "b-a",
            &[("192.168.60.10/24", "192.168.60.11/24")],
        );
        link(
            &node,
            &pa1,
            "a-pa1",
            "eth0",
            &[
                ("10.244.1.1/28", "10.244.1.10/28"),
                ("fd00:244:1::1/120", "fd00:244:1::10/120"),
            ],
        );
        link(&node, &pa2, "a-pa2", "eth0", &[("10.244.1.17/28", "10.244.1.20/28")]);
        link(&node_b, &pb1, "b-pb1", "eth0", &[("10.244.2.1/24", "10.244.2.10/24")]);
        for ns in [&node, &node_b] {
            ns.must(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            ns.must(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        }
        node.must(&["ip", "route", "add", "10.244.2.0/24", "via", "192.168.60.11"]);
        node_b.must(&["ip", "route", "add", "default", "via", "192.168.60.10"]);
        for (ns, gw) in [(&pa1, "10.244.1.1"), (&pa2, "10.244.1.17"), (&pb1, "10.244.2.1")] {
            ns.must(&["ip", "route", "add", "default", "via", gw]);
        }
        pa1.must(&["ip", "-6", "route", "add", "default", "via", "fd00:244:1::1"]);
        // The client reaches service, external and load-balancer addresses
        // through node-a (as a router on its LAN would send them).
        for net in ["10.96.0.0/16", "198.51.100.0/24", "203.0.113.0/24", "10.244.0.0/16"] {
            client.must(&["ip", "route", "add", net, "via", NODE_A]);
        }
        client.must(&["ip", "-6", "route", "add", "fd00:96::/108", "via", NODE_A_V6]);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let pods = vec![("pa1", pa1), ("pa2", pa2), ("pb1", pb1)];
        for (name, ns) in &pods {
            threads.extend(echo(ns, name, stop.clone()));
        }
        let t = Topology {
            node,
            client,
            node_b,
            pods,
            stop,
            threads,
        };
        // Servers up: each pod answers directly.
        for addr in ["10.244.1.10:8080", "10.244.1.20:8080", "10.244.2.10:8080"] {
            let t0 = Instant::now();
            while t.ask(&t.client, "tcp", addr).pod().is_none() {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "{addr} does not answer directly"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        t
    }

    /// A pod's namespace.
    pub fn pod(&self, name: &str) -> &Netns {
        &self.pods.iter().find(|(n, _)| *n == name).expect("pod").1
    }

    /// One probe from `from` (`"tcp"` or `"udp"`) to `to`.
    pub fn ask(&self, from: &Netns, proto: &str, to: &str) -> Outcome {
        let to: SocketAddr = to.parse().expect("socket address");
        let udp = proto == "udp";
        from.enter(|| if udp { udp_ask(to) } else { tcp_ask(to) })
    }

    /// `n` probes; the outcomes.
    pub fn ask_n(&self, from: &Netns, proto: &str, to: &str, n: usize) -> Vec<Outcome> {
        (0..n).map(|_| self.ask(from, proto, to)).collect()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

const PROBE: Duration = Duration::from_millis(800);

fn tcp_ask(to: SocketAddr) -> Outcome {
    let mut c = match TcpStream::connect_timeout(&to, PROBE) {
        Ok(c) => c,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Outcome::Refused,
        Err(_) => return Outcome::TimedOut,
    };
    let _ = c.set_read_timeout(Some(PROBE));
    if c.write_all(b"hi").is_err() {
        return Outcome::Refused;
    }
    let mut s = String::new();
    match c.read_to_string(&mut s) {
        Ok(_) => parse_answer(&s),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Outcome::Refused,
        Err(_) => Outcome::TimedOut,
    }
}

fn udp_ask(to: SocketAddr) -> Outcome {
    // A fresh socket per probe: a new source port, a new conntrack entry.
    let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let s = UdpSocket::bind(bind).expect("udp socket");
    s.set_read_timeout(Some(PROBE)).unwrap();
    if s.connect(to).is_err() || s.send(b"hi").is_err() {
        return Outcome::Refused;
    }
    let mut b = [0u8; 128];
    match s.recv(&mut b) {
        Ok(n) => parse_answer(&String::from_utf8_lossy(&b[..n])),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Outcome::Refused,
        Err(_) => Outcome::TimedOut,
    }
}

fn parse_answer(s: &str) -> Outcome {
    match s.split_once(' ') {
        Some((pod, ip)) => Outcome::Answered(pod.to_string(), ip.parse().expect("peer address")),
        None => Outcome::TimedOut,
    }
}

/// TCP and UDP echo on [`ECHO_PORT`] inside `ns` (both families): answers
/// `<name> <peer address>`.
fn echo(ns: &Netns, name: &'static str, stop: Arc<AtomicBool>) -> Vec<JoinHandle<()>> {
    let path = format!("/run/netns/{}", ns.name);
    let enter = move || {
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    };
    let mut threads = Vec::new();
    for bind in ["0.0.0.0", "::"] {
        let (e, s) = (enter.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            e();
            let l = bind_tcp(bind);
            l.set_nonblocking(true).unwrap();
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, peer)) => {
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                        let mut b = [0u8; 16];
                        let _ = c.read(&mut b);
                        let _ = c.write_all(format!("{name} {}", canonical(peer.ip())).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
        let (e, s) = (enter.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            e();
            let sock = bind_udp(bind);
            sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let mut b = [0u8; 64];
            while !s.load(Ordering::SeqCst) {
                if let Ok((_, from)) = sock.recv_from(&mut b) {
                    let _ = sock.send_to(format!("{name} {}", canonical(from.ip())).as_bytes(), from);
                }
            }
        }));
    }
    threads
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn bind_tcp(bind: &str) -> TcpListener {
    let addr: SocketAddr = format!("{}:{ECHO_PORT}", if bind == "::" { "[::]" } else { bind })
        .parse()
        .unwrap();
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None).unwrap();
    if addr.is_ipv6() {
        s.set_only_v6(true).unwrap();
    }
    s.set_reuse_address(true).unwrap();
    s.bind(&addr.into()).unwrap();
    s.listen(64).unwrap();
    s.into()
}

fn bind_udp(bind: &str) -> UdpSocket {
    let addr: SocketAddr = format!("{}:{ECHO_PORT}", if bind == "::" { "[::]" } else { bind })
        .parse()
        .unwrap();
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None).unwrap();
    if addr.is_ipv6() {
        s.set_only_v6(true).unwrap();
    }
    s.bind(&addr.into()).unwrap();
    s.into()
}

// === Model objects ===

/// A Service in namespace `ns`, converted as the watch layer does. `spec`
/// is merged over `{"type": "ClusterIP"}`; `status` optional.
pub fn service(name: &str, spec: Value, status: Option<Value>) -> Service {
    let mut obj = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "ns", "name": name, "resourceVersion": "1"},
        "spec": {"type": "ClusterIP"},
    });
    for (k, v) in spec.as_object().expect("spec object") {
        obj["spec"][k] = v.clone();
    }
    if let Some(status) = status {
        obj["status"] = status;
    }
    let obj = serde_json::from_value(obj).expect("well-formed Service");
    convert::service(&obj).expect("Service converts")
}

/// An EndpointSlice for `service` (port `http`, [`ECHO_PORT`], `proto`):
/// `(address, node)` pairs, all ready.
pub fn slice(service: &str, suffix: &str, family: &str, proto: &str, eps: &[(&str, &str)]) -> Slice {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|(ip, node)| {
            json!({"addresses": [ip], "nodeName": node,
                   "conditions": {"ready": true, "serving": true, "terminating": false}})
        })
        .collect();
    let obj = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "ns", "name": format!("{service}-{suffix}"), "resourceVersion": "1",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": family,
        "ports": [{"name": "http", "port": ECHO_PORT, "protocol": proto}],
        "endpoints": endpoints,
    }))
    .expect("well-formed EndpointSlice");
    convert::slice(&obj)
        .expect("EndpointSlice converts")
        .expect("EndpointSlice programs something")
}

// === The matrix of Services used by the packet, kernel and render tests ===

/// The settings of node-a in the topology.
pub fn node_a_settings() -> NftSettings {
    NftSettings {
        node: NodeSettings::new(
            &["10.244.0.0/16".parse().unwrap(), "fd00:244::/48".parse().unwrap()],
            false,
            &[
                NODE_A.parse().unwrap(),
                "192.168.60.10".parse().unwrap(),
                "fd00:50::10".parse().unwrap(),
            ],
        )
        .with_service_cidrs(&["10.96.0.0/16".parse().unwrap(), "fd00:96::/108".parse().unwrap()]),
        scheduler: Scheduler::Random,
    }
}

/// Every Service of the matrix, tracked on node-a.
pub fn matrix() -> Tracker {
    let mut t = Tracker::new(NodeContext::new("node-a"));
    let port = |p: u16, np: Option<u16>, proto: &str| {
        let mut v = json!({"name": "http", "port": p, "targetPort": 8080, "protocol": proto});
        if let Some(np) = np {
            v["nodePort"] = json!(np);
        }
        json!([v])
    };
    // Dual-stack NodePort with an external IP: pa1 and pb1 (v4), pa1 (v6).
    t.apply_service(service(
        "web",
        json!({"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::10"],
               "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
               "externalIPs": ["198.51.100.5"], "ports": port(80, Some(30080), "TCP")}),
        None,
    ));
    t.apply_slice(slice(
        "web",
        "v4",
        "IPv4",
        "TCP",
        &[("10.244.1.10", "node-a"), ("10.244.2.10", "node-b")],
    ));
    t.apply_slice(slice("web", "v6", "IPv6", "TCP", &[("fd00:244:1::10", "node-a")]));
    // UDP.
    t.apply_service(service(
        "dns",
        json!({"clusterIP": "10.96.0.53", "ports": port(53, None, "UDP")}),
        None,
    ));
    t.apply_slice(slice(
        "dns",
        "v4",
        "IPv4",
        "UDP",
        &[("10.244.1.10", "node-a"), ("10.244.2.10", "node-b")],
    ));
    // No endpoints at all.
    t.apply_service(service(
        "empty",
        json!({"clusterIP": "10.96.0.20", "ports": port(80, None, "TCP")}),
        None,
    ));
    // externalTrafficPolicy: Local, the only endpoint on node-b.
    t.apply_service(service(
        "local",
        json!({"type": "NodePort", "clusterIP": "10.96.0.21", "externalTrafficPolicy": "Local",
               "ports": port(80, Some(30081), "TCP")}),
        None,
    ));
    t.apply_slice(slice("local", "v4", "IPv4", "TCP", &[("10.244.2.10", "node-b")]));
    // Load balancers: one admits the client, one does not.
    for (name, cip, lb, np, range) in [
        ("lb-ok", "10.96.0.22", "203.0.113.10", 30082, "192.168.50.100/32"),
        ("lb-deny", "10.96.0.23", "203.0.113.11", 30083, "10.0.0.0/8"),
    ] {
        t.apply_service(service(
            name,
            json!({"type": "LoadBalancer", "clusterIP": cip, "loadBalancerSourceRanges": [range],
                   "ports": port(80, Some(np), "TCP")}),
            Some(json!({"loadBalancer": {"ingress": [{"ip": lb}]}})),
        ));
        t.apply_slice(slice(name, "v4", "IPv4", "TCP", &[("10.244.1.10", "node-a")]));
    }
    // ClientIP affinity over three endpoints.
    t.apply_service(service(
        "sticky",
        json!({"clusterIP": "10.96.0.30", "sessionAffinity": "ClientIP",
               "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
               "ports": port(80, None, "TCP")}),
        None,
    ));
    t.apply_slice(slice(
        "sticky",
        "v4",
        "IPv4",
        "TCP",
        &[
            ("10.244.1.10", "node-a"),
            ("10.244.1.20", "node-a"),
            ("10.244.2.10", "node-b"),
        ],
    ));
    // A pod reaching itself through a cluster IP (hairpin).
    t.apply_service(service(
        "self",
        json!({"clusterIP": "10.96.0.40", "ports": port(80, None, "TCP")}),
        None,
    ));
    t.apply_slice(slice("self", "v4", "IPv4", "TCP", &[("10.244.1.10", "node-a")]));
    t
}
