//! Strict in-memory stand-ins for the IPVS mode's kernel seams, for unit
//! tests, integration tests and benches (the `testing` feature; never in a
//! release build). [`FakeIpvs`] answers like the kernel does (`EEXIST`,
//! `ESRCH`/`ENOENT`, unknown schedulers, family mismatches) and counts every
//! netlink message a caller would have sent; [`FakeLinks`] keeps interfaces
//! and their addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::kernel::{IpvsKernel, ServiceId};
use super::link::Links;
use super::netlink::{
    AddressFamily, ForwardMethod, IpvsError, Protocol, RealServer, Result, ServiceFlags, Timeouts, VirtualService,
};

// === FakeIpvs ===

/// Schedulers the fake accepts (the `ip_vs_*` modules of a stock kernel).
pub const KNOWN_SCHEDULERS: &[&str] = &[
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos",
];

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const EINVAL: i32 = 22;

/// The kernel's defaults (`tcp_timeouts[]`, `udp_timeouts[]` in ip_vs_proto_*.c).
pub const DEFAULT_TIMEOUTS: Timeouts = Timeouts {
    tcp: 900,
    tcp_fin: 120,
    udp: 300,
};

/// `INT_MAX / HZ` for Debian's HZ=250: the largest timeout the kernel takes.
const MAX_TIMEOUT: u32 = i32::MAX as u32 / 250;

#[derive(Debug)]
struct FakeState {
    timeouts: Timeouts,
    services: BTreeMap<ServiceId, (VirtualService, Vec<RealServer>)>,
    messages: usize,
    log: Vec<String>,
    fail_next: Option<IpvsError>,
}

impl Default for FakeState {
    fn default() -> Self {
        FakeState {
            timeouts: DEFAULT_TIMEOUTS,
            services: BTreeMap::new(),
            messages: 0,
            log: Vec::new(),
            fail_next: None,
        }
    }
}

/// A strict in-memory IPVS table. Clones share the table, so a test can
/// hand one to the backend and inspect or tamper with another.
#[derive(Debug, Clone, Default)]
pub struct FakeIpvs {
    state: Arc<Mutex<FakeState>>,
}

impl FakeIpvs {
    /// An empty table.
    pub fn new() -> FakeIpvs {
        FakeIpvs::default()
    }

    fn st(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Netlink messages received so far (every call counts as one).
    pub fn messages(&self) -> usize {
        self.st().messages
    }

    /// Reset the message counter and log.
    pub fn reset_counters(&self) {
        let mut s = self.st();
        s.messages = 0;
        s.log.clear();
    }

    /// The calls received since the last reset, e.g. `"add_dest TCP 10.96.0.1:80 10.244.1.2:8080 w1"`.
    pub fn log(&self) -> Vec<String> {
        self.st().log.clone()
    }

    /// Every service and its real servers, sorted.
    pub fn snapshot(&self) -> Vec<(VirtualService, Vec<RealServer>)> {
        self.st()
            .services
            .values()
            .map(|(s, d)| {
                let mut d = d.clone();
                d.sort_by_key(|r| (r.addr, r.port));
                (s.clone(), d)
            })
            .collect()
    }

    /// Set the connection counters of a real server (what traffic would do).
    pub fn set_connections(&self, svc: ServiceId, addr: std::net::SocketAddr, active: u32, inactive: u32) -> bool {
        let mut s = self.st();
        let Some((_, dests)) = s.services.get_mut(&svc) else {
            return false;
        };
        match dests.iter_mut().find(|d| d.addr == addr.ip() && d.port == addr.port()) {
            Some(d) => {
                d.active_connections = active;
                d.inactive_connections = inactive;
                true
            }
            None => false,
        }
    }

    /// The connection timeouts as the table holds them (no message counted).
    pub fn timeouts(&self) -> Timeouts {
        self.st().timeouts
    }

    /// Insert a service directly (foreign state, or drift), bypassing counters.
    pub fn insert_raw(&self, svc: VirtualService, dests: Vec<RealServer>) {
        self.st().services.insert(ServiceId::of(&svc), (svc, dests));
    }

    /// Remove a service directly (drift), bypassing counters.
    pub fn remove_raw(&self, id: ServiceId) -> bool {
        self.st().services.remove(&id).is_some()
    }

    /// The next call fails with this error.
    pub fn fail_next(&self, e: IpvsError) {
        self.st().fail_next = Some(e);
    }

    fn begin(&self, what: String) -> Result<std::sync::MutexGuard<'_, FakeState>> {
        let mut s = self.st();
        s.messages += 1;
        s.log.push(what);
        if let Some(e) = s.fail_next.take() {
            return Err(e);
        }
        Ok(s)
    }
}

