//! sliceproxy: a node-level kube-proxy replacement.
//!
//! Data flows one way: [`watch`] turns API objects into typed deltas,
//! [`track`] folds them into the backend table and answers with the service
//! ports that changed, [`policy`] decides which endpoints serve whom, and a
//! [`dataplane`] programs the difference. [`sync`] is the one task that owns
//! all of it.
//!
//! The `testing` feature adds the test fakes (`dataplane::memory`,
//! `dataplane::iptables::fake`, `dataplane::ipvs::fake`) and the object
//! builders ([`testing`]); unit tests, integration tests and benches use
//! them, a release build contains none of them.
#![forbid(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod diagnose;
pub mod model;
pub mod netaddr;
pub mod observe;
pub mod policy;
pub mod render;
pub mod snapshot;
pub mod sync;
pub mod track;
pub mod watch;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
