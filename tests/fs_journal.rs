//! End-to-end tests of `drift mount` and the journal: a real FUSE mount
//! driven by real tools, the journal read back through the real CLI.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn sh(script: &str, cwd: &Path) {
    let st = Command::new("sh").arg("-c").arg(format!("umask 022; {script}")).current_dir(cwd).status().unwrap();
    assert!(st.success(), "`{script}` failed: {st}");
}

fn python(script: &str, cwd: &Path) -> String {
    let out = Command::new("python3").arg("-c").arg(script).current_dir(cwd).output().unwrap();
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Waits (bounded) until the journal holds at least `n` entries: the
/// kernel releases closed files asynchronously.
/// The entries before a marker: a directory made through the mount after
/// everything else, whose entry comes after any entry the earlier
/// operations could still produce (entries are ordered by seq). Lets a
/// test check that nothing more was journaled without sleeping.
fn entries_before_marker(s: &Scratch) -> Vec<Value> {
    let marker = s.mnt.join(".marker");
    std::fs::create_dir(&marker).unwrap();
    let mut got = Vec::new();
    let seen = wait_until(Duration::from_secs(10), || {
        got = s.entries();
        got.iter().any(|e| e["op"] == "mkdir" && e["path"] == "/.marker")
    });
    assert!(seen, "the marker was never journaled");
    std::fs::remove_dir(&marker).unwrap();
    got.into_iter().take_while(|e| e["path"] != "/.marker").collect()
}

fn entries_at_least(s: &Scratch, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    wait_until(Duration::from_secs(10), || {
        got = s.entries();
        got.len() >= n
    });
    got
}

/// A compact, comparable form of an entry: op, path, and the fields that
/// apply to it.
fn shape(e: &Value) -> String {
    let mut s = format!("{} {}", e["op"].as_str().unwrap(), e["path"].as_str().unwrap());
    if let Some(to) = e.get("to") {
        s += &format!(" -> {}", to.as_str().unwrap());
    }
    if e["op"] == "write" {
        s += &format!(" size={} blake3={}", e["size"], e["blake3"].as_str().unwrap());
    }
    if let Some(m) = e.get("mode") {
        s += &format!(" mode={:o}", m.as_u64().unwrap());
    }
    s
}

#[test]
fn real_tools_leave_exactly_one_entry_per_completed_change() {
    let s = Scratch::new();
    let _m = s.mount();
    let m = &s.mnt;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 253) as u8).collect();
    std::fs::write(s.path("src.bin"), &data).unwrap();

    sh("mkdir -m 750 docs", m);
    sh(&format!("cp {} docs/a.bin", s.path("src.bin").display()), m);
    sh("mv docs/a.bin docs/b.bin", m);
    sh("truncate -s 1000 docs/b.bin", m);
    sh("chmod 600 docs/b.bin", m);
    python("open('docs/p.txt','w').write('hello\\n'*10)", m);
    python("f=open('docs/p.txt','r+'); f.seek(2); f.write('XY'); f.close()", m);
    // Reads and failed operations leave nothing.
    assert_eq!(python("print(open('docs/p.txt').read()[:4])", m).trim(), "heXY");
    sh("cat docs/b.bin > /dev/null; ls -la docs > /dev/null", m);
    assert!(!Command::new("rmdir").arg(m.join("docs")).status().unwrap().success());
    assert!(!Command::new("rm").arg(m.join("docs/none")).status().unwrap().success());
    sh("rm docs/p.txt", m);
    sh("mkdir sub && rmdir sub", m);
    python("open('docs/c.txt','w').write('c')", m);
    sh("mv docs/b.bin docs/c.txt", m); // over an existing file
    python("import os; os.truncate('docs/c.txt', 10)", m); // path truncate, no open file

    let mut p = b"hello\n".repeat(10);
    p[2..4].copy_from_slice(b"XY");
    let expected = vec![
        "mkdir /docs mode=750".to_string(),
        format!("write /docs/a.bin size=100000 blake3={} mode=644", blake3_hex(&data)),
        "rename /docs/a.bin -> /docs/b.bin".into(),
        format!("write /docs/b.bin size=1000 blake3={} mode=644", blake3_hex(&data[..1000])),
        "attr /docs/b.bin mode=600".into(),
        format!("write /docs/p.txt size=60 blake3={} mode=644", blake3_hex(&b"hello\n".repeat(10))),
        format!("write /docs/p.txt size=60 blake3={} mode=644", blake3_hex(&p)),
        "unlink /docs/p.txt".into(),
        "mkdir /sub mode=755".into(),
        "rmdir /sub".into(),
        format!("write /docs/c.txt size=1 blake3={} mode=644", blake3_hex(b"c")),
        "rename /docs/b.bin -> /docs/c.txt".into(),
        format!("write /docs/c.txt size=10 blake3={} mode=600", blake3_hex(&data[..10])),
    ];
    entries_at_least(&s, expected.len());
    let before = entries_before_marker(&s);
    let got: Vec<String> = before.iter().map(shape).collect();
    assert_eq!(got, expected);
    for (i, e) in before.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1);
        let t = e["time"].as_str().unwrap();
        assert!(t.len() >= 20 && t.ends_with('Z'), "RFC 3339 time, got {t}");
    }
    assert_eq!(std::fs::read(s.backing.join("docs/c.txt")).unwrap(), &data[..10]);
}

