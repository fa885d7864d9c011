//! Self-describing results: one JSON file per (size, mode, proxy) run, with
//! the versions, settings, machine load and date it ran with.

use crate::load::{Change, LoadReport};
use crate::probe::Check;
use crate::prom::Histogram;

/// Versions and machine facts, recorded with every run.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Versions {
    /// `kube-proxy --version`.
    pub kube_proxy: String,
    /// `kube-apiserver --version`.
    pub kube_apiserver: String,
    /// `sliceproxy --version`.
    pub sliceproxy: String,
    /// `git describe --always --dirty` of the repository.
    pub git: String,
    /// `uname -r`.
    pub kernel: String,
    /// `iptables --version`.
    pub iptables: String,
    /// `nft --version`.
    pub nft: String,
    /// CPUs online.
    pub cpus: usize,
    /// `model name` of the CPU.
    pub cpu_model: String,
}

/// Settings given to both proxies (one KubeProxyConfiguration file).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    /// `syncPeriod` (iptables, nftables, ipvs).
    pub sync_period: String,
    /// `minSyncPeriod`.
    pub min_sync_period: String,
    /// Everything else, as text.
    pub other: Vec<String>,
}

/// Latency percentiles (seconds).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Largest (exact samples only).
    pub max: Option<f64>,
    /// Observations.
    pub count: f64,
    /// Changes never observed (exact samples only).
    pub missing: usize,
    /// The histogram delta, when from metrics.
    pub histogram: Option<Histogram>,
}

impl Latency {
    /// From a histogram delta (PromQL-style interpolation).
    pub fn from_histogram(h: &Histogram) -> Latency {
        Latency {
            p50: h.quantile(0.5),
            p90: h.quantile(0.9),
            p99: h.quantile(0.99),
            max: None,
            count: h.count,
            missing: 0,
            histogram: Some(h.clone()),
        }
    }

    /// From exact samples (nearest rank).
    pub fn from_samples(samples: &[f64], expected: usize) -> Latency {
        let mut s = samples.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| -> Option<f64> {
            if s.is_empty() {
                return None;
            }
            let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
            Some(s[rank - 1])
        };
        Latency {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: s.last().copied(),
            count: s.len() as f64,
            missing: expected.saturating_sub(s.len()),
            histogram: None,
        }
    }
}

/// Bytes handed to the kernel's tools per sync.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SyncBytes {
    /// How it was measured.
    pub method: String,
    /// Changes made while tracing.
    pub changes: usize,
    /// Syncs the proxy counted meanwhile.
    pub syncs: f64,
    /// Bytes per burst (sync), in order.
    pub bursts: Vec<u64>,
    /// Median burst.
    pub median: Option<u64>,
    /// Largest burst.
    pub max: Option<u64>,
    /// kube-proxy's `sync_proxy_rules_iptables_last{table="nat"}` after each change.
    pub kube_proxy_iptables_last_nat: Vec<f64>,
}

