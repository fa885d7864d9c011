//! The frontend plan: a table of verdicts per policy combination, the
//! route cases the policy tests used to check, and a property test that the
//! plan's verdicts equal the per-client answers of the former
//! `policy::route` (kept below as the oracle) for random service ports.

use std::net::SocketAddr;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::model::{Endpoint, FamilyFrontends, Name, NodeInfo, ServicePortInfo};
use crate::policy::{self, FamilyPlan, NodeContext};
use crate::testing::*;
use crate::track::Tracker;

// === The oracle: `policy::route` as it was before the frontend plan ===

mod oracle {
    use super::*;

    /// Masquerade settings that shaped routes.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct MasqueradeConfig {
        pub masquerade_all: bool,
        pub detect_local: bool,
    }

    /// The old resolved verdict.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Verdict {
        Forward {
            endpoints: Vec<SocketAddr>,
            masquerade: bool,
        },
        Reject,
        Drop,
    }

    /// `policy::route`, verbatim but for the names.
    pub fn route(
        plan: &PortPlan,
        family: IpFamily,
        frontend: FrontendKind,
        client: ClientClass,
        masq: MasqueradeConfig,
        source_allowed: bool,
    ) -> Verdict {
        let info = &plan.info;
        let fam = plan.family(family);
        if !fam.has_any {
            return Verdict::Reject;
        }
        if frontend == FrontendKind::LoadBalancer && !source_allowed {
            return Verdict::Drop;
        }
        let forward = |endpoints: &[SocketAddr], masquerade: bool| {
            if endpoints.is_empty() {
                Verdict::Drop
            } else {
                Verdict::Forward {
                    endpoints: endpoints.to_vec(),
                    masquerade,
                }
            }
        };
        if frontend == FrontendKind::ClusterIp {
            let masquerade = masq.masquerade_all || (masq.detect_local && client != ClientClass::Pod);
            return forward(fam.internal(info), masquerade);
        }
        if !info.external_local() {
            return forward(&fam.cluster, true);
        }
        let short_circuit = info.uses_cluster_endpoints() && !fam.cluster.is_empty();
        match client {
            ClientClass::Pod if masq.detect_local && short_circuit => forward(&fam.cluster, false),
            ClientClass::Node if short_circuit => forward(&fam.cluster, true),
            ClientClass::Node => forward(&fam.local, true),
            _ => forward(&fam.local, false),
        }
    }
}

/// A verdict with its set resolved to endpoints, comparable with the oracle's.
fn resolve(plan: &FrontendPlan<'_>, v: Verdict) -> oracle::Verdict {
    match v {
        Verdict::Forward { set, masquerade } => oracle::Verdict::Forward {
            endpoints: plan.endpoints(set).to_vec(),
            masquerade,
        },
        Verdict::Reject => oracle::Verdict::Reject,
        Verdict::Drop => oracle::Verdict::Drop,
    }
}

fn settings(cidr: bool, masquerade_all: bool) -> NodeSettings {
    let cidrs: Vec<IpNet> = if cidr {
        vec!["10.244.0.0/16".parse().unwrap()]
    } else {
        vec![]
    };
    NodeSettings::new(&cidrs, masquerade_all, &["192.168.50.10".parse().unwrap()])
}

// === Shorthands ===

const NODE: &str = "node-a";

