//! The node agent against a scripted guide (this file's `FakeGuide`, on
//! the real cluster port protocol: control links, `DRIFTXFR` sessions
//! into a blob directory, dial-back transfers). Each test drives one real
//! `drift node` process through a part of `docs/cluster-protocol.md`:
//! shipping and `ack = "guide"`, fencing, demotion and quarantine, applying
//! as backup and promotion, refusals and a wrong key.

mod common;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::{free_port, Proc};
use common::node::{add_user, user, Ftp, ALL_PERMS};
use common::{drift_bin, wait_until};
use drift::cluster::link;
use drift::cluster::msg::{Down, Heartbeat, Role, Up, WireEntry};
use drift::cluster::reverse::{self, DialBack, DialedAcceptor, Pending};
use drift::cluster::{blob_name, NameIsContent};
use drift::xfer::channel::Stream;
use drift::xfer::{ClusterKey, Progress, Receiver, RecvConfig, SendConfig};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

#[derive(Default)]
struct Shared {
    welcomes: Mutex<VecDeque<Down>>,
    hellos: AtomicU64,
    lease: AtomicBool,
    store: AtomicBool,
    epoch: AtomicU64,
    ups: Mutex<Vec<Up>>,
    heartbeats: Mutex<Vec<Heartbeat>>,
    to_node: Mutex<Option<mpsc::UnboundedSender<Down>>>,
}

struct FakeGuide {
    addr: String,
    key: ClusterKey,
    blobs: PathBuf,
    shared: Arc<Shared>,
    pending: Arc<Pending>,
    rt: tokio::runtime::Runtime,
}

impl FakeGuide {
    fn start(dir: &Path, key: ClusterKey) -> FakeGuide {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let blobs = dir.join("guide-blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        let shared = Arc::new(Shared::default());
        let pending = Arc::new(Pending::default());
        let (acceptor, blob_tx) = DialedAcceptor::new("fake guide blobs".into());
        let (receiver, _reports) = Receiver::new(RecvConfig {
            dir: blobs.clone(),
            state_dir: dir.join("guide-xfer-state"),
            key: key.clone(),
            hook: Some(Arc::new(NameIsContent)),
            fsync: false,
            handshake_timeout: Duration::from_secs(5),
            remove_empty_state_dir: false,
        });
        rt.spawn(async move {
            let _reports = _reports;
            let _ = receiver.serve(Arc::new(acceptor)).await;
        });
        let (sh, pe, k) = (shared.clone(), pending.clone(), key.clone());
        rt.spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else { continue };
                let (r, w) = tcp.into_split();
                let mut stream = Stream { reader: Box::new(r), writer: Box::new(w), peer: peer.to_string() };
                let (sh, pe, k, blob_tx) = (sh.clone(), pe.clone(), k.clone(), blob_tx.clone());
                tokio::spawn(async move {
                    let mut magic = [0u8; 8];
                    if stream.reader.read_exact(&mut magic).await.is_err() {
                        return;
                    }
                    match &magic {
                        b"DRIFTREV" => {
                            let _ = pe.deliver(stream).await;
                        }
                        _ => {
                            stream.reader = Box::new(std::io::Cursor::new(magic.to_vec()).chain(stream.reader));
                            if &magic == b"DRIFTXFR" {
                                let _ = blob_tx.send(stream);
                            } else {
                                control(stream, k, sh).await;
                            }
                        }
                    }
                });
            }
        });
        FakeGuide { addr, key, blobs, shared, pending, rt }
    }

    fn welcome(&self, w: Down) {
        if let Down::Welcome { epoch, .. } = &w {
            self.shared.epoch.store(*epoch, Ordering::SeqCst);
        }
        self.shared.welcomes.lock().unwrap().push_back(w);
    }

    fn send(&self, m: Down) {
        let tx = self.shared.to_node.lock().unwrap().clone().expect("no node link");
        tx.send(m).unwrap();
    }

    fn ups(&self) -> Vec<Up> {
        self.shared.ups.lock().unwrap().clone()
    }

    fn wait_up(&self, what: &str, f: impl Fn(&Up) -> bool) -> Up {
        let mut found = None;
        assert!(
            wait_until(Duration::from_secs(15), || {
                found = self.ups().into_iter().find(|u| f(u));
                found.is_some()
            }),
            "the node never sent {what}; got {:?}",
            self.ups()
        );
        found.unwrap()
    }

    /// Sends `files` (local paths) into the node's inbox by dial-back.
    fn send_blobs(&self, files: &[PathBuf]) {
        let (ask, mut asked) = mpsc::unbounded_channel();
        let shared = self.shared.clone();
        self.rt.spawn(async move {
            while let Some(t) = asked.recv().await {
                if let Some(tx) = shared.to_node.lock().unwrap().clone() {
                    let _ = tx.send(Down::OpenReverse { token: reverse::token_hex(&t) });
                }
            }
        });
        let named: Vec<(PathBuf, PathBuf)> = files
            .iter()
            .map(|f| (f.clone(), blob_name(blake3::hash(&std::fs::read(f).unwrap()).to_hex().as_str())))
            .collect();
        let connector = Arc::new(DialBack { pending: self.pending.clone(), ask, node: "n1".into() });
        let mut cfg = SendConfig::new(self.key.clone());
        cfg.streams = 1;
        self.rt
            .block_on(drift::xfer::send_named(&named, cfg, connector, Arc::new(Progress::default())))
            .expect("dial-back send");
    }
}

