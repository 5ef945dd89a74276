//! Content offers (`Mount::content_hints`) on a real mount: used only when
//! the offer names the released file (path and inode), the offering handle
//! was the file's only writer and the size matches.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use drift_fs::{Mount, MountConfig, Op};

struct Fixture {
    _dir: tempfile::TempDir,
    mount: Option<Mount>,
    mnt: std::path::PathBuf,
}

fn mount() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (b, m) = (dir.path().join("b"), dir.path().join("m"));
    std::fs::create_dir(&b).unwrap();
    std::fs::create_dir(&m).unwrap();
    let mount = Mount::spawn(MountConfig::new(&b, &m, dir.path().join("j.db"))).unwrap();
    Fixture { _dir: dir, mount: Some(mount), mnt: m }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(m) = self.mount.take() {
            let _ = m.unmount();
        }
    }
}

fn written_hash(f: &Fixture, path: &str, after: u64) -> String {
    let j = f.mount.as_ref().unwrap().journal();
    let e = j.wait_for(after, Duration::from_secs(10), |e| e.op == Op::Write && e.path == path).unwrap();
    e.expect("write entry").blake3.unwrap()
}

#[test]
fn a_sole_writers_offer_is_used_and_anything_else_is_hashed() {
    let f = mount();
    let m = f.mount.as_ref().unwrap();
    let hints = m.content_hints();
    let data = vec![7u8; 100_000];
    let real = blake3::hash(&data).to_hex().to_string();
    // A deliberately false offer shows whether the offer or the file was used.
    let claim = blake3::hash(b"not the content");

    // One writer, right size: the offer is taken as is.
    let mark = m.journal().last_seq();
    let mut file = std::fs::File::create(f.mnt.join("sole")).unwrap();
    file.write_all(&data).unwrap();
    hints.offer("/sole", ino(&file), data.len() as u64, claim);
    drop(file);
    assert_eq!(written_hash(&f, "/sole", mark), claim.to_hex().to_string());

    // Wrong size: ignored, the file is hashed.
    let mark = m.journal().last_seq();
    let mut file = std::fs::File::create(f.mnt.join("size")).unwrap();
    file.write_all(&data).unwrap();
    hints.offer("/size", ino(&file), data.len() as u64 - 1, claim);
    drop(file);
    assert_eq!(written_hash(&f, "/size", mark), real);

    // A second handle opened for writing meanwhile: ignored.
    let mark = m.journal().last_seq();
    let mut file = std::fs::File::create(f.mnt.join("two")).unwrap();
    let other = std::fs::OpenOptions::new().write(true).open(f.mnt.join("two")).unwrap();
    file.write_all(&data).unwrap();
    hints.offer("/two", ino(&file), data.len() as u64, claim);
    drop(other);
    drop(file);
    assert_eq!(written_hash(&f, "/two", mark), real);

    // Truncated by path while open (not through the handle): ignored.
    let mark = m.journal().last_seq();
    let mut file = std::fs::OpenOptions::new().write(true).open(f.mnt.join("sole")).unwrap();
    file.write_all(&data[..10]).unwrap();
    let c = std::ffi::CString::new(f.mnt.join("sole").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 50_000) }, 0);
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), data.len() as i64) }, 0);
    hints.offer("/sole", ino(&file), data.len() as u64, claim);
    drop(file);
    let mut now = data.clone();
    now[50_000..].fill(0);
    assert_eq!(written_hash(&f, "/sole", mark), blake3::hash(&now).to_hex().to_string());

    // An offer made before the file was opened is stale: ignored.
    let mark = m.journal().last_seq();
    let held = std::fs::File::create(f.mnt.join("later")).unwrap();
    drop(held);
    assert_eq!(written_hash(&f, "/later", mark), blake3::hash(b"").to_hex().to_string());
    let mark = m.journal().last_seq();
    let inode = std::fs::metadata(f.mnt.join("later")).unwrap().ino();
    hints.offer("/later", inode, data.len() as u64, claim);
    std::fs::write(f.mnt.join("later"), &data).unwrap();
    assert_eq!(std::fs::metadata(f.mnt.join("later")).unwrap().ino(), inode, "same file, same inode");
    assert_eq!(written_hash(&f, "/later", mark), real);

    // An offer for the file that had the path before (renamed away while
    // being written), taken by a new file under that path: ignored.
    let mark = m.journal().last_seq();
    let mut first = std::fs::File::create(f.mnt.join("moved")).unwrap();
    first.write_all(&data).unwrap();
    std::fs::rename(f.mnt.join("moved"), f.mnt.join("away")).unwrap();
    let mut second = std::fs::File::create(f.mnt.join("moved")).unwrap();
    second.write_all(&data).unwrap();
    hints.offer("/moved", ino(&first), data.len() as u64, claim);
    drop(second);
    assert_eq!(written_hash(&f, "/moved", mark), real);
    drop(first);
}

fn ino(file: &std::fs::File) -> u64 {
    file.metadata().unwrap().ino()
}
