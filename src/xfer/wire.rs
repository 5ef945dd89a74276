//! Payload encodings of the control frames (all little-endian). Decoding
//! is pure and refuses anything short or inconsistent with
//! [`FrameError::Payload`], never panicking.

use super::error::FrameError;

/// Session id: random, chosen by the sender, the same on all its
/// connections so the receiver can group them.
pub type SessionId = [u8; 16];

pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }
    fn err(&self) -> FrameError {
        FrameError::Payload(self.what)
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(self.err());
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.bytes(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> Result<i64, FrameError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    pub fn hash(&mut self) -> Result<[u8; 32], FrameError> {
        self.array()
    }
    /// A u16-length-prefixed byte string.
    pub fn short(&mut self) -> Result<&'a [u8], FrameError> {
        let n = self.u16()? as usize;
        self.bytes(n)
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    pub fn end(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.err())
        }
    }
}

fn put_short(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s);
}

/// Longest path or symlink target on the wire (a u16 length).
pub const MAX_NAME: usize = u16::MAX as usize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    pub session: SessionId,
    pub stream: u16,
    pub streams: u16,
}

impl Join {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.session.to_vec();
        v.extend_from_slice(&self.stream.to_le_bytes());
        v.extend_from_slice(&self.streams.to_le_bytes());
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self, FrameError> {
        let mut r = Reader::new(b, "join");
        let j = Join {
            session: r.array()?,
            stream: r.u16()?,
            streams: r.u16()?,
        };
        r.end()?;
        Ok(j)
    }
}

/// What every entry carries: its path relative to the transfer root
/// ('/'-separated bytes), permission bits and modification time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub path: Vec<u8>,
    pub mode: u32,
    pub mtime_s: i64,
    pub mtime_ns: u32,
}

impl Meta {
    fn encode(&self, out: &mut Vec<u8>) {
        put_short(out, &self.path);
        out.extend_from_slice(&self.mode.to_le_bytes());
        out.extend_from_slice(&self.mtime_s.to_le_bytes());
        out.extend_from_slice(&self.mtime_ns.to_le_bytes());
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, FrameError> {
        Ok(Meta {
            path: r.short()?.to_vec(),
            mode: r.u32()?,
            mtime_s: r.i64()?,
            mtime_ns: r.u32()?,
        })
    }
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// A large file announced before its frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub meta: Meta,
    pub size: u64,
    pub frame_size: u64,
}

impl Offer {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.meta.encode(&mut v);
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&self.frame_size.to_le_bytes());
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self, FrameError> {
        let mut r = Reader::new(b, "offer");
        let o = Offer {
            meta: Meta::decode(&mut r)?,
            size: r.u64()?,
            frame_size: r.u64()?,
        };
        r.end()?;
        Ok(o)
    }
}

pub const STATUS_OK: u8 = 0;
pub const STATUS_REFUSED: u8 = 1;
pub const STATUS_FAILED: u8 = 2;

/// The receiver's answer to an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferReply {
    /// Bitmap of frames already held (bit i of byte i/8, LSB first).
    Accept { held: Vec<u8> },
    Refuse { reason: String },
}

impl OfferReply {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            OfferReply::Accept { held } => {
                let mut v = vec![STATUS_OK];
                v.extend_from_slice(held);
                v
            }
            OfferReply::Refuse { reason } => {
                let mut v = vec![STATUS_REFUSED];
                v.extend_from_slice(reason.as_bytes());
                v
            }
        }
    }
    pub fn decode(b: &[u8]) -> Result<Self, FrameError> {
        let mut r = Reader::new(b, "offer reply");
        match r.u8()? {
            STATUS_OK => Ok(OfferReply::Accept { held: r.rest().to_vec() }),
            STATUS_REFUSED => Ok(OfferReply::Refuse {
                reason: String::from_utf8_lossy(r.rest()).into_owned(),
            }),
            _ => Err(FrameError::Payload("offer reply")),
        }
    }
}

/// One file's (or batch entry's) outcome on the receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The inspection hook said no.
    Refused(String),
    /// Anything else: hash mismatch, I/O error, bad path.
    Failed(String),
}

