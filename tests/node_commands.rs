//! End-to-end: the node's exact replies and the commands drift adds
//! (`HASH`, `MFMT`, `SITE CHMOD`), hostile inputs 3 (REST beyond the end)
//! and 8 (names that are not UTF-8), and the transfer log's storage lines,
//! against a real `drift node` on a FUSE mount with real clients (Python's
//! ftplib and hashlib, lftp) and a raw control connection for exact codes.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use common::cmd_node::{node_pid, rchar};
use common::node::*;

const PW: &str = "alice-pw-1";

fn node() -> TestNode {
    TestNode::start(NodeSetup::default())
}

fn login(node: &TestNode) -> Ftp {
    Ftp::login(node.addr, "alice", PW)
}

/// The journal's `blake3` of the latest `write` of `path`.
fn journal_blake3(node: &TestNode, path: &str) -> String {
    node.journal_since(0)
        .iter()
        .rev()
        .find(|e| e["op"] == "write" && e["path"] == path)
        .and_then(|e| e["blake3"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no write of {path} in the journal"))
}

#[test]
fn replies_are_exact() {
    let node = node();
    let mut f = login(&node);
    assert_eq!(f.cmd("MKD d").0, 257);
    let (c, t) = f.cmd("MKD d");
    assert!(c == 550 && t.contains("/d: File exists"), "MKD of an existing name: {c} {t}");
    let (c, t) = f.cmd("DELE d");
    assert!(c == 550 && t.contains("/d: Is a directory"), "DELE of a directory: {c} {t}");
    assert!(node.backing.join("alice/d").is_dir());

    // RETR and SIZE of a directory: 550 before any 150.
    let _data = f.epsv();
    let (c, t) = f.cmd("RETR d");
    assert!(c == 550 && t.contains("Is a directory"), "RETR of a directory: {c} {t}");
    let (c, t) = f.cmd("SIZE d");
    assert_eq!(c, 550, "SIZE of a directory: {t}");
    assert_eq!(f.cmd("NOOP").0, 200, "the session goes on");

    // Listings sorted by name; LIST and NLST of a file list that file.
    for name in ["c.txt", "a.txt", "b.txt"] {
        assert_eq!(f.stor(name, name.as_bytes()).1 .0, 226);
    }
    let (c, names) = f.list("NLST");
    assert_eq!(c, 226);
    assert_eq!(names.lines().collect::<Vec<_>>(), ["a.txt", "b.txt", "c.txt", "d"]);
    let (c, listing) = f.list("LIST");
    assert_eq!(c, 226);
    let order: Vec<&str> = listing.lines().filter_map(|l| l.split_whitespace().last()).collect();
    assert_eq!(order, ["a.txt", "b.txt", "c.txt", "d"], "{listing}");
    let (c, t) = f.list("MLSD b.txt");
    assert_eq!(c, 501, "MLSD of a file: {t}");
    let (c, one) = f.list("NLST b.txt");
    assert_eq!((c, one.lines().collect::<Vec<_>>()), (226, vec!["b.txt"]));
    let (c, one) = f.list("LIST d/../b.txt");
    assert_eq!(c, 226);
    assert_eq!(one.lines().count(), 1, "{one}");
    assert!(one.trim_end().ends_with(" 5 ") || one.trim_end().ends_with("b.txt"), "{one}");

    // STAT of a path: a listing on the control connection.
    let (c, t) = f.cmd("STAT d/..");
    assert_eq!(c, 213, "STAT path: {t}");
    for name in ["a.txt", "b.txt", "c.txt"] {
        assert!(t.contains(name), "STAT lacks {name}: {t}");
    }
    // HELP and STAT show no library or Rust type names.
    for cmd in ["HELP", "STAT"] {
        let (c, t) = f.cmd(cmd);
        assert!(c == 214 || c == 211, "{cmd}: {c} {t}");
        for bad in ["libunftp", "::", "Some(", "None", "DriftStorage", "unftp"] {
            assert!(!t.contains(bad), "{cmd} shows {bad:?}: {t}");
        }
    }
    let (c, t) = f.cmd("SITE HELP");
    assert!(c == 214 && t.contains("CHMOD") && t.contains("HELP"), "SITE HELP: {c} {t}");
    let (c, t) = f.cmd("FEAT");
    assert_eq!(c, 211);
    for feat in [" MFMT", " HASH BLAKE3*;SHA-256;SHA-1;MD5", " SITE CHMOD", " REST STREAM"] {
        assert!(t.lines().any(|l| l == feat), "FEAT lacks {feat:?}: {t}");
    }
    // A malformed argument: 501 (that the session then stays is the
    // control loop's part).
    assert_eq!(f.cmd("REST -1").0, 501);
}

/// Hashes with ftplib's HASH; SHA-256 and MD5 computed by hashlib.
const HASH_SCRIPT: &str = r#"
import ftplib, hashlib, json, sys
host, port, user, pw, local = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
data = open(local, 'rb').read()
f = ftplib.FTP()
f.connect(host, port, timeout=30)
f.login(user, pw)
with open(local, 'rb') as fh:
    f.storbinary('STOR h.bin', fh)
out = {'feat': f.sendcmd('FEAT'), 'default': f.sendcmd('OPTS HASH')}
out['blake3'] = f.sendcmd('HASH h.bin')
for algo in ['SHA-256', 'SHA-1', 'MD5']:
    out['opts_' + algo] = f.sendcmd('OPTS HASH ' + algo)
    out[algo] = f.sendcmd('HASH h.bin')
try:
    f.sendcmd('OPTS HASH CRC99')
except ftplib.error_perm as e:
    out['unknown'] = str(e)
f.sendcmd('OPTS HASH BLAKE3')
f.sendcmd('MKD sub')
f.rename('h.bin', 'sub/r.bin')
f.rename('sub', 'moved')
out['after_rename'] = f.sendcmd('HASH moved/r.bin')
try:
    f.sendcmd('HASH moved')
except ftplib.error_perm as e:
    out['dir'] = str(e)
out['sha256'] = hashlib.sha256(data).hexdigest()
out['sha1'] = hashlib.sha1(data).hexdigest()
out['md5'] = hashlib.md5(data).hexdigest()
f.quit()
print(json.dumps(out))
"#;

#[test]
fn hash_blake3_from_the_journal_and_others_as_hashlib() {
    let node = node();
    let work = tempfile::tempdir().unwrap();
    let content = data(3 * 1024 * 1024 + 17, 81);
    std::fs::write(work.path().join("h.bin"), &content).unwrap();
    let out = must(
        Command::new("python3")
            .args(["-c", HASH_SCRIPT, "127.0.0.1", &node.port().to_string(), "alice", PW])
            .arg(work.path().join("h.bin")),
    );
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let s = |k: &str| r[k].as_str().unwrap_or_else(|| panic!("no {k}: {r}")).to_owned();
    let len = content.len();
    let journal = journal_blake3(&node, "/alice/h.bin");
    assert_eq!(journal, b3(&content));
    assert_eq!(s("default"), "200 BLAKE3");
    assert_eq!(s("blake3"), format!("213 BLAKE3 0-{len} {journal} h.bin"));
    assert_eq!(s("opts_SHA-256"), "200 SHA-256");
    assert_eq!(s("SHA-256"), format!("213 SHA-256 0-{len} {} h.bin", s("sha256")));
    assert_eq!(s("SHA-1"), format!("213 SHA-1 0-{len} {} h.bin", s("sha1")));
    assert_eq!(s("MD5"), format!("213 MD5 0-{len} {} h.bin", s("md5")));
    assert!(s("unknown").starts_with("504"), "{}", s("unknown"));
    // Renames of the file and of its directory are followed.
    assert_eq!(s("after_rename"), format!("213 BLAKE3 0-{len} {journal} moved/r.bin"));
    assert!(s("dir").starts_with("550"), "{}", s("dir"));
    assert!(s("feat").contains("HASH BLAKE3*;SHA-256;SHA-1;MD5"), "{}", s("feat"));
}

/// `HASH BLAKE3` of a file the journal describes reads nothing of it
/// (the node's `rchar` grows by far less than the file), also after
/// renames of the file and of its directory; a file changed behind the
/// journal's back is read.
#[test]
fn hash_blake3_answers_from_the_journal_without_reading() {
    let node = node();
    let pid = node_pid(&node);
    let mut f = login(&node);
    let len = 16 << 20;
    let content = data(len, 82);
    // Written through the mount and closed only once its mtime is older
    // than a clock tick: a file journaled within a tick of its last write
    // is read instead (its timestamps cannot prove the order), which an
    // FTP upload on a fast machine may be.
    let since = node.last_seq();
    {
        use std::io::Write;
        let mut w = std::fs::File::create(node.mnt.join("alice/j.bin")).unwrap();
        w.write_all(&content).unwrap();
        let mtime = w.metadata().unwrap().modified().unwrap();
        assert!(wait_until(Duration::from_secs(5), || mtime.elapsed().is_ok_and(|e| e > Duration::from_millis(50))));
    }
    assert!(wait_until(Duration::from_secs(10), || node.journal_ops(since).iter().any(|e| e.starts_with("write /alice/j.bin"))));
    let hash = b3(&content);
    let read_by = |f: &mut Ftp, cmd: &str| {
        let before = rchar(pid);
        let reply = f.cmd(cmd);
        (reply, rchar(pid) - before)
    };
    let (reply, read) = read_by(&mut f, "HASH j.bin");
    assert_eq!(reply, (213, format!("213 BLAKE3 0-{len} {hash} j.bin")));
    assert!(read < len as u64 / 4, "HASH read {read} bytes of a journaled file");
    assert_eq!(f.cmd("MKD d").0, 257);
    assert_eq!(f.cmd("RNFR j.bin").0, 350);
    assert_eq!(f.cmd("RNTO d/k.bin").0, 250);
    assert_eq!(f.cmd("RNFR d").0, 350);
    assert_eq!(f.cmd("RNTO e").0, 250);
    let (reply, read) = read_by(&mut f, "HASH e/k.bin");
    assert_eq!(reply, (213, format!("213 BLAKE3 0-{len} {hash} e/k.bin")));
    assert!(read < len as u64 / 4, "HASH read {read} bytes of a renamed journaled file");
    // The other algorithms read the file.
    let (reply, read) = read_by(&mut f, "OPTS HASH MD5");
    assert_eq!(reply.0, 200);
    assert!(read < len as u64 / 4);
    let (reply, read) = read_by(&mut f, "HASH e/k.bin");
    assert!(reply.1.starts_with("213 MD5 0-16777216 "), "{reply:?}");
    assert!(read >= len as u64, "MD5 read only {read} bytes");
    assert_eq!(f.cmd("OPTS HASH BLAKE3").0, 200);

    // Changed behind the journal's back (on the backing directory), same
    // size: the journal no longer describes it, so it is read.
    let mut changed = content.clone();
    changed[len / 2] ^= 0xff;
    std::fs::write(node.backing.join("alice/e/k.bin"), &changed).unwrap();
    let (reply, read) = read_by(&mut f, "HASH e/k.bin");
    assert_eq!(reply, (213, format!("213 BLAKE3 0-{len} {} e/k.bin", b3(&changed))));
    assert!(read >= len as u64, "HASH read only {read} bytes of a changed file");
}

#[test]
fn mfmt_sets_the_modification_time() {
    let node = node();
    let since = node.last_seq();
    let mut f = login(&node);
    assert_eq!(f.stor("m.txt", b"mtime").1 .0, 226);
    let (c, t) = f.cmd("MFMT 20200102030405 m.txt");
    assert_eq!((c, t.as_str()), (213, "213 Modify=20200102030405; m.txt"));
    assert_eq!(f.cmd("MDTM m.txt"), (213, "213 20200102030405".to_owned()));
    let md = std::fs::metadata(node.backing.join("alice/m.txt")).unwrap();
    assert_eq!(md.mtime(), 1_577_934_245);
    let attrs: Vec<_> = node.journal_since(since).into_iter().filter(|e| e["op"] == "attr").collect();
    assert_eq!(attrs.len(), 1, "{attrs:?}");
    assert_eq!(attrs[0]["path"], "/alice/m.txt");
    assert_eq!(attrs[0]["mtime"], "2020-01-02T03:04:05Z");
    assert_eq!(f.cmd("MFMT 2020010203040 m.txt").0, 501);
    assert_eq!(f.cmd("MFMT 20200102030405 missing.txt").0, 550);

    // lftp mirror -R keeps times with MFMT.
    let work = tempfile::tempdir().unwrap();
    let local = work.path().join("tree");
    std::fs::create_dir(&local).unwrap();
    std::fs::write(local.join("old.txt"), b"old").unwrap();
    let old = std::time::UNIX_EPOCH + Duration::from_secs(1_300_000_000);
    std::fs::File::options().write(true).open(local.join("old.txt")).unwrap().set_modified(old).unwrap();
    must(Command::new("lftp").args([
        "-u",
        &format!("alice,{PW}"),
        "-p",
        &node.port().to_string(),
        "-e",
        &format!("set ftp:ssl-allow no; set cmd:fail-exit yes; mirror -R {} tree; bye", local.display()),
        "127.0.0.1",
    ]));
    let md = std::fs::metadata(node.backing.join("alice/tree/old.txt")).unwrap();
    assert_eq!(md.mtime(), 1_300_000_000);
}

#[test]
fn site_chmod_sets_permission_bits_and_is_journaled() {
    let mut setup = NodeSetup::default();
    setup.users.push(user("bob", "bob-pw-12345", "/alice", "list,read"));
    let node = TestNode::start(setup);
    let mut f = login(&node);
    assert_eq!(f.stor("p.txt", b"perm").1 .0, 226);
    let since = node.last_seq();
    let (c, t) = f.cmd("SITE CHMOD 640 p.txt");
    assert_eq!(c, 200, "{t}");
    let mode = |n: &TestNode| std::fs::metadata(n.backing.join("alice/p.txt")).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&node), 0o640);
    let attrs: Vec<_> = node.journal_since(since).into_iter().filter(|e| e["op"] == "attr").collect();
    assert_eq!(attrs.len(), 1, "{attrs:?}");
    assert_eq!((attrs[0]["path"].as_str(), attrs[0]["mode"].as_u64()), (Some("/alice/p.txt"), Some(0o640)));
    // The same mode again (what `lftp mirror -R` sends for most files)
    // succeeds and journals nothing: nothing changed.
    let since = node.last_seq();
    assert_eq!(f.cmd("SITE CHMOD 640 p.txt").0, 200);
    assert_eq!(f.cmd("NOOP").0, 200);
    assert!(node.journal_since(since).is_empty(), "{:?}", node.journal_since(since));
    // A mode that lets nobody read the file can be undone.
    assert_eq!(f.cmd("SITE CHMOD 000 p.txt").0, 200);
    assert_eq!(mode(&node), 0);
    assert_eq!(f.cmd("SITE CHMOD 640 p.txt").0, 200);
    assert_eq!(mode(&node), 0o640);
    // The home itself is refused (mode 0 would lock its user out).
    let home_mode = std::fs::metadata(node.backing.join("alice")).unwrap().permissions().mode();
    for home in ["SITE CHMOD 000 /", "SITE CHMOD 000 .", "MFMT 20200101000000 /"] {
        assert_eq!(f.cmd(home).0, 550, "{home}");
    }
    assert_eq!(std::fs::metadata(node.backing.join("alice")).unwrap().permissions().mode(), home_mode);
    // setuid and friends are refused; so is a user without `write`.
    assert_eq!(f.cmd("SITE CHMOD 4755 p.txt").0, 550);
    assert_eq!(f.cmd("SITE CHMOD 9 p.txt").0, 501);
    let mut b = Ftp::login(node.addr, "bob", "bob-pw-12345");
    let (c, t) = b.cmd("SITE CHMOD 777 p.txt");
    assert_eq!(c, 550, "{t}");
    assert_eq!(mode(&node), 0o640);
}

