//! Session accounting: the total number of control connections and the
//! number of logged-in sessions per user. libunftp has neither limit.
//!
//! Counts are held by RAII guards: a [`SessionSlot`] lives in the task
//! serving one control connection, a [`UserSlot`] inside that session's
//! storage backend (dropped when libunftp drops the session), so a count
//! can never leak when a session ends in an unusual way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_user: HashMap<String, usize>,
}

/// Shared counters; clone the `Arc`.
#[derive(Debug, Default)]
pub struct Sessions {
    counts: Mutex<Counts>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims a connection slot if fewer than `max` are in use.
    pub fn try_connect(self: &Arc<Self>, max: usize) -> Option<SessionSlot> {
        let mut c = self.lock();
        if c.total >= max {
            return None;
        }
        c.total += 1;
        Some(SessionSlot { sessions: self.clone() })
    }

    /// Claims a per-user slot if the user has fewer than `max` sessions.
    pub fn try_login(self: &Arc<Self>, user: &str, max: usize) -> Option<UserSlot> {
        let mut c = self.lock();
        let n = c.per_user.entry(user.to_owned()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(UserSlot {
            sessions: self.clone(),
            user: user.to_owned(),
        })
    }

    /// Control connections open now.
    pub fn total(&self) -> usize {
        self.lock().total
    }

    /// Logged-in sessions of `user` now.
    pub fn of_user(&self, user: &str) -> usize {
        self.lock().per_user.get(user).copied().unwrap_or(0)
    }
}

/// One open control connection.
#[derive(Debug)]
pub struct SessionSlot {
    sessions: Arc<Sessions>,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut c = self.sessions.lock();
        c.total = c.total.saturating_sub(1);
    }
}

/// One logged-in session of a user.
#[derive(Debug)]
pub struct UserSlot {
    sessions: Arc<Sessions>,
    user: String,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut c = self.sessions.lock();
        if let Some(n) = c.per_user.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_user.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_and_release() {
        let s = Arc::new(Sessions::default());
        let a = s.try_connect(2).unwrap();
        let _b = s.try_connect(2).unwrap();
        assert!(s.try_connect(2).is_none());
        drop(a);
        assert!(s.try_connect(2).is_some());
        let u1 = s.try_login("alice", 1).unwrap();
        assert!(s.try_login("alice", 1).is_none());
        assert!(s.try_login("bob", 1).is_some());
        assert_eq!(s.of_user("alice"), 1);
        drop(u1);
        assert_eq!(s.of_user("alice"), 0);
        assert!(s.try_login("alice", 1).is_some());
    }
}
