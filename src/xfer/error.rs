//! Errors of the transfer protocol. One enum for everything a caller can
//! act on ([`XferError`]), one for what the frame decoder rejects
//! ([`FrameError`]), so tests and the CLI can tell "wrong key" from
//! "altered frame" from "network gone".

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Why a frame (or the bytes that should have been one) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unsupported frame version {0} (this build speaks version 1)")]
    Version(u8),
    #[error("unknown frame type {0}")]
    Type(u8),
    #[error("reserved frame flags set ({0:#06x})")]
    Flags(u16),
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLong { len: u32, max: u32 },
    #[error("data frame at offset {offset} with {len} bytes does not fit the BLAKE3 tree (offset must be a multiple of 1024, length non-zero and within the subtree)")]
    Placement { offset: u64, len: u32 },
    #[error("bad MAC on frame with sequence {0}: the frame was altered or forged")]
    Mac(u64),
    #[error("replayed or reordered frame: sequence {got}, expected {expected}")]
    Sequence { got: u64, expected: u64 },
    #[error("truncated frame: the connection closed after {got} of {want} bytes")]
    Truncated { got: usize, want: usize },
    #[error("malformed {0} payload")]
    Payload(&'static str),
}

/// Everything that can go wrong in `drift::xfer`.
#[derive(Debug, thiserror::Error)]
pub enum XferError {
    #[error("key file {path}: {source}")]
    KeyIo { path: PathBuf, source: io::Error },
    #[error("key file {path} must hold exactly 32 bytes, it holds {len}; create one with `drift xfer keygen`")]
    KeyLength { path: PathBuf, len: u64 },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("{peer} is not a drift xfer peer: {detail}")]
    NotDrift { peer: String, detail: String },
    #[error("authentication with {peer} failed: {detail}")]
    Auth { peer: String, detail: String },
    #[error("{peer}: no handshake within {timeout:?} (not a drift xfer peer?)")]
    HandshakeTimeout { peer: String, timeout: Duration },
    #[error("frame rejected: {0}")]
    Frame(#[from] FrameError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the receiver aborted the transfer: {0}")]
    Remote(String),
    #[error("all connections to the receiver were lost (last error: {0})")]
    AllConnectionsLost(String),
    #[error("bad path {path:?}: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("{failed} of {total} files were not delivered")]
    FilesFailed { failed: u64, total: u64 },
}

impl XferError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        XferError::Io {
            context: context.into(),
            source,
        }
    }

    /// True when the error says the peer or the bytes cannot be trusted,
    /// as opposed to a network that merely went away.
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            XferError::Frame(FrameError::Mac(_))
                | XferError::Frame(FrameError::Sequence { .. })
                | XferError::Auth { .. }
        )
    }
}

pub type Result<T, E = XferError> = std::result::Result<T, E>;
