//! Health, metrics and health-check node ports of the agent against a real
//! etcd + kube-apiserver, with the in-memory dataplane (its `fail_next`
//! stalls syncs on demand).
//!
//! The agent watches every namespace, so these tests run one at a time (a
//! shared lock) and look only at their own namespace.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sliceproxy::config::{Config, ProxyFlags};
use sliceproxy::dataplane::memory::{MemoryDataplane, MemoryHandle};
use sliceproxy::observe::metrics::{self, METRIC_NAMES};
use sliceproxy::observe::{self, Servers};
use sliceproxy::policy::NodeContext;
use sliceproxy::sync::{Agent, SyncSettings};
use sliceproxy::track::Tracker;
use sliceproxy::watch::{WatchConfig, watch_all};
use support::controlplane::shared;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    flags: ProxyFlags,
}

/// A running instrumented agent.
struct Running {
    dataplane: MemoryHandle,
    servers: Servers,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

/// Start the agent as `args` configure it (ports 0: any free one).
async fn start(client: kube::Client, args: &[&str]) -> Running {
    let mut argv = vec!["sliceproxy"];
    argv.extend_from_slice(args);
    let flags = Flags::try_parse_from(argv).expect("flags").flags;
    let (config, _) = Config::load(&flags).expect("config");
    let dataplane = MemoryDataplane::new();
    let handle = dataplane.handle();
    let settings = SyncSettings {
        min_sync_period: config.min_sync_period,
        sync_period: config.sync_period,
    };
    let agent = Agent::new(Tracker::new(NodeContext::new(&config.hostname)), dataplane, settings);
    let (agent, servers) = observe::instrument(agent, &config, "iptables", IpAddr::V4(Ipv4Addr::LOCALHOST))
        .await
        .expect("servers");
    let events = watch_all(
        client,
        &WatchConfig {
            node_name: config.hostname.clone(),
        },
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        agent
            .run(events, async move {
                let _ = stopped.await;
            })
            .await;
    });
    Running {
        dataplane: handle,
        servers,
        stop: Some(stop),
        task,
    }
}

/// GET over HTTP/1.0: (status, body); `None` when nothing listens.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Poll until `path` answers `want`; returns the body.
async fn wait_status(addr: SocketAddr, path: &str, want: u16, what: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = get(addr, path).await;
        if let Some((code, body)) = &got
            && *code == want
        {
            return body.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {path} never answered {want}; last: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ensure_node(client: kube::Client, name: &str) {
    let nodes: Api<Node> = Api::all(client);
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("create Node: {e}"),
    }
}

fn scrape_value(text: &str, sample: &str) -> f64 {
    metrics::parse_text(text)
        .into_iter()
        .find(|(n, _)| n == sample)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{sample} not in:\n{text}"))
}

async fn scrape(addr: SocketAddr) -> String {
    let (code, body) = get(addr, "/metrics").await.expect("metrics server");
    assert_eq!(code, 200);
    body
}

fn slice(name: &str, service: &str, node: &str, ready: bool, trigger: Option<&str>) -> EndpointSlice {
    let mut annotations = serde_json::Map::new();
    if let Some(t) = trigger {
        annotations.insert("endpoints.kubernetes.io/last-change-trigger-time".into(), json!(t));
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}, "annotations": annotations},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.244.9.1"], "conditions": {"ready": ready}, "nodeName": node}],
    }))
    .unwrap()
}

