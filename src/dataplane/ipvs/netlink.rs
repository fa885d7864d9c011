//! A small, synchronous IPVS client over generic netlink.
//!
//! The kernel's IPVS control interface is the `IPVS` generic netlink family
//! (`include/uapi/linux/ip_vs.h`, `net/netfilter/ipvs/ip_vs_ctl.c`). There is
//! no maintained Rust crate for it, so this module speaks it directly on top of
//! `netlink-packet-core` (message framing, attributes), `netlink-packet-generic`
//! (the genl header and the controller family used to resolve `IPVS`) and
//! `netlink-sys` (the socket).
//!
//! The requests are laid out byte for byte like `ipvsadm` 1.31 (libipvs over
//! libnl 3.7) lays them out, so the golden vectors captured from `ipvsadm`
//! against a real kernel (`testdata/*.hex`) check this encoder directly.
//!
//! Kernel quirks this module deals with (each is repeated where it matters):
//! - Addresses are always a 16-byte `union nf_inet_addr`; an IPv4 address
//!   occupies the first 4 bytes and the rest is zero.
//! - Ports (`*_ATTR_PORT`, `IPVS_DEST_ATTR_TUN_PORT`) are `u16` attributes
//!   holding a big-endian value, without `NLA_F_NET_BYTEORDER`.
//! - `IPVS_SVC_ATTR_NETMASK` is a big-endian mask for IPv4 but a host-order
//!   prefix length for IPv6 (the kernel passes the raw `__be32` through).
//! - `IPVS_SVC_ATTR_FLAGS` is `struct ip_vs_flags { u32 flags; u32 mask; }`;
//!   the kernel reports `IP_VS_SVC_F_HASHED` (an internal bit) in dumps.
//! - Listing needs `NLM_F_DUMP`; listing destinations additionally needs the
//!   service identity in the dump request itself.
//! - `NEW`/`SET` of services and destinations require the *full* entry
//!   (scheduler, flags, timeout, netmask; forward method, weight, thresholds),
//!   otherwise the kernel answers `EINVAL`.
//! - `IPVS_DEST_ATTR_ADDR_FAMILY` (Linux 4.x+) tells the kernel the real
//!   server's family; without it the service's family is assumed, and mixed
//!   families are only allowed for tunnel forwarding.
//! - The kernel does not set `NLA_F_NESTED` on the nests it sends, but accepts
//!   (and libnl sends) nests with it.
//! - `SET_CONFIG` timeouts: 0 means "leave this one alone" (the kernel reads
//!   the current values, overlays the attributes, and applies only non-zero
//!   ones); a value above `INT_MAX / HZ` seconds is `EINVAL`. `GET_CONFIG`
//!   answers with a message whose genl command is `SET_CONFIG`, and omits
//!   the TCP or UDP attributes when that protocol is not compiled in.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netlink_packet_core::{
    DecodeError, Emitable, NLA_F_NESTED, NLA_HEADER_SIZE, NLA_TYPE_MASK, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
    NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NlasIterator, ParseableParametrized,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_GENERIC};

/// Name of the IPVS generic netlink family.
pub const IPVS_GENL_NAME: &str = "IPVS";
/// Version in the genl header of every IPVS request (`IPVS_GENL_VERSION`).
pub const IPVS_GENL_VERSION: u8 = 1;
/// The generic netlink controller's fixed family id (`GENL_ID_CTRL`).
const GENL_ID_CTRL: u16 = 0x10;
/// Version libnl puts in controller requests; kept so requests match `ipvsadm`.
const CTRL_VERSION: u8 = 1;

/// `IPVS_CMD_*` (enum in `ip_vs.h`).
mod cmd {
    pub const NEW_SERVICE: u8 = 1;
    pub const SET_SERVICE: u8 = 2;
    pub const DEL_SERVICE: u8 = 3;
    pub const GET_SERVICE: u8 = 4;
    pub const NEW_DEST: u8 = 5;
    pub const SET_DEST: u8 = 6;
    pub const DEL_DEST: u8 = 7;
    pub const GET_DEST: u8 = 8;
    pub const SET_CONFIG: u8 = 12;
    pub const GET_CONFIG: u8 = 13;
    pub const GET_INFO: u8 = 15;
    pub const FLUSH: u8 = 17;
}

/// `IPVS_CMD_ATTR_*`: the top-level attributes of a request or reply.
mod cmd_attr {
    pub const SERVICE: u16 = 1;
    pub const DEST: u16 = 2;
    pub const TIMEOUT_TCP: u16 = 4;
    pub const TIMEOUT_TCP_FIN: u16 = 5;
    pub const TIMEOUT_UDP: u16 = 6;
}

/// `IPVS_SVC_ATTR_*`: inside the `IPVS_CMD_ATTR_SERVICE` nest.
mod svc_attr {
    pub const AF: u16 = 1;
    pub const PROTOCOL: u16 = 2;
    pub const ADDR: u16 = 3;
    pub const PORT: u16 = 4;
    pub const FWMARK: u16 = 5;
    pub const SCHED_NAME: u16 = 6;
    pub const FLAGS: u16 = 7;
    pub const TIMEOUT: u16 = 8;
    pub const NETMASK: u16 = 9;
    pub const STATS: u16 = 10;
    pub const PE_NAME: u16 = 11;
    pub const STATS64: u16 = 12;
}

/// `IPVS_DEST_ATTR_*`: inside the `IPVS_CMD_ATTR_DEST` nest.
mod dest_attr {
    pub const ADDR: u16 = 1;
    pub const PORT: u16 = 2;
    pub const FWD_METHOD: u16 = 3;
    pub const WEIGHT: u16 = 4;
    pub const U_THRESH: u16 = 5;
    pub const L_THRESH: u16 = 6;
    pub const ACTIVE_CONNS: u16 = 7;
    pub const INACT_CONNS: u16 = 8;
    pub const PERSIST_CONNS: u16 = 9;
    pub const STATS: u16 = 10;
    pub const ADDR_FAMILY: u16 = 11;
    pub const STATS64: u16 = 12;
    pub const TUN_TYPE: u16 = 13;
    pub const TUN_PORT: u16 = 14;
    pub const TUN_FLAGS: u16 = 15;
}

/// `IPVS_STATS_ATTR_*`: inside the `*_ATTR_STATS` / `*_ATTR_STATS64` nests.
mod stats_attr {
    pub const CONNS: u16 = 1;
    pub const INPKTS: u16 = 2;
    pub const OUTPKTS: u16 = 3;
    pub const INBYTES: u16 = 4;
    pub const OUTBYTES: u16 = 5;
    pub const CPS: u16 = 6;
    pub const INPPS: u16 = 7;
    pub const OUTPPS: u16 = 8;
    pub const INBPS: u16 = 9;
    pub const OUTBPS: u16 = 10;
}

/// `IPVS_INFO_ATTR_*`: top-level attributes of the `GET_INFO` reply.
mod info_attr {
    pub const VERSION: u16 = 1;
    pub const CONN_TAB_SIZE: u16 = 2;
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const ESRCH: i32 = 3;
const ENOENT: i32 = 2;
const EEXIST: i32 = 17;
const EPERM: i32 = 1;
const EACCES: i32 = 13;

/// Everything that can go wrong talking to IPVS.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    /// The service or real server does not exist (`ESRCH` for services,
    /// `ENOENT` for destinations).
    #[error("IPVS object not found (errno {0})")]
    NotFound(i32),
    /// The service or real server already exists (`EEXIST`).
    #[error("IPVS object already exists")]
    Exists,
    /// The caller lacks `CAP_NET_ADMIN` (`EPERM`/`EACCES`).
    #[error("permission denied talking to IPVS (errno {0}); CAP_NET_ADMIN is required")]
    Permission(i32),
    /// The `IPVS` genetlink family is not registered: the kernel has no IPVS
    /// or the `ip_vs` module is not loaded.
    #[error("IPVS not available in this kernel (no `IPVS` generic netlink family; is ip_vs loaded?)")]
    NotSupported,
    /// Any other error the kernel answered with.
    #[error("IPVS kernel error {errno}: {message}")]
    Kernel {
        /// Positive errno.
        errno: i32,
        /// The errno's text (`strerror`).
        message: String,
    },
    /// The netlink socket failed.
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    /// A netlink message or attribute could not be parsed.
    #[error("malformed netlink message: {0}")]
    Decode(#[from] DecodeError),
    /// A reply lacks an attribute the kernel always sends.
    #[error("IPVS reply lacks attribute {0}")]
    MissingAttribute(&'static str),
    /// An attribute has a length or value this client cannot represent.
    #[error("IPVS attribute {attribute} has an unexpected value or length {len}")]
    BadAttribute {
        /// Which attribute.
        attribute: &'static str,
        /// Its payload length.
        len: usize,
    },
    /// The kernel answered with a message that does not fit the request
    /// (wrong sequence number, unexpected message type).
    #[error("unexpected netlink reply: {0}")]
    UnexpectedReply(&'static str),
}

impl IpvsError {
    /// Map a positive errno from an `NLMSG_ERROR` to the typed error.
    pub fn from_errno(errno: i32) -> IpvsError {
        match errno {
            ESRCH | ENOENT => IpvsError::NotFound(errno),
            EEXIST => IpvsError::Exists,
            EPERM | EACCES => IpvsError::Permission(errno),
            _ => IpvsError::Kernel {
                errno,
                message: std::io::Error::from_raw_os_error(errno).to_string(),
            },
        }
    }
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, IpvsError>;

/// Address family of a service or real server (`AF_INET`/`AF_INET6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    /// IPv4.
    Inet,
    /// IPv6.
    Inet6,
}

impl AddressFamily {
    /// The family of an address.
    pub fn of(addr: &IpAddr) -> AddressFamily {
        if addr.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        }
    }

    fn to_raw(self) -> u16 {
        match self {
            AddressFamily::Inet => AF_INET,
            AddressFamily::Inet6 => AF_INET6,
        }
    }

    fn from_raw(raw: u16, attribute: &'static str) -> Result<AddressFamily> {
        match raw {
            AF_INET => Ok(AddressFamily::Inet),
            AF_INET6 => Ok(AddressFamily::Inet6),
            _ => Err(IpvsError::BadAttribute { attribute, len: 2 }),
        }
    }

    fn unspecified(self) -> IpAddr {
        match self {
            AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }
}

/// Transport protocol of a virtual service (an IP protocol number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132).
    Sctp,
    /// Any other protocol number, kept so replies round-trip.
    Other(u16),
}

impl Protocol {
    fn to_raw(self) -> u16 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
            Protocol::Other(p) => p,
        }
    }

