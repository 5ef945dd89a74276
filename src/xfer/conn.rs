//! Frame assembly over one channel: a writer that numbers and MACs frames,
//! a reader that checks them. The channel halves come from
//! [`super::channel`]; the writer only touches a socket directly to hand a
//! data frame's payload to `sendfile` when the channel is TCP.

use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

use super::channel::{BoxRead, BoxWrite};
use super::error::{FrameError, Result, XferError};
use super::frame::{self, FrameType, Header, HEADER_LEN, MAC_LEN};

/// Frames below this size are assembled into one buffer and written with
/// one call; bigger ones are written from where they lie.
const COALESCE: usize = 64 << 10;

pub struct FrameWriter {
    w: BoxWrite,
    key: [u8; 32],
    seq: u64,
    peer: String,
    /// The TCP socket (a duplicate registered for writability), made on
    /// the first data frame sent from a file; `Err` once that failed.
    zero_copy: Option<std::result::Result<std::sync::Arc<AsyncFd<OwnedFd>>, ()>>,
}

impl FrameWriter {
    pub fn new(w: BoxWrite, key: [u8; 32], peer: String) -> Self {
        FrameWriter { w, key, seq: 0, peer, zero_copy: None }
    }

    /// Large data frames are written through this process's memory, never
    /// with sendfile.
    pub fn without_sendfile(&mut self) {
        self.zero_copy = Some(Err(()));
    }

