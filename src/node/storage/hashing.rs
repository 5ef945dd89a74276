//! `HASH` for the node: BLAKE3 answered from the journal when its entry
//! provably describes the file ([`drift_fs::Known::describes`]), else
//! (and for SHA-256, SHA-1, MD5) computed by reading the file.
//!
//! Reads run on blocking threads, at most [`READERS`] at a time for the
//! whole node: a client asking for hashes of huge files waits for a
//! permit instead of taking the threads and CPU every session's metadata
//! operations need.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drift_fs::Observed;
use sha1::Digest as _;
use tokio::sync::Semaphore;
use unftp_core::storage::{FileHash, HashAlgorithm};

/// Hashes read at the same time, node-wide.
const READERS: usize = 2;
static PERMITS: Semaphore = Semaphore::const_new(READERS);

/// How long a hash request waits for a permit before it is refused.
const PERMIT_WAIT: Duration = Duration::from_secs(10);

const BLOCK: usize = 1 << 20;

/// Size and times of an open file (`fstat`, through the mount).
pub(super) fn observe(f: &File) -> io::Result<Observed> {
    let m = f.metadata()?;
    Ok(Observed {
        size: m.len(),
        mtime: at(m.mtime(), m.mtime_nsec()),
        ctime: at(m.ctime(), m.ctime_nsec()),
    })
}

fn at(secs: i64, nsec: i64) -> SystemTime {
    let d = Duration::new(secs.unsigned_abs(), nsec.clamp(0, 999_999_999) as u32);
    if secs >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

/// How far behind the journal's clock a file timestamp may be: the
/// kernel stamps files from its coarse clock (one tick behind at most);
/// a backing filesystem that keeps whole seconds floors them by up to a
/// second (taken to be the case when both times have no fraction).
pub(super) fn slack(o: &Observed) -> Duration {
    let mut res = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_getres writes into the timespec we pass.
    let tick = if unsafe { libc::clock_getres(libc::CLOCK_REALTIME_COARSE, &mut res) } == 0 {
        Duration::new(res.tv_sec.max(0) as u64, res.tv_nsec.clamp(0, 999_999_999) as u32)
    } else {
        Duration::from_millis(10)
    };
    let whole_seconds = |t: SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos() == 0).unwrap_or(true);
    let floor = if whole_seconds(o.mtime) && whole_seconds(o.ctime) {
        Duration::from_secs(1)
    } else {
        Duration::ZERO
    };
    tick + floor + Duration::from_millis(1)
}

enum Hasher {
    Blake3(Box<blake3::Hasher>),
    Sha256(sha2::Sha256),
    Sha1(sha1::Sha1),
    Md5(md5::Md5),
}

impl Hasher {
    fn new(algo: HashAlgorithm) -> Hasher {
        match algo {
            HashAlgorithm::Blake3 => Hasher::Blake3(Box::default()),
            HashAlgorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            HashAlgorithm::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            HashAlgorithm::Md5 => Hasher::Md5(md5::Md5::new()),
        }
    }

    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Blake3(h) => {
                h.update(b);
            }
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha1(h) => h.update(b),
            Hasher::Md5(h) => h.update(b),
        }
    }

    fn hex(self) -> String {
        fn hex(bytes: &[u8]) -> String {
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
        match self {
            Hasher::Blake3(h) => h.finalize().to_hex().to_string(),
            Hasher::Sha256(h) => hex(&h.finalize()),
            Hasher::Sha1(h) => hex(&h.finalize()),
            Hasher::Md5(h) => hex(&h.finalize()),
        }
    }
}

/// Hashes `file` from its start to its end by reading it, on a blocking
/// thread, once one of the node's [`READERS`] permits is free.
/// Waits at most [`PERMIT_WAIT`] for a permit, so requests that pile up
/// behind long hashes (each holding an open file) give up instead of
/// accumulating: `WouldBlock` then, which the client gets as a 450.
pub(super) async fn read_hash(file: File, algo: HashAlgorithm) -> io::Result<FileHash> {
    let _permit = match tokio::time::timeout(PERMIT_WAIT, PERMITS.acquire()).await {
        Ok(permit) => permit.map_err(io::Error::other)?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("the node is busy computing other hashes ({READERS} at a time); try again later"),
            ))
        }
    };
    tokio::task::spawn_blocking(move || {
        let mut h = Hasher::new(algo);
        let mut buf = vec![0u8; BLOCK];
        let mut pos = 0u64;
        loop {
            let n = match file.read_at(&mut buf, pos) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            h.update(&buf[..n]);
            pos += n as u64;
        }
        Ok(FileHash { hex: h.hex(), len: pos })
    })
    .await
    .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn known_vectors() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"abc").unwrap();
        let h = |a| {
            let f = f.try_clone().unwrap();
            async move { read_hash(f, a).await.unwrap() }
        };
        assert_eq!(h(HashAlgorithm::Md5).await.hex, "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(h(HashAlgorithm::Sha1).await.hex, "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            h(HashAlgorithm::Sha256).await.hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let b = h(HashAlgorithm::Blake3).await;
        assert_eq!((b.hex, b.len), (blake3::hash(b"abc").to_hex().to_string(), 3));
    }
}
