//! Prometheus metrics under kube-proxy's names (`pkg/proxy/metrics`), so
//! existing dashboards and alerts keep working, served on
//! `--metrics-bind-address` with `/proxyMode` and `/healthz` beside them as
//! upstream does. [`Telemetry`] is the agent's [`SyncObserver`]: it feeds
//! the metrics, the Node eligibility of `/healthz`, and the health-check
//! node ports.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::dataplane::{DataplaneError, SyncScope, SyncStats};
use crate::health::{self, HealthError, ProxyHealth, Reply, ServiceHealthTargets};
use crate::model::{NodeInfo, ServicePortKey};
use crate::sync::{ChangeKind, SyncObserver};
use crate::track::{BackendTable, ChangeSet};

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
    mode: &'static str,
    sync_duration: Histogram,
    sync_full_duration: Histogram,
    sync_partial_duration: Histogram,
    network_programming: Histogram,
    last_timestamp: Gauge<f64, AtomicU64>,
    last_queued_timestamp: Gauge<f64, AtomicU64>,
    endpoint_changes: Counter,
    service_changes: Counter,
    endpoint_pending: Gauge,
    service_pending: Gauge,
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

fn seconds(t: SystemTime) -> f64 {
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

    /// Count one `/healthz` (or `/livez`) answer.
    pub fn count_probe(&self, healthz: bool, code: u16) {
        let family = if healthz { &self.healthz } else { &self.livez };
        family.get_or_create(&CodeLabel { code: code.to_string() }).inc();
    }

    /// Route a request path of the metrics server.
    pub fn handle(&self, path: &str, health: Option<&ProxyHealth>) -> Reply {
        match path {
            "/metrics" => Reply {
                status: StatusCode::OK,
                content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                headers: Vec::new(),
                body: self.encode(),
            },
            "/proxyMode" => Reply::text(StatusCode::OK, self.mode),
            // Upstream serves the health check here too.
            "/healthz" => match health {
                Some(h) => h.healthz(),
                None => Reply::text(StatusCode::OK, "ok"),
            },
            _ => Reply::text(StatusCode::NOT_FOUND, "404 page not found\n"),
        }
    }

    /// Serve `/metrics`, `/proxyMode` and `/healthz` on `addr`.
    pub async fn serve(
        self,
        addr: SocketAddr,
        health: Option<ProxyHealth>,
    ) -> Result<(SocketAddr, JoinHandle<()>), HealthError> {
        let listener = health::bind(addr).await?;
        let local = listener
            .local_addr()
            .map_err(|source| HealthError::Bind { addr, source })?;
        Ok((
            local,
            health::serve(listener, move |path| self.handle(path, health.as_ref())),
        ))
    }
}

/// The agent's observer: metrics, Node eligibility, health-check node ports,
/// and the trigger times waiting for the sync that programs them.
pub struct Telemetry {
    metrics: Metrics,
    health: Option<ProxyHealth>,
    targets: Option<watch::Sender<ServiceHealthTargets>>,
    /// Pending changes by kind (service ports), as upstream's pending gauges.
    pending_services: ChangeSet,
    pending_endpoints: ChangeSet,
    /// Oldest trigger time per service port not yet programmed.
    triggers: HashMap<ServicePortKey, SystemTime>,
    /// Shared with tests and `diagnose`: the last programmed targets.
    last_targets: Arc<Mutex<ServiceHealthTargets>>,
}

impl Telemetry {
    /// An observer feeding `metrics`.
    pub fn new(metrics: Metrics) -> Telemetry {
        Telemetry {
            metrics,
            health: None,
            targets: None,
            pending_services: ChangeSet::new(),
            pending_endpoints: ChangeSet::new(),
            triggers: HashMap::new(),
            last_targets: Arc::default(),
        }
    }

    /// Also tell `health` about the Node.
    pub fn with_health(mut self, health: ProxyHealth) -> Telemetry {
        self.health = Some(health);
        self
    }

    /// Also publish health-check node port targets after each successful sync.
    pub fn with_service_health(mut self, targets: watch::Sender<ServiceHealthTargets>) -> Telemetry {
        self.targets = Some(targets);
        self
    }
}

impl SyncObserver for Telemetry {
    fn changed(&mut self, kind: ChangeKind, changes: &ChangeSet, trigger: Option<SystemTime>) {
        self.metrics.last_queued_timestamp.set(seconds(SystemTime::now()));
        match kind {
            ChangeKind::Service => {
                self.metrics.service_changes.inc();
                self.pending_services.merge(changes.clone());
            }
            ChangeKind::Endpoints => {
                self.metrics.endpoint_changes.inc();
                self.pending_endpoints.merge(changes.clone());
            }
            ChangeKind::Node => {}
        }
        self.metrics.service_pending.set(self.pending_services.len() as i64);
        self.metrics.endpoint_pending.set(self.pending_endpoints.len() as i64);
        if let Some(t) = trigger {
            for key in changes {
                let slot = self.triggers.entry(key.clone()).or_insert(t);
                *slot = (*slot).min(t);
            }
        }
    }

