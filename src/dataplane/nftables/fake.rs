//! A strict in-memory nf_tables: applies a [`Transaction`] to a copy of its
//! tables and keeps the copy only if every change is one the kernel would
//! accept, so a refused transaction changes nothing (as in the kernel).
//!
//! It refuses what the kernel refuses (with the errno the kernel uses, in
//! the message): objects in a missing table or set or chain (`ENOENT`),
//! rules and elements whose references do not resolve or whose types do
//! not match (`ENOENT`/`EINVAL`), elements that exist with other data
//! (`EBUSY`), deleting what is missing (`ENOENT`) or still referenced
//! (`EBUSY`), a set redefined differently (`EEXIST`), a chain whose hook
//! would change (`EEXIST`), a set over its size (`ENFILE`), elements added
//! to a constant set after the transaction that created it (`EBUSY`), NAT
//! statements in a base chain that is not of type nat (`EOPNOTSUPP`) and
//! jump loops (`ELOOP`, found when the transaction commits).

use std::collections::{BTreeMap, HashSet};

use super::NftError;
use super::encode;
use super::lower;
use super::model::*;
use super::tx::{Op, Transaction};

/// The fake kernel.
#[derive(Debug, Default, Clone)]
pub struct FakeNft {
    tables: BTreeMap<(Family, Name), Table>,
    generation: u32,
    next_handle: u64,
    /// Transactions applied (accepted or refused).
    pub attempts: usize,
}

fn refuse(op: usize, what: impl std::fmt::Display) -> NftError {
    NftError::FakeRefused(format!("op {op}: {what}"))
}

/// Chains a rule or element jumps to.
fn targets(r: &Rule) -> impl Iterator<Item = &Name> {
    r.stmts.iter().filter_map(|s| match s {
        Stmt::Verdict(v) => v.target(),
        _ => None,
    })
}

/// Sets and maps a rule uses.
fn sets_used(r: &Rule) -> Vec<&Name> {
    r.stmts
        .iter()
        .filter_map(|s| match s {
            Stmt::Lookup { set, .. } | Stmt::Update { set, .. } => Some(set),
            Stmt::Vmap { map, .. } => Some(map),
            Stmt::Dnat(NatTo::Map { map, .. }) | Stmt::Snat(NatTo::Map { map, .. }) => Some(map),
            _ => None,
        })
        .collect()
}

fn element_target(e: &Element) -> Option<&Name> {
    match &e.data {
        Some(ElemData::Verdict(VerdictData::Jump(c) | VerdictData::Goto(c))) => Some(c),
        _ => None,
    }
}

impl FakeNft {
    /// An empty ruleset.
    pub fn new() -> FakeNft {
        FakeNft {
            next_handle: 1,
            ..FakeNft::default()
        }
    }

    /// A table, if it exists.
    pub fn table(&self, family: Family, name: &Name) -> Option<&Table> {
        self.tables.get(&(family, name.clone()))
    }

