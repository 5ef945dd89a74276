//! Mounting: validating the inputs, starting the FUSE session on
//! background threads, and unmounting cleanly.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};

use crate::fs::DriftFs;
use crate::hints::ContentHints;
use crate::journal::{Change, Journal, JournalError, Op, SyncMode};

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("backing directory {0}: does not exist")]
    BackingMissing(PathBuf),
    #[error("backing directory {0}: not a directory")]
    BackingNotDir(PathBuf),
    #[error("mountpoint {0}: does not exist")]
    MountpointMissing(PathBuf),
    #[error("mountpoint {0}: not a directory")]
    MountpointNotDir(PathBuf),
    #[error("mountpoint {path}: busy ({what} is mounted there; unmount it first)")]
    MountpointBusy { path: PathBuf, what: String },
    #[error("mountpoint {path}: a dead {what} mount (not drift's) is there; unmount it first (umount -l {path})")]
    MountpointDeadForeign { path: PathBuf, what: String },
    #[error("mountpoint {path}: cannot detach the dead drift mount left there")]
    DetachDead { path: PathBuf, #[source] source: std::io::Error },
    #[error(transparent)]
    Device(#[from] crate::fusedev::DeviceError),
    #[error("{what} {inner} lies inside {outer_what} {outer}; they must be apart")]
    Nested { what: &'static str, inner: PathBuf, outer_what: &'static str, outer: PathBuf },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("mounting on {path}")]
    Mount { path: PathBuf, #[source] source: std::io::Error },
    #[error("unmounting {path}")]
    Unmount { path: PathBuf, #[source] source: std::io::Error },
    #[error("{path}")]
    Io { path: PathBuf, #[source] source: std::io::Error },
    #[error("journal directory {path}")]
    JournalDir { path: PathBuf, #[source] source: std::io::Error },
}

/// What to mount where. Build with [`MountConfig::new`] and adjust.
#[derive(Debug, Clone)]
pub struct MountConfig {
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    pub journal: PathBuf,
    pub sync: SyncMode,
    /// Use the kernel's FUSE passthrough when it is available (reads and
    /// writes then bypass the daemon). Falls back silently when not.
    pub passthrough: bool,
    /// FUSE worker threads.
    pub threads: usize,
    /// Let users other than the mounting one use the mount (the kernel
    /// then checks permission bits). Off by default: the node's FTP server
    /// runs as the mounting user and is the mount's only client. When on
    /// and drift runs as root, a new file or directory belongs to the user
    /// who made it (its uid; its gid, or the parent's under a set-group-ID
    /// directory), as on a local filesystem; otherwise new entries belong
    /// to the user running drift.
    pub allow_other: bool,
}

impl MountConfig {
    pub fn new(backing: impl Into<PathBuf>, mountpoint: impl Into<PathBuf>, journal: impl Into<PathBuf>) -> Self {
        MountConfig {
            backing: backing.into(),
            mountpoint: mountpoint.into(),
            journal: journal.into(),
            sync: SyncMode::Normal,
            passthrough: true,
            threads: 4,
            allow_other: false,
        }
    }
}

/// A live mount, served by background threads. Dropping it unmounts.
pub struct Mount {
    session: Option<fuser::BackgroundSession>,
    journal: Arc<Journal>,
    hints: Arc<ContentHints>,
    mountpoint: PathBuf,
}

fn canonical_dir(
    p: &Path,
    missing: fn(PathBuf) -> FsError,
    not_dir: fn(PathBuf) -> FsError,
) -> Result<PathBuf, FsError> {
    let md = std::fs::metadata(p).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => missing(p.to_owned()),
        _ => FsError::Io { path: p.to_owned(), source: e },
    })?;
    if !md.is_dir() {
        return Err(not_dir(p.to_owned()));
    }
    std::fs::canonicalize(p).map_err(|e| FsError::Io { path: p.to_owned(), source: e })
}

/// One line of /proc/self/mountinfo, the fields drift looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountEntry {
    point: Vec<u8>,
    fstype: String,
    source: String,
    /// The super block options (`rw,user_id=0,group_id=0,...`).
    super_opts: String,
}

impl MountEntry {
    /// Mounted by drift, as this user: as root drift mounts with fstype
    /// `fuse` and the source `drift:BACKING`; through fusermount3 the
    /// fstype is `fuse.drift`. The source is any FUSE program's free
    /// choice (`-o fsname=`), so the mount's owner (`user_id=` in the super
    /// block options) must be us too: another user's or program's dead
    /// mount is never detached.
    fn is_drift(&self) -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let owner = format!("user_id={}", unsafe { libc::geteuid() });
        let ours = self.super_opts.split(',').any(|o| o == owner);
        ours && (self.fstype == "fuse.drift" || (self.fstype == "fuse" && self.source.starts_with("drift:")))
    }

    fn describe(&self) -> String {
        format!("a {} filesystem from {}", self.fstype, self.source)
    }
}

