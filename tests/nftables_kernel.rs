//! Our netlink path against the real kernel where it matters beyond
//! parity: refused transactions (all or nothing, the error names the
//! object), the generation as a drift check, and the strict fake agreeing
//! with the kernel on what is refused.

mod nft_support;

use nft_support::Netns;
use sliceproxy::dataplane::nftables::NftError;
use sliceproxy::dataplane::nftables::fake::FakeNft;
use sliceproxy::dataplane::nftables::layout::{self, Selection, Settings};
use sliceproxy::dataplane::nftables::model::*;
use sliceproxy::dataplane::nftables::netlink::Nft;
use sliceproxy::dataplane::nftables::tx::{Batch, Op, Transaction};

fn setup(ns: &Netns) -> (Nft, FakeNft, Table) {
    let settings = Settings {
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        selection: Selection::Ranges,
        variant: layout::Variant::PerService,
    };
    let table = layout::build(&layout::synthetic(20, 3), &settings);
    let mut nft = ns.nft();
    let mut fake = FakeNft::new();
    for tx in layout::cold_load(&table, 25) {
        nft.commit(&Batch::build(&tx, &table).unwrap()).unwrap();
        fake.apply(&tx).unwrap();
    }
    (nft, fake, table)
}

fn dump(nft: &mut Nft, t: &Table) -> Table {
    nft.dump_table(t.family, &t.name).unwrap().expect("table")
}

fn tx(ops: Vec<Op>) -> Transaction {
    Transaction {
        family: Family::Ip,
        table: name(layout::TABLE),
        ops,
    }
}

#[test]
fn a_refused_transaction_changes_nothing_and_names_the_object() {
    let ns = Netns::new("kernel");
    let (mut nft, mut fake, table) = setup(&ns);
    let before = dump(&mut nft, &table);
    let gen_before = nft.generation().unwrap();
    let svc = &layout::synthetic(20, 3)[4];
    let ok_part = Op::FlushChain(name("reject-chain"));

    // A chain still referenced by a verdict-map element: EBUSY.
    let t = tx(vec![ok_part.clone(), Op::DeleteChain(svc.chain())]);
    let err = nft.commit(&Batch::build(&t, &table).unwrap()).unwrap_err();
    match &err {
        NftError::Refused { object, errno, .. } => {
            assert!(object.contains(&format!("op 2: delete chain {}", svc.chain())), "{err}");
            assert_eq!(*errno, 16, "{err}");
        }
        other => panic!("{other}"),
    }
    assert!(fake.apply(&t).is_err(), "the fake must refuse what the kernel refused");

    // One bad element among many: the extended ACK's offset names it.
    let mut elements: Vec<Element> = (0..50u16)
        .map(|i| {
            Element::vmap(
                &[
                    Value::Ipv4("10.200.0.1".parse().unwrap()),
                    Value::Proto(TCP),
                    Value::Port(1000 + i),
                ],
                VerdictData::Goto(svc.chain()),
            )
        })
        .collect();
    elements[37].data = Some(ElemData::Verdict(VerdictData::Goto(name("no-such-chain"))));
    let t = tx(vec![
        ok_part,
        Op::AddElements {
            set: name("service-ips"),
            elements,
        },
    ]);
    let err = nft.commit(&Batch::build(&t, &table).unwrap()).unwrap_err();
    match &err {
        NftError::Refused { object, errno, .. } => {
            assert_eq!(*errno, 2, "{err}");
            assert!(object.contains("10.200.0.1 . tcp . 1037 : goto no-such-chain"), "{err}");
        }
        other => panic!("{other}"),
    }
    assert!(fake.apply(&t).is_err());

    // A jump loop (dispatch -> service chain -> dispatch): ELOOP, found by
    // the kernel's jump-graph validation.
    let t = tx(vec![Op::AddRule {
        chain: svc.chain(),
        rule: Rule::new(vec![Stmt::Verdict(Verdict::Jump(name("services-dispatch")))]),
        echo: false,
    }]);
    let err = nft.commit(&Batch::build(&t, &table).unwrap()).unwrap_err();
    match &err {
        // Kernel 6.18 says EMLINK when the new rule closes a loop (ELOOP
        // when a commit-time validation finds one).
        NftError::Refused { errno, .. } => assert!(*errno == 31 || *errno == 40, "{err}"),
        other => panic!("{other}"),
    }
    assert!(fake.apply(&t).is_err());

    // Nothing of these transactions stuck, and the generation did not move.
    assert_eq!(dump(&mut nft, &table), before);
    assert_eq!(nft.generation().unwrap(), gen_before);
}

#[test]
fn the_generation_moves_on_every_commit_and_only_then() {
    let ns = Netns::new("kernel");
    let (mut nft, _, table) = setup(&ns);
    let g0 = nft.generation().unwrap();
    assert_eq!(nft.generation().unwrap(), g0, "no commit, no change");
    let svc = &layout::synthetic(20, 3)[2];
    let mut moved = svc.clone();
    moved.endpoints[0].0 = "10.250.0.1".parse().unwrap();
    let done = nft
        .commit(&Batch::build(&layout::change_endpoints(svc, &moved, Selection::Ranges, 0), &table).unwrap())
        .unwrap();
    assert_ne!(done.generation, g0);
    assert_eq!(nft.generation().unwrap(), done.generation);
    // Someone else's change (nft in the same namespace) moves it too.
    ns.must(&["nft", "add", "table", "ip", "someone-else"]);
    assert_ne!(nft.generation().unwrap(), done.generation);
}

