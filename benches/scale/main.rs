//! `scale-bench`: sliceproxy side by side with upstream kube-proxy (issue 14).
//!
//! * `run`: the driver. A real etcd + kube-apiserver (the test control
//!   plane's binaries and flags), N Services x M endpoints loaded once per
//!   size, then each proxy in turn, alone, in a fresh node namespace, same
//!   mode, one KubeProxyConfiguration file for both. Records cold start,
//!   network-programming latency under churn (metrics and kernel events),
//!   CPU and peak memory including children (cgroup v1), idle CPU, rules and
//!   bytes per sync, and packet-flow spot checks. One JSON file per run.
//! * `report`: the table (Markdown) and the plots (SVG) from those files.
//! * `diff`: the semantic differential of both proxies' iptables rules on one
//!   snapshot, through a small iptables interpreter.
//!
//! `scripts/scale-bench.sh` and `scripts/proxy-diff.sh` build what is needed
//! and call this. Root only (namespaces, cgroups, rules).

#[allow(dead_code, clippy::all)]
#[path = "../../tests/support/controlplane.rs"]
mod controlplane;
#[allow(dead_code, clippy::all)]
#[path = "../../tests/support/proxy.rs"]
mod proxy_fwd;

mod cgroup;
mod diff;
mod iptsim;
mod load;
mod netns;
mod nfmon;
mod probe;
mod process;
mod prom;
mod report;
mod results;
mod run;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "scale-bench", about = "sliceproxy side by side with kube-proxy (root only)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the side-by-side benchmark and write one JSON file per run, then the report.
    Run(RunArgs),
    /// Regenerate the table and plots from the JSON files of a results directory.
    Report {
        /// Directory holding run-*.json.
        #[arg(long)]
        results: PathBuf,
    },
    /// Semantic differential of kube-proxy's and sliceproxy's iptables rules.
    Diff(diff::DiffArgs),
    /// Dump-only interpreter: what each client class reaches through an
    /// `iptables-save` file for one frontend (debugging aid).
    Simulate(iptsim::SimulateArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Directory with kube-apiserver, etcd, kubectl and kube-proxy (the last
    /// line of tests/controlplane/build.sh).
    #[arg(long)]
    bin_dir: PathBuf,
    /// The sliceproxy binary (a release build).
    #[arg(long)]
    sliceproxy: PathBuf,
    /// Cluster sizes (services), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    sizes: Vec<usize>,
    /// Endpoints per service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Modes, comma-separated: iptables, nftables, ipvs.
    #[arg(long, value_delimiter = ',', default_value = "iptables,nftables,ipvs")]
    modes: Vec<String>,
    /// Proxies, comma-separated, in the order they run.
    #[arg(long, value_delimiter = ',', default_value = "sliceproxy,kube-proxy")]
    proxies: Vec<String>,
    /// Output directory (JSON per run, logs, report).
    #[arg(long, default_value = "target/scale-bench")]
    out: PathBuf,
    /// syncPeriod for both proxies.
    #[arg(long, default_value = "30s")]
    sync_period: String,
    /// minSyncPeriod for both proxies.
    #[arg(long, default_value = "1s")]
    min_sync_period: String,
    /// Quiet window after the cold start (seconds).
    #[arg(long, default_value_t = 60)]
    idle_secs: u64,
    /// Endpoint changes in the churn.
    #[arg(long, default_value_t = 40)]
    changes: usize,
    /// Churn rate, changes per second.
    #[arg(long, default_value_t = 0.5)]
    rate: f64,
    /// Changes made under strace to measure bytes per sync (0: skip).
    #[arg(long, default_value_t = 4)]
    traced_changes: usize,
    /// Give up on a cold start after this many seconds.
    #[arg(long, default_value_t = 3600)]
    cold_timeout: u64,
    /// Connections per spot check.
    #[arg(long, default_value_t = 30)]
    probe_tries: usize,
    /// Concurrent API requests while loading.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
}

fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(a) => run_cmd(a),
        Cmd::Report { results } => {
            let runs = report::read_dir(&results);
            report::write(&results, &runs);
        }
        Cmd::Diff(a) => diff::main(a),
        Cmd::Simulate(a) => iptsim::simulate_cmd(a),
    }
}

