//! The transfer and access log, end to end: a scripted session with
//! Python's ftplib against a real node, and the log file's lines compared
//! exactly with the format documented in docs/node.md ("The transfer
//! log"), in both formats. Also what the diagnostic log shows at the
//! default level.

mod common;

use std::time::Duration;

use common::node::{user, TestUser, ALL_PERMS};
use common::ops_node::{python, OpsNode};

fn users() -> Vec<TestUser> {
    vec![
        user("alice", "alice-pw-1", "/alice", ALL_PERMS),
        user("bob", "bob-pw-12345", "/bob", ALL_PERMS),
        TestUser {
            allow_from: Some("10.0.0.0/8"),
            ..user("remote", "remote-pw-1", "/remote", ALL_PERMS)
        },
    ]
}

const LOGIN_POLICY: &str = "[login]\nmax_failures = 3\nwindow_secs = 60\nlockout_secs = 60\nlock_by = \"user-and-ip\"\nfailure_delay_ms = 0\n";

/// The scripted session: one login attempt per connection, in order; each
/// prints its reply code.
const SESSION: &str = r#"
import ftplib, sys
port = int(sys.argv[1])
def attempt(user, password):
    f = ftplib.FTP()
    f.connect("127.0.0.1", port, timeout=30)
    try:
        f.login(user, password)
        print(user, "230")
        f.quit()
    except ftplib.error_perm as e:
        print(user, str(e)[:3])
        f.close()
def work(f):
    import io
    f.storbinary("STOR a.txt", io.BytesIO(b"hello"))
    got = io.BytesIO()
    f.retrbinary("RETR a.txt", got.write)
    assert got.getvalue() == b"hello"
    f.rename("a.txt", "b.txt")
    f.delete("b.txt")
    try:
        f.mkd("../../outside")
    except ftplib.error_perm as e:
        print("mkd", str(e)[:3])
f = ftplib.FTP()
f.connect("127.0.0.1", port, timeout=30)
f.login("alice", "alice-pw-1")
work(f)
f.quit()
print("alice 230")
attempt("alice", "wrong-password")
attempt("nobody", "whatever-pw")
attempt("remote", "remote-pw-1")
for _ in range(3):
    attempt("bob", "wrong-password")
attempt("bob", "bob-pw-12345")
"#;

/// What the session must log, in the text format with the time left out
/// and `ms` values replaced by `_`. Extend this list when the session
/// grows (uploads: `path=... bytes=N ms=_ seq=N`).
const EXPECTED: &[&str] = &[
    "127.0.0.1 alice LOGIN ok ms=_",
    "127.0.0.1 alice STOR ok path=/a.txt bytes=5 ms=_ seq=N",
    "127.0.0.1 alice RETR ok path=/a.txt bytes=5 ms=_",
    "127.0.0.1 alice RENAME ok path=/a.txt to=/b.txt ms=_",
    "127.0.0.1 alice DELE ok path=/b.txt ms=_",
    "127.0.0.1 alice MKD refused path=/../../outside ms=_ reason=\"path leaves the home directory\"",
    "127.0.0.1 alice LOGIN refused ms=_ reason=\"bad password\"",
    "127.0.0.1 nobody LOGIN refused ms=_ reason=\"unknown user\"",
    "127.0.0.1 remote LOGIN refused ms=_ reason=\"address not allowed\"",
    "127.0.0.1 bob LOGIN refused ms=_ reason=\"bad password\"",
    "127.0.0.1 bob LOGIN refused ms=_ reason=\"bad password\"",
    "127.0.0.1 bob LOGIN refused ms=_ reason=\"bad password\"",
    "127.0.0.1 bob LOGIN refused ms=_ reason=\"locked out\"",
];

const REPLIES: &str = "mkd 550\nalice 230\nalice 530\nnobody 530\nremote 530\nbob 530\nbob 530\nbob 530\nbob 530\n";

