//! Helpers for restart-after-crash tests: a `drift node` started again on
//! an existing configuration (the first one having been killed), and
//! waiting for a mount to be dead (its daemon gone).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{drift_bin, force_unmount, wait_until};

/// True once every access to `p` fails with ENOTCONN: the FUSE daemon
/// serving it has died and left the mount behind.
pub fn is_dead_mount(p: &Path) -> bool {
    matches!(std::fs::symlink_metadata(p), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN))
}

/// Waits (bounded) until `p` is a dead mount; panics otherwise.
pub fn wait_dead_mount(p: &Path) {
    assert!(
        wait_until(Duration::from_secs(10), || is_dead_mount(p)),
        "{} did not become a dead mount",
        p.display()
    );
}

/// A `drift node --config CONFIG` process with its log captured. Dropping
/// it stops it (SIGTERM, then SIGKILL) and unmounts what it left.
pub struct NodeProc {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub mnt: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
}

impl NodeProc {
    /// Starts a node on `config` and waits for its "node listening" line.
    pub fn start(config: &Path, mnt: &Path) -> NodeProc {
        let mut cmd = Command::new(drift_bin());
        cmd.args(["node", "--config"]).arg(config).env("DRIFT_LOG", "info,libunftp=warn");
        let spawned = super::node::spawn_node(&mut cmd);
        NodeProc { child: Some(spawned.child), addr: spawned.addr, mnt: mnt.to_owned(), logs: spawned.logs }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub fn url(&self, user: &str, pass: &str, path: &str) -> String {
        format!("ftp://{user}:{pass}@127.0.0.1:{}{path}", self.addr.port())
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            if !wait_until(Duration::from_secs(10), || child.try_wait().ok().flatten().is_some()) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        force_unmount(&self.mnt);
    }
}
