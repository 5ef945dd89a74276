//! Forwarding the history to a backup (or a node catching up): the next
//! batch after what the node applied, its contents first by a reverse
//! transfer (`OpenReverse`, the node dials back, `xfer::send_named` into
//! its inbox), then `Forward{entries, absent}`; the node answers
//! `Applied`. A write whose content no live file needs (a later entry
//! superseded it) goes as `absent`, without its blob.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::state::Guide;
use crate::cluster::msg::{Down, Role, WireEntry, MAX_BATCH};
use crate::cluster::reverse::{token_hex, DialBack, Token};
use crate::cluster::blob_name;
use crate::xfer::{send_named, Progress, SendConfig};

/// How long a forwarded batch may wait for its `Applied` before it is sent again.
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause after a failed transfer.
const RETRY: Duration = Duration::from_millis(500);

/// What the forwarder of node `id` may do now.
enum Next {
    /// The link is gone or the node became primary.
    Stop,
    Wait,
    Send { entries: Vec<WireEntry>, absent: Vec<u64>, blobs: Vec<String>, tx: mpsc::UnboundedSender<Down> },
}

fn next(guide: &Guide, id: &str, conn: u64) -> Next {
    let (applied, tx) = {
        let inner = guide.inner();
        let Some(n) = inner.nodes.get(id) else { return Next::Stop };
        let Some(l) = n.link.as_ref().filter(|l| l.conn == conn) else { return Next::Stop };
        if n.assigned == Role::Primary {
            return Next::Stop;
        }
        (n.applied, l.tx.clone())
    };
    let h = guide.history();
    if applied >= h.seq() {
        return Next::Wait;
    }
    let batch = h.range(applied + 1, MAX_BATCH);
    let batch = &batch[..crate::cluster::msg::batch_len(batch.iter().map(|e| e.wire.name_lens()))];
    let live = h.live_writes();
    let mut absent = Vec::new();
    let mut blobs = BTreeSet::new();
    for e in batch {
        if e.wire.op != "write" {
            continue;
        }
        let hash = e.wire.blake3.clone().unwrap_or_default();
        if e.absent || !live.contains(&e.seq()) {
            absent.push(e.seq());
        } else if guide.blobs.contains(&hash) {
            blobs.insert(hash);
        } else {
            warn!(node = id, seq = e.seq(), "content {hash} of a live write is missing from the blob store: forwarded as absent");
            absent.push(e.seq());
        }
    }
    Next::Send { entries: batch.iter().map(|e| e.wire.clone()).collect(), absent, blobs: blobs.into_iter().collect(), tx }
}

/// Runs until the node's link `conn` ends or the node becomes primary.
pub async fn run(guide: Arc<Guide>, id: String, conn: u64) {
    let mut hist = guide.history_seq.subscribe();
    let mut changed = guide.changed.subscribe();
    loop {
        match next(&guide, &id, conn) {
            Next::Stop => {
                debug!(node = %id, "forwarder stops");
                return;
            }
            Next::Wait => {
                tokio::select! {
                    _ = hist.changed() => {}
                    _ = changed.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Next::Send { entries, absent, blobs, tx } => {
                let (first, last) = (entries[0].seq, entries[entries.len() - 1].seq);
                if !blobs.is_empty() {
                    if let Err(e) = send_blobs(&guide, &id, &blobs, &tx).await {
                        warn!(node = %id, first, last, "forwarding contents failed: {e}");
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
                debug!(node = %id, first, last, blobs = blobs.len(), "forward");
                if tx.send(Down::Forward { entries, absent }).is_err() {
                    return;
                }
                if !wait_applied(&guide, &id, conn, last).await {
                    warn!(node = %id, first, last, "no applied within {APPLY_TIMEOUT:?}: forwarding again");
                } else if last % 1000 < (last - first + 1) {
                    info!(node = %id, seq = last, "forwarded");
                }
            }
        }
    }
}

/// Waits until the node applied `last` (or its link ended); false when
/// it made no progress for [`APPLY_TIMEOUT`]. A large batch may take long
/// to apply: only a standstill counts.
async fn wait_applied(guide: &Guide, id: &str, conn: u64, last: u64) -> bool {
    let applied_now = |g: &Guide| g.inner().nodes.get(id).map_or(0, |n| n.applied);
    let mut seen = applied_now(guide);
    // Bounded: each round needs progress, and seqs only go up to `last`.
    loop {
        let done = guide
            .wait_for(APPLY_TIMEOUT, |inner, _| {
                inner.nodes.get(id).is_none_or(|n| n.applied >= last || n.applied > seen || n.link.as_ref().is_none_or(|l| l.conn != conn))
            })
            .await;
        if !done {
            return false;
        }
        let finished = guide.inner().nodes.get(id).is_none_or(|n| n.applied >= last || n.link.as_ref().is_none_or(|l| l.conn != conn));
        if finished {
            return true;
        }
        seen = applied_now(guide);
    }
}

/// Sends blobs to the node over dial-back connections.
async fn send_blobs(guide: &Guide, id: &str, hashes: &[String], tx: &mpsc::UnboundedSender<Down>) -> Result<(), String> {
    let files: Vec<(PathBuf, PathBuf)> = hashes
        .iter()
        .filter_map(|h| guide.blobs.path_of(h).ok().map(|p| (p, blob_name(h))))
        .collect();
    let (ask, mut asked) = mpsc::unbounded_channel::<Token>();
    let relay_tx = tx.clone();
    let relay = tokio::spawn(async move {
        while let Some(t) = asked.recv().await {
            if relay_tx.send(Down::OpenReverse { token: token_hex(&t) }).is_err() {
                break;
            }
        }
    });
    let connector = Arc::new(DialBack { pending: guide.pending.clone(), ask, node: id.to_owned() });
    let mut cfg = SendConfig::new(guide.key.clone());
    cfg.streams = if files.len() > 1 { 2 } else { 1 };
    let result = send_named(&files, cfg, connector, Arc::new(Progress::default())).await;
    relay.abort();
    let report = result.map_err(|e| e.to_string())?;
    if !report.failures.is_empty() {
        return Err(format!("{} contents not delivered (first: {} {})", report.failures.len(), report.failures[0].0, report.failures[0].1));
    }
    Ok(())
}