/// A text-format value as docs/node.md describes it: bare when it is a
/// plain token, else a JSON string.
fn token(v: &str) -> String {
    if !v.is_empty() && v.chars().all(|c| !c.is_control() && !c.is_whitespace() && c != '"' && c != '=') {
        v.to_owned()
    } else {
        serde_json::Value::String(v.to_owned()).to_string()
    }
}

/// `2026-12-01T10:00:00.123Z`: RFC 3339, UTC, milliseconds.
fn check_time(t: &str, line: &str) {
    let b = t.as_bytes();
    let ok = b.len() == 24
        && t.ends_with('Z')
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && t[..4].bytes().chain(t[20..23].bytes()).all(|c| c.is_ascii_digit());
    assert!(ok, "bad time {t:?} in {line:?}");
}

fn check_ms(v: &str, line: &str) -> String {
    assert!(!v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()), "bad ms {v:?} in {line:?}");
    "_".to_owned()
}

/// A text line, time checked and dropped, `ms` normalised.
fn normalise_text(line: &str) -> String {
    let (time, rest) = line.split_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
    check_time(time, line);
    rest.split(' ')
        .map(|f| match f.strip_prefix("ms=") {
            Some(v) => format!("ms={}", check_ms(v, line)),
            None => f.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A JSON line rendered as the normalised text line, after checking it
/// holds exactly the documented keys.
fn normalise_json(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"));
    let m = v.as_object().unwrap_or_else(|| panic!("not an object: {line:?}"));
    const KEYS: &[&str] = &["time", "client", "user", "command", "result", "path", "to", "bytes", "ms", "seq", "reason"];
    for k in m.keys() {
        assert!(KEYS.contains(&k.as_str()), "undocumented key {k:?} in {line:?}");
    }
    check_time(m["time"].as_str().expect("time"), line);
    let s = |k: &str| m.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let mut out = format!(
        "{} {} {} {}",
        s("client").expect("client"),
        token(&s("user").unwrap_or_else(|| "-".into())),
        token(&s("command").expect("command")),
        s("result").expect("result")
    );
    for k in ["path", "to", "bytes", "ms", "seq", "reason"] {
        let Some(v) = m.get(k) else { continue };
        let text = match v {
            serde_json::Value::String(s) => token(s),
            serde_json::Value::Number(n) if k == "ms" => check_ms(&n.to_string(), line),
            serde_json::Value::Number(n) => n.to_string(),
            other => panic!("{k} = {other} in {line:?}"),
        };
        out.push_str(&format!(" {k}={text}"));
    }
    out
}

/// The seq of the journal's `write` entry for the session's upload: the
/// STOR line must carry exactly it (it is shown as `seq=N` in EXPECTED).
fn upload_seq(node: &OpsNode) -> u64 {
    let journal = node.path("journal.db");
    let out = common::ok(&["journal", "list", "--journal", journal.to_str().expect("utf-8 path"), "--json"]);
    out.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("journal JSON"))
        .find(|e| e["op"] == "write" && e["path"] == "/alice/a.txt")
        .and_then(|e| e["seq"].as_u64())
        .expect("the upload's write entry")
}

fn run_session(format: &str, normalise: fn(&str) -> String) -> Vec<String> {
    let node = OpsNode::start(
        &users(),
        LOGIN_POLICY,
        &format!("[log]\ntransfers = \"xfer.log\"\nformat = \"{format}\"\n"),
        Some("info,libunftp=warn"),
    );
    let replies = python(SESSION, &[&node.port().to_string()]);
    assert_eq!(replies, REPLIES, "the session's replies");
    let log = node.path("xfer.log");
    let mut lines = Vec::new();
    let complete = common::wait_until(Duration::from_secs(10), || {
        lines = std::fs::read_to_string(&log).unwrap_or_default().lines().map(str::to_owned).collect();
        lines.len() >= EXPECTED.len()
    });
    assert!(complete, "{log:?} has {} lines, expected {}:\n{}", lines.len(), EXPECTED.len(), lines.join("\n"));
    // The transfer log went to the file, not to standard error.
    assert!(!node.logs().contains("LOGIN"), "LOGIN lines on standard error:\n{}", node.logs());
    let seq = format!("seq={}", upload_seq(&node));
    let got: Vec<String> = lines.iter().map(|l| normalise(l).replace(&seq, "seq=N")).collect();
    assert_eq!(got, EXPECTED, "raw lines:\n{}", lines.join("\n"));
    lines
}

#[test]
fn a_sessions_lines_in_text_format_are_exactly_as_documented() {
    run_session("text", normalise_text);
}

#[test]
fn a_sessions_lines_in_json_format_are_exactly_as_documented() {
    run_session("json", normalise_json);
}

/// At the default log level (no DRIFT_LOG) a session with refusals shows
/// readable lines: each refused login once (the transfer log's line on
/// standard error), no libunftp repeat of it, no Rust `Debug` dumps.
#[test]
fn default_log_level_shows_each_refusal_once_and_no_debug_dumps() {
    let node = OpsNode::start(&users(), LOGIN_POLICY, "", None);
    let script = r#"
import ftplib, sys
port = int(sys.argv[1])
f = ftplib.FTP(); f.connect("127.0.0.1", port, timeout=30)
try:
    f.login("alice", "wrong-password")
except ftplib.error_perm:
    pass
f.close()
f = ftplib.FTP(); f.connect("127.0.0.1", port, timeout=30)
f.login("alice", "alice-pw-1")
for cmd in ["SIZE missing.bin", "CWD /no/such/dir", "RMD nothing"]:
    try:
        f.sendcmd(cmd)
    except ftplib.error_perm:
        pass
f.nlst()
f.quit()
"#;
    python(script, &[&node.port().to_string()]);
    assert!(
        node.wait_log("alice LOGIN ok", Duration::from_secs(10)),
        "no LOGIN line on standard error:\n{}",
        node.logs()
    );
    // libunftp logs a refused command before it replies, so its lines (if
    // any) were written before the script got its answers.
    let lines = node.log_lines();
    let refusals: Vec<&String> = lines.iter().filter(|l| l.contains("wrong") || l.contains("bad password") || l.contains("Failed login")).collect();
    assert_eq!(refusals.len(), 1, "the failed login is not logged exactly once:\n{}", node.logs());
    assert!(refusals[0].contains("alice LOGIN refused"), "{}", refusals[0]);
    for l in &lines {
        for dump in ["{ ", "Some(", "Arc(", "Credentials", "Session {", "SocketAddr"] {
            assert!(!l.contains(dump), "a Rust Debug dump at the default level: {l}\n---\n{}", node.logs());
        }
        assert!(!l.contains("libunftp::server::controlchan::commands"), "a refused command logged by libunftp: {l}");
    }
}

/// logrotate moves the file and sends SIGHUP: the node reopens the path
/// and writes on into the new file.
#[test]
fn sighup_reopens_the_log_file_after_rotation() {
    let node = OpsNode::start(&users(), LOGIN_POLICY, "[log]\ntransfers = \"xfer.log\"\n", Some("info,libunftp=warn"));
    let login = r#"
import ftplib, sys
f = ftplib.FTP(); f.connect("127.0.0.1", int(sys.argv[1]), timeout=30)
f.login("alice", "alice-pw-1"); f.quit()
"#;
    let port = node.port().to_string();
    python(login, &[&port]);
    let log = node.path("xfer.log");
    let rotated = node.path("xfer.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    node.signal(libc::SIGHUP);
    assert!(node.wait_log("SIGHUP: initial state reloaded", Duration::from_secs(10)), "{}", node.logs());
    python(login, &[&port]);
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default().lines().map(normalise_text).collect::<Vec<_>>();
    assert!(common::wait_until(Duration::from_secs(10), || !read(&log).is_empty()), "nothing written to the reopened {log:?}");
    assert_eq!(read(&rotated), ["127.0.0.1 alice LOGIN ok ms=_"]);
    assert_eq!(read(&log), ["127.0.0.1 alice LOGIN ok ms=_"]);
}
