//! nf_tables over a `NETLINK_NETFILTER` socket (`netlink-sys`): batched
//! transactions with per-message acknowledgements, the ruleset generation,
//! and dumps of our own table.
//!
//! Kernel behaviour this module relies on (checked by the tests that run
//! against the real kernel):
//! - A transaction is one `sendmsg` holding `NFNL_MSG_BATCH_BEGIN`, the
//!   messages, `NFNL_MSG_BATCH_END`; the kernel applies all or nothing.
//!   The skb is bounded by the socket's send buffer, so the socket raises
//!   it with `SO_SNDBUFFORCE` (we are root) and [`super::tx`] splits large
//!   loads into several transactions anyway (a transaction that runs for
//!   ~20 s soft-locks this non-preemptible kernel).
//! - Every message carries `NLM_F_ACK`: the kernel answers each one with an
//!   `NLMSG_ERROR` (0 or -errno), in order, after the commit; a failed
//!   commit (e.g. a jump loop found by validation) is reported once more
//!   against the `BATCH_BEGIN` sequence number. Errors name the message by
//!   sequence number, which we map back to the object we sent. All replies
//!   are queued while the batch is processed, before we read any, so the
//!   receive buffer is raised too (`SO_RCVBUFFORCE`).
//! - After a batch we send `NFT_MSG_GETGEN` as a barrier: netlink answers a
//!   socket's requests in order, so when the generation arrives every
//!   acknowledgement of the batch has been read, and we learn the
//!   generation our commit produced (the cheap drift check).

use netlink_packet_core::{NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::NftError;
use super::encode;
use super::model::{Family, Name, Table};
use super::tx::Batch;
use super::wire::{self, AttrTable, AttrWriter};

/// Receive buffer of a dump: larger than the kernel's largest dump skb.
const DUMP_BUFFER: usize = 64 * 1024;

/// Socket buffers big enough for the acknowledgements of a large batch.
const SOCKET_BUFFER: usize = 32 << 20;

/// A connection to nf_tables in the network namespace of the thread that
/// opened it (a netlink socket stays in the namespace it was created in).
pub struct Nft {
    socket: Socket,
    seq: u32,
}

/// What the kernel said about a committed batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// The ruleset generation after the commit.
    pub generation: u32,
    /// Messages acknowledged.
    pub acked: usize,
    /// Bytes sent.
    pub bytes: usize,
    /// Handles of rules the batch asked to echo, in the order they were added.
    pub rule_handles: Vec<u64>,
}

