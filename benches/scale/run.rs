//! The driver: one control plane per cluster size, the objects loaded once,
//! then each (mode, proxy) in turn, alone, in a fresh node namespace.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use crate::cgroup::Cgroup;
use crate::controlplane::ControlPlane;
use crate::load::{self, CLUSTER_CIDR, Change, Loaded, Spec, unix};
use crate::netns::Netns;
use crate::nfmon::NfMonitor;
use crate::probe::{self, NODE_IP};
use crate::process::ProxyProcess;
use crate::prom::{Histogram, Metrics, http_get};
use crate::proxy_fwd::GatedProxy;
use crate::results::{Latency, RunResult, Settings, SyncBytes, Versions};

/// Name of the node both proxies run as.
pub const NODE_NAME: &str = "bench-node";
const METRICS_ADDR: &str = "127.0.0.1:10249";

/// What the driver was asked to do.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Directory with kube-apiserver, etcd, kubectl, kube-proxy.
    pub bin_dir: PathBuf,
    /// The sliceproxy binary.
    pub sliceproxy: PathBuf,
    /// Cluster sizes (services).
    pub sizes: Vec<usize>,
    /// Endpoints per service.
    pub endpoints: usize,
    /// Modes.
    pub modes: Vec<String>,
    /// Proxies.
    pub proxies: Vec<String>,
    /// Output directory.
    pub out: PathBuf,
    /// Settings given to both proxies.
    pub settings: Settings,
    /// Quiet window after the cold start.
    pub idle: Duration,
    /// Churned changes.
    pub changes: usize,
    /// Churn rate (changes per second).
    pub rate: f64,
    /// Changes traced for bytes per sync.
    pub traced_changes: usize,
    /// Give up on a cold start after this long.
    pub cold_timeout: Duration,
    /// Connections per spot check.
    pub probe_tries: usize,
    /// Concurrent creates while loading.
    pub parallel: usize,
}

/// Runs the whole plan; returns the results (also written as JSON files).
pub fn run(plan: &Plan, rt: &tokio::runtime::Runtime, versions: &Versions) -> Vec<RunResult> {
    std::fs::create_dir_all(&plan.out).expect("create output directory");
    let mut all = Vec::new();
    let mut seq = 0usize;
    for &size in &plan.sizes {
        eprintln!("scale-bench: === {size} services x {} endpoints ===", plan.endpoints);
        let cp = ControlPlane::start_with_args(&[
            // Room for the parallel load (defaults 400/200) and no priority
            // and fairness queueing in front of it.
            "--max-requests-inflight=2000",
            "--max-mutating-requests-inflight=1000",
            "--enable-priority-and-fairness=false",
        ]);
        let spec = Spec {
            namespace: "bench".into(),
            services: size,
            endpoints: plan.endpoints,
            nodeport_every: 10,
        };
        let client = rt.block_on(cp.client());
        let (mut loaded, load_report) = rt
            .block_on(load::load(&client, &spec, NODE_NAME, NODE_IP, plan.parallel))
            .unwrap_or_else(|e| panic!("loading {size} services failed: {e}"));
        eprintln!(
            "scale-bench: loaded {} objects in {:.1} s ({} in flight)",
            load_report.objects, load_report.seconds, load_report.parallel
        );
        for mode in &plan.modes {
            for proxy in &plan.proxies {
                seq += 1;
                let mut r = RunResult::new(size, plan.endpoints, mode, proxy, versions, &plan.settings);
                r.load = Some(load_report.clone());
                r.load_before = loadavg();
                eprintln!("scale-bench: --- {proxy} {mode} at {size} (load {}) ---", r.load_before);
                let started = Instant::now();
                if let Err(reason) = run_one(plan, rt, &cp, &client, &mut loaded, seq, &mut r) {
                    r.status = reason;
                }
                r.wall_seconds = started.elapsed().as_secs_f64();
                r.load_after = loadavg();
                eprintln!("scale-bench: {proxy} {mode} at {size}: {}", r.summary());
                let file = plan.out.join(format!("run-{size}-{mode}-{proxy}.json"));
                std::fs::write(&file, serde_json::to_string_pretty(&r).expect("serialize")).expect("write result");
                all.push(r);
            }
        }
        drop(cp);
    }
    all
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Why a mode cannot run on this machine at all, before trying.
fn kernel_lacks(mode: &str) -> Option<String> {
    match mode {
        "ipvs" if !Path::new("/proc/net/ip_vs").exists() => {
            Some("not run: this kernel has no IPVS (CONFIG_IP_VS unset: /proc/net/ip_vs absent)".into())
        }
        "iptables" | "nftables" | "ipvs" => None,
        other => Some(format!("not run: unknown mode {other}")),
    }
}

fn config_yaml(mode: &str, kubeconfig: &Path, s: &Settings) -> String {
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {NODE_NAME}
mode: {mode}
clusterCIDR: {CLUSTER_CIDR}
detectLocalMode: ClusterCIDR
healthzBindAddress: 0.0.0.0:10256
metricsBindAddress: {METRICS_ADDR}
iptables:
  masqueradeAll: false
  syncPeriod: {sync}
  minSyncPeriod: {min}
nftables:
  masqueradeAll: false
  syncPeriod: {sync}
  minSyncPeriod: {min}
ipvs:
  syncPeriod: {sync}
  minSyncPeriod: {min}
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
",
        kubeconfig = kubeconfig.display(),
        sync = s.sync_period,
        min = s.min_sync_period,
    )
}

