//! `--proxy-mode iptables`: per-service chains in the `nat` and `filter`
//! tables, programmed with one `iptables-restore --noflush` transaction per
//! family per sync. The backend remembers what it applied, so a partial sync
//! writes only the difference: the changed service's own chains, and the
//! dispatch rules it adds or deletes one by one.

#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod programmed;
pub mod rules;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Instant;

use rules::{ChainHasher, DispatchRule, OwnChain, PortRules};

use super::exec::{Exec, ToolError};
use super::frontends::{FrontendPlan, NodeSettings};
use super::xtables::{self, ChainOwner, Jump, Table, Tools, Variant, dataplane_error as xtables_error, shell_words};
use super::{Dataplane, DataplaneError, Drift, SyncScope, SyncStats};
use crate::model::{IpFamily, ServicePortKey};
use crate::netaddr::NodePortSource;
use crate::track::BackendTable;

/// One family's backend state.
struct FamilyState {
    family: IpFamily,
    tools: Tools,
    /// What we last applied, per service port.
    applied: HashMap<ServicePortKey, PortRules>,
    /// Our chains that exist in the kernel, as far as we know.
    known_chains: BTreeMap<Table, BTreeSet<String>>,
    /// Before the first full sync, look for chains a previous run left.
    discover: bool,
    /// Service ports per transaction in a large full sync (see `full_sync`).
    chunk: usize,
    /// The owner of every service-port chain in `applied`: a chain name is
    /// a hash, and a second service port whose name collides must never
    /// share or overwrite the first one's chain.
    owners: HashMap<String, ServicePortKey>,
    /// Service ports refused for a chain-name collision, retried at every
    /// sync (the owner may be gone).
    collided: BTreeSet<ServicePortKey>,
    /// Node ports on IPv4 loopback, as of the last full sync (see
    /// [`localhost`]): decides which jumps must exist.
    localhost: bool,
}

/// Whether `family` serves node ports on loopback: IPv4 only, as upstream
/// (the kernel never routes `::1` off the node).
fn localhost(settings: &NodeSettings, family: IpFamily) -> bool {
    settings.localhost_node_ports && family == IpFamily::V4
}

/// The iptables dataplane.
pub struct IptablesDataplane {
    exec: Box<dyn Exec>,
    families: Vec<FamilyState>,
    settings: NodeSettings,
    node_ports: Option<NodePortSource>,
    hasher: ChainHasher,
}

/// Construction settings.
#[derive(Debug)]
pub struct IptablesConfig {
    /// Families to program.
    pub families: Vec<IpFamily>,
    /// Which iptables to drive.
    pub variant: Variant,
    /// The node's settings (cluster CIDRs, masquerade-all, node-port addresses).
    pub settings: NodeSettings,
    /// When set, node-port addresses are the node's own addresses
    /// (re-read at every full sync, so changes are followed) filtered by
    /// this setting; when unset, `settings`' node-port addresses are used as given.
    pub node_ports: Option<NodePortSource>,
}

impl IptablesDataplane {
    /// A backend driving the tools through `exec`.
    pub fn new(exec: Box<dyn Exec>, config: IptablesConfig) -> IptablesDataplane {
        let families = config
            .families
            .iter()
            .map(|&family| FamilyState {
                localhost: localhost(&config.settings, family),
                family,
                tools: Tools::new(family, config.variant),
                applied: HashMap::new(),
                known_chains: BTreeMap::new(),
                discover: true,
                chunk: chunk_size(config.variant),
                owners: HashMap::new(),
                collided: BTreeSet::new(),
            })
            .collect();
        IptablesDataplane {
            exec,
            families,
            settings: config.settings,
            node_ports: config.node_ports,
            hasher: rules::sha256_name,
        }
    }

    /// Name chains with `hasher` instead of SHA-256: tests force collisions.
    #[cfg(test)]
    fn with_hasher(mut self, hasher: ChainHasher) -> Self {
        self.hasher = hasher;
        self
    }

    /// Re-read the node's addresses for the node-port rules.
    fn refresh_node_port_addresses(&mut self) -> Result<(), DataplaneError> {
        let Some(source) = &mut self.node_ports else {
            return Ok(());
        };
        let chosen = source.read(&[]).map_err(|e| DataplaneError::Other(e.to_string()))?;
        self.settings.set_node_port_addresses(&chosen);
        Ok(())
    }

