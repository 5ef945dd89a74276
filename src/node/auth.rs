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
use crate::cluster::proxy_cred::{CredError, ProxyTrust};
use super::state::StateHandle;
use super::users::{canonical_ip, validate_name, MAX_NAME_LEN};
use super::xferlog::{Entry, Outcome, TransferLog};

/// Most entries the lockout table holds. When it is full, expired entries
/// are swept, then the oldest entry that is not locked is dropped; if every
/// entry is an active lockout the new failure is not counted. With names
/// capped at [`MAX_NAME_LEN`] bytes this bounds the table to a few MiB
/// whatever an attacker sends.
pub const MAX_LOCK_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum LockKey {
    User(String),
    Ip(IpAddr),
    UserIp(String, IpAddr),
}

impl LockKey {
    /// The key a login attempt is counted under; `None` when the policy
    /// keys on the name and the name is not a valid user name (no such
    /// user can exist, and an arbitrary string is never stored).
    fn new(by: LockBy, user: &str, ip: IpAddr) -> Option<LockKey> {
        let valid = || validate_name(user).is_ok();
        match by {
            LockBy::User => valid().then(|| LockKey::User(user.to_owned())),
            LockBy::Ip => Some(LockKey::Ip(ip)),
            LockBy::UserAndIp => valid().then(|| LockKey::UserIp(user.to_owned(), ip)),
        }
    }

    fn user(&self) -> Option<&str> {
        match self {
            LockKey::User(u) | LockKey::UserIp(u, _) => Some(u),
            LockKey::Ip(_) => None,
        }
    }
}

#[derive(Debug)]
struct Record {
    window_start: Instant,
    failures: u32,
    locked_until: Option<Instant>,
}

impl Record {
    fn locked_at(&self, now: Instant) -> bool {
        self.locked_until.is_some_and(|u| u > now)
    }
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
        let key = LockKey::new(policy.lock_by, user, ip)?;
        let records = self.lock();
        let until = records.get(&key)?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// Records a failure; returns true when this failure starts a lockout.
    pub fn failed(&self, policy: &LoginPolicy, user: &str, ip: IpAddr, now: Instant) -> bool {
        if policy.max_failures == 0 {
            return false;
        }
        let Some(key) = LockKey::new(policy.lock_by, user, ip) else {
            return false;
        };
        let mut records = self.lock();
        if !records.contains_key(&key) && records.len() >= MAX_LOCK_ENTRIES && !make_room(&mut records, policy, now) {
            return false;
        }
        let r = records.entry(key).or_insert(Record {
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
        if let Some(key) = LockKey::new(policy.lock_by, user, ip) {
            self.lock().remove(&key);
        }
    }

    /// Lifts every lockout of user `name` (from every address) and forgets
    /// the failures counted against it; sessions are not touched. Returns
    /// how many active lockouts were lifted (0: the user was not locked
    /// out). Lockouts keyed on an address alone (`lock_by = "ip"`) are
    /// not the user's: [`clear`](Self::clear) lifts those.
    pub fn unlock(&self, name: &str) -> usize {
        let now = Instant::now();
        let mut lifted = 0;
        self.lock().retain(|k, r| {
            if k.user() != Some(name) {
                return true;
            }
            lifted += usize::from(r.locked_at(now));
            false
        });
        if lifted > 0 {
            tracing::info!(user = name, lockouts = lifted, "lockout lifted by the operator");
        } else {
            tracing::info!(user = name, "unlock asked, but the user was not locked out");
        }
        lifted
    }

    /// Lifts every lockout and forgets every failure (SIGHUP). Returns how
    /// many active lockouts were lifted.
    pub fn clear(&self) -> usize {
        let now = Instant::now();
        let mut records = self.lock();
        let lifted = records.values().filter(|r| r.locked_at(now)).count();
        records.clear();
        if lifted > 0 {
            tracing::info!(lockouts = lifted, "all lockouts lifted");
        }
        lifted
    }

    /// Entries held (for tests of the bound).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Frees one slot in a full table; false when every entry is an active
/// lockout (those are never dropped, or flooding the table would lift
/// them).
fn make_room(records: &mut HashMap<LockKey, Record>, policy: &LoginPolicy, now: Instant) -> bool {
    records.retain(|_, r| r.locked_at(now) || now.duration_since(r.window_start) < policy.window);
    if records.len() < MAX_LOCK_ENTRIES {
        return true;
    }
    let oldest = records
        .iter()
        .filter(|(_, r)| !r.locked_at(now))
        .min_by_key(|(_, r)| r.window_start)
        .map(|(k, _)| k.clone());
    match oldest {
        Some(k) => {
            records.remove(&k);
            true
        }
        None => false,
    }
}

/// A hash to verify against when the user does not exist (or is locked
/// out), so that every failed login costs the same argon2 time.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| super::users::hash_password("drift-no-such-user").unwrap_or_default())
}

/// How a name is shown in the logs: as given when it is a valid user name,
/// else cut to [`MAX_NAME_LEN`] characters (the transfer log quotes it).
fn shown_name(name: &str) -> String {
    if validate_name(name).is_ok() || name.chars().count() <= MAX_NAME_LEN {
        name.to_owned()
    } else {
        let mut s: String = name.chars().take(MAX_NAME_LEN).collect();
        s.push_str("...");
        s
    }
}

/// The node's [`Authenticator`].
pub struct NodeAuthenticator {
    state: Arc<StateHandle>,
    lockout: Arc<Lockout>,
    xferlog: Arc<TransferLog>,
    /// Accepts proxy credentials ([`crate::cluster::proxy_cred`]) when set.
    proxy: Option<Arc<ProxyTrust>>,
}

impl fmt::Debug for NodeAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeAuthenticator")
    }
}

