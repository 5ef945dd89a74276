//! The service node: an FTP server (libunftp + unftp-sbe-fs) on a drift-fs
//! mount, so every change a client makes lands in the journal, enforcing
//! the paper's *initial state* (users and service configuration).
//!
//! # Layout
//! - [`config`]: the node configuration file and the service file.
//! - [`users`]: the users file, argon2 password hashes, permissions.
//! - [`state`]: the initial state as one shared value, reloaded on SIGHUP.
//! - [`auth`]: login (passwords, per-user addresses, lockout).
//! - [`limits`]: session counts (total, per user).
//! - [`storage`]: the storage backend wrapper (permissions, paths, I/O,
//!   the 226-after-journal rule).
//! - [`server`]: the accept loop in front of libunftp (address filter,
//!   session limit, one libunftp `Server` per connection).
//! - [`mount`]: mounting drift-fs and reading its journal.
//! - [`cli`]: `drift node` and `drift user`.
//!
//! The user-facing description of the files is `docs/node.md`.

pub mod admin;
pub mod agent;
pub mod auth;
pub mod cli;
pub mod config;
pub mod limits;
pub mod mount;
pub mod server;
pub mod state;
pub mod storage;
pub mod users;
pub mod xferlog;
pub mod zerocopy;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use config::NodeConfig;
use limits::Sessions;
use state::{StateError, StateHandle};
use storage::{CommitLog, StorageContext};

/// Errors running a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Mount(#[from] drift_fs::FsError),
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error("cannot create home directory {home} of user {user}: {source}")]
    Home {
        user: String,
        home: String,
        source: std::io::Error,
    },
    #[error("cannot open the served directory {path}: {source}")]
    Root { path: std::path::PathBuf, source: std::io::Error },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot open the transfer log {path}: {source}")]
    TransferLog { path: xferlog::Destination, source: std::io::Error },
    #[error("the filesystem was unmounted from outside; stopping")]
    MountLost,
    #[error("cluster agent: {0}")]
    Agent(#[from] agent::AgentError),
}

/// Creates missing home directories through the served root (so they are
/// journaled), never following a symlink out of it.
pub fn ensure_homes(root: &Path, state: &state::InitialState) -> Result<(), NodeError> {
    let dir = cap_std::fs::Dir::open_ambient_dir(root, cap_std::ambient_authority()).map_err(|source| NodeError::Root {
        path: root.to_owned(),
        source,
    })?;
    for user in state.users.iter() {
        let rel = user.home_relative();
        if rel == Path::new(".") || dir.is_dir(&rel) {
            continue;
        }
        dir.create_dir_all(&rel).map_err(|source| NodeError::Home {
            user: user.name.clone(),
            home: user.home.clone(),
            source,
        })?;
        tracing::info!(user = %user.name, home = %user.home, "created home directory");
    }
    Ok(())
}

