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
use super::nftables::netlink::Nft;
use super::nftables::{NftError, NftSettings, NftablesConfig, NftablesDataplane, Scheduler, render_script};
use super::xtables::{self, Tools, Variant};
use crate::config::{Config, NftablesScheduler};
use crate::model::{IpFamily, ProxyMode};
use crate::netaddr::{AddressReader, NodePortSource};
use crate::track::BackendTable;

/// A mode's dataplane could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The kernel's nf_tables interface is missing or refused us.
    #[error("--proxy-mode nftables: {0}")]
    Nftables(#[from] NftError),
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
    /// A sysctl the configuration needs could not be set.
    #[error("cannot set {what}: {source}")]
    Sysctl {
        /// Which, and for what.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The order `--cleanup` removes the modes' state in: IPVS first, because
/// its jumps from the built-in chains lead to its own chains, which the
/// iptables mode's cleanup must not find still referenced; the nftables
/// mode's tables reference nothing else and go last.
pub const CLEANUP_ORDER: [ProxyMode; 3] = [ProxyMode::Ipvs, ProxyMode::Iptables, ProxyMode::Nftables];

/// The nftables mode's settings from configuration.
pub fn nft_settings(config: &Config, node: NodeSettings) -> NftSettings {
    NftSettings {
        node,
        scheduler: match config.nftables_scheduler {
            NftablesScheduler::Random => Scheduler::Random,
            NftablesScheduler::Maglev => Scheduler::Maglev,
        },
    }
}

/// The nftables mode's families: those the cluster CIDRs name; without
/// them, IPv4 and, where the kernel has IPv6, IPv6.
fn nft_families(config: &Config) -> Vec<IpFamily> {
    let mut families: Vec<IpFamily> = config.cluster_cidrs.iter().map(|c| IpFamily::of(&c.addr())).collect();
    families.sort();
    families.dedup();
    if families.is_empty() {
        families.push(IpFamily::V4);
        if std::path::Path::new("/proc/sys/net/ipv6").exists() {
            families.push(IpFamily::V6);
        }
    }
    families
}

/// The node's settings from configuration, with these node-port addresses
/// (a backend with a [`NodePortSource`] replaces them at every full sync).
pub fn node_settings(config: &Config, node_port_addresses: &[std::net::IpAddr]) -> NodeSettings {
    NodeSettings::new(&config.cluster_cidrs, config.masquerade_all, node_port_addresses)
        .with_localhost_node_ports(config.localhost_node_ports())
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
            let settings = node_settings(config, &[]);
            if settings.localhost_node_ports && !config.cleanup && families.contains(&IpFamily::V4) {
                // As kube-proxy at start (https://issues.k8s.io/90259; the
                // rules drop what route_localnet would let in from outside).
                tracing::info!(
                    "setting route_localnet=1 for node ports on localhost; to change this set \
                     --iptables-localhost-nodeports=false or a --nodeport-addresses without loopback"
                );
                super::enable_route_localnet().map_err(|source| BuildError::Sysctl {
                    what: "net.ipv4.conf.all.route_localnet=1 (--iptables-localhost-nodeports)",
                    source,
                })?;
            }
            let cfg = IptablesConfig {
                families,
                variant,
                settings,
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
        ProxyMode::Nftables => {
            let kernel = Nft::open()?;
            let families = nft_families(config);
            let mut source = node_port_source(config)?;
            tracing::info!(?families, scheduler = ?config.nftables_scheduler, "nftables mode");
            let cfg = NftablesConfig::new(families, nft_settings(config, node_settings(config, &[])));
            Ok(Box::new(
                NftablesDataplane::new(Box::new(kernel), cfg)
                    .with_node_port_addresses(Box::new(move || source.read(&[]).map_err(|e| e.to_string()))),
            ))
        }
    }
}

/// The rules a full sync of the configured mode writes on a fresh node, as
/// text (`render --proxy-mode`): for `family`, or without one, IPv4 in the
/// xtables modes (one restore input per family) and every family in the
/// nftables mode (one script loads both tables).
pub fn render_rules(
    config: &Config,
    table: &BackendTable,
    family: Option<IpFamily>,
    settings: &NodeSettings,
) -> Result<String, BuildError> {
    let one = family.unwrap_or(IpFamily::V4);
    match config.mode {
        ProxyMode::Iptables => Ok(IptablesDataplane::render_full(table, one, settings)),
        ProxyMode::Ipvs => Ok(IpvsDataplane::render_full(
            table,
            one,
            settings,
            config.ipvs.effective_scheduler(),
        )),
        ProxyMode::Nftables => {
            let families = match family {
                Some(f) => vec![f],
                None => IpFamily::ALL.to_vec(),
            };
            Ok(render_script(table, &families, &nft_settings(config, settings.clone())))
        }
    }
}

/// The modes whose leftovers an agent in `mode` removes at startup, as
/// kube-proxy's `platformCleanup` does: an nftables agent removes what the
/// iptables and IPVS modes left (a node switched from either), an
/// iptables or IPVS agent removes our nftables tables. The iptables and IPVS
/// modes share the xtables layer and leave each other alone, like upstream.
pub fn other_modes(mode: ProxyMode) -> &'static [ProxyMode] {
    match mode {
        ProxyMode::Nftables => &[ProxyMode::Ipvs, ProxyMode::Iptables],
        ProxyMode::Iptables | ProxyMode::Ipvs => &[ProxyMode::Nftables],
    }
}

/// Remove what the [`other_modes`] of the configured mode left on this node
/// (agent startup). A mode whose kernel interface is missing has nothing to
/// remove; failures are returned to be logged, never fatal: the agent's own
/// mode is what matters.
pub fn cleanup_other_modes(config: &Config) -> Vec<(ProxyMode, String)> {
    // Built as for `--cleanup`: a kernel without IPVS then has an empty IPVS
    // table instead of an error.
    let cleanup = Config {
        cleanup: true,
        ..config.clone()
    };
    let mut failed = Vec::new();
    for &mode in other_modes(config.mode) {
        let result = match build_mode(&cleanup, mode) {
            Ok(mut d) => d.cleanup().map_err(|e| e.to_string()),
            // No nf_tables in this kernel: no table of ours either.
            Err(BuildError::Nftables(e)) => {
                tracing::debug!(error = %e, "no nf_tables: nothing to clean up");
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = result {
            failed.push((mode, e));
        }
    }
    failed
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
