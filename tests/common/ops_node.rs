//! A `drift node` started with extra node.toml settings (`[log]`,
//! `[admin]`) and without a forced log filter, for the operations tests:
//! the transfer log, the admin socket, what the default log level shows.
//! Built from the same pieces as [`super::node::TestNode`] (users made
//! with `drift user add`, the same service file), which cannot take
//! node.toml additions.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::node::{add_user, write_service, TestUser};
use super::{drift_bin, wait_until};

pub struct OpsNode {
    pub dir: tempfile::TempDir,
    pub mnt: PathBuf,
    pub config: PathBuf,
    pub users_file: PathBuf,
    pub addr: SocketAddr,
    child: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl OpsNode {
    /// Starts a node on a FUSE mount with `users` (homes pre-created in
    /// the backing directory), `service_extra` appended to the service
    /// file and `node_extra` to node.toml. `log_filter`: the `DRIFT_LOG`
    /// to run with; `None` runs with the default level.
    pub fn start(users: &[TestUser], service_extra: &str, node_extra: &str, log_filter: Option<&str>) -> OpsNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let backing = dir.path().join("backing");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        for u in users {
            std::fs::create_dir_all(backing.join(u.home.trim_start_matches('/'))).unwrap();
        }
        std::fs::create_dir_all(&backing).unwrap();
        let users_file = dir.path().join("users.toml");
        for u in users {
            add_user(&users_file, u);
        }
        write_service(&dir.path().join("service.toml"), service_extra);
        let config = dir.path().join("node.toml");
        std::fs::write(
            &config,
            format!(
                "[storage]\nbacking = \"backing\"\nmountpoint = \"mnt\"\njournal = \"journal.db\"\ncommit_timeout_secs = 20\n\
                 [state]\nusers = \"users.toml\"\nservice = \"service.toml\"\n{node_extra}\n"
            ),
        )
        .unwrap();
        let mut cmd = Command::new(drift_bin());
        cmd.args(["node", "--config"]).arg(&config);
        match log_filter {
            Some(f) => cmd.env("DRIFT_LOG", f),
            None => cmd.env_remove("DRIFT_LOG"),
        };
        let spawned = super::node::spawn_node(&mut cmd);
        OpsNode {
            dir,
            mnt,
            config,
            users_file,
            addr: spawned.addr,
            child: Some(spawned.child),
            logs: spawned.logs,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Standard error so far, one string per line.
    pub fn log_lines(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn logs(&self) -> String {
        self.log_lines().join("\n")
    }

    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        wait_until(limit, || self.logs.lock().unwrap().iter().any(|l| l.contains(needle)))
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }
}

impl Drop for OpsNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            if !wait_until(Duration::from_secs(10), || child.try_wait().ok().flatten().is_some()) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if super::is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// Runs a Python script (ftplib sessions) with `args`; panics with its
/// output unless it exits 0. Returns its standard output.
pub fn python(script: &str, args: &[&str]) -> String {
    super::node::must(Command::new("python3").arg("-c").arg(script).args(args))
}
