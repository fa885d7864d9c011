//! The agent against a real etcd + kube-apiserver, with the in-memory
//! dataplane: convergence and one partial sync per change, slice moves,
//! relists after an API server restart and after an expired (410) watch, and
//! the shipped RBAC.
//!
//! The agent watches every namespace, so these tests run one at a time (a
//! shared lock) and look only at their own namespace.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sliceproxy::model::{IpFamily, Protocol, ServicePortKey};
use sliceproxy::policy::PortPlan;
use support::agent;
use support::controlplane::{ControlPlane, shared};
use support::proxy::GatedProxy;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const NODE: &str = "sliceproxy-test-node";

fn key(ns: &str, svc: &str, port: &str) -> ServicePortKey {
    ServicePortKey::new(ns, svc, port, Protocol::Tcp)
}

fn service_json(name: &str, ports: &[(&str, i32)]) -> Service {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP"}))
        .collect();
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"ports": ports}})).expect("Service")
}

/// An EndpointSlice; endpoint IPs are test-namespace addresses, never loopback.
fn slice_json(name: &str, service: &str, ports: &[(&str, i32)], ips: &[&str]) -> EndpointSlice {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP"}))
        .collect();
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": "elsewhere"}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "ports": ports, "endpoints": endpoints,
    }))
    .expect("EndpointSlice")
}

fn endpoints_of(programmed: &BTreeMap<ServicePortKey, PortPlan>, k: &ServicePortKey) -> Option<Vec<String>> {
    programmed.get(k).map(|p| {
        p.family(IpFamily::V4)
            .cluster
            .iter()
            .map(SocketAddr::to_string)
            .collect()
    })
}

struct Objects {
    services: Api<Service>,
    slices: Api<EndpointSlice>,
}

impl Objects {
    fn new(client: kube::Client, ns: &str) -> Objects {
        Objects {
            services: Api::namespaced(client.clone(), ns),
            slices: Api::namespaced(client, ns),
        }
    }
    async fn create_service(&self, name: &str, ports: &[(&str, i32)]) {
        self.services
            .create(&PostParams::default(), &service_json(name, ports))
            .await
            .expect("create Service");
    }
    async fn create_slice(&self, name: &str, service: &str, ports: &[(&str, i32)], ips: &[&str]) {
        self.slices
            .create(&PostParams::default(), &slice_json(name, service, ports, ips))
            .await
            .expect("create EndpointSlice");
    }
    async fn set_endpoints(&self, name: &str, ips: &[&str]) {
        let endpoints: Vec<Value> = ips
            .iter()
            .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": "elsewhere"}))
            .collect();
        self.slices
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"endpoints": endpoints})),
            )
            .await
            .expect("patch EndpointSlice");
    }
    async fn delete_service(&self, name: &str) {
        self.services
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete Service");
    }
    async fn delete_slice(&self, name: &str) {
        self.slices
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete EndpointSlice");
    }
}

