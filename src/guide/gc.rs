//! Blob collection: a blob no file of the history's current tree needs
//! (its write was superseded, the file deleted) is removed. The primary
//! sends contents before the entries that name them, so a blob is kept
//! unless it arrived at least [`MIN_AGE`] before the history last stored
//! a batch: the contents of a batch still on its way are never collected,
//! however long they take to arrive over a slow link.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::state::Guide;

const EVERY: Duration = Duration::from_secs(30);
/// Blobs changed (by ctime) less than this before the last stored batch
/// are never collected.
pub const MIN_AGE: Duration = Duration::from_secs(120);

pub async fn run(guide: Arc<Guide>) {
    loop {
        tokio::time::sleep(EVERY).await;
        let g = guide.clone();
        match tokio::task::spawn_blocking(move || collect(&g)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => info!(removed = n, "blobs no live file needs were collected"),
            Ok(Err(e)) => warn!("blob collection: {e}"),
            Err(e) => warn!("blob collection task: {e}"),
        }
    }
}

/// One pass; returns how many blobs it removed.
pub fn collect(guide: &Guide) -> std::io::Result<u64> {
    let live: HashSet<String> = guide.history().live_hashes();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let last_store = guide.last_store_unix.load(std::sync::atomic::Ordering::Relaxed);
    let mut candidates = Vec::new();
    for fan in std::fs::read_dir(guide.blobs.root())? {
        let fan = fan?;
        if !fan.file_type()?.is_dir() {
            continue;
        }
        for blob in std::fs::read_dir(fan.path())? {
            let blob = blob?;
            let name = blob.file_name().to_string_lossy().into_owned();
            if drift_fs::blobs::check_hash(&name).is_err() || live.contains(&name) {
                continue;
            }
            match blob.metadata() {
                Ok(md) if old_enough(md.ctime(), now, last_store) => candidates.push((name, blob.path())),
                _ => {}
            }
        }
    }
    if candidates.is_empty() {
        return Ok(0);
    }
    // Under the history lock: no entry can be stored meanwhile (storing
    // checks that its blobs exist under the write lock).
    let h = guide.history();
    let live = h.live_hashes();
    let mut removed = 0;
    for (name, path) in candidates {
        if live.contains(&name) {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                removed += 1;
                debug!(blob = %name, "collected");
            }
            Err(e) => warn!(blob = %name, "cannot remove: {e}"),
        }
    }
    drop(h);
    Ok(removed)
}

/// Whether a blob that arrived at `ctime` may be collected (if no live
/// file needs it), `now` and the last stored batch at `last_store` (all
/// unix seconds).
fn old_enough(ctime: i64, now: i64, last_store: i64) -> bool {
    now.min(last_store) - ctime >= MIN_AGE.as_secs() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_of_a_batch_still_on_its_way_are_never_old_enough() {
        let min = MIN_AGE.as_secs() as i64;
        let t = 1_000_000;
        // Arrived after the last stored batch: kept, however long ago.
        assert!(!old_enough(t + 1, t + 10 * min, t));
        // Arrived well before the last stored batch: collectable.
        assert!(old_enough(t - min, t + 10 * min, t));
        // Arrived shortly before it: kept for MIN_AGE more.
        assert!(!old_enough(t - min / 2, t + 10 * min, t));
        // A clock stepped back never makes a fresh blob collectable.
        assert!(!old_enough(t, t - 5, t));
    }
}
