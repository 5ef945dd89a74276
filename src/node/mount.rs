//! The node's view of drift-fs: mounting from the node configuration and
//! the [`CommitLog`] over the journal that holds back a 226 until an
//! upload is journaled.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use drift_fs::{ContentHints, ContentIndex, Journal, Known, Mount, MountConfig, Op, SyncMode};

use super::config::{NodeConfig, StorageMode};
use super::storage::CommitLog;

/// [`CommitLog`] over a drift-fs journal.
#[derive(Debug)]
pub struct JournalCommits {
    journal: Arc<Journal>,
    hints: Arc<ContentHints>,
    /// Files' latest writes, for `HASH BLAKE3` without reading.
    content: ContentIndex,
}

impl JournalCommits {
    pub fn new(mount: &Mount) -> Self {
        let journal = mount.journal();
        JournalCommits {
            content: ContentIndex::new(journal.clone()),
            journal,
            hints: mount.content_hints(),
        }
    }
}

impl CommitLog for JournalCommits {
    fn mark(&self) -> u64 {
        self.journal.last_seq()
    }

    fn wait_written(&self, after: u64, path: &str, timeout: Duration) -> io::Result<Option<u64>> {
        self.journal
            .wait_for(after, timeout, |e| e.op == Op::Write && e.path == path)
            .map(|e| e.map(|e| e.seq))
            .map_err(io::Error::other)
    }

    fn known_content(&self, path: &str) -> io::Result<Option<Known>> {
        self.content.lookup(path).map_err(io::Error::other)
    }

    fn offer(&self, path: &str, ino: u64, size: u64, hash: blake3::Hash) {
        self.hints.offer(path, ino, size, hash);
    }
}

/// Mounts drift-fs as the configuration says; `None` in plain mode.
pub fn mount(cfg: &NodeConfig) -> Result<Option<Mount>, drift_fs::FsError> {
    match &cfg.mode {
        StorageMode::Plain => Ok(None),
        StorageMode::Fuse {
            mountpoint,
            journal,
            sync_full,
        } => {
            let mut mc = MountConfig::new(&cfg.backing, mountpoint, journal);
            mc.sync = if *sync_full { SyncMode::Full } else { SyncMode::Normal };
            Mount::spawn(mc).map(Some)
        }
    }
}
