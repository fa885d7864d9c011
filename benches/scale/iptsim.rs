//! A small iptables interpreter: parses `iptables-save` output (nat and
//! filter) and follows a *new* connection through the hooks a real packet
//! crosses, exploring every branch of `statistic` and `recent` matches, so
//! the result is the set of outcomes a client can get (which endpoints it
//! may reach, masqueraded or not, or rejected/dropped/unhandled).
//!
//! Hooks: an arriving packet (pod, external client) goes nat PREROUTING ->
//! routing (a local destination goes to filter INPUT, else filter FORWARD,
//! then nat POSTROUTING); a packet from the node itself goes nat OUTPUT ->
//! filter OUTPUT -> nat POSTROUTING. Built-in chains are assumed to have an
//! ACCEPT policy unless the dump says otherwise.
//!
//! Supported: `-s/-d` (with `!`), `-p`, `-i/-o`, `--dport`/`--sport`
//! (`-m tcp|udp|sctp`, and `-m multiport --dports`), `-m addrtype
//! --src-type/--dst-type` (LOCAL and UNICAST), `-m mark --mark v/m`, `-m
//! statistic --mode random` (both branches), `-m recent --rcheck/--update`
//! (both branches; `--set` always matches), `-m conntrack --ctstate` (the
//! packet is NEW), `-m comment`, `-m nfacct`; targets jump/goto, RETURN,
//! ACCEPT, DROP, REJECT, DNAT, SNAT, MASQUERADE, MARK (`--or-mark`,
//! `--xor-mark`, `--set-xmark`, `--set-mark`). Anything else is an error
//! naming the rule: the interpreter never guesses.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

/// A parse or simulation error.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The dump has something the interpreter does not support.
    #[error("line {line}: {msg}: {text}")]
    Parse {
        /// 1-based line.
        line: usize,
        /// What.
        msg: String,
        /// The line.
        text: String,
    },
    /// A jump to a chain that does not exist, or a loop.
    #[error("{0}")]
    Sim(String),
}

#[derive(Clone, Debug)]
enum Cond {
    Src(IpNet),
    Dst(IpNet),
    Proto(String),
    InIf(String),
    OutIf(String),
    Dport(Vec<(u16, u16)>),
    Sport(Vec<(u16, u16)>),
    SrcType(String),
    DstType(String),
    Mark(u32, u32),
    Random,
    RecentCheck,
    CtState(Vec<String>),
}

#[derive(Clone, Debug)]
struct Match {
    cond: Cond,
    negated: bool,
}

#[derive(Clone, Debug, PartialEq)]
enum Target {
    None,
    Jump(String),
    Goto(String),
    Return,
    Accept,
    Drop,
    Reject,
    Dnat(IpAddr, Option<u16>),
    Snat,
    Masquerade,
    MarkOr(u32),
    MarkXor(u32),
    MarkSet(u32, u32),
}

#[derive(Clone, Debug)]
struct Rule {
    matches: Vec<Match>,
    target: Target,
    /// The rule's text, for errors and traces.
    text: String,
}

/// One table of a dump.
#[derive(Clone, Debug, Default)]
pub struct Table {
    chains: HashMap<String, Vec<Rule>>,
    policies: HashMap<String, String>,
}

/// A parsed `iptables-save` dump.
#[derive(Clone, Debug, Default)]
pub struct Ruleset {
    tables: HashMap<String, Table>,
}

fn tokenize(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_q = false;
    let mut has = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_q => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                in_q = !in_q;
                has = true;
            }
            c if c.is_whitespace() && !in_q => {
                if has || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            c => cur.push(c),
        }
    }
    if has || !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

fn parse_ports(s: &str) -> Option<Vec<(u16, u16)>> {
    s.split(',')
        .map(|p| match p.split_once(':') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => {
                let v = p.parse().ok()?;
                Some((v, v))
            }
        })
        .collect()
}

