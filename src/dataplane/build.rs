//! Building the configured mode's dataplane from a resolved [`Config`], and
//! `--cleanup` over every mode. The one place that knows every mode: which
//! families to program, which iptables variant the host uses, the node's
//! settings, and each mode's kernel seams.
//!
//! A new mode is added here (its construction and its place in the cleanup
//! order) and in its own module under `dataplane/`; nothing else matches on
//! the mode.

use super::Dataplane;
use super::exec::{Exec, HostExec};
use super::frontends::NodeSettings;
use super::iptables::{IptablesConfig, IptablesDataplane};
use super::ipvs::kernel::{IpvsKernel, UnsupportedIpvs};
use super::ipvs::link::RtLinks;
use super::ipvs::netlink::{IpvsClient, IpvsError};
use super::ipvs::{IpvsDataplane, IpvsDataplaneConfig};
use super::xtables::{self, Tools, Variant};
use crate::config::Config;
use crate::model::{IpFamily, ProxyMode};
use crate::netaddr::{AddressReader, NodePortSource};
use crate::track::BackendTable;

/// A mode's dataplane could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The mode has no dataplane in this build.
    #[error("--proxy-mode {0}: this build has no {0} dataplane yet; `sliceproxy render` shows what it would program")]
    NotBuilt(ProxyMode),
    /// `render --proxy-mode` cannot print the mode's rules.
    #[error("--proxy-mode {0}: this build cannot print {0} rules yet")]
    CannotRender(ProxyMode),
    /// The kernel's IPVS interface is missing or refused us.
    #[error("--proxy-mode ipvs: {0}")]
    Ipvs(#[from] IpvsError),
    /// A netlink socket could not be opened.
    #[error("{what}: rtnetlink: {source}")]
    Rtnetlink {
        /// What needed it.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The order `--cleanup` removes the modes' state in: IPVS first, because
/// its jumps from the built-in chains lead to its own chains, which the
/// iptables mode's cleanup must not find still referenced.
pub const CLEANUP_ORDER: [ProxyMode; 2] = [ProxyMode::Ipvs, ProxyMode::Iptables];

/// The node's settings from configuration, with these node-port addresses
/// (a backend with a [`NodePortSource`] replaces them at every full sync).
pub fn node_settings(config: &Config, node_port_addresses: &[std::net::IpAddr]) -> NodeSettings {
    NodeSettings::new(&config.cluster_cidrs, config.masquerade_all, node_port_addresses)
}

/// The families to program: those the cluster CIDRs name; without them,
/// IPv4 and, where the IPv6 tools work, IPv6 (a node without IPv6 has
/// nothing to program there).
pub fn families(config: &Config, exec: &mut dyn Exec, variant: Variant) -> Vec<IpFamily> {
    let mut families: Vec<IpFamily> = config.cluster_cidrs.iter().map(|c| IpFamily::of(&c.addr())).collect();
    families.sort();
    families.dedup();
    if families.is_empty() {
        families.push(IpFamily::V4);
        let v6 = Tools::new(IpFamily::V6, variant);
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

/// Node ports on the node's own addresses, re-read at every full sync.
fn node_port_source(config: &Config) -> Result<NodePortSource, BuildError> {
    let reader = AddressReader::open().map_err(|source| BuildError::Rtnetlink {
        what: "node addresses",
        source,
    })?;
    Ok(NodePortSource::new(config.nodeport_addresses.clone(), Box::new(reader)))
}

/// The dataplane of the configured mode, on this host.
pub fn build(config: &Config) -> Result<Box<dyn Dataplane>, BuildError> {
    build_mode(config, config.mode)
}

fn build_mode(config: &Config, mode: ProxyMode) -> Result<Box<dyn Dataplane>, BuildError> {
    let mut exec = HostExec::new();
    match mode {
        ProxyMode::Iptables => {
            let variant = xtables::detect_variant(&mut exec);
            let families = families(config, &mut exec, variant);
            tracing::info!(?variant, ?families, "iptables mode");
            let cfg = IptablesConfig {
                families,
                variant,
                settings: node_settings(config, &[]),
                node_ports: Some(node_port_source(config)?),
            };
            Ok(Box::new(IptablesDataplane::new(Box::new(exec), cfg)))
        }
        ProxyMode::Ipvs => {
            let variant = xtables::detect_variant(&mut exec);
            let families = families(config, &mut exec, variant);
            let kernel: Box<dyn IpvsKernel> = match IpvsClient::connect() {
                Ok(c) => Box::new(c),
                // Nothing of ours can be in an IPVS table the kernel lacks;
                // the rest (ipsets, rules, interface) is still cleaned up.
                Err(IpvsError::NotSupported) if config.cleanup => Box::new(UnsupportedIpvs),
                Err(e) => return Err(e.into()),
            };
            let links = RtLinks::open().map_err(|source| BuildError::Rtnetlink {
                what: "--proxy-mode ipvs",
                source,
            })?;
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
        ProxyMode::Nftables => Err(BuildError::NotBuilt(mode)),
    }
}

/// The rules a full sync of the configured mode writes for `family` on a
/// fresh node, as text (`render --proxy-mode`).
pub fn render_rules(
    config: &Config,
    table: &BackendTable,
    family: IpFamily,
    settings: &NodeSettings,
) -> Result<String, BuildError> {
    match config.mode {
        ProxyMode::Iptables => Ok(IptablesDataplane::render_full(table, family, settings)),
        ProxyMode::Ipvs => Ok(IpvsDataplane::render_full(
            table,
            family,
            settings,
            config.ipvs.effective_scheduler(),
        )),
        mode @ ProxyMode::Nftables => Err(BuildError::CannotRender(mode)),
    }
}

/// `--cleanup`: like kube-proxy's, remove what every mode created, whatever
/// `--proxy-mode` says, so a node that switches modes keeps nothing stale.
/// Every mode is attempted; returns the modes that failed, with why.
pub fn cleanup_every_mode(config: &Config) -> Vec<(ProxyMode, String)> {
    let mut failed = Vec::new();
    for mode in CLEANUP_ORDER {
        let result = build_mode(config, mode)
            .map_err(|e| e.to_string())
            .and_then(|mut d| d.cleanup().map_err(|e| e.to_string()));
        if let Err(e) = result {
            failed.push((mode, e));
        }
    }
    failed
}
