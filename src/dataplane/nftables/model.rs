//! The ruleset model: one table of ours, its chains, sets, maps, elements
//! and rules, as plain data. Both renderers ([`super::script`] and
//! [`super::lower`] + [`super::encode`]) read it; the fake applies
//! transactions to it; dumps of the kernel decode back into it.
//!
//! Two kinds of text reach a ruleset and both are closed here:
//! - **names** (tables, chains, sets) are ours, built from fixed words and
//!   hashes; [`Name::new`] accepts only what nft's scanner reads as one
//!   plain identifier and nothing it could read as a keyword, because
//!   nft 1.0.6 has no quoting for names;
//! - **comments** may carry object text (a namespace, a Service name, a
//!   port name) and nft 1.0.6 has no escape inside a quoted string:
//!   [`Comment::new`] percent-encodes every byte outside a small safe set
//!   (quotes, newlines, `;`, `#`, `\`, `$`, `%` included) and caps the
//!   length at nft's 128 bytes, so nothing can end a comment early.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::IpNet;

use super::NftError;

/// Address family of a table (the nfgenmsg family).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// `ip`: IPv4 only.
    Ip,
    /// `ip6`: IPv6 only.
    Ip6,
    /// `inet`: both.
    Inet,
}

impl Family {
    /// The nft keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Inet => "inet",
        }
    }

    /// `NFPROTO_*`.
    pub fn nfproto(self) -> u8 {
        match self {
            Family::Ip => super::wire::nfproto::IPV4,
            Family::Ip6 => super::wire::nfproto::IPV6,
            Family::Inet => super::wire::nfproto::INET,
        }
    }

    /// From `NFPROTO_*`.
    pub fn from_nfproto(v: u8) -> Option<Family> {
        match v {
            super::wire::nfproto::IPV4 => Some(Family::Ip),
            super::wire::nfproto::IPV6 => Some(Family::Ip6),
            super::wire::nfproto::INET => Some(Family::Inet),
            _ => None,
        }
    }
}

/// A table, chain or set name: `[a-z0-9]+` words joined by `-` (the first
/// starting with a letter), at
/// least two words (no nft keyword has that shape, except the few listed in
/// [`Name::new`]), at most 64 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

/// Dashed words nft 1.0.6's scanner reads as keywords (statement options
/// and reject reasons): never valid as names.
const DASHED_KEYWORDS: &[&str] = &[
    "fully-random",
    "random-fully",
    "port-unreachable",
    "host-unreachable",
    "net-unreachable",
    "prot-unreachable",
    "admin-prohibited",
    "addr-unreachable",
    "no-route",
    "policy-fail",
    "reject-route",
    "net-prohibited",
    "host-prohibited",
    "frag-needed",
    "tcp-reset",
];

/// Single words checked not to be nft 1.0.6 keywords (our table's name).
const SINGLE_WORDS: &[&str] = &["sliceproxy"];

