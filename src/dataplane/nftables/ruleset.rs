//! The nftables layout built from the shared frontend plan: what one
//! service port puts into one family's table ([`PortImage`], compact, kept
//! by the backend as its image of the kernel), the fixed part of the table
//! ([`skeleton`]), and the shared chains every frontend jumps to
//! ([`Shape`]). `LAYOUT.md` beside this file has the picture and the
//! measurements behind it.
//!
//! The one idea: **no chain per service**. A frontend's dispatch element
//! names one of a few dozen shared chains, one per *shape* (how clients are
//! masqueraded and short-circuited, which endpoint set, how many
//! endpoints), and that chain DNATs through one global map keyed by
//! frontend and slot. So the kernel's jump-graph validation, which every
//! rule or verdict-element change triggers and which walks everything the
//! dispatch maps reach, walks a few dozen small chains whatever the number
//! of services; replacing an endpoint changes data elements only, and a
//! count change re-points one dispatch element per frontend.
//!
//! ClientIP affinity is the exception: it needs per-endpoint state (a
//! dynamic set of recent clients per endpoint), so such a service port gets
//! its own chains and sets, as in kube-proxy.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use super::maglev;
use super::model::*;
use crate::dataplane::frontends::{FrontendKind, FrontendPlan, Masquerade, NodeSettings, Route, SetKind, Treatment};
use crate::model::{IpFamily, Protocol, ServicePortKey};

/// Our table's name (in the `ip` and `ip6` families).
pub const TABLE: &str = "sliceproxy";
/// Written as the table's comment; a table of ours with another comment was
/// written by another layout version and is replaced, not patched.
pub const TABLE_COMMENT: &str = "sliceproxy service rules (layout 2), do not edit";
/// The packet mark bit that asks for masquerading (kube-proxy's 0x4000).
pub const MASQ_MARK: u32 = 0x4000;
/// Most clients a ClientIP-affinity set remembers per endpoint.
pub const AFFINITY_SET_SIZE: u32 = 65_535;
/// The seed of the consistent-hash scheduler's `jhash`: the same on every
/// node, so every node maps a flow to the same endpoint.
pub const MAGLEV_SEED: u32 = 0x5c1c_e0a1;

/// How new connections pick an endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Scheduler {
    /// `numgen random mod N`: each endpoint gets exactly 1/N of new
    /// connections (kube-proxy's behaviour).
    #[default]
    Random,
    /// Consistent hashing (Maglev): a hash of the client's address and port
    /// picks one of M slots; removing one of N endpoints moves about 1/N of
    /// new flows instead of most of them. M elements per frontend.
    Maglev,
}

/// Settings of the nftables mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftSettings {
    /// The node's settings, shared with every mode.
    pub node: NodeSettings,
    /// Endpoint selection.
    pub scheduler: Scheduler,
}

/// The table family of an address family.
pub fn table_family(f: IpFamily) -> Family {
    match f {
        IpFamily::V4 => Family::Ip,
        IpFamily::V6 => Family::Ip6,
    }
}

/// How a frontend's dispatch map keys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Via {
    /// `daddr . l4proto . dport` in `@service-ips`.
    Ip,
    /// `l4proto . dport` in `@service-nodeports` (every node-port address).
    NodePort,
}

impl Via {
    fn word(self) -> &'static str {
        match self {
            Via::Ip => "ip",
            Via::NodePort => "np",
        }
    }
}

/// A frontend as the dispatch maps key it (protocol number, port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendKey {
    /// An address: cluster IP, external IP, load-balancer IP.
    Ip(IpAddr, u8, u16),
    /// A node port (on every node-port address).
    NodePort(u8, u16),
}

impl FrontendKey {
    /// How it is dispatched.
    pub fn via(self) -> Via {
        match self {
            FrontendKey::Ip(..) => Via::Ip,
            FrontendKey::NodePort(..) => Via::NodePort,
        }
    }

    /// The key fields of its dispatch element.
    pub fn values(self) -> Vec<Value> {
        match self {
            FrontendKey::Ip(a, p, port) => vec![Value::ip(a), Value::Proto(p), Value::Port(port)],
            FrontendKey::NodePort(p, port) => vec![Value::Proto(p), Value::Port(port)],
        }
    }
}

impl std::fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrontendKey::Ip(a, p, port) => write!(f, "{} {}", SocketAddr::new(*a, *port), proto_word(*p)),
            FrontendKey::NodePort(p, port) => write!(f, "node port {port}/{}", proto_word(*p)),
        }
    }
}

fn proto_word(p: u8) -> &'static str {
    match p {
        TCP => "tcp",
        UDP => "udp",
        SCTP => "sctp",
        _ => "?",
    }
}

/// The protocol number of a service port.
pub fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => TCP,
        Protocol::Udp => UDP,
        Protocol::Sctp => SCTP,
    }
}

/// Which connections a shared chain masquerades (see [`Masquerade`]; the
/// cluster CIDR is the node's, so it is not part of the shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MasqKind {
    /// None.
    Never,
    /// Sources outside the cluster CIDR.
    OutsideCidr,
    /// Sources on this node.
    Node,
    /// Every connection.
    Always,
}

