//! Transfer channels: how bytes get between two peers. The frame layer only
//! sees a [`Stream`] (a reader half, a writer half and a name for logs), so
//! another channel kind (TLS, a serial link, an in-memory pipe in tests)
//! plugs in by implementing [`Connector`] and [`Acceptor`].

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub type BoxWrite = Box<dyn Sink>;

/// The writing half of a channel. A TCP half also names its socket, so
/// the frame writer can send file contents with `sendfile` (no copy
/// through user space); any other channel writes what it is given.
pub trait Sink: AsyncWrite + Send + Unpin {
    fn tcp_fd(&self) -> Option<RawFd> {
        None
    }
}

impl Sink for tokio::net::tcp::OwnedWriteHalf {
    fn tcp_fd(&self) -> Option<RawFd> {
        Some(self.as_ref().as_raw_fd())
    }
}

impl<T: AsyncRead + AsyncWrite + Send> Sink for tokio::io::WriteHalf<T> {}

impl Sink for tokio::io::DuplexStream {}

/// One open channel.
pub struct Stream {
    pub reader: BoxRead,
    pub writer: BoxWrite,
    /// The peer's address or another name for logs and errors.
    pub peer: String,
}

/// Opens channels to one receiver.
#[async_trait::async_trait]
pub trait Connector: Send + Sync {
    async fn connect(&self) -> io::Result<Stream>;
    fn describe(&self) -> String;
}

/// Accepts channels from senders.
#[async_trait::async_trait]
pub trait Acceptor: Send + Sync {
    async fn accept(&self) -> io::Result<Stream>;
    fn local_addr(&self) -> String;
}

fn tune(stream: &TcpStream) {
    // Latency of the small ack and reply frames matters more than packet
    // count: big frames fill segments anyway. Buffer sizes are left to the
    // kernel's autotuning, which setting SO_RCVBUF would switch off.
    let _ = stream.set_nodelay(true);
}

fn into_stream(stream: TcpStream, peer: SocketAddr) -> Stream {
    tune(&stream);
    let (r, w) = stream.into_split();
    Stream {
        reader: Box::new(r),
        writer: Box::new(w),
        peer: peer.to_string(),
    }
}

/// TCP to `HOST:PORT`.
pub struct TcpConnector {
    pub addr: String,
}

#[async_trait::async_trait]
impl Connector for TcpConnector {
    /// Each address `addr` resolves to is tried in turn. The socket is
    /// made with `SO_REUSEADDR`: a node ships every batch on new
    /// connections, and their TIME_WAIT remains (left by sockets without
    /// it) would otherwise keep the node's FTP server from binding a
    /// passive port that happens to be the same local port.
    async fn connect(&self) -> io::Result<Stream> {
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, format!("{} resolves to no address", self.addr));
        for addr in tokio::net::lookup_host(&self.addr).await? {
            let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
            socket.set_reuseaddr(true)?;
            match socket.connect(addr).await {
                Ok(stream) => {
                    let peer = stream.peer_addr()?;
                    return Ok(into_stream(stream, peer));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn describe(&self) -> String {
        self.addr.clone()
    }
}

/// A listening TCP socket.
pub struct TcpAcceptor {
    pub listener: TcpListener,
}

#[async_trait::async_trait]
impl Acceptor for TcpAcceptor {
    async fn accept(&self) -> io::Result<Stream> {
        let (stream, peer) = self.listener.accept().await?;
        Ok(into_stream(stream, peer))
    }

    fn local_addr(&self) -> String {
        self.listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into())
    }
}