    fn node(&mut self, node: Option<&NodeInfo>) {
        if let Some(h) = &self.health {
            h.sync_node(node);
        }
    }

    fn synced(
        &mut self,
        table: &BackendTable,
        scope: &SyncScope,
        result: Result<&SyncStats, &DataplaneError>,
        elapsed: Duration,
    ) {
        let secs = elapsed.as_secs_f64();
        self.metrics.sync_duration.observe(secs);
        if scope.is_full() {
            self.metrics.sync_full_duration.observe(secs);
        } else {
            self.metrics.sync_partial_duration.observe(secs);
        }
        if let Err(e) = result {
            self.metrics.sync_failures.inc();
            if matches!(e, DataplaneError::Refused { tool, .. } if tool.contains("restore")) {
                if scope.is_full() {
                    self.metrics.restore_failures.inc();
                } else {
                    self.metrics.partial_restore_failures.inc();
                }
            }
            return;
        }
        let now = SystemTime::now();
        self.metrics.last_timestamp.set(seconds(now));
        // Everything pending is programmed by a success (a partial sync
        // covers exactly the coalesced ChangeSet).
        let programmed: Vec<ServicePortKey> = match scope {
            SyncScope::Full => self.triggers.keys().cloned().collect(),
            SyncScope::Partial(changes) => changes
                .iter()
                .filter(|k| self.triggers.contains_key(*k))
                .cloned()
                .collect(),
        };
        for key in programmed {
            if let Some(t) = self.triggers.remove(&key) {
                let latency = now.duration_since(t).unwrap_or_default();
                self.metrics.network_programming.observe(latency.as_secs_f64());
            }
        }
        self.pending_services = ChangeSet::new();
        self.pending_endpoints = ChangeSet::new();
        self.metrics.service_pending.set(0);
        self.metrics.endpoint_pending.set(0);
        if let Some(tx) = &self.targets {
            let targets = health::service_health_targets(table);
            *self.last_targets.lock().unwrap_or_else(|p| p.into_inner()) = targets.clone();
            tx.send_if_modified(|cur| {
                if *cur == targets {
                    false
                } else {
                    *cur = targets;
                    true
                }
            });
        }
    }
}

/// The agent's HTTP endpoints, running.
pub struct Servers {
    /// Where `/healthz` and `/livez` listen (`None`: disabled).
    pub healthz: Option<SocketAddr>,
    /// Where `/metrics` listens (`None`: disabled).
    pub metrics_addr: Option<SocketAddr>,
    /// The proxy health the servers answer from.
    pub health: ProxyHealth,
    /// The metrics.
    pub metrics: Metrics,
    /// The health-check node ports being served (for tests and logs).
    pub service_targets: Arc<Mutex<ServiceHealthTargets>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Attach health, metrics and the health-check node ports to `agent`, as
/// `config` asks (bind addresses; health timeout 2 x `--sync-period` as
/// upstream). Health-check node ports bind on `health_check_ip`.
pub async fn instrument<D: crate::dataplane::Dataplane>(
    agent: crate::sync::Agent<D>,
    config: &crate::config::Config,
    mode: &'static str,
    health_check_ip: std::net::IpAddr,
) -> Result<(crate::sync::Agent<D>, Servers), HealthError> {
    let metrics = Metrics::new(mode);
    let health = ProxyHealth::new(agent.subscribe(), config.sync_period * 2).with_metrics(metrics.clone());
    let mut tasks = Vec::new();
    let healthz = match config.healthz_bind_address {
        Some(addr) => {
            let (local, task) = health.clone().serve(addr).await?;
            tracing::info!(%local, "serving /healthz and /livez");
            tasks.push(task);
            Some(local)
        }
        None => None,
    };
    let metrics_addr = match config.metrics_bind_address {
        Some(addr) => {
            let (local, task) = metrics.clone().serve(addr, Some(health.clone())).await?;
            tracing::info!(%local, "serving /metrics and /proxyMode");
            tasks.push(task);
            Some(local)
        }
        None => None,
    };
    let (targets_tx, targets_rx) = watch::channel(ServiceHealthTargets::new());
    let service_health = health::ServiceHealth::new(health_check_ip, Some(health.clone()));
    tasks.push(tokio::spawn(service_health.run(targets_rx)));
    let telemetry = Telemetry::new(metrics.clone())
        .with_health(health.clone())
        .with_service_health(targets_tx);
    let service_targets = Arc::clone(&telemetry.last_targets);
    let agent = agent.with_observer(Box::new(telemetry));
    Ok((
        agent,
        Servers {
            healthz,
            metrics_addr,
            health,
            metrics,
            service_targets,
            tasks,
        },
    ))
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
}
