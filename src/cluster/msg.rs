//! The messages of a control link, as JSON objects tagged by `"type"`.
//! [`Up`] goes to the guide, [`Down`] comes from it.
//!
//! # A node agent's link
//! ```text
//! node                                         guide
//! Hello{kind: node, node: NodeHello}   ──▶     refuse a duplicate id or a bad tail
//!                                      ◀──     Welcome{epoch, role, lease, history_seq, quarantine_from}
//! Heartbeat{hb, …} every heartbeat_ms  ──▶     record status
//!                                      ◀──     Lease{epoch, hb, lease_ms}   (primary only)
//! primary: contents by xfer (DRIFTXFR), then
//! Entries{epoch, entries, absent}      ──▶     store durably, in seq order
//!                                      ◀──     Stored{epoch, seq}
//! InitialState{epoch, users, service}  ──▶     store a new version
//! TreeDigest{epoch, seq, digest}       ──▶     compare with the stored history's tree
//! backup:                              ◀──     OpenReverse{token} (per transfer connection)
//!          contents by reverse xfer    ◀──
//!                                      ◀──     Forward{entries, absent}
//! Applied{seq}                         ──▶
//!                                      ◀──     InitialState{version, users, service}
//! any:                                 ◀──     Promote{epoch, lease_ms} | Demote{epoch, reason}
//!                                      ◀──     Drain{epoch}
//! Drained{epoch, last_seq}             ──▶
//! ```
//! A primary's lease runs from the moment it *sent* the heartbeat that a
//! `Lease` answers (the node keeps the send time of each `hb`), so the
//! node's idea of its lease always ends before the guide's, whatever the
//! network delay: the guide may promote another node once `lease_ms` has
//! passed since it *granted* the last renewal.
//!
//! # Operators and subscribers
//! `Hello{kind: operator}` then any number of `Status` (answered by
//! `StatusReply`) and `Migrate` (answered by `MigrateReply` once the new
//! primary serves, or failed). `Hello{kind: subscriber}` then nothing:
//! the guide sends `Announce` at once with the current state, and again on
//! every change. `Hello{kind: proxy}` is a subscriber that also gets
//! `InitialState{version, users, service}` (the users file holds the
//! argon2 hashes the proxy checks logins against) at once when the guide
//! has one, and again on every new version.

use serde::{Deserialize, Serialize};

use drift_fs::{Entry, Op};

/// Most entries in one `Entries` or `Forward` message.
pub const MAX_BATCH: usize = 2048;
/// Most bytes of entries one `Entries` or `Forward` message carries, by
/// [`wire_cost`]: half the link's message limit, so a batch of long paths
/// is cut by size before it could be refused by the link.
pub const MAX_BATCH_WIRE_BYTES: usize = (crate::cluster::link::MAX_MESSAGE / 2) as usize;

/// An upper bound on the encoded size of an entry with these path and
/// target lengths: JSON may spell each byte of a name as `\u00XX`.
fn wire_cost(path_len: usize, to_len: usize) -> usize {
    6 * (path_len + to_len) + 512
}

/// How many entries (at least one) of a run with these path and target
/// lengths fit in one message.
pub fn batch_len(names: impl IntoIterator<Item = (usize, usize)>) -> usize {
    let mut total = 0;
    let mut n = 0;
    for (path_len, to_len) in names {
        total += wire_cost(path_len, to_len);
        if n > 0 && total > MAX_BATCH_WIRE_BYTES {
            break;
        }
        n += 1;
    }
    n
}
/// Most fingerprints a node sends of its unconfirmed tail.
pub const MAX_TAIL: usize = 100_000;

/// A node's role, as `drift status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Primary,
    Backup,
    CatchingUp,
    Fenced,
    Down,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
            Role::CatchingUp => "catching-up",
            Role::Fenced => "fenced",
            Role::Down => "down",
        }
    }
}

/// One journal entry on the wire. Times are nanoseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEntry {
    pub seq: u64,
    pub time_ns: i64,
    pub op: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
}

impl From<&Entry> for WireEntry {
    fn from(e: &Entry) -> Self {
        WireEntry {
            seq: e.seq,
            time_ns: e.time.unix_timestamp_nanos() as i64,
            op: e.op.as_str().to_owned(),
            path: e.path.clone(),
            to: e.to.clone(),
            size: e.size,
            blake3: e.blake3.clone(),
            mode: e.mode,
            mtime_ns: e.mtime.map(|t| t.unix_timestamp_nanos() as i64),
        }
    }
}

