//! The cluster harness: a real `drift guide` and real `drift node`
//! processes (each with its own FUSE mount and scratch directory), faults
//! (SIGKILL, restart, network partitions through namespaces) and the
//! invariants every cluster test checks (acknowledged changes present,
//! trees equal by `drift digest`, journals equal entry for entry, one
//! primary per epoch). Later issues add cases, not plumbing.
//!
//! Every wait is bounded; dropping a [`Cluster`] stops every process,
//! lazily unmounts what is left and removes the namespaces it made.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::node::{add_user, b3, describe, user, TestUser, ALL_PERMS};
use super::{drift_bin, wait_until};

/// A free TCP port on 127.0.0.1 (bound, then released: a fixed port is
/// needed so a restarted process comes back at the same address).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process with its standard error collected line by line
/// (echoed with `DRIFT_TEST_LOG=1`).
pub struct Proc {
    pub name: String,
    pub child: Option<Child>,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let echo = std::env::var_os("DRIFT_TEST_LOG").is_some();
        let tag = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("[{tag}] {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        Proc { name: name.to_owned(), child: Some(child), logs }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub fn has_log(&self, needle: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        wait_until(limit, || self.has_log(needle) || !self.running())
            && self.has_log(needle)
    }

    /// Whether the process has not exited (it is not reaped here, so this
    /// needs no `&mut`).
    pub fn running(&self) -> bool {
        let Some(c) = &self.child else { return false };
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(libc::P_PID, c.id(), &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT)
        };
        rc == 0 && unsafe { info.si_pid() } == 0
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `limit`; returns whether it exited by itself.
    pub fn stop(&mut self, limit: Duration) -> bool {
        self.signal(libc::SIGTERM);
        let Some(mut c) = self.child.take() else { return true };
        let exited = wait_until(limit, || c.try_wait().ok().flatten().is_some());
        if !exited {
            let _ = c.kill();
            let _ = c.wait();
        }
        exited
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop(Duration::from_secs(10));
        }
    }
}

