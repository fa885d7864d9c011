//! Which endpoints serve whom. Pure functions over the model, following
//! kube-proxy's `CategorizeEndpoints`: per service port and family, the
//! cluster-wide and the local endpoint set (readiness, terminating
//! fallback, topology). What each frontend does with them, per client, is
//! the frontend plan's (`dataplane::frontends`), built from this.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::model::{Endpoint, IpFamily, Name, ServicePortInfo};

/// What the policy needs to know about the node it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeContext {
    /// This node's name (endpoints with this `nodeName` are local).
    pub node_name: Name,
    /// This node's `topology.kubernetes.io/zone` label.
    pub zone: Option<Name>,
}

impl NodeContext {
    /// A node without a zone label.
    pub fn new(node_name: &str) -> NodeContext {
        NodeContext {
            node_name: Name::from(node_name),
            zone: None,
        }
    }
}

/// Which hints decided the cluster endpoint set (upstream's topology mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum TopologyMode {
    /// No topology filtering: hints missing, incomplete, or not covering this node.
    #[default]
    None,
    /// Every ready endpoint has zone hints and some are for this node's zone.
    PreferSameZone,
    /// Every ready endpoint has node hints and some are for this node.
    PreferSameNode,
}

/// The usable endpoints of one service port in one IP family: what a
/// dataplane programs. Compared as a whole to decide whether rules changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FamilyPlan {
    /// Endpoints for Cluster-policy traffic (topology applied, terminating
    /// fallback applied), sorted. Empty when the Service never uses them.
    pub cluster: Vec<SocketAddr>,
    /// This node's endpoints for Local-policy traffic (ready ones, else
    /// serving-terminating ones), sorted. Empty when the Service never uses them.
    pub local: Vec<SocketAddr>,
    /// Some usable endpoint exists anywhere in the cluster. When false,
    /// every frontend rejects (ICMP unreachable / TCP RST) rather than drops.
    pub has_any: bool,
    /// The topology mode that chose `cluster`.
    pub topology: TopologyMode,
}

/// Everything that decides the rules of one service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortPlan {
    /// The service port.
    pub info: Arc<ServicePortInfo>,
    /// Per family: `[IPv4, IPv6]`. A family the Service has no cluster IP in
    /// has an empty plan and programs nothing.
    pub families: [FamilyPlan; 2],
}

impl PortPlan {
    /// The plan of one family.
    pub fn family(&self, family: IpFamily) -> &FamilyPlan {
        &self.families[family.index()]
    }
}

impl FamilyPlan {
    /// Endpoints for traffic subject to `internalTrafficPolicy` (cluster IPs).
    pub fn internal<'a>(&'a self, info: &ServicePortInfo) -> &'a [SocketAddr] {
        if info.internal_policy_local {
            &self.local
        } else {
            &self.cluster
        }
    }

    /// Endpoints for traffic subject to `externalTrafficPolicy` (node ports,
    /// external IPs, load-balancer IPs).
    pub fn external<'a>(&'a self, info: &ServicePortInfo) -> &'a [SocketAddr] {
        if info.external_local() {
            &self.local
        } else {
            &self.cluster
        }
    }
}

/// Build the plan of a service port from its endpoints (all families mixed,
/// sorted by address as the table keeps them).
pub fn plan(info: &Arc<ServicePortInfo>, endpoints: &[Endpoint], node: &NodeContext) -> PortPlan {
    // Sorted by SocketAddr, so every IPv4 endpoint precedes every IPv6 one.
    let split = endpoints.partition_point(|e| e.family() == IpFamily::V4);
    let (v4, v6) = endpoints.split_at(split);
    let plan_of = |family: IpFamily, eps: &[Endpoint]| {
        if info.has_family(family) {
            categorize(info, eps, node)
        } else {
            FamilyPlan::default()
        }
    };
    PortPlan {
        info: Arc::clone(info),
        families: [plan_of(IpFamily::V4, v4), plan_of(IpFamily::V6, v6)],
    }
}

/// Split one family's endpoints into the cluster and local sets, as
/// upstream's `CategorizeEndpoints`: ready endpoints; if there are none,
/// serving-terminating ones (independently for cluster and local); topology
/// hints narrow the cluster set only when they cover this node.
pub fn categorize(info: &ServicePortInfo, endpoints: &[Endpoint], node: &NodeContext) -> FamilyPlan {
    let mut plan = FamilyPlan::default();
    if endpoints.is_empty() {
        return plan;
    }
    if info.uses_cluster_endpoints() {
        let mode = topology_mode(endpoints, node);
        plan.topology = mode;
        plan.cluster = addrs(endpoints, |e| e.ready && available_for_topology(e, mode, node));
        if plan.cluster.is_empty() {
            // No ready endpoint anywhere (topology already fell back when none
            // was ready for this node): use the ones still serving while they
            // terminate, so connections drain instead of failing.
            plan.cluster = addrs(endpoints, Endpoint::serving_terminating);
        }
        plan.has_any = !plan.cluster.is_empty();
    }
    if !info.uses_local_endpoints() {
        return plan;
    }
    let any_usable = endpoints.iter().any(|e| e.ready || e.serving_terminating());
    plan.has_any |= any_usable;
    plan.local = addrs(endpoints, |e| e.local && e.ready);
    if plan.local.is_empty() {
        plan.local = addrs(endpoints, |e| e.local && e.serving_terminating());
    }
    plan
}

fn addrs(endpoints: &[Endpoint], keep: impl Fn(&Endpoint) -> bool) -> Vec<SocketAddr> {
    // The table keeps endpoints sorted and unique, so the result is too.
    endpoints.iter().filter(|e| keep(e)).map(|e| e.addr).collect()
}

/// Upstream's `topologyModeFromHints`: node hints win when every ready
/// endpoint has one and one is for this node; then zone hints likewise;
/// otherwise no filtering. Only ready endpoints are looked at.
pub fn topology_mode(endpoints: &[Endpoint], node: &NodeContext) -> TopologyMode {
    let mut any_ready = false;
    let (mut all_node_hints, mut for_node) = (true, false);
    let (mut all_zone_hints, mut for_zone) = (true, false);
    for e in endpoints.iter().filter(|e| e.ready) {
        any_ready = true;
        if e.node_hints.is_empty() {
            all_node_hints = false;
        } else if e.node_hints.contains(&node.node_name) {
            for_node = true;
        }
        if e.zone_hints.is_empty() {
            all_zone_hints = false;
        } else if node.zone.as_ref().is_some_and(|z| e.zone_hints.contains(z)) {
            for_zone = true;
        }
    }
    if !any_ready {
        TopologyMode::None
    } else if all_node_hints && for_node {
        TopologyMode::PreferSameNode
    } else if all_zone_hints && for_zone {
        TopologyMode::PreferSameZone
    } else {
        TopologyMode::None
    }
}

fn available_for_topology(e: &Endpoint, mode: TopologyMode, node: &NodeContext) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::PreferSameNode => e.node_hints.contains(&node.node_name),
        TopologyMode::PreferSameZone => node.zone.as_ref().is_some_and(|z| e.zone_hints.contains(z)),
    }
}

#[cfg(test)]
mod tests;
