//! `drift mount`: the journaling filesystem in the foreground.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use drift_fs::{Mount, MountConfig, SyncMode};
use tracing::info;

#[derive(Debug, clap::Args)]
#[command(after_help = "Runs in the foreground until SIGINT or SIGTERM (then unmounts cleanly and \
exits 0) or until the mount is unmounted from outside (`umount MOUNTPOINT`).

Every completed change made through MOUNTPOINT is appended to the journal: a file \
written and closed (`write`, with its size and BLAKE3), mkdir, rmdir, unlink, rename \
and chmod/utimens (`attr`). Inspect it with `drift journal list --journal FILE`.

Symbolic links, hard links and device nodes cannot be created through the mount \
(EPERM); existing symlinks in the backing directory are shown as they are. \
Ownership changes are applied but not journaled. A new file or directory gets exactly \
the mode its creator asked for minus the creator's umask (drift's own umask does not \
apply).

If an earlier drift process on MOUNTPOINT was killed (SIGKILL, out of memory), its dead \
mount (\"Transport endpoint is not connected\") is detached, with a log line, and the \
journal continues where it stopped. Anything else mounted on MOUNTPOINT is refused.")]
pub struct MountArgs {
    /// Directory whose content the mount shows (must exist).
    pub backing: PathBuf,
    /// Empty directory to mount on (must exist, must not be a mount point).
    pub mountpoint: PathBuf,
    /// Journal file (SQLite); created if missing. Must lie outside both
    /// directories.
    #[arg(long, value_name = "FILE")]
    pub journal: PathBuf,
    /// What a journaled change survives: `normal` survives a crash of this
    /// process (kill -9); `full` also survives a machine crash or power
    /// loss (fsyncs file data and journal before acknowledging; slower).
    #[arg(long, value_enum, default_value = "normal")]
    pub sync: SyncArg,
    /// Serve reads and writes in the daemon instead of through the
    /// kernel's FUSE passthrough (used automatically where available).
    #[arg(long)]
    pub no_passthrough: bool,
    /// Let users other than the one running drift use the mount (the
    /// kernel then enforces permission bits; costs some metadata speed).
    /// When drift runs as root, what a user creates belongs to that user
    /// (and to their group, or the directory's under a set-group-ID
    /// directory), as on a local filesystem; otherwise to drift's user.
    #[arg(long)]
    pub allow_other: bool,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SyncArg {
    Normal,
    Full,
}

impl From<SyncArg> for SyncMode {
    fn from(s: SyncArg) -> SyncMode {
        match s {
            SyncArg::Normal => SyncMode::Normal,
            SyncArg::Full => SyncMode::Full,
        }
    }
}

pub fn run(args: MountArgs) -> anyhow::Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let mut cfg = MountConfig::new(&args.backing, &args.mountpoint, &args.journal);
    cfg.sync = args.sync.into();
    cfg.passthrough = !args.no_passthrough;
    cfg.threads = args.threads.into();
    cfg.allow_other = args.allow_other;
    let mount = Mount::spawn(cfg).context("cannot mount")?;
    while !stop.load(Ordering::Relaxed) && mount.is_alive() {
        std::thread::sleep(Duration::from_millis(50));
    }
    if mount.is_alive() {
        info!("signal received, unmounting");
    } else {
        info!("unmounted from outside");
    }
    mount.unmount().context("unmounting")?;
    Ok(ExitCode::SUCCESS)
}
