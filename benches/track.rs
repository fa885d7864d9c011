//! Backend-table costs on a synthetic cluster: building the table for
//! 10,000 Services x 10 endpoints from scratch, and one endpoint's readiness
//! flip (time and ChangeSet size), at 1,000 and 10,000 Services to show the
//! cost does not grow with the cluster. Before the timed runs it prints the
//! memory the table takes (RSS growth and peak RSS, from /proc/self/status).
//!
//! Run: `cargo bench --bench track`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use criterion::{BatchSize, Criterion, criterion_group};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sliceproxy::model::{Service, Slice};
use sliceproxy::policy::NodeContext;
use sliceproxy::track::Tracker;
use sliceproxy::watch::convert;

const ENDPOINTS: usize = 10;

fn service_object(i: usize) -> core::Service {
    core::Service {
        metadata: ObjectMeta {
            namespace: Some(format!("ns-{}", i % 100)),
            name: Some(format!("svc-{i}")),
            ..Default::default()
        },
        spec: Some(core::ServiceSpec {
            cluster_ip: Some(format!("10.96.{}.{}", i / 250, i % 250 + 1)),
            ports: Some(vec![core::ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

fn slice_object(i: usize, not_ready: Option<usize>) -> discovery::EndpointSlice {
    let endpoints = (0..ENDPOINTS)
        .map(|e| {
            let n = i * ENDPOINTS + e;
            discovery::Endpoint {
                addresses: vec![format!("10.{}.{}.{}", 128 + n / 65536, (n / 256) % 256, n % 256)],
                node_name: Some(format!("node-{}", n % 50)),
                conditions: Some(discovery::EndpointConditions {
                    ready: Some(not_ready != Some(e)),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                ..Default::default()
            }
        })
        .collect();
    discovery::EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some(format!("ns-{}", i % 100)),
            name: Some(format!("svc-{i}-abcde")),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_string(),
                format!("svc-{i}"),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints,
        ports: Some(vec![discovery::EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

fn cluster(services: usize) -> (Vec<Service>, Vec<Slice>) {
    let s = (0..services)
        .map(|i| convert::service(&service_object(i)).expect("converts"))
        .collect();
    let e = (0..services)
        .map(|i| convert::slice(&slice_object(i, None)).expect("converts").expect("IPv4"))
        .collect();
    (s, e)
}

fn build(services: Vec<Service>, slices: Vec<Slice>) -> Tracker {
    let mut t = Tracker::new(NodeContext::new("node-0"));
    t.reset_services(services, &[]);
    t.reset_slices(slices, &[]);
    t
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Memory of the table for 10,000 x 10, measured once in a fresh process
/// before criterion allocates anything of its own.
fn report_memory() {
    let before = status_kib("VmRSS:");
    let start = Instant::now();
    let mut t = Tracker::new(NodeContext::new("node-0"));
    // Objects arrive one by one (as watch events), so the input is not held
    // in memory beside the table.
    for i in 0..10_000 {
        t.apply_service(convert::service(&service_object(i)).expect("converts"));
        t.apply_slice(convert::slice(&slice_object(i, None)).expect("converts").expect("IPv4"));
    }
    let elapsed = start.elapsed();
    let after = status_kib("VmRSS:");
    let peak = status_kib("VmHWM:");
    println!(
        "memory: 10,000 services x {ENDPOINTS} endpoints ({} plans): RSS grew {:.1} MiB (from {:.1} to {:.1} MiB), peak RSS {:.1} MiB; converted+applied one by one in {:.0} ms",
        t.table().plans().count(),
        (after.saturating_sub(before)) as f64 / 1024.0,
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        peak as f64 / 1024.0,
        elapsed.as_secs_f64() * 1000.0,
    );
    black_box(t);
}

fn bench_build(c: &mut Criterion) {
    let mut g = c.benchmark_group("track");
    g.sample_size(10);
    let (services, slices) = cluster(10_000);
    g.bench_function("build_10k_services_x10_endpoints", |b| {
        b.iter_batched(
            || (services.clone(), slices.clone()),
            |(s, e)| build(s, e),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("convert_10k_services_and_slices", |b| {
        b.iter(|| cluster(black_box(10_000)))
    });
    g.finish();
}

fn bench_flip(c: &mut Criterion) {
    let mut g = c.benchmark_group("track");
    for services in [1_000usize, 10_000] {
        let (s, e) = cluster(services);
        let mut t = build(s, e);
        let target = services / 2;
        let ready = convert::slice(&slice_object(target, None)).unwrap().unwrap();
        let flipped = convert::slice(&slice_object(target, Some(3))).unwrap().unwrap();
        let size = t.apply_slice(flipped.clone()).len();
        t.apply_slice(ready.clone());
        println!("readiness flip at {services} services: ChangeSet size {size}");
        let mut toggle = false;
        g.bench_function(format!("readiness_flip_at_{services}_services"), |b| {
            b.iter(|| {
                toggle = !toggle;
                let slice = if toggle { flipped.clone() } else { ready.clone() };
                let changes = t.apply_slice(slice);
                assert_eq!(changes.len(), 1);
                changes
            })
        });
        // The same, including conversion of the API object (what a watch event costs).
        let objects = [slice_object(target, Some(3)), slice_object(target, None)];
        let mut i = 0;
        g.bench_function(format!("readiness_flip_with_conversion_at_{services}_services"), |b| {
            b.iter(|| {
                i += 1;
                let slice = convert::slice(&objects[i % 2]).unwrap().unwrap();
                t.apply_slice(slice)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_build, bench_flip);

fn main() {
    report_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
