//! The backing tree, reached only relative to a descriptor of its root
//! with the `*at` system calls.
//!
//! Joining the backing directory's absolute path with a path inside the
//! mount would fail with ENAMETOOLONG as soon as the two together pass
//! PATH_MAX, although the mount itself accepts paths up to PATH_MAX: a
//! backing directory with a long path would make deep trees unusable.
//! Relative to the root descriptor, every path the mount accepts works
//! whatever the backing directory's own path is, and no operation ever
//! starts from anything but the backing root. No symbolic link is followed
//! anywhere on a path: the directory holding the last component is opened
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (Linux 5.6+), and
//! the last component itself with `O_NOFOLLOW` / `AT_SYMLINK_NOFOLLOW`. So
//! a link in the backing tree, planted or swapped in during an operation,
//! cannot redirect a change to a file outside it.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

fn last_error<T>() -> io::Result<T> {
    Err(io::Error::last_os_error())
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 { Ok(()) } else { last_error() }
}

/// `rel` as a C string for an `*at` call; the root itself is ".".
fn c(rel: &Path) -> io::Result<CString> {
    let b = rel.as_os_str().as_bytes();
    CString::new(if b.is_empty() { &b"."[..] } else { b }).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// fstat(2) of an open file, as the raw `stat` the FUSE attributes are
/// made from.
pub(crate) fn fstat(f: &impl AsRawFd) -> io::Result<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(f.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// One entry of a directory listing: inode number, `d_type`, name.
pub(crate) struct DirEntry {
    pub ino: u64,
    pub kind: u8,
    pub name: OsString,
}

/// A descriptor of the backing directory's root.
pub(crate) struct Root {
    fd: OwnedFd,
}

impl Root {
    pub(crate) fn open(path: &Path) -> io::Result<Root> {
        let p = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            return last_error();
        }
        Ok(Root { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    fn dirfd(&self) -> libc::c_int {
        self.fd.as_raw_fd()
    }

    /// The descriptor a `parent` result names.
    fn fd_of(&self, dir: &Option<OwnedFd>) -> libc::c_int {
        dir.as_ref().map_or(self.dirfd(), |d| d.as_raw_fd())
    }

    /// The directory holding `rel`'s last component, opened beneath the
    /// root without following any symbolic link (`None`: the root itself),
    /// and that component's name ("." for the root).
    fn parent(&self, rel: &Path) -> io::Result<(Option<OwnedFd>, CString)> {
        let (dir, name) = match (rel.parent(), rel.file_name()) {
            (Some(dir), Some(name)) if !dir.as_os_str().is_empty() => (dir, name),
            _ => return Ok((None, c(rel)?)),
        };
        let d = c(dir)?;
        // SAFETY: open_how is plain data; zero is a valid value of each
        // field, and the three that matter are set below.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
        // SAFETY: a valid directory descriptor, a NUL-terminated path and
        // an open_how of the size passed, as openat2(2) requires.
        let fd = unsafe {
            libc::syscall(libc::SYS_openat2, self.dirfd(), d.as_ptr(), &how as *const libc::open_how, std::mem::size_of::<libc::open_how>())
        };
        if fd < 0 {
            return last_error();
        }
        // SAFETY: openat2 returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        Ok((Some(fd), CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?))
    }

    /// lstat(2) of `rel`.
    pub(crate) fn stat(&self, rel: &Path) -> io::Result<libc::stat> {
        let (dir, p) = self.parent(rel)?;
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        check(unsafe { libc::fstatat(self.fd_of(&dir), p.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
        Ok(st)
    }

    /// open(2) of `rel`; a final symbolic link is refused (ELOOP).
    pub(crate) fn open_file(&self, rel: &Path, flags: i32, mode: u32) -> io::Result<File> {
        let (dir, p) = self.parent(rel)?;
        let fd = unsafe {
            libc::openat(self.fd_of(&dir), p.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NOFOLLOW, mode as libc::c_uint)
        };
        if fd < 0 {
            return last_error();
        }
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    pub(crate) fn mkdir(&self, rel: &Path, mode: u32) -> io::Result<()> {
        let (dir, p) = self.parent(rel)?;
        check(unsafe { libc::mkdirat(self.fd_of(&dir), p.as_ptr(), mode as libc::mode_t) })
    }

    /// unlink(2), or rmdir(2) when `dir`.
    pub(crate) fn remove(&self, rel: &Path, dir: bool) -> io::Result<()> {
        let (parent, p) = self.parent(rel)?;
        check(unsafe { libc::unlinkat(self.fd_of(&parent), p.as_ptr(), if dir { libc::AT_REMOVEDIR } else { 0 }) })
    }

    pub(crate) fn rename(&self, from: &Path, to: &Path, flags: u32) -> io::Result<()> {
        let ((fdir, f), (tdir, t)) = (self.parent(from)?, self.parent(to)?);
        check(unsafe { libc::renameat2(self.fd_of(&fdir), f.as_ptr(), self.fd_of(&tdir), t.as_ptr(), flags) })
    }

    /// chmod(2) of `rel`; a symbolic link is refused (EOPNOTSUPP) rather
    /// than followed.
    pub(crate) fn chmod(&self, rel: &Path, mode: u32) -> io::Result<()> {
        let (dir, p) = self.parent(rel)?;
        check(unsafe { libc::fchmodat(self.fd_of(&dir), p.as_ptr(), mode as libc::mode_t, libc::AT_SYMLINK_NOFOLLOW) })
    }

    /// lchown(2) of `rel`; `None` leaves that id as it is.
    pub(crate) fn chown(&self, rel: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        let (dir, p) = self.parent(rel)?;
        let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
        check(unsafe { libc::fchownat(self.fd_of(&dir), p.as_ptr(), u, g, libc::AT_SYMLINK_NOFOLLOW) })
    }

    pub(crate) fn utimens(&self, rel: &Path, times: &[libc::timespec; 2]) -> io::Result<()> {
        let (dir, p) = self.parent(rel)?;
        check(unsafe { libc::utimensat(self.fd_of(&dir), p.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
    }

    pub(crate) fn readlink(&self, rel: &Path) -> io::Result<Vec<u8>> {
        let (dir, p) = self.parent(rel)?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
        let n = unsafe { libc::readlinkat(self.fd_of(&dir), p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return last_error();
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    /// fsync(2) of the directory `rel`.
    pub(crate) fn sync_dir(&self, rel: &Path) -> io::Result<()> {
        self.open_file(rel, libc::O_RDONLY | libc::O_DIRECTORY, 0)?.sync_all()
    }

    pub(crate) fn statvfs(&self) -> io::Result<libc::statvfs> {
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        check(unsafe { libc::fstatvfs(self.dirfd(), &mut st) })?;
        Ok(st)
    }

    /// The entries of directory `rel`, without "." and "..".
    pub(crate) fn list(&self, rel: &Path) -> io::Result<Vec<DirEntry>> {
        let dir = self.open_file(rel, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        // fdopendir takes over the descriptor; closedir closes it.
        let fd = std::os::fd::IntoRawFd::into_raw_fd(dir);
        let dp = unsafe { libc::fdopendir(fd) };
        if dp.is_null() {
            let e = io::Error::last_os_error();
            unsafe { libc::close(fd) };
            return Err(e);
        }
        let mut out = Vec::new();
        let result = loop {
            // readdir signals the end and errors alike with NULL; errno
            // tells them apart.
            unsafe { *libc::__errno_location() = 0 };
            let ent = unsafe { libc::readdir64(dp) };
            if ent.is_null() {
                let e = io::Error::last_os_error();
                break if e.raw_os_error().unwrap_or(0) == 0 { Ok(()) } else { Err(e) };
            }
            let ent = unsafe { &*ent };
            let name = unsafe { std::ffi::CStr::from_ptr(ent.d_name.as_ptr()) }.to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            out.push(DirEntry { ino: ent.d_ino, kind: ent.d_type, name: OsString::from_vec(name.to_vec()) });
        };
        unsafe { libc::closedir(dp) };
        result.map(|()| out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn works_below_a_root_whose_own_path_is_longer_than_path_max_allows_to_join() {
        // A root path of ~3000 bytes and a relative path of ~3000 bytes:
        // joined they pass PATH_MAX (4096), relative to the root they work.
        let tmp = tempfile::tempdir().unwrap();
        let mut root = tmp.path().to_owned();
        while root.as_os_str().len() < 3000 {
            root.push("r".repeat(200));
            std::fs::create_dir(&root).unwrap();
        }
        let r = Root::open(&root).unwrap();
        let mut rel = std::path::PathBuf::new();
        while rel.as_os_str().len() < 3000 {
            rel.push("d".repeat(200));
            r.mkdir(&rel, 0o755).unwrap();
        }
        let file = rel.join("f");
        assert!(std::fs::metadata(root.join(&file)).is_err(), "the joined path must be too long for this test");
        std::io::Write::write_all(&mut r.open_file(&file, libc::O_CREAT | libc::O_WRONLY, 0o600).unwrap(), b"x").unwrap();
        assert_eq!(r.stat(&file).unwrap().st_size, 1);
        let names: Vec<_> = r.list(&rel).unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, vec![OsString::from("f")]);
        r.rename(&file, &rel.join("g"), 0).unwrap();
        r.chmod(&rel.join("g"), 0o640).unwrap();
        assert_eq!(r.stat(&rel.join("g")).unwrap().st_mode & 0o7777, 0o640);
        r.remove(&rel.join("g"), false).unwrap();
        r.remove(&rel, true).unwrap();
    }

    #[test]
    fn no_symbolic_link_on_the_way_is_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"keep").unwrap();
        // A directory in the tree swapped for a link to a place outside it.
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let r = Root::open(&root).unwrap();
        let via = Path::new("link/victim");
        assert!(r.stat(via).is_err());
        assert!(r.open_file(via, libc::O_RDONLY, 0).is_err());
        assert!(r.chmod(via, 0o777).is_err());
        assert!(r.remove(via, false).is_err());
        assert!(r.mkdir(Path::new("link/new"), 0o755).is_err());
        assert!(r.rename(Path::new("real"), Path::new("link/real"), 0).is_err());
        assert!(r.open_file(Path::new("link/created"), libc::O_CREAT | libc::O_WRONLY, 0o600).is_err());
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1, "something was created outside the root");
        assert!(root.join("real").is_dir());
        // Paths without links still work, nested too.
        r.mkdir(Path::new("real/sub"), 0o755).unwrap();
        r.open_file(Path::new("real/sub/f"), libc::O_CREAT | libc::O_WRONLY, 0o600).unwrap();
        assert_eq!(r.stat(Path::new("real/sub/f")).unwrap().st_size, 0);
    }
}
