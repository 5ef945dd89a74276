//! One client session: the greeting, the login (checked here), then every
//! command relayed to a backend session on the current primary
//! ([`crate::relay`]). Commands are read one at a time: a pipelined
//! command waits until the one before it was answered.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::backend::Backend;
use crate::config::ProxyConfig;
use crate::passive::{canonical, Passive};
use crate::reply::{read_line, LineError, Reply};
use crate::state::StateDb;
use crate::upload::SpoolSpace;
use crate::{Authority, ProxyError, Refusal, Slot, View};

/// A failed login waits this long before its `530` (slows guessing).
const FAILURE_DELAY: Duration = Duration::from_secs(1);

/// What every session shares.
pub struct Shared {
    pub cfg: ProxyConfig,
    pub view: watch::Receiver<View>,
    pub auth: Arc<dyn Authority>,
    pub passive: Passive,
    pub spool: Arc<SpoolSpace>,
    pub state: StateDb,
    next_id: AtomicU64,
}

impl Shared {
    /// Opens the spool directory (removing spools left by a previous run).
    pub fn new(cfg: ProxyConfig, view: watch::Receiver<View>, auth: Arc<dyn Authority>) -> Result<Shared, ProxyError> {
        let passive = Passive::new(cfg.passive_ports.clone());
        let spool = SpoolSpace::open(&cfg.spool_dir, cfg.spool_quota).map_err(|source| ProxyError::Spool { dir: cfg.spool_dir.clone(), source })?;
        let state = StateDb::open(&cfg.state_db).map_err(|source| ProxyError::State { path: cfg.state_db.clone(), source })?;
        Ok(Shared { cfg, view, auth, passive, spool: Arc::new(spool), state, next_id: AtomicU64::new(1) })
    }
}

/// Whether the session goes on after a command.
pub enum Flow {
    Continue,
    Close,
}

pub struct Session {
    pub shared: Arc<Shared>,
    pub id: u64,
    pub client: IpAddr,
    /// The proxy's address as the client reached it.
    pub local: IpAddr,
    r: BufReader<OwnedReadHalf>,
    pub w: OwnedWriteHalf,
    /// USER given, PASS not yet.
    pending_user: Option<String>,
    /// The logged-in user.
    pub user: Option<String>,
    pub backend: Option<Backend>,
    /// The working directory on the backend (absolute), restored on a new one.
    pub cwd: Option<String>,
    /// The TYPE argument last accepted, restored on a new backend.
    pub type_: Option<String>,
    /// The listener of the last PASV/EPSV, for the next data command.
    pub passive: Option<TcpListener>,
    /// The offset of the last accepted REST, for the next data command.
    pub rest: u64,
    /// The last accepted RNFR line and the epoch it went to (an RNTO sent
    /// to another primary sends it there first).
    pub rnfr: Option<(u64, String)>,
    /// The logged-in user's place in the per-user limit.
    user_slot: Option<Slot>,
}

