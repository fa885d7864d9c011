//! Packet flow through `--proxy-mode ipvs` in a real kernel: this test boots
//! Debian's kernel under qemu (the CI host has no IPVS) and re-runs itself
//! inside (`SLICEPROXY_IN_VM`). There it builds the namespace cluster of
//! tests/support/netns.rs, runs the IPVS backend for node-a against a
//! Tracker fed from model objects, and probes. Every check prints
//! `IPVS-FLOW <name> ok`; the host asserts each one reported.
//!
//! Differences from iptables mode, by construction of IPVS (as upstream):
//! a frontend without any endpoint answers ICMP port-unreachable from IPVS
//! itself (a TCP client sees ECONNREFUSED, like REJECT); a Local-policy
//! frontend without a local endpoint is dropped by filter INPUT (SP-DROP),
//! which node-originated traffic never traverses (IPVS rewrites it in
//! LOCAL_OUT first); pods reaching a Local-policy external frontend get the
//! local endpoints only (no short-circuit to the cluster-wide set).
//!
//! The backend runs dual-stack (IPv4 + IPv6) with `strictARP` and non-zero
//! timeouts, as `--ipvs-strict-arp --ipvs-tcp-timeout ...` would configure it.

mod support;

use std::time::Duration;

use support::vm;

const TEST_NAME: &str = "ipvs_packet_flow_in_vm";

const CHECKS: &[&str] = &[
    "cluster_built",
    "full_sync",
    "strict_arp_applied",
    "strict_arp_no_arp_answer_for_service_ip",
    "timeouts_applied",
    "pod_to_cluster_ip_keeps_source",
    "client_to_cluster_ip_masqueraded",
    "node_port_masqueraded",
    "external_ip",
    "lb_source_range_allows",
    "lb_source_range_drops",
    "local_policy_without_local_endpoint_drops",
    "no_endpoints_refused",
    "other_port_of_service_ip_refused",
    "client_ip_affinity",
    "hairpin_masqueraded",
    "udp_client_to_cluster_ip_masqueraded",
    "udp_pod_to_cluster_ip_keeps_source",
    "ipv6_pod_to_cluster_ip_keeps_source",
    "ipv6_client_to_cluster_ip_masqueraded",
    "dual_stack_ipv4_half",
    "partial_sync_one_message_path",
    "graceful_termination_keeps_connection",
    "drained_real_server_deleted",
    "cleanup_removes_ours_only",
];

#[test]
fn ipvs_packet_flow_in_vm() {
    vm::run_checks(
        TEST_NAME,
        "IPVS-FLOW",
        CHECKS,
        Duration::from_secs(600),
        in_vm::scenario,
    );
}

mod in_vm {
    use std::fs::File;
    use std::net::{IpAddr, SocketAddr};
    use std::time::Duration;

    use serde_json::{Value, json};
    use sliceproxy::dataplane::exec::HostExec;
    use sliceproxy::dataplane::frontends::NodeSettings;
    use sliceproxy::dataplane::ipvs::link::{Links, RtLinks};
    use sliceproxy::dataplane::ipvs::netlink::{IpvsClient, Protocol as NlProto, Timeouts, VirtualService};
    use sliceproxy::dataplane::ipvs::{IpvsDataplane, IpvsDataplaneConfig, layout};
    use sliceproxy::dataplane::{Dataplane, SyncScope};
    use sliceproxy::model::IpFamily;
    use sliceproxy::policy::NodeContext;
    use sliceproxy::track::{ChangeSet, Tracker};
    use sliceproxy::watch::convert;

    use super::CHECKS;
    use crate::support::netns::{Cluster, Family, Node, Outcome, Proto, SERVICE_CIDR_V4, SERVICE_CIDR_V6};

    const ANSWER: Duration = Duration::from_secs(3);
    const SILENCE: Duration = Duration::from_millis(1500);

