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
    #[error("{dest} holds a replay of another journal (id {theirs}, up to seq {seq}), not of this one (id {ours}); replaying would mix two trees, so nothing was changed; replay into an empty directory instead")]
    OtherJournal { dest: PathBuf, theirs: String, seq: u64, ours: String },
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
    /// Entries skipped because an earlier replay of this journal onto the
    /// same directory already applied them.
    pub already: u64,
    pub last_seq: Option<u64>,
}

/// Extended attribute on the destination directory recording how far a
/// replay got: "JOURNAL-ID SEQ". It is what makes a second replay (or one
/// resumed after an interruption) pick up where the first stopped instead
/// of re-applying old renames onto a newer tree. Attributes are not part
/// of the tree's content, so digests are unaffected.
const MARKER: &str = "user.drift.replayed";

fn read_marker(dest: &Path) -> Option<(String, u64)> {
    let c = std::ffi::CString::new(dest.as_os_str().as_encoded_bytes()).ok()?;
    let name = std::ffi::CString::new(MARKER).ok()?;
    let mut buf = [0u8; 128];
    let n = unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return None;
    }
    let text = std::str::from_utf8(&buf[..n as usize]).ok()?;
    let (id, seq) = text.split_once(' ')?;
    Some((id.to_owned(), seq.parse().ok()?))
}

