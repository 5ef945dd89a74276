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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client and a server link joined through a relay that records
    /// everything the client sends after the handshake, so a test can
    /// replay or alter it.
    type Recorded = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

    async fn relayed(key: &ClusterKey, server_key: &ClusterKey) -> (Result<(LinkReader, LinkWriter)>, Result<(LinkReader, LinkWriter)>, tokio::io::DuplexStream, Recorded) {
        let (c_end, relay_in) = tokio::io::duplex(1 << 20);
        let (relay_out, s_end) = tokio::io::duplex(1 << 20);
        let (s_from_client, s_to_client) = tokio::io::split(s_end);
        let (c_read, c_write) = tokio::io::split(c_end);
        let (mut relay_in_r, mut relay_in_w) = tokio::io::split(relay_in);
        let (mut relay_out_r, mut relay_out_w) = tokio::io::split(relay_out);
        // Server -> client goes straight back.
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut relay_out_r, &mut relay_in_w).await;
        });
        let (inject, mut inject_rx) = tokio::io::duplex(1 << 20);
        // Client -> server is copied (and recorded); test-injected bytes
        // follow.
        let recorded: Recorded = Default::default();
        let rec = recorded.clone();
        tokio::spawn(async move {
            let (mut a, mut b) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
            loop {
                tokio::select! {
                    n = relay_in_r.read(&mut a) => match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            rec.lock().unwrap().extend_from_slice(&a[..n]);
                            if relay_out_w.write_all(&a[..n]).await.is_err() { break }
                        }
                    },
                    n = inject_rx.read(&mut b) => match n {
                        Ok(0) | Err(_) => {}
                        Ok(n) => if relay_out_w.write_all(&b[..n]).await.is_err() { break },
                    },
                }
            }
        });
        let cs = Stream { reader: Box::new(c_read), writer: Box::new(c_write), peer: "client".into() };
        let ss = Stream { reader: Box::new(s_from_client), writer: Box::new(s_to_client), peer: "server".into() };
        let t = Duration::from_secs(5);
        let (c, s) = tokio::join!(client(cs, key, t), server(ss, server_key, t));
        (c, s, inject, recorded)
    }

    #[tokio::test]
    async fn messages_arrive_in_order_and_a_replayed_frame_ends_the_link() {
        let key = ClusterKey::generate();
        let (c, s, mut inject, recorded) = relayed(&key, &key).await;
        let (_cr, mut cw) = c.unwrap();
        let (mut sr, _sw) = s.unwrap();
        cw.send(&serde_json::json!({"n": 1})).await.unwrap();
        let got: serde_json::Value = sr.recv_within(Duration::from_secs(5)).await.unwrap();
        assert_eq!(got["n"], 1);
        cw.send(&serde_json::json!({"n": 2})).await.unwrap();
        let got: serde_json::Value = sr.recv_within(Duration::from_secs(5)).await.unwrap();
        assert_eq!(got["n"], 2, "messages arrive in order");
        // Replay the exact bytes of the last frame the client sent: valid
        // MAC, old sequence number.
        let frame_len = 32 + br#"{"n":2}"#.len() + 32;
        let replay = {
            let r = recorded.lock().unwrap();
            r[r.len() - frame_len..].to_vec()
        };
        inject.write_all(&replay).await.unwrap();
        let err = sr.recv::<serde_json::Value>().await.unwrap_err();
        assert!(err.to_string().contains("replay") || err.to_string().contains("sequence"), "{err}");
    }

    #[tokio::test]
    async fn an_altered_frame_ends_the_link() {
        let key = ClusterKey::generate();
        let (c, s, mut inject, _) = relayed(&key, &key).await;
        let (_cr, _cw) = c.unwrap();
        let (mut sr, _sw) = s.unwrap();
        let h = crate::xfer::frame::Header { ty: FrameType::Message, len: 7, seq: 0, file_id: 0, offset: 0 };
        let forged = crate::xfer::frame::encode_frame(&[7u8; 32], &h, br#"{"n":1}"#);
        inject.write_all(&forged).await.unwrap();
        let err = sr.recv::<serde_json::Value>().await.unwrap_err();
        assert!(err.to_string().contains("altered") || err.to_string().contains("MAC"), "{err}");
    }

    #[tokio::test]
    async fn a_peer_without_the_key_gets_no_link() {
        let (c, s, _inject, _) = relayed(&ClusterKey::generate(), &ClusterKey::generate()).await;
        assert!(c.is_err() && s.is_err(), "a link was set up across two keys");
    }
}
