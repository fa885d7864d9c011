//! The semantic differential: the same snapshot loaded into a real API
//! server, kube-proxy and sliceproxy run in turn (iptables mode) in a fresh
//! node namespace carrying the node's addresses, their rules dumped with
//! `iptables-save`/`ip6tables-save`, and every frontend of every Service
//! port simulated for every client class through both dumps with the
//! interpreter in `iptsim.rs`. Every (frontend, client) whose set of
//! outcomes differs is listed, classified as a known intended difference
//! (issue 14's (a) and (b)) or as unexplained.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

use crate::cgroup::Cgroup;
use crate::controlplane::ControlPlane;
use crate::iptsim::{self, Outcome, Packet, Ruleset};
use crate::netns::{self, Netns};
use crate::process::ProxyProcess;
use crate::prom::{Metrics, http_get};
use crate::proxy_fwd::GatedProxy;

/// Arguments of `scale-bench diff`.
#[derive(clap::Args)]
pub struct DiffArgs {
    /// Directory with kube-apiserver, etcd, kubectl and kube-proxy.
    #[arg(long)]
    pub bin_dir: PathBuf,
    /// The sliceproxy binary.
    #[arg(long)]
    pub sliceproxy: PathBuf,
    /// A snapshot (multi-document YAML or a List) with Nodes, Services and EndpointSlices.
    #[arg(long, conflicts_with = "generate")]
    pub snapshot: Option<PathBuf>,
    /// Instead of a snapshot, generate a cluster of this many Services
    /// (written to OUT/generated.yaml).
    #[arg(long)]
    pub generate: Option<usize>,
    /// Seed of the generator.
    #[arg(long, default_value_t = 14)]
    pub seed: u64,
    /// The node both proxies run as.
    #[arg(long, default_value = "node-a")]
    pub node: String,
    /// Pod CIDRs (both families allowed).
    #[arg(long, default_value = "10.244.0.0/16,fd00:244::/32")]
    pub cluster_cidr: String,
    /// Output directory (dumps, report).
    #[arg(long, default_value = "target/proxy-diff")]
    pub out: PathBuf,
    /// Dumps to compare instead of running the proxies (KUBE_PROXY_DUMP,SLICEPROXY_DUMP; IPv4).
    #[arg(long, value_delimiter = ',', num_args = 2)]
    pub dumps: Option<Vec<PathBuf>>,
}

/// The snapshot's objects.
#[derive(Default)]
struct Snapshot {
    nodes: Vec<Node>,
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
}

fn read_snapshot(text: &str) -> Snapshot {
    let mut s = Snapshot::default();
    let mut push = |v: serde_yaml::Value| {
        let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("").to_string();
        match kind.as_str() {
            "Node" => s.nodes.push(serde_yaml::from_value(v).expect("Node")),
            "Service" => s.services.push(serde_yaml::from_value(v).expect("Service")),
            "EndpointSlice" => s.slices.push(serde_yaml::from_value(v).expect("EndpointSlice")),
            _ => {}
        }
    };
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).expect("YAML document");
        if v.get("kind").and_then(|k| k.as_str()) == Some("List") {
            for item in v
                .get("items")
                .and_then(|i| i.as_sequence())
                .cloned()
                .unwrap_or_default()
            {
                push(item);
            }
        } else if !v.is_null() {
            push(v);
        }
    }
    s
}

async fn load_snapshot(client: &kube::Client, s: &Snapshot) -> Result<(), kube::Error> {
    let pp = PostParams::default();
    let namespaces: BTreeSet<String> = s
        .services
        .iter()
        .filter_map(|x| x.metadata.namespace.clone())
        .chain(s.slices.iter().filter_map(|x| x.metadata.namespace.clone()))
        .collect();
    let ns_api: Api<Namespace> = Api::all(client.clone());
    for n in namespaces {
        let obj: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": n}})).expect("ns");
        let _ = ns_api.create(&pp, &obj).await;
    }
    let nodes: Api<Node> = Api::all(client.clone());
    for n in &s.nodes {
        let mut obj = n.clone();
        obj.metadata.resource_version = None;
        let status = obj.status.take();
        let name = obj.metadata.name.clone().unwrap_or_default();
        nodes.create(&pp, &obj).await?;
        if let Some(st) = status {
            nodes
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({ "status": st })),
                )
                .await?;
        }
    }
    for svc in &s.services {
        let ns = svc.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let api: Api<Service> = Api::namespaced(client.clone(), &ns);
        let mut obj = svc.clone();
        obj.metadata.resource_version = None;
        let status = obj.status.take();
        let name = obj.metadata.name.clone().unwrap_or_default();
        api.create(&pp, &obj).await?;
        if let Some(st) = status {
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "status": st })),
            )
            .await?;
        }
    }
    for sl in &s.slices {
        let ns = sl.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
        let mut obj = sl.clone();
        obj.metadata.resource_version = None;
        api.create(&pp, &obj).await?;
    }
    Ok(())
}

