//! Frame assembly over one channel: a writer that numbers and MACs frames,
//! a reader that checks them. Knows nothing of files or sockets; the
//! channel halves come from [`super::channel`].

use std::io::IoSlice;

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
}

impl FrameWriter {
    pub fn new(w: BoxWrite, key: [u8; 32], peer: String) -> Self {
        FrameWriter { w, key, seq: 0, peer }
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
    pub async fn send_data(&mut self, file_id: u64, offset: u64, payload: &[u8], cv: &[u8; 32]) -> Result<u64> {
        self.send_digested(FrameType::Data, file_id, offset, payload, cv).await
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
