//! Runner tests on tokio's paused clock: gating on the first lists,
//! coalescing, periodic full syncs, retry with backoff.

use std::time::Duration;

use futures::channel::mpsc;
use serde_json::json;

use super::*;
use crate::dataplane::conntrack::{FlowCleaner, StaleFlow};
use crate::dataplane::memory::{MemoryDataplane, MemoryHandle, SyncRecord};
use crate::model::{NodeInfo, ServicePortKey};
use crate::policy::NodeContext;
use crate::testing::*;

fn svc(name: &str, ip: &str) -> crate::model::Service {
    service(
        "ns",
        name,
        json!({"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}),
    )
}

fn eps(name: &str, ips: &[&str]) -> crate::model::Slice {
    let endpoints: Vec<_> = ips.iter().map(|ip| ep(ip, "node-b")).collect();
    slice(
        "ns",
        &format!("{name}-1"),
        name,
        "IPv4",
        json!([port("http", 8080, "TCP")]),
        json!(endpoints),
    )
}

fn key(name: &str) -> ServicePortKey {
    ServicePortKey::new("ns", name, "http", crate::model::Protocol::Tcp)
}

fn resets() -> Vec<Event> {
    vec![
        Event::Service(Update::Reset {
            objects: vec![svc("a", "10.96.0.1"), svc("b", "10.96.0.2")],
            keep: vec![],
        }),
        Event::Slice(Update::Reset {
            objects: vec![eps("a", &["10.244.1.1"]), eps("b", &["10.244.1.2"])],
            keep: vec![],
        }),
        Event::Node(Update::Reset {
            objects: vec![NodeInfo::default()],
            keep: vec![],
        }),
    ]
}

struct Harness {
    tx: mpsc::UnboundedSender<Event>,
    handle: MemoryHandle,
    status: watch::Receiver<AgentStatus>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Agent<MemoryDataplane>>,
}

impl Harness {
    fn start(settings: SyncSettings) -> Harness {
        let dataplane = MemoryDataplane::new();
        let handle = dataplane.handle();
        let agent = Agent::new(Tracker::new(NodeContext::new("node-a")), dataplane, settings);
        let status = agent.subscribe();
        let (tx, rx) = mpsc::unbounded();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(agent.run(rx, async move {
            let _ = stopped.await;
        }));
        Harness {
            tx,
            handle,
            status,
            stop: Some(stop),
            task,
        }
    }

    fn send(&self, e: Event) {
        self.tx.unbounded_send(e).expect("agent is running");
    }

    fn syncs(&self) -> Vec<SyncRecord> {
        self.handle.syncs()
    }

    async fn stop(mut self) -> Agent<MemoryDataplane> {
        let _ = self.stop.take().expect("running").send(());
        self.task.await.expect("agent task")
    }
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test(start_paused = true)]
async fn no_sync_before_services_slices_and_node_are_listed() {
    let h = Harness::start(SyncSettings::default());
    let [services, slices, node]: [Event; 3] = resets().try_into().unwrap();
    h.send(services);
    h.send(slices);
    sleep_ms(5_000).await;
    assert!(h.syncs().is_empty(), "the Node has not been listed yet");
    assert!(!h.status.borrow().initialized);
    h.send(node);
    sleep_ms(10).await;
    let syncs = h.syncs();
    assert_eq!(syncs.len(), 1);
    assert!(syncs[0].full, "the first sync is full");
    assert_eq!(syncs[0].touched, vec![key("a"), key("b")]);
    assert!(h.status.borrow().initialized);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn changes_within_min_sync_period_are_coalesced_into_one_partial_sync() {
    let h = Harness::start(SyncSettings::default());
    for e in resets() {
        h.send(e);
    }
    sleep_ms(10).await;
    assert_eq!(h.syncs().len(), 1);
    // Three changes inside one second, two to the same service.
    h.send(Event::Slice(Update::Apply(eps("a", &["10.244.1.1", "10.244.1.3"]))));
    sleep_ms(100).await;
    h.send(Event::Slice(Update::Apply(eps("a", &["10.244.1.3"]))));
    sleep_ms(100).await;
    // A no-op update must not cause a sync by itself.
    h.send(Event::Service(Update::Apply(svc("b", "10.96.0.2"))));
    sleep_ms(100).await;
    assert_eq!(h.syncs().len(), 1, "min-sync-period not over yet");
    sleep_ms(800).await;
    let syncs = h.syncs();
    assert_eq!(syncs.len(), 2);
    assert!(!syncs[1].full);
    assert_eq!(syncs[1].touched, vec![key("a")], "only the changed service port");
    assert_eq!(
        h.handle.programmed()[&key("a")].families[0].cluster,
        ["10.244.1.3:8080".parse().unwrap()]
    );
    // Nothing pending: nothing happens until the periodic full sync.
    sleep_ms(20_000).await;
    assert_eq!(h.syncs().len(), 2);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_change_after_a_quiet_period_syncs_at_once() {
    let h = Harness::start(SyncSettings::default());
    for e in resets() {
        h.send(e);
    }
    sleep_ms(5_000).await;
    h.send(Event::Service(Update::Delete(crate::model::ServiceKey::new("ns", "b"))));
    sleep_ms(1).await;
    let syncs = h.syncs();
    assert_eq!(syncs.len(), 2);
    assert_eq!(syncs[1].touched, vec![key("b")]);
    assert!(!h.handle.programmed().contains_key(&key("b")));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_periodic_tick_checks_for_drift_and_rewrites_nothing() {
    let h = Harness::start(SyncSettings {
        min_sync_period: Duration::from_secs(1),
        sync_period: Duration::from_secs(30),
    });
    for e in resets() {
        h.send(e);
    }
    sleep_ms(10).await;
    assert_eq!(h.handle.drift_checks(), 0);
    // Ten ticks with nothing changed: ten drift checks, no sync at all.
    sleep_ms(300_000).await;
    assert_eq!(h.handle.drift_checks(), 10);
    assert_eq!(h.syncs().len(), 1, "only the first full sync: {:?}", h.syncs());
    // A change between ticks is written as a partial sync at once; the
    // next tick still only checks.
    h.send(Event::Slice(Update::Apply(eps("a", &["10.244.1.7"]))));
    sleep_ms(30_000).await;
    let syncs = h.syncs();
    assert_eq!(syncs.len(), 2);
    assert!(!syncs[1].full);
    assert_eq!(syncs[1].touched, vec![key("a")]);
    assert_eq!(h.handle.drift_checks(), 11);
    let counters = h.status.borrow().counters.clone();
    assert_eq!(
        (counters.full_syncs, counters.drift_checks, counters.drift_found),
        (1, 11, 0)
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn drift_found_by_the_check_is_repaired_by_a_full_sync() {
    let h = Harness::start(SyncSettings::default());
    for e in resets() {
        h.send(e);
    }
    sleep_ms(10).await;
    // Someone flushes our rules behind our back.
    h.handle.state().programmed.clear();
    h.handle.drift();
    sleep_ms(29_000).await;
    assert_eq!(h.syncs().len(), 1, "not before the tick");
    sleep_ms(1_100).await;
    let syncs = h.syncs();
    assert_eq!(syncs.len(), 2, "{syncs:?}");
    assert!(syncs[1].full, "drift is repaired by a full sync");
    assert_eq!(h.handle.programmed().len(), 2, "the full sync restored both");
    assert_eq!(h.status.borrow().counters.drift_found, 1);
    // Repaired: the following ticks only check again.
    sleep_ms(60_000).await;
    assert_eq!(h.syncs().len(), 2);
    assert_eq!(h.handle.drift_checks(), 3);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_full_sync_runs_every_full_sync_period() {
    let dataplane = MemoryDataplane::new();
    let handle = dataplane.handle();
    let agent = Agent::new(
        Tracker::new(NodeContext::new("node-a")),
        dataplane,
        SyncSettings::default(),
    )
    .with_full_sync_period(Duration::from_secs(600));
    let (tx, rx) = mpsc::unbounded();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(rx, async move {
        let _ = stopped.await;
    }));
    for e in resets() {
        tx.unbounded_send(e).unwrap();
    }
    sleep_ms(10).await;
    sleep_ms(599_000).await;
    assert_eq!(handle.syncs().len(), 1, "no full rewrite before the period");
    sleep_ms(1_100).await;
    let syncs = handle.syncs();
    assert_eq!(syncs.len(), 2);
    assert!(syncs[1].full);
    sleep_ms(600_000).await;
    assert_eq!(handle.syncs().iter().filter(|s| s.full).count(), 3);
    assert_eq!(
        handle.drift_checks(),
        19 + 19,
        "the ticks between full syncs only check"
    );
    let _ = stop.send(());
    task.await.unwrap();
}

#[test]
fn the_full_sync_period_is_an_hour_by_default_and_never_below_the_tick() {
    assert_eq!(DEFAULT_FULL_SYNC_PERIOD, Duration::from_secs(3600));
    let agent = Agent::new(
        Tracker::new(NodeContext::new("node-a")),
        MemoryDataplane::new(),
        SyncSettings::default(),
    );
    assert_eq!(agent.full_sync_period, DEFAULT_FULL_SYNC_PERIOD);
    let agent = agent.with_full_sync_period(Duration::from_secs(1));
    assert_eq!(agent.full_sync_period, SyncSettings::default().sync_period);
}

#[tokio::test(start_paused = true)]
async fn a_node_change_forces_a_full_sync() {
    let h = Harness::start(SyncSettings::default());
    for e in resets() {
        h.send(e);
    }
    sleep_ms(2_000).await;
    // The same Node again (a status heartbeat) changes nothing.
    h.send(Event::Node(Update::Apply(NodeInfo::default())));
    sleep_ms(2_000).await;
    assert_eq!(h.syncs().len(), 1);
    h.send(Event::Node(Update::Apply(NodeInfo {
        addresses: vec!["192.168.50.10".parse().unwrap()],
        ..NodeInfo::default()
    })));
    sleep_ms(10).await;
    let syncs = h.syncs();
    assert_eq!(syncs.len(), 2);
    assert!(syncs[1].full, "a Node change rewrites everything");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_drift_check_that_fails_is_treated_as_drift() {
    struct Broken;
    impl crate::dataplane::Dataplane for Broken {
        fn name(&self) -> &'static str {
            "broken"
        }
        fn sync(
            &mut self,
            _: &crate::track::BackendTable,
            _: &crate::dataplane::SyncScope,
        ) -> Result<crate::dataplane::SyncStats, crate::dataplane::DataplaneError> {
            Ok(Default::default())
        }
        fn cleanup(&mut self) -> Result<(), crate::dataplane::DataplaneError> {
            Ok(())
        }
        fn check_drift(&mut self) -> Result<Drift, crate::dataplane::DataplaneError> {
            Err(crate::dataplane::DataplaneError::Other("lock held".into()))
        }
    }
    let mut agent = Agent::new(
        Tracker::new(NodeContext::new("node-a")),
        Broken,
        SyncSettings::default(),
    );
    let now = Instant::now();
    for e in resets() {
        agent.handle(e, now);
    }
    agent.tick(now);
    assert_eq!(agent.status.counters.full_syncs, 1);
    let tick = now + Duration::from_secs(30);
    assert_eq!(agent.next_deadline(), Some(tick));
    agent.tick(tick);
    assert_eq!(agent.status.counters.drift_found, 1);
    assert!(agent.next_deadline().unwrap() <= tick, "a full sync is owed at once");
    agent.tick(tick);
    assert_eq!(agent.status.counters.full_syncs, 2);
}

#[tokio::test(start_paused = true)]
async fn failed_sync_is_counted_and_retried_as_full_with_backoff() {
    let h = Harness::start(SyncSettings::default());
    for e in resets() {
        h.send(e);
    }
    sleep_ms(2_000).await;
    h.handle.fail_next(2);
    let start = Instant::now();
    h.send(Event::Slice(Update::Apply(eps("a", &["10.244.1.9"]))));
    sleep_ms(10).await;
    assert!(h.status.borrow().failing);
    // Retries after 1 s, then 2 s; both as full syncs.
    sleep_ms(995).await;
    assert_eq!(h.syncs().len(), 3);
    sleep_ms(1_000).await;
    assert_eq!(h.syncs().len(), 3, "second retry waits 2 s");
    sleep_ms(1_100).await;
    let syncs = h.syncs();
    assert_eq!(syncs.len(), 4);
    assert_eq!(
        syncs.iter().map(|s| (s.full, s.failed)).collect::<Vec<_>>(),
        [(true, false), (false, true), (true, true), (true, false)]
    );
    assert!(start.elapsed() >= Duration::from_secs(3));
    let status = h.status.borrow().clone();
    assert!(!status.failing);
    assert_eq!(status.counters.failed_syncs, 2);
    assert_eq!(status.counters.full_syncs, 2);
    assert_eq!(
        h.handle.programmed()[&key("a")].families[0].cluster,
        ["10.244.1.9:8080".parse().unwrap()]
    );
    h.stop().await;
}

#[test]
fn retry_delay_doubles_up_to_sync_period() {
    let s = SyncSettings {
        min_sync_period: Duration::from_secs(1),
        sync_period: Duration::from_secs(30),
    };
    let delays: Vec<u64> = (1..=7).map(|n| s.retry_delay(n).as_secs()).collect();
    assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
}

#[tokio::test(start_paused = true)]
async fn relist_after_a_gap_deletes_what_vanished_in_one_sync() {
    let h = Harness::start(SyncSettings::default());
    for e in resets() {
        h.send(e);
    }
    sleep_ms(2_000).await;
    // The watch reconnects: service b and its slice vanished meanwhile.
    h.send(Event::WatchError {
        resource: "services",
        message: "connection reset".into(),
    });
    h.send(Event::Service(Update::Reset {
        objects: vec![svc("a", "10.96.0.1")],
        keep: vec![],
    }));
    h.send(Event::Slice(Update::Reset {
        objects: vec![eps("a", &["10.244.1.1"])],
        keep: vec![],
    }));
    sleep_ms(10).await;
    let syncs = h.syncs();
    assert_eq!(syncs.len(), 2);
    assert_eq!(syncs[1].touched, vec![key("b")]);
    assert_eq!(
        h.handle.programmed().keys().cloned().collect::<Vec<_>>(),
        vec![key("a")]
    );
    let agent = h.stop().await;
    assert_eq!(agent.status.counters.watch_errors, 1);
}

#[derive(Clone, Default)]
struct RecordingCleaner(std::sync::Arc<std::sync::Mutex<Vec<std::collections::BTreeSet<StaleFlow>>>>);

impl FlowCleaner for RecordingCleaner {
    fn clear(
        &mut self,
        flows: &std::collections::BTreeSet<StaleFlow>,
    ) -> Result<usize, crate::dataplane::conntrack::ConntrackError> {
        self.0.lock().unwrap().push(flows.clone());
        Ok(flows.len())
    }
}

#[tokio::test(start_paused = true)]
async fn stale_udp_flows_are_cleared_after_the_sync_that_removed_them() {
    let dataplane = MemoryDataplane::new();
    let cleaner = RecordingCleaner::default();
    let mut agent = Agent::new(
        Tracker::new(NodeContext::new("node-a")),
        dataplane,
        SyncSettings::default(),
    )
    .with_flow_cleaner(Box::new(cleaner.clone()));
    let dns = service(
        "ns",
        "dns",
        json!({"clusterIP": "10.96.0.10", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}),
    );
    let dns_eps = |ips: &[&str]| {
        let e: Vec<_> = ips.iter().map(|ip| ep(ip, "node-b")).collect();
        slice(
            "ns",
            "dns-1",
            "dns",
            "IPv4",
            json!([port("dns", 5353, "UDP")]),
            json!(e),
        )
    };
    let now = Instant::now();
    agent.handle(
        Event::Service(Update::Reset {
            objects: vec![dns],
            keep: vec![],
        }),
        now,
    );
    agent.handle(
        Event::Slice(Update::Reset {
            objects: vec![],
            keep: vec![],
        }),
        now,
    );
    agent.handle(
        Event::Node(Update::Reset {
            objects: vec![],
            keep: vec![],
        }),
        now,
    );
    agent.sync_now(now);
    assert!(cleaner.0.lock().unwrap().is_empty(), "no endpoints yet: nothing stale");
    agent.handle(Event::Slice(Update::Apply(dns_eps(&["10.244.1.1", "10.244.1.2"]))), now);
    agent.sync_now(now);
    agent.handle(Event::Slice(Update::Apply(dns_eps(&["10.244.1.2"]))), now);
    agent.sync_now(now);
    let calls = cleaner.0.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![
            [StaleFlow::ToFrontend(
                crate::model::Protocol::Udp,
                "10.96.0.10:53".parse().unwrap()
            )]
            .into(),
            [StaleFlow::ToEndpoint(
                crate::model::Protocol::Udp,
                "10.244.1.1:5353".parse().unwrap()
            )]
            .into(),
        ]
    );
    assert_eq!(agent.status.counters.conntrack_deleted, 2);
}

/// A dataplane whose housekeeping wants two more rounds, one second apart.
struct Draining {
    rounds: std::sync::Arc<std::sync::Mutex<Vec<Instant>>>,
}

impl crate::dataplane::Dataplane for Draining {
    fn name(&self) -> &'static str {
        "draining"
    }
    fn sync(
        &mut self,
        _: &crate::track::BackendTable,
        _: &crate::dataplane::SyncScope,
    ) -> Result<crate::dataplane::SyncStats, crate::dataplane::DataplaneError> {
        Ok(Default::default())
    }
    fn cleanup(&mut self) -> Result<(), crate::dataplane::DataplaneError> {
        Ok(())
    }
    fn housekeeping(&mut self) -> Result<Option<Duration>, crate::dataplane::DataplaneError> {
        let mut rounds = self.rounds.lock().unwrap();
        rounds.push(Instant::now());
        Ok((rounds.len() < 3).then_some(Duration::from_secs(1)))
    }
}

#[tokio::test(start_paused = true)]
async fn housekeeping_runs_after_a_sync_until_the_dataplane_is_done() {
    let rounds = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let agent = Agent::new(
        Tracker::new(NodeContext::new("node-a")),
        Draining { rounds: rounds.clone() },
        SyncSettings::default(),
    );
    let (tx, rx) = mpsc::unbounded();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(rx, async move {
        let _ = stopped.await;
    }));
    let start = Instant::now();
    for e in resets() {
        tx.unbounded_send(e).unwrap();
    }
    sleep_ms(10_000).await;
    let times: Vec<u64> = rounds.lock().unwrap().iter().map(|t| (*t - start).as_secs()).collect();
    assert_eq!(
        times,
        [0, 1, 2],
        "right after the first sync, then every second while it asks"
    );
    let _ = stop.send(());
    task.await.unwrap();
}