// === The backend's drift check, restart and cleanup on the real kernel ===

mod backend {
    use sliceproxy::dataplane::nftables::backend::repair_ops;
    use sliceproxy::dataplane::nftables::model::name;
    use sliceproxy::dataplane::nftables::ruleset::{TABLE, table_family};
    use sliceproxy::dataplane::nftables::{NftablesConfig, NftablesDataplane};
    use sliceproxy::dataplane::{Dataplane, SyncScope};
    use sliceproxy::model::IpFamily;

    use super::nft_support::Netns;
    use super::nft_support::topology::{matrix, node_a_settings};

    fn backend(ns: &Netns) -> NftablesDataplane {
        NftablesDataplane::new(
            Box::new(ns.nft()),
            NftablesConfig::new(vec![IpFamily::V4, IpFamily::V6], node_a_settings()),
        )
    }

    /// The kernel holds exactly what the backend's image says (a dump,
    /// compared object by object).
    #[track_caller]
    fn kernel_equals_image(ns: &Netns, dp: &NftablesDataplane) {
        let mut nft = ns.nft();
        for f in IpFamily::ALL {
            let have = nft.dump_table(table_family(f), &name(TABLE)).unwrap();
            let want = dp.image_table(f).unwrap();
            let diff = repair_ops(have.as_ref(), &want).unwrap();
            assert!(diff.is_empty(), "{f}: kernel and image differ: {diff:#?}");
        }
    }

    fn table_handle(ns: &Netns) -> String {
        let out = ns.must(&["nft", "-a", "list", "table", "ip", "sliceproxy"]);
        out.lines().next().unwrap().to_string()
    }

    #[test]
    fn drift_is_found_by_the_generation_and_only_the_difference_is_repaired() {
        let ns = Netns::new("drift");
        let t = matrix();
        let mut dp = backend(&ns);
        dp.sync(t.table(), &SyncScope::Full).unwrap();
        assert_eq!(dp.last_full.how, "created");
        kernel_equals_image(&ns, &dp);

        // Nobody committed since: GETGEN only, nothing dumped or written.
        dp.sync(t.table(), &SyncScope::Full).unwrap();
        assert_eq!(dp.last_full.how, "untouched");
        assert_eq!(dp.last_full.transactions, 0);

        // Someone else's table: the generation moves, ours is checked and
        // found intact; theirs is not touched.
        ns.must(&["nft", "add", "table", "ip", "foreign"]);
        ns.must(&["nft", "add", "chain", "ip", "foreign", "c"]);
        dp.sync(t.table(), &SyncScope::Full).unwrap();
        assert_eq!(dp.last_full.how, "checked");
        assert_eq!(dp.last_full.changes, 0, "{:?}", dp.last_full);

        // Someone edits our table: a dispatch element deleted, a chain
        // flushed, a rule added, an element added. Repaired, and only that.
        ns.must(&[
            "nft",
            "delete",
            "element",
            "ip",
            "sliceproxy",
            "service-ips",
            "{ 10.96.0.10 . tcp . 80 }",
        ]);
        ns.must(&["nft", "flush", "chain", "ip", "sliceproxy", "reject-chain"]);
        ns.must(&[
            "nft",
            "add",
            "rule",
            "ip",
            "sliceproxy",
            "services-dispatch",
            "counter",
            "accept",
        ]);
        ns.must(&[
            "nft",
            "add",
            "element",
            "ip",
            "sliceproxy",
            "cluster-ips",
            "{ 10.96.7.7 }",
        ]);
        let handle = table_handle(&ns);
        dp.sync(t.table(), &SyncScope::Full).unwrap();
        assert_eq!(dp.last_full.how, "checked");
        assert!(
            dp.last_full.changes > 0 && dp.last_full.changes < 20,
            "only the difference: {:?}",
            dp.last_full
        );
        kernel_equals_image(&ns, &dp);
        assert_eq!(table_handle(&ns), handle, "repaired in place, not recreated");
        // After the repair our own commit is the last: untouched again.
        dp.sync(t.table(), &SyncScope::Full).unwrap();
        assert_eq!(dp.last_full.how, "untouched");

        // Someone deletes our whole table: recreated.
        ns.must(&["nft", "delete", "table", "ip", "sliceproxy"]);
        dp.sync(t.table(), &SyncScope::Full).unwrap();
        assert_eq!(dp.last_full.how, "checked");
        kernel_equals_image(&ns, &dp);

        // Cleanup deletes our tables and nothing else.
        dp.cleanup().unwrap();
        let left = ns.must(&["nft", "list", "tables"]);
        assert_eq!(left.trim(), "table ip foreign", "{left}");
    }

    #[test]
    fn a_restarted_agent_adopts_its_table_in_place() {
        let ns = Netns::new("restart");
        let t = matrix();
        let mut first = backend(&ns);
        first.sync(t.table(), &SyncScope::Full).unwrap();
        drop(first);
        let handle = table_handle(&ns);
        let mut second = backend(&ns);
        second.sync(t.table(), &SyncScope::Full).unwrap();
        assert_eq!(second.last_full.how, "adopted");
        assert_eq!(second.last_full.changes, 0, "{:?}", second.last_full);
        assert_eq!(table_handle(&ns), handle, "the same table: no gap in service");
        kernel_equals_image(&ns, &second);
        // The adoption vouched for the generation: the next periodic sync
        // is a GETGEN only.
        second.sync(t.table(), &SyncScope::Full).unwrap();
        assert_eq!(second.last_full.how, "untouched");
    }
}
