//! Content hashing shared by the filesystem, `pack`, `verify` and `digest`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Reads in chunks this large; big enough for BLAKE3's multi-threaded
/// update to pay off, small enough to keep memory flat.
const CHUNK: usize = 4 << 20;
/// Below this, multi-threading costs more than it saves.
const RAYON_MIN: usize = 256 << 10;

/// BLAKE3 and length of everything readable from `file`, read with
/// positioned reads from offset 0 (the file's own offset is untouched, so
/// this is safe on a descriptor someone else is using).
///
/// Reads rather than maps: a file truncated under an mmap raises SIGBUS,
/// which would take the whole mount down.
pub fn hash_file(file: &File) -> io::Result<(blake3::Hash, u64)> {
    hash_file_mode(file).map(|(h, n, _)| (h, n))
}

/// [`hash_file`], plus the file's mode from the same fstat.
pub fn hash_file_mode(file: &File) -> io::Result<(blake3::Hash, u64, u32)> {
    use std::os::unix::fs::MetadataExt;
    let md = file.metadata()?;
    let mut hasher = blake3::Hasher::new();
    // Small files are the common case: don't fault in a 4 MiB buffer for
    // each (one byte more than the size, so EOF shows in the same read).
    let len = md.len();
    let mut buf = vec![0u8; (len as usize).saturating_add(1).clamp(4096, CHUNK)];
    let mut off = 0u64;
    loop {
        let n = match file.read_at(&mut buf, off) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        update(&mut hasher, &buf[..n]);
        off += n as u64;
    }
    Ok((hasher.finalize(), off, md.mode()))
}

/// Like [`hash_file`], for a path.
pub fn hash_path(path: &Path) -> io::Result<(blake3::Hash, u64)> {
    hash_file(&File::open(path)?)
}

fn update(hasher: &mut blake3::Hasher, data: &[u8]) {
    if data.len() >= RAYON_MIN {
        hasher.update_rayon(data);
    } else {
        hasher.update(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_hash_equals_one_shot() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..(CHUNK * 2 + 12345)).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let (h, n) = hash_path(&p).unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(h, blake3::hash(&data));
    }
}
