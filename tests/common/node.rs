//! Helpers for the `drift node` end-to-end tests: a node started as a real
//! process in a scratch directory, a raw FTP control-connection client for
//! exact reply codes, the journal read through `drift journal list`, and
//! snapshots of the backing tree for "nothing changed" assertions.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// The binary, polling and hashing helpers are shared with the other tests.
pub use super::{blake3_hex as b3, drift_bin, wait_until};

pub fn b3_file(p: &Path) -> String {
    b3(&std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display())))
}

/// Deterministic pseudo-random bytes (xorshift), so content is not
/// compressible or repetitive.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// One user to create with `drift user add`.
#[derive(Clone)]
pub struct TestUser {
    pub name: &'static str,
    pub password: &'static str,
    pub home: &'static str,
    pub perms: &'static str,
    pub allow_from: Option<&'static str>,
}

pub fn user(name: &'static str, password: &'static str, home: &'static str, perms: &'static str) -> TestUser {
    TestUser {
        name,
        password,
        home,
        perms,
        allow_from: None,
    }
}

pub const ALL_PERMS: &str = "list,read,write,delete,mkdir,rename";

/// How to set up a node.
pub struct NodeSetup {
    pub users: Vec<TestUser>,
    /// Extra TOML appended to the service file (tables such as
    /// `[sessions]`, `[filter]`, `[login]`).
    pub service_extra: String,
    pub fuse: bool,
    /// Directories (relative to backing) created before start, so that
    /// creating homes does not show up in the journal.
    pub precreate: Vec<&'static str>,
}

impl Default for NodeSetup {
    fn default() -> Self {
        NodeSetup {
            users: vec![user("alice", "alice-pw-1", "/alice", ALL_PERMS)],
            service_extra: String::new(),
            fuse: true,
            precreate: vec!["alice"],
        }
    }
}

/// Runs `drift user add` for `u` against `users_file`, password on stdin.
pub fn add_user(users_file: &Path, u: &TestUser) {
    let mut cmd = Command::new(drift_bin());
    cmd.args(["user", "add", u.name, "--users"])
        .arg(users_file)
        .args(["--home", u.home, "--perm", u.perms]);
    if let Some(a) = u.allow_from {
        cmd.args(["--allow-from", a]);
    }
    let out = pipe_stdin(cmd, &format!("{}\n", u.password));
    assert!(out.status.success(), "drift user add {}: {}", u.name, String::from_utf8_lossy(&out.stderr));
}

/// Runs a command with `input` on its standard input.
pub fn pipe_stdin(mut cmd: Command, input: &str) -> std::process::Output {
    cmd.env("DRIFT_LOG", "warn").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    // A command that refuses its arguments exits before reading: that is
    // the behaviour under test, not a test failure.
    if let Err(e) = child.stdin.take().expect("stdin").write_all(input.as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
    }
    child.wait_with_output().expect("wait")
}

/// A running `drift node` in its own scratch directory. Dropping it stops
/// the process (SIGTERM, then SIGKILL) and makes sure nothing stays
/// mounted.
pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub backing: PathBuf,
    pub mnt: PathBuf,
    pub journal: PathBuf,
    pub config: PathBuf,
    pub users_file: PathBuf,
    pub service_file: PathBuf,
    pub addr: SocketAddr,
    pub fuse: bool,
    child: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
}

/// A running `drift node` process with its standard error captured line
/// by line (echoed with `DRIFT_TEST_LOG=1`), started by [`spawn_node`].
pub struct Spawned {
    pub child: Child,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub addr: SocketAddr,
}

/// Spawns `cmd` (a `drift node ...` command; its stdio is set here) and
/// waits up to 30 s for its "node listening" line; panics with the log if
/// it exits or never listens.
pub fn spawn_node(cmd: &mut Command) -> Spawned {
    let mut child = cmd
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn drift node");
    let stderr = child.stderr.take().expect("stderr");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let sink = logs.clone();
    let echo = std::env::var_os("DRIFT_TEST_LOG").is_some();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if echo {
                eprintln!("[node] {line}");
            }
            sink.lock().unwrap().push(line);
        }
    });
    let mut addr = None;
    let up = wait_until(Duration::from_secs(30), || {
        if let Some(line) = logs.lock().unwrap().iter().find(|l| l.contains("node listening")) {
            addr = line.split_whitespace().find_map(|w| w.strip_prefix("addr=")).and_then(|a| a.parse().ok());
            return true;
        }
        child.try_wait().ok().flatten().is_some()
    });
    match addr {
        Some(addr) if up => Spawned { child, logs, addr },
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("drift node did not start:\n{}", logs.lock().unwrap().join("\n"))
        }
    }
}