fn time(ns: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn journal_path_ok(p: &str) -> bool {
    p.starts_with('/')
        && p.len() <= 4096
        && !p.contains('\0')
        && p[1..].split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

impl WireEntry {
    /// Checks the entry (op, paths, hash) and turns it into a journal
    /// entry. Anything a replay could be tricked with is refused here.
    pub fn to_entry(&self) -> Result<Entry, String> {
        let op = Op::parse(&self.op).ok_or_else(|| format!("entry {}: unknown op {:?}", self.seq, self.op))?;
        if self.seq == 0 {
            return Err("entry with seq 0".into());
        }
        if !journal_path_ok(&self.path) {
            return Err(format!("entry {}: bad path {:?}", self.seq, self.path));
        }
        match (op, &self.to) {
            (Op::Rename, Some(to)) if journal_path_ok(to) => {}
            (Op::Rename, _) => return Err(format!("entry {}: rename without a valid `to`", self.seq)),
            (_, Some(_)) => return Err(format!("entry {}: `to` on a {}", self.seq, self.op)),
            _ => {}
        }
        match (op, &self.blake3) {
            (Op::Write, Some(h)) if drift_fs::blobs::check_hash(h).is_ok() => {}
            (Op::Write, _) => return Err(format!("entry {}: write without a valid blake3", self.seq)),
            (_, Some(_)) => return Err(format!("entry {}: blake3 on a {}", self.seq, self.op)),
            _ => {}
        }
        Ok(Entry {
            seq: self.seq,
            time: time(self.time_ns),
            op,
            path: self.path.clone(),
            to: self.to.clone(),
            size: self.size,
            blake3: self.blake3.clone(),
            mode: self.mode,
            mtime: self.mtime_ns.map(time),
        })
    }

    /// The lengths of its path and rename target, for [`batch_len`].
    pub fn name_lens(&self) -> (usize, usize) {
        (self.path.len(), self.to.as_ref().map_or(0, |t| t.len()))
    }

    /// What identifies the entry across copies (its time included: a copy
    /// keeps it).
    pub fn fingerprint(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(&serde_json::to_vec(self).unwrap_or_default());
        h.finalize().to_hex()[..32].to_owned()
    }
}

/// A node's load, sent with every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    pub sessions: u64,
    pub transfers: u64,
    /// CPU used by the node process over the last interval, percent of one core.
    pub cpu_pct: f64,
    /// Free bytes on the filesystem of the backing directory.
    pub free_disk_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerKind {
    Node,
    Subscriber,
    /// A subscriber that also gets the initial state (`drift proxy`).
    Proxy,
    Operator,
}

/// What a node says of itself when its link opens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeHello {
    pub id: String,
    /// The FTP address clients (or the proxy) should use, `host:port`.
    pub ftp: String,
    pub pid: u32,
    pub version: String,
    /// The last seq in its journal.
    pub journal_seq: u64,
    /// The highest seq the guide ever confirmed to it (`Stored`, or its
    /// own `Applied` of forwarded entries), kept on its disk.
    pub confirmed_seq: u64,
    /// (seq, fingerprint) of each entry after `confirmed_seq`, at most
    /// [`MAX_TAIL`]: the guide finds where this node's journal leaves the
    /// history.
    pub tail: Vec<(u64, String)>,
    /// The highest epoch it has seen.
    pub epoch: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub kind: PeerKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeHello>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Counts up per link; echoed by `Lease`.
    pub hb: u64,
    pub role: Role,
    pub epoch: u64,
    /// Last seq in its journal (applied, for a backup).
    pub applied_seq: u64,
    pub load: Load,
    /// 0–100: the larger of the operator's source and the node's own signals.
    pub threat: u8,
    /// Why the threat is what it is, for the status page.
    #[serde(default)]
    pub threat_reason: String,
    /// Catch-up progress, 0.0–1.0, while catching up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    /// The node's quarantine directories (names under its state dir).
    #[serde(default)]
    pub quarantines: Vec<String>,
}

/// To the guide.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Up {
    Hello(Hello),
    Heartbeat(Heartbeat),
    /// The primary's journal entries, in seq order with no gap, after their
    /// contents went by xfer. `absent`: seqs of writes whose content was
    /// already overwritten on the node (a later entry supersedes them).
    Entries { epoch: u64, entries: Vec<WireEntry>, #[serde(default)] absent: Vec<u64> },
    InitialState { epoch: u64, users: String, service: String },
    /// The primary's tree digest when its journal stood at `seq`.
    TreeDigest { epoch: u64, seq: u64, digest: String },
    /// A backup applied everything up to `seq`.
    Applied { seq: u64 },
    /// The primary stopped taking changes and everything up to `last_seq`
    /// was shipped (answer to `Drain`).
    Drained { epoch: u64, last_seq: u64 },
    Status,
    Migrate {
        #[serde(default)]
        to: Option<String>,
        #[serde(default)]
        reason: Option<String>,
    },
}

/// The state subscribers follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub epoch: u64,
    pub primary: Option<String>,
    /// The primary's FTP address.
    pub ftp: Option<String>,
    /// `serving` or `switching`.
    pub state: String,
}

