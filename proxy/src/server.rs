//! The client-facing listener: accepts connections, enforces
//! `max_sessions`, and runs a [`crate::session`] for each.

use std::future::Future;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

use crate::config::ProxyConfig;
use crate::session::{self, Shared};
use crate::{Authority, ProxyError, View};

/// Binds `cfg.listen`.
pub async fn bind(cfg: &ProxyConfig) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(&cfg.listen).await.map_err(|source| ProxyError::Listen { addr: cfg.listen.clone(), source })
}

/// Serves clients on `listener` until `stop` completes (sessions are
/// dropped with the runtime).
pub async fn serve(listener: TcpListener, cfg: ProxyConfig, view: watch::Receiver<View>, auth: Arc<dyn Authority>, stop: impl Future<Output = ()>) -> Result<(), ProxyError> {
    let slots = Arc::new(Semaphore::new(cfg.max_sessions));
    let shared = Arc::new(Shared::new(cfg, view, auth)?);
    if let Ok(a) = listener.local_addr() {
        info!(addr = %a, "proxy listening");
    }
    tokio::pin!(stop);
    loop {
        let (mut stream, peer) = tokio::select! {
            _ = &mut stop => return Ok(()),
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    warn!("accept failed: {e}");
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            warn!(%peer, "too many sessions: refused");
            tokio::spawn(async move {
                let _ = stream.write_all(b"421 Too many sessions, try again later\r\n").await;
            });
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            session::run(shared, stream, peer).await;
            drop(permit);
        });
    }
}
