//! `drift user` and the life cycle of `drift node`: the users file never
//! holds a plaintext password, bad input changes nothing, SIGHUP reloads
//! without dropping sessions (and rejects an invalid file), SIGTERM stops
//! cleanly and unmounts, and the plain-directory mode serves without a
//! journal.

mod common;

use std::process::Command;
use std::time::Duration;

use common::node::*;

fn drift(args: &[&str]) -> std::process::Output {
    Command::new(drift_bin()).args(args).env("DRIFT_LOG", "warn").output().unwrap()
}

fn user_cmd(args: &[&str], password: &str) -> std::process::Output {
    let mut c = Command::new(drift_bin());
    c.args(args);
    pipe_stdin(c, password)
}

#[test]
fn user_add_passwd_del_list_keep_only_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    let f = file.to_str().unwrap();

    let out = user_cmd(&["user", "add", "alice", "--users", f, "--home", "/alice", "--perm", "read,list"], "first-secret\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("first-secret"), "plaintext password on disk");
    assert!(text.contains("$argon2id$"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);

    // Bad input: clear error, non-zero exit, file unchanged.
    for (args, needle) in [
        (vec!["user", "add", "alice", "--users", f, "--home", "/a", "--perm", "read"], "already exists"),
        (vec!["user", "add", "bob", "--users", f, "--home", "/b", "--perm", "read,fly"], "fly"),
        (vec!["user", "add", "bob", "--users", f, "--home", "/../etc", "--perm", "read"], ".."),
        (vec!["user", "add", "bob", "--users", f, "--home", "b", "--perm", "read"], "start with '/'"),
        (vec!["user", "add", "bad/name", "--users", f, "--home", "/b", "--perm", "read"], "bad/name"),
        (vec!["user", "add", "bob", "--users", f, "--home", "/b", "--perm", "read", "--allow-from", "nowhere"], "nowhere"),
        (vec!["user", "passwd", "nobody", "--users", f], "nobody"),
        (vec!["user", "del", "nobody", "--users", f], "nobody"),
    ] {
        let out = user_cmd(&args, "pw\n");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text, "{args:?} changed the file");
    }
    let out = user_cmd(&["user", "add", "bob", "--users", f, "--home", "/b", "--perm", "read"], "\n");
    assert!(!out.status.success(), "empty password accepted");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);

    let out = user_cmd(
        &["user", "add", "bob", "--users", f, "--home", "/bob/", "--perm", "write,list", "--allow-from", "10.0.0.0/8,127.0.0.1"],
        "bob-secret\n",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list = String::from_utf8(drift(&["user", "list", "--users", f]).stdout).unwrap();
    assert!(list.contains("alice") && list.contains("list,read"), "{list}");
    assert!(list.contains("bob") && list.contains("/bob ") && list.contains("10.0.0.0/8,127.0.0.1/32"), "{list}");

    let before = std::fs::read_to_string(&file).unwrap();
    let out = user_cmd(&["user", "passwd", "alice", "--users", f], "second-secret\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = std::fs::read_to_string(&file).unwrap();
    assert_ne!(before, after, "passwd did not change the hash");
    assert!(!after.contains("second-secret"));

    let out = drift(&["user", "del", "bob", "--users", f]);
    assert!(out.status.success());
    let list = String::from_utf8(drift(&["user", "list", "--users", f]).stdout).unwrap();
    assert!(!list.contains("bob"), "{list}");
    // A password on the command line is not even an option.
    let out = drift(&["user", "add", "carol", "--users", f, "--home", "/c", "--perm", "read", "--password", "x"]);
    assert!(!out.status.success());
}

#[test]
fn the_new_password_works_and_the_old_one_does_not() {
    let mut node = TestNode::start(NodeSetup::default());
    let out = user_cmd(&["user", "passwd", "alice", "--users", node.users_file.to_str().unwrap()], "changed-pw-2\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    node.signal(libc::SIGHUP);
    assert!(node.wait_log("initial state reloaded", Duration::from_secs(10)), "{}", node.logs());
    assert_eq!(Ftp::try_login(node.addr, "alice", "alice-pw-1").0, 530);
    let mut f = Ftp::login(node.addr, "alice", "changed-pw-2");
    assert_eq!(f.cmd("QUIT").0, 221);
    assert!(node.stop().success());
}

#[test]
fn sighup_reloads_without_dropping_sessions_and_rejects_bad_files() {
    let mut node = TestNode::start(NodeSetup {
        users: vec![user("alice", "alice-pw-1", "/alice", "list,read")],
        ..NodeSetup::default()
    });
    let since = node.last_seq();
    let users_before = std::fs::read_to_string(&node.users_file).unwrap();
    let mut f = Ftp::login(node.addr, "alice", "alice-pw-1");
    let (first, last) = f.stor("a.txt", b"one");
    assert!(first.0 == 550 || last.0 == 550, "write allowed before the reload: {first:?} {last:?}");

    // Grant write: replace alice with the same password and more rights.
    let uf = node.users_file.to_str().unwrap().to_owned();
    assert!(drift(&["user", "del", "alice", "--users", &uf]).status.success());
    let out = user_cmd(&["user", "add", "alice", "--users", &uf, "--home", "/alice", "--perm", "list,read,write"], "alice-pw-1\n");
    assert!(out.status.success());
    node.signal(libc::SIGHUP);
    assert!(node.wait_log("initial state reloaded", Duration::from_secs(10)), "{}", node.logs());
    // The same session, still open, may write now.
    let (first, last) = f.stor("a.txt", b"one");
    assert_eq!((first.0, last.0), (150, 226), "{first:?} {last:?}");

    // An invalid service file is rejected; the old state stays in force.
    let service_ok = std::fs::read_to_string(&node.service_file).unwrap();
    std::fs::write(&node.service_file, format!("{service_ok}\n[sessions]\nmax_total = 0\n")).unwrap();
    node.signal(libc::SIGHUP);
    assert!(node.wait_log("reload rejected", Duration::from_secs(10)), "{}", node.logs());
    assert!(node.logs().contains("max_total"), "the rejection names the problem:\n{}", node.logs());
    // An invalid users file (plaintext password) too.
    std::fs::write(&node.service_file, &service_ok).unwrap();
    std::fs::write(&node.users_file, "[[user]]\nname = \"alice\"\npassword_hash = \"alice-pw-1\"\nhome = \"/alice\"\n").unwrap();
    node.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || node.count_log("reload rejected") >= 2),
        "{}",
        node.logs()
    );
    assert!(node.logs().contains("plaintext"), "{}", node.logs());
    // The session survived all of it and still has write.
    let (first, last) = f.stor("b.txt", b"two");
    assert_eq!((first.0, last.0), (150, 226), "{first:?} {last:?}");
    let mut g = Ftp::login(node.addr, "alice", "alice-pw-1");
    assert_eq!(g.cmd("QUIT").0, 221);
    assert_eq!(f.cmd("QUIT").0, 221);
    assert_eq!(
        node.journal_ops(since),
        vec![write_entry("/alice/a.txt", b"one"), write_entry("/alice/b.txt", b"two")]
    );
    let _ = users_before;

    // SIGTERM: exit 0 and nothing left mounted.
    let status = node.stop();
    assert!(status.success(), "exit status {status}");
    assert!(!node.is_mounted(), "still mounted after SIGTERM");
    assert!(node.logs().contains("unmounted"), "{}", node.logs());
}