fn node_ips(s: &Snapshot, node: &str) -> Vec<IpAddr> {
    s.nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() == Some(node))
        .flat_map(|n| n.status.iter().flat_map(|st| st.addresses.iter().flatten()))
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

/// Runs `proxy` in a fresh namespace with the node's addresses and dumps
/// its rules (IPv4, IPv6).
#[allow(clippy::too_many_arguments)]
fn run_and_dump(
    a: &DiffArgs,
    cp: &ControlPlane,
    proxy: &str,
    ips: &[IpAddr],
    out: &Path,
) -> Result<(String, String), String> {
    let node = Netns::create(&format!("diff-{proxy}")).map_err(|e| e.to_string())?;
    let lan = Netns::create(&format!("diff-{proxy}-lan")).map_err(|e| e.to_string())?;
    netns::veth(&node, "eth0", &lan, "eth0").map_err(|e| e.to_string())?;
    for ip in ips {
        let prefix = if ip.is_ipv4() { 24 } else { 64 };
        node.ip(&["addr", "add", &format!("{ip}/{prefix}"), "dev", "eth0", "nodad"])
            .map_err(|e| e.to_string())?;
    }
    let api: SocketAddr = cp.url().trim_start_matches("https://").parse().expect("api");
    let fwd = GatedProxy::start_in_netns(&node.path(), api);
    let kubeconfig = cp.kubeconfig_via(&fwd.url(), cp.admin_token());
    let config = out.join(format!("{proxy}-config.yaml"));
    std::fs::write(
        &config,
        format!(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {}
hostnameOverride: {}
mode: iptables
clusterCIDR: {}
detectLocalMode: ClusterCIDR
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 0.0.0.0:10256
iptables:
  syncPeriod: 30s
  minSyncPeriod: 1s
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
",
            kubeconfig.display(),
            a.node,
            a.cluster_cidr
        ),
    )
    .map_err(|e| e.to_string())?;
    let (program, args) = match proxy {
        "kube-proxy" => (
            a.bin_dir.join("kube-proxy"),
            vec![format!("--config={}", config.display()), "--v=2".into()],
        ),
        _ => (a.sliceproxy.clone(), vec![format!("--config={}", config.display())]),
    };
    let cg = Cgroup::create(&format!("scale-bench-{}-diff-{proxy}", std::process::id())).map_err(|e| e.to_string())?;
    let mut p = ProxyProcess::spawn(
        &node,
        &cg,
        &program,
        &args,
        &[("RUST_LOG", "info")],
        &out.join(format!("{proxy}.log")),
    )
    .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(st) = p.exited() {
            return Err(format!("{proxy} exited ({st}): {}", p.tail(5)));
        }
        let synced = http_get(&node, "127.0.0.1:10249", "/metrics", Duration::from_secs(5))
            .ok()
            .map(|t| Metrics::parse(&t))
            .and_then(|m| m.get("kubeproxy_sync_proxy_rules_last_timestamp_seconds", &[]))
            .is_some_and(|v| v > 0.0);
        if synced {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{proxy} did not sync within 120 s: {}", p.tail(5)));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    // Both families are synced by then in both proxies; leave a margin for
    // the second family's transaction.
    std::thread::sleep(Duration::from_secs(3));
    let v4 = node.exec_ok(&["iptables-save"]).map_err(|e| e.to_string())?;
    let v6 = node.exec_ok(&["ip6tables-save"]).map_err(|e| e.to_string())?;
    let legacy = node.exec_ok(&["iptables-legacy-save"]).unwrap_or_default();
    if legacy.lines().any(|l| l.starts_with("-A")) {
        return Err(format!(
            "{proxy} wrote iptables-legacy rules; the differential reads iptables-nft"
        ));
    }
    std::fs::write(out.join(format!("{proxy}-ipv4.txt")), &v4).map_err(|e| e.to_string())?;
    std::fs::write(out.join(format!("{proxy}-ipv6.txt")), &v6).map_err(|e| e.to_string())?;
    p.stop(Duration::from_secs(10));
    drop(fwd);
    Ok((v4, v6))
}

/// One frontend of a Service port.
#[derive(Clone, Debug)]
struct Frontend {
    service: String,
    what: String,
    ip: IpAddr,
    port: u16,
    proto: String,
    source_ranges: Vec<IpNet>,
    endpoints: Vec<IpAddr>,
    duplicate_endpoint: bool,
}

fn frontends(s: &Snapshot, node_ips: &[IpAddr], v6: bool) -> Vec<Frontend> {
    let fam = |ip: &IpAddr| ip.is_ipv6() == v6;
    let mut out = Vec::new();
    for svc in &s.services {
        let Some(spec) = &svc.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let slices: Vec<&EndpointSlice> = s
            .slices
            .iter()
            .filter(|sl| {
                sl.metadata.namespace.as_deref() == Some(&ns)
                    && sl
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("kubernetes.io/service-name"))
                        .map(String::as_str)
                        == Some(&name)
            })
            .collect();
        let mut seen: BTreeMap<String, BTreeSet<bool>> = BTreeMap::new();
        let mut endpoints = Vec::new();
        for sl in &slices {
            for ep in &sl.endpoints {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                for a in &ep.addresses {
                    seen.entry(a.clone()).or_default().insert(ready);
                    if let Ok(ip) = a.parse::<IpAddr>()
                        && fam(&ip)
                        && !endpoints.contains(&ip)
                    {
                        endpoints.push(ip);
                    }
                }
            }
        }
        let duplicate_endpoint = seen.values().any(|r| r.len() > 1);
        let ranges: Vec<IpNet> = spec
            .load_balancer_source_ranges
            .iter()
            .flatten()
            .filter_map(|r| r.trim().parse().ok())
            .filter(|n: &IpNet| n.addr().is_ipv6() == v6)
            .collect();
        let cluster_ips: Vec<IpAddr> = spec
            .cluster_ips
            .clone()
            .or_else(|| spec.cluster_ip.clone().map(|c| vec![c]))
            .unwrap_or_default()
            .iter()
            .filter_map(|c| c.parse().ok())
            .filter(fam)
            .collect();
        let lb_ips: Vec<IpAddr> = svc
            .status
            .iter()
            .flat_map(|st| st.load_balancer.iter().flat_map(|lb| lb.ingress.iter().flatten()))
            .filter_map(|i| i.ip.as_ref()?.parse().ok())
            .filter(fam)
            .collect();
        let ext_ips: Vec<IpAddr> = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|i| i.parse().ok())
            .filter(fam)
            .collect();
        for p in spec.ports.iter().flatten() {
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into()).to_lowercase();
            let port_name = p.name.clone().unwrap_or_default();
            let service = format!("{ns}/{name}:{port_name}/{}", proto.to_uppercase());
            let mk = |what: String, ip: IpAddr, port: u16, ranges: Vec<IpNet>| Frontend {
                service: service.clone(),
                what,
                ip,
                port,
                proto: proto.clone(),
                source_ranges: ranges,
                endpoints: endpoints.clone(),
                duplicate_endpoint,
            };
            let port = p.port as u16;
            for ip in &cluster_ips {
                out.push(mk(format!("ClusterIP {ip}"), *ip, port, vec![]));
            }
            for ip in &ext_ips {
                out.push(mk(format!("externalIP {ip}"), *ip, port, vec![]));
            }
            for ip in &lb_ips {
                out.push(mk(format!("LoadBalancer {ip}"), *ip, port, ranges.clone()));
            }
            if let Some(np) = p.node_port {
                for ip in node_ips.iter().filter(|i| fam(i)) {
                    out.push(mk(format!("NodePort {ip}"), *ip, np as u16, vec![]));
                }
                let lo: IpAddr = if v6 {
                    "::1".parse().expect("ip")
                } else {
                    "127.0.0.1".parse().expect("ip")
                };
                out.push(mk(format!("NodePort {lo}"), lo, np as u16, vec![]));
            }
        }
    }
    out
}

