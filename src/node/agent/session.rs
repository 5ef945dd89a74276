//! One control link to the guide: `Hello`, `Welcome` or `Refused`, then
//! heartbeats every `heartbeat_ms` and the guide's messages until the link
//! ends. Every helper task (writer, reader, shipper, receiver, applier)
//! belongs to the session and ends with it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::apply::Applier;
use super::gate::lease_end;
use super::threat::Threat;
use super::{load, quarantine, AbortOnDrop, Agent, MIN_BACKOFF};
use crate::cluster::link::{self, LinkError};
use crate::cluster::msg::{Down, Heartbeat, Hello, Load, NodeHello, PeerKind, Role, Up, WireEntry, MAX_TAIL};
use crate::cluster::VERSION;
use crate::xfer::XferError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat send times kept to match `Lease` answers.
const HB_KEPT: usize = 256;
/// A primary fenced this long gives up its link and dials again: a link
/// cut without a reset (a partition) would otherwise wait for TCP's
/// retransmission timers before it is noticed.
const FENCED_REDIAL: Duration = Duration::from_secs(1);

/// How a session ended without an error.
#[derive(Debug)]
pub enum End {
    /// Say `Hello` again at once (a `Demote`, a higher epoch, a quarantine).
    Again,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("the guide refused this node: {0}")]
    Refused(String),
    #[error("unexpected message from the guide: {0}")]
    Protocol(String),
    #[error("{0}")]
    Local(String),
}

impl SessionError {
    /// One readable line per failed attempt.
    pub fn log(&self, guide: &str, retry: Duration) {
        let retry_ms = retry.as_millis() as u64;
        match self {
            SessionError::Link(LinkError::Xfer(XferError::Auth { detail, .. })) => tracing::error!(
                %guide, retry_ms,
                "handshake with the guide failed: cluster key not accepted ({detail}); check cluster.key_file"
            ),
            SessionError::Link(LinkError::Connect { source, .. }) => {
                tracing::warn!(%guide, retry_ms, "cannot reach the guide: {source}")
            }
            SessionError::Refused(reason) => tracing::error!(%guide, retry_ms, "refused by the guide: {reason}"),
            other => tracing::warn!(%guide, retry_ms, "link to the guide ended: {other}"),
        }
    }
}

type Result<T> = std::result::Result<T, SessionError>;

fn local(e: impl std::fmt::Display) -> SessionError {
    SessionError::Local(e.to_string())
}

/// A blocking task that panicked or was cancelled.
#[derive(Debug, thiserror::Error)]
#[error("background task failed: {0}")]
pub struct TaskFailed(String);

impl From<TaskFailed> for String {
    fn from(t: TaskFailed) -> String {
        t.to_string()
    }
}

/// [`blocking`] for work whose errors are only reported as text.
async fn text_blocking<T: Send + 'static>(f: impl FnOnce() -> std::result::Result<T, String> + Send + 'static) -> std::result::Result<T, String> {
    blocking(f).await
}

/// Runs blocking work (journal, files) off the async workers.
pub async fn blocking<T: Send + 'static, E: From<TaskFailed> + Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, E> + Send + 'static,
) -> std::result::Result<T, E> {
    tokio::task::spawn_blocking(f).await.map_err(|e| E::from(TaskFailed(e.to_string())))?
}

/// The session's state beside the link.
struct Link<'a> {
    agent: &'a Arc<Agent>,
    out: mpsc::UnboundedSender<Up>,
    hb: u64,
    hb_sent: VecDeque<(u64, Instant)>,
    threat: Threat,
    cpu: load::Cpu,
    quarantines: Vec<String>,
    /// History seq at `Welcome`: a catching-up node is a backup once it has applied it.
    catch_up_to: u64,
    shipper: Option<AbortOnDrop>,
    applier: Option<Applier>,
    failed_tx: mpsc::UnboundedSender<String>,
    /// When this primary found its lease lapsed.
    fenced_since: Option<Instant>,
}