impl MasqKind {
    fn of(m: Masquerade) -> MasqKind {
        match m {
            Masquerade::Never => MasqKind::Never,
            Masquerade::OutsideClusterCidr(_) => MasqKind::OutsideCidr,
            Masquerade::NodeSources => MasqKind::Node,
            Masquerade::Always => MasqKind::Always,
        }
    }

    fn word(self) -> &'static str {
        match self {
            MasqKind::Never => "none",
            MasqKind::OutsideCidr => "out",
            MasqKind::Node => "node",
            MasqKind::Always => "all",
        }
    }
}

/// One endpoint choice: a set and its number of slots (the endpoint count,
/// or the Maglev table size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PickRef {
    /// The endpoint set.
    pub set: SetKind,
    /// Slots (`mod` of the selection expression).
    pub slots: u32,
}

/// A shared chain: everything a frontend's treatment needs but the
/// frontend's identity, which the chain reads from the packet (the
/// destination) to look up the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shape {
    /// How the frontend is keyed.
    pub via: Via,
    /// The scheduler the slots use.
    pub hashed: bool,
    /// Which default clients are masqueraded.
    pub masq: MasqKind,
    /// Where default clients go; `None`: dropped.
    pub default: Option<PickRef>,
    /// Pods short-circuit to the cluster set of this many slots.
    pub pods: Option<u32>,
    /// The node short-circuits to the cluster set of this many slots.
    pub node: Option<u32>,
}

impl Shape {
    /// The chain's name, e.g. `fwd-ip-out-c10` or `fwd-np-node-l1-p3-n3`.
    pub fn chain(&self) -> Name {
        let h = if self.hashed { "h" } else { "" };
        let default = match self.default {
            Some(p) => format!("{}{h}{}", set_letter(p.set), p.slots),
            None => "drop".into(),
        };
        let mut s = format!("fwd-{}-{}-{default}", self.via.word(), self.masq.word());
        if let Some(n) = self.pods {
            s.push_str(&format!("-p{h}{n}"));
        }
        if let Some(n) = self.node {
            s.push_str(&format!("-n{h}{n}"));
        }
        name(&s)
    }

    /// The endpoint sets its chain reads.
    pub fn sets(&self) -> BTreeSet<SetKind> {
        let mut s = BTreeSet::new();
        if let Some(p) = self.default {
            s.insert(p.set);
        }
        if self.pods.is_some() || self.node.is_some() {
            s.insert(SetKind::Cluster);
        }
        s
    }
}

fn set_letter(s: SetKind) -> &'static str {
    match s {
        SetKind::Cluster => "c",
        SetKind::Local => "l",
    }
}

/// Where a dispatch element sends a new connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// No usable endpoint anywhere: refused.
    Reject,
    /// Endpoints exist, none for these clients: dropped.
    Drop,
    /// A shared chain.
    Shape(Shape),
    /// A chain of the port's own (ClientIP affinity).
    Own(Name),
}

impl Target {
    /// The element's verdict.
    pub fn verdict(&self) -> VerdictData {
        match self {
            Target::Reject => VerdictData::Goto(name(REJECT_CHAIN)),
            Target::Drop => VerdictData::Drop,
            Target::Shape(s) => VerdictData::Goto(s.chain()),
            Target::Own(c) => VerdictData::Goto(c.clone()),
        }
    }
}

/// The sets and maps of the table (all of them exist in both families).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetId {
    /// `daddr . l4proto . dport : verdict`.
    ServiceIps,
    /// `l4proto . dport : verdict`.
    ServiceNodeports,
    /// Addresses that serve node ports.
    NodeportIps,
    /// Every cluster IP (reject an unknown port).
    ClusterIps,
    /// Load-balancer frontends with source ranges.
    Firewall,
    /// `frontend . source range` pairs admitted by them.
    FirewallAllow,
    /// `endpoint . endpoint`: a pod reaching itself through a service.
    Hairpin,
    /// Endpoint slots: `frontend . slot : endpoint`.
    Slots(Via, SetKind),
}

impl SetId {
    /// Every set, in declaration order.
    pub const ALL: [SetId; 11] = [
        SetId::ServiceIps,
        SetId::ServiceNodeports,
        SetId::NodeportIps,
        SetId::ClusterIps,
        SetId::Firewall,
        SetId::FirewallAllow,
        SetId::Hairpin,
        SetId::Slots(Via::Ip, SetKind::Cluster),
        SetId::Slots(Via::Ip, SetKind::Local),
        SetId::Slots(Via::NodePort, SetKind::Cluster),
        SetId::Slots(Via::NodePort, SetKind::Local),
    ];

    /// Its name.
    pub fn name(self) -> Name {
        name(match self {
            SetId::ServiceIps => "service-ips",
            SetId::ServiceNodeports => "service-nodeports",
            SetId::NodeportIps => "nodeport-ips",
            SetId::ClusterIps => "cluster-ips",
            SetId::Firewall => "firewall-ips",
            SetId::FirewallAllow => "firewall-allow",
            SetId::Hairpin => "hairpin-ips",
            SetId::Slots(Via::Ip, SetKind::Cluster) => "slots-ip-cluster",
            SetId::Slots(Via::Ip, SetKind::Local) => "slots-ip-local",
            SetId::Slots(Via::NodePort, SetKind::Cluster) => "slots-np-cluster",
            SetId::Slots(Via::NodePort, SetKind::Local) => "slots-np-local",
        })
    }

