//! The node configuration file and the service file (the other half of
//! the *initial state*). Formats are documented in `docs/node.md`;
//! `examples/node/` holds working examples.
//!
//! Raw serde structs mirror the TOML; [`NodeConfig::load`] and
//! [`ServiceConfig::load`] turn them into validated types so the server
//! never sees an impossible value (an empty port range, an allow-list
//! without entries, a certificate without a key).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::users::{canonical_ip, parse_net};

/// Errors loading the node configuration or the service file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} is not valid: {message}")]
    Syntax {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{what} {path}: {problem}")]
    Invalid {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
}

/// How the node reaches its files.
#[derive(Debug, Clone)]
pub enum StorageMode {
    /// Mount drift-fs over `backing` at `mountpoint`, journal every change
    /// into `journal`, and serve the mountpoint. The normal mode.
    Fuse {
        mountpoint: PathBuf,
        journal: PathBuf,
        /// `full` fsyncs the journal on every entry; `normal` survives a
        /// crash of the process but not of the machine.
        sync_full: bool,
    },
    /// Serve `backing` directly: no FUSE, **no journal**. For benchmarks
    /// and debugging only; nothing a client does here can be shipped.
    Plain,
}

/// The validated node configuration (`drift node --config FILE`).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The file this was read from (for messages).
    pub path: PathBuf,
    pub backing: PathBuf,
    pub mode: StorageMode,
    /// fsync each uploaded file before answering 226. Off by default: with
    /// `sync = "full"` drift-fs already fsyncs every file before journaling
    /// it, and a crash of the process alone loses nothing either way.
    pub fsync_uploads: bool,
    /// How long an upload waits for its journal entry before the client
    /// gets an error instead of 226.
    pub commit_timeout: Duration,
    /// Size of one read/write on the file side of a TLS transfer (plain
    /// transfers are zero-copy and need no buffer).
    pub io_chunk: usize,
    pub users_file: PathBuf,
    pub service_file: PathBuf,
    /// The transfer and access log (`[log]`).
    pub transfer_log: TransferLogConfig,
    /// The admin socket `drift user unlock` talks to (`[admin] socket`);
    /// `None` when set to "off".
    pub admin_socket: Option<PathBuf>,
    /// `[cluster]`: the node agent's settings; `None` runs standalone.
    pub cluster: Option<crate::node::agent::config::ClusterConfig>,
}

/// Where and how the transfer log is written (`[log]` in node.toml).
#[derive(Debug, Clone, PartialEq)]
pub struct TransferLogConfig {
    pub destination: crate::node::xferlog::Destination,
    pub format: crate::node::xferlog::Format,
}

impl NodeConfig {
    /// The directory FTP is served from: the mountpoint, or the backing
    /// directory in plain mode.
    pub fn served_root(&self) -> &Path {
        match &self.mode {
            StorageMode::Fuse { mountpoint, .. } => mountpoint,
            StorageMode::Plain => &self.backing,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    storage: RawStorage,
    state: RawState,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    admin: RawAdmin,
    /// `[cluster]`: see `agent::config`.
    cluster: Option<crate::node::agent::config::RawCluster>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    /// A path, or "off"; default: `<config file stem>.admin.sock` beside
    /// the config file.
    socket: Option<String>,
}

/// Longest path a Unix socket address holds (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    /// "stderr" (default), "off", or a file path.
    transfers: Option<String>,
    /// "text" (default) or "json".
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    backing: PathBuf,
    mountpoint: Option<PathBuf>,
    journal: Option<PathBuf>,
    #[serde(default = "default_true")]
    fuse: bool,
    #[serde(default = "default_sync")]
    sync: String,
    #[serde(default)]
    fsync_uploads: bool,
    #[serde(default = "default_commit_timeout")]
    commit_timeout_secs: u64,
    #[serde(default = "default_io_chunk_kib")]
    io_chunk_kib: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    users: PathBuf,
    service: PathBuf,
}

fn default_true() -> bool {
    true
}
fn default_sync() -> String {
    "normal".into()
}
fn default_commit_timeout() -> u64 {
    30
}
fn default_io_chunk_kib() -> usize {
    1024
}

/// Relative paths in a config file are relative to the file's directory.
fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

fn read(what: &'static str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn parse_toml<T: serde::de::DeserializeOwned>(what: &'static str, text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Syntax { what, path: path.to_owned(), message: e.to_string() })
}

