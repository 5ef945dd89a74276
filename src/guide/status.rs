//! The status object (`drift status --json`, `StatusReply.status`): the
//! fields ARCHITECTURE.md fixes, plus `history_seq`, per node `lag_bytes`,
//! `lag_ms`, `load`, `version`, `threat_reason`, `progress`, `epoch`, and
//! `digest_mismatches`; and its readable table.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::history::History;
use super::state::{Guide, NodeInfo};

/// How many migrations the status lists (the most recent, oldest first).
const MIGRATIONS_SHOWN: usize = 50;

/// One node's object.
pub fn node_json(n: &NodeInfo, hseq: u64, now: Instant, lease: Duration, history: Option<&History>) -> Value {
    let role = n.shown_role(now, lease, hseq);
    let lag_entries = hseq.saturating_sub(n.applied);
    let (lag_bytes, lag_ms) = match history {
        Some(h) if lag_entries > 0 => {
            let oldest = h.get(n.applied + 1).map_or(0, |e| e.wire.time_ns);
            let now_ns = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64;
            (h.bytes_after(n.applied), ((now_ns - oldest).max(0) / 1_000_000) as u64)
        }
        _ => (0, 0),
    };
    let hb = n.hb.as_ref();
    json!({
        "id": n.id,
        "role": role.as_str(),
        "ftp": n.ftp,
        "pid": n.pid,
        "version": n.version,
        "epoch": hb.map(|h| h.epoch),
        "heartbeat_age_ms": n.last_hb.filter(|_| n.link.is_some()).map(|t| now.saturating_duration_since(t).as_millis() as u64),
        "last_seen": n.last_seen.map(drift_fs::journal::format_time),
        "applied_seq": n.applied,
        "lag_entries": lag_entries,
        "lag_bytes": lag_bytes,
        "lag_ms": lag_ms,
        "threat": hb.map_or(0, |h| h.threat),
        "threat_reason": hb.map(|h| h.threat_reason.clone()).unwrap_or_default(),
        "load": hb.map(|h| json!({
            "sessions": h.load.sessions,
            "transfers": h.load.transfers,
            "cpu_pct": h.load.cpu_pct,
            "free_disk_bytes": h.load.free_disk_bytes,
        })),
        "progress": hb.and_then(|h| h.progress),
        "quarantines": hb.map(|h| h.quarantines.clone()).unwrap_or_default(),
    })
}

/// The whole status object.
pub fn json(guide: &Guide) -> Value {
    let now = Instant::now();
    let lease = guide.lease();
    let history = guide.history();
    let hseq = history.seq();
    let (top, nodes) = {
        let inner = guide.inner();
        let nodes: Vec<Value> = inner.nodes.values().map(|n| node_json(n, hseq, now, lease, Some(&history))).collect();
        (json!({ "epoch": inner.epoch, "primary": inner.primary, "state": inner.phase.as_str() }), nodes)
    };
    drop(history);
    let quarantines: Vec<Value> = nodes
        .iter()
        .flat_map(|n| {
            let id = n["id"].clone();
            n["quarantines"].as_array().cloned().unwrap_or_default().into_iter().map(move |q| json!({ "node": id, "name": q }))
        })
        .collect();
    let migrations = guide.store.migrations(MIGRATIONS_SHOWN).unwrap_or_else(|e| {
        tracing::warn!("cannot read migrations: {e}");
        vec![]
    });
    let mut v = top;
    v["history_seq"] = hseq.into();
    v["nodes"] = nodes.into();
    v["quarantines"] = quarantines.into();
    v["migrations"] = migrations.into();
    v["guides"] = json!([{ "id": guide.cfg.id, "role": "leader", "pid": guide.pid, "history_seq": hseq }]);
    v["digest_mismatches"] = guide.digest_mismatches.load(Ordering::Relaxed).into();
    v["lease_ms"] = (lease.as_millis() as u64).into();
    v["uptime_secs"] = guide.started.elapsed().as_secs().into();
    v
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The readable form of a status object.
pub fn table(v: &Value) -> String {
    let mut out = String::new();
    out += &format!(
        "epoch {}  primary {}  state {}  history_seq {}  digest mismatches {}\n",
        s(&v["epoch"]),
        s(&v["primary"]),
        s(&v["state"]),
        s(&v["history_seq"]),
        s(&v["digest_mismatches"])
    );
    out += "\nNODE          ROLE         FTP                    PID      APPLIED   LAG        LAG MS   HB AGE   THREAT  SESSIONS\n";
    for n in v["nodes"].as_array().into_iter().flatten() {
        out += &format!(
            "{:<13} {:<12} {:<22} {:<8} {:<9} {:<10} {:<8} {:<8} {:<7} {}\n",
            s(&n["id"]),
            s(&n["role"]),
            s(&n["ftp"]),
            s(&n["pid"]),
            s(&n["applied_seq"]),
            format!("{} ({} B)", s(&n["lag_entries"]), s(&n["lag_bytes"])),
            s(&n["lag_ms"]),
            n["heartbeat_age_ms"].as_u64().map_or("-".into(), |a| format!("{a}ms")),
            s(&n["threat"]),
            s(&n["load"]["sessions"]),
        );
        if let Some(p) = n["progress"].as_f64() {
            out += &format!("{:<13} catching up: {:.0}%\n", "", p * 100.0);
        }
    }
    let q = v["quarantines"].as_array().cloned().unwrap_or_default();
    out += &format!("\nquarantines: {}\n", if q.is_empty() { "none".to_string() } else { String::new() });
    for q in q {
        out += &format!("  {}: {}\n", s(&q["node"]), s(&q["name"]));
    }
    let m = v["migrations"].as_array().cloned().unwrap_or_default();
    out += &format!("\nrecent migrations: {}\n", if m.is_empty() { "none".to_string() } else { String::new() });
    for m in m.iter().rev().take(10) {
        out += &format!(
            "  {}  epoch {}  {} -> {}  {}  {} ms{}\n",
            s(&m["at"]),
            s(&m["epoch"]),
            s(&m["from"]),
            s(&m["to"]),
            s(&m["cause"]),
            s(&m["duration_ms"]),
            m["reason"].as_str().map(|r| format!("  ({r})")).unwrap_or_default()
        );
    }
    out
}
