//! The dummy interface that holds every service address (kube-proxy's
//! `kube-ipvs0`): created, kept up and given addresses over rtnetlink. The
//! messages are small and fixed, so they are written here by hand on top of
//! `netlink-sys` rather than pulling in an async rtnetlink stack. Addresses
//! are read with [`crate::netaddr::AddressReader`], like every other reader
//! of the node's addresses.

use std::collections::BTreeSet;
use std::net::IpAddr;

use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_ROUTE};

use crate::netaddr::AddressReader;

/// What the backend needs from the link layer.
pub trait Links: Send {
    /// Create the dummy interface `name` if it is missing, and set it up.
    fn ensure_dummy(&mut self, name: &str) -> Result<(), String>;
    /// The addresses on `name`; `None` when the interface does not exist.
    fn addresses(&mut self, name: &str) -> Result<Option<Vec<IpAddr>>, String>;
    /// Add a host address (/32, /128) to `name`; present already is fine.
    fn add_address(&mut self, name: &str, ip: IpAddr) -> Result<(), String>;
    /// Remove an address from `name`; absent already is fine.
    fn delete_address(&mut self, name: &str, ip: IpAddr) -> Result<(), String>;
    /// Delete the interface; `false` when it did not exist.
    fn delete_link(&mut self, name: &str) -> Result<bool, String>;
}

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFF_UP: u32 = 1;
const IFA_F_NODAD: u8 = 0x02;
const NLA_F_NESTED: u16 = 0x8000;
const ENODEV: i32 = 19;
const EEXIST: i32 = 17;
const EADDRNOTAVAIL: i32 = 99;

fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn ifinfomsg(index: i32, flags: u32, change: u32) -> Vec<u8> {
    let mut b = vec![0u8, 0];
    b.extend_from_slice(&0u16.to_ne_bytes());
    b.extend_from_slice(&index.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&change.to_ne_bytes());
    b
}

fn ip_bytes(ip: IpAddr) -> (u8, u8, Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => (2, 32, v4.octets().to_vec()),
        IpAddr::V6(v6) => (10, 128, v6.octets().to_vec()),
    }
}

/// One parsed reply message: type and body after the netlink header.
struct Reply {
    kind: u16,
    body: Vec<u8>,
}

/// rtnetlink on a socket of its own, in the network namespace the socket
/// was opened in.
pub struct RtLinks {
    socket: Socket,
    seq: u32,
    /// Addresses are read the one way the agent reads them.
    reader: AddressReader,
}

impl RtLinks {
    /// Open an `NETLINK_ROUTE` socket.
    pub fn open() -> std::io::Result<RtLinks> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&NetlinkAddr::new(0, 0))?;
        Ok(RtLinks {
            socket,
            seq: 0,
            reader: AddressReader::open()?,
        })
    }

    /// Send one request; collect data replies until ACK/DONE. `Err(errno)`
    /// for a kernel error, `Err(-1)`-style I/O errors as strings.
    fn request(&mut self, kind: u16, flags: u16, body: &[u8]) -> Result<Result<Vec<Reply>, i32>, String> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let len = 16 + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        self.socket.send(&msg, 0).map_err(|e| format!("rtnetlink send: {e}"))?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            let (datagram, _) = self
                .socket
                .recv_from_full()
                .map_err(|e| format!("rtnetlink recv: {e}"))?;
            let mut b = &datagram[..];
            while b.len() >= 16 {
                let mlen = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                let mkind = u16::from_ne_bytes([b[4], b[5]]);
                let mseq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
                if mlen < 16 || mlen > b.len() {
                    return Err("rtnetlink: truncated message".into());
                }
                let body = &b[16..mlen];
                b = &b[((mlen + 3) & !3).min(b.len())..];
                if mseq != seq {
                    continue;
                }
                match mkind {
                    NLMSG_ERROR => {
                        let errno = body
                            .get(..4)
                            .map(|e| -i32::from_ne_bytes([e[0], e[1], e[2], e[3]]))
                            .unwrap_or(0);
                        return Ok(if errno == 0 { Ok(replies) } else { Err(errno) });
                    }
                    NLMSG_DONE => return Ok(Ok(replies)),
                    _ => {
                        replies.push(Reply {
                            kind: mkind,
                            body: body.to_vec(),
                        });
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(Ok(replies));
                        }
                    }
                }
            }
        }
    }

    fn index(&mut self, name: &str) -> Result<Option<i32>, String> {
        let mut body = ifinfomsg(0, 0, 0);
        attr(&mut body, IFLA_IFNAME, &cstr(name));
        match self.request(RTM_GETLINK, NLM_F_REQUEST, &body)? {
            Ok(replies) => {
                let r = replies
                    .iter()
                    .find(|r| r.kind == RTM_NEWLINK && r.body.len() >= 16)
                    .ok_or("rtnetlink: GETLINK without a link")?;
                Ok(Some(i32::from_ne_bytes([r.body[4], r.body[5], r.body[6], r.body[7]])))
            }
            Err(ENODEV) => Ok(None),
            Err(e) => Err(format!("get link {name}: {}", std::io::Error::from_raw_os_error(e))),
        }
    }

    fn need_index(&mut self, name: &str) -> Result<i32, String> {
        self.index(name)?
            .ok_or_else(|| format!("interface {name} does not exist"))
    }

    fn addr_request(&mut self, kind: u16, flags: u16, name: &str, ip: IpAddr) -> Result<Result<(), i32>, String> {
        let index = self.need_index(name)?;
        let (family, plen, bytes) = ip_bytes(ip);
        let mut body = vec![family, plen, if family == 10 { IFA_F_NODAD } else { 0 }, 0];
        body.extend_from_slice(&(index as u32).to_ne_bytes());
        attr(&mut body, IFA_LOCAL, &bytes);
        attr(&mut body, IFA_ADDRESS, &bytes);
        Ok(self.request(kind, flags, &body)?.map(drop))
    }
}

