//! Migrations the guide starts or runs: a primary whose threat stays over
//! the threshold is migrated away by itself (cause `threat`), and an
//! empty node that caught up can be promoted by `drift migrate` and then
//! serves (its own uploads replicate back).

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

#[test]
fn an_empty_node_catches_up_and_serves_after_drift_migrate() {
    let mut cluster = Cluster::start(ClusterSetup { nodes: 2, ..Default::default() });
    cluster.wait_primary(Duration::from_secs(15));
    ops(&cluster, "n1", "a", "4");
    cluster.node_mut("n2").kill();
    let n2 = cluster.node("n2");
    std::fs::remove_dir_all(&n2.backing).unwrap();
    std::fs::create_dir_all(n2.backing.join("alice")).unwrap();
    std::fs::remove_file(&n2.journal).unwrap();
    let _ = std::fs::remove_dir_all(&n2.state_dir);
    cluster.node_mut("n2").start();
    cluster.wait_converged("n1", Duration::from_secs(30));
    let (ok, out, err) = drift_out(&[
        "migrate", "--to", "n2", "--reason", "promote the caught-up node", "--guide", &cluster.guide_addr(), "--key", cluster.key.to_str().unwrap(),
    ]);
    assert!(ok, "drift migrate failed: {out}{err}\n{}", cluster.all_logs());
    let (epoch, primary) = cluster.wait_primary(Duration::from_secs(10));
    assert_eq!((epoch, primary.as_str()), (2, "n2"));
    ops(&cluster, "n2", "b", "2");
    cluster.wait_converged("n2", Duration::from_secs(30));
    let s = cluster.status().unwrap();
    let m = s["migrations"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((m["from"].as_str(), m["to"].as_str(), m["cause"].as_str(), m["reason"].as_str()), (Some("n1"), Some("n2"), Some("migrate"), Some("promote the caught-up node")), "{m}");
    for phase in ["detect_ms", "wait_lease_ms", "catch_up_ms", "promote_ms"] {
        assert!(m["phases"][phase].is_u64(), "phase {phase} missing: {m}");
    }
    let old = s["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "n1").unwrap().clone();
    assert_eq!(old["role"], "backup", "{old}");
    // A migration to the node that already is primary fails with a reason.
    let (ok, _, err) = drift_out(&["migrate", "--to", "n2", "--guide", &cluster.guide_addr(), "--key", cluster.key.to_str().unwrap()]);
    assert!(!ok && err.contains("already the primary"), "{err}");
}