impl Name {
    /// Validate a name.
    pub fn new(s: &str) -> Result<Name, NftError> {
        let bad = |why| {
            Err(NftError::InvalidName {
                name: s.escape_debug().to_string(),
                why,
            })
        };
        if s.is_empty() || s.len() > 64 {
            return bad("must be 1 to 64 bytes");
        }
        let words_ok = s.split('-').enumerate().all(|(i, w)| {
            !w.is_empty()
                && w.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && (i > 0 || w.as_bytes()[0].is_ascii_lowercase())
        });
        if !words_ok {
            return bad(
                "must be lowercase words ([a-z0-9]+, the first starting with a letter) joined by single dashes",
            );
        }
        if !s.contains('-') && !SINGLE_WORDS.contains(&s) {
            return bad("must have at least two dash-joined words (single words may be nft keywords)");
        }
        if DASHED_KEYWORDS.contains(&s) {
            return bad("is an nft keyword");
        }
        Ok(Name(s.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Build a [`Name`] from a literal known to be valid (panics otherwise:
/// for fixed names in code).
pub fn name(s: &str) -> Name {
    Name::new(s).unwrap_or_else(|e| panic!("{e}"))
}

/// Comment text, already made safe for an nft quoted string and for the
/// kernel's user data (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Comment(String);

/// nft 1.0.6 refuses longer comments ("comment too long").
pub const COMMENT_MAX: usize = 128;

impl Comment {
    /// Escape arbitrary text into a comment: bytes outside
    /// `[A-Za-z0-9 ._:/,=+@()-]` become `%XX`; the result is cut to
    /// [`COMMENT_MAX`] bytes, never inside an escape.
    pub fn new(text: &str) -> Comment {
        let mut out = String::with_capacity(text.len());
        for b in text.bytes() {
            let safe = b.is_ascii_alphanumeric() || b" ._:/,=+@()-".contains(&b);
            let piece_len = if safe { 1 } else { 3 };
            if out.len() + piece_len > COMMENT_MAX {
                break;
            }
            if safe {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        Comment(out)
    }

    /// A comment read back from the kernel or a script: kept only if it is
    /// exactly what [`Comment::new`] could have produced (otherwise someone
    /// else wrote it, and it is returned as an escaped copy).
    pub fn from_stored(text: &str) -> Comment {
        let c = Comment(text.to_string());
        if c.is_canonical() { c } else { Comment::new(text) }
    }

    fn is_canonical(&self) -> bool {
        let b = self.0.as_bytes();
        if b.len() > COMMENT_MAX {
            return false;
        }
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                if i + 2 >= b.len() {
                    return false;
                }
                if !(b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                    return false;
                }
                i += 3;
            } else if b[i].is_ascii_alphanumeric() || b" ._:/,=+@()-".contains(&b[i]) {
                i += 1;
            } else {
                return false;
            }
        }
        true
    }

    /// The escaped text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A chain's hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// `prerouting` (`NF_INET_PRE_ROUTING`).
    Prerouting,
    /// `input`.
    Input,
    /// `forward`.
    Forward,
    /// `output`.
    Output,
    /// `postrouting`.
    Postrouting,
}

impl Hook {
    /// `NF_INET_*`.
    pub fn number(self) -> u32 {
        match self {
            Hook::Prerouting => 0,
            Hook::Input => 1,
            Hook::Forward => 2,
            Hook::Output => 3,
            Hook::Postrouting => 4,
        }
    }

    /// From `NF_INET_*`.
    pub fn from_number(n: u32) -> Option<Hook> {
        Some(match n {
            0 => Hook::Prerouting,
            1 => Hook::Input,
            2 => Hook::Forward,
            3 => Hook::Output,
            4 => Hook::Postrouting,
            _ => return None,
        })
    }

    /// The nft keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }
}

/// A base chain's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChainType {
    /// `filter`.
    Filter,
    /// `nat`: sees the first packet of a connection only.
    Nat,
    /// `route`.
    Route,
}

impl ChainType {
    /// The nft keyword (also the kernel's `NFTA_CHAIN_TYPE` string).
    pub fn keyword(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
            ChainType::Route => "route",
        }
    }

    /// From the kernel's string.
    pub fn from_keyword(s: &str) -> Option<ChainType> {
        Some(match s {
            "filter" => ChainType::Filter,
            "nat" => ChainType::Nat,
            "route" => ChainType::Route,
            _ => return None,
        })
    }
}

/// What makes a chain a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BaseChain {
    /// Chain type.
    pub kind: ChainType,
    /// Hook.
    pub hook: Hook,
    /// Priority: numbers only (nft 1.0.6 does not take names everywhere).
    pub priority: i32,
    /// Default policy: accept unless `drop` is true.
    pub policy_drop: bool,
}

/// A chain and its rules, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Name.
    pub name: Name,
    /// Set for base chains.
    pub base: Option<BaseChain>,
    /// Comment.
    pub comment: Option<Comment>,
    /// Rules, in order.
    pub rules: Vec<Rule>,
}

impl Chain {
    /// A regular chain.
    pub fn regular(name: Name) -> Chain {
        Chain {
            name,
            base: None,
            comment: None,
            rules: Vec::new(),
        }
    }

