//! End-to-end tests of `drift xfer`: the real binary as separate sender and
//! receiver processes on loopback, trees compared with `drift digest`, and
//! a byte-level man-in-the-middle (which speaks the documented frame
//! layout) to alter, replay and truncate frames.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_drift");

fn drift() -> Command {
    let mut c = Command::new(BIN);
    c.env("DRIFT_LOG", "info");
    c
}

fn keygen(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let out = drift().args(["xfer", "keygen"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 32);
    path
}

/// `drift digest DIR`.
fn digest(dir: &Path) -> String {
    let out = drift().arg("digest").arg(dir).output().unwrap();
    assert!(out.status.success(), "digest: {}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(s.len(), 64, "digest output {s:?}");
    s
}

/// A running receiver; killed on drop.
struct Recv {
    child: Child,
    addr: SocketAddr,
    stderr: mpsc::Receiver<String>,
    stderr_seen: String,
}

impl Recv {
    fn start(key: &Path, dir: &Path, extra: &[&str]) -> Recv {
        let mut child = drift()
            .args(["xfer", "recv", "--listen", "127.0.0.1:0", "--key"])
            .arg(key)
            .arg("--dir")
            .arg(dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            for _ in lines {}
        });
        let (etx, erx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = etx.send(line);
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("receiver did not print its address");
        let addr = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .parse()
            .unwrap();
        Recv {
            child,
            addr,
            stderr: erx,
            stderr_seen: String::new(),
        }
    }

    fn to(&self) -> String {
        self.addr.to_string()
    }

    /// Waits (bounded) until stderr contains `needle`.
    fn wait_stderr(&mut self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.stderr_seen.contains(needle) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_seen.push_str(&line);
                    self.stderr_seen.push('\n');
                }
                Err(_) => return self.stderr_seen.contains(needle),
            }
        }
    }

    /// Waits (bounded) for a `--once` receiver to exit.
    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "receiver did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Recv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send(key: &Path, to: &str, extra: &[&str], paths: &[&Path]) -> Output {
    let mut c = drift();
    c.args(["xfer", "send", "--to", to, "--key"]).arg(key).args(extra);
    for p in paths {
        c.arg(p);
    }
    run_bounded(c, Duration::from_secs(180))
}

