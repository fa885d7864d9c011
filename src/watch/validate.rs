//! Validation of Services, EndpointSlices and Nodes as the API server
//! applies it, so that an object no API server would store (or one from a
//! YAML file given to `render`) is refused at the boundary with the field and
//! the value, before any of its text can reach a rule.
//!
//! The rules follow upstream (Kubernetes 1.34), checked field by field:
//! - names, labels, port names: `staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go`
//!   (`IsDNS1123Label`, `IsDNS1123Subdomain`, `IsDNS1035Label`, `IsQualifiedName`,
//!   `IsValidLabelValue`, `IsValidPortName`, `IsValidPortNum`);
//! - object metadata: `staging/src/k8s.io/apimachinery/pkg/api/validation/objectmeta.go`
//!   (`ValidateObjectMeta`, `ValidateAnnotations`: keys lower-cased, 256 KiB in total);
//! - Services: `pkg/apis/core/validation/validation.go` (`ValidateService`,
//!   `validateServicePort`, `ValidateServiceClusterIPsRelatedFields`,
//!   `validateServiceExternalTrafficPolicy`, `ValidateLoadBalancerStatus`);
//! - EndpointSlices: `pkg/apis/discovery/validation/validation.go`
//!   (`validateEndpoints`, `validatePorts`, `validateHints`);
//! - addresses: `staging/src/k8s.io/apimachinery/pkg/util/validation/ip.go`
//!   (`IsValidIPForLegacyField`, `IsValidCIDRForLegacyField` with the
//!   `StrictIPCIDRValidation` gate off, its default) and `k8s.io/utils/net`
//!   (`ParseIPSloppy`, `ParseCIDRSloppy`, the pre-Go-1.17 parsers);
//! - `ValidateNonSpecialIP` / `ValidateEndpointIP` for external IPs and endpoints.
//!
//! Validation runs on the object as the API server stores it, i.e. after
//! defaulting: an unset `type` is `ClusterIP`, an unset protocol `TCP`, an
//! unset `sessionAffinity` `None`, and so on. Fields the API server
//! allocates (`clusterIP`, `nodePort`, `healthCheckNodePort`) may be missing,
//! as in a hand-written file. The first problem found is reported.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Longest DNS-1123 label (a namespace, a port name).
pub const DNS1123_LABEL_MAX_LEN: usize = 63;
/// Longest DNS-1123 subdomain (an EndpointSlice or Node name).
pub const DNS1123_SUBDOMAIN_MAX_LEN: usize = 253;
/// Longest DNS-1035 label (a Service name).
pub const DNS1035_LABEL_MAX_LEN: usize = 63;
/// Longest label value, and longest name part of a qualified name.
pub const LABEL_VALUE_MAX_LEN: usize = 63;
/// Longest IANA service name (a named target port).
pub const IANA_SVC_NAME_MAX_LEN: usize = 15;
/// Most bytes all annotations of one object may hold (keys plus values).
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;
/// Most endpoints in one EndpointSlice.
pub const MAX_SLICE_ENDPOINTS: usize = 1000;
/// Most addresses of one endpoint.
pub const MAX_ENDPOINT_ADDRESSES: usize = 100;
/// Most ports of one EndpointSlice.
pub const MAX_SLICE_PORTS: usize = 20000;
/// Most zone (and node) hints of one endpoint.
pub const MAX_HINTS: usize = 8;
/// Most labels in an endpoint's `deprecatedTopology`.
pub const MAX_TOPOLOGY_LABELS: usize = 16;
/// Longest ClientIP affinity timeout (one day).
pub const MAX_AFFINITY_TIMEOUT_SECS: i32 = 86400;
/// Longest value quoted in full in a message; longer ones are cut.
const SHOW_MAX_CHARS: usize = 96;

/// A field that fails validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, e.g. `spec.ports[1].name`.
    pub field: String,
    /// What is wrong, with the value quoted by [`show`].
    pub message: String,
}

type Check = Result<(), FieldError>;

fn invalid(field: impl Into<String>, value: &str, why: impl AsRef<str>) -> FieldError {
    FieldError {
        field: field.into(),
        message: format!("Invalid value: {}: {}", show(value), why.as_ref()),
    }
}

fn required(field: impl Into<String>, why: &str) -> FieldError {
    FieldError {
        field: field.into(),
        message: if why.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {why}")
        },
    }
}

fn forbidden(field: impl Into<String>, why: &str) -> FieldError {
    FieldError {
        field: field.into(),
        message: format!("Forbidden: {why}"),
    }
}

fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> FieldError {
    let supported: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
    FieldError {
        field: field.into(),
        message: format!(
            "Unsupported value: {}: supported values: {}",
            show(value),
            supported.join(", ")
        ),
    }
}

fn duplicate(field: impl Into<String>, value: &str) -> FieldError {
    FieldError {
        field: field.into(),
        message: format!("Duplicate value: {}", show(value)),
    }
}

fn too_many(field: impl Into<String>, n: usize, max: usize) -> FieldError {
    FieldError {
        field: field.into(),
        message: format!("Too many: {n}: must have at most {max} items"),
    }
}

fn lift(field: &str, value: &str, r: Result<(), String>) -> Check {
    r.map_err(|m| invalid(field, value, m))
}

/// A value quoted for a message or a log line: in double quotes, with every
/// character outside printable ASCII escaped (`\n`, `\u{202e}`, ...), so a
/// crafted name can neither forge a log line nor hide text; long values are
/// cut.
pub fn show(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(SHOW_MAX_CHARS) + 2);
    out.push('"');
    for (n, c) in value.chars().enumerate() {
        if n == SHOW_MAX_CHARS {
            out.push_str(&format!("...\" ({} bytes)", value.len()));
            return out;
        }
        escape_into(&mut out, c);
    }
    out.push('"');
    out
}

/// Text with every character outside printable ASCII escaped, for names and
/// field paths printed unquoted (`namespace/name`).
pub fn escape(value: &str) -> String {
    if value.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\') {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        escape_into(&mut out, c);
    }
    out
}

/// A message with control and non-ASCII characters escaped but quotes kept
/// (for parser and decoder messages that quote file text themselves).
pub fn escape_controls(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            ' '..='~' => out.push(c),
            c => escape_into(&mut out, c),
        }
    }
    out
}

fn escape_into(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        ' '..='~' => out.push(c),
        c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
    }
}

