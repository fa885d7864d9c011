//! Objects read from a file instead of a cluster: a multi-document YAML (or
//! JSON) file or a `kubectl get -o yaml` List. `render` and `diagnose` build
//! the same table from it that the agent builds from watches.
//!
//! The file is decoded as a stream, object by object: the YAML parser
//! (`serde-saphyr`) reads events from the file as it goes, each object
//! (a document, or one item of a List) becomes a small JSON value, is
//! decoded into its Kubernetes type with the field path of any error
//! (`serde_path_to_error`), and is then kept in one representation only:
//! the model for `render` ([`RenderInput`]), the typed object for
//! `diagnose` ([`Snapshot`]). So memory follows what is kept, not the size of
//! the text, and an object that does not decode is reported as
//! `Kind namespace/name: field.path: problem` while the rest is used.
//!
//! Hostile files are refused with a clear error, within the limits below: a
//! file larger than [`MAX_SNAPSHOT_BYTES`], an alias bomb (more than
//! [`MAX_ALIAS_REPLAYED_EVENTS`] events replayed through `*aliases`, or more
//! than [`MAX_ALIASES`] aliases), nesting deeper than [`MAX_DEPTH`].

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::marker::PhantomData;
use std::path::Path;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, de::IgnoredAny};
use serde_json::Value;

use crate::model::{self, NodeInfo, ServiceKey};
use crate::policy::NodeContext;
use crate::track::Tracker;
use crate::watch::convert::{self, ConvertError};
use crate::watch::validate;

/// The largest snapshot file read: about 50,000 Services with 10 endpoints
/// each in `kubectl get -o yaml` form. Larger files are refused before
/// anything is parsed.
pub const MAX_SNAPSHOT_BYTES: u64 = 64 * 1024 * 1024;
/// Most `*alias` references in one document. Kubernetes never writes
/// aliases; a hand-written file has a few.
pub const MAX_ALIASES: usize = 10_000;
/// Most parser events replayed through aliases in one document: the bound
/// on what a "billion laughs" file can expand to (an event is one scalar or
/// one collection start/end).
pub const MAX_ALIAS_REPLAYED_EVENTS: usize = 100_000;
/// Deepest nesting of collections (a Pod, the deepest kind read, needs ~15).
pub const MAX_DEPTH: usize = 64;

/// A file that cannot be read as Kubernetes objects at all.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_SNAPSHOT_BYTES`].
    #[error("{path}: the file has more than {limit} bytes (MAX_SNAPSHOT_BYTES); refusing to read it")]
    TooLarge {
        /// The file.
        path: String,
        /// The limit.
        limit: u64,
    },
    /// A resource limit of the YAML parser was exceeded (an alias bomb,
    /// absurd nesting): nothing of the file is used.
    #[error("document {doc}: refusing the file: {message}")]
    Limit {
        /// 1-based document number.
        doc: usize,
        /// What was exceeded (escaped).
        message: String,
    },
}

/// An object, or a document, that could not be used; the rest of the file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectError {
    /// 1-based document number.
    pub doc: usize,
    /// 0-based index in the List's `items`, for an item of a List.
    pub item: Option<usize>,
    /// What is wrong: `Kind namespace/name: field.path: problem`. For a
    /// document that is not valid YAML at all, the kind is `Document`.
    pub error: ConvertError,
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {}", self.error, self.doc)?;
        if let Some(i) = self.item {
            write!(f, ", items[{i}]")?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for ObjectError {}

/// The kinds a snapshot reads (others are counted and skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `v1 Service`.
    Service,
    /// `discovery.k8s.io/v1 EndpointSlice`.
    EndpointSlice,
    /// `v1 Node`.
    Node,
    /// `v1 Pod`.
    Pod,
}

impl Kind {
    fn of(api_version: &str, kind: &str) -> Option<Kind> {
        match (api_version, kind) {
            ("v1", "Service") => Some(Kind::Service),
            ("discovery.k8s.io/v1", "EndpointSlice") => Some(Kind::EndpointSlice),
            ("v1", "Node") => Some(Kind::Node),
            ("v1", "Pod") => Some(Kind::Pod),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
        }
    }
}

