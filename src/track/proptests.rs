//! Property: any sequence of Service / EndpointSlice / Node updates applied
//! incrementally leaves the same table as one built from the final objects,
//! and every ChangeSet is exactly the set of service ports whose plan changed.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::model::NodeInfo;
use crate::testing::*;

const SERVICES: [&str; 3] = ["s0", "s1", "s2"];
const SLICES: [&str; 4] = ["x0", "x1", "x2", "x3"];
const PORTS: [(&str, &str); 3] = [("a", "TCP"), ("b", "TCP"), ("a", "UDP")];
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
const ZONES: [&str; 2] = ["z1", "z2"];

#[derive(Debug, Clone)]
enum Op {
    ApplyService(Service),
    DeleteService(usize),
    ApplySlice(Slice),
    DeleteSlice(usize),
    ResetServices(Vec<Service>),
    ResetSlices(Vec<Slice>),
    Zone(Option<usize>),
}

/// Port names are unique within one object (API validation), so of `a/TCP`
/// and `a/UDP` only the first is kept; across objects both still meet.
fn unique_names(ports: Vec<(&'static str, &'static str)>) -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for p in ports {
        if !out.iter().any(|q| q.0 == p.0) {
            out.push(p);
        }
    }
    out
}

fn service_strategy() -> impl Strategy<Value = Service> {
    (
        0..SERVICES.len(),
        proptest::sample::subsequence(PORTS.to_vec(), 1..=3).prop_map(unique_names),
        0..3usize, // family: v4, v6, dual
        any::<bool>(),
        any::<bool>(),
        any::<bool>(), // node port
        any::<bool>(), // affinity
        0..2u16,       // port number variant
    )
        .prop_map(|(i, ports, fam, itp, etp, np, aff, pv)| {
            let ips = match fam {
                0 => json!(["10.96.0.1"]),
                1 => json!(["fd00::1"]),
                _ => json!(["10.96.0.1", "fd00::1"]),
            };
            let ports: Vec<Value> = ports
                .iter()
                .enumerate()
                .map(|(n, (name, proto))| {
                    let mut p = json!({"name": name, "protocol": proto, "port": 80 + n as u16 + pv});
                    if np {
                        p["nodePort"] = json!(30000 + n as u16);
                    }
                    p
                })
                .collect();
            let mut spec = json!({
                "type": if np { "NodePort" } else { "ClusterIP" },
                "clusterIP": ips[0], "clusterIPs": ips, "ports": ports,
                "internalTrafficPolicy": if itp { "Local" } else { "Cluster" },
            });
            if np {
                // Only externally accessible Services may set it (API validation).
                spec["externalTrafficPolicy"] = json!(if etp { "Local" } else { "Cluster" });
            }
            if aff {
                spec["sessionAffinity"] = json!("ClientIP");
            }
            service("ns", SERVICES[i], spec)
        })
}

fn endpoint_strategy(v6: bool) -> impl Strategy<Value = Value> {
    (
        0..4u8,
        0..NODES.len(),
        0..8u8,
        proptest::option::of(0..ZONES.len()),
        proptest::option::of(0..NODES.len()),
    )
        .prop_map(move |(ip, node, cond, zone, node_hint)| {
            let ip = if v6 {
                format!("fd00:244::{ip}")
            } else {
                format!("10.244.0.{ip}")
            };
            let mut e = ep_cond(&ip, NODES[node], cond & 1 != 0, cond & 2 != 0, cond & 4 != 0);
            let zones: Vec<&str> = zone.map(|z| ZONES[z]).into_iter().collect();
            let nodes: Vec<&str> = node_hint.map(|n| NODES[n]).into_iter().collect();
            if !zones.is_empty() || !nodes.is_empty() {
                e = with_hints(e, &zones, &nodes);
            }
            e
        })
}

