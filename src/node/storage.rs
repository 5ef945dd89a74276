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
//! - **Replies**: refusals carry the exact text the client sees
//!   ([`unftp_core::storage::ClientReply`]): `550 /a: File exists`,
//!   `550 /d: Is a directory`, `554 Restart offset beyond the end of the
//!   file`; transfers are checked before libunftp answers 150.
//! - **HASH, MFMT, SITE CHMOD** ([`hashing`]): BLAKE3 from the journal
//!   when it provably describes the file, else read on a bounded pool.
//! - **The transfer log**: every upload, download, delete, rename, mkdir,
//!   rmdir, chmod, mfmt and refusal is recorded ([`super::xferlog`]).
//!
//! Listing, metadata, mkdir, rmdir, delete and rename are delegated to
//! unftp-sbe-fs after the checks (listings sorted by name; a listing of
//! a file lists that file).

mod checks;
mod cluster;
mod hashing;
mod ops;
mod record;

use checks::Attr;

use std::ffi::OsStr;
use std::fmt::Debug;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};
use unftp_core::storage::{
    Error, ErrorKind, FileHash, Fileinfo, HashAlgorithm, Metadata, Result, StorageBackend, TransferKind, FEATURE_RESTART,
};
use unftp_sbe_fs::{Filesystem, Meta};

use super::auth::NodeUser;
use super::limits::{Sessions, UserSlot};
use super::state::StateHandle;
use super::users::Perm;
use super::xferlog::TransferLog;
use super::zerocopy;
use record::{rest_beyond_end, Op};

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
    /// Returns the entry's seq if it appeared.
    fn wait_written(&self, after: u64, path: &str, timeout: Duration) -> io::Result<Option<u64>>;
    /// What the journal knows of the content of the file now at `path`
    /// (its latest `write`, following renames), for `HASH BLAKE3`.
    fn known_content(&self, path: &str) -> io::Result<Option<drift_fs::Known>>;
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
    /// In a cluster: whether changes may start and when they may be
    /// acknowledged ([`super::agent::gate`]); `None` standalone.
    pub gate: Option<Arc<super::agent::gate::Gate>>,
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
    /// The algorithm of this session's `HASH` (`OPTS HASH`): an index
    /// into [`HashAlgorithm::ALL`].
    hash_algo: std::sync::atomic::AtomicUsize,
    /// Whether the upload libunftp is about to start is an APPE (set by
    /// `check_transfer`, read by the upload's log line: `put` itself
    /// cannot tell STOR from APPE).
    appending: std::sync::atomic::AtomicBool,
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
        DriftStorage {
            ctx,
            peer,
            session: None,
            hash_algo: std::sync::atomic::AtomicUsize::new(0),
            appending: std::sync::atomic::AtomicBool::new(false),
        }
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
        self.gate_change(if start_pos > 0 { "APPE" } else { "STOR" })?;
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
                // REST beyond the end would make a sparse file of any
                // size (which drift-fs would then hash and journal);
                // check_transfer refused it before the 150, this catches
                // a file that shrank since.
                if f.metadata()?.len() < start_pos {
                    return Ok(Err(rest_beyond_end()));
                }
                // REST: keep exactly the first start_pos bytes.
                f.set_len(start_pos)?;
            }
            Ok(Ok(f))
        })
        .await??;
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
    async fn finish_upload(&self, upload: Upload, total: u64) -> Result<(u64, Option<u64>)> {
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
                Ok(Ok(Some(seq))) => {
                    tracing::debug!(path = %journal_path, bytes = total, seq, wait_ms = waited.elapsed().as_millis() as u64, "upload journaled");
                    self.acknowledge(Some(seq)).await?;
                    return Ok((total, Some(seq)));
                }
                Ok(Ok(None)) => {
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
        Ok((total, None))
    }

    fn stall_limit(&self) -> Duration {
        self.ctx.state.current().service.idle_timeout
    }
}

/// Normalises an FTP path (already joined with the session's cwd by
/// libunftp) into a path relative to the home: `.` for the home itself.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    normalise(path).map_err(|(kind, why)| {
        let len = path.as_os_str().len();
        if len <= 512 {
            tracing::warn!(path = %path.display(), "refused: {why}");
        } else {
            tracing::warn!(len, "refused: {why}");
        }
        Error::new(kind, why)
    })
}