    /// The sequence number the next frame will carry.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    fn next_header(&mut self, ty: FrameType, file_id: u64, offset: u64, len: usize) -> Header {
        let h = Header {
            ty,
            len: len as u32,
            seq: self.seq,
            file_id,
            offset,
        };
        self.seq += 1;
        h
    }

    /// Sends a control frame; returns its sequence number.
    pub async fn send(&mut self, ty: FrameType, file_id: u64, offset: u64, payload: &[u8]) -> Result<u64> {
        let h = self.next_header(ty, file_id, offset, payload.len());
        let digest = frame::payload_digest(&h, payload);
        self.write_frame(&h, payload, &digest).await
    }

    /// Sends a frame whose MAC digest ([`frame::payload_digest`]) the
    /// caller already computed: the subtree CV of a data frame, which it
    /// needs for the file's BLAKE3, or the digest of a batch it built from
    /// its files' hashes.
    pub async fn send_digested(&mut self, ty: FrameType, file_id: u64, offset: u64, payload: &[u8], digest: &[u8; 32]) -> Result<u64> {
        let h = self.next_header(ty, file_id, offset, payload.len());
        self.write_frame(&h, payload, digest).await
    }

    /// Sends a data frame whose subtree CV the caller already computed.
    /// `payload` is the frame's bytes; when `source` is the file they were
    /// read from (at `offset`) and the channel is TCP, a large payload is
    /// sent from the file with `sendfile` instead, sparing the copy into
    /// the socket. The file must still hold those bytes: if it changed,
    /// the receiver's MAC check fails, as it would for any altered frame.
    pub async fn send_data(&mut self, file_id: u64, offset: u64, payload: &[u8], cv: &[u8; 32], source: Option<&File>) -> Result<u64> {
        let file = source.filter(|_| payload.len() >= COALESCE);
        let Some((file, sock)) = file.zip(self.socket()) else {
            return self.send_digested(FrameType::Data, file_id, offset, payload, cv).await;
        };
        let h = self.next_header(FrameType::Data, file_id, offset, payload.len());
        let raw = h.encode();
        let tag = frame::mac(&self.key, &raw, cv);
        self.w.write_all(&raw).await.map_err(|e| self.err(e))?;
        let sent = sendfile_all(&sock, file, offset, payload.len()).await;
        if let Err((done, e)) = sent {
            // A source the kernel cannot splice from: the rest of the frame
            // goes from memory, and so do later frames.
            let unsupported = matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP));
            if !unsupported {
                return Err(self.err(e));
            }
            tracing::debug!(peer = %self.peer, "sendfile not supported here ({e}); writing frames from memory");
            self.zero_copy = Some(Err(()));
            self.w.write_all(&payload[done..]).await.map_err(|e| self.err(e))?;
        }
        self.w.write_all(tag.as_bytes()).await.map_err(|e| self.err(e))?;
        Ok(h.seq)
    }

    /// The socket for `sendfile`, registered on first use; `None` for a
    /// channel that is not TCP, after `without_sendfile`, or once
    /// registering failed.
    fn socket(&mut self) -> Option<std::sync::Arc<AsyncFd<OwnedFd>>> {
        if self.zero_copy.is_none() {
            let registered = self.w.tcp_fd().ok_or(()).and_then(|fd| {
                register(fd).map(std::sync::Arc::new).map_err(|e| tracing::debug!(peer = %self.peer, "sending without sendfile: {e}"))
            });
            self.zero_copy = Some(registered);
        }
        self.zero_copy.as_ref().and_then(|z| z.as_ref().ok().cloned())
    }

    /// Writes header, payload and MAC: small frames assembled into one
    /// buffer and written with one call, bigger ones from where they lie.
    async fn write_frame(&mut self, h: &Header, payload: &[u8], digest: &[u8; 32]) -> Result<u64> {
        let raw = h.encode();
        let tag = frame::mac(&self.key, &raw, digest);
        if payload.len() < COALESCE {
            let mut buf = Vec::with_capacity(HEADER_LEN + payload.len() + MAC_LEN);
            buf.extend_from_slice(&raw);
            buf.extend_from_slice(payload);
            buf.extend_from_slice(tag.as_bytes());
            self.w.write_all(&buf).await.map_err(|e| self.err(e))?;
        } else {
            self.write_all_vectored(&[&raw, payload, tag.as_bytes()]).await?;
        }
        Ok(h.seq)
    }

    async fn write_all_vectored(&mut self, parts: &[&[u8]]) -> Result<()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut done = 0usize;
        while done < total {
            // Rebuild the slice list past what is already written.
            let mut skip = done;
            let mut slices = Vec::with_capacity(parts.len());
            for p in parts {
                if skip >= p.len() {
                    skip -= p.len();
                    continue;
                }
                slices.push(IoSlice::new(&p[skip..]));
                skip = 0;
            }
            let n = self.w.write_vectored(&slices).await.map_err(|e| self.err(e))?;
            if n == 0 {
                return Err(self.err(std::io::ErrorKind::WriteZero.into()));
            }
            done += n;
        }
        Ok(())
    }

    pub async fn shutdown(&mut self) {
        let _ = self.w.shutdown().await;
    }

    fn err(&self, e: std::io::Error) -> XferError {
        XferError::io(format!("sending to {}", self.peer), e)
    }
}

/// A duplicate of the socket `fd`, registered with the runtime for
/// writability (the original stays registered through its stream half).
fn register(fd: RawFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: `fd` is the open socket of the writer half this
    // `FrameWriter` owns; it is only duplicated here, never closed.
    let dup = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
    // SAFETY: the `OwnedFd` is moved into the `AsyncFd` and stays open,
    // naming the same socket, until the `AsyncFd` is dropped.
    Ok(unsafe { AsyncFd::register_with_interest(dup, Interest::WRITABLE) }?)
}

