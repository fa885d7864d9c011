//! The dataplane seam: one trait every mode implements. A backend remembers
//! what it applied and turns a [`SyncScope`] into the smallest edit it can;
//! a periodic full sync repairs drift. The real backends (iptables,
//! nftables, ipvs) live in their own modules, built by [`build`]; with the
//! `testing` feature, `memory::MemoryDataplane` records what it was asked
//! to program, for tests.

pub mod build;
pub mod conntrack;
pub mod exec;
pub mod frontends;
pub mod iptables;
pub mod ipvs;
#[cfg(any(test, feature = "testing"))]
pub mod memory;
pub mod nftables;
pub mod programmed;
pub mod xtables;

use std::time::Duration;

use crate::track::{BackendTable, ChangeSet};

/// What a sync must cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncScope {
    /// Rebuild everything from the table (first sync, periodic, after a failure).
    Full,
    /// Only these service ports changed since the last successful sync.
    Partial(ChangeSet),
}

impl SyncScope {
    /// Whether this is a full sync.
    pub fn is_full(&self) -> bool {
        matches!(self, SyncScope::Full)
    }
}

/// What one successful sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Service ports whose rules were (re)written.
    pub ports_written: usize,
    /// Service ports whose rules were removed.
    pub ports_removed: usize,
    /// Bytes sent to the kernel or a restore tool, where that means something.
    pub bytes_written: usize,
    /// Time spent in the backend.
    pub duration: Duration,
}

/// What a backend was doing when the kernel or a tool failed it. Metrics
/// and logs classify failures by this, never by a tool's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// An `iptables-restore` transaction (the iptables mode's rules, the
    /// IPVS mode's iptables layer).
    XtablesRestore,
    /// Reading rules back with `iptables-save`.
    XtablesSave,
    /// One `iptables` command (a jump from a built-in chain, a chain flush).
    XtablesCommand,
    /// `ipset` (the IPVS mode's sets).
    Ipset,
    /// The IPVS generic-netlink interface (virtual and real servers).
    Ipvs,
    /// rtnetlink: the IPVS mode's dummy interface and its addresses.
    Links,
    /// An nf_tables netlink transaction (the nftables mode's table).
    NfTables,
    /// A failure injected by a test dataplane.
    Injected,
}

impl Operation {
    /// The tool or interface, as errors name it.
    pub fn tool(self) -> &'static str {
        match self {
            Operation::XtablesRestore => "iptables-restore",
            Operation::XtablesSave => "iptables-save",
            Operation::XtablesCommand => "iptables",
            Operation::Ipset => "ipset",
            Operation::Ipvs => "netlink",
            Operation::Links => "rtnetlink",
            Operation::NfTables => "nf_tables",
            Operation::Injected => "memory",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.tool())
    }
}

/// A backend failure. The agent logs and counts it, keeps running, and
/// retries with a full sync; the previous rules stay in place.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The kernel (or a restore tool) refused the change.
    #[error("{op} refused the update: {message}")]
    Refused {
        /// What was refused.
        op: Operation,
        /// What the kernel or the tool said.
        message: String,
    },
    /// A tool could not be run at all.
    #[error("cannot run {op}: {source}")]
    Exec {
        /// What it was for.
        op: Operation,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Anything else, with context.
    #[error("{0}")]
    Other(String),
}

impl DataplaneError {
    /// Whether this is `op`, refused (a tool that could not start is not a
    /// refusal).
    pub fn is_refused(&self, op: Operation) -> bool {
        matches!(self, DataplaneError::Refused { op: o, .. } if *o == op)
    }
}

/// What a drift check found (see [`Dataplane::check_drift`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// The markers the check looks at are as the last sync left them.
    None,
    /// Something else changed our rules; the agent repairs with a full sync.
    Found(String),
}

/// A way of programming the kernel's load-balancing rules.
pub trait Dataplane: Send {
    /// Short name for logs and metrics (`iptables`, `nftables`, `ipvs`, `memory`).
    fn name(&self) -> &'static str;

    /// Bring the kernel in line with `table` for `scope`. A partial sync
    /// touches only the listed service ports (a port missing from the table
    /// is removed). On error nothing already working may be taken down.
    fn sync(&mut self, table: &BackendTable, scope: &SyncScope) -> Result<SyncStats, DataplaneError>;

    /// Remove everything this backend ever created, and nothing else.
    fn cleanup(&mut self) -> Result<(), DataplaneError>;

    /// Work between syncs that cannot wait for the next one (IPVS real
    /// servers that finished draining). Returns when it wants to run
    /// again; `None` when there is nothing left to do.
    fn housekeeping(&mut self) -> Result<Option<Duration>, DataplaneError> {
        Ok(None)
    }

    /// A cheap look at whether someone else changed what the last sync
    /// programmed (a flushed table, a deleted jump or canary chain), run on
    /// every `--sync-period` tick instead of a full rewrite. It must cost a
    /// few commands, not a dump of every rule; what it cannot see is
    /// repaired by the rare periodic full sync. The default sees nothing.
    fn check_drift(&mut self) -> Result<Drift, DataplaneError> {
        Ok(Drift::None)
    }
}

impl Dataplane for Box<dyn Dataplane> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn sync(&mut self, table: &BackendTable, scope: &SyncScope) -> Result<SyncStats, DataplaneError> {
        (**self).sync(table, scope)
    }
    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        (**self).cleanup()
    }
    fn housekeeping(&mut self) -> Result<Option<Duration>, DataplaneError> {
        (**self).housekeeping()
    }
    fn check_drift(&mut self) -> Result<Drift, DataplaneError> {
        (**self).check_drift()
    }
}

/// `net.ipv4.conf.all.route_localnet=1` in the calling thread's network
/// namespace: node ports on 127.0.0.1 DNAT to other hosts, which the
/// kernel refuses for loopback sources without it. Shared by the modes
/// that serve node ports on localhost.
pub fn enable_route_localnet() -> std::io::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/conf/all/route_localnet", b"1")
}