impl Ruleset {
    /// Parses `iptables-save` / `ip6tables-save` output (every table).
    pub fn parse(text: &str) -> Result<Ruleset, SimError> {
        let mut rs = Ruleset::default();
        let mut table: Option<String> = None;
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let err = |msg: &str| SimError::Parse {
                line: n + 1,
                msg: msg.to_string(),
                text: line.to_string(),
            };
            if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
                continue;
            }
            if let Some(t) = line.strip_prefix('*') {
                table = Some(t.to_string());
                rs.tables.entry(t.to_string()).or_default();
                continue;
            }
            let t = rs
                .tables
                .get_mut(table.as_deref().ok_or_else(|| err("rule outside a table"))?)
                .expect("table exists");
            if let Some(decl) = line.strip_prefix(':') {
                let mut it = decl.split_whitespace();
                let name = it.next().ok_or_else(|| err("chain without a name"))?;
                t.chains.entry(name.to_string()).or_default();
                if let Some(p) = it.next()
                    && p != "-"
                {
                    t.policies.insert(name.to_string(), p.to_string());
                }
                continue;
            }
            let toks = tokenize(line);
            if toks.first().map(String::as_str) != Some("-A") || toks.len() < 2 {
                return Err(err("not a rule"));
            }
            let chain = toks[1].clone();
            let rule = parse_rule(&toks[2..]).map_err(|m| err(&m))?;
            t.chains.entry(chain).or_default().push(Rule {
                text: line.to_string(),
                ..rule
            });
        }
        Ok(rs)
    }
}

fn parse_rule(toks: &[String]) -> Result<Rule, String> {
    let mut matches = Vec::new();
    let mut target = Target::None;
    let mut negate = false;
    let mut module = String::new();
    let mut i = 0;
    let mut target_name = String::new();
    let mut push = |cond: Cond, negate: &mut bool| {
        matches.push(Match { cond, negated: *negate });
        *negate = false;
    };
    while i < toks.len() {
        let t = toks[i].as_str();
        let arg = toks.get(i + 1).cloned();
        let need = || arg.clone().ok_or_else(|| format!("{t} needs a value"));
        let mut used = 2;
        match t {
            "!" => {
                negate = true;
                used = 1;
            }
            "-s" | "--source" => push(Cond::Src(parse_net(&need()?).ok_or("bad -s")?), &mut negate),
            "-d" | "--destination" => push(Cond::Dst(parse_net(&need()?).ok_or("bad -d")?), &mut negate),
            "-p" | "--protocol" => push(Cond::Proto(need()?.to_lowercase()), &mut negate),
            "-i" | "--in-interface" => push(Cond::InIf(need()?), &mut negate),
            "-o" | "--out-interface" => push(Cond::OutIf(need()?), &mut negate),
            "-m" | "--match" => {
                module = need()?;
                if !matches!(
                    module.as_str(),
                    "tcp"
                        | "udp"
                        | "sctp"
                        | "multiport"
                        | "addrtype"
                        | "mark"
                        | "statistic"
                        | "recent"
                        | "conntrack"
                        | "comment"
                        | "nfacct"
                ) {
                    return Err(format!("unsupported match module {module}"));
                }
            }
            "--dport" | "--destination-port" | "--dports" | "--destination-ports" => {
                push(Cond::Dport(parse_ports(&need()?).ok_or("bad port")?), &mut negate)
            }
            "--sport" | "--source-port" | "--sports" | "--source-ports" => {
                push(Cond::Sport(parse_ports(&need()?).ok_or("bad port")?), &mut negate)
            }
            "--src-type" => push(Cond::SrcType(need()?), &mut negate),
            "--dst-type" => push(Cond::DstType(need()?), &mut negate),
            "--limit-iface-in" | "--limit-iface-out" | "--reap" | "--rsource" | "--random" | "--random-fully"
            | "--persistent" => used = 1,
            "--mark" if module == "mark" => {
                let v = need()?;
                let (val, mask) = match v.split_once('/') {
                    Some((a, b)) => (parse_u32(a), parse_u32(b)),
                    None => (parse_u32(&v), Some(u32::MAX)),
                };
                push(Cond::Mark(val.ok_or("bad mark")?, mask.ok_or("bad mask")?), &mut negate)
            }
            "--mode" => {
                if need()? != "random" {
                    return Err("statistic mode other than random".into());
                }
            }
            "--probability" => push(Cond::Random, &mut negate),
            "--rcheck" | "--update" => {
                push(Cond::RecentCheck, &mut negate);
                used = 1;
            }
            "--set" if module == "recent" => used = 1,
            "--name" | "--seconds" | "--mask" | "--hitcount" | "--comment" | "--nfacct-name" | "--reject-with"
            | "--to-source" => {
                need()?;
            }
            "--ctstate" => push(
                Cond::CtState(need()?.split(',').map(str::to_string).collect()),
                &mut negate,
            ),
            "-j" | "--jump" | "-g" | "--goto" => {
                target_name = need()?;
                target = match target_name.as_str() {
                    "ACCEPT" => Target::Accept,
                    "DROP" => Target::Drop,
                    "REJECT" => Target::Reject,
                    "RETURN" => Target::Return,
                    "MASQUERADE" => Target::Masquerade,
                    "SNAT" => Target::Snat,
                    "DNAT" | "MARK" => Target::None,
                    c if t == "-g" || t == "--goto" => Target::Goto(c.to_string()),
                    c => Target::Jump(c.to_string()),
                };
            }
            "--to-destination" => {
                let v = need()?;
                let (ip, port) = split_host_port(&v).ok_or_else(|| format!("bad DNAT destination {v}"))?;
                target = Target::Dnat(ip, port);
            }
            "--or-mark" => target = Target::MarkOr(parse_u32(&need()?).ok_or("bad mark")?),
            "--xor-mark" => target = Target::MarkXor(parse_u32(&need()?).ok_or("bad mark")?),
            "--set-xmark" | "--set-mark" => {
                let v = need()?;
                let (val, mask) = match v.split_once('/') {
                    Some((a, b)) => (parse_u32(a), parse_u32(b)),
                    None => (parse_u32(&v), Some(u32::MAX)),
                };
                target = Target::MarkSet(val.ok_or("bad mark")?, mask.ok_or("bad mask")?);
            }
            other => return Err(format!("unsupported option {other}")),
        }
        i += used;
    }
    if (target_name == "DNAT" && !matches!(target, Target::Dnat(..)))
        || (target_name == "MARK" && !matches!(target, Target::MarkOr(_) | Target::MarkXor(_) | Target::MarkSet(..)))
    {
        return Err(format!("{target_name} without its arguments"));
    }
    Ok(Rule {
        matches,
        target,
        text: String::new(),
    })
}

