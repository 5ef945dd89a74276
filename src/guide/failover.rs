//! The lease watch and passive migration (failover). Every 25 ms the
//! monitor looks at the primary: its link closed, or its lease (as the
//! guide granted it) ran out → failover: announce `switching`, wait until
//! the lease has certainly expired, choose the target, forward it the
//! tail, bump the epoch through the coordination interface, `Promote`,
//! and announce `serving` once the target's heartbeat says `primary`.
//! Lock order everywhere: the history before the inner state.
//! The monitor also starts auto migrations (threat or load over their
//! threshold for `sustain_secs`) and saves node status to the store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::coord::CoordState;
use super::migrate::{self, Cause, Record};
use super::state::{choose_target, Guide, Phase};
use crate::cluster::msg::{Down, Role};

const TICK: Duration = Duration::from_millis(25);
const SAVE_EVERY: Duration = Duration::from_secs(2);

enum Action {
    Failover { old: String, detected: Instant, gen: u64 },
    Auto(Cause, String),
}

/// Runs until the guide stops (the task is dropped).
pub async fn monitor(guide: Arc<Guide>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut saved = Instant::now();
    loop {
        tick.tick().await;
        let now = Instant::now();
        match decide(&guide, now) {
            None => {}
            Some(Action::Failover { old, detected, gen }) => {
                tokio::spawn(passive(guide.clone(), old, detected, gen));
            }
            Some(Action::Auto(cause, reason)) => {
                let g = guide.clone();
                tokio::spawn(async move {
                    if let Err(e) = migrate::active(&g, None, Some(reason), cause).await {
                        warn!("{} migration failed: {e}", cause.as_str());
                    }
                });
            }
        }
        if now.duration_since(saved) >= SAVE_EVERY {
            saved = now;
            save_nodes(&guide);
        }
    }
}

fn decide(guide: &Guide, now: Instant) -> Option<Action> {
    let mut inner = guide.inner();
    if inner.busy || inner.epoch == 0 {
        return None;
    }
    let old = inner.primary.clone()?;
    let expired = now > inner.lease_until;
    let lost = inner.primary_lost_at.is_some() && now > inner.grace_until;
    if expired || lost {
        let detected = inner.primary_lost_at.unwrap_or(now).min(now);
        inner.busy = true;
        inner.lease_paused = true;
        inner.refuse_entries = true;
        inner.phase = Phase::Switching;
        inner.failover_waiting = true;
        inner.failover_gen += 1;
        let gen = inner.failover_gen;
        if expired {
            warn!(primary = %old, epoch = inner.epoch, "the primary's lease expired: failover");
        } else {
            warn!(primary = %old, epoch = inner.epoch, "the primary's link closed: failover");
        }
        return Some(Action::Failover { old, detected, gen });
    }
    let sustain = guide.cfg.sustain;
    if inner.last_auto.is_some_and(|t| now.duration_since(t) < sustain) {
        return None;
    }
    let n = inner.nodes.get(&old)?;
    let action = if n.over_threat_since.is_some_and(|t| now.duration_since(t) >= sustain) {
        Some(Action::Auto(Cause::Threat, format!("threat {} over {} for {}s", n.threat(), guide.cfg.threat_threshold, sustain.as_secs())))
    } else if n.over_load_since.is_some_and(|t| now.duration_since(t) >= sustain) {
        Some(Action::Auto(Cause::Load, format!("{} sessions over {} for {}s", n.sessions(), guide.cfg.load_threshold.unwrap_or(0), sustain.as_secs())))
    } else {
        None
    };
    if action.is_some() {
        inner.last_auto = Some(now);
    }
    action
}

