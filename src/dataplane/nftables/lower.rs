//! Statements to kernel expressions and back.
//!
//! The kernel knows no statements, only a list of expressions that load
//! values into registers, compare, look up and act. [`lower`] turns a
//! [`Rule`] into that list the way nft 1.0.6 does (same expressions, same
//! shortcuts, so that `nft list` prints a rule we sent exactly as it prints
//! the rule nft sent); [`raise`] reads such a list back into statements
//! (dumps of our own table, drift repair). `raise(lower(r)) == r` for every
//! rule the model can express (unit and property tests).
//!
//! Registers: nft numbers registers in 4-byte units; a concatenation puts
//! its fields in consecutive units, each rounded up to 4 bytes. On the wire
//! unit `u` is `NFT_REG_1 + u/4` when `u` is a multiple of 4 (the old
//! 16-byte registers) and `NFT_REG32_00 + u` otherwise, as nft writes it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::NftError;
use super::model::{CmpOp, DataType, Expr, Family, Name, NatTo, Reject, Rule, SetType, Stmt, Value, Verdict};
use super::wire::*;

/// One kernel expression, with the attributes we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KExpr {
    /// `payload load LEN @ BASE + OFFSET => DREG`.
    Payload {
        /// Header.
        base: u32,
        /// Offset in it.
        offset: u32,
        /// Bytes.
        len: u32,
        /// Destination register.
        dreg: u32,
    },
    /// `meta load KEY => DREG`.
    Meta {
        /// `NFT_META_*`.
        key: u32,
        /// Destination register.
        dreg: u32,
    },
    /// `meta set KEY with SREG`.
    MetaSet {
        /// `NFT_META_*`.
        key: u32,
        /// Source register.
        sreg: u32,
    },
    /// `ct load KEY => DREG`.
    Ct {
        /// `NFT_CT_*`.
        key: u32,
        /// Destination register.
        dreg: u32,
    },
    /// `ct set KEY with SREG`.
    CtSet {
        /// `NFT_CT_*`.
        key: u32,
        /// Source register.
        sreg: u32,
    },
    /// `cmp OP SREG DATA`.
    Cmp {
        /// Source register.
        sreg: u32,
        /// `NFT_CMP_*`.
        op: u32,
        /// Compared bytes.
        data: Vec<u8>,
    },
    /// `bitwise DREG = (SREG & MASK) ^ XOR`.
    Bitwise {
        /// Source register.
        sreg: u32,
        /// Destination register.
        dreg: u32,
        /// Bytes.
        len: u32,
        /// Mask.
        mask: Vec<u8>,
        /// Xor.
        xor: Vec<u8>,
    },
    /// `byteorder DREG = OP(SREG, SIZE, LEN)`.
    Byteorder {
        /// Source register.
        sreg: u32,
        /// Destination register.
        dreg: u32,
        /// `NFT_BYTEORDER_*`.
        op: u32,
        /// Bytes.
        len: u32,
        /// Word size.
        size: u32,
    },
    /// `range OP SREG FROM TO`.
    Range {
        /// Source register.
        sreg: u32,
        /// `NFT_RANGE_*`.
        op: u32,
        /// Low.
        from: Vec<u8>,
        /// High.
        to: Vec<u8>,
    },
    /// `lookup SREG set SET [dreg DREG] [flags]`.
    Lookup {
        /// Set name.
        set: String,
        /// Key register.
        sreg: u32,
        /// Data register (maps); `Some(0)` for verdict maps.
        dreg: Option<u32>,
        /// `NFT_LOOKUP_F_*`.
        flags: u32,
    },
    /// `immediate DREG DATA`.
    Immediate {
        /// Destination register (0: the verdict).
        dreg: u32,
        /// What.
        data: Imm,
    },
    /// `numgen DREG = random mod N`.
    Numgen {
        /// Destination register.
        dreg: u32,
        /// Modulus.
        modulus: u32,
        /// `NFT_NG_*`.
        kind: u32,
        /// Offset.
        offset: u32,
    },
    /// `hash DREG = jhash(SREG, LEN, SEED) % N` or `symhash() % N`.
    Hash {
        /// Source register (jhash).
        sreg: Option<u32>,
        /// Bytes hashed (jhash).
        len: Option<u32>,
        /// Destination register.
        dreg: u32,
        /// Modulus.
        modulus: u32,
        /// Seed (jhash).
        seed: Option<u32>,
        /// Offset.
        offset: Option<u32>,
        /// `NFT_HASH_*`.
        kind: u32,
    },
    /// `fib ... => DREG`.
    Fib {
        /// Destination register.
        dreg: u32,
        /// `NFT_FIB_RESULT_*`.
        result: u32,
        /// `NFTA_FIB_F_*`.
        flags: u32,
    },
    /// `nat`.
    Nat {
        /// `NFT_NAT_*`.
        kind: u32,
        /// `NFPROTO_*`.
        family: u32,
        /// Address register.
        addr: Option<u32>,
        /// Port register.
        proto: Option<u32>,
        /// `NF_NAT_RANGE_*` (absent when 0).
        flags: Option<u32>,
    },
    /// `masq`.
    Masq {
        /// `NF_NAT_RANGE_*` (absent when 0).
        flags: Option<u32>,
    },
    /// `reject type T code C`.
    Reject {
        /// `NFT_REJECT_*`.
        kind: u32,
        /// ICMP code.
        code: u8,
    },
    /// `counter`.
    Counter {
        /// Bytes.
        bytes: u64,
        /// Packets.
        packets: u64,
    },
    /// `dynset OP reg_key SREG set SET [sreg_data D] [timeout T]`.
    Dynset {
        /// Set name.
        set: String,
        /// `NFT_DYNSET_OP_*`.
        op: u32,
        /// Key register.
        sreg_key: u32,
        /// Data register.
        sreg_data: Option<u32>,
        /// Timeout in ms (0: the set's default).
        timeout_ms: u64,
    },
}

