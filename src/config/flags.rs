//! The command-line flags, kube-proxy's names.

use super::*;

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
    #[arg(long = "min-sync-period", value_name = "DURATION", allow_hyphen_values = true)]
    pub min_sync_period: Option<String>,

    /// Interval of full rule resyncs, in any mode (Go duration, e.g. 30s). Must be > 0.
    #[arg(long = "sync-period", value_name = "DURATION", allow_hyphen_values = true)]
    pub sync_period: Option<String>,

    /// kube-proxy's name for --min-sync-period; applies in iptables and nftables modes only.
    #[arg(
        long = "iptables-min-sync-period",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub iptables_min_sync_period: Option<String>,

    /// kube-proxy's name for --sync-period; applies in iptables and nftables modes only.
    #[arg(long = "iptables-sync-period", value_name = "DURATION", allow_hyphen_values = true)]
    pub iptables_sync_period: Option<String>,

    /// IP:port of the health check server (default 0.0.0.0:10256); a bare IP uses port 10256;
    /// an empty value disables the server.
    #[arg(long = "healthz-bind-address", value_name = "HOST:PORT")]
    pub healthz_bind_address: Option<String>,

    /// IP:port of the metrics server (default 127.0.0.1:10249); a bare IP uses port 10249;
    /// an empty value disables the server.
    #[arg(long = "metrics-bind-address", value_name = "HOST:PORT")]
    pub metrics_bind_address: Option<String>,

    /// nftables mode: how an endpoint is picked, random (default, as kube-proxy)
    /// or maglev (consistent hashing; a sliceproxy extension).
    #[arg(long = "nftables-scheduler", value_name = "NAME")]
    pub nftables_scheduler: Option<String>,

    /// iptables mode: also serve NodePorts on 127.0.0.0/8 to clients on the node (IPv4 only;
    /// sets net.ipv4.conf.all.route_localnet=1). Default true, as kube-proxy. Off when
    /// --nodeport-addresses excludes loopback.
    #[arg(
        long = "iptables-localhost-nodeports",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = parse_go_bool
    )]
    pub iptables_localhost_nodeports: Option<bool>,

    /// nftables mode: serve NodePorts on 127.0.0.0/8 as the iptables mode does (a sliceproxy
    /// extension; upstream's nftables mode cannot). Default false.
    #[arg(
        long = "nftables-localhost-nodeports",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = parse_go_bool
    )]
    pub nftables_localhost_nodeports: Option<bool>,

    /// IPVS scheduler: rr (default), wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq or mh.
    #[arg(long = "ipvs-scheduler", value_name = "NAME")]
    pub ipvs_scheduler: Option<String>,

    /// Minimum interval between IPVS rule syncs (ipvs mode).
    #[arg(long = "ipvs-min-sync-period", value_name = "DURATION", allow_hyphen_values = true)]
    pub ipvs_min_sync_period: Option<String>,

    /// Interval of full IPVS resyncs (ipvs mode). Must be > 0.
    #[arg(long = "ipvs-sync-period", value_name = "DURATION", allow_hyphen_values = true)]
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
    #[arg(long = "ipvs-tcp-timeout", value_name = "DURATION", allow_hyphen_values = true)]
    pub ipvs_tcp_timeout: Option<String>,

    /// Timeout for IPVS TCP connections after a FIN; 0 leaves the kernel value as-is.
    #[arg(long = "ipvs-tcpfin-timeout", value_name = "DURATION", allow_hyphen_values = true)]
    pub ipvs_tcpfin_timeout: Option<String>,

    /// Timeout for IPVS UDP packets; 0 leaves the kernel value as-is.
    #[arg(long = "ipvs-udp-timeout", value_name = "DURATION", allow_hyphen_values = true)]
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
