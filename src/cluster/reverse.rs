//! Reverse transfer connections: the guide sends contents to a node with
//! `drift xfer`, but only the guide listens. When the guide's sender needs
//! a connection it asks the node, over its control link, to dial back with
//! a fresh random token; the node opens a TCP connection to the guide's
//! port and writes `DRIFTREV` and the token; the guide hands that stream to
//! the waiting sender, which then runs the ordinary xfer handshake as the
//! client (so the node proves the key as receiver, and the guide as
//! sender). A token is used once and expires; a stranger who dials with a
//! made-up token is dropped, and one who steals a token still fails the
//! handshake.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::REVERSE_MAGIC;
use crate::xfer::channel::{Acceptor, Connector, Stream, TcpConnector};

pub type Token = [u8; 32];

/// How long a sender waits for the node to dial back.
pub const DIAL_BACK_TIMEOUT: Duration = Duration::from_secs(10);

pub fn new_token() -> Token {
    let mut t = [0u8; 32];
    rand::fill(&mut t);
    t
}

pub fn token_hex(t: &Token) -> String {
    blake3::Hash::from_bytes(*t).to_hex().to_string()
}

pub fn parse_token(s: &str) -> Option<Token> {
    blake3::Hash::from_hex(s).ok().map(|h| *h.as_bytes())
}

/// Guide side: senders waiting for a node to dial back, by token.
#[derive(Default)]
pub struct Pending {
    waiting: Mutex<HashMap<Token, oneshot::Sender<Stream>>>,
}

impl Pending {
    fn register(&self, token: Token) -> oneshot::Receiver<Stream> {
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).insert(token, tx);
        rx
    }

    fn cancel(&self, token: &Token) {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(token);
    }

    /// A `DRIFTREV` connection whose magic was read: reads its token and
    /// hands the stream to the sender waiting for it. Unknown tokens are
    /// dropped (and logged by the caller).
    pub async fn deliver(&self, mut stream: Stream) -> Result<(), String> {
        let mut token = [0u8; 32];
        match tokio::time::timeout(Duration::from_secs(5), stream.reader.read_exact(&mut token)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("no token: {e}")),
            Err(_) => return Err("no token within 5 s".into()),
        }
        let waiter = self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&token);
        match waiter {
            Some(tx) => tx.send(stream).map_err(|_| "the sender stopped waiting".to_string()),
            None => Err("unknown or expired token".into()),
        }
    }
}

/// Guide side: a [`Connector`] whose connections are dialled by the node.
/// `ask` sends the node a request to dial back with the given token (over
/// its control link).
pub struct DialBack {
    pub pending: Arc<Pending>,
    pub ask: mpsc::UnboundedSender<Token>,
    pub node: String,
}

#[async_trait::async_trait]
impl Connector for DialBack {
    async fn connect(&self) -> io::Result<Stream> {
        let token = new_token();
        let rx = self.pending.register(token);
        if self.ask.send(token).is_err() {
            self.pending.cancel(&token);
            return Err(io::Error::new(io::ErrorKind::NotConnected, format!("node {} is not connected", self.node)));
        }
        match tokio::time::timeout(DIAL_BACK_TIMEOUT, rx).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(_)) => Err(io::Error::new(io::ErrorKind::ConnectionAborted, "dial-back abandoned")),
            Err(_) => {
                self.pending.cancel(&token);
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("node {} did not dial back within {DIAL_BACK_TIMEOUT:?}", self.node),
                ))
            }
        }
    }

    fn describe(&self) -> String {
        format!("node {} (dial-back)", self.node)
    }
}

/// Node side: an [`Acceptor`] fed by [`dial`]; an xfer `Receiver` serves it.
pub struct DialedAcceptor {
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Stream>>,
    name: String,
}

impl DialedAcceptor {
    pub fn new(name: String) -> (DialedAcceptor, mpsc::UnboundedSender<Stream>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (DialedAcceptor { rx: tokio::sync::Mutex::new(rx), name }, tx)
    }
}

#[async_trait::async_trait]
impl Acceptor for DialedAcceptor {
    async fn accept(&self) -> io::Result<Stream> {
        self.rx
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "the agent stopped"))
    }

    fn local_addr(&self) -> String {
        self.name.clone()
    }
}

/// Node side: dials the guide at `addr` for `token` and returns the stream
/// for the node's receiver.
pub async fn dial(addr: &str, token: &Token) -> io::Result<Stream> {
    let mut stream = tokio::time::timeout(DIAL_BACK_TIMEOUT, TcpConnector { addr: addr.to_owned() }.connect())
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {addr}")))??;
    let mut hello = Vec::with_capacity(40);
    hello.extend_from_slice(REVERSE_MAGIC);
    hello.extend_from_slice(token);
    stream.writer.write_all(&hello).await?;
    Ok(stream)
}
