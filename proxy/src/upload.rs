//! An upload that survives the loss of its primary. The client's bytes
//! go to a spool file on the proxy's disk and to the primary at once. If
//! the primary is lost, the proxy keeps reading the client's data into
//! the spool until the client's end of file (the client's data connection
//! never breaks), then, on the next primary, finishes the file from the
//! spool: with `REST` only where the new primary's file is proved (size
//! and BLAKE3) to be a prefix of the spool, else from byte 0. The client
//! gets that primary's final reply: a `226` only once it holds the file.
//!
//! Spools count against `spool_quota_mb` (all sessions together). An
//! upload that would exceed it goes on without a spool, and is then not
//! resumed if its primary is lost (`451`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::backend::COMMAND_TIMEOUT;
use crate::download::file_id;
use crate::relay::{redo, FINAL_REPLY_TIMEOUT};
use crate::reply::Reply;
use crate::session::Session;
use crate::state::Progress;

const CHUNK: usize = 256 << 10;
/// Most resumptions of one upload.
const MAX_RESUMES: u32 = 8;

/// The spool space in use, shared by all sessions.
#[derive(Debug)]
pub struct SpoolSpace {
    pub dir: PathBuf,
    pub quota: u64,
    used: AtomicU64,
    next: AtomicU64,
}

impl SpoolSpace {
    /// Creates `dir` and removes the spools a previous proxy left (no
    /// session outlives its proxy yet).
    pub fn open(dir: &Path, quota: u64) -> std::io::Result<SpoolSpace> {
        std::fs::create_dir_all(dir)?;
        for ent in std::fs::read_dir(dir)?.flatten() {
            if ent.path().extension().is_some_and(|e| e == "spool") {
                std::fs::remove_file(ent.path())?;
            }
        }
        Ok(SpoolSpace { dir: dir.to_owned(), quota, used: AtomicU64::new(0), next: AtomicU64::new(1) })
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

/// One upload's spool file; removed (and its space released) when dropped.
pub struct Spool {
    space: Arc<SpoolSpace>,
    path: PathBuf,
    file: tokio::fs::File,
    len: u64,
}

impl Spool {
    async fn create(space: Arc<SpoolSpace>, session: u64) -> std::io::Result<Spool> {
        let n = space.next.fetch_add(1, Ordering::Relaxed);
        let path = space.dir.join(format!("{session}-{n}.spool"));
        let file = tokio::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).await?;
        Ok(Spool { space, path, file, len: 0 })
    }

    /// Appends `b`; false when the quota would be exceeded or the disk
    /// fails (the caller then drops the spool).
    async fn write(&mut self, b: &[u8]) -> bool {
        let n = b.len() as u64;
        let reserved = self.space.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| (u + n <= self.space.quota).then_some(u + n));
        if reserved.is_err() {
            warn!(spool = %self.path.display(), quota = self.space.quota, "spool quota reached: this upload goes on without a spool");
            return false;
        }
        self.len += n;
        match self.file.write_all(b).await {
            Ok(()) => true,
            Err(e) => {
                warn!(spool = %self.path.display(), "spool write failed ({e}): this upload goes on without a spool");
                false
            }
        }
    }

