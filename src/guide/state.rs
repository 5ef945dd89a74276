//! The shared state of a running guide: the configuration, the stores,
//! the in-memory history, and what it knows of each node (link, last
//! heartbeat, applied seq, role) and of the cluster (epoch, primary,
//! lease, serving or switching). Every task holds an `Arc<Guide>`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use drift_fs::blobs::BlobStore;
use tokio::sync::{mpsc, watch, Notify};

use super::config::GuideConfig;
use super::coord::Coordination;
use super::history::History;
use super::store::{InitialState, Store};
use crate::cluster::msg::{Announcement, Down, Heartbeat, Role};
use crate::cluster::reverse::Pending;
use crate::xfer::ClusterKey;

/// An open control link to a node.
pub struct Link {
    /// Tells this link apart from an earlier or later one of the same node.
    pub conn: u64,
    pub tx: mpsc::UnboundedSender<Down>,
    /// Closes the link (when a new one replaces it).
    pub kill: Arc<Notify>,
    pub peer: String,
}

/// What the guide knows of one node.
pub struct NodeInfo {
    pub id: String,
    pub ftp: String,
    pub pid: u32,
    pub version: String,
    pub link: Option<Link>,
    /// Last heartbeat (or `Hello`) on the current link.
    pub last_hb: Option<Instant>,
    pub last_seen: Option<time::OffsetDateTime>,
    pub hb: Option<Heartbeat>,
    /// Highest seq the node holds of the history (its journal end).
    pub applied: u64,
    /// The role the guide gave it (the heartbeat says what it does).
    pub assigned: Role,
    pub over_threat_since: Option<Instant>,
    pub over_load_since: Option<Instant>,
    /// Changed since the store last saved its status.
    pub dirty: bool,
    /// When the guide last told it to stop acting as primary.
    pub demote_sent: Option<Instant>,
    /// The last seq at which its tree digest matched the history's.
    pub digest_seq: Option<u64>,
}

impl NodeInfo {
    pub fn new(id: &str) -> NodeInfo {
        NodeInfo {
            id: id.to_owned(),
            ftp: String::new(),
            pid: 0,
            version: String::new(),
            link: None,
            last_hb: None,
            last_seen: None,
            hb: None,
            applied: 0,
            assigned: Role::Down,
            over_threat_since: None,
            over_load_since: None,
            dirty: false,
            demote_sent: None,
            digest_seq: None,
        }
    }

    /// Connected, with a heartbeat within `lease`.
    pub fn live(&self, now: Instant, lease: Duration) -> bool {
        self.link.is_some() && self.last_hb.is_some_and(|t| now.saturating_duration_since(t) <= lease)
    }

    pub fn threat(&self) -> u8 {
        self.hb.as_ref().map_or(0, |h| h.threat)
    }

    pub fn sessions(&self) -> u64 {
        self.hb.as_ref().map_or(0, |h| h.load.sessions)
    }

    /// The role shown in status: what the node says, or `down`; a node
    /// that says `catching-up` but holds the whole history is a `backup`
    /// (the protocol's definition: catching up is being behind).
    pub fn shown_role(&self, now: Instant, lease: Duration, history_seq: u64) -> Role {
        if !self.live(now, lease * 3) {
            return Role::Down;
        }
        match self.hb.as_ref().map_or(self.assigned, |h| h.role) {
            Role::CatchingUp if self.applied >= history_seq => Role::Backup,
            r => r,
        }
    }
}

/// Serving or switching, as announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Serving,
    Switching,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Serving => "serving",
            Phase::Switching => "switching",
        }
    }
}

/// The cluster as the guide sees it.
pub struct Inner {
    pub epoch: u64,
    pub primary: Option<String>,
    pub phase: Phase,
    /// When the lease the guide granted to the primary ends (guide's clock).
    pub lease_until: Instant,
    /// No lease renewals (a switch is under way).
    pub lease_paused: bool,
    /// Entries from the primary are refused (a failover is catching up).
    pub refuse_entries: bool,
    /// A failover or migration runs.
    pub busy: bool,
    /// The primary's link closed at this time (not yet acted on).
    pub primary_lost_at: Option<Instant>,
    /// Before this, a missing primary link is not a failure (start-up,
    /// an aborted migration: the primary reconnects).
    pub grace_until: Instant,
    /// `Drained{epoch, last_seq}` from the primary.
    pub drained: Option<(u64, u64)>,
    pub nodes: BTreeMap<String, NodeInfo>,
    pub initial: Option<InitialState>,
    /// Last auto-migration attempt (so a failing one is not retried at once).
    pub last_auto: Option<Instant>,
    /// A failover waits for the old lease to run out: the primary may
    /// still come back (same epoch, same journal) and keep its role.
    pub failover_waiting: bool,
    /// Tells failovers apart (a cancelled one must not go on).
    pub failover_gen: u64,
}

