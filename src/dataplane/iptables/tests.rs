//! iptables backend against the strict fake: minimal edits, drift repair,
//! foreign rules, cleanup, refused transactions, and a property test that
//! any sequence of partial syncs leaves the same rules as one full sync.

use proptest::prelude::*;
use serde_json::json;

use super::fake::FakeIptables;
use super::*;
use crate::dataplane::{Drift, SyncScope};
use crate::policy::NodeContext;
use crate::testing::*;
use crate::track::{ChangeSet, Tracker};

fn cfg() -> IptablesConfig {
    IptablesConfig {
        families: vec![IpFamily::V4],
        variant: Variant::Nft,
        settings: NodeSettings::new(
            &["10.244.0.0/16".parse().unwrap()],
            false,
            &["192.168.50.10".parse().unwrap()],
        ),
        node_ports: None,
    }
}

fn backend() -> (IptablesDataplane, FakeIptables) {
    let fake = FakeIptables::new();
    (IptablesDataplane::new(Box::new(fake.clone()), cfg()), fake)
}

fn svc(t: &mut Tracker, name: &str, ip: &str, spec: serde_json::Value) -> ChangeSet {
    let mut s = json!({"clusterIP": ip, "ports": [{"name": "http", "port": 80, "nodePort": 30000 + ip.rsplit('.').next().unwrap().parse::<u16>().unwrap()}], "type": "NodePort"});
    for (k, v) in spec.as_object().unwrap() {
        s[k] = v.clone();
    }
    t.apply_service(service("ns", name, s))
}

fn eps(t: &mut Tracker, name: &str, ips: &[&str]) -> ChangeSet {
    let e: Vec<_> = ips.iter().map(|ip| ep(ip, "node-b")).collect();
    t.apply_slice(slice(
        "ns",
        &format!("{name}-1"),
        name,
        "IPv4",
        json!([port("http", 8080, "TCP")]),
        json!(e),
    ))
}

fn cluster(n: usize) -> Tracker {
    let mut t = Tracker::new(NodeContext::new("node-a"));
    for i in 0..n {
        let name = format!("s{i}");
        let (a, b) = (i / 250, i % 250 + 1);
        let net = if a == 0 { 244 } else { a };
        svc(&mut t, &name, &format!("10.96.{a}.{b}"), json!({}));
        eps(&mut t, &name, &[&format!("10.{net}.1.{b}"), &format!("10.{net}.2.{b}")]);
    }
    t
}

fn our_chain_names(fake: &FakeIptables) -> Vec<String> {
    fake.tables()
        .values()
        .flat_map(|c| c.keys().filter(|n| n.starts_with("SP-")).cloned())
        .collect()
}

/// The fake's tables after one full sync of `t` into an empty fake.
fn fresh_full(t: &Tracker) -> fake::Tables {
    let (mut b, fake) = backend();
    b.sync(t.table(), &SyncScope::Full).expect("full sync");
    fake.tables()
}

/// Rules in the shared dispatch chains are added one by one and match
/// disjoint traffic, so their order carries no meaning: compare those as
/// sets, every other chain as a sequence.
fn canonical(mut tables: fake::Tables) -> fake::Tables {
    for chains in tables.values_mut() {
        for name in [
            rules::SERVICES,
            rules::NODEPORTS,
            rules::EXTERNAL_SERVICES,
            rules::FIREWALL,
        ] {
            if let Some(c) = chains.get_mut(name) {
                c.rules.sort();
            }
        }
    }
    tables
}

/// Assert two rule sets are the same, naming only the chains that differ.
fn assert_same_rules(actual: fake::Tables, expected: fake::Tables) {
    let (actual, expected) = (canonical(actual), canonical(expected));
    let mut diffs = Vec::new();
    for (table, chains) in actual.iter().chain(expected.iter()) {
        for name in chains.keys() {
            let a = actual.get(table).and_then(|c| c.get(name));
            let e = expected.get(table).and_then(|c| c.get(name));
            if a != e {
                diffs.push(format!(
                    "{table}/{name}:\n  actual:   {:?}\n  expected: {:?}",
                    a.map(|c| &c.rules),
                    e.map(|c| &c.rules)
                ));
            }
        }
    }
    diffs.dedup();
    assert!(diffs.is_empty(), "rules differ:\n{}", diffs.join("\n"));
}

