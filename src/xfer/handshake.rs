//! Mutual challenge-response on the cluster key, run on every connection
//! before any frame. See the module docs of [`crate::xfer`] for the
//! messages; the outcome is a pair of per-connection, per-direction MAC keys.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::channel::Stream;
use super::error::{Result, XferError};
use super::key::ClusterKey;

pub const MAGIC: &[u8; 8] = b"DRIFTXFR";

/// What a connection is for. The greeting's magic tells the listener which
/// protocol follows (one cluster port serves transfers and control links),
/// and the context string separates the key derivations, so proofs and MAC
/// keys of one kind of connection are worthless on the other.
#[derive(Debug, Clone, Copy)]
pub struct Domain {
    pub magic: &'static [u8; 8],
    pub context: &'static str,
}

/// File transfers (`drift xfer`, shipping of contents).
pub const XFER: Domain = Domain { magic: MAGIC, context: "drift-xfer v1 " };
/// Cluster control links (node agent, subscribers, operators to the guide).
pub const CONTROL: Domain = Domain { magic: b"DRIFTCTL", context: "drift-cluster v1 " };
/// 2: batch frames are MAC'd over [`super::wire::batch_digest`] instead of
/// the plain BLAKE3 of their payload; a version-1 peer is told apart at the
/// handshake instead of failing every batch's MAC.
pub const PROTOCOL_VERSION: u8 = 2;
const PREFIX_LEN: usize = 16;
const NONCE_LEN: usize = 32;

/// MAC keys of one connection. Distinct per direction so a frame cannot be
/// reflected back at its sender, distinct per connection (both nonces) so a
/// frame cannot be replayed on another connection or session.
#[derive(Clone)]
pub struct SessionKeys {
    pub tx: [u8; 32],
    pub rx: [u8; 32],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

fn prefix(d: &Domain) -> [u8; PREFIX_LEN] {
    let mut p = [0u8; PREFIX_LEN];
    p[..8].copy_from_slice(d.magic);
    p[8] = PROTOCOL_VERSION;
    p
}

fn derive(d: &Domain, key: &ClusterKey, label: &str, cn: &[u8; 32], sn: &[u8; 32]) -> blake3::Hash {
    let mut h = blake3::Hasher::new_keyed(key.bytes());
    h.update(d.context.as_bytes());
    h.update(label.as_bytes());
    h.update(&[0]);
    h.update(cn);
    h.update(sn);
    h.finalize()
}

fn keys(d: &Domain, key: &ClusterKey, cn: &[u8; 32], sn: &[u8; 32], client: bool) -> SessionKeys {
    let c2s = *derive(d, key, "mac c2s", cn, sn).as_bytes();
    let s2c = *derive(d, key, "mac s2c", cn, sn).as_bytes();
    if client {
        SessionKeys { tx: c2s, rx: s2c }
    } else {
        SessionKeys { tx: s2c, rx: c2s }
    }
}

/// Reads exactly `buf.len()` bytes; an early close becomes `closed`.
async fn read_handshake(s: &mut Stream, buf: &mut [u8], closed: impl Fn() -> XferError) -> Result<()> {
    match s.reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(closed()),
        Err(e) => Err(XferError::io(format!("handshake with {}", s.peer), e)),
    }
}

fn check_magic(d: &Domain, peer: &str, got: &[u8]) -> Result<()> {
    if &got[..8] != d.magic {
        let shown: String = got[..8]
            .iter()
            .map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' })
            .collect();
        return Err(XferError::NotDrift {
            peer: peer.to_owned(),
            detail: format!("it answered {shown:?} instead of the drift {} greeting", d.context.trim_end()),
        });
    }
    Ok(())
}

fn check_version(peer: &str, version: u8) -> Result<()> {
    if version != PROTOCOL_VERSION {
        return Err(XferError::NotDrift {
            peer: peer.to_owned(),
            detail: format!("it speaks protocol version {version}, this build speaks {PROTOCOL_VERSION}"),
        });
    }
    Ok(())
}

/// The sender's side. Nothing but a random nonce leaves before the
/// receiver has proved it holds the key.
pub async fn client(s: &mut Stream, key: &ClusterKey, timeout: Duration) -> Result<SessionKeys> {
    client_in(&XFER, s, key, timeout).await
}

/// [`client`] for connections of another [`Domain`].
pub async fn client_in(d: &Domain, s: &mut Stream, key: &ClusterKey, timeout: Duration) -> Result<SessionKeys> {
    let peer = s.peer.clone();
    tokio::time::timeout(timeout, client_inner(d, s, key))
        .await
        .map_err(|_| XferError::HandshakeTimeout { peer, timeout })?
}