/// Decode one object's JSON value into its Kubernetes type; a type error
/// names the object and the field path.
pub fn decode<T: DeserializeOwned>(kind: Kind, value: Value) -> Result<T, ConvertError> {
    let object = object_name(&value, kind != Kind::Node);
    serde_path_to_error::deserialize(value).map_err(|e| ConvertError {
        kind: kind.name(),
        object,
        field: e.path().to_string(),
        message: validate::escape_controls(&e.inner().to_string()),
    })
}

/// `namespace/name` (or `name` for a cluster-scoped kind) of an undecoded
/// object, for messages; the namespace defaults as `kubectl` does.
fn object_name(value: &Value, namespaced: bool) -> String {
    let text = |p: &str| match value.pointer(p) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    let name = text("/metadata/name").unwrap_or_default();
    if namespaced {
        format!(
            "{}/{name}",
            text("/metadata/namespace").unwrap_or_else(|| "default".into())
        )
    } else {
        name
    }
}

/// What a reader keeps of each object it decodes: one representation only.
pub trait Keep {
    /// What is kept.
    type Output;
    /// Keep (or drop, `Ok(None)`) one object of a kind the snapshot reads.
    fn keep(kind: Kind, value: Value) -> Result<Option<Self::Output>, ConvertError>;
}

/// The typed objects (for `diagnose`, which reads every field).
#[derive(Debug, Clone)]
pub enum TypedObject {
    /// A Service.
    Service(Box<core::Service>),
    /// An EndpointSlice.
    Slice(Box<discovery::EndpointSlice>),
    /// A Node.
    Node(Box<core::Node>),
    /// A Pod.
    Pod(Box<core::Pod>),
}

/// Keeps typed objects.
pub struct KeepTyped;

impl Keep for KeepTyped {
    type Output = TypedObject;
    fn keep(kind: Kind, value: Value) -> Result<Option<TypedObject>, ConvertError> {
        Ok(Some(match kind {
            Kind::Service => TypedObject::Service(decode(kind, value)?),
            Kind::EndpointSlice => TypedObject::Slice(decode(kind, value)?),
            Kind::Node => TypedObject::Node(decode(kind, value)?),
            Kind::Pod => TypedObject::Pod(decode(kind, value)?),
        }))
    }
}

/// A converted object (for `render`, which needs only the model).
#[derive(Debug, Clone)]
pub enum ModelObject {
    /// A Service's ports.
    Service(model::Service),
    /// An EndpointSlice.
    Slice(model::Slice),
    /// A Node, by name.
    Node(String, NodeInfo),
}

/// Converts each object into the model straight away, with kube-proxy's
/// label selector applied; Pods are dropped.
pub struct KeepModel;

impl Keep for KeepModel {
    type Output = ModelObject;
    fn keep(kind: Kind, value: Value) -> Result<Option<ModelObject>, ConvertError> {
        Ok(match kind {
            Kind::Service => {
                let svc: core::Service = decode(kind, value)?;
                if !convert::selected_by_proxy(&svc.metadata) {
                    return Ok(None);
                }
                Some(ModelObject::Service(convert::service(&svc)?))
            }
            Kind::EndpointSlice => {
                let slice: discovery::EndpointSlice = decode(kind, value)?;
                if !convert::selected_by_proxy(&slice.metadata) {
                    return Ok(None);
                }
                convert::slice(&slice)?.map(ModelObject::Slice)
            }
            Kind::Node => {
                let node: core::Node = decode(kind, value)?;
                let info = convert::node(&node)?;
                Some(ModelObject::Node(node.metadata.name.unwrap_or_default(), info))
            }
            Kind::Pod => None,
        })
    }
}

/// What one pass over a file produced.
#[derive(Debug)]
pub struct Decoded<T> {
    /// The kept objects, in file order.
    pub objects: Vec<T>,
    /// Objects (and documents) that could not be used.
    pub errors: Vec<ObjectError>,
    /// Objects of other kinds, by `apiVersion kind`.
    pub skipped: BTreeMap<String, usize>,
}

