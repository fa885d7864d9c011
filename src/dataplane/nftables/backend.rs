//! `--proxy-mode nftables`: one table per family (`ip sliceproxy`,
//! `ip6 sliceproxy`) programmed over netlink with element-level edits.
//!
//! The backend keeps its own image of what it programmed ([`PortImage`] per
//! service port, reference counts of shared elements and chains). A partial
//! sync translates the changed ports' frontend plans, diffs them against the
//! image and commits the difference as one transaction per family; it never
//! reads the table. A full sync recomputes every port (normally no change)
//! and checks the ruleset generation (`GETGEN`): when it moved since our
//! last commit someone else committed, so our table is dumped, compared with
//! what it should hold, and only what differs is repaired. The first sync
//! creates the table in chunks (no transaction long enough to stall the
//! kernel), or adopts a table an earlier run left (repairing what differs,
//! with no gap in service), or replaces a table of another layout version
//! atomically.
//!
//! A refused transaction changes nothing in the kernel and nothing in the
//! image; the error names the refused object.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Instant;

use super::NftError;
use super::kernel::NftKernel;
use super::model::*;
use super::ruleset::{self, FrontendKey, NftSettings, PortImage, SetId, Shape};
use super::tx::{Op, Transaction};
use crate::dataplane::frontends::FrontendPlan;
use crate::dataplane::{Dataplane, DataplaneError, Drift, Operation, SyncScope, SyncStats, enable_route_localnet};
use crate::model::{IpFamily, ServicePortKey};
use crate::track::BackendTable;

/// Objects per transaction in a cold load or a large repair: a few
/// hundred milliseconds of kernel work each, far below the ~20 s after
/// which a transaction soft-locks this kernel.
pub const DEFAULT_CHUNK: usize = 20_000;
/// The largest table (in objects) replaced in one transaction when a table
/// of another layout must go; a larger one is deleted and loaded in chunks.
pub const ATOMIC_REPLACE_LIMIT: usize = 400_000;

/// Reads the addresses that serve node ports (they can change while the
/// agent runs); called at every full sync.
pub type AddressSource = Box<dyn FnMut() -> Result<Vec<IpAddr>, String> + Send>;

/// Construction settings.
#[derive(Debug, Clone)]
pub struct NftablesConfig {
    /// Families to program.
    pub families: Vec<IpFamily>,
    /// Node settings and the scheduler.
    pub settings: NftSettings,
    /// Objects per transaction in cold loads and large repairs.
    pub chunk: usize,
}

impl NftablesConfig {
    /// Both families with default chunking.
    pub fn new(families: Vec<IpFamily>, settings: NftSettings) -> NftablesConfig {
        NftablesConfig {
            families,
            settings,
            chunk: DEFAULT_CHUNK,
        }
    }
}

/// What a full sync found and did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FullSyncReport {
    /// How the table was brought in line: created, adopted, replaced,
    /// checked (generation moved), or untouched (generation unchanged).
    pub how: &'static str,
    /// Transactions committed.
    pub transactions: usize,
    /// Objects (elements, rules, chains, sets) written or deleted.
    pub changes: usize,
}

/// The nftables dataplane.
pub struct NftablesDataplane {
    kernel: Box<dyn NftKernel>,
    settings: NftSettings,
    families: Vec<FamilyState>,
    node_ports: Option<AddressSource>,
    /// The generation our last commit produced, or that a full sync found
    /// the table matching the image at (drift check).
    last_generation: Option<u32>,
    /// Commits so far (a full sync that commits nothing vouches for the
    /// generation it read).
    commits: u64,
    chunk: usize,
    /// Set after each full sync.
    pub last_full: FullSyncReport,
}

/// One family's image.
#[derive(Debug, Clone)]
struct FamilyState {
    family: IpFamily,
    /// The table was created or adopted.
    loaded: bool,
    ports: HashMap<ServicePortKey, PortImage>,
    /// Every port that wants a frontend; the first in key order holds it.
    claims: HashMap<FrontendKey, BTreeSet<ServicePortKey>>,
    /// The frontends each port wants.
    claimed: HashMap<ServicePortKey, Vec<FrontendKey>>,
    /// Holders of shared elements (cluster IPs, hairpin addresses).
    refs: HashMap<(SetId, IpAddr), u32>,
    /// Users of shared chains.
    shapes: BTreeMap<Shape, u32>,
    /// Who owns each own chain and set (collisions are refused).
    own_names: HashMap<Name, ServicePortKey>,
    /// The fixed part as applied.
    skeleton: Table,
}

/// Changes grouped by the phase they must run in.
#[derive(Debug, Default)]
struct Ops {
    del_dispatch: BTreeMap<SetId, Vec<Element>>,
    flush: BTreeSet<Name>,
    del_chains: BTreeSet<Name>,
    del_sets: BTreeSet<Name>,
    del_shapes: Vec<Name>,
    del_data: BTreeMap<SetId, Vec<Element>>,
    add_data: BTreeMap<SetId, Vec<Element>>,
    add_shapes: Vec<Chain>,
    add_sets: Vec<Set>,
    add_chains: Vec<Chain>,
    refill: Vec<Chain>,
    add_dispatch: BTreeMap<SetId, Vec<Element>>,
}