    /// The exact `iptables-restore` input a full sync writes for `family`
    /// on a fresh node: every chain and rule of ours, and the jumps from
    /// the built-in chains (`PREROUTING`, `OUTPUT`, `POSTROUTING`, `INPUT`,
    /// `FORWARD`) that make packets reach them, so that piping it into
    /// `iptables-restore` there programs a working node. With more than
    /// [`NFT_CHUNK`] service ports an iptables-nft full sync splits the same
    /// lines over several transactions; the rules loaded are the same.
    pub fn render_full(table: &BackendTable, family: IpFamily, settings: &NodeSettings) -> String {
        let desired = desired(table, family, settings, rules::sha256_name);
        full_restore(
            &desired,
            family,
            settings,
            &BTreeMap::new(),
            &rules::jumps(localhost(settings, family)),
        )
    }
}

/// The rules of one service port in one family (none without a cluster IP there).
fn port_rules(
    plan: &crate::policy::PortPlan,
    family: IpFamily,
    settings: &NodeSettings,
    hasher: ChainHasher,
) -> Option<PortRules> {
    FrontendPlan::new(plan, family, settings)
        .map(|fp| rules::render(&fp, hasher))
        .filter(|r| !r.dispatch.is_empty() || !r.chains.is_empty())
}

fn desired(
    table: &BackendTable,
    family: IpFamily,
    settings: &NodeSettings,
    hasher: ChainHasher,
) -> BTreeMap<ServicePortKey, PortRules> {
    table
        .plans()
        .filter_map(|(k, p)| Some((k.clone(), port_rules(p, family, settings, hasher)?)))
        .collect()
}

/// A chain name `key` wants that is already taken: by another service
/// port (`owners`, or `claimed` earlier in the same sync), or twice by
/// `key` itself. `released` names are being given up in the same sync.
fn collision(
    key: &ServicePortKey,
    rules: &PortRules,
    owners: &HashMap<String, ServicePortKey>,
    claimed: &HashMap<String, ServicePortKey>,
    released: &HashSet<String>,
) -> Option<(String, ServicePortKey)> {
    let mut own: HashSet<&str> = HashSet::new();
    for c in &rules.chains {
        if !own.insert(c.name.as_str()) {
            return Some((c.name.clone(), key.clone()));
        }
        let taken = claimed
            .get(&c.name)
            .or_else(|| owners.get(&c.name).filter(|_| !released.contains(&c.name)));
        if let Some(other) = taken.filter(|o| *o != key) {
            return Some((c.name.clone(), other.clone()));
        }
    }
    None
}

fn log_collision(family: IpFamily, key: &ServicePortKey, chain: &str, other: &ServicePortKey) {
    tracing::error!(
        service_port = %key,
        %family,
        chain,
        owner = %other,
        "chain name collision: the chain belongs to another service port; this one keeps its previous rules (if any) and is retried at every sync"
    );
}

fn chain_line(out: &mut String, name: &str) {
    let _ = writeln!(out, ":{name} - [0:0]");
}

fn rule_line(out: &mut String, op: &str, chain: &str, spec: &str) {
    let _ = writeln!(out, "{op} {chain} {spec}");
}