    /// The set with this name.
    pub fn by_name(n: &Name) -> Option<SetId> {
        SetId::ALL.into_iter().find(|s| &s.name() == n)
    }

    /// Whether several service ports may hold the same element (it is
    /// counted, and deleted with its last holder).
    pub fn shared(self) -> bool {
        matches!(self, SetId::ClusterIps | SetId::Hairpin)
    }

    /// Its elements decide where a new connection goes first: they are
    /// loaded last in a cold load (nothing reaches a half-built service).
    pub fn dispatch(self) -> bool {
        matches!(self, SetId::ServiceIps | SetId::ServiceNodeports | SetId::ClusterIps)
    }
}

// === Fixed names ===

/// Base chain: nat prerouting.
pub const NAT_PREROUTING: &str = "nat-prerouting";
/// Base chain: nat output.
pub const NAT_OUTPUT: &str = "nat-output";
/// Base chain: nat postrouting.
pub const NAT_POSTROUTING: &str = "nat-postrouting";
/// Base chain: filter forward.
pub const FILTER_FORWARD: &str = "filter-forward";
/// Base chain: filter prerouting before DNAT (localhost node ports only).
pub const FILTER_PREROUTING: &str = "filter-prerouting";
/// The dispatch chain.
pub const SERVICES: &str = "services-dispatch";
/// Refuses a connection (ICMP port unreachable).
pub const REJECT_CHAIN: &str = "reject-chain";

fn addr_expr(f: IpFamily, src: bool) -> Expr {
    match (f, src) {
        (IpFamily::V4, true) => Expr::IpSaddr,
        (IpFamily::V4, false) => Expr::IpDaddr,
        (IpFamily::V6, true) => Expr::Ip6Saddr,
        (IpFamily::V6, false) => Expr::Ip6Daddr,
    }
}

fn addr_type(f: IpFamily) -> DataType {
    match f {
        IpFamily::V4 => DataType::Ipv4Addr,
        IpFamily::V6 => DataType::Ipv6Addr,
    }
}

/// The key expressions of a frontend, as the packet carries it.
fn via_key(f: IpFamily, via: Via) -> Vec<Expr> {
    match via {
        Via::Ip => vec![addr_expr(f, false), Expr::MetaL4proto, Expr::ThDport],
        Via::NodePort => vec![Expr::MetaL4proto, Expr::ThDport],
    }
}

fn set_def(f: IpFamily, id: SetId) -> Set {
    let a = addr_type(f);
    let types = |key: Vec<DataType>, data: Option<SetData>| SetType::Types { key, data };
    let kind = match id {
        SetId::ServiceIps => types(
            vec![a, DataType::InetProto, DataType::InetService],
            Some(SetData::Verdict),
        ),
        SetId::ServiceNodeports => types(vec![DataType::InetProto, DataType::InetService], Some(SetData::Verdict)),
        SetId::NodeportIps | SetId::ClusterIps => types(vec![a], None),
        SetId::Firewall => types(vec![a, DataType::InetProto, DataType::InetService], None),
        SetId::FirewallAllow => types(vec![a, DataType::InetProto, DataType::InetService, a], None),
        SetId::Hairpin => types(vec![a, a], None),
        SetId::Slots(via, _) => {
            let mut key = via_key(f, via);
            key.push(Expr::Numgen { modulus: 1 });
            SetType::Typeof {
                key,
                data: Some(vec![addr_expr(f, false), Expr::ThDport]),
            }
        }
    };
    let mut s = Set::new(id.name(), kind);
    s.flags.interval = id == SetId::FirewallAllow;
    s
}

fn rule(stmts: Vec<Stmt>) -> Rule {
    Rule::new(stmts)
}

fn base(n: &str, kind: ChainType, hook: Hook, prio: i32, rules: Vec<Rule>) -> Chain {
    let mut c = Chain::base(name(n), kind, hook, prio);
    c.rules = rules;
    c
}

fn reject_stmt(f: IpFamily) -> Stmt {
    Stmt::Reject(match f {
        IpFamily::V4 => Reject::IcmpPortUnreachable,
        IpFamily::V6 => Reject::Icmpv6PortUnreachable,
    })
}

fn loopback() -> IpNet {
    IpNet::V4("127.0.0.0/8".parse().expect("constant"))
}