    fn from_raw(raw: u16) -> Protocol {
        match raw {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            132 => Protocol::Sctp,
            p => Protocol::Other(p),
        }
    }
}

/// Service flags (`IP_VS_SVC_F_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ServiceFlags(pub u32);

impl ServiceFlags {
    /// `IP_VS_SVC_F_PERSISTENT`: client affinity for `timeout` seconds.
    pub const PERSISTENT: ServiceFlags = ServiceFlags(0x1);
    /// `IP_VS_SVC_F_HASHED`: kernel-internal "service is in the hash table";
    /// dumps report it, setting it has no effect.
    pub const HASHED: ServiceFlags = ServiceFlags(0x2);
    /// `IP_VS_SVC_F_ONEPACKET`: one-packet scheduling (UDP).
    pub const ONE_PACKET: ServiceFlags = ServiceFlags(0x4);
    /// `IP_VS_SVC_F_SCHED1` (scheduler specific, e.g. `sh-fallback`).
    pub const SCHED1: ServiceFlags = ServiceFlags(0x8);
    /// `IP_VS_SVC_F_SCHED2` (scheduler specific, e.g. `sh-port`).
    pub const SCHED2: ServiceFlags = ServiceFlags(0x10);
    /// `IP_VS_SVC_F_SCHED3` (scheduler specific).
    pub const SCHED3: ServiceFlags = ServiceFlags(0x20);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: ServiceFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// The flags without kernel-internal bits (`HASHED`): what a caller set.
    pub fn user_settable(self) -> ServiceFlags {
        ServiceFlags(self.0 & !Self::HASHED.0)
    }
}

impl std::ops::BitOr for ServiceFlags {
    type Output = ServiceFlags;
    fn bitor(self, rhs: ServiceFlags) -> ServiceFlags {
        ServiceFlags(self.0 | rhs.0)
    }
}

/// Packet forwarding method of a real server (`IP_VS_CONN_F_FWD_MASK` bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardMethod {
    /// NAT (`IP_VS_CONN_F_MASQ`, `ipvsadm -m`), what kube-proxy uses.
    Masquerade,
    /// Local node (`IP_VS_CONN_F_LOCALNODE`), set by the kernel for local addresses.
    Local,
    /// IP-in-IP/GUE/GRE tunnel (`IP_VS_CONN_F_TUNNEL`, `ipvsadm -i`).
    Tunnel,
    /// Direct routing (`IP_VS_CONN_F_DROUTE`, `ipvsadm -g`).
    DirectRoute,
    /// Bypass (`IP_VS_CONN_F_BYPASS`).
    Bypass,
}

impl ForwardMethod {
    fn to_raw(self) -> u32 {
        match self {
            ForwardMethod::Masquerade => 0,
            ForwardMethod::Local => 1,
            ForwardMethod::Tunnel => 2,
            ForwardMethod::DirectRoute => 3,
            ForwardMethod::Bypass => 4,
        }
    }

    fn from_raw(raw: u32) -> Result<ForwardMethod> {
        // Only the low 3 bits are the method (IP_VS_CONN_F_FWD_MASK).
        match raw & 0x7 {
            0 => Ok(ForwardMethod::Masquerade),
            1 => Ok(ForwardMethod::Local),
            2 => Ok(ForwardMethod::Tunnel),
            3 => Ok(ForwardMethod::DirectRoute),
            4 => Ok(ForwardMethod::Bypass),
            _ => Err(IpvsError::BadAttribute {
                attribute: "IPVS_DEST_ATTR_FWD_METHOD",
                len: 4,
            }),
        }
    }
}

/// Traffic counters the kernel reports (read-only). Decoded from
/// `*_ATTR_STATS64` when present, else from the 32-bit `*_ATTR_STATS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Connections scheduled.
    pub connections: u64,
    /// Incoming packets.
    pub in_packets: u64,
    /// Outgoing packets.
    pub out_packets: u64,
    /// Incoming bytes.
    pub in_bytes: u64,
    /// Outgoing bytes.
    pub out_bytes: u64,
    /// Connection rate.
    pub cps: u64,
    /// Incoming packet rate.
    pub in_pps: u64,
    /// Outgoing packet rate.
    pub out_pps: u64,
    /// Incoming byte rate.
    pub in_bps: u64,
    /// Outgoing byte rate.
    pub out_bps: u64,
}

/// An IPVS virtual service: either `protocol addr:port`, or a firewall mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualService {
    /// Address family (also of fwmark services, which match on it).
    pub family: AddressFamily,
    /// Transport protocol; the kernel ignores it for fwmark services.
    pub protocol: Protocol,
    /// Virtual address; unspecified for fwmark services.
    pub addr: IpAddr,
    /// Virtual port; 0 for fwmark services.
    pub port: u16,
    /// Firewall mark: `Some` makes this a fwmark service (no protocol/addr/port).
    pub fwmark: Option<u32>,
    /// Scheduler name (`rr`, `wrr`, `lc`, `sh`, ...), autoloaded as `ip_vs_<name>`.
    pub scheduler: String,
    /// Persistence engine name (`sip`), rarely used.
    pub persistence_engine: Option<String>,
    /// Service flags (persistent, one-packet, scheduler flags).
    pub flags: ServiceFlags,
    /// Persistence timeout in seconds (meaningful with `PERSISTENT`).
    pub timeout: u32,
    /// Persistence granularity. IPv4: the netmask as a number
    /// (`0xffff_ffff` = /32); IPv6: the prefix length (128).
    pub netmask: u32,
    /// Counters (read-only; `None` on objects built by the caller).
    pub stats: Option<Stats>,
}

impl VirtualService {
    /// A service on `protocol addr:port` with scheduler `scheduler`, no persistence.
    pub fn new(protocol: Protocol, addr: SocketAddr, scheduler: &str) -> VirtualService {
        let family = AddressFamily::of(&addr.ip());
        VirtualService {
            family,
            protocol,
            addr: addr.ip(),
            port: addr.port(),
            fwmark: None,
            scheduler: scheduler.to_owned(),
            persistence_engine: None,
            flags: ServiceFlags::default(),
            timeout: 0,
            netmask: Self::full_netmask(family),
            stats: None,
        }
    }

    /// A firewall-mark service.
    pub fn fwmark(family: AddressFamily, mark: u32, scheduler: &str) -> VirtualService {
        VirtualService {
            family,
            // The kernel stores TCP for fwmark services (ip_vs_genl_parse_service).
            protocol: Protocol::Tcp,
            addr: family.unspecified(),
            port: 0,
            fwmark: Some(mark),
            scheduler: scheduler.to_owned(),
            persistence_engine: None,
            flags: ServiceFlags::default(),
            timeout: 0,
            netmask: Self::full_netmask(family),
            stats: None,
        }
    }

    /// The "host" persistence granularity ipvsadm uses by default.
    pub fn full_netmask(family: AddressFamily) -> u32 {
        match family {
            AddressFamily::Inet => 0xffff_ffff,
            AddressFamily::Inet6 => 128,
        }
    }

    /// Whether `other` describes the same configuration: equal except for
    /// counters and kernel-internal flag bits.
    pub fn same_config(&self, other: &VirtualService) -> bool {
        let strip = |s: &VirtualService| VirtualService {
            stats: None,
            flags: s.flags.user_settable(),
            ..s.clone()
        };
        strip(self) == strip(other)
    }
}

/// Tunnel encapsulation settings of a real server (Linux 5.2+; zero otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TunnelSettings {
    /// `IP_VS_CONN_F_TUNNEL_TYPE_*`: 0 IPIP, 1 GUE, 2 GRE.
    pub kind: u8,
    /// Encapsulation port (GUE).
    pub port: u16,
    /// `IP_VS_TUNNEL_ENCAP_FLAG_*`.
    pub flags: u16,
}

/// A real server (IPVS "destination") behind a virtual service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealServer {
    /// Address; its family may differ from the service's only with tunnel forwarding.
    pub addr: IpAddr,
    /// Port (ignored by the kernel for direct routing and tunnels).
    pub port: u16,
    /// Scheduling weight; 0 takes the server out of rotation without dropping connections.
    pub weight: u32,
    /// Forwarding method.
    pub fwd_method: ForwardMethod,
    /// Upper connection threshold (0 = none).
    pub upper_threshold: u32,
    /// Lower connection threshold (0 = none).
    pub lower_threshold: u32,
    /// Tunnel settings.
    pub tunnel: TunnelSettings,
    /// Active connections (read-only).
    pub active_connections: u32,
    /// Inactive connections (read-only).
    pub inactive_connections: u32,
    /// Persistent connection templates (read-only).
    pub persistent_connections: u32,
    /// Counters (read-only; `None` on objects built by the caller).
    pub stats: Option<Stats>,
}