#[test]
fn fake_rejects_a_jump_to_a_missing_chain() {
    let mut fake = FakeIptables::new();
    let out = fake
        .run(
            "iptables-restore",
            &["--noflush"],
            b"*nat\n:SP-A - [0:0]\n-A SP-A -j SP-MISSING\nCOMMIT\n",
        )
        .unwrap();
    assert!(!out.success);
    assert!(out.stderr_text().contains("SP-MISSING"), "{}", out.stderr_text());
    assert!(
        fake.rules("nat", "SP-A").is_none(),
        "nothing of a refused table is applied"
    );
    let out = fake
        .run(
            "iptables-restore",
            &["--noflush"],
            b"*nat\n-D PREROUTING -j SP-A\nCOMMIT\n",
        )
        .unwrap();
    assert!(!out.success, "deleting a rule that is not there fails");
}

#[test]
fn full_sync_programs_every_chain_and_jump_and_is_idempotent() {
    let t = cluster(3);
    let (mut b, fake) = backend();
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let nat_pre = fake.rules("nat", "PREROUTING").unwrap();
    assert!(nat_pre.iter().any(|r| r.ends_with("-j SP-SERVICES")));
    assert_eq!(fake.rules("nat", "SP-SERVICES").unwrap().len(), 3);
    assert_eq!(fake.rules("nat", "SP-NODEPORTS").unwrap().len(), 3);
    let first = fake.tables();
    b.sync(t.table(), &SyncScope::Full).unwrap();
    assert_eq!(fake.tables(), first, "a second full sync changes nothing");
    assert_eq!(
        fake.rules("nat", "PREROUTING").unwrap().len(),
        2,
        "jumps are not duplicated"
    );
}

#[test]
fn one_endpoint_change_rewrites_only_that_services_chains() {
    let mut t = cluster(50);
    let (mut b, fake) = backend();
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let changes = eps(&mut t, "s7", &["10.244.1.8", "10.244.2.8", "10.244.3.8"]);
    let stats = b.sync(t.table(), &SyncScope::Partial(changes)).unwrap();
    let input = fake.restores().last().unwrap().clone();
    assert!(
        !input.contains(":SP-SERVICES"),
        "the dispatch chain is not rewritten:\n{input}"
    );
    assert!(
        !input.contains("s8") && !input.contains("ns/s1:"),
        "no other service is touched:\n{input}"
    );
    // The SVC chain is rewritten; the two unchanged endpoint chains are not; one endpoint chain is new.
    assert_eq!(input.lines().filter(|l| l.starts_with(':')).count(), 2, "{input}");
    assert_eq!(stats.bytes_written, input.len());
    assert_same_rules(fake.tables(), fresh_full(&t));
}

#[test]
fn adding_and_removing_a_service_touches_only_its_dispatch_rules() {
    let mut t = cluster(20);
    let (mut b, fake) = backend();
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let mut changes = svc(&mut t, "new", "10.96.0.200", json!({}));
    changes.merge(eps(&mut t, "new", &["10.244.1.200"]));
    b.sync(t.table(), &SyncScope::Partial(changes)).unwrap();
    let input = fake.restores().last().unwrap().clone();
    assert!(
        input.contains("-A SP-SERVICES ") && input.contains("-A SP-NODEPORTS "),
        "{input}"
    );
    assert!(
        !input.contains(":SP-SERVICES") && !input.contains("-D "),
        "appends only:\n{input}"
    );
    assert_same_rules(fake.tables(), fresh_full(&t));

    let changes = t.delete_service(&crate::model::ServiceKey::new("ns", "new"));
    b.sync(t.table(), &SyncScope::Partial(changes)).unwrap();
    let input = fake.restores().last().unwrap().clone();
    assert_eq!(
        input.lines().filter(|l| l.starts_with("-D SP-SERVICES")).count(),
        1,
        "{input}"
    );
    assert!(
        input.contains("-X SP-SVC-") && input.contains("-X SP-SEP-"),
        "stale chains are deleted:\n{input}"
    );
    assert!(!input.contains(":SP-SERVICES"), "{input}");
    assert_same_rules(fake.tables(), fresh_full(&t));
}