/// Immediate data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Imm {
    /// Bytes.
    Value(Vec<u8>),
    /// A verdict code and, for jump/goto, the chain.
    Verdict(i32, Option<String>),
}

/// What [`lower`] and [`raise`] need to know about a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetShape {
    /// Key fields.
    pub key: Vec<DataType>,
    /// Data fields (value maps).
    pub data: Vec<DataType>,
    /// Interval set (keys compared big-endian).
    pub interval: bool,
}

impl SetShape {
    /// The shape of a declared set.
    pub fn of(kind: &SetType, interval: bool) -> SetShape {
        SetShape {
            key: kind.key_types(),
            data: kind.data_types(),
            interval,
        }
    }
}

/// Set shapes by name.
pub type Shapes = HashMap<Name, SetShape>;

/// A register unit to the register number on the wire.
pub fn reg(unit: u32) -> u32 {
    if unit.is_multiple_of(4) {
        NFT_REG_1 + unit / 4
    } else {
        NFT_REG32_00 + unit
    }
}

/// A register number on the wire to its unit.
pub fn unit(reg: u32) -> Option<u32> {
    match reg {
        1..=4 => Some((reg - 1) * 4),
        8..=23 => Some(reg - NFT_REG32_00),
        _ => None,
    }
}

fn units(len: usize) -> u32 {
    len.div_ceil(4) as u32
}

fn not_in(what: &str, family: Family) -> NftError {
    NftError::Invalid(format!("{what} does not belong in an {} table", family.keyword()))
}

/// Lowering of one rule.
struct Lowerer<'a> {
    family: Family,
    shapes: &'a Shapes,
    out: Vec<KExpr>,
}

