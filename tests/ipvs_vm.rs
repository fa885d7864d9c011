//! The IPVS netlink client against a real kernel: this test boots Debian's
//! kernel under qemu (the CI host kernel has no IPVS) and re-runs this very
//! test binary inside it; `SLICEPROXY_IN_VM` (set by the VM's /init) selects
//! the in-VM half. Each in-VM check prints `IPVS-CHECK <name> ok`; the host
//! half asserts that every expected check reported ok.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use sliceproxy::dataplane::ipvs::netlink::{
    AddressFamily, ForwardMethod, IpvsClient, IpvsError, Protocol, RealServer, ServiceFlags, Timeouts, VirtualService,
};
use support::vm;

const TEST_NAME: &str = "ipvs_netlink_client_against_real_kernel";

/// Every check the in-VM half must report, in order.
const CHECKS: &[&str] = &[
    "connect",
    "flush",
    "version",
    "add_service",
    "add_existing_service_is_exists",
    "add_two_real_servers",
    "edit_weight",
    "list_services_matches_written",
    "list_destinations_matches_written",
    "edit_missing_destination_is_not_found",
    "edit_service_scheduler",
    "delete_real_server",
    "delete_service",
    "delete_missing_service_is_not_found",
    "udp_sctp_ipv6_fwmark_services",
    "flush_empties",
    "set_timeouts_reads_back",
    "zero_timeout_leaves_kernel_value",
    "out_of_range_timeout_is_einval",
];

#[test]
fn ipvs_netlink_client_against_real_kernel() {
    vm::run_checks(
        TEST_NAME,
        "IPVS-CHECK",
        CHECKS,
        Duration::from_secs(300),
        in_vm::scenario,
    );
}

mod in_vm {
    use super::*;