#[test]
fn bytes_written_for_one_change_do_not_grow_with_the_cluster() {
    let mut sizes = Vec::new();
    for n in [10, 200] {
        let mut t = cluster(n);
        let (mut b, _fake) = backend();
        b.sync(t.table(), &SyncScope::Full).unwrap();
        let changes = eps(&mut t, "s3", &["10.244.1.4", "10.244.2.99"]);
        sizes.push(b.sync(t.table(), &SyncScope::Partial(changes)).unwrap().bytes_written);
    }
    assert_eq!(sizes[0], sizes[1], "{sizes:?}");
}

#[test]
fn full_sync_repairs_a_chain_deleted_by_hand() {
    let t = cluster(3);
    let (mut b, fake) = backend();
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let expected = fake.tables();
    {
        // An operator removes s1's dispatch rule and its SVC chain.
        let mut state = fake.state();
        let nat = state.tables.get_mut("nat").unwrap();
        let svc_chain = nat.keys().find(|k| k.starts_with("SP-SVC-")).cloned().unwrap();
        for c in nat.values_mut() {
            c.rules.retain(|r| !r.ends_with(&format!("-j {svc_chain}")));
        }
        nat.remove(&svc_chain);
    }
    assert_ne!(fake.tables(), expected);
    b.sync(t.table(), &SyncScope::Full).unwrap();
    assert_eq!(fake.tables(), expected);
}

#[test]
fn foreign_rules_survive_syncs_and_cleanup() {
    let mut t = cluster(3);
    let (mut b, mut fake) = backend();
    let foreign = b"*filter\n:DOCKER-USER - [0:0]\n-A DOCKER-USER -j RETURN\n-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n*nat\n:CNI-HOSTPORT - [0:0]\n-A PREROUTING -j CNI-HOSTPORT\nCOMMIT\n";
    assert!(fake.run("iptables-restore", &["--noflush"], foreign).unwrap().success);
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let changes = eps(&mut t, "s1", &[]);
    b.sync(t.table(), &SyncScope::Partial(changes)).unwrap();
    b.sync(t.table(), &SyncScope::Full).unwrap();
    b.cleanup().unwrap();
    assert!(
        our_chain_names(&fake).is_empty(),
        "cleanup leaves no chain of ours: {:?}",
        our_chain_names(&fake)
    );
    assert_eq!(fake.rules("filter", "DOCKER-USER").unwrap(), ["-j RETURN"]);
    assert_eq!(
        fake.rules("filter", "INPUT").unwrap(),
        ["-p tcp -m tcp --dport 22 -j ACCEPT"]
    );
    assert_eq!(fake.rules("nat", "PREROUTING").unwrap(), ["-j CNI-HOSTPORT"]);
    assert!(fake.rules("nat", "CNI-HOSTPORT").is_some());
}

#[test]
fn refused_transaction_leaves_the_old_rules_and_reports_an_error() {
    let mut t = cluster(3);
    let (mut b, fake) = backend();
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let before = fake.tables();
    fake.state().refuse_next_restore = Some("iptables-restore: line 4 failed".into());
    let changes = eps(&mut t, "s1", &["10.244.9.9"]);
    let err = b.sync(t.table(), &SyncScope::Partial(changes)).unwrap_err();
    assert!(err.to_string().contains("line 4 failed"), "{err}");
    assert_eq!(fake.tables(), before, "the previous rules stay");
    // The runner then retries as a full sync, which converges.
    b.sync(t.table(), &SyncScope::Full).unwrap();
    assert_same_rules(fake.tables(), fresh_full(&t));
}

