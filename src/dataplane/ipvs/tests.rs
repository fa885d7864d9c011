//! IPVS backend against the strict fake kernel: the diff between kernel
//! state and the table, one message per real-server change, graceful
//! termination, drift repair, foreign services, cleanup.

use std::sync::{Arc, Mutex};

use serde_json::json;

use super::fake::{self, FakeIpvs, FakeLinks};
use super::kernel::ServiceId;
use super::*;
use crate::dataplane::exec::ExecOutput;
use crate::policy::NodeContext;
use crate::testing::*;
use crate::track::{ChangeSet, Tracker};

/// Records commands; answers `ipset save` with what was restored (members
/// only, enough for ownership checks) and succeeds for everything else.
#[derive(Clone, Default)]
#[allow(clippy::type_complexity)]
struct RecExec {
    calls: Arc<Mutex<Vec<(String, Vec<String>, String)>>>,
    sets: Arc<Mutex<BTreeSet<SetEntry>>>,
}

impl Exec for RecExec {
    fn run(&mut self, program: &str, args: &[&str], stdin: &[u8]) -> std::io::Result<ExecOutput> {
        let input = String::from_utf8_lossy(stdin).into_owned();
        self.calls.lock().unwrap().push((
            program.to_string(),
            args.iter().map(|a| a.to_string()).collect(),
            input.clone(),
        ));
        let mut stdout = Vec::new();
        if program == "ipset" && args == ["save"] {
            for (s, e) in self.sets.lock().unwrap().iter() {
                stdout.extend_from_slice(format!("add {s} {e}\n").as_bytes());
            }
        }
        if program == "ipset" && args.contains(&"restore") {
            let mut sets = self.sets.lock().unwrap();
            for l in input.lines() {
                let w: Vec<&str> = l.split_whitespace().collect();
                match w.as_slice() {
                    ["add", s, e] if !s.ends_with("-T") => {
                        sets.insert((s.to_string(), e.to_string()));
                    }
                    ["del", s, e] => {
                        sets.remove(&(s.to_string(), e.to_string()));
                    }
                    ["swap", tmp, s] => {
                        let tmp_members: Vec<SetEntry> = input
                            .lines()
                            .filter_map(|l| l.strip_prefix(&format!("add {tmp} ")))
                            .map(|e| (s.to_string(), e.to_string()))
                            .collect();
                        sets.retain(|(n, _)| n != s);
                        sets.extend(tmp_members);
                    }
                    _ => {}
                }
            }
        }
        Ok(ExecOutput {
            success: true,
            code: Some(0),
            stdout,
            stderr: Vec::new(),
        })
    }
}

impl RecExec {
    fn count(&self, program: &str) -> usize {
        self.calls.lock().unwrap().iter().filter(|c| c.0 == program).count()
    }
    fn clear(&self) {
        self.calls.lock().unwrap().clear();
    }
    fn last_input(&self, program: &str) -> String {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|c| c.0 == program)
            .map(|c| c.2.clone())
            .unwrap_or_default()
    }
}

struct Rig {
    dp: IpvsDataplane,
    kernel: FakeIpvs,
    links: FakeLinks,
    exec: RecExec,
    now: Arc<Mutex<Instant>>,
}