/// Parses mountinfo text: "ID PARENT MAJ:MIN ROOT POINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER".
fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let point = unescape_mountinfo(fields.get(4)?);
            let sep = fields.iter().position(|f| *f == "-")?;
            let fstype = String::from_utf8_lossy(&unescape_mountinfo(fields.get(sep + 1)?)).into_owned();
            let source = String::from_utf8_lossy(&unescape_mountinfo(fields.get(sep + 2)?)).into_owned();
            let super_opts = fields.get(sep + 3).map(|o| o.to_string()).unwrap_or_default();
            Some(MountEntry { point, fstype, source, super_opts })
        })
        .collect()
}

/// The mounts on `p` (canonical), bottom first: the last one is what a
/// lookup of `p` sees.
fn mounts_at(p: &Path) -> Vec<MountEntry> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    parse_mountinfo(&info).into_iter().filter(|e| e.point == p.as_os_str().as_encoded_bytes()).collect()
}

/// Is `p` (canonical) a mount point right now?
pub fn is_mountpoint(p: &Path) -> bool {
    !mounts_at(p).is_empty()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Every access to a FUSE mount whose daemon died fails with ENOTCONN.
fn is_dead(p: &Path) -> bool {
    matches!(std::fs::symlink_metadata(p), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN))
}

/// The canonical form of a mountpoint that may be a dead FUSE mount, on
/// which canonicalize itself fails (ENOTCONN): the parent's canonical
/// form plus the name. Other failures are left to [`canonical_dir`],
/// which names them.
fn mountpoint_path(p: &Path) -> Result<PathBuf, FsError> {
    match std::fs::canonicalize(p) {
        Ok(c) => Ok(c),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            let Some(name) = p.file_name() else { return Err(FsError::Io { path: p.to_owned(), source: e }) };
            let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let parent = std::fs::canonicalize(parent).map_err(|source| FsError::Io { path: parent.to_owned(), source })?;
            Ok(parent.join(name))
        }
        Err(_) => Ok(p.to_owned()),
    }
}

/// Detaches the mount on `p` lazily: umount2(MNT_DETACH) as root,
/// `fusermount3 -u -z` otherwise (the setuid helper that mounted it).
fn detach(p: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(err);
    }
    let out = std::process::Command::new("fusermount3").arg("-u").arg("-z").arg(p).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "fusermount3 -u -z failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A process killed while serving a mount (SIGKILL, the OOM killer)
/// leaves its mount behind, dead. A dead drift mount on `p` is detached
/// (with a log line) so that `p` can be mounted again; anything else
/// mounted on `p`, live or dead, is refused.
fn clear_dead_mounts(p: &Path) -> Result<(), FsError> {
    // Several killed runs may have left dead mounts stacked on one name;
    // each pass removes one, and the bound guards against a mount table
    // that does not change.
    for _ in 0..16 {
        let Some(top) = mounts_at(p).pop() else { return Ok(()) };
        if !is_dead(p) {
            return Err(FsError::MountpointBusy { path: p.to_owned(), what: top.describe() });
        }
        if !top.is_drift() {
            return Err(FsError::MountpointDeadForeign { path: p.to_owned(), what: top.fstype });
        }
        detach(p).map_err(|source| FsError::DetachDead { path: p.to_owned(), source })?;
        warn!(mountpoint = %p.display(), source = %top.source, "detached a dead drift mount left by a killed process");
    }
    match mounts_at(p).pop() {
        None => Ok(()),
        Some(top) => Err(FsError::MountpointBusy { path: p.to_owned(), what: top.describe() }),
    }
}

