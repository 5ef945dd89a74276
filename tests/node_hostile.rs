//! Hostile input on the control connection of a real `drift node`, sent
//! with raw sockets (pipelined commands, over-long lines, idle
//! connections), and the shutdown and listen-port behaviour an operator
//! relies on. vsftpd handles each of these; so must the node.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::hostile_client::{Next, Raw};
use common::node::*;

const SHORT: Duration = Duration::from_secs(2);

fn node_with(service_extra: &str) -> TestNode {
    TestNode::start(NodeSetup {
        service_extra: service_extra.to_owned(),
        ..NodeSetup::default()
    })
}

/// `QUIT\r\nQUIT\r\n` in one write: one 221, the connection closes, and
/// its slot is free again (with max_total = 2, five such connections in
/// a row would otherwise lock everyone out).
#[test]
fn pipelined_quit_closes_and_frees_the_slot() {
    let node = node_with("[sessions]\nmax_total = 2\n");
    for i in 0..5 {
        let (mut c, code) = Raw::connect(node.addr);
        assert_eq!(code, 220, "connection {i} was refused: the previous ones still hold their slots");
        c.send(b"QUIT\r\nQUIT\r\n");
        assert_eq!(c.reply().0, 221, "connection {i}");
        assert!(c.closed_within(Duration::from_secs(5)), "connection {i} stayed open after QUIT");
    }
    // Both slots are usable at once.
    let _a = Raw::login(node.addr, "alice", "alice-pw-1");
    let _b = Raw::login(node.addr, "alice", "alice-pw-1");
}

/// Every command pipelined in one write is answered, in order.
#[test]
fn pipelined_commands_are_answered_in_order() {
    let node = node_with("");
    let mut c = Raw::login(node.addr, "alice", "alice-pw-1");
    c.send(b"CWD /\r\nCWD /\r\nPWD\r\nNOOP\r\n");
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.reply().0, 257);
    assert_eq!(c.reply().0, 200);

    let mut up = Ftp::login(node.addr, "alice", "alice-pw-1");
    assert_eq!(up.stor("a", b"renamed by a pipelined RNFR/RNTO").1 .0, 226);
    c.send(b"RNFR a\r\nRNTO b\r\nMKD d\r\nRMD d\r\nNOOP\r\n");
    assert_eq!(c.reply().0, 350, "RNFR");
    assert_eq!(c.reply().0, 250, "RNTO");
    assert_eq!(c.reply().0, 257, "MKD");
    assert_eq!(c.reply().0, 250, "RMD");
    assert_eq!(c.reply().0, 200, "NOOP");
    assert!(!node.backing.join("alice/a").exists());
    assert_eq!(std::fs::read(node.backing.join("alice/b")).unwrap(), b"renamed by a pipelined RNFR/RNTO");
}

/// Pipelined PASS lines are checked one at a time: the first wrong one
/// ends the attempt (530) and the rest get 503, so the right password
/// at the end of the batch does not log in.
#[test]
fn pipelined_pass_is_checked_once_per_user() {
    let node = node_with("[login]\nfailure_delay_ms = 200\n");
    let (mut c, _) = Raw::connect(node.addr);
    let t0 = Instant::now();
    c.send(b"USER alice\r\nPASS wrong0\r\nPASS wrong1\r\nPASS wrong2\r\nPASS alice-pw-1\r\nPWD\r\n");
    assert_eq!(c.reply().0, 331);
    assert_eq!(c.reply().0, 530, "first PASS");
    // The failure delay was served before the first answer.
    assert!(t0.elapsed() >= Duration::from_millis(200), "the failure delay was skipped");
    for i in 1..4 {
        let (code, text) = c.reply();
        assert_eq!(code, 503, "pipelined PASS {i}: {text}");
    }
    assert_eq!(c.reply().0, 530, "PWD must find the session logged out");
}

/// A line over 4 KiB: `500 Input line too long.` and the connection
/// closes, with or without a newline.
#[test]
fn over_long_lines_are_refused_and_close() {
    let node = node_with("");
    let (mut c, _) = Raw::connect(node.addr);
    c.send(&vec![b'A'; 64 * 1024]);
    let (code, text) = c.reply();
    assert_eq!((code, text.as_str()), (500, "500 Input line too long."));
    assert!(c.closed_within(Duration::from_secs(5)));

    let (mut c, _) = Raw::connect(node.addr);
    let mut line = b"USER ".to_vec();
    line.extend(vec![b'x'; 5000]);
    line.extend_from_slice(b"\r\n");
    c.send(&line);
    assert_eq!(c.reply().0, 500);
    assert!(c.closed_within(Duration::from_secs(5)));

    // A line just under the limit is an ordinary (unknown) command.
    let (mut c, _) = Raw::connect(node.addr);
    let mut line = vec![b'X'; 4000];
    line.extend_from_slice(b"\r\n");
    c.send(&line);
    let (code, _) = c.reply();
    assert!((500..=530).contains(&code), "{code}");
    assert_eq!(c.cmd("NOOP").0, 200);
}