    fn ok(check: &str) {
        assert!(CHECKS.contains(&check), "unknown check {check}");
        println!("IPVS-FLOW {check} ok");
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn service(t: &mut Tracker, name: &str, spec: Value, status: Option<Value>) -> ChangeSet {
        let mut obj = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "flow", "name": name, "resourceVersion": "1"},
            "spec": spec,
        });
        if let Some(s) = status {
            obj["status"] = s;
        }
        let svc = serde_json::from_value(obj).expect("service object");
        t.apply_service(convert::service(&svc).expect("service converts"))
    }

    fn endpoints(t: &mut Tracker, name: &str, pods: &[(IpAddr, &str)]) -> ChangeSet {
        slice(
            t,
            name,
            "1",
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
            pods,
        )
    }

    /// One EndpointSlice `<name>-<suffix>`; the address type follows the pods'.
    fn slice(t: &mut Tracker, name: &str, suffix: &str, ports: Value, pods: &[(IpAddr, &str)]) -> ChangeSet {
        let eps: Vec<Value> = pods
            .iter()
            .map(|(ip, node)| json!({"addresses": [ip.to_string()], "nodeName": node, "conditions": {"ready": true}}))
            .collect();
        let v6 = pods.first().is_some_and(|(ip, _)| ip.is_ipv6());
        let obj = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": "flow", "name": format!("{name}-{suffix}"), "resourceVersion": "1",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": if v6 { "IPv6" } else { "IPv4" },
            "ports": ports,
            "endpoints": eps,
        }))
        .expect("slice object");
        t.apply_slice(convert::slice(&obj).expect("slice converts").expect("slice programs"))
    }

    fn port(p: u16) -> Value {
        json!([{"name": "http", "port": p, "protocol": "TCP"}])
    }

    /// Open the kernel sockets inside node-a's namespace (a socket keeps
    /// the namespace it was created in).
    fn sockets_in(path: std::path::PathBuf) -> (IpvsClient, RtLinks) {
        std::thread::spawn(move || {
            let f = File::open(&path).expect("open netns");
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            (
                IpvsClient::connect().expect("IPVS in node-a"),
                RtLinks::open().expect("rtnetlink in node-a"),
            )
        })
        .join()
        .expect("socket thread")
    }

    fn expect_answer(got: Outcome, backends: &[&str], seen: IpAddr, what: &str) -> String {
        match got {
            Outcome::Answered { backend, seen_client } => {
                assert!(backends.contains(&backend.as_str()), "{what}: answered by {backend}");
                assert_eq!(seen_client, seen, "{what}: source seen by {backend}");
                backend
            }
            other => panic!("{what}: {other:?}"),
        }
    }

    fn vs(addr: &str) -> VirtualService {
        VirtualService::new(NlProto::Tcp, sa(addr), "rr")
    }

    pub fn scenario() {
        // The VM image has no netbase: ipset resolves `tcp:80` with
        // getprotobyname(), which needs /etc/protocols (every real host has it).
        if !std::path::Path::new("/etc/protocols").exists() {
            std::fs::write("/etc/protocols", "tcp 6 TCP\nudp 17 UDP\nsctp 132 SCTP\n").expect("/etc/protocols");
        }
        // The image links only the plain names to xtables-nft-multi; the
        // backend calls the explicit `-nft` names, as on a real host.
        for t in ["iptables", "ip6tables"] {
            for suffix in ["", "-save", "-restore"] {
                let link = format!("/usr/sbin/{t}-nft{suffix}");
                if !std::path::Path::new(&link).exists() {
                    let _ = std::os::unix::fs::symlink("xtables-nft-multi", &link);
                }
            }
        }
        let c = Cluster::builder().pod("a1", Node::A).pod("b1", Node::B).build();
        for p in ["a1", "b1"] {
            c.start_echo(p);
        }
        let a1 = c.ip("a1", Family::V4);
        let b1 = c.ip("b1", Family::V4);
        let node_a = c.ip("node-a", Family::V4);
        let client = c.ip("client", Family::V4);
        let a1_6 = c.ip("a1", Family::V6);
        let b1_6 = c.ip("b1", Family::V6);
        let node_a6 = c.ip("node-a", Family::V6);
        ok("cluster_built");

        let (kernel, links) = sockets_in(c.netns_path("node-a"));
        let (mut probe_kernel, mut probe_links) = sockets_in(c.netns_path("node-a"));
        let cfg = IpvsDataplaneConfig {
            families: vec![IpFamily::V4, IpFamily::V6],
            settings: NodeSettings::new(
                &["10.244.0.0/16".parse().unwrap(), "fd00:244::/32".parse().unwrap()],
                false,
                &[node_a],
            ),
            scheduler: "rr".into(),
            graceful_timeout: Duration::from_secs(3),
            strict_arp: true,
            tcp_timeout: Duration::from_secs(3600),
            tcp_fin_timeout: Duration::ZERO,
            udp_timeout: Duration::from_secs(45),
            ..Default::default()
        };
        let mut dp = IpvsDataplane::new(
            Box::new(kernel),
            Box::new(links),
            Box::new(HostExec::in_netns(c.ns("node-a"))),
            cfg,
        );

        let mut t = Tracker::new(NodeContext::new("node-a"));
        service(
            &mut t,
            "web",
            json!({"clusterIP": "10.96.0.10", "ports": port(80)}),
            None,
        );
        endpoints(&mut t, "web", &[(a1, "node-a"), (b1, "node-b")]);
        service(
            &mut t,
            "np",
            json!({"type": "NodePort", "clusterIP": "10.96.0.11",
                   "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}]}),
            None,
        );
        endpoints(&mut t, "np", &[(b1, "node-b")]);
        service(
            &mut t,
            "ext",
            json!({"clusterIP": "10.96.0.12", "externalIPs": ["198.51.100.20"], "ports": port(8080)}),
            None,
        );
        endpoints(&mut t, "ext", &[(a1, "node-a")]);
        service(
            &mut t,
            "lb",
            json!({"type": "LoadBalancer", "clusterIP": "10.96.0.13",
                   "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30081}],
                   "loadBalancerSourceRanges": [format!("{client}/32")]}),
            Some(json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}})),
        );
        endpoints(&mut t, "lb", &[(b1, "node-b")]);
        service(
            &mut t,
            "lblocal",
            json!({"type": "LoadBalancer", "clusterIP": "10.96.0.14", "externalTrafficPolicy": "Local",
                   "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30082}]}),
            Some(json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.11"}]}})),
        );
        endpoints(&mut t, "lblocal", &[(b1, "node-b")]);
        service(
            &mut t,
            "empty",
            json!({"clusterIP": "10.96.0.70", "ports": port(80)}),
            None,
        );
        service(
            &mut t,
            "sticky",
            json!({"clusterIP": "10.96.0.20", "ports": port(80), "sessionAffinity": "ClientIP"}),
            None,
        );
        endpoints(&mut t, "sticky", &[(a1, "node-a"), (b1, "node-b")]);
        service(
            &mut t,
            "drain",
            json!({"clusterIP": "10.96.0.30", "ports": port(80)}),
            None,
        );
        endpoints(&mut t, "drain", &[(b1, "node-b")]);
        service(
            &mut t,
            "hair",
            json!({"clusterIP": "10.96.0.40", "ports": port(80)}),
            None,
        );
        endpoints(&mut t, "hair", &[(a1, "node-a")]);
        // UDP: port 53 -> the echo servers' 5353.
        service(
            &mut t,
            "dns",
            json!({"clusterIP": "10.96.0.53", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}),
            None,
        );
        let dns_port = json!([{"name": "dns", "port": 5353, "protocol": "UDP"}]);
        slice(&mut t, "dns", "1", dns_port, &[(a1, "node-a")]);
        // Dual-stack ClusterIP, a1 only (so that b1 -> it is not hairpin).
        service(
            &mut t,
            "dual",
            json!({"clusterIP": "10.96.0.60", "clusterIPs": ["10.96.0.60", "fd00:96::60"],
                   "ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"], "ports": port(80)}),
            None,
        );
        let http = json!([{"name": "http", "port": 8080, "protocol": "TCP"}]);
        slice(&mut t, "dual", "v4", http.clone(), &[(a1, "node-a")]);
        slice(&mut t, "dual", "v6", http, &[(a1_6, "node-a")]);

        let stats = dp.sync(t.table(), &SyncScope::Full).expect("full sync");
        println!("full sync: {stats:?}");
        println!("{}", c.run("node-a", &["sysctl", "net.ipv4.vs.conntrack"]));
        ok("full_sync");

        // strictARP: per-namespace sysctls, read back in node-a.
        for (key, want) in [("arp_ignore", "1"), ("arp_announce", "2")] {
            let path = format!("/proc/sys/net/ipv4/conf/all/{key}");
            assert_eq!(c.run("node-a", &["cat", &path]).trim(), want, "{key}");
        }
        ok("strict_arp_applied");
        // node-b reaches the service range on-link (netns.rs): until now
        // node-a answered ARP for every address on its dummy interface.
        // With strictARP it does not, so nothing answers.
        let got = c.probe("node-b", Proto::Tcp, sa("10.96.0.40:80"), SILENCE);
        assert!(got.backend().is_none(), "service IP answered over ARP: {got:?}");
        ok("strict_arp_no_arp_answer_for_service_ip");
        // node-b runs no proxy of its own here: send its pods' service
        // traffic to node-a's IPVS by route instead (IPv6 needs this anyway:
        // ND answers only for addresses on the receiving interface).
        c.run(
            "node-b",
            &["ip", "route", "replace", SERVICE_CIDR_V4, "via", &node_a.to_string()],
        );
        c.run(
            "node-b",
            &[
                "ip",
                "-6",
                "route",
                "replace",
                SERVICE_CIDR_V6,
                "via",
                &node_a6.to_string(),
            ],
        );
        // IPVS timeouts are per namespace too; tcpfin 0 kept the kernel's 120.
        let want = Timeouts {
            tcp: 3600,
            tcp_fin: 120,
            udp: 45,
        };
        assert_eq!(probe_kernel.get_timeouts().expect("get timeouts"), want);
        ok("timeouts_applied");

        // Pod -> cluster IP: no masquerade.
        // (b1 -> a1 through a service whose only endpoint is a1; b1 reaching
        // itself would be hairpin and masqueraded.)
        let got = c.probe("b1", Proto::Tcp, sa("10.96.0.40:80"), ANSWER);
        expect_answer(got, &["a1"], b1, "b1 -> hair");
        ok("pod_to_cluster_ip_keeps_source");

        // Off-cluster client -> cluster IP: masqueraded to node-a.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let got = c.probe("client", Proto::Tcp, sa("10.96.0.10:80"), ANSWER);
            seen.insert(expect_answer(got, &["a1", "b1"], node_a, "client -> web"));
        }
        assert_eq!(seen.len(), 2, "rr spreads over both real servers: {seen:?}");
        ok("client_to_cluster_ip_masqueraded");

        let got = c.probe("client", Proto::Tcp, SocketAddr::new(node_a, 30080), ANSWER);
        expect_answer(got, &["b1"], node_a, "client -> node port");
        ok("node_port_masqueraded");

        let got = c.probe("client", Proto::Tcp, sa("198.51.100.20:8080"), ANSWER);
        expect_answer(got, &["a1"], node_a, "client -> external IP");
        ok("external_ip");

        let got = c.probe("client", Proto::Tcp, sa("203.0.113.10:80"), ANSWER);
        expect_answer(got, &["b1"], node_a, "client -> LB (allowed)");
        ok("lb_source_range_allows");

        let outside: IpAddr = "198.51.100.7".parse().unwrap();
        c.add_address("client", outside);
        let got = c.probe_from("client", Some(outside), Proto::Tcp, sa("203.0.113.10:80"), SILENCE);
        assert_eq!(got, Outcome::TimedOut, "LB from outside the source ranges");
        ok("lb_source_range_drops");

        let got = c.probe("client", Proto::Tcp, sa("203.0.113.11:80"), SILENCE);
        assert_eq!(got, Outcome::TimedOut, "Local policy without a local endpoint");
        ok("local_policy_without_local_endpoint_drops");

        let got = c.probe("client", Proto::Tcp, sa("10.96.0.70:80"), ANSWER);
        assert_eq!(got, Outcome::Refused, "no endpoints");
        ok("no_endpoints_refused");

        // node-a listens on 8080 (echo), but not through a service IP.
        c.start_echo("node-a");
        let got = c.probe("client", Proto::Tcp, sa("10.96.0.10:8080"), ANSWER);
        assert_eq!(got, Outcome::Refused, "other port of a service IP");
        ok("other_port_of_service_ip_refused");

        let first = expect_answer(
            c.probe("client", Proto::Tcp, sa("10.96.0.20:80"), ANSWER),
            &["a1", "b1"],
            node_a,
            "sticky",
        );
        for _ in 0..3 {
            let got = c.probe("client", Proto::Tcp, sa("10.96.0.20:80"), ANSWER);
            assert_eq!(expect_answer(got, &["a1", "b1"], node_a, "sticky"), first);
        }
        ok("client_ip_affinity");

        // a1 -> its own service: masqueraded (SP-LOOP-BACK), else the reply
        // would bypass IPVS.
        match c.probe("a1", Proto::Tcp, sa("10.96.0.40:80"), ANSWER) {
            Outcome::Answered { backend, seen_client } => {
                assert_eq!(backend, "a1");
                assert_ne!(seen_client, a1, "hairpin traffic must be masqueraded");
            }
            other => panic!("hairpin: {other:?}"),
        }
        ok("hairpin_masqueraded");

        let got = c.probe("client", Proto::Udp, sa("10.96.0.53:53"), ANSWER);
        expect_answer(got, &["a1"], node_a, "client -> UDP cluster IP");
        ok("udp_client_to_cluster_ip_masqueraded");
        let got = c.probe("b1", Proto::Udp, sa("10.96.0.53:53"), ANSWER);
        expect_answer(got, &["a1"], b1, "b1 -> UDP cluster IP");
        ok("udp_pod_to_cluster_ip_keeps_source");

        let got = c.probe("b1", Proto::Tcp, sa("[fd00:96::60]:80"), ANSWER);
        expect_answer(got, &["a1"], b1_6, "b1 -> IPv6 cluster IP");
        ok("ipv6_pod_to_cluster_ip_keeps_source");
        let got = c.probe("client", Proto::Tcp, sa("[fd00:96::60]:80"), ANSWER);
        expect_answer(got, &["a1"], node_a6, "client -> IPv6 cluster IP");
        ok("ipv6_client_to_cluster_ip_masqueraded");
        let got = c.probe("client", Proto::Tcp, sa("10.96.0.60:80"), ANSWER);
        expect_answer(got, &["a1"], node_a, "client -> dual-stack IPv4 cluster IP");
        ok("dual_stack_ipv4_half");

        // Graceful termination: an established connection survives its real
        // server's removal; new connections go elsewhere.
        let mut conn = c.connect("client", sa("10.96.0.30:80"));
        let line = conn.ping().expect("ping before");
        assert!(line.starts_with("b1 "), "{line}");
        let cs = endpoints(&mut t, "drain", &[(a1, "node-a")]);
        dp.sync(t.table(), &SyncScope::Partial(cs)).expect("partial sync");
        let dests = probe_kernel.list_destinations(&vs("10.96.0.30:80")).expect("list");
        let b1_rs = dests.iter().find(|d| d.addr == b1).expect("b1 still a real server");
        assert_eq!(b1_rs.weight, 0, "{dests:?}");
        assert!(dests.iter().any(|d| d.addr == a1 && d.weight == 1), "{dests:?}");
        ok("partial_sync_one_message_path");
        // The backend is driven directly here (no runner): tick() is what
        // housekeeping() runs; the latter also says when to come back.
        dp.tick().expect("tick");
        let line = conn.ping().expect("ping while draining");
        assert!(line.starts_with("b1 "), "{line}");
        let got = c.probe("client", Proto::Tcp, sa("10.96.0.30:80"), ANSWER);
        expect_answer(got, &["a1"], node_a, "new connection while draining");
        let dests = probe_kernel.list_destinations(&vs("10.96.0.30:80")).expect("list");
        assert!(dests.iter().any(|d| d.addr == b1), "kept while connected: {dests:?}");
        assert_eq!(
            dp.housekeeping().expect("housekeeping"),
            Some(Duration::from_secs(1)),
            "still draining: come back in a second"
        );
        ok("graceful_termination_keeps_connection");
        drop(conn);
        std::thread::sleep(Duration::from_millis(3200));
        dp.tick().expect("tick");
        let dests = probe_kernel.list_destinations(&vs("10.96.0.30:80")).expect("list");
        assert!(
            !dests.iter().any(|d| d.addr == b1),
            "deleted after the timeout: {dests:?}"
        );
        assert_eq!(dp.housekeeping().expect("housekeeping"), None, "nothing left to drain");
        ok("drained_real_server_deleted");

        // Cleanup: foreign IPVS service, ipset and chain survive.
        let foreign = vs("192.0.2.1:80");
        probe_kernel.add_service(&foreign).expect("foreign service");
        c.run("node-a", &["ipset", "create", "FOREIGN", "hash:ip"]);
        c.run("node-a", &["iptables", "-t", "nat", "-N", "FOREIGN-CHAIN"]);
        c.run(
            "node-a",
            &["iptables", "-t", "nat", "-A", "PREROUTING", "-j", "FOREIGN-CHAIN"],
        );
        dp.cleanup().expect("cleanup");
        let left = probe_kernel.list_services().expect("list");
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].same_config(&foreign), "{left:?}");
        let sets = c.run("node-a", &["ipset", "list", "-n"]);
        assert_eq!(sets.split_whitespace().collect::<Vec<_>>(), vec!["FOREIGN"], "{sets}");
        let save = c.run("node-a", &["iptables-save"]);
        assert!(!save.contains("SP-"), "{save}");
        assert!(save.contains("-A PREROUTING -j FOREIGN-CHAIN"), "{save}");
        assert_eq!(probe_links.addresses(layout::INTERFACE).expect("links"), None);
        ok("cleanup_removes_ours_only");
    }
}
