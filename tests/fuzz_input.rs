//! Fuzz-like properties of the input boundary (`cargo fuzz` needs a nightly
//! toolchain that CI cannot install; these run on stable): hostile objects
//! and hostile bytes never panic conversion or snapshot decoding, every
//! accepted object's names satisfy the API server's rules, and every
//! rejection names a field and prints as one line of printable ASCII.
//!
//! `cargo test --test fuzz_input` runs 128 cases per property (seconds);
//! `SLICEPROXY_FUZZ_CASES=20000 cargo test --release --test fuzz_input` is the
//! longer run (a few minutes on two cores).

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use proptest::prelude::*;
use serde_json::{Value, json};
use sliceproxy::snapshot::{RenderInput, Snapshot};
use sliceproxy::watch::convert::{self, ConvertError};
use sliceproxy::watch::validate;

fn cases() -> u32 {
    std::env::var("SLICEPROXY_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Text an attacker would try: control characters, quotes, shell and
/// iptables syntax, Unicode direction overrides, names at and past limits.
fn hostile() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-z][a-z0-9-]{0,70}",
        2 => "[a-z0-9.-]{0,260}",
        2 => proptest::sample::select(vec![
            "", "a", "web", "a\nb", "web\n-A INPUT -j ACCEPT", "x\"; rm -rf / #", "$(reboot)", "`id`", "a b",
            "a\tb", "a\rb", "a\u{0}b", "\u{202e}cod.exe", "--to-destination", "-j", "COMMIT", "*filter", ":INPUT ACCEPT",
            "ns/x", "..", "a..b", "-a", "a-", "UPPER", "ünïcode", "😀", "\\", "'", "%s%n", "0", "1a",
        ]).prop_map(str::to_string),
        1 => Just("a".repeat(63)),
        1 => Just("a".repeat(64)),
        1 => any::<String>(),
    ]
    .boxed()
}

/// Mostly a valid value, sometimes a hostile one: with a dozen fields per
/// object, a third of the objects are valid and many differ from a valid
/// one in a single field, which is what catches a missing check.
fn mostly<T: std::fmt::Debug + 'static>(valid: BoxedStrategy<T>, hostile: BoxedStrategy<T>) -> BoxedStrategy<T> {
    prop_oneof![9 => valid, 1 => hostile].boxed()
}

fn label() -> BoxedStrategy<String> {
    mostly("[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?".boxed(), hostile())
}

fn service_name() -> BoxedStrategy<String> {
    mostly("[a-z]([-a-z0-9]{0,61}[a-z0-9])?".boxed(), hostile())
}

fn subdomain() -> BoxedStrategy<String> {
    mostly(
        "[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?(\\.[a-z0-9]{1,10}){0,3}".boxed(),
        hostile(),
    )
}

fn address() -> BoxedStrategy<String> {
    mostly(
        (1..224u8, 0..255u8, 0..255u8, 1..255u8)
            .prop_filter("not special", |(a, b, ..)| *a != 127 && !(*a == 169 && *b == 254))
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}"))
            .boxed(),
        any_address(),
    )
}

fn any_address() -> BoxedStrategy<String> {
    prop_oneof![
        3 => (1..255u8, 0..255u8, 0..255u8, 1..255u8).prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        1 => (1..255u8, 0..255u8).prop_map(|(a, b)| format!("{a:03}.{b:03}.000.010")),
        1 => (1..0xffffu16, 1..0xffffu16).prop_map(|(a, b)| format!("fd00:{a:x}::{b:x}")),
        1 => proptest::sample::select(vec![
            "::ffff:10.0.0.1", "127.0.0.1", "0.0.0.0", "::", "::1", "fe80::1", "fe80::1%eth0", "169.254.169.254",
            "224.0.0.1", "ff02::1", "10.0.0.256", " 10.0.0.1", "10.0.0.1\n", "None", "", "1.2.3.4/24",
        ]).prop_map(str::to_string),
        1 => hostile(),
    ]
    .boxed()
}

fn cidr() -> BoxedStrategy<String> {
    mostly(
        (address(), 0..33u32).prop_map(|(a, l)| format!("{a}/{l}")).boxed(),
        prop_oneof![
            (any_address(), 0..140u32).prop_map(|(a, l)| format!("{a}/{l}")),
            any_address()
        ]
        .boxed(),
    )
}

fn port_number() -> BoxedStrategy<i64> {
    mostly(
        (1..65536i64).boxed(),
        proptest::sample::select(vec![-1i64, 0, 65535, 65536, i64::from(i32::MAX), i64::from(i32::MIN)]).boxed(),
    )
}

fn protocol() -> BoxedStrategy<Value> {
    mostly(
        prop_oneof![
            proptest::sample::select(vec!["TCP", "UDP", "SCTP"]).prop_map(|p| json!(p)),
            Just(Value::Null)
        ]
        .boxed(),
        hostile().prop_map(|p| json!(p)).boxed(),
    )
}