impl Ops {
    fn delete(&mut self, id: SetId, e: Element) {
        let e = e.key_only();
        if matches!(id, SetId::ServiceIps | SetId::ServiceNodeports) {
            self.del_dispatch.entry(id).or_default().push(e);
        } else {
            self.del_data.entry(id).or_default().push(e);
        }
    }

    fn add(&mut self, id: SetId, e: Element) {
        if id.dispatch() {
            self.add_dispatch.entry(id).or_default().push(e);
        } else {
            self.add_data.entry(id).or_default().push(e);
        }
    }

    fn count(&self) -> usize {
        let n = |m: &BTreeMap<SetId, Vec<Element>>| m.values().map(Vec::len).sum::<usize>();
        n(&self.del_dispatch)
            + self.flush.len()
            + self.del_chains.len()
            + self.del_sets.len()
            + self.del_shapes.len()
            + n(&self.del_data)
            + n(&self.add_data)
            + self.add_shapes.iter().map(|c| 1 + c.rules.len()).sum::<usize>()
            + self.add_sets.len()
            + self.add_chains.iter().map(|c| 1 + c.rules.len()).sum::<usize>()
            + self.refill.iter().map(|c| c.rules.len()).sum::<usize>()
            + n(&self.add_dispatch)
    }

    /// The changes in an order the kernel accepts: references go before
    /// what they point at is deleted, and after it is created; dispatch
    /// elements last, so no packet reaches a half-built frontend.
    fn into_ops(self) -> Vec<Op> {
        let mut out = Vec::new();
        let elements = |out: &mut Vec<Op>, m: BTreeMap<SetId, Vec<Element>>, add: bool| {
            for (id, elements) in m {
                if elements.is_empty() {
                    continue;
                }
                let set = id.name();
                out.push(if add {
                    Op::AddElements { set, elements }
                } else {
                    Op::DeleteElements { set, elements }
                });
            }
        };
        elements(&mut out, self.del_dispatch, false);
        out.extend(self.flush.iter().cloned().map(Op::FlushChain));
        out.extend(self.del_chains.into_iter().map(Op::DeleteChain));
        out.extend(self.del_sets.into_iter().map(Op::DeleteSet));
        out.extend(self.del_shapes.into_iter().map(Op::DeleteChain));
        elements(&mut out, self.del_data, false);
        elements(&mut out, self.add_data, true);
        for c in self.add_shapes {
            add_chain(&mut out, c);
        }
        out.extend(self.add_sets.into_iter().map(Op::AddSet));
        for c in &self.add_chains {
            out.push(Op::AddChain(Chain {
                rules: Vec::new(),
                ..c.clone()
            }));
        }
        for c in self.add_chains.into_iter().chain(self.refill) {
            for r in c.rules {
                out.push(Op::AddRule {
                    chain: c.name.clone(),
                    rule: r,
                    echo: false,
                });
            }
        }
        elements(&mut out, self.add_dispatch, true);
        out
    }
}

fn add_chain(out: &mut Vec<Op>, c: Chain) {
    out.push(Op::AddChain(Chain {
        rules: Vec::new(),
        ..c.clone()
    }));
    for r in c.rules {
        out.push(Op::AddRule {
            chain: c.name.clone(),
            rule: r,
            echo: false,
        });
    }
}

/// A computed change of the image, applied once the kernel accepted it.
#[derive(Debug, Default)]
struct Delta {
    ports: Vec<(ServicePortKey, Option<PortImage>)>,
    claims: HashMap<FrontendKey, BTreeSet<ServicePortKey>>,
    claimed: Vec<(ServicePortKey, Option<Vec<FrontendKey>>)>,
    refs: HashMap<(SetId, IpAddr), u32>,
    shapes: BTreeMap<Shape, u32>,
    own_add: Vec<(Name, ServicePortKey)>,
    own_del: Vec<Name>,
    ops: Ops,
    written: usize,
    removed: usize,
    /// Ports that could not be programmed, and why (nothing of theirs changed).
    errors: Vec<String>,
}

fn shared_keys(img: &PortImage) -> Vec<(SetId, IpAddr)> {
    let mut v: Vec<(SetId, IpAddr)> = img.cluster_ip.map(|ip| (SetId::ClusterIps, ip)).into_iter().collect();
    v.extend(img.hairpin.iter().map(|ip| (SetId::Hairpin, *ip)));
    v
}

fn shared_element(id: SetId, ip: IpAddr) -> Element {
    match id {
        SetId::Hairpin => Element::key(&[Value::ip(ip), Value::ip(ip)]),
        _ => Element::key(&[Value::ip(ip)]),
    }
}

fn own_names_of(img: &PortImage) -> Vec<Name> {
    img.own
        .as_ref()
        .map(|o| {
            o.chains
                .iter()
                .map(|c| c.name.clone())
                .chain(o.sets.iter().map(|s| s.name.clone()))
                .collect()
        })
        .unwrap_or_default()
}

impl FamilyState {
    fn new(family: IpFamily, settings: &NftSettings) -> FamilyState {
        FamilyState {
            family,
            loaded: false,
            ports: HashMap::new(),
            claims: HashMap::new(),
            claimed: HashMap::new(),
            refs: HashMap::new(),
            shapes: BTreeMap::new(),
            own_names: HashMap::new(),
            skeleton: ruleset::skeleton(family, settings),
        }
    }

    fn table_family(&self) -> Family {
        ruleset::table_family(self.family)
    }