impl RealServer {
    /// A real server with `weight` and forwarding method `fwd_method`, no thresholds.
    pub fn new(addr: SocketAddr, weight: u32, fwd_method: ForwardMethod) -> RealServer {
        RealServer {
            addr: addr.ip(),
            port: addr.port(),
            weight,
            fwd_method,
            upper_threshold: 0,
            lower_threshold: 0,
            tunnel: TunnelSettings::default(),
            active_connections: 0,
            inactive_connections: 0,
            persistent_connections: 0,
            stats: None,
        }
    }

    /// Whether `other` describes the same configuration (ignores counters).
    pub fn same_config(&self, other: &RealServer) -> bool {
        let strip = |d: &RealServer| RealServer {
            active_connections: 0,
            inactive_connections: 0,
            persistent_connections: 0,
            stats: None,
            ..d.clone()
        };
        strip(self) == strip(other)
    }
}

/// What `IPVS_CMD_GET_INFO` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpvsInfo {
    /// `IP_VS_VERSION_CODE`: `0x010201` is 1.2.1.
    pub version_code: u32,
    /// Size of the connection hash table (`ip_vs_conn_tab_size`).
    pub connection_table_size: u32,
}

impl IpvsInfo {
    /// The version as (major, minor, patch).
    pub fn version(&self) -> (u8, u8, u8) {
        let [_, major, minor, patch] = self.version_code.to_be_bytes();
        (major, minor, patch)
    }
}

/// The connection timeouts of `ipvsadm --set tcp tcpfin udp`, in seconds:
/// idle established TCP, TCP after FIN, and UDP. In a request 0 leaves the
/// kernel's value unchanged; in a reply 0 means the kernel reported nothing
/// (that protocol is not compiled in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timeouts {
    /// `IPVS_CMD_ATTR_TIMEOUT_TCP` (established TCP; kernel default 900).
    pub tcp: u32,
    /// `IPVS_CMD_ATTR_TIMEOUT_TCP_FIN` (TCP FIN_WAIT; kernel default 120).
    pub tcp_fin: u32,
    /// `IPVS_CMD_ATTR_TIMEOUT_UDP` (kernel default 300).
    pub udp: u32,
}

impl std::fmt::Display for Timeouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tcp {}s tcpfin {}s udp {}s", self.tcp, self.tcp_fin, self.udp)
    }
}

/// One IPVS request, before framing. [`encode_request`] turns it into the
/// exact bytes sent to the kernel.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    /// `CTRL_CMD_GETFAMILY` for `IPVS`, sent to the genl controller.
    ResolveFamily,
    /// `IPVS_CMD_GET_INFO`.
    GetInfo,
    /// `IPVS_CMD_GET_SERVICE` as a dump.
    ListServices,
    /// `IPVS_CMD_NEW_SERVICE`.
    AddService(&'a VirtualService),
    /// `IPVS_CMD_SET_SERVICE`.
    EditService(&'a VirtualService),
    /// `IPVS_CMD_DEL_SERVICE`.
    DeleteService(&'a VirtualService),
    /// `IPVS_CMD_GET_DEST` as a dump, for one service.
    ListDestinations(&'a VirtualService),
    /// `IPVS_CMD_NEW_DEST`.
    AddDestination(&'a VirtualService, &'a RealServer),
    /// `IPVS_CMD_SET_DEST`.
    EditDestination(&'a VirtualService, &'a RealServer),
    /// `IPVS_CMD_DEL_DEST`.
    DeleteDestination(&'a VirtualService, &'a RealServer),
    /// `IPVS_CMD_FLUSH`: delete every service.
    Flush,
    /// `IPVS_CMD_SET_CONFIG` with the three timeouts.
    SetTimeouts(Timeouts),
    /// `IPVS_CMD_GET_CONFIG`.
    GetTimeouts,
}

impl Request<'_> {
    fn is_dump(&self) -> bool {
        matches!(self, Request::ListServices | Request::ListDestinations(_))
    }
}

// ---------------------------------------------------------------------------
// Attributes

/// One netlink attribute as IPVS uses them. Integer attributes are host order
/// unless the variant says big-endian.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attr {
    U8(u16, u8),
    U16(u16, u16),
    /// A `u16` attribute carrying a big-endian value (ports). The kernel
    /// declares these `NLA_U16` and does not set `NLA_F_NET_BYTEORDER`.
    Be16(u16, u16),
    U32(u16, u32),
    Be32(u16, u32),
    /// Only the kernel sends these (counters); the tests re-encode replies.
    #[cfg_attr(not(test), allow(dead_code))]
    U64(u16, u64),
    Bytes(u16, Vec<u8>),
    /// NUL-terminated string (`NLA_NUL_STRING` in the kernel's policy).
    Str(u16, String),
    /// A nest; `flagged` sets `NLA_F_NESTED` (requests do, kernel replies don't).
    Nested {
        kind: u16,
        flagged: bool,
        attrs: Vec<Attr>,
    },
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match self {
            Attr::U8(..) => 1,
            Attr::U16(..) | Attr::Be16(..) => 2,
            Attr::U32(..) | Attr::Be32(..) => 4,
            Attr::U64(..) => 8,
            Attr::Bytes(_, b) => b.len(),
            Attr::Str(_, s) => s.len() + 1,
            Attr::Nested { attrs, .. } => attrs.as_slice().buffer_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Attr::U8(k, _)
            | Attr::U16(k, _)
            | Attr::Be16(k, _)
            | Attr::U32(k, _)
            | Attr::Be32(k, _)
            | Attr::U64(k, _)
            | Attr::Bytes(k, _)
            | Attr::Str(k, _) => *k,
            Attr::Nested { kind, flagged, .. } => {
                if *flagged {
                    kind | NLA_F_NESTED
                } else {
                    *kind
                }
            }
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            Attr::U8(_, v) => buf[0] = *v,
            Attr::U16(_, v) => buf[..2].copy_from_slice(&v.to_ne_bytes()),
            Attr::Be16(_, v) => buf[..2].copy_from_slice(&v.to_be_bytes()),
            Attr::U32(_, v) => buf[..4].copy_from_slice(&v.to_ne_bytes()),
            Attr::Be32(_, v) => buf[..4].copy_from_slice(&v.to_be_bytes()),
            Attr::U64(_, v) => buf[..8].copy_from_slice(&v.to_ne_bytes()),
            Attr::Bytes(_, b) => buf[..b.len()].copy_from_slice(b),
            Attr::Str(_, s) => {
                buf[..s.len()].copy_from_slice(s.as_bytes());
                buf[s.len()] = 0;
            }
            Attr::Nested { attrs, .. } => attrs.as_slice().emit(buf),
        }
    }
}

/// The 16-byte `union nf_inet_addr` the kernel uses for every address: IPv4
/// in the first 4 bytes, zero-padded.
fn inet_addr_bytes(addr: &IpAddr) -> Vec<u8> {
    let mut out = vec![0u8; 16];
    match addr {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out.copy_from_slice(&a.octets()),
    }
    out
}

fn netmask_attr(svc: &VirtualService) -> Attr {
    // IPv4: a real netmask in network order. IPv6: the kernel reuses the
    // __be32 field for a prefix length that it reads without byte swapping,
    // so ipvsadm sends it in host order.
    match svc.family {
        AddressFamily::Inet => Attr::Be32(svc_attr::NETMASK, svc.netmask),
        AddressFamily::Inet6 => Attr::U32(svc_attr::NETMASK, svc.netmask),
    }
}

/// The service identity: what the kernel looks a service up by.
fn service_identity_attrs(svc: &VirtualService) -> Vec<Attr> {
    let mut attrs = vec![Attr::U16(svc_attr::AF, svc.family.to_raw())];
    match svc.fwmark {
        Some(mark) => attrs.push(Attr::U32(svc_attr::FWMARK, mark)),
        None => {
            attrs.push(Attr::U16(svc_attr::PROTOCOL, svc.protocol.to_raw()));
            attrs.push(Attr::Bytes(svc_attr::ADDR, inet_addr_bytes(&svc.addr)));
            attrs.push(Attr::Be16(svc_attr::PORT, svc.port));
        }
    }
    attrs
}

/// The full service as `NEW_SERVICE`/`SET_SERVICE` require it (and as
/// ipvsadm also sends it for deletes and destination commands).
fn service_request_nest(svc: &VirtualService) -> Attr {
    let mut attrs = service_identity_attrs(svc);
    attrs.push(Attr::Str(svc_attr::SCHED_NAME, svc.scheduler.clone()));
    if let Some(pe) = &svc.persistence_engine {
        attrs.push(Attr::Str(svc_attr::PE_NAME, pe.clone()));
    }
    attrs.push(Attr::Bytes(svc_attr::FLAGS, flags_struct(svc.flags.user_settable())));
    attrs.push(Attr::U32(svc_attr::TIMEOUT, svc.timeout));
    attrs.push(netmask_attr(svc));
    Attr::Nested {
        kind: cmd_attr::SERVICE,
        flagged: true,
        attrs,
    }
}

/// `struct ip_vs_flags { u32 flags; u32 mask; }`: on SET_SERVICE the kernel
/// keeps the old bits outside `mask`. We always replace every bit, like ipvsadm.
fn flags_struct(flags: ServiceFlags) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    out.extend_from_slice(&flags.0.to_ne_bytes());
    out.extend_from_slice(&u32::MAX.to_ne_bytes());
    out
}

/// The full destination as `NEW_DEST`/`SET_DEST` require it, in ipvsadm's order.
fn dest_request_nest(dest: &RealServer) -> Attr {
    let attrs = vec![
        // Newer kernels check this against the service family to allow
        // mixed-family tunnels; older ones ignore it (policy maxtype).
        Attr::U16(dest_attr::ADDR_FAMILY, AddressFamily::of(&dest.addr).to_raw()),
        Attr::Bytes(dest_attr::ADDR, inet_addr_bytes(&dest.addr)),
        Attr::Be16(dest_attr::PORT, dest.port),
        Attr::U32(dest_attr::FWD_METHOD, dest.fwd_method.to_raw()),
        Attr::U32(dest_attr::WEIGHT, dest.weight),
        Attr::U8(dest_attr::TUN_TYPE, dest.tunnel.kind),
        Attr::Be16(dest_attr::TUN_PORT, dest.tunnel.port),
        Attr::U16(dest_attr::TUN_FLAGS, dest.tunnel.flags),
        Attr::U32(dest_attr::U_THRESH, dest.upper_threshold),
        Attr::U32(dest_attr::L_THRESH, dest.lower_threshold),
    ];
    Attr::Nested {
        kind: cmd_attr::DEST,
        flagged: true,
        attrs,
    }
}

