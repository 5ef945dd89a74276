//! One BLAKE3 digest of a whole directory tree, for comparing trees.
//!
//! The digest covers every path below the root (sorted bytewise), its
//! type, and for files their size and content hash, for symlinks their
//! target. Times, owners and modes are left out, so two copies of the same
//! content made at different times on different machines compare equal.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// One entry of a tree walk: its path relative to the root (as the
/// journal spells it, "/a/b") and its metadata (not following symlinks).
#[derive(Debug)]
pub struct Walked {
    pub rel: String,
    pub full: PathBuf,
    pub meta: std::fs::Metadata,
}

/// Every entry below `root`, depth first, sorted bytewise by path.
/// Symlinks are listed, never followed. An entry removed while the walk
/// runs (a temporary file of a live tree) is left out rather than failing
/// the walk; the root itself must exist.
pub fn walk(root: &Path) -> io::Result<Vec<Walked>> {
    let mut out = Vec::new();
    walk_into(root, String::new(), &mut out)?;
    Ok(out)
}

fn walk_into(dir: &Path, prefix: String, out: &mut Vec<Walked>) -> io::Result<()> {
    let listing = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && !prefix.is_empty() => return Ok(()),
        r => r?,
    };
    let mut names: Vec<_> = listing.map(|e| e.map(|e| e.file_name())).collect::<io::Result<_>>()?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let full = dir.join(&name);
        let meta = match std::fs::symlink_metadata(&full) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            r => r?,
        };
        let rel = format!("{prefix}/{}", name.to_string_lossy());
        let is_dir = meta.is_dir();
        out.push(Walked { rel: rel.clone(), full: full.clone(), meta });
        if is_dir {
            walk_into(&full, rel, out)?;
        }
    }
    Ok(())
}

/// Per-entry detail for `drift digest --json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DigestEntry {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TreeDigest {
    pub digest: String,
    pub entries: Vec<DigestEntry>,
}

/// Digest of the tree at `root` (which must be a directory).
pub fn digest_tree(root: &Path) -> io::Result<TreeDigest> {
    if !std::fs::metadata(root)?.is_dir() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a directory", root.display())));
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"drift-digest-v1\n");
    let mut entries = Vec::new();
    for w in walk(root)? {
        let ft = w.meta.file_type();
        let e = if ft.is_dir() {
            DigestEntry { path: w.rel, kind: "dir", size: None, blake3: None, target: None }
        } else if ft.is_file() {
            let (h, n) = match crate::hash::hash_path(&w.full) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                r => r?,
            };
            DigestEntry { path: w.rel, kind: "file", size: Some(n), blake3: Some(h.to_hex().to_string()), target: None }
        } else if ft.is_symlink() {
            let t = match std::fs::read_link(&w.full) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                r => r?,
            };
            DigestEntry { path: w.rel, kind: "symlink", size: None, blake3: None, target: Some(t.to_string_lossy().into_owned()) }
        } else {
            DigestEntry { path: w.rel, kind: "other", size: Some(w.meta.size()), blake3: None, target: None }
        };
        // Length-prefixed fields: no path can be confused with another.
        for field in [e.kind, &e.path, &e.size.map(|s| s.to_string()).unwrap_or_default(),
                      e.blake3.as_deref().unwrap_or(""), e.target.as_deref().unwrap_or("")] {
            hasher.update(&(field.len() as u64).to_le_bytes());
            hasher.update(field.as_bytes());
        }
        entries.push(e);
    }
    Ok(TreeDigest { digest: hasher.finalize().to_hex().to_string(), entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_sees_content_names_and_types_but_not_times() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            std::fs::create_dir(d.join("sub")).unwrap();
            std::fs::write(d.join("sub/f"), b"hello").unwrap();
            std::fs::write(d.join("empty"), b"").unwrap();
            std::os::unix::fs::symlink("sub/f", d.join("link")).unwrap();
        }
        let da = digest_tree(a.path()).unwrap().digest;
        assert_eq!(da, digest_tree(b.path()).unwrap().digest);
        assert_eq!(da.len(), 64);

        std::fs::write(b.path().join("sub/f"), b"hellO").unwrap();
        assert_ne!(da, digest_tree(b.path()).unwrap().digest, "content");
        std::fs::write(b.path().join("sub/f"), b"hello").unwrap();
        assert_eq!(da, digest_tree(b.path()).unwrap().digest);
        std::fs::rename(b.path().join("empty"), b.path().join("empty2")).unwrap();
        assert_ne!(da, digest_tree(b.path()).unwrap().digest, "name");
        std::fs::rename(b.path().join("empty2"), b.path().join("empty")).unwrap();
        std::fs::remove_file(b.path().join("link")).unwrap();
        std::os::unix::fs::symlink("sub", b.path().join("link")).unwrap();
        assert_ne!(da, digest_tree(b.path()).unwrap().digest, "symlink target");
        std::fs::remove_file(b.path().join("link")).unwrap();
        std::fs::create_dir(b.path().join("link")).unwrap();
        assert_ne!(da, digest_tree(b.path()).unwrap().digest, "type");
    }
}