pub struct Guide {
    pub cfg: GuideConfig,
    pub key: ClusterKey,
    pub store: Arc<Store>,
    pub coord: Arc<dyn Coordination>,
    pub blobs: BlobStore,
    history: RwLock<History>,
    /// The history's last seq (forwarders wait on it).
    pub history_seq: watch::Sender<u64>,
    inner: Mutex<Inner>,
    /// Bumped on every change of node state (waiters re-check).
    pub changed: watch::Sender<u64>,
    pub announce: watch::Sender<Announcement>,
    pub pending: Arc<Pending>,
    /// One migration at a time.
    pub migrating: tokio::sync::Mutex<()>,
    pub digest_mismatches: AtomicU64,
    /// When (unix seconds) the history last stored a batch: blobs that
    /// arrived after it may belong to a batch whose entries are still on
    /// their way, however long its contents took (see `gc`).
    pub last_store_unix: std::sync::atomic::AtomicI64,
    next_conn: AtomicU64,
    pub started: Instant,
    pub pid: u32,
}

impl Guide {
    #[allow(clippy::too_many_arguments)]
    pub fn new(cfg: GuideConfig, key: ClusterKey, store: Arc<Store>, coord: Arc<dyn Coordination>, blobs: BlobStore, history: History, inner: Inner) -> Guide {
        let seq = history.seq();
        let ann = announcement(&inner);
        Guide {
            cfg,
            key,
            store,
            coord,
            blobs,
            history: RwLock::new(history),
            history_seq: watch::channel(seq).0,
            inner: Mutex::new(inner),
            changed: watch::channel(0).0,
            announce: watch::channel(ann).0,
            pending: Arc::new(Pending::default()),
            migrating: tokio::sync::Mutex::new(()),
            digest_mismatches: AtomicU64::new(0),
            last_store_unix: std::sync::atomic::AtomicI64::new(time::OffsetDateTime::now_utc().unix_timestamp()),
            next_conn: AtomicU64::new(1),
            started: Instant::now(),
            pid: std::process::id(),
        }
    }

    pub fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn history(&self) -> RwLockReadGuard<'_, History> {
        self.history.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn history_mut(&self) -> RwLockWriteGuard<'_, History> {
        self.history.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn lease(&self) -> Duration {
        self.cfg.lease
    }

