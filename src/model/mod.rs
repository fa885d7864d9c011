//! Plain data the rest of the agent agrees on: keys, endpoints and service
//! ports. Nothing here does I/O or knows about the Kubernetes API types; the
//! `watch` layer converts into these, the `track` layer stores them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;

/// An interned string: names repeat across thousands of objects (namespaces,
/// node names, zone names), so they are shared rather than copied.
pub type Name = Arc<str>;

/// IPv4 or IPv6. Every rule set is per family, as in kube-proxy, which runs
/// one proxier per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum IpFamily {
    /// IPv4.
    #[serde(rename = "IPv4")]
    V4,
    /// IPv6.
    #[serde(rename = "IPv6")]
    V6,
}

impl IpFamily {
    /// Both families, in the order they are programmed and printed.
    pub const ALL: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

    /// The family of an address.
    pub fn of(ip: &IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// Index into per-family arrays (`[T; 2]`).
    pub fn index(self) -> usize {
        match self {
            IpFamily::V4 => 0,
            IpFamily::V6 => 1,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// L4 protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Protocol {
    /// TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// Parse the Kubernetes spelling; `None` (the API default) means TCP.
    pub fn from_k8s(s: Option<&str>) -> Option<Protocol> {
        match s {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            Some(_) => None,
        }
    }

    /// The Kubernetes spelling ("TCP").
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// The lower-case name iptables, nft and conntrack use.
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `namespace/name` of a Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServiceKey {
    /// Namespace.
    pub namespace: Name,
    /// Service name.
    pub name: Name,
}

impl ServiceKey {
    /// Build a key from anything string-like.
    pub fn new(namespace: &str, name: &str) -> ServiceKey {
        ServiceKey {
            namespace: Name::from(namespace),
            name: Name::from(name),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One port of one Service: `namespace/name:portName/protocol`. The unit the
/// backend table, the ChangeSet and every dataplane work in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortKey {
    /// The Service.
    pub service: ServiceKey,
    /// The port's name ("" for the single unnamed port).
    pub port_name: Name,
    /// The port's protocol.
    pub protocol: Protocol,
}

impl ServicePortKey {
    /// Build a key from parts.
    pub fn new(namespace: &str, name: &str, port_name: &str, protocol: Protocol) -> ServicePortKey {
        ServicePortKey {
            service: ServiceKey::new(namespace, name),
            port_name: Name::from(port_name),
            protocol,
        }
    }
}

impl fmt::Display for ServicePortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.service, self.port_name, self.protocol)
    }
}

impl Serialize for ServicePortKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `namespace/name` of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SliceKey {
    /// Namespace.
    pub namespace: Name,
    /// Slice name.
    pub name: Name,
}

impl fmt::Display for SliceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One backend of one service port, as EndpointSlices describe it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Address and target port.
    pub addr: SocketAddr,
    /// `conditions.ready` (nil counts as ready, as upstream).
    pub ready: bool,
    /// `conditions.serving` (nil counts as true, as upstream).
    pub serving: bool,
    /// `conditions.terminating` (nil counts as false).
    pub terminating: bool,
    /// `nodeName` equals this agent's node.
    pub local: bool,
    /// `nodeName`, when set.
    pub node_name: Option<Name>,
    /// `hints.forZones[].name`, sorted.
    pub zone_hints: Arc<[Name]>,
    /// `hints.forNodes[].name`, sorted.
    pub node_hints: Arc<[Name]>,
}

impl Endpoint {
    /// A ready, serving, non-terminating, remote endpoint without hints.
    pub fn ready(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            ready: true,
            serving: true,
            terminating: false,
            local: false,
            node_name: None,
            zone_hints: Arc::from([]),
            node_hints: Arc::from([]),
        }
    }

    /// Its address family.
    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.addr.ip())
    }

    /// Usable as a terminating fallback: serving but on its way out.
    pub fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }

    /// How strongly this copy should win when the same address appears in two
    /// slices (during a move between slices): a ready copy beats a serving
    /// one beats the rest; then a local copy. Ties are settled by the caller
    /// (slice name order) so the result never depends on arrival order.
    pub fn precedence(&self) -> (bool, bool, bool) {
        (self.ready, self.serving, self.local)
    }
}

/// The Service `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ServiceType {
    /// ClusterIP.
    ClusterIP,
    /// NodePort.
    NodePort,
    /// LoadBalancer.
    LoadBalancer,
}