/// A client class: name, source address, arriving (`Some(iif)`) or node-local.
fn clients(f: &Frontend, pod_net: Option<IpNet>, node_ip: Option<IpAddr>, v6: bool) -> Vec<(String, IpAddr, bool)> {
    let ext: IpAddr = if v6 {
        "2001:db8:99::1".parse().expect("ip")
    } else {
        "198.18.0.1".parse().expect("ip")
    };
    if f.ip.is_loopback() {
        return vec![("node (loopback)".into(), f.ip, true)];
    }
    let mut v = Vec::new();
    if let Some(net) = pod_net {
        // A pod on another node, inside the cluster CIDR, not an endpoint.
        let pod = match net.addr() {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 0x00_00_63_63).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 0x6363).into()),
        };
        v.push(("pod".into(), pod, false));
    }
    if let Some(ep) = f.endpoints.first() {
        v.push(("pod that is an endpoint (hairpin)".into(), *ep, false));
    }
    if let Some(n) = node_ip {
        v.push(("node".into(), n, true));
    }
    if f.source_ranges.is_empty() {
        v.push(("external".into(), ext, false));
    } else {
        let inside = f.source_ranges[0].hosts().next().unwrap_or(f.source_ranges[0].addr());
        v.push((format!("external inside {}", f.source_ranges[0]), inside, false));
        if !f.source_ranges.iter().any(|r| r.contains(&ext)) {
            v.push(("external outside the source ranges".into(), ext, false));
        }
    }
    v
}

