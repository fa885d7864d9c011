//! The kube-rs boundary. Three `kube-runtime` watchers (Services,
//! EndpointSlices, the agent's own Node) become one stream of typed
//! [`Event`]s. A (re)list arrives as one [`Update::Reset`] carrying every
//! relisted object, so the tracker can delete what was not relisted in the
//! same step it applies the rest: no half-empty table in between.

pub mod convert;
pub mod validate;

use std::fmt::Debug;
use std::pin::Pin;

use futures::{Stream, StreamExt, stream};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client};
use serde::de::DeserializeOwned;

use crate::model::{NodeInfo, Service, ServiceKey, Slice, SliceKey};
pub use convert::ConvertError;

/// A change to one kind of object.
#[derive(Debug, Clone, PartialEq)]
pub enum Update<T, K> {
    /// A complete (re)list. Everything not in `objects` or `keep` is gone.
    Reset {
        /// Every relisted object that converted.
        objects: Vec<T>,
        /// Relisted objects that failed to convert: their last good version
        /// stays, so one bad object never takes down working rules.
        keep: Vec<K>,
    },
    /// Added or modified.
    Apply(T),
    /// Deleted, or no longer something the agent programs.
    Delete(K),
}

/// One event for the agent task.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A Service changed.
    Service(Update<Service, ServiceKey>),
    /// An EndpointSlice changed.
    Slice(Update<Slice, SliceKey>),
    /// The agent's own Node changed (a Reset holds zero or one Node).
    Node(Update<NodeInfo, ()>),
    /// A watch failed; it retries by itself with backoff.
    WatchError {
        /// Which watch.
        resource: &'static str,
        /// What went wrong.
        message: String,
    },
    /// An object was refused by conversion and skipped (its previous version,
    /// if any, stays programmed).
    Invalid(ConvertError),
}

/// How one kind of object becomes updates: its conversion and its key.
trait Kind: Sized {
    type Object: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static;
    type Model;
    type Key;
    const NAME: &'static str;
    fn convert(o: &Self::Object) -> Result<Option<Self::Model>, ConvertError>;
    fn key(o: &Self::Object) -> Self::Key;
    fn event(u: Update<Self::Model, Self::Key>) -> Event;
}

struct Services;
struct Slices;
struct Nodes;

impl Kind for Services {
    type Object = core::Service;
    type Model = Service;
    type Key = ServiceKey;
    const NAME: &'static str = "services";
    fn convert(o: &core::Service) -> Result<Option<Service>, ConvertError> {
        convert::service(o).map(Some)
    }
    fn key(o: &core::Service) -> ServiceKey {
        convert::service_key(o)
    }
    fn event(u: Update<Service, ServiceKey>) -> Event {
        Event::Service(u)
    }
}

impl Kind for Slices {
    type Object = discovery::EndpointSlice;
    type Model = Slice;
    type Key = SliceKey;
    const NAME: &'static str = "endpointslices";
    fn convert(o: &discovery::EndpointSlice) -> Result<Option<Slice>, ConvertError> {
        convert::slice(o)
    }
    fn key(o: &discovery::EndpointSlice) -> SliceKey {
        convert::slice_key(o)
    }
    fn event(u: Update<Slice, SliceKey>) -> Event {
        Event::Slice(u)
    }
}

impl Kind for Nodes {
    type Object = core::Node;
    type Model = NodeInfo;
    type Key = ();
    const NAME: &'static str = "nodes";
    fn convert(o: &core::Node) -> Result<Option<NodeInfo>, ConvertError> {
        convert::node(o).map(Some)
    }
    fn key(_: &core::Node) {}
    fn event(u: Update<NodeInfo, ()>) -> Event {
        Event::Node(u)
    }
}

/// Folds raw watcher events into [`Update`]s: buffers a relist from `Init`
/// to `InitDone` and releases it as one Reset.
#[derive(Debug)]
pub struct Relister<T, K> {
    buffer: Option<(Vec<T>, Vec<K>)>,
}

impl<T, K> Default for Relister<T, K> {
    fn default() -> Self {
        Relister { buffer: None }
    }
}

/// A converted object, or why it could not be.
pub type Converted<T, K> = (K, Result<Option<T>, ConvertError>);

