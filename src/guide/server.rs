//! Start-up, the one cluster port and shutdown. Start-up opens the data
//! directory (locked: one guide per directory), the store, the blob
//! store and the history, loads epoch and primary through the
//! coordination interface and gives the stored primary a full lease (and
//! a grace to reconnect) before it can be declared failed. Each accepted
//! connection is dispatched by its 8-byte greeting: `DRIFTCTL` (control
//! link), `DRIFTXFR` (contents into the blob store), `DRIFTREV` (a node
//! dialling back for a forward).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use super::config::GuideConfig;
use super::coord::{Coordination, SqliteCoord};
use super::history::History;
use super::state::{Guide, Inner, NodeInfo, Phase};
use super::store::Store;
use super::GuideError;
use crate::cluster::{NameIsContent, REVERSE_MAGIC};
use crate::xfer::channel::Stream;
use crate::xfer::handshake::{CONTROL, MAGIC};
use crate::xfer::{ClusterKey, Receiver, RecvConfig};

/// How long a new connection may take to send its greeting.
const GREETING_TIMEOUT: Duration = Duration::from_secs(10);
/// A stored primary gets this much on top of a lease to reconnect after a
/// guide restart.
const RESTART_GRACE: Duration = Duration::from_secs(2);

/// Holds the data directory's lock while the guide runs.
pub struct DirLock {
    _file: File,
}

/// Locks `dir` for this process (`flock` on `dir/LOCK`).
pub fn lock_dir(dir: &Path) -> Result<DirLock, GuideError> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| GuideError::io(format!("opening {}", path.display()), e))?;
    // SAFETY: flock on a descriptor this function owns.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(GuideError::Locked { path: dir.to_owned() });
        }
        return Err(GuideError::io(format!("locking {}", path.display()), e));
    }
    Ok(DirLock { _file: file })
}

/// Opens everything under the data directory and builds the guide.
pub fn open(cfg: GuideConfig, key: ClusterKey) -> Result<(Arc<Guide>, DirLock), GuideError> {
    let dir = cfg.data_dir.clone();
    std::fs::create_dir_all(&dir).map_err(|e| GuideError::io(format!("creating {}", dir.display()), e))?;
    let lock = lock_dir(&dir)?;
    let store = Arc::new(Store::open(&dir.join("guide.db"))?);
    let coord: Arc<dyn Coordination> = Arc::new(SqliteCoord::new(store.clone()));
    let blobs = drift_fs::blobs::BlobStore::open(&dir.join("blobs")).map_err(|e| GuideError::io(format!("blob store: {e}"), std::io::Error::other(e.to_string())))?;
    let history = History::new(store.load_history()?);
    let cs = coord.load().map_err(|e| GuideError::Refused(e.to_string()))?;
    let now = Instant::now();
    let mut nodes = std::collections::BTreeMap::new();
    for (id, v) in store.load_nodes()? {
        let mut n = NodeInfo::new(&id);
        n.ftp = v["ftp"].as_str().unwrap_or_default().to_owned();
        n.pid = v["pid"].as_u64().unwrap_or(0) as u32;
        n.version = v["version"].as_str().unwrap_or_default().to_owned();
        n.applied = v["applied_seq"].as_u64().unwrap_or(0);
        nodes.insert(id, n);
    }
    let grace = cfg.lease + RESTART_GRACE;
    let inner = Inner {
        epoch: cs.epoch,
        primary: cs.primary.clone(),
        phase: Phase::Serving,
        lease_until: now + grace,
        lease_paused: false,
        refuse_entries: false,
        busy: false,
        primary_lost_at: cs.primary.as_ref().map(|_| now),
        grace_until: now + grace,
        drained: None,
        nodes,
        initial: store.latest_initial_state()?,
        last_auto: None,
        failover_waiting: false,
        failover_gen: 0,
    };
    info!(
        data_dir = %dir.display(),
        epoch = cs.epoch,
        primary = cs.primary.as_deref().unwrap_or("none"),
        history_seq = history.seq(),
        "guide store opened"
    );
    Ok((Arc::new(Guide::new(cfg, key, store, coord, blobs, history, inner)), lock))
}

