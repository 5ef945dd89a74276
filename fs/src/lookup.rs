//! What the journal knows about a file's current content: the latest
//! `write` entry of the file now at a path, following renames of the
//! file and of its ancestors. The FTP node answers `HASH BLAKE3` from it
//! without reading the file, when [`Known::describes`] proves the entry
//! still describes the file.
//!
//! The index is built by tailing the journal (one scan from the start,
//! then only new entries), so a lookup costs a map access plus the
//! entries appended since the last one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use time::OffsetDateTime;

use crate::journal::{Entry, Journal, JournalError, Op};

/// Entries read per journal query while catching up.
const BATCH: usize = 10_000;

/// The journal's view of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// Seq of the `write` entry that recorded the content.
    pub seq: u64,
    pub size: u64,
    /// BLAKE3 of the content (lower-case hex), if the entry has one.
    pub blake3: Option<String>,
    /// When the content was journaled.
    pub written: OffsetDateTime,
    /// When the last journaled change to this file's inode happened (its
    /// write, an attribute change, a rename of the file itself): any
    /// change not in the journal moves the file's ctime past it.
    pub touched: OffsetDateTime,
    /// The modification time the last `attr` entry after the write set,
    /// if any (`MFMT`, `touch -d`).
    pub mtime_set: Option<OffsetDateTime>,
}

/// What the filesystem says about the file now (`stat` through the mount).
#[derive(Debug, Clone, Copy)]
pub struct Observed {
    pub size: u64,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

impl Known {
    /// Whether this entry describes the file as `now` observes it.
    ///
    /// File timestamps come from the kernel's clock, which may lag the
    /// journal's by up to `slack` (the coarse clock tick, or the backing
    /// filesystem's timestamp granularity). Hence:
    /// - the size must agree;
    /// - the mtime must be explained, since every data write sets it:
    ///   either exactly what a later `attr` set, or `mtime + slack <=
    ///   written` (no data was written after the content was journaled,
    ///   even by a writer whose own entry is still to come; a file
    ///   written within `slack` of its entry is not trusted);
    /// - `ctime <= touched`: no change the journal does not know of (a
    ///   chown, a copy into the backing directory that restored the
    ///   mtime) happened after the last entry that touched the file. This
    ///   bound has no slack, because the rename or attribute change that
    ///   set `touched` moved the ctime itself just before its entry; a
    ///   change of that kind within one clock tick after the entry can go
    ///   unseen (docs/node.md, "HASH").
    ///
    /// Not covered: a writer that keeps the file open across its `write`
    /// entry, writes more, then sets the mtime back explicitly; its own
    /// `write` entry, at its close, corrects the journal.
    pub fn describes(&self, now: &Observed, slack: Duration) -> bool {
        if self.blake3.is_none() || now.size != self.size {
            return false;
        }
        let touched: SystemTime = self.touched.into();
        let written: SystemTime = self.written.into();
        if now.ctime > touched {
            return false;
        }
        match self.mtime_set {
            Some(set) => now.mtime == SystemTime::from(set),
            None => now.mtime + slack <= written,
        }
    }
}

/// The index of files' latest writes, fed from one journal.
#[derive(Debug)]
pub struct ContentIndex {
    journal: Arc<Journal>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Entries up to this seq are applied.
    seen: u64,
    files: BTreeMap<String, Known>,
}

impl ContentIndex {
    pub fn new(journal: Arc<Journal>) -> ContentIndex {
        ContentIndex {
            journal,
            state: Mutex::new(State::default()),
        }
    }

    /// The journal's view of the file at `path` (relative to the mount
    /// root, starting with `/`), after applying every entry committed so
    /// far; `None` if no `write` entry describes a file there.
    pub fn lookup(&self, path: &str) -> Result<Option<Known>, JournalError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let batch = self.journal.list(st.seen, Some(BATCH))?;
            let Some(last) = batch.last().map(|e| e.seq) else { break };
            for e in &batch {
                apply(&mut st.files, e);
            }
            st.seen = last;
            if batch.len() < BATCH {
                break;
            }
        }
        Ok(st.files.get(path).cloned())
    }
}

