//! kube-proxy's health endpoints: `/healthz` and `/livez` on
//! `--healthz-bind-address`, and one server per `healthCheckNodePort` of the
//! Services with `externalTrafficPolicy: Local`, which a cloud load balancer
//! probes to learn which nodes have local endpoints.
//!
//! Semantics follow upstream's `pkg/proxy/healthcheck`: the proxy is
//! unhealthy when a change has waited longer than the health timeout
//! (upstream: 2 x `--sync-period`) without being programmed; `/healthz` is
//! also unhealthy while the Node is being deleted or is tainted
//! `ToBeDeletedByClusterAutoscaler` (so load balancers drain it first);
//! `/livez` ignores the Node (restarting the agent would not help).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use hyper::StatusCode;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::http::{ListenError, Reply, bind, serve};
use super::metrics::Metrics;
use crate::model::{NodeInfo, ServiceKey};
use crate::sync::AgentStatus;

/// The wall-clock time of a tokio instant (for the JSON bodies).
fn wall(at: Instant) -> SystemTime {
    SystemTime::now()
        .checked_sub(Instant::now().saturating_duration_since(at))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// RFC 3339, UTC.
pub fn rfc3339(t: SystemTime) -> String {
    k8s_openapi::jiff::Timestamp::try_from(t)
        .map(|ts| ts.to_string())
        .unwrap_or_default()
}

/// The proxy's health, as upstream's `ProxyHealthServer` computes it.
#[derive(Clone)]
pub struct ProxyHealth {
    status: watch::Receiver<AgentStatus>,
    timeout: Duration,
    /// Eligible until a Node event says otherwise (upstream: healthy while
    /// starting up).
    node_eligible: Arc<Mutex<bool>>,
    metrics: Option<Metrics>,
}

/// One health evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// No programmed change is late.
    pub healthy: bool,
    /// The last successful sync (now, when healthy: upstream's compatibility rule).
    pub last_updated: Option<SystemTime>,
    /// Now.
    pub current_time: SystemTime,
    /// The Node is neither being deleted nor tainted for deletion.
    pub node_eligible: bool,
}

impl ProxyHealth {
    /// Health over the agent's status; `timeout` is how long a change may
    /// wait unprogrammed (upstream: 2 x sync period).
    pub fn new(status: watch::Receiver<AgentStatus>, timeout: Duration) -> ProxyHealth {
        ProxyHealth {
            status,
            timeout,
            node_eligible: Arc::new(Mutex::new(true)),
            metrics: None,
        }
    }

    /// Count `/healthz` and `/livez` answers in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> ProxyHealth {
        self.metrics = Some(metrics);
        self
    }

    /// Follow the Node (upstream's `SyncNode`).
    pub fn sync_node(&self, node: Option<&NodeInfo>) {
        // A deleted Node object is as ineligible as one being deleted.
        let eligible = node.is_some_and(|n| !n.deleting && !n.to_be_deleted);
        *self.node_eligible.lock().unwrap_or_else(|p| p.into_inner()) = eligible;
    }

    /// Whether the Node may receive load-balancer traffic.
    pub fn node_eligible(&self) -> bool {
        *self.node_eligible.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The proxier's health, ignoring the Node.
    pub fn report(&self) -> HealthReport {
        let status = self.status.borrow().clone();
        let now = Instant::now();
        // Late: a change (or a failed sync's retry) has waited too long.
        // While starting (lists incomplete, first sync not yet attempted)
        // upstream reports healthy; a first sync that failed counts.
        let started = status.initialized && (status.last_sync.is_some() || status.failing);
        let late = started
            && status
                .pending_since
                .is_some_and(|since| now.saturating_duration_since(since) >= self.timeout);
        let current_time = SystemTime::now();
        HealthReport {
            healthy: !late,
            last_updated: if late {
                status.last_sync.map(wall)
            } else {
                Some(current_time)
            },
            current_time,
            node_eligible: self.node_eligible(),
        }
    }

    /// `/healthz`: the proxier is healthy and the Node is eligible.
    pub fn healthz(&self) -> Reply {
        let r = self.report();
        let ok = r.healthy && r.node_eligible;
        self.count(true, ok);
        let body = serde_json::json!({
            "lastUpdated": r.last_updated.map(rfc3339).unwrap_or_default(),
            "currentTime": rfc3339(r.current_time),
            "nodeEligible": r.node_eligible,
        });
        Reply::json(code(ok), body.to_string())
    }

    /// `/livez`: the proxier is healthy (the Node does not matter).
    pub fn livez(&self) -> Reply {
        let r = self.report();
        self.count(false, r.healthy);
        let body = serde_json::json!({
            "lastUpdated": r.last_updated.map(rfc3339).unwrap_or_default(),
            "currentTime": rfc3339(r.current_time),
        });
        Reply::json(code(r.healthy), body.to_string())
    }

    fn count(&self, healthz: bool, ok: bool) {
        if let Some(m) = &self.metrics {
            m.count_probe(healthz, if ok { 200 } else { 503 });
        }
    }

    /// Route a request path.
    pub fn handle(&self, path: &str) -> Reply {
        match path {
            "/healthz" => self.healthz(),
            "/livez" => self.livez(),
            _ => Reply::text(StatusCode::NOT_FOUND, "404 page not found\n"),
        }
    }

    /// Serve `/healthz` and `/livez` on `addr`.
    pub async fn serve(self, addr: SocketAddr) -> Result<(SocketAddr, JoinHandle<()>), ListenError> {
        let listener = bind(addr).await?;
        let local = listener
            .local_addr()
            .map_err(|source| ListenError::Bind { addr, source })?;
        Ok((local, serve(listener, move |path| self.handle(path))))
    }
}

