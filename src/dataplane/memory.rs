//! An in-memory dataplane: it keeps the plans it was asked to program and a
//! log of every sync call. Tests read both through a [`MemoryHandle`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::{Dataplane, DataplaneError, Drift, Operation, SyncScope, SyncStats};
use crate::model::ServicePortKey;
use crate::policy::PortPlan;
use crate::track::BackendTable;

/// One sync call as the backend saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRecord {
    /// A full sync.
    pub full: bool,
    /// The service ports the call wrote or removed (for a full sync, every
    /// port in the table).
    pub touched: Vec<ServicePortKey>,
    /// The call failed on purpose (see [`MemoryHandle::fail_next`]).
    pub failed: bool,
}

/// What the backend holds, shared with tests.
#[derive(Debug, Default)]
pub struct MemoryState {
    /// What is programmed now.
    pub programmed: BTreeMap<ServicePortKey, PortPlan>,
    /// Every sync call, oldest first.
    pub syncs: Vec<SyncRecord>,
    /// Fail this many upcoming syncs (simulates a kernel refusing rules).
    pub fail_next: usize,
    /// `cleanup` was called.
    pub cleaned_up: bool,
    /// Keep a copy of `programmed` after every successful sync (see
    /// [`MemoryHandle::record_snapshots`]).
    pub record_snapshots: bool,
    /// What was programmed after each successful sync, oldest first.
    pub snapshots: Vec<BTreeMap<ServicePortKey, PortPlan>>,
    /// Drift checks run so far.
    pub drift_checks: usize,
    /// The next drift check reports drift (simulates a flushed table);
    /// a full sync clears it.
    pub drifted: bool,
}

/// A cheap handle on the backend's state for assertions. The lock is only
/// ever contended by tests; the agent's hot path holds no other lock.
#[derive(Debug, Clone, Default)]
pub struct MemoryHandle(Arc<Mutex<MemoryState>>);

impl MemoryHandle {
    /// Lock the state.
    pub fn state(&self) -> MutexGuard<'_, MemoryState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make the next `n` syncs fail without changing anything.
    pub fn fail_next(&self, n: usize) {
        self.state().fail_next = n;
    }

    /// From now on keep what is programmed after every sync, so tests can
    /// check that no intermediate state was ever wrong (a half-empty table).
    pub fn record_snapshots(&self) {
        self.state().record_snapshots = true;
    }

    /// The snapshots recorded so far.
    pub fn snapshots(&self) -> Vec<BTreeMap<ServicePortKey, PortPlan>> {
        self.state().snapshots.clone()
    }

    /// Pretend someone flushed our rules: the next drift check sees it.
    pub fn drift(&self) {
        self.state().drifted = true;
    }

    /// Drift checks run so far.
    pub fn drift_checks(&self) -> usize {
        self.state().drift_checks
    }

    /// The sync log so far.
    pub fn syncs(&self) -> Vec<SyncRecord> {
        self.state().syncs.clone()
    }

    /// What is programmed now.
    pub fn programmed(&self) -> BTreeMap<ServicePortKey, PortPlan> {
        self.state().programmed.clone()
    }
}

/// The in-memory backend.
#[derive(Debug, Default)]
pub struct MemoryDataplane {
    handle: MemoryHandle,
}

impl MemoryDataplane {
    /// A new, empty backend.
    pub fn new() -> MemoryDataplane {
        MemoryDataplane::default()
    }

    /// A handle for reading its state.
    pub fn handle(&self) -> MemoryHandle {
        self.handle.clone()
    }
}

impl Dataplane for MemoryDataplane {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn sync(&mut self, table: &BackendTable, scope: &SyncScope) -> Result<SyncStats, DataplaneError> {
        let start = Instant::now();
        let mut state = self.handle.state();
        let touched: Vec<ServicePortKey> = match scope {
            SyncScope::Full => table.plans().map(|(k, _)| k.clone()).collect(),
            SyncScope::Partial(changes) => changes.iter().cloned().collect(),
        };
        if state.fail_next > 0 {
            state.fail_next -= 1;
            state.syncs.push(SyncRecord {
                full: scope.is_full(),
                touched,
                failed: true,
            });
            return Err(DataplaneError::Refused {
                op: Operation::Injected,
                message: "injected failure".into(),
            });
        }
        let mut stats = SyncStats::default();
        match scope {
            SyncScope::Full => {
                let before = state.programmed.len();
                state.programmed = table.plans().map(|(k, p)| (k.clone(), p.clone())).collect();
                state.drifted = false;
                stats.ports_written = state.programmed.len();
                stats.ports_removed = before.saturating_sub(stats.ports_written);
            }
            SyncScope::Partial(_) => {
                for key in &touched {
                    match table.plan(key) {
                        Some(plan) => {
                            state.programmed.insert(key.clone(), plan.clone());
                            stats.ports_written += 1;
                        }
                        None => {
                            state.programmed.remove(key);
                            stats.ports_removed += 1;
                        }
                    }
                }
            }
        }
        state.syncs.push(SyncRecord {
            full: scope.is_full(),
            touched,
            failed: false,
        });
        if state.record_snapshots {
            let snapshot = state.programmed.clone();
            state.snapshots.push(snapshot);
        }
        stats.duration = start.elapsed();
        Ok(stats)
    }

    fn check_drift(&mut self) -> Result<Drift, DataplaneError> {
        let mut state = self.handle.state();
        state.drift_checks += 1;
        Ok(if state.drifted {
            Drift::Found("memory: marked drifted".into())
        } else {
            Drift::None
        })
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        let mut state = self.handle.state();
        state.programmed.clear();
        state.cleaned_up = true;
        Ok(())
    }
}