async fn client_inner(d: &Domain, s: &mut Stream, key: &ClusterKey) -> Result<SessionKeys> {
    let mut cn = [0u8; NONCE_LEN];
    rand::fill(&mut cn);
    let mut hello = Vec::with_capacity(PREFIX_LEN + NONCE_LEN);
    hello.extend_from_slice(&prefix(d));
    hello.extend_from_slice(&cn);
    let peer = s.peer.clone();
    s.writer
        .write_all(&hello)
        .await
        .map_err(|e| XferError::io(format!("handshake with {peer}"), e))?;

    let closed = || XferError::NotDrift {
        peer: peer.clone(),
        detail: "it closed the connection during the handshake".into(),
    };
    // The magic alone first: a foreign server (an FTP banner, say) is named
    // at once instead of waiting for bytes it will never send.
    let mut reply = [0u8; PREFIX_LEN + NONCE_LEN + 32];
    read_handshake(s, &mut reply[..8], closed).await?;
    check_magic(d, &peer, &reply)?;
    read_handshake(s, &mut reply[8..], closed).await?;
    check_version(&peer, reply[8])?;
    let mut sn = [0u8; NONCE_LEN];
    sn.copy_from_slice(&reply[PREFIX_LEN..PREFIX_LEN + NONCE_LEN]);
    let mut proof = [0u8; 32];
    proof.copy_from_slice(&reply[PREFIX_LEN + NONCE_LEN..]);
    if derive(d, key, "server proof", &cn, &sn) != blake3::Hash::from_bytes(proof) {
        return Err(XferError::Auth {
            peer,
            detail: "the receiver does not hold our cluster key (different key files?)".into(),
        });
    }
    let ours = derive(d, key, "client proof", &cn, &sn);
    s.writer
        .write_all(ours.as_bytes())
        .await
        .map_err(|e| XferError::io(format!("handshake with {peer}"), e))?;
    Ok(keys(d, key, &cn, &sn, true))
}

/// The receiver's side.
pub async fn server(s: &mut Stream, key: &ClusterKey, timeout: Duration) -> Result<SessionKeys> {
    server_in(&XFER, s, key, timeout).await
}

/// [`server`] for connections of another [`Domain`].
pub async fn server_in(d: &Domain, s: &mut Stream, key: &ClusterKey, timeout: Duration) -> Result<SessionKeys> {
    let peer = s.peer.clone();
    tokio::time::timeout(timeout, server_inner(d, s, key))
        .await
        .map_err(|_| XferError::HandshakeTimeout { peer, timeout })?
}

async fn server_inner(d: &Domain, s: &mut Stream, key: &ClusterKey) -> Result<SessionKeys> {
    let peer = s.peer.clone();
    let mut hello = [0u8; PREFIX_LEN + NONCE_LEN];
    read_handshake(s, &mut hello[..8], || XferError::NotDrift {
        peer: peer.clone(),
        detail: "it closed the connection without a greeting".into(),
    })
    .await?;
    check_magic(d, &peer, &hello)?;
    read_handshake(s, &mut hello[8..], || XferError::NotDrift {
        peer: peer.clone(),
        detail: "it closed the connection during the greeting".into(),
    })
    .await?;
    check_version(&peer, hello[8])?;
    let mut cn = [0u8; NONCE_LEN];
    cn.copy_from_slice(&hello[PREFIX_LEN..]);
    let mut sn = [0u8; NONCE_LEN];
    rand::fill(&mut sn);
    let mut reply = Vec::with_capacity(PREFIX_LEN + NONCE_LEN + 32);
    reply.extend_from_slice(&prefix(d));
    reply.extend_from_slice(&sn);
    reply.extend_from_slice(derive(d, key, "server proof", &cn, &sn).as_bytes());
    s.writer
        .write_all(&reply)
        .await
        .map_err(|e| XferError::io(format!("handshake with {peer}"), e))?;
    let mut proof = [0u8; 32];
    read_handshake(s, &mut proof, || XferError::Auth {
        peer: peer.clone(),
        detail: "the sender closed the connection instead of proving the cluster key (it holds a different key?)".into(),
    })
    .await?;
    if derive(d, key, "client proof", &cn, &sn) != blake3::Hash::from_bytes(proof) {
        return Err(XferError::Auth {
            peer,
            detail: "the sender's key proof is wrong (different cluster key)".into(),
        });
    }
    Ok(keys(d, key, &cn, &sn, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (Stream, Stream) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        (
            Stream { reader: Box::new(ar), writer: Box::new(aw), peer: "a".into() },
            Stream { reader: Box::new(br), writer: Box::new(bw), peer: "b".into() },
        )
    }

    #[tokio::test]
    async fn same_key_agrees_on_crossed_keys() {
        let key = ClusterKey::generate();
        let (mut a, mut b) = pipe();
        let k2 = key.clone();
        let srv = tokio::spawn(async move { server(&mut b, &k2, Duration::from_secs(5)).await });
        let c = client(&mut a, &key, Duration::from_secs(5)).await.unwrap();
        let s = srv.await.unwrap().unwrap();
        assert_eq!(c.tx, s.rx);
        assert_eq!(c.rx, s.tx);
        assert_ne!(c.tx, c.rx);
    }

    #[tokio::test]
    async fn different_keys_fail_on_both_sides() {
        let (mut a, mut b) = pipe();
        let srv = tokio::spawn(async move {
            server(&mut b, &ClusterKey::generate(), Duration::from_secs(5)).await
        });
        let c = client(&mut a, &ClusterKey::generate(), Duration::from_secs(5)).await;
        assert!(matches!(c, Err(XferError::Auth { .. })), "{c:?}");
        drop(a);
        let s = srv.await.unwrap();
        assert!(matches!(s, Err(XferError::Auth { .. })), "{s:?}");
    }
}