/// Read a snapshot file object by object, keeping what `K` keeps.
pub fn read_file<K: Keep>(path: &Path) -> Result<Decoded<K::Output>, SnapshotError> {
    let display = path.display().to_string();
    let read_err = |source| SnapshotError::Read {
        path: display.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if meta.is_file() && meta.len() > MAX_SNAPSHOT_BYTES {
        return Err(SnapshotError::TooLarge {
            path: display,
            limit: MAX_SNAPSHOT_BYTES,
        });
    }
    // Not a plain file (a pipe, /dev/zero): the limit holds while reading.
    let mut limited = std::io::BufReader::new(file).take(MAX_SNAPSHOT_BYTES + 1);
    let decoded = read::<K, _>(&mut limited)?;
    if limited.limit() == 0 {
        return Err(SnapshotError::TooLarge {
            path: display,
            limit: MAX_SNAPSHOT_BYTES,
        });
    }
    Ok(decoded)
}

fn parser_options() -> serde_saphyr::Options {
    let mut alias_limits = serde_saphyr::options::AliasLimits::default();
    alias_limits.max_total_replayed_events = MAX_ALIAS_REPLAYED_EVENTS;
    alias_limits.max_replay_stack_depth = MAX_DEPTH;
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            // Events are streamed, not kept: the byte limit bounds them.
            max_reader_input_bytes: Some(MAX_SNAPSHOT_BYTES as usize + 1),
            max_events: usize::MAX,
            max_nodes: usize::MAX,
            max_total_scalar_bytes: usize::MAX,
            max_depth: MAX_DEPTH,
            max_aliases: MAX_ALIASES,
            max_anchors: MAX_ALIASES,
            max_recorded_anchor_events: MAX_ALIAS_REPLAYED_EVENTS,
        },
        alias_limits: alias_limits,
        // As encoding/json (and kubectl without --validate=strict): the last
        // of repeated keys wins, rather than losing the whole document.
        duplicate_keys: serde_saphyr::options::DuplicateKeyPolicy::LastWins,
        // Messages quote no file text (it could hold control characters).
        with_snippet: false,
    }
}

/// Read snapshot text from any reader, object by object.
pub fn read<K: Keep, R: Read>(reader: &mut R) -> Result<Decoded<K::Output>, SnapshotError> {
    let mut out = Decoded {
        objects: Vec::new(),
        errors: Vec::new(),
        skipped: BTreeMap::new(),
    };
    let mut docs = serde_saphyr::read_with_options::<_, Doc<K>>(reader, parser_options()).peekable();
    let mut doc = 0;
    while let Some(result) = docs.next() {
        doc += 1;
        match result {
            Ok(d) => {
                for (item, outcome) in d.outcomes {
                    match outcome {
                        Outcome::Kept(o) => out.objects.push(o),
                        Outcome::Dropped => {}
                        Outcome::Skipped(kind) => *out.skipped.entry(kind).or_default() += 1,
                        Outcome::Failed(error) => out.errors.push(ObjectError { doc, item, error }),
                    }
                }
            }
            Err(e) => {
                let message = validate::escape_controls(&e.to_string());
                if is_limit(&e) {
                    return Err(SnapshotError::Limit { doc, message });
                }
                // A syntax error ends the stream; a document that is not an
                // object (a bare list, a scalar) does not.
                let rest = if docs.peek().is_none() {
                    "; the rest of the file was not read"
                } else {
                    ""
                };
                out.errors.push(ObjectError {
                    doc,
                    item: None,
                    error: ConvertError {
                        kind: "Document",
                        object: format!("#{doc}"),
                        field: ".".into(),
                        message: format!("{message}{rest}"),
                    },
                });
            }
        }
    }
    Ok(out)
}

fn is_limit(e: &serde_saphyr::Error) -> bool {
    use serde_saphyr::Error as E;
    match e {
        E::Budget { .. }
        | E::AliasReplayCounterOverflow { .. }
        | E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. } => true,
        E::IOError { .. } => true,
        other => {
            // Errors with context wrap the cause; match on the text as a fallback.
            let text = other.to_string();
            text.contains("budget") || text.contains("limit exceeded")
        }
    }
}

/// What became of one object.
enum Outcome<T> {
    Kept(T),
    /// Read, but not something this reader keeps (a Pod for `render`, a
    /// headless Service's label).
    Dropped,
    /// Another kind, by `apiVersion kind`.
    Skipped(String),
    Failed(ConvertError),
}

