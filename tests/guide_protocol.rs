//! The guide alone, driven by a fake node speaking the cluster protocol
//! through the library: bootstrap, entries stored in order (a gap, a
//! stale epoch, a missing content and a second node with a taken id are
//! refused with a log line and change nothing), a re-send after a lost
//! `Stored` is not a duplicate, a SIGKILL'd guide keeps everything and its
//! epoch, the primary that reconnects keeps its role, and subscribers get
//! the announcements.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{drift_out, free_port, Proc};
use common::drift_bin;
use drift::cluster::link::{self, LinkReader, LinkWriter};
use drift::cluster::msg::{Down, Heartbeat, Hello, Load, NodeHello, PeerKind, Role, Up, WireEntry};
use drift::xfer::channel::TcpConnector;
use drift::xfer::ClusterKey;

const T: Duration = Duration::from_secs(10);

struct Guide {
    dir: tempfile::TempDir,
    addr: String,
    key_path: PathBuf,
    key: ClusterKey,
    proc: Option<Proc>,
}

impl Guide {
    fn new() -> Guide {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("cluster.key");
        let (ok, _, err) = drift_out(&["xfer", "keygen", key_path.to_str().unwrap()]);
        assert!(ok, "{err}");
        let port = free_port();
        std::fs::write(
            dir.path().join("guide.toml"),
            format!("listen = \"127.0.0.1:{port}\"\nkey_file = \"cluster.key\"\ndata_dir = \"data\"\nlease_ms = 600\nid = \"g1\"\n"),
        )
        .unwrap();
        let key = ClusterKey::load(&key_path).unwrap();
        let mut g = Guide { dir, addr: format!("127.0.0.1:{port}"), key_path, key, proc: None };
        g.start();
        g
    }

