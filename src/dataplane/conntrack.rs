//! Stale UDP flows. UDP has no connection to close, so conntrack keeps
//! sending a client's datagrams to an endpoint that is gone, or keeps an
//! un-NATed entry created while a service had no endpoints. Upstream
//! deletes those entries; so do we, over ctnetlink (our own messages on a
//! `NETLINK_NETFILTER` socket: dump, filter, delete by exact tuple).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use crate::model::{IpFamily, Protocol};
use crate::policy::PortPlan;

/// Conntrack entries to delete.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StaleFlow {
    /// Entries NATed to this endpoint (it left the service port).
    ToEndpoint(Protocol, SocketAddr),
    /// Entries whose original destination is this frontend (the service
    /// port went from no endpoints to some).
    ToFrontend(Protocol, SocketAddr),
    /// Entries to this node port on any local address (likewise).
    ToNodePort(Protocol, u16),
}

/// The UDP flows a plan change leaves stale, as upstream decides them:
/// endpoints that served and no longer do; and, when a family goes from no
/// usable endpoint to some, every frontend of it.
pub fn stale_udp_flows(old: Option<&PortPlan>, new: Option<&PortPlan>) -> BTreeSet<StaleFlow> {
    let mut out = BTreeSet::new();
    let proto = match (old, new) {
        (Some(p), _) | (None, Some(p)) => p.info.key.protocol,
        (None, None) => return out,
    };
    if proto != Protocol::Udp {
        return out;
    }
    for family in IpFamily::ALL {
        let reachable = |p: Option<&PortPlan>| -> BTreeSet<SocketAddr> {
            p.map(|p| {
                let f = p.family(family);
                f.cluster.iter().chain(f.local.iter()).copied().collect()
            })
            .unwrap_or_default()
        };
        let (before, after) = (reachable(old), reachable(new));
        for gone in before.difference(&after) {
            out.insert(StaleFlow::ToEndpoint(proto, *gone));
        }
        let had = old.is_some_and(|p| p.family(family).has_any);
        if let Some(p) = new.filter(|p| p.family(family).has_any && !had) {
            let fe = p.info.family(family);
            let port = p.info.port;
            for ip in fe
                .cluster_ip
                .iter()
                .chain(&fe.external_ips)
                .chain(&fe.load_balancer_ips)
            {
                out.insert(StaleFlow::ToFrontend(proto, SocketAddr::new(*ip, port)));
            }
            if let Some(np) = p.info.node_port {
                out.insert(StaleFlow::ToNodePort(proto, np));
            }
        }
    }
    out
}

/// Deletes conntrack entries. A seam so tests can record instead.
pub trait FlowCleaner: Send {
    /// Delete the entries of these flows; returns how many were deleted.
    fn clear(&mut self, flows: &BTreeSet<StaleFlow>) -> Result<usize, ConntrackError>;
}

/// A conntrack failure (logged by the agent; it never fails a sync).
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The netlink socket failed.
    #[error("conntrack netlink: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel answered with an error code.
    #[error("conntrack netlink: kernel error {0}")]
    Kernel(i32),
    /// A reply that does not parse.
    #[error("conntrack netlink: malformed reply: {0}")]
    Malformed(&'static str),
}

/// One direction of a conntrack entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

/// A conntrack entry: original and reply directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// As the client sent it.
    pub orig: Tuple,
    /// As the answer comes back (after NAT: the endpoint is its source).
    pub reply: Tuple,
}

impl StaleFlow {
    /// Whether an entry belongs to this flow.
    pub fn matches(&self, e: &Entry, local: &dyn Fn(&IpAddr) -> bool) -> bool {
        let proto = self.protocol();
        if e.orig.proto != ip_proto(proto) {
            return false;
        }
        let natted = e.reply.src != e.orig.dst || e.reply.sport != e.orig.dport;
        match self {
            StaleFlow::ToEndpoint(_, ep) => natted && e.reply.src == ep.ip() && e.reply.sport == ep.port(),
            StaleFlow::ToFrontend(_, fe) => e.orig.dst == fe.ip() && e.orig.dport == fe.port(),
            StaleFlow::ToNodePort(_, port) => e.orig.dport == *port && local(&e.orig.dst),
        }
    }

