//! The agent (watches + tracker + runner) with the in-memory dataplane,
//! running against a real API server inside a test.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sliceproxy::dataplane::memory::{MemoryDataplane, MemoryHandle, SyncRecord};
use sliceproxy::model::ServicePortKey;
use sliceproxy::policy::{NodeContext, PortPlan};
use sliceproxy::sync::{Agent, AgentStatus, SyncSettings};
use sliceproxy::track::Tracker;
use sliceproxy::watch::{WatchConfig, watch_all};
use tokio::sync::{oneshot, watch};

/// Settings for tests: quick coalescing, no periodic full sync to blur the
/// one-sync-per-change assertions.
pub const TEST_SETTINGS: SyncSettings = SyncSettings {
    min_sync_period: Duration::from_millis(200),
    sync_period: Duration::from_secs(3600),
};

/// A running agent.
pub struct RunningAgent {
    /// The dataplane's state.
    pub dataplane: MemoryHandle,
    /// The agent's status.
    pub status: watch::Receiver<AgentStatus>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Agent<MemoryDataplane>>,
}

/// Start the agent for `node` on `client`.
pub fn start(client: kube::Client, node: &str) -> RunningAgent {
    let dataplane = MemoryDataplane::new();
    let handle = dataplane.handle();
    handle.record_snapshots();
    let agent = Agent::new(Tracker::new(NodeContext::new(node)), dataplane, TEST_SETTINGS);
    let status = agent.subscribe();
    let events = watch_all(
        client,
        &WatchConfig {
            node_name: node.to_string(),
        },
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(events, async move {
        let _ = stopped.await;
    }));
    RunningAgent {
        dataplane: handle,
        status,
        stop: Some(stop),
        task,
    }
}

impl RunningAgent {
    /// What is programmed for one namespace.
    pub fn programmed(&self, ns: &str) -> BTreeMap<ServicePortKey, PortPlan> {
        self.dataplane
            .programmed()
            .into_iter()
            .filter(|(k, _)| &*k.service.namespace == ns)
            .collect()
    }

    /// Successful syncs so far.
    pub fn syncs(&self) -> Vec<SyncRecord> {
        self.dataplane.syncs().into_iter().filter(|s| !s.failed).collect()
    }

    /// Wait (up to 30 s) until `pred` holds for what is programmed in `ns`.
    pub async fn wait_for(&self, ns: &str, what: &str, pred: impl Fn(&BTreeMap<ServicePortKey, PortPlan>) -> bool) {
        self.wait_for_within(Duration::from_secs(30), ns, what, pred).await;
    }

    /// [`wait_for`](Self::wait_for) with a deadline of `timeout`.
    pub async fn wait_for_within(
        &self,
        timeout: Duration,
        ns: &str,
        what: &str,
        pred: impl Fn(&BTreeMap<ServicePortKey, PortPlan>) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let programmed = self.programmed(ns);
            if pred(&programmed) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; programmed in {ns}: {:#?}\nstatus: {:?}",
                    programmed.keys().collect::<Vec<_>>(),
                    self.status.borrow()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait for the first (full) sync.
    pub async fn wait_initialized(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.syncs().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "agent never synced: {:?}",
                self.status.borrow()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Run `change`, then expect exactly one new sync, partial, touching
    /// exactly `expected` among the ports of `ns` (other namespaces belong to
    /// other tests). Waits a settle period after it to catch extra syncs.
    pub async fn expect_one_sync<F: std::future::Future<Output = ()>>(
        &self,
        ns: &str,
        expected: &[ServicePortKey],
        change: F,
    ) {
        let before = self.syncs().len();
        change.await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.syncs().len() == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no sync after the change; expected one touching {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Longer than min_sync_period: a second sync would have run by now.
        tokio::time::sleep(TEST_SETTINGS.min_sync_period * 4).await;
        let new: Vec<SyncRecord> = self.syncs().split_off(before);
        let ours: Vec<BTreeSet<ServicePortKey>> = new
            .iter()
            .map(|s| {
                s.touched
                    .iter()
                    .filter(|k| &*k.service.namespace == ns)
                    .cloned()
                    .collect::<BTreeSet<_>>()
            })
            .filter(|t| !t.is_empty())
            .collect();
        let expected: BTreeSet<ServicePortKey> = expected.iter().cloned().collect();
        assert_eq!(
            ours,
            vec![expected],
            "exactly one sync touching exactly these ports; syncs: {new:#?}"
        );
        assert!(new.iter().all(|s| !s.full), "a partial sync, not a full one");
    }

    /// Expect no sync touching `ns` while `change` runs and settles.
    pub async fn expect_no_sync<F: std::future::Future<Output = ()>>(&self, ns: &str, change: F) {
        let before = self.syncs().len();
        change.await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let new: Vec<SyncRecord> = self.syncs().split_off(before);
        assert!(
            new.iter()
                .all(|s| s.touched.iter().all(|k| &*k.service.namespace != ns)),
            "expected no sync for {ns}: {new:#?}"
        );
    }

    /// Stop the agent; its rules (the in-memory ones) stay.
    pub async fn stop(mut self) -> Agent<MemoryDataplane> {
        let _ = self.stop.take().expect("running").send(());
        self.task.await.expect("agent task")
    }
}