fn scrape(ns: &Netns) -> Option<Metrics> {
    http_get(ns, METRICS_ADDR, "/metrics", Duration::from_secs(10))
        .ok()
        .map(|t| Metrics::parse(&t))
}

fn sync_counts(m: &Metrics) -> (f64, f64, f64) {
    let c = |n: &str| m.get(n, &[]).unwrap_or(0.0);
    (
        c("kubeproxy_sync_proxy_rules_duration_seconds_count"),
        c("kubeproxy_sync_full_proxy_rules_duration_seconds_count"),
        c("kubeproxy_sync_partial_proxy_rules_duration_seconds_count"),
    )
}

const NPD: &str = "kubeproxy_network_programming_duration_seconds";

#[allow(clippy::too_many_arguments)]
fn run_one(
    plan: &Plan,
    rt: &tokio::runtime::Runtime,
    cp: &ControlPlane,
    client: &kube::Client,
    loaded: &mut Loaded,
    seq: usize,
    r: &mut RunResult,
) -> Result<(), String> {
    if let Some(reason) = kernel_lacks(&r.mode) {
        return Err(reason);
    }
    let size = loaded.spec.services;
    let tag = format!("{seq}");
    let run_dir = plan.out.join(format!("run-{size}-{}-{}", r.mode, r.proxy));
    std::fs::create_dir_all(&run_dir).map_err(|e| format!("failed: {e}"))?;
    let err = |what: &str, e: std::io::Error| format!("failed: {what}: {e}");

    let node = Netns::create(&format!("{tag}-node")).map_err(|e| err("node namespace", e))?;
    let clientns = Netns::create(&format!("{tag}-client")).map_err(|e| err("client namespace", e))?;
    probe::wire_node(&node, &clientns).map_err(|e| err("wiring namespaces", e))?;
    r.namespaces = vec![node.name().to_string(), clientns.name().to_string()];

    // The API server, reached on loopback inside the node namespace.
    let api: SocketAddr = cp.url().trim_start_matches("https://").parse().expect("api address");
    let fwd = GatedProxy::start_in_netns(&node.path(), api);
    let kubeconfig = cp.kubeconfig_via(&fwd.url(), cp.admin_token());
    let config = run_dir.join("config.yaml");
    std::fs::write(&config, config_yaml(&r.mode, &kubeconfig, &plan.settings)).map_err(|e| err("config", e))?;

    let (program, args): (PathBuf, Vec<String>) = match r.proxy.as_str() {
        "kube-proxy" => (
            plan.bin_dir.join("kube-proxy"),
            vec![format!("--config={}", config.display()), "--v=2".into()],
        ),
        "sliceproxy" => (plan.sliceproxy.clone(), vec![format!("--config={}", config.display())]),
        other => return Err(format!("not run: unknown proxy {other}")),
    };
    let cold_set: Vec<Ipv4Addr> = (0..size).map(|i| loaded.spec.cluster_ip(i)).collect();
    let mon = NfMonitor::start(&node, cold_set).map_err(|e| err("nf_tables monitor", e))?;
    let cg = Cgroup::create(&format!("scale-bench-{}-{tag}", std::process::id())).map_err(|e| err("cgroup", e))?;
    let mut proc = ProxyProcess::spawn(
        &node,
        &cg,
        &program,
        &args,
        &[("RUST_LOG", "info")],
        &run_dir.join("proxy.log"),
    )
    .map_err(|e| err("start proxy", e))?;
    let t0 = proc.started;

    // --- cold start: the proxy's own "last sync" timestamp, and the kernel.
    let deadline = Instant::now() + plan.cold_timeout;
    let first = loop {
        if let Some(status) = proc.exited() {
            std::thread::sleep(Duration::from_millis(300));
            let tail = proc.tail(3).replace('\n', " | ");
            // Exiting at once is a proxy refusing the mode ("not run");
            // dying later is a failure.
            let early = t0.elapsed().unwrap_or_default() < Duration::from_secs(15);
            let verdict = if early { "not run" } else { "failed" };
            return Err(format!("{verdict}: {} exited ({status}): {tail}", r.proxy));
        }
        if let Some(m) = scrape(&node)
            && let Some(ts) = m.get("kubeproxy_sync_proxy_rules_last_timestamp_seconds", &[])
            && ts > 0.0
        {
            break ts;
        }
        if Instant::now() > deadline {
            r.cpu_total_s = cg.cpu().as_secs_f64();
            r.mem_peak_bytes = cg.mem_peak();
            return Err(format!(
                "failed: no complete sync within {} s (cold start did not finish)",
                plan.cold_timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    r.cold_start_s = Some(first - unix(t0));
    let kdeadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = mon.lock();
        if let Some(done) = st.cold_done {
            r.cold_start_kernel_s = Some(unix(done) - unix(t0));
            break;
        }
        if Instant::now() > kdeadline {
            r.notes.push(format!(
                "kernel monitor: {} of {size} ClusterIPs never seen ({} overflows)",
                st.cold_pending.len(),
                st.overflows
            ));
            break;
        }
        drop(st);
        std::thread::sleep(Duration::from_millis(100));
    }
    r.cold_cpu_s = cg.cpu().as_secs_f64();
    eprintln!(
        "scale-bench:   cold start {:.2} s (kernel {:?}), cpu {:.2} s",
        r.cold_start_s.unwrap_or(0.0),
        r.cold_start_kernel_s,
        r.cold_cpu_s
    );
    let mode = r.mode.clone();
    count_kernel_objects(&node, &mode, r);

    // --- idle window.
    let m0 = scrape(&node).unwrap_or_default();
    let cpu0 = cg.cpu();
    std::thread::sleep(plan.idle);
    let cpu1 = cg.cpu();
    let m1 = scrape(&node).unwrap_or_default();
    let (a0, f0, _) = sync_counts(&m0);
    let (a1, f1, _) = sync_counts(&m1);
    r.idle_window_s = plan.idle.as_secs_f64();
    r.idle_cpu_s = (cpu1 - cpu0).as_secs_f64();
    r.idle_syncs = a1 - a0;
    r.idle_full_syncs = f1 - f0;
    eprintln!(
        "scale-bench:   idle {:.0} s: cpu {:.2} s, {} syncs ({} full)",
        r.idle_window_s, r.idle_cpu_s, r.idle_syncs, r.idle_full_syncs
    );

    // --- churn.
    let h0 = m1.histogram(NPD).unwrap_or_default();
    let (s0, _, _) = sync_counts(&m1);
    let cpu_c0 = cg.cpu();
    let first_id = loaded.churned;
    let changes: Vec<Change> = rt
        .block_on(load::churn(loaded, client, first_id, plan.changes, plan.rate, |c| {
            mon.watch(c.new, c.id)
        }))
        .map_err(|e| format!("failed: churn: {e}"))?;
    let drain = Instant::now() + Duration::from_secs(300).max(plan.settings.sync_period_duration() * 4);
    while Instant::now() < drain {
        let st = mon.lock();
        if changes.iter().all(|c| st.seen.contains_key(&c.id)) {
            break;
        }
        drop(st);
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let the proxy finish the sync that programmed the last change (its
    // metric is observed after the transaction returns).
    std::thread::sleep(Duration::from_secs(2));
    let m2 = scrape(&node).unwrap_or_default();
    r.churn_cpu_s = (cg.cpu() - cpu_c0).as_secs_f64();
    r.churn_syncs = sync_counts(&m2).0 - s0;
    let delta = m2.histogram(NPD).unwrap_or_default().since(&h0);
    r.latency_metric = Some(Latency::from_histogram(&delta));
    {
        let st = mon.lock();
        let lat: Vec<f64> = changes
            .iter()
            .filter_map(|c| st.seen.get(&c.id).map(|t| unix(*t) - c.trigger))
            .collect();
        r.latency_kernel = Some(Latency::from_samples(&lat, changes.len()));
        r.nf_generations = st.generations;
        r.nf_overflows = st.overflows;
    }
    r.changes = changes;
    eprintln!(
        "scale-bench:   churn: metric {:?} kernel {:?}",
        r.latency_metric.as_ref().map(|l| (l.p50, l.p99)),
        r.latency_kernel.as_ref().map(|l| (l.p50, l.p99))
    );

    // --- bytes handed to the kernel per sync (strace on the restore pipes).
    if plan.traced_changes > 0 {
        match trace_bytes(plan, rt, client, loaded, &mon, &proc, &node, &run_dir) {
            Ok(b) => r.bytes = Some(b),
            Err(e) => r.notes.push(format!("bytes per sync not measured: {e}")),
        }
    }
    r.own_sync_log = own_sync_stats(&proc, &r.proxy);

    // --- final kernel state: packet-flow spot checks.
    let sample = sample_services(&loaded.spec);
    match probe::spot_checks(&node, &clientns, loaded, &sample, &format!("{tag}-p"), plan.probe_tries) {
        Ok(checks) => r.spot = checks,
        Err(e) => r.notes.push(format!("spot checks failed to run: {e}")),
    }
    r.spot_pass = !r.spot.is_empty() && r.spot.iter().all(|c| c.pass);

    r.cpu_total_s = cg.cpu().as_secs_f64();
    r.mem_peak_bytes = cg.mem_peak();
    r.kmem_peak_bytes = cg.kmem_peak();
    r.rss_hwm_bytes = proc.vm_hwm().unwrap_or(0);
    r.proxy_alive_at_end = proc.exited().is_none();
    proc.stop(Duration::from_secs(10));
    drop(mon);
    drop(fwd);
    r.status = "ok".into();
    Ok(())
}

/// First, middle and last service, plus the first NodePort after the middle.
fn sample_services(spec: &Spec) -> Vec<usize> {
    let n = spec.services;
    let mut s = vec![0, n / 2, n - 1];
    if let Some(np) = (n / 2..n).find(|&i| spec.node_port(i).is_some()) {
        s.push(np);
    }
    s.sort();
    s.dedup();
    s
}

/// Rules and set elements in the node's kernel (iptables mode:
/// `iptables-save`, else `nft -j list ruleset`, all tables), and whether
/// iptables-legacy holds rules.
fn count_kernel_objects(node: &Netns, mode: &str, r: &mut RunResult) {
    let t = Instant::now();
    if mode == "iptables" {
        // iptables-save is far cheaper than `nft -j list ruleset` on a big
        // iptables-nft ruleset (363 s at 5,000 services next to sliceproxy's
        // back-to-back full rewrites).
        if let Ok(out) = node.exec_ok(&["iptables-save"]) {
            r.kernel_rules = Some(out.lines().filter(|l| l.starts_with("-A")).count());
            r.kernel_elements = Some(0);
        }
    } else if let Ok(json) = node.exec_ok(&["nft", "-j", "list", "ruleset"])
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&json)
    {
        let items = v["nftables"].as_array().cloned().unwrap_or_default();
        r.kernel_rules = Some(items.iter().filter(|i| i.get("rule").is_some()).count());
        r.kernel_elements = Some(
            items
                .iter()
                .filter_map(|i| i.get("set").or_else(|| i.get("map")))
                .map(|s| s["elem"].as_array().map_or(0, |e| e.len()))
                .sum(),
        );
    }
    if mode == "iptables"
        && let Ok(out) = node.exec_ok(&["iptables-legacy-save"])
    {
        let legacy = out.lines().filter(|l| l.starts_with("-A")).count();
        if legacy > 0 {
            r.notes.push(format!(
                "{legacy} rules in iptables-legacy (not seen by the nf_tables monitor)"
            ));
        }
    }
    r.notes.push(format!(
        "counting kernel objects took {:.1} s",
        t.elapsed().as_secs_f64()
    ));
}

/// What the proxy itself says about its syncs (sliceproxy's `synced` log
/// lines with `bytes=`; kube-proxy's `SyncProxyRules complete` lines).
fn own_sync_stats(proc: &ProxyProcess, proxy: &str) -> Vec<String> {
    let lines = proc.lines();
    let keep = |l: &&crate::process::Line| match proxy {
        "sliceproxy" => l.text.contains(" synced"),
        _ => l.text.contains("SyncProxyRules complete") || l.text.contains("Syncing nftables rules"),
    };
    let mut v: Vec<String> = lines.iter().filter(keep).map(|l| l.text.clone()).collect();
    // The cold one and the last 20.
    if v.len() > 21 {
        let tail = v.split_off(v.len() - 20);
        v.truncate(1);
        v.push("...".into());
        v.extend(tail);
    }
    v
}

/// Attaches strace to the proxy (and the children it forks), makes
/// `traced_changes` changes one at a time, and sums the bytes the proxy
/// wrote into pipes other than its stdout/stderr (the stdin of
/// `iptables-restore` / `nft -f -`), grouped into bursts (one per sync).
#[allow(clippy::too_many_arguments)]
fn trace_bytes(
    plan: &Plan,
    rt: &tokio::runtime::Runtime,
    client: &kube::Client,
    loaded: &mut Loaded,
    mon: &NfMonitor,
    proc: &ProxyProcess,
    node: &Netns,
    run_dir: &Path,
) -> Result<SyncBytes, String> {
    let out = run_dir.join("strace.txt");
    let mut strace = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-ttt",
            "-e",
            "trace=write",
            "-e",
            "signal=none",
            "-y",
            "-s",
            "0",
            "-o",
        ])
        .arg(&out)
        .args(["-p", &proc.pid().to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run strace: {e}"))?;
    std::thread::sleep(Duration::from_secs(2));
    let m0 = scrape(node).unwrap_or_default();
    let (s0, _, _) = sync_counts(&m0);
    let mut rules_last = Vec::new();
    for _ in 0..plan.traced_changes {
        let id = loaded.churned;
        let c = rt
            .block_on(loaded.change(client, id, |c| mon.watch(c.new, c.id)))
            .map_err(|e| format!("change failed: {e}"))?;
        let until = Instant::now() + Duration::from_secs(120);
        while Instant::now() < until && !mon.lock().seen.contains_key(&c.id) {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(1500));
        if let Some(m) = scrape(node)
            && let Some(v) = m.get("kubeproxy_sync_proxy_rules_iptables_last", &[("table", "nat")])
        {
            rules_last.push(v);
        }
    }
    let (s1, _, _) = sync_counts(&scrape(node).unwrap_or_default());
    // SAFETY: SIGINT to the strace we started: it detaches and exits.
    unsafe { libc::kill(strace.id() as i32, libc::SIGINT) };
    let _ = strace.wait();
    let text = std::fs::read_to_string(&out).map_err(|e| format!("cannot read {}: {e}", out.display()))?;
    let mut bursts: Vec<(f64, u64)> = Vec::new();
    for line in text.lines() {
        // "<pid> <secs.usecs> write(7<pipe:[123]>, ""..., 4096) = 4096"
        let mut it = line.split_whitespace();
        let (Some(_pid), Some(ts)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(ts) = ts.parse::<f64>() else { continue };
        let Some(call) = line.find("write(") else { continue };
        let rest = &line[call + 6..];
        let fd: u32 = rest.split('<').next().and_then(|f| f.parse().ok()).unwrap_or(0);
        if fd <= 2 || !rest.contains("<pipe:[") {
            continue;
        }
        let Some(n) = line.rsplit("= ").next().and_then(|n| n.trim().parse::<u64>().ok()) else {
            continue;
        };
        match bursts.last_mut() {
            Some((last, sum)) if ts - *last < 0.2 => {
                *last = ts;
                *sum += n;
            }
            _ => bursts.push((ts, n)),
        }
    }
    let mut sizes: Vec<u64> = bursts.iter().map(|b| b.1).collect();
    sizes.sort_unstable();
    Ok(SyncBytes {
        method: "strace -f -e trace=write on the proxy: bytes written into pipes other than stdout/stderr \
                 (the stdin of iptables-restore / nft), bursts < 200 ms apart summed as one sync"
            .into(),
        changes: plan.traced_changes,
        syncs: s1 - s0,
        bursts: bursts.iter().map(|b| b.1).collect(),
        median: sizes.get(sizes.len() / 2).copied(),
        max: sizes.last().copied(),
        kube_proxy_iptables_last_nat: rules_last,
    })
}

impl Settings {
    /// The sync period as a Duration.
    pub fn sync_period_duration(&self) -> Duration {
        let s = self.sync_period.trim_end_matches('s');
        Duration::from_secs_f64(s.parse().unwrap_or(30.0))
    }
}

/// Unused-import guard for SystemTime in some cfgs.
#[allow(dead_code)]
fn _t(_: SystemTime, _: Histogram) {}
