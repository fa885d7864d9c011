//! Named tests of the tracker: slice joins and moves, duplicates, port-name
//! joins, relists, and ChangeSets (empty for no-op updates).

use serde_json::json;

use super::*;
use crate::model::{IpFamily, ServicePortKey};
use crate::testing::*;
use crate::watch::convert;

fn key(name: &str, port: &str, proto: Protocol) -> ServicePortKey {
    ServicePortKey::new("ns", name, port, proto)
}

fn tcp(name: &str, port: &str) -> ServicePortKey {
    key(name, port, Protocol::Tcp)
}

fn web() -> Service {
    service(
        "ns",
        "web",
        json!({"clusterIP": "10.96.0.1", "ports": [
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "metrics", "port": 9090},
        ]}),
    )
}

fn web_slice(name: &str, endpoints: serde_json::Value) -> Slice {
    slice(
        "ns",
        name,
        "web",
        "IPv4",
        json!([port("http", 8080, "TCP"), port("metrics", 9090, "TCP")]),
        endpoints,
    )
}

fn addrs(t: &Tracker, k: &ServicePortKey) -> Vec<String> {
    t.table()
        .get(k)
        .map(|e| e.endpoints.iter().map(|e| e.addr.to_string()).collect())
        .unwrap_or_default()
}

fn cluster(t: &Tracker, k: &ServicePortKey) -> Vec<String> {
    t.table()
        .plan(k)
        .expect("plan")
        .family(IpFamily::V4)
        .cluster
        .iter()
        .map(|a| a.to_string())
        .collect()
}

fn tracker() -> Tracker {
    Tracker::new(NodeContext::new("node-a"))
}

#[test]
fn slice_joins_service_through_service_name_label() {
    let mut t = tracker();
    t.apply_service(web());
    let changes = t.apply_slice(web_slice("web-1", json!([ep("10.244.1.1", "node-a")])));
    assert_eq!(
        changes.iter().cloned().collect::<Vec<_>>(),
        vec![tcp("web", "http"), tcp("web", "metrics")]
    );
    assert_eq!(cluster(&t, &tcp("web", "http")), ["10.244.1.1:8080"]);
    assert_eq!(cluster(&t, &tcp("web", "metrics")), ["10.244.1.1:9090"]);
    // A slice labelled for another Service does not join this one.
    t.apply_slice(slice(
        "ns",
        "other-1",
        "other",
        "IPv4",
        json!([port("http", 8080, "TCP")]),
        json!([ep("10.244.9.9", "n")]),
    ));
    assert_eq!(cluster(&t, &tcp("web", "http")), ["10.244.1.1:8080"]);
}

#[test]
fn service_with_many_slices_merges_them() {
    let mut t = tracker();
    t.apply_service(web());
    t.apply_slice(web_slice(
        "web-1",
        json!([ep("10.244.1.1", "node-a"), ep("10.244.1.2", "node-a")]),
    ));
    t.apply_slice(web_slice("web-2", json!([ep("10.244.2.1", "node-b")])));
    assert_eq!(
        cluster(&t, &tcp("web", "http")),
        ["10.244.1.1:8080", "10.244.1.2:8080", "10.244.2.1:8080"]
    );
    t.delete_slice(&SliceKey {
        namespace: "ns".into(),
        name: "web-1".into(),
    });
    assert_eq!(cluster(&t, &tcp("web", "http")), ["10.244.2.1:8080"]);
}

#[test]
fn endpoint_in_two_slices_counts_once_and_the_ready_copy_wins() {
    for order in [["old", "new"], ["new", "old"]] {
        let mut t = tracker();
        t.apply_service(web());
        for name in order {
            let endpoint = if name == "old" {
                ep_cond("10.244.1.1", "node-a", false, false, true)
            } else {
                ep("10.244.1.1", "node-a")
            };
            t.apply_slice(web_slice(&format!("web-{name}"), json!([endpoint])));
        }
        let entry = t.table().get(&tcp("web", "http")).expect("entry");
        assert_eq!(entry.endpoints.len(), 1, "order {order:?}");
        assert!(entry.endpoints[0].ready, "order {order:?}: the ready copy must win");
        assert_eq!(cluster(&t, &tcp("web", "http")), ["10.244.1.1:8080"]);
    }
}

