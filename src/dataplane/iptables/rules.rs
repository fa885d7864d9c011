//! The rules of one service port in one family, rendered as
//! `iptables-restore` lines. Pure: the same plan always renders the same
//! lines, which is what lets the backend diff what it applied against what
//! it wants and write only the difference.
//!
//! Layout (after kube-proxy's, with our own `SP-` prefix so nothing foreign
//! is touched):
//!
//! ```text
//! nat  PREROUTING, OUTPUT -> SP-SERVICES       one dispatch rule per frontend address
//!                         -> SP-NODEPORT-ADDRS  -d <node address> -> SP-NODEPORTS (one rule per node port)
//!      POSTROUTING        -> SP-POSTROUTING     MASQUERADE what SP-MARK-MASQ marked
//!      SP-SVC-<h>  cluster endpoints   SP-SVL-<h> local endpoints
//!      SP-EXT-<h>  external policy      SP-FW-<h>  load-balancer source ranges
//!      SP-SEP-<h>  one endpoint: hairpin masquerade + DNAT
//! filter INPUT, FORWARD, OUTPUT -> SP-SERVICES (cluster IPs: REJECT/DROP)
//!        INPUT, FORWARD         -> SP-EXTERNAL-SERVICES (external frontends: REJECT/DROP)
//!        INPUT, FORWARD, OUTPUT -> SP-FIREWALL (source-range drops)
//!        FORWARD                -> SP-FORWARD (accept marked / established traffic)
//!        INPUT, OUTPUT          -> SP-LOCALNET (IPv4 with localhost node ports only:
//!                                  drop outside traffic to 127.0.0.0/8)
//! ```

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::dataplane::frontends::{FamilySettings, Frontend, FrontendKind, FrontendPlan, Masquerade, Route, SetKind};
use crate::dataplane::xtables::{CHAIN_PREFIX, Jump, Table};
use crate::model::{IpFamily, Protocol, ServicePortKey};

/// Dispatch chain of the nat table (and the filter chain for cluster IPs).
pub const SERVICES: &str = "SP-SERVICES";
/// Node-port dispatch chain.
pub const NODEPORTS: &str = "SP-NODEPORTS";
/// Per-address jumps into [`NODEPORTS`].
pub const NODEPORT_ADDRS: &str = "SP-NODEPORT-ADDRS";
/// Marks a packet for masquerading.
pub const MARK_MASQ: &str = "SP-MARK-MASQ";
/// Masquerades marked packets.
pub const POSTROUTING: &str = "SP-POSTROUTING";
/// filter: external frontends with nothing to serve them.
pub const EXTERNAL_SERVICES: &str = "SP-EXTERNAL-SERVICES";
/// filter: load-balancer source ranges.
pub const FIREWALL: &str = "SP-FIREWALL";
/// filter: forwarding of service traffic.
pub const FORWARD: &str = "SP-FORWARD";
/// filter: with node ports on localhost, drops connections to 127.0.0.0/8
/// from elsewhere, as kube-proxy's `KUBE-FIREWALL` does.
pub const LOCALNET: &str = "SP-LOCALNET";
/// IPv4 loopback, where node ports answer with localhost node ports on.
pub const LOOPBACK_V4: &str = "127.0.0.0/8";
/// An empty chain in each of our tables that nothing jumps to, as
/// kube-proxy's `KUBE-PROXY-CANARY`: it exists from our first full sync on,
/// so when it is gone someone flushed or deleted the table's chains and the
/// drift check asks for a full sync. One `-S` of it is the cheapest look at
/// a table there is.
pub const CANARY: &str = "SP-CANARY";
/// The masquerade mark bit (kube-proxy's default, bit 14).
pub const MASQ_MARK: &str = "0x4000/0x4000";

/// A rule in one of the shared dispatch chains, owned by one service port:
/// added and deleted one by one, never by rewriting the chain.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DispatchRule {
    /// Table.
    pub table: Table,
    /// Chain (one of the shared ones).
    pub chain: &'static str,
    /// The rule spec after `-A CHAIN `.
    pub spec: String,
}

/// A chain owned by one service port and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnChain {
    /// Chain name (`SP-SVC-...`).
    pub name: String,
    /// Rule specs, in order (after `-A NAME `).
    pub rules: Vec<String>,
}

/// Everything one service port programs in one family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortRules {
    /// Rules in shared chains.
    pub dispatch: Vec<DispatchRule>,
    /// Own nat chains.
    pub chains: Vec<OwnChain>,
}

