//! End-to-end: `drift node` on a real FUSE mount, driven by real clients
//! (curl, lftp, Python's ftplib). Each test lists, uploads, downloads,
//! resumes an interrupted download and an interrupted upload, makes and
//! removes a directory, deletes and renames; contents are compared by
//! BLAKE3 and the journal must hold exactly the expected entries.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::node::*;

const PW: &str = "alice-pw-1";

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Checks the journal after a client session: exactly `expected`, except
/// that the entry equal to `"PARTIAL <path>"` must be a write of a strict
/// prefix of `big` (the interrupted upload).
/// An upload of /alice/big.bin was cut: its part is journaled (the server
/// took the cut for the end of the file) and shorter than the whole.
fn assert_interrupted_upload(node: &TestNode, since: u64, full: usize) {
    assert!(
        wait_until(Duration::from_secs(10), || node.journal_since(since).iter().any(|e| e["path"] == "/alice/big.bin")),
        "interrupted upload never journaled"
    );
    let part = std::fs::metadata(node.backing.join("alice/big.bin")).unwrap().len();
    assert!(part < full as u64, "upload was not interrupted ({part} bytes)");
}

/// The journal every client's scenario leaves: upload a, mkdir d, upload
/// d/b, rename it to d/c, delete it, rmdir d, (append to a,) an interrupted
/// upload of big and its resumption.
fn scenario_journal(a: &[u8], b: &[u8], big: &[u8], appended: Option<&[u8]>) -> Vec<String> {
    let mut v = vec![
        write_entry("/alice/a.bin", a),
        "mkdir /alice/d".into(),
        write_entry("/alice/d/b.bin", b),
        "rename /alice/d/b.bin -> /alice/d/c.bin".into(),
        "unlink /alice/d/c.bin".into(),
        "rmdir /alice/d".into(),
    ];
    if let Some(appended) = appended {
        v.push(write_entry("/alice/a.bin", appended));
    }
    v.push("PARTIAL /alice/big.bin".into());
    v.push(write_entry("/alice/big.bin", big));
    v
}

fn assert_journal(node: &TestNode, since: u64, expected: &[String], big: &[u8]) {
    let entries = node.journal_since(since);
    let got: Vec<String> = entries.iter().map(describe).collect();
    assert_eq!(got.len(), expected.len(), "journal:\n{}\nexpected:\n{}", got.join("\n"), expected.join("\n"));
    for (i, (g, want)) in got.iter().zip(expected).enumerate() {
        if let Some(path) = want.strip_prefix("PARTIAL ") {
            let e = &entries[i];
            assert_eq!(e["op"], "write", "entry {i}: {g}");
            assert_eq!(e["path"], path, "entry {i}: {g}");
            let size = e["size"].as_u64().unwrap() as usize;
            assert!(size < big.len(), "interrupted upload journaled as complete: {g}");
            assert_eq!(e["blake3"].as_str().unwrap(), b3(&big[..size]), "partial upload is not a prefix: {g}");
        } else {
            assert_eq!(g, want, "journal entry {i}\nwhole journal:\n{}", got.join("\n"));
        }
    }
}

fn curl(node: &TestNode) -> Command {
    let mut c = Command::new("curl");
    c.args(["-sS", "--fail", "--max-time", "60", "--user", &format!("alice:{PW}")]);
    let _ = node;
    c
}

fn url(node: &TestNode, path: &str) -> String {
    format!("ftp://127.0.0.1:{}{path}", node.port())
}

