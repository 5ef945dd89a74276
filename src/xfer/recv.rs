//! The receiving side: accepts connections, groups them into sessions,
//! writes frames straight into place and commits verified files.
//!
//! # Staging and resume
//! A large file is assembled in `STATE_DIR/<key>.part`, where `<key>` hashes
//! the sender's name, size, mtime and frame size, so the same file offered
//! again (after a crash on either side) finds its part file. A fresh part
//! gets its full size with its blocks allocated up front (`fallocate`,
//! sparse where unsupported; see `preallocate`). Beside it, `<key>.held`
//! lists the frames held and their chaining values: one 33-byte record per
//! frame, written in place (`pwrite` at the record's offset) as soon as the
//! frame is in the part file. On resume every listed frame is read and
//! hashed again from the part file and dropped if it does not match, so a
//! torn write or a lost page is re-sent, not trusted.
//!
//! # Concurrency
//! Frames of one file arrive on any connection. Each frame owns a disjoint
//! region of the part file; a connection claims a frame with a
//! compare-and-swap on its state byte (empty → writing), reads the payload
//! from the socket into its own buffer, checks the MAC, and writes the
//! region with one positioned write (`pwrite`). No lock of ours guards the
//! file: the claim is the exclusion, writes at distinct offsets need no
//! order, and a frame already held or being written by another connection
//! (a resend) is read, checked and dropped.
//!
//! Frames used to be received straight into a shared memory map of the part
//! file (no buffer copy). On ext4 that path page-faults every 4 KiB of a
//! fresh file (zero-fill, block reservation), and it stalled for seconds
//! in runs that followed another; the positioned write is faster on this
//! machine's ext4 and tmpfs alike, and only writes bytes whose MAC checked.
//! (The kernel still takes the inode lock for each buffered write, so
//! writes to one file do not overlap inside ext4; at 1 MiB frames that
//! costs little.) Measurements: BENCHMARKS.md, `## drift xfer`.
//!
//! Mapping each frame's region on its own and prefaulting it
//! (`MmapOptions::populate()`, or `madvise(MADV_POPULATE_WRITE)`) was tried
//! again once the other stall causes were gone, and is still about five
//! times slower than `pwrite` for 1 GiB into ext4 (medians of 7
//! interleaved runs: 1.55 s and 1.70 s against 0.33 s). Prefaulting only
//! moves the cost: every 4 KiB write fault of a shared file mapping runs
//! `ext4_page_mkwrite` → `block_page_mkwrite`, which dirties the buffers
//! of the whole (large) folio each time (86 % of the receiver's CPU in
//! `mark_buffer_dirty` / `block_dirty_folio` under `madvise`), where
//! `pwrite` dirties each block once.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::channel::{Acceptor, Stream};
use super::conn::{FrameReader, FrameWriter};
use super::dest::{self, Attrs, DestDirs, PutError};
use super::error::{FrameError, Result, XferError};
use super::frame::FrameType;
use super::handshake;
use super::hook::{Candidate, CommitHook};
use super::key::ClusterKey;
use super::paths;
use super::tree;
use super::wire::{self, DoneReply, Entry, Join, Offer, OfferReply, Outcome, SessionId};

/// Largest payload accepted: the largest frame plus room for batch entry
/// headers.
pub const MAX_PAYLOAD: u32 = (tree::MAX_FRAME + (1 << 20)) as u32;

/// More frames than this per file is refused (state would cost 33 bytes
/// per frame); a bigger file needs a bigger frame size.
const MAX_FRAMES: u64 = 1 << 22;

const EMPTY: u8 = 0;
const WRITING: u8 = 1;
const HELD: u8 = 2;

const HELD_MAGIC: &[u8; 8] = b"DXHELD01";
/// Magic, file size, frame size; then one 33-byte record per frame.
const HELD_HEADER: u64 = 24;

pub struct RecvConfig {
    /// Where files land.
    pub dir: PathBuf,
    /// Where part files and resume state live; must be on the same
    /// filesystem as `dir` (files are renamed into place).
    pub state_dir: PathBuf,
    pub key: ClusterKey,
    pub hook: Option<Arc<dyn CommitHook>>,
    /// fsync each file before it gets its final name.
    pub fsync: bool,
    pub handshake_timeout: Duration,
    /// Remove `state_dir` when a session leaves it empty (for a state
    /// directory the receiver made up itself, not one it was given).
    pub remove_empty_state_dir: bool,
}

