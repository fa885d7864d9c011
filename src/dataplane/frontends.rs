//! The mode-neutral frontend plan: for one service port in one family, the
//! frontends that exist (the cluster IP, the node port on each node-port
//! address, each external IP and load-balancer IP) and, for every kind of
//! client, what a new connection meets (forwarded to which endpoint set,
//! masqueraded or not, refused, dropped).
//!
//! Built from the policy's [`PortPlan`] and the node's [`NodeSettings`],
//! this is the one place where traffic policies become decisions. Every mode
//! translates a [`FrontendPlan`] into its own kernel objects (iptables
//! chains, IPVS virtual servers and ipset members, nftables maps); `render`
//! prints it and `diagnose` checks a node's rules against it. No mode
//! re-derives policy, so the modes cannot disagree about who gets what.
//!
//! The decisions are kept *structured* (which set, when masquerading, which
//! clients short-circuit) rather than as per-client answers only, because a
//! mode programs the structure: iptables writes "masquerade sources outside
//! the cluster CIDR" as one `! -s CIDR` rule, IPVS as an ipset membership.
//! [`Treatment::verdict`] answers for one client class.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::IpNet;
use serde::Serialize;

use crate::model::{IpFamily, Protocol, ServicePortKey, ServiceType};
use crate::policy::{PortPlan, TopologyMode};

/// The node's settings that shape frontends beyond the plan. One value for
/// the whole node, shared by every mode, `render` and `diagnose`.
///
/// A mode may ignore a setting it cannot program (IPVS has no use for the
/// service CIDRs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSettings {
    /// `--masquerade-all`: SNAT every connection to a cluster IP.
    pub masquerade_all: bool,
    /// Serve node ports on IPv4 loopback (`127.0.0.0/8`) too, as kube-proxy's
    /// iptables mode does with `--iptables-localhost-nodeports`: needs
    /// `route_localnet`, so it is off unless a mode's configuration asks.
    /// The plan lists `127.0.0.1` as the frontend that stands for the range.
    pub localhost_node_ports: bool,
    /// Per family, `[IPv4, IPv6]`.
    pub families: [FamilySettings; 2],
}

/// The settings of one address family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FamilySettings {
    /// `--cluster-cidr` of this family: where pods are. Connections from
    /// elsewhere to a cluster IP are masqueraded, and pods reaching an
    /// external frontend of a Local-policy service short-circuit to the
    /// cluster-wide endpoints. Only the first is used, as upstream does.
    pub cluster_cidrs: Vec<IpNet>,
    /// Node addresses of this family that serve node ports (never loopback).
    pub node_port_addresses: Vec<IpAddr>,
    /// The ranges cluster IPs are allocated from (`--service-cluster-ip-range`
    /// or ServiceCIDR objects). Where a mode can, connections to an address
    /// inside them that no Service holds are dropped, and to an unknown
    /// port of a cluster IP refused, as upstream's nftables mode does.
    /// Empty: no such rules.
    pub service_cidrs: Vec<IpNet>,
}

impl NodeSettings {
    /// Settings from configuration's flat lists (families mixed).
    pub fn new(cluster_cidrs: &[IpNet], masquerade_all: bool, node_port_addresses: &[IpAddr]) -> NodeSettings {
        let mut settings = NodeSettings {
            masquerade_all,
            localhost_node_ports: false,
            families: Default::default(),
        };
        for f in IpFamily::ALL {
            settings.families[f.index()].cluster_cidrs = cluster_cidrs
                .iter()
                .filter(|c| IpFamily::of(&c.addr()) == f)
                .copied()
                .collect();
        }
        settings.set_node_port_addresses(node_port_addresses);
        settings
    }

    /// The same settings with these service CIDRs (families mixed).
    pub fn with_service_cidrs(mut self, cidrs: &[IpNet]) -> NodeSettings {
        for f in IpFamily::ALL {
            self.families[f.index()].service_cidrs = cidrs
                .iter()
                .filter(|c| IpFamily::of(&c.addr()) == f)
                .map(|c| c.trunc())
                .collect();
        }
        self
    }

    /// The same settings with node ports on localhost on or off.
    pub fn with_localhost_node_ports(mut self, on: bool) -> NodeSettings {
        self.localhost_node_ports = on;
        self
    }

    /// Replace the node-port addresses (families mixed), e.g. after the
    /// node's addresses changed.
    pub fn set_node_port_addresses(&mut self, addresses: &[IpAddr]) {
        for f in IpFamily::ALL {
            self.families[f.index()].node_port_addresses =
                addresses.iter().filter(|a| IpFamily::of(a) == f).copied().collect();
        }
    }

    /// The settings of one family.
    pub fn family(&self, family: IpFamily) -> &FamilySettings {
        &self.families[family.index()]
    }