#[test]
fn curl_list_upload_download_resume_mkdir_rmdir_delete_rename() {
    let node = TestNode::start(NodeSetup::default());
    let since = node.last_seq();
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str| work.path().join(n);

    let a = data(3 * 1024 * 1024 + 123, 1);
    std::fs::write(w("a.bin"), &a).unwrap();
    must(curl(&node).arg("-T").arg(w("a.bin")).arg(url(&node, "/a.bin")));
    assert_eq!(b3_file(&node.backing.join("alice/a.bin")), b3(&a), "uploaded bytes differ on disk");

    let listing = must(curl(&node).arg(url(&node, "/")));
    assert!(listing.contains("a.bin") && listing.contains(&a.len().to_string()), "LIST: {listing}");
    let names = must(curl(&node).arg("--list-only").arg(url(&node, "/")));
    assert_eq!(names.lines().collect::<Vec<_>>(), vec!["a.bin"], "NLST");

    must(curl(&node).arg("-o").arg(w("a.down")).arg(url(&node, "/a.bin")));
    assert_eq!(b3_file(&w("a.down")), b3(&a));

    let b = data(200_000, 2);
    std::fs::write(w("b.bin"), &b).unwrap();
    must(curl(&node).args(["-Q", "MKD d"]).arg(url(&node, "/")).arg("-o").arg("/dev/null"));
    must(curl(&node).arg("-T").arg(w("b.bin")).arg(url(&node, "/d/b.bin")));
    must(curl(&node).args(["-Q", "RNFR d/b.bin", "-Q", "RNTO d/c.bin"]).arg(url(&node, "/")).arg("-o").arg("/dev/null"));
    assert_eq!(b3_file(&node.backing.join("alice/d/c.bin")), b3(&b));
    must(curl(&node).args(["-Q", "DELE d/c.bin", "-Q", "RMD d"]).arg(url(&node, "/")).arg("-o").arg("/dev/null"));
    assert!(!node.backing.join("alice/d").exists());

    // Interrupted download: curl stops after the first MiB (it closes the
    // data connection mid-file), then resumes with REST.
    let big = data(6 * 1024 * 1024 + 5, 3);
    std::fs::write(node.backing.join("alice/big.src"), &big).unwrap();
    must(curl(&node).args(["-r", "0-1048575", "-o"]).arg(w("big.part")).arg(url(&node, "/big.src")));
    let part = std::fs::metadata(w("big.part")).unwrap().len();
    assert_eq!(part, 1024 * 1024, "partial download");
    must(curl(&node).args(["-C", "-"]).arg("-o").arg(w("big.part")).arg(url(&node, "/big.src")));
    assert_eq!(b3_file(&w("big.part")), b3(&big), "resumed download differs");

    // Interrupted upload, then resumed (curl: SIZE, then APPE).
    std::fs::write(w("big.bin"), &big).unwrap();
    let out = run(Command::new("curl")
        .args(["-sS", "--user", &format!("alice:{PW}"), "--limit-rate", "1M", "--max-time", "1", "-T"])
        .arg(w("big.bin"))
        .arg(url(&node, "/big.bin")));
    assert_eq!(out.status.code(), Some(28), "upload should have been cut: {}", String::from_utf8_lossy(&out.stderr));
    // The server notices the cut data connection and journals the part.
    assert_interrupted_upload(&node, since, big.len());
    must(curl(&node).args(["-C", "-", "-T"]).arg(w("big.bin")).arg(url(&node, "/big.bin")));
    assert_eq!(b3_file(&node.backing.join("alice/big.bin")), b3(&big), "resumed upload differs");

    assert_journal(&node, since, &scenario_journal(&a, &b, &big, None), &big);
}

fn lftp_args(node: &TestNode, script: &str) -> Vec<String> {
    let prelude = "set cmd:fail-exit yes; set net:max-retries 1; set net:reconnect-interval-base 1; \
                   set net:timeout 15; set ftp:ssl-allow no; set xfer:clobber on; ";
    vec![
        "-u".into(),
        format!("alice,{PW}"),
        "-p".into(),
        node.port().to_string(),
        "-e".into(),
        format!("{prelude}{script}; bye"),
        "127.0.0.1".into(),
    ]
}

fn lftp(node: &TestNode, script: &str) -> Command {
    let mut c = Command::new("lftp");
    c.args(lftp_args(node, script));
    c
}

/// lftp killed (SIGKILL) after `secs`: an interrupted transfer.
fn lftp_killed_after(node: &TestNode, secs: &str, script: &str) -> Output {
    run(Command::new("timeout").args(["-s", "KILL", secs, "lftp"]).args(lftp_args(node, script)))
}

