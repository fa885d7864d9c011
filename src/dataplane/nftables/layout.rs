//! The table layout (see `LAYOUT.md` beside this file for the picture, the
//! measurements and the reasons), built here from a small, mode-local
//! description of services so that it can be measured and tested before
//! the shared frontend plan exists. Phase 2 builds the same objects from
//! that plan.
//!
//! What a routine change touches:
//! - an endpoint replaced (same count): two elements of one data map;
//! - the endpoint count changes: those elements plus one rule replaced in
//!   place (its `numgen random mod N`), because only a modulus equal to the
//!   endpoint count keeps selection exactly even;
//! - a service added or removed: its chain, its map, its rules, and one
//!   verdict-map element (the only jump-graph change).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::model::*;
use super::tx::{Op, Transaction};

/// Name of our table.
pub const TABLE: &str = "sliceproxy";
/// The packet mark bit that asks for masquerading (kube-proxy's 0x4000).
pub const MASQ_MARK: u32 = 0x4000;

/// A service port, as much as the layout needs to know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvcSpec {
    /// Stable id (phase 2: a hash of the service port key).
    pub id: u32,
    /// ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// Protocol number.
    pub proto: u8,
    /// Service port.
    pub port: u16,
    /// NodePort, if any.
    pub node_port: Option<u16>,
    /// Endpoints (address, target port).
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

impl SvcSpec {
    /// The service's chain.
    pub fn chain(&self) -> Name {
        name(&format!("svc-{:08x}", self.id))
    }

    /// Its endpoint slot map.
    pub fn map(&self) -> Name {
        name(&format!("eps-{:08x}", self.id))
    }

    /// Its NodePort chain.
    pub fn external_chain(&self) -> Name {
        name(&format!("ext-{:08x}", self.id))
    }

    fn comment(&self) -> String {
        format!("service {} {}:{}", self.id, self.cluster_ip, self.port)
    }
}

/// Node-wide settings of the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Pod network: traffic from elsewhere to a service is masqueraded.
    pub cluster_cidr: Ipv4Net,
    /// How endpoints are selected.
    pub selection: Selection,
    /// Which chains a service needs (what the kernel's jump-graph
    /// validation walks at commit).
    pub variant: Variant,
}

/// The chain structure of the layout; measured against each other in
/// `benches/nftables_layout.rs` (see LAYOUT.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Variant {
    /// Phase 1: a chain per service port (`svc-ID`, plus `ext-ID` for a
    /// node port) that jumps to `mark-for-masquerade` and DNATs through the
    /// service's own map `@eps-ID`.
    #[default]
    PerService,
    /// The same chains without the jump: masquerading is decided by two
    /// global rules in the dispatch chain keyed by sets of frontends.
    PerServiceGlobalMasq,
    /// No chain per service: the dispatch maps `goto` one of a few shared
    /// chains per endpoint count (`pick-N`, `pick-np-N`) that DNAT through
    /// one global map keyed by frontend and slot (`@backends`,
    /// `@np-backends`). A count change moves the frontend's dispatch
    /// element to another shared chain.
    Shared,
}

/// Shared pick chains exist for counts 1..=this in the synthetic layout.
pub const SHARED_MAX: usize = 32;

/// Endpoint selection: both give every endpoint the same share of new
/// connections; they differ in what an endpoint-count change touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// `numgen random mod N` into a map of N slots: exact 1/N; a count
    /// change replaces the rule (a jump-graph validation in the kernel).
    Modulus,
    /// `numgen random mod 65536` into an interval map of N ranges (one
    /// field: the kernel's rbtree backend): each share within 1/65536 of
    /// 1/N; a count change rewrites the ranges (data only), the rule never
    /// changes.
    Ranges,
    /// The same ranges in a two-field interval map keyed
    /// `numgen random mod 65536 . meta l4proto` (the pipapo backend).
    RangesConcat,
}

/// The random space of [`Selection::Ranges`].
pub const RANGE_SPACE: u32 = 65536;

fn l4(p: u8) -> Stmt {
    Stmt::Cmp {
        left: Expr::MetaL4proto,
        op: CmpOp::Eq,
        right: Value::Proto(p),
    }
}