fn rig() -> Rig {
    let kernel = FakeIpvs::new();
    let links = FakeLinks::new();
    let exec = RecExec::default();
    let now = Arc::new(Mutex::new(Instant::now()));
    let clock = now.clone();
    let cfg = IpvsDataplaneConfig {
        settings: NodeSettings::new(
            &["10.244.0.0/16".parse().unwrap()],
            false,
            &["192.168.50.10".parse().unwrap()],
        ),
        graceful_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let dp = IpvsDataplane::new(
        Box::new(kernel.clone()),
        Box::new(links.clone()),
        Box::new(exec.clone()),
        cfg,
    )
    .with_clock(Box::new(move || *clock.lock().unwrap()));
    Rig {
        dp,
        kernel,
        links,
        exec,
        now,
    }
}

fn svc(t: &mut Tracker, name: &str, ip: &str, proto: &str, spec: serde_json::Value) -> ChangeSet {
    let mut s = json!({"clusterIP": ip, "ports": [{"name": "http", "port": 80, "protocol": proto}]});
    for (k, v) in spec.as_object().unwrap() {
        s[k] = v.clone();
    }
    t.apply_service(service("ns", name, s))
}

fn eps(t: &mut Tracker, name: &str, proto: &str, ips: &[(&str, &str)]) -> ChangeSet {
    let e: Vec<_> = ips.iter().map(|(ip, node)| ep(ip, node)).collect();
    t.apply_slice(slice(
        "ns",
        &format!("{name}-1"),
        name,
        "IPv4",
        json!([port("http", 8080, proto)]),
        json!(e),
    ))
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn id(s: &str, proto: u16) -> ServiceId {
    let a = sa(s);
    ServiceId {
        fwmark: 0,
        protocol: proto,
        addr: a.ip(),
        port: a.port(),
    }
}

fn dests_of(k: &FakeIpvs, vip: &str) -> Vec<(SocketAddr, u32)> {
    let a = sa(vip);
    k.snapshot()
        .into_iter()
        .find(|(s, _)| s.addr == a.ip() && s.port == a.port())
        .map(|(_, d)| d.iter().map(|r| (SocketAddr::new(r.addr, r.port), r.weight)).collect())
        .unwrap_or_default()
}

fn partial(r: &mut Rig, t: &Tracker, cs: ChangeSet) -> SyncStats {
    r.dp.sync(t.table(), &SyncScope::Partial(cs)).expect("partial sync")
}

fn tracker() -> Tracker {
    let mut t = Tracker::new(NodeContext::new("node-a"));
    svc(&mut t, "web", "10.96.0.10", "TCP", json!({}));
    eps(
        &mut t,
        "web",
        "TCP",
        &[("10.244.1.5", "node-a"), ("10.244.2.5", "node-b")],
    );
    t
}

#[test]
fn full_sync_programs_services_addresses_sets_and_rules() {
    let mut r = rig();
    let mut t = tracker();
    svc(
        &mut t,
        "np",
        "10.96.0.20",
        "UDP",
        json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "protocol": "UDP", "nodePort": 30053}],
               "sessionAffinity": "ClientIP"}),
    );
    eps(&mut t, "np", "UDP", &[("10.244.2.9", "node-b")]);
    r.dp.sync(t.table(), &SyncScope::Full).unwrap();
    let snap = r.kernel.snapshot();
    assert_eq!(snap.len(), 3, "{snap:?}");
    assert_eq!(
        dests_of(&r.kernel, "10.96.0.10:80"),
        vec![(sa("10.244.1.5:8080"), 1), (sa("10.244.2.5:8080"), 1)]
    );
    assert_eq!(
        dests_of(&r.kernel, "192.168.50.10:30053"),
        vec![(sa("10.244.2.9:8080"), 1)]
    );
    let np = snap.iter().find(|(s, _)| s.port == 30053).unwrap();
    assert!(np.0.flags.contains(ServiceFlags::PERSISTENT));
    assert_eq!(np.0.timeout, 10800);
    assert!(r.links.is_up(layout::INTERFACE));
    assert_eq!(
        r.links.addresses_of(layout::INTERFACE).unwrap(),
        vec![sa("10.96.0.10:0").ip(), sa("10.96.0.20:0").ip()]
    );
    let sets = r.exec.sets.lock().unwrap().clone();
    assert!(sets.contains(&("SP-CLUSTER-IP".into(), "10.96.0.10,tcp:80".into())));
    assert!(sets.contains(&("SP-NODE-PORT".into(), "192.168.50.10,udp:30053".into())));
    assert!(sets.contains(&("SP-LOOP-BACK".into(), "10.244.2.9,udp:8080,10.244.2.9".into())));
    assert!(r.exec.last_input("iptables-nft-restore").contains("SP-IPVS-SERVICES"));
}

