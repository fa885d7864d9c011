//! Tables taken from upstream's own tests: apimachinery
//! `pkg/util/validation/validation_test.go` (names), Go's `net/ip_test.go`
//! as forked into `k8s.io/utils/net` (sloppy parsing), `pkg/apis/core/validation/validation_test.go`
//! (`TestValidateServiceCreate`) and `pkg/apis/discovery/validation/validation_test.go`.

use std::net::IpAddr;

use serde_json::{Value, json};

use super::*;

fn a(n: usize) -> String {
    "a".repeat(n)
}

#[test]
fn dns1123_labels_as_upstream() {
    let good = [
        "a",
        "ab",
        "abc",
        "a1",
        "a-1",
        "a--1--2--b",
        "0",
        "01",
        "012",
        "1a",
        "1-a",
        "1--a--b--2",
    ];
    for v in good.iter().map(|s| s.to_string()).chain([a(63)]) {
        assert!(dns1123_label(&v).is_ok(), "{v}");
    }
    let bad = [
        "", "A", "ABC", "aBc", "A1", "A-1", "1-A", "-", "a-", "-a", "1-", "-1", "_", "a_", "_a", "a_b", "1_", "_1",
        "1_2", ".", "a.", ".a", "a.b", "1.", ".1", "1.2", " ", "a ", " a", "a b", "1 ", " 1", "1 2", "a\nb",
    ];
    for v in bad.iter().map(|s| s.to_string()).chain([a(64)]) {
        assert!(dns1123_label(&v).is_err(), "{v:?}");
    }
}

#[test]
fn dns1123_subdomains_as_upstream() {
    let good = [
        "a",
        "ab",
        "abc",
        "a1",
        "a-1",
        "a--1--2--b",
        "0",
        "01",
        "012",
        "1a",
        "1-a",
        "1--a--b--2",
        "a.a",
        "ab.a",
        "abc.a",
        "a1.a",
        "a-1.a",
        "a--1--2--b.a",
        "a.1",
        "ab.1",
        "abc.1",
        "a1.1",
        "a-1.1",
        "a--1--2--b.1",
        "0.a",
        "01.a",
        "012.a",
        "1a.a",
        "1-a.a",
        "1--a--b--2",
        "0.1",
        "01.1",
        "012.1",
        "1a.1",
        "1-a.1",
        "1--a--b--2.1",
        "a.b.c.d.e",
        "aa.bb.cc.dd.ee",
        "1.2.3.4.5",
        "11.22.33.44.55",
    ];
    for v in good.iter().map(|s| s.to_string()).chain([a(253)]) {
        assert!(dns1123_subdomain(&v).is_ok(), "{v}");
    }
    let bad = [
        "",
        "A",
        "ABC",
        "aBc",
        "A1",
        "A-1",
        "1-A",
        "-",
        "a-",
        "-a",
        "1-",
        "-1",
        "_",
        "a_",
        "_a",
        "a_b",
        "1_",
        "_1",
        "1_2",
        ".",
        "a.",
        ".a",
        "a..b",
        "1.",
        ".1",
        "1..2",
        " ",
        "a ",
        " a",
        "a b",
        "1 ",
        " 1",
        "1 2",
        "A.a",
        "aB.a",
        "ab.A",
        "A1.a",
        "a1.A",
        "A.1",
        "aB.1",
        "A1.1",
        "1A.1",
        "0.A",
        "01.A",
        "012.A",
        "1A.a",
        "1a.A",
        "A.B.C.D.E",
        "AA.BB.CC.DD.EE",
        "a.B.c.d.e",
        "aa.bB.cc.dd.ee",
        "a@b",
        "a,b",
        "a_b",
        "a;b",
        "a:b",
        "a%b",
        "a?b",
        "a$b",
    ];
    for v in bad.iter().map(|s| s.to_string()).chain([a(254)]) {
        assert!(dns1123_subdomain(&v).is_err(), "{v:?}");
    }
}

#[test]
fn dns1035_labels_as_upstream() {
    for v in ["a", "ab", "abc", "a1", "a-1", "a--1--2--b"]
        .iter()
        .map(|s| s.to_string())
        .chain([a(63)])
    {
        assert!(dns1035_label(&v).is_ok(), "{v}");
    }
    let bad = [
        "0",
        "01",
        "012",
        "1a",
        "1-a",
        "1--a--b--2",
        "",
        "A",
        "ABC",
        "aBc",
        "A1",
        "A-1",
        "1-A",
        "-",
        "a-",
        "-a",
        "1-",
        "-1",
        "_",
        "a_",
        "_a",
        "a_b",
        "1_",
        "_1",
        "1_2",
        ".",
        "a.",
        ".a",
        "a.b",
        "1.",
        ".1",
        "1.2",
        " ",
        "a ",
        " a",
        "a b",
        "1 ",
        " 1",
        "1 2",
        "a\nb",
        "a\"b",
        "a;b",
        "a$(x)",
    ];
    for v in bad.iter().map(|s| s.to_string()).chain([a(64)]) {
        assert!(dns1035_label(&v).is_err(), "{v:?}");
    }
}

