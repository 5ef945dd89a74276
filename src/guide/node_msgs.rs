//! What the guide does with each message on a node's link: heartbeats
//! (status, lease renewal), entries (checks, durable store, `Stored`),
//! initial state, tree digests, `Applied` and `Drained`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::state::{Guide, Phase};
use crate::cluster::msg::{Down, Heartbeat, Role, Up, WireEntry};

/// Least time between two `Demote`s to one node.
const DEMOTE_EVERY: Duration = Duration::from_secs(1);

/// Handles one message from node `id` on link `conn`; returns the replies.
pub fn handle(guide: &Guide, id: &str, conn: u64, msg: Up) -> Vec<Down> {
    match msg {
        Up::Heartbeat(hb) => heartbeat(guide, id, conn, hb),
        Up::Entries { epoch, entries, absent } => entries_msg(guide, id, epoch, &entries, &absent),
        Up::InitialState { epoch, users, service } => initial_state(guide, id, epoch, users, service),
        Up::TreeDigest { epoch, seq, digest } => {
            tree_digest(guide, id, epoch, seq, &digest);
            vec![]
        }
        Up::Applied { seq } => {
            let mut inner = guide.inner();
            if let Some(n) = inner.nodes.get_mut(id).filter(|n| n.link.as_ref().is_some_and(|l| l.conn == conn)) {
                n.applied = n.applied.max(seq);
                n.dirty = true;
            }
            drop(inner);
            guide.bump();
            vec![]
        }
        Up::Drained { epoch, last_seq } => {
            let mut inner = guide.inner();
            if inner.primary.as_deref() == Some(id) && inner.epoch == epoch {
                info!(node = id, epoch, last_seq, "primary drained");
                inner.drained = Some((epoch, last_seq));
            } else {
                warn!(node = id, epoch, "drained from a node that is not the primary of this epoch: ignored");
            }
            drop(inner);
            guide.bump();
            vec![]
        }
        other => {
            let kind = super::links::kind_of(&other);
            warn!(node = id, "a node link does not take {kind}");
            vec![Down::Refused { reason: format!("a node link does not take {kind}") }]
        }
    }
}

fn heartbeat(guide: &Guide, id: &str, conn: u64, hb: Heartbeat) -> Vec<Down> {
    let now = Instant::now();
    let lease = guide.lease();
    let mut inner = guide.inner();
    let (epoch, paused) = (inner.epoch, inner.lease_paused);
    let is_primary = inner.primary.as_deref() == Some(id);
    let Some(n) = inner.nodes.get_mut(id) else { return vec![] };
    if n.link.as_ref().is_none_or(|l| l.conn != conn) {
        return vec![];
    }
    n.last_hb = Some(now);
    n.last_seen = Some(time::OffsetDateTime::now_utc());
    // Heartbeats and `Applied` travel in order on one link: the latest
    // says what the node holds.
    n.applied = hb.applied_seq;
    if hb.threat > guide.cfg.threat_threshold {
        n.over_threat_since.get_or_insert(now);
    } else {
        n.over_threat_since = None;
    }
    match guide.cfg.load_threshold {
        Some(max) if hb.load.sessions > max => {
            n.over_load_since.get_or_insert(now);
        }
        _ => n.over_load_since = None,
    }
    n.dirty = true;
    let mut out = vec![];
    if is_primary && hb.epoch == epoch && !paused && matches!(hb.role, Role::Primary | Role::Fenced) {
        out.push(Down::Lease { epoch, hb: hb.hb, lease_ms: lease.as_millis() as u64 });
    } else if hb.role == Role::Primary && (!is_primary || hb.epoch != epoch) && n.demote_sent.is_none_or(|t| now.duration_since(t) > DEMOTE_EVERY) {
        n.demote_sent = Some(now);
        warn!(node = id, node_epoch = hb.epoch, epoch, "a node acts as primary outside its epoch: demoted");
        out.push(Down::Demote { epoch, reason: format!("epoch {epoch} has another primary") });
    }
    let serves = is_primary && hb.epoch == epoch && hb.role == Role::Primary;
    n.hb = Some(hb);
    if !out.is_empty() && matches!(out[0], Down::Lease { .. }) {
        inner.lease_until = now + lease;
    }
    // A promotion whose wait for this heartbeat timed out left the phase
    // at `switching` with nothing running: the primary serves, say so.
    let unstuck = serves && inner.phase == Phase::Switching && !inner.busy && !inner.failover_waiting;
    if unstuck {
        inner.phase = Phase::Serving;
        info!(node = id, epoch, "the primary serves: switching is over");
    }
    drop(inner);
    guide.bump();
    if unstuck {
        guide.announce_now();
    }
    out
}