#[test]
fn bad_configuration_fails_clearly_and_mounts_nothing() {
    let node_dir = tempfile::tempdir().unwrap();
    let d = node_dir.path();
    std::fs::create_dir(d.join("backing")).unwrap();
    std::fs::create_dir(d.join("mnt")).unwrap();
    let cfg = d.join("node.toml");
    std::fs::write(
        &cfg,
        "[storage]\nbacking = \"backing\"\nmountpoint = \"mnt\"\njournal = \"j.db\"\n[state]\nusers = \"users.toml\"\nservice = \"service.toml\"\n",
    )
    .unwrap();
    write_service(&d.join("service.toml"), "");
    let run = || {
        Command::new(drift_bin())
            .args(["node", "--config"])
            .arg(&cfg)
            .env("DRIFT_LOG", "warn")
            .output()
            .unwrap()
    };
    // No users file.
    let out = run();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("users.toml"), "{err}");
    // A plaintext password.
    std::fs::write(d.join("users.toml"), "[[user]]\nname = \"a\"\npassword_hash = \"secret\"\nhome = \"/a\"\n").unwrap();
    let out = run();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("plaintext"), "{}", String::from_utf8_lossy(&out.stderr));
    // An unknown key in the node config.
    std::fs::write(&cfg, "[storage]\nbacking = \"backing\"\nfuse = false\nspeed = 11\n[state]\nusers = \"u\"\nservice = \"s\"\n").unwrap();
    let out = run();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("speed"), "{}", String::from_utf8_lossy(&out.stderr));
    // Nothing was mounted or created.
    assert!(std::fs::read_dir(d.join("mnt")).unwrap().next().is_none());
    assert!(!d.join("j.db").exists());
    assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(d.join("mnt").to_str().unwrap()));
}

