//! `drift proxy status`: the proxy's active state in SQLite lists each
//! live session and each running transfer (with its spool for an upload),
//! and forgets them once they end.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::cluster::{drift_out, Cluster, ClusterSetup};
use common::wait_until;

fn status(config: &std::path::Path) -> serde_json::Value {
    let (ok, out, err) = drift_out(&["proxy", "status", "--json", "--config", config.to_str().unwrap()]);
    assert!(ok, "drift proxy status: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn status_lists_live_sessions_and_transfers() {
    let c = Cluster::start(ClusterSetup { nodes: 1, node_extra: "proxies = [\"127.0.0.1/32\"]".into(), ..ClusterSetup::default() });
    c.wait_primary(Duration::from_secs(30));
    let proxy = c.start_proxy("");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("up.bin");
    std::fs::write(&src, vec![7u8; 24 << 20]).unwrap();
    let mut curl = Command::new("curl")
        .args(["-sS", "--max-time", "120", "--limit-rate", "4M", "-T"])
        .arg(&src)
        .arg(proxy.url("alice", "alice-pw-1", "/up.bin"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = serde_json::Value::Null;
    let running = wait_until(Duration::from_secs(30), || {
        seen = status(&proxy.config);
        seen["transfers"].as_array().is_some_and(|t| t.iter().any(|t| t["op"] == "STOR" && t["bytes"].as_i64().unwrap_or(0) > 0))
    });
    assert!(running, "no running upload in the status: {seen}");
    let t = &seen["transfers"][0];
    assert_eq!(t["path"], "up.bin", "{seen}");
    assert_eq!(t["state"], "running");
    let spool = t["spool"].as_str().unwrap_or_default();
    assert!(std::path::Path::new(spool).is_file(), "the spool {spool:?} is not there");
    let s = &seen["sessions"][0];
    assert_eq!(s["user"], "alice", "{seen}");
    assert!(s["client"].as_str().unwrap_or_default().starts_with("127.0.0.1:"), "{seen}");
    assert_eq!(s["epoch"], 1);
    assert!(wait_until(Duration::from_secs(60), || curl.try_wait().unwrap().is_some()), "curl did not finish");
    assert!(curl.wait().unwrap().success());
    let ended = wait_until(Duration::from_secs(10), || {
        seen = status(&proxy.config);
        seen["transfers"].as_array().is_some_and(|t| t.is_empty()) && seen["sessions"].as_array().is_some_and(|s| s.is_empty())
    });
    assert!(ended, "the ended session is still listed: {seen}");
    let (ok, table, _) = drift_out(&["proxy", "status", "--config", proxy.config.to_str().unwrap()]);
    assert!(ok && table.contains("sessions: 0") && table.contains("transfers: 0"), "{table}");
}
