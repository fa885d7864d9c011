//! The agent task: the one owner of the tracker and the dataplane. It folds
//! watch events into the table, coalesces the resulting ChangeSets, and runs
//! the dataplane like kube-proxy's bounded-frequency runner: at most once per
//! `min_sync_period`; every `sync_period` a tick that writes only what
//! changed (nothing, when nothing did) and runs the dataplane's cheap drift
//! check; a full rewrite only on the first sync, after a failure (retried
//! with exponential backoff), when the Node or the node's addresses change,
//! when the drift check finds our rules changed behind our back, and every
//! `full_sync_period` (an hour by default, as kube-proxy's
//! `fullSyncPeriod`). A full rewrite at every tick is what made a large
//! cluster's agent never rest: at 5,000 services it took longer than the
//! tick itself.

use std::future::Future;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;

use std::collections::{BTreeSet, HashMap};

use crate::dataplane::conntrack::{FlowCleaner, StaleFlow, stale_udp_flows};
use crate::dataplane::{Dataplane, DataplaneError, Drift, SyncScope, SyncStats};
use crate::model::{NodeInfo, Protocol, ServicePortKey};
use crate::policy::PortPlan;
use crate::track::{BackendTable, ChangeSet, Tracker};
use crate::watch::{Event, Update};

/// Timing of the runner (kube-proxy's `--min-sync-period` and `--sync-period`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncSettings {
    /// Never sync more often than this; changes inside it are coalesced.
    pub min_sync_period: Duration,
    /// The periodic tick (`--sync-period`): write what is pending and
    /// check for drift. Not a full rewrite: see [`DEFAULT_FULL_SYNC_PERIOD`].
    pub sync_period: Duration,
}

/// How often the agent rewrites everything even when nothing drifted
/// (kube-proxy's `fullSyncPeriod`, an hour): it repairs what the cheap
/// drift check cannot see, such as a rule deleted from the middle of one of
/// our chains. Change it with [`Agent::with_full_sync_period`].
pub const DEFAULT_FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
        }
    }
}

impl SyncSettings {
    /// Delay before retry number `failures` (1-based): doubling from
    /// `min_sync_period` (at least 1s), capped at `sync_period`.
    pub fn retry_delay(&self, failures: u32) -> Duration {
        let base = self.min_sync_period.max(Duration::from_secs(1));
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        base.saturating_mul(factor).min(self.sync_period.max(base))
    }
}

/// Counters the agent keeps (exported as metrics by the health/metrics layer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncCounters {
    /// Successful full syncs.
    pub full_syncs: u64,
    /// Successful partial syncs.
    pub partial_syncs: u64,
    /// Failed syncs (each is retried as a full sync).
    pub failed_syncs: u64,
    /// Drift checks run on the periodic tick.
    pub drift_checks: u64,
    /// Drift checks that found our rules changed (or could not tell), each
    /// repaired by a full sync.
    pub drift_found: u64,
    /// Watch errors (each watch retries by itself with backoff).
    pub watch_errors: u64,
    /// Objects refused by conversion.
    pub invalid_objects: u64,
    /// Service ports changed by events (summed over ChangeSets).
    pub service_port_changes: u64,
    /// Stale UDP conntrack entries deleted.
    pub conntrack_deleted: u64,
    /// Failed conntrack cleanups.
    pub conntrack_errors: u64,
}

/// What the agent publishes after every step, for health checks and tests.
#[derive(Debug, Clone, Default)]
pub struct AgentStatus {
    /// Services, EndpointSlices and the Node have all been listed once.
    pub initialized: bool,
    /// When the last sync succeeded.
    pub last_sync: Option<Instant>,
    /// When the oldest change not yet programmed arrived.
    pub pending_since: Option<Instant>,
    /// The last sync failed and a retry is scheduled.
    pub failing: bool,
    /// The last successful sync's stats.
    pub last_stats: Option<SyncStats>,
    /// The most recent watch error, for operators and tests.
    pub last_watch_error: Option<String>,
    /// Counters.
    pub counters: SyncCounters,
}

/// What kind of object a change came from (kube-proxy counts Service and
/// endpoint changes separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A Service event.
    Service,
    /// An EndpointSlice event.
    Endpoints,
    /// The agent's own Node (zone) changed.
    Node,
}