    /// A base chain with policy accept.
    pub fn base(name: Name, kind: ChainType, hook: Hook, priority: i32) -> Chain {
        Chain {
            name,
            base: Some(BaseChain {
                kind,
                hook,
                priority,
                policy_drop: false,
            }),
            comment: None,
            rules: Vec::new(),
        }
    }
}

/// One rule: statements evaluated left to right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Statements.
    pub stmts: Vec<Stmt>,
    /// Comment.
    pub comment: Option<Comment>,
    /// The kernel's handle, when read back from the kernel (never rendered).
    pub handle: Option<u64>,
}

impl Rule {
    /// A rule without comment.
    pub fn new(stmts: Vec<Stmt>) -> Rule {
        Rule {
            stmts,
            comment: None,
            handle: None,
        }
    }

    /// With a comment.
    pub fn with_comment(mut self, text: &str) -> Rule {
        self.comment = Some(Comment::new(text));
        self
    }

    /// The same rule without its handle (for comparing wanted and dumped).
    pub fn without_handle(&self) -> Rule {
        Rule {
            handle: None,
            ..self.clone()
        }
    }
}

/// The types a set key or map value field can have (nft datatypes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataType {
    /// `ipv4_addr` (network order, 4 bytes).
    Ipv4Addr,
    /// `ipv6_addr` (network order, 16 bytes).
    Ipv6Addr,
    /// `inet_proto` (1 byte).
    InetProto,
    /// `inet_service` (network order, 2 bytes).
    InetService,
    /// `mark` (host order, 4 bytes).
    Mark,
    /// nft's `integer` (host order, 4 bytes): numgen and hash results.
    /// Only reachable through `typeof` keys.
    Integer,
    /// `ct_state` (host order bitmask).
    CtState,
    /// `fib_addrtype` (host order).
    FibAddrType,
}

impl DataType {
    /// nft's datatype id (`enum datatypes` in nft's datatype.h), the value
    /// the kernel stores as `NFTA_SET_KEY_TYPE` (concatenations pack ids 6
    /// bits apiece).
    pub fn nft_id(self) -> u32 {
        match self {
            DataType::Integer => 4,
            DataType::Ipv4Addr => 7,
            DataType::Ipv6Addr => 8,
            DataType::InetProto => 12,
            DataType::InetService => 13,
            DataType::Mark => 19,
            DataType::CtState => 26,
            DataType::FibAddrType => 38,
        }
    }

    /// Bytes of a value.
    pub fn byte_len(self) -> usize {
        match self {
            DataType::Ipv4Addr | DataType::Mark | DataType::Integer | DataType::CtState | DataType::FibAddrType => 4,
            DataType::Ipv6Addr => 16,
            DataType::InetProto => 1,
            DataType::InetService => 2,
        }
    }

    /// Whether values are host-endian (need a byte-order swap in interval
    /// concatenations, where the kernel compares bytes big-endian).
    pub fn host_order(self) -> bool {
        matches!(
            self,
            DataType::Mark | DataType::Integer | DataType::CtState | DataType::FibAddrType | DataType::InetProto
        )
    }

    /// The nft keyword for `type` declarations.
    pub fn keyword(self) -> &'static str {
        match self {
            DataType::Ipv4Addr => "ipv4_addr",
            DataType::Ipv6Addr => "ipv6_addr",
            DataType::InetProto => "inet_proto",
            DataType::InetService => "inet_service",
            DataType::Mark => "mark",
            DataType::Integer => "integer",
            DataType::CtState => "ct_state",
            DataType::FibAddrType => "fib_addrtype",
        }
    }
}

