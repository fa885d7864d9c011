//! Configuration: kube-proxy-compatible flags, the `KubeProxyConfiguration` file, merging and
//! validation.
//!
//! sliceproxy is meant to be a drop-in replacement for kube-proxy, so it accepts kube-proxy's flag
//! names and its `kubeproxy.config.k8s.io/v1alpha1` `KubeProxyConfiguration` file format.
//!
//! Precedence is, per field: an explicitly given flag, then the `--config` file, then the default.
//! This deliberately differs from upstream kube-proxy, which ignores almost every flag once
//! `--config` is given (only `--hostname-override` and the logging flags still win there): a
//! per-field override is what operators expect, and a flag that silently does nothing is a trap.
//!
//! File fields sliceproxy does not implement (`conntrack`, `featureGates`, `logging`, ...) and
//! fields not in the v1alpha1 schema at all are reported as warnings, never as errors, so an
//! operator's existing kube-proxy ConfigMap works unchanged. A field with a wrong type or an
//! invalid value is an error that names the field and the value.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde_yaml::{Mapping, Value};

use crate::model::{NodePortAddresses, ProxyMode};

/// The only `apiVersion` accepted in a config file.
pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
/// The only `kind` accepted in a config file.
pub const KIND: &str = "KubeProxyConfiguration";
/// Default full-resync interval (upstream's default for every mode).
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(30);
/// Default minimum interval between rule syncs (upstream's default).
pub const DEFAULT_MIN_SYNC_PERIOD: Duration = Duration::from_secs(1);
/// Port of the health check server when the address gives none (upstream `ports.ProxyHealthzPort`).
pub const DEFAULT_HEALTHZ_PORT: u16 = 10256;
/// Port of the metrics server when the address gives none (upstream `ports.ProxyStatusPort`).
pub const DEFAULT_METRICS_PORT: u16 = 10249;
/// IPVS schedulers kube-proxy accepts; `""` additionally means the default, `rr`.
pub const IPVS_SCHEDULERS: &[&str] = &["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh"];

/// Reason given for every malformed duration, so the operator sees the expected syntax.
const DURATION_HINT: &str = "not a duration (want e.g. 30s, 1m0s)";
/// Reason given for every malformed CIDR.
const CIDR_HINT: &str = "not a CIDR (want e.g. 10.244.0.0/16 or fd00:10:244::/56)";

/// Errors of the configuration layer. Every value error names the field and the offending value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An invalid value. `field` is the flag (`--sync-period`) when the value came from the command
    /// line, or the path in the file (`iptables.syncPeriod`) when it came from the config file.
    #[error("invalid value \"{value}\" for {field}: {reason}")]
    InvalidValue {
        /// The flag name or file field path.
        field: String,
        /// The value as the operator wrote it.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The `--config` file could not be read.
    #[error("reading config file {}: {source}", path.display())]
    ReadFile {
        /// The path given with `--config`.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not a YAML mapping (syntax error, empty document, or a scalar/list).
    #[error("parsing config file {file}: {message}")]
    Parse {
        /// The file name, or `<config>` when the text did not come from a file.
        file: String,
        /// What the parser reported.
        message: String,
    },
}

/// Shorthand for [`ConfigError::InvalidValue`].
fn invalid(field: impl Into<String>, value: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidValue {
        field: field.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// Parses a boolean flag value the way Go's `strconv.ParseBool` does, because kube-proxy users
/// write `--masquerade-all=1` or `=True` as well as `=true`.
fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean (want true or false)")),
    }
}

/// kube-proxy-compatible flags. Every field is an Option so that merge() can tell "given" from
/// "default".
///
/// Values that need validation are kept as strings here and checked in [`Config::resolve`], so a
/// bad flag produces the same `invalid value "X" for --flag: reason` error as a bad file field.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ProxyFlags {
    /// Path to a KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) file. Flags given
    /// explicitly override the file field by field.
    #[arg(long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Path to a kubeconfig file with authorization information (the API server URL can be
    /// overridden with --master).
    #[arg(long = "kubeconfig", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Address of the Kubernetes API server (overrides any value in kubeconfig).
    #[arg(long = "master", value_name = "URL")]
    pub master: Option<String>,

    /// Name of the Node this proxy runs on, instead of the machine hostname.
    #[arg(long = "hostname-override", value_name = "NAME")]
    pub hostname_override: Option<String>,

    /// Which dataplane to use: iptables (default), nftables or ipvs.
    #[arg(long = "proxy-mode", value_name = "MODE")]
    pub proxy_mode: Option<String>,

    /// Pod CIDR range(s) of the cluster; a comma-separated dual-stack pair is allowed.
    #[arg(long = "cluster-cidr", value_name = "CIDR[,CIDR]")]
    pub cluster_cidr: Option<String>,

    /// CIDRs of node IPs that accept NodePort traffic, or the single word 'primary'. Unset means
    /// all of the node's addresses.
    #[arg(
        long = "nodeport-addresses",
        value_name = "CIDR[,CIDR]|primary",
        value_delimiter = ','
    )]
    pub nodeport_addresses: Option<Vec<String>>,

    /// SNAT all traffic sent to Service cluster IPs (--masquerade-all or --masquerade-all=false).
    #[arg(
        long = "masquerade-all",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = parse_go_bool
    )]
    pub masquerade_all: Option<bool>,

    /// Minimum interval between rule syncs, in any mode (Go duration, e.g. 1s; 0 = sync on
    /// every change).
    #[arg(long = "min-sync-period", value_name = "DURATION")]
    pub min_sync_period: Option<String>,

    /// Interval of full rule resyncs, in any mode (Go duration, e.g. 30s). Must be > 0.
    #[arg(long = "sync-period", value_name = "DURATION")]
    pub sync_period: Option<String>,

    /// kube-proxy's name for --min-sync-period; applies in iptables and nftables modes only.
    #[arg(long = "iptables-min-sync-period", value_name = "DURATION")]
    pub iptables_min_sync_period: Option<String>,

    /// kube-proxy's name for --sync-period; applies in iptables and nftables modes only.
    #[arg(long = "iptables-sync-period", value_name = "DURATION")]
    pub iptables_sync_period: Option<String>,

    /// IP:port of the health check server (default 0.0.0.0:10256); a bare IP uses port 10256;
    /// an empty value disables the server.
    #[arg(long = "healthz-bind-address", value_name = "HOST:PORT")]
    pub healthz_bind_address: Option<String>,

    /// IP:port of the metrics server (default 127.0.0.1:10249); a bare IP uses port 10249;
    /// an empty value disables the server.
    #[arg(long = "metrics-bind-address", value_name = "HOST:PORT")]
    pub metrics_bind_address: Option<String>,

    /// IPVS scheduler: rr (default), wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq or mh.
    #[arg(long = "ipvs-scheduler", value_name = "NAME")]
    pub ipvs_scheduler: Option<String>,

    /// Minimum interval between IPVS rule syncs (ipvs mode).
    #[arg(long = "ipvs-min-sync-period", value_name = "DURATION")]
    pub ipvs_min_sync_period: Option<String>,

    /// Interval of full IPVS resyncs (ipvs mode). Must be > 0.
    #[arg(long = "ipvs-sync-period", value_name = "DURATION")]
    pub ipvs_sync_period: Option<String>,

    /// Set arp_ignore=1 and arp_announce=2 so nodes do not answer ARP for kube-ipvs0 addresses.
    #[arg(
        long = "ipvs-strict-arp",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = parse_go_bool
    )]
    pub ipvs_strict_arp: Option<bool>,

    /// Timeout for idle IPVS TCP connections; 0 leaves the kernel value as-is.
    #[arg(long = "ipvs-tcp-timeout", value_name = "DURATION")]
    pub ipvs_tcp_timeout: Option<String>,

    /// Timeout for IPVS TCP connections after a FIN; 0 leaves the kernel value as-is.
    #[arg(long = "ipvs-tcpfin-timeout", value_name = "DURATION")]
    pub ipvs_tcpfin_timeout: Option<String>,

    /// Timeout for IPVS UDP packets; 0 leaves the kernel value as-is.
    #[arg(long = "ipvs-udp-timeout", value_name = "DURATION")]
    pub ipvs_udp_timeout: Option<String>,

    /// Comma-separated CIDRs the IPVS proxier must not touch when cleaning up rules.
    #[arg(long = "ipvs-exclude-cidrs", value_name = "CIDR[,CIDR]", value_delimiter = ',')]
    pub ipvs_exclude_cidrs: Option<Vec<String>>,

    /// Remove the rules sliceproxy (or kube-proxy) installed, then exit.
    #[arg(
        long = "cleanup",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = parse_go_bool
    )]
    pub cleanup: Option<bool>,
}

/// IPVS settings (used by a later issue; parse and validate them now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsConfig {
    /// Scheduler name; `""` means the default, `rr`. One of [`IPVS_SCHEDULERS`] otherwise.
    pub scheduler: String,
    /// Full resync interval. In ipvs mode this equals [`Config::sync_period`].
    pub sync_period: Duration,
    /// Minimum interval between syncs. In ipvs mode this equals [`Config::min_sync_period`].
    pub min_sync_period: Duration,
    /// Whether to set arp_ignore/arp_announce for strict ARP.
    pub strict_arp: bool,
    /// Idle TCP session timeout; zero leaves the kernel value untouched.
    pub tcp_timeout: Duration,
    /// TCP timeout after FIN; zero leaves the kernel value untouched.
    pub tcp_fin_timeout: Duration,
    /// UDP timeout; zero leaves the kernel value untouched.
    pub udp_timeout: Duration,
    /// CIDRs whose IPVS services cleanup must not touch.
    pub exclude_cidrs: Vec<IpNet>,
}

impl Default for IpvsConfig {
    fn default() -> Self {
        IpvsConfig {
            scheduler: String::new(),
            sync_period: DEFAULT_SYNC_PERIOD,
            min_sync_period: DEFAULT_MIN_SYNC_PERIOD,
            strict_arp: false,
            tcp_timeout: Duration::ZERO,
            tcp_fin_timeout: Duration::ZERO,
            udp_timeout: Duration::ZERO,
            exclude_cidrs: Vec::new(),
        }
    }
}

