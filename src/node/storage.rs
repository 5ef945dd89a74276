//! The node's storage backend: unftp-sbe-fs wrapped with what a drift
//! node must add.
//!
//! - **Permissions** per operation from the users file, looked up live
//!   (a SIGHUP that revokes `write` stops the next upload of a user already
//!   logged in). Refusals are `550 Permission denied`; the reason is logged.
//! - **Paths**: normalised lexically first; `..` that would climb above the
//!   home is refused, NUL bytes and over-long names are refused (553) before
//!   anything touches the disk. Everything below still goes through
//!   cap-std directories rooted at the home, so symlinks cannot lead out.
//! - **Uploads acknowledged only once journaled**: the kernel releases a
//!   FUSE file asynchronously after close(2), so `put` waits (bounded) for
//!   the file's `write` entry before returning; only then does libunftp
//!   send 226 (architecture guarantee 2).
//! - **Transfer I/O**: on plain data connections (libunftp patched to hand
//!   over the socket, `vendor/README.md`) downloads use `sendfile` and
//!   uploads `splice`, each on its own thread ([`super::zerocopy`]); a
//!   whole-file upload is hashed while it arrives and the hash offered to
//!   drift-fs, so the wait for its journal entry is short. TLS data
//!   connections move `io_chunk`-sized blocks (1 MiB by default) through a
//!   blocking thread with positional I/O (unftp-sbe-fs would copy 4 KiB at
//!   a time, a FUSE round trip each).
//! - **Stalled transfers** fail after the idle timeout (libunftp suspends
//!   its idle timer during a transfer and has no other limit).
//!
//! Listing, metadata, mkdir, rmdir, delete and rename are delegated to
//! unftp-sbe-fs after the checks.

use std::ffi::OsStr;
use std::fmt::Debug;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use unftp_core::storage::{Error, ErrorKind, Fileinfo, Metadata, Result, StorageBackend, FEATURE_RESTART};
use unftp_sbe_fs::{Filesystem, Meta};

use super::auth::NodeUser;
use super::limits::{Sessions, UserSlot};
use super::state::StateHandle;
use super::users::Perm;
use super::xferlog::TransferLog;
use super::zerocopy::{self, stalled};

/// Longest accepted path (bytes) and path component, as Linux.
pub const MAX_PATH: usize = 4095;
pub const MAX_NAME: usize = 255;
/// Blocks in flight between the network side and the disk side.
const PIPELINE_DEPTH: usize = 4;

/// Tells an upload when its closed file has been journaled. Implemented
/// over drift-fs's journal in `mount.rs`; absent when serving a plain
/// directory.
pub trait CommitLog: Send + Sync + Debug {
    /// The journal position now; entries appended later have a higher seq.
    fn mark(&self) -> u64;
    /// Blocks until a `write` entry for `path` (relative to the mount root,
    /// starting with `/`) is appended after `after`, or `timeout` passes.
    /// Returns whether it appeared.
    fn wait_written(&self, after: u64, path: &str, timeout: Duration) -> io::Result<bool>;
    /// Offers the BLAKE3 of an upload the node hashed while writing it, so
    /// the filesystem need not read the file back before journaling it.
    /// Called just before the file is closed; the filesystem checks the
    /// offer could not be wrong before it uses it.
    /// `ino` is the file's inode number on the mount (`st_ino` of the
    /// upload's handle), so the offer cannot be taken by another file.
    fn offer(&self, path: &str, ino: u64, size: u64, hash: blake3::Hash);
}

/// What every session's backend shares.
#[derive(Debug)]
pub struct StorageContext {
    /// The directory FTP serves: the FUSE mountpoint (or the backing
    /// directory in plain mode). User homes are inside it.
    pub served_root: PathBuf,
    pub state: Arc<StateHandle>,
    pub sessions: Arc<Sessions>,
    pub commit: Option<Arc<dyn CommitLog>>,
    pub fsync_uploads: bool,
    pub commit_timeout: Duration,
    pub io_chunk: usize,
    /// The zero-copy transfer threads (told to stop, and waited for, when
    /// the node stops).
    pub transfers: Arc<zerocopy::Transfers>,
    /// The transfer and access log ([`super::xferlog`]).
    pub xferlog: Arc<TransferLog>,
}