    /// The generation: moves on every accepted transaction.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Apply all of `tx` or nothing.
    pub fn apply(&mut self, tx: &Transaction) -> Result<(), NftError> {
        self.attempts += 1;
        let key = (tx.family, tx.table.clone());
        let mut table = self.tables.get(&key).cloned();
        let mut next_handle = self.next_handle;
        let mut created_sets: HashSet<Name> = HashSet::new();
        for (i, op) in tx.ops.iter().enumerate() {
            let n = i + 1;
            if let Op::AddTable { comment } = op {
                if table.is_none() {
                    let mut t = Table::new(tx.family, tx.table.clone());
                    t.comment = comment.clone();
                    table = Some(t);
                }
                continue;
            }
            let t = table
                .as_mut()
                .ok_or_else(|| refuse(n, format!("no table {} {} (ENOENT)", tx.family.keyword(), tx.table)))?;
            match op {
                Op::AddTable { .. } => unreachable!(),
                Op::DeleteTable => {
                    table = None;
                }
                Op::AddChain(c) => match t.chain_mut(&c.name) {
                    Some(existing) => {
                        if existing.base != c.base {
                            return Err(refuse(n, format!("chain {} exists with another hook (EEXIST)", c.name)));
                        }
                        existing.comment = c.comment.clone();
                    }
                    None => t.chains.push(Chain {
                        rules: Vec::new(),
                        ..c.clone()
                    }),
                },
                Op::DeleteChain(c) => {
                    if t.chain(c).is_none() {
                        return Err(refuse(n, format!("no chain {c} (ENOENT)")));
                    }
                    let from_rules = t
                        .chains
                        .iter()
                        .filter(|o| &o.name != c)
                        .flat_map(|o| o.rules.iter())
                        .any(|r| targets(r).any(|x| x == c));
                    let from_maps = t
                        .sets
                        .iter()
                        .flat_map(|s| s.elements.iter())
                        .any(|e| element_target(e) == Some(c));
                    if from_rules || from_maps {
                        return Err(refuse(n, format!("chain {c} is still referenced (EBUSY)")));
                    }
                    t.chains.retain(|o| &o.name != c);
                }
                Op::FlushChain(c) => {
                    t.chain_mut(c)
                        .ok_or_else(|| refuse(n, format!("no chain {c} (ENOENT)")))?
                        .rules
                        .clear();
                }
                Op::AddRule { chain, rule, .. } | Op::ReplaceRule { chain, rule, .. } => {
                    check_rule(t, chain, rule).map_err(|e| refuse(n, e))?;
                    let handle = next_handle;
                    next_handle += 1;
                    let c = t.chain_mut(chain).expect("checked");
                    let stored = Rule {
                        handle: Some(handle),
                        ..rule.clone()
                    };
                    match op {
                        Op::ReplaceRule { handle: h, .. } => {
                            let slot = c
                                .rules
                                .iter_mut()
                                .find(|r| r.handle == Some(*h))
                                .ok_or_else(|| refuse(n, format!("no rule {h} in chain {chain} (ENOENT)")))?;
                            // A replaced rule keeps its position; the kernel
                            // gives it a new handle.
                            *slot = stored;
                        }
                        _ => c.rules.push(stored),
                    }
                }
                Op::DeleteRule { chain, handle } => {
                    let c = t
                        .chain_mut(chain)
                        .ok_or_else(|| refuse(n, format!("no chain {chain} (ENOENT)")))?;
                    let before = c.rules.len();
                    c.rules.retain(|r| r.handle != Some(*handle));
                    if c.rules.len() == before {
                        return Err(refuse(n, format!("no rule {handle} in chain {chain} (ENOENT)")));
                    }
                }
                Op::AddSet(s) => {
                    encode::set_attrs(&t.name, s, 0).map_err(|e| refuse(n, format!("{e} (EINVAL)")))?;
                    match t.set(&s.name) {
                        Some(existing) => {
                            if existing.kind != s.kind || existing.flags != s.flags || existing.timeout != s.timeout {
                                return Err(refuse(
                                    n,
                                    format!("set {} exists with another definition (EEXIST)", s.name),
                                ));
                            }
                        }
                        None => {
                            created_sets.insert(s.name.clone());
                            t.sets.push(Set {
                                elements: Vec::new(),
                                ..s.clone()
                            });
                        }
                    }
                }
                Op::DeleteSet(s) => {
                    if t.set(s).is_none() {
                        return Err(refuse(n, format!("no set {s} (ENOENT)")));
                    }
                    if t.chains
                        .iter()
                        .flat_map(|c| c.rules.iter())
                        .any(|r| sets_used(r).contains(&s))
                    {
                        return Err(refuse(n, format!("set {s} is used by a rule (EBUSY)")));
                    }
                    t.sets.retain(|o| &o.name != s);
                }
                Op::FlushSet(s) => {
                    t.set_mut(s)
                        .ok_or_else(|| refuse(n, format!("no set {s} (ENOENT)")))?
                        .elements
                        .clear();
                }
                Op::AddElements { set, elements } => {
                    let chains: HashSet<Name> = t.chains.iter().map(|c| c.name.clone()).collect();
                    let s = t
                        .set_mut(set)
                        .ok_or_else(|| refuse(n, format!("no set {set} (ENOENT)")))?;
                    if s.flags.constant && !created_sets.contains(set) {
                        return Err(refuse(n, format!("set {set} is constant (EBUSY)")));
                    }
                    for e in elements {
                        encode::check_element(s, e).map_err(|err| refuse(n, format!("{err} (EINVAL)")))?;
                        if let Some(c) = element_target(e)
                            && !chains.contains(c)
                        {
                            return Err(refuse(
                                n,
                                format!("element of {set} jumps to unknown chain {c} (ENOENT)"),
                            ));
                        }
                        match s.elements.iter().find(|x| x.key == e.key) {
                            Some(x) if x.data == e.data => {}
                            Some(_) => {
                                return Err(refuse(
                                    n,
                                    format!("element {:?} of {set} exists with other data (EBUSY)", e.key),
                                ));
                            }
                            None => {
                                if s.flags.interval && s.elements.iter().any(|x| overlaps(x, e)) {
                                    return Err(refuse(n, format!("element {:?} overlaps in {set} (EEXIST)", e.key)));
                                }
                                s.elements.push(e.clone());
                            }
                        }
                    }
                    if let Some(max) = s.size
                        && s.elements.len() > max as usize
                    {
                        return Err(refuse(n, format!("set {set} is full ({max} elements, ENFILE)")));
                    }
                    s.elements.sort();
                }
                Op::DeleteElements { set, elements } => {
                    let s = t
                        .set_mut(set)
                        .ok_or_else(|| refuse(n, format!("no set {set} (ENOENT)")))?;
                    for e in elements {
                        let before = s.elements.len();
                        s.elements.retain(|x| x.key != e.key);
                        if s.elements.len() == before {
                            return Err(refuse(n, format!("no element {:?} in {set} (ENOENT)", e.key)));
                        }
                    }
                }
            }
        }
        if let Some(t) = &table {
            check_loops(t).map_err(|e| NftError::FakeRefused(format!("commit: {e}")))?;
        }
        match table {
            Some(t) => {
                self.tables.insert(key, t);
            }
            None => {
                self.tables.remove(&key);
            }
        }
        self.next_handle = next_handle;
        self.generation += 1;
        Ok(())
    }
}