#[test]
fn partial_sync_after_drift_fails_cleanly_and_full_sync_repairs() {
    let mut t = cluster(3);
    let (mut b, fake) = backend();
    b.sync(t.table(), &SyncScope::Full).unwrap();
    // Someone flushed our dispatch chain: the -D of a partial sync cannot apply.
    fake.state()
        .tables
        .get_mut("nat")
        .unwrap()
        .get_mut("SP-SERVICES")
        .unwrap()
        .rules
        .clear();
    let changes = svc(
        &mut t,
        "s0",
        "10.96.0.1",
        json!({"ports": [{"name": "http", "port": 81, "nodePort": 30001}]}),
    );
    assert!(b.sync(t.table(), &SyncScope::Partial(changes)).is_err());
    b.sync(t.table(), &SyncScope::Full).unwrap();
    assert_same_rules(fake.tables(), fresh_full(&t));
}

#[test]
fn first_full_sync_removes_chains_left_by_a_previous_run() {
    let t = cluster(2);
    let (mut b, mut fake) = backend();
    let leftovers = b"*nat\n:SP-SVC-OLDOLDOLDOLDO - [0:0]\n:SP-SEP-OLDOLDOLDOLDO - [0:0]\n-A SP-SVC-OLDOLDOLDOLDO -j SP-SEP-OLDOLDOLDOLDO\nCOMMIT\n";
    assert!(fake.run("iptables-restore", &["--noflush"], leftovers).unwrap().success);
    b.sync(t.table(), &SyncScope::Full).unwrap();
    assert!(fake.rules("nat", "SP-SVC-OLDOLDOLDOLDO").is_none());
    assert_same_rules(fake.tables(), fresh_full(&t));
}

#[test]
fn affinity_local_policies_and_no_endpoints_render_and_apply() {
    let mut t = Tracker::new(NodeContext::new("node-a"));
    svc(
        &mut t,
        "aff",
        "10.96.0.1",
        json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
    );
    eps(&mut t, "aff", &["10.244.1.1", "10.244.2.1"]);
    svc(&mut t, "none", "10.96.0.2", json!({}));
    svc(&mut t, "etp", "10.96.0.3", json!({"externalTrafficPolicy": "Local"}));
    eps(&mut t, "etp", &["10.244.2.3"]);
    svc(&mut t, "itp", "10.96.0.4", json!({"internalTrafficPolicy": "Local"}));
    eps(&mut t, "itp", &["10.244.2.4"]);
    let (mut b, fake) = backend();
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let nat: Vec<String> = fake.tables()["nat"].values().flat_map(|c| c.rules.clone()).collect();
    assert!(nat.iter().any(|r| r.contains("--rcheck --seconds 60 --reap")));
    let filter = fake.rules("filter", "SP-SERVICES").unwrap();
    assert!(
        filter
            .iter()
            .any(|r| r.contains("ns/none:http/TCP has no endpoints") && r.contains("REJECT"))
    );
    assert!(
        filter
            .iter()
            .any(|r| r.contains("ns/itp:http/TCP has no local endpoints") && r.ends_with("-j DROP"))
    );
    let external = fake.rules("filter", "SP-EXTERNAL-SERVICES").unwrap();
    assert!(
        external
            .iter()
            .any(|r| r.contains("ns/etp:http/TCP has no local endpoints") && r.contains("--dport 30003"))
    );
    assert!(external.iter().any(|r| r.contains("ns/none:http/TCP has no endpoints")
        && r.contains("--dport 30002")
        && r.contains("REJECT")));
}

