//! The nftables backend against the strict fake: cold load, minimal edits,
//! shared chains, conflicts, affinity, drift repair, adoption, refused
//! transactions, cleanup, and a property test that any sequence of partial
//! syncs leaves exactly the table one full sync from scratch writes.

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::dataplane::SyncScope;
use crate::dataplane::frontends::NodeSettings;
use crate::dataplane::nftables::fake::{SharedFake, normalized};
use crate::dataplane::nftables::ruleset::Scheduler;
use crate::policy::NodeContext;
use crate::testing::*;
use crate::track::{ChangeSet, Tracker};

fn settings() -> NftSettings {
    NftSettings {
        node: NodeSettings::new(
            &["10.244.0.0/16".parse().unwrap(), "fd00:244::/56".parse().unwrap()],
            false,
            &["192.168.50.10".parse().unwrap(), "fd00:50::10".parse().unwrap()],
        )
        .with_service_cidrs(&["10.96.0.0/16".parse().unwrap(), "fd00:96::/108".parse().unwrap()]),
        scheduler: Scheduler::Random,
    }
}

fn backend_with(fake: &SharedFake, s: NftSettings, chunk: usize) -> NftablesDataplane {
    NftablesDataplane::new(
        Box::new(fake.clone()),
        NftablesConfig {
            families: vec![IpFamily::V4, IpFamily::V6],
            settings: s,
            chunk,
        },
    )
}

fn backend() -> (NftablesDataplane, SharedFake) {
    let fake = SharedFake::new();
    (backend_with(&fake, settings(), DEFAULT_CHUNK), fake)
}

fn svc(t: &mut Tracker, name: &str, i: u32, spec: serde_json::Value) -> ChangeSet {
    let mut s = json!({
        "clusterIP": format!("10.96.0.{i}"),
        "ports": [{"name": "http", "port": 80, "nodePort": 30000 + i}],
        "type": "NodePort",
    });
    for (k, v) in spec.as_object().unwrap() {
        s[k] = v.clone();
    }
    t.apply_service(service("ns", name, s))
}

fn eps_on(t: &mut Tracker, name: &str, eps: &[(&str, &str)]) -> ChangeSet {
    let e: Vec<_> = eps.iter().map(|(ip, node)| ep(ip, node)).collect();
    t.apply_slice(slice(
        "ns",
        &format!("{name}-1"),
        name,
        "IPv4",
        json!([port("http", 8080, "TCP")]),
        json!(e),
    ))
}

fn eps(t: &mut Tracker, name: &str, ips: &[&str]) -> ChangeSet {
    let e: Vec<(&str, &str)> = ips.iter().map(|ip| (*ip, "node-b")).collect();
    eps_on(t, name, &e)
}

fn cluster(n: u32) -> Tracker {
    let mut t = Tracker::new(NodeContext::new("node-a"));
    for i in 1..=n {
        let name = format!("s{i}");
        svc(&mut t, &name, i, json!({}));
        eps(&mut t, &name, &[&format!("10.244.1.{i}"), &format!("10.244.2.{i}")]);
    }
    t
}

fn v4() -> (Family, Name) {
    (Family::Ip, name(ruleset::TABLE))
}

fn kernel_table(fake: &SharedFake) -> Table {
    let (f, n) = v4();
    fake.table(f, &n).expect("our table exists")
}

/// What one full sync of `t` writes into an empty kernel.
fn fresh_full(t: &Tracker) -> Table {
    let (mut b, fake) = backend();
    b.sync(t.table(), &SyncScope::Full).expect("full sync");
    kernel_table(&fake)
}

fn ops_of(fake: &SharedFake, from: usize) -> Vec<Op> {
    fake.lock().committed[from..]
        .iter()
        .flat_map(|t| t.ops.clone())
        .collect()
}

fn committed(fake: &SharedFake) -> usize {
    fake.lock().committed.len()
}

