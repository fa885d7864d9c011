//! Layout measurements against the real kernel (not criterion: each number
//! is one kernel-acknowledged operation on a large table, repeated a few
//! times). Loads N services x 10 endpoints into a fresh network namespace
//! through our netlink path, then measures single changes, GETGEN and a
//! dump; then the same ruleset through `nft -f`.
//!
//! `cargo bench --bench nftables_layout` measures 1,000 and 10,000
//! services (set NFT_LAYOUT_SIZES=1000,10000 to choose); under `cargo test`
//! it runs once at 50 services as a smoke test. Needs root.

#[path = "../tests/nft_support/mod.rs"]
mod nft_support;

use std::time::{Duration, Instant};

use nft_support::Netns;
use sliceproxy::dataplane::nftables::layout::{self, Selection, Settings, SvcSpec, Variant};
use sliceproxy::dataplane::nftables::model::{Element, Family, Table, Value, VerdictData, name};
use sliceproxy::dataplane::nftables::netlink::Nft;
use sliceproxy::dataplane::nftables::script;
use sliceproxy::dataplane::nftables::tx::{Batch, Op, Transaction};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// CPU time of the calling thread: the kernel processes a batch in the
/// sender's context (sendmsg), so this is the commit's own cost, free of
/// the scheduling delays a loaded machine adds to wall time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

thread_local! {
    static LAST_CPU: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
}

fn commit(nft: &mut Nft, tx: &Transaction, known: &Table) -> Duration {
    let batch = Batch::build(tx, known).expect("batch");
    let c = thread_cpu();
    let t = Instant::now();
    nft.commit(&batch).unwrap_or_else(|e| panic!("commit: {e}"));
    let wall = t.elapsed();
    LAST_CPU.with(|l| l.set(thread_cpu() - c));
    wall
}