fn classify<K: Keep>(value: Value) -> Outcome<K::Output> {
    let (api_version, kind) = match &value {
        Value::Null => return Outcome::Dropped, // an empty document or item
        Value::Object(m) => (
            m.get("apiVersion").and_then(Value::as_str).unwrap_or(""),
            m.get("kind").and_then(Value::as_str).unwrap_or(""),
        ),
        _ => {
            return Outcome::Failed(ConvertError {
                kind: "Document",
                object: String::new(),
                field: ".".into(),
                message: "not a Kubernetes object (a mapping with apiVersion and kind)".into(),
            });
        }
    };
    let Some(k) = Kind::of(api_version, kind) else {
        let label = format!("{api_version} {kind}").trim().to_string();
        return Outcome::Skipped(validate::escape(&label));
    };
    match K::keep(k, value) {
        Ok(Some(o)) => Outcome::Kept(o),
        Ok(None) => Outcome::Dropped,
        Err(e) => Outcome::Failed(e),
    }
}

/// One YAML document: an object, or a List whose items are decoded one at
/// a time as the parser reaches them (`kubectl` writes `items` before
/// `kind`, so they are decoded first and kept only if the kind is a List).
struct Doc<K: Keep> {
    outcomes: Vec<(Option<usize>, Outcome<K::Output>)>,
}

impl<'de, K: Keep> Deserialize<'de> for Doc<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DocVisitor::<K>(PhantomData))
    }
}

struct DocVisitor<K>(PhantomData<K>);

impl<'de, K: Keep> Visitor<'de> for DocVisitor<K> {
    type Value = Doc<K>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Kubernetes object or List (a mapping)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc<K>, A::Error> {
        let mut fields = serde_json::Map::new();
        let mut items = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" {
                items = Some(map.next_value_seed(Items::<K>(PhantomData))?);
            } else {
                let v: Value = map.next_value()?;
                fields.insert(key, v);
            }
        }
        let is_list = fields
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k.ends_with("List"));
        let outcomes = match items {
            Some(items) if is_list => items.into_iter().enumerate().map(|(i, o)| (Some(i), o)).collect(),
            // No kind read has a top-level `items`; drop it.
            _ if is_list => Vec::new(),
            _ => vec![(None, classify::<K>(Value::Object(fields)))],
        };
        Ok(Doc { outcomes })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Doc<K>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Err(de::Error::custom(
            "a sequence is not a Kubernetes object (use a List with `items`)",
        ))
    }
}

struct Items<K>(PhantomData<K>);

impl<'de, K: Keep> DeserializeSeed<'de> for Items<K> {
    type Value = Vec<Outcome<K::Output>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, K: Keep> Visitor<'de> for Items<K> {
    type Value = Vec<Outcome<K::Output>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sequence of objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        // Each item is a JSON value only until it is classified and kept.
        while let Some(v) = seq.next_element::<Value>()? {
            out.push(classify::<K>(v));
        }
        Ok(out)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new()) // `items: null`, as `kubectl` writes an empty List
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
}

// === Snapshot: typed objects, for diagnose ===

/// The objects of a snapshot, by kind, typed (for `diagnose`).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Services.
    pub services: Vec<core::Service>,
    /// EndpointSlices (`discovery.k8s.io/v1`).
    pub slices: Vec<discovery::EndpointSlice>,
    /// Nodes.
    pub nodes: Vec<core::Node>,
    /// Pods (for diagnosis; the table ignores them).
    pub pods: Vec<core::Pod>,
    /// How many objects of other kinds were skipped, by kind.
    pub skipped: BTreeMap<String, usize>,
    /// Objects that could not be decoded (the rest were).
    pub errors: Vec<ObjectError>,
}

impl Snapshot {
    /// Read a snapshot file.
    pub fn from_file(path: &Path) -> Result<Snapshot, SnapshotError> {
        read_file::<KeepTyped>(path).map(Snapshot::from_decoded)
    }

    /// Parse snapshot text.
    pub fn parse(text: &str) -> Result<Snapshot, SnapshotError> {
        read::<KeepTyped, _>(&mut text.as_bytes()).map(Snapshot::from_decoded)
    }

