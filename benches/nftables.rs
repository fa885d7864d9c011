//! `--proxy-mode nftables` end to end on the real kernel, in a fresh
//! network namespace: model objects -> `Tracker` -> `NftablesDataplane` ->
//! netlink commit acknowledged. Every timed operation includes the
//! tracker's change and the backend's diff, encoding and commit.
//!
//! `cargo bench --bench nftables` measures 1,000 and 10,000 services x 10
//! endpoints (`NFT_BENCH_SIZES=1000,10000`): cold full sync, periodic full
//! sync (nothing changed: GETGEN only), one endpoint replaced (same count),
//! one endpoint added and removed, one service added and removed, and the
//! cold load of the rendered script through `nft -f` for comparison.
//! Criterion's sample counts are reduced (cold loads: 10 samples at 1,000,
//! 10 at 10,000 with flat sampling, i.e. one load per sample; single changes:
//! 50 at 1,000, 20 at 10,000) because one cold load at 10,000 takes seconds.
//! Under `cargo test --benches` it runs once at 50 services. Needs root.
//!
//! Layout of the synthetic cluster: service i has cluster IP 10.96.x.y,
//! TCP port 80 -> 8080, a node port for the first 2,000 services, and 10
//! endpoints in 10.128.0.0/9 (the first on this node, the others on
//! node-b).

#[path = "../tests/nft_support/mod.rs"]
mod nft_support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode};
use nft_support::Netns;
use nft_support::topology::{service, slice};
use serde_json::json;
use sliceproxy::dataplane::frontends::NodeSettings;
use sliceproxy::dataplane::nftables::backend::FullSyncReport;
use sliceproxy::dataplane::nftables::{NftSettings, NftablesConfig, NftablesDataplane, Scheduler, render_script};
use sliceproxy::dataplane::{Dataplane, SyncScope};
use sliceproxy::model::{IpFamily, ServiceKey};
use sliceproxy::policy::NodeContext;
use sliceproxy::track::{ChangeSet, Tracker};

const ENDPOINTS: usize = 10;
const NODE_PORTS: usize = 2_000;

fn settings() -> NftSettings {
    NftSettings {
        node: NodeSettings::new(
            &["10.128.0.0/9".parse().unwrap()],
            false,
            &["192.168.50.10".parse().unwrap()],
        )
        .with_service_cidrs(&["10.96.0.0/16".parse().unwrap()]),
        scheduler: Scheduler::Random,
    }
}

fn cluster_ip(i: usize) -> String {
    format!("10.96.{}.{}", i / 250, i % 250 + 1)
}

fn endpoint(i: usize, k: usize) -> String {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * 16 + k) as u32 + 1).to_string()
}

fn svc_name(i: usize) -> String {
    format!("svc-{i}")
}

fn add_service(t: &mut Tracker, i: usize, endpoints: &[String]) -> ChangeSet {
    let mut port = json!({"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"});
    let mut spec = json!({"clusterIP": cluster_ip(i)});
    if i < NODE_PORTS {
        port["nodePort"] = json!(30000 + i);
        spec["type"] = json!("NodePort");
    }
    spec["ports"] = json!([port]);
    let mut c = t.apply_service(service(&svc_name(i), spec, None));
    c.merge(set_endpoints(t, i, endpoints));
    c
}

fn set_endpoints(t: &mut Tracker, i: usize, endpoints: &[String]) -> ChangeSet {
    let eps: Vec<(&str, &str)> = endpoints
        .iter()
        .enumerate()
        .map(|(k, e)| (e.as_str(), if k == 0 { "node-a" } else { "node-b" }))
        .collect();
    t.apply_slice(slice(&svc_name(i), "a", "IPv4", "TCP", &eps))
}

fn endpoints(i: usize, n: usize) -> Vec<String> {
    (0..n).map(|k| endpoint(i, k)).collect()
}

fn cluster(n: usize) -> Tracker {
    let mut t = Tracker::new(NodeContext::new("node-a"));
    for i in 0..n {
        add_service(&mut t, i, &endpoints(i, ENDPOINTS));
    }
    t
}

