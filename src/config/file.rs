//! The `KubeProxyConfiguration` v1alpha1 file.

use super::*;

// ---------------------------------------------------------------------------------------------
// The config file.
//
// The YAML is read into a generic `serde_yaml::Value` and walked by hand rather than derived into
// structs: that is what lets unknown fields become warnings while still reporting a wrong type
// with the exact field path (`iptables.minSyncPeriod`) and the value as written.
// ---------------------------------------------------------------------------------------------

/// A duration read from the file, with its original text for messages.
pub(super) type FileDuration = Option<(Duration, String)>;

/// The fields sliceproxy uses from a v1alpha1 file; None = absent or null.
#[derive(Debug, Default)]
pub(super) struct FileConfig {
    pub(super) kubeconfig: Option<String>,
    pub(super) hostname_override: Option<String>,
    pub(super) healthz_bind_address: Option<String>,
    pub(super) metrics_bind_address: Option<String>,
    pub(super) mode: Option<String>,
    pub(super) cluster_cidr: Option<String>,
    pub(super) detect_local_cluster_cidrs: Option<Vec<String>>,
    pub(super) node_port_addresses: Option<Vec<String>>,
    pub(super) iptables: FileModeSection,
    pub(super) nftables: FileModeSection,
    pub(super) ipvs: FileIpvsSection,
}

/// `iptables:` / `nftables:`.
#[derive(Debug, Default)]
pub(super) struct FileModeSection {
    pub(super) masquerade_all: Option<bool>,
    pub(super) sync_period: FileDuration,
    pub(super) min_sync_period: FileDuration,
    /// `nftables.scheduler` only (a sliceproxy extension).
    pub(super) scheduler: Option<String>,
    /// `localhostNodePorts`: upstream's in `iptables:`, a sliceproxy
    /// extension in `nftables:`.
    pub(super) localhost_node_ports: Option<bool>,
}

/// `ipvs:`.
#[derive(Debug, Default)]
pub(super) struct FileIpvsSection {
    pub(super) sync_period: FileDuration,
    pub(super) min_sync_period: FileDuration,
    pub(super) scheduler: Option<String>,
    pub(super) exclude_cidrs: Option<Vec<String>>,
    pub(super) strict_arp: Option<bool>,
    pub(super) tcp_timeout: FileDuration,
    pub(super) tcp_fin_timeout: FileDuration,
    pub(super) udp_timeout: FileDuration,
}

/// Top-level v1alpha1 fields sliceproxy accepts but does not act on.
pub(super) const IGNORED_TOP_LEVEL: &[&str] = &[
    "featureGates",
    "logging",
    "bindAddress",
    "bindAddressHardFail",
    "enableProfiling",
    "showHiddenMetricsForVersion",
    "winkernel",
    "oomScoreAdj",
    "conntrack",
    "configSyncPeriod",
    "portRange",
    "windowsRunAsService",
];

pub(super) fn read_file_config(text: &str, file: &str, warnings: &mut Vec<String>) -> Result<FileConfig, ConfigError> {
    let parse_err = |message: String| ConfigError::Parse {
        file: file.to_string(),
        message,
    };
    let root: Value = serde_yaml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
    let root = match root {
        Value::Mapping(m) => m,
        Value::Null => return Err(parse_err(format!("empty document; want a {KIND}"))),
        other => {
            return Err(parse_err(format!("want a {KIND} mapping, got {}", describe(&other))));
        }
    };

    for (key, want) in [("apiVersion", API_VERSION), ("kind", KIND)] {
        match root.get(key) {
            Some(Value::String(s)) if s == want => {}
            Some(Value::Null) | None => {
                return Err(invalid(key, "", format!("missing; want {want}")));
            }
            Some(v) => return Err(invalid(key, describe(v), format!("want {want}"))),
        }
    }

    let mut out = FileConfig::default();
    for (k, v) in &root {
        let Some(key) = k.as_str() else {
            warnings.push(unknown_field(&describe(k)));
            continue;
        };
        match key {
            "apiVersion" | "kind" => {}
            "hostnameOverride" => out.hostname_override = want_str(v, key)?,
            "healthzBindAddress" => out.healthz_bind_address = want_str(v, key)?,
            "metricsBindAddress" => out.metrics_bind_address = want_str(v, key)?,
            "mode" => out.mode = want_str(v, key)?,
            "clusterCIDR" => out.cluster_cidr = want_str(v, key)?,
            "nodePortAddresses" => out.node_port_addresses = want_str_list(v, key)?,
            "clientConnection" => {
                for_each_field(v, key, warnings, |sub, path, v, warnings| {
                    match sub {
                        "kubeconfig" => out.kubeconfig = want_str(v, path)?,
                        "acceptContentTypes" | "contentType" | "qps" | "burst" => ignored_field(v, path, warnings),
                        _ => warnings.push(unknown_field(path)),
                    }
                    Ok(())
                })?;
            }
            "iptables" | "nftables" => {
                let section = if key == "iptables" {
                    &mut out.iptables
                } else {
                    &mut out.nftables
                };
                let ignored: &[&str] = if key == "iptables" {
                    &["masqueradeBit", "snatNodeInternalIP"]
                } else {
                    &["masqueradeBit"]
                };
                for_each_field(v, key, warnings, |sub, path, v, warnings| {
                    match sub {
                        "masqueradeAll" => section.masquerade_all = want_bool(v, path)?,
                        "syncPeriod" => section.sync_period = want_duration(v, path)?,
                        "minSyncPeriod" => section.min_sync_period = want_duration(v, path)?,
                        "scheduler" if key == "nftables" => section.scheduler = want_str(v, path)?,
                        "localhostNodePorts" => section.localhost_node_ports = want_bool(v, path)?,
                        _ if ignored.contains(&sub) => ignored_field(v, path, warnings),
                        _ => warnings.push(unknown_field(path)),
                    }
                    Ok(())
                })?;
            }
            "ipvs" => {
                let ipvs = &mut out.ipvs;
                for_each_field(v, key, warnings, |sub, path, v, warnings| {
                    match sub {
                        "syncPeriod" => ipvs.sync_period = want_duration(v, path)?,
                        "minSyncPeriod" => ipvs.min_sync_period = want_duration(v, path)?,
                        "scheduler" => ipvs.scheduler = want_str(v, path)?,
                        "excludeCIDRs" => ipvs.exclude_cidrs = want_str_list(v, path)?,
                        "strictARP" => ipvs.strict_arp = want_bool(v, path)?,
                        "tcpTimeout" => ipvs.tcp_timeout = want_duration(v, path)?,
                        "tcpFinTimeout" => ipvs.tcp_fin_timeout = want_duration(v, path)?,
                        "udpTimeout" => ipvs.udp_timeout = want_duration(v, path)?,
                        _ => warnings.push(unknown_field(path)),
                    }
                    Ok(())
                })?;
            }
            "detectLocalMode" => {
                // sliceproxy always detects local traffic by cluster CIDR, upstream's default.
                if let Some(m) = want_str(v, key)?
                    && !m.is_empty()
                    && m != "ClusterCIDR"
                {
                    warnings.push(format!(
                        "{key}: {m:?} ignored: not implemented by sliceproxy (it always uses ClusterCIDR)"
                    ));
                }
            }
            "detectLocal" => {
                for_each_field(v, key, warnings, |sub, path, v, warnings| {
                    match sub {
                        "clusterCIDRs" => out.detect_local_cluster_cidrs = want_str_list(v, path)?,
                        "bridgeInterface" | "interfaceNamePrefix" => ignored_field(v, path, warnings),
                        _ => warnings.push(unknown_field(path)),
                    }
                    Ok(())
                })?;
            }
            _ if IGNORED_TOP_LEVEL.contains(&key) => ignored_field(v, key, warnings),
            _ => warnings.push(unknown_field(key)),
        }
    }
    Ok(out)
}