fn slice_strategy() -> impl Strategy<Value = Slice> {
    (
        0..SLICES.len(),
        0..SERVICES.len(),
        any::<bool>(),
        proptest::sample::subsequence(PORTS.to_vec(), 0..=3).prop_map(unique_names),
        0..2u16,
    )
        .prop_flat_map(|(name, svc, v6, ports, pv)| {
            proptest::collection::vec(endpoint_strategy(v6), 0..5).prop_map(move |eps| {
                let ports: Vec<Value> = ports.iter().map(|(n, p)| port(n, 8080 + pv, p)).collect();
                let family = if v6 { "IPv6" } else { "IPv4" };
                // Slice names are per family so that one name never changes family.
                let slice_name = format!("{}-{}", SLICES[name], family.to_lowercase());
                slice("ns", &slice_name, SERVICES[svc], family, json!(ports), json!(eps))
            })
        })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => service_strategy().prop_map(Op::ApplyService),
        1 => (0..SERVICES.len()).prop_map(Op::DeleteService),
        6 => slice_strategy().prop_map(Op::ApplySlice),
        2 => (0..SLICES.len() * 2).prop_map(Op::DeleteSlice),
        1 => proptest::collection::vec(service_strategy(), 0..3).prop_map(Op::ResetServices),
        1 => proptest::collection::vec(slice_strategy(), 0..4).prop_map(Op::ResetSlices),
        1 => proptest::option::of(0..ZONES.len()).prop_map(Op::Zone),
    ]
}

fn slice_key_at(i: usize) -> SliceKey {
    let family = if i.is_multiple_of(2) { "IPv4" } else { "IPv6" };
    SliceKey {
        namespace: "ns".into(),
        name: format!("{}-{}", SLICES[i / 2], family.to_lowercase()).into(),
    }
}

fn plans(t: &Tracker) -> BTreeMap<ServicePortKey, PortPlan> {
    t.table().plans().map(|(k, p)| (k.clone(), p.clone())).collect()
}

/// Later objects with the same key replace earlier ones, as the API would.
fn dedup_by_key<T, K: Ord>(items: Vec<T>, key: impl Fn(&T) -> K) -> Vec<T> {
    let mut m = BTreeMap::new();
    for item in items {
        m.insert(key(&item), item);
    }
    m.into_values().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn incremental_table_equals_table_built_from_scratch(ops in proptest::collection::vec(op_strategy(), 1..40)) {
        let mut t = Tracker::new(NodeContext::new("node-a"));
        // The objects as the API server would now list them.
        let mut services: BTreeMap<ServiceKey, Service> = BTreeMap::new();
        let mut slices: BTreeMap<SliceKey, Slice> = BTreeMap::new();
        let mut zone: Option<usize> = None;

        for op in ops {
            let before = plans(&t);
            let changes = match op {
                Op::ApplyService(s) => { services.insert(s.key.clone(), s.clone()); t.apply_service(s) }
                Op::DeleteService(i) => { let k = ServiceKey::new("ns", SERVICES[i]); services.remove(&k); t.delete_service(&k) }
                Op::ApplySlice(s) => { slices.insert(s.key.clone(), s.clone()); t.apply_slice(s) }
                Op::DeleteSlice(i) => { let k = slice_key_at(i); slices.remove(&k); t.delete_slice(&k) }
                Op::ResetServices(list) => {
                    let list = dedup_by_key(list, |s| s.key.clone());
                    services = list.iter().map(|s| (s.key.clone(), s.clone())).collect();
                    t.reset_services(list, &[])
                }
                Op::ResetSlices(list) => {
                    let list = dedup_by_key(list, |s| s.key.clone());
                    slices = list.iter().map(|s| (s.key.clone(), s.clone())).collect();
                    t.reset_slices(list, &[])
                }
                Op::Zone(z) => {
                    zone = z;
                    t.set_node(Some(&NodeInfo { zone: z.map(|z| ZONES[z].to_string()), ..Default::default() }))
                }
            };
            let after = plans(&t);
            let differing: BTreeSet<ServicePortKey> = before.keys().chain(after.keys())
                .filter(|k| before.get(*k) != after.get(*k))
                .cloned()
                .collect();
            let reported: BTreeSet<ServicePortKey> = changes.iter().cloned().collect();
            prop_assert_eq!(&reported, &differing, "ChangeSet must equal the ports whose plan changed");
        }

        // Build from scratch, in both orders.
        let node = NodeInfo { zone: zone.map(|z| ZONES[z].to_string()), ..Default::default() };
        let mut fresh = Tracker::new(NodeContext::new("node-a"));
        fresh.set_node(Some(&node));
        fresh.reset_services(services.values().cloned().collect(), &[]);
        fresh.reset_slices(slices.values().cloned().collect(), &[]);
        prop_assert_eq!(fresh.table(), t.table());

        let mut reversed = Tracker::new(NodeContext::new("node-a"));
        for s in slices.values().rev() { reversed.apply_slice(s.clone()); }
        for s in services.values().rev() { reversed.apply_service(s.clone()); }
        reversed.set_node(Some(&node));
        prop_assert_eq!(reversed.table(), t.table());
    }
}
