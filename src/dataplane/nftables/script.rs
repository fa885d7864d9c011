//! The `nft -f` rendering of the model: what `render` prints and what a
//! person reads. Loading it with nft 1.0.6 gives the same kernel objects as
//! sending the model over netlink (the parity test checks `nft list table`
//! of both).
//!
//! Only two kinds of text from outside can appear here and both were made
//! safe by the model: names ([`Name`]: plain identifiers) and comments
//! ([`Comment`]: percent-escaped). Everything else is numbers, addresses
//! and fixed keywords.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use super::model::*;

/// A duration as nft reads it.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn proto(p: u8) -> String {
    match p {
        TCP => "tcp".into(),
        UDP => "udp".into(),
        SCTP => "sctp".into(),
        n => n.to_string(),
    }
}

/// A value as nft reads it.
pub fn value(v: &Value) -> String {
    match v {
        Value::Ipv4(a) => a.to_string(),
        Value::Ipv6(a) => a.to_string(),
        Value::Proto(p) => proto(*p),
        Value::Port(p) => p.to_string(),
        Value::Mark(m) => format!("{m:#010x}"),
        Value::Int(n) => n.to_string(),
        Value::AddrType(RTN_LOCAL) => "local".into(),
        Value::AddrType(n) => n.to_string(),
    }
}

/// An expression as nft reads it.
pub fn expr(e: &Expr) -> String {
    match e {
        Expr::IpSaddr => "ip saddr".into(),
        Expr::IpDaddr => "ip daddr".into(),
        Expr::Ip6Saddr => "ip6 saddr".into(),
        Expr::Ip6Daddr => "ip6 daddr".into(),
        Expr::ThSport => "th sport".into(),
        Expr::ThDport => "th dport".into(),
        Expr::MetaL4proto => "meta l4proto".into(),
        Expr::MetaMark => "meta mark".into(),
        Expr::CtState => "ct state".into(),
        Expr::CtMark => "ct mark".into(),
        Expr::FibDaddrType => "fib daddr type".into(),
        Expr::FibSaddrType => "fib saddr type".into(),
        Expr::Numgen { modulus } => format!("numgen random mod {modulus}"),
        Expr::Jhash { keys, modulus, seed } => format!("jhash {} mod {modulus} seed {seed:#x}", concat(keys)),
        Expr::Symhash { modulus } => format!("symhash mod {modulus}"),
        Expr::Const(v) => value(v),
    }
}

/// A concatenation.
pub fn concat(keys: &[Expr]) -> String {
    keys.iter().map(expr).collect::<Vec<_>>().join(" . ")
}

fn op(o: CmpOp) -> &'static str {
    match o {
        CmpOp::Eq => "",
        CmpOp::Ne => "!= ",
        CmpOp::Lt => "< ",
        CmpOp::Le => "<= ",
        CmpOp::Gt => "> ",
        CmpOp::Ge => ">= ",
    }
}

fn verdict(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Return => "return".into(),
        Verdict::Continue => "continue".into(),
        Verdict::Jump(c) => format!("jump {c}"),
        Verdict::Goto(c) => format!("goto {c}"),
    }
}

