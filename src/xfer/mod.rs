//! The private transfer protocol of the second paper: files cut into
//! frames that travel out of order over several connections, every frame
//! authenticated, every file verified, many files in flight.
//!
//! The guide point and the nodes move journal entries and blobs with it;
//! `drift xfer send` / `drift xfer recv` make it a standalone copy tool.
//!
//! # Layout
//! - [`channel`]: the I/O channel (TCP); the only place that knows sockets.
//! - [`handshake`]: mutual challenge-response on the cluster key ([`key`]).
//! - [`frame`]: the frame format, pure encode/decode/MAC; [`conn`] runs it
//!   over a channel with sequence numbers. [`wire`]: control payloads.
//! - [`tree`]: BLAKE3 subtree arithmetic that lets one hash per frame serve
//!   both the MAC and the whole-file check.
//! - File layer and control layer: [`send`] (queue, batches, N connection
//!   processors, resend on a dead connection) and [`recv`] (sessions,
//!   frames written in place with positioned writes, resume state, commit), with [`hook`] for inspection,
//!   [`paths`] for name safety and [`dest`] for how entries land (directory
//!   handles, unnamed files linked into place).
//! - [`cli`]: the `drift xfer` command.
//!
//! # Connection set-up
//! The sender (client) opens `streams` connections; on each:
//!
//! | step | direction | bytes |
//! |---|---|---|
//! | hello | S → R | `"DRIFTXFR"` (8), version `2` (1), zero (7), client nonce `cn` (32) |
//! | challenge | R → S | `"DRIFTXFR"` (8), version (1), zero (7), server nonce `sn` (32), `proof_R` (32) |
//! | response | S → R | `proof_S` (32) |
//!
//! `proof_R = BLAKE3-keyed(K, "drift-xfer v1 server proof\0" ‖ cn ‖ sn)` and
//! `proof_S` the same with `client proof`, where `K` is the 32-byte cluster
//! key. The sender checks `proof_R` before sending anything but its nonce,
//! the receiver checks `proof_S` before accepting any frame; both compare
//! in constant time. Each side then derives its per-direction MAC keys
//! `K_c2s`, `K_s2c` = `BLAKE3-keyed(K, "drift-xfer v1 mac c2s\0" ‖ cn ‖ sn)`
//! (resp. `s2c`): fresh per connection, so a frame recorded on one
//! connection or session is worthless on any other.
//!
//! # Frame format
//! Every frame after the handshake, both directions, little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version = 1 |
//! | 1 | 1 | type ([`frame::FrameType`]) |
//! | 2 | 2 | flags, must be 0 |
//! | 4 | 4 | payload length `n` (≤ 65 MiB) |
//! | 8 | 8 | sequence number: 0, 1, 2… per connection and direction |
//! | 16 | 8 | file id (sender-chosen, per session; 0 = the session) |
//! | 24 | 8 | offset: byte offset for `Data`, acknowledged sequence for `Ack`, else 0 |
//! | 32 | n | payload |
//! | 32+n | 32 | MAC |
//!
//! `MAC = BLAKE3-keyed(K_dir, header[0..32] ‖ D)` where `D` is, for `Data`
//! frames, the BLAKE3 chaining value of the payload as the subtree starting
//! at `offset` (see [`tree`]); for `Batch` frames, the BLAKE3 of a context
//! string and the payload with each file entry's content replaced by that
//! content's own BLAKE3 ([`wire::batch_digest`]); for every other type,
//! `BLAKE3(payload)`. This is hash-then-MAC: forging a frame needs either
//! `K_dir` or a BLAKE3 collision. Data and batch digests are built from the
//! very hashes the whole-file checks use, so each side hashes every byte
//! once. (Protocol version 1 MAC'd batches over `BLAKE3(payload)`, which
//! hashed every small file twice on each side.) The reader checks, in order: version, type, flags, length
//! limit, data placement (before reading or allocating the payload), then
//! the MAC, then that the sequence number is exactly the next expected one.
//! A bad MAC ("altered or forged") or sequence ("replayed or reordered")
//! aborts the whole session on the receiver, which tells the sender in an
//! `Error` frame; a connection that ends mid-frame ("truncated") is treated
//! as a lost connection.
//!
//! # Session state machine
//! ```text
//! sender                                   receiver
//! Join{session id, stream i of n}  ──▶      group connections by session id
//!                                  ◀──      Welcome
//! per large file (any connection):
//! Offer{name, size, mode, mtime, frame size} ──▶ open/resume STATE/<key>.part
//!                                  ◀──      OfferReply{bitmap of frames held} | refusal
//! Data{file, offset} × missing frames,
//!   spread over all connections   ──▶      claim frame, read into a buffer, check MAC,
//!                                          pwrite at its offset, mark held
//!                                  ◀──      Ack{seq}  (after every frame)
//! Commit{BLAKE3} once every frame is acked ──▶ assemble BLAKE3 from frame CVs,
//!                                          compare, inspection hook, chmod/utime,
//!                                          rename to the final name
//!                                  ◀──      CommitReply{ok | refused | failed}
//! small files, directories, symlinks:
//! Batch{entries with content and BLAKE3} ──▶ check MAC, verify each, hook,
//!                                          write an unnamed file, link it
//!                                  ◀──      BatchReply{outcome per entry}
//! Done                             ──▶      apply directory modes
//!                                  ◀──      DoneReply{entries, bytes}
//! ```
//! The sender keeps every frame it sent on a connection until that
//! connection's `Ack` covers it; when a connection dies its unacknowledged
//! frames and requests go back to the front of the shared queue for the
//! others. The receiver answers repeated offers and commits idempotently,
//! and drops frames it already holds.
//!
//! # What is and is not protected
//! - A peer without the key fails the handshake before it can send a frame
//!   or see a file name or byte: the sender reveals nothing before checking
//!   `proof_R`.
//! - Every frame is authenticated; altered, forged, replayed, reordered or
//!   cross-connection frames are rejected; every file is checked against
//!   its whole-file BLAKE3 before it gets its final name.
//! - **Not protected: confidentiality on the wire.** After the handshake,
//!   names and contents travel in clear; a passive eavesdropper on the path
//!   sees them. Run it inside a VPN or on a trusted network when contents
//!   are secret.
//! - Not protected: traffic analysis, and denial of service by someone who
//!   can cut or flood the connections. A frame reaches the part file only
//!   after its MAC checked.
//! - A peer with the key is trusted with the receiving directory (names
//!   cannot escape it, see [`paths`], but it can fill it).
//!
//! # Limits
//! The frame size must be a power of two from 1 KiB to 64 MiB (frames are
//! BLAKE3 subtrees); a file may have at most 4 Mi frames. Changing the frame
//! size between an interrupted run and its resume starts the file afresh.

pub mod channel;
pub mod cli;
pub mod conn;
pub mod dest;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod hook;
pub mod key;
pub mod paths;
pub mod recv;
pub mod send;
pub mod tree;
pub mod wire;

pub use error::{FrameError, XferError};
pub use hook::{Candidate, CommitHook, CommandHook};
pub use key::ClusterKey;
pub use recv::{Receiver, RecvConfig, SessionReport};
pub use send::{send, send_named, Progress, SendConfig, SendReport};