#[derive(Debug, Clone)]
enum Step {
    Endpoints(usize, Vec<u8>),
    Policy(usize, bool, bool, bool),
    Delete(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..6usize, proptest::collection::vec(1..6u8, 0..4)).prop_map(|(s, e)| Step::Endpoints(s, e)),
        (0..6usize, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(s, a, b, c)| Step::Policy(s, a, b, c)),
        (0..6usize).prop_map(Step::Delete),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any sequence of partial syncs leaves exactly the rules one full sync
    /// of the final table writes into an empty kernel.
    #[test]
    fn partial_syncs_equal_a_full_sync(steps in proptest::collection::vec(step(), 1..25)) {
        let mut t = cluster(4);
        let (mut b, fake) = backend();
        b.sync(t.table(), &SyncScope::Full).unwrap();
        for s in steps {
            let changes = match s {
                Step::Endpoints(i, e) => {
                    let ips: Vec<String> = e.iter().map(|x| format!("10.244.{x}.{}", i + 1)).collect();
                    let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
                    let mut c = svc(&mut t, &format!("s{i}"), &format!("10.96.0.{}", i + 1), json!({}));
                    c.merge(eps(&mut t, &format!("s{i}"), &refs));
                    c
                }
                Step::Policy(i, etp, itp, aff) => {
                    let mut spec = json!({
                        "externalTrafficPolicy": if etp { "Local" } else { "Cluster" },
                        "internalTrafficPolicy": if itp { "Local" } else { "Cluster" },
                    });
                    if aff { spec["sessionAffinity"] = json!("ClientIP"); }
                    svc(&mut t, &format!("s{i}"), &format!("10.96.0.{}", i + 1), spec)
                }
                Step::Delete(i) => t.delete_service(&crate::model::ServiceKey::new("ns", &format!("s{i}"))),
            };
            b.sync(t.table(), &SyncScope::Partial(changes)).unwrap();
        }
        assert_same_rules(fake.tables(), fresh_full(&t));
    }
}

#[test]
fn large_full_syncs_load_in_chunks_with_the_same_result() {
    let n = 2 * NFT_CHUNK + 10;
    let t = cluster(n);
    let (mut b, fake) = backend();
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let restores = fake.restores();
    assert_eq!(
        restores.len(),
        4,
        "{n} service ports: 3 chunks of own chains, then the dispatch chains"
    );
    assert!(
        restores[..3].iter().all(|r| !r.contains("SP-SERVICES")),
        "chunks never touch the dispatch chains"
    );
    assert_same_rules(fake.tables(), fake_full_single(&t));
    // The legacy variant loads the same in one transaction.
    let fake_legacy = FakeIptables::new();
    let mut legacy_cfg = cfg();
    legacy_cfg.variant = Variant::Legacy;
    IptablesDataplane::new(Box::new(fake_legacy.clone()), legacy_cfg)
        .sync(t.table(), &SyncScope::Full)
        .unwrap();
    assert_eq!(fake_legacy.restores().len(), 1);
    assert_same_rules(fake_legacy.tables(), fake.tables());
    // A warm full sync (with drift) converges to the same rules.
    fake.state()
        .tables
        .get_mut("nat")
        .unwrap()
        .get_mut("SP-SERVICES")
        .unwrap()
        .rules
        .truncate(10);
    b.sync(t.table(), &SyncScope::Full).unwrap();
    assert_same_rules(fake.tables(), fake_full_single(&t));
}

/// One unchunked full restore of `t` into an empty fake.
fn fake_full_single(t: &Tracker) -> fake::Tables {
    let mut fake = FakeIptables::new();
    let cfg = cfg();
    let input = IptablesDataplane::render_full(t.table(), IpFamily::V4, &cfg.settings);
    assert!(
        fake.run("iptables-restore", &["--noflush"], input.as_bytes())
            .unwrap()
            .success
    );
    let mut b = IptablesDataplane::new(Box::new(fake.clone()), cfg);
    // Jumps come from the backend's own full sync (idempotent on top).
    b.sync(t.table(), &SyncScope::Full).unwrap();
    fake.tables()
}

