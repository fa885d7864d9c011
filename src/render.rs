//! `sliceproxy render`: the backend table as an operator reads it. For every
//! frontend of every service port, what each kind of client reaches.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::Serialize;

use crate::dataplane::frontends::{ClientClass, Frontend, FrontendKind, FrontendPlan, NodeSettings, Verdict};
use crate::model::{IpFamily, ServicePortKey, ServiceType};
use crate::policy::TopologyMode;
use crate::track::BackendTable;

/// What shapes the view beyond the table itself.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// The node's settings (cluster CIDRs, masquerade-all, node-port
    /// addresses; without node-port addresses node ports print as `*`).
    pub settings: NodeSettings,
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
    pub client: ClientClass,
    /// The verdict.
    #[serde(flatten)]
    pub verdict: Reached,
}

/// A verdict with its endpoint set spelled out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "lowercase")]
pub enum Reached {
    /// DNAT to one of the endpoints.
    Forward {
        /// Candidate endpoints.
        endpoints: Vec<SocketAddr>,
        /// The endpoint sees the node's address instead of the client's.
        masquerade: bool,
    },
    /// Refused at once: the service port has no usable endpoint anywhere.
    Reject,
    /// Silently dropped: endpoints exist, but none this traffic may use.
    Drop,
}

impl Reached {
    /// Spell out a plan's verdict.
    pub fn of(fp: &FrontendPlan<'_>, verdict: Verdict) -> Reached {
        match verdict {
            Verdict::Forward { set, masquerade } => Reached::Forward {
                endpoints: fp.endpoints(set).to_vec(),
                masquerade,
            },
            Verdict::Reject => Reached::Reject,
            Verdict::Drop => Reached::Drop,
        }
    }
}

/// Every frontend row of the table, in key order, from the same frontend
/// plans the dataplanes program.
pub fn rows(table: &BackendTable, opts: &RenderOptions) -> Vec<FrontendRow> {
    let families: &[IpFamily] = if opts.families.is_empty() {
        &IpFamily::ALL
    } else {
        &opts.families
    };
    let mut out = Vec::new();
    for (_, plan) in table.plans() {
        for &family in families {
            let Some(fp) = FrontendPlan::new(plan, family, &opts.settings) else {
                continue;
            };
            for fe in &fp.frontends {
                out.push(row(&fp, fe, fe.socket().to_string()));
                if fe.kind == FrontendKind::ClusterIp
                    && let Some(np) = unaddressed_node_port(&fp)
                {
                    out.push(row(&fp, &np, format!("*:{}", np.port)));
                }
            }
        }
    }
    out
}

/// A node port without any node address of this family still has its
/// rules: it is shown, after the cluster IP, on `*`.
fn unaddressed_node_port(fp: &FrontendPlan<'_>) -> Option<Frontend> {
    let treatment = fp.external?;
    let port = fp.node_port?;
    fp.frontends_of(FrontendKind::NodePort)
        .next()
        .is_none()
        .then_some(Frontend {
            kind: FrontendKind::NodePort,
            address: IpAddr::from([0, 0, 0, 0]),
            port,
            filtered: false,
            treatment,
        })
}

fn row(fp: &FrontendPlan<'_>, fe: &Frontend, address: String) -> FrontendRow {
    FrontendRow {
        service_port: fp.key.clone(),
        service_type: fp.service_type,
        family: fp.family,
        frontend: fe.kind,
        address,
        source_ranges: if fe.kind == FrontendKind::LoadBalancer {
            fp.source_ranges.to_vec()
        } else {
            Vec::new()
        },
        affinity_timeout_seconds: fp.affinity_timeout,
        topology: fp.topology,
        routes: ClientClass::CLIENTS
            .iter()
            .map(|&client| RouteRow {
                client,
                verdict: Reached::of(fp, fe.verdict(client)),
            })
            .collect(),
    }
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
        let mut frontend = format!("{} {}", row.frontend.as_str(), row.address);
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
        let mut groups: Vec<(Vec<ClientClass>, &Reached)> = Vec::new();
        for r in &row.routes {
            match groups.iter_mut().find(|(_, v)| **v == r.verdict) {
                Some((clients, _)) => clients.push(r.client),
                None => groups.push((vec![r.client], &r.verdict)),
            }
        }
        for (i, (clients, verdict)) in groups.into_iter().enumerate() {
            let clients: Vec<&str> = clients.iter().map(|c| client_name(*c)).collect();
            let (verdict, endpoints) = match verdict {
                Reached::Forward { endpoints, masquerade } => (
                    if *masquerade { "forward+masq" } else { "forward" }.to_string(),
                    endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(" "),
                ),
                Reached::Reject => ("reject".into(), "(no endpoints)".into()),
                Reached::Drop => ("drop".into(), "(none usable from here)".into()),
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

fn client_name(c: ClientClass) -> &'static str {
    match c {
        ClientClass::Pod => "pod",
        ClientClass::Node => "node",
        ClientClass::External => "external",
        ClientClass::OutsideSourceRanges => "outside source ranges",
    }
}