/// The fixed part of one family's table: base chains, dispatch, rejects,
/// masquerading and every set (the node-port addresses filled in).
pub fn skeleton(f: IpFamily, settings: &NftSettings) -> Table {
    let mut t = Table::new(table_family(f), name(TABLE));
    t.comment = Some(Comment::new(TABLE_COMMENT));
    t.sets = SetId::ALL.iter().map(|id| set_def(f, *id)).collect();
    let fs = settings.node.family(f);
    if let Some(s) = t.set_mut(&SetId::NodeportIps.name()) {
        let mut addrs: Vec<IpAddr> = fs.node_port_addresses.clone();
        addrs.sort();
        addrs.dedup();
        s.elements = addrs.into_iter().map(|a| Element::key(&[Value::ip(a)])).collect();
    }
    let jump = |c: &str| rule(vec![Stmt::Verdict(Verdict::Jump(name(c)))]);
    let (d, s) = (addr_expr(f, false), addr_expr(f, true));
    let frontend = vec![d.clone(), Expr::MetaL4proto, Expr::ThDport];

    let mut services = vec![
        rule(vec![
            Stmt::Lookup {
                key: frontend.clone(),
                set: SetId::Firewall.name(),
                negate: false,
            },
            Stmt::Lookup {
                key: vec![d.clone(), Expr::MetaL4proto, Expr::ThDport, s.clone()],
                set: SetId::FirewallAllow.name(),
                negate: true,
            },
            Stmt::Verdict(Verdict::Drop),
        ])
        .with_comment("load-balancer source ranges"),
        rule(vec![Stmt::Vmap {
            key: frontend.clone(),
            map: SetId::ServiceIps.name(),
        }]),
        rule(vec![
            Stmt::Lookup {
                key: vec![d.clone()],
                set: SetId::NodeportIps.name(),
                negate: false,
            },
            Stmt::Vmap {
                key: via_key(f, Via::NodePort),
                map: SetId::ServiceNodeports.name(),
            },
        ]),
    ];
    let localhost = settings.node.localhost_node_ports && f == IpFamily::V4;
    if localhost {
        services.push(rule(vec![
            Stmt::Prefix {
                left: d.clone(),
                negate: false,
                net: loopback(),
            },
            Stmt::Vmap {
                key: via_key(f, Via::NodePort),
                map: SetId::ServiceNodeports.name(),
            },
        ]));
    }
    services.push(
        rule(vec![
            Stmt::Lookup {
                key: vec![d.clone()],
                set: SetId::ClusterIps.name(),
                negate: false,
            },
            reject_stmt(f),
        ])
        .with_comment("unknown port of a cluster IP"),
    );
    for cidr in &fs.service_cidrs {
        services.push(
            rule(vec![
                Stmt::Prefix {
                    left: d.clone(),
                    negate: false,
                    net: *cidr,
                },
                Stmt::Verdict(Verdict::Drop),
            ])
            .with_comment("unallocated cluster IP"),
        );
    }

    t.chains = vec![
        base(
            NAT_PREROUTING,
            ChainType::Nat,
            Hook::Prerouting,
            -100,
            vec![jump(SERVICES)],
        ),
        base(NAT_OUTPUT, ChainType::Nat, Hook::Output, -100, vec![jump(SERVICES)]),
        base(
            NAT_POSTROUTING,
            ChainType::Nat,
            Hook::Postrouting,
            100,
            vec![
                // A pod that reached itself through a service must not see
                // its own address as the source (its reply would not go
                // back through the node).
                rule(vec![
                    Stmt::CtStatusIn(ct_status::DNAT),
                    Stmt::Lookup {
                        key: vec![s.clone(), d.clone()],
                        set: SetId::Hairpin.name(),
                        negate: false,
                    },
                    Stmt::MarkOr(MASQ_MARK),
                ])
                .with_comment("hairpin"),
                rule(vec![
                    Stmt::Mask {
                        left: Expr::MetaMark,
                        mask: MASQ_MARK,
                        negate: false,
                        value: 0,
                    },
                    Stmt::Verdict(Verdict::Return),
                ]),
                // Clear the bit: a packet that re-enters the stack is not
                // masqueraded twice.
                rule(vec![Stmt::MarkXor(MASQ_MARK)]),
                rule(vec![Stmt::Masquerade { fully_random: true }]),
            ],
        ),
        base(
            FILTER_FORWARD,
            ChainType::Filter,
            Hook::Forward,
            0,
            vec![rule(vec![
                Stmt::CtStateIn(ct_state::INVALID),
                Stmt::Verdict(Verdict::Drop),
            ])],
        ),
    ];
    if localhost {
        // `route_localnet` lets packets to 127.0.0.0/8 arrive from outside;
        // only node-local clients may use node ports on loopback.
        t.chains.push(base(
            FILTER_PREROUTING,
            ChainType::Filter,
            Hook::Prerouting,
            -110,
            vec![
                rule(vec![
                    Stmt::Prefix {
                        left: d.clone(),
                        negate: false,
                        net: loopback(),
                    },
                    Stmt::Prefix {
                        left: s.clone(),
                        negate: true,
                        net: loopback(),
                    },
                    Stmt::CtStateIn(ct_state::NEW | ct_state::INVALID | ct_state::UNTRACKED),
                    Stmt::Verdict(Verdict::Drop),
                ])
                .with_comment("martian connections to localhost"),
            ],
        ));
    }
    let mut services_chain = Chain::regular(name(SERVICES));
    services_chain.rules = services;
    t.chains.push(services_chain);
    let mut reject = Chain::regular(name(REJECT_CHAIN));
    reject.rules = vec![rule(vec![reject_stmt(f)])];
    t.chains.push(reject);
    t
}

// === Treatments as rules ===

/// What a treatment rule does after its match: a DNAT through a slot map,
/// or a jump to an affinity chain.
#[derive(Debug, Clone)]
enum Pick {
    Shared {
        via: Via,
        set: SetKind,
        slots: u32,
        hashed: bool,
    },
    Own(Name),
}

