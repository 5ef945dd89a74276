//! Applying a journal onto another directory (`drift journal replay`),
//! and packing the content it needs (`drift journal pack`).
//!
//! Replay is idempotent: every step checks what is already there, so a
//! replay interrupted half-way can simply be run again. Writes whose
//! content a later entry in the same range replaces or deletes are skipped:
//! their content is usually gone from the source, and the final tree does
//! not depend on them.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use tracing::debug;

use crate::blobs::{BlobError, BlobStore};
use crate::journal::{Entry, Journal, JournalError, Op};
use crate::model::TreeModel;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("entry {seq} ({op} {path}): {why}")]
    Entry { seq: u64, op: Op, path: String, why: String },
    #[error("entry {seq} ({op} {path})")]
    Blob { seq: u64, op: Op, path: String, #[source] source: BlobError },
    #[error("{path}")]
    Io { path: PathBuf, #[source] source: io::Error },
}

/// Turns a journal path ("/a/b") into a path below `root`, refusing
/// anything that could step outside it (`..`, absolute parts, NUL).
pub fn resolve(root: &Path, jpath: &str) -> Option<PathBuf> {
    if !jpath.starts_with('/') || jpath.contains('\0') {
        return None;
    }
    let rel = Path::new(&jpath[1..]);
    let mut out = root.to_owned();
    let mut any = false;
    for c in rel.components() {
        match c {
            Component::Normal(n) => {
                out.push(n);
                any = true;
            }
            Component::CurDir => {}
            _ => return None,
        }
    }
    any.then_some(out)
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub applied: u64,
    /// Writes skipped because a later entry replaces or deletes them.
    pub superseded: u64,
    pub last_seq: Option<u64>,
}

/// Applies entries with `from <= seq <= until` onto `dest`.
pub fn replay(journal: &Journal, blobs: &BlobStore, dest: &Path, from: u64, until: Option<u64>) -> Result<ReplayReport, ReplayError> {
    let entries: Vec<Entry> = journal
        .list(from.saturating_sub(1), None)?
        .into_iter()
        .filter(|e| until.is_none_or(|u| e.seq <= u))
        .collect();
    replay_entries(&entries, blobs, dest)
}

/// Applies `entries` (in order) onto `dest`.
pub fn replay_entries(entries: &[Entry], blobs: &BlobStore, dest: &Path) -> Result<ReplayReport, ReplayError> {
    let live = TreeModel::from_entries(entries).live_writes();
    let mut report = ReplayReport::default();
    for e in entries {
        if e.op == Op::Write && !live.contains(&e.seq) {
            debug!(seq = e.seq, path = %e.path, "write superseded later in the range; skipped");
            report.superseded += 1;
            continue;
        }
        apply(e, blobs, dest)?;
        report.applied += 1;
        report.last_seq = Some(e.seq);
    }
    Ok(report)
}

fn apply(e: &Entry, blobs: &BlobStore, dest: &Path) -> Result<(), ReplayError> {
    let bad = |why: String| ReplayError::Entry { seq: e.seq, op: e.op, path: e.path.clone(), why };
    let io = |what: &str, err: io::Error| bad(format!("{what}: {err}"));
    let target = resolve(dest, &e.path).ok_or_else(|| bad("path escapes the destination or is malformed".into()))?;
    match e.op {
        Op::Mkdir => {
            std::fs::create_dir_all(&target).map_err(|err| io("mkdir", err))?;
            if let Some(mode) = e.mode {
                set_mode(&target, mode).map_err(|err| io("chmod", err))?;
            }
        }
        Op::Rmdir => match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io("rmdir", err)),
        },
        Op::Unlink => match std::fs::remove_file(&target) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io("unlink", err)),
        },
        Op::Rename => {
            let to = e.to.as_deref().ok_or_else(|| bad("rename without `to`".into()))?;
            let to = resolve(dest, to).ok_or_else(|| bad("`to` escapes the destination or is malformed".into()))?;
            if std::fs::symlink_metadata(&target).is_err() {
                // Already applied, or the source was never shipped (a file
                // renamed while being written): later entries bring it.
                return Ok(());
            }
            if let Some(p) = to.parent() {
                std::fs::create_dir_all(p).map_err(|err| io("mkdir parent", err))?;
            }
            match std::fs::rename(&target, &to) {
                Ok(()) => {}
                // A second replay re-creates a directory that was later
                // renamed onto one that already holds its content: merge.
                Err(err) if err.raw_os_error() == Some(libc::ENOTEMPTY) || err.raw_os_error() == Some(libc::EEXIST) => {
                    merge_dir(&target, &to).map_err(|err| io("rename (merge)", err))?
                }
                Err(err) => return Err(io("rename", err)),
            }
        }
        Op::Write => {
            let hash = e.blake3.as_deref().ok_or_else(|| bad("write without blake3".into()))?;
            let parent = target.parent().unwrap_or(dest);
            std::fs::create_dir_all(parent).map_err(|err| io("mkdir parent", err))?;
            let tmp = blobs.fetch_into(hash, parent).map_err(|source| ReplayError::Blob {
                seq: e.seq,
                op: e.op,
                path: e.path.clone(),
                source,
            })?;
            if let Some(mode) = e.mode {
                tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode)).map_err(|err| io("chmod", err))?;
            }
            tmp.persist(&target).map_err(|err| io("rename into place", err.error))?;
        }
        Op::Attr => {
            if std::fs::symlink_metadata(&target).is_err() {
                return Ok(());
            }
            if let Some(mode) = e.mode {
                set_mode(&target, mode).map_err(|err| io("chmod", err))?;
            }
            if let Some(mtime) = e.mtime {
                let t = std::time::SystemTime::UNIX_EPOCH
                    + std::time::Duration::from_nanos(mtime.unix_timestamp_nanos().max(0) as u64);
                let f = std::fs::File::options().write(true).open(&target).or_else(|_| std::fs::File::open(&target));
                f.and_then(|f| f.set_modified(t)).map_err(|err| io("set mtime", err))?;
            }
        }
    }
    Ok(())
}

