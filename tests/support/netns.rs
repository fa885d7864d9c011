//! A small cluster made of network namespaces, shared by every dataplane
//! mode's tests.
//!
//! ```text
//!                        lan (bridge br0)
//!        ┌──────────────────┼──────────────────┐
//!   node-a .10 / ::10   node-b .11 / ::11   client .100 / ::100   192.168.50.0/24, fd00:50::/64
//!     │ routed veths       │ routed veths
//!   pods 10.244.1.0/24    pods 10.244.2.0/24
//!        fd00:244:1::/64       fd00:244:2::/64
//! ```
//!
//! Everything stays inside namespaces this module created: no veth reaches
//! the root namespace and no namespace gets a route to the host's network.
//! Namespace names are `slpx-<pid>-<n>-<role>` (pid + counter: `/run/netns`
//! survives restarts); [`Cluster`]'s `Drop` kills the processes inside each
//! one by PID and deletes it by name, also when the test panics. Namespaces
//! left behind by a test binary that was killed outright are reaped by the
//! next build (only those whose creating pid is gone).
//!
//! All of it is blocking std code (threads), so it works from `#[test]` and
//! from `#[tokio::test]` alike. Needs root; without it the builder panics
//! with a clear message (tests fail, never skip).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Protocol, Socket, Type};

/// Service (ClusterIP) range, IPv4.
pub const SERVICE_CIDR_V4: &str = "10.96.0.0/16";
/// Service (ClusterIP) range, IPv6.
pub const SERVICE_CIDR_V6: &str = "fd00:96::/108";
/// External IP range, IPv4.
pub const EXTERNAL_CIDR_V4: &str = "198.51.100.0/24";
/// External IP range, IPv6.
pub const EXTERNAL_CIDR_V6: &str = "2001:db8:51::/64";
/// Load-balancer IP range, IPv4.
pub const LB_CIDR_V4: &str = "203.0.113.0/24";
/// Load-balancer IP range, IPv6.
pub const LB_CIDR_V6: &str = "2001:db8:113::/64";
/// The ports every echo server listens on, TCP and UDP, both families.
pub const ECHO_PORTS: [u16; 3] = [8080, 9090, 5353];

/// Prefix of every namespace this module creates.
const PREFIX: &str = "slpx-";
/// On-link IPv4 gateway of every pod (owned by the node side of each pod veth).
const POD_GW_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// On-link IPv6 gateway of every pod (link-local on each node-side pod veth).
const POD_GW_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// How often echo threads look at their stop flag.
const TICK: Duration = Duration::from_millis(100);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A node of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// `node-a`, where the agent under test runs.
    A,
    /// `node-b`.
    B,
}

impl Node {
    /// The logical namespace name: `"node-a"` or `"node-b"`.
    pub fn name(self) -> &'static str {
        match self {
            Node::A => "node-a",
            Node::B => "node-b",
        }
    }

    fn octet(self) -> u8 {
        match self {
            Node::A => 1,
            Node::B => 2,
        }
    }

    fn lan_v4(self) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 50, 9 + self.octet())
    }

    fn lan_v6(self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x10 + self.octet() as u16 - 1)
    }

    fn other(self) -> Node {
        match self {
            Node::A => Node::B,
            Node::B => Node::A,
        }
    }
}

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// A transport protocol for probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP: connect, send a line, read the answer line.
    Tcp,
    /// UDP on a connected socket: send a datagram, read the answer datagram.
    Udp,
}

/// What a probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An echo server answered.
    Answered {
        /// The pod name of the echo server that answered.
        backend: String,
        /// The source address the echo server saw (after any SNAT).
        seen_client: IpAddr,
    },
    /// TCP RST (connection refused or reset), or for UDP an ICMP port
    /// unreachable reported as `ECONNREFUSED` on the connected socket.
    Refused,
    /// No answer within the timeout.
    TimedOut,
    /// Anything else: `EHOSTUNREACH`, `ENETUNREACH`, `EINVAL` (a blackhole
    /// route in the sending namespace), an answer that is not
    /// `"<pod> <addr>"`, an early EOF. Carries the error text.
    Error(String),
}

impl Outcome {
    /// The backend's name if it answered.
    pub fn backend(&self) -> Option<&str> {
        match self {
            Outcome::Answered { backend, .. } => Some(backend),
            _ => None,
        }
    }
}

struct Pod {
    name: String,
    node: Node,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    /// The node-side veth name, in the node's namespace.
    host_if: String,
}