/// Turns the encoded identity of a chain into the hash part of its name.
/// [`sha256_name`] in production; tests inject a weak one to force
/// collisions, which the backend must detect.
pub type ChainHasher = fn(&[u8]) -> String;

/// The hash part of a chain name, as kube-proxy makes it: SHA-256 of the
/// input, base32 (RFC 4648 alphabet), the first 16 characters (80 bits).
/// iptables chain names are at most 28 characters, so names cannot carry
/// the service name itself; a collision is still possible in principle
/// and the backend checks for it.
pub fn sha256_name(input: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(input);
    // 16 characters of 5 bits: the first 10 bytes, most significant bit first.
    let bits = digest[..10].iter().fold(0u128, |acc, b| (acc << 8) | u128::from(*b));
    (0..16)
        .map(|i| ALPHABET[((bits >> (75 - 5 * i)) & 31) as usize] as char)
        .collect()
}

/// An unambiguous encoding of a chain's identity: each part as
/// `<length>:<bytes>,` (a netstring), so no choice of names, which may
/// contain any separator a plain join would use, encodes like another.
pub fn chain_identity(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(format!("{}:", p.len()).as_bytes());
        out.extend_from_slice(p.as_bytes());
        out.push(b',');
    }
    out
}

fn key_parts(key: &ServicePortKey, family: IpFamily) -> [String; 5] {
    // The family is part of the identity so IPv4 and IPv6 chain names never
    // meet in messages or in a shared save file.
    [
        key.service.namespace.to_string(),
        key.service.name.to_string(),
        key.port_name.to_string(),
        key.protocol.to_string(),
        family.to_string(),
    ]
}

/// Name of a service port's chain of `kind` (`SVC`, `SVL`, `EXT`, `FW`).
pub fn port_chain(hasher: ChainHasher, kind: &str, key: &ServicePortKey, family: IpFamily) -> String {
    let parts = key_parts(key, family);
    let mut all: Vec<&str> = vec![kind];
    all.extend(parts.iter().map(String::as_str));
    format!("{CHAIN_PREFIX}{kind}-{}", hasher(&chain_identity(&all)))
}

/// Name of an endpoint chain.
pub fn endpoint_chain(hasher: ChainHasher, key: &ServicePortKey, family: IpFamily, endpoint: &SocketAddr) -> String {
    let parts = key_parts(key, family);
    let endpoint = endpoint.to_string();
    let mut all: Vec<&str> = vec!["SEP"];
    all.extend(parts.iter().map(String::as_str));
    all.push(&endpoint);
    format!("{CHAIN_PREFIX}SEP-{}", hasher(&chain_identity(&all)))
}

fn proto_match(p: Protocol) -> String {
    let p = p.lower();
    format!("-p {p} -m {p}")
}

fn comment(text: &str) -> String {
    // Comments are for humans reading iptables-save; keep them free of quotes.
    format!("-m comment --comment \"{}\"", text.replace('"', ""))
}

