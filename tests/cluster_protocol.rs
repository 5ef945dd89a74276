//! The guide's cluster port spoken to directly, as a proxy or a forger
//! would: the subscription (announcements of every epoch change), and
//! messages the guide must refuse (entries from a node that is not the
//! primary or from a stale epoch) without changing anything.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, ClusterSetup};
use drift::cluster::link;
use drift::cluster::msg::{Announcement, Down, Heartbeat, Hello, Load, NodeHello, PeerKind, Role, Up, WireEntry};
use drift::xfer::ClusterKey;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Reads announcements until `want` holds or `limit` passes; returns all seen.
async fn announcements_until(
    r: &mut link::LinkReader,
    limit: Duration,
    want: impl Fn(&Announcement) -> bool,
) -> (Vec<Announcement>, bool) {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match r.recv_within::<Down>(left).await {
            Ok(Down::Announce(a)) => {
                let done = want(&a);
                seen.push(a);
                if done {
                    return (seen, true);
                }
            }
            Ok(other) => panic!("a subscriber got a message that is not an announcement: {other:?}"),
            Err(_) => break,
        }
    }
    (seen, false)
}

#[test]
fn a_subscriber_follows_every_epoch_change() {
    let cluster = Cluster::start(ClusterSetup { nodes: 2, ..Default::default() });
    let (epoch, primary) = cluster.wait_primary(Duration::from_secs(30));
    let key = ClusterKey::load(&cluster.key).unwrap();
    let addr = cluster.guide_addr();
    let other = if primary == "n1" { "n2" } else { "n1" };
    let (migrate_out, seen) = rt().block_on(async {
        let (mut r, mut w) = link::connect(&addr, &key, Duration::from_secs(5)).await.expect("subscriber link");
        w.send(&Up::Hello(Hello { kind: PeerKind::Subscriber, node: None })).await.unwrap();
        // The current state comes first, at once.
        let first = match r.recv_within::<Down>(Duration::from_secs(5)).await.expect("first announcement") {
            Down::Announce(a) => a,
            other => panic!("expected an announcement, got {other:?}"),
        };
        assert_eq!((first.epoch, first.primary.as_deref(), first.state.as_str()), (epoch, Some(primary.as_str()), "serving"));
        let ftp = cluster.node(&primary).ftp();
        assert_eq!(first.ftp.as_deref(), Some(ftp.as_str()), "the announcement names the primary's FTP address");
        let guide = addr.clone();
        let keyfile = cluster.key.to_str().unwrap().to_owned();
        let target = other.to_owned();
        let migrate = tokio::task::spawn_blocking(move || {
            common::cluster::drift_out(&["migrate", "--to", &target, "--reason", "subscriber test", "--guide", &guide, "--key", &keyfile])
        });
        let (seen, done) = announcements_until(&mut r, Duration::from_secs(30), |a| {
            a.state == "serving" && a.primary.as_deref() == Some(other)
        })
        .await;
        assert!(done, "no announcement of {other} serving; saw {seen:?}");
        (migrate.await.unwrap(), seen)
    });
    assert!(migrate_out.0, "drift migrate failed: {} {}", migrate_out.1, migrate_out.2);
    assert!(seen.iter().any(|a| a.state == "switching"), "the switch was not announced: {seen:?}");
    let last = seen.last().unwrap();
    assert!(last.epoch > epoch, "the epoch did not go up: {seen:?}");
    assert_eq!(last.ftp.as_deref(), Some(cluster.node(other).ftp().as_str()));
    let epochs: Vec<u64> = seen.iter().map(|a| a.epoch).collect();
    assert!(epochs.windows(2).all(|w| w[0] <= w[1]), "announced epochs went backwards: {epochs:?}");
}

fn hello(id: &str, epoch: u64) -> Up {
    Up::Hello(Hello {
        kind: PeerKind::Node,
        node: Some(NodeHello {
            id: id.into(),
            ftp: "127.0.0.1:1".into(),
            pid: std::process::id(),
            version: "test".into(),
            journal_seq: 0,
            confirmed_seq: 0,
            tail: Vec::new(),
            epoch,
        }),
    })
}

fn forged_write(seq: u64) -> WireEntry {
    WireEntry {
        seq,
        time_ns: 1,
        op: "write".into(),
        path: "/alice/forged.bin".into(),
        to: None,
        size: Some(3),
        blake3: Some(blake3::hash(b"abc").to_hex().to_string()),
        mode: None,
        mtime_ns: None,
    }
}

/// A node that holds the key but is not the primary ships entries (of the
/// current and of a stale epoch): each is refused, logged, and the history
/// does not change.
#[test]
fn entries_from_a_stale_epoch_or_a_backup_are_refused() {
    let mut cluster = Cluster::start(ClusterSetup { nodes: 1, ..Default::default() });
    let (epoch, _) = cluster.wait_primary(Duration::from_secs(30));
    let before = cluster.history_seq();
    let key = ClusterKey::load(&cluster.key).unwrap();
    let addr = cluster.guide_addr();
    let replies = rt().block_on(async {
        let (mut r, mut w) = link::connect(&addr, &key, Duration::from_secs(5)).await.expect("link");
        w.send(&hello("forger", 0)).await.unwrap();
        match r.recv_within::<Down>(Duration::from_secs(5)).await.expect("welcome") {
            Down::Welcome { role, .. } => assert_ne!(role, Role::Primary, "a second node was made primary"),
            other => panic!("expected a welcome, got {other:?}"),
        }
        let hb = Up::Heartbeat(Heartbeat {
            hb: 1,
            role: Role::Backup,
            epoch,
            applied_seq: before,
            load: Load::default(),
            threat: 0,
            threat_reason: String::new(),
            progress: None,
            quarantines: Vec::new(),
        });
        w.send(&hb).await.unwrap();
        let mut replies = Vec::new();
        for e in [epoch.saturating_sub(1), epoch] {
            w.send(&Up::Entries { epoch: e, entries: vec![forged_write(before + 1)], absent: vec![] }).await.unwrap();
            // Anything but `Stored` is fine; skip forwarding traffic.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match r.recv_within::<Down>(deadline.saturating_duration_since(Instant::now())).await {
                    Ok(Down::Stored { .. }) => panic!("the guide stored entries from a node that is not the primary"),
                    Ok(Down::Refused { reason }) => {
                        replies.push(reason);
                        break;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        replies.push(format!("link ended: {e}"));
                        break;
                    }
                }
            }
            if replies.last().is_some_and(|r| r.starts_with("link ended")) {
                break;
            }
        }
        replies
    });
    assert!(!replies.is_empty(), "no refusal");
    let guide = cluster.guide.as_ref().unwrap();
    assert!(
        guide.wait_log("stale epoch", Duration::from_secs(5)) || guide.wait_log("not the primary", Duration::from_secs(1)),
        "the guide did not log the refusal ({replies:?})\n{}",
        guide.logs()
    );
    assert_eq!(cluster.history_seq(), before, "the history changed");
    // The real primary is untouched and still serves.
    let (epoch_after, primary) = cluster.wait_primary(Duration::from_secs(10));
    assert_eq!((epoch_after, primary.as_str()), (epoch, "n1"));
    cluster.kill_guide();
}
