//! The `[cluster]` section of node.toml (see `docs/node.md` and
//! `docs/cluster-protocol.md`). Without it the node runs standalone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The section as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    guide: String,
    key_file: PathBuf,
    node_id: String,
    advertise: Option<String>,
    #[serde(default = "default_heartbeat_ms")]
    heartbeat_ms: u64,
    #[serde(default = "default_ack")]
    ack: String,
    #[serde(default = "default_interval_secs")]
    interval_secs: u64,
    threat_file: Option<PathBuf>,
    threat_command: Option<String>,
    state_dir: Option<PathBuf>,
    /// Addresses (CIDR or single IPs) of the proxies whose credentials
    /// this node accepts (`src/cluster/proxy_cred.rs`).
    #[serde(default)]
    proxies: Vec<String>,
}

fn default_heartbeat_ms() -> u64 {
    100
}
fn default_ack() -> String {
    "guide".into()
}
fn default_interval_secs() -> u64 {
    30
}

/// When a change's success reply may go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Once the guide stored the change (`Stored` covers its seq).
    Guide,
    /// Once the local journal has it.
    Local,
}

/// Where the operator's threat level comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThreatSource {
    None,
    /// A file holding a number 0–100.
    File(PathBuf),
    /// A command (run by `sh -c`) printing a number 0–100.
    Command(String),
}

/// The validated section.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The guide's `host:port`.
    pub guide: String,
    pub key_file: PathBuf,
    pub node_id: String,
    /// The FTP `host:port` to advertise; `None`: the service `listen`.
    pub advertise: Option<String>,
    pub heartbeat: Duration,
    pub ack: Ack,
    /// How often the primary sends its tree digest.
    pub interval: Duration,
    pub threat: ThreatSource,
    /// The agent's own files (confirmed seq, inbox, outbox, quarantine).
    pub state_dir: PathBuf,
    /// The networks proxy credentials are accepted from; empty: none.
    pub proxies: Vec<ipnet::IpNet>,
}

/// Whether `id` is a valid node id (`[A-Za-z0-9_.-]{1,64}`).
pub fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn valid_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

