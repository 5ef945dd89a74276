//! Checking the FUSE device (and, for a non-root user, the fusermount3
//! helper) before mounting, so that a machine without FUSE gets an error
//! naming what is missing and how to get it, not a failure blamed on the
//! mountpoint.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The FUSE character device's path and number (misc major 10, minor 229).
pub const DEVICE: &str = "/dev/fuse";
const MAJOR: u32 = 10;
const MINOR: u32 = 229;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("the FUSE device {DEVICE} is missing; load the FUSE module (`modprobe fuse`) and install FUSE 3 (`apt-get install fuse3`); in a container, pass the device in (`--device /dev/fuse`)")]
    Missing,
    #[error("the FUSE device {DEVICE} is not readable and writable by this user; check its permissions (normally crw-rw-rw- root root) or run drift as root")]
    Denied,
    #[error("the FUSE device {DEVICE} is broken: {why}; recreate it (`rm {DEVICE}; mknod -m 666 {DEVICE} c 10 229`) and load the FUSE module (`modprobe fuse`)")]
    Broken { why: String },
    #[error("the FUSE device {DEVICE} cannot be used")]
    Other(#[source] io::Error),
    #[error("fusermount3 is missing (a non-root user mounts through it); install FUSE 3 (`apt-get install fuse3`) or run drift as root")]
    NoFusermount,
}

/// Checks that [`DEVICE`] is the FUSE device and can be opened for
/// reading and writing, and that a non-root user has fusermount3.
pub fn check() -> Result<(), DeviceError> {
    check_device(Path::new(DEVICE))?;
    if unsafe { libc::geteuid() } != 0 && find_fusermount().is_none() {
        return Err(DeviceError::NoFusermount);
    }
    Ok(())
}

fn check_device(path: &Path) -> Result<(), DeviceError> {
    let md = match std::fs::metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(DeviceError::Missing),
        Err(e) => return Err(DeviceError::Other(e)),
    };
    if !md.file_type().is_char_device() {
        return Err(DeviceError::Broken { why: "it is not a character device".into() });
    }
    let (major, minor) = (libc::major(md.rdev()), libc::minor(md.rdev()));
    if (major, minor) != (MAJOR, MINOR) {
        return Err(DeviceError::Broken {
            why: format!("it is device {major}:{minor}, not the FUSE device {MAJOR}:{MINOR}"),
        });
    }
    match std::fs::OpenOptions::new().read(true).write(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) => Err(match e.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => DeviceError::Denied,
            // The node exists but no driver answers behind it.
            Some(libc::ENODEV) | Some(libc::ENXIO) => {
                DeviceError::Broken { why: "no driver answers behind it (the FUSE module is not loaded)".into() }
            }
            _ => DeviceError::Other(e),
        }),
    }
}

/// Where fuser would find the mount helper: `FUSERMOUNT_PATH`, else
/// `fusermount3` (or the older `fusermount`) on `PATH`.
fn find_fusermount() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FUSERMOUNT_PATH") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| [d.join("fusermount3"), d.join("fusermount")])
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_missing_device() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(check_device(&dir.path().join("fuse")), Err(DeviceError::Missing)));
    }

    #[test]
    fn names_a_device_that_is_not_fuse() {
        assert!(matches!(check_device(Path::new("/dev/null")), Err(DeviceError::Broken { .. })));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("fuse");
        std::fs::write(&f, b"").unwrap();
        let err = check_device(&f).unwrap_err();
        assert!(err.to_string().contains("not a character device"), "{err}");
    }
}
