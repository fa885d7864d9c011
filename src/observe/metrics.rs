//! Prometheus metrics under kube-proxy's names (`pkg/proxy/metrics`), so
//! existing dashboards and alerts keep working. Served by
//! [`super::serve_metrics`] on `--metrics-bind-address`; fed by
//! [`super::Telemetry`].
//!
//! A new metric: a field of [`Metrics`], registered in [`Metrics::new`],
//! named in [`METRIC_NAMES`], and updated where the event is seen (the
//! telemetry observer for syncs and changes, a method here for anything
//! the HTTP side counts).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::dataplane::{DataplaneError, Operation};

/// The label of the probe counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

/// Every metric, shared by the agent task and the HTTP server (each metric
/// is an atomic behind an `Arc`, so clones are cheap and lock-free).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub(super) mode: &'static str,
    pub(super) sync_duration: Histogram,
    pub(super) sync_full_duration: Histogram,
    pub(super) sync_partial_duration: Histogram,
    pub(super) network_programming: Histogram,
    pub(super) last_timestamp: Gauge<f64, AtomicU64>,
    pub(super) last_queued_timestamp: Gauge<f64, AtomicU64>,
    pub(super) endpoint_changes: Counter,
    pub(super) service_changes: Counter,
    pub(super) endpoint_pending: Gauge,
    pub(super) service_pending: Gauge,
    restore_failures: Counter,
    partial_restore_failures: Counter,
    sync_failures: Counter,
    healthz: Family<CodeLabel, Counter>,
    livez: Family<CodeLabel, Counter>,
}

/// Every metric name exported (counters with their `_total` suffix), for
/// tests and documentation.
pub const METRIC_NAMES: &[&str] = &[
    "kubeproxy_sync_proxy_rules_duration_seconds",
    "kubeproxy_sync_full_proxy_rules_duration_seconds",
    "kubeproxy_sync_partial_proxy_rules_duration_seconds",
    "kubeproxy_network_programming_duration_seconds",
    "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
    "kubeproxy_sync_proxy_rules_endpoint_changes_total",
    "kubeproxy_sync_proxy_rules_service_changes_total",
    "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
    "kubeproxy_sync_proxy_rules_service_changes_pending",
    "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
    "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
    "sliceproxy_sync_proxy_rules_failures_total",
    "kubeproxy_proxy_healthz_total",
    "kubeproxy_proxy_livez_total",
];

/// Upstream's network-programming buckets: 0.25s, 0.5s, 1..59s, 60..115s, 2..5min.
fn network_programming_buckets() -> Vec<f64> {
    let mut b = vec![0.25, 0.5];
    b.extend((1..=59).map(f64::from));
    b.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    b.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    b
}

pub(super) fn seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Metrics {
    /// Register every metric; `mode` is what `/proxyMode` answers.
    pub fn new(mode: &'static str) -> Metrics {
        let sync_hist = || Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            mode,
            sync_duration: sync_hist(),
            sync_full_duration: sync_hist(),
            sync_partial_duration: sync_hist(),
            network_programming: Histogram::new(network_programming_buckets()),
            last_timestamp: Gauge::default(),
            last_queued_timestamp: Gauge::default(),
            endpoint_changes: Counter::default(),
            service_changes: Counter::default(),
            endpoint_pending: Gauge::default(),
            service_pending: Gauge::default(),
            restore_failures: Counter::default(),
            partial_restore_failures: Counter::default(),
            sync_failures: Counter::default(),
            healthz: Family::default(),
            livez: Family::default(),
        };
        let mut r = Registry::default();
        // prometheus-client appends `_total` to counters itself.
        r.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            m.sync_duration.clone(),
        );
        r.register(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            m.sync_full_duration.clone(),
        );
        r.register(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            m.sync_partial_duration.clone(),
        );
        r.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            m.network_programming.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            m.last_timestamp.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            m.last_queued_timestamp.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            m.endpoint_changes.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            m.service_changes.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            m.endpoint_pending.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            m.service_pending.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_iptables_restore_failures",
            "Cumulative proxy iptables restore failures",
            m.restore_failures.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures",
            "Cumulative proxy iptables partial restore failures",
            m.partial_restore_failures.clone(),
        );
        r.register(
            "sliceproxy_sync_proxy_rules_failures",
            "Failed syncs of any mode (each is retried as a full sync)",
            m.sync_failures.clone(),
        );
        r.register(
            "kubeproxy_proxy_healthz",
            "Cumulative proxy healthz HTTP status",
            m.healthz.clone(),
        );
        r.register(
            "kubeproxy_proxy_livez",
            "Cumulative proxy livez HTTP status",
            m.livez.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Count a failed sync: every failure, and a refused iptables-restore
    /// transaction (of any mode) as upstream's restore-failure counters,
    /// `full` or partial by the sync's scope.
    pub fn count_sync_failure(&self, error: &DataplaneError, full: bool) {
        self.sync_failures.inc();
        if error.is_refused(Operation::XtablesRestore) {
            if full {
                self.restore_failures.inc();
            } else {
                self.partial_restore_failures.inc();
            }
        }
    }

    /// Count one `/healthz` (or `/livez`) answer.
    pub fn count_probe(&self, healthz: bool, code: u16) {
        let family = if healthz { &self.healthz } else { &self.livez };
        family.get_or_create(&CodeLabel { code: code.to_string() }).inc();
    }
}

/// Parse the Prometheus/OpenMetrics text format into `name{labels} -> value`
/// (samples only), for tests and `diagnose`.
pub fn parse_text(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_exported() {
        let m = Metrics::new("iptables");
        m.count_probe(true, 200);
        m.count_probe(false, 503);
        let text = m.encode();
        for name in METRIC_NAMES {
            assert!(
                text.lines().any(|l| !l.starts_with('#') && l.starts_with(name)),
                "{name} missing from:\n{text}"
            );
        }
        assert!(network_programming_buckets().len() == 80);
    }

    fn sample(m: &Metrics, name: &str) -> f64 {
        parse_text(&m.encode())
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("{name} not exported"))
    }

    #[test]
    fn failures_are_counted_by_their_type() {
        let m = Metrics::new("iptables");
        let refused = |op| DataplaneError::Refused {
            op,
            message: "no".into(),
        };
        m.count_sync_failure(&refused(Operation::XtablesRestore), true);
        m.count_sync_failure(&refused(Operation::XtablesRestore), false);
        m.count_sync_failure(&refused(Operation::XtablesRestore), false);
        // Not a restore transaction, or a restore tool that never ran.
        m.count_sync_failure(&refused(Operation::XtablesCommand), true);
        m.count_sync_failure(&refused(Operation::Ipset), false);
        m.count_sync_failure(&refused(Operation::Ipvs), true);
        m.count_sync_failure(
            &DataplaneError::Exec {
                op: Operation::XtablesRestore,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            },
            true,
        );
        assert_eq!(sample(&m, "sliceproxy_sync_proxy_rules_failures_total"), 7.0);
        assert_eq!(
            sample(&m, "kubeproxy_sync_proxy_rules_iptables_restore_failures_total"),
            1.0
        );
        assert_eq!(
            sample(&m, "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total"),
            2.0
        );
    }
}
