//! The sending side: the transfer control layer (a queue of files, several
//! in flight) over the file layer (frames of one file) over N connections.
//!
//! The paper's two concurrency frameworks map onto tasks like this:
//! - *task and processor unified*: each file (or batch of small entries) is
//!   a tokio task carrying its own procedure (offer, frames, commit); a
//!   semaphore admits `files_in_flight` of them at once;
//! - *task and processor separated*: frames and control messages are plain
//!   jobs in one shared queue; one processor per connection takes the next
//!   job, sends it and keeps it until the receiver acknowledges it. When a
//!   connection dies its unacknowledged jobs go back to the front of the
//!   queue for the others.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use memmap2::Mmap;
use tokio::sync::{oneshot, watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::channel::Connector;
use super::conn::{FrameReader, FrameWriter};
use super::error::{Result, XferError};
use super::frame::{self, FrameType};
use super::handshake;
use super::key::ClusterKey;
use super::paths;
use super::recv::MAX_PAYLOAD;
use super::tree;
use super::wire::{self, DoneReply, Entry, Join, Meta, Offer, OfferReply, Outcome};

/// Settings of one send.
#[derive(Clone, Debug)]
pub struct SendConfig {
    pub key: ClusterKey,
    /// TCP connections (the paper used up to 10 per file).
    pub streams: usize,
    /// Bytes per data frame: a power of two from 1 KiB to 64 MiB.
    pub frame_size: u64,
    /// Files (and batches) in flight at once.
    pub files_in_flight: usize,
    /// Files up to this size travel in batches, several per frame.
    pub small_file: u64,
    /// Cap on payload bytes per second over all connections.
    pub max_rate: Option<u64>,
    pub handshake_timeout: Duration,
    /// Large frames go from the file to a TCP socket with sendfile(2).
    pub sendfile: bool,
}

impl SendConfig {
    pub fn new(key: ClusterKey) -> Self {
        SendConfig {
            key,
            streams: 4,
            frame_size: 1 << 20,
            files_in_flight: 8,
            small_file: 1 << 20,
            max_rate: None,
            handshake_timeout: Duration::from_secs(10),
            sendfile: true,
        }
    }

    fn validate(&self) -> Result<()> {
        if !tree::valid_frame_size(self.frame_size) {
            return Err(XferError::Config(format!(
                "frame size {} must be a power of two from 1 KiB to 64 MiB (frames are BLAKE3 subtrees)",
                self.frame_size
            )));
        }
        if !(1..=64).contains(&self.streams) {
            return Err(XferError::Config(format!("streams must be 1 to 64, not {}", self.streams)));
        }
        if !(1..=1024).contains(&self.files_in_flight) {
            return Err(XferError::Config(format!("files in flight must be 1 to 1024, not {}", self.files_in_flight)));
        }
        if self.max_rate == Some(0) {
            return Err(XferError::Config("max rate must be above 0".into()));
        }
        Ok(())
    }
}

/// Live counters for a progress display; all in bytes or entries.
#[derive(Debug, Default)]
pub struct Progress {
    pub total_bytes: AtomicU64,
    /// Bytes delivered (acknowledged), held ones included.
    pub done_bytes: AtomicU64,
    pub total_entries: AtomicU64,
    pub done_entries: AtomicU64,
}

/// What a finished send reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SendReport {
    /// Files, directories and symlinks delivered.
    pub entries: u64,
    /// Regular files delivered.
    pub files: u64,
    /// Bytes of the regular files delivered.
    pub bytes: u64,
    /// Payload bytes this run put on the wire.
    pub sent_bytes: u64,
    /// Bytes the receiver already held from an interrupted run.
    pub held_bytes: u64,
    pub seconds: f64,
    pub streams: usize,
    /// (name, reason) of every entry not delivered.
    pub failures: Vec<(String, String)>,
}

/// One thing to send, found by the walk.
#[derive(Debug, Clone)]
enum Item {
    Dir { meta: Meta },
    Symlink { meta: Meta, target: Vec<u8> },
    File { meta: Meta, path: PathBuf, size: u64 },
}

fn meta_of(rel: &Path, md: &std::fs::Metadata) -> Meta {
    Meta {
        path: paths::to_wire(rel),
        mode: md.mode() & 0o7777,
        mtime_s: md.mtime(),
        mtime_ns: md.mtime_nsec().clamp(0, 999_999_999) as u32,
    }
}

