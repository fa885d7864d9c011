//! Packet-flow spot checks of the final kernel state: for a few sampled
//! services, one namespace holds all of the service's current endpoint
//! addresses with an echo server on the target port (it answers with the
//! address it was reached at and the peer it saw), and real TCP connections
//! are made through the ClusterIP and the NodePort from a pod-like client, an
//! external client and the node itself.
//!
//! Topology (all namespaces created here or by the driver, none connected to
//! the host):
//! ```text
//! client ns  eth0 192.168.77.100/24 (external) + 10.247.255.10/32 (pod) ── cl0 192.168.77.10/24  node ns
//! endpoint ns k  eth0 <the service's endpoint IPs>/32 ── ep<k> 169.254.1.1/32  node ns (a /32 route per IP)
//! ```

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::load::{Loaded, SERVICE_PORT, TARGET_PORT};
use crate::netns::{self, Netns};

/// The node's address on the client link (the Node's InternalIP).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 10);
/// An external client's address.
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 100);
/// A pod-like client's address (inside the cluster CIDR, outside every endpoint range).
pub const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 247, 255, 10);
const GW: &str = "169.254.1.1";

/// Wires the node and client namespaces (see the module docs) and enables
/// forwarding in the node.
pub fn wire_node(node: &Netns, client: &Netns) -> std::io::Result<()> {
    netns::veth(node, "cl0", client, "eth0")?;
    node.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "cl0"])?;
    client.ip(&["addr", "add", &format!("{EXTERNAL_IP}/24"), "dev", "eth0"])?;
    client.ip(&["addr", "add", &format!("{POD_IP}/32"), "dev", "eth0"])?;
    client.ip(&["route", "add", "default", "via", &NODE_IP.to_string()])?;
    node.ip(&["route", "add", &format!("{POD_IP}/32"), "dev", "cl0"])?;
    // Node-originated connections to a ClusterIP need a route before nat
    // OUTPUT rewrites them (no dummy device on this kernel).
    node.ip(&["route", "add", "10.96.0.0/16", "via", &EXTERNAL_IP.to_string()])?;
    node.sysctl("net.ipv4.ip_forward", "1")?;
    for k in ["all", "default"] {
        node.sysctl(&format!("net.ipv4.conf.{k}.rp_filter"), "0")?;
    }
    Ok(())
}

/// One spot check.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Check {
    /// `namespace/name`.
    pub service: String,
    /// `ClusterIP a:p` or `NodePort a:p`.
    pub frontend: String,
    /// `pod`, `external`, `node`.
    pub client: String,
    /// Connections tried.
    pub tries: usize,
    /// Answers received.
    pub answers: usize,
    /// Distinct endpoints that answered.
    pub distinct: usize,
    /// Endpoints in the Service's current slice.
    pub expected: usize,
    /// Answers from an address that is not a current endpoint.
    pub unexpected: Vec<String>,
    /// Whether the endpoint should see the node's address instead of the client's.
    pub masq_expected: bool,
    /// Answers whose peer matched that expectation.
    pub masq_ok: usize,
    /// All answered, all from current endpoints, masquerading as expected,
    /// and at least min(4, endpoints) distinct endpoints reached.
    pub pass: bool,
}