// ---------------------------------------------------------------------------
// Framing

/// An IPVS generic netlink payload to send: a command and its attributes.
#[derive(Debug, Clone)]
struct IpvsCommand {
    cmd: u8,
    attrs: Vec<Attr>,
}

impl GenlFamily for IpvsCommand {
    fn family_name() -> &'static str {
        IPVS_GENL_NAME
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        IPVS_GENL_VERSION
    }
}

impl Emitable for IpvsCommand {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

/// A received IPVS genl message: command plus raw attribute bytes, decoded
/// lazily because their meaning depends on the request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IpvsReply {
    cmd: u8,
    attrs: Vec<u8>,
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsReply {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> std::result::Result<Self, DecodeError> {
        Ok(IpvsReply {
            cmd: header.cmd,
            attrs: buf.to_vec(),
        })
    }
}

/// Frame `request` as one netlink message with sequence number `seq` and
/// port id `port` (0 lets the kernel fill in ours). `family_id` is the
/// resolved `IPVS` family (ignored for [`Request::ResolveFamily`]).
pub fn encode_request(family_id: u16, seq: u32, port: u32, request: &Request<'_>) -> Vec<u8> {
    // Every IPVS request asks for an ACK so that success is confirmed and
    // errors arrive as NLMSG_ERROR; dumps also get NLM_F_DUMP (ROOT|MATCH).
    let flags = if request.is_dump() {
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP
    } else {
        NLM_F_REQUEST | NLM_F_ACK
    };
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    header.port_number = port;

    if let Request::ResolveFamily = request {
        let payload = GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(IPVS_GENL_NAME.to_owned())],
        };
        // libnl sends controller version 1; GenlMessage::finalize would use
        // the crate's version (2). The controller accepts both.
        let genl = GenlMessage::new(
            GenlHeader {
                cmd: GenlCtrlCmd::GetFamily.into(),
                version: CTRL_VERSION,
            },
            payload,
            GENL_ID_CTRL,
        );
        return frame(header, genl);
    }

    let (command, attrs) = match *request {
        Request::ResolveFamily => unreachable!("handled above"),
        Request::GetInfo => (cmd::GET_INFO, vec![]),
        Request::ListServices => (cmd::GET_SERVICE, vec![]),
        Request::AddService(svc) => (cmd::NEW_SERVICE, vec![service_request_nest(svc)]),
        Request::EditService(svc) => (cmd::SET_SERVICE, vec![service_request_nest(svc)]),
        Request::DeleteService(svc) => (cmd::DEL_SERVICE, vec![service_request_nest(svc)]),
        Request::ListDestinations(svc) => (
            cmd::GET_DEST,
            // The dump handler parses this nest from the dump request itself
            // (ip_vs_genl_dump_dests); only the identity is needed.
            vec![Attr::Nested {
                kind: cmd_attr::SERVICE,
                flagged: true,
                attrs: service_identity_attrs(svc),
            }],
        ),
        Request::AddDestination(svc, dest) => (cmd::NEW_DEST, vec![service_request_nest(svc), dest_request_nest(dest)]),
        Request::EditDestination(svc, dest) => {
            (cmd::SET_DEST, vec![service_request_nest(svc), dest_request_nest(dest)])
        }
        Request::DeleteDestination(svc, dest) => {
            (cmd::DEL_DEST, vec![service_request_nest(svc), dest_request_nest(dest)])
        }
        Request::Flush => (cmd::FLUSH, vec![]),
        // All three, zeros included, as ipvsadm sends them: the kernel
        // skips zeros itself (see the module docs), so omitting them would
        // mean the same and only differ in bytes.
        Request::SetTimeouts(t) => (
            cmd::SET_CONFIG,
            vec![
                Attr::U32(cmd_attr::TIMEOUT_TCP, t.tcp),
                Attr::U32(cmd_attr::TIMEOUT_TCP_FIN, t.tcp_fin),
                Attr::U32(cmd_attr::TIMEOUT_UDP, t.udp),
            ],
        ),
        Request::GetTimeouts => (cmd::GET_CONFIG, vec![]),
    };
    let genl = GenlMessage::new(
        GenlHeader {
            cmd: command,
            version: IPVS_GENL_VERSION,
        },
        IpvsCommand { cmd: command, attrs },
        family_id,
    );
    frame(header, genl)
}

fn frame<F>(header: NetlinkHeader, genl: GenlMessage<F>) -> Vec<u8>
where
    F: GenlFamily + Emitable + std::fmt::Debug,
{
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(genl));
    // finalize() fills in the length and the message type (the family id).
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// One message of a reply, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ReplyMessage {
    /// A genl message carrying data (cmd + raw attributes).
    Data(IpvsReply),
    /// `NLMSG_ERROR` with code 0: the request succeeded.
    Ack,
    /// `NLMSG_ERROR` with a negative code: the request failed with errno.
    Error(i32),
    /// `NLMSG_DONE`: end of a dump.
    Done,
}

/// Split one received datagram into messages and classify them. Messages
/// whose sequence number is not `seq` are rejected.
fn parse_datagram(datagram: &[u8], seq: u32) -> Result<Vec<ReplyMessage>> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < 16 || len > rest.len() {
            return Err(IpvsError::BadAttribute {
                attribute: "nlmsg_len",
                len,
            });
        }
        let msg = NetlinkMessage::<GenlMessage<IpvsReply>>::deserialize(&rest[..len])?;
        if msg.header.sequence_number != seq {
            return Err(IpvsError::UnexpectedReply("sequence number does not match the request"));
        }
        out.push(match msg.payload {
            NetlinkPayload::InnerMessage(genl) => ReplyMessage::Data(genl.payload),
            NetlinkPayload::Error(err) => match err.code {
                None => ReplyMessage::Ack,
                Some(code) => ReplyMessage::Error(-code.get()),
            },
            NetlinkPayload::Done(_) => ReplyMessage::Done,
            _ => return Err(IpvsError::UnexpectedReply("netlink message of unexpected type")),
        });
        // Messages inside a datagram are 4-byte aligned (NLMSG_ALIGN).
        let advance = (len + 3) & !3;
        rest = &rest[advance.min(rest.len())..];
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Decoding

/// Attributes of one level, by type (flags masked off); the last one of a
/// type wins, like the kernel's nla_parse.
struct AttrTable<'a> {
    attrs: Vec<(u16, &'a [u8])>,
}

impl<'a> AttrTable<'a> {
    fn parse(buf: &'a [u8]) -> Result<AttrTable<'a>> {
        let mut attrs = Vec::new();
        for nla in NlasIterator::new(buf) {
            let nla = nla?;
            // Mask NLA_F_NESTED / NLA_F_NET_BYTEORDER: libnl sets the former
            // on nests, the kernel does not.
            let kind = nla.kind() & NLA_TYPE_MASK;
            let len = usize::from(nla.length());
            // new_checked validated len against the buffer.
            let value: &'a [u8] = &nla.into_inner()[NLA_HEADER_SIZE..len];
            attrs.push((kind, value));
        }
        Ok(AttrTable { attrs })
    }

    fn get(&self, kind: u16) -> Option<&'a [u8]> {
        self.attrs.iter().rev().find(|(k, _)| *k == kind).map(|(_, v)| *v)
    }

    fn fixed<const N: usize>(&self, kind: u16, name: &'static str) -> Result<Option<[u8; N]>> {
        match self.get(kind) {
            None => Ok(None),
            Some(v) if v.len() >= N => Ok(Some(v[..N].try_into().expect("length checked"))),
            Some(v) => Err(IpvsError::BadAttribute {
                attribute: name,
                len: v.len(),
            }),
        }
    }

    fn u8(&self, kind: u16, name: &'static str) -> Result<Option<u8>> {
        Ok(self.fixed::<1>(kind, name)?.map(|b| b[0]))
    }
    fn u16(&self, kind: u16, name: &'static str) -> Result<Option<u16>> {
        Ok(self.fixed(kind, name)?.map(u16::from_ne_bytes))
    }
    fn be16(&self, kind: u16, name: &'static str) -> Result<Option<u16>> {
        Ok(self.fixed(kind, name)?.map(u16::from_be_bytes))
    }
    fn u32(&self, kind: u16, name: &'static str) -> Result<Option<u32>> {
        Ok(self.fixed(kind, name)?.map(u32::from_ne_bytes))
    }
    fn u64(&self, kind: u16, name: &'static str) -> Result<Option<u64>> {
        Ok(self.fixed(kind, name)?.map(u64::from_ne_bytes))
    }
    fn string(&self, kind: u16, name: &'static str) -> Result<Option<String>> {
        match self.get(kind) {
            None => Ok(None),
            Some(v) => {
                let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
                String::from_utf8(v[..end].to_vec())
                    .map(Some)
                    .map_err(|_| IpvsError::BadAttribute {
                        attribute: name,
                        len: v.len(),
                    })
            }
        }
    }

    fn require<T>(value: Option<T>, name: &'static str) -> Result<T> {
        value.ok_or(IpvsError::MissingAttribute(name))
    }
}