fn code(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// What the health-check node ports should serve: per Service with
/// `externalTrafficPolicy: Local` and a `healthCheckNodePort`, the port and
/// this node's ready local endpoints.
pub type ServiceHealthTargets = BTreeMap<ServiceKey, (u16, usize)>;

/// The health-check node port servers, opened and closed as Services come
/// and go (upstream's `ServiceHealthServer`).
pub struct ServiceHealth {
    bind_ip: IpAddr,
    proxy: Option<ProxyHealth>,
    counts: Arc<RwLock<HashMap<ServiceKey, usize>>>,
    servers: BTreeMap<ServiceKey, (u16, JoinHandle<()>)>,
}

impl ServiceHealth {
    /// Servers bound on `bind_ip` (upstream binds the node-port addresses;
    /// `0.0.0.0` by default). `proxy` feeds `serviceProxyHealthy`.
    pub fn new(bind_ip: IpAddr, proxy: Option<ProxyHealth>) -> ServiceHealth {
        ServiceHealth {
            bind_ip,
            proxy,
            counts: Arc::default(),
            servers: BTreeMap::new(),
        }
    }

    /// The ports being served now.
    pub fn ports(&self) -> BTreeMap<ServiceKey, u16> {
        self.servers.iter().map(|(k, (p, _))| (k.clone(), *p)).collect()
    }

    /// Bring the servers in line with `targets`: close the ones no longer
    /// wanted, open new ones, update every count. A port that cannot be
    /// bound is logged and retried on the next update.
    pub async fn sync(&mut self, targets: &ServiceHealthTargets) {
        {
            let mut counts = self.counts.write().unwrap_or_else(|p| p.into_inner());
            counts.clear();
            counts.extend(targets.iter().map(|(k, (_, n))| (k.clone(), *n)));
        }
        self.servers.retain(|key, (port, task)| {
            let keep = targets.get(key).is_some_and(|(p, _)| p == port);
            if !keep {
                tracing::info!(service = %key, port, "closing health check node port");
                task.abort();
            }
            keep
        });
        for (key, (port, _)) in targets {
            if self.servers.contains_key(key) {
                continue;
            }
            let addr = SocketAddr::new(self.bind_ip, *port);
            match bind(addr).await {
                Ok(listener) => {
                    tracing::info!(service = %key, %addr, "opened health check node port");
                    let counts = Arc::clone(&self.counts);
                    let proxy = self.proxy.clone();
                    let key2 = key.clone();
                    let task = serve(listener, move |_path| {
                        let n = counts
                            .read()
                            .unwrap_or_else(|p| p.into_inner())
                            .get(&key2)
                            .copied()
                            .unwrap_or(0);
                        let healthy = proxy.as_ref().is_none_or(|p| p.report().healthy);
                        service_reply(&key2, n, healthy)
                    });
                    self.servers.insert(key.clone(), (*port, task));
                }
                Err(e) => tracing::error!(service = %key, error = %e, "cannot open health check node port"),
            }
        }
    }

    /// Follow `targets` until the sender is dropped.
    pub async fn run(mut self, mut targets: watch::Receiver<ServiceHealthTargets>) {
        loop {
            let t = targets.borrow_and_update().clone();
            self.sync(&t).await;
            if targets.changed().await.is_err() {
                break;
            }
        }
        for (_, (_, task)) in std::mem::take(&mut self.servers) {
            task.abort();
        }
    }
}

impl Drop for ServiceHealth {
    fn drop(&mut self) {
        for (_, task) in self.servers.values() {
            task.abort();
        }
    }
}

/// Upstream's answer: 200 with the count when there are local endpoints and
/// the proxy is healthy, else 503.
pub fn service_reply(key: &ServiceKey, local_endpoints: usize, proxy_healthy: bool) -> Reply {
    let body = serde_json::json!({
        "service": {"namespace": &*key.namespace, "name": &*key.name},
        "localEndpoints": local_endpoints,
        "serviceProxyHealthy": proxy_healthy,
    });
    let mut reply = Reply::json(code(local_endpoints > 0 && proxy_healthy), body.to_string());
    reply
        .headers
        .push(("X-Load-Balancing-Endpoint-Weight", local_endpoints.to_string()));
    reply
}

/// The health-check targets of a table: Services whose external traffic is
/// Local with a `healthCheckNodePort`, with their ready local endpoints
/// (unique addresses over all the Service's ports, as upstream counts).
pub fn service_health_targets(table: &crate::track::BackendTable) -> ServiceHealthTargets {
    let mut ips: BTreeMap<ServiceKey, (u16, std::collections::BTreeSet<IpAddr>)> = BTreeMap::new();
    for (key, entry) in table.entries() {
        let Some(info) = entry.service.as_ref() else { continue };
        let Some(port) = info.health_check_node_port else {
            continue;
        };
        if !info.external_local() {
            continue;
        }
        let slot = ips
            .entry(key.service.clone())
            .or_insert_with(|| (port, Default::default()));
        slot.1.extend(
            entry
                .endpoints
                .iter()
                .filter(|e| e.local && e.ready)
                .map(|e| e.addr.ip()),
        );
    }
    ips.into_iter().map(|(k, (p, set))| (k, (p, set.len()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_reply_matches_upstream_shape() {
        let r = service_reply(&ServiceKey::new("demo", "lb"), 2, true);
        assert_eq!(r.status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"service": {"namespace": "demo", "name": "lb"}, "localEndpoints": 2, "serviceProxyHealthy": true})
        );
        assert_eq!(
            service_reply(&ServiceKey::new("demo", "lb"), 0, true).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            service_reply(&ServiceKey::new("demo", "lb"), 3, false).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test(start_paused = true)]
    async fn late_change_is_unhealthy_and_node_deletion_only_fails_healthz() {
        let (tx, rx) = watch::channel(AgentStatus::default());
        let h = ProxyHealth::new(rx, Duration::from_secs(60));
        assert!(h.report().healthy, "healthy while starting up");
        let t0 = Instant::now();
        tx.send_modify(|s| {
            s.initialized = true;
            s.last_sync = Some(t0);
            s.pending_since = Some(t0);
        });
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(h.report().healthy, "a change may wait up to the timeout");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(h.healthz().status, StatusCode::SERVICE_UNAVAILABLE);
        tx.send_modify(|s| {
            s.pending_since = None;
            s.last_sync = Some(Instant::now());
        });
        assert_eq!(h.healthz().status, StatusCode::OK);
        h.sync_node(Some(&NodeInfo {
            to_be_deleted: true,
            ..NodeInfo::default()
        }));
        assert_eq!(h.healthz().status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h.livez().status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&h.healthz().body).unwrap();
        assert_eq!(v["nodeEligible"], false);
    }
}