impl IpvsConfig {
    /// The scheduler to program: `rr` when none was configured.
    pub fn effective_scheduler(&self) -> &str {
        if self.scheduler.is_empty() {
            "rr"
        } else {
            &self.scheduler
        }
    }
}

/// The resolved configuration the agent runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// kubeconfig path (`--kubeconfig`, else file `clientConnection.kubeconfig`); None = in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// API server URL override (`--master`; there is no file field for it upstream).
    pub master: Option<String>,
    /// Node name: `--hostname-override`, else file `hostnameOverride`, else env `NODE_NAME`, else
    /// the machine hostname; trimmed and lowercased like upstream.
    pub hostname: String,
    /// The dataplane.
    pub mode: ProxyMode,
    /// Pod CIDRs (`--cluster-cidr` / `clusterCIDR` comma separated, or `detectLocal.clusterCIDRs`);
    /// at most one per IP family.
    pub cluster_cidrs: Vec<IpNet>,
    /// Which node addresses accept NodePort traffic.
    pub nodeport_addresses: NodePortAddresses,
    /// SNAT all Service traffic (file: `iptables.masqueradeAll`, or `nftables.masqueradeAll` in
    /// nftables mode, as upstream's conversion does).
    pub masquerade_all: bool,
    /// Minimum interval between rule syncs; default 1s.
    pub min_sync_period: Duration,
    /// Full resync interval; default 30s; > 0 and >= `min_sync_period`.
    pub sync_period: Duration,
    /// Health check server address; default 0.0.0.0:10256; None = disabled.
    pub healthz_bind_address: Option<SocketAddr>,
    /// Metrics server address; default 127.0.0.1:10249; None = disabled.
    pub metrics_bind_address: Option<SocketAddr>,
    /// IPVS settings.
    pub ipvs: IpvsConfig,
    /// Clean up rules and exit.
    pub cleanup: bool,
    /// The `--config` file this was read from, if any.
    pub config_file: Option<PathBuf>,
}

impl Config {
    /// Merge flags over the file (if flags.config is set) over defaults; validate; return warnings
    /// for unknown/ignored file fields.
    ///
    /// Reads the `--config` file, the `NODE_NAME` environment variable and the machine hostname,
    /// then delegates to [`Config::resolve`].
    ///
    /// # Errors
    /// [`ConfigError::ReadFile`] if the `--config` file cannot be read, otherwise as
    /// [`Config::resolve`].
    pub fn load(flags: &ProxyFlags) -> Result<(Config, Vec<String>), ConfigError> {
        let text = match config_path(flags) {
            Some(path) => {
                Some(std::fs::read_to_string(&path).map_err(|source| ConfigError::ReadFile { path, source })?)
            }
            None => None,
        };
        let env_node_name = std::env::var("NODE_NAME").ok();
        let machine = gethostname::gethostname().to_string_lossy().into_owned();
        Self::resolve(flags, text.as_deref(), env_node_name.as_deref(), &machine)
    }

    /// Same, with the NODE_NAME env value and machine hostname injected (for tests; load() calls
    /// this). `file_text` is the content of the `--config` file, if any.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] if the file is not a YAML mapping; [`ConfigError::InvalidValue`]
    /// for a wrong apiVersion/kind, a field of the wrong type, or a value that fails validation.
    pub fn resolve(
        flags: &ProxyFlags,
        file_text: Option<&str>,
        env_node_name: Option<&str>,
        machine_hostname: &str,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let config_file = config_path(flags);
        let mut warnings = Vec::new();
        let file = match file_text {
            Some(text) => {
                let name = config_file
                    .as_ref()
                    .map_or_else(|| "<config>".to_string(), |p| p.display().to_string());
                read_file_config(text, &name, &mut warnings)?
            }
            None => FileConfig::default(),
        };

        let mode = match (&flags.proxy_mode, &file.mode) {
            (Some(s), _) => parse_mode(s, "--proxy-mode")?,
            (None, Some(s)) => parse_mode(s, "mode")?,
            (None, None) => ProxyMode::default(),
        };

        // Parse every given duration flag up front, so a typo is reported even when the flag
        // does not apply to the selected mode.
        let f_sync = flag_duration(&flags.sync_period, "--sync-period")?;
        let f_min = flag_duration(&flags.min_sync_period, "--min-sync-period")?;
        let f_ipt_sync = flag_duration(&flags.iptables_sync_period, "--iptables-sync-period")?;
        let f_ipt_min = flag_duration(&flags.iptables_min_sync_period, "--iptables-min-sync-period")?;
        let f_ipvs_sync = flag_duration(&flags.ipvs_sync_period, "--ipvs-sync-period")?;
        let f_ipvs_min = flag_duration(&flags.ipvs_min_sync_period, "--ipvs-min-sync-period")?;
        let f_tcp = flag_duration(&flags.ipvs_tcp_timeout, "--ipvs-tcp-timeout")?;
        let f_tcpfin = flag_duration(&flags.ipvs_tcpfin_timeout, "--ipvs-tcpfin-timeout")?;
        let f_udp = flag_duration(&flags.ipvs_udp_timeout, "--ipvs-udp-timeout")?;

        // Upstream's v1alpha1 conversion takes the periods from the selected mode's section, and
        // applies --iptables-* only when the mode is not ipvs and --ipvs-* only in ipvs mode.
        let (section, sec_sync, sec_min) = match mode {
            ProxyMode::Iptables => ("iptables", &file.iptables.sync_period, &file.iptables.min_sync_period),
            ProxyMode::Nftables => ("nftables", &file.nftables.sync_period, &file.nftables.min_sync_period),
            ProxyMode::Ipvs => ("ipvs", &file.ipvs.sync_period, &file.ipvs.min_sync_period),
        };
        let (mode_sync, mode_min) = if mode == ProxyMode::Ipvs {
            for (given, name) in [
                (&f_ipt_sync, "--iptables-sync-period"),
                (&f_ipt_min, "--iptables-min-sync-period"),
            ] {
                if given.is_some() {
                    warnings.push(format!(
                        "{name}: ignored in ipvs mode (use --ipvs-sync-period/--ipvs-min-sync-period or --sync-period/--min-sync-period)"
                    ));
                }
            }
            (f_ipvs_sync.clone(), f_ipvs_min.clone())
        } else {
            (f_ipt_sync, f_ipt_min)
        };
        let sync = mode_sync
            .or(f_sync)
            .or_else(|| file_period(sec_sync, section, "syncPeriod"))
            .unwrap_or_else(|| Src::default_value(DEFAULT_SYNC_PERIOD));
        let min = mode_min
            .or(f_min)
            .or_else(|| file_period(sec_min, section, "minSyncPeriod"))
            .unwrap_or_else(|| Src::default_value(DEFAULT_MIN_SYNC_PERIOD));
        validate_periods(&sync, &min)?;

        let masquerade_all = flags
            .masquerade_all
            .or(match mode {
                ProxyMode::Nftables => file.nftables.masquerade_all,
                ProxyMode::Iptables | ProxyMode::Ipvs => file.iptables.masquerade_all,
            })
            .unwrap_or(false);

        let cluster_cidrs = resolve_cluster_cidrs(flags, &file, &mut warnings)?;

        let nodeport_addresses = match (&flags.nodeport_addresses, &file.node_port_addresses) {
            (Some(items), _) => parse_nodeport_addresses(items, "--nodeport-addresses", false)?,
            (None, Some(items)) => parse_nodeport_addresses(items, "nodePortAddresses", true)?,
            (None, None) => NodePortAddresses::All,
        };

        let healthz_bind_address = resolve_bind_address(
            &flags.healthz_bind_address,
            "--healthz-bind-address",
            &file.healthz_bind_address,
            "healthzBindAddress",
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_HEALTHZ_PORT),
        )?;
        let metrics_bind_address = resolve_bind_address(
            &flags.metrics_bind_address,
            "--metrics-bind-address",
            &file.metrics_bind_address,
            "metricsBindAddress",
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_METRICS_PORT),
        )?;

        let ipvs = {
            let (sync_period, min_sync_period) = if mode == ProxyMode::Ipvs {
                (sync.value, min.value)
            } else {
                // Not the active mode: keep what was configured for later, unvalidated against
                // each other, as upstream only validates the ipvs section in ipvs mode.
                let s = f_ipvs_sync
                    .or_else(|| file_period(&file.ipvs.sync_period, "ipvs", "syncPeriod"))
                    .map_or(DEFAULT_SYNC_PERIOD, |s| s.value);
                let m = f_ipvs_min
                    .or_else(|| file_period(&file.ipvs.min_sync_period, "ipvs", "minSyncPeriod"))
                    .map_or(DEFAULT_MIN_SYNC_PERIOD, |s| s.value);
                (s, m)
            };
            let scheduler = match (&flags.ipvs_scheduler, &file.ipvs.scheduler) {
                (Some(s), _) => validate_scheduler(s, "--ipvs-scheduler")?,
                (None, Some(s)) => validate_scheduler(s, "ipvs.scheduler")?,
                (None, None) => String::new(),
            };
            let exclude_cidrs = match (&flags.ipvs_exclude_cidrs, &file.ipvs.exclude_cidrs) {
                (Some(items), _) => parse_cidr_list(items, "--ipvs-exclude-cidrs", false)?,
                (None, Some(items)) => parse_cidr_list(items, "ipvs.excludeCIDRs", true)?,
                (None, None) => Vec::new(),
            };
            let timeout = |flag: Option<Src>, file: &FileDuration| {
                flag.map(|s| s.value)
                    .or(file.as_ref().map(|(d, _)| *d))
                    .unwrap_or(Duration::ZERO)
            };
            IpvsConfig {
                scheduler,
                sync_period,
                min_sync_period,
                strict_arp: flags.ipvs_strict_arp.or(file.ipvs.strict_arp).unwrap_or(false),
                tcp_timeout: timeout(f_tcp, &file.ipvs.tcp_timeout),
                tcp_fin_timeout: timeout(f_tcpfin, &file.ipvs.tcp_fin_timeout),
                udp_timeout: timeout(f_udp, &file.ipvs.udp_timeout),
                exclude_cidrs,
            }
        };

        let hostname = resolve_hostname(
            flags.hostname_override.as_deref(),
            file.hostname_override.as_deref(),
            env_node_name,
            machine_hostname,
        )?;

        // An explicitly empty --kubeconfig means "none", overriding the file.
        let kubeconfig = match &flags.kubeconfig {
            Some(p) => Some(p.clone()),
            None => file.kubeconfig.as_ref().map(PathBuf::from),
        }
        .filter(|p| !p.as_os_str().is_empty());

        let config = Config {
            kubeconfig,
            master: flags.master.clone().filter(|m| !m.trim().is_empty()),
            hostname,
            mode,
            cluster_cidrs,
            nodeport_addresses,
            masquerade_all,
            min_sync_period: min.value,
            sync_period: sync.value,
            healthz_bind_address,
            metrics_bind_address,
            ipvs,
            cleanup: flags.cleanup.unwrap_or(false),
            config_file,
        };
        Ok((config, warnings))
    }
}