/// Runs `drift ARGS` and returns (success, stdout, stderr).
pub fn drift_out(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(drift_bin()).args(args).env("DRIFT_LOG", "warn").output().expect("run drift");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One node of a test cluster.
pub struct ClusterNode {
    pub id: String,
    pub dir: PathBuf,
    pub backing: PathBuf,
    pub mnt: PathBuf,
    pub journal: PathBuf,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub ftp_port: u16,
    /// Network namespace the node runs in, if any (see [`Cluster::isolate`]).
    pub netns: Option<String>,
    /// The address the node uses to reach the guide.
    pub guide_addr: String,
    pub proc: Option<Proc>,
}

impl ClusterNode {
    pub fn ftp_host(&self) -> String {
        match &self.netns {
            Some(_) => netns_ip(&self.id, true),
            None => "127.0.0.1".to_owned(),
        }
    }

    pub fn ftp(&self) -> String {
        format!("{}:{}", self.ftp_host(), self.ftp_port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("ftp://alice:alice-pw-1@{}{path}", self.ftp())
    }

    fn write_config(&self, key: &Path, ack: &str, extra: &str) {
        std::fs::write(
            self.dir.join("service.toml"),
            format!(
                "listen = \"{}:{}\"\ngreeting = \"drift test node {}\"\npassive_ports = [30000, 60000]\nidle_timeout_secs = 60\n",
                self.ftp_host(),
                self.ftp_port,
                self.id
            ),
        )
        .unwrap();
        std::fs::write(
            &self.config,
            format!(
                "[storage]\nbacking = \"backing\"\nmountpoint = \"mnt\"\njournal = \"journal.db\"\ncommit_timeout_secs = 10\n\n\
                 [state]\nusers = \"users.toml\"\nservice = \"service.toml\"\n\n\
                 [cluster]\nguide = \"{}\"\nkey_file = \"{}\"\nnode_id = \"{}\"\nadvertise = \"{}\"\nheartbeat_ms = 100\nack = \"{ack}\"\n{extra}\n",
                self.guide_addr,
                key.display(),
                self.id,
                self.ftp(),
            ),
        )
        .unwrap();
    }

    /// Starts the node process and waits for it to listen.
    pub fn start(&mut self) {
        assert!(self.proc.is_none(), "node {} already running", self.id);
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, drift_bin()]);
                c
            }
            None => Command::new(drift_bin()),
        };
        cmd.args(["node", "--config"])
            .arg(&self.config)
            .env("DRIFT_LOG", "info,libunftp=warn");
        let p = Proc::spawn(&self.id, &mut cmd);
        if !p.wait_log("node listening", Duration::from_secs(30)) {
            panic!("node {} did not start:\n{}", self.id, p.logs());
        }
        self.proc = Some(p);
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        self.cleanup_mount();
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            assert!(p.stop(Duration::from_secs(20)), "node {} did not stop on SIGTERM:\n{}", self.id, p.logs());
        }
        self.cleanup_mount();
    }

    fn cleanup_mount(&self) {
        if super::is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }

    pub fn logs(&self) -> String {
        self.proc.as_ref().map(|p| p.logs()).unwrap_or_default()
    }

    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        self.proc.as_ref().is_some_and(|p| p.wait_log(needle, limit))
    }

    /// `drift digest` of the backing tree.
    pub fn digest(&self) -> String {
        let (ok, out, err) = drift_out(&["digest", self.backing.to_str().unwrap()]);
        assert!(ok, "drift digest {}: {err}", self.backing.display());
        out.trim().to_owned()
    }

    /// The journal as (seq, op, path, to, size, blake3, time) lines.
    pub fn journal(&self) -> Vec<String> {
        let (ok, out, err) = drift_out(&["journal", "list", "--journal", self.journal.to_str().unwrap(), "--json"]);
        assert!(ok, "drift journal list ({}): {err}", self.id);
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                format!("{} {} @{}", v["seq"], describe(&v), v["time"].as_str().unwrap_or("?"))
            })
            .collect()
    }

    pub fn last_seq(&self) -> u64 {
        self.journal().last().and_then(|l| l.split(' ').next()?.parse().ok()).unwrap_or(0)
    }

    /// The quarantine directories the node made.
    pub fn quarantines(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.state_dir.join("quarantine")) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(10));
        }
        self.cleanup_mount();
    }
}

/// The test cluster: a guide and N nodes on loopback (or in namespaces).
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub key: PathBuf,
    pub guide_port: u16,
    pub guide_config: PathBuf,
    pub guide_data: PathBuf,
    pub guide: Option<Proc>,
    pub nodes: Vec<ClusterNode>,
    pub users: Vec<TestUser>,
    netns: Vec<String>,
}

pub struct ClusterSetup {
    pub nodes: usize,
    pub ack: &'static str,
    /// Extra lines for guide.toml.
    pub guide_extra: String,
    /// Extra lines for every node's [cluster] section.
    pub node_extra: String,
    /// Node ids to run in their own network namespaces (reach the guide
    /// through a veth pair), so a test can cut them off.
    pub isolated: Vec<usize>,
}

impl Default for ClusterSetup {
    fn default() -> Self {
        ClusterSetup { nodes: 3, ack: "guide", guide_extra: String::new(), node_extra: String::new(), isolated: Vec::new() }
    }
}

/// Addresses of the veth pair of namespace `n` (index in 1..=200):
/// 10.77.n.1 on the host side, 10.77.n.2 inside.
fn netns_ip(id: &str, inside: bool) -> String {
    let n: u32 = id.trim_start_matches(|c: char| !c.is_ascii_digit()).parse().unwrap_or(1);
    format!("10.77.{}.{}", n, if inside { 2 } else { 1 })
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(st.success(), "{args:?} failed");
}

