//! A control link (`DRIFTCTL`): the handshake, then by the `Hello`'s kind
//! a node's link (welcome, then its messages, see [`super::node_msgs`]),
//! a subscriber (announcements) or an operator (status, migrate).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};
use tracing::{info, warn};

use super::migrate::{self, Cause};
use super::state::{Guide, Link, NodeInfo, Phase};
use crate::cluster::link::{self, LinkReader, LinkWriter};
use crate::cluster::msg::{Down, Hello, NodeHello, PeerKind, Role, Up};
use crate::xfer::channel::Stream;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A node link with no message for this long is closed.
const NODE_IDLE: Duration = Duration::from_secs(30);
/// An operator link with no request for this long is closed.
const OPERATOR_IDLE: Duration = Duration::from_secs(300);

/// Serves one control link until it ends.
pub async fn serve(guide: Arc<Guide>, stream: Stream) {
    let peer = stream.peer.clone();
    let (mut r, mut w) = match link::server(stream, &guide.key, HANDSHAKE_TIMEOUT).await {
        Ok(rw) => rw,
        Err(e) => {
            warn!(%peer, "refused a control link: {e}");
            return;
        }
    };
    let hello = match r.recv_within::<Up>(HELLO_TIMEOUT).await {
        Ok(Up::Hello(h)) => h,
        Ok(_) => {
            warn!(%peer, "control link did not start with hello");
            let _ = w.send(&Down::Refused { reason: "say hello first".into() }).await;
            return;
        }
        Err(e) => {
            warn!(%peer, "control link without hello: {e}");
            return;
        }
    };
    match hello {
        Hello { kind: PeerKind::Node, node: Some(nh) } => node_link(guide, r, w, nh).await,
        Hello { kind: PeerKind::Node, node: None } => {
            warn!(%peer, "node hello without its description");
            let _ = w.send(&Down::Refused { reason: "node hello without `node`".into() }).await;
        }
        Hello { kind: PeerKind::Subscriber, .. } => subscriber(guide, r, w, false).await,
        Hello { kind: PeerKind::Proxy, .. } => subscriber(guide, r, w, true).await,
        Hello { kind: PeerKind::Operator, .. } => operator(guide, r, w).await,
    }
}

