//! The `sliceproxy` command: the agent (kube-proxy's flags), and `render`.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sliceproxy::config::{Config, ProxyFlags, ProxyMode};
use sliceproxy::dataplane::Dataplane;
use sliceproxy::dataplane::conntrack::NetlinkConntrack;
use sliceproxy::dataplane::exec::{Exec, HostExec};
use sliceproxy::dataplane::frontends::NodeSettings;
use sliceproxy::dataplane::iptables::{IptablesConfig, IptablesDataplane};
use sliceproxy::dataplane::xtables;
use sliceproxy::model::IpFamily;
use sliceproxy::netaddr::{AddressReader, NetaddrError, NodePortSource};
use sliceproxy::policy::NodeContext;
use sliceproxy::render::{self, RenderOptions};
use sliceproxy::snapshot::{RenderInput, Snapshot};
use sliceproxy::sync::{Agent, SyncSettings};
use sliceproxy::track::Tracker;
use sliceproxy::watch::{self, WatchConfig};

/// Exit status for invalid flags or configuration (as clap and kube-proxy use).
const EXIT_USAGE: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "sliceproxy",
    version,
    about = "A node-level kube-proxy replacement: watches Services and EndpointSlices and programs the smallest edit of the node's load-balancing rules.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    flags: ProxyFlags,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print what a node would program, from a file of Services, EndpointSlices and Nodes; needs no cluster and no root.
    Render(RenderArgs),
    /// Explain why traffic to a Service does (not) flow from this node, with evidence; exit 0 when it should flow, 1 when a reason was found.
    Diagnose(DiagnoseArgs),
}

#[derive(Args, Debug)]
struct DiagnoseArgs {
    /// The Service, as NAMESPACE/NAME.
    target: String,
    /// Read objects (Services, EndpointSlices, Nodes, Pods) from this file instead of the cluster.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: Option<PathBuf>,
    /// An iptables-save dump of the node, to compare what is programmed with what should be.
    #[arg(long = "iptables-save", value_name = "FILE")]
    iptables_save: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(flatten)]
    flags: ProxyFlags,
}

