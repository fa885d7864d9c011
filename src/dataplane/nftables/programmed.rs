//! What our nftables tables do with new connections, read by structure from
//! the model (as dumped from the kernel, or as a full sync builds it): from
//! the nat base chains to every `vmap` that dispatches on a destination
//! (address, protocol, port) or on (protocol, port) for the addresses of a
//! set, then, per dispatch element, its verdict followed through chains
//! (`jump`/`goto`), `dnat` statements (fixed, or looked up in a map with
//! the frontend's own key and every slot a `numgen`/hash can produce) and
//! `reject`/`drop`. Names are not trusted: a dispatch map whose rule was
//! deleted dispatches nothing, whatever it holds. Comments are never read.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use super::model::{Chain, ElemData, Expr, KeyPart, NatTo, SCTP, Stmt, TCP, Table, UDP, Value, VerdictData};
use crate::dataplane::programmed::{FrontendKey, Programmed, Refusal};
use crate::model::Protocol;

/// Read every frontend the tables dispatch (all families together).
pub fn programmed_frontends(tables: &[Table]) -> BTreeMap<FrontendKey, Programmed> {
    let mut out: BTreeMap<FrontendKey, Programmed> = BTreeMap::new();
    for table in tables {
        for (key, verdict) in dispatch(table) {
            let entry = out.entry(key).or_default();
            follow_verdict(table, &key, &verdict, &mut BTreeSet::new(), entry);
        }
    }
    out
}

