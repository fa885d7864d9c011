//! The same ruleset through `nft -f` (the script renderer) and through our
//! netlink batches, each into a fresh network namespace: `nft list table`
//! of both must be identical, and our dump decoder must read back exactly
//! the model we sent. The ruleset uses every statement kind of the model,
//! in both families, with hostile comment text.

mod nft_support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use nft_support::Netns;
use sliceproxy::dataplane::nftables::model::*;
use sliceproxy::dataplane::nftables::script;
use sliceproxy::dataplane::nftables::tx::{Batch, Transaction};

const HOSTILE: &str = "ns/web\" ; flush ruleset ; #\nadd rule ip x y drop\r\t\\$(reboot)%'`";

fn v4(s: &str) -> Value {
    Value::Ipv4(s.parse::<Ipv4Addr>().unwrap())
}
fn v6(s: &str) -> Value {
    Value::Ipv6(s.parse::<Ipv6Addr>().unwrap())
}

struct Fam {
    family: Family,
    saddr: Expr,
    daddr: Expr,
    addr_t: DataType,
    a: fn(&str) -> Value,
    vip: &'static str,
    ep1: &'static str,
    ep2: &'static str,
    node: &'static str,
    svc_net: &'static str,
    pod_net: &'static str,
    fw_net: &'static str,
    snat_to: &'static str,
    reject: Reject,
}

fn fam(f: Family) -> Fam {
    match f {
        Family::Ip => Fam {
            family: f,
            saddr: Expr::IpSaddr,
            daddr: Expr::IpDaddr,
            addr_t: DataType::Ipv4Addr,
            a: v4,
            vip: "10.96.0.10",
            ep1: "10.244.1.1",
            ep2: "10.244.2.1",
            node: "192.168.50.10",
            svc_net: "10.96.0.0/12",
            pod_net: "10.244.0.0/16",
            fw_net: "203.0.113.0/24",
            snat_to: "192.168.50.10",
            reject: Reject::IcmpPortUnreachable,
        },
        _ => Fam {
            family: Family::Ip6,
            saddr: Expr::Ip6Saddr,
            daddr: Expr::Ip6Daddr,
            addr_t: DataType::Ipv6Addr,
            a: v6,
            vip: "fd00:96::10",
            ep1: "fd00:244:1::1",
            ep2: "fd00:244:2::1",
            node: "fd00:50::10",
            svc_net: "fd00:96::/108",
            pod_net: "fd00:244::/48",
            fw_net: "2001:db8:113::/64",
            snat_to: "fd00:50::10",
            reject: Reject::Icmpv6PortUnreachable,
        },
    }
}

