//! Transactions: what one commit changes, in order, and its encoding as one
//! nf_tables netlink batch. The same [`Transaction`] goes to the kernel
//! ([`super::netlink::Nft::commit`]) or to the strict fake
//! ([`super::fake::FakeNft`]); both apply all of it or nothing.
//!
//! Semantics we chose (the fake enforces the same):
//! - `Add*` of a table, chain or set is create-or-keep (`NLM_F_CREATE`
//!   without `NLM_F_EXCL`): adding an identical object again is a no-op;
//!   a *different* definition under the same name is refused (the kernel
//!   says `EEXIST` for a set whose type differs, and a chain cannot change
//!   its hook).
//! - Adding an element whose key exists with the same data is a no-op;
//!   with different data it is refused (`EBUSY`): change an element by
//!   deleting and adding it in one transaction.
//! - Deleting what does not exist is refused (`ENOENT`), as is deleting a
//!   chain or set that a rule or a verdict-map element still references
//!   (`EBUSY`). Deleting a chain deletes its rules.

use std::collections::HashMap;

use netlink_packet_core::{NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_ECHO, NLM_F_REPLACE, NLM_F_REQUEST};

use super::NftError;
use super::encode;
use super::lower::Shapes;
use super::model::*;
use super::script;
use super::wire::{self, AttrWriter};

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create the table if missing.
    AddTable {
        /// Its comment.
        comment: Option<Comment>,
    },
    /// Delete the table and everything in it.
    DeleteTable,
    /// Create a chain if missing (its `rules` are ignored: add them with
    /// [`Op::AddRule`]).
    AddChain(Chain),
    /// Delete a chain (and its rules).
    DeleteChain(Name),
    /// Delete every rule of a chain.
    FlushChain(Name),
    /// Append a rule; `echo` asks the kernel for its handle.
    AddRule {
        /// Chain.
        chain: Name,
        /// Rule.
        rule: Rule,
        /// Learn the handle ([`super::netlink::Committed::rule_handles`]).
        echo: bool,
    },
    /// Replace the rule with this handle, in place.
    ReplaceRule {
        /// Chain.
        chain: Name,
        /// The rule's handle.
        handle: u64,
        /// New content.
        rule: Rule,
    },
    /// Delete the rule with this handle.
    DeleteRule {
        /// Chain.
        chain: Name,
        /// The rule's handle.
        handle: u64,
    },
    /// Create a set or map if missing (its `elements` are ignored: add them
    /// with [`Op::AddElements`]).
    AddSet(Set),
    /// Delete a set or map.
    DeleteSet(Name),
    /// Delete every element of a set.
    FlushSet(Name),
    /// Add elements.
    AddElements {
        /// Set or map.
        set: Name,
        /// Elements.
        elements: Vec<Element>,
    },
    /// Delete elements (by key).
    DeleteElements {
        /// Set or map.
        set: Name,
        /// Elements (only keys matter).
        elements: Vec<Element>,
    },
}

/// Changes to one table, applied atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The table's family.
    pub family: Family,
    /// The table.
    pub table: Name,
    /// Changes, in order.
    pub ops: Vec<Op>,
}

impl Transaction {
    /// An empty transaction on a table.
    pub fn new(family: Family, table: Name) -> Transaction {
        Transaction {
            family,
            table,
            ops: Vec::new(),
        }
    }