fn decode_inet_addr(raw: &[u8], family: AddressFamily, name: &'static str) -> Result<IpAddr> {
    match family {
        AddressFamily::Inet if raw.len() >= 4 => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        AddressFamily::Inet6 if raw.len() >= 16 => {
            let octets: [u8; 16] = raw[..16].try_into().expect("length checked");
            Ok(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        _ => Err(IpvsError::BadAttribute {
            attribute: name,
            len: raw.len(),
        }),
    }
}

/// Decode a `*_ATTR_STATS64` nest (all u64) or, failing that, `*_ATTR_STATS`
/// (u32 except the byte counters).
fn decode_stats(table: &AttrTable<'_>, stats: u16, stats64: u16) -> Result<Option<Stats>> {
    let (raw, wide) = match (table.get(stats64), table.get(stats)) {
        (Some(raw), _) => (raw, true),
        (None, Some(raw)) => (raw, false),
        (None, None) => return Ok(None),
    };
    let t = AttrTable::parse(raw)?;
    let num = |kind: u16, always_wide: bool| -> Result<u64> {
        if wide || always_wide {
            Ok(t.u64(kind, "IPVS_STATS_ATTR_*")?.unwrap_or(0))
        } else {
            Ok(u64::from(t.u32(kind, "IPVS_STATS_ATTR_*")?.unwrap_or(0)))
        }
    };
    Ok(Some(Stats {
        connections: num(stats_attr::CONNS, false)?,
        in_packets: num(stats_attr::INPKTS, false)?,
        out_packets: num(stats_attr::OUTPKTS, false)?,
        in_bytes: num(stats_attr::INBYTES, true)?,
        out_bytes: num(stats_attr::OUTBYTES, true)?,
        cps: num(stats_attr::CPS, false)?,
        in_pps: num(stats_attr::INPPS, false)?,
        out_pps: num(stats_attr::OUTPPS, false)?,
        in_bps: num(stats_attr::INBPS, false)?,
        out_bps: num(stats_attr::OUTBPS, false)?,
    }))
}

/// Decode the `IPVS_CMD_ATTR_SERVICE` nest of a `GET_SERVICE` reply.
fn decode_service(nest: &[u8]) -> Result<VirtualService> {
    let t = AttrTable::parse(nest)?;
    let family = AddressFamily::from_raw(
        AttrTable::require(t.u16(svc_attr::AF, "IPVS_SVC_ATTR_AF")?, "IPVS_SVC_ATTR_AF")?,
        "IPVS_SVC_ATTR_AF",
    )?;
    let fwmark = t.u32(svc_attr::FWMARK, "IPVS_SVC_ATTR_FWMARK")?;
    // fwmark services carry no protocol/addr/port in replies.
    let protocol = Protocol::from_raw(t.u16(svc_attr::PROTOCOL, "IPVS_SVC_ATTR_PROTOCOL")?.unwrap_or(6));
    let addr = match t.get(svc_attr::ADDR) {
        Some(raw) => decode_inet_addr(raw, family, "IPVS_SVC_ATTR_ADDR")?,
        None if fwmark.is_some() => family.unspecified(),
        None => return Err(IpvsError::MissingAttribute("IPVS_SVC_ATTR_ADDR")),
    };
    let port = t.be16(svc_attr::PORT, "IPVS_SVC_ATTR_PORT")?.unwrap_or(0);
    let flags_raw = AttrTable::require(
        t.fixed::<8>(svc_attr::FLAGS, "IPVS_SVC_ATTR_FLAGS")?,
        "IPVS_SVC_ATTR_FLAGS",
    )?;
    let flags = ServiceFlags(u32::from_ne_bytes(flags_raw[..4].try_into().expect("4 bytes")));
    let netmask_raw = AttrTable::require(
        t.fixed::<4>(svc_attr::NETMASK, "IPVS_SVC_ATTR_NETMASK")?,
        "IPVS_SVC_ATTR_NETMASK",
    )?;
    let netmask = match family {
        AddressFamily::Inet => u32::from_be_bytes(netmask_raw),
        AddressFamily::Inet6 => u32::from_ne_bytes(netmask_raw),
    };
    Ok(VirtualService {
        family,
        protocol,
        addr,
        port,
        fwmark,
        scheduler: AttrTable::require(
            t.string(svc_attr::SCHED_NAME, "IPVS_SVC_ATTR_SCHED_NAME")?,
            "IPVS_SVC_ATTR_SCHED_NAME",
        )?,
        persistence_engine: t.string(svc_attr::PE_NAME, "IPVS_SVC_ATTR_PE_NAME")?,
        flags,
        timeout: t.u32(svc_attr::TIMEOUT, "IPVS_SVC_ATTR_TIMEOUT")?.unwrap_or(0),
        netmask,
        stats: decode_stats(&t, svc_attr::STATS, svc_attr::STATS64)?,
    })
}

/// Decode the `IPVS_CMD_ATTR_DEST` nest of a `GET_DEST` reply. Kernels
/// before 4.x send no `ADDR_FAMILY`; then the service's family applies.
fn decode_dest(nest: &[u8], service_family: AddressFamily) -> Result<RealServer> {
    let t = AttrTable::parse(nest)?;
    let family = match t.u16(dest_attr::ADDR_FAMILY, "IPVS_DEST_ATTR_ADDR_FAMILY")? {
        Some(raw) => AddressFamily::from_raw(raw, "IPVS_DEST_ATTR_ADDR_FAMILY")?,
        None => service_family,
    };
    let addr_raw = AttrTable::require(t.get(dest_attr::ADDR), "IPVS_DEST_ATTR_ADDR")?;
    let fwd_raw = AttrTable::require(
        t.u32(dest_attr::FWD_METHOD, "IPVS_DEST_ATTR_FWD_METHOD")?,
        "IPVS_DEST_ATTR_FWD_METHOD",
    )?;
    Ok(RealServer {
        addr: decode_inet_addr(addr_raw, family, "IPVS_DEST_ATTR_ADDR")?,
        port: AttrTable::require(t.be16(dest_attr::PORT, "IPVS_DEST_ATTR_PORT")?, "IPVS_DEST_ATTR_PORT")?,
        weight: AttrTable::require(
            t.u32(dest_attr::WEIGHT, "IPVS_DEST_ATTR_WEIGHT")?,
            "IPVS_DEST_ATTR_WEIGHT",
        )?,
        fwd_method: ForwardMethod::from_raw(fwd_raw)?,
        upper_threshold: t.u32(dest_attr::U_THRESH, "IPVS_DEST_ATTR_U_THRESH")?.unwrap_or(0),
        lower_threshold: t.u32(dest_attr::L_THRESH, "IPVS_DEST_ATTR_L_THRESH")?.unwrap_or(0),
        tunnel: TunnelSettings {
            kind: t.u8(dest_attr::TUN_TYPE, "IPVS_DEST_ATTR_TUN_TYPE")?.unwrap_or(0),
            port: t.be16(dest_attr::TUN_PORT, "IPVS_DEST_ATTR_TUN_PORT")?.unwrap_or(0),
            flags: t.u16(dest_attr::TUN_FLAGS, "IPVS_DEST_ATTR_TUN_FLAGS")?.unwrap_or(0),
        },
        active_connections: t
            .u32(dest_attr::ACTIVE_CONNS, "IPVS_DEST_ATTR_ACTIVE_CONNS")?
            .unwrap_or(0),
        inactive_connections: t
            .u32(dest_attr::INACT_CONNS, "IPVS_DEST_ATTR_INACT_CONNS")?
            .unwrap_or(0),
        persistent_connections: t
            .u32(dest_attr::PERSIST_CONNS, "IPVS_DEST_ATTR_PERSIST_CONNS")?
            .unwrap_or(0),
        stats: decode_stats(&t, dest_attr::STATS, dest_attr::STATS64)?,
    })
}

fn data_messages(messages: &[ReplyMessage]) -> impl Iterator<Item = &IpvsReply> {
    messages.iter().filter_map(|m| match m {
        ReplyMessage::Data(d) => Some(d),
        _ => None,
    })
}

/// Decode the messages of a `GET_SERVICE` dump.
fn decode_service_list(messages: &[ReplyMessage]) -> Result<Vec<VirtualService>> {
    data_messages(messages)
        .map(|m| {
            let top = AttrTable::parse(&m.attrs)?;
            decode_service(AttrTable::require(top.get(cmd_attr::SERVICE), "IPVS_CMD_ATTR_SERVICE")?)
        })
        .collect()
}

/// Decode the messages of a `GET_DEST` dump.
fn decode_dest_list(messages: &[ReplyMessage], service_family: AddressFamily) -> Result<Vec<RealServer>> {
    data_messages(messages)
        .map(|m| {
            let top = AttrTable::parse(&m.attrs)?;
            decode_dest(
                AttrTable::require(top.get(cmd_attr::DEST), "IPVS_CMD_ATTR_DEST")?,
                service_family,
            )
        })
        .collect()
}

/// Decode a `GET_INFO` reply (its attributes are top level, not nested).
fn decode_info(messages: &[ReplyMessage]) -> Result<IpvsInfo> {
    let msg = data_messages(messages)
        .next()
        .ok_or(IpvsError::UnexpectedReply("GET_INFO without data"))?;
    let t = AttrTable::parse(&msg.attrs)?;
    Ok(IpvsInfo {
        version_code: AttrTable::require(
            t.u32(info_attr::VERSION, "IPVS_INFO_ATTR_VERSION")?,
            "IPVS_INFO_ATTR_VERSION",
        )?,
        connection_table_size: t
            .u32(info_attr::CONN_TAB_SIZE, "IPVS_INFO_ATTR_CONN_TAB_SIZE")?
            .unwrap_or(0),
    })
}

/// Decode a `GET_CONFIG` reply (top-level attributes, like `GET_INFO`).
fn decode_timeouts(messages: &[ReplyMessage]) -> Result<Timeouts> {
    let msg = data_messages(messages)
        .next()
        .ok_or(IpvsError::UnexpectedReply("GET_CONFIG without data"))?;
    // The kernel answers GET_CONFIG with cmd SET_CONFIG (ip_vs_genl_get_cmd).
    if msg.cmd != cmd::SET_CONFIG {
        return Err(IpvsError::UnexpectedReply("GET_CONFIG answered with another command"));
    }
    let t = AttrTable::parse(&msg.attrs)?;
    Ok(Timeouts {
        tcp: t.u32(cmd_attr::TIMEOUT_TCP, "IPVS_CMD_ATTR_TIMEOUT_TCP")?.unwrap_or(0),
        tcp_fin: t
            .u32(cmd_attr::TIMEOUT_TCP_FIN, "IPVS_CMD_ATTR_TIMEOUT_TCP_FIN")?
            .unwrap_or(0),
        udp: t.u32(cmd_attr::TIMEOUT_UDP, "IPVS_CMD_ATTR_TIMEOUT_UDP")?.unwrap_or(0),
    })
}

/// Decode the `CTRL_CMD_NEWFAMILY` reply to a family lookup.
fn decode_family_id(messages: &[ReplyMessage]) -> Result<u16> {
    let msg = data_messages(messages)
        .next()
        .ok_or(IpvsError::UnexpectedReply("GETFAMILY without data"))?;
    let t = AttrTable::parse(&msg.attrs)?;
    // CTRL_ATTR_FAMILY_ID = 1.
    AttrTable::require(t.u16(1, "CTRL_ATTR_FAMILY_ID")?, "CTRL_ATTR_FAMILY_ID")
}

// ---------------------------------------------------------------------------
// Client

/// One request and the raw datagrams the kernel answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The request as sent.
    pub request: Vec<u8>,
    /// Each datagram received for it, in order.
    pub replies: Vec<Vec<u8>>,
}

/// A blocking IPVS client on its own generic netlink socket.
pub struct IpvsClient {
    socket: Socket,
    family_id: u16,
    seq: u32,
    recorded: Option<Vec<Exchange>>,
}

impl IpvsClient {
    /// Open a socket and resolve the `IPVS` family.
    /// Fails with [`IpvsError::NotSupported`] when the kernel has no IPVS.
    pub fn connect() -> Result<IpvsClient> {
        let mut socket = Socket::new(NETLINK_GENERIC)?;
        socket.bind_auto()?;
        socket.connect(&NetlinkAddr::new(0, 0))?;
        let mut client = IpvsClient {
            socket,
            family_id: 0,
            seq: 0,
            recorded: None,
        };
        client.family_id = match client.exchange(&Request::ResolveFamily) {
            Ok(messages) => decode_family_id(&messages)?,
            // The controller answers ENOENT for an unknown family name.
            Err(IpvsError::NotFound(_)) => return Err(IpvsError::NotSupported),
            Err(e) => return Err(e),
        };
        Ok(client)
    }

    /// The resolved generic netlink family id of `IPVS`.
    pub fn family_id(&self) -> u16 {
        self.family_id
    }

    /// Start (or stop) keeping every raw request and reply, for capturing
    /// test vectors and debugging.
    pub fn record(&mut self, on: bool) {
        self.recorded = on.then(Vec::new);
    }

    /// The exchanges recorded since [`IpvsClient::record`] was turned on.
    pub fn take_recorded(&mut self) -> Vec<Exchange> {
        self.recorded.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The kernel's IPVS version and connection table size (`GET_INFO`).
    pub fn version(&mut self) -> Result<IpvsInfo> {
        decode_info(&self.exchange(&Request::GetInfo)?)
    }

    /// Every virtual service, with counters.
    pub fn list_services(&mut self) -> Result<Vec<VirtualService>> {
        decode_service_list(&self.exchange(&Request::ListServices)?)
    }

    /// Create a service; [`IpvsError::Exists`] if it exists.
    pub fn add_service(&mut self, svc: &VirtualService) -> Result<()> {
        self.exchange(&Request::AddService(svc)).map(drop)
    }

    /// Change a service's scheduler, flags, timeout or netmask (found by its identity).
    pub fn edit_service(&mut self, svc: &VirtualService) -> Result<()> {
        self.exchange(&Request::EditService(svc)).map(drop)
    }

    /// Delete a service and its real servers; [`IpvsError::NotFound`] if missing.
    pub fn delete_service(&mut self, svc: &VirtualService) -> Result<()> {
        self.exchange(&Request::DeleteService(svc)).map(drop)
    }

    /// The real servers of a service, in the kernel's order (newest first).
    pub fn list_destinations(&mut self, svc: &VirtualService) -> Result<Vec<RealServer>> {
        decode_dest_list(&self.exchange(&Request::ListDestinations(svc))?, svc.family)
    }

    /// Add a real server to a service.
    pub fn add_destination(&mut self, svc: &VirtualService, dest: &RealServer) -> Result<()> {
        self.exchange(&Request::AddDestination(svc, dest)).map(drop)
    }

    /// Change a real server's weight, forwarding method or thresholds.
    pub fn edit_destination(&mut self, svc: &VirtualService, dest: &RealServer) -> Result<()> {
        self.exchange(&Request::EditDestination(svc, dest)).map(drop)
    }

    /// Remove a real server from a service.
    pub fn delete_destination(&mut self, svc: &VirtualService, dest: &RealServer) -> Result<()> {
        self.exchange(&Request::DeleteDestination(svc, dest)).map(drop)
    }

    /// Delete every virtual service.
    pub fn flush(&mut self) -> Result<()> {
        self.exchange(&Request::Flush).map(drop)
    }

    /// Set the connection timeouts (`ipvsadm --set`); a 0 field leaves that
    /// timeout as it is. A value above `INT_MAX / HZ` seconds (about 99 days
    /// at HZ=250) is refused with [`IpvsError::Kernel`] (`EINVAL`).
    pub fn set_timeouts(&mut self, timeouts: &Timeouts) -> Result<()> {
        self.exchange(&Request::SetTimeouts(*timeouts)).map(drop)
    }

    /// The kernel's current connection timeouts (`ipvsadm -L --timeout`).
    pub fn get_timeouts(&mut self) -> Result<Timeouts> {
        decode_timeouts(&self.exchange(&Request::GetTimeouts)?)
    }

    /// Send one request and collect its reply messages up to the final ACK,
    /// `NLMSG_DONE` or error.
    fn exchange(&mut self, request: &Request<'_>) -> Result<Vec<ReplyMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = encode_request(self.family_id, seq, 0, request);
        self.socket.send(&bytes, 0)?;
        let mut exchange = Exchange {
            request: bytes,
            replies: Vec::new(),
        };
        let mut messages = Vec::new();
        let result = loop {
            let (datagram, _) = self.socket.recv_from_full()?;
            let parsed = parse_datagram(&datagram, seq);
            exchange.replies.push(datagram);
            let parsed = match parsed {
                Ok(p) => p,
                Err(e) => break Err(e),
            };
            let mut finished = None;
            for m in parsed {
                match m {
                    ReplyMessage::Ack | ReplyMessage::Done => finished = Some(Ok(())),
                    ReplyMessage::Error(errno) => finished = Some(Err(IpvsError::from_errno(errno))),
                    data @ ReplyMessage::Data(_) => messages.push(data),
                }
            }
            if let Some(f) = finished {
                // A dump with NLM_F_ACK still ends with NLMSG_DONE only;
                // a do-request ends with the ACK (NLMSG_ERROR, code 0).
                break f;
            }
        };
        if let Some(recorded) = &mut self.recorded {
            recorded.push(exchange);
        }
        result.map(|()| messages)
    }
}

#[cfg(test)]
mod tests {
    //! Golden vectors: `testdata/*.hex` were captured in the qemu VM
    //! (Debian kernel 6.1) by running `ipvsadm` 1.31 under
    //! `strace -e read=3 -e write=3`; `>` lines are what ipvsadm sent, `<`
    //! lines are the datagrams the kernel answered with. Sequence numbers and
    //! port ids are normalized to 0 before comparing.
    use super::*;

    const IPVS_FAMILY_ID: u16 = 0x20; // what the VM's kernel assigned
    const NLM_F_MULTI: u16 = 0x2;

    /// One captured request with the datagrams that answered it.
    struct Captured {
        request: Vec<u8>,
        replies: Vec<Vec<u8>>,
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn load(text: &str) -> Vec<Captured> {
        let mut out: Vec<Captured> = Vec::new();
        for line in text.lines() {
            if let Some(h) = line.strip_prefix("> ") {
                out.push(Captured {
                    request: hex(h.trim()),
                    replies: vec![],
                });
            } else if let Some(h) = line.strip_prefix("< ") {
                out.last_mut()
                    .expect("reply after a request")
                    .replies
                    .push(hex(h.trim()));
            }
        }
        out
    }

    /// Zero seq and port id of every message in a datagram, including the
    /// copy of the request header inside NLMSG_ERROR.
    fn normalize(mut datagram: Vec<u8>) -> Vec<u8> {
        let mut at = 0;
        while at + 16 <= datagram.len() {
            let len = u32::from_ne_bytes(datagram[at..at + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(datagram[at + 4..at + 6].try_into().unwrap());
            datagram[at + 8..at + 16].fill(0);
            if kind == 2 && len >= 36 {
                datagram[at + 28..at + 36].fill(0);
            }
            at += (len + 3) & !3;
        }
        datagram
    }

    /// The exchange whose request is `genl_cmd` to the IPVS family.
    fn ipvs_exchange(captured: &[Captured], genl_cmd: u8) -> &Captured {
        captured
            .iter()
            .rev()
            .find(|c| u16::from_ne_bytes([c.request[4], c.request[5]]) == IPVS_FAMILY_ID && c.request[16] == genl_cmd)
            .expect("exchange in capture")
    }

    fn messages(c: &Captured) -> Vec<ReplyMessage> {
        let seq = u32::from_ne_bytes(c.request[8..12].try_into().unwrap());
        c.replies
            .iter()
            .flat_map(|d| parse_datagram(d, seq).expect("reply parses"))
            .collect()
    }

    fn assert_request(c: &Captured, request: Request<'_>) {
        let ours = encode_request(IPVS_FAMILY_ID, 0, 0, &request);
        assert_eq!(
            hexstr(&ours),
            hexstr(&normalize(c.request.clone())),
            "request {request:?}"
        );
    }

    fn hexstr(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn outcome(c: &Captured) -> Result<()> {
        for m in messages(c) {
            match m {
                ReplyMessage::Ack | ReplyMessage::Done => return Ok(()),
                ReplyMessage::Error(errno) => return Err(IpvsError::from_errno(errno)),
                ReplyMessage::Data(_) => {}
            }
        }
        panic!("no final message")
    }

    fn sock(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// ipvsadm sends an empty scheduler name when the command line has none.
    fn tcp_10_0_0_1_80(scheduler: &str) -> VirtualService {
        VirtualService::new(Protocol::Tcp, sock("10.0.0.1:80"), scheduler)
    }

    fn v6_persistent(scheduler: &str) -> VirtualService {
        let mut svc = VirtualService::new(Protocol::Tcp, sock("[fd00::1]:443"), scheduler);
        svc.flags = ServiceFlags::PERSISTENT;
        svc.timeout = 300;
        svc
    }

    #[test]
    fn resolve_family_request_and_reply() {
        let captured = load(include_str!("testdata/add_service_tcp_rr.hex"));
        let c = &captured[0];
        assert_eq!(
            hexstr(&encode_request(0, 0, 0, &Request::ResolveFamily)),
            hexstr(&normalize(c.request.clone()))
        );
        assert_eq!(decode_family_id(&messages(c)).unwrap(), IPVS_FAMILY_ID);
    }

    #[test]
    fn get_info_request_and_reply() {
        let captured = load(include_str!("testdata/add_service_tcp_rr.hex"));
        let c = ipvs_exchange(&captured, cmd::GET_INFO);
        assert_request(c, Request::GetInfo);
        let info = decode_info(&messages(c)).unwrap();
        assert_eq!(info.version(), (1, 2, 1));
        assert_eq!(info.connection_table_size, 4096);
    }

    #[test]
    fn add_service_requests_match_ipvsadm() {
        let cases: [(&str, VirtualService); 3] = [
            (include_str!("testdata/add_service_tcp_rr.hex"), tcp_10_0_0_1_80("rr")),
            (
                include_str!("testdata/add_service_v6_persistent.hex"),
                v6_persistent("rr"),
            ),
            (
                include_str!("testdata/add_service_fwmark.hex"),
                VirtualService::fwmark(AddressFamily::Inet, 7, "sh"),
            ),
        ];
        for (text, svc) in cases {
            let captured = load(text);
            let c = ipvs_exchange(&captured, cmd::NEW_SERVICE);
            assert_request(c, Request::AddService(&svc));
            outcome(c).unwrap();
        }
    }

    #[test]
    fn edit_and_delete_service_and_flush_requests_match_ipvsadm() {
        let captured = load(include_str!("testdata/edit_service_wrr.hex"));
        let c = ipvs_exchange(&captured, cmd::SET_SERVICE);
        assert_request(c, Request::EditService(&tcp_10_0_0_1_80("wrr")));
        outcome(c).unwrap();

        let captured = load(include_str!("testdata/delete_service.hex"));
        let c = ipvs_exchange(&captured, cmd::DEL_SERVICE);
        assert_request(c, Request::DeleteService(&tcp_10_0_0_1_80("")));
        outcome(c).unwrap();

        let captured = load(include_str!("testdata/flush.hex"));
        let c = ipvs_exchange(&captured, cmd::FLUSH);
        assert_request(c, Request::Flush);
        outcome(c).unwrap();
    }

    #[test]
    fn destination_requests_match_ipvsadm() {
        let svc = tcp_10_0_0_1_80("");
        // `ipvsadm -a` only knows the service identity; the rest is defaults.
        let v6_plain = VirtualService::new(Protocol::Tcp, sock("[fd00::1]:443"), "");
        let masq = |addr: &str, weight| RealServer::new(sock(addr), weight, ForwardMethod::Masquerade);
        let mut v6 = RealServer::new(sock("[fd00::2]:443"), 3, ForwardMethod::DirectRoute);
        v6.upper_threshold = 100;
        v6.lower_threshold = 10;
        let cases: [(&str, u8, &VirtualService, RealServer); 5] = [
            (
                include_str!("testdata/add_dest_masq_w1.hex"),
                cmd::NEW_DEST,
                &svc,
                masq("10.1.0.1:8080", 1),
            ),
            (
                include_str!("testdata/add_dest_masq_w2.hex"),
                cmd::NEW_DEST,
                &svc,
                masq("10.1.0.2:8080", 2),
            ),
            (
                include_str!("testdata/edit_dest_weight5.hex"),
                cmd::SET_DEST,
                &svc,
                masq("10.1.0.2:8080", 5),
            ),
            (
                include_str!("testdata/delete_dest.hex"),
                cmd::DEL_DEST,
                &svc,
                // ipvsadm fills in its defaults (direct routing, weight 1) on -d.
                RealServer::new(sock("10.1.0.1:8080"), 1, ForwardMethod::DirectRoute),
            ),
            (
                include_str!("testdata/add_dest_v6_droute_thresholds.hex"),
                cmd::NEW_DEST,
                &v6_plain,
                v6,
            ),
        ];
        for (text, command, svc, dest) in cases {
            let captured = load(text);
            let c = ipvs_exchange(&captured, command);
            let request = match command {
                cmd::NEW_DEST => Request::AddDestination(svc, &dest),
                cmd::SET_DEST => Request::EditDestination(svc, &dest),
                _ => Request::DeleteDestination(svc, &dest),
            };
            assert_request(c, request);
            outcome(c).unwrap();
        }
    }

    #[test]
    fn kernel_errors_map_to_typed_errors() {
        let captured = load(include_str!("testdata/delete_service_missing.hex"));
        let c = ipvs_exchange(&captured, cmd::DEL_SERVICE);
        assert_request(c, Request::DeleteService(&tcp_10_0_0_1_80("")));
        assert!(
            matches!(outcome(c), Err(IpvsError::NotFound(ESRCH))),
            "{:?}",
            outcome(c)
        );

        let captured = load(include_str!("testdata/add_service_exists.hex"));
        let c = ipvs_exchange(&captured, cmd::NEW_SERVICE);
        assert_request(
            c,
            Request::AddService(&VirtualService::new(Protocol::Tcp, sock("[fd00::1]:443"), "rr")),
        );
        assert!(matches!(outcome(c), Err(IpvsError::Exists)));

        assert!(matches!(IpvsError::from_errno(ENOENT), IpvsError::NotFound(ENOENT)));
        assert!(matches!(IpvsError::from_errno(EPERM), IpvsError::Permission(EPERM)));
        assert!(matches!(IpvsError::from_errno(22), IpvsError::Kernel { errno: 22, .. }));
    }

    // --- Replies: decode, then re-encode in the kernel's layout. ---------

    fn stats_nest(kind: u16, stats: &Stats, wide: bool) -> Attr {
        // The 32-bit nest truncates like the kernel's `(u32)kstats->x`,
        // except the byte counters which are u64 in both.
        let n = |k, v: u64| if wide { Attr::U64(k, v) } else { Attr::U32(k, v as u32) };
        let attrs = vec![
            n(stats_attr::CONNS, stats.connections),
            n(stats_attr::INPKTS, stats.in_packets),
            n(stats_attr::OUTPKTS, stats.out_packets),
            Attr::U64(stats_attr::INBYTES, stats.in_bytes),
            Attr::U64(stats_attr::OUTBYTES, stats.out_bytes),
            n(stats_attr::CPS, stats.cps),
            n(stats_attr::INPPS, stats.in_pps),
            n(stats_attr::OUTPPS, stats.out_pps),
            n(stats_attr::INBPS, stats.in_bps),
            n(stats_attr::OUTBPS, stats.out_bps),
        ];
        Attr::Nested {
            kind,
            flagged: false,
            attrs,
        }
    }

    /// ip_vs_genl_fill_service's layout.
    fn kernel_service_nest(svc: &VirtualService) -> Attr {
        let mut attrs = service_identity_attrs(svc);
        attrs.push(Attr::Str(svc_attr::SCHED_NAME, svc.scheduler.clone()));
        if let Some(pe) = &svc.persistence_engine {
            attrs.push(Attr::Str(svc_attr::PE_NAME, pe.clone()));
        }
        let mut flags = svc.flags.0.to_ne_bytes().to_vec();
        flags.extend_from_slice(&u32::MAX.to_ne_bytes());
        attrs.push(Attr::Bytes(svc_attr::FLAGS, flags));
        attrs.push(Attr::U32(svc_attr::TIMEOUT, svc.timeout));
        attrs.push(netmask_attr(svc));
        let stats = svc.stats.expect("dumps carry stats");
        attrs.push(stats_nest(svc_attr::STATS, &stats, false));
        attrs.push(stats_nest(svc_attr::STATS64, &stats, true));
        Attr::Nested {
            kind: cmd_attr::SERVICE,
            flagged: false,
            attrs,
        }
    }

    /// ip_vs_genl_fill_dest's layout.
    fn kernel_dest_nest(d: &RealServer) -> Attr {
        let stats = d.stats.expect("dumps carry stats");
        let attrs = vec![
            Attr::Bytes(dest_attr::ADDR, inet_addr_bytes(&d.addr)),
            Attr::Be16(dest_attr::PORT, d.port),
            Attr::U32(dest_attr::FWD_METHOD, d.fwd_method.to_raw()),
            Attr::U32(dest_attr::WEIGHT, d.weight),
            Attr::U8(dest_attr::TUN_TYPE, d.tunnel.kind),
            Attr::Be16(dest_attr::TUN_PORT, d.tunnel.port),
            Attr::U16(dest_attr::TUN_FLAGS, d.tunnel.flags),
            Attr::U32(dest_attr::U_THRESH, d.upper_threshold),
            Attr::U32(dest_attr::L_THRESH, d.lower_threshold),
            Attr::U32(dest_attr::ACTIVE_CONNS, d.active_connections),
            Attr::U32(dest_attr::INACT_CONNS, d.inactive_connections),
            Attr::U32(dest_attr::PERSIST_CONNS, d.persistent_connections),
            Attr::U16(dest_attr::ADDR_FAMILY, AddressFamily::of(&d.addr).to_raw()),
            stats_nest(dest_attr::STATS, &stats, false),
            stats_nest(dest_attr::STATS64, &stats, true),
        ];
        Attr::Nested {
            kind: cmd_attr::DEST,
            flagged: false,
            attrs,
        }
    }

    /// A dump datagram as the kernel builds it: NLM_F_MULTI messages.
    fn kernel_dump_datagram(reply_cmd: u8, nests: Vec<Attr>) -> Vec<u8> {
        nests
            .into_iter()
            .flat_map(|nest| {
                let mut header = NetlinkHeader::default();
                header.flags = NLM_F_MULTI;
                let genl = GenlMessage::new(
                    GenlHeader {
                        cmd: reply_cmd,
                        version: IPVS_GENL_VERSION,
                    },
                    IpvsCommand {
                        cmd: reply_cmd,
                        attrs: vec![nest],
                    },
                    IPVS_FAMILY_ID,
                );
                frame(header, genl)
            })
            .collect()
    }

    /// Decode the first (data) datagram of a dump, check it, re-encode it.
    fn round_trip_services(c: &Captured) -> Vec<VirtualService> {
        let services = decode_service_list(&messages(c)).unwrap();
        let again = kernel_dump_datagram(cmd::NEW_SERVICE, services.iter().map(kernel_service_nest).collect());
        assert_eq!(hexstr(&again), hexstr(&normalize(c.replies[0].clone())));
        services
    }

    fn round_trip_dests(c: &Captured, family: AddressFamily) -> Vec<RealServer> {
        let dests = decode_dest_list(&messages(c), family).unwrap();
        let again = kernel_dump_datagram(cmd::NEW_DEST, dests.iter().map(kernel_dest_nest).collect());
        assert_eq!(hexstr(&again), hexstr(&normalize(c.replies[0].clone())));
        dests
    }

    #[test]
    fn list_tcp_service_and_dests_round_trip() {
        let captured = load(include_str!("testdata/list_tcp_service_dests.hex"));
        let c = ipvs_exchange(&captured, cmd::GET_SERVICE);
        assert_request(c, Request::ListServices);
        let services = round_trip_services(c);
        assert_eq!(services.len(), 1);
        let svc = &services[0];
        assert!(svc.same_config(&tcp_10_0_0_1_80("wrr")), "{svc:?}");
        // The kernel reports its internal HASHED bit.
        assert_eq!(svc.flags, ServiceFlags::HASHED);
        assert_eq!(svc.stats, Some(Stats::default()));

        let c = ipvs_exchange(&captured, cmd::GET_DEST);
        assert_request(c, Request::ListDestinations(svc));
        let dests = round_trip_dests(c, svc.family);
        // The kernel adds destinations at the head of the list: newest first.
        let want = [
            RealServer::new(sock("10.1.0.2:8080"), 5, ForwardMethod::Masquerade),
            RealServer::new(sock("10.1.0.1:8080"), 1, ForwardMethod::Masquerade),
        ];
        assert_eq!(dests.len(), 2);
        for (got, want) in dests.iter().zip(&want) {
            assert!(got.same_config(want), "{got:?}");
        }
    }

    #[test]
    fn list_v6_and_fwmark_services_round_trip() {
        let captured = load(include_str!("testdata/list_fwmark_dests.hex"));
        let c = ipvs_exchange(&captured, cmd::GET_SERVICE);
        let services = round_trip_services(c);
        assert_eq!(services.len(), 2);
        assert!(services[0].same_config(&v6_persistent("rr")), "{:?}", services[0]);
        assert!(
            services[1].same_config(&VirtualService::fwmark(AddressFamily::Inet, 7, "sh")),
            "{:?}",
            services[1]
        );
        // The dump of the v6 service's destinations comes first in the capture.
        let dest_dumps: Vec<&Captured> = captured
            .iter()
            .filter(|c| {
                u16::from_ne_bytes([c.request[4], c.request[5]]) == IPVS_FAMILY_ID && c.request[16] == cmd::GET_DEST
            })
            .collect();
        assert_eq!(dest_dumps.len(), 2);
        assert_request(dest_dumps[0], Request::ListDestinations(&services[0]));
        assert_request(dest_dumps[1], Request::ListDestinations(&services[1]));
        let dests = round_trip_dests(dest_dumps[0], AddressFamily::Inet6);
        let mut want = RealServer::new(sock("[fd00::2]:443"), 3, ForwardMethod::DirectRoute);
        want.upper_threshold = 100;
        want.lower_threshold = 10;
        assert_eq!(dests.len(), 1);
        assert!(dests[0].same_config(&want), "{:?}", dests[0]);
        // The fwmark service has no destinations: the dump is just NLMSG_DONE.
        assert!(
            decode_dest_list(&messages(dest_dumps[1]), AddressFamily::Inet)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn address_encoding_is_16_bytes_for_both_families() {
        assert_eq!(
            inet_addr_bytes(&"10.0.0.1".parse().unwrap())[..],
            hex("0a000001000000000000000000000000")[..]
        );
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(
            decode_inet_addr(&inet_addr_bytes(&v6), AddressFamily::Inet6, "x").unwrap(),
            v6
        );
    }

    #[test]
    fn set_timeouts_request_matches_ipvsadm() {
        let captured = load(include_str!("testdata/set_config_timeouts.hex"));
        let c = ipvs_exchange(&captured, cmd::SET_CONFIG);
        let t = Timeouts {
            tcp: 900,
            tcp_fin: 120,
            udp: 300,
        };
        assert_request(c, Request::SetTimeouts(t));
        outcome(c).unwrap();
    }

    #[test]
    fn get_timeouts_request_and_reply_match_the_kernel() {
        let captured = load(include_str!("testdata/get_config_timeouts.hex"));
        let c = ipvs_exchange(&captured, cmd::GET_CONFIG);
        assert_request(c, Request::GetTimeouts);
        let got = decode_timeouts(&messages(c)).unwrap();
        let want = Timeouts {
            tcp: 900,
            tcp_fin: 120,
            udp: 300,
        };
        assert_eq!(got, want);
        // Re-encode the reply in the kernel's layout: same bytes. (ipvsadm
        // stopped reading after the data, so the capture lacks the ACK.)
        let mut header = NetlinkHeader::default();
        header.flags = 0;
        let attrs = vec![
            Attr::U32(cmd_attr::TIMEOUT_TCP, got.tcp),
            Attr::U32(cmd_attr::TIMEOUT_TCP_FIN, got.tcp_fin),
            Attr::U32(cmd_attr::TIMEOUT_UDP, got.udp),
        ];
        let genl = GenlMessage::new(
            GenlHeader {
                cmd: cmd::SET_CONFIG,
                version: IPVS_GENL_VERSION,
            },
            IpvsCommand {
                cmd: cmd::SET_CONFIG,
                attrs,
            },
            IPVS_FAMILY_ID,
        );
        assert_eq!(hexstr(&frame(header, genl)), hexstr(&normalize(c.replies[0].clone())));
    }

    #[test]
    fn timeouts_decode_errors_are_typed() {
        let reply = |cmd: u8, attrs: Vec<Attr>| {
            let mut a = vec![0u8; attrs.as_slice().buffer_len()];
            attrs.as_slice().emit(&mut a);
            vec![ReplyMessage::Data(IpvsReply { cmd, attrs: a }), ReplyMessage::Ack]
        };
        // A kernel without UDP support omits that attribute: 0, not an error.
        let partial = reply(
            cmd::SET_CONFIG,
            vec![
                Attr::U32(cmd_attr::TIMEOUT_TCP, 7),
                Attr::U32(cmd_attr::TIMEOUT_TCP_FIN, 8),
            ],
        );
        assert_eq!(
            decode_timeouts(&partial).unwrap(),
            Timeouts {
                tcp: 7,
                tcp_fin: 8,
                udp: 0
            }
        );
        let short = reply(cmd::SET_CONFIG, vec![Attr::U16(cmd_attr::TIMEOUT_UDP, 1)]);
        assert!(matches!(
            decode_timeouts(&short),
            Err(IpvsError::BadAttribute {
                attribute: "IPVS_CMD_ATTR_TIMEOUT_UDP",
                len: 2
            })
        ));
        assert!(matches!(
            decode_timeouts(&[ReplyMessage::Ack]),
            Err(IpvsError::UnexpectedReply(_))
        ));
        assert!(matches!(
            decode_timeouts(&reply(cmd::GET_INFO, vec![])),
            Err(IpvsError::UnexpectedReply(_))
        ));
    }

    #[test]
    fn truncated_reply_is_a_decode_error_not_a_panic() {
        let captured = load(include_str!("testdata/list_tcp_service_dests.hex"));
        let c = ipvs_exchange(&captured, cmd::GET_SERVICE);
        let mut datagram = c.replies[0].clone();
        datagram.truncate(60);
        assert!(parse_datagram(&datagram, 0).is_err());
    }
}