    /// BLAKE3 of the first `n` bytes.
    async fn prefix_hash(&self, n: u64) -> std::io::Result<String> {
        let path = self.path.clone();
        let run = move || {
            let mut f = std::fs::File::open(&path)?;
            let mut h = blake3::Hasher::new();
            std::io::copy(&mut std::io::Read::take(&mut f, n), &mut h)?;
            Ok(h.finalize().to_hex().to_string())
        };
        tokio::task::spawn_blocking(run).await.map_err(std::io::Error::other)?
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.space.used.fetch_sub(self.len, Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Ends a data connection so the node sees an error, not an end of file
/// (which it would store as a complete, short file).
fn abort(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

impl Session {
    /// Runs a STOR (at offset 0) whose first reply the client already
    /// has; returns the final reply for the client.
    pub async fn upload(&mut self, mut client: TcpStream, node: TcpStream, path: &str) -> Reply {
        let mut spool = match Spool::create(self.shared.spool.clone(), self.id).await {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(session = self.id, "no spool for this upload ({e}): it is not resumable");
                None
            }
        };
        let epoch = self.backend.as_ref().map_or(0, |b| b.epoch);
        self.shared.state.transfer_start(self.id, "STOR", path, spool.as_ref().map(|s| s.path.as_path()), epoch);
        let mut every = Progress::new();
        let mut node = Some(node);
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            if every.due() {
                let state = if node.is_some() { "running" } else { "waiting" };
                self.shared.state.transfer_state(self.id, total, epoch, state);
            }
            let n = match client.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    warn!(session = self.id, "the client's data connection broke after {total} bytes: {e}");
                    if let Some(nd) = node.take() {
                        abort(nd);
                        let _ = self.final_reply().await;
                    }
                    return Reply::new(426, "Data connection broken; transfer aborted");
                }
            };
            // To the spool and to the primary at the same time.
            let chunk = &buf[..n];
            let (spooled, sent) = tokio::join!(
                async {
                    match spool.as_mut() {
                        Some(s) => s.write(chunk).await,
                        None => true,
                    }
                },
                async {
                    match node.as_mut() {
                        Some(nd) => nd.write_all(chunk).await,
                        None => Ok(()),
                    }
                },
            );
            if !spooled {
                spool = None;
            }
            if let Err(e) = sent {
                warn!(session = self.id, "the primary was lost during an upload after {total} bytes: {e}");
                node = None;
                self.backend = None;
            }
            if node.is_none() && spool.is_none() {
                abort(client);
                return Reply::new(451, "The primary was lost and the upload was not spooled: send it again");
            }
            total += n as u64;
        }
        if let Some(mut nd) = node.take() {
            let _ = nd.shutdown().await;
            drop(nd);
            match self.final_reply().await {
                // Not acknowledged by a primary being replaced (libunftp
                // says only "Local error" for a failed STOR): the whole
                // file goes to the next primary from the spool. Sending
                // the same bytes again is harmless even if the guide did
                // store them.
                Some(r) if (redo(&r) || r.code == 451) && spool.is_some() && self.moving().await => {
                    info!(session = self.id, %path, "the upload was not kept by the old primary: finishing it on the next one");
                }
                Some(r) => return r,
                None => {}
            }
        }
        let Some(spool) = spool else {
            return Reply::new(451, "The primary was lost and the upload was not spooled: send it again");
        };
        drop(client);
        self.shared.state.transfer_state(self.id, total, epoch, "resuming");
        for _ in 0..MAX_RESUMES {
            match self.finish_upload(path, &spool, total).await {
                Ok(r) => return r,
                Err(Some(r)) => return r,
                Err(None) => {}
            }
        }
        Reply::new(451, "The service was lost too often during this upload")
    }

    /// Sends the spool to the next primary; `Err(None)`: lost again.
    async fn finish_upload(&mut self, path: &str, spool: &Spool, total: u64) -> Result<Reply, Option<Reply>> {
        self.backend = None;
        self.ensure_backend()
            .await
            .map_err(|_| Some(Reply::new(451, "No primary came back within the patience: upload not finished")))?;
        let Some(b) = self.backend.as_mut() else { return Err(None) };
        let lost = |e: crate::backend::BackendError| {
            warn!("finishing an upload failed: {e}");
            None
        };
        // What the new primary holds counts only if proved a prefix.
        let held = match file_id(b, path).await.map_err(lost)? {
            Some(id) if id.size > 0 && id.size <= total => match spool.prefix_hash(id.size).await {
                Ok(h) if h == id.blake3 => id.size,
                _ => 0,
            },
            _ => 0,
        };
        let mut data = b.open_data().await.map_err(lost)?;
        if held > 0 {
            let r = b.command(&format!("REST {held}")).await.map_err(lost)?;
            if r.code != 350 {
                return Err(Some(Reply::new(451, "The new primary refused to resume the upload")));
            }
        }
        b.send(&format!("STOR {path}")).await.map_err(lost)?;
        let first = b.reply(COMMAND_TIMEOUT).await.map_err(lost)?;
        if !first.preliminary() {
            return Err(Some(first));
        }
        let mut f = tokio::fs::File::open(&spool.path).await.map_err(|e| Some(Reply::new(451, format!("Spool unreadable: {e}"))))?;
        f.seek(std::io::SeekFrom::Start(held)).await.map_err(|e| Some(Reply::new(451, format!("Spool unreadable: {e}"))))?;
        let sent = tokio::io::copy(&mut f, &mut data).await;
        if let Err(e) = sent {
            abort(data);
            warn!(session = self.id, "sending the spool failed: {e}");
            self.backend = None;
            return Err(None);
        }
        let _ = data.shutdown().await;
        drop(data);
        match b.reply(FINAL_REPLY_TIMEOUT).await {
            Ok(r) => {
                info!(session = self.id, %path, bytes = total, from = held, code = r.code, "upload finished on the new primary from the spool");
                Ok(r)
            }
            Err(e) => Err(lost(e)),
        }
    }
}