/// Points the control-plane harness at `bin_dir` (it reads these variables).
pub fn use_bin_dir(bin_dir: &std::path::Path) {
    for (var, name) in [
        ("SLICEPROXY_KUBE_APISERVER", "kube-apiserver"),
        ("SLICEPROXY_ETCD", "etcd"),
        ("SLICEPROXY_KUBECTL", "kubectl"),
    ] {
        // SAFETY: called at startup, before any other thread exists.
        unsafe { std::env::set_var(var, bin_dir.join(name)) };
    }
}

/// Requires root and the tools the driver calls.
pub fn preflight(tools: &[&str]) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("scale-bench: needs root (network namespaces, cgroups, rules)");
        std::process::exit(2);
    }
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "scale-bench: missing tools: {} (.ci/run installs them)",
            missing.join(" ")
        );
        std::process::exit(2);
    }
    netns::reap_stale();
}

fn first_line(cmd: &[&str]) -> String {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_else(|e| format!("(cannot run {}: {e})", cmd[0]))
}

/// Versions of everything involved.
pub fn versions(bin_dir: &std::path::Path, sliceproxy: &std::path::Path) -> results::Versions {
    let s = |p: PathBuf| p.to_string_lossy().into_owned();
    results::Versions {
        kube_proxy: first_line(&[&s(bin_dir.join("kube-proxy")), "--version"]),
        kube_apiserver: first_line(&[&s(bin_dir.join("kube-apiserver")), "--version"]),
        sliceproxy: first_line(&[&s(sliceproxy.to_path_buf()), "--version"]),
        git: first_line(&["git", "describe", "--always", "--dirty"]),
        kernel: first_line(&["uname", "-r"]),
        iptables: first_line(&["iptables", "--version"]),
        nft: first_line(&["nft", "--version"]),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .unwrap_or_default(),
    }
}

fn run_cmd(a: RunArgs) {
    preflight(&["ip", "iptables-save", "iptables-legacy-save", "nft", "strace"]);
    use_bin_dir(&a.bin_dir);
    let kp = a.bin_dir.join("kube-proxy");
    if a.proxies.iter().any(|p| p == "kube-proxy") && !kp.is_file() {
        eprintln!("scale-bench: {} missing: run scripts/build-kube-proxy.sh", kp.display());
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let v = versions(&a.bin_dir, &a.sliceproxy);
    let plan = run::Plan {
        bin_dir: a.bin_dir,
        sliceproxy: a.sliceproxy,
        sizes: a.sizes,
        endpoints: a.endpoints,
        modes: a.modes,
        proxies: a.proxies,
        out: a.out.clone(),
        settings: results::Settings {
            sync_period: a.sync_period,
            min_sync_period: a.min_sync_period,
            other: vec![
                format!("clusterCIDR {}", load::CLUSTER_CIDR),
                "detectLocalMode ClusterCIDR".into(),
                "masqueradeAll false".into(),
                "healthzBindAddress 0.0.0.0:10256, metricsBindAddress 127.0.0.1:10249 (in the node namespace)".into(),
                "conntrack: maxPerCore 0, min 0, tcp timeouts 0s (leave the kernel's conntrack settings alone)".into(),
                "nodePortAddresses unset (all node addresses); kube-proxy's localhostNodePorts default (true)".into(),
                "kube-proxy --v=2; sliceproxy RUST_LOG=info".into(),
                "both read the API server through a loopback forwarder inside the node namespace, admin token".into(),
            ],
        },
        idle: Duration::from_secs(a.idle_secs),
        changes: a.changes,
        rate: a.rate,
        traced_changes: a.traced_changes,
        cold_timeout: Duration::from_secs(a.cold_timeout),
        probe_tries: a.probe_tries,
        parallel: a.parallel,
    };
    let runs = run::run(&plan, &rt, &v);
    let all = report::read_dir(&a.out);
    report::write(&a.out, &all);
    let failed = runs.iter().filter(|r| r.status.starts_with("failed")).count();
    let spot_failed = runs.iter().filter(|r| r.ok() && !r.spot_pass).count();
    eprintln!(
        "scale-bench: {} runs, {} ok, {} not run, {failed} failed, {spot_failed} with failing spot checks; report in {}",
        runs.len(),
        runs.iter().filter(|r| r.ok()).count(),
        runs.iter().filter(|r| r.status.starts_with("not run")).count(),
        a.out.display()
    );
    if failed > 0 || spot_failed > 0 {
        std::process::exit(1);
    }
}