/// One session, from connecting to the end of the link.
pub async fn run(agent: &Arc<Agent>, backoff: &mut Duration) -> Result<End> {
    let (mut reader, mut writer) = dial(&agent.cfg.guide, &agent.key).await?;
    let hello = hello(agent).await?;
    let sent_at = Instant::now();
    writer.send(&Up::Hello(Hello { kind: PeerKind::Node, node: Some(hello) })).await?;
    let first: Down = reader.recv_within(WELCOME_TIMEOUT).await?;
    let Down::Welcome { epoch, role, lease_ms, history_seq, quarantine_from, primary } = first else {
        return match first {
            Down::Refused { reason } => Err(SessionError::Refused(reason)),
            other => Err(SessionError::Protocol(format!("{other:?} instead of Welcome"))),
        };
    };
    *backoff = MIN_BACKOFF;
    tracing::info!(epoch, role = role.as_str(), history_seq, ?quarantine_from, primary = primary.as_deref().unwrap_or("-"), "welcomed by the guide");

    let (out, mut out_rx) = mpsc::unbounded_channel::<Up>();
    let writer_task = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if let Err(e) = writer.send(&m).await {
                return e;
            }
        }
        writer.shutdown().await;
        LinkError::Closed { peer: "the agent".into() }
    });
    let writer_task = AbortOnJoin(writer_task);
    let (in_tx, mut in_rx) = mpsc::channel::<std::result::Result<Option<Down>, LinkError>>(256);
    let _reader = AbortOnDrop(tokio::spawn(async move {
        loop {
            let r = reader.recv::<Down>().await;
            let end = !matches!(r, Ok(Some(_)));
            if in_tx.send(r).await.is_err() || end {
                return;
            }
        }
    }));
    let (failed_tx, mut failed_rx) = mpsc::unbounded_channel::<String>();
    let mut link = Link {
        agent,
        out,
        hb: 0,
        hb_sent: VecDeque::new(),
        threat: Threat::new(agent.cfg.threat.clone()),
        cpu: load::Cpu::default(),
        quarantines: quarantine::list(&agent.cfg.state_dir),
        catch_up_to: history_seq,
        shipper: None,
        applier: None,
        failed_tx,
        fenced_since: None,
    };
    link.welcome(epoch, role, lease_ms, history_seq, quarantine_from, primary, sent_at).await?;
    let mut tick = tokio::time::interval(agent.cfg.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut writer_task = writer_task;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                link.heartbeat().await;
                if link.fenced_since.is_some_and(|t| t.elapsed() >= FENCED_REDIAL) {
                    return Err(SessionError::Local("no lease from the guide for a second after the lease lapsed; dialling again".into()));
                }
            }
            m = in_rx.recv() => match m {
                Some(Ok(Some(down))) => {
                    if let Some(end) = link.handle(down).await? {
                        return Ok(end);
                    }
                }
                Some(Ok(None)) | None => return Err(LinkError::Closed { peer: agent.cfg.guide.clone() }.into()),
                Some(Err(e)) => return Err(e.into()),
            },
            _ = agent.reload.notified() => link.reloaded().await,
            e = &mut writer_task.0 => return Err(match e {
                Ok(e) => e.into(),
                Err(j) => SessionError::Local(j.to_string()),
            }),
            Some(why) = failed_rx.recv() => return Err(SessionError::Local(why)),
        }
    }
}

/// Aborts the writer when the session ends; awaited in the session loop.
struct AbortOnJoin(tokio::task::JoinHandle<LinkError>);