/// State of one logged-in session.
#[derive(Debug)]
struct Session {
    fs: Filesystem,
    /// The user's home, opened through the served root with cap-std.
    home: Arc<cap_std::fs::Dir>,
    /// The home relative to the served root (`""` for the root itself,
    /// else `/a/b`): the prefix of this session's paths in the journal.
    journal_prefix: String,
    /// Holds this session's place in the per-user limit until the session
    /// (and so this backend) is dropped.
    _slot: UserSlot,
}

/// An upload between opening its file and its acknowledgement.
struct Upload {
    /// The file's path in the journal.
    journal_path: String,
    /// The journal position when the file was opened (no journal in plain mode).
    mark: Option<u64>,
    started: std::time::Instant,
}

/// An upload's hash in the making, for drift-fs ([`CommitLog::offer`]).
struct Offer {
    commit: Arc<dyn CommitLog>,
    path: String,
    ino: u64,
    hasher: zerocopy::TailHasher,
}

impl Offer {
    /// Bytes up to `end` are in the file.
    fn advance(&self, end: u64) {
        self.hasher.advance(end);
    }

    /// Before the close: offers the hash of the `bytes` written if the
    /// upload succeeded; a failed one is not waited for (drift-fs hashes
    /// what arrived at release).
    fn complete(self, succeeded: bool, bytes: u64) {
        if !succeeded {
            self.hasher.abandon();
            return;
        }
        match self.hasher.finish(bytes) {
            Ok(hash) => self.commit.offer(&self.path, self.ino, bytes, hash),
            // Not fatal: drift-fs then hashes the file itself.
            Err(e) => tracing::warn!(error = %e, "could not hash the upload while receiving it"),
        }
    }
}

/// The storage backend of one control connection.
pub struct DriftStorage {
    ctx: Arc<StorageContext>,
    /// The client's address, for the transfer log.
    peer: std::net::SocketAddr,
    session: Option<Session>,
}

/// Short on purpose: libunftp's tracing spans print the whole session,
/// this backend included, on every log line inside a command.
impl Debug for DriftStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.session {
            Some(s) => write!(f, "DriftStorage({})", if s.journal_prefix.is_empty() { "/" } else { &s.journal_prefix }),
            None => f.write_str("DriftStorage(not logged in)"),
        }
    }
}

impl DriftStorage {
    pub fn new(ctx: Arc<StorageContext>, peer: std::net::SocketAddr) -> Self {
        DriftStorage { ctx, peer, session: None }
    }

