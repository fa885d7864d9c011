//! What a node's rules do, read back from an `iptables-save` dump by
//! structure: for every frontend (destination address, port, protocol) the
//! dispatch rules match, the DNAT targets reachable through the chains they
//! jump to, and any REJECT or DROP of the filter table for it. Comments are
//! never read: they are for humans, and a rule without one works the same.
//! `diagnose` compares this with the frontend plan.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use super::rules::{EXTERNAL_SERVICES, NODEPORT_ADDRS, NODEPORTS, SERVICES};
use crate::dataplane::programmed::{FrontendKey, Programmed, Refusal};
use crate::dataplane::xtables::shell_words;
use crate::model::Protocol;

/// One rule's words after `-A CHAIN`.
type Rule = Vec<String>;

/// The value after option `name` in a rule.
fn option<'a>(rule: &'a [String], name: &str) -> Option<&'a str> {
    rule.windows(2).find(|w| w[0] == name).map(|w| w[1].as_str())
}

fn address(s: &str) -> Option<IpAddr> {
    s.split('/').next()?.parse().ok()
}

fn protocol(rule: &[String]) -> Option<Protocol> {
    match option(rule, "-p")? {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        "sctp" => Some(Protocol::Sctp),
        _ => None,
    }
}

fn port(rule: &[String]) -> Option<u16> {
    option(rule, "--dport")?.parse().ok()
}

/// `10.0.0.1:80` or `[fd00::1]:80` (also a bare address, port 0).
fn dnat_target(s: &str) -> Option<SocketAddr> {
    s.parse()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 0)))
}

/// The dump, by table and chain.
#[derive(Debug, Default)]
struct Dump {
    nat: HashMap<String, Vec<Rule>>,
    filter: HashMap<String, Vec<Rule>>,
}

impl Dump {
    fn parse(save: &str) -> Dump {
        let mut dump = Dump::default();
        let mut table = "";
        for line in save.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = t.trim();
                continue;
            }
            let words = shell_words(line);
            if words.first().map(String::as_str) != Some("-A") || words.len() < 2 {
                continue;
            }
            let chains = match table {
                "nat" => &mut dump.nat,
                "filter" => &mut dump.filter,
                _ => continue,
            };
            chains.entry(words[1].clone()).or_default().push(words[2..].to_vec());
        }
        dump
    }

    /// The DNAT targets reachable from `chain` (each chain visited once).
    fn reachable(&self, chain: &str, seen: &mut BTreeSet<String>, out: &mut BTreeSet<SocketAddr>) {
        if !seen.insert(chain.to_string()) {
            return;
        }
        for rule in self.nat.get(chain).into_iter().flatten() {
            match option(rule, "-j") {
                Some("DNAT") => out.extend(option(rule, "--to-destination").and_then(dnat_target)),
                Some(target) if self.nat.contains_key(target) => self.reachable(target, seen, out),
                _ => {}
            }
        }
    }
}

