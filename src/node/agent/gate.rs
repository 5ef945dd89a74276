//! The gate between the FTP side and the agent: whether this node serves
//! at all (only as primary), whether a change may start (a valid lease,
//! not draining), and when its success reply may go out (`ack = "guide"`:
//! once the guide's `Stored` covers its journal seq).
//!
//! The lease is the node's own, always shorter than the guide's view of
//! it: it ends at the *send* time of the heartbeat a `Lease` answers plus
//! 0.9 × `lease_ms` ([`lease_end`]), while the guide counts `lease_ms`
//! from when it *received* that heartbeat. So a primary cut off from the
//! guide refuses changes (it is *fenced*) before the guide may promote
//! another node.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::config::Ack;
use crate::cluster::msg::Role;

/// When a lease granted for `lease_ms`, counted from `sent`, ends for the node.
pub fn lease_end(sent: Instant, lease_ms: u64) -> Instant {
    sent + Duration::from_millis(lease_ms.saturating_mul(9) / 10)
}

/// Why a change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this node is not the primary (it is {0}); changes go to the primary")]
    NotPrimary(&'static str),
    #[error("this node lost contact with the guide and stopped taking changes (fenced); try again in a moment")]
    Fenced,
    #[error("the service is moving to another node; try again in a moment")]
    Draining,
}

/// Why a change was made but is not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("the guide did not confirm the change within {0:?}")]
    Timeout(Duration),
    #[error("the node stopped being the primary before the guide confirmed the change")]
    Demoted,
    #[error("the node lost its lease before the guide confirmed the change")]
    Fenced,
    #[error("the file was rewritten before its content reached the guide; upload it again")]
    ContentLost,
}

/// Most seqs kept in [`Gate::content_lost`]'s set (the oldest go first).
const LOST_KEPT: usize = 4096;

#[derive(Debug)]
struct State {
    role: Role,
    epoch: u64,
    /// Set while primary.
    lease_until: Option<Instant>,
    draining: bool,
    /// Promoted, and no lease yet: fenced without a warning until the
    /// first `Lease` (which is anchored at a heartbeat's send time).
    awaiting_lease: bool,
    /// `fenced: lease expired` was logged for the current lapse.
    fence_logged: bool,
    /// The primary's FTP address, when known (for the 421 text).
    primary_ftp: Option<String>,
}

/// Shared by the agent (which moves it) and every FTP session (which asks it).
#[derive(Debug)]
pub struct Gate {
    ack: Ack,
    commit_timeout: Duration,
    st: Mutex<State>,
    stored: watch::Sender<u64>,
    /// Wakes the shipper when draining starts, so `Drained` goes out at
    /// once instead of after its next poll of the journal.
    drain_wake: tokio::sync::Notify,
    /// Writes shipped without their content because the file was being
    /// rewritten in place before a copy could be made: never acknowledged.
    lost: Mutex<std::collections::BTreeSet<u64>>,
}