/// Lists everything under `roots`; each root arrives as its own base name,
/// like `cp -r ROOT... DIR`. Symlinks are sent as symlinks, never followed.
fn walk(roots: &[PathBuf]) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    let mut names = std::collections::HashSet::new();
    for root in roots {
        let base = root
            .file_name()
            .map(PathBuf::from)
            .or_else(|| root.canonicalize().ok().and_then(|c| c.file_name().map(PathBuf::from)))
            .ok_or_else(|| XferError::Config(format!("{} has no name to send it under", root.display())))?;
        if !names.insert(base.clone()) {
            return Err(XferError::Config(format!("two paths would arrive as {}", base.display())));
        }
        walk_one(root, &base, &mut items)?;
    }
    Ok(items)
}

fn walk_one(path: &Path, rel: &Path, items: &mut Vec<Item>) -> Result<()> {
    let md = std::fs::symlink_metadata(path).map_err(|e| XferError::io(format!("reading {}", path.display()), e))?;
    let meta = meta_of(rel, &md);
    if meta.path.len() > wire::MAX_NAME {
        return Err(XferError::Config(format!("path too long: {}", rel.display())));
    }
    let ft = md.file_type();
    if ft.is_dir() {
        items.push(Item::Dir { meta });
        let mut children: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| XferError::io(format!("listing {}", path.display()), e))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .map_err(|e| XferError::io(format!("listing {}", path.display()), e))?;
        children.sort();
        for name in children {
            walk_one(&path.join(&name), &rel.join(&name), items)?;
        }
    } else if ft.is_symlink() {
        let target = std::fs::read_link(path).map_err(|e| XferError::io(format!("reading link {}", path.display()), e))?;
        items.push(Item::Symlink {
            meta,
            target: paths::to_wire(&target),
        });
    } else if ft.is_file() {
        items.push(Item::File {
            meta,
            path: path.to_owned(),
            size: md.len(),
        });
    } else {
        warn!(path = %path.display(), "skipping: not a file, directory or symlink");
    }
    Ok(())
}

/// A file whose frames are being sent.
struct OutFile {
    id: u64,
    /// Kept open for `sendfile` of the frames the map is hashed from.
    file: File,
    map: Mmap,
    size: u64,
    frame_size: u64,
    cvs: Box<[OnceLock<[u8; 32]>]>,
    acked: Box<[AtomicBool]>,
    remaining: AtomicU64,
    all_acked: Notify,
}

impl OutFile {
    fn frame(&self, index: u64) -> (u64, &[u8]) {
        let off = index * self.frame_size;
        let len = tree::frame_len(self.size, self.frame_size, index);
        (off, &self.map[off as usize..(off + len) as usize])
    }

    fn cv(&self, index: u64) -> [u8; 32] {
        *self.cvs[index as usize].get_or_init(|| {
            let (off, data) = self.frame(index);
            tree::subtree_cv(off, data)
        })
    }

    /// Marks a frame delivered; true the first time only, so a frame both
    /// re-sent and acknowledged twice is counted once.
    fn ack(&self, index: u64) -> bool {
        if self.acked[index as usize].swap(true, Ordering::AcqRel) {
            return false;
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.all_acked.notify_waiters();
        }
        true
    }
}

#[derive(Clone)]
enum Job {
    Data(Arc<OutFile>, u64),
    /// A control frame and the digest its MAC covers
    /// ([`crate::xfer::frame::digest`]), computed once when it was queued.
    Control {
        ty: FrameType,
        id: u64,
        payload: Arc<Vec<u8>>,
        digest: [u8; 32],
    },
}

enum Reply {
    Offer(OfferReply),
    Commit(Outcome),
    Batch(Vec<Outcome>),
    Done(DoneReply),
}

/// Spreads payload over time when a rate cap is set.
struct Pacer {
    rate: f64,
    next: Mutex<Instant>,
}

impl Pacer {
    async fn pace(&self, bytes: usize) {
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(bytes as f64 / self.rate);
            start
        };
        tokio::time::sleep_until(slot.into()).await;
    }
}

struct Shared {
    queue: Mutex<VecDeque<Job>>,
    work: Notify,
    waiters: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    live: AtomicUsize,
    closing: AtomicBool,
    /// The first fatal error; once set, everything winds down.
    fatal: watch::Sender<Option<String>>,
    fatal_kind: Mutex<Option<XferError>>,
    progress: Arc<Progress>,
    sent_bytes: AtomicU64,
    pacer: Option<Pacer>,
}