fn one_of(valid: Vec<&'static str>, hostile: Vec<&'static str>) -> BoxedStrategy<&'static str> {
    mostly(
        proptest::sample::select(valid).boxed(),
        proptest::sample::select(hostile).boxed(),
    )
}

fn service_object() -> impl Strategy<Value = Value> {
    let port = (label(), port_number(), protocol(), proptest::option::of(port_number()));
    let ports = proptest::collection::vec(port, 1..4);
    let annotation_key = mostly("[a-z]{1,10}(\\.[a-z]{1,5}/[a-z]{1,10})?".boxed(), hostile());
    let meta = (
        label(),
        service_name(),
        proptest::collection::btree_map(annotation_key, hostile(), 0..3),
    );
    let modes = one_of(vec!["", "VIP", "Proxy"], vec!["Bogus", "vip"]);
    let addrs = (
        proptest::collection::vec(address(), 1..2),
        proptest::collection::vec(address(), 0..3),
        proptest::collection::vec(cidr(), 0..3),
        proptest::collection::vec((address(), modes), 0..3),
    );
    let kind = (
        one_of(
            vec!["ClusterIP", "NodePort", "LoadBalancer"],
            vec!["ExternalName", "Bogus", ""],
        ),
        one_of(vec![""], vec!["Cluster", "Local", "Bogus"]),
        one_of(vec!["", "None", "ClientIP"], vec!["Bogus"]),
    );
    (meta, ports, addrs, kind).prop_map(
        |((ns, name, annotations), ports, (cips, eips, ranges, ingress), (ty, etp, aff))| {
            let external = ty == "NodePort" || ty == "LoadBalancer";
            let many = ports.len() > 1;
            let ports: Vec<Value> = ports
                .into_iter()
                .enumerate()
                .map(|(i, (n, p, proto, np))| {
                    // Distinct names most of the time (duplicates are a rejection of their own).
                    let n = if many && i > 0 && !n.is_empty() {
                        format!("{n}{i}")
                    } else {
                        n
                    };
                    let mut v = json!({"name": n, "port": p, "protocol": proto});
                    if let Some(np) = np.filter(|_| external) {
                        v["nodePort"] = json!(np);
                    }
                    v
                })
                .collect();
            let ingress: Vec<Value> = ingress
                .into_iter()
                .map(|(ip, mode)| {
                    if mode.is_empty() {
                        json!({"ip": ip})
                    } else {
                        json!({"ip": ip, "ipMode": mode})
                    }
                })
                .collect();
            let mut spec = json!({"type": ty, "clusterIPs": cips, "externalIPs": eips, "ports": ports});
            if let Some(first) = spec["clusterIPs"].get(0).cloned() {
                spec["clusterIP"] = first;
            }
            if ty == "LoadBalancer" {
                spec["loadBalancerSourceRanges"] = json!(ranges);
            }
            if !etp.is_empty() {
                spec["externalTrafficPolicy"] = json!(etp);
            }
            if !aff.is_empty() {
                spec["sessionAffinity"] = json!(aff);
            }
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"namespace": ns, "name": name, "annotations": annotations},
                "spec": spec,
                "status": {"loadBalancer": {"ingress": ingress}},
            })
        },
    )
}

fn slice_object() -> impl Strategy<Value = Value> {
    let endpoint = (
        proptest::collection::vec(address(), 1..3),
        proptest::option::of(subdomain()),
        proptest::collection::vec(label(), 0..2),
        proptest::collection::vec(subdomain(), 0..2),
    )
        .prop_map(|(addrs, node, zones, nodes)| {
            let zones: Vec<Value> = zones
                .iter()
                .enumerate()
                .map(|(i, z)| json!({"name": format!("{z}{i}")}))
                .collect();
            let nodes: Vec<Value> = nodes
                .iter()
                .enumerate()
                .map(|(i, n)| json!({"name": format!("{n}{i}")}))
                .collect();
            let mut e = json!({"addresses": addrs, "hints": {"forZones": zones, "forNodes": nodes}});
            if let Some(n) = node {
                e["nodeName"] = json!(n);
            }
            e
        });
    (
        (label(), subdomain(), service_name()),
        one_of(vec!["IPv4"], vec!["IPv6", "FQDN", "IP", "", "ipv4"]),
        proptest::collection::vec(endpoint, 0..4),
        proptest::collection::vec((label(), proptest::option::of(port_number()), protocol()), 0..4),
    )
        .prop_map(|((ns, name, svc), at, eps, ports)| {
            let ports: Vec<Value> = ports
                .into_iter()
                .enumerate()
                .map(|(i, (n, p, proto))| {
                    let n = if i > 0 && !n.is_empty() { format!("{n}{i}") } else { n };
                    json!({"name": n, "port": p, "protocol": proto})
                })
                .collect();
            json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": svc}},
                "addressType": at, "endpoints": eps, "ports": ports,
            })
        })
}