/// `--config`, treating an empty value as "no file" like upstream (`len(ConfigFile) > 0`).
fn config_path(flags: &ProxyFlags) -> Option<PathBuf> {
    flags.config.clone().filter(|p| !p.as_os_str().is_empty())
}

/// Parse Go's time.Duration syntax (what kube-proxy's flags and config use). Negative durations are
/// an error.
///
/// Accepted: an optional sign, then one or more `<number><unit>` pairs where the number may have a
/// fraction (`1.5`, `.5`, `1.`) and the unit is `ns`, `us`/`µs`/`μs`, `ms`, `s`, `m` or `h`; or
/// the bare `0`. As in Go, the total must fit in an i64 of nanoseconds.
///
/// # Errors
/// A human-readable reason (without the value) for malformed, negative or too-large input.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(DURATION_HINT.to_string());
    }
    let too_large = || "duration too large (Go's limit is 2562047h47m16.854775807s)".to_string();
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after_int) = rest.split_at(int_len);
        rest = after_int;
        let mut frac_digits = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let n = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            frac_digits = &after_dot[..n];
            rest = &after_dot[n..];
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(DURATION_HINT.to_string());
        }
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (unit, after_unit) = rest.split_at(unit_len);
        rest = after_unit;
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("{DURATION_HINT}: missing unit")),
            _ => return Err(format!("{DURATION_HINT}: unknown unit {unit:?}")),
        };
        // 39 digits overflow u128; anything that long is far beyond Go's limit anyway.
        if int_digits.len() > 30 {
            return Err(too_large());
        }
        let int: u128 = if int_digits.is_empty() {
            0
        } else {
            int_digits.parse().map_err(|_| too_large())?
        };
        total += int * unit_ns;
        if !frac_digits.is_empty() {
            // Digits beyond nanosecond resolution of the largest unit cannot matter.
            let kept = &frac_digits[..frac_digits.len().min(20)];
            let frac: u128 = kept.parse().map_err(|_| DURATION_HINT.to_string())?;
            total += frac * unit_ns / 10u128.pow(kept.len() as u32);
        }
        if total > i64::MAX as u128 {
            return Err(too_large());
        }
    }
    if negative && total != 0 {
        return Err("must not be negative".to_string());
    }
    // Cannot truncate: total <= i64::MAX was checked after every component.
    Ok(Duration::from_nanos(total as u64))
}

/// Render a Duration the way Go prints it ("1s", "1m30s", "300ms") for messages.
pub fn format_go_duration(d: Duration) -> String {
    let n = d.as_nanos();
    match n {
        0 => "0s".to_string(),
        1..=999 => format!("{n}ns"),
        1_000..=999_999 => format!("{}\u{b5}s", decimal(n, 3)),
        1_000_000..=999_999_999 => format!("{}ms", decimal(n, 6)),
        _ => {
            let secs = n / 1_000_000_000;
            let (h, m) = (secs / 3600, secs / 60 % 60);
            let mut out = String::new();
            if h > 0 {
                let _ = write!(out, "{h}h");
            }
            if h > 0 || m > 0 {
                let _ = write!(out, "{m}m");
            }
            let sub_minute = n % 60_000_000_000;
            let _ = write!(out, "{}s", decimal(sub_minute, 9));
            out
        }
    }
}

/// `n / 10^digits` as a decimal with trailing zeros (and a bare point) removed, like Go's fmtFrac.
fn decimal(n: u128, digits: u32) -> String {
    let scale = 10u128.pow(digits);
    let (int, frac) = (n / scale, n % scale);
    if frac == 0 {
        return int.to_string();
    }
    let frac = format!("{frac:0width$}", width = digits as usize);
    format!("{int}.{}", frac.trim_end_matches('0'))
}

/// A resolved duration together with where it came from, so errors can name the right field.
#[derive(Debug, Clone)]
struct Src {
    value: Duration,
    /// Flag name or file path; empty for the built-in default.
    field: String,
    /// The text as written (or the formatted default).
    raw: String,
}

impl Src {
    fn default_value(value: Duration) -> Src {
        Src {
            value,
            field: String::new(),
            raw: format_go_duration(value),
        }
    }

    fn is_default(&self) -> bool {
        self.field.is_empty()
    }

    /// "(1s from --min-sync-period)" or "(1s, the default)" for cross-field messages.
    fn describe(&self) -> String {
        if self.is_default() {
            format!("({}, the default)", self.raw)
        } else {
            format!("({} from {})", self.raw, self.field)
        }
    }
}

fn flag_duration(value: &Option<String>, flag: &str) -> Result<Option<Src>, ConfigError> {
    value
        .as_ref()
        .map(|raw| {
            let value = parse_go_duration(raw.trim()).map_err(|reason| invalid(flag, raw, reason))?;
            Ok(Src {
                value,
                field: flag.to_string(),
                raw: raw.clone(),
            })
        })
        .transpose()
}

/// A file sync period. Zero counts as unset because upstream's defaulting replaces a zero
/// syncPeriod/minSyncPeriod with 30s/1s, and kubeadm writes `syncPeriod: 0s` into every
/// kube-proxy ConfigMap; honouring the zero would reject (or busy-loop) real clusters.
fn file_period(value: &FileDuration, section: &str, key: &str) -> Option<Src> {
    value.as_ref().filter(|(d, _)| !d.is_zero()).map(|(d, raw)| Src {
        value: *d,
        field: format!("{section}.{key}"),
        raw: raw.clone(),
    })
}

/// Upstream's rules: syncPeriod > 0, minSyncPeriod >= 0 (guaranteed by parsing), and
/// syncPeriod >= minSyncPeriod. The error is attached to whichever side the operator set.
fn validate_periods(sync: &Src, min: &Src) -> Result<(), ConfigError> {
    if sync.value.is_zero() {
        return Err(invalid(&sync.field, &sync.raw, "must be greater than 0"));
    }
    if min.value > sync.value {
        return Err(if sync.is_default() {
            invalid(
                &min.field,
                &min.raw,
                format!("must be less than or equal to the sync period {}", sync.describe()),
            )
        } else {
            invalid(
                &sync.field,
                &sync.raw,
                format!(
                    "must be greater than or equal to the minimum sync period {}",
                    min.describe()
                ),
            )
        });
    }
    Ok(())
}

fn parse_mode(s: &str, field: &str) -> Result<ProxyMode, ConfigError> {
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return Ok(ProxyMode::default());
    }
    trimmed.parse().map_err(|reason: String| invalid(field, s, reason))
}

fn validate_scheduler(s: &str, field: &str) -> Result<String, ConfigError> {
    let trimmed = s.trim();
    if trimmed.is_empty() || IPVS_SCHEDULERS.contains(&trimmed) {
        Ok(trimmed.to_string())
    } else {
        Err(invalid(
            field,
            s,
            format!(
                "unknown IPVS scheduler (want one of {}; blank means rr)",
                IPVS_SCHEDULERS.join(", ")
            ),
        ))
    }
}

/// Parses one CIDR. Like Go's `net.ParseCIDR`, host bits are allowed and masked off.
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    IpNet::from_str(s.trim())
        .map(|n| n.trunc())
        .map_err(|_| CIDR_HINT.to_string())
}

/// Field name for item `i` of a list: `path[i]` for file lists (like upstream's field paths),
/// just the flag for comma-separated flag values.
fn item_field(field: &str, i: usize, indexed: bool) -> String {
    if indexed {
        format!("{field}[{i}]")
    } else {
        field.to_string()
    }
}

fn parse_cidr_list(items: &[String], field: &str, indexed: bool) -> Result<Vec<IpNet>, ConfigError> {
    items
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.trim().is_empty())
        .map(|(i, s)| parse_cidr(s).map_err(|r| invalid(item_field(field, i, indexed), s, r)))
        .collect()
}