fn svc_text(svc: &VirtualService) -> String {
    let p = match svc.protocol {
        Protocol::Tcp => "TCP".to_string(),
        Protocol::Udp => "UDP".into(),
        Protocol::Sctp => "SCTP".into(),
        Protocol::Other(n) => n.to_string(),
    };
    format!("{p} {}", std::net::SocketAddr::new(svc.addr, svc.port))
}

fn dest_text(d: &RealServer) -> String {
    format!("{} w{}", std::net::SocketAddr::new(d.addr, d.port), d.weight)
}

fn validate_service(svc: &VirtualService) -> Result<()> {
    if !KNOWN_SCHEDULERS.contains(&svc.scheduler.as_str()) {
        // The kernel cannot load `ip_vs_<name>`.
        return Err(IpvsError::from_errno(ENOENT));
    }
    if svc.fwmark.is_none() && (svc.port == 0 || AddressFamily::of(&svc.addr) != svc.family) {
        return Err(IpvsError::from_errno(EINVAL));
    }
    if svc.flags.contains(ServiceFlags::PERSISTENT) && svc.timeout == 0 {
        return Err(IpvsError::from_errno(EINVAL));
    }
    Ok(())
}

fn validate_dest(svc: &VirtualService, d: &RealServer) -> Result<()> {
    if d.weight > i32::MAX as u32 || d.lower_threshold > d.upper_threshold && d.upper_threshold != 0 {
        return Err(IpvsError::from_errno(EINVAL));
    }
    if AddressFamily::of(&d.addr) != svc.family && d.fwd_method != ForwardMethod::Tunnel {
        return Err(IpvsError::from_errno(EINVAL));
    }
    Ok(())
}

impl IpvsKernel for FakeIpvs {
    fn set_timeouts(&mut self, t: &Timeouts) -> Result<()> {
        let mut s = self.begin(format!("set_timeouts {} {} {}", t.tcp, t.tcp_fin, t.udp))?;
        if [t.tcp, t.tcp_fin, t.udp].iter().any(|v| *v > MAX_TIMEOUT) {
            return Err(IpvsError::from_errno(EINVAL));
        }
        // Zero keeps the current value, as in ip_vs_set_timeout.
        let cur = &mut s.timeouts;
        for (new, old) in [
            (t.tcp, &mut cur.tcp),
            (t.tcp_fin, &mut cur.tcp_fin),
            (t.udp, &mut cur.udp),
        ] {
            if new != 0 {
                *old = new;
            }
        }
        Ok(())
    }

    fn get_timeouts(&mut self) -> Result<Timeouts> {
        let s = self.begin("get_timeouts".into())?;
        Ok(s.timeouts)
    }

    fn list_services(&mut self) -> Result<Vec<VirtualService>> {
        let s = self.begin("list_services".into())?;
        Ok(s.services
            .values()
            .map(|(svc, _)| {
                let mut svc = svc.clone();
                svc.flags = svc.flags | ServiceFlags::HASHED;
                svc.stats = Some(Default::default());
                svc
            })
            .collect())
    }

    fn add_service(&mut self, svc: &VirtualService) -> Result<()> {
        let mut s = self.begin(format!("add_service {} {}", svc_text(svc), svc.scheduler))?;
        validate_service(svc)?;
        let id = ServiceId::of(svc);
        if s.services.contains_key(&id) {
            return Err(IpvsError::Exists);
        }
        let mut stored = svc.clone();
        stored.stats = None;
        s.services.insert(id, (stored, Vec::new()));
        Ok(())
    }

    fn edit_service(&mut self, svc: &VirtualService) -> Result<()> {
        let mut s = self.begin(format!("edit_service {} {}", svc_text(svc), svc.scheduler))?;
        validate_service(svc)?;
        match s.services.get_mut(&ServiceId::of(svc)) {
            Some((stored, _)) => {
                *stored = VirtualService {
                    stats: None,
                    ..svc.clone()
                };
                Ok(())
            }
            None => Err(IpvsError::from_errno(ESRCH)),
        }
    }

    fn delete_service(&mut self, svc: &VirtualService) -> Result<()> {
        let mut s = self.begin(format!("delete_service {}", svc_text(svc)))?;
        match s.services.remove(&ServiceId::of(svc)) {
            Some(_) => Ok(()),
            None => Err(IpvsError::from_errno(ESRCH)),
        }
    }

    fn list_destinations(&mut self, svc: &VirtualService) -> Result<Vec<RealServer>> {
        let s = self.begin(format!("list_dests {}", svc_text(svc)))?;
        match s.services.get(&ServiceId::of(svc)) {
            // Newest first, as the kernel lists them.
            Some((_, d)) => Ok(d.iter().rev().cloned().collect()),
            None => Err(IpvsError::from_errno(ESRCH)),
        }
    }

