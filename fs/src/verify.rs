//! Comparing a backing tree with what its journal says it should hold.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Serialize;

use crate::journal::{Journal, JournalError};
use crate::model::TreeModel;

/// One way the backing tree differs from the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "divergence", rename_all = "snake_case")]
pub enum Divergence {
    /// The journal says this file exists; the tree lacks it.
    MissingFile { path: String, seq: u64 },
    /// The journal says this directory exists; the tree lacks it.
    MissingDir { path: String },
    /// The file's content is not what its last `write` entry recorded.
    ContentDiffers { path: String, seq: u64, journal_size: u64, journal_blake3: String, disk_size: u64, disk_blake3: String },
    /// The journal says file, the tree has something else (or vice versa).
    TypeDiffers { path: String, journal: &'static str, disk: &'static str },
    /// Present in the tree, never journaled (made outside the mount, or
    /// still open for writing when the journal was read).
    NotJournaled { path: String, kind: &'static str },
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Divergence::MissingFile { path, seq } => write!(f, "{path}: missing (journal entry {seq} wrote it)"),
            Divergence::MissingDir { path } => write!(f, "{path}/: missing directory"),
            Divergence::ContentDiffers { path, seq, journal_size, journal_blake3, disk_size, disk_blake3 } => write!(
                f,
                "{path}: content differs: entry {seq} says {journal_size} bytes {}, disk has {disk_size} bytes {} \
                 (written outside the mount, or still open when the mount died)",
                &journal_blake3[..16.min(journal_blake3.len())],
                &disk_blake3[..16]
            ),
            Divergence::TypeDiffers { path, journal, disk } => write!(f, "{path}: journal says {journal}, disk has {disk}"),
            Divergence::NotJournaled { path, kind } => write!(f, "{path}: {kind} not in the journal (made outside the mount, or never closed)"),
        }
    }
}

fn kind_of(md: &std::fs::Metadata) -> &'static str {
    let ft = md.file_type();
    if ft.is_dir() { "directory" } else if ft.is_file() { "file" } else if ft.is_symlink() { "symlink" } else { "special file" }
}

/// Every divergence between `backing` and the tree `journal` describes.
pub fn verify(journal: &Journal, backing: &Path) -> Result<Vec<Divergence>, VerifyError> {
    let model = TreeModel::from_entries(&journal.list(0, None)?);
    let mut out = Vec::new();
    let walked = crate::digest::walk(backing).map_err(|source| VerifyError::Io { path: backing.to_owned(), source })?;
    let mut on_disk = std::collections::BTreeMap::new();
    for w in walked {
        on_disk.insert(w.rel.clone(), w);
    }
    for (path, f) in &model.files {
        match on_disk.get(path) {
            None => out.push(Divergence::MissingFile { path: path.clone(), seq: f.seq }),
            Some(w) if !w.meta.is_file() => out.push(Divergence::TypeDiffers { path: path.clone(), journal: "file", disk: kind_of(&w.meta) }),
            Some(w) => {
                let (h, n) = crate::hash::hash_path(&w.full).map_err(|source| VerifyError::Io { path: w.full.clone(), source })?;
                if h.to_hex().as_str() != f.blake3 || n != f.size {
                    out.push(Divergence::ContentDiffers {
                        path: path.clone(),
                        seq: f.seq,
                        journal_size: f.size,
                        journal_blake3: f.blake3.clone(),
                        disk_size: w.meta.size(),
                        disk_blake3: h.to_hex().to_string(),
                    });
                }
            }
        }
    }
    for path in model.dirs.keys() {
        match on_disk.get(path) {
            None => out.push(Divergence::MissingDir { path: path.clone() }),
            Some(w) if !w.meta.is_dir() => out.push(Divergence::TypeDiffers { path: path.clone(), journal: "directory", disk: kind_of(&w.meta) }),
            Some(_) => {}
        }
    }
    for (path, w) in &on_disk {
        if !model.files.contains_key(path) && !model.dirs.contains_key(path) {
            out.push(Divergence::NotJournaled { path: path.clone(), kind: kind_of(&w.meta) });
        }
    }
    out.sort_by(|a, b| sort_key(a).cmp(sort_key(b)));
    Ok(out)
}

fn sort_key(d: &Divergence) -> &str {
    match d {
        Divergence::MissingFile { path, .. }
        | Divergence::MissingDir { path }
        | Divergence::ContentDiffers { path, .. }
        | Divergence::TypeDiffers { path, .. }
        | Divergence::NotJournaled { path, .. } => path,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{path}")]
    Io { path: std::path::PathBuf, #[source] source: std::io::Error },
}