/// Why a login attempt failed: the transfer log's reason and the error
/// libunftp turns into `530` (the same reply for all, so a client cannot
/// tell an unknown user from a wrong password).
struct Refusal {
    reason: &'static str,
    error: AuthenticationError,
}

impl NodeAuthenticator {
    /// An authenticator that writes no transfer log; see
    /// [`with_transfer_log`](Self::with_transfer_log).
    pub fn new(state: Arc<StateHandle>, lockout: Arc<Lockout>) -> Self {
        NodeAuthenticator {
            state,
            lockout,
            xferlog: Arc::new(TransferLog::off()),
            proxy: None,
        }
    }

    /// Accepts proxy credentials checked by `trust` (`None`: refuses them).
    pub fn with_proxy_trust(mut self, trust: Option<Arc<ProxyTrust>>) -> Self {
        self.proxy = trust;
        self
    }

    /// A login with a proxy credential: the proxy checked the password;
    /// this node checks the credential (key, proxy address, time, nonce),
    /// that the user exists, and the user's address rules against the
    /// client address the credential carries. The lockout is the proxy's.
    fn check_proxy(&self, username: &str, password: &str, peer: IpAddr) -> Result<IpAddr, Refusal> {
        let refuse = |reason: &'static str| Refusal { reason, error: AuthenticationError::BadPassword };
        let Some(trust) = &self.proxy else {
            return Err(refuse("proxy credential, but no [cluster] proxies configured"));
        };
        let client = trust.verify(username, password, peer).map_err(|e| {
            tracing::warn!(user = %shown_name(username), %peer, "proxy credential refused: {e}");
            refuse(match e {
                CredError::NotAProxy(_) => "proxy credential from a non-proxy address",
                CredError::BadMac => "proxy credential with a wrong key",
                CredError::Expired => "proxy credential expired",
                CredError::Replayed => "proxy credential replayed",
                CredError::Malformed | CredError::NotACredential | CredError::Full => "bad proxy credential",
            })
        })?;
        let state = self.state.current();
        let Some(user) = validate_name(username).ok().and_then(|()| state.users.get(username)) else {
            return Err(Refusal { reason: "unknown user", error: AuthenticationError::BadUser });
        };
        if !user.allows(client) {
            return Err(Refusal { reason: "address not allowed", error: AuthenticationError::IpDisallowed });
        }
        Ok(client)
    }

    /// Writes a `LOGIN` line to `log` for every login attempt.
    pub fn with_transfer_log(mut self, log: Arc<TransferLog>) -> Self {
        self.xferlog = log;
        self
    }

    /// Whether `peer` is a trusted proxy (its connections carry many
    /// clients: the per-address session limit is the proxy's to apply).
    pub fn is_proxy(&self, peer: IpAddr) -> bool {
        self.proxy.as_ref().is_some_and(|t| t.is_proxy(peer))
    }

    /// The lockout table this authenticator consults.
    pub fn lockout(&self) -> &Arc<Lockout> {
        &self.lockout
    }

