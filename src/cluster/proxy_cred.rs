//! The proxy credential: the password a proxy presents to a node to open
//! a session for a user it has already checked, so that the proxy never
//! needs (or keeps) the user's password.
//!
//! ```text
//! drift-proxy-v1:<unix secs>:<nonce, 32 hex>:<client ip>:<mac, 64 hex>
//! mac = BLAKE3 keyed hash, key = BLAKE3 derive_key("drift proxy credential v1", cluster key),
//!       of  "<user>\n<unix secs>\n<nonce>\n<client ip>"
//! ```
//! A node accepts it only from an address in its `[cluster] proxies`
//! list, only within [`MAX_AGE`] of its time, only once (the nonce), and
//! applies the user's address rules to the client address it carries.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::xfer::ClusterKey;

/// What every credential starts with.
pub const PREFIX: &str = "drift-proxy-v1:";
/// The derive_key context of the MAC key.
pub const CONTEXT: &str = "drift proxy credential v1";
/// How far a credential's time may be from the node's clock.
pub const MAX_AGE: Duration = Duration::from_secs(120);
/// Most nonces a node remembers (a full table refuses new credentials
/// until old ones expire, rather than forgetting a live nonce).
const MAX_NONCES: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredError {
    #[error("not a proxy credential")]
    NotACredential,
    #[error("malformed proxy credential")]
    Malformed,
    #[error("proxy credential from {0}, which is not in the node's proxies list")]
    NotAProxy(IpAddr),
    #[error("proxy credential outside the time window")]
    Expired,
    #[error("proxy credential with a wrong MAC (another cluster key?)")]
    BadMac,
    #[error("proxy credential used twice")]
    Replayed,
    #[error("too many proxy credentials in flight")]
    Full,
}

fn mac_key(key: &ClusterKey) -> [u8; 32] {
    blake3::derive_key(CONTEXT, key.bytes())
}

fn mac(key: &ClusterKey, user: &str, secs: u64, nonce: &str, client: IpAddr) -> blake3::Hash {
    blake3::keyed_hash(&mac_key(key), format!("{user}\n{secs}\n{nonce}\n{client}").as_bytes())
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A fresh credential for `user` acting for `client`.
pub fn mint(key: &ClusterKey, user: &str, client: IpAddr) -> String {
    let secs = now_secs();
    let nonce: String = rand::random::<[u8; 16]>().iter().map(|b| format!("{b:02x}")).collect();
    let m = mac(key, user, secs, &nonce, client);
    format!("{PREFIX}{secs}:{nonce}:{client}:{}", m.to_hex())
}

/// Whether `password` looks like a proxy credential (and must be checked
/// as one, never as a password).
pub fn is_credential(password: &str) -> bool {
    password.starts_with(PREFIX)
}

/// A node's side: the key, the proxies' networks and the nonces seen.
pub struct ProxyTrust {
    key: ClusterKey,
    proxies: Vec<ipnet::IpNet>,
    seen: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for ProxyTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyTrust").field("proxies", &self.proxies).finish_non_exhaustive()
    }
}

impl ProxyTrust {
    pub fn new(key: ClusterKey, proxies: Vec<ipnet::IpNet>) -> ProxyTrust {
        ProxyTrust { key, proxies, seen: Mutex::new(HashMap::new()) }
    }

    /// Whether `peer` is one of the trusted proxies.
    pub fn is_proxy(&self, peer: IpAddr) -> bool {
        self.proxies.iter().any(|n| n.contains(&peer))
    }

    /// Checks a credential presented by `peer` for `user`; returns the
    /// client address it carries.
    pub fn verify(&self, user: &str, password: &str, peer: IpAddr) -> Result<IpAddr, CredError> {
        let rest = password.strip_prefix(PREFIX).ok_or(CredError::NotACredential)?;
        if !self.is_proxy(peer) {
            return Err(CredError::NotAProxy(peer));
        }
        let mut parts = rest.splitn(4, ':');
        let secs: u64 = parts.next().and_then(|s| s.parse().ok()).ok_or(CredError::Malformed)?;
        let nonce = parts.next().filter(|n| n.len() == 32 && n.bytes().all(|b| b.is_ascii_hexdigit())).ok_or(CredError::Malformed)?;
        // The client address may itself hold ':' (IPv6): the MAC is last.
        let tail = parts.collect::<Vec<_>>().join(":");
        let (client, mac_hex) = tail.rsplit_once(':').ok_or(CredError::Malformed)?;
        let client: IpAddr = client.parse().map_err(|_| CredError::Malformed)?;
        let given = blake3::Hash::from_hex(mac_hex).map_err(|_| CredError::Malformed)?;
        // Constant-time comparison (blake3::Hash's PartialEq).
        if given != mac(&self.key, user, secs, nonce, client) {
            return Err(CredError::BadMac);
        }
        let now = now_secs();
        if now.abs_diff(secs) > MAX_AGE.as_secs() {
            return Err(CredError::Expired);
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_NONCES {
            seen.retain(|_, &mut t| now.abs_diff(t) <= MAX_AGE.as_secs());
            if seen.len() >= MAX_NONCES {
                return Err(CredError::Full);
            }
        }
        if seen.insert(nonce.to_owned(), secs).is_some() {
            return Err(CredError::Replayed);
        }
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust(key: &ClusterKey) -> ProxyTrust {
        ProxyTrust::new(key.clone(), vec!["10.0.0.5/32".parse().unwrap()])
    }

    #[test]
    fn a_credential_works_once_from_a_proxy_with_the_key() {
        let key = ClusterKey::generate();
        let t = trust(&key);
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let client: IpAddr = "2001:db8::7".parse().unwrap();
        let c = mint(&key, "alice", client);
        assert!(is_credential(&c));
        assert_eq!(t.verify("alice", &c, "10.0.0.6".parse().unwrap()), Err(CredError::NotAProxy("10.0.0.6".parse().unwrap())));
        assert_eq!(t.verify("bob", &c, proxy), Err(CredError::BadMac), "bound to the user");
        assert_eq!(t.verify("alice", &c, proxy), Ok(client));
        assert_eq!(t.verify("alice", &c, proxy), Err(CredError::Replayed));
        let other = mint(&ClusterKey::generate(), "alice", client);
        assert_eq!(t.verify("alice", &other, proxy), Err(CredError::BadMac));
        assert_eq!(t.verify("alice", "secret", proxy), Err(CredError::NotACredential));
        assert_eq!(t.verify("alice", &format!("{PREFIX}1:zz"), proxy), Err(CredError::Malformed));
    }
}