/// Cluster CIDRs: `--cluster-cidr`, else file `clusterCIDR`, else file `detectLocal.clusterCIDRs`
/// (the internal config's field, accepted as an extension). Upstream allows one CIDR or a
/// dual-stack pair.
fn resolve_cluster_cidrs(
    flags: &ProxyFlags,
    file: &FileConfig,
    warnings: &mut Vec<String>,
) -> Result<Vec<IpNet>, ConfigError> {
    let split = |s: &str| s.split(',').map(str::to_string).collect::<Vec<_>>();
    let file_cidr = file.cluster_cidr.as_deref().filter(|s| !s.trim().is_empty());
    let detect_local = file.detect_local_cluster_cidrs.as_ref().filter(|v| !v.is_empty());
    let (field, raw, items, indexed) = match (&flags.cluster_cidr, file_cidr, detect_local) {
        (Some(s), _, _) => ("--cluster-cidr", s.clone(), split(s), false),
        (None, Some(s), dl) => {
            if dl.is_some_and(|dl| *dl != split(s)) {
                warnings.push("detectLocal.clusterCIDRs: ignored because clusterCIDR is set".to_string());
            }
            ("clusterCIDR", s.to_string(), split(s), false)
        }
        (None, None, Some(list)) => ("detectLocal.clusterCIDRs", list.join(","), list.clone(), true),
        (None, None, None) => return Ok(Vec::new()),
    };
    if raw.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut cidrs = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if item.trim().is_empty() {
            return Err(invalid(item_field(field, i, indexed), &raw, "empty entry in CIDR list"));
        }
        cidrs.push(parse_cidr(item).map_err(|r| invalid(item_field(field, i, indexed), item, r))?);
    }
    let dual_stack_pair = cidrs.len() == 2 && matches!(cidrs[0], IpNet::V4(_)) != matches!(cidrs[1], IpNet::V4(_));
    if cidrs.len() > 2 || (cidrs.len() == 2 && !dual_stack_pair) {
        return Err(invalid(
            field,
            raw,
            "must be a single CIDR or a dual-stack pair (one IPv4, one IPv6), e.g. 10.244.0.0/16,fd00:10:244::/56",
        ));
    }
    Ok(cidrs)
}

/// NodePort addresses: CIDRs, or upstream's keywords. `primary` must stand alone (upstream rule);
/// `all` means every node address; `localhost` expands to the loopback ranges.
fn parse_nodeport_addresses(items: &[String], field: &str, indexed: bool) -> Result<NodePortAddresses, ConfigError> {
    let entries: Vec<(usize, &str)> = items
        .iter()
        .enumerate()
        .map(|(i, s)| (i, s.trim()))
        .filter(|(_, s)| !s.is_empty())
        .collect();
    if entries.is_empty() {
        return Ok(NodePortAddresses::All);
    }
    if let Some(&(i, s)) = entries.iter().find(|(_, s)| *s == "primary") {
        if entries.len() != 1 {
            return Err(invalid(
                item_field(field, i, indexed),
                s,
                "can't use both 'primary' and CIDRs",
            ));
        }
        return Ok(NodePortAddresses::Primary);
    }
    let has_all = entries.iter().any(|(_, s)| *s == "all");
    if has_all {
        // `All` never includes loopback, so "all,localhost" cannot be honoured faithfully.
        if let Some(&(i, s)) = entries.iter().find(|(_, s)| *s == "localhost") {
            return Err(invalid(
                item_field(field, i, indexed),
                s,
                "sliceproxy cannot combine 'all' with 'localhost'",
            ));
        }
    }
    let mut cidrs = Vec::new();
    for (i, s) in entries {
        match s {
            "all" => {}
            "localhost" => {
                cidrs.push(IpNet::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8).expect("valid prefix"));
                cidrs.push(IpNet::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128).expect("valid prefix"));
            }
            _ => cidrs.push(
                parse_cidr(s)
                    .map_err(|_| invalid(item_field(field, i, indexed), s, format!("{CIDR_HINT}, or 'primary'")))?,
            ),
        }
    }
    Ok(if has_all {
        NodePortAddresses::All
    } else {
        NodePortAddresses::Cidrs(cidrs)
    })
}

/// Parses a bind address in the forms upstream accepts after defaulting: `IP:port`,
/// `[IPv6]:port`, or a bare IP (`0.0.0.0`, `::`, also `[::]`) which gets `default_port`
/// (upstream's AppendPortIfNeeded). A missing IP (`:10256`) is rejected as upstream does. Port 0
/// is accepted (upstream requires 1-65535) so tests can ask for an ephemeral port.
fn parse_bind_address(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'))
        && let Ok(ip) = inner.parse::<Ipv6Addr>()
    {
        return Ok(SocketAddr::new(IpAddr::V6(ip), default_port));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let example = "e.g. 0.0.0.0:10256 or [::]:10256";
    match s.rsplit_once(':') {
        Some(("", _)) => Err(format!("missing IP ({example} to listen on all addresses)")),
        Some((host, port)) => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.parse::<IpAddr>().is_err() {
                Err(format!("host must be an IP address, not a name ({example})"))
            } else if port.parse::<u16>().is_err() {
                Err("port must be a number from 0 to 65535".to_string())
            } else {
                Err(format!("must be IP:port ({example}; IPv6 needs brackets)"))
            }
        }
        None => Err(format!("must be IP or IP:port ({example})")),
    }
}

/// A flag value of `""` disables the server. A file value of `""` means the default, because
/// upstream's defaulting treats it that way and kubeadm writes `healthzBindAddress: ""`.
fn resolve_bind_address(
    flag: &Option<String>,
    flag_name: &str,
    file: &Option<String>,
    file_field: &str,
    default: SocketAddr,
) -> Result<Option<SocketAddr>, ConfigError> {
    let port = default.port();
    match (flag, file) {
        (Some(s), _) if s.trim().is_empty() => Ok(None),
        (Some(s), _) => parse_bind_address(s, port)
            .map(Some)
            .map_err(|r| invalid(flag_name, s, r)),
        (None, Some(s)) if !s.trim().is_empty() => parse_bind_address(s, port)
            .map(Some)
            .map_err(|r| invalid(file_field, s, r)),
        (None, _) => Ok(Some(default)),
    }
}

/// Node name precedence: flag, file, `NODE_NAME`, machine hostname; each trimmed and lowercased
/// like upstream's `nodeutil.GetHostname`. An explicitly empty `--hostname-override` is an error,
/// as upstream ("empty hostname-override is invalid"), because it usually means an unexpanded
/// `$(NODE_NAME)`-style mistake in a manifest.
fn resolve_hostname(
    flag: Option<&str>,
    file: Option<&str>,
    env_node_name: Option<&str>,
    machine: &str,
) -> Result<String, ConfigError> {
    if let Some(raw) = flag {
        let name = raw.trim();
        if name.is_empty() {
            return Err(invalid("--hostname-override", raw, "must not be empty"));
        }
        return Ok(name.to_lowercase());
    }
    let name = [file, env_node_name, Some(machine)]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .ok_or_else(|| {
            invalid(
                "hostname",
                machine,
                "no node name: set --hostname-override, hostnameOverride or NODE_NAME",
            )
        })?;
    Ok(name.to_lowercase())
}

// ---------------------------------------------------------------------------------------------
// The config file.
//
// The YAML is read into a generic `serde_yaml::Value` and walked by hand rather than derived into
// structs: that is what lets unknown fields become warnings while still reporting a wrong type
// with the exact field path (`iptables.minSyncPeriod`) and the value as written.
// ---------------------------------------------------------------------------------------------

/// A duration read from the file, with its original text for messages.
type FileDuration = Option<(Duration, String)>;

/// The fields sliceproxy uses from a v1alpha1 file; None = absent or null.
#[derive(Debug, Default)]
struct FileConfig {
    kubeconfig: Option<String>,
    hostname_override: Option<String>,
    healthz_bind_address: Option<String>,
    metrics_bind_address: Option<String>,
    mode: Option<String>,
    cluster_cidr: Option<String>,
    detect_local_cluster_cidrs: Option<Vec<String>>,
    node_port_addresses: Option<Vec<String>>,
    iptables: FileModeSection,
    nftables: FileModeSection,
    ipvs: FileIpvsSection,
}

/// `iptables:` / `nftables:`.
#[derive(Debug, Default)]
struct FileModeSection {
    masquerade_all: Option<bool>,
    sync_period: FileDuration,
    min_sync_period: FileDuration,
}

/// `ipvs:`.
#[derive(Debug, Default)]
struct FileIpvsSection {
    sync_period: FileDuration,
    min_sync_period: FileDuration,
    scheduler: Option<String>,
    exclude_cidrs: Option<Vec<String>>,
    strict_arp: Option<bool>,
    tcp_timeout: FileDuration,
    tcp_fin_timeout: FileDuration,
    udp_timeout: FileDuration,
}

/// Top-level v1alpha1 fields sliceproxy accepts but does not act on.
const IGNORED_TOP_LEVEL: &[&str] = &[
    "featureGates",
    "logging",
    "bindAddress",
    "bindAddressHardFail",
    "enableProfiling",
    "showHiddenMetricsForVersion",
    "winkernel",
    "oomScoreAdj",
    "conntrack",
    "configSyncPeriod",
    "portRange",
    "windowsRunAsService",
];