fn host(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

/// Render the rules of one service port in one family from its frontend
/// plan: every decision (which chain a frontend jumps to, which traffic is
/// masqueraded, reject or drop) is the plan's; this only spells it in
/// iptables. Chain names come from `hasher` (see [`sha256_name`]).
pub fn render(fp: &FrontendPlan<'_>, hasher: ChainHasher) -> PortRules {
    let mut out = PortRules::default();
    let key = fp.key;
    let family = fp.family;
    let name = key.to_string();
    let proto = proto_match(fp.protocol());
    let svc = port_chain(hasher, "SVC", key, family);
    let svl = port_chain(hasher, "SVL", key, family);
    let ext = port_chain(hasher, "EXT", key, family);
    let fw = port_chain(hasher, "FW", key, family);
    let set_chain = |set: SetKind| match set {
        SetKind::Cluster => &svc,
        SetKind::Local => &svl,
    };
    let frontend_match = |fe: &Frontend| format!("-d {} {proto} --dport {}", host(&fe.address), fe.port);

    // --- Cluster IP ---
    let cluster_ip = fp
        .frontends_of(FrontendKind::ClusterIp)
        .next()
        .expect("a frontend plan always has its cluster IP");
    let cip_match = frontend_match(cluster_ip);
    match fp.internal.route {
        Route::Serve { set: Some(set), .. } => out.dispatch.push(nat(
            SERVICES,
            format!(
                "{} {cip_match} -j {}",
                comment(&format!("{name} cluster IP")),
                set_chain(set)
            ),
        )),
        Route::Serve { set: None, .. } => out.dispatch.push(filter(
            SERVICES,
            format!(
                "{} {cip_match} -j DROP",
                comment(&format!("{name} has no local endpoints"))
            ),
        )),
        Route::Reject => out.dispatch.push(filter(
            SERVICES,
            format!(
                "{} {cip_match} -j {}",
                comment(&format!("{name} has no endpoints")),
                reject(family)
            ),
        )),
    }

    // --- External IPs and load-balancer IPs ---
    let external_frontends = fp
        .frontends
        .iter()
        .filter(|f| matches!(f.kind, FrontendKind::ExternalIp | FrontendKind::LoadBalancer));
    for fe in external_frontends {
        let m = frontend_match(fe);
        let what = if fe.kind == FrontendKind::LoadBalancer {
            "loadbalancer IP"
        } else {
            "external IP"
        };
        if fe.treatment.route == Route::Reject {
            out.dispatch.push(filter(
                EXTERNAL_SERVICES,
                format!(
                    "{} {m} -j {}",
                    comment(&format!("{name} has no endpoints")),
                    reject(family)
                ),
            ));
            continue;
        }
        let target = if fe.filtered { &fw } else { &ext };
        out.dispatch.push(nat(
            SERVICES,
            format!("{} {m} -j {target}", comment(&format!("{name} {what}"))),
        ));
        if fe.treatment.drops_by_default() {
            out.dispatch.push(filter(
                EXTERNAL_SERVICES,
                format!("{} {m} -j DROP", comment(&format!("{name} has no local endpoints"))),
            ));
        }
        if fe.filtered {
            // What the FW chain did not DNAT (a source outside the ranges)
            // still has the load-balancer IP as destination: drop it here.
            out.dispatch.push(filter(
                FIREWALL,
                format!(
                    "{} {m} -j DROP",
                    comment(&format!("{name} traffic not accepted by {fw}"))
                ),
            ));
        }
    }

    // --- Node ports: one rule in the node-port chain, whatever the
    // addresses (SP-NODEPORT-ADDRS picks those); filter rules per address.
    if let (Some(np), Some(treatment)) = (fp.node_port, fp.external) {
        let m = format!("{proto} --dport {np}");
        let node_ports = fp.frontends_of(FrontendKind::NodePort);
        if treatment.route == Route::Reject {
            for fe in node_ports {
                out.dispatch.push(filter(
                    EXTERNAL_SERVICES,
                    format!(
                        "{} -d {} {m} -j {}",
                        comment(&format!("{name} has no endpoints")),
                        host(&fe.address),
                        reject(family)
                    ),
                ));
            }
        } else {
            out.dispatch
                .push(nat(NODEPORTS, format!("{} {m} -j {ext}", comment(&name))));
            if treatment.drops_by_default() {
                for fe in node_ports {
                    out.dispatch.push(filter(
                        EXTERNAL_SERVICES,
                        format!(
                            "{} -d {} {m} -j DROP",
                            comment(&format!("{name} has no local endpoints")),
                            host(&fe.address)
                        ),
                    ));
                }
            }
        }
    }

    // --- Own chains ---
    // The cluster IP's masquerade rule sits in the chain of its set, so
    // that it sees only cluster-IP traffic (it matches the destination).
    let cip_comment = comment(&format!("{name} cluster IP"));
    let masq_cluster_ip = match fp.internal.masquerade {
        Masquerade::Always => Some(format!("{cip_comment} {cip_match} -j {MARK_MASQ}")),
        Masquerade::OutsideClusterCidr(cidr) => Some(format!("{cip_comment} {cip_match} ! -s {cidr} -j {MARK_MASQ}")),
        Masquerade::NodeSources => Some(format!(
            "{cip_comment} {cip_match} -m addrtype --src-type LOCAL -j {MARK_MASQ}"
        )),
        Masquerade::Never => None,
    };
    for (set, chain_name) in [(SetKind::Cluster, &svc), (SetKind::Local, &svl)] {
        if fp.endpoints(set).is_empty() {
            continue;
        }
        let mut rules = Vec::new();
        if fp.internal.default_set() == Some(set) {
            rules.extend(masq_cluster_ip.clone());
        }
        rules.extend(balance(
            hasher,
            key,
            family,
            fp.endpoints(set),
            fp.affinity_timeout,
            &name,
        ));
        out.chains.push(OwnChain {
            name: chain_name.clone(),
            rules,
        });
    }
    if let Some(treatment) = fp.external.filter(|t| t.route != Route::Reject) {
        let Route::Serve { set, short_circuit } = treatment.route else {
            unreachable!("filtered above")
        };
        let mut rules = Vec::new();
        if let Some(cidr) = short_circuit.pods {
            rules.push(format!(
                "{} -s {cidr} -j {svc}",
                comment(&format!("pod traffic for {name} external destinations"))
            ));
        }
        match treatment.masquerade {
            Masquerade::Always => rules.push(format!(
                "{} -j {MARK_MASQ}",
                comment(&format!("masquerade traffic for {name} external destinations"))
            )),
            Masquerade::NodeSources => rules.push(format!(
                "{} -m addrtype --src-type LOCAL -j {MARK_MASQ}",
                comment(&format!("masquerade LOCAL traffic for {name} external destinations"))
            )),
            Masquerade::OutsideClusterCidr(cidr) => rules.push(format!(
                "{} ! -s {cidr} -j {MARK_MASQ}",
                comment(&format!("masquerade traffic for {name} external destinations"))
            )),
            Masquerade::Never => {}
        }
        // Node-originated connections get a rule of their own whenever the
        // node is treated apart from external clients.
        if short_circuit.node || treatment.masquerade == Masquerade::NodeSources {
            let node_set = if short_circuit.node {
                Some(SetKind::Cluster)
            } else {
                set
            };
            if let Some(node_set) = node_set {
                rules.push(format!(
                    "{} -m addrtype --src-type LOCAL -j {}",
                    comment(&format!("route LOCAL traffic for {name} external destinations")),
                    set_chain(node_set)
                ));
            }
        }
        if let Some(set) = set {
            rules.push(format!("-j {}", set_chain(set)));
        }
        out.chains.push(OwnChain {
            name: ext.clone(),
            rules,
        });
        let lb_ips: Vec<&Frontend> = fp
            .frontends_of(FrontendKind::LoadBalancer)
            .filter(|f| f.filtered)
            .collect();
        if !lb_ips.is_empty() {
            let mut rules: Vec<String> = fp
                .source_ranges
                .iter()
                .map(|r| format!("{} -s {r} -j {ext}", comment(&format!("{name} loadbalancer IP"))))
                .collect();
            // Traffic from the node itself to its own LB IP (hairpin through
            // the load balancer) keeps working when a range covers the node.
            if fp.ranges_admit_node {
                for fe in &lb_ips {
                    rules.push(format!(
                        "{} -s {} -j {ext}",
                        comment(&format!("{name} loadbalancer IP")),
                        host(&fe.address)
                    ));
                }
            }
            out.chains.push(OwnChain { name: fw, rules });
        }
    }
    // Endpoint chains, once per endpoint used by either set.
    for ep in fp.endpoints_in_use() {
        let sep = endpoint_chain(hasher, key, family, &ep);
        let mut rules = vec![format!("{} -s {} -j {MARK_MASQ}", comment(&name), host(&ep.ip()))];
        // With ClientIP affinity the endpoint records the client, so the
        // service chain's `--rcheck` sends it back here within the timeout.
        let remember = if fp.affinity_timeout.is_some() {
            format!(" -m recent --name {sep} --set")
        } else {
            String::new()
        };
        rules.push(format!(
            "{}{remember} {proto} -j DNAT --to-destination {ep}",
            comment(&name)
        ));
        out.chains.push(OwnChain { name: sep, rules });
    }
    out.dispatch.sort();
    out.dispatch.dedup();
    out
}

/// Spread new connections evenly: rule i of n matches with probability
/// 1/(n-i), so each endpoint gets 1/n overall. With ClientIP affinity, a
/// client seen within the timeout goes back to its endpoint first.
fn balance(
    hasher: ChainHasher,
    key: &ServicePortKey,
    family: IpFamily,
    endpoints: &[SocketAddr],
    affinity: Option<u32>,
    name: &str,
) -> Vec<String> {
    let mut rules = Vec::with_capacity(endpoints.len() * 2);
    if let Some(timeout) = affinity {
        for ep in endpoints {
            let sep = endpoint_chain(hasher, key, family, ep);
            rules.push(format!(
                "{} -m recent --name {sep} --rcheck --seconds {timeout} --reap -j {sep}",
                comment(&format!("{name} -> {ep}"))
            ));
        }
    }
    let n = endpoints.len();
    for (i, ep) in endpoints.iter().enumerate() {
        let sep = endpoint_chain(hasher, key, family, ep);
        let mut rule = comment(&format!("{name} -> {ep}"));
        if i + 1 < n {
            let _ = write!(
                rule,
                " -m statistic --mode random --probability {:.10}",
                1.0 / (n - i) as f64
            );
        }
        let _ = write!(rule, " -j {sep}");
        rules.push(rule);
    }
    rules
}

fn reject(family: IpFamily) -> &'static str {
    // Refuse at once rather than let clients time out: TCP gets a reset via
    // ICMP port-unreachable handling in the stack; UDP clients see ECONNREFUSED.
    match family {
        IpFamily::V4 => "REJECT --reject-with icmp-port-unreachable",
        IpFamily::V6 => "REJECT --reject-with icmp6-port-unreachable",
    }
}