/// Told about every change and every sync, for health, metrics and the
/// health-check node ports. It runs on the agent task between syncs, so it
/// must not block.
pub trait SyncObserver: Send {
    /// An event changed `changes`, which now wait for the next sync.
    /// `trigger` is the EndpointSlice's last-change-trigger-time, if any.
    fn changed(&mut self, _kind: ChangeKind, _changes: &ChangeSet, _trigger: Option<std::time::SystemTime>) {}
    /// The agent's own Node changed (`None`: deleted).
    fn node(&mut self, _node: Option<&NodeInfo>) {}
    /// A sync ran over `scope`, taking `elapsed`, with `result`.
    fn synced(
        &mut self,
        _table: &BackendTable,
        _scope: &SyncScope,
        _result: Result<&SyncStats, &DataplaneError>,
        _elapsed: Duration,
    ) {
    }
}

/// The first complete list of each watched kind.
#[derive(Debug, Clone, Copy, Default)]
struct Listed {
    services: bool,
    slices: bool,
    node: bool,
}

impl Listed {
    fn all(&self) -> bool {
        self.services && self.slices && self.node
    }
}

/// The agent: tracker + dataplane + runner state.
pub struct Agent<D: Dataplane> {
    tracker: Tracker,
    dataplane: D,
    settings: SyncSettings,
    pending: ChangeSet,
    full_pending: bool,
    listed: Listed,
    last_attempt: Option<Instant>,
    next_full: Option<Instant>,
    /// The next periodic tick's drift check.
    next_check: Option<Instant>,
    full_sync_period: Duration,
    /// The agent's own Node as last seen: a change owes a full sync.
    node: Option<NodeInfo>,
    retry_at: Option<Instant>,
    failures: u32,
    status: AgentStatus,
    status_tx: watch::Sender<AgentStatus>,
    cleaner: Option<Box<dyn FlowCleaner>>,
    /// The UDP plans as last programmed, to tell which flows went stale.
    udp_plans: HashMap<ServicePortKey, PortPlan>,
    observer: Option<Box<dyn SyncObserver>>,
    /// When the dataplane wants its housekeeping to run next.
    housekeeping_at: Option<Instant>,
    /// Bumped by whoever knows the node's state outside the API changed
    /// (its addresses): each bump owes a full sync.
    resync: Option<watch::Receiver<u64>>,
}

impl<D: Dataplane> Agent<D> {
    /// A new agent; nothing syncs until every kind has been listed.
    pub fn new(tracker: Tracker, dataplane: D, settings: SyncSettings) -> Agent<D> {
        let (status_tx, _) = watch::channel(AgentStatus::default());
        Agent {
            tracker,
            dataplane,
            settings,
            pending: ChangeSet::new(),
            full_pending: true,
            listed: Listed::default(),
            last_attempt: None,
            next_full: None,
            next_check: None,
            full_sync_period: DEFAULT_FULL_SYNC_PERIOD,
            node: None,
            retry_at: None,
            failures: 0,
            status: AgentStatus::default(),
            status_tx,
            cleaner: None,
            udp_plans: HashMap::new(),
            observer: None,
            housekeeping_at: None,
            resync: None,
        }
    }