impl Shared {
    fn push(&self, job: Job) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).push_back(job);
        self.work.notify_waiters();
    }

    fn push_many(&self, jobs: impl IntoIterator<Item = Job>) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).extend(jobs);
        self.work.notify_waiters();
    }

    fn requeue_front(&self, jobs: Vec<Job>) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        for j in jobs.into_iter().rev() {
            q.push_front(j);
        }
        drop(q);
        self.work.notify_waiters();
    }

    fn fail(&self, err: XferError) {
        let msg = err.to_string();
        let mut kind = self.fatal_kind.lock().unwrap_or_else(|p| p.into_inner());
        if kind.is_none() {
            *kind = Some(err);
            let _ = self.fatal.send(Some(msg));
        }
        self.work.notify_waiters();
    }

    fn take_fatal(&self) -> Option<XferError> {
        self.fatal_kind.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn is_failed(&self) -> bool {
        self.fatal.borrow().is_some()
    }

    async fn next_job(&self) -> Option<Job> {
        loop {
            let notified = self.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_failed() || self.closing.load(Ordering::Acquire) {
                return None;
            }
            if let Some(j) = self.queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front() {
                return Some(j);
            }
            notified.await;
        }
    }

    /// Sends a control job and waits for its reply (or a fatal error).
    async fn request(&self, ty: FrameType, id: u64, payload: Vec<u8>) -> Result<Reply> {
        let digest = frame::digest(ty, 0, &payload);
        self.request_digested(ty, id, payload, digest).await
    }

    /// [`Shared::request`] with the frame's MAC digest already computed.
    async fn request_digested(&self, ty: FrameType, id: u64, payload: Vec<u8>, digest: [u8; 32]) -> Result<Reply> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        self.push(Job::Control {
            ty,
            id,
            payload: Arc::new(payload),
            digest,
        });
        let mut fatal = self.fatal.subscribe();
        tokio::select! {
            r = rx => r.map_err(|_| XferError::Protocol("reply channel closed".into())),
            _ = fatal.wait_for(|f| f.is_some()) => Err(XferError::Protocol("transfer aborted".into())),
        }
    }

    fn route(&self, id: u64, reply: Reply) {
        if let Some(tx) = self.waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) {
            let _ = tx.send(reply);
        }
    }
}

/// One connection's processor state shared by its reader and writer.
struct Conn {
    inflight: Mutex<VecDeque<(u64, Job)>>,
    window: Semaphore,
}

/// Frames a connection may have unacknowledged: enough to cover a long
/// fat pipe (32 MiB per connection) without buffering a whole file.
fn window(frame_size: u64) -> usize {
    ((32u64 << 20) / frame_size).clamp(4, 4096) as usize
}

/// Sends `roots` (files and directory trees) over `connector`.
pub async fn send(
    roots: &[PathBuf],
    cfg: SendConfig,
    connector: Arc<dyn Connector>,
    progress: Arc<Progress>,
) -> Result<SendReport> {
    cfg.validate()?;
    let items = walk(roots)?;
    send_items(items, cfg, connector, progress).await
}

/// Sends regular files under names of the caller's choosing: each pair is
/// (the file to read, its relative name at the receiver). The files must
/// not change while they are sent (they are memory-mapped): pass private
/// copies of anything a writer may touch.
pub async fn send_named(
    files: &[(PathBuf, PathBuf)],
    cfg: SendConfig,
    connector: Arc<dyn Connector>,
    progress: Arc<Progress>,
) -> Result<SendReport> {
    cfg.validate()?;
    let mut items = Vec::with_capacity(files.len());
    let mut names = std::collections::HashSet::new();
    for (path, name) in files {
        if paths::relative(&paths::to_wire(name)).is_err() {
            return Err(XferError::Config(format!("{} is not a safe relative name", name.display())));
        }
        if !names.insert(name.clone()) {
            return Err(XferError::Config(format!("two files would arrive as {}", name.display())));
        }
        let md = std::fs::metadata(path).map_err(|e| XferError::io(format!("reading {}", path.display()), e))?;
        if !md.is_file() {
            return Err(XferError::Config(format!("{} is not a regular file", path.display())));
        }
        items.push(Item::File {
            meta: meta_of(name, &md),
            path: path.clone(),
            size: md.len(),
        });
    }
    send_items(items, cfg, connector, progress).await
}

