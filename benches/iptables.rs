//! iptables mode against the real `iptables-restore`, in a network
//! namespace of its own (created and removed here), at 1,000 and 10,000
//! services x 10 endpoints: cold full sync, one endpoint changed, one service
//! added, one service removed, with the bytes written per change. Each
//! change is compared with running `iptables-restore --noflush` directly on
//! the same minimal delta (no agent in between), and the cold full sync with
//! a raw `iptables-restore` of the same ruleset into an empty namespace.
//!
//! Full syncs, cold (an empty namespace) against warm (the same rules
//! already loaded: the hourly or drift-repair full sync of a running agent)
//! and after a restart (a new backend on a loaded namespace): a warm full
//! rewrite must be no slower than a cold one (within 1.5x, issue 10).
//!
//! Run: `cargo bench --bench iptables` (root). `SLICEPROXY_BENCH_SIZES=1000`
//! limits the sizes; `SLICEPROXY_BENCH_VARIANT=legacy|nft` picks the variant
//! (default: both).

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::Criterion;
use sliceproxy::dataplane::exec::{Exec, ExecOutput, HostExec};
use sliceproxy::dataplane::frontends::NodeSettings;
use sliceproxy::dataplane::iptables::{IptablesConfig, IptablesDataplane};
use sliceproxy::dataplane::xtables::{Tools, Variant};
use sliceproxy::dataplane::{Dataplane, SyncScope};
use sliceproxy::model::{Endpoint, IpFamily, Protocol, Service, ServiceKey, Slice, SliceEndpoint, SliceKey, SlicePort};
use sliceproxy::policy::NodeContext;
use sliceproxy::track::{ChangeSet, Tracker};

const ENDPOINTS: usize = 10;

/// Records the stdin of every restore it runs (the bytes written).
#[derive(Clone)]
struct Recording {
    inner: HostExec,
    last: Arc<Mutex<Vec<u8>>>,
}

impl Exec for Recording {
    fn run(&mut self, program: &str, args: &[&str], stdin: &[u8]) -> std::io::Result<ExecOutput> {
        if program.ends_with("-restore") {
            *self.last.lock().unwrap() = stdin.to_vec();
        }
        self.inner.run(program, args, stdin)
    }
}

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("sp-bench-{}-{tag}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "ip netns add {name} (needs root)");
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn raw_restore(ns: &str, tool: &str, args: &[&str], input: &[u8]) -> Duration {
    let start = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, tool])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("iptables-restore");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
    start.elapsed()
}

fn service(i: usize) -> Service {
    let info = sliceproxy::model::ServicePortInfo {
        key: sliceproxy::model::ServicePortKey::new(
            &format!("ns-{}", i % 100),
            &format!("svc-{i}"),
            "http",
            Protocol::Tcp,
        ),
        service_type: sliceproxy::model::ServiceType::ClusterIP,
        port: 80,
        node_port: None,
        frontends: [
            sliceproxy::model::FamilyFrontends {
                cluster_ip: Some(format!("10.96.{}.{}", i / 250, i % 250 + 1).parse().unwrap()),
                ..Default::default()
            },
            Default::default(),
        ],
        affinity_timeout_secs: None,
        external_policy_local: false,
        internal_policy_local: false,
        health_check_node_port: None,
        traffic_distribution: None,
    };
    Service {
        key: info.key.service.clone(),
        ports: vec![Arc::new(info)],
    }
}

fn slice(i: usize, endpoints: usize) -> Slice {
    let key = service(i).key;
    Slice {
        key: SliceKey {
            namespace: key.namespace.clone(),
            name: format!("svc-{i}-x").into(),
        },
        service: key,
        family: IpFamily::V4,
        ports: vec![SlicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 8080,
        }],
        trigger_time: None,
        endpoints: (0..endpoints)
            .map(|e| {
                let n = i * ENDPOINTS + e;
                let ep = Endpoint::ready(
                    format!("10.{}.{}.{}:8080", 128 + n / 65536, (n / 256) % 256, n % 256)
                        .parse()
                        .unwrap(),
                );
                SliceEndpoint {
                    ip: ep.addr.ip(),
                    ready: true,
                    serving: true,
                    terminating: false,
                    node_name: Some("node-b".into()),
                    zone_hints: Arc::from([]),
                    node_hints: Arc::from([]),
                }
            })
            .collect(),
    }
}