#[test]
fn rest_beyond_the_end_is_refused_before_anything_changes() {
    let node = node();
    let mut f = login(&node);
    assert_eq!(f.stor("r.bin", b"0123456789").1 .0, 226);
    let since = node.last_seq();
    let before = node.tree();
    assert_eq!(f.cmd("REST 12884901888").0, 350);
    let (first, _) = f.stor("r.bin", b"x");
    assert_eq!(first, (554, "554 Restart offset beyond the end of the file".to_owned()));
    assert_eq!(f.cmd("REST 5").0, 350);
    let (first, _) = f.stor("new.bin", b"x");
    assert_eq!(first.0, 554, "REST onto a missing file: {first:?}");
    assert_eq!(node.tree(), before, "nothing created or changed");
    assert!(std::fs::metadata(node.backing.join("alice/r.bin")).unwrap().blocks() * 512 < 1 << 20);
    // The refused REST is not carried over to the next transfer; a REST
    // within the file still resumes.
    let (_, last) = f.stor("plain.bin", b"whole");
    assert_eq!(last.0, 226);
    assert_eq!(std::fs::read(node.backing.join("alice/plain.bin")).unwrap(), b"whole");
    assert_eq!(f.cmd("REST 4").0, 350);
    let (_, last) = f.stor("r.bin", b"XY");
    assert_eq!(last.0, 226);
    assert_eq!(std::fs::read(node.backing.join("alice/r.bin")).unwrap(), b"0123XY");
    let writes: Vec<_> = node.journal_since(since).into_iter().filter(|e| e["op"] == "write").map(|e| e["path"].clone()).collect();
    assert_eq!(writes, [serde_json::json!("/alice/plain.bin"), serde_json::json!("/alice/r.bin")]);
}

