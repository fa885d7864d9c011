//! The node's own addresses, and which of them serve node ports.

use std::net::IpAddr;

use super::exec::Exec;
use crate::config::NodePortAddresses;
use crate::model::IpFamily;

/// Which of the node's addresses serve node ports. Loopback never does: a
/// node port on 127.0.0.1 needs `route_localnet`, which opens the node's
/// localhost to its neighbours (upstream's nftables mode refuses it too);
/// link-local IPv6 addresses are per-link and never a service frontend.
pub fn node_port_addresses(setting: &NodePortAddresses, node: &[IpAddr]) -> Vec<IpAddr> {
    let usable = |ip: &&IpAddr| !ip.is_loopback() && !is_link_local(ip);
    let mut out: Vec<IpAddr> = node
        .iter()
        .filter(usable)
        .filter(|ip| match setting {
            NodePortAddresses::All => true,
            // The primary address of each family: the first one listed.
            NodePortAddresses::Primary => {
                node.iter().filter(usable).find(|a| IpFamily::of(a) == IpFamily::of(ip)) == Some(*ip)
            }
            NodePortAddresses::Cidrs(cidrs) => cidrs.iter().any(|c| c.contains(*ip)),
        })
        .copied()
        .collect();
    out.sort();
    out.dedup();
    out
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// The addresses configured on this node's interfaces (`ip -j addr`),
/// through the same seam the dataplane runs its tools with, so a test can
/// aim it at a network namespace.
pub fn local_addresses(exec: &mut dyn Exec) -> Result<Vec<IpAddr>, String> {
    let out = exec
        .run("ip", &["-j", "addr", "show"], b"")
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if !out.success {
        return Err(format!("ip -j addr show: {}", out.stderr_text()));
    }
    parse_ip_addr_json(&out.stdout)
}

/// Parse `ip -j addr show` output.
pub fn parse_ip_addr_json(json: &[u8]) -> Result<Vec<IpAddr>, String> {
    let links: serde_json::Value = serde_json::from_slice(json).map_err(|e| format!("ip -j addr show: {e}"))?;
    let mut out = Vec::new();
    for link in links.as_array().into_iter().flatten() {
        for info in link.get("addr_info").and_then(|a| a.as_array()).into_iter().flatten() {
            if let Some(ip) = info.get("local").and_then(|l| l.as_str()).and_then(|s| s.parse().ok()) {
                out.push(ip);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_link_local_never_serve_node_ports() {
        let addrs: Vec<IpAddr> = [
            "127.0.0.1",
            "::1",
            "fe80::1",
            "169.254.1.1",
            "192.168.50.10",
            "fd00:50::10",
            "10.0.0.5",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let all = node_port_addresses(&NodePortAddresses::All, &addrs);
        assert_eq!(
            all,
            ["10.0.0.5", "192.168.50.10", "fd00:50::10"].map(|a| a.parse::<IpAddr>().unwrap())
        );
        let primary = node_port_addresses(&NodePortAddresses::Primary, &addrs);
        assert_eq!(
            primary,
            ["192.168.50.10", "fd00:50::10"].map(|a| a.parse::<IpAddr>().unwrap())
        );
        let cidr = node_port_addresses(
            &NodePortAddresses::Cidrs(vec!["10.0.0.0/8".parse().unwrap(), "127.0.0.0/8".parse().unwrap()]),
            &addrs,
        );
        assert_eq!(cidr, ["10.0.0.5".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn parses_ip_json() {
        let json = br#"[{"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1"}]},{"ifname":"eth0","addr_info":[{"local":"192.168.50.10"},{"local":"fd00:50::10"}]}]"#;
        assert_eq!(parse_ip_addr_json(json).unwrap().len(), 3);
    }
}