/// A new journal over a backing directory that already holds files
/// starts with entries that create them, so that replaying the journal
/// always reproduces the whole tree, not just what changed after mounting.
fn record_baseline(journal: &Journal, backing: &Path) -> Result<(), FsError> {
    use std::os::unix::fs::MetadataExt;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| FsError::Io { path, source }
    };
    let walked = crate::digest::walk(backing).map_err(io(backing))?;
    if walked.is_empty() {
        return Ok(());
    }
    let mut files = 0u64;
    for w in walked {
        let mode = Some(w.meta.mode() & 0o7777);
        let change = if w.meta.is_dir() {
            Change { mode, ..Change::new(Op::Mkdir, w.rel) }
        } else if w.meta.is_file() {
            let (h, n) = crate::hash::hash_path(&w.full).map_err(io(&w.full))?;
            files += 1;
            Change { size: Some(n), blake3: Some(h.to_hex().to_string()), mode, ..Change::new(Op::Write, w.rel) }
        } else {
            warn!(path = %w.rel, "not a file or directory; left out of the journal baseline");
            continue;
        };
        journal.append(change)?;
    }
    info!(files, entries = journal.last_seq(), "new journal over a non-empty directory: recorded the existing tree as its baseline");
    Ok(())
}

impl Mount {
    /// Validates the configuration, opens (or creates) the journal and
    /// mounts. Returns once the kernel has the mount.
    pub fn spawn(cfg: MountConfig) -> Result<Mount, FsError> {
        let backing = canonical_dir(&cfg.backing, FsError::BackingMissing, FsError::BackingNotDir)?;
        clear_dead_mounts(&mountpoint_path(&cfg.mountpoint)?)?;
        let mountpoint = canonical_dir(&cfg.mountpoint, FsError::MountpointMissing, FsError::MountpointNotDir)?;
        if let Some(top) = mounts_at(&mountpoint).pop() {
            return Err(FsError::MountpointBusy { path: mountpoint, what: top.describe() });
        }
        if mountpoint.starts_with(&backing) {
            return Err(FsError::Nested { what: "mountpoint", inner: mountpoint, outer_what: "backing directory", outer: backing });
        }
        if backing.starts_with(&mountpoint) {
            return Err(FsError::Nested { what: "backing directory", inner: backing, outer_what: "mountpoint", outer: mountpoint });
        }
        // The journal must live outside both trees: inside the mount it
        // would journal itself, inside the backing dir clients could see it.
        let journal_dir = cfg
            .journal
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| std::fs::canonicalize(p).map_err(|e| FsError::JournalDir { path: p.to_owned(), source: e }))
            .transpose()?
            .unwrap_or(std::env::current_dir().map_err(|e| FsError::Io { path: ".".into(), source: e })?);
        for (outer_what, outer) in [("mountpoint", &mountpoint), ("backing directory", &backing)] {
            if journal_dir.starts_with(outer) {
                return Err(FsError::Nested { what: "journal", inner: cfg.journal.clone(), outer_what, outer: outer.clone() });
            }
        }
        // Before the journal is created: a mount that cannot happen must
        // leave nothing behind.
        crate::fusedev::check()?;
        let fresh = !cfg.journal.exists();
        let journal = Arc::new(Journal::create(&cfg.journal, cfg.sync)?);
        if fresh {
            record_baseline(&journal, &backing)?;
        }

