//! drift's proxy: the one FTP address clients know. It checks logins
//! itself, opens a backend session on the cluster's current primary for
//! each client session, relays commands, replies and (passive) data
//! connections, and holds new commands while the guide says `switching`.
//! See `docs/proxy.md`.
//!
//! This crate knows FTP and nothing of the cluster protocol: the `drift`
//! binary feeds it the guide's announcements as a [`View`] and checks
//! logins and mints backend credentials through an [`Authority`], both
//! built on the cluster key (`src/cli/proxy.rs` in the drift crate).
//!
//! # Layout
//! - [`config`] — `proxy.toml`.
//! - [`reply`] — FTP replies and bounded command lines.
//! - [`backend`] — one FTP client session on a node.
//! - [`passive`] — the proxy's own passive ports.
//! - [`session`] — one client session: the login and the command loop.
//! - [`download`] — a RETR that resumes on a new primary (same BLAKE3).
//! - [`relay`] — the backend on the current primary, relayed commands and
//!   data connections, holding while no primary serves.
//! - [`upload`] — a STOR spooled on disk and finished on a new primary.
//! - [`state`] — the active state in SQLite (`drift proxy status`).
//! - [`server`] — the listener and the session limit.

use std::net::IpAddr;

pub mod backend;
pub mod config;
pub mod download;
pub mod passive;
pub mod relay;
pub mod reply;
pub mod server;
pub mod session;
pub mod state;
pub mod upload;

/// Where the service is, as the guide last announced it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// The proxy holds a live subscription to the guide.
    pub linked: bool,
    pub epoch: u64,
    pub primary: Option<String>,
    /// The primary's FTP `host:port`.
    pub ftp: Option<String>,
    /// `true` for `serving`, `false` for `switching`.
    pub serving: bool,
}

impl View {
    /// The primary's FTP address when new commands may go to it.
    pub fn target(&self) -> Option<(u64, &str)> {
        match (&self.ftp, self.linked && self.serving) {
            (Some(ftp), true) => Some((self.epoch, ftp.as_str())),
            _ => None,
        }
    }
}

/// Why a login was refused (all but [`Refusal::TooManySessions`] get the
/// same `530`, so a client cannot tell them apart; the log names the
/// reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No users file received from the guide yet.
    NoUsers,
    BadName,
    UnknownUser,
    BadPassword,
    AddressNotAllowed,
    /// Too many failed logins: the service's lockout.
    LockedOut,
    /// The user has the service's `max_per_user` sessions open.
    TooManySessions,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoUsers => "no users known yet",
            Refusal::BadName => "invalid user name",
            Refusal::UnknownUser => "unknown user",
            Refusal::BadPassword => "bad password",
            Refusal::AddressNotAllowed => "address not allowed",
            Refusal::LockedOut => "locked out",
            Refusal::TooManySessions => "too many sessions for this user",
        }
    }
}

/// Held while a connection or a logged-in session counts against the
/// service's limits; dropping it gives the place back.
pub type Slot = Box<dyn Send + Sync>;

/// What the proxy needs from the cluster to let a client in.
pub trait Authority: Send + Sync + 'static {
    /// Admits a new connection from `client`: the service's address filter
    /// and connection limits (total, per address). `Err` is the reason;
    /// the client gets `421`.
    fn admit(&self, client: IpAddr) -> Result<Slot, String>;
    /// Checks a login against the cluster's users, the lockout and the
    /// per-user session limit (argon2: slow, called on a blocking thread).
    fn check_login(&self, user: &str, password: &str, client: IpAddr) -> Result<Slot, Refusal>;
    /// The password the proxy presents to a node for `user` acting for
    /// `client`: a short-lived credential, never the user's password.
    fn backend_password(&self, user: &str, client: IpAddr) -> String;
}

/// Everything that can stop the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("cannot open the state database {path}: {source}")]
    State { path: std::path::PathBuf, source: rusqlite::Error },
    #[error("cannot use the spool directory {dir}: {source}")]
    Spool { dir: std::path::PathBuf, source: std::io::Error },
}
