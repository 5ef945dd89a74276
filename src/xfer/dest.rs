//! Where received entries land: directory handles kept per session and
//! the few system calls that put a verified file under its final name.
//!
//! A tree of small files costs the receiver a handful of metadata calls per
//! file, so the path taken matters (BENCHMARKS.md, `## drift xfer`):
//! - **Directory handles.** Each destination directory is opened once per
//!   session (`O_PATH | O_DIRECTORY | O_NOFOLLOW`, relative to its parent's
//!   handle) and every later call is relative to it (`openat`, `linkat`,
//!   `renameat`): no path walk and no `lstat` of each parent per file. A
//!   parent that is a symlink or not a directory is refused when it is
//!   opened, as [`super::paths::prepare_parents`] does; a handle keeps
//!   pointing at the directory that was checked even if the name is
//!   swapped afterwards.
//! - **Unnamed files.** A small file is written into an unnamed inode
//!   (`O_TMPFILE`), given its mode and time through the descriptor
//!   (`fchmod`, `futimens`), and only then linked under its final name
//!   (`linkat`): a partial file never has a name at all, there is no
//!   temporary name to create and rename away, and the inode allocation,
//!   the most expensive part of a create on ext4, runs without the
//!   directory's lock, so two connections writing into one directory do not
//!   wait for each other. When the name already exists the file is linked
//!   under a temporary name beside it and renamed over it. Filesystems
//!   without `O_TMPFILE`, and receivers with an inspection hook (which
//!   needs a path to the staged file), use a named temporary and a rename,
//!   as before.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::error::{Result, XferError};

/// Directory handles kept open per session; past this many the cache is
/// emptied (handles in use stay open until their users drop them).
const MAX_CACHED_DIRS: usize = 256;

/// The destination directory of one session and handles on its
/// subdirectories.
pub struct DestDirs {
    root: PathBuf,
    /// Handles by path relative to `root` (the empty path is `root`).
    cache: Mutex<HashMap<PathBuf, Arc<OwnedFd>>>,
    /// Cleared after `O_TMPFILE` failed as unsupported here.
    tmpfile: AtomicBool,
    /// Cleared after `linkat(AT_EMPTY_PATH)` was refused (it needs
    /// `CAP_DAC_READ_SEARCH` on older kernels); `/proc/self/fd` is used then.
    empty_path_link: AtomicBool,
}

/// What a file's name resolves to: its parent's handle and its last
/// component.
pub struct Target {
    pub dir: Arc<OwnedFd>,
    pub name: CString,
    /// The full path, for messages and for an inspection hook.
    pub path: PathBuf,
}

