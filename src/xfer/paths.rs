//! Names on the wire and where they may land. A sender names entries by
//! '/'-separated relative paths; the receiver refuses anything that could
//! leave its directory (absolute, `..`, empty or NUL components) and never
//! writes through a symlink or a non-directory on the way.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::error::{Result, XferError};

const MAX_PATH: usize = 4096;

/// Checks a wire path and turns it into a relative `PathBuf`.
pub fn relative(bytes: &[u8]) -> Result<PathBuf> {
    let bad = |reason| XferError::BadPath {
        path: String::from_utf8_lossy(bytes).into_owned(),
        reason,
    };
    if bytes.is_empty() || bytes.len() > MAX_PATH {
        return Err(bad("empty or longer than 4096 bytes"));
    }
    for comp in bytes.split(|&b| b == b'/') {
        if comp.is_empty() || comp == b"." || comp == b".." {
            return Err(bad("absolute, or has an empty, '.' or '..' component"));
        }
        if comp.contains(&0) {
            return Err(bad("contains a NUL byte"));
        }
    }
    Ok(PathBuf::from(OsStr::from_bytes(bytes)))
}

/// The wire form of a relative path.
pub fn to_wire(rel: &Path) -> Vec<u8> {
    rel.as_os_str().as_bytes().to_vec()
}

/// Creates the missing parent directories of `rel` under `root` and
/// returns the full destination path. Refuses parents that are symlinks or
/// not directories, so a sender cannot plant `a -> /etc` and then write
/// `a/passwd`.
pub fn prepare_parents(root: &Path, rel: &Path) -> Result<PathBuf> {
    let comps: Vec<Component<'_>> = rel.components().collect();
    let Some((last, parents)) = comps.split_last() else {
        return Err(XferError::BadPath {
            path: rel.display().to_string(),
            reason: "empty",
        });
    };
    let mut cur = root.to_path_buf();
    for c in parents {
        cur.push(c);
        ensure_dir(&cur, rel)?;
    }
    cur.push(last);
    Ok(cur)
}

/// Makes sure `path` is a real directory, creating it if missing.
pub fn ensure_dir(path: &Path, rel: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(XferError::BadPath {
            path: rel.display().to_string(),
            reason: "a path component on the receiver is a symlink or a file, not a directory",
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match std::fs::create_dir(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => ensure_dir(path, rel),
            Err(e) => Err(XferError::io(format!("creating {}", path.display()), e)),
        },
        Err(e) => Err(XferError::io(format!("checking {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_names_are_refused() {
        for bad in ["", "/etc/passwd", "a/../b", "..", "a//b", "a/", "./a", "a\0b"] {
            assert!(relative(bad.as_bytes()).is_err(), "{bad:?} accepted");
        }
        assert_eq!(relative(b"a/b c/d").unwrap(), PathBuf::from("a/b c/d"));
    }

    #[test]
    fn parents_through_a_symlink_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("a")).unwrap();
        assert!(prepare_parents(dir.path(), Path::new("a/x")).is_err());
        let p = prepare_parents(dir.path(), Path::new("b/c/x")).unwrap();
        assert!(dir.path().join("b/c").is_dir());
        assert_eq!(p, dir.path().join("b/c/x"));
    }
}