impl Pick {
    fn stmts(&self, f: IpFamily) -> Vec<Stmt> {
        match self {
            Pick::Shared {
                via,
                set,
                slots,
                hashed,
            } => {
                let mut key = via_key(f, *via);
                key.push(if *hashed {
                    Expr::Jhash {
                        keys: vec![addr_expr(f, true), Expr::ThSport],
                        modulus: *slots,
                        seed: MAGLEV_SEED,
                    }
                } else {
                    Expr::Numgen { modulus: *slots }
                });
                vec![Stmt::Dnat(NatTo::Map {
                    key,
                    map: SetId::Slots(*via, *set).name(),
                    port: None,
                })]
            }
            Pick::Own(c) => vec![Stmt::Verdict(Verdict::Goto(c.clone()))],
        }
    }
}

fn mark() -> Stmt {
    Stmt::MarkOr(MASQ_MARK)
}

fn from_node() -> Stmt {
    Stmt::Cmp {
        left: Expr::FibSaddrType,
        op: CmpOp::Eq,
        right: Value::AddrType(RTN_LOCAL),
    }
}

/// The rules of a treatment: short-circuits first (pods, then the node),
/// then the masquerade mark of default clients, then their endpoint choice
/// (or a drop).
fn treatment_rules(
    f: IpFamily,
    settings: &NftSettings,
    masq: MasqKind,
    default: Option<Pick>,
    pods: Option<Pick>,
    node: Option<Pick>,
) -> Vec<Rule> {
    let pod_cidr = settings.node.family(f).pod_cidr();
    let mut rules = Vec::new();
    if let (Some(p), Some(cidr)) = (pods, pod_cidr) {
        let mut stmts = vec![Stmt::Prefix {
            left: addr_expr(f, true),
            negate: false,
            net: cidr,
        }];
        if masq == MasqKind::Always {
            stmts.push(mark());
        }
        stmts.extend(p.stmts(f));
        rules.push(rule(stmts).with_comment("pods use every endpoint"));
    }
    if let Some(p) = node {
        let mut stmts = vec![from_node()];
        if masq != MasqKind::Never {
            stmts.push(mark());
        }
        stmts.extend(p.stmts(f));
        rules.push(rule(stmts).with_comment("the node uses every endpoint"));
    }
    match masq {
        MasqKind::Never => {}
        MasqKind::OutsideCidr => match pod_cidr {
            Some(cidr) => rules.push(rule(vec![
                Stmt::Prefix {
                    left: addr_expr(f, true),
                    negate: true,
                    net: cidr,
                },
                mark(),
            ])),
            None => rules.push(rule(vec![mark()])),
        },
        MasqKind::Node => rules.push(rule(vec![from_node(), mark()])),
        MasqKind::Always => rules.push(rule(vec![mark()])),
    }
    match default {
        Some(p) => rules.push(rule(p.stmts(f))),
        None => rules.push(rule(vec![Stmt::Verdict(Verdict::Drop)])),
    }
    rules
}

/// The chain of a shape.
/// The smallest band of endpoint counts kept ready per kind of shape.
pub const SPARE_BAND: u32 = 16;

/// The shared chains a table holds for the shapes in use: those, and for
/// every single-count shape kind (random selection, one endpoint set, no
/// short-circuit) the same chain for every count from 1 up to a band
/// (at least [`SPARE_BAND`], the next power of two above the largest count
/// in use). Why: a new chain brings a `dnat` rule, and a rule with such an
/// expression makes the kernel re-validate the whole table at commit,
/// walking every element of the dispatch maps (37-39 ms at 10,000
/// services, measured), while re-pointing a dispatch element to a chain
/// that exists costs about what a service addition does (2.5 ms). Spare
/// chains are unreachable, so validation never walks them; a count change
/// inside the band never creates a chain. A function of the shapes in use
/// alone, so a full sync from scratch builds the same set.
pub fn chains_for(in_use: impl IntoIterator<Item = Shape>) -> BTreeSet<Shape> {
    let mut out = BTreeSet::new();
    let mut kinds: BTreeMap<Shape, u32> = BTreeMap::new();
    for shape in in_use {
        out.insert(shape);
        if let Some(p) = shape.default
            && !shape.hashed
            && shape.pods.is_none()
            && shape.node.is_none()
        {
            let kind = Shape {
                default: Some(PickRef { set: p.set, slots: 0 }),
                ..shape
            };
            let max = kinds.entry(kind).or_default();
            *max = (*max).max(p.slots);
        }
    }
    for (kind, max) in kinds {
        let band = SPARE_BAND.max((max + 1).next_power_of_two());
        let set = kind.default.expect("single-count kinds have a default").set;
        out.extend((1..=band).map(|slots| Shape {
            default: Some(PickRef { set, slots }),
            ..kind
        }));
    }
    out
}

pub fn shape_chain(shape: &Shape, f: IpFamily, settings: &NftSettings) -> Chain {
    let pick = |set: SetKind, slots: u32| Pick::Shared {
        via: shape.via,
        set,
        slots,
        hashed: shape.hashed,
    };
    let mut c = Chain::regular(shape.chain());
    c.rules = treatment_rules(
        f,
        settings,
        shape.masq,
        shape.default.map(|p| pick(p.set, p.slots)),
        shape.pods.map(|n| pick(SetKind::Cluster, n)),
        shape.node.map(|n| pick(SetKind::Cluster, n)),
    );
    c
}

// === One service port ===