/// [`resolve`] without logging: the path relative to the home, or why it
/// is refused.
fn normalise(path: &Path) -> std::result::Result<PathBuf, (ErrorKind, &'static str)> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.contains(&0) {
        return Err((ErrorKind::FileNameNotAllowedError, "NUL byte in path"));
    }
    if bytes.len() > MAX_PATH {
        return Err((ErrorKind::FileNameNotAllowedError, "path too long"));
    }
    // Names are UTF-8 on the wire (FEAT UTF8); a name that is not could
    // only reach the disk mangled, possibly onto another file's name.
    if std::str::from_utf8(bytes).is_err() {
        return Err((ErrorKind::FileNameNotAllowedError, "file name is not valid UTF-8"));
    }
    let mut parts: Vec<&OsStr> = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err((ErrorKind::PermissionDenied, "path leaves the home directory"));
                }
            }
            Component::Normal(name) => {
                if name.len() > MAX_NAME {
                    return Err((ErrorKind::FileNameNotAllowedError, "file name too long"));
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
            // The Display is the client's 421 text (libunftp's PASS).
            io::Error::other(format!("too many sessions for {} ({max} allowed)", user.name))
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
        let started = Instant::now();
        let allowed = self.check(user, Perm::List, path.as_ref()).and_then(|()| resolve(path.as_ref()));
        if allowed.is_err() {
            // LIST, NLST, MLSD and STAT all list through here.
            self.record(Some(user), Op { command: "LIST", path: path.as_ref(), to: None, started }, &allowed, None, None);
        }
        let rel = allowed?;
        let s = self.session()?;
        let meta = s.fs.metadata(user, rel.clone()).await?;
        if !meta.is_dir() {
            // LIST and NLST of a file list that file (RFC 959), by name.
            let name = rel.file_name().map(PathBuf::from).unwrap_or_else(|| rel.clone());
            return Ok(vec![Fileinfo { path: name, metadata: meta }]);
        }
        let mut entries = s.fs.list(user, rel).await?;
        // Sorted by name, as ls and other servers list.
        entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        Ok(entries)
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
        let started = Instant::now();
        let r = self.get_into_impl(user, path.as_ref(), start_pos, output).await;
        self.record(Some(user), Op { command: "RETR", path: path.as_ref(), to: None, started }, &r, r.as_ref().ok().copied(), None);
        r
    }

    async fn get_into_tcp<P>(&self, user: &NodeUser, path: P, start_pos: u64, socket: &mut tokio::net::TcpStream) -> Result<u64>
    where
        P: AsRef<Path> + Send + Debug,
    {
        let started = Instant::now();
        let r = self.get_into_tcp_impl(user, path.as_ref(), start_pos, socket).await;
        self.record(Some(user), Op { command: "RETR", path: path.as_ref(), to: None, started }, &r, r.as_ref().ok().copied(), None);
        r
    }

    async fn put<P: AsRef<Path> + Send + Debug, R: AsyncRead + Send + Sync + Unpin + 'static>(
        &self,
        user: &NodeUser,
        input: R,
        path: P,
        start_pos: u64,
    ) -> Result<u64> {
        let started = Instant::now();
        let r = self.put_impl(user, input, path.as_ref(), start_pos).await;
        self.record_upload(user, path.as_ref(), started, r)
    }

    async fn put_from_tcp<P>(&self, user: &NodeUser, socket: tokio::net::TcpStream, path: P, start_pos: u64) -> Result<u64>
    where
        P: AsRef<Path> + Send + Debug,
    {
        let started = Instant::now();
        let r = self.put_from_tcp_impl(user, socket, path.as_ref(), start_pos).await;
        self.record_upload(user, path.as_ref(), started, r)
    }

    async fn del<P: AsRef<Path> + Send + Debug>(&self, user: &NodeUser, path: P) -> Result<()> {
        let started = Instant::now();
        let r = self.change("DELE", self.del_impl(user, path.as_ref())).await;
        self.record(Some(user), Op { command: "DELE", path: path.as_ref(), to: None, started }, &r, None, None);
        r
    }

    async fn mkd<P: AsRef<Path> + Send + Debug>(&self, user: &NodeUser, path: P) -> Result<()> {
        let started = Instant::now();
        let r = self.change("MKD", self.mkd_impl(user, path.as_ref())).await;
        self.record(Some(user), Op { command: "MKD", path: path.as_ref(), to: None, started }, &r, None, None);
        r
    }

    async fn rename<P: AsRef<Path> + Send + Debug>(&self, user: &NodeUser, from: P, to: P) -> Result<()> {
        let started = Instant::now();
        let r = self.change("RNTO", self.rename_impl(user, from.as_ref(), to.as_ref())).await;
        let op = Op { command: "RENAME", path: from.as_ref(), to: Some(to.as_ref()), started };
        self.record(Some(user), op, &r, None, None);
        r
    }

    async fn rmd<P: AsRef<Path> + Send + Debug>(&self, user: &NodeUser, path: P) -> Result<()> {
        let started = Instant::now();
        let r = self.change("RMD", self.rmd_impl(user, path.as_ref())).await;
        self.record(Some(user), Op { command: "RMD", path: path.as_ref(), to: None, started }, &r, None, None);
        r
    }

    async fn cwd<P: AsRef<Path> + Send + Debug>(&self, user: &NodeUser, path: P) -> Result<()> {
        let started = Instant::now();
        let r = self.cwd_impl(user, path.as_ref()).await;
        // Only refusals (a path leaving the home): a CWD is not a change.
        if let Err(e) = &r {
            if matches!(e.kind(), ErrorKind::PermissionDenied | ErrorKind::FileNameNotAllowedError) {
                self.record(Some(user), Op { command: "CWD", path: path.as_ref(), to: None, started }, &r, None, None);
            }
        }
        r
    }

    async fn check_transfer<P>(&self, user: &NodeUser, path: P, kind: TransferKind) -> Result<()>
    where
        P: AsRef<Path> + Send + Debug,
    {
        let started = Instant::now();
        self.appending.store(kind == TransferKind::Append, std::sync::atomic::Ordering::Relaxed);
        let (command, r) = match kind {
            TransferKind::Download { .. } => ("RETR", self.check_download(user, path.as_ref()).await),
            TransferKind::Upload { start } => ("STOR", self.check_upload(user, path.as_ref(), start).await),
            TransferKind::Append => ("APPE", self.check_upload(user, path.as_ref(), 0).await),
        };
        // Only a refusal is a line of its own: an allowed transfer is
        // logged when it ends.
        if r.is_err() {
            self.record(Some(user), Op { command, path: path.as_ref(), to: None, started }, &r, None, None);
        }
        r
    }

    async fn hash<P>(&self, user: &NodeUser, path: P, algo: HashAlgorithm) -> Result<FileHash>
    where
        P: AsRef<Path> + Send + Debug,
    {
        let started = Instant::now();
        let r = self.hash_impl(user, path.as_ref(), algo).await;
        // Hashes are not transfers; only their refusals are logged.
        if r.is_err() {
            self.record(Some(user), Op { command: "HASH", path: path.as_ref(), to: None, started }, &r, None, None);
        }
        r
    }

    fn hash_algorithm(&self) -> HashAlgorithm {
        HashAlgorithm::ALL[self.hash_algo.load(std::sync::atomic::Ordering::Relaxed) % HashAlgorithm::ALL.len()]
    }

    fn select_hash_algorithm(&self, algo: HashAlgorithm) -> bool {
        match HashAlgorithm::ALL.iter().position(|a| *a == algo) {
            Some(i) => {
                self.hash_algo.store(i, std::sync::atomic::Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    async fn set_modified<P>(&self, user: &NodeUser, path: P, mtime: std::time::SystemTime) -> Result<()>
    where
        P: AsRef<Path> + Send + Debug,
    {
        let started = Instant::now();
        let r = self.change("MFMT", self.set_attr(user, path.as_ref(), Attr::Modified(mtime))).await;
        self.record(Some(user), Op { command: "MFMT", path: path.as_ref(), to: None, started }, &r, None, None);
        r
    }

    async fn chmod<P>(&self, user: &NodeUser, path: P, mode: u32) -> Result<()>
    where
        P: AsRef<Path> + Send + Debug,
    {
        let started = Instant::now();
        let r = self.change("SITE CHMOD", self.set_attr(user, path.as_ref(), Attr::Mode(mode))).await;
        self.record(Some(user), Op { command: "CHMOD", path: path.as_ref(), to: None, started }, &r, None, None);
        r
    }

    fn refused(&self, user: Option<&NodeUser>, command: &str, path: Option<&str>, reason: &str) {
        tracing::info!(user = user.map(|u| u.name.as_str()).unwrap_or("-"), command, "refused: {reason}");
        self.record_refusal(user, command, path, reason);
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
        let not_utf8 = OsStr::from_bytes(b"/hx_\xff\xfe.bin");
        assert_eq!(resolve(Path::new(not_utf8)).unwrap_err().kind(), ErrorKind::FileNameNotAllowedError);
        let deep = "/abc".repeat(1100);
        assert_eq!(resolve(Path::new(&deep)).unwrap_err().kind(), ErrorKind::FileNameNotAllowedError);
    }
}