/// Visits the fields of a nested section, calling `f(key, "section.key", value, warnings)`.
pub(super) fn for_each_field<F>(v: &Value, path: &str, warnings: &mut Vec<String>, mut f: F) -> Result<(), ConfigError>
where
    F: FnMut(&str, &str, &Value, &mut Vec<String>) -> Result<(), ConfigError>,
{
    let map: &Mapping = match v {
        Value::Null => return Ok(()),
        Value::Mapping(m) => m,
        other => return Err(invalid(path, describe(other), "must be a mapping")),
    };
    for (k, v) in map {
        match k.as_str() {
            Some(key) => f(key, &format!("{path}.{key}"), v, warnings)?,
            None => warnings.push(unknown_field(&format!("{path}.{}", describe(k)))),
        }
    }
    Ok(())
}

pub(super) fn unknown_field(path: &str) -> String {
    format!("{path}: unknown field, ignored (not part of {API_VERSION} {KIND})")
}

/// Warns about a known field sliceproxy does not implement, but only when it carries a value:
/// kubeadm writes every field with zero values, and warning about those would bury real ones.
pub(super) fn ignored_field(v: &Value, path: &str, warnings: &mut Vec<String>) {
    if !is_zero_value(v) {
        warnings.push(format!("{path}: ignored: not implemented by sliceproxy"));
    }
}

/// Whether a value is Go's zero value as kubeadm would write it (null, "", "0s", 0, false, empty
/// collections, or a mapping of only such values).
pub(super) fn is_zero_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || parse_go_duration(s) == Ok(Duration::ZERO),
        Value::Sequence(s) => s.is_empty(),
        Value::Mapping(m) => m.values().all(is_zero_value),
        Value::Tagged(t) => is_zero_value(&t.value),
    }
}

/// A value as the operator wrote it, for error messages.
pub(super) fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => serde_json::to_string(other).unwrap_or_else(|_| format!("{other:?}")),
    }
}

pub(super) fn want_str(v: &Value, path: &str) -> Result<Option<String>, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        other => Err(invalid(path, describe(other), "must be a string")),
    }
}

pub(super) fn want_bool(v: &Value, path: &str) -> Result<Option<bool>, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        other => Err(invalid(path, describe(other), "must be true or false")),
    }
}

/// Durations are strings in Go syntax (metav1.Duration); a bare number is a type error, as it is
/// for upstream's JSON decoding.
pub(super) fn want_duration(v: &Value, path: &str) -> Result<FileDuration, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => parse_go_duration(s.trim())
            .map(|d| Some((d, s.clone())))
            .map_err(|reason| invalid(path, s, reason)),
        other => Err(invalid(
            path,
            describe(other),
            "must be a duration string (e.g. \"30s\", \"1m0s\")",
        )),
    }
}

pub(super) fn want_str_list(v: &Value, path: &str) -> Result<Option<Vec<String>>, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(invalid(format!("{path}[{i}]"), describe(other), "must be a string")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        other => Err(invalid(path, describe(other), "must be a list of strings")),
    }
}