impl Nft {
    /// Open a socket in the calling thread's network namespace.
    pub fn open() -> Result<Nft, NftError> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Extended ACKs carry the kernel's text ("Could not process rule:
        // No such file or directory" says less than "chain not found").
        socket.set_ext_ack(true)?;
        // Do not copy every refused request back into its error.
        socket.set_cap_ack(true)?;
        raise_buffers(&socket);
        Ok(Nft {
            socket,
            seq: initial_seq(),
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Send one transaction and wait until the kernel has acknowledged every
    /// message. On any refusal the kernel has rolled the whole batch back;
    /// the error names the first refused object.
    pub fn commit(&mut self, batch: &Batch) -> Result<Committed, NftError> {
        let first = self.seq.wrapping_add(1);
        let encoded = batch.encode(first);
        self.seq = encoded.last_seq;
        self.socket.send(&encoded.bytes, 0)?;
        let barrier = self.next_seq();
        self.socket.send(&gen_request(barrier), 0)?;

        let mut acked = 0usize;
        let mut refused: Option<NftError> = None;
        let mut generation = None;
        let mut echoed: Vec<(u32, u64)> = Vec::new();
        while generation.is_none() {
            let (buf, _) = self.socket.recv_from_full()?;
            for m in wire::split(&buf)? {
                if m.msg_type == wire::NLMSG_ERROR {
                    let (errno, text, offset) = parse_error(&m)?;
                    if m.seq == barrier {
                        return Err(NftError::Refused {
                            object: "the generation request".into(),
                            message: text.unwrap_or_else(|| errno_text(-errno)),
                            errno: -errno,
                        });
                    }
                    acked += 1;
                    if errno != 0 && refused.is_none() {
                        refused = Some(NftError::Refused {
                            object: encoded.describe_at(m.seq, offset),
                            message: text.unwrap_or_else(|| errno_text(-errno)),
                            errno: -errno,
                        });
                    }
                } else if m.seq == barrier && m.msg_type == wire::nft_type(wire::NFT_MSG_NEWGEN) {
                    generation = Some(parse_gen(m.payload)?);
                } else if m.msg_type == wire::nft_type(wire::NFT_MSG_NEWRULE) {
                    // An echoed rule (NLM_F_ECHO): remember its handle.
                    let t = AttrTable::parse(body(m.payload)?, "echoed rule")?;
                    if let Some(h) = t.u64(wire::NFTA_RULE_HANDLE)? {
                        echoed.push((m.seq, h));
                    }
                }
            }
        }
        if let Some(e) = refused {
            return Err(e);
        }
        if acked < encoded.acks_expected {
            return Err(NftError::Decode(format!(
                "the kernel acknowledged {acked} of {} messages",
                encoded.acks_expected
            )));
        }
        echoed.sort_by_key(|(seq, _)| *seq);
        Ok(Committed {
            generation: generation.unwrap_or_default(),
            acked,
            bytes: encoded.bytes.len(),
            rule_handles: echoed.into_iter().map(|(_, h)| h).collect(),
        })
    }

    /// The ruleset generation (`NFT_MSG_GETGEN`): it moves on every commit
    /// by anyone, so an unchanged generation means nothing changed anywhere.
    pub fn generation(&mut self) -> Result<u32, NftError> {
        let seq = self.next_seq();
        self.socket.send(&gen_request(seq), 0)?;
        loop {
            let (buf, _) = self.socket.recv_from_full()?;
            for m in wire::split(&buf)? {
                if m.seq != seq {
                    continue;
                }
                if m.msg_type == wire::NLMSG_ERROR {
                    let (errno, text, _) = parse_error(&m)?;
                    return Err(NftError::Refused {
                        object: "the generation request".into(),
                        message: text.unwrap_or_else(|| errno_text(-errno)),
                        errno: -errno,
                    });
                }
                return parse_gen(m.payload);
            }
        }
    }

    /// A dump request (`NLM_F_DUMP`): every reply message's body (after the
    /// nfgenmsg header), until `NLMSG_DONE`. `ENOENT` (no such table) is an
    /// empty answer.
    pub fn dump(&mut self, msg: u16, family: u8, attrs: &[u8]) -> Result<Vec<Vec<u8>>, NftError> {
        let seq = self.next_seq();
        let req = wire::message(wire::nft_type(msg), NLM_F_REQUEST | NLM_F_DUMP, seq, family, 0, attrs);
        self.socket.send(&req, 0)?;
        let mut out = Vec::new();
        // Receive into a large buffer, never an exact-size one: the kernel
        // sizes each dump skb by the largest buffer we ever passed to
        // recvmsg (`max_recvmsg_len`, capped at 32 KiB), else a page. Each
        // continuation of a set-element dump walks the set again from the
        // start, skipping what was sent, so small skbs make a dump of a big
        // map quadratic.
        let mut buf: Vec<u8> = Vec::with_capacity(DUMP_BUFFER);
        loop {
            buf.clear();
            let n = self.socket.recv(&mut buf, 0)?;
            if n > buf.len() {
                return Err(NftError::Decode(format!(
                    "a dump message of {n} bytes exceeds the {DUMP_BUFFER}-byte buffer"
                )));
            }
            for m in wire::split(&buf)? {
                if m.seq != seq {
                    continue;
                }
                match m.msg_type {
                    wire::NLMSG_DONE => return Ok(out),
                    wire::NLMSG_ERROR => {
                        let (errno, text, _) = parse_error(&m)?;
                        if errno == -libc_enoent() {
                            return Ok(out);
                        }
                        return Err(NftError::Refused {
                            object: format!("a dump ({})", msg_name(msg)),
                            message: text.unwrap_or_else(|| errno_text(-errno)),
                            errno: -errno,
                        });
                    }
                    _ => out.push(body(m.payload)?.to_vec()),
                }
            }
        }
    }
}

impl Nft {
    /// Whether a table exists (a table dump: a handful of messages).
    pub fn table_exists(&mut self, family: Family, name: &Name) -> Result<bool, NftError> {
        for b in self.dump(wire::NFT_MSG_GETTABLE, family.nfproto(), &[])? {
            if AttrTable::parse(&b, "table")?.req_str(wire::NFTA_TABLE_NAME)? == name.as_str() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Read our table back from the kernel: chains, rules (with handles),
    /// sets and elements, decoded into the model (`None` if the table does
    /// not exist). Anything in it that we would not have written is an
    /// error naming it: the table is ours alone.
    pub fn dump_table(&mut self, family: Family, name: &Name) -> Result<Option<Table>, NftError> {
        let fam = family.nfproto();
        let tables = self.dump(wire::NFT_MSG_GETTABLE, fam, &[])?;
        let mut found = None;
        for b in &tables {
            let t = AttrTable::parse(b, "table")?;
            if t.req_str(wire::NFTA_TABLE_NAME)? == name.as_str() {
                found = Some(
                    t.get(wire::NFTA_TABLE_USERDATA)
                        .and_then(encode::comment_from_udata_pub),
                );
            }
        }
        let Some(comment) = found else { return Ok(None) };
        let mut table = Table::new(family, name.clone());
        table.comment = comment;
        for b in self.dump(
            wire::NFT_MSG_GETSET,
            fam,
            &table_filter(wire::NFTA_SET_TABLE, name.as_str()),
        )? {
            let (set, _) = encode::set_from_attrs(&b)?;
            table.sets.push(set);
        }
        for i in 0..table.sets.len() {
            let mut w = AttrWriter::new();
            w.str(wire::NFTA_SET_ELEM_LIST_TABLE, name.as_str())
                .str(wire::NFTA_SET_ELEM_LIST_SET, table.sets[i].name.as_str());
            let bodies = self.dump(wire::NFT_MSG_GETSETELEM, fam, w.as_bytes())?;
            let set = &table.sets[i];
            let mut elements = Vec::new();
            for b in bodies {
                let t = AttrTable::parse(&b, "elements")?;
                if let Some(list) = t.get(wire::NFTA_SET_ELEM_LIST_ELEMENTS) {
                    for el in wire::attrs(list) {
                        let (_, el) = el?;
                        elements.push(encode::element_from_attrs(set, el)?);
                    }
                }
            }
            let mut elements = if set.flags.interval && set.kind.key_types().len() == 1 {
                encode::join_intervals(set, elements)
            } else {
                elements.into_iter().map(|(e, _)| e).collect()
            };
            elements.sort();
            table.sets[i].elements = elements;
        }
        for b in self.dump(
            wire::NFT_MSG_GETCHAIN,
            fam,
            &table_filter(wire::NFTA_CHAIN_TABLE, name.as_str()),
        )? {
            // The kernel ignores the table filter of a chain dump (no
            // `.start` for GETCHAIN dumps, unlike sets and rules): every
            // table's chains come back, and another table's chain names
            // need not be names we would write. Skip them unread.
            if AttrTable::parse(&b, "chain")?.req_str(wire::NFTA_CHAIN_TABLE)? != name.as_str() {
                continue;
            }
            let (chain, _) = encode::chain_from_attrs(&b)?;
            table.chains.push(chain);
        }
        let shapes = encode::shapes_of(table.sets.iter());
        // Chains by name: a linear search per rule is quadratic at 10,000 services.
        let index: std::collections::HashMap<Name, usize> = table
            .chains
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        for b in self.dump(
            wire::NFT_MSG_GETRULE,
            fam,
            &table_filter(wire::NFTA_RULE_TABLE, name.as_str()),
        )? {
            let (chain, rule) = encode::rule_from_attrs(family, &b, &shapes)?;
            let i = *index
                .get(&chain)
                .ok_or_else(|| NftError::Decode(format!("rule in unknown chain {chain}")))?;
            table.chains[i].rules.push(rule);
        }
        Ok(Some(table))
    }
}

impl Nft {
    /// The handles of one chain's rules, in order (a dump filtered to the
    /// chain: cheap, unlike [`Nft::dump_table`]).
    pub fn rule_handles(&mut self, family: Family, table: &Name, chain: &Name) -> Result<Vec<u64>, NftError> {
        let mut w = AttrWriter::new();
        w.str(wire::NFTA_RULE_TABLE, table.as_str())
            .str(wire::NFTA_RULE_CHAIN, chain.as_str());
        self.dump(wire::NFT_MSG_GETRULE, family.nfproto(), w.as_bytes())?
            .iter()
            .map(|b| {
                AttrTable::parse(b, "rule")?
                    .u64(wire::NFTA_RULE_HANDLE)?
                    .ok_or_else(|| NftError::Decode("rule without handle".into()))
            })
            .collect()
    }
}

fn libc_enoent() -> i32 {
    2
}

/// The attributes after the 4-byte nfgenmsg header.
pub fn body(payload: &[u8]) -> Result<&[u8], NftError> {
    payload
        .get(4..)
        .ok_or_else(|| NftError::Decode("message shorter than its nfgenmsg header".into()))
}

fn initial_seq() -> u32 {
    // Any start works; a time-derived one makes replies to an earlier
    // process using the same port id impossible to confuse with ours.
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(1)
}

fn raise_buffers(socket: &Socket) {
    use nix::sys::socket::{setsockopt, sockopt};
    // Best effort: without CAP_NET_ADMIN the FORCE variants fail and the
    // plain ones are capped by net.core.[rw]mem_max; a batch that then does
    // not fit fails with a clear EMSGSIZE / ENOBUFS.
    if setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(socket, sockopt::SndBuf, &SOCKET_BUFFER);
    }
    if setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
}

/// The `NFT_MSG_GETGEN` request.
pub fn gen_request(seq: u32) -> Vec<u8> {
    wire::message(
        wire::nft_type(wire::NFT_MSG_GETGEN),
        NLM_F_REQUEST,
        seq,
        wire::nfproto::UNSPEC,
        0,
        &[],
    )
}

fn parse_gen(payload: &[u8]) -> Result<u32, NftError> {
    AttrTable::parse(body(payload)?, "generation")?.req_u32(wire::NFTA_GEN_ID)
}

/// `(error code, extended-ack text, offending attribute offset)` of an
/// `NLMSG_ERROR` message. The code is 0 for an acknowledgement, -errno
/// otherwise.
pub fn parse_error(m: &wire::Received<'_>) -> Result<(i32, Option<String>, Option<u32>), NftError> {
    let p = m.payload;
    if p.len() < 20 {
        return Err(NftError::Decode("short NLMSG_ERROR".into()));
    }
    let errno = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
    // struct nlmsgerr: the code, then the request's header, then (unless
    // NLM_F_CAPPED) the request's payload; extended-ACK attributes follow
    // when NLM_F_ACK_TLVS is set.
    let orig_len = u32::from_ne_bytes([p[4], p[5], p[6], p[7]]) as usize;
    let echoed = if m.flags & NLM_F_CAPPED != 0 {
        16
    } else {
        orig_len.max(16)
    };
    let tlv_start = (4 + echoed).next_multiple_of(4);
    let (mut text, mut offset) = (None, None);
    if m.flags & NLM_F_ACK_TLVS != 0 && tlv_start < p.len() {
        for a in wire::attrs(&p[tlv_start..]) {
            let Ok((kind, v)) = a else { break };
            match kind {
                wire::NLMSGERR_ATTR_MSG => text = wire::c_str(v, "extended ack").ok(),
                // A host-order u32 (nla_put_u32), unlike nf_tables' own.
                wire::NLMSGERR_ATTR_OFFS => offset = <[u8; 4]>::try_from(v).ok().map(u32::from_ne_bytes),
                _ => {}
            }
        }
    }
    Ok((errno, text.filter(|t| !t.is_empty()), offset))
}

/// A short description of an errno, as the kernel's refusals mean it.
pub fn errno_text(errno: i32) -> String {
    let what = match errno {
        1 => "operation not permitted",
        2 => "no such file or directory (unknown table, chain, set or element)",
        7 => "argument list too long (set is full)",
        16 => "device or resource busy (object still in use)",
        17 => "file exists",
        22 => "invalid argument",
        31 => "too many links (the jump would close a loop or nest too deep)",
        34 => "numerical result out of range",
        40 => "too many levels of symbolic links (a jump loop)",
        90 => "message too long",
        95 => "operation not supported (statement not allowed in this chain or hook)",
        105 => "no buffer space available",
        _ => "",
    };
    if what.is_empty() {
        format!("errno {errno}")
    } else {
        what.to_string()
    }
}

/// The name of an nf_tables message type, for errors.
pub fn msg_name(msg: u16) -> &'static str {
    match msg {
        wire::NFT_MSG_NEWTABLE => "NEWTABLE",
        wire::NFT_MSG_GETTABLE => "GETTABLE",
        wire::NFT_MSG_DELTABLE => "DELTABLE",
        wire::NFT_MSG_NEWCHAIN => "NEWCHAIN",
        wire::NFT_MSG_GETCHAIN => "GETCHAIN",
        wire::NFT_MSG_DELCHAIN => "DELCHAIN",
        wire::NFT_MSG_NEWRULE => "NEWRULE",
        wire::NFT_MSG_GETRULE => "GETRULE",
        wire::NFT_MSG_DELRULE => "DELRULE",
        wire::NFT_MSG_NEWSET => "NEWSET",
        wire::NFT_MSG_GETSET => "GETSET",
        wire::NFT_MSG_DELSET => "DELSET",
        wire::NFT_MSG_NEWSETELEM => "NEWSETELEM",
        wire::NFT_MSG_GETSETELEM => "GETSETELEM",
        wire::NFT_MSG_DELSETELEM => "DELSETELEM",
        wire::NFT_MSG_GETGEN => "GETGEN",
        _ => "?",
    }
}

/// Attributes naming a table (for dump requests filtered to our table).
pub fn table_filter(kind: u16, table: &str) -> Vec<u8> {
    let mut w = AttrWriter::new();
    w.str(kind, table);
    w.into_bytes()
}