/// A fake shared between a backend (which owns one handle) and a test
/// (which keeps another to look at the ruleset, inject drift or make the
/// next commits fail).
#[derive(Debug, Clone, Default)]
pub struct SharedFake(pub std::sync::Arc<std::sync::Mutex<FakeState>>);

/// What a [`SharedFake`] holds.
#[derive(Debug, Default)]
pub struct FakeState {
    /// The ruleset.
    pub nft: FakeNft,
    /// Refuse this many of the next commits (as the kernel would refuse a
    /// bad transaction: nothing changes).
    pub fail_next: usize,
    /// Transactions accepted, in order.
    pub committed: Vec<Transaction>,
    /// Dumps served.
    pub dumps: usize,
}

impl SharedFake {
    /// An empty ruleset.
    pub fn new() -> SharedFake {
        let s = SharedFake::default();
        s.lock().nft = FakeNft::new();
        s
    }

    /// The state (panics if a holder panicked).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of a table, rules without handles, sets and chains by name.
    pub fn table(&self, family: Family, name: &Name) -> Option<Table> {
        self.lock().nft.table(family, name).cloned().map(normalized)
    }
}

/// A table in a canonical form for comparisons: sets and chains sorted by
/// name, elements sorted, rule handles dropped.
pub fn normalized(mut t: Table) -> Table {
    t.sets.sort_by(|a, b| a.name.cmp(&b.name));
    for s in &mut t.sets {
        s.elements.sort();
    }
    t.chains.sort_by(|a, b| a.name.cmp(&b.name));
    for c in &mut t.chains {
        for r in &mut c.rules {
            r.handle = None;
        }
    }
    t
}

