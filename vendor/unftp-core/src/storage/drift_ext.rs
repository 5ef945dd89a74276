//! drift patch: types for the commands drift adds to libunftp (`HASH`,
//! `MFMT`, `SITE CHMOD`) and for refusals that carry the exact text a
//! client should see. Not in upstream unftp-core 0.1.0.

use super::error::{Error, ErrorKind};
use std::fmt;

/// A hash algorithm of the `HASH` command (draft-bryan-ftpext-hash), with
/// the names the draft and FileZilla use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashAlgorithm {
    /// BLAKE3 (256-bit), the algorithm drift's journal records.
    #[default]
    Blake3,
    /// SHA-256.
    Sha256,
    /// SHA-1.
    Sha1,
    /// MD5.
    Md5,
}

impl HashAlgorithm {
    /// Every algorithm, in the order FEAT lists them.
    pub const ALL: [HashAlgorithm; 4] = [HashAlgorithm::Blake3, HashAlgorithm::Sha256, HashAlgorithm::Sha1, HashAlgorithm::Md5];

    /// The name on the wire (`BLAKE3`, `SHA-256`, `SHA-1`, `MD5`).
    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Blake3 => "BLAKE3",
            HashAlgorithm::Sha256 => "SHA-256",
            HashAlgorithm::Sha1 => "SHA-1",
            HashAlgorithm::Md5 => "MD5",
        }
    }

    /// Parses a name case-insensitively.
    pub fn parse(name: &str) -> Option<HashAlgorithm> {
        HashAlgorithm::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(name.trim()))
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A file's hash as `HASH` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHash {
    /// Lower-case hex.
    pub hex: String,
    /// The number of bytes hashed (the file's length).
    pub len: u64,
}

/// What a transfer is about to do, for
/// [`StorageBackend::check_transfer`](super::StorageBackend::check_transfer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferKind {
    /// RETR from this offset.
    Download {
        /// The REST offset (0 without REST).
        start: u64,
    },
    /// STOR, truncating to this offset (REST) or to 0.
    Upload {
        /// The REST offset (0 without REST).
        start: u64,
    },
    /// APPE.
    Append,
}

/// The reply a client gets for a refusal, when the backend knows better
/// than the generic text of its [`ErrorKind`]: carried as the source of an
/// [`Error`] made with [`Error::with_reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientReply {
    /// The FTP reply code, if not the one the error kind implies.
    pub code: Option<u16>,
    /// The text after the code; safe to show to the client.
    pub text: String,
}

impl fmt::Display for ClientReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for ClientReply {}

impl Error {
    /// An error whose reply text (and optionally code) is `text`, meant to
    /// be shown to the client as is (no paths outside the user's view, no
    /// internal details).
    pub fn with_reply(kind: ErrorKind, code: Option<u16>, text: impl Into<String>) -> Error {
        Error::new(kind, ClientReply { code, text: text.into() })
    }

    /// The client-facing reply of an error made with [`Error::with_reply`].
    pub fn client_reply(&self) -> Option<&ClientReply> {
        std::error::Error::source(self)?.downcast_ref::<ClientReply>()
    }
}