fn nat(chain: &'static str, spec: String) -> DispatchRule {
    DispatchRule {
        table: Table::Nat,
        chain,
        spec,
    }
}

fn filter(chain: &'static str, spec: String) -> DispatchRule {
    DispatchRule {
        table: Table::Filter,
        chain,
        spec,
    }
}

/// The static chains of each table and their bodies (rewritten on every
/// full sync), and the jumps from the built-in chains into them.
///
/// `localhost`: node ports on IPv4 loopback (only ever true for IPv4).
pub fn static_chains(table: Table, cfg: &FamilySettings, localhost: bool) -> Vec<OwnChain> {
    let mut chains = match table {
        Table::Nat => vec![
            OwnChain {
                name: CANARY.into(),
                rules: Vec::new(),
            },
            OwnChain {
                name: SERVICES.into(),
                rules: Vec::new(),
            },
            OwnChain {
                name: NODEPORTS.into(),
                rules: Vec::new(),
            },
            OwnChain {
                name: NODEPORT_ADDRS.into(),
                rules: cfg
                    .node_port_addresses
                    .iter()
                    .map(|a| format!("{} -d {} -j {NODEPORTS}", comment("sliceproxy node ports"), host(a)))
                    // kube-proxy matches `--dst-type LOCAL`, which takes in
                    // all of 127.0.0.0/8; route_localnet lets the DNATed
                    // packet leave the node.
                    .chain(localhost.then(|| {
                        format!(
                            "{} -d {LOOPBACK_V4} -j {NODEPORTS}",
                            comment("sliceproxy node ports on localhost")
                        )
                    }))
                    .collect(),
            },
            OwnChain {
                name: MARK_MASQ.into(),
                rules: vec![format!(
                    "-j MARK --or-mark {}",
                    MASQ_MARK.split('/').next().unwrap_or("0x4000")
                )],
            },
            OwnChain {
                name: POSTROUTING.into(),
                rules: vec![
                    format!("-m mark ! --mark {MASQ_MARK} -j RETURN"),
                    // Clear the mark so a packet re-entering the stack is not
                    // masqueraded twice.
                    "-j MARK --xor-mark 0x4000".into(),
                    format!(
                        "{} -j MASQUERADE --random-fully",
                        comment("sliceproxy service traffic requiring SNAT")
                    ),
                ],
            },
        ],
        Table::Filter => vec![
            OwnChain {
                name: CANARY.into(),
                rules: Vec::new(),
            },
            OwnChain {
                name: SERVICES.into(),
                rules: Vec::new(),
            },
            OwnChain {
                name: EXTERNAL_SERVICES.into(),
                rules: Vec::new(),
            },
            OwnChain {
                name: FIREWALL.into(),
                rules: Vec::new(),
            },
            OwnChain {
                name: FORWARD.into(),
                rules: vec![
                    "-m conntrack --ctstate INVALID -j DROP".into(),
                    format!(
                        "{} -m mark --mark {MASQ_MARK} -j ACCEPT",
                        comment("sliceproxy forwarding rules")
                    ),
                    format!(
                        "{} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                        comment("sliceproxy forwarding conntrack rule")
                    ),
                ],
            },
        ],
    };
    if localhost && table == Table::Filter {
        // route_localnet makes the node route packets to 127.0.0.0/8 that
        // arrive from its neighbours (https://issue.k8s.io/90259): only
        // replies and DNATed connections may pass, as kube-proxy's rule.
        chains.push(OwnChain {
            name: LOCALNET.into(),
            rules: vec![format!(
                "{} -d {LOOPBACK_V4} ! -s {LOOPBACK_V4} -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
                comment("sliceproxy block incoming localnet connections")
            )],
        });
    }
    chains
}