fn entries_msg(guide: &Guide, id: &str, epoch: u64, entries: &[WireEntry], absent: &[u64]) -> Vec<Down> {
    // The commit waits for the disk: let the runtime move other tasks off
    // this worker meanwhile.
    let multi = tokio::runtime::Handle::try_current().is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    let stored = if multi { tokio::task::block_in_place(|| store_batch(guide, id, epoch, entries, absent)) } else { store_batch(guide, id, epoch, entries, absent) };
    match stored {
        Ok(seq) => {
            debug!(node = id, seq, entries = entries.len(), "stored");
            vec![Down::Stored { epoch, seq }]
        }
        Err(replies) => replies,
    }
}

/// Checks and stores a batch; returns the seq the node may consider
/// stored, or the replies that refuse it.
fn store_batch(guide: &Guide, id: &str, epoch: u64, entries: &[WireEntry], absent: &[u64]) -> Result<u64, Vec<Down>> {
    let refused = |reason: String| {
        warn!(node = id, "refused entries: {reason}");
        vec![Down::Refused { reason }]
    };
    let mut h = guide.history_mut();
    {
        // Under the history lock (history before inner): no promotion can
        // come between this check and the append below.
        let inner = guide.inner();
        if inner.primary.as_deref() != Some(id) || epoch != inner.epoch {
            let reason = format!("stale epoch {epoch}: epoch {} belongs to {}", inner.epoch, inner.primary.as_deref().unwrap_or("no node"));
            warn!(node = id, "refused entries: {reason}; nothing stored");
            return Err(vec![Down::Refused { reason: reason.clone() }, Down::Demote { epoch: inner.epoch, reason }]);
        }
        if inner.refuse_entries {
            return Err(refused("the guide is switching primaries (a failover is under way)".into()));
        }
    }
    let new = h.check_batch(epoch, entries, absent).map_err(|e| refused(e.to_string()))?;
    for e in &new {
        if e.wire.op == "write" && !e.absent {
            let hash = e.wire.blake3.as_deref().unwrap_or_default();
            if !guide.blobs.contains(hash) {
                return Err(refused(format!("entry {}: its content {hash} was not received", e.seq())));
            }
        }
    }
    guide.store.append(&new).map_err(|e| refused(format!("cannot store: {e}")))?;
    guide.last_store_unix.store(time::OffsetDateTime::now_utc().unix_timestamp(), Ordering::Relaxed);
    h.push(new);
    let seq = h.seq();
    drop(h);
    guide.history_seq.send_replace(seq);
    Ok(entries.last().map_or(seq, |e| e.seq))
}

fn initial_state(guide: &Guide, id: &str, epoch: u64, users: String, service: String) -> Vec<Down> {
    {
        let inner = guide.inner();
        if inner.primary.as_deref() != Some(id) || inner.epoch != epoch {
            warn!(node = id, epoch, "refused initial state: stale epoch {epoch}");
            return vec![Down::Refused { reason: format!("stale epoch {epoch}: only the primary of epoch {} sends the initial state", inner.epoch) }];
        }
    }
    let stored = match guide.store.put_initial_state(&users, &service) {
        Ok(s) => s,
        Err(e) => {
            warn!(node = id, "cannot store the initial state: {e}");
            return vec![];
        }
    };
    let Some(st) = stored else { return vec![] };
    info!(node = id, version = st.version, "new initial state version");
    let mut inner = guide.inner();
    inner.initial = Some(st.clone());
    for n in inner.nodes.values() {
        if n.id != id {
            if let Some(l) = &n.link {
                let _ = l.tx.send(Down::InitialState { version: st.version, users: st.users.clone(), service: st.service.clone() });
            }
        }
    }
    drop(inner);
    // Proxies follow the initial state through the change notification.
    guide.bump();
    vec![]
}

fn tree_digest(guide: &Guide, id: &str, epoch: u64, seq: u64, digest: &str) {
    if guide.inner().epoch != epoch {
        return;
    }
    let ours = guide.history().digest_at(seq);
    match ours {
        None => debug!(node = id, seq, "tree digest for a seq not stored yet: skipped"),
        Some(d) if d == digest => {
            // One info line per new seq proved, not one per interval.
            let mut inner = guide.inner();
            let first = inner.nodes.get_mut(id).map(|n| n.digest_seq.replace(seq) != Some(seq)).unwrap_or(false);
            drop(inner);
            if first {
                info!(node = id, seq, "tree digest matches the history");
            } else {
                debug!(node = id, seq, "tree digest matches the history");
            }
        }
        Some(d) => {
            let n = guide.digest_mismatches.fetch_add(1, Ordering::Relaxed) + 1;
            warn!(node = id, seq, node_digest = digest, history_digest = %d, mismatches = n, "tree digest mismatch: the node's tree differs from the history's");
        }
    }
}