/// USER names the users file could never hold are refused at once, and
/// the session can still log in properly afterwards.
#[test]
fn invalid_user_names_are_refused_at_once() {
    let node = node_with("[login]\nfailure_delay_ms = 2000\n");
    let (mut c, _) = Raw::connect(node.addr);
    for name in ["x".repeat(3000), "../etc".into(), "a b".into(), "-dash".into()] {
        let t0 = Instant::now();
        let (code, text) = c.cmd(&format!("USER {name}"));
        assert_eq!(code, 530, "USER {name:.20}: {text}");
        assert!(t0.elapsed() < Duration::from_millis(1500), "USER {name:.20} was not answered at once");
        // Not stored: PASS has no user to go with.
        assert_eq!(c.cmd("PASS whatever").0, 503);
    }
    assert_eq!(c.cmd("USER alice").0, 331);
    assert_eq!(c.cmd("PASS alice-pw-1").0, 230);
}

/// A new PASV closes the session's previous passive listener, so one
/// session cannot hold every passive port.
#[test]
fn a_new_pasv_replaces_the_pending_listener() {
    let node = node_with("");
    // Three passive ports, for sessions started after the reload: free
    // now, and below the kernel's ephemeral range (32768 and up), so no
    // client socket of a test running beside this one takes them.
    let base = free_port_window(3);
    std::fs::write(
        &node.service_file,
        format!("listen = \"127.0.0.1:0\"\npassive_ports = [{base}, {}]\n", base + 2),
    )
    .unwrap();
    node.signal(libc::SIGHUP);
    assert!(node.wait_log("SIGHUP: initial state reloaded", Duration::from_secs(10)), "{}", node.logs());
    let mut c = Raw::login(node.addr, "alice", "alice-pw-1");
    let first = c.pasv_port();
    let second = c.pasv_port();
    let ip = c.peer().ip();
    assert!(
        wait_until(Duration::from_secs(5), || TcpStream::connect_timeout(&SocketAddr::new(ip, first), SHORT).is_err()
            || first == second),
        "the first passive port {first} still accepts after a second PASV"
    );
    // Many PASV in a row in one session leave ports for another session.
    for _ in 0..20 {
        c.pasv_port();
    }
    let mut other = Raw::login(node.addr, "alice", "alice-pw-1");
    let (code, text) = other.cmd("PASV");
    assert_eq!(code, 227, "another session's PASV: {text}");
}

/// `max_per_address` bounds the connections of one client address;
/// other addresses are still served, and a closed connection frees its
/// place.
#[test]
fn connections_per_address_are_limited() {
    let node = node_with("[sessions]\nmax_per_address = 3\n");
    let mut held: Vec<Raw> = (0..3)
        .map(|i| {
            let (c, code) = Raw::connect(node.addr);
            assert_eq!(code, 220, "connection {i}");
            c
        })
        .collect();
    let (mut c, code) = Raw::connect(node.addr);
    assert_eq!(code, 421, "a fourth connection from 127.0.0.1 was accepted");
    assert!(c.closed_within(Duration::from_secs(5)));
    let mut other = Ftp::connect_from(node.addr, "127.0.0.2".parse().unwrap());
    assert_eq!(other.greeting.0, 220, "another address was refused");
    assert_eq!(other.cmd("QUIT").0, 221);

    let mut first = held.remove(0);
    assert_eq!(first.cmd("QUIT").0, 221);
    assert!(first.closed_within(Duration::from_secs(5)));
    assert!(
        wait_until(Duration::from_secs(5), || Raw::connect(node.addr).1 == 220),
        "the freed place was not given back"
    );
}