impl Drop for AbortOnJoin {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long sent bytes may stay unacknowledged before the kernel drops
/// the link: heartbeats flow all the time, so a partition shows as an
/// error within this, for a backup as for a primary, instead of after
/// TCP's retransmission timers (minutes).
const UNACKED_LIMIT_MS: u32 = 5000;

/// Connects to the guide (TCP with [`UNACKED_LIMIT_MS`]) and runs the
/// control handshake.
async fn dial(addr: &str, key: &crate::xfer::ClusterKey) -> Result<(link::LinkReader, link::LinkWriter)> {
    let connect_err = |source| LinkError::Connect { addr: addr.to_owned(), source };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| connect_err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {CONNECT_TIMEOUT:?}"))))?
        .map_err(connect_err)?;
    let _ = tcp.set_nodelay(true);
    {
        use std::os::fd::AsRawFd;
        let ms: libc::c_uint = UNACKED_LIMIT_MS;
        // SAFETY: a valid socket and a c_uint option of the right size.
        let rc = unsafe {
            libc::setsockopt(
                tcp.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_USER_TIMEOUT,
                (&ms as *const libc::c_uint).cast(),
                std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot set TCP_USER_TIMEOUT on the guide link");
        }
    }
    let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| addr.to_owned());
    let (r, w) = tcp.into_split();
    let stream = crate::xfer::channel::Stream { reader: Box::new(r), writer: Box::new(w), peer };
    Ok(link::client(stream, key, CONNECT_TIMEOUT).await?)
}

/// What this node says of itself.
async fn hello(agent: &Arc<Agent>) -> Result<NodeHello> {
    let journal = agent.journal.clone();
    let kept = agent.store.get();
    let (journal_seq, confirmed, tail) = text_blocking(move || {
        let last = journal.last_seq();
        let confirmed = kept.confirmed_seq.min(last);
        let tail: Vec<(u64, String)> = journal
            .list(confirmed, Some(MAX_TAIL))
            .map_err(|e| e.to_string())?
            .iter()
            .map(|e| (e.seq, WireEntry::from(e).fingerprint()))
            .collect();
        Ok((last, confirmed, tail))
    })
    .await
    .map_err(local)?;
    Ok(NodeHello {
        id: agent.cfg.node_id.clone(),
        ftp: agent.advertise.clone(),
        pid: std::process::id(),
        version: VERSION.to_owned(),
        journal_seq,
        confirmed_seq: confirmed,
        tail,
        epoch: kept.epoch.max(agent.gate.epoch()),
    })
}

impl Link<'_> {
    fn send(&self, m: Up) -> Result<()> {
        self.out.send(m).map_err(|_| SessionError::Local("the link writer stopped".into()))
    }

