//! drift keeps an FTP service alive while it moves between machines.
//!
//! # Layout
//! - [`cli`]: the command line (clap), one module per command family; the
//!   binary in `main.rs` only calls [`cli::run`].
//! - [`node`]: the service node: an FTP server on a journaled mount, with
//!   its initial state (users, service configuration).
//! - [`guide`]: the guide point (history, leases, failover, migration,
//!   status, announcements).
//! - [`cluster`]: the cluster protocol (control links, messages, dial-back
//!   transfers) between node agents, proxies, tools and the guide.
//! - [`xfer`]: the private transfer protocol (frames, files, queue) used to
//!   move state between nodes and the guide point.
//! - The journaling FUSE filesystem, the journal, tree digests, blob store
//!   and replay live in the `drift-fs` crate (`fs/`).

pub mod cli;
pub mod cluster;
pub mod guide;
pub mod node;
pub mod xfer;
