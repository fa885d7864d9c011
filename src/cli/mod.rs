//! The `sliceproxy` command line: kube-proxy's flags for the agent, and the
//! offline tools `render` and `diagnose`. `main.rs` parses [`Cli`] and
//! dispatches to [`agent`], [`render::run`] or [`diagnose::run`].
//!
//! The clap types carry `//` comments only: their doc comments are the
//! command's help text.

pub mod diagnose;
pub mod render;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Config, ProxyFlags};
use crate::dataplane::build;
use crate::dataplane::frontends::NodeSettings;
use crate::snapshot::Snapshot;

/// Exit status for invalid flags or configuration (as clap and kube-proxy use).
pub const EXIT_USAGE: u8 = 2;

// The whole command line: the agent's flags, or a tool.
#[derive(Parser, Debug)]
#[command(
    name = "sliceproxy",
    version,
    about = "A node-level kube-proxy replacement: watches Services and EndpointSlices and programs the smallest edit of the node's load-balancing rules.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(flatten)]
    pub flags: ProxyFlags,
    #[command(subcommand)]
    pub command: Option<Command>,
}

// The offline tools.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print what a node would program, from a file of Services, EndpointSlices and Nodes; needs no cluster and no root.
    Render(RenderArgs),
    /// Explain why traffic to a Service does (not) flow from this node, with evidence; exit 0 when it should flow, 1 when a reason was found.
    Diagnose(DiagnoseArgs),
}

// `sliceproxy diagnose`.
#[derive(Args, Debug)]
pub struct DiagnoseArgs {
    /// The Service, as NAMESPACE/NAME.
    pub target: String,
    /// Read objects (Services, EndpointSlices, Nodes, Pods) from this file instead of the cluster.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// An iptables-save dump of the node, to compare what is programmed with what should be.
    /// (With `--proxy-mode nftables` instead, our nftables tables are read from the kernel.)
    #[arg(long = "iptables-save", value_name = "FILE")]
    pub iptables_save: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(flatten)]
    pub flags: ProxyFlags,
}

// `sliceproxy render`.
#[derive(Args, Debug)]
pub struct RenderArgs {
    /// A multi-document YAML file or a `kubectl get -o yaml` List; kinds other than Service, EndpointSlice and Node are skipped.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Only this address family.
    #[arg(long = "ip-family", value_enum)]
    pub ip_family: Option<FamilyArg>,
    #[command(flatten)]
    pub flags: ProxyFlags,
}

// The tools' output format.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// A readable table.
    Table,
    /// JSON, for tools.
    Json,
}

// `--ip-family`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FamilyArg {
    Ipv4,
    Ipv6,
}

/// Resolve the configuration or explain, with the field and the value, why not.
pub fn load_config(flags: &ProxyFlags) -> Result<Config, ExitCode> {
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

/// The agent command: run until SIGTERM, or `--cleanup` every mode and exit.
pub fn agent(flags: ProxyFlags) -> ExitCode {
    let config = match load_config(&flags) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if !config.cleanup {
        return crate::agent::run(config);
    }
    let failed = build::cleanup_every_mode(&config);
    for (mode, e) in &failed {
        eprintln!("sliceproxy --cleanup ({mode}): {e}");
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The settings of the node a snapshot is rendered or diagnosed for: node
/// ports on its Node object's addresses, as `--nodeport-addresses` selects.
pub fn offline_settings(config: &Config, snapshot: &Snapshot) -> NodeSettings {
    let node_addresses: Vec<IpAddr> = snapshot
        .node(&config.hostname)
        .and_then(|n| crate::watch::convert::node(n).ok())
        .map(|n| n.addresses)
        .unwrap_or_default();
    build::node_settings(config, &config.nodeport_addresses.select(&node_addresses))
}
