//! lftp through the proxy: `mirror -R` of a tree of small files while the
//! primary is migrated twice; lftp must exit successfully with no retry
//! allowed, and the last primary must hold the tree byte for byte.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::cluster::{drift_out, Cluster, ClusterSetup};
use common::node::tree;
use common::wait_until;

#[test]
fn lftp_mirror_through_migrations() {
    let c = Cluster::start(ClusterSetup { nodes: 3, node_extra: "proxies = [\"127.0.0.1/32\"]".into(), ..ClusterSetup::default() });
    c.wait_primary(Duration::from_secs(30));
    let proxy = c.start_proxy("");
    let src = tempfile::tempdir().unwrap();
    for d in 0..10 {
        std::fs::create_dir_all(src.path().join(format!("dir{d}"))).unwrap();
        for f in 0..30 {
            let body: Vec<u8> = (0..(500 + 97 * f)).map(|i| (i * 7 + d * 13 + f) as u8).collect();
            std::fs::write(src.path().join(format!("dir{d}/f{f}.bin")), body).unwrap();
        }
    }
    let script = format!(
        "set net:max-retries 1; set net:timeout 60; set cmd:fail-exit yes; set ftp:ssl-allow no; \
         open -u alice,alice-pw-1 ftp://{}; mirror -R {} tree",
        proxy.ftp(),
        src.path().display()
    );
    let mut lftp = Command::new("lftp").args(["-c", &script]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("lftp");
    let mut migrated = 0;
    for _ in 0..2 {
        let (_, before) = c.wait_primary(Duration::from_secs(30));
        let seq = c.history_seq();
        let going = wait_until(Duration::from_secs(60), || c.history_seq() >= seq + 20 || lftp.try_wait().unwrap().is_some());
        assert!(going, "lftp made no progress");
        if lftp.try_wait().unwrap().is_some() {
            break;
        }
        let (ok, _, err) = drift_out(&["migrate", "--config", c.guide_config.to_str().unwrap()]);
        assert!(ok, "migrate: {err}");
        c.wait_new_primary(&before, Duration::from_secs(30));
        migrated += 1;
    }
    assert!(wait_until(Duration::from_secs(120), || lftp.try_wait().unwrap().is_some()), "lftp did not finish");
    let out = lftp.wait_with_output().unwrap();
    assert!(out.status.success(), "lftp failed: {}\n{}", String::from_utf8_lossy(&out.stderr), proxy.logs());
    assert_eq!(migrated, 2, "lftp finished before the migrations could run");
    let (_, last) = c.wait_primary(Duration::from_secs(30));
    let want = tree(src.path());
    let got = tree(&c.node(&last).backing.join("alice/tree"));
    assert_eq!(got.len(), 310, "files and directories on the last primary");
    assert!(got == want, "the tree on {last} differs from the source");
}