    async fn check(&self, username: &str, password: String, ip: IpAddr) -> Result<(), Refusal> {
        let state = self.state.current();
        let policy = &state.service.login;
        let valid_name = validate_name(username).is_ok();
        let locked = self.lockout.locked_for(policy, username, ip, Instant::now());
        let user = if valid_name { state.users.get(username).cloned() } else { None };
        // Every attempt pays for one argon2 verification, also an unknown
        // or locked-out name, so the answer's timing tells nothing.
        let hash = match (&user, locked) {
            (Some(u), None) => u.password_hash.clone(),
            _ => dummy_hash().to_owned(),
        };
        // argon2 is deliberately slow: keep it off the async workers.
        let ok = tokio::task::spawn_blocking(move || super::users::verify_password(&hash, &password))
            .await
            .unwrap_or(false);
        if let Some(left) = locked {
            tracing::debug!(user = %shown_name(username), %ip, seconds_left = left.as_secs(), "login refused: locked out");
            tokio::time::sleep(policy.failure_delay).await;
            return Err(Refusal {
                reason: "locked out",
                error: AuthenticationError::new("locked out after repeated failed logins"),
            });
        }
        let user = match (user, ok) {
            (Some(u), true) => u,
            (user, _) => {
                super::agent::threat::note_failed_login();
                if self.lockout.failed(policy, username, ip, Instant::now()) {
                    tracing::warn!(
                        user = %shown_name(username),
                        %ip,
                        failures = policy.max_failures,
                        lockout_secs = policy.lockout.as_secs(),
                        "too many failed logins: locking out (lift with `drift user unlock` or SIGHUP)"
                    );
                }
                tokio::time::sleep(policy.failure_delay).await;
                return Err(match (user, valid_name) {
                    (Some(_), _) => Refusal {
                        reason: "bad password",
                        error: AuthenticationError::BadPassword,
                    },
                    (None, true) => Refusal {
                        reason: "unknown user",
                        error: AuthenticationError::BadUser,
                    },
                    (None, false) => Refusal {
                        reason: "invalid user name",
                        error: AuthenticationError::BadUser,
                    },
                });
            }
        };
        if !user.allows(ip) {
            return Err(Refusal {
                reason: "address not allowed",
                error: AuthenticationError::IpDisallowed,
            });
        }
        self.lockout.succeeded(policy, username, ip);
        Ok(())
    }
}

#[async_trait]
impl Authenticator for NodeAuthenticator {
    async fn authenticate(&self, username: &str, creds: &Credentials) -> Result<Principal, AuthenticationError> {
        let started = Instant::now();
        let ip = canonical_ip(creds.source_ip);
        let password = creds.password.clone().unwrap_or_default();
        let (ip, result) = if crate::cluster::proxy_cred::is_credential(&password) {
            match self.check_proxy(username, &password, ip) {
                Ok(client) => (client, Ok(())),
                Err(r) => (ip, Err(r)),
            }
        } else {
            (ip, self.check(username, password, ip).await)
        };
        // The refusal is logged here once, in the transfer log; the
        // diagnostic log only says when a lockout starts or is lifted.
        let shown = shown_name(username);
        let outcome = match &result {
            Ok(()) => Outcome::Ok,
            Err(r) => Outcome::Refused(r.reason),
        };
        let mut entry = Entry::new(ip, Some(&shown), "LOGIN", outcome);
        entry.duration = started.elapsed();
        self.xferlog.record(&entry);
        match result {
            Ok(()) => Ok(Principal {
                username: username.to_owned(),
            }),
            Err(r) => {
                tracing::debug!(user = %shown, %ip, reason = r.reason, "login refused");
                Err(r.error)
            }
        }
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

    #[test]
    fn unlock_lifts_one_users_lockouts_and_clear_lifts_all() {
        let l = Lockout::default();
        let p = policy(LockBy::UserAndIp);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let now = Instant::now();
        for ip in [a, b] {
            for _ in 0..3 {
                l.failed(&p, "alice", ip, now);
                l.failed(&p, "bob", ip, now);
            }
        }
        l.failed(&p, "carol", a, now);
        assert!(l.locked_for(&p, "alice", a, now).is_some() && l.locked_for(&p, "alice", b, now).is_some());
        assert_eq!(l.unlock("alice"), 2);
        assert!(l.locked_for(&p, "alice", a, now).is_none() && l.locked_for(&p, "alice", b, now).is_none());
        assert!(l.locked_for(&p, "bob", a, now).is_some(), "unlocking alice lifted bob's lockout");
        assert_eq!(l.unlock("alice"), 0);
        // carol has failures but no lockout: cleared, not counted.
        assert_eq!(l.clear(), 2);
        assert!(l.is_empty());
        assert!(l.locked_for(&p, "bob", a, now).is_none());
    }

    #[test]
    fn invalid_names_are_never_stored() {
        let l = Lockout::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let huge = "x".repeat(1 << 20);
        for by in [LockBy::User, LockBy::UserAndIp] {
            for name in [huge.as_str(), "a b", "../x", ""] {
                for _ in 0..5 {
                    assert!(!l.failed(&policy(by), name, ip, Instant::now()));
                }
            }
        }
        assert!(l.is_empty());
        // Keyed on the address alone, the name does not matter.
        let p = policy(LockBy::Ip);
        for _ in 0..3 {
            l.failed(&p, &huge, ip, Instant::now());
        }
        assert!(l.locked_for(&p, "alice", ip, Instant::now()).is_some());
    }

    #[test]
    fn the_table_stays_bounded_and_keeps_active_lockouts() {
        let l = Lockout::default();
        let p = policy(LockBy::UserAndIp);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        for _ in 0..3 {
            l.failed(&p, "victim", ip, now);
        }
        for i in 0..MAX_LOCK_ENTRIES + 500 {
            l.failed(&p, &format!("u{i}"), ip, now);
        }
        assert_eq!(l.len(), MAX_LOCK_ENTRIES);
        assert!(l.locked_for(&p, "victim", ip, now).is_some(), "flooding the table lifted a lockout");
    }
}
