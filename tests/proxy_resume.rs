//! Downloads through the proxy survive a SIGKILL of the primary: the
//! client's data connection stays open, the proxy checks the file's BLAKE3
//! on the new primary and resumes with REST, and the client gets the same
//! bytes and a 226. A file that changed meanwhile is a failure, never a
//! splice of two files.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, ClusterProxy, ClusterSetup};
use common::node::Ftp;
use common::wait_until;

const MIB: usize = 1 << 20;

fn setup() -> ClusterSetup {
    ClusterSetup { nodes: 3, node_extra: "proxies = [\"127.0.0.1/32\"]".into(), ..ClusterSetup::default() }
}

/// A three-node cluster and a proxy, with `data` stored as `name` through
/// the proxy and replicated to every node; the proxy session stays open.
fn cluster_holding(name: &str, data: &[u8]) -> (Cluster, String, ClusterProxy, Ftp) {
    let c = Cluster::start(setup());
    let (_, first) = c.wait_primary(Duration::from_secs(30));
    let proxy = c.start_proxy("");
    let mut f = Ftp::login(proxy.addr(), "alice", "alice-pw-1");
    assert_eq!(f.stor(name, data).1 .0, 226);
    c.wait_converged(&first, Duration::from_secs(60));
    (c, first, proxy, f)
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| ((i / 4096) as u8).wrapping_mul(31).wrapping_add(seed) ^ (i as u8)).collect()
}

/// curl downloading `url` to `out` at `rate` bytes/s (so a test can act
/// in the middle). Files are far larger than what the socket buffers
/// between node, proxy and curl hold (a few MiB each on loopback), so
/// the node is still sending when it is killed.
fn slow_download(url: &str, out: &Path, rate: &str) -> Child {
    Command::new("curl")
        .args(["-sS", "--max-time", "120", "--limit-rate", rate, "-o"])
        .arg(out)
        .arg(url)
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl")
}

fn size(p: &Path) -> usize {
    std::fs::metadata(p).map(|m| m.len() as usize).unwrap_or(0)
}