#[test]
fn lftp_list_upload_download_resume_mkdir_rmdir_delete_rename() {
    let node = TestNode::start(NodeSetup::default());
    let since = node.last_seq();
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str| work.path().join(n).display().to_string();

    let a = data(2 * 1024 * 1024 + 77, 11);
    let b = data(50_000, 12);
    std::fs::write(w("a.bin"), &a).unwrap();
    std::fs::write(w("b.bin"), &b).unwrap();
    let out = must(&mut lftp(
        &node,
        &format!(
            "put {a} -o a.bin; ls; nlist; get a.bin -o {down}; mkdir d; cd d; put {b} -o b.bin; pwd; cd ..; \
             mv d/b.bin d/c.bin; cls -1 d; rm d/c.bin; rmdir d",
            a = w("a.bin"),
            b = w("b.bin"),
            down = w("a.down")
        ),
    ));
    assert!(out.contains("a.bin"), "ls/nlist output: {out}");
    assert!(out.contains("c.bin"), "cls (MLSD) output: {out}");
    assert!(out.contains("/d"), "pwd output: {out}");
    assert_eq!(b3_file(Path::new(&w("a.down"))), b3(&a));
    assert!(!node.backing.join("alice/d").exists());

    // Interrupted download: lftp killed while rate-limited; then get -c.
    let big = data(5 * 1024 * 1024 + 9, 13);
    std::fs::write(node.backing.join("alice/big.src"), &big).unwrap();
    lftp_killed_after(&node, "1.5", &format!("set net:limit-rate 1000000; get big.src -o {}", w("big.part")));
    let part = std::fs::metadata(w("big.part")).map(|m| m.len()).unwrap_or(0);
    assert!(part < big.len() as u64, "download was not interrupted");
    must(&mut lftp(&node, &format!("get -c big.src -o {}", w("big.part"))));
    assert_eq!(b3_file(Path::new(&w("big.part"))), b3(&big), "resumed download differs");

    // Interrupted upload, then put -c (SIZE, REST, STOR).
    std::fs::write(w("big.bin"), &big).unwrap();
    lftp_killed_after(&node, "1.5", &format!("set net:limit-rate 0:1000000; put {} -o big.bin", w("big.bin")));
    assert_interrupted_upload(&node, since, big.len());
    must(&mut lftp(&node, &format!("put -c {} -o big.bin", w("big.bin"))));
    assert_eq!(b3_file(&node.backing.join("alice/big.bin")), b3(&big), "resumed upload differs");

    // lftp keeps each uploaded file's time with MFMT after a complete put
    // (not after the interrupted one): one `attr` entry after each write.
    let mut expected = Vec::new();
    for entry in scenario_journal(&a, &b, &big, None) {
        let mfmt = entry.strip_prefix("write ").map(|rest| format!("attr {}", rest.split(' ').next().unwrap_or("?")));
        expected.push(entry);
        expected.extend(mfmt);
    }
    assert_journal(&node, since, &expected, &big);
    for path in ["alice/a.bin", "alice/big.bin"] {
        let mtime = std::fs::metadata(node.backing.join(path)).unwrap().modified().unwrap();
        let local = std::fs::metadata(w(path.trim_start_matches("alice/"))).unwrap().modified().unwrap();
        let apart = mtime.duration_since(local).unwrap_or_else(|e| e.duration());
        assert!(apart < Duration::from_secs(1), "{path}: MFMT did not keep the client's time ({apart:?} apart)");
    }
}

const FTPLIB_SCRIPT: &str = r#"
import ftplib, io, json, socket, sys, hashlib
host, port, user, pw, a_path, big_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
out = {}
def conn():
    f = ftplib.FTP()
    f.connect(host, port, timeout=30)
    f.login(user, pw)
    return f
f = conn()
out["welcome"] = f.getwelcome()
out["feat"] = f.sendcmd("FEAT")
out["noop"] = f.voidcmd("NOOP")
a = open(a_path, "rb").read()
out["stor"] = f.storbinary("STOR a.bin", io.BytesIO(a))
out["size"] = f.size("a.bin")
out["mdtm"] = f.sendcmd("MDTM a.bin")
out["nlst"] = sorted(f.nlst())
out["mlsd"] = {n: dict(facts) for n, facts in f.mlsd()}
lines = []
f.retrlines("LIST", lines.append)
out["list"] = lines
buf = io.BytesIO()
out["retr"] = f.retrbinary("RETR a.bin", buf.write)
out["retr_ok"] = buf.getvalue() == a
out["mkd"] = f.mkd("d")
out["cwd"] = f.cwd("d")
out["pwd"] = f.pwd()
out["stor2"] = f.storbinary("STOR b.bin", io.BytesIO(b"hello ftplib\n" * 1000))
out["cdup"] = f.sendcmd("CDUP")
out["pwd2"] = f.pwd()
out["rename"] = f.rename("d/b.bin", "d/c.bin")
out["mlst"] = f.sendcmd("MLST d/c.bin")
out["dele"] = f.delete("d/c.bin")
out["rmd"] = f.rmd("d")
out["appe"] = f.storbinary("APPE a.bin", io.BytesIO(b"tail"))
out["size_after_appe"] = f.size("a.bin")

# Interrupted download: stop reading after some bytes, drop the connection.
big = open(big_path, "rb").read()
got = bytearray()
class Stop(Exception): pass
def take(chunk):
    got.extend(chunk)
    if len(got) >= 1_000_000:
        raise Stop()
try:
    f.retrbinary("RETR big.src", take, blocksize=65536)
except Stop:
    pass
f.sock.close()
f = conn()
offset = len(got)
f.retrbinary("RETR big.src", got.extend, rest=offset)
out["resume_download_offset"] = offset
out["resume_download_ok"] = bytes(got) == big

# Interrupted upload: send part of the file, then cut both connections.
sock = f.transfercmd("STOR big.bin")
sock.sendall(big[:1_500_000])
sock.close()
try:
    f.voidresp()
except ftplib.all_errors:
    pass