fn service(name: &str) -> Service {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"ports": [{"name": "http", "port": 80}]}}))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_unhealthy_when_syncs_stall_and_recovers() {
    let _serial = SERIAL.lock().await;
    let cp = shared();
    let ns = cp.new_namespace("health");
    let client = cp.client().await;
    let node = "sliceproxy-health-node";
    ensure_node(client.clone(), node).await;
    // sync period 1s: the health timeout (2 x sync period) is 2s.
    let agent = start(
        client.clone(),
        &[
            "--hostname-override",
            node,
            "--healthz-bind-address",
            "127.0.0.1:0",
            "--metrics-bind-address",
            "127.0.0.1:0",
            "--min-sync-period",
            "200ms",
            "--sync-period",
            "1s",
        ],
    )
    .await;
    let healthz = agent.servers.healthz.expect("healthz");
    let body = wait_status(healthz, "/healthz", 200, "after start").await;
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert!(v["lastUpdated"].is_string() && v["currentTime"].is_string(), "{v}");
    assert_eq!(v["nodeEligible"], true);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while agent.dataplane.syncs().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no first sync");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Syncs stall (the backend refuses every one) while a change waits.
    agent.dataplane.fail_next(usize::MAX);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    services.create(&PostParams::default(), &service("web")).await.unwrap();
    let started = tokio::time::Instant::now();
    wait_status(healthz, "/healthz", 503, "stalled").await;
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "unhealthy only after the health timeout, was {:?}",
        started.elapsed()
    );
    wait_status(healthz, "/livez", 503, "stalled").await;
    // The metrics server answers /healthz the same way.
    let metrics_addr = agent.servers.metrics_addr.expect("metrics");
    assert_eq!(get(metrics_addr, "/healthz").await.map(|r| r.0), Some(503));

    // The backend recovers: the retried full sync succeeds.
    agent.dataplane.fail_next(0);
    wait_status(healthz, "/healthz", 200, "recovered").await;
    wait_status(healthz, "/livez", 200, "recovered").await;

    // The Node is tainted for deletion: /healthz fails (drain me), /livez does not.
    let nodes: Api<Node> = Api::all(client.clone());
    let taint =
        json!({"spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "value": "1", "effect": "NoSchedule"}]}});
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(taint))
        .await
        .unwrap();
    let body = wait_status(healthz, "/healthz", 503, "tainted").await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["nodeEligible"], false);
    assert_eq!(get(healthz, "/livez").await.map(|r| r.0), Some(200));
    nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": null}})),
        )
        .await
        .unwrap();
    wait_status(healthz, "/healthz", 200, "untainted").await;

    let text = scrape(metrics_addr).await;
    assert!(scrape_value(&text, "kubeproxy_proxy_healthz_total{code=\"503\"}") >= 1.0);
    assert!(scrape_value(&text, "kubeproxy_proxy_healthz_total{code=\"200\"}") >= 1.0);
    assert!(scrape_value(&text, "sliceproxy_sync_proxy_rules_failures_total") >= 1.0);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_under_kube_proxy_names_and_move() {
    let _serial = SERIAL.lock().await;
    let cp = shared();
    let ns = cp.new_namespace("metrics");
    let client = cp.client().await;
    let node = "sliceproxy-metrics-node";
    ensure_node(client.clone(), node).await;
    let agent = start(
        client.clone(),
        &[
            "--hostname-override",
            node,
            "--healthz-bind-address",
            "127.0.0.1:0",
            "--metrics-bind-address",
            "127.0.0.1:0",
            "--min-sync-period",
            "200ms",
        ],
    )
    .await;
    let addr = agent.servers.metrics_addr.expect("metrics");
    assert_eq!(get(addr, "/proxyMode").await, Some((200, "iptables".to_string())));
    // Probe once so the probe counters have a sample.
    get(agent.servers.healthz.unwrap(), "/healthz").await;
    get(agent.servers.healthz.unwrap(), "/livez").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let before = loop {
        let text = scrape(addr).await;
        if scrape_value(&text, "kubeproxy_sync_full_proxy_rules_duration_seconds_count") >= 1.0 {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "no full sync:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let samples = metrics::parse_text(&before);
    for name in METRIC_NAMES {
        assert!(
            samples.iter().any(|(n, _)| n.starts_with(name)),
            "{name} missing:\n{before}"
        );
    }
    let svc_changes = scrape_value(&before, "kubeproxy_sync_proxy_rules_service_changes_total");
    let ep_changes = scrape_value(&before, "kubeproxy_sync_proxy_rules_endpoint_changes_total");
    let partial = scrape_value(&before, "kubeproxy_sync_partial_proxy_rules_duration_seconds_count");
    let programming = scrape_value(&before, "kubeproxy_network_programming_duration_seconds_count");
    let last = scrape_value(&before, "kubeproxy_sync_proxy_rules_last_timestamp_seconds");
    assert!(last > 1.6e9, "a Unix timestamp: {last}");

    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    services.create(&PostParams::default(), &service("web")).await.unwrap();
    // The controller would stamp when the Pod changed; 3 s ago here.
    let trigger = k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(3);
    slices
        .create(
            &PostParams::default(),
            &slice("web-1", "web", "elsewhere", true, Some(&trigger.to_string())),
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        let text = scrape(addr).await;
        if scrape_value(&text, "kubeproxy_network_programming_duration_seconds_count") > programming
            && scrape_value(&text, "kubeproxy_sync_proxy_rules_endpoint_changes_pending") == 0.0
        {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "network programming never observed:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(scrape_value(&after, "kubeproxy_sync_proxy_rules_service_changes_total") > svc_changes);
    assert!(scrape_value(&after, "kubeproxy_sync_proxy_rules_endpoint_changes_total") > ep_changes);
    assert!(scrape_value(&after, "kubeproxy_sync_partial_proxy_rules_duration_seconds_count") > partial);
    assert!(scrape_value(&after, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") >= last);
    // The observed latency is about the 3 s since the trigger: in the 3 s or 4 s bucket's range.
    let sum = scrape_value(&after, "kubeproxy_network_programming_duration_seconds_sum")
        - scrape_value(&before, "kubeproxy_network_programming_duration_seconds_sum");
    assert!((2.5..30.0).contains(&sum), "latency sum {sum}");

    // A change that waits shows as pending while syncs fail.
    agent.dataplane.fail_next(usize::MAX);
    services.delete("web", &DeleteParams::default()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(addr).await;
        if scrape_value(&text, "kubeproxy_sync_proxy_rules_service_changes_pending") >= 1.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no pending change:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.dataplane.fail_next(0);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_node_port_follows_local_endpoints() {
    let _serial = SERIAL.lock().await;
    let cp = shared();
    let ns = cp.new_namespace("hcnp");
    let client = cp.client().await;
    let node = "sliceproxy-hcnp-node";
    ensure_node(client.clone(), node).await;
    let agent = start(
        client.clone(),
        &[
            "--hostname-override",
            node,
            "--healthz-bind-address",
            "127.0.0.1:0",
            "--metrics-bind-address",
            "127.0.0.1:0",
            "--min-sync-period",
            "200ms",
        ],
    )
    .await;
    // A free port in the node-port range (the API server checks the range).
    let hc_port = (30000..32767)
        .map(|p| p + (std::process::id() as u16 % 700))
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port");
    let hc = SocketAddr::from(([127, 0, 0, 1], hc_port));
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let lb: Service = serde_json::from_value(json!({
        "metadata": {"name": "lb"},
        "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": hc_port,
                 "ports": [{"name": "http", "port": 80}]},
    }))
    .unwrap();
    services.create(&PostParams::default(), &lb).await.unwrap();

    // Opened with no endpoints: 503, upstream's JSON.
    let body = wait_status(hc, "/", 503, "no endpoints").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        json!({"service": {"namespace": ns, "name": "lb"}, "localEndpoints": 0, "serviceProxyHealthy": true})
    );
    // An endpoint elsewhere does not count.
    slices
        .create(&PostParams::default(), &slice("lb-1", "lb", "elsewhere", true, None))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(get(hc, "/").await.map(|r| r.0), Some(503));
    // A ready local endpoint: 200 with the count.
    slices
        .create(&PostParams::default(), &slice("lb-2", "lb", node, true, None))
        .await
        .unwrap();
    let body = wait_status(hc, "/", 200, "local endpoint").await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["localEndpoints"], 1);
    // It stops being ready: 503 again.
    slices
        .patch(
            "lb-2",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"endpoints": [{"addresses": ["10.244.9.2"], "conditions": {"ready": false}, "nodeName": node}]}),
            ),
        )
        .await
        .unwrap();
    wait_status(hc, "/", 503, "local endpoint not ready").await;
    // The Service goes: the port closes.
    services.delete("lb", &DeleteParams::default()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while get(hc, "/").await.is_some() {
        assert!(tokio::time::Instant::now() < deadline, "health check port never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.stop().await;
}

/// The node-address watcher, aimed at a fresh network namespace (the socket
/// belongs to the namespace of the thread that opens it): an address added
/// or removed there bumps the resync trigger and shows in the shared set.
#[test]
fn node_address_changes_trigger_a_resync() {
    let name = format!("sp-addr-{}", std::process::id());
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip").args(args).output().expect("ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip(&["netns", "add", &name]);
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .output();
        }
    }
    let _cleanup = Cleanup(name.clone());
    let path = format!("/var/run/netns/{name}");
    let ns_name = name.clone();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut w = sliceproxy::netaddr::watch_addresses().await.expect("watcher");
            let addr: IpAddr = "192.0.2.77".parse().unwrap();
            assert!(!w.addresses.read().unwrap().contains(&addr));
            let run = |args: Vec<String>| {
                let out = std::process::Command::new("ip").args(&args).output().unwrap();
                assert!(
                    out.status.success(),
                    "{args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            run(vec![
                "-n".into(),
                ns_name.clone(),
                "link".into(),
                "set".into(),
                "lo".into(),
                "up".into(),
            ]);
            let before = *w.changes.borrow_and_update();
            run(["-n", &ns_name, "addr", "add", "192.0.2.77/32", "dev", "lo"]
                .map(String::from)
                .to_vec());
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    w.changes.changed().await.unwrap();
                    if w.addresses.read().unwrap().contains(&addr) {
                        break;
                    }
                }
            })
            .await
            .expect("the new address was noticed");
            assert!(*w.changes.borrow() > before);
            run(["-n", &ns_name, "addr", "del", "192.0.2.77/32", "dev", "lo"]
                .map(String::from)
                .to_vec());
            tokio::time::timeout(Duration::from_secs(10), async {
                while w.addresses.read().unwrap().contains(&addr) {
                    w.changes.changed().await.unwrap();
                }
            })
            .await
            .expect("the removed address was noticed");
        });
    })
    .join()
    .expect("watcher thread");
}