impl Gate {
    /// A gate that refuses everything until the guide gives a role.
    pub fn new(ack: Ack, commit_timeout: Duration) -> Gate {
        Gate {
            ack,
            commit_timeout,
            st: Mutex::new(State {
                role: Role::CatchingUp,
                epoch: 0,
                lease_until: None,
                draining: false,
                awaiting_lease: false,
                fence_logged: false,
                primary_ftp: None,
            }),
            stored: watch::channel(0).0,
            drain_wake: tokio::sync::Notify::new(),
            lost: Mutex::new(std::collections::BTreeSet::new()),
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn ack(&self) -> Ack {
        self.ack
    }

    /// The role as a heartbeat reports it: a primary whose lease lapsed is `fenced`.
    pub fn role(&self) -> Role {
        let st = self.st();
        match st.role {
            Role::Primary if st.lease_until.is_none_or(|l| Instant::now() >= l) => Role::Fenced,
            r => r,
        }
    }

    /// The role the guide gave (a fenced primary is still `primary`).
    pub fn given_role(&self) -> Role {
        self.st().role
    }

    pub fn epoch(&self) -> u64 {
        self.st().epoch
    }

    /// Whether FTP sessions are served at all: only by the primary (even
    /// fenced: reads go on).
    pub fn serving(&self) -> bool {
        self.st().role == Role::Primary
    }

    /// The text a refused FTP connection gets.
    pub fn not_serving_text(&self) -> String {
        let st = self.st();
        let role = match st.role {
            Role::Primary => "primary",
            r => r.as_str(),
        };
        match &st.primary_ftp {
            Some(p) => format!("This drift node is not the primary (it is {role}); the service is at {p}."),
            None => format!("This drift node is not the primary (it is {role}); connect to the primary."),
        }
    }

    /// Whether a change may start now. A lapsed lease is logged once.
    pub fn may_change(&self) -> Result<(), Refusal> {
        let mut st = self.st();
        if st.role != Role::Primary {
            return Err(Refusal::NotPrimary(st.role.as_str()));
        }
        if fenced_now(&mut st, Instant::now()) {
            return Err(Refusal::Fenced);
        }
        if st.draining {
            return Err(Refusal::Draining);
        }
        Ok(())
    }

    /// Checks the lease (the agent calls it every heartbeat); true if fenced.
    pub fn check_lease(&self) -> bool {
        let mut st = self.st();
        st.role == Role::Primary && fenced_now(&mut st, Instant::now())
    }

    /// The guide made this node primary of `epoch`, with a lease until
    /// `until`, or (`None`, a `Promote`) with no lease until the guide
    /// answers a heartbeat sent after it. The lease a heartbeat earns
    /// counts from when the heartbeat was sent, so it always ends before
    /// the guide's; a `Promote` carries no such anchor (it may have waited
    /// in a paused process or a slow link), so it grants none.
    pub fn become_primary(&self, epoch: u64, until: Option<Instant>) {
        let mut st = self.st();
        st.role = Role::Primary;
        st.epoch = st.epoch.max(epoch);
        st.lease_until = until;
        st.awaiting_lease = until.is_none();
        st.draining = false;
        st.fence_logged = false;
        st.primary_ftp = None;
    }

    /// Whether the primary waits for its first lease since a `Promote`.
    pub fn awaiting_lease(&self) -> bool {
        self.st().awaiting_lease
    }

    /// A `Lease` for `epoch`: extends the lease of a primary of that epoch
    /// (never shortens it). Returns whether it applied.
    pub fn renew(&self, epoch: u64, until: Instant) -> bool {
        let mut st = self.st();
        if st.role != Role::Primary || st.epoch != epoch {
            return false;
        }
        st.awaiting_lease = false;
        if st.fence_logged && until > Instant::now() {
            tracing::info!(epoch, "lease renewed: fence lifted");
            st.fence_logged = false;
        }
        st.lease_until = Some(st.lease_until.map_or(until, |l| l.max(until)));
        true
    }

    /// Any role but primary (a `Welcome` as backup, a `Demote`, a higher
    /// epoch): stops acting as primary at once.
    pub fn set_role(&self, role: Role, epoch: u64, primary_ftp: Option<String>) {
        let mut st = self.st();
        if st.role == Role::Primary && role != Role::Primary {
            tracing::warn!(epoch, role = role.as_str(), "no longer primary: changes refused, new FTP sessions get 421");
        }
        st.role = role;
        st.epoch = st.epoch.max(epoch);
        st.lease_until = None;
        st.awaiting_lease = false;
        st.draining = false;
        st.primary_ftp = primary_ftp;
    }

    pub fn set_draining(&self, draining: bool) {
        self.st().draining = draining;
        if draining {
            self.drain_wake.notify_one();
        }
    }

    /// Resolves once draining was asked for (a stored wake-up counts).
    pub async fn drain_asked(&self) {
        self.drain_wake.notified().await
    }

    pub fn draining(&self) -> bool {
        self.st().draining
    }

    /// The guide stored everything up to `seq`.
    pub fn set_stored(&self, seq: u64) {
        self.stored.send_if_modified(|s| {
            let more = seq > *s;
            *s = (*s).max(seq);
            more
        });
    }

    /// Forgets what was stored (the journal was wiped).
    pub fn reset_stored(&self, seq: u64) {
        self.stored.send_replace(seq);
    }

    pub fn stored(&self) -> u64 {
        *self.stored.borrow()
    }

    /// The write at `seq` goes to the guide as absent although no later
    /// change superseded it (its file is being rewritten): whoever waits
    /// for it gets [`AckError::ContentLost`] instead of a success.
    pub fn content_lost(&self, seq: u64) {
        let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        lost.insert(seq);
        while lost.len() > LOST_KEPT {
            lost.pop_first();
        }
    }

    /// Waits until the change at journal seq `seq` may be acknowledged:
    /// at once with `ack = "local"`, else once `Stored` covers it, bounded
    /// by `commit_timeout`; a node that stops being an unfenced primary of
    /// the same epoch gives up at once.
    pub async fn wait_stored(&self, seq: u64) -> Result<(), AckError> {
        if self.ack == Ack::Local {
            return Ok(());
        }
        let epoch = self.epoch();
        let deadline = tokio::time::Instant::now() + self.commit_timeout;
        let mut rx = self.stored.subscribe();
        loop {
            if *rx.borrow_and_update() >= seq {
                let lost = self.lost.lock().unwrap_or_else(|p| p.into_inner()).remove(&seq);
                return if lost { Err(AckError::ContentLost) } else { Ok(()) };
            }
            {
                let mut st = self.st();
                if st.role != Role::Primary || st.epoch != epoch {
                    return Err(AckError::Demoted);
                }
                if fenced_now(&mut st, Instant::now()) {
                    return Err(AckError::Fenced);
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(AckError::Timeout(self.commit_timeout));
            }
            // Wake on a new `Stored`, and now and then to look at the lease.
            let step = (deadline - now).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(step, rx.changed()).await;
        }
    }
}

/// Whether the lease has lapsed at `now`; logs `fenced: lease expired` once per lapse.
fn fenced_now(st: &mut State, now: Instant) -> bool {
    let fenced = st.lease_until.is_none_or(|l| now >= l);
    if fenced && !st.fence_logged && !st.awaiting_lease {
        st.fence_logged = true;
        tracing::warn!(epoch = st.epoch, "fenced: lease expired; refusing changes until the guide renews it");
    }
    fenced
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_lease_ends_before_the_guides() {
        let t0 = Instant::now();
        assert_eq!(lease_end(t0, 600), t0 + Duration::from_millis(540));
        assert_eq!(lease_end(t0, 0), t0);
        // Any receive time at or after the send: the guide's end is later.
        for delay in [0u64, 1, 50, 500] {
            assert!(lease_end(t0, 600) < t0 + Duration::from_millis(delay + 600));
        }
    }

    #[test]
    fn a_promoted_node_takes_changes_only_once_a_lease_arrives() {
        let g = Gate::new(Ack::Guide, Duration::from_secs(1));
        g.become_primary(5, None);
        assert!(g.serving(), "reads are served at once");
        assert!(g.awaiting_lease());
        assert_eq!(g.may_change(), Err(Refusal::Fenced));
        assert_eq!(g.role(), Role::Fenced, "its heartbeat asks for a lease");
        assert!(!g.renew(4, Instant::now() + Duration::from_secs(5)), "a lease of an older epoch");
        assert!(g.awaiting_lease());
        assert!(g.renew(5, Instant::now() + Duration::from_secs(5)));
        assert!(!g.awaiting_lease());
        assert_eq!(g.may_change(), Ok(()));
        assert_eq!(g.role(), Role::Primary);
    }

    #[test]
    fn only_an_unfenced_undrained_primary_takes_changes() {
        let g = Gate::new(Ack::Guide, Duration::from_secs(1));
        assert!(!g.serving());
        assert_eq!(g.may_change(), Err(Refusal::NotPrimary("catching-up")));
        g.become_primary(3, Some(Instant::now() + Duration::from_secs(10)));
        assert!(g.serving());
        assert_eq!(g.may_change(), Ok(()));
        assert_eq!(g.role(), Role::Primary);
        g.set_draining(true);
        assert_eq!(g.may_change(), Err(Refusal::Draining));
        g.set_draining(false);
        // A lease in the past fences; a renewal of the same epoch lifts it.
        g.become_primary(3, Some(Instant::now() - Duration::from_millis(1)));
        assert_eq!(g.may_change(), Err(Refusal::Fenced));
        assert!(g.check_lease());
        assert_eq!(g.role(), Role::Fenced);
        assert!(g.serving(), "a fenced primary still serves reads");
        assert!(!g.renew(2, Instant::now() + Duration::from_secs(5)), "a lease of another epoch");
        assert!(g.renew(3, Instant::now() + Duration::from_secs(5)));
        assert_eq!(g.may_change(), Ok(()));
        g.set_role(Role::Backup, 4, Some("10.0.0.2:21".into()));
        assert!(!g.serving());
        assert!(g.not_serving_text().contains("10.0.0.2:21"));
        assert_eq!(g.epoch(), 4);
        assert!(!g.renew(4, Instant::now() + Duration::from_secs(5)), "a backup has no lease");
    }

    #[tokio::test]
    async fn a_success_reply_waits_for_stored_and_gives_up_in_time() {
        let g = std::sync::Arc::new(Gate::new(Ack::Guide, Duration::from_millis(300)));
        g.become_primary(1, Some(Instant::now() + Duration::from_secs(30)));
        g.set_stored(4);
        assert_eq!(g.wait_stored(4).await, Ok(()));
        let t = Instant::now();
        assert_eq!(g.wait_stored(5).await, Err(AckError::Timeout(Duration::from_millis(300))));
        assert!(t.elapsed() >= Duration::from_millis(300));
        let g2 = g.clone();
        let waiter = tokio::spawn(async move { g2.wait_stored(6).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        g.set_stored(6);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        // Demoted while waiting: no acknowledgement.
        let g2 = g.clone();
        let waiter = tokio::spawn(async move { g2.wait_stored(7).await });
        tokio::time::sleep(Duration::from_millis(30)).await;
        g.set_role(Role::Backup, 2, None);
        assert_eq!(waiter.await.unwrap(), Err(AckError::Demoted));
        // Fenced while waiting.
        g.become_primary(2, Some(Instant::now() + Duration::from_millis(60)));
        assert_eq!(g.wait_stored(8).await, Err(AckError::Fenced));
        // ack = "local" never waits.
        let l = Gate::new(Ack::Local, Duration::from_millis(1));
        assert_eq!(l.wait_stored(100).await, Ok(()));
    }

    #[tokio::test]
    async fn a_write_shipped_without_its_content_is_never_acknowledged() {
        let g = Gate::new(Ack::Guide, Duration::from_secs(5));
        g.become_primary(1, Some(Instant::now() + Duration::from_secs(30)));
        g.content_lost(3);
        g.set_stored(4);
        assert_eq!(g.wait_stored(3).await, Err(AckError::ContentLost));
        assert_eq!(g.wait_stored(4).await, Ok(()), "only that write");
        for seq in 10..10 + LOST_KEPT as u64 + 5 {
            g.content_lost(seq);
        }
        assert!(g.lost.lock().unwrap().len() <= LOST_KEPT, "bounded");
    }
}