#[test]
fn names_that_are_not_utf8_are_refused() {
    let node = node();
    let mut f = login(&node);
    let before = node.tree();
    for name in [&b"hx_\xff\xfe.bin"[..], &b"hx_\xfe\xff.bin"[..]] {
        let _data = f.epsv();
        let mut cmd = b"STOR ".to_vec();
        cmd.extend_from_slice(name);
        let (c, t) = f.cmd_bytes(&cmd);
        assert_eq!(c, 553, "STOR of a non-UTF-8 name: {t}");
    }
    let (c, _) = f.cmd_bytes(b"MKD d\xff");
    assert_eq!(c, 553);
    let (c, _) = f.cmd_bytes(b"RNFR a\xc3");
    assert_eq!(c, 553);
    assert_eq!(f.cmd("NOOP").0, 200, "the session goes on");
    assert_eq!(node.tree(), before, "nothing created");
    // Valid UTF-8 beyond ASCII is kept exactly.
    assert_eq!(f.stor("hx_ÿþ.bin", b"u").1 .0, 226);
    assert_eq!(std::fs::read(node.backing.join("alice/hx_ÿþ.bin")).unwrap(), b"u");
}

/// The transfer log's lines (text format, on standard error): `TIME
/// CLIENT USER COMMAND RESULT key=value...`. Returns them without the time
/// and the `ms=` field, for the given commands.
fn xferlog_lines(node: &TestNode, commands: &[&str]) -> Vec<String> {
    node.logs()
        .lines()
        .filter_map(|l| {
            let mut w = l.split(' ');
            let _time = w.next()?;
            let client = w.next()?;
            if client != "127.0.0.1" {
                return None;
            }
            let rest: Vec<&str> = w.filter(|f| !f.starts_with("ms=")).collect();
            commands.contains(rest.get(1)?).then(|| format!("{client} {}", rest.join(" ")))
        })
        .collect()
}

