//! POSIX conformance of the drift-fs mount, with real system calls from
//! this process (and `setpriv` for another user) through a real mount:
//! the caller's mode and umask, fstat of an unlinked open file, paths up
//! to PATH_MAX inside the mount whatever the backing directory's path,
//! and the owner of new entries under --allow-other.

mod common;

use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// `drift mount` started with its own umask set to `umask`, so that a
/// daemon applying its own umask shows up in the modes.
fn mount_with_umask(backing: &Path, mnt: &Path, journal: &Path, umask: u32, extra: &[&str]) -> MountProc {
    let mut cmd = drift();
    cmd.arg("mount").arg(backing).arg(mnt).arg("--journal").arg(journal).args(extra).stdin(Stdio::null());
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(umask as libc::mode_t);
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawning drift mount");
    let mut m = MountProc { child: Some(child), mnt: mnt.to_owned() };
    let up = wait_until(Duration::from_secs(10), || {
        is_mounted(mnt) || m.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some())
    });
    assert!(up && is_mounted(mnt), "drift mount did not come up on {}", mnt.display());
    m
}

/// Runs `f` with this process's umask set to `mask`. The umask is
/// process-wide, so tests that set it hold a lock.
fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    static UMASK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = UMASK.lock().unwrap_or_else(|p| p.into_inner());
    let old = unsafe { libc::umask(mask as libc::mode_t) };
    let r = f();
    unsafe { libc::umask(old) };
    r
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display())).mode() & 0o7777
}

/// The journal entry for `op` on `path` (waiting for it: the kernel
/// releases closed files asynchronously).
fn entry(journal: &Path, op: &str, path: &str) -> Value {
    let mut found = None;
    wait_until(Duration::from_secs(10), || {
        found = entries(journal, 0).into_iter().find(|e| e["op"] == op && e["path"] == path);
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no {op} entry for {path}: {:?}", entries(journal, 0)))
}

#[test]
fn new_entries_get_the_callers_mode_minus_the_callers_umask_only() {
    let s = Scratch::new();
    // The daemon's own umask (077) must not leak into what callers make.
    let _m = mount_with_umask(&s.backing, &s.mnt, &s.journal, 0o077, &[]);
    with_umask(0, || {
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o620).open(s.mnt.join("f620")).unwrap();
        std::fs::DirBuilder::new().mode(0o777).create(s.mnt.join("d777")).unwrap();
    });
    with_umask(0o022, || {
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o666).open(s.mnt.join("f644")).unwrap();
        std::fs::DirBuilder::new().mode(0o775).create(s.mnt.join("d755")).unwrap();
    });
    for (name, want) in [("f620", 0o620), ("d777", 0o777), ("f644", 0o644), ("d755", 0o755)] {
        assert_eq!(mode(&s.mnt.join(name)), want, "{name} through the mount");
        assert_eq!(mode(&s.backing.join(name)), want, "{name} in the backing directory");
    }
    // The journal records the resulting modes.
    assert_eq!(entry(&s.journal, "write", "/f620")["mode"], 0o620);
    assert_eq!(entry(&s.journal, "mkdir", "/d777")["mode"], 0o777);
    assert_eq!(entry(&s.journal, "write", "/f644")["mode"], 0o644);
    assert_eq!(entry(&s.journal, "mkdir", "/d755")["mode"], 0o755);
}

#[test]
fn fstat_of_an_open_unlinked_file_works() {
    let s = Scratch::new();
    let _m = s.mount();
    let p = s.mnt.join("doomed");
    let mut f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&p).unwrap();
    f.write_all(b"hello").unwrap();
    std::fs::remove_file(&p).unwrap();
    assert!(std::fs::symlink_metadata(&p).is_err(), "the name is gone");
    let md = f.metadata().expect("fstat of the unlinked open file");
    assert_eq!(md.len(), 5);
    assert!(md.is_file());
    // The file still works through its handle: write, fchmod, read back.
    f.write_all(b", world").unwrap();
    f.set_permissions(std::fs::Permissions::from_mode(0o600)).expect("fchmod of the unlinked open file");
    let md = f.metadata().unwrap();
    assert_eq!((md.len(), md.mode() & 0o7777), (12, 0o600));
    f.rewind().unwrap();
    let mut back = String::new();
    f.read_to_string(&mut back).unwrap();
    assert_eq!(back, "hello, world");
    drop(f);
    // Its unlink is journaled; its content never is (it is gone).
    wait_until(Duration::from_secs(5), || s.entries().iter().any(|e| e["op"] == "unlink"));
    let ops: Vec<String> = s.entries().iter().map(|e| format!("{} {}", e["op"].as_str().unwrap(), e["path"].as_str().unwrap())).collect();
    assert_eq!(ops, vec!["unlink /doomed"]);
}

/// Creates nested directories of 200-byte names under `base` until the
/// path is at least `len` bytes long.
fn long_dir(base: &Path, len: usize, c: char) -> PathBuf {
    std::fs::create_dir(base).unwrap();
    let mut p = base.to_owned();
    while p.as_os_str().len() < len {
        p.push(c.to_string().repeat(200));
        std::fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir ({} bytes): {e}", p.as_os_str().len()));
    }
    p
}