    fn add_destination(&mut self, svc: &VirtualService, dest: &RealServer) -> Result<()> {
        let mut s = self.begin(format!("add_dest {} {}", svc_text(svc), dest_text(dest)))?;
        validate_dest(svc, dest)?;
        let Some((_, dests)) = s.services.get_mut(&ServiceId::of(svc)) else {
            return Err(IpvsError::from_errno(ESRCH));
        };
        if dests.iter().any(|d| d.addr == dest.addr && d.port == dest.port) {
            return Err(IpvsError::Exists);
        }
        dests.push(RealServer {
            active_connections: 0,
            inactive_connections: 0,
            persistent_connections: 0,
            stats: None,
            ..dest.clone()
        });
        Ok(())
    }

    fn edit_destination(&mut self, svc: &VirtualService, dest: &RealServer) -> Result<()> {
        let mut s = self.begin(format!("edit_dest {} {}", svc_text(svc), dest_text(dest)))?;
        validate_dest(svc, dest)?;
        let Some((_, dests)) = s.services.get_mut(&ServiceId::of(svc)) else {
            return Err(IpvsError::from_errno(ESRCH));
        };
        match dests.iter_mut().find(|d| d.addr == dest.addr && d.port == dest.port) {
            Some(d) => {
                d.weight = dest.weight;
                d.fwd_method = dest.fwd_method;
                d.upper_threshold = dest.upper_threshold;
                d.lower_threshold = dest.lower_threshold;
                d.tunnel = dest.tunnel;
                Ok(())
            }
            None => Err(IpvsError::from_errno(ENOENT)),
        }
    }

    fn delete_destination(&mut self, svc: &VirtualService, dest: &RealServer) -> Result<()> {
        let mut s = self.begin(format!("delete_dest {} {}", svc_text(svc), dest_text(dest)))?;
        let Some((_, dests)) = s.services.get_mut(&ServiceId::of(svc)) else {
            return Err(IpvsError::from_errno(ESRCH));
        };
        let before = dests.len();
        dests.retain(|d| !(d.addr == dest.addr && d.port == dest.port));
        if dests.len() == before {
            return Err(IpvsError::from_errno(ENOENT));
        }
        Ok(())
    }
}

// === FakeLinks ===

#[derive(Debug, Default)]
struct FakeLinkState {
    links: BTreeMap<String, (bool, BTreeSet<IpAddr>)>,
    calls: usize,
}

/// Interfaces in memory, for unit tests. Clones share state.
#[derive(Debug, Clone, Default)]
pub struct FakeLinks {
    state: Arc<Mutex<FakeLinkState>>,
}

impl FakeLinks {
    /// No interfaces.
    pub fn new() -> FakeLinks {
        FakeLinks::default()
    }

    fn st(&self) -> std::sync::MutexGuard<'_, FakeLinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The addresses of an interface, `None` if absent.
    pub fn addresses_of(&self, name: &str) -> Option<Vec<IpAddr>> {
        self.st().links.get(name).map(|(_, a)| a.iter().copied().collect())
    }

    /// Whether the interface exists and is up.
    pub fn is_up(&self, name: &str) -> bool {
        self.st().links.get(name).is_some_and(|(up, _)| *up)
    }

    /// Calls that changed something or read state.
    pub fn calls(&self) -> usize {
        self.st().calls
    }

    /// Tamper: add an address without the backend knowing.
    pub fn insert_raw(&self, name: &str, ip: IpAddr) {
        self.st().links.entry(name.to_string()).or_default().1.insert(ip);
    }
}

impl Links for FakeLinks {
    fn ensure_dummy(&mut self, name: &str) -> std::result::Result<(), String> {
        let mut s = self.st();
        s.calls += 1;
        s.links.entry(name.to_string()).or_default().0 = true;
        Ok(())
    }
    fn addresses(&mut self, name: &str) -> std::result::Result<Option<Vec<IpAddr>>, String> {
        let mut s = self.st();
        s.calls += 1;
        Ok(s.links.get(name).map(|(_, a)| a.iter().copied().collect()))
    }
    fn add_address(&mut self, name: &str, ip: IpAddr) -> std::result::Result<(), String> {
        let mut s = self.st();
        s.calls += 1;
        match s.links.get_mut(name) {
            Some((_, a)) => {
                a.insert(ip);
                Ok(())
            }
            None => Err(format!("interface {name} does not exist")),
        }
    }
    fn delete_address(&mut self, name: &str, ip: IpAddr) -> std::result::Result<(), String> {
        let mut s = self.st();
        s.calls += 1;
        if let Some((_, a)) = s.links.get_mut(name) {
            a.remove(&ip);
        }
        Ok(())
    }
    fn delete_link(&mut self, name: &str) -> std::result::Result<bool, String> {
        let mut s = self.st();
        s.calls += 1;
        Ok(s.links.remove(name).is_some())
    }
}
