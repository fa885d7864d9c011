//! IPVS backend cost of one real-server change against the in-memory fake
//! kernel (the VM is too slow to time honestly): netlink messages and time
//! per change at 1,000 and 10,000 services, each with 10 endpoints. The
//! message count must not grow with the cluster.
//!
//! Run: `cargo bench --bench ipvs`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use serde_json::json;
use sliceproxy::dataplane::exec::{Exec, ExecOutput};
use sliceproxy::dataplane::ipvs::fake::{FakeIpvs, FakeLinks};
use sliceproxy::dataplane::ipvs::{IpvsDataplane, IpvsDataplaneConfig};
use sliceproxy::dataplane::{Dataplane, SyncScope};
use sliceproxy::model::Slice;
use sliceproxy::policy::NodeContext;
use sliceproxy::track::Tracker;
use sliceproxy::watch::convert;

const ENDPOINTS: usize = 10;

/// ipset/iptables/sysctl succeed without doing anything.
struct NullExec;

impl Exec for NullExec {
    fn run(&mut self, _: &str, _: &[&str], _: &[u8]) -> std::io::Result<ExecOutput> {
        Ok(ExecOutput {
            success: true,
            code: Some(0),
            ..Default::default()
        })
    }
}

fn slice(i: usize, extra: bool) -> Slice {
    let mut eps: Vec<_> = (0..ENDPOINTS)
        .map(|e| {
            json!({"addresses": [format!("10.{}.{}.{}", 100 + e, i / 250, i % 250 + 1)], "nodeName": "node-b",
                        "conditions": {"ready": true}})
        })
        .collect();
    if extra {
        eps.push(
            json!({"addresses": [format!("10.99.{}.{}", i / 250, i % 250 + 1)], "nodeName": "node-b",
                        "conditions": {"ready": true}}),
        );
    }
    let obj = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "bench", "name": format!("svc-{i}-1"), "resourceVersion": "1",
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps,
    }))
    .expect("slice");
    convert::slice(&obj).expect("converts").expect("programs")
}

fn cluster(n: usize) -> Tracker {
    let mut t = Tracker::new(NodeContext::new("node-a"));
    for i in 0..n {
        let obj = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "bench", "name": format!("svc-{i}"), "resourceVersion": "1"},
            "spec": {"type": "ClusterIP", "clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 1),
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        }))
        .expect("service");
        t.apply_service(convert::service(&obj).expect("converts"));
        t.apply_slice(slice(i, false));
    }
    t
}

fn bench(c: &mut Criterion) {
    for n in [1_000usize, 10_000] {
        let mut t = cluster(n);
        let kernel = FakeIpvs::new();
        let cfg = IpvsDataplaneConfig {
            // Drain at once: each flip adds and removes the same real server.
            graceful_timeout: Duration::ZERO,
            set_sysctls: false,
            ..Default::default()
        };
        let mut dp = IpvsDataplane::new(
            Box::new(kernel.clone()),
            Box::new(FakeLinks::new()),
            Box::new(NullExec),
            cfg,
        );
        let start = Instant::now();
        dp.sync(t.table(), &SyncScope::Full).expect("full sync");
        eprintln!(
            "ipvs full sync of {n} services: {:.2?}, {} netlink messages",
            start.elapsed(),
            kernel.messages()
        );
        let victim = n / 2;
        let mut extra = false;
        let mut changes = 0u64;
        kernel.reset_counters();
        c.bench_function(&format!("ipvs_one_real_server_change_{n}_services"), |b| {
            b.iter(|| {
                extra = !extra;
                let cs = t.apply_slice(slice(victim, extra));
                let stats = dp.sync(t.table(), &SyncScope::Partial(cs)).expect("partial");
                changes += 1;
                black_box(stats);
            })
        });
        let messages = kernel.messages();
        eprintln!(
            "ipvs {n} services: {changes} changes, {messages} netlink messages, {:.3} messages per change",
            messages as f64 / changes as f64
        );
        assert_eq!(
            messages as u64, changes,
            "one real-server change must be one netlink message"
        );
        dp.tick().expect("tick");
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
