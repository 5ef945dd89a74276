//! `guide.toml`: where the guide listens, its key, its data directory and
//! the thresholds of failover and migration. Paths are relative to the
//! file's directory. Keys are documented in `docs/guide.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read guide config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("guide config {path} is not valid: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("guide config {path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    listen: String,
    key_file: PathBuf,
    data_dir: PathBuf,
    id: Option<String>,
    lease_ms: Option<u64>,
    threat_threshold: Option<u8>,
    load_threshold: Option<u64>,
    sustain_secs: Option<u64>,
    catch_up_timeout_secs: Option<u64>,
}

/// The validated guide configuration.
#[derive(Debug, Clone)]
pub struct GuideConfig {
    pub path: PathBuf,
    pub listen: String,
    pub key_file: PathBuf,
    pub data_dir: PathBuf,
    pub id: String,
    pub lease: Duration,
    pub threat_threshold: u8,
    pub load_threshold: Option<u64>,
    pub sustain: Duration,
    pub catch_up_timeout: Duration,
}

impl GuideConfig {
    pub fn load(path: &Path) -> Result<GuideConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<GuideConfig, ConfigError> {
        let text = last_wins(text);
        let raw: Raw = toml::from_str(&text).map_err(|e| ConfigError::Syntax { path: path.to_owned(), message: e.to_string() })?;
        let invalid = |problem: String| ConfigError::Invalid { path: path.to_owned(), problem };
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        if raw.listen.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            return Err(invalid(format!("listen = {:?} is not host:port", raw.listen)));
        }
        let lease_ms = raw.lease_ms.unwrap_or(600);
        if !(50..=600_000).contains(&lease_ms) {
            return Err(invalid(format!("lease_ms = {lease_ms} must be 50 to 600000")));
        }
        let threat_threshold = raw.threat_threshold.unwrap_or(80);
        if threat_threshold > 100 {
            return Err(invalid(format!("threat_threshold = {threat_threshold} must be 0 to 100")));
        }
        let id = match raw.id {
            Some(id) if !id.trim().is_empty() => id,
            Some(_) => return Err(invalid("id must not be empty".into())),
            None => host_name(),
        };
        Ok(GuideConfig {
            path: path.to_owned(),
            listen: raw.listen,
            key_file: rel(raw.key_file),
            data_dir: rel(raw.data_dir),
            id,
            lease: Duration::from_millis(lease_ms),
            threat_threshold,
            load_threshold: raw.load_threshold,
            sustain: Duration::from_secs(raw.sustain_secs.unwrap_or(5)),
            catch_up_timeout: Duration::from_secs(raw.catch_up_timeout_secs.unwrap_or(30).max(1)),
        })
    }

    /// The address an operator tool on this machine dials: the listen
    /// address, with an unspecified host replaced by loopback.
    pub fn dial_addr(&self) -> String {
        match self.listen.rsplit_once(':') {
            Some((h, p)) if h == "0.0.0.0" || h == "[::]" || h.is_empty() => format!("127.0.0.1:{p}"),
            _ => self.listen.clone(),
        }
    }
}

/// The text with each top-level key kept only where it last appears, so
/// a generated file can append overrides (`lease_ms = 2000` after the
/// default). Lines inside tables and multi-line values are left alone.
fn last_wins(text: &str) -> String {
    let key_of = |line: &str| -> Option<String> {
        let t = line.trim_start();
        let (k, rest) = t.split_once('=')?;
        let k = k.trim();
        let simple = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let v = rest.trim();
        let one_line = !(v.starts_with("\"\"\"") || v.starts_with("'''") || (v.starts_with('[') && !v.ends_with(']')));
        (simple && one_line).then(|| k.to_owned())
    };
    let lines: Vec<&str> = text.lines().collect();
    let top_end = lines.iter().position(|l| l.trim_start().starts_with('[')).unwrap_or(lines.len());
    let mut last = std::collections::HashMap::new();
    for (i, l) in lines[..top_end].iter().enumerate() {
        if let Some(k) = key_of(l) {
            last.insert(k, i);
        }
    }
    let mut out = String::with_capacity(text.len());
    for (i, l) in lines.iter().enumerate() {
        let dropped = i < top_end && key_of(l).is_some_and(|k| last.get(&k) != Some(&i));
        if !dropped {
            out.push_str(l);
        }
        out.push('\n');
    }
    out
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "guide".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_relative_to_the_file_and_defaults_apply() {
        let c = GuideConfig::parse(Path::new("/etc/drift/guide.toml"), "listen = \"0.0.0.0:7000\"\nkey_file = \"k\"\ndata_dir = \"/var/lib/g\"\n").unwrap();
        assert_eq!(c.key_file, Path::new("/etc/drift/k"));
        assert_eq!(c.data_dir, Path::new("/var/lib/g"));
        assert_eq!(c.lease, Duration::from_millis(600));
        assert_eq!(c.threat_threshold, 80);
        assert_eq!(c.dial_addr(), "127.0.0.1:7000");
        let c = GuideConfig::parse(Path::new("g.toml"), "listen = \"a:1\"\nkey_file = \"k\"\ndata_dir = \"d\"\nlease_ms = 600\nlease_ms = 2000\n").unwrap();
        assert_eq!(c.lease, Duration::from_millis(2000), "a key given again overrides");
        assert!(GuideConfig::parse(Path::new("g.toml"), "listen = \"x\"\nkey_file = \"k\"\ndata_dir = \"d\"\n").is_err());
        assert!(GuideConfig::parse(Path::new("g.toml"), "listen = \"a:1\"\nkey_file = \"k\"\ndata_dir = \"d\"\nbogus = 1\n").is_err());
    }
}