/// Objects only one service port uses: its ClientIP-affinity chains and
/// sets, complete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Own {
    /// Sets (one per endpoint: the clients it served recently).
    pub sets: Vec<Set>,
    /// Chains: treatment chains, one pick chain per endpoint set, one
    /// chain per endpoint.
    pub chains: Vec<Chain>,
}

/// What one service port puts into one family's table. Compact: the
/// elements are generated on demand ([`PortImage::elements`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortImage {
    /// Dispatch elements: frontend and where it goes.
    pub dispatch: Vec<(FrontendKey, Target)>,
    /// The cluster-wide endpoints (when a shared chain reads them).
    pub cluster: Box<[SocketAddr]>,
    /// This node's endpoints (when a shared chain reads them).
    pub local: Box<[SocketAddr]>,
    /// The cluster IP (for `@cluster-ips`).
    pub cluster_ip: Option<IpAddr>,
    /// Endpoint addresses in use (for `@hairpin`).
    pub hairpin: Box<[IpAddr]>,
    /// Filtered load-balancer frontends and the source ranges they admit.
    pub firewall: Vec<(FrontendKey, Box<[IpNet]>)>,
    /// Affinity objects.
    pub own: Option<Box<Own>>,
    /// Frontends another service port holds (not programmed for this one).
    pub conflicts: Vec<FrontendKey>,
}

/// A stable name for one of a port's own objects: kind prefix and the first
/// 80 bits of SHA-256 of what it is, in lowercase base 32.
pub fn own_name(kind: &str, what: &str) -> Name {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let digest = Sha256::digest(what.as_bytes());
    let mut bits: u128 = 0;
    for b in &digest[..10] {
        bits = (bits << 8) | u128::from(*b);
    }
    let text: String = (0..16)
        .map(|i| ALPHABET[((bits >> (75 - 5 * i)) & 31) as usize] as char)
        .collect();
    name(&format!("{kind}-{text}"))
}

impl PortImage {
    /// Whether the port programs nothing.
    pub fn is_empty(&self) -> bool {
        self.dispatch.is_empty() && self.cluster_ip.is_none() && self.hairpin.is_empty() && self.own.is_none()
    }

    fn endpoints(&self, set: SetKind) -> &[SocketAddr] {
        match set {
            SetKind::Cluster => &self.cluster,
            SetKind::Local => &self.local,
        }
    }

    /// Every element this port puts into the shared sets and maps.
    pub fn elements(&self, f: IpFamily) -> Vec<(SetId, Element)> {
        let mut out = Vec::new();
        self.for_each_element(f, |id, e| out.push((id, e)));
        out
    }

    /// Visit every element (without collecting them).
    pub fn for_each_element(&self, _f: IpFamily, mut visit: impl FnMut(SetId, Element)) {
        for (fk, target) in &self.dispatch {
            let id = match fk.via() {
                Via::Ip => SetId::ServiceIps,
                Via::NodePort => SetId::ServiceNodeports,
            };
            visit(id, Element::vmap(&fk.values(), target.verdict()));
            if let Target::Shape(shape) = target {
                for set in shape.sets() {
                    let slots = if set == SetKind::Cluster {
                        shape
                            .default
                            .filter(|p| p.set == set)
                            .map(|p| p.slots)
                            .or(shape.pods)
                            .or(shape.node)
                    } else {
                        shape.default.map(|p| p.slots)
                    };
                    let Some(slots) = slots else { continue };
                    let eps = self.endpoints(set);
                    for_each_slot(eps, slots, shape.hashed, |slot, ep| {
                        let mut key = fk.values();
                        key.push(Value::Int(slot));
                        visit(
                            SetId::Slots(fk.via(), set),
                            Element::map(&key, &[Value::ip(ep.ip()), Value::Port(ep.port())]),
                        );
                    });
                }
            }
        }
        for (fk, allow) in &self.firewall {
            visit(SetId::Firewall, Element::key(&fk.values()));
            for net in allow.iter() {
                let mut key: Vec<KeyPart> = fk.values().into_iter().map(KeyPart::Value).collect();
                key.push(KeyPart::Prefix(net.trunc()));
                visit(
                    SetId::FirewallAllow,
                    Element {
                        key,
                        data: None,
                        timeout: None,
                        comment: None,
                    },
                );
            }
        }
        if let Some(ip) = self.cluster_ip {
            visit(SetId::ClusterIps, Element::key(&[Value::ip(ip)]));
        }
        for ip in self.hairpin.iter() {
            visit(SetId::Hairpin, Element::key(&[Value::ip(*ip), Value::ip(*ip)]));
        }
    }

    /// The shared chains its dispatch elements jump to.
    pub fn shapes(&self) -> BTreeSet<Shape> {
        self.dispatch
            .iter()
            .filter_map(|(_, t)| match t {
                Target::Shape(s) => Some(*s),
                _ => None,
            })
            .collect()
    }
}

/// Call `f(slot, endpoint)` for every slot of a selection over `eps`:
/// slot i is endpoint i (sorted) for random selection, the Maglev owner of
/// the slot for consistent hashing.
pub fn for_each_slot(eps: &[SocketAddr], slots: u32, hashed: bool, mut f: impl FnMut(u32, SocketAddr)) {
    if eps.is_empty() {
        return;
    }
    if !hashed {
        for (i, ep) in eps.iter().enumerate().take(slots as usize) {
            f(i as u32, *ep);
        }
        return;
    }
    let names: Vec<String> = eps.iter().map(|e| e.to_string()).collect();
    for (slot, owner) in maglev::build(&names, slots).into_iter().enumerate() {
        f(slot as u32, eps[owner as usize]);
    }
}

