//! Peak memory of `sliceproxy render` against the size of its input
//! (issue 10, defect 8: the target is a peak RSS under 4x the input).
//!
//! `cargo bench --bench render_memory` generates clusters with
//! `examples/gen_cluster.rs` (10,000 and 40,000 Services x 10 endpoints,
//! as separate documents and as one `kind: List`), runs the release binary
//! on each (table output and `--proxy-mode iptables`), and prints input
//! size, peak RSS (the child's `ru_maxrss` from `wait4`), the ratio and the
//! wall time; it fails when a ratio reaches 4. Under `cargo test` it runs
//! once on a small cluster as a smoke test, without the target.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

#[path = "../examples/gen_cluster.rs"]
mod gen_cluster;

/// The target: peak RSS below this multiple of the input size.
const MAX_RSS_RATIO: f64 = 4.0;

struct Run {
    rss_bytes: u64,
    seconds: f64,
    status: i32,
}

/// Run the binary with its output discarded; its own peak RSS.
fn measure(args: &[&str]) -> Run {
    let start = Instant::now();
    // Reaped by `wait4` below, which also gives the child's peak RSS.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_sliceproxy"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run sliceproxy");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain FFI; `usage` is a valid out-parameter and the child is
    // ours and not yet reaped (std's Child is never waited on here).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    Run {
        rss_bytes: usage.ru_maxrss as u64 * 1024, // Linux reports KiB
        seconds: start.elapsed().as_secs_f64(),
        status: libc::WEXITSTATUS(status),
    }
}

fn generate(path: &Path, services: usize, endpoints: usize, list: bool, compact: bool) -> u64 {
    let mut w = BufWriter::new(File::create(path).expect("create input"));
    gen_cluster::write_cluster(&mut w, services, endpoints, list, compact).expect("write input");
    drop(w);
    std::fs::metadata(path).expect("input").len()
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    // (services, endpoints each, compact, also as a List)
    let sizes: &[(usize, usize, bool, bool)] = if bench {
        &[
            (10_000, 10, true, true),
            (10_000, 10, false, true),
            (40_000, 10, true, false),
        ]
    } else {
        &[(100, 5, false, false)]
    };
    let dir = std::env::temp_dir().join(format!("sliceproxy-render-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    println!("input                             bytes     output    peak RSS   ratio   seconds");
    let mut worst: f64 = 0.0;
    for &(services, endpoints, compact, with_list) in sizes {
        for list in [false, true] {
            if list && !with_list {
                continue;
            }
            let form = match (compact, list) {
                (true, false) => "compact documents",
                (true, true) => "compact List",
                (false, false) => "documents",
                (false, true) => "List",
            };
            let path = dir.join(format!(
                "cluster-{services}x{endpoints}-{}.yaml",
                form.replace(' ', "-")
            ));
            let bytes = generate(&path, services, endpoints, list, compact);
            let file = path.to_str().expect("utf-8 path");
            for (output, extra) in [("table", &[][..]), ("iptables", &["--proxy-mode", "iptables"][..])] {
                let mut args = vec![
                    "render",
                    "-f",
                    file,
                    "--hostname-override",
                    "node-0",
                    "--cluster-cidr",
                    "10.128.0.0/10",
                ];
                args.extend_from_slice(extra);
                let run = measure(&args);
                assert_eq!(run.status, 0, "sliceproxy {args:?} failed");
                let ratio = run.rss_bytes as f64 / bytes as f64;
                worst = worst.max(ratio);
                println!(
                    "{:<30} {bytes:>10}  {output:>9}  {:>7.1} MB  {ratio:>5.2}x  {:>7.2}",
                    format!("{services}x{endpoints} {form}"),
                    run.rss_bytes as f64 / 1e6,
                    run.seconds
                );
            }
            std::fs::remove_file(&path).ok();
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    if bench {
        println!("worst ratio {worst:.2}x (target < {MAX_RSS_RATIO}x)");
        assert!(worst < MAX_RSS_RATIO, "peak RSS reached {worst:.2}x the input");
    }
}
