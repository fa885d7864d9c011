//! Writes a synthetic cluster as `kubectl get -o yaml` would print it, for
//! memory and speed measurements of `sliceproxy render`:
//!
//!     cargo run --release --example gen_cluster -- SERVICES ENDPOINTS [--list] [--compact] > cluster.yaml
//!
//! SERVICES ClusterIP Services (every tenth a NodePort), each with one
//! EndpointSlice of ENDPOINTS ready endpoints spread over 20 nodes in three
//! zones, plus the Nodes. Without `--list` every object is its own YAML
//! document; with it, one `kind: List` holds them all (items before kind, as
//! kubectl writes it). `--compact` leaves out what `render` does not read
//! (uids, timestamps, target references, zones), about a third of the size.

use std::io::{self, BufWriter, Write};

/// Write the cluster to `w`.
pub fn write_cluster(
    w: &mut impl Write,
    services: usize,
    endpoints: usize,
    list: bool,
    compact: bool,
) -> io::Result<()> {
    // Each object is written as a YAML block indented by `ind`; in a List the
    // first line gets the `- ` item marker.
    let ind = if list { "  " } else { "" };
    let start = |w: &mut dyn Write| -> io::Result<()> { if list { write!(w, "- ") } else { writeln!(w, "---") } };
    if list {
        writeln!(w, "apiVersion: v1\nitems:")?;
    }
    for n in 0..20 {
        start(w)?;
        writeln!(
            w,
            "apiVersion: v1\n{ind}kind: Node\n{ind}metadata:\n{ind}  labels:\n{ind}    kubernetes.io/hostname: node-{n}\n{ind}    topology.kubernetes.io/zone: zone-{}\n{ind}  name: node-{n}\n{ind}status:\n{ind}  addresses:\n{ind}  - address: 192.168.{}.{}\n{ind}    type: InternalIP\n{ind}  - address: node-{n}\n{ind}    type: Hostname",
            n % 3,
            n / 250,
            n % 250 + 1
        )?;
    }
    for s in 0..services {
        let ns = format!("ns-{}", s % 50);
        let name = format!("svc-{s}");
        let cip = format!("10.{}.{}.{}", 96 + s / 65536, (s / 256) % 256, s % 256);
        let node_port = s % 10 == 0;
        start(w)?;
        writeln!(
            w,
            "apiVersion: v1\n{ind}kind: Service\n{ind}metadata:{}\n{ind}  name: {name}\n{ind}  namespace: {ns}{}\n{ind}spec:\n{ind}  clusterIP: {cip}\n{ind}  clusterIPs:\n{ind}  - {cip}\n{ind}  internalTrafficPolicy: Cluster\n{ind}  ipFamilies:\n{ind}  - IPv4\n{ind}  ipFamilyPolicy: SingleStack\n{ind}  ports:\n{ind}  - name: http\n{ind}    port: 80\n{ind}    protocol: TCP\n{ind}    targetPort: 8080{}\n{ind}  selector:\n{ind}    app: {name}\n{ind}  sessionAffinity: None\n{ind}  type: {}\n{ind}status:\n{ind}  loadBalancer: {{}}",
            if compact {
                String::new()
            } else {
                format!("\n{ind}  creationTimestamp: \"2026-01-01T00:00:00Z\"\n{ind}  labels:\n{ind}    app: {name}")
            },
            if compact {
                String::new()
            } else {
                format!(
                    "\n{ind}  resourceVersion: \"{}\"\n{ind}  uid: 6f1c2d3e-0000-4000-8000-{s:012}",
                    1000 + s
                )
            },
            if node_port {
                format!("\n{ind}    nodePort: {}", 30000 + s % 2768)
            } else {
                String::new()
            },
            if node_port {
                format!("NodePort\n{ind}  externalTrafficPolicy: Cluster")
            } else {
                "ClusterIP".into()
            },
        )?;
        start(w)?;
        writeln!(
            w,
            "addressType: IPv4\n{ind}apiVersion: discovery.k8s.io/v1\n{ind}endpoints:"
        )?;
        for e in 0..endpoints {
            let i = s * endpoints + e;
            let node = i % 20;
            writeln!(
                w,
                "{ind}- addresses:\n{ind}  - 10.{}.{}.{}\n{ind}  conditions:\n{ind}    ready: true\n{ind}    serving: true\n{ind}    terminating: false\n{ind}  nodeName: node-{node}",
                128 + (i / 65536) % 64,
                (i / 256) % 256,
                i % 256,
            )?;
            if !compact {
                writeln!(
                    w,
                    "{ind}  targetRef:\n{ind}    kind: Pod\n{ind}    name: {name}-{e}\n{ind}    namespace: {ns}\n{ind}    uid: 0a1b2c3d-0000-4000-8000-{i:012}\n{ind}  zone: zone-{}",
                    node % 3
                )?;
            }
        }
        writeln!(
            w,
            "{ind}kind: EndpointSlice\n{ind}metadata:\n{ind}  generateName: {name}-\n{ind}  labels:\n{ind}    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io\n{ind}    kubernetes.io/service-name: {name}\n{ind}  name: {name}-abcde\n{ind}  namespace: {ns}\n{ind}  resourceVersion: \"{}\"\n{ind}ports:\n{ind}- name: http\n{ind}  port: 8080\n{ind}  protocol: TCP",
            2000 + s
        )?;
    }
    if list {
        writeln!(w, "kind: List\nmetadata:\n  resourceVersion: \"\"")?;
    }
    Ok(())
}

#[allow(dead_code)] // also compiled into benches/render_memory.rs, which has its own main
fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let list = args.iter().any(|a| a == "--list");
    let compact = args.iter().any(|a| a == "--compact");
    let nums: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let (services, endpoints) = match nums.as_slice() {
        [s, e] => (*s, *e),
        _ => {
            eprintln!("usage: gen_cluster SERVICES ENDPOINTS [--list] [--compact]");
            std::process::exit(2);
        }
    };
    let mut out = BufWriter::new(io::stdout().lock());
    write_cluster(&mut out, services, endpoints, list, compact)?;
    out.flush()
}
