//! What the agent keeps on disk in its state directory: the highest seq
//! the guide confirmed (`Stored`, or our own `Applied`) and the highest
//! epoch seen, in `agent.json`, replaced atomically.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    pub confirmed_seq: u64,
    pub epoch: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("agent state {path}: {source}")]
pub struct PersistError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The state directory and its `agent.json`.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    current: std::sync::Mutex<Persisted>,
}

impl Store {
    /// Opens (creating) the state directory and reads what was kept; an
    /// unreadable file counts as nothing confirmed (the guide then checks
    /// the whole tail).
    pub fn open(dir: &Path) -> Result<Store, PersistError> {
        std::fs::create_dir_all(dir).map_err(|source| PersistError { path: dir.to_owned(), source })?;
        let file = dir.join("agent.json");
        let current = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %file.display(), error = %e, "agent state unreadable; starting from nothing confirmed");
                Persisted::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(source) => return Err(PersistError { path: file, source }),
        };
        Ok(Store { dir: dir.to_owned(), current: std::sync::Mutex::new(current) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn get(&self) -> Persisted {
        *self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes and writes the state (only if it changed).
    pub fn update(&self, f: impl FnOnce(&mut Persisted)) -> Result<(), PersistError> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = *cur;
        f(&mut next);
        if next == *cur {
            return Ok(());
        }
        let file = self.dir.join("agent.json");
        // Not fsynced: the confirmed seq only narrows the tail the guide
        // checks; an older value after a machine crash is still correct.
        write_file(&file, &serde_json::to_vec(&next).unwrap_or_default(), false)?;
        *cur = next;
        Ok(())
    }
}

/// Writes `bytes` to `path` through a temporary file in the same
/// directory, fsynced, then renamed over it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PersistError> {
    write_file(path, bytes, true)
}

fn write_file(path: &Path, bytes: &[u8], fsync: bool) -> Result<(), PersistError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let err = |source| PersistError { path: path.to_owned(), source };
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp-{}-{n}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        if fsync {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_across_opens() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("st")).unwrap();
        assert_eq!(s.get(), Persisted::default());
        s.update(|p| {
            p.confirmed_seq = 7;
            p.epoch = 2;
        })
        .unwrap();
        let s = Store::open(&d.path().join("st")).unwrap();
        assert_eq!(s.get(), Persisted { confirmed_seq: 7, epoch: 2 });
    }
}
