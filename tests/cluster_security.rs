//! Who may join a cluster: a process without the key learns nothing and
//! changes nothing, a node id already in use is refused, and an operator
//! tool with the wrong key gets a clear error.

mod common;

use std::time::Duration;

use common::cluster::{drift_out, Cluster, ClusterSetup, Proc};
use common::drift_bin;

#[test]
fn a_node_with_another_key_or_a_taken_id_is_refused_and_changes_nothing() {
    let cluster = Cluster::start(ClusterSetup { nodes: 2, ..Default::default() });
    cluster.wait_primary(Duration::from_secs(15));
    let before = cluster.status().unwrap();
    let n2_pid = before["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "n2").unwrap()["pid"].clone();

    // A copy of n2's setup under its own directory, with the same id.
    let twin = cluster.dir.path().join("twin");
    std::fs::create_dir_all(twin.join("backing/alice")).unwrap();
    std::fs::create_dir_all(twin.join("mnt")).unwrap();
    std::fs::copy(cluster.node("n2").dir.join("users.toml"), twin.join("users.toml")).unwrap();
    let port = common::cluster::free_port();
    std::fs::write(twin.join("service.toml"), format!("listen = \"127.0.0.1:{port}\"\n")).unwrap();
    let node_toml = |key: &str, id: &str| {
        format!(
            "[storage]\nbacking = \"backing\"\nmountpoint = \"mnt\"\njournal = \"journal.db\"\n\n[state]\nusers = \"users.toml\"\nservice = \"service.toml\"\n\n[cluster]\nguide = \"{}\"\nkey_file = \"{key}\"\nnode_id = \"{id}\"\n",
            cluster.guide_addr()
        )
    };
    std::fs::write(twin.join("node.toml"), node_toml(cluster.key.to_str().unwrap(), "n2")).unwrap();
    let mut cmd = std::process::Command::new(drift_bin());
    cmd.args(["node", "--config"]).arg(twin.join("node.toml")).env("DRIFT_LOG", "info,libunftp=warn");
    let mut dup = Proc::spawn("twin", &mut cmd);
    let guide = cluster.guide.as_ref().unwrap();
    assert!(
        guide.wait_log("already connected", Duration::from_secs(15)),
        "the guide did not log the refusal of a second n2\n{}",
        guide.logs()
    );
    assert!(dup.wait_log("refused", Duration::from_secs(10)), "the twin did not log the refusal\n{}", dup.logs());
    let after = cluster.status().unwrap();
    let n2 = after["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "n2").unwrap().clone();
    assert_eq!(n2["pid"], n2_pid, "the twin replaced the real n2: {n2}");
    assert_eq!(after["epoch"], before["epoch"]);
    dup.stop(Duration::from_secs(20));
    let _ = std::process::Command::new("umount").arg("-l").arg(twin.join("mnt")).status();

    // A node holding another key: the handshake fails, the guide learns
    // nothing of it and says why.
    let other_key = cluster.dir.path().join("other.key");
    let (ok, _, err) = drift_out(&["xfer", "keygen", other_key.to_str().unwrap()]);
    assert!(ok, "{err}");
    std::fs::write(twin.join("node.toml"), node_toml(other_key.to_str().unwrap(), "n7")).unwrap();
    let mut cmd = std::process::Command::new(drift_bin());
    cmd.args(["node", "--config"]).arg(twin.join("node.toml")).env("DRIFT_LOG", "info,libunftp=warn");
    let mut stranger = Proc::spawn("stranger", &mut cmd);
    assert!(
        stranger.wait_log("key", Duration::from_secs(15)),
        "the node with another key did not say its key was refused\n{}",
        stranger.logs()
    );
    let s = cluster.status().unwrap();
    assert!(
        !s["nodes"].as_array().unwrap().iter().any(|n| n["id"] == "n7"),
        "a node without the key was registered: {s}"
    );
    stranger.stop(Duration::from_secs(20));
    let _ = std::process::Command::new("umount").arg("-l").arg(twin.join("mnt")).status();

    // An operator tool with the wrong key gets a clear error, not a status.
    let (ok, out, err) = drift_out(&["status", "--json", "--guide", &cluster.guide_addr(), "--key", other_key.to_str().unwrap()]);
    assert!(!ok, "drift status with a wrong key succeeded: {out}");
    assert!(err.contains("key"), "the error does not name the key: {err}");
}