fn same_host(a: &str, b: &str) -> bool {
    let host = |s: &str| s.rsplit_once(':').map(|(h, _)| h.to_owned()).unwrap_or_default();
    host(a) == host(b)
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// The answer to a node's `Hello`: registers the link and returns the
/// messages to send first, or the reason for a refusal.
fn welcome(guide: &Guide, nh: &NodeHello, link: Link) -> Result<(Role, Option<u64>), String> {
    if !valid_id(&nh.id) {
        return Err(format!("node id {:?} is not valid ([A-Za-z0-9_.-], 1 to 64)", nh.id));
    }
    if nh.tail.len() > crate::cluster::msg::MAX_TAIL {
        return Err(format!("a tail of {} entries is over the limit of {}", nh.tail.len(), crate::cluster::msg::MAX_TAIL));
    }
    let now = Instant::now();
    let lease = guide.lease();
    let history = guide.history();
    let hseq = history.seq();
    let tail = history.check_tail(nh.journal_seq, nh.confirmed_seq, &nh.tail);
    drop(history);
    let mut inner = guide.inner();
    if let Some(n) = inner.nodes.get(&nh.id) {
        // The same process dialling again (after a `Demote`, or a link it
        // gave up on) replaces its old link; another process is refused.
        let same_process = n.pid == nh.pid && n.link.as_ref().is_some_and(|l| same_host(&l.peer, &link.peer));
        if n.link.is_some() && n.live(now, lease) && !same_process {
            return Err(format!("node id {} already connected", nh.id));
        }
        if let Some(old) = &n.link {
            info!(node = %nh.id, old = %old.peer, new = %link.peer, "replacing a silent link");
            old.kill.notify_one();
        }
    }
    let is_primary = inner.primary.as_deref() == Some(nh.id.as_str());
    let role;
    let mut quarantine_from = None;
    if inner.epoch == 0 && !inner.busy {
        // Bootstrap: the first node leads epoch 1 (or the epoch after the
        // one it saw, if it comes from an earlier life of the cluster: no
        // node ever sees the epoch go backwards).
        let next = super::coord::CoordState { epoch: nh.epoch + 1, primary: Some(nh.id.clone()) };
        match guide.coord.compare_and_set(0, &next) {
            Ok(true) => {}
            Ok(false) => return Err("the epoch moved; say hello again".into()),
            Err(e) => return Err(format!("the guide cannot record the epoch: {e}")),
        }
        info!(node = %nh.id, epoch = next.epoch, "bootstrap: the first node is primary");
        inner.epoch = next.epoch;
        inner.primary = Some(nh.id.clone());
        inner.phase = Phase::Serving;
        role = Role::Primary;
    } else if is_primary && nh.epoch == inner.epoch && !inner.busy && inner.phase == Phase::Serving && tail.differs_at.is_none() && nh.journal_seq >= hseq {
        // (A journal behind the history, e.g. its last commits lost with
        // the machine's power, must catch up first: it is not the primary
        // the history says it was.)
        role = Role::Primary;
    } else if is_primary && nh.epoch == inner.epoch && inner.failover_waiting && tail.differs_at.is_none() && nh.journal_seq >= hseq {
        // Its link closed but its lease has not run out yet: nothing was
        // decided, it keeps the role.
        info!(node = %nh.id, "the primary is back within its lease: failover cancelled");
        inner.failover_waiting = false;
        inner.busy = false;
        inner.phase = Phase::Serving;
        inner.refuse_entries = false;
        role = Role::Primary;
    } else {
        quarantine_from = tail.quarantine_for_backup();
        let applied = if quarantine_from.is_some() { 0 } else { nh.journal_seq };
        role = if applied < hseq { Role::CatchingUp } else { Role::Backup };
        if is_primary && inner.phase == Phase::Serving && !inner.busy {
            // The primary came back with a journal the history does not
            // have (or from an old epoch): it is demoted; the lease watch
            // fails over once its lease has run out.
            warn!(node = %nh.id, journal_seq = nh.journal_seq, history_seq = hseq, "the primary's journal differs from the history or is behind it: demoted");
            inner.primary_lost_at.get_or_insert(now);
        }
    }
    if let Some(q) = quarantine_from {
        warn!(node = %nh.id, from = q, "node holds entries the history does not: quarantine from {q}");
    }
    if role == Role::Primary {
        inner.lease_until = now + lease;
        inner.lease_paused = false;
        inner.primary_lost_at = None;
    }
    let epoch = inner.epoch;
    let primary = inner.primary.clone();
    let initial = inner.initial.clone();
    let node = inner.nodes.entry(nh.id.clone()).or_insert_with(|| NodeInfo::new(&nh.id));
    node.ftp = nh.ftp.clone();
    node.pid = nh.pid;
    node.version = nh.version.clone();
    node.last_hb = Some(now);
    node.last_seen = Some(time::OffsetDateTime::now_utc());
    node.hb = None;
    node.applied = match (quarantine_from, role) {
        (Some(_), _) => 0,
        (None, Role::Primary) => nh.journal_seq,
        (None, _) => nh.journal_seq.min(hseq),
    };
    node.assigned = role;
    node.dirty = true;
    let _ = link.tx.send(Down::Welcome { epoch, role, lease_ms: lease.as_millis() as u64, history_seq: hseq, quarantine_from, primary });
    if role != Role::Primary {
        if let Some(st) = initial {
            let _ = link.tx.send(Down::InitialState { version: st.version, users: st.users, service: st.service });
        }
    }
    node.link = Some(link);
    drop(inner);
    if let Err(e) = guide.coord.join(&nh.id) {
        warn!(node = %nh.id, "cannot record membership: {e}");
    }
    Ok((role, quarantine_from))
}

async fn node_link(guide: Arc<Guide>, mut r: LinkReader, mut w: LinkWriter, nh: NodeHello) {
    let peer = r.peer().to_owned();
    let conn = guide.next_conn();
    let (tx, mut rx) = mpsc::unbounded_channel::<Down>();
    let kill = Arc::new(Notify::new());
    let link = Link { conn, tx: tx.clone(), kill: kill.clone(), peer: peer.clone() };
    let (role, quarantine) = match welcome(&guide, &nh, link) {
        Ok(x) => x,
        Err(reason) => {
            warn!(node = %nh.id, %peer, "refused node: {reason}");
            let _ = w.send(&Down::Refused { reason }).await;
            w.shutdown().await;
            return;
        }
    };
    info!(node = %nh.id, %peer, role = role.as_str(), journal_seq = nh.journal_seq, quarantine_from = ?quarantine, "node joined");
    guide.announce_now();
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if let Err(e) = w.send(&m).await {
                tracing::debug!("link writer: {e}");
                break;
            }
        }
        w.shutdown().await;
    });
    if role != Role::Primary {
        tokio::spawn(super::forward::run(guide.clone(), nh.id.clone(), conn));
    }
    let why = loop {
        tokio::select! {
            _ = kill.notified() => break "replaced by a new link".to_string(),
            m = tokio::time::timeout(NODE_IDLE, r.recv::<Up>()) => match m {
                Err(_) => break format!("silent for {NODE_IDLE:?}"),
                Ok(Err(e)) => break e.to_string(),
                Ok(Ok(None)) => break "closed".to_string(),
                Ok(Ok(Some(msg))) => {
                    for reply in super::node_msgs::handle(&guide, &nh.id, conn, msg) {
                        let _ = tx.send(reply);
                    }
                }
            }
        }
    };
    info!(node = %nh.id, %peer, "node link ended: {why}");
    drop(tx);
    link_closed(&guide, &nh.id, conn);
    writer.abort();
}

