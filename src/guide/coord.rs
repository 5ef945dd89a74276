//! The coordination interface: the only way the epoch and the primary
//! change, and where membership is kept. One narrow trait so a later
//! issue can put it on etcd (a transaction checking the leader's fencing
//! token); [`SqliteCoord`] is the embedded implementation, in the guide's
//! own store, for a single guide.
//!
//! The epoch never goes backwards: [`Coordination::compare_and_set`] only
//! moves it forward, from the epoch the caller read, durably.

use std::sync::Arc;

use super::store::{Store, StoreError};

/// Who leads which epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoordState {
    /// 0 until the first primary (bootstrap).
    pub epoch: u64,
    pub primary: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the epoch can only move forward ({from} -> {to} refused)")]
    Backwards { from: u64, to: u64 },
    #[error("coordination state is damaged: {0}")]
    Corrupt(String),
}

pub trait Coordination: Send + Sync {
    /// The current epoch and primary.
    fn load(&self) -> Result<CoordState, CoordError>;
    /// Sets `next` if the stored epoch is still `expect`; returns whether
    /// it did (false: someone else moved it first). `next.epoch` must be
    /// above `expect`.
    fn compare_and_set(&self, expect: u64, next: &CoordState) -> Result<bool, CoordError>;
    /// Records a node id as a member of the cluster (idempotent).
    fn join(&self, node: &str) -> Result<(), CoordError>;
    /// Every node id that ever joined.
    fn members(&self) -> Result<Vec<String>, CoordError>;
}

/// The embedded implementation: the `meta` and `members` tables of the
/// guide's store, changed in `synchronous = FULL` transactions.
pub struct SqliteCoord {
    store: Arc<Store>,
}

impl SqliteCoord {
    pub fn new(store: Arc<Store>) -> SqliteCoord {
        SqliteCoord { store }
    }
}

fn read(c: &rusqlite::Connection) -> Result<(Option<String>, Option<String>), rusqlite::Error> {
    use rusqlite::OptionalExtension;
    let get = |k: &str| c.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get::<_, String>(0)).optional();
    Ok((get("epoch")?, get("primary")?))
}

fn parse(epoch: Option<String>, primary: Option<String>) -> Result<CoordState, CoordError> {
    let epoch = match epoch {
        None => 0,
        Some(e) => e.parse().map_err(|_| CoordError::Corrupt(format!("epoch {e:?}")))?,
    };
    Ok(CoordState { epoch, primary: primary.filter(|p| !p.is_empty()) })
}

impl Coordination for SqliteCoord {
    fn load(&self) -> Result<CoordState, CoordError> {
        let (e, p) = self.store.with(|c| read(c))?;
        parse(e, p)
    }

    fn compare_and_set(&self, expect: u64, next: &CoordState) -> Result<bool, CoordError> {
        if next.epoch <= expect {
            return Err(CoordError::Backwards { from: expect, to: next.epoch });
        }
        let epoch = next.epoch.to_string();
        let primary = next.primary.clone().unwrap_or_default();
        let done = self.store.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let (e, _) = read(&tx)?;
            let current: u64 = e.and_then(|e| e.parse().ok()).unwrap_or(0);
            if current != expect {
                return Ok(false);
            }
            let set = "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value";
            tx.execute(set, ["epoch", epoch.as_str()])?;
            tx.execute(set, ["primary", primary.as_str()])?;
            tx.commit()?;
            Ok(true)
        })?;
        Ok(done)
    }

    fn join(&self, node: &str) -> Result<(), CoordError> {
        let since = drift_fs::journal::format_time(time::OffsetDateTime::now_utc());
        self.store.with(|c| c.execute("INSERT OR IGNORE INTO members (id, since) VALUES (?1, ?2)", [node, since.as_str()]).map(|_| ()))?;
        Ok(())
    }

    fn members(&self) -> Result<Vec<String>, CoordError> {
        Ok(self.store.with(|c| {
            let mut st = c.prepare("SELECT id FROM members ORDER BY id")?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect()
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_only_moves_forward_from_what_was_read_and_survives_reopening() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("guide.db");
        {
            let c = SqliteCoord::new(Arc::new(Store::open(&p).unwrap()));
            assert_eq!(c.load().unwrap(), CoordState::default());
            let one = CoordState { epoch: 1, primary: Some("n1".into()) };
            assert!(c.compare_and_set(0, &one).unwrap());
            assert!(!c.compare_and_set(0, &CoordState { epoch: 1, primary: Some("n2".into()) }).unwrap(), "a stale read loses");
            assert!(matches!(c.compare_and_set(1, &CoordState { epoch: 1, primary: None }), Err(CoordError::Backwards { .. })));
            assert!(c.compare_and_set(1, &CoordState { epoch: 2, primary: Some("n2".into()) }).unwrap());
            c.join("n1").unwrap();
            c.join("n1").unwrap();
        }
        let c = SqliteCoord::new(Arc::new(Store::open(&p).unwrap()));
        assert_eq!(c.load().unwrap(), CoordState { epoch: 2, primary: Some("n2".into()) });
        assert_eq!(c.members().unwrap(), vec!["n1".to_string()]);
    }
}
