//! Parsing and validating single values (modes, schedulers, CIDRs, node-port addresses, bind
//! addresses, the hostname), each error naming the field and the value.

use super::*;

pub(super) fn parse_mode(s: &str, field: &str) -> Result<ProxyMode, ConfigError> {
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return Ok(ProxyMode::default());
    }
    trimmed.parse().map_err(|reason: String| invalid(field, s, reason))
}

pub(super) fn validate_scheduler(s: &str, field: &str) -> Result<String, ConfigError> {
    let trimmed = s.trim();
    if trimmed.is_empty() || IPVS_SCHEDULERS.contains(&trimmed) {
        Ok(trimmed.to_string())
    } else {
        Err(invalid(
            field,
            s,
            format!(
                "unknown IPVS scheduler (want one of {}; blank means rr)",
                IPVS_SCHEDULERS.join(", ")
            ),
        ))
    }
}

/// Parses one CIDR. Like Go's `net.ParseCIDR`, host bits are allowed and masked off.
pub(super) fn parse_cidr(s: &str) -> Result<IpNet, String> {
    IpNet::from_str(s.trim())
        .map(|n| n.trunc())
        .map_err(|_| CIDR_HINT.to_string())
}

/// Field name for item `i` of a list: `path[i]` for file lists (like upstream's field paths),
/// just the flag for comma-separated flag values.
pub(super) fn item_field(field: &str, i: usize, indexed: bool) -> String {
    if indexed {
        format!("{field}[{i}]")
    } else {
        field.to_string()
    }
}

pub(super) fn parse_cidr_list(items: &[String], field: &str, indexed: bool) -> Result<Vec<IpNet>, ConfigError> {
    items
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.trim().is_empty())
        .map(|(i, s)| parse_cidr(s).map_err(|r| invalid(item_field(field, i, indexed), s, r)))
        .collect()
}

/// Cluster CIDRs: `--cluster-cidr`, else file `clusterCIDR`, else file `detectLocal.clusterCIDRs`
/// (the internal config's field, accepted as an extension). Upstream allows one CIDR or a
/// dual-stack pair.
pub(super) fn resolve_cluster_cidrs(
    flags: &ProxyFlags,
    file: &FileConfig,
    warnings: &mut Vec<String>,
) -> Result<Vec<IpNet>, ConfigError> {
    let split = |s: &str| s.split(',').map(str::to_string).collect::<Vec<_>>();
    let file_cidr = file.cluster_cidr.as_deref().filter(|s| !s.trim().is_empty());
    let detect_local = file.detect_local_cluster_cidrs.as_ref().filter(|v| !v.is_empty());
    let (field, raw, items, indexed) = match (&flags.cluster_cidr, file_cidr, detect_local) {
        (Some(s), _, _) => ("--cluster-cidr", s.clone(), split(s), false),
        (None, Some(s), dl) => {
            if dl.is_some_and(|dl| *dl != split(s)) {
                warnings.push("detectLocal.clusterCIDRs: ignored because clusterCIDR is set".to_string());
            }
            ("clusterCIDR", s.to_string(), split(s), false)
        }
        (None, None, Some(list)) => ("detectLocal.clusterCIDRs", list.join(","), list.clone(), true),
        (None, None, None) => return Ok(Vec::new()),
    };
    if raw.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut cidrs = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if item.trim().is_empty() {
            return Err(invalid(item_field(field, i, indexed), &raw, "empty entry in CIDR list"));
        }
        cidrs.push(parse_cidr(item).map_err(|r| invalid(item_field(field, i, indexed), item, r))?);
    }
    let dual_stack_pair = cidrs.len() == 2 && matches!(cidrs[0], IpNet::V4(_)) != matches!(cidrs[1], IpNet::V4(_));
    if cidrs.len() > 2 || (cidrs.len() == 2 && !dual_stack_pair) {
        return Err(invalid(
            field,
            raw,
            "must be a single CIDR or a dual-stack pair (one IPv4, one IPv6), e.g. 10.244.0.0/16,fd00:10:244::/56",
        ));
    }
    Ok(cidrs)
}