    fn session(&self) -> Result<&Session> {
        self.session
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::PermissionDenied, "not logged in"))
    }

    /// Refuses unless the user (as the users file says *now*) has `perm`.
    fn check(&self, user: &NodeUser, perm: Perm, path: &Path) -> Result<()> {
        let state = self.ctx.state.current();
        match state.users.get(&user.name) {
            Some(u) if u.perms.contains(perm) => Ok(()),
            Some(_) => {
                tracing::warn!(user = %user.name, path = %path.display(), needs = %perm, "refused: user lacks permission");
                Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!("permission denied: user {} lacks the {perm} permission", user.name),
                ))
            }
            None => {
                tracing::warn!(user = %user.name, path = %path.display(), "refused: user no longer exists");
                Err(Error::new(ErrorKind::PermissionDenied, "user no longer exists"))
            }
        }
    }

    /// Paths in the journal are relative to the mount root.
    fn journal_path(&self, s: &Session, rel: &Path) -> String {
        format!("{}/{}", s.journal_prefix, rel.display())
    }

    /// Opens a file of the home for reading; returns it with its length.
    async fn open_read(&self, rel: PathBuf) -> Result<(std::fs::File, u64)> {
        let home = self.session()?.home.clone();
        blocking(move || {
            let f = home.open(&rel)?.into_std();
            let meta = f.metadata()?;
            if meta.is_dir() {
                return Err(io::Error::from_raw_os_error(libc::EISDIR));
            }
            Ok((f, meta.len()))
        })
        .await
    }

    /// Checks and opens the target of an upload (truncated, or cut to
    /// `start_pos` for REST/APPE) and notes the journal position the
    /// upload's `write` entry must come after.
    async fn open_upload(&self, user: &NodeUser, path: &Path, start_pos: u64) -> Result<(std::fs::File, Upload)> {
        self.check(user, Perm::Write, path)?;
        let rel = resolve(path)?;
        if is_home(&rel) {
            return Err(Error::new(ErrorKind::FileNameNotAllowedError, "cannot upload onto a directory"));
        }
        if self.ctx.transfers.stopping().load(std::sync::atomic::Ordering::Relaxed) {
            // Opening would truncate the old file for a transfer that
            // cannot run any more.
            return Err(Error::new(ErrorKind::TransientFileNotAvailable, "the node is stopping"));
        }
        let session = self.session()?;
        let upload = Upload {
            journal_path: self.journal_path(session, &rel),
            mark: self.ctx.commit.as_ref().map(|c| c.mark()),
            started: std::time::Instant::now(),
        };
        let home = session.home.clone();
        let file = blocking(move || {
            let mut oo = cap_std::fs::OpenOptions::new();
            // Readable too: the upload's hasher reads it back through a
            // clone of this handle.
            oo.read(true).write(true).create(true).truncate(start_pos == 0);
            let f = home.open_with(&rel, &oo)?.into_std();
            if start_pos > 0 {
                // REST: keep exactly the first start_pos bytes.
                f.set_len(start_pos)?;
            }
            Ok(f)
        })
        .await?;
        Ok((file, upload))
    }

    /// For a whole-file upload on the journaled mount: starts hashing the
    /// file as it is written (from the page cache, through a clone of the
    /// upload's handle, so it is this file even if its name is taken over),
    /// to offer the hash to drift-fs before the close; the 226 then waits
    /// for a journal append, not for a read-back of the file. Without it
    /// (resumed uploads, plain mode, a hasher that cannot start) drift-fs
    /// hashes the file at release.
    fn start_offer(&self, file: &std::fs::File, upload: &Upload, start_pos: u64) -> Option<Offer> {
        let commit = self.ctx.commit.clone().filter(|_| start_pos == 0)?;
        let started = file
            .try_clone()
            .and_then(|f| Ok((f.metadata()?.ino(), f)))
            .and_then(|(ino, f)| Ok((ino, zerocopy::TailHasher::start(f)?)));
        match started {
            Ok((ino, hasher)) => Some(Offer {
                commit,
                path: upload.journal_path.clone(),
                ino,
                hasher,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the upload hasher; drift-fs will hash the file");
                None
            }
        }
    }

    /// After the upload's file is closed: waits (bounded) until its
    /// `write` entry is in the journal, so the 226 that follows is only
    /// sent for journaled data (architecture guarantee 2).
    async fn finish_upload(&self, upload: Upload, total: u64) -> Result<u64> {
        let Upload {
            journal_path,
            mark,
            started,
        } = upload;
        tracing::debug!(bytes = total, data_ms = started.elapsed().as_millis() as u64, "upload written and closed");
        if let (Some(commit), Some(mark)) = (self.ctx.commit.clone(), mark) {
            let timeout = self.ctx.commit_timeout;
            let jp = journal_path.clone();
            let waited = std::time::Instant::now();
            let seen = tokio::task::spawn_blocking(move || commit.wait_written(mark, &jp, timeout)).await;
            match seen {
                Ok(Ok(true)) => {
                    tracing::debug!(path = %journal_path, bytes = total, wait_ms = waited.elapsed().as_millis() as u64, "upload journaled");
                }
                Ok(Ok(false)) => {
                    tracing::error!(path = %journal_path, secs = timeout.as_secs(), "upload not journaled in time; not acknowledging it");
                    return Err(Error::new(ErrorKind::LocalError, "upload was not journaled in time"));
                }
                Ok(Err(e)) => {
                    tracing::error!(path = %journal_path, error = %e, "cannot read the journal; not acknowledging the upload");
                    return Err(Error::new(ErrorKind::LocalError, e));
                }
                Err(e) => return Err(Error::new(ErrorKind::LocalError, e.to_string())),
            }
        }
        Ok(total)
    }

    fn stall_limit(&self) -> Duration {
        self.ctx.state.current().service.idle_timeout
    }
}