    /// Report every change and sync to `observer` (metrics, health).
    pub fn with_observer(mut self, observer: Box<dyn SyncObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Run a full sync whenever `trigger` changes (e.g. the node's addresses
    /// changed, which node-port rules depend on but no API object carries).
    pub fn with_resync_trigger(mut self, trigger: watch::Receiver<u64>) -> Self {
        self.resync = Some(trigger);
        self
    }

    /// Rewrite everything this often even without drift (default
    /// [`DEFAULT_FULL_SYNC_PERIOD`]); never more often than `sync_period`.
    pub fn with_full_sync_period(mut self, period: Duration) -> Self {
        self.full_sync_period = period.max(self.settings.sync_period);
        self
    }

    /// Owe a full sync at the next deadline.
    pub fn request_full_sync(&mut self) {
        self.full_pending = true;
    }

    /// Delete stale UDP conntrack entries after each sync with `cleaner`.
    pub fn with_flow_cleaner(mut self, cleaner: Box<dyn FlowCleaner>) -> Self {
        self.cleaner = Some(cleaner);
        self
    }

    /// After a successful sync: which UDP flows did it leave stale?
    fn stale_flows(&mut self, scope: &SyncScope) -> BTreeSet<StaleFlow> {
        let table = self.tracker.table();
        let keys: Vec<ServicePortKey> = match scope {
            SyncScope::Full => {
                let mut keys: BTreeSet<ServicePortKey> = self.udp_plans.keys().cloned().collect();
                keys.extend(
                    table
                        .plans()
                        .filter(|(k, _)| k.protocol == Protocol::Udp)
                        .map(|(k, _)| k.clone()),
                );
                keys.into_iter().collect()
            }
            SyncScope::Partial(changes) => changes
                .iter()
                .filter(|k| k.protocol == Protocol::Udp)
                .cloned()
                .collect(),
        };
        let mut stale = BTreeSet::new();
        for key in keys {
            let new = table.plan(&key);
            stale.extend(stale_udp_flows(self.udp_plans.get(&key), new));
            match new {
                Some(p) => {
                    self.udp_plans.insert(key, p.clone());
                }
                None => {
                    self.udp_plans.remove(&key);
                }
            }
        }
        stale
    }

    fn clear_stale_flows(&mut self, scope: &SyncScope) {
        let stale = self.stale_flows(scope);
        let Some(cleaner) = self.cleaner.as_mut() else { return };
        if stale.is_empty() {
            return;
        }
        match run_blocking(|| cleaner.clear(&stale)) {
            Ok(n) => {
                tracing::debug!(flows = stale.len(), deleted = n, "cleared stale UDP conntrack entries");
                self.status.counters.conntrack_deleted += n as u64;
            }
            Err(e) => {
                // Stale entries expire by themselves; a failure here must not
                // fail the sync that already programmed the rules.
                tracing::warn!(error = %e, "could not clear stale UDP conntrack entries");
                self.status.counters.conntrack_errors += 1;
            }
        }
    }

    /// Follow the agent's status.
    pub fn subscribe(&self) -> watch::Receiver<AgentStatus> {
        self.status_tx.subscribe()
    }

    /// The tracker (and through it the table).
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// The dataplane.
    pub fn dataplane(&self) -> &D {
        &self.dataplane
    }

    /// Fold one event into the table; returns the service ports it changed.
    pub fn handle(&mut self, event: Event, now: Instant) -> ChangeSet {
        let (kind, trigger) = match &event {
            Event::Service(_) => (ChangeKind::Service, None),
            Event::Slice(Update::Apply(s)) => (ChangeKind::Endpoints, s.trigger_time),
            Event::Slice(_) => (ChangeKind::Endpoints, None),
            _ => (ChangeKind::Node, None),
        };
        if let Some(o) = self.observer.as_mut() {
            match &event {
                Event::Node(Update::Apply(n)) => o.node(Some(n)),
                Event::Node(Update::Reset { objects, keep }) if keep.is_empty() => o.node(objects.first()),
                Event::Node(Update::Delete(())) => o.node(None),
                _ => {}
            }
        }
        // kube-proxy resyncs fully when its Node changes: node-port
        // addresses and topology are in every service's rules.
        let node_update = match &event {
            Event::Node(Update::Apply(n)) => Some(Some(n.clone())),
            Event::Node(Update::Reset { objects, keep }) if keep.is_empty() => Some(objects.first().cloned()),
            Event::Node(Update::Delete(())) => Some(None),
            _ => None,
        };
        if let Some(node) = node_update {
            if self.listed.node && node != self.node {
                tracing::info!("the Node changed; full sync");
                self.full_pending = true;
                self.status.pending_since.get_or_insert(now);
            }
            self.node = node;
        }
        let t = &mut self.tracker;
        let changes = match event {
            Event::Service(Update::Reset { objects, keep }) => {
                self.listed.services = true;
                t.reset_services(objects, &keep)
            }
            Event::Service(Update::Apply(s)) => t.apply_service(s),
            Event::Service(Update::Delete(k)) => t.delete_service(&k),
            Event::Slice(Update::Reset { objects, keep }) => {
                self.listed.slices = true;
                t.reset_slices(objects, &keep)
            }
            Event::Slice(Update::Apply(s)) => t.apply_slice(s),
            Event::Slice(Update::Delete(k)) => t.delete_slice(&k),
            Event::Node(Update::Reset { objects, keep }) => {
                self.listed.node = true;
                // A Node that failed conversion keeps its last good state.
                if keep.is_empty() {
                    t.set_node(objects.first())
                } else {
                    ChangeSet::new()
                }
            }
            Event::Node(Update::Apply(n)) => t.set_node(Some(&n)),
            Event::Node(Update::Delete(())) => t.set_node(None),
            Event::WatchError { resource, message } => {
                tracing::warn!(resource, error = %message, "watch failed; retrying with backoff");
                self.status.counters.watch_errors += 1;
                self.status.last_watch_error = Some(format!("{resource}: {message}"));
                ChangeSet::new()
            }
            Event::Invalid(e) => {
                tracing::error!(error = %e, "ignoring invalid object; its last good version stays programmed");
                self.status.counters.invalid_objects += 1;
                ChangeSet::new()
            }
        };
        if !changes.is_empty() {
            tracing::debug!(ports = changes.len(), "table changed");
            self.status.counters.service_port_changes += changes.len() as u64;
            self.status.pending_since.get_or_insert(now);
            self.pending.merge(changes.clone());
            if let Some(o) = self.observer.as_mut() {
                o.changed(kind, &changes, trigger);
            }
        }
        self.status.initialized = self.listed.all();
        self.publish();
        changes
    }

    /// When the next sync is due, or `None` if nothing is due (or the agent
    /// is still waiting for its first complete list).
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.listed.all() {
            return None;
        }
        if let Some(retry) = self.retry_at {
            return Some(retry);
        }
        let earliest = self
            .last_attempt
            .map_or_else(Instant::now, |t| t + self.settings.min_sync_period);
        let work = (self.full_pending || !self.pending.is_empty()).then_some(earliest);
        // Never before `earliest`: `tick` would do nothing and be woken again.
        let full = self.next_full.map(|t| t.max(earliest));
        let check = if self.full_pending { None } else { self.next_check };
        [work, full, check].into_iter().flatten().min()
    }

    /// What is due at `now`: a sync (full if one is owed, else partial over
    /// what changed; nothing at all when nothing did), then the periodic
    /// drift check if its tick has come.
    pub fn tick(&mut self, now: Instant) {
        let rested = self
            .last_attempt
            .is_none_or(|t| now >= t + self.settings.min_sync_period);
        let full = self.full_pending || self.next_full.is_some_and(|t| now >= t);
        if (full || !self.pending.is_empty()) && rested {
            self.sync_now(now);
        }
        if self.retry_at.is_none() && !self.full_pending && self.next_check.is_some_and(|t| now >= t) {
            self.check_drift(now);
        }
    }

    /// Ask the dataplane whether its rules drifted; owe a full sync if so
    /// (or if it cannot tell).
    pub fn check_drift(&mut self, now: Instant) {
        self.next_check = Some(now + self.settings.sync_period);
        self.status.counters.drift_checks += 1;
        let started = std::time::Instant::now();
        let result = run_blocking(|| self.dataplane.check_drift());
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let found = match result {
            Ok(Drift::None) => {
                tracing::debug!(mode = self.dataplane.name(), elapsed_ms, "no drift");
                self.publish();
                return;
            }
            Ok(Drift::Found(what)) => what,
            Err(e) => format!("drift check failed: {e}"),
        };
        tracing::warn!(
            mode = self.dataplane.name(),
            drift = %found,
            elapsed_ms,
            "rules changed behind our back; repairing with a full sync"
        );
        self.status.counters.drift_found += 1;
        self.full_pending = true;
        self.status.pending_since.get_or_insert(now);
        self.publish();
    }

    /// Run one sync now: full if one is owed (first sync, periodic, after a
    /// failure), else partial over the coalesced ChangeSet.
    pub fn sync_now(&mut self, now: Instant) {
        let full = self.full_pending || self.next_full.is_some_and(|t| now >= t);
        let changes = self.pending.take();
        let scope = if full {
            SyncScope::Full
        } else {
            SyncScope::Partial(changes)
        };
        self.last_attempt = Some(now);
        let started = std::time::Instant::now();
        let result = run_blocking(|| self.dataplane.sync(self.tracker.table(), &scope));
        if let Some(o) = self.observer.as_mut() {
            o.synced(self.tracker.table(), &scope, result.as_ref(), started.elapsed());
        }
        match result {
            Ok(stats) => {
                tracing::info!(
                    mode = self.dataplane.name(),
                    full,
                    ports_written = stats.ports_written,
                    ports_removed = stats.ports_removed,
                    bytes = stats.bytes_written,
                    elapsed_ms = stats.duration.as_secs_f64() * 1000.0,
                    "synced"
                );
                if full {
                    self.status.counters.full_syncs += 1;
                    self.next_full = Some(now + self.full_sync_period);
                    self.next_check = Some(now + self.settings.sync_period);
                } else {
                    self.status.counters.partial_syncs += 1;
                }
                self.full_pending = false;
                self.retry_at = None;
                self.failures = 0;
                self.status.failing = false;
                self.status.last_sync = Some(now);
                self.status.pending_since = None;
                self.status.last_stats = Some(stats);
                self.clear_stale_flows(&scope);
                // A sync may have started draining something: look soon.
                self.housekeeping_at = Some(now);
            }
            Err(e) => {
                self.failures += 1;
                let delay = self.settings.retry_delay(self.failures);
                tracing::error!(
                    mode = self.dataplane.name(),
                    full,
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "sync failed; previous rules stay in place, retrying as a full sync"
                );
                self.status.counters.failed_syncs += 1;
                // The changes it carried are covered by the full sync.
                self.full_pending = true;
                self.retry_at = Some(now + delay);
                self.status.failing = true;
                self.status.pending_since.get_or_insert(now);
            }
        }
        self.publish();
    }

    fn publish(&self) {
        self.status_tx.send_replace(self.status.clone());
    }

    /// Run the dataplane's housekeeping and schedule the next round.
    pub fn housekeeping(&mut self, now: Instant) {
        self.housekeeping_at = match run_blocking(|| self.dataplane.housekeeping()) {
            Ok(next) => next.map(|d| now + d),
            Err(e) => {
                tracing::warn!(mode = self.dataplane.name(), error = %e, "housekeeping failed; retrying");
                Some(now + self.settings.min_sync_period.max(Duration::from_secs(1)))
            }
        };
    }

    /// Remove everything the dataplane created.
    pub fn cleanup(&mut self) -> Result<(), crate::dataplane::DataplaneError> {
        self.dataplane.cleanup()
    }

    /// Run until the event stream ends or `shutdown` resolves. Rules stay in
    /// place on return: a restarting agent must not interrupt traffic.
    pub async fn run<S, F>(mut self, mut events: S, shutdown: F) -> Self
    where
        S: Stream<Item = Event> + Unpin,
        F: Future<Output = ()>,
    {
        tokio::pin!(shutdown);
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                // Timer first: a steady stream of events must not starve syncs.
                biased;
                _ = sleep_until(deadline), if deadline.is_some() => self.tick(Instant::now()),
                event = events.next() => match event {
                    Some(event) => { self.handle(event, Instant::now()); }
                    None => break,
                },
                _ = &mut shutdown => break,
                _ = sleep_until(self.housekeeping_at), if self.housekeeping_at.is_some() => self.housekeeping(Instant::now()),
                changed = resync_changed(&mut self.resync) => {
                    if changed {
                        tracing::info!("node state changed outside the API; full sync");
                        self.full_pending = true;
                    } else {
                        self.resync = None; // the sender is gone
                    }
                }
            }
        }
        self
    }
}

/// Wait for the resync trigger; never resolves without one.
async fn resync_changed(trigger: &mut Option<watch::Receiver<u64>>) -> bool {
    match trigger {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d).await;
    }
}

/// Backends block (they exec restore tools or talk netlink). On a
/// multi-threaded runtime, tell tokio so it moves other tasks (watches,
/// health) off this thread; on a current-thread runtime (tests) just call.
fn run_blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests;
