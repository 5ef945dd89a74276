//! The checks a transfer passes before libunftp answers 150, and the
//! commands drift adds: `HASH`, `MFMT`, `SITE CHMOD`.

use std::io;
use std::path::Path;

use std::time::{Instant, SystemTime};

use unftp_core::storage::{Error, ErrorKind, FileHash, HashAlgorithm, Result};

use super::hashing;
use super::record::{refusal, refused_info, rest_beyond_end, shown, Op};
use super::{is_home, resolve, DriftStorage};
use crate::node::auth::NodeUser;
use crate::node::users::Perm;
use crate::node::xferlog::{Entry, Outcome};

/// An attribute `MFMT` or `SITE CHMOD` sets.
#[derive(Debug, Clone, Copy)]
pub(super) enum Attr {
    Modified(SystemTime),
    Mode(u32),
}

/// What a name is now, as seen through the home.
enum Kind {
    Missing,
    Dir,
    File(u64),
}

impl DriftStorage {
    async fn kind_of(&self, rel: &Path) -> Result<Kind> {
        let home = self.session()?.home.clone();
        let rel = rel.to_path_buf();
        let found = tokio::task::spawn_blocking(move || match home.metadata(&rel) {
            Ok(m) if m.is_dir() => Ok(Kind::Dir),
            Ok(m) => Ok(Kind::File(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Kind::Missing),
            Err(e) => Err(e),
        })
        .await
        .map_err(|e| Error::new(ErrorKind::LocalError, e.to_string()))?;
        Ok(found?)
    }

    pub(super) async fn is_dir(&self, rel: &Path) -> bool {
        matches!(self.kind_of(rel).await, Ok(Kind::Dir))
    }

    /// RETR: the file must exist and not be a directory.
    pub(super) async fn check_download(&self, user: &NodeUser, path: &Path) -> Result<()> {
        self.check(user, Perm::Read, path)?;
        let rel = resolve(path)?;
        match self.kind_of(&rel).await? {
            Kind::File(_) => Ok(()),
            Kind::Dir => Err(refused_info(user, format!("{}: Is a directory", shown(path)))),
            Kind::Missing => Err(refused_info(user, format!("{}: No such file or directory", shown(path)))),
        }
    }

    /// STOR (truncating to `start`) and APPE (`start` 0): not onto a
    /// directory, and a REST offset within the file.
    pub(super) async fn check_upload(&self, user: &NodeUser, path: &Path, start: u64) -> Result<()> {
        self.gate_change("STOR")?;
        self.check(user, Perm::Write, path)?;
        let rel = resolve(path)?;
        if is_home(&rel) {
            return Err(refused_info(user, format!("{}: Is a directory", shown(path))));
        }
        match self.kind_of(&rel).await? {
            Kind::Dir => Err(refused_info(user, format!("{}: Is a directory", shown(path)))),
            Kind::File(len) if start > len => {
                tracing::info!(user = %user.name, path = %shown(path), offset = start, len, "refused: restart offset beyond the end of the file");
                Err(rest_beyond_end())
            }
            Kind::Missing if start > 0 => {
                tracing::info!(user = %user.name, path = %shown(path), offset = start, "refused: restart offset on a missing file");
                Err(rest_beyond_end())
            }
            _ => Ok(()),
        }
    }

    /// `HASH`: BLAKE3 from the journal when it provably describes the
    /// file, else read.
    pub(super) async fn hash_impl(&self, user: &NodeUser, path: &Path, algo: HashAlgorithm) -> Result<FileHash> {
        self.check(user, Perm::Read, path)?;
        let rel = resolve(path)?;
        let session = self.session()?;
        let home = session.home.clone();
        let journal_path = self.journal_path(session, &rel);
        let opened = tokio::task::spawn_blocking(move || -> io::Result<Option<(std::fs::File, drift_fs::Observed)>> {
            let f = home.open(&rel)?.into_std();
            if f.metadata()?.is_dir() {
                return Ok(None);
            }
            let seen = hashing::observe(&f)?;
            Ok(Some((f, seen)))
        })
        .await
        .map_err(|e| Error::new(ErrorKind::LocalError, e.to_string()))?;
        let Some((file, seen)) = opened? else {
            return Err(refused_info(user, format!("{}: Is a directory", shown(path))));
        };
        if let (HashAlgorithm::Blake3, Some(commit)) = (algo, self.ctx.commit.clone()) {
            let jp = journal_path.clone();
            let known = tokio::task::spawn_blocking(move || commit.known_content(&jp))
                .await
                .map_err(|e| Error::new(ErrorKind::LocalError, e.to_string()))?;
            match known {
                Ok(Some(k)) if k.describes(&seen, hashing::slack(&seen)) => {
                    tracing::debug!(path = %journal_path, seq = k.seq, "HASH BLAKE3 answered from the journal");
                    if let Some(hex) = k.blake3 {
                        return Ok(FileHash { hex, len: k.size });
                    }
                }
                Ok(_) => tracing::debug!(path = %journal_path, "HASH BLAKE3: no journal entry describes the file now; reading it"),
                Err(e) => tracing::warn!(path = %journal_path, error = %e, "HASH BLAKE3: cannot read the journal; reading the file"),
            }
        }
        match hashing::read_hash(file, algo).await {
            Ok(h) => Ok(h),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(Error::new(ErrorKind::TransientFileNotAvailable, e.to_string())),
            Err(e) => Err(Error::from(e)),
        }
    }

    /// `MFMT` and `SITE CHMOD`: both need the `write` permission (they
    /// change what a later download gets, as an upload does). Done
    /// through a handle on the mount, so drift-fs journals an `attr`.
    pub(super) async fn set_attr(&self, user: &NodeUser, path: &Path, attr: Attr) -> Result<()> {
        self.check(user, Perm::Write, path)?;
        let rel = resolve(path)?;
        if let Attr::Mode(mode) = attr {
            // Only permission bits: setuid/setgid files made by FTP users
            // would run as the node's owner for anyone on the machine.
            if mode & !0o777 != 0 {
                tracing::info!(user = %user.name, path = %shown(path), mode = format!("{mode:o}"), "refused: SITE CHMOD beyond permission bits");
                return Err(refusal(ErrorKind::PermissionDenied, None, "Only permission bits (0 to 777) can be set"));
            }
        }
        if is_home(&rel) {
            // A mode of 0 on the home would lock its user out of it, with
            // no way back through FTP.
            tracing::info!(user = %user.name, path = %shown(path), "refused: changing the home directory itself");
            return Err(refusal(ErrorKind::PermissionDenied, None, "The home directory itself cannot be changed"));
        }
        let home = self.session()?.home.clone();
        let done = tokio::task::spawn_blocking(move || -> io::Result<()> {
            if let Attr::Mode(m) = attr {
                // Clients that mirror a tree (lftp) send SITE CHMOD for
                // every file, mostly with the mode it already has: a stat
                // answers that without opening the file, and nothing is
                // journaled for a change that changes nothing.
                use cap_std::fs::PermissionsExt;
                if home.metadata(&rel)?.permissions().mode() & 0o7777 == m {
                    return Ok(());
                }
            }
            match attr {
                // Through the path, not an open file: a file whose mode
                // lets nobody read it (after `SITE CHMOD 000`) can still
                // be given its mode back.
                Attr::Mode(m) => {
                    use cap_std::fs::PermissionsExt;
                    home.set_permissions(&rel, cap_std::fs::Permissions::from_mode(m))
                }
                Attr::Modified(t) => home.open(&rel)?.into_std().set_modified(t),
            }
        })
        .await
        .map_err(|e| Error::new(ErrorKind::LocalError, e.to_string()))?;
        match done {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(refused_info(user, format!("{}: No such file or directory", shown(path)))),
            Err(e) => Err(Error::from(e)),
        }
    }

    /// An upload's line: bytes and the seq of its journal entry.
    pub(super) fn record_upload(&self, user: &NodeUser, path: &Path, started: Instant, r: Result<(u64, Option<u64>)>) -> Result<u64> {
        let (bytes, seq) = match &r {
            Ok((b, s)) => (Some(*b), *s),
            Err(_) => (None, None),
        };
        let append = self.appending.swap(false, std::sync::atomic::Ordering::Relaxed);
        let command = if append { "APPE" } else { "STOR" };
        self.record(Some(user), Op { command, path, to: None, started }, &r, bytes, seq);
        r.map(|(b, _)| b)
    }

    /// A refusal decided outside the backend (e.g. a name that is not
    /// UTF-8).
    pub(super) fn record_refusal(&self, user: Option<&NodeUser>, command: &str, path: Option<&str>, reason: &str) {
        let mut e = Entry::new(self.peer.ip(), user.map(|u| u.name.as_str()), command, Outcome::Refused(reason));
        e.path = path;
        self.ctx.xferlog.record(&e);
    }
}