/// The endpoint-selection rule: `meta l4proto P dnat to numgen random mod
/// N map @eps-ID`. With no endpoint it rejects instead.
pub fn select_rule(s: &SvcSpec, sel: Selection) -> Rule {
    if s.endpoints.is_empty() {
        return Rule::new(vec![Stmt::Verdict(Verdict::Jump(name("reject-chain")))]);
    }
    let modulus = match sel {
        Selection::Modulus => s.endpoints.len() as u32,
        Selection::Ranges | Selection::RangesConcat => RANGE_SPACE,
    };
    let mut key = vec![Expr::Numgen { modulus }];
    if sel == Selection::RangesConcat {
        key.push(Expr::MetaL4proto);
    }
    Rule::new(vec![
        l4(s.proto),
        Stmt::Dnat(NatTo::Map {
            key,
            map: s.map(),
            port: None,
        }),
    ])
}

/// The slot elements of a service: slot i (or range i) -> endpoint i.
pub fn slot_elements(s: &SvcSpec, sel: Selection) -> Vec<Element> {
    let n = s.endpoints.len() as u64;
    s.endpoints
        .iter()
        .enumerate()
        .map(|(i, (ip, port))| {
            let e = Element::map(&[Value::Int(i as u32)], &[Value::Ipv4(*ip), Value::Port(*port)]);
            match sel {
                Selection::Modulus => e,
                Selection::Ranges | Selection::RangesConcat => {
                    let space = u64::from(RANGE_SPACE);
                    let (lo, hi) = (i as u64 * space / n, (i as u64 + 1) * space / n - 1);
                    let mut key = vec![KeyPart::Range(Value::Int(lo as u32), Value::Int(hi as u32))];
                    if sel == Selection::RangesConcat {
                        key.push(KeyPart::Value(Value::Proto(s.proto)));
                    }
                    Element { key, ..e }
                }
            }
        })
        .collect()
}

/// A service's own objects: map (with elements), chains (with rules).
/// Empty for [`Variant::Shared`] (see [`shared_elements`]).
pub fn service_objects(s: &SvcSpec, settings: &Settings) -> (Set, Vec<Chain>) {
    let mut key = vec![Expr::Numgen { modulus: 1 }];
    if settings.selection == Selection::RangesConcat {
        key.push(Expr::MetaL4proto);
    }
    let mut map = Set::new(
        s.map(),
        SetType::Typeof {
            key,
            data: Some(vec![Expr::IpDaddr, Expr::ThDport]),
        },
    );
    map.flags.interval = settings.selection != Selection::Modulus;
    map.elements = slot_elements(s, settings.selection);
    let mut chain = Chain::regular(s.chain());
    chain.comment = Some(Comment::new(&s.comment()));
    if settings.variant == Variant::PerService {
        chain.rules.push(Rule::new(vec![
            Stmt::Prefix {
                left: Expr::IpSaddr,
                negate: true,
                net: settings.cluster_cidr.into(),
            },
            Stmt::Verdict(Verdict::Jump(name("mark-for-masquerade"))),
        ]));
    }
    chain.rules.push(select_rule(s, settings.selection));
    let mut chains = vec![chain];
    if s.node_port.is_some() {
        let mut ext = Chain::regular(s.external_chain());
        if settings.variant == Variant::PerService {
            ext.rules.push(Rule::new(vec![Stmt::Verdict(Verdict::Jump(name(
                "mark-for-masquerade",
            )))]));
        }
        ext.rules.push(Rule::new(vec![Stmt::Verdict(Verdict::Goto(s.chain()))]));
        chains.push(ext);
    }
    (map, chains)
}

/// The index of the selection rule in a service chain.
pub fn select_rule_index(settings: &Settings) -> usize {
    usize::from(settings.variant == Variant::PerService)
}

/// The shared pick chain for `n` endpoints (`np`: a node port's).
pub fn pick_chain(n: usize, np: bool) -> Name {
    if n == 0 {
        return name("reject-chain");
    }
    name(&format!("pick-{}{n}", if np { "np-" } else { "" }))
}

