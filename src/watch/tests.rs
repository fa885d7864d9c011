//! Conversion and relist tests.

use serde_json::json;

use super::*;
use crate::model::{IpFamily, Protocol, ServiceType};
use crate::testing::*;

#[test]
fn services_that_program_nothing_convert_to_no_ports() {
    let ext = service_object(
        "ns",
        "db",
        json!({"type": "ExternalName", "externalName": "db.example.com"}),
        None,
    );
    assert!(convert::service(&ext).unwrap().ports.is_empty());
    let headless = service_object("ns", "h", json!({"clusterIP": "None", "ports": [{"port": 80}]}), None);
    assert!(convert::service(&headless).unwrap().ports.is_empty());
    let no_ip = service_object("ns", "n", json!({"ports": [{"port": 80}]}), None);
    assert!(convert::service(&no_ip).unwrap().ports.is_empty());
}

#[test]
fn service_fields_convert() {
    let obj = service_object(
        "ns",
        "lb",
        json!({
            "type": "LoadBalancer", "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1", "fd00::1"],
            "externalIPs": ["198.51.100.1", "2001:db8::1"],
            "loadBalancerSourceRanges": ["198.51.100.0/24", "2001:db8::/64", "192.0.2.7/32"],
            "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
            "sessionAffinity": "ClientIP", "trafficDistribution": "PreferClose",
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}, {"name": "dns", "port": 53, "protocol": "UDP"}],
        }),
        Some(json!({"loadBalancer": {"ingress": [
            {"ip": "203.0.113.1", "ipMode": "VIP"}, {"ip": "203.0.113.2", "ipMode": "Proxy"}, {"hostname": "lb.example.com"}, {"ip": "2001:db8::10"},
        ]}})),
    );
    let svc = convert::service(&obj).unwrap();
    assert_eq!(svc.ports.len(), 2);
    let http = &svc.ports[0];
    assert_eq!(
        (http.key.to_string(), http.port, http.node_port),
        ("ns/lb:http/TCP".to_string(), 80, Some(30080))
    );
    assert_eq!(svc.ports[1].key.protocol, Protocol::Udp);
    assert_eq!(http.service_type, ServiceType::LoadBalancer);
    let v4 = http.family(IpFamily::V4);
    let v6 = http.family(IpFamily::V6);
    assert_eq!(v4.cluster_ip, Some("10.96.0.1".parse().unwrap()));
    assert_eq!(v6.cluster_ip, Some("fd00::1".parse().unwrap()));
    assert_eq!(v4.external_ips, ["198.51.100.1".parse::<std::net::IpAddr>().unwrap()]);
    // The Proxy-mode ingress is not captured; the hostname-only one has nothing to capture.
    assert_eq!(
        v4.load_balancer_ips,
        ["203.0.113.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        v6.load_balancer_ips,
        ["2001:db8::10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        v4.source_ranges.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        ["192.0.2.7/32", "198.51.100.0/24"]
    );
    assert_eq!(v6.source_ranges.len(), 1);
    assert!(http.external_policy_local && http.internal_policy_local);
    assert_eq!(http.health_check_node_port, Some(32000));
    assert_eq!(http.affinity_timeout_secs, Some(convert::DEFAULT_AFFINITY_TIMEOUT_SECS));
    assert_eq!(http.traffic_distribution.as_deref(), Some("PreferClose"));
}

#[test]
fn affinity_timeout_is_read() {
    let obj = service_object(
        "ns",
        "a",
        json!({"clusterIP": "10.96.0.1", "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}, "ports": [{"port": 80}]}),
        None,
    );
    assert_eq!(
        convert::service(&obj).unwrap().ports[0].affinity_timeout_secs,
        Some(600)
    );
}

#[test]
fn malformed_service_errors_name_the_field_and_value() {
    let bad_ip = service_object(
        "ns",
        "x",
        json!({"clusterIP": "10.96.0.300", "ports": [{"port": 80}]}),
        None,
    );
    let e = convert::service(&bad_ip).unwrap_err().to_string();
    assert!(
        e.contains("ns/x") && e.contains("spec.clusterIPs[0]") && e.contains("10.96.0.300"),
        "{e}"
    );
    let bad_range = service_object(
        "ns",
        "x",
        json!({"type": "LoadBalancer", "clusterIP": "10.96.0.1", "loadBalancerSourceRanges": ["nope"], "ports": [{"port": 80}]}),
        None,
    );
    assert!(
        convert::service(&bad_range)
            .unwrap_err()
            .to_string()
            .contains("loadBalancerSourceRanges[0]")
    );
    let bad_port = service_object(
        "ns",
        "x",
        json!({"clusterIP": "10.96.0.1", "ports": [{"port": 70000}]}),
        None,
    );
    assert!(convert::service(&bad_port).unwrap_err().to_string().contains("70000"));
}

#[test]
fn slice_conditions_default_like_upstream() {
    let s = slice(
        "ns",
        "s",
        "svc",
        "IPv4",
        json!([{"name": "p", "port": 80}, {"name": "noport"}]),
        json!([{"addresses": ["10.0.0.1"]}]),
    );
    let e = &s.endpoints[0];
    assert!(
        e.ready && e.serving && !e.terminating,
        "nil conditions: ready, serving, not terminating"
    );
    assert_eq!(s.ports.len(), 1, "a port without a number is skipped");
    assert_eq!(s.ports[0].protocol, Protocol::Tcp);
}

#[test]
fn slice_without_service_label_is_ignored() {
    let mut obj = slice_object("ns", "s", "svc", "IPv4", json!([]), json!([]));
    obj.metadata.labels = None;
    assert_eq!(convert::slice(&obj), Ok(None));
}

#[test]
fn proxy_label_selector_skips_headless_and_foreign_proxies() {
    let mut obj = service_object("ns", "s", json!({}), None);
    assert!(convert::selected_by_proxy(&obj.metadata));
    obj.metadata.labels = Some([("service.kubernetes.io/service-proxy-name".to_string(), "x".to_string())].into());
    assert!(!convert::selected_by_proxy(&obj.metadata));
    obj.metadata.labels = Some([("service.kubernetes.io/headless".to_string(), String::new())].into());
    assert!(!convert::selected_by_proxy(&obj.metadata));
}

type Ev = watcher::Event<Converted<u32, &'static str>>;

#[test]
fn relister_buffers_a_relist_into_one_reset() {
    let mut r: Relister<u32, &str> = Relister::default();
    let bad = ConvertError {
        kind: "Service",
        object: "ns/b".into(),
        field: "f".into(),
        message: "m".into(),
    };
    let events: Vec<Ev> = vec![
        watcher::Event::Init,
        watcher::Event::InitApply(("a", Ok(Some(1)))),
        watcher::Event::InitApply(("b", Err(bad.clone()))),
        watcher::Event::InitApply(("c", Ok(None))),
        watcher::Event::InitApply(("d", Ok(Some(4)))),
    ];
    for e in events {
        let (update, _) = r.feed(e);
        assert!(update.is_none(), "nothing is released before InitDone");
    }
    let (update, _) = r.feed(watcher::Event::InitDone);
    assert_eq!(
        update,
        Some(Update::Reset {
            objects: vec![1, 4],
            keep: vec!["b"]
        })
    );
}

#[test]
fn relister_restarted_mid_list_drops_the_partial_list() {
    let mut r: Relister<u32, &str> = Relister::default();
    r.feed(watcher::Event::Init);
    r.feed(watcher::Event::InitApply(("a", Ok(Some(1)))));
    // The list failed half-way and restarted.
    r.feed(watcher::Event::Init);
    r.feed(watcher::Event::InitApply(("b", Ok(Some(2)))));
    let (update, _) = r.feed(watcher::Event::InitDone);
    assert_eq!(
        update,
        Some(Update::Reset {
            objects: vec![2],
            keep: vec![]
        })
    );
}

#[test]
fn relister_passes_changes_through_and_forgets_what_no_longer_programs() {
    let mut r: Relister<u32, &str> = Relister::default();
    assert_eq!(
        r.feed(watcher::Event::Apply(("a", Ok(Some(1))))).0,
        Some(Update::Apply(1))
    );
    assert_eq!(
        r.feed(watcher::Event::Apply(("a", Ok(None)))).0,
        Some(Update::Delete("a"))
    );
    assert_eq!(
        r.feed(watcher::Event::Delete(("a", Ok(Some(1))))).0,
        Some(Update::Delete("a"))
    );
    let bad = ConvertError {
        kind: "Service",
        object: "ns/a".into(),
        field: "f".into(),
        message: "m".into(),
    };
    let (update, error) = r.feed(watcher::Event::Apply(("a", Err(bad.clone()))));
    assert_eq!(
        (update, error),
        (None, Some(bad)),
        "a bad update keeps the last good version"
    );
}