async fn control(stream: Stream, key: ClusterKey, sh: Arc<Shared>) {
    let Ok((mut r, mut w)) = link::server(stream, &key, Duration::from_secs(5)).await else { return };
    let Ok(Up::Hello(_)) = r.recv_within::<Up>(Duration::from_secs(5)).await else { return };
    sh.hellos.fetch_add(1, Ordering::SeqCst);
    let welcome = sh.welcomes.lock().unwrap().pop_front();
    let Some(welcome) = welcome else {
        let _ = w.send(&Down::Refused { reason: "node id n1 already connected".into() }).await;
        return;
    };
    if w.send(&welcome).await.is_err() {
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Down>();
    *sh.to_node.lock().unwrap() = Some(tx);
    loop {
        tokio::select! {
            m = r.recv::<Up>() => {
                let Ok(Some(m)) = m else { return };
                let epoch = sh.epoch.load(Ordering::SeqCst);
                match &m {
                    Up::Heartbeat(hb) => {
                        sh.heartbeats.lock().unwrap().push(hb.clone());
                        if sh.lease.load(Ordering::SeqCst) {
                            let _ = w.send(&Down::Lease { epoch, hb: hb.hb, lease_ms: 600 }).await;
                        }
                        continue;
                    }
                    Up::Entries { entries, .. } => {
                        if let (true, Some(last)) = (sh.store.load(Ordering::SeqCst), entries.last()) {
                            let _ = w.send(&Down::Stored { epoch, seq: last.seq }).await;
                        }
                    }
                    _ => {}
                }
                sh.ups.lock().unwrap().push(m);
            }
            Some(d) = rx.recv() => {
                if w.send(&d).await.is_err() {
                    return;
                }
            }
        }
    }
}

struct Node {
    dir: PathBuf,
    port: u16,
    proc: Option<Proc>,
}

impl Node {
    /// `home`: create the user's home in the backing directory first (a
    /// new journal then records it as its baseline, seq 1).
    fn start(dir: &Path, guide: &str, key_file: &Path, extra: &str, home: bool) -> Node {
        let dir = dir.join("n1");
        std::fs::create_dir_all(dir.join(if home { "backing/alice" } else { "backing" })).unwrap();
        std::fs::create_dir_all(dir.join("mnt")).unwrap();
        add_user(&dir.join("users.toml"), &user("alice", "alice-pw-1", "/alice", ALL_PERMS));
        let port = free_port();
        std::fs::write(dir.join("service.toml"), format!("listen = \"127.0.0.1:{port}\"\npassive_ports = [30000, 60000]\n")).unwrap();
        std::fs::write(
            dir.join("node.toml"),
            format!(
                "[storage]\nbacking = \"backing\"\nmountpoint = \"mnt\"\njournal = \"journal.db\"\ncommit_timeout_secs = 2\n\n\
                 [state]\nusers = \"users.toml\"\nservice = \"service.toml\"\n\n\
                 [cluster]\nguide = \"{guide}\"\nkey_file = \"{}\"\nnode_id = \"n1\"\n{extra}\n",
                key_file.display()
            ),
        )
        .unwrap();
        let mut cmd = std::process::Command::new(drift_bin());
        cmd.args(["node", "--config"]).arg(dir.join("node.toml")).env("DRIFT_LOG", "info,libunftp=warn");
        let p = Proc::spawn("n1", &mut cmd);
        assert!(p.wait_log("node listening", Duration::from_secs(30)), "node did not start:\n{}", p.logs());
        Node { dir, port, proc: Some(p) }
    }

    fn addr(&self) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    fn logs(&self) -> String {
        self.proc.as_ref().map(|p| p.logs()).unwrap_or_default()
    }

    fn wait_log(&self, s: &str) -> bool {
        self.proc.as_ref().is_some_and(|p| p.wait_log(s, Duration::from_secs(15)))
    }

    fn journal(&self) -> Vec<serde_json::Value> {
        common::entries(&self.dir.join("journal.db"), 0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(15));
        }
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.join("mnt")).status();
    }
}

