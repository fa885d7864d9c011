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
//!
//! By concern: `flags` (the command line), `file` (the v1alpha1 file), `go` (Go's bool and
//! duration syntax), `values` (one value each, errors naming the field), this module (merging and
//! resolution into [`Config`]), `tests`. The node-port address selection is
//! [`crate::model::NodePortAddresses`].

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde_yaml::{Mapping, Value};

use crate::model::{NodePortAddresses, ProxyMode};

mod file;
mod flags;
mod go;
#[cfg(test)]
mod tests;
mod values;

use file::*;
pub use flags::ProxyFlags;
use go::*;
pub use go::{format_go_duration, parse_go_duration};
use values::*;

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

/// How the nftables mode picks an endpoint for a new connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NftablesScheduler {
    /// Uniformly at random, as kube-proxy does (`random`, the default).
    #[default]
    Random,
    /// Consistent hashing over a Maglev table (`maglev`): removing one of N
    /// endpoints moves about 1/N of new flows instead of most of them.
    Maglev,
}

impl NftablesScheduler {
    fn parse(s: &str, field: &str) -> Result<NftablesScheduler, ConfigError> {
        match s.trim() {
            "" | "random" => Ok(NftablesScheduler::Random),
            "maglev" => Ok(NftablesScheduler::Maglev),
            _ => Err(invalid(field, s, "must be random or maglev (blank means random)")),
        }
    }
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
    /// How the nftables mode picks an endpoint (`--nftables-scheduler`, file
    /// `nftables.scheduler`; a sliceproxy extension, kube-proxy has none).
    pub nftables_scheduler: NftablesScheduler,
    /// `--iptables-localhost-nodeports` / `iptables.localhostNodePorts` (default true, as
    /// kube-proxy): node ports on IPv4 loopback in iptables mode.
    pub iptables_localhost_node_ports: bool,
    /// `--nftables-localhost-nodeports` / `nftables.localhostNodePorts` (default false; a
    /// sliceproxy extension, upstream's nftables mode cannot serve them).
    pub nftables_localhost_node_ports: bool,
    /// Clean up rules and exit.
    pub cleanup: bool,
    /// The `--config` file this was read from, if any.
    pub config_file: Option<PathBuf>,
}

impl Config {
    /// Whether the configured mode serves node ports on IPv4 loopback: the
    /// mode's setting (iptables: default on; nftables: opt-in; IPVS: never,
    /// as upstream), and only when `--nodeport-addresses` takes in loopback
    /// (upstream turns the setting off otherwise).
    pub fn localhost_node_ports(&self) -> bool {
        let wanted = match self.mode {
            ProxyMode::Iptables => self.iptables_localhost_node_ports,
            ProxyMode::Nftables => self.nftables_localhost_node_ports,
            ProxyMode::Ipvs => false,
        };
        wanted && self.nodeport_addresses.contains_ipv4_loopback()
    }

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

        let nftables_scheduler = match (&flags.nftables_scheduler, &file.nftables.scheduler) {
            (Some(s), _) => NftablesScheduler::parse(s, "--nftables-scheduler")?,
            (None, Some(s)) => NftablesScheduler::parse(s, "nftables.scheduler")?,
            (None, None) => NftablesScheduler::Random,
        };

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
            nftables_scheduler,
            iptables_localhost_node_ports: flags
                .iptables_localhost_nodeports
                .or(file.iptables.localhost_node_ports)
                .unwrap_or(true),
            nftables_localhost_node_ports: flags
                .nftables_localhost_nodeports
                .or(file.nftables.localhost_node_ports)
                .unwrap_or(false),
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