/// Runs a command (a client: curl, lftp...), insists it succeeds, and
/// returns its standard output.
pub fn must(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn write_service(path: &Path, extra: &str) {
    let text = format!(
        "listen = \"127.0.0.1:0\"\ngreeting = \"drift test node\"\npassive_ports = [30000, 60000]\nidle_timeout_secs = 60\n{extra}\n"
    );
    std::fs::write(path, text).unwrap();
}

impl TestNode {
    pub fn start(setup: NodeSetup) -> TestNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let backing = dir.path().join("backing");
        let mnt = dir.path().join("mnt");
        let journal = dir.path().join("journal.db");
        std::fs::create_dir(&backing).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        for d in &setup.precreate {
            std::fs::create_dir_all(backing.join(d)).unwrap();
        }
        let users_file = dir.path().join("users.toml");
        let service_file = dir.path().join("service.toml");
        let config = dir.path().join("node.toml");
        for u in &setup.users {
            add_user(&users_file, u);
        }
        if setup.users.is_empty() {
            std::fs::write(&users_file, "").unwrap();
        }
        write_service(&service_file, &setup.service_extra);
        let storage = if setup.fuse {
            "backing = \"backing\"\nmountpoint = \"mnt\"\njournal = \"journal.db\"\ncommit_timeout_secs = 20\n"
        } else {
            "backing = \"backing\"\nfuse = false\n"
        };
        std::fs::write(
            &config,
            format!("[storage]\n{storage}\n[state]\nusers = \"users.toml\"\nservice = \"service.toml\"\n"),
        )
        .unwrap();
        let mut node = TestNode {
            dir,
            backing,
            mnt,
            journal,
            config,
            users_file,
            service_file,
            addr: "127.0.0.1:0".parse().unwrap(),
            fuse: setup.fuse,
            child: None,
            logs: Arc::new(Mutex::new(Vec::new())),
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(drift_bin());
        cmd.args(["node", "--config"]).arg(&self.config).env("DRIFT_LOG", "info,libunftp=warn");
        let node = spawn_node(&mut cmd);
        self.child = Some(node.child);
        self.logs = node.logs;
        self.addr = node.addr;
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn url(&self, user: &str, pass: &str, path: &str) -> String {
        format!("ftp://{user}:{pass}@127.0.0.1:{}{path}", self.port())
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits (bounded) for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        wait_until(limit, || self.logs.lock().unwrap().iter().any(|l| l.contains(needle)))
    }

    pub fn count_log(&self, needle: &str) -> usize {
        self.logs.lock().unwrap().iter().filter(|l| l.contains(needle)).count()
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// SIGTERM and wait (bounded) for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().expect("node running");
        let mut status = None;
        wait_until(Duration::from_secs(20), || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        match status {
            Some(s) => s,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("drift node did not stop within 20 s after SIGTERM:\n{}", self.logs());
            }
        }
    }

    pub fn is_mounted(&self) -> bool {
        super::is_mounted(&self.mnt)
    }

    /// Journal entries after `since`, read with `drift journal list --json`.
    pub fn journal_since(&self, since: u64) -> Vec<serde_json::Value> {
        assert!(self.fuse, "plain mode has no journal");
        let out = Command::new(drift_bin())
            .args(["journal", "list", "--journal"])
            .arg(&self.journal)
            .args(["--since", &since.to_string(), "--json"])
            .env("DRIFT_LOG", "warn")
            .output()
            .expect("drift journal list");
        assert!(out.status.success(), "drift journal list: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad journal line {l:?}: {e}")))
            .collect()
    }

    pub fn last_seq(&self) -> u64 {
        self.journal_since(0).last().map(|e| e["seq"].as_u64().unwrap()).unwrap_or(0)
    }

    /// Journal entries after `since` as compact strings, e.g.
    /// `write /alice/f 5 <blake3>`, `mkdir /alice/d`, `rename /a -> /b`.
    pub fn journal_ops(&self, since: u64) -> Vec<String> {
        self.journal_since(since).iter().map(describe).collect()
    }

    /// A snapshot of the backing tree: path → kind, size, content hash.
    pub fn tree(&self) -> BTreeMap<String, String> {
        tree(&self.backing)
    }
}

/// Snapshot of a directory tree (symlinks recorded, never followed).
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    let mut guard = 0;
    while let Some(dir) = stack.pop() {
        guard += 1;
        assert!(guard < 100_000, "tree too large");
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let v = if md.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&p).unwrap().display())
            } else if md.is_dir() {
                stack.push(p.clone());
                "dir".to_owned()
            } else {
                format!("file {} {}", md.len(), b3_file(&p))
            };
            out.insert(rel, v);
        }
    }
    out
}

pub fn describe(e: &serde_json::Value) -> String {
    let op = e["op"].as_str().unwrap_or("?");
    let path = e["path"].as_str().unwrap_or("?");
    match op {
        "write" => format!("write {path} {} {}", e["size"], e["blake3"].as_str().unwrap_or("?")),
        "rename" => format!("rename {path} -> {}", e["to"].as_str().unwrap_or("?")),
        _ => format!("{op} {path}"),
    }
}