/// Makes the "invalid value" error for one file.
fn invalid_in<'a>(what: &'static str, path: &'a Path) -> impl Fn(String) -> ConfigError + Copy + 'a {
    move |problem| ConfigError::Invalid { what, path: path.to_owned(), problem }
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        const WHAT: &str = "node config";
        let text = read(WHAT, path)?;
        let raw: RawNode = parse_toml(WHAT, &text, path)?;
        let invalid = invalid_in(WHAT, path);
        let base = path.parent().unwrap_or(Path::new("."));
        let s = raw.storage;
        let backing = resolve(base, &s.backing);
        let sync_full = match s.sync.as_str() {
            "normal" => false,
            "full" => true,
            other => return Err(invalid(format!("storage.sync = {other:?}: expected \"normal\" or \"full\""))),
        };
        let mode = if s.fuse {
            let mountpoint = s
                .mountpoint
                .ok_or_else(|| invalid("storage.mountpoint is required when storage.fuse = true".into()))?;
            let journal = s
                .journal
                .ok_or_else(|| invalid("storage.journal is required when storage.fuse = true".into()))?;
            StorageMode::Fuse {
                mountpoint: resolve(base, &mountpoint),
                journal: resolve(base, &journal),
                sync_full,
            }
        } else {
            if s.mountpoint.is_some() || s.journal.is_some() {
                return Err(invalid(
                    "storage.fuse = false serves the backing directory without a mount or journal; \
                     remove storage.mountpoint and storage.journal (or set fuse = true)"
                        .into(),
                ));
            }
            StorageMode::Plain
        };
        if s.commit_timeout_secs == 0 || s.commit_timeout_secs > 3600 {
            return Err(invalid("storage.commit_timeout_secs must be between 1 and 3600".into()));
        }
        if !(4..=65536).contains(&s.io_chunk_kib) {
            return Err(invalid("storage.io_chunk_kib must be between 4 and 65536".into()));
        }
        let transfer_log = {
            use crate::node::xferlog::{Destination, Format};
            let destination = match raw.log.transfers.as_deref() {
                None | Some("stderr") => Destination::Stderr,
                Some("off") => Destination::Off,
                Some("") => return Err(invalid("log.transfers must be \"stderr\", \"off\" or a file path".into())),
                Some(p) => Destination::File(resolve(base, Path::new(p))),
            };
            let format = match raw.log.format.as_deref() {
                None | Some("text") => Format::Text,
                Some("json") => Format::Json,
                Some(other) => return Err(invalid(format!("log.format = {other:?}: expected \"text\" or \"json\""))),
            };
            TransferLogConfig { destination, format }
        };
        let admin_socket = match raw.admin.socket.as_deref() {
            Some("off") => None,
            Some("") => return Err(invalid("admin.socket must be a path or \"off\"".into())),
            Some(p) => Some(resolve(base, Path::new(p))),
            None => {
                let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "node".into());
                let default = base.join(format!("{stem}.admin.sock"));
                // A config file deep in the tree must not stop the node: the
                // default socket is left out, and the log says how to get it.
                if default.as_os_str().len() > MAX_SOCKET_PATH {
                    tracing::warn!(
                        path = %default.display(),
                        "the default admin socket path is longer than a Unix socket allows; running without one (`drift user unlock` cannot reach this node; SIGHUP still lifts lockouts): set [admin] socket to a shorter path"
                    );
                    None
                } else {
                    Some(default)
                }
            }
        };
        if let Some(sock) = &admin_socket {
            let len = sock.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(invalid(format!(
                    "admin socket path {} is {len} bytes, more than a Unix socket allows ({MAX_SOCKET_PATH}); set [admin] socket to a shorter path",
                    sock.display()
                )));
            }
        }
        let journal = match &mode {
            StorageMode::Fuse { journal, .. } => Some(journal.as_path()),
            StorageMode::Plain => None,
        };
        let cluster = match raw.cluster {
            Some(c) => Some(crate::node::agent::config::ClusterConfig::from_raw(c, base, journal).map_err(invalid)?),
            None => None,
        };
        Ok(NodeConfig {
            cluster,
            transfer_log,
            admin_socket,
            path: path.to_owned(),
            backing,
            mode,
            fsync_uploads: s.fsync_uploads,
            commit_timeout: Duration::from_secs(s.commit_timeout_secs),
            io_chunk: s.io_chunk_kib * 1024,
            users_file: resolve(base, &raw.state.users),
            service_file: resolve(base, &raw.state.service),
        })
    }
}

