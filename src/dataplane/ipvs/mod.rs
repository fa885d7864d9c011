//! `--proxy-mode ipvs`: kube-proxy's IPVS layout. Every service address is
//! bound to a dummy interface of ours; each (frontend address, port,
//! protocol) is an IPVS virtual server whose real servers are the plan's
//! endpoints; a constant-size iptables layer matches ipsets for
//! masquerading, source ranges, Local-policy drops and hairpin traffic.
//!
//! Edits are minimal: the backend keeps a model of what it programmed, so a
//! partial sync sends only the netlink messages for the difference (one
//! changed real server is one message); a full sync lists the kernel's
//! virtual and real servers, repairs drift and removes our stale ones.
//! A removed TCP/SCTP real server first gets weight 0 and is deleted once
//! its connections drain or [`IpvsDataplaneConfig::graceful_timeout`]
//! passes (checked on every full sync and by [`IpvsDataplane::tick`]); a UDP
//! real server is deleted at once.
//!
//! The first full sync also applies KubeProxyConfiguration's `ipvs` knobs
//! like kube-proxy's IPVS proxier does at start: `strictARP` as the
//! `arp_ignore`/`arp_announce` sysctls, and the non-zero TCP, TCP-FIN and
//! UDP connection timeouts (`ipvsadm --set`).

#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod kernel;
pub mod layout;
pub mod link;
pub mod netlink;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use self::kernel::IpvsKernel;
use self::layout::{PortLayout, SetEntry, VirtualServer, VsKey};
use self::link::Links;
use self::netlink::{ForwardMethod, IpvsError, RealServer, ServiceFlags, Timeouts, VirtualService};
use super::exec::{Exec, ToolError};
use super::frontends::{FrontendPlan, NodeSettings};
use super::xtables::{self, ChainOwner, Tools, Variant};
use super::{Dataplane, DataplaneError, Operation, SyncScope, SyncStats};
use crate::model::{IpFamily, Protocol, ServicePortKey};
use crate::netaddr::NodePortSource;
use crate::track::BackendTable;

/// Construction settings.
#[derive(Debug)]
pub struct IpvsDataplaneConfig {
    /// Families to program.
    pub families: Vec<IpFamily>,
    /// Which iptables to drive.
    pub variant: Variant,
    /// The node's settings (node-port addresses are replaced at every full
    /// sync when `node_ports` is set).
    pub settings: NodeSettings,
    /// IPVS scheduler (`rr` when empty).
    pub scheduler: String,
    /// When set, node-port addresses are the node's own addresses filtered by this.
    pub node_ports: Option<NodePortSource>,
    /// The dummy interface.
    pub interface: String,
    /// How long a removed real server may drain before it is deleted anyway.
    pub graceful_timeout: Duration,
    /// Virtual servers on these addresses are never deleted (`--ipvs-exclude-cidrs`).
    pub exclude_cidrs: Vec<IpNet>,
    /// Set the `net.ipv4.vs.*` sysctls IPVS mode needs (conntrack, expire_nodest_conn).
    pub set_sysctls: bool,
    /// `--ipvs-strict-arp`: also set `net.ipv4.conf.all.arp_ignore=1` and
    /// `arp_announce=2` (with `set_sysctls`), so that the service addresses
    /// on the dummy interface are neither answered for nor announced in ARP.
    pub strict_arp: bool,
    /// `--ipvs-tcp-timeout`: idle established TCP connections; zero leaves
    /// the kernel's value. Whole seconds (sub-second parts are dropped).
    pub tcp_timeout: Duration,
    /// `--ipvs-tcpfin-timeout`: TCP connections after a FIN; zero leaves the kernel's value.
    pub tcp_fin_timeout: Duration,
    /// `--ipvs-udp-timeout`: UDP "connections"; zero leaves the kernel's value.
    pub udp_timeout: Duration,
}

impl IpvsDataplaneConfig {
    /// The timeouts to send, in seconds; 0 (also for a sub-second duration)
    /// means "leave the kernel's value", which is what the kernel does with 0.
    pub fn timeouts(&self) -> Timeouts {
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        Timeouts {
            tcp: secs(self.tcp_timeout),
            tcp_fin: secs(self.tcp_fin_timeout),
            udp: secs(self.udp_timeout),
        }
    }
}