    fn from_decoded(d: Decoded<TypedObject>) -> Snapshot {
        let mut snap = Snapshot {
            skipped: d.skipped,
            errors: d.errors,
            ..Snapshot::default()
        };
        for o in d.objects {
            match o {
                TypedObject::Service(s) => snap.services.push(*s),
                TypedObject::Slice(s) => snap.slices.push(*s),
                TypedObject::Node(n) => snap.nodes.push(*n),
                TypedObject::Pod(p) => snap.pods.push(*p),
            }
        }
        snap
    }

    /// The Node with this name, if the snapshot has it.
    pub fn node(&self, name: &str) -> Option<&core::Node> {
        self.nodes.iter().find(|n| n.metadata.name.as_deref() == Some(name))
    }

    /// Build the backend table the agent on `node_name` would build, with
    /// kube-proxy's label selector applied. Objects that fail conversion are
    /// left out and returned as errors.
    pub fn tracker(&self, node_name: &str) -> (Tracker, Vec<ConvertError>) {
        let mut errors = Vec::new();
        let mut services = Vec::new();
        for svc in self.services.iter().filter(|s| convert::selected_by_proxy(&s.metadata)) {
            match convert::service(svc) {
                Ok(s) => services.push(s),
                Err(e) => errors.push(e),
            }
        }
        let mut slices = Vec::new();
        for slice in self.slices.iter().filter(|s| convert::selected_by_proxy(&s.metadata)) {
            match convert::slice(slice) {
                Ok(Some(s)) => slices.push(s),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        let node = match self.node(node_name).map(convert::node) {
            Some(Ok(n)) => Some(n),
            Some(Err(e)) => {
                errors.push(e);
                None
            }
            None => None,
        };
        (build_tracker(node_name, services, slices, node.as_ref()), errors)
    }

    /// The Service object with this key.
    pub fn service(&self, key: &ServiceKey) -> Option<&core::Service> {
        self.services.iter().find(|s| convert::service_key(s) == *key)
    }
}

fn build_tracker(
    node_name: &str,
    services: Vec<model::Service>,
    slices: Vec<model::Slice>,
    node: Option<&NodeInfo>,
) -> Tracker {
    let mut tracker = Tracker::new(NodeContext::new(node_name));
    if node.is_some() {
        tracker.set_node(node);
    }
    tracker.reset_services(services, &[]);
    tracker.reset_slices(slices, &[]);
    tracker
}

// === RenderInput: the model only, for render ===

/// What `render` needs from a file: the table, this node, and what was
/// refused. Only the model is kept while reading.
pub struct RenderInput {
    /// The backend table the agent on the node would build.
    pub tracker: Tracker,
    /// Whether the file has a Node of that name (even one that failed).
    pub node_found: bool,
    /// That Node, converted.
    pub node: Option<NodeInfo>,
    /// Objects that could not be decoded or converted.
    pub errors: Vec<ObjectError>,
    /// Objects of other kinds, by `apiVersion kind`.
    pub skipped: BTreeMap<String, usize>,
}

impl RenderInput {
    /// Read a file for the agent on `node_name`.
    pub fn from_file(path: &Path, node_name: &str) -> Result<RenderInput, SnapshotError> {
        read_file::<KeepModel>(path).map(|d| RenderInput::from_decoded(d, node_name))
    }

    /// Read snapshot text for the agent on `node_name`.
    pub fn parse(text: &str, node_name: &str) -> Result<RenderInput, SnapshotError> {
        read::<KeepModel, _>(&mut text.as_bytes()).map(|d| RenderInput::from_decoded(d, node_name))
    }

    fn from_decoded(d: Decoded<ModelObject>, node_name: &str) -> RenderInput {
        let node_found = d
            .errors
            .iter()
            .any(|e| e.error.kind == "Node" && e.error.object == node_name);
        let mut services = Vec::new();
        let mut slices = Vec::new();
        let mut node = None;
        for o in d.objects {
            match o {
                ModelObject::Service(s) => services.push(s),
                ModelObject::Slice(s) => slices.push(s),
                ModelObject::Node(name, info) if name == node_name => node = Some(info),
                ModelObject::Node(..) => {}
            }
        }
        RenderInput {
            tracker: build_tracker(node_name, services, slices, node.as_ref()),
            node_found: node_found || node.is_some(),
            node,
            errors: d.errors,
            skipped: d.skipped,
        }
    }
}

#[cfg(test)]
mod tests;