    /// Set definitions as the kernel has them now (for encoding).
    fn known(&self) -> Table {
        let mut t = Table::new(self.table_family(), name(ruleset::TABLE));
        t.sets = self
            .skeleton
            .sets
            .iter()
            .map(|s| Set {
                elements: Vec::new(),
                ..s.clone()
            })
            .collect();
        for img in self.ports.values() {
            if let Some(own) = &img.own {
                t.sets.extend(own.sets.iter().cloned());
            }
        }
        t
    }

    /// The change that brings the ports `keys` in line with `table`.
    fn delta(&self, keys: &BTreeSet<ServicePortKey>, table: &BackendTable, settings: &NftSettings) -> Delta {
        let f = self.family;
        let mut d = Delta::default();
        let plans: HashMap<&ServicePortKey, Option<FrontendPlan<'_>>> = keys
            .iter()
            .map(|k| (k, table.plan(k).and_then(|p| FrontendPlan::new(p, f, &settings.node))))
            .collect();
        // Claims first: who holds each frontend after the change.
        let mut affected: BTreeSet<ServicePortKey> = keys.clone();
        for k in keys {
            let old: &[FrontendKey] = self.claimed.get(k).map(Vec::as_slice).unwrap_or(&[]);
            let new: Vec<FrontendKey> = plans[k].as_ref().map(ruleset::frontend_keys).unwrap_or_default();
            for fk in old.iter().chain(&new) {
                d.claims
                    .entry(*fk)
                    .or_insert_with(|| self.claims.get(fk).cloned().unwrap_or_default());
            }
            for fk in old {
                d.claims.get_mut(fk).expect("inserted").remove(k);
            }
            for fk in &new {
                d.claims.get_mut(fk).expect("inserted").insert(k.clone());
            }
            d.claimed
                .push((k.clone(), if new.is_empty() { None } else { Some(new) }));
        }
        for (fk, holders) in &d.claims {
            let before = self.claims.get(fk).and_then(|s| s.first());
            let after = holders.first();
            if before != after {
                affected.extend(before.cloned());
                affected.extend(after.cloned());
            }
        }
        let holder = |fk: &FrontendKey| -> Option<&ServicePortKey> {
            d.claims.get(fk).or_else(|| self.claims.get(fk)).and_then(|s| s.first())
        };

        // New images and the element-level difference.
        let mut refs_delta: HashMap<(SetId, IpAddr), i64> = HashMap::new();
        let mut shapes_delta: BTreeMap<Shape, i64> = BTreeMap::new();
        let empty = PortImage::default();
        for k in &affected {
            let plan_owned;
            let plan = match plans.get(k) {
                Some(p) => p.as_ref(),
                None => {
                    plan_owned = table.plan(k).and_then(|p| FrontendPlan::new(p, f, &settings.node));
                    plan_owned.as_ref()
                }
            };
            let old = self.ports.get(k).unwrap_or(&empty);
            let new = plan.map(|p| ruleset::translate(p, settings, &|fk| holder(fk) == Some(k)));
            let new_ref = new.as_ref().unwrap_or(&empty);
            // Own names must not collide with another port's.
            let collision = own_names_of(new_ref)
                .into_iter()
                .find(|n| self.own_names.get(n).is_some_and(|o| o != k));
            if let Some(n) = collision {
                d.errors.push(format!(
                    "{}: the name {n} of one of its chains or sets collides with another service port's; kept as it was",
                    ruleset::describe(k, f)
                ));
                continue;
            }
            if old == new_ref {
                continue;
            }
            self.diff_port(old, new_ref, &mut d.ops);
            for s in old.shapes() {
                *shapes_delta.entry(s).or_default() -= 1;
            }
            for s in new_ref.shapes() {
                *shapes_delta.entry(s).or_default() += 1;
            }
            for key in shared_keys(old) {
                *refs_delta.entry(key).or_default() -= 1;
            }
            for key in shared_keys(new_ref) {
                *refs_delta.entry(key).or_default() += 1;
            }
            let (old_names, new_names) = (own_names_of(old), own_names_of(new_ref));
            d.own_del
                .extend(old_names.iter().filter(|n| !new_names.contains(n)).cloned());
            d.own_add.extend(
                new_names
                    .into_iter()
                    .filter(|n| !old_names.contains(n))
                    .map(|n| (n, k.clone())),
            );
            match &new {
                Some(img) if !img.is_empty() => d.written += 1,
                _ => d.removed += 1,
            }
            d.ports.push((k.clone(), new.filter(|i| !i.is_empty())));
        }
        for (key, delta) in refs_delta {
            if delta == 0 {
                continue;
            }
            let before = i64::from(self.refs.get(&key).copied().unwrap_or(0));
            let after = before + delta;
            if before == 0 && after > 0 {
                d.ops.add(key.0, shared_element(key.0, key.1));
            } else if before > 0 && after == 0 {
                d.ops.delete(key.0, shared_element(key.0, key.1));
            }
            d.refs.insert(key, after.max(0) as u32);
        }
        let mut after_use = self.shapes.clone();
        for (shape, delta) in shapes_delta {
            if delta == 0 {
                continue;
            }
            let before = i64::from(self.shapes.get(&shape).copied().unwrap_or(0));
            let after = (before + delta).max(0) as u32;
            if after == 0 {
                after_use.remove(&shape);
            } else {
                after_use.insert(shape, after);
            }
            d.shapes.insert(shape, after);
        }
        // The chains held: the shapes in use and their spares.
        let held_before = ruleset::chains_for(self.shapes.keys().copied());
        let held_after = ruleset::chains_for(after_use.keys().copied());
        for shape in held_after.difference(&held_before) {
            d.ops.add_shapes.push(ruleset::shape_chain(shape, f, settings));
        }
        for shape in held_before.difference(&held_after) {
            d.ops.del_shapes.push(shape.chain());
        }
        d
    }