struct Echo {
    stop: Arc<AtomicBool>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn start_echo(ns: &Netns) -> std::io::Result<Echo> {
    let listener = ns.run(|| TcpListener::bind(("0.0.0.0", TARGET_PORT)))??;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    std::thread::spawn(move || {
        while !s2.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut c, peer)) => {
                    let local = c.local_addr().map(|a| a.ip().to_string()).unwrap_or_default();
                    let _ = c.set_nonblocking(false);
                    let _ = writeln!(c, "{local} {}", peer.ip());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    Ok(Echo { stop })
}

/// Connects from `src` (or the namespace's choice) to `target`; returns the
/// endpoint's `(local, peer)` answer.
fn ask(source: Option<Ipv4Addr>, target: SocketAddr) -> std::io::Result<(String, String)> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    if let Some(s) = source {
        sock.bind(&SocketAddr::new(IpAddr::V4(s), 0).into())?;
    }
    sock.connect_timeout(&target.into(), Duration::from_secs(2))?;
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let mut it = buf.split_whitespace();
    match (it.next(), it.next()) {
        (Some(l), Some(p)) => Ok((l.to_string(), p.to_string())),
        _ => Err(std::io::Error::other(format!("bad answer {buf:?}"))),
    }
}

/// Runs the spot checks for services `sample` of `loaded` (current
/// endpoints), creating one endpoint namespace per sampled service
/// (`<prefix>-ep<k>`), deleted when this returns.
pub fn spot_checks(
    node: &Netns,
    client: &Netns,
    loaded: &Loaded,
    sample: &[usize],
    prefix: &str,
    tries: usize,
) -> std::io::Result<Vec<Check>> {
    let mut guards = Vec::new();
    let mut out = Vec::new();
    for (k, &svc) in sample.iter().enumerate() {
        let ep = Netns::create(&format!("{prefix}-ep{k}"))?;
        let node_if = format!("ep{k}");
        netns::veth(node, &node_if, &ep, "eth0")?;
        node.ip(&["addr", "add", &format!("{GW}/32"), "dev", &node_if])?;
        ep.ip(&["route", "add", GW, "dev", "eth0"])?;
        for a in &loaded.endpoints[svc] {
            ep.ip(&["addr", "add", &format!("{a}/32"), "dev", "eth0"])?;
            node.ip(&["route", "add", &format!("{a}/32"), "dev", &node_if])?;
        }
        ep.ip(&[
            "route",
            "add",
            "default",
            "via",
            GW,
            "src",
            &loaded.endpoints[svc][0].to_string(),
        ])?;
        let echo = start_echo(&ep)?;
        guards.push((echo, ep));
    }
    for &svc in sample {
        let spec = &loaded.spec;
        let name = format!("{}/{}", spec.namespace, spec.name(svc));
        let expected: BTreeSet<String> = loaded.endpoints[svc].iter().map(|a| a.to_string()).collect();
        let mut frontends = vec![(
            format!("ClusterIP {}:{SERVICE_PORT}", spec.cluster_ip(svc)),
            SocketAddr::new(IpAddr::V4(spec.cluster_ip(svc)), SERVICE_PORT),
            false,
        )];
        if let Some(np) = spec.node_port(svc) {
            frontends.push((
                format!("NodePort {NODE_IP}:{np}"),
                SocketAddr::new(IpAddr::V4(NODE_IP), np),
                true,
            ));
        }
        for (frontend, target, is_nodeport) in frontends {
            for (class, ns, src) in [
                ("pod", client, Some(POD_IP)),
                ("external", client, Some(EXTERNAL_IP)),
                ("node", node, None),
            ] {
                // Pods reaching a ClusterIP keep their address; everything
                // else to a ClusterIP, and everything to a NodePort (policy
                // Cluster), is masqueraded.
                let masq_expected = is_nodeport || class != "pod";
                let client_ip = src.unwrap_or(NODE_IP).to_string();
                let answers: Vec<std::io::Result<(String, String)>> =
                    ns.run(move || (0..tries).map(|_| ask(src, target)).collect())?;
                let ok: Vec<&(String, String)> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
                let distinct: BTreeSet<&str> = ok.iter().map(|(l, _)| l.as_str()).collect();
                let unexpected: Vec<String> = distinct
                    .iter()
                    .filter(|l| !expected.contains(**l))
                    .map(|l| l.to_string())
                    .collect();
                let masq_ok = ok.iter().filter(|(_, p)| (*p != client_ip) == masq_expected).count();
                let need = expected.len().min(4);
                out.push(Check {
                    service: name.clone(),
                    frontend: frontend.clone(),
                    client: class.to_string(),
                    tries,
                    answers: ok.len(),
                    distinct: distinct.len(),
                    expected: expected.len(),
                    masq_expected,
                    masq_ok,
                    pass: ok.len() == tries && unexpected.is_empty() && masq_ok == tries && distinct.len() >= need,
                    unexpected,
                });
            }
        }
    }
    // Give echo threads a moment to see their stop flag before the
    // namespaces go.
    let t = Instant::now();
    drop(guards);
    while t.elapsed() < Duration::from_millis(20) {
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(out)
}