#[test]
fn plain_mode_serves_the_backing_directory_without_a_journal() {
    let node = TestNode::start(NodeSetup {
        fuse: false,
        ..NodeSetup::default()
    });
    let content = data(300_000, 9);
    let mut f = Ftp::login(node.addr, "alice", "alice-pw-1");
    let (first, last) = f.stor("p.bin", &content);
    assert_eq!((first.0, last.0), (150, 226));
    assert_eq!(b3_file(&node.backing.join("alice/p.bin")), b3(&content));
    let (code, back) = f.retr("p.bin");
    assert_eq!((code, b3(&back)), (226, b3(&content)));
    assert_eq!(f.cmd("QUIT").0, 221);
    assert!(!node.journal.exists(), "plain mode created a journal");
    assert!(node.logs().contains("NO journal"), "{}", node.logs());
}

#[test]
fn sigterm_stops_transfers_in_flight_and_unmounts() {
    use std::io::Write;
    let mut node = TestNode::start(NodeSetup::default());
    let big = data(64 << 20, 11);
    let mut f = Ftp::login(node.addr, "alice", "alice-pw-1");
    let (first, last) = f.stor("big.bin", &big);
    assert_eq!((first.0, last.0), (150, 226));
    // A download whose client stops reading, and an upload that stalls
    // after a few bytes: both sit in zero-copy transfer threads.
    let mut down = Ftp::login(node.addr, "alice", "alice-pw-1");
    let _unread = down.epsv();
    assert_eq!(down.cmd("RETR big.bin").0, 150);
    let mut up = Ftp::login(node.addr, "alice", "alice-pw-1");
    let mut slow = up.epsv();
    assert_eq!(up.cmd("STOR slow.bin").0, 150);
    slow.write_all(b"first bytes").unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let t = std::time::Instant::now();
    let status = node.stop();
    assert!(status.success(), "exit {status:?}:\n{}", node.logs());
    assert!(t.elapsed() < Duration::from_secs(8), "stopping took {:?}", t.elapsed());
    assert!(!node.is_mounted(), "still mounted after the stop");
    assert!(!node.logs().contains("unmount failed"), "{}", node.logs());
    // The bytes the stalled upload had delivered were closed and journaled
    // before the unmount.
    assert_eq!(std::fs::read(node.backing.join("alice/slow.bin")).unwrap(), b"first bytes");
    let journaled: Vec<String> = node.journal_since(0).iter().map(describe).collect();
    assert!(
        journaled.contains(&write_entry("/alice/slow.bin", b"first bytes")),
        "{journaled:#?}"
    );
    drop(slow);
}

