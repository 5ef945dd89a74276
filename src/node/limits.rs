//! Session accounting: the total number of control connections, the
//! number per client address, and the number of logged-in sessions per
//! user. libunftp has none of these limits.
//!
//! Counts are held by RAII guards: a [`SessionSlot`] lives in the task
//! serving one control connection, a [`UserSlot`] inside that session's
//! storage backend (dropped when libunftp drops the session), so a count
//! can never leak when a session ends in an unusual way.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_user: HashMap<String, usize>,
    per_address: HashMap<IpAddr, usize>,
}

/// Why a connection was not given a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// `max_total` connections are open.
    Total(usize),
    /// The client's address has `max_per_address` connections open.
    Address(usize),
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
        Some(SessionSlot {
            sessions: self.clone(),
            addr: None,
        })
    }

    /// Claims a connection slot for a client at `addr`, within both the
    /// total limit and the per-address limit (so one address cannot take
    /// every slot).
    pub fn try_connect_from(self: &Arc<Self>, addr: IpAddr, max_total: usize, max_per_address: usize) -> Result<SessionSlot, ConnectRefusal> {
        let mut c = self.lock();
        if c.total >= max_total {
            return Err(ConnectRefusal::Total(max_total));
        }
        let n = c.per_address.get(&addr).copied().unwrap_or(0);
        if n >= max_per_address {
            return Err(ConnectRefusal::Address(max_per_address));
        }
        c.total += 1;
        c.per_address.insert(addr, n + 1);
        Ok(SessionSlot {
            sessions: self.clone(),
            addr: Some(addr),
        })
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
    addr: Option<IpAddr>,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut c = self.sessions.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(addr) = self.addr {
            if let Some(n) = c.per_address.get_mut(&addr) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.per_address.remove(&addr);
                }
            }
        }
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

    #[test]
    fn per_address_slots_count_and_release() {
        let s = Arc::new(Sessions::default());
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let a1 = s.try_connect_from(a, 10, 2).unwrap();
        let _a2 = s.try_connect_from(a, 10, 2).unwrap();
        assert_eq!(s.try_connect_from(a, 10, 2).unwrap_err(), ConnectRefusal::Address(2));
        let _b1 = s.try_connect_from(b, 3, 2).unwrap();
        assert_eq!(s.try_connect_from(b, 3, 2).unwrap_err(), ConnectRefusal::Total(3));
        drop(a1);
        let _a3 = s.try_connect_from(a, 10, 2).expect("the freed place is given back");
        assert_eq!(s.total(), 3);
    }
}
