//! The node agent: a node's link to the guide point (heartbeats, lease,
//! shipping as primary, applying as backup, quarantine). See
//! `docs/cluster-protocol.md` (the contract with the guide) and the
//! Cluster section of `docs/node.md`.
//!
//! # Layout
//! - [`config`]: the `[cluster]` section of node.toml.
//! - [`gate`]: what the FTP side asks (serve? change? acknowledge?).
//! - [`session`]: one control link (Hello, Welcome, heartbeats, messages).
//! - [`ship`]: the primary's shipping of its journal and contents.
//! - [`apply`]: the backup's dial-back receiver and replay of `Forward`.
//! - [`quarantine`]: moving a tail the guide never had out of the tree.
//! - [`threat`], [`load`]: what each heartbeat reports.
//! - [`persist`]: the confirmed seq and epoch kept in the state directory.

pub mod apply;
pub mod config;
pub mod gate;
pub mod load;
pub mod persist;
pub mod quarantine;
pub mod session;
pub mod ship;
pub mod threat;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drift_fs::Journal;
use tokio::sync::{watch, Notify};

use crate::xfer::ClusterKey;
use config::ClusterConfig;
use gate::Gate;
use persist::Store;

use super::limits::Sessions;
use super::state::StateHandle;
use super::zerocopy::Transfers;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cluster key: {0}")]
    Key(crate::xfer::XferError),
    #[error(transparent)]
    Persist(#[from] persist::PersistError),
    #[error("cannot create {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
}

/// Shortest and longest wait between two attempts to reach the guide.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the agent works with; built by `node::run`.
pub struct Agent {
    pub cfg: ClusterConfig,
    pub key: ClusterKey,
    pub gate: Arc<Gate>,
    /// The mount's journal (the node mounts in-process).
    pub journal: Arc<Journal>,
    pub backing: PathBuf,
    /// The mountpoint: homes are created through it, so they are journaled.
    pub served_root: PathBuf,
    pub state: Arc<StateHandle>,
    pub users_file: PathBuf,
    pub service_file: PathBuf,
    pub sessions: Arc<Sessions>,
    pub transfers: Arc<Transfers>,
    pub store: Store,
    /// The FTP address others should use.
    pub advertise: String,
    reload: Notify,
}

/// What `Agent::new` needs from the node.
pub struct Parts {
    pub cfg: ClusterConfig,
    pub gate: Arc<Gate>,
    pub journal: Arc<Journal>,
    pub backing: PathBuf,
    pub served_root: PathBuf,
    pub state: Arc<StateHandle>,
    pub users_file: PathBuf,
    pub service_file: PathBuf,
    pub sessions: Arc<Sessions>,
    pub transfers: Arc<Transfers>,
}

impl Agent {
    pub fn new(p: Parts) -> Result<Agent, AgentError> {
        let key = ClusterKey::load(&p.cfg.key_file).map_err(AgentError::Key)?;
        let store = Store::open(&p.cfg.state_dir)?;
        for sub in ["inbox", "outbox", "xfer-state"] {
            let path = p.cfg.state_dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|source| AgentError::Dir { path, source })?;
        }
        // Outbox copies are private to one shipping attempt: any left by a
        // node that died are stale.
        if let Ok(rd) = std::fs::read_dir(p.cfg.state_dir.join("outbox")) {
            for ent in rd.flatten() {
                let _ = std::fs::remove_file(ent.path());
            }
        }
        let advertise = p.cfg.advertise.clone().unwrap_or_else(|| p.state.current().service.listen.to_string());
        Ok(Agent {
            key,
            gate: p.gate,
            journal: p.journal,
            backing: p.backing,
            served_root: p.served_root,
            state: p.state,
            users_file: p.users_file,
            service_file: p.service_file,
            sessions: p.sessions,
            transfers: p.transfers,
            store,
            advertise,
            reload: Notify::new(),
            cfg: p.cfg,
        })
    }

    /// The node reloaded its initial state (SIGHUP).
    pub fn reloaded(&self) {
        self.reload.notify_one();
    }

    /// Keeps a link to the guide until `stop`: one session after another,
    /// with a bounded backoff between failed attempts.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        tracing::info!(node = %self.cfg.node_id, guide = %self.cfg.guide, ftp = %self.advertise, "cluster agent started");
        let mut backoff = MIN_BACKOFF;
        loop {
            if *stop.borrow() {
                break;
            }
            let outcome = tokio::select! {
                r = session::run(&self, &mut backoff) => r,
                _ = stop.wait_for(|s| *s) => break,
            };
            match outcome {
                Ok(session::End::Again) => {
                    backoff = MIN_BACKOFF;
                    continue;
                }
                Err(e) => e.log(&self.cfg.guide, backoff),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        tracing::info!("cluster agent stopped");
    }
}

/// Aborts a task when dropped (a session's helpers end with it).
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