/// A full rewrite: every static chain, every desired chain, every dispatch
/// rule; chains of ours that are no longer wanted (`stale`) are deleted.
fn full_restore(
    desired: &BTreeMap<ServicePortKey, PortRules>,
    family: IpFamily,
    settings: &NodeSettings,
    stale: &BTreeMap<Table, BTreeSet<String>>,
    missing_jumps: &[Jump],
) -> String {
    let mut out = String::new();
    for table in [Table::Nat, Table::Filter] {
        let statics = rules::static_chains(table, settings.family(family), localhost(settings, family));
        let own: Vec<&OwnChain> = if table == Table::Nat {
            desired.values().flat_map(|r| r.chains.iter()).collect()
        } else {
            Vec::new()
        };
        let empty = BTreeSet::new();
        let wanted: BTreeSet<&str> = statics
            .iter()
            .map(|c| c.name.as_str())
            .chain(own.iter().map(|c| c.name.as_str()))
            .collect();
        let stale: Vec<&String> = stale
            .get(&table)
            .unwrap_or(&empty)
            .iter()
            .filter(|c| !wanted.contains(c.as_str()))
            .collect();
        let _ = writeln!(out, "*{}", table.name());
        for c in &statics {
            chain_line(&mut out, &c.name);
        }
        for c in &own {
            chain_line(&mut out, &c.name);
        }
        for c in &stale {
            chain_line(&mut out, c);
        }
        for c in &statics {
            for r in &c.rules {
                rule_line(&mut out, "-A", &c.name, r);
            }
        }
        for r in desired
            .values()
            .flat_map(|r| r.dispatch.iter())
            .filter(|d| d.table == table)
        {
            rule_line(&mut out, "-A", r.chain, &r.spec);
        }
        for c in &own {
            for r in &c.rules {
                rule_line(&mut out, "-A", &c.name, r);
            }
        }
        // Jumps from the built-in chains go in first position, inserted in
        // reverse so they end up in the order `rules::jumps()` lists them.
        for j in missing_jumps.iter().rev().filter(|j| j.table == table) {
            rule_line(&mut out, "-I", j.from, &j.spec);
        }
        for c in &stale {
            let _ = writeln!(out, "-X {c}");
        }
        let _ = writeln!(out, "COMMIT");
    }
    out
}

/// The value after `name` in a rule's words ("" when absent).
fn option(words: &[String], name: &str) -> String {
    words
        .windows(2)
        .find(|w| w[0] == name)
        .map(|w| w[1].clone())
        .unwrap_or_default()
}

/// The jumps from built-in chains that are missing, judged from rules
/// listed in `-S`/`iptables-save` form. A jump counts as present when a
/// rule of that built-in chain jumps to our chain with our comment (the
/// tools may print matches in another order than we wrote them).
fn missing_jumps(listing: &str, localhost: bool) -> Vec<Jump> {
    let present = present_jumps(listing);
    rules::jumps(localhost)
        .into_iter()
        .filter(|j| !present.contains(&jump_identity(j)))
        .collect()
}

/// The jumps to [`rules::LOCALNET`] that are present while node ports on
/// localhost are off (they were on in a previous run): deleted before the
/// chain is, which a jump still pointing at it would refuse.
fn stray_jumps(listing: &str) -> Vec<Jump> {
    let present = present_jumps(listing);
    let wanted = rules::jumps(false);
    rules::jumps(true)
        .into_iter()
        .filter(|j| !wanted.contains(j) && present.contains(&jump_identity(j)))
        .collect()
}

/// What tells a jump apart in a listing: table, chain, target, comment.
fn jump_identity(j: &Jump) -> (Table, String, String, String) {
    let words = shell_words(&j.spec);
    (
        j.table,
        j.from.to_string(),
        option(&words, "-j"),
        option(&words, "--comment"),
    )
}

/// The jumps from built-in chains in a listing, by [`jump_identity`].
fn present_jumps(listing: &str) -> BTreeSet<(Table, String, String, String)> {
    let mut table: Option<Table> = None;
    let mut present: BTreeSet<(Table, String, String, String)> = BTreeSet::new();
    for line in listing.lines() {
        // `*nat` in a save; `# table nat` marks our own `-S` listings.
        if let Some(t) = line.strip_prefix('*').or_else(|| line.strip_prefix("# table ")) {
            table = Table::parse(t);
            continue;
        }
        let Some(table) = table else { continue };
        let words = shell_words(line);
        if words.first().map(String::as_str) != Some("-A") || words.len() < 2 {
            continue;
        }
        present.insert((
            table,
            words[1].clone(),
            option(&words, "-j"),
            option(&words, "--comment"),
        ));
    }
    present
}