#[test]
fn iana_port_names_as_upstream() {
    for v in [
        "telnet",
        "re-mail-ck",
        "pop3",
        "a",
        "a-1",
        "1-a",
        "a-1-b-2-c",
        "1-a-2-b-3",
    ] {
        assert!(port_name(v).is_ok(), "{v}");
    }
    let bad = [
        "longerthan15characters",
        "",
        "12345",
        "1-2-3-4",
        "-begin",
        "end-",
        "two--hyphens",
        "whois++",
    ];
    for v in bad.iter().map(|s| s.to_string()).chain([a(16)]) {
        assert!(port_name(&v).is_err(), "{v:?}");
    }
}

#[test]
fn qualified_names_as_upstream() {
    let good = [
        "simple",
        "now-with-dashes",
        "1-starts-with-num",
        "1234",
        "simple/simple",
        "now-with-dashes/simple",
        "now-with-dashes/now-with-dashes",
        "now.with.dots/simple",
        "now-with.dashes-and.dots/simple",
        "1-num.2-num/3-num",
        "1234/5678",
        "1.2.3.4/5678",
        "Uppercase_Is_OK_123",
        "example.com/Uppercase_Is_OK_123",
        "requests.storage-foo",
    ];
    for v in good
        .iter()
        .map(|s| s.to_string())
        .chain([a(63), format!("{}/{}", a(253), "b".repeat(63))])
    {
        assert!(qualified_name(&v).is_ok(), "{v}");
    }
    let bad = [
        "nospecialchars%^=@",
        "cantendwithadash-",
        "-cantstartwithadash-",
        "only/one/slash",
        "Example.com/abc",
        "example_com/abc",
        "example.com/",
        "/simple",
    ];
    for v in bad
        .iter()
        .map(|s| s.to_string())
        .chain([a(64), format!("{}/abc", a(254))])
    {
        assert!(qualified_name(&v).is_err(), "{v:?}");
    }
}

#[test]
fn label_values_as_upstream() {
    let good = [
        "simple",
        "now-with-dashes",
        "1-starts-with-num",
        "end-with-num-1",
        "1234",
        "",
    ];
    for v in good.iter().map(|s| s.to_string()).chain([a(63)]) {
        assert!(label_value(&v).is_ok(), "{v}");
    }
    let bad = [
        "nospecialchars%^=@",
        "Tama-nui-te-rā.is.Māori.sun",
        "\\backslashes\\are\\bad",
        "-starts-with-dash",
        "ends-with-dash-",
        ".starts.with.dot",
        "ends.with.dot.",
    ];
    for v in bad.iter().map(|s| s.to_string()).chain([a(64)]) {
        assert!(label_value(&v).is_err(), "{v:?}");
    }
}