#[test]
fn full_sync_restores_a_deleted_jump_without_duplicating_the_others() {
    let t = cluster(2);
    let (mut b, mut fake) = backend();
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let before = fake.tables();
    let jump = fake.rules("filter", "FORWARD").unwrap()[0].clone();
    let mut args = vec!["-t", "filter", "-D", "FORWARD"];
    let words: Vec<&str> = jump.split(' ').collect();
    args.extend(words.iter().copied());
    assert!(fake.run("iptables", &args, b"").unwrap().success);
    assert_ne!(fake.tables(), before);
    b.sync(t.table(), &SyncScope::Full).unwrap();
    assert_eq!(fake.tables(), before);
    // The warm full sync listed only the built-in chains, not the whole ruleset.
    let calls = fake.state().calls.clone();
    let last_full: Vec<_> = calls
        .iter()
        .rev()
        .take_while(|(p, _, _)| !p.ends_with("-restore"))
        .collect();
    assert!(last_full.is_empty(), "the restore is the last call");
    assert!(
        !calls.iter().skip(2).any(|(p, _, _)| p.ends_with("-save")),
        "no full save after the first sync"
    );
}

#[test]
fn chains_of_the_ipvs_mode_are_not_taken_for_stale_ones() {
    let t = cluster(2);
    let (mut b, mut fake) = backend();
    let ipvs_layer = b"*nat\n:SP-IPVS-SERVICES - [0:0]\n-A PREROUTING -j SP-IPVS-SERVICES\nCOMMIT\n";
    assert!(
        fake.run("iptables-restore", &["--noflush"], ipvs_layer)
            .unwrap()
            .success
    );
    b.sync(t.table(), &SyncScope::Full)
        .expect("a referenced SP-IPVS chain must not be deleted");
    assert!(fake.rules("nat", "SP-IPVS-SERVICES").is_some());
}

#[test]
fn drift_check_sees_a_missing_canary_or_jump_with_a_few_cheap_commands() {
    let t = cluster(3);
    let (mut b, mut fake) = backend();
    assert_eq!(b.check_drift().unwrap(), Drift::None, "nothing programmed yet");
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let calls_before = fake.state().calls.len();
    assert_eq!(b.check_drift().unwrap(), Drift::None);
    let calls: Vec<_> = fake.state().calls[calls_before..].to_vec();
    assert!(
        calls
            .iter()
            .all(|(p, args, _)| !p.ends_with("-save") && args.iter().any(|a| a == "-S")),
        "only `-S` listings of single chains, never a save: {calls:?}"
    );
    assert_eq!(
        calls.len(),
        2 + 6,
        "one canary per table, one listing per built-in chain"
    );
    // Someone deletes the canary (as a table flush would).
    assert!(
        fake.run("iptables", &["-t", "nat", "-X", rules::CANARY], b"")
            .unwrap()
            .success
    );
    let Drift::Found(what) = b.check_drift().unwrap() else {
        panic!("a deleted canary is drift")
    };
    assert!(what.contains("canary"), "{what}");
    b.sync(t.table(), &SyncScope::Full).unwrap();
    assert_eq!(b.check_drift().unwrap(), Drift::None, "repaired");
    // Someone flushes a built-in chain: our jumps from it are gone.
    assert!(
        fake.run("iptables", &["-t", "nat", "-F", "PREROUTING"], b"")
            .unwrap()
            .success
    );
    let Drift::Found(what) = b.check_drift().unwrap() else {
        panic!("a missing jump is drift")
    };
    assert!(what.contains("PREROUTING"), "{what}");
    b.sync(t.table(), &SyncScope::Full).unwrap();
    assert_eq!(b.check_drift().unwrap(), Drift::None);
    assert_eq!(fake.tables(), fresh_full(&t), "the repair equals a fresh full sync");
}

#[test]
fn render_full_is_what_a_full_sync_writes_on_a_fresh_node() {
    let t = cluster(5);
    let (mut b, fake) = backend();
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let restores = fake.restores();
    assert_eq!(restores.len(), 1, "a small table is one transaction");
    let rendered = IptablesDataplane::render_full(t.table(), IpFamily::V4, &cfg().settings);
    assert_eq!(rendered, restores[0]);
    assert!(rendered.contains("-I PREROUTING ") && rendered.contains("-I FORWARD "));
    // And loading it alone into an empty fake gives the same tables.
    assert_eq!(fake_full_single(&t), fake.tables());
}

