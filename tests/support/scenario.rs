//! The packet-flow scenario every mode's agent runs
//! (`tests/packet_flow_iptables.rs`, `tests/packet_flow_nftables.rs`): one
//! namespace cluster (pods a1, a2 on node-a, the agent's node; b1, b2 on
//! node-b; an off-cluster client), one set of Services and EndpointSlices in
//! a real API server, and one matrix of probes with the outcome each must
//! have. A mode's test starts its agent with [`Scenario::agent_args`], runs
//! [`Scenario::check_matrix`] and [`Scenario::check_affinity`] unchanged,
//! then checks what is particular to its mode.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::agent_process::AgentProcess;
use super::controlplane::shared;
use super::netns::{Cluster, Family, Node, Outcome, Proto};
use super::proxy::GatedProxy;

/// How long one probe waits for an answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Whether the backend sees the client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Masq {
    /// Masqueraded: the backend sees another address.
    Yes,
    /// The client's own address.
    No,
    /// Not observable: a process on the node already uses the node's
    /// address, which is also what masquerading would pick.
    Unobservable,
}

/// What a probe must find.
#[derive(Debug, Clone)]
pub enum Expect {
    /// Answered by one of these backends (each seen at least once), and
    /// whether the backend saw the client's own address.
    Backends(&'static [&'static str], Masq),
    /// Refused at once (REJECT).
    Refused,
    /// No answer (DROP).
    Dropped,
}

pub struct Row {
    pub from: &'static str,
    pub source: Option<IpAddr>,
    pub proto: Proto,
    pub target: SocketAddr,
    pub expect: Expect,
    pub why: &'static str,
}

pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Check one row; `Err` explains what was seen instead.
pub fn check(cluster: &Cluster, row: &Row) -> Result<(), String> {
    let client_ip = row
        .source
        .unwrap_or_else(|| cluster.ip(row.from, if row.target.is_ipv4() { Family::V4 } else { Family::V6 }));
    let probe = || cluster.probe_from(row.from, row.source, row.proto, row.target, PROBE_TIMEOUT);
    match &row.expect {
        Expect::Refused => match probe() {
            Outcome::Refused => Ok(()),
            other => Err(format!("expected REJECT, saw {other:?}")),
        },
        Expect::Dropped => match probe() {
            Outcome::TimedOut => Ok(()),
            other => Err(format!("expected DROP, saw {other:?}")),
        },
        Expect::Backends(backends, masq) => {
            let mut seen = BTreeSet::new();
            // 24 tries: each of two equally likely backends is missed with
            // probability 2^-24.
            for _ in 0..24 {
                match probe() {
                    Outcome::Answered { backend, seen_client } => {
                        if !backends.contains(&backend.as_str()) {
                            return Err(format!("answered by {backend}, expected one of {backends:?}"));
                        }
                        let kept = seen_client == client_ip;
                        if (*masq == Masq::Yes && kept) || (*masq == Masq::No && !kept) {
                            return Err(format!(
                                "{backend} saw {seen_client}; client is {client_ip}; expected {masq:?}"
                            ));
                        }
                        seen.insert(backend);
                    }
                    other => return Err(format!("expected an answer from {backends:?}, saw {other:?}")),
                }
                if seen.len() == backends.len() && !seen.is_empty() && backends.len() == 1 {
                    break;
                }
            }
            let missing: Vec<_> = backends.iter().filter(|b| !seen.contains(**b)).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("never answered by {missing:?}"))
            }
        }
    }
}

pub fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

pub struct Api2 {
    pub services: Api<Service>,
    pub slices: Api<EndpointSlice>,
}

impl Api2 {
    pub async fn service(&self, name: &str, spec: Value) {
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).expect("Service");
        self.services
            .create(&PostParams::default(), &svc)
            .await
            .unwrap_or_else(|e| panic!("create Service {name}: {e}"));
    }
    pub async fn lb_status(&self, name: &str, ip: &str) {
        let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}});
        self.services
            .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .expect("LB status");
    }
    pub async fn slice(&self, name: &str, service: &str, family: &str, ports: Value, endpoints: Vec<Value>) {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
            "addressType": family, "ports": ports, "endpoints": endpoints,
        }))
        .expect("EndpointSlice");
        self.slices
            .create(&PostParams::default(), &slice)
            .await
            .unwrap_or_else(|e| panic!("create EndpointSlice {name}: {e}"));
    }
}