/// A constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    /// An IPv4 address.
    Ipv4(Ipv4Addr),
    /// An IPv6 address.
    Ipv6(Ipv6Addr),
    /// An IP protocol number (`tcp` 6, `udp` 17, `sctp` 132).
    Proto(u8),
    /// A transport port.
    Port(u16),
    /// A packet or conntrack mark.
    Mark(u32),
    /// A plain 32-bit integer (a slot number).
    Int(u32),
    /// A fib address type (`local` is `RTN_LOCAL`, 2).
    AddrType(u32),
}

/// `IPPROTO_TCP`.
pub const TCP: u8 = 6;
/// `IPPROTO_UDP`.
pub const UDP: u8 = 17;
/// `IPPROTO_SCTP`.
pub const SCTP: u8 = 132;
/// `RTN_LOCAL`.
pub const RTN_LOCAL: u32 = 2;

impl Value {
    /// An address.
    pub fn ip(ip: IpAddr) -> Value {
        match ip {
            IpAddr::V4(a) => Value::Ipv4(a),
            IpAddr::V6(a) => Value::Ipv6(a),
        }
    }

    /// The datatype.
    pub fn dtype(self) -> DataType {
        match self {
            Value::Ipv4(_) => DataType::Ipv4Addr,
            Value::Ipv6(_) => DataType::Ipv6Addr,
            Value::Proto(_) => DataType::InetProto,
            Value::Port(_) => DataType::InetService,
            Value::Mark(_) => DataType::Mark,
            Value::Int(_) => DataType::Integer,
            Value::AddrType(_) => DataType::FibAddrType,
        }
    }

    /// The bytes the kernel compares (network or host order by type).
    pub fn bytes(self) -> Vec<u8> {
        match self {
            Value::Ipv4(a) => a.octets().to_vec(),
            Value::Ipv6(a) => a.octets().to_vec(),
            Value::Proto(p) => vec![p],
            Value::Port(p) => p.to_be_bytes().to_vec(),
            Value::Mark(v) | Value::Int(v) | Value::AddrType(v) => v.to_ne_bytes().to_vec(),
        }
    }

    /// Decode bytes of a known type.
    pub fn from_bytes(t: DataType, b: &[u8]) -> Option<Value> {
        let u32ne = |b: &[u8]| <[u8; 4]>::try_from(b).ok().map(u32::from_ne_bytes);
        Some(match t {
            DataType::Ipv4Addr => Value::Ipv4(Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?)),
            DataType::Ipv6Addr => Value::Ipv6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?)),
            DataType::InetProto => Value::Proto(*b.first()?),
            DataType::InetService => Value::Port(u16::from_be_bytes(<[u8; 2]>::try_from(b.get(..2)?).ok()?)),
            DataType::Mark => Value::Mark(u32ne(b)?),
            DataType::Integer | DataType::CtState => Value::Int(u32ne(b)?),
            DataType::FibAddrType => Value::AddrType(u32ne(b)?),
        })
    }
}

/// Something a rule loads from the packet, its connection or a generator.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expr {
    /// `ip saddr`.
    IpSaddr,
    /// `ip daddr`.
    IpDaddr,
    /// `ip6 saddr`.
    Ip6Saddr,
    /// `ip6 daddr`.
    Ip6Daddr,
    /// `th sport` (any transport header's source port).
    ThSport,
    /// `th dport`.
    ThDport,
    /// `meta l4proto`.
    MetaL4proto,
    /// `meta mark`.
    MetaMark,
    /// `ct state`.
    CtState,
    /// `ct mark`.
    CtMark,
    /// `fib daddr type`.
    FibDaddrType,
    /// `fib saddr type` (`local`: the packet comes from this host).
    FibSaddrType,
    /// `numgen random mod N`.
    Numgen {
        /// N.
        modulus: u32,
    },
    /// `jhash K mod N seed S`: a hash of packet fields (the flow).
    Jhash {
        /// Fields hashed (a concatenation).
        keys: Vec<Expr>,
        /// N.
        modulus: u32,
        /// Seed.
        seed: u32,
    },
    /// `symhash mod N`: the same slot for both directions of a flow.
    Symhash {
        /// N.
        modulus: u32,
    },
    /// A constant.
    Const(Value),
}