#[test]
fn help_documents_the_file_formats() {
    let out = drift(&["node", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in ["[storage]", "mountpoint", "journal", "fuse = false", "[state]", "docs/node.md", "SIGHUP"] {
        assert!(help.contains(needle), "drift node --help lacks {needle}:\n{help}");
    }
    let out = drift(&["user", "add", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in ["--home", "--perm", "list, read, write, delete, mkdir, rename", "--allow-from"] {
        assert!(help.contains(needle), "drift user add --help lacks {needle}:\n{help}");
    }
}

/// `drift user add` and `passwd` refuse a password shorter than the
/// minimum (default 10 characters, `--min-length N` or
/// `DRIFT_MIN_PASSWORD_LENGTH`), and change nothing when they do.
#[test]
fn short_passwords_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    let f = file.to_str().unwrap();
    let add = ["user", "add", "carol", "--users", f, "--home", "/c", "--perm", "read"];
    let out = user_cmd(&add, "nine-char\n");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("9 characters, fewer than the minimum of 10"), "{err}");
    assert!(!file.exists(), "a refused add wrote the users file");
    // Ten characters (not bytes: "é" is two) is enough.
    let out = user_cmd(&add, "ten-chars\u{e9}\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&file).unwrap();

    let passwd = ["user", "passwd", "carol", "--users", f];
    let out = user_cmd(&passwd, "short\n");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text, "a refused passwd changed the file");
    // The minimum is configurable, both ways.
    let out = user_cmd(&[&passwd[..], &["--min-length", "5"]].concat(), "short\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut c = Command::new(drift_bin());
    c.args(passwd).env("DRIFT_MIN_PASSWORD_LENGTH", "20");
    let out = pipe_stdin(c, "nineteen-characters\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("fewer than the minimum of 20"), "{out:?}");
    let help = String::from_utf8_lossy(&drift(&["user", "add", "--help"]).stdout).into_owned();
    assert!(help.contains("--min-length") && help.contains("default: 10"), "{help}");
}

/// A SIGHUP (an operator's reload, logrotate's postrotate) that arrives
/// while the node is still starting, after the mount and before the serve
/// loop listens for signals, must not kill it and leave a dead mount:
/// the node takes it as a reload once it serves.
#[test]
fn a_sighup_while_starting_is_a_reload_not_a_crash() {
    let mut node = TestNode::start(NodeSetup::default());
    node.stop();
    assert!(wait_until(Duration::from_secs(10), || !node.is_mounted()), "first node left its mount");
    // The window is a few milliseconds wide: start several times.
    for round in 0..5 {
        let child = Command::new(drift_bin())
            .args(["node", "--config"])
            .arg(&node.config)
            .env("DRIFT_LOG", "info,libunftp=warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let child = &mut child.0;
        // From the moment the mount appears until the FTP port answers, send
        // SIGHUPs back to back (bounded by the deadline).
        let pid = child.id() as i32;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !node.is_mounted() {
            assert!(std::time::Instant::now() < deadline, "the node did not mount");
            assert!(child.try_wait().unwrap().is_none(), "the node exited before mounting");
            std::thread::sleep(Duration::from_micros(200));
        }
        let mut sent = 0;
        let port = loop {
            assert!(std::time::Instant::now() < deadline, "the node never listened");
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the node died of a SIGHUP sent while it started ({status}, after {sent} signals)");
            }
            // The service file says 127.0.0.1:0: find the port the node bound.
            if let Some(port) = listening_port(pid) {
                break port;
            }
            unsafe { libc::kill(pid, libc::SIGHUP) };
            sent += 1;
            std::thread::sleep(Duration::from_micros(50));
        };
        // And on through the moment it binds its port and starts serving.
        let until = std::time::Instant::now() + Duration::from_millis(100);
        while std::time::Instant::now() < until {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the node died of a SIGHUP sent as it began to serve ({status})");
            }
            unsafe { libc::kill(pid, libc::SIGHUP) };
            std::thread::sleep(Duration::from_micros(200));
        }
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--user", "alice:alice-pw-1", "-T", "/etc/hostname"])
            .arg(format!("ftp://127.0.0.1:{port}/after-hup.txt"))
            .output()
            .unwrap();
        assert!(out.status.success(), "upload after the SIGHUPs: {}", String::from_utf8_lossy(&out.stderr));
        assert!(child.try_wait().unwrap().is_none(), "the node died");
        unsafe { libc::kill(pid, libc::SIGTERM) };
        assert!(wait_until(Duration::from_secs(20), || child.try_wait().ok().flatten().is_some()), "no exit after SIGTERM");
        assert!(!node.is_mounted(), "the node left its mount (round {round})");
    }
}

/// Kills a node the test started itself if the test fails midway (the
/// TestNode's own drop then removes any mount left).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The TCP port a process listens on (from /proc/net/tcp and its fds).
fn listening_port(pid: i32) -> Option<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_owned))
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // st 0A = LISTEN
        if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
            u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()
        } else {
            None
        }
    })
}