/// Which client addresses may connect at all.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Anyone.
    Open,
    /// Only addresses in `allow`, except those in `deny`.
    AllowList { allow: Vec<IpNet>, deny: Vec<IpNet> },
    /// Anyone except addresses in `deny`.
    DenyList { deny: Vec<IpNet> },
}

impl Filter {
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        match self {
            Filter::Open => true,
            Filter::AllowList { allow, deny } => allow.iter().any(|n| n.contains(&ip)) && !deny.iter().any(|n| n.contains(&ip)),
            Filter::DenyList { deny } => !deny.iter().any(|n| n.contains(&ip)),
        }
    }
}

/// What counts as "the same attacker" for the failed-login policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockBy {
    /// Lock the account, from every address.
    User,
    /// Lock the client address, for every account.
    Ip,
    /// Lock the account only from the address that failed.
    UserAndIp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoginPolicy {
    /// Failures within `window` that trigger a lockout; 0 disables lockout.
    pub max_failures: u32,
    pub window: Duration,
    pub lockout: Duration,
    pub lock_by: LockBy,
    /// Pause before answering a failed login (slows guessing).
    pub failure_delay: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Ftps {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Refuse logins and transfers that are not protected by TLS.
    pub required: bool,
}

/// The validated service file.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub listen: SocketAddr,
    pub greeting: String,
    pub passive_ports: RangeInclusive<u16>,
    /// Address announced in PASV replies; `None` = the address the client
    /// connected to.
    pub passive_host: Option<Ipv4Addr>,
    pub idle_timeout: Duration,
    pub max_sessions: usize,
    pub max_sessions_per_user: usize,
    /// Control connections from one client address at a time.
    pub max_sessions_per_address: usize,
    /// Idle timeout of a connection that has not logged in (at most
    /// `idle_timeout`).
    pub login_timeout: Duration,
    pub filter: Filter,
    pub login: LoginPolicy,
    pub ftps: Option<Ftps>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    listen: String,
    #[serde(default = "default_greeting")]
    greeting: String,
    #[serde(default = "default_passive")]
    passive_ports: [u16; 2],
    passive_host: Option<String>,
    #[serde(default = "default_idle")]
    idle_timeout_secs: u64,
    #[serde(default = "default_login_timeout")]
    login_timeout_secs: u64,
    #[serde(default)]
    sessions: RawSessions,
    #[serde(default)]
    filter: RawFilter,
    #[serde(default)]
    login: RawLogin,
    ftps: Option<RawFtps>,
}