impl Expr {
    /// The datatype of what it loads.
    pub fn dtype(&self) -> DataType {
        match self {
            Expr::IpSaddr | Expr::IpDaddr => DataType::Ipv4Addr,
            Expr::Ip6Saddr | Expr::Ip6Daddr => DataType::Ipv6Addr,
            Expr::ThSport | Expr::ThDport => DataType::InetService,
            Expr::MetaL4proto => DataType::InetProto,
            Expr::MetaMark | Expr::CtMark => DataType::Mark,
            Expr::CtState => DataType::CtState,
            Expr::FibDaddrType | Expr::FibSaddrType => DataType::FibAddrType,
            Expr::Numgen { .. } | Expr::Jhash { .. } | Expr::Symhash { .. } => DataType::Integer,
            Expr::Const(v) => v.dtype(),
        }
    }
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `==` (written as juxtaposition).
    Eq,
    /// `!=`.
    Ne,
    /// `<`.
    Lt,
    /// `<=`.
    Le,
    /// `>`.
    Gt,
    /// `>=`.
    Ge,
}

/// A verdict.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `return`.
    Return,
    /// `continue`.
    Continue,
    /// `jump CHAIN`.
    Jump(Name),
    /// `goto CHAIN`.
    Goto(Name),
}

impl Verdict {
    /// The chain it transfers to, if any.
    pub fn target(&self) -> Option<&Name> {
        match self {
            Verdict::Jump(c) | Verdict::Goto(c) => Some(c),
            _ => None,
        }
    }
}

/// How a `reject` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// ICMP port unreachable (IPv4).
    IcmpPortUnreachable,
    /// ICMPv6 port unreachable.
    Icmpv6PortUnreachable,
    /// ICMPx port unreachable (inet tables: the right one per family).
    IcmpxPortUnreachable,
    /// TCP reset (needs a TCP match before it).
    TcpReset,
}

/// Where a `dnat`/`snat` sends the packet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NatTo {
    /// A fixed address (and port).
    Addr {
        /// Address.
        addr: IpAddr,
        /// Port, if rewritten.
        port: Option<u16>,
    },
    /// A map lookup: `dnat to KEY map @MAP [: PORT]`, whose values are
    /// `addr . port` or `addr` (then `port` may give a fixed port).
    Map {
        /// The lookup key (a concatenation).
        key: Vec<Expr>,
        /// The map.
        map: Name,
        /// A fixed port, for maps whose values are addresses only.
        port: Option<u16>,
    },
}

