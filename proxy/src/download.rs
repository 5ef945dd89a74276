//! A download that survives the loss of its primary. At the start the
//! proxy asks the node for the file's BLAKE3 (`HASH`, answered from the
//! journal) and counts the bytes delivered to the client. When the
//! primary is lost mid-transfer the client's data connection stays open
//! and idle; once a new primary serves (within `patience_secs`), the
//! proxy asks it for the file's BLAKE3 again and, only if it is the same
//! file, resumes with `REST <offset>` + `RETR` into the same client data
//! connection. A different file is a `451`, never a splice of two files.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::backend::{Backend, BackendError, COMMAND_TIMEOUT};
use crate::relay::FINAL_REPLY_TIMEOUT;
use crate::reply::Reply;
use crate::session::Session;
use crate::state::Progress;

/// The bytes moved per read.
const CHUNK: usize = 256 << 10;
/// Most resumptions of one download (each needs a new primary).
const MAX_RESUMES: u32 = 8;

/// What identifies the file a download reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileId {
    pub size: u64,
    pub blake3: String,
}

/// The file's identity by `HASH` (BLAKE3, the session's default
/// algorithm); `None` if the node cannot tell.
pub async fn file_id(b: &mut Backend, path: &str) -> Result<Option<FileId>, BackendError> {
    let r = b.command(&format!("HASH {path}")).await?;
    Ok((r.code == 213).then(|| parse_hash(r.text())).flatten())
}

/// `BLAKE3 0-<size> <hex> <path>`.
pub fn parse_hash(text: &str) -> Option<FileId> {
    let mut it = text.split(' ');
    if !it.next()?.eq_ignore_ascii_case("BLAKE3") {
        return None;
    }
    let size = it.next()?.strip_prefix("0-")?.parse().ok()?;
    let hex = it.next()?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| FileId { size, blake3: hex.to_ascii_lowercase() })
}

/// How a copy from the node ended.
enum Copied {
    /// The node closed the data connection (the end, or its death).
    NodeEnded,
    /// The client went away: nothing to resume.
    ClientGone(std::io::Error),
}

/// Copies node → client, counting into `done` (and into the active
/// state now and then).
async fn copy_counted(node: &mut TcpStream, client: &mut TcpStream, done: &mut u64, mut progress: impl FnMut(u64)) -> Copied {
    let mut buf = vec![0u8; CHUNK];
    let mut every = Progress::new();
    loop {
        if every.due() {
            progress(*done);
        }
        let n = match node.read(&mut buf).await {
            Ok(0) | Err(_) => return Copied::NodeEnded,
            Ok(n) => n,
        };
        if let Err(e) = client.write_all(&buf[..n]).await {
            return Copied::ClientGone(e);
        }
        *done += n as u64;
    }
}

impl Session {
    /// Runs a RETR whose first reply (1xx) the client already has: relays
    /// the data, and resumes on a new primary if this one is lost.
    /// Returns the final reply for the client.
    pub async fn download(&mut self, mut client: TcpStream, mut node: TcpStream, path: &str, start: u64, id: FileId) -> Reply {
        let mut done = 0u64;
        let mut resumes = 0;
        loop {
            let (state, session, epoch) = (&self.shared.state, self.id, self.backend.as_ref().map_or(0, |b| b.epoch));
            let copied = copy_counted(&mut node, &mut client, &mut done, |n| state.transfer_state(session, start + n, epoch, "running")).await;
            if let Copied::ClientGone(e) = copied {
                warn!(session = self.id, "the client's data connection broke after {done} bytes: {e}");
                drop(node);
                let _ = self.final_reply().await;
                return Reply::new(426, "Data connection closed; transfer aborted");
            }
            drop(node);
            match self.final_reply().await {
                Some(r) => {
                    let _ = client.shutdown().await;
                    return r;
                }
                None if resumes >= MAX_RESUMES => return Reply::new(451, "The service was lost too often during this download"),
                None => {}
            }
            resumes += 1;
            let offset = start + done;
            self.shared.state.transfer_state(self.id, offset, self.shared.view.borrow().epoch, "waiting");
            warn!(session = self.id, %path, offset, "the primary was lost during a download: resuming on the next one");
            node = match self.resume(path, offset, &id).await {
                Ok(n) => n,
                Err(r) => return r,
            };
            info!(session = self.id, %path, offset, "download resumed on the new primary");
        }
    }

    /// The node's final reply; `None` when the node was lost.
    pub async fn final_reply(&mut self) -> Option<Reply> {
        let b = self.backend.as_mut()?;
        match b.reply(FINAL_REPLY_TIMEOUT).await {
            Ok(r) => Some(r),
            Err(e) => {
                warn!(session = self.id, "no final reply from the primary: {e}");
                self.backend = None;
                None
            }
        }
    }

    /// A data connection on the next primary, positioned at `offset` of
    /// the same file; the error is the reply for the client.
    async fn resume(&mut self, path: &str, offset: u64, id: &FileId) -> Result<TcpStream, Reply> {
        let deadline = tokio::time::Instant::now() + self.shared.cfg.patience;
        loop {
            self.backend = None;
            self.ensure_backend().await.map_err(|_| Reply::new(451, "No primary came back within the patience: download not resumed"))?;
            let Some(b) = self.backend.as_mut() else { continue };
            let attempt = async {
                let now = file_id(b, path).await?;
                if now.as_ref() != Some(id) {
                    return Ok(Err(now));
                }
                let data = b.open_data().await?;
                let r = b.command(&format!("REST {offset}")).await?;
                if r.code != 350 {
                    return Ok(Err(None));
                }
                b.send(&format!("RETR {path}")).await?;
                let first = b.reply(COMMAND_TIMEOUT).await?;
                Ok::<_, BackendError>(if first.preliminary() { Ok(data) } else { Err(None) })
            }
            .await;
            match attempt {
                Ok(Ok(data)) => return Ok(data),
                Ok(Err(now)) => {
                    warn!(session = self.id, %path, before = ?id, now = ?now, "the file differs on the new primary: not resumed");
                    return Err(Reply::new(451, "The file changed while the service moved: download not resumed"));
                }
                Err(e) => {
                    warn!(session = self.id, "resuming failed: {e}");
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Reply::new(451, "The service did not come back: download not resumed"));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_replies_parse() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_hash(&format!("BLAKE3 0-42 {hex} /a b")), Some(FileId { size: 42, blake3: hex.clone() }));
        assert_eq!(parse_hash(&format!("SHA-256 0-42 {hex} /a")), None);
        assert_eq!(parse_hash("BLAKE3 0-42 zz /a"), None);
        assert_eq!(parse_hash(&format!("BLAKE3 5-42 {hex} /a")), None);
    }
}