/// NodePort addresses: CIDRs, or upstream's keywords. `primary` must stand alone (upstream rule);
/// `all` means every node address; `localhost` expands to the loopback ranges.
pub(super) fn parse_nodeport_addresses(
    items: &[String],
    field: &str,
    indexed: bool,
) -> Result<NodePortAddresses, ConfigError> {
    let entries: Vec<(usize, &str)> = items
        .iter()
        .enumerate()
        .map(|(i, s)| (i, s.trim()))
        .filter(|(_, s)| !s.is_empty())
        .collect();
    // An empty value as a whole means "all"; an empty entry inside a list
    // (`10.0.0.0/8,,`) is a typo, refused like any other invalid entry.
    if !entries.is_empty()
        && let Some((i, _)) = items.iter().enumerate().find(|(_, s)| s.trim().is_empty())
    {
        return Err(invalid(item_field(field, i, indexed), "", "empty entry in the list"));
    }
    if entries.is_empty() {
        return Ok(NodePortAddresses::All);
    }
    if let Some(&(i, s)) = entries.iter().find(|(_, s)| *s == "primary") {
        if entries.len() != 1 {
            return Err(invalid(
                item_field(field, i, indexed),
                s,
                "can't use both 'primary' and CIDRs",
            ));
        }
        return Ok(NodePortAddresses::Primary);
    }
    let has_all = entries.iter().any(|(_, s)| *s == "all");
    if has_all {
        // `All` never includes loopback, so "all,localhost" cannot be honoured faithfully.
        if let Some(&(i, s)) = entries.iter().find(|(_, s)| *s == "localhost") {
            return Err(invalid(
                item_field(field, i, indexed),
                s,
                "sliceproxy cannot combine 'all' with 'localhost'",
            ));
        }
    }
    let mut cidrs = Vec::new();
    for (i, s) in entries {
        match s {
            "all" => {}
            "localhost" => {
                cidrs.push(IpNet::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8).expect("valid prefix"));
                cidrs.push(IpNet::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128).expect("valid prefix"));
            }
            _ => cidrs.push(
                parse_cidr(s)
                    .map_err(|_| invalid(item_field(field, i, indexed), s, format!("{CIDR_HINT}, or 'primary'")))?,
            ),
        }
    }
    Ok(if has_all {
        NodePortAddresses::All
    } else {
        NodePortAddresses::Cidrs(cidrs)
    })
}

/// Parses a bind address in the forms upstream accepts after defaulting: `IP:port`,
/// `[IPv6]:port`, or a bare IP (`0.0.0.0`, `::`, also `[::]`) which gets `default_port`
/// (upstream's AppendPortIfNeeded). A missing IP (`:10256`) is rejected as upstream does. Port 0
/// is accepted (upstream requires 1-65535) so tests can ask for an ephemeral port.
pub(super) fn parse_bind_address(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'))
        && let Ok(ip) = inner.parse::<Ipv6Addr>()
    {
        return Ok(SocketAddr::new(IpAddr::V6(ip), default_port));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let example = "e.g. 0.0.0.0:10256 or [::]:10256";
    match s.rsplit_once(':') {
        Some(("", _)) => Err(format!("missing IP ({example} to listen on all addresses)")),
        Some((host, port)) => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.parse::<IpAddr>().is_err() {
                Err(format!("host must be an IP address, not a name ({example})"))
            } else if port.parse::<u16>().is_err() {
                Err("port must be a number from 0 to 65535".to_string())
            } else {
                Err(format!("must be IP:port ({example}; IPv6 needs brackets)"))
            }
        }
        None => Err(format!("must be IP or IP:port ({example})")),
    }
}

/// A flag value of `""` disables the server. A file value of `""` means the default, because
/// upstream's defaulting treats it that way and kubeadm writes `healthzBindAddress: ""`.
pub(super) fn resolve_bind_address(
    flag: &Option<String>,
    flag_name: &str,
    file: &Option<String>,
    file_field: &str,
    default: SocketAddr,
) -> Result<Option<SocketAddr>, ConfigError> {
    let port = default.port();
    match (flag, file) {
        (Some(s), _) if s.trim().is_empty() => Ok(None),
        (Some(s), _) => parse_bind_address(s, port)
            .map(Some)
            .map_err(|r| invalid(flag_name, s, r)),
        (None, Some(s)) if !s.trim().is_empty() => parse_bind_address(s, port)
            .map(Some)
            .map_err(|r| invalid(file_field, s, r)),
        (None, _) => Ok(Some(default)),
    }
}

/// Node name precedence: flag, file, `NODE_NAME`, machine hostname; each trimmed and lowercased
/// like upstream's `nodeutil.GetHostname`. An explicitly empty `--hostname-override` is an error,
/// as upstream ("empty hostname-override is invalid"), because it usually means an unexpanded
/// `$(NODE_NAME)`-style mistake in a manifest.
pub(super) fn resolve_hostname(
    flag: Option<&str>,
    file: Option<&str>,
    env_node_name: Option<&str>,
    machine: &str,
) -> Result<String, ConfigError> {
    if let Some(raw) = flag {
        let name = raw.trim();
        if name.is_empty() {
            return Err(invalid("--hostname-override", raw, "must not be empty"));
        }
        return Ok(name.to_lowercase());
    }
    let name = [file, env_node_name, Some(machine)]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .ok_or_else(|| {
            invalid(
                "hostname",
                machine,
                "no node name: set --hostname-override, hostnameOverride or NODE_NAME",
            )
        })?;
    Ok(name.to_lowercase())
}