#[test]
fn paths_up_to_path_max_inside_the_mount_work_under_a_backing_dir_with_a_long_path() {
    let dir = tempfile::tempdir().unwrap();
    // A backing directory whose own path is ~3000 bytes; mountpoint and
    // journal at short paths.
    let backing = long_dir(&dir.path().join("b"), 3000, 'b');
    let (mnt, journal) = (dir.path().join("m"), dir.path().join("j.db"));
    std::fs::create_dir(&mnt).unwrap();
    let _m = MountProc::start(&backing, &mnt, &journal, &[]);

    // ~4000 bytes relative to the mount (under PATH_MAX with the short
    // mountpoint in front), ~7000 joined with the backing path.
    let mut rel = PathBuf::new();
    while rel.as_os_str().len() < 3750 {
        rel.push("d".repeat(250));
        std::fs::DirBuilder::new().mode(0o755).create(mnt.join(&rel)).unwrap_or_else(|e| {
            panic!("mkdir through the mount ({} bytes relative): {e}", rel.as_os_str().len())
        });
    }
    let file = rel.join("f".repeat(200));
    assert!(file.as_os_str().len() > 3900 && mnt.join(&file).as_os_str().len() < libc::PATH_MAX as usize);
    std::fs::write(mnt.join(&file), b"deep content").expect("create and write a deep file");
    assert_eq!(std::fs::read(mnt.join(&file)).unwrap(), b"deep content");
    std::fs::set_permissions(mnt.join(&file), std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(mode(&mnt.join(&file)), 0o640);
    let names: Vec<_> = std::fs::read_dir(mnt.join(&rel)).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("f".repeat(200))]);
    let renamed = rel.join("g".repeat(200));
    std::fs::rename(mnt.join(&file), mnt.join(&renamed)).unwrap();
    assert_eq!(std::fs::read(mnt.join(&renamed)).unwrap(), b"deep content");

    let jfile = format!("/{}", file.display());
    let e = entry(&journal, "write", &jfile);
    assert_eq!(e["blake3"], blake3_hex(b"deep content"));
    entry(&journal, "rename", &jfile);
    std::fs::remove_file(mnt.join(&renamed)).unwrap();
    entry(&journal, "unlink", &format!("/{}", renamed.display()));
}

/// Runs `sh -c script` as uid/gid 65534 (nobody) with no other groups.
fn as_nobody(script: &str) {
    let st = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", &format!("umask 022; {script}")])
        .status()
        .expect("setpriv (util-linux)");
    assert!(st.success(), "`{script}` as nobody failed: {st}");
}

#[test]
fn with_allow_other_new_entries_belong_to_the_user_who_made_them() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test runs as root, as drift's tests do");
    let s = Scratch::new();
    // Others must be able to reach the mountpoint's directory.
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let _m = MountProc::start(&s.backing, &s.mnt, &s.journal, &["--allow-other"]);
    // A world-writable directory, and a set-group-ID one owned by group 4242.
    with_umask(0, || {
        std::fs::DirBuilder::new().mode(0o777).create(s.mnt.join("pub")).unwrap();
        std::fs::DirBuilder::new().mode(0o777).create(s.mnt.join("sgid")).unwrap();
    });
    std::os::unix::fs::chown(s.mnt.join("sgid"), None, Some(4242)).unwrap();
    std::fs::set_permissions(s.mnt.join("sgid"), std::fs::Permissions::from_mode(0o2777)).unwrap();
    assert_eq!(mode(&s.mnt.join("sgid")), 0o2777);

    let (pubd, sgid) = (s.mnt.join("pub"), s.mnt.join("sgid"));
    as_nobody(&format!(
        "echo x > '{0}/f' && mkdir '{0}/d' && echo y > '{1}/f' && mkdir '{1}/d'",
        pubd.display(),
        sgid.display()
    ));
    for (p, uid, gid) in [
        (pubd.join("f"), 65534, 65534),
        (pubd.join("d"), 65534, 65534),
        (sgid.join("f"), 65534, 4242),
        (sgid.join("d"), 65534, 4242),
    ] {
        let md = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!((md.uid(), md.gid()), (uid, gid), "owner of {}", p.display());
        let rel = p.strip_prefix(&s.mnt).unwrap();
        let bmd = std::fs::symlink_metadata(s.backing.join(rel)).unwrap();
        assert_eq!((bmd.uid(), bmd.gid()), (uid, gid), "owner of {} in the backing directory", rel.display());
    }
    // Modes are still the caller's: umask 022, and a directory made in a
    // set-group-ID directory inherits the bit.
    assert_eq!(mode(&pubd.join("f")), 0o644);
    assert_eq!(mode(&pubd.join("d")), 0o755);
    assert_eq!(mode(&sgid.join("d")) & 0o2000, 0o2000);
    // The kernel enforces permissions for others: nobody cannot write into
    // a directory of root's with mode 755.
    with_umask(0o022, || std::fs::create_dir(s.mnt.join("private")).unwrap());
    let st = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c"])
        .arg(format!("echo z > '{}/f'", s.mnt.join("private").display()))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!st.success());
    assert!(!s.backing.join("private/f").exists());
}
