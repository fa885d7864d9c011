//! The `sliceproxy` command: the agent (kube-proxy's flags), and `render`.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sliceproxy::config::{Config, ProxyFlags, ProxyMode};
use sliceproxy::dataplane::Dataplane;
use sliceproxy::dataplane::addresses;
use sliceproxy::dataplane::conntrack::NetlinkConntrack;
use sliceproxy::dataplane::exec::{Exec, HostExec};
use sliceproxy::dataplane::iptables::{self, IptablesConfig, IptablesDataplane, rules::RuleConfig};
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
        node_port_addresses: addresses::node_port_addresses(&config.nodeport_addresses, &node_addresses),
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
        let rules = rule_config(&config, family, &opts.node_port_addresses);
        match config.mode {
            ProxyMode::Iptables => print!("{}", IptablesDataplane::render_full(tracker.table(), family, &rules)),
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
    let mut dataplane = match dataplane_for(&config) {
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

/// Rule settings of one family.
fn rule_config(config: &Config, family: IpFamily, node_port_addresses: &[IpAddr]) -> RuleConfig {
    RuleConfig {
        cluster_cidrs: config
            .cluster_cidrs
            .iter()
            .filter(|c| IpFamily::of(&c.addr()) == family)
            .copied()
            .collect(),
        masquerade_all: config.masquerade_all,
        node_port_addresses: node_port_addresses
            .iter()
            .filter(|a| IpFamily::of(a) == family)
            .copied()
            .collect(),
    }
}

/// The dataplane for the configured mode.
fn dataplane_for(config: &Config) -> Result<Box<dyn Dataplane>, String> {
    match config.mode {
        ProxyMode::Iptables => {
            let mut exec = HostExec::new();
            let variant = iptables::detect_variant(&mut exec);
            // Program the families the cluster CIDRs name; without them, both
            // families where the IPv6 tools work (a node without IPv6 has
            // nothing to program there).
            let mut families: Vec<IpFamily> = config.cluster_cidrs.iter().map(|c| IpFamily::of(&c.addr())).collect();
            families.sort();
            families.dedup();
            if families.is_empty() {
                families.push(IpFamily::V4);
                let v6 = iptables::Tools::new(IpFamily::V6, variant);
                if exec
                    .run(&v6.save, &["-t", "nat"], b"")
                    .map(|o| o.success)
                    .unwrap_or(false)
                {
                    families.push(IpFamily::V6);
                }
            }
            tracing::info!(?variant, ?families, "iptables mode");
            let cfg = IptablesConfig {
                families,
                variant,
                rules: [
                    rule_config(config, IpFamily::V4, &[]),
                    rule_config(config, IpFamily::V6, &[]),
                ],
                node_ports: Some(config.nodeport_addresses.clone()),
            };
            Ok(Box::new(IptablesDataplane::new(Box::new(exec), cfg)))
        }
        mode => Err(format!(
            "--proxy-mode {mode}: this build has no {mode} dataplane yet; `sliceproxy render` shows what it would program"
        )),
    }
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
    let mut agent = Agent::new(Tracker::new(NodeContext::new(&config.hostname)), dataplane, settings);
    // Stale UDP flows are cleared in the agent's own network namespace; node
    // ports match on the node's addresses as they were at start.
    let local: Vec<IpAddr> = addresses::local_addresses(&mut HostExec::new()).unwrap_or_default();
    match NetlinkConntrack::open(Box::new(move |ip: &IpAddr| local.contains(ip))) {
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
