//! The node's addresses: the one way sliceproxy reads them (an rtnetlink
//! address dump, [`AddressReader`]), which of them serve node ports
//! ([`NodePortAddresses::select`](crate::model::NodePortAddresses::select)),
//! and a watcher that follows them as they change.
//!
//! Node-port rules match on these addresses (the `--nodeport-addresses`
//! default is every address of the node), and no API object says when a
//! DHCP lease or an operator changes them, so the agent listens for
//! `RTM_NEWADDR` / `RTM_DELADDR` and runs a full sync when the set changes
//! (the backends re-read the addresses at every full sync).
//!
//! A netlink socket lives in the network namespace of the thread that opens
//! it, which is how tests aim a reader or the watcher at a namespace.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_sys::{AsyncSocket, Socket, SocketAddr, protocols::NETLINK_ROUTE};
use rtnetlink::constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use tokio::sync::watch;

use crate::model::NodePortAddresses;

/// A netlink failure.
#[derive(Debug, thiserror::Error)]
pub enum NetaddrError {
    /// The socket could not be opened, subscribed, written or read.
    #[error("rtnetlink socket: {0}")]
    Socket(#[from] std::io::Error),
    /// The kernel answered the dump with an error, or with bytes that do
    /// not parse.
    #[error("rtnetlink address dump: {0}")]
    Dump(String),
}

/// One address of one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InterfaceAddress {
    /// The interface's index.
    pub interface: u32,
    /// The address.
    pub address: IpAddr,
}

/// Where the backends read the node's addresses from (a seam, so tests can
/// give fixed ones).
pub trait AddressSource: Send {
    /// Every address of every interface.
    fn addresses(&mut self) -> Result<Vec<InterfaceAddress>, NetaddrError>;
}

/// Where node ports are served: the node's addresses, re-read whenever
/// asked (every full sync), as `--nodeport-addresses` selects them.
pub struct NodePortSource {
    /// `--nodeport-addresses`.
    pub setting: NodePortAddresses,
    /// The node's addresses.
    pub addresses: Box<dyn AddressSource>,
}

impl std::fmt::Debug for NodePortSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodePortSource")
            .field("setting", &self.setting)
            .finish_non_exhaustive()
    }
}

impl NodePortSource {
    /// Node ports on the addresses `addresses` lists, as `setting` selects.
    pub fn new(setting: NodePortAddresses, addresses: Box<dyn AddressSource>) -> NodePortSource {
        NodePortSource { setting, addresses }
    }

    /// The node-port addresses now, leaving out `ours` (addresses a mode
    /// put on the node itself, like the IPVS mode's service addresses).
    pub fn read(&mut self, ours: &[IpAddr]) -> Result<Vec<IpAddr>, NetaddrError> {
        let node: Vec<IpAddr> = self
            .addresses
            .addresses()?
            .into_iter()
            .map(|a| a.address)
            .filter(|a| !ours.contains(a))
            .collect();
        Ok(self.setting.select(&node))
    }
}

/// Address dumps over an rtnetlink socket of its own, in the network
/// namespace it was opened in.
pub struct AddressReader {
    socket: Socket,
    seq: u32,
}

impl AddressReader {
    /// Open an `NETLINK_ROUTE` socket.
    pub fn open() -> std::io::Result<AddressReader> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(AddressReader { socket, seq: 0 })
    }

    /// Every address of every interface, as `ip addr show` lists them.
    pub fn dump(&mut self) -> Result<Vec<InterfaceAddress>, NetaddrError> {
        self.seq = self.seq.wrapping_add(1);
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetAddress(AddressMessage::default()));
        request.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        request.header.sequence_number = self.seq;
        request.finalize();
        let mut buf = vec![0; request.buffer_len()];
        request.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full()?;
            let mut rest = &datagram[..];
            while !rest.is_empty() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                    .map_err(|e| NetaddrError::Dump(e.to_string()))?;
                let len = (msg.header.length as usize).max(16);
                rest = &rest[((len + 3) & !3).min(rest.len())..];
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(NetaddrError::Dump(e.to_io().to_string()));
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(m)) => {
                        out.extend(address_of(&m).map(|address| InterfaceAddress {
                            interface: m.header.index,
                            address,
                        }));
                    }
                    _ => {}
                }
            }
        }
    }
}

impl AddressSource for AddressReader {
    fn addresses(&mut self) -> Result<Vec<InterfaceAddress>, NetaddrError> {
        self.dump()
    }
}

/// The interface's own address of one `RTM_NEWADDR`: IFA_LOCAL is it on
/// point-to-point links (IFA_ADDRESS is the peer's); elsewhere they agree.
/// Preferred as `ip` does.
fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    local.or(address)
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

fn address_set(dump: Vec<InterfaceAddress>) -> BTreeSet<IpAddr> {
    dump.into_iter().map(|a| a.address).collect()
}

/// Open the watcher in the calling thread's network namespace (must be
/// called inside a tokio runtime). The first dump happens before this
/// returns, so `addresses` is complete at once.
pub async fn watch_addresses() -> Result<AddressWatcher, NetaddrError> {
    // Notifications on one socket; dumps on another, opened here too, so
    // both are in this thread's namespace.
    let (mut conn, _handle, mut messages) = rtnetlink::new_connection()?;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))?;
    tokio::spawn(conn);
    let mut reader = AddressReader::open()?;
    let initial = address_set(reader.dump()?);
    let addresses: SharedAddresses = Arc::new(RwLock::new(initial));
    let (tx, changes) = watch::channel(0u64);
    let shared = Arc::clone(&addresses);
    let task = tokio::spawn(async move {
        let mut reader = Some(reader);
        while messages.next().await.is_some() {
            // Addresses come in bursts (an interface going up brings several):
            // let the burst settle, drain it, then dump once.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, messages.next()).await {}
            // The dump blocks on its socket: off the runtime's threads.
            let Some(mut r) = reader.take() else { break };
            let Ok((r, dumped)) = tokio::task::spawn_blocking(move || {
                let dumped = r.dump();
                (r, dumped)
            })
            .await
            else {
                break;
            };
            reader = Some(r);
            match dumped {
                Ok(now) => {
                    let now = address_set(now);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_lists_loopback() {
        let mut r = AddressReader::open().expect("rtnetlink socket");
        let all = r.dump().expect("dump");
        assert!(all.iter().any(|a| a.address == IpAddr::from([127, 0, 0, 1])), "{all:?}");
        // A second dump on the same socket works too (sequence numbers).
        assert_eq!(address_set(r.dump().unwrap()), address_set(all));
    }
}