/// One line of the comparison.
#[derive(Clone, Debug, serde::Serialize)]
struct Row {
    family: String,
    service: String,
    frontend: String,
    client: String,
    kube_proxy: String,
    sliceproxy: String,
    equal: bool,
    class: String,
}

fn show(o: &Result<BTreeSet<Outcome>, String>) -> String {
    match o {
        Ok(s) if s.is_empty() => "(nothing)".into(),
        Ok(s) => s.iter().map(|o| o.to_string()).collect::<Vec<_>>().join(" "),
        Err(e) => format!("error: {e}"),
    }
}

fn compare(s: &Snapshot, a: &DiffArgs, kp: &str, sp: &str, v6: bool, node_ips: &[IpAddr]) -> Result<Vec<Row>, String> {
    let kp = Ruleset::parse(kp).map_err(|e| format!("kube-proxy dump: {e}"))?;
    let sp = Ruleset::parse(sp).map_err(|e| format!("sliceproxy dump: {e}"))?;
    let mut local: Vec<IpNet> = node_ips.iter().map(|i| IpNet::from(*i)).collect();
    local.push("127.0.0.0/8".parse().expect("net"));
    local.push("::1/128".parse().expect("net"));
    let node = iptsim::Node { local };
    let pod_net = a
        .cluster_cidr
        .split(',')
        .filter_map(|c| c.trim().parse::<IpNet>().ok())
        .find(|n| n.addr().is_ipv6() == v6);
    let node_ip = node_ips.iter().copied().find(|i| i.is_ipv6() == v6);
    let mut rows = Vec::new();
    for f in frontends(s, node_ips, v6) {
        for (client, src, local_out) in clients(&f, pod_net, node_ip, v6) {
            let pkt = Packet {
                src,
                dst: f.ip,
                proto: f.proto.clone(),
                dport: f.port,
                sport: 40000,
                iif: (!local_out).then(|| "eth0".to_string()),
                mark: 0,
            };
            let ko = kp.simulate(&pkt, local_out, &node).map_err(|e| e.to_string());
            let so = sp.simulate(&pkt, local_out, &node).map_err(|e| e.to_string());
            let equal = matches!((&ko, &so), (Ok(x), Ok(y)) if x == y);
            let class = if equal {
                "equal".to_string()
            } else if f.ip.is_loopback() {
                "known (a): kube-proxy serves NodePorts on localhost (--iptables-localhost-nodeports)".into()
            } else if f.duplicate_endpoint {
                "known (b): an endpoint in two slices (ready + not ready): sliceproxy prefers the ready copy".into()
            } else {
                "UNEXPLAINED".into()
            };
            rows.push(Row {
                family: if v6 { "IPv6" } else { "IPv4" }.into(),
                service: f.service.clone(),
                frontend: format!("{}:{}/{}", f.what, f.port, f.proto.to_uppercase()),
                client,
                kube_proxy: show(&ko),
                sliceproxy: show(&so),
                equal,
                class,
            });
        }
    }
    Ok(rows)
}