/// What a finished session reports (one per sender run).
#[derive(Debug, Clone)]
pub struct SessionReport {
    pub peer: String,
    /// Files, directories and symlinks put in place.
    pub entries: u64,
    /// File bytes received in this session (frames already held not counted).
    pub bytes: u64,
    pub elapsed: Duration,
    /// `None` when the sender finished with `Done`.
    pub error: Option<String>,
}

/// A receiving endpoint. Cheap to clone.
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: RecvConfig,
    sessions: Mutex<HashMap<SessionId, Arc<Session>>>,
    /// Part files in use, so two sessions never write the same one.
    busy: Arc<Mutex<HashSet<PathBuf>>>,
    reports: mpsc::UnboundedSender<SessionReport>,
}

struct Session {
    peer: String,
    started: Instant,
    /// Large files being assembled, by the sender's file id.
    files: Mutex<HashMap<u64, Arc<Incoming>>>,
    /// Outcomes of committed files, so a commit re-sent after a lost
    /// connection gets the same answer instead of a protocol error.
    outcomes: Mutex<HashMap<u64, Outcome>>,
    /// Directory modes and times, applied deepest first at `Done` so a
    /// read-only directory does not block its own contents.
    dirs: Mutex<Vec<(PathBuf, u32, i64, u32)>>,
    /// Handles on the destination's directories (see [`dest`]).
    dest: DestDirs,
    entries: AtomicU64,
    bytes: AtomicU64,
    conns: AtomicUsize,
    done: AtomicBool,
    error: Mutex<Option<String>>,
    abort: watch::Sender<bool>,
}

impl Session {
    fn fail(&self, why: String) {
        let mut e = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if e.is_none() {
            *e = Some(why);
        }
        let _ = self.abort.send(true);
    }
}

impl Receiver {
    /// A receiver and the stream of its session reports.
    pub fn new(cfg: RecvConfig) -> (Self, mpsc::UnboundedReceiver<SessionReport>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Inner {
            cfg,
            sessions: Mutex::new(HashMap::new()),
            busy: Arc::new(Mutex::new(HashSet::new())),
            reports: tx,
        };
        (Receiver { inner: Arc::new(inner) }, rx)
    }

    /// Accepts connections until the acceptor fails; each runs in its own
    /// task. Stop it by dropping the future.
    pub async fn serve(&self, acceptor: Arc<dyn Acceptor>) -> Result<()> {
        loop {
            let stream = match acceptor.accept().await {
                Ok(s) => s,
                Err(e) if is_transient_accept(&e) => {
                    warn!(error = %e, "accept failed; continuing");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(XferError::io("accepting connections", e)),
            };
            let inner = self.inner.clone();
            tokio::spawn(async move { connection(inner, stream).await });
        }
    }
}

fn is_transient_accept(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
    ) || e.raw_os_error() == Some(libc::EMFILE)
        || e.raw_os_error() == Some(libc::ENFILE)
}

async fn connection(inner: Arc<Inner>, mut stream: Stream) {
    let peer = stream.peer.clone();
    let keys = match handshake::server(&mut stream, &inner.cfg.key, inner.cfg.handshake_timeout).await {
        Ok(k) => k,
        Err(e) => {
            // Unauthenticated peers never reach a session, so they cannot
            // end one or learn anything.
            warn!(%peer, "rejected connection: {e}");
            return;
        }
    };
    let mut reader = FrameReader::new(stream.reader, keys.rx, MAX_PAYLOAD, peer.clone());
    let mut writer = FrameWriter::new(stream.writer, keys.tx, peer.clone());
    let join = match reader.read_frame().await {
        Ok(Some(f)) if f.header.ty == FrameType::Join => match Join::decode(&f.payload) {
            Ok(j) => j,
            Err(e) => {
                warn!(%peer, "bad join: {e}");
                return;
            }
        },
        Ok(Some(f)) => {
            warn!(%peer, "expected a join frame, got {:?}", f.header.ty);
            return;
        }
        Ok(None) => return,
        Err(e) => {
            warn!(%peer, "rejected connection: {e}");
            return;
        }
    };
    let session = {
        let mut sessions = inner.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let s = sessions.entry(join.session).or_insert_with(|| {
            info!(%peer, streams = join.streams, "session started");
            Arc::new(Session {
                peer: peer.clone(),
                started: Instant::now(),
                files: Mutex::new(HashMap::new()),
                outcomes: Mutex::new(HashMap::new()),
                dirs: Mutex::new(Vec::new()),
                dest: DestDirs::new(inner.cfg.dir.clone()),
                entries: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                conns: AtomicUsize::new(0),
                done: AtomicBool::new(false),
                error: Mutex::new(None),
                abort: watch::channel(false).0,
            })
        });
        s.conns.fetch_add(1, Ordering::SeqCst);
        s.clone()
    };
    debug!(%peer, stream = join.stream, "connection joined");

    let result = match writer.send(FrameType::Welcome, 0, 0, &[]).await {
        Ok(_) => {
            let mut abort = session.abort.subscribe();
            tokio::select! {
                r = serve_frames(&inner, &session, &mut reader, &mut writer) => r,
                _ = abort.wait_for(|a| *a) => {
                    // Another connection of this session found it broken.
                    let why = session.error.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
                    Err(XferError::Protocol(format!("session aborted: {why}")))
                }
            }
        }
        Err(e) => Err(e),
    };
    let mut tell_sender = None;
    match result {
        Ok(()) => {}
        Err(XferError::Frame(e @ FrameError::Truncated { .. })) => {
            // A connection dying mid-frame: only this connection goes; the
            // sender resends its unacknowledged frames on the others.
            warn!(%peer, "connection lost: frame rejected: {e}");
        }
        Err(e @ (XferError::Frame(_) | XferError::Protocol(_))) => {
            // A frame that fails its MAC or sequence, or breaks the
            // protocol: the session is under attack or broken; stop all of
            // it and tell the sender why.
            warn!(%peer, "aborting session: {e}");
            session.fail(e.to_string());
            tell_sender = Some(e.to_string());
        }
        Err(XferError::Remote(why)) => {
            warn!(%peer, "sender aborted the session: {why}");
            session.fail(format!("sender aborted: {why}"));
        }
        Err(e) => warn!(%peer, "connection lost: {e}"),
    }
    if let Some(why) = tell_sender {
        let _ = writer.send(FrameType::Error, 0, 0, why.as_bytes()).await;
    }
    writer.shutdown().await;
    reader.drain(Duration::from_secs(2)).await;
    if session.conns.fetch_sub(1, Ordering::SeqCst) == 1 {
        finish_session(&inner, &session, join.session);
    }
}