fn backend(ns: &Netns) -> NftablesDataplane {
    NftablesDataplane::new(Box::new(ns.nft()), NftablesConfig::new(vec![IpFamily::V4], settings()))
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn run(c: &mut Criterion, n: usize, test_mode: bool, report: &mut Vec<String>) {
    let ns = Netns::new("bench");
    let t0 = Instant::now();
    let mut t = cluster(n);
    report.push(format!("{n}: tracker built from model objects in {:.2?}", t0.elapsed()));
    let (small, cold_samples) = if n >= 10_000 { (20, 10) } else { (50, 10) };

    let mut group = c.benchmark_group(format!("nftables/{n}x{ENDPOINTS}"));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(cold_samples);
    group.warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_secs(1));

    // Cold full sync: an empty namespace each time (the table deleted
    // outside the clock), a new backend, one full sync.
    let mut colds = Vec::new();
    let mut cold_report = Default::default();
    group.bench_function(BenchmarkId::new("cold full sync", n), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut dp = backend(&ns);
                dp.cleanup().unwrap();
                let s = Instant::now();
                dp.sync(t.table(), &SyncScope::Full).unwrap();
                let d = s.elapsed();
                colds.push(d);
                cold_report = dp.last_full.clone();
                total += d;
            }
            total
        })
    });
    let cold_report: FullSyncReport = cold_report;
    let mut dp = backend(&ns);
    dp.sync(t.table(), &SyncScope::Full).unwrap();
    report.push(format!(
        "{n}: cold full sync median {:.2?} ({} transactions, {} operations); RSS of the bench process (tracker, image, criterion) after it {:.1} MB",
        median(colds.clone()),
        cold_report.transactions,
        cold_report.changes,
        rss_mb()
    ));

    group.sample_size(small);
    group.measurement_time(Duration::from_secs(2));
    // Periodic full sync with nothing changed: GETGEN, every port
    // recomputed and compared with the image, nothing written.
    group.bench_function(BenchmarkId::new("periodic full sync, no change", n), |b| {
        b.iter(|| {
            dp.sync(t.table(), &SyncScope::Full).unwrap();
            assert_eq!(dp.last_full.how, "untouched");
        })
    });

    // One endpoint replaced (same count): alternate its last endpoint
    // between two addresses.
    let target = n / 2;
    let mut flip = false;
    group.bench_function(BenchmarkId::new("one endpoint replaced", n), |b| {
        b.iter(|| {
            flip = !flip;
            let mut eps = endpoints(target, ENDPOINTS);
            if flip {
                eps[ENDPOINTS - 1] = endpoint(target, ENDPOINTS + 1);
            }
            let c = set_endpoints(&mut t, target, &eps);
            dp.sync(t.table(), &SyncScope::Partial(c)).unwrap();
        })
    });
    set_endpoints(&mut t, target, &endpoints(target, ENDPOINTS));
    dp.sync(t.table(), &SyncScope::Full).unwrap();

    // One endpoint added, then removed (count changes), timed separately.
    for (label, timed_count, untimed_count) in [
        ("one endpoint added", ENDPOINTS + 1, ENDPOINTS),
        ("one endpoint removed", ENDPOINTS - 1, ENDPOINTS),
    ] {
        group.bench_function(BenchmarkId::new(label, n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let s = Instant::now();
                    let c = set_endpoints(&mut t, target, &endpoints(target, timed_count));
                    dp.sync(t.table(), &SyncScope::Partial(c)).unwrap();
                    total += s.elapsed();
                    let c = set_endpoints(&mut t, target, &endpoints(target, untimed_count));
                    dp.sync(t.table(), &SyncScope::Partial(c)).unwrap();
                }
                total
            })
        });
    }

    // One service (cluster IP + node port when the first 2,000 have one)
    // added, then removed, timed separately.
    let extra = n + 1;
    let remove = |t: &mut Tracker, dp: &mut NftablesDataplane| {
        let key = ServiceKey::new("ns", &svc_name(extra));
        let mut c = t.delete_service(&key);
        c.merge(set_endpoints(t, extra, &[]));
        dp.sync(t.table(), &SyncScope::Partial(c)).unwrap();
    };
    group.bench_function(BenchmarkId::new("one service added", n), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let s = Instant::now();
                let c = add_service(&mut t, extra, &endpoints(extra, ENDPOINTS));
                dp.sync(t.table(), &SyncScope::Partial(c)).unwrap();
                total += s.elapsed();
                remove(&mut t, &mut dp);
            }
            total
        })
    });
    group.bench_function(BenchmarkId::new("one service removed", n), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let c = add_service(&mut t, extra, &endpoints(extra, ENDPOINTS));
                dp.sync(t.table(), &SyncScope::Partial(c)).unwrap();
                let s = Instant::now();
                remove(&mut t, &mut dp);
                total += s.elapsed();
            }
            total
        })
    });

    // Drift check when someone else committed: dump our table, compare,
    // repair nothing.
    let mut drift = Vec::new();
    for _ in 0..if test_mode { 1 } else { 3 } {
        ns.must(&["nft", "add", "table", "ip", "bench-foreign"]);
        let s = Instant::now();
        dp.sync(t.table(), &SyncScope::Full).unwrap();
        drift.push(s.elapsed());
        assert_eq!(dp.last_full.how, "checked");
        ns.must(&["nft", "delete", "table", "ip", "bench-foreign"]);
        dp.sync(t.table(), &SyncScope::Full).unwrap();
    }
    report.push(format!(
        "{n}: full sync after a foreign commit (dump + compare, nothing to repair) median {:.2?} of {}",
        median(drift),
        if test_mode { 1 } else { 3 }
    ));
    group.finish();

    // The same cold load through `nft -f` of the rendered script (one
    // transaction), for comparison.
    dp.cleanup().unwrap();
    let script = render_script(t.table(), &[IpFamily::V4], &settings());
    let mut by_nft = Vec::new();
    for _ in 0..if test_mode { 1 } else { 3 } {
        ns.must(&["nft", "flush", "ruleset"]);
        let s = Instant::now();
        ns.nft_script(&script).expect("nft -f of the rendered script");
        by_nft.push(s.elapsed());
    }
    ns.must(&["nft", "flush", "ruleset"]);
    let (ours, theirs) = (median(colds), median(by_nft));
    report.push(format!(
        "{n}: cold load: netlink full sync {:.2?}, nft -f of the rendered script {:.2?} ({} bytes): ratio {:.2}",
        ours,
        theirs,
        script.len(),
        theirs.as_secs_f64() / ours.as_secs_f64()
    ));
}

