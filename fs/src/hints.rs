//! Content hashes offered by an in-process writer.
//!
//! The release of a written file normally reads the whole file back to
//! hash it, and a writer that must wait for the journal entry (the FTP
//! node before its 226) waits for that read. A writer in the same process
//! that hashed the bytes as it wrote them can offer the hash instead. The
//! filesystem uses an offer only when it cannot be wrong about the file:
//! the offering handle was the only one opened for writing while the file
//! was open, nothing else resized it, the offer was made while the file
//! was open, and the size matches. Otherwise the offer is ignored and the
//! file is read and hashed as usual.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Offers waiting for their file's release, by journal path ("/a/b").
#[derive(Debug, Default)]
pub struct ContentHints {
    map: Mutex<HashMap<String, Offer>>,
    /// Orders offers against file opens: an offer older than the file's
    /// current open period is stale.
    clock: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Offer {
    /// The file's inode number on the mount (`st_ino` of the offering
    /// handle): a different file that got the path meanwhile (a rename,
    /// then a new file) cannot take the offer.
    pub ino: u64,
    pub size: u64,
    pub hash: blake3::Hash,
    /// [`ContentHints::now`] when the offer was made.
    pub made: u64,
}

/// Offers for files never released under that name (renamed while open)
/// would pile up; past this many the oldest are simply dropped.
const MAX_OFFERS: usize = 4096;

impl ContentHints {
    /// The writer's claim: the file at `path` (as the journal spells it),
    /// inode `ino` on the mount, holds exactly `size` bytes hashing to
    /// `hash`, all written through its one handle. Call it before closing
    /// that handle.
    pub fn offer(&self, path: &str, ino: u64, size: u64, hash: blake3::Hash) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_OFFERS {
            map.clear();
        }
        let made = self.now();
        map.insert(path.to_owned(), Offer { ino, size, hash, made });
    }

    /// A fresh, increasing stamp.
    pub(crate) fn now(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn take(&self, path: &str) -> Option<Offer> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(path)
    }
}
