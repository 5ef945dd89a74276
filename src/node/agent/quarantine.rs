//! Quarantine: what a node journaled beyond the guide's history (changes
//! never acknowledged by the cluster) is moved out of the served tree,
//! with a report, before the node starts again from the guide's copy.
//! Nothing is merged and nothing is deleted silently.
//!
//! Layout: `<state_dir>/quarantine/<UTC time>-from-<q>/report.json` and
//! `files/<path>` (each file an entry names, as it is in the backing tree).

use std::path::{Path, PathBuf};

use drift_fs::{Entry, Journal, Op};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error("quarantine: cannot read the journal: {0}")]
    Journal(#[from] drift_fs::JournalError),
    #[error("quarantine: {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> QuarantineError + '_ {
    move |source| QuarantineError::Io { path: path.to_owned(), source }
}

#[derive(Debug, Serialize)]
pub struct ReportEntry {
    pub seq: u64,
    pub op: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub node: String,
    pub epoch: u64,
    pub from_seq: u64,
    pub at: String,
    pub entries: Vec<ReportEntry>,
    /// Files copied under `files/` (journal paths).
    pub files: Vec<String>,
}

/// The quarantine directory names under `state_dir` (for heartbeats).
pub fn list(state_dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(state_dir.join("quarantine"))
        .map(|rd| rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Moves entries `from..` of `journal` and the files they name in
/// `backing` into a new quarantine directory; returns it and its report.
/// Touches neither the journal nor the tree (see [`wipe`]).
pub fn quarantine_from(journal: &Journal, backing: &Path, state_dir: &Path, node: &str, epoch: u64, from: u64) -> Result<(PathBuf, Report), QuarantineError> {
    let entries: Vec<Entry> = journal.list(from.saturating_sub(1), None)?;
    let now = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    );
    let dir = state_dir.join("quarantine").join(format!("{stamp}-from-{from}"));
    let files_dir = dir.join("files");
    std::fs::create_dir_all(&files_dir).map_err(io(&files_dir))?;
    let mut copied = Vec::new();
    for e in &entries {
        // The names whose content this entry made: a write's path, a rename's target.
        let named = match e.op {
            Op::Write | Op::Attr => Some(e.path.as_str()),
            Op::Rename => e.to.as_deref(),
            _ => None,
        };
        let Some(jpath) = named else { continue };
        if copied.iter().any(|c: &String| c == jpath) {
            continue;
        }
        let (Some(src), Some(dst)) = (drift_fs::replay::resolve(backing, jpath), drift_fs::replay::resolve(&files_dir, jpath)) else {
            continue;
        };
        match copy_tree(&src, &dst) {
            Ok(true) => copied.push(jpath.to_owned()),
            Ok(false) => {}
            Err(err) => return Err(QuarantineError::Io { path: src, source: err }),
        }
    }
    let report = Report {
        node: node.to_owned(),
        epoch,
        from_seq: from,
        at: drift_fs::journal::format_time(now),
        entries: entries
            .iter()
            .map(|e| ReportEntry {
                seq: e.seq,
                op: e.op.as_str().to_owned(),
                path: e.path.clone(),
                to: e.to.clone(),
                size: e.size,
                blake3: e.blake3.clone(),
            })
            .collect(),
        files: copied,
    };
    let json = serde_json::to_vec_pretty(&report).unwrap_or_default();
    let rp = dir.join("report.json");
    super::persist::write_atomic(&rp, &json).map_err(|e| QuarantineError::Io { path: rp, source: e.source })?;
    Ok((dir, report))
}

/// Copies a file, or a directory tree, from `src` to `dst`; `false` if
/// `src` does not exist (any more). Symlinks are not followed.
fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<bool> {
    let md = match std::fs::symlink_metadata(src) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if let Some(p) = dst.parent() {
        std::fs::create_dir_all(p)?;
    }
    if md.is_file() {
        std::fs::copy(src, dst)?;
        Ok(true)
    } else if md.is_dir() {
        std::fs::create_dir_all(dst)?;
        // Bounded by the tree's size; no link is followed.
        for ent in std::fs::read_dir(src)? {
            let ent = ent?;
            copy_tree(&ent.path(), &dst.join(ent.file_name()))?;
        }
        Ok(true)
    } else {
        Ok(false)
    }
}

/// Empties the backing tree and the journal, after a quarantine: the node
/// then catches up from the guide's history. Directories in `keep`
/// (relative paths: the user homes, part of the initial state) and their
/// parents stay, emptied, so they never vanish while the tree is rebuilt.
///
/// What goes is first renamed into a directory beside the backing
/// directory (one rename per top-level name, so the tree empties at once
/// for anyone walking it) and deleted from there; where that directory
/// cannot be made (another filesystem, no permission) it is deleted in place.
pub fn wipe(journal: &Journal, backing: &Path, keep: &[PathBuf]) -> Result<u64, QuarantineError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = backing.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let trash = backing.parent().map(|p| p.join(format!(".{name}.wipe-{}-{n}", std::process::id())));
    let trash = trash.filter(|t| std::fs::create_dir(t).is_ok());
    empty_dir(backing, Path::new(""), keep, trash.as_deref())?;
    if let Some(t) = trash {
        std::fs::remove_dir_all(&t).map_err(io(&t))?;
    }
    Ok(journal.truncate_after(0)?)
}