/// Declare (create or flush) and fill the own chains of some service ports.
/// They jump to the static masquerade-mark chain, which may not exist yet on
/// a cold start: it is (re)written in the same transaction, atomically.
fn own_chains_restore<'a>(
    ports: impl Iterator<Item = &'a PortRules> + Clone,
    family: IpFamily,
    settings: &NodeSettings,
) -> String {
    let mark = rules::static_chains(Table::Nat, settings.family(family), localhost(settings, family))
        .into_iter()
        .filter(|c| c.name == rules::MARK_MASQ);
    let mut out = String::from("*nat\n");
    let chains: Vec<&OwnChain> = ports.flat_map(|r| r.chains.iter()).collect();
    let mark: Vec<OwnChain> = mark.collect();
    for c in mark.iter().chain(chains.iter().copied()) {
        chain_line(&mut out, &c.name);
    }
    for c in mark.iter().chain(chains.iter().copied()) {
        for r in &c.rules {
            rule_line(&mut out, "-A", &c.name, r);
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// The difference between what was applied and what is wanted for some
/// service ports: their own chains that changed are flushed and rewritten,
/// chains they no longer have are deleted, and their dispatch rules are
/// deleted or appended one by one. Returns "" when nothing differs.
fn partial_restore(changes: &[(&ServicePortKey, Option<&PortRules>, Option<&PortRules>)]) -> String {
    let empty = PortRules::default();
    let mut out = String::new();
    for table in [Table::Nat, Table::Filter] {
        let (mut declare, mut delete_rules, mut append, mut remove_chains) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut bodies: Vec<&OwnChain> = Vec::new();
        for (_, old, new) in changes {
            let old = old.unwrap_or(&empty);
            let new = new.unwrap_or(&empty);
            let old_d: BTreeSet<&DispatchRule> = old.dispatch.iter().filter(|d| d.table == table).collect();
            let new_d: BTreeSet<&DispatchRule> = new.dispatch.iter().filter(|d| d.table == table).collect();
            delete_rules.extend(old_d.difference(&new_d).copied());
            append.extend(new_d.difference(&old_d).copied());
            if table == Table::Nat {
                for c in &new.chains {
                    if !old.chains.contains(c) {
                        declare.push(c.name.clone());
                        bodies.push(c);
                    }
                }
                for c in &old.chains {
                    if !new.chains.iter().any(|n| n.name == c.name) {
                        declare.push(c.name.clone());
                        remove_chains.push(c.name.clone());
                    }
                }
            }
        }
        if declare.is_empty() && delete_rules.is_empty() && append.is_empty() {
            continue;
        }
        // A chain one port gives up may be taken over by another in the
        // same sync (after a hash collision): declared once, not deleted.
        let written: HashSet<&str> = bodies.iter().map(|c| c.name.as_str()).collect();
        remove_chains.retain(|c| !written.contains(c.as_str()));
        let mut seen = HashSet::new();
        declare.retain(|c| seen.insert(c.clone()));
        let _ = writeln!(out, "*{}", table.name());
        for c in &declare {
            chain_line(&mut out, c);
        }
        // Deletions first: a deleted chain must lose its last reference
        // before `-X`, and the kernel applies the lines in order.
        for d in delete_rules {
            rule_line(&mut out, "-D", d.chain, &d.spec);
        }
        for d in append {
            rule_line(&mut out, "-A", d.chain, &d.spec);
        }
        for c in bodies {
            for r in &c.rules {
                rule_line(&mut out, "-A", &c.name, r);
            }
        }
        for c in remove_chains {
            let _ = writeln!(out, "-X {c}");
        }
        let _ = writeln!(out, "COMMIT");
    }
    out
}

/// Service ports per transaction in a large full sync, per variant.
/// iptables-nft-restore (1.8.9) with --noflush takes time quadratic in the
/// chains one transaction declares, so it gets small transactions;
/// iptables-legacy replaces the whole table blob in the kernel at every
/// COMMIT, so splitting would make it quadratic instead: one transaction.
fn chunk_size(variant: Variant) -> usize {
    match variant {
        Variant::Nft => NFT_CHUNK,
        Variant::Legacy => usize::MAX,
    }
}

/// See [`chunk_size`]; tuned by `benches/iptables.rs`.
pub const NFT_CHUNK: usize = 100;

impl FamilyState {
    fn restore(&self, exec: &mut dyn Exec, input: &str) -> Result<(), DataplaneError> {
        self.tools
            .restore(exec, input)
            .map_err(|e| xtables_error(self.family, e))
    }

    fn save(&self, exec: &mut dyn Exec) -> Result<String, DataplaneError> {
        self.tools.save(exec).map_err(|e| xtables_error(self.family, e))
    }

    /// The rules of the built-in chains we jump from, one `-S` listing per
    /// chain (cheap: unlike a full save, it does not list our thousands of
    /// chains), each table introduced by a `# table NAME` marker line.
    fn list_builtins(&self, exec: &mut dyn Exec) -> Result<String, DataplaneError> {
        let mut pairs: Vec<(Table, &str)> = rules::jumps(true).iter().map(|j| (j.table, j.from)).collect();
        pairs.sort();
        pairs.dedup();
        let mut out = String::new();
        for (table, chain) in pairs {
            let listing = self
                .tools
                .list(exec, table, chain)
                .map_err(|e| xtables_error(self.family, e))?;
            let _ = writeln!(out, "# table {}", table.name());
            out.push_str(&listing);
        }
        Ok(out)
    }

    /// The periodic drift check: our canary chain in each table, then the
    /// jumps from the built-in chains (one `-S` per built-in chain). Neither
    /// lists our thousands of service chains. `None`: nothing drifted (or
    /// nothing was programmed yet, the first full sync is owed anyway).
    fn check_drift(&self, exec: &mut dyn Exec) -> Result<Option<String>, DataplaneError> {
        if self.discover {
            return Ok(None);
        }
        for table in [Table::Nat, Table::Filter] {
            match self.tools.list(exec, table, rules::CANARY) {
                Ok(_) => {}
                Err(ToolError::Failed { stderr, .. }) => {
                    return Ok(Some(format!(
                        "{} {} table: canary chain {} is gone ({})",
                        self.family,
                        table.name(),
                        rules::CANARY,
                        stderr.trim()
                    )));
                }
                Err(e) => return Err(xtables_error(self.family, e)),
            }
        }
        let missing = missing_jumps(&self.list_builtins(exec)?, self.localhost);
        if let Some(j) = missing.first() {
            return Ok(Some(format!(
                "{} {} table: {} jump(s) from built-in chains missing, first {} {}",
                self.family,
                j.table.name(),
                missing.len(),
                j.from,
                j.spec
            )));
        }
        Ok(None)
    }

    /// Drop from `desired` every service port whose chain names collide
    /// with another's. Ports already programmed keep their names (they are
    /// claimed first); a refused port keeps its previous rules if it had
    /// any, else gets none. Updates `collided`.
    fn without_collisions(
        &mut self,
        mut desired: BTreeMap<ServicePortKey, PortRules>,
    ) -> BTreeMap<ServicePortKey, PortRules> {
        let mut claimed: HashMap<String, ServicePortKey> = HashMap::new();
        let none = HashMap::new();
        let released = HashSet::new();
        let (first, then): (Vec<&ServicePortKey>, Vec<&ServicePortKey>) =
            desired.keys().partition(|k| self.applied.contains_key(*k));
        let mut refused = Vec::new();
        for key in first.into_iter().chain(then) {
            let rules = &desired[key];
            match collision(key, rules, &none, &claimed, &released) {
                None => claimed.extend(rules.chains.iter().map(|c| (c.name.clone(), key.clone()))),
                Some((chain, other)) => {
                    log_collision(self.family, key, &chain, &other);
                    refused.push(key.clone());
                }
            }
        }
        self.collided.clear();
        for key in refused {
            desired.remove(&key);
            if let Some(old) = self.applied.get(&key)
                && collision(&key, old, &none, &claimed, &released).is_none()
            {
                claimed.extend(old.chains.iter().map(|c| (c.name.clone(), key.clone())));
                desired.insert(key.clone(), old.clone());
            }
            self.collided.insert(key);
        }
        desired
    }

    fn full_sync(
        &mut self,
        exec: &mut dyn Exec,
        table: &BackendTable,
        settings: &NodeSettings,
        hasher: ChainHasher,
        stats: &mut SyncStats,
    ) -> Result<(), DataplaneError> {
        let desired = self.without_collisions(desired(table, self.family, settings, hasher));
        self.localhost = localhost(settings, self.family);
        let listing = if self.discover {
            // Chains a previous run left behind (an agent restart, a crash):
            // they are ours to delete if no longer wanted.
            let save = self.save(exec)?;
            for (t, chains) in xtables::chains_of(&save, ChainOwner::IptablesMode) {
                self.known_chains.entry(t).or_default().extend(chains);
            }
            save
        } else {
            self.list_builtins(exec)?
        };
        let jumps = missing_jumps(&listing, self.localhost);
        if !self.localhost {
            for j in stray_jumps(&listing) {
                self.tools.delete_jump(exec, &j);
            }
        }
        if desired.len() > self.chunk {
            // iptables-nft-restore (1.8.9) with --noflush takes time
            // quadratic in the chains one transaction declares (measured at
            // 10,000 services x 10 endpoints: 106 s cold and 122 s warm as one
            // transaction; 1.0-1.5 s per 1,000 services). So a large full
            // sync first rewrites the services' own chains in chunks (each
            // chunk atomic, each service's chains complete within its chunk,
            // dispatch rules still pointing at chains that exist), then
            // rewrites the static and dispatch chains and deletes stale
            // chains in one last transaction.
            let keys: Vec<&ServicePortKey> = desired.keys().collect();
            for chunk in keys.chunks(self.chunk) {
                let input = own_chains_restore(chunk.iter().map(|k| &desired[*k]), self.family, settings);
                self.restore(exec, &input)?;
                stats.bytes_written += input.len();
            }
            let dispatch_only: BTreeMap<ServicePortKey, PortRules> = desired
                .iter()
                .map(|(k, r)| {
                    (
                        k.clone(),
                        PortRules {
                            dispatch: r.dispatch.clone(),
                            chains: Vec::new(),
                        },
                    )
                })
                .collect();
            // Known chains that are not rewritten above stay declared (and
            // deleted, if stale) in the last transaction.
            let rewritten: HashSet<&str> = desired
                .values()
                .flat_map(|r| r.chains.iter().map(|o| o.name.as_str()))
                .collect();
            let mut keep = self.known_chains.clone();
            keep.entry(Table::Nat)
                .or_default()
                .retain(|c| !rewritten.contains(c.as_str()));
            let input = full_restore(&dispatch_only, self.family, settings, &keep, &jumps);
            self.restore(exec, &input)?;
            stats.bytes_written += input.len();
        } else {
            let input = full_restore(&desired, self.family, settings, &self.known_chains, &jumps);
            self.restore(exec, &input)?;
            stats.bytes_written += input.len();
        }
        stats.ports_written += desired.len();
        stats.ports_removed += self.applied.keys().filter(|k| !desired.contains_key(*k)).count();
        self.known_chains = BTreeMap::new();
        for t in [Table::Nat, Table::Filter] {
            let set = self.known_chains.entry(t).or_default();
            set.extend(
                rules::static_chains(t, settings.family(self.family), self.localhost)
                    .into_iter()
                    .map(|c| c.name),
            );
        }
        let nat = self.known_chains.entry(Table::Nat).or_default();
        nat.extend(desired.values().flat_map(|r| r.chains.iter().map(|c| c.name.clone())));
        self.owners = desired
            .iter()
            .flat_map(|(k, r)| r.chains.iter().map(move |c| (c.name.clone(), k.clone())))
            .collect();
        self.applied = desired.into_iter().collect();
        self.discover = false;
        Ok(())
    }

    fn partial_sync(
        &mut self,
        exec: &mut dyn Exec,
        table: &BackendTable,
        settings: &NodeSettings,
        hasher: ChainHasher,
        keys: &[&ServicePortKey],
        stats: &mut SyncStats,
    ) -> Result<(), DataplaneError> {
        // Ports refused for a collision are retried: their rival may be gone.
        let retried: Vec<ServicePortKey> = self.collided.iter().filter(|k| !keys.contains(k)).cloned().collect();
        let mut wanted: Vec<(&ServicePortKey, Option<PortRules>)> = keys
            .iter()
            .copied()
            .chain(retried.iter())
            .map(|k| {
                (
                    k,
                    table.plan(k).and_then(|p| port_rules(p, self.family, settings, hasher)),
                )
            })
            .collect();
        // Removals first: the names they give up may be taken in the same sync.
        wanted.sort_by_key(|(_, new)| new.is_some());
        let released: HashSet<String> = wanted
            .iter()
            .flat_map(|(k, new)| {
                let keep: HashSet<&str> = new
                    .iter()
                    .flat_map(|r| r.chains.iter().map(|c| c.name.as_str()))
                    .collect();
                self.applied
                    .get(*k)
                    .into_iter()
                    .flat_map(|old| old.chains.iter())
                    .filter(move |c| !keep.contains(c.name.as_str()))
                    .map(|c| c.name.clone())
            })
            .collect();
        let mut claimed: HashMap<String, ServicePortKey> = HashMap::new();
        let mut collided = BTreeSet::new();
        for (k, new) in &mut wanted {
            let Some(rules) = new.as_ref() else { continue };
            match collision(k, rules, &self.owners, &claimed, &released) {
                None => claimed.extend(rules.chains.iter().map(|c| (c.name.clone(), (*k).clone()))),
                Some((chain, other)) => {
                    log_collision(self.family, k, &chain, &other);
                    collided.insert((*k).clone());
                    // Keep what it had: no change for this port.
                    *new = self.applied.get(*k).cloned();
                }
            }
        }
        let changes: Vec<(&ServicePortKey, Option<&PortRules>, Option<&PortRules>)> = wanted
            .iter()
            .map(|(k, new)| (*k, self.applied.get(*k), new.as_ref()))
            .collect();
        let input = partial_restore(&changes);
        if !input.is_empty() {
            self.restore(exec, &input)?;
            stats.bytes_written += input.len();
        }
        self.collided = collided;
        let nat = self.known_chains.entry(Table::Nat).or_default();
        for (k, new) in wanted {
            if let Some(old) = self.applied.get(k) {
                for c in &old.chains {
                    nat.remove(&c.name);
                    if self.owners.get(&c.name) == Some(k) {
                        self.owners.remove(&c.name);
                    }
                }
            }
            if let Some(r) = &new {
                self.owners.extend(r.chains.iter().map(|c| (c.name.clone(), k.clone())));
            }
            match new {
                Some(r) => {
                    nat.extend(r.chains.iter().map(|c| c.name.clone()));
                    if self.applied.get(k) != Some(&r) {
                        stats.ports_written += 1;
                    }
                    self.applied.insert(k.clone(), r);
                }
                None => {
                    if self.applied.remove(k).is_some() {
                        stats.ports_removed += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// Remove every jump and chain of ours, leaving everything else alone
    /// (the IPVS layer's chains included: `--cleanup` runs that mode first).
    fn cleanup(&mut self, exec: &mut dyn Exec) -> Result<(), DataplaneError> {
        for j in rules::jumps(true) {
            self.tools.delete_jump(exec, &j);
        }
        let found = xtables::chains_of(&self.save(exec)?, ChainOwner::IptablesMode);
        self.tools
            .delete_chains(exec, &found)
            .map_err(|e| xtables_error(self.family, e))?;
        self.applied.clear();
        self.known_chains.clear();
        self.owners.clear();
        self.collided.clear();
        self.discover = true;
        Ok(())
    }
}

impl Dataplane for IptablesDataplane {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn sync(&mut self, table: &BackendTable, scope: &SyncScope) -> Result<SyncStats, DataplaneError> {
        let start = Instant::now();
        let mut stats = SyncStats::default();
        if scope.is_full() {
            self.refresh_node_port_addresses()?;
        }
        for fam in &mut self.families {
            match scope {
                SyncScope::Full => fam.full_sync(self.exec.as_mut(), table, &self.settings, self.hasher, &mut stats)?,
                SyncScope::Partial(changes) => {
                    let keys: Vec<&ServicePortKey> = changes.iter().collect();
                    fam.partial_sync(
                        self.exec.as_mut(),
                        table,
                        &self.settings,
                        self.hasher,
                        &keys,
                        &mut stats,
                    )?;
                }
            }
        }
        stats.duration = start.elapsed();
        Ok(stats)
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        for fam in &mut self.families {
            fam.cleanup(self.exec.as_mut())?;
        }
        Ok(())
    }

    fn check_drift(&mut self) -> Result<Drift, DataplaneError> {
        for fam in &self.families {
            if let Some(what) = fam.check_drift(self.exec.as_mut())? {
                return Ok(Drift::Found(what));
            }
        }
        Ok(Drift::None)
    }
}

#[cfg(test)]
mod tests;
