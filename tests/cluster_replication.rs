//! Replication end to end: a real guide and three real nodes (each with its
//! FUSE mount), driven by FTP clients talking to the primary directly.
//! Backups must converge to the primary (same `drift digest`) with the
//! same journal entry for entry, and an empty node must catch up and then
//! be able to take over.

mod common;

use std::time::Duration;

use common::cluster::{drift_out, Cluster, ClusterSetup};
use common::ops_node::python;

/// Uploads, makes directories, renames and deletes through one ftplib
/// session on `ftp` (host:port); prints nothing, fails on any error.
const OPS: &str = r#"
import ftplib, io, sys
host, port, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
prefix = sys.argv[4] if len(sys.argv) > 4 else "d"
f = ftplib.FTP()
f.connect(host, port, timeout=30)
f.login("alice", "alice-pw-1")
for r in range(rounds):
    d = f"{prefix}{r}"
    f.mkd(d)
    for i in range(4):
        f.storbinary(f"STOR {d}/f{i}.bin", io.BytesIO(bytes([r, i]) * (1000 + 37 * i)))
    f.rename(f"{d}/f0.bin", f"{d}/renamed.bin")
    f.delete(f"{d}/f1.bin")
    if r % 3 == 2:
        f.rename(d, f"moved-{d}")
f.quit()
"#;

fn ftp_host_port(ftp: &str) -> (String, String) {
    let (h, p) = ftp.rsplit_once(':').unwrap();
    (h.to_owned(), p.to_owned())
}

#[test]
fn backups_converge_entry_for_entry_under_uploads_renames_and_deletes() {
    let cluster = Cluster::start(ClusterSetup::default());
    let (epoch, primary) = cluster.wait_primary(Duration::from_secs(15));
    assert_eq!((epoch, primary.as_str()), (1, "n1"), "the first node to register leads epoch 1");
    let (h, p) = ftp_host_port(&cluster.node("n1").ftp());
    python(OPS, &[&h, &p, "6"]);
    let primary_last = cluster.node("n1").last_seq();
    assert!(primary_last >= 6 * 7, "the primary journaled the session ({primary_last} entries)");
    cluster.wait_converged("n1", Duration::from_secs(30));
    let s = cluster
        .wait_status(Duration::from_secs(10), |s| {
            s["history_seq"].as_u64() == Some(primary_last)
                && s["nodes"].as_array().unwrap().iter().all(|n| n["lag_entries"] == 0)
        })
        .unwrap_or_else(|| panic!("status never showed every node caught up: {:?}", cluster.status()));
    for n in s["nodes"].as_array().unwrap() {
        let want = if n["id"] == "n1" { "primary" } else { "backup" };
        assert_eq!(n["role"], want, "{n}");
        assert_eq!(n["applied_seq"].as_u64(), Some(primary_last), "{n}");
    }
}

#[test]
fn a_backup_refuses_ftp_sessions_with_421() {
    let cluster = Cluster::start(ClusterSetup { nodes: 2, ..Default::default() });
    cluster.wait_primary(Duration::from_secs(15));
    let backup = cluster.node("n2");
    let ftp = common::node::Ftp::connect(backup.ftp().parse().unwrap());
    assert_eq!(ftp.greeting.0, 421, "a backup greets with 421: {:?}", ftp.greeting);
}

#[test]
fn a_node_started_empty_catches_up_and_can_then_be_promoted() {
    let mut cluster = Cluster::start(ClusterSetup { nodes: 2, ..Default::default() });
    cluster.wait_primary(Duration::from_secs(15));
    let (h, p) = ftp_host_port(&cluster.node("n1").ftp());
    python(OPS, &[&h, &p, "4"]);
    // n2 loses everything and starts again empty.
    cluster.node_mut("n2").kill();
    let n2 = cluster.node("n2");
    std::fs::remove_dir_all(&n2.backing).unwrap();
    std::fs::create_dir_all(n2.backing.join("alice")).unwrap();
    std::fs::remove_file(&n2.journal).unwrap();
    let _ = std::fs::remove_dir_all(&n2.state_dir);
    cluster.node_mut("n2").start();
    cluster.wait_converged("n1", Duration::from_secs(30));

    let (ok, out, err) = drift_out(&[
        "migrate",
        "--to",
        "n2",
        "--reason",
        "test: promote the caught-up node",
        "--guide",
        &cluster.guide_addr(),
        "--key",
        cluster.key.to_str().unwrap(),
    ]);
    assert!(ok, "drift migrate failed: {out}{err}\n{}", cluster.all_logs());
    let (epoch, primary) = cluster.wait_primary(Duration::from_secs(10));
    assert_eq!(primary, "n2");
    assert!(epoch >= 2);
    // The promoted node serves: an upload there is acknowledged and
    // replicated back to the old primary, now a backup.
    let (h, p) = ftp_host_port(&cluster.node("n2").ftp());
    python(OPS, &[&h, &p, "1", "after"]);
    cluster.wait_converged("n2", Duration::from_secs(30));
    assert!(cluster.node("n1").backing.join("alice/after0/renamed.bin").is_file(), "n2's changes reached the old primary");
    assert_eq!(
        common::node::Ftp::connect(cluster.node("n1").ftp().parse().unwrap()).greeting.0,
        421,
        "the old primary is a backup and refuses FTP sessions"
    );
    let s = cluster.status().unwrap();
    let m = s["migrations"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (m["from"].as_str(), m["to"].as_str(), m["cause"].as_str(), m["reason"].as_str()),
        (Some("n1"), Some("n2"), Some("migrate"), Some("test: promote the caught-up node")),
        "{m}"
    );
    for phase in ["detect_ms", "wait_lease_ms", "catch_up_ms", "promote_ms"] {
        assert!(m["phases"][phase].is_u64(), "phase {phase} missing: {m}");
    }
    let old = s["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "n1").unwrap().clone();
    assert_eq!(old["role"], "backup", "{old}");
    // A migration to the node that already is primary fails with a reason.
    let (ok, _, err) = drift_out(&["migrate", "--to", "n2", "--guide", &cluster.guide_addr(), "--key", cluster.key.to_str().unwrap()]);
    assert!(!ok && err.contains("already the primary"), "{err}");
}