#[test]
fn port_numbers() {
    for p in [1, 80, 65535] {
        assert!(port_number(p).is_ok());
    }
    for p in [0, -1, 65536, i32::MAX, i32::MIN] {
        assert!(port_number(p).is_err(), "{p}");
    }
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

/// Go 1.16's `parseIPTests`, which `k8s.io/utils/net` keeps for
/// `ParseIPSloppy`, plus the leading-zero cases the API server accepts.
#[test]
fn sloppy_ips_as_kube_proxy_reads_them() {
    let cases: &[(&str, Option<IpAddr>)] = &[
        ("127.0.1.2", ip("127.0.1.2")),
        ("127.0.0.1", ip("127.0.0.1")),
        ("127.001.002.003", ip("127.1.2.3")),
        ("010.096.000.010", ip("10.96.0.10")),
        ("0000000010.0.0.1", ip("10.0.0.1")),
        ("::ffff:127.1.2.3", ip("127.1.2.3")),
        ("::ffff:127.001.002.003", ip("127.1.2.3")),
        ("::ffff:7f01:0203", ip("127.1.2.3")),
        ("0:0:0:0:0000:ffff:127.1.2.3", ip("127.1.2.3")),
        ("0:0:0:0:000000:ffff:127.1.2.3", ip("127.1.2.3")),
        ("0:0:0:0::ffff:127.1.2.3", ip("127.1.2.3")),
        ("2001:4860:0:2001::68", ip("2001:4860:0:2001::68")),
        ("2001:4860:0000:2001:0000:0000:0000:0068", ip("2001:4860:0:2001::68")),
        ("FE80::1", ip("fe80::1")),
        ("::", ip("::")),
        ("::1", ip("::1")),
        ("1::", ip("1::")),
        ("-0.0.0.0", None),
        ("0.-1.0.0", None),
        ("0.0.-2.0", None),
        ("0.0.0.-3", None),
        ("127.0.0.256", None),
        ("abc", None),
        ("123:", None),
        ("fe80::1%lo0", None),
        ("fe80::1%911", None),
        ("", None),
        ("a1:a2:a3:a4::b1:b2:b3:b4", None),
        ("1.2.3", None),
        ("1.2.3.4.5", None),
        (" 1.2.3.4", None),
        ("1.2.3.4 ", None),
        ("1.2.3.4\n", None),
        ("1:2:3:4:5:6:7:8:9", None),
        ("1::2::3", None),
        ("1:2:3:4:5:6:7::8", None),
        ("1:2:3:4:5:6:7:8::", None),
        ("::1.2.3.4", ip("::102:304")),
        ("1.2.3.4::", None),
        ("10000::1", None),
    ];
    for (s, want) in cases {
        assert_eq!(parse_ip_sloppy(s), *want, "{s:?}");
    }
}

/// Go 1.16's `parseCIDRTests` (`ParseCIDRSloppy`) plus sloppy forms.
#[test]
fn sloppy_cidrs_as_kube_proxy_reads_them() {
    let cases: &[(&str, Option<&str>)] = &[
        ("135.104.0.0/32", Some("135.104.0.0/32")),
        ("0.0.0.0/24", Some("0.0.0.0/24")),
        ("135.104.0.0/24", Some("135.104.0.0/24")),
        ("135.104.0.1/32", Some("135.104.0.1/32")),
        ("135.104.0.1/24", Some("135.104.0.0/24")),
        ("::1/128", Some("::1/128")),
        ("abcd:2345::/127", Some("abcd:2345::/127")),
        ("abcd:2345::/65", Some("abcd:2345::/65")),
        ("abcd:2345::/64", Some("abcd:2345::/64")),
        ("abcd:2345::/63", Some("abcd:2345::/63")),
        ("abcd:2345::/33", Some("abcd:2345::/33")),
        ("abcd:2345::/32", Some("abcd:2345::/32")),
        ("abcd:2344::/31", Some("abcd:2344::/31")),
        ("abcd:2300::/24", Some("abcd:2300::/24")),
        ("abcd:2345::/24", Some("abcd:2300::/24")),
        ("2001:DB8::/48", Some("2001:db8::/48")),
        ("2001:DB8::1/48", Some("2001:db8::/48")),
        ("010.096.000.000/012", Some("10.96.0.0/12")),
        ("1.2.3.4/08", Some("1.0.0.0/8")),
        ("::ffff:1.2.3.0/120", Some("1.2.3.0/24")),
        ("::ffff:0.0.0.0/80", Some("::/80")),
        ("192.168.1.1/255.255.255.0", None),
        ("192.168.1.1/35", None),
        ("2001:db8::1/-1", None),
        ("2001:db8::1/-0", None),
        ("-0.0.0.0/32", None),
        ("0.-1.0.0/32", None),
        ("0.0.-2.0/32", None),
        ("0.0.0.-3/32", None),
        ("0.0.0.0/-0", None),
        ("1.2.3.4", None),
        ("1.2.3.4/", None),
        ("/8", None),
        ("", None),
        ("fe80::/10%eth0", None),
        ("1.2.3.4/8 ", None),
    ];
    for (s, want) in cases {
        assert_eq!(
            parse_cidr_sloppy(s).map(|n| n.to_string()),
            want.map(str::to_string),
            "{s:?}"
        );
    }
}

#[test]
fn shown_values_escape_everything_outside_printable_ascii() {
    assert_eq!(show("a\nb"), r#""a\nb""#);
    assert_eq!(show("x\"; rm -rf /"), r#""x\"; rm -rf /""#);
    assert_eq!(show("\u{202e}evil\u{1b}[31m"), r#""\u{202e}evil\u{1b}[31m""#);
    assert_eq!(escape("ns/na\nme"), r"ns/na\nme");
    let long = show(&a(1000));
    assert!(long.len() < 130 && long.ends_with("(1000 bytes)"), "{long}");
}

// === objects ===

fn service(spec: Value, status: Option<Value>, meta: Value) -> core::Service {
    let mut obj = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "ns", "name": "svc"},
        "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]},
    });
    for (k, v) in spec.as_object().unwrap() {
        obj["spec"][k] = v.clone();
    }
    for (k, v) in meta.as_object().unwrap() {
        obj["metadata"][k] = v.clone();
    }
    if let Some(s) = status {
        obj["status"] = s;
    }
    serde_json::from_value(obj).unwrap()
}

fn svc_result(spec: Value) -> Result<(), FieldError> {
    super::service(&service(spec, None, json!({})))
}

/// Cases of `TestValidateServiceCreate`: the field upstream names, or `None`
/// for a valid Service.
#[test]
fn services_as_upstream() {
    let lb = |extra: Value| {
        let mut s = json!({"type": "LoadBalancer"});
        for (k, v) in extra.as_object().unwrap() {
            s[k] = v.clone();
        }
        s
    };
    let cases: Vec<(&str, Value, Option<&str>)> = vec![
        ("valid", json!({}), None),
        ("missing ports", json!({"ports": []}), Some("spec.ports")),
        (
            "headless without ports",
            json!({"clusterIP": "None", "ports": []}),
            None,
        ),
        (
            "unnamed second port",
            json!({"ports": [{"name": "a", "port": 80}, {"port": 81}]}),
            Some("spec.ports[1].name"),
        ),
        (
            "invalid port name",
            json!({"ports": [{"name": "INVALID", "port": 80}]}),
            Some("spec.ports[0].name"),
        ),
        (
            "port name with newline",
            json!({"ports": [{"name": "a\nb", "port": 80}]}),
            Some("spec.ports[0].name"),
        ),
        ("port name at 63", json!({"ports": [{"name": a(63), "port": 80}]}), None),
        (
            "port name at 64",
            json!({"ports": [{"name": a(64), "port": 80}]}),
            Some("spec.ports[0].name"),
        ),
        (
            "invalid protocol",
            json!({"ports": [{"port": 80, "protocol": "INVALID"}]}),
            Some("spec.ports[0].protocol"),
        ),
        (
            "lower-case protocol",
            json!({"ports": [{"port": 80, "protocol": "tcp"}]}),
            Some("spec.ports[0].protocol"),
        ),
        (
            "invalid cluster ip",
            json!({"clusterIP": "invalid ipaddress"}),
            Some("spec.clusterIPs[0]"),
        ),
        (
            "missing port",
            json!({"ports": [{"port": 0}]}),
            Some("spec.ports[0].port"),
        ),
        (
            "invalid port",
            json!({"ports": [{"port": 65536}]}),
            Some("spec.ports[0].port"),
        ),
        (
            "invalid target port number",
            json!({"ports": [{"port": 80, "targetPort": 65536}]}),
            Some("spec.ports[0].targetPort"),
        ),
        (
            "invalid target port name",
            json!({"ports": [{"port": 80, "targetPort": "InvalidName"}]}),
            Some("spec.ports[0].targetPort"),
        ),
        (
            "valid target port name",
            json!({"ports": [{"port": 80, "targetPort": "http"}]}),
            None,
        ),
        (
            "externalIP localhost",
            json!({"externalIPs": ["127.0.0.1"]}),
            Some("spec.externalIPs[0]"),
        ),
        (
            "externalIP unspecified",
            json!({"externalIPs": ["0.0.0.0"]}),
            Some("spec.externalIPs[0]"),
        ),
        (
            "externalIP link-local",
            json!({"externalIPs": ["169.254.169.254"]}),
            Some("spec.externalIPs[0]"),
        ),
        (
            "externalIP link-local v6",
            json!({"externalIPs": ["fe80::1"]}),
            Some("spec.externalIPs[0]"),
        ),
        (
            "externalIP multicast",
            json!({"externalIPs": ["224.0.0.1"]}),
            Some("spec.externalIPs[0]"),
        ),
        (
            "externalIP host name",
            json!({"externalIPs": ["myhost.mydomain"]}),
            Some("spec.externalIPs[0]"),
        ),
        (
            "externalIP leading zeros",
            json!({"externalIPs": ["010.001.002.003"]}),
            None,
        ),
        (
            "dup port name",
            json!({"ports": [{"name": "p", "port": 80}, {"name": "p", "port": 81}]}),
            Some("spec.ports[1].name"),
        ),
        (
            "dup protocol+port",
            json!({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}),
            Some("spec.ports[1]"),
        ),
        (
            "same port, other protocol",
            json!({"ports": [{"name": "a", "port": 53}, {"name": "b", "port": 53, "protocol": "UDP"}]}),
            None,
        ),
        (
            "dup nodePort",
            json!({"type": "NodePort", "ports": [{"name": "a", "port": 1, "nodePort": 30001}, {"name": "b", "port": 2, "nodePort": 30001}]}),
            Some("spec.ports[1].nodePort"),
        ),
        (
            "dup nodePort, other protocols",
            json!({"type": "NodePort", "ports": [{"name": "a", "port": 1, "nodePort": 30001}, {"name": "b", "port": 1, "nodePort": 30001, "protocol": "UDP"}]}),
            None,
        ),
        (
            "nodePort on ClusterIP",
            json!({"ports": [{"port": 80, "nodePort": 30080}]}),
            Some("spec.ports[0].nodePort"),
        ),
        (
            "nodePort out of range",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 65536}]}),
            Some("spec.ports[0].nodePort"),
        ),
        (
            "source ranges",
            lb(json!({"loadBalancerSourceRanges": ["1.2.3.4/8", "5.6.7.8/16"]})),
            None,
        ),
        (
            "source ranges with spaces",
            lb(json!({"loadBalancerSourceRanges": ["  1.2.3.4/8  ", "  5.6.7.8/16  "]})),
            None,
        ),
        (
            "source range host name",
            lb(json!({"loadBalancerSourceRanges": ["foo.bar"]})),
            Some("spec.loadBalancerSourceRanges[0]"),
        ),
        (
            "source range /33",
            lb(json!({"loadBalancerSourceRanges": ["1.2.3.4/33"]})),
            Some("spec.loadBalancerSourceRanges[0]"),
        ),
        (
            "source range bare address",
            lb(json!({"loadBalancerSourceRanges": ["1.2.3.4"]})),
            Some("spec.loadBalancerSourceRanges[0]"),
        ),
        (
            "source range on ClusterIP",
            json!({"loadBalancerSourceRanges": ["1.2.3.4/8"]}),
            Some("spec.loadBalancerSourceRanges"),
        ),
        (
            "ExternalName",
            json!({"type": "ExternalName", "clusterIP": null, "externalName": "foo.bar.example.com"}),
            None,
        ),
        (
            "ExternalName trailing dot",
            json!({"type": "ExternalName", "clusterIP": null, "externalName": "foo.bar.example.com."}),
            None,
        ),
        (
            "ExternalName with clusterIP",
            json!({"type": "ExternalName", "externalName": "foo.example.com"}),
            Some("spec.clusterIPs"),
        ),
        (
            "ExternalName not a DNS name",
            json!({"type": "ExternalName", "clusterIP": null, "externalName": "-123.test"}),
            Some("spec.externalName"),
        ),
        (
            "LoadBalancer with None",
            lb(json!({"clusterIP": "None"})),
            Some("spec.clusterIPs[0]"),
        ),
        (
            "NodePort with None",
            json!({"type": "NodePort", "clusterIP": "None"}),
            Some("spec.clusterIPs[0]"),
        ),
        ("unknown type", json!({"type": "Bogus"}), Some("spec.type")),
        (
            "ETP on ClusterIP",
            json!({"externalTrafficPolicy": "Local"}),
            Some("spec.externalTrafficPolicy"),
        ),
        (
            "ETP on ClusterIP with external IPs",
            json!({"externalTrafficPolicy": "Local", "externalIPs": ["1.2.3.4"]}),
            None,
        ),
        (
            "invalid ETP",
            json!({"type": "NodePort", "externalTrafficPolicy": "Bogus"}),
            Some("spec.externalTrafficPolicy"),
        ),
        (
            "health check port without Local",
            lb(json!({"healthCheckNodePort": 32000})),
            Some("spec.healthCheckNodePort"),
        ),
        (
            "health check port",
            lb(json!({"externalTrafficPolicy": "Local", "healthCheckNodePort": 32000})),
            None,
        ),
        (
            "health check port out of range",
            lb(json!({"externalTrafficPolicy": "Local", "healthCheckNodePort": 70000})),
            Some("spec.healthCheckNodePort"),
        ),
        (
            "invalid ITP",
            json!({"internalTrafficPolicy": "invalid"}),
            Some("spec.internalTrafficPolicy"),
        ),
        (
            "invalid traffic distribution",
            json!({"trafficDistribution": "Nearest"}),
            Some("spec.trafficDistribution"),
        ),
        (
            "affinity timeout 0",
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}),
            Some("spec.sessionAffinityConfig.clientIP.timeoutSeconds"),
        ),
        (
            "affinity timeout too long",
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}}),
            Some("spec.sessionAffinityConfig.clientIP.timeoutSeconds"),
        ),
        (
            "affinity config without affinity",
            json!({"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10}}}),
            Some("spec.sessionAffinityConfig"),
        ),
        (
            "unknown affinity",
            json!({"sessionAffinity": "Cookie"}),
            Some("spec.sessionAffinity"),
        ),
        (
            "dual stack",
            json!({"clusterIPs": ["10.96.0.1", "fd00::1"], "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack"}),
            None,
        ),
        (
            "too many cluster IPs",
            json!({"clusterIPs": ["10.96.0.1", "fd00::1", "10.96.0.2"]}),
            Some("spec.clusterIPs"),
        ),
        (
            "two of one family",
            json!({"clusterIPs": ["10.96.0.1", "10.96.0.2"]}),
            Some("spec.clusterIPs"),
        ),
        (
            "clusterIP != clusterIPs[0]",
            json!({"clusterIPs": ["10.96.0.2"]}),
            Some("spec.clusterIPs"),
        ),
        (
            "family mismatch",
            json!({"ipFamilies": ["IPv6"]}),
            Some("spec.ipFamilies[0]"),
        ),
        (
            "unknown family",
            json!({"ipFamilies": ["IPv5"]}),
            Some("spec.ipFamilies[0]"),
        ),
        (
            "SingleStack with two",
            json!({"clusterIPs": ["10.96.0.1", "fd00::1"], "ipFamilyPolicy": "SingleStack"}),
            Some("spec.ipFamilyPolicy"),
        ),
        ("leading-zero cluster IP", json!({"clusterIP": "010.096.000.010"}), None),
        (
            "invalid selector",
            json!({"selector": {"NoUppercaseOrSpecialCharsLike=Equals": "bar"}}),
            Some("spec.selector"),
        ),
        (
            "allocateLoadBalancerNodePorts on ClusterIP",
            json!({"allocateLoadBalancerNodePorts": true}),
            Some("spec.allocateLoadBalancerNodePorts"),
        ),
    ];
    for (name, spec, want) in cases {
        let got = svc_result(spec).err().map(|e| e.field);
        assert_eq!(got.as_deref(), want, "{name}");
    }
}

