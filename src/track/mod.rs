//! Change tracking: the EndpointSlice cache, the backend table keyed by
//! service port, and the [`Tracker`] that applies deltas to both and answers
//! each with a [`ChangeSet`] of exactly the service ports whose rules changed.
//!
//! Cost model: an update to one Service or one EndpointSlice touches only the
//! entries of that Service, so it costs time proportional to that Service and
//! not to the cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use crate::model::{
    Endpoint, Name, NodeInfo, Protocol, Service, ServiceKey, ServicePortInfo, ServicePortKey, Slice, SliceKey,
};
use crate::policy::{self, NodeContext, PortPlan};

/// The service ports whose effective rules changed. Empty means: nothing a
/// dataplane would program changed, so no sync is needed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    ports: BTreeSet<ServicePortKey>,
}

impl ChangeSet {
    /// No change.
    pub fn new() -> ChangeSet {
        ChangeSet::default()
    }

    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// How many service ports changed.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Whether this service port changed.
    pub fn contains(&self, key: &ServicePortKey) -> bool {
        self.ports.contains(key)
    }

    /// The changed service ports, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &ServicePortKey> {
        self.ports.iter()
    }

    /// Mark a service port changed.
    pub fn insert(&mut self, key: ServicePortKey) {
        self.ports.insert(key);
    }

    /// Fold another ChangeSet into this one (coalescing between syncs).
    pub fn merge(&mut self, other: ChangeSet) {
        if self.ports.is_empty() {
            self.ports = other.ports;
        } else {
            self.ports.extend(other.ports);
        }
    }

    /// Take the contents, leaving this empty.
    pub fn take(&mut self) -> ChangeSet {
        std::mem::take(self)
    }
}

impl FromIterator<ServicePortKey> for ChangeSet {
    fn from_iter<I: IntoIterator<Item = ServicePortKey>>(iter: I) -> ChangeSet {
        ChangeSet {
            ports: iter.into_iter().collect(),
        }
    }
}

impl<'a> IntoIterator for &'a ChangeSet {
    type Item = &'a ServicePortKey;
    type IntoIter = std::collections::btree_set::Iter<'a, ServicePortKey>;
    fn into_iter(self) -> Self::IntoIter {
        self.ports.iter()
    }
}

// === BackendTable ===

/// One service port: its Service half, its endpoint half, and the plan the
/// two make together. Either half may arrive first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The Service port, once the Service is known.
    pub service: Option<Arc<ServicePortInfo>>,
    /// Endpoints from every slice of the Service, unique by address, sorted.
    pub endpoints: Vec<Endpoint>,
    /// What a dataplane programs: present exactly when `service` is.
    pub plan: Option<PortPlan>,
}

/// The backend table: every service port the agent knows, sorted by key so
/// that rendering and rule generation are deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendTable {
    entries: BTreeMap<ServicePortKey, Entry>,
}

impl BackendTable {
    /// One service port's entry.
    pub fn get(&self, key: &ServicePortKey) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// One service port's plan, if it programs anything.
    pub fn plan(&self, key: &ServicePortKey) -> Option<&PortPlan> {
        self.entries.get(key).and_then(|e| e.plan.as_ref())
    }

    /// Every service port that programs rules, sorted by key.
    pub fn plans(&self) -> impl Iterator<Item = (&ServicePortKey, &PortPlan)> {
        self.entries.iter().filter_map(|(k, e)| e.plan.as_ref().map(|p| (k, p)))
    }