/// Builds a [`Cluster`]; see [`Cluster::builder`].
#[derive(Default)]
pub struct ClusterBuilder {
    pods: Vec<(String, Node)>,
    prefix: Option<&'static str>,
}

impl ClusterBuilder {
    /// Name the namespaces `<prefix><pid>-<n>-<name>` instead of the
    /// default prefix (a test of one branch keeps its own, so parallel
    /// helpers never collide; stale ones are not reaped for it).
    pub fn prefix(mut self, prefix: &'static str) -> Self {
        self.prefix = Some(prefix);
        self
    }

    /// Add a pod namespace called `name` on `node`. Pods get addresses in
    /// their node's pod CIDR in the order they are added: `.2`, `.3`, ...
    pub fn pod(mut self, name: &str, node: Node) -> Self {
        assert!(
            !["lan", "node-a", "node-b", "client"].contains(&name),
            "pod name {name:?} is reserved"
        );
        assert!(!self.pods.iter().any(|(n, _)| n == name), "pod {name:?} added twice");
        assert!(
            !name.is_empty() && !name.contains(['/', ' ']),
            "pod name {name:?} must be non-empty, no '/' or space"
        );
        self.pods.push((name.to_string(), node));
        self
    }

    /// Create the namespaces, links, addresses and routes. Panics (after
    /// tearing down whatever it had built) when a step fails or when not
    /// running as root.
    pub fn build(self) -> Cluster {
        require_root();
        reap_stale();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let mut c = Cluster {
            prefix: format!("{}{}-{n}-", self.prefix.unwrap_or(PREFIX), std::process::id()),
            names: Vec::new(),
            pods: Vec::new(),
            echo: Mutex::new(HashMap::new()),
        };
        // From here on a panic drops `c`, which deletes what exists so far.
        c.build_all(self.pods);
        c
    }
}

/// The running cluster. Dropping it stops the echo servers, kills every
/// process left in its namespaces (by PID) and deletes them (by name).
pub struct Cluster {
    prefix: String,
    /// (logical name, real name) of every namespace created, in order.
    names: Vec<(String, String)>,
    pods: Vec<Pod>,
    echo: Mutex<HashMap<String, EchoServer>>,
}

impl Cluster {
    /// Start describing a cluster.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// The real namespace name for a logical name (`"lan"`, `"node-a"`,
    /// `"node-b"`, `"client"` or a pod name). A real name is returned as is.
    /// Panics on an unknown name.
    pub fn ns(&self, name: &str) -> &str {
        self.names
            .iter()
            .find(|(l, r)| l == name || r == name)
            .map(|(_, r)| r.as_str())
            .unwrap_or_else(|| panic!("no namespace {name:?} in this cluster"))
    }

    /// `/run/netns/<real name>` of a namespace (logical or real name).
    pub fn netns_path(&self, ns: &str) -> PathBuf {
        Path::new("/run/netns").join(self.ns(ns))
    }

    /// Every (logical, real) namespace name, in creation order.
    pub fn namespaces(&self) -> impl Iterator<Item = (&str, &str)> {
        self.names.iter().map(|(l, r)| (l.as_str(), r.as_str()))
    }

    /// The address of `name`: a node's or the client's LAN address, or a
    /// pod's address.
    pub fn ip(&self, name: &str, family: Family) -> IpAddr {
        let (v4, v6) = match name {
            "node-a" => (Node::A.lan_v4(), Node::A.lan_v6()),
            "node-b" => (Node::B.lan_v4(), Node::B.lan_v6()),
            "client" => (client_v4(), client_v6()),
            _ => {
                let p = self.pod(name);
                (p.v4, p.v6)
            }
        };
        match family {
            Family::V4 => v4.into(),
            Family::V6 => v6.into(),
        }
    }

    /// The node a pod runs on.
    pub fn node_of(&self, pod: &str) -> Node {
        self.pod(pod).node
    }

    /// Pod names in the order they were added.
    pub fn pods(&self) -> impl Iterator<Item = &str> {
        self.pods.iter().map(|p| p.name.as_str())
    }

    /// Run `cmd` inside `ns` (`ip netns exec`); never panics on a non-zero
    /// exit.
    pub fn exec(&self, ns: &str, cmd: &[&str]) -> Output {
        assert!(!cmd.is_empty(), "exec: empty command");
        Command::new("ip")
            .args(["netns", "exec", self.ns(ns)])
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {cmd:?}: {e}"))
    }