/// Every jump from a built-in chain, in the order they should end up;
/// `localhost` (IPv4 with node ports on loopback) adds those to [`LOCALNET`].
pub fn jumps(localhost: bool) -> Vec<Jump> {
    let j = |table, from, extra: &str, to: &str, what: &str| Jump {
        table,
        from,
        spec: format!("{} {extra}-j {to}", comment(what)).replace("  ", " "),
    };
    let mut jumps = vec![
        j(Table::Nat, "PREROUTING", "", SERVICES, "sliceproxy service portals"),
        j(Table::Nat, "OUTPUT", "", SERVICES, "sliceproxy service portals"),
        j(Table::Nat, "PREROUTING", "", NODEPORT_ADDRS, "sliceproxy node ports"),
        j(Table::Nat, "OUTPUT", "", NODEPORT_ADDRS, "sliceproxy node ports"),
        j(
            Table::Nat,
            "POSTROUTING",
            "",
            POSTROUTING,
            "sliceproxy postrouting rules",
        ),
        j(
            Table::Filter,
            "INPUT",
            "-m conntrack --ctstate NEW ",
            SERVICES,
            "sliceproxy service portals",
        ),
        j(
            Table::Filter,
            "FORWARD",
            "-m conntrack --ctstate NEW ",
            SERVICES,
            "sliceproxy service portals",
        ),
        j(
            Table::Filter,
            "OUTPUT",
            "-m conntrack --ctstate NEW ",
            SERVICES,
            "sliceproxy service portals",
        ),
        j(
            Table::Filter,
            "INPUT",
            "-m conntrack --ctstate NEW ",
            EXTERNAL_SERVICES,
            "sliceproxy external services",
        ),
        j(
            Table::Filter,
            "FORWARD",
            "-m conntrack --ctstate NEW ",
            EXTERNAL_SERVICES,
            "sliceproxy external services",
        ),
        j(
            Table::Filter,
            "INPUT",
            "-m conntrack --ctstate NEW ",
            FIREWALL,
            "sliceproxy load balancer firewall",
        ),
        j(
            Table::Filter,
            "FORWARD",
            "-m conntrack --ctstate NEW ",
            FIREWALL,
            "sliceproxy load balancer firewall",
        ),
        j(
            Table::Filter,
            "OUTPUT",
            "-m conntrack --ctstate NEW ",
            FIREWALL,
            "sliceproxy load balancer firewall",
        ),
        j(Table::Filter, "FORWARD", "", FORWARD, "sliceproxy forwarding rules"),
    ];
    if localhost {
        for from in ["INPUT", "OUTPUT"] {
            jumps.push(j(Table::Filter, from, "", LOCALNET, "sliceproxy localnet firewall"));
        }
    }
    jumps
}