#[test]
fn service_metadata_as_upstream() {
    let cases: Vec<(&str, Value, Option<&str>)> = vec![
        ("name at 63", json!({"name": format!("a{}", "b".repeat(62))}), None),
        ("name at 64", json!({"name": a(64)}), Some("metadata.name")),
        (
            "name starting with a digit",
            json!({"name": "1abc"}),
            Some("metadata.name"),
        ),
        (
            "name with a newline",
            json!({"name": "web\n-A INPUT -j ACCEPT"}),
            Some("metadata.name"),
        ),
        ("name with quotes", json!({"name": "a\"b"}), Some("metadata.name")),
        ("name with spaces", json!({"name": "a b"}), Some("metadata.name")),
        (
            "name with shell metacharacters",
            json!({"name": "a$(reboot)"}),
            Some("metadata.name"),
        ),
        ("missing name", json!({"name": ""}), Some("metadata.name")),
        ("namespace at 63", json!({"namespace": a(63)}), None),
        (
            "namespace at 64",
            json!({"namespace": a(64)}),
            Some("metadata.namespace"),
        ),
        (
            "namespace with a newline",
            json!({"namespace": "a\nb"}),
            Some("metadata.namespace"),
        ),
        (
            "invalid label",
            json!({"labels": {"NoUppercaseOrSpecialCharsLike=Equals": "bar"}}),
            Some("metadata.labels"),
        ),
        (
            "invalid label value",
            json!({"labels": {"app": "a b"}}),
            Some("metadata.labels[app]"),
        ),
        (
            "invalid annotation key",
            json!({"annotations": {"a b": "x"}}),
            Some("metadata.annotations"),
        ),
        (
            "upper-case annotation key",
            json!({"annotations": {"Example.COM/Key": "x"}}),
            None,
        ),
        (
            "hostile annotation value",
            json!({"annotations": {"note": "\"; rm -rf / #\n-A INPUT -j ACCEPT"}}),
            None,
        ),
        (
            "annotations too big",
            json!({"annotations": {"big": a(TOTAL_ANNOTATION_SIZE_LIMIT)}}),
            Some("metadata.annotations"),
        ),
        (
            "source range annotation on ClusterIP",
            json!({"annotations": {LB_SOURCE_RANGES_ANNOTATION: "1.2.3.4/8"}}),
            Some("metadata.annotations[service.beta.kubernetes.io/load-balancer-source-ranges]"),
        ),
    ];
    for (name, meta, want) in cases {
        let got = super::service(&service(json!({}), None, meta)).err().map(|e| e.field);
        assert_eq!(got.as_deref(), want, "{name}");
    }
    let lb = |v: &str| {
        super::service(&service(
            json!({"type": "LoadBalancer"}),
            None,
            json!({"annotations": {LB_SOURCE_RANGES_ANNOTATION: v}}),
        ))
    };
    assert!(lb("  1.2.3.4/8  ,  5.6.7.8/16  ").is_ok());
    assert!(lb("").is_ok());
    assert!(lb("foo.bar").is_err());
    assert!(lb("1.2.3.4/33").is_err());
}

