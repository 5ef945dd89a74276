//! Restart after a crash: a `drift mount` or `drift node` killed with
//! SIGKILL leaves a dead FUSE mount; starting again on the same
//! mountpoint detaches it, says so, serves the files and continues the
//! journal's seq. Anything else at the mountpoint is still refused.

mod common;

use std::path::Path;
use std::process::Command;

use common::fs_restart::{wait_dead_mount, NodeProc};
use common::node::{data, NodeSetup, TestNode};
use common::*;

const DETACHED: &str = "detached a dead drift mount left by a killed process";

/// The seqs of the journal, in order; they must be 1..=n.
fn assert_gap_free(journal: &Path) -> Vec<serde_json::Value> {
    let all = entries(journal, 0);
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, want, "journal seqs must be gap-free and never reused");
    all
}

#[test]
fn drift_mount_killed_then_started_again_serves_and_continues_the_journal() {
    let s = Scratch::new();
    let mut m = s.mount();
    std::fs::write(s.mnt.join("before.txt"), b"written before the crash").unwrap();
    // A file is journaled when the kernel releases it, after close(2):
    // wait for it, so the order of the two entries is known.
    assert!(wait_until(std::time::Duration::from_secs(10), || s.entries().len() == 1));
    std::fs::create_dir(s.mnt.join("dir")).unwrap();
    assert!(wait_until(std::time::Duration::from_secs(10), || s.entries().len() == 2));
    m.stop_with(libc::SIGKILL);
    wait_dead_mount(&s.mnt);

    // Started again on the dead mount, with its log captured.
    let out_path = s.path("second.log");
    let log = std::fs::File::create(&out_path).unwrap();
    let child = drift()
        .env("DRIFT_LOG", "info")
        .arg("mount")
        .arg(&s.backing)
        .arg(&s.mnt)
        .arg("--journal")
        .arg(&s.journal)
        .stdin(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut m2 = MountProc { child: Some(child), mnt: s.mnt.clone() };
    assert!(
        wait_until(std::time::Duration::from_secs(10), || std::fs::read(s.mnt.join("before.txt")).is_ok()),
        "the second mount did not come up:\n{}",
        std::fs::read_to_string(&out_path).unwrap_or_default()
    );
    assert_eq!(std::fs::read(s.mnt.join("before.txt")).unwrap(), b"written before the crash");
    std::fs::write(s.mnt.join("after.txt"), b"written after the restart").unwrap();
    assert!(wait_until(std::time::Duration::from_secs(10), || s.entries().len() == 3));
    let all = assert_gap_free(&s.journal);
    assert_eq!(all[0]["path"], "/before.txt");
    assert_eq!(all[1]["path"], "/dir");
    assert_eq!((all[2]["op"].as_str(), all[2]["path"].as_str()), (Some("write"), Some("/after.txt")));
    assert_eq!(all[2]["blake3"], blake3_hex(b"written after the restart"));
    // Exactly one mount on the mountpoint: the dead one is gone.
    let canon = std::fs::canonicalize(&s.mnt).unwrap();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let n = info.lines().filter(|l| l.split(' ').nth(4) == Some(canon.to_str().unwrap())).count();
    assert_eq!(n, 1, "mounts on {}:\n{info}", canon.display());
    assert_eq!(m2.stop_with(libc::SIGTERM).code(), Some(0));
    let log = std::fs::read_to_string(&out_path).unwrap();
    assert_eq!(log.matches(DETACHED).count(), 1, "one log line for the dead mount:\n{log}");
}

#[test]
fn a_live_foreign_mount_or_a_live_drift_mount_is_still_refused() {
    let s = Scratch::new();
    let canon = std::fs::canonicalize(&s.mnt).unwrap();
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "drift-test-tmpfs"]).arg(&s.mnt).status().unwrap();
    assert!(st.success(), "mounting a tmpfs for the test");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _guard = Unmount(&s.mnt);
    std::fs::write(s.mnt.join("tmpfs-file"), b"x").unwrap();
    let out = run(&["mount", s.backing.to_str().unwrap(), s.mnt.to_str().unwrap(), "--journal", s.journal.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("mountpoint {}: busy (a tmpfs filesystem from drift-test-tmpfs is mounted there", canon.display())),
        "{err}"
    );
    // Nothing changed: the tmpfs is still there with its file, no journal.
    assert_eq!(std::fs::read(s.mnt.join("tmpfs-file")).unwrap(), b"x");
    assert!(!s.journal.exists());

    // A live drift mount is refused too (a second daemon on one mountpoint).
    drop(_guard);
    let _m = s.mount();
    let j2 = s.path("journal2.db");
    let out = run(&["mount", s.backing.to_str().unwrap(), s.mnt.to_str().unwrap(), "--journal", j2.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("busy (a fuse filesystem from drift:"), "{err}");
    assert!(!err.contains(DETACHED), "{err}");
    assert!(!j2.exists());
}

fn curl(user: &str, pass: &str) -> Command {
    let mut c = Command::new("curl");
    c.args(["-sS", "--fail", "--max-time", "60", "--user", &format!("{user}:{pass}")]);
    c
}

fn must(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("running curl");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn drift_node_killed_then_started_again_serves_and_continues_the_journal() {
    let node = TestNode::start(NodeSetup::default());
    let work = tempfile::tempdir().unwrap();
    let (first, second) = (data(300_000, 1), data(200_000, 2));
    std::fs::write(work.path().join("first.bin"), &first).unwrap();
    std::fs::write(work.path().join("second.bin"), &second).unwrap();
    let url = |port: u16, p: &str| format!("ftp://127.0.0.1:{port}{p}");

    must(curl("alice", "alice-pw-1").arg("-T").arg(work.path().join("first.bin")).arg(url(node.port(), "/first.bin")));
    let before = node.last_seq();
    assert!(before >= 1);

    node.signal(libc::SIGKILL);
    wait_dead_mount(&node.mnt);

    let again = NodeProc::start(&node.config, &node.mnt);
    assert_eq!(again.logs().matches(DETACHED).count(), 1, "{}", again.logs());
    let got = must(curl("alice", "alice-pw-1").arg(url(again.addr.port(), "/first.bin")));
    assert!(got == first, "downloaded content differs after the restart");

    must(curl("alice", "alice-pw-1").arg("-T").arg(work.path().join("second.bin")).arg(url(again.addr.port(), "/second.bin")));
    let all = assert_gap_free(&node.journal);
    let last = all.last().unwrap();
    assert_eq!(last["seq"].as_u64().unwrap(), before + 1, "the restarted node continues the seq");
    assert_eq!(last["op"], "write");
    assert_eq!(last["path"], "/alice/second.bin");
    assert_eq!(last["blake3"], blake3_hex(&second));
    assert!(all.iter().any(|e| e["path"] == "/alice/first.bin" && e["blake3"] == blake3_hex(&first).as_str()));
    drop(again);
}