/// Normalises an FTP path (already joined with the session's cwd by
/// libunftp) into a path relative to the home: `.` for the home itself.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.contains(&0) {
        tracing::warn!(path = %path.display(), "refused: NUL byte in path");
        return Err(Error::new(ErrorKind::FileNameNotAllowedError, "NUL byte in path"));
    }
    if bytes.len() > MAX_PATH {
        tracing::warn!(len = bytes.len(), "refused: path too long");
        return Err(Error::new(ErrorKind::FileNameNotAllowedError, "path too long"));
    }
    let mut parts: Vec<&OsStr> = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    tracing::warn!(path = %path.display(), "refused: path leaves the home directory");
                    return Err(Error::new(ErrorKind::PermissionDenied, "path leaves the home directory"));
                }
            }
            Component::Normal(name) => {
                if name.len() > MAX_NAME {
                    tracing::warn!(len = name.len(), "refused: file name too long");
                    return Err(Error::new(ErrorKind::FileNameNotAllowedError, "file name too long"));
                }
                parts.push(name);
            }
        }
    }
    if parts.is_empty() {
        return Ok(PathBuf::from("."));
    }
    Ok(parts.iter().collect())
}

fn is_home(rel: &Path) -> bool {
    rel == Path::new(".")
}

/// Runs blocking file work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Error::from),
        Err(e) => Err(Error::new(ErrorKind::LocalError, e.to_string())),
    }
}