#[test]
fn a_cold_sync_creates_the_rendered_tables() {
    let t = cluster(3);
    let (mut b, fake) = backend();
    b.sync(t.table(), &SyncScope::Full).unwrap();
    assert_eq!(b.last_full.how, "created");
    let want = full_tables(t.table(), &[IpFamily::V4], &settings());
    assert_eq!(kernel_table(&fake), normalized(want[0].clone()));
    assert_eq!(Some(kernel_table(&fake)), b.image_table(IpFamily::V4).map(normalized));
    // Both families exist; IPv6 has no service (no IPv6 cluster IP).
    let v6 = fake.table(Family::Ip6, &name(ruleset::TABLE)).unwrap();
    assert!(v6.set(&SetId::ServiceIps.name()).unwrap().elements.is_empty());
    // One shared chain serves all three services (same shape: 2 endpoints,
    // cluster IP masqueraded from outside the cluster CIDR), one more for
    // their node ports; each with its spares for 1..=16 endpoints, and
    // only the two in use reachable from the dispatch maps.
    let table = kernel_table(&fake);
    let shared: Vec<String> = table
        .chains
        .iter()
        .filter(|c| c.name.as_str().starts_with("fwd-"))
        .map(|c| c.name.to_string())
        .collect();
    let mut want: Vec<String> = (1..=ruleset::SPARE_BAND)
        .flat_map(|n| [format!("fwd-ip-out-c{n}"), format!("fwd-np-all-c{n}")])
        .collect();
    want.sort();
    let mut got = shared.clone();
    got.sort();
    assert_eq!(got, want);
    let mut reached: Vec<String> = table
        .sets
        .iter()
        .flat_map(|s| s.elements.iter())
        .filter_map(|e| match &e.data {
            Some(ElemData::Verdict(VerdictData::Goto(c))) if c.as_str().starts_with("fwd-") => Some(c.to_string()),
            _ => None,
        })
        .collect();
    reached.sort();
    reached.dedup();
    assert_eq!(reached, ["fwd-ip-out-c2", "fwd-np-all-c2"]);
}

#[test]
fn a_cold_load_is_chunked_with_dispatch_elements_last() {
    let t = cluster(40);
    let fake = SharedFake::new();
    let mut b = backend_with(&fake, settings(), 50);
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let txs = fake.lock().committed.clone();
    let v4: Vec<&Transaction> = txs.iter().filter(|t| t.family == Family::Ip).collect();
    assert!(v4.len() >= 4, "{} transactions", v4.len());
    for tx in &v4 {
        assert!(tx.ops.len() <= 50 || tx.ops.iter().all(|o| matches!(o, Op::AddElements { .. })));
    }
    // No dispatch element before the last chain or slot element.
    let ops: Vec<&Op> = v4.iter().flat_map(|t| t.ops.iter()).collect();
    let first_dispatch = ops
        .iter()
        .position(|o| matches!(o, Op::AddElements { set, .. } if set.as_str() == "service-ips"))
        .unwrap();
    let last_other = ops
        .iter()
        .rposition(|o| match o {
            Op::AddElements { set, .. } => set.as_str().starts_with("slots-"),
            Op::AddRule { .. } | Op::AddChain(_) => true,
            _ => false,
        })
        .unwrap();
    assert!(first_dispatch > last_other);
    assert_eq!(kernel_table(&fake), fresh_full(&t));
}

#[test]
fn replacing_an_endpoint_changes_slot_elements_only() {
    let mut t = cluster(3);
    let (mut b, fake) = backend();
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let n = committed(&fake);
    let c = eps(&mut t, "s2", &["10.244.1.2", "10.244.3.2"]);
    b.sync(t.table(), &SyncScope::Partial(c)).unwrap();
    let ops = ops_of(&fake, n);
    assert_eq!(committed(&fake), n + 1, "one transaction");
    assert!(
        ops.iter().all(|o| match o {
            Op::AddElements { set, elements } | Op::DeleteElements { set, elements } =>
                matches!(set.as_str(), "slots-ip-cluster" | "slots-np-cluster" | "hairpin-ips") && elements.len() == 1,
            _ => false,
        }),
        "{ops:#?}"
    );
    assert_eq!(
        ops.len(),
        6,
        "slot 1 of the cluster IP and of the node port, and the hairpin pair: delete + add each"
    );
    assert_eq!(kernel_table(&fake), fresh_full(&t));
}