    /// Append a change.
    pub fn push(&mut self, op: Op) -> &mut Self {
        self.ops.push(op);
        self
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Everything needed to create `table` from nothing, in dependency
    /// order (table, sets, chains, elements, rules), as one list of ops.
    pub fn create(table: &Table) -> Transaction {
        let mut tx = Transaction::new(table.family, table.name.clone());
        tx.push(Op::AddTable {
            comment: table.comment.clone(),
        });
        for s in &table.sets {
            tx.push(Op::AddSet(Set {
                elements: Vec::new(),
                ..s.clone()
            }));
        }
        for c in &table.chains {
            tx.push(Op::AddChain(Chain {
                rules: Vec::new(),
                ..c.clone()
            }));
        }
        for s in &table.sets {
            if !s.elements.is_empty() {
                tx.push(Op::AddElements {
                    set: s.name.clone(),
                    elements: s.elements.clone(),
                });
            }
        }
        for c in &table.chains {
            for r in &c.rules {
                tx.push(Op::AddRule {
                    chain: c.name.clone(),
                    rule: r.clone(),
                    echo: false,
                });
            }
        }
        tx
    }

    /// Split into transactions of at most `max_items` rules/elements/objects
    /// each, keeping order (so every reference points at something an
    /// earlier or the same transaction created). Large element lists are
    /// split too. Use for cold loads: a single huge transaction can run long
    /// enough to soft-lock the kernel.
    pub fn chunks(self, max_items: usize) -> Vec<Transaction> {
        let max_items = max_items.max(1);
        let mut out = Vec::new();
        let mut cur = Transaction::new(self.family, self.table.clone());
        let mut n = 0;
        let flush = |cur: &mut Transaction, out: &mut Vec<Transaction>, n: &mut usize| {
            if !cur.ops.is_empty() {
                let fresh = Transaction::new(cur.family, cur.table.clone());
                out.push(std::mem::replace(cur, fresh));
            }
            *n = 0;
        };
        for op in self.ops {
            match op {
                Op::AddElements { set, mut elements } => {
                    while !elements.is_empty() {
                        if n >= max_items {
                            flush(&mut cur, &mut out, &mut n);
                        }
                        let take = (max_items - n).min(elements.len());
                        let rest = elements.split_off(take);
                        n += take;
                        cur.push(Op::AddElements {
                            set: set.clone(),
                            elements,
                        });
                        elements = rest;
                    }
                }
                op => {
                    if n >= max_items {
                        flush(&mut cur, &mut out, &mut n);
                    }
                    n += 1;
                    cur.push(op);
                }
            }
        }
        flush(&mut cur, &mut out, &mut n);
        out
    }
}

/// One message of a batch, before framing.
#[derive(Debug, Clone)]
struct Msg {
    kind: u16,
    flags: u16,
    attrs: Vec<u8>,
    /// What it does, for errors.
    what: String,
    /// For element lists: offset (from the message start) of each element's
    /// attribute and its description, to name the one the kernel refused.
    items: Vec<(usize, String)>,
}

/// A transaction encoded as nf_tables messages.
#[derive(Debug, Clone)]
pub struct Batch {
    family: u8,
    msgs: Vec<Msg>,
}

/// A batch framed for sending.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// BATCH_BEGIN, messages, BATCH_END.
    pub bytes: Vec<u8>,
    /// The sequence number of BATCH_END.
    pub last_seq: u32,
    /// How many messages carry `NLM_F_ACK`.
    pub acks_expected: usize,
    first_seq: u32,
    msgs: Vec<(String, Vec<(usize, String)>)>,
}

impl Encoded {
    /// The object a sequence number (and extended-ACK offset) refers to.
    pub fn describe_at(&self, seq: u32, offset: Option<u32>) -> String {
        if seq == self.first_seq {
            return "the transaction as a whole (refused at commit)".into();
        }
        let i = seq.wrapping_sub(self.first_seq).wrapping_sub(1) as usize;
        match self.msgs.get(i) {
            Some((what, items)) => {
                if let Some(off) = offset
                    && let Some((_, item)) = items.iter().rev().find(|(start, _)| *start <= off as usize)
                {
                    return format!("{item} (in {what})");
                }
                what.clone()
            }
            None => format!("message {seq} (not ours)"),
        }
    }

    /// The object a sequence number refers to.
    pub fn describe(&self, seq: u32) -> String {
        self.describe_at(seq, None)
    }
}

/// Elements per `NEWSETELEM` message: an attribute's length is a u16, so
/// one message's element list must stay under 64 KiB.
const ELEMENT_BYTES_PER_MESSAGE: usize = 60_000;

