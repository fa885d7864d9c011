//! k8s-openapi objects -> model. Pure functions: no I/O, no logging; errors
//! name the object and the field so the caller can say exactly what is wrong.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;

use super::validate;
use crate::model::{
    FamilyFrontends, IpFamily, Name, NodeInfo, Protocol, Service, ServiceKey, ServicePortInfo, ServicePortKey,
    ServiceType, Slice, SliceEndpoint, SliceKey, SlicePort,
};

/// The label that joins an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// kube-proxy's selector for Services and EndpointSlices: skip headless ones
/// and ones handed to another proxy.
pub const PROXY_LABEL_SELECTOR: &str = "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name";
/// The Node label that names its zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The taint the cluster autoscaler puts on a Node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";
/// Upstream's default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10800;

/// An object that could not be converted. Displayed as
/// `Kind namespace/name: field.path: problem`, with the name and the path
/// escaped ([`validate::escape`]) and values quoted ([`validate::show`]), so
/// object text cannot forge or hide a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertError {
    /// `Service`, `EndpointSlice` or `Node`.
    pub kind: &'static str,
    /// `namespace/name`.
    pub object: String,
    /// The offending field path.
    pub field: String,
    /// What is wrong with it, quoting the value.
    pub message: String,
}

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}: {}",
            self.kind,
            validate::escape(&self.object),
            validate::escape(&self.field),
            self.message
        )
    }
}

impl std::error::Error for ConvertError {}

impl ConvertError {
    fn from_field(kind: &'static str, object: &str, e: validate::FieldError) -> ConvertError {
        err(kind, object, e.field, e.message)
    }
}

fn err(kind: &'static str, object: &str, field: impl Into<String>, message: impl Into<String>) -> ConvertError {
    ConvertError {
        kind,
        object: object.to_string(),
        field: field.into(),
        message: message.into(),
    }
}

/// `namespace/name` of a namespaced object, with the namespace defaulted the
/// way `kubectl` does for files without one.
pub fn object_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".to_string()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The key of a Service object.
pub fn service_key(svc: &core::Service) -> ServiceKey {
    let (ns, name) = object_key(&svc.metadata);
    ServiceKey::new(&ns, &name)
}

/// The key of an EndpointSlice object.
pub fn slice_key(slice: &discovery::EndpointSlice) -> SliceKey {
    let (ns, name) = object_key(&slice.metadata);
    SliceKey {
        namespace: Name::from(ns),
        name: Name::from(name),
    }
}

/// An address as upstream reads it ([`validate::parse_ip_sloppy`]). The
/// object was validated first, so a failure here is a validation gap; it is
/// still an error, never a panic.
fn parse_ip(kind: &'static str, object: &str, field: &str, s: &str) -> Result<IpAddr, ConvertError> {
    validate::parse_ip_sloppy(s).ok_or_else(|| {
        err(
            kind,
            object,
            field,
            format!("Invalid value: {}: must be a valid IP address", validate::show(s)),
        )
    })
}

/// A source range as upstream reads it: space-trimmed (a historical
/// allowance), host bits cleared ([`validate::parse_cidr_sloppy`]).
fn parse_cidr(object: &str, field: &str, s: &str) -> Result<IpNet, ConvertError> {
    validate::parse_cidr_sloppy(s.trim()).ok_or_else(|| {
        err(
            "Service",
            object,
            field,
            format!("Invalid value: {}: must be a valid CIDR value", validate::show(s)),
        )
    })
}