        let hints = Arc::new(ContentHints::default());
        let root = crate::at::Root::open(&backing).map_err(|source| FsError::Io { path: backing.clone(), source })?;
        // With others allowed in, new entries belong to whoever made them,
        // as on a local filesystem; only root can give files away.
        let chown_new = cfg.allow_other && unsafe { libc::geteuid() } == 0;
        let fs = DriftFs::new(root, journal.clone(), hints.clone(), cfg.sync, cfg.passthrough, chown_new);
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName(format!("drift:{}", backing.display())),
            fuser::MountOption::Subtype("drift".into()),
            fuser::MountOption::NoDev,
            fuser::MountOption::NoSuid,
        ];
        if cfg.allow_other {
            // Others get in, so the kernel must check permission bits (it
            // costs a GETATTR of the directory per new name).
            config.acl = fuser::SessionACL::All;
            config.mount_options.push(fuser::MountOption::DefaultPermissions);
        }
        config.n_threads = Some(cfg.threads.max(1));
        config.clone_fd = true;
        let session = fuser::spawn_mount(fs, &mountpoint, &config)
            .map_err(|source| FsError::Mount { path: mountpoint.clone(), source })?;
        crate::readahead::match_backing(&mountpoint, &backing);
        info!(backing = %backing.display(), mountpoint = %mountpoint.display(), journal = %cfg.journal.display(), "mounted");
        Ok(Mount { session: Some(session), journal, hints, mountpoint })
    }

    pub fn journal(&self) -> Arc<Journal> {
        self.journal.clone()
    }

    /// Where an in-process writer offers the hashes of files it wrote
    /// (see [`ContentHints`]), sparing the read-back at release.
    pub fn content_hints(&self) -> Arc<ContentHints> {
        self.hints.clone()
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// False once the session has ended (e.g. an external `umount`).
    pub fn is_alive(&self) -> bool {
        self.session.as_ref().is_some_and(|s| !s.guard.is_finished())
    }

    /// Unmounts and waits for the session threads. A busy mount (a shell
    /// sitting in it) is detached lazily rather than left behind.
    pub fn unmount(mut self) -> Result<(), FsError> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<(), FsError> {
        let Some(session) = self.session.take() else { return Ok(()) };
        if session.guard.is_finished() {
            // Unmounted from outside; the session has already ended. Not
            // joined: dropping the session would try to unmount a second
            // time and log a spurious failure; its thread is done already.
            std::mem::forget(session);
            return Ok(());
        }
        match session.umount_and_join() {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
                // Something still sits in the mount (a shell's cwd, an open
                // file). Detach it so the name is free; the kernel finishes
                // the unmount when the last user lets go.
                warn!(mountpoint = %self.mountpoint.display(), "mount is busy; detaching it lazily");
                let c = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes())
                    .map_err(|_| FsError::Unmount { path: self.mountpoint.clone(), source: std::io::Error::from_raw_os_error(libc::EINVAL) })?;
                if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                    return Err(FsError::Unmount { path: self.mountpoint.clone(), source: std::io::Error::last_os_error() });
                }
            }
            Err(err) => return Err(FsError::Unmount { path: self.mountpoint.clone(), source: err }),
        }
        info!(mountpoint = %self.mountpoint.display(), "unmounted");
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            warn!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(line_tail: &str) -> MountEntry {
        let line = format!("36 25 0:32 / /srv/mnt rw,nosuid,nodev shared:1 - {line_tail}");
        parse_mountinfo(&line).pop().expect("one entry")
    }

    #[test]
    fn only_our_own_drift_mounts_count_as_drift() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        let other = me + 1;
        assert!(entry(&format!("fuse drift:/srv/backing rw,user_id={me},group_id=0")).is_drift());
        assert!(entry(&format!("fuse.drift drift:/srv/backing rw,user_id={me},group_id=0")).is_drift());
        // Any FUSE program may call itself "drift:..." (-o fsname=).
        assert!(!entry(&format!("fuse.sshfs drift:x rw,user_id={me},group_id=0")).is_drift());
        assert!(!entry(&format!("fuseblk drift:x rw,user_id={me},group_id=0")).is_drift());
        // Another user's mount is never ours to detach.
        assert!(!entry(&format!("fuse drift:/srv/backing rw,user_id={other},group_id=0")).is_drift());
        assert!(!entry("tmpfs tmpfs rw").is_drift());
        assert_eq!(entry("tmpfs tmpfs rw").point, b"/srv/mnt");
    }
}