#[test]
fn eight_writers_times_500_files_seq_is_gap_free_and_hashes_match() {
    let s = Scratch::new();
    let _m = s.mount();
    const WRITERS: usize = 8;
    const FILES: usize = 500;
    std::thread::scope(|sc| {
        for w in 0..WRITERS {
            let dir = s.mnt.join(format!("w{w}"));
            sc.spawn(move || {
                std::fs::create_dir(&dir).unwrap();
                for i in 0..FILES {
                    let body = format!("writer {w} file {i} ").repeat(i % 37 + 1);
                    std::fs::write(dir.join(format!("f{i}")), body).unwrap();
                    if i % 50 == 0 {
                        // Rewrite: the journal's last word must be the final content.
                        std::fs::write(dir.join(format!("f{i}")), format!("rewritten {w} {i}")).unwrap();
                    }
                }
            });
        }
    });
    // Every file ends with a write entry holding its final content. A
    // rewrite right after a close may share the first write's entry: the
    // kernel can deliver the first release after the second open, and then
    // the file never was closed in between.
    let finals: std::collections::HashMap<String, String> = (0..WRITERS)
        .flat_map(|w| (0..FILES).map(move |i| format!("/w{w}/f{i}")))
        .map(|p| {
            let content = std::fs::read(s.backing.join(&p[1..])).unwrap();
            (p, blake3_hex(&content))
        })
        .collect();
    let mut got = Vec::new();
    let mut last = std::collections::HashMap::new();
    let settled = wait_until(Duration::from_secs(20), || {
        got = s.entries();
        last.clear();
        for e in &got {
            if e["op"] == "write" {
                last.insert(e["path"].as_str().unwrap().to_owned(), e["blake3"].as_str().unwrap().to_owned());
            }
        }
        last == finals
    });
    assert!(settled, "{} files journaled, {} with their final content", last.len(), finals.iter().filter(|(p, h)| last.get(*p) == Some(h)).count());
    let mut writes = std::collections::HashMap::new();
    for (i, e) in got.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1, "seq must have no gaps");
        if e["op"] == "write" {
            *writes.entry(e["path"].as_str().unwrap().to_owned()).or_insert(0) += 1;
        } else {
            assert_eq!(e["op"], "mkdir");
        }
    }
    for (path, n) in &writes {
        let i: usize = path.rsplit("/f").next().unwrap().parse().unwrap();
        let max = if i % 50 == 0 { 2 } else { 1 };
        assert!((1..=max).contains(n), "{path} has {n} write entries");
    }
    assert_eq!(got.len() - writes.values().sum::<usize>(), WRITERS, "one mkdir per writer");
}