/// Convert a Service into its ports. ExternalName Services, headless ones
/// (`clusterIP: None`) and ones without a cluster IP program nothing and
/// convert into no ports.
pub fn service(svc: &core::Service) -> Result<Service, ConvertError> {
    let key = service_key(svc);
    let object = key.to_string();
    validate::service(svc).map_err(|e| ConvertError::from_field("Service", &object, e))?;
    let empty = Service {
        key: key.clone(),
        ports: Vec::new(),
    };
    let Some(spec) = svc.spec.as_ref() else {
        return Ok(empty);
    };
    let service_type = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIP,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => return Ok(empty),
        Some(other) => return Err(err("Service", &object, "spec.type", format!("unknown type {other:?}"))),
    };
    let cluster_ips: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        (_, Some(ip)) => vec![ip.as_str()],
        _ => Vec::new(),
    };
    if cluster_ips.is_empty() || cluster_ips.iter().any(|ip| ip.is_empty() || *ip == "None") {
        return Ok(empty);
    }
    let mut frontends: [FamilyFrontends; 2] = Default::default();
    for (i, ip) in cluster_ips.iter().enumerate() {
        let ip = parse_ip("Service", &object, &format!("spec.clusterIPs[{i}]"), ip)?;
        let slot = &mut frontends[IpFamily::of(&ip).index()].cluster_ip;
        if slot.is_none() {
            *slot = Some(ip);
        }
    }
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        let ip = parse_ip("Service", &object, &format!("spec.externalIPs[{i}]"), ip)?;
        push_unique(&mut frontends[IpFamily::of(&ip).index()].external_ips, ip);
    }
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for (i, ing) in ingress.into_iter().flatten().enumerate() {
        let Some(ip) = ing.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue; // hostname-only ingress: nothing the node can capture
        };
        if ing.ip_mode.as_deref() == Some("Proxy") {
            // The load balancer proxies to the node: capturing the VIP on the
            // node would bypass it (and its PROXY protocol, TLS, ...).
            continue;
        }
        let ip = parse_ip("Service", &object, &format!("status.loadBalancer.ingress[{i}].ip"), ip)?;
        push_unique(&mut frontends[IpFamily::of(&ip).index()].load_balancer_ips, ip);
    }
    for (i, range) in spec.load_balancer_source_ranges.iter().flatten().enumerate() {
        let net = parse_cidr(&object, &format!("spec.loadBalancerSourceRanges[{i}]"), range)?;
        push_unique(&mut frontends[IpFamily::of(&net.addr()).index()].source_ranges, net);
    }
    for f in &mut frontends {
        f.external_ips.sort();
        f.load_balancer_ips.sort();
        f.source_ranges.sort();
    }
    let affinity_timeout_secs = match spec.session_affinity.as_deref() {
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECS as i32);
            if !(1..=86400).contains(&t) {
                return Err(err(
                    "Service",
                    &object,
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!("{t} is outside 1..86400"),
                ));
            }
            Some(t as u32)
        }
        None | Some("None") => None,
        Some(other) => {
            return Err(err(
                "Service",
                &object,
                "spec.sessionAffinity",
                format!("unknown value {other:?}"),
            ));
        }
    };
    let health_check_node_port = match spec.health_check_node_port {
        None | Some(0) => None,
        Some(p) => Some(port_number(&object, "spec.healthCheckNodePort", p)?),
    };
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let protocol = Protocol::from_k8s(p.protocol.as_deref()).ok_or_else(|| {
            err(
                "Service",
                &object,
                format!("spec.ports[{i}].protocol"),
                format!("unknown protocol {:?}", p.protocol),
            )
        })?;
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => Some(port_number(&object, &format!("spec.ports[{i}].nodePort"), n)?),
        };
        let info = ServicePortInfo {
            key: ServicePortKey {
                service: key.clone(),
                port_name: Name::from(p.name.as_deref().unwrap_or("")),
                protocol,
            },
            service_type,
            port: port_number(&object, &format!("spec.ports[{i}].port"), p.port)?,
            node_port,
            frontends: frontends.clone(),
            affinity_timeout_secs,
            external_policy_local: spec.external_traffic_policy.as_deref() == Some("Local"),
            internal_policy_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            health_check_node_port,
            traffic_distribution: spec.traffic_distribution.clone(),
        };
        if ports.iter().any(|q: &Arc<ServicePortInfo>| q.key == info.key) {
            return Err(err(
                "Service",
                &object,
                format!("spec.ports[{i}]"),
                format!("duplicate port {}", info.key),
            ));
        }
        ports.push(Arc::new(info));
    }
    Ok(Service { key, ports })
}

fn port_number(object: &str, field: &str, p: i32) -> Result<u16, ConvertError> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| err("Service", object, field, format!("{p} is not a port number (1-65535)")))
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
}

