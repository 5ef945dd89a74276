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
use super::limits::Sessions;
use super::state::{InitialState, StateHandle};
use super::storage::{DriftStorage, StorageContext};

/// Errors starting the FTP front.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot set up the FTP server: {0}")]
    Build(String),
}

/// Everything the accept loop shares with the sessions it starts.
#[derive(Debug)]
pub struct Front {
    pub state: Arc<StateHandle>,
    pub sessions: Arc<Sessions>,
    pub storage: Arc<StorageContext>,
    authenticator: Arc<NodeAuthenticator>,
    users: Arc<NodeUserProvider>,
}

impl Front {
    pub fn new(storage: Arc<StorageContext>) -> Front {
        let state = storage.state.clone();
        let lockout = Arc::new(Lockout::default());
        Front {
            authenticator: Arc::new(NodeAuthenticator::new(state.clone(), lockout)),
            users: Arc::new(NodeUserProvider::new(state.clone(), storage.served_root.clone())),
            sessions: storage.sessions.clone(),
            state,
            storage,
        }
    }

    /// A libunftp server for one connection, configured from `state`.
    fn build(&self, state: &InitialState, peer: std::net::SocketAddr) -> Result<libunftp::Server<DriftStorage, NodeUser>, ServerError> {
        let svc = &state.service;
        let ctx = self.storage.clone();
        let mut b = ServerBuilder::with_user_detail_provider(Box::new(move || DriftStorage::new(ctx.clone(), peer)), self.users.clone())
            .authenticator(self.authenticator.clone())
            .greeting(state.greeting)
            .passive_ports(svc.passive_ports.clone())
            .idle_session_timeout(svc.idle_timeout.as_secs());
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

    /// Binds the listen address of the current service file.
    pub async fn bind(&self) -> Result<TcpListener, ServerError> {
        let addr = self.state.current().service.listen;
        TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })
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
        let state = self.state.current();
        let svc = &state.service;
        if !svc.filter.allows(peer.ip()) {
            tracing::warn!(%peer, "connection refused: address not allowed by the service filter");
            refuse(&mut stream, "421 Service not available for your address.\r\n").await;
            return;
        }
        let Some(slot) = self.sessions.try_connect(svc.max_sessions) else {
            tracing::warn!(%peer, max = svc.max_sessions, "connection refused: session limit reached");
            refuse(
                &mut stream,
                &format!("421 Too many sessions ({} allowed); try again later.\r\n", svc.max_sessions),
            )
            .await;
            return;
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
        if let Err(e) = server.service(stream).await {
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