#[test]
fn one_real_server_change_is_one_netlink_message() {
    let mut r = rig();
    let mut t = tracker();
    r.dp.sync(t.table(), &SyncScope::Full).unwrap();
    r.kernel.reset_counters();
    r.exec.clear();

    // Add one endpoint: one NEW_DEST, no iptables, one ipset line (hairpin).
    let cs = eps(
        &mut t,
        "web",
        "TCP",
        &[
            ("10.244.1.5", "node-a"),
            ("10.244.2.5", "node-b"),
            ("10.244.2.6", "node-b"),
        ],
    );
    partial(&mut r, &t, cs);
    assert_eq!(r.kernel.log(), vec!["add_dest TCP 10.96.0.10:80 10.244.2.6:8080 w1"]);
    assert_eq!(r.kernel.messages(), 1);
    assert_eq!(r.exec.count("iptables-nft-restore"), 0);
    assert_eq!(r.exec.count("ipset"), 1);

    // Remove one: one SET_DEST (weight 0), the real server drains.
    r.kernel.reset_counters();
    let cs = eps(
        &mut t,
        "web",
        "TCP",
        &[("10.244.1.5", "node-a"), ("10.244.2.5", "node-b")],
    );
    partial(&mut r, &t, cs);
    assert_eq!(r.kernel.log(), vec!["edit_dest TCP 10.96.0.10:80 10.244.2.6:8080 w0"]);
    assert_eq!(
        r.dp.draining(),
        vec![(
            VsKey {
                addr: sa("10.96.0.10:0").ip(),
                port: 80,
                protocol: Protocol::Tcp
            },
            sa("10.244.2.6:8080")
        )]
    );

    // A change that does not touch the rules sends nothing.
    r.kernel.reset_counters();
    partial(&mut r, &t, ChangeSet::new());
    assert_eq!(r.kernel.messages(), 0);
}

#[test]
fn partial_sync_touches_only_changed_ports() {
    let mut r = rig();
    let mut t = tracker();
    svc(&mut t, "other", "10.96.0.11", "TCP", json!({}));
    eps(&mut t, "other", "TCP", &[("10.244.2.7", "node-b")]);
    r.dp.sync(t.table(), &SyncScope::Full).unwrap();
    // Tamper with "other": a partial sync of "web" must not notice or repair it.
    r.kernel.remove_raw(id("10.96.0.11:80", 6));
    r.kernel.reset_counters();
    let cs = svc(
        &mut t,
        "web",
        "10.96.0.10",
        "TCP",
        json!({"sessionAffinity": "ClientIP"}),
    );
    partial(&mut r, &t, cs);
    assert_eq!(r.kernel.log(), vec!["edit_service TCP 10.96.0.10:80 rr"]);
    // The full sync repairs the drift.
    r.kernel.reset_counters();
    r.dp.sync(t.table(), &SyncScope::Full).unwrap();
    assert_eq!(dests_of(&r.kernel, "10.96.0.11:80"), vec![(sa("10.244.2.7:8080"), 1)]);
}

#[test]
fn full_sync_diffs_kernel_state_removes_stale_keeps_foreign() {
    let mut r = rig();
    let t = tracker();
    // Kernel state left by a previous run, plus a foreign service.
    let mut web = VirtualService::new(netlink::Protocol::Tcp, sa("10.96.0.10:80"), "wrr");
    web.stats = None;
    r.kernel
        .insert_raw(web, vec![rs(sa("10.244.1.5:8080"), 3), rs(sa("10.244.9.9:8080"), 1)]);
    let stale = VirtualService::new(netlink::Protocol::Tcp, sa("10.96.0.99:80"), "rr");
    r.kernel.insert_raw(stale, vec![rs(sa("10.244.9.1:80"), 1)]);
    let foreign = VirtualService::new(netlink::Protocol::Tcp, sa("192.0.2.1:80"), "rr");
    r.kernel.insert_raw(foreign, vec![rs(sa("192.0.2.50:80"), 1)]);
    r.links.insert_raw(layout::INTERFACE, sa("10.96.0.99:0").ip());

    r.dp.sync(t.table(), &SyncScope::Full).unwrap();
    let log = r.kernel.log();
    let writes: Vec<&String> = log.iter().filter(|l| !l.starts_with("list")).collect();
    assert_eq!(
        writes,
        vec![
            "delete_service TCP 10.96.0.99:80",
            "edit_service TCP 10.96.0.10:80 rr",
            "edit_dest TCP 10.96.0.10:80 10.244.1.5:8080 w1",
            "add_dest TCP 10.96.0.10:80 10.244.2.5:8080 w1",
            "edit_dest TCP 10.96.0.10:80 10.244.9.9:8080 w0",
            "delete_dest TCP 10.96.0.10:80 10.244.9.9:8080 w0",
        ],
        "{log:?}"
    );
    let snap = r.kernel.snapshot();
    assert_eq!(snap.len(), 2);
    assert!(
        snap.iter().any(|(s, _)| s.addr == sa("192.0.2.1:0").ip()),
        "foreign kept"
    );
    assert_eq!(
        r.links.addresses_of(layout::INTERFACE).unwrap(),
        vec![sa("10.96.0.10:0").ip()]
    );
    // A second full sync finds nothing to change.
    r.kernel.reset_counters();
    r.dp.sync(t.table(), &SyncScope::Full).unwrap();
    assert!(
        r.kernel.log().iter().all(|l| l.starts_with("list")),
        "{:?}",
        r.kernel.log()
    );
}