/// A rejection names a field and prints as one line of printable ASCII.
fn check_rejection(e: &ConvertError) -> Result<(), TestCaseError> {
    prop_assert!(!e.field.is_empty(), "no field: {e:?}");
    let text = e.to_string();
    prop_assert!(text.bytes().all(|b| (0x20..0x7f).contains(&b)), "unprintable: {text:?}");
    Ok(())
}

fn check_name(rule: fn(&str) -> Result<(), String>, s: &str) -> Result<(), TestCaseError> {
    prop_assert!(rule(s).is_ok(), "accepted an invalid name {s:?}");
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn service_conversion_never_panics_and_accepts_only_valid_names(obj in service_object()) {
        // Values of the wrong JSON type are the decoder's business (below).
        let Ok(svc) = serde_json::from_value::<core::Service>(obj) else { return Ok(()) };
        match convert::service(&svc) {
            Ok(s) => {
                check_name(validate::dns1123_label, &s.key.namespace)?;
                check_name(validate::dns1035_label, &s.key.name)?;
                for p in &s.ports {
                    if !p.key.port_name.is_empty() {
                        check_name(validate::dns1123_label, &p.key.port_name)?;
                    }
                    prop_assert!(p.port != 0);
                }
            }
            Err(e) => check_rejection(&e)?,
        }
    }

    #[test]
    fn slice_conversion_never_panics_and_accepts_only_valid_names(obj in slice_object()) {
        let Ok(slice) = serde_json::from_value::<discovery::EndpointSlice>(obj) else { return Ok(()) };
        match convert::slice(&slice) {
            Ok(Some(s)) => {
                check_name(validate::dns1123_label, &s.key.namespace)?;
                check_name(validate::dns1123_subdomain, &s.key.name)?;
                check_name(validate::label_value, &s.service.name)?;
                for p in &s.ports {
                    if !p.name.is_empty() {
                        check_name(validate::dns1123_label, &p.name)?;
                    }
                }
                for e in &s.endpoints {
                    prop_assert_eq!(sliceproxy::model::IpFamily::of(&e.ip), s.family);
                    if let Some(n) = &e.node_name {
                        check_name(validate::dns1123_subdomain, n)?;
                    }
                    for z in e.zone_hints.iter() {
                        check_name(validate::label_value, z)?;
                    }
                }
            }
            Ok(None) => {}
            Err(e) => check_rejection(&e)?,
        }
    }

    #[test]
    fn decoding_hostile_objects_as_yaml_reports_each_by_field(objs in proptest::collection::vec(prop_oneof![service_object(), slice_object()], 1..6)) {
        // JSON is YAML: one List, and the same objects as separate documents.
        let list = json!({"apiVersion": "v1", "kind": "List", "items": objs}).to_string();
        let docs: Vec<String> = objs.iter().map(|o| o.to_string()).collect();
        for text in [list, docs.join("\n---\n")] {
            let r = RenderInput::parse(&text, "node-a").expect("well-formed JSON is readable");
            for e in &r.errors {
                check_rejection(&e.error)?;
            }
            let kept = r.tracker.table().plans().count();
            prop_assert!(kept <= objs.len() * 5);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = RenderInput::parse(&String::from_utf8_lossy(&bytes), "n");
        let mut reader: &[u8] = &bytes;
        let _ = sliceproxy::snapshot::read::<sliceproxy::snapshot::KeepTyped, _>(&mut reader);
    }

    #[test]
    fn mutated_yaml_never_panics_and_errors_print_safely(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..12),
    ) {
        let mut text: Vec<u8> = SEED.as_bytes().to_vec();
        for (at, byte, op) in edits {
            let i = at.index(text.len() + 1);
            match op {
                0 => text.insert(i, byte),
                1 if i < text.len() => { text.remove(i); }
                _ if i < text.len() => text[i] = byte,
                _ => {}
            }
        }
        let text = String::from_utf8_lossy(&text);
        match Snapshot::parse(&text) {
            Ok(s) => {
                for e in &s.errors {
                    let line = e.to_string();
                    prop_assert!(line.bytes().all(|b| (0x20..0x7f).contains(&b)), "{line:?}");
                }
                let _ = s.tracker("node-a");
            }
            Err(e) => {
                let line = e.to_string();
                prop_assert!(line.bytes().all(|b| (0x20..0x7f).contains(&b)), "{line:?}");
            }
        }
    }
}

const SEED: &str = "apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata: {namespace: ns, name: web, labels: &l {app: web}}
  spec:
    clusterIP: 10.96.0.1
    selector: *l
    type: LoadBalancer
    loadBalancerSourceRanges: [10.0.0.0/8]
    ports: [{name: http, port: 80, nodePort: 30080}, {name: dns, port: 53, protocol: UDP}]
  status: {loadBalancer: {ingress: [{ip: 1.2.3.4, ipMode: VIP}]}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {namespace: ns, name: web-1, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.0.1], nodeName: node-a, hints: {forZones: [{name: z}]}}]
  ports: [{name: http, port: 8080, protocol: TCP}]
kind: List
";
