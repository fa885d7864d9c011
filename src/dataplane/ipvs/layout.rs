//! What one service port programs in IPVS mode, as pure data: virtual
//! servers with their real servers, addresses for the dummy interface, and
//! ipset members; plus the constant-size iptables layer and the ipset
//! definitions. Pure, so the backend can diff it and `render` can print it.
//!
//! Layout (after kube-proxy's IPVS proxier, every name prefixed `SP-`):
//!
//! ```text
//! virtual server  <cluster IP>:<port>/<proto>   real servers: internal set (internalTrafficPolicy)
//!                 <external IP | LB IP>:<port>  real servers: external set (externalTrafficPolicy)
//!                 <node address>:<nodePort>     real servers: external set
//! dummy interface every cluster, external and LB IP (/32, /128)
//! ipsets          SP-CLUSTER-IP, SP-EXTERNAL-IP, SP-LOAD-BALANCER, SP-NODE-PORT (masquerade),
//!                 SP-EXTERNAL-LOCAL (Local policy: keep the client address),
//!                 SP-LB-FW + SP-LB-SRC (source ranges), SP-DROP (Local policy, no local endpoint),
//!                 SP-LOOP-BACK (hairpin), SP-SERVICE-PORTS + SP-IPVS-IPS (reject other ports)
//! nat    PREROUTING, OUTPUT -> SP-IPVS-SERVICES   POSTROUTING -> SP-IPVS-POSTROUTING
//! filter INPUT -> SP-IPVS-FILTER                   FORWARD -> SP-IPVS-FORWARD
//! ```

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::dataplane::frontends::{FrontendKind, FrontendPlan, Masquerade, NodeSettings};
use crate::dataplane::xtables::{Jump, Table};
use crate::model::{IpFamily, Protocol};

/// Default name of the dummy interface holding service addresses
/// (`sliceproxy-ipvs0` would be 16 bytes; Linux allows 15).
pub const INTERFACE: &str = "sliceproxy-ipvs";
/// nat: marks and classifies service traffic.
pub const SERVICES: &str = "SP-IPVS-SERVICES";
/// nat: sets the masquerade mark.
pub const MARK_MASQ: &str = "SP-IPVS-MARK-MASQ";
/// nat: masquerades marked traffic and hairpin.
pub const POSTROUTING: &str = "SP-IPVS-POSTROUTING";
/// filter: source ranges, Local-policy drops, other ports of service IPs.
pub const FILTER: &str = "SP-IPVS-FILTER";
/// filter: accepts forwarded service traffic.
pub const FORWARD: &str = "SP-IPVS-FORWARD";
/// Prefix of every ipset.
pub const SET_PREFIX: &str = "SP-";

/// The ipsets, as (base name, type, comment).
pub const SETS: &[(&str, &str, &str)] = &[
    ("SP-CLUSTER-IP", "hash:ip,port", "cluster IP + port"),
    ("SP-EXTERNAL-IP", "hash:ip,port", "external IP + port, Cluster policy"),
    (
        "SP-LOAD-BALANCER",
        "hash:ip,port",
        "load-balancer IP + port, Cluster policy",
    ),
    (
        "SP-NODE-PORT",
        "hash:ip,port",
        "node address + node port, Cluster policy",
    ),
    (
        "SP-EXTERNAL-LOCAL",
        "hash:ip,port",
        "external frontends with Local policy",
    ),
    ("SP-LB-FW", "hash:ip,port", "load-balancer IP + port with source ranges"),
    (
        "SP-LB-SRC",
        "hash:ip,port,net",
        "load-balancer IP + port + allowed source range",
    ),
    (
        "SP-DROP",
        "hash:ip,port",
        "frontends without an endpoint for their traffic",
    ),
    (
        "SP-LOOP-BACK",
        "hash:ip,port,ip",
        "endpoint + port + endpoint (hairpin)",
    ),
    ("SP-SERVICE-PORTS", "hash:ip,port", "every service address + port"),
    ("SP-IPVS-IPS", "hash:ip", "addresses on the dummy interface"),
];