#[test]
fn graceful_termination_waits_for_connections_or_timeout() {
    let mut r = rig();
    let mut t = tracker();
    r.dp.sync(t.table(), &SyncScope::Full).unwrap();
    let web = id("10.96.0.10:80", 6);
    assert!(r.kernel.set_connections(web, sa("10.244.2.5:8080"), 1, 0));
    let cs = eps(&mut t, "web", "TCP", &[("10.244.1.5", "node-a")]);
    partial(&mut r, &t, cs);
    assert_eq!(
        dests_of(&r.kernel, "10.96.0.10:80"),
        vec![(sa("10.244.1.5:8080"), 1), (sa("10.244.2.5:8080"), 0)]
    );
    // Still busy: kept, at weight 0.
    r.dp.tick().unwrap();
    assert_eq!(dests_of(&r.kernel, "10.96.0.10:80").len(), 2);
    // Back in the plan while draining: weight 1 again, no longer draining.
    r.kernel.reset_counters();
    let cs = eps(
        &mut t,
        "web",
        "TCP",
        &[("10.244.1.5", "node-a"), ("10.244.2.5", "node-b")],
    );
    partial(&mut r, &t, cs);
    assert_eq!(r.kernel.log(), vec!["edit_dest TCP 10.96.0.10:80 10.244.2.5:8080 w1"]);
    assert!(r.dp.draining().is_empty());
    // Removed again; connections drain to zero: deleted at the next check.
    let cs = eps(&mut t, "web", "TCP", &[("10.244.1.5", "node-a")]);
    partial(&mut r, &t, cs);
    r.kernel.set_connections(web, sa("10.244.2.5:8080"), 0, 0);
    r.dp.tick().unwrap();
    assert_eq!(dests_of(&r.kernel, "10.96.0.10:80"), vec![(sa("10.244.1.5:8080"), 1)]);
    assert!(r.dp.draining().is_empty());
    // A busy real server goes anyway once the timeout passes.
    let cs = eps(&mut t, "web", "TCP", &[]);
    partial(&mut r, &t, cs);
    r.kernel.set_connections(web, sa("10.244.1.5:8080"), 0, 4);
    r.dp.tick().unwrap();
    assert_eq!(dests_of(&r.kernel, "10.96.0.10:80").len(), 1);
    *r.now.lock().unwrap() += Duration::from_secs(61);
    r.dp.tick().unwrap();
    assert!(dests_of(&r.kernel, "10.96.0.10:80").is_empty());
}

#[test]
fn udp_real_servers_are_deleted_at_once() {
    let mut r = rig();
    let mut t = Tracker::new(NodeContext::new("node-a"));
    svc(&mut t, "dns", "10.96.0.53", "UDP", json!({}));
    eps(
        &mut t,
        "dns",
        "UDP",
        &[("10.244.1.53", "node-a"), ("10.244.2.53", "node-b")],
    );
    r.dp.sync(t.table(), &SyncScope::Full).unwrap();
    r.kernel.reset_counters();
    let cs = eps(&mut t, "dns", "UDP", &[("10.244.1.53", "node-a")]);
    partial(&mut r, &t, cs);
    assert_eq!(
        r.kernel.log(),
        vec!["delete_dest UDP 10.96.0.53:80 10.244.2.53:8080 w1"]
    );
    assert!(r.dp.draining().is_empty());
}