fn read_file_config(text: &str, file: &str, warnings: &mut Vec<String>) -> Result<FileConfig, ConfigError> {
    let parse_err = |message: String| ConfigError::Parse {
        file: file.to_string(),
        message,
    };
    let root: Value = serde_yaml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
    let root = match root {
        Value::Mapping(m) => m,
        Value::Null => return Err(parse_err(format!("empty document; want a {KIND}"))),
        other => {
            return Err(parse_err(format!("want a {KIND} mapping, got {}", describe(&other))));
        }
    };

    for (key, want) in [("apiVersion", API_VERSION), ("kind", KIND)] {
        match root.get(key) {
            Some(Value::String(s)) if s == want => {}
            Some(Value::Null) | None => {
                return Err(invalid(key, "", format!("missing; want {want}")));
            }
            Some(v) => return Err(invalid(key, describe(v), format!("want {want}"))),
        }
    }

    let mut out = FileConfig::default();
    for (k, v) in &root {
        let Some(key) = k.as_str() else {
            warnings.push(unknown_field(&describe(k)));
            continue;
        };
        match key {
            "apiVersion" | "kind" => {}
            "hostnameOverride" => out.hostname_override = want_str(v, key)?,
            "healthzBindAddress" => out.healthz_bind_address = want_str(v, key)?,
            "metricsBindAddress" => out.metrics_bind_address = want_str(v, key)?,
            "mode" => out.mode = want_str(v, key)?,
            "clusterCIDR" => out.cluster_cidr = want_str(v, key)?,
            "nodePortAddresses" => out.node_port_addresses = want_str_list(v, key)?,
            "clientConnection" => {
                for_each_field(v, key, warnings, |sub, path, v, warnings| {
                    match sub {
                        "kubeconfig" => out.kubeconfig = want_str(v, path)?,
                        "acceptContentTypes" | "contentType" | "qps" | "burst" => ignored_field(v, path, warnings),
                        _ => warnings.push(unknown_field(path)),
                    }
                    Ok(())
                })?;
            }
            "iptables" | "nftables" => {
                let section = if key == "iptables" {
                    &mut out.iptables
                } else {
                    &mut out.nftables
                };
                let ignored: &[&str] = if key == "iptables" {
                    &["masqueradeBit", "localhostNodePorts", "snatNodeInternalIP"]
                } else {
                    &["masqueradeBit"]
                };
                for_each_field(v, key, warnings, |sub, path, v, warnings| {
                    match sub {
                        "masqueradeAll" => section.masquerade_all = want_bool(v, path)?,
                        "syncPeriod" => section.sync_period = want_duration(v, path)?,
                        "minSyncPeriod" => section.min_sync_period = want_duration(v, path)?,
                        _ if ignored.contains(&sub) => ignored_field(v, path, warnings),
                        _ => warnings.push(unknown_field(path)),
                    }
                    Ok(())
                })?;
            }
            "ipvs" => {
                let ipvs = &mut out.ipvs;
                for_each_field(v, key, warnings, |sub, path, v, warnings| {
                    match sub {
                        "syncPeriod" => ipvs.sync_period = want_duration(v, path)?,
                        "minSyncPeriod" => ipvs.min_sync_period = want_duration(v, path)?,
                        "scheduler" => ipvs.scheduler = want_str(v, path)?,
                        "excludeCIDRs" => ipvs.exclude_cidrs = want_str_list(v, path)?,
                        "strictARP" => ipvs.strict_arp = want_bool(v, path)?,
                        "tcpTimeout" => ipvs.tcp_timeout = want_duration(v, path)?,
                        "tcpFinTimeout" => ipvs.tcp_fin_timeout = want_duration(v, path)?,
                        "udpTimeout" => ipvs.udp_timeout = want_duration(v, path)?,
                        _ => warnings.push(unknown_field(path)),
                    }
                    Ok(())
                })?;
            }
            "detectLocalMode" => {
                // sliceproxy always detects local traffic by cluster CIDR, upstream's default.
                if let Some(m) = want_str(v, key)?
                    && !m.is_empty()
                    && m != "ClusterCIDR"
                {
                    warnings.push(format!(
                        "{key}: {m:?} ignored: not implemented by sliceproxy (it always uses ClusterCIDR)"
                    ));
                }
            }
            "detectLocal" => {
                for_each_field(v, key, warnings, |sub, path, v, warnings| {
                    match sub {
                        "clusterCIDRs" => out.detect_local_cluster_cidrs = want_str_list(v, path)?,
                        "bridgeInterface" | "interfaceNamePrefix" => ignored_field(v, path, warnings),
                        _ => warnings.push(unknown_field(path)),
                    }
                    Ok(())
                })?;
            }
            _ if IGNORED_TOP_LEVEL.contains(&key) => ignored_field(v, key, warnings),
            _ => warnings.push(unknown_field(key)),
        }
    }
    Ok(out)
}

/// Visits the fields of a nested section, calling `f(key, "section.key", value, warnings)`.
fn for_each_field<F>(v: &Value, path: &str, warnings: &mut Vec<String>, mut f: F) -> Result<(), ConfigError>
where
    F: FnMut(&str, &str, &Value, &mut Vec<String>) -> Result<(), ConfigError>,
{
    let map: &Mapping = match v {
        Value::Null => return Ok(()),
        Value::Mapping(m) => m,
        other => return Err(invalid(path, describe(other), "must be a mapping")),
    };
    for (k, v) in map {
        match k.as_str() {
            Some(key) => f(key, &format!("{path}.{key}"), v, warnings)?,
            None => warnings.push(unknown_field(&format!("{path}.{}", describe(k)))),
        }
    }
    Ok(())
}

fn unknown_field(path: &str) -> String {
    format!("{path}: unknown field, ignored (not part of {API_VERSION} {KIND})")
}

/// Warns about a known field sliceproxy does not implement, but only when it carries a value:
/// kubeadm writes every field with zero values, and warning about those would bury real ones.
fn ignored_field(v: &Value, path: &str, warnings: &mut Vec<String>) {
    if !is_zero_value(v) {
        warnings.push(format!("{path}: ignored: not implemented by sliceproxy"));
    }
}

/// Whether a value is Go's zero value as kubeadm would write it (null, "", "0s", 0, false, empty
/// collections, or a mapping of only such values).
fn is_zero_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || parse_go_duration(s) == Ok(Duration::ZERO),
        Value::Sequence(s) => s.is_empty(),
        Value::Mapping(m) => m.values().all(is_zero_value),
        Value::Tagged(t) => is_zero_value(&t.value),
    }
}

/// A value as the operator wrote it, for error messages.
fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => serde_json::to_string(other).unwrap_or_else(|_| format!("{other:?}")),
    }
}

fn want_str(v: &Value, path: &str) -> Result<Option<String>, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        other => Err(invalid(path, describe(other), "must be a string")),
    }
}

fn want_bool(v: &Value, path: &str) -> Result<Option<bool>, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        other => Err(invalid(path, describe(other), "must be true or false")),
    }
}

/// Durations are strings in Go syntax (metav1.Duration); a bare number is a type error, as it is
/// for upstream's JSON decoding.
fn want_duration(v: &Value, path: &str) -> Result<FileDuration, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => parse_go_duration(s.trim())
            .map(|d| Some((d, s.clone())))
            .map_err(|reason| invalid(path, s, reason)),
        other => Err(invalid(
            path,
            describe(other),
            "must be a duration string (e.g. \"30s\", \"1m0s\")",
        )),
    }
}

