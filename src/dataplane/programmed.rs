//! What a node's rules do with new connections, per frontend, as every mode
//! reads it back from the kernel (or a dump) by structure: the DNAT targets
//! reachable from the frontend's dispatch and any refusal (REJECT or DROP).
//! `diagnose` compares this with the frontend plan; each mode produces it
//! from its own rules (`iptables::programmed`, `nftables::programmed`).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use crate::model::Protocol;

/// A frontend as rules match it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendKey {
    /// Destination address.
    pub address: IpAddr,
    /// Destination port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// A verdict that refuses new connections to a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Rejected (ICMP port unreachable or TCP reset).
    Reject,
    /// Dropped.
    Drop,
}

/// What the rules do with new connections to one frontend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Programmed {
    /// Every DNAT target reachable from the frontend's dispatch.
    pub dnat: BTreeSet<SocketAddr>,
    /// A reject or drop reachable for the frontend.
    pub refusal: Option<Refusal>,
    /// Ways some new connections miss every DNAT target although the
    /// frontend is dispatched (nftables: a slot a `numgen`/hash can pick
    /// that its map lacks), one sentence each.
    pub unmapped: Vec<String>,
}