#[test]
fn deleting_a_service_removes_its_servers_address_and_members() {
    let mut r = rig();
    let mut t = tracker();
    r.dp.sync(t.table(), &SyncScope::Full).unwrap();
    r.kernel.reset_counters();
    let cs = t.delete_service(&crate::model::ServiceKey::new("ns", "web"));
    let stats = partial(&mut r, &t, cs);
    assert_eq!(stats.ports_removed, 1);
    assert_eq!(r.kernel.log(), vec!["delete_service TCP 10.96.0.10:80"]);
    assert!(r.links.addresses_of(layout::INTERFACE).unwrap().is_empty());
    let input = r.exec.last_input("ipset");
    assert!(input.contains("del SP-CLUSTER-IP 10.96.0.10,tcp:80"), "{input}");
    assert!(r.exec.sets.lock().unwrap().is_empty());
}

#[test]
fn local_policy_without_local_endpoint_drops_and_source_ranges_are_sets() {
    let mut t = Tracker::new(NodeContext::new("node-a"));
    t.apply_service(
        crate::watch::convert::service(&service_object(
            "ns",
            "lb",
            json!({"type": "LoadBalancer", "clusterIP": "10.96.0.30", "externalTrafficPolicy": "Local",
               "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}],
               "loadBalancerSourceRanges": ["192.168.50.0/24"]}),
            Some(json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}})),
        ))
        .unwrap(),
    );
    eps(&mut t, "lb", "TCP", &[("10.244.2.5", "node-b")]);
    let settings = NodeSettings::new(
        &["10.244.0.0/16".parse().unwrap()],
        false,
        &["192.168.50.10".parse().unwrap()],
    );
    let (_, plan) = t.table().plans().next().unwrap();
    let fp = FrontendPlan::new(plan, IpFamily::V4, &settings).unwrap();
    let l = layout::layout(&fp, "mh");
    let lb = l
        .services
        .iter()
        .find(|v| v.key.addr == sa("203.0.113.10:0").ip())
        .unwrap();
    assert!(lb.dests.is_empty());
    assert_eq!(lb.scheduler, "mh");
    let cip = l
        .services
        .iter()
        .find(|v| v.key.addr == sa("10.96.0.30:0").ip())
        .unwrap();
    assert_eq!(cip.dests, vec![sa("10.244.2.5:8080")]);
    for e in [
        ("SP-DROP", "203.0.113.10,tcp:80"),
        ("SP-DROP", "192.168.50.10,tcp:30080"),
        ("SP-EXTERNAL-LOCAL", "203.0.113.10,tcp:80"),
        ("SP-LB-FW", "203.0.113.10,tcp:80"),
        ("SP-LB-SRC", "203.0.113.10,tcp:80,192.168.50.0/24"),
    ] {
        assert!(
            l.entries.contains(&(e.0.to_string(), e.1.to_string())),
            "{e:?} in {:?}",
            l.entries
        );
    }
    assert!(
        !l.entries
            .iter()
            .any(|(s, e)| s == "SP-DROP" && e.starts_with("10.96.0.30"))
    );
}

#[test]
fn cleanup_removes_ours_only() {
    let mut r = rig();
    let t = tracker();
    r.dp.sync(t.table(), &SyncScope::Full).unwrap();
    let foreign = VirtualService::new(netlink::Protocol::Tcp, sa("192.0.2.1:80"), "rr");
    r.kernel.insert_raw(foreign, vec![]);
    r.exec.clear();
    r.dp.cleanup().unwrap();
    let snap = r.kernel.snapshot();
    assert_eq!(snap.len(), 1);
    assert_eq!(snap[0].0.addr, sa("192.0.2.1:0").ip());
    assert!(r.links.addresses_of(layout::INTERFACE).is_none());
    let calls = r.exec.calls.lock().unwrap().clone();
    assert!(
        calls
            .iter()
            .any(|c| c.0 == "iptables-nft" && c.1.contains(&"-D".to_string()))
    );
}

