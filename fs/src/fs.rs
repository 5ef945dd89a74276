//! The FUSE filesystem: a passthrough over a backing directory that
//! journals every completed change.
//!
//! # Inodes
//! FUSE inode numbers are ours, handed out from a counter and never reused
//! while the process lives; each maps to a path relative to the backing
//! root. A lookup takes one reference, `forget` drops them, and an inode
//! with none left is removed. `rename` re-points an inode and everything
//! below it; `unlink`/`rmdir` and a rename over an existing name *detach*
//! the victim (its path becomes `None`), so a late release of an
//! unlinked file can never be journaled against a new file of the same
//! name.
//!
//! # Handles
//! Every `open`/`create` gets a fresh handle number (they only increase)
//! holding our own descriptor of the backing file. With kernel passthrough
//! (Linux 6.9+, root), reads and writes go straight from the kernel to the
//! backing file and never reach us; the backing file registered with the
//! kernel is shared by all handles of an inode, as the kernel requires.
//!
//! # When a write is journaled
//! Per inode we count open handles. When the last handle of an inode that
//! was opened for writing (or created, or truncated) is released, and its
//! content changed, we hash the file and append one `write` entry before
//! replying. "Changed" is a dirty flag set by `create`, `O_TRUNC`,
//! truncation and `write`, or, under passthrough where writes are not
//! seen, a change of the backing file's ctime since the handle was opened
//! (our own chmod/utimens move that baseline, so they do not count).
//!
//! # Lock order
//! A per-inode content lock (striped), then `inodes`, then `open`; the
//! journal's own lock is always taken last. The content lock is held by a
//! last release from its decision until its `write` entry is recorded, and
//! by every open for writing and every truncation: a file rewritten right
//! after it was closed cannot change under the release still hashing it,
//! and its entries come out in the order the contents were made.
//! Operations that change names (`mkdir`, `rmdir`, `unlink`, `rename`,
//! `create`) and the path lookup of a release hold `inodes` for writing
//! while they touch the backing tree and journal, so the journal's order
//! is the order in which names changed.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};
use tracing::{debug, error, info, warn};

use crate::at::{self, Root};
use crate::hints::{ContentHints, Offer};
use crate::journal::{Change, Journal, Op, SyncMode};

/// How long the kernel may cache names and attributes. Short, because the
/// backing tree may also be changed by replay while mounted.
const TTL: Duration = Duration::from_secs(1);
/// Largest write the kernel sends in one request.
const MAX_WRITE: u32 = 1 << 20;

type FsResult<T> = Result<T, Errno>;

/// Maps an I/O error to the errno the kernel should see.
fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

struct Node {
    /// Path relative to the backing root ("" is the root); `None` once
    /// the name was removed while the kernel still holds the inode.
    path: Option<PathBuf>,
    lookups: u64,
}

struct Inodes {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<PathBuf, u64>,
    next: u64,
}

impl Inodes {
    fn new() -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(1, Node { path: Some(PathBuf::new()), lookups: 1 });
        let mut by_path = HashMap::new();
        by_path.insert(PathBuf::new(), 1);
        Inodes { nodes, by_path, next: 2 }
    }

    fn path(&self, ino: u64) -> FsResult<PathBuf> {
        self.nodes.get(&ino).and_then(|n| n.path.clone()).ok_or(Errno::ENOENT)
    }

    /// Returns the inode for `rel`, creating it, and takes one lookup
    /// reference on it.
    fn remember(&mut self, rel: &Path) -> u64 {
        if let Some(&ino) = self.by_path.get(rel) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.lookups += 1;
                return ino;
            }
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(ino, Node { path: Some(rel.to_owned()), lookups: 1 });
        self.by_path.insert(rel.to_owned(), ino);
        ino
    }

    fn forget(&mut self, ino: u64, n: u64) {
        if ino == 1 {
            return;
        }
        let gone = match self.nodes.get_mut(&ino) {
            Some(node) => {
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0
            }
            None => false,
        };
        if gone {
            if let Some(Node { path: Some(p), .. }) = self.nodes.remove(&ino) {
                if self.by_path.get(&p) == Some(&ino) {
                    self.by_path.remove(&p);
                }
            }
        }
    }

    /// The name `rel` is gone: its inode (if any) keeps living for the
    /// kernel but no longer has a path.
    fn detach(&mut self, rel: &Path) {
        if let Some(ino) = self.by_path.remove(rel) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.path = None;
            }
        }
    }

    /// `from` was renamed to `to`: move it and everything below it.
    fn rename(&mut self, from: &Path, to: &Path) {
        self.detach(to);
        let moved: Vec<(PathBuf, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        for (old, ino) in moved {
            self.by_path.remove(&old);
            let rest = old.strip_prefix(from).unwrap_or(Path::new(""));
            let new = if rest.as_os_str().is_empty() { to.to_owned() } else { to.join(rest) };
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.path = Some(new.clone());
            }
            self.by_path.insert(new, ino);
        }
    }
}