/// A weak hasher: the identity of service `s2` hashes as that of `s1`, so
/// every chain of s2 collides with s1's (same endpoints, same names).
fn s2_collides_with_s1(input: &[u8]) -> String {
    let text = String::from_utf8_lossy(input).replace("2:s2,", "2:s1,");
    rules::sha256_name(text.as_bytes())
}

fn colliding_backend() -> (IptablesDataplane, FakeIptables) {
    let fake = FakeIptables::new();
    let b = IptablesDataplane::new(Box::new(fake.clone()), cfg()).with_hasher(s2_collides_with_s1);
    (b, fake)
}

/// The nat dispatch rules naming service `name` and the chains they jump to.
fn dispatch_targets(fake: &FakeIptables, name: &str) -> Vec<String> {
    fake.rules("nat", rules::SERVICES)
        .unwrap_or_default()
        .iter()
        .filter(|r| r.contains(&format!("ns/{name}:")))
        .map(|r| r.rsplit(' ').next().unwrap().to_string())
        .collect()
}

#[test]
fn a_colliding_chain_name_is_never_shared_or_overwritten_in_a_full_sync() {
    let mut t = Tracker::new(NodeContext::new("node-a"));
    svc(&mut t, "s1", "10.96.0.1", json!({}));
    eps(&mut t, "s1", &["10.244.1.1"]);
    let (mut alone, alone_fake) = colliding_backend();
    alone.sync(t.table(), &SyncScope::Full).unwrap();
    // s2 has another endpoint; with the weak hasher its chains get s1's names.
    svc(&mut t, "s2", "10.96.0.2", json!({}));
    eps(&mut t, "s2", &["10.244.1.2"]);
    let (mut b, fake) = colliding_backend();
    b.sync(t.table(), &SyncScope::Full)
        .expect("the rest of the table is programmed");
    assert_eq!(
        fake.tables()["nat"]
            .iter()
            .filter(|(n, _)| n.starts_with("SP-SVC-") || n.starts_with("SP-SEP-"))
            .collect::<Vec<_>>(),
        alone_fake.tables()["nat"]
            .iter()
            .filter(|(n, _)| n.starts_with("SP-SVC-") || n.starts_with("SP-SEP-"))
            .collect::<Vec<_>>(),
        "s1's chains are exactly as without s2"
    );
    assert!(
        dispatch_targets(&fake, "s2").is_empty(),
        "s2 never jumps into s1's chain"
    );
    assert_eq!(dispatch_targets(&fake, "s1").len(), 1);
    // The same through a partial sync: s1 programmed, then s2 arrives.
    let mut t1 = Tracker::new(NodeContext::new("node-a"));
    svc(&mut t1, "s1", "10.96.0.1", json!({}));
    eps(&mut t1, "s1", &["10.244.1.1"]);
    let (mut p, pfake) = colliding_backend();
    p.sync(t1.table(), &SyncScope::Full).unwrap();
    let before = pfake.tables();
    let mut cs = svc(&mut t1, "s2", "10.96.0.2", json!({}));
    cs.merge(eps(&mut t1, "s2", &["10.244.1.2"]));
    p.sync(t1.table(), &SyncScope::Partial(cs)).expect("partial sync");
    assert_eq!(
        pfake.tables(),
        before,
        "nothing of s2 written, nothing of s1 overwritten"
    );
    // Once s1 is gone, s2 gets the name at the next sync (it is retried).
    let cs = t1.delete_service(&crate::model::ServiceKey::new("ns", "s1"));
    p.sync(t1.table(), &SyncScope::Partial(cs)).unwrap();
    assert_eq!(dispatch_targets(&pfake, "s2").len(), 1, "s2 programmed once s1 is gone");
    assert!(dispatch_targets(&pfake, "s1").is_empty());
    let svc_chain = &dispatch_targets(&pfake, "s2")[0];
    let body = pfake.rules("nat", svc_chain).unwrap();
    let sep = body
        .iter()
        .find_map(|r| r.rsplit(' ').next().filter(|c| c.starts_with("SP-SEP-")))
        .unwrap();
    assert!(
        pfake
            .rules("nat", sep)
            .unwrap()
            .iter()
            .any(|r| r.contains("10.244.1.2:8080")),
        "s2's own endpoint"
    );
}

