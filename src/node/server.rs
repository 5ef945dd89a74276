//! The FTP front of a node: our own accept loop in front of libunftp.
//!
//! Accepting connections ourselves (instead of `Server::listen`) is what
//! makes the service file enforceable: a client outside the address filter
//! or beyond the session limit gets a `421` and is closed before libunftp
//! sees it, and every connection is served by a `Server` built from the
//! state in force when it arrived, so a SIGHUP reload changes greeting,
//! timeouts, passive ports and TLS for new sessions without touching the
//! running ones.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use libunftp::options::FtpsRequired;
use libunftp::ServerBuilder;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::auth::{Lockout, NodeAuthenticator, NodeUser, NodeUserProvider};
use super::limits::{ConnectRefusal, Sessions};
use super::state::{InitialState, StateHandle};
use super::storage::{DriftStorage, StorageContext};

/// Errors starting the FTP front.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error(
        "cannot listen on {addr}: port {} is already in use (another FTP server, or a drift node already running?); \
         stop that program or pick a free port with `listen = \"IP:PORT\"` in the service file {}",
        addr.port(), service_file.display()
    )]
    PortInUse { addr: std::net::SocketAddr, service_file: std::path::PathBuf },
    #[error(
        "cannot listen on {addr}: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE); \
         pick a port of 1024 or more with `listen = \"IP:PORT\"` in the service file {}",
        service_file.display()
    )]
    PortDenied { addr: std::net::SocketAddr, service_file: std::path::PathBuf },
    #[error("cannot set up the FTP server: {0}")]
    Build(String),
}

/// Everything the accept loop shares with the sessions it starts.
#[derive(Debug)]
pub struct Front {
    pub state: Arc<StateHandle>,
    pub sessions: Arc<Sessions>,
    pub storage: Arc<StorageContext>,
    /// Failed-login lockouts, shared by all sessions (SIGHUP may lift them).
    pub lockout: Arc<Lockout>,
    authenticator: Arc<NodeAuthenticator>,
    users: Arc<NodeUserProvider>,
    /// Set once at shutdown: every session answers `421` and closes.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl Front {
    /// `proxy`: whose proxy credentials this node accepts (`None`: none).
    pub fn new(storage: Arc<StorageContext>, proxy: Option<Arc<crate::cluster::proxy_cred::ProxyTrust>>) -> Front {
        let state = storage.state.clone();
        let lockout = Arc::new(Lockout::default());
        Front {
            authenticator: Arc::new(
                NodeAuthenticator::new(state.clone(), lockout.clone())
                    .with_transfer_log(storage.xferlog.clone())
                    .with_proxy_trust(proxy),
            ),
            lockout,
            users: Arc::new(NodeUserProvider::new(state.clone(), storage.served_root.clone())),
            sessions: storage.sessions.clone(),
            state,
            storage,
            stopping: tokio::sync::watch::channel(false).0,
        }
    }

    /// Tells every session to say `421` and close (shutdown).
    pub fn stop_sessions(&self) {
        self.stopping.send_replace(true);
    }