#[cfg(test)]
mod hash_tests {
    use super::*;

    #[test]
    fn sha256_name_is_kube_proxys_base32_prefix() {
        // sha256("") = e3b0c442 98fc1c14 ...; base32 of it starts "4OYMIQUY7QOBJGX3".
        assert_eq!(sha256_name(b""), "4OYMIQUY7QOBJGX3");
        assert_eq!(sha256_name(b"abc").len(), 16);
    }

    #[test]
    fn identities_are_unambiguous() {
        assert_ne!(chain_identity(&["a/b", "c"]), chain_identity(&["a", "b/c"]));
        assert_ne!(chain_identity(&["ab", ""]), chain_identity(&["a", "b"]));
        let k1 = ServicePortKey::new("a-b", "c", "http", Protocol::Tcp);
        let k2 = ServicePortKey::new("a", "b-c", "http", Protocol::Tcp);
        assert_ne!(
            port_chain(sha256_name, "SVC", &k1, IpFamily::V4),
            port_chain(sha256_name, "SVC", &k2, IpFamily::V4)
        );
        assert_ne!(
            port_chain(sha256_name, "SVC", &k1, IpFamily::V4),
            port_chain(sha256_name, "SVC", &k1, IpFamily::V6)
        );
        assert!(port_chain(sha256_name, "SVC", &k1, IpFamily::V4).len() <= 28);
    }
}