    fn sock(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn ok(check: &str) {
        assert!(CHECKS.contains(&check), "unknown check {check}");
        println!("IPVS-CHECK {check} ok");
    }

    fn sorted(mut dests: Vec<RealServer>) -> Vec<RealServer> {
        dests.sort_by_key(|d| (d.addr, d.port));
        dests
    }

    fn assert_same_dests(got: Vec<RealServer>, want: &[RealServer]) {
        let got = sorted(got);
        let want = sorted(want.to_vec());
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(&want) {
            assert!(g.same_config(w), "listed {g:?}, wrote {w:?}");
        }
    }

    pub fn scenario() {
        let mut ipvs = IpvsClient::connect().expect("connect to IPVS");
        ok("connect");
        ipvs.flush().expect("flush");
        ok("flush");

        let info = ipvs.version().expect("version");
        println!(
            "IPVS version {:?}, connection table size {}",
            info.version(),
            info.connection_table_size
        );
        assert_eq!(info.version().0, 1);
        assert!(info.connection_table_size > 0);
        ok("version");

        let mut svc = VirtualService::new(Protocol::Tcp, sock("10.96.0.10:80"), "rr");
        ipvs.add_service(&svc).expect("add service");
        ok("add_service");
        match ipvs.add_service(&svc) {
            Err(IpvsError::Exists) => ok("add_existing_service_is_exists"),
            other => panic!("adding an existing service: {other:?}"),
        }

        let a = RealServer::new(sock("10.244.1.1:8080"), 1, ForwardMethod::Masquerade);
        let mut b = RealServer::new(sock("10.244.2.2:8080"), 1, ForwardMethod::Masquerade);
        ipvs.add_destination(&svc, &a).expect("add a");
        ipvs.add_destination(&svc, &b).expect("add b");
        ok("add_two_real_servers");
        b.weight = 3;
        ipvs.edit_destination(&svc, &b).expect("edit weight");
        ok("edit_weight");

        let services = ipvs.list_services().expect("list services");
        assert_eq!(services.len(), 1, "{services:?}");
        assert!(services[0].same_config(&svc), "listed {:?}, wrote {svc:?}", services[0]);
        assert!(services[0].stats.is_some());
        ok("list_services_matches_written");
        assert_same_dests(
            ipvs.list_destinations(&svc).expect("list dests"),
            &[a.clone(), b.clone()],
        );
        ok("list_destinations_matches_written");

        let ghost = RealServer::new(sock("10.244.9.9:8080"), 1, ForwardMethod::Masquerade);
        match ipvs.edit_destination(&svc, &ghost) {
            Err(IpvsError::NotFound(_)) => ok("edit_missing_destination_is_not_found"),
            other => panic!("editing a missing destination: {other:?}"),
        }

        svc.scheduler = "wrr".into();
        ipvs.edit_service(&svc).expect("edit scheduler");
        let services = ipvs.list_services().expect("list services");
        assert_eq!(services.len(), 1);
        assert_eq!(services[0].scheduler, "wrr");
        assert!(services[0].same_config(&svc));
        ok("edit_service_scheduler");

        ipvs.delete_destination(&svc, &a).expect("delete a");
        assert_same_dests(ipvs.list_destinations(&svc).expect("list dests"), &[b.clone()]);
        ok("delete_real_server");

        ipvs.delete_service(&svc).expect("delete service");
        assert!(ipvs.list_services().expect("list").is_empty());
        ok("delete_service");
        match ipvs.delete_service(&svc) {
            Err(IpvsError::NotFound(_)) => ok("delete_missing_service_is_not_found"),
            other => panic!("deleting a missing service: {other:?}"),
        }

        let udp = VirtualService::new(Protocol::Udp, sock("10.96.0.53:53"), "lc");
        let sctp = VirtualService::new(Protocol::Sctp, sock("10.96.0.7:9"), "sh");
        let mut v6 = VirtualService::new(Protocol::Tcp, sock("[fd00:96::1]:443"), "rr");
        v6.flags = ServiceFlags::PERSISTENT;
        v6.timeout = 10800;
        v6.netmask = 64;
        let fwm = VirtualService::fwmark(AddressFamily::Inet, 0x4000, "rr");
        let written = [udp, sctp, v6.clone(), fwm];
        for s in &written {
            ipvs.add_service(s).unwrap_or_else(|e| panic!("add {s:?}: {e}"));
        }
        let v6_dest = RealServer::new(sock("[fd00:244::5]:8443"), 7, ForwardMethod::Masquerade);
        ipvs.add_destination(&v6, &v6_dest).expect("add v6 dest");
        let listed = ipvs.list_services().expect("list");
        assert_eq!(listed.len(), written.len(), "{listed:?}");
        for w in &written {
            assert!(listed.iter().any(|l| l.same_config(w)), "{w:?} not in {listed:?}");
        }
        assert_same_dests(ipvs.list_destinations(&v6).expect("v6 dests"), &[v6_dest]);
        ok("udp_sctp_ipv6_fwmark_services");

        ipvs.flush().expect("flush");
        assert!(ipvs.list_services().expect("list").is_empty());
        ok("flush_empties");

        let before = ipvs.get_timeouts().expect("get timeouts");
        println!("IPVS timeouts at boot: {before}");
        let set = Timeouts {
            tcp: 3600,
            tcp_fin: 61,
            udp: 45,
        };
        ipvs.set_timeouts(&set).expect("set timeouts");
        assert_eq!(ipvs.get_timeouts().expect("get timeouts"), set);
        ok("set_timeouts_reads_back");
        ipvs.set_timeouts(&Timeouts {
            tcp: 0,
            tcp_fin: 0,
            udp: 77,
        })
        .expect("set udp only");
        assert_eq!(
            ipvs.get_timeouts().expect("get timeouts"),
            Timeouts { udp: 77, ..set },
            "0 leaves the kernel's value"
        );
        ok("zero_timeout_leaves_kernel_value");
        // INT_MAX / HZ is the ceiling; u32::MAX is above it for any HZ.
        match ipvs.set_timeouts(&Timeouts {
            tcp: u32::MAX,
            ..Timeouts::default()
        }) {
            Err(IpvsError::Kernel { errno: 22, .. }) => {}
            other => panic!("out-of-range timeout: {other:?}"),
        }
        assert_eq!(ipvs.get_timeouts().expect("get timeouts").tcp, 3600, "unchanged");
        ipvs.set_timeouts(&before).expect("restore timeouts");
        ok("out_of_range_timeout_is_einval");
    }
}
