//! Failover end to end: SIGKILL of the primary under upload load,
//! `drift migrate` under load, the guide killed and restarted while the
//! primary ships, and a primary cut off by a network partition. Clients
//! talk to the primary directly (following `drift status`); every upload
//! that got its 226 must be on the new primary with its hash.

mod common;

use std::time::Duration;

use common::cluster::{assert_acked_present, drift_out, Cluster, ClusterSetup, Uploader};
use common::wait_until;

/// Seqs of a journal listing ("N op ..." lines) are 1, 2, 3… with no gap.
fn assert_seq_continuous(journal: &[String]) {
    for (i, line) in journal.iter().enumerate() {
        let seq: u64 = line.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(seq, i as u64 + 1, "journal has a gap or duplicate at {line}");
    }
}

#[test]
fn sigkill_of_the_primary_under_uploads_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start(ClusterSetup::default());
    let (epoch, old) = cluster.wait_primary(Duration::from_secs(15));
    let up = Uploader::start("k", 400, 20_000, cluster.primary_finder());
    assert!(wait_until(Duration::from_secs(30), || up.count() >= 10), "uploads did not start\n{}", cluster.all_logs());
    cluster.node_mut(&old).kill();
    let (new_epoch, new) = cluster.wait_new_primary(&old, Duration::from_secs(10));
    assert!(new_epoch > epoch, "the takeover bumps the epoch");
    let before = up.count();
    assert!(
        wait_until(Duration::from_secs(30), || up.count() >= before + 10),
        "the new primary does not take uploads\n{}",
        cluster.all_logs()
    );
    let acked = up.finish();
    let newp = cluster.node(&new);
    assert_acked_present(&newp.backing, &acked);
    assert_seq_continuous(&newp.journal());
    let s = cluster.status().unwrap();
    let m = s["migrations"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((m["cause"].as_str(), m["from"].as_str(), m["to"].as_str()), (Some("failover"), Some(old.as_str()), Some(new.as_str())), "{m}");
    // The old primary comes back as a backup and converges.
    cluster.node_mut(&old).start();
    cluster.wait_converged(&new, Duration::from_secs(60));
    let s = cluster.status().unwrap();
    let back = s["nodes"].as_array().unwrap().iter().find(|n| n["id"] == old.as_str()).unwrap().clone();
    assert_eq!(back["role"], "backup", "{back}");
}