/// One open file handle.
struct Handle {
    ino: u64,
    file: Arc<File>,
    /// Keeps the kernel's passthrough registration alive for this handle.
    _backing: Option<Arc<BackingId>>,
}

/// Per-inode state while it has open handles.
#[derive(Default)]
struct OpenState {
    handles: u32,
    /// Opened for writing at least once while open.
    writable: bool,
    /// Handles opened for writing while open; a content offer is only
    /// trusted when this is one.
    write_opens: u32,
    /// Resized by a path truncation while open (not through a handle):
    /// a content offer cannot account for that.
    resized: bool,
    /// [`ContentHints::now`] when the first handle opened: offers made
    /// before it belong to an earlier open and are stale.
    opened: u64,
    /// Content certainly changed (create, O_TRUNC, truncate, write).
    dirty: bool,
    /// ctime of the backing file when first opened for writing, or after
    /// our own last attribute change; a different ctime at release means
    /// a passthrough write happened.
    baseline: Option<(i64, i64)>,
    /// The kernel wants one backing file per inode.
    backing: Weak<BackingId>,
}

/// A directory listing taken at opendir, served by offset.
struct DirHandle {
    entries: Vec<(u64, FileType, OsString)>,
}

pub(crate) struct DriftFs {
    /// The backing directory; every access goes through it (see [`at`]).
    root: Root,
    /// Give new entries to the calling user, as a local filesystem does
    /// (see [`DriftFs::own_new`]).
    chown_new: bool,
    journal: Arc<Journal>,
    sync: SyncMode,
    want_passthrough: bool,
    passthrough: AtomicBool,
    inodes: RwLock<Inodes>,
    handles: Mutex<HashMap<u64, Handle>>,
    dirs: Mutex<HashMap<u64, DirHandle>>,
    open: Mutex<HashMap<u64, OpenState>>,
    next_fh: AtomicU64,
    /// Content locks, striped by inode number (see the lock order).
    content: Vec<Mutex<()>>,
    /// Hashes offered by an in-process writer (see [`ContentHints`]).
    hints: Arc<ContentHints>,
    /// Set when a journal append failed: from then on every change is
    /// refused with EIO rather than applied unrecorded.
    broken: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs as u64)
    }
}

fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn attr_of(ino: u64, st: &libc::stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: system_time(st.st_atime, st.st_atime_nsec),
        mtime: system_time(st.st_mtime, st.st_mtime_nsec),
        ctime: system_time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: kind_of(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn ctime(st: &libc::stat) -> (i64, i64) {
    (st.st_ctime, st.st_ctime_nsec)
}

/// The journal's spelling of a relative path: "/a/b".
fn jpath(rel: &Path) -> String {
    format!("/{}", rel.to_string_lossy())
}

fn check_name(name: &OsStr) -> FsResult<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(Errno::EINVAL);
    }
    if b.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

/// Flags for our own descriptor of a file the kernel opened with `flags`.
/// Write-only becomes read-write so the release can hash the content;
/// append is dropped because the kernel already gives every write its
/// final offset.
fn own_flags(flags: i32) -> i32 {
    let mut f = flags & !(libc::O_NOCTTY | libc::O_APPEND);
    if f & libc::O_ACCMODE == libc::O_WRONLY {
        f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
    }
    f
}

fn fchmod(f: &File, mode: u32) -> io::Result<()> {
    if unsafe { libc::fchmod(f.as_raw_fd(), mode as libc::mode_t) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn to_timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        Some(TimeOrNow::Now) => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec { tv_sec: d.as_secs() as i64, tv_nsec: d.subsec_nanos() as i64 },
            Err(e) => {
                let d = e.duration();
                let mut sec = -(d.as_secs() as i64);
                let mut nsec = d.subsec_nanos() as i64;
                if nsec > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - nsec;
                }
                libc::timespec { tv_sec: sec, tv_nsec: nsec }
            }
        },
    }
}