f.close()
f = conn()
have = f.size("big.bin")
out["resume_upload_offset"] = have
f.storbinary("STOR big.bin", io.BytesIO(big[have:]), rest=have)
out["resume_upload_size"] = f.size("big.bin")
out["quit"] = f.quit()
print(json.dumps(out))
"#;

#[test]
fn ftplib_list_upload_download_resume_mkdir_rmdir_delete_rename() {
    let node = TestNode::start(NodeSetup::default());
    let since = node.last_seq();
    let work = tempfile::tempdir().unwrap();
    let a = data(1_234_567, 21);
    let big = data(4 * 1024 * 1024 + 3, 22);
    std::fs::write(work.path().join("a.bin"), &a).unwrap();
    std::fs::write(work.path().join("big.bin"), &big).unwrap();
    std::fs::write(node.backing.join("alice/big.src"), &big).unwrap();
    let out = must(
        Command::new("python3")
            .arg("-c")
            .arg(FTPLIB_SCRIPT)
            .args(["127.0.0.1", &node.port().to_string(), "alice", PW])
            .arg(work.path().join("a.bin"))
            .arg(work.path().join("big.bin")),
    );
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(r["welcome"].as_str().unwrap().starts_with("220 drift test node"), "{}", r["welcome"]);
    let feat = r["feat"].as_str().unwrap();
    for f in ["EPSV", "REST STREAM", "SIZE", "MDTM", "MLST"] {
        assert!(feat.contains(f), "FEAT lacks {f}: {feat}");
    }
    assert!(r["stor"].as_str().unwrap().starts_with("226"));
    assert_eq!(r["size"], a.len());
    assert!(r["mdtm"].as_str().unwrap().starts_with("213 2"), "{}", r["mdtm"]);
    assert_eq!(r["nlst"], serde_json::json!(["a.bin", "big.src"]));
    assert_eq!(r["mlsd"]["a.bin"]["size"], a.len().to_string());
    assert_eq!(r["mlsd"]["a.bin"]["type"], "file");
    assert!(r["list"][0].as_str().unwrap().ends_with(" a.bin"), "{}", r["list"]);
    assert_eq!(r["retr_ok"], true);
    assert_eq!(r["pwd"], "/d");
    assert_eq!(r["pwd2"], "/");
    assert!(r["mlst"].as_str().unwrap().contains("size=13000"), "{}", r["mlst"]);
    assert_eq!(r["size_after_appe"], a.len() + 4);
    assert_eq!(r["resume_download_ok"], true);
    assert!(r["resume_download_offset"].as_u64().unwrap() >= 1_000_000);
    let up = r["resume_upload_offset"].as_u64().unwrap();
    assert!(up > 0 && up <= 1_500_000, "resumed upload from {up}");
    assert_eq!(r["resume_upload_size"], big.len());
    assert_eq!(b3_file(&node.backing.join("alice/big.bin")), b3(&big));
    let mut a_appended = a.clone();
    a_appended.extend_from_slice(b"tail");
    assert_eq!(b3_file(&node.backing.join("alice/a.bin")), b3(&a_appended));

    let b: Vec<u8> = b"hello ftplib\n".repeat(1000);
    assert_journal(&node, since, &scenario_journal(&a, &b, &big, Some(&a_appended)), &big);
}

/// Architecture guarantee 2 at the node: the kernel releases a FUSE file
/// asynchronously after close(2), so a server that answered 226 right after
/// closing could acknowledge an upload that is not journaled yet. Read the
/// journal the instant each 226 arrives.
#[test]
fn every_226_is_already_in_the_journal() {
    let node = TestNode::start(NodeSetup::default());
    let since = node.last_seq();
    let mut f = Ftp::login(node.addr, "alice", PW);
    // Read in-process: spawning `drift journal list` would take longer
    // than the race this test looks for. Large files make the
    // filesystem's hash at release slow enough to lose the race.
    let journal = drift_fs::Journal::open(&node.journal).expect("open journal");
    for i in 0..6u64 {
        let content = data(32 * 1024 * 1024 + i as usize * 4099, 100 + i);
        let name = format!("f{i}.bin");
        let (first, last) = f.stor(&name, &content);
        assert_eq!((first.0, last.0), (150, 226), "STOR {name}: {first:?} {last:?}");
        let path = format!("/alice/{name}");
        let entries = journal.list(since, None).expect("read journal");
        let entry = entries.iter().find(|e| e.path == path);
        assert!(entry.is_some(), "226 for {name} came before its journal entry");
        assert_eq!(entry.unwrap().size, Some(content.len() as u64));
    }
    assert_eq!(f.cmd("QUIT").0, 221);
    // And the CLI agrees.
    let ops = node.journal_ops(since);
    assert_eq!(ops.len(), 6, "{}", ops.join("\n"));
}