impl Lowerer<'_> {
    fn shape(&self, set: &Name) -> Result<&SetShape, NftError> {
        self.shapes
            .get(set)
            .ok_or_else(|| NftError::Invalid(format!("rule refers to unknown set or map @{set}")))
    }

    /// Load one expression into `unit`.
    fn load(&mut self, e: &Expr, at: u32) -> Result<(), NftError> {
        let dreg = reg(at);
        let payload = |base, offset, len| KExpr::Payload {
            base,
            offset,
            len,
            dreg,
        };
        let k = match e {
            Expr::IpSaddr | Expr::IpDaddr if self.family == Family::Ip6 => {
                return Err(not_in("ip saddr/daddr", self.family));
            }
            Expr::Ip6Saddr | Expr::Ip6Daddr if self.family == Family::Ip => {
                return Err(not_in("ip6 saddr/daddr", self.family));
            }
            Expr::IpSaddr => payload(NFT_PAYLOAD_NETWORK_HEADER, 12, 4),
            Expr::IpDaddr => payload(NFT_PAYLOAD_NETWORK_HEADER, 16, 4),
            Expr::Ip6Saddr => payload(NFT_PAYLOAD_NETWORK_HEADER, 8, 16),
            Expr::Ip6Daddr => payload(NFT_PAYLOAD_NETWORK_HEADER, 24, 16),
            Expr::ThSport => payload(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 2),
            Expr::ThDport => payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
            Expr::MetaL4proto => KExpr::Meta {
                key: NFT_META_L4PROTO,
                dreg,
            },
            Expr::MetaMark => KExpr::Meta {
                key: NFT_META_MARK,
                dreg,
            },
            Expr::CtState => KExpr::Ct {
                key: NFT_CT_STATE,
                dreg,
            },
            Expr::CtMark => KExpr::Ct { key: NFT_CT_MARK, dreg },
            Expr::FibDaddrType => KExpr::Fib {
                dreg,
                result: NFT_FIB_RESULT_ADDRTYPE,
                flags: NFTA_FIB_F_DADDR,
            },
            Expr::FibSaddrType => KExpr::Fib {
                dreg,
                result: NFT_FIB_RESULT_ADDRTYPE,
                flags: NFTA_FIB_F_SADDR,
            },
            Expr::Numgen { modulus } => KExpr::Numgen {
                dreg,
                modulus: *modulus,
                kind: NFT_NG_RANDOM,
                offset: 0,
            },
            Expr::Symhash { modulus } => KExpr::Hash {
                sreg: None,
                len: None,
                dreg,
                modulus: *modulus,
                seed: None,
                offset: Some(0),
                kind: NFT_HASH_SYM,
            },
            Expr::Jhash { keys, modulus, seed } => {
                if keys
                    .iter()
                    .any(|k| matches!(k, Expr::Jhash { .. } | Expr::Numgen { .. } | Expr::Symhash { .. }))
                {
                    return Err(NftError::Invalid("jhash of a generated value".into()));
                }
                // The hashed fields go in the next free 16-byte register
                // after the result (nft does the same).
                let src = (at + 1).next_multiple_of(4);
                let len = self.concat(keys, src, false)?;
                self.out.push(KExpr::Hash {
                    sreg: Some(reg(src)),
                    len: Some(len),
                    dreg,
                    modulus: *modulus,
                    seed: Some(*seed),
                    offset: Some(0),
                    kind: NFT_HASH_JENKINS,
                });
                return Ok(());
            }
            Expr::Const(v) => KExpr::Immediate {
                dreg,
                data: Imm::Value(v.bytes()),
            },
        };
        self.out.push(k);
        Ok(())
    }

    /// Load a concatenation from `start`; returns its length in bytes as
    /// the kernel counts it (every field padded to 4). With `interval`,
    /// host-order fields are converted to big-endian as nft does for
    /// interval (pipapo) lookups.
    fn concat(&mut self, keys: &[Expr], start: u32, interval: bool) -> Result<u32, NftError> {
        let mut at = start;
        for k in keys {
            self.load(k, at)?;
            let t = k.dtype();
            if interval && t.host_order() {
                let r = reg(at);
                // nft 1.0.6 converts with the datatype's size: 2 for
                // inet_proto (a no-op on one byte, but sent), 4 otherwise.
                let (len, size) = if t == DataType::InetProto {
                    (1, 2)
                } else {
                    (t.byte_len() as u32, 4)
                };
                self.out.push(KExpr::Byteorder {
                    sreg: r,
                    dreg: r,
                    op: NFT_BYTEORDER_HTON,
                    len,
                    size,
                });
            }
            at += units(t.byte_len());
        }
        if at - start > 16 {
            return Err(NftError::Invalid("concatenation longer than 64 bytes".into()));
        }
        Ok((at - start) * 4)
    }

    fn check_key(&self, key: &[Expr], want: &[DataType], set: &Name) -> Result<(), NftError> {
        let have: Vec<DataType> = key.iter().map(Expr::dtype).collect();
        if have != want {
            return Err(NftError::Invalid(format!(
                "key {:?} does not match @{set}'s type {:?}",
                have, want
            )));
        }
        Ok(())
    }

    fn stmt(&mut self, s: &Stmt) -> Result<(), NftError> {
        match s {
            Stmt::Cmp { left, op, right } => {
                if left.dtype() != right.dtype() && (left.dtype() != DataType::CtState) {
                    return Err(NftError::Invalid(format!("cannot compare {left:?} with {right:?}")));
                }
                self.load(left, 0)?;
                self.out.push(KExpr::Cmp {
                    sreg: NFT_REG_1,
                    op: cmp_op(*op),
                    data: right.bytes(),
                });
            }
            Stmt::Prefix { left, negate, net } => {
                let (base, offset, full) = match (left, net) {
                    (Expr::IpSaddr, IpNet::V4(_)) => (NFT_PAYLOAD_NETWORK_HEADER, 12, 4),
                    (Expr::IpDaddr, IpNet::V4(_)) => (NFT_PAYLOAD_NETWORK_HEADER, 16, 4),
                    (Expr::Ip6Saddr, IpNet::V6(_)) => (NFT_PAYLOAD_NETWORK_HEADER, 8, 16),
                    (Expr::Ip6Daddr, IpNet::V6(_)) => (NFT_PAYLOAD_NETWORK_HEADER, 24, 16),
                    _ => return Err(NftError::Invalid(format!("prefix {net} on {left:?}"))),
                };
                if matches!(left, Expr::IpSaddr | Expr::IpDaddr) && self.family == Family::Ip6
                    || matches!(left, Expr::Ip6Saddr | Expr::Ip6Daddr) && self.family == Family::Ip
                {
                    return Err(not_in("this address match", self.family));
                }
                let bits = net.prefix_len() as u32;
                if bits == 0 || bits == full * 8 {
                    return Err(NftError::Invalid(format!(
                        "prefix {net}: use a plain comparison (or none) instead"
                    )));
                }
                let addr = ip_bytes(net.network());
                let op = if *negate { NFT_CMP_NEQ } else { NFT_CMP_EQ };
                if bits.is_multiple_of(8) {
                    // nft loads only the prefix's bytes when it is
                    // byte-aligned, and compares them without a mask.
                    let n = bits / 8;
                    self.out.push(KExpr::Payload {
                        base,
                        offset,
                        len: n,
                        dreg: NFT_REG_1,
                    });
                    self.out.push(KExpr::Cmp {
                        sreg: NFT_REG_1,
                        op,
                        data: addr[..n as usize].to_vec(),
                    });
                } else {
                    self.out.push(KExpr::Payload {
                        base,
                        offset,
                        len: full,
                        dreg: NFT_REG_1,
                    });
                    self.out.push(KExpr::Bitwise {
                        sreg: NFT_REG_1,
                        dreg: NFT_REG_1,
                        len: full,
                        mask: ip_bytes(net.netmask()),
                        xor: vec![0; full as usize],
                    });
                    self.out.push(KExpr::Cmp {
                        sreg: NFT_REG_1,
                        op,
                        data: addr,
                    });
                }
            }
            Stmt::Range { left, negate, from, to } => {
                if from.dtype() != left.dtype() || to.dtype() != left.dtype() {
                    return Err(NftError::Invalid(format!("range {from:?}-{to:?} on {left:?}")));
                }
                self.load(left, 0)?;
                if *negate {
                    self.out.push(KExpr::Range {
                        sreg: NFT_REG_1,
                        op: NFT_RANGE_NEQ,
                        from: from.bytes(),
                        to: to.bytes(),
                    });
                } else {
                    // nft writes an inclusive range as two comparisons.
                    self.out.push(KExpr::Cmp {
                        sreg: NFT_REG_1,
                        op: NFT_CMP_GTE,
                        data: from.bytes(),
                    });
                    self.out.push(KExpr::Cmp {
                        sreg: NFT_REG_1,
                        op: NFT_CMP_LTE,
                        data: to.bytes(),
                    });
                }
            }
            Stmt::Mask {
                left,
                mask,
                negate,
                value,
            } => {
                if !matches!(left, Expr::MetaMark | Expr::CtMark) {
                    return Err(NftError::Invalid(format!("mask on {left:?}")));
                }
                self.load(left, 0)?;
                self.out.push(bitwise(*mask, 0));
                self.out.push(KExpr::Cmp {
                    sreg: NFT_REG_1,
                    op: if *negate { NFT_CMP_NEQ } else { NFT_CMP_EQ },
                    data: value.to_ne_bytes().to_vec(),
                });
            }
            Stmt::CtStateIn(bits) => {
                self.load(&Expr::CtState, 0)?;
                self.out.push(bitwise(*bits, 0));
                self.out.push(KExpr::Cmp {
                    sreg: NFT_REG_1,
                    op: NFT_CMP_NEQ,
                    data: vec![0; 4],
                });
            }
            Stmt::CtStatusIn(bits) => {
                self.out.push(KExpr::Ct {
                    key: NFT_CT_STATUS,
                    dreg: NFT_REG_1,
                });
                self.out.push(bitwise(*bits, 0));
                self.out.push(KExpr::Cmp {
                    sreg: NFT_REG_1,
                    op: NFT_CMP_NEQ,
                    data: vec![0; 4],
                });
            }
            Stmt::Lookup { key, set, negate } => {
                let shape = self.shape(set)?.clone();
                self.check_key(key, &shape.key, set)?;
                if !shape.data.is_empty() {
                    return Err(NftError::Invalid(format!("@{set} is a map: use it with a statement")));
                }
                self.concat(key, 0, shape.interval)?;
                self.out.push(KExpr::Lookup {
                    set: set.to_string(),
                    sreg: NFT_REG_1,
                    dreg: None,
                    flags: if *negate { NFT_LOOKUP_F_INV } else { 0 },
                });
            }
            Stmt::Vmap { key, map } => {
                let shape = self.shape(map)?.clone();
                self.check_key(key, &shape.key, map)?;
                self.concat(key, 0, shape.interval)?;
                self.out.push(KExpr::Lookup {
                    set: map.to_string(),
                    sreg: NFT_REG_1,
                    dreg: Some(NFT_REG_VERDICT),
                    flags: 0,
                });
            }
            Stmt::Counter => self.out.push(KExpr::Counter { bytes: 0, packets: 0 }),
            Stmt::MarkOr(bits) => {
                self.load(&Expr::MetaMark, 0)?;
                self.out.push(bitwise(!*bits, *bits));
                self.out.push(KExpr::MetaSet {
                    key: NFT_META_MARK,
                    sreg: NFT_REG_1,
                });
            }
            Stmt::MarkXor(bits) => {
                self.load(&Expr::MetaMark, 0)?;
                self.out.push(bitwise(u32::MAX, *bits));
                self.out.push(KExpr::MetaSet {
                    key: NFT_META_MARK,
                    sreg: NFT_REG_1,
                });
            }
            Stmt::CtMarkSet(v) => {
                self.load(&Expr::Const(Value::Mark(*v)), 0)?;
                self.out.push(KExpr::CtSet {
                    key: NFT_CT_MARK,
                    sreg: NFT_REG_1,
                });
            }
            Stmt::Dnat(to) => self.nat(NFT_NAT_DNAT, to)?,
            Stmt::Snat(to) => self.nat(NFT_NAT_SNAT, to)?,
            Stmt::Masquerade { fully_random } => self.out.push(KExpr::Masq {
                flags: fully_random.then_some(NF_NAT_RANGE_PROTO_RANDOM_FULLY),
            }),
            Stmt::Reject(r) => {
                let (kind, code) = match (r, self.family) {
                    (Reject::IcmpPortUnreachable, Family::Ip | Family::Inet) => (NFT_REJECT_ICMP_UNREACH, 3),
                    (Reject::Icmpv6PortUnreachable, Family::Ip6 | Family::Inet) => (NFT_REJECT_ICMP_UNREACH, 4),
                    (Reject::IcmpxPortUnreachable, Family::Inet) => {
                        (NFT_REJECT_ICMPX_UNREACH, NFT_REJECT_ICMPX_PORT_UNREACH)
                    }
                    (Reject::TcpReset, _) => (NFT_REJECT_TCP_RST, 0),
                    _ => return Err(not_in(&format!("reject {r:?}"), self.family)),
                };
                self.out.push(KExpr::Reject { kind, code });
            }
            Stmt::Update {
                set,
                key,
                data,
                timeout,
            } => {
                let shape = self.shape(set)?.clone();
                self.check_key(key, &shape.key, set)?;
                let klen = self.concat(key, 0, shape.interval)?;
                let sreg_data = match data {
                    Some(d) => {
                        let have: Vec<DataType> = d.iter().map(Expr::dtype).collect();
                        if have != shape.data {
                            return Err(NftError::Invalid(format!(
                                "data {have:?} does not match @{set}'s {:?}",
                                shape.data
                            )));
                        }
                        let at = (klen / 4).next_multiple_of(4);
                        self.concat(d, at, false)?;
                        Some(reg(at))
                    }
                    None if !shape.data.is_empty() => {
                        return Err(NftError::Invalid(format!("update of map @{set} without data")));
                    }
                    None => None,
                };
                self.out.push(KExpr::Dynset {
                    set: set.to_string(),
                    op: NFT_DYNSET_OP_UPDATE,
                    sreg_key: NFT_REG_1,
                    sreg_data,
                    timeout_ms: timeout.map(|t| t.as_millis() as u64).unwrap_or(0),
                });
            }
            Stmt::Verdict(v) => self.out.push(KExpr::Immediate {
                dreg: NFT_REG_VERDICT,
                data: verdict_imm(v),
            }),
        }
        Ok(())
    }

    fn nat(&mut self, kind: u32, to: &NatTo) -> Result<(), NftError> {
        let family = match self.family {
            Family::Ip => u32::from(nfproto::IPV4),
            Family::Ip6 => u32::from(nfproto::IPV6),
            Family::Inet => {
                // The family follows the address (or the map's values).
                match to {
                    NatTo::Addr {
                        addr: IpAddr::V4(_), ..
                    } => u32::from(nfproto::IPV4),
                    NatTo::Addr {
                        addr: IpAddr::V6(_), ..
                    } => u32::from(nfproto::IPV6),
                    NatTo::Map { map, .. } => match self.shape(map)?.data.first() {
                        Some(DataType::Ipv6Addr) => u32::from(nfproto::IPV6),
                        _ => u32::from(nfproto::IPV4),
                    },
                }
            }
        };
        match to {
            NatTo::Addr { addr, port } => {
                if (family == u32::from(nfproto::IPV4)) != addr.is_ipv4() {
                    return Err(not_in(&format!("nat to {addr}"), self.family));
                }
                // Each constant gets its own 16-byte register, as nft does.
                self.load(&Expr::Const(Value::ip(*addr)), 0)?;
                if let Some(p) = port {
                    self.load(&Expr::Const(Value::Port(*p)), 4)?;
                }
                self.out.push(KExpr::Nat {
                    kind,
                    family,
                    addr: Some(NFT_REG_1),
                    proto: port.map(|_| reg(4)),
                    flags: Some(
                        NF_NAT_RANGE_MAP_IPS
                            | if port.is_some() {
                                NF_NAT_RANGE_PROTO_SPECIFIED
                            } else {
                                0
                            },
                    ),
                });
            }
            NatTo::Map { key, map, port } => {
                let shape = self.shape(map)?.clone();
                self.check_key(key, &shape.key, map)?;
                let addr_len = match shape.data.as_slice() {
                    [DataType::Ipv4Addr] | [DataType::Ipv4Addr, DataType::InetService] => 4,
                    [DataType::Ipv6Addr] | [DataType::Ipv6Addr, DataType::InetService] => 16,
                    other => {
                        return Err(NftError::Invalid(format!(
                            "nat map @{map} must map to an address (and port), not {other:?}"
                        )));
                    }
                };
                let port_in_map = shape.data.len() == 2;
                if port_in_map && port.is_some() {
                    return Err(NftError::Invalid(format!("map @{map} already gives the port")));
                }
                let with_port = port_in_map || port.is_some();
                self.concat(key, 0, shape.interval)?;
                self.out.push(KExpr::Lookup {
                    set: map.to_string(),
                    sreg: NFT_REG_1,
                    dreg: Some(NFT_REG_1),
                    flags: 0,
                });
                // A fixed port goes in the next 16-byte register, as nft puts it.
                let port_unit = if port_in_map {
                    units(addr_len)
                } else {
                    units(addr_len).next_multiple_of(4)
                };
                if let Some(p) = port {
                    self.load(&Expr::Const(Value::Port(*p)), port_unit)?;
                }
                self.out.push(KExpr::Nat {
                    kind,
                    family,
                    addr: Some(NFT_REG_1),
                    proto: with_port.then(|| reg(port_unit)),
                    flags: Some(NF_NAT_RANGE_MAP_IPS | if with_port { NF_NAT_RANGE_PROTO_SPECIFIED } else { 0 }),
                });
            }
        }
        Ok(())
    }
}

