//! `sliceproxy diagnose NAMESPACE/SERVICE`: why traffic to a Service does
//! (not) flow from a node, with the evidence for each reason. Works on the
//! same [`Snapshot`] `render` reads (from a file, or listed live), builds the
//! table the agent would build, and compares the objects with each other:
//! the selector with the Pods, the Service ports with the slice ports, the
//! traffic policies and topology hints with this node, and optionally what
//! the node's rules do ([`Observed`]: an iptables-save dump, or our nftables
//! tables read from the kernel) with what should be.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::dataplane::frontends::{ClientClass, FrontendPlan, NodeSettings, Route, Verdict};
use crate::dataplane::iptables;
use crate::dataplane::nftables;
use crate::dataplane::programmed::{FrontendKey, Programmed, Refusal};
use crate::model::{IpFamily, ServiceKey};
use crate::policy::{PortPlan, TopologyMode};
use crate::snapshot::Snapshot;
use crate::watch::convert::{self, SERVICE_NAME_LABEL};

/// A diagnosis that could not run.
#[derive(Debug, thiserror::Error)]
pub enum DiagnoseError {
    /// The target is not `NAMESPACE/NAME`.
    #[error("{0:?} is not NAMESPACE/SERVICE")]
    Target(String),
}

/// The label that hands a Service to another proxy.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// Why traffic may not flow (or a remark that explains how it flows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// No Service with that name.
    ServiceNotFound,
    /// Labelled `service.kubernetes.io/service-proxy-name`: another proxy programs it.
    HandedToOtherProxy,
    /// ExternalName or headless: no proxy rules by design.
    NotProxied,
    /// No EndpointSlice names the Service.
    NoEndpointSlices,
    /// The selector matches no Pod of the namespace.
    SelectorMatchesNoPod,
    /// Pods differ from the selector in one label.
    NearlyMatchingPods,
    /// Pods matching the selector live in another namespace.
    PodsInOtherNamespace,
    /// Slices exist but no endpoint is ready.
    EndpointsNotReady,
    /// Only terminating endpoints serve (upstream's fallback).
    EndpointsTerminating,
    /// A Service port's name matches no slice port.
    PortNameMismatch,
    /// A named targetPort matches no container port of the selected Pods.
    TargetPortMismatch,
    /// A Local traffic policy and no endpoint on this node.
    NoLocalEndpoint,
    /// Topology hints restrict or exclude this node's endpoints.
    TopologyHints,
    /// What is programmed differs from what should be.
    ProgrammedDiffers,
    /// The node's rules do what the plan says for every frontend of a port.
    ProgrammedAsPlanned,
    /// The rules of the mode are absent altogether (our nftables table does
    /// not exist: the agent is not running in this mode, or not here).
    RulesAbsent,
}

/// What a node's rules do, per frontend, read back by structure, and
/// which families have no rules of ours at all.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Where it was read from, for people (`iptables-save dump`, ...).
    pub source: String,
    /// Per frontend: the DNAT targets reachable and any refusal.
    pub frontends: BTreeMap<FrontendKey, Programmed>,
    /// Families with nothing of ours, and what is missing (one sentence).
    pub absent: Vec<(IpFamily, String)>,
}

impl Observed {
    /// From an `iptables-save` dump (both families may be concatenated).
    pub fn from_iptables_save(save: &str) -> Observed {
        Observed {
            source: "iptables-save dump".into(),
            frontends: iptables::programmed::programmed_frontends(save),
            absent: Vec::new(),
        }
    }

    /// From our nftables tables per family, as read from the kernel
    /// (`None`: the family's table does not exist) or as a full sync
    /// builds them.
    pub fn from_nftables(tables: Vec<(IpFamily, Option<nftables::model::Table>)>) -> Observed {
        let mut absent = Vec::new();
        let mut present = Vec::new();
        for (family, table) in tables {
            match table {
                Some(t) => present.push(t),
                None => absent.push((
                    family,
                    format!(
                        "no nftables table {} {} in this network namespace",
                        nftables::ruleset::table_family(family).keyword(),
                        nftables::ruleset::TABLE
                    ),
                )),
            }
        }
        Observed {
            source: "nftables tables".into(),
            frontends: nftables::programmed_frontends(&present),
            absent,
        }
    }
}

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Traffic does not flow (or not from/to everywhere it should).
    Reason,
    /// Explains behaviour; traffic flows.
    Note,
}