impl Links for RtLinks {
    fn ensure_dummy(&mut self, name: &str) -> Result<(), String> {
        if name.len() > 15 {
            return Err(format!("interface name {name:?} is longer than 15 bytes"));
        }
        if self.index(name)?.is_none() {
            let mut body = ifinfomsg(0, IFF_UP, IFF_UP);
            attr(&mut body, IFLA_IFNAME, &cstr(name));
            let mut info = Vec::new();
            attr(&mut info, IFLA_INFO_KIND, &cstr("dummy"));
            attr(&mut body, IFLA_LINKINFO | NLA_F_NESTED, &info);
            match self.request(
                RTM_NEWLINK,
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                &body,
            )? {
                Ok(_) | Err(EEXIST) => {}
                Err(e) => {
                    return Err(format!(
                        "create dummy interface {name}: {}",
                        std::io::Error::from_raw_os_error(e)
                    ));
                }
            }
        }
        let index = self.need_index(name)?;
        let body = ifinfomsg(index, IFF_UP, IFF_UP);
        match self.request(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, &body)? {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("set {name} up: {}", std::io::Error::from_raw_os_error(e))),
        }
    }

    fn addresses(&mut self, name: &str) -> Result<Option<Vec<IpAddr>>, String> {
        let Some(index) = self.index(name)? else {
            return Ok(None);
        };
        let dump = self.reader.dump().map_err(|e| e.to_string())?;
        let on_link: BTreeSet<IpAddr> = dump
            .into_iter()
            .filter(|a| a.interface == index as u32)
            .map(|a| a.address)
            .collect();
        Ok(Some(on_link.into_iter().collect()))
    }

    fn add_address(&mut self, name: &str, ip: IpAddr) -> Result<(), String> {
        match self.addr_request(
            RTM_NEWADDR,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            name,
            ip,
        )? {
            Ok(()) | Err(EEXIST) => Ok(()),
            Err(e) => Err(format!("add {ip} to {name}: {}", std::io::Error::from_raw_os_error(e))),
        }
    }

    fn delete_address(&mut self, name: &str, ip: IpAddr) -> Result<(), String> {
        match self.addr_request(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK, name, ip)? {
            Ok(()) | Err(EADDRNOTAVAIL) => Ok(()),
            Err(e) => Err(format!(
                "delete {ip} from {name}: {}",
                std::io::Error::from_raw_os_error(e)
            )),
        }
    }

    fn delete_link(&mut self, name: &str) -> Result<bool, String> {
        let Some(index) = self.index(name)? else {
            return Ok(false);
        };
        match self.request(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, &ifinfomsg(index, 0, 0))? {
            Ok(_) | Err(ENODEV) => Ok(true),
            Err(e) => Err(format!("delete {name}: {}", std::io::Error::from_raw_os_error(e))),
        }
    }
}