/// One (size, mode, proxy) run.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RunResult {
    /// Services.
    pub size: usize,
    /// Endpoints per service.
    pub endpoints: usize,
    /// Mode.
    pub mode: String,
    /// `sliceproxy` or `kube-proxy`.
    pub proxy: String,
    /// `ok`, `not run: why`, `failed: why`.
    pub status: String,
    /// UTC date and time the run started.
    pub date: String,
    /// Versions and machine.
    pub versions: Versions,
    /// Settings.
    pub settings: Settings,
    /// `/proc/loadavg` (1, 5, 15 min) before and after the run.
    pub load_before: String,
    /// After.
    pub load_after: String,
    /// Wall time of the run.
    pub wall_seconds: f64,
    /// How the objects were loaded (once per size).
    pub load: Option<LoadReport>,
    /// Network namespaces used (deleted at the end).
    pub namespaces: Vec<String>,
    /// Start -> the proxy's `sync_proxy_rules_last_timestamp_seconds` of its first sync.
    pub cold_start_s: Option<f64>,
    /// Start -> the kernel committing the last of the N ClusterIPs (nf_tables events).
    pub cold_start_kernel_s: Option<f64>,
    /// CPU (process + children) up to the end of the cold start.
    pub cold_cpu_s: f64,
    /// Length of the quiet window.
    pub idle_window_s: f64,
    /// CPU in the quiet window.
    pub idle_cpu_s: f64,
    /// Syncs in the quiet window.
    pub idle_syncs: f64,
    /// Full syncs in the quiet window.
    pub idle_full_syncs: f64,
    /// Rules in the node's kernel after the cold start (`nft -j list ruleset`).
    pub kernel_rules: Option<usize>,
    /// Set and map elements.
    pub kernel_elements: Option<usize>,
    /// Network-programming latency from the proxy's own histogram (churn only).
    pub latency_metric: Option<Latency>,
    /// The same, trigger time -> the kernel event adding the new endpoint.
    pub latency_kernel: Option<Latency>,
    /// CPU during the churn (until drained).
    pub churn_cpu_s: f64,
    /// Syncs during the churn.
    pub churn_syncs: f64,
    /// The churn's changes.
    pub changes: Vec<Change>,
    /// nf_tables transactions seen.
    pub nf_generations: u64,
    /// Monitor overflows (events lost).
    pub nf_overflows: u64,
    /// Bytes per sync (strace).
    pub bytes: Option<SyncBytes>,
    /// The proxy's own sync log lines.
    pub own_sync_log: Vec<String>,
    /// Packet-flow spot checks of the final state.
    pub spot: Vec<Check>,
    /// Every spot check passed.
    pub spot_pass: bool,
    /// CPU of the whole run (process + children).
    pub cpu_total_s: f64,
    /// Peak memory of the group (process + children + charged kernel memory).
    pub mem_peak_bytes: u64,
    /// Kernel-memory part of that peak.
    pub kmem_peak_bytes: u64,
    /// Peak RSS of the proxy process alone (VmHWM).
    pub rss_hwm_bytes: u64,
    /// The proxy was still running when the run ended.
    pub proxy_alive_at_end: bool,
    /// Anything else worth knowing.
    pub notes: Vec<String>,
}

impl RunResult {
    /// A result to fill in.
    pub fn new(size: usize, endpoints: usize, mode: &str, proxy: &str, v: &Versions, s: &Settings) -> RunResult {
        RunResult {
            size,
            endpoints,
            mode: mode.into(),
            proxy: proxy.into(),
            status: "failed: did not finish".into(),
            date: crate::load::rfc3339_nanos(std::time::SystemTime::now())
                .split('.')
                .next()
                .unwrap_or("")
                .to_string()
                + "Z",
            versions: v.clone(),
            settings: s.clone(),
            ..Default::default()
        }
    }

    /// Whether it ran.
    pub fn ok(&self) -> bool {
        self.status == "ok"
    }

    /// One line for the console.
    pub fn summary(&self) -> String {
        if !self.ok() {
            return self.status.clone();
        }
        format!(
            "cold {:.2} s, p50 {} / p99 {} (metric), p50 {} / p99 {} (kernel), cpu {:.1} s, mem {:.0} MB, rss {:.0} MB, spot {}",
            self.cold_start_s.unwrap_or(f64::NAN),
            fmt_s(self.latency_metric.as_ref().and_then(|l| l.p50)),
            fmt_s(self.latency_metric.as_ref().and_then(|l| l.p99)),
            fmt_s(self.latency_kernel.as_ref().and_then(|l| l.p50)),
            fmt_s(self.latency_kernel.as_ref().and_then(|l| l.p99)),
            self.cpu_total_s,
            self.mem_peak_bytes as f64 / 1e6,
            self.rss_hwm_bytes as f64 / 1e6,
            if self.spot_pass { "pass" } else { "FAIL" }
        )
    }
}

/// Seconds with sensible precision, or `-`.
pub fn fmt_s(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x >= 100.0 => format!("{x:.0} s"),
        Some(x) if x >= 10.0 => format!("{x:.1} s"),
        Some(x) if x >= 1.0 => format!("{x:.2} s"),
        Some(x) => format!("{:.0} ms", x * 1000.0),
    }
}