/// Sends `len` bytes of `file` from `offset` into the socket. The socket
/// is non-blocking (the flag is shared with the stream half). On error,
/// also says how many bytes went out before it.
async fn sendfile_all(sock: &AsyncFd<OwnedFd>, file: &File, offset: u64, len: usize) -> std::result::Result<(), (usize, std::io::Error)> {
    let mut off = offset as libc::off_t;
    let mut left = len;
    while left > 0 {
        let mut guard = sock.writable().await.map_err(|e| (len - left, e))?;
        let sent = guard.try_io(|s| {
            // SAFETY: both descriptors are open for the call; `off` is a
            // valid out-pointer.
            let n = unsafe { libc::sendfile(s.as_raw_fd(), file.as_raw_fd(), &mut off, left) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match sent {
            Ok(Ok(0)) => {
                let e = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file ended before the frame (changed while sent)");
                return Err((len - left, e));
            }
            Ok(Ok(n)) => left -= n,
            Ok(Err(e)) => return Err((len - left, e)),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

pub struct FrameReader {
    r: BufReader<BoxRead>,
    key: [u8; 32],
    expected_seq: u64,
    max_len: u32,
    peer: String,
}

/// A checked control frame.
pub struct Frame {
    pub header: Header,
    pub payload: Vec<u8>,
}

impl FrameReader {
    pub fn new(r: BoxRead, key: [u8; 32], max_len: u32, peer: String) -> Self {
        FrameReader {
            r: BufReader::with_capacity(256 << 10, r),
            key,
            expected_seq: 0,
            max_len,
            peer,
        }
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Fills `buf`; returns how much arrived before the peer closed.
    async fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            let n = self
                .r
                .read(&mut buf[got..])
                .await
                .map_err(|e| XferError::io(format!("receiving from {}", self.peer), e))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(got)
    }

    /// Reads and decodes the next header. `None` when the peer closed
    /// cleanly between frames.
    pub async fn header(&mut self) -> Result<Option<(Header, [u8; HEADER_LEN])>> {
        let mut raw = [0u8; HEADER_LEN];
        let got = self.fill(&mut raw).await?;
        if got == 0 {
            return Ok(None);
        }
        if got < HEADER_LEN {
            return Err(FrameError::Truncated { got, want: HEADER_LEN }.into());
        }
        Ok(Some((Header::decode(&raw, self.max_len)?, raw)))
    }

    /// Reads the payload of `header` into `buf` (exactly its length).
    pub async fn payload(&mut self, header: &Header, buf: &mut [u8]) -> Result<()> {
        let got = self.fill(buf).await?;
        if got < buf.len() {
            return Err(FrameError::Truncated {
                got: HEADER_LEN + got,
                want: HEADER_LEN + header.len as usize + MAC_LEN,
            }
            .into());
        }
        Ok(())
    }

    /// Reads the MAC and checks it against the payload digest, then the
    /// sequence number. Only after this may the frame be acted on.
    pub async fn finish(&mut self, raw: &[u8; HEADER_LEN], header: &Header, digest: &[u8; 32]) -> Result<()> {
        let mut tag = [0u8; MAC_LEN];
        let got = self.fill(&mut tag).await?;
        if got < MAC_LEN {
            return Err(FrameError::Truncated {
                got: HEADER_LEN + header.len as usize + got,
                want: HEADER_LEN + header.len as usize + MAC_LEN,
            }
            .into());
        }
        frame::check(&self.key, raw, header, digest, &tag, self.expected_seq)?;
        self.expected_seq += 1;
        Ok(())
    }

    /// Discards whatever the peer still sends, until it closes or `within`
    /// passes. Closing a socket with unread input makes the kernel send a
    /// reset, which can destroy a last frame (an `Error`) still in flight
    /// to the peer; draining first lets it arrive.
    pub async fn drain(&mut self, within: std::time::Duration) {
        let mut sink = vec![0u8; 64 << 10];
        let _ = tokio::time::timeout(within, async {
            while matches!(self.r.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }

    /// Reads one whole frame into memory and checks it.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>> {
        let Some((header, raw)) = self.header().await? else {
            return Ok(None);
        };
        let mut payload = vec![0u8; header.len as usize];
        self.payload(&header, &mut payload).await?;
        let digest = frame::payload_digest(&header, &payload);
        self.finish(&raw, &header, &digest).await?;
        Ok(Some(Frame { header, payload }))
    }
}