fn write_marker(dest: &Path, id: &str, seq: u64) -> io::Result<()> {
    let c = std::ffi::CString::new(dest.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let name = std::ffi::CString::new(MARKER).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let value = format!("{id} {seq}");
    let r = unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Applies entries with `from <= seq <= until` onto `dest`, skipping
/// those an earlier replay of the same journal onto `dest` applied.
pub fn replay(journal: &Journal, blobs: &BlobStore, dest: &Path, from: u64, until: Option<u64>) -> Result<ReplayReport, ReplayError> {
    let id = journal.id()?;
    let done = match read_marker(dest) {
        Some((marker_id, seq)) if marker_id == id => seq,
        Some((theirs, seq)) => {
            return Err(ReplayError::OtherJournal { dest: dest.to_owned(), theirs, seq, ours: id });
        }
        None => 0,
    };
    let mut already = 0;
    let entries: Vec<Entry> = journal
        .list(from.saturating_sub(1), None)?
        .into_iter()
        .filter(|e| until.is_none_or(|u| e.seq <= u))
        .filter(|e| {
            let new = e.seq > done;
            already += u64::from(!new);
            new
        })
        .collect();
    let mut marker_ok = true;
    let mut report = replay_entries(&entries, blobs, dest, |seq| {
        if marker_ok {
            if let Err(e) = write_marker(dest, &id, seq) {
                tracing::warn!("cannot record replay progress on {} ({e}); a second replay will re-apply entries", dest.display());
                marker_ok = false;
            }
        }
    })?;
    report.already = already;
    Ok(report)
}

/// Applies `entries` (in order) onto `dest`, calling `progress` with each
/// entry's seq once it is applied (or skipped as superseded).
pub fn replay_entries(entries: &[Entry], blobs: &BlobStore, dest: &Path, progress: impl FnMut(u64)) -> Result<ReplayReport, ReplayError> {
    replay_entries_skipping(entries, blobs, dest, |_| false, progress)
}

/// [`replay_entries`], also skipping the `write` entries for which `absent`
/// says the content is gone from the store: content that a later entry
/// (beyond this range) overwrites or removes, so no blob was kept for it.
pub fn replay_entries_skipping(
    entries: &[Entry],
    blobs: &BlobStore,
    dest: &Path,
    absent: impl Fn(u64) -> bool,
    mut progress: impl FnMut(u64),
) -> Result<ReplayReport, ReplayError> {
    let live = TreeModel::from_entries(entries).live_writes();
    let mut report = ReplayReport::default();
    for e in entries {
        if e.op == Op::Write && (!live.contains(&e.seq) || absent(e.seq)) {
            debug!(seq = e.seq, path = %e.path, "write superseded later in the range; skipped");
            report.superseded += 1;
        } else {
            apply(e, blobs, dest)?;
            report.applied += 1;
        }
        report.last_seq = Some(e.seq);
        progress(e.seq);
    }
    Ok(report)
}

fn apply(e: &Entry, blobs: &BlobStore, dest: &Path) -> Result<(), ReplayError> {
    let bad = |why: String| ReplayError::Entry { seq: e.seq, op: e.op, path: e.path.clone(), why };
    let io = |what: &str, err: io::Error| bad(format!("{what}: {err}"));
    let target = resolve(dest, &e.path).ok_or_else(|| bad("path escapes the destination or is malformed".into()))?;
    match e.op {
        Op::Mkdir => {
            clear_other_type(&target, true).map_err(|err| io("mkdir", err))?;
            std::fs::create_dir_all(&target).map_err(|err| io("mkdir", err))?;
            if let Some(mode) = e.mode {
                set_mode(&target, mode).map_err(|err| io("chmod", err))?;
            }
        }
        Op::Rmdir => match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            // The directory was empty when it was removed; what it holds
            // now came from later entries of an earlier replay, and those
            // entries bring it back. (Replay owns its destination.)
            Err(err) if err.raw_os_error() == Some(libc::ENOTEMPTY) => {
                std::fs::remove_dir_all(&target).map_err(|err| io("rmdir (re-replay)", err))?
            }
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
            let src_is_dir = std::fs::symlink_metadata(&target).map(|m| m.is_dir()).unwrap_or(false);
            clear_other_type(&to, src_is_dir).map_err(|err| io("rename", err))?;
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
            clear_other_type(&target, false).map_err(|err| io("write", err))?;
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

/// On a second replay a path may hold what later entries put there, of
/// another type (a file where a directory is about to be made). Later
/// entries bring it back, so it goes.
fn clear_other_type(p: &Path, want_dir: bool) -> io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() && !want_dir => std::fs::remove_dir_all(p),
        Ok(md) if !md.is_dir() && want_dir => std::fs::remove_file(p),
        _ => Ok(()),
    }
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

#[cfg(test)]
mod prop {
    //! Random histories applied to a real directory, journaled as the
    //! filesystem would: pack + replay must rebuild the same tree, twice.
    use super::*;
    use crate::journal::{Change, SyncMode};
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Write(usize, u8),
        Mkdir(usize),
        Rmdir(usize),
        Unlink(usize),
        Rename(usize, usize),
    }

    const DIRS: [&str; 4] = ["/a", "/a/b", "/c", "/a/b/d"];
    const FILES: [&str; 8] = ["/f", "/a/f", "/a/g", "/a/b/f", "/c/f", "/c/g", "/a/b/d/f", "/g"];

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..FILES.len(), any::<u8>()).prop_map(|(f, b)| Step::Write(f, b)),
            (0..DIRS.len()).prop_map(Step::Mkdir),
            (0..DIRS.len()).prop_map(Step::Rmdir),
            (0..FILES.len()).prop_map(Step::Unlink),
            (0..DIRS.len() + FILES.len(), 0..DIRS.len() + FILES.len()).prop_map(|(a, b)| Step::Rename(a, b)),
        ]
    }

    fn name(i: usize) -> &'static str {
        if i < DIRS.len() { DIRS[i] } else { FILES[i - DIRS.len()] }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn pack_and_replay_rebuild_any_history(steps in proptest::collection::vec(step(), 1..40)) {
            let tmp = tempfile::tempdir().unwrap();
            let src = tmp.path().join("src");
            std::fs::create_dir(&src).unwrap();
            let j = Journal::create(&tmp.path().join("j.db"), SyncMode::Normal).unwrap();
            let at = |p: &str| resolve(&src, p).unwrap();
            for s in &steps {
                let change = match *s {
                    Step::Write(f, b) => {
                        let data = vec![b; b as usize * 7];
                        std::fs::write(at(FILES[f]), &data).ok().map(|()| Change {
                            size: Some(data.len() as u64),
                            blake3: Some(blake3::hash(&data).to_hex().to_string()),
                            ..Change::new(Op::Write, FILES[f])
                        })
                    }
                    Step::Mkdir(d) => std::fs::create_dir(at(DIRS[d])).ok().map(|()| Change::new(Op::Mkdir, DIRS[d])),
                    Step::Rmdir(d) => std::fs::remove_dir(at(DIRS[d])).ok().map(|()| Change::new(Op::Rmdir, DIRS[d])),
                    Step::Unlink(f) => std::fs::remove_file(at(FILES[f])).ok().map(|()| Change::new(Op::Unlink, FILES[f])),
                    Step::Rename(a, b) => {
                        let (from, to) = (name(a), name(b));
                        (from != to && !to.starts_with(&format!("{from}/")))
                            .then(|| std::fs::rename(at(from), at(to)).ok())
                            .flatten()
                            .map(|()| Change { to: Some(to.into()), ..Change::new(Op::Rename, from) })
                    }
                };
                if let Some(c) = change {
                    j.append(c).unwrap();
                }
            }
            let store = BlobStore::open(&tmp.path().join("blobs")).unwrap();
            let packed = pack(&j, &src, &store).unwrap();
            prop_assert!(packed.changed.is_empty() && packed.missing.is_empty(), "{packed:?}");
            let want = crate::digest::digest_tree(&src).unwrap().digest;
            let dest = tmp.path().join("dest");
            std::fs::create_dir(&dest).unwrap();
            replay(&j, &store, &dest, 1, None).unwrap();
            prop_assert_eq!(&crate::digest::digest_tree(&dest).unwrap().digest, &want);
            let again = replay(&j, &store, &dest, 1, None).unwrap();
            prop_assert_eq!(again.applied, 0);
            prop_assert_eq!(&crate::digest::digest_tree(&dest).unwrap().digest, &want);
            // Interrupted half-way, then run again from the start.
            let half = tmp.path().join("half");
            std::fs::create_dir(&half).unwrap();
            let n = j.last_seq();
            if let Err(e) = replay(&j, &store, &half, 1, Some(n / 2)) {
                // Only a blob superseded after the cut may be missing.
                prop_assert!(matches!(e, ReplayError::Blob { .. }), "{e}");
            }
            replay(&j, &store, &half, 1, None).unwrap();
            prop_assert_eq!(&crate::digest::digest_tree(&half).unwrap().digest, &want);
            prop_assert_eq!(&crate::digest::digest_tree(&dest).unwrap().digest, &want);
            prop_assert!(crate::verify::verify(&j, &dest).unwrap().is_empty());
        }
    }
}