fn split_host_port(v: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Some(rest) = v.strip_prefix('[') {
        let (h, p) = rest.split_once(']')?;
        let port = p.strip_prefix(':').map(|p| p.parse().ok()).unwrap_or(Some(0))?;
        return Some((h.parse().ok()?, (port != 0).then_some(port)));
    }
    match v.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h.parse().ok()?, Some(p.parse().ok()?))),
        _ => Some((v.parse().ok()?, None)),
    }
}

/// A new connection's first packet.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Packet {
    /// Source address.
    pub src: IpAddr,
    /// Destination address (rewritten by DNAT).
    pub dst: IpAddr,
    /// `tcp`, `udp`, `sctp`.
    pub proto: String,
    /// Destination port (rewritten by DNAT).
    pub dport: u16,
    /// Source port.
    pub sport: u16,
    /// Incoming interface (arriving packets).
    pub iif: Option<String>,
    /// Packet mark.
    pub mark: u32,
}

/// What happens to a connection, one branch.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// DNAT to `endpoint`; `masq` when the source is rewritten on the way out.
    Forward {
        /// `ip:port`.
        endpoint: String,
        /// Masqueraded.
        masq: bool,
    },
    /// REJECT.
    Reject,
    /// DROP.
    Drop,
    /// No rule rewrote it: it goes to its original destination.
    Unhandled {
        /// Masqueraded.
        masq: bool,
    },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Forward { endpoint, masq } => write!(f, "{endpoint}{}", if *masq { "+masq" } else { "" }),
            Outcome::Reject => write!(f, "reject"),
            Outcome::Drop => write!(f, "drop"),
            Outcome::Unhandled { masq } => write!(f, "unhandled{}", if *masq { "+masq" } else { "" }),
        }
    }
}

#[derive(Clone, Debug)]
enum Exit {
    Return,
    Accept,
    Drop,
    Reject,
    Dnat(IpAddr, Option<u16>),
    Masquerade,
}

/// The node the rules run on.
pub struct Node {
    /// Addresses that are LOCAL (`addrtype`) on the node, loopback included.
    pub local: Vec<IpNet>,
}

impl Node {
    fn is_local(&self, ip: IpAddr) -> bool {
        self.local.iter().any(|n| n.contains(&ip))
    }
}

const MAX_DEPTH: usize = 32;

