//! The backup's side: a dial-back xfer receiver into `<state_dir>/inbox`
//! (blobs under their content's name, [`NameIsContent`]) and the replay of
//! each `Forward` onto the backing directory, each entry then copied into
//! the journal, answered by `Applied`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use drift_fs::blobs::BlobStore;
use drift_fs::{Entry, Op};
use tokio::sync::mpsc;

use super::session::blocking;
use super::{AbortOnDrop, Agent};
use crate::cluster::msg::{Up, WireEntry};
use crate::cluster::reverse::{self, DialedAcceptor};
use crate::cluster::{blob_name, NameIsContent};
use crate::xfer::channel::Stream;
use crate::xfer::{Receiver, RecvConfig};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("a forwarded entry is not valid: {0}")]
    Entry(String),
    #[error(transparent)]
    Journal(#[from] drift_fs::JournalError),
    #[error("entry {0} differs from the one in this node's journal")]
    Differs(u64),
    #[error("entry {got} forwarded where {want} was expected")]
    Gap { got: u64, want: u64 },
    #[error(transparent)]
    Replay(#[from] drift_fs::replay::ReplayError),
    #[error("inbox: {0}")]
    Inbox(#[from] drift_fs::blobs::BlobError),
    #[error(transparent)]
    Task(#[from] super::session::TaskFailed),
}

/// The receiver and the applier of one session.
pub struct Applier {
    batches: mpsc::UnboundedSender<(Vec<WireEntry>, Vec<u64>)>,
    dialed: mpsc::UnboundedSender<Stream>,
    _tasks: Vec<AbortOnDrop>,
}

impl Applier {
    /// Starts the receiver and the applier; a batch that cannot be
    /// applied is reported on `failed` (the session then ends).
    pub fn start(agent: Arc<Agent>, out: mpsc::UnboundedSender<Up>, failed: mpsc::UnboundedSender<String>) -> Applier {
        let dir = &agent.cfg.state_dir;
        let (receiver, mut reports) = Receiver::new(RecvConfig {
            dir: dir.join("inbox"),
            state_dir: dir.join("xfer-state"),
            key: agent.key.clone(),
            hook: Some(Arc::new(NameIsContent)),
            fsync: false,
            handshake_timeout: Duration::from_secs(10),
            remove_empty_state_dir: false,
        });
        let (acceptor, dialed) = DialedAcceptor::new("guide (dial-back)".into());
        let serve = tokio::spawn(async move {
            let drain = async {
                while let Some(r) = reports.recv().await {
                    match r.error {
                        None => tracing::debug!(entries = r.entries, bytes = r.bytes, "contents received from the guide"),
                        Some(e) => tracing::warn!(error = %e, "a transfer from the guide failed"),
                    }
                }
            };
            tokio::select! {
                r = receiver.serve(Arc::new(acceptor)) => if let Err(e) = r { tracing::debug!(error = %e, "dial-back receiver stopped") },
                _ = drain => {}
            }
        });
        let (batches, mut rx) = mpsc::unbounded_channel::<(Vec<WireEntry>, Vec<u64>)>();
        let apply = tokio::spawn(async move {
            while let Some((entries, absent)) = rx.recv().await {
                let a = agent.clone();
                match blocking(move || apply_batch(&a, entries, absent)).await {
                    Ok(Some(seq)) => {
                        if out.send(Up::Applied { seq }).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "cannot apply the history the guide forwarded");
                        let _ = failed.send(format!("applying forwarded entries: {e}"));
                        return;
                    }
                }
            }
        });
        Applier { batches, dialed, _tasks: vec![AbortOnDrop(serve), AbortOnDrop(apply)] }
    }

    pub fn forward(&self, entries: Vec<WireEntry>, absent: Vec<u64>) {
        let _ = self.batches.send((entries, absent));
    }

    /// `OpenReverse`: dial the guide with `token`; the stream goes to the receiver.
    pub fn open_reverse(&self, guide: &str, token: &str) {
        let Some(token) = reverse::parse_token(token) else {
            tracing::warn!("OpenReverse with a malformed token; ignored");
            return;
        };
        let (guide, dialed) = (guide.to_owned(), self.dialed.clone());
        tokio::spawn(async move {
            match reverse::dial(&guide, &token).await {
                Ok(s) => {
                    let _ = dialed.send(s);
                }
                Err(e) => tracing::warn!(%guide, error = %e, "cannot dial the guide back for a transfer"),
            }
        });
    }
}

/// Applies one `Forward`; returns the last seq now in the journal (None
/// if the batch was empty).
fn apply_batch(a: &Agent, wire: Vec<WireEntry>, absent: Vec<u64>) -> Result<Option<u64>, ApplyError> {
    let last = a.journal.last_seq();
    let mut entries: Vec<Entry> = Vec::with_capacity(wire.len());
    for w in &wire {
        let e = w.to_entry().map_err(ApplyError::Entry)?;
        if e.seq <= last {
            // Already here (a re-send): it must be the same entry.
            match a.journal.get(e.seq)? {
                Some(mine) if WireEntry::from(&mine).fingerprint() == w.fingerprint() => continue,
                _ => return Err(ApplyError::Differs(e.seq)),
            }
        }
        let want = entries.last().map_or(last + 1, |p: &Entry| p.seq + 1);
        if e.seq != want {
            return Err(ApplyError::Gap { got: e.seq, want });
        }
        entries.push(e);
    }
    let Some(upto) = entries.last().map(|e| e.seq) else {
        return Ok(if wire.is_empty() { None } else { Some(last) });
    };
    let inbox = a.cfg.state_dir.join("inbox");
    let blobs = BlobStore::open(&inbox)?;
    let absent: HashSet<u64> = absent.into_iter().collect();
    let mut copy_err: Option<drift_fs::JournalError> = None;
    let mut i = 0;
    let report = drift_fs::replay::replay_entries_skipping(
        &entries,
        &blobs,
        &a.backing,
        |seq| absent.contains(&seq),
        |seq| {
            // Entries are applied (or skipped) in order: copy each into the journal.
            while i < entries.len() && entries[i].seq <= seq {
                if copy_err.is_none() {
                    if let Err(e) = a.journal.append_copy(&entries[i]) {
                        copy_err = Some(e);
                    }
                }
                i += 1;
            }
        },
    )?;
    if let Some(e) = copy_err {
        return Err(e.into());
    }
    for e in &entries {
        if e.op == Op::Write {
            if let Some(h) = &e.blake3 {
                let _ = std::fs::remove_file(inbox.join(blob_name(h)));
            }
        }
    }
    if let Err(e) = a.store.update(|p| p.confirmed_seq = p.confirmed_seq.max(upto)) {
        tracing::warn!(error = %e, "cannot record the confirmed seq");
    }
    tracing::debug!(upto, applied = report.applied, superseded = report.superseded, "applied forwarded entries");
    Ok(Some(upto))
}
