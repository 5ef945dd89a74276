//! The node agent's side of two end-to-end cases with a real guide: a
//! primary cut off by a partition fences itself, and once the network is
//! back it rejoins as a backup with its unacknowledged change in
//! quarantine; a node started empty catches up, is promoted, and serves
//! new changes that reach the old primary.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use common::cluster::{drift_out, Cluster, ClusterSetup};
use common::ops_node::python;

/// One ftplib session on an already logged-in connection: waits for a
/// line on stdin, then stores a file and prints the reply or the error.
const STORE_AFTER_CUT: &str = r#"
import ftplib, io, sys
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

/// Makes `dir`, stores two files in it, renames one, deletes the other.
const OPS: &str = r#"
import ftplib, io, sys
host, port, d = sys.argv[1], int(sys.argv[2]), sys.argv[3]
f = ftplib.FTP()
f.connect(host, port, timeout=30)
f.login("alice", "alice-pw-1")
f.mkd(d)
for i in range(3):
    f.storbinary(f"STOR {d}/f{i}.bin", io.BytesIO(bytes([i]) * (1000 + 37 * i)))
f.rename(f"{d}/f0.bin", f"{d}/renamed.bin")
f.delete(f"{d}/f1.bin")
f.quit()
"#;

fn host_port(ftp: &str) -> (String, String) {
    let (h, p) = ftp.rsplit_once(':').unwrap();
    (h.to_owned(), p.to_owned())
}

#[test]
fn a_partitioned_primary_fences_then_rejoins_with_its_change_in_quarantine() {
    let mut cluster = Cluster::start(ClusterSetup { isolated: vec![1], guide_extra: "lease_ms = 2000\n".into(), ..Default::default() });
    let (_, old) = cluster.wait_primary(Duration::from_secs(15));
    assert_eq!(old, "n1");
    let n1 = cluster.node("n1");
    let (host, port) = host_port(&n1.ftp());
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
    cluster.cut("n1");
    client.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let (_, new) = cluster.wait_new_primary("n1", Duration::from_secs(15));
    let mut reply = String::new();
    out.read_line(&mut reply).unwrap();
    let _ = client.wait();
    assert!(!reply.starts_with("226"), "a cut-off primary acknowledged a change: {reply}");
    assert!(cluster.node("n1").wait_log("fenced: lease expired", Duration::from_secs(1)), "{}", cluster.node("n1").logs());

    cluster.heal("n1");
    cluster
        .wait_status(Duration::from_secs(30), |s| s["nodes"].as_array().unwrap().iter().any(|n| n["id"] == "n1" && n["role"] == "backup"))
        .unwrap_or_else(|| panic!("n1 did not rejoin as a backup\n{}", cluster.all_logs()));
    cluster.wait_converged(&new, Duration::from_secs(60));
    assert!(!cluster.node("n1").backing.join("alice/unacked.bin").exists());
    let reports: Vec<String> = cluster
        .node("n1")
        .quarantines()
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("report.json")).ok())
        .collect();
    assert!(reports.iter().any(|r| r.contains("/alice/unacked.bin")), "{reports:?}");
    let s = cluster.status().unwrap();
    let n1s = s["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "n1").unwrap().clone();
    assert!(!n1s["quarantines"].as_array().is_none_or(|q| q.is_empty()), "status lists n1's quarantines: {n1s}");
    cluster.node_mut("n1").stop();
}

#[test]
fn an_empty_node_catches_up_is_promoted_and_its_changes_reach_the_old_primary() {
    let mut cluster = Cluster::start(ClusterSetup { nodes: 2, ..Default::default() });
    cluster.wait_primary(Duration::from_secs(15));
    let (h, p) = host_port(&cluster.node("n1").ftp());
    python(OPS, &[&h, &p, "before"]);
    cluster.node_mut("n2").kill();
    let n2 = cluster.node("n2");
    std::fs::remove_dir_all(&n2.backing).unwrap();
    std::fs::create_dir_all(n2.backing.join("alice")).unwrap();
    std::fs::remove_file(&n2.journal).unwrap();
    let _ = std::fs::remove_dir_all(&n2.state_dir);
    cluster.node_mut("n2").start();
    cluster.wait_converged("n1", Duration::from_secs(30));

    let (ok, out, err) = drift_out(&[
        "migrate", "--to", "n2", "--reason", "agent test", "--guide", &cluster.guide_addr(), "--key", cluster.key.to_str().unwrap(),
    ]);
    assert!(ok, "drift migrate failed: {out}{err}\n{}", cluster.all_logs());
    let (_, primary) = cluster.wait_primary(Duration::from_secs(10));
    assert_eq!(primary, "n2");
    assert_eq!(common::node::Ftp::connect(cluster.node("n1").ftp().parse().unwrap()).greeting.0, 421, "the old primary is a backup");
    let (h, p) = host_port(&cluster.node("n2").ftp());
    python(OPS, &[&h, &p, "after"]);
    cluster.wait_converged("n2", Duration::from_secs(30));
    assert!(cluster.node("n1").backing.join("alice/after/renamed.bin").is_file());
}