#[test]
fn load_balancer_status_as_upstream() {
    let st = |ing: Value| {
        super::service(&service(
            json!({"type": "LoadBalancer"}),
            Some(json!({"loadBalancer": {"ingress": [ing]}})),
            json!({}),
        ))
        .err()
        .map(|e| e.field)
    };
    assert_eq!(st(json!({"ip": "1.2.3.4", "ipMode": "VIP"})), None);
    assert_eq!(st(json!({"ip": "1.2.3.4", "ipMode": "Proxy"})), None);
    assert_eq!(st(json!({"hostname": "lb.example.com"})), None);
    assert_eq!(
        st(json!({"ip": "1.2.3.4", "ipMode": "Bogus"})).as_deref(),
        Some("status.loadBalancer.ingress[0].ipMode")
    );
    assert_eq!(
        st(json!({"hostname": "lb.example.com", "ipMode": "VIP"})).as_deref(),
        Some("status.loadBalancer.ingress[0].ipMode")
    );
    assert_eq!(
        st(json!({"ip": "not-an-ip"})).as_deref(),
        Some("status.loadBalancer.ingress[0].ip")
    );
    assert_eq!(
        st(json!({"hostname": "1.2.3.4"})).as_deref(),
        Some("status.loadBalancer.ingress[0].hostname")
    );
    assert_eq!(
        st(json!({"hostname": "Not_A_Host"})).as_deref(),
        Some("status.loadBalancer.ingress[0].hostname")
    );
}

