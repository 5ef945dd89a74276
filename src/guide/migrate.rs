//! Active migration (`drift migrate`, or the primary's threat or load
//! over its threshold for `sustain_secs`): `switching`, `Drain` to the
//! primary (it refuses new changes and ships all it journaled), wait for
//! `Drained` and for the history to hold its last seq, forward the tail
//! to the target, bump the epoch, `Demote` the old primary and `Promote`
//! the target, `serving`. Also the migration record every switch leaves.

use std::time::Instant;

use tracing::{info, warn};

use super::failover::{catch_up, finish, promote};
use super::state::{choose_target, Guide, Phase};
use crate::cluster::msg::Down;

/// Why the primary moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Failover,
    Migrate,
    Threat,
    Load,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Failover => "failover",
            Cause::Migrate => "migrate",
            Cause::Threat => "threat",
            Cause::Load => "load",
        }
    }
}

/// One migration, as `drift status` lists it.
pub struct Record {
    pub cause: Cause,
    pub from: Option<String>,
    pub to: Option<String>,
    pub reason: Option<String>,
    pub epoch: u64,
    pub started: Instant,
    pub at: time::OffsetDateTime,
    last: Instant,
    phases: Vec<(&'static str, u64)>,
}

impl Record {
    pub fn new(cause: Cause, from: Option<String>, reason: Option<String>) -> Record {
        let now = Instant::now();
        Record { cause, from, to: None, reason, epoch: 0, started: now, at: time::OffsetDateTime::now_utc(), last: now, phases: vec![] }
    }

    /// Moves the start back to `t` (a failure noticed after it happened).
    pub fn started_at(&mut self, t: Instant) {
        let back = self.started.saturating_duration_since(t);
        self.started = t;
        self.last = t;
        self.at -= back;
    }

    /// Ends phase `name` at `at`.
    pub fn phase(&mut self, name: &'static str, at: Instant) {
        let ms = at.saturating_duration_since(self.last).as_millis() as u64;
        self.phases.push((name, ms));
        self.last = self.last.max(at);
    }

    pub fn total_ms(&self) -> u64 {
        self.last.saturating_duration_since(self.started).as_millis() as u64
    }

    pub fn json(&self) -> serde_json::Value {
        let mut phases = serde_json::Map::new();
        for (name, ms) in &self.phases {
            phases.insert(format!("{name}_ms"), (*ms).into());
        }
        serde_json::json!({
            "epoch": self.epoch,
            "from": self.from,
            "to": self.to,
            "cause": self.cause.as_str(),
            "reason": self.reason,
            "at": drift_fs::journal::format_time(self.at),
            "duration_ms": self.total_ms(),
            "phases": phases,
        })
    }