/// One finding with its evidence.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// What.
    pub cause: Cause,
    /// Reason or note.
    pub severity: Severity,
    /// One sentence.
    pub message: String,
    /// The objects and fields that show it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<String>,
}

/// The whole diagnosis.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Diagnosis {
    /// The Service.
    pub service: String,
    /// The node it was judged from.
    pub node: String,
    /// No reason was found.
    pub traffic_should_flow: bool,
    /// Findings, reasons first.
    pub findings: Vec<Finding>,
}

/// Parse `NAMESPACE/NAME`.
pub fn parse_target(s: &str) -> Result<ServiceKey, DiagnoseError> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok(ServiceKey::new(ns, name)),
        _ => Err(DiagnoseError::Target(s.to_string())),
    }
}

fn labels(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

fn matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn pod_name(p: &core::Pod) -> String {
    let (ns, name) = convert::object_key(&p.metadata);
    format!("{ns}/{name}")
}

struct Out {
    findings: Vec<Finding>,
}

impl Out {
    fn push(&mut self, cause: Cause, severity: Severity, message: impl Into<String>, evidence: Vec<String>) {
        self.findings.push(Finding {
            cause,
            severity,
            message: message.into(),
            evidence,
        });
    }
}

/// Diagnose `key` as seen from `node`, whose settings are `settings`.
/// `programmed` is what that node's rules do, when available: it is
/// compared, frontend by frontend, with the frontend plan `render` prints.
pub fn diagnose(
    snapshot: &Snapshot,
    key: &ServiceKey,
    node: &str,
    settings: &NodeSettings,
    programmed: Option<&Observed>,
) -> Diagnosis {
    let mut out = Out { findings: Vec::new() };
    match snapshot.service(key) {
        None => out.push(
            Cause::ServiceNotFound,
            Severity::Reason,
            format!("no Service {key}"),
            snapshot
                .services
                .iter()
                .filter(|s| s.metadata.name.as_deref() == Some(&*key.name))
                .map(|s| format!("a Service of that name exists in namespace {:?}", s.metadata.namespace))
                .collect(),
        ),
        Some(svc) => diagnose_service(snapshot, svc, key, node, settings, programmed, &mut out),
    }
    out.findings.sort_by_key(|f| (f.severity != Severity::Reason, f.cause));
    Diagnosis {
        service: key.to_string(),
        node: node.to_string(),
        traffic_should_flow: !out.findings.iter().any(|f| f.severity == Severity::Reason),
        findings: out.findings,
    }
}

fn diagnose_service(
    snapshot: &Snapshot,
    svc: &core::Service,
    key: &ServiceKey,
    node: &str,
    settings: &NodeSettings,
    programmed: Option<&Observed>,
    out: &mut Out,
) {
    let svc_labels = labels(&svc.metadata);
    if let Some(proxy) = svc_labels.get(SERVICE_PROXY_NAME_LABEL) {
        out.push(
            Cause::HandedToOtherProxy,
            Severity::Reason,
            format!(
                "the Service is handed to the proxy {proxy:?}; sliceproxy (like kube-proxy) programs nothing for it"
            ),
            vec![format!("metadata.labels[{SERVICE_PROXY_NAME_LABEL}]={proxy}")],
        );
        return;
    }
    let spec = svc.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") || spec.cluster_ip.as_deref() == Some("None") {
        out.push(
            Cause::NotProxied,
            Severity::Note,
            "ExternalName and headless Services are resolved by DNS, not proxied",
            vec![format!(
                "spec.type={:?} spec.clusterIP={:?}",
                spec.type_.as_deref().unwrap_or("ClusterIP"),
                spec.cluster_ip.as_deref().unwrap_or("")
            )],
        );
        return;
    }
    let slices: Vec<_> = snapshot
        .slices
        .iter()
        .filter(|s| {
            convert::slice_key(s).namespace == key.namespace
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .map(String::as_str)
                    == Some(&*key.name)
        })
        .collect();
    let selector: BTreeMap<String, String> = spec.selector.clone().unwrap_or_default();
    let ns_pods: Vec<&core::Pod> = snapshot
        .pods
        .iter()
        .filter(|p| convert::object_key(&p.metadata).0 == *key.namespace)
        .collect();
    let selected: Vec<&core::Pod> = ns_pods
        .iter()
        .copied()
        .filter(|p| !selector.is_empty() && matches(&selector, &labels(&p.metadata)))
        .collect();

    if slices.is_empty() {
        out.push(
            Cause::NoEndpointSlices,
            Severity::Reason,
            "no EndpointSlice names this Service (label kubernetes.io/service-name), so it has no endpoints",
            vec![format!("selector {}", fmt_selector(&selector))],
        );
        if selector.is_empty() {
            out.findings.last_mut().unwrap().evidence.push(
                "the Service has no selector: its EndpointSlices must be created by hand or by another controller"
                    .into(),
            );
        } else if selected.is_empty() {
            no_pod_reasons(snapshot, &selector, &ns_pods, key, out);
        } else {
            let ready = selected.iter().filter(|p| pod_ready(p)).count();
            out.findings.last_mut().unwrap().evidence.push(format!(
                "{} Pods match ({} ready) but no slice exists: is the EndpointSlice controller running?",
                selected.len(),
                ready
            ));
        }
    }

    // Endpoints and their conditions.
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    let mut terminating = Vec::new();
    for s in &slices {
        for ep in &s.endpoints {
            let addr = ep.addresses.first().cloned().unwrap_or_default();
            let c = ep.conditions.clone().unwrap_or_default();
            let who = format!(
                "{addr} ({}{})",
                ep.target_ref.as_ref().and_then(|t| t.name.clone()).unwrap_or_default(),
                ep.node_name.as_ref().map(|n| format!(" on {n}")).unwrap_or_default()
            );
            if c.terminating.unwrap_or(false) {
                terminating.push((who, c.serving.unwrap_or(true)));
            } else if c.ready.unwrap_or(true) {
                ready.push(who);
            } else {
                not_ready.push(who);
            }
        }
    }
    if !slices.is_empty() && ready.is_empty() {
        let serving_terminating = terminating.iter().filter(|(_, s)| *s).count();
        if serving_terminating > 0 {
            out.push(
                Cause::EndpointsTerminating,
                Severity::Note,
                format!("no ready endpoint; {serving_terminating} serving terminating endpoints take traffic until they stop"),
                terminating.iter().map(|(w, s)| format!("terminating: {w} serving={s}")).collect(),
            );
        } else {
            let mut evidence: Vec<String> = not_ready.iter().map(|w| format!("not ready: {w}")).collect();
            evidence.extend(terminating.iter().map(|(w, s)| format!("terminating: {w} serving={s}")));
            if evidence.is_empty() {
                evidence.push(format!("{} slices, all empty", slices.len()));
            }
            out.push(
                Cause::EndpointsNotReady,
                Severity::Reason,
                "EndpointSlices exist but no endpoint is ready (and none is serving while terminating)",
                evidence,
            );
        }
    }

    // Ports: every Service port needs a slice port of the same name.
    let slice_ports: BTreeSet<(String, u16)> = slices
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| (p.name.clone().unwrap_or_default(), p.port.unwrap_or(0) as u16))
        .collect();
    for p in spec.ports.iter().flatten() {
        let name = p.name.clone().unwrap_or_default();
        if !slices.is_empty() && !slice_ports.iter().any(|(n, _)| *n == name) {
            out.push(
                Cause::PortNameMismatch,
                Severity::Reason,
                format!(
                    "Service port {name:?} ({}) matches no EndpointSlice port by name",
                    p.port
                ),
                vec![format!(
                    "slice ports: {}",
                    slice_ports
                        .iter()
                        .map(|(n, p)| format!("{n:?}={p}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )],
            );
        }
        if let Some(IntOrString::String(target)) = &p.target_port
            && !selected.is_empty()
        {
            let found = selected.iter().any(|pod| {
                pod.spec.iter().flat_map(|s| s.containers.iter()).any(|c| {
                    c.ports
                        .iter()
                        .flatten()
                        .any(|cp| cp.name.as_deref() == Some(target.as_str()))
                })
            });
            if !found {
                out.push(
                    Cause::TargetPortMismatch,
                    Severity::Reason,
                    format!("Service port {name:?} targets the named port {target:?}, which no selected Pod declares"),
                    selected
                        .iter()
                        .map(|pod| {
                            let names: Vec<String> = pod
                                .spec
                                .iter()
                                .flat_map(|s| s.containers.iter())
                                .flat_map(|c| c.ports.iter().flatten())
                                .map(|cp| format!("{}={}", cp.name.clone().unwrap_or_default(), cp.container_port))
                                .collect();
                            format!("{}: container ports {}", pod_name(pod), names.join(", "))
                        })
                        .collect(),
                );
            }
        }
    }

    // What this node would do: the agent's own table and policy.
    let (tracker, _) = snapshot.tracker(node);
    let node_obj = snapshot.node(node).and_then(|n| convert::node(n).ok());
    for (pk, plan) in tracker.table().plans().filter(|(k, _)| k.service == *key) {
        let info = &plan.info;
        for family in IpFamily::ALL {
            if !info.has_family(family) {
                continue;
            }
            let fp = plan.family(family);
            if fp.has_any && info.uses_local_endpoints() && fp.local.is_empty() {
                let policies: Vec<&str> = [
                    info.internal_policy_local.then_some("internalTrafficPolicy: Local"),
                    info.external_local().then_some("externalTrafficPolicy: Local"),
                ]
                .into_iter()
                .flatten()
                .collect();
                out.push(
                    Cause::NoLocalEndpoint,
                    Severity::Reason,
                    format!(
                        "{pk} ({family}): {} and no usable endpoint on node {node}: that traffic is dropped here",
                        policies.join(" and ")
                    ),
                    vec![format!(
                        "endpoints on other nodes: {}",
                        tracker
                            .table()
                            .get(pk)
                            .map(|e| e
                                .endpoints
                                .iter()
                                .filter(|e| e.family() == family)
                                .map(|e| format!("{} on {}", e.addr, e.node_name.as_deref().unwrap_or("?")))
                                .collect::<Vec<_>>()
                                .join(", "))
                            .unwrap_or_default()
                    )],
                );
            }
            let all_ready: Vec<SocketAddr> = tracker
                .table()
                .get(pk)
                .map(|e| {
                    e.endpoints
                        .iter()
                        .filter(|e| e.family() == family && e.ready)
                        .map(|e| e.addr)
                        .collect()
                })
                .unwrap_or_default();
            let hinted = tracker.table().get(pk).is_some_and(|e| {
                e.endpoints
                    .iter()
                    .any(|e| !e.zone_hints.is_empty() || !e.node_hints.is_empty())
            });
            if fp.topology != TopologyMode::None && fp.cluster.len() < all_ready.len() {
                let excluded: Vec<String> = all_ready
                    .iter()
                    .filter(|a| !fp.cluster.contains(a))
                    .map(|a| a.to_string())
                    .collect();
                out.push(
                    Cause::TopologyHints,
                    Severity::Note,
                    format!(
                        "{pk} ({family}): topology hints ({:?}) restrict node {node} to {} of {} ready endpoints",
                        fp.topology,
                        fp.cluster.len(),
                        all_ready.len()
                    ),
                    vec![
                        format!(
                            "node zone: {}",
                            node_obj
                                .as_ref()
                                .and_then(|n| n.zone.clone())
                                .unwrap_or_else(|| "(none)".into())
                        ),
                        format!("excluded here: {}", excluded.join(", ")),
                    ],
                );
            } else if hinted && fp.topology == TopologyMode::None {
                out.push(
                    Cause::TopologyHints,
                    Severity::Note,
                    format!("{pk} ({family}): endpoints carry hints but none covers node {node} (or not every endpoint is hinted): hints are ignored and every endpoint is used"),
                    vec![format!(
                        "node zone: {}",
                        node_obj.as_ref().and_then(|n| n.zone.clone()).unwrap_or_else(|| "(none)".into())
                    )],
                );
            }
        }
        if let Some(observed) = programmed {
            for (family, what) in &observed.absent {
                if info.has_family(*family)
                    && !out
                        .findings
                        .iter()
                        .any(|f| f.cause == Cause::RulesAbsent && f.message == *what)
                {
                    out.push(
                        Cause::RulesAbsent,
                        Severity::Reason,
                        what.clone(),
                        vec![format!(
                            "{key} has {family} frontends; is the agent running here, with --proxy-mode nftables?"
                        )],
                    );
                }
            }
            let (checked, differs) = programmed_differences(plan, settings, &observed.frontends);
            if differs.is_empty() && checked > 0 {
                out.push(
                    Cause::ProgrammedAsPlanned,
                    Severity::Note,
                    format!(
                        "{pk}: the node's rules ({}) do what the plan says for all {checked} frontends",
                        observed.source
                    ),
                    Vec::new(),
                );
            }
            if !differs.is_empty() {
                out.push(
                    Cause::ProgrammedDiffers,
                    Severity::Reason,
                    format!(
                        "{pk}: the node's rules differ from what the agent should program (stale or failing agent?)"
                    ),
                    differs,
                );
            }
        }
    }
}

/// How many frontends of a service port were checked, and every one whose
/// rules do not do what its frontend plan says, as one line of evidence each: the DNAT targets
/// its dispatch rules reach must be exactly the endpoints some client is
/// forwarded to; a frontend nobody is forwarded through must be refused
/// (REJECT) or dropped (DROP) in the filter table, and reach nothing.
fn programmed_differences(
    plan: &PortPlan,
    settings: &NodeSettings,
    programmed: &BTreeMap<FrontendKey, Programmed>,
) -> (usize, Vec<String>) {
    let mut checked = 0;
    let mut out = Vec::new();
    for family in IpFamily::ALL {
        let Some(fp) = FrontendPlan::new(plan, family, settings) else {
            continue;
        };
        for fe in &fp.frontends {
            checked += 1;
            let want: BTreeSet<SocketAddr> = ClientClass::ALL
                .iter()
                .filter_map(|&c| match fe.verdict(c) {
                    Verdict::Forward { set, .. } => Some(fp.endpoints(set)),
                    _ => None,
                })
                .flatten()
                .copied()
                .collect();
            let refusal = match fe.treatment.route {
                Route::Reject => Refusal::Reject,
                Route::Serve { .. } => Refusal::Drop,
            };
            let key = FrontendKey {
                address: fe.address,
                port: fe.port,
                protocol: fp.protocol(),
            };
            let have = programmed.get(&key).cloned().unwrap_or_default();
            let ok = if want.is_empty() {
                have.dnat.is_empty() && have.refusal == Some(refusal)
            } else {
                have.dnat == want && have.unmapped.is_empty()
            };
            if ok {
                continue;
            }
            let should = if want.is_empty() {
                match refusal {
                    Refusal::Reject => "refuse (REJECT)".to_string(),
                    Refusal::Drop => "drop".to_string(),
                }
            } else {
                format!("reach {}", list(&want))
            };
            let mut programmed = match (have.dnat.is_empty(), have.refusal) {
                (false, _) => list(&have.dnat),
                (true, Some(Refusal::Reject)) => "REJECT".into(),
                (true, Some(Refusal::Drop)) => "DROP".into(),
                (true, None) => "(no rule)".into(),
            };
            for gap in &have.unmapped {
                programmed.push_str("; ");
                programmed.push_str(gap);
            }
            out.push(format!(
                "{} {} {}: should {should}; programmed: {programmed}",
                fe.kind.as_str(),
                fe.socket(),
                fp.protocol()
            ));
        }
    }
    (checked, out)
}

fn list(set: &BTreeSet<SocketAddr>) -> String {
    if set.is_empty() {
        "(none)".into()
    } else {
        set.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
    }
}

fn pod_ready(p: &core::Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn fmt_selector(sel: &BTreeMap<String, String>) -> String {
    if sel.is_empty() {
        return "(none)".into();
    }
    sel.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn no_pod_reasons(
    snapshot: &Snapshot,
    selector: &BTreeMap<String, String>,
    ns_pods: &[&core::Pod],
    key: &ServiceKey,
    out: &mut Out,
) {
    out.push(
        Cause::SelectorMatchesNoPod,
        Severity::Reason,
        format!(
            "the selector {} matches no Pod in namespace {}",
            fmt_selector(selector),
            key.namespace
        ),
        vec![format!("{} Pods in the namespace", ns_pods.len())],
    );
    // Pods missing exactly one selector label, or with one value different.
    let near: Vec<String> = ns_pods
        .iter()
        .filter_map(|p| {
            let l = labels(&p.metadata);
            let diffs: Vec<String> = selector
                .iter()
                .filter(|(k, v)| l.get(*k) != Some(*v))
                .map(|(k, v)| match l.get(k) {
                    Some(have) => format!("{k}={have} (selector wants {v})"),
                    None => format!("no label {k} (selector wants {v})"),
                })
                .collect();
            // One label off; with a one-label selector, only Pods that carry the key.
            let near = diffs.len() == 1 && (selector.len() > 1 || selector.keys().any(|k| l.contains_key(k)));
            near.then(|| format!("{}: {}", pod_name(p), diffs[0]))
        })
        .collect();
    if !near.is_empty() {
        out.push(
            Cause::NearlyMatchingPods,
            Severity::Reason,
            "Pods nearly match the selector (one label differs)",
            near,
        );
    }
    let elsewhere: Vec<String> = snapshot
        .pods
        .iter()
        .filter(|p| convert::object_key(&p.metadata).0 != *key.namespace && matches(selector, &labels(&p.metadata)))
        .map(pod_name)
        .collect();
    if !elsewhere.is_empty() {
        out.push(
            Cause::PodsInOtherNamespace,
            Severity::Reason,
            format!(
                "Pods matching the selector exist in other namespaces; a Service only selects Pods of its own namespace ({})",
                key.namespace
            ),
            elsewhere,
        );
    }
}

/// The readable form.
pub fn to_text(d: &Diagnosis) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Service {} seen from node {}", d.service, d.node);
    if d.findings.is_empty() {
        let _ = writeln!(s, "  OK: no reason found why traffic would not flow");
    }
    for f in &d.findings {
        let tag = match f.severity {
            Severity::Reason => "REASON",
            Severity::Note => "note",
        };
        let cause = serde_json::to_value(f.cause)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let _ = writeln!(s, "  {tag} [{cause}] {}", f.message);
        for e in &f.evidence {
            let _ = writeln!(s, "      - {e}");
        }
    }
    let _ = writeln!(
        s,
        "{}",
        if d.traffic_should_flow {
            "verdict: traffic should flow"
        } else {
            "verdict: traffic will not (fully) flow"
        }
    );
    s
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::dataplane::nftables::backend::full_tables;
    use crate::dataplane::nftables::model::{ElemData, KeyPart, Stmt, Table, Value, name};
    use crate::dataplane::nftables::{NftSettings, Scheduler};
    use crate::model::Protocol;

    const NODE: &str = "node-a";

    /// node-a of `examples/cluster.yaml` with the settings of its README
    /// example (as `tests/nftables_render.rs` uses them).
    fn example(scheduler: Scheduler) -> (Snapshot, NftSettings) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster.yaml");
        let snapshot = Snapshot::from_file(&path).expect("example snapshot");
        let settings = NftSettings {
            node: NodeSettings::new(
                &["10.244.0.0/16".parse().unwrap(), "fd00:244::/32".parse().unwrap()],
                false,
                &["192.168.50.10".parse().unwrap(), "fd00:50::10".parse().unwrap()],
            )
            .with_service_cidrs(&["10.96.0.0/16".parse().unwrap(), "fd00:96::/108".parse().unwrap()]),
            scheduler,
        };
        (snapshot, settings)
    }

    fn tables(snapshot: &Snapshot, settings: &NftSettings) -> Vec<Table> {
        let (tracker, errors) = snapshot.tracker(NODE);
        assert!(errors.is_empty(), "{errors:?}");
        full_tables(tracker.table(), &IpFamily::ALL, settings)
    }

    fn observed(tables: Vec<Table>) -> Observed {
        Observed::from_nftables(IpFamily::ALL.into_iter().zip(tables.into_iter().map(Some)).collect())
    }

    fn services(snapshot: &Snapshot) -> Vec<ServiceKey> {
        snapshot
            .services
            .iter()
            .map(|s| {
                let (ns, name) = convert::object_key(&s.metadata);
                ServiceKey::new(&ns, &name)
            })
            .collect()
    }

    /// The evidence of every finding with `cause`.
    fn evidence(d: &Diagnosis, cause: Cause) -> Vec<String> {
        d.findings
            .iter()
            .filter(|f| f.cause == cause)
            .flat_map(|f| f.evidence.iter().cloned())
            .collect()
    }

    fn key(address: &str, port: u16, protocol: Protocol) -> FrontendKey {
        FrontendKey {
            address: address.parse().unwrap(),
            port,
            protocol,
        }
    }

    #[test]
    fn diagnose_nftables_full_tables_agree_with_the_plan_for_every_frontend() {
        for scheduler in [Scheduler::Random, Scheduler::Maglev] {
            let (snapshot, settings) = example(scheduler);
            let seen = observed(tables(&snapshot, &settings));
            // Spot checks that the reading is not vacuous: a cluster IP with
            // two endpoints, a node port on its address, a reject, a drop.
            let web: BTreeSet<SocketAddr> = ["10.244.1.10:8080", "10.244.2.10:8080"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect();
            assert_eq!(seen.frontends[&key("10.96.0.10", 80, Protocol::Tcp)].dnat, web);
            assert_eq!(
                seen.frontends[&key("192.168.50.10", 30080, Protocol::Tcp)].dnat.len(),
                2,
                "{scheduler:?}"
            );
            assert_eq!(
                seen.frontends[&key("10.96.0.70", 80, Protocol::Tcp)],
                Programmed {
                    dnat: BTreeSet::new(),
                    refusal: Some(Refusal::Reject),
                    unmapped: Vec::new(),
                }
            );
            assert_eq!(
                seen.frontends[&key("10.96.0.40", 6379, Protocol::Tcp)].refusal,
                Some(Refusal::Drop)
            );
            let d = diagnose(
                &snapshot,
                &ServiceKey::new("demo", "web"),
                NODE,
                &settings.node,
                Some(&seen),
            );
            assert!(
                d.findings.iter().any(|f| f.cause == Cause::ProgrammedAsPlanned),
                "{d:#?}"
            );
            let keys = services(&snapshot);
            assert!(keys.len() >= 9);
            for svc in keys {
                let d = diagnose(&snapshot, &svc, NODE, &settings.node, Some(&seen));
                assert!(
                    !d.findings
                        .iter()
                        .any(|f| matches!(f.cause, Cause::ProgrammedDiffers | Cause::RulesAbsent)),
                    "{scheduler:?} {svc}: {:#?}",
                    d.findings
                );
            }
        }
    }

    #[test]
    fn diagnose_nftables_broken_tables_name_the_frontend() {
        let (snapshot, settings) = example(Scheduler::Random);
        let web = ServiceKey::new("demo", "web");
        let shop = ServiceKey::new("demo", "shop");
        let run = |tables: Vec<Table>, svc: &ServiceKey| {
            diagnose(&snapshot, svc, NODE, &settings.node, Some(&observed(tables)))
        };

        // The dispatch element of web's cluster IP removed.
        let mut broken = tables(&snapshot, &settings);
        let ips = broken[0].set_mut(&name("service-ips")).unwrap();
        let before = ips.elements.len();
        ips.elements.retain(|e| {
            e.key.first() != Some(&KeyPart::Value(Value::Ipv4("10.96.0.10".parse().unwrap())))
                || e.key.get(2) != Some(&KeyPart::Value(Value::Port(80)))
        });
        assert_eq!(ips.elements.len(), before - 1);
        let d = run(broken.clone(), &web);
        assert!(!d.traffic_should_flow);
        assert_eq!(
            evidence(&d, Cause::ProgrammedDiffers),
            vec!["ClusterIP 10.96.0.10:80 TCP: should reach 10.244.1.10:8080, 10.244.2.10:8080; programmed: (no rule)"]
        );
        assert!(run(broken, &shop).traffic_should_flow, "other services unaffected");

        // One slot of shop's cluster IP re-pointed to an address that is no endpoint.
        let mut broken = tables(&snapshot, &settings);
        let slots = broken[0].set_mut(&name("slots-ip-cluster")).unwrap();
        let slot = slots
            .elements
            .iter_mut()
            .find(|e| {
                e.key.first() == Some(&KeyPart::Value(Value::Ipv4("10.96.0.30".parse().unwrap())))
                    && e.key.get(3) == Some(&KeyPart::Value(Value::Int(1)))
            })
            .unwrap();
        slot.data = Some(ElemData::Values(vec![
            Value::Ipv4("10.244.9.9".parse().unwrap()),
            Value::Port(8080),
        ]));
        let d = run(broken, &shop);
        let ev = evidence(&d, Cause::ProgrammedDiffers);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert!(ev[0].starts_with("ClusterIP 10.96.0.30:80 TCP:"), "{ev:?}");
        assert!(
            ev[0].ends_with("programmed: 10.244.1.30:8080, 10.244.9.9:8080"),
            "{ev:?}"
        );

        // The dispatch rule of node ports deleted: the map's elements stay but reach nothing.
        let mut broken = tables(&snapshot, &settings);
        let dispatch = broken[0].chain_mut(&name("services-dispatch")).unwrap();
        dispatch.rules.retain(|r| {
            !r.stmts
                .iter()
                .any(|s| matches!(s, Stmt::Vmap { map, .. } if map.as_str() == "service-nodeports"))
        });
        let ev = evidence(&run(broken, &shop), Cause::ProgrammedDiffers);
        assert!(
            ev.iter()
                .any(|e| e.contains("192.168.50.10:30080") && e.ends_with("(no rule)")),
            "{ev:?}"
        );

        // Maglev: one slot of web's cluster IP unmapped. Both endpoints are
        // still reachable through other slots, but connections drawing that
        // slot are not translated.
        let (_, maglev) = example(Scheduler::Maglev);
        let mut broken = tables(&snapshot, &maglev);
        let slots = broken[0].set_mut(&name("slots-ip-cluster")).unwrap();
        let web_slot = |e: &crate::dataplane::nftables::model::Element| {
            e.key.first() == Some(&KeyPart::Value(Value::Ipv4("10.96.0.10".parse().unwrap())))
                && e.key.get(2) == Some(&KeyPart::Value(Value::Port(80)))
        };
        let before = slots.elements.iter().filter(|e| web_slot(e)).count();
        assert!(before > 2, "a Maglev table has more slots than endpoints");
        let gone = slots.elements.iter().position(web_slot).unwrap();
        slots.elements.remove(gone);
        let d = diagnose(&snapshot, &web, NODE, &maglev.node, Some(&observed(broken)));
        let ev = evidence(&d, Cause::ProgrammedDiffers);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert!(
            ev[0].starts_with("ClusterIP 10.96.0.10:80 TCP:")
                && ev[0].contains("programmed: 10.244.1.10:8080, 10.244.2.10:8080; 1 of ")
                && ev[0].contains("slots unmapped in map slots-ip-cluster"),
            "{ev:?}"
        );

        // No IPv6 table: a dual-stack service is told so.
        let mut both = tables(&snapshot, &settings);
        both.truncate(1);
        let seen = Observed::from_nftables(vec![(IpFamily::V4, both.pop()), (IpFamily::V6, None)]);
        let d = diagnose(&snapshot, &web, NODE, &settings.node, Some(&seen));
        assert!(
            d.findings
                .iter()
                .any(|f| f.cause == Cause::RulesAbsent && f.message.contains("ip6 sliceproxy")),
            "{:#?}",
            d.findings
        );
    }
}
