//! The load tool: N synthetic Services x M endpoints written straight into a
//! real API server (Services and EndpointSlices, no Pods, no kubelet), then a
//! churn of single-endpoint changes at a given rate, each recording its
//! trigger time (`endpoints.kubernetes.io/last-change-trigger-time`, RFC 3339
//! with nanoseconds, as the EndpointSlice controller writes it) so that both
//! proxies observe `network_programming_duration_seconds` the same way.
//!
//! Addresses are a pure function of indices, so every run writes the same
//! cluster: ClusterIP of service i = 10.96.4.0 + i; endpoint j of service i =
//! 10.244.0.0 + i*M + j + 1 (inside `CLUSTER_CIDR`); the n-th churned-in
//! endpoint = 10.246.0.0 + n + 1 (fresh addresses, which the kernel monitor
//! relies on). Every `nodeport_every`-th service is a NodePort, node port
//! 30000 + i / nodeport_every.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, NodeAddress, NodeStatus, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::{PostParams, PostParams as Pp};

/// Pod CIDR given to both proxies (`clusterCIDR`).
pub const CLUSTER_CIDR: &str = "10.244.0.0/14";
/// Service port every synthetic Service exposes.
pub const SERVICE_PORT: u16 = 80;
/// Port every synthetic endpoint listens on.
pub const TARGET_PORT: u16 = 8080;
/// The annotation both proxies read.
pub const TRIGGER: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// What to write.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Spec {
    /// Namespace of every object.
    pub namespace: String,
    /// Number of Services.
    pub services: usize,
    /// Endpoints per Service (one EndpointSlice each).
    pub endpoints: usize,
    /// Every k-th Service is a NodePort (0: none).
    pub nodeport_every: usize,
}

impl Spec {
    /// ClusterIP of service `i`.
    pub fn cluster_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 4, 0)) + i as u32)
    }

    /// Initial address of endpoint `j` of service `i`.
    pub fn endpoint_ip(&self, i: usize, j: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + (i * self.endpoints + j + 1) as u32)
    }

    /// Node port of service `i`, if it is a NodePort.
    pub fn node_port(&self, i: usize) -> Option<u16> {
        (self.nodeport_every > 0 && i.is_multiple_of(self.nodeport_every))
            .then(|| 30000 + (i / self.nodeport_every) as u16)
    }

    /// Name of service `i`.
    pub fn name(&self, i: usize) -> String {
        format!("svc-{i:05}")
    }

    /// Service `i`.
    pub fn service(&self, i: usize) -> Service {
        let node_port = self.node_port(i);
        Service {
            metadata: ObjectMeta {
                name: Some(self.name(i)),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(if node_port.is_some() { "NodePort" } else { "ClusterIP" }.into()),
                cluster_ip: Some(self.cluster_ip(i).to_string()),
                cluster_ips: Some(vec![self.cluster_ip(i).to_string()]),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: SERVICE_PORT.into(),
                    target_port: Some(IntOrString::Int(TARGET_PORT.into())),
                    protocol: Some("TCP".into()),
                    node_port: node_port.map(i32::from),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The EndpointSlice of service `i` with `addrs`, triggered at `trigger`.
    pub fn slice(&self, i: usize, addrs: &[Ipv4Addr], trigger: SystemTime) -> EndpointSlice {
        let mut labels = BTreeMap::new();
        labels.insert("kubernetes.io/service-name".to_string(), self.name(i));
        labels.insert(
            "endpointslice.kubernetes.io/managed-by".to_string(),
            "scale-bench.sliceproxy.test".to_string(),
        );
        let mut annotations = BTreeMap::new();
        annotations.insert(TRIGGER.to_string(), rfc3339_nanos(trigger));
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{}-0", self.name(i))),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                annotations: Some(annotations),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(TARGET_PORT.into()),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            endpoints: addrs
                .iter()
                .enumerate()
                .map(|(j, a)| Endpoint {
                    addresses: vec![a.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    // Remote endpoints (no kubelet needed).
                    node_name: Some(format!("bench-peer-{}", j % 3)),
                    ..Default::default()
                })
                .collect(),
        }
    }
}

/// Formats `t` as RFC 3339 UTC with nanoseconds (Go's `time.RFC3339Nano`).
pub fn rfc3339_nanos(t: SystemTime) -> String {
    // jiff prints RFC 3339 in UTC with as many fractional digits as needed.
    k8s_openapi::jiff::Timestamp::try_from(t)
        .expect("time in range")
        .to_string()
}

/// The cluster as written: endpoints of every service, and each slice's
/// last resourceVersion (for updates).
pub struct Loaded {
    /// The spec.
    pub spec: Spec,
    /// Current endpoint addresses per service.
    pub endpoints: Vec<Vec<Ipv4Addr>>,
    /// Current slice objects (with resourceVersion).
    pub slices: Vec<EndpointSlice>,
    /// Churned-in addresses handed out so far.
    pub churned: usize,
}

/// Result of [`load`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LoadReport {
    /// Objects created.
    pub objects: usize,
    /// Wall time.
    pub seconds: f64,
    /// Concurrent requests.
    pub parallel: usize,
}

/// Creates the namespace, the node `node_name` with `node_ip`, and every
/// Service and EndpointSlice, `parallel` requests at a time.
pub async fn load(
    client: &kube::Client,
    spec: &Spec,
    node_name: &str,
    node_ip: Ipv4Addr,
    parallel: usize,
) -> Result<(Loaded, LoadReport), kube::Error> {
    let started = Instant::now();
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(spec.namespace.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    ignore_exists(ns_api.create(&PostParams::default(), &ns).await)?;
    let nodes: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(node_name.into()),
            ..Default::default()
        },
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: node_ip.to_string(),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = ignore_exists(nodes.create(&PostParams::default(), &node).await)?;
    // Status is a subresource: set the addresses there too.
    if created.is_some() {
        let patch =
            serde_json::json!({"status": {"addresses": [{"type": "InternalIP", "address": node_ip.to_string()}]}});
        nodes
            .patch_status(
                node_name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await?;
    }

    let svcs: Api<Service> = Api::namespaced(client.clone(), &spec.namespace);
    let slices_api: Api<EndpointSlice> = Api::namespaced(client.clone(), &spec.namespace);
    let endpoints: Vec<Vec<Ipv4Addr>> = (0..spec.services)
        .map(|i| (0..spec.endpoints).map(|j| spec.endpoint_ip(i, j)).collect())
        .collect();
    futures::stream::iter(0..spec.services)
        .map(|i| {
            let svcs = svcs.clone();
            let s = spec.service(i);
            async move { svcs.create(&Pp::default(), &s).await.map(|_| ()) }
        })
        .buffer_unordered(parallel)
        .try_collect::<Vec<()>>()
        .await?;
    let now = SystemTime::now();
    let mut slices: Vec<(usize, EndpointSlice)> = futures::stream::iter(0..spec.services)
        .map(|i| {
            let api = slices_api.clone();
            let s = spec.slice(i, &endpoints[i], now);
            async move { api.create(&Pp::default(), &s).await.map(|s| (i, s)) }
        })
        .buffer_unordered(parallel)
        .try_collect()
        .await?;
    slices.sort_by_key(|(i, _)| *i);
    let report = LoadReport {
        objects: 2 * spec.services,
        seconds: started.elapsed().as_secs_f64(),
        parallel,
    };
    Ok((
        Loaded {
            spec: spec.clone(),
            endpoints,
            slices: slices.into_iter().map(|(_, s)| s).collect(),
            churned: 0,
        },
        report,
    ))
}

fn ignore_exists<T>(r: Result<T, kube::Error>) -> Result<Option<T>, kube::Error> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(e) => Err(e),
    }
}

