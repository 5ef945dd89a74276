//! Login: password check against the users file, per-user client
//! addresses, and the failed-login lockout.
//!
//! libunftp's own failed-logins cache lives inside one `Server` value,
//! and the node builds one per connection (see `server.rs`), so the
//! lockout is kept here, shared by all connections and driven by the
//! current service file.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use unftp_core::auth::{AuthenticationError, Authenticator, Credentials, Principal, UserDetail, UserDetailError, UserDetailProvider};

use super::config::{LockBy, LoginPolicy};
use super::state::StateHandle;
use super::users::canonical_ip;

/// Entries kept before expired ones are swept (bounds memory when an
/// attacker cycles through user names).
const MAX_LOCK_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum LockKey {
    User(String),
    Ip(IpAddr),
    UserIp(String, IpAddr),
}

impl LockKey {
    fn new(by: LockBy, user: &str, ip: IpAddr) -> LockKey {
        match by {
            LockBy::User => LockKey::User(user.to_owned()),
            LockBy::Ip => LockKey::Ip(ip),
            LockBy::UserAndIp => LockKey::UserIp(user.to_owned(), ip),
        }
    }
}

#[derive(Debug)]
struct Record {
    window_start: Instant,
    failures: u32,
    locked_until: Option<Instant>,
}

/// Failed-login bookkeeping shared by every connection.
#[derive(Debug, Default)]
pub struct Lockout {
    records: Mutex<HashMap<LockKey, Record>>,
}

impl Lockout {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LockKey, Record>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Time left on a lockout for this login attempt, if any.
    pub fn locked_for(&self, policy: &LoginPolicy, user: &str, ip: IpAddr, now: Instant) -> Option<Duration> {
        if policy.max_failures == 0 {
            return None;
        }
        let records = self.lock();
        let until = records.get(&LockKey::new(policy.lock_by, user, ip))?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// Records a failure; returns true when this failure starts a lockout.
    pub fn failed(&self, policy: &LoginPolicy, user: &str, ip: IpAddr, now: Instant) -> bool {
        if policy.max_failures == 0 {
            return false;
        }
        let mut records = self.lock();
        if records.len() >= MAX_LOCK_ENTRIES {
            records.retain(|_, r| {
                r.locked_until.is_some_and(|u| u > now) || now.duration_since(r.window_start) < policy.window
            });
        }
        let r = records.entry(LockKey::new(policy.lock_by, user, ip)).or_insert(Record {
            window_start: now,
            failures: 0,
            locked_until: None,
        });
        if r.locked_until.is_some_and(|u| u <= now) || now.duration_since(r.window_start) >= policy.window {
            *r = Record {
                window_start: now,
                failures: 0,
                locked_until: None,
            };
        }
        r.failures += 1;
        if r.failures >= policy.max_failures && r.locked_until.is_none() {
            r.locked_until = Some(now + policy.lockout);
            return true;
        }
        false
    }

    /// A successful login clears the failures counted against it.
    pub fn succeeded(&self, policy: &LoginPolicy, user: &str, ip: IpAddr) {
        self.lock().remove(&LockKey::new(policy.lock_by, user, ip));
    }
}

/// A hash to verify against when the user does not exist, so that an
/// unknown name costs as much time as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| super::users::hash_password("drift-no-such-user").unwrap_or_default())
}

/// The node's [`Authenticator`].
pub struct NodeAuthenticator {
    state: Arc<StateHandle>,
    lockout: Arc<Lockout>,
}

impl fmt::Debug for NodeAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeAuthenticator")
    }
}

impl NodeAuthenticator {
    pub fn new(state: Arc<StateHandle>, lockout: Arc<Lockout>) -> Self {
        NodeAuthenticator { state, lockout }
    }
}