fn setup() -> (tempfile::TempDir, FakeGuide, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let key = ClusterKey::generate();
    let key_file = dir.path().join("cluster.key");
    key.write_new(&key_file).unwrap();
    let guide = FakeGuide::start(dir.path(), key);
    (dir, guide, key_file)
}

fn welcome(epoch: u64, role: Role, history_seq: u64, quarantine_from: Option<u64>) -> Down {
    Down::Welcome { epoch, role, lease_ms: 600, history_seq, quarantine_from, primary: Some("n1".into()) }
}

#[test]
fn a_primary_ships_waits_for_stored_fences_and_quarantines_what_was_never_stored() {
    let (dir, guide, key_file) = setup();
    guide.welcome(welcome(1, Role::Primary, 0, None));
    guide.shared.lease.store(true, Ordering::SeqCst);
    guide.shared.store.store(true, Ordering::SeqCst);
    let node = Node::start(dir.path(), &guide.addr, &key_file, "", true);
    let init = guide.wait_up("InitialState", |u| matches!(u, Up::InitialState { .. }));
    let Up::InitialState { users, .. } = init else { unreachable!() };
    assert!(users.contains("alice"));

    let mut ftp = Ftp::login(node.addr(), "alice", "alice-pw-1");
    let (_, done) = ftp.stor("a.bin", b"stored by the guide");
    assert_eq!(done.0, 226, "{done:?}\n{}", node.logs());
    let hash = blake3::hash(b"stored by the guide").to_hex().to_string();
    guide.wait_up("the write", |u| matches!(u, Up::Entries { entries, .. } if entries.iter().any(|e| e.path == "/alice/a.bin")));
    assert!(guide.blobs.join(blob_name(&hash)).is_file(), "the content went to the guide before its entry");
    assert_eq!(ftp.cmd("MKD d").0, 257);

    // The guide stops confirming: the change is made, not acknowledged.
    guide.shared.store.store(false, Ordering::SeqCst);
    let (_, done) = ftp.stor("b.bin", b"never stored");
    assert_eq!(done.0, 451, "{done:?}");

    // No more leases: the node fences itself and refuses changes.
    guide.shared.lease.store(false, Ordering::SeqCst);
    assert!(node.wait_log("fenced: lease expired"), "{}", node.logs());
    let (first, _) = ftp.stor("c.bin", b"refused");
    assert_eq!(first.0, 450, "{first:?}");
    assert_eq!(ftp.cmd("DELE a.bin").0, 450);
    assert!(guide.shared.heartbeats.lock().unwrap().iter().any(|h| h.role == Role::Fenced));

    // Demoted: Hello again, told that what follows the MKD was never
    // stored (1: the journal's baseline /alice, 2: a.bin, 3: d, 4: b.bin).
    guide.welcome(welcome(2, Role::Backup, 3, Some(4)));
    guide.send(Down::Demote { epoch: 2, reason: "test".into() });
    assert!(node.wait_log("quarantined"), "{}", node.logs());
    let q: Vec<_> = std::fs::read_dir(node.dir.join("journal.db.cluster/quarantine")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(q.len(), 1);
    let report = std::fs::read_to_string(q[0].join("report.json")).unwrap();
    assert!(report.contains("/alice/b.bin") && !report.contains("/alice/a.bin") && !report.contains("/alice/d\""), "{report}");
    assert_eq!(std::fs::read(q[0].join("files/alice/b.bin")).unwrap(), b"never stored");
    assert!(!node.dir.join("backing/alice/b.bin").exists() && node.dir.join("backing/alice").is_dir());
    assert!(node.journal().is_empty(), "the journal starts again from the guide's history");
    assert_eq!(Ftp::connect(node.addr()).greeting.0, 421, "a backup serves nobody");
    assert!(wait_until(Duration::from_secs(5), || {
        guide.shared.heartbeats.lock().unwrap().last().is_some_and(|h| !h.quarantines.is_empty() && h.epoch == 2)
    }));
}

#[test]
fn a_backup_applies_forwarded_history_then_serves_once_promoted() {
    let (dir, guide, key_file) = setup();
    guide.welcome(welcome(1, Role::Backup, 2, None));
    // An empty backing directory: no baseline entry, the history is all.
    let node = Node::start(dir.path(), &guide.addr, &key_file, "ack = \"guide\"\n", false);
    let f = Ftp::connect(node.addr());
    assert_eq!(f.greeting.0, 421, "{:?}", f.greeting);
    assert!(f.greeting.1.contains("not the primary"), "{:?}", f.greeting);
    assert!(wait_until(Duration::from_secs(10), || guide.shared.to_node.lock().unwrap().is_some()));

    let content = b"forwarded content".to_vec();
    let hash = blake3::hash(&content).to_hex().to_string();
    let local = dir.path().join("blob");
    std::fs::write(&local, &content).unwrap();
    guide.send_blobs(&[local]);
    let t = 1_700_000_000_000_000_000i64;
    let mk = |seq, op: &str, path: &str| WireEntry {
        seq,
        time_ns: t + seq as i64,
        op: op.into(),
        path: path.into(),
        to: None,
        size: None,
        blake3: None,
        mode: None,
        mtime_ns: None,
    };
    let mut w = mk(2, "write", "/alice/d/x.bin");
    w.size = Some(content.len() as u64);
    w.blake3 = Some(hash.clone());
    guide.send(Down::Forward { entries: vec![mk(1, "mkdir", "/alice/d"), w], absent: vec![] });
    guide.wait_up("Applied", |u| matches!(u, Up::Applied { seq: 2 }));
    assert_eq!(std::fs::read(node.dir.join("backing/alice/d/x.bin")).unwrap(), content);
    let j = node.journal();
    assert_eq!(j.len(), 2, "{j:?}");
    assert_eq!(j[1]["blake3"], hash.as_str());

    guide.shared.epoch.store(2, Ordering::SeqCst);
    guide.shared.lease.store(true, Ordering::SeqCst);
    guide.shared.store.store(true, Ordering::SeqCst);
    guide.send(Down::Promote { epoch: 2, lease_ms: 600, history_seq: Some(2) });
    assert!(node.wait_log("promoted"), "{}", node.logs());
    let mut ftp = Ftp::login(node.addr(), "alice", "alice-pw-1");
    assert_eq!(ftp.retr("d/x.bin"), (226, content));
    let (_, done) = ftp.stor("y.bin", b"after the promotion");
    assert_eq!(done.0, 226, "{done:?}\n{}", node.logs());
    let e = guide.wait_up("the new write", |u| matches!(u, Up::Entries { entries, .. } if entries.iter().any(|e| e.path == "/alice/y.bin")));
    let Up::Entries { epoch, entries, .. } = e else { unreachable!() };
    assert_eq!((epoch, entries[0].seq), (2, 3), "the journal continues the history");
}

#[test]
fn a_refused_node_keeps_retrying_and_a_wrong_key_is_named() {
    let (dir, guide, key_file) = setup();
    // No welcome queued: every Hello is refused as a duplicate id.
    let node = Node::start(dir.path(), &guide.addr, &key_file, "", true);
    assert!(node.wait_log("refused"), "{}", node.logs());
    assert!(wait_until(Duration::from_secs(10), || guide.shared.hellos.load(Ordering::SeqCst) >= 3), "the node stopped retrying");
    assert_eq!(Ftp::connect(node.addr()).greeting.0, 421);
    drop(node);

    let other = dir.path().join("other.key");
    ClusterKey::generate().write_new(&other).unwrap();
    let dir2 = dir.path().join("second");
    std::fs::create_dir_all(&dir2).unwrap();
    let node = Node::start(&dir2, &guide.addr, &other, "", true);
    assert!(node.wait_log("cluster key not accepted"), "{}", node.logs());
}
