//! `sliceproxy render`: the backend table as an operator reads it. For every
//! frontend of every service port, what each kind of client reaches.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::Serialize;

use crate::model::{IpFamily, ServicePortKey, ServiceType};
use crate::policy::{self, ClientKind, FrontendKind, MasqueradeConfig, PortPlan, TopologyMode, Verdict};
use crate::track::BackendTable;

/// What shapes the view beyond the table itself.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// Masquerade settings (`--masquerade-all`, `--cluster-cidr`).
    pub masq: MasqueradeConfig,
    /// Addresses node ports listen on; empty prints `*`.
    pub node_port_addresses: Vec<IpAddr>,
    /// Families to print (both by default).
    pub families: Vec<IpFamily>,
}

/// One frontend and what each client reaches through it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FrontendRow {
    /// `namespace/name:port/protocol`.
    pub service_port: ServicePortKey,
    /// Service type.
    pub service_type: ServiceType,
    /// Address family.
    pub family: IpFamily,
    /// Kind of frontend.
    pub frontend: FrontendKind,
    /// Address and port (`*:PORT` for node ports without known addresses).
    pub address: String,
    /// `loadBalancerSourceRanges` (load-balancer frontends only; others dropped).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_ranges: Vec<IpNet>,
    /// ClientIP session affinity timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity_timeout_seconds: Option<u32>,
    /// Topology mode that chose the cluster endpoints.
    pub topology: TopologyMode,
    /// Per client kind.
    pub routes: Vec<RouteRow>,
}

/// What one kind of client reaches.
#[derive(Debug, Clone, Serialize)]
pub struct RouteRow {
    /// The client kind.
    pub client: ClientKind,
    /// The verdict.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// Every frontend row of the table, in key order.
pub fn rows(table: &BackendTable, opts: &RenderOptions) -> Vec<FrontendRow> {
    let families: &[IpFamily] = if opts.families.is_empty() {
        &IpFamily::ALL
    } else {
        &opts.families
    };
    let mut out = Vec::new();
    for (key, plan) in table.plans() {
        for &family in families {
            if !plan.info.has_family(family) {
                continue;
            }
            for (frontend, address) in frontends(plan, family, opts) {
                let info = &plan.info;
                let source_ranges = if frontend == FrontendKind::LoadBalancer {
                    info.family(family).source_ranges.clone()
                } else {
                    Vec::new()
                };
                let routes = ClientKind::ALL
                    .iter()
                    .map(|&client| RouteRow {
                        client,
                        verdict: policy::route(plan, family, frontend, client, opts.masq, true),
                    })
                    .collect();
                out.push(FrontendRow {
                    service_port: key.clone(),
                    service_type: info.service_type,
                    family,
                    frontend,
                    address,
                    source_ranges,
                    affinity_timeout_seconds: info.affinity_timeout_secs,
                    topology: plan.family(family).topology,
                    routes,
                });
            }
        }
    }
    out
}

fn frontends(plan: &PortPlan, family: IpFamily, opts: &RenderOptions) -> Vec<(FrontendKind, String)> {
    let info = &plan.info;
    let f = info.family(family);
    let sock = |ip: IpAddr| SocketAddr::new(ip, info.port).to_string();
    let mut out = Vec::new();
    if let Some(ip) = f.cluster_ip {
        out.push((FrontendKind::ClusterIp, sock(ip)));
    }
    if let Some(np) = info.node_port {
        let addrs: Vec<&IpAddr> = opts
            .node_port_addresses
            .iter()
            .filter(|a| IpFamily::of(a) == family)
            .collect();
        if addrs.is_empty() {
            out.push((FrontendKind::NodePort, format!("*:{np}")));
        }
        for a in addrs {
            out.push((FrontendKind::NodePort, SocketAddr::new(*a, np).to_string()));
        }
    }
    out.extend(f.external_ips.iter().map(|ip| (FrontendKind::ExternalIp, sock(*ip))));
    out.extend(
        f.load_balancer_ips
            .iter()
            .map(|ip| (FrontendKind::LoadBalancer, sock(*ip))),
    );
    out
}

/// The rows as JSON.
pub fn to_json(rows: &[FrontendRow]) -> String {
    serde_json::to_string_pretty(rows).expect("render rows always serialize")
}

/// The rows as a readable table. Clients with the same verdict share a line.
pub fn to_text(rows: &[FrontendRow]) -> String {
    let mut lines: Vec<[String; 5]> = vec![[
        "SERVICE PORT".into(),
        "FRONTEND".into(),
        "CLIENTS".into(),
        "VERDICT".into(),
        "ENDPOINTS".into(),
    ]];
    for row in rows {
        let mut frontend = format!("{} {}", frontend_name(row.frontend), row.address);
        let mut notes = Vec::new();
        if !row.source_ranges.is_empty() {
            let ranges: Vec<String> = row.source_ranges.iter().map(|r| r.to_string()).collect();
            notes.push(format!("from {} only", ranges.join(",")));
        }
        if let Some(t) = row.affinity_timeout_seconds {
            notes.push(format!("affinity ClientIP {t}s"));
        }
        if row.topology != TopologyMode::None {
            notes.push(format!("topology {:?}", row.topology));
        }
        if !notes.is_empty() {
            let _ = write!(frontend, " ({})", notes.join("; "));
        }
        // Group clients that meet the same verdict.
        let mut groups: Vec<(Vec<ClientKind>, &Verdict)> = Vec::new();
        for r in &row.routes {
            match groups.iter_mut().find(|(_, v)| **v == r.verdict) {
                Some((clients, _)) => clients.push(r.client),
                None => groups.push((vec![r.client], &r.verdict)),
            }
        }
        for (i, (clients, verdict)) in groups.into_iter().enumerate() {
            let clients: Vec<&str> = clients.iter().map(|c| client_name(*c)).collect();
            let (verdict, endpoints) = match verdict {
                Verdict::Forward { endpoints, masquerade } => (
                    if *masquerade { "forward+masq" } else { "forward" }.to_string(),
                    endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(" "),
                ),
                Verdict::Reject => ("reject".into(), "(no endpoints)".into()),
                Verdict::Drop => ("drop".into(), "(none usable from here)".into()),
            };
            let (key, fe) = if i == 0 {
                (row.service_port.to_string(), frontend.clone())
            } else {
                (String::new(), String::new())
            };
            lines.push([key, fe, clients.join(","), verdict, endpoints]);
        }
    }
    let mut widths = [0usize; 4];
    for l in &lines {
        for (w, cell) in widths.iter_mut().zip(l.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for l in &lines {
        for (i, cell) in l.iter().enumerate() {
            if i < 4 {
                let _ = write!(out, "{cell:<w$}  ", w = widths[i]);
            } else {
                out.push_str(cell);
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    }
    out
}

fn frontend_name(k: FrontendKind) -> &'static str {
    match k {
        FrontendKind::ClusterIp => "ClusterIP",
        FrontendKind::NodePort => "NodePort",
        FrontendKind::ExternalIp => "ExternalIP",
        FrontendKind::LoadBalancer => "LoadBalancer",
    }
}

fn client_name(c: ClientKind) -> &'static str {
    match c {
        ClientKind::Pod => "pod",
        ClientKind::Node => "node",
        ClientKind::External => "external",
    }
}