/// Before login the shorter `login_timeout_secs` applies; a logged-in
/// session keeps the ordinary idle timeout.
#[test]
fn idle_connections_before_login_time_out_sooner() {
    let node = node_with("login_timeout_secs = 1\n");
    let mut logged_in = Raw::login(node.addr, "alice", "alice-pw-1");
    let (mut anonymous, _) = Raw::connect(node.addr);
    let t0 = Instant::now();
    match anonymous.next(Duration::from_secs(10)) {
        Next::Reply(421, _) => {}
        other => panic!("expected 421 on login timeout, got {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    assert!(anonymous.closed_within(Duration::from_secs(5)));
    // Idle for longer than the login timeout, the logged-in one lives.
    assert_eq!(logged_in.cmd("NOOP").0, 200);
}

/// A malformed argument, an empty line or an unknown command gets an
/// error reply and the session stays usable.
#[test]
fn malformed_lines_get_an_error_and_keep_the_session() {
    let node = node_with("");
    let mut c = Raw::login(node.addr, "alice", "alice-pw-1");
    for line in [&b"REST -1\r\n"[..], b"REST abc\r\n", b"\r\n", b"\r\r\n", b"XYZZY\r\n"] {
        c.send(line);
        let (code, text) = c.reply();
        assert!((500..600).contains(&code), "{:?}: {text}", String::from_utf8_lossy(line));
        let (code, text) = c.cmd("NOOP");
        assert_eq!(code, 200, "after {:?} the session broke: {text}", String::from_utf8_lossy(line));
    }
}

/// Over the per-user session limit, PASS answers 421 with the reason and
/// the connection closes; it is not reported as a failed authentication.
#[test]
fn over_the_per_user_limit_is_421_with_a_reason() {
    let node = node_with("[sessions]\nmax_per_user = 1\n");
    let _first = Raw::login(node.addr, "alice", "alice-pw-1");
    let (mut c, _) = Raw::connect(node.addr);
    assert_eq!(c.cmd("USER alice").0, 331);
    let (code, text) = c.cmd("PASS alice-pw-1");
    assert_eq!(code, 421, "{text}");
    assert!(!text.contains("Authentication failed"), "{text}");
    assert!(text.contains("alice") && text.contains('1'), "the reason is missing: {text}");
    assert!(c.closed_within(Duration::from_secs(5)));
}

/// SIGTERM: every client reads a 421 before its connection closes, and
/// the node exits promptly (not after a runtime shutdown timeout).
#[test]
fn sigterm_tells_clients_and_exits_promptly() {
    let mut node = node_with("");
    let mut idle = Raw::login(node.addr, "alice", "alice-pw-1");
    let (mut anonymous, _) = Raw::connect(node.addr);
    // A download the client does not read: the transfer blocks on a full
    // socket until the node stops it.
    std::fs::write(node.backing.join("alice/big.bin"), data(64 << 20, 3)).unwrap();
    let mut downloading = Ftp::login(node.addr, "alice", "alice-pw-1");
    let _data = downloading.epsv();
    assert_eq!(downloading.cmd("RETR big.bin").0, 150);
    let t0 = Instant::now();
    let status = node.stop();
    let took = t0.elapsed();
    assert!(status.success(), "node exit status {status}");
    for (name, c) in [("logged-in", &mut idle), ("anonymous", &mut anonymous)] {
        match c.next(SHORT) {
            Next::Reply(421, _) => {}
            other => panic!("{name} client: expected 421, got {other:?}"),
        }
        assert!(c.closed_within(SHORT), "{name} client still open");
    }
    eprintln!("the node exited {took:?} after SIGTERM");
    assert!(took < Duration::from_millis(1500), "the node took {took:?} to exit after SIGTERM");
}

/// A busy listen port is reported with the port and how to choose
/// another, and the node exits with an error.
#[test]
fn a_busy_listen_port_is_named() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("backing")).unwrap();
    std::fs::write(dir.path().join("users.toml"), "").unwrap();
    std::fs::write(dir.path().join("service.toml"), format!("listen = \"127.0.0.1:{port}\"\n")).unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        "[storage]\nbacking = \"backing\"\nfuse = false\n[state]\nusers = \"users.toml\"\nservice = \"service.toml\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(drift_bin())
        .args(["node", "--config"])
        .arg(dir.path().join("node.toml"))
        .env("DRIFT_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the node started on a busy port: {err}");
    assert!(err.contains(&format!("port {port} is already in use")), "{err}");
    assert!(err.contains("listen") && err.contains("service.toml"), "no hint how to choose another port: {err}");
    drop(taken);
}

/// Small transfers answer in about a millisecond, not after a delayed ACK
/// (~40 ms each when the control connection used Nagle's algorithm: the
/// 226 waited behind the unacknowledged 150). Median of 15 STOR and RETR
/// of one byte, with a wide margin for debug builds on a busy machine.
#[test]
fn small_transfers_do_not_wait_for_delayed_acks() {
    let node = node_with("");
    let mut f = Ftp::login(node.addr, "alice", "alice-pw-1");
    let mut stor = Vec::new();
    let mut retr = Vec::new();
    for i in 0..15 {
        let t0 = Instant::now();
        let (first, last) = f.stor(&format!("s{i}"), b"x");
        stor.push(t0.elapsed());
        assert_eq!((first.0, last.0), (150, 226));
        let t0 = Instant::now();
        assert_eq!(f.retr(&format!("s{i}")), (226, b"x".to_vec()));
        retr.push(t0.elapsed());
    }
    stor.sort();
    retr.sort();
    let (s, r) = (stor[stor.len() / 2], retr[retr.len() / 2]);
    eprintln!("median 1-byte STOR {s:?}, RETR {r:?}");
    assert!(s < Duration::from_millis(20) && r < Duration::from_millis(20), "median STOR {s:?}, RETR {r:?}");
}