/// A rule statement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Stmt {
    /// `LEFT [op] VALUE`: `meta l4proto tcp`, `fib daddr type local`.
    Cmp {
        /// What is compared.
        left: Expr,
        /// How.
        op: CmpOp,
        /// With what.
        right: Value,
    },
    /// `ADDR [!=] NET/LEN`.
    Prefix {
        /// An address expression.
        left: Expr,
        /// `!=`.
        negate: bool,
        /// The network.
        net: IpNet,
    },
    /// `LEFT [!=] FROM-TO`.
    Range {
        /// What is compared.
        left: Expr,
        /// `!=`.
        negate: bool,
        /// Low end, inclusive.
        from: Value,
        /// High end, inclusive.
        to: Value,
    },
    /// `LEFT & MASK [==|!=] VALUE` (marks).
    Mask {
        /// `meta mark` or `ct mark`.
        left: Expr,
        /// Mask.
        mask: u32,
        /// `!=` instead of `==`.
        negate: bool,
        /// Compared value.
        value: u32,
    },
    /// `ct state S1,S2`: any of these conntrack states.
    CtStateIn(u32),
    /// `ct status S1,S2`: any of these conntrack status bits (`dnat`).
    CtStatusIn(u32),
    /// `KEY [!=] @SET`.
    Lookup {
        /// Key (a concatenation).
        key: Vec<Expr>,
        /// The set.
        set: Name,
        /// `!=`.
        negate: bool,
    },
    /// `KEY vmap @MAP`.
    Vmap {
        /// Key.
        key: Vec<Expr>,
        /// A verdict map.
        map: Name,
    },
    /// `counter`.
    Counter,
    /// `meta mark set meta mark | BITS`.
    MarkOr(u32),
    /// `meta mark set meta mark ^ BITS`.
    MarkXor(u32),
    /// `ct mark set VALUE`.
    CtMarkSet(u32),
    /// `dnat [family] to ...`.
    Dnat(NatTo),
    /// `snat [family] to ...`.
    Snat(NatTo),
    /// `masquerade [fully-random]`.
    Masquerade {
        /// `fully-random` port allocation.
        fully_random: bool,
    },
    /// `reject with ...`.
    Reject(Reject),
    /// `update @SET { KEY [timeout T] [: DATA] }`: add or refresh an element
    /// from the packet path (ClientIP affinity).
    Update {
        /// The set or map (needs flags dynamic, and timeout for `timeout`).
        set: Name,
        /// Key.
        key: Vec<Expr>,
        /// Data, for maps.
        data: Option<Vec<Expr>>,
        /// Per-element timeout (the set's default when absent).
        timeout: Option<Duration>,
    },
    /// A verdict.
    Verdict(Verdict),
}

/// `ct status` bits (`IPS_*`) we match.
pub mod ct_status {
    /// `dnat`: the connection's destination was translated.
    pub const DNAT: u32 = 0x20;
}

/// `ct state` bits (`NF_CT_STATE_*` as nft writes them).
pub mod ct_state {
    /// `invalid`.
    pub const INVALID: u32 = 1;
    /// `established`.
    pub const ESTABLISHED: u32 = 2;
    /// `related`.
    pub const RELATED: u32 = 4;
    /// `new`.
    pub const NEW: u32 = 8;
    /// `untracked`.
    pub const UNTRACKED: u32 = 64;
}

/// How a set's key and data are declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetType {
    /// `type K1 . K2 [: D1 . D2 | : verdict]`.
    Types {
        /// Key fields.
        key: Vec<DataType>,
        /// Data: `None` for a set.
        data: Option<SetData>,
    },
    /// `typeof E1 . E2 : F1 . F2`: needed where the key is a numgen or a
    /// hash (nft has no `type` name for their integer).
    Typeof {
        /// Key expressions.
        key: Vec<Expr>,
        /// Data expressions (a map) or `None` (a set).
        data: Option<Vec<Expr>>,
    },
}

/// A map's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetData {
    /// Verdicts (a vmap).
    Verdict,
    /// Values (a concatenation of types).
    Types(Vec<DataType>),
}

impl SetType {
    /// Key field types.
    pub fn key_types(&self) -> Vec<DataType> {
        match self {
            SetType::Types { key, .. } => key.clone(),
            SetType::Typeof { key, .. } => key.iter().map(Expr::dtype).collect(),
        }
    }

    /// Data field types (empty for sets and verdict maps).
    pub fn data_types(&self) -> Vec<DataType> {
        match self {
            SetType::Types {
                data: Some(SetData::Types(d)),
                ..
            } => d.clone(),
            SetType::Typeof { data: Some(d), .. } => d.iter().map(Expr::dtype).collect(),
            _ => Vec::new(),
        }
    }

    /// Whether this is a verdict map.
    pub fn is_vmap(&self) -> bool {
        matches!(
            self,
            SetType::Types {
                data: Some(SetData::Verdict),
                ..
            }
        )
    }