/// Every (frontend, dispatch verdict) of a table, from the rules that the
/// nat base chains reach.
fn dispatch(table: &Table) -> Vec<(FrontendKey, VerdictData)> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut todo: Vec<&Chain> = table
        .chains
        .iter()
        .filter(|c| c.base.is_some_and(|b| b.kind == super::model::ChainType::Nat))
        .collect();
    while let Some(chain) = todo.pop() {
        if !seen.insert(chain.name.clone()) {
            continue;
        }
        for rule in &chain.rules {
            for stmt in &rule.stmts {
                match stmt {
                    Stmt::Vmap { key, map } => {
                        if let Some(map) = table.set(map) {
                            out.extend(dispatch_elements(table, &rule.stmts, key, &map.elements));
                        }
                    }
                    Stmt::Verdict(v) => {
                        if let Some(next) = v.target().and_then(|n| table.chain(n)) {
                            todo.push(next);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

fn is_daddr(e: &Expr) -> bool {
    matches!(e, Expr::IpDaddr | Expr::Ip6Daddr)
}

/// The frontends of one dispatch `vmap`: keyed `daddr . l4proto . dport`,
/// or `l4proto . dport` with the destination looked up in a set by the
/// same rule (node ports on the node-port addresses).
fn dispatch_elements(
    table: &Table,
    stmts: &[Stmt],
    key: &[Expr],
    elements: &[super::model::Element],
) -> Vec<(FrontendKey, VerdictData)> {
    let mut out = Vec::new();
    let verdict = |e: &super::model::Element| match &e.data {
        Some(ElemData::Verdict(v)) => Some(v.clone()),
        _ => None,
    };
    match key {
        [d, Expr::MetaL4proto, Expr::ThDport] if is_daddr(d) => {
            for e in elements {
                if let (
                    [
                        KeyPart::Value(a),
                        KeyPart::Value(Value::Proto(p)),
                        KeyPart::Value(Value::Port(port)),
                    ],
                    Some(v),
                ) = (e.key.as_slice(), verdict(e))
                    && let (Some(address), Some(protocol)) = (ip(*a), protocol(*p))
                {
                    out.push((
                        FrontendKey {
                            address,
                            port: *port,
                            protocol,
                        },
                        v,
                    ));
                }
            }
        }
        [Expr::MetaL4proto, Expr::ThDport] => {
            let addresses: Vec<IpAddr> = stmts
                .iter()
                .filter_map(|s| match s {
                    Stmt::Lookup {
                        key,
                        set,
                        negate: false,
                    } if matches!(key.as_slice(), [d] if is_daddr(d)) => table.set(set),
                    _ => None,
                })
                .flat_map(|s| s.elements.iter())
                .filter_map(|e| match e.key.as_slice() {
                    [KeyPart::Value(a)] => ip(*a),
                    [KeyPart::Prefix(net)] if net.prefix_len() == net.max_prefix_len() => Some(net.addr()),
                    _ => None,
                })
                .collect();
            for e in elements {
                if let ([KeyPart::Value(Value::Proto(p)), KeyPart::Value(Value::Port(port))], Some(v)) =
                    (e.key.as_slice(), verdict(e))
                    && let Some(protocol) = protocol(*p)
                {
                    for &address in &addresses {
                        out.push((
                            FrontendKey {
                                address,
                                port: *port,
                                protocol,
                            },
                            v.clone(),
                        ));
                    }
                }
            }
        }
        _ => {}
    }
    out
}

fn ip(v: Value) -> Option<IpAddr> {
    match v {
        Value::Ipv4(a) => Some(a.into()),
        Value::Ipv6(a) => Some(a.into()),
        _ => None,
    }
}

fn protocol(p: u8) -> Option<Protocol> {
    match p {
        TCP => Some(Protocol::Tcp),
        UDP => Some(Protocol::Udp),
        SCTP => Some(Protocol::Sctp),
        _ => None,
    }
}

fn follow_verdict(
    table: &Table,
    key: &FrontendKey,
    verdict: &VerdictData,
    seen: &mut BTreeSet<String>,
    out: &mut Programmed,
) {
    match verdict {
        VerdictData::Drop => refuse(out, Refusal::Drop),
        VerdictData::Jump(c) | VerdictData::Goto(c) => reach(table, key, c.as_str(), seen, out),
        VerdictData::Accept | VerdictData::Return => {}
    }
}

/// Record a refusal; a reject, once seen, is kept (the plan asks for a
/// reject explicitly, a drop is the fallback of policies).
fn refuse(out: &mut Programmed, r: Refusal) {
    if out.refusal != Some(Refusal::Reject) {
        out.refusal = Some(r);
    }
}

/// What `chain` can do with a new connection to `key` (each chain once).
fn reach(table: &Table, key: &FrontendKey, chain: &str, seen: &mut BTreeSet<String>, out: &mut Programmed) {
    if !seen.insert(chain.to_string()) {
        return;
    }
    let Some(chain) = table.chains.iter().find(|c| c.name.as_str() == chain) else {
        return;
    };
    for rule in &chain.rules {
        for stmt in &rule.stmts {
            match stmt {
                Stmt::Dnat(NatTo::Addr { addr, port }) => {
                    out.dnat.insert(SocketAddr::new(*addr, port.unwrap_or(0)));
                }
                Stmt::Dnat(NatTo::Map { key: lookup, map, port }) => {
                    let elements: Vec<_> = table
                        .set(map)
                        .map(|m| m.elements.iter().filter(|e| key_matches(lookup, key, &e.key)).collect())
                        .unwrap_or_default();
                    out.dnat
                        .extend(elements.iter().filter_map(|e| target(e.data.as_ref()?, *port)));
                    // Every slot the generator can pick must be mapped, or the
                    // connections that draw it are not translated at all.
                    if let Some(slots) = slots(lookup) {
                        let mapped = elements.len().min(slots as usize);
                        if mapped < slots as usize {
                            out.unmapped.push(format!(
                                "{} of {slots} slots unmapped in map {map} (chain {})",
                                slots as usize - mapped,
                                chain.name.as_str()
                            ));
                        }
                    }
                }
                Stmt::Reject(_) => refuse(out, Refusal::Reject),
                Stmt::Verdict(v) => match v {
                    super::model::Verdict::Drop => refuse(out, Refusal::Drop),
                    super::model::Verdict::Jump(c) | super::model::Verdict::Goto(c) => {
                        reach(table, key, c.as_str(), seen, out)
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
}

/// Whether a map element's key can be produced by `lookup` for a packet to
/// `frontend`: destination fields must equal the frontend's, a generator
/// (`numgen`, `jhash`, `symhash` mod N) yields any slot below N, anything
/// else (a source field) any value.
fn key_matches(lookup: &[Expr], frontend: &FrontendKey, key: &[KeyPart]) -> bool {
    lookup.len() == key.len()
        && lookup.iter().zip(key).all(|(expr, part)| {
            let KeyPart::Value(v) = part else {
                return true;
            };
            match expr {
                Expr::IpDaddr | Expr::Ip6Daddr => ip(*v) == Some(frontend.address),
                Expr::MetaL4proto => matches!(v, Value::Proto(p) if protocol(*p) == Some(frontend.protocol)),
                Expr::ThDport => *v == Value::Port(frontend.port),
                Expr::Numgen { modulus } | Expr::Jhash { modulus, .. } | Expr::Symhash { modulus } => {
                    matches!(v, Value::Int(slot) if slot < modulus)
                }
                Expr::Const(c) => c == v,
                _ => true,
            }
        })
}

/// The number of slots a lookup key draws from, when it is the frontend's
/// destination fields and one generator (`numgen`/`jhash`/`symhash` mod N):
/// each matching element then maps exactly one slot.
fn slots(lookup: &[Expr]) -> Option<u32> {
    let mut generators = lookup.iter().filter_map(|e| match e {
        Expr::Numgen { modulus } | Expr::Jhash { modulus, .. } | Expr::Symhash { modulus } => Some(*modulus),
        _ => None,
    });
    let modulus = generators.next()?;
    let destination_only = lookup.iter().all(|e| {
        matches!(
            e,
            Expr::IpDaddr
                | Expr::Ip6Daddr
                | Expr::MetaL4proto
                | Expr::ThDport
                | Expr::Numgen { .. }
                | Expr::Jhash { .. }
                | Expr::Symhash { .. }
        )
    });
    (generators.next().is_none() && destination_only).then_some(modulus)
}

/// The DNAT target of a map element: `addr . port`, or `addr` with a fixed port.
fn target(data: &ElemData, port: Option<u16>) -> Option<SocketAddr> {
    match data {
        ElemData::Values(v) => match v.as_slice() {
            [a, Value::Port(p)] => Some(SocketAddr::new(ip(*a)?, *p)),
            [a] => Some(SocketAddr::new(ip(*a)?, port.unwrap_or(0))),
            _ => None,
        },
        ElemData::Verdict(_) => None,
    }
}
