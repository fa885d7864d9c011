//! The agent process: from a resolved [`Config`] to the running task. Builds
//! the configured mode's dataplane, connects to the API server, starts the
//! watches, the health and metrics servers, the node-address watcher and the
//! conntrack cleaner, and runs [`crate::sync::Agent`] until SIGTERM. The
//! rules stay in place when it stops.

use std::net::IpAddr;
use std::process::ExitCode;

use crate::config::Config;
use crate::dataplane::Dataplane;
use crate::dataplane::build;
use crate::dataplane::conntrack::NetlinkConntrack;
use crate::netaddr::{AddressReader, NetaddrError};
use crate::policy::NodeContext;
use crate::sync::{Agent, SyncSettings};
use crate::track::Tracker;
use crate::watch::{self, WatchConfig};

/// Run the agent for `config` until SIGTERM; the process's exit status.
pub fn run(config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sliceproxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(start(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sliceproxy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The API client first, so that a bad kubeconfig fails before anything on
/// the node changes; then other modes' leftovers, the dataplane, the agent.
async fn start(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let client = watch::client(&config).await?;
    for (mode, e) in build::cleanup_other_modes(&config) {
        tracing::warn!(%mode, error = %e, "could not remove what another proxy mode left on this node");
    }
    let dataplane = build::build(&config)?;
    run_agent(config, client, dataplane).await
}

/// Wire everything around `dataplane` and run until a signal.
pub async fn run_agent(
    config: Config,
    client: kube::Client,
    dataplane: Box<dyn Dataplane>,
) -> Result<(), Box<dyn std::error::Error>> {
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
    let (mut agent, _servers) = crate::observe::instrument(
        agent,
        &config,
        config.mode.as_str(),
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    )
    .await?;
    // Node-port rules depend on the node's addresses: follow them over
    // netlink and resync fully when they change.
    let watcher = match crate::netaddr::watch_addresses().await {
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
