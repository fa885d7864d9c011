//! The shipped manifests (`daemonset/`) against a real kube-apiserver:
//! server-side dry-run with `-f` and `-k`, the DaemonSet's shape, and the
//! agent started with exactly the DaemonSet's arguments, its ConfigMap and
//! its ServiceAccount's token, syncing (in-memory dataplane) and healthy.
//!
//! The agent watches every namespace, so tests that run it hold a shared
//! lock and look only at their own namespace.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use serde_json::json;
use sliceproxy::config::{Config, ProxyFlags};
use sliceproxy::dataplane::memory::MemoryDataplane;
use sliceproxy::model::ProxyMode;
use sliceproxy::model::{IpFamily, Protocol, ServicePortKey};
use sliceproxy::policy::NodeContext;
use sliceproxy::sync::{Agent, SyncSettings};
use sliceproxy::track::Tracker;
use sliceproxy::watch::{WatchConfig, watch_all};
use support::controlplane::shared;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/daemonset");

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    flags: ProxyFlags,
}

fn daemonset() -> DaemonSet {
    let text = std::fs::read_to_string(format!("{DIR}/daemonset.yaml")).unwrap();
    serde_yaml::from_str(&text).expect("daemonset.yaml is a DaemonSet")
}

fn configmap() -> ConfigMap {
    let text = std::fs::read_to_string(format!("{DIR}/configmap.yaml")).unwrap();
    serde_yaml::from_str(&text).expect("configmap.yaml is a ConfigMap")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_pass_server_side_dry_run_with_f_and_k() {
    let cp = shared();
    let f = cp.kubectl_ok(["apply", "--dry-run=server", "-f", DIR]);
    let k = cp.kubectl_ok(["apply", "--dry-run=server", "-k", DIR]);
    for out in [&f, &k] {
        for object in [
            "serviceaccount/sliceproxy",
            "clusterrole.rbac.authorization.k8s.io/sliceproxy",
            "clusterrolebinding.rbac.authorization.k8s.io/sliceproxy",
            "configmap/sliceproxy",
            "daemonset.apps/sliceproxy",
        ] {
            assert!(out.contains(object), "{object} missing from:\n{out}");
        }
    }
}

#[test]
fn daemonset_has_the_promised_shape() {
    let ds = daemonset();
    let spec = ds.spec.unwrap();
    let rolling = spec.update_strategy.unwrap().rolling_update.unwrap();
    assert_eq!(
        serde_json::to_value(&rolling).unwrap(),
        json!({"maxUnavailable": 1, "maxSurge": 0})
    );
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("sliceproxy"));
    let tolerations = pod.tolerations.unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()),
        "every taint tolerated"
    );
    let c = &pod.containers[0];
    let caps = c.security_context.as_ref().unwrap().capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..])
    );
    let env = c.env.as_ref().unwrap();
    let node_name = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    assert_eq!(
        node_name
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "spec.nodeName"
    );
    let args = c.args.clone().unwrap();
    assert!(args.contains(&"--hostname-override=$(NODE_NAME)".to_string()));
    assert!(args.iter().any(|a| a.starts_with("--config=")));
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let g = p.as_ref().unwrap().http_get.as_ref().unwrap();
        (g.path.clone().unwrap(), serde_json::to_value(&g.port).unwrap())
    };
    assert_eq!(probe_path(&c.liveness_probe), ("/livez".to_string(), json!(10256)));
    assert_eq!(probe_path(&c.readiness_probe), ("/healthz".to_string(), json!(10256)));
    let data = configmap().data.unwrap();
    assert!(data["config.conf"].contains("kind: KubeProxyConfiguration"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_with_the_daemonsets_arguments_and_token_syncs() {
    let _serial = SERIAL.lock().await;
    let cp = shared();
    let node = "sliceproxy-deploy-node";
    // The pod's view: the ConfigMap mounted where --config points, $(NODE_NAME) expanded.
    let ds = daemonset();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    let mount = container
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "config")
        .unwrap()
        .mount_path
        .clone();
    let dir = tempdir();
    // The ServiceAccount mount, as kubelet lays it out (token filled in below).
    let sa_dir = dir.join("serviceaccount");
    std::fs::create_dir_all(&sa_dir).unwrap();
    std::fs::copy(cp.ca_cert_path(), sa_dir.join("ca.crt")).unwrap();
    for (key, value) in configmap().data.unwrap() {
        let value = value
            .replace(&mount, dir.to_str().unwrap())
            .replace(SA_MOUNT, sa_dir.to_str().unwrap());
        std::fs::write(dir.join(&key), value).unwrap();
    }
    let args: Vec<String> = container
        .args
        .clone()
        .unwrap()
        .into_iter()
        .map(|a| a.replace("$(NODE_NAME)", node).replace(&mount, dir.to_str().unwrap()))
        .collect();
    let mut argv = vec!["sliceproxy".to_string()];
    argv.extend(args);
    let flags = Flags::try_parse_from(&argv)
        .expect("the DaemonSet's arguments parse")
        .flags;
    let (config, warnings) = Config::load(&flags).expect("the DaemonSet's configuration loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.hostname, node);
    assert_eq!(config.mode, ProxyMode::Iptables);
    assert_eq!(config.healthz_bind_address, Some("0.0.0.0:10256".parse().unwrap()));
    assert_eq!(config.metrics_bind_address, Some("127.0.0.1:10249".parse().unwrap()));

    // Identity: the shipped ServiceAccount's token.
    cp.kubectl_ok(["apply", "-f", &format!("{DIR}/rbac.yaml")]);
    let token = cp
        .kubectl_ok(["create", "token", "sliceproxy", "-n", "kube-system"])
        .trim()
        .to_string();
    let admin = cp.client().await;
    let nodes: Api<Node> = Api::all(admin.clone());
    let _ = nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": node}})).unwrap(),
        )
        .await;
    let ns = cp.new_namespace("deploy");
    let services: Api<Service> = Api::namespaced(admin.clone(), &ns);
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "web"}, "spec": {"ports": [{"name": "http", "port": 80}]}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(admin, &ns);
    slices
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
                "endpoints": [{"addresses": ["10.244.7.1"], "nodeName": node}],
            }))
            .unwrap(),
        )
        .await
        .unwrap();

    std::fs::write(sa_dir.join("token"), &token).unwrap();
    // The agent reaches the API server through the shipped kubeconfig.conf
    // (the real address, never the kubernetes Service it has yet to program)
    // with the pod's token file: here with `server` set as an operator would.
    let kubeconfig = config
        .kubeconfig
        .clone()
        .expect("the ConfigMap's config.conf names a kubeconfig");
    assert_eq!(kubeconfig, dir.join("kubeconfig.conf"));
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    assert!(
        text.contains("tokenFile: ") && text.contains("server: https://kube-apiserver.invalid:6443"),
        "{text}"
    );
    std::fs::write(
        &kubeconfig,
        text.replace("https://kube-apiserver.invalid:6443", &cp.url()),
    )
    .unwrap();
    let file = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig.conf parses");
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
            .await
            .expect("kubeconfig.conf is a usable client configuration"),
    )
    .unwrap();
    let dataplane = MemoryDataplane::new();
    let handle = dataplane.handle();
    let agent = Agent::new(
        Tracker::new(NodeContext::new(&config.hostname)),
        dataplane,
        SyncSettings {
            min_sync_period: config.min_sync_period,
            sync_period: config.sync_period,
        },
    );
    // The same wiring as `run_agent` (health-check node ports on loopback here).
    let (agent, servers) = sliceproxy::observe::instrument(agent, &config, "iptables", IpAddr::V4(Ipv4Addr::LOCALHOST))
        .await
        .expect("ports 10256 and 10249 free");
    let status = agent.subscribe();
    let events = watch_all(
        client,
        &WatchConfig {
            node_name: config.hostname.clone(),
        },
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(events, async move {
        let _ = stopped.await;
    }));
    let key = ServicePortKey::new(&ns, "web", "http", Protocol::Tcp);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let programmed = handle.programmed();
        if programmed
            .get(&key)
            .is_some_and(|p| p.family(IpFamily::V4).cluster.len() == 1)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never programmed; status {:?}",
            status.borrow()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status.borrow().counters.watch_errors, 0, "RBAC allowed every watch");
    // What kubelet probes answers.
    let probe = SocketAddr::from(([127, 0, 0, 1], 10256));
    assert_eq!(servers.healthz.map(|a| a.port()), Some(10256));
    let reply = http_get(probe, "/healthz").await;
    assert!(
        reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"),
        "{reply}"
    );
    let reply = http_get(probe, "/livez").await;
    assert!(
        reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"),
        "{reply}"
    );
    let reply = http_get(SocketAddr::from(([127, 0, 0, 1], 10249)), "/proxyMode").await;
    assert!(reply.ends_with("iptables"), "{reply}");
    let _ = stop.send(());
    task.await.unwrap();
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Where Kubernetes mounts a pod's ServiceAccount token and CA.
const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sliceproxy-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("listening");
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    buf
}
