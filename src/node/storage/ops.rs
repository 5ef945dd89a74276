//! The transfers and namespace operations behind the trait methods of
//! [`DriftStorage`], which log each of them ([`super::record`]).

use std::fmt::Debug;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::os::unix::fs::FileExt;

use unftp_core::storage::{Error, ErrorKind, Result, StorageBackend};

use super::record::{refused_info, shown};
use super::{is_home, on_own_thread, read_full_at, resolve, DriftStorage, PIPELINE_DEPTH};
use crate::node::auth::NodeUser;
use crate::node::users::Perm;
use crate::node::zerocopy::{self, stalled};

impl DriftStorage {
    pub(super) async fn get_into_impl<P, W>(&self, user: &NodeUser, path: P, start_pos: u64, output: &mut W) -> Result<u64>
    where
        W: AsyncWrite + Unpin + Sync + Send + ?Sized,
        P: AsRef<Path> + Send + Debug,
    {
        self.check(user, Perm::Read, path.as_ref())?;
        let rel = resolve(path.as_ref())?;
        let (file, len) = self.open_read(rel).await?;
        let chunk = self.ctx.io_chunk;
        let limit = self.stall_limit();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Vec<u8>>>(PIPELINE_DEPTH);
        let (pool_tx, mut pool_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(PIPELINE_DEPTH + 2);
        // Serve the file as it was when opened: the loop ends at `len`
        // even if someone keeps appending.
        let reader = tokio::task::spawn_blocking(move || {
            let mut pos = start_pos;
            while pos < len {
                let want = chunk.min((len - pos) as usize);
                let mut buf = pool_rx.try_recv().unwrap_or_default();
                buf.resize(want, 0);
                let msg = read_full_at(&file, &mut buf, pos).map(|n| {
                    buf.truncate(n);
                    buf
                });
                let done = match &msg {
                    Ok(b) => b.is_empty(),
                    Err(_) => true,
                };
                if let Ok(b) = &msg {
                    pos += b.len() as u64;
                }
                // A closed receiver means the client went away.
                if tx.blocking_send(msg).is_err() || done {
                    return;
                }
            }
        });
        let mut total = 0u64;
        let result: io::Result<()> = async {
            while let Some(block) = rx.recv().await {
                let block = block?;
                if block.is_empty() {
                    break;
                }
                tokio::time::timeout(limit, output.write_all(&block))
                    .await
                    .map_err(|_| stalled("download", limit))??;
                total += block.len() as u64;
                let _ = pool_tx.try_send(block);
            }
            tokio::time::timeout(limit, output.flush())
                .await
                .map_err(|_| stalled("download", limit))??;
            Ok(())
        }
        .await;
        drop(rx);
        let _ = reader.await;
        result?;
        Ok(total)
    }

    pub(super) async fn put_impl<P: AsRef<Path> + Send + Debug, R: AsyncRead + Send + Sync + Unpin + 'static>(
        &self,
        user: &NodeUser,
        mut input: R,
        path: P,
        start_pos: u64,
    ) -> Result<(u64, Option<u64>)> {
        let (file, upload) = self.open_upload(user, path.as_ref(), start_pos).await?;
        let fsync = self.ctx.fsync_uploads;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(PIPELINE_DEPTH);
        // Written blocks come back for reuse: no allocation or zeroing of
        // a fresh block per chunk.
        let (pool_tx, mut pool_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(PIPELINE_DEPTH + 2);
        let offer = self.start_offer(&file, &upload, start_pos);
        let writer = tokio::task::spawn_blocking(move || -> io::Result<()> {
            let mut pos = start_pos;
            let mut written = Ok(());
            while let Some(block) = rx.blocking_recv() {
                if let Err(e) = file.write_all_at(&block, pos) {
                    written = Err(e);
                    break;
                }
                pos += block.len() as u64;
                if let Some(o) = &offer {
                    o.advance(pos);
                }
                let _ = pool_tx.try_send(block);
            }
            if let Some(o) = offer {
                o.complete(written.is_ok(), pos);
            }
            written?;
            if fsync {
                let t = std::time::Instant::now();
                file.sync_all()?;
                tracing::debug!(fsync_ms = t.elapsed().as_millis() as u64, "upload fsynced");
            }
            // close(2) here, before the journal wait below starts.
            drop(file);
            Ok(())
        });

        let chunk = self.ctx.io_chunk;
        let limit = self.stall_limit();
        let mut total = 0u64;
        let read_result: io::Result<()> = async {
            let mut eof = false;
            while !eof {
                let mut buf = pool_rx.try_recv().unwrap_or_default();
                buf.resize(chunk, 0);
                let mut filled = 0;
                let mut failed = None;
                while filled < chunk {
                    let read = tokio::time::timeout(limit, input.read(&mut buf[filled..]))
                        .await
                        .map_err(|_| stalled("upload", limit))
                        .and_then(|r| r);
                    match read {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(n) => filled += n,
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                if let Some(e) = failed {
                    // Keep what did arrive, so a resumed upload (SIZE, then
                    // REST or APPE) continues from every byte received.
                    buf.truncate(filled);
                    if filled > 0 && tx.send(buf).await.is_ok() {
                        total += filled as u64;
                    }
                    return Err(e);
                }
                if filled == 0 {
                    break;
                }
                buf.truncate(filled);
                total += filled as u64;
                if tx.send(buf).await.is_err() {
                    // The writer stopped; its error is reported below.
                    break;
                }
            }
            Ok(())
        }
        .await;
        drop(tx);
        match writer.await {
            Ok(r) => r?,
            Err(e) => return Err(Error::new(ErrorKind::LocalError, e.to_string())),
        }
        read_result?;
        self.finish_upload(upload, total).await
    }

    pub(super) async fn put_from_tcp_impl<P>(&self, user: &NodeUser, socket: tokio::net::TcpStream, path: P, start_pos: u64) -> Result<(u64, Option<u64>)>
    where
        P: AsRef<Path> + Send + Debug,
    {
        let (file, upload) = self.open_upload(user, path.as_ref(), start_pos).await?;
        let socket = socket.into_std()?;
        let (fsync, limit, transfers) = (self.ctx.fsync_uploads, self.stall_limit(), self.ctx.transfers.clone());
        let offer = self.start_offer(&file, &upload, start_pos);
        let transfer = move || {
            let mut got = zerocopy::receive_into(socket.as_fd(), &file, start_pos, limit, transfers.stopping(), &mut |end| {
                if let Some(o) = &offer {
                    o.advance(end);
                }
            });
            if let Some(o) = offer {
                o.complete(got.result.is_ok(), got.bytes);
            }
            if got.result.is_ok() && fsync {
                got.result = file.sync_all();
            }
            // close(2) here, before the journal wait starts.
            drop(file);
            Ok(got)
        };
        let received = on_own_thread(&self.ctx.transfers, transfer).await?;
        // Bytes that arrived before a failure stay in the file, so a
        // resumed upload (SIZE, then REST or APPE) continues from them.
        received.result?;
        self.finish_upload(upload, received.bytes).await
    }

    pub(super) async fn get_into_tcp_impl<P>(&self, user: &NodeUser, path: P, start_pos: u64, socket: &mut tokio::net::TcpStream) -> Result<u64>
    where
        P: AsRef<Path> + Send + Debug,
    {
        self.check(user, Perm::Read, path.as_ref())?;
        let rel = resolve(path.as_ref())?;
        let (file, len) = self.open_read(rel).await?;
        if start_pos >= len {
            return Ok(0);
        }
        // The blocking thread gets its own descriptor of the connection,
        // so an abandoned transfer can never write to a reused number.
        let sock = socket.as_fd().try_clone_to_owned()?;
        let (limit, transfers) = (self.stall_limit(), self.ctx.transfers.clone());
        // Serve the file as it was when opened: stop at `len` even if
        // someone keeps appending.
        let sent = on_own_thread(&self.ctx.transfers, move || {
            zerocopy::send_file(sock.as_fd(), &file, start_pos, len, limit, transfers.stopping())
        })
        .await?;
        match sent {
            zerocopy::Sent::Done(n) => Ok(n),
            zerocopy::Sent::Unsupported => {
                tracing::debug!("sendfile unsupported for this file; copying through the node");
                self.get_into_impl(user, path, start_pos, socket).await
            }
        }
    }

    pub(super) async fn del_impl<P: AsRef<Path> + Send + Debug>(&self, user: &NodeUser, path: P) -> Result<()> {
        self.check(user, Perm::Delete, path.as_ref())?;
        let rel = resolve(path.as_ref())?;
        let s = self.session()?;
        match s.fs.del(user, rel.clone()).await {
            Err(e) if self.is_dir(&rel).await => {
                tracing::debug!(error = %e, "DELE of a directory");
                Err(refused_info(user, format!("{}: Is a directory", shown(path.as_ref()))))
            }
            r => r,
        }
    }

    pub(super) async fn mkd_impl<P: AsRef<Path> + Send + Debug>(&self, user: &NodeUser, path: P) -> Result<()> {
        self.check(user, Perm::Mkdir, path.as_ref())?;
        let rel = resolve(path.as_ref())?;
        if is_home(&rel) {
            return Err(refused_info(user, format!("{}: File exists", shown(path.as_ref()))));
        }
        match self.session()?.fs.mkd(user, rel).await {
            Err(e) if e.get_io_error().is_some_and(|io| io.kind() == io::ErrorKind::AlreadyExists) => {
                Err(refused_info(user, format!("{}: File exists", shown(path.as_ref()))))
            }
            r => r,
        }
    }

    pub(super) async fn rename_impl<P: AsRef<Path> + Send + Debug>(&self, user: &NodeUser, from: P, to: P) -> Result<()> {
        self.check(user, Perm::Rename, from.as_ref())?;
        let from = resolve(from.as_ref())?;
        let to = resolve(to.as_ref())?;
        if is_home(&from) || is_home(&to) {
            return Err(Error::new(ErrorKind::PermissionDenied, "cannot rename the home directory"));
        }
        let s = self.session()?;
        // Renaming onto an existing name destroys it: that is a deletion.
        if s.fs.metadata(user, to.clone()).await.is_ok() {
            self.check(user, Perm::Delete, &to)?;
        }
        s.fs.rename(user, from, to).await
    }

    pub(super) async fn rmd_impl<P: AsRef<Path> + Send + Debug>(&self, user: &NodeUser, path: P) -> Result<()> {
        self.check(user, Perm::Delete, path.as_ref())?;
        let rel = resolve(path.as_ref())?;
        if is_home(&rel) {
            return Err(Error::new(ErrorKind::PermissionDenied, "cannot remove the home directory"));
        }
        self.session()?.fs.rmd(user, rel).await
    }

    pub(super) async fn cwd_impl<P: AsRef<Path> + Send + Debug>(&self, user: &NodeUser, path: P) -> Result<()> {
        let rel = resolve(path.as_ref())?;
        self.session()?.fs.cwd(user, rel).await
    }
}