impl Batch {
    /// Encode a transaction. `known` is the table as it is before the
    /// transaction (for the types of sets the transaction uses but does not
    /// create).
    pub fn build(tx: &Transaction, known: &Table) -> Result<Batch, NftError> {
        let mut sets: HashMap<Name, Set> = known
            .sets
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    Set {
                        elements: Vec::new(),
                        ..s.clone()
                    },
                )
            })
            .collect();
        let mut shapes: Shapes = encode::shapes_of(known.sets.iter());
        let t = &tx.table;
        let mut msgs = Vec::new();
        let base = NLM_F_REQUEST | NLM_F_ACK;
        let mut set_id = 1u32;
        for (i, op) in tx.ops.iter().enumerate() {
            let n = i + 1;
            match op {
                Op::AddTable { comment } => msgs.push(Msg {
                    kind: wire::NFT_MSG_NEWTABLE,
                    flags: base | NLM_F_CREATE,
                    attrs: encode::table_attrs(t, comment.as_ref(), true),
                    what: format!("op {n}: add table {} {t}", tx.family.keyword()),
                    items: Vec::new(),
                }),
                Op::DeleteTable => msgs.push(Msg {
                    kind: wire::NFT_MSG_DELTABLE,
                    flags: base,
                    attrs: encode::table_attrs(t, None, false),
                    what: format!("op {n}: delete table {} {t}", tx.family.keyword()),
                    items: Vec::new(),
                }),
                Op::AddChain(c) => msgs.push(Msg {
                    kind: wire::NFT_MSG_NEWCHAIN,
                    flags: base | NLM_F_CREATE,
                    attrs: encode::chain_attrs(t, c),
                    what: format!("op {n}: add chain {}", c.name),
                    items: Vec::new(),
                }),
                Op::DeleteChain(c) => msgs.push(Msg {
                    kind: wire::NFT_MSG_DELCHAIN,
                    flags: base,
                    attrs: encode::object_ref(wire::NFTA_CHAIN_TABLE, t, wire::NFTA_CHAIN_NAME, c),
                    what: format!("op {n}: delete chain {c}"),
                    items: Vec::new(),
                }),
                Op::FlushChain(c) => msgs.push(Msg {
                    kind: wire::NFT_MSG_DELRULE,
                    flags: base,
                    attrs: encode::object_ref(wire::NFTA_RULE_TABLE, t, wire::NFTA_RULE_CHAIN, c),
                    what: format!("op {n}: flush chain {c}"),
                    items: Vec::new(),
                }),
                Op::AddRule { chain, rule, echo } => msgs.push(Msg {
                    kind: wire::NFT_MSG_NEWRULE,
                    flags: base | NLM_F_CREATE | NLM_F_APPEND | if *echo { NLM_F_ECHO } else { 0 },
                    attrs: encode::rule_attrs(tx.family, t, chain, rule, &shapes, None, None)
                        .map_err(|e| NftError::Invalid(format!("op {n}, rule for chain {chain}: {e}")))?,
                    what: format!("op {n}: add rule to chain {chain}: {}", script::rule_text(rule)),
                    items: Vec::new(),
                }),
                Op::ReplaceRule { chain, handle, rule } => msgs.push(Msg {
                    kind: wire::NFT_MSG_NEWRULE,
                    flags: base | NLM_F_REPLACE,
                    attrs: encode::rule_attrs(tx.family, t, chain, rule, &shapes, Some(*handle), None)
                        .map_err(|e| NftError::Invalid(format!("op {n}, rule for chain {chain}: {e}")))?,
                    what: format!(
                        "op {n}: replace rule {handle} of chain {chain}: {}",
                        script::rule_text(rule)
                    ),
                    items: Vec::new(),
                }),
                Op::DeleteRule { chain, handle } => msgs.push(Msg {
                    kind: wire::NFT_MSG_DELRULE,
                    flags: base,
                    attrs: encode::rule_ref(t, chain, *handle),
                    what: format!("op {n}: delete rule {handle} of chain {chain}"),
                    items: Vec::new(),
                }),
                Op::AddSet(s) => {
                    let attrs = encode::set_attrs(t, s, set_id)?;
                    set_id += 1;
                    shapes.insert(s.name.clone(), super::lower::SetShape::of(&s.kind, s.flags.interval));
                    sets.insert(
                        s.name.clone(),
                        Set {
                            elements: Vec::new(),
                            ..s.clone()
                        },
                    );
                    msgs.push(Msg {
                        kind: wire::NFT_MSG_NEWSET,
                        flags: base | NLM_F_CREATE,
                        attrs,
                        what: format!("op {n}: add {} {}", if s.kind.is_map() { "map" } else { "set" }, s.name),
                        items: Vec::new(),
                    });
                }
                Op::DeleteSet(s) => msgs.push(Msg {
                    kind: wire::NFT_MSG_DELSET,
                    flags: base,
                    attrs: encode::object_ref(wire::NFTA_SET_TABLE, t, wire::NFTA_SET_NAME, s),
                    what: format!("op {n}: delete set {s}"),
                    items: Vec::new(),
                }),
                Op::FlushSet(s) => msgs.push(Msg {
                    kind: wire::NFT_MSG_DELSETELEM,
                    flags: base,
                    attrs: encode::object_ref(wire::NFTA_SET_ELEM_LIST_TABLE, t, wire::NFTA_SET_ELEM_LIST_SET, s),
                    what: format!("op {n}: flush set {s}"),
                    items: Vec::new(),
                }),
                Op::AddElements { set, elements } | Op::DeleteElements { set, elements } => {
                    let add = matches!(op, Op::AddElements { .. });
                    let def = sets
                        .get(set)
                        .ok_or_else(|| NftError::Invalid(format!("op {n}: elements of unknown set {set}")))?;
                    for e in elements {
                        if add {
                            encode::check_element(def, e)
                        } else {
                            // Deleting needs only the key.
                            encode::check_element(def, &e.key_only()).or_else(|err| {
                                let want = def.kind.key_types();
                                let have: Vec<DataType> = e.key.iter().map(KeyPart::dtype).collect();
                                if want == have { Ok(()) } else { Err(err) }
                            })
                        }
                        .map_err(|err| NftError::Invalid(format!("op {n}: {err}")))?;
                    }
                    let verb = if add { "add" } else { "delete" };
                    let kind = if add {
                        wire::NFT_MSG_NEWSETELEM
                    } else {
                        wire::NFT_MSG_DELSETELEM
                    };
                    let flags = if add { base | NLM_F_CREATE } else { base };
                    let encoded = encode::elements_attrs(def, elements, add);
                    let mut start = 0;
                    while start < encoded.len() {
                        // Header (16) + nfgenmsg (4) + table and set names,
                        // then the element list nest (4).
                        let mut w = AttrWriter::new();
                        w.str(wire::NFTA_SET_ELEM_LIST_TABLE, t.as_str())
                            .str(wire::NFTA_SET_ELEM_LIST_SET, set.as_str());
                        let list_at = 16 + 4 + w.len() + 4;
                        let mut list = AttrWriter::new();
                        let mut items = Vec::new();
                        let mut end = start;
                        while end < encoded.len() && list.len() < ELEMENT_BYTES_PER_MESSAGE {
                            let (i, attrs) = &encoded[end];
                            items.push((
                                list_at + list.len(),
                                format!("element {}", script::element_text(&elements[*i])),
                            ));
                            list.nest(wire::NFTA_LIST_ELEM, |el| {
                                el.put_raw(attrs);
                            });
                            end += 1;
                        }
                        w.nest(wire::NFTA_SET_ELEM_LIST_ELEMENTS, |l| {
                            l.put_raw(list.as_bytes());
                        });
                        let first = &elements[encoded[start].0];
                        let what = format!(
                            "op {n}: {verb} element(s) of {set}, first {}",
                            script::element_text(first)
                        );
                        msgs.push(Msg {
                            kind,
                            flags,
                            attrs: w.into_bytes(),
                            what,
                            items,
                        });
                        start = end;
                    }
                }
            }
        }
        Ok(Batch {
            family: tx.family.nfproto(),
            msgs,
        })
    }

    /// Number of messages (without the batch delimiters).
    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Frame the batch with sequence numbers from `first_seq`.
    pub fn encode(&self, first_seq: u32) -> Encoded {
        let mut bytes = Vec::new();
        let res_id = wire::NFNL_SUBSYS_NFTABLES;
        bytes.extend(wire::message(
            wire::NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            first_seq,
            wire::nfproto::UNSPEC,
            res_id,
            &[],
        ));
        let mut seq = first_seq;
        for m in &self.msgs {
            seq = seq.wrapping_add(1);
            bytes.extend(wire::message(
                wire::nft_type(m.kind),
                m.flags,
                seq,
                self.family,
                0,
                &m.attrs,
            ));
        }
        seq = seq.wrapping_add(1);
        bytes.extend(wire::message(
            wire::NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            seq,
            wire::nfproto::UNSPEC,
            res_id,
            &[],
        ));
        Encoded {
            bytes,
            last_seq: seq,
            acks_expected: self.msgs.len(),
            first_seq,
            msgs: self.msgs.iter().map(|m| (m.what.clone(), m.items.clone())).collect(),
        }
    }
}