fn slots_for(n: usize, settings: &NftSettings) -> u32 {
    match settings.scheduler {
        Scheduler::Random => n as u32,
        Scheduler::Maglev => maglev::table_size(n),
    }
}

/// The frontend keys a plan's frontends program (deduplicated, in order).
pub fn frontend_keys(plan: &FrontendPlan<'_>) -> Vec<FrontendKey> {
    let proto = proto_number(plan.protocol());
    let mut out: Vec<FrontendKey> = Vec::new();
    for fe in &plan.frontends {
        let fk = match fe.kind {
            FrontendKind::NodePort => FrontendKey::NodePort(proto, fe.port),
            _ => FrontendKey::Ip(fe.address, proto, fe.port),
        };
        if !out.contains(&fk) {
            out.push(fk);
        }
    }
    out
}

/// Translate one service port's frontend plan. `owns` says which frontends
/// this port holds (another port may hold the same address and port: the
/// first by key order wins, see the backend). The result depends on the
/// plan alone (the tracker reports a port only when its plan changed).
pub fn translate(plan: &FrontendPlan<'_>, settings: &NftSettings, owns: &dyn Fn(&FrontendKey) -> bool) -> PortImage {
    let proto = proto_number(plan.protocol());
    let hashed = settings.scheduler == Scheduler::Maglev;
    let mut image = PortImage {
        cluster_ip: plan.frontends_of(FrontendKind::ClusterIp).next().map(|fe| fe.address),
        ..PortImage::default()
    };
    let affinity = plan.affinity_timeout;
    let mut own = Own::default();
    let mut own_treatments: Vec<(Via, bool)> = Vec::new();
    let mut seen: Vec<FrontendKey> = Vec::new();
    for fe in &plan.frontends {
        let fk = match fe.kind {
            FrontendKind::NodePort => FrontendKey::NodePort(proto, fe.port),
            _ => FrontendKey::Ip(fe.address, proto, fe.port),
        };
        if seen.contains(&fk) {
            continue;
        }
        seen.push(fk);
        if !owns(&fk) {
            image.conflicts.push(fk);
            continue;
        }
        let internal = fe.kind == FrontendKind::ClusterIp;
        let target = match target_of(&fe.treatment, fk.via(), plan, settings, hashed) {
            None if matches!(fe.treatment.route, Route::Reject) => Target::Reject,
            None => Target::Drop,
            Some(_) if affinity.is_some() => {
                if !own_treatments.contains(&(fk.via(), internal)) {
                    own_treatments.push((fk.via(), internal));
                }
                Target::Own(treatment_chain_name(plan, fk.via(), internal))
            }
            Some(shape) => Target::Shape(shape),
        };
        if fe.filtered && !matches!(fe.treatment.route, Route::Reject) {
            let mut allow: Vec<IpNet> = plan.source_ranges.iter().map(|n| n.trunc()).collect();
            if plan.ranges_admit_node {
                allow.push(IpNet::from(fe.address));
            }
            allow.sort();
            allow.dedup();
            image.firewall.push((fk, allow.into_boxed_slice()));
        }
        image.dispatch.push((fk, target));
    }
    let shapes = image.shapes();
    let uses = |set: SetKind| shapes.iter().any(|s| s.sets().contains(&set));
    if uses(SetKind::Cluster) {
        image.cluster = plan.endpoints(SetKind::Cluster).into();
    }
    if uses(SetKind::Local) {
        image.local = plan.endpoints(SetKind::Local).into();
    }
    if let Some(timeout) = affinity
        && !own_treatments.is_empty()
    {
        own_objects(plan, settings, timeout, &own_treatments, &mut own);
        image.own = Some(Box::new(own));
    }
    // Every endpoint in use, not only this node's: the tracker reports a
    // port only when its plan changes, and the plan does not say where a
    // Cluster-policy endpoint runs. Only a local pod can meet itself here
    // (saddr == daddr), so the extra elements never match anything else.
    let mut hairpin: Vec<IpAddr> = plan.endpoints_in_use().iter().map(|e| e.ip()).collect();
    hairpin.sort();
    hairpin.dedup();
    image.hairpin = hairpin.into_boxed_slice();
    image
}

/// The shape of a treatment for frontends keyed `via`; `None` when no chain
/// is needed (reject, or drop for everyone).
fn target_of(t: &Treatment, via: Via, plan: &FrontendPlan<'_>, settings: &NftSettings, hashed: bool) -> Option<Shape> {
    let Route::Serve { set, short_circuit } = t.route else {
        return None;
    };
    let cluster_slots = slots_for(plan.endpoints(SetKind::Cluster).len(), settings);
    let pods = short_circuit.pods.map(|_| cluster_slots);
    let node = short_circuit.node.then_some(cluster_slots);
    if set.is_none() && pods.is_none() && node.is_none() {
        return None;
    }
    Some(Shape {
        via,
        hashed,
        masq: MasqKind::of(t.masquerade),
        default: set.map(|s| PickRef {
            set: s,
            slots: slots_for(plan.endpoints(s).len(), settings),
        }),
        pods,
        node,
    })
}

