//! The guide's side of a partition: the cut-off primary's lease runs
//! out, a backup is promoted, and once the link is healed the old primary
//! comes back as a backup with its unacknowledged change in quarantine.
//! (`tests/cluster_failover.rs` has the same case without the heal.)

mod common;

use std::time::Duration;

use common::cluster::{Cluster, ClusterSetup};

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
fn a_cut_off_primary_healed_rejoins_as_a_backup_with_its_change_in_quarantine() {
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
        cluster.node("n1").wait_log("fenc", Duration::from_secs(1)),
        "n1 never logged that it fenced itself\n{}",
        cluster.node("n1").logs()
    );
    cluster.heal("n1");
    // Back on the network, n1 is a backup whose tree equals the new
    // history; what it journaled alone is in quarantine.
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
    cluster.node_mut("n1").stop();
}