#[test]
fn endpoint_moving_between_slices_yields_no_change() {
    let mut t = tracker();
    t.apply_service(web());
    t.apply_slice(web_slice(
        "web-1",
        json!([ep("10.244.1.1", "node-a"), ep("10.244.1.2", "node-a")]),
    ));
    t.apply_slice(web_slice("web-2", json!([])));
    // The endpoint shows up in the new slice before it leaves the old one.
    let c1 = t.apply_slice(web_slice("web-2", json!([ep("10.244.1.2", "node-a")])));
    let c2 = t.apply_slice(web_slice("web-1", json!([ep("10.244.1.1", "node-a")])));
    assert!(
        c1.is_empty() && c2.is_empty(),
        "a move changes nothing programmed: {c1:?} {c2:?}"
    );
    assert_eq!(cluster(&t, &tcp("web", "http")), ["10.244.1.1:8080", "10.244.1.2:8080"]);
}

#[test]
fn slice_ports_join_service_ports_by_name_and_protocol() {
    let mut t = tracker();
    t.apply_service(service(
        "ns",
        "dns",
        json!({"clusterIP": "10.96.0.10", "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        ]}),
    ));
    t.apply_slice(slice(
        "ns",
        "dns-1",
        "dns",
        "IPv4",
        json!([port("dns", 5353, "UDP"), port("dns-tcp", 5354, "TCP")]),
        json!([ep("10.244.1.53", "node-a")]),
    ));
    // "dns" as TCP matches no Service port; "unused" matches none either.
    // (Another slice: port names are unique within one.)
    t.apply_slice(slice(
        "ns",
        "dns-2",
        "dns",
        "IPv4",
        json!([port("dns", 5355, "TCP"), port("unused", 1, "TCP")]),
        json!([ep("10.244.1.53", "node-a")]),
    ));
    let udp = key("dns", "dns", Protocol::Udp);
    assert_eq!(
        t.table().plan(&udp).expect("udp").family(IpFamily::V4).cluster[0].port(),
        5353
    );
    assert_eq!(
        t.table()
            .plan(&tcp("dns", "dns-tcp"))
            .expect("tcp")
            .family(IpFamily::V4)
            .cluster[0]
            .port(),
        5354
    );
    // Endpoint-only entries exist (a Service port may appear later) but program nothing.
    assert!(t.table().plan(&tcp("dns", "dns")).is_none());
    assert!(t.table().get(&tcp("dns", "dns")).is_some());
    assert_eq!(t.table().plans().count(), 2);
}

#[test]
fn unnamed_single_port_joins_unnamed_slice_port() {
    let mut t = tracker();
    t.apply_service(service(
        "ns",
        "one",
        json!({"clusterIP": "10.96.0.2", "ports": [{"port": 80}]}),
    ));
    t.apply_slice(slice(
        "ns",
        "one-1",
        "one",
        "IPv4",
        json!([{"port": 8080}]),
        json!([ep("10.244.1.1", "n")]),
    ));
    assert_eq!(cluster(&t, &key("one", "", Protocol::Tcp)), ["10.244.1.1:8080"]);
}

#[test]
fn fqdn_slices_are_ignored() {
    let obj = slice_object(
        "ns",
        "web-fqdn",
        "web",
        "FQDN",
        json!([port("http", 8080, "TCP")]),
        json!([{"addresses": ["a.example.com"]}]),
    );
    assert_eq!(convert::slice(&obj), Ok(None));
}

#[test]
fn ip_families_are_kept_apart() {
    let mut t = tracker();
    t.apply_service(service(
        "ns",
        "web",
        json!({"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1", "fd00::1"], "ports": [{"name": "http", "port": 80}]}),
    ));
    t.apply_slice(slice(
        "ns",
        "web-v4",
        "web",
        "IPv4",
        json!([port("http", 8080, "TCP")]),
        json!([ep("10.244.1.1", "n")]),
    ));
    t.apply_slice(slice(
        "ns",
        "web-v6",
        "web",
        "IPv6",
        json!([port("http", 8080, "TCP")]),
        json!([ep("fd00:244::1", "n")]),
    ));
    let plan = t.table().plan(&tcp("web", "http")).expect("plan");
    assert_eq!(plan.family(IpFamily::V4).cluster, ["10.244.1.1:8080".parse().unwrap()]);
    assert_eq!(
        plan.family(IpFamily::V6).cluster,
        ["[fd00:244::1]:8080".parse().unwrap()]
    );
    // A v6 address in an IPv4 slice is refused, not mixed in.
    let bad = slice_object(
        "ns",
        "bad",
        "web",
        "IPv4",
        json!([port("http", 1, "TCP")]),
        json!([ep("fd00::9", "n")]),
    );
    assert!(
        convert::slice(&bad)
            .unwrap_err()
            .to_string()
            .contains("endpoints[0].addresses[0]")
    );
}

#[test]
fn single_stack_service_ignores_other_family_endpoints() {
    let mut t = tracker();
    t.apply_service(service(
        "ns",
        "web",
        json!({"clusterIP": "10.96.0.1", "ports": [{"name": "http", "port": 80}]}),
    ));
    t.apply_slice(slice(
        "ns",
        "web-v6",
        "web",
        "IPv6",
        json!([port("http", 8080, "TCP")]),
        json!([ep("fd00:244::1", "n")]),
    ));
    let plan = t.table().plan(&tcp("web", "http")).expect("plan");
    assert_eq!(plan.family(IpFamily::V6), &crate::policy::FamilyPlan::default());
    assert!(!plan.family(IpFamily::V4).has_any, "no IPv4 endpoints: rejects");
}

#[test]
fn slices_arriving_before_their_service() {
    let mut t = tracker();
    let changes = t.apply_slice(web_slice("web-1", json!([ep("10.244.1.1", "node-a")])));
    assert!(changes.is_empty(), "no Service yet: nothing to program");
    assert_eq!(addrs(&t, &tcp("web", "http")), ["10.244.1.1:8080"]);
    let changes = t.apply_service(web());
    assert_eq!(changes.len(), 2);
    assert_eq!(cluster(&t, &tcp("web", "http")), ["10.244.1.1:8080"]);
}

#[test]
fn service_deleted_while_slices_remain() {
    let mut t = tracker();
    t.apply_service(web());
    t.apply_slice(web_slice("web-1", json!([ep("10.244.1.1", "node-a")])));
    let changes = t.delete_service(&ServiceKey::new("ns", "web"));
    assert_eq!(changes.len(), 2);
    assert_eq!(t.table().plans().count(), 0);
    // The slice is still cached and joins the Service when it returns.
    let changes = t.apply_service(web());
    assert_eq!(changes.len(), 2);
    assert_eq!(cluster(&t, &tcp("web", "http")), ["10.244.1.1:8080"]);
    // Deleting both leaves nothing behind.
    t.delete_service(&ServiceKey::new("ns", "web"));
    t.delete_slice(&SliceKey {
        namespace: "ns".into(),
        name: "web-1".into(),
    });
    assert!(t.table().is_empty());
}

#[test]
fn slice_relabelled_to_another_service_leaves_the_first() {
    let mut t = tracker();
    t.apply_service(web());
    t.apply_service(service(
        "ns",
        "web2",
        json!({"clusterIP": "10.96.0.2", "ports": [{"name": "http", "port": 80}]}),
    ));
    t.apply_slice(web_slice("s", json!([ep("10.244.1.1", "node-a")])));
    let moved = slice(
        "ns",
        "s",
        "web2",
        "IPv4",
        json!([port("http", 8080, "TCP")]),
        json!([ep("10.244.1.1", "node-a")]),
    );
    let changes = t.apply_slice(moved);
    assert!(changes.contains(&tcp("web", "http")) && changes.contains(&tcp("web2", "http")));
    assert!(cluster(&t, &tcp("web", "http")).is_empty());
    assert_eq!(cluster(&t, &tcp("web2", "http")), ["10.244.1.1:8080"]);
}

#[test]
fn changeset_holds_only_the_ports_that_changed() {
    let mut t = tracker();
    t.apply_service(web());
    t.apply_slice(web_slice("web-1", json!([ep("10.244.1.1", "node-a")])));
    // Only the metrics port's target port moves.
    let s = slice(
        "ns",
        "web-1",
        "web",
        "IPv4",
        json!([port("http", 8080, "TCP"), port("metrics", 9191, "TCP")]),
        json!([ep("10.244.1.1", "node-a")]),
    );
    let changes = t.apply_slice(s);
    assert_eq!(changes.iter().cloned().collect::<Vec<_>>(), vec![tcp("web", "metrics")]);
    // A Service change to one port's port number touches that port only.
    let svc = service(
        "ns",
        "web",
        json!({"clusterIP": "10.96.0.1", "ports": [
            {"name": "http", "port": 81, "targetPort": 8080},
            {"name": "metrics", "port": 9090},
        ]}),
    );
    assert_eq!(
        t.apply_service(svc).iter().cloned().collect::<Vec<_>>(),
        vec![tcp("web", "http")]
    );
}

#[test]
fn noop_updates_yield_an_empty_changeset() {
    let mut t = tracker();
    let svc_obj = service_object(
        "ns",
        "web",
        json!({"clusterIP": "10.96.0.1", "ports": [{"name": "http", "port": 80}]}),
        None,
    );
    t.apply_service(convert::service(&svc_obj).unwrap());
    let eps = json!([ep("10.244.1.1", "node-a"), ep("10.244.1.2", "node-b")]);
    let slice_obj = slice_object("ns", "web-1", "web", "IPv4", json!([port("http", 8080, "TCP")]), eps);
    assert!(!t.apply_slice(convert::slice(&slice_obj).unwrap().unwrap()).is_empty());

    // resourceVersion bump, unrelated label and annotation.
    let mut bumped = svc_obj.clone();
    bumped.metadata.resource_version = Some("2".into());
    bumped.metadata.labels = Some([("team".to_string(), "a".to_string())].into());
    bumped.metadata.annotations = Some([("note".to_string(), "x".to_string())].into());
    assert!(t.apply_service(convert::service(&bumped).unwrap()).is_empty());
    let mut bumped_slice = slice_obj.clone();
    bumped_slice.metadata.resource_version = Some("7".into());
    bumped_slice.metadata.annotations.get_or_insert_default().insert(
        "endpoints.kubernetes.io/last-change-trigger-time".into(),
        "2026-01-01T00:00:00Z".into(),
    );
    assert!(
        t.apply_slice(convert::slice(&bumped_slice).unwrap().unwrap())
            .is_empty()
    );

    // The same endpoints in another order.
    let reordered = slice(
        "ns",
        "web-1",
        "web",
        "IPv4",
        json!([port("http", 8080, "TCP")]),
        json!([ep("10.244.1.2", "node-b"), ep("10.244.1.1", "node-a")]),
    );
    assert!(t.apply_slice(reordered).is_empty());

    // A condition change that selects the same endpoints (serving flips on a
    // ready endpoint) programs nothing new either.
    let same_plan = slice(
        "ns",
        "web-1",
        "web",
        "IPv4",
        json!([port("http", 8080, "TCP")]),
        json!([
            ep("10.244.1.2", "node-b"),
            ep_cond("10.244.1.1", "node-a", true, false, false)
        ]),
    );
    assert!(t.apply_slice(same_plan).is_empty());

    // But a readiness flip does.
    let flipped = slice(
        "ns",
        "web-1",
        "web",
        "IPv4",
        json!([port("http", 8080, "TCP")]),
        json!([
            ep("10.244.1.2", "node-b"),
            ep_cond("10.244.1.1", "node-a", false, false, false)
        ]),
    );
    assert_eq!(t.apply_slice(flipped).len(), 1);
}

#[test]
fn reset_deletes_what_was_not_relisted() {
    let mut t = tracker();
    t.apply_service(web());
    t.apply_service(service(
        "ns",
        "gone",
        json!({"clusterIP": "10.96.0.9", "ports": [{"name": "http", "port": 80}]}),
    ));
    t.apply_slice(web_slice("web-1", json!([ep("10.244.1.1", "node-a")])));
    t.apply_slice(web_slice("web-2", json!([ep("10.244.1.2", "node-a")])));

    let changes = t.reset_services(vec![web()], &[]);
    assert_eq!(changes.iter().cloned().collect::<Vec<_>>(), vec![tcp("gone", "http")]);
    let changes = t.reset_slices(vec![web_slice("web-1", json!([ep("10.244.1.1", "node-a")]))], &[]);
    assert_eq!(changes.len(), 2, "web-2 vanished while we were away");
    assert_eq!(cluster(&t, &tcp("web", "http")), ["10.244.1.1:8080"]);
    assert_eq!(t.service_count(), 1);
    assert_eq!(t.slice_count(), 1);
}

#[test]
fn reset_keeps_relisted_objects_that_failed_to_convert() {
    let mut t = tracker();
    t.apply_service(web());
    t.apply_slice(web_slice("web-1", json!([ep("10.244.1.1", "node-a")])));
    let changes = t.reset_services(vec![], &[ServiceKey::new("ns", "web")]);
    assert!(changes.is_empty());
    let changes = t.reset_slices(
        vec![],
        &[SliceKey {
            namespace: "ns".into(),
            name: "web-1".into(),
        }],
    );
    assert!(changes.is_empty());
    assert_eq!(cluster(&t, &tcp("web", "http")), ["10.244.1.1:8080"]);
}

#[test]
fn zone_change_replans_only_ports_with_zone_hints() {
    let mut t = tracker();
    t.apply_service(web());
    t.apply_service(service(
        "ns",
        "plain",
        json!({"clusterIP": "10.96.0.5", "ports": [{"name": "http", "port": 80}]}),
    ));
    t.apply_slice(web_slice(
        "web-1",
        json!([
            with_hints(ep("10.244.1.1", "node-a"), &["zone-a"], &[]),
            with_hints(ep("10.244.2.1", "node-b"), &["zone-b"], &[])
        ]),
    ));
    t.apply_slice(slice(
        "ns",
        "plain-1",
        "plain",
        "IPv4",
        json!([port("http", 80, "TCP")]),
        json!([ep("10.244.1.5", "n")]),
    ));
    assert_eq!(cluster(&t, &tcp("web", "http")).len(), 2, "no zone yet: no filtering");
    let node = crate::model::NodeInfo {
        zone: Some("zone-b".into()),
        ..Default::default()
    };
    let changes = t.set_node(Some(&node));
    assert_eq!(
        changes.iter().cloned().collect::<Vec<_>>(),
        vec![tcp("web", "http"), tcp("web", "metrics")]
    );
    assert_eq!(cluster(&t, &tcp("web", "http")), ["10.244.2.1:8080"]);
    assert!(t.set_node(Some(&node)).is_empty(), "same zone: no change");
}

#[test]
fn relist_where_an_endpoint_moved_between_slices_reports_no_change() {
    let mut t = tracker();
    t.apply_service(web());
    t.apply_slice(web_slice("web-1", json!([ep("10.244.1.1", "node-a")])));
    // While the watch was down the endpoint moved from web-1 to web-2.
    let changes = t.reset_slices(vec![web_slice("web-2", json!([ep("10.244.1.1", "node-a")]))], &[]);
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(t.slice_count(), 1);
}