impl super::kernel::NftKernel for SharedFake {
    fn commit(&mut self, tx: &Transaction, known: &Table) -> Result<u32, NftError> {
        // Encode as for the kernel: what the fake accepts must also encode.
        super::tx::Batch::build(tx, known)?;
        let mut st = self.lock();
        if st.fail_next > 0 {
            st.fail_next -= 1;
            st.nft.attempts += 1;
            return Err(NftError::FakeRefused("op 1: injected failure (EINVAL)".into()));
        }
        st.nft.apply(tx)?;
        st.committed.push(tx.clone());
        Ok(st.nft.generation())
    }

    fn generation(&mut self) -> Result<u32, NftError> {
        Ok(self.lock().nft.generation())
    }

    fn dump(&mut self, family: Family, table: &Name) -> Result<Option<Table>, NftError> {
        let mut st = self.lock();
        st.dumps += 1;
        Ok(st.nft.table(family, table).cloned())
    }

    fn exists(&mut self, family: Family, table: &Name) -> Result<bool, NftError> {
        Ok(self.lock().nft.table(family, table).is_some())
    }
}

impl FakeNft {
    /// Change a table outside any transaction check (drift made by someone
    /// else: the generation moves, as a foreign commit would move it).
    pub fn tamper(&mut self, family: Family, name: &Name, f: impl FnOnce(&mut Table)) {
        if let Some(t) = self.tables.get_mut(&(family, name.clone())) {
            f(t);
            self.generation += 1;
        }
    }

    /// Add or replace a whole table (a foreign table, or one of ours left
    /// by an earlier run).
    pub fn put_table(&mut self, t: Table) {
        self.tables.insert((t.family, t.name.clone()), t);
        self.generation += 1;
    }

    /// Every table's family and name.
    pub fn tables(&self) -> Vec<(Family, Name)> {
        self.tables.keys().cloned().collect()
    }
}

fn overlaps(a: &Element, b: &Element) -> bool {
    a.key.iter().zip(&b.key).all(|(x, y)| {
        let ((xl, xh), (yl, yh)) = (x.bounds(), y.bounds());
        xl <= yh && yl <= xh
    })
}

fn check_rule(t: &Table, chain: &Name, rule: &Rule) -> Result<(), String> {
    let c = t.chain(chain).ok_or_else(|| format!("no chain {chain} (ENOENT)"))?;
    let shapes = encode::shapes_of(t.sets.iter());
    for s in sets_used(rule) {
        if t.set(s).is_none() {
            return Err(format!("rule uses unknown set {s} (ENOENT)"));
        }
    }
    lower::lower(t.family, rule, &shapes).map_err(|e| format!("{e} (EINVAL)"))?;
    for target in targets(rule) {
        if t.chain(target).is_none() {
            return Err(format!("rule jumps to unknown chain {target} (ENOENT)"));
        }
        if t.chain(target).is_some_and(|c| c.base.is_some()) {
            return Err(format!("rule jumps to base chain {target} (EINVAL)"));
        }
    }
    let nat = rule
        .stmts
        .iter()
        .any(|s| matches!(s, Stmt::Dnat(_) | Stmt::Snat(_) | Stmt::Masquerade { .. }));
    if nat
        && let Some(b) = &c.base
        && b.kind != ChainType::Nat
    {
        return Err(format!("nat in {} chain {chain} (EOPNOTSUPP)", b.kind.keyword()));
    }
    Ok(())
}