#[test]
fn kill_9_leaves_a_journal_that_opens_and_keeps_every_returned_operation() {
    let s = Scratch::new();
    let mut m = s.mount();
    // The writer prints a directory's name once mkdir has returned: from
    // then on its entry must be in the journal.
    let writer = Command::new("python3")
        .arg("-c")
        .arg(
            "import os, sys, time\n\
             t = time.time()\n\
             for i in range(100000):\n\
             \x20   if time.time() - t > 20: break\n\
             \x20   try:\n\
             \x20       os.mkdir(f'd{i}')\n\
             \x20       print(f'/d{i}', flush=True)\n\
             \x20       with open(f'd{i}/f', 'wb') as f: f.write(os.urandom(1000 + i))\n\
             \x20   except OSError: break\n",
        )
        .current_dir(&s.mnt)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let journal = s.journal.clone();
    assert!(wait_until(Duration::from_secs(30), || entries(&journal, 0).len() > 100), "writer makes progress");
    let st = m.stop_with(libc::SIGKILL);
    assert!(!st.success());
    let out = writer.wait_with_output().unwrap();
    force_unmount(&s.mnt);
    let acked: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect();
    assert!(acked.len() > 30, "acknowledged: {}", acked.len());

    // The journal opens and every entry is well-formed.
    let got = s.entries();
    let mut mkdirs = std::collections::HashSet::new();
    for (i, e) in got.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1);
        let op = e["op"].as_str().unwrap();
        assert!(["write", "mkdir"].contains(&op), "{e}");
        assert!(e["path"].as_str().unwrap().starts_with("/d"));
        if op == "write" {
            assert!(e["size"].as_u64().unwrap() >= 1000);
            assert_eq!(e["blake3"].as_str().unwrap().len(), 64);
        } else {
            mkdirs.insert(e["path"].as_str().unwrap().to_owned());
        }
    }
    for d in &acked {
        assert!(mkdirs.contains(d), "{d} was acknowledged but is not in the journal");
    }
    ok(&["journal", "stats", "--journal", s.journal.to_str().unwrap()]);

    // verify explains any difference: only the files that were open or
    // not yet released when the mount died.
    let v = run(&["journal", "verify", "--journal", s.journal.to_str().unwrap(), "--backing", s.backing.to_str().unwrap(), "--json"]);
    let code = v.status.code().unwrap();
    assert!(code == 0 || code == 3, "verify exit {code}: {}", String::from_utf8_lossy(&v.stderr));
    let divs: Vec<Value> = String::from_utf8(v.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(divs.is_empty(), code == 0);
    assert!(divs.len() <= 3, "only the last files can differ: {divs:?}");
    for d in &divs {
        let kind = d["divergence"].as_str().unwrap();
        assert!(kind == "not_journaled" || kind == "content_differs", "{d}");
        // Only the newest directories can differ: the mkdir or file write
        // in flight when the mount died (its call had not returned).
        let n: usize = d["path"].as_str().unwrap()[2..].split('/').next().unwrap().parse().unwrap();
        assert!(n + 2 >= acked.len(), "{d} is older than the last acknowledged /d{}", acked.len() - 1);
    }

    // Remount on the same journal: seq continues.
    let n = got.len() as u64;
    let _m2 = s.mount();
    std::fs::create_dir(s.mnt.join("after")).unwrap();
    let e = entries(&s.journal, n);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0]["seq"], n + 1);
    assert_eq!(e[0]["path"], "/after");
}