#[derive(Args, Debug)]
struct RenderArgs {
    /// A multi-document YAML file or a `kubectl get -o yaml` List; kinds other than Service, EndpointSlice and Node are skipped.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: PathBuf,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Only this address family.
    #[arg(long = "ip-family", value_enum)]
    ip_family: Option<FamilyArg>,
    #[command(flatten)]
    flags: ProxyFlags,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    /// A readable table.
    Table,
    /// JSON, for tools.
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum FamilyArg {
    Ipv4,
    Ipv6,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match cli.command {
        Some(Command::Render(args)) => render_command(args),
        Some(Command::Diagnose(args)) => diagnose_command(args),
        None => agent_command(cli.flags),
    }
}

/// Resolve the configuration or explain, with the field and the value, why not.
fn load_config(flags: &ProxyFlags) -> Result<Config, ExitCode> {
    match Config::load(flags) {
        Ok((config, warnings)) => {
            for w in warnings {
                tracing::warn!("{w}");
            }
            Ok(config)
        }
        Err(e) => {
            eprintln!("sliceproxy: {e}");
            Err(ExitCode::from(EXIT_USAGE))
        }
    }
}

fn render_command(args: RenderArgs) -> ExitCode {
    let config = match load_config(&args.flags) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Decoded object by object, keeping only the model: a bad object is
    // reported and skipped, the rest is rendered, and the exit status is 1.
    let input = match RenderInput::from_file(&args.file, &config.hostname) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("sliceproxy render: {}: {e}", args.file.display());
            return ExitCode::FAILURE;
        }
    };
    let errors = &input.errors;
    for e in errors {
        eprintln!("sliceproxy render: skipped {e}");
    }
    let tracker = &input.tracker;
    if !input.node_found {
        eprintln!(
            "sliceproxy render: note: no Node named {:?} in the file; rendering without zone or node addresses (set --hostname-override)",
            config.hostname
        );
    }
    let node_addresses: Vec<IpAddr> = input.node.as_ref().map(|n| n.addresses.clone()).unwrap_or_default();
    let opts = RenderOptions {
        settings: node_settings(&config, &config.nodeport_addresses.select(&node_addresses)),
        families: match args.ip_family {
            None => Vec::new(),
            Some(FamilyArg::Ipv4) => vec![IpFamily::V4],
            Some(FamilyArg::Ipv6) => vec![IpFamily::V6],
        },
    };
    if args.flags.proxy_mode.is_some() {
        let family = match args.ip_family {
            Some(FamilyArg::Ipv6) => IpFamily::V6,
            _ => IpFamily::V4,
        };
        let settings = &opts.settings;
        match config.mode {
            ProxyMode::Iptables => print!("{}", IptablesDataplane::render_full(tracker.table(), family, settings)),
            ProxyMode::Ipvs => print!(
                "{}",
                sliceproxy::dataplane::ipvs::IpvsDataplane::render_full(
                    tracker.table(),
                    family,
                    settings,
                    config.ipvs.effective_scheduler(),
                )
            ),
            mode => {
                eprintln!("sliceproxy render: --proxy-mode {mode}: this build cannot print {mode} rules yet");
                return ExitCode::from(EXIT_USAGE);
            }
        }
        return if errors.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let rows = render::rows(tracker.table(), &opts);
    match args.output {
        Output::Table => print!("{}", render::to_text(&rows)),
        Output::Json => println!("{}", render::to_json(&rows)),
    }
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn agent_command(flags: ProxyFlags) -> ExitCode {
    let config = match load_config(&flags) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if config.cleanup {
        return cleanup_every_mode(&config);
    }
    let dataplane = match dataplane_for(&config) {
        Ok(d) => d,
        Err(message) => {
            eprintln!("sliceproxy: {message}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sliceproxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_agent(config, dataplane)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sliceproxy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn diagnose_command(args: DiagnoseArgs) -> ExitCode {
    let config = match load_config(&args.flags) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let key = match sliceproxy::diagnose::parse_target(&args.target) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("sliceproxy diagnose: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let snapshot = match &args.file {
        Some(file) => Snapshot::from_file(file).map_err(|e| format!("{}: {e}", file.display())),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(live_snapshot(&config, &key)).map_err(|e| e.to_string())),
    };
    let snapshot = match snapshot {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sliceproxy diagnose: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    for e in &snapshot.errors {
        eprintln!("sliceproxy diagnose: skipped {e}");
    }
    let dump = match &args.iptables_save {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("sliceproxy diagnose: {}: {e}", path.display());
                return ExitCode::from(EXIT_USAGE);
            }
        },
        None => None,
    };
    let settings = offline_settings(&config, &snapshot);
    let d = sliceproxy::diagnose::diagnose(&snapshot, &key, &config.hostname, &settings, dump.as_deref());
    match args.output {
        Output::Table => print!("{}", sliceproxy::diagnose::to_text(&d)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&d).unwrap_or_default()),
    }
    if d.traffic_should_flow {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The objects `diagnose` needs, listed live: the namespace's Services,
/// EndpointSlices and Pods, Pods elsewhere (for selector mistakes; skipped
/// when not allowed), and the node.
async fn live_snapshot(
    config: &Config,
    key: &sliceproxy::model::ServiceKey,
) -> Result<Snapshot, Box<dyn std::error::Error>> {
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::api::discovery::v1 as discovery;
    use kube::api::{Api, ListParams};
    let client = kube_client(config).await?;
    let lp = ListParams::default();
    let ns = &*key.namespace;
    let services = Api::<core::Service>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items;
    let slices = Api::<discovery::EndpointSlice>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items;
    let pods = match Api::<core::Pod>::all(client.clone()).list(&lp).await {
        Ok(l) => l.items,
        Err(_) => Api::<core::Pod>::namespaced(client.clone(), ns).list(&lp).await?.items,
    };
    let nodes = match Api::<core::Node>::all(client).get_opt(&config.hostname).await {
        Ok(n) => n.into_iter().collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read Node {}", config.hostname);
            Vec::new()
        }
    };
    Ok(Snapshot {
        services,
        slices,
        nodes,
        pods,
        ..Snapshot::default()
    })
}

/// `--cleanup`: like kube-proxy's, remove what any mode created, whatever
/// `--proxy-mode` says, so a node that switches modes keeps nothing stale.
/// IPVS first: its jumps from the built-in chains lead to its own chains,
/// which the iptables mode's cleanup must not find still referenced.
fn cleanup_every_mode(config: &Config) -> ExitCode {
    let mut failed = false;
    for mode in [ProxyMode::Ipvs, ProxyMode::Iptables] {
        let mode_config = Config { mode, ..config.clone() };
        let result = dataplane_for(&mode_config).and_then(|mut d| d.cleanup().map_err(|e| e.to_string()));
        if let Err(e) = result {
            eprintln!("sliceproxy --cleanup ({mode}): {e}");
            failed = true;
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// The settings of the node a snapshot is rendered or diagnosed for: node
/// ports on its Node object's addresses, as `--nodeport-addresses` selects.
fn offline_settings(config: &Config, snapshot: &Snapshot) -> NodeSettings {
    let node_addresses: Vec<IpAddr> = snapshot
        .node(&config.hostname)
        .and_then(|n| sliceproxy::watch::convert::node(n).ok())
        .map(|n| n.addresses)
        .unwrap_or_default();
    node_settings(config, &config.nodeport_addresses.select(&node_addresses))
}

/// The node's settings.
fn node_settings(config: &Config, node_port_addresses: &[IpAddr]) -> NodeSettings {
    NodeSettings::new(&config.cluster_cidrs, config.masquerade_all, node_port_addresses)
}

/// Node ports on the node's addresses as `--nodeport-addresses` selects them.
fn node_port_source(config: &Config) -> Result<NodePortSource, String> {
    let reader = AddressReader::open().map_err(|e| format!("node addresses: rtnetlink: {e}"))?;
    Ok(NodePortSource::new(config.nodeport_addresses.clone(), Box::new(reader)))
}

/// The families to program: those the cluster CIDRs name; without them,
/// IPv4 and, where the IPv6 tools work, IPv6 (a node without IPv6 has
/// nothing to program there).
fn families_for(config: &Config, exec: &mut HostExec, variant: xtables::Variant) -> Vec<IpFamily> {
    let mut families: Vec<IpFamily> = config.cluster_cidrs.iter().map(|c| IpFamily::of(&c.addr())).collect();
    families.sort();
    families.dedup();
    if families.is_empty() {
        families.push(IpFamily::V4);
        let v6 = xtables::Tools::new(IpFamily::V6, variant);
        if exec
            .run(&v6.save, &["-t", "nat"], b"")
            .map(|o| o.success)
            .unwrap_or(false)
        {
            families.push(IpFamily::V6);
        }
    }
    families
}

/// The dataplane for the configured mode.
fn dataplane_for(config: &Config) -> Result<Box<dyn Dataplane>, String> {
    match config.mode {
        ProxyMode::Iptables => {
            let mut exec = HostExec::new();
            let variant = xtables::detect_variant(&mut exec);
            let families = families_for(config, &mut exec, variant);
            tracing::info!(?variant, ?families, "iptables mode");
            let cfg = IptablesConfig {
                families,
                variant,
                settings: node_settings(config, &[]),
                node_ports: Some(node_port_source(config)?),
            };
            Ok(Box::new(IptablesDataplane::new(Box::new(exec), cfg)))
        }
        ProxyMode::Ipvs => ipvs_dataplane(config),
        mode => Err(format!(
            "--proxy-mode {mode}: this build has no {mode} dataplane yet; `sliceproxy render` shows what it would program"
        )),
    }
}

/// `--proxy-mode ipvs`: the IPVS genetlink client, rtnetlink for the dummy
/// interface, and the host's tools for ipset and the iptables layer.
fn ipvs_dataplane(config: &Config) -> Result<Box<dyn Dataplane>, String> {
    use sliceproxy::dataplane::ipvs::{IpvsDataplane, IpvsDataplaneConfig, kernel::FakeIpvs, link::RtLinks};
    let mut exec = HostExec::new();
    let variant = xtables::detect_variant(&mut exec);
    let families = families_for(config, &mut exec, variant);
    let kernel: Box<dyn sliceproxy::dataplane::ipvs::kernel::IpvsKernel> =
        match sliceproxy::dataplane::ipvs::netlink::IpvsClient::connect() {
            Ok(c) => Box::new(c),
            // Nothing of ours can be in an IPVS table the kernel lacks; the
            // rest (ipsets, rules, interface) is still cleaned up.
            Err(sliceproxy::dataplane::ipvs::netlink::IpvsError::NotSupported) if config.cleanup => {
                Box::new(FakeIpvs::new())
            }
            Err(e) => return Err(format!("--proxy-mode ipvs: {e}")),
        };
    let links = RtLinks::open().map_err(|e| format!("--proxy-mode ipvs: rtnetlink: {e}"))?;
    tracing::info!(
        ?variant,
        ?families,
        scheduler = config.ipvs.effective_scheduler(),
        "ipvs mode"
    );
    let cfg = IpvsDataplaneConfig {
        families,
        variant,
        settings: node_settings(config, &[]),
        scheduler: config.ipvs.effective_scheduler().to_string(),
        node_ports: Some(node_port_source(config)?),
        exclude_cidrs: config.ipvs.exclude_cidrs.clone(),
        strict_arp: config.ipvs.strict_arp,
        tcp_timeout: config.ipvs.tcp_timeout,
        tcp_fin_timeout: config.ipvs.tcp_fin_timeout,
        udp_timeout: config.ipvs.udp_timeout,
        ..Default::default()
    };
    Ok(Box::new(IpvsDataplane::new(
        kernel,
        Box::new(links),
        Box::new(exec),
        cfg,
    )))
}

async fn run_agent(config: Config, dataplane: Box<dyn Dataplane>) -> Result<(), Box<dyn std::error::Error>> {
    let client = kube_client(&config).await?;
    tracing::info!(node = %config.hostname, mode = %config.mode, "starting");
    let events = watch::watch_all(
        client,
        &WatchConfig {
            node_name: config.hostname.clone(),
        },
    );
    let settings = SyncSettings {
        min_sync_period: config.min_sync_period,
        sync_period: config.sync_period,
    };
    let agent = Agent::new(Tracker::new(NodeContext::new(&config.hostname)), dataplane, settings);
    // /healthz, /livez, /metrics, /proxyMode and the health-check node ports;
    // they stop with the process (the rules do not).
    let mode: &'static str = match config.mode {
        ProxyMode::Iptables => "iptables",
        ProxyMode::Nftables => "nftables",
        ProxyMode::Ipvs => "ipvs",
    };
    let (mut agent, _servers) =
        sliceproxy::metrics::instrument(agent, &config, mode, IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)).await?;
    // Node-port rules depend on the node's addresses: follow them over
    // netlink and resync fully when they change.
    let watcher = match sliceproxy::netaddr::watch_addresses().await {
        Ok(w) => {
            agent = agent.with_resync_trigger(w.changes.clone());
            Some(w)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot follow node addresses; they are re-read at every full sync");
            None
        }
    };
    // Stale UDP flows are cleared in the agent's own network namespace; the
    // local-address test follows the watcher when there is one.
    let start_local: Vec<IpAddr> = AddressReader::open()
        .map_err(NetaddrError::from)
        .and_then(|mut r| r.dump())
        .map(|all| all.into_iter().map(|a| a.address).collect())
        .unwrap_or_default();
    let shared = watcher.as_ref().map(|w| w.addresses.clone());
    let is_local = move |ip: &IpAddr| match &shared {
        Some(s) => s.read().unwrap_or_else(|p| p.into_inner()).contains(ip),
        None => start_local.contains(ip),
    };
    match NetlinkConntrack::open(Box::new(is_local)) {
        Ok(ct) => agent = agent.with_flow_cleaner(Box::new(ct)),
        Err(e) => tracing::warn!(error = %e, "conntrack is not available; stale UDP flows will only expire"),
    }
    agent.run(events, shutdown_signal()).await;
    tracing::info!("stopping; rules stay in place (use --cleanup to remove them)");
    Ok(())
}

/// `--kubeconfig` (with `--master` overriding its server), else `--master`
/// alone, else the in-cluster ServiceAccount, as kube-proxy does.
pub async fn kube_client(config: &Config) -> Result<kube::Client, Box<dyn std::error::Error>> {
    let mut kc = match &config.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?
        }
        None if config.master.is_some() => kube::Config::new("http://localhost".parse()?),
        None => kube::Config::incluster().map_err(|e| format!("no --kubeconfig and not in a cluster: {e}"))?,
    };
    if let Some(master) = &config.master {
        kc.cluster_url = master.parse().map_err(|e| format!("--master {master:?}: {e}"))?;
    }
    Ok(kube::Client::try_from(kc)?)
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
