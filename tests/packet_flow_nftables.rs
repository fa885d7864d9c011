//! Real packets through `--proxy-mode nftables`: the same cluster, objects
//! and packet-flow matrix as `packet_flow_iptables.rs` (unchanged rows),
//! then what is particular to the nftables mode: the table is ours alone,
//! a foreign edit of it is repaired by the periodic drift check (`GETGEN`),
//! an agent restart keeps connections, and `--cleanup` deletes only our
//! tables. The agent binary runs in node-a against a real kube-apiserver.
//!
//! SCTP: this kernel has no SCTP sockets, so no SCTP packet is sent; the
//! SCTP Service's dispatch element is checked in the kernel's table.

mod support;

use std::time::Duration;

use kube::api::DeleteParams;
use support::agent_process::{AgentProcess, tail};
use support::netns::{Cluster, Outcome, Proto};
use support::scenario::{PROBE_TIMEOUT, Scenario, check, eventually, sa};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_flow_through_nftables_mode() {
    let sc = Scenario::start("pfn").await;
    let (cluster, api, _ns) = (&sc.cluster, &sc.api, &sc.ns);

    // --- The agent, in node-a, through a forwarder inside node-a.
    let node_a = cluster.ns("node-a").to_string();
    let args = sc.agent_args("nftables");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // What an iptables-mode agent left on this node (a node switched modes):
    // the nftables agent removes it at startup, as kube-proxy does.
    cluster.run("node-a", &["iptables", "-t", "nat", "-N", "SP-SERVICES"]);
    cluster.run("node-a", &["iptables", "-t", "nat", "-N", "SP-SVC-LEFTOVER"]);
    cluster.run(
        "node-a",
        &["iptables", "-t", "nat", "-A", "SP-SERVICES", "-j", "SP-SVC-LEFTOVER"],
    );
    let mut agent = AgentProcess::start(&node_a, &args, &sc.log);
    agent.wait_for_log("synced", 1, Duration::from_secs(60));
    let save = String::from_utf8_lossy(&cluster.exec("node-a", &["iptables-save", "-t", "nat"]).stdout).into_owned();
    assert!(
        !save.contains("SP-"),
        "the iptables mode's leftovers are still there:\n{save}\nagent log:\n{}",
        tail(&agent.log())
    );

    // --- The packet-flow matrix and affinity, as in every mode.
    let (rows, cl) = (Scenario::rows(), "client");
    sc.check_matrix(|| tail(&agent.log()));
    sc.check_affinity();

    // SCTP: the dispatch element is in the kernel's table.
    let table = nft_list(cluster, "ip");
    assert!(
        table.contains("10.96.0.20 . sctp . 3868"),
        "SCTP dispatch element missing:\n{table}"
    );

    // --- Foreign tables and rules that must survive syncs and --cleanup.
    cluster.run("node-a", &["nft", "add", "table", "ip", "foreign"]);
    cluster.run(
        "node-a",
        &[
            "nft",
            "add",
            "chain",
            "ip",
            "foreign",
            "input",
            "{ type filter hook input priority 0 ; }",
        ],
    );
    cluster.run(
        "node-a",
        &[
            "nft", "add", "rule", "ip", "foreign", "input", "tcp", "dport", "2222", "accept",
        ],
    );

    // --- A foreign edit of our table is found by the drift check and
    // repaired: the cluster IP's dispatch element deleted by hand.
    let web = nft_list(cluster, "ip");
    let element = web
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("10.96.0.10 . tcp . 80 :"))
        .unwrap_or_else(|| panic!("no dispatch element for 10.96.0.10:80:\n{web}"))
        .trim_end_matches(',')
        .to_string();
    let out = cluster.exec(
        "node-a",
        &[
            "nft",
            "delete",
            "element",
            "ip",
            "sliceproxy",
            "service-ips",
            &format!("{{ {} }}", element.split(" :").next().unwrap()),
        ],
    );
    assert!(
        out.status.success(),
        "nft delete element: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        check(cluster, &rows[0]).is_err(),
        "traffic should fail without the element"
    );
    eventually(
        "the drift check to restore the deleted element",
        Duration::from_secs(20),
        || check(cluster, &rows[0]),
    );

    // --- Partial syncs: a Service deleted stops answering, the rest keeps working.
    api.services
        .delete("ext", &DeleteParams::default())
        .await
        .expect("delete ext");
    eventually("ext to be removed", Duration::from_secs(20), || {
        match cluster.probe(cl, Proto::Tcp, sa("198.51.100.20:80"), PROBE_TIMEOUT) {
            Outcome::Answered { backend, .. } => Err(format!("still answered by {backend}")),
            _ => Ok(()),
        }
    });
    assert!(check(cluster, &rows[0]).is_ok(), "other services keep working");

    // --- An established TCP connection survives an agent restart.
    sc.check_restart_keeps_connections(&mut agent);
    assert!(check(cluster, &rows[0]).is_ok(), "rules after the restart");

    // --- A UDP client moves to the remaining endpoint when its endpoint goes.
    sc.check_udp_flow_moves().await;

    // --- --cleanup removes our tables and nothing else.
    agent.stop();
    let out = cluster.exec(
        "node-a",
        &[
            env!("CARGO_BIN_EXE_sliceproxy"),
            "--cleanup",
            "--proxy-mode",
            "nftables",
            "--hostname-override",
            "node-a",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:244::/32",
        ],
    );
    assert!(
        out.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tables = String::from_utf8_lossy(&cluster.exec("node-a", &["nft", "list", "tables"]).stdout).to_string();
    assert!(!tables.contains("sliceproxy"), "our tables are left:\n{tables}");
    assert!(tables.contains("table ip foreign"), "foreign table removed:\n{tables}");
}

/// Our table of `family` (`ip`, `ip6`) as `nft` lists it in node-a.
fn nft_list(cluster: &Cluster, family: &str) -> String {
    let out = cluster.exec("node-a", &["nft", "list", "table", family, "sliceproxy"]);
    assert!(
        out.status.success(),
        "nft list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
