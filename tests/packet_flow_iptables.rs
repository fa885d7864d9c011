//! Real packets through `--proxy-mode iptables`. The agent binary runs in
//! the node-a namespace of a small namespace cluster, against a real
//! kube-apiserver (reached through a loopback forwarder inside node-a);
//! echo servers in pod namespaces tell which backend answered and which
//! client address it saw. One test, in phases, because the setup (control
//! plane, namespaces, agent) dominates its cost.
//!
//! SCTP: this kernel has no SCTP sockets, so no SCTP packet is sent; the
//! SCTP Service's rules are checked to be accepted by the kernel.

mod support;

use std::time::Duration;

use kube::api::DeleteParams;
use support::agent_process::{AgentProcess, tail};
use support::netns::{Cluster, Outcome, Proto};
use support::scenario::{PROBE_TIMEOUT, Scenario, check, eventually, sa};

fn iptables_save(cluster: &Cluster, tool: &str) -> String {
    cluster.run("node-a", &[tool])
}

/// The chain the dispatch rule with this comment jumps to.
fn chain_of(save: &str, comment: &str) -> String {
    let line = save
        .lines()
        .find(|l| l.starts_with("-A SP-SERVICES") && l.contains(comment))
        .unwrap_or_else(|| panic!("no dispatch rule for {comment}"));
    line.rsplit(' ').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_flow_through_iptables_mode() {
    let sc = Scenario::start("pf").await;
    let (cluster, api, ns) = (&sc.cluster, &sc.api, &sc.ns);

    // --- The agent, in node-a, through a forwarder inside node-a.
    let node_a = cluster.ns("node-a").to_string();
    let args = sc.agent_args("iptables");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // What an nftables-mode agent left on this node (a node switched modes):
    // the iptables agent removes it at startup, as kube-proxy does.
    cluster.run("node-a", &["nft", "add", "table", "ip", "sliceproxy"]);
    let mut agent = AgentProcess::start(&node_a, &args, &sc.log);
    agent.wait_for_log("synced", 1, Duration::from_secs(60));
    let tables = String::from_utf8_lossy(&cluster.exec("node-a", &["nft", "list", "tables"]).stdout).into_owned();
    assert!(
        !tables.contains("sliceproxy"),
        "the nftables mode's table is still there:\n{tables}"
    );

    // --- The packet-flow matrix and affinity, as in every mode.
    let (rows, cl) = (Scenario::rows(), "client");
    sc.check_matrix(|| tail(&agent.log()));
    sc.check_affinity();

    // SCTP rules were accepted by the kernel.
    let save = iptables_save(cluster, "iptables-save");
    assert!(
        save.lines()
            .any(|l| l.starts_with("-A SP-SERVICES") && l.contains("-p sctp") && l.contains("--dport 3868")),
        "SCTP dispatch rule missing:\n{save}"
    );

    // --- Someone flushes the nat table (every rule, then every chain): the
    // drift check on the next --sync-period tick (5 s here) sees our canary
    // chain gone and repairs with a full sync.
    let drift_before = agent.count("rules changed behind our back");
    cluster.run("node-a", &["iptables", "-t", "nat", "-F"]);
    cluster.run("node-a", &["iptables", "-t", "nat", "-X"]);
    let broken = check(cluster, &rows[0]);
    assert!(broken.is_err(), "traffic should fail without the nat rules");
    eventually(
        "the drift check's full sync to restore the flushed table",
        Duration::from_secs(20),
        || check(cluster, &rows[0]),
    );
    assert!(
        agent.count("rules changed behind our back") > drift_before,
        "repaired because of the drift check"
    );

    // --- Foreign rules (and a foreign chain) that must survive syncs and --cleanup.
    cluster.run(
        "node-a",
        &[
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "2222", "-j", "ACCEPT",
        ],
    );
    cluster.run("node-a", &["iptables", "-N", "FOREIGN-CHAIN"]);
    cluster.run("node-a", &["iptables", "-A", "FOREIGN-CHAIN", "-j", "RETURN"]);

    // --- A sync the kernel refuses leaves the old rules working.
    let ext_chain = chain_of(
        &iptables_save(cluster, "iptables-save"),
        &format!("{ns}/ext:http/TCP external IP"),
    );
    // A foreign rule now references one of our chains: deleting it must fail.
    cluster.run("node-a", &["iptables", "-t", "nat", "-N", "FOREIGN-REF"]);
    cluster.run(
        "node-a",
        &["iptables", "-t", "nat", "-A", "FOREIGN-REF", "-j", &ext_chain],
    );
    let failed_before = agent.count("sync failed");
    api.services
        .delete("ext", &DeleteParams::default())
        .await
        .expect("delete ext");
    agent.wait_for_log("sync failed", failed_before + 1, Duration::from_secs(20));
    assert!(check(cluster, &rows[0]).is_ok(), "other services keep working");
    assert!(
        check(cluster, rows.iter().find(|r| r.why == "externalIP").unwrap()).is_ok(),
        "the refused change left the old rules in place"
    );
    cluster.run("node-a", &["iptables", "-t", "nat", "-F", "FOREIGN-REF"]);
    cluster.run("node-a", &["iptables", "-t", "nat", "-X", "FOREIGN-REF"]);
    eventually(
        "the retried full sync to remove ext",
        Duration::from_secs(40),
        || match cluster.probe(cl, Proto::Tcp, sa("198.51.100.20:80"), PROBE_TIMEOUT) {
            Outcome::Answered { backend, .. } => Err(format!("still answered by {backend}")),
            _ => Ok(()),
        },
    );

    // --- An established TCP connection survives an agent restart.
    sc.check_restart_keeps_connections(&mut agent);

    // --- A UDP client moves to the remaining endpoint when its endpoint goes.
    sc.check_udp_flow_moves().await;

    // --- --cleanup removes everything of ours and nothing else.
    agent.stop();
    let out = cluster.exec(
        "node-a",
        &[
            env!("CARGO_BIN_EXE_sliceproxy"),
            "--cleanup",
            "--proxy-mode",
            "iptables",
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
    for tool in ["iptables-save", "ip6tables-save"] {
        let save = iptables_save(cluster, tool);
        assert!(!save.contains("SP-"), "{tool} still has our rules:\n{save}");
    }
    let save = iptables_save(cluster, "iptables-save");
    assert!(
        save.contains("-A INPUT -p tcp -m tcp --dport 2222 -j ACCEPT"),
        "foreign rule removed"
    );
    assert!(
        save.contains(":FOREIGN-CHAIN") && save.contains("-A FOREIGN-CHAIN -j RETURN"),
        "foreign chain removed"
    );
}