fn default_greeting() -> String {
    "drift FTP service ready".into()
}
fn default_passive() -> [u16; 2] {
    [49152, 65535]
}
fn default_idle() -> u64 {
    600
}
fn default_login_timeout() -> u64 {
    30
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSessions {
    #[serde(default = "default_max_total")]
    max_total: usize,
    #[serde(default = "default_max_per_user")]
    max_per_user: usize,
    #[serde(default = "default_max_per_address")]
    max_per_address: usize,
}
impl Default for RawSessions {
    fn default() -> Self {
        RawSessions {
            max_total: default_max_total(),
            max_per_user: default_max_per_user(),
            max_per_address: default_max_per_address(),
        }
    }
}
fn default_max_total() -> usize {
    100
}
fn default_max_per_user() -> usize {
    10
}
fn default_max_per_address() -> usize {
    10
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    #[serde(default = "default_mode")]
    mode: String,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}
impl Default for RawFilter {
    fn default() -> Self {
        RawFilter {
            mode: default_mode(),
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }
}
fn default_mode() -> String {
    "open".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogin {
    #[serde(default = "default_max_failures")]
    max_failures: u32,
    #[serde(default = "default_window")]
    window_secs: u64,
    #[serde(default = "default_lockout")]
    lockout_secs: u64,
    #[serde(default = "default_lock_by")]
    lock_by: String,
    #[serde(default = "default_delay")]
    failure_delay_ms: u64,
}
impl Default for RawLogin {
    fn default() -> Self {
        RawLogin {
            max_failures: default_max_failures(),
            window_secs: default_window(),
            lockout_secs: default_lockout(),
            lock_by: default_lock_by(),
            failure_delay_ms: default_delay(),
        }
    }
}
fn default_max_failures() -> u32 {
    5
}
fn default_window() -> u64 {
    300
}
fn default_lockout() -> u64 {
    900
}
fn default_lock_by() -> String {
    "user-and-ip".into()
}
fn default_delay() -> u64 {
    500
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFtps {
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    required: bool,
}

fn nets(list: &[String], key: &str) -> Result<Vec<IpNet>, String> {
    list.iter()
        .map(|s| parse_net(s).map_err(|e| format!("{key}: {e}")))
        .collect()
}

impl ServiceConfig {
    pub fn load(path: &Path) -> Result<ServiceConfig, ConfigError> {
        let text = read("service file", path)?;
        ServiceConfig::parse(&text, path)
    }

    /// Parses and validates service-file text; relative certificate paths
    /// are resolved against `path`'s directory.
    pub fn parse(text: &str, path: &Path) -> Result<ServiceConfig, ConfigError> {
        const WHAT: &str = "service file";
        let raw: RawService = parse_toml(WHAT, text, path)?;
        let invalid = invalid_in(WHAT, path);
        let base = path.parent().unwrap_or(Path::new("."));
        let listen: SocketAddr = raw
            .listen
            .parse()
            .map_err(|_| invalid(format!("listen = {:?}: expected IP:PORT such as \"0.0.0.0:21\"", raw.listen)))?;
        if raw.greeting.is_empty() || raw.greeting.len() > 200 || raw.greeting.contains(['\r', '\n']) {
            return Err(invalid("greeting must be one line of 1 to 200 characters".into()));
        }
        let [lo, hi] = raw.passive_ports;
        if lo == 0 || lo > hi {
            return Err(invalid(format!(
                "passive_ports = [{lo}, {hi}]: expected [FIRST, LAST] with 0 < FIRST <= LAST"
            )));
        }
        let passive_host = match raw.passive_host {
            None => None,
            Some(h) => Some(
                h.parse::<Ipv4Addr>()
                    .map_err(|_| invalid(format!("passive_host = {h:?}: expected an IPv4 address")))?,
            ),
        };
        if raw.idle_timeout_secs == 0 || raw.idle_timeout_secs > 86_400 {
            return Err(invalid("idle_timeout_secs must be between 1 and 86400".into()));
        }
        if raw.login_timeout_secs == 0 || raw.login_timeout_secs > 86_400 {
            return Err(invalid("login_timeout_secs must be between 1 and 86400".into()));
        }
        let sessions = raw.sessions;
        if sessions.max_total == 0 || sessions.max_per_user == 0 || sessions.max_per_address == 0 {
            return Err(invalid(
                "sessions.max_total, sessions.max_per_user and sessions.max_per_address must be at least 1".into(),
            ));
        }
        let allow = nets(&raw.filter.allow, "filter.allow").map_err(invalid)?;
        let deny = nets(&raw.filter.deny, "filter.deny").map_err(invalid)?;
        let filter = match raw.filter.mode.as_str() {
            "open" => {
                if !allow.is_empty() || !deny.is_empty() {
                    return Err(invalid(
                        "filter.mode = \"open\" ignores lists: set mode = \"allow-list\" or \"deny-list\", or remove filter.allow/filter.deny".into(),
                    ));
                }
                Filter::Open
            }
            "allow-list" => {
                if allow.is_empty() {
                    return Err(invalid(
                        "filter.mode = \"allow-list\" needs at least one network in filter.allow (nobody could connect)".into(),
                    ));
                }
                Filter::AllowList { allow, deny }
            }
            "deny-list" => {
                if !allow.is_empty() {
                    return Err(invalid("filter.mode = \"deny-list\" does not use filter.allow: remove it".into()));
                }
                if deny.is_empty() {
                    return Err(invalid("filter.mode = \"deny-list\" needs at least one network in filter.deny".into()));
                }
                Filter::DenyList { deny }
            }
            other => {
                return Err(invalid(format!(
                    "filter.mode = {other:?}: expected \"open\", \"allow-list\" or \"deny-list\""
                )))
            }
        };
        let l = raw.login;
        let lock_by = match l.lock_by.as_str() {
            "user" => LockBy::User,
            "ip" => LockBy::Ip,
            "user-and-ip" => LockBy::UserAndIp,
            other => {
                return Err(invalid(format!(
                    "login.lock_by = {other:?}: expected \"user\", \"ip\" or \"user-and-ip\""
                )))
            }
        };
        if l.max_failures > 0 && (l.window_secs == 0 || l.lockout_secs == 0) {
            return Err(invalid("login.window_secs and login.lockout_secs must be at least 1".into()));
        }
        if l.failure_delay_ms > 10_000 {
            return Err(invalid("login.failure_delay_ms must be at most 10000".into()));
        }
        let ftps = match raw.ftps {
            None => None,
            Some(f) => {
                let cert = resolve(base, &f.cert);
                let key = resolve(base, &f.key);
                for (k, p) in [("ftps.cert", &cert), ("ftps.key", &key)] {
                    let text = std::fs::read_to_string(p).map_err(|e| invalid(format!("{k}: cannot read {}: {e}", p.display())))?;
                    if !text.contains("-----BEGIN ") {
                        return Err(invalid(format!("{k}: {} is not a PEM file", p.display())));
                    }
                }
                Some(Ftps {
                    cert,
                    key,
                    required: f.required,
                })
            }
        };
        Ok(ServiceConfig {
            listen,
            greeting: raw.greeting,
            passive_ports: lo..=hi,
            passive_host,
            idle_timeout: Duration::from_secs(raw.idle_timeout_secs),
            max_sessions: sessions.max_total,
            max_sessions_per_user: sessions.max_per_user,
            max_sessions_per_address: sessions.max_per_address,
            login_timeout: Duration::from_secs(raw.login_timeout_secs.min(raw.idle_timeout_secs)),
            filter,
            login: LoginPolicy {
                max_failures: l.max_failures,
                window: Duration::from_secs(l.window_secs),
                lockout: Duration::from_secs(l.lockout_secs),
                lock_by,
                failure_delay: Duration::from_millis(l.failure_delay_ms),
            },
            ftps,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(text: &str) -> Result<ServiceConfig, ConfigError> {
        ServiceConfig::parse(text, Path::new("/etc/drift/service.toml"))
    }

    #[test]
    fn minimal_service_has_defaults() {
        let s = svc("listen = \"127.0.0.1:2121\"").unwrap();
        assert_eq!(s.listen, "127.0.0.1:2121".parse().unwrap());
        assert_eq!(s.filter, Filter::Open);
        assert_eq!(s.login.max_failures, 5);
        assert!(s.ftps.is_none());
        assert_eq!(s.max_sessions_per_address, 10);
        assert_eq!(s.login_timeout, Duration::from_secs(30));
    }

    #[test]
    fn login_timeout_is_at_most_the_idle_timeout() {
        let s = svc("listen = \"127.0.0.1:2121\"\nidle_timeout_secs = 10").unwrap();
        assert_eq!(s.login_timeout, Duration::from_secs(10));
        assert!(svc("listen = \"127.0.0.1:2121\"\nlogin_timeout_secs = 0").is_err());
        assert!(svc("listen = \"127.0.0.1:2121\"\n[sessions]\nmax_per_address = 0").is_err());
    }

    #[test]
    fn filters() {
        let s = svc(
            "listen = \"127.0.0.1:21\"\n[filter]\nmode = \"allow-list\"\nallow = [\"10.0.0.0/8\", \"127.0.0.1\"]\ndeny = [\"10.0.5.0/24\"]\n",
        )
        .unwrap();
        assert!(s.filter.allows("10.1.2.3".parse().unwrap()));
        assert!(s.filter.allows("127.0.0.1".parse().unwrap()));
        assert!(!s.filter.allows("10.0.5.7".parse().unwrap()));
        assert!(!s.filter.allows("192.168.1.1".parse().unwrap()));
        assert!(svc("listen = \"127.0.0.1:21\"\n[filter]\nmode = \"allow-list\"\n").is_err());
        assert!(svc("listen = \"127.0.0.1:21\"\n[filter]\nallow = [\"10.0.0.0/8\"]\n").is_err());
        assert!(svc("listen = \"127.0.0.1:21\"\n[filter]\nmode = \"deny-list\"\ndeny = [\"nonsense\"]\n")
            .unwrap_err()
            .to_string()
            .contains("nonsense"));
    }

    /// A node.toml deep in the tree still loads: its default admin socket
    /// is left out; an explicit path that is too long is refused.
    #[test]
    fn a_default_admin_socket_too_long_is_left_out_an_explicit_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(120));
        std::fs::create_dir(&deep).unwrap();
        let storage = "[storage]\nbacking = \"b\"\nfuse = false\n[state]\nusers = \"u.toml\"\nservice = \"s.toml\"\n";
        let cfg = deep.join("node.toml");
        std::fs::write(&cfg, storage).unwrap();
        assert_eq!(NodeConfig::load(&cfg).unwrap().admin_socket, None);
        std::fs::write(&cfg, format!("{storage}[admin]\nsocket = \"{}\"\n", "s".repeat(120))).unwrap();
        assert!(NodeConfig::load(&cfg).unwrap_err().to_string().contains("more than a Unix socket allows"));
        let short = dir.path().join("node.toml");
        std::fs::write(&short, storage).unwrap();
        assert_eq!(NodeConfig::load(&short).unwrap().admin_socket, Some(dir.path().join("node.admin.sock")));
    }

    /// The files in examples/node/ are what users copy: they must load.
    #[test]
    fn examples_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node");
        let node = NodeConfig::load(&dir.join("node.toml")).unwrap();
        assert!(matches!(node.mode, StorageMode::Fuse { .. }));
        assert_eq!(node.users_file, dir.join("users.toml"));
        let svc = ServiceConfig::load(&node.service_file).unwrap();
        assert!(svc.filter.allows("10.1.1.1".parse().unwrap()));
        assert!(!svc.filter.allows("10.66.1.1".parse().unwrap()));
        let users = crate::node::users::Users::load(&node.users_file).unwrap();
        assert!(users.get("alice").is_some() && users.get("reports").is_some());
        // The example ships no usable password: its hashes are published,
        // so a node refuses them (tests/node_security.rs runs one).
        assert!(users.iter().all(|u| crate::node::users::PUBLISHED_HASHES.contains(&u.password_hash.as_str())));
    }

    #[test]
    fn bad_values_are_named() {
        for (text, needle) in [
            ("listen = \"localhost\"", "listen"),
            ("listen = \"127.0.0.1:21\"\npassive_ports = [2000, 1000]", "passive_ports"),
            ("listen = \"127.0.0.1:21\"\n[sessions]\nmax_total = 0", "max_total"),
            ("listen = \"127.0.0.1:21\"\n[login]\nlock_by = \"moon\"", "lock_by"),
            ("listen = \"127.0.0.1:21\"\nport = 21", "port"),
            ("listen = \"127.0.0.1:21\"\n[ftps]\ncert = \"/nonexistent.pem\"\nkey = \"/nonexistent.key\"", "ftps.cert"),
        ] {
            let e = svc(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?} -> {e}");
        }
    }
}