/// The ipset name of `base` in `family` (`SP-X`, `SP-X-6`).
pub fn set_name(base: &str, family: IpFamily) -> String {
    match family {
        IpFamily::V4 => base.to_string(),
        IpFamily::V6 => format!("{base}-6"),
    }
}

/// Identity of a virtual server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VsKey {
    /// Address.
    pub addr: IpAddr,
    /// Port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

impl std::fmt::Display for VsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.protocol, SocketAddr::new(self.addr, self.port))
    }
}

/// One desired virtual server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualServer {
    /// Identity.
    pub key: VsKey,
    /// Which frontend it implements (for render and logs).
    pub frontend: FrontendKind,
    /// Scheduler.
    pub scheduler: String,
    /// ClientIP affinity timeout (IPVS persistence), seconds.
    pub persistence: Option<u32>,
    /// Real servers (weight 1 each), sorted.
    pub dests: Vec<SocketAddr>,
}

/// One ipset member: (set name, entry).
pub type SetEntry = (String, String);

/// Everything one service port programs in one or both families.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortLayout {
    /// Virtual servers, sorted by key.
    pub services: Vec<VirtualServer>,
    /// Addresses for the dummy interface.
    pub addresses: BTreeSet<IpAddr>,
    /// ipset members.
    pub entries: BTreeSet<SetEntry>,
}

impl PortLayout {
    /// Programs nothing.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.addresses.is_empty() && self.entries.is_empty()
    }

    /// Add the layout of another family.
    pub fn extend(&mut self, other: PortLayout) {
        self.services.extend(other.services);
        self.services.sort_by_key(|v| v.key);
        self.addresses.extend(other.addresses);
        self.entries.extend(other.entries);
    }
}

/// The IPVS scheduler's name (`rr` when none is configured).
pub fn scheduler(configured: &str) -> &str {
    if configured.is_empty() { "rr" } else { configured }
}

fn ip_port(ip: &IpAddr, proto: Protocol, port: u16) -> String {
    format!("{ip},{}:{port}", proto.lower())
}

/// The order virtual servers are declared in (the first of two frontends
/// on the same address, port and protocol wins).
const DECLARATION_ORDER: [FrontendKind; 4] = [
    FrontendKind::ClusterIp,
    FrontendKind::ExternalIp,
    FrontendKind::LoadBalancer,
    FrontendKind::NodePort,
];