    /// Which connections to a cluster IP of `family` are masqueraded: the
    /// same for every service port (`--masquerade-all`, `--cluster-cidr`).
    pub fn cluster_ip_masquerade(&self, family: IpFamily) -> Masquerade {
        match (self.masquerade_all, self.family(family).pod_cidr()) {
            (true, _) => Masquerade::Always,
            (false, Some(cidr)) => Masquerade::OutsideClusterCidr(cidr),
            (false, None) => Masquerade::Never,
        }
    }

    /// Every node-port address, IPv4 first.
    pub fn node_port_addresses(&self) -> impl Iterator<Item = &IpAddr> {
        self.families.iter().flat_map(|f| f.node_port_addresses.iter())
    }
}

impl FamilySettings {
    /// The range that tells pods from other sources, if configured.
    pub fn pod_cidr(&self) -> Option<IpNet> {
        self.cluster_cidrs.first().copied()
    }
}

/// The kinds of frontend a service port can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum FrontendKind {
    /// The cluster IP.
    #[serde(rename = "ClusterIP")]
    ClusterIp,
    /// A node port on one of the node's addresses.
    NodePort,
    /// An address from `spec.externalIPs`.
    #[serde(rename = "ExternalIP")]
    ExternalIp,
    /// A load-balancer ingress IP.
    LoadBalancer,
}

impl FrontendKind {
    /// The Kubernetes spelling (`ClusterIP`, `NodePort`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::ExternalIp => "ExternalIP",
            FrontendKind::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Where a connection comes from, as the rules tell sources apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientClass {
    /// A pod (a source inside the cluster CIDR; without one configured,
    /// pods cannot be told apart and get what external clients get).
    Pod,
    /// A process on this node (host network).
    Node,
    /// Anything else, admitted by the frontend's source ranges if it has any.
    External,
    /// A source outside a load-balancer frontend's `loadBalancerSourceRanges`
    /// (for a frontend without ranges, the same as [`ClientClass::External`]).
    OutsideSourceRanges,
}

impl ClientClass {
    /// The clients a frontend serves (in print order); the fourth class only
    /// matters for load-balancer frontends with source ranges.
    pub const CLIENTS: [ClientClass; 3] = [ClientClass::Pod, ClientClass::Node, ClientClass::External];
    /// Every class.
    pub const ALL: [ClientClass; 4] = [
        ClientClass::Pod,
        ClientClass::Node,
        ClientClass::External,
        ClientClass::OutsideSourceRanges,
    ];
}

/// One of the two endpoint sets of a service port in a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SetKind {
    /// Every usable endpoint in the cluster (topology applied).
    Cluster,
    /// This node's usable endpoints.
    Local,
}

/// Which forwarded connections are masqueraded (SNATed to the node's
/// address), so that replies come back through this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Masquerade {
    /// None: the endpoint sees the client's address.
    Never,
    /// Sources outside this cluster CIDR (off-cluster clients and the node
    /// itself): a static route to the service range may point at any node.
    OutsideClusterCidr(IpNet),
    /// Connections from the node itself: their source is a node address
    /// that would not route back from another node.
    NodeSources,
    /// Every connection (the endpoint may be on another node).
    Always,
}

impl Masquerade {
    /// Whether a connection from `class` is masqueraded.
    pub fn applies_to(self, class: ClientClass) -> bool {
        match self {
            Masquerade::Never => false,
            Masquerade::OutsideClusterCidr(_) => class != ClientClass::Pod,
            Masquerade::NodeSources => class == ClientClass::Node,
            Masquerade::Always => true,
        }
    }
}

/// `externalTrafficPolicy: Local`'s special cases: clients inside the
/// cluster reach the cluster-wide endpoints, as if their connection had gone
/// out to the load balancer and come back (upstream's behaviour).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ShortCircuit {
    /// Pods, recognised by this cluster CIDR, use the cluster set.
    pub pods: Option<IpNet>,
    /// The node itself uses the cluster set.
    pub node: bool,
}

/// Where new connections go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// The service port has no usable endpoint anywhere: refuse at once
    /// (ICMP port unreachable, a TCP reset) rather than let clients time out.
    Reject,
    /// Forward to an endpoint set.
    Serve {
        /// The set for clients without a special case; `None` when endpoints
        /// exist but none this traffic may use (a Local policy without a
        /// local endpoint): dropped.
        set: Option<SetKind>,
        /// Clients that use the cluster set instead.
        short_circuit: ShortCircuit,
    },
}

/// What a frontend does with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Treatment {
    /// Where it goes.
    pub route: Route,
    /// Which forwarded connections are masqueraded.
    pub masquerade: Masquerade,
}

/// What one client class meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// DNAT to an endpoint of `set`.
    Forward {
        /// The endpoint set.
        set: SetKind,
        /// The endpoint sees the node's address instead of the client's.
        masquerade: bool,
    },
    /// Refused at once: no usable endpoint anywhere.
    Reject,
    /// Silently dropped.
    Drop,
}