impl DestDirs {
    pub fn new(root: PathBuf) -> Self {
        DestDirs {
            root,
            cache: Mutex::new(HashMap::new()),
            tmpfile: AtomicBool::new(true),
            empty_path_link: AtomicBool::new(true),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The handle of directory `rel` (relative, already checked by
    /// [`super::paths::relative`]; empty for the root), creating it and any
    /// missing parents. `name` is the entry being placed, for messages.
    pub fn dir(&self, rel: &Path, name: &Path) -> Result<Arc<OwnedFd>> {
        if let Some(fd) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(rel) {
            return Ok(fd.clone());
        }
        let fd = match rel.parent() {
            None => Arc::new(self.open_root()?),
            Some(parent) => {
                let Some(Component::Normal(last)) = rel.components().next_back() else {
                    return Err(XferError::BadPath {
                        path: name.display().to_string(),
                        reason: "absolute, or has an empty, '.' or '..' component",
                    });
                };
                let up = self.dir(parent, name)?;
                Arc::new(open_or_make_dir(&up, last, &self.root.join(rel), name)?)
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED_DIRS {
            cache.clear();
        }
        cache.insert(rel.to_path_buf(), fd.clone());
        Ok(fd)
    }

    fn open_root(&self) -> Result<OwnedFd> {
        let c = cstring(self.root.as_os_str())?;
        // SAFETY: `c` is a valid NUL-terminated path; the returned
        // descriptor is owned below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        owned(fd).map_err(|e| XferError::io(format!("opening {}", self.root.display()), e))
    }

    /// Resolves `rel` (a file, symlink or directory entry) to its parent's
    /// handle and its name, creating missing parents.
    pub fn target(&self, rel: &Path) -> Result<Target> {
        let Some(last) = rel.file_name() else {
            return Err(XferError::BadPath {
                path: rel.display().to_string(),
                reason: "empty",
            });
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        Ok(Target {
            dir: self.dir(parent, rel)?,
            name: cstring(last)?,
            path: self.root.join(rel),
        })
    }

    /// Creates an unnamed file in `t`'s directory, or `None` where the
    /// filesystem cannot (the caller then uses a named temporary).
    pub fn unnamed_file(&self, t: &Target) -> Result<Option<File>> {
        if !self.tmpfile.load(Ordering::Relaxed) {
            return Ok(None);
        }
        // SAFETY: valid descriptor and NUL-terminated path; the returned
        // descriptor is owned below.
        let fd = unsafe {
            libc::openat(
                t.dir.as_raw_fd(),
                c".".as_ptr(),
                libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        match owned(fd) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)) => {
                self.tmpfile.store(false, Ordering::Relaxed);
                Ok(None)
            }
            Err(e) => Err(XferError::io(format!("creating a file for {}", t.path.display()), e)),
        }
    }

    /// Gives an unnamed file its final name, replacing what is there
    /// unless it is a directory.
    pub fn link_into_place(&self, file: &File, t: &Target) -> Result<()> {
        let fail = |e: io::Error| XferError::io(format!("linking {} into place", t.path.display()), e);
        match self.link(file, &t.dir, &t.name) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(fail(e)),
        }
        // The name is taken: link under a temporary name beside it, then
        // rename that over the old one (atomic for readers).
        let tmp = tmp_name(&t.name);
        self.link(file, &t.dir, &tmp).map_err(fail)?;
        rename_over(&t.dir, &tmp, t)
    }

    fn link(&self, file: &File, dir: &OwnedFd, name: &CStr) -> io::Result<()> {
        if self.empty_path_link.load(Ordering::Relaxed) {
            // SAFETY: valid descriptors and NUL-terminated names.
            let r = unsafe { libc::linkat(file.as_raw_fd(), c"".as_ptr(), dir.as_raw_fd(), name.as_ptr(), libc::AT_EMPTY_PATH) };
            if r == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::EPERM) | Some(libc::EINVAL) => {
                    self.empty_path_link.store(false, Ordering::Relaxed)
                }
                _ => return Err(e),
            }
        }
        let proc = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(io::Error::other)?;
        // SAFETY: valid descriptors and NUL-terminated paths.
        let r = unsafe { libc::linkat(libc::AT_FDCWD, proc.as_ptr(), dir.as_raw_fd(), name.as_ptr(), libc::AT_SYMLINK_FOLLOW) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Opens directory `last` under `up`, creating it when missing; refuses a
/// symlink or anything else that is not a directory.
fn open_or_make_dir(up: &OwnedFd, last: &OsStr, full: &Path, name: &Path) -> Result<OwnedFd> {
    let c = cstring(last)?;
    let not_dir = || XferError::BadPath {
        path: name.display().to_string(),
        reason: "a path component on the receiver is a symlink or a file, not a directory",
    };
    for _ in 0..2 {
        // SAFETY: valid descriptor and NUL-terminated name; the returned
        // descriptor is owned below.
        let fd = unsafe {
            libc::openat(
                up.as_raw_fd(),
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        match owned(fd) {
            Ok(fd) => {
                // O_PATH | O_NOFOLLOW would open a symlink itself; make sure
                // this is a real directory.
                if is_dir(&fd).map_err(|e| XferError::io(format!("checking {}", full.display()), e))? {
                    return Ok(fd);
                }
                return Err(not_dir());
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                // SAFETY: valid descriptor and NUL-terminated name.
                if unsafe { libc::mkdirat(up.as_raw_fd(), c.as_ptr(), 0o777) } != 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(XferError::io(format!("creating {}", full.display()), e));
                    }
                }
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP)) => return Err(not_dir()),
            Err(e) => return Err(XferError::io(format!("opening {}", full.display()), e)),
        }
    }
    Err(not_dir())
}

fn is_dir(fd: &OwnedFd) -> io::Result<bool> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid descriptor; `st` is written by the call before use.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded and filled `st`.
    let st = unsafe { st.assume_init() };
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

fn owned(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor returned by the kernel, owned by no one
    // else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn cstring(s: &OsStr) -> Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| XferError::BadPath {
        path: s.to_string_lossy().into_owned(),
        reason: "contains a NUL byte",
    })
}

/// A temporary name beside `name` in the same directory (so the rename
/// stays inside one directory).
fn tmp_name(name: &CStr) -> CString {
    let n: u64 = rand::random();
    let base: Vec<u8> = name.to_bytes().iter().copied().take(100).collect();
    let mut v = b".".to_vec();
    v.extend_from_slice(&base);
    v.extend_from_slice(format!(".drift-xfer-{n:016x}.tmp").as_bytes());
    // No NUL inside: `name` came from a CString and the rest is ASCII.
    CString::new(v).unwrap_or_else(|_| c".drift-xfer.tmp".to_owned())
}

/// Renames `tmp` (in `t`'s directory) over `t`'s name; removes `tmp` if
/// that fails.
fn rename_over(dir: &OwnedFd, tmp: &CStr, t: &Target) -> Result<()> {
    // SAFETY: valid descriptors and NUL-terminated names.
    if unsafe { libc::renameat(dir.as_raw_fd(), tmp.as_ptr(), t.dir.as_raw_fd(), t.name.as_ptr()) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // SAFETY: as above.
    unsafe { libc::unlinkat(dir.as_raw_fd(), tmp.as_ptr(), 0) };
    Err(rename_error(e, t))
}

fn rename_error(e: io::Error, t: &Target) -> XferError {
    if matches!(e.raw_os_error(), Some(libc::EISDIR) | Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) {
        XferError::BadPath {
            path: t.path.display().to_string(),
            reason: "a directory of that name is in the way on the receiver",
        }
    } else {
        XferError::io(format!("renaming {} into place", t.path.display()), e)
    }
}

/// Mode and modification time of an entry.
#[derive(Clone, Copy)]
pub struct Attrs {
    pub mode: u32,
    pub mtime: (i64, u32),
}

fn timespec((s, ns): (i64, u32)) -> libc::timespec {
    libc::timespec {
        tv_sec: s as libc::time_t,
        tv_nsec: ns.min(999_999_999) as libc::c_long,
    }
}

/// Gives an open file its mode and modification time (access time left
/// alone), and syncs it when asked; the last steps before it gets a name.
pub fn finish_file(file: &File, attrs: Attrs, fsync: bool, path: &Path) -> Result<()> {
    let ctx = |what: &str| format!("{what} {}", path.display());
    file.set_permissions(std::fs::Permissions::from_mode(attrs.mode & 0o7777))
        .map_err(|e| XferError::io(ctx("setting the mode of"), e))?;
    let omit = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_OMIT,
    };
    let times = [omit, timespec(attrs.mtime)];
    // SAFETY: valid descriptor; `times` points at two timespecs.
    if unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) } != 0 {
        return Err(XferError::io(ctx("setting the time of"), io::Error::last_os_error()));
    }
    if fsync {
        file.sync_all().map_err(|e| XferError::io(ctx("syncing"), e))?;
    }
    Ok(())
}