    /// Whether this is a map (values or verdicts).
    pub fn is_map(&self) -> bool {
        match self {
            SetType::Types { data, .. } => data.is_some(),
            SetType::Typeof { data, .. } => data.is_some(),
        }
    }
}

/// Set flags we use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetFlags {
    /// `interval`: elements are ranges or prefixes.
    pub interval: bool,
    /// `timeout`: elements expire.
    pub timeout: bool,
    /// `dynamic`: the packet path may add elements (`update`).
    pub dynamic: bool,
    /// `constant`: no element changes after creation.
    pub constant: bool,
}

/// One field of an element key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyPart {
    /// One value.
    Value(Value),
    /// A network (interval sets).
    Prefix(IpNet),
    /// An inclusive range (interval sets).
    Range(Value, Value),
}

impl KeyPart {
    /// Lowest and highest value covered.
    pub fn bounds(&self) -> (Value, Value) {
        match *self {
            KeyPart::Value(v) => (v, v),
            KeyPart::Range(a, b) => (a, b),
            KeyPart::Prefix(net) => (Value::ip(net.network()), Value::ip(net.broadcast())),
        }
    }

    /// The datatype of its values.
    pub fn dtype(&self) -> DataType {
        self.bounds().0.dtype()
    }
}

/// An element's data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ElemData {
    /// Values (a concatenation).
    Values(Vec<Value>),
    /// A verdict.
    Verdict(VerdictData),
}

/// A verdict as element data (ordered, for stable element order).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VerdictData {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `return`.
    Return,
    /// `jump CHAIN`.
    Jump(Name),
    /// `goto CHAIN`.
    Goto(Name),
}

impl VerdictData {
    /// As a statement verdict.
    pub fn verdict(&self) -> Verdict {
        match self {
            VerdictData::Accept => Verdict::Accept,
            VerdictData::Drop => Verdict::Drop,
            VerdictData::Return => Verdict::Return,
            VerdictData::Jump(c) => Verdict::Jump(c.clone()),
            VerdictData::Goto(c) => Verdict::Goto(c.clone()),
        }
    }
}

/// A set or map element.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element {
    /// Key fields.
    pub key: Vec<KeyPart>,
    /// Data (maps).
    pub data: Option<ElemData>,
    /// Per-element timeout (sets with `timeout`).
    pub timeout: Option<Duration>,
    /// Comment.
    pub comment: Option<Comment>,
}

impl Element {
    /// A set element of values.
    pub fn key(values: &[Value]) -> Element {
        Element {
            key: values.iter().copied().map(KeyPart::Value).collect(),
            data: None,
            timeout: None,
            comment: None,
        }
    }

    /// A map element.
    pub fn map(key: &[Value], data: &[Value]) -> Element {
        Element {
            data: Some(ElemData::Values(data.to_vec())),
            ..Element::key(key)
        }
    }

    /// A verdict map element.
    pub fn vmap(key: &[Value], verdict: VerdictData) -> Element {
        Element {
            data: Some(ElemData::Verdict(verdict)),
            ..Element::key(key)
        }
    }

    /// With a comment.
    pub fn with_comment(mut self, text: &str) -> Element {
        self.comment = Some(Comment::new(text));
        self
    }

    /// The element's identity in its set: the key alone.
    pub fn key_only(&self) -> Element {
        Element {
            key: self.key.clone(),
            data: None,
            timeout: None,
            comment: None,
        }
    }
}

/// A named set or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    /// Name.
    pub name: Name,
    /// Key and data types.
    pub kind: SetType,
    /// Flags.
    pub flags: SetFlags,
    /// Default element timeout (`timeout` flag).
    pub timeout: Option<Duration>,
    /// Maximum number of elements (needed for `dynamic` sets; the kernel
    /// refuses packet-path additions beyond it).
    pub size: Option<u32>,
    /// Comment.
    pub comment: Option<Comment>,
    /// Elements (kept sorted by key by the builders; order is not significant).
    pub elements: Vec<Element>,
}