    /// Waits until no control connection is open, or `limit` passes;
    /// returns whether all closed.
    pub async fn wait_sessions_closed(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        // Sessions end within a few milliseconds of `stop_sessions`; a
        // short poll keeps this simple and bounded.
        while self.sessions.total() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// A libunftp server for one connection, configured from `state`.
    fn build(&self, state: &InitialState, peer: std::net::SocketAddr) -> Result<libunftp::Server<DriftStorage, NodeUser>, ServerError> {
        let svc = &state.service;
        let ctx = self.storage.clone();
        let mut b = ServerBuilder::with_user_detail_provider(Box::new(move || DriftStorage::new(ctx.clone(), peer)), self.users.clone())
            .authenticator(self.authenticator.clone())
            .greeting(state.greeting)
            .passive_ports(svc.passive_ports.clone())
            .idle_session_timeout(svc.idle_timeout.as_secs())
            .login_timeout(svc.login_timeout)
            // USER is checked as the users file checks names: anything
            // else can never log in and is refused before it is stored.
            .user_name_check(|name| super::users::validate_name(name).is_ok());
        if let Some(host) = svc.passive_host {
            b = b.passive_host(host);
        }
        if let Some(tls) = &svc.ftps {
            b = b.ftps(tls.cert.clone(), tls.key.clone());
            if tls.required {
                b = b.ftps_required(FtpsRequired::All, FtpsRequired::All);
            }
        }
        b.build().map_err(|e| ServerError::Build(e.to_string()))
    }

    /// Binds the listen address of the current service file
    /// (`service_file` is named in the error if the port is taken).
    pub async fn bind(&self, service_file: &std::path::Path) -> Result<TcpListener, ServerError> {
        let addr = self.state.current().service.listen;
        TcpListener::bind(addr).await.map_err(|source| match source.kind() {
            std::io::ErrorKind::AddrInUse => ServerError::PortInUse {
                addr,
                service_file: service_file.to_owned(),
            },
            std::io::ErrorKind::PermissionDenied => ServerError::PortDenied {
                addr,
                service_file: service_file.to_owned(),
            },
            _ => ServerError::Bind { addr, source },
        })
    }

    /// Accepts connections until `shutdown` completes. Sessions run as
    /// their own tasks; they end when the runtime is shut down.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let me = self.clone();
                        tokio::spawn(async move { me.handle(stream, peer).await });
                    }
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }

    async fn handle(self: Arc<Self>, mut stream: TcpStream, peer: std::net::SocketAddr) {
        // Replies are small writes answering the client's last command;
        // with Nagle's algorithm a reply following an unacknowledged one
        // (150 then 226) waited for the client's delayed ACK, ~40 ms per
        // transfer. Data connections need no such option: each ends with
        // shutdown(), whose FIN pushes out whatever Nagle held back, and
        // without it sendfile's sub-segment tails coalesce with the next
        // chunk instead of going out as tiny packets.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY on the control connection");
        }
        if let Some(gate) = &self.storage.gate {
            // A backup (or catching-up, or demoted) node serves nobody: the
            // primary does. It starts serving when promoted.
            if !gate.serving() {
                tracing::debug!(%peer, "connection refused: not the primary");
                refuse(&mut stream, &format!("421 {}\r\n", gate.not_serving_text())).await;
                return;
            }
        }
        let state = self.state.current();
        let svc = &state.service;
        if !svc.filter.allows(peer.ip()) {
            super::agent::threat::note_refused_connection();
            tracing::debug!(%peer, "connection refused: address not allowed by the service filter");
            self.storage.xferlog.connect_refused(peer.ip(), "address not allowed by the service filter");
            refuse(&mut stream, "421 Service not available for your address.\r\n").await;
            return;
        }
        let ip = super::users::canonical_ip(peer.ip());
        // A trusted proxy applies the per-address limit to its clients.
        let per_address = if self.authenticator.is_proxy(ip) { usize::MAX } else { svc.max_sessions_per_address };
        let slot = match self.sessions.try_connect_from(ip, svc.max_sessions, per_address) {
            Ok(slot) => slot,
            Err(ConnectRefusal::Total(max)) => {
                super::agent::threat::note_refused_connection();
                tracing::debug!(%peer, max, "connection refused: session limit reached");
                self.storage.xferlog.connect_refused(peer.ip(), &format!("session limit reached ({max} allowed)"));
                refuse(&mut stream, &format!("421 Too many sessions ({max} allowed); try again later.\r\n")).await;
                return;
            }
            Err(ConnectRefusal::Address(max)) => {
                super::agent::threat::note_refused_connection();
                tracing::debug!(%peer, max, "connection refused: too many connections from this address");
                self.storage.xferlog.connect_refused(peer.ip(), &format!("too many connections from this address ({max} allowed)"));
                refuse(
                    &mut stream,
                    &format!("421 Too many connections from your address ({max} allowed); try again later.\r\n"),
                )
                .await;
                return;
            }
        };
        let server = match self.build(&state, peer) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(%peer, error = %e, "cannot serve connection");
                refuse(&mut stream, "421 Service not available, try again later.\r\n").await;
                return;
            }
        };
        drop(state);
        tracing::debug!(%peer, "session start");
        let mut stopping = self.stopping.subscribe();
        let stop = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        if let Err(e) = server.service_until(stream, stop).await {
            tracing::warn!(%peer, error = %e, "session ended with an error");
        }
        tracing::debug!(%peer, "session end");
        drop(slot);
    }
}

/// Sends one reply and closes, without waiting long on a slow client.
async fn refuse(stream: &mut TcpStream, reply: &str) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
