//! Helpers shared by the end-to-end tests: run the real `drift` binary,
//! mount for real, read the journal through the CLI.
#![allow(dead_code)]

pub mod cluster;
pub mod cmd_node;
pub mod fs_restart;
pub mod node;
pub mod ops_node;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn drift_bin() -> &'static str {
    env!("CARGO_BIN_EXE_drift")
}

pub fn drift() -> Command {
    let mut c = Command::new(drift_bin());
    c.env("DRIFT_LOG", "warn");
    c
}

/// Runs `drift ARGS`, returning its output whatever the status.
pub fn run(args: &[&str]) -> Output {
    drift().args(args).output().expect("running drift")
}

/// Runs `drift ARGS` and insists it succeeds; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "drift {args:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub fn is_mounted(p: &Path) -> bool {
    let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    drift_fs::mount::is_mountpoint(&p)
}

/// Polls `cond` every 10 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// A scratch area with `backing/`, `mnt/` and a journal path.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub backing: PathBuf,
    pub mnt: PathBuf,
    pub journal: PathBuf,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        let backing = dir.path().join("backing");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&backing).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let journal = dir.path().join("journal.db");
        Scratch { dir, backing, mnt, journal }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn mount(&self) -> MountProc {
        MountProc::start(&self.backing, &self.mnt, &self.journal, &[])
    }

    pub fn entries(&self) -> Vec<serde_json::Value> {
        entries(&self.journal, 0)
    }
}

/// All journal entries after `since`, via `drift journal list --json`.
pub fn entries(journal: &Path, since: u64) -> Vec<serde_json::Value> {
    ok(&["journal", "list", "--journal", journal.to_str().unwrap(), "--since", &since.to_string(), "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// A running `drift mount` process. Dropping it stops it and makes sure
/// nothing stays mounted.
pub struct MountProc {
    pub child: Option<Child>,
    pub mnt: PathBuf,
}

impl MountProc {
    pub fn start(backing: &Path, mnt: &Path, journal: &Path, extra: &[&str]) -> MountProc {
        let child = drift()
            .arg("mount")
            .arg(backing)
            .arg(mnt)
            .arg("--journal")
            .arg(journal)
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning drift mount");
        let mut m = MountProc { child: Some(child), mnt: mnt.to_owned() };
        let up = wait_until(Duration::from_secs(10), || {
            is_mounted(mnt) || m.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some())
        });
        assert!(up && is_mounted(mnt), "drift mount did not come up on {}", mnt.display());
        m
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Sends `sig` and waits (bounded) for the process; returns its status.
    pub fn stop_with(&mut self, sig: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("already stopped");
        unsafe { libc::kill(child.id() as i32, sig) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                return st;
            }
            assert!(Instant::now() < deadline, "drift mount did not exit after signal {sig}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (bounded) for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(st) = child.try_wait().expect("wait") {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

/// Lazily unmounts whatever is left at `p` (after a kill -9).
pub fn force_unmount(p: &Path) {
    if is_mounted(p) {
        let _ = Command::new("umount").arg("-l").arg(p).status();
    }
}

impl Drop for MountProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        force_unmount(&self.mnt);
    }
}

pub fn blake3_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

pub fn digest(dir: &Path) -> String {
    ok(&["digest", dir.to_str().unwrap()]).trim().to_owned()
}

pub mod hostile_client;