/// A table using every statement kind, set kind and flag of the model.
fn kitchen_sink(f: Family) -> Table {
    let p = fam(f);
    let a = p.a;
    let mut t = Table::new(p.family, name("sliceproxy-test"));
    t.comment = Some(Comment::new(HOSTILE));
    let tcp = Value::Proto(TCP);
    let udp = Value::Proto(UDP);

    let mut service_ips = Set::new(
        name("service-ips"),
        SetType::Types {
            key: vec![p.addr_t, DataType::InetProto, DataType::InetService],
            data: Some(SetData::Verdict),
        },
    );
    service_ips.comment = Some(Comment::new(HOSTILE));
    service_ips.elements = vec![
        Element::vmap(&[a(p.vip), tcp, Value::Port(80)], VerdictData::Goto(name("svc-a"))).with_comment(HOSTILE),
        Element::vmap(&[a(p.vip), udp, Value::Port(53)], VerdictData::Jump(name("svc-a"))),
        Element::vmap(&[a(p.vip), Value::Proto(SCTP), Value::Port(9)], VerdictData::Drop),
        Element::vmap(&[a(p.node), tcp, Value::Port(1)], VerdictData::Accept),
        Element::vmap(&[a(p.node), tcp, Value::Port(2)], VerdictData::Return),
    ];
    let daddr_port = |d: &Fam| vec![d.daddr.clone(), Expr::ThDport];
    let mut slots = Set::new(
        name("slots-a"),
        SetType::Typeof {
            key: vec![Expr::Numgen { modulus: 1 }],
            data: Some(daddr_port(&p)),
        },
    );
    slots.elements = vec![
        Element::map(&[Value::Int(0)], &[a(p.ep1), Value::Port(8080)]),
        Element::map(&[Value::Int(1)], &[a(p.ep2), Value::Port(8080)]),
    ];
    let mut svc_slots = Set::new(
        name("service-slots"),
        SetType::Typeof {
            key: vec![Expr::MetaMark, Expr::Numgen { modulus: 1 }],
            data: Some(daddr_port(&p)),
        },
    );
    svc_slots.elements = vec![Element::map(
        &[Value::Mark(7), Value::Int(0)],
        &[a(p.ep1), Value::Port(8080)],
    )];
    let mut node_ips = Set::new(
        name("node-ips"),
        SetType::Types {
            key: vec![p.addr_t],
            data: None,
        },
    );
    node_ips.elements = vec![Element::key(&[a(p.node)])];
    let mut fw = Set::new(
        name("firewall-allow"),
        SetType::Types {
            key: vec![p.addr_t, DataType::InetProto, DataType::InetService, p.addr_t],
            data: None,
        },
    );
    fw.flags.interval = true;
    fw.elements = vec![
        Element {
            key: vec![
                KeyPart::Value(a(p.vip)),
                KeyPart::Value(tcp),
                KeyPart::Value(Value::Port(80)),
                KeyPart::Prefix(p.fw_net.parse().unwrap()),
            ],
            data: None,
            timeout: None,
            comment: None,
        },
        Element {
            key: vec![
                KeyPart::Value(a(p.vip)),
                KeyPart::Value(tcp),
                KeyPart::Value(Value::Port(80)),
                KeyPart::Range(a(p.ep1), a(p.ep2)),
            ],
            data: None,
            timeout: None,
            comment: None,
        },
    ];
    let mut affinity = Set::new(
        name("client-affinity"),
        SetType::Types {
            key: vec![p.addr_t, p.addr_t, DataType::InetProto, DataType::InetService],
            data: Some(SetData::Types(vec![p.addr_t, DataType::InetService])),
        },
    );
    affinity.flags = SetFlags {
        dynamic: true,
        timeout: true,
        ..SetFlags::default()
    };
    affinity.timeout = Some(Duration::from_secs(10800));
    affinity.size = Some(65535);
    affinity.elements = vec![Element {
        timeout: Some(Duration::from_secs(60)),
        ..Element::map(
            &[a(p.ep2), a(p.vip), tcp, Value::Port(80)],
            &[a(p.ep1), Value::Port(8080)],
        )
    }];
    let mut aff_svc = Set::new(
        name("affinity-svc-a"),
        SetType::Types {
            key: vec![p.addr_t],
            data: Some(SetData::Types(vec![p.addr_t])),
        },
    );
    aff_svc.flags = SetFlags {
        dynamic: true,
        timeout: true,
        ..SetFlags::default()
    };
    aff_svc.timeout = Some(Duration::from_secs(10800));
    aff_svc.size = Some(65535);
    let mut seen = Set::new(
        name("seen-clients"),
        SetType::Types {
            key: vec![p.addr_t, DataType::Mark],
            data: None,
        },
    );
    seen.flags = SetFlags {
        dynamic: true,
        timeout: true,
        ..SetFlags::default()
    };
    seen.timeout = Some(Duration::from_secs(30));
    seen.size = Some(1024);
    let mut marks = Set::new(
        name("const-marks"),
        SetType::Types {
            key: vec![DataType::Mark],
            data: None,
        },
    );
    marks.flags.constant = true;
    marks.elements = vec![Element::key(&[Value::Mark(0x4000)])];
    // Single-field interval sets (rbtree): adjacent slot ranges, and
    // networks with a gap at 0.
    let mut ranges = Set::new(
        name("slot-ranges"),
        SetType::Typeof {
            key: vec![Expr::Numgen { modulus: 65536 }],
            data: Some(daddr_port(&p)),
        },
    );
    ranges.flags.interval = true;
    let range = |lo, hi, ip: &str, port| Element {
        key: vec![KeyPart::Range(Value::Int(lo), Value::Int(hi))],
        ..Element::map(&[Value::Int(0)], &[a(ip), Value::Port(port)])
    };
    ranges.elements = vec![
        range(0, 21844, p.ep1, 8080),
        range(21845, 43689, p.ep2, 8080),
        range(43690, 65535, p.ep1, 9090),
    ];
    let mut nets = Set::new(
        name("service-nets"),
        SetType::Types {
            key: vec![p.addr_t],
            data: None,
        },
    );
    nets.flags.interval = true;
    nets.elements = vec![
        Element {
            key: vec![KeyPart::Prefix(p.svc_net.parse().unwrap())],
            ..Element::key(&[a(p.vip)])
        },
        Element::key(&[a(p.node)]),
    ];
    t.sets = vec![
        service_ips,
        slots,
        svc_slots,
        node_ips,
        fw,
        affinity,
        aff_svc,
        seen,
        marks,
        ranges,
        nets,
    ];

    let l4 = |v: u8| Stmt::Cmp {
        left: Expr::MetaL4proto,
        op: CmpOp::Eq,
        right: Value::Proto(v),
    };
    let prefix = |e: &Expr, negate, net: &str| Stmt::Prefix {
        left: e.clone(),
        negate,
        net: net.parse().unwrap(),
    };
    let flow = vec![p.saddr.clone(), p.daddr.clone(), Expr::MetaL4proto, Expr::ThDport];
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };

    let mut pre = Chain::base(name("nat-prerouting"), ChainType::Nat, Hook::Prerouting, -100);
    pre.comment = Some(Comment::new(HOSTILE));
    pre.rules = vec![
        Rule::new(vec![Stmt::Vmap {
            key: vec![p.daddr.clone(), Expr::MetaL4proto, Expr::ThDport],
            map: name("service-ips"),
        }])
        .with_comment(HOSTILE),
        Rule::new(vec![
            Stmt::CtStateIn(ct_state::NEW),
            Stmt::Update {
                set: name("seen-clients"),
                key: vec![p.saddr.clone(), Expr::Const(Value::Mark(5))],
                data: None,
                timeout: None,
            },
            Stmt::Counter,
        ]),
        Rule::new(vec![prefix(&p.daddr, false, p.svc_net), Stmt::Verdict(Verdict::Drop)]),
        Rule::new(vec![
            prefix(&p.saddr, true, p.pod_net),
            Stmt::MarkOr(0x4000),
            Stmt::Counter,
        ]),
        Rule::new(vec![
            Stmt::Mask {
                left: Expr::MetaMark,
                mask: 0x4000,
                negate: false,
                value: 0,
            },
            Stmt::Verdict(Verdict::Return),
        ]),
        Rule::new(vec![
            l4(TCP),
            Stmt::Dnat(NatTo::Map {
                key: vec![Expr::Numgen { modulus: 2 }],
                map: name("slots-a"),
                port: None,
            }),
        ]),
        Rule::new(vec![
            l4(TCP),
            Stmt::Dnat(NatTo::Map {
                key: vec![Expr::MetaMark, Expr::Numgen { modulus: 2 }],
                map: name("service-slots"),
                port: None,
            }),
        ]),
        Rule::new(vec![
            l4(UDP),
            Stmt::Dnat(NatTo::Map {
                key: vec![Expr::Jhash {
                    keys: vec![p.saddr.clone(), Expr::ThSport],
                    modulus: 251,
                    seed: 0x1234,
                }],
                map: name("slots-a"),
                port: None,
            }),
        ]),
        Rule::new(vec![
            l4(UDP),
            Stmt::Dnat(NatTo::Addr {
                addr: ip(p.ep1),
                port: Some(5353),
            }),
        ]),
        Rule::new(vec![
            l4(SCTP),
            Stmt::Dnat(NatTo::Addr {
                addr: ip(p.ep2),
                port: None,
            }),
        ]),
        Rule::new(vec![
            Stmt::Cmp {
                left: Expr::FibDaddrType,
                op: CmpOp::Eq,
                right: Value::AddrType(RTN_LOCAL),
            },
            Stmt::Verdict(Verdict::Jump(name("svc-a"))),
        ]),
        Rule::new(vec![
            Stmt::Range {
                left: Expr::ThDport,
                negate: false,
                from: Value::Port(30000),
                to: Value::Port(32767),
            },
            Stmt::Counter,
        ]),
        Rule::new(vec![
            Stmt::Range {
                left: Expr::ThDport,
                negate: true,
                from: Value::Port(1),
                to: Value::Port(1024),
            },
            Stmt::Counter,
        ]),
        Rule::new(vec![
            Stmt::Lookup {
                key: vec![p.daddr.clone()],
                set: name("node-ips"),
                negate: false,
            },
            Stmt::Lookup {
                key: vec![p.saddr.clone()],
                set: name("node-ips"),
                negate: true,
            },
            Stmt::Counter,
        ]),
        Rule::new(vec![
            l4(TCP),
            Stmt::Dnat(NatTo::Map {
                key: flow.clone(),
                map: name("client-affinity"),
                port: None,
            }),
        ]),
        Rule::new(vec![
            l4(TCP),
            Stmt::Dnat(NatTo::Map {
                key: vec![Expr::Numgen { modulus: 65536 }],
                map: name("slot-ranges"),
                port: None,
            }),
        ]),
        Rule::new(vec![
            Stmt::Lookup {
                key: vec![p.daddr.clone()],
                set: name("service-nets"),
                negate: true,
            },
            Stmt::Counter,
        ]),
        Rule::new(vec![
            Stmt::Cmp {
                left: Expr::Symhash { modulus: 2 },
                op: CmpOp::Eq,
                right: Value::Int(0),
            },
            Stmt::Counter,
        ]),
        Rule::new(vec![
            Stmt::Cmp {
                left: Expr::MetaL4proto,
                op: CmpOp::Ne,
                right: Value::Proto(TCP),
            },
            Stmt::Cmp {
                left: p.daddr.clone(),
                op: CmpOp::Eq,
                right: a(p.vip),
            },
            Stmt::Lookup {
                key: vec![Expr::MetaMark],
                set: name("const-marks"),
                negate: false,
            },
            Stmt::Verdict(Verdict::Goto(name("svc-a"))),
        ]),
    ];

    let mut svc = Chain::regular(name("svc-a"));
    svc.comment = Some(Comment::new(HOSTILE));
    svc.rules = vec![
        Rule::new(vec![
            Stmt::Lookup {
                key: vec![p.daddr.clone(), Expr::MetaL4proto, Expr::ThDport, p.saddr.clone()],
                set: name("firewall-allow"),
                negate: true,
            },
            Stmt::Verdict(Verdict::Drop),
        ]),
        Rule::new(vec![
            l4(TCP),
            Stmt::Update {
                set: name("affinity-svc-a"),
                key: vec![p.saddr.clone()],
                data: Some(vec![Expr::Const(a(p.ep1))]),
                timeout: Some(Duration::from_secs(3600)),
            },
        ]),
        // nft 1.0.6 cannot linearize an IPv6 update with concatenated data
        // (netlink_linearize.c assertion): affinity maps hold addresses only.
        Rule::new(vec![
            Stmt::Update {
                set: name("affinity-svc-a"),
                key: vec![p.saddr.clone()],
                data: Some(vec![p.daddr.clone()]),
                timeout: None,
            },
            Stmt::Verdict(Verdict::Continue),
        ]),
        Rule::new(vec![
            l4(TCP),
            Stmt::Dnat(NatTo::Map {
                key: vec![p.saddr.clone()],
                map: name("affinity-svc-a"),
                port: Some(8080),
            }),
        ]),
        Rule::new(vec![Stmt::Verdict(Verdict::Jump(name("reject-chain")))]),
        Rule::new(vec![Stmt::Verdict(Verdict::Return)]),
    ];

    let mut reject = Chain::regular(name("reject-chain"));
    reject.rules = vec![
        Rule::new(vec![l4(TCP), Stmt::Reject(Reject::TcpReset)]),
        Rule::new(vec![Stmt::Reject(p.reject)]),
    ];

    let mut post = Chain::base(name("nat-postrouting"), ChainType::Nat, Hook::Postrouting, 100);
    post.rules = vec![
        Rule::new(vec![
            Stmt::Mask {
                left: Expr::MetaMark,
                mask: 0x4000,
                negate: true,
                value: 0,
            },
            Stmt::Masquerade { fully_random: true },
        ]),
        Rule::new(vec![
            prefix(&p.saddr, false, p.pod_net),
            Stmt::Masquerade { fully_random: false },
        ]),
        Rule::new(vec![
            Stmt::Cmp {
                left: p.saddr.clone(),
                op: CmpOp::Eq,
                right: a(p.ep1),
            },
            Stmt::Snat(NatTo::Addr {
                addr: ip(p.snat_to),
                port: None,
            }),
        ]),
    ];

    let mut fwd = Chain::base(name("filter-forward"), ChainType::Filter, Hook::Forward, -110);
    fwd.rules = vec![
        Rule::new(vec![Stmt::CtMarkSet(0x1)]),
        Rule::new(vec![
            Stmt::Cmp {
                left: Expr::CtMark,
                op: CmpOp::Eq,
                right: Value::Mark(1),
            },
            Stmt::Mask {
                left: Expr::CtMark,
                mask: 0xff,
                negate: true,
                value: 2,
            },
            Stmt::Counter,
        ]),
        Rule::new(vec![
            Stmt::CtStateIn(ct_state::ESTABLISHED | ct_state::RELATED),
            Stmt::Verdict(Verdict::Accept),
        ]),
        Rule::new(vec![
            Stmt::Cmp {
                left: Expr::ThDport,
                op: CmpOp::Ge,
                right: Value::Port(1000),
            },
            Stmt::Cmp {
                left: Expr::ThSport,
                op: CmpOp::Lt,
                right: Value::Port(10),
            },
            Stmt::Verdict(Verdict::Jump(name("reject-chain"))),
        ]),
    ];
    let mut input = Chain::base(name("filter-input"), ChainType::Filter, Hook::Input, 0);
    input.base.as_mut().unwrap().policy_drop = false;
    t.chains = vec![pre, svc, reject, post, fwd, input];
    t
}

