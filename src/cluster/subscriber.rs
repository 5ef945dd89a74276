//! The subscriber's side of a control link, for `drift proxy`: says
//! `Hello{kind: proxy}`, follows every `Announce` and `InitialState`, and
//! reconnects by itself whenever the link is lost (while it is down the
//! announcement is `None`: nobody knows where the primary is).

use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::link::{self, LinkError};
use super::msg::{Announcement, Down, Hello, PeerKind, Up};
use crate::xfer::ClusterKey;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The first wait before dialling again; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The initial state as the guide last sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initial {
    pub version: u64,
    pub users: String,
    pub service: String,
}

/// What a subscription yields.
pub struct Feeds {
    pub announce: watch::Sender<Option<Announcement>>,
    pub initial: watch::Sender<Option<Initial>>,
}

impl Feeds {
    pub fn new() -> Feeds {
        Feeds { announce: watch::channel(None).0, initial: watch::channel(None).0 }
    }
}

impl Default for Feeds {
    fn default() -> Self {
        Self::new()
    }
}

/// Follows the guide at `addr` until the task is dropped.
pub async fn follow(addr: String, key: ClusterKey, feeds: std::sync::Arc<Feeds>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        match session(&addr, &key, &feeds).await {
            Ok(()) => {
                info!(guide = %addr, "the guide closed the subscription; reconnecting");
                backoff = MIN_BACKOFF;
            }
            Err(e) => warn!(guide = %addr, "subscription to the guide lost: {e}"),
        }
        feeds.announce.send_replace(None);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn session(addr: &str, key: &ClusterKey, feeds: &Feeds) -> Result<(), LinkError> {
    let (mut r, mut w) = link::connect(addr, key, CONNECT_TIMEOUT).await?;
    w.send(&Up::Hello(Hello { kind: PeerKind::Proxy, node: None })).await?;
    info!(guide = %addr, "subscribed to the guide");
    while let Some(msg) = r.recv::<Down>().await? {
        match msg {
            Down::Announce(a) => {
                info!(epoch = a.epoch, primary = a.primary.as_deref().unwrap_or("none"), state = %a.state, "announcement");
                feeds.announce.send_replace(Some(a));
            }
            Down::InitialState { version, users, service } => {
                info!(version, "initial state received");
                feeds.initial.send_replace(Some(Initial { version, users, service }));
            }
            Down::Refused { reason } => {
                return Err(LinkError::Malformed { peer: addr.to_owned(), why: format!("the guide refused the subscription: {reason}") });
            }
            _ => {}
        }
    }
    Ok(())
}
