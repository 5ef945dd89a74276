//! The proxy's own passive ports (client side): a listener per PASV or
//! EPSV on a port from `passive_ports`, accepting one connection from
//! the client's address only.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// How long a client has to connect after PASV/EPSV's reply.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(15);
/// Most ports tried per PASV before giving up (the range may be busy).
const MAX_TRIES: u32 = 200;

pub struct Passive {
    ports: RangeInclusive<u16>,
    next: AtomicU32,
}

impl Passive {
    pub fn new(ports: RangeInclusive<u16>) -> Passive {
        let span = u32::from(*ports.end() - *ports.start()) + 1;
        Passive { next: AtomicU32::new(rand::random::<u32>() % span), ports }
    }

    /// A listener on `ip` and a free port of the range.
    pub async fn bind(&self, ip: IpAddr) -> std::io::Result<TcpListener> {
        let lo = u32::from(*self.ports.start());
        let span = u32::from(*self.ports.end()) - lo + 1;
        let mut last = None;
        for _ in 0..MAX_TRIES.min(span) {
            let port = (lo + self.next.fetch_add(1, Ordering::Relaxed) % span) as u16;
            match TcpListener::bind(SocketAddr::new(ip, port)).await {
                Ok(l) => return Ok(l),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::AddrInUse, "no passive port free")))
    }
}

/// The first connection to `l` from `client`, within [`ACCEPT_TIMEOUT`];
/// connections from any other address are closed at once.
pub async fn accept_from(l: &TcpListener, client: IpAddr) -> std::io::Result<TcpStream> {
    let fut = async {
        loop {
            let (s, peer) = l.accept().await?;
            if canonical(peer.ip()) == canonical(client) {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            tracing::warn!(%peer, %client, "data connection from another address than the client's: closed");
        }
    };
    tokio::time::timeout(ACCEPT_TIMEOUT, fut)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "the client did not open the data connection"))?
}

/// IPv4-mapped IPv6 addresses compare as the IPv4 address they carry.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}