impl Set {
    /// A set or map without flags or elements.
    pub fn new(name: Name, kind: SetType) -> Set {
        Set {
            name,
            kind,
            flags: SetFlags::default(),
            timeout: None,
            size: None,
            comment: None,
            elements: Vec::new(),
        }
    }
}

/// Our table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Family.
    pub family: Family,
    /// Name.
    pub name: Name,
    /// Comment.
    pub comment: Option<Comment>,
    /// Sets and maps, declared before chains (rules reference them).
    pub sets: Vec<Set>,
    /// Chains, in declaration order.
    pub chains: Vec<Chain>,
}

impl Table {
    /// An empty table.
    pub fn new(family: Family, name: Name) -> Table {
        Table {
            family,
            name,
            comment: None,
            sets: Vec::new(),
            chains: Vec::new(),
        }
    }

    /// A set by name.
    pub fn set(&self, name: &Name) -> Option<&Set> {
        self.sets.iter().find(|s| &s.name == name)
    }

    /// A set by name, mutable.
    pub fn set_mut(&mut self, name: &Name) -> Option<&mut Set> {
        self.sets.iter_mut().find(|s| &s.name == name)
    }

    /// A chain by name.
    pub fn chain(&self, name: &Name) -> Option<&Chain> {
        self.chains.iter().find(|c| &c.name == name)
    }

    /// A chain by name, mutable.
    pub fn chain_mut(&mut self, name: &Name) -> Option<&mut Chain> {
        self.chains.iter_mut().find(|c| &c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_accept_only_plain_dashed_words() {
        for ok in ["nat-prerouting", "svc-4f2a9c", "a-b", "service-ips-v4"] {
            Name::new(ok).unwrap();
        }
        for bad in [
            "",
            "services",
            "drop",
            "Nat-x",
            "a--b",
            "-a",
            "a-",
            "a b-c",
            "a-b\"",
            "a-b;flush ruleset",
            "a-b\n",
            "1a-b",
            "fully-random",
            "a-\u{e9}",
            &"a-".repeat(40),
        ] {
            assert!(Name::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hostile_comment_text_cannot_leave_the_comment() {
        let hostile = "ns/web\" ; flush ruleset ; #\n\r\t\\$x%\u{0}'`{}[]<>|&\u{e9}";
        let c = Comment::new(hostile);
        assert!(
            c.as_str()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b" ._:/,=+@()-%".contains(&b)),
            "{c:?}"
        );
        assert!(
            c.as_str()
                .starts_with("ns/web%22 %3B flush ruleset %3B %23%0A%0D%09%5C%24x%25%00")
        );
        assert_eq!(Comment::from_stored(c.as_str()), c, "escaped text reads back unchanged");
        assert_ne!(Comment::from_stored("a\"b").as_str(), "a\"b");
    }

    #[test]
    fn comments_are_capped_without_splitting_an_escape() {
        let c = Comment::new(&"\"".repeat(100));
        assert!(c.as_str().len() <= COMMENT_MAX);
        assert_eq!(c.as_str().len() % 3, 0);
        let c = Comment::new(&"a".repeat(300));
        assert_eq!(c.as_str().len(), COMMENT_MAX);
    }

    #[test]
    fn values_use_the_byte_order_the_kernel_compares() {
        assert_eq!(Value::Port(80).bytes(), vec![0, 80]);
        assert_eq!(Value::Ipv4("10.0.0.1".parse().unwrap()).bytes(), vec![10, 0, 0, 1]);
        assert_eq!(Value::Mark(0x4000).bytes(), 0x4000u32.to_ne_bytes().to_vec());
        assert_eq!(Value::Proto(TCP).bytes(), vec![6]);
        for v in [
            Value::Port(80),
            Value::Proto(17),
            Value::Mark(7),
            Value::Ipv6("fd00::1".parse().unwrap()),
        ] {
            assert_eq!(Value::from_bytes(v.dtype(), &v.bytes()), Some(v));
        }
    }
}