/// Runs the guide until SIGINT or SIGTERM.
pub async fn run(cfg: GuideConfig) -> Result<(), GuideError> {
    use tokio::signal::unix::{signal, SignalKind};
    let key = ClusterKey::load(&cfg.key_file)?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| GuideError::io("installing the SIGTERM handler", e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| GuideError::io("installing the SIGINT handler", e))?;
    let (guide, _lock) = open(cfg, key)?;
    let listener = TcpListener::bind(&guide.cfg.listen)
        .await
        .map_err(|e| GuideError::io(format!("listening on {}", guide.cfg.listen), e))?;
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| guide.cfg.listen.clone());

    let state_dir = guide.cfg.data_dir.join("xfer-state");
    std::fs::create_dir_all(&state_dir).map_err(|e| GuideError::io(format!("creating {}", state_dir.display()), e))?;
    let (receiver, mut reports) = Receiver::new(RecvConfig {
        dir: guide.blobs.root().to_owned(),
        state_dir,
        key: guide.key.clone(),
        hook: Some(Arc::new(NameIsContent)),
        fsync: true,
        handshake_timeout: Duration::from_secs(10),
        remove_empty_state_dir: false,
    });
    let (acceptor, xfer_in) = crate::cluster::reverse::DialedAcceptor::new(format!("{addr} (contents)"));
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move {
        if let Err(e) = receiver.serve(Arc::new(acceptor)).await {
            warn!("content receiver stopped: {e}");
        }
    });
    tasks.spawn(async move {
        while let Some(r) = reports.recv().await {
            match r.error {
                None => debug!(peer = %r.peer, entries = r.entries, bytes = r.bytes, "contents received"),
                Some(e) => warn!(peer = %r.peer, "a content transfer failed: {e}"),
            }
        }
    });
    tasks.spawn(super::failover::monitor(guide.clone()));
    tasks.spawn(super::gc::run(guide.clone()));
    info!(%addr, id = %guide.cfg.id, lease_ms = guide.lease().as_millis() as u64, "guide listening");

    let why = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            a = listener.accept() => match a {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let (r, w) = tcp.into_split();
                    let stream = Stream { reader: Box::new(r), writer: Box::new(w), peer: peer.to_string() };
                    let (g, x) = (guide.clone(), xfer_in.clone());
                    tokio::spawn(dispatch(g, stream, x));
                }
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    info!("{why}: stopping");
    super::failover::save_nodes(&guide);
    tasks.abort_all();
    Ok(())
}

/// Reads the greeting and hands the connection to its handler.
async fn dispatch(guide: Arc<Guide>, mut stream: Stream, xfer_in: tokio::sync::mpsc::UnboundedSender<Stream>) {
    let peer = stream.peer.clone();
    let mut magic = [0u8; 8];
    match tokio::time::timeout(GREETING_TIMEOUT, stream.reader.read_exact(&mut magic)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            debug!(%peer, "connection closed before its greeting: {e}");
            return;
        }
        Err(_) => {
            warn!(%peer, "no greeting within {GREETING_TIMEOUT:?}: closed");
            return;
        }
    }
    if &magic == REVERSE_MAGIC {
        if let Err(e) = guide.pending.deliver(stream).await {
            warn!(%peer, "dial-back refused: {e}");
        }
        return;
    }
    if &magic != CONTROL.magic && &magic != MAGIC {
        let shown: String = magic.iter().map(|&b| if b.is_ascii_graphic() { b as char } else { '.' }).collect();
        warn!(%peer, "not a drift peer (greeting {shown:?}): closed");
        return;
    }
    // Give the handshake its greeting back.
    let reader = Box::new(std::io::Cursor::new(magic.to_vec()).chain(stream.reader));
    let stream = Stream { reader, writer: stream.writer, peer };
    if &magic == MAGIC {
        let _ = xfer_in.send(stream);
    } else {
        super::links::serve(guide, stream).await;
    }
}
