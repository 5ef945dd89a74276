//! The manifest digest: one BLAKE3 over what a tree holds (directories,
//! and files with their size and BLAKE3), in a form both the primary (from
//! its backing directory) and the guide (from its stored history's tree)
//! can compute. The primary sends it every `interval_secs`, so the guide
//! proves that what it stores matches what the node serves.
//!
//! Format: the items sorted by path (bytes), each as one line, `d PATH\n`
//! for a directory and `f PATH SIZE BLAKE3\n` for a file, PATH as the
//! journal spells it (`/a/b`); the digest is the BLAKE3 of the lines
//! joined. Symlinks and special files are not part of a served tree and
//! are left out.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Item {
    Dir { path: String },
    File { path: String, size: u64, blake3: String },
}

impl Item {
    pub fn path(&self) -> &str {
        match self {
            Item::Dir { path } | Item::File { path, .. } => path,
        }
    }
}

/// The digest of `items` (any order).
pub fn digest(mut items: Vec<Item>) -> String {
    items.sort_by(|a, b| a.path().as_bytes().cmp(b.path().as_bytes()));
    let mut h = blake3::Hasher::new();
    for it in &items {
        match it {
            Item::Dir { path } => {
                h.update(b"d ");
                h.update(path.as_bytes());
            }
            Item::File { path, size, blake3 } => {
                h.update(b"f ");
                h.update(path.as_bytes());
                h.update(format!(" {size} {blake3}").as_bytes());
            }
        }
        h.update(b"\n");
    }
    h.finalize().to_hex().to_string()
}

/// Key under which a file's hash stays valid: a rewrite changes its size,
/// mtime or ctime.
type Stamp = (u64, u64, u64, i64, i64);

/// Hashes of the files of a tree, kept between walks so a digest every
/// few seconds re-reads only what changed.
#[derive(Debug, Default)]
pub struct HashCache {
    by_path: HashMap<String, (Stamp, String)>,
}

impl HashCache {
    /// The manifest items of the tree under `root`.
    pub fn walk(&mut self, root: &Path) -> io::Result<Vec<Item>> {
        let mut items = Vec::new();
        let mut seen = HashMap::new();
        self.walk_dir(root, "", &mut items, &mut seen)?;
        // Forget files that are gone.
        self.by_path.retain(|p, _| seen.contains_key(p));
        Ok(items)
    }

    fn walk_dir(&mut self, dir: &Path, prefix: &str, items: &mut Vec<Item>, seen: &mut HashMap<String, ()>) -> io::Result<()> {
        for ent in std::fs::read_dir(dir)? {
            let ent = ent?;
            let Some(name) = ent.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let path = format!("{prefix}/{name}");
            let md = match std::fs::symlink_metadata(ent.path()) {
                Ok(md) => md,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if md.is_dir() {
                items.push(Item::Dir { path: path.clone() });
                self.walk_dir(&ent.path(), &path, items, seen)?;
            } else if md.is_file() {
                let stamp = (md.dev(), md.ino(), md.len(), md.mtime() * 1_000_000_000 + md.mtime_nsec(), md.ctime() * 1_000_000_000 + md.ctime_nsec());
                let hash = match self.by_path.get(&path) {
                    Some((s, h)) if *s == stamp => h.clone(),
                    _ => {
                        let h = drift_fs::hash::hash_path(&ent.path())?.0.to_hex().to_string();
                        self.by_path.insert(path.clone(), (stamp, h.clone()));
                        h
                    }
                };
                seen.insert(path.clone(), ());
                items.push(Item::File { path, size: md.len(), blake3: hash });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walked_tree_and_the_same_items_listed_agree_and_a_change_shows() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        std::fs::write(d.path().join("a/x"), b"hello").unwrap();
        let mut cache = HashCache::default();
        let walked = digest(cache.walk(d.path()).unwrap());
        let listed = digest(vec![
            Item::File { path: "/a/x".into(), size: 5, blake3: blake3::hash(b"hello").to_hex().to_string() },
            Item::Dir { path: "/a".into() },
        ]);
        assert_eq!(walked, listed);
        std::fs::write(d.path().join("a/x"), b"hellO").unwrap();
        assert_ne!(digest(cache.walk(d.path()).unwrap()), walked, "a rewrite of the same size must change the digest");
    }
}