async fn send_items(items: Vec<Item>, cfg: SendConfig, connector: Arc<dyn Connector>, progress: Arc<Progress>) -> Result<SendReport> {
    let started = Instant::now();
    let total_bytes: u64 = items
        .iter()
        .map(|i| if let Item::File { size, .. } = i { *size } else { 0 })
        .sum();
    progress.total_bytes.store(total_bytes, Ordering::Relaxed);
    progress.total_entries.store(items.len() as u64, Ordering::Relaxed);

    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        work: Notify::new(),
        waiters: Mutex::new(HashMap::new()),
        live: AtomicUsize::new(0),
        closing: AtomicBool::new(false),
        fatal: watch::channel(None).0,
        fatal_kind: Mutex::new(None),
        progress: progress.clone(),
        sent_bytes: AtomicU64::new(0),
        pacer: cfg.max_rate.map(|r| Pacer {
            rate: r as f64,
            next: Mutex::new(Instant::now()),
        }),
    });

    let conns = connect_all(&cfg, connector.as_ref()).await?;
    info!(to = %connector.describe(), streams = conns.len(), entries = items.len(), bytes = total_bytes, "sending");
    shared.live.store(conns.len(), Ordering::SeqCst);
    let streams = conns.len();
    let mut conn_tasks = JoinSet::new();
    for (reader, writer) in conns {
        let conn = Arc::new(Conn {
            inflight: Mutex::new(VecDeque::new()),
            window: Semaphore::new(window(cfg.frame_size)),
        });
        conn_tasks.spawn(run_conn(shared.clone(), conn, reader, writer));
    }

    let result = run_queue(&shared, &cfg, items).await;
    shared.closing.store(true, Ordering::Release);
    shared.work.notify_waiters();
    // Writers see `closing` and return, which ends each connection task.
    let wind_down = async { while conn_tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), wind_down).await.is_err() {
        conn_tasks.abort_all();
    }
    let (entries, files, bytes, held_bytes, failures) = match result {
        Ok(v) => v,
        Err(e) => return Err(shared.take_fatal().unwrap_or(e)),
    };
    if let Some(e) = shared.take_fatal() {
        return Err(e);
    }
    Ok(SendReport {
        entries,
        files,
        bytes,
        sent_bytes: shared.sent_bytes.load(Ordering::Relaxed),
        held_bytes,
        seconds: started.elapsed().as_secs_f64(),
        streams,
        failures,
    })
}

type Halves = (FrameReader, FrameWriter);

async fn connect_one(cfg: &SendConfig, connector: &dyn Connector, session: wire::SessionId, idx: usize) -> Result<Halves> {
    let mut stream = connector
        .connect()
        .await
        .map_err(|e| XferError::io(format!("connecting to {}", connector.describe()), e))?;
    let keys = handshake::client(&mut stream, &cfg.key, cfg.handshake_timeout).await?;
    let peer = stream.peer.clone();
    let mut reader = FrameReader::new(stream.reader, keys.rx, MAX_PAYLOAD, peer.clone());
    let mut writer = FrameWriter::new(stream.writer, keys.tx, peer.clone());
    if !cfg.sendfile {
        writer.without_sendfile();
    }
    let join = Join {
        session,
        stream: idx as u16,
        streams: cfg.streams as u16,
    };
    writer.send(FrameType::Join, 0, 0, &join.encode()).await?;
    let welcome = tokio::time::timeout(cfg.handshake_timeout, reader.read_frame())
        .await
        .map_err(|_| XferError::HandshakeTimeout {
            peer: peer.clone(),
            timeout: cfg.handshake_timeout,
        })??;
    match welcome {
        Some(f) if f.header.ty == FrameType::Welcome => Ok((reader, writer)),
        Some(f) if f.header.ty == FrameType::Error => Err(XferError::Remote(String::from_utf8_lossy(&f.payload).into_owned())),
        Some(f) => Err(XferError::Protocol(format!("expected a welcome frame, got {:?}", f.header.ty))),
        None => Err(XferError::Protocol(format!("{peer} closed the connection after the handshake"))),
    }
}