fn normalise(mut t: Table) -> Table {
    for s in &mut t.sets {
        s.elements.sort();
    }
    for c in &mut t.chains {
        for r in &mut c.rules {
            r.handle = None;
        }
    }
    t
}

/// Equality with a message naming the first differing object.
fn assert_same(got: &Table, want: &Table, ns: &str) {
    assert_eq!(got.sets.len(), want.sets.len(), "{ns}: set count");
    for (g, w) in got.sets.iter().zip(&want.sets) {
        assert_eq!(g.elements, w.elements, "{ns}: elements of {}", w.name);
        assert_eq!(g, w, "{ns}: set {}", w.name);
    }
    assert_eq!(got.chains.len(), want.chains.len(), "{ns}: chain count");
    for (g, w) in got.chains.iter().zip(&want.chains) {
        assert_eq!(g.rules.len(), w.rules.len(), "{ns}: rules of {}", w.name);
        for (i, (gr, wr)) in g.rules.iter().zip(&w.rules).enumerate() {
            assert_eq!(gr, wr, "{ns}: rule {i} of {}", w.name);
        }
        assert_eq!(g, w, "{ns}: chain {}", w.name);
    }
    assert_eq!(got, want, "{ns}: table");
}

fn parity(f: Family) {
    let table = kitchen_sink(f);
    let text = script::render(&table);
    let by_script = Netns::new("parity");
    let by_netlink = Netns::new("parity");

    by_script
        .nft_script(&text)
        .unwrap_or_else(|e| panic!("nft -f refused the rendered script:\n{e}\n--- script ---\n{text}"));

    let tx = Transaction::create(&table);
    let batch = Batch::build(&tx, &Table::new(table.family, table.name.clone())).unwrap();
    let mut nft = by_netlink.nft();
    let committed = nft.commit(&batch).unwrap();
    assert_eq!(committed.acked, batch.len());

    let fam = f.keyword();
    // `expires` counts down from the moment each load ran: not part of the
    // ruleset.
    let list = |ns: &Netns| {
        let text = ns.must(&["nft", "list", "table", fam, table.name.as_str()]);
        text.split(" expires ")
            .enumerate()
            .map(|(i, part)| {
                if i == 0 {
                    part
                } else {
                    part.split_once(' ').map_or("", |(_, rest)| rest)
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (a, b) = (list(&by_script), list(&by_netlink));
    if a != b {
        let dir = std::env::temp_dir().join(format!("nft-parity-{}-{fam}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dbg = |ns: &Netns| ns.must(&["nft", "--debug=netlink", "list", "table", fam, table.name.as_str()]);
        for (file, text) in [
            ("script.txt", a.clone()),
            ("netlink.txt", b.clone()),
            ("script-debug.txt", dbg(&by_script)),
            ("netlink-debug.txt", dbg(&by_netlink)),
        ] {
            std::fs::write(dir.join(file), text).unwrap();
        }
        let diff = std::process::Command::new("diff")
            .arg("-u")
            .arg(dir.join("script.txt"))
            .arg(dir.join("netlink.txt"))
            .output()
            .unwrap();
        panic!(
            "nft list differs (files in {}):\n{}",
            dir.display(),
            String::from_utf8_lossy(&diff.stdout)
        );
    }
    // Hostile text stays inside comments.
    assert!(!a.contains("add rule ip x y drop\n"), "{a}");
    assert!(
        a.contains(
            "comment \"ns/web%22 %3B flush ruleset %3B %23%0Aadd rule ip x y drop%0D%09%5C%24(reboot)%25%27%60\""
        ),
        "{a}"
    );

    // Our decoder reads back exactly what we sent, from both loads.
    for ns in [&by_netlink, &by_script] {
        let mut nft = ns.nft();
        let dumped = nft
            .dump_table(table.family, &table.name)
            .unwrap()
            .expect("table exists");
        assert_same(&normalise(dumped), &normalise(table.clone()), &ns.name);
    }
}

#[test]
fn script_and_netlink_load_identical_ip_rulesets() {
    parity(Family::Ip);
}

#[test]
fn script_and_netlink_load_identical_ip6_rulesets() {
    parity(Family::Ip6);
}