#[test]
fn a_count_change_repoints_dispatch_elements_to_another_shared_chain() {
    let mut t = cluster(3);
    let (mut b, fake) = backend();
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let n = committed(&fake);
    let c = eps(&mut t, "s2", &["10.244.1.2", "10.244.2.2", "10.244.3.2"]);
    b.sync(t.table(), &SyncScope::Partial(c)).unwrap();
    let ops = ops_of(&fake, n);
    // The 3-endpoint chains exist already (spares): only elements change,
    // no chain or rule is added or deleted (no table-wide validation).
    assert!(
        ops.iter()
            .all(|o| matches!(o, Op::AddElements { .. } | Op::DeleteElements { .. })),
        "{ops:#?}"
    );
    let repointed: Vec<String> = ops
        .iter()
        .filter_map(|o| match o {
            Op::AddElements { elements, .. } => Some(elements),
            _ => None,
        })
        .flatten()
        .filter_map(|e| match &e.data {
            Some(ElemData::Verdict(VerdictData::Goto(c))) => Some(c.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(repointed, ["fwd-ip-out-c3", "fwd-np-all-c3"]);
    assert_eq!(kernel_table(&fake), fresh_full(&t));
    // Back to two: still no chain changes.
    let n = committed(&fake);
    let c = eps(&mut t, "s2", &["10.244.1.2", "10.244.2.2"]);
    b.sync(t.table(), &SyncScope::Partial(c)).unwrap();
    assert!(
        ops_of(&fake, n)
            .iter()
            .all(|o| matches!(o, Op::AddElements { .. } | Op::DeleteElements { .. }))
    );
    assert_eq!(kernel_table(&fake), fresh_full(&t));
    // Beyond the band (17 endpoints): the band grows to 32 once.
    let n = committed(&fake);
    let many: Vec<String> = (1..=17).map(|i| format!("10.244.{i}.2")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let c = eps(&mut t, "s2", &refs);
    b.sync(t.table(), &SyncScope::Partial(c)).unwrap();
    let added = ops_of(&fake, n).iter().filter(|o| matches!(o, Op::AddChain(_))).count();
    assert_eq!(added, 2 * 16, "17..=32 for the cluster IP and the node port kinds");
    assert_eq!(kernel_table(&fake), fresh_full(&t));
}

#[test]
fn no_endpoints_rejects_and_a_removed_service_leaves_nothing() {
    let mut t = cluster(2);
    let (mut b, fake) = backend();
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let c = eps(&mut t, "s1", &[]);
    b.sync(t.table(), &SyncScope::Partial(c)).unwrap();
    let k = kernel_table(&fake);
    let e = k
        .set(&SetId::ServiceIps.name())
        .unwrap()
        .elements
        .iter()
        .find(|e| e.key[0] == KeyPart::Value(Value::Ipv4("10.96.0.1".parse().unwrap())))
        .unwrap()
        .clone();
    assert_eq!(e.data, Some(ElemData::Verdict(VerdictData::Goto(name("reject-chain")))));
    assert_eq!(k, fresh_full(&t));
    let c = t.delete_service(&crate::model::ServiceKey::new("ns", "s1"));
    b.sync(t.table(), &SyncScope::Partial(c)).unwrap();
    assert_eq!(kernel_table(&fake), fresh_full(&t));
    let c = t.delete_service(&crate::model::ServiceKey::new("ns", "s2"));
    b.sync(t.table(), &SyncScope::Partial(c)).unwrap();
    let empty = normalized(ruleset::skeleton(IpFamily::V4, &settings()));
    assert_eq!(kernel_table(&fake), empty, "only the fixed part is left");
}

#[test]
fn a_refused_commit_changes_neither_kernel_nor_image() {
    let mut t = cluster(3);
    let (mut b, fake) = backend();
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let before = kernel_table(&fake);
    fake.lock().fail_next = 1;
    let c = eps(&mut t, "s2", &["10.244.9.9"]);
    let err = b.sync(t.table(), &SyncScope::Partial(c.clone())).unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert_eq!(kernel_table(&fake), before);
    assert_eq!(b.image_table(IpFamily::V4).map(normalized), Some(before));
    // The retry (a full sync, as the agent does after a failure) lands.
    b.sync(t.table(), &SyncScope::Full).unwrap();
    assert_eq!(kernel_table(&fake), fresh_full(&t));
}

#[test]
fn a_kernel_refusal_names_the_object() {
    let t = cluster(1);
    let (mut b, fake) = backend();
    b.sync(t.table(), &SyncScope::Full).unwrap();
    // Someone deletes a shared chain behind our back, and the next
    // partial sync adds an element that jumps to it: refused, named.
    let (f, n) = v4();
    fake.lock().nft.tamper(f, &n, |tb| {
        tb.sets.iter_mut().for_each(|s| {
            if s.name.as_str() == "service-nodeports" {
                s.elements.clear();
            }
        });
        tb.chains.retain(|c| c.name.as_str() != "fwd-np-all-c2");
    });
    let mut t2 = t;
    let c = svc(&mut t2, "s9", 9, json!({}));
    let mut c2 = eps(&mut t2, "s9", &["10.244.1.9", "10.244.2.9"]);
    c2.merge(c);
    let err = b.sync(t2.table(), &SyncScope::Partial(c2)).unwrap_err().to_string();
    assert!(err.contains("fwd-np-all-c2"), "{err}");
    // A full sync notices the drift (generation moved) and repairs it.
    b.sync(t2.table(), &SyncScope::Full).unwrap();
    assert_eq!(kernel_table(&fake), fresh_full(&t2));
}

#[test]
fn an_unchanged_generation_means_no_dump() {
    let t = cluster(2);
    let (mut b, fake) = backend();
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let dumps = fake.lock().dumps;
    let n = committed(&fake);
    b.sync(t.table(), &SyncScope::Full).unwrap();
    assert_eq!(b.last_full.how, "untouched");
    assert_eq!(fake.lock().dumps, dumps, "no dump");
    assert_eq!(committed(&fake), n, "no commit");
}

#[test]
fn drift_is_repaired_and_only_what_differs_is_written() {
    let t = cluster(3);
    let (mut b, fake) = backend();
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let good = kernel_table(&fake);
    let (f, n) = v4();
    fake.lock().nft.tamper(f, &n, |tb| {
        // A slot element gone, a foreign rule in our dispatch chain, a
        // foreign chain, a changed node-port address.
        tb.set_mut(&name("slots-ip-cluster")).unwrap().elements.remove(0);
        tb.chain_mut(&name("services-dispatch"))
            .unwrap()
            .rules
            .insert(0, Rule::new(vec![Stmt::Verdict(Verdict::Accept)]));
        tb.chains.push(Chain::regular(name("intruder-chain")));
        tb.set_mut(&name("nodeport-ips")).unwrap().elements =
            vec![Element::key(&[Value::Ipv4("192.168.50.99".parse().unwrap())])];
    });
    let before = committed(&fake);
    b.sync(t.table(), &SyncScope::Full).unwrap();
    assert_eq!(b.last_full.how, "checked");
    assert_eq!(kernel_table(&fake), good);
    let ops = ops_of(&fake, before);
    // 1 slot element, the dispatch chain flushed and refilled (5 rules),
    // 1 chain deleted, 1 node-port address deleted and 1 added.
    assert!(ops.len() <= 12, "{ops:#?}");
    assert!(ops.contains(&Op::DeleteChain(name("intruder-chain"))));
}

#[test]
fn a_table_left_by_an_earlier_run_is_adopted_without_a_gap() {
    let t = cluster(3);
    let (mut b, fake) = backend();
    b.sync(t.table(), &SyncScope::Full).unwrap();
    // A new process: same kernel, fresh backend; one endpoint changed
    // while it was down.
    let mut t2 = cluster(3);
    eps(&mut t2, "s3", &["10.244.1.3", "10.244.7.3"]);
    let mut b2 = backend_with(&fake, settings(), DEFAULT_CHUNK);
    let before = committed(&fake);
    b2.sync(t2.table(), &SyncScope::Full).unwrap();
    assert_eq!(b2.last_full.how, "adopted");
    // Nothing else committed since the adoption: the next full sync reads
    // the generation and nothing more.
    let dumps = fake.lock().dumps;
    b2.sync(t2.table(), &SyncScope::Full).unwrap();
    assert_eq!(b2.last_full.how, "untouched");
    assert_eq!(fake.lock().dumps, dumps);
    let ops = ops_of(&fake, before);
    assert!(
        !ops.iter().any(|o| matches!(o, Op::DeleteTable | Op::AddTable { .. })),
        "no gap"
    );
    assert_eq!(
        ops.len(),
        6,
        "only the changed slot (IP and node port) and hairpin pair: {ops:#?}"
    );
    assert_eq!(kernel_table(&fake), fresh_full(&t2));
}

#[test]
fn a_table_of_another_layout_is_replaced_in_one_transaction() {
    let t = cluster(3);
    let fake = SharedFake::new();
    let (f, n) = v4();
    let mut old = Table::new(f, n.clone());
    old.comment = Some(Comment::new("sliceproxy layout 1"));
    old.chains.push(Chain::regular(name("svc-old")));
    fake.lock().nft.put_table(old);
    let mut b = backend_with(&fake, settings(), DEFAULT_CHUNK);
    let before = committed(&fake);
    b.sync(t.table(), &SyncScope::Full).unwrap();
    assert_eq!(b.last_full.how, "created", "the IPv6 table was created last");
    let v4tx: Vec<Transaction> = fake.lock().committed[before..]
        .iter()
        .filter(|t| t.family == Family::Ip)
        .cloned()
        .collect();
    assert_eq!(v4tx.len(), 1, "delete and create in one transaction");
    assert_eq!(v4tx[0].ops[0], Op::DeleteTable);
    assert_eq!(kernel_table(&fake), fresh_full(&t));
}

#[test]
fn cleanup_deletes_our_tables_and_nothing_else() {
    let t = cluster(2);
    let (mut b, fake) = backend();
    let foreign = Table::new(Family::Inet, name("filter-other"));
    fake.lock().nft.put_table(foreign);
    b.sync(t.table(), &SyncScope::Full).unwrap();
    b.cleanup().unwrap();
    assert_eq!(fake.lock().nft.tables(), vec![(Family::Inet, name("filter-other"))]);
    // A sync after cleanup creates everything again.
    b.sync(t.table(), &SyncScope::Full).unwrap();
    assert_eq!(kernel_table(&fake), fresh_full(&t));
}

#[test]
fn two_services_on_one_external_ip_the_first_by_key_holds_it() {
    let mut t = cluster(0);
    let ext = json!({"externalIPs": ["198.51.100.7"], "type": "ClusterIP", "ports": [{"name": "http", "port": 80}]});
    svc(&mut t, "b-second", 2, ext.clone());
    eps(&mut t, "b-second", &["10.244.1.2"]);
    let (mut b, fake) = backend();
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let mut c = svc(&mut t, "a-first", 1, ext);
    c.merge(eps(&mut t, "a-first", &["10.244.1.1", "10.244.2.1"]));
    b.sync(t.table(), &SyncScope::Partial(c)).unwrap();
    let target = |fake: &SharedFake| {
        kernel_table(fake)
            .set(&SetId::ServiceIps.name())
            .unwrap()
            .elements
            .iter()
            .find(|e| e.key[0] == KeyPart::Value(Value::Ipv4("198.51.100.7".parse().unwrap())))
            .and_then(|e| e.data.clone())
    };
    assert_eq!(
        target(&fake),
        Some(ElemData::Verdict(VerdictData::Goto(name("fwd-ip-all-c2")))),
        "a-first (2 endpoints) holds the external IP"
    );
    assert_eq!(kernel_table(&fake), fresh_full(&t));
    let c = t.delete_service(&crate::model::ServiceKey::new("ns", "a-first"));
    b.sync(t.table(), &SyncScope::Partial(c)).unwrap();
    assert_eq!(
        target(&fake),
        Some(ElemData::Verdict(VerdictData::Goto(name("fwd-ip-all-c1")))),
        "b-second takes over"
    );
    assert_eq!(kernel_table(&fake), fresh_full(&t));
}

#[test]
fn client_ip_affinity_uses_own_chains_and_changes_them_in_place() {
    let mut t = cluster(1);
    let mut c = svc(
        &mut t,
        "sticky",
        5,
        json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
    );
    c.merge(eps(&mut t, "sticky", &["10.244.1.5", "10.244.2.5"]));
    let (mut b, fake) = backend();
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let k = kernel_table(&fake);
    let own: Vec<&Chain> = k
        .chains
        .iter()
        .filter(|c| c.name.as_str().starts_with("endpoint-"))
        .collect();
    assert_eq!(own.len(), 2, "one chain per endpoint");
    let recent: Vec<&Set> = k
        .sets
        .iter()
        .filter(|s| s.name.as_str().starts_with("recent-"))
        .collect();
    assert_eq!(recent.len(), 2);
    assert!(
        recent
            .iter()
            .all(|s| s.timeout == Some(std::time::Duration::from_secs(60)) && s.flags.dynamic)
    );
    let c = eps(&mut t, "sticky", &["10.244.1.5", "10.244.2.5", "10.244.3.5"]);
    b.sync(t.table(), &SyncScope::Partial(c)).unwrap();
    assert_eq!(kernel_table(&fake), fresh_full(&t));
    let c = t.delete_service(&crate::model::ServiceKey::new("ns", "sticky"));
    b.sync(t.table(), &SyncScope::Partial(c)).unwrap();
    let k = kernel_table(&fake);
    assert!(k.chains.iter().all(|c| !c.name.as_str().starts_with("endpoint-")));
    assert!(k.sets.iter().all(|s| !s.name.as_str().starts_with("recent-")));
    assert_eq!(k, fresh_full(&t));
}

#[test]
fn node_port_addresses_follow_the_node() {
    let t = cluster(1);
    let fake = SharedFake::new();
    let addrs = std::sync::Arc::new(std::sync::Mutex::new(vec!["192.168.50.10".parse::<IpAddr>().unwrap()]));
    let source = addrs.clone();
    let mut b = backend_with(&fake, settings(), DEFAULT_CHUNK)
        .with_node_port_addresses(Box::new(move || Ok(source.lock().unwrap().clone())));
    b.sync(t.table(), &SyncScope::Full).unwrap();
    *addrs.lock().unwrap() = vec!["192.168.50.20".parse().unwrap()];
    let n = committed(&fake);
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let ops = ops_of(&fake, n);
    assert_eq!(ops.len(), 2, "one address out, one in: {ops:#?}");
    let k = kernel_table(&fake);
    assert_eq!(
        k.set(&SetId::NodeportIps.name()).unwrap().elements,
        vec![Element::key(&[Value::Ipv4("192.168.50.20".parse().unwrap())])]
    );
}

#[test]
fn maglev_slots_change_only_where_the_owner_changed() {
    let mut s = settings();
    s.scheduler = Scheduler::Maglev;
    let fake = SharedFake::new();
    let mut b = backend_with(&fake, s.clone(), DEFAULT_CHUNK);
    let mut t = Tracker::new(NodeContext::new("node-a"));
    svc(
        &mut t,
        "m",
        1,
        json!({"type": "ClusterIP", "ports": [{"name": "http", "port": 80}]}),
    );
    let ten: Vec<String> = (1..=10).map(|i| format!("10.244.{i}.1")).collect();
    let refs: Vec<&str> = ten.iter().map(String::as_str).collect();
    eps(&mut t, "m", &refs);
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let slots = kernel_table(&fake)
        .set(&name("slots-ip-cluster"))
        .unwrap()
        .elements
        .len();
    assert_eq!(slots, crate::dataplane::nftables::maglev::table_size(10) as usize);
    let n = committed(&fake);
    let c = eps(&mut t, "m", &refs[..9]);
    b.sync(t.table(), &SyncScope::Partial(c)).unwrap();
    let changed = ops_of(&fake, n)
        .iter()
        .map(|o| match o {
            Op::AddElements { elements, .. } => elements.len(),
            _ => 0,
        })
        .sum::<usize>();
    // About 1/10 of the slots (the removed endpoint's), not most of them.
    assert!(changed > slots / 20 && changed < slots / 5, "{changed} of {slots}");
}

// === Property: partial syncs equal one full sync ===

#[derive(Debug, Clone)]
enum Step {
    Endpoints(u32, Vec<(u8, bool)>),
    Policy(u32, bool, bool, bool, u8),
    Delete(u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1..6u32, proptest::collection::vec((1..5u8, any::<bool>()), 0..5)).prop_map(|(i, e)| Step::Endpoints(i, e)),
        (1..6u32, any::<bool>(), any::<bool>(), any::<bool>(), 0..3u8)
            .prop_map(|(i, a, b, c, d)| Step::Policy(i, a, b, c, d)),
        (1..6u32).prop_map(Step::Delete),
    ]
}

fn apply_step(t: &mut Tracker, s: &Step) -> ChangeSet {
    match s {
        Step::Endpoints(i, e) => {
            let ips: Vec<(String, &str)> = e
                .iter()
                .map(|(x, local)| (format!("10.244.{x}.{i}"), if *local { "node-a" } else { "node-b" }))
                .collect();
            let refs: Vec<(&str, &str)> = ips.iter().map(|(a, n)| (a.as_str(), *n)).collect();
            let mut c = svc(t, &format!("s{i}"), *i, json!({}));
            c.merge(eps_on(t, &format!("s{i}"), &refs));
            c
        }
        Step::Policy(i, etp, itp, aff, ext) => {
            let mut spec = json!({
                "externalTrafficPolicy": if *etp { "Local" } else { "Cluster" },
                "internalTrafficPolicy": if *itp { "Local" } else { "Cluster" },
            });
            if *aff {
                spec["sessionAffinity"] = json!("ClientIP");
            }
            match ext {
                // Shared external IPs: conflicts between services.
                1 => spec["externalIPs"] = json!(["198.51.100.1"]),
                2 => {
                    spec["type"] = json!("LoadBalancer");
                    spec["loadBalancerSourceRanges"] = json!(["203.0.113.0/24"]);
                }
                _ => {}
            }
            let mut c = svc(t, &format!("s{i}"), *i, spec);
            if *ext == 2 {
                let mut obj = service_object(
                    "ns",
                    &format!("s{i}"),
                    json!({
                        "clusterIP": format!("10.96.0.{i}"),
                        "type": "LoadBalancer",
                        "externalTrafficPolicy": if *etp { "Local" } else { "Cluster" },
                        "internalTrafficPolicy": if *itp { "Local" } else { "Cluster" },
                        "loadBalancerSourceRanges": ["203.0.113.0/24"],
                        "ports": [{"name": "http", "port": 80, "nodePort": 30000 + i}],
                    }),
                    Some(json!({"loadBalancer": {"ingress": [{"ip": format!("198.51.100.{}", 10 + i)}]}})),
                );
                if *aff {
                    obj.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
                }
                c.merge(t.apply_service(crate::watch::convert::service(&obj).unwrap()));
            }
            c
        }
        Step::Delete(i) => t.delete_service(&crate::model::ServiceKey::new("ns", &format!("s{i}"))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any sequence of partial syncs leaves exactly the table one full sync
    /// of the final state writes into an empty kernel, and the image equals
    /// the kernel.
    #[test]
    fn partial_syncs_equal_a_full_sync(steps in proptest::collection::vec(step(), 1..20)) {
        let mut t = cluster(3);
        let (mut b, fake) = backend();
        b.sync(t.table(), &SyncScope::Full).unwrap();
        for s in &steps {
            let c = apply_step(&mut t, s);
            b.sync(t.table(), &SyncScope::Partial(c)).unwrap();
        }
        let kernel = kernel_table(&fake);
        let image = b.image_table(IpFamily::V4).map(normalized);
        prop_assert_eq!(Some(&kernel), image.as_ref());
        prop_assert_eq!(kernel, fresh_full(&t));
    }

    /// A failed commit anywhere in a sequence leaves the image equal to the
    /// kernel, and the next full sync converges.
    #[test]
    fn failed_commits_keep_image_and_kernel_equal(
        steps in proptest::collection::vec((step(), any::<bool>()), 1..12)
    ) {
        let mut t = cluster(3);
        let (mut b, fake) = backend();
        b.sync(t.table(), &SyncScope::Full).unwrap();
        let mut pending = ChangeSet::new();
        for (s, fail) in &steps {
            pending.merge(apply_step(&mut t, s));
            if *fail {
                fake.lock().fail_next = 1;
            }
            match b.sync(t.table(), &SyncScope::Partial(pending.clone())) {
                Ok(_) => pending = ChangeSet::new(),
                Err(_) => {
                    prop_assert_eq!(
                        Some(kernel_table(&fake)),
                        b.image_table(IpFamily::V4).map(normalized)
                    );
                }
            }
        }
        fake.lock().fail_next = 0;
        b.sync(t.table(), &SyncScope::Full).unwrap();
        prop_assert_eq!(kernel_table(&fake), fresh_full(&t));
    }
}

#[test]
fn the_drift_check_is_one_generation_read_and_sees_a_foreign_commit() {
    let t = cluster(2);
    let (mut b, fake) = backend();
    assert!(matches!(b.check_drift().unwrap(), Drift::Found(_)), "not loaded yet");
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let dumps = fake.lock().dumps;
    let n = committed(&fake);
    assert_eq!(b.check_drift().unwrap(), Drift::None);
    assert_eq!(fake.lock().dumps, dumps, "no dump");
    assert_eq!(committed(&fake), n, "no commit");
    // Our own partial syncs keep the check quiet.
    let mut t2 = t;
    let c = eps(&mut t2, "s1", &["10.244.1.1", "10.244.7.1"]);
    b.sync(t2.table(), &SyncScope::Partial(c)).unwrap();
    assert_eq!(b.check_drift().unwrap(), Drift::None);
    // Someone else edits our table: found; the full sync repairs it and the
    // check is quiet again.
    let (f, nm) = v4();
    fake.lock().nft.tamper(f, &nm, |tb| {
        tb.set_mut(&name("slots-ip-cluster")).unwrap().elements.remove(0);
    });
    assert!(matches!(b.check_drift().unwrap(), Drift::Found(m) if m.contains("generation")));
    b.sync(t2.table(), &SyncScope::Full).unwrap();
    assert_eq!(kernel_table(&fake), fresh_full(&t2));
    assert_eq!(b.check_drift().unwrap(), Drift::None);
}
