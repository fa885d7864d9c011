//! The node's addresses over rtnetlink, followed as they change. Node-port
//! rules match on these addresses (the `--nodeport-addresses` default is
//! every address of the node), and no API object says when a DHCP lease or
//! an operator changes them, so the agent listens for `RTM_NEWADDR` /
//! `RTM_DELADDR` and runs a full sync when the set changes (the iptables
//! backend re-reads the addresses at every full sync).
//!
//! The socket lives in the network namespace of the thread that opens it,
//! which is how tests aim the watcher at a namespace.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use netlink_sys::{AsyncSocket, SocketAddr};
use rtnetlink::constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR};
use rtnetlink::packet_route::address::AddressAttribute;
use tokio::sync::watch;

/// A netlink failure.
#[derive(Debug, thiserror::Error)]
pub enum NetaddrError {
    /// The socket could not be opened or subscribed.
    #[error("rtnetlink socket: {0}")]
    Socket(#[from] std::io::Error),
    /// An address dump failed.
    #[error("rtnetlink address dump: {0}")]
    Dump(#[from] rtnetlink::Error),
}

/// The node's addresses as last seen, shared with whoever needs them between
/// syncs (e.g. the conntrack cleaner's "is this a local address" test).
pub type SharedAddresses = Arc<RwLock<BTreeSet<IpAddr>>>;

/// A running watcher.
pub struct AddressWatcher {
    /// Bumped on every change of the address set (feed it to
    /// [`crate::sync::Agent::with_resync_trigger`]).
    pub changes: watch::Receiver<u64>,
    /// The current addresses.
    pub addresses: SharedAddresses,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AddressWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every address of every interface, as `ip -j addr show` lists them.
pub async fn dump(handle: &rtnetlink::Handle) -> Result<BTreeSet<IpAddr>, NetaddrError> {
    let mut out = BTreeSet::new();
    let mut msgs = handle.address().get().execute();
    while let Some(msg) = msgs.try_next().await? {
        // IFA_LOCAL is the interface's own address on point-to-point links,
        // IFA_ADDRESS the peer's; elsewhere they agree. Prefer LOCAL as `ip` does.
        let local = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let address = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = local.or(address) {
            out.insert(ip);
        }
    }
    Ok(out)
}

/// Open the watcher in the calling thread's network namespace (must be
/// called inside a tokio runtime). The first dump happens before this
/// returns, so `addresses` is complete at once.
pub async fn watch_addresses() -> Result<AddressWatcher, NetaddrError> {
    let (mut conn, handle, mut messages) = rtnetlink::new_connection()?;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))?;
    tokio::spawn(conn);
    let initial = dump(&handle).await?;
    let addresses: SharedAddresses = Arc::new(RwLock::new(initial));
    let (tx, changes) = watch::channel(0u64);
    let shared = Arc::clone(&addresses);
    let task = tokio::spawn(async move {
        while messages.next().await.is_some() {
            // Addresses come in bursts (an interface going up brings several):
            // let the burst settle, drain it, then dump once.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, messages.next()).await {}
            match dump(&handle).await {
                Ok(now) => {
                    let changed = {
                        let mut cur = shared.write().unwrap_or_else(|p| p.into_inner());
                        let changed = *cur != now;
                        *cur = now;
                        changed
                    };
                    if changed {
                        tracing::info!(addresses = ?shared.read().unwrap_or_else(|p| p.into_inner()), "node addresses changed");
                        tx.send_modify(|n| *n += 1);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list node addresses; keeping the last known set"),
            }
        }
        tracing::warn!("rtnetlink address notifications ended; node address changes wait for the periodic full sync");
    });
    Ok(AddressWatcher {
        changes,
        addresses,
        task,
    })
}
