//! Named tests of the policy: readiness, terminating fallback, traffic
//! policies, topology and its fallbacks. What each client meets through
//! each frontend is tested on the frontend plan (`dataplane::frontends`).

use std::net::SocketAddr;

use serde_json::json;

use super::*;
use crate::testing::*;
use crate::track::Tracker;

const NODE: &str = "node-a";

/// Build the plan of the single port of a Service `svc` with one IPv4 slice.
fn plan_for(spec: serde_json::Value, endpoints: serde_json::Value, zone: Option<&str>) -> PortPlan {
    let mut t = Tracker::new(NodeContext::new(NODE));
    if let Some(z) = zone {
        t.set_node(Some(&crate::model::NodeInfo {
            zone: Some(z.into()),
            ..Default::default()
        }));
    }
    let mut spec_full =
        json!({"type": "NodePort", "clusterIP": "10.96.0.1", "ports": [{"name": "p", "port": 80, "nodePort": 30080}]});
    for (k, v) in spec.as_object().expect("object") {
        spec_full[k] = v.clone();
    }
    t.apply_service(service("ns", "svc", spec_full));
    t.apply_slice(slice(
        "ns",
        "svc-1",
        "svc",
        "IPv4",
        json!([port("p", 8080, "TCP")]),
        endpoints,
    ));
    t.table().plans().next().expect("one plan").1.clone()
}

fn a(ip: &str) -> SocketAddr {
    format!("{ip}:8080").parse().unwrap()
}

fn v4(p: &PortPlan) -> &FamilyPlan {
    p.family(IpFamily::V4)
}

#[test]
fn only_ready_endpoints_serve() {
    let p = plan_for(
        json!({}),
        json!([
            ep("10.0.1.1", "node-a"),
            ep_cond("10.0.1.2", "node-b", false, false, false),
            ep_cond("10.0.1.3", "node-b", false, true, true)
        ]),
        None,
    );
    assert_eq!(v4(&p).cluster, [a("10.0.1.1")]);
    assert!(v4(&p).has_any);
}

#[test]
fn terminating_fallback_when_no_endpoint_is_ready() {
    let p = plan_for(
        json!({}),
        json!([
            ep_cond("10.0.1.1", "node-a", false, true, true),
            ep_cond("10.0.1.2", "node-b", false, false, true),
            ep_cond("10.0.1.3", "node-b", false, true, false)
        ]),
        None,
    );
    // Only serving *and* terminating endpoints qualify.
    assert_eq!(v4(&p).cluster, [a("10.0.1.1")]);
    assert!(v4(&p).has_any);
}

#[test]
fn internal_traffic_policy_local_uses_local_endpoints() {
    let p = plan_for(
        json!({"internalTrafficPolicy": "Local"}),
        json!([ep("10.0.1.1", "node-a"), ep("10.0.1.2", "node-b")]),
        None,
    );
    assert_eq!(v4(&p).local, [a("10.0.1.1")]);
    // The node port (externalTrafficPolicy Cluster) still uses every endpoint.
    assert_eq!(v4(&p).cluster.len(), 2);
    // The verdicts: `dataplane::frontends::tests`.
}

#[test]
fn internal_traffic_policy_local_without_local_endpoint_drops() {
    let p = plan_for(
        json!({"type": "ClusterIP", "internalTrafficPolicy": "Local", "ports": [{"name": "p", "port": 80}]}),
        json!([ep("10.0.1.2", "node-b")]),
        None,
    );
    assert!(v4(&p).local.is_empty());
    assert!(v4(&p).has_any, "endpoints exist elsewhere: drop, not reject");
    // The verdicts: `dataplane::frontends::tests`.
}

#[test]
fn local_terminating_fallback_is_independent_of_cluster() {
    let p = plan_for(
        json!({"type": "NodePort", "externalTrafficPolicy": "Local"}),
        json!([
            ep_cond("10.0.1.1", "node-a", false, true, true),
            ep("10.0.1.2", "node-b")
        ]),
        None,
    );
    assert_eq!(v4(&p).cluster, [a("10.0.1.2")], "cluster has a ready endpoint");
    assert_eq!(
        v4(&p).local,
        [a("10.0.1.1")],
        "local falls back to its serving-terminating endpoint"
    );
}