impl Outcome {
    fn encode(&self, out: &mut Vec<u8>) {
        let (status, msg) = match self {
            Outcome::Ok => (STATUS_OK, ""),
            Outcome::Refused(m) => (STATUS_REFUSED, m.as_str()),
            Outcome::Failed(m) => (STATUS_FAILED, m.as_str()),
        };
        out.push(status);
        let msg = &msg.as_bytes()[..msg.len().min(4096)];
        put_short(out, msg);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, FrameError> {
        let status = r.u8()?;
        let msg = String::from_utf8_lossy(r.short()?).into_owned();
        match status {
            STATUS_OK => Ok(Outcome::Ok),
            STATUS_REFUSED => Ok(Outcome::Refused(msg)),
            STATUS_FAILED => Ok(Outcome::Failed(msg)),
            _ => Err(FrameError::Payload("outcome")),
        }
    }
    pub fn encode_one(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }
    pub fn decode_one(b: &[u8]) -> Result<Self, FrameError> {
        let mut r = Reader::new(b, "commit reply");
        let o = Outcome::decode(&mut r)?;
        r.end()?;
        Ok(o)
    }
    pub fn encode_many(list: &[Outcome]) -> Vec<u8> {
        let mut v = (list.len() as u32).to_le_bytes().to_vec();
        for o in list {
            o.encode(&mut v);
        }
        v
    }
    pub fn decode_many(b: &[u8]) -> Result<Vec<Self>, FrameError> {
        let mut r = Reader::new(b, "batch reply");
        let n = r.u32()? as usize;
        // Each outcome takes at least 3 bytes: bound the allocation by the
        // bytes actually present.
        if n > b.len() / 3 {
            return Err(FrameError::Payload("batch reply"));
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(Outcome::decode(&mut r)?);
        }
        r.end()?;
        Ok(v)
    }
}

/// One item of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry<'a> {
    File { meta: Meta, hash: [u8; 32], content: &'a [u8] },
    Dir { meta: Meta },
    Symlink { meta: Meta, target: Vec<u8> },
}

const KIND_FILE: u8 = 0;
const KIND_DIR: u8 = 1;
const KIND_SYMLINK: u8 = 2;

impl Entry<'_> {
    pub fn meta(&self) -> &Meta {
        match self {
            Entry::File { meta, .. } | Entry::Dir { meta } | Entry::Symlink { meta, .. } => meta,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Entry::File { meta, hash, content } => {
                out.push(KIND_FILE);
                meta.encode(out);
                out.extend_from_slice(&(content.len() as u64).to_le_bytes());
                out.extend_from_slice(hash);
                out.extend_from_slice(content);
            }
            Entry::Dir { meta } => {
                out.push(KIND_DIR);
                meta.encode(out);
            }
            Entry::Symlink { meta, target } => {
                out.push(KIND_SYMLINK);
                meta.encode(out);
                put_short(out, target);
            }
        }
    }

    /// Bytes `encode` will add, without the content.
    pub fn overhead(path_len: usize) -> usize {
        1 + 2 + path_len + 4 + 8 + 4 + 8 + 32 + 2
    }
}

/// Decodes a batch payload: u32 count, then the entries.
pub fn decode_batch(b: &[u8]) -> Result<Vec<Entry<'_>>, FrameError> {
    let mut r = Reader::new(b, "batch");
    let n = r.u32()? as usize;
    if n > b.len() / 8 {
        return Err(FrameError::Payload("batch"));
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let kind = r.u8()?;
        let meta = Meta::decode(&mut r)?;
        v.push(match kind {
            KIND_FILE => {
                let size = r.u64()?;
                let hash = r.hash()?;
                let size = usize::try_from(size).map_err(|_| FrameError::Payload("batch"))?;
                Entry::File { meta, hash, content: r.bytes(size)? }
            }
            KIND_DIR => Entry::Dir { meta },
            KIND_SYMLINK => Entry::Symlink { meta, target: r.short()?.to_vec() },
            _ => return Err(FrameError::Payload("batch")),
        });
    }
    r.end()?;
    Ok(v)
}

pub fn encode_batch(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut v = (entries.len() as u32).to_le_bytes().to_vec();
    for e in entries {
        e.encode(&mut v);
    }
    v
}

/// Appends the head of a file entry (kind, meta, size and a zero hash)
/// whose `size` content bytes the caller appends right after, so a sender
/// can read a file straight into the payload. Returns the offset of the
/// hash field, to fill in once the content is known.
pub fn begin_file_entry(out: &mut Vec<u8>, meta: &Meta, size: u64) -> usize {
    out.push(KIND_FILE);
    meta.encode(out);
    out.extend_from_slice(&size.to_le_bytes());
    let at = out.len();
    out.extend_from_slice(&[0u8; 32]);
    at
}

/// Domain separation of the batch digest from every other use of BLAKE3
/// in the protocol.
const BATCH_DIGEST_CONTEXT: &[u8] = b"drift-xfer v2 batch digest\0";

/// What the MAC of a `Batch` frame covers, with the BLAKE3 of every file
/// entry's content computed on the way.
pub struct BatchDigest {
    /// BLAKE3 over a context string and the payload in which each file
    /// entry's content is replaced by its own BLAKE3 (32 bytes). The
    /// content's length precedes it in the entry, so the replaced form is
    /// unambiguous; two payloads with the same digest need a BLAKE3
    /// collision, as with a plain hash of the payload.
    pub digest: [u8; 32],
    /// BLAKE3 of each file entry's content, in entry order; empty when the
    /// payload does not parse (the frame then fails its MAC or, with a good
    /// MAC, its decoding).
    pub files: Vec<blake3::Hash>,
}