impl Default for IpvsDataplaneConfig {
    fn default() -> Self {
        IpvsDataplaneConfig {
            families: vec![IpFamily::V4],
            variant: Variant::Nft,
            settings: NodeSettings::default(),
            scheduler: String::new(),
            node_ports: None,
            interface: layout::INTERFACE.to_string(),
            graceful_timeout: Duration::from_secs(15 * 60),
            exclude_cidrs: Vec::new(),
            set_sysctls: true,
            strict_arp: false,
            tcp_timeout: Duration::ZERO,
            tcp_fin_timeout: Duration::ZERO,
            udp_timeout: Duration::ZERO,
        }
    }
}

/// What we believe one virtual server looks like in the kernel.
#[derive(Debug, Clone)]
struct KernelVs {
    svc: VirtualService,
    /// Real servers and their weights (0 = draining).
    dests: BTreeMap<SocketAddr, u32>,
}

/// The IPVS dataplane.
pub struct IpvsDataplane {
    kernel: Box<dyn IpvsKernel>,
    links: Box<dyn Links>,
    exec: Box<dyn Exec>,
    cfg: IpvsDataplaneConfig,
    clock: Box<dyn Fn() -> Instant + Send>,
    applied: HashMap<ServicePortKey, PortLayout>,
    model: HashMap<VsKey, KernelVs>,
    addr_refs: HashMap<IpAddr, usize>,
    entry_refs: HashMap<SetEntry, usize>,
    draining: BTreeMap<(VsKey, SocketAddr), Instant>,
    initialized: bool,
    sysctls_done: bool,
    timeouts_done: bool,
}

fn err(op: Operation, e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Refused {
        op,
        message: e.to_string(),
    }
}

/// A failed xtables command, as the agent reports it.
fn tool_error(e: ToolError) -> DataplaneError {
    let op = xtables::operation(e.program());
    match e {
        ToolError::Spawn { source, .. } => DataplaneError::Exec { op, source },
        e @ ToolError::Failed { .. } => err(op, e),
    }
}

fn nl_proto(p: Protocol) -> netlink::Protocol {
    match p {
        Protocol::Tcp => netlink::Protocol::Tcp,
        Protocol::Udp => netlink::Protocol::Udp,
        Protocol::Sctp => netlink::Protocol::Sctp,
    }
}

fn model_proto(p: netlink::Protocol) -> Option<Protocol> {
    match p {
        netlink::Protocol::Tcp => Some(Protocol::Tcp),
        netlink::Protocol::Udp => Some(Protocol::Udp),
        netlink::Protocol::Sctp => Some(Protocol::Sctp),
        netlink::Protocol::Other(_) => None,
    }
}

/// The netlink form of a desired virtual server.
pub fn to_netlink(v: &VirtualServer) -> VirtualService {
    let mut s = VirtualService::new(
        nl_proto(v.key.protocol),
        SocketAddr::new(v.key.addr, v.key.port),
        &v.scheduler,
    );
    if let Some(t) = v.persistence {
        s.flags = ServiceFlags::PERSISTENT;
        s.timeout = t;
    }
    s
}

fn key_of(svc: &VirtualService) -> Option<VsKey> {
    if svc.fwmark.is_some() {
        return None;
    }
    Some(VsKey {
        addr: svc.addr,
        port: svc.port,
        protocol: model_proto(svc.protocol)?,
    })
}

fn rs(addr: SocketAddr, weight: u32) -> RealServer {
    RealServer::new(addr, weight, ForwardMethod::Masquerade)
}