/// Gives a verified file staged elsewhere on the same filesystem (a large
/// file's part) its mode and time, then its final name.
pub fn place_staged(dirs: &DestDirs, rel: &Path, staged: &Path, file: &File, attrs: Attrs, fsync: bool) -> Result<()> {
    let t = dirs.target(rel)?;
    finish_file(file, attrs, fsync, &t.path)?;
    let from = cstring(staged.as_os_str())?;
    // SAFETY: valid descriptor and NUL-terminated paths.
    if unsafe { libc::renameat(libc::AT_FDCWD, from.as_ptr(), t.dir.as_raw_fd(), t.name.as_ptr()) } == 0 {
        return if fsync { sync_name(&t) } else { Ok(()) };
    }
    Err(rename_error(io::Error::last_os_error(), &t))
}

/// Makes the name a file was just given durable: syncs its directory.
/// (On a journaling filesystem this also commits a parent directory made
/// for it just before.)
fn sync_name(t: &Target) -> Result<()> {
    let fail = |e: io::Error| XferError::io(format!("syncing the directory of {}", t.path.display()), e);
    // The held handle may be an `O_PATH` one, which cannot be synced: open
    // the directory itself through it.
    // SAFETY: valid descriptor and NUL-terminated name.
    let fd = unsafe { libc::openat(t.dir.as_raw_fd(), c".".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    let dir = File::from(owned(fd).map_err(fail)?);
    dir.sync_all().map_err(fail)
}

/// Why a small file was not put in place by [`put_file`]: the inspection
/// hook's refusal, or an error.
pub enum PutError {
    Refused(String),
    Failed(XferError),
}

impl From<XferError> for PutError {
    fn from(e: XferError) -> Self {
        PutError::Failed(e)
    }
}

/// An inspection of a complete staged file at a path: `Err(reason)` refuses it.
pub type Inspect<'a> = &'a dyn Fn(&Path) -> std::result::Result<(), String>;

/// Writes a small, verified file (`content`) under `rel`. `inspect`, when
/// given, sees the complete file at a temporary path before it is named.
pub fn put_file(
    dirs: &DestDirs,
    rel: &Path,
    content: &[u8],
    attrs: Attrs,
    fsync: bool,
    inspect: Option<Inspect<'_>>,
) -> std::result::Result<(), PutError> {
    let t = dirs.target(rel)?;
    let write = |mut f: &File, at: &Path| {
        f.write_all(content)
            .map_err(|e| XferError::io(format!("writing {}", at.display()), e))
    };
    if inspect.is_none() {
        if let Some(file) = dirs.unnamed_file(&t)? {
            write(&file, &t.path)?;
            finish_file(&file, attrs, fsync, &t.path)?;
            dirs.link_into_place(&file, &t)?;
            if fsync {
                sync_name(&t)?;
            }
            return Ok(());
        }
    }
    // A named temporary beside the destination, renamed into place.
    let tmp = tmp_name(&t.name);
    let tmp_path = t.path.with_file_name(OsStr::from_bytes(tmp.to_bytes()));
    // SAFETY: valid descriptor and NUL-terminated name; the descriptor is
    // owned below.
    let fd = unsafe {
        libc::openat(
            t.dir.as_raw_fd(),
            tmp.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    let file = File::from(owned(fd).map_err(|e| XferError::io(format!("creating {}", tmp_path.display()), e))?);
    let result = (|| {
        write(&file, &tmp_path)?;
        if let Some(inspect) = inspect {
            inspect(&tmp_path).map_err(PutError::Refused)?;
        }
        finish_file(&file, attrs, fsync, &t.path)?;
        rename_over(&t.dir, &tmp, &t).map_err(PutError::Failed)?;
        if fsync {
            sync_name(&t)?;
        }
        Ok(())
    })();
    if result.is_err() {
        // SAFETY: valid descriptor and NUL-terminated name. (After a failed
        // rename the temporary is already gone; ENOENT is harmless.)
        unsafe { libc::unlinkat(t.dir.as_raw_fd(), tmp.as_ptr(), 0) };
    }
    result
}

/// Creates a symlink under `rel` (via a temporary name, renamed into
/// place) with its link time set.
pub fn put_symlink(dirs: &DestDirs, rel: &Path, target: &[u8], mtime: (i64, u32)) -> Result<()> {
    let t = dirs.target(rel)?;
    let tmp = tmp_name(&t.name);
    let to = CString::new(target).map_err(|_| XferError::BadPath {
        path: rel.display().to_string(),
        reason: "symlink target contains a NUL byte",
    })?;
    // SAFETY: valid descriptor and NUL-terminated strings.
    if unsafe { libc::symlinkat(to.as_ptr(), t.dir.as_raw_fd(), tmp.as_ptr()) } != 0 {
        return Err(XferError::io(format!("creating symlink {}", rel.display()), io::Error::last_os_error()));
    }
    let times = [timespec(mtime), timespec(mtime)];
    // SAFETY: valid descriptor, NUL-terminated name, two timespecs. A
    // failure only loses the link's time, as before.
    unsafe { libc::utimensat(t.dir.as_raw_fd(), tmp.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    rename_over(&t.dir, &tmp, &t)
}

/// Creates directory `rel` if missing (refusing a symlink or file in its
/// place) and returns its full path, for its mode and time at the end.
pub fn put_dir(dirs: &DestDirs, rel: &Path) -> Result<PathBuf> {
    dirs.dir(rel, rel)?;
    Ok(dirs.root().join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn attrs(mode: u32) -> Attrs {
        Attrs {
            mode,
            mtime: (1_600_000_000, 123_456_789),
        }
    }

    #[test]
    fn files_land_with_mode_and_time_and_replace_old_ones() {
        let d = tempfile::tempdir().unwrap();
        let dirs = DestDirs::new(d.path().to_owned());
        let rel = Path::new("a/b/f");
        if put_file(&dirs, rel, b"one", attrs(0o640), false, None).is_err() {
            panic!("first put failed");
        }
        if put_file(&dirs, rel, b"two!", attrs(0o604), false, None).is_err() {
            panic!("second put failed");
        }
        let p = d.path().join(rel);
        assert_eq!(std::fs::read(&p).unwrap(), b"two!");
        let md = std::fs::metadata(&p).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o604);
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_600_000_000, 123_456_789));
        // Nothing else left behind: no temporaries.
        let names: Vec<_> = std::fs::read_dir(d.path().join("a/b")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![OsStr::new("f").to_owned()]);
    }

    #[test]
    fn a_hook_sees_a_named_complete_file_and_can_refuse_it() {
        let d = tempfile::tempdir().unwrap();
        let dirs = DestDirs::new(d.path().to_owned());
        let seen = std::cell::RefCell::new(Vec::new());
        let refuse = |p: &Path| {
            seen.borrow_mut().push(std::fs::read(p).unwrap());
            Err("no".to_string())
        };
        match put_file(&dirs, Path::new("x"), b"data", attrs(0o644), false, Some(&refuse)) {
            Err(PutError::Refused(why)) => assert_eq!(why, "no"),
            _ => panic!("not refused"),
        }
        assert_eq!(seen.borrow().as_slice(), &[b"data".to_vec()]);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "refused file left behind");
    }

    #[test]
    fn symlinked_or_file_parents_and_directories_in_the_way_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("l")).unwrap();
        std::fs::write(d.path().join("f"), b"").unwrap();
        std::fs::create_dir(d.path().join("dir")).unwrap();
        let dirs = DestDirs::new(d.path().to_owned());
        for rel in ["l/x", "f/x", "dir"] {
            match put_file(&dirs, Path::new(rel), b"x", attrs(0o644), false, None) {
                Err(PutError::Failed(XferError::BadPath { .. })) => {}
                Err(PutError::Failed(e)) => panic!("{rel}: wrong error {e}"),
                _ => panic!("{rel}: accepted"),
            }
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(put_symlink(&dirs, Path::new("dir"), b"t", (1, 0)).is_err());
        put_symlink(&dirs, Path::new("s"), b"../t", (1, 0)).unwrap();
        assert_eq!(std::fs::read_link(d.path().join("s")).unwrap(), Path::new("../t"));
    }
}
