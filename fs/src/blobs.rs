//! The content-addressed blob store: one file per BLAKE3 hash, fanned out
//! by the hash's first two hex digits (`ab/abcdef…`). Blobs are written to
//! a temporary name, verified, then renamed into place, so a blob under
//! its final name always has the content its name says.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("{path}")]
    Io { path: PathBuf, #[source] source: io::Error },
    #[error("{0:?} is not a BLAKE3 hash (64 hex digits)")]
    BadHash(String),
    #[error("blob {hash} is missing from {store}")]
    Missing { hash: String, store: PathBuf },
    #[error("blob {hash} in {store} is corrupt: its content hashes to {actual}")]
    Corrupt { hash: String, store: PathBuf, actual: String },
    #[error("{path} no longer has content {expected} (it hashes to {actual})")]
    Changed { path: PathBuf, expected: String, actual: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    move |source| BlobError::Io { path: path.to_owned(), source }
}

pub fn check_hash(hash: &str) -> Result<(), BlobError> {
    if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(BlobError::BadHash(hash.to_owned()))
    }
}

#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<BlobStore, BlobError> {
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        Ok(BlobStore { root: root.to_owned() })
    }

    /// Opens an existing store without creating anything.
    pub fn existing(root: &Path) -> Result<BlobStore, BlobError> {
        let md = std::fs::metadata(root).map_err(io_err(root))?;
        if !md.is_dir() {
            return Err(BlobError::Io { path: root.to_owned(), source: io::Error::new(io::ErrorKind::InvalidInput, "not a directory") });
        }
        Ok(BlobStore { root: root.to_owned() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob for `hash` lives (whether or not it exists).
    pub fn path_of(&self, hash: &str) -> Result<PathBuf, BlobError> {
        check_hash(hash)?;
        Ok(self.root.join(&hash[..2]).join(hash))
    }

    pub fn contains(&self, hash: &str) -> bool {
        self.path_of(hash).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Copies `src` into the store as blob `hash`, verifying the content
    /// on the way. Returns the number of bytes stored, or 0 if the blob
    /// was already there.
    pub fn put_file(&self, src: &Path, hash: &str) -> Result<u64, BlobError> {
        let dest = self.path_of(hash)?;
        if dest.is_file() {
            return Ok(0);
        }
        let dir = dest.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let input = std::fs::File::open(src).map_err(io_err(src))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
        let (actual, n) = copy_hashing(input, tmp.as_file_mut()).map_err(io_err(src))?;
        if actual.to_hex().as_str() != hash {
            return Err(BlobError::Changed { path: src.to_owned(), expected: hash.to_owned(), actual: actual.to_hex().to_string() });
        }
        tmp.persist(&dest).map_err(|e| BlobError::Io { path: dest.clone(), source: e.error })?;
        Ok(n)
    }

    /// Copies blob `hash` to a new temporary file in `dir`, verifying it,
    /// and returns that file for the caller to rename into place.
    pub fn fetch_into(&self, hash: &str, dir: &Path) -> Result<tempfile::NamedTempFile, BlobError> {
        let src = self.path_of(hash)?;
        let input = match std::fs::File::open(&src) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BlobError::Missing { hash: hash.to_owned(), store: self.root.clone() })
            }
            Err(e) => return Err(BlobError::Io { path: src, source: e }),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
        let (actual, _) = copy_hashing(input, tmp.as_file_mut()).map_err(io_err(&src))?;
        if actual.to_hex().as_str() != hash {
            return Err(BlobError::Corrupt { hash: hash.to_owned(), store: self.root.clone(), actual: actual.to_hex().to_string() });
        }
        Ok(tmp)
    }
}

fn copy_hashing(mut input: impl Read, out: &mut std::fs::File) -> io::Result<(blake3::Hash, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
    out.flush()?;
    Ok((hasher.finalize(), total))
}