/// The first port of `n` consecutive ports in 20000..30000 that can all be
/// bound on 127.0.0.1 now (the start depends on the process id, so two
/// test runs at once look in different places).
fn free_port_window(n: u16) -> u16 {
    let start = 20_000 + (std::process::id() % 3_000) as u16 * 3;
    (0..3_000u16)
        .map(|i| 20_000 + (start - 20_000 + i * n) % 9_990)
        .find(|&base| (base..base + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()))
        .expect("no free window of passive ports in 20000..30000")
}

/// Commands that answer through the session (RNFR, RNTO, CWD, DELE) while
/// a download is in flight, then the download's end: every reply comes,
/// the rename happens, and the session (and its slot) stays usable. The
/// loop once waited for the session's lock while a handler's task held
/// it and waited for the loop, which hung the session for good.
#[test]
fn commands_during_a_transfer_are_answered_and_the_session_lives_on() {
    let node = node_with("[sessions]\nmax_total = 2\n");
    let big = data(16 * 1024 * 1024, 5);
    std::fs::write(node.backing.join("alice/big.bin"), &big).unwrap();
    for round in 0..10 {
        std::fs::write(node.backing.join("alice/a"), b"to be renamed").unwrap();
        let mut c = Raw::login(node.addr, "alice", "alice-pw-1");
        let port = c.pasv_port();
        let mut data_conn = TcpStream::connect(SocketAddr::new(c.peer().ip(), port)).unwrap();
        assert_eq!(c.cmd("RETR big.bin").0, 150, "round {round}");
        // The download is stalled on the unread data connection. The
        // commands may be answered before or after its 226 (RFC 959 lets a
        // server hold them until the transfer ends), but all of them, in
        // order.
        c.send(b"RNFR a\r\nRNTO b\r\nCWD /\r\nNOOP\r\nRNFR b\r\n");
        let got = std::io::Read::read_to_end(&mut data_conn, &mut Vec::new()).expect("reading the download");
        assert_eq!(got, big.len(), "round {round}");
        let replies: Vec<(u32, String)> = (0..6).map(|_| c.reply()).collect();
        let codes: Vec<u32> = replies.iter().map(|r| r.0).collect();
        let answers: Vec<u32> = codes.iter().copied().filter(|&c| c != 226).collect();
        assert_eq!(answers, vec![350, 250, 250, 200, 350], "round {round}: {replies:?}");
        assert_eq!(codes.iter().filter(|&&c| c == 226).count(), 1, "round {round}: {codes:?}");
        assert_eq!(c.cmd("RNTO c").0, 250, "round {round}");
        assert_eq!(std::fs::read(node.backing.join("alice/c")).unwrap(), b"to be renamed");
        std::fs::remove_file(node.backing.join("alice/c")).unwrap();
        assert_eq!(c.cmd("QUIT").0, 221, "round {round}");
        assert!(c.closed_within(Duration::from_secs(5)), "round {round}: the session did not close");
    }
    // The slots were freed each time: two sessions at once still fit.
    let _a = Raw::login(node.addr, "alice", "alice-pw-1");
    let _b = Raw::login(node.addr, "alice", "alice-pw-1");
}

/// A password that is not UTF-8 is a failed login like any other: 530
/// after the failure delay, and it counts towards the lockout.
#[test]
fn a_password_that_is_not_utf8_is_a_failed_login() {
    let node = node_with("[login]\nfailure_delay_ms = 300\nmax_failures = 2\nlock_by = \"user\"\n");
    for attempt in 0..2 {
        let (mut c, _) = Raw::connect(node.addr);
        assert_eq!(c.cmd("USER alice").0, 331);
        let t0 = Instant::now();
        c.send(b"PASS alice-pw-\xff\r\n");
        assert_eq!(c.reply().0, 530, "attempt {attempt}");
        assert!(t0.elapsed() >= Duration::from_millis(300), "attempt {attempt}: no failure delay");
    }
    // Two failures locked alice out: the right password is refused now.
    let (mut c, _) = Raw::connect(node.addr);
    assert_eq!(c.cmd("USER alice").0, 331);
    assert_eq!(c.cmd("PASS alice-pw-1").0, 530, "the non-UTF-8 attempts did not count");
}