fn finish_session(inner: &Inner, session: &Arc<Session>, id: SessionId) {
    inner
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    // Dropping the incoming files writes their resume state.
    let pending: Vec<_> = session
        .files
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .map(|(_, f)| f)
        .collect();
    let unfinished = pending.len();
    drop(pending);
    if inner.cfg.remove_empty_state_dir {
        let _ = std::fs::remove_dir(&inner.cfg.state_dir);
    }
    let error = if session.done.load(Ordering::SeqCst) {
        None
    } else {
        Some(
            session
                .error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| {
                    format!("all connections closed before the sender finished ({unfinished} files incomplete, kept for resume)")
                }),
        )
    };
    let report = SessionReport {
        peer: session.peer.clone(),
        entries: session.entries.load(Ordering::SeqCst),
        bytes: session.bytes.load(Ordering::SeqCst),
        elapsed: session.started.elapsed(),
        error,
    };
    let _ = inner.reports.send(report);
}

/// Releases a frame claim if the payload never made it (error, cancel).
struct Claim<'a> {
    file: &'a Incoming,
    index: usize,
    done: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.file.state[self.index].store(EMPTY, Ordering::Release);
        }
    }
}

async fn serve_frames(
    inner: &Arc<Inner>,
    session: &Arc<Session>,
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
) -> Result<()> {
    // A per-connection view of the session's files saves a lock per frame.
    let mut cache: HashMap<u64, Arc<Incoming>> = HashMap::new();
    let mut scratch = Vec::new();
    // Control payloads (batches of up to a frame and more) are read here.
    let mut ctl = Vec::new();
    loop {
        let Some((h, raw)) = reader.header().await? else {
            return Ok(());
        };
        if h.ty == FrameType::Data {
            let file = match cache.get(&h.file_id) {
                Some(f) => f.clone(),
                None => {
                    let f = session
                        .files
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&h.file_id)
                        .cloned()
                        .ok_or_else(|| XferError::Protocol(format!("data for unknown file id {}", h.file_id)))?;
                    cache.insert(h.file_id, f.clone());
                    f
                }
            };
            let index = file.check_placement(h.offset, h.len)?;
            if file.state[index]
                .compare_exchange(EMPTY, WRITING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let mut claim = Claim { file: &file, index, done: false };
                // The claim makes this connection the only writer of this
                // frame's bytes, which no other frame overlaps.
                let buf = frame_buf(&mut scratch, h.len as usize);
                reader.payload(&h, buf).await?;
                let cv = tree::subtree_cv(h.offset, buf);
                reader.finish(&raw, &h, &cv).await?;
                // Only bytes whose MAC checked reach the part file.
                file.write_frame(h.offset, buf)?;
                claim.done = true;
                drop(claim);
                file.mark_held(index, cv);
                session.bytes.fetch_add(h.len as u64, Ordering::Relaxed);
            } else {
                let buf = frame_buf(&mut scratch, h.len as usize);
                reader.payload(&h, buf).await?;
                let cv = tree::subtree_cv(h.offset, buf);
                reader.finish(&raw, &h, &cv).await?;
                debug!(file = h.file_id, index, "duplicate frame ignored");
            }
            writer.send(FrameType::Ack, 0, h.seq, &[]).await?;
            continue;
        }

        let len = h.len as usize;
        reader.payload(&h, frame_buf(&mut ctl, len)).await?;
        let payload = &ctl[..len];
        // A batch's digest hashes each file's content once; those hashes
        // are its files' whole-file checks too (see `wire::batch_digest`).
        let (digest, hashes) = if h.ty == FrameType::Batch {
            let d = wire::batch_digest(payload);
            (d.digest, d.files)
        } else {
            (*blake3::hash(payload).as_bytes(), Vec::new())
        };
        reader.finish(&raw, &h, &digest).await?;
        match h.ty {
            FrameType::Offer => {
                let offer = Offer::decode(payload)?;
                let reply = handle_offer(inner, session, h.file_id, offer).await;
                writer.send(FrameType::OfferReply, h.file_id, 0, &reply.encode()).await?;
            }
            FrameType::Commit => {
                let expected: [u8; 32] = payload
                    .try_into()
                    .map_err(|_| FrameError::Payload("commit"))?;
                cache.remove(&h.file_id);
                let outcome = handle_commit(inner, session, h.file_id, expected).await?;
                writer.send(FrameType::CommitReply, h.file_id, 0, &outcome.encode_one()).await?;
            }
            FrameType::Batch => {
                let inner2 = inner.clone();
                let session2 = session.clone();
                // The buffer goes to the blocking task and comes back, so
                // it is allocated and zeroed once per connection.
                let buf = std::mem::take(&mut ctl);
                let (outcomes, buf) = tokio::task::spawn_blocking(move || {
                    let r = handle_batch(&inner2, &session2, &buf[..len], &hashes);
                    (r, buf)
                })
                .await
                .map_err(|e| XferError::Protocol(format!("batch task failed: {e}")))?;
                ctl = buf;
                let outcomes = outcomes?;
                writer
                    .send(FrameType::BatchReply, h.file_id, 0, &Outcome::encode_many(&outcomes))
                    .await?;
            }
            FrameType::Done => {
                let s = session.clone();
                let reply = tokio::task::spawn_blocking(move || handle_done(&s))
                    .await
                    .map_err(|e| XferError::Protocol(format!("done task failed: {e}")))?;
                writer.send(FrameType::DoneReply, 0, 0, &reply.encode()).await?;
            }
            FrameType::Error => {
                return Err(XferError::Remote(String::from_utf8_lossy(payload).into_owned()));
            }
            other => return Err(XferError::Protocol(format!("unexpected {other:?} frame from a sender"))),
        }
        writer.send(FrameType::Ack, 0, h.seq, &[]).await?;
    }
}