/// The layout of one service port in one family, from its frontend plan:
/// a virtual server per frontend whose real servers are the endpoints its
/// clients without a special case reach, and the ipset memberships that
/// carry the plan's masquerading, source-range and drop decisions.
/// (IPVS cannot short-circuit pods or the node to another set, and refuses
/// connections without a real server by itself: the documented differences
/// from the iptables mode.)
pub fn layout(fp: &FrontendPlan<'_>, scheduler: &str) -> PortLayout {
    let mut out = PortLayout::default();
    let family = fp.family;
    let proto = fp.protocol();
    let set = |base: &str| set_name(base, family);
    let mut services = Vec::new();
    for kind in DECLARATION_ORDER {
        for fe in fp.frontends_of(kind) {
            services.push(VirtualServer {
                key: VsKey {
                    addr: fe.address,
                    port: fe.port,
                    protocol: proto,
                },
                frontend: fe.kind,
                scheduler: scheduler.to_string(),
                persistence: fp.affinity_timeout,
                dests: fp.default_endpoints(&fe.treatment).to_vec(),
            });
            let e = ip_port(&fe.address, proto, fe.port);
            // Which connections the constant iptables layer masquerades.
            let local_policy = fe.treatment.masquerade != Masquerade::Always;
            match fe.kind {
                FrontendKind::ClusterIp => {
                    out.addresses.insert(fe.address);
                    out.entries.insert((set("SP-CLUSTER-IP"), e.clone()));
                    out.entries.insert((set("SP-SERVICE-PORTS"), e.clone()));
                }
                FrontendKind::ExternalIp | FrontendKind::LoadBalancer => {
                    out.addresses.insert(fe.address);
                    out.entries.insert((set("SP-SERVICE-PORTS"), e.clone()));
                    let masq_set = match (local_policy, fe.kind) {
                        (true, _) => "SP-EXTERNAL-LOCAL",
                        (false, FrontendKind::LoadBalancer) => "SP-LOAD-BALANCER",
                        (false, _) => "SP-EXTERNAL-IP",
                    };
                    out.entries.insert((set(masq_set), e.clone()));
                    if fe.filtered {
                        out.entries.insert((set("SP-LB-FW"), e.clone()));
                        for r in fp.source_ranges {
                            out.entries.insert((set("SP-LB-SRC"), format!("{e},{r}")));
                        }
                    }
                }
                FrontendKind::NodePort => {
                    let masq_set = if local_policy {
                        "SP-EXTERNAL-LOCAL"
                    } else {
                        "SP-NODE-PORT"
                    };
                    out.entries.insert((set(masq_set), e.clone()));
                }
            }
            if fe.treatment.drops_by_default() {
                out.entries.insert((set("SP-DROP"), e));
            }
        }
    }

    // Hairpin: an endpoint reaching itself through a frontend.
    for ep in fp.endpoints_in_use() {
        out.entries.insert((
            set("SP-LOOP-BACK"),
            format!("{},{}:{},{}", ep.ip(), proto.lower(), ep.port(), ep.ip()),
        ));
    }
    for a in &out.addresses {
        out.entries.insert((set("SP-IPVS-IPS"), a.to_string()));
    }
    services.sort_by_key(|v| v.key);
    services.dedup_by_key(|v| v.key);
    out.services = services;
    out
}

/// `ipset restore` lines creating every set of `family` (with `-exist`, so
/// re-running is harmless).
pub fn set_definitions(family: IpFamily) -> String {
    let fam = match family {
        IpFamily::V4 => "inet",
        IpFamily::V6 => "inet6",
    };
    let mut out = String::new();
    for (base, kind, _) in SETS {
        let _ = writeln!(
            out,
            "create {} {kind} family {fam} hashsize 1024 maxelem 1048576",
            set_name(base, family)
        );
    }
    out
}

fn comment(text: &str) -> String {
    format!("-m comment --comment \"{text}\"")
}

