//! The proxy end to end: a real guide, real nodes and a real `drift
//! proxy`, driven by curl, Python ftplib and a raw control connection.
//! Logins are checked by the proxy, files go through byte-identical, and
//! sessions follow the primary across a migration and a failover.

mod common;

use std::time::Duration;

use common::cluster::{Cluster, ClusterSetup};
use common::node::Ftp;
use common::ops_node::python;

const PROXIES: &str = "proxies = [\"127.0.0.1/32\"]";

fn setup(nodes: usize) -> ClusterSetup {
    ClusterSetup { nodes, node_extra: PROXIES.into(), ..ClusterSetup::default() }
}

fn curl(args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = std::process::Command::new("curl").args(["-sS", "--max-time", "60"]).args(args).output().expect("curl");
    (out.status.success(), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn logins_are_checked_by_the_proxy_and_files_go_through_byte_identical() {
    let c = Cluster::start(setup(2));
    let (_, primary) = c.wait_primary(Duration::from_secs(30));
    let proxy = c.start_proxy("");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("up.bin");
    let data = random_bytes(3 << 20, 7);
    std::fs::write(&src, &data).unwrap();

    // A wrong password is refused by the proxy itself: no node sees it.
    let (ok, _, err) = curl(&["-T", src.to_str().unwrap(), &proxy.url("alice", "wrong", "/x.bin")]);
    assert!(!ok, "upload with a wrong password succeeded");
    assert!(err.contains("530") || err.contains("denied") || err.contains("Login"), "{err}");
    assert!(proxy.wait_log("login refused", Duration::from_secs(10)), "{}", proxy.logs());
    assert_eq!(Ftp::try_login(proxy.addr(), "nobody", "x").0, 530);

    // Upload, download, listing: byte-identical, and on the primary's disk.
    let (ok, _, err) = curl(&["-T", src.to_str().unwrap(), &proxy.url("alice", "alice-pw-1", "/up.bin")]);
    assert!(ok, "upload through the proxy: {err}\n{}", proxy.logs());
    let (ok, got, err) = curl(&[&proxy.url("alice", "alice-pw-1", "/up.bin")]);
    assert!(ok, "download through the proxy: {err}");
    assert!(got == data, "downloaded {} bytes differ from the {} uploaded", got.len(), data.len());
    let on_primary = std::fs::read(c.node(&primary).backing.join("alice/up.bin")).unwrap();
    assert!(on_primary == data, "the primary holds other bytes");
    let (ok, list, err) = curl(&[&proxy.url("alice", "alice-pw-1", "/")]);
    assert!(ok, "LIST: {err}");
    let list = String::from_utf8_lossy(&list);
    assert!(list.contains("up.bin") && list.contains(&(3 << 20).to_string()), "LIST: {list}");

    // ftplib: directories, rename, size, delete, and the session's
    // working directory, all relayed.
    let out = python(
        r#"
import ftplib, io, sys
f = ftplib.FTP()
f.connect("127.0.0.1", int(sys.argv[1]), timeout=30)
f.login("alice", "alice-pw-1")
f.mkd("d")
f.cwd("d")
f.storbinary("STOR a.txt", io.BytesIO(b"hello proxy\n"))
f.rename("a.txt", "b.txt")
print(f.pwd(), f.size("b.txt"), sorted(f.nlst()))
buf = io.BytesIO()
f.retrbinary("RETR b.txt", buf.write)
print(buf.getvalue().decode().strip())
f.delete("b.txt")
print(sorted(f.nlst()))
f.quit()
"#,
        &[&proxy.port.to_string()],
    );
    assert_eq!(out.trim(), "/d 12 ['b.txt']\nhello proxy\n[]", "ftplib session: {out}");
}

#[test]
fn the_proxy_refuses_bad_input_and_hides_the_nodes() {
    let c = Cluster::start(setup(1));
    let (_, primary) = c.wait_primary(Duration::from_secs(30));
    let proxy = c.start_proxy("");
    let node_port = c.node(&primary).ftp_port.to_string();

    let mut f = Ftp::connect(proxy.addr());
    assert_eq!(f.greeting.0, 220);
    assert!(!f.greeting.1.contains(&node_port), "greeting names the node: {:?}", f.greeting);
    assert_eq!(f.cmd("PWD").0, 530, "a command before login");
    assert_eq!(f.cmd("PASS alice-pw-1").0, 503, "PASS before USER");
    assert_eq!(f.cmd(&format!("USER {}", "a".repeat(5000))).0, 500, "an over-long line");
    assert_eq!(f.cmd_bytes(b"USER al\0ice").0, 501, "NUL");
    assert_eq!(f.cmd_bytes(b"USER \xff\xfe").0, 501, "not UTF-8");
    assert_eq!(f.cmd("USER alice").0, 331);
    assert_eq!(f.cmd("PASS alice-pw-1").0, 230);
    assert_eq!(f.cmd("PORT 10,0,0,9,4,1").0, 502, "active mode to a third party");
    assert_eq!(f.cmd("EPRT |1|10.0.0.9|1025|").0, 502);
    let (c227, text) = f.cmd("PASV");
    assert_eq!(c227, 227, "{text}");
    let nums: Vec<u16> = text.split(['(', ')']).nth(1).unwrap().split(',').map(|n| n.trim().parse().unwrap()).collect();
    let port = nums[4] * 256 + nums[5];
    assert!((21000..=29999).contains(&port), "PASV port {port} is not the proxy's");
    assert_eq!(&nums[..4], &[127, 0, 0, 1]);
    let (code, text) = f.list("LIST");
    assert_eq!(code, 226, "{text}");
    let (code, text) = f.cmd("CWD ../../..");
    assert!(code == 250 || code == 550, "{code} {text}");
    assert_eq!(f.cmd("PWD").1.split('"').nth(1), Some("/"), "`..` left the home");
    assert_eq!(f.cmd("SITE EXEC rm -rf /").0 / 100, 5);
    let (code, text) = f.cmd("STAT");
    assert!(!text.contains(&node_port), "{code} {text}");
    assert_eq!(f.cmd("RETR nothing-passive").0, 425, "a data command without PASV");
    assert_eq!(f.cmd("QUIT").0, 221);
    // A data connection from another address than the client's is closed,
    // and the client gets 425, not the node's 226 for a listing it never
    // received.
    let mut g = Ftp::connect_from(proxy.addr(), "127.0.0.3".parse().unwrap());
    assert_eq!(g.cmd("USER alice").0, 331);
    assert_eq!(g.cmd("PASS alice-pw-1").0, 230);
    let (code, listing) = g.list("LIST");
    assert_eq!(code, 425, "a data connection from a third address: {listing}");
    assert!(proxy.logs().contains("data connection from another address"), "{}", proxy.logs());
    // Nothing of that reached the node's tree.
    let tree: Vec<_> = std::fs::read_dir(c.node(&primary).backing.join("alice")).unwrap().collect();
    assert!(tree.is_empty(), "the node's tree changed: {tree:?}");
}

#[test]
fn sessions_follow_the_primary_across_a_migration_and_a_failover() {
    let mut c = Cluster::start(setup(3));
    let (e1, first) = c.wait_primary(Duration::from_secs(30));
    let proxy = c.start_proxy("");
    let mut kept = Ftp::login(proxy.addr(), "alice", "alice-pw-1");
    let (_, last) = kept.stor("before.txt", b"epoch one\n");
    assert_eq!(last.0, 226, "{last:?}");

    let (ok, _, err) = common::cluster::drift_out(&["migrate", "--config", c.guide_config.to_str().unwrap(), "--reason", "proxy test"]);
    assert!(ok, "migrate: {err}");
    let (e2, second) = c.wait_new_primary(&first, Duration::from_secs(30));
    assert!(e2 > e1);
    // The old primary is gone for good: whatever works now went to the new one.
    c.node_mut(&first).kill();
    let (_, last) = kept.stor("after-migrate.txt", b"epoch two\n");
    assert_eq!(last.0, 226, "the kept session after the migration: {last:?}\n{}", proxy.logs());
    let fresh = Ftp::login(proxy.addr(), "alice", "alice-pw-1").stor("fresh.txt", b"new session\n").1;
    assert_eq!(fresh.0, 226, "a new session after the migration: {fresh:?}");
    for (name, body) in [("after-migrate.txt", "epoch two\n"), ("fresh.txt", "new session\n"), ("before.txt", "epoch one\n")] {
        let got = std::fs::read_to_string(c.node(&second).backing.join("alice").join(name)).unwrap_or_default();
        assert_eq!(got, body, "{name} on the new primary {second}");
    }

    // SIGKILL of the primary: the kept session's next command is held
    // while the guide switches, then goes to the third node.
    c.node_mut(&second).kill();
    let (code, listing) = kept.list("NLST");
    assert_eq!(code, 226, "NLST across the failover: {listing}\n{}", proxy.logs());
    for name in ["before.txt", "after-migrate.txt", "fresh.txt"] {
        assert!(listing.contains(name), "{name} missing after the failover: {listing}");
    }
    let (_, e3_primary) = c.wait_primary(Duration::from_secs(30));
    assert_ne!(e3_primary, second);
    let (code, body) = kept.retr("fresh.txt");
    assert_eq!((code, body.as_slice()), (226, &b"new session\n"[..]));
    assert!(proxy.logs().contains("moving the session to the new primary"), "{}", proxy.logs());
}

/// Stores, makes directories and renames through one ftplib session on
/// the proxy until the file named by argv[2] exists (at most 90 s);
/// prints how many rounds it made. Any error reply fails the script.
const WRITER: &str = r#"
import ftplib, io, os, sys, time
f = ftplib.FTP()
f.connect("127.0.0.1", int(sys.argv[1]), timeout=60)
f.login("alice", "alice-pw-1")
n = 0
end = time.time() + 90
while not os.path.exists(sys.argv[2]) and time.time() < end:
    f.mkd(f"d{n}")
    f.storbinary(f"STOR d{n}/f.bin", io.BytesIO(bytes([n % 251]) * 70000))
    f.rename(f"d{n}/f.bin", f"d{n}/g.bin")
    n += 1
f.quit()
print(n)
"#;

#[test]
fn writes_during_migrations_are_held_not_failed() {
    let c = Cluster::start(setup(3));
    c.wait_primary(Duration::from_secs(30));
    let proxy = c.start_proxy("");
    let stop = c.dir.path().join("stop-writer");
    let mut writer = std::process::Command::new("python3")
        .arg("-c")
        .arg(WRITER)
        .arg(proxy.port.to_string())
        .arg(&stop)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut primaries = Vec::new();
    for _ in 0..3 {
        let (_, before) = c.wait_primary(Duration::from_secs(30));
        let seq = c.history_seq();
        // Let some writes land on this primary first.
        let going = common::wait_until(Duration::from_secs(30), || c.history_seq() >= seq + 6 || writer.try_wait().unwrap().is_some());
        if !going || writer.try_wait().unwrap().is_some() {
            let _ = writer.kill();
            let out = writer.wait_with_output().unwrap();
            panic!("the writer stopped after {} migrations:\n{}\n{}", primaries.len(), String::from_utf8_lossy(&out.stderr), proxy.logs());
        }
        let (ok, _, err) = common::cluster::drift_out(&["migrate", "--config", c.guide_config.to_str().unwrap()]);
        assert!(ok, "migrate: {err}");
        primaries.push(c.wait_new_primary(&before, Duration::from_secs(30)).1);
    }
    let seq = c.history_seq();
    assert!(common::wait_until(Duration::from_secs(30), || c.history_seq() >= seq + 6), "no writes after the last migration");
    std::fs::write(&stop, b"").unwrap();
    let out = writer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "a write failed during a migration:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        proxy.logs()
    );
    let rounds: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let (_, last) = c.wait_primary(Duration::from_secs(30));
    let home = c.node(&last).backing.join("alice");
    for n in 0..rounds {
        let got = std::fs::read(home.join(format!("d{n}/g.bin"))).unwrap_or_default();
        assert!(got.len() == 70000 && got.iter().all(|&b| b == (n % 251) as u8), "d{n}/g.bin wrong on {last}");
    }
}

/// Resets a TCP connection (SO_LINGER 0, then close): the peer sees an
/// error, not an end of file.
fn reset(s: std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on a descriptor this function owns, with a
    // correctly sized value.
    unsafe {
        libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, (&l as *const libc::linger).cast(), std::mem::size_of::<libc::linger>() as u32);
    }
    drop(s);
}

#[test]
fn a_broken_upload_is_never_answered_as_a_success() {
    use std::io::Write;
    let c = Cluster::start(setup(1));
    c.wait_primary(Duration::from_secs(30));
    let proxy = c.start_proxy("");
    let mut f = Ftp::login(proxy.addr(), "alice", "alice-pw-1");
    for verb in ["STOR", "APPE"] {
        let mut data = f.epsv();
        let (code, text) = f.cmd(&format!("{verb} broken-{verb}.bin"));
        assert_eq!(code, 150, "{verb}: {text}");
        data.write_all(&vec![1u8; 1 << 20]).unwrap();
        reset(data);
        let (code, text) = f.reply();
        assert!(code >= 400, "{verb} over a reset data connection was answered {code} {text}");
    }
    assert_eq!(f.cmd("NOOP").0, 200, "the session survives");
}
