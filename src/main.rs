//! The `sliceproxy` command: the agent (kube-proxy's flags), and `render`.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sliceproxy::config::{Config, NodePortAddresses, ProxyFlags, ProxyMode};
use sliceproxy::dataplane::Dataplane;
use sliceproxy::model::IpFamily;
use sliceproxy::policy::{MasqueradeConfig, NodeContext};
use sliceproxy::render::{self, RenderOptions};
use sliceproxy::snapshot::Snapshot;
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
    if args.flags.proxy_mode.is_some() {
        eprintln!(
            "sliceproxy render: --proxy-mode {}: printing the rules of a mode comes with that dataplane; without --proxy-mode, render prints the backend table",
            config.mode
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let snapshot = match Snapshot::from_file(&args.file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sliceproxy render: {}: {e}", args.file.display());
            return ExitCode::FAILURE;
        }
    };
    let (tracker, errors) = snapshot.tracker(&config.hostname);
    for e in &errors {
        eprintln!("sliceproxy render: skipped {e}");
    }
    if snapshot.node(&config.hostname).is_none() {
        eprintln!(
            "sliceproxy render: note: no Node named {:?} in the file; rendering without zone or node addresses (set --hostname-override)",
            config.hostname
        );
    }
    let node_addresses: Vec<IpAddr> = snapshot
        .node(&config.hostname)
        .and_then(|n| sliceproxy::watch::convert::node(n).ok())
        .map(|n| n.addresses)
        .unwrap_or_default();
    let opts = RenderOptions {
        masq: MasqueradeConfig {
            masquerade_all: config.masquerade_all,
            detect_local: !config.cluster_cidrs.is_empty(),
        },
        node_port_addresses: node_port_addresses(&config.nodeport_addresses, &node_addresses),
        families: match args.ip_family {
            None => Vec::new(),
            Some(FamilyArg::Ipv4) => vec![IpFamily::V4],
            Some(FamilyArg::Ipv6) => vec![IpFamily::V6],
        },
    };
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

/// Which of the node's addresses serve node ports. Loopback never does: a
/// node port on 127.0.0.1 needs `route_localnet`, which opens the node's
/// localhost to its neighbours (upstream's nftables mode refuses it too).
fn node_port_addresses(setting: &NodePortAddresses, node: &[IpAddr]) -> Vec<IpAddr> {
    node.iter()
        .copied()
        .filter(|ip| !ip.is_loopback())
        .filter(|ip| match setting {
            NodePortAddresses::All => true,
            // The primary address of each family: the first the Node lists.
            NodePortAddresses::Primary => node.iter().find(|a| IpFamily::of(a) == IpFamily::of(ip)) == Some(ip),
            NodePortAddresses::Cidrs(cidrs) => cidrs.iter().any(|c| c.contains(ip)),
        })
        .collect()
}

fn agent_command(flags: ProxyFlags) -> ExitCode {
    let config = match load_config(&flags) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut dataplane = match dataplane_for(config.mode) {
        Ok(d) => d,
        Err(message) => {
            eprintln!("sliceproxy: {message}");
            return ExitCode::FAILURE;
        }
    };
    if config.cleanup {
        return match dataplane.cleanup() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sliceproxy --cleanup: {e}");
                ExitCode::FAILURE
            }
        };
    }
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

/// The dataplane for a mode. The real backends are built in their own
/// issues; until one lands, its mode says so instead of pretending.
fn dataplane_for(mode: ProxyMode) -> Result<Box<dyn Dataplane>, String> {
    Err(format!(
        "--proxy-mode {mode}: this build has no {mode} dataplane yet; `sliceproxy render` shows what it would program"
    ))
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
