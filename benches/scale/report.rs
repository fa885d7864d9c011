//! The report: a Markdown table (`results.md`) and SVG plots drawn here with
//! `plotters`, from the run JSON files of one results directory.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::results::{RunResult, fmt_s};

/// Reads every `run-*.json` in `dir`.
pub fn read_dir(dir: &Path) -> Vec<RunResult> {
    let mut runs: Vec<RunResult> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with("run-") && n.ends_with(".json")
                })
                .filter_map(|e| {
                    let text = std::fs::read_to_string(e.path()).ok()?;
                    serde_json::from_str(&text)
                        .map_err(|err| eprintln!("scale-bench: skipping {}: {err}", e.path().display()))
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    runs.sort_by(|a, b| (a.size, &a.mode, &a.proxy).cmp(&(b.size, &b.mode, &b.proxy)));
    runs
}

fn mb(b: u64) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{:.0}", b as f64 / 1e6)
    }
}

fn lat(r: &RunResult, kernel: bool, p99: bool) -> Option<f64> {
    let l = if kernel {
        r.latency_kernel.as_ref()
    } else {
        r.latency_metric.as_ref()
    }?;
    if p99 { l.p99 } else { l.p50 }
}

fn per_min(cpu: f64, window: f64) -> Option<f64> {
    (window > 0.0).then(|| cpu * 60.0 / window)
}

/// Writes `results.md` and the SVG plots into `dir`.
pub fn write(dir: &Path, runs: &[RunResult]) {
    let mut md = String::new();
    let _ = writeln!(md, "# sliceproxy vs kube-proxy: side-by-side results\n");
    if let Some(r) = runs.first() {
        let v = &r.versions;
        let _ = writeln!(
            md,
            "Machine: {} CPUs ({}), kernel {}, {}, {}. kube-proxy: {}; API server: {}; sliceproxy: {} (git {}).\n",
            v.cpus, v.cpu_model, v.kernel, v.iptables, v.nft, v.kube_proxy, v.kube_apiserver, v.sliceproxy, v.git
        );
        let s = &r.settings;
        let _ = writeln!(
            md,
            "Settings (both proxies, one KubeProxyConfiguration): syncPeriod {}, minSyncPeriod {}; {}.\n",
            s.sync_period,
            s.min_sync_period,
            s.other.join("; ")
        );
    }
    let _ = writeln!(
        md,
        "| services | mode | proxy | status | cold start (metric / kernel) | p50 / p99 latency, metric | p50 / p99 latency, kernel | idle CPU s/min | CPU s total | peak mem MB (cgroup / proxy RSS) | rules / elements | bytes per sync, strace (min / max) | spot checks | load before -> after | date |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        if !r.ok() {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | | | | | {} | {} | | | | {} -> {} | {} |",
                r.size,
                r.mode,
                r.proxy,
                r.status.replace('|', "/"),
                if r.cpu_total_s > 0.0 {
                    format!("{:.1}", r.cpu_total_s)
                } else {
                    String::new()
                },
                if r.mem_peak_bytes > 0 {
                    mb(r.mem_peak_bytes)
                } else {
                    String::new()
                },
                r.load_before,
                r.load_after,
                r.date
            );
            continue;
        }
        let spot_ok = r.spot.iter().filter(|c| c.pass).count();
        let _ = writeln!(
            md,
            "| {} | {} | {} | ok | {} / {} | {} / {} | {} / {} | {} | {:.1} | {} / {} | {} / {} | {} | {}/{} {} | {} -> {} | {} |",
            r.size,
            r.mode,
            r.proxy,
            fmt_s(r.cold_start_s),
            fmt_s(r.cold_start_kernel_s),
            fmt_s(lat(r, false, false)),
            fmt_s(lat(r, false, true)),
            fmt_s(lat(r, true, false)),
            match r.latency_kernel.as_ref().map_or(0, |l| l.missing) {
                0 => fmt_s(lat(r, true, true)),
                m => format!(
                    "{} ({m} of {} changes not in the kernel within the drain window)",
                    fmt_s(lat(r, true, true)),
                    r.changes.len()
                ),
            },
            per_min(r.idle_cpu_s, r.idle_window_s).map_or("-".into(), |v| format!("{v:.2}")),
            r.cpu_total_s,
            mb(r.mem_peak_bytes),
            mb(r.rss_hwm_bytes),
            r.kernel_rules.map_or("-".into(), |v| v.to_string()),
            r.kernel_elements.map_or("-".into(), |v| v.to_string()),
            r.bytes.as_ref().map_or("-".into(), |b| format!(
                "{} / {}",
                b.bursts.iter().min().map_or("-".into(), |v| v.to_string()),
                b.max.map_or("-".into(), |v| v.to_string())
            )),
            spot_ok,
            r.spot.len(),
            if r.spot_pass { "pass" } else { "FAIL" },
            r.load_before,
            r.load_after,
            r.date
        );
    }
    let _ = writeln!(
        md,
        "\nRatios kube-proxy / sliceproxy (higher is better for sliceproxy; memory: sliceproxy / kube-proxy):\n"
    );
    let _ = writeln!(
        md,
        "| services | mode | cold start | p50 latency (kernel) | p99 latency (kernel) | CPU total | idle CPU | peak mem (cgroup) | peak RSS: sliceproxy / kube-proxy |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    let keys: BTreeSet<(usize, String)> = runs.iter().map(|r| (r.size, r.mode.clone())).collect();
    for (size, mode) in keys {
        let find = |p: &str| {
            runs.iter()
                .find(|r| r.size == size && r.mode == mode && r.proxy == p && r.ok())
        };
        let (Some(s), Some(k)) = (find("sliceproxy"), find("kube-proxy")) else {
            continue;
        };
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".into(),
        };
        let _ = writeln!(
            md,
            "| {size} | {mode} | {} | {} | {} | {} | {} | {} | {} |",
            ratio(k.cold_start_s, s.cold_start_s),
            ratio(lat(k, true, false), lat(s, true, false)),
            ratio(lat(k, true, true), lat(s, true, true)),
            ratio(Some(k.cpu_total_s), Some(s.cpu_total_s)),
            ratio(Some(k.idle_cpu_s), Some(s.idle_cpu_s)),
            ratio(Some(s.mem_peak_bytes as f64), Some(k.mem_peak_bytes as f64)),
            ratio(Some(s.rss_hwm_bytes as f64), Some(k.rss_hwm_bytes as f64)),
        );
    }
    let notes: Vec<String> = runs
        .iter()
        .flat_map(|r| {
            r.notes
                .iter()
                .filter(|n| !n.starts_with("counting kernel objects"))
                .map(move |n| format!("- {} {} {}: {n}", r.size, r.mode, r.proxy))
        })
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(md, "\nNotes:\n\n{}", notes.join("\n"));
    }
    let plots: [(&str, &str, Metric); 6] = [
        ("cold-start.svg", "cold start (s, start -> first complete sync)", |r| {
            r.cold_start_s
        }),
        ("latency-p50.svg", "p50 network-programming latency (s, kernel)", |r| {
            lat(r, true, false)
        }),
        ("latency-p99.svg", "p99 network-programming latency (s, kernel)", |r| {
            lat(r, true, true)
        }),
        ("cpu.svg", "CPU seconds, whole run (process + children)", |r| {
            Some(r.cpu_total_s)
        }),
        ("idle-cpu.svg", "idle CPU (s per minute)", |r| {
            per_min(r.idle_cpu_s, r.idle_window_s)
        }),
        ("memory.svg", "peak memory (MB, cgroup: process + children)", |r| {
            Some(r.mem_peak_bytes as f64 / 1e6)
        }),
    ];
    let _ = writeln!(md, "\nPlots (log scales):\n");
    for (file, title, f) in plots {
        match plot(&dir.join(file), title, runs, f) {
            Ok(()) => {
                let _ = writeln!(md, "![{title}]({file})");
            }
            Err(e) => eprintln!("scale-bench: plot {file}: {e}"),
        }
    }
    std::fs::write(dir.join("results.md"), md).expect("write results.md");
    eprintln!("scale-bench: wrote {}", dir.join("results.md").display());
}