/// `scale-bench diff`.
pub fn main(a: DiffArgs) {
    crate::preflight(&["ip", "iptables-save", "ip6tables-save", "iptables-legacy-save"]);
    crate::use_bin_dir(&a.bin_dir);
    std::fs::create_dir_all(&a.out).expect("output directory");
    let text = match (&a.snapshot, a.generate) {
        (Some(p), _) => std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        (None, Some(n)) => {
            let y = generate(n, a.seed);
            std::fs::write(a.out.join("generated.yaml"), &y).expect("write generated.yaml");
            y
        }
        (None, None) => {
            eprintln!("scale-bench diff: give --snapshot FILE or --generate N");
            std::process::exit(2);
        }
    };
    let snap = read_snapshot(&text);
    let ips = node_ips(&snap, &a.node);
    if ips.is_empty() {
        eprintln!(
            "scale-bench diff: node {} has no InternalIP/ExternalIP in the snapshot",
            a.node
        );
        std::process::exit(2);
    }
    let dumps = match &a.dumps {
        Some(d) => {
            let r = |p: &PathBuf| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            vec![(r(&d[0]), String::new()), (r(&d[1]), String::new())]
        }
        None => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let cp = ControlPlane::start();
            let client = rt.block_on(cp.client());
            rt.block_on(load_snapshot(&client, &snap))
                .unwrap_or_else(|e| panic!("loading the snapshot failed: {e}"));
            let mut d = Vec::new();
            for proxy in ["kube-proxy", "sliceproxy"] {
                match run_and_dump(&a, &cp, proxy, &ips, &a.out) {
                    Ok(x) => d.push(x),
                    Err(e) => {
                        eprintln!("scale-bench diff: {proxy}: {e}");
                        std::process::exit(1);
                    }
                }
            }
            d
        }
    };
    let mut rows = Vec::new();
    for (v6, pick) in [(false, 0usize), (true, 1usize)] {
        let (kp, sp) = if pick == 0 {
            (&dumps[0].0, &dumps[1].0)
        } else {
            (&dumps[0].1, &dumps[1].1)
        };
        if kp.trim().is_empty() && sp.trim().is_empty() {
            continue;
        }
        match compare(&snap, &a, kp, sp, v6, &ips) {
            Ok(r) => rows.extend(r),
            Err(e) => {
                eprintln!("scale-bench diff: {e}");
                std::process::exit(1);
            }
        }
    }
    let mut md = String::new();
    let source = a
        .snapshot
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| format!("generated ({} services, seed {})", a.generate.unwrap_or(0), a.seed));
    let differ: Vec<&Row> = rows.iter().filter(|r| !r.equal).collect();
    let unexplained = differ.iter().filter(|r| r.class == "UNEXPLAINED").count();
    let _ = writeln!(
        md,
        "Differential on {source}, node {}: {} (frontend, client) cases, {} equal, {} differ ({} unexplained).\n",
        a.node,
        rows.len(),
        rows.len() - differ.len(),
        differ.len(),
        unexplained
    );
    if !differ.is_empty() {
        let _ = writeln!(
            md,
            "| family | frontend | service | client | kube-proxy | sliceproxy | class |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for r in &differ {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.family, r.frontend, r.service, r.client, r.kube_proxy, r.sliceproxy, r.class
            );
        }
    }
    std::fs::write(a.out.join("diff.md"), &md).expect("write diff.md");
    std::fs::write(
        a.out.join("diff.json"),
        serde_json::to_string_pretty(&rows).expect("json"),
    )
    .expect("write diff.json");
    print!("{md}");
    if unexplained > 0 {
        std::process::exit(1);
    }
}

/// A generated endpoint: address, node, ready, serving, terminating.
type GenEndpoint = (String, String, bool, bool, bool);

