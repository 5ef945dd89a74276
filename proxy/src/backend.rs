//! One FTP client session on a node: the backend of a client session.
//! Every wait is bounded; every failure is a [`BackendError`] and the
//! session is then dropped (a new one is opened on the current primary).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};

use crate::reply::{read_reply, LineError, Reply};

/// Connecting, the greeting, login and an ordinary command's reply.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("{addr}: {source}")]
    Line { addr: String, source: LineError },
    #[error("{addr}: no reply within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("{addr} answered {what} with {reply:?}")]
    Unexpected { addr: String, what: &'static str, reply: String },
}

pub type Result<T> = std::result::Result<T, BackendError>;

pub struct Backend {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    /// The epoch of the primary this session was opened on.
    pub epoch: u64,
    pub addr: SocketAddr,
    local: IpAddr,
}

async fn dial(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let sock = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let s = sock.connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

impl Backend {
    /// Connects to the node at `addr` (from `source` when given) and
    /// reads its greeting.
    pub async fn connect(addr: &str, source: Option<IpAddr>, epoch: u64) -> Result<Backend> {
        let err = |source| BackendError::Connect { addr: addr.to_owned(), source };
        let fut = async {
            let sa = tokio::net::lookup_host(addr)
                .await?
                .next()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "the name resolves to no address"))?;
            let s = dial(sa, source).await?;
            Ok::<_, std::io::Error>((sa, s))
        };
        let (sa, stream) = tokio::time::timeout(COMMAND_TIMEOUT, fut)
            .await
            .map_err(|_| BackendError::Timeout { addr: addr.to_owned(), timeout: COMMAND_TIMEOUT })?
            .map_err(err)?;
        let local = stream.local_addr().map_err(err)?.ip();
        let (r, w) = stream.into_split();
        let mut b = Backend { r: BufReader::new(r), w, epoch, addr: sa, local };
        let greeting = b.reply(COMMAND_TIMEOUT).await?;
        if greeting.code != 220 {
            return Err(b.unexpected("the connection", &greeting));
        }
        Ok(b)
    }

    fn unexpected(&self, what: &'static str, reply: &Reply) -> BackendError {
        BackendError::Unexpected { addr: self.addr.to_string(), what, reply: reply.lines.join(" / ") }
    }

    /// Logs in as `user` with `password` (the proxy credential).
    pub async fn login(&mut self, user: &str, password: &str) -> Result<()> {
        let r = self.command(&format!("USER {user}")).await?;
        if r.code == 230 {
            return Ok(());
        }
        if r.code != 331 {
            return Err(self.unexpected("USER", &r));
        }
        let r = self.command(&format!("PASS {password}")).await?;
        if r.code != 230 {
            return Err(self.unexpected("PASS", &r));
        }
        Ok(())
    }

    /// Sends one command line (no CRLF).
    pub async fn send(&mut self, line: &str) -> Result<()> {
        let mut buf = Vec::with_capacity(line.len() + 2);
        buf.extend_from_slice(line.as_bytes());
        buf.extend_from_slice(b"\r\n");
        self.w
            .write_all(&buf)
            .await
            .map_err(|e| BackendError::Line { addr: self.addr.to_string(), source: LineError::Io(e) })
    }

    /// The next reply, within `timeout`.
    pub async fn reply(&mut self, timeout: Duration) -> Result<Reply> {
        let addr = self.addr.to_string();
        match tokio::time::timeout(timeout, read_reply(&mut self.r)).await {
            Err(_) => Err(BackendError::Timeout { addr, timeout }),
            Ok(Err(source)) => Err(BackendError::Line { addr, source }),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// Sends a command and reads its reply.
    pub async fn command(&mut self, line: &str) -> Result<Reply> {
        self.send(line).await?;
        self.reply(COMMAND_TIMEOUT).await
    }

    /// Opens a passive data connection (EPSV) to the node, from the same
    /// local address as the control connection (the node requires it).
    pub async fn open_data(&mut self) -> Result<TcpStream> {
        let r = self.command("EPSV").await?;
        let port = (r.code == 229).then(|| epsv_port(r.text())).flatten().ok_or_else(|| self.unexpected("EPSV", &r))?;
        let to = SocketAddr::new(self.addr.ip(), port);
        let fut = dial(to, Some(self.local));
        tokio::time::timeout(COMMAND_TIMEOUT, fut)
            .await
            .map_err(|_| BackendError::Timeout { addr: to.to_string(), timeout: COMMAND_TIMEOUT })?
            .map_err(|source| BackendError::Connect { addr: to.to_string(), source })
    }

    /// Says QUIT without waiting long for the answer.
    pub async fn quit(mut self) {
        if self.send("QUIT").await.is_ok() {
            let _ = self.reply(Duration::from_secs(2)).await;
        }
    }
}

/// The port of an EPSV reply's `(|||port|)`.
pub fn epsv_port(text: &str) -> Option<u16> {
    let start = text.find("(|||")? + 4;
    let rest = &text[start..];
    let end = rest.find("|)")?;
    rest[..end].parse().ok().filter(|&p| p != 0)
}

/// The path of a `257 "path" ...` reply (`""` inside stands for `"`).
pub fn quoted_path(text: &str) -> Option<String> {
    let rest = text.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' {
            if chars.peek() == Some(&'"') {
                chars.next();
                out.push('"');
            } else {
                return Some(out);
            }
        } else {
            out.push(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epsv_and_pwd_replies_parse() {
        assert_eq!(epsv_port("Entering Extended Passive Mode (|||41234|)"), Some(41234));
        assert_eq!(epsv_port("(|||0|)"), None);
        assert_eq!(epsv_port("nonsense"), None);
        assert_eq!(quoted_path("\"/a \"\"b\"\"\" is cwd").as_deref(), Some("/a \"b\""));
        assert_eq!(quoted_path("/x"), None);
    }
}