fn want_str_list(v: &Value, path: &str) -> Result<Option<Vec<String>>, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(invalid(format!("{path}[{i}]"), describe(other), "must be a string")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        other => Err(invalid(path, describe(other), "must be a list of strings")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Stand-in for the binary's CLI: ProxyFlags must work when flattened.
    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        flags: ProxyFlags,
    }

    fn flags(args: &[&str]) -> ProxyFlags {
        Cli::try_parse_from(std::iter::once("sliceproxy").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("parsing {args:?}: {e}"))
            .flags
    }

    fn resolve(f: &ProxyFlags, file: Option<&str>) -> (Config, Vec<String>) {
        Config::resolve(f, file, None, "machine-host").unwrap_or_else(|e| panic!("{e}"))
    }

    fn resolve_err(args: &[&str], file: Option<&str>) -> ConfigError {
        match Config::resolve(&flags(args), file, None, "machine-host") {
            Ok((c, _)) => panic!("expected an error for {args:?} / {file:?}, got {c:?}"),
            Err(e) => e,
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn sock(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Wraps fields in the required header.
    fn doc(body: &str) -> String {
        format!("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n{body}")
    }

    const REALISTIC: &str = r#"
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
configSyncPeriod: 0s
conntrack:
  maxPerCore: 32768
  min: 131072
  tcpCloseWaitTimeout: 1h0m0s
  tcpEstablishedTimeout: 24h0m0s
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
featureGates:
  SomeGate: true
healthzBindAddress: 0.0.0.0:10256
hostnameOverride: " Node-A.Example "
iptables:
  localhostNodePorts: null
  masqueradeAll: true
  masqueradeBit: null
  minSyncPeriod: 2s
  syncPeriod: 1m0s
ipvs:
  excludeCIDRs:
  - 10.0.0.0/8
  minSyncPeriod: 0s
  scheduler: wrr
  strictARP: true
  syncPeriod: 0s
  tcpFinTimeout: 5s
  tcpTimeout: 15m
  udpTimeout: 300ms
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
  verbosity: 2
metricsBindAddress: "[::]:10249"
mode: iptables
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses:
- 192.168.0.0/16
- fd00::/8
oomScoreAdj: -999
portRange: ""
showHiddenMetricsForVersion: ""
someFutureField: 1
winkernel:
  enableDSR: false
  networkName: ""
"#;

    #[test]
    fn defaults() {
        let (c, warnings) = Config::resolve(&ProxyFlags::default(), None, None, " Machine-Host\n").unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            c,
            Config {
                kubeconfig: None,
                master: None,
                hostname: "machine-host".to_string(),
                mode: ProxyMode::Iptables,
                cluster_cidrs: vec![],
                nodeport_addresses: NodePortAddresses::All,
                masquerade_all: false,
                min_sync_period: secs(1),
                sync_period: secs(30),
                healthz_bind_address: Some(sock("0.0.0.0:10256")),
                metrics_bind_address: Some(sock("127.0.0.1:10249")),
                ipvs: IpvsConfig {
                    scheduler: String::new(),
                    sync_period: secs(30),
                    min_sync_period: secs(1),
                    strict_arp: false,
                    tcp_timeout: Duration::ZERO,
                    tcp_fin_timeout: Duration::ZERO,
                    udp_timeout: Duration::ZERO,
                    exclude_cidrs: vec![],
                },
                cleanup: false,
                config_file: None,
            }
        );
        assert_eq!(c.ipvs.effective_scheduler(), "rr");
        assert_eq!(ProxyFlags::default().masquerade_all, None);
    }

    #[test]
    fn every_flag_parsed() {
        // Catches clap misconfiguration (duplicate names, bad num_args) at test time.
        <Cli as clap::CommandFactory>::command().debug_assert();
        let f = flags(&[
            "--config=/etc/kp.yaml",
            "--kubeconfig",
            "/etc/kubeconfig",
            "--master",
            "https://10.0.0.1:6443",
            "--hostname-override",
            "Worker-1",
            "--proxy-mode",
            "ipvs",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/56",
            "--nodeport-addresses",
            "10.0.0.0/8,192.168.1.0/24",
            "--nodeport-addresses",
            "fd00::/8",
            "--masquerade-all",
            "--min-sync-period",
            "2s",
            "--sync-period",
            "1m",
            "--iptables-min-sync-period",
            "3s",
            "--iptables-sync-period",
            "45s",
            "--healthz-bind-address",
            "127.0.0.1:1234",
            "--metrics-bind-address",
            "[::1]:9999",
            "--ipvs-scheduler",
            "lc",
            "--ipvs-min-sync-period",
            "500ms",
            "--ipvs-sync-period",
            "20s",
            "--ipvs-strict-arp",
            "--ipvs-tcp-timeout",
            "900s",
            "--ipvs-tcpfin-timeout",
            "2m",
            "--ipvs-udp-timeout",
            "1.5s",
            "--ipvs-exclude-cidrs",
            "172.16.0.0/12,fd01::/16",
            "--cleanup",
        ]);
        assert_eq!(f.config, Some(PathBuf::from("/etc/kp.yaml")));
        assert_eq!(f.kubeconfig, Some(PathBuf::from("/etc/kubeconfig")));
        assert_eq!(f.master.as_deref(), Some("https://10.0.0.1:6443"));
        assert_eq!(f.hostname_override.as_deref(), Some("Worker-1"));
        assert_eq!(f.proxy_mode.as_deref(), Some("ipvs"));
        assert_eq!(f.cluster_cidr.as_deref(), Some("10.244.0.0/16,fd00:10:244::/56"));
        assert_eq!(
            f.nodeport_addresses,
            Some(vec!["10.0.0.0/8".into(), "192.168.1.0/24".into(), "fd00::/8".into()])
        );
        assert_eq!(f.masquerade_all, Some(true));
        assert_eq!(f.min_sync_period.as_deref(), Some("2s"));
        assert_eq!(f.sync_period.as_deref(), Some("1m"));
        assert_eq!(f.iptables_min_sync_period.as_deref(), Some("3s"));
        assert_eq!(f.iptables_sync_period.as_deref(), Some("45s"));
        assert_eq!(f.healthz_bind_address.as_deref(), Some("127.0.0.1:1234"));
        assert_eq!(f.metrics_bind_address.as_deref(), Some("[::1]:9999"));
        assert_eq!(f.ipvs_scheduler.as_deref(), Some("lc"));
        assert_eq!(f.ipvs_min_sync_period.as_deref(), Some("500ms"));
        assert_eq!(f.ipvs_sync_period.as_deref(), Some("20s"));
        assert_eq!(f.ipvs_strict_arp, Some(true));
        assert_eq!(f.ipvs_tcp_timeout.as_deref(), Some("900s"));
        assert_eq!(f.ipvs_tcpfin_timeout.as_deref(), Some("2m"));
        assert_eq!(f.ipvs_udp_timeout.as_deref(), Some("1.5s"));
        assert_eq!(
            f.ipvs_exclude_cidrs,
            Some(vec!["172.16.0.0/12".into(), "fd01::/16".into()])
        );
        assert_eq!(f.cleanup, Some(true));

        // No file text given: resolve uses flags only; the path is still reported.
        let (c, warnings) = resolve(&f, None);
        assert_eq!(c.config_file, Some(PathBuf::from("/etc/kp.yaml")));
        assert_eq!(c.kubeconfig, Some(PathBuf::from("/etc/kubeconfig")));
        assert_eq!(c.master.as_deref(), Some("https://10.0.0.1:6443"));
        assert_eq!(c.hostname, "worker-1");
        assert_eq!(c.mode, ProxyMode::Ipvs);
        assert_eq!(c.cluster_cidrs, vec![net("10.244.0.0/16"), net("fd00:10:244::/56")]);
        assert_eq!(
            c.nodeport_addresses,
            NodePortAddresses::Cidrs(vec![net("10.0.0.0/8"), net("192.168.1.0/24"), net("fd00::/8")])
        );
        assert!(c.masquerade_all);
        // ipvs mode: the --ipvs-* periods win over the generic ones; --iptables-* are ignored.
        assert_eq!(c.sync_period, secs(20));
        assert_eq!(c.min_sync_period, Duration::from_millis(500));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with("--iptables-sync-period: ignored in ipvs mode"));
        assert_eq!(c.healthz_bind_address, Some(sock("127.0.0.1:1234")));
        assert_eq!(c.metrics_bind_address, Some(sock("[::1]:9999")));
        assert_eq!(
            c.ipvs,
            IpvsConfig {
                scheduler: "lc".into(),
                sync_period: secs(20),
                min_sync_period: Duration::from_millis(500),
                strict_arp: true,
                tcp_timeout: secs(900),
                tcp_fin_timeout: secs(120),
                udp_timeout: Duration::from_millis(1500),
                exclude_cidrs: vec![net("172.16.0.0/12"), net("fd01::/16")],
            }
        );
        assert!(c.cleanup);

        // Go-style booleans, and a bare bool flag followed by another flag.
        let f = flags(&["--masquerade-all=false", "--cleanup=0", "--ipvs-strict-arp=True"]);
        assert_eq!(
            (f.masquerade_all, f.cleanup, f.ipvs_strict_arp),
            (Some(false), Some(false), Some(true))
        );
        let f = flags(&["--masquerade-all", "--proxy-mode=nftables"]);
        assert_eq!(f.masquerade_all, Some(true));
        assert_eq!(f.proxy_mode.as_deref(), Some("nftables"));
        assert!(Cli::try_parse_from(["x", "--masquerade-all=maybe"]).is_err());
        // Like a Go bool flag, a separate word is not taken as the flag's value.
        assert!(Cli::try_parse_from(["x", "--masquerade-all", "false"]).is_err());

        // In iptables mode the generic and iptables-named flags both apply; the specific one wins.
        let (c, w) = resolve(
            &flags(&["--sync-period=1m", "--iptables-sync-period=45s", "--min-sync-period=0"]),
            None,
        );
        assert_eq!((c.sync_period, c.min_sync_period), (secs(45), Duration::ZERO));
        assert!(w.is_empty());
        let (c, _) = resolve(&flags(&["--sync-period=1m"]), None);
        assert_eq!(c.sync_period, secs(60));
    }

    #[test]
    fn file_parsed() {
        let f = flags(&["--config", "/etc/kube-proxy/config.conf"]);
        let (c, warnings) = Config::resolve(&f, Some(REALISTIC), Some("env-node"), "machine").unwrap();
        assert_eq!(c.kubeconfig, Some(PathBuf::from("/var/lib/kube-proxy/kubeconfig.conf")));
        assert_eq!(c.hostname, "node-a.example");
        assert_eq!(c.mode, ProxyMode::Iptables);
        assert_eq!(c.cluster_cidrs, vec![net("10.244.0.0/16"), net("fd00:10:244::/56")]);
        assert_eq!(
            c.nodeport_addresses,
            NodePortAddresses::Cidrs(vec![net("192.168.0.0/16"), net("fd00::/8")])
        );
        assert!(c.masquerade_all);
        assert_eq!(c.sync_period, secs(60));
        assert_eq!(c.min_sync_period, secs(2));
        assert_eq!(c.healthz_bind_address, Some(sock("0.0.0.0:10256")));
        assert_eq!(c.metrics_bind_address, Some(sock("[::]:10249")));
        assert_eq!(c.ipvs.scheduler, "wrr");
        assert!(c.ipvs.strict_arp);
        // Zero periods in a section are upstream's "unset", so the defaults apply.
        assert_eq!((c.ipvs.sync_period, c.ipvs.min_sync_period), (secs(30), secs(1)));
        assert_eq!(c.ipvs.tcp_timeout, secs(900));
        assert_eq!(c.ipvs.tcp_fin_timeout, secs(5));
        assert_eq!(c.ipvs.udp_timeout, Duration::from_millis(300));
        assert_eq!(c.ipvs.exclude_cidrs, vec![net("10.0.0.0/8")]);
        assert_eq!(c.config_file, Some(PathBuf::from("/etc/kube-proxy/config.conf")));

        let mut sorted = warnings.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            vec![
                "bindAddress: ignored: not implemented by sliceproxy".to_string(),
                "conntrack: ignored: not implemented by sliceproxy".to_string(),
                "featureGates: ignored: not implemented by sliceproxy".to_string(),
                "logging: ignored: not implemented by sliceproxy".to_string(),
                "oomScoreAdj: ignored: not implemented by sliceproxy".to_string(),
                format!("someFutureField: unknown field, ignored (not part of {API_VERSION} {KIND})"),
            ],
            "zero-valued ignored fields (winkernel, portRange, clientConnection.qps, ...) must not warn"
        );
    }

    #[test]
    fn file_uses_the_section_of_the_selected_mode() {
        let body = "iptables: {syncPeriod: 10s, minSyncPeriod: 1s, masqueradeAll: false}\n\
                    nftables: {syncPeriod: 20s, minSyncPeriod: 2s, masqueradeAll: true}\n\
                    ipvs: {syncPeriod: 40s, minSyncPeriod: 4s}\n";
        let (c, _) = resolve(&ProxyFlags::default(), Some(&doc(&format!("mode: nftables\n{body}"))));
        assert_eq!(
            (c.mode, c.sync_period, c.min_sync_period, c.masquerade_all),
            (ProxyMode::Nftables, secs(20), secs(2), true)
        );
        let (c, _) = resolve(&ProxyFlags::default(), Some(&doc(&format!("mode: ipvs\n{body}"))));
        // ipvs mode reads iptables.masqueradeAll, like upstream's conversion.
        assert_eq!(
            (c.mode, c.sync_period, c.min_sync_period, c.masquerade_all),
            (ProxyMode::Ipvs, secs(40), secs(4), false)
        );
        assert_eq!((c.ipvs.sync_period, c.ipvs.min_sync_period), (secs(40), secs(4)));
        let (c, _) = resolve(&ProxyFlags::default(), Some(&doc(&format!("mode: \"\"\n{body}"))));
        assert_eq!(
            (c.mode, c.sync_period, c.min_sync_period),
            (ProxyMode::Iptables, secs(10), secs(1))
        );
        // Not the active mode: the ipvs section is still carried for later.
        assert_eq!((c.ipvs.sync_period, c.ipvs.min_sync_period), (secs(40), secs(4)));
        // detectLocal.clusterCIDRs is accepted when clusterCIDR is absent.
        let (c, _) = resolve(
            &ProxyFlags::default(),
            Some(&doc("detectLocal:\n  clusterCIDRs: [10.1.0.0/16]\n")),
        );
        assert_eq!(c.cluster_cidrs, vec![net("10.1.0.0/16")]);
    }

    #[test]
    fn flags_override_file_field_by_field() {
        let file = doc(
            "mode: nftables\nclusterCIDR: 10.244.0.0/16\nnodePortAddresses: [primary]\n\
             healthzBindAddress: 0.0.0.0:1111\nmetricsBindAddress: 127.0.0.1:2222\n\
             hostnameOverride: file-host\nclientConnection: {kubeconfig: /file/kubeconfig}\n\
             nftables: {masqueradeAll: true, syncPeriod: 50s, minSyncPeriod: 5s}\n\
             ipvs: {scheduler: sh, strictARP: true, tcpTimeout: 1s, excludeCIDRs: [10.9.0.0/16]}\n",
        );
        // Only the file.
        let (c, _) = resolve(&ProxyFlags::default(), Some(&file));
        assert_eq!(c.mode, ProxyMode::Nftables);
        assert_eq!(c.cluster_cidrs, vec![net("10.244.0.0/16")]);
        assert_eq!(c.nodeport_addresses, NodePortAddresses::Primary);
        assert_eq!(c.healthz_bind_address, Some(sock("0.0.0.0:1111")));
        assert_eq!(c.metrics_bind_address, Some(sock("127.0.0.1:2222")));
        assert_eq!(c.hostname, "file-host");
        assert_eq!(c.kubeconfig, Some(PathBuf::from("/file/kubeconfig")));
        assert!(c.masquerade_all);
        assert_eq!((c.sync_period, c.min_sync_period), (secs(50), secs(5)));
        assert_eq!(c.ipvs.scheduler, "sh");
        assert!(c.ipvs.strict_arp);

        // Each flag replaces exactly its field.
        let f = flags(&[
            "--cluster-cidr=10.1.0.0/16",
            "--masquerade-all=false",
            "--sync-period=40s",
            "--metrics-bind-address=",
            "--ipvs-strict-arp=false",
        ]);
        let (c, _) = resolve(&f, Some(&file));
        assert_eq!(c.cluster_cidrs, vec![net("10.1.0.0/16")]);
        assert!(!c.masquerade_all, "--masquerade-all=false must beat the file's true");
        assert_eq!(c.sync_period, secs(40));
        assert_eq!(c.min_sync_period, secs(5), "not given as a flag: still from the file");
        assert_eq!(c.metrics_bind_address, None, "an empty flag disables the server");
        assert!(!c.ipvs.strict_arp);
        // Untouched fields still come from the file.
        assert_eq!(c.mode, ProxyMode::Nftables);
        assert_eq!(c.nodeport_addresses, NodePortAddresses::Primary);
        assert_eq!(c.healthz_bind_address, Some(sock("0.0.0.0:1111")));
        assert_eq!(c.kubeconfig, Some(PathBuf::from("/file/kubeconfig")));
        assert_eq!(c.ipvs.scheduler, "sh");
        assert_eq!(c.ipvs.tcp_timeout, secs(1));
        assert_eq!(c.ipvs.exclude_cidrs, vec![net("10.9.0.0/16")]);

        // The mode flag switches which file section is read.
        let (c, _) = resolve(
            &flags(&[
                "--proxy-mode=iptables",
                "--kubeconfig=/flag/kc",
                "--nodeport-addresses=10.0.0.0/8",
            ]),
            Some(&file),
        );
        assert_eq!(c.mode, ProxyMode::Iptables);
        assert_eq!((c.sync_period, c.min_sync_period), (secs(30), secs(1)));
        assert!(!c.masquerade_all, "iptables.masqueradeAll is unset");
        assert_eq!(c.kubeconfig, Some(PathBuf::from("/flag/kc")));
        assert_eq!(c.nodeport_addresses, NodePortAddresses::Cidrs(vec![net("10.0.0.0/8")]));
    }

    #[test]
    fn hostname_precedence() {
        let file = doc("hostnameOverride: File-Host\n");
        let run = |args: &[&str], file: Option<&str>, env: Option<&str>, machine: &str| {
            Config::resolve(&flags(args), file, env, machine).map(|(c, _)| c.hostname)
        };
        assert_eq!(
            run(&["--hostname-override= Flag-Host "], Some(&file), Some("env"), "m").unwrap(),
            "flag-host"
        );
        assert_eq!(run(&[], Some(&file), Some("env"), "m").unwrap(), "file-host");
        assert_eq!(
            run(&[], Some(&doc("hostnameOverride: \"\"\n")), Some(" Env-Host "), "m").unwrap(),
            "env-host"
        );
        assert_eq!(run(&[], None, Some("Env-Host"), "Machine").unwrap(), "env-host");
        assert_eq!(run(&[], None, Some("  "), "Machine.Local").unwrap(), "machine.local");
        assert_eq!(run(&[], None, None, "Machine").unwrap(), "machine");

        let err = run(&["--hostname-override", "  "], Some(&file), None, "m").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value \"  \" for --hostname-override: must not be empty"
        );
        let err = run(&[], None, None, " ").unwrap_err();
        assert!(
            matches!(&err, ConfigError::InvalidValue { field, .. } if field == "hostname"),
            "{err}"
        );
    }

    #[test]
    fn validation_errors_name_field_and_value() {
        let cases: &[(&[&str], Option<&str>, &str)] = &[
            (
                &["--sync-period", "abc"],
                None,
                r#"invalid value "abc" for --sync-period: not a duration (want e.g. 30s, 1m0s)"#,
            ),
            (
                &["--sync-period=0"],
                None,
                r#"invalid value "0" for --sync-period: must be greater than 0"#,
            ),
            (
                &["--min-sync-period=-1s"],
                None,
                r#"invalid value "-1s" for --min-sync-period: must not be negative"#,
            ),
            (
                &["--min-sync-period=1m"],
                None,
                r#"invalid value "1m" for --min-sync-period: must be less than or equal to the sync period (30s, the default)"#,
            ),
            (
                &["--sync-period=10s", "--min-sync-period=20s"],
                None,
                r#"invalid value "10s" for --sync-period: must be greater than or equal to the minimum sync period (20s from --min-sync-period)"#,
            ),
            (
                &["--ipvs-sync-period=5"],
                None,
                r#"invalid value "5" for --ipvs-sync-period: not a duration (want e.g. 30s, 1m0s): missing unit"#,
            ),
            (
                &["--ipvs-tcp-timeout=-5s"],
                None,
                r#"invalid value "-5s" for --ipvs-tcp-timeout: must not be negative"#,
            ),
            (
                &["--proxy-mode=userspace"],
                None,
                r#"invalid value "userspace" for --proxy-mode: must be iptables, nftables or ipvs (blank means iptables)"#,
            ),
            (
                &["--ipvs-scheduler=fifo"],
                None,
                r#"invalid value "fifo" for --ipvs-scheduler: unknown IPVS scheduler"#,
            ),
            (
                &["--cluster-cidr=10.0.0.0/8,bogus"],
                None,
                r#"invalid value "bogus" for --cluster-cidr: not a CIDR"#,
            ),
            (
                &["--cluster-cidr=10.0.0.0/8,11.0.0.0/8"],
                None,
                r#"invalid value "10.0.0.0/8,11.0.0.0/8" for --cluster-cidr: must be a single CIDR or a dual-stack pair"#,
            ),
            (
                &["--nodeport-addresses=primary,10.0.0.0/8"],
                None,
                r#"invalid value "primary" for --nodeport-addresses: can't use both 'primary' and CIDRs"#,
            ),
            (
                &["--nodeport-addresses=10.0.0.0/8,eth0"],
                None,
                r#"invalid value "eth0" for --nodeport-addresses: not a CIDR"#,
            ),
            (
                &["--ipvs-exclude-cidrs=1.2.3.4"],
                None,
                r#"invalid value "1.2.3.4" for --ipvs-exclude-cidrs: not a CIDR"#,
            ),
            (
                &["--healthz-bind-address=1.2.3.4:99999"],
                None,
                r#"invalid value "1.2.3.4:99999" for --healthz-bind-address: port must be a number from 0 to 65535"#,
            ),
            (
                &["--healthz-bind-address=:10256"],
                None,
                r#"invalid value ":10256" for --healthz-bind-address: missing IP"#,
            ),
            (
                &["--metrics-bind-address=localhost:10249"],
                None,
                r#"invalid value "localhost:10249" for --metrics-bind-address: host must be an IP address"#,
            ),
            (
                &[],
                Some("iptables: {minSyncPeriod: 1x}"),
                r#"invalid value "1x" for iptables.minSyncPeriod: not a duration (want e.g. 30s, 1m0s): unknown unit "x""#,
            ),
            (
                &[],
                Some("iptables: {syncPeriod: 30}"),
                r#"invalid value "30" for iptables.syncPeriod: must be a duration string"#,
            ),
            (
                &[],
                Some("iptables: {syncPeriod: 10s, minSyncPeriod: 11s}"),
                r#"invalid value "10s" for iptables.syncPeriod: must be greater than or equal to the minimum sync period (11s from iptables.minSyncPeriod)"#,
            ),
            (
                &[],
                Some("nftables: {minSyncPeriod: -3s}"),
                r#"invalid value "-3s" for nftables.minSyncPeriod: must not be negative"#,
            ),
            (
                &[],
                Some("iptables: {masqueradeAll: \"yes\"}"),
                r#"invalid value "yes" for iptables.masqueradeAll: must be true or false"#,
            ),
            (
                &[],
                Some("iptables: 5"),
                r#"invalid value "5" for iptables: must be a mapping"#,
            ),
            (
                &[],
                Some("mode: kernelspace"),
                r#"invalid value "kernelspace" for mode: must be iptables"#,
            ),
            (
                &[],
                Some("ipvs: {scheduler: fifo}"),
                r#"invalid value "fifo" for ipvs.scheduler: unknown IPVS scheduler"#,
            ),
            (
                &[],
                Some("ipvs: {excludeCIDRs: [10.0.0.0/8, 300.0.0.0/8]}"),
                r#"invalid value "300.0.0.0/8" for ipvs.excludeCIDRs[1]: not a CIDR"#,
            ),
            (
                &[],
                Some("clusterCIDR: 10.0.0.0/33"),
                r#"invalid value "10.0.0.0/33" for clusterCIDR: not a CIDR"#,
            ),
            (
                &[],
                Some("nodePortAddresses: [10.0.0.0/8, nope]"),
                r#"invalid value "nope" for nodePortAddresses[1]: not a CIDR"#,
            ),
            (
                &[],
                Some("nodePortAddresses: 10.0.0.0/8"),
                r#"invalid value "10.0.0.0/8" for nodePortAddresses: must be a list of strings"#,
            ),
            (
                &[],
                Some("healthzBindAddress: 0.0.0.0:http"),
                r#"invalid value "0.0.0.0:http" for healthzBindAddress: port must be a number"#,
            ),
            (
                &[],
                Some("hostnameOverride: 12345"),
                r#"invalid value "12345" for hostnameOverride: must be a string"#,
            ),
        ];
        for (args, body, want) in cases {
            let text = body.map(doc);
            let err = resolve_err(args, text.as_deref());
            let msg = err.to_string();
            assert!(
                msg.starts_with(want),
                "{args:?} {body:?}:\n got  {msg}\n want {want}..."
            );
            assert!(matches!(err, ConfigError::InvalidValue { .. }), "{msg}");
        }
    }

    #[test]
    fn wrong_api_version_and_kind() {
        let e = resolve_err(
            &[],
            Some("apiVersion: kubeproxy.config.k8s.io/v1alpha2\nkind: KubeProxyConfiguration\n"),
        );
        assert_eq!(
            e.to_string(),
            "invalid value \"kubeproxy.config.k8s.io/v1alpha2\" for apiVersion: want kubeproxy.config.k8s.io/v1alpha1"
        );
        let e = resolve_err(
            &[],
            Some("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n"),
        );
        assert_eq!(
            e.to_string(),
            "invalid value \"KubeletConfiguration\" for kind: want KubeProxyConfiguration"
        );
        let e = resolve_err(&[], Some("kind: KubeProxyConfiguration\nmode: ipvs\n"));
        assert_eq!(
            e.to_string(),
            "invalid value \"\" for apiVersion: missing; want kubeproxy.config.k8s.io/v1alpha1"
        );
        let e = resolve_err(&[], Some("apiVersion: kubeproxy.config.k8s.io/v1alpha1\n"));
        assert!(
            matches!(&e, ConfigError::InvalidValue { field, .. } if field == "kind"),
            "{e}"
        );

        // Not a mapping at all, or not YAML: a parse error naming the file.
        let e = resolve_err(&["--config=/etc/kp.yaml"], Some("- a\n- b\n"));
        assert!(
            matches!(&e, ConfigError::Parse { file, .. } if file == "/etc/kp.yaml"),
            "{e}"
        );
        let e = resolve_err(&[], Some("mode: [unclosed\n"));
        assert!(e.to_string().starts_with("parsing config file <config>: "), "{e}");
        let e = resolve_err(&[], Some(""));
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
    }

    #[test]
    fn go_duration_parse_and_format() {
        let ok: &[(&str, Duration, &str)] = &[
            ("0", Duration::ZERO, "0s"),
            ("0s", Duration::ZERO, "0s"),
            ("-0", Duration::ZERO, "0s"),
            ("1s", secs(1), "1s"),
            ("+5s", secs(5), "5s"),
            ("1.5s", Duration::from_millis(1500), "1.5s"),
            (".5s", Duration::from_millis(500), "500ms"),
            ("1.s", secs(1), "1s"),
            ("300ms", Duration::from_millis(300), "300ms"),
            ("1m0s", secs(60), "1m0s"),
            ("90s", secs(90), "1m30s"),
            ("1h", secs(3600), "1h0m0s"),
            ("1h2m3.5s", Duration::from_millis(3_723_500), "1h2m3.5s"),
            ("2h45m", secs(9900), "2h45m0s"),
            ("1.0005ms", Duration::from_nanos(1_000_500), "1.0005ms"),
            ("1500ns", Duration::from_nanos(1500), "1.5\u{b5}s"),
            ("3us", Duration::from_micros(3), "3\u{b5}s"),
            ("3\u{b5}s", Duration::from_micros(3), "3\u{b5}s"),
            ("3\u{3bc}s", Duration::from_micros(3), "3\u{b5}s"),
            ("7ns", Duration::from_nanos(7), "7ns"),
            ("1m30.25s", Duration::from_millis(90_250), "1m30.25s"),
            ("2562047h", secs(2_562_047 * 3600), "2562047h0m0s"),
        ];
        for (text, want, formatted) in ok {
            let got = parse_go_duration(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(got, *want, "{text}");
            assert_eq!(format_go_duration(got), *formatted, "{text}");
            // The formatted form parses back to the same value.
            assert_eq!(parse_go_duration(formatted).unwrap(), *want, "{formatted}");
        }
        for bad in [
            "",
            "5",
            "-1s",
            "1x",
            "abc",
            "s",
            ".",
            ".s",
            "1s2",
            "--1s",
            "1 s",
            " 1s",
            "9999999999h",
            "-",
            "+",
        ] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} must be rejected");
        }
        assert_eq!(parse_go_duration("abc").unwrap_err(), DURATION_HINT);
        assert_eq!(parse_go_duration("-1s").unwrap_err(), "must not be negative");
        assert!(parse_go_duration("5").unwrap_err().ends_with("missing unit"));
        assert_eq!(format_go_duration(Duration::from_nanos(1)), "1ns");
        assert_eq!(format_go_duration(Duration::from_millis(999)), "999ms");
    }

    #[test]
    fn nodeport_addresses_and_bind_address_forms() {
        let np = |args: &[&str]| resolve(&flags(args), None).0.nodeport_addresses;
        assert_eq!(np(&["--nodeport-addresses=primary"]), NodePortAddresses::Primary);
        assert_eq!(np(&["--nodeport-addresses="]), NodePortAddresses::All);
        assert_eq!(np(&["--nodeport-addresses=all,10.0.0.0/8"]), NodePortAddresses::All);
        assert_eq!(
            np(&["--nodeport-addresses=localhost"]),
            NodePortAddresses::Cidrs(vec![net("127.0.0.0/8"), net("::1/128")])
        );
        // Host bits are masked off, as Go's ParseCIDR does.
        assert_eq!(
            np(&["--nodeport-addresses=10.1.2.3/8"]),
            NodePortAddresses::Cidrs(vec![net("10.0.0.0/8")])
        );

        let hz = |args: &[&str], file: Option<&str>| resolve(&flags(args), file).0.healthz_bind_address;
        assert_eq!(
            hz(&["--healthz-bind-address=[::]:10256"], None),
            Some(sock("[::]:10256"))
        );
        assert_eq!(hz(&["--healthz-bind-address=::"], None), Some(sock("[::]:10256")));
        assert_eq!(hz(&["--healthz-bind-address=[::1]"], None), Some(sock("[::1]:10256")));
        assert_eq!(
            hz(&["--healthz-bind-address=10.0.0.1"], None),
            Some(sock("10.0.0.1:10256"))
        );
        assert_eq!(
            hz(&["--healthz-bind-address=127.0.0.1:0"], None),
            Some(sock("127.0.0.1:0"))
        );
        assert_eq!(hz(&["--healthz-bind-address", ""], None), None);
        // In the file, "" is upstream's "use the default" (kubeadm writes it).
        assert_eq!(
            hz(&[], Some(&doc("healthzBindAddress: \"\"\n"))),
            Some(sock("0.0.0.0:10256"))
        );
        let (c, _) = resolve(&flags(&["--metrics-bind-address=0.0.0.0"]), None);
        assert_eq!(c.metrics_bind_address, Some(sock("0.0.0.0:10249")));
    }

    #[test]
    fn load_reads_the_config_file() {
        let dir = std::env::temp_dir().join(format!("sliceproxy-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kube-proxy.yaml");
        std::fs::write(&path, doc("mode: ipvs\nipvs: {syncPeriod: 15s}\n")).unwrap();
        let f = flags(&["--config", path.to_str().unwrap(), "--hostname-override=n1"]);
        let (c, warnings) = Config::load(&f).unwrap();
        assert_eq!(
            (c.mode, c.sync_period, c.hostname.as_str()),
            (ProxyMode::Ipvs, secs(15), "n1")
        );
        assert_eq!(c.config_file, Some(path.clone()));
        assert!(warnings.is_empty(), "{warnings:?}");

        let missing = dir.join("missing.yaml");
        let f = flags(&["--config", missing.to_str().unwrap(), "--hostname-override=n1"]);
        let err = Config::load(&f).unwrap_err();
        assert!(
            matches!(&err, ConfigError::ReadFile { path, .. } if *path == missing),
            "{err}"
        );
        assert!(err.to_string().contains("missing.yaml"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn proxy_mode_display_and_from_str() {
        for m in [ProxyMode::Iptables, ProxyMode::Nftables, ProxyMode::Ipvs] {
            assert_eq!(m.to_string().parse::<ProxyMode>().unwrap(), m);
        }
        assert_eq!(ProxyMode::Nftables.to_string(), "nftables");
        assert!("".parse::<ProxyMode>().is_err());
        assert!("IPVS".parse::<ProxyMode>().is_err());
        assert_eq!(serde_json::to_string(&ProxyMode::Ipvs).unwrap(), "\"ipvs\"");
    }
}