impl Treatment {
    /// The verdict for a connection from `class` (admitted by any source
    /// ranges; see [`Frontend::verdict`] for those).
    pub fn verdict(&self, class: ClientClass) -> Verdict {
        let (set, short_circuit) = match self.route {
            Route::Reject => return Verdict::Reject,
            Route::Serve { set, short_circuit } => (set, short_circuit),
        };
        let set = match class {
            ClientClass::Pod if short_circuit.pods.is_some() => Some(SetKind::Cluster),
            ClientClass::Node if short_circuit.node => Some(SetKind::Cluster),
            _ => set,
        };
        match set {
            Some(set) => Verdict::Forward {
                set,
                masquerade: self.masquerade.applies_to(class),
            },
            None => Verdict::Drop,
        }
    }

    /// Endpoints exist somewhere but clients without a special case may
    /// use none of them (they are dropped).
    pub fn drops_by_default(&self) -> bool {
        matches!(self.route, Route::Serve { set: None, .. })
    }

    /// The set used by clients without a special case.
    pub fn default_set(&self) -> Option<SetKind> {
        match self.route {
            Route::Serve { set, .. } => set,
            Route::Reject => None,
        }
    }
}

/// One frontend: an address and port clients connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frontend {
    /// What kind.
    pub kind: FrontendKind,
    /// The address.
    pub address: IpAddr,
    /// The port (the node port for node ports).
    pub port: u16,
    /// Only sources in the plan's `source_ranges` are admitted (a
    /// load-balancer IP of a Service with `loadBalancerSourceRanges`).
    pub filtered: bool,
    /// What it does with new connections.
    pub treatment: Treatment,
}

impl Frontend {
    /// The socket address clients connect to.
    pub fn socket(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }

    /// The verdict for `class`, source ranges included: a filtered frontend
    /// drops sources outside its ranges (but still refuses everyone when
    /// there is no endpoint at all).
    pub fn verdict(&self, class: ClientClass) -> Verdict {
        if class == ClientClass::OutsideSourceRanges {
            return match (self.filtered, self.treatment.route) {
                (_, Route::Reject) => Verdict::Reject,
                (true, _) => Verdict::Drop,
                (false, _) => self.treatment.verdict(ClientClass::External),
            };
        }
        self.treatment.verdict(class)
    }
}

/// The frontend plan of one service port in one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendPlan<'a> {
    /// The service port.
    pub key: &'a ServicePortKey,
    /// The family.
    pub family: IpFamily,
    /// The Service type (for display).
    pub service_type: ServiceType,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// The topology mode that chose the cluster set (for display).
    pub topology: TopologyMode,
    /// The node port, when the service port has one. Its rules exist even
    /// when no node address of this family serves node ports (then no
    /// [`FrontendKind::NodePort`] frontend exists in this family).
    pub node_port: Option<u16>,
    /// The cluster-wide endpoint set, when some treatment uses it (never empty then).
    pub cluster: Option<&'a [SocketAddr]>,
    /// This node's endpoint set, when some treatment uses it (never empty then).
    pub local: Option<&'a [SocketAddr]>,
    /// The treatment of the cluster IP (`internalTrafficPolicy`).
    pub internal: Treatment,
    /// The treatment of external frontends (`externalTrafficPolicy`): node
    /// ports, external IPs, load-balancer IPs. `Some` whenever the Service
    /// is reachable from outside in any family, so a mode that keeps
    /// per-port external state has it even without a frontend in this one.
    pub external: Option<Treatment>,
    /// `loadBalancerSourceRanges` of this family (filtered frontends admit only these).
    pub source_ranges: &'a [IpNet],
    /// A node-port address lies in `source_ranges`: connections from the
    /// node to its own load-balancer IP (which carry that IP as their
    /// source, hairpinning through the load balancer) are admitted too.
    pub ranges_admit_node: bool,
    /// Every frontend: the cluster IP first, then node ports (in the order
    /// of the node-port addresses), external IPs, load-balancer IPs.
    pub frontends: Vec<Frontend>,
}