impl<T, K> Relister<T, K> {
    /// Feed one watcher event (already converted); returns the update to
    /// apply, if any, and a conversion error to report, if any.
    pub fn feed(&mut self, event: watcher::Event<Converted<T, K>>) -> (Option<Update<T, K>>, Option<ConvertError>) {
        match event {
            watcher::Event::Init => {
                // A relist restarted (maybe after a failure mid-list): drop
                // whatever the previous attempt buffered.
                self.buffer = Some((Vec::new(), Vec::new()));
                (None, None)
            }
            watcher::Event::InitApply((key, converted)) => {
                let (objects, keep) = self.buffer.get_or_insert_with(Default::default);
                match converted {
                    Ok(Some(o)) => objects.push(o),
                    Ok(None) => {}
                    Err(e) => {
                        keep.push(key);
                        return (None, Some(e));
                    }
                }
                (None, None)
            }
            watcher::Event::InitDone => {
                let (objects, keep) = self.buffer.take().unwrap_or_default();
                (Some(Update::Reset { objects, keep }), None)
            }
            watcher::Event::Apply((key, converted)) => match converted {
                Ok(Some(o)) => (Some(Update::Apply(o)), None),
                // Now something we do not program (e.g. an FQDN slice, a
                // removed service-name label): forget it.
                Ok(None) => (Some(Update::Delete(key)), None),
                Err(e) => (None, Some(e)),
            },
            watcher::Event::Delete((key, _)) => (Some(Update::Delete(key)), None),
        }
    }
}

/// Everything the watch layer needs to start.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// The agent's node name.
    pub node_name: String,
}

/// A boxed event stream.
pub type EventStream = Pin<Box<dyn Stream<Item = Event> + Send>>;

fn watch_kind<K: Kind + 'static>(api: Api<K::Object>, config: watcher::Config) -> EventStream
where
    K::Model: Send + 'static,
    K::Key: Send + 'static,
{
    let raw = watcher(api, config).default_backoff();
    let mut relister: Relister<K::Model, K::Key> = Relister::default();
    Box::pin(raw.flat_map(move |item| {
        let events: Vec<Event> = match item {
            Err(e) => vec![Event::WatchError {
                resource: K::NAME,
                message: e.to_string(),
            }],
            Ok(ev) => {
                let conv = |o: K::Object| (K::key(&o), K::convert(&o));
                let ev = match ev {
                    watcher::Event::Init => watcher::Event::Init,
                    watcher::Event::InitDone => watcher::Event::InitDone,
                    watcher::Event::InitApply(o) => watcher::Event::InitApply(conv(o)),
                    watcher::Event::Apply(o) => watcher::Event::Apply(conv(o)),
                    watcher::Event::Delete(o) => watcher::Event::Delete(conv(o)),
                };
                let (update, error) = relister.feed(ev);
                error
                    .map(Event::Invalid)
                    .into_iter()
                    .chain(update.map(K::event))
                    .collect()
            }
        };
        stream::iter(events)
    }))
}

/// Watch Services and EndpointSlices (with kube-proxy's label selector) and
/// this node, merged into one stream.
pub fn watch_all(client: Client, config: &WatchConfig) -> EventStream {
    let selector = watcher::Config::default().labels(convert::PROXY_LABEL_SELECTOR);
    let services = watch_kind::<Services>(Api::all(client.clone()), selector.clone());
    let slices = watch_kind::<Slices>(Api::all(client.clone()), selector);
    let node = watch_kind::<Nodes>(
        Api::all(client),
        watcher::Config::default().fields(&format!("metadata.name={}", config.node_name)),
    );
    Box::pin(stream::select(stream::select(services, slices), node))
}

#[cfg(test)]
mod tests;

/// The API client could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `--kubeconfig` could not be read or used.
    #[error("--kubeconfig {path}: {message}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// Neither `--kubeconfig` nor `--master`, and no in-cluster ServiceAccount.
    #[error("no --kubeconfig and not in a cluster: {0}")]
    NotInCluster(String),
    /// `--master` is not a URL.
    #[error("--master {value:?}: {message}")]
    Master {
        /// The value.
        value: String,
        /// Why.
        message: String,
    },
    /// The client could not be built (TLS settings and the like).
    #[error("{0}")]
    Client(#[from] kube::Error),
}

/// The API client as kube-proxy configures it: `--kubeconfig` (with
/// `--master` overriding its server), else `--master` alone, else the
/// in-cluster ServiceAccount.
pub async fn client(config: &crate::config::Config) -> Result<Client, ClientError> {
    let kubeconfig_error = |path: &std::path::Path, e: &dyn std::fmt::Display| ClientError::Kubeconfig {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let master_error = |value: &str, e: &dyn std::fmt::Display| ClientError::Master {
        value: value.to_string(),
        message: e.to_string(),
    };
    let mut kc = match (&config.kubeconfig, &config.master) {
        (Some(path), _) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| kubeconfig_error(path, &e))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| kubeconfig_error(path, &e))?
        }
        (None, Some(master)) => kube::Config::new(master.parse().map_err(|e| master_error(master, &e))?),
        (None, None) => kube::Config::incluster().map_err(|e| ClientError::NotInCluster(e.to_string()))?,
    };
    if let Some(master) = &config.master {
        kc.cluster_url = master.parse().map_err(|e| master_error(master, &e))?;
    }
    Ok(Client::try_from(kc)?)
}