/// One churned change.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Change {
    /// Sequence number in the run.
    pub id: usize,
    /// Service index.
    pub service: usize,
    /// Address removed.
    pub old: Ipv4Addr,
    /// Address added (fresh).
    pub new: Ipv4Addr,
    /// The trigger time written into the slice (unix seconds).
    pub trigger: f64,
    /// How long the API server took to accept the update (seconds).
    pub api_seconds: f64,
}

/// Unix seconds of `t`.
pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl Loaded {
    /// Replaces one endpoint of the `n`-th change's service with a fresh
    /// address and writes the slice. `before` is called with the change just
    /// before the request is sent (to start watching for the address).
    pub async fn change(
        &mut self,
        client: &kube::Client,
        id: usize,
        before: impl FnOnce(&Change),
    ) -> Result<Change, kube::Error> {
        // A fixed pseudo-random walk over services (odd multiplier: visits all).
        let service = (id.wrapping_mul(2_654_435_761) + 7) % self.spec.services;
        let k = id % self.spec.endpoints.max(1);
        self.churned += 1;
        let new = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 246, 0, 0)) + self.churned as u32);
        let old = self.endpoints[service][k];
        self.endpoints[service][k] = new;
        let trigger = SystemTime::now();
        let mut slice = self.spec.slice(service, &self.endpoints[service], trigger);
        slice.metadata.resource_version = self.slices[service].metadata.resource_version.clone();
        let mut change = Change {
            id,
            service,
            old,
            new,
            trigger: unix(trigger),
            api_seconds: 0.0,
        };
        before(&change);
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &self.spec.namespace);
        let sent = Instant::now();
        let name = slice.metadata.name.clone().expect("slice name");
        let updated = api.replace(&name, &PostParams::default(), &slice).await?;
        change.api_seconds = sent.elapsed().as_secs_f64();
        self.slices[service] = updated;
        Ok(change)
    }
}

/// Runs `count` changes at `rate` per second (a fixed schedule: a slow
/// request does not make the next ones bunch up more than the schedule).
pub async fn churn(
    loaded: &mut Loaded,
    client: &kube::Client,
    first_id: usize,
    count: usize,
    rate: f64,
    mut before: impl FnMut(&Change),
) -> Result<Vec<Change>, kube::Error> {
    let period = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let start = tokio::time::Instant::now();
    let mut out = Vec::with_capacity(count);
    for n in 0..count {
        tokio::time::sleep_until(start + period * n as u32).await;
        out.push(loaded.change(client, first_id + n, &mut before).await?);
    }
    Ok(out)
}