    fn start(&mut self) {
        let mut cmd = Command::new(drift_bin());
        cmd.args(["guide", "--config"]).arg(self.dir.path().join("guide.toml")).env("DRIFT_LOG", "info");
        let p = Proc::spawn("guide", &mut cmd);
        assert!(p.wait_log("guide listening", T), "guide did not start:\n{}", p.logs());
        self.proc = Some(p);
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    fn proc(&self) -> &Proc {
        self.proc.as_ref().unwrap()
    }

    fn status(&self) -> serde_json::Value {
        let (ok, out, err) = drift_out(&["status", "--json", "--guide", &self.addr, "--key", self.key_path.to_str().unwrap()]);
        assert!(ok, "drift status: {err}");
        serde_json::from_str(out.trim()).unwrap()
    }
}

fn mkdir(seq: u64, path: &str) -> WireEntry {
    WireEntry { seq, time_ns: 1_700_000_000_000_000_000 + seq as i64, op: "mkdir".into(), path: path.into(), to: None, size: None, blake3: None, mode: Some(0o755), mtime_ns: None }
}

fn write(seq: u64, path: &str, content: &[u8]) -> WireEntry {
    WireEntry {
        seq,
        time_ns: 1_700_000_000_000_000_000 + seq as i64,
        op: "write".into(),
        path: path.into(),
        to: None,
        size: Some(content.len() as u64),
        blake3: Some(blake3::hash(content).to_hex().to_string()),
        mode: Some(0o644),
        mtime_ns: None,
    }
}

fn hello(id: &str, pid: u32, epoch: u64, journal: &[WireEntry], confirmed: u64) -> Up {
    Up::Hello(Hello {
        kind: PeerKind::Node,
        node: Some(NodeHello {
            id: id.into(),
            ftp: "127.0.0.1:2121".into(),
            pid,
            version: "test".into(),
            journal_seq: journal.last().map_or(0, |e| e.seq),
            confirmed_seq: confirmed,
            tail: journal.iter().filter(|e| e.seq > confirmed).map(|e| (e.seq, e.fingerprint())).collect(),
            epoch,
        }),
    })
}

fn heartbeat(hb: u64, role: Role, epoch: u64, applied: u64) -> Up {
    Up::Heartbeat(Heartbeat { hb, role, epoch, applied_seq: applied, load: Load::default(), threat: 0, threat_reason: String::new(), progress: None, quarantines: vec![] })
}

async fn connect(g: &Guide) -> (LinkReader, LinkWriter) {
    link::connect(&g.addr, &g.key, T).await.unwrap()
}

/// The next message that is not a lease renewal.
async fn next(r: &mut LinkReader) -> Down {
    loop {
        match r.recv_within::<Down>(T).await.unwrap() {
            Down::Lease { .. } | Down::InitialState { .. } => continue,
            m => return m,
        }
    }
}

async fn send_content(g: &Guide, content: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let hash = blake3::hash(content).to_hex().to_string();
    let file = dir.path().join("c");
    std::fs::write(&file, content).unwrap();
    let report = drift::xfer::send_named(
        &[(file, drift::cluster::blob_name(&hash))],
        drift::xfer::SendConfig::new(g.key.clone()),
        Arc::new(TcpConnector { addr: g.addr.clone() }),
        Arc::new(drift::xfer::Progress::default()),
    )
    .await
    .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
}

fn blob_exists(data: &Path, content: &[u8]) -> bool {
    let hash = blake3::hash(content).to_hex().to_string();
    data.join("blobs").join(&hash[..2]).join(&hash).is_file()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guide_stores_in_order_refuses_what_it_must_and_survives_sigkill() {
    let mut g = Guide::new();
    // A subscriber sees the cluster before any node.
    let (mut sub_r, mut sub_w) = connect(&g).await;
    sub_w.send(&Up::Hello(Hello { kind: PeerKind::Subscriber, node: None })).await.unwrap();
    let Down::Announce(a) = sub_r.recv_within::<Down>(T).await.unwrap() else { panic!("no announcement") };
    assert_eq!((a.epoch, a.primary.as_deref()), (0, None));

    // Bootstrap: the first node leads epoch 1.
    let (mut r, mut w) = connect(&g).await;
    w.send(&hello("a", 4242, 0, &[], 0)).await.unwrap();
    match next(&mut r).await {
        Down::Welcome { epoch: 1, role: Role::Primary, history_seq: 0, quarantine_from: None, .. } => {}
        other => panic!("{other:?}"),
    }
    let Down::Announce(a) = sub_r.recv_within::<Down>(T).await.unwrap() else { panic!("no announcement") };
    assert_eq!((a.epoch, a.primary.as_deref(), a.ftp.as_deref(), a.state.as_str()), (1, Some("a"), Some("127.0.0.1:2121"), "serving"));
    w.send(&heartbeat(1, Role::Primary, 1, 0)).await.unwrap();
    assert!(matches!(r.recv_within::<Down>(T).await.unwrap(), Down::Lease { epoch: 1, hb: 1, .. }));

    let journal = vec![mkdir(1, "/x"), mkdir(2, "/x/y"), mkdir(3, "/z")];
    w.send(&Up::Entries { epoch: 1, entries: journal[..2].to_vec(), absent: vec![] }).await.unwrap();
    assert!(matches!(next(&mut r).await, Down::Stored { epoch: 1, seq: 2 }));
    // A gap is refused.
    w.send(&Up::Entries { epoch: 1, entries: vec![mkdir(4, "/q")], absent: vec![] }).await.unwrap();
    assert!(matches!(next(&mut r).await, Down::Refused { reason } if reason.contains("gap")));
    // A re-send of 2 (its Stored lost) with 3 is not a duplicate.
    w.send(&Up::Entries { epoch: 1, entries: journal[1..].to_vec(), absent: vec![] }).await.unwrap();
    assert!(matches!(next(&mut r).await, Down::Stored { epoch: 1, seq: 3 }));
    // A stale epoch is refused.
    w.send(&Up::Entries { epoch: 0, entries: vec![mkdir(4, "/stale")], absent: vec![] }).await.unwrap();
    assert!(matches!(next(&mut r).await, Down::Refused { reason } if reason.contains("stale epoch")));
    assert!(matches!(next(&mut r).await, Down::Demote { epoch: 1, .. }), "and told to stop acting as primary");
    assert!(g.proc().wait_log("stale epoch", T));
    // A write whose content never came is refused; with its content it is stored.
    let content = b"hello from the fake node".repeat(100);
    w.send(&Up::Entries { epoch: 1, entries: vec![write(4, "/x/f", &content)], absent: vec![] }).await.unwrap();
    assert!(matches!(next(&mut r).await, Down::Refused { reason } if reason.contains("not received")));
    send_content(&g, &content).await;
    assert!(blob_exists(&g.dir.path().join("data"), &content));
    w.send(&Up::Entries { epoch: 1, entries: vec![write(4, "/x/f", &content)], absent: vec![] }).await.unwrap();
    assert!(matches!(next(&mut r).await, Down::Stored { epoch: 1, seq: 4 }));
    assert_eq!(g.status()["history_seq"], 4);

    // Another process with the same id is refused while `a` is live.
    w.send(&heartbeat(2, Role::Primary, 1, 4)).await.unwrap();
    let (mut r2, mut w2) = connect(&g).await;
    w2.send(&hello("a", 999, 1, &[], 0)).await.unwrap();
    assert!(matches!(r2.recv_within::<Down>(T).await.unwrap(), Down::Refused { reason } if reason.contains("already connected")));
    assert!(g.proc().wait_log("already connected", T));

    // SIGKILL: everything stored is still there, the epoch too.
    g.kill();
    drop((r, w, sub_r, sub_w));
    g.start();
    let s = g.status();
    assert_eq!((s["epoch"].as_u64(), s["primary"].as_str(), s["history_seq"].as_u64()), (Some(1), Some("a"), Some(4)), "{s}");
    // The primary that comes back within its lease keeps its role.
    let journal: Vec<WireEntry> = journal.into_iter().chain([write(4, "/x/f", &content)]).collect();
    let (mut r, mut w) = connect(&g).await;
    w.send(&hello("a", 4242, 1, &journal, 2)).await.unwrap();
    match next(&mut r).await {
        Down::Welcome { epoch: 1, role: Role::Primary, history_seq: 4, quarantine_from: None, .. } => {}
        other => panic!("{other:?}"),
    }
    // A node whose journal differs from the history is told to quarantine.
    let (mut r3, mut w3) = connect(&g).await;
    w3.send(&hello("b", 7, 1, &[mkdir(1, "/x"), mkdir(2, "/other")], 0)).await.unwrap();
    match next(&mut r3).await {
        Down::Welcome { role: Role::CatchingUp, quarantine_from: Some(2), .. } => {}
        other => panic!("{other:?}"),
    }
    // The primary goes silent: the guide announces the switch and, with
    // no node able to take over, keeps the epoch.
    let (mut sub_r, mut sub_w) = connect(&g).await;
    sub_w.send(&Up::Hello(Hello { kind: PeerKind::Subscriber, node: None })).await.unwrap();
    let Down::Announce(a) = sub_r.recv_within::<Down>(T).await.unwrap() else { panic!("no announcement") };
    assert_eq!((a.epoch, a.state.as_str()), (1, "serving"));
    drop((r, w));
    let Down::Announce(a) = sub_r.recv_within::<Down>(T).await.unwrap() else { panic!("no announcement") };
    assert_eq!((a.epoch, a.state.as_str()), (1, "switching"));
    drop((r3, w3));
}