fn slice(address_type: &str, ports: Value, endpoints: Value, meta: Value) -> discovery::EndpointSlice {
    let mut obj = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "ns", "name": "svc-abc12", "labels": {"kubernetes.io/service-name": "svc"}},
        "addressType": address_type, "ports": ports, "endpoints": endpoints,
    });
    for (k, v) in meta.as_object().unwrap() {
        obj["metadata"][k] = v.clone();
    }
    serde_json::from_value(obj).unwrap()
}

/// Cases of discovery's `TestValidateEndpointSlice`.
#[test]
fn endpoint_slices_as_upstream() {
    let port = json!([{"name": "http", "port": 80, "protocol": "TCP"}]);
    let ep = |addr: &str| json!([{"addresses": [addr]}]);
    let many = |n: usize, f: &dyn Fn(usize) -> Value| Value::Array((0..n).map(f).collect());
    // (case, addressType, ports, endpoints, metadata, the field upstream names)
    type Case<'a> = (&'a str, &'a str, Value, Value, Value, Option<&'a str>);
    let cases: Vec<Case> = vec![
        ("good", "IPv4", port.clone(), ep("10.1.2.3"), json!({}), None),
        ("good ipv6", "IPv6", port.clone(), ep("2001:db8::1"), json!({}), None),
        (
            "good fqdn",
            "FQDN",
            port.clone(),
            ep("foo.example.com"),
            json!({}),
            None,
        ),
        (
            "leading zeros",
            "IPv4",
            port.clone(),
            ep("010.001.002.003"),
            json!({}),
            None,
        ),
        (
            "v4-mapped in IPv4",
            "IPv4",
            port.clone(),
            ep("::ffff:10.1.2.3"),
            json!({}),
            None,
        ),
        (
            "empty port name",
            "IPv4",
            json!([{"name": "", "port": 80, "protocol": "TCP"}]),
            ep("10.1.2.3"),
            json!({}),
            None,
        ),
        (
            "duplicate port name",
            "IPv4",
            json!([{"name": "a", "port": 80}, {"name": "a", "port": 81}]),
            ep("10.1.2.3"),
            json!({}),
            Some("ports[1].name"),
        ),
        (
            "port name caps",
            "IPv4",
            json!([{"name": "aCapital", "port": 80}]),
            ep("10.1.2.3"),
            json!({}),
            Some("ports[0].name"),
        ),
        (
            "port name chars",
            "IPv4",
            json!([{"name": "almost_valid", "port": 80}]),
            ep("10.1.2.3"),
            json!({}),
            Some("ports[0].name"),
        ),
        (
            "port name length",
            "IPv4",
            json!([{"name": a(64), "port": 80}]),
            ep("10.1.2.3"),
            json!({}),
            Some("ports[0].name"),
        ),
        (
            "port protocol",
            "IPv4",
            json!([{"name": "a", "port": 80, "protocol": "foo"}]),
            ep("10.1.2.3"),
            json!({}),
            Some("ports[0].protocol"),
        ),
        (
            "too many endpoints",
            "IPv4",
            port.clone(),
            many(
                1001,
                &|i| json!({"addresses": [format!("10.0.{}.{}", i / 250, i % 250 + 1)]}),
            ),
            json!({}),
            Some("endpoints"),
        ),
        (
            "no addresses",
            "IPv4",
            port.clone(),
            json!([{"addresses": []}]),
            json!({}),
            Some("endpoints[0].addresses"),
        ),
        (
            "too many addresses",
            "IPv4",
            port.clone(),
            json!([{"addresses": many(101, &|i| json!(format!("10.0.0.{}", i + 1)))}]),
            json!({}),
            Some("endpoints[0].addresses"),
        ),
        (
            "bad hostname",
            "IPv4",
            port.clone(),
            json!([{"addresses": ["10.1.2.3"], "hostname": "--ab"}]),
            json!({}),
            Some("endpoints[0].hostname"),
        ),
        (
            "bad ip",
            "IPv4",
            port.clone(),
            ep("123.456.789.012"),
            json!({}),
            Some("endpoints[0].addresses[0]"),
        ),
        (
            "v6 in IPv4",
            "IPv4",
            port.clone(),
            ep("2001:db8::1"),
            json!({}),
            Some("endpoints[0].addresses[0]"),
        ),
        (
            "v4 in IPv6",
            "IPv6",
            port.clone(),
            ep("10.1.2.3"),
            json!({}),
            Some("endpoints[0].addresses[0]"),
        ),
        (
            "bad fqdn",
            "FQDN",
            port.clone(),
            ep("foo.*"),
            json!({}),
            Some("endpoints[0].addresses[0]"),
        ),
        (
            "bad node name",
            "IPv4",
            port.clone(),
            json!([{"addresses": ["10.1.2.3"], "nodeName": "INvalid-node-name"}]),
            json!({}),
            Some("endpoints[0].nodeName"),
        ),
        (
            "old address type",
            "IPv4",
            port.clone(),
            ep("10.1.2.3"),
            json!({}),
            None,
        ),
        (
            "bad address type",
            "IP",
            port.clone(),
            ep("10.1.2.3"),
            json!({}),
            Some("addressType"),
        ),
        (
            "special ipv4",
            "IPv4",
            port.clone(),
            ep("127.0.0.1"),
            json!({}),
            Some("endpoints[0].addresses[0]"),
        ),
        (
            "special ipv6",
            "IPv6",
            port.clone(),
            ep("fe80::9656:d028:8652:66b6"),
            json!({}),
            Some("endpoints[0].addresses[0]"),
        ),
        (
            "zone hints",
            "IPv4",
            port.clone(),
            json!([{"addresses": ["10.1.2.3"], "hints": {"forZones": [{"name": "zone-a"}]}}]),
            json!({}),
            None,
        ),
        (
            "bad zone hint",
            "IPv4",
            port.clone(),
            json!([{"addresses": ["10.1.2.3"], "hints": {"forZones": [{"name": "zone a"}]}}]),
            json!({}),
            Some("endpoints[0].hints.forZones[0].name"),
        ),
        (
            "duplicate zone hint",
            "IPv4",
            port.clone(),
            json!([{"addresses": ["10.1.2.3"], "hints": {"forZones": [{"name": "z"}, {"name": "z"}]}}]),
            json!({}),
            Some("endpoints[0].hints.forZones[1].name"),
        ),
        (
            "too many zone hints",
            "IPv4",
            port.clone(),
            json!([{"addresses": ["10.1.2.3"], "hints": {"forZones": many(9, &|i| json!({"name": format!("z{i}")}))}}]),
            json!({}),
            Some("endpoints[0].hints.forZones"),
        ),
        (
            "bad node hint",
            "IPv4",
            port.clone(),
            json!([{"addresses": ["10.1.2.3"], "hints": {"forNodes": [{"name": "Node_A"}]}}]),
            json!({}),
            Some("endpoints[0].hints.forNodes[0].name"),
        ),
        (
            "bad name",
            "IPv4",
            port.clone(),
            ep("10.1.2.3"),
            json!({"name": "Bad_Name"}),
            Some("metadata.name"),
        ),
        (
            "name at 253",
            "IPv4",
            port.clone(),
            ep("10.1.2.3"),
            json!({"name": format!("{}.{}.{}.{}", a(63), a(63), a(63), a(61))}),
            None,
        ),
        (
            "bad service-name label",
            "IPv4",
            port.clone(),
            ep("10.1.2.3"),
            json!({"labels": {"kubernetes.io/service-name": "a\nb"}}),
            Some("metadata.labels[kubernetes.io/service-name]"),
        ),
    ];
    for (name, at, ports, eps, meta, want) in cases {
        let got = endpoint_slice(&slice(at, ports, eps, meta)).err().map(|e| e.field);
        assert_eq!(got.as_deref(), want, "{name}");
    }
}

#[test]
fn rejection_messages_quote_the_value_escaped() {
    let e = svc_result(json!({"ports": [{"name": "x\ny", "port": 80}]})).unwrap_err();
    assert!(e.message.starts_with(r#"Invalid value: "x\ny": "#), "{}", e.message);
    assert!(!e.message.contains('\n'));
}