fn check_loops(t: &Table) -> Result<(), String> {
    // Edges: rule jumps and verdict-map elements reachable from a chain's
    // vmap lookups.
    let mut edges: BTreeMap<&Name, Vec<&Name>> = BTreeMap::new();
    for c in &t.chains {
        let e = edges.entry(&c.name).or_default();
        for r in &c.rules {
            e.extend(targets(r));
            for s in &r.stmts {
                if let Stmt::Vmap { map, .. } = s
                    && let Some(m) = t.set(map)
                {
                    e.extend(m.elements.iter().filter_map(element_target));
                }
            }
        }
    }
    fn visit<'a>(
        n: &'a Name,
        edges: &BTreeMap<&'a Name, Vec<&'a Name>>,
        stack: &mut Vec<&'a Name>,
        done: &mut HashSet<&'a Name>,
    ) -> Result<(), String> {
        if stack.contains(&n) {
            return Err(format!(
                "jump loop through chain {n} (ELOOP; kernel 6.18 says EMLINK when the rule is added)"
            ));
        }
        if done.contains(n) {
            return Ok(());
        }
        stack.push(n);
        for m in edges.get(n).into_iter().flatten() {
            visit(m, edges, stack, done)?;
        }
        stack.pop();
        done.insert(n);
        Ok(())
    }
    let mut done = HashSet::new();
    for c in &t.chains {
        visit(&c.name, &edges, &mut Vec::new(), &mut done)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::nftables::layout::{self, Selection, Settings};

    fn settings() -> Settings {
        Settings {
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            selection: Selection::Modulus,
            variant: layout::Variant::PerService,
        }
    }

    fn loaded() -> (FakeNft, Vec<layout::SvcSpec>) {
        let services = layout::synthetic(5, 3);
        let table = layout::build(&services, &settings());
        let mut fake = FakeNft::new();
        for tx in layout::cold_load(&table, 7) {
            fake.apply(&tx).unwrap();
        }
        (fake, services)
    }

    fn table(f: &FakeNft) -> Table {
        f.table(Family::Ip, &name(layout::TABLE)).unwrap().clone()
    }

    fn tx(ops: Vec<Op>) -> Transaction {
        Transaction {
            family: Family::Ip,
            table: name(layout::TABLE),
            ops,
        }
    }

    /// Rules compared without handles.
    fn strip(mut t: Table) -> Table {
        for c in &mut t.chains {
            for r in &mut c.rules {
                r.handle = None;
            }
        }
        t
    }

    #[test]
    fn a_chunked_cold_load_builds_exactly_the_table() {
        let (fake, services) = loaded();
        let mut want = layout::build(&services, &settings());
        for s in &mut want.sets {
            s.elements.sort();
        }
        assert_eq!(strip(table(&fake)), want);
    }

    /// Each transaction ends with a refused op; nothing before it may stick.
    #[test]
    fn refused_transactions_change_nothing() {
        let (mut fake, services) = loaded();
        let s = &services[0];
        let before = table(&fake);
        let generation0 = fake.generation();
        let good_element = Op::AddElements {
            set: s.map(),
            elements: vec![Element::map(
                &[Value::Int(9)],
                &[Value::Ipv4("10.1.1.1".parse().unwrap()), Value::Port(1)],
            )],
        };
        let cases: Vec<(Op, &str)> = vec![
            (Op::DeleteChain(s.chain()), "still referenced"),
            (Op::DeleteSet(s.map()), "used by a rule"),
            (Op::DeleteChain(name("no-such")), "ENOENT"),
            (
                Op::AddRule {
                    chain: s.chain(),
                    rule: Rule::new(vec![Stmt::Lookup {
                        key: vec![Expr::IpDaddr],
                        set: name("no-such"),
                        negate: false,
                    }]),
                    echo: false,
                },
                "unknown set",
            ),
            (
                Op::AddRule {
                    chain: s.chain(),
                    rule: Rule::new(vec![Stmt::Verdict(Verdict::Jump(name("no-such")))]),
                    echo: false,
                },
                "unknown chain",
            ),
            (
                Op::AddElements {
                    set: s.map(),
                    elements: vec![Element::map(&[Value::Port(1)], &[Value::Port(1)])],
                },
                "does not match",
            ),
            (
                Op::AddElements {
                    set: s.map(),
                    elements: vec![Element::map(
                        &[Value::Int(0)],
                        &[Value::Ipv4("10.9.9.9".parse().unwrap()), Value::Port(1)],
                    )],
                },
                "other data",
            ),
            (
                Op::AddElements {
                    set: name("service-ips"),
                    elements: vec![Element::vmap(
                        &[
                            Value::Ipv4("10.0.0.9".parse().unwrap()),
                            Value::Proto(6),
                            Value::Port(1),
                        ],
                        VerdictData::Goto(name("no-such")),
                    )],
                },
                "unknown chain",
            ),
            (
                Op::AddSet(Set::new(
                    s.map(),
                    SetType::Types {
                        key: vec![DataType::Mark],
                        data: None,
                    },
                )),
                "another definition",
            ),
            (
                Op::AddChain(Chain::base(s.chain(), ChainType::Nat, Hook::Input, 0)),
                "another hook",
            ),
            (
                Op::AddRule {
                    chain: s.chain(),
                    rule: Rule::new(vec![Stmt::Verdict(Verdict::Jump(name("services-dispatch")))]),
                    echo: false,
                },
                "ELOOP",
            ),
            (
                Op::DeleteElements {
                    set: s.map(),
                    elements: vec![Element::key(&[Value::Int(77)])],
                },
                "no element",
            ),
            (
                Op::DeleteRule {
                    chain: s.chain(),
                    handle: 999_999,
                },
                "no rule",
            ),
        ];
        for (bad, why) in cases {
            let t = tx(vec![
                good_element.clone(),
                Op::FlushChain(name("reject-chain")),
                bad.clone(),
            ]);
            let err = fake.apply(&t).expect_err(&format!("{bad:?} accepted")).to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
            assert_eq!(table(&fake), before, "{bad:?} left changes behind");
            assert_eq!(fake.generation(), generation0);
        }
        // The good part alone is accepted and moves the generation.
        fake.apply(&tx(vec![good_element])).unwrap();
        assert_eq!(fake.generation(), generation0 + 1);
    }

    #[test]
    fn adding_the_same_objects_again_is_a_no_op() {
        let (mut fake, services) = loaded();
        let before = table(&fake);
        let t = layout::build(&services, &settings());
        let mut again = Transaction::create(&t);
        again.ops.retain(|op| !matches!(op, Op::AddRule { .. }));
        fake.apply(&again).unwrap();
        assert_eq!(table(&fake), before);
    }

    #[test]
    fn an_endpoint_change_touches_only_its_map_and_rule() {
        let (mut fake, services) = loaded();
        let old = services[2].clone();
        let mut new = old.clone();
        new.endpoints.pop();
        let handle = table(&fake).chain(&old.chain()).unwrap().rules[1].handle.unwrap();
        let before = table(&fake);
        fake.apply(&layout::change_endpoints(&old, &new, Selection::Modulus, handle))
            .unwrap();
        let after = table(&fake);
        for (b, a) in before.sets.iter().zip(&after.sets) {
            if a.name != old.map() {
                assert_eq!(a, b);
            }
        }
        assert_eq!(
            after.set(&old.map()).unwrap().elements,
            layout::slot_elements(&new, Selection::Modulus)
        );
        let rule = &after.chain(&old.chain()).unwrap().rules[1];
        assert_eq!(rule.without_handle(), layout::select_rule(&new, Selection::Modulus));
    }

    #[test]
    fn removing_a_service_in_the_wrong_order_is_refused() {
        let (mut fake, services) = loaded();
        let s = &services[0];
        let mut wrong = layout::remove_service(s);
        wrong.ops.reverse();
        assert!(fake.apply(&wrong).is_err());
        fake.apply(&layout::remove_service(s)).unwrap();
        assert!(table(&fake).chain(&s.chain()).is_none());
    }
}