/// Read every frontend the dump dispatches or refuses.
pub fn programmed_frontends(save: &str) -> BTreeMap<FrontendKey, Programmed> {
    let dump = Dump::parse(save);
    let mut out: BTreeMap<FrontendKey, Programmed> = BTreeMap::new();
    let mut dispatch = |key: FrontendKey, target: &str| {
        let entry = out.entry(key).or_default();
        dump.reachable(target, &mut BTreeSet::new(), &mut entry.dnat);
    };
    for rule in dump.nat.get(SERVICES).into_iter().flatten() {
        let (Some(address), Some(protocol), Some(port), Some(target)) = (
            option(rule, "-d").and_then(address),
            protocol(rule),
            port(rule),
            option(rule, "-j"),
        ) else {
            continue;
        };
        dispatch(
            FrontendKey {
                address,
                port,
                protocol,
            },
            target,
        );
    }
    // Node ports match on the port alone; the addresses that reach them are
    // the ones the node-port address chain sends there.
    let node_addresses: Vec<IpAddr> = dump
        .nat
        .get(NODEPORT_ADDRS)
        .into_iter()
        .flatten()
        .filter(|r| option(r, "-j") == Some(NODEPORTS))
        .filter_map(|r| match option(r, "-d") {
            // Node ports on localhost take the whole range; the plan lists
            // 127.0.0.1 as the frontend that stands for it.
            Some(super::rules::LOOPBACK_V4) => Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            d => d.and_then(address),
        })
        .collect();
    for rule in dump.nat.get(NODEPORTS).into_iter().flatten() {
        let (Some(protocol), Some(port), Some(target)) = (protocol(rule), port(rule), option(rule, "-j")) else {
            continue;
        };
        for &address in &node_addresses {
            dispatch(
                FrontendKey {
                    address,
                    port,
                    protocol,
                },
                target,
            );
        }
    }
    for chain in [SERVICES, EXTERNAL_SERVICES] {
        for rule in dump.filter.get(chain).into_iter().flatten() {
            let refusal = match option(rule, "-j") {
                Some("REJECT") => Refusal::Reject,
                Some("DROP") => Refusal::Drop,
                _ => continue,
            };
            let (Some(address), Some(protocol), Some(port)) =
                (option(rule, "-d").and_then(address), protocol(rule), port(rule))
            else {
                continue;
            };
            out.entry(FrontendKey {
                address,
                port,
                protocol,
            })
            .or_default()
            .refusal = Some(refusal);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_chains_to_dnat_targets_and_reads_refusals() {
        let save = r#"*nat
:SP-SERVICES - [0:0]
:SP-NODEPORTS - [0:0]
:SP-NODEPORT-ADDRS - [0:0]
:SP-SVC-A - [0:0]
:SP-SEP-1 - [0:0]
:SP-SEP-2 - [0:0]
:SP-EXT-A - [0:0]
-A SP-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "anything" -m tcp --dport 80 -j SP-SVC-A
-A SP-SERVICES -m comment --comment "fd" -d fd00:96::1/128 -p udp -m udp --dport 53 -j SP-SEP-2
-A SP-NODEPORT-ADDRS -d 192.168.50.10/32 -j SP-NODEPORTS
-A SP-NODEPORTS -p tcp -m tcp --dport 30080 -j SP-EXT-A
-A SP-EXT-A -j SP-MARK-MASQ
-A SP-EXT-A -j SP-SVC-A
-A SP-SVC-A -m statistic --mode random --probability 0.5 -j SP-SEP-1
-A SP-SVC-A -j SP-SEP-2
-A SP-SEP-1 -s 10.244.1.1/32 -j SP-MARK-MASQ
-A SP-SEP-1 -p tcp -j DNAT --to-destination 10.244.1.1:8080
-A SP-SEP-2 -p tcp -j DNAT --to-destination [fd00::2]:8080
COMMIT
*filter
:SP-SERVICES - [0:0]
-A SP-SERVICES -d 10.96.0.11/32 -p tcp -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
-A SP-EXTERNAL-SERVICES -d 192.168.50.10/32 -p tcp -m tcp --dport 30081 -j DROP
COMMIT
"#;
        let p = programmed_frontends(save);
        let key = |a: &str, port, protocol| FrontendKey {
            address: a.parse().unwrap(),
            port,
            protocol,
        };
        let both: BTreeSet<SocketAddr> = ["10.244.1.1:8080", "[fd00::2]:8080"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(p[&key("10.96.0.10", 80, Protocol::Tcp)].dnat, both);
        assert_eq!(p[&key("192.168.50.10", 30080, Protocol::Tcp)].dnat, both);
        assert_eq!(p[&key("fd00:96::1", 53, Protocol::Udp)].dnat.len(), 1);
        assert_eq!(
            p[&key("10.96.0.11", 80, Protocol::Tcp)],
            Programmed {
                dnat: BTreeSet::new(),
                refusal: Some(Refusal::Reject),
                unmapped: Vec::new(),
            }
        );
        assert_eq!(
            p[&key("192.168.50.10", 30081, Protocol::Tcp)].refusal,
            Some(Refusal::Drop)
        );
    }
}