impl Ruleset {
    fn run_chain(
        &self,
        table: &str,
        chain: &str,
        pkt: Packet,
        node: &Node,
        depth: usize,
    ) -> Result<Vec<(Exit, Packet)>, SimError> {
        if depth > MAX_DEPTH {
            return Err(SimError::Sim(format!(
                "jumps nested deeper than {MAX_DEPTH} at {table}/{chain}"
            )));
        }
        let t = self.tables.get(table);
        let Some(rules) = t.and_then(|t| t.chains.get(chain)) else {
            if depth == 0 {
                // A built-in chain absent from the dump: nothing in it.
                return Ok(vec![(Exit::Return, pkt)]);
            }
            return Err(SimError::Sim(format!("jump to missing chain {table}/{chain}")));
        };
        let mut live = vec![pkt];
        let mut out = Vec::new();
        for rule in rules {
            let mut next = Vec::new();
            for p in live {
                for (matched, p) in self.matches(rule, p, node)? {
                    if !matched {
                        next.push(p);
                        continue;
                    }
                    let mut p = p;
                    match &rule.target {
                        Target::None => next.push(p),
                        Target::MarkOr(v) => {
                            p.mark |= v;
                            next.push(p)
                        }
                        Target::MarkXor(v) => {
                            p.mark ^= v;
                            next.push(p)
                        }
                        Target::MarkSet(v, m) => {
                            p.mark = (p.mark & !m) ^ v;
                            next.push(p)
                        }
                        Target::Jump(c) => {
                            for (e, p) in self.run_chain(table, c, p, node, depth + 1)? {
                                match e {
                                    Exit::Return => next.push(p),
                                    e => out.push((e, p)),
                                }
                            }
                        }
                        Target::Goto(c) => out.extend(self.run_chain(table, c, p, node, depth + 1)?),
                        Target::Return => out.push((Exit::Return, p)),
                        Target::Accept => out.push((Exit::Accept, p)),
                        Target::Drop => out.push((Exit::Drop, p)),
                        Target::Reject => out.push((Exit::Reject, p)),
                        Target::Dnat(ip, port) => out.push((Exit::Dnat(*ip, *port), p)),
                        Target::Masquerade | Target::Snat => out.push((Exit::Masquerade, p)),
                    }
                }
            }
            live = dedup(next);
        }
        out.extend(live.into_iter().map(|p| (Exit::Return, p)));
        Ok(out)
    }

    /// `(matched, packet)` branches of one rule.
    fn matches(&self, rule: &Rule, p: Packet, node: &Node) -> Result<Vec<(bool, Packet)>, SimError> {
        let mut forks = false;
        for m in &rule.matches {
            let hit = match &m.cond {
                Cond::Src(n) => n.contains(&p.src),
                Cond::Dst(n) => n.contains(&p.dst),
                Cond::Proto(x) => x == &p.proto || x == "all",
                Cond::InIf(i) => p.iif.as_deref().is_some_and(|f| iface_match(i, f)),
                Cond::OutIf(i) => {
                    return Err(SimError::Sim(format!(
                        "-o {i} is not simulated (needs routing): {}",
                        rule.text
                    )));
                }
                Cond::Dport(r) => r.iter().any(|(a, b)| (*a..=*b).contains(&p.dport)),
                Cond::Sport(r) => r.iter().any(|(a, b)| (*a..=*b).contains(&p.sport)),
                Cond::SrcType(t) => addrtype(t, p.src, node, rule)?,
                Cond::DstType(t) => addrtype(t, p.dst, node, rule)?,
                Cond::Mark(v, mask) => p.mark & mask == *v,
                Cond::CtState(states) => states.iter().any(|s| s == "NEW"),
                Cond::Random | Cond::RecentCheck => {
                    forks = true;
                    continue;
                }
            };
            if hit == m.negated {
                return Ok(vec![(false, p)]);
            }
        }
        if forks {
            // Both branches are possible: the random draw, or whether the
            // client is in the affinity list.
            Ok(vec![(true, p.clone()), (false, p)])
        } else {
            Ok(vec![(true, p)])
        }
    }