#[test]
fn drift_migrate_under_uploads_moves_the_primary_and_loses_nothing() {
    let cluster = Cluster::start(ClusterSetup::default());
    let (_, old) = cluster.wait_primary(Duration::from_secs(15));
    let up = Uploader::start("m", 400, 50_000, cluster.primary_finder());
    assert!(wait_until(Duration::from_secs(30), || up.count() >= 10), "uploads did not start");
    let (ok, out, err) = drift_out(&[
        "migrate", "--to", "n3", "--reason", "maintenance", "--guide", &cluster.guide_addr(), "--key", cluster.key.to_str().unwrap(),
    ]);
    assert!(ok, "drift migrate failed: {out}{err}\n{}", cluster.all_logs());
    let (_, new) = cluster.wait_primary(Duration::from_secs(10));
    assert_eq!(new, "n3");
    let before = up.count();
    assert!(wait_until(Duration::from_secs(30), || up.count() >= before + 10), "no uploads after the migration");
    let acked = up.finish();
    assert_acked_present(&cluster.node("n3").backing, &acked);
    cluster.wait_converged("n3", Duration::from_secs(60));
    let s = cluster.status().unwrap();
    let m = s["migrations"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((m["cause"].as_str(), m["from"].as_str(), m["reason"].as_str()), (Some("migrate"), Some(old.as_str()), Some("maintenance")), "{m}");
    let oldn = s["nodes"].as_array().unwrap().iter().find(|n| n["id"] == old.as_str()).unwrap().clone();
    assert_eq!(oldn["role"], "backup", "the old primary becomes a backup: {oldn}");
}

#[test]
fn the_guide_killed_and_restarted_mid_shipping_loses_and_duplicates_nothing() {
    let mut cluster = Cluster::start(ClusterSetup::default());
    let (epoch, primary) = cluster.wait_primary(Duration::from_secs(15));
    let up = Uploader::start("g", 400, 200_000, cluster.primary_finder());
    assert!(wait_until(Duration::from_secs(30), || up.count() >= 8), "uploads did not start");
    cluster.kill_guide();
    cluster.start_guide();
    let before = up.count();
    assert!(
        wait_until(Duration::from_secs(30), || up.count() >= before + 8),
        "uploads did not resume after the guide restarted\n{}",
        cluster.all_logs()
    );
    let acked = up.finish();
    let (epoch2, primary2) = cluster.wait_primary(Duration::from_secs(15));
    assert!(epoch2 >= epoch, "the epoch went backwards: {epoch} -> {epoch2}");
    assert_eq!(primary2, primary, "a guide restart alone does not move the primary");
    assert_acked_present(&cluster.node(&primary).backing, &acked);
    // Backups get their history from the guide: equal journals mean the
    // history holds exactly the primary's entries, none lost or doubled.
    cluster.wait_converged(&primary, Duration::from_secs(60));
    assert_seq_continuous(&cluster.node("n2").journal());
    let last = cluster.node(&primary).last_seq();
    assert!(
        cluster.wait_status(Duration::from_secs(10), |s| s["history_seq"].as_u64() == Some(last)).is_some(),
        "the guide's history ends at {:?}, the primary's journal at {last}",
        cluster.status().map(|s| s["history_seq"].clone())
    );
}

/// Stores one file on an already logged-in ftplib session, right after the
/// partition; prints the reply or the error.
const STORE_AFTER_CUT: &str = r#"
import ftplib, io, sys, socket
host, port = sys.argv[1], int(sys.argv[2])
f = ftplib.FTP()
f.connect(host, port, timeout=40)
f.login("alice", "alice-pw-1")
print("ready", flush=True)
sys.stdin.readline()
try:
    print(f.storbinary("STOR unacked.bin", io.BytesIO(b"never acknowledged" * 100)))
except ftplib.all_errors as e:
    print("error", e)
"#;

#[test]
fn a_cut_off_primary_fences_itself_and_its_unacknowledged_change_goes_to_quarantine() {
    use std::io::{BufRead, BufReader, Write};
    let mut cluster = Cluster::start(ClusterSetup {
        isolated: vec![1],
        guide_extra: "lease_ms = 2000\n".into(),
        ..Default::default()
    });
    let (_, old) = cluster.wait_primary(Duration::from_secs(15));
    assert_eq!(old, "n1");
    let n1 = cluster.node("n1");
    let (host, port) = n1.ftp().rsplit_once(':').map(|(h, p)| (h.to_owned(), p.to_owned())).unwrap();
    // The client runs inside n1's namespace: the partition cuts n1 off
    // from the guide, not from this client.
    let ns = n1.netns.clone().unwrap();
    let mut client = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "python3", "-c", STORE_AFTER_CUT, &host, &port])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // Within the lease (2 s) n1 still takes the change, journals it, and
    // waits for the guide's confirmation that never comes.
    cluster.cut("n1");
    client.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let (_, new) = cluster.wait_new_primary("n1", Duration::from_secs(15));
    assert_ne!(new, "n1");
    let mut reply = String::new();
    out.read_line(&mut reply).unwrap();
    let _ = client.wait();
    assert!(!reply.starts_with("226"), "a cut-off primary acknowledged a change: {reply}");
    assert!(
        cluster.node("n1").wait_log("fenced: lease expired", Duration::from_secs(1)),
        "n1 never logged that it fenced itself\n{}",
        cluster.node("n1").logs()
    );
    // Back on the network, n1 is a backup whose tree equals the new
    // history; what it journaled alone is in quarantine.
    cluster.heal("n1");
    let s = cluster
        .wait_status(Duration::from_secs(30), |s| {
            s["nodes"].as_array().unwrap().iter().any(|n| n["id"] == "n1" && n["role"] == "backup")
        })
        .unwrap_or_else(|| panic!("n1 did not rejoin as a backup\n{}", cluster.all_logs()));
    cluster.wait_converged(&new, Duration::from_secs(60));
    assert!(!cluster.node("n1").backing.join("alice/unacked.bin").exists(), "the unacknowledged upload stayed in the served tree");
    let q = cluster.node("n1").quarantines();
    let reported: Vec<String> = q
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("report.json")).ok())
        .collect();
    assert!(
        reported.iter().any(|r| r.contains("/alice/unacked.bin")),
        "no quarantine report names the unacknowledged upload: {reported:?}; status quarantines: {}",
        s["quarantines"]
    );
    let s = cluster.status().unwrap();
    let n1s = s["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "n1").unwrap().clone();
    assert!(!n1s["quarantines"].as_array().is_none_or(|q| q.is_empty()), "status lists n1's quarantines: {n1s}");
    assert!(
        s["quarantines"].as_array().unwrap().iter().any(|q| q["node"] == "n1"),
        "the cluster's quarantine list names n1: {}",
        s["quarantines"]
    );
    cluster.node_mut("n1").stop();
}