/// The connection's frame buffer, grown to `len` bytes (it is reused, so
/// zeroing happens once per connection, not per frame).
fn frame_buf(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() < len {
        buf.resize(len, 0);
    }
    &mut buf[..len]
}

/// A large file being assembled.
struct Incoming {
    name: PathBuf,
    part: PathBuf,
    held_path: PathBuf,
    size: u64,
    frame_size: u64,
    mode: u32,
    mtime: (i64, u32),
    file: File,
    state: Box<[AtomicU8]>,
    cvs: Box<[OnceLock<[u8; 32]>]>,
    held: AtomicU64,
    held_bytes: AtomicU64,
    /// The `.held` list, updated in place one record per frame; `None`
    /// when it could not be created (the transfer then works without
    /// resume state).
    held_file: Option<File>,
    busy: Arc<Mutex<HashSet<PathBuf>>>,
}

impl Incoming {
    fn frames(&self) -> u64 {
        self.state.len() as u64
    }

    fn check_placement(&self, offset: u64, len: u32) -> Result<usize> {
        let bad = || XferError::Protocol(format!("frame at offset {offset} with {len} bytes does not fit {} ({} bytes, frames of {})", self.name.display(), self.size, self.frame_size));
        if offset % self.frame_size != 0 || offset >= self.size {
            return Err(bad());
        }
        let index = offset / self.frame_size;
        if len as u64 != tree::frame_len(self.size, self.frame_size, index) {
            return Err(bad());
        }
        Ok(index as usize)
    }