/// Per-family addresses of a service port's frontends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FamilyFrontends {
    /// The cluster IP of this family, if the Service has one.
    pub cluster_ip: Option<IpAddr>,
    /// `spec.externalIPs` of this family.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` of this family whose `ipMode` is
    /// `VIP` (or unset). `Proxy` ingresses are left to the load balancer, as
    /// upstream does: the node must not capture their traffic.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges` of this family.
    pub source_ranges: Vec<IpNet>,
}

/// Everything a dataplane needs to know about one service port, other than
/// its endpoints. Compared as a whole: any field change is a rule change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServicePortInfo {
    /// Which port of which Service.
    pub key: ServicePortKey,
    /// Service type.
    pub service_type: ServiceType,
    /// The service port number.
    pub port: u16,
    /// `nodePort`, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
    /// Frontend addresses per family (`[v4, v6]`).
    pub frontends: [FamilyFrontends; 2],
    /// `sessionAffinity: ClientIP` timeout in seconds, `None` without affinity.
    pub affinity_timeout_secs: Option<u32>,
    /// `externalTrafficPolicy: Local` (only meaningful when externally reachable).
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// `healthCheckNodePort` (LoadBalancer with externalTrafficPolicy Local).
    pub health_check_node_port: Option<u16>,
    /// `trafficDistribution`, kept for display; hints on the endpoints decide.
    pub traffic_distribution: Option<String>,
}

impl ServicePortInfo {
    /// The service port reaches the node from outside: a NodePort, an
    /// external IP or a load-balancer IP (upstream's `ExternallyAccessible`).
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || self
                .frontends
                .iter()
                .any(|f| !f.external_ips.is_empty() || !f.load_balancer_ips.is_empty())
    }

    /// External traffic is restricted to local endpoints.
    pub fn external_local(&self) -> bool {
        self.externally_accessible() && self.external_policy_local
    }

    /// Some traffic uses the cluster-wide endpoint set (upstream's `UsesClusterEndpoints`).
    ///
    /// Every externally reachable port uses them: with
    /// `externalTrafficPolicy: Local`, pods and the node itself still reach
    /// the external frontends through the cluster-wide set (the
    /// short-circuit), also when `internalTrafficPolicy` is Local.
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || self.externally_accessible()
    }

    /// Some traffic uses only this node's endpoints (upstream's `UsesLocalEndpoints`).
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || self.external_local()
    }

    /// The frontends of one family.
    pub fn family(&self, family: IpFamily) -> &FamilyFrontends {
        &self.frontends[family.index()]
    }

    /// The Service has a frontend in this family; without one, the family
    /// programs nothing for it (single-stack Services in a dual-stack node).
    pub fn has_family(&self, family: IpFamily) -> bool {
        self.family(family).cluster_ip.is_some()
    }
}

/// A Service converted into its ports. A Service that programs nothing
/// (ExternalName, headless, no cluster IP) converts into no ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The Service.
    pub key: ServiceKey,
    /// Its ports (empty when it programs nothing).
    pub ports: Vec<Arc<ServicePortInfo>>,
}

/// A port of an EndpointSlice: its name joins it to a Service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlicePort {
    /// `ports[].name` ("" when unset).
    pub name: Name,
    /// `ports[].protocol`.
    pub protocol: Protocol,
    /// `ports[].port` (the target port).
    pub port: u16,
}

/// One endpoint of a slice before it is paired with a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SliceEndpoint {
    /// `addresses[0]` (upstream uses the first address only).
    pub ip: IpAddr,
    /// Conditions.
    pub ready: bool,
    /// Conditions.
    pub serving: bool,
    /// Conditions.
    pub terminating: bool,
    /// `nodeName`.
    pub node_name: Option<Name>,
    /// Zone hints, sorted.
    pub zone_hints: Arc<[Name]>,
    /// Node hints, sorted.
    pub node_hints: Arc<[Name]>,
}

/// An EndpointSlice converted: only what can change the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    /// The slice.
    pub key: SliceKey,
    /// The Service it belongs to (`kubernetes.io/service-name` label).
    pub service: ServiceKey,
    /// `addressType` (FQDN slices are dropped during conversion).
    pub family: IpFamily,
    /// Ports.
    pub ports: Vec<SlicePort>,
    /// Endpoints, in the slice's order.
    pub endpoints: Vec<SliceEndpoint>,
    /// `endpoints.kubernetes.io/last-change-trigger-time`: when the change
    /// this version reflects happened (for the network programming latency
    /// metric; never changes rules).
    pub trigger_time: Option<std::time::SystemTime>,
}