fn empty_dir(dir: &Path, rel: &Path, keep: &[PathBuf], trash: Option<&Path>) -> Result<(), QuarantineError> {
    for ent in std::fs::read_dir(dir).map_err(io(dir))? {
        let ent = ent.map_err(io(dir))?;
        let (p, r) = (ent.path(), rel.join(ent.file_name()));
        let is_dir = ent.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir && keep.iter().any(|k| k.starts_with(&r)) {
            if keep.contains(&r) {
                // A home: swapped for an empty one in two steps.
                if let Some(t) = trash {
                    let aside = t.join(format!("home-{}", r.to_string_lossy().replace('/', "%")));
                    if std::fs::rename(&p, &aside).is_ok() {
                        std::fs::create_dir(&p).map_err(io(&p))?;
                    }
                }
            }
            // Bounded by the depth of the homes.
            empty_dir(&p, &r, keep, trash)?;
            continue;
        }
        if let Some(t) = trash {
            let aside = t.join(format!("{}-{}", r.to_string_lossy().replace('/', "%"), t.read_dir().map(|d| d.count()).unwrap_or(0)));
            if std::fs::rename(&p, &aside).is_ok() {
                continue;
            }
        }
        let removed = if is_dir { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        removed.map_err(io(&p))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use drift_fs::{Change, SyncMode};

    #[test]
    fn the_report_names_every_entry_and_copies_the_files() {
        let d = tempfile::tempdir().unwrap();
        let backing = d.path().join("backing");
        std::fs::create_dir_all(backing.join("alice")).unwrap();
        std::fs::write(backing.join("alice/kept.bin"), b"acked").unwrap();
        std::fs::write(backing.join("alice/new.bin"), b"never acknowledged").unwrap();
        std::fs::write(backing.join("alice/moved.bin"), b"moved").unwrap();
        let j = Journal::create(&d.path().join("journal.db"), SyncMode::Normal).unwrap();
        let w = |p: &str, b: &[u8]| Change {
            size: Some(b.len() as u64),
            blake3: Some(blake3::hash(b).to_hex().to_string()),
            ..Change::new(Op::Write, p)
        };
        j.append(w("/alice/kept.bin", b"acked")).unwrap();
        j.append(w("/alice/new.bin", b"never acknowledged")).unwrap();
        j.append(w("/alice/old.bin", b"moved")).unwrap();
        j.append(Change { to: Some("/alice/moved.bin".into()), ..Change::new(Op::Rename, "/alice/old.bin") }).unwrap();
        let state = d.path().join("state");
        let (dir, report) = quarantine_from(&j, &backing, &state, "n1", 3, 2).unwrap();
        assert!(dir.file_name().unwrap().to_str().unwrap().ends_with("-from-2"));
        assert_eq!(report.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3, 4]);
        let text = std::fs::read_to_string(dir.join("report.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["node"], "n1");
        assert_eq!(v["epoch"], 3);
        assert_eq!(v["entries"][0]["path"], "/alice/new.bin");
        assert_eq!(v["entries"][0]["blake3"], blake3::hash(b"never acknowledged").to_hex().as_str());
        assert_eq!(v["entries"][2]["to"], "/alice/moved.bin");
        assert_eq!(std::fs::read(dir.join("files/alice/new.bin")).unwrap(), b"never acknowledged");
        assert_eq!(std::fs::read(dir.join("files/alice/moved.bin")).unwrap(), b"moved");
        assert!(!dir.join("files/alice/kept.bin").exists(), "acknowledged files are not quarantined");
        assert_eq!(list(&state).len(), 1);
        std::fs::create_dir_all(backing.join("other/x")).unwrap();
        assert_eq!(wipe(&j, &backing, &[PathBuf::from("alice")]).unwrap(), 4);
        assert_eq!(j.last_seq(), 0);
        let left: Vec<_> = std::fs::read_dir(&backing).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["alice"], "only the (emptied) home stays");
        assert_eq!(std::fs::read_dir(backing.join("alice")).unwrap().count(), 0);
        let beside: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(!beside.iter().any(|n| n.contains("wipe")), "the aside directory is gone: {beside:?}");
    }
}