// === names ===

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?` without the length check.
fn label_shape(s: &str, first: fn(u8) -> bool) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && first(b[0]) && is_lower_alnum(b[b.len() - 1]) && b.iter().all(|&c| is_lower_alnum(c) || c == b'-')
}

/// `IsDNS1123Label`: a namespace, a Service or EndpointSlice port name, an
/// endpoint hostname.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.len() > DNS1123_LABEL_MAX_LEN {
        return Err(format!("must be no more than {DNS1123_LABEL_MAX_LEN} characters"));
    }
    if !label_shape(s, is_lower_alnum) {
        return Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".into());
    }
    Ok(())
}

/// `IsDNS1123Subdomain`: an EndpointSlice or Node name.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.len() > DNS1123_SUBDOMAIN_MAX_LEN {
        return Err(format!("must be no more than {DNS1123_SUBDOMAIN_MAX_LEN} characters"));
    }
    if !s.split('.').all(|l| label_shape(l, is_lower_alnum)) {
        return Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".into());
    }
    Ok(())
}

/// `IsDNS1035Label`: a Service name (it becomes a DNS label and an
/// environment variable prefix, so it must start with a letter).
pub fn dns1035_label(s: &str) -> Result<(), String> {
    if s.len() > DNS1035_LABEL_MAX_LEN {
        return Err(format!("must be no more than {DNS1035_LABEL_MAX_LEN} characters"));
    }
    if !label_shape(s, |b| b.is_ascii_lowercase()) {
        return Err("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')".into());
    }
    Ok(())
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && is_alnum(b[0])
        && is_alnum(b[b.len() - 1])
        && b.iter().all(|&c| is_alnum(c) || matches!(c, b'-' | b'_' | b'.'))
}

/// `IsQualifiedName`: a label or annotation key, an `appProtocol`.
pub fn qualified_name(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                return Err("prefix part must be non-empty".into());
            }
            dns1123_subdomain(prefix).map_err(|m| format!("prefix part {m}"))?;
            name
        }
        _ => {
            return Err("a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')".into());
        }
    };
    if name.is_empty() {
        return Err("name part must be non-empty".into());
    }
    if name.len() > LABEL_VALUE_MAX_LEN {
        return Err(format!(
            "name part must be no more than {LABEL_VALUE_MAX_LEN} characters"
        ));
    }
    if !qualified_name_part(name) {
        return Err("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into());
    }
    Ok(())
}

/// `IsValidLabelValue`: a label value (empty is allowed), a zone hint.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.len() > LABEL_VALUE_MAX_LEN {
        return Err(format!("must be no more than {LABEL_VALUE_MAX_LEN} characters"));
    }
    if !s.is_empty() && !qualified_name_part(s) {
        return Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into());
    }
    Ok(())
}

/// `IsValidPortName` (IANA_SVC_NAME, RFC 6335): a named target port.
pub fn port_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > IANA_SVC_NAME_MAX_LEN {
        return Err(format!("must be no more than {IANA_SVC_NAME_MAX_LEN} characters"));
    }
    if !s.bytes().all(|b| is_lower_alnum(b) || b == b'-') {
        return Err("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if s.contains("--") {
        return Err("must not contain consecutive hyphens".into());
    }
    if !s.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err("must contain at least one letter (a-z)".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must not begin or end with a hyphen".into());
    }
    Ok(())
}

/// `IsValidPortNum`.
pub fn port_number(p: i32) -> Result<u16, String> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| "must be between 1 and 65535, inclusive".to_string())
}

// === addresses ===

/// Go's `dtoi`: decimal digits, any number of leading zeros; (value, digits).
fn dtoi(s: &[u8]) -> Option<(u32, usize)> {
    let mut n: u32 = 0;
    let mut i = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        n = n * 10 + u32::from(s[i] - b'0');
        if n >= 0xFF_FFFF {
            return None;
        }
        i += 1;
    }
    (i > 0).then_some((n, i))
}

/// Go's `xtoi`: hexadecimal digits, any number of leading zeros.
fn xtoi(s: &[u8]) -> Option<(u32, usize)> {
    let mut n: u32 = 0;
    let mut i = 0;
    while i < s.len() {
        let d = match s[i] {
            c @ b'0'..=b'9' => c - b'0',
            c @ b'a'..=b'f' => c - b'a' + 10,
            c @ b'A'..=b'F' => c - b'A' + 10,
            _ => break,
        };
        n = n * 16 + u32::from(d);
        if n >= 0xFF_FFFF {
            return None;
        }
        i += 1;
    }
    (i > 0).then_some((n, i))
}

/// IPv4 as `ParseIPSloppy` reads it: four decimal octets, leading zeros
/// allowed and read as decimal (`010.096.000.010` is 10.96.0.10, not octal).
fn parse_v4_sloppy(s: &[u8]) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut s = s;
    for (i, octet) in out.iter_mut().enumerate() {
        if i > 0 {
            s = s.strip_prefix(b".")?;
        }
        let (n, c) = dtoi(s)?;
        *octet = u8::try_from(n).ok()?;
        s = &s[c..];
    }
    s.is_empty().then_some(out)
}

/// IPv6 as `ParseIPSloppy` reads it (Go 1.16's parser: no zone, groups of
/// hex digits with any number of leading zeros, an embedded sloppy IPv4 tail).
fn parse_v6_sloppy(mut s: &[u8]) -> Option<[u8; 16]> {
    let mut ip = [0u8; 16];
    let mut ellipsis: Option<usize> = None;
    if s.starts_with(b"::") {
        ellipsis = Some(0);
        s = &s[2..];
        if s.is_empty() {
            return Some(ip);
        }
    }
    let mut i = 0;
    while i < 16 {
        let (n, c) = xtoi(s)?;
        if n > 0xFFFF {
            return None;
        }
        if c < s.len() && s[c] == b'.' {
            if (ellipsis.is_none() && i != 12) || i + 4 > 16 {
                return None;
            }
            let v4 = parse_v4_sloppy(s)?;
            ip[i..i + 4].copy_from_slice(&v4);
            s = &[];
            i += 4;
            break;
        }
        ip[i] = (n >> 8) as u8;
        ip[i + 1] = n as u8;
        i += 2;
        s = &s[c..];
        if s.is_empty() {
            break;
        }
        if s[0] != b':' || s.len() == 1 {
            return None;
        }
        s = &s[1..];
        if s[0] == b':' {
            if ellipsis.is_some() {
                return None;
            }
            ellipsis = Some(i);
            s = &s[1..];
            if s.is_empty() {
                break;
            }
        }
    }
    if !s.is_empty() {
        return None;
    }
    if i < 16 {
        let e = ellipsis?;
        let n = 16 - i;
        for j in (e..i).rev() {
            ip[j + n] = ip[j];
        }
        for b in &mut ip[e..e + n] {
            *b = 0;
        }
    } else if ellipsis.is_some() {
        return None; // "::" must stand for at least one zero group
    }
    Some(ip)
}

/// An IPv6 address that Go's `To4` turns into IPv4 (`::ffff:a.b.c.d`):
/// kube-proxy and the API server treat it as IPv4, so it is one here too.
fn unmap(ip: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(ip);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// An IP address as `netutils.ParseIPSloppy` (and so the API server's legacy
/// validation and kube-proxy) reads it: IPv4 octets with leading zeros are
/// decimal, IPv4-mapped IPv6 is IPv4, no zone, no surrounding whitespace.
pub fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    let b = s.as_bytes();
    // Like Go: the first '.' or ':' decides the family.
    match b.iter().find(|c| matches!(c, b'.' | b':'))? {
        b'.' => parse_v4_sloppy(b).map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        _ => parse_v6_sloppy(b).map(unmap),
    }
}

/// A CIDR as `netutils.ParseCIDRSloppy` reads it, returned as the network
/// (host bits cleared, as Go's `IPNet`): sloppy address, prefix length with
/// leading zeros allowed; an IPv4-mapped network of /96 or longer is IPv4.
pub fn parse_cidr_sloppy(s: &str) -> Option<IpNet> {
    let (addr, len) = s.split_once('/')?;
    let (n, c) = dtoi(len.as_bytes())?;
    if c != len.len() {
        return None;
    }
    if let Some(v4) = parse_v4_sloppy(addr.as_bytes()) {
        let len = u8::try_from(n).ok().filter(|n| *n <= 32)?;
        return Ipv4Net::new(Ipv4Addr::from(v4), len).ok().map(|n| IpNet::V4(n.trunc()));
    }
    let v6 = parse_v6_sloppy(addr.as_bytes())?;
    let len = u8::try_from(n).ok().filter(|n| *n <= 128)?;
    let net = Ipv6Net::new(Ipv6Addr::from(v6), len).ok()?.trunc();
    match net.addr().to_ipv4_mapped() {
        Some(v4) if len >= 96 => Ipv4Net::new(v4, len - 96).ok().map(IpNet::V4),
        _ => Some(IpNet::V6(net)),
    }
}

const IP_MSG: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";
const CIDR_MSG: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";

fn legacy_ip(field: &str, value: &str) -> Result<IpAddr, FieldError> {
    parse_ip_sloppy(value).ok_or_else(|| invalid(field, value, IP_MSG))
}

/// `ValidateNonSpecialIP`: no unspecified, loopback or link-local address
/// (they mean the node itself, or its metadata service).
fn non_special_ip(field: &str, value: &str, ip: IpAddr) -> Check {
    let why = match ip {
        _ if ip.is_unspecified() => format!("may not be unspecified ({value})"),
        _ if ip.is_loopback() => "may not be in the loopback range (127.0.0.0/8, ::1/128)".into(),
        IpAddr::V4(v4) if v4.is_link_local() => "may not be in the link-local range (169.254.0.0/16, fe80::/10)".into(),
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => {
            "may not be in the link-local range (169.254.0.0/16, fe80::/10)".into()
        }
        IpAddr::V4(v4) if v4.octets()[..3] == [224, 0, 0] => {
            "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)".into()
        }
        IpAddr::V6(v6) if v6.octets()[0] == 0xff && v6.octets()[1] & 0x0f == 0x02 => {
            "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)".into()
        }
        _ => return Ok(()),
    };
    Err(invalid(field, value, why))
}

// === metadata ===

fn labels(field: &str, labels: Option<&BTreeMap<String, String>>) -> Check {
    for (k, v) in labels.into_iter().flatten() {
        lift(field, k, qualified_name(k))?;
        lift(&format!("{field}[{}]", escape(k)), v, label_value(v))?;
    }
    Ok(())
}

/// `ValidateObjectMeta`: the name by the kind's rule, the namespace (as a
/// DNS-1123 label) for namespaced kinds, labels, annotation keys and size.
fn object_meta(meta: &ObjectMeta, namespaced: bool, name_rule: fn(&str) -> Result<(), String>) -> Check {
    match meta.name.as_deref() {
        None | Some("") => return Err(required("metadata.name", "name or generateName is required")),
        Some(name) => lift("metadata.name", name, name_rule(name))?,
    }
    if namespaced && let Some(ns) = meta.namespace.as_deref() {
        lift("metadata.namespace", ns, dns1123_label(ns))?;
    }
    labels("metadata.labels", meta.labels.as_ref())?;
    let mut total = 0usize;
    for (k, v) in meta.annotations.iter().flatten() {
        lift("metadata.annotations", k, qualified_name(&k.to_lowercase()))?;
        total += k.len() + v.len();
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        return Err(FieldError {
            field: "metadata.annotations".into(),
            message: format!("Too long: may not be more than {TOTAL_ANNOTATION_SIZE_LIMIT} bytes"),
        });
    }
    Ok(())
}

// === Service ===

const PROTOCOLS: [&str; 3] = ["SCTP", "TCP", "UDP"];

fn protocol(field: &str, p: Option<&str>) -> Check {
    match p {
        None => Ok(()), // defaulted to TCP
        Some("TCP" | "UDP" | "SCTP") => Ok(()),
        Some(other) => Err(not_supported(field, other, &PROTOCOLS)),
    }
}

/// The annotation older clients used for `loadBalancerSourceRanges`. The API
/// server validates it when the field is empty; kube-proxy does not read it
/// (cloud providers do), and neither do we.
pub const LB_SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// `ValidateService` plus `ValidateLoadBalancerStatus`, on the defaulted object.
pub fn service(svc: &core::Service) -> Check {
    object_meta(&svc.metadata, true, dns1035_label)?;
    let Some(spec) = svc.spec.as_ref() else {
        return Err(required("spec.ports", ""));
    };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    let supported_types = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
    if !supported_types.contains(&ty) {
        return Err(not_supported("spec.type", ty, &supported_types));
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    let cluster_ips = cluster_ips(spec);
    let headless = cluster_ips.first() == Some(&"None");
    if ports.is_empty() && !headless && ty != "ExternalName" {
        return Err(required("spec.ports", ""));
    }
    match ty {
        "LoadBalancer" | "NodePort" if headless => {
            return Err(invalid(
                "spec.clusterIPs[0]",
                "None",
                format!("may not be set to 'None' for {ty} services"),
            ));
        }
        "ExternalName" => {
            if !cluster_ips.is_empty() {
                return Err(forbidden("spec.clusterIPs", "may not be set for ExternalName services"));
            }
            let cname = spec.external_name.as_deref().unwrap_or("");
            let cname = cname.strip_suffix('.').unwrap_or(cname);
            if cname.is_empty() {
                return Err(required("spec.externalName", ""));
            }
            lift("spec.externalName", cname, dns1123_subdomain(cname))?;
        }
        _ => {}
    }
    let mut names = HashSet::new();
    let mut pairs = HashSet::new();
    let mut node_ports = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        service_port(&path, p, ports.len() > 1, &mut names)?;
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        if !pairs.insert((proto, p.port)) {
            return Err(duplicate(path, &format!("{proto}/{}", p.port)));
        }
        if let Some(np) = p.node_port.filter(|n| *n != 0) {
            if ty == "ClusterIP" {
                return Err(forbidden(
                    format!("{path}.nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
            lift(&format!("{path}.nodePort"), &np.to_string(), port_number(np).map(drop))?;
            if !node_ports.insert((proto, np)) {
                return Err(duplicate(format!("{path}.nodePort"), &np.to_string()));
            }
        }
    }
    labels("spec.selector", spec.selector.as_ref())?;
    session_affinity(spec)?;
    cluster_ip_fields(spec, &cluster_ips, ty)?;
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        let field = format!("spec.externalIPs[{i}]");
        let parsed = legacy_ip(&field, ip)?;
        non_special_ip(&field, ip, parsed)?;
    }
    source_ranges(svc, spec, ty)?;
    if spec.allocate_load_balancer_node_ports.is_some() && ty != "LoadBalancer" {
        return Err(forbidden(
            "spec.allocateLoadBalancerNodePorts",
            "may only be used when `type` is 'LoadBalancer'",
        ));
    }
    traffic_policies(spec, ty)?;
    load_balancer_status(svc)
}

/// `clusterIPs`, or `[clusterIP]` when only the singular field is set (the
/// API server fills one from the other).
fn cluster_ips(spec: &core::ServiceSpec) -> Vec<&str> {
    match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        (_, Some(ip)) if !ip.is_empty() => vec![ip.as_str()],
        _ => Vec::new(),
    }
}

fn service_port(path: &str, p: &core::ServicePort, require_name: bool, names: &mut HashSet<String>) -> Check {
    match p.name.as_deref().unwrap_or("") {
        "" if require_name => return Err(required(format!("{path}.name"), "")),
        "" => {}
        name => {
            lift(&format!("{path}.name"), name, dns1123_label(name))?;
            if !names.insert(name.to_string()) {
                return Err(duplicate(format!("{path}.name"), name));
            }
        }
    }
    lift(
        &format!("{path}.port"),
        &p.port.to_string(),
        port_number(p.port).map(drop),
    )?;
    protocol(&format!("{path}.protocol"), p.protocol.as_deref())?;
    match &p.target_port {
        // Unset, 0 and "" are defaulted to `port`.
        None | Some(IntOrString::Int(0)) => {}
        Some(IntOrString::String(s)) if s.is_empty() => {}
        Some(IntOrString::Int(n)) => lift(&format!("{path}.targetPort"), &n.to_string(), port_number(*n).map(drop))?,
        Some(IntOrString::String(s)) => lift(&format!("{path}.targetPort"), s, port_name(s))?,
    }
    if let Some(ap) = p.app_protocol.as_deref() {
        lift(&format!("{path}.appProtocol"), ap, qualified_name(ap))?;
    }
    Ok(())
}

fn session_affinity(spec: &core::ServiceSpec) -> Check {
    match spec.session_affinity.as_deref().unwrap_or("None") {
        "None" => {
            if spec.session_affinity_config.is_some() {
                return Err(forbidden(
                    "spec.sessionAffinityConfig",
                    "must not be set when session affinity is None",
                ));
            }
        }
        "ClientIP" => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            if let Some(t) = timeout
                && !(1..=MAX_AFFINITY_TIMEOUT_SECS).contains(&t)
            {
                return Err(invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    &t.to_string(),
                    format!("must be greater than 0 and less than {MAX_AFFINITY_TIMEOUT_SECS}"),
                ));
            }
        }
        other => return Err(not_supported("spec.sessionAffinity", other, &["ClientIP", "None"])),
    }
    Ok(())
}

/// `ValidateServiceClusterIPsRelatedFields`: valid addresses, `None` alone,
/// at most one per family, `clusterIP == clusterIPs[0]`, families that
/// match the addresses.
fn cluster_ip_fields(spec: &core::ServiceSpec, ips: &[&str], ty: &str) -> Check {
    if ty == "ExternalName" {
        return Ok(());
    }
    if let (Some(ip), Some(list)) = (spec.cluster_ip.as_deref(), spec.cluster_ips.as_ref())
        && !ip.is_empty()
        && list.first().is_some_and(|first| first != ip)
    {
        return Err(invalid(
            "spec.clusterIPs",
            &list.join(","),
            "first value must match `clusterIP`",
        ));
    }
    if ips.len() > 2 {
        return Err(invalid(
            "spec.clusterIPs",
            &ips.join(","),
            "may only hold up to 2 values",
        ));
    }
    let mut families = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let field = format!("spec.clusterIPs[{i}]");
        if *ip == "None" {
            if i != 0 || ips.len() != 1 {
                return Err(invalid(&field, ip, "must be empty when the first value is 'None'"));
            }
            continue;
        }
        let parsed = legacy_ip(&field, ip)?;
        let family = if parsed.is_ipv4() { "IPv4" } else { "IPv6" };
        if families.contains(&family) {
            return Err(invalid(
                "spec.clusterIPs",
                &ips.join(","),
                "may specify no more than one IP for each IP family",
            ));
        }
        families.push(family);
    }
    let declared = spec.ip_families.as_deref().unwrap_or_default();
    if declared.len() > 2 {
        return Err(invalid(
            "spec.ipFamilies",
            &declared.join(","),
            "may only hold up to 2 values",
        ));
    }
    for (i, f) in declared.iter().enumerate() {
        let field = format!("spec.ipFamilies[{i}]");
        if f != "IPv4" && f != "IPv6" {
            return Err(not_supported(field, f, &["IPv4", "IPv6"]));
        }
        if declared[..i].contains(f) {
            return Err(duplicate(field, f));
        }
        if let Some(actual) = families.get(i)
            && actual != f
        {
            return Err(invalid(
                field,
                f,
                format!("must match the family of `clusterIPs[{i}]` ({actual})"),
            ));
        }
    }
    match spec.ip_family_policy.as_deref() {
        None | Some("PreferDualStack" | "RequireDualStack") => {}
        Some("SingleStack") => {
            if families.len() > 1 || declared.len() > 1 {
                return Err(invalid(
                    "spec.ipFamilyPolicy",
                    "SingleStack",
                    "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified",
                ));
            }
        }
        Some(other) => {
            return Err(not_supported(
                "spec.ipFamilyPolicy",
                other,
                &["PreferDualStack", "RequireDualStack", "SingleStack"],
            ));
        }
    }
    Ok(())
}

/// `loadBalancerSourceRanges`, or the annotation when the field is empty:
/// LoadBalancer only, each (space-trimmed, a historical allowance) a CIDR.
fn source_ranges(svc: &core::Service, spec: &core::ServiceSpec, ty: &str) -> Check {
    let ranges = spec.load_balancer_source_ranges.as_deref().unwrap_or_default();
    if !ranges.is_empty() {
        if ty != "LoadBalancer" {
            return Err(forbidden(
                "spec.loadBalancerSourceRanges",
                "may only be used when `type` is 'LoadBalancer'",
            ));
        }
        for (i, r) in ranges.iter().enumerate() {
            let field = format!("spec.loadBalancerSourceRanges[{i}]");
            parse_cidr_sloppy(r.trim()).ok_or_else(|| invalid(&field, r, CIDR_MSG))?;
        }
    } else if let Some(val) = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LB_SOURCE_RANGES_ANNOTATION))
    {
        let field = format!("metadata.annotations[{LB_SOURCE_RANGES_ANNOTATION}]");
        if ty != "LoadBalancer" {
            return Err(forbidden(field, "may only be used when `type` is 'LoadBalancer'"));
        }
        let val = val.trim();
        if !val.is_empty() {
            for r in val.split(',') {
                parse_cidr_sloppy(r.trim()).ok_or_else(|| invalid(&field, r, CIDR_MSG))?;
            }
        }
    }
    Ok(())
}

fn traffic_policies(spec: &core::ServiceSpec, ty: &str) -> Check {
    let externally_accessible = ty == "LoadBalancer"
        || ty == "NodePort"
        || (ty == "ClusterIP" && spec.external_ips.as_ref().is_some_and(|e| !e.is_empty()));
    let etp = spec.external_traffic_policy.as_deref();
    match etp {
        Some(p) if !externally_accessible && !p.is_empty() => {
            return Err(invalid(
                "spec.externalTrafficPolicy",
                p,
                "may only be set for externally-accessible services",
            ));
        }
        None | Some("" | "Cluster" | "Local") => {}
        Some(other) => {
            return Err(not_supported(
                "spec.externalTrafficPolicy",
                other,
                &["Cluster", "Local"],
            ));
        }
    }
    let needs_health_check = ty == "LoadBalancer" && etp == Some("Local");
    match spec.health_check_node_port.filter(|p| *p != 0) {
        Some(p) if !needs_health_check => {
            return Err(invalid(
                "spec.healthCheckNodePort",
                &p.to_string(),
                "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            ));
        }
        // Missing is allowed: the API server allocates it.
        Some(p) => lift("spec.healthCheckNodePort", &p.to_string(), port_number(p).map(drop))?,
        None => {}
    }
    match spec.internal_traffic_policy.as_deref() {
        None | Some("Cluster" | "Local") => {}
        Some(other) => {
            return Err(not_supported(
                "spec.internalTrafficPolicy",
                other,
                &["Cluster", "Local"],
            ));
        }
    }
    match spec.traffic_distribution.as_deref() {
        None | Some("PreferClose" | "PreferSameZone" | "PreferSameNode") => {}
        Some(other) => {
            return Err(not_supported(
                "spec.trafficDistribution",
                other,
                &["PreferClose", "PreferSameNode", "PreferSameZone"],
            ));
        }
    }
    Ok(())
}

/// `ValidateLoadBalancerStatus`: ingress IPs, hostnames that are not IPs,
/// `ipMode` only with an IP and only `VIP` or `Proxy`.
fn load_balancer_status(svc: &core::Service) -> Check {
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    for (i, ing) in ingress.iter().enumerate() {
        let path = format!("status.loadBalancer.ingress[{i}]");
        let ip = ing.ip.as_deref().filter(|ip| !ip.is_empty());
        if let Some(ip) = ip {
            legacy_ip(&format!("{path}.ip"), ip)?;
        }
        if let Some(h) = ing.hostname.as_deref().filter(|h| !h.is_empty()) {
            lift(&format!("{path}.hostname"), h, dns1123_subdomain(h))?;
            if parse_ip_sloppy(h).is_some() {
                return Err(invalid(
                    format!("{path}.hostname"),
                    h,
                    "must be a DNS name, not an IP address",
                ));
            }
        }
        match ing.ip_mode.as_deref() {
            None => {}
            Some(_) if ip.is_none() => {
                return Err(forbidden(
                    format!("{path}.ipMode"),
                    "may not be specified when `ip` is not set",
                ));
            }
            Some("VIP" | "Proxy") => {}
            Some(other) => return Err(not_supported(format!("{path}.ipMode"), other, &["Proxy", "VIP"])),
        }
    }
    Ok(())
}

// === EndpointSlice ===

/// `ValidateEndpointSlice` (and the `kubernetes.io/service-name` label,
/// which as a label value is checked with the other labels).
pub fn endpoint_slice(s: &discovery::EndpointSlice) -> Check {
    object_meta(&s.metadata, true, dns1123_subdomain)?;
    let family = match s.address_type.as_str() {
        "" => return Err(required("addressType", "")),
        "IPv4" => Some(false),
        "IPv6" => Some(true),
        "FQDN" => None,
        other => return Err(not_supported("addressType", other, &["FQDN", "IPv4", "IPv6"])),
    };
    if s.endpoints.len() > MAX_SLICE_ENDPOINTS {
        return Err(too_many("endpoints", s.endpoints.len(), MAX_SLICE_ENDPOINTS));
    }
    for (i, ep) in s.endpoints.iter().enumerate() {
        let path = format!("endpoints[{i}]");
        if ep.addresses.is_empty() {
            return Err(required(format!("{path}.addresses"), "must contain at least 1 address"));
        }
        if ep.addresses.len() > MAX_ENDPOINT_ADDRESSES {
            return Err(too_many(
                format!("{path}.addresses"),
                ep.addresses.len(),
                MAX_ENDPOINT_ADDRESSES,
            ));
        }
        for (j, a) in ep.addresses.iter().enumerate() {
            let field = format!("{path}.addresses[{j}]");
            match family {
                Some(v6) => {
                    let ip = parse_ip_sloppy(a).filter(|ip| ip.is_ipv6() == v6).ok_or_else(|| {
                        invalid(
                            &field,
                            a,
                            if v6 {
                                "must be a valid IPv6 address"
                            } else {
                                "must be a valid IPv4 address"
                            },
                        )
                    })?;
                    non_special_ip(&field, a, ip)?;
                }
                None => lift(&field, a, fqdn(a))?,
            }
        }
        if let Some(n) = ep.node_name.as_deref() {
            lift(&format!("{path}.nodeName"), n, dns1123_subdomain(n))?;
        }
        let topology = ep.deprecated_topology.as_ref();
        if let Some(t) = topology.filter(|t| t.len() > MAX_TOPOLOGY_LABELS) {
            return Err(too_many(
                format!("{path}.deprecatedTopology"),
                t.len(),
                MAX_TOPOLOGY_LABELS,
            ));
        }
        labels(&format!("{path}.deprecatedTopology"), topology)?;
        if let Some(h) = ep.hostname.as_deref() {
            lift(&format!("{path}.hostname"), h, dns1123_label(h))?;
        }
        if let Some(hints) = ep.hints.as_ref() {
            let zones = hints.for_zones.as_deref().unwrap_or_default();
            hint_names(
                &format!("{path}.hints.forZones"),
                zones.iter().map(|z| z.name.as_str()),
                label_value,
            )?;
            let nodes = hints.for_nodes.as_deref().unwrap_or_default();
            hint_names(
                &format!("{path}.hints.forNodes"),
                nodes.iter().map(|n| n.name.as_str()),
                dns1123_subdomain,
            )?;
        }
    }
    let ports = s.ports.as_deref().unwrap_or_default();
    if ports.len() > MAX_SLICE_PORTS {
        return Err(too_many("ports", ports.len(), MAX_SLICE_PORTS));
    }
    let mut names = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let path = format!("ports[{i}]");
        let name = p.name.as_deref().unwrap_or("");
        if !name.is_empty() {
            lift(&format!("{path}.name"), name, dns1123_label(name))?;
        }
        if !names.insert(name) {
            return Err(duplicate(format!("{path}.name"), name));
        }
        protocol(&format!("{path}.protocol"), p.protocol.as_deref())?;
        if let Some(ap) = p.app_protocol.as_deref() {
            lift(&format!("{path}.appProtocol"), ap, qualified_name(ap))?;
        }
    }
    Ok(())
}

fn hint_names<'a>(
    path: &str,
    names: impl ExactSizeIterator<Item = &'a str>,
    rule: fn(&str) -> Result<(), String>,
) -> Check {
    if names.len() > MAX_HINTS {
        return Err(too_many(path, names.len(), MAX_HINTS));
    }
    let mut seen = HashSet::new();
    for (i, n) in names.enumerate() {
        let field = format!("{path}[{i}].name");
        if !seen.insert(n) {
            return Err(duplicate(field, n));
        }
        lift(&field, n, rule(n))?;
    }
    Ok(())
}

/// `IsFullyQualifiedDomainName`: at least two labels, a subdomain, at most
/// 253 characters; a trailing dot is allowed.
fn fqdn(s: &str) -> Result<(), String> {
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() {
        return Err("must be a valid domain name".into());
    }
    if !name.contains('.') {
        return Err("should be a domain with at least two segments separated by dots".into());
    }
    dns1123_subdomain(name)
}

// === Node ===

/// `ValidateNode` for the parts we read: the name (a DNS-1123 subdomain)
/// and labels. Node addresses are not validated by the API server; unusable
/// ones are skipped at conversion, as kube-proxy does.
pub fn node(n: &core::Node) -> Check {
    object_meta(&n.metadata, false, dns1123_subdomain)
}

#[cfg(test)]
mod tests;