#[test]
fn pack_then_replay_reproduces_the_tree_and_replay_is_idempotent() {
    let s = Scratch::new();
    // A pre-existing file: a new journal records it as its baseline.
    std::fs::write(s.backing.join("old.txt"), b"there before the mount").unwrap();
    let m = s.mount();
    let mnt = &s.mnt;
    sh("mkdir -p a/b/c && echo one > a/b/c/1 && echo two > a/b/2 && seq 1 100000 > a/big", mnt);
    // Pack the first phase's content too, so a replay can stop right after it.
    let phase1 = entries_at_least(&s, 7).len();
    assert_eq!(phase1, 7, "baseline write, 3 mkdirs, 3 writes");
    let blobs = s.path("blobs");
    let (j, backing) = (s.journal.to_str().unwrap(), s.backing.to_str().unwrap());
    ok(&["journal", "pack", "--journal", j, "--backing", backing, "--blobs", blobs.to_str().unwrap()]);
    sh("echo again > a/b/2 && mv a/b a/B && rm a/B/c/1 && mkdir e && mv a/big e/big && chmod 640 e/big", mnt);
    sh("echo x > tmp && mv tmp old.txt && echo y > gone && rm gone && mkdir z && rmdir z", mnt);
    drop(m);
    let out = ok(&["journal", "pack", "--journal", j, "--backing", s.backing.to_str().unwrap(), "--blobs", blobs.to_str().unwrap()]);
    assert!(out.contains("0 changed, 0 missing"), "{out}");
    ok(&["journal", "verify", "--journal", j, "--backing", s.backing.to_str().unwrap()]);

    let want = digest(&s.backing);
    let dest = s.path("replayed");
    ok(&["journal", "replay", "--journal", j, "--blobs", blobs.to_str().unwrap(), "--to", dest.to_str().unwrap()]);
    assert_eq!(digest(&dest), want);
    // Again over the finished tree: nothing changes.
    ok(&["journal", "replay", "--journal", j, "--blobs", blobs.to_str().unwrap(), "--to", dest.to_str().unwrap()]);
    assert_eq!(digest(&dest), want);
    // In two halves: the first phase, then the rest.
    let dest2 = s.path("halves");
    ok(&["journal", "replay", "--journal", j, "--blobs", blobs.to_str().unwrap(), "--to", dest2.to_str().unwrap(), "--until", &phase1.to_string()]);
    assert!(dest2.join("a/b/c/1").exists() && !dest2.join("e").exists());
    ok(&["journal", "replay", "--journal", j, "--blobs", blobs.to_str().unwrap(), "--to", dest2.to_str().unwrap(), "--from", &(phase1 + 1).to_string()]);
    assert_eq!(digest(&dest2), want);
    // A replayed tree verifies against the journal too.
    ok(&["journal", "verify", "--journal", j, "--backing", dest.to_str().unwrap()]);

    // A corrupt blob stops a replay with an error naming the entry.
    let big = entries(&s.journal, 0).into_iter().rev().find(|e| e["op"] == "write" && e["path"] == "/a/big").unwrap();
    let h = big["blake3"].as_str().unwrap();
    let blob = blobs.join(&h[..2]).join(h);
    std::fs::write(&blob, b"tampered").unwrap();
    let dest3 = s.path("corrupt");
    let r = run(&["journal", "replay", "--journal", j, "--blobs", blobs.to_str().unwrap(), "--to", dest3.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1));
    assert!(err.contains(&format!("entry {}", big["seq"])) && err.contains("corrupt"), "{err}");
    assert!(!dest3.join("a/big").exists() && !dest3.join("e/big").exists());
    std::fs::remove_file(&blob).unwrap();
    let r = run(&["journal", "replay", "--journal", j, "--blobs", blobs.to_str().unwrap(), "--to", dest3.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains(&format!("entry {}", big["seq"])) && err.contains("missing"), "{err}");

    // verify names a divergence and exits 3.
    std::fs::write(dest.join("e/big"), b"changed behind the journal's back").unwrap();
    std::fs::write(dest.join("stray"), b"").unwrap();
    let v = run(&["journal", "verify", "--journal", j, "--backing", dest.to_str().unwrap()]);
    assert_eq!(v.status.code(), Some(3));
    let text = String::from_utf8_lossy(&v.stdout);
    assert!(text.contains("/e/big: content differs") && text.contains("/stray: file not in the journal"), "{text}");
}

#[test]
fn links_are_refused_and_existing_symlinks_are_shown() {
    let s = Scratch::new();
    std::os::unix::fs::symlink("/etc/hostname", s.backing.join("planted")).unwrap();
    let _m = s.mount();
    std::fs::write(s.mnt.join("f"), b"x").unwrap();
    let e = std::os::unix::fs::symlink("f", s.mnt.join("sym")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    let e = std::fs::hard_link(s.mnt.join("f"), s.mnt.join("hard")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    assert_eq!(std::fs::read_link(s.mnt.join("planted")).unwrap(), Path::new("/etc/hostname"));
    let got = entries_before_marker(&s);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(!s.backing.join("sym").exists() && !s.backing.join("hard").exists());
}

#[test]
fn sigint_and_external_umount_end_the_mount_cleanly() {
    let s = Scratch::new();
    let mut m = s.mount();
    assert_eq!(m.stop_with(libc::SIGINT).code(), Some(0));
    assert!(!is_mounted(&s.mnt));

    let mut m = s.mount();
    assert!(Command::new("umount").arg(&s.mnt).status().unwrap().success());
    let st = m.wait_exit(Duration::from_secs(10)).expect("drift mount exits after umount");
    assert_eq!(st.code(), Some(0));
}

#[test]
fn bad_input_is_refused_clearly_and_changes_nothing() {
    let s = Scratch::new();
    let b = s.backing.to_str().unwrap();
    let mnt = s.mnt.to_str().unwrap();
    let j = s.journal.to_str().unwrap();
    let fails = |args: &[&str], needle: &str| {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(err.contains(needle), "{args:?}: expected {needle:?} in {err:?}");
        assert!(!is_mounted(&s.mnt));
    };
    let missing = s.path("nope");
    fails(&["mount", missing.to_str().unwrap(), mnt, "--journal", j], "does not exist");
    assert!(!s.journal.exists(), "no journal created for a refused mount");
    let file = s.path("plain-file");
    std::fs::write(&file, b"data").unwrap();
    fails(&["mount", b, file.to_str().unwrap(), "--journal", j], "not a directory");
    fails(&["mount", file.to_str().unwrap(), mnt, "--journal", j], "not a directory");
    let notes = s.path("notes.txt");
    std::fs::write(&notes, b"my notes\n").unwrap();
    fails(&["mount", b, mnt, "--journal", notes.to_str().unwrap()], "not a drift journal");
    assert_eq!(std::fs::read(&notes).unwrap(), b"my notes\n");
    fails(&["mount", b, mnt, "--journal", s.backing.join("j.db").to_str().unwrap()], "inside");
    fails(&["mount", b, mnt, "--journal", s.path("no-such-dir/j.db").to_str().unwrap()], "no-such-dir");
    fails(&["mount", b, s.backing.join(".").to_str().unwrap(), "--journal", j], "");

    fails(&["journal", "list", "--journal", notes.to_str().unwrap()], "not a drift journal");
    fails(&["journal", "list", "--journal", missing.to_str().unwrap()], "does not exist");
    fails(&["journal", "list", "--journal", s.dir.path().to_str().unwrap()], "");

    {
        let _m = s.mount();
        std::fs::create_dir(s.mnt.join("d")).unwrap();
        // Busy: something is mounted there already.
        let out = run(&["mount", b, mnt, "--journal", s.path("j2.db").to_str().unwrap()]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("busy"));
        assert!(!s.path("j2.db").exists());
        assert!(is_mounted(&s.mnt), "the first mount is untouched");
    }
    let out = run(&["journal", "show", "--journal", j, "999"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no entry with seq 999"));
    let e: Value = serde_json::from_str(&ok(&["journal", "show", "--journal", j, "1"])).unwrap();
    assert_eq!(e["path"], "/d");
    // A refused replay destination changes nothing either.
    let out = run(&["journal", "replay", "--journal", j, "--blobs", missing.to_str().unwrap(), "--to", s.path("r").to_str().unwrap()]);
    assert!(!out.status.success() && !s.path("r").exists());
}

#[test]
fn a_full_journal_disk_stops_changes_instead_of_losing_them() {
    let s = Scratch::new();
    let jdir = s.path("journal-fs");
    std::fs::create_dir(&jdir).unwrap();
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=2m", "drift-test", jdir.to_str().unwrap()]).status().unwrap();
    assert!(st.success(), "mounting a small tmpfs for the journal");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _tmpfs = Unmount(jdir.clone());
    let journal = jdir.join("journal.db");
    let m = MountProc::start(&s.backing, &s.mnt, &journal, &[]);
    std::fs::create_dir(s.mnt.join("before")).unwrap();
    // Fill the journal's filesystem.
    let _ = Command::new("dd").args(["if=/dev/zero", &format!("of={}", jdir.join("filler").display()), "bs=64k"]).stderr(std::process::Stdio::null()).status();
    let mut failed_at = None;
    for i in 0..5000 {
        if let Err(e) = std::fs::create_dir(s.mnt.join(format!("d{i}"))) {
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
            failed_at = Some(i);
            break;
        }
    }
    let n = failed_at.expect("the journal's disk filled up");
    // From now on nothing changes: every change is refused, nothing lands.
    for (what, r) in [
        ("mkdir", std::fs::create_dir(s.mnt.join("after"))),
        ("create", std::fs::write(s.mnt.join("after.txt"), b"x")),
        ("rmdir", std::fs::remove_dir(s.mnt.join("before"))),
    ] {
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EIO), "{what}");
    }
    assert!(!s.backing.join("after").exists() && !s.backing.join("after.txt").exists());
    assert!(s.backing.join("before").is_dir());
    // Reads still work.
    assert!(std::fs::read_dir(&s.mnt).unwrap().count() >= n);
    drop(m);
    // Every entry that made it is intact, and verify names the one
    // directory whose mkdir hit the full disk.
    std::fs::remove_file(jdir.join("filler")).unwrap();
    let got = entries(&journal, 0);
    assert_eq!(got.len(), n + 1, "before + d0..d{}", n - 1);
    let v = run(&["journal", "verify", "--journal", journal.to_str().unwrap(), "--backing", s.backing.to_str().unwrap()]);
    assert_eq!(v.status.code(), Some(3));
    let text = String::from_utf8_lossy(&v.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains(&format!("/d{n}: directory not in the journal")), "{text}");
}

#[test]
fn replay_of_a_different_journal_onto_a_replayed_tree_is_refused_and_changes_nothing() {
    // Two independent journals, each packed.
    let mk = |files: &str| {
        let s = Scratch::new();
        let m = s.mount();
        sh(files, &s.mnt);
        drop(m);
        let blobs = s.path("blobs");
        ok(&["journal", "pack", "--journal", s.journal.to_str().unwrap(), "--backing", s.backing.to_str().unwrap(), "--blobs", blobs.to_str().unwrap()]);
        (s, blobs)
    };
    let (a, a_blobs) = mk("mkdir d && echo from-a > d/f && echo a > only-a");
    let (b, b_blobs) = mk("mkdir d && echo from-b > d/f && echo b > only-b");
    let dest = tempfile::tempdir().unwrap();
    let to = dest.path().join("tree");
    let replay = |s: &Scratch, blobs: &Path, extra: &[&str]| {
        let mut args = vec!["journal", "replay", "--journal", s.journal.to_str().unwrap(), "--blobs", blobs.to_str().unwrap(), "--to", to.to_str().unwrap()];
        args.extend_from_slice(extra);
        run(&args)
    };
    // Journal A in two steps (incremental replay of the same journal works).
    let out = replay(&a, &a_blobs, &["--until", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = replay(&a, &a_blobs, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(digest(&to), digest(&a.backing));
    let before = digest(&to);

    // Journal B onto A's tree: refused, clearly, and nothing changes.
    let out = replay(&b, &b_blobs, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("holds a replay of another journal") && err.contains("nothing was changed"), "{err}");
    assert_eq!(err.matches("drift:").count(), 1, "one error line: {err}");
    assert_eq!(digest(&to), before);
    assert!(!to.join("only-b").exists());
    assert_eq!(std::fs::read_to_string(to.join("d/f")).unwrap(), "from-a\n");

    // Journal A again: still accepted (nothing left to apply).
    let out = replay(&a, &a_blobs, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(digest(&to), before);
    drop(b);
}

/// Runs `drift ARGS` in a private mount namespace after `setup` (a shell
/// snippet that breaks /dev/fuse there only), returning status and stderr.
fn in_private_ns(setup: &str, args: &[&str]) -> (Option<i32>, String) {
    let cmd = std::iter::once(drift_bin()).chain(args.iter().copied()).map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ");
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &format!("{setup} && exec {cmd}")])
        .env("DRIFT_LOG", "warn")
        .output()
        .expect("unshare (util-linux)");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn fuse_device_problems_are_named_with_what_to_do_and_not_blamed_on_the_mountpoint() {
    let s = Scratch::new();
    let (b, mnt, j) = (s.backing.to_str().unwrap(), s.mnt.to_str().unwrap(), s.journal.to_str().unwrap());
    let mount = ["mount", b, mnt, "--journal", j];
    let check = |(code, err): (Option<i32>, String), needles: &[&str]| {
        assert_eq!(code, Some(1), "{err}");
        for n in needles {
            assert!(err.contains(n), "expected {n:?} in {err:?}");
        }
        assert!(!err.contains("mountpoint"), "not blamed on the mountpoint: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(!s.journal.exists(), "a refused mount leaves no journal");
        assert!(!is_mounted(&s.mnt));
    };
    // Missing: an empty /dev.
    check(in_private_ns("mount -t tmpfs none /dev", &mount), &["/dev/fuse is missing", "modprobe fuse", "apt-get install fuse3"]);
    // Broken: something else at /dev/fuse.
    check(in_private_ns("mount --bind /dev/null /dev/fuse", &mount), &["/dev/fuse is broken", "1:3", "mknod"]);
    // Unreadable for the user running drift.
    let (code, err) = {
        let cmd = format!(
            "mount -t tmpfs none /dev && mknod -m 000 /dev/fuse c 10 229 && exec setpriv --reuid=65534 --regid=65534 --clear-groups '{}' mount '{b}' '{mnt}' --journal '{j}'",
            drift_bin()
        );
        std::fs::set_permissions(s.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let out = Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &cmd]).env("DRIFT_LOG", "warn").output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    check((code, err), &["/dev/fuse is not readable and writable by this user", "permissions"]);
    // A non-root user without fusermount3 (the device itself is usable).
    let cmd = format!(
        "mount -t tmpfs none /dev && mknod -m 666 /dev/fuse c 10 229 && exec setpriv --reuid=65534 --regid=65534 --clear-groups env PATH=/nonexistent '{}' mount '{b}' '{mnt}' --journal '{j}'",
        drift_bin()
    );
    let out = Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &cmd]).env("DRIFT_LOG", "warn").output().unwrap();
    check((out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()), &["fusermount3 is missing", "apt-get install fuse3"]);
}

#[test]
fn an_os_error_is_printed_once() {
    let s = Scratch::new();
    let (b, mnt) = (s.backing.to_str().unwrap(), s.mnt.to_str().unwrap());
    // A directory where the journal should be: SQLite says "unable to
    // open database file" (and rusqlite repeats it); the OS says why.
    let jdir = s.path("j.db");
    std::fs::create_dir(&jdir).unwrap();
    for args in [
        vec!["mount", b, mnt, "--journal", jdir.to_str().unwrap()],
        vec!["journal", "list", "--journal", jdir.to_str().unwrap()],
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert_eq!(err.matches("Is a directory (os error 21)").count(), 1, "{err}");
        assert_eq!(err.matches("unable to open database file").count(), 0, "{err}");
        assert_eq!(err.matches(jdir.to_str().unwrap()).count(), 1, "{err}");
    }
    // A journal directory that does not exist: named once, as the journal's.
    let out = run(&["mount", b, mnt, "--journal", s.path("no-dir/j.db").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("journal directory") && err.matches("(os error 2)").count() == 1, "{err}");
}

/// The readahead window (KiB) of the device holding `p`, from sysfs.
fn read_ahead_kb(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(p).unwrap().dev();
    let knob = format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(dev), libc::minor(dev));
    std::fs::read_to_string(&knob).unwrap_or_else(|e| panic!("{knob}: {e}")).trim().parse().unwrap()
}

#[test]
fn the_mounts_readahead_window_is_the_backing_devices() {
    // The kernel starts a FUSE connection at 128 KiB of readahead; reads
    // served through the mount's page cache (no passthrough) need the
    // backing device's window to keep up with the plain directory.
    let s = Scratch::new();
    let _m = MountProc::start(&s.backing, &s.mnt, &s.journal, &["--no-passthrough"]);
    let want = read_ahead_kb(&s.backing).max(drift_fs::readahead::FLOOR_KB);
    // The window is set right after the mount appears (the connection's
    // sysfs entry exists only then): wait for it, bounded.
    let set = wait_until(Duration::from_secs(10), || read_ahead_kb(&s.mnt) == want);
    assert!(set, "readahead of the mount: {} KiB, backing device's: {want} KiB", read_ahead_kb(&s.mnt));
}