async fn connect_all(cfg: &SendConfig, connector: &dyn Connector) -> Result<Vec<Halves>> {
    let mut session = [0u8; 16];
    rand::fill(&mut session);
    let attempts = (0..cfg.streams).map(|i| connect_one(cfg, connector, session, i));
    let results = futures_join_all(attempts).await;
    let mut ok = Vec::new();
    let mut first_err = None;
    for r in results {
        match r {
            Ok(h) => ok.push(h),
            Err(e) => {
                warn!("connection failed: {e}");
                first_err.get_or_insert(e);
            }
        }
    }
    match (ok.is_empty(), first_err) {
        (true, Some(e)) => Err(e),
        (true, None) => Err(XferError::Config("no connections".into())),
        (false, Some(e)) if e.is_integrity() => Err(e),
        _ => Ok(ok),
    }
}

/// Runs futures concurrently on the current task (no extra crate).
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let futs: Vec<_> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    let mut futs: Vec<_> = futs.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, slot) in futs.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        out[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

async fn run_conn(shared: Arc<Shared>, conn: Arc<Conn>, reader: FrameReader, writer: FrameWriter) {
    let peer = reader.peer().to_owned();
    let mut writer = writer;
    let result = {
        let w = write_loop(&shared, &conn, &mut writer);
        let r = read_loop(&shared, &conn, reader);
        tokio::pin!(w, r);
        tokio::select! {
            res = &mut w => match res {
                Ok(()) => Ok(()),
                // A failed write often means the receiver hung up after
                // saying why: give its last frame a moment to be read.
                Err(e) => match tokio::time::timeout(Duration::from_secs(2), &mut r).await {
                    Ok(Err(remote @ XferError::Remote(_))) => Err(remote),
                    _ => Err(e),
                },
            },
            res = &mut r => res,
        }
    };
    match result {
        Ok(()) => writer.shutdown().await,
        Err(e) => {
            let lost: Vec<Job> = conn
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..)
                .map(|(_, j)| j)
                .collect();
            let fatal = matches!(e, XferError::Remote(_)) || e.is_integrity() || matches!(e, XferError::Frame(_) | XferError::Protocol(_));
            if fatal {
                warn!(%peer, "transfer aborted: {e}");
                shared.fail(e);
            } else {
                warn!(%peer, requeued = lost.len(), "connection lost: {e}");
                shared.requeue_front(lost);
                if shared.live.fetch_sub(1, Ordering::SeqCst) == 1 && !shared.closing.load(Ordering::Acquire) {
                    shared.fail(XferError::AllConnectionsLost(e.to_string()));
                }
            }
        }
    }
}