impl Cluster {
    /// Writes the key, users and configs, starts the guide and the nodes
    /// one after the other (the first becomes primary of epoch 1), and
    /// waits until every node reports in.
    pub fn start(setup: ClusterSetup) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("cluster.key");
        let (ok, _, err) = drift_out(&["xfer", "keygen", key.to_str().unwrap()]);
        assert!(ok, "keygen: {err}");
        let guide_port = free_port();
        let guide_data = dir.path().join("guide-data");
        let guide_config = dir.path().join("guide.toml");
        let any_isolated = !setup.isolated.is_empty();
        let listen = if any_isolated { format!("0.0.0.0:{guide_port}") } else { format!("127.0.0.1:{guide_port}") };
        std::fs::write(
            &guide_config,
            format!(
                "listen = \"{listen}\"\nkey_file = \"cluster.key\"\ndata_dir = \"guide-data\"\nlease_ms = 600\n{}\n",
                setup.guide_extra
            ),
        )
        .unwrap();
        let users = vec![user("alice", "alice-pw-1", "/alice", ALL_PERMS)];
        let mut cluster = Cluster {
            dir,
            key,
            guide_port,
            guide_config,
            guide_data,
            guide: None,
            nodes: Vec::new(),
            users,
            netns: Vec::new(),
        };
        cluster.start_guide();
        for i in 1..=setup.nodes {
            let id = format!("n{i}");
            let isolated = setup.isolated.contains(&i);
            if isolated {
                cluster.make_netns(&id);
            }
            let node = cluster.add_node(&id, isolated, setup.ack, &setup.node_extra);
            cluster.nodes.push(node);
            cluster.nodes.last_mut().unwrap().start();
            let want = i;
            let reported = cluster.wait_status(Duration::from_secs(30), |s| {
                s["nodes"].as_array().is_some_and(|n| {
                    n.iter().filter(|n| n["role"] != "down").count() >= want
                })
            });
            assert!(reported.is_some(), "node {id} never reported to the guide\n{}", cluster.all_logs());
        }
        cluster
    }

    fn add_node(&self, id: &str, isolated: bool, ack: &str, extra: &str) -> ClusterNode {
        let dir = self.dir.path().join(id);
        let backing = dir.join("backing");
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(backing.join("alice")).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        let users_file = dir.join("users.toml");
        for u in &self.users {
            add_user(&users_file, u);
        }
        let guide_addr = if isolated {
            format!("{}:{}", netns_ip(id, false), self.guide_port)
        } else {
            format!("127.0.0.1:{}", self.guide_port)
        };
        let node = ClusterNode {
            id: id.to_owned(),
            journal: dir.join("journal.db"),
            config: dir.join("node.toml"),
            state_dir: dir.join("journal.db.cluster"),
            dir,
            backing,
            mnt,
            ftp_port: free_port(),
            netns: isolated.then(|| format!("drift-test-{}-{id}", std::process::id())),
            guide_addr,
            proc: None,
        };
        node.write_config(&self.key, ack, extra);
        node
    }

    /// A network namespace for node `id`, joined to the host by a veth
    /// pair (host side `10.77.N.1`, node side `10.77.N.2`).
    fn make_netns(&mut self, id: &str) {
        let ns = format!("drift-test-{}-{id}", std::process::id());
        let n = netns_ip(id, false).split('.').nth(2).unwrap().to_owned();
        let host_if = format!("dt{}h{n}", std::process::id() % 10000);
        let ns_if = format!("dt{}n{n}", std::process::id() % 10000);
        sh(&["ip", "netns", "add", &ns]);
        self.netns.push(ns.clone());
        sh(&["ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if]);
        sh(&["ip", "link", "set", &ns_if, "netns", &ns]);
        sh(&["ip", "addr", "add", &format!("10.77.{n}.1/24"), "dev", &host_if]);
        sh(&["ip", "link", "set", &host_if, "up"]);
        sh(&["ip", "netns", "exec", &ns, "ip", "addr", "add", &format!("10.77.{n}.2/24"), "dev", &ns_if]);
        sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", &ns_if, "up"]);
        sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
    }

    fn host_if(&self, id: &str) -> String {
        let n = netns_ip(id, false).split('.').nth(2).unwrap().to_owned();
        format!("dt{}h{n}", std::process::id() % 10000)
    }

    /// Cuts the isolated node `id` off (its veth goes down).
    pub fn cut(&self, id: &str) {
        sh(&["ip", "link", "set", &self.host_if(id), "down"]);
    }

    /// Heals the link cut by [`cut`](Self::cut).
    pub fn heal(&self, id: &str) {
        sh(&["ip", "link", "set", &self.host_if(id), "up"]);
    }

    pub fn start_guide(&mut self) {
        assert!(self.guide.is_none(), "guide already running");
        let mut cmd = Command::new(drift_bin());
        cmd.args(["guide", "--config"]).arg(&self.guide_config).env("DRIFT_LOG", "info");
        let p = Proc::spawn("guide", &mut cmd);
        if !p.wait_log("guide listening", Duration::from_secs(30)) {
            panic!("guide did not start:\n{}", p.logs());
        }
        self.guide = Some(p);
    }

    pub fn kill_guide(&mut self) {
        if let Some(mut p) = self.guide.take() {
            p.kill();
        }
    }

    pub fn guide_addr(&self) -> String {
        format!("127.0.0.1:{}", self.guide_port)
    }

    pub fn node(&self, id: &str) -> &ClusterNode {
        self.nodes.iter().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    pub fn node_mut(&mut self, id: &str) -> &mut ClusterNode {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    /// `drift status --json`, or `None` if the guide does not answer.
    pub fn status(&self) -> Option<serde_json::Value> {
        let addr = self.guide_addr();
        let (ok, out, _) = drift_out(&["status", "--json", "--guide", &addr, "--key", self.key.to_str().unwrap()]);
        if !ok {
            return None;
        }
        serde_json::from_str(out.trim()).ok()
    }

    /// Polls the status until `cond` holds; returns that status.
    pub fn wait_status(&self, limit: Duration, mut cond: impl FnMut(&serde_json::Value) -> bool) -> Option<serde_json::Value> {
        let mut found = None;
        wait_until(limit, || match self.status() {
            Some(s) if cond(&s) => {
                found = Some(s);
                true
            }
            _ => false,
        });
        found
    }

    /// Waits for a serving primary; returns (epoch, id).
    pub fn wait_primary(&self, limit: Duration) -> (u64, String) {
        let s = self
            .wait_status(limit, |s| s["state"] == "serving" && s["primary"].is_string())
            .unwrap_or_else(|| panic!("no serving primary within {limit:?}\n{}", self.all_logs()));
        (s["epoch"].as_u64().unwrap(), s["primary"].as_str().unwrap().to_owned())
    }

    /// Waits for a serving primary other than `old`.
    pub fn wait_new_primary(&self, old: &str, limit: Duration) -> (u64, String) {
        let s = self
            .wait_status(limit, |s| s["state"] == "serving" && s["primary"].is_string() && s["primary"] != old)
            .unwrap_or_else(|| panic!("no new primary (other than {old}) within {limit:?}\n{}", self.all_logs()));
        (s["epoch"].as_u64().unwrap(), s["primary"].as_str().unwrap().to_owned())
    }

    pub fn history_seq(&self) -> u64 {
        self.status().and_then(|s| s["history_seq"].as_u64()).unwrap_or(0)
    }

    /// Waits until every running node's backing tree has the primary's
    /// digest and its journal equals the primary's entry for entry.
    pub fn wait_converged(&self, primary: &str, limit: Duration) {
        let p = self.node(primary);
        let deadline = Instant::now() + limit;
        loop {
            let want_j = p.journal();
            let want_d = p.digest();
            let behind: Vec<String> = self
                .nodes
                .iter()
                .filter(|n| n.id != primary && n.proc.is_some())
                .filter(|n| n.digest() != want_d || n.journal() != want_j)
                .map(|n| n.id.clone())
                .collect();
            if behind.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let mut why = String::new();
                for id in &behind {
                    let n = self.node(id);
                    why += &format!(
                        "\n{id}: digest {} vs {want_d}; journal {} entries vs {}; first difference: {:?}",
                        n.digest(),
                        n.journal().len(),
                        want_j.len(),
                        n.journal().iter().zip(&want_j).find(|(a, b)| a != b)
                    );
                }
                panic!("nodes did not converge to {primary} within {limit:?}:{why}\n{}", self.all_logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn all_logs(&self) -> String {
        let mut s = String::new();
        if let Some(g) = &self.guide {
            s += &format!("--- guide ---\n{}\n", tail(&g.logs(), 80));
        }
        for n in &self.nodes {
            s += &format!("--- {} ---\n{}\n", n.id, tail(&n.logs(), 60));
        }
        s
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Nodes first (they would otherwise reconnect to nothing for a while).
        for n in &mut self.nodes {
            if let Some(mut p) = n.proc.take() {
                p.stop(Duration::from_secs(10));
            }
            n.cleanup_mount();
        }
        if let Some(mut g) = self.guide.take() {
            g.stop(Duration::from_secs(10));
        }
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        // veth pairs vanish with their namespace end.
    }
}

/// Uploads files to whoever is primary, in a loop bounded by count and
/// time, recording every upload that got its 226 (curl exit 0): the
/// acknowledged changes a test checks for afterwards.
pub struct Uploader {
    pub acked: Arc<Mutex<BTreeMap<String, String>>>,
    pub failed: Arc<Mutex<u64>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Uploader {
    /// `primary_ftp` returns the current primary's `host:port` (it is
    /// called again after a failed upload).
    pub fn start(prefix: &str, max: usize, size: usize, primary_ftp: impl Fn() -> Option<String> + Send + 'static) -> Uploader {
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let failed = Arc::new(Mutex::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (a, f, st) = (acked.clone(), failed.clone(), stop.clone());
        let prefix = prefix.to_owned();
        let thread = std::thread::spawn(move || {
            let scratch = tempfile::tempdir().unwrap();
            let started = Instant::now();
            let mut target = primary_ftp();
            for i in 0..max {
                if st.load(std::sync::atomic::Ordering::SeqCst) || started.elapsed() > Duration::from_secs(120) {
                    break;
                }
                let Some(ftp) = target.clone() else {
                    std::thread::sleep(Duration::from_millis(50));
                    target = primary_ftp();
                    continue;
                };
                let name = format!("{prefix}-{i:05}.bin");
                let content = super::node::data(size + i % 97, i as u64 + 7);
                let local = scratch.path().join(&name);
                std::fs::write(&local, &content).unwrap();
                let out = Command::new("curl")
                    .args(["-sS", "--max-time", "20", "-T"])
                    .arg(&local)
                    .arg(format!("ftp://alice:alice-pw-1@{ftp}/{name}"))
                    .output()
                    .expect("curl");
                if out.status.success() {
                    a.lock().unwrap().insert(format!("alice/{name}"), b3(&content));
                } else {
                    *f.lock().unwrap() += 1;
                    target = primary_ftp();
                }
            }
        });
        Uploader { acked, failed, stop, thread: Some(thread) }
    }

    pub fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops the loop and returns the acknowledged uploads (path → BLAKE3).
    pub fn finish(mut self) -> BTreeMap<String, String> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("uploader thread");
        }
        self.acked.lock().unwrap().clone()
    }
}

/// Asserts every acknowledged upload is in `backing` with its hash.
pub fn assert_acked_present(backing: &Path, acked: &BTreeMap<String, String>) {
    let mut missing = Vec::new();
    for (path, hash) in acked {
        match std::fs::read(backing.join(path)) {
            Ok(bytes) if &b3(&bytes) == hash => {}
            Ok(_) => missing.push(format!("{path}: different content")),
            Err(e) => missing.push(format!("{path}: {e}")),
        }
    }
    assert!(missing.is_empty(), "{} acknowledged uploads lost or wrong: {missing:?}", missing.len());
}

/// The current primary's FTP address by `drift status --json`, if one serves.
pub fn primary_ftp(guide: &str, key: &Path) -> Option<String> {
    let (ok, out, _) = drift_out(&["status", "--json", "--guide", guide, "--key", key.to_str()?]);
    if !ok {
        return None;
    }
    let s: serde_json::Value = serde_json::from_str(out.trim()).ok()?;
    if s["state"] != "serving" {
        return None;
    }
    let id = s["primary"].as_str()?;
    s["nodes"].as_array()?.iter().find(|n| n["id"] == id)?["ftp"].as_str().map(str::to_owned)
}

impl Cluster {
    /// A closure for [`Uploader::start`] that follows the primary.
    pub fn primary_finder(&self) -> impl Fn() -> Option<String> + Send + 'static {
        let (guide, key) = (self.guide_addr(), self.key.clone());
        move || primary_ftp(&guide, &key)
    }
}

/// A running `drift proxy` in front of a [`Cluster`] (see
/// [`Cluster::start_proxy`]); stopped when dropped.
pub struct ClusterProxy {
    pub port: u16,
    pub config: PathBuf,
    pub proc: Option<Proc>,
}

impl ClusterProxy {
    /// The proxy's FTP `host:port`.
    pub fn ftp(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.ftp().parse().unwrap()
    }

    pub fn url(&self, user: &str, pass: &str, path: &str) -> String {
        format!("ftp://{user}:{pass}@{}{path}", self.ftp())
    }

    pub fn logs(&self) -> String {
        self.proc.as_ref().map(|p| p.logs()).unwrap_or_default()
    }

    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        self.proc.as_ref().is_some_and(|p| p.wait_log(needle, limit))
    }
}

impl Drop for ClusterProxy {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(10));
        }
    }
}

impl ClusterNode {
    /// SIGKILL while the node may be writing into its own FUSE mount (an
    /// upload in flight). A thread of the killed process can then wait
    /// forever in the kernel for the mount's answer (the threads that
    /// would answer are gone), so the process never exits; after 2 s this
    /// aborts the mount's FUSE connection (`umount -f`), which lets it.
    pub fn kill_mid_io(&mut self) {
        if let Some(mut p) = self.proc.take() {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                if !wait_until(Duration::from_secs(2), || c.try_wait().ok().flatten().is_some()) {
                    let _ = Command::new("umount").arg("-f").arg(&self.mnt).stderr(Stdio::null()).status();
                    let _ = c.wait();
                }
            }
        }
        self.cleanup_mount();
    }
}

impl Cluster {
    /// Writes a proxy.toml (passive ports 21000–29999, `extra` lines
    /// appended) and starts `drift proxy`; returns once it listens and
    /// holds the users file from the guide. Nodes accept its credentials
    /// only with `proxies = [...]` in their `[cluster]` section
    /// ([`ClusterSetup::node_extra`]).
    pub fn start_proxy(&self, extra: &str) -> ClusterProxy {
        let port = free_port();
        let config = self.dir.path().join(format!("proxy-{port}.toml"));
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\nguide = \"{}\"\nkey_file = \"cluster.key\"\npassive_ports = [21000, 29999]\n{extra}\n",
                self.guide_addr()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(drift_bin());
        cmd.args(["proxy", "--config"]).arg(&config).env("DRIFT_LOG", "info");
        let p = Proc::spawn("proxy", &mut cmd);
        if !p.wait_log("proxy listening", Duration::from_secs(30)) || !p.wait_log("initial state received", Duration::from_secs(30)) {
            panic!("proxy did not start:\n{}\n{}", p.logs(), self.all_logs());
        }
        ClusterProxy { port, config, proc: Some(p) }
    }
}
