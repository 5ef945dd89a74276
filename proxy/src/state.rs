//! The proxy's active state in SQLite (`state_db`): each live session
//! (user, client address, working directory, type, pending REST, the
//! epoch of its backend) and each running transfer (operation, path,
//! bytes done, spool file, epoch, state). A transfer's row is written
//! before it starts and removed once the client has its final reply.
//! `drift proxy status` reads it. Rows of a previous run are removed at
//! start: a restarted proxy resumes nothing yet.
//!
//! Writes are short and serialized by one mutex; a failed write is
//! logged and never fails a session (the state is for operators).

use std::path::Path;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};
use tracing::warn;

/// How often a running transfer's byte count is written.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY, client TEXT NOT NULL, user TEXT, cwd TEXT, type TEXT,
    rest INTEGER NOT NULL DEFAULT 0, epoch INTEGER, since INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS transfers (
    session INTEGER PRIMARY KEY, op TEXT NOT NULL, path TEXT NOT NULL, bytes INTEGER NOT NULL DEFAULT 0,
    spool TEXT, epoch INTEGER NOT NULL, state TEXT NOT NULL, since INTEGER NOT NULL);
";

pub struct StateDb {
    conn: Mutex<Connection>,
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl StateDb {
    /// Opens (creating) the database and empties it.
    pub fn open(path: &Path) -> rusqlite::Result<StateDb> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch("DELETE FROM sessions; DELETE FROM transfers;")?;
        Ok(StateDb { conn: Mutex::new(conn) })
    }

    fn run(&self, what: &str, f: impl FnOnce(&Connection) -> rusqlite::Result<usize>) {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f(&conn) {
            warn!("proxy state: {what}: {e}");
        }
    }

    pub fn session_open(&self, id: u64, client: &str) {
        self.run("session", |c| c.execute("INSERT OR REPLACE INTO sessions (id, client, since) VALUES (?1, ?2, ?3)", params![id as i64, client, now()]));
    }

    /// The session's user and what a new backend restores.
    pub fn session_update(&self, id: u64, user: Option<&str>, cwd: Option<&str>, type_: Option<&str>, rest: u64, epoch: Option<u64>) {
        self.run("session", |c| {
            c.execute(
                "UPDATE sessions SET user = ?2, cwd = ?3, type = ?4, rest = ?5, epoch = ?6 WHERE id = ?1",
                params![id as i64, user, cwd, type_, rest as i64, epoch.map(|e| e as i64)],
            )
        });
    }

    pub fn session_close(&self, id: u64) {
        self.run("session", |c| c.execute("DELETE FROM sessions WHERE id = ?1", params![id as i64]));
        self.transfer_end(id);
    }

    pub fn transfer_start(&self, session: u64, op: &str, path: &str, spool: Option<&Path>, epoch: u64) {
        self.run("transfer", |c| {
            c.execute(
                "INSERT OR REPLACE INTO transfers (session, op, path, bytes, spool, epoch, state, since) VALUES (?1, ?2, ?3, 0, ?4, ?5, 'running', ?6)",
                params![session as i64, op, path, spool.map(|p| p.display().to_string()), epoch as i64, now()],
            )
        });
    }

    /// `state`: `running`, `waiting` (for a new primary) or `resuming`.
    pub fn transfer_state(&self, session: u64, bytes: u64, epoch: u64, state: &str) {
        self.run("transfer", |c| c.execute("UPDATE transfers SET bytes = ?2, epoch = ?3, state = ?4 WHERE session = ?1", params![session as i64, bytes as i64, epoch as i64, state]));
    }

    pub fn transfer_end(&self, session: u64) {
        self.run("transfer", |c| c.execute("DELETE FROM transfers WHERE session = ?1", params![session as i64]));
    }
}

/// Throttles progress writes of one transfer.
pub struct Progress {
    last: Instant,
}

impl Progress {
    pub fn new() -> Progress {
        Progress { last: Instant::now() }
    }

    /// True at most every [`PROGRESS_EVERY`].
    pub fn due(&mut self) -> bool {
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = Instant::now();
            true
        } else {
            false
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// Rows as (column, value as text) pairs.
pub type Rows = Vec<Vec<(String, String)>>;

/// The live sessions and transfers, read-only (for `drift proxy status`,
/// another process).
pub fn read(path: &Path) -> rusqlite::Result<(Rows, Rows)> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let rows = |sql: &str| -> rusqlite::Result<Rows> {
        let mut st = conn.prepare(sql)?;
        let names: Vec<String> = st.column_names().map(|s| s.to_string()).collect();
        let out = st.query_map([], |r| {
            let mut row = Vec::new();
            for (i, n) in names.iter().enumerate() {
                let v: rusqlite::types::Value = r.get(i)?;
                let text = match v {
                    rusqlite::types::Value::Null => String::new(),
                    rusqlite::types::Value::Integer(i) => i.to_string(),
                    rusqlite::types::Value::Real(f) => f.to_string(),
                    rusqlite::types::Value::Text(t) => t,
                    rusqlite::types::Value::Blob(_) => "(blob)".into(),
                };
                row.push((n.clone(), text));
            }
            Ok(row)
        })?;
        out.collect()
    };
    Ok((
        rows("SELECT id, user, client, cwd, type, rest, epoch, since FROM sessions ORDER BY id")?,
        rows("SELECT session, op, path, bytes, spool, epoch, state, since FROM transfers ORDER BY session")?,
    ))
}
