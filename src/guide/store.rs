//! The guide's durable store: one SQLite database (`guide.db` in the data
//! directory, WAL, `synchronous = FULL`) holding the history, the initial
//! state versions, each node's last status, the migrations and a few meta
//! values (epoch, primary: see [`super::coord`]). What the guide answered
//! `Stored` for is committed here first, so it survives SIGKILL and power
//! loss. Blobs live next to it in a [`drift_fs::blobs::BlobStore`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use crate::cluster::msg::WireEntry;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("guide store {path}: {source}")]
    Sql { path: PathBuf, source: rusqlite::Error },
    #[error("guide store {path}: history entry {seq} is damaged: {why}")]
    Corrupt { path: PathBuf, seq: u64, why: String },
    #[error("guide store {path}: {why}")]
    Refused { path: PathBuf, why: String },
}

/// One history entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub epoch: u64,
    pub wire: WireEntry,
    pub fingerprint: String,
    /// A write whose content the primary no longer had (superseded): no blob.
    pub absent: bool,
}

impl StoredEntry {
    pub fn seq(&self) -> u64 {
        self.wire.seq
    }
}

/// One initial-state version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialState {
    pub version: u64,
    pub users: String,
    pub service: String,
}

pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY,
    epoch INTEGER NOT NULL,
    entry TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    absent INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS initial_state (
    version INTEGER PRIMARY KEY,
    users TEXT NOT NULL,
    service TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (id TEXT PRIMARY KEY, status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS members (id TEXT PRIMARY KEY, since TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS migrations (id INTEGER PRIMARY KEY AUTOINCREMENT, record TEXT NOT NULL);
";

fn now_rfc3339() -> String {
    drift_fs::journal::format_time(time::OffsetDateTime::now_utc())
}

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let sql = |source| StoreError::Sql { path: path.to_owned(), source };
        let conn = Connection::open(path).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        Ok(Store { path: path.to_owned(), conn: Mutex::new(conn) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sql { path: self.path.clone(), source }
    }

    /// Runs `f` on the connection (the lock is held for its duration).
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, rusqlite::Error>) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(self.err())
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional())
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value", [key, value])
                .map(|_| ())
        })
    }

    /// The whole history, in seq order, checked for gaps.
    pub fn load_history(&self) -> Result<Vec<StoredEntry>, StoreError> {
        let rows: Vec<(i64, i64, String, String, bool)> = self.with(|c| {
            let mut st = c.prepare("SELECT seq, epoch, entry, fingerprint, absent FROM history ORDER BY seq")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
            rows.collect()
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, (seq, epoch, json, fingerprint, absent)) in rows.into_iter().enumerate() {
            let (seq, epoch) = (seq as u64, epoch as u64);
            let corrupt = |why: String| StoreError::Corrupt { path: self.path.clone(), seq, why };
            if seq != i as u64 + 1 {
                return Err(corrupt(format!("expected seq {}", i + 1)));
            }
            let wire: WireEntry = serde_json::from_str(&json).map_err(|e| corrupt(e.to_string()))?;
            if wire.seq != seq {
                return Err(corrupt(format!("the entry says seq {}", wire.seq)));
            }
            out.push(StoredEntry { epoch, wire, fingerprint, absent });
        }
        Ok(out)
    }

    /// Appends `entries` (which must continue the stored history) in one
    /// transaction; when this returns they are durable.
    pub fn append(&self, entries: &[StoredEntry]) -> Result<(), StoreError> {
        let Some(first) = entries.first() else { return Ok(()) };
        let first_seq = first.seq();
        let last: i64 = self.with(|c| c.query_row("SELECT COALESCE(MAX(seq), 0) FROM history", [], |r| r.get(0)))?;
        let last = last as u64;
        if first_seq != last + 1 {
            return Err(StoreError::Refused { path: self.path.clone(), why: format!("entries from {first_seq} do not continue the history at {last}") });
        }
        let encoded: Vec<String> = entries.iter().map(|e| serde_json::to_string(&e.wire).unwrap_or_default()).collect();
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare("INSERT INTO history (seq, epoch, entry, fingerprint, absent) VALUES (?1, ?2, ?3, ?4, ?5)")?;
                for (e, json) in entries.iter().zip(&encoded) {
                    st.execute(params![e.seq() as i64, e.epoch as i64, json, e.fingerprint, e.absent])?;
                }
            }
            tx.commit()
        })
    }

    pub fn latest_initial_state(&self) -> Result<Option<InitialState>, StoreError> {
        self.with(|c| {
            c.query_row("SELECT version, users, service FROM initial_state ORDER BY version DESC LIMIT 1", [], |r| {
                Ok(InitialState { version: r.get::<_, i64>(0)? as u64, users: r.get(1)?, service: r.get(2)? })
            })
            .optional()
        })
    }

    /// Stores a new version unless it equals the latest; returns the new
    /// version, or `None` when nothing changed.
    pub fn put_initial_state(&self, users: &str, service: &str) -> Result<Option<InitialState>, StoreError> {
        let latest = self.latest_initial_state()?;
        if latest.as_ref().is_some_and(|l| l.users == users && l.service == service) {
            return Ok(None);
        }
        let version = latest.map_or(1, |l| l.version + 1);
        let at = now_rfc3339();
        self.with(|c| c.execute("INSERT INTO initial_state (version, users, service, at) VALUES (?1, ?2, ?3, ?4)", params![version as i64, users, service, at]))?;
        Ok(Some(InitialState { version, users: users.to_owned(), service: service.to_owned() }))
    }

    /// Saves the last status of several nodes in one transaction.
    pub fn save_nodes(&self, nodes: &[(String, serde_json::Value)]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            for (id, status) in nodes {
                tx.execute(
                    "INSERT INTO nodes (id, status) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET status = excluded.status",
                    params![id, status.to_string()],
                )?;
            }
            tx.commit()
        })
    }

    pub fn load_nodes(&self) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        let rows: Vec<(String, String)> = self.with(|c| {
            let mut st = c.prepare("SELECT id, status FROM nodes ORDER BY id")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        Ok(rows.into_iter().map(|(id, s)| (id, serde_json::from_str(&s).unwrap_or(serde_json::Value::Null))).collect())
    }

    pub fn add_migration(&self, record: &serde_json::Value) -> Result<(), StoreError> {
        self.with(|c| c.execute("INSERT INTO migrations (record) VALUES (?1)", [record.to_string()]).map(|_| ()))
    }

    /// The last `limit` migrations, oldest first.
    pub fn migrations(&self, limit: usize) -> Result<Vec<serde_json::Value>, StoreError> {
        let rows: Vec<String> = self.with(|c| {
            let mut st = c.prepare("SELECT record FROM (SELECT id, record FROM migrations ORDER BY id DESC LIMIT ?1) ORDER BY id")?;
            let rows = st.query_map([limit as i64], |r| r.get(0))?;
            rows.collect()
        })?;
        Ok(rows.into_iter().filter_map(|s| serde_json::from_str(&s).ok()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn entry(seq: u64, epoch: u64, path: &str) -> StoredEntry {
        let wire = WireEntry { seq, time_ns: seq as i64, op: "mkdir".into(), path: path.into(), to: None, size: None, blake3: None, mode: None, mtime_ns: None };
        StoredEntry { epoch, fingerprint: wire.fingerprint(), wire, absent: false }
    }

    #[test]
    fn a_reopened_store_has_everything_and_refuses_a_gap() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("guide.db");
        {
            let s = Store::open(&p).unwrap();
            s.append(&[entry(1, 1, "/a"), entry(2, 1, "/b")]).unwrap();
            s.append(&[entry(3, 2, "/c")]).unwrap();
            assert!(s.append(&[entry(5, 2, "/e")]).is_err(), "a gap is refused");
            assert!(s.append(&[entry(3, 2, "/c")]).is_err(), "a duplicate is refused");
            s.put_initial_state("u", "s").unwrap();
            assert!(s.put_initial_state("u", "s").unwrap().is_none());
            s.add_migration(&serde_json::json!({"epoch": 2})).unwrap();
            s.set_meta("epoch", "2").unwrap();
        }
        let s = Store::open(&p).unwrap();
        let h = s.load_history().unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h[2], entry(3, 2, "/c"));
        assert_eq!(s.latest_initial_state().unwrap().unwrap().version, 1);
        assert_eq!(s.put_initial_state("u2", "s").unwrap().unwrap().version, 2);
        assert_eq!(s.migrations(10).unwrap().len(), 1);
        assert_eq!(s.meta("epoch").unwrap().as_deref(), Some("2"));
    }
}