#[test]
fn topology_prefer_same_zone_uses_hints_for_this_zone() {
    let eps = json!([
        with_hints(ep("10.0.1.1", "node-a"), &["zone-a"], &[]),
        with_hints(ep("10.0.1.2", "node-b"), &["zone-b"], &[]),
        with_hints(ep("10.0.1.3", "node-c"), &["zone-a"], &[]),
    ]);
    let p = plan_for(json!({"trafficDistribution": "PreferClose"}), eps, Some("zone-a"));
    assert_eq!(v4(&p).topology, TopologyMode::PreferSameZone);
    assert_eq!(v4(&p).cluster, [a("10.0.1.1"), a("10.0.1.3")]);
}

#[test]
fn topology_falls_back_when_a_ready_endpoint_lacks_hints() {
    let eps = json!([
        with_hints(ep("10.0.1.1", "node-a"), &["zone-a"], &[]),
        ep("10.0.1.2", "node-b")
    ]);
    let p = plan_for(json!({}), eps, Some("zone-a"));
    assert_eq!(v4(&p).topology, TopologyMode::None);
    assert_eq!(v4(&p).cluster.len(), 2);
}

#[test]
fn topology_falls_back_when_hints_do_not_cover_this_zone_or_node_has_no_zone() {
    let eps = json!([
        with_hints(ep("10.0.1.1", "node-b"), &["zone-b"], &[]),
        with_hints(ep("10.0.1.2", "node-c"), &["zone-c"], &[])
    ]);
    let p = plan_for(json!({}), eps.clone(), Some("zone-a"));
    assert_eq!((v4(&p).topology, v4(&p).cluster.len()), (TopologyMode::None, 2));
    let p = plan_for(json!({}), eps, None);
    assert_eq!((v4(&p).topology, v4(&p).cluster.len()), (TopologyMode::None, 2));
}

#[test]
fn topology_ignores_hints_of_unready_endpoints() {
    // The unready endpoint has no hints; only ready ones are looked at.
    let eps = json!([
        with_hints(ep("10.0.1.1", "node-a"), &["zone-a"], &[]),
        with_hints(ep("10.0.1.2", "node-b"), &["zone-b"], &[]),
        ep_cond("10.0.1.3", "node-b", false, false, false)
    ]);
    let p = plan_for(json!({}), eps, Some("zone-a"));
    assert_eq!(v4(&p).cluster, [a("10.0.1.1")]);
}

#[test]
fn topology_prefer_same_node_uses_node_hints() {
    let eps = json!([
        with_hints(ep("10.0.1.1", "node-a"), &["zone-a"], &["node-a"]),
        with_hints(ep("10.0.1.2", "node-b"), &["zone-a"], &["node-b"]),
    ]);
    let p = plan_for(json!({"trafficDistribution": "PreferSameNode"}), eps, Some("zone-a"));
    assert_eq!(v4(&p).topology, TopologyMode::PreferSameNode);
    assert_eq!(v4(&p).cluster, [a("10.0.1.1")]);
}

#[test]
fn topology_prefer_same_node_falls_back_to_zone_then_all() {
    // Node hints do not cover node-a, zone hints do.
    let eps = json!([
        with_hints(ep("10.0.1.2", "node-b"), &["zone-a"], &["node-b"]),
        with_hints(ep("10.0.1.3", "node-c"), &["zone-c"], &["node-c"]),
    ]);
    let p = plan_for(json!({}), eps, Some("zone-a"));
    assert_eq!(
        (v4(&p).topology, v4(&p).cluster.clone()),
        (TopologyMode::PreferSameZone, vec![a("10.0.1.2")])
    );
}

#[test]
fn topology_does_not_filter_local_endpoints() {
    let eps = json!([
        with_hints(ep("10.0.1.1", "node-a"), &["zone-b"], &[]),
        with_hints(ep("10.0.1.2", "node-b"), &["zone-a"], &[])
    ]);
    let p = plan_for(
        json!({"type": "NodePort", "externalTrafficPolicy": "Local"}),
        eps,
        Some("zone-a"),
    );
    assert_eq!(v4(&p).cluster, [a("10.0.1.2")]);
    assert_eq!(v4(&p).local, [a("10.0.1.1")]);
}