/// The digest a `Batch` frame is MAC'd with: hash-then-MAC like data
/// frames, so each file's content is hashed once per side, and that one
/// hash serves both the frame MAC and the file's whole-file check.
pub fn batch_digest(payload: &[u8]) -> BatchDigest {
    let Ok(entries) = decode_batch(payload) else {
        let mut h = blake3::Hasher::new();
        h.update(b"drift-xfer v2 malformed batch\0");
        h.update(payload);
        return BatchDigest {
            digest: *h.finalize().as_bytes(),
            files: Vec::new(),
        };
    };
    let mut files = Vec::new();
    let mut ranges = Vec::new();
    for e in &entries {
        if let Entry::File { content, .. } = e {
            // `content` borrows from `payload`: its offset is the distance
            // between the two pointers.
            let start = content.as_ptr() as usize - payload.as_ptr() as usize;
            ranges.push(start..start + content.len());
            files.push(blake3::hash(content));
        }
    }
    let digest = batch_digest_with(payload, ranges.iter().cloned().zip(files.iter().copied()));
    BatchDigest { digest, files }
}

/// [`batch_digest`] from content hashes the caller already has (the sender
/// computed them while building the batch): `files` gives each file
/// entry's content range in `payload` and its BLAKE3, in order.
pub fn batch_digest_with(payload: &[u8], files: impl IntoIterator<Item = (std::ops::Range<usize>, blake3::Hash)>) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(BATCH_DIGEST_CONTEXT);
    let mut at = 0;
    for (range, hash) in files {
        h.update(&payload[at..range.start]);
        h.update(hash.as_bytes());
        at = range.end;
    }
    h.update(&payload[at..]);
    *h.finalize().as_bytes()
}

/// The receiver's totals for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DoneReply {
    pub files: u64,
    pub bytes: u64,
}

impl DoneReply {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.files.to_le_bytes().to_vec();
        v.extend_from_slice(&self.bytes.to_le_bytes());
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self, FrameError> {
        let mut r = Reader::new(b, "done reply");
        let d = DoneReply { files: r.u64()?, bytes: r.u64()? };
        r.end()?;
        Ok(d)
    }
}

/// Bit `i` of a held-frames bitmap.
pub fn bit(map: &[u8], i: u64) -> bool {
    map.get((i / 8) as usize).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn batch_round_trip() {
        let meta = |p: &str| Meta { path: p.as_bytes().to_vec(), mode: 0o644, mtime_s: -5, mtime_ns: 7 };
        let entries = vec![
            Entry::File { meta: meta("a"), hash: [1; 32], content: b"hello" },
            Entry::Dir { meta: meta("d") },
            Entry::Symlink { meta: meta("l"), target: b"../x".to_vec() },
            Entry::File { meta: meta("e"), hash: [2; 32], content: b"" },
        ];
        let enc = encode_batch(&entries);
        assert_eq!(decode_batch(&enc).unwrap(), entries);
        assert!(decode_batch(&enc[..enc.len() - 1]).is_err());
    }

    #[test]
    fn batch_digest_covers_every_byte_and_matches_the_builder() {
        let meta = |p: &str| Meta { path: p.as_bytes().to_vec(), mode: 0o644, mtime_s: 1, mtime_ns: 2 };
        let entries = vec![
            Entry::File { meta: meta("a"), hash: *blake3::hash(b"hello").as_bytes(), content: b"hello" },
            Entry::Dir { meta: meta("d") },
            Entry::File { meta: meta("e"), hash: *blake3::hash(b"").as_bytes(), content: b"" },
            Entry::File { meta: meta("f"), hash: *blake3::hash(b"world").as_bytes(), content: b"world" },
        ];
        let enc = encode_batch(&entries);
        let d = batch_digest(&enc);
        assert_eq!(d.files, vec![blake3::hash(b"hello"), blake3::hash(b""), blake3::hash(b"world")]);

        // The sender's way: entries built in place, hashes supplied.
        let mut built = 3u32.to_le_bytes().to_vec();
        let mut given = Vec::new();
        for (name, content) in [("a", &b"hello"[..]), ("e", b""), ("f", b"world")] {
            let at = begin_file_entry(&mut built, &meta(name), content.len() as u64);
            let start = built.len();
            built.extend_from_slice(content);
            let hash = blake3::hash(content);
            built[at..at + 32].copy_from_slice(hash.as_bytes());
            given.push((start..built.len(), hash));
            if name == "a" {
                Entry::Dir { meta: meta("d") }.encode(&mut built);
            }
        }
        assert_eq!(built[4..], enc[4..]);
        built[..4].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(built, enc);
        assert_eq!(batch_digest_with(&built, given), d.digest);

        // Any changed byte, content or not, changes the digest.
        for i in 0..enc.len() {
            let mut g = enc.clone();
            g[i] ^= 1;
            assert_ne!(batch_digest(&g).digest, d.digest, "byte {i}");
        }
    }

    proptest! {
        #[test]
        fn payload_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_batch(&bytes);
            let _ = Outcome::decode_many(&bytes);
            let _ = Outcome::decode_one(&bytes);
            let _ = Offer::decode(&bytes);
            let _ = OfferReply::decode(&bytes);
            let _ = Join::decode(&bytes);
            let _ = DoneReply::decode(&bytes);
            let _ = batch_digest(&bytes);
        }
    }
}