/// Serves one client connection until it closes.
pub async fn run(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let local = match stream.local_addr() {
        Ok(a) => canonical(a.ip()),
        Err(e) => {
            warn!(%peer, "client connection without a local address: {e}");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let client = canonical(peer.ip());
    let admitted = {
        let auth = shared.auth.clone();
        tokio::task::spawn_blocking(move || auth.admit(client)).await
    };
    let _slot = match admitted {
        Ok(Ok(slot)) => slot,
        Ok(Err(why)) => {
            info!(%peer, "connection refused: {why}");
            let mut stream = stream;
            let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, format!("421 {why}\r\n").as_bytes()).await;
            return;
        }
        Err(e) => {
            warn!(%peer, "admission check failed: {e}");
            return;
        }
    };
    let (r, w) = stream.into_split();
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let mut s = Session {
        shared,
        id,
        client,
        local,
        r: BufReader::new(r),
        w,
        pending_user: None,
        user: None,
        backend: None,
        cwd: None,
        type_: None,
        passive: None,
        rest: 0,
        rnfr: None,
        user_slot: None,
    };
    debug!(session = id, %peer, "client connected");
    s.shared.state.session_open(id, &peer.to_string());
    let greeting = Reply::new(220, s.shared.cfg.greeting.clone());
    if s.send(&greeting).await.is_ok() {
        s.serve().await;
    }
    s.shared.state.session_close(id);
    if let Some(b) = s.backend.take() {
        b.quit().await;
    }
    debug!(session = id, %peer, "client gone");
}

impl Session {
    /// Writes the session's row of the active state.
    pub fn save(&self) {
        if self.user.is_some() {
            let epoch = self.backend.as_ref().map(|b| b.epoch);
            self.shared.state.session_update(self.id, self.user.as_deref(), self.cwd.as_deref(), self.type_.as_deref(), self.rest, epoch);
        }
    }

    pub async fn send(&mut self, r: &Reply) -> std::io::Result<()> {
        r.write_to(&mut self.w).await
    }

    async fn serve(&mut self) {
        loop {
            let limit = if self.user.is_some() { self.shared.cfg.idle_timeout } else { self.shared.cfg.login_timeout };
            let line = match tokio::time::timeout(limit, read_line(&mut self.r)).await {
                Err(_) => {
                    let _ = self.send(&Reply::new(421, "Timeout: closing the control connection")).await;
                    return;
                }
                Ok(Ok(Some(l))) => l,
                Ok(Ok(None)) => return,
                Ok(Err(LineError::TooLong)) => {
                    if self.send(&Reply::new(500, "Command line too long")).await.is_err() {
                        return;
                    }
                    continue;
                }
                Ok(Err(_)) => return,
            };
            let reply = if line.contains(&0) {
                Some(Reply::new(501, "NUL byte in the command line"))
            } else {
                match String::from_utf8(line) {
                    Err(_) => Some(Reply::new(501, "Command line is not valid UTF-8")),
                    Ok(l) => match self.command(&l).await {
                        Ok(Flow::Continue) => {
                            self.save();
                            None
                        }
                        Ok(Flow::Close) | Err(_) => return,
                    },
                }
            };
            if let Some(r) = reply {
                if self.send(&r).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Handles one command line; an `Err` is a dead client connection.
    async fn command(&mut self, line: &str) -> std::io::Result<Flow> {
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a),
            None => (line.trim().to_ascii_uppercase(), ""),
        };
        match verb.as_str() {
            "QUIT" => {
                self.send(&Reply::new(221, "Goodbye")).await?;
                return Ok(Flow::Close);
            }
            "USER" if self.user.is_some() => self.send(&Reply::new(503, "Already logged in")).await?,
            "PASS" if self.user.is_some() => self.send(&Reply::new(503, "Already logged in")).await?,
            "USER" => {
                if arg.is_empty() {
                    self.send(&Reply::new(501, "USER needs a name")).await?;
                } else {
                    self.pending_user = Some(arg.to_owned());
                    self.send(&Reply::new(331, "Password required")).await?;
                }
            }
            "PASS" => return self.pass(arg).await,
            "AUTH" | "PBSZ" | "PROT" | "CCC" => self.send(&Reply::new(502, "TLS is not offered by this proxy yet")).await?,
            "PORT" | "EPRT" => self.send(&Reply::new(502, "Active mode is not supported: use PASV or EPSV")).await?,
            "SYST" => self.send(&Reply::new(215, "UNIX Type: L8")).await?,
            "NOOP" if self.user.is_none() => self.send(&Reply::new(200, "OK")).await?,
            "FEAT" if self.user.is_none() => {
                let r = Reply { code: 211, lines: ["211-Features:", " EPSV", " PASV", " UTF8", "211 End"].map(String::from).to_vec() };
                self.send(&r).await?;
            }
            "OPTS" if self.user.is_none() && arg.eq_ignore_ascii_case("UTF8 ON") => self.send(&Reply::new(200, "UTF8 is always on")).await?,
            _ if self.user.is_none() => self.send(&Reply::new(530, "Please log in with USER and PASS")).await?,
            _ => return self.logged_in(&verb, line).await,
        }
        Ok(Flow::Continue)
    }

    async fn pass(&mut self, password: &str) -> std::io::Result<Flow> {
        let Some(user) = self.pending_user.take() else {
            self.send(&Reply::new(503, "Login with USER first")).await?;
            return Ok(Flow::Continue);
        };
        let (auth, pw, u, ip) = (self.shared.auth.clone(), password.to_owned(), user.clone(), self.client);
        let checked = tokio::task::spawn_blocking(move || auth.check_login(&u, &pw, ip)).await;
        match checked {
            Ok(Ok(slot)) => self.user_slot = Some(slot),
            Ok(Err(Refusal::TooManySessions)) => {
                info!(session = self.id, client = %self.client, user = %shown(&user), "login refused: too many sessions for this user");
                self.send(&Reply::new(421, "Too many sessions for this user; try again later")).await?;
                return Ok(Flow::Close);
            }
            Ok(Err(refusal)) => {
                info!(session = self.id, client = %self.client, user = %shown(&user), reason = refusal.as_str(), "login refused");
                tokio::time::sleep(FAILURE_DELAY).await;
                self.send(&Reply::new(530, "Login incorrect")).await?;
                return Ok(Flow::Continue);
            }
            Err(e) => {
                warn!(session = self.id, "login check failed: {e}");
                self.send(&Reply::new(421, "Login check failed; try again")).await?;
                return Ok(Flow::Close);
            }
        }
        self.user = Some(user.clone());
        match self.ensure_backend().await {
            Ok(()) => {
                info!(session = self.id, client = %self.client, user = %user, "logged in");
                self.send(&Reply::new(230, "User logged in")).await?;
                Ok(Flow::Continue)
            }
            Err(r) => {
                self.send(&r).await?;
                Ok(Flow::Close)
            }
        }
    }
}

/// A user name as logged: cut to 64 characters.
fn shown(name: &str) -> String {
    name.chars().take(64).collect()
}
