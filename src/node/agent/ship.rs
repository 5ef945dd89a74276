//! The primary's shipping: follows the journal from `shipped + 1`, copies
//! the content of each `write` into the outbox (checking its BLAKE3; a
//! content already replaced is reported `absent`), sends the copies over a
//! `DRIFTXFR` session to the guide, then `Entries`. Also the tree digest
//! every `interval_secs` while the journal stands still, and `Drained`
//! once a drain has shipped everything.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drift_fs::model::TreeModel;
use drift_fs::{Entry, Op};
use tokio::sync::mpsc;

use super::session::blocking;
use super::Agent;
use crate::cluster::msg::{Role, Up, WireEntry, MAX_BATCH};
use crate::cluster::{blob_name, manifest};
use crate::xfer::channel::TcpConnector;
use crate::xfer::{send_named, Progress, SendConfig};

/// Content bytes above which a batch is cut (at least one entry goes).
const MAX_BATCH_BYTES: u64 = 256 << 20;
/// Above this many bytes a batch goes over several connections.
const MANY_STREAMS_BYTES: u64 = 16 << 20;
/// Attempts to find a write's content while renames move it.
const PREPARE_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("reading the journal: {0}")]
    Journal(#[from] drift_fs::JournalError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("sending contents to the guide: {0}")]
    Send(#[from] crate::xfer::XferError),
    #[error("the guide did not take {name}: {why}")]
    NotTaken { name: String, why: String },
    #[error("the link to the guide is gone")]
    LinkGone,
    #[error(transparent)]
    Task(#[from] super::session::TaskFailed),
}

/// One batch ready to go: entries, absent seqs, and outbox copies.
struct Prepared {
    entries: Vec<Entry>,
    absent: Vec<u64>,
    /// (outbox file, wire name).
    files: Vec<(PathBuf, PathBuf)>,
    bytes: u64,
}

/// Ships until the session ends or the node stops being primary of `epoch`.
pub async fn run(agent: Arc<Agent>, out: mpsc::UnboundedSender<Up>, epoch: u64, mut shipped: u64) {
    let mut failures = 0u32;
    let mut drained = false;
    let mut digest_due = Instant::now() + agent.cfg.interval;
    let mut cache = Some(manifest::HashCache::default());
    loop {
        let g = &agent.gate;
        if out.is_closed() || g.epoch() != epoch || g.given_role() != Role::Primary {
            return;
        }
        if agent.journal.last_seq() > shipped {
            // After a failure every copy is hashed here, not only by the
            // guide: a content rewritten since it was journaled is then
            // reported absent instead of refused again and again.
            match ship_batch(&agent, &out, epoch, shipped, failures > 0).await {
                Ok(last) => {
                    tracing::debug!(from = shipped + 1, to = last, "shipped");
                    shipped = last;
                    failures = 0;
                }
                Err(e) => {
                    failures += 1;
                    let wait = Duration::from_millis(100 << failures.min(4));
                    tracing::warn!(from = shipped + 1, error = %e, retry_ms = wait.as_millis() as u64, "shipping failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
            continue;
        }
        if g.draining() && !drained {
            drained = true;
            tracing::info!(epoch, last_seq = shipped, "drained: everything journaled was shipped");
            let _ = out.send(Up::Drained { epoch, last_seq: shipped });
        }
        if Instant::now() >= digest_due {
            digest_due = Instant::now() + agent.cfg.interval;
            if let Some(c) = cache.take() {
                cache = Some(send_digest(&agent, &out, epoch, shipped, c).await);
            }
        }
        let journal = agent.journal.clone();
        let wait = blocking(move || journal.wait_for(shipped, Duration::from_millis(200), |_| true).map(|_| ()).map_err(ShipError::from));
        tokio::select! {
            _ = wait => {}
            _ = g.drain_asked() => {}
        }
    }
}

/// Sends `TreeDigest` if the journal stood still at `seq` during the walk.
async fn send_digest(agent: &Arc<Agent>, out: &mpsc::UnboundedSender<Up>, epoch: u64, seq: u64, mut cache: manifest::HashCache) -> manifest::HashCache {
    let a = agent.clone();
    let r = tokio::task::spawn_blocking(move || {
        let before = a.journal.last_seq();
        let items = cache.walk(&a.backing);
        let still = before == seq && a.journal.last_seq() == seq;
        (cache, items.map(|i| still.then(|| manifest::digest(i))))
    })
    .await;
    match r {
        Ok((cache, Ok(Some(digest)))) => {
            tracing::debug!(seq, %digest, "tree digest");
            let _ = out.send(Up::TreeDigest { epoch, seq, digest });
            cache
        }
        Ok((cache, Ok(None))) => cache,
        Ok((cache, Err(e))) => {
            tracing::warn!(error = %e, "cannot walk the backing tree for its digest");
            cache
        }
        Err(_) => manifest::HashCache::default(),
    }
}

async fn ship_batch(agent: &Arc<Agent>, out: &mpsc::UnboundedSender<Up>, epoch: u64, shipped: u64, verify: bool) -> Result<u64, ShipError> {
    let a = agent.clone();
    let t0 = Instant::now();
    let p = blocking(move || prepare(&a, shipped, verify)).await?;
    let prepared_ms = t0.elapsed().as_millis() as u64;
    let Some(last) = p.entries.last().map(|e| e.seq) else {
        return Ok(shipped);
    };
    if !p.files.is_empty() {
        let mut cfg = SendConfig::new(agent.key.clone());
        cfg.streams = if p.bytes > MANY_STREAMS_BYTES { 4 } else { 1 };
        let connector = Arc::new(TcpConnector { addr: agent.cfg.guide.clone() });
        let sent = send_named(&p.files, cfg, connector, Arc::new(Progress::default())).await;
        let files = p.files.clone();
        let _ = blocking(move || {
            for (f, _) in files {
                let _ = std::fs::remove_file(f);
            }
            Ok::<(), ShipError>(())
        })
        .await;
        let report = sent?;
        if let Some((name, why)) = report.failures.first() {
            return Err(ShipError::NotTaken { name: name.clone(), why: why.clone() });
        }
    }
    tracing::debug!(entries = p.entries.len(), bytes = p.bytes, prepared_ms, total_ms = t0.elapsed().as_millis() as u64, "batch shipped");
    let entries = p.entries.iter().map(WireEntry::from).collect();
    out.send(Up::Entries { epoch, entries, absent: p.absent }).map_err(|_| ShipError::LinkGone)?;
    Ok(last)
}

/// Lists the next batch and copies its contents into the outbox.
fn prepare(a: &Agent, shipped: u64, verify: bool) -> Result<Prepared, ShipError> {
    let outbox = a.cfg.state_dir.join("outbox");
    let mut attempt = 0;
    loop {
        attempt += 1;
        let all = a.journal.list(shipped, None)?;
        // Where each write's content lives now (renames followed).
        let model = TreeModel::from_entries(&all);
        let live: HashMap<u64, String> = model.files.iter().map(|(p, f)| (f.seq, p.clone())).collect();
        let mut p = Prepared { entries: Vec::new(), absent: Vec::new(), files: Vec::new(), bytes: 0 };
        let mut names = HashSet::new();
        let mut moved = false;
        // Cut by the message's size too: long paths make big entries.
        let fit = crate::cluster::msg::batch_len(all.iter().take(MAX_BATCH).map(|e| (e.path.len(), e.to.as_ref().map_or(0, |t| t.len()))));
        for e in all.into_iter().take(fit) {
            if !p.entries.is_empty() && p.bytes >= MAX_BATCH_BYTES {
                break;
            }
            if e.op == Op::Write {
                let hash = e.blake3.clone().unwrap_or_default();
                match live.get(&e.seq) {
                    None => p.absent.push(e.seq),
                    Some(_) if names.contains(&hash) => {}
                    Some(path) => match copy_checked(&a.backing, path, &outbox, &hash, e.size, verify)? {
                        Some((file, size)) => {
                            names.insert(hash.clone());
                            p.files.push((file, blob_name(&hash)));
                            p.bytes += size;
                        }
                        // Live by the journal but not on disk as journaled:
                        // being rewritten, or renamed since the listing.
                        None if attempt < PREPARE_ATTEMPTS => moved = true,
                        None => {
                            // Being rewritten in place: the journaled
                            // content is gone from disk. It goes as absent
                            // (the rewrite's own entry will carry the new
                            // content) and is not acknowledged.
                            tracing::warn!(seq = e.seq, path = %e.path, "content changed before it could be shipped; shipped as absent, not acknowledged");
                            a.gate.content_lost(e.seq);
                            p.absent.push(e.seq);
                        }
                    },
                }
            }
            if moved {
                break;
            }
            p.entries.push(e);
        }
        if moved {
            for (f, _) in &p.files {
                let _ = std::fs::remove_file(f);
            }
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        return Ok(p);
    }
}

/// Copies `backing/jpath` into the outbox; the copy if it has the size
/// `size` and (with `verify`) the hash `want`, else `None` (removed).
/// Without `verify` the copy is made by the kernel and its hash is checked
/// by the guide, whose receiver takes a blob only under its content's name.
fn copy_checked(backing: &Path, jpath: &str, outbox: &Path, want: &str, size: Option<u64>, verify: bool) -> Result<Option<(PathBuf, u64)>, ShipError> {
    let Some(src) = drift_fs::replay::resolve(backing, jpath) else {
        return Ok(None);
    };
    let dst = outbox.join(format!("{want}.{}", std::process::id()));
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::EISDIR);
    if !verify {
        return match std::fs::copy(&src, &dst) {
            Ok(n) if size.is_none_or(|s| s == n) => Ok(Some((dst, n))),
            Ok(_) => {
                let _ = std::fs::remove_file(&dst);
                Ok(None)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&dst);
                if gone(&e) {
                    Ok(None)
                } else {
                    Err(ShipError::Io { path: src, source: e })
                }
            }
        };
    }
    let mut input = match std::fs::File::open(&src) {
        Ok(f) => f,
        Err(e) if gone(&e) => return Ok(None),
        Err(source) => return Err(ShipError::Io { path: src, source }),
    };
    let copy = (|| -> std::io::Result<(blake3::Hash, u64)> {
        let mut out = std::fs::File::create(&dst)?;
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = input.read(&mut buf)?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            out.write_all(&buf[..k])?;
            n += k as u64;
        }
        Ok((h.finalize(), n))
    })();
    match copy {
        Ok((h, n)) if h.to_hex().as_str() == want => Ok(Some((dst, n))),
        Ok(_) => {
            let _ = std::fs::remove_file(&dst);
            Ok(None)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&dst);
            if gone(&e) {
                return Ok(None);
            }
            Err(ShipError::Io { path: dst, source: e })
        }
    }
}
