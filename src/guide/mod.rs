//! The guide point: stores the history, grants the primary's lease,
//! detects failures, chooses and promotes targets, forwards state to
//! backups, and announces the primary. See `docs/cluster-protocol.md`
//! (the contract with the node agent) and `docs/guide.md` (operators).
//!
//! # Layout
//! - [`config`]: the `guide.toml` file.
//! - [`store`]: the durable SQLite store (history, initial state, node
//!   status, migrations, meta) next to the blob store.
//! - [`coord`]: the coordination interface (epoch, primary, membership).
//! - [`history`]: the in-memory history, its tree model, tail and gap
//!   checks (pure logic).
//! - [`state`]: the shared state of a running guide (nodes, links, roles).
//! - [`server`]: the one cluster port (dispatch by greeting), start-up and
//!   shutdown. [`links`]: a control link (nodes, subscribers, operators).
//! - [`forward`]: forwarding the history to backups.
//! - [`failover`]: lease watch, target choice, passive migration, auto
//!   migration. [`migrate`]: active migration (drain).
//! - [`status`]: the status JSON and table. [`cli`]: `drift guide`,
//!   `drift status`, `drift migrate`.

pub mod cli;
pub mod config;
pub mod coord;
pub mod failover;
pub mod forward;
pub mod gc;
pub mod history;
pub mod links;
pub mod migrate;
pub mod node_msgs;
pub mod server;
pub mod state;
pub mod status;
pub mod store;

/// Everything that can go wrong in the guide library.
#[derive(Debug, thiserror::Error)]
pub enum GuideError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Link(#[from] crate::cluster::link::LinkError),
    #[error(transparent)]
    Xfer(#[from] crate::xfer::XferError),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("data directory {path} is in use by another guide (its lock is held)")]
    Locked { path: std::path::PathBuf },
    #[error("{0}")]
    Refused(String),
}

impl GuideError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        GuideError::Io { context: context.into(), source }
    }
}
