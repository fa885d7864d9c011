//! Builders for tests: Kubernetes objects written as JSON, converted the way
//! the watch layer converts them, so tests exercise the real conversion.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use serde_json::{Value, json};

use crate::model::{Service, Slice};
use crate::watch::convert;

/// A Service object in namespace `ns` with the given `spec` (merged over a
/// ClusterIP default) and optional `status`.
pub fn service_object(ns: &str, name: &str, spec: Value, status: Option<Value>) -> core::Service {
    let mut obj = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": ns, "name": name, "resourceVersion": "1"},
        "spec": {"type": "ClusterIP"},
    });
    merge(&mut obj["spec"], spec);
    if let Some(status) = status {
        obj["status"] = status;
    }
    serde_json::from_value(obj).expect("test Service is well-formed")
}

/// A converted Service.
pub fn service(ns: &str, name: &str, spec: Value) -> Service {
    convert::service(&service_object(ns, name, spec, None)).expect("test Service converts")
}

/// An EndpointSlice object for `service` with the given address type, ports
/// (`[{"name":..,"port":..,"protocol":..}]`) and endpoints.
pub fn slice_object(
    ns: &str,
    name: &str,
    service: &str,
    address_type: &str,
    ports: Value,
    endpoints: Value,
) -> discovery::EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": ns, "name": name, "resourceVersion": "1",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints,
    }))
    .expect("test EndpointSlice is well-formed")
}

/// A converted EndpointSlice (panics for FQDN slices, which convert to nothing).
pub fn slice(ns: &str, name: &str, service: &str, address_type: &str, ports: Value, endpoints: Value) -> Slice {
    convert::slice(&slice_object(ns, name, service, address_type, ports, endpoints))
        .expect("test EndpointSlice converts")
        .expect("test EndpointSlice programs something")
}

/// An endpoint entry: `ep("10.0.0.1", "node-a")`, ready.
pub fn ep(ip: &str, node: &str) -> Value {
    json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": true, "serving": true, "terminating": false}})
}

/// An endpoint entry with explicit conditions.
pub fn ep_cond(ip: &str, node: &str, ready: bool, serving: bool, terminating: bool) -> Value {
    json!({"addresses": [ip], "nodeName": node,
           "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
}

/// Add hints to an endpoint entry.
pub fn with_hints(mut ep: Value, zones: &[&str], nodes: &[&str]) -> Value {
    let mut hints = json!({});
    if !zones.is_empty() {
        hints["forZones"] = zones.iter().map(|z| json!({"name": z})).collect();
    }
    if !nodes.is_empty() {
        hints["forNodes"] = nodes.iter().map(|n| json!({"name": n})).collect();
    }
    ep["hints"] = hints;
    ep
}

/// One slice port.
pub fn port(name: &str, port: u16, protocol: &str) -> Value {
    json!({"name": name, "port": port, "protocol": protocol})
}

fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}