    /// Writes a verified frame at its offset. Frames are disjoint, so
    /// connections write concurrently without a lock.
    fn write_frame(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.file
            .write_all_at(data, offset)
            .map_err(|e| XferError::io(format!("writing {}", self.part.display()), e))
    }

    /// Reads `len` bytes at `offset` of the part file into `buf`.
    fn read_at<'b>(&self, buf: &'b mut Vec<u8>, offset: u64, len: usize) -> io::Result<&'b [u8]> {
        let b = frame_buf(buf, len);
        self.file.read_exact_at(b, offset)?;
        Ok(b)
    }

    fn mark_held(&self, index: usize, cv: [u8; 32]) {
        let _ = self.cvs[index].set(cv);
        self.state[index].store(HELD, Ordering::Release);
        self.held.fetch_add(1, Ordering::AcqRel);
        self.held_bytes.fetch_add(tree::frame_len(self.size, self.frame_size, index as u64), Ordering::AcqRel);
        self.record(index, Some(&cv));
    }

    /// Writes frame `index`'s record of the `.held` list in place: one
    /// small `pwrite` at the record's own offset, so connections never
    /// contend and nothing is renamed, truncated or freed. (It used to be
    /// rewritten to a temporary and renamed over the old list every 16 MiB;
    /// on a filesystem mounted with `discard` and no journal, freeing the
    /// replaced list's blocks issues a synchronous discard that blocked the
    /// runtime thread for up to tens of ms each time.) A record torn by a
    /// crash is harmless: every listed frame is hashed again on resume.
    fn record(&self, index: usize, cv: Option<&[u8; 32]>) {
        let Some(held) = &self.held_file else { return };
        let mut rec = [0u8; 33];
        if let Some(cv) = cv {
            rec[0] = 1;
            rec[1..].copy_from_slice(cv);
        }
        if let Err(e) = held.write_all_at(&rec, HELD_HEADER + index as u64 * 33) {
            warn!(file = %self.name.display(), "could not save resume state: {e}");
        }
    }

    fn held_bitmap(&self) -> Vec<u8> {
        let mut map = vec![0u8; self.frames().div_ceil(8) as usize];
        for (i, s) in self.state.iter().enumerate() {
            if s.load(Ordering::Acquire) == HELD {
                map[i / 8] |= 1 << (i % 8);
            }
        }
        map
    }

    /// Deletes the part and its state (after a hash mismatch or refusal).
    fn discard(&self) {
        let _ = std::fs::remove_file(&self.part);
        let _ = std::fs::remove_file(&self.held_path);
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.part);
    }
}

async fn handle_offer(inner: &Arc<Inner>, session: &Arc<Session>, file_id: u64, offer: Offer) -> OfferReply {
    let existing = session
        .files
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&file_id)
        .cloned();
    if let Some(f) = existing {
        // The same offer again, re-sent after a connection died.
        return OfferReply::Accept { held: f.held_bitmap() };
    }
    let inner2 = inner.clone();
    let name = offer.meta.display();
    let opened = tokio::task::spawn_blocking(move || open_incoming(&inner2, &offer)).await;
    match opened {
        Ok(Ok(f)) => {
            let held = f.held_bitmap();
            let f = Arc::new(f);
            session
                .files
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(file_id, f);
            OfferReply::Accept { held }
        }
        Ok(Err(e)) => {
            warn!(file = %name, "offer refused: {e}");
            OfferReply::Refuse { reason: e.to_string() }
        }
        Err(e) => OfferReply::Refuse { reason: format!("internal error: {e}") },
    }
}

fn part_key(offer: &Offer) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"drift-xfer part v1\0");
    h.update(&(offer.meta.path.len() as u64).to_le_bytes());
    h.update(&offer.meta.path);
    h.update(&offer.size.to_le_bytes());
    h.update(&offer.meta.mtime_s.to_le_bytes());
    h.update(&offer.meta.mtime_ns.to_le_bytes());
    h.update(&offer.frame_size.to_le_bytes());
    h.finalize().to_hex()[..32].to_owned()
}

fn ensure_state_dir(cfg: &RecvConfig) -> Result<()> {
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|e| XferError::io(format!("creating state directory {}", cfg.state_dir.display()), e))
}