/// Bring one virtual server's real servers from `have` to `want`:
/// add the missing, re-weight the returning, drain (weight 0) or delete
/// (UDP) the removed. Returns on the first kernel error.
fn diff_dests(
    kernel: &mut dyn IpvsKernel,
    svc: &VirtualService,
    key: VsKey,
    have: &mut BTreeMap<SocketAddr, u32>,
    want: &[SocketAddr],
    draining: &mut BTreeMap<(VsKey, SocketAddr), Instant>,
    now: Instant,
) -> Result<(), IpvsError> {
    let want_set: BTreeSet<SocketAddr> = want.iter().copied().collect();
    for a in &want_set {
        match have.get(a) {
            None => {
                kernel.add_destination(svc, &rs(*a, 1))?;
                have.insert(*a, 1);
            }
            Some(&w) if w != 1 => {
                kernel.edit_destination(svc, &rs(*a, 1))?;
                have.insert(*a, 1);
            }
            Some(_) => {}
        }
        draining.remove(&(key, *a));
    }
    let stale: Vec<(SocketAddr, u32)> = have
        .iter()
        .filter(|(a, _)| !want_set.contains(a))
        .map(|(a, w)| (*a, *w))
        .collect();
    for (a, w) in stale {
        if key.protocol == Protocol::Udp {
            match kernel.delete_destination(svc, &rs(a, w)) {
                Ok(()) | Err(IpvsError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            have.remove(&a);
            draining.remove(&(key, a));
        } else {
            if w != 0 {
                kernel.edit_destination(svc, &rs(a, 0))?;
                have.insert(a, 0);
            }
            draining.entry((key, a)).or_insert(now);
        }
    }
    Ok(())
}

/// Our ipset members and set names found in `ipset save` output.
fn parse_ipset_save(save: &str) -> (BTreeSet<String>, BTreeSet<SetEntry>) {
    let mut sets = BTreeSet::new();
    let mut entries = BTreeSet::new();
    for line in save.lines() {
        let mut w = line.split_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some("create"), Some(name), _) if name.starts_with(layout::SET_PREFIX) => {
                sets.insert(name.to_string());
            }
            (Some("add"), Some(name), Some(entry)) if name.starts_with(layout::SET_PREFIX) => {
                entries.insert((name.to_string(), entry.to_string()));
            }
            _ => {}
        }
    }
    (sets, entries)
}

/// `(ip, protocol, port)` of an `ip,proto:port[,...]` member.
fn entry_frontend(entry: &str) -> Option<VsKey> {
    let mut parts = entry.split(',');
    let addr: IpAddr = parts.next()?.parse().ok()?;
    let (proto, port) = parts.next()?.split_once(':')?;
    let protocol = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        _ => return None,
    };
    Some(VsKey {
        addr,
        port: port.parse().ok()?,
        protocol,
    })
}

impl IpvsDataplane {
    /// A backend over the given kernel seams.
    pub fn new(
        kernel: Box<dyn IpvsKernel>,
        links: Box<dyn Links>,
        exec: Box<dyn Exec>,
        cfg: IpvsDataplaneConfig,
    ) -> IpvsDataplane {
        IpvsDataplane {
            kernel,
            links,
            exec,
            cfg,
            clock: Box::new(Instant::now),
            applied: HashMap::new(),
            model: HashMap::new(),
            addr_refs: HashMap::new(),
            entry_refs: HashMap::new(),
            draining: BTreeMap::new(),
            initialized: false,
            sysctls_done: false,
            timeouts_done: false,
        }
    }

    /// Replace the clock (tests of the graceful-termination timeout).
    pub fn with_clock(mut self, clock: Box<dyn Fn() -> Instant + Send>) -> IpvsDataplane {
        self.clock = clock;
        self
    }

    /// Real servers waiting to drain: (virtual server, real server).
    pub fn draining(&self) -> Vec<(VsKey, SocketAddr)> {
        self.draining.keys().copied().collect()
    }

    /// Delete drained real servers (and those past the timeout). Every full
    /// sync does this too (the runner's periodic resync is the periodic check).
    pub fn tick(&mut self) -> Result<(), DataplaneError> {
        let now = (self.clock)();
        self.process_draining(now)
    }

    fn port_layout(&self, plan: &crate::policy::PortPlan) -> PortLayout {
        let mut out = PortLayout::default();
        for &f in &self.cfg.families {
            if let Some(fp) = FrontendPlan::new(plan, f, &self.cfg.settings) {
                out.extend(layout::layout(&fp, layout::scheduler(&self.cfg.scheduler)));
            }
        }
        out
    }