fn under(path: &str, prefix: &str) -> bool {
    path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// Keys equal to `prefix` or below it.
fn keys_under(files: &BTreeMap<String, Known>, prefix: &str) -> Vec<String> {
    files
        .range(prefix.to_string()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .filter(|(k, _)| under(k, prefix))
        .map(|(k, _)| k.clone())
        .collect()
}

fn apply(files: &mut BTreeMap<String, Known>, e: &Entry) {
    match e.op {
        Op::Write => {
            files.insert(
                e.path.clone(),
                Known {
                    seq: e.seq,
                    size: e.size.unwrap_or(0),
                    blake3: e.blake3.clone(),
                    written: e.time,
                    touched: e.time,
                    mtime_set: None,
                },
            );
        }
        Op::Mkdir => {}
        Op::Unlink => {
            files.remove(&e.path);
        }
        Op::Rmdir => {
            for k in keys_under(files, &e.path) {
                files.remove(&k);
            }
        }
        Op::Attr => {
            if let Some(k) = files.get_mut(&e.path) {
                k.touched = e.time;
                if e.mtime.is_some() {
                    k.mtime_set = e.mtime;
                }
            }
        }
        Op::Rename => {
            let Some(to) = &e.to else { return };
            if to == &e.path {
                return;
            }
            // Whatever was at the destination is replaced.
            for k in keys_under(files, to) {
                files.remove(&k);
            }
            for k in keys_under(files, &e.path) {
                if let Some(mut v) = files.remove(&k) {
                    if k == e.path {
                        // rename(2) changes the ctime of the inode it moves,
                        // not of the entries below a moved directory.
                        v.touched = e.time;
                    }
                    files.insert(format!("{to}{}", &k[e.path.len()..]), v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Change, SyncMode};

    fn write(j: &Journal, path: &str, size: u64, hash: &str) -> Entry {
        let mut c = Change::new(Op::Write, path);
        c.size = Some(size);
        c.blake3 = Some(hash.repeat(64));
        j.append(c).unwrap()
    }

    fn rename(j: &Journal, from: &str, to: &str) -> Entry {
        let mut c = Change::new(Op::Rename, from);
        c.to = Some(to.to_string());
        j.append(c).unwrap()
    }

    #[test]
    fn follows_renames_of_the_file_and_its_ancestors() {
        let dir = tempfile::tempdir().unwrap();
        let j = Arc::new(Journal::create(&dir.path().join("j.db"), SyncMode::Normal).unwrap());
        let idx = ContentIndex::new(j.clone());
        j.append(Change::new(Op::Mkdir, "/d")).unwrap();
        let w = write(&j, "/d/a", 3, "a");
        write(&j, "/d/b", 4, "b");
        assert_eq!(idx.lookup("/d/a").unwrap().unwrap().seq, w.seq);
        let r = rename(&j, "/d", "/e");
        assert!(idx.lookup("/d/a").unwrap().is_none());
        let k = idx.lookup("/e/a").unwrap().unwrap();
        assert_eq!((k.seq, k.size, k.blake3), (w.seq, 3, Some("a".repeat(64))));
        // A moved directory's children keep their ctime.
        assert_eq!(k.touched, w.time);
        let r2 = rename(&j, "/e/a", "/e/b");
        let k = idx.lookup("/e/b").unwrap().unwrap();
        assert_eq!((k.seq, k.touched), (w.seq, r2.time));
        assert!(r2.time >= r.time);
        assert!(idx.lookup("/e/a").unwrap().is_none());
        j.append(Change::new(Op::Unlink, "/e/b")).unwrap();
        assert!(idx.lookup("/e/b").unwrap().is_none());
    }

    #[test]
    fn attr_moves_touched_and_records_a_set_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let j = Arc::new(Journal::create(&dir.path().join("j.db"), SyncMode::Normal).unwrap());
        let idx = ContentIndex::new(j.clone());
        write(&j, "/f", 1, "f");
        let mut c = Change::new(Op::Attr, "/f");
        c.mtime_ns = Some(1_000_000_000);
        let a = j.append(c).unwrap();
        let k = idx.lookup("/f").unwrap().unwrap();
        assert_eq!(k.touched, a.time);
        assert_eq!(k.mtime_set, a.mtime);
    }

    #[test]
    fn describes_only_an_unchanged_file() {
        let t = OffsetDateTime::now_utc();
        let k = Known {
            seq: 1,
            size: 10,
            blake3: Some("x".into()),
            written: t,
            touched: t,
            mtime_set: None,
        };
        let slack = Duration::from_millis(5);
        let before = SystemTime::from(t) - Duration::from_millis(20);
        let ok = Observed { size: 10, mtime: before, ctime: before };
        assert!(k.describes(&ok, slack));
        assert!(!k.describes(&Observed { size: 11, ..ok }, slack));
        // Data written after (or too close to) the entry.
        let late = SystemTime::from(t) - Duration::from_millis(2);
        assert!(!k.describes(&Observed { mtime: late, ctime: late, ..ok }, slack));
        let after = SystemTime::from(t) + Duration::from_millis(1);
        assert!(!k.describes(&Observed { mtime: after, ctime: after, ..ok }, slack));
        // An inode change after the last entry (mtime restored).
        assert!(!k.describes(&Observed { ctime: after, ..ok }, slack));
        // The entry's own rename or attribute change moved the ctime.
        assert!(k.describes(&Observed { ctime: SystemTime::from(t), ..ok }, slack));
        // A set mtime must be exactly the one the journal recorded.
        let set = OffsetDateTime::from_unix_timestamp(1_000).unwrap();
        let k2 = Known { mtime_set: Some(set), ..k.clone() };
        assert!(k2.describes(&Observed { mtime: set.into(), ..ok }, slack));
        assert!(!k2.describes(&Observed { mtime: before, ..ok }, slack));
        assert!(!Known { blake3: None, ..k }.describes(&ok, slack));
    }
}