fn open_incoming(inner: &Inner, offer: &Offer) -> Result<Incoming> {
    let name = paths::relative(&offer.meta.path)?;
    if !tree::valid_frame_size(offer.frame_size) {
        return Err(XferError::Protocol(format!("frame size {} is not a power of two between 1 KiB and 64 MiB", offer.frame_size)));
    }
    if offer.size == 0 {
        return Err(XferError::Protocol("empty files travel in batches".into()));
    }
    let frames = tree::frame_count(offer.size, offer.frame_size);
    if frames > MAX_FRAMES || usize::try_from(offer.size).is_err() {
        return Err(XferError::Config(format!(
            "{} bytes in frames of {} is more than {MAX_FRAMES} frames; use a larger frame size",
            offer.size, offer.frame_size
        )));
    }
    let cfg = &inner.cfg;
    ensure_state_dir(cfg)?;
    let key = part_key(offer);
    let part = cfg.state_dir.join(format!("{key}.part"));
    let held_path = cfg.state_dir.join(format!("{key}.held"));
    {
        let mut busy = inner.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(part.clone()) {
            return Err(XferError::Config(format!("{} is being received by another session", name.display())));
        }
    }
    // From here on the busy entry is released by Incoming's Drop, or here.
    let release = || {
        inner.busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&part);
    };
    let result = (|| {
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&part)
                .map_err(|e| XferError::io(format!("opening {}", part.display()), e))
        };
        let mut file = open()?;
        let had = file.metadata().map(|m| m.len()).unwrap_or(0);
        let previous = if had == offer.size { load_held(&held_path, offer) } else { None };
        if previous.is_none() {
            if had != 0 {
                // A stale part: start over on a new inode rather than
                // truncating this one (ext4 flushes a file that was
                // truncated to zero when it is closed, see `preallocate`).
                drop(file);
                std::fs::remove_file(&part).map_err(|e| XferError::io(format!("removing stale {}", part.display()), e))?;
                file = open()?;
            }
            preallocate(&file, offer.size).map_err(|e| XferError::io(format!("allocating {} bytes for {}", offer.size, part.display()), e))?;
        }
        let held_file = open_held(&held_path, offer, frames, previous.is_some(), &name);
        let state: Box<[AtomicU8]> = (0..frames).map(|_| AtomicU8::new(EMPTY)).collect();
        let cvs: Box<[OnceLock<[u8; 32]>]> = (0..frames).map(|_| OnceLock::new()).collect();
        let f = Incoming {
            name: name.clone(),
            part: part.clone(),
            held_path: held_path.clone(),
            size: offer.size,
            frame_size: offer.frame_size,
            mode: offer.meta.mode,
            mtime: (offer.meta.mtime_s, offer.meta.mtime_ns),
            file,
            state,
            cvs,
            held: AtomicU64::new(0),
            held_bytes: AtomicU64::new(0),
            held_file,
            busy: inner.busy.clone(),
        };
        if let Some(prev) = previous {
            let (mut kept, mut dropped) = (0u64, 0u64);
            let mut buf = Vec::new();
            for (i, cv) in prev.into_iter().enumerate() {
                let Some(cv) = cv else { continue };
                let off = i as u64 * offer.frame_size;
                let len = tree::frame_len(offer.size, offer.frame_size, i as u64);
                let data = f
                    .read_at(&mut buf, off, len as usize)
                    .map_err(|e| XferError::io(format!("reading {}", part.display()), e))?;
                if tree::subtree_cv(off, data) == cv {
                    let _ = f.cvs[i].set(cv);
                    f.state[i].store(HELD, Ordering::Release);
                    f.held.fetch_add(1, Ordering::AcqRel);
                    f.held_bytes.fetch_add(len, Ordering::AcqRel);
                    kept += 1;
                } else {
                    f.record(i, None);
                    dropped += 1;
                }
            }
            info!(file = %name.display(), kept, dropped, "resuming from frames already held");
        }
        Ok(f)
    })();
    if result.is_err() {
        release();
    }
    result
}

/// Gives a fresh part file its full size, with its blocks allocated up front
/// where the filesystem can (`fallocate`), else as a sparse file.
///
/// Allocating up front matters on ext4 with delayed allocation: frames
/// written into a hole leave blocks to allocate at writeback, and when the
/// part is closed after its rename ext4 may flush the whole file from
/// `close` (its `auto_da_alloc` heuristic, armed by a truncate to zero),
/// which took seconds while the previous run's data was still being
/// written back or discarded. With the blocks allocated (as unwritten
/// extents) there is nothing for `close` to allocate, and a full disk is
/// found at the offer instead of midway.
fn preallocate(file: &File, size: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a plain syscall on a descriptor we own; no memory is passed.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // Not supported by this filesystem: a sparse file works too.
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) => file.set_len(size),
        // ENOSPC and the like: refuse the offer now rather than fail midway.
        _ => Err(e),
    }
}