/// Convert an EndpointSlice. `Ok(None)` means the slice programs nothing by
/// design (an FQDN slice, or one without a `kubernetes.io/service-name`
/// label) and should be treated as absent.
pub fn slice(s: &discovery::EndpointSlice) -> Result<Option<Slice>, ConvertError> {
    let key = slice_key(s);
    let object = key.to_string();
    validate::endpoint_slice(s).map_err(|e| ConvertError::from_field("EndpointSlice", &object, e))?;
    let family = match s.address_type.as_str() {
        "IPv4" => IpFamily::V4,
        "IPv6" => IpFamily::V6,
        "FQDN" => return Ok(None),
        other => {
            return Err(err(
                "EndpointSlice",
                &object,
                "addressType",
                format!("unknown address type {other:?}"),
            ));
        }
    };
    let Some(service_name) = s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
        return Ok(None);
    };
    let mut ports = Vec::new();
    for (i, p) in s.ports.iter().flatten().enumerate() {
        // A port without a number matches no Service port (upstream skips it too).
        let Some(port) = p.port else { continue };
        let port = u16::try_from(port).ok().filter(|p| *p != 0).ok_or_else(|| {
            err(
                "EndpointSlice",
                &object,
                format!("ports[{i}].port"),
                format!("{port} is not a port number (1-65535)"),
            )
        })?;
        let protocol = Protocol::from_k8s(p.protocol.as_deref()).ok_or_else(|| {
            err(
                "EndpointSlice",
                &object,
                format!("ports[{i}].protocol"),
                format!("unknown protocol {:?}", p.protocol),
            )
        })?;
        let sp = SlicePort {
            name: Name::from(p.name.as_deref().unwrap_or("")),
            protocol,
            port,
        };
        push_unique(&mut ports, sp);
    }
    let mut endpoints = Vec::with_capacity(s.endpoints.len());
    for (i, ep) in s.endpoints.iter().enumerate() {
        // Upstream uses the first address only; the rest are informational.
        let Some(first) = ep.addresses.first() else { continue };
        let ip = parse_ip("EndpointSlice", &object, &format!("endpoints[{i}].addresses[0]"), first)?;
        if IpFamily::of(&ip) != family {
            return Err(err(
                "EndpointSlice",
                &object,
                format!("endpoints[{i}].addresses[0]"),
                format!(
                    "{first:?} is not an {family} address but addressType is {}",
                    s.address_type
                ),
            ));
        }
        let conditions = ep.conditions.as_ref();
        let hints = ep.hints.as_ref();
        endpoints.push(SliceEndpoint {
            ip,
            ready: conditions.and_then(|c| c.ready).unwrap_or(true),
            serving: conditions.and_then(|c| c.serving).unwrap_or(true),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            node_name: ep.node_name.as_deref().map(Name::from),
            zone_hints: names(
                hints
                    .and_then(|h| h.for_zones.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|z| z.name.as_str()),
            ),
            node_hints: names(
                hints
                    .and_then(|h| h.for_nodes.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|n| n.name.as_str()),
            ),
        });
    }
    Ok(Some(Slice {
        service: ServiceKey::new(&key.namespace, service_name),
        key,
        family,
        ports,
        endpoints,
        trigger_time: trigger_time(&s.metadata),
    }))
}

/// The annotation the EndpointSlice controller sets to when the Pod or
/// Service change behind this version happened.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The slice's trigger time; a malformed one is ignored (it only feeds a metric).
fn trigger_time(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<std::time::SystemTime> {
    let value = meta.annotations.as_ref()?.get(TRIGGER_TIME_ANNOTATION)?;
    let ts: k8s_openapi::jiff::Timestamp = value.parse().ok()?;
    Some(ts.into())
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> Arc<[Name]> {
    let mut v: Vec<Name> = it.map(Name::from).collect();
    v.sort();
    v.dedup();
    Arc::from(v)
}

/// Convert the agent's own Node.
pub fn node(n: &core::Node) -> Result<NodeInfo, ConvertError> {
    let name = n.metadata.name.clone().unwrap_or_default();
    validate::node(n).map_err(|e| ConvertError::from_field("Node", &name, e))?;
    let zone = n.metadata.labels.as_ref().and_then(|l| l.get(ZONE_LABEL)).cloned();
    let to_be_deleted = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
    let mut addresses = Vec::new();
    let status_addresses = n.status.as_ref().and_then(|s| s.addresses.as_ref());
    for a in status_addresses.into_iter().flatten() {
        // The API server does not validate node addresses; kube-proxy skips
        // the ones it cannot parse, and so do we.
        if (a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            && let Some(ip) = validate::parse_ip_sloppy(&a.address)
        {
            push_unique(&mut addresses, ip);
        }
    }
    Ok(NodeInfo {
        zone,
        deleting: n.metadata.deletion_timestamp.is_some(),
        to_be_deleted,
        addresses,
    })
}

/// Whether kube-proxy's label selector ([`PROXY_LABEL_SELECTOR`]) admits an
/// object: used where objects do not come from a filtered watch (files).
pub fn selected_by_proxy(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.labels.as_ref().is_none_or(|l| {
        !l.contains_key("service.kubernetes.io/headless") && !l.contains_key("service.kubernetes.io/service-proxy-name")
    })
}