    fn protocol(&self) -> Protocol {
        match self {
            StaleFlow::ToEndpoint(p, _) | StaleFlow::ToFrontend(p, _) | StaleFlow::ToNodePort(p, _) => *p,
        }
    }
}

fn ip_proto(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

// === ctnetlink wire format ===

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn put_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    buf.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(align4(buf.len()), 0);
}

fn nested(kind: u16, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut inner = Vec::new();
    f(&mut inner);
    let mut out = Vec::new();
    put_attr(&mut out, kind | NLA_F_NESTED, &inner);
    out
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn tuple_attr(kind: u16, t: &Tuple) -> Vec<u8> {
    nested(kind, |b| {
        let (s, d) = if t.src.is_ipv4() {
            (CTA_IP_V4_SRC, CTA_IP_V4_DST)
        } else {
            (CTA_IP_V6_SRC, CTA_IP_V6_DST)
        };
        b.extend(nested(CTA_TUPLE_IP, |ip| {
            put_attr(ip, s, &ip_bytes(&t.src));
            put_attr(ip, d, &ip_bytes(&t.dst));
        }));
        b.extend(nested(CTA_TUPLE_PROTO, |p| {
            put_attr(p, CTA_PROTO_NUM, &[t.proto]);
            // Ports are big-endian on the wire, unlike the headers.
            put_attr(p, CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
            put_attr(p, CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
        }));
    })
}

/// Encode a ctnetlink request: netlink header, nfgenmsg, attributes.
pub fn encode(msg_type: u16, flags: u16, seq: u32, family: u8, attrs: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + attrs.len();
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg_type).to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&[family, 0]); // nfgen_family, NFNETLINK_V0
    b.extend_from_slice(&0u16.to_be_bytes()); // res_id
    b.extend_from_slice(attrs);
    b
}

/// The request that deletes one entry (by its original tuple).
pub fn delete_request(seq: u32, e: &Entry) -> Vec<u8> {
    let family = if e.orig.src.is_ipv4() { AF_INET } else { AF_INET6 };
    encode(
        IPCTNL_MSG_CT_DELETE,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        family,
        &tuple_attr(CTA_TUPLE_ORIG, &e.orig),
    )
}

fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & !NLA_F_NESTED;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = &b[align4(len).min(b.len())..];
        Some((kind, payload))
    })
}

fn parse_ip(p: &[u8]) -> Option<IpAddr> {
    match p.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(p).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(p).ok()?)),
        _ => None,
    }
}

fn parse_tuple(p: &[u8]) -> Option<Tuple> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, 0, 0);
    for (kind, payload) in attrs(p) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, v) in attrs(payload) {
                    match k {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = parse_ip(v),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = parse_ip(v),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, v) in attrs(payload) {
                    match (k, v) {
                        (CTA_PROTO_NUM, [n, ..]) => proto = Some(*n),
                        (CTA_PROTO_SRC_PORT, [a, b, ..]) => sport = u16::from_be_bytes([*a, *b]),
                        (CTA_PROTO_DST_PORT, [a, b, ..]) => dport = u16::from_be_bytes([*a, *b]),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple {
        src: src?,
        dst: dst?,
        proto: proto?,
        sport,
        dport,
    })
}

/// One netlink message from a buffer of several.
#[derive(Debug)]
pub enum Reply {
    /// A conntrack entry (from a dump).
    Entry(Entry),
    /// An entry that did not parse (skipped).
    Other,
    /// End of a dump.
    Done,
    /// An error or ACK (0).
    Error(i32),
}

/// Split a datagram into messages.
pub fn parse_replies(mut b: &[u8]) -> Result<Vec<Reply>, ConntrackError> {
    let mut out = Vec::new();
    while b.len() >= 16 {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        if len < 16 || len > b.len() {
            return Err(ConntrackError::Malformed("netlink length"));
        }
        let body = &b[16..len];
        out.push(match kind {
            NLMSG_DONE => Reply::Done,
            NLMSG_ERROR => Reply::Error(
                body.get(..4)
                    .map(|e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]))
                    .unwrap_or(0),
            ),
            _ if body.len() >= 4 => {
                let mut orig = None;
                let mut reply = None;
                for (k, v) in attrs(&body[4..]) {
                    match k {
                        CTA_TUPLE_ORIG => orig = parse_tuple(v),
                        CTA_TUPLE_REPLY => reply = parse_tuple(v),
                        _ => {}
                    }
                }
                match (orig, reply) {
                    (Some(orig), Some(reply)) => Reply::Entry(Entry { orig, reply }),
                    _ => Reply::Other,
                }
            }
            _ => Reply::Other,
        });
        b = &b[align4(len).min(b.len())..];
    }
    Ok(out)
}

