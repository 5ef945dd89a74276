//! The cluster key: 32 random bytes in a file, shared by every party of a
//! cluster. It never travels; peers only prove they hold it.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::error::{Result, XferError};

pub const KEY_LEN: usize = 32;

/// A loaded cluster key. `Debug` does not print the bytes.
#[derive(Clone)]
pub struct ClusterKey([u8; KEY_LEN]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        ClusterKey(bytes)
    }

    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        rand::fill(&mut bytes);
        ClusterKey(bytes)
    }

    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Reads a key file; it must hold exactly 32 bytes (raw, not hex), so a
    /// truncated or wrong file is refused rather than silently padded.
    pub fn load(path: &Path) -> Result<Self> {
        let io_err = |source| XferError::KeyIo {
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        if len != KEY_LEN as u64 {
            return Err(XferError::KeyLength {
                path: path.to_owned(),
                len,
            });
        }
        let mut bytes = [0u8; KEY_LEN];
        file.read_exact(&mut bytes).map_err(io_err)?;
        Ok(ClusterKey(bytes))
    }

    /// Writes the key to a new file readable by its owner only. Refuses to
    /// overwrite an existing file: replacing a cluster key by accident locks
    /// every peer out.
    pub fn write_new(&self, path: &Path) -> Result<()> {
        let io_err = |source| XferError::KeyIo {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io_err)?;
        file.write_all(&self.0).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_and_wrong_lengths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = ClusterKey::generate();
        key.write_new(&path).unwrap();
        assert_eq!(ClusterKey::load(&path).unwrap().bytes(), key.bytes());
        assert!(key.write_new(&path).is_err(), "must not overwrite");
        std::fs::write(&path, [1u8; 31]).unwrap();
        assert!(matches!(
            ClusterKey::load(&path),
            Err(XferError::KeyLength { len: 31, .. })
        ));
    }
}