/// Passive migration away from `old`, lost at `detected`.
async fn passive(guide: Arc<Guide>, old: String, detected: Instant, gen: u64) {
    let mut rec = Record::new(Cause::Failover, Some(old.clone()), None);
    let last_hb = guide.inner().nodes.get(&old).and_then(|n| n.last_hb);
    rec.started_at(last_hb.filter(|t| *t < detected).unwrap_or(detected));
    guide.announce_now();
    rec.phase("detect", detected);
    let lease_until = guide.inner().lease_until;
    tokio::time::sleep_until(tokio::time::Instant::from_std(lease_until)).await;
    {
        let mut inner = guide.inner();
        if !inner.failover_waiting || inner.failover_gen != gen {
            info!(primary = %old, "failover cancelled: the primary came back within its lease");
            return;
        }
        inner.failover_waiting = false;
    }
    rec.phase("wait_lease", Instant::now());
    let mut quiet_until = Instant::now();
    let mut excluded: Option<String> = None;
    // Bounded per attempt; attempts go on until a node can take over.
    loop {
        let now = Instant::now();
        let target = {
            // History before inner: the documented lock order.
            let hseq = guide.history().seq();
            let inner = guide.inner();
            choose_target(&inner, now, guide.lease(), guide.cfg.threat_threshold, excluded.as_deref(), hseq)
                .or_else(|| choose_target(&inner, now, guide.lease(), guide.cfg.threat_threshold, None, hseq))
        };
        let Some(target) = target else {
            if now >= quiet_until {
                warn!("failover: no live node can take over (waiting for one)");
                quiet_until = now + Duration::from_secs(10);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        info!(from = %old, to = %target, "failover target chosen");
        if !catch_up(&guide, &target).await {
            warn!(node = %target, "failover target did not catch up within {:?}", guide.cfg.catch_up_timeout);
            excluded = Some(target);
            continue;
        }
        rec.phase("catch_up", Instant::now());
        rec.to = Some(target.clone());
        match promote(&guide, &target, None, "failover").await {
            Ok(epoch) => {
                rec.epoch = epoch;
                finish(&guide, &target, epoch, rec).await;
            }
            Err(e) => {
                warn!("failover: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        return;
    }
}

/// Waits until `target` holds the whole history (or is lost).
/// A node whose journal runs past the history never counts as caught up:
/// it holds changes the guide never stored.
pub async fn catch_up(guide: &Guide, target: &str) -> bool {
    let lease = guide.lease();
    guide
        .wait_for(guide.cfg.catch_up_timeout, |inner, h| {
            inner.nodes.get(target).is_none_or(|n| n.applied >= h.seq() || !n.live(Instant::now(), lease))
        })
        .await
        && {
            let hseq = guide.history().seq();
            guide.inner().nodes.get(target).is_some_and(|n| n.live(Instant::now(), lease) && n.applied == hseq)
        }
}

/// Bumps the epoch with `target` as primary, sends `Promote` (and
/// `Demote` to `old`). Returns the new epoch.
pub async fn promote(guide: &Guide, target: &str, old: Option<&str>, why: &str) -> Result<u64, String> {
    let now = Instant::now();
    // History before inner (the lock order). Entries are refused or the
    // primary is gone by now, so the history stands still until the
    // target ships as primary of the new epoch.
    let hseq = guide.history().seq();
    let mut inner = guide.inner();
    let next = CoordState { epoch: inner.epoch + 1, primary: Some(target.to_owned()) };
    match guide.coord.compare_and_set(inner.epoch, &next) {
        Ok(true) => {}
        Ok(false) => {
            let cur = guide.coord.load().map_err(|e| e.to_string())?;
            inner.epoch = cur.epoch;
            return Err(format!("the epoch moved to {} meanwhile", cur.epoch));
        }
        Err(e) => return Err(format!("cannot record epoch {}: {e}", next.epoch)),
    }
    let epoch = next.epoch;
    inner.epoch = epoch;
    inner.primary = Some(target.to_owned());
    inner.lease_until = now + guide.lease();
    inner.lease_paused = false;
    inner.refuse_entries = false;
    inner.drained = None;
    inner.primary_lost_at = None;
    let lease_ms = guide.lease().as_millis() as u64;
    if let Some(n) = inner.nodes.get_mut(target) {
        n.assigned = Role::Primary;
        n.demote_sent = None;
        if let Some(l) = &n.link {
            let _ = l.tx.send(Down::Promote { epoch, lease_ms, history_seq: Some(hseq) });
        }
    }
    if let Some(o) = old {
        if let Some(n) = inner.nodes.get_mut(o) {
            n.assigned = Role::Backup;
            n.demote_sent = Some(now);
            if let Some(l) = &n.link {
                let _ = l.tx.send(Down::Demote { epoch, reason: format!("{why}: {target} is primary of epoch {epoch}") });
            }
        }
    }
    drop(inner);
    info!(node = target, epoch, "promoted");
    guide.announce_now();
    Ok(epoch)
}

/// Waits for the promoted target to serve, then announces `serving` and
/// records the migration. Returns whether it serves.
pub async fn finish(guide: &Guide, target: &str, epoch: u64, mut rec: Record) -> bool {
    let limit = (guide.lease() * 4).max(Duration::from_secs(5));
    let serving = guide
        .wait_for(limit, |inner, _| {
            inner.epoch != epoch
                || inner.nodes.get(target).and_then(|n| n.hb.as_ref()).is_some_and(|hb| hb.role == Role::Primary && hb.epoch == epoch)
        })
        .await
        && guide.inner().epoch == epoch;
    rec.phase("promote", Instant::now());
    {
        let mut inner = guide.inner();
        inner.busy = false;
        if serving {
            inner.phase = Phase::Serving;
        }
    }
    if serving {
        info!(node = target, epoch, cause = rec.cause.as_str(), duration_ms = rec.total_ms(), "serving");
        guide.announce_now();
    } else {
        warn!(node = target, epoch, "the promoted node did not report as primary within {limit:?}");
    }
    rec.save(guide);
    serving
}

/// Saves the status of nodes that changed.
pub fn save_nodes(guide: &Guide) {
    let rows: Vec<(String, serde_json::Value)> = {
        let hseq = guide.history().seq();
        let mut inner = guide.inner();
        let now = Instant::now();
        let lease = guide.lease();
        inner
            .nodes
            .values_mut()
            .filter(|n| n.dirty)
            .map(|n| {
                n.dirty = false;
                (n.id.clone(), super::status::node_json(n, hseq, now, lease, None))
            })
            .collect()
    };
    if rows.is_empty() {
        return;
    }
    if let Err(e) = guide.store.save_nodes(&rows) {
        warn!("cannot save node status: {e}");
    }
}