    /// The element, chain and set changes between two images of one port.
    fn diff_port(&self, old: &PortImage, new: &PortImage, ops: &mut Ops) {
        let f = self.family;
        let mut before: HashMap<(SetId, Vec<KeyPart>), Element> = HashMap::new();
        old.for_each_element(f, |id, e| {
            if !id.shared() {
                before.insert((id, e.key.clone()), e);
            }
        });
        let mut adds = Vec::new();
        new.for_each_element(f, |id, e| {
            if id.shared() {
                return;
            }
            match before.remove(&(id, e.key.clone())) {
                Some(o) if o == e => {}
                Some(o) => {
                    ops.delete(id, o);
                    adds.push((id, e));
                }
                None => adds.push((id, e)),
            }
        });
        for ((id, _), e) in before {
            ops.delete(id, e);
        }
        for (id, e) in adds {
            ops.add(id, e);
        }
        // Own objects: by name.
        let empty = ruleset::Own::default();
        let (o, n) = (
            old.own.as_deref().unwrap_or(&empty),
            new.own.as_deref().unwrap_or(&empty),
        );
        let old_chains: HashMap<&Name, &Chain> = o.chains.iter().map(|c| (&c.name, c)).collect();
        let new_chains: HashMap<&Name, &Chain> = n.chains.iter().map(|c| (&c.name, c)).collect();
        for (name, c) in &old_chains {
            match new_chains.get(name) {
                None => {
                    ops.flush.insert((*name).clone());
                    ops.del_chains.insert((*name).clone());
                }
                Some(nc) if nc.rules != c.rules => {
                    ops.flush.insert((*name).clone());
                    ops.refill.push((*nc).clone());
                }
                Some(_) => {}
            }
        }
        for (name, c) in &new_chains {
            if !old_chains.contains_key(name) {
                ops.add_chains.push((*c).clone());
            }
        }
        let old_sets: BTreeSet<&Name> = o.sets.iter().map(|s| &s.name).collect();
        for s in &n.sets {
            if !old_sets.contains(&s.name) {
                ops.add_sets.push(s.clone());
            }
        }
        let new_sets: BTreeSet<&Name> = n.sets.iter().map(|s| &s.name).collect();
        for s in &o.sets {
            if !new_sets.contains(&s.name) {
                ops.del_sets.insert(s.name.clone());
            }
        }
    }

    fn apply(&mut self, d: Delta) {
        for (k, img) in d.ports {
            match img {
                Some(img) => {
                    self.ports.insert(k, img);
                }
                None => {
                    self.ports.remove(&k);
                }
            }
        }
        for (fk, holders) in d.claims {
            if holders.is_empty() {
                self.claims.remove(&fk);
            } else {
                self.claims.insert(fk, holders);
            }
        }
        for (k, c) in d.claimed {
            match c {
                Some(c) => {
                    self.claimed.insert(k, c);
                }
                None => {
                    self.claimed.remove(&k);
                }
            }
        }
        for (key, n) in d.refs {
            if n == 0 {
                self.refs.remove(&key);
            } else {
                self.refs.insert(key, n);
            }
        }
        for (s, n) in d.shapes {
            if n == 0 {
                self.shapes.remove(&s);
            } else {
                self.shapes.insert(s, n);
            }
        }
        for n in d.own_del {
            self.own_names.remove(&n);
        }
        for (n, k) in d.own_add {
            self.own_names.insert(n, k);
        }
    }

    /// The whole table the image stands for, in a stable order (sets and
    /// elements sorted, chains: fixed, shared, own).
    fn render(&self, settings: &NftSettings) -> Table {
        let mut t = self.skeleton.clone();
        let mut elements: BTreeMap<SetId, Vec<Element>> = BTreeMap::new();
        let mut own_chains: Vec<Chain> = Vec::new();
        let mut own_sets: Vec<Set> = Vec::new();
        for img in self.ports.values() {
            img.for_each_element(self.family, |id, e| {
                if !id.shared() {
                    elements.entry(id).or_default().push(e);
                }
            });
            if let Some(own) = &img.own {
                own_chains.extend(own.chains.iter().cloned());
                own_sets.extend(own.sets.iter().cloned());
            }
        }
        for (id, ip) in self.refs.keys() {
            elements.entry(*id).or_default().push(shared_element(*id, *ip));
        }
        for s in &mut t.sets {
            if let Some(id) = SetId::by_name(&s.name)
                && let Some(mut e) = elements.remove(&id)
            {
                s.elements.append(&mut e);
            }
            s.elements.sort();
        }
        own_sets.sort_by(|a, b| a.name.cmp(&b.name));
        t.sets.extend(own_sets);
        t.chains.extend(
            ruleset::chains_for(self.shapes.keys().copied())
                .iter()
                .map(|s| ruleset::shape_chain(s, self.family, settings)),
        );
        own_chains.sort_by(|a, b| a.name.cmp(&b.name));
        t.chains.extend(own_chains);
        t
    }