fn bitwise(mask: u32, xor: u32) -> KExpr {
    KExpr::Bitwise {
        sreg: NFT_REG_1,
        dreg: NFT_REG_1,
        len: 4,
        mask: mask.to_ne_bytes().to_vec(),
        xor: xor.to_ne_bytes().to_vec(),
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    Value::ip(ip).bytes()
}

fn cmp_op(op: CmpOp) -> u32 {
    match op {
        CmpOp::Eq => NFT_CMP_EQ,
        CmpOp::Ne => NFT_CMP_NEQ,
        CmpOp::Lt => NFT_CMP_LT,
        CmpOp::Le => NFT_CMP_LTE,
        CmpOp::Gt => NFT_CMP_GT,
        CmpOp::Ge => NFT_CMP_GTE,
    }
}

fn cmp_op_back(op: u32) -> Option<CmpOp> {
    Some(match op {
        NFT_CMP_EQ => CmpOp::Eq,
        NFT_CMP_NEQ => CmpOp::Ne,
        NFT_CMP_LT => CmpOp::Lt,
        NFT_CMP_LTE => CmpOp::Le,
        NFT_CMP_GT => CmpOp::Gt,
        NFT_CMP_GTE => CmpOp::Ge,
        _ => return None,
    })
}

/// A verdict as immediate data.
pub fn verdict_imm(v: &Verdict) -> Imm {
    match v {
        Verdict::Accept => Imm::Verdict(NF_ACCEPT, None),
        Verdict::Drop => Imm::Verdict(NF_DROP, None),
        Verdict::Return => Imm::Verdict(NFT_RETURN, None),
        Verdict::Continue => Imm::Verdict(NFT_CONTINUE, None),
        Verdict::Jump(c) => Imm::Verdict(NFT_JUMP, Some(c.to_string())),
        Verdict::Goto(c) => Imm::Verdict(NFT_GOTO, Some(c.to_string())),
    }
}

/// A verdict code (and chain) back to a verdict.
pub fn verdict_back(code: i32, chain: Option<&str>) -> Result<Verdict, NftError> {
    let chain = || -> Result<Name, NftError> {
        Name::new(chain.ok_or_else(|| NftError::Decode("jump without a chain".into()))?)
    };
    Ok(match code {
        NF_ACCEPT => Verdict::Accept,
        NF_DROP => Verdict::Drop,
        NFT_RETURN => Verdict::Return,
        NFT_CONTINUE => Verdict::Continue,
        NFT_JUMP => Verdict::Jump(chain()?),
        NFT_GOTO => Verdict::Goto(chain()?),
        other => return Err(NftError::Decode(format!("verdict code {other}"))),
    })
}

/// A rule's statements as kernel expressions, the way nft 1.0.6 writes them.
pub fn lower(family: Family, rule: &Rule, shapes: &Shapes) -> Result<Vec<KExpr>, NftError> {
    let mut l = Lowerer {
        family,
        shapes,
        out: Vec::new(),
    };
    for s in &rule.stmts {
        l.stmt(s)?;
    }
    Ok(l.out)
}

// === raise ===

/// What a register unit holds while reading a rule back.
#[derive(Debug, Clone, PartialEq)]
enum Held {
    /// A loaded expression (`len` bytes).
    Expr(Expr, u32),
    /// A partial address load (a byte-aligned prefix).
    PartialAddr(Expr, u32),
    /// `expr & mask ^ xor`.
    Masked(Box<Held>, Vec<u8>, Vec<u8>),
    /// A map lookup's result.
    MapResult(Vec<Expr>, Name),
    /// Raw immediate bytes (typed later by their use).
    Bytes(Vec<u8>),
    /// `ct status` (only ever masked and tested).
    CtStatus,
}

struct Raiser<'a> {
    family: Family,
    shapes: &'a Shapes,
    units: HashMap<u32, Held>,
    stmts: Vec<Stmt>,
}

