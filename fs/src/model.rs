//! The tree a journal describes, computed without touching any disk.
//!
//! Used by `pack` (where does each content live now?), `replay` (which
//! writes does a later entry make moot?) and `verify` (what should the
//! backing tree hold?).

use std::collections::BTreeMap;

use crate::journal::{Entry, Op};

/// A file as the journal last left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    /// The `write` entry that gave the file its content.
    pub seq: u64,
    pub size: u64,
    pub blake3: String,
    pub mode: Option<u32>,
}

#[derive(Debug, Default, Clone)]
pub struct TreeModel {
    pub files: BTreeMap<String, FileState>,
    /// Directories and their mode, when known.
    pub dirs: BTreeMap<String, Option<u32>>,
}

fn under(path: &str, prefix: &str) -> bool {
    path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

fn move_prefix<V>(map: &mut BTreeMap<String, V>, from: &str, to: &str) {
    let keys: Vec<String> = map.keys().filter(|k| under(k, from)).cloned().collect();
    for k in keys {
        if let Some(v) = map.remove(&k) {
            map.insert(format!("{to}{}", &k[from.len()..]), v);
        }
    }
}

impl TreeModel {
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> TreeModel {
        let mut m = TreeModel::default();
        for e in entries {
            m.apply(e);
        }
        m
    }

    pub fn apply(&mut self, e: &Entry) {
        match e.op {
            Op::Write => {
                self.files.insert(
                    e.path.clone(),
                    FileState {
                        seq: e.seq,
                        size: e.size.unwrap_or(0),
                        blake3: e.blake3.clone().unwrap_or_default(),
                        mode: e.mode,
                    },
                );
            }
            Op::Mkdir => {
                self.dirs.insert(e.path.clone(), e.mode);
            }
            Op::Rmdir => {
                self.dirs.retain(|k, _| !under(k, &e.path));
                self.files.retain(|k, _| !under(k, &e.path));
            }
            Op::Unlink => {
                self.files.remove(&e.path);
            }
            Op::Rename => {
                let Some(to) = &e.to else { return };
                // Whatever was at the destination is replaced.
                self.files.retain(|k, _| !under(k, to));
                self.dirs.retain(|k, _| !under(k, to));
                move_prefix(&mut self.files, &e.path, to);
                move_prefix(&mut self.dirs, &e.path, to);
            }
            Op::Attr => {
                if let Some(mode) = e.mode {
                    if let Some(f) = self.files.get_mut(&e.path) {
                        f.mode = Some(mode);
                    } else if let Some(d) = self.dirs.get_mut(&e.path) {
                        *d = Some(mode);
                    }
                }
            }
        }
    }

    /// The seqs of `write` entries whose content is still part of the tree.
    pub fn live_writes(&self) -> std::collections::HashSet<u64> {
        self.files.values().map(|f| f.seq).collect()
    }
}