    /// Like [`Cluster::exec`], but panics unless the command succeeds;
    /// returns its stdout.
    pub fn run(&self, ns: &str, cmd: &[&str]) -> String {
        let out = self.exec(ns, cmd);
        assert!(
            out.status.success(),
            "{cmd:?} in {ns} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Add `ip` to a namespace: on the LAN interface of `client`, `node-a`
    /// or `node-b`, on `eth0` of a pod. For the client the nodes also get a
    /// host route to it via the client's LAN address, so replies to
    /// addresses such as 198.51.100.7 (source-range tests) find their way
    /// back; for a pod its node gets a host route to it.
    pub fn add_address(&self, ns: &str, ip: IpAddr) {
        let logical = self.logical(ns).to_string();
        let plen = if ip.is_ipv4() { 32 } else { 128 };
        let cidr = format!("{ip}/{plen}");
        let dev = if self.pods.iter().any(|p| p.name == logical) {
            "eth0"
        } else {
            "lan0"
        };
        self.ip_cmd(ns, &["addr", "add", &cidr, "dev", dev, "nodad"]);
        if logical == "client" {
            let via = match ip {
                IpAddr::V4(_) => client_v4().to_string(),
                IpAddr::V6(_) => client_v6().to_string(),
            };
            for node in [Node::A, Node::B] {
                self.ip_cmd(node.name(), &["route", "replace", &cidr, "via", &via, "dev", "lan0"]);
            }
        } else if let Some(p) = self.pods.iter().find(|p| p.name == logical) {
            self.ip_cmd(p.node.name(), &["route", "replace", &cidr, "dev", &p.host_if]);
        }
    }

    /// Start the echo server of `pod` (idempotent; any namespace of the
    /// cluster works, e.g. `"node-a"` to stand in for a host-network
    /// process, and its logical name is the backend name): TCP and UDP on
    /// [`ECHO_PORTS`], IPv4 and IPv6 (one dual-stack socket each). Every TCP
    /// line and every UDP datagram is answered with
    /// `"<pod> <client-ip>:<client-port>"` (IPv6 as `[ip]:port`; v4-mapped
    /// addresses are shown as IPv4), TCP answers end with `\n`. Runs as
    /// threads of this process that `setns` into the pod first; returns once
    /// every socket is bound. Stops on teardown.
    pub fn start_echo(&self, pod: &str) {
        let name = self.logical(pod).to_string();
        let mut echo = self.echo.lock().unwrap_or_else(|p| p.into_inner());
        if echo.contains_key(&name) {
            return;
        }
        let server =
            EchoServer::start(&self.netns_path(pod), &name).unwrap_or_else(|e| panic!("echo server in {pod}: {e}"));
        echo.insert(name, server);
    }

    /// Probe `target` from namespace `from_ns` with the default source
    /// address. See [`Cluster::probe_from`].
    pub fn probe(&self, from_ns: &str, proto: Proto, target: SocketAddr, timeout: Duration) -> Outcome {
        self.probe_from(from_ns, None, proto, target, timeout)
    }

    /// Probe `target` from namespace `from_ns`, bound to `source_ip` if
    /// given (it must be an address of that namespace, see
    /// [`Cluster::add_address`]). TCP: connect, send one line, read one
    /// line. UDP: connected socket, a datagram every `timeout / 3` until an
    /// answer, an error or the timeout.
    pub fn probe_from(
        &self,
        from_ns: &str,
        source_ip: Option<IpAddr>,
        proto: Proto,
        target: SocketAddr,
        timeout: Duration,
    ) -> Outcome {
        let path = self.netns_path(from_ns);
        in_netns(&path, || match proto {
            Proto::Tcp => probe_tcp(source_ip, target, timeout),
            Proto::Udp => probe_udp(source_ip, target, timeout),
        })
        .unwrap_or_else(|e| panic!("enter {from_ns}: {e}"))
    }

    /// Open a long-lived TCP connection from `from_ns` to `target` (an echo
    /// server, directly or through a service). Panics if it can't connect
    /// within 5 s.
    pub fn connect(&self, from_ns: &str, target: SocketAddr) -> Conn {
        self.try_connect(from_ns, target, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect from {from_ns} to {target}: {e}"))
    }

    /// Like [`Cluster::connect`] with a timeout, returning the error.
    pub fn try_connect(&self, from_ns: &str, target: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        let path = self.netns_path(from_ns);
        // The socket keeps the namespace it was created in, so the stream
        // can be used from any thread afterwards.
        let stream = in_netns(&path, || TcpStream::connect_timeout(&target, timeout))??;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// A UDP socket created in `from_ns` and connected to `target`: every
    /// datagram it sends shares one source port, so conntrack sees one flow
    /// (what a long-lived UDP client such as a DNS resolver looks like).
    pub fn udp_flow(&self, from_ns: &str, target: SocketAddr) -> UdpFlow {
        let path = self.netns_path(from_ns);
        let socket = in_netns(&path, || -> io::Result<UdpSocket> {
            let bind: SocketAddr = if target.is_ipv4() {
                "0.0.0.0:0".parse().unwrap()
            } else {
                "[::]:0".parse().unwrap()
            };
            let s = UdpSocket::bind(bind)?;
            s.connect(target)?;
            Ok(s)
        })
        .and_then(|r| r)
        .unwrap_or_else(|e| panic!("udp socket in {from_ns}: {e}"));
        UdpFlow { socket }
    }

    fn pod(&self, name: &str) -> &Pod {
        let logical = self.logical(name);
        self.pods
            .iter()
            .find(|p| p.name == logical)
            .unwrap_or_else(|| panic!("no pod {name:?} in this cluster"))
    }

    fn logical<'a>(&'a self, name: &'a str) -> &'a str {
        self.names
            .iter()
            .find(|(l, r)| l == name || r == name)
            .map(|(l, _)| l.as_str())
            .unwrap_or(name)
    }

    /// `ip -n <ns> args...`; panics with stderr on failure.
    fn ip_cmd(&self, ns: &str, args: &[&str]) {
        let real = self.ns(ns).to_string();
        // `ip route` infers the family from the prefix or gateway; only a
        // `default` route needs an explicit `-6`.
        let out = Command::new("ip")
            .args(["-n", &real])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run ip (package iproute2): {e}"));
        assert!(
            out.status.success(),
            "ip -n {ns} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    fn add_ns(&mut self, logical: &str) {
        let real = format!("{}{logical}", self.prefix);
        let out = Command::new("ip")
            .args(["netns", "add", &real])
            .output()
            .unwrap_or_else(|e| panic!("run ip (package iproute2): {e}"));
        assert!(
            out.status.success(),
            "ip netns add {real}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        self.names.push((logical.to_string(), real));
    }

    fn build_all(&mut self, pods: Vec<(String, Node)>) {
        let mut roles = vec!["lan".to_string(), "node-a".into(), "node-b".into(), "client".into()];
        roles.extend(pods.iter().map(|(n, _)| n.clone()));
        for role in &roles {
            self.add_ns(role);
        }
        // Sysctls first: a device copies the namespace's `default` settings
        // when it is created, so accept_dad=0 etc. must be in place before
        // the veths appear.
        for role in &roles {
            let node = matches!(role.as_str(), "node-a" | "node-b");
            let mut settings: Vec<(&str, &str)> = vec![
                // Without DAD a new IPv6 address is usable at once instead
                // of staying "tentative" for ~1-2 s.
                ("net/ipv6/conf/all/accept_dad", "0"),
                ("net/ipv6/conf/default/accept_dad", "0"),
                // The kernel rate-limits ICMP errors per destination (token
                // bucket, ~1/s after a burst of 6): a test that probes a
                // closed UDP port a few times in a row would see TimedOut
                // instead of Refused. Also applies to nf_reject's ICMP.
                ("net/ipv4/icmp_ratelimit", "0"),
                ("net/ipv6/icmp/ratelimit", "0"),
                ("net/ipv4/conf/all/rp_filter", "0"),
                ("net/ipv4/conf/default/rp_filter", "0"),
            ];
            if node {
                settings.extend([
                    ("net/ipv4/ip_forward", "1"),
                    // all.forwarding=1 also sets default and every device.
                    ("net/ipv6/conf/all/forwarding", "1"),
                ]);
            }
            if role == "lan" {
                // br_netfilter is built in and its sysctls are per
                // namespace: keep bridged LAN frames out of the lan
                // namespace's (empty) iptables/conntrack.
                settings.extend([
                    ("net/bridge/bridge-nf-call-iptables", "0?"),
                    ("net/bridge/bridge-nf-call-ip6tables", "0?"),
                    ("net/bridge/bridge-nf-call-arptables", "0?"),
                ]);
            }
            let path = self.netns_path(role);
            in_netns(&path, || write_sysctls(&settings))
                .and_then(|r| r)
                .unwrap_or_else(|e| panic!("sysctls in {role}: {e}"));
            self.ip_cmd(role, &["link", "set", "lo", "up"]);
        }

        // The LAN: a bridge in `lan`, one veth per member.
        // mcast_snooping 0: with snooping on and no MLD querier, IPv6
        // neighbor solicitations to solicited-node groups can be dropped.
        self.ip_cmd("lan", &["link", "add", "br0", "type", "bridge", "mcast_snooping", "0"]);
        self.ip_cmd("lan", &["link", "set", "br0", "up"]);
        let members = [
            ("node-a", "na", Node::A.lan_v4(), Node::A.lan_v6()),
            ("node-b", "nb", Node::B.lan_v4(), Node::B.lan_v6()),
            ("client", "cl", client_v4(), client_v6()),
        ];
        for (role, port, v4, v6) in members {
            let real = self.ns(role).to_string();
            // The peer is created directly inside the member's namespace
            // (`netns`), so nothing ever exists in the root namespace.
            self.ip_cmd(
                "lan",
                &[
                    "link", "add", port, "type", "veth", "peer", "name", "lan0", "netns", &real,
                ],
            );
            self.ip_cmd("lan", &["link", "set", port, "master", "br0", "up"]);
            self.ip_cmd(role, &["addr", "add", &format!("{v4}/24"), "dev", "lan0"]);
            self.ip_cmd(role, &["addr", "add", &format!("{v6}/64"), "dev", "lan0", "nodad"]);
            self.ip_cmd(role, &["link", "set", "lan0", "up"]);
        }

        // Nodes: the other node's pod CIDR via its LAN address; service,
        // external and LB ranges on-link into the LAN so that a local
        // connect() finds a route (nat OUTPUT DNAT happens after the route
        // lookup; without a route connect() fails with ENETUNREACH first).
        // Unanswered, such traffic just dies in the LAN (nobody answers ARP
        // or ND for those addresses).
        for node in [Node::A, Node::B] {
            let o = node.other();
            let (o4, o6) = (o.lan_v4().to_string(), o.lan_v6().to_string());
            let n = node.name();
            self.ip_cmd(
                n,
                &[
                    "route",
                    "add",
                    &format!("10.244.{}.0/24", o.octet()),
                    "via",
                    &o4,
                    "dev",
                    "lan0",
                ],
            );
            self.ip_cmd(
                n,
                &[
                    "route",
                    "add",
                    &format!("fd00:244:{}::/64", o.octet()),
                    "via",
                    &o6,
                    "dev",
                    "lan0",
                ],
            );
            for cidr in [
                SERVICE_CIDR_V4,
                SERVICE_CIDR_V6,
                EXTERNAL_CIDR_V4,
                EXTERNAL_CIDR_V6,
                LB_CIDR_V4,
                LB_CIDR_V6,
            ] {
                self.ip_cmd(n, &["route", "add", cidr, "dev", "lan0"]);
            }
        }

        // The external client: service, external and LB ranges via node-a.
        let (a4, a6) = (Node::A.lan_v4().to_string(), Node::A.lan_v6().to_string());
        for cidr in [SERVICE_CIDR_V4, EXTERNAL_CIDR_V4, LB_CIDR_V4] {
            self.ip_cmd("client", &["route", "add", cidr, "via", &a4, "dev", "lan0"]);
        }
        for cidr in [SERVICE_CIDR_V6, EXTERNAL_CIDR_V6, LB_CIDR_V6] {
            self.ip_cmd("client", &["route", "add", cidr, "via", &a6, "dev", "lan0"]);
        }

        // Pods: routed veths, Calico style.
        let mut per_node: HashMap<Node, u16> = HashMap::new();
        for (i, (name, node)) in pods.into_iter().enumerate() {
            let k = per_node.entry(node).or_insert(2);
            let host = *k;
            *k += 1;
            assert!(host < 255, "too many pods on {}", node.name());
            let v4 = Ipv4Addr::new(10, 244, node.octet(), host as u8);
            let v6 = Ipv6Addr::new(0xfd00, 0x244, node.octet() as u16, 0, 0, 0, 0, host);
            let host_if = format!("cali{i}");
            let pod_real = self.ns(&name).to_string();
            let n = node.name();
            self.ip_cmd(
                n,
                &[
                    "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &pod_real,
                ],
            );
            // The node side owns the pods' on-link gateways, so it answers
            // their ARP / ND itself. proxy_arp alone would not do: the node
            // has no route to 169.254.1.1 (no default route, by design) and
            // proxy ARP only answers for routable targets. The same /32 on
            // several veths is fine; `fe80::1` is per link anyway.
            self.ip_cmd(
                n,
                &[
                    "addr",
                    "add",
                    &format!("{POD_GW_V4}/32"),
                    "dev",
                    &host_if,
                    "scope",
                    "link",
                ],
            );
            self.ip_cmd(
                n,
                &["addr", "add", &format!("{POD_GW_V6}/64"), "dev", &host_if, "nodad"],
            );
            self.ip_cmd(n, &["link", "set", &host_if, "up"]);
            // `src`: otherwise node-to-pod traffic would leave from
            // 169.254.1.1, the only address on that link.
            let (src4, src6) = (node.lan_v4().to_string(), node.lan_v6().to_string());
            self.ip_cmd(n, &["route", "add", &format!("{v4}/32"), "dev", &host_if, "src", &src4]);
            self.ip_cmd(
                n,
                &["route", "add", &format!("{v6}/128"), "dev", &host_if, "src", &src6],
            );
            // rp_filter is max(all, dev): keep the device at 0 too.
            let path = self.netns_path(n);
            let key = format!("net/ipv4/conf/{host_if}/rp_filter");
            in_netns(&path, || write_sysctls(&[(key.as_str(), "0")]))
                .and_then(|r| r)
                .unwrap_or_else(|e| panic!("sysctl in {n}: {e}"));

            self.ip_cmd(&name, &["addr", "add", &format!("{v4}/32"), "dev", "eth0"]);
            self.ip_cmd(&name, &["addr", "add", &format!("{v6}/128"), "dev", "eth0", "nodad"]);
            self.ip_cmd(&name, &["link", "set", "eth0", "up"]);
            self.ip_cmd(
                &name,
                &[
                    "route",
                    "add",
                    &format!("{POD_GW_V4}/32"),
                    "dev",
                    "eth0",
                    "scope",
                    "link",
                ],
            );
            self.ip_cmd(
                &name,
                &["route", "add", "default", "via", &POD_GW_V4.to_string(), "dev", "eth0"],
            );
            self.ip_cmd(
                &name,
                &[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &POD_GW_V6.to_string(),
                    "dev",
                    "eth0",
                ],
            );
            self.pods.push(Pod {
                name,
                node,
                v4,
                v6,
                host_if,
            });
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Echo threads hold sockets in the pods: stop them first.
        let echo = std::mem::take(self.echo.get_mut().unwrap_or_else(|p| p.into_inner()));
        for (_, server) in echo {
            server.stop();
        }
        for (_, real) in self.names.iter().rev() {
            delete_netns(real);
        }
    }
}

/// A connected UDP socket in a test namespace; see [`Cluster::udp_flow`].
pub struct UdpFlow {
    socket: UdpSocket,
}

impl UdpFlow {
    /// Send one datagram and wait up to `timeout` for the answer (the
    /// echo server's `"<name> <client>"`).
    pub fn ask(&self, timeout: Duration) -> io::Result<String> {
        self.socket.set_read_timeout(Some(timeout))?;
        self.socket.send(b"ping\n")?;
        let mut buf = [0u8; 512];
        let n = self.socket.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    }

    /// The local (source) address of the flow.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// A long-lived TCP connection opened by [`Cluster::connect`].
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Send a line and read the answer line on the same connection (5 s
    /// timeout): `"<backend> <client-ip>:<port>"`.
    pub fn ping(&mut self) -> io::Result<String> {
        self.ping_timeout(Duration::from_secs(5))
    }

    /// [`Conn::ping`] with a timeout.
    pub fn ping_timeout(&mut self, timeout: Duration) -> io::Result<String> {
        self.stream.write_all(b"ping\n")?;
        read_line(&mut self.stream, &mut self.buf, Instant::now() + timeout)
    }

    /// The local (client-side) address of the connection.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    /// The underlying stream.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

// ---------------------------------------------------------------------------
// Echo servers

struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl EchoServer {
    fn start(ns_path: &Path, pod: &str) -> io::Result<EchoServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let (path, pod, stop2) = (ns_path.to_path_buf(), pod.to_string(), stop.clone());
        let thread = thread::Builder::new().name(format!("echo-{pod}")).spawn(move || {
            let sockets = enter(&path).and_then(|()| bind_echo());
            match sockets {
                Ok((tcp, udp)) => {
                    let _ = tx.send(Ok(()));
                    serve_echo(&pod, tcp, udp, &stop2);
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })?;
        match rx.recv() {
            Ok(Ok(())) => Ok(EchoServer { stop, thread }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(io::Error::other("echo thread died")),
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
    }
}

/// One dual-stack (`IPV6_V6ONLY` off) socket per port and protocol: IPv4
/// clients show up as `::ffff:a.b.c.d` and are printed as IPv4.
fn bind_echo() -> io::Result<(Vec<TcpListener>, Vec<UdpSocket>)> {
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for port in ECHO_PORTS {
        let addr: SocketAddr = (Ipv6Addr::UNSPECIFIED, port).into();
        let s = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
        s.set_only_v6(false)?;
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.listen(128)?;
        s.set_nonblocking(true)?;
        tcp.push(s.into());
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_only_v6(false)?;
        s.bind(&addr.into())?;
        s.set_nonblocking(true)?;
        udp.push(s.into());
    }
    Ok((tcp, udp))
}

fn serve_echo(pod: &str, tcp: Vec<TcpListener>, udp: Vec<UdpSocket>, stop: &Arc<AtomicBool>) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        let mut fds: Vec<PollFd> = tcp
            .iter()
            .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN))
            .chain(udp.iter().map(|u| PollFd::new(u.as_fd(), PollFlags::POLLIN)))
            .collect();
        if poll(&mut fds, PollTimeout::from(TICK.as_millis() as u16)).unwrap_or(0) <= 0 {
            continue;
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        for (i, l) in tcp.iter().enumerate() {
            if !ready[i] {
                continue;
            }
            while let Ok((s, peer)) = l.accept() {
                let (pod, stop) = (pod.to_string(), stop.clone());
                conns.retain(|h| !h.is_finished());
                if let Ok(h) = thread::Builder::new()
                    .name(format!("echo-{pod}-conn"))
                    .spawn(move || serve_conn(&pod, s, peer, &stop))
                {
                    conns.push(h);
                }
            }
        }
        for (i, u) in udp.iter().enumerate() {
            if !ready[tcp.len() + i] {
                continue;
            }
            while let Ok((n, peer)) = u.recv_from(&mut buf) {
                let _ = n;
                let _ = u.send_to(answer(pod, peer).as_bytes(), peer);
            }
        }
    }
    for h in conns {
        let _ = h.join();
    }
}

fn serve_conn(pod: &str, mut s: TcpStream, peer: SocketAddr, stop: &AtomicBool) {
    // The listener is non-blocking and accepted sockets inherit nothing on
    // Linux, but be explicit: blocking reads with a short timeout so the
    // thread notices teardown.
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(TICK));
    let _ = s.set_nodelay(true);
    let mut pending = Vec::new();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                    pending.drain(..=pos);
                    let line = format!("{}\n", answer(pod, peer));
                    if s.write_all(line.as_bytes()).is_err() {
                        return;
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

fn answer(pod: &str, peer: SocketAddr) -> String {
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    format!("{pod} {peer}")
}

// ---------------------------------------------------------------------------
// Probes

fn new_socket(target: SocketAddr, ty: Type, proto: Protocol, source: Option<IpAddr>) -> io::Result<Socket> {
    let domain = if target.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let s = Socket::new(domain, ty, Some(proto))?;
    if let Some(ip) = source {
        s.bind(&SocketAddr::new(ip, 0).into())?;
    }
    Ok(s)
}

fn classify(e: io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset => Outcome::Refused,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::TimedOut,
        _ => Outcome::Error(e.to_string()),
    }
}

fn parse_answer(text: &str) -> Outcome {
    let text = text.trim();
    match text.rsplit_once(' ').map(|(b, a)| (b, a.parse::<SocketAddr>())) {
        Some((backend, Ok(addr))) => Outcome::Answered {
            backend: backend.to_string(),
            seen_client: addr.ip(),
        },
        _ => Outcome::Error(format!("unexpected answer {text:?}")),
    }
}

fn probe_tcp(source: Option<IpAddr>, target: SocketAddr, timeout: Duration) -> Outcome {
    let deadline = Instant::now() + timeout;
    let s = match new_socket(target, Type::STREAM, Protocol::TCP, source) {
        Ok(s) => s,
        Err(e) => return Outcome::Error(format!("socket/bind: {e}")),
    };
    if let Err(e) = s.connect_timeout(&target.into(), timeout) {
        return classify(e);
    }
    let mut stream: TcpStream = s.into();
    if let Err(e) = stream.write_all(b"probe\n") {
        return classify(e);
    }
    match read_line(&mut stream, &mut Vec::new(), deadline) {
        Ok(line) => parse_answer(&line),
        Err(e) => classify(e),
    }
}

fn probe_udp(source: Option<IpAddr>, target: SocketAddr, timeout: Duration) -> Outcome {
    let deadline = Instant::now() + timeout;
    let s = match new_socket(target, Type::DGRAM, Protocol::UDP, source) {
        Ok(s) => s,
        Err(e) => return Outcome::Error(format!("socket/bind: {e}")),
    };
    // connect(): only a connected UDP socket gets ICMP errors reported as
    // ECONNREFUSED (and ignores datagrams from other sources).
    if let Err(e) = s.connect(&target.into()) {
        return classify(e);
    }
    let sock: UdpSocket = s.into();
    let step = (timeout / 3).max(Duration::from_millis(10));
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Outcome::TimedOut;
        }
        if let Err(e) = sock.send(b"probe\n") {
            return classify(e);
        }
        let _ = sock.set_read_timeout(Some(step.min(deadline - now).max(Duration::from_millis(1))));
        match sock.recv(&mut buf) {
            Ok(n) => return parse_answer(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => return classify(e),
        }
    }
}

/// Read up to `\n` (kept out of the result) before `deadline`; bytes after
/// the newline stay in `buf` for the next call.
fn read_line(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> io::Result<String> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            return Ok(String::from_utf8_lossy(&line[..pos]).into_owned());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(ErrorKind::TimedOut, "no answer"));
        }
        stream.set_read_timeout(Some(deadline - now))?;
        match stream.read(&mut chunk) {
            Ok(0) => return Err(io::Error::new(ErrorKind::UnexpectedEof, "connection closed")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------------------
// Namespace plumbing

/// Move the calling thread into the network namespace at `path`. Only this
/// thread changes namespace (network namespaces are per task); sockets it
/// creates stay in that namespace wherever they are used later.
fn enter(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    setns(f.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// Run `f` on a fresh scoped thread inside the namespace at `path`, so the
/// caller's thread (a test thread, a tokio worker) never changes namespace.
fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    thread::scope(|s| {
        let h = s.spawn(|| -> io::Result<T> {
            enter(path)?;
            Ok(f())
        });
        match h.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Write `/proc/sys/<key>` values. `/proc/sys/net` resolves against the
/// *calling thread's* network namespace, so this works after `enter`. A
/// value ending in `?` is optional (ignored if the file does not exist).
fn write_sysctls(settings: &[(&str, &str)]) -> io::Result<()> {
    for (key, value) in settings {
        let (value, optional) = match value.strip_suffix('?') {
            Some(v) => (v, true),
            None => (*value, false),
        };
        let path = Path::new("/proc/sys").join(key);
        match std::fs::write(&path, value) {
            Ok(()) => {}
            Err(e) if optional && e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    }
    Ok(())
}

/// Kill the processes inside `real` (by PID, never this process) and delete
/// the name. Never panics: it runs from `Drop`, possibly while unwinding.
fn delete_netns(real: &str) {
    let me = std::process::id().to_string();
    if let Ok(out) = Command::new("ip").args(["netns", "pids", real]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if pid != me && pid.chars().all(|c| c.is_ascii_digit()) {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
    }
    match Command::new("ip").args(["netns", "del", real]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!("ip netns del {real}: {}", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => eprintln!("ip netns del {real}: {e}"),
    }
}

/// Delete `slpx-<pid>-...` namespaces whose creating process is gone (a test
/// binary killed by a signal or a timeout never runs `Drop`).
fn reap_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().filter(|p| p.parse::<u32>().is_ok()) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            delete_netns(&name);
        }
    }
}

fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    assert!(
        euid == "0",
        "the network-namespace tests need root (CAP_SYS_ADMIN + CAP_NET_ADMIN to create \
         namespaces, veths and bridges); effective uid is {euid}. Run them as root, e.g. \
         `sudo -E cargo test` (CI runs as root)."
    );
    let ip = Command::new("ip").arg("-V").output();
    assert!(
        ip.is_ok_and(|o| o.status.success()),
        "the network-namespace tests need `ip` (Debian package iproute2)"
    );
}

fn client_v4() -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 50, 100)
}

fn client_v6() -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x100)
}