#[test]
fn transfer_log_storage_lines_are_exact() {
    let node = node();
    let mut f = login(&node);
    assert_eq!(f.stor("up.txt", b"hello").1 .0, 226);
    let seq = node
        .journal_since(0)
        .iter()
        .rev()
        .find(|e| e["op"] == "write" && e["path"] == "/alice/up.txt")
        .and_then(|e| e["seq"].as_u64())
        .unwrap();
    assert_eq!(f.retr("up.txt"), (226, b"hello".to_vec()));
    let mut data = f.epsv();
    assert_eq!(f.cmd("APPE up.txt").0, 150);
    std::io::Write::write_all(&mut data, b"!").unwrap();
    drop(data);
    assert_eq!(f.reply().0, 226);
    let seq2 = node.last_seq();
    assert_eq!(f.cmd("MKD dir").0, 257);
    assert_eq!(f.cmd("RNFR up.txt").0, 350);
    assert_eq!(f.cmd("RNTO dir/moved.txt").0, 250);
    assert_eq!(f.cmd("DELE dir/moved.txt").0, 250);
    assert_eq!(f.cmd("RMD dir").0, 250);
    let (c, _) = f.retr("missing.txt");
    assert_eq!(c, 550);
    assert_eq!(f.cmd("DELE /../etc/passwd").0, 550);
    let (c, _) = f.cmd_bytes(b"STOR bad\xff");
    assert_eq!(c, 553);
    let all = ["STOR", "APPE", "RETR", "DELE", "RENAME", "MKD", "RMD", "CHMOD", "MFMT"];
    let want = vec![
        format!("127.0.0.1 alice STOR ok path=/up.txt bytes=5 seq={seq}"),
        "127.0.0.1 alice RETR ok path=/up.txt bytes=5".to_owned(),
        format!("127.0.0.1 alice APPE ok path=/up.txt bytes=1 seq={seq2}"),
        "127.0.0.1 alice MKD ok path=/dir".to_owned(),
        "127.0.0.1 alice RENAME ok path=/up.txt to=/dir/moved.txt".to_owned(),
        "127.0.0.1 alice DELE ok path=/dir/moved.txt".to_owned(),
        "127.0.0.1 alice RMD ok path=/dir".to_owned(),
        "127.0.0.1 alice RETR refused path=/missing.txt reason=\"/missing.txt: No such file or directory\"".to_owned(),
        "127.0.0.1 alice DELE refused path=/../etc/passwd reason=\"path leaves the home directory\"".to_owned(),
        "127.0.0.1 alice STOR refused reason=\"file name is not valid UTF-8\"".to_owned(),
    ];
    assert!(
        wait_until(Duration::from_secs(10), || xferlog_lines(&node, &all).len() >= want.len()),
        "{}",
        node.logs()
    );
    assert_eq!(xferlog_lines(&node, &all), want, "{}", node.logs());
    // Each refusal once in the diagnostic log, without Debug dumps.
    assert_eq!(node.count_log("refused: path leaves the home directory"), 1, "{}", node.logs());
    assert_eq!(node.count_log("refused: /missing.txt: No such file or directory"), 1, "{}", node.logs());
    assert!(!node.logs().contains("Error {"), "{}", node.logs());
}

/// A data connection opened for a command that was then refused (here a
/// name that is not UTF-8) is never used by the next transfer: an upload
/// after it stores exactly its own bytes. Once, the unused connection
/// could take the next STOR and store the empty stream of its closed
/// socket, answered 226.
#[test]
fn a_data_connection_left_by_a_refused_command_never_serves_the_next_one() {
    let node = node();
    let mut f = login(&node);
    // The race was a few milliseconds wide: many rounds.
    for round in 0..100 {
        let left = f.epsv();
        let (c, t) = f.cmd_bytes(b"STOR bad\xff.bin");
        assert_eq!(c, 553, "round {round}: {t}");
        drop(left);
        let body = format!("upload number {round}");
        assert_eq!(f.stor("x.txt", body.as_bytes()).1 .0, 226, "round {round}");
        assert_eq!(std::fs::read(node.backing.join("alice/x.txt")).unwrap(), body.as_bytes(), "round {round}");
    }
}