    pub fn next_conn(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Wakes every task waiting for node state.
    pub fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Sends the current announcement to subscribers if it changed.
    pub fn announce_now(&self) {
        let ann = announcement(&self.inner());
        self.announce.send_if_modified(|cur| {
            if *cur != ann {
                tracing::info!(epoch = ann.epoch, primary = ann.primary.as_deref().unwrap_or("none"), state = %ann.state, "announce");
                *cur = ann;
                true
            } else {
                false
            }
        });
        self.bump();
    }

    /// Queues a message on a node's current link; false if it has none.
    pub fn send_to(&self, id: &str, msg: Down) -> bool {
        let inner = self.inner();
        match inner.nodes.get(id).and_then(|n| n.link.as_ref()) {
            Some(l) => l.tx.send(msg).is_ok(),
            None => false,
        }
    }

    /// Waits until `cond` holds on the state, at most `limit`; re-checked
    /// on every change and every 50 ms.
    pub async fn wait_for(&self, limit: Duration, mut cond: impl FnMut(&Inner, &History) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let mut rx = self.changed.subscribe();
        let mut hrx = self.history_seq.subscribe();
        loop {
            {
                let h = self.history();
                if cond(&self.inner(), &h) {
                    return true;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            let tick = tokio::time::sleep(Duration::from_millis(50));
            tokio::select! {
                _ = rx.changed() => {}
                _ = hrx.changed() => {}
                _ = tick => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}

/// What subscribers are told now.
pub fn announcement(inner: &Inner) -> Announcement {
    let ftp = inner.primary.as_ref().and_then(|p| inner.nodes.get(p)).map(|n| n.ftp.clone()).filter(|f| !f.is_empty());
    Announcement { epoch: inner.epoch, primary: inner.primary.clone(), ftp, state: inner.phase.as_str().to_owned() }
}

/// The candidate a failover or migration promotes: live, not `exclude`,
/// not over the threat threshold, holding nothing past the history
/// (`hseq`: a journal that runs past it has changes the guide never
/// stored, such as an old primary's unshipped tail); the highest applied
/// seq, then the fewest sessions, then the lowest threat, then the
/// smallest id.
pub fn choose_target(inner: &Inner, now: Instant, lease: Duration, threshold: u8, exclude: Option<&str>, hseq: u64) -> Option<String> {
    let mut c: Vec<&NodeInfo> = inner
        .nodes
        .values()
        .filter(|n| Some(n.id.as_str()) != exclude && n.live(now, lease) && n.threat() <= threshold && n.applied <= hseq)
        .collect();
    c.sort_by(|a, b| {
        b.applied
            .cmp(&a.applied)
            .then(a.sessions().cmp(&b.sessions()))
            .then(a.threat().cmp(&b.threat()))
            .then(a.id.cmp(&b.id))
    });
    c.first().map(|n| n.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::msg::Load;

    fn node(id: &str, applied: u64, sessions: u64, threat: u8, live: bool) -> NodeInfo {
        let mut n = NodeInfo::new(id);
        n.applied = applied;
        if live {
            n.link = Some(Link { conn: 1, tx: mpsc::unbounded_channel().0, kill: Arc::new(Notify::new()), peer: "p".into() });
            n.last_hb = Some(Instant::now());
        }
        n.hb = Some(Heartbeat {
            hb: 1,
            role: Role::Backup,
            epoch: 1,
            applied_seq: applied,
            load: Load { sessions, ..Default::default() },
            threat,
            threat_reason: String::new(),
            progress: None,
            quarantines: vec![],
        });
        n
    }

    fn inner(nodes: Vec<NodeInfo>) -> Inner {
        Inner {
            epoch: 1,
            primary: Some("p".into()),
            phase: Phase::Serving,
            lease_until: Instant::now(),
            lease_paused: false,
            refuse_entries: false,
            busy: false,
            primary_lost_at: None,
            grace_until: Instant::now(),
            drained: None,
            nodes: nodes.into_iter().map(|n| (n.id.clone(), n)).collect(),
            initial: None,
            last_auto: None,
            failover_waiting: false,
            failover_gen: 0,
        }
    }

    #[test]
    fn the_target_is_the_most_up_to_date_then_least_loaded_then_least_threatened() {
        let lease = Duration::from_secs(1);
        let now = Instant::now();
        let i = inner(vec![node("a", 10, 0, 0, true), node("b", 12, 5, 10, true), node("c", 12, 1, 50, true), node("d", 20, 0, 0, false)]);
        assert_eq!(choose_target(&i, now, lease, 80, None, 20).as_deref(), Some("c"), "d is down; b and c tie on seq, c has fewer sessions");
        let i = inner(vec![node("b", 12, 1, 10, true), node("c", 12, 1, 50, true)]);
        assert_eq!(choose_target(&i, now, lease, 80, None, 12).as_deref(), Some("b"), "then the lower threat");
        let i = inner(vec![node("b", 12, 1, 90, true), node("c", 3, 1, 50, true)]);
        assert_eq!(choose_target(&i, now, lease, 80, None, 12).as_deref(), Some("c"), "never a node over the threshold");
        assert_eq!(choose_target(&i, now, lease, 80, Some("c"), 12), None);
        // A journal past the history (an old primary's unshipped tail) is
        // never promoted, however far ahead it is.
        let i = inner(vec![node("old", 15, 0, 0, true), node("b", 11, 3, 0, true)]);
        assert_eq!(choose_target(&i, now, lease, 80, None, 12).as_deref(), Some("b"));
        assert_eq!(choose_target(&i, now, lease, 80, Some("b"), 12), None);
    }
}