#[test]
fn localhost_node_ports_jump_from_loopback_guard_it_and_go_away_when_turned_off() {
    let t = cluster(2);
    let fake = FakeIptables::new();
    let mut on = cfg();
    on.settings = on.settings.with_localhost_node_ports(true);
    let mut b = IptablesDataplane::new(Box::new(fake.clone()), on);
    b.sync(t.table(), &SyncScope::Full).unwrap();
    let addrs = fake.rules("nat", rules::NODEPORT_ADDRS).unwrap();
    assert!(
        addrs
            .iter()
            .any(|r| r.contains("-d 127.0.0.0/8") && r.ends_with("-j SP-NODEPORTS")),
        "loopback reaches the node ports as kube-proxy's --dst-type LOCAL does: {addrs:?}"
    );
    let guard = fake.rules("filter", rules::LOCALNET).unwrap();
    assert_eq!(guard.len(), 1, "{guard:?}");
    for w in [
        "-d 127.0.0.0/8",
        "! -s 127.0.0.0/8",
        "! --ctstate RELATED,ESTABLISHED,DNAT",
        "-j DROP",
    ] {
        assert!(guard[0].contains(w), "{w} in {guard:?}");
    }
    for from in ["INPUT", "OUTPUT"] {
        let builtin = fake.rules("filter", from).unwrap();
        assert_eq!(
            builtin.iter().filter(|r| r.ends_with("-j SP-LOCALNET")).count(),
            1,
            "{from}: {builtin:?}"
        );
    }
    assert_eq!(b.check_drift().unwrap(), Drift::None);
    // The node's own ports are served the same way: nothing per service changes.
    let fresh_off = fresh_full(&t);
    let mut np = fake.rules("nat", rules::NODEPORTS).unwrap();
    let mut np_off = fresh_off["nat"][rules::NODEPORTS].rules.clone();
    np.sort();
    np_off.sort();
    assert_eq!(np, np_off);

    // A restart with the setting off removes the chain and both jumps.
    let mut b = IptablesDataplane::new(Box::new(fake.clone()), cfg());
    b.sync(t.table(), &SyncScope::Full).unwrap();
    assert!(fake.rules("filter", rules::LOCALNET).is_none(), "chain deleted");
    for from in ["INPUT", "OUTPUT"] {
        let builtin = fake.rules("filter", from).unwrap();
        assert!(
            builtin.iter().all(|r| !r.contains("SP-LOCALNET")),
            "{from}: {builtin:?}"
        );
    }
    let addrs = fake.rules("nat", rules::NODEPORT_ADDRS).unwrap();
    assert!(addrs.iter().all(|r| !r.contains("127.0.0.0/8")), "{addrs:?}");
    assert_same_rules(fake.tables(), fresh_off);
    assert_eq!(b.check_drift().unwrap(), Drift::None);
}

#[test]
fn localhost_node_ports_are_ipv4_only() {
    let s = cfg().settings.with_localhost_node_ports(true);
    assert!(localhost(&s, IpFamily::V4));
    assert!(!localhost(&s, IpFamily::V6), "the kernel never routes ::1 off the node");
    let nat = rules::static_chains(Table::Nat, s.family(IpFamily::V6), localhost(&s, IpFamily::V6));
    assert!(
        nat.iter()
            .flat_map(|c| c.rules.iter())
            .all(|r| !r.contains("127.0.0.0"))
    );
}