impl DriftFs {
    pub(crate) fn new(
        root: Root,
        journal: Arc<Journal>,
        hints: Arc<ContentHints>,
        sync: SyncMode,
        passthrough: bool,
        chown_new: bool,
    ) -> Self {
        DriftFs {
            root,
            chown_new,
            journal,
            sync,
            want_passthrough: passthrough,
            passthrough: AtomicBool::new(false),
            inodes: RwLock::new(Inodes::new()),
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            content: (0..64).map(|_| Mutex::new(())).collect(),
            hints,
            broken: AtomicBool::new(false),
        }
    }

    fn content_lock(&self, ino: u64) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.content[(ino % self.content.len() as u64) as usize])
    }

    fn read_inodes(&self) -> std::sync::RwLockReadGuard<'_, Inodes> {
        self.inodes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_inodes(&self) -> std::sync::RwLockWriteGuard<'_, Inodes> {
        self.inodes.write().unwrap_or_else(|p| p.into_inner())
    }

    fn child(inodes: &Inodes, parent: u64, name: &OsStr) -> FsResult<PathBuf> {
        check_name(name)?;
        Ok(inodes.path(parent)?.join(name))
    }

    /// Refuses changes once the journal has failed: applying a change we
    /// cannot record would break the promise that replay reproduces the tree.
    fn writable(&self) -> FsResult<()> {
        if self.broken.load(Ordering::Relaxed) {
            Err(Errno::EIO)
        } else {
            Ok(())
        }
    }

    fn record(&self, change: Change) -> FsResult<()> {
        match self.journal.append(change) {
            Ok(e) => {
                debug!(seq = e.seq, op = %e.op, path = %e.path, "journaled");
                Ok(())
            }
            Err(err) => {
                let mut msg = err.to_string();
                let mut cause = std::error::Error::source(&err);
                while let Some(c) = cause {
                    msg = format!("{msg}: {c}");
                    cause = c.source();
                }
                error!("journal append failed, refusing further changes: {msg}");
                self.broken.store(true, Ordering::Relaxed);
                Err(Errno::EIO)
            }
        }
    }

    /// Makes a directory change durable on disk in [`SyncMode::Full`].
    fn sync_dir(&self, rel: &Path) {
        if self.sync == SyncMode::Full {
            let dir = rel.parent().unwrap_or(Path::new(""));
            if let Err(e) = self.root.sync_dir(dir) {
                warn!("fsync of directory {} failed: {e}", jpath(dir));
            }
        }
    }

    fn passthrough(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    /// The `write` change for a file's current content (path left empty
    /// for the caller to fill in under the inode lock). Hashing is done
    /// without any lock held: a 1 GiB file must not stall renames.
    fn write_change(&self, file: &File, offer: Option<Offer>) -> FsResult<Change> {
        if self.sync == SyncMode::Full {
            file.sync_all().map_err(errno)?;
        }
        let md = match offer {
            Some(_) => Some(file.metadata().map_err(errno)?),
            None => None,
        };
        let (hash, size, mode) = match (offer, md) {
            (Some(o), Some(md)) if md.len() == o.size => (o.hash, o.size, md.mode()),
            _ => crate::hash::hash_file_mode(file).map_err(errno)?,
        };
        Ok(Change { size: Some(size), blake3: Some(hash.to_hex().to_string()), mode: Some(mode & 0o7777), ..Change::new(Op::Write, "") })
    }

    /// Hashes the file and appends its `write` entry for `rel`.
    fn journal_write(&self, rel: &Path, file: &File) -> FsResult<()> {
        let c = self.write_change(file, None)?;
        self.record(Change { path: jpath(rel), ..c })
    }

    /// Registers a new handle on `ino`; `changed` marks content already
    /// changed by this open (create, O_TRUNC).
    fn add_handle(
        &self,
        ino: u64,
        file: File,
        write: bool,
        changed: bool,
        md: Option<&libc::stat>,
        pass: Option<Arc<BackingId>>,
    ) -> FsResult<u64> {
        let baseline = match (write, md) {
            (false, _) => None,
            (true, Some(md)) => Some(ctime(md)),
            (true, None) => at::fstat(&file).ok().map(|m| ctime(&m)),
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        {
            let mut open = lock(&self.open);
            let st = open.entry(ino).or_default();
            if st.handles == 0 {
                st.opened = self.hints.now();
            }
            st.handles += 1;
            if write {
                if !st.writable {
                    st.baseline = baseline;
                }
                st.writable = true;
                st.write_opens += 1;
            }
            st.dirty |= changed;
        }
        lock(&self.handles).insert(fh, Handle { ino, file: Arc::new(file), _backing: pass });
        Ok(fh)
    }

    /// The backing file the kernel reads and writes for `ino` under
    /// passthrough: one per inode, opened read-write, registered once.
    fn passthrough_backing(
        &self,
        ino: u64,
        rel: &Path,
        reuse: Option<&File>,
        register: impl FnOnce(&File) -> io::Result<BackingId>,
    ) -> FsResult<Arc<BackingId>> {
        let mut open = lock(&self.open);
        let st = open.entry(ino).or_default();
        if let Some(id) = st.backing.upgrade() {
            return Ok(id);
        }
        // The kernel keeps its own reference to the file it is given, so a
        // descriptor we already hold (read-write, no append) can serve.
        let id = match reuse {
            Some(f) => Arc::new(register(f).map_err(errno)?),
            None => Arc::new(register(&self.root.open_file(rel, libc::O_RDWR, 0).map_err(errno)?).map_err(errno)?),
        };
        st.backing = Arc::downgrade(&id);
        Ok(id)
    }

    /// Some open handle of `ino`, for a file that has no path any more.
    fn any_handle(&self, ino: u64) -> Option<(u64, Arc<File>)> {
        lock(&self.handles).values().find(|h| h.ino == ino).map(|h| (h.ino, h.file.clone()))
    }

    fn handle_file(&self, fh: FileHandle) -> FsResult<(u64, Arc<File>)> {
        lock(&self.handles)
            .get(&fh.0)
            .map(|h| (h.ino, h.file.clone()))
            .ok_or(Errno::EBADF)
    }

    fn mark_dirty(&self, ino: u64) -> bool {
        self.mark_open(ino, |st| st.dirty = true)
    }

    /// Applies `f` to the inode's open state; false if it is not open.
    fn mark_open(&self, ino: u64, f: impl FnOnce(&mut OpenState)) -> bool {
        match lock(&self.open).get_mut(&ino) {
            Some(st) => {
                f(st);
                true
            }
            None => false,
        }
    }

    fn lookup_impl(&self, parent: u64, name: &OsStr) -> FsResult<FileAttr> {
        // One write-locked section: the kernel does not serialize a lookup
        // inside a directory against a rename of that directory, and the
        // path we remember must be the one we looked at.
        let mut inodes = self.write_inodes();
        let rel = Self::child(&inodes, parent, name)?;
        let md = self.root.stat(&rel).map_err(errno)?;
        let ino = inodes.remember(&rel);
        Ok(attr_of(ino, &md))
    }

    fn setattr_impl(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> FsResult<FileAttr> {
        if mode.is_some() || size.is_some() || mtime.is_some() {
            self.writable()?;
        }
        let _content = size.is_some().then(|| self.content_lock(ino));
        // Hold the inode table so the path we journal is the file we changed.
        let inodes = self.read_inodes();
        let rel = inodes.path(ino);
        // The handle the kernel names, or, for a file unlinked while open
        // (it has no path any more), any open handle of it.
        let handle = fh
            .and_then(|fh| self.handle_file(fh).ok())
            .or_else(|| rel.is_err().then(|| self.any_handle(ino)).flatten())
            .map(|(_, f)| f);
        if let (Err(e), None) = (&rel, &handle) {
            return Err(*e);
        }
        let by_path = |f: &dyn Fn(&Path) -> io::Result<()>, g: &dyn Fn(&File) -> io::Result<()>| {
            match (&handle, &rel) {
                (Some(h), _) => g(h),
                (None, Ok(p)) => f(p),
                (None, Err(_)) => Err(io::Error::from_raw_os_error(libc::ENOENT)),
            }
            .map_err(errno)
        };

        if let Some(mode) = mode {
            let m = mode & 0o7777;
            by_path(&|p| self.root.chmod(p, m), &|f| fchmod(f, m))?;
        }
        if uid.is_some() || gid.is_some() {
            // Ownership is applied but not journaled: FTP users are virtual
            // and every served file belongs to the node's service account.
            by_path(&|p| self.root.chown(p, uid, gid), &|f| std::os::unix::fs::fchown(f, uid, gid))?;
        }
        if let Some(size) = size {
            by_path(
                &|p| self.root.open_file(p, libc::O_WRONLY, 0)?.set_len(size),
                &|f| f.set_len(size),
            )?;
        }
        if atime.is_some() || mtime.is_some() {
            let times = [to_timespec(atime), to_timespec(mtime)];
            by_path(&|p| self.root.utimens(p, &times), &|f| {
                let r = unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) };
                if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
            })?;
        }

        let md = match (&handle, &rel) {
            (Some(h), _) => at::fstat(&**h),
            (None, Ok(p)) => self.root.stat(p),
            (None, Err(_)) => Err(io::Error::from_raw_os_error(libc::ENOENT)),
        }
        .map_err(errno)?;

        // Journal. A truncation of an open file is part of that file's
        // write (journaled at release); of a closed file it is a write now.
        if let Ok(rel) = &rel {
            // mark_open is false when the file is not open.
            if size.is_some() {
                let through_handle = handle.is_some();
                let marked = self.mark_open(ino, |st| {
                    st.dirty = true;
                    st.resized |= !through_handle;
                });
                if !marked {
                    let f = match &handle {
                        Some(h) => h.clone(),
                        None => Arc::new(self.root.open_file(rel, libc::O_RDONLY, 0).map_err(errno)?),
                    };
                    self.journal_write(rel, &f)?;
                }
            }
            if mode.is_some() || mtime.is_some() {
                let mut c = Change::new(Op::Attr, jpath(rel));
                c.mode = mode.map(|_| md.st_mode & 0o7777);
                c.mtime_ns = mtime.map(|_| md.st_mtime * 1_000_000_000 + md.st_mtime_nsec);
                self.record(c)?;
            }
        }
        drop(inodes);
        if mode.is_some() || mtime.is_some() || uid.is_some() || gid.is_some() {
            // Our own attribute change must not look like a passthrough write.
            if let Some(st) = lock(&self.open).get_mut(&ino) {
                if st.writable {
                    st.baseline = Some(ctime(&md));
                }
            }
        }
        Ok(attr_of(ino, &md))
    }

    /// Makes a new entry what the caller asked for. The mode: the kernel
    /// sends the caller's mode and umask, but creating applied this
    /// process's umask as well, so the mode is set exactly. The owner
    /// (when [`chown_new`](Self::chown_new)): the caller's uid, and its
    /// gid or, under a set-group-ID directory, the directory's, as a local
    /// filesystem does. Ownership first: chown clears set-ID bits.
    fn own_new(&self, req: &Request, parent: &Path, rel: &Path, file: Option<&File>, want: u32) -> FsResult<libc::stat> {
        if self.chown_new {
            let pst = self.root.stat(parent).map_err(errno)?;
            let gid = if pst.st_mode & libc::S_ISGID != 0 { pst.st_gid } else { req.gid() };
            match file {
                Some(f) => std::os::unix::fs::fchown(f, Some(req.uid()), Some(gid)),
                None => self.root.chown(rel, Some(req.uid()), Some(gid)),
            }
            .map_err(errno)?;
        }
        let st = match file {
            Some(f) => at::fstat(f),
            None => self.root.stat(rel),
        }
        .map_err(errno)?;
        // A directory made in a set-group-ID directory inherits the bit,
        // as it does on a local filesystem.
        let want = if file.is_none() { want | (st.st_mode & libc::S_ISGID) } else { want };
        if st.st_mode & 0o7777 == want {
            return Ok(st);
        }
        match file {
            Some(f) => fchmod(f, want),
            None => self.root.chmod(rel, want),
        }
        .map_err(errno)?;
        match file {
            Some(f) => at::fstat(f),
            None => self.root.stat(rel),
        }
        .map_err(errno)
    }

    fn mkdir_impl(&self, req: &Request, parent: u64, name: &OsStr, mode: u32, umask: u32) -> FsResult<FileAttr> {
        self.writable()?;
        let mut inodes = self.write_inodes();
        let parent_rel = inodes.path(parent)?;
        let rel = Self::child(&inodes, parent, name)?;
        let want = mode & !umask & 0o7777;
        self.root.mkdir(&rel, want).map_err(errno)?;
        let md = match self.own_new(req, &parent_rel, &rel, None, want) {
            Ok(md) => md,
            Err(e) => {
                // Not journaled, so not kept: the tree must match the journal.
                let _ = self.root.remove(&rel, true);
                return Err(e);
            }
        };
        let mut c = Change::new(Op::Mkdir, jpath(&rel));
        c.mode = Some(md.st_mode & 0o7777);
        self.record(c)?;
        self.sync_dir(&rel);
        let ino = inodes.remember(&rel);
        Ok(attr_of(ino, &md))
    }

    fn remove_impl(&self, parent: u64, name: &OsStr, dir: bool) -> FsResult<()> {
        self.writable()?;
        let mut inodes = self.write_inodes();
        let rel = Self::child(&inodes, parent, name)?;
        self.root.remove(&rel, dir).map_err(errno)?;
        self.record(Change::new(if dir { Op::Rmdir } else { Op::Unlink }, jpath(&rel)))?;
        self.sync_dir(&rel);
        inodes.detach(&rel);
        Ok(())
    }

    fn rename_impl(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> FsResult<()> {
        self.writable()?;
        if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.bits() & libc::RENAME_WHITEOUT != 0 {
            // The journal has no way to express an exchange.
            return Err(Errno::EINVAL);
        }
        let mut inodes = self.write_inodes();
        let from = Self::child(&inodes, parent, name)?;
        let to = Self::child(&inodes, newparent, newname)?;
        self.root.rename(&from, &to, flags.bits()).map_err(errno)?;
        if from == to {
            return Ok(());
        }
        let mut c = Change::new(Op::Rename, jpath(&from));
        c.to = Some(jpath(&to));
        self.record(c)?;
        self.sync_dir(&from);
        self.sync_dir(&to);
        inodes.rename(&from, &to);
        Ok(())
    }

    fn release_impl(&self, ino: u64, fh: FileHandle) -> FsResult<()> {
        let _content = self.content_lock(ino);
        let handle = lock(&self.handles).remove(&fh.0);
        let Some(handle) = handle else { return Err(Errno::EBADF) };
        let finished = {
            let mut open = lock(&self.open);
            let last = match open.get_mut(&ino) {
                Some(st) => {
                    st.handles = st.handles.saturating_sub(1);
                    st.handles == 0
                }
                None => false,
            };
            if last { open.remove(&ino) } else { None }
        };
        let Some(st) = finished else { return Ok(()) };
        if !st.writable {
            return Ok(());
        }
        let changed = st.dirty
            || match (st.baseline, at::fstat(&*handle.file)) {
                (Some(b), Ok(md)) => ctime(&md) != b,
                _ => true,
            };
        if !changed {
            return Ok(());
        }
        // An offer is taken (so it cannot outlive this release) but only
        // used when it names this very file and the offering handle was
        // the file's only writer.
        let offer = match self.read_inodes().path(ino) {
            Ok(rel) => self.hints.take(&jpath(&rel)),
            Err(_) => None,
        };
        let offer = offer.filter(|o| o.ino == ino && st.write_opens == 1 && !st.resized && o.made > st.opened);
        let change = self.write_change(&handle.file, offer)?;
        // A rename since the hash is journaled already, so the entry goes
        // under the name the file has now, after it.
        let inodes = self.read_inodes();
        match inodes.path(ino) {
            Ok(rel) => self.record(Change { path: jpath(&rel), ..change }),
            // Unlinked while open: its unlink is journaled, its content is gone.
            Err(_) => Ok(()),
        }
    }

    fn open_impl(&self, req_flags: i32, ino: u64, reply: &ReplyOpen) -> FsResult<(u64, Option<Arc<BackingId>>)> {
        let acc = req_flags & libc::O_ACCMODE;
        let write = acc != libc::O_RDONLY;
        let trunc = req_flags & libc::O_TRUNC != 0;
        if write {
            self.writable()?;
        }
        let _content = write.then(|| self.content_lock(ino));
        let rel = self.read_inodes().path(ino)?;
        let flags = req_flags & !(libc::O_CREAT | libc::O_EXCL);
        // Read-write when we can (to hash at release); as asked otherwise
        // (a write-only file when not running as root).
        let file = self.root.open_file(&rel, own_flags(flags), 0).or_else(|e| {
            if e.raw_os_error() == Some(libc::EACCES) { self.root.open_file(&rel, flags & !libc::O_APPEND, 0) } else { Err(e) }
        }).map_err(errno)?;
        let pass = if self.passthrough() {
            match self.passthrough_backing(ino, &rel, None, |f| reply.open_backing(f)) {
                Ok(id) => Some(id),
                Err(e) => {
                    // Reads then go through the daemon, several times slower
                    // for cold files: say so once where an operator looks.
                    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
                    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::warn!(path = %jpath(&rel), error = ?e, "the kernel refused passthrough for a file; its reads and writes go through the daemon (slower); later refusals are logged at debug");
                    } else {
                        debug!("passthrough refused for {}: {e:?}", jpath(&rel));
                    }
                    None
                }
            }
        } else {
            None
        };
        if pass.is_none() && acc != libc::O_WRONLY {
            // We serve this file's reads ourselves, in the order the
            // kernel's readahead asks for them: mostly sequential, so the
            // backing file may read further ahead (best effort).
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
        }
        let fh = self.add_handle(ino, file, write, trunc, None, pass.clone())?;
        Ok((fh, pass))
    }

    fn create_impl(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        want: u32,
        flags: i32,
        reply: &ReplyCreate,
    ) -> FsResult<(FileAttr, u64, Option<Arc<BackingId>>)> {
        self.writable()?;
        let mut inodes = self.write_inodes();
        let parent_rel = inodes.path(parent)?;
        let rel = Self::child(&inodes, parent, name)?;
        // Exclusive, so that only a file made here gets the caller's mode
        // and owner. The kernel asks to create a name it believes absent;
        // if it appeared meanwhile in the backing directory, it is opened
        // as it is (unless the caller asked for O_EXCL too).
        let own = own_flags(flags) | libc::O_CREAT | libc::O_EXCL;
        let (file, made) = match self.root.open_file(&rel, own, want) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && flags & libc::O_EXCL == 0 => {
                (self.root.open_file(&rel, own & !(libc::O_CREAT | libc::O_EXCL), 0).map_err(errno)?, false)
            }
            Err(e) => return Err(errno(e)),
        };
        let md = if made {
            match self.own_new(req, &parent_rel, &rel, Some(&file), want) {
                Ok(md) => md,
                Err(e) => {
                    // Not journaled, so not kept: the tree must match the journal.
                    let _ = self.root.remove(&rel, false);
                    return Err(e);
                }
            }
        } else {
            at::fstat(&file).map_err(errno)?
        };
        let ino = inodes.remember(&rel);
        drop(inodes);
        let pass = if self.passthrough() {
            // Our descriptor is read-write and never appends (own_flags).
            self.passthrough_backing(ino, &rel, Some(&file), |f| reply.open_backing(f)).ok()
        } else {
            None
        };
        let changed = made || flags & libc::O_TRUNC != 0;
        let fh = self.add_handle(ino, file, true, changed, Some(&md), pass.clone())?;
        Ok((attr_of(ino, &md), fh, pass))
    }

    fn read_dir_impl(&self, ino: u64) -> FsResult<u64> {
        let rel = self.read_inodes().path(ino)?;
        let mut entries = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (ino, FileType::Directory, OsString::from("..")),
        ];
        for ent in self.root.list(&rel).map_err(errno)? {
            let kind = match ent.kind {
                libc::DT_UNKNOWN => match self.root.stat(&rel.join(&ent.name)) {
                    Ok(st) => kind_of(st.st_mode),
                    // Gone since the listing was read.
                    Err(_) => continue,
                },
                libc::DT_DIR => FileType::Directory,
                libc::DT_LNK => FileType::Symlink,
                libc::DT_CHR => FileType::CharDevice,
                libc::DT_BLK => FileType::BlockDevice,
                libc::DT_FIFO => FileType::NamedPipe,
                libc::DT_SOCK => FileType::Socket,
                _ => FileType::RegularFile,
            };
            entries.push((ent.ino, kind, ent.name));
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs).insert(fh, DirHandle { entries });
        Ok(fh)
    }
}

