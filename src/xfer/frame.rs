//! The frame: the smallest unit on the wire. Pure encoding and decoding, no
//! I/O; see the module docs of [`crate::xfer`] for the byte layout.

use super::error::FrameError;
use super::tree;
use super::wire;

pub const HEADER_LEN: usize = 32;
pub const MAC_LEN: usize = 32;
pub const VERSION: u8 = 1;

/// Frame types. The numbers are part of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// Sender → receiver, first frame on every connection: session id.
    Join = 1,
    /// Receiver → sender: the connection is part of the session.
    Welcome = 2,
    /// Sender → receiver: a file is coming (name, size, mode, time).
    Offer = 3,
    /// Receiver → sender: accepted with the frames already held, or refused.
    OfferReply = 4,
    /// Sender → receiver: one piece of a file, at `offset`.
    Data = 5,
    /// Receiver → sender: every frame up to sequence `offset` is processed.
    Ack = 6,
    /// Sender → receiver: all frames are acknowledged; here is the BLAKE3.
    Commit = 7,
    /// Receiver → sender: the file is in place, or why not.
    CommitReply = 8,
    /// Sender → receiver: several small files, directories and symlinks.
    Batch = 9,
    /// Receiver → sender: one outcome per batch entry.
    BatchReply = 10,
    /// Sender → receiver: nothing more; apply directory modes.
    Done = 11,
    /// Receiver → sender: the session is complete.
    DoneReply = 12,
    /// Either way: the session is aborted, with a reason.
    Error = 13,
    /// Either way, on a cluster control link (never in a transfer
    /// session): one message of the cluster protocol ([`crate::cluster`]).
    Message = 14,
}

impl FrameType {
    pub fn from_u8(v: u8) -> Result<Self, FrameError> {
        use FrameType::*;
        Ok(match v {
            1 => Join,
            2 => Welcome,
            3 => Offer,
            4 => OfferReply,
            5 => Data,
            6 => Ack,
            7 => Commit,
            8 => CommitReply,
            9 => Batch,
            10 => BatchReply,
            11 => Done,
            12 => DoneReply,
            13 => Error,
            14 => Message,
            other => return Err(FrameError::Type(other)),
        })
    }
}

/// A decoded frame header. `len` is the payload length (header and MAC
/// excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub ty: FrameType,
    pub len: u32,
    pub seq: u64,
    pub file_id: u64,
    pub offset: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = VERSION;
        b[1] = self.ty as u8;
        // b[2..4]: flags, zero in version 1.
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.file_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.offset.to_le_bytes());
        b
    }

    /// Decodes and checks a header before anything is read or allocated for
    /// its payload: a hostile length or placement is refused here.
    pub fn decode(b: &[u8; HEADER_LEN], max_len: u32) -> Result<Header, FrameError> {
        if b[0] != VERSION {
            return Err(FrameError::Version(b[0]));
        }
        let ty = FrameType::from_u8(b[1])?;
        let flags = u16::from_le_bytes([b[2], b[3]]);
        if flags != 0 {
            return Err(FrameError::Flags(flags));
        }
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        if len > max_len {
            return Err(FrameError::TooLong { len, max: max_len });
        }
        let h = Header {
            ty,
            len,
            seq: u64_at(8),
            file_id: u64_at(16),
            offset: u64_at(24),
        };
        if ty == FrameType::Data && !tree::valid_subtree(h.offset, len as u64) {
            return Err(FrameError::Placement {
                offset: h.offset,
                len,
            });
        }
        Ok(h)
    }
}

/// What the MAC covers of a payload: for data frames the BLAKE3 subtree
/// CV at the frame's offset (the same hash the file check is assembled
/// from, so the payload is hashed once), for batches
/// [`wire::batch_digest`] (likewise built on each file's own BLAKE3), for
/// all others its plain BLAKE3.
pub fn payload_digest(header: &Header, payload: &[u8]) -> [u8; 32] {
    digest(header.ty, header.offset, payload)
}

/// [`payload_digest`] for a frame of type `ty` at `offset` (used by data
/// frames only).
pub fn digest(ty: FrameType, offset: u64, payload: &[u8]) -> [u8; 32] {
    match ty {
        FrameType::Data => tree::subtree_cv(offset, payload),
        FrameType::Batch => wire::batch_digest(payload).digest,
        _ => *blake3::hash(payload).as_bytes(),
    }
}

/// The frame MAC: keyed BLAKE3 over the encoded header and the payload
/// digest, under the connection's key for that direction.
pub fn mac(key: &[u8; 32], header: &[u8; HEADER_LEN], digest: &[u8; 32]) -> blake3::Hash {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(header);
    h.update(digest);
    h.finalize()
}

/// Decodes and authenticates one whole frame held in memory: header,
/// payload, MAC, then the sequence number. The streaming reader in
/// [`super::conn`] does the same steps over a socket; this form serves the
/// property test and anyone holding a complete buffer.
pub fn decode_frame<'a>(
    buf: &'a [u8],
    key: &[u8; 32],
    expected_seq: u64,
    max_len: u32,
) -> Result<(Header, &'a [u8]), FrameError> {
    let want = HEADER_LEN;
    if buf.len() < want {
        return Err(FrameError::Truncated {
            got: buf.len(),
            want,
        });
    }
    let mut raw = [0u8; HEADER_LEN];
    raw.copy_from_slice(&buf[..HEADER_LEN]);
    let header = Header::decode(&raw, max_len)?;
    let want = HEADER_LEN + header.len as usize + MAC_LEN;
    if buf.len() < want {
        return Err(FrameError::Truncated {
            got: buf.len(),
            want,
        });
    }
    let payload = &buf[HEADER_LEN..HEADER_LEN + header.len as usize];
    let mut tag = [0u8; MAC_LEN];
    tag.copy_from_slice(&buf[want - MAC_LEN..want]);
    check(key, &raw, &header, &payload_digest(&header, payload), &tag, expected_seq)?;
    Ok((header, payload))
}