/// A reproducible synthetic cluster (node ports unique up to 850 Services)
/// exercising what the rules depend on:
/// every Service type, both traffic policies, source ranges, external IPs,
/// affinity, multi-port TCP/UDP, local and remote endpoints, terminating and
/// not-serving endpoints, endpoints split over two slices, empty services
/// and (rarely) an endpoint listed in two slices.
pub fn generate(n: usize, seed: u64) -> String {
    let mut rng = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move |m: u64| -> u64 {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (rng >> 33) % m.max(1)
    };
    let mut y = String::from(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n  labels:\n    topology.kubernetes.io/zone: zone-a\nstatus:\n  addresses:\n  - type: InternalIP\n    address: 192.168.50.10\n---\napiVersion: v1\nkind: Node\nmetadata:\n  name: node-b\n  labels:\n    topology.kubernetes.io/zone: zone-b\nstatus:\n  addresses:\n  - type: InternalIP\n    address: 192.168.50.11\n",
    );
    let mut ep_counter = 0u32;
    for i in 0..n {
        let name = format!("gen-{i:04}");
        let kind = match next(4) {
            0 | 1 => "ClusterIP",
            2 => "NodePort",
            _ => "LoadBalancer",
        };
        let ports = 1 + next(2) as usize;
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: gen\nspec:\n  type: {kind}\n  clusterIP: 10.96.{}.{}\n  clusterIPs: [10.96.{}.{}]\n",
            10 + i / 250,
            1 + i % 250,
            10 + i / 250,
            1 + i % 250
        );
        if kind != "ClusterIP" && next(3) == 0 {
            y.push_str("  externalTrafficPolicy: Local\n");
            if kind == "LoadBalancer" {
                // Explicit, so that it never takes a node port chosen below.
                let _ = writeln!(y, "  healthCheckNodePort: {}", 31700 + i as u32 % 1000);
            }
        }
        if next(10) == 0 {
            y.push_str("  internalTrafficPolicy: Local\n");
        }
        if next(7) == 0 {
            let _ = write!(
                y,
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {}\n",
                60 + next(3) * 300
            );
        }
        if next(10) == 0 {
            // Unique per Service: two Services claiming one address:port is
            // a conflict each proxy resolves its own way (seen: they differ).
            let _ = writeln!(y, "  externalIPs: [100.65.{}.{}]", i / 250, 1 + i % 250);
        }
        if kind == "LoadBalancer" && next(3) == 0 {
            y.push_str("  loadBalancerSourceRanges: [192.0.2.0/24, 198.19.0.0/16]\n");
        }
        y.push_str("  ports:\n");
        let mut port_list = Vec::new();
        for p in 0..ports {
            let proto = if next(5) == 0 { "UDP" } else { "TCP" };
            let port = 80 + p as u16 * 1000 + next(3) as u16;
            let _ = write!(
                y,
                "  - name: p{p}\n    port: {port}\n    targetPort: {}\n    protocol: {proto}\n",
                8000 + p * 10
            );
            if kind != "ClusterIP" {
                let _ = writeln!(y, "    nodePort: {}", 30000 + (i * 2 + p) as u32 % 1700);
            }
            port_list.push((format!("p{p}"), 8000 + p * 10, proto));
        }
        if kind == "LoadBalancer" {
            let _ = write!(
                y,
                "status:\n  loadBalancer:\n    ingress:\n    - ip: 100.64.{}.{}\n",
                i / 250,
                1 + i % 250
            );
        }
        let endpoints = next(5) as usize; // 0..4
        let two_slices = endpoints >= 2 && next(3) == 0;
        let mut eps: Vec<GenEndpoint> = Vec::new();
        for _ in 0..endpoints {
            ep_counter += 1;
            let node = if next(3) == 0 { "node-a" } else { "node-b" };
            let ip = format!("10.244.{}.{}", 1 + ep_counter / 250, 1 + ep_counter % 250);
            let (ready, serving, terminating) = match next(6) {
                0 => (false, true, true),
                1 => (false, false, true),
                _ => (true, true, false),
            };
            eps.push((ip, node.to_string(), ready, serving, terminating));
        }
        // Rarely, one endpoint also listed (terminating) in a second slice.
        let duplicate = !eps.is_empty() && eps[0].2 && next(15) == 0;
        let groups: Vec<Vec<GenEndpoint>> = if two_slices {
            let half = eps.len() / 2;
            vec![eps[..half].to_vec(), eps[half..].to_vec()]
        } else {
            vec![eps.clone()]
        };
        let mut groups = groups;
        if duplicate {
            let mut d = eps[0].clone();
            d.2 = false;
            d.4 = true;
            groups.push(vec![d]);
        }
        for (k, g) in groups.iter().enumerate() {
            let _ = write!(
                y,
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-{k}\n  namespace: gen\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n"
            );
            for (pn, tp, proto) in &port_list {
                let _ = write!(y, "- name: {pn}\n  port: {tp}\n  protocol: {proto}\n");
            }
            if g.is_empty() {
                y.push_str("endpoints: []\n");
            } else {
                y.push_str("endpoints:\n");
            }
            for (ip, node, ready, serving, terminating) in g {
                let _ = write!(
                    y,
                    "- addresses: [{ip}]\n  nodeName: {node}\n  conditions:\n    ready: {ready}\n    serving: {serving}\n    terminating: {terminating}\n"
                );
            }
        }
    }
    y
}