    fn object_count(&self, settings: &NftSettings) -> usize {
        let t = self.render(settings);
        t.sets.iter().map(|s| 1 + s.elements.len()).sum::<usize>()
            + t.chains.iter().map(|c| 1 + c.rules.len()).sum::<usize>()
    }
}

/// The operations that create `skeleton` (table, sets, chains, rules), for
/// a cold load.
fn skeleton_ops(skeleton: &Table) -> Vec<Op> {
    let mut out = vec![Op::AddTable {
        comment: skeleton.comment.clone(),
    }];
    for s in &skeleton.sets {
        out.push(Op::AddSet(Set {
            elements: Vec::new(),
            ..s.clone()
        }));
    }
    for c in &skeleton.chains {
        out.push(Op::AddChain(Chain {
            rules: Vec::new(),
            ..c.clone()
        }));
    }
    for s in &skeleton.sets {
        if !s.elements.is_empty() {
            out.push(Op::AddElements {
                set: s.name.clone(),
                elements: s.elements.clone(),
            });
        }
    }
    for c in &skeleton.chains {
        for r in &c.rules {
            out.push(Op::AddRule {
                chain: c.name.clone(),
                rule: r.clone(),
                echo: false,
            });
        }
    }
    out
}

fn refused(e: NftError) -> DataplaneError {
    DataplaneError::Refused {
        op: Operation::NfTables,
        message: e.to_string(),
    }
}

impl NftablesDataplane {
    /// A backend programming the kernel through `kernel`.
    pub fn new(kernel: Box<dyn NftKernel>, config: NftablesConfig) -> NftablesDataplane {
        let families = config
            .families
            .iter()
            .map(|f| FamilyState::new(*f, &config.settings))
            .collect();
        NftablesDataplane {
            kernel,
            settings: config.settings,
            families,
            node_ports: None,
            last_generation: None,
            commits: 0,
            chunk: config.chunk.max(1),
            last_full: FullSyncReport::default(),
        }
    }

    /// Re-read the node-port addresses from `source` at every full sync.
    pub fn with_node_port_addresses(mut self, source: AddressSource) -> NftablesDataplane {
        self.node_ports = Some(source);
        self
    }

    /// The settings in use.
    pub fn settings(&self) -> &NftSettings {
        &self.settings
    }

    /// The table the image of `family` stands for (what the kernel holds
    /// after a successful sync), in canonical order.
    pub fn image_table(&self, family: IpFamily) -> Option<Table> {
        self.families
            .iter()
            .find(|s| s.family == family)
            .map(|s| s.render(&self.settings))
    }

    fn commit(&mut self, tx: &Transaction, known: &Table) -> Result<(), DataplaneError> {
        if tx.is_empty() {
            return Ok(());
        }
        let generation = self.kernel.commit(tx, known).map_err(refused)?;
        self.last_generation = Some(generation);
        self.commits += 1;
        Ok(())
    }

    /// Commit `ops` in transactions of at most `chunk` objects; `known`
    /// is extended with the sets each chunk creates.
    fn commit_chunked(&mut self, family: Family, ops: Vec<Op>, known: &mut Table) -> Result<usize, DataplaneError> {
        let mut tx = Transaction::new(family, name(ruleset::TABLE));
        tx.ops = ops;
        let chunks = tx.chunks(self.chunk);
        let n = chunks.len();
        for chunk in chunks {
            self.commit(&chunk, known)?;
            for op in &chunk.ops {
                match op {
                    Op::AddSet(s) => known.sets.push(s.clone()),
                    Op::DeleteTable => known.sets.clear(),
                    _ => {}
                }
            }
        }
        Ok(n)
    }

    fn partial(&mut self, table: &BackendTable, keys: &BTreeSet<ServicePortKey>) -> Result<SyncStats, DataplaneError> {
        let mut written = BTreeSet::new();
        let mut removed = BTreeSet::new();
        for i in 0..self.families.len() {
            let d = self.families[i].delta(keys, table, &self.settings);
            for e in &d.errors {
                tracing::error!("{e}");
            }
            for (k, img) in &d.ports {
                if img.is_some() {
                    written.insert(k.clone());
                } else {
                    removed.insert(k.clone());
                }
            }
            self.commit_delta(i, d)?;
        }
        Ok(SyncStats {
            ports_written: written.len(),
            ports_removed: removed.difference(&written).count(),
            ..SyncStats::default()
        })
    }

    /// Commit a delta of family `i` (chunked when large) and apply it to
    /// the image once the kernel accepted it.
    fn commit_delta(&mut self, i: usize, mut d: Delta) -> Result<usize, DataplaneError> {
        let ops = std::mem::take(&mut d.ops);
        let count = ops.count();
        if count > 0 {
            let st = &self.families[i];
            let mut known = st.known();
            let family = st.table_family();
            let ops = ops.into_ops();
            if count <= self.chunk {
                let mut tx = Transaction::new(family, name(ruleset::TABLE));
                tx.ops = ops;
                self.commit(&tx, &known)?;
            } else {
                // A large change (many ports at once): several
                // transactions, each leaving a consistent table.
                self.commit_chunked(family, ops, &mut known)?;
            }
        }
        self.families[i].apply(d);
        Ok(count)
    }

