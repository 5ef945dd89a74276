//! The history in memory: every stored entry (seq 1..=`seq()`), the tree
//! it describes ([`TreeModel`]), and the pure checks the guide runs on
//! what nodes send: a batch of `Entries` (gap, duplicate, conflict) and a
//! node's tail at `Hello` (where its journal leaves the history).

use std::collections::{BTreeSet, HashSet};

use drift_fs::model::TreeModel;
use drift_fs::Op;

use super::store::StoredEntry;
use crate::cluster::manifest::{self, Item};
use crate::cluster::msg::WireEntry;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("entries start at {first}, the history ends at {seq}: a gap")]
    Gap { first: u64, seq: u64 },
    #[error("entries are not consecutive at {at}")]
    NotConsecutive { at: u64 },
    #[error("entry {seq} differs from the stored entry {seq}")]
    Conflict { seq: u64 },
    #[error("{0}")]
    Invalid(String),
}

/// Where a node's journal leaves the history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TailCheck {
    /// The first seq whose entry differs from the history's.
    pub differs_at: Option<u64>,
    /// The first seq beyond the history.
    pub beyond_from: Option<u64>,
}

impl TailCheck {
    /// Where a node that is not the primary must quarantine from.
    pub fn quarantine_for_backup(&self) -> Option<u64> {
        match (self.differs_at, self.beyond_from) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[derive(Debug, Default)]
pub struct History {
    entries: Vec<StoredEntry>,
    model: TreeModel,
}

impl History {
    pub fn new(entries: Vec<StoredEntry>) -> History {
        let mut h = History::default();
        h.push(entries);
        h
    }

    /// The last seq (0 when empty).
    pub fn seq(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn get(&self, seq: u64) -> Option<&StoredEntry> {
        seq.checked_sub(1).and_then(|i| self.entries.get(i as usize))
    }

    /// Up to `max` entries from `from` on.
    pub fn range(&self, from: u64, max: usize) -> &[StoredEntry] {
        let start = (from.max(1) - 1) as usize;
        if start >= self.entries.len() {
            return &[];
        }
        let end = start.saturating_add(max).min(self.entries.len());
        &self.entries[start..end]
    }

    /// Checks a batch the primary sent at `epoch`: returns the entries to
    /// store (those already stored with the same fingerprint are skipped).
    pub fn check_batch(&self, epoch: u64, batch: &[WireEntry], absent: &[u64]) -> Result<Vec<StoredEntry>, BatchError> {
        let absent: HashSet<u64> = absent.iter().copied().collect();
        let mut out = Vec::new();
        let mut expect = None;
        for w in batch {
            let e = w.to_entry().map_err(BatchError::Invalid)?;
            match expect {
                None if w.seq > self.seq() + 1 => return Err(BatchError::Gap { first: w.seq, seq: self.seq() }),
                Some(x) if w.seq != x => return Err(BatchError::NotConsecutive { at: w.seq }),
                _ => {}
            }
            expect = Some(w.seq + 1);
            let fingerprint = w.fingerprint();
            if let Some(stored) = self.get(w.seq) {
                if stored.fingerprint != fingerprint {
                    return Err(BatchError::Conflict { seq: w.seq });
                }
                continue;
            }
            out.push(StoredEntry { epoch, wire: w.clone(), fingerprint, absent: e.op == Op::Write && absent.contains(&w.seq) });
        }
        Ok(out)
    }

    /// Appends checked entries (they must continue the history).
    pub fn push(&mut self, entries: Vec<StoredEntry>) {
        for e in entries {
            if let Ok(entry) = e.wire.to_entry() {
                self.model.apply(&entry);
            }
            self.entries.push(e);
        }
    }

    /// Compares a node's tail (fingerprints after `confirmed_seq`) and its
    /// journal's end with the history.
    pub fn check_tail(&self, journal_seq: u64, confirmed_seq: u64, tail: &[(u64, String)]) -> TailCheck {
        let mut t = TailCheck::default();
        for (seq, fp) in tail {
            if *seq <= confirmed_seq {
                continue;
            }
            match self.get(*seq) {
                None => {
                    t.beyond_from = Some(t.beyond_from.map_or(*seq, |b| b.min(*seq)));
                }
                Some(e) if &e.fingerprint != fp => {
                    t.differs_at = Some(t.differs_at.map_or(*seq, |d| d.min(*seq)));
                }
                Some(_) => {}
            }
        }
        if journal_seq > self.seq() && t.beyond_from.is_none() {
            // The tail did not cover it (confirmed past the history, or
            // truncated): everything past the history is unknown here.
            t.beyond_from = Some(self.seq() + 1);
        }
        t
    }

    /// Seqs of writes whose content is still part of the tree.
    pub fn live_writes(&self) -> HashSet<u64> {
        self.model.live_writes()
    }

    /// Contents the current tree needs.
    pub fn live_hashes(&self) -> HashSet<String> {
        self.model.files.values().map(|f| f.blake3.clone()).collect()
    }

    /// Bytes of the writes after `applied`.
    pub fn bytes_after(&self, applied: u64) -> u64 {
        self.range(applied + 1, usize::MAX).iter().filter_map(|e| e.wire.size.filter(|_| e.wire.op == "write")).sum()
    }

    /// The manifest digest of the tree at `seq` (the current tree when
    /// `seq` is the last one).
    pub fn digest_at(&self, seq: u64) -> Option<String> {
        if seq > self.seq() {
            return None;
        }
        if seq == self.seq() {
            return Some(model_digest(&self.model));
        }
        let entries: Vec<_> = self.range(1, seq as usize).iter().filter_map(|e| e.wire.to_entry().ok()).collect();
        Some(model_digest(&TreeModel::from_entries(&entries)))
    }
}

/// The manifest digest of a model: its files and directories, with the
/// parents that files and directories imply.
pub fn model_digest(m: &TreeModel) -> String {
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    let add_parents = |p: &str, dirs: &mut BTreeSet<String>| {
        let mut cur = p;
        while let Some((parent, _)) = cur.rsplit_once('/') {
            if parent.is_empty() {
                break;
            }
            dirs.insert(parent.to_owned());
            cur = parent;
        }
    };
    for d in m.dirs.keys() {
        dirs.insert(d.clone());
        add_parents(d, &mut dirs);
    }
    for f in m.files.keys() {
        add_parents(f, &mut dirs);
    }
    let mut items: Vec<Item> = dirs.into_iter().map(|path| Item::Dir { path }).collect();
    items.extend(m.files.iter().map(|(p, f)| Item::File { path: p.clone(), size: f.size, blake3: f.blake3.clone() }));
    manifest::digest(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(seq: u64, op: &str, path: &str, content: Option<&[u8]>) -> WireEntry {
        WireEntry {
            seq,
            time_ns: 1000 + seq as i64,
            op: op.into(),
            path: path.into(),
            to: None,
            size: content.map(|c| c.len() as u64),
            blake3: content.map(|c| blake3::hash(c).to_hex().to_string()),
            mode: None,
            mtime_ns: None,
        }
    }

    fn history(n: u64) -> History {
        let mut h = History::default();
        let batch: Vec<_> = (1..=n).map(|s| w(s, "mkdir", &format!("/d{s}"), None)).collect();
        let new = h.check_batch(1, &batch, &[]).unwrap();
        h.push(new);
        h
    }

    #[test]
    fn a_gap_or_a_changed_entry_is_refused_and_a_resend_is_skipped() {
        let h = history(3);
        assert_eq!(h.check_batch(1, &[w(5, "mkdir", "/x", None)], &[]), Err(BatchError::Gap { first: 5, seq: 3 }));
        assert_eq!(h.check_batch(1, &[w(4, "mkdir", "/x", None), w(6, "mkdir", "/y", None)], &[]), Err(BatchError::NotConsecutive { at: 6 }));
        assert_eq!(h.check_batch(1, &[w(3, "mkdir", "/other", None)], &[]), Err(BatchError::Conflict { seq: 3 }));
        let new = h.check_batch(2, &[w(3, "mkdir", "/d3", None), w(4, "mkdir", "/d4", None)], &[]).unwrap();
        assert_eq!(new.len(), 1, "the re-sent entry 3 is skipped");
        assert_eq!((new[0].seq(), new[0].epoch), (4, 2));
        assert!(h.check_batch(1, &[w(4, "mkdir", "../x", None)], &[]).is_err());
    }

    #[test]
    fn the_tail_shows_where_a_journal_leaves_the_history() {
        let h = history(5);
        let fp = |s: u64| h.get(s).unwrap().fingerprint.clone();
        // A prefix of the history: nothing to quarantine.
        let t = h.check_tail(4, 2, &[(3, fp(3)), (4, fp(4))]);
        assert_eq!(t, TailCheck::default());
        // Two entries the guide never stored.
        let t = h.check_tail(7, 4, &[(5, fp(5)), (6, "x".into()), (7, "y".into())]);
        assert_eq!((t.differs_at, t.beyond_from, t.quarantine_for_backup()), (None, Some(6), Some(6)));
        // A different entry 4 (made in a stale epoch).
        let t = h.check_tail(6, 3, &[(4, "z".into()), (5, fp(5)), (6, "y".into())]);
        assert_eq!((t.differs_at, t.beyond_from, t.quarantine_for_backup()), (Some(4), Some(6), Some(4)));
        // Confirmed past the history (tail not covering it).
        let t = h.check_tail(9, 9, &[]);
        assert_eq!(t.beyond_from, Some(6));
    }

    #[test]
    fn superseded_writes_are_not_live_and_digests_follow_the_tree() {
        let mut h = History::default();
        let b = [w(1, "mkdir", "/a", None), w(2, "write", "/a/x", Some(b"one")), w(3, "write", "/a/x", Some(b"two"))];
        let new = h.check_batch(1, &b, &[2]).unwrap();
        assert!(new[1].absent && !new[2].absent);
        h.push(new);
        assert_eq!(h.live_writes(), [3].into_iter().collect());
        assert_eq!(h.live_hashes(), [blake3::hash(b"two").to_hex().to_string()].into_iter().collect());
        let want = manifest::digest(vec![
            Item::Dir { path: "/a".into() },
            Item::File { path: "/a/x".into(), size: 3, blake3: blake3::hash(b"two").to_hex().to_string() },
        ]);
        assert_eq!(h.digest_at(3).unwrap(), want);
        assert_ne!(h.digest_at(2).unwrap(), want);
        assert_eq!(h.bytes_after(1), 6);
    }
}