/// Waits for curl to end (bounded); returns success and its stderr.
fn finish(mut child: Child, limit: Duration) -> (bool, String) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return (st.success(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("curl still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_download_survives_a_sigkill_of_the_primary_byte_identical() {
    let data = pattern(48 * MIB, 1);
    let (mut c, first, proxy, _f) = cluster_holding("big.bin", &data);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("big.bin");
    let curl = slow_download(&proxy.url("alice", "alice-pw-1", "/big.bin"), &out, "4M");
    assert!(wait_until(Duration::from_secs(30), || size(&out) >= MIB), "the download did not start");
    c.node_mut(&first).kill_mid_io();
    let (ok, err) = finish(curl, Duration::from_secs(120));
    assert!(ok, "curl failed across the failover: {err}\n{}", proxy.logs());
    let got = std::fs::read(&out).unwrap();
    assert!(got == data, "downloaded {} bytes, not the {} uploaded (or different ones)", got.len(), data.len());
    assert!(proxy.logs().contains("download resumed on the new primary"), "no resumption happened:\n{}", proxy.logs());
    let (_, now) = c.wait_primary(Duration::from_secs(30));
    assert_ne!(now, first);
}

#[test]
fn a_file_replaced_before_the_resume_is_refused_not_spliced() {
    let v1 = pattern(48 * MIB, 1);
    let v2 = pattern(48 * MIB, 2);
    let (mut c, first, proxy, mut f) = cluster_holding("f.bin", &v1);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f.bin");
    let curl = slow_download(&proxy.url("alice", "alice-pw-1", "/f.bin"), &out, "3M");
    assert!(wait_until(Duration::from_secs(30), || size(&out) >= MIB), "the download did not start");
    // Replace the file by a rename (the running download keeps reading
    // the old inode on the old primary); the guide holds it once 250.
    assert_eq!(f.stor("tmp.bin", &v2).1 .0, 226);
    assert_eq!(f.cmd("RNFR tmp.bin").0, 350);
    assert_eq!(f.cmd("RNTO f.bin").0, 250);
    let others: Vec<_> = c.nodes.iter().filter(|n| n.id != first).map(|n| n.backing.join("alice/f.bin")).collect();
    assert!(
        wait_until(Duration::from_secs(30), || others.iter().all(|p| std::fs::read(p).map(|b| b == v2).unwrap_or(false))),
        "the backups never got the new version"
    );
    c.node_mut(&first).kill_mid_io();
    let (ok, err) = finish(curl, Duration::from_secs(120));
    assert!(!ok, "curl succeeded although the file changed under the download");
    let got = std::fs::read(&out).unwrap_or_default();
    assert!(got.len() < v1.len() && v1.starts_with(&got), "the client got bytes that are not a prefix of the old file ({} bytes)", got.len());
    assert!(proxy.logs().contains("the file differs on the new primary"), "{err}\n{}", proxy.logs());
}

/// curl uploading `src` to `url` at `rate` bytes/s.
fn slow_upload(src: &Path, url: &str, rate: &str) -> Child {
    Command::new("curl")
        .args(["-sS", "--max-time", "120", "--limit-rate", rate, "-T"])
        .arg(src)
        .arg(url)
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl")
}

#[test]
fn an_upload_survives_a_sigkill_of_the_primary_from_the_spool() {
    let mut c = Cluster::start(setup());
    let (_, first) = c.wait_primary(Duration::from_secs(30));
    let proxy = c.start_proxy("");
    let spool = c.dir.path().join("spool");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("up.bin");
    let data = pattern(32 * MIB, 3);
    std::fs::write(&src, &data).unwrap();

    let curl = slow_upload(&src, &proxy.url("alice", "alice-pw-1", "/up.bin"), "4M");
    let on_first = c.node(&first).backing.join("alice/up.bin");
    assert!(wait_until(Duration::from_secs(30), || size(&on_first) >= 2 * MIB), "the upload did not reach the primary");
    assert!(std::fs::read_dir(&spool).unwrap().count() == 1, "no spool file while uploading");
    c.node_mut(&first).kill_mid_io();
    let (ok, err) = finish(curl, Duration::from_secs(120));
    assert!(ok, "curl failed across the failover: {err}\n{}", proxy.logs());
    let (_, now) = c.wait_primary(Duration::from_secs(30));
    assert_ne!(now, first);
    let got = std::fs::read(c.node(&now).backing.join("alice/up.bin")).unwrap_or_default();
    assert!(got == data, "the new primary holds {} bytes, not the {} sent (or other ones)", got.len(), data.len());
    assert!(proxy.logs().contains("upload finished on the new primary from the spool"), "{}", proxy.logs());
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0, "the spool was not removed");
    // And the guide has it: the third node gets the same bytes.
    let third = c.nodes.iter().find(|n| n.id != first && n.id != now).unwrap().backing.join("alice/up.bin");
    assert!(wait_until(Duration::from_secs(30), || std::fs::read(&third).map(|b| b == data).unwrap_or(false)), "not replicated");
}

#[test]
fn a_second_failover_during_the_resumed_download_also_ends_well() {
    let data = pattern(64 * MIB, 5);
    let (mut c, first, proxy, _f) = cluster_holding("twice.bin", &data);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("twice.bin");
    let curl = slow_download(&proxy.url("alice", "alice-pw-1", "/twice.bin"), &out, "4M");
    assert!(wait_until(Duration::from_secs(30), || size(&out) >= MIB), "the download did not start");
    c.node_mut(&first).kill_mid_io();
    assert!(proxy.wait_log("download resumed on the new primary", Duration::from_secs(30)), "{}", proxy.logs());
    let (_, second) = c.wait_primary(Duration::from_secs(30));
    assert_ne!(second, first);
    c.node_mut(&second).kill_mid_io();
    let (ok, err) = finish(curl, Duration::from_secs(120));
    assert!(ok, "curl failed across two failovers: {err}\n{}", proxy.logs());
    let got = std::fs::read(&out).unwrap();
    assert!(got == data, "downloaded {} bytes, not the {} uploaded (or different ones)", got.len(), data.len());
    assert_eq!(proxy.logs().matches("download resumed on the new primary").count(), 2, "{}", proxy.logs());
}

#[test]
fn a_migration_during_each_transfer_direction_ends_well() {
    let down = pattern(48 * MIB, 6);
    let (c, first, proxy, _f) = cluster_holding("down.bin", &down);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("up.bin");
    let up = pattern(32 * MIB, 7);
    std::fs::write(&src, &up).unwrap();
    let out = dir.path().join("down.bin");

    // Both directions at once, then a migration in the middle of both.
    let upload = slow_upload(&src, &proxy.url("alice", "alice-pw-1", "/up.bin"), "4M");
    let download = slow_download(&proxy.url("alice", "alice-pw-1", "/down.bin"), &out, "4M");
    let on_first = c.node(&first).backing.join("alice/up.bin");
    assert!(wait_until(Duration::from_secs(30), || size(&on_first) >= 2 * MIB && size(&out) >= 2 * MIB), "the transfers did not start");
    let (ok, _, err) = common::cluster::drift_out(&["migrate", "--config", c.guide_config.to_str().unwrap()]);
    assert!(ok, "migrate: {err}");
    let (_, second) = c.wait_new_primary(&first, Duration::from_secs(30));
    let (ok, err) = finish(upload, Duration::from_secs(120));
    assert!(ok, "the upload failed across the migration: {err}\n{}", proxy.logs());
    let (ok, err) = finish(download, Duration::from_secs(120));
    assert!(ok, "the download failed across the migration: {err}\n{}", proxy.logs());
    assert!(std::fs::read(&out).unwrap() == down, "the download differs");
    let (_, now) = c.wait_primary(Duration::from_secs(30));
    assert_eq!(now, second);
    assert!(
        wait_until(Duration::from_secs(30), || std::fs::read(c.node(&now).backing.join("alice/up.bin")).map(|b| b == up).unwrap_or(false)),
        "the new primary does not hold the uploaded file"
    );
}

#[test]
fn no_primary_within_the_patience_is_a_clear_failure_never_a_false_226() {
    let setup = ClusterSetup { nodes: 1, node_extra: "proxies = [\"127.0.0.1/32\"]".into(), ..ClusterSetup::default() };
    let mut c = Cluster::start(setup);
    let (_, only) = c.wait_primary(Duration::from_secs(30));
    let proxy = c.start_proxy("patience_secs = 3");
    let data = pattern(48 * MIB, 8);
    let mut f = Ftp::login(proxy.addr(), "alice", "alice-pw-1");
    assert_eq!(f.stor("d.bin", &data).1 .0, 226);
    drop(f);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d.bin");
    let src = dir.path().join("u.bin");
    std::fs::write(&src, &data[..32 * MIB]).unwrap();
    let download = slow_download(&proxy.url("alice", "alice-pw-1", "/d.bin"), &out, "4M");
    let upload = slow_upload(&src, &proxy.url("alice", "alice-pw-1", "/u.bin"), "4M");
    let on_node = c.node(&only).backing.join("alice/u.bin");
    assert!(wait_until(Duration::from_secs(30), || size(&out) >= MIB && size(&on_node) >= MIB), "the transfers did not start");
    c.node_mut(&only).kill_mid_io();
    let (ok, err) = finish(download, Duration::from_secs(60));
    assert!(!ok, "the download succeeded with no primary");
    let got = std::fs::read(&out).unwrap_or_default();
    assert!(got.len() < data.len() && data.starts_with(&got), "the partial download is not a prefix");
    let (ok, err_up) = finish(upload, Duration::from_secs(60));
    assert!(!ok, "the upload got a success with no primary");
    assert!(err.contains("451") || err_up.contains("451"), "no 451: {err} / {err_up}");
    assert!(proxy.logs().contains("no primary serving within 3s"), "{}", proxy.logs());
}
