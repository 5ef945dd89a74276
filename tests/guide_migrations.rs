//! Migrations the guide starts by itself: a primary whose threat stays
//! over the threshold is migrated away (cause `threat`), and no node over
//! the threshold is chosen. (`drift migrate` to a caught-up empty node is
//! in tests/cluster_replication.rs.)

mod common;

use std::time::Duration;

use common::cluster::{drift_out, Cluster, ClusterSetup};
use common::ops_node::python;

/// Uploads and renames through one ftplib session; names carry a prefix so
/// a second run does not collide with the first.
const OPS: &str = r#"
import ftplib, io, sys
host, port, prefix, rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
f = ftplib.FTP()
f.connect(host, port, timeout=30)
f.login("alice", "alice-pw-1")
for r in range(rounds):
    d = f"{prefix}{r}"
    f.mkd(d)
    for i in range(3):
        f.storbinary(f"STOR {d}/f{i}.bin", io.BytesIO(bytes([r, i]) * (5000 + 37 * i)))
    f.rename(f"{d}/f0.bin", f"{d}/renamed.bin")
    f.delete(f"{d}/f1.bin")
f.quit()
"#;

fn ops(cluster: &Cluster, node: &str, prefix: &str, rounds: &str) {
    let ftp = cluster.node(node).ftp();
    let (h, p) = ftp.rsplit_once(':').unwrap();
    python(OPS, &[h, p, prefix, rounds]);
}

#[test]
fn a_threatened_primary_is_migrated_away_by_itself() {
    let cluster = Cluster::start(ClusterSetup {
        nodes: 2,
        guide_extra: "sustain_secs = 1\nthreat_threshold = 50\n".into(),
        node_extra: "threat_file = \"threat\"\n".into(),
        ..Default::default()
    });
    for n in &cluster.nodes {
        std::fs::write(n.dir.join("threat"), "0\n").unwrap();
    }
    let (_, old) = cluster.wait_primary(Duration::from_secs(15));
    assert_eq!(old, "n1");
    ops(&cluster, "n1", "t", "2");
    std::fs::write(cluster.node("n1").dir.join("threat"), "90\n").unwrap();
    let (epoch, new) = cluster.wait_new_primary("n1", Duration::from_secs(20));
    assert_eq!((epoch, new.as_str()), (2, "n2"));
    let s = cluster.status().unwrap();
    let m = s["migrations"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((m["cause"].as_str(), m["from"].as_str(), m["to"].as_str()), (Some("threat"), Some("n1"), Some("n2")), "{m}");
    cluster.wait_converged("n2", Duration::from_secs(30));
    // The threatened node is never chosen back while over the threshold.
    let (ok, out, _) = drift_out(&["migrate", "--to", "n1", "--guide", &cluster.guide_addr(), "--key", cluster.key.to_str().unwrap()]);
    assert!(!ok, "a migration to a threatened node succeeded: {out}");
}