    /// Every entry, including endpoint-only ones (slices ahead of their Service).
    pub fn entries(&self) -> impl Iterator<Item = (&ServicePortKey, &Entry)> {
        self.entries.iter()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The keys of one Service's entries. Keys sort by Service first, and ""
    /// and TCP are the smallest port name and protocol, so this is a range.
    fn service_keys(&self, service: &ServiceKey) -> Vec<ServicePortKey> {
        let start = ServicePortKey {
            service: service.clone(),
            port_name: Name::from(""),
            protocol: Protocol::Tcp,
        };
        self.entries
            .range((Bound::Included(start), Bound::Unbounded))
            .take_while(|(k, _)| k.service == *service)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Change one half of an entry, recompute its plan, and record the key
    /// if the plan changed.
    fn update(
        &mut self,
        key: &ServicePortKey,
        node: &NodeContext,
        changes: &mut ChangeSet,
        edit: impl FnOnce(&mut Entry) -> bool,
    ) {
        let entry = match self.entries.get_mut(key) {
            Some(e) => e,
            None => self.entries.entry(key.clone()).or_insert(Entry {
                service: None,
                endpoints: Vec::new(),
                plan: None,
            }),
        };
        if edit(entry) {
            replan(key, entry, node, changes);
        }
        // An entry with neither half is dropped, also when the edit found
        // nothing to change (a slice port with no endpoints and no Service).
        if entry.service.is_none() && entry.endpoints.is_empty() {
            self.entries.remove(key);
        }
    }

    /// Recompute every plan (the node's zone changed).
    fn replan_all(&mut self, node: &NodeContext, changes: &mut ChangeSet) {
        for (key, entry) in self.entries.iter_mut() {
            replan(key, entry, node, changes);
        }
    }
}

/// Recompute one entry's plan; record the key if it changed.
fn replan(key: &ServicePortKey, entry: &mut Entry, node: &NodeContext, changes: &mut ChangeSet) {
    let plan = entry
        .service
        .as_ref()
        .map(|info| policy::plan(info, &entry.endpoints, node));
    if plan != entry.plan {
        entry.plan = plan;
        changes.insert(key.clone());
    }
}

// === SliceCache ===

/// Slices grouped by the Service they belong to.
#[derive(Debug, Clone, Default)]
struct SliceCache {
    /// Service -> slice name -> slice. Slice names order the merge, which
    /// keeps the result independent of arrival order.
    by_service: HashMap<ServiceKey, BTreeMap<Name, Arc<Slice>>>,
    /// Which Service each slice currently belongs to.
    owner: HashMap<SliceKey, ServiceKey>,
}

/// Endpoints of one Service, per (port name, protocol).
type ServiceEndpoints = BTreeMap<(Name, Protocol), Vec<Endpoint>>;

impl SliceCache {
    /// Merge all slices of a Service into per-port endpoint lists: slice
    /// ports join Service ports by (name, protocol); an address that appears
    /// in two slices (an endpoint moving between slices) counts once, the
    /// ready copy winning.
    fn merged(&self, service: &ServiceKey, node: &NodeContext) -> ServiceEndpoints {
        let mut out: BTreeMap<(Name, Protocol), Vec<(Endpoint, usize)>> = BTreeMap::new();
        let Some(slices) = self.by_service.get(service) else {
            return BTreeMap::new();
        };
        for (order, slice) in slices.values().enumerate() {
            for port in &slice.ports {
                let list = out.entry((port.name.clone(), port.protocol)).or_default();
                list.reserve(slice.endpoints.len());
                for ep in &slice.endpoints {
                    let local = ep.node_name.as_ref().is_some_and(|n| *n == node.node_name);
                    let endpoint = Endpoint {
                        addr: std::net::SocketAddr::new(ep.ip, port.port),
                        ready: ep.ready,
                        serving: ep.serving,
                        terminating: ep.terminating,
                        local,
                        node_name: ep.node_name.clone(),
                        zone_hints: ep.zone_hints.clone(),
                        node_hints: ep.node_hints.clone(),
                    };
                    list.push((endpoint, order));
                }
            }
        }
        out.into_iter()
            .map(|(k, mut list)| {
                // Best copy of each address first, earliest slice on a tie.
                list.sort_by(|(a, ao), (b, bo)| {
                    a.addr
                        .cmp(&b.addr)
                        .then_with(|| b.precedence().cmp(&a.precedence()))
                        .then_with(|| ao.cmp(bo))
                });
                list.dedup_by(|(later, _), (first, _)| later.addr == first.addr);
                (k, list.into_iter().map(|(e, _)| e).collect())
            })
            .collect()
    }
}

// === Tracker ===

/// Owns the backend table and everything needed to keep it current. One
/// task owns it; every method is a plain `&mut self` call with no locking.
#[derive(Debug, Clone)]
pub struct Tracker {
    node: NodeContext,
    services: HashMap<ServiceKey, Service>,
    slices: SliceCache,
    table: BackendTable,
}

impl Tracker {
    /// An empty tracker for this node.
    pub fn new(node: NodeContext) -> Tracker {
        Tracker {
            node,
            services: HashMap::new(),
            slices: SliceCache::default(),
            table: BackendTable::default(),
        }
    }

    /// The backend table.
    pub fn table(&self) -> &BackendTable {
        &self.table
    }

    /// The node context the plans are computed for.
    pub fn node(&self) -> &NodeContext {
        &self.node
    }

    /// Number of Services known (including ones that program nothing).
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Number of EndpointSlices known.
    pub fn slice_count(&self) -> usize {
        self.slices.owner.len()
    }

    /// Add or replace a Service.
    pub fn apply_service(&mut self, service: Service) -> ChangeSet {
        let mut changes = ChangeSet::new();
        if self.services.get(&service.key) == Some(&service) {
            return changes;
        }
        self.set_service_ports(&service.key, &service.ports, &mut changes);
        self.services.insert(service.key.clone(), service);
        changes
    }

    /// Remove a Service. Its slices stay cached: they join it again if it
    /// comes back.
    pub fn delete_service(&mut self, key: &ServiceKey) -> ChangeSet {
        let mut changes = ChangeSet::new();
        if self.services.remove(key).is_some() {
            self.set_service_ports(key, &[], &mut changes);
        }
        changes
    }

    /// Replace every Service with a relisted set: what was not relisted is
    /// deleted, except `keep` (relisted, but not convertible, so the last
    /// good version stays programmed).
    pub fn reset_services(&mut self, services: Vec<Service>, keep: &[ServiceKey]) -> ChangeSet {
        let mut listed: std::collections::HashSet<ServiceKey> = services.iter().map(|s| s.key.clone()).collect();
        listed.extend(keep.iter().cloned());
        let gone: Vec<ServiceKey> = self.services.keys().filter(|k| !listed.contains(*k)).cloned().collect();
        let mut changes = ChangeSet::new();
        for key in gone {
            changes.merge(self.delete_service(&key));
        }
        for service in services {
            changes.merge(self.apply_service(service));
        }
        changes
    }

    /// Add or replace an EndpointSlice.
    pub fn apply_slice(&mut self, slice: Slice) -> ChangeSet {
        let mut changes = ChangeSet::new();
        for service in self.store_slice(slice) {
            self.refresh_endpoints(&service, &mut changes);
        }
        changes
    }

    /// Remove an EndpointSlice.
    pub fn delete_slice(&mut self, key: &SliceKey) -> ChangeSet {
        let mut changes = ChangeSet::new();
        if let Some(owner) = self.unstore_slice(key) {
            self.refresh_endpoints(&owner, &mut changes);
        }
        changes
    }

    /// Replace every EndpointSlice with a relisted set (see [`Tracker::reset_services`]).
    /// The cache is updated first and each affected Service is merged once,
    /// so an endpoint that moved between slices while the watch was down
    /// reports no change.
    pub fn reset_slices(&mut self, slices: Vec<Slice>, keep: &[SliceKey]) -> ChangeSet {
        let mut listed: std::collections::HashSet<SliceKey> = slices.iter().map(|s| s.key.clone()).collect();
        listed.extend(keep.iter().cloned());
        let gone: Vec<SliceKey> = self
            .slices
            .owner
            .keys()
            .filter(|k| !listed.contains(*k))
            .cloned()
            .collect();
        let mut affected = std::collections::BTreeSet::new();
        for key in gone {
            affected.extend(self.unstore_slice(&key));
        }
        for slice in slices {
            affected.extend(self.store_slice(slice));
        }
        let mut changes = ChangeSet::new();
        for service in affected {
            self.refresh_endpoints(&service, &mut changes);
        }
        changes
    }

    /// Put a slice into the cache; returns the Services whose endpoints may
    /// have changed (none when the slice is unchanged; two when its
    /// service-name label moved it from one Service to another).
    fn store_slice(&mut self, slice: Slice) -> Vec<ServiceKey> {
        let key = slice.key.clone();
        let service = slice.service.clone();
        let previous_owner = self.slices.owner.insert(key.clone(), service.clone());
        let slices = self.slices.by_service.entry(service.clone()).or_default();
        if slices.get(&key.name).is_some_and(|old| **old == slice) {
            return Vec::new();
        }
        slices.insert(key.name.clone(), Arc::new(slice));
        let mut affected = vec![service.clone()];
        if let Some(old_owner) = previous_owner.filter(|o| *o != service) {
            self.remove_from_service(&old_owner, &key.name);
            affected.push(old_owner);
        }
        affected
    }

    /// Take a slice out of the cache; returns the Service it belonged to.
    fn unstore_slice(&mut self, key: &SliceKey) -> Option<ServiceKey> {
        let owner = self.slices.owner.remove(key)?;
        self.remove_from_service(&owner, &key.name);
        Some(owner)
    }

    /// Take the agent's own Node (or its absence). Only the zone shapes the
    /// rules (topology hints); a zone change replans every service port.
    pub fn set_node(&mut self, node: Option<&NodeInfo>) -> ChangeSet {
        let zone = node.and_then(|n| n.zone.as_deref()).map(Name::from);
        let mut changes = ChangeSet::new();
        if zone != self.node.zone {
            self.node.zone = zone;
            self.table.replan_all(&self.node, &mut changes);
        }
        changes
    }

    fn remove_from_service(&mut self, service: &ServiceKey, slice_name: &Name) {
        if let Some(slices) = self.slices.by_service.get_mut(service) {
            slices.remove(slice_name);
            if slices.is_empty() {
                self.slices.by_service.remove(service);
            }
        }
    }

    fn set_service_ports(&mut self, service: &ServiceKey, ports: &[Arc<ServicePortInfo>], changes: &mut ChangeSet) {
        for key in self.table.service_keys(service) {
            if !ports.iter().any(|p| p.key == key) {
                self.table
                    .update(&key, &self.node, changes, |e| e.service.take().is_some());
            }
        }
        for info in ports {
            self.table.update(&info.key, &self.node, changes, |e| {
                if e.service.as_ref() == Some(info) {
                    return false;
                }
                e.service = Some(Arc::clone(info));
                true
            });
        }
    }

    fn refresh_endpoints(&mut self, service: &ServiceKey, changes: &mut ChangeSet) {
        let mut merged = self.slices.merged(service, &self.node);
        for key in self.table.service_keys(service) {
            let endpoints = merged
                .remove(&(key.port_name.clone(), key.protocol))
                .unwrap_or_default();
            self.table.update(&key, &self.node, changes, |e| {
                set_if_changed(&mut e.endpoints, endpoints)
            });
        }
        for ((port_name, protocol), endpoints) in merged {
            let key = ServicePortKey {
                service: service.clone(),
                port_name,
                protocol,
            };
            self.table.update(&key, &self.node, changes, |e| {
                set_if_changed(&mut e.endpoints, endpoints)
            });
        }
    }
}

fn set_if_changed<T: PartialEq>(slot: &mut T, value: T) -> bool {
    if *slot == value {
        false
    } else {
        *slot = value;
        true
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
