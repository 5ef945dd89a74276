//! The guide proves what it stores: the primary's tree digest (sent every
//! `interval_secs`) equals the digest of the history's tree, through
//! uploads, renames of files and directories, and deletes.

mod common;

use std::time::Duration;

use common::cluster::{Cluster, ClusterSetup};
use common::ops_node::python;
use common::wait_until;

const OPS: &str = r#"
import ftplib, io, sys
host, port = sys.argv[1], int(sys.argv[2])
f = ftplib.FTP()
f.connect(host, port, timeout=30)
f.login("alice", "alice-pw-1")
for r in range(3):
    d = f"d{r}"
    f.mkd(d)
    f.mkd(f"{d}/sub")
    for i in range(3):
        f.storbinary(f"STOR {d}/sub/f{i}.bin", io.BytesIO(bytes([r, i]) * (3000 + 11 * i)))
    f.storbinary(f"STOR {d}/sub/f0.bin", io.BytesIO(b"rewritten" * 10))
    f.rename(f"{d}/sub/f1.bin", f"{d}/g.bin")
    f.delete(f"{d}/sub/f2.bin")
    f.rename(d, f"moved{r}")
f.quit()
"#;

#[test]
fn the_primarys_tree_digest_matches_the_historys() {
    let cluster = Cluster::start(ClusterSetup { nodes: 2, node_extra: "interval_secs = 1\n".into(), ..Default::default() });
    cluster.wait_primary(Duration::from_secs(15));
    let (h, p) = cluster.node("n1").ftp().rsplit_once(':').map(|(h, p)| (h.to_owned(), p.to_owned())).unwrap();
    python(OPS, &[&h, &p]);
    let last = cluster.node("n1").last_seq();
    assert!(cluster.wait_status(Duration::from_secs(10), |s| s["history_seq"].as_u64() == Some(last)).is_some());
    // Give the primary a few intervals to send its digest of the final tree.
    let guide = cluster.guide.as_ref().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || guide.has_log("tree digest matches") || guide.has_log("tree digest mismatch")),
        "no tree digest was compared\n{}",
        cluster.all_logs()
    );
    std::thread::sleep(Duration::from_secs(2));
    let s = cluster.status().unwrap();
    assert_eq!(s["digest_mismatches"], 0, "{}", cluster.all_logs());
}