    /// What a full sync programs for `family`, as text: virtual servers
    /// and real servers, dummy-interface addresses, ipsets and the
    /// iptables layer. Deterministic.
    pub fn render_full(table: &BackendTable, family: IpFamily, settings: &NodeSettings, scheduler: &str) -> String {
        let mut services: BTreeMap<VsKey, (VirtualServer, ServicePortKey)> = BTreeMap::new();
        let mut addrs = BTreeSet::new();
        let mut entries: BTreeSet<SetEntry> = BTreeSet::new();
        for (k, plan) in table.plans() {
            let Some(fp) = FrontendPlan::new(plan, family, settings) else {
                continue;
            };
            let l = layout::layout(&fp, layout::scheduler(scheduler));
            for v in l.services {
                services.entry(v.key).or_insert((v, k.clone()));
            }
            addrs.extend(l.addresses);
            entries.extend(l.entries);
        }
        let mut out = String::new();
        let _ = writeln!(out, "# IPVS virtual servers ({family})");
        for (v, owner) in services.values() {
            let mut line = format!("-A {} -s {}", v.key, v.scheduler);
            if let Some(t) = v.persistence {
                let _ = write!(line, " persistent {t}");
            }
            let _ = writeln!(out, "{line}  # {owner} {:?}", v.frontend);
            if v.dests.is_empty() {
                let _ = writeln!(out, "   (no real servers)");
            }
            for d in &v.dests {
                let _ = writeln!(out, "   -> {d} masq weight 1");
            }
        }
        let _ = writeln!(out, "# addresses on {}", layout::INTERFACE);
        for a in &addrs {
            let plen = if a.is_ipv4() { 32 } else { 128 };
            let _ = writeln!(out, "{a}/{plen}");
        }
        let _ = writeln!(out, "# ipset restore");
        out.push_str(&layout::set_definitions(family));
        for (set, e) in &entries {
            let _ = writeln!(out, "add {set} {e}");
        }
        let _ = writeln!(out, "# iptables-restore --noflush");
        out.push_str(&layout::iptables_rules(family, settings));
        out
    }