/// Forgets a node's link (if it is still the current one).
fn link_closed(guide: &Guide, id: &str, conn: u64) {
    let mut inner = guide.inner();
    let is_primary = inner.primary.as_deref() == Some(id);
    let Some(n) = inner.nodes.get_mut(id) else { return };
    if n.link.as_ref().is_none_or(|l| l.conn != conn) {
        return;
    }
    n.link = None;
    n.assigned = Role::Down;
    n.dirty = true;
    if is_primary {
        inner.primary_lost_at.get_or_insert(Instant::now());
    }
    drop(inner);
    guide.bump();
}

/// A subscriber: the announcement at once and on every change; a proxy
/// (`with_initial`) also gets each new version of the initial state.
async fn subscriber(guide: Arc<Guide>, mut r: LinkReader, mut w: LinkWriter, with_initial: bool) {
    let peer = r.peer().to_owned();
    info!(%peer, proxy = with_initial, "subscriber joined");
    let mut rx = guide.announce.subscribe();
    let mut changed = guide.changed.subscribe();
    let mut sent_ann = None;
    let mut sent_version = None;
    loop {
        let ann = rx.borrow_and_update().clone();
        let mut out = Vec::new();
        if sent_ann.as_ref() != Some(&ann) {
            sent_ann = Some(ann.clone());
            out.push(Down::Announce(ann));
        }
        if with_initial {
            let initial = {
                let inner = guide.inner();
                inner.initial.as_ref().filter(|st| sent_version != Some(st.version)).cloned()
            };
            if let Some(st) = initial {
                sent_version = Some(st.version);
                out.push(Down::InitialState { version: st.version, users: st.users, service: st.service });
            }
        }
        for m in out {
            if let Err(e) = w.send(&m).await {
                info!(%peer, "subscriber gone: {e}");
                return;
            }
        }
        tokio::select! {
            c = rx.changed() => if c.is_err() { return },
            c = changed.changed(), if with_initial => if c.is_err() { return },
            m = r.recv::<Up>() => match m {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    info!(%peer, "subscriber left");
                    return;
                }
            },
        }
    }
}

async fn operator(guide: Arc<Guide>, mut r: LinkReader, mut w: LinkWriter) {
    let peer = r.peer().to_owned();
    loop {
        let msg = match tokio::time::timeout(OPERATOR_IDLE, r.recv::<Up>()).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(e)) => {
                warn!(%peer, "operator link: {e}");
                return;
            }
        };
        let reply = match msg {
            Up::Status => Down::StatusReply { status: super::status::json(&guide) },
            Up::Migrate { to, reason } => {
                info!(%peer, to = to.as_deref().unwrap_or("(best)"), reason = reason.as_deref().unwrap_or(""), "migration requested");
                match migrate::active(&guide, to, reason, Cause::Migrate).await {
                    Ok((epoch, primary)) => Down::MigrateReply { ok: true, message: format!("{primary} is primary of epoch {epoch}"), epoch, primary: Some(primary) },
                    Err(message) => {
                        let inner = guide.inner();
                        Down::MigrateReply { ok: false, message, epoch: inner.epoch, primary: inner.primary.clone() }
                    }
                }
            }
            other => Down::Refused { reason: format!("an operator link does not take {}", kind_of(&other)) },
        };
        if w.send(&reply).await.is_err() {
            return;
        }
    }
}

pub fn kind_of(m: &Up) -> &'static str {
    match m {
        Up::Hello(_) => "hello",
        Up::Heartbeat(_) => "heartbeat",
        Up::Entries { .. } => "entries",
        Up::InitialState { .. } => "initial_state",
        Up::TreeDigest { .. } => "tree_digest",
        Up::Applied { .. } => "applied",
        Up::Drained { .. } => "drained",
        Up::Status => "status",
        Up::Migrate { .. } => "migrate",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn node_ids_are_checked() {
        assert!(super::valid_id("n1.a_b-c"));
        assert!(!super::valid_id(""));
        assert!(!super::valid_id("a/b"));
        assert!(!super::valid_id(&"x".repeat(65)));
    }
}