/// SIGHUP: lift every lockout, reopen the transfer log (after a
/// rotation) and reload the initial state for new sessions. In a cluster
/// the agent creates homes (only as primary) and ships the new state.
fn on_hup(front: &server::Front, root: &Path, addr: std::net::SocketAddr, agent: Option<&agent::Agent>) {
    front.lockout.clear();
    if let Err(e) = front.storage.xferlog.reopen() {
        tracing::error!(error = %e, "SIGHUP: cannot reopen the transfer log; its lines are being lost");
    }
    let state = &front.state;
    match state.reload() {
        Ok(summary) => {
            if let Some(asked) = summary.listen_ignored {
                tracing::warn!(%asked, %addr, "the listen address changes only on restart; keeping the old one");
            }
            if let Some(agent) = agent {
                tracing::info!(users = summary.users, "SIGHUP: initial state reloaded");
                agent.reloaded();
                return;
            }
            match ensure_homes(root, &state.current()) {
                Ok(()) => tracing::info!(users = summary.users, "SIGHUP: initial state reloaded"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: state reloaded, but a home directory is missing"),
            }
        }
        Err(e) => tracing::error!(error = %e, "SIGHUP: reload rejected; the previous state stays in force"),
    }
}

/// SIGINT/SIGTERM and SIGHUP that arrive before the serve loop listens for
/// them (while mounting, creating homes, binding). Without these flags
/// their default action would kill the node: a SIGHUP sent as soon as the
/// node logs that it listens, or a SIGTERM during the mount, would leave a
/// dead mount behind.
struct EarlySignals {
    stop: Arc<std::sync::atomic::AtomicBool>,
    hup: Arc<std::sync::atomic::AtomicBool>,
}

impl EarlySignals {
    fn install() -> Result<EarlySignals, NodeError> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let early = EarlySignals {
            stop: Arc::default(),
            hup: Arc::default(),
        };
        for (sig, flag) in [(SIGINT, &early.stop), (SIGTERM, &early.stop), (SIGHUP, &early.hup)] {
            signal_hook::flag::register(sig, flag.clone()).map_err(NodeError::Runtime)?;
        }
        Ok(early)
    }

    fn take_stop(&self) -> bool {
        self.stop.swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    fn take_hup(&self) -> bool {
        self.hup.swap(false, std::sync::atomic::Ordering::SeqCst)
    }
}

/// How long shutdown waits for sessions to close after telling them.
const SESSION_CLOSE_LIMIT: Duration = Duration::from_secs(3);

/// Runs a node until SIGINT/SIGTERM: loads the initial state, mounts,
/// serves FTP, reloads on SIGHUP, then stops the server and unmounts.
pub fn run(cfg: NodeConfig) -> Result<(), NodeError> {
    let early = EarlySignals::install()?;
    // Validate everything before touching the system.
    let state = Arc::new(StateHandle::load(&cfg.users_file, &cfg.service_file)?);
    // Configured by the node file's [log] section (see docs/node.md).
    let xferlog = Arc::new(
        xferlog::TransferLog::open(&cfg.transfer_log.destination, cfg.transfer_log.format).map_err(|source| {
            NodeError::TransferLog {
                path: cfg.transfer_log.destination.clone(),
                source,
            }
        })?,
    );
    let mount = mount::mount(&cfg)?;
    let served_root = match &mount {
        Some(m) => m.mountpoint().to_owned(),
        None => {
            tracing::warn!(dir = %cfg.backing.display(), "storage.fuse = false: serving the backing directory with NO journal (benchmarks and debugging only)");
            cfg.backing.clone()
        }
    };
    let commit: Option<Arc<dyn CommitLog>> = mount
        .as_ref()
        .map(|m| Arc::new(mount::JournalCommits::new(m)) as Arc<dyn CommitLog>);
    let gate = cfg
        .cluster
        .as_ref()
        .map(|c| Arc::new(agent::gate::Gate::new(c.ack, cfg.commit_timeout)));
    let result = (|| {
        // In a cluster only the primary creates homes (so they are in the
        // history); the agent does it when it becomes primary.
        if cfg.cluster.is_none() {
            ensure_homes(&served_root, &state.current())?;
        }
        let sessions = Arc::new(Sessions::default());
        let transfers = Arc::new(zerocopy::Transfers::default());
        let agent = match (&cfg.cluster, &mount, &gate) {
            (Some(c), Some(m), Some(g)) => Some(Arc::new(agent::Agent::new(agent::Parts {
                cfg: c.clone(),
                gate: g.clone(),
                journal: m.journal(),
                backing: cfg.backing.clone(),
                served_root: served_root.clone(),
                state: state.clone(),
                users_file: cfg.users_file.clone(),
                service_file: cfg.service_file.clone(),
                sessions: sessions.clone(),
                transfers: transfers.clone(),
            })?)),
            _ => None,
        };
        let ctx = Arc::new(StorageContext {
            served_root: served_root.clone(),
            state: state.clone(),
            sessions,
            commit,
            fsync_uploads: cfg.fsync_uploads,
            commit_timeout: cfg.commit_timeout,
            io_chunk: cfg.io_chunk,
            transfers,
            xferlog,
            gate: gate.clone(),
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("drift-node")
            .build()
            .map_err(NodeError::Runtime)?;
        let alive = || mount.as_ref().is_none_or(|m| m.is_alive());
        let transfers = ctx.transfers.clone();
        let outcome = rt.block_on(serve(ctx, &alive, &cfg.service_file, cfg.admin_socket.clone(), &early, agent));
        // Sessions have closed (or were given up on after a deadline);
        // what remains are blocking-pool threads, which need no wait.
        rt.shutdown_timeout(Duration::from_millis(100));
        // Transfer threads were told to stop; their files must be closed
        // before the unmount.
        if !transfers.wait_idle(Duration::from_secs(5)) {
            tracing::warn!("transfers still running after 5 s; unmounting anyway");
        }
        outcome
    })();
    if let Some(m) = mount {
        if let Err(e) = m.unmount() {
            tracing::error!(error = %e, "unmount failed");
            if result.is_ok() {
                return Err(e.into());
            }
        }
    }
    result
}

async fn serve(
    ctx: Arc<StorageContext>,
    alive: &dyn Fn() -> bool,
    service_file: &Path,
    admin_socket: Option<std::path::PathBuf>,
    early: &EarlySignals,
    agent: Option<Arc<agent::Agent>>,
) -> Result<(), NodeError> {
    use tokio::signal::unix::{signal, SignalKind};
    let state = ctx.state.clone();
    let root = ctx.served_root.clone();
    let transfers = ctx.transfers.clone();
    let proxy_trust = agent
        .as_ref()
        .filter(|a| !a.cfg.proxies.is_empty())
        .map(|a| Arc::new(crate::cluster::proxy_cred::ProxyTrust::new(a.key.clone(), a.cfg.proxies.clone())));
    let front = Arc::new(server::Front::new(ctx, proxy_trust));
    let listener = front.bind(service_file).await?;
    let addr = listener.local_addr().map_err(|source| server::ServerError::Bind {
        addr: state.current().service.listen,
        source,
    })?;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let admin = admin_socket.map(|path| {
        let mut stop = stop_rx.clone();
        let lockout = front.lockout.clone();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = admin::serve(path, lockout, stopped).await {
                tracing::error!(error = %e, "no admin socket: `drift user unlock` cannot reach this node (SIGHUP still lifts lockouts)");
            }
        })
    });
    let accept = tokio::spawn(front.clone().serve(listener, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    tracing::info!(%addr, root = %root.display(), users = state.current().users.len(), "node listening");
    let agent_task = agent.clone().map(|a| {
        let stop = stop_tx.subscribe();
        tokio::spawn(a.run(stop))
    });

    let sig = |k| signal(k).map_err(NodeError::Runtime);
    let (mut int, mut term, mut hup) = (sig(SignalKind::interrupt())?, sig(SignalKind::terminate())?, sig(SignalKind::hangup())?);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    // Signals that came before the handlers above were installed.
    if early.take_hup() {
        on_hup(&front, &root, addr, agent.as_deref());
    }
    let outcome = if early.take_stop() {
        tracing::info!("stop signal received while starting: stopping");
        Ok(())
    } else {
        loop {
            tokio::select! {
                _ = int.recv() => { tracing::info!("SIGINT: stopping"); break Ok(()) }
                _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break Ok(()) }
                _ = hup.recv() => on_hup(&front, &root, addr, agent.as_deref()),
                _ = tick.tick() => if !alive() { break Err(NodeError::MountLost) },
            }
        }
    };
    // Stop transfers and accepting, then tell every client (421) and wait
    // for the sessions to close, so the process exits as soon as they have.
    transfers.stop();
    let _ = stop_tx.send(true);
    let _ = accept.await;
    if let Some(t) = agent_task {
        if tokio::time::timeout(Duration::from_secs(2), t).await.is_err() {
            tracing::warn!("the cluster agent did not stop within 2 s");
        }
    }
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    front.stop_sessions();
    if !front.wait_sessions_closed(SESSION_CLOSE_LIMIT).await {
        tracing::warn!(sessions = front.sessions.total(), "sessions still open after shutdown notice; stopping anyway");
    }
    tracing::info!(sessions = front.sessions.total(), "FTP server stopped");
    outcome
}