impl<'a> FrontendPlan<'a> {
    /// The plan of `plan` in `family`; `None` when the Service has no
    /// cluster IP in this family (it programs nothing there).
    pub fn new(plan: &'a PortPlan, family: IpFamily, settings: &NodeSettings) -> Option<FrontendPlan<'a>> {
        let info = &*plan.info;
        let fe = info.family(family);
        let cluster_ip = fe.cluster_ip?;
        let fam = plan.family(family);
        let fs = settings.family(family);
        let in_use = |used: bool, set: &'a [SocketAddr]| (used && !set.is_empty()).then_some(set);
        let cluster = in_use(info.uses_cluster_endpoints(), &fam.cluster);
        let local = in_use(info.uses_local_endpoints(), &fam.local);
        let present = |kind: SetKind| match kind {
            SetKind::Cluster => cluster.is_some(),
            SetKind::Local => local.is_some(),
        };
        let serve = |set: SetKind, short_circuit: ShortCircuit| Route::Serve {
            set: present(set).then_some(set),
            short_circuit,
        };
        let pod_cidr = fs.pod_cidr();

        let internal = Treatment {
            route: if !fam.has_any {
                Route::Reject
            } else if info.internal_policy_local {
                serve(SetKind::Local, ShortCircuit::default())
            } else {
                serve(SetKind::Cluster, ShortCircuit::default())
            },
            masquerade: settings.cluster_ip_masquerade(family),
        };
        let external = info.externally_accessible().then(|| {
            if info.external_policy_local {
                // The client address is kept; clients inside the cluster
                // reach every endpoint when the cluster set is in use.
                let short = cluster.is_some();
                Treatment {
                    route: if fam.has_any {
                        serve(
                            SetKind::Local,
                            ShortCircuit {
                                pods: pod_cidr.filter(|_| short),
                                node: short,
                            },
                        )
                    } else {
                        Route::Reject
                    },
                    masquerade: Masquerade::NodeSources,
                }
            } else {
                // Cluster policy may cross nodes: always masquerade.
                Treatment {
                    route: if fam.has_any {
                        serve(SetKind::Cluster, ShortCircuit::default())
                    } else {
                        Route::Reject
                    },
                    masquerade: Masquerade::Always,
                }
            }
        });

        let mut frontends = vec![Frontend {
            kind: FrontendKind::ClusterIp,
            address: cluster_ip,
            port: info.port,
            filtered: false,
            treatment: internal,
        }];
        if let Some(ext) = external {
            let at = |kind, address, port, filtered| Frontend {
                kind,
                address,
                port,
                filtered,
                treatment: ext,
            };
            if let Some(np) = info.node_port {
                frontends.extend(
                    fs.node_port_addresses
                        .iter()
                        .filter(|a| IpFamily::of(a) == family)
                        .map(|a| at(FrontendKind::NodePort, *a, np, false)),
                );
                if settings.localhost_node_ports && family == IpFamily::V4 {
                    frontends.push(at(FrontendKind::NodePort, IpAddr::V4(Ipv4Addr::LOCALHOST), np, false));
                }
            }
            let filtered = !fe.source_ranges.is_empty();
            frontends.extend(
                fe.external_ips
                    .iter()
                    .map(|ip| at(FrontendKind::ExternalIp, *ip, info.port, false)),
            );
            frontends.extend(
                fe.load_balancer_ips
                    .iter()
                    .map(|ip| at(FrontendKind::LoadBalancer, *ip, info.port, filtered)),
            );
        }
        Some(FrontendPlan {
            key: &info.key,
            family,
            service_type: info.service_type,
            affinity_timeout: info.affinity_timeout_secs,
            topology: fam.topology,
            node_port: info.node_port,
            cluster,
            local,
            internal,
            external,
            source_ranges: &fe.source_ranges,
            ranges_admit_node: fs
                .node_port_addresses
                .iter()
                .any(|a| fe.source_ranges.iter().any(|r| r.contains(a))),
            frontends,
        })
    }

    /// The L4 protocol.
    pub fn protocol(&self) -> Protocol {
        self.key.protocol
    }

    /// The endpoints of a set (empty when the set is not in use).
    pub fn endpoints(&self, set: SetKind) -> &'a [SocketAddr] {
        match set {
            SetKind::Cluster => self.cluster,
            SetKind::Local => self.local,
        }
        .unwrap_or(&[])
    }

    /// The endpoints a treatment's default clients reach (empty for reject/drop).
    pub fn default_endpoints(&self, treatment: &Treatment) -> &'a [SocketAddr] {
        treatment.default_set().map(|s| self.endpoints(s)).unwrap_or(&[])
    }

    /// Every endpoint of the sets in use, sorted, each once.
    pub fn endpoints_in_use(&self) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> = self.endpoints(SetKind::Cluster).to_vec();
        all.extend_from_slice(self.endpoints(SetKind::Local));
        all.sort();
        all.dedup();
        all
    }

    /// The frontends of one kind.
    pub fn frontends_of(&self, kind: FrontendKind) -> impl Iterator<Item = &Frontend> {
        self.frontends.iter().filter(move |f| f.kind == kind)
    }

    /// `loadBalancerSourceRanges` admits `source` (no ranges admit everything).
    pub fn source_admitted(&self, source: IpAddr) -> bool {
        self.source_ranges.is_empty() || self.source_ranges.iter().any(|r| r.contains(&source))
    }
}

#[cfg(test)]
mod tests;