    fn all_keys(&self, table: &BackendTable) -> BTreeSet<ServicePortKey> {
        let mut keys: BTreeSet<ServicePortKey> = table.plans().map(|(k, _)| k.clone()).collect();
        for st in &self.families {
            keys.extend(st.ports.keys().cloned());
            keys.extend(st.claimed.keys().cloned());
        }
        keys
    }

    fn full(&mut self, table: &BackendTable) -> Result<SyncStats, DataplaneError> {
        if let Some(source) = &mut self.node_ports {
            match source() {
                Ok(addresses) => self.settings.node.set_node_port_addresses(&addresses),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the node's addresses; node ports keep the previous ones")
                }
            }
        }
        if self.settings.node.localhost_node_ports
            && self.families.iter().any(|f| f.family == IpFamily::V4 && !f.loaded)
            && let Err(e) = enable_route_localnet()
        {
            tracing::warn!(error = %e, "cannot enable route_localnet: node ports on 127.0.0.1 will not answer");
        }
        let generation = self.kernel.generation().map_err(refused)?;
        let drifted = self.last_generation != Some(generation);
        let commits_before = self.commits;
        let keys = self.all_keys(table);
        let mut report = FullSyncReport {
            how: "untouched",
            ..FullSyncReport::default()
        };
        let mut stats = SyncStats::default();
        for i in 0..self.families.len() {
            if !self.families[i].loaded {
                let (how, n, changes) = self.first_sync(i, table, &keys)?;
                report.how = how;
                report.transactions += n;
                report.changes += changes;
                stats.ports_written += self.families[i].ports.len();
                continue;
            }
            // Someone else committed since our last commit: first make the
            // kernel equal to the image again, then move both forward.
            if drifted {
                let (n, changes) = self.repair(i)?;
                report.how = "checked";
                report.transactions += n;
                report.changes += changes;
            }
            report.changes += self.sync_skeleton(i)?;
            let d = self.families[i].delta(&keys, table, &self.settings);
            for e in &d.errors {
                tracing::error!("{e}");
            }
            stats.ports_written += d.written;
            stats.ports_removed += d.removed;
            let changes = self.commit_delta(i, d)?;
            if changes > 0 {
                report.transactions += 1;
                report.changes += changes;
            }
        }
        if self.commits == commits_before {
            // Nothing written: the table was found (by a dump where the
            // generation had moved) or known to match the image at the
            // generation read above. A commit by anyone after that read
            // moves the generation again, so the next check still sees it.
            self.last_generation = Some(generation);
        }
        self.last_full = report;
        Ok(stats)
    }

    /// The first full sync of a family: create the table, or adopt the one
    /// an earlier run left (repairing what differs), or replace a table of
    /// another layout.
    fn first_sync(
        &mut self,
        i: usize,
        table: &BackendTable,
        keys: &BTreeSet<ServicePortKey>,
    ) -> Result<(&'static str, usize, usize), DataplaneError> {
        let f = self.families[i].family;
        let fresh = FamilyState::new(f, &self.settings);
        let family = fresh.table_family();
        let mut d = fresh.delta(keys, table, &self.settings);
        for e in &d.errors {
            tracing::error!("{e}");
        }
        let mut creation = skeleton_ops(&fresh.skeleton);
        creation.extend(std::mem::take(&mut d.ops).into_ops());
        let mut next = fresh;
        next.apply(d);
        next.loaded = true;
        let table_name = name(ruleset::TABLE);
        let result = if !self.kernel.exists(family, &table_name).map_err(refused)? {
            let n = creation.len();
            let tx = self.commit_chunked(family, creation, &mut Table::new(family, table_name))?;
            ("created", tx, n)
        } else {
            let have = self.kernel.dump(family, &table_name).map_err(refused)?;
            let want = next.render(&self.settings);
            match repair_ops(have.as_ref(), &want) {
                Ok(ops) => {
                    let n = ops.len();
                    let mut known = have.unwrap_or_else(|| Table::new(family, table_name.clone()));
                    let tx = self.commit_chunked(family, ops, &mut known)?;
                    ("adopted", tx, n)
                }
                Err(why) => {
                    tracing::info!(family = %f, "replacing the existing table: {why}");
                    let n = creation.len() + 1;
                    let mut ops = vec![Op::DeleteTable];
                    ops.extend(creation);
                    if next.object_count(&self.settings) <= ATOMIC_REPLACE_LIMIT {
                        let mut tx = Transaction::new(family, table_name.clone());
                        tx.ops = ops;
                        self.commit(&tx, &Table::new(family, table_name))?;
                        ("replaced", 1, n)
                    } else {
                        let tx = self.commit_chunked(family, ops, &mut Table::new(family, table_name))?;
                        ("replaced", tx, n)
                    }
                }
            }
        };
        self.families[i] = next;
        Ok(result)
    }

    /// Bring the fixed part in line with the settings (node-port addresses
    /// move when the node's addresses change).
    fn sync_skeleton(&mut self, i: usize) -> Result<usize, DataplaneError> {
        let f = self.families[i].family;
        let want = ruleset::skeleton(f, &self.settings);
        if want == self.families[i].skeleton {
            return Ok(0);
        }
        let st = &self.families[i];
        let ops = repair_ops(Some(&st.skeleton), &want).map_err(|why| {
            DataplaneError::Other(format!(
                "nftables: the fixed part of the {f} table cannot change while running ({why}); restart the agent"
            ))
        })?;
        let n = ops.len();
        let known = st.known();
        let mut tx = Transaction::new(st.table_family(), name(ruleset::TABLE));
        tx.ops = ops;
        self.commit(&tx, &known)?;
        self.families[i].skeleton = want;
        Ok(n)
    }

    /// Someone else committed since our last commit: compare our table with
    /// the image and repair what differs. Returns (transactions, changes).
    fn repair(&mut self, i: usize) -> Result<(usize, usize), DataplaneError> {
        let st = &self.families[i];
        let family = st.table_family();
        let table_name = name(ruleset::TABLE);
        let have = self.kernel.dump(family, &table_name).map_err(refused)?;
        let want = st.render(&self.settings);
        let ops = match repair_ops(have.as_ref(), &want) {
            Ok(ops) => ops,
            Err(why) => {
                tracing::warn!(family = %st.family, "our table was changed beyond repair ({why}): replacing it");
                let mut ops = vec![Op::DeleteTable];
                ops.extend(repair_ops(None, &want).expect("creating from nothing always works"));
                ops
            }
        };
        if ops.is_empty() {
            return Ok((0, 0));
        }
        let n = ops.len();
        tracing::warn!(family = %st.family, changes = n, "our nftables table was changed by someone else: repairing");
        let mut known = have.unwrap_or_else(|| Table::new(family, table_name));
        let tx = self.commit_chunked(family, ops, &mut known)?;
        Ok((tx, n))
    }
}

