//! A control link: an authenticated, sequenced stream of JSON messages
//! over one TCP connection, in `Message` frames of the xfer frame layer.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::xfer::channel::{Connector, Stream, TcpConnector};
use crate::xfer::conn::{FrameReader, FrameWriter};
use crate::xfer::frame::FrameType;
use crate::xfer::handshake::{self, CONTROL};
use crate::xfer::{ClusterKey, XferError};

/// Largest message: a batch of entries or a status with a long history.
pub const MAX_MESSAGE: u32 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error(transparent)]
    Xfer(#[from] XferError),
    #[error("{peer} sent a {ty:?} frame on a control link")]
    Unexpected { peer: String, ty: FrameType },
    #[error("{peer} sent a message that does not parse: {why}")]
    Malformed { peer: String, why: String },
    #[error("cannot encode a message: {0}")]
    Encode(String),
    #[error("{peer} closed the link")]
    Closed { peer: String },
    #[error("{peer} did not answer within {timeout:?}")]
    Timeout { peer: String, timeout: Duration },
}

pub type Result<T> = std::result::Result<T, LinkError>;

/// The receiving half.
pub struct LinkReader {
    r: FrameReader,
    peer: String,
}

/// The sending half.
pub struct LinkWriter {
    w: FrameWriter,
    peer: String,
}

/// Connects to the guide at `addr` and proves the key both ways.
pub async fn connect(addr: &str, key: &ClusterKey, timeout: Duration) -> Result<(LinkReader, LinkWriter)> {
    let connector = TcpConnector { addr: addr.to_owned() };
    let stream = tokio::time::timeout(timeout, connector.connect())
        .await
        .map_err(|_| LinkError::Connect {
            addr: addr.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {timeout:?}")),
        })?
        .map_err(|source| LinkError::Connect { addr: addr.to_owned(), source })?;
    client(stream, key, timeout).await
}

/// The connecting side of the handshake on an open stream.
pub async fn client(mut stream: Stream, key: &ClusterKey, timeout: Duration) -> Result<(LinkReader, LinkWriter)> {
    let keys = handshake::client_in(&CONTROL, &mut stream, key, timeout).await?;
    Ok(halves(stream, keys))
}

/// The accepting side of the handshake on an open stream.
pub async fn server(mut stream: Stream, key: &ClusterKey, timeout: Duration) -> Result<(LinkReader, LinkWriter)> {
    let keys = handshake::server_in(&CONTROL, &mut stream, key, timeout).await?;
    Ok(halves(stream, keys))
}

fn halves(stream: Stream, keys: handshake::SessionKeys) -> (LinkReader, LinkWriter) {
    let peer = stream.peer.clone();
    (
        LinkReader { r: FrameReader::new(stream.reader, keys.rx, MAX_MESSAGE, peer.clone()), peer: peer.clone() },
        LinkWriter { w: FrameWriter::new(stream.writer, keys.tx, peer.clone()), peer },
    )
}

impl LinkReader {
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The next message; `Ok(None)` when the peer closed the link cleanly.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        let Some(frame) = self.r.read_frame().await? else {
            return Ok(None);
        };
        if frame.header.ty != FrameType::Message {
            return Err(LinkError::Unexpected { peer: self.peer.clone(), ty: frame.header.ty });
        }
        serde_json::from_slice(&frame.payload)
            .map(Some)
            .map_err(|e| LinkError::Malformed { peer: self.peer.clone(), why: e.to_string() })
    }

    /// [`recv`](Self::recv), bounded in time; a closed link is an error.
    pub async fn recv_within<T: DeserializeOwned>(&mut self, timeout: Duration) -> Result<T> {
        match tokio::time::timeout(timeout, self.recv()).await {
            Err(_) => Err(LinkError::Timeout { peer: self.peer.clone(), timeout }),
            Ok(r) => r?.ok_or_else(|| LinkError::Closed { peer: self.peer.clone() }),
        }
    }
}

impl LinkWriter {
    pub fn peer(&self) -> &str {
        &self.peer
    }

    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<()> {
        let payload = serde_json::to_vec(msg).map_err(|e| LinkError::Encode(e.to_string()))?;
        if payload.len() > MAX_MESSAGE as usize {
            return Err(LinkError::Encode(format!("message of {} bytes is over the {MAX_MESSAGE}-byte limit", payload.len())));
        }
        self.w.send(FrameType::Message, 0, 0, &payload).await?;
        Ok(())
    }

    pub async fn shutdown(&mut self) {
        self.w.shutdown().await;
    }
}
