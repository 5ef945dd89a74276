//! The journal: one durable, ordered record per completed-state change.
//!
//! Stored in SQLite (WAL mode). `seq` is the table's integer primary key
//! and every append goes through one connection behind a mutex, so `seq`
//! grows by exactly one per entry with no gaps, whatever the number of
//! writer threads; SQLite's `max(rowid)+1` rule keeps that true across a
//! crash, because a rolled-back insert never consumes a number.
//!
//! Durability: with [`SyncMode::Normal`] a committed entry survives a crash
//! of the process (SQLite WAL with `synchronous=NORMAL`); with
//! [`SyncMode::Full`] it also survives a machine crash (`synchronous=FULL`,
//! and the filesystem fsyncs file data before journaling it).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::{Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// What identifies a SQLite file as a drift journal.
const FORMAT: &str = "drift-journal";
/// Schema version written into new journals and required of old ones.
const VERSION: i64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    // rusqlite's error repeats its own message in its source (`unable to
    // open database file` twice), so the chain stops here and the message
    // is printed once.
    #[error("journal {path}: {}", sqlite_message(source))]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("journal {path}: cannot open it")]
    Open { path: PathBuf, #[source] source: std::io::Error },
    #[error("{0} does not exist")]
    Missing(PathBuf),
    #[error("{0} is not a drift journal")]
    NotAJournal(PathBuf),
    #[error("{path} is a drift journal of version {found}, this drift reads version {VERSION}")]
    Version { path: PathBuf, found: i64 },
    #[error("journal {path}: entry {seq} is malformed: {why}")]
    Malformed { path: PathBuf, seq: u64, why: String },
    #[error("journal {path}: a copied entry must be seq {expected}, not {got}")]
    OutOfOrder { path: PathBuf, expected: u64, got: u64 },
}

/// SQLite's own description of an error, without rusqlite's repetition.
fn sqlite_message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
        other => other.to_string(),
    }
}

/// SQLite says only "unable to open database file"; the operating
/// system's reason (a directory, no permission, a missing parent) is found
/// by opening the file the same way ourselves.
fn open_error(path: &Path, e: rusqlite::Error) -> JournalError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        if f.code == rusqlite::ErrorCode::CannotOpen {
            let existed = path.exists();
            let probe = std::fs::OpenOptions::new().read(true).write(true).create(!existed).truncate(false).open(path);
            let reason = match probe {
                Err(io) => Some(io),
                Ok(_) if path.is_dir() => Some(std::io::Error::from_raw_os_error(libc::EISDIR)),
                Ok(_) => {
                    // The probe must not leave a file SQLite did not make.
                    if !existed {
                        let _ = std::fs::remove_file(path);
                    }
                    None
                }
            };
            if let Some(source) = reason {
                return JournalError::Open { path: path.to_owned(), source };
            }
        }
    }
    JournalError::Sqlite { path: path.to_owned(), source: e }
}

/// How hard the journal (and the filesystem above it) works to survive a
/// crash. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Survives a crash of the mount process (`kill -9`), not of the machine.
    #[default]
    Normal,
    /// Also survives a machine crash or power loss: file data and the
    /// journal are fsynced before an operation is acknowledged.
    Full,
}

/// The kind of change an entry records. The names are part of the
/// journal's JSON contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Write,
    Mkdir,
    Rmdir,
    Unlink,
    Rename,
    Attr,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Write => "write",
            Op::Mkdir => "mkdir",
            Op::Rmdir => "rmdir",
            Op::Unlink => "unlink",
            Op::Rename => "rename",
            Op::Attr => "attr",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "write" => Op::Write,
            "mkdir" => Op::Mkdir,
            "rmdir" => Op::Rmdir,
            "unlink" => Op::Unlink,
            "rename" => Op::Rename,
            "attr" => Op::Attr,
            _ => return None,
        })
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Op {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A change to record; the journal gives it its `seq` and `time`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Change {
    pub op: Option<Op>,
    pub path: String,
    pub to: Option<String>,
    pub size: Option<u64>,
    pub blake3: Option<String>,
    pub mode: Option<u32>,
    /// Modification time set by an `attr` change, nanoseconds since the epoch.
    pub mtime_ns: Option<i64>,
}

impl Change {
    pub fn new(op: Op, path: impl Into<String>) -> Self {
        Change { op: Some(op), path: path.into(), ..Default::default() }
    }
}

/// One journal entry, as stored and as printed by `drift journal list --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub seq: u64,
    #[serde(serialize_with = "rfc3339")]
    pub time: OffsetDateTime,
    pub op: Op,
    /// Path relative to the mount root, starting with `/`.
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// Permission bits (`0o7777` mask), as a JSON number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Modification time an `attr` entry sets, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_rfc3339")]
    pub mtime: Option<OffsetDateTime>,
}