impl ClusterConfig {
    /// Checks the section; `base` is the directory of node.toml, `journal`
    /// the node's journal (the default state directory sits beside it).
    /// The error is the problem, for the caller to name the file.
    pub fn from_raw(raw: RawCluster, base: &Path, journal: Option<&Path>) -> Result<ClusterConfig, String> {
        let Some(journal) = journal else {
            return Err("[cluster] needs the journal: storage.fuse = false cannot be part of a cluster".into());
        };
        if !valid_host_port(&raw.guide) {
            return Err(format!("cluster.guide = {:?}: expected \"host:port\"", raw.guide));
        }
        if !valid_node_id(&raw.node_id) {
            return Err(format!(
                "cluster.node_id = {:?}: 1 to 64 characters among letters, digits, '_', '.' and '-'",
                raw.node_id
            ));
        }
        if let Some(a) = &raw.advertise {
            if !valid_host_port(a) {
                return Err(format!("cluster.advertise = {a:?}: expected \"host:port\""));
            }
        }
        if !(10..=10_000).contains(&raw.heartbeat_ms) {
            return Err("cluster.heartbeat_ms must be between 10 and 10000".into());
        }
        let ack = match raw.ack.as_str() {
            "guide" => Ack::Guide,
            "local" => Ack::Local,
            other => return Err(format!("cluster.ack = {other:?}: expected \"guide\" or \"local\"")),
        };
        if !(1..=86_400).contains(&raw.interval_secs) {
            return Err("cluster.interval_secs must be between 1 and 86400".into());
        }
        let threat = match (raw.threat_file, raw.threat_command) {
            (Some(_), Some(_)) => return Err("set cluster.threat_file or cluster.threat_command, not both".into()),
            (Some(f), None) => ThreatSource::File(resolve(base, &f)),
            (None, Some(c)) if c.trim().is_empty() => return Err("cluster.threat_command is empty".into()),
            (None, Some(c)) => ThreatSource::Command(c),
            (None, None) => ThreatSource::None,
        };
        let state_dir = match raw.state_dir {
            Some(d) => resolve(base, &d),
            None => {
                let mut s = journal.as_os_str().to_owned();
                s.push(".cluster");
                PathBuf::from(s)
            }
        };
        let proxies = raw
            .proxies
            .iter()
            .map(|p| crate::node::users::parse_net(p).map_err(|e| format!("cluster.proxies: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ClusterConfig {
            proxies,
            guide: raw.guide,
            key_file: resolve(base, &raw.key_file),
            node_id: raw.node_id,
            advertise: raw.advertise,
            heartbeat: Duration::from_millis(raw.heartbeat_ms),
            ack,
            interval: Duration::from_secs(raw.interval_secs),
            threat,
            state_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterConfig, String> {
        let raw: RawCluster = toml::from_str(text).map_err(|e| e.to_string())?;
        ClusterConfig::from_raw(raw, Path::new("/etc/drift"), Some(Path::new("/var/drift/journal.db")))
    }

    #[test]
    fn defaults_and_relative_paths() {
        let c = parse("guide = \"g:7000\"\nkey_file = \"cluster.key\"\nnode_id = \"n1\"\n").unwrap();
        assert_eq!(c.key_file, PathBuf::from("/etc/drift/cluster.key"));
        assert_eq!(c.state_dir, PathBuf::from("/var/drift/journal.db.cluster"));
        assert_eq!(c.heartbeat, Duration::from_millis(100));
        assert_eq!(c.ack, Ack::Guide);
        assert_eq!(c.interval, Duration::from_secs(30));
        assert_eq!(c.threat, ThreatSource::None);
        assert_eq!(c.advertise, None);
    }

    #[test]
    fn every_key() {
        let c = parse(
            "guide = \"10.0.0.1:7000\"\nkey_file = \"/k\"\nnode_id = \"node-1.a_b\"\nadvertise = \"10.0.0.2:21\"\n\
             heartbeat_ms = 50\nack = \"local\"\ninterval_secs = 5\nthreat_file = \"threat\"\nstate_dir = \"st\"\n",
        )
        .unwrap();
        assert_eq!(c.ack, Ack::Local);
        assert_eq!(c.threat, ThreatSource::File(PathBuf::from("/etc/drift/threat")));
        assert_eq!(c.state_dir, PathBuf::from("/etc/drift/st"));
        assert_eq!(c.advertise.as_deref(), Some("10.0.0.2:21"));
        let c = parse("guide = \"g:1\"\nkey_file = \"k\"\nnode_id = \"n\"\nthreat_command = \"echo 5\"\n").unwrap();
        assert_eq!(c.threat, ThreatSource::Command("echo 5".into()));
    }

    #[test]
    fn bad_values_are_refused_with_the_key_named() {
        let base = "key_file = \"k\"\n";
        for (extra, key) in [
            ("guide = \"nohost\"\nnode_id = \"n\"\n", "cluster.guide"),
            ("guide = \"g:1\"\nnode_id = \"a b\"\n", "cluster.node_id"),
            ("guide = \"g:1\"\nnode_id = \"n\"\nack = \"maybe\"\n", "cluster.ack"),
            ("guide = \"g:1\"\nnode_id = \"n\"\nheartbeat_ms = 0\n", "cluster.heartbeat_ms"),
            ("guide = \"g:1\"\nnode_id = \"n\"\nthreat_file = \"a\"\nthreat_command = \"b\"\n", "threat_command"),
        ] {
            let err = parse(&format!("{base}{extra}")).unwrap_err();
            assert!(err.contains(key), "{extra}: {err}");
        }
        assert!(parse("guide = \"g:1\"\nkey_file = \"k\"\nnode_id = \"n\"\nbogus = 1\n").is_err());
        let raw: RawCluster = toml::from_str("guide = \"g:1\"\nkey_file = \"k\"\nnode_id = \"n\"\n").unwrap();
        assert!(ClusterConfig::from_raw(raw, Path::new("/"), None).unwrap_err().contains("fuse"));
        assert!(!valid_node_id(&"x".repeat(65)));
    }

    #[test]
    fn every_example_node_file_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster");
        let mut ids = Vec::new();
        for ent in std::fs::read_dir(&dir).unwrap() {
            let path = ent.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !(name.starts_with("node") && name.ends_with(".toml")) {
                continue;
            }
            let cfg = crate::node::config::NodeConfig::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            let c = cfg.cluster.unwrap_or_else(|| panic!("{name} has no [cluster]"));
            assert_eq!(c.ack, Ack::Guide, "{name}");
            assert_eq!(c.state_dir, PathBuf::from("/srv/drift/journal.db.cluster"), "{name}");
            crate::node::config::ServiceConfig::load(&cfg.service_file).unwrap_or_else(|e| panic!("{name}'s service file: {e}"));
            assert!(cfg.users_file.is_file(), "{name}: no users file");
            ids.push(c.node_id);
        }
        ids.sort();
        assert_eq!(ids, ["node1", "node2", "node3"]);
    }
}