    /// Every outcome of a new connection. `local_out`: sent by the node
    /// itself (OUTPUT path); otherwise arriving on `pkt.iif`.
    pub fn simulate(&self, pkt: &Packet, local_out: bool, node: &Node) -> Result<BTreeSet<Outcome>, SimError> {
        let first = if local_out { "OUTPUT" } else { "PREROUTING" };
        let mut out = BTreeSet::new();
        for (e, mut p) in self.run_chain("nat", first, pkt.clone(), node, 0)? {
            let dnat = match e {
                Exit::Dnat(ip, port) => {
                    p.dst = ip;
                    if let Some(port) = port {
                        p.dport = port;
                    }
                    true
                }
                Exit::Drop => {
                    out.insert(Outcome::Drop);
                    continue;
                }
                Exit::Reject => {
                    out.insert(Outcome::Reject);
                    continue;
                }
                _ => false,
            };
            let filter_chain = if local_out {
                "OUTPUT"
            } else if node.is_local(p.dst) {
                "INPUT"
            } else {
                "FORWARD"
            };
            for (fe, p) in self.run_chain("filter", filter_chain, p, node, 0)? {
                match fe {
                    Exit::Drop => {
                        out.insert(Outcome::Drop);
                        continue;
                    }
                    Exit::Reject => {
                        out.insert(Outcome::Reject);
                        continue;
                    }
                    _ => {}
                }
                let policy = self
                    .tables
                    .get("filter")
                    .and_then(|t| t.policies.get(filter_chain))
                    .map(String::as_str);
                if matches!(fe, Exit::Return) && policy == Some("DROP") {
                    out.insert(Outcome::Drop);
                    continue;
                }
                // Delivered locally without DNAT: no POSTROUTING.
                let delivered_locally = !local_out && filter_chain == "INPUT";
                let masq = if delivered_locally {
                    vec![false]
                } else {
                    self.run_chain("nat", "POSTROUTING", p.clone(), node, 0)?
                        .into_iter()
                        .map(|(e, _)| matches!(e, Exit::Masquerade))
                        .collect()
                };
                for masq in masq {
                    out.insert(if dnat {
                        Outcome::Forward {
                            endpoint: fmt_ep(p.dst, p.dport),
                            masq,
                        }
                    } else {
                        Outcome::Unhandled { masq }
                    });
                }
            }
        }
        Ok(out)
    }
}