fn tracker(n: usize) -> Tracker {
    let mut t = Tracker::new(NodeContext::new("node-a"));
    t.reset_services((0..n).map(service).collect(), &[]);
    t.reset_slices((0..n).map(|i| slice(i, ENDPOINTS)).collect(), &[]);
    t
}

fn node_settings() -> NodeSettings {
    NodeSettings::new(&["10.244.0.0/16".parse().unwrap()], false, &[])
}

fn backend(ns: &str, variant: Variant) -> (IptablesDataplane, Arc<Mutex<Vec<u8>>>) {
    let last = Arc::new(Mutex::new(Vec::new()));
    let exec = Recording {
        inner: HostExec::in_netns(ns),
        last: last.clone(),
    };
    let cfg = IptablesConfig {
        families: vec![IpFamily::V4],
        variant,
        settings: node_settings(),
        node_ports: None,
    };
    (IptablesDataplane::new(Box::new(exec), cfg), last)
}

struct Change {
    name: &'static str,
    /// Apply the change (timed) and return the ChangeSet.
    apply: fn(&mut Tracker, usize) -> ChangeSet,
    /// Undo it (untimed).
    undo: fn(&mut Tracker, usize) -> ChangeSet,
}

fn run_variant(c: &mut Criterion, variant: Variant, n: usize, report: &mut Vec<String>) {
    let tools = Tools::new(IpFamily::V4, variant);
    let tag = format!("{n}-{variant:?}").to_lowercase();
    let ns = Netns::new(&tag);
    let mut t = tracker(n);
    let (mut dp, last) = backend(&ns.0, variant);

    // Cold full sync, and a raw restore of the same ruleset into an empty namespace.
    let start = Instant::now();
    let stats = dp.sync(t.table(), &SyncScope::Full).expect("cold full sync");
    let cold = start.elapsed();
    let full_text = IptablesDataplane::render_full(t.table(), IpFamily::V4, &node_settings());
    let raw_ns = Netns::new(&format!("{tag}-raw"));
    let raw_flush = raw_restore(&raw_ns.0, &tools.restore, &[], full_text.as_bytes());
    drop(raw_ns);
    report.push(format!(
        "{variant:?} {n} services x {ENDPOINTS}: cold full sync {:.2} s ({} bytes); raw `{}` of the same ruleset into an empty namespace {:.2} s; ratio {:.2}",
        cold.as_secs_f64(),
        stats.bytes_written,
        tools.restore,
        raw_flush.as_secs_f64(),
        cold.as_secs_f64() / raw_flush.as_secs_f64()
    ));

    // Warm full syncs: the same backend again (hourly / drift repair), and a
    // new backend on the loaded namespace (an agent restart, which also
    // reads the existing chains with one save).
    let start = Instant::now();
    dp.sync(t.table(), &SyncScope::Full).expect("warm full sync");
    let warm = start.elapsed();
    let (mut restarted, _) = backend(&ns.0, variant);
    let start = Instant::now();
    restarted
        .sync(t.table(), &SyncScope::Full)
        .expect("full sync after a restart");
    let restart = start.elapsed();
    report.push(format!(
        "{variant:?} {n}: full sync cold {:.2} s, warm {:.2} s (ratio {:.2}), after a restart {:.2} s (ratio {:.2})",
        cold.as_secs_f64(),
        warm.as_secs_f64(),
        warm.as_secs_f64() / cold.as_secs_f64(),
        restart.as_secs_f64(),
        restart.as_secs_f64() / cold.as_secs_f64()
    ));
    {
        let mut group = c.benchmark_group(format!("iptables_full_{tag}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(100))
            .measurement_time(Duration::from_secs(1));
        group.bench_function("cold", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let fresh = Netns::new(&format!("{tag}-cold-{i}"));
                    let (mut cold_dp, _) = backend(&fresh.0, variant);
                    let start = Instant::now();
                    cold_dp.sync(t.table(), &SyncScope::Full).expect("cold full sync");
                    total += start.elapsed();
                }
                total
            })
        });
        group.bench_function("warm", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    dp.sync(t.table(), &SyncScope::Full).expect("warm full sync");
                    total += start.elapsed();
                }
                total
            })
        });
        group.finish();
    }

    let target = n / 2;
    let changes = [
        Change {
            name: "one_endpoint_changed",
            apply: |t, i| t.apply_slice(slice(i, ENDPOINTS - 1)),
            undo: |t, i| t.apply_slice(slice(i, ENDPOINTS)),
        },
        Change {
            name: "one_service_added",
            apply: |t, i| {
                let mut c = t.apply_service(service(i + 50_000));
                c.merge(t.apply_slice(slice(i + 50_000, ENDPOINTS)));
                c
            },
            undo: |t, i| {
                let mut c = t.delete_service(&service(i + 50_000).key);
                c.merge(t.delete_slice(&slice(i + 50_000, ENDPOINTS).key));
                c
            },
        },
        Change {
            name: "one_service_removed",
            apply: |t, i| t.delete_service(&ServiceKey::new(&format!("ns-{}", i % 100), &format!("svc-{i}"))),
            undo: |t, i| t.apply_service(service(i)),
        },
    ];
    let mut group = c.benchmark_group(format!("iptables_{tag}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(3));
    for change in &changes {
        let mut bytes = 0;
        let mut delta: Vec<u8> = Vec::new();
        let mut inverse: Vec<u8> = Vec::new();
        group.bench_function(change.name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let cs = (change.apply)(&mut t, target);
                    let s = dp.sync(t.table(), &SyncScope::Partial(cs)).expect("partial sync");
                    total += start.elapsed();
                    bytes = s.bytes_written;
                    delta = last.lock().unwrap().clone();
                    let cs = (change.undo)(&mut t, target);
                    dp.sync(t.table(), &SyncScope::Partial(cs)).expect("undo");
                    inverse = last.lock().unwrap().clone();
                }
                total
            })
        });
        // The same delta bytes through iptables-restore directly.
        let mut raw = Vec::new();
        for _ in 0..10 {
            raw.push(raw_restore(&ns.0, &tools.restore, &["-w", "5", "--noflush"], &delta));
            raw_restore(&ns.0, &tools.restore, &["-w", "5", "--noflush"], &inverse);
        }
        raw.sort();
        let raw_median = raw[raw.len() / 2];
        // Our median over the same number of runs, measured the same way.
        let mut ours = Vec::new();
        for _ in 0..10 {
            let start = Instant::now();
            let cs = (change.apply)(&mut t, target);
            dp.sync(t.table(), &SyncScope::Partial(cs)).expect("partial sync");
            ours.push(start.elapsed());
            let cs = (change.undo)(&mut t, target);
            dp.sync(t.table(), &SyncScope::Partial(cs)).expect("undo");
        }
        ours.sort();
        let ours_median = ours[ours.len() / 2];
        report.push(format!(
            "{variant:?} {n}: {}: {} bytes; sliceproxy {:.1} ms, raw restore of the same delta {:.1} ms, ratio {:.2}",
            change.name,
            bytes,
            ours_median.as_secs_f64() * 1000.0,
            raw_median.as_secs_f64() * 1000.0,
            ours_median.as_secs_f64() / raw_median.as_secs_f64()
        ));
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let sizes: Vec<usize> = std::env::var("SLICEPROXY_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000]);
    let variants: Vec<Variant> = match std::env::var("SLICEPROXY_BENCH_VARIANT").as_deref() {
        Ok("legacy") => vec![Variant::Legacy],
        Ok("nft") => vec![Variant::Nft],
        _ => vec![Variant::Legacy, Variant::Nft],
    };
    // `cargo test --benches` runs this in test mode: keep that cheap.
    let test_mode = std::env::args().any(|a| a == "--test") || !std::env::args().any(|a| a == "--bench");
    let sizes = if test_mode { vec![50] } else { sizes };
    let mut report = Vec::new();
    for &variant in &variants {
        for &n in &sizes {
            run_variant(&mut c, variant, n, &mut report);
        }
    }
    println!("\n== iptables mode summary ==");
    for line in report {
        println!("{line}");
    }
    c.final_summary();
}