fn ct_states(bits: u32) -> String {
    let names = [
        (ct_state::INVALID, "invalid"),
        (ct_state::ESTABLISHED, "established"),
        (ct_state::RELATED, "related"),
        (ct_state::NEW, "new"),
        (ct_state::UNTRACKED, "untracked"),
    ];
    names
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

fn nat(kind: &str, to: &NatTo) -> String {
    match to {
        NatTo::Addr {
            addr: IpAddr::V4(a),
            port,
        } => match port {
            Some(p) => format!("{kind} ip to {a}:{p}"),
            None => format!("{kind} ip to {a}"),
        },
        NatTo::Addr {
            addr: IpAddr::V6(a),
            port,
        } => match port {
            Some(p) => format!("{kind} ip6 to [{a}]:{p}"),
            None => format!("{kind} ip6 to {a}"),
        },
        NatTo::Map { key, map, port } => {
            let port = port.map(|p| format!(" : {p}")).unwrap_or_default();
            // The family keyword follows the map's address type; the
            // renderer does not see the map, so it is inferred from the
            // key's address family, and defaults to ip.
            let fam = if key.iter().any(|k| matches!(k, Expr::Ip6Saddr | Expr::Ip6Daddr)) {
                "ip6"
            } else if key.iter().any(|k| matches!(k, Expr::IpSaddr | Expr::IpDaddr)) {
                "ip"
            } else {
                ""
            };
            if fam.is_empty() {
                format!("{kind} to {} map @{map}{port}", concat(key))
            } else {
                format!("{kind} {fam} to {} map @{map}{port}", concat(key))
            }
        }
    }
}

/// A statement as nft reads it.
pub fn stmt(s: &Stmt) -> String {
    match s {
        Stmt::Cmp { left, op: o, right } => {
            // A generated value followed by a bare number would read as
            // more of the generator's arguments: spell out `==`.
            let generated = matches!(left, Expr::Numgen { .. } | Expr::Jhash { .. } | Expr::Symhash { .. });
            let o = if generated && *o == CmpOp::Eq { "== " } else { op(*o) };
            format!("{} {}{}", expr(left), o, value(right))
        }
        Stmt::Prefix { left, negate, net } => {
            format!("{} {}{}", expr(left), if *negate { "!= " } else { "" }, net.trunc())
        }
        Stmt::Range { left, negate, from, to } => format!(
            "{} {}{}-{}",
            expr(left),
            if *negate { "!= " } else { "" },
            value(from),
            value(to)
        ),
        Stmt::Mask {
            left,
            mask,
            negate,
            value: v,
        } => format!(
            "{} & {mask:#010x} {} {v:#010x}",
            expr(left),
            if *negate { "!=" } else { "==" }
        ),
        Stmt::CtStateIn(bits) => format!("ct state {}", ct_states(*bits)),
        Stmt::CtStatusIn(bits) => {
            let names = [(ct_status::DNAT, "dnat")];
            let known: u32 = names.iter().map(|(b, _)| b).sum();
            let mut words: Vec<String> = names
                .iter()
                .filter(|(b, _)| bits & b != 0)
                .map(|(_, n)| n.to_string())
                .collect();
            if bits & !known != 0 {
                words.push(format!("{:#x}", bits & !known));
            }
            format!("ct status {}", words.join(","))
        }
        Stmt::Lookup { key, set, negate } => {
            format!("{} {}@{set}", concat(key), if *negate { "!= " } else { "" })
        }
        Stmt::Vmap { key, map } => format!("{} vmap @{map}", concat(key)),
        Stmt::Counter => "counter".into(),
        Stmt::MarkOr(bits) => format!("meta mark set meta mark | {bits:#010x}"),
        Stmt::MarkXor(bits) => format!("meta mark set meta mark ^ {bits:#010x}"),
        Stmt::CtMarkSet(v) => format!("ct mark set {v:#010x}"),
        Stmt::Dnat(to) => nat("dnat", to),
        Stmt::Snat(to) => nat("snat", to),
        Stmt::Masquerade { fully_random } => {
            if *fully_random {
                "masquerade fully-random".into()
            } else {
                "masquerade".into()
            }
        }
        Stmt::Reject(r) => match r {
            Reject::IcmpPortUnreachable => "reject with icmp port-unreachable".into(),
            Reject::Icmpv6PortUnreachable => "reject with icmpv6 port-unreachable".into(),
            Reject::IcmpxPortUnreachable => "reject with icmpx port-unreachable".into(),
            Reject::TcpReset => "reject with tcp reset".into(),
        },
        Stmt::Update {
            set,
            key,
            data,
            timeout,
        } => {
            let mut s = format!("update @{set} {{ {}", concat(key));
            if let Some(t) = timeout {
                let _ = write!(s, " timeout {}", duration(*t));
            }
            if let Some(d) = data {
                let _ = write!(s, " : {}", concat(d));
            }
            s.push_str(" }");
            s
        }
        Stmt::Verdict(v) => verdict(v),
    }
}

/// A rule as one line (without indentation).
pub fn rule_text(r: &Rule) -> String {
    let mut s = r.stmts.iter().map(stmt).collect::<Vec<_>>().join(" ");
    if let Some(c) = &r.comment {
        let _ = write!(s, " comment \"{}\"", c.as_str());
    }
    s
}

fn key_part(p: &KeyPart) -> String {
    match p {
        KeyPart::Value(v) => value(v),
        KeyPart::Prefix(n) => n.trunc().to_string(),
        KeyPart::Range(a, b) => format!("{}-{}", value(a), value(b)),
    }
}

/// An element as nft reads it inside `elements = { ... }`.
pub fn element_text(e: &Element) -> String {
    let mut s = e.key.iter().map(key_part).collect::<Vec<_>>().join(" . ");
    if let Some(t) = e.timeout {
        let _ = write!(s, " timeout {}", duration(t));
    }
    if let Some(c) = &e.comment {
        let _ = write!(s, " comment \"{}\"", c.as_str());
    }
    match &e.data {
        Some(ElemData::Values(v)) => {
            let _ = write!(s, " : {}", v.iter().map(value).collect::<Vec<_>>().join(" . "));
        }
        Some(ElemData::Verdict(v)) => {
            let _ = write!(s, " : {}", verdict(&v.verdict()));
        }
        None => {}
    }
    s
}

fn set_type(k: &SetType) -> String {
    let types = |t: &[DataType]| t.iter().map(|t| t.keyword()).collect::<Vec<_>>().join(" . ");
    match k {
        SetType::Types { key, data } => match data {
            None => format!("type {}", types(key)),
            Some(SetData::Verdict) => format!("type {} : verdict", types(key)),
            Some(SetData::Types(d)) => format!("type {} : {}", types(key), types(d)),
        },
        SetType::Typeof { key, data } => match data {
            None => format!("typeof {}", concat(key)),
            Some(d) => format!("typeof {} : {}", concat(key), concat(d)),
        },
    }
}

/// The declaration of a set or map, with its elements.
pub fn set_block(s: &Set, indent: &str, out: &mut String) {
    let kw = if s.kind.is_map() { "map" } else { "set" };
    let _ = writeln!(out, "{indent}{kw} {} {{", s.name);
    let _ = writeln!(out, "{indent}\t{}", set_type(&s.kind));
    let mut flags = Vec::new();
    if s.flags.constant {
        flags.push("constant");
    }
    if s.flags.interval {
        flags.push("interval");
    }
    if s.flags.dynamic {
        flags.push("dynamic");
    }
    if s.flags.timeout {
        flags.push("timeout");
    }
    if !flags.is_empty() {
        let _ = writeln!(out, "{indent}\tflags {}", flags.join(","));
    }
    if let Some(t) = s.timeout {
        let _ = writeln!(out, "{indent}\ttimeout {}", duration(t));
    }
    if let Some(n) = s.size {
        let _ = writeln!(out, "{indent}\tsize {n}");
    }
    if let Some(c) = &s.comment {
        let _ = writeln!(out, "{indent}\tcomment \"{}\"", c.as_str());
    }
    if !s.elements.is_empty() {
        let _ = writeln!(out, "{indent}\telements = {{");
        for (i, e) in s.elements.iter().enumerate() {
            let sep = if i + 1 == s.elements.len() { "" } else { "," };
            let _ = writeln!(out, "{indent}\t\t{}{sep}", element_text(e));
        }
        let _ = writeln!(out, "{indent}\t}}");
    }
    let _ = writeln!(out, "{indent}}}");
}

/// A chain's declaration line(s) and rules.
pub fn chain_block(c: &Chain, indent: &str, out: &mut String) {
    let _ = writeln!(out, "{indent}chain {} {{", c.name);
    if let Some(b) = &c.base {
        let _ = writeln!(
            out,
            "{indent}\ttype {} hook {} priority {}; policy {};",
            b.kind.keyword(),
            b.hook.keyword(),
            b.priority,
            if b.policy_drop { "drop" } else { "accept" }
        );
    }
    if let Some(cm) = &c.comment {
        let _ = writeln!(out, "{indent}\tcomment \"{}\"", cm.as_str());
    }
    for r in &c.rules {
        let _ = writeln!(out, "{indent}\t{}", rule_text(r));
    }
    let _ = writeln!(out, "{indent}}}");
}

/// The whole table as an `nft -f` script that creates it in an empty
/// namespace (or adds to an existing table of the same name).
pub fn render(t: &Table) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "table {} {} {{", t.family.keyword(), t.name);
    if let Some(c) = &t.comment {
        let _ = writeln!(out, "\tcomment \"{}\"", c.as_str());
    }
    for s in &t.sets {
        set_block(s, "\t", &mut out);
    }
    for c in &t.chains {
        chain_block(c, "\t", &mut out);
    }
    out.push_str("}\n");
    out
}
