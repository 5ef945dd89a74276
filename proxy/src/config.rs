//! `proxy.toml`: where the proxy listens, how it reaches the guide, its
//! passive ports and limits. Paths are relative to the file's directory.
//! Every key is documented in `docs/proxy.md`.

use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read proxy config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("proxy config {path} is not valid: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("proxy config {path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    listen: String,
    guide: String,
    key_file: PathBuf,
    passive_ports: [u16; 2],
    passive_host: Option<Ipv4Addr>,
    backend_source: Option<IpAddr>,
    patience_secs: Option<u64>,
    greeting: Option<String>,
    idle_timeout_secs: Option<u64>,
    login_timeout_secs: Option<u64>,
    max_sessions: Option<usize>,
    spool_dir: Option<PathBuf>,
    spool_quota_mb: Option<u64>,
    state_db: Option<PathBuf>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub path: PathBuf,
    /// Client-facing FTP `host:port`.
    pub listen: String,
    /// The guide's cluster port.
    pub guide: String,
    pub key_file: PathBuf,
    /// The proxy's passive data ports (client side).
    pub passive_ports: RangeInclusive<u16>,
    /// The IPv4 address PASV announces; default: the address the client
    /// reached the proxy on.
    pub passive_host: Option<Ipv4Addr>,
    /// The local address backend connections leave from (the address the
    /// nodes' `proxies` list must hold).
    pub backend_source: Option<IpAddr>,
    /// How long a command is held while no primary serves.
    pub patience: Duration,
    pub greeting: String,
    pub idle_timeout: Duration,
    pub login_timeout: Duration,
    pub max_sessions: usize,
    /// Where uploads are spooled (only user data, never a password).
    pub spool_dir: PathBuf,
    /// Most bytes all spools together may hold.
    pub spool_quota: u64,
    /// The active state (SQLite), read by `drift proxy status`.
    pub state_db: PathBuf,
}

impl ProxyConfig {
    pub fn load(path: &Path) -> Result<ProxyConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<ProxyConfig, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| ConfigError::Syntax { path: path.to_owned(), message: e.to_string() })?;
        let invalid = |problem: String| ConfigError::Invalid { path: path.to_owned(), problem };
        let host_port = |s: &str| s.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !host_port(&raw.listen) {
            return Err(invalid(format!("listen = {:?} is not host:port", raw.listen)));
        }
        if !host_port(&raw.guide) {
            return Err(invalid(format!("guide = {:?} is not host:port", raw.guide)));
        }
        let [lo, hi] = raw.passive_ports;
        if lo == 0 || lo > hi {
            return Err(invalid(format!("passive_ports = [{lo}, {hi}]: expected [low, high] with 0 < low <= high")));
        }
        let patience = raw.patience_secs.unwrap_or(30);
        if !(1..=3600).contains(&patience) {
            return Err(invalid(format!("patience_secs = {patience} must be 1 to 3600")));
        }
        let max_sessions = raw.max_sessions.unwrap_or(1000);
        if max_sessions == 0 {
            return Err(invalid("max_sessions must be at least 1".into()));
        }
        let greeting = raw.greeting.unwrap_or_else(|| "drift proxy ready".into());
        if greeting.contains(['\r', '\n']) || greeting.len() > 200 {
            return Err(invalid("greeting must be one line of at most 200 bytes".into()));
        }
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let key_file = rel(raw.key_file);
        let spool_dir = rel(raw.spool_dir.unwrap_or_else(|| PathBuf::from("spool")));
        let state_db = rel(raw.state_db.unwrap_or_else(|| PathBuf::from("proxy-state.db")));
        let quota_mb = raw.spool_quota_mb.unwrap_or(4096);
        if quota_mb == 0 {
            return Err(invalid("spool_quota_mb must be at least 1".into()));
        }
        Ok(ProxyConfig {
            path: path.to_owned(),
            listen: raw.listen,
            guide: raw.guide,
            key_file,
            passive_ports: lo..=hi,
            passive_host: raw.passive_host,
            backend_source: raw.backend_source,
            patience: Duration::from_secs(patience),
            greeting,
            idle_timeout: Duration::from_secs(raw.idle_timeout_secs.unwrap_or(600).max(1)),
            login_timeout: Duration::from_secs(raw.login_timeout_secs.unwrap_or(60).max(1)),
            max_sessions,
            spool_dir,
            spool_quota: quota_mb << 20,
            state_db,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "listen = \"0.0.0.0:2121\"\nguide = \"g:7000\"\nkey_file = \"k\"\npassive_ports = [40000, 40010]\n";

    #[test]
    fn defaults_apply_and_paths_are_relative_to_the_file() {
        let c = ProxyConfig::parse(Path::new("/etc/drift/proxy.toml"), MIN).unwrap();
        assert_eq!(c.key_file, Path::new("/etc/drift/k"));
        assert_eq!(c.patience, Duration::from_secs(30));
        assert_eq!(c.passive_ports, 40000..=40010);
        assert_eq!(c.max_sessions, 1000);
        assert_eq!(c.spool_dir, Path::new("/etc/drift/spool"));
        assert_eq!(c.spool_quota, 4096 << 20);
        assert!(c.passive_host.is_none() && c.backend_source.is_none());
    }

    #[test]
    fn bad_values_are_refused() {
        let p = Path::new("p.toml");
        for bad in [
            MIN.replace("40000, 40010", "40010, 40000"),
            MIN.replace("0.0.0.0:2121", "nowhere"),
            format!("{MIN}patience_secs = 0\n"),
            format!("{MIN}bogus = 1\n"),
            format!("{MIN}greeting = \"a\\r\\nb\"\n"),
        ] {
            assert!(ProxyConfig::parse(p, &bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cluster/proxy.toml");
        let c = ProxyConfig::load(&path).unwrap();
        assert_eq!(c.passive_ports, 40000..=40999);
        assert_eq!(c.backend_source, Some("10.0.0.5".parse().unwrap()));
    }
}