/// Steady-state memory, measured in a child process of its own (this
/// process also holds criterion's samples and the freed-but-kept memory of
/// the cold loads): RSS after building the tracker, then after a full sync
/// of a backend holding its image, then after a periodic full sync.
fn rss_child(n: usize) {
    let ns = Netns::new("rss");
    let base = rss_mb();
    let t = cluster(n);
    let tracker = rss_mb();
    let mut dp = backend(&ns);
    dp.sync(t.table(), &SyncScope::Full).unwrap();
    let synced = rss_mb();
    dp.sync(t.table(), &SyncScope::Full).unwrap();
    let periodic = rss_mb();
    // What is held, without the allocator's cache of what the cold load
    // built and freed (its operations and encoded batches).
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe { libc::malloc_trim(0) };
    println!(
        "RSS {n}: at start {base:.1} MB, with the tracker {tracker:.1} MB, with the backend after a full sync {synced:.1} MB, after a periodic full sync {periodic:.1} MB, after malloc_trim {:.1} MB",
        rss_mb()
    );
}

fn rss_in_child(n: usize) -> String {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("NFT_BENCH_RSS_CHILD", n.to_string())
        .output()
        .expect("child");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("RSS"))
        .map(str::to_string)
        .unwrap_or_else(|| format!("RSS {n}: child failed: {}", String::from_utf8_lossy(&out.stderr)))
}

fn main() {
    if let Some(n) = std::env::var("NFT_BENCH_RSS_CHILD").ok().and_then(|v| v.parse().ok()) {
        rss_child(n);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    let sizes: Vec<usize> = std::env::var("NFT_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000]);
    // `cargo test --benches` runs this in test mode: keep that cheap.
    let test_mode = std::env::args().any(|a| a == "--test") || !std::env::args().any(|a| a == "--bench");
    let sizes = if test_mode { vec![50] } else { sizes };
    let mut report = vec![format!("load average at start: {}", load())];
    for &n in &sizes {
        report.push(rss_in_child(n));
        run(&mut c, n, test_mode, &mut report);
        report.push(format!("load average after {n}: {}", load()));
    }
    println!("\n== nftables mode summary ==");
    for line in report {
        println!("{line}");
    }
    c.final_summary();
}