/// The kernel's conntrack table, over netlink, in the agent's own network
/// namespace.
pub struct NetlinkConntrack {
    socket: netlink_sys::Socket,
    seq: u32,
    local: Box<dyn Fn(&IpAddr) -> bool + Send>,
}

impl NetlinkConntrack {
    /// Open a ctnetlink socket. `local` tells whether an address is one of
    /// the node's (for node-port flows).
    pub fn open(local: Box<dyn Fn(&IpAddr) -> bool + Send>) -> Result<NetlinkConntrack, ConntrackError> {
        let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        Ok(NetlinkConntrack { socket, seq: 1, local })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Every entry of one family.
    pub fn dump(&mut self, family: IpFamily) -> Result<Vec<Entry>, ConntrackError> {
        let af = match family {
            IpFamily::V4 => AF_INET,
            IpFamily::V6 => AF_INET6,
        };
        let seq = self.next_seq();
        self.socket
            .send(&encode(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, af, &[]), 0)?;
        let mut out = Vec::new();
        loop {
            let (buf, _) = self.socket.recv_from_full()?;
            for r in parse_replies(&buf)? {
                match r {
                    Reply::Entry(e) => out.push(e),
                    Reply::Other => {}
                    Reply::Done => return Ok(out),
                    Reply::Error(0) => return Ok(out),
                    Reply::Error(e) => return Err(ConntrackError::Kernel(e)),
                }
            }
        }
    }

    /// Delete one entry; an entry already gone is not an error.
    pub fn delete(&mut self, e: &Entry) -> Result<bool, ConntrackError> {
        let seq = self.next_seq();
        self.socket.send(&delete_request(seq, e), 0)?;
        loop {
            let (buf, _) = self.socket.recv_from_full()?;
            for r in parse_replies(&buf)? {
                match r {
                    Reply::Error(0) => return Ok(true),
                    Reply::Error(-2) => return Ok(false), // ENOENT: expired meanwhile
                    Reply::Error(e) => return Err(ConntrackError::Kernel(e)),
                    _ => {}
                }
            }
        }
    }
}

impl FlowCleaner for NetlinkConntrack {
    fn clear(&mut self, flows: &BTreeSet<StaleFlow>) -> Result<usize, ConntrackError> {
        if flows.is_empty() {
            return Ok(0);
        }
        let mut deleted = 0;
        for family in IpFamily::ALL {
            let wanted: Vec<&StaleFlow> = flows
                .iter()
                .filter(|f| match f {
                    StaleFlow::ToEndpoint(_, a) | StaleFlow::ToFrontend(_, a) => IpFamily::of(&a.ip()) == family,
                    StaleFlow::ToNodePort(..) => true,
                })
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let entries = self.dump(family)?;
            let stale: Vec<Entry> = entries
                .into_iter()
                .filter(|e| wanted.iter().any(|f| f.matches(e, &*self.local)))
                .collect();
            for e in &stale {
                if self.delete(e)? {
                    deleted += 1;
                }
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::NodeContext;
    use crate::testing::*;
    use crate::track::Tracker;
    use serde_json::json;

    fn plan(ips: &[&str], proto: &str) -> PortPlan {
        let mut t = Tracker::new(NodeContext::new("n"));
        t.apply_service(service("ns", "dns", json!({"clusterIP": "10.96.0.10", "externalIPs": ["198.51.100.1"], "type": "NodePort", "ports": [{"name": "dns", "port": 53, "protocol": proto, "nodePort": 30053}]})));
        let eps: Vec<_> = ips.iter().map(|ip| ep(ip, "n")).collect();
        t.apply_slice(slice(
            "ns",
            "dns-1",
            "dns",
            "IPv4",
            json!([port("dns", 5353, proto)]),
            json!(eps),
        ));
        t.table().plans().next().unwrap().1.clone()
    }

    #[test]
    fn removed_udp_endpoint_is_stale() {
        let (old, new) = (plan(&["10.244.1.1", "10.244.1.2"], "UDP"), plan(&["10.244.1.2"], "UDP"));
        let stale = stale_udp_flows(Some(&old), Some(&new));
        assert_eq!(
            stale.into_iter().collect::<Vec<_>>(),
            vec![StaleFlow::ToEndpoint(Protocol::Udp, "10.244.1.1:5353".parse().unwrap())]
        );
    }

    #[test]
    fn first_udp_endpoint_makes_frontends_stale() {
        let (old, new) = (plan(&[], "UDP"), plan(&["10.244.1.2"], "UDP"));
        let stale: Vec<_> = stale_udp_flows(Some(&old), Some(&new)).into_iter().collect();
        assert_eq!(
            stale,
            vec![
                StaleFlow::ToFrontend(Protocol::Udp, "10.96.0.10:53".parse().unwrap()),
                StaleFlow::ToFrontend(Protocol::Udp, "198.51.100.1:53".parse().unwrap()),
                StaleFlow::ToNodePort(Protocol::Udp, 30053),
            ]
        );
    }

    #[test]
    fn tcp_changes_leave_nothing_stale() {
        let (old, new) = (plan(&["10.244.1.1"], "TCP"), plan(&[], "TCP"));
        assert!(stale_udp_flows(Some(&old), Some(&new)).is_empty());
    }

    #[test]
    fn delete_request_round_trips_through_the_parser() {
        let e = Entry {
            orig: Tuple {
                src: "10.244.9.9".parse().unwrap(),
                dst: "10.96.0.10".parse().unwrap(),
                proto: 17,
                sport: 40000,
                dport: 53,
            },
            reply: Tuple {
                src: "10.244.1.1".parse().unwrap(),
                dst: "10.244.9.9".parse().unwrap(),
                proto: 17,
                sport: 5353,
                dport: 40000,
            },
        };
        let req = delete_request(7, &e);
        assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()) as usize, req.len());
        assert_eq!(
            u16::from_ne_bytes(req[4..6].try_into().unwrap()),
            (1 << 8) | 2,
            "CTNETLINK DELETE"
        );
        // Reuse the request body as a dump reply carrying both tuples.
        let mut body = tuple_attr(CTA_TUPLE_ORIG, &e.orig);
        body.extend(tuple_attr(CTA_TUPLE_REPLY, &e.reply));
        let msg = encode(0, 0, 1, AF_INET, &body);
        match &parse_replies(&msg).unwrap()[..] {
            [Reply::Entry(parsed)] => assert_eq!(*parsed, e),
            other => panic!("{other:?}"),
        }
        let flow = StaleFlow::ToEndpoint(Protocol::Udp, "10.244.1.1:5353".parse().unwrap());
        assert!(flow.matches(&e, &|_| false));
        assert!(StaleFlow::ToFrontend(Protocol::Udp, "10.96.0.10:53".parse().unwrap()).matches(&e, &|_| false));
        assert!(
            !StaleFlow::ToNodePort(Protocol::Udp, 53).matches(&e, &|_| false),
            "10.96.0.10 is not a node address"
        );
    }
}