fn fmt_ep(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn iface_match(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('+') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

fn addrtype(t: &str, ip: IpAddr, node: &Node, rule: &Rule) -> Result<bool, SimError> {
    match t {
        "LOCAL" => Ok(node.is_local(ip)),
        "UNICAST" => Ok(!ip.is_multicast() && ip != IpAddr::from([255, 255, 255, 255])),
        other => Err(SimError::Sim(format!("addrtype {other} not simulated: {}", rule.text))),
    }
}

fn dedup(v: Vec<Packet>) -> Vec<Packet> {
    let mut seen = std::collections::HashSet::new();
    v.into_iter().filter(|p| seen.insert(p.clone())).collect()
}

/// Arguments of `scale-bench simulate`.
#[derive(clap::Args)]
pub struct SimulateArgs {
    /// An `iptables-save` dump.
    #[arg(long)]
    pub rules: PathBuf,
    /// Source address.
    #[arg(long)]
    pub src: IpAddr,
    /// Destination address.
    #[arg(long)]
    pub dst: IpAddr,
    /// Destination port.
    #[arg(long)]
    pub dport: u16,
    /// Protocol.
    #[arg(long, default_value = "tcp")]
    pub proto: String,
    /// Sent by the node itself (OUTPUT path).
    #[arg(long)]
    pub local: bool,
    /// The node's own addresses (comma-separated); loopback is added.
    #[arg(long, value_delimiter = ',')]
    pub node_ips: Vec<IpAddr>,
}

/// `scale-bench simulate`.
pub fn simulate_cmd(a: SimulateArgs) {
    let text = std::fs::read_to_string(&a.rules).unwrap_or_else(|e| panic!("{}: {e}", a.rules.display()));
    let rs = Ruleset::parse(&text).unwrap_or_else(|e| panic!("{e}"));
    let mut local: Vec<IpNet> = a.node_ips.iter().map(|ip| IpNet::from(*ip)).collect();
    local.push("127.0.0.0/8".parse().expect("net"));
    local.push("::1/128".parse().expect("net"));
    let pkt = Packet {
        src: a.src,
        dst: a.dst,
        proto: a.proto,
        dport: a.dport,
        sport: 40000,
        iif: (!a.local).then(|| "eth0".to_string()),
        mark: 0,
    };
    match rs.simulate(&pkt, a.local, &Node { local }) {
        Ok(o) => println!("{}", o.iter().map(|o| o.to_string()).collect::<Vec<_>>().join(" ")),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KP: &str = r#"*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.70/32 -p tcp -m comment --comment "demo/empty:http has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SVC-A - [0:0]
:KUBE-SEP-1 - [0:0]
:KUBE-SEP-2 - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "demo/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-A
-A KUBE-SVC-A ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m comment --comment "demo/web:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-A -m comment --comment "demo/web:http -> 10.244.1.10:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-1
-A KUBE-SVC-A -m comment --comment "demo/web:http -> 10.244.2.10:8080" -j KUBE-SEP-2
-A KUBE-SEP-1 -s 10.244.1.10/32 -m comment --comment "demo/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-1 -p tcp -m comment --comment "demo/web:http" -m tcp -j DNAT --to-destination 10.244.1.10:8080
-A KUBE-SEP-2 -s 10.244.2.10/32 -m comment --comment "demo/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-2 -p tcp -m comment --comment "demo/web:http" -m tcp -j DNAT --to-destination 10.244.2.10:8080
COMMIT
"#;

    fn node() -> Node {
        Node {
            local: vec!["192.168.50.10/32".parse().unwrap(), "127.0.0.0/8".parse().unwrap()],
        }
    }

    fn pkt(src: &str, dst: &str, port: u16) -> Packet {
        Packet {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: "tcp".into(),
            dport: port,
            sport: 40000,
            iif: Some("eth0".into()),
            mark: 0,
        }
    }

    fn show(o: &BTreeSet<Outcome>) -> String {
        o.iter().map(|o| o.to_string()).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn statistic_explores_every_endpoint_and_masq_follows_the_mark() {
        let rs = Ruleset::parse(KP).unwrap();
        let pod = rs
            .simulate(&pkt("10.244.3.3", "10.96.0.10", 80), false, &node())
            .unwrap();
        assert_eq!(show(&pod), "10.244.1.10:8080 10.244.2.10:8080");
        let ext = rs
            .simulate(&pkt("192.168.50.100", "10.96.0.10", 80), false, &node())
            .unwrap();
        assert_eq!(show(&ext), "10.244.1.10:8080+masq 10.244.2.10:8080+masq");
        // Hairpin: an endpoint reaching its own service is masqueraded when it lands on itself.
        let hp = rs
            .simulate(&pkt("10.244.1.10", "10.96.0.10", 80), false, &node())
            .unwrap();
        assert_eq!(show(&hp), "10.244.1.10:8080+masq 10.244.2.10:8080");
    }

    #[test]
    fn reject_unhandled_and_unsupported() {
        let rs = Ruleset::parse(KP).unwrap();
        let r = rs
            .simulate(&pkt("10.244.3.3", "10.96.0.70", 80), false, &node())
            .unwrap();
        assert_eq!(show(&r), "reject");
        let u = rs
            .simulate(&pkt("10.244.3.3", "10.96.0.10", 81), false, &node())
            .unwrap();
        assert_eq!(show(&u), "unhandled");
        let bad = Ruleset::parse("*nat\n:X - [0:0]\n-A X -m string --string foo -j DROP\nCOMMIT\n");
        assert!(bad.unwrap_err().to_string().contains("unsupported match module string"));
    }

    /// Real dumps of both proxies on node-a of `examples/cluster.yaml`
    /// (kube-proxy v1.34.4 and sliceproxy, iptables-nft): both parse, agree
    /// where they should and show the known localhost-NodePort difference.
    #[test]
    fn real_dumps_of_both_proxies() {
        let kp = Ruleset::parse(include_str!("testdata/kube-proxy-v1.34.4-node-a-ipv4.txt")).unwrap();
        let sp = Ruleset::parse(include_str!("testdata/sliceproxy-node-a-ipv4.txt")).unwrap();
        let both = |p: &Packet, local: bool| {
            let a = show(&kp.simulate(p, local, &node()).unwrap());
            let b = show(&sp.simulate(p, local, &node()).unwrap());
            (a, b)
        };
        let (a, b) = both(&pkt("10.244.99.99", "10.96.0.10", 80), false);
        assert_eq!(a, "10.244.1.10:8080 10.244.2.10:8080");
        assert_eq!(a, b);
        let (a, b) = both(&pkt("198.18.0.1", "192.168.50.10", 30081), false);
        assert_eq!(
            (a.as_str(), b.as_str()),
            ("drop", "drop"),
            "Local policy, no local endpoint"
        );
        let mut node_pkt = pkt("192.168.50.10", "192.168.50.10", 30081);
        node_pkt.iif = None;
        let (a, b) = both(&node_pkt, true);
        assert_eq!(
            (a.as_str(), b.as_str()),
            ("10.244.2.31:8080+masq", "10.244.2.31:8080+masq")
        );
        let mut lo = pkt("127.0.0.1", "127.0.0.1", 30080);
        lo.iif = None;
        let (a, b) = both(&lo, true);
        assert_eq!(a, "10.244.1.30:8080+masq 10.244.2.30:8080+masq");
        assert_eq!(b, "unhandled");
    }
}
