//! drift-fs: the journaling filesystem under every drift node.
//!
//! A passthrough FUSE filesystem over a backing directory that appends
//! one journal entry for every *completed-state* change (a file written
//! and closed, `mkdir`, `rmdir`, `unlink`, `rename`, attribute changes),
//! durably and in order, so a node's state can be shipped as small deltas
//! and replayed elsewhere.
//!
//! # Layout
//! - [`journal`]: the SQLite journal (entries, `seq`, durability).
//! - `fs` (private): the FUSE handlers, inode and handle tables.
//! - [`mount`]: validating a mount request, mounting, unmounting.
//! - [`hash`]: BLAKE3 of files, shared by everything below.
//! - [`hints`]: content hashes an in-process writer offers at close.
//! - [`lookup`]: what the journal knows of a file's current content.
//! - [`blobs`]: the content-addressed blob store (`journal pack`).
//! - [`replay`]: applying a journal onto another directory.
//! - [`verify`]: comparing a backing tree with what its journal says.
//! - [`digest`]: one BLAKE3 over a whole tree, for comparing trees.
//! - [`fusedev`]: checking the FUSE device before mounting.
//! - [`readahead`]: the mount's readahead window.

mod at;
mod fs;
pub mod blobs;
pub mod digest;
pub mod fusedev;
pub mod hash;
pub mod hints;
pub mod journal;
pub mod lookup;
pub mod model;
pub mod mount;
pub mod readahead;
pub mod replay;
pub mod verify;

pub use journal::{Change, Entry, Journal, JournalError, Op, Stats, SyncMode};
pub use hints::ContentHints;
pub use lookup::{ContentIndex, Known, Observed};
pub use mount::{FsError, Mount, MountConfig};
