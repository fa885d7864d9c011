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
            nftables_scheduler: NftablesScheduler::Random,
            iptables_localhost_node_ports: true,
            nftables_localhost_node_ports: false,
            cleanup: false,
            config_file: None,
        }
    );
    assert!(c.localhost_node_ports(), "kube-proxy's default in iptables mode");
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

#[test]
fn nftables_scheduler_from_flag_or_file_flag_wins_and_bad_values_name_the_field() {
    let (c, _) = resolve(&flags(&[]), Some(&doc("nftables: {scheduler: maglev}")));
    assert_eq!(c.nftables_scheduler, NftablesScheduler::Maglev);
    let (c, _) = resolve(
        &flags(&["--nftables-scheduler=random"]),
        Some(&doc("nftables: {scheduler: maglev}")),
    );
    assert_eq!(c.nftables_scheduler, NftablesScheduler::Random);
    let (c, _) = resolve(&flags(&["--nftables-scheduler", "maglev"]), None);
    assert_eq!(c.nftables_scheduler, NftablesScheduler::Maglev);
    let err = resolve_err(&["--nftables-scheduler=rr"], None).to_string();
    assert!(
        err.contains("--nftables-scheduler") && err.contains("random or maglev"),
        "{err}"
    );
    let err = resolve_err(&[], Some(&doc("nftables: {scheduler: mh}"))).to_string();
    assert!(err.contains("nftables.scheduler"), "{err}");
}

#[test]
fn localhost_node_ports_per_mode_from_flag_or_file_and_only_with_loopback_node_port_addresses() {
    // iptables mode: upstream's flag and field, default true; the flag wins.
    let (c, w) = resolve(&flags(&[]), Some(&doc("iptables: {localhostNodePorts: false}")));
    assert!(
        w.iter().all(|w| !w.contains("localhostNodePorts")),
        "no longer ignored: {w:?}"
    );
    assert!(!c.iptables_localhost_node_ports && !c.localhost_node_ports());
    let (c, _) = resolve(
        &flags(&["--iptables-localhost-nodeports=true"]),
        Some(&doc("iptables: {localhostNodePorts: false}")),
    );
    assert!(c.localhost_node_ports());
    let (c, _) = resolve(&flags(&["--iptables-localhost-nodeports=false"]), None);
    assert!(!c.localhost_node_ports());
    // `null` (what kube-proxy's --write-config-to prints) is the default.
    let (c, _) = resolve(&flags(&[]), Some(&doc("iptables: {localhostNodePorts: null}")));
    assert!(c.localhost_node_ports());
    // nftables mode: a sliceproxy opt-in, default off; the iptables setting does not apply.
    let (c, _) = resolve(&flags(&["--proxy-mode=nftables"]), None);
    assert!(c.iptables_localhost_node_ports && !c.localhost_node_ports());
    let (c, _) = resolve(
        &flags(&["--proxy-mode=nftables", "--nftables-localhost-nodeports"]),
        None,
    );
    assert!(c.localhost_node_ports());
    let (c, _) = resolve(
        &flags(&["--proxy-mode=nftables"]),
        Some(&doc("nftables: {localhostNodePorts: true}")),
    );
    assert!(c.localhost_node_ports());
    let (c, _) = resolve(
        &flags(&["--proxy-mode=nftables", "--nftables-localhost-nodeports=false"]),
        Some(&doc("nftables: {localhostNodePorts: true}")),
    );
    assert!(!c.localhost_node_ports());
    // IPVS mode never serves them, as upstream.
    let (c, _) = resolve(
        &flags(&["--proxy-mode=ipvs", "--iptables-localhost-nodeports=true"]),
        None,
    );
    assert!(!c.localhost_node_ports());
    // Upstream turns the setting off when --nodeport-addresses leaves out 127.0.0.0.
    for (arg, on) in [
        ("--nodeport-addresses=primary", false),
        ("--nodeport-addresses=192.168.0.0/16", false),
        ("--nodeport-addresses=192.168.0.0/16,127.0.0.0/8", true),
        ("--nodeport-addresses=127.0.0.1/32", true),
        ("--nodeport-addresses=::1/128", false),
        ("--nodeport-addresses=0.0.0.0/0", true),
    ] {
        let (c, _) = resolve(&flags(&[arg]), None);
        assert_eq!(c.localhost_node_ports(), on, "{arg}");
    }
    // Bad values name the flag or field.
    let err = resolve_err(&[], Some(&doc("iptables: {localhostNodePorts: \"yes\"}"))).to_string();
    assert!(err.contains("iptables.localhostNodePorts"), "{err}");
    let err = resolve_err(&[], Some(&doc("nftables: {localhostNodePorts: 1}"))).to_string();
    assert!(err.contains("nftables.localhostNodePorts"), "{err}");
    assert!(
        Cli::try_parse_from(["t", "--iptables-localhost-nodeports=maybe"]).is_err(),
        "not a Go bool"
    );
}

#[test]
fn a_negative_duration_after_a_space_is_a_value_not_a_flag() {
    // kube-proxy's pflag takes `--sync-period -1s` as the value -1s; so do
    // we, and validation names the field.
    let err = resolve_err(&["--sync-period", "-1s"], None).to_string();
    assert!(
        err.contains("--sync-period") && err.contains("must not be negative"),
        "{err}"
    );
    let err = resolve_err(&["--ipvs-udp-timeout", "-5s"], None).to_string();
    assert!(err.contains("--ipvs-udp-timeout"), "{err}");
}

#[test]
fn an_empty_entry_in_a_node_port_address_list_is_refused() {
    let err = resolve_err(&["--nodeport-addresses", "10.0.0.0/8,,"], None).to_string();
    assert!(
        err.contains("--nodeport-addresses") && err.contains("empty entry"),
        "{err}"
    );
    // An empty value as a whole still means every address.
    let (c, _) = resolve(&flags(&["--nodeport-addresses="]), None);
    assert_eq!(c.nodeport_addresses, NodePortAddresses::All);
}