fn rfc3339<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*t))
}

fn opt_rfc3339<S: Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

/// RFC 3339 with nanoseconds, always UTC.
pub fn format_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

fn time_from_ns(ns: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// A journal id: unique per creation (time, process, place).
fn new_id(path: &Path) -> String {
    let mut h = blake3::Hasher::new();
    h.update(&OffsetDateTime::now_utc().unix_timestamp_nanos().to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(path.as_os_str().as_encoded_bytes());
    h.finalize().to_hex()[..32].to_owned()
}

/// Counts for `drift journal stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub entries: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    #[serde(serialize_with = "opt_rfc3339")]
    pub first_time: Option<OffsetDateTime>,
    #[serde(serialize_with = "opt_rfc3339")]
    pub last_time: Option<OffsetDateTime>,
    /// Entries per op, in a fixed order.
    pub by_op: Vec<(String, u64)>,
    /// Sum of `size` over write entries.
    pub bytes_written: u64,
}

/// A journal file, open for appending and reading. Cheap to share behind
/// an `Arc`; all methods take `&self`.
pub struct Journal {
    path: PathBuf,
    /// The one connection; its mutex is what orders appends.
    conn: Mutex<Connection>,
    /// Last committed seq, published for [`Journal::wait_for`] waiters.
    last: Mutex<u64>,
    appended: Condvar,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish_non_exhaustive()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    seq      INTEGER PRIMARY KEY,
    time_ns  INTEGER NOT NULL,
    op       TEXT NOT NULL,
    path     TEXT NOT NULL,
    to_path  TEXT,
    size     INTEGER,
    blake3   TEXT,
    mode     INTEGER,
    mtime_ns INTEGER
);
";

impl Journal {
    /// Opens the journal at `path`, creating it if it does not exist. An
    /// existing file that is not a drift journal is refused untouched.
    pub fn create(path: &Path, sync: SyncMode) -> Result<Journal, JournalError> {
        if path.exists() {
            // Check before we write anything into somebody else's file.
            let j = Journal::open(path)?;
            j.set_sync(sync)?;
            return Ok(j);
        }
        let sq = |source| JournalError::Sqlite { path: path.to_owned(), source };
        let conn = Connection::open(path).map_err(|e| open_error(path, e))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(sq)?;
        conn.execute_batch(SCHEMA).map_err(sq)?;
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('format', ?1), ('version', ?2), ('id', ?3)",
            params![FORMAT, VERSION.to_string(), new_id(path)],
        )
        .map_err(sq)?;
        let j = Journal::from_conn(path, conn)?;
        j.set_sync(sync)?;
        Ok(j)
    }

    /// Opens an existing journal. Fails with a clear error if the file is
    /// missing, unreadable or not a drift journal; never creates anything.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        if !path.exists() {
            return Err(JournalError::Missing(path.to_owned()));
        }
        let sq = |source| JournalError::Sqlite { path: path.to_owned(), source };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| open_error(path, e))?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(sq)?;
        let format: Option<String> = match conn
            .query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| r.get(0))
            .optional()
        {
            Ok(v) => v,
            // Not SQLite at all, or SQLite without our table: not a journal.
            // Anything else (locked, unreadable) is reported as it is.
            Err(rusqlite::Error::SqliteFailure(e, msg))
                if e.code == rusqlite::ErrorCode::NotADatabase
                    || msg.as_deref().is_some_and(|m| m.starts_with("no such table")) =>
            {
                return Err(JournalError::NotAJournal(path.to_owned()))
            }
            Err(e) => return Err(sq(e)),
        };
        if format.as_deref() != Some(FORMAT) {
            return Err(JournalError::NotAJournal(path.to_owned()));
        }
        let version: i64 = conn
            .query_row("SELECT value FROM meta WHERE key = 'version'", [], |r| {
                r.get::<_, String>(0)
            })
            .map_err(sq)?
            .parse()
            .unwrap_or(-1);
        if version != VERSION {
            return Err(JournalError::Version { path: path.to_owned(), found: version });
        }
        conn.pragma_update(None, "journal_mode", "WAL").map_err(sq)?;
        Journal::from_conn(path, conn)
    }

    fn from_conn(path: &Path, conn: Connection) -> Result<Journal, JournalError> {
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(|source| JournalError::Sqlite { path: path.to_owned(), source })?;
        let last: Option<i64> = conn
            .query_row("SELECT max(seq) FROM entries", [], |r| r.get(0))
            .map_err(|source| JournalError::Sqlite { path: path.to_owned(), source })?;
        Ok(Journal {
            path: path.to_owned(),
            conn: Mutex::new(conn),
            last: Mutex::new(last.unwrap_or(0) as u64),
            appended: Condvar::new(),
        })
    }

    fn set_sync(&self, sync: SyncMode) -> Result<(), JournalError> {
        let level = match sync {
            SyncMode::Normal => "NORMAL",
            SyncMode::Full => "FULL",
        };
        self.conn().pragma_update(None, "synchronous", level).map_err(|e| self.err(e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This journal's identity, made at creation: tells one journal's
    /// history from another's (a replay destination remembers it).
    pub fn id(&self) -> Result<String, JournalError> {
        self.conn()
            .query_row("SELECT value FROM meta WHERE key = 'id'", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (every append is one statement), so a poisoned lock is usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, source: rusqlite::Error) -> JournalError {
        JournalError::Sqlite { path: self.path.clone(), source }
    }

    /// Appends one change and returns the committed entry. The entry is
    /// durable (per the sync mode) when this returns.
    pub fn append(&self, change: Change) -> Result<Entry, JournalError> {
        let op = change.op.unwrap_or(Op::Attr);
        let now = OffsetDateTime::now_utc();
        let time_ns = now.unix_timestamp_nanos() as i64;
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT INTO entries (time_ns, op, path, to_path, size, blake3, mode, mtime_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .and_then(|mut st| {
            st.execute(params![
                time_ns,
                op.as_str(),
                change.path,
                change.to,
                change.size.map(|s| s as i64),
                change.blake3,
                change.mode,
                change.mtime_ns,
            ])
        })
        .map_err(|e| self.err(e))?;
        let seq = conn.last_insert_rowid() as u64;
        drop(conn);
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            *last = (*last).max(seq);
        }
        self.appended.notify_all();
        Ok(Entry {
            seq,
            time: time_from_ns(time_ns),
            op,
            path: change.path,
            to: change.to,
            size: change.size,
            blake3: change.blake3,
            mode: change.mode,
            mtime: change.mtime_ns.map(time_from_ns),
        })
    }

    /// Appends an entry copied from another journal (a backup applying
    /// the primary's history), keeping its seq and time. The seq must be
    /// exactly the next one: a copy never leaves a gap or a duplicate.
    pub fn append_copy(&self, e: &Entry) -> Result<(), JournalError> {
        let conn = self.conn();
        let last: Option<i64> = conn
            .query_row("SELECT max(seq) FROM entries", [], |r| r.get(0))
            .map_err(|err| self.err(err))?;
        let expected = last.unwrap_or(0) as u64 + 1;
        if e.seq != expected {
            return Err(JournalError::OutOfOrder { path: self.path.clone(), expected, got: e.seq });
        }
        conn.prepare_cached(
            "INSERT INTO entries (seq, time_ns, op, path, to_path, size, blake3, mode, mtime_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .and_then(|mut st| {
            st.execute(params![
                e.seq as i64,
                e.time.unix_timestamp_nanos() as i64,
                e.op.as_str(),
                e.path,
                e.to,
                e.size.map(|s| s as i64),
                e.blake3,
                e.mode,
                e.mtime.map(|t| t.unix_timestamp_nanos() as i64),
            ])
        })
        .map_err(|err| self.err(err))?;
        drop(conn);
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            *last = (*last).max(e.seq);
        }
        self.appended.notify_all();
        Ok(())
    }

    /// Removes every entry with `seq > after` (a node that rejoins as a
    /// backup, after its unacknowledged tail went to quarantine). Returns
    /// how many were removed.
    pub fn truncate_after(&self, after: u64) -> Result<u64, JournalError> {
        let n = self
            .conn()
            .execute("DELETE FROM entries WHERE seq > ?1", params![after as i64])
            .map_err(|err| self.err(err))?;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        *last = (*last).min(after);
        Ok(n as u64)
    }

    /// The highest seq committed so far (0 for an empty journal), as read
    /// from the file, so that it also sees appends by another process.
    pub fn last_seq(&self) -> u64 {
        let from_db: Option<i64> = self
            .conn()
            .query_row("SELECT max(seq) FROM entries", [], |r| r.get(0))
            .ok()
            .flatten();
        let mine = *self.last.lock().unwrap_or_else(|p| p.into_inner());
        mine.max(from_db.unwrap_or(0) as u64)
    }

    /// Entries with `seq > since`, in order, at most `limit` of them.
    pub fn list(&self, since: u64, limit: Option<usize>) -> Result<Vec<Entry>, JournalError> {
        let limit = limit.map(|l| l as i64).unwrap_or(-1);
        let conn = self.conn();
        let mut st = conn
            .prepare_cached(
                "SELECT seq, time_ns, op, path, to_path, size, blake3, mode, mtime_ns
                 FROM entries WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map(params![since as i64, limit], row_to_raw)
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(self.check(row.map_err(|e| self.err(e))?)?);
        }
        Ok(out)
    }

    /// The entry with this seq, if any.
    pub fn get(&self, seq: u64) -> Result<Option<Entry>, JournalError> {
        let raw = self
            .conn()
            .query_row(
                "SELECT seq, time_ns, op, path, to_path, size, blake3, mode, mtime_ns
                 FROM entries WHERE seq = ?1",
                params![seq as i64],
                row_to_raw,
            )
            .optional()
            .map_err(|e| self.err(e))?;
        raw.map(|r| self.check(r)).transpose()
    }

    /// Blocks until an entry with `seq > after` that satisfies `pred` is
    /// committed, or `timeout` passes (then `Ok(None)`). Used by the FTP
    /// node to hold back a 226 until the upload is journaled, because the
    /// kernel releases files asynchronously after close(2).
    pub fn wait_for(
        &self,
        after: u64,
        timeout: Duration,
        pred: impl Fn(&Entry) -> bool,
    ) -> Result<Option<Entry>, JournalError> {
        let deadline = Instant::now() + timeout;
        let mut seen = after;
        loop {
            for e in self.list(seen, None)? {
                seen = e.seq;
                if pred(&e) {
                    return Ok(Some(e));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // Wake on our own appends at once; poll the file now and then
            // for appends made by another process.
            let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if *last <= seen {
                let wait = (deadline - now).min(Duration::from_millis(50));
                let _ = self.appended.wait_timeout(last, wait);
            }
        }
    }

    /// Counts for `drift journal stats`.
    pub fn stats(&self) -> Result<Stats, JournalError> {
        let conn = self.conn();
        let (entries, first, last, t0, t1, bytes): (i64, Option<i64>, Option<i64>, Option<i64>, Option<i64>, Option<i64>) = conn
            .query_row(
                "SELECT count(*), min(seq), max(seq), min(time_ns), max(time_ns),
                        sum(CASE WHEN op = 'write' THEN size ELSE 0 END) FROM entries",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .map_err(|e| self.err(e))?;
        let mut by_op = Vec::new();
        for op in [Op::Write, Op::Mkdir, Op::Rmdir, Op::Unlink, Op::Rename, Op::Attr] {
            let n: i64 = conn
                .query_row("SELECT count(*) FROM entries WHERE op = ?1", [op.as_str()], |r| {
                    r.get(0)
                })
                .map_err(|e| self.err(e))?;
            by_op.push((op.as_str().to_owned(), n as u64));
        }
        Ok(Stats {
            entries: entries as u64,
            first_seq: first.map(|v| v as u64),
            last_seq: last.map(|v| v as u64),
            first_time: t0.map(time_from_ns),
            last_time: t1.map(time_from_ns),
            by_op,
            bytes_written: bytes.unwrap_or(0) as u64,
        })
    }

    /// Turns a stored row into an [`Entry`], refusing rows that break the
    /// format (unknown op, missing fields) instead of printing garbage.
    fn check(&self, raw: RawRow) -> Result<Entry, JournalError> {
        let seq = raw.seq as u64;
        let bad = |why: &str| JournalError::Malformed {
            path: self.path.clone(),
            seq,
            why: why.to_owned(),
        };
        let op = Op::parse(&raw.op).ok_or_else(|| bad(&format!("unknown op {:?}", raw.op)))?;
        if !raw.path.starts_with('/') {
            return Err(bad("path does not start with /"));
        }
        match op {
            Op::Rename if raw.to.is_none() => return Err(bad("rename without `to`")),
            Op::Write if raw.size.is_none() || raw.blake3.is_none() => {
                return Err(bad("write without size or blake3"))
            }
            _ => {}
        }
        if let Some(h) = &raw.blake3 {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("blake3 is not 64 hex digits"));
            }
        }
        Ok(Entry {
            seq,
            time: time_from_ns(raw.time_ns),
            op,
            path: raw.path,
            to: raw.to,
            size: raw.size.map(|s| s as u64),
            blake3: raw.blake3,
            mode: raw.mode,
            mtime: raw.mtime_ns.map(time_from_ns),
        })
    }
}

struct RawRow {
    seq: i64,
    time_ns: i64,
    op: String,
    path: String,
    to: Option<String>,
    size: Option<i64>,
    blake3: Option<String>,
    mode: Option<u32>,
    mtime_ns: Option<i64>,
}

fn row_to_raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        seq: r.get(0)?,
        time_ns: r.get(1)?,
        op: r.get(2)?,
        path: r.get(3)?,
        to: r.get(4)?,
        size: r.get(5)?,
        blake3: r.get(6)?,
        mode: r.get(7)?,
        mtime_ns: r.get(8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_is_gap_free_across_threads_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let j = std::sync::Arc::new(Journal::create(&path, SyncMode::Normal).unwrap());
        std::thread::scope(|s| {
            for t in 0..4 {
                let j = j.clone();
                s.spawn(move || {
                    for i in 0..50 {
                        j.append(Change::new(Op::Mkdir, format!("/t{t}/{i}"))).unwrap();
                    }
                });
            }
        });
        drop(j);
        let j = Journal::open(&path).unwrap();
        let all = j.list(0, None).unwrap();
        assert_eq!(all.len(), 200);
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1);
        }
        assert_eq!(j.append(Change::new(Op::Rmdir, "/x")).unwrap().seq, 201);
    }

    #[test]
    fn refuses_files_that_are_not_journals() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "hello, not sqlite\n".repeat(100)).unwrap();
        assert!(matches!(Journal::open(&text), Err(JournalError::NotAJournal(_))));
        assert!(matches!(Journal::create(&text, SyncMode::Normal), Err(JournalError::NotAJournal(_))));
        assert_eq!(std::fs::read_to_string(&text).unwrap(), "hello, not sqlite\n".repeat(100));

        let other = dir.path().join("other.db");
        Connection::open(&other).unwrap().execute_batch("CREATE TABLE t (x)").unwrap();
        assert!(matches!(Journal::open(&other), Err(JournalError::NotAJournal(_))));
        assert!(matches!(Journal::open(&dir.path().join("nope")), Err(JournalError::Missing(_))));
    }

    #[test]
    fn json_shape_matches_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(&dir.path().join("j.db"), SyncMode::Normal).unwrap();
        let mut c = Change::new(Op::Write, "/a/b");
        c.size = Some(3);
        c.blake3 = Some(blake3::hash(b"abc").to_hex().to_string());
        c.mode = Some(0o644);
        let e = j.append(c).unwrap();
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["seq"], 1);
        assert_eq!(v["op"], "write");
        assert_eq!(v["path"], "/a/b");
        assert_eq!(v["size"], 3);
        assert_eq!(v["mode"], 0o644);
        assert_eq!(v["blake3"].as_str().unwrap().len(), 64);
        assert!(v.get("to").is_none());
        let t = v["time"].as_str().unwrap();
        assert!(OffsetDateTime::parse(t, &Rfc3339).is_ok(), "{t}");

        let mut r = Change::new(Op::Rename, "/a/b");
        r.to = Some("/a/c".into());
        let v = serde_json::to_value(j.append(r).unwrap()).unwrap();
        assert_eq!(v["to"], "/a/c");
    }

    #[test]
    fn wait_for_sees_later_appends() {
        let dir = tempfile::tempdir().unwrap();
        let j = std::sync::Arc::new(Journal::create(&dir.path().join("j.db"), SyncMode::Normal).unwrap());
        let j2 = j.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            j2.append(Change::new(Op::Mkdir, "/other")).unwrap();
            j2.append(Change::new(Op::Mkdir, "/wanted")).unwrap();
        });
        let got = j.wait_for(0, Duration::from_secs(5), |e| e.path == "/wanted").unwrap();
        t.join().unwrap();
        assert_eq!(got.map(|e| e.seq), Some(2));
        let none = j.wait_for(2, Duration::from_millis(20), |_| true).unwrap();
        assert!(none.is_none());
    }
}