#[async_trait]
impl Authenticator for NodeAuthenticator {
    async fn authenticate(&self, username: &str, creds: &Credentials) -> Result<Principal, AuthenticationError> {
        let state = self.state.current();
        let policy = &state.service.login;
        let ip = canonical_ip(creds.source_ip);
        if let Some(left) = self.lockout.locked_for(policy, username, ip, Instant::now()) {
            tracing::warn!(user = username, %ip, seconds_left = left.as_secs(), "login refused: locked out after repeated failures");
            tokio::time::sleep(policy.failure_delay).await;
            return Err(AuthenticationError::new("locked out after repeated failed logins"));
        }
        let password = creds.password.clone().unwrap_or_default();
        let user = state.users.get(username).cloned();
        let hash = user.as_ref().map(|u| u.password_hash.clone()).unwrap_or_else(|| dummy_hash().to_owned());
        // argon2 is deliberately slow: keep it off the async workers.
        let ok = tokio::task::spawn_blocking(move || super::users::verify_password(&hash, &password))
            .await
            .unwrap_or(false);
        let user = match (user, ok) {
            (Some(u), true) => u,
            (user, _) => {
                let locked = self.lockout.failed(policy, username, ip, Instant::now());
                if locked {
                    tracing::warn!(user = username, %ip, lockout_secs = policy.lockout.as_secs(), "too many failed logins: locking out");
                } else {
                    tracing::info!(user = username, %ip, known = user.is_some(), "failed login");
                }
                tokio::time::sleep(policy.failure_delay).await;
                return Err(if user.is_some() {
                    AuthenticationError::BadPassword
                } else {
                    AuthenticationError::BadUser
                });
            }
        };
        if !user.allows(ip) {
            tracing::warn!(user = username, %ip, "login refused: client address not in the user's allow_from");
            return Err(AuthenticationError::IpDisallowed);
        }
        self.lockout.succeeded(policy, username, ip);
        Ok(Principal {
            username: username.to_owned(),
        })
    }
}

/// The user a session runs as.
#[derive(Debug, Clone)]
pub struct NodeUser {
    pub name: String,
    /// Home inside the served root (`/` or `/a/b`), as in the users file.
    pub home: String,
    /// `served_root` + `home`, the form unftp-sbe-fs's `enter` expects.
    pub home_abs: PathBuf,
}

impl fmt::Display for NodeUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl UserDetail for NodeUser {
    fn home(&self) -> Option<&Path> {
        Some(&self.home_abs)
    }
}

/// Turns an authenticated name into a [`NodeUser`] from the current state.
pub struct NodeUserProvider {
    state: Arc<StateHandle>,
    served_root: PathBuf,
}

impl fmt::Debug for NodeUserProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeUserProvider")
    }
}

impl NodeUserProvider {
    pub fn new(state: Arc<StateHandle>, served_root: PathBuf) -> Self {
        NodeUserProvider { state, served_root }
    }
}

#[async_trait]
impl UserDetailProvider for NodeUserProvider {
    type User = NodeUser;

    async fn provide_user_detail(&self, principal: &Principal) -> Result<NodeUser, UserDetailError> {
        let state = self.state.current();
        let user = state.users.get(&principal.username).ok_or_else(|| UserDetailError::UserNotFound {
            username: principal.username.clone(),
        })?;
        Ok(NodeUser {
            name: user.name.clone(),
            home: user.home.clone(),
            home_abs: self.served_root.join(user.home_relative()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(by: LockBy) -> LoginPolicy {
        LoginPolicy {
            max_failures: 3,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(30),
            lock_by: by,
            failure_delay: Duration::ZERO,
        }
    }

    #[test]
    fn locks_after_max_failures_and_expires() {
        let l = Lockout::default();
        let p = policy(LockBy::UserAndIp);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        assert!(!l.failed(&p, "a", ip, t0));
        assert!(!l.failed(&p, "a", ip, t0));
        assert!(l.locked_for(&p, "a", ip, t0).is_none());
        assert!(l.failed(&p, "a", ip, t0));
        assert!(l.locked_for(&p, "a", ip, t0).is_some());
        assert!(l.locked_for(&p, "a", other, t0).is_none());
        assert!(l.locked_for(&p, "b", ip, t0).is_none());
        assert!(l.locked_for(&p, "a", ip, t0 + Duration::from_secs(31)).is_none());
    }

    #[test]
    fn success_resets_and_window_expires() {
        let l = Lockout::default();
        let p = policy(LockBy::User);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        l.failed(&p, "a", ip, t0);
        l.failed(&p, "a", ip, t0);
        l.succeeded(&p, "a", ip);
        assert!(!l.failed(&p, "a", ip, t0));
        assert!(!l.failed(&p, "a", ip, t0));
        // The third failure comes after the window: counting starts again.
        assert!(!l.failed(&p, "a", ip, t0 + Duration::from_secs(61)));
        // Locking by user covers every address.
        let t1 = t0 + Duration::from_secs(61);
        l.failed(&p, "a", ip, t1);
        assert!(l.failed(&p, "a", ip, t1));
        assert!(l.locked_for(&p, "a", "10.9.9.9".parse().unwrap(), t1).is_some());
    }
}