    pub fn save(&self, guide: &Guide) {
        if let Err(e) = guide.store.add_migration(&self.json()) {
            warn!("cannot record the migration: {e}");
        }
    }
}

/// Picks the target of an active migration away from `old`.
fn target_for(guide: &Guide, inner: &super::state::Inner, old: &str, to: Option<&str>) -> Result<String, String> {
    let now = Instant::now();
    let lease = guide.lease();
    match to {
        Some(t) if t == old => Err(format!("{t} is already the primary")),
        Some(t) => {
            let n = inner.nodes.get(t).ok_or_else(|| format!("no node {t} is known"))?;
            if !n.live(now, lease) {
                return Err(format!("node {t} is not connected"));
            }
            if n.threat() > guide.cfg.threat_threshold {
                return Err(format!("node {t} is over the threat threshold ({} > {})", n.threat(), guide.cfg.threat_threshold));
            }
            Ok(t.to_owned())
        }
        // (`inner` is held, so the history cannot be read here: the lock
        // order is history first. `catch_up` refuses a target whose
        // journal runs past the history.)
        None => choose_target(inner, now, lease, guide.cfg.threat_threshold, Some(old), u64::MAX)
            .ok_or_else(|| "no other live node can take over".to_string()),
    }
}

/// Runs an active migration; returns the new epoch and primary once it
/// serves, or why it failed (the old primary then carries on).
pub async fn active(guide: &Guide, to: Option<String>, reason: Option<String>, cause: Cause) -> Result<(u64, String), String> {
    let Ok(_one) = guide.migrating.try_lock() else {
        return Err("another migration is under way".into());
    };
    let (old, epoch, target) = {
        let mut inner = guide.inner();
        if inner.busy || inner.phase != Phase::Serving {
            return Err("a failover or migration is under way".into());
        }
        let old = inner.primary.clone().ok_or("there is no primary to migrate from")?;
        if !inner.nodes.get(&old).is_some_and(|n| n.live(Instant::now(), guide.lease())) {
            return Err(format!("the primary {old} is not connected"));
        }
        let target = target_for(guide, &inner, &old, to.as_deref())?;
        inner.busy = true;
        inner.phase = Phase::Switching;
        inner.lease_paused = true;
        inner.drained = None;
        (old, inner.epoch, target)
    };
    info!(from = %old, to = %target, cause = cause.as_str(), reason = reason.as_deref().unwrap_or(""), "migration: draining the primary");
    guide.announce_now();
    let mut rec = Record::new(cause, Some(old.clone()), reason.clone());
    rec.to = Some(target.clone());
    if !guide.send_to(&old, Down::Drain { epoch }) {
        return Err(abort(guide, &old, "the primary's link is gone"));
    }
    let limit = guide.cfg.catch_up_timeout;
    let drained = guide
        .wait_for(limit, |inner, _| {
            inner.drained.is_some_and(|(e, _)| e == epoch) || inner.nodes.get(&old).is_none_or(|n| n.link.is_none())
        })
        .await;
    let got = guide.inner().drained;
    let last_seq = match got {
        Some((e, s)) if drained && e == epoch => s,
        _ if drained => return Err(abort(guide, &old, "the primary's link closed before it drained")),
        _ => return Err(abort(guide, &old, &format!("the primary did not drain within {limit:?}"))),
    };
    if !guide.wait_for(limit, |_, h| h.seq() >= last_seq).await {
        return Err(abort(guide, &old, &format!("the primary's tail up to {last_seq} did not arrive within {limit:?}")));
    }
    let now = Instant::now();
    rec.phase("detect", now);
    rec.phase("wait_lease", now);
    guide.inner().refuse_entries = true;
    if !catch_up(guide, &target).await {
        return Err(abort(guide, &old, &format!("{target} did not catch up within {limit:?}")));
    }
    rec.phase("catch_up", Instant::now());
    let why = match &reason {
        Some(r) => format!("migration ({r})"),
        None => "migration".to_string(),
    };
    let new_epoch = match promote(guide, &target, Some(&old), &why).await {
        Ok(e) => e,
        Err(e) => return Err(abort(guide, &old, &e)),
    };
    rec.epoch = new_epoch;
    if finish(guide, &target, new_epoch, rec).await {
        Ok((new_epoch, target))
    } else {
        Err(format!("{target} was promoted to epoch {new_epoch} but did not report as primary; the guide fails over if its lease runs out"))
    }
}

/// Gives the role back to the old primary: it is told to say hello again
/// (as the primary of the same epoch); returns the message.
fn abort(guide: &Guide, old: &str, why: &str) -> String {
    warn!(primary = old, "migration aborted: {why}");
    let grace = guide.lease() + std::time::Duration::from_secs(2);
    {
        let mut inner = guide.inner();
        let now = Instant::now();
        inner.busy = false;
        inner.phase = Phase::Serving;
        inner.lease_paused = false;
        inner.refuse_entries = false;
        inner.drained = None;
        let epoch = inner.epoch;
        let connected = inner.nodes.get(old).is_some_and(|n| n.link.is_some());
        if connected {
            // It says hello again and keeps its role; until then its
            // absence is no failure.
            inner.lease_until = now + grace;
            inner.grace_until = now + grace;
        } else {
            // Gone: the lease watch fails over once its lease ran out.
            inner.lease_until = inner.lease_until.min(now + guide.lease());
            inner.grace_until = now;
        }
        if let Some(l) = inner.nodes.get(old).and_then(|n| n.link.as_ref()) {
            let _ = l.tx.send(Down::Demote { epoch, reason: format!("migration aborted ({why}): say hello again") });
        }
    }
    guide.announce_now();
    format!("migration failed: {why}")
}