/// Runs a zero-copy transfer loop on a thread of its own, counted in
/// [`zerocopy::Transfers`] so the node can stop it and wait for it. A new
/// thread is placed by the scheduler on the least loaded CPU, while a
/// pooled one wakes where it last ran; on loopback this looked better in
/// one comparison (BENCHMARKS.md), within noise in later ones. One thread
/// per transfer costs tens of microseconds, nothing beside an FTP command
/// round trip.
async fn on_own_thread<T: Send + 'static>(
    transfers: &Arc<zerocopy::Transfers>,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    transfers
        .spawn(f, move |r| {
            // The receiver is gone only if the session was dropped.
            let _ = tx.send(r);
        })
        .map_err(Error::from)?;
    match rx.await {
        Ok(r) => r.map_err(Error::from),
        Err(_) => Err(Error::new(ErrorKind::LocalError, "transfer thread ended without a result")),
    }
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn read_full_at(f: &std::fs::File, buf: &mut [u8], mut pos: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read_at(&mut buf[filled..], pos) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                pos += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[async_trait]
impl StorageBackend<NodeUser> for DriftStorage {
    type Metadata = Meta;

    fn enter(&mut self, user: &NodeUser) -> io::Result<()> {
        let state = self.ctx.state.current();
        let max = state.service.max_sessions_per_user;
        let slot = self.ctx.sessions.try_login(&user.name, max).ok_or_else(|| {
            tracing::warn!(user = %user.name, max, "login refused: user has too many sessions");
            io::Error::other(format!("user {} already has {max} sessions", user.name))
        })?;
        let mut fs = Filesystem::new(&self.ctx.served_root)?;
        StorageBackend::<NodeUser>::enter(&mut fs, user)?;
        let root = cap_std::fs::Dir::open_ambient_dir(&self.ctx.served_root, cap_std::ambient_authority())?;
        let home_rel = PathBuf::from(user.home.trim_start_matches('/'));
        let home = if home_rel.as_os_str().is_empty() {
            root
        } else {
            root.open_dir(&home_rel)?
        };
        let journal_prefix = if user.home == "/" { String::new() } else { user.home.clone() };
        self.session = Some(Session {
            fs,
            home: Arc::new(home),
            journal_prefix,
            _slot: slot,
        });
        Ok(())
    }

    fn supported_features(&self) -> u32 {
        FEATURE_RESTART
    }

    async fn metadata<P: AsRef<Path> + Send + Debug>(&self, user: &NodeUser, path: P) -> Result<Meta> {
        let rel = resolve(path.as_ref())?;
        self.session()?.fs.metadata(user, rel).await
    }

    async fn list<P: AsRef<Path> + Send + Debug>(&self, user: &NodeUser, path: P) -> Result<Vec<Fileinfo<PathBuf, Meta>>>
    where
        Meta: Metadata,
    {
        self.check(user, Perm::List, path.as_ref())?;
        let rel = resolve(path.as_ref())?;
        self.session()?.fs.list(user, rel).await
    }

    async fn get<P: AsRef<Path> + Send + Debug>(&self, user: &NodeUser, path: P, start_pos: u64) -> Result<Box<dyn AsyncRead + Send + Sync + Unpin>> {
        self.check(user, Perm::Read, path.as_ref())?;
        let rel = resolve(path.as_ref())?;
        let (file, _) = self.open_read(rel).await?;
        let mut file = tokio::fs::File::from_std(file);
        if start_pos > 0 {
            tokio::io::AsyncSeekExt::seek(&mut file, io::SeekFrom::Start(start_pos)).await?;
        }
        Ok(Box::new(tokio::io::BufReader::with_capacity(self.ctx.io_chunk, file)))
    }

    async fn get_into<'a, P, W: ?Sized>(&self, user: &NodeUser, path: P, start_pos: u64, output: &'a mut W) -> Result<u64>
    where
        W: AsyncWrite + Unpin + Sync + Send,
        P: AsRef<Path> + Send + Debug,
    {
        self.check(user, Perm::Read, path.as_ref())?;
        let rel = resolve(path.as_ref())?;
        let (file, len) = self.open_read(rel).await?;
        let chunk = self.ctx.io_chunk;
        let limit = self.stall_limit();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Vec<u8>>>(PIPELINE_DEPTH);
        let (pool_tx, mut pool_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(PIPELINE_DEPTH + 2);
        // Serve the file as it was when opened: the loop ends at `len`
        // even if someone keeps appending.
        let reader = tokio::task::spawn_blocking(move || {
            let mut pos = start_pos;
            while pos < len {
                let want = chunk.min((len - pos) as usize);
                let mut buf = pool_rx.try_recv().unwrap_or_default();
                buf.resize(want, 0);
                let msg = read_full_at(&file, &mut buf, pos).map(|n| {
                    buf.truncate(n);
                    buf
                });
                let done = match &msg {
                    Ok(b) => b.is_empty(),
                    Err(_) => true,
                };
                if let Ok(b) = &msg {
                    pos += b.len() as u64;
                }
                // A closed receiver means the client went away.
                if tx.blocking_send(msg).is_err() || done {
                    return;
                }
            }
        });
        let mut total = 0u64;
        let result: io::Result<()> = async {
            while let Some(block) = rx.recv().await {
                let block = block?;
                if block.is_empty() {
                    break;
                }
                tokio::time::timeout(limit, output.write_all(&block))
                    .await
                    .map_err(|_| stalled("download", limit))??;
                total += block.len() as u64;
                let _ = pool_tx.try_send(block);
            }
            tokio::time::timeout(limit, output.flush())
                .await
                .map_err(|_| stalled("download", limit))??;
            Ok(())
        }
        .await;
        drop(rx);
        let _ = reader.await;
        result?;
        Ok(total)
    }

    async fn put<P: AsRef<Path> + Send + Debug, R: AsyncRead + Send + Sync + Unpin + 'static>(
        &self,
        user: &NodeUser,
        mut input: R,
        path: P,
        start_pos: u64,
    ) -> Result<u64> {
        let (file, upload) = self.open_upload(user, path.as_ref(), start_pos).await?;
        let fsync = self.ctx.fsync_uploads;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(PIPELINE_DEPTH);
        // Written blocks come back for reuse: no allocation or zeroing of
        // a fresh block per chunk.
        let (pool_tx, mut pool_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(PIPELINE_DEPTH + 2);
        let offer = self.start_offer(&file, &upload, start_pos);
        let writer = tokio::task::spawn_blocking(move || -> io::Result<()> {
            let mut pos = start_pos;
            let mut written = Ok(());
            while let Some(block) = rx.blocking_recv() {
                if let Err(e) = file.write_all_at(&block, pos) {
                    written = Err(e);
                    break;
                }
                pos += block.len() as u64;
                if let Some(o) = &offer {
                    o.advance(pos);
                }
                let _ = pool_tx.try_send(block);
            }
            if let Some(o) = offer {
                o.complete(written.is_ok(), pos);
            }
            written?;
            if fsync {
                let t = std::time::Instant::now();
                file.sync_all()?;
                tracing::debug!(fsync_ms = t.elapsed().as_millis() as u64, "upload fsynced");
            }
            // close(2) here, before the journal wait below starts.
            drop(file);
            Ok(())
        });

        let chunk = self.ctx.io_chunk;
        let limit = self.stall_limit();
        let mut total = 0u64;
        let read_result: io::Result<()> = async {
            let mut eof = false;
            while !eof {
                let mut buf = pool_rx.try_recv().unwrap_or_default();
                buf.resize(chunk, 0);
                let mut filled = 0;
                let mut failed = None;
                while filled < chunk {
                    let read = tokio::time::timeout(limit, input.read(&mut buf[filled..]))
                        .await
                        .map_err(|_| stalled("upload", limit))
                        .and_then(|r| r);
                    match read {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(n) => filled += n,
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                if let Some(e) = failed {
                    // Keep what did arrive, so a resumed upload (SIZE, then
                    // REST or APPE) continues from every byte received.
                    buf.truncate(filled);
                    if filled > 0 && tx.send(buf).await.is_ok() {
                        total += filled as u64;
                    }
                    return Err(e);
                }
                if filled == 0 {
                    break;
                }
                buf.truncate(filled);
                total += filled as u64;
                if tx.send(buf).await.is_err() {
                    // The writer stopped; its error is reported below.
                    break;
                }
            }
            Ok(())
        }
        .await;
        drop(tx);
        match writer.await {
            Ok(r) => r?,
            Err(e) => return Err(Error::new(ErrorKind::LocalError, e.to_string())),
        }
        read_result?;
        self.finish_upload(upload, total).await
    }

    async fn put_from_tcp<P>(&self, user: &NodeUser, socket: tokio::net::TcpStream, path: P, start_pos: u64) -> Result<u64>
    where
        P: AsRef<Path> + Send + Debug,
    {
        let (file, upload) = self.open_upload(user, path.as_ref(), start_pos).await?;
        let socket = socket.into_std()?;
        let (fsync, limit, transfers) = (self.ctx.fsync_uploads, self.stall_limit(), self.ctx.transfers.clone());
        let offer = self.start_offer(&file, &upload, start_pos);
        let transfer = move || {
            let mut got = zerocopy::receive_into(socket.as_fd(), &file, start_pos, limit, transfers.stopping(), &mut |end| {
                if let Some(o) = &offer {
                    o.advance(end);
                }
            });
            if let Some(o) = offer {
                o.complete(got.result.is_ok(), got.bytes);
            }
            if got.result.is_ok() && fsync {
                got.result = file.sync_all();
            }
            // close(2) here, before the journal wait starts.
            drop(file);
            Ok(got)
        };
        let received = on_own_thread(&self.ctx.transfers, transfer).await?;
        // Bytes that arrived before a failure stay in the file, so a
        // resumed upload (SIZE, then REST or APPE) continues from them.
        received.result?;
        self.finish_upload(upload, received.bytes).await
    }

    async fn get_into_tcp<P>(&self, user: &NodeUser, path: P, start_pos: u64, socket: &mut tokio::net::TcpStream) -> Result<u64>
    where
        P: AsRef<Path> + Send + Debug,
    {
        self.check(user, Perm::Read, path.as_ref())?;
        let rel = resolve(path.as_ref())?;
        let (file, len) = self.open_read(rel).await?;
        if start_pos >= len {
            return Ok(0);
        }
        // The blocking thread gets its own descriptor of the connection,
        // so an abandoned transfer can never write to a reused number.
        let sock = socket.as_fd().try_clone_to_owned()?;
        let (limit, transfers) = (self.stall_limit(), self.ctx.transfers.clone());
        // Serve the file as it was when opened: stop at `len` even if
        // someone keeps appending.
        let sent = on_own_thread(&self.ctx.transfers, move || {
            zerocopy::send_file(sock.as_fd(), &file, start_pos, len, limit, transfers.stopping())
        })
        .await?;
        match sent {
            zerocopy::Sent::Done(n) => Ok(n),
            zerocopy::Sent::Unsupported => {
                tracing::debug!("sendfile unsupported for this file; copying through the node");
                self.get_into(user, path, start_pos, socket).await
            }
        }
    }

    async fn del<P: AsRef<Path> + Send + Debug>(&self, user: &NodeUser, path: P) -> Result<()> {
        self.check(user, Perm::Delete, path.as_ref())?;
        let rel = resolve(path.as_ref())?;
        self.session()?.fs.del(user, rel).await
    }

    async fn mkd<P: AsRef<Path> + Send + Debug>(&self, user: &NodeUser, path: P) -> Result<()> {
        self.check(user, Perm::Mkdir, path.as_ref())?;
        let rel = resolve(path.as_ref())?;
        if is_home(&rel) {
            return Err(Error::from(ErrorKind::PermanentFileNotAvailable));
        }
        self.session()?.fs.mkd(user, rel).await
    }

    async fn rename<P: AsRef<Path> + Send + Debug>(&self, user: &NodeUser, from: P, to: P) -> Result<()> {
        self.check(user, Perm::Rename, from.as_ref())?;
        let from = resolve(from.as_ref())?;
        let to = resolve(to.as_ref())?;
        if is_home(&from) || is_home(&to) {
            return Err(Error::new(ErrorKind::PermissionDenied, "cannot rename the home directory"));
        }
        let s = self.session()?;
        // Renaming onto an existing name destroys it: that is a deletion.
        if s.fs.metadata(user, to.clone()).await.is_ok() {
            self.check(user, Perm::Delete, &to)?;
        }
        s.fs.rename(user, from, to).await
    }

    async fn rmd<P: AsRef<Path> + Send + Debug>(&self, user: &NodeUser, path: P) -> Result<()> {
        self.check(user, Perm::Delete, path.as_ref())?;
        let rel = resolve(path.as_ref())?;
        if is_home(&rel) {
            return Err(Error::new(ErrorKind::PermissionDenied, "cannot remove the home directory"));
        }
        self.session()?.fs.rmd(user, rel).await
    }

    async fn cwd<P: AsRef<Path> + Send + Debug>(&self, user: &NodeUser, path: P) -> Result<()> {
        let rel = resolve(path.as_ref())?;
        self.session()?.fs.cwd(user, rel).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_normalises_and_refuses_escapes() {
        assert_eq!(resolve(Path::new("/")).unwrap(), PathBuf::from("."));
        assert_eq!(resolve(Path::new("/a/./b/../c")).unwrap(), PathBuf::from("a/c"));
        assert_eq!(resolve(Path::new("/a/..")).unwrap(), PathBuf::from("."));
        assert_eq!(
            resolve(Path::new("/../etc/passwd")).unwrap_err().kind(),
            ErrorKind::PermissionDenied
        );
        assert_eq!(resolve(Path::new("/a/../../x")).unwrap_err().kind(), ErrorKind::PermissionDenied);
        assert_eq!(
            resolve(Path::new("/a\0b")).unwrap_err().kind(),
            ErrorKind::FileNameNotAllowedError
        );
        let long = format!("/{}", "x".repeat(256));
        assert_eq!(resolve(Path::new(&long)).unwrap_err().kind(), ErrorKind::FileNameNotAllowedError);
        let ok = format!("/{}", "x".repeat(255));
        assert!(resolve(Path::new(&ok)).is_ok());
        let deep = "/abc".repeat(1100);
        assert_eq!(resolve(Path::new(&deep)).unwrap_err().kind(), ErrorKind::FileNameNotAllowedError);
    }
}
