//! The nftables kernel seam: a ruleset model, two renderings of it (an
//! `nft -f` script for people and `render`, nf_tables netlink batches for
//! the kernel), a strict fake, the Maglev table, and the measured layout
//! (`LAYOUT.md` beside this file says what each packet meets and why).
//!
//! ```text
//! model (Table, Chain, Set, Rule, Stmt)      ── pure data, validated names, escaped comments
//!   ├── script::render      -> `nft -f` text
//!   ├── lower / encode      -> nf_tables expressions -> netlink messages
//!   │     └── netlink::Nft  -> batches over NETLINK_NETFILTER, acks, GETGEN, dumps
//!   └── fake::FakeNft       -> the same transactions applied to a copy, refusing what the kernel refuses
//! ```
//! The backend ([`backend::NftablesDataplane`]) translates the shared
//! frontend plan ([`ruleset`]) into that model and commits the difference
//! through the kernel seam ([`kernel::NftKernel`]); [`render_script`] prints
//! what a full sync on a fresh node loads.

pub mod backend;
pub mod encode;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod kernel;
pub mod layout;
pub mod lower;
pub mod maglev;
pub mod model;
pub mod netlink;
pub mod programmed;
pub mod ruleset;
pub mod script;
pub mod tx;
pub mod wire;

pub use backend::{NftablesConfig, NftablesDataplane, render_script};
pub use programmed::programmed_frontends;
pub use ruleset::{NftSettings, Scheduler};

/// Everything that can go wrong in the nftables layer.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// A name that nft would not parse or the kernel would not store.
    #[error("invalid nftables name {name:?}: {why}")]
    InvalidName {
        /// The offending name (printed escaped).
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A model that is not self-consistent (a type mismatch, an unknown set,
    /// a statement in a chain that cannot hold it).
    #[error("invalid ruleset: {0}")]
    Invalid(String),
    /// The kernel refused one message of a batch; the whole batch was
    /// rolled back.
    #[error("the kernel refused {object}: {message} (errno {errno})")]
    Refused {
        /// Which object: "rule 2 of chain svc-x", "elements of map y", ...
        object: String,
        /// The kernel's text (extended ACK) or the errno's description.
        message: String,
        /// The positive errno.
        errno: i32,
    },
    /// The kernel's answer does not parse or does not fit the request.
    #[error("nf_tables reply: {0}")]
    Decode(String),
    /// The netlink socket failed.
    #[error("nf_tables netlink socket: {0}")]
    Io(#[from] std::io::Error),
    /// The fake refused a transaction (what the kernel would refuse).
    #[error("{0}")]
    FakeRefused(String),
}