async fn ensure_node(client: kube::Client) {
    let nodes: Api<Node> = Api::all(client);
    let node: Node = serde_json::from_value(
        json!({"metadata": {"name": NODE, "labels": {"topology.kubernetes.io/zone": "zone-a"}}}),
    )
    .unwrap();
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("create Node: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_converge_with_one_partial_sync_each() {
    let _serial = SERIAL.lock().await;
    let cp = shared();
    let ns = cp.new_namespace("converge");
    let client = cp.client().await;
    ensure_node(client.clone()).await;
    let objs = Objects::new(client.clone(), &ns);
    let agent = agent::start(client, NODE);
    agent.wait_initialized().await;
    let (http, metrics) = (key(&ns, "web", "http"), key(&ns, "web", "metrics"));
    let ports = [("http", 80), ("metrics", 9090)];
    let slice_ports = [("http", 8080), ("metrics", 9090)];

    agent
        .expect_one_sync(
            &ns,
            &[http.clone(), metrics.clone()],
            objs.create_service("web", &ports),
        )
        .await;
    assert!(
        agent.programmed(&ns)[&http].family(IpFamily::V4).cluster.is_empty(),
        "no endpoints yet"
    );

    agent
        .expect_one_sync(
            &ns,
            &[http.clone(), metrics.clone()],
            objs.create_slice("web-1", "web", &slice_ports, &["10.244.1.1"]),
        )
        .await;
    assert_eq!(
        endpoints_of(&agent.programmed(&ns), &http),
        Some(vec!["10.244.1.1:8080".to_string()])
    );

    agent
        .expect_one_sync(
            &ns,
            &[http.clone(), metrics.clone()],
            objs.set_endpoints("web-1", &["10.244.1.1", "10.244.1.2"]),
        )
        .await;
    assert_eq!(
        endpoints_of(&agent.programmed(&ns), &metrics),
        Some(vec!["10.244.1.1:9090".into(), "10.244.1.2:9090".into()])
    );

    // One Service port's number changes: only that port is touched.
    let bump_metrics = async {
        objs.services
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Json::<()>(
                    serde_json::from_value(json!([
                        {"op": "replace", "path": "/spec/ports/1/port", "value": 9191}
                    ]))
                    .unwrap(),
                ),
            )
            .await
            .expect("patch Service");
    };
    agent
        .expect_one_sync(&ns, std::slice::from_ref(&metrics), bump_metrics)
        .await;
    assert_eq!(agent.programmed(&ns)[&metrics].info.port, 9191);

    // An unrelated label, and the same endpoints in another order: no sync.
    let no_op = async {
        objs.services
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"team": "blue"}}})),
            )
            .await
            .expect("label Service");
        objs.set_endpoints("web-1", &["10.244.1.2", "10.244.1.1"]).await;
    };
    agent.expect_no_sync(&ns, no_op).await;

    agent
        .expect_one_sync(&ns, &[http.clone(), metrics.clone()], objs.delete_slice("web-1"))
        .await;
    assert_eq!(endpoints_of(&agent.programmed(&ns), &http), Some(vec![]));
    agent
        .expect_one_sync(&ns, &[http.clone(), metrics.clone()], objs.delete_service("web"))
        .await;
    assert!(agent.programmed(&ns).is_empty());
    let status = agent.status.borrow().clone();
    assert!(status.initialized && !status.failing);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slice_moves_orphans_and_early_slices() {
    let _serial = SERIAL.lock().await;
    let cp = shared();
    let ns = cp.new_namespace("moves");
    let client = cp.client().await;
    ensure_node(client.clone()).await;
    let objs = Objects::new(client.clone(), &ns);
    let agent = agent::start(client, NODE);
    agent.wait_initialized().await;
    let http = key(&ns, "api", "http");
    let ports = [("http", 8080)];

    // Slices before their Service program nothing...
    agent
        .expect_no_sync(
            &ns,
            objs.create_slice("api-a", "api", &ports, &["10.244.2.1", "10.244.2.2"]),
        )
        .await;
    // ...and join it when it arrives.
    agent
        .expect_one_sync(
            &ns,
            std::slice::from_ref(&http),
            objs.create_service("api", &[("http", 80)]),
        )
        .await;
    assert_eq!(
        endpoints_of(&agent.programmed(&ns), &http),
        Some(vec!["10.244.2.1:8080".into(), "10.244.2.2:8080".into()])
    );

    // An endpoint moves from api-a to api-b: it shows up in the new slice
    // first, then leaves the old one. Nothing programmed changes.
    let moving = async {
        objs.create_slice("api-b", "api", &ports, &["10.244.2.2"]).await;
        objs.set_endpoints("api-a", &["10.244.2.1"]).await;
    };
    agent.expect_no_sync(&ns, moving).await;
    assert_eq!(
        endpoints_of(&agent.programmed(&ns), &http),
        Some(vec!["10.244.2.1:8080".into(), "10.244.2.2:8080".into()])
    );

    // The Service goes while its slices stay; it comes back and finds them.
    agent
        .expect_one_sync(&ns, std::slice::from_ref(&http), objs.delete_service("api"))
        .await;
    assert!(agent.programmed(&ns).is_empty());
    agent
        .expect_one_sync(
            &ns,
            std::slice::from_ref(&http),
            objs.create_service("api", &[("http", 80)]),
        )
        .await;
    assert_eq!(
        endpoints_of(&agent.programmed(&ns), &http),
        Some(vec!["10.244.2.1:8080".into(), "10.244.2.2:8080".into()])
    );
    agent.stop().await;
}