pub fn endpoint(cluster: &Cluster, pod: &str, family: Family) -> Value {
    let node = match cluster.node_of(pod) {
        Node::A => "node-a",
        Node::B => "node-b",
    };
    json!({"addresses": [cluster.ip(pod, family).to_string()], "nodeName": node, "conditions": {"ready": true}})
}

pub fn http(port: u16) -> Value {
    json!([{"name": "http", "port": port, "protocol": "TCP"}])
}

/// The cluster, its objects in the API server, and the way in for an agent.
pub struct Scenario {
    /// The namespaces: nodes, pods, the client.
    pub cluster: Cluster,
    /// The Kubernetes namespace holding the objects.
    pub ns: String,
    /// Its Services and EndpointSlices.
    pub api: Api2,
    /// The agent's kubeconfig (through `forwarder`, inside node-a).
    pub kubeconfig: PathBuf,
    /// Where the agent logs.
    pub log: PathBuf,
    /// The loopback forwarder inside node-a to the API server.
    pub forwarder: GatedProxy,
}

impl Scenario {
    /// Build the cluster and create every object of the scenario;
    /// `prefix` names the Kubernetes namespace (unique per test binary).
    pub async fn start(prefix: &str) -> Scenario {
        let cluster = Cluster::builder()
            .pod("a1", Node::A)
            .pod("a2", Node::A)
            .pod("b1", Node::B)
            .pod("b2", Node::B)
            .build();
        for pod in ["a1", "a2", "b1", "b2"] {
            cluster.start_echo(pod);
        }
        let cp = shared();
        let ns = cp.new_namespace(prefix);
        let client = cp.client().await;
        let api = Api2 {
            services: Api::namespaced(client.clone(), &ns),
            slices: Api::namespaced(client.clone(), &ns),
        };
        let ep = |pod: &str| endpoint(&cluster, pod, Family::V4);
        let ep6 = |pod: &str| endpoint(&cluster, pod, Family::V6);
        let dual = json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]});
        let with = |base: &Value, extra: Value| {
            let mut v = base.clone();
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            v
        };

        // Two ports (TCP and UDP), dual-stack.
        api.service("web", with(&dual, json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::10"], "ports": [
        {"name": "http", "port": 80, "targetPort": 8080}, {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}]}))).await;
        let web_ports = json!([{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}]);
        api.slice("web-v4", "web", "IPv4", web_ports.clone(), vec![ep("a2"), ep("b1")])
            .await;
        api.slice("web-v6", "web", "IPv6", web_ports, vec![ep6("a2"), ep6("b1")])
            .await;
        // NodePort, externalTrafficPolicy Cluster, dual-stack.
        api.service("np", with(&dual, json!({"type": "NodePort", "clusterIP": "10.96.0.11", "clusterIPs": ["10.96.0.11", "fd00:96::11"], "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]}))).await;
        api.slice("np-v4", "np", "IPv4", http(8080), vec![ep("a2"), ep("b1")])
            .await;
        api.slice("np-v6", "np", "IPv6", http(8080), vec![ep6("a2"), ep6("b1")])
            .await;
        // LoadBalancer, externalTrafficPolicy Local, a local and a remote endpoint.
        api.service("local", json!({"type": "LoadBalancer", "clusterIP": "10.96.0.12", "externalTrafficPolicy": "Local", "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30081}]})).await;
        api.lb_status("local", "203.0.113.10").await;
        api.slice("local-1", "local", "IPv4", http(8080), vec![ep("a2"), ep("b2")])
            .await;
        // externalTrafficPolicy Local without a local endpoint.
        api.service("remote", json!({"type": "NodePort", "clusterIP": "10.96.0.13", "externalTrafficPolicy": "Local", "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30082}]})).await;
        api.slice("remote-1", "remote", "IPv4", http(8080), vec![ep("b2")])
            .await;
        // internalTrafficPolicy Local without a local endpoint.
        api.service("itl", json!({"clusterIP": "10.96.0.14", "internalTrafficPolicy": "Local", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]})).await;
        api.slice("itl-1", "itl", "IPv4", http(8080), vec![ep("b1")]).await;
        // No endpoints at all.
        api.service("empty", json!({"type": "NodePort", "clusterIP": "10.96.0.15", "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30083}]})).await;
        // externalIPs.
        api.service("ext", json!({"clusterIP": "10.96.0.16", "externalIPs": ["198.51.100.20"], "ports": [{"name": "http", "port": 80, "targetPort": 8080}]})).await;
        api.slice("ext-1", "ext", "IPv4", http(8080), vec![ep("a2"), ep("b1")])
            .await;
        // LoadBalancer with loadBalancerSourceRanges.
        api.service("lbsrc", json!({"type": "LoadBalancer", "clusterIP": "10.96.0.17", "loadBalancerSourceRanges": ["198.51.100.7/32"], "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30084}]})).await;
        api.lb_status("lbsrc", "203.0.113.11").await;
        api.slice("lbsrc-1", "lbsrc", "IPv4", http(8080), vec![ep("b1")]).await;
        // Hairpin: a pod reaching itself through its Service.
        api.service(
            "selfsvc",
            json!({"clusterIP": "10.96.0.18", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
        )
        .await;
        api.slice("selfsvc-1", "selfsvc", "IPv4", http(8080), vec![ep("a1")])
            .await;
        // ClientIP session affinity.
        api.service("aff", json!({"clusterIP": "10.96.0.19", "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]})).await;
        api.slice("aff-1", "aff", "IPv4", http(8080), vec![ep("a2"), ep("b1")])
            .await;
        // SCTP (rules only: no SCTP sockets in this kernel).
        api.service("sctp", json!({"clusterIP": "10.96.0.20", "ports": [{"name": "diameter", "port": 3868, "targetPort": 3868, "protocol": "SCTP"}]})).await;
        api.slice(
            "sctp-1",
            "sctp",
            "IPv4",
            json!([{"name": "diameter", "port": 3868, "protocol": "SCTP"}]),
            vec![ep("a2")],
        )
        .await;

        let upstream: SocketAddr = cp
            .url()
            .trim_start_matches("https://")
            .parse()
            .expect("apiserver address");
        let forwarder = GatedProxy::start_in_netns(&cluster.netns_path("node-a"), upstream);
        let kubeconfig = cp.kubeconfig_via(&forwarder.url(), cp.admin_token());
        let log = cp.dir().join(format!("agent-{ns}.log"));
        Scenario {
            cluster,
            ns,
            api,
            kubeconfig,
            log,
            forwarder,
        }
    }

    /// The agent's command line in `mode`, with the scenario's settings
    /// (cluster CIDRs, quick syncs, no listeners).
    pub fn agent_args(&self, mode: &str) -> Vec<String> {
        [
            "--kubeconfig",
            self.kubeconfig.to_str().unwrap(),
            "--proxy-mode",
            mode,
            "--hostname-override",
            "node-a",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:244::/32",
            "--min-sync-period",
            "100ms",
            "--sync-period",
            "5s",
            "--healthz-bind-address",
            "",
            "--metrics-bind-address",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// An endpoint of `pod` in IPv4.
    pub fn ep(&self, pod: &str) -> Value {
        endpoint(&self.cluster, pod, Family::V4)
    }

    /// Every probe of the matrix and the outcome it must have, whatever the mode.
    pub fn rows() -> Vec<Row> {
        let (ca, cl) = ("a1", "client");
        vec![
            Row {
                from: ca,
                source: None,
                proto: Proto::Tcp,
                target: sa("10.96.0.10:80"),
                expect: Expect::Backends(&["a2", "b1"], Masq::No),
                why: "ClusterIP from a pod",
            },
            Row {
                from: ca,
                source: None,
                proto: Proto::Udp,
                target: sa("10.96.0.10:53"),
                expect: Expect::Backends(&["a2", "b1"], Masq::No),
                why: "ClusterIP UDP, second port",
            },
            Row {
                from: ca,
                source: None,
                proto: Proto::Tcp,
                target: sa("[fd00:96::10]:80"),
                expect: Expect::Backends(&["a2", "b1"], Masq::No),
                why: "ClusterIP IPv6",
            },
            Row {
                from: "node-a",
                source: None,
                proto: Proto::Tcp,
                target: sa("10.96.0.10:80"),
                expect: Expect::Backends(&["a2", "b1"], Masq::Unobservable),
                why: "ClusterIP from the node",
            },
            Row {
                from: cl,
                source: None,
                proto: Proto::Tcp,
                target: sa("10.96.0.10:80"),
                expect: Expect::Backends(&["a2", "b1"], Masq::Yes),
                why: "ClusterIP from off the cluster: masqueraded",
            },
            Row {
                from: cl,
                source: None,
                proto: Proto::Tcp,
                target: sa("192.168.50.10:30080"),
                expect: Expect::Backends(&["a2", "b1"], Masq::Yes),
                why: "NodePort, externalTrafficPolicy Cluster",
            },
            Row {
                from: cl,
                source: None,
                proto: Proto::Tcp,
                target: sa("[fd00:50::10]:30080"),
                expect: Expect::Backends(&["a2", "b1"], Masq::Yes),
                why: "NodePort IPv6",
            },
            Row {
                from: cl,
                source: None,
                proto: Proto::Tcp,
                target: sa("192.168.50.10:30081"),
                expect: Expect::Backends(&["a2"], Masq::No),
                why: "NodePort, Local: local endpoint, client address kept",
            },
            Row {
                from: cl,
                source: None,
                proto: Proto::Tcp,
                target: sa("203.0.113.10:80"),
                expect: Expect::Backends(&["a2"], Masq::No),
                why: "LoadBalancer IP, Local",
            },
            Row {
                from: ca,
                source: None,
                proto: Proto::Tcp,
                target: sa("203.0.113.10:80"),
                expect: Expect::Backends(&["a2", "b2"], Masq::No),
                why: "LoadBalancer IP, Local, from a pod: every endpoint",
            },
            Row {
                from: "node-a",
                source: None,
                proto: Proto::Tcp,
                target: sa("203.0.113.10:80"),
                expect: Expect::Backends(&["a2", "b2"], Masq::Unobservable),
                why: "LoadBalancer IP, Local, from the node: every endpoint",
            },
            Row {
                from: cl,
                source: None,
                proto: Proto::Tcp,
                target: sa("192.168.50.10:30082"),
                expect: Expect::Dropped,
                why: "NodePort, Local, no local endpoint",
            },
            Row {
                from: ca,
                source: None,
                proto: Proto::Tcp,
                target: sa("10.96.0.13:80"),
                expect: Expect::Backends(&["b2"], Masq::No),
                why: "its ClusterIP still serves",
            },
            Row {
                from: ca,
                source: None,
                proto: Proto::Tcp,
                target: sa("10.96.0.14:80"),
                expect: Expect::Dropped,
                why: "internalTrafficPolicy Local, no local endpoint",
            },
            Row {
                from: ca,
                source: None,
                proto: Proto::Tcp,
                target: sa("10.96.0.15:80"),
                expect: Expect::Refused,
                why: "no endpoints: REJECT",
            },
            Row {
                from: cl,
                source: None,
                proto: Proto::Tcp,
                target: sa("192.168.50.10:30083"),
                expect: Expect::Refused,
                why: "NodePort without endpoints: REJECT",
            },
            Row {
                from: cl,
                source: None,
                proto: Proto::Tcp,
                target: sa("198.51.100.20:80"),
                expect: Expect::Backends(&["a2", "b1"], Masq::Yes),
                why: "externalIP",
            },
            Row {
                from: cl,
                source: Some("198.51.100.7".parse().unwrap()),
                proto: Proto::Tcp,
                target: sa("203.0.113.11:80"),
                expect: Expect::Backends(&["b1"], Masq::Yes),
                why: "LoadBalancer from an allowed source range",
            },
            Row {
                from: cl,
                source: None,
                proto: Proto::Tcp,
                target: sa("203.0.113.11:80"),
                expect: Expect::Dropped,
                why: "LoadBalancer from outside its source ranges",
            },
            Row {
                from: ca,
                source: None,
                proto: Proto::Tcp,
                target: sa("10.96.0.18:80"),
                expect: Expect::Backends(&["a1"], Masq::Yes),
                why: "hairpin: a pod through its own Service is masqueraded",
            },
        ]
    }

    /// Wait for the last objects to be programmed, then check every row;
    /// `agent_log` is printed with the failures.
    pub fn check_matrix(&self, agent_log: impl Fn() -> String) {
        let cluster = &self.cluster;
        let rows = Self::rows();
        let cl = "client";
        cluster.add_address(cl, "198.51.100.7".parse().unwrap());
        // Wait for the last objects to be programmed, then check every row.
        eventually("the first sync", Duration::from_secs(30), || {
            check(cluster, &rows[rows.len() - 1])
        });
        let mut failures = Vec::new();
        for row in &rows {
            if let Err(e) = check(cluster, row) {
                failures.push(format!(
                    "{} -> {} ({:?}, {}): {e}",
                    row.from, row.target, row.proto, row.why
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "packet-flow matrix failures:\n{}\nagent log:\n{}",
            failures.join("\n"),
            agent_log()
        );
    }

    /// ClientIP affinity: one client always lands on the same endpoint.
    pub fn check_affinity(&self) {
        let cluster = &self.cluster;
        let answers: BTreeSet<String> = (0..12)
            .map(|_| {
                cluster
                    .probe("a1", Proto::Tcp, sa("10.96.0.19:80"), PROBE_TIMEOUT)
                    .backend()
                    .unwrap_or("none")
                    .to_string()
            })
            .collect();
        assert_eq!(answers.len(), 1, "affinity: {answers:?}");
    }

    /// An established TCP connection to a cluster IP survives an agent
    /// restart (and the rules stay while the agent is down).
    pub fn check_restart_keeps_connections(&self, agent: &mut AgentProcess) {
        let cluster = &self.cluster;
        let rows = Self::rows();
        let mut conn = cluster.connect("a1", sa("10.96.0.10:80"));
        let first = conn.ping().expect("ping before restart");
        agent.stop();
        assert_eq!(conn.ping().expect("ping while the agent is down"), first);
        assert!(check(cluster, &rows[0]).is_ok(), "rules stay while the agent is down");
        let synced = agent.count("synced");
        agent.restart();
        agent.wait_for_log("synced", synced + 1, Duration::from_secs(60));
        assert_eq!(conn.ping().expect("ping after restart"), first);
    }

    /// A UDP client moves to the remaining endpoint when its endpoint leaves
    /// the slice `web-v4` (stale conntrack entries are cleared).
    pub async fn check_udp_flow_moves(&self) {
        let flow = self.cluster.udp_flow("a1", sa("10.96.0.10:53"));
        let answer = flow.ask(PROBE_TIMEOUT).expect("dns answer");
        let old = answer.split(' ').next().unwrap().to_string();
        let keep = if old == "a2" { "b1" } else { "a2" };
        let patch = json!({"endpoints": [self.ep(keep)]});
        self.api
            .slices
            .patch("web-v4", &PatchParams::default(), &Patch::Merge(patch))
            .await
            .expect("patch web-v4");
        eventually("the UDP flow to move", Duration::from_secs(20), || {
            let a = flow.ask(PROBE_TIMEOUT).map_err(|e| e.to_string())?;
            if a.starts_with(keep) {
                Ok(())
            } else {
                Err(format!("still {a}"))
            }
        });
    }
}