/// Median and max of `reps` runs of `f` (wall time), and the median CPU
/// time of the last commit in each run.
fn repeat(reps: usize, mut f: impl FnMut(usize) -> Duration) -> (f64, f64, f64) {
    let mut cpu = Vec::new();
    let mut v: Vec<f64> = (0..reps)
        .map(|i| {
            let d = ms(f(i));
            cpu.push(ms(LAST_CPU.with(|l| l.get())));
            d
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    cpu.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], *v.last().unwrap(), cpu[cpu.len() / 2])
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn measure(n: usize, reps: usize, selection: Selection, variant: Variant) {
    let settings = Settings {
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        selection,
        variant,
    };
    let services = layout::synthetic(n, 10);
    let table = layout::build(&services, &settings);
    let ns = Netns::new("layout");
    let mut nft = ns.nft();
    println!(
        "\n## {n} services x 10 endpoints, {variant:?} layout, {selection:?} selection (load before: {})",
        load()
    );
    println!("| operation | wall median (max) | kernel CPU median |\n|---|---|---|");

    // Cold load, chunked.
    let chunk = std::env::var("NFT_LAYOUT_CHUNK")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2_000);
    let chunks = layout::cold_load(&table, chunk);
    let mut longest = Duration::ZERO;
    let mut bytes = 0;
    // Encode first: the numbers are the kernel's (and the socket's).
    let batches: Vec<Batch> = chunks
        .iter()
        .map(|tx| Batch::build(tx, &table).expect("batch"))
        .collect();
    let c0 = thread_cpu();
    let t = Instant::now();
    for batch in &batches {
        let c0 = Instant::now();
        let done = nft.commit(batch).unwrap_or_else(|e| panic!("cold load: {e}"));
        longest = longest.max(c0.elapsed());
        bytes += done.bytes;
    }
    let cold = t.elapsed();
    println!(
        "| cold load, netlink ({} transactions of <= {chunk}, {:.1} MB, longest {:.0} ms) | {:.0} ms | {:.0} ms |",
        chunks.len(),
        bytes as f64 / 1e6,
        ms(longest),
        ms(cold),
        ms(thread_cpu() - c0)
    );

    let (g, _, _) = repeat(reps * 5, |_| {
        let t = Instant::now();
        nft.generation().unwrap();
        t.elapsed()
    });
    println!("| GETGEN | {g:.3} ms | |");

    if std::env::var("NFT_LAYOUT_DUMP").is_ok() || !bench_sizes() {
        let t = Instant::now();
        let dumped = nft.dump_table(Family::Ip, &table.name).unwrap().unwrap();
        let dump = t.elapsed();
        assert_eq!(dumped.chains.len(), table.chains.len());
        println!("| full dump + decode of the table | {:.0} ms | |", ms(dump));
    }

    let s = &services[n / 2];
    let shared = variant == Variant::Shared;
    // One endpoint replaced (same count).
    let (med, max, cpu) = repeat(reps, |i| {
        let mut a = s.clone();
        let mut b = s.clone();
        b.endpoints[3].0 = "10.245.0.1".parse().unwrap();
        if i % 2 == 1 {
            std::mem::swap(&mut a, &mut b);
        }
        let tx = if shared {
            layout::change_endpoints_shared(&a, &b, &settings)
        } else {
            layout::change_endpoints(&a, &b, selection, 0)
        };
        commit(&mut nft, &tx, &table)
    });
    println!("| one endpoint replaced, same count (2 data-map elements) | {med:.2} ms ({max:.2}) | {cpu:.2} ms |");

    // Endpoint removed/added: the count changes.
    let handle = if shared {
        0
    } else {
        nft.rule_handles(Family::Ip, &table.name, &s.chain()).unwrap()[layout::select_rule_index(&settings)]
    };
    let (med, max, cpu) = repeat(reps, |i| {
        let mut a = s.clone();
        let mut b = s.clone();
        b.endpoints.pop();
        if i % 2 == 1 {
            std::mem::swap(&mut a, &mut b);
        }
        let tx = if shared {
            layout::change_endpoints_shared(&a, &b, &settings)
        } else {
            layout::change_endpoints(&a, &b, selection, handle)
        };
        commit(&mut nft, &tx, &table)
    });
    let what = match (variant, selection) {
        (Variant::Shared, _) => "1-2 dispatch elements re-pointed to another pick chain + 1 slot element",
        (_, Selection::Modulus) => "rule replace + 1 slot element",
        _ => "10 + 9 range elements rewritten, no rule change",
    };
    println!("| endpoint added/removed ({what}) | {med:.2} ms ({max:.2}) | {cpu:.2} ms |");

    if !shared {
        let (med, max, cpu) = repeat(reps, |i| {
            let mut t = s.clone();
            if i % 2 == 0 {
                t.endpoints.pop();
            }
            let mut tx = Transaction::new(Family::Ip, table.name.clone());
            tx.push(Op::ReplaceRule {
                chain: s.chain(),
                handle,
                rule: layout::select_rule(&t, selection),
            });
            commit(&mut nft, &tx, &table)
        });
        println!(
            "| one rule replaced in a service chain (numgen mod N, dnat map) | {med:.2} ms ({max:.2}) | {cpu:.2} ms |"
        );
    }

    // A verdict-map element with goto, added and deleted.
    let target = layout::dispatch_elements_in(s, &settings).0.data.unwrap();
    let (med, max, cpu) = repeat(reps, |i| {
        let mut e = Element::vmap(
            &[
                Value::Ipv4("10.111.0.1".parse().unwrap()),
                Value::Proto(6),
                Value::Port(443),
            ],
            VerdictData::Accept,
        );
        e.data = Some(target.clone());
        let mut tx = Transaction::new(Family::Ip, table.name.clone());
        tx.push(if i % 2 == 0 {
            Op::AddElements {
                set: name("service-ips"),
                elements: vec![e],
            }
        } else {
            Op::DeleteElements {
                set: name("service-ips"),
                elements: vec![e],
            }
        });
        commit(&mut nft, &tx, &table)
    });
    println!("| one verdict-map goto element added/deleted | {med:.2} ms ({max:.2}) | {cpu:.2} ms |");

    // A whole service added, then removed.
    let extra = SvcSpec {
        id: 0xfff0_0000,
        cluster_ip: "10.111.0.2".parse().unwrap(),
        node_port: Some(32700),
        ..s.clone()
    };
    let mut known = table.clone();
    if !shared {
        known.sets.push(layout::service_objects(&extra, &settings).0);
    }
    let (add_med, add_max, add_cpu) = repeat(reps / 2 + 1, |_| {
        let d = commit(&mut nft, &layout::add_service(&extra, &settings), &table);
        let cpu = LAST_CPU.with(|l| l.get());
        commit(&mut nft, &layout::remove_service_in(&extra, &settings), &known);
        LAST_CPU.with(|l| l.set(cpu));
        d
    });
    let (rm_med, rm_max, rm_cpu) = repeat(reps / 2 + 1, |_| {
        commit(&mut nft, &layout::add_service(&extra, &settings), &table);
        commit(&mut nft, &layout::remove_service_in(&extra, &settings), &known)
    });
    println!(
        "| one service added (with a node port, 10 endpoints) | {add_med:.2} ms ({add_max:.2}) | {add_cpu:.2} ms |"
    );
    println!("| one service removed | {rm_med:.2} ms ({rm_max:.2}) | {rm_cpu:.2} ms |");

    // Comparison: the same ruleset through nft -f, and one element via nft
    // (at 10,000 services with interval maps nft needs minutes for either:
    // measured once, see LAYOUT.md; set NFT_LAYOUT_NFT to repeat).
    if (selection != Selection::Modulus && bench_sizes() && std::env::var("NFT_LAYOUT_NFT").is_err())
        || std::env::var("NFT_LAYOUT_NO_NFT").is_ok()
    {
        println!("(load after: {})", load());
        return;
    }
    let text = script::render(&table);
    let file = std::env::temp_dir().join(format!("nft-layout-{}-{n}.nft", std::process::id()));
    std::fs::write(&file, &text).unwrap();
    let ns2 = Netns::new("layout");
    let t = Instant::now();
    ns2.must(&["nft", "-f", file.to_str().unwrap()]);
    let nft_cold = t.elapsed();
    println!(
        "| cold load, `nft -f` (one transaction, {:.1} MB script) | {:.0} ms | |",
        text.len() as f64 / 1e6,
        ms(nft_cold)
    );
    let (map, key) = if shared {
        ("backends-ip".to_string(), format!("{} . tcp . 443 . 3", s.cluster_ip))
    } else {
        (s.map().to_string(), "3".to_string())
    };
    let (med, _, _) = repeat(3, |i| {
        let verb = if i % 2 == 0 { "add" } else { "delete" };
        let arg = format!(
            "{verb} element ip {} {map} {{ {key} : 10.244.0.0 . 8080 }}",
            layout::TABLE
        );
        let t = Instant::now();
        let _ = ns2.exec(&["nft", &arg]);
        t.elapsed()
    });
    println!("| one element through the `nft` command | {med:.0} ms | |");
    let _ = std::fs::remove_file(&file);
    println!("(load after: {})", load());
}