/// What the agent needs from its own Node object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// `topology.kubernetes.io/zone`, if labelled.
    pub zone: Option<String>,
    /// The Node is being deleted (`deletionTimestamp`), for health reporting.
    pub deleting: bool,
    /// Tainted `ToBeDeletedByClusterAutoscaler`, for health reporting.
    pub to_be_deleted: bool,
    /// `status.addresses` of type InternalIP/ExternalIP.
    pub addresses: Vec<IpAddr>,
}

/// Which dataplane programs the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    /// iptables NAT rules; upstream's default on Linux.
    #[default]
    Iptables,
    /// nftables rules.
    Nftables,
    /// IPVS virtual servers.
    Ipvs,
}

impl ProxyMode {
    /// The name kube-proxy uses for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Iptables => "iptables",
            ProxyMode::Nftables => "nftables",
            ProxyMode::Ipvs => "ipvs",
        }
    }
}

impl fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ProxyMode {
    type Err = String;

    /// Parses `iptables`, `nftables` or `ipvs`. The empty string is rejected here; callers treat
    /// it as "the default" themselves because that is a property of the file format, not the mode.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "iptables" => Ok(ProxyMode::Iptables),
            "nftables" => Ok(ProxyMode::Nftables),
            "ipvs" => Ok(ProxyMode::Ipvs),
            _ => Err("must be iptables, nftables or ipvs (blank means iptables)".to_string()),
        }
    }
}

/// Which of the node's addresses serve node ports (`--nodeport-addresses`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NodePortAddresses {
    /// default: all of the node's own addresses (never 127.0.0.0/8 or ::1)
    #[default]
    All,
    /// upstream's "primary": the node's primary IPs
    Primary,
    /// Only node addresses inside these CIDRs.
    Cidrs(Vec<IpNet>),
}

impl NodePortAddresses {
    /// Whether these addresses take in IPv4 loopback, as upstream's
    /// `ContainsIPv4Loopback`: every address does, `primary` never, CIDRs
    /// when one is a loopback network or holds `127.0.0.0`. Node ports on
    /// localhost need it.
    pub fn contains_ipv4_loopback(&self) -> bool {
        let start = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0));
        match self {
            NodePortAddresses::All => true,
            NodePortAddresses::Primary => false,
            NodePortAddresses::Cidrs(cidrs) => cidrs
                .iter()
                .any(|c| c.addr().is_ipv4() && (c.network().is_loopback() || c.contains(&start))),
        }
    }

    /// The node's addresses (`node`, as listed) that serve node ports,
    /// sorted. Loopback never does: a node port on 127.0.0.1 needs
    /// `route_localnet`, which opens the node's localhost to its neighbours
    /// (upstream's nftables mode refuses it too); link-local IPv6 addresses
    /// are per-link and never a service frontend.
    pub fn select(&self, node: &[IpAddr]) -> Vec<IpAddr> {
        let usable = |ip: &&IpAddr| !ip.is_loopback() && !is_link_local(ip);
        let mut out: Vec<IpAddr> = node
            .iter()
            .filter(usable)
            .filter(|ip| match self {
                NodePortAddresses::All => true,
                // The primary address of each family: the first one listed.
                NodePortAddresses::Primary => {
                    node.iter().filter(usable).find(|a| IpFamily::of(a) == IpFamily::of(ip)) == Some(*ip)
                }
                NodePortAddresses::Cidrs(cidrs) => cidrs.iter().any(|c| c.contains(*ip)),
            })
            .copied()
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_link_local_never_serve_node_ports() {
        let addrs: Vec<IpAddr> = [
            "127.0.0.1",
            "::1",
            "fe80::1",
            "169.254.1.1",
            "192.168.50.10",
            "fd00:50::10",
            "10.0.0.5",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let all = NodePortAddresses::All.select(&addrs);
        assert_eq!(
            all,
            ["10.0.0.5", "192.168.50.10", "fd00:50::10"].map(|a| a.parse::<IpAddr>().unwrap())
        );
        let primary = NodePortAddresses::Primary.select(&addrs);
        assert_eq!(
            primary,
            ["192.168.50.10", "fd00:50::10"].map(|a| a.parse::<IpAddr>().unwrap())
        );
        let cidr = NodePortAddresses::Cidrs(vec!["10.0.0.0/8".parse().unwrap(), "127.0.0.0/8".parse().unwrap()])
            .select(&addrs);
        assert_eq!(cidr, ["10.0.0.5".parse::<IpAddr>().unwrap()]);
    }
}