pub fn write_entry(path: &str, content: &[u8]) -> String {
    format!("write {path} {} {}", content.len(), b3(content))
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let stopped = wait_until(Duration::from_secs(10), || child.try_wait().ok().flatten().is_some());
            if !stopped {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if self.fuse && self.is_mounted() {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// A minimal FTP control-connection client for exact reply codes and
/// hostile input (NUL bytes, long names) that real clients refuse to send.
pub struct Ftp {
    ctrl: BufReader<TcpStream>,
    pub greeting: (u32, String),
}

impl Ftp {
    pub fn connect(addr: SocketAddr) -> Ftp {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut f = Ftp {
            ctrl: BufReader::new(s),
            greeting: (0, String::new()),
        };
        f.greeting = f.reply();
        f
    }

    /// Connects from a chosen local address (any of 127.0.0.0/8 works on
    /// Linux), to test address filters.
    pub fn connect_from(addr: SocketAddr, local: std::net::IpAddr) -> Ftp {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let s = rt.block_on(async {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(SocketAddr::new(local, 0)).unwrap();
            tokio::time::timeout(Duration::from_secs(5), sock.connect(addr)).await.unwrap().unwrap()
        });
        let s = s.into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut f = Ftp {
            ctrl: BufReader::new(s),
            greeting: (0, String::new()),
        };
        f.greeting = f.reply();
        f
    }

    /// Connects and logs in; panics unless both succeed.
    pub fn login(addr: SocketAddr, user: &str, pass: &str) -> Ftp {
        let mut f = Ftp::connect(addr);
        assert_eq!(f.greeting.0, 220, "greeting: {:?}", f.greeting);
        let (c, t) = f.cmd(&format!("USER {user}"));
        assert_eq!(c, 331, "USER: {t}");
        let (c, t) = f.cmd(&format!("PASS {pass}"));
        assert_eq!(c, 230, "PASS: {t}");
        let (c, _) = f.cmd("TYPE I");
        assert_eq!(c, 200);
        f
    }

    /// Tries USER/PASS; returns the PASS reply.
    pub fn try_login(addr: SocketAddr, user: &str, pass: &str) -> (u32, String) {
        let mut f = Ftp::connect(addr);
        if f.greeting.0 != 220 {
            return f.greeting.clone();
        }
        f.cmd(&format!("USER {user}"));
        f.cmd(&format!("PASS {pass}"))
    }

    /// Reads one (possibly multi-line) reply. Code 0 means the server
    /// closed the connection.
    pub fn reply(&mut self) -> (u32, String) {
        let mut line = String::new();
        match self.ctrl.read_line(&mut line) {
            Ok(0) | Err(_) => return (0, String::new()),
            Ok(_) => {}
        }
        let code: u32 = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        let mut text = line.clone();
        if line.as_bytes().get(3) == Some(&b'-') {
            let end = format!("{code} ");
            for _ in 0..1000 {
                let mut l = String::new();
                if self.ctrl.read_line(&mut l).unwrap_or(0) == 0 {
                    break;
                }
                text.push_str(&l);
                if l.starts_with(&end) {
                    break;
                }
            }
        }
        (code, text.trim_end().to_owned())
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.ctrl.get_mut().write_all(bytes).expect("send");
    }

    pub fn cmd(&mut self, line: &str) -> (u32, String) {
        self.send_raw(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Sends a command made of raw bytes (may contain NUL).
    pub fn cmd_bytes(&mut self, line: &[u8]) -> (u32, String) {
        let mut b = line.to_vec();
        b.extend_from_slice(b"\r\n");
        self.send_raw(&b);
        self.reply()
    }

    /// Opens an extended-passive data connection.
    pub fn epsv(&mut self) -> TcpStream {
        let (c, t) = self.cmd("EPSV");
        assert_eq!(c, 229, "EPSV: {t}");
        let port: u16 = t
            .split("|||")
            .nth(1)
            .and_then(|r| r.split('|').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("bad EPSV reply {t}"));
        let peer = self.ctrl.get_ref().peer_addr().unwrap();
        let s = TcpStream::connect_timeout(&SocketAddr::new(peer.ip(), port), Duration::from_secs(5)).expect("data connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    /// STOR over EPSV; returns (preliminary reply, final reply). The final
    /// reply is `(0, "")` when the preliminary one was already an error.
    pub fn stor(&mut self, path: &str, content: &[u8]) -> ((u32, String), (u32, String)) {
        let mut data = self.epsv();
        let first = self.cmd(&format!("STOR {path}"));
        if first.0 != 150 && first.0 != 125 {
            return (first, (0, String::new()));
        }
        let _ = data.write_all(content);
        drop(data);
        let last = self.reply();
        (first, last)
    }

    /// RETR over EPSV; returns the final code and the bytes received.
    pub fn retr(&mut self, path: &str) -> (u32, Vec<u8>) {
        let mut data = self.epsv();
        let first = self.cmd(&format!("RETR {path}"));
        if first.0 != 150 && first.0 != 125 {
            return (first.0, Vec::new());
        }
        let mut buf = Vec::new();
        let _ = data.read_to_end(&mut buf);
        (self.reply().0, buf)
    }

    /// LIST/NLST/MLSD over EPSV; returns the final code and the listing.
    pub fn list(&mut self, verb: &str) -> (u32, String) {
        let mut data = self.epsv();
        let first = self.cmd(verb);
        if first.0 != 150 && first.0 != 125 {
            return (first.0, first.1);
        }
        let mut buf = String::new();
        let _ = data.read_to_string(&mut buf);
        (self.reply().0, buf)
    }
}
