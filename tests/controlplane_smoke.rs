//! Smoke test for the local control plane used by the integration tests
//! (`tests/support/controlplane.rs`). Needs the binaries from
//! `tests/controlplane/build.sh`.

mod support;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use std::time::Duration;
use support::controlplane::shared;

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "ipFamilyPolicy": "PreferDualStack",
            "ports": [{ "name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080 }],
        },
    }))
    .expect("valid Service")
}

fn endpoint_slice(name: &str, service: &str, ip: &str) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { SERVICE_NAME_LABEL: service } },
        "addressType": "IPv4",
        // Not loopback: the API rejects loopback endpoint addresses.
        "endpoints": [{ "addresses": [ip], "conditions": { "ready": true } }],
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
    }))
    .expect("valid EndpointSlice")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_smoke() {
    // Blocking (starts etcd + kube-apiserver on first use): fine in a test.
    let cp = shared();
    let ns = cp.new_namespace("smoke");
    let client = cp.client().await;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);

    // Create a dual-stack Service and an EndpointSlice for it.
    let svc = services
        .create(&PostParams::default(), &service("web"))
        .await
        .expect("create Service");
    let spec = svc.spec.expect("Service has a spec");
    let cluster_ips = spec.cluster_ips.expect("Service has clusterIPs");
    assert!(
        cluster_ips[0].starts_with("10.96."),
        "IPv4 clusterIP from 10.96.0.0/16: {cluster_ips:?}"
    );
    assert_eq!(cluster_ips.len(), 2, "dual-stack clusterIPs: {cluster_ips:?}");
    assert!(
        cluster_ips[1].starts_with("fd00:96::"),
        "IPv6 clusterIP from fd00:96::/108: {cluster_ips:?}"
    );
    slices
        .create(&PostParams::default(), &endpoint_slice("web-1", "web", "10.244.1.5"))
        .await
        .expect("create EndpointSlice");

    // List them back.
    let by_service = ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}=web"));
    let listed = slices.list(&by_service).await.expect("list EndpointSlices");
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].endpoints[0].addresses, ["10.244.1.5"]);
    assert_eq!(
        services
            .list(&ListParams::default())
            .await
            .expect("list Services")
            .items
            .len(),
        1
    );
    let old_rv = listed.metadata.resource_version.expect("list has a resourceVersion");

    // Restart kube-apiserver: the same client keeps working, data survives.
    cp.restart_apiserver();
    let listed = slices
        .list(&by_service)
        .await
        .expect("list EndpointSlices after restart");
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].metadata.name.as_deref(), Some("web-1"));

    // kubectl works against it, with both client and server versions.
    let version = cp.kubectl_ok(["version", "--output=json"]);
    let version: serde_json::Value = serde_json::from_str(&version).expect("kubectl version JSON");
    let server = version["serverVersion"]["gitVersion"]
        .as_str()
        .expect("serverVersion.gitVersion");
    assert_eq!(server, support::controlplane::pinned_version("K8S_VERSION"));
    assert_eq!(version["clientVersion"]["gitVersion"].as_str(), Some(server));

    // A ServiceAccount token (TokenRequest API) in a kubeconfig of its own.
    cp.kubectl_ok(["-n", &ns, "create", "serviceaccount", "agent"]);
    let token = cp.kubectl_ok(["-n", &ns, "create", "token", "agent"]);
    let kubeconfig = cp.kubeconfig_for_token(token.trim());
    let whoami = cp.kubectl_ok([
        "--kubeconfig".as_ref(),
        kubeconfig.as_os_str(),
        "auth".as_ref(),
        "whoami".as_ref(),
        "--output=jsonpath={.status.userInfo.username}".as_ref(),
    ]);
    assert_eq!(whoami, format!("system:serviceaccount:{ns}:agent"));
    // RBAC is on: the ServiceAccount has no permissions.
    let sa_slices: Api<EndpointSlice> = Api::namespaced(cp.client_for_token(token.trim()).await, &ns);
    match sa_slices.list(&ListParams::default()).await {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("expected 403 Forbidden for an unprivileged ServiceAccount, got {other:?}"),
    }

    // Compaction (+ the restart that empties the watch cache) makes a watch
    // from the old resourceVersion fail with 410 Gone.
    slices
        .create(&PostParams::default(), &endpoint_slice("web-2", "web", "10.244.2.7"))
        .await
        .expect("create second EndpointSlice");
    let compacted_at = cp.expire_watches();
    assert!(compacted_at > old_rv.parse::<i64>().expect("numeric resourceVersion"));
    let mut events = slices
        .watch(&WatchParams::default().timeout(10), &old_rv)
        .await
        .expect("watch request")
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("no watch event within 10s");
    match first {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!(e.code, 410, "expected 410 Gone, got {e:?}"),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }

    // A fresh list + watch from its resourceVersion works again.
    let rv = slices
        .list(&by_service)
        .await
        .expect("relist")
        .metadata
        .resource_version
        .expect("rv");
    let mut events = slices
        .watch(&WatchParams::default().timeout(10), &rv)
        .await
        .expect("rewatch")
        .boxed();
    slices
        .create(&PostParams::default(), &endpoint_slice("web-3", "web", "10.244.3.9"))
        .await
        .expect("create third EndpointSlice");
    match tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("no event within 10s")
    {
        Some(Ok(WatchEvent::Added(s))) => assert_eq!(s.metadata.name.as_deref(), Some("web-3")),
        other => panic!("expected ADDED web-3, got {other:?}"),
    }
}