#[test]
fn refused_ipset_fails_the_sync_and_next_full_sync_recovers() {
    let mut r = rig();
    let t = tracker();
    r.kernel.fail_next(IpvsError::Kernel {
        errno: 12,
        message: "no memory".into(),
    });
    assert!(r.dp.sync(t.table(), &SyncScope::Full).is_err());
    r.dp.sync(t.table(), &SyncScope::Full).unwrap();
    assert_eq!(dests_of(&r.kernel, "10.96.0.10:80").len(), 2);
}

#[test]
fn render_is_deterministic() {
    let t = tracker();
    let settings = NodeSettings::default();
    let a = IpvsDataplane::render_full(t.table(), IpFamily::V4, &settings, "");
    assert_eq!(a, IpvsDataplane::render_full(t.table(), IpFamily::V4, &settings, ""));
    assert!(a.contains("-A TCP 10.96.0.10:80 -s rr"), "{a}");
}

fn rig_with(cfg: impl FnOnce(&mut IpvsDataplaneConfig)) -> Rig {
    let mut r = rig();
    cfg(&mut r.dp.cfg);
    r
}

#[test]
fn non_zero_timeouts_are_applied_once_at_the_first_full_sync() {
    let mut r = rig_with(|c| {
        c.tcp_timeout = Duration::from_secs(3600);
        c.udp_timeout = Duration::from_millis(45_900);
    });
    let t = tracker();
    r.dp.sync(t.table(), &SyncScope::Full).unwrap();
    // tcpfin 0 leaves the kernel's 120; sub-second parts are dropped.
    assert!(
        r.kernel.log().contains(&"set_timeouts 3600 0 45".to_string()),
        "{:?}",
        r.kernel.log()
    );
    assert_eq!(
        r.kernel.timeouts(),
        Timeouts {
            tcp: 3600,
            tcp_fin: 120,
            udp: 45
        }
    );
    r.kernel.reset_counters();
    r.dp.sync(t.table(), &SyncScope::Full).unwrap();
    assert!(
        !r.kernel.log().iter().any(|l| l.contains("timeouts")),
        "{:?}",
        r.kernel.log()
    );
}

#[test]
fn zero_timeouts_send_nothing_and_a_refusal_does_not_fail_the_sync() {
    let mut r = rig();
    let t = tracker();
    r.dp.sync(t.table(), &SyncScope::Full).unwrap();
    assert!(!r.kernel.log().iter().any(|l| l.contains("timeouts")));
    assert_eq!(r.kernel.timeouts(), fake::DEFAULT_TIMEOUTS);

    // Above INT_MAX/HZ: the kernel says EINVAL; logged, the sync goes on.
    let mut r = rig_with(|c| c.tcp_fin_timeout = Duration::from_secs(100 * 24 * 3600));
    r.dp.sync(t.table(), &SyncScope::Full).unwrap();
    assert_eq!(r.kernel.timeouts(), fake::DEFAULT_TIMEOUTS);
    assert_eq!(dests_of(&r.kernel, "10.96.0.10:80").len(), 2);
}

#[test]
fn strict_arp_sets_arp_ignore_and_arp_announce_with_the_vs_sysctls() {
    let sysctl_args = |r: &Rig| -> Vec<String> {
        let calls = r.exec.calls.lock().unwrap();
        let c = calls.iter().find(|c| c.0 == "sysctl").expect("sysctl called");
        c.1.clone()
    };
    let t = tracker();
    let mut r = rig();
    r.dp.sync(t.table(), &SyncScope::Full).unwrap();
    assert!(!sysctl_args(&r).iter().any(|a| a.contains("arp_")));

    let mut r = rig_with(|c| c.strict_arp = true);
    r.dp.sync(t.table(), &SyncScope::Full).unwrap();
    let args = sysctl_args(&r);
    assert!(args.contains(&"net.ipv4.conf.all.arp_ignore=1".to_string()), "{args:?}");
    assert!(
        args.contains(&"net.ipv4.conf.all.arp_announce=2".to_string()),
        "{args:?}"
    );
    assert!(args.contains(&"net.ipv4.vs.conntrack=1".to_string()), "{args:?}");
    // Once applied, not repeated.
    r.exec.clear();
    r.dp.sync(t.table(), &SyncScope::Full).unwrap();
    assert_eq!(r.exec.count("sysctl"), 0);
}
