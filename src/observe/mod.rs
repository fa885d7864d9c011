//! What the agent tells the outside: kube-proxy's health endpoints
//! ([`health`]), its Prometheus metrics ([`metrics`]), and the small HTTP
//! servers that answer them ([`http`]). [`instrument`] attaches all of it
//! to an agent; [`Telemetry`] is the agent's [`SyncObserver`] feeding the
//! metrics, the Node eligibility of `/healthz`, and the health-check node
//! ports.
//!
//! Imports go one way: `http` <- `metrics` <- `health` <- this module.
//! Failures are counted from the type of [`DataplaneError`], never from a
//! tool's name.

pub mod health;
pub mod http;
pub mod metrics;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hyper::StatusCode;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::dataplane::{DataplaneError, SyncScope, SyncStats};
use crate::model::{NodeInfo, ServicePortKey};
use crate::sync::{ChangeKind, SyncObserver};
use crate::track::{BackendTable, ChangeSet};
use health::{ProxyHealth, ServiceHealth, ServiceHealthTargets, service_health_targets};
use http::{ListenError, Reply};
use metrics::Metrics;

/// Route a request path of the metrics server: `/metrics`, `/proxyMode`,
/// and `/healthz` (upstream serves the health check there too).
pub fn metrics_reply(metrics: &Metrics, path: &str, health: Option<&ProxyHealth>) -> Reply {
    match path {
        "/metrics" => Reply {
            status: StatusCode::OK,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            headers: Vec::new(),
            body: metrics.encode(),
        },
        "/proxyMode" => Reply::text(StatusCode::OK, metrics.mode),
        "/healthz" => match health {
            Some(h) => h.healthz(),
            None => Reply::text(StatusCode::OK, "ok"),
        },
        _ => Reply::text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

/// Serve `/metrics`, `/proxyMode` and `/healthz` on `addr`.
pub async fn serve_metrics(
    metrics: Metrics,
    addr: SocketAddr,
    health: Option<ProxyHealth>,
) -> Result<(SocketAddr, JoinHandle<()>), ListenError> {
    let listener = http::bind(addr).await?;
    let local = listener
        .local_addr()
        .map_err(|source| ListenError::Bind { addr, source })?;
    Ok((
        local,
        http::serve(listener, move |path| metrics_reply(&metrics, path, health.as_ref())),
    ))
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
        self.metrics
            .last_queued_timestamp
            .set(metrics::seconds(SystemTime::now()));
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
            self.metrics.count_sync_failure(e, scope.is_full());
            return;
        }
        let now = SystemTime::now();
        self.metrics.last_timestamp.set(metrics::seconds(now));
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
            let targets = service_health_targets(table);
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
) -> Result<(crate::sync::Agent<D>, Servers), ListenError> {
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
            let (local, task) = serve_metrics(metrics.clone(), addr, Some(health.clone())).await?;
            tracing::info!(%local, "serving /metrics and /proxyMode");
            tasks.push(task);
            Some(local)
        }
        None => None,
    };
    let (targets_tx, targets_rx) = watch::channel(ServiceHealthTargets::new());
    let service_health = ServiceHealth::new(health_check_ip, Some(health.clone()));
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
