//! The cluster protocol: how node agents, proxies and operator tools talk
//! to the guide point.
//!
//! # One port, three kinds of connection
//! The guide listens on one TCP port (`listen` in guide.toml). The first
//! eight bytes a peer sends say what follows:
//!
//! | greeting | what | who opens it |
//! |---|---|---|
//! | `DRIFTCTL` | a control link ([`link`]): the handshake of [`crate::xfer::handshake`] in the [`CONTROL`](crate::xfer::handshake::CONTROL) domain, then [`msg`] messages in `Message` frames | nodes, subscribers, `drift status`, `drift migrate` |
//! | `DRIFTXFR` | a `drift xfer` session: the primary ships the contents its journal names into the guide's blob store | the primary's agent |
//! | `DRIFTREV` | a *reverse* transfer connection ([`reverse`]): a node dials, the guide then sends contents over it as the xfer client | a backup's agent, when the guide asks |
//!
//! Every control message travels in a frame MAC'd with per-connection,
//! per-direction keys and numbered per direction: a process without the
//! cluster key fails the handshake before it sees a byte, and an altered,
//! replayed or reordered message ends the link. Message-level checks come
//! on top: a stale epoch, a node id already connected, an entry out of
//! sequence are refused with a [`msg::Down::Refused`] and a log line.
//!
//! # Sequences
//! See [`msg`] for each message. In short, a node agent sends `Hello`,
//! gets `Welcome` (its role, the epoch, the lease), then sends `Heartbeat`
//! every `heartbeat_ms`. The primary's heartbeats are answered by `Lease`
//! renewals; it ships `Entries` (after their contents went by xfer) and
//! gets `Stored` once the guide holds them durably. A backup gets
//! `Forward` (contents first, by a reverse transfer) and answers `Applied`.
//! Role changes come as `Promote`, `Demote` and `Drain`.

pub mod link;
pub mod manifest;
pub mod msg;
pub mod proxy_cred;
pub mod reverse;
pub mod subscriber;

/// Greeting of a reverse transfer connection (followed by a 32-byte token).
pub const REVERSE_MAGIC: &[u8; 8] = b"DRIFTREV";
/// The software version every role reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A content blob's name in a transfer and in a blob store: `ab/<hash>`,
/// the layout of [`drift_fs::blobs::BlobStore`], so a receiver whose
/// directory is the store's root puts each blob in its place.
pub fn blob_name(hash: &str) -> std::path::PathBuf {
    std::path::Path::new(&hash[..2.min(hash.len())]).join(hash)
}

/// The commit hook of every receiver of blobs: a file is accepted only
/// under the name its content hashes to, so a peer can never store one
/// content under another's name.
pub struct NameIsContent;

impl crate::xfer::CommitHook for NameIsContent {
    fn inspect(&self, file: &crate::xfer::Candidate<'_>) -> Result<(), String> {
        let hash = file.blake3.to_hex();
        if file.name == blob_name(hash.as_str()) {
            Ok(())
        } else {
            Err(format!("{} is not named by its content ({hash})", file.name.display()))
        }
    }
}