    fn note_epoch(&self, epoch: u64) {
        if let Err(e) = self.agent.store.update(|p| p.epoch = p.epoch.max(epoch)) {
            tracing::warn!(error = %e, "cannot record the epoch");
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn welcome(&mut self, epoch: u64, role: Role, lease_ms: u64, history_seq: u64, quarantine_from: Option<u64>, primary: Option<String>, sent_at: Instant) -> Result<()> {
        let a = self.agent;
        self.note_epoch(epoch);
        let mut role = role;
        if role != Role::Primary {
            a.gate.set_role(if role == Role::Backup { Role::Backup } else { Role::CatchingUp }, epoch, primary);
        }
        if let Some(q) = quarantine_from {
            a.gate.set_role(Role::CatchingUp, epoch, None);
            self.quarantine(epoch, q).await?;
            role = Role::CatchingUp;
        }
        match role {
            Role::Primary => {
                a.gate.become_primary(epoch, Some(lease_end(sent_at, lease_ms)));
                a.gate.set_stored(history_seq);
                tracing::info!(epoch, "primary: serving FTP and shipping from seq {}", history_seq + 1);
                self.start_primary(epoch, history_seq).await?;
            }
            _ => self.start_backup()?,
        }
        Ok(())
    }

    /// Moves the tail from `q` on into quarantine, wipes tree and journal.
    async fn quarantine(&mut self, epoch: u64, q: u64) -> Result<()> {
        let a = self.agent.clone();
        let node = a.cfg.node_id.clone();
        let (dir, n) = text_blocking(move || {
            let (dir, report) = quarantine::quarantine_from(&a.journal, &a.backing, &a.cfg.state_dir, &node, epoch, q).map_err(|e| e.to_string())?;
            let n = report.entries.len();
            // Homes stay (emptied): a backup never creates them, and the
            // history brings back what they held.
            let homes: Vec<std::path::PathBuf> = a.state.current().users.iter().map(|u| u.home_relative()).filter(|h| h != std::path::Path::new(".")).collect();
            quarantine::wipe(&a.journal, &a.backing, &homes).map_err(|e| e.to_string())?;
            Ok((dir, n))
        })
        .await
        .map_err(|e| SessionError::Local(format!("quarantine failed (nothing was deleted past the failure): {e}")))?;
        tracing::warn!(entries = n, from_seq = q, dir = %dir.display(), "quarantined {n} entries the guide never had; catching up from the guide's history");
        self.agent.gate.reset_stored(0);
        self.agent.store.update(|p| p.confirmed_seq = 0).map_err(local)?;
        self.quarantines = quarantine::list(&self.agent.cfg.state_dir);
        self.catch_up_to = self.catch_up_to.max(1);
        Ok(())
    }

    async fn start_primary(&mut self, epoch: u64, ship_from: u64) -> Result<()> {
        self.applier = None;
        self.make_homes().await;
        self.send_initial_state(epoch).await?;
        let agent = self.agent.clone();
        let out = self.out.clone();
        self.shipper = Some(AbortOnDrop(tokio::spawn(super::ship::run(agent, out, epoch, ship_from))));
        Ok(())
    }

    fn start_backup(&mut self) -> Result<()> {
        self.shipper = None;
        if self.applier.is_none() {
            self.applier = Some(Applier::start(self.agent.clone(), self.out.clone(), self.failed_tx.clone()));
        }
        Ok(())
    }

    /// Home directories, through the mount so they are journaled (primary only).
    async fn make_homes(&self) {
        let a = self.agent.clone();
        let r = text_blocking(move || super::super::ensure_homes(&a.served_root, &a.state.current()).map_err(|e| e.to_string())).await;
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot create a home directory");
        }
    }

    async fn send_initial_state(&self, epoch: u64) -> Result<()> {
        let (u, s) = (self.agent.users_file.clone(), self.agent.service_file.clone());
        let (users, service) = text_blocking(move || {
            let users = std::fs::read_to_string(&u).map_err(|e| format!("{}: {e}", u.display()))?;
            let service = std::fs::read_to_string(&s).map_err(|e| format!("{}: {e}", s.display()))?;
            Ok((users, service))
        })
        .await
        .map_err(local)?;
        self.send(Up::InitialState { epoch, users, service })
    }

    async fn reloaded(&mut self) {
        if self.agent.gate.given_role() == Role::Primary {
            self.make_homes().await;
            if let Err(e) = self.send_initial_state(self.agent.gate.epoch()).await {
                tracing::error!(error = %e, "cannot ship the reloaded initial state");
            }
        }
    }

    async fn heartbeat(&mut self) {
        let a = self.agent;
        if a.gate.check_lease() {
            self.fenced_since.get_or_insert_with(Instant::now);
        } else {
            self.fenced_since = None;
        }
        self.hb += 1;
        let applied = a.journal.last_seq();
        let mut role = a.gate.role();
        if role == Role::CatchingUp && applied >= self.catch_up_to {
            a.gate.set_role(Role::Backup, a.gate.epoch(), None);
            role = Role::Backup;
            tracing::info!(applied, "caught up: backup");
        }
        let (free, total) = load::disk(&a.backing);
        let level = self.threat.level(free, total).await;
        let progress = (role == Role::CatchingUp).then(|| if self.catch_up_to == 0 { 1.0 } else { (applied as f64 / self.catch_up_to as f64).min(1.0) });
        let hb = Heartbeat {
            hb: self.hb,
            role,
            epoch: a.gate.epoch(),
            applied_seq: applied,
            load: Load {
                sessions: a.sessions.total() as u64,
                transfers: a.transfers.live() as u64,
                cpu_pct: self.cpu.sample(),
                free_disk_bytes: free,
            },
            threat: level.threat,
            threat_reason: level.reason,
            progress,
            quarantines: self.quarantines.clone(),
        };
        self.hb_sent.push_back((self.hb, Instant::now()));
        while self.hb_sent.len() > HB_KEPT {
            self.hb_sent.pop_front();
        }
        let _ = self.send(Up::Heartbeat(hb));
    }

    /// A message with an epoch above ours: whatever we were, we are not
    /// the primary of that epoch.
    fn newer_epoch(&self, epoch: u64) -> bool {
        let g = &self.agent.gate;
        if epoch > g.epoch() {
            tracing::warn!(ours = g.epoch(), theirs = epoch, "the guide is at a higher epoch: not acting as primary; saying Hello again");
            g.set_role(Role::Backup, epoch, None);
            self.note_epoch(epoch);
            return true;
        }
        false
    }

    async fn handle(&mut self, m: Down) -> Result<Option<End>> {
        let a = self.agent;
        match m {
            Down::Lease { epoch, hb, lease_ms } => {
                if self.newer_epoch(epoch) {
                    return Ok(Some(End::Again));
                }
                if let Some((_, sent)) = self.hb_sent.iter().find(|(n, _)| *n == hb) {
                    let first = a.gate.awaiting_lease();
                    if a.gate.renew(epoch, lease_end(*sent, lease_ms)) && first {
                        // The first lease since the promotion: the guide
                        // announces `serving` on a heartbeat that says so.
                        tracing::info!(epoch, "lease received: taking changes");
                        self.heartbeat().await;
                    }
                }
            }
            Down::Stored { epoch, seq } => {
                if self.newer_epoch(epoch) {
                    return Ok(Some(End::Again));
                }
                a.gate.set_stored(seq);
                if let Err(e) = a.store.update(|p| p.confirmed_seq = p.confirmed_seq.max(seq)) {
                    tracing::warn!(error = %e, "cannot record the confirmed seq");
                }
            }
            Down::Forward { entries, absent } => match &self.applier {
                Some(ap) => ap.forward(entries, absent),
                None => tracing::warn!("Forward while primary; ignored"),
            },
            Down::OpenReverse { token } => match &self.applier {
                Some(ap) => ap.open_reverse(&a.cfg.guide, &token),
                None => tracing::warn!("OpenReverse while primary; ignored"),
            },
            Down::InitialState { version, users, .. } => {
                if a.gate.given_role() != Role::Primary {
                    self.take_users(version, users).await;
                }
            }
            // (Its `lease_ms` is what the next `Lease` says again: a
            // Promote grants no lease, see `Gate::become_primary`.)
            Down::Promote { epoch, history_seq, .. } => {
                if epoch < a.gate.epoch() {
                    tracing::warn!(epoch, ours = a.gate.epoch(), "Promote for an old epoch; ignored");
                    return Ok(None);
                }
                let last = a.journal.last_seq();
                if let Some(h) = history_seq.filter(|h| *h != last) {
                    // Serving from a journal that is not the history would
                    // acknowledge or lose changes: say hello again instead,
                    // and let the guide decide from what this node holds.
                    tracing::error!(epoch, history_seq = h, journal_seq = last, "promoted, but the journal does not end where the history does; not taking the role");
                    return Err(SessionError::Local(format!("promoted at history seq {h} with a journal ending at {last}")));
                }
                // No lease until the guide answers a heartbeat sent from now on.
                a.gate.become_primary(epoch, None);
                a.gate.reset_stored(last);
                self.note_epoch(epoch);
                tracing::info!(epoch, seq = last, "promoted: primary of epoch {epoch}; serving FTP, changes once the guide's lease arrives");
                self.start_primary(epoch, last).await?;
                self.heartbeat().await;
            }
            Down::Demote { epoch, reason } => {
                tracing::warn!(epoch, %reason, "demoted by the guide: backup; saying Hello again");
                a.gate.set_role(Role::Backup, epoch, None);
                self.note_epoch(epoch);
                return Ok(Some(End::Again));
            }
            Down::Drain { epoch } => {
                if self.newer_epoch(epoch) {
                    return Ok(Some(End::Again));
                }
                if a.gate.given_role() == Role::Primary && epoch == a.gate.epoch() {
                    tracing::info!(epoch, "draining: refusing new changes, shipping the rest");
                    a.gate.set_draining(true);
                }
            }
            Down::Refused { reason } => return Err(SessionError::Refused(reason)),
            Down::Welcome { .. } => return Err(SessionError::Protocol("a second Welcome".into())),
            Down::Announce(_) | Down::StatusReply { .. } | Down::MigrateReply { .. } => {}
        }
        Ok(None)
    }

    /// A backup takes the primary's users file (the service file is the node's own).
    async fn take_users(&self, version: u64, users: String) {
        let a = self.agent.clone();
        let r = text_blocking(move || {
            if std::fs::read_to_string(&a.users_file).ok().as_deref() == Some(users.as_str()) {
                return Ok(false);
            }
            super::persist::write_atomic(&a.users_file, users.as_bytes()).map_err(|e| e.to_string())?;
            a.state.reload().map_err(|e| e.to_string())?;
            Ok(true)
        })
        .await;
        match r {
            Ok(true) => tracing::info!(version, "users file from the primary written and reloaded"),
            Ok(false) => {}
            Err(e) => tracing::error!(version, error = %e, "cannot take the primary's users file"),
        }
    }
}