/// The iptables layer of one family as `iptables-restore --noflush` input:
/// constant size, whatever the number of services (membership lives in the ipsets).
pub fn iptables_rules(family: IpFamily, settings: &NodeSettings) -> String {
    let s = |base: &str| set_name(base, family);
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    line("*nat".into());
    for c in [SERVICES, MARK_MASQ, POSTROUTING] {
        line(format!(":{c} - [0:0]"));
    }
    line(format!(
        "-A {SERVICES} {} -m addrtype --src-type LOCAL -m set --match-set {} dst,dst -j {MARK_MASQ}",
        comment("node traffic to Local-policy frontends"),
        s("SP-EXTERNAL-LOCAL")
    ));
    line(format!(
        "-A {SERVICES} {} -m set --match-set {} dst,dst -j RETURN",
        comment("Local policy keeps the client address"),
        s("SP-EXTERNAL-LOCAL")
    ));
    // Cluster IPs share the node's masquerade decision (the plan's cluster
    // IP treatment), so one rule over the set carries it.
    match settings.cluster_ip_masquerade(family) {
        Masquerade::Always => line(format!(
            "-A {SERVICES} {} -m set --match-set {} dst,dst -j {MARK_MASQ}",
            comment("cluster IPs, masquerade-all"),
            s("SP-CLUSTER-IP")
        )),
        Masquerade::OutsideClusterCidr(cidr) => line(format!(
            "-A {SERVICES} {} -m set --match-set {} dst,dst ! -s {cidr} -j {MARK_MASQ}",
            comment("off-cluster traffic to cluster IPs"),
            s("SP-CLUSTER-IP")
        )),
        Masquerade::NodeSources => line(format!(
            "-A {SERVICES} {} -m addrtype --src-type LOCAL -m set --match-set {} dst,dst -j {MARK_MASQ}",
            comment("node traffic to cluster IPs"),
            s("SP-CLUSTER-IP")
        )),
        Masquerade::Never => {}
    }
    for (base, what) in [
        ("SP-EXTERNAL-IP", "external IPs"),
        ("SP-LOAD-BALANCER", "load-balancer IPs"),
        ("SP-NODE-PORT", "node ports"),
    ] {
        line(format!(
            "-A {SERVICES} {} -m set --match-set {} dst,dst -j {MARK_MASQ}",
            comment(what),
            s(base)
        ));
    }
    line(format!("-A {MARK_MASQ} -j MARK --or-mark 0x4000"));
    line(format!(
        "-A {POSTROUTING} {} -m set --match-set {} dst,dst,src -j MASQUERADE",
        comment("hairpin"),
        s("SP-LOOP-BACK")
    ));
    line(format!("-A {POSTROUTING} -m mark ! --mark 0x4000/0x4000 -j RETURN"));
    line(format!("-A {POSTROUTING} -j MARK --xor-mark 0x4000"));
    line(format!(
        "-A {POSTROUTING} {} -j MASQUERADE --random-fully",
        comment("sliceproxy service traffic requiring SNAT")
    ));
    line("COMMIT".into());
    line("*filter".into());
    for c in [FILTER, FORWARD] {
        line(format!(":{c} - [0:0]"));
    }
    line(format!(
        "-A {FILTER} {} -m set --match-set {} dst,dst -m set ! --match-set {} dst,dst,src -j DROP",
        comment("load-balancer source ranges"),
        s("SP-LB-FW"),
        s("SP-LB-SRC")
    ));
    line(format!(
        "-A {FILTER} {} -m conntrack --ctstate NEW -m set --match-set {} dst,dst -j DROP",
        comment("Local policy without a local endpoint"),
        s("SP-DROP")
    ));
    line(format!(
        "-A {FILTER} -m set --match-set {} dst,dst -j RETURN",
        s("SP-SERVICE-PORTS")
    ));
    let reject = match family {
        IpFamily::V4 => "REJECT --reject-with icmp-port-unreachable",
        IpFamily::V6 => "REJECT --reject-with icmp6-port-unreachable",
    };
    line(format!(
        "-A {FILTER} {} -m conntrack --ctstate NEW -m set --match-set {} dst -j {reject}",
        comment("other ports of service addresses"),
        s("SP-IPVS-IPS")
    ));
    line(format!("-A {FORWARD} -m conntrack --ctstate INVALID -j DROP"));
    line(format!("-A {FORWARD} -m mark --mark 0x4000/0x4000 -j ACCEPT"));
    line(format!(
        "-A {FORWARD} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    ));
    line("COMMIT".into());
    out
}

/// The jumps from the built-in chains into ours.
pub fn jumps() -> Vec<Jump> {
    [
        (Table::Nat, "PREROUTING", SERVICES),
        (Table::Nat, "OUTPUT", SERVICES),
        (Table::Nat, "POSTROUTING", POSTROUTING),
        (Table::Filter, "INPUT", FILTER),
        (Table::Filter, "FORWARD", FORWARD),
    ]
    .into_iter()
    .map(|(table, from, to)| Jump {
        table,
        from,
        spec: format!("{} -j {to}", comment("sliceproxy ipvs")),
    })
    .collect()
}
