//! The `nft -f` script of a full sync on a fresh node (what `render
//! --proxy-mode nftables` prints), from the example snapshot for node-a:
//! golden file, the same tables as a full sync through the backend, and
//! real packets through the loaded script in `nft-` namespaces.

mod nft_support;

use std::net::IpAddr;
use std::path::Path;

use nft_support::Netns;
use nft_support::topology::{CLIENT, Outcome, Topology};
use sliceproxy::dataplane::frontends::NodeSettings;
use sliceproxy::dataplane::nftables::fake::normalized;
use sliceproxy::dataplane::nftables::model::name;
use sliceproxy::dataplane::nftables::ruleset::{TABLE, table_family};
use sliceproxy::dataplane::nftables::{NftSettings, NftablesConfig, NftablesDataplane, Scheduler, render_script};
use sliceproxy::dataplane::{Dataplane, SyncScope};
use sliceproxy::model::IpFamily;
use sliceproxy::snapshot::Snapshot;
use sliceproxy::track::Tracker;

const FAMILIES: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

/// node-a of `examples/cluster.yaml`, with the settings of its README
/// example (`--cluster-cidr 10.244.0.0/16,fd00:244::/32`), node ports on
/// node-a's InternalIPs and the example's service CIDRs.
fn example() -> (Tracker, NftSettings) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster.yaml");
    let snapshot = Snapshot::from_file(&path).expect("example snapshot");
    let (tracker, errors) = snapshot.tracker("node-a");
    assert!(errors.is_empty(), "{errors:?}");
    let settings = NftSettings {
        node: NodeSettings::new(
            &["10.244.0.0/16".parse().unwrap(), "fd00:244::/32".parse().unwrap()],
            false,
            &["192.168.50.10".parse().unwrap(), "fd00:50::10".parse().unwrap()],
        )
        .with_service_cidrs(&["10.96.0.0/16".parse().unwrap(), "fd00:96::/108".parse().unwrap()]),
        scheduler: Scheduler::Random,
    };
    (tracker, settings)
}

fn script() -> String {
    let (tracker, settings) = example();
    render_script(tracker.table(), &FAMILIES, &settings)
}

#[test]
fn the_full_sync_script_of_the_example_matches_golden() {
    let actual = script();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/nftables-node-a.nft");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).expect("write golden file");
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(expected == actual, "{} differs from:\n{actual}", path.display());
    // Rendering is a pure function: the same input, the same text.
    assert_eq!(script(), actual);
}

#[test]
fn the_script_loads_exactly_what_a_full_sync_programs() {
    let (by_script, by_backend) = (Netns::new("rscript"), Netns::new("rsync"));
    by_script.nft_script(&script()).expect("nft -f accepts the script");
    let (tracker, settings) = example();
    let mut dp = NftablesDataplane::new(
        Box::new(by_backend.nft()),
        NftablesConfig::new(FAMILIES.to_vec(), settings),
    );
    dp.sync(tracker.table(), &SyncScope::Full).expect("full sync");
    let (mut a, mut b) = (by_script.nft(), by_backend.nft());
    for f in FAMILIES {
        let (fam, table) = (table_family(f), name(TABLE));
        let from_script = a.dump_table(fam, &table).unwrap().expect("table loaded by nft -f");
        let from_backend = b.dump_table(fam, &table).unwrap().expect("table of the full sync");
        assert_eq!(normalized(from_script), normalized(from_backend), "{f}");
    }
}

#[test]
fn packets_through_the_loaded_script() {
    let topo = Topology::new("rpk");
    topo.node.nft_script(&script()).expect("nft -f accepts the script");
    let client = &topo.client;
    let client_ip: IpAddr = CLIENT.parse().unwrap();
    // web: two ready endpoints (pa1 on node-a, pb1 on node-b), masqueraded.
    let o = topo.ask_n(client, "tcp", "10.96.0.10:80", 24);
    let pods: std::collections::BTreeSet<&str> = o.iter().filter_map(Outcome::pod).collect();
    assert!(
        o.iter().all(|o| o.pod().is_some()) && pods == ["pa1", "pb1"].into(),
        "web: {o:?}"
    );
    assert!(
        o.iter()
            .all(|o| !matches!(o, Outcome::Answered(_, ip) if *ip == client_ip)),
        "masqueraded: {o:?}"
    );
    // web has no port 81: refused; empty has no endpoints: refused; an
    // unallocated cluster IP: dropped.
    assert_eq!(topo.ask(client, "tcp", "10.96.0.10:81"), Outcome::Refused);
    assert_eq!(topo.ask(client, "tcp", "10.96.0.70:80"), Outcome::Refused);
    assert_eq!(topo.ask(client, "tcp", "10.96.0.250:80"), Outcome::TimedOut);
    // shop's load balancer admits 198.51.100.0/24 only: the client is dropped.
    assert_eq!(topo.ask(client, "tcp", "203.0.113.10:80"), Outcome::TimedOut);
}

#[test]
fn packets_through_the_maglev_scheduler_tables() {
    // --nftables-scheduler maglev: the hash of each flow picks a slot of a
    // Maglev table; the kernel accepts the layout and new flows (new source
    // ports) spread over both endpoints.
    let (tracker, mut settings) = example();
    settings.scheduler = Scheduler::Maglev;
    let topo = Topology::new("rmg");
    topo.node
        .nft_script(&render_script(tracker.table(), &FAMILIES, &settings))
        .expect("nft -f accepts the Maglev script");
    let o = topo.ask_n(&topo.client, "tcp", "10.96.0.10:80", 24);
    let pods: std::collections::BTreeSet<&str> = o.iter().filter_map(Outcome::pod).collect();
    assert!(
        o.iter().all(|o| o.pod().is_some()) && pods == ["pa1", "pb1"].into(),
        "web through Maglev: {o:?}"
    );
    assert_eq!(topo.ask(&topo.client, "tcp", "10.96.0.70:80"), Outcome::Refused);
}