fn bad(what: impl Into<String>) -> NftError {
    NftError::Decode(format!("unrecognised rule: {}", what.into()))
}

impl Raiser<'_> {
    fn put(&mut self, r: u32, h: Held) -> Result<(), NftError> {
        let u = unit(r).ok_or_else(|| bad(format!("register {r}")))?;
        self.units.insert(u, h);
        Ok(())
    }

    fn get(&self, r: u32) -> Result<&Held, NftError> {
        let u = unit(r).ok_or_else(|| bad(format!("register {r}")))?;
        self.units
            .get(&u)
            .ok_or_else(|| bad(format!("register {r} read before written")))
    }

    fn expr_at(&self, u: u32, t: DataType) -> Result<Expr, NftError> {
        match self.units.get(&u) {
            Some(Held::Expr(e, _)) => Ok(e.clone()),
            Some(Held::Bytes(b)) => Value::from_bytes(t, b)
                .map(Expr::Const)
                .ok_or_else(|| bad("constant of the wrong size")),
            other => Err(bad(format!("register unit {u} holds {other:?}"))),
        }
    }

    /// Read a concatenation of `types` starting at register `r`.
    fn concat(&self, r: u32, types: &[DataType]) -> Result<Vec<Expr>, NftError> {
        let mut u = unit(r).ok_or_else(|| bad(format!("register {r}")))?;
        let mut out = Vec::new();
        for t in types {
            let mut e = self.expr_at(u, *t)?;
            // A constant's bytes are typed by the set field.
            if let Expr::Const(v) = e {
                e = Expr::Const(Value::from_bytes(*t, &v.bytes()).ok_or_else(|| bad("constant type"))?);
            }
            out.push(e);
            u += units(t.byte_len());
        }
        Ok(out)
    }

    fn shape(&self, set: &str) -> Result<(Name, SetShape), NftError> {
        let n = Name::new(set)?;
        let s = self
            .shapes
            .get(&n)
            .cloned()
            .ok_or_else(|| bad(format!("lookup in unknown set {set}")))?;
        Ok((n, s))
    }

    fn one(&mut self, k: &KExpr, next: Option<&KExpr>) -> Result<bool, NftError> {
        match k {
            KExpr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                let e = match (*base, *offset, *len) {
                    (NFT_PAYLOAD_NETWORK_HEADER, 12, 4) if self.family != Family::Ip6 => Expr::IpSaddr,
                    (NFT_PAYLOAD_NETWORK_HEADER, 16, 4) if self.family != Family::Ip6 => Expr::IpDaddr,
                    (NFT_PAYLOAD_NETWORK_HEADER, 8, 16) => Expr::Ip6Saddr,
                    (NFT_PAYLOAD_NETWORK_HEADER, 24, 16) => Expr::Ip6Daddr,
                    (NFT_PAYLOAD_TRANSPORT_HEADER, 0, 2) => Expr::ThSport,
                    (NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2) => Expr::ThDport,
                    (NFT_PAYLOAD_NETWORK_HEADER, 12, n) if n < 4 && self.family != Family::Ip6 => {
                        return self.put(*dreg, Held::PartialAddr(Expr::IpSaddr, n)).map(|_| false);
                    }
                    (NFT_PAYLOAD_NETWORK_HEADER, 16, n) if n < 4 && self.family != Family::Ip6 => {
                        return self.put(*dreg, Held::PartialAddr(Expr::IpDaddr, n)).map(|_| false);
                    }
                    (NFT_PAYLOAD_NETWORK_HEADER, 8, n) if n < 16 => {
                        return self.put(*dreg, Held::PartialAddr(Expr::Ip6Saddr, n)).map(|_| false);
                    }
                    (NFT_PAYLOAD_NETWORK_HEADER, 24, n) if n < 16 => {
                        return self.put(*dreg, Held::PartialAddr(Expr::Ip6Daddr, n)).map(|_| false);
                    }
                    other => return Err(bad(format!("payload {other:?}"))),
                };
                self.put(*dreg, Held::Expr(e, *len))?;
            }
            KExpr::Meta { key, dreg } => {
                let e = match *key {
                    NFT_META_L4PROTO => Expr::MetaL4proto,
                    NFT_META_MARK => Expr::MetaMark,
                    other => return Err(bad(format!("meta key {other}"))),
                };
                self.put(*dreg, Held::Expr(e, 4))?;
            }
            KExpr::Ct { key, dreg } => {
                let e = match *key {
                    NFT_CT_STATE => Expr::CtState,
                    NFT_CT_STATUS => {
                        // Only as `ct status S`: held as the state's
                        // shape, told apart by the key.
                        self.put(*dreg, Held::CtStatus)?;
                        return Ok(false);
                    }
                    NFT_CT_MARK => Expr::CtMark,
                    other => return Err(bad(format!("ct key {other}"))),
                };
                self.put(*dreg, Held::Expr(e, 4))?;
            }
            KExpr::Fib { dreg, result, flags } => {
                let e = match (*result, *flags) {
                    (NFT_FIB_RESULT_ADDRTYPE, NFTA_FIB_F_DADDR) => Expr::FibDaddrType,
                    (NFT_FIB_RESULT_ADDRTYPE, NFTA_FIB_F_SADDR) => Expr::FibSaddrType,
                    _ => return Err(bad("fib other than daddr/saddr type")),
                };
                self.put(*dreg, Held::Expr(e, 4))?;
            }
            KExpr::Numgen {
                dreg,
                modulus,
                kind,
                offset,
            } => {
                if (*kind, *offset) != (NFT_NG_RANDOM, 0) {
                    return Err(bad("numgen other than random without offset"));
                }
                self.put(*dreg, Held::Expr(Expr::Numgen { modulus: *modulus }, 4))?;
            }
            KExpr::Hash {
                sreg,
                len,
                dreg,
                modulus,
                seed,
                offset,
                kind,
            } => {
                if offset.unwrap_or(0) != 0 {
                    return Err(bad("hash with an offset"));
                }
                let e = match *kind {
                    NFT_HASH_SYM => Expr::Symhash { modulus: *modulus },
                    NFT_HASH_JENKINS => {
                        let (sreg, len) = sreg.zip(*len).ok_or_else(|| bad("jhash without source"))?;
                        // Field types are not on the wire: read them from
                        // what was loaded into the source registers.
                        let mut u = unit(sreg).ok_or_else(|| bad("jhash register"))?;
                        let end = u + len / 4;
                        let mut keys = Vec::new();
                        while u < end {
                            match self.units.get(&u) {
                                Some(Held::Expr(e, l)) => {
                                    keys.push(e.clone());
                                    u += units(*l as usize);
                                }
                                other => return Err(bad(format!("jhash source {other:?}"))),
                            }
                        }
                        Expr::Jhash {
                            keys,
                            modulus: *modulus,
                            seed: seed.unwrap_or(0),
                        }
                    }
                    other => return Err(bad(format!("hash type {other}"))),
                };
                self.put(*dreg, Held::Expr(e, 4))?;
            }
            KExpr::Immediate { dreg: 0, data } => match data {
                Imm::Verdict(code, chain) => self.stmts.push(Stmt::Verdict(verdict_back(*code, chain.as_deref())?)),
                Imm::Value(_) => return Err(bad("value into the verdict register")),
            },
            KExpr::Immediate { dreg, data } => match data {
                Imm::Value(b) => self.put(*dreg, Held::Bytes(b.clone()))?,
                Imm::Verdict(..) => return Err(bad("verdict into a data register")),
            },
            KExpr::Byteorder { sreg, dreg, .. } => {
                if sreg != dreg {
                    return Err(bad("byteorder between registers"));
                }
            }
            KExpr::Bitwise {
                sreg, dreg, mask, xor, ..
            } => {
                let h = self.get(*sreg)?.clone();
                self.put(*dreg, Held::Masked(Box::new(h), mask.clone(), xor.clone()))?;
            }
            KExpr::Cmp { sreg, op, data } => {
                let held = self.get(*sreg)?.clone();
                // `cmp gte` then `cmp lte` on the same register: a range.
                if *op == NFT_CMP_GTE
                    && let (
                        Some(KExpr::Cmp {
                            sreg: s2,
                            op: NFT_CMP_LTE,
                            data: to,
                        }),
                        Held::Expr(e, _),
                    ) = (next, &held)
                    && s2 == sreg
                {
                    let t = e.dtype();
                    self.stmts.push(Stmt::Range {
                        left: e.clone(),
                        negate: false,
                        from: Value::from_bytes(t, data).ok_or_else(|| bad("range bound"))?,
                        to: Value::from_bytes(t, to).ok_or_else(|| bad("range bound"))?,
                    });
                    return Ok(true);
                }
                let negate = *op == NFT_CMP_NEQ;
                let s = match held {
                    Held::Expr(e, _) => {
                        let t = e.dtype();
                        Stmt::Cmp {
                            op: cmp_op_back(*op).ok_or_else(|| bad("cmp op"))?,
                            right: Value::from_bytes(t, data).ok_or_else(|| bad("cmp data"))?,
                            left: e,
                        }
                    }
                    Held::PartialAddr(e, n) => {
                        let full = if matches!(e, Expr::IpSaddr | Expr::IpDaddr) {
                            4
                        } else {
                            16
                        };
                        let mut addr = data.clone();
                        addr.resize(full, 0);
                        Stmt::Prefix {
                            net: net_of(&addr, n * 8)?,
                            left: e,
                            negate,
                        }
                    }
                    Held::Masked(inner, mask, xor) => match (*inner, xor.iter().all(|b| *b == 0)) {
                        (Held::Expr(Expr::CtState, _), true) if negate && data.iter().all(|b| *b == 0) => {
                            Stmt::CtStateIn(u32_ne(&mask)?)
                        }
                        (Held::CtStatus, true) if negate && data.iter().all(|b| *b == 0) => {
                            Stmt::CtStatusIn(u32_ne(&mask)?)
                        }
                        (Held::Expr(e @ (Expr::MetaMark | Expr::CtMark), _), true) => Stmt::Mask {
                            left: e,
                            mask: u32_ne(&mask)?,
                            negate,
                            value: u32_ne(data)?,
                        },
                        (
                            Held::Expr(e @ (Expr::IpSaddr | Expr::IpDaddr | Expr::Ip6Saddr | Expr::Ip6Daddr), _),
                            true,
                        ) => {
                            let bits = mask.iter().map(|b| b.count_ones()).sum::<u32>();
                            Stmt::Prefix {
                                net: net_of(data, bits)?,
                                left: e,
                                negate,
                            }
                        }
                        other => return Err(bad(format!("cmp of {other:?}"))),
                    },
                    other => return Err(bad(format!("cmp of {other:?}"))),
                };
                self.stmts.push(s);
            }
            KExpr::Range { sreg, op, from, to } => {
                let Held::Expr(e, _) = self.get(*sreg)?.clone() else {
                    return Err(bad("range of a non-expression"));
                };
                let t = e.dtype();
                self.stmts.push(Stmt::Range {
                    left: e,
                    negate: *op == NFT_RANGE_NEQ,
                    from: Value::from_bytes(t, from).ok_or_else(|| bad("range bound"))?,
                    to: Value::from_bytes(t, to).ok_or_else(|| bad("range bound"))?,
                });
            }
            KExpr::Lookup { set, sreg, dreg, flags } => {
                let (name, shape) = self.shape(set)?;
                let key = self.concat(*sreg, &shape.key)?;
                match dreg {
                    None => self.stmts.push(Stmt::Lookup {
                        key,
                        set: name,
                        negate: flags & NFT_LOOKUP_F_INV != 0,
                    }),
                    Some(0) => self.stmts.push(Stmt::Vmap { key, map: name }),
                    Some(d) => self.put(*d, Held::MapResult(key, name))?,
                }
            }
            KExpr::MetaSet {
                key: NFT_META_MARK,
                sreg,
            } => match self.get(*sreg)?.clone() {
                Held::Masked(inner, mask, xor) if *inner == Held::Expr(Expr::MetaMark, 4) => {
                    let (m, x) = (u32_ne(&mask)?, u32_ne(&xor)?);
                    if m == u32::MAX {
                        self.stmts.push(Stmt::MarkXor(x));
                    } else if m == !x {
                        self.stmts.push(Stmt::MarkOr(x));
                    } else {
                        return Err(bad("meta mark set with an unusual mask"));
                    }
                }
                other => return Err(bad(format!("meta mark set from {other:?}"))),
            },
            KExpr::MetaSet { key, .. } => return Err(bad(format!("meta set {key}"))),
            KExpr::CtSet { key: NFT_CT_MARK, sreg } => match self.get(*sreg)? {
                Held::Bytes(b) => {
                    let v = u32_ne(b)?;
                    self.stmts.push(Stmt::CtMarkSet(v));
                }
                other => return Err(bad(format!("ct mark set from {other:?}"))),
            },
            KExpr::CtSet { key, .. } => return Err(bad(format!("ct set {key}"))),
            KExpr::Nat {
                kind,
                family: _,
                addr,
                proto,
                flags: _,
            } => {
                let addr = addr.ok_or_else(|| bad("nat without address"))?;
                let to = match self.get(addr)?.clone() {
                    Held::Bytes(b) => {
                        let ip = match b.len() {
                            4 => IpAddr::from(<[u8; 4]>::try_from(&b[..]).unwrap_or_default()),
                            16 => IpAddr::from(<[u8; 16]>::try_from(&b[..]).unwrap_or_default()),
                            _ => return Err(bad("nat address size")),
                        };
                        let port = match proto {
                            Some(p) => match self.get(*p)? {
                                Held::Bytes(pb) if pb.len() >= 2 => Some(u16::from_be_bytes([pb[0], pb[1]])),
                                other => return Err(bad(format!("nat port from {other:?}"))),
                            },
                            None => None,
                        };
                        NatTo::Addr { addr: ip, port }
                    }
                    Held::MapResult(key, map) => {
                        // The port register is either part of the lookup's
                        // result (never written on its own) or a constant.
                        let port = proto.and_then(unit).and_then(|u| match self.units.get(&u) {
                            Some(Held::Bytes(pb)) if pb.len() >= 2 => Some(u16::from_be_bytes([pb[0], pb[1]])),
                            _ => None,
                        });
                        NatTo::Map { key, map, port }
                    }
                    other => return Err(bad(format!("nat from {other:?}"))),
                };
                self.stmts.push(if *kind == NFT_NAT_DNAT {
                    Stmt::Dnat(to)
                } else {
                    Stmt::Snat(to)
                });
            }
            KExpr::Masq { flags } => self.stmts.push(Stmt::Masquerade {
                fully_random: flags.unwrap_or(0) & NF_NAT_RANGE_PROTO_RANDOM_FULLY != 0,
            }),
            KExpr::Reject { kind, code } => {
                let r = match (*kind, *code) {
                    (NFT_REJECT_TCP_RST, _) => Reject::TcpReset,
                    (NFT_REJECT_ICMP_UNREACH, 3) if self.family != Family::Ip6 => Reject::IcmpPortUnreachable,
                    (NFT_REJECT_ICMP_UNREACH, 4) if self.family != Family::Ip => Reject::Icmpv6PortUnreachable,
                    (NFT_REJECT_ICMPX_UNREACH, NFT_REJECT_ICMPX_PORT_UNREACH) => Reject::IcmpxPortUnreachable,
                    other => return Err(bad(format!("reject {other:?}"))),
                };
                self.stmts.push(Stmt::Reject(r));
            }
            KExpr::Counter { .. } => self.stmts.push(Stmt::Counter),
            KExpr::Dynset {
                set,
                op,
                sreg_key,
                sreg_data,
                timeout_ms,
            } => {
                if *op != NFT_DYNSET_OP_UPDATE {
                    return Err(bad("dynset other than update"));
                }
                let (name, shape) = self.shape(set)?;
                let key = self.concat(*sreg_key, &shape.key)?;
                let data = match sreg_data {
                    Some(r) => Some(self.concat(*r, &shape.data)?),
                    None => None,
                };
                self.stmts.push(Stmt::Update {
                    set: name,
                    key,
                    data,
                    timeout: (*timeout_ms > 0).then(|| Duration::from_millis(*timeout_ms)),
                });
            }
        }
        Ok(false)
    }
}

fn u32_ne(b: &[u8]) -> Result<u32, NftError> {
    <[u8; 4]>::try_from(b)
        .map(u32::from_ne_bytes)
        .map_err(|_| bad("expected 4 bytes"))
}

fn net_of(addr: &[u8], bits: u32) -> Result<IpNet, NftError> {
    let ip = match addr.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(addr).unwrap_or_default()),
        16 => IpAddr::from(<[u8; 16]>::try_from(addr).unwrap_or_default()),
        _ => return Err(bad("prefix size")),
    };
    IpNet::new(ip, bits as u8).map_err(|_| bad("prefix length"))
}

/// Kernel expressions back to statements (the inverse of [`lower`]).
pub fn raise(family: Family, exprs: &[KExpr], shapes: &Shapes) -> Result<Vec<Stmt>, NftError> {
    let mut r = Raiser {
        family,
        shapes,
        units: HashMap::new(),
        stmts: Vec::new(),
    };
    let mut i = 0;
    while i < exprs.len() {
        let skip = r.one(&exprs[i], exprs.get(i + 1))?;
        i += if skip { 2 } else { 1 };
    }
    Ok(r.stmts)
}
