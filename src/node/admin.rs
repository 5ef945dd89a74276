//! The admin socket: how `drift user unlock` reaches a running node.
//!
//! A Unix stream socket (path: `[admin] socket` in node.toml, see
//! `docs/node.md`), mode 0600, and every connection's peer credentials
//! are checked: only root or the user the node runs as may talk to it.
//! The protocol is one request line and one reply line, both UTF-8:
//!
//! ```text
//! unlock NAME      ->  ok LIFTED        (LIFTED: lockouts lifted, 0 = was not locked out)
//! anything else    ->  error MESSAGE
//! ```
//!
//! Nothing here touches a session: unlocking only edits the lockout table.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::auth::Lockout;
use super::users::validate_name;

/// Longest request line accepted (a name is at most 64 bytes).
const MAX_REQUEST: u64 = 256;
/// A client that does not finish its request in this time is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors creating the admin socket. (The client side, `drift user
/// unlock`, is in `cli.rs`, so the CLI does not depend on the server.)
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot create the admin socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("the admin socket {path} is in use: another node is running with it (set [admin] socket in node.toml to another path)")]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it with the admin socket (set [admin] socket in node.toml to another path)")]
    NotSocket { path: PathBuf },
}

/// Serves the admin socket at `path` until `shutdown` completes, then
/// removes it. Returns an error at once when the socket cannot be created
/// (a live node already uses the path, a file that is not a socket is in
/// the way, the directory is missing); a stale socket left by a killed
/// node is replaced.
pub async fn serve(path: PathBuf, lockout: Arc<Lockout>, shutdown: impl Future<Output = ()>) -> Result<(), AdminError> {
    clear_stale(&path)?;
    let bind_err = |source| AdminError::Bind { path: path.clone(), source };
    let listener = UnixListener::bind(&path).map_err(bind_err)?;
    // Peer credentials are checked on every connection; the mode keeps
    // other users from even connecting.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    let ino = std::fs::symlink_metadata(&path).map(|m| m.ino()).ok();
    tracing::info!(path = %path.display(), "admin socket listening");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let lockout = lockout.clone();
                    tokio::spawn(async move {
                        if let Err(e) = tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, &lockout)).await.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())) {
                            tracing::debug!(error = %e, "admin request dropped");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    // Remove the socket only if it is still ours (a newer node may have
    // replaced a path it thought stale).
    if ino.is_some() && std::fs::symlink_metadata(&path).map(|m| m.ino()).ok() == ino {
        let _ = std::fs::remove_file(&path);
    }
    Ok(())
}

/// Removes a socket file no process listens on; refuses anything else.
fn clear_stale(path: &Path) -> Result<(), AdminError> {
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(AdminError::Bind { path: path.to_owned(), source }),
    };
    if !md.file_type().is_socket() {
        return Err(AdminError::NotSocket { path: path.to_owned() });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(AdminError::InUse { path: path.to_owned() }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing a stale admin socket left by a node that did not stop cleanly");
            std::fs::remove_file(path).map_err(|source| AdminError::Bind { path: path.to_owned(), source })
        }
        Err(source) => Err(AdminError::Bind { path: path.to_owned(), source }),
    }
}

async fn handle(stream: UnixStream, lockout: &Lockout) -> io::Result<()> {
    let cred = stream.peer_cred()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let (read, mut write) = stream.into_split();
    if cred.uid() != 0 && cred.uid() != me {
        tracing::warn!(uid = cred.uid(), "admin socket: refused a client that is neither root nor the node's user");
        write.write_all(b"error permission denied\n").await?;
        return Ok(());
    }
    let mut line = String::new();
    tokio::io::BufReader::new(read.take(MAX_REQUEST)).read_line(&mut line).await?;
    let reply = answer(line.trim_end_matches(['\n', '\r']), lockout);
    write.write_all(reply.as_bytes()).await?;
    write.shutdown().await
}

fn answer(request: &str, lockout: &Lockout) -> String {
    match request.split_once(' ') {
        Some(("unlock", name)) => match validate_name(name) {
            Ok(()) => format!("ok {}\n", lockout.unlock(name)),
            Err(e) => format!("error {e}\n"),
        },
        _ => "error unknown request (expected: unlock NAME)\n".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_parsed_strictly() {
        let l = Lockout::default();
        assert_eq!(answer("unlock alice", &l), "ok 0\n");
        assert!(answer("unlock a b", &l).starts_with("error invalid user name"));
        assert!(answer("unlock ", &l).starts_with("error"));
        assert!(answer("drop-all", &l).starts_with("error unknown request"));
    }

    /// A blocking client, as `drift user unlock` is.
    fn request(path: &Path, line: &str) -> io::Result<String> {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(path)?;
        s.write_all(format!("{line}\n").as_bytes())?;
        let mut reply = String::new();
        std::io::BufReader::new(s).read_line(&mut reply)?;
        Ok(reply)
    }

    #[tokio::test]
    async fn serves_unlock_and_refuses_what_is_in_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let lockout = Arc::new(Lockout::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(path.clone(), lockout.clone(), async move {
            let _ = rx.await;
        }));
        let p = path.clone();
        let ready = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if let Ok(reply) = request(&p, "unlock alice") {
                    return Some(reply);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        })
        .await
        .unwrap();
        assert_eq!(ready.as_deref(), Some("ok 0\n"));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // A second node on the same path is refused, the first keeps it.
        let second = serve(path.clone(), lockout.clone(), std::future::pending()).await;
        assert!(matches!(second, Err(AdminError::InUse { .. })), "{second:?}");
        let p = path.clone();
        let refused = tokio::task::spawn_blocking(move || request(&p, "unlock ../x")).await.unwrap().unwrap();
        assert!(refused.starts_with("error invalid user name"), "{refused:?}");
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
        assert!(!path.exists(), "the socket was not removed on shutdown");
        // A regular file in the way is never deleted.
        std::fs::write(&path, "keep").unwrap();
        let r = serve(path.clone(), lockout, std::future::pending()).await;
        assert!(matches!(r, Err(AdminError::NotSocket { .. })), "{r:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep");
    }
}
