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