impl Filesystem for DriftFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(max);
        }
        let _ = config.set_max_readahead(MAX_WRITE);
        if self.want_passthrough {
            let ok = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            self.passthrough.store(ok, Ordering::Relaxed);
            if ok {
                info!("kernel passthrough enabled: reads and writes bypass the daemon");
            } else {
                info!("kernel passthrough not available, serving reads and writes ourselves");
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup_impl(parent.0, name) { Ok(a) => reply.entry(&TTL, &a, Generation(0)), Err(e) => reply.error(e) };
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.write_inodes().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let md = match fh.and_then(|fh| self.handle_file(fh).ok()) {
            Some((_, f)) => at::fstat(&*f).map_err(errno),
            None => match self.read_inodes().path(ino.0) {
                Ok(rel) => self.root.stat(&rel).map_err(errno),
                // Unlinked while open: fstat(2) reaches us without the
                // handle, but the file lives on in its open handles.
                Err(e) => match self.any_handle(ino.0) {
                    Some((_, f)) => at::fstat(&*f).map_err(errno),
                    None => Err(e),
                },
            },
        };
        match md { Ok(md) => reply.attr(&TTL, &attr_of(ino.0, &md)), Err(e) => reply.error(e) };
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.setattr_impl(ino.0, mode, uid, gid, size, atime, mtime, fh) { Ok(a) => reply.attr(&TTL, &a), Err(e) => reply.error(e) };
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = self.read_inodes().path(ino.0).and_then(|rel| self.root.readlink(&rel).map_err(errno));
        match r { Ok(t) => reply.data(&t), Err(e) => reply.error(e) };
    }

    fn mknod(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, _r: u32, reply: ReplyEntry) {
        // Devices, fifos and sockets have no place in an FTP tree.
        reply.error(Errno::EPERM);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        match self.mkdir_impl(req, parent.0, name, mode, umask) { Ok(a) => reply.entry(&TTL, &a, Generation(0)), Err(e) => reply.error(e) };
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove_impl(parent.0, name, false) { Ok(()) => reply.ok(), Err(e) => reply.error(e) };
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove_impl(parent.0, name, true) { Ok(()) => reply.ok(), Err(e) => reply.error(e) };
    }

    fn symlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _t: &Path, reply: ReplyEntry) {
        // Creating links is refused: a link could point out of a user's
        // home, and the journal records content, not links.
        reply.error(Errno::EPERM);
    }

    fn link(&self, _req: &Request, _i: INodeNo, _p: INodeNo, _n: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EPERM);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.rename_impl(parent.0, name, newparent.0, newname, flags) { Ok(()) => reply.ok(), Err(e) => reply.error(e) };
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.open_impl(flags.0, ino.0, &reply) {
            Ok((fh, Some(id))) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id),
            Ok((fh, None)) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = self.handle_file(fh).and_then(|(_, f)| {
            let mut buf = vec![0u8; size as usize];
            let mut got = 0;
            while got < buf.len() {
                match f.read_at(&mut buf[got..], offset + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(errno(e)),
                }
            }
            buf.truncate(got);
            Ok(buf)
        });
        match r { Ok(b) => reply.data(&b), Err(e) => reply.error(e) };
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = self.writable().and_then(|()| self.handle_file(fh)).and_then(|(_, f)| {
            f.write_all_at(data, offset).map_err(errno)?;
            self.mark_dirty(ino.0);
            Ok(data.len() as u32)
        });
        match r { Ok(n) => reply.written(n), Err(e) => reply.error(e) };
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock: LockOwner, reply: ReplyEmpty) {
        // Data goes straight to the backing file; nothing is buffered here.
        // ENOSYS tells the kernel to stop sending FLUSH at all, which saves
        // a round trip on every close(2).
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        match self.release_impl(ino.0, fh) { Ok(()) => reply.ok(), Err(e) => reply.error(e) };
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let r = self.handle_file(fh).and_then(|(_, f)| {
            if datasync { f.sync_data() } else { f.sync_all() }.map_err(errno)
        });
        match r { Ok(()) => reply.ok(), Err(e) => reply.error(e) };
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.read_dir_impl(ino.0) { Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()), Err(e) => reply.error(e) };
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let dirs = lock(&self.dirs);
        let Some(d) = dirs.get(&fh.0) else { return reply.error(Errno::EBADF) };
        for (i, (ino, kind, name)) in d.entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let r = self
            .read_inodes()
            .path(ino.0)
            .and_then(|rel| self.root.sync_dir(&rel).map_err(errno));
        match r { Ok(()) => reply.ok(), Err(e) => reply.error(e) };
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let r = self.root.statvfs().map_err(errno);
        match r { Ok(st) => {
                reply.statfs(
                    st.f_blocks,
                    st.f_bfree,
                    st.f_bavail,
                    st.f_files,
                    st.f_ffree,
                    st.f_bsize as u32,
                    st.f_namemax as u32,
                    st.f_frsize as u32,
                )
            }, Err(e) => reply.error(e) };
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        // The mode the caller asked for, minus the caller's umask.
        match self.create_impl(req, parent.0, name, mode & !umask & 0o7777, flags, &reply) {
            Ok((attr, fh, Some(id))) => {
                reply.created_passthrough(&TTL, &attr, Generation(0), FileHandle(fh), FopenFlags::empty(), &id)
            }
            Ok((attr, fh, None)) => reply.created(&TTL, &attr, Generation(0), FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    // Extended attributes are not supported. ENOSYS (rather than
    // ENOTSUP) lets the kernel remember that and stop asking, which
    // matters because it checks `security.capability` on every write.
    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Only the mounting user gets in unless --allow-other, and then
        // the kernel checks permission bits itself (default_permissions).
        reply.ok();
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // Regular files answer no ioctls (isatty(3) asks TCGETS).
        reply.error(Errno::ENOTTY);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self.writable().and_then(|()| self.handle_file(fh)).and_then(|(_, f)| {
            let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, length as i64) };
            if rc != 0 {
                return Err(errno(io::Error::last_os_error()));
            }
            self.mark_dirty(ino.0);
            Ok(())
        });
        match r { Ok(()) => reply.ok(), Err(e) => reply.error(e) };
    }
}