/// Moves everything in `src` into the existing directory `dst`, replacing
/// what is there, then removes `src`.
fn merge_dir(src: &Path, dst: &Path) -> io::Result<()> {
    for ent in std::fs::read_dir(src)? {
        let ent = ent?;
        let (from, to) = (ent.path(), dst.join(ent.file_name()));
        let both_dirs = ent.file_type()?.is_dir() && std::fs::symlink_metadata(&to).map(|m| m.is_dir()).unwrap_or(false);
        if both_dirs {
            merge_dir(&from, &to)?;
        } else {
            std::fs::rename(&from, &to)?;
        }
    }
    std::fs::remove_dir(src)
}

fn set_mode(p: &Path, mode: u32) -> io::Result<()> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode & 0o7777))
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PackReport {
    /// Blobs copied into the store now.
    pub packed: u64,
    pub bytes: u64,
    /// Blobs the store already had.
    pub present: u64,
    /// Files whose content on disk no longer matches their last journal
    /// entry (changed outside the journal, or still being written).
    pub changed: Vec<String>,
    /// Files the journal says exist but the backing tree lacks.
    pub missing: Vec<String>,
}

/// Copies the content of every file the journal says exists, and whose
/// backing file still has that content, into the blob store.
pub fn pack(journal: &Journal, backing: &Path, blobs: &BlobStore) -> Result<PackReport, ReplayError> {
    let entries = journal.list(0, None)?;
    let model = TreeModel::from_entries(&entries);
    let mut report = PackReport::default();
    for (path, f) in &model.files {
        if blobs.contains(&f.blake3) {
            report.present += 1;
            continue;
        }
        let Some(src) = resolve(backing, path) else {
            report.missing.push(path.clone());
            continue;
        };
        match blobs.put_file(&src, &f.blake3) {
            Ok(n) => {
                report.packed += 1;
                report.bytes += n;
            }
            Err(BlobError::Changed { .. }) => report.changed.push(path.clone()),
            Err(BlobError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => report.missing.push(path.clone()),
            Err(source) => {
                return Err(ReplayError::Blob { seq: f.seq, op: Op::Write, path: path.clone(), source })
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_refuses_escapes() {
        let root = Path::new("/r");
        assert_eq!(resolve(root, "/a/b"), Some(PathBuf::from("/r/a/b")));
        assert_eq!(resolve(root, "/a/../../etc"), None);
        assert_eq!(resolve(root, "a"), None);
        assert_eq!(resolve(root, "/"), None);
        assert_eq!(resolve(root, "/a\0b"), None);
    }
}