    fn run(&mut self, op: Operation, program: &str, args: &[&str], input: &str) -> Result<String, DataplaneError> {
        let out = self
            .exec
            .run(program, args, input.as_bytes())
            .map_err(|source| DataplaneError::Exec { op, source })?;
        if !out.success {
            return Err(err(op, format!("{program} {}: {}", args.join(" "), out.stderr_text())));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn ipset_restore(&mut self, input: &str) -> Result<(), DataplaneError> {
        if input.is_empty() {
            return Ok(());
        }
        self.run(Operation::Ipset, "ipset", &["-exist", "restore"], input)
            .map(drop)
    }

    fn set_sysctls(&mut self) {
        if !self.cfg.set_sysctls || self.sysctls_done {
            return;
        }
        // Netfilter must see IPVS connections for masquerading and hairpin
        // (upstream sets the same); connections to deleted real servers expire.
        let mut args = vec![
            "-w",
            "net.ipv4.vs.conntrack=1",
            "net.ipv4.vs.expire_nodest_conn=1",
            "net.ipv4.vs.expire_quiescent_template=1",
        ];
        if self.cfg.strict_arp {
            // Every service address sits on our dummy interface, so with the
            // default arp_ignore=0 the node answers ARP for all of them on
            // every link (and announces them as sources with arp_announce=0),
            // stealing LoadBalancer IPs from e.g. MetalLB's speaker. `all` is
            // max()ed with each interface's value, so it covers every link.
            args.extend(["net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"]);
        }
        match self.exec.run("sysctl", &args, b"") {
            Ok(o) if o.success => {
                self.sysctls_done = true;
                tracing::info!(strict_arp = self.cfg.strict_arp, "sysctl {}", args[1..].join(" "));
            }
            Ok(o) => tracing::warn!("sysctl {}: {}", args.join(" "), o.stderr_text()),
            Err(e) => tracing::warn!("cannot run sysctl: {e}"),
        }
    }

    /// `ipvsadm --set`, once, like kube-proxy at start. The timeouts are
    /// global to the network namespace (not per service), so there is no
    /// drift to repair; a refusal (EINVAL: above INT_MAX/HZ) is logged and
    /// not retried, as a restart would not change the answer either.
    fn set_timeouts(&mut self) {
        if self.timeouts_done {
            return;
        }
        self.timeouts_done = true;
        let want = self.cfg.timeouts();
        if want == Timeouts::default() {
            return;
        }
        match self.kernel.set_timeouts(&want) {
            Ok(()) => match self.kernel.get_timeouts() {
                Ok(now) => tracing::info!(requested = %want, kernel = %now, "IPVS timeouts set (0 = unchanged)"),
                Err(e) => tracing::info!(requested = %want, "IPVS timeouts set (0 = unchanged); reading back: {e}"),
            },
            Err(e) => tracing::warn!(requested = %want, "cannot set IPVS timeouts: {e}"),
        }
    }

    fn refresh_node_port_addresses(&mut self, dummy: &[IpAddr]) -> Result<(), DataplaneError> {
        let Some(source) = &mut self.cfg.node_ports else {
            return Ok(());
        };
        let chosen = source.read(dummy).map_err(|e| DataplaneError::Other(e.to_string()))?;
        self.cfg.settings.set_node_port_addresses(&chosen);
        Ok(())
    }

    fn iptables_family(&mut self, family: IpFamily) -> Result<usize, DataplaneError> {
        let tools = Tools::new(family, self.cfg.variant);
        let input = layout::iptables_rules(family, &self.cfg.settings);
        tools.restore(self.exec.as_mut(), &input).map_err(tool_error)?;
        for jump in layout::jumps() {
            if !tools.has_jump(self.exec.as_mut(), &jump) {
                tools.insert_jump(self.exec.as_mut(), &jump).map_err(tool_error)?;
            }
        }
        Ok(input.len())
    }

    fn our_ipsets(&mut self) -> Result<(BTreeSet<String>, BTreeSet<SetEntry>), DataplaneError> {
        let out = self
            .exec
            .run("ipset", &["save"], b"")
            .map_err(|source| DataplaneError::Exec {
                op: Operation::Ipset,
                source,
            })?;
        if !out.success {
            return Err(err(Operation::Ipset, format!("ipset save: {}", out.stderr_text())));
        }
        Ok(parse_ipset_save(&String::from_utf8_lossy(&out.stdout)))
    }

    fn excluded(&self, addr: &IpAddr) -> bool {
        self.cfg.exclude_cidrs.iter().any(|c| c.contains(addr))
    }

    /// Sync one virtual server against the model; on drift (the kernel
    /// disagrees with the model) re-read it from the kernel and retry once.
    fn sync_vs(&mut self, want: &VirtualServer, now: Instant) -> Result<(), DataplaneError> {
        match self.sync_vs_once(want, now) {
            Ok(()) => Ok(()),
            Err(IpvsError::NotFound(_) | IpvsError::Exists) => {
                tracing::info!(vs = %want.key, "IPVS state drifted; re-reading the virtual server");
                let svc = to_netlink(want);
                match self.kernel.list_destinations(&svc) {
                    Ok(list) => {
                        // The kernel's config may differ too: force an edit.
                        let mut stale = svc.clone();
                        stale.scheduler.clear();
                        let dests = list
                            .iter()
                            .map(|d| (SocketAddr::new(d.addr, d.port), d.weight))
                            .collect();
                        self.model.insert(want.key, KernelVs { svc: stale, dests });
                    }
                    Err(IpvsError::NotFound(_)) => {
                        self.model.remove(&want.key);
                    }
                    Err(e) => return Err(err(Operation::Ipvs, format!("list {}: {e}", want.key))),
                }
                self.sync_vs_once(want, now)
                    .map_err(|e| err(Operation::Ipvs, format!("{}: {e}", want.key)))
            }
            Err(e) => Err(err(Operation::Ipvs, format!("{}: {e}", want.key))),
        }
    }

    fn sync_vs_once(&mut self, want: &VirtualServer, now: Instant) -> Result<(), IpvsError> {
        let svc = to_netlink(want);
        if !self.model.contains_key(&want.key) {
            self.kernel.add_service(&svc)?;
            self.model.insert(
                want.key,
                KernelVs {
                    svc: svc.clone(),
                    dests: BTreeMap::new(),
                },
            );
        }
        let entry = self.model.get_mut(&want.key).expect("inserted above");
        if !entry.svc.same_config(&svc) {
            self.kernel.edit_service(&svc)?;
            entry.svc = svc.clone();
        }
        diff_dests(
            self.kernel.as_mut(),
            &svc,
            want.key,
            &mut entry.dests,
            &want.dests,
            &mut self.draining,
            now,
        )
    }

    fn delete_vs(&mut self, key: VsKey) -> Result<(), DataplaneError> {
        let svc = match self.model.remove(&key) {
            Some(k) => k.svc,
            None => {
                let mut s = VirtualService::new(nl_proto(key.protocol), SocketAddr::new(key.addr, key.port), "rr");
                s.scheduler.clear();
                s
            }
        };
        self.draining.retain(|(k, _), _| *k != key);
        match self.kernel.delete_service(&svc) {
            Ok(()) | Err(IpvsError::NotFound(_)) => Ok(()),
            Err(e) => Err(err(Operation::Ipvs, format!("delete {key}: {e}"))),
        }
    }

    fn process_draining(&mut self, now: Instant) -> Result<(), DataplaneError> {
        let keys: BTreeSet<VsKey> = self.draining.keys().map(|(k, _)| *k).collect();
        for key in keys {
            let Some(entry) = self.model.get(&key) else {
                self.draining.retain(|(k, _), _| *k != key);
                continue;
            };
            let svc = entry.svc.clone();
            let listed = match self.kernel.list_destinations(&svc) {
                Ok(l) => l,
                Err(IpvsError::NotFound(_)) => {
                    self.model.remove(&key);
                    self.draining.retain(|(k, _), _| *k != key);
                    continue;
                }
                Err(e) => return Err(err(Operation::Ipvs, format!("list {key}: {e}"))),
            };
            let waiting: Vec<(SocketAddr, Instant)> = self
                .draining
                .iter()
                .filter(|((k, _), _)| *k == key)
                .map(|((_, a), t)| (*a, *t))
                .collect();
            for (addr, since) in waiting {
                let found = listed.iter().find(|d| d.addr == addr.ip() && d.port == addr.port());
                let delete = match found {
                    None => {
                        self.draining.remove(&(key, addr));
                        if let Some(e) = self.model.get_mut(&key) {
                            e.dests.remove(&addr);
                        }
                        continue;
                    }
                    Some(d) if d.weight != 0 => false,
                    Some(d) => {
                        d.active_connections + d.inactive_connections == 0
                            || now.saturating_duration_since(since) >= self.cfg.graceful_timeout
                    }
                };
                if delete {
                    match self.kernel.delete_destination(&svc, &rs(addr, 0)) {
                        Ok(()) | Err(IpvsError::NotFound(_)) => {}
                        Err(e) => return Err(err(Operation::Ipvs, format!("delete {addr} from {key}: {e}"))),
                    }
                    self.draining.remove(&(key, addr));
                    if let Some(e) = self.model.get_mut(&key) {
                        e.dests.remove(&addr);
                    }
                }
            }
        }
        Ok(())
    }

    fn full_sync(&mut self, table: &BackendTable, stats: &mut SyncStats) -> Result<(), DataplaneError> {
        let now = (self.clock)();
        let iface = self.cfg.interface.clone();
        self.links.ensure_dummy(&iface).map_err(|e| err(Operation::Links, e))?;
        let dummy: Vec<IpAddr> = self
            .links
            .addresses(&iface)
            .map_err(|e| err(Operation::Links, e))?
            .unwrap_or_default();
        self.refresh_node_port_addresses(&dummy)?;
        self.set_sysctls();
        self.set_timeouts();

        let desired: HashMap<ServicePortKey, PortLayout> = table
            .plans()
            .map(|(k, p)| (k.clone(), self.port_layout(p)))
            .filter(|(_, l)| !l.is_empty())
            .collect();
        let mut want_vs: BTreeMap<VsKey, &VirtualServer> = BTreeMap::new();
        let mut want_addrs: HashMap<IpAddr, usize> = HashMap::new();
        let mut want_entries: HashMap<SetEntry, usize> = HashMap::new();
        for l in desired.values() {
            for v in &l.services {
                want_vs.entry(v.key).or_insert(v);
            }
            for a in &l.addresses {
                *want_addrs.entry(*a).or_default() += 1;
            }
            for e in &l.entries {
                *want_entries.entry(e.clone()).or_default() += 1;
            }
        }

        // What is ours in the kernel: addresses on our interface, members
        // of our sets, and what we programmed.
        let (_, old_members) = self.our_ipsets()?;
        let mut ours: BTreeSet<VsKey> = old_members.iter().filter_map(|(_, e)| entry_frontend(e)).collect();
        ours.extend(self.model.keys().copied());
        let dummy_set: BTreeSet<IpAddr> = dummy.iter().copied().collect();

        // ipsets: create, then replace each set's members atomically (swap).
        let mut input = String::new();
        let mut by_set: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (s, e) in want_entries.keys() {
            by_set.entry(s.as_str()).or_default().push(e.as_str());
        }
        for &f in &self.cfg.families {
            input.push_str(&layout::set_definitions(f));
            for def in layout::set_definitions(f).lines() {
                let name = def.split_whitespace().nth(1).unwrap_or_default();
                let tmp = format!("{name}-T");
                let _ = writeln!(input, "{}", def.replacen(name, &tmp, 1));
                let _ = writeln!(input, "flush {tmp}");
                if let Some(members) = by_set.get_mut(name) {
                    members.sort_unstable();
                    for m in members.iter() {
                        let _ = writeln!(input, "add {tmp} {m}");
                    }
                }
                let _ = writeln!(input, "swap {tmp} {name}");
                let _ = writeln!(input, "destroy {tmp}");
            }
        }
        self.ipset_restore(&input)?;
        stats.bytes_written += input.len();

        // Addresses before virtual servers: a new frontend answers at once.
        for a in want_addrs.keys() {
            if !dummy_set.contains(a) {
                self.links
                    .add_address(&iface, *a)
                    .map_err(|e| err(Operation::Links, e))?;
            }
        }

        // IPVS: read the kernel, repair, and remove our stale servers.
        let listed = self.kernel.list_services().map_err(|e| err(Operation::Ipvs, e))?;
        let mut model = HashMap::new();
        let mut stale = Vec::new();
        for svc in listed {
            let Some(key) = key_of(&svc) else { continue };
            if want_vs.contains_key(&key) {
                let dests = match self.kernel.list_destinations(&svc) {
                    Ok(d) => d,
                    Err(IpvsError::NotFound(_)) => continue,
                    Err(e) => return Err(err(Operation::Ipvs, format!("list {key}: {e}"))),
                };
                let svc = VirtualService {
                    stats: None,
                    flags: svc.flags.user_settable(),
                    ..svc
                };
                let dests = dests
                    .iter()
                    .map(|d| (SocketAddr::new(d.addr, d.port), d.weight))
                    .collect();
                model.insert(key, KernelVs { svc, dests });
            } else if (dummy_set.contains(&key.addr) || ours.contains(&key)) && !self.excluded(&key.addr) {
                stale.push(key);
            }
        }
        self.model = model;
        self.draining.retain(|(k, _), _| want_vs.contains_key(k));
        for key in stale {
            self.delete_vs(key)?;
        }
        let wanted: Vec<VirtualServer> = want_vs.values().map(|v| (*v).clone()).collect();
        for v in &wanted {
            self.sync_vs(v, now)?;
        }
        // Real servers found at weight 0 (a previous run was draining them)
        // are drained too.
        for (key, vs) in &self.model {
            for (a, w) in &vs.dests {
                if *w == 0 {
                    self.draining.entry((*key, *a)).or_insert(now);
                }
            }
        }

        for a in &dummy {
            if !want_addrs.contains_key(a) {
                self.links
                    .delete_address(&iface, *a)
                    .map_err(|e| err(Operation::Links, e))?;
            }
        }
        let families = self.cfg.families.clone();
        for f in families {
            stats.bytes_written += self.iptables_family(f)?;
        }

        stats.ports_written += desired.len();
        stats.ports_removed += self.applied.keys().filter(|k| !desired.contains_key(*k)).count();
        self.applied = desired;
        self.addr_refs = want_addrs;
        self.entry_refs = want_entries;
        self.initialized = true;
        self.process_draining(now)
    }

    fn partial_sync(
        &mut self,
        table: &BackendTable,
        keys: &[&ServicePortKey],
        stats: &mut SyncStats,
    ) -> Result<(), DataplaneError> {
        let now = (self.clock)();
        let iface = self.cfg.interface.clone();
        let mut changes: Vec<(ServicePortKey, PortLayout, PortLayout)> = Vec::new();
        for k in keys {
            let old = self.applied.get(*k).cloned().unwrap_or_default();
            let new = table.plan(k).map(|p| self.port_layout(p)).unwrap_or_default();
            if old != new {
                changes.push(((*k).clone(), old, new));
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        // Reference counts: an address or set member may be shared by ports.
        let (mut add_addrs, mut del_addrs) = (Vec::new(), Vec::new());
        let mut set_lines = String::new();
        for (_, old, new) in &changes {
            for a in &new.addresses {
                let n = self.addr_refs.entry(*a).or_default();
                *n += 1;
                if *n == 1 {
                    add_addrs.push(*a);
                }
            }
            for e in &new.entries {
                let n = self.entry_refs.entry(e.clone()).or_default();
                *n += 1;
                if *n == 1 {
                    let _ = writeln!(set_lines, "add {} {}", e.0, e.1);
                }
            }
            for a in &old.addresses {
                if let Some(n) = self.addr_refs.get_mut(a) {
                    *n -= 1;
                    if *n == 0 {
                        self.addr_refs.remove(a);
                        del_addrs.push(*a);
                    }
                }
            }
            for e in &old.entries {
                if let Some(n) = self.entry_refs.get_mut(e) {
                    *n -= 1;
                    if *n == 0 {
                        self.entry_refs.remove(e);
                        let _ = writeln!(set_lines, "del {} {}", e.0, e.1);
                    }
                }
            }
        }
        del_addrs.retain(|a| !self.addr_refs.contains_key(a));
        for a in &add_addrs {
            self.links
                .add_address(&iface, *a)
                .map_err(|e| err(Operation::Links, e))?;
        }
        self.ipset_restore(&set_lines)?;
        stats.bytes_written += set_lines.len();
        for (k, old, new) in changes {
            let new_keys: BTreeSet<VsKey> = new.services.iter().map(|v| v.key).collect();
            for v in old.services.iter().filter(|v| !new_keys.contains(&v.key)) {
                self.delete_vs(v.key)?;
            }
            for v in &new.services {
                self.sync_vs(v, now)?;
            }
            if new.is_empty() {
                self.applied.remove(&k);
                if !old.is_empty() {
                    stats.ports_removed += 1;
                }
            } else {
                self.applied.insert(k, new);
                stats.ports_written += 1;
            }
        }
        for a in &del_addrs {
            self.links
                .delete_address(&iface, *a)
                .map_err(|e| err(Operation::Links, e))?;
        }
        // Draining real servers are checked by full syncs and `tick`, so a
        // partial sync sends only the messages of its own change.
        Ok(())
    }

    fn cleanup_iptables(&mut self, family: IpFamily) -> Result<(), DataplaneError> {
        let tools = Tools::new(family, self.cfg.variant);
        for jump in layout::jumps() {
            tools.delete_jump(self.exec.as_mut(), &jump);
        }
        let Ok(save) = tools.save(self.exec.as_mut()) else {
            // No such tool or family on this host: nothing of ours there.
            return Ok(());
        };
        let chains = xtables::chains_of(&save, ChainOwner::IpvsLayer);
        tools.delete_chains(self.exec.as_mut(), &chains).map_err(tool_error)
    }
}

impl Dataplane for IpvsDataplane {
    fn name(&self) -> &'static str {
        "ipvs"
    }

    fn sync(&mut self, table: &BackendTable, scope: &SyncScope) -> Result<SyncStats, DataplaneError> {
        let start = Instant::now();
        let mut stats = SyncStats::default();
        match scope {
            SyncScope::Partial(changes) if self.initialized => {
                let keys: Vec<&ServicePortKey> = changes.iter().collect();
                self.partial_sync(table, &keys, &mut stats)?;
            }
            _ => {
                let r = self.full_sync(table, &mut stats);
                if r.is_err() {
                    // The model may be half-updated: the next full sync re-reads the kernel.
                    self.initialized = false;
                }
                r?;
            }
        }
        stats.duration = start.elapsed();
        Ok(stats)
    }

    fn housekeeping(&mut self) -> Result<Option<std::time::Duration>, DataplaneError> {
        self.tick()?;
        // Connection counts only move with traffic: a second is prompt
        // enough to free a drained real server, and cheap (one dump).
        Ok((!self.draining.is_empty()).then_some(std::time::Duration::from_secs(1)))
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        let iface = self.cfg.interface.clone();
        let dummy: BTreeSet<IpAddr> = self
            .links
            .addresses(&iface)
            .map_err(|e| err(Operation::Links, e))?
            .unwrap_or_default()
            .into_iter()
            .collect();
        let (sets, members) = match self.our_ipsets() {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("cleanup: {e}");
                Default::default()
            }
        };
        let ours: BTreeSet<VsKey> = members.iter().filter_map(|(_, e)| entry_frontend(e)).collect();
        match self.kernel.list_services() {
            Ok(services) => {
                for svc in services {
                    let Some(key) = key_of(&svc) else { continue };
                    if (dummy.contains(&key.addr) || ours.contains(&key)) && !self.excluded(&key.addr) {
                        match self.kernel.delete_service(&svc) {
                            Ok(()) | Err(IpvsError::NotFound(_)) => {}
                            Err(e) => return Err(err(Operation::Ipvs, format!("delete {key}: {e}"))),
                        }
                    }
                }
            }
            Err(IpvsError::NotSupported) => {}
            Err(e) => return Err(err(Operation::Ipvs, e)),
        }
        for f in self.cfg.families.clone() {
            self.cleanup_iptables(f)?;
        }
        if !sets.is_empty() {
            let mut input = String::new();
            for s in &sets {
                let _ = writeln!(input, "destroy {s}");
            }
            self.ipset_restore(&input)?;
        }
        self.links.delete_link(&iface).map_err(|e| err(Operation::Links, e))?;
        self.applied.clear();
        self.model.clear();
        self.addr_refs.clear();
        self.entry_refs.clear();
        self.draining.clear();
        self.initialized = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
