//! Readahead of the mount's own page cache.
//!
//! The kernel gives a FUSE connection the default readahead window
//! (128 KiB), and the `max_readahead` a daemon answers in FUSE_INIT can
//! only lower it, never raise it. Reads that go through the mount's page
//! cache (everything without kernel passthrough, and whenever passthrough
//! is refused for a file) then reach the daemon in 128 KiB steps with a
//! short window ahead, while the backing disk may read megabytes ahead:
//! a cold sequential read falls behind the backing directory's. The
//! window is a property of the connection's BDI, which root can set in
//! sysfs, so the mount gives its connection the backing device's window
//! (at least [`FLOOR_KB`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tracing::{debug, info};

/// The least readahead the mount asks for: one maximal FUSE read.
pub const FLOOR_KB: u64 = 1024;

fn bdi_knob(dev: u64) -> PathBuf {
    PathBuf::from(format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(dev), libc::minor(dev)))
}

/// The readahead window (KiB) of the device holding `p`, if sysfs says.
fn window_of(p: &Path) -> Option<u64> {
    let dev = std::fs::metadata(p).ok()?.dev();
    std::fs::read_to_string(bdi_knob(dev)).ok()?.trim().parse().ok()
}

/// Sets the FUSE connection's readahead on `mountpoint` to the backing
/// directory's device's (at least [`FLOOR_KB`]). Best effort: without
/// the right to write sysfs (not root, a read-only /sys in a container)
/// the mount works with the kernel's default, and a log line says so.
pub fn match_backing(mountpoint: &Path, backing: &Path) {
    let want = window_of(backing).unwrap_or(0).max(FLOOR_KB);
    let dev = match std::fs::metadata(mountpoint) {
        Ok(md) => md.dev(),
        Err(e) => {
            debug!(mountpoint = %mountpoint.display(), "cannot stat the new mount to set its readahead: {e}");
            return;
        }
    };
    let knob = bdi_knob(dev);
    let have: Option<u64> = std::fs::read_to_string(&knob).ok().and_then(|s| s.trim().parse().ok());
    if have.is_some_and(|h| h >= want) {
        return;
    }
    match std::fs::write(&knob, format!("{want}\n")) {
        Ok(()) => debug!(knob = %knob.display(), kb = want, "mount readahead set to the backing device's"),
        Err(e) => info!(
            knob = %knob.display(),
            "cannot raise the mount's readahead to {want} KiB ({e}); cold reads that do not use kernel passthrough will be slower"
        ),
    }
}

/// The current readahead window (KiB) of the mount on `mountpoint`.
pub fn window(mountpoint: &Path) -> Option<u64> {
    window_of(mountpoint)
}