/// MAC first (in constant time, through `blake3::Hash`'s equality), then
/// the sequence: a replayed frame has a valid MAC and must still be
/// refused, an altered one must be called altered.
pub fn check(
    key: &[u8; 32],
    raw: &[u8; HEADER_LEN],
    header: &Header,
    digest: &[u8; 32],
    tag: &[u8; MAC_LEN],
    expected_seq: u64,
) -> Result<(), FrameError> {
    if mac(key, raw, digest) != blake3::Hash::from_bytes(*tag) {
        return Err(FrameError::Mac(header.seq));
    }
    if header.seq != expected_seq {
        return Err(FrameError::Sequence {
            got: header.seq,
            expected: expected_seq,
        });
    }
    Ok(())
}

/// Encodes a complete frame into one buffer (for tests and anyone who
/// wants a frame in memory; [`super::conn::FrameWriter`] writes large
/// payloads from where they lie).
pub fn encode_frame(key: &[u8; 32], header: &Header, payload: &[u8]) -> Vec<u8> {
    let raw = header.encode();
    let tag = mac(key, &raw, &payload_digest(header, payload));
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + MAC_LEN);
    out.extend_from_slice(&raw);
    out.extend_from_slice(payload);
    out.extend_from_slice(tag.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 32] = [7u8; 32];

    fn data_frame(seq: u64) -> Vec<u8> {
        let payload = vec![0xabu8; 4096];
        let h = Header {
            ty: FrameType::Data,
            len: payload.len() as u32,
            seq,
            file_id: 3,
            offset: 8192,
        };
        encode_frame(&KEY, &h, &payload)
    }

    #[test]
    fn a_good_frame_decodes() {
        let f = data_frame(5);
        let (h, p) = decode_frame(&f, &KEY, 5, 1 << 20).unwrap();
        assert_eq!((h.ty, h.seq, h.file_id, h.offset, p.len()), (FrameType::Data, 5, 3, 8192, 4096));
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let f = data_frame(1);
        // Every bit of the header, a sample of the payload, every bit of the MAC.
        let positions = (0..HEADER_LEN * 8)
            .chain((HEADER_LEN * 8..(HEADER_LEN + 4096) * 8).step_by(997))
            .chain((f.len() - MAC_LEN) * 8..f.len() * 8);
        for bit in positions {
            let mut g = f.clone();
            g[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_frame(&g, &KEY, 1, 1 << 20).is_err(), "bit {bit} accepted");
        }
    }

    #[test]
    fn replay_wrong_key_and_truncation_are_rejected() {
        let f = data_frame(1);
        assert_eq!(
            decode_frame(&f, &KEY, 2, 1 << 20).unwrap_err(),
            FrameError::Sequence { got: 1, expected: 2 }
        );
        assert_eq!(decode_frame(&f, &[8u8; 32], 1, 1 << 20).unwrap_err(), FrameError::Mac(1));
        assert!(matches!(
            decode_frame(&f[..f.len() - 1], &KEY, 1, 1 << 20).unwrap_err(),
            FrameError::Truncated { .. }
        ));
        assert!(matches!(
            decode_frame(&f, &KEY, 1, 1000).unwrap_err(),
            FrameError::TooLong { .. }
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// The decoder must return an error, never panic, on arbitrary
        /// bytes, including headers that pass the cheap checks.
        #[test]
        fn decoder_never_panics_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            ty in 0u8..16,
            offset in any::<u64>(),
            len in 0u32..1500,
            seq in any::<u64>(),
        ) {
            let _ = decode_frame(&bytes, &KEY, seq, 1 << 20);
            // Same bytes behind a plausible header, to reach the MAC and
            // tree code with hostile offsets and lengths.
            let mut g = bytes.clone();
            g.resize(g.len().max(HEADER_LEN), 0);
            g[0] = VERSION;
            g[1] = ty;
            g[2] = 0;
            g[3] = 0;
            g[4..8].copy_from_slice(&len.to_le_bytes());
            g[24..32].copy_from_slice(&offset.to_le_bytes());
            let r = decode_frame(&g, &KEY, seq, 1 << 20);
            prop_assert!(r.is_err());
        }

        #[test]
        fn encode_decode_round_trip(
            payload in proptest::collection::vec(any::<u8>(), 0..3000),
            seq in any::<u64>(),
            file_id in any::<u64>(),
        ) {
            let h = Header { ty: FrameType::Batch, len: payload.len() as u32, seq, file_id, offset: 0 };
            let f = encode_frame(&KEY, &h, &payload);
            let (h2, p) = decode_frame(&f, &KEY, seq, 1 << 20).unwrap();
            prop_assert_eq!(h2, h);
            prop_assert_eq!(p, &payload[..]);
        }
    }
}
