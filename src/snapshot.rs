//! Objects read from a file instead of a cluster: a multi-document YAML
//! file or a `kubectl get -o yaml` List. `render` (and later `diagnose`)
//! build the same table from it that the agent builds from watches.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use serde::Deserialize;

use crate::model::ServiceKey;
use crate::policy::NodeContext;
use crate::track::Tracker;
use crate::watch::convert::{self, ConvertError};

/// A file that cannot be read as Kubernetes objects.
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
    /// A document is not valid YAML.
    #[error("document {doc}: not valid YAML: {source}")]
    Yaml {
        /// 1-based document number.
        doc: usize,
        /// Why.
        #[source]
        source: serde_yaml::Error,
    },
    /// An object does not match its kind's schema.
    #[error("document {doc}: {kind} {name}: {source}")]
    Schema {
        /// 1-based document number.
        doc: usize,
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// The objects of a snapshot, by kind.
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
}

impl Snapshot {
    /// Read a snapshot file.
    pub fn from_file(path: &Path) -> Result<Snapshot, SnapshotError> {
        let text = std::fs::read_to_string(path).map_err(|source| SnapshotError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Snapshot::parse(&text)
    }

    /// Parse snapshot text.
    pub fn parse(text: &str) -> Result<Snapshot, SnapshotError> {
        let mut snap = Snapshot::default();
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value =
                serde_json::Value::deserialize(doc).map_err(|source| SnapshotError::Yaml { doc: i + 1, source })?;
            snap.add(i + 1, value)?;
        }
        Ok(snap)
    }

    fn add(&mut self, doc: usize, value: serde_json::Value) -> Result<(), SnapshotError> {
        if value.is_null() {
            return Ok(()); // an empty document (a trailing `---`)
        }
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("").to_string();
        if kind.ends_with("List") {
            if let Some(items) = value.get("items").and_then(|i| i.as_array()) {
                for item in items {
                    self.add(doc, item.clone())?;
                }
            }
            return Ok(());
        }
        let name = value
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .to_string();
        let api_version = value.get("apiVersion").and_then(|v| v.as_str()).unwrap_or("");
        let schema = |source| SnapshotError::Schema {
            doc,
            kind: kind.clone(),
            name: name.clone(),
            source,
        };
        match (kind.as_str(), api_version) {
            ("Service", "v1") => self.services.push(serde_json::from_value(value).map_err(schema)?),
            ("EndpointSlice", "discovery.k8s.io/v1") => {
                self.slices.push(serde_json::from_value(value).map_err(schema)?)
            }
            ("Node", "v1") => self.nodes.push(serde_json::from_value(value).map_err(schema)?),
            ("Pod", "v1") => self.pods.push(serde_json::from_value(value).map_err(schema)?),
            _ => {
                *self
                    .skipped
                    .entry(format!("{api_version} {kind}").trim().to_string())
                    .or_default() += 1
            }
        }
        Ok(())
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
        let mut tracker = Tracker::new(NodeContext::new(node_name));
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
        if let Some(node) = self.node(node_name) {
            match convert::node(node) {
                Ok(n) => {
                    tracker.set_node(Some(&n));
                }
                Err(e) => errors.push(e),
            }
        }
        tracker.reset_services(services, &[]);
        tracker.reset_slices(slices, &[]);
        (tracker, errors)
    }

    /// The Service object with this key.
    pub fn service(&self, key: &ServiceKey) -> Option<&core::Service> {
        self.services.iter().find(|s| convert::service_key(s) == *key)
    }
}