fn run_bounded(mut c: Command, within: Duration) -> Output {
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + within;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("command did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
fn write_random(path: &Path, len: usize, seed: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x = seed | 1;
    let mut left = len;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        let n = left.min(buf.len());
        f.write_all(&buf[..n]).unwrap();
        left -= n;
    }
    f.flush().unwrap();
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn xfer_mixed_tree_arrives_with_the_same_digest() {
    let t = tempfile::tempdir().unwrap();
    let key = keygen(t.path(), "k");
    let src = t.path().join("tree");
    std::fs::create_dir_all(src.join("many/sub")).unwrap();
    std::fs::create_dir_all(src.join("locked")).unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    std::fs::write(src.join("one"), b"x").unwrap();
    // Odd sizes around chunk and frame boundaries (frames of 64 KiB here).
    for (i, len) in [1023usize, 1025, 65535, 65537, 131071, 196609, 1_000_003].iter().enumerate() {
        write_random(&src.join(format!("odd{i}")), *len, i as u64 + 11);
    }
    write_random(&src.join("big"), 200 << 20, 99);
    for i in 0..600 {
        let dir = if i % 2 == 0 { "many" } else { "many/sub" };
        write_random(&src.join(dir).join(format!("s{i}")), (i * 37) % 5000, i as u64 + 1000);
    }
    std::os::unix::fs::symlink("../one", src.join("many/link")).unwrap();
    std::fs::write(src.join("locked/inside"), b"readable").unwrap();
    std::fs::set_permissions(src.join("odd0"), std::fs::Permissions::from_mode(0o751)).unwrap();
    std::fs::set_permissions(src.join("locked"), std::fs::Permissions::from_mode(0o500)).unwrap();

    let out = t.path().join("out");
    let mut recv = Recv::start(&key, &out, &["--once"]);
    let r = send(&key, &recv.to(), &["--streams", "4", "--frame-size", "64K", "--files", "4"], &[&src]);
    assert!(r.status.success(), "send failed: {}", text(&r.stderr));
    assert!(text(&r.stdout).contains("sent 611 files"), "summary: {}", text(&r.stdout));
    assert!(recv.wait_exit(Duration::from_secs(30)).success());

    assert_eq!(digest(&src), digest(&out.join("tree")));
    assert_eq!(mode(&out.join("tree/odd0")), 0o751);
    assert_eq!(mode(&out.join("tree/locked")), 0o500);
    assert_eq!(std::fs::read_link(out.join("tree/many/link")).unwrap(), PathBuf::from("../one"));
    // The default state directory is gone once empty: nothing but the tree.
    let names: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("tree")]);
    std::fs::set_permissions(src.join("locked"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(out.join("tree/locked"), std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// Counts frames marked held in a `.held` resume file.
fn held_frames(state: &Path) -> Option<(PathBuf, u64)> {
    for e in std::fs::read_dir(state).ok()? {
        let p = e.ok()?.path();
        if p.extension().is_some_and(|x| x == "held") {
            let b = std::fs::read(&p).ok()?;
            if b.len() < 24 || (b.len() - 24) % 33 != 0 {
                continue;
            }
            let n = b[24..].chunks(33).filter(|c| c[0] == 1).count() as u64;
            return Some((p, n));
        }
    }
    None
}

/// A 64 MiB send into a receiver with a state dir, rate-capped so it lasts
/// a few seconds, and the receiver killed once it holds at least
/// `min_held` frames. Returns the key, source file, output and state dirs
/// and how many frames the dead receiver last recorded.
struct Interrupted {
    key: PathBuf,
    blob: PathBuf,
    out: PathBuf,
    state: PathBuf,
    held_at_kill: u64,
}

const INTERRUPTED_SIZE: usize = 64 << 20;

fn interrupted_send(t: &Path, seed: u64, min_held: u64) -> Interrupted {
    let key = keygen(t, "k");
    let src = t.join("src");
    std::fs::create_dir(&src).unwrap();
    let blob = src.join("blob");
    write_random(&blob, INTERRUPTED_SIZE, seed);
    let out = t.join("out");
    let state = t.join("state");
    let mut recv = Recv::start(&key, &out, &["--state-dir", state.to_str().unwrap()]);
    let to = recv.to();
    let (k2, b2) = (key.clone(), blob.clone());
    let sender = std::thread::spawn(move || send(&k2, &to, &["--streams", "2", "--frame-size", "1M", "--max-rate", "12M"], &[&b2]));
    let deadline = Instant::now() + Duration::from_secs(30);
    let held = loop {
        if let Some((_, n)) = held_frames(&state) {
            if n >= min_held {
                break n;
            }
        }
        assert!(Instant::now() < deadline, "no resume state appeared");
        std::thread::sleep(Duration::from_millis(20));
    };
    recv.child.kill().unwrap();
    recv.child.wait().unwrap();
    assert!(!sender.join().unwrap().status.success(), "the first send cannot succeed");
    assert!(!out.join("blob").exists(), "a partial file appeared under its final name");
    // What the dead receiver last recorded is what it holds.
    let (_, held_at_kill) = held_frames(&state).unwrap();
    assert!(held_at_kill >= held && held_at_kill < 64, "held {held_at_kill}");
    Interrupted { key, blob, out, state, held_at_kill }
}

#[test]
fn xfer_receiver_killed_mid_transfer_resumes_without_resending() {
    let t = tempfile::tempdir().unwrap();
    let Interrupted { key, blob, out, state, held_at_kill } = interrupted_send(t.path(), 5, 16);
    let size = INTERRUPTED_SIZE;

    let mut recv = Recv::start(&key, &out, &["--state-dir", state.to_str().unwrap(), "--once"]);
    let r = send(&key, &recv.to(), &["--streams", "2", "--frame-size", "1M", "--json"], &[&blob]);
    assert!(r.status.success(), "resume failed: {}", text(&r.stderr));
    let report: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let held_bytes = report["held_bytes"].as_u64().unwrap();
    let sent_bytes = report["sent_bytes"].as_u64().unwrap();
    assert_eq!(held_bytes, held_at_kill << 20, "{report}");
    assert_eq!(sent_bytes, size as u64 - held_bytes, "re-sent frames it held: {report}");
    assert!(recv.wait_exit(Duration::from_secs(30)).success());
    assert!(recv.wait_stderr("resuming from frames already held", Duration::from_secs(5)));
    assert_eq!(
        blake3::hash(&std::fs::read(out.join("blob")).unwrap()),
        blake3::hash(&std::fs::read(&blob).unwrap())
    );
    assert!(held_frames(&state).is_none(), "resume state left behind after commit");
}

#[test]
fn xfer_resume_rehashes_held_frames_and_resends_a_damaged_one() {
    let t = tempfile::tempdir().unwrap();
    let Interrupted { key, blob, out, state, held_at_kill } = interrupted_send(t.path(), 6, 8);
    let size = INTERRUPTED_SIZE;
    let (held_path, _) = held_frames(&state).unwrap();
    // Damage the first held frame in the part file: its record still says
    // held, its bytes no longer match.
    let list = std::fs::read(&held_path).unwrap();
    let first = list[24..].chunks(33).position(|c| c[0] == 1).unwrap();
    let part = held_path.with_extension("part");
    let mut bytes = std::fs::read(&part).unwrap();
    bytes[(first << 20) + 12345] ^= 0x40;
    std::fs::write(&part, &bytes).unwrap();

    let mut recv = Recv::start(&key, &out, &["--state-dir", state.to_str().unwrap(), "--once"]);
    let r = send(&key, &recv.to(), &["--streams", "2", "--frame-size", "1M", "--json"], &[&blob]);
    assert!(r.status.success(), "resume failed: {}", text(&r.stderr));
    let report: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(report["held_bytes"].as_u64().unwrap(), (held_at_kill - 1) << 20, "{report}");
    assert_eq!(report["sent_bytes"].as_u64().unwrap(), size as u64 - ((held_at_kill - 1) << 20), "{report}");
    assert!(recv.wait_exit(Duration::from_secs(30)).success());
    assert!(recv.wait_stderr("dropped=1", Duration::from_secs(5)));
    assert_eq!(
        blake3::hash(&std::fs::read(out.join("blob")).unwrap()),
        blake3::hash(&std::fs::read(&blob).unwrap())
    );
    assert!(held_frames(&state).is_none(), "resume state left behind after commit");
}

/// A tree for the rejection tests, and a receiving directory that already
/// holds an older `data/file` the transfer would overwrite.
fn rejection_setup(t: &Path) -> (PathBuf, PathBuf, PathBuf, String) {
    let key = keygen(t, "k");
    let src = t.join("data");
    std::fs::create_dir(&src).unwrap();
    // Only a large file: a batch of small ones could legitimately land
    // before the damaged frame.
    write_random(&src.join("file"), 4 << 20, 77);
    let out = t.join("out");
    std::fs::create_dir_all(out.join("data")).unwrap();
    std::fs::write(out.join("data/file"), b"the old content").unwrap();
    let before = digest(&out);
    (key, src, out, before)
}

#[test]
fn xfer_wrong_key_is_rejected_and_nothing_changes() {
    let t = tempfile::tempdir().unwrap();
    let (key, src, out, before) = rejection_setup(t.path());
    let other = keygen(t.path(), "other");
    let state = t.path().join("state");
    let mut recv = Recv::start(&key, &out, &["--state-dir", state.to_str().unwrap()]);
    let r = send(&other, &recv.to(), &[], &[&src]);
    assert!(!r.status.success());
    let err = text(&r.stderr);
    assert!(err.contains("does not hold our cluster key"), "stderr: {err}");
    assert!(recv.wait_stderr("rejected connection", Duration::from_secs(10)), "{}", recv.stderr_seen);
    assert_eq!(digest(&out), before);
    assert!(!state.exists(), "an unauthenticated peer made the receiver write state");
}

#[derive(Clone, Copy, PartialEq)]
enum Tamper {
    FlipBit,
    Replay,
    Truncate,
}

const HEADER: usize = 32;
const MAC: usize = 32;
const TYPE_DATA: u8 = 5;

/// A TCP relay to `target`. On the first `tampered` connections it parses
/// the sender's frames (layout from the module docs) and damages the
/// `nth` data frame; other connections pass untouched.
fn tamper_proxy(target: SocketAddr, how: Tamper, nth: usize, tampered: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let done2 = done.clone();
    std::thread::spawn(move || {
        for (i, c) in l.incoming().enumerate() {
            let Ok(client) = c else { return };
            let Ok(server) = TcpStream::connect(target) else { return };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut &s2, &mut &c2);
                let _ = c2.shutdown(Shutdown::Write);
            });
            let done = done2.clone();
            let tamper = i < tampered;
            std::thread::spawn(move || {
                if tamper {
                    let _ = relay_tampering(&client, &server, how, nth, &done);
                } else {
                    let _ = std::io::copy(&mut &client, &mut &server);
                }
                let _ = server.shutdown(Shutdown::Write);
            });
        }
    });
    (addr, done)
}

fn relay_tampering(client: &TcpStream, server: &TcpStream, how: Tamper, nth: usize, done: &AtomicUsize) -> std::io::Result<()> {
    let (mut from, mut to) = (client, server);
    // Handshake: hello (48) then key proof (32).
    let mut hello = [0u8; 48];
    from.read_exact(&mut hello)?;
    to.write_all(&hello)?;
    let mut proof = [0u8; 32];
    from.read_exact(&mut proof)?;
    to.write_all(&proof)?;
    let mut seen = 0;
    loop {
        let mut h = [0u8; HEADER];
        from.read_exact(&mut h)?;
        let len = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
        let mut rest = vec![0u8; len + MAC];
        from.read_exact(&mut rest)?;
        if h[1] == TYPE_DATA {
            seen += 1;
            if seen == nth {
                done.fetch_add(1, Ordering::SeqCst);
                match how {
                    Tamper::FlipBit => rest[len / 2] ^= 0x10,
                    Tamper::Replay => {
                        to.write_all(&h)?;
                        to.write_all(&rest)?;
                    }
                    Tamper::Truncate => {
                        to.write_all(&h)?;
                        to.write_all(&rest[..len / 2])?;
                        // End the stream mid-frame (FIN, not RST: the
                        // receiver must see the short frame), cut the
                        // sender off, and drain the receiver until it hangs up.
                        let _ = server.shutdown(Shutdown::Write);
                        let _ = client.shutdown(Shutdown::Both);
                        server.set_read_timeout(Some(Duration::from_secs(10)))?;
                        let mut sink = [0u8; 4096];
                        while matches!((&*server).read(&mut sink), Ok(n) if n > 0) {}
                        return Ok(());
                    }
                }
            }
        }
        to.write_all(&h)?;
        to.write_all(&rest)?;
    }
}

fn tampered_transfer_is_rejected(how: Tamper, receiver_says: &str, sender_says: &str) {
    let t = tempfile::tempdir().unwrap();
    let (key, src, out, before) = rejection_setup(t.path());
    let state = t.path().join("state");
    let mut recv = Recv::start(&key, &out, &["--state-dir", state.to_str().unwrap()]);
    let (proxy, done) = tamper_proxy(recv.addr, how, 3, 1);
    let r = send(&key, &proxy.to_string(), &["--streams", "1", "--frame-size", "64K"], &[&src]);
    assert_eq!(done.load(Ordering::SeqCst), 1, "the proxy never tampered: {}", text(&r.stderr));
    assert!(!r.status.success(), "a tampered transfer succeeded");
    let err = text(&r.stderr);
    assert!(err.contains(sender_says), "sender stderr: {err}");
    assert!(recv.wait_stderr(receiver_says, Duration::from_secs(10)), "receiver stderr: {}", recv.stderr_seen);
    assert_eq!(digest(&out), before, "a file changed");
}

#[test]
fn xfer_flipped_bit_in_a_frame_is_rejected() {
    tampered_transfer_is_rejected(
        Tamper::FlipBit,
        "bad MAC on frame with sequence",
        "the frame was altered or forged",
    );
}

#[test]
fn xfer_replayed_frame_is_rejected() {
    tampered_transfer_is_rejected(
        Tamper::Replay,
        "replayed or reordered frame",
        "replayed or reordered frame",
    );
}

#[test]
fn xfer_truncated_frame_is_rejected() {
    tampered_transfer_is_rejected(Tamper::Truncate, "truncated frame", "all connections to the receiver were lost");
}

#[test]
fn xfer_dead_connection_hands_its_frames_to_the_others() {
    let t = tempfile::tempdir().unwrap();
    let key = keygen(t.path(), "k");
    let src = t.path().join("data");
    std::fs::create_dir(&src).unwrap();
    write_random(&src.join("file"), 24 << 20, 3);
    let out = t.path().join("out");
    let mut recv = Recv::start(&key, &out, &["--once"]);
    let (proxy, done) = tamper_proxy(recv.addr, Tamper::Truncate, 2, 1);
    let r = send(&key, &proxy.to_string(), &["--streams", "3", "--frame-size", "64K"], &[&src]);
    assert!(r.status.success(), "send failed: {}", text(&r.stderr));
    assert_eq!(done.load(Ordering::SeqCst), 1, "the proxy never cut a connection");
    assert!(text(&r.stderr).contains("connection lost"), "{}", text(&r.stderr));
    assert!(recv.wait_stderr("truncated frame", Duration::from_secs(10)));
    assert!(recv.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(digest(&src), digest(&out.join("data")));
}

#[test]
fn xfer_sender_pointed_at_a_non_drift_port_fails_cleanly() {
    let t = tempfile::tempdir().unwrap();
    let key = keygen(t.path(), "k");
    std::fs::write(t.path().join("f"), b"payload").unwrap();
    // An FTP-like server: greets and waits.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let got2 = got.clone();
    std::thread::spawn(move || {
        for c in l.incoming().take(8) {
            let Ok(mut c) = c else { return };
            let got = got2.clone();
            std::thread::spawn(move || {
                let _ = c.write_all(b"220 FTP server ready\r\n");
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    got.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    let started = Instant::now();
    let r = send(&key, &addr.to_string(), &["--streams", "2"], &[&t.path().join("f")]);
    assert!(!r.status.success());
    let err = text(&r.stderr);
    assert!(err.contains("is not a drift xfer peer") && err.contains("220 FTP "), "stderr: {err}");
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    std::thread::sleep(Duration::from_millis(100));
    let seen = got.lock().unwrap().clone();
    assert!(!seen.windows(7).any(|w| w == b"payload"), "file content leaked to a foreign server");

    // Nobody listening at all.
    let free = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let r = send(&key, &free.to_string(), &[], &[&t.path().join("f")]);
    assert!(!r.status.success());
    assert!(text(&r.stderr).contains("connecting to"), "stderr: {}", text(&r.stderr));
}

#[test]
fn xfer_inspection_hook_refusal_is_reported_to_the_sender() {
    let t = tempfile::tempdir().unwrap();
    let key = keygen(t.path(), "k");
    let src = t.path().join("in");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("clean.txt"), b"nothing to see").unwrap();
    std::fs::write(src.join("small-bad.txt"), b"xx EVIL xx").unwrap();
    // A large one goes through offer/frames/commit, not a batch.
    let mut big = vec![b'a'; 3 << 20];
    big[2_000_000..2_000_004].copy_from_slice(b"EVIL");
    std::fs::write(src.join("large-bad.bin"), &big).unwrap();
    let scanner = t.path().join("scan.sh");
    std::fs::write(&scanner, "#!/bin/sh\nif grep -q EVIL \"$1\"; then echo \"signature EVIL found in $2\"; exit 1; fi\nexit 0\n").unwrap();
    std::fs::set_permissions(&scanner, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = t.path().join("out");
    let mut recv = Recv::start(&key, &out, &["--once", "--inspect", scanner.to_str().unwrap()]);
    let r = send(&key, &recv.to(), &[], &[&src]);
    assert!(!r.status.success(), "refusals must fail the send");
    let err = text(&r.stderr);
    assert!(err.contains("in/small-bad.txt: refused by the receiver: refused by inspection: signature EVIL found in in/small-bad.txt"), "{err}");
    assert!(err.contains("in/large-bad.bin: refused by the receiver"), "{err}");
    assert!(recv.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(std::fs::read(out.join("in/clean.txt")).unwrap(), b"nothing to see");
    assert!(!out.join("in/small-bad.txt").exists());
    assert!(!out.join("in/large-bad.bin").exists());
}

#[test]
fn xfer_bad_flags_and_key_files_fail_with_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let key = keygen(t.path(), "k");
    std::fs::write(t.path().join("f"), b"x").unwrap();
    let r = send(&key, "127.0.0.1:9", &["--frame-size", "3M"], &[&t.path().join("f")]);
    assert!(!r.status.success());
    assert!(text(&r.stderr).contains("power of two"), "{}", text(&r.stderr));
    let short = t.path().join("short");
    std::fs::write(&short, [0u8; 16]).unwrap();
    let r = send(&short, "127.0.0.1:9", &[], &[&t.path().join("f")]);
    assert!(!r.status.success());
    assert!(text(&r.stderr).contains("must hold exactly 32 bytes"), "{}", text(&r.stderr));
    let again = drift().args(["xfer", "keygen"]).arg(&key).output().unwrap();
    assert!(!again.status.success(), "keygen overwrote a key");
}