type Metric = fn(&RunResult) -> Option<f64>;

fn plot(path: &Path, title: &str, runs: &[RunResult], f: Metric) -> Result<(), Box<dyn std::error::Error>> {
    let series: BTreeSet<(String, String)> = runs
        .iter()
        .filter(|r| r.ok())
        .map(|r| (r.proxy.clone(), r.mode.clone()))
        .collect();
    let points: Vec<(usize, f64)> = runs
        .iter()
        .filter(|r| r.ok())
        .filter_map(|r| f(r).filter(|v| *v > 0.0).map(|v| (r.size, v)))
        .collect();
    if points.is_empty() {
        return Err("no data".into());
    }
    let (xmin, xmax) = points
        .iter()
        .fold((usize::MAX, 0), |(a, b), (x, _)| (a.min(*x), b.max(*x)));
    let (ymin, ymax) = points
        .iter()
        .fold((f64::MAX, 0.0f64), |(a, b), (_, y)| (a.min(*y), b.max(*y)));
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            ((xmin as f64 * 0.8)..(xmax as f64 * 1.25)).log_scale(),
            ((ymin * 0.5)..(ymax * 2.0)).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("services (x endpoints per service)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_labels(8)
        .y_label_formatter(&|y| {
            if *y >= 10.0 {
                format!("{y:.0}")
            } else if *y >= 1.0 {
                format!("{y:.1}")
            } else {
                format!("{y:.3}")
            }
        })
        .draw()?;
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for (n, (proxy, mode)) in series.iter().enumerate() {
        let color = colors[n % colors.len()];
        let mut pts: Vec<(f64, f64)> = runs
            .iter()
            .filter(|r| r.ok() && &r.proxy == proxy && &r.mode == mode)
            .filter_map(|r| f(r).filter(|v| *v > 0.0).map(|v| (r.size as f64, v)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let style = if proxy == "sliceproxy" {
            ShapeStyle::from(&color).stroke_width(2)
        } else {
            ShapeStyle::from(&color).stroke_width(1)
        };
        chart
            .draw_series(LineSeries::new(pts.clone(), style))?
            .label(format!("{proxy} {mode}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