/// Opens the `.held` list for in-place updates: the existing one when
/// resuming, else a fresh one (header, then zero records as a hole).
/// Failure only costs the ability to resume, so it is logged, not fatal.
fn open_held(path: &Path, offer: &Offer, frames: u64, resuming: bool, name: &Path) -> Option<File> {
    let r = (|| {
        if resuming {
            return OpenOptions::new().write(true).open(path);
        }
        let f = OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
        let mut header = Vec::with_capacity(HELD_HEADER as usize);
        header.extend_from_slice(HELD_MAGIC);
        header.extend_from_slice(&offer.size.to_le_bytes());
        header.extend_from_slice(&offer.frame_size.to_le_bytes());
        f.write_all_at(&header, 0)?;
        f.set_len(HELD_HEADER + frames * 33)?;
        Ok(f)
    })();
    match r {
        Ok(f) => Some(f),
        Err(e) => {
            warn!(file = %name.display(), "could not save resume state: {e}");
            None
        }
    }
}

/// Reads a `.held` list that matches the offer; `None` if absent or stale.
fn load_held(path: &Path, offer: &Offer) -> Option<Vec<Option<[u8; 32]>>> {
    let mut buf = Vec::new();
    File::open(path).ok()?.read_to_end(&mut buf).ok()?;
    let frames = tree::frame_count(offer.size, offer.frame_size) as usize;
    if buf.len() != 24 + frames * 33 || &buf[..8] != HELD_MAGIC {
        return None;
    }
    let mut r = wire::Reader::new(&buf[8..], "held");
    if r.u64().ok()? != offer.size || r.u64().ok()? != offer.frame_size {
        return None;
    }
    let mut out = Vec::with_capacity(frames);
    for _ in 0..frames {
        let flag = r.u8().ok()?;
        let cv = r.hash().ok()?;
        out.push((flag == 1).then_some(cv));
    }
    Some(out)
}

async fn handle_commit(inner: &Arc<Inner>, session: &Arc<Session>, file_id: u64, expected: [u8; 32]) -> Result<Outcome> {
    if let Some(o) = session
        .outcomes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&file_id)
    {
        return Ok(o.clone());
    }
    let file = session
        .files
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&file_id)
        .cloned()
        .ok_or_else(|| XferError::Protocol(format!("commit for unknown file id {file_id}")))?;
    let inner2 = inner.clone();
    let f2 = file.clone();
    let s2 = session.clone();
    let outcome = tokio::task::spawn_blocking(move || commit(&inner2, &s2, &f2, expected))
        .await
        .map_err(|e| XferError::Protocol(format!("commit task failed: {e}")))?;
    match &outcome {
        Outcome::Ok => {
            session.entries.fetch_add(1, Ordering::Relaxed);
            debug!(file = %file.name.display(), "committed");
        }
        Outcome::Refused(why) | Outcome::Failed(why) => warn!(file = %file.name.display(), "not committed: {why}"),
    }
    session
        .files
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&file_id);
    session
        .outcomes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(file_id, outcome.clone());
    Ok(outcome)
}