/// From the guide.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Down {
    Welcome {
        epoch: u64,
        role: Role,
        /// For a primary: its lease, counted from when it sent `Hello`.
        lease_ms: u64,
        history_seq: u64,
        /// Entries from this seq on are not in the history: move them to
        /// quarantine and start again from the guide's copy.
        #[serde(default)]
        quarantine_from: Option<u64>,
        primary: Option<String>,
    },
    Refused { reason: String },
    Lease { epoch: u64, hb: u64, lease_ms: u64 },
    Stored { epoch: u64, seq: u64 },
    Forward { entries: Vec<WireEntry>, #[serde(default)] absent: Vec<u64> },
    InitialState { version: u64, users: String, service: String },
    /// `history_seq`: the history's last seq when the node was promoted;
    /// its journal must end exactly there.
    Promote { epoch: u64, lease_ms: u64, #[serde(default)] history_seq: Option<u64> },
    Demote { epoch: u64, reason: String },
    Drain { epoch: u64 },
    OpenReverse { token: String },
    Announce(Announcement),
    StatusReply { status: serde_json::Value },
    MigrateReply { ok: bool, message: String, epoch: u64, primary: Option<String> },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_of_long_escaped_paths_is_cut_before_the_link_limit() {
        // The longest name a journal holds, all control characters: JSON
        // spells each as \u00XX.
        let path = format!("/{}", "\u{1}".repeat(4095));
        let mut rename = write(1, &path);
        rename.op = "rename".into();
        rename.to = Some(path.clone());
        let batch: Vec<WireEntry> = (1..=MAX_BATCH as u64).map(|seq| WireEntry { seq, ..rename.clone() }).collect();
        let n = batch_len(batch.iter().map(WireEntry::name_lens));
        assert!((1..MAX_BATCH).contains(&n), "{n}");
        let encoded = serde_json::to_vec(&Down::Forward { entries: batch[..n].to_vec(), absent: vec![] }).unwrap();
        assert!(encoded.len() <= crate::cluster::link::MAX_MESSAGE as usize, "{} bytes", encoded.len());
        // One entry always goes, whatever its size; short ones all fit.
        assert_eq!(batch_len(batch[..1].iter().map(WireEntry::name_lens)), 1);
        let short: Vec<WireEntry> = (1..=MAX_BATCH as u64).map(|seq| write(seq, "/a/b")).collect();
        assert_eq!(batch_len(short.iter().map(WireEntry::name_lens)), MAX_BATCH);
    }

    fn write(seq: u64, path: &str) -> WireEntry {
        WireEntry {
            seq,
            time_ns: 1,
            op: "write".into(),
            path: path.into(),
            to: None,
            size: Some(1),
            blake3: Some("a".repeat(64)),
            mode: None,
            mtime_ns: None,
        }
    }

    #[test]
    fn entries_that_could_escape_or_lie_are_refused() {
        assert!(write(1, "/a/b").to_entry().is_ok());
        for bad in ["a", "/../x", "/a/../b", "/a//b", "/a/\0", "/"] {
            assert!(write(1, bad).to_entry().is_err(), "{bad:?} accepted");
        }
        assert!(write(0, "/a").to_entry().is_err());
        let mut e = write(2, "/a");
        e.blake3 = Some("zz".into());
        assert!(e.to_entry().is_err());
        let mut e = write(2, "/a");
        e.op = "rename".into();
        e.blake3 = None;
        assert!(e.to_entry().is_err(), "rename without to");
        e.to = Some("/b".into());
        assert!(e.to_entry().is_ok());
        e.op = "chown".into();
        assert!(e.to_entry().is_err());
    }

    #[test]
    fn fingerprints_tell_entries_apart_and_survive_a_round_trip() {
        let a = write(1, "/a");
        let e = a.to_entry().unwrap();
        assert_eq!(WireEntry::from(&e).fingerprint(), a.fingerprint());
        assert_ne!(write(1, "/b").fingerprint(), a.fingerprint());
        let msg = serde_json::to_string(&Up::Entries { epoch: 3, entries: vec![a], absent: vec![] }).unwrap();
        assert!(msg.contains("\"type\":\"entries\""), "{msg}");
        let back: Up = serde_json::from_str(&msg).unwrap();
        assert!(matches!(back, Up::Entries { epoch: 3, .. }));
    }
}