/// The plan of the single port of Service `svc` with one IPv4 slice, as the
/// tracker builds it.
fn plan_for(spec: serde_json::Value, endpoints: serde_json::Value, zone: Option<&str>) -> PortPlan {
    let mut t = Tracker::new(NodeContext::new(NODE));
    if let Some(z) = zone {
        t.set_node(Some(&NodeInfo {
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

/// The resolved verdict of the first frontend of `kind` for `class`.
fn verdict_with(p: &PortPlan, s: &NodeSettings, kind: FrontendKind, class: ClientClass) -> oracle::Verdict {
    let fp = FrontendPlan::new(p, IpFamily::V4, s).expect("IPv4 plan");
    let fe = fp
        .frontends_of(kind)
        .next()
        .unwrap_or_else(|| panic!("no {kind:?} frontend"));
    resolve(&fp, fe.verdict(class))
}

fn verdict(p: &PortPlan, kind: FrontendKind, class: ClientClass) -> oracle::Verdict {
    verdict_with(p, &settings(true, false), kind, class)
}

fn fwd(endpoints: &[&str], masquerade: bool) -> oracle::Verdict {
    oracle::Verdict::Forward {
        endpoints: endpoints.iter().map(|e| a(e)).collect(),
        masquerade,
    }
}

// === The route cases (formerly in policy's tests) ===

#[test]
fn no_usable_endpoint_rejects() {
    let p = plan_for(
        json!({}),
        json!([ep_cond("10.0.1.1", "node-a", false, false, true)]),
        None,
    );
    assert!(!p.family(IpFamily::V4).has_any);
    for fe in [FrontendKind::ClusterIp, FrontendKind::NodePort] {
        for c in ClientClass::CLIENTS {
            assert_eq!(verdict(&p, fe, c), oracle::Verdict::Reject);
        }
    }
    let empty = plan_for(json!({}), json!([]), None);
    assert_eq!(
        verdict(&empty, FrontendKind::ClusterIp, ClientClass::Pod),
        oracle::Verdict::Reject
    );
}

#[test]
fn internal_traffic_policy_local_uses_local_endpoints() {
    let p = plan_for(
        json!({"internalTrafficPolicy": "Local"}),
        json!([ep("10.0.1.1", "node-a"), ep("10.0.1.2", "node-b")]),
        None,
    );
    assert_eq!(
        verdict(&p, FrontendKind::ClusterIp, ClientClass::Pod),
        fwd(&["10.0.1.1"], false)
    );
    // The node port (externalTrafficPolicy Cluster) still uses every endpoint.
    assert_eq!(
        verdict(&p, FrontendKind::NodePort, ClientClass::External),
        fwd(&["10.0.1.1", "10.0.1.2"], true)
    );
}

#[test]
fn internal_traffic_policy_local_without_local_endpoint_drops() {
    let p = plan_for(
        json!({"type": "ClusterIP", "internalTrafficPolicy": "Local", "ports": [{"name": "p", "port": 80}]}),
        json!([ep("10.0.1.2", "node-b")]),
        None,
    );
    assert!(
        p.family(IpFamily::V4).has_any,
        "endpoints exist elsewhere: drop, not reject"
    );
    assert!(p.family(IpFamily::V4).local.is_empty());
    assert_eq!(
        verdict(&p, FrontendKind::ClusterIp, ClientClass::Pod),
        oracle::Verdict::Drop
    );
    assert_eq!(
        verdict(&p, FrontendKind::ClusterIp, ClientClass::Node),
        oracle::Verdict::Drop
    );
}

#[test]
fn external_traffic_policy_local_keeps_client_address() {
    let p = plan_for(
        json!({"type": "NodePort", "externalTrafficPolicy": "Local"}),
        json!([ep("10.0.1.1", "node-a"), ep("10.0.1.2", "node-b")]),
        None,
    );
    assert_eq!(
        verdict(&p, FrontendKind::NodePort, ClientClass::External),
        fwd(&["10.0.1.1"], false)
    );
    // Pods short-circuit to every endpoint, unmasqueraded; the node itself is masqueraded.
    assert_eq!(
        verdict(&p, FrontendKind::NodePort, ClientClass::Pod),
        fwd(&["10.0.1.1", "10.0.1.2"], false)
    );
    assert_eq!(
        verdict(&p, FrontendKind::NodePort, ClientClass::Node),
        fwd(&["10.0.1.1", "10.0.1.2"], true)
    );
    // Without --cluster-cidr, pods cannot be told apart: they get the external treatment.
    assert_eq!(
        verdict_with(&p, &settings(false, false), FrontendKind::NodePort, ClientClass::Pod),
        fwd(&["10.0.1.1"], false)
    );
}

#[test]
fn external_traffic_policy_local_without_local_endpoint_drops_external_traffic() {
    let p = plan_for(
        json!({"type": "NodePort", "externalTrafficPolicy": "Local"}),
        json!([ep("10.0.1.2", "node-b")]),
        None,
    );
    assert_eq!(
        verdict(&p, FrontendKind::NodePort, ClientClass::External),
        oracle::Verdict::Drop
    );
    assert_eq!(
        verdict(&p, FrontendKind::NodePort, ClientClass::Pod),
        fwd(&["10.0.1.2"], false)
    );
    // Cluster IP traffic is unaffected by the external policy.
    assert!(matches!(
        verdict(&p, FrontendKind::ClusterIp, ClientClass::Pod),
        oracle::Verdict::Forward { .. }
    ));
}

#[test]
fn both_policies_local_still_short_circuit_pods_and_the_node_to_the_cluster_set() {
    // Upstream's UsesClusterEndpoints is true for every externally reachable
    // port: the externalTrafficPolicy=Local short-circuit needs the cluster
    // set even when internalTrafficPolicy is Local too (found by the
    // differential against kube-proxy: gen-0086 and gen-0236).
    let p = plan_for(
        json!({"type": "NodePort", "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local"}),
        json!([ep("10.0.1.2", "node-b")]),
        None,
    );
    assert_eq!(
        verdict(&p, FrontendKind::NodePort, ClientClass::External),
        oracle::Verdict::Drop
    );
    assert_eq!(
        verdict(&p, FrontendKind::NodePort, ClientClass::Pod),
        fwd(&["10.0.1.2"], false)
    );
    assert_eq!(
        verdict(&p, FrontendKind::NodePort, ClientClass::Node),
        fwd(&["10.0.1.2"], true)
    );
    // The cluster IP follows internalTrafficPolicy=Local: no local endpoint, drop.
    assert_eq!(
        verdict(&p, FrontendKind::ClusterIp, ClientClass::Pod),
        oracle::Verdict::Drop
    );
}

#[test]
fn external_traffic_policy_cluster_masquerades_everything() {
    let p = plan_for(
        json!({"type": "NodePort"}),
        json!([ep("10.0.1.1", "node-a"), ep("10.0.1.2", "node-b")]),
        None,
    );
    for c in ClientClass::CLIENTS {
        assert_eq!(
            verdict(&p, FrontendKind::NodePort, c),
            fwd(&["10.0.1.1", "10.0.1.2"], true)
        );
    }
}

#[test]
fn cluster_ip_masquerade_follows_cluster_cidr_and_masquerade_all() {
    let p = plan_for(json!({}), json!([ep("10.0.1.1", "node-a")]), None);
    let f = |m| fwd(&["10.0.1.1"], m);
    assert_eq!(verdict(&p, FrontendKind::ClusterIp, ClientClass::Pod), f(false));
    assert_eq!(verdict(&p, FrontendKind::ClusterIp, ClientClass::External), f(true));
    assert_eq!(
        verdict_with(&p, &settings(false, true), FrontendKind::ClusterIp, ClientClass::Pod),
        f(true)
    );
    assert_eq!(
        verdict_with(
            &p,
            &settings(false, false),
            FrontendKind::ClusterIp,
            ClientClass::External
        ),
        f(false)
    );
}

#[test]
fn load_balancer_source_ranges_drop_other_sources() {
    let p = plan_for(
        json!({"type": "LoadBalancer", "loadBalancerSourceRanges": ["198.51.100.0/24"]}),
        json!([ep("10.0.1.1", "node-a")]),
        None,
    );
    // The test Service has no ingress yet: give it one.
    let mut info = (*p.info).clone();
    info.frontends[0].load_balancer_ips = vec!["203.0.113.1".parse().unwrap()];
    let p = PortPlan {
        info: Arc::new(info),
        ..p
    };
    let s = settings(true, false);
    let fp = FrontendPlan::new(&p, IpFamily::V4, &s).unwrap();
    assert!(fp.source_admitted("198.51.100.7".parse().unwrap()));
    assert!(!fp.source_admitted("203.0.113.1".parse().unwrap()));
    assert_eq!(
        verdict(&p, FrontendKind::LoadBalancer, ClientClass::OutsideSourceRanges),
        oracle::Verdict::Drop
    );
    assert!(matches!(
        verdict(&p, FrontendKind::LoadBalancer, ClientClass::External),
        oracle::Verdict::Forward { .. }
    ));
    // A frontend without ranges admits everyone.
    assert_eq!(
        verdict(&p, FrontendKind::NodePort, ClientClass::OutsideSourceRanges),
        verdict(&p, FrontendKind::NodePort, ClientClass::External)
    );
}

// === A table of verdicts per policy combination ===

/// One case: policies, where the endpoints are, whether pods can be told
/// apart; then the verdicts of the cluster IP and of a node port for pod,
/// node and external clients, each as `SET+` / `SET-` (forward to the
/// cluster (C) or local (L) set, masqueraded or not), `D` (drop), `R`
/// (reject).
struct Case {
    itp_local: bool,
    etp_local: bool,
    local_ep: bool,
    remote_ep: bool,
    cidr: bool,
    cluster_ip: [&'static str; 3],
    node_port: [&'static str; 3],
}

const fn case(
    itp_local: bool,
    etp_local: bool,
    local_ep: bool,
    remote_ep: bool,
    cidr: bool,
    cluster_ip: [&'static str; 3],
    node_port: [&'static str; 3],
) -> Case {
    Case {
        itp_local,
        etp_local,
        local_ep,
        remote_ep,
        cidr,
        cluster_ip,
        node_port,
    }
}

#[rustfmt::skip]
const CASES: &[Case] = &[
    //    ITP L  ETP L  local  remote cidr   cluster IP (pod, node, ext)  node port (pod, node, ext)
    case(false, false, false, false, true,  ["R", "R", "R"],       ["R", "R", "R"]),
    case(false, false, true,  true,  true,  ["C-", "C+", "C+"],    ["C+", "C+", "C+"]),
    case(false, false, true,  true,  false, ["C-", "C-", "C-"],    ["C+", "C+", "C+"]),
    case(false, false, false, true,  true,  ["C-", "C+", "C+"],    ["C+", "C+", "C+"]),
    case(true,  false, true,  true,  true,  ["L-", "L+", "L+"],    ["C+", "C+", "C+"]),
    case(true,  false, false, true,  true,  ["D", "D", "D"],       ["C+", "C+", "C+"]),
    case(true,  false, false, false, true,  ["R", "R", "R"],       ["R", "R", "R"]),
    case(false, true,  true,  true,  true,  ["C-", "C+", "C+"],    ["C-", "C+", "L-"]),
    case(false, true,  true,  true,  false, ["C-", "C-", "C-"],    ["L-", "C+", "L-"]),
    case(false, true,  false, true,  true,  ["C-", "C+", "C+"],    ["C-", "C+", "D"]),
    case(false, true,  false, true,  false, ["C-", "C-", "C-"],    ["D", "C+", "D"]),
    case(false, true,  true,  false, true,  ["C-", "C+", "C+"],    ["C-", "C+", "L-"]),
    // Both Local: the node port's pod and node sources still short-circuit
    // to the cluster set (upstream's UsesClusterEndpoints).
    case(true,  true,  true,  true,  true,  ["L-", "L+", "L+"],    ["C-", "C+", "L-"]),
    case(true,  true,  false, true,  true,  ["D", "D", "D"],       ["C-", "C+", "D"]),
    case(true,  true,  false, true,  false, ["D", "D", "D"],       ["D", "C+", "D"]),
    case(true,  true,  false, false, true,  ["R", "R", "R"],       ["R", "R", "R"]),
];

fn code(fp: &FrontendPlan<'_>, v: Verdict) -> String {
    match v {
        Verdict::Forward { set, masquerade } => {
            assert!(!fp.endpoints(set).is_empty(), "forward to an empty set");
            format!(
                "{}{}",
                match set {
                    SetKind::Cluster => "C",
                    SetKind::Local => "L",
                },
                if masquerade { "+" } else { "-" }
            )
        }
        Verdict::Reject => "R".into(),
        Verdict::Drop => "D".into(),
    }
}

#[test]
fn verdict_table_per_policy_combination() {
    for (i, c) in CASES.iter().enumerate() {
        let mut eps = Vec::new();
        if c.local_ep {
            eps.push(ep("10.0.1.1", "node-a"));
        }
        if c.remote_ep {
            eps.push(ep("10.0.2.1", "node-b"));
        }
        let p = plan_for(
            json!({
                "type": "NodePort",
                "internalTrafficPolicy": if c.itp_local { "Local" } else { "Cluster" },
                "externalTrafficPolicy": if c.etp_local { "Local" } else { "Cluster" },
            }),
            json!(eps),
            None,
        );
        let s = settings(c.cidr, false);
        let fp = FrontendPlan::new(&p, IpFamily::V4, &s).unwrap();
        let codes = |kind| -> Vec<String> {
            let fe = fp.frontends_of(kind).next().unwrap();
            ClientClass::CLIENTS
                .iter()
                .map(|&cl| code(&fp, fe.verdict(cl)))
                .collect()
        };
        assert_eq!(codes(FrontendKind::ClusterIp), c.cluster_ip, "case {i}: cluster IP");
        assert_eq!(codes(FrontendKind::NodePort), c.node_port, "case {i}: node port");
    }
}

#[test]
fn sets_in_use_and_frontend_order() {
    let p = plan_for(
        json!({"type": "NodePort", "externalTrafficPolicy": "Local", "externalIPs": ["198.51.100.1"]}),
        json!([ep("10.0.1.1", "node-a"), ep("10.0.2.1", "node-b")]),
        None,
    );
    let s = NodeSettings::new(
        &["10.244.0.0/16".parse().unwrap()],
        false,
        &["192.168.50.10".parse().unwrap(), "10.0.0.5".parse().unwrap()],
    );
    let fp = FrontendPlan::new(&p, IpFamily::V4, &s).unwrap();
    assert_eq!(fp.cluster, Some(&[a("10.0.1.1"), a("10.0.2.1")][..]));
    assert_eq!(fp.local, Some(&[a("10.0.1.1")][..]));
    let kinds: Vec<(FrontendKind, String)> = fp.frontends.iter().map(|f| (f.kind, f.socket().to_string())).collect();
    assert_eq!(
        kinds,
        [
            (FrontendKind::ClusterIp, "10.96.0.1:80".to_string()),
            (FrontendKind::NodePort, "192.168.50.10:30080".into()),
            (FrontendKind::NodePort, "10.0.0.5:30080".into()),
            (FrontendKind::ExternalIp, "198.51.100.1:80".into()),
        ]
    );
    assert_eq!(fp.endpoints_in_use(), [a("10.0.1.1"), a("10.0.2.1")]);
    // No IPv6 cluster IP: nothing in that family.
    assert!(FrontendPlan::new(&p, IpFamily::V6, &s).is_none());
    // Sets not used by any treatment are absent even when they have endpoints.
    let p = plan_for(
        json!({"ports": [{"name": "p", "port": 80}]}),
        json!([ep("10.0.1.1", "node-a")]),
        None,
    );
    let fp = FrontendPlan::new(&p, IpFamily::V4, &s).unwrap();
    assert!(fp.cluster.is_some() && fp.local.is_none() && fp.external.is_none());
}

#[test]
fn localhost_node_ports_add_one_ipv4_loopback_frontend() {
    let p = plan_for(json!({"type": "NodePort"}), json!([ep("10.0.1.1", "node-a")]), None);
    let s = settings(true, false).with_localhost_node_ports(true);
    let fp = FrontendPlan::new(&p, IpFamily::V4, &s).unwrap();
    let node_ports: Vec<String> = fp
        .frontends_of(FrontendKind::NodePort)
        .map(|f| f.socket().to_string())
        .collect();
    assert_eq!(node_ports, ["192.168.50.10:30080", "127.0.0.1:30080"]);
    // Its treatment is the external one: node sources are masqueraded
    // (a 127.0.0.1 source cannot leave the node).
    let lo = fp.frontends_of(FrontendKind::NodePort).last().unwrap();
    assert_eq!(
        lo.verdict(ClientClass::Node),
        Verdict::Forward {
            set: SetKind::Cluster,
            masquerade: true
        }
    );
    // Off by default.
    let fp = FrontendPlan::new(&p, IpFamily::V4, &settings(true, false)).unwrap();
    assert_eq!(fp.frontends_of(FrontendKind::NodePort).count(), 1);
}

#[test]
fn service_cidrs_are_split_by_family_and_truncated() {
    let s =
        settings(true, false).with_service_cidrs(&["10.96.0.7/16".parse().unwrap(), "fd00:96::/108".parse().unwrap()]);
    assert_eq!(
        s.family(IpFamily::V4).service_cidrs,
        ["10.96.0.0/16".parse::<IpNet>().unwrap()]
    );
    assert_eq!(
        s.family(IpFamily::V6).service_cidrs,
        ["fd00:96::/108".parse::<IpNet>().unwrap()]
    );
}

// === Property: the plan agrees with the oracle ===

fn info_strategy() -> impl Strategy<Value = ServicePortInfo> {
    (
        0..3u8,        // type
        0..3u8,        // families
        any::<bool>(), // itp local
        any::<bool>(), // etp local
        0..3usize,     // external IPs
        0..3usize,     // LB IPs
        0..3usize,     // source ranges
        any::<bool>(), // affinity
    )
        .prop_map(|(ty, fam, itp, etp, ext, lb, ranges, aff)| {
            let service_type = match ty {
                0 => ServiceType::ClusterIP,
                1 => ServiceType::NodePort,
                _ => ServiceType::LoadBalancer,
            };
            let mut frontends: [FamilyFrontends; 2] = Default::default();
            let v4 = fam != 1;
            let v6 = fam != 0;
            if v4 {
                frontends[0].cluster_ip = Some("10.96.0.1".parse().unwrap());
                frontends[0].external_ips = (0..ext)
                    .map(|i| format!("198.51.100.{}", i + 1).parse().unwrap())
                    .collect();
                if service_type == ServiceType::LoadBalancer {
                    frontends[0].load_balancer_ips = (0..lb)
                        .map(|i| format!("203.0.113.{}", i + 1).parse().unwrap())
                        .collect();
                }
                frontends[0].source_ranges = ["198.51.100.0/24", "192.168.50.0/24"][..ranges.min(2)]
                    .iter()
                    .map(|r| r.parse().unwrap())
                    .collect();
            }
            if v6 {
                frontends[1].cluster_ip = Some("fd00:96::1".parse().unwrap());
                frontends[1].external_ips = (0..ext)
                    .map(|i| format!("2001:db8::{}", i + 1).parse().unwrap())
                    .collect();
            }
            ServicePortInfo {
                key: crate::model::ServicePortKey::new("ns", "svc", "p", crate::model::Protocol::Tcp),
                service_type,
                port: 80,
                node_port: (service_type != ServiceType::ClusterIP).then_some(30080),
                frontends,
                affinity_timeout_secs: aff.then_some(10800),
                external_policy_local: etp,
                internal_policy_local: itp,
                health_check_node_port: None,
                traffic_distribution: None,
            }
        })
}

fn endpoint_strategy() -> impl Strategy<Value = Endpoint> {
    (0..8u8, any::<bool>(), 0..8u8, 0..3usize, any::<bool>()).prop_map(|(ip, v6, cond, node, hinted)| {
        let addr: SocketAddr = if v6 {
            format!("[fd00:244::{ip}]:8080").parse().unwrap()
        } else {
            format!("10.244.0.{ip}:8080").parse().unwrap()
        };
        let node_name: Name = ["node-a", "node-b", "node-c"][node].into();
        Endpoint {
            addr,
            ready: cond & 1 != 0,
            serving: cond & 2 != 0,
            terminating: cond & 4 != 0,
            local: node == 0,
            node_name: Some(node_name.clone()),
            zone_hints: if hinted {
                Arc::from([Name::from("zone-a")])
            } else {
                Arc::from([])
            },
            node_hints: Arc::from([]),
        }
    })
}

fn settings_strategy() -> impl Strategy<Value = NodeSettings> {
    (any::<bool>(), any::<bool>(), any::<bool>(), 0..3u8).prop_map(|(cidr4, cidr6, masq, np)| {
        let mut cidrs: Vec<IpNet> = Vec::new();
        if cidr4 {
            cidrs.push("10.244.0.0/16".parse().unwrap());
        }
        if cidr6 {
            cidrs.push("fd00:244::/32".parse().unwrap());
        }
        let np: Vec<std::net::IpAddr> = match np {
            0 => vec![],
            1 => vec!["192.168.50.10".parse().unwrap()],
            _ => vec!["10.0.0.5".parse().unwrap(), "fd00:50::10".parse().unwrap()],
        };
        NodeSettings::new(&cidrs, masq, &np)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// For every frontend and client class, the plan's verdict (its set
    /// resolved to endpoints) is what `policy::route` answered.
    #[test]
    fn plan_verdicts_equal_the_former_route(
        info in info_strategy(),
        mut endpoints in proptest::collection::vec(endpoint_strategy(), 0..6),
        settings in settings_strategy(),
        zone in any::<bool>(),
    ) {
        endpoints.sort_by_key(|e| e.addr);
        endpoints.dedup_by_key(|e| e.addr);
        let node = NodeContext { node_name: "node-a".into(), zone: zone.then(|| "zone-a".into()) };
        let info = Arc::new(info);
        let plan = policy::plan(&info, &endpoints, &node);
        for family in IpFamily::ALL {
            let fp = FrontendPlan::new(&plan, family, &settings);
            prop_assert_eq!(fp.is_some(), info.has_family(family));
            let Some(fp) = fp else { continue };
            let masq = oracle::MasqueradeConfig {
                masquerade_all: settings.masquerade_all,
                detect_local: settings.family(family).pod_cidr().is_some(),
            };
            for fe in &fp.frontends {
                for class in ClientClass::CLIENTS {
                    let want = oracle::route(&plan, family, fe.kind, class, masq, true);
                    prop_assert_eq!(resolve(&fp, fe.verdict(class)), want, "{:?} {:?} {:?}", family, fe, class);
                }
                if fe.filtered {
                    let want = oracle::route(&plan, family, fe.kind, ClientClass::External, masq, false);
                    prop_assert_eq!(resolve(&fp, fe.verdict(ClientClass::OutsideSourceRanges)), want);
                }
            }
            // Sets in use are exactly those some verdict forwards to (or the
            // external treatment's, which a family may have without frontends).
            let mut used = std::collections::BTreeSet::new();
            for t in fp.frontends.iter().map(|f| f.treatment).chain(fp.external) {
                for class in ClientClass::CLIENTS {
                    if let Verdict::Forward { set, .. } = t.verdict(class) {
                        used.insert(set);
                    }
                }
            }
            prop_assert_eq!(fp.cluster.is_some(), used.contains(&SetKind::Cluster));
            prop_assert_eq!(fp.local.is_some(), used.contains(&SetKind::Local));
            let _: &FamilyPlan = plan.family(family);
        }
    }
}