fn commit(inner: &Inner, session: &Session, f: &Incoming, expected: [u8; 32]) -> Outcome {
    let held = f.held.load(Ordering::Acquire);
    if held != f.frames() {
        return Outcome::Failed(format!("{} of {} frames missing at commit", f.frames() - held, f.frames()));
    }
    let root = if f.frames() == 1 {
        // One frame: its chaining value is not the root; hash it again.
        match f.read_at(&mut Vec::new(), 0, f.size as usize) {
            Ok(data) => blake3::hash(data),
            Err(e) => return Outcome::Failed(format!("reading {}: {e}", f.part.display())),
        }
    } else {
        let cvs: Option<Vec<[u8; 32]>> = f.cvs.iter().map(|c| c.get().copied()).collect();
        let Some(cvs) = cvs else {
            return Outcome::Failed("frame hashes missing at commit".into());
        };
        tree::root_from_cvs(&cvs, f.frame_size, f.size)
    };
    if root != blake3::Hash::from_bytes(expected) {
        f.discard();
        return Outcome::Failed(format!(
            "BLAKE3 mismatch: received content hashes to {}, the sender's file to {}",
            root.to_hex(),
            blake3::Hash::from_bytes(expected).to_hex()
        ));
    }
    if let Some(hook) = &inner.cfg.hook {
        let c = Candidate {
            name: &f.name,
            staged: &f.part,
            size: f.size,
            blake3: root,
        };
        if let Err(why) = hook.inspect(&c) {
            f.discard();
            return Outcome::Refused(why);
        }
    }
    let attrs = Attrs { mode: f.mode, mtime: f.mtime };
    match dest::place_staged(&session.dest, &f.name, &f.part, &f.file, attrs, inner.cfg.fsync) {
        Ok(()) => {
            let _ = std::fs::remove_file(&f.held_path);
            Outcome::Ok
        }
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Puts a batch's entries in place. `hashes` holds the BLAKE3 of each file
/// entry's content, in order, computed with the frame's MAC digest.
fn handle_batch(inner: &Inner, session: &Session, payload: &[u8], hashes: &[blake3::Hash]) -> Result<Vec<Outcome>> {
    let entries = wire::decode_batch(payload)?;
    let mut out = Vec::with_capacity(entries.len());
    let mut hashes = hashes.iter();
    for e in &entries {
        let got = match e {
            // The digest hashed every file entry; recomputing is only a
            // fallback that keeps this function correct on its own.
            Entry::File { content, .. } => Some(hashes.next().copied().unwrap_or_else(|| blake3::hash(content))),
            _ => None,
        };
        let outcome = match batch_entry(inner, session, e, got) {
            Ok(o) => o,
            Err(err) => Outcome::Failed(err.to_string()),
        };
        match &outcome {
            Outcome::Ok => {
                session.entries.fetch_add(1, Ordering::Relaxed);
                if let Entry::File { content, .. } = e {
                    session.bytes.fetch_add(content.len() as u64, Ordering::Relaxed);
                }
            }
            Outcome::Refused(why) | Outcome::Failed(why) => warn!(file = %e.meta().display(), "not committed: {why}"),
        }
        out.push(outcome);
    }
    Ok(out)
}

fn batch_entry(inner: &Inner, session: &Session, e: &Entry<'_>, content_hash: Option<blake3::Hash>) -> Result<Outcome> {
    let cfg = &inner.cfg;
    let meta = e.meta();
    let name = paths::relative(&meta.path)?;
    match e {
        Entry::Dir { meta } => {
            let dest = dest::put_dir(&session.dest, &name)?;
            session
                .dirs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((dest, meta.mode, meta.mtime_s, meta.mtime_ns));
            Ok(Outcome::Ok)
        }
        Entry::Symlink { target, .. } => {
            dest::put_symlink(&session.dest, &name, target, (meta.mtime_s, meta.mtime_ns))?;
            Ok(Outcome::Ok)
        }
        Entry::File { hash, content, .. } => {
            let got = content_hash.unwrap_or_else(|| blake3::hash(content));
            if got != blake3::Hash::from_bytes(*hash) {
                return Ok(Outcome::Failed(format!(
                    "BLAKE3 mismatch: received content hashes to {}, the sender's file to {}",
                    got.to_hex(),
                    blake3::Hash::from_bytes(*hash).to_hex()
                )));
            }
            let attrs = Attrs {
                mode: meta.mode,
                mtime: (meta.mtime_s, meta.mtime_ns),
            };
            let inspect = |staged: &Path| match &cfg.hook {
                Some(hook) => hook.inspect(&Candidate {
                    name: &name,
                    staged,
                    size: content.len() as u64,
                    blake3: got,
                }),
                None => Ok(()),
            };
            let hook: Option<dest::Inspect<'_>> = match cfg.hook {
                Some(_) => Some(&inspect),
                None => None,
            };
            match dest::put_file(&session.dest, &name, content, attrs, cfg.fsync, hook) {
                Ok(()) => Ok(Outcome::Ok),
                Err(PutError::Refused(why)) => Ok(Outcome::Refused(why)),
                Err(PutError::Failed(e)) => Err(e),
            }
        }
    }
}

fn set_times_nofollow(path: &Path, (s, ns): (i64, u32)) {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return };
    let ts = libc::timespec {
        tv_sec: s as libc::time_t,
        tv_nsec: ns.min(999_999_999) as libc::c_long,
    };
    let times = [ts, ts];
    // SAFETY: c is a valid NUL-terminated path, times points at two timespecs.
    unsafe {
        libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW);
    }
}

fn handle_done(session: &Session) -> DoneReply {
    let mut dirs = std::mem::take(&mut *session.dirs.lock().unwrap_or_else(|p| p.into_inner()));
    // Deepest first: a parent's mode (maybe read-only) comes after its
    // children's times are set.
    dirs.sort_by_key(|(p, ..)| std::cmp::Reverse(p.components().count()));
    for (path, mode, s, ns) in dirs {
        if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777)) {
            warn!(dir = %path.display(), "could not set mode: {e}");
        }
        set_times_nofollow(&path, (s, ns));
    }
    session.done.store(true, Ordering::SeqCst);
    DoneReply {
        files: session.entries.load(Ordering::SeqCst),
        bytes: session.bytes.load(Ordering::SeqCst),
    }
}