/// Agent connected through a gate; the gate closes, objects change, the
/// API server loses its watch history (`disrupt`), the gate reopens.
/// Returns the agent after convergence for more assertions.
async fn relist_scenario(
    label: &str,
    disrupt: impl FnOnce(&ControlPlane),
) -> (ControlPlane, String, agent::RunningAgent) {
    let cp = ControlPlane::start();
    let ns = cp.new_namespace(label);
    let admin = cp.client().await;
    let objs = Objects::new(admin.clone(), &ns);
    for (svc, ip) in [("a", "10.244.3.1"), ("b", "10.244.3.2"), ("c", "10.244.3.3")] {
        objs.create_service(svc, &[("http", 80)]).await;
        objs.create_slice(&format!("{svc}-1"), svc, &[("http", 8080)], &[ip])
            .await;
    }
    let proxy = GatedProxy::start(
        cp.url()
            .trim_start_matches("https://")
            .parse()
            .expect("apiserver address"),
    );
    let kubeconfig = cp.kubeconfig_via(&proxy.url(), cp.admin_token());
    let agent_client = support::controlplane::client_from_kubeconfig(&kubeconfig).await;
    let agent = agent::start(agent_client, NODE);
    let (a, b, c) = (key(&ns, "a", "http"), key(&ns, "b", "http"), key(&ns, "c", "http"));
    agent
        .wait_for(&ns, "a, b and c", |p| {
            [&a, &b, &c]
                .iter()
                .all(|k| endpoints_of(p, k).is_some_and(|e| e.len() == 1))
        })
        .await;
    let syncs_before = agent.syncs().len();

    proxy.cut();
    // While the agent is away: b vanishes, c's endpoint changes, d appears.
    objs.delete_slice("b-1").await;
    objs.delete_service("b").await;
    objs.set_endpoints("c-1", &["10.244.3.33"]).await;
    objs.create_service("d", &[("http", 80)]).await;
    objs.create_slice("d-1", "d", &[("http", 8080)], &["10.244.3.4"]).await;
    disrupt(&cp);
    proxy.restore();

    let d = key(&ns, "d", "http");
    // The watchers retried with exponential backoff while the gate was shut
    // (and kube-apiserver v1.37 takes 10-30 s to restart on a loaded 2-core
    // machine), so the next attempt can be up to kube-runtime's backoff cap
    // (about 40 s with jitter, measured) after the gate reopens.
    agent
        .wait_for_within(Duration::from_secs(90), &ns, "the relisted state", |p| {
            !p.contains_key(&b)
                && endpoints_of(p, &c) == Some(vec!["10.244.3.33:8080".into()])
                && endpoints_of(p, &d) == Some(vec!["10.244.3.4:8080".into()])
        })
        .await;
    // Never a half-empty table: every state programmed since the first
    // complete one still had `a` with its endpoint, and `c` with one.
    for (i, snap) in agent.dataplane.snapshots().iter().enumerate().skip(syncs_before) {
        assert_eq!(
            endpoints_of(snap, &a),
            Some(vec!["10.244.3.1:8080".into()]),
            "snapshot {i} lost a"
        );
        assert_eq!(
            endpoints_of(snap, &c).map(|e| e.len()),
            Some(1),
            "snapshot {i} has c without its endpoint"
        );
    }
    drop(proxy);
    (cp, ns, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_restart_mid_watch_relists_and_deletes_what_vanished() {
    let _serial = SERIAL.lock().await;
    let (cp, ns, agent) = relist_scenario("restart", |cp| cp.restart_apiserver()).await;
    let status = agent.status.borrow().clone();
    assert!(
        status.counters.watch_errors > 0,
        "the watches must have failed and recovered: {status:?}"
    );
    let stopped = agent.stop().await;
    // Exactly the objects the API server has: nothing lost, nothing doubled.
    assert_eq!(
        stopped
            .tracker()
            .table()
            .plans()
            .filter(|(k, _)| *k.service.namespace == *ns)
            .count(),
        3
    );
    cp.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_watch_410_is_recovered_by_a_relist() {
    let _serial = SERIAL.lock().await;
    let (cp, ns, agent) = relist_scenario("gone", |cp| {
        cp.expire_watches();
    })
    .await;
    let status = agent.status.borrow().clone();
    let error = status.last_watch_error.clone().unwrap_or_default();
    assert!(
        error.contains("410") || error.to_lowercase().contains("too old") || error.contains("Expired"),
        "expected a 410 Gone, got {error:?}"
    );
    let stopped = agent.stop().await;
    let ours: Vec<_> = stopped
        .tracker()
        .table()
        .plans()
        .filter(|(k, _)| *k.service.namespace == *ns)
        .collect();
    assert_eq!(ours.len(), 3, "a, c and d, each once");
    for (_, plan) in ours {
        assert_eq!(plan.family(IpFamily::V4).cluster.len(), 1, "no endpoint counted twice");
    }
    cp.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_runs_with_the_shipped_rbac_and_cannot_write() {
    let _serial = SERIAL.lock().await;
    let cp = shared();
    cp.kubectl_ok([
        "apply",
        "-f",
        concat!(env!("CARGO_MANIFEST_DIR"), "/daemonset/rbac.yaml"),
    ]);
    let token = cp
        .kubectl_ok(["create", "token", "sliceproxy", "-n", "kube-system"])
        .trim()
        .to_string();
    let ns = cp.new_namespace("rbac");
    let admin = cp.client().await;
    ensure_node(admin.clone()).await;
    let objs = Objects::new(admin, &ns);
    objs.create_service("web", &[("http", 80)]).await;
    objs.create_slice("web-1", "web", &[("http", 8080)], &["10.244.4.1"])
        .await;

    let sa_client = cp.client_for_token(&token).await;
    let agent = agent::start(sa_client.clone(), NODE);
    let http = key(&ns, "web", "http");
    agent
        .wait_for(&ns, "web with its endpoint", |p| {
            endpoints_of(p, &http) == Some(vec!["10.244.4.1:8080".into()])
        })
        .await;
    assert_eq!(
        agent.status.borrow().counters.watch_errors,
        0,
        "RBAC allowed every watch"
    );
    agent.stop().await;

    // The same identity cannot write what it watches.
    let sa = Objects::new(sa_client, &ns);
    let forbidden = |r: Result<_, kube::Error>| matches!(r, Err(kube::Error::Api(e)) if e.code == 403);
    assert!(forbidden(
        sa.services
            .create(&PostParams::default(), &service_json("evil", &[("x", 1)]))
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        sa.services.delete("web", &DeleteParams::default()).await.map(|_| ())
    ));
    assert!(forbidden(
        sa.slices
            .patch(
                "web-1",
                &PatchParams::default(),
                &Patch::Merge(json!({"endpoints": []}))
            )
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        sa.slices.delete("web-1", &DeleteParams::default()).await.map(|_| ())
    ));
    let as_sa = "--as=system:serviceaccount:kube-system:sliceproxy";
    for verb in ["create", "update", "patch", "delete"] {
        for resource in ["services", "endpointslices.discovery.k8s.io", "nodes"] {
            let out = cp.kubectl(["auth", "can-i", verb, resource, as_sa, "--all-namespaces"]);
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no", "{verb} {resource}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_manifests_pass_server_side_dry_run() {
    let _serial = SERIAL.lock().await;
    let cp = shared();
    let out = cp.kubectl_ok([
        "apply",
        "--dry-run=server",
        "-f",
        concat!(env!("CARGO_MANIFEST_DIR"), "/daemonset/"),
    ]);
    assert!(
        out.contains("serviceaccount/sliceproxy") && out.contains("clusterrole.rbac.authorization.k8s.io/sliceproxy"),
        "{out}"
    );
}