impl Dataplane for NftablesDataplane {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn sync(&mut self, table: &BackendTable, scope: &SyncScope) -> Result<SyncStats, DataplaneError> {
        let t0 = Instant::now();
        let mut stats = match scope {
            SyncScope::Partial(changes) if self.families.iter().all(|f| f.loaded) => {
                let keys: BTreeSet<ServicePortKey> = changes.iter().cloned().collect();
                self.partial(table, &keys)?
            }
            _ => self.full(table)?,
        };
        stats.duration = t0.elapsed();
        Ok(stats)
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        let table_name = name(ruleset::TABLE);
        for f in IpFamily::ALL {
            let family = ruleset::table_family(f);
            if self.kernel.exists(family, &table_name).map_err(refused)? {
                let mut tx = Transaction::new(family, table_name.clone());
                tx.push(Op::DeleteTable);
                self.commit(&tx, &Table::new(family, table_name.clone()))?;
            }
        }
        for st in &mut self.families {
            *st = FamilyState::new(st.family, &self.settings);
        }
        Ok(())
    }

    /// One `NFT_MSG_GETGEN`: the ruleset's generation moves with every
    /// commit by anyone in this network namespace, so an unchanged
    /// generation since our last commit (or since a full sync that found the
    /// table equal to the image) proves our table untouched without reading
    /// it. A moved generation is reported as drift; the full sync that
    /// follows dumps our table and repairs only what differs (a commit to
    /// another table costs that dump, and no write).
    fn check_drift(&mut self) -> Result<Drift, DataplaneError> {
        if !self.families.iter().all(|f| f.loaded) {
            return Ok(Drift::Found("our tables are not loaded yet".into()));
        }
        let generation = self.kernel.generation().map_err(refused)?;
        Ok(match self.last_generation {
            Some(last) if last == generation => Drift::None,
            Some(last) => Drift::Found(format!(
                "the nf_tables generation moved from {last} to {generation} since our last look"
            )),
            None => Drift::Found("no generation recorded yet".into()),
        })
    }
}

// === Comparing a table with what it should hold ===

/// Why a table cannot be patched into shape (it is replaced instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeedsReplace(pub String);

impl std::fmt::Display for NeedsReplace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An element in a canonical form: host prefixes and one-value ranges as
/// values (what a dump of an interval set reads back).
fn canonical(mut e: Element) -> Element {
    for k in &mut e.key {
        let (lo, hi) = k.bounds();
        if lo == hi {
            *k = KeyPart::Value(lo);
        } else if let KeyPart::Prefix(n) = k {
            *n = n.trunc();
        }
    }
    e
}

fn same_definition(a: &Set, b: &Set) -> bool {
    a.kind.key_types() == b.kind.key_types()
        && a.kind.data_types() == b.kind.data_types()
        && a.kind.is_vmap() == b.kind.is_vmap()
        && a.flags == b.flags
        && a.timeout == b.timeout
}

