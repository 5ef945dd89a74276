//! The threat level a node reports (0–100): the larger of the operator's
//! source (`threat_file` or `threat_command`) and the node's own signals.
//! The signals (documented in `docs/node.md`):
//! - failed logins: 5 points per failed login in the last minute
//!   (20 a minute → 100);
//! - refused connections (address filter, session limits): 2 points per
//!   refusal in the last minute (50 a minute → 100);
//! - a filling disk: 0 while 10 % or more of the backing filesystem is
//!   free, rising linearly to 100 when it is full.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::config::ThreatSource;

static FAILED_LOGINS: AtomicU64 = AtomicU64::new(0);
static REFUSED_CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// A login failed (called by the authenticator).
pub fn note_failed_login() {
    FAILED_LOGINS.fetch_add(1, Ordering::Relaxed);
}

/// A connection was refused by the address filter or a session limit.
pub fn note_refused_connection() {
    REFUSED_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
}

const WINDOW: Duration = Duration::from_secs(60);
/// How often the operator's source is read.
const SOURCE_EVERY: Duration = Duration::from_secs(1);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// One signal's score with its reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Level {
    pub threat: u8,
    pub reason: String,
}

/// Counts of a monotonic counter over the last minute.
#[derive(Debug, Default)]
struct Rate {
    samples: VecDeque<(Instant, u64)>,
}

impl Rate {
    /// Events in the last [`WINDOW`], given the counter's value now.
    fn per_window(&mut self, now: Instant, count: u64) -> u64 {
        self.samples.push_back((now, count));
        while self.samples.len() > 2 && self.samples.front().is_some_and(|(t, _)| now.duration_since(*t) > WINDOW) {
            self.samples.pop_front();
        }
        // Bounded: one sample per heartbeat at most for a minute.
        while self.samples.len() > 4096 {
            self.samples.pop_front();
        }
        count - self.samples.front().map_or(count, |(_, c)| (*c).min(count))
    }
}

/// The score of the node's own signals.
pub fn own_level(failed_logins: u64, refused: u64, free_bytes: u64, total_bytes: u64) -> Level {
    let mut best = Level { threat: 0, reason: String::new() };
    let mut take = |threat: u64, reason: String| {
        let t = threat.min(100) as u8;
        if t > best.threat {
            best = Level { threat: t, reason };
        }
    };
    take(failed_logins * 5, format!("{failed_logins} failed logins in the last minute"));
    take(refused * 2, format!("{refused} refused connections in the last minute"));
    if total_bytes > 0 {
        let free = free_bytes as f64 / total_bytes as f64;
        if free < 0.10 {
            let t = ((0.10 - free) / 0.10 * 100.0).round() as u64;
            take(t, format!("disk filling: {:.1} % free", free * 100.0));
        }
    }
    best
}

/// Parses the operator's number (first token, 0–100, fractions rounded).
pub fn parse_level(text: &str) -> Option<u8> {
    let v: f64 = text.split_whitespace().next()?.parse().ok()?;
    v.is_finite().then(|| v.clamp(0.0, 100.0).round() as u8)
}

/// Computes the threat for each heartbeat.
#[derive(Debug)]
pub struct Threat {
    source: ThreatSource,
    logins: Rate,
    refused: Rate,
    operator: Option<(Instant, Level)>,
}

impl Threat {
    pub fn new(source: ThreatSource) -> Threat {
        Threat { source, logins: Rate::default(), refused: Rate::default(), operator: None }
    }

    /// The operator's level, read at most once a second.
    async fn operator(&mut self) -> Level {
        let now = Instant::now();
        if let Some((at, l)) = &self.operator {
            if now.duration_since(*at) < SOURCE_EVERY {
                return l.clone();
            }
        }
        let level = match &self.source {
            ThreatSource::None => Level { threat: 0, reason: String::new() },
            ThreatSource::File(p) => match tokio::fs::read_to_string(p).await {
                Ok(text) => match parse_level(&text) {
                    Some(t) => Level { threat: t, reason: format!("operator ({})", p.display()) },
                    None => {
                        tracing::warn!(path = %p.display(), "threat file does not hold a number 0-100; ignoring it");
                        Level { threat: 0, reason: String::new() }
                    }
                },
                // No file: no operator threat (it may be written later).
                Err(_) => Level { threat: 0, reason: String::new() },
            },
            ThreatSource::Command(c) => run_command(c).await,
        };
        self.operator = Some((now, level.clone()));
        level
    }

    /// The level to report now.
    pub async fn level(&mut self, free_bytes: u64, total_bytes: u64) -> Level {
        let now = Instant::now();
        let logins = self.logins.per_window(now, FAILED_LOGINS.load(Ordering::Relaxed));
        let refused = self.refused.per_window(now, REFUSED_CONNECTIONS.load(Ordering::Relaxed));
        let own = own_level(logins, refused, free_bytes, total_bytes);
        let op = self.operator().await;
        if op.threat >= own.threat && op.threat > 0 {
            op
        } else {
            own
        }
    }
}

async fn run_command(c: &str) -> Level {
    let zero = Level { threat: 0, reason: String::new() };
    let child = tokio::process::Command::new("sh")
        .args(["-c", c])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(command = c, error = %e, "cannot run the threat command");
            return zero;
        }
    };
    match tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => match parse_level(&String::from_utf8_lossy(&out.stdout)) {
            Some(t) => Level { threat: t, reason: "operator (threat command)".into() },
            None => {
                tracing::warn!(command = c, "the threat command did not print a number 0-100; ignoring it");
                zero
            }
        },
        Ok(Err(e)) => {
            tracing::warn!(command = c, error = %e, "threat command failed");
            zero
        }
        Err(_) => {
            tracing::warn!(command = c, "threat command took more than 2 s; ignoring it");
            zero
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_score_as_documented() {
        assert_eq!(own_level(0, 0, 50, 100).threat, 0);
        assert_eq!(own_level(4, 0, 50, 100).threat, 20);
        assert_eq!(own_level(40, 0, 50, 100).threat, 100);
        assert_eq!(own_level(0, 10, 50, 100).threat, 20);
        assert_eq!(own_level(0, 0, 5, 100).threat, 50);
        assert_eq!(own_level(0, 0, 0, 100).threat, 100);
        assert!(own_level(1, 30, 50, 100).reason.contains("refused"));
        assert_eq!(parse_level("42\n"), Some(42));
        assert_eq!(parse_level("250"), Some(100));
        assert_eq!(parse_level("x"), None);
    }

    #[tokio::test]
    async fn the_operator_file_wins_when_higher() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("threat");
        std::fs::write(&f, "70\n").unwrap();
        let mut t = Threat::new(ThreatSource::File(f));
        let l = t.level(50, 100).await;
        assert_eq!(l.threat, 70);
        assert!(l.reason.contains("operator"));
        let mut t = Threat::new(ThreatSource::Command("echo 33".into()));
        assert_eq!(t.level(50, 100).await.threat, 33);
    }
}