/// Whether the run uses explicit sizes (a measurement, not the smoke test).
fn bench_sizes() -> bool {
    std::env::var("NFT_LAYOUT_SIZES").is_ok() || std::env::args().any(|a| a == "--bench")
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let sizes: Vec<usize> = match std::env::var("NFT_LAYOUT_SIZES") {
        Ok(v) => v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        Err(_) if bench => vec![1_000, 10_000],
        Err(_) => vec![50],
    };
    let reps = std::env::var("NFT_LAYOUT_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(if bench { 11 } else { 3 });
    let selections: Vec<Selection> = match std::env::var("NFT_LAYOUT_SELECTIONS") {
        Ok(v) => v
            .split(',')
            .filter_map(|s| match s.trim() {
                "modulus" => Some(Selection::Modulus),
                "ranges" => Some(Selection::Ranges),
                "ranges-concat" => Some(Selection::RangesConcat),
                _ => None,
            })
            .collect(),
        Err(_) => vec![Selection::Modulus],
    };
    let variants: Vec<Variant> = match std::env::var("NFT_LAYOUT_VARIANTS") {
        Ok(v) => v
            .split(',')
            .filter_map(|s| match s.trim() {
                "per-service" => Some(Variant::PerService),
                "global-masq" => Some(Variant::PerServiceGlobalMasq),
                "shared" => Some(Variant::Shared),
                _ => None,
            })
            .collect(),
        Err(_) => vec![Variant::Shared, Variant::PerServiceGlobalMasq, Variant::PerService],
    };
    for n in sizes {
        for variant in &variants {
            let sels: &[Selection] = if *variant == Variant::PerService {
                &selections
            } else {
                &[Selection::Modulus]
            };
            for sel in sels {
                measure(n, reps, *sel, *variant);
            }
        }
    }
}