/// [`Variant::Shared`]: the elements of one service in `@backends` and
/// `@np-backends` (frontend key and slot -> endpoint).
pub fn shared_elements(s: &SvcSpec) -> (Vec<Element>, Vec<Element>) {
    let ip = s
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, (a, p))| {
            Element::map(
                &[
                    Value::Ipv4(s.cluster_ip),
                    Value::Proto(s.proto),
                    Value::Port(s.port),
                    Value::Int(i as u32),
                ],
                &[Value::Ipv4(*a), Value::Port(*p)],
            )
        })
        .collect();
    let np = s
        .node_port
        .map(|np| {
            s.endpoints
                .iter()
                .enumerate()
                .map(|(i, (a, p))| {
                    Element::map(
                        &[Value::Proto(s.proto), Value::Port(np), Value::Int(i as u32)],
                        &[Value::Ipv4(*a), Value::Port(*p)],
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (ip, np)
}

fn shared_targets(s: &SvcSpec, settings: &Settings) -> (Name, Name) {
    if settings.variant == Variant::Shared {
        let n = s.endpoints.len();
        (pick_chain(n, false), pick_chain(n, true))
    } else {
        (s.chain(), s.external_chain())
    }
}

/// The dispatch elements of a service.
pub fn dispatch_elements(s: &SvcSpec) -> (Element, Option<Element>) {
    dispatch_elements_in(
        s,
        &Settings {
            cluster_cidr: "10.0.0.0/8".parse().expect("constant"),
            selection: Selection::Modulus,
            variant: Variant::PerService,
        },
    )
}

/// The dispatch elements of a service in a layout variant.
pub fn dispatch_elements_in(s: &SvcSpec, settings: &Settings) -> (Element, Option<Element>) {
    let (ip_target, np_target) = shared_targets(s, settings);
    (
        Element::vmap(
            &[Value::Ipv4(s.cluster_ip), Value::Proto(s.proto), Value::Port(s.port)],
            VerdictData::Goto(ip_target),
        ),
        s.node_port
            .map(|np| Element::vmap(&[Value::Proto(s.proto), Value::Port(np)], VerdictData::Goto(np_target))),
    )
}

/// [`Variant::PerServiceGlobalMasq`]: the elements of the masquerade sets.
pub fn masq_elements(s: &SvcSpec) -> (Element, Option<Element>) {
    (
        Element::key(&[Value::Ipv4(s.cluster_ip), Value::Proto(s.proto), Value::Port(s.port)]),
        s.node_port
            .map(|np| Element::key(&[Value::Proto(s.proto), Value::Port(np)])),
    )
}

/// The fixed part: base chains, dispatch maps, masquerading, rejects.
pub fn skeleton() -> Table {
    skeleton_for(&Settings {
        cluster_cidr: "10.244.0.0/16".parse().expect("constant"),
        selection: Selection::Modulus,
        variant: Variant::PerService,
    })
}

/// The fixed part of a layout variant.
pub fn skeleton_for(settings: &Settings) -> Table {
    let mut t = Table::new(Family::Ip, name(TABLE));
    t.comment = Some(Comment::new("rules of sliceproxy, the node proxy; do not edit"));
    t.sets = vec![
        Set::new(
            name("service-ips"),
            SetType::Types {
                key: vec![DataType::Ipv4Addr, DataType::InetProto, DataType::InetService],
                data: Some(SetData::Verdict),
            },
        ),
        Set::new(
            name("service-nodeports"),
            SetType::Types {
                key: vec![DataType::InetProto, DataType::InetService],
                data: Some(SetData::Verdict),
            },
        ),
    ];
    let services = Rule::new(vec![Stmt::Verdict(Verdict::Jump(name("services-dispatch")))]);
    let mut pre = Chain::base(name("nat-prerouting"), ChainType::Nat, Hook::Prerouting, -100);
    pre.rules = vec![services.clone()];
    let mut out = Chain::base(name("nat-output"), ChainType::Nat, Hook::Output, -100);
    out.rules = vec![services];
    let mut post = Chain::base(name("nat-postrouting"), ChainType::Nat, Hook::Postrouting, 100);
    post.rules = vec![
        Rule::new(vec![
            Stmt::Mask {
                left: Expr::MetaMark,
                mask: MASQ_MARK,
                negate: false,
                value: 0,
            },
            Stmt::Verdict(Verdict::Return),
        ]),
        Rule::new(vec![Stmt::Masquerade { fully_random: true }]),
    ];
    let mut dispatch = Chain::regular(name("services-dispatch"));
    let fib_local = Stmt::Cmp {
        left: Expr::FibDaddrType,
        op: CmpOp::Eq,
        right: Value::AddrType(RTN_LOCAL),
    };
    if settings.variant == Variant::PerServiceGlobalMasq {
        t.sets.push(Set::new(
            name("masq-ips"),
            SetType::Types {
                key: vec![DataType::Ipv4Addr, DataType::InetProto, DataType::InetService],
                data: None,
            },
        ));
        t.sets.push(Set::new(
            name("masq-nodeports"),
            SetType::Types {
                key: vec![DataType::InetProto, DataType::InetService],
                data: None,
            },
        ));
        dispatch.rules.push(Rule::new(vec![
            Stmt::Prefix {
                left: Expr::IpSaddr,
                negate: true,
                net: settings.cluster_cidr.into(),
            },
            Stmt::Lookup {
                key: vec![Expr::IpDaddr, Expr::MetaL4proto, Expr::ThDport],
                set: name("masq-ips"),
                negate: false,
            },
            Stmt::MarkOr(MASQ_MARK),
        ]));
        dispatch.rules.push(Rule::new(vec![
            fib_local.clone(),
            Stmt::Lookup {
                key: vec![Expr::MetaL4proto, Expr::ThDport],
                set: name("masq-nodeports"),
                negate: false,
            },
            Stmt::MarkOr(MASQ_MARK),
        ]));
    }
    dispatch.rules.extend([
        Rule::new(vec![Stmt::Vmap {
            key: vec![Expr::IpDaddr, Expr::MetaL4proto, Expr::ThDport],
            map: name("service-ips"),
        }]),
        Rule::new(vec![
            fib_local,
            Stmt::Vmap {
                key: vec![Expr::MetaL4proto, Expr::ThDport],
                map: name("service-nodeports"),
            },
        ]),
    ]);
    let mut mark = Chain::regular(name("mark-for-masquerade"));
    mark.rules = vec![Rule::new(vec![Stmt::MarkOr(MASQ_MARK)])];
    let mut reject = Chain::regular(name("reject-chain"));
    reject.rules = vec![
        Rule::new(vec![l4(TCP), Stmt::Reject(Reject::TcpReset)]),
        Rule::new(vec![Stmt::Reject(Reject::IcmpPortUnreachable)]),
    ];
    t.chains = vec![pre, out, post, dispatch, mark, reject];
    if settings.variant == Variant::Shared {
        let backends = |n: &str, key: Vec<Expr>| {
            Set::new(
                name(n),
                SetType::Typeof {
                    key,
                    data: Some(vec![Expr::IpDaddr, Expr::ThDport]),
                },
            )
        };
        t.sets.push(backends(
            "backends-ip",
            vec![
                Expr::IpDaddr,
                Expr::MetaL4proto,
                Expr::ThDport,
                Expr::Numgen { modulus: 1 },
            ],
        ));
        t.sets.push(backends(
            "np-backends",
            vec![Expr::MetaL4proto, Expr::ThDport, Expr::Numgen { modulus: 1 }],
        ));
        for n in 1..=SHARED_MAX {
            let mut pick = Chain::regular(pick_chain(n, false));
            pick.rules = vec![
                Rule::new(vec![
                    Stmt::Prefix {
                        left: Expr::IpSaddr,
                        negate: true,
                        net: settings.cluster_cidr.into(),
                    },
                    Stmt::MarkOr(MASQ_MARK),
                ]),
                Rule::new(vec![Stmt::Dnat(NatTo::Map {
                    key: vec![
                        Expr::IpDaddr,
                        Expr::MetaL4proto,
                        Expr::ThDport,
                        Expr::Numgen { modulus: n as u32 },
                    ],
                    map: name("backends-ip"),
                    port: None,
                })]),
            ];
            let mut np = Chain::regular(pick_chain(n, true));
            np.rules = vec![
                Rule::new(vec![Stmt::MarkOr(MASQ_MARK)]),
                Rule::new(vec![Stmt::Dnat(NatTo::Map {
                    key: vec![Expr::MetaL4proto, Expr::ThDport, Expr::Numgen { modulus: n as u32 }],
                    map: name("np-backends"),
                    port: None,
                })]),
            ];
            t.chains.push(pick);
            t.chains.push(np);
        }
    }
    t
}

/// The set holding a shared element list, by name.
fn push_elements(t: &mut Table, set: &str, elements: Vec<Element>) {
    if let Some(s) = t.set_mut(&name(set)) {
        s.elements.extend(elements);
    }
}

/// The whole table for these services.
pub fn build(services: &[SvcSpec], settings: &Settings) -> Table {
    let mut t = skeleton_for(settings);
    let mut ips = Vec::new();
    let mut nps = Vec::new();
    for s in services {
        match settings.variant {
            Variant::Shared => {
                let (ip, np) = shared_elements(s);
                push_elements(&mut t, "backends-ip", ip);
                push_elements(&mut t, "np-backends", np);
            }
            Variant::PerService | Variant::PerServiceGlobalMasq => {
                let (map, chains) = service_objects(s, settings);
                t.sets.push(map);
                t.chains.extend(chains);
            }
        }
        if settings.variant == Variant::PerServiceGlobalMasq {
            let (ip, np) = masq_elements(s);
            push_elements(&mut t, "masq-ips", vec![ip]);
            push_elements(&mut t, "masq-nodeports", np.into_iter().collect());
        }
        let (ip, np) = dispatch_elements_in(s, settings);
        ips.push(ip);
        nps.extend(np);
    }
    t.sets[0].elements = ips;
    t.sets[1].elements = nps;
    t
}

/// A cold load in dependency order, dispatch elements last (no packet
/// reaches a service before its chain and map are complete), split into
/// transactions of at most `chunk` objects.
pub fn cold_load(table: &Table, chunk: usize) -> Vec<Transaction> {
    let mut tx = Transaction::create(table);
    // Move the dispatch elements to the end.
    let (dispatch, mut rest): (Vec<Op>, Vec<Op>) = tx.ops.drain(..).partition(|op| {
        matches!(op, Op::AddElements { set, .. } if set.as_str() == "service-ips" || set.as_str() == "service-nodeports")
    });
    rest.extend(dispatch);
    tx.ops = rest;
    tx.chunks(chunk)
}

/// Add a service: its map, chains, rules, then its dispatch elements.
pub fn add_service(s: &SvcSpec, settings: &Settings) -> Transaction {
    let mut tx = Transaction::new(Family::Ip, name(TABLE));
    if settings.variant == Variant::Shared {
        let (ip, np) = shared_elements(s);
        for (set, els) in [("backends-ip", ip), ("np-backends", np)] {
            if !els.is_empty() {
                tx.push(Op::AddElements {
                    set: name(set),
                    elements: els,
                });
            }
        }
    } else {
        let (map, chains) = service_objects(s, settings);
        tx.push(Op::AddSet(Set {
            elements: Vec::new(),
            ..map.clone()
        }));
        if !map.elements.is_empty() {
            tx.push(Op::AddElements {
                set: map.name.clone(),
                elements: map.elements,
            });
        }
        for c in &chains {
            tx.push(Op::AddChain(Chain {
                rules: Vec::new(),
                ..c.clone()
            }));
        }
        // The NodePort chain jumps into the service chain: rules of the
        // service chain first.
        for c in &chains {
            for r in &c.rules {
                tx.push(Op::AddRule {
                    chain: c.name.clone(),
                    rule: r.clone(),
                    echo: false,
                });
            }
        }
    }
    if settings.variant == Variant::PerServiceGlobalMasq {
        let (ip, np) = masq_elements(s);
        tx.push(Op::AddElements {
            set: name("masq-ips"),
            elements: vec![ip],
        });
        if let Some(np) = np {
            tx.push(Op::AddElements {
                set: name("masq-nodeports"),
                elements: vec![np],
            });
        }
    }
    let (ip, np) = dispatch_elements_in(s, settings);
    tx.push(Op::AddElements {
        set: name("service-ips"),
        elements: vec![ip],
    });
    if let Some(np) = np {
        tx.push(Op::AddElements {
            set: name("service-nodeports"),
            elements: vec![np],
        });
    }
    tx
}

/// Remove a service: dispatch elements first (nothing references its
/// chains any more), then chains and map.
pub fn remove_service(s: &SvcSpec) -> Transaction {
    remove_service_in(
        s,
        &Settings {
            cluster_cidr: "10.0.0.0/8".parse().expect("constant"),
            selection: Selection::Modulus,
            variant: Variant::PerService,
        },
    )
}

/// Remove a service from a layout variant.
pub fn remove_service_in(s: &SvcSpec, settings: &Settings) -> Transaction {
    let mut tx = Transaction::new(Family::Ip, name(TABLE));
    let (ip, np) = dispatch_elements_in(s, settings);
    tx.push(Op::DeleteElements {
        set: name("service-ips"),
        elements: vec![ip],
    });
    if let Some(np) = np {
        tx.push(Op::DeleteElements {
            set: name("service-nodeports"),
            elements: vec![np],
        });
    }
    if settings.variant == Variant::PerServiceGlobalMasq {
        let (ip, np) = masq_elements(s);
        tx.push(Op::DeleteElements {
            set: name("masq-ips"),
            elements: vec![ip],
        });
        if let Some(np) = np {
            tx.push(Op::DeleteElements {
                set: name("masq-nodeports"),
                elements: vec![np],
            });
        }
    }
    if settings.variant == Variant::Shared {
        let (ip, np) = shared_elements(s);
        for (set, els) in [("backends-ip", ip), ("np-backends", np)] {
            if !els.is_empty() {
                tx.push(Op::DeleteElements {
                    set: name(set),
                    elements: els,
                });
            }
        }
        return tx;
    }
    if s.node_port.is_some() {
        tx.push(Op::DeleteChain(s.external_chain()));
    }
    tx.push(Op::DeleteChain(s.chain()));
    tx.push(Op::DeleteSet(s.map()));
    tx
}

/// [`Variant::Shared`]: move a service from `old` to `new` endpoints: the
/// slots that changed in the global maps and, when the count changed, its
/// dispatch elements (now pointing at another pick chain).
pub fn change_endpoints_shared(old: &SvcSpec, new: &SvcSpec, settings: &Settings) -> Transaction {
    let mut tx = Transaction::new(Family::Ip, name(TABLE));
    if old.endpoints.len() != new.endpoints.len() {
        let (a, b) = (dispatch_elements_in(old, settings), dispatch_elements_in(new, settings));
        tx.push(Op::DeleteElements {
            set: name("service-ips"),
            elements: vec![a.0],
        });
        tx.push(Op::AddElements {
            set: name("service-ips"),
            elements: vec![b.0],
        });
        if let (Some(a), Some(b)) = (a.1, b.1) {
            tx.push(Op::DeleteElements {
                set: name("service-nodeports"),
                elements: vec![a],
            });
            tx.push(Op::AddElements {
                set: name("service-nodeports"),
                elements: vec![b],
            });
        }
    }
    let ((oi, on), (ni, nn)) = (shared_elements(old), shared_elements(new));
    for (set, before, after) in [("backends-ip", oi, ni), ("np-backends", on, nn)] {
        let gone: Vec<Element> = before.iter().filter(|e| !after.contains(e)).cloned().collect();
        let came: Vec<Element> = after.iter().filter(|e| !before.contains(e)).cloned().collect();
        if !gone.is_empty() {
            tx.push(Op::DeleteElements {
                set: name(set),
                elements: gone,
            });
        }
        if !came.is_empty() {
            tx.push(Op::AddElements {
                set: name(set),
                elements: came,
            });
        }
    }
    tx
}

/// Move a service from `old` to `new` endpoints: slot elements that
/// changed are deleted and added; if the selection rule changed (the count,
/// with [`Selection::Modulus`]; none to some endpoints, with either), it is
/// replaced in place (the caller knows its handle).
pub fn change_endpoints(old: &SvcSpec, new: &SvcSpec, sel: Selection, select_handle: u64) -> Transaction {
    let mut tx = Transaction::new(Family::Ip, name(TABLE));
    let (before, after) = (slot_elements(old, sel), slot_elements(new, sel));
    let gone: Vec<Element> = before.iter().filter(|e| !after.contains(e)).cloned().collect();
    let came: Vec<Element> = after.iter().filter(|e| !before.contains(e)).cloned().collect();
    if select_rule(old, sel) != select_rule(new, sel) {
        tx.push(Op::ReplaceRule {
            chain: new.chain(),
            handle: select_handle,
            rule: select_rule(new, sel),
        });
    }
    if !gone.is_empty() {
        tx.push(Op::DeleteElements {
            set: new.map(),
            elements: gone,
        });
    }
    if !came.is_empty() {
        tx.push(Op::AddElements {
            set: new.map(),
            elements: came,
        });
    }
    tx
}

/// Synthetic services for measurements: ClusterIPs from 10.96.0.0/12 (and
/// beyond for large counts), `endpoints` each from 10.244.0.0/16, every
/// fifth with a NodePort.
pub fn synthetic(count: usize, endpoints: usize) -> Vec<SvcSpec> {
    (0..count)
        .map(|i| {
            let i32 = i as u32;
            SvcSpec {
                id: i32,
                cluster_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i32),
                proto: if i % 7 == 3 { UDP } else { TCP },
                port: 80 + (i % 3) as u16,
                node_port: (i % 5 == 0).then(|| 30000 + ((i / 5) % 2768) as u16),
                endpoints: (0..endpoints)
                    .map(|e| {
                        let n = i32 * endpoints as u32 + e as u32;
                        (
                            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + n % 65_000 + 1),
                            8080 + (n / 65_000) as u16,
                        )
                    })
                    .collect(),
            }
        })
        .collect()
}