fn port_id(plan: &FrontendPlan<'_>) -> String {
    format!("{}/{}", plan.key, plan.family)
}

fn treatment_chain_name(plan: &FrontendPlan<'_>, via: Via, internal: bool) -> Name {
    let which = if internal { "internal" } else { "external" };
    own_name("svc", &format!("{}/{}/{which}", port_id(plan), via.word()))
}

fn affinity_chain_name(plan: &FrontendPlan<'_>, set: SetKind) -> Name {
    own_name("affinity", &format!("{}/{}", port_id(plan), set_letter(set)))
}

/// The chain and the recent-clients set of one endpoint. The timeout is
/// part of the name: a set's timeout cannot change in place.
fn endpoint_names(plan: &FrontendPlan<'_>, set: SetKind, ep: &SocketAddr, timeout: u32) -> (Name, Name) {
    let what = format!("{}/{}/{ep}/{timeout}", port_id(plan), set_letter(set));
    (own_name("endpoint", &what), own_name("recent", &what))
}

/// ClientIP affinity, as kube-proxy's nftables mode does it: per endpoint a
/// dynamic set of clients it served within the timeout and a chain that
/// records the client and DNATs; per endpoint set a chain that sends a
/// recent client back to its endpoint, else picks one at random (rule i of
/// n matches with probability 1/(n-i)).
fn own_objects(
    plan: &FrontendPlan<'_>,
    settings: &NftSettings,
    timeout: u32,
    treatments: &[(Via, bool)],
    own: &mut Own,
) {
    let f = plan.family;
    let proto = proto_number(plan.protocol());
    let mut sets_used: BTreeSet<SetKind> = BTreeSet::new();
    let shape_for = |internal: bool| {
        let t = if internal { Some(plan.internal) } else { plan.external };
        t.and_then(|t| target_of(&t, Via::Ip, plan, settings, false))
    };
    for (_, internal) in treatments {
        if let Some(s) = shape_for(*internal) {
            sets_used.extend(s.sets());
        }
    }
    for set in &sets_used {
        let eps = plan.endpoints(*set);
        let mut pick = Chain::regular(affinity_chain_name(plan, *set));
        pick.comment = Some(Comment::new(&format!("{} affinity", plan.key)));
        let mut cascade = Vec::new();
        for (i, ep) in eps.iter().enumerate() {
            let (chain, recent) = endpoint_names(plan, *set, ep, timeout);
            let mut s = Set::new(
                recent.clone(),
                SetType::Types {
                    key: vec![addr_type(f)],
                    data: None,
                },
            );
            s.flags.dynamic = true;
            s.flags.timeout = true;
            s.timeout = Some(Duration::from_secs(u64::from(timeout)));
            s.size = Some(AFFINITY_SET_SIZE);
            own.sets.push(s);
            let mut c = Chain::regular(chain.clone());
            c.comment = Some(Comment::new(&format!("{} -> {ep}", plan.key)));
            c.rules = vec![
                rule(vec![Stmt::Update {
                    set: recent.clone(),
                    key: vec![addr_expr(f, true)],
                    data: None,
                    timeout: None,
                }]),
                rule(vec![
                    Stmt::Cmp {
                        left: Expr::MetaL4proto,
                        op: CmpOp::Eq,
                        right: Value::Proto(proto),
                    },
                    Stmt::Dnat(NatTo::Addr {
                        addr: ep.ip(),
                        port: Some(ep.port()),
                    }),
                ]),
            ];
            own.chains.push(c);
            pick.rules.push(rule(vec![
                Stmt::Lookup {
                    key: vec![addr_expr(f, true)],
                    set: recent,
                    negate: false,
                },
                Stmt::Verdict(Verdict::Goto(chain.clone())),
            ]));
            let left = (eps.len() - i) as u32;
            cascade.push(if left > 1 {
                rule(vec![
                    Stmt::Cmp {
                        left: Expr::Numgen { modulus: left },
                        op: CmpOp::Eq,
                        right: Value::Int(0),
                    },
                    Stmt::Verdict(Verdict::Goto(chain)),
                ])
            } else {
                rule(vec![Stmt::Verdict(Verdict::Goto(chain))])
            });
        }
        pick.rules.extend(cascade);
        own.chains.push(pick);
    }
    for (via, internal) in treatments {
        let t = if *internal { Some(plan.internal) } else { plan.external };
        let Some(shape) = t.and_then(|t| target_of(&t, *via, plan, settings, false)) else {
            continue;
        };
        let pick = |set: SetKind| Pick::Own(affinity_chain_name(plan, set));
        let mut c = Chain::regular(treatment_chain_name(plan, *via, *internal));
        c.comment = Some(Comment::new(&format!(
            "{} {}",
            plan.key,
            if *internal { "cluster IP" } else { "external" }
        )));
        c.rules = treatment_rules(
            f,
            settings,
            shape.masq,
            shape.default.map(|p| pick(p.set)),
            shape.pods.map(|_| pick(SetKind::Cluster)),
            shape.node.map(|_| pick(SetKind::Cluster)),
        );
        own.chains.push(c);
    }
}

/// The key used in log messages and comments for a port in a family.
pub fn describe(key: &ServicePortKey, f: IpFamily) -> String {
    format!("{key} ({f})")
}