async fn write_loop(shared: &Shared, conn: &Conn, writer: &mut FrameWriter) -> Result<()> {
    loop {
        let permit = conn
            .window
            .acquire()
            .await
            .map_err(|_| XferError::Protocol("window closed".into()))?;
        let Some(job) = shared.next_job().await else {
            return Ok(());
        };
        permit.forget();
        let seq = writer.next_seq();
        conn.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((seq, job.clone()));
        match &job {
            Job::Data(f, index) => {
                let (off, data) = f.frame(*index);
                if let Some(p) = &shared.pacer {
                    p.pace(data.len()).await;
                }
                let cv = f.cv(*index);
                writer.send_data(f.id, off, data, &cv, Some(&f.file)).await?;
                shared.sent_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            Job::Control { ty, id, payload, digest } => {
                writer.send_digested(*ty, *id, 0, payload, digest).await?;
            }
        }
    }
}

async fn read_loop(shared: &Shared, conn: &Conn, mut reader: FrameReader) -> Result<()> {
    loop {
        let Some(frame) = reader.read_frame().await? else {
            if shared.closing.load(Ordering::Acquire) {
                // The receiver closed after our Done: expected. Park until
                // the writer notices `closing`.
                std::future::pending::<()>().await;
            }
            return Err(XferError::io(
                format!("receiving from {}", reader.peer()),
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        };
        let h = frame.header;
        match h.ty {
            FrameType::Ack => {
                let mut done = 0;
                let mut inflight = conn.inflight.lock().unwrap_or_else(|p| p.into_inner());
                while inflight.front().is_some_and(|(s, _)| *s <= h.offset) {
                    let Some((_, job)) = inflight.pop_front() else { break };
                    if let Job::Data(f, index) = job {
                        if f.ack(index) {
                            let len = tree::frame_len(f.size, f.frame_size, index);
                            shared.progress.done_bytes.fetch_add(len, Ordering::Relaxed);
                        }
                    }
                    done += 1;
                }
                drop(inflight);
                conn.window.add_permits(done);
            }
            FrameType::OfferReply => shared.route(h.file_id, Reply::Offer(OfferReply::decode(&frame.payload)?)),
            FrameType::CommitReply => shared.route(h.file_id, Reply::Commit(Outcome::decode_one(&frame.payload)?)),
            FrameType::BatchReply => shared.route(h.file_id, Reply::Batch(Outcome::decode_many(&frame.payload)?)),
            FrameType::DoneReply => shared.route(0, Reply::Done(DoneReply::decode(&frame.payload)?)),
            FrameType::Error => return Err(XferError::Remote(String::from_utf8_lossy(&frame.payload).into_owned())),
            other => return Err(XferError::Protocol(format!("unexpected {other:?} frame from the receiver"))),
        }
    }
}

/// Work units of the control layer.
enum Task {
    Large(Meta, PathBuf, u64),
    Batch(Vec<Item>),
}

type Totals = (u64, u64, u64, u64, Vec<(String, String)>);

/// Per-task result: entries, files, bytes, held bytes, failures.
#[derive(Default)]
struct TaskResult {
    entries: u64,
    files: u64,
    bytes: u64,
    held: u64,
    failures: Vec<(String, String)>,
}

fn plan(items: Vec<Item>, cfg: &SendConfig) -> Vec<Task> {
    let limit = cfg.frame_size.max(64 << 10) as usize;
    let mut tasks = Vec::new();
    let mut batch = Vec::new();
    let mut batch_bytes = 0usize;
    for item in items {
        let (small, cost) = match &item {
            Item::File { size, meta, .. } if *size <= cfg.small_file => (true, *size as usize + Entry::overhead(meta.path.len())),
            Item::File { .. } => (false, 0),
            Item::Dir { meta } => (true, Entry::overhead(meta.path.len())),
            Item::Symlink { meta, target } => (true, Entry::overhead(meta.path.len()) + target.len()),
        };
        if !small {
            if let Item::File { meta, path, size } = item {
                tasks.push(Task::Large(meta, path, size));
            }
            continue;
        }
        if !batch.is_empty() && (batch_bytes + cost > limit || batch.len() >= 4096) {
            tasks.push(Task::Batch(std::mem::take(&mut batch)));
            batch_bytes = 0;
        }
        batch_bytes += cost;
        batch.push(item);
    }
    if !batch.is_empty() {
        tasks.push(Task::Batch(batch));
    }
    tasks
}

async fn run_queue(shared: &Arc<Shared>, cfg: &SendConfig, items: Vec<Item>) -> Result<Totals> {
    let tasks = plan(items, cfg);
    let admit = Arc::new(Semaphore::new(cfg.files_in_flight));
    let mut set = JoinSet::new();
    let mut totals = TaskResult::default();
    let mut next_id = 1u64;
    let mut fatal = shared.fatal.subscribe();
    for task in tasks {
        let permit = tokio::select! {
            p = admit.clone().acquire_owned() => p.map_err(|_| XferError::Protocol("admission closed".into()))?,
            _ = fatal.wait_for(|f| f.is_some()) => break,
        };
        // Collect finished tasks as we go so memory stays flat.
        while let Some(done) = set.try_join_next() {
            merge(&mut totals, done)?;
        }
        let id = next_id;
        next_id += 1;
        let shared = shared.clone();
        let frame_size = cfg.frame_size;
        set.spawn(async move {
            let _permit = permit;
            match task {
                Task::Large(meta, path, size) => send_large(&shared, id, meta, path, size, frame_size).await,
                Task::Batch(items) => send_batch(&shared, id, items).await,
            }
        });
    }
    while let Some(done) = set.join_next().await {
        merge(&mut totals, done)?;
    }
    if let Some(e) = shared.take_fatal() {
        return Err(e);
    }
    match shared.request(FrameType::Done, 0, Vec::new()).await? {
        Reply::Done(d) => debug!(files = d.files, bytes = d.bytes, "receiver finished"),
        _ => return Err(XferError::Protocol("wrong reply to done".into())),
    }
    Ok((totals.entries, totals.files, totals.bytes, totals.held, totals.failures))
}

fn merge(totals: &mut TaskResult, done: std::result::Result<Result<TaskResult>, tokio::task::JoinError>) -> Result<()> {
    let r = done.map_err(|e| XferError::Protocol(format!("file task failed: {e}")))??;
    totals.entries += r.entries;
    totals.files += r.files;
    totals.bytes += r.bytes;
    totals.held += r.held;
    totals.failures.extend(r.failures);
    Ok(())
}

async fn send_large(shared: &Arc<Shared>, id: u64, meta: Meta, path: PathBuf, size: u64, frame_size: u64) -> Result<TaskResult> {
    let name = meta.display();
    let fail = |why: String| {
        Ok(TaskResult {
            failures: vec![(name.clone(), why)],
            ..Default::default()
        })
    };
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot open: {e}")),
    };
    // SAFETY: the map is read-only; a file truncated under us while mapped
    // would fault (SIGBUS), the price of reading frames in place, as any
    // mmap-based copier pays.
    let map = match unsafe { Mmap::map(&file) } {
        Ok(m) => m,
        Err(e) => return fail(format!("cannot map: {e}")),
    };
    let _ = map.advise(memmap2::Advice::Sequential);
    if map.len() as u64 != size {
        return fail("the file changed size while being sent".into());
    }
    let offer = Offer { meta, size, frame_size };
    let held = match shared.request(FrameType::Offer, id, offer.encode()).await? {
        Reply::Offer(OfferReply::Accept { held }) => held,
        Reply::Offer(OfferReply::Refuse { reason }) => return fail(format!("refused by the receiver: {reason}")),
        _ => return Err(XferError::Protocol("wrong reply to an offer".into())),
    };
    let frames = tree::frame_count(size, frame_size);
    let out = Arc::new(OutFile {
        id,
        file,
        map,
        size,
        frame_size,
        cvs: (0..frames).map(|_| OnceLock::new()).collect(),
        acked: (0..frames).map(|_| AtomicBool::new(false)).collect(),
        remaining: AtomicU64::new(frames),
        all_acked: Notify::new(),
    });
    let mut held_bytes = 0;
    let mut held_frames = Vec::new();
    let mut jobs = Vec::new();
    for i in 0..frames {
        if wire::bit(&held, i) {
            held_frames.push(i);
            held_bytes += tree::frame_len(size, frame_size, i);
        } else {
            jobs.push(Job::Data(out.clone(), i));
        }
    }
    if !held_frames.is_empty() {
        debug!(file = %name, frames = held_frames.len(), "receiver already holds frames");
        // Their chaining values are still needed for the file's BLAKE3;
        // reading locally is cheaper than sending.
        let o = out.clone();
        let hf = held_frames.clone();
        tokio::task::spawn_blocking(move || {
            for i in hf {
                o.cv(i);
            }
        })
        .await
        .map_err(|e| XferError::Protocol(format!("hashing task failed: {e}")))?;
        for i in held_frames {
            out.ack(i);
        }
        shared.progress.done_bytes.fetch_add(held_bytes, Ordering::Relaxed);
    }
    shared.push_many(jobs);
    let mut fatal = shared.fatal.subscribe();
    loop {
        let n = out.all_acked.notified();
        tokio::pin!(n);
        n.as_mut().enable();
        if out.remaining.load(Ordering::Acquire) == 0 {
            break;
        }
        tokio::select! {
            _ = &mut n => {}
            _ = fatal.wait_for(|f| f.is_some()) => return Err(XferError::Protocol("transfer aborted".into())),
        }
    }
    let root = if frames == 1 {
        blake3::hash(&out.map)
    } else {
        let cvs: Vec<[u8; 32]> = (0..frames).map(|i| out.cv(i)).collect();
        tree::root_from_cvs(&cvs, frame_size, size)
    };
    match shared.request(FrameType::Commit, id, root.as_bytes().to_vec()).await? {
        Reply::Commit(Outcome::Ok) => {
            shared.progress.done_entries.fetch_add(1, Ordering::Relaxed);
            Ok(TaskResult {
                entries: 1,
                files: 1,
                bytes: size,
                held: held_bytes,
                failures: Vec::new(),
            })
        }
        Reply::Commit(Outcome::Refused(why)) => fail(format!("refused by the receiver: {why}")),
        Reply::Commit(Outcome::Failed(why)) => fail(why),
        _ => Err(XferError::Protocol("wrong reply to a commit".into())),
    }
}

async fn send_batch(shared: &Arc<Shared>, id: u64, items: Vec<Item>) -> Result<TaskResult> {
    // Reading many small files is blocking work.
    let built = tokio::task::spawn_blocking(move || build_batch(items))
        .await
        .map_err(|e| XferError::Protocol(format!("batch task failed: {e}")))?;
    let Built {
        payload,
        digest,
        names,
        sizes,
        mut failures,
    } = built;
    let outcomes = match shared.request_digested(FrameType::Batch, id, payload, digest).await? {
        Reply::Batch(o) => o,
        _ => return Err(XferError::Protocol("wrong reply to a batch".into())),
    };
    if outcomes.len() != names.len() {
        return Err(XferError::Protocol(format!("{} outcomes for a batch of {}", outcomes.len(), names.len())));
    }
    let mut r = TaskResult::default();
    for (((name, is_file), size), outcome) in names.into_iter().zip(sizes).zip(outcomes) {
        match outcome {
            Outcome::Ok => {
                r.entries += 1;
                if is_file {
                    r.files += 1;
                    r.bytes += size;
                }
                shared.sent_bytes.fetch_add(size, Ordering::Relaxed);
                shared.progress.done_bytes.fetch_add(size, Ordering::Relaxed);
                shared.progress.done_entries.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Refused(why) => failures.push((name, format!("refused by the receiver: {why}"))),
            Outcome::Failed(why) => failures.push((name, why)),
        }
    }
    r.failures = failures;
    Ok(r)
}

/// A batch frame ready to send, and what its outcomes will refer to.
struct Built {
    payload: Vec<u8>,
    /// The digest the frame's MAC covers ([`wire::batch_digest`]).
    digest: [u8; 32],
    /// Per entry: its name and whether it is a regular file.
    names: Vec<(String, bool)>,
    /// Per entry: content bytes (0 for directories and symlinks).
    sizes: Vec<u64>,
    /// Files that could not be read, left out of the batch.
    failures: Vec<(String, String)>,
}

/// Encodes `items` into one batch payload. Each file is read straight into
/// the payload (no copy per file) and hashed there once; that hash is both
/// the entry's whole-file BLAKE3 and its part of the frame's MAC digest.
fn build_batch(items: Vec<Item>) -> Built {
    let capacity: usize = 4 + items
        .iter()
        .map(|i| match i {
            Item::File { meta, size, .. } => Entry::overhead(meta.path.len()) + *size as usize + 1,
            Item::Dir { meta } => Entry::overhead(meta.path.len()),
            Item::Symlink { meta, target } => Entry::overhead(meta.path.len()) + target.len(),
        })
        .sum::<usize>();
    let mut payload = Vec::with_capacity(capacity);
    payload.extend_from_slice(&0u32.to_le_bytes());
    let mut files = Vec::new();
    let mut names = Vec::with_capacity(items.len());
    let mut sizes = Vec::with_capacity(items.len());
    let mut failures = Vec::new();
    for item in items {
        match item {
            Item::File { meta, path, size } => {
                let mark = payload.len();
                let at = wire::begin_file_entry(&mut payload, &meta, size);
                let start = payload.len();
                if let Err(why) = read_into(&path, size, &mut payload) {
                    payload.truncate(mark);
                    failures.push((meta.display(), why));
                    continue;
                }
                let hash = blake3::hash(&payload[start..]);
                payload[at..at + 32].copy_from_slice(hash.as_bytes());
                files.push((start..payload.len(), hash));
                names.push((meta.display(), true));
                sizes.push(size);
            }
            Item::Dir { meta } => {
                names.push((meta.display(), false));
                Entry::Dir { meta }.encode(&mut payload);
                sizes.push(0);
            }
            Item::Symlink { meta, target } => {
                names.push((meta.display(), false));
                Entry::Symlink { meta, target }.encode(&mut payload);
                sizes.push(0);
            }
        }
    }
    let count = names.len() as u32;
    payload[..4].copy_from_slice(&count.to_le_bytes());
    let digest = wire::batch_digest_with(&payload, files);
    Built {
        payload,
        digest,
        names,
        sizes,
        failures,
    }
}

/// Appends the `size` bytes of the file at `path` to `out`, failing (with
/// the reason) when it cannot be read or no longer has that size.
fn read_into(path: &Path, size: u64, out: &mut Vec<u8>) -> std::result::Result<(), String> {
    let file = File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let start = out.len();
    // One byte more than expected: a file that grew is noticed, not cut.
    out.reserve(size as usize + 1);
    match file.take(size + 1).read_to_end(out) {
        Ok(n) if n as u64 == size => Ok(()),
        Ok(_) => {
            out.truncate(start);
            Err("the file changed size while being sent".to_string())
        }
        Err(e) => {
            out.truncate(start);
            Err(format!("cannot read: {e}"))
        }
    }
}