/// The changes that turn `have` (a dump of our table, or nothing) into
/// `want`, in an order the kernel accepts, dispatch elements last. Sets
/// or base chains whose definition differs cannot be changed in place.
pub fn repair_ops(have: Option<&Table>, want: &Table) -> Result<Vec<Op>, NeedsReplace> {
    let empty = Table::new(want.family, want.name.clone());
    let (have, create) = match have {
        Some(h) => (h, false),
        None => (&empty, true),
    };
    if !create && have.comment != want.comment {
        return Err(NeedsReplace(format!(
            "its comment {:?} is not {:?} (another layout version)",
            have.comment.as_ref().map(Comment::as_str).unwrap_or(""),
            want.comment.as_ref().map(Comment::as_str).unwrap_or("")
        )));
    }
    let is_dispatch = |n: &Name| SetId::by_name(n).is_some_and(SetId::dispatch);
    let mut del_dispatch = Vec::new();
    let mut flush = Vec::new();
    let mut del_chains = Vec::new();
    let mut del_sets = Vec::new();
    let mut del_elements = Vec::new();
    let mut add_sets = Vec::new();
    let mut add_chains = Vec::new();
    let mut add_elements = Vec::new();
    let mut add_rules = Vec::new();
    let mut add_dispatch = Vec::new();

    for s in &want.sets {
        let (missing, extra): (Vec<Element>, Vec<Element>) = match have.set(&s.name) {
            None => {
                add_sets.push(Op::AddSet(Set {
                    elements: Vec::new(),
                    ..s.clone()
                }));
                (s.elements.clone(), Vec::new())
            }
            Some(h) if !same_definition(h, s) => {
                return Err(NeedsReplace(format!("set {} has another definition", s.name)));
            }
            Some(_) if s.flags.dynamic => (Vec::new(), Vec::new()),
            Some(h) => {
                let mut by_key: HashMap<Vec<KeyPart>, Element> = h
                    .elements
                    .iter()
                    .cloned()
                    .map(canonical)
                    .map(|e| (e.key.clone(), e))
                    .collect();
                let mut missing = Vec::new();
                let mut extra = Vec::new();
                for e in s.elements.iter().cloned().map(canonical) {
                    match by_key.remove(&e.key) {
                        Some(x) if x == e => {}
                        Some(x) => {
                            extra.push(x);
                            missing.push(e);
                        }
                        None => missing.push(e),
                    }
                }
                extra.extend(by_key.into_values());
                (missing, extra)
            }
        };
        if !extra.is_empty() {
            let op = Op::DeleteElements {
                set: s.name.clone(),
                elements: extra.into_iter().map(|e| e.key_only()).collect(),
            };
            if s.kind.is_vmap() {
                del_dispatch.push(op);
            } else {
                del_elements.push(op);
            }
        }
        if !missing.is_empty() {
            let op = Op::AddElements {
                set: s.name.clone(),
                elements: missing,
            };
            if is_dispatch(&s.name) {
                add_dispatch.push(op);
            } else {
                add_elements.push(op);
            }
        }
    }
    for s in &have.sets {
        if want.set(&s.name).is_none() {
            if s.kind.is_vmap() && !s.elements.is_empty() {
                del_dispatch.push(Op::FlushSet(s.name.clone()));
            }
            del_sets.push(Op::DeleteSet(s.name.clone()));
        }
    }
    for c in &want.chains {
        match have.chain(&c.name) {
            None => {
                add_chains.push(Op::AddChain(Chain {
                    rules: Vec::new(),
                    ..c.clone()
                }));
                add_rules.extend(c.rules.iter().map(|r| Op::AddRule {
                    chain: c.name.clone(),
                    rule: r.clone(),
                    echo: false,
                }));
            }
            Some(h) if h.base != c.base => {
                return Err(NeedsReplace(format!("chain {} has another hook", c.name)));
            }
            Some(h) => {
                let same = h.rules.len() == c.rules.len()
                    && h.rules
                        .iter()
                        .zip(&c.rules)
                        .all(|(a, b)| a.without_handle() == b.without_handle());
                if !same {
                    flush.push(Op::FlushChain(c.name.clone()));
                    add_rules.extend(c.rules.iter().map(|r| Op::AddRule {
                        chain: c.name.clone(),
                        rule: r.clone(),
                        echo: false,
                    }));
                }
            }
        }
    }
    for c in &have.chains {
        if want.chain(&c.name).is_none() {
            if !c.rules.is_empty() {
                flush.push(Op::FlushChain(c.name.clone()));
            }
            del_chains.push(Op::DeleteChain(c.name.clone()));
        }
    }
    let mut ops = Vec::new();
    if create {
        ops.push(Op::AddTable {
            comment: want.comment.clone(),
        });
    }
    ops.extend(del_dispatch);
    ops.extend(flush);
    ops.extend(del_chains);
    ops.extend(del_sets);
    ops.extend(del_elements);
    ops.extend(add_sets);
    ops.extend(add_chains);
    ops.extend(add_elements);
    ops.extend(add_rules);
    ops.extend(add_dispatch);
    Ok(ops)
}

// === Render ===

/// The tables a full sync creates on a fresh node, one per family, in
/// canonical order (what [`render_script`] prints).
pub fn full_tables(table: &BackendTable, families: &[IpFamily], settings: &NftSettings) -> Vec<Table> {
    families
        .iter()
        .map(|f| {
            let mut st = FamilyState::new(*f, settings);
            let keys: BTreeSet<ServicePortKey> = table.plans().map(|(k, _)| k.clone()).collect();
            let mut d = st.delta(&keys, table, settings);
            d.ops = Ops::default();
            st.apply(d);
            st.render(settings)
        })
        .collect()
}

/// The exact `nft -f` script of a full sync on a fresh node (for
/// `render --proxy-mode nftables`): loading it into an empty network
/// namespace gives the tables the agent would create there.
pub fn render_script(table: &BackendTable, families: &[IpFamily], settings: &NftSettings) -> String {
    full_tables(table, families, settings)
        .iter()
        .map(super::script::render)
        .collect::<Vec<_>>()
        .join("")
}

#[cfg(test)]
mod tests;
