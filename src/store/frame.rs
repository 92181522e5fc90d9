//! The frozen byte format of packs and frames. Every constant here is part of
//! the on-disk format: docs/format.md describes it and golden tests pin it.

use crate::error::{Error, Result};
use crate::id::ChunkId;

/// First 16 bytes of every pack: magic "KLUISPAK", format version 2 (u32 LE), 4 reserved zero bytes.
pub const PACK_HEADER: [u8; 16] = *b"KLUISPAK\x02\x00\x00\x00\x00\x00\x00\x00";
pub const PACK_HEADER_SIZE: u64 = 16;
pub const FRAME_MAGIC: [u8; 4] = *b"KFRM";
/// The fixed part of a frame header; the chunk table follows it.
pub const FRAME_FIXED_SIZE: usize = 24;
/// One chunk-table entry: id (32) + raw length (4).
pub const FRAME_ENTRY_SIZE: usize = 36;
/// Upper bounds a parser enforces before allocating anything.
pub const MAX_FRAME_CHUNKS: usize = 1024;
pub const MAX_FRAME_RAW: u32 = 64 << 20;

/// Low 4 bits of the flags: how the payload is encoded. Bits 4..16 are
/// reserved (encryption, other codecs) and must be zero in format version 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Stored = 0,
    Zstd = 1,
}

/// What a frame's chunks hold. Only a hint for tools (verify, re-indexing):
/// chunk ids are content hashes, so a chunk is the same whatever it was
/// stored as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkKind {
    Data = 0,
    MapPage = 1,
    Config = 2,
    Manifest = 3,
}

impl ChunkKind {
    pub fn from_u8(v: u8) -> Option<ChunkKind> {
        Some(match v {
            0 => ChunkKind::Data,
            1 => ChunkKind::MapPage,
            2 => ChunkKind::Config,
            3 => ChunkKind::Manifest,
            _ => return None,
        })
    }
}

/// One chunk of a frame: its id and length; its bytes follow those of the
/// entries before it in the frame's decoded payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameEntry {
    pub id: ChunkId,
    pub raw_len: u32,
}

/// A frame holds one or more chunks compressed together: the new blocks of
/// one read run of a backup share one zstd frame, so zstd sees up to 3 MiB
/// of context instead of one block (a smaller vault, and one decompression
/// per run when reading back). See docs/format.md §4.
///
/// ```text
/// offset size field
///  0      4  magic "KFRM"
///  4      2  flags (u16 LE): bits 0-3 codec (0 stored, 1 zstd), rest reserved = 0
///  6      1  kind (0 data, 1 map page, 2 config, 3 manifest)
///  7      1  reserved = 0
///  8      4  raw length (u32 LE) = sum of the entries' raw lengths
/// 12      4  stored length (u32 LE) = payload bytes after the header
/// 16      2  chunk count N (u16 LE), 1..=1024
/// 18      2  reserved = 0
/// 20      4  header check = first 4 bytes of blake3(bytes 0..20 ‖ chunk table), LE
/// 24   36·N  chunk table: per chunk its id = blake3(raw bytes) (32) and raw length (u32 LE)
///  …      …  payload: the chunks' raw bytes concatenated, stored or as one zstd frame
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub codec: Codec,
    pub kind: ChunkKind,
    pub raw_len: u32,
    pub stored_len: u32,
    pub chunks: Vec<FrameEntry>,
}

impl FrameHeader {
    /// Bytes of the header, chunk table included.
    pub fn header_len(&self) -> usize {
        header_len(self.chunks.len())
    }

    /// Bytes of the whole frame: header + payload.
    pub fn frame_len(&self) -> u64 {
        (self.header_len() + self.stored_len as usize) as u64
    }

    /// Names the chunks of the frame for messages: "chunk ID", or "the
    /// frame of chunks ID, ID, ..." when damage to it reaches them all.
    pub fn describe(&self) -> String {
        match &self.chunks[..] {
            [one] => format!("chunk {}", one.id),
            all => format!("the frame of chunks {}", all.iter().map(|e| e.id.to_string()).collect::<Vec<_>>().join(", ")),
        }
    }

    /// Where each chunk lies in the decoded payload, in table order.
    pub fn ranges(&self) -> impl Iterator<Item = (&FrameEntry, std::ops::Range<usize>)> {
        self.chunks.iter().scan(0usize, |at, e| {
            let r = *at..*at + e.raw_len as usize;
            *at = r.end;
            Some((e, r))
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.header_len()];
        b[0..4].copy_from_slice(&FRAME_MAGIC);
        b[4..6].copy_from_slice(&(self.codec as u16).to_le_bytes());
        b[6] = self.kind as u8;
        b[8..12].copy_from_slice(&self.raw_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.stored_len.to_le_bytes());
        b[16..18].copy_from_slice(&(self.chunks.len() as u16).to_le_bytes());
        for (i, e) in self.chunks.iter().enumerate() {
            let at = FRAME_FIXED_SIZE + i * FRAME_ENTRY_SIZE;
            b[at..at + 32].copy_from_slice(&e.id.0);
            b[at + 32..at + 36].copy_from_slice(&e.raw_len.to_le_bytes());
        }
        let check = header_check(&b);
        b[20..24].copy_from_slice(&check.to_le_bytes());
        b
    }

    /// The length of the whole header (table included) announced by its
    /// fixed part, after sanity checks; read that many bytes, then [`parse`].
    ///
    /// [`parse`]: FrameHeader::parse
    pub fn announced_len(fixed: &[u8], what: &dyn std::fmt::Display) -> Result<usize> {
        if fixed.len() < FRAME_FIXED_SIZE {
            return Err(Error::Corrupt(format!("{what}: truncated frame header")));
        }
        if fixed[0..4] != FRAME_MAGIC {
            return Err(Error::Corrupt(format!("{what}: bad frame magic")));
        }
        let n = u16::from_le_bytes([fixed[16], fixed[17]]) as usize;
        if n == 0 || n > MAX_FRAME_CHUNKS {
            return Err(Error::Corrupt(format!("{what}: frame announces {n} chunks")));
        }
        Ok(header_len(n))
    }

    /// Parses and validates a frame header (its first [`announced_len`]
    /// bytes); `what` names it in errors.
    ///
    /// [`announced_len`]: FrameHeader::announced_len
    pub fn parse(b: &[u8], what: &dyn std::fmt::Display) -> Result<FrameHeader> {
        let len = Self::announced_len(b, what)?;
        if b.len() < len {
            return Err(Error::Corrupt(format!("{what}: truncated frame header")));
        }
        let b = &b[..len];
        let stored_check = u32::from_le_bytes(b[20..24].try_into().unwrap());
        let mut checked = b.to_vec();
        checked[20..24].fill(0);
        if stored_check != header_check(&checked) {
            return Err(Error::Corrupt(format!("{what}: frame header checksum mismatch")));
        }
        let flags = u16::from_le_bytes([b[4], b[5]]);
        let codec = match flags {
            0 => Codec::Stored,
            1 => Codec::Zstd,
            _ => return Err(Error::Corrupt(format!("{what}: unsupported frame flags {flags:#x}"))),
        };
        let kind = ChunkKind::from_u8(b[6]).ok_or_else(|| Error::Corrupt(format!("{what}: unknown chunk kind {}", b[6])))?;
        let chunks: Vec<FrameEntry> = b[FRAME_FIXED_SIZE..]
            .chunks_exact(FRAME_ENTRY_SIZE)
            .map(|e| FrameEntry { id: ChunkId::from_slice(&e[..32]).unwrap(), raw_len: u32::from_le_bytes(e[32..36].try_into().unwrap()) })
            .collect();
        let raw_len = u32::from_le_bytes(b[8..12].try_into().unwrap());
        let sum: u64 = chunks.iter().map(|e| e.raw_len as u64).sum();
        if sum != raw_len as u64 || raw_len > MAX_FRAME_RAW || b[7] != 0 || b[18..20] != [0, 0] {
            return Err(Error::Corrupt(format!("{what}: inconsistent frame header")));
        }
        let stored_len = u32::from_le_bytes(b[12..16].try_into().unwrap());
        if codec == Codec::Stored && stored_len != raw_len {
            return Err(Error::Corrupt(format!("{what}: stored frame of {stored_len} bytes holds {raw_len}")));
        }
        Ok(FrameHeader { codec, kind, raw_len, stored_len, chunks })
    }
}

fn header_len(chunks: usize) -> usize {
    FRAME_FIXED_SIZE + chunks * FRAME_ENTRY_SIZE
}

/// blake3 of the header with its check field (bytes 20..24) zeroed.
fn header_check(b: &[u8]) -> u32 {
    let mut h = blake3::Hasher::new();
    h.update(&b[..20]);
    h.update(&[0u8; 4]);
    h.update(&b[24..]);
    u32::from_le_bytes(h.finalize().as_bytes()[0..4].try_into().unwrap())
}

/// A frame ready to append: header + payload.
pub struct Frame {
    pub header: FrameHeader,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn frame_len(&self) -> u64 {
        self.header.frame_len()
    }

    /// Compresses `chunks` (id and raw bytes, in order) into one frame with
    /// zstd at `level`; keeps the raw bytes when they look random (see
    /// store/incompressible.rs: encrypted or already-compressed data, not
    /// worth zstd's time) or when zstd does not make them smaller. zstd's
    /// own content checksum is on, so a damaged payload fails to decode.
    pub fn encode(kind: ChunkKind, chunks: &[(ChunkId, &[u8])], level: i32) -> Result<Frame> {
        let raw: std::borrow::Cow<[u8]> = match chunks {
            [(_, one)] => std::borrow::Cow::Borrowed(one),
            _ => std::borrow::Cow::Owned(chunks.iter().map(|(_, b)| *b).collect::<Vec<&[u8]>>().concat()),
        };
        let entries: Vec<FrameEntry> = chunks.iter().map(|(id, b)| FrameEntry { id: *id, raw_len: b.len() as u32 }).collect();
        Self::encode_raw(kind, entries, &raw, level, Vec::new())
    }

    /// [`Frame::encode`] of chunks that are ranges of `buf`, in order, into
    /// `payload`, a buffer of an earlier frame given back (its capacity is
    /// reused; empty is fine). The chunks are first moved together to the
    /// start of the first one, in place (a run's new blocks, with unchanged
    /// or zero blocks between them): `buf` is scratch afterwards.
    pub fn encode_ranges(kind: ChunkKind, chunks: &[(ChunkId, std::ops::Range<usize>)], buf: &mut [u8], level: i32, payload: Vec<u8>) -> Result<Frame> {
        let entries: Vec<FrameEntry> = chunks.iter().map(|(id, r)| FrameEntry { id: *id, raw_len: r.len() as u32 }).collect();
        let start = chunks.first().map_or(0, |(_, r)| r.start);
        let mut end = start;
        for (_, r) in chunks {
            assert!(r.start >= end, "chunk ranges must be in order and apart");
            buf.copy_within(r.clone(), end);
            end += r.len();
        }
        Self::encode_raw(kind, entries, &buf[start..end], level, payload)
    }

    /// Compresses `raw`, the chunks of `entries` concatenated, into `payload`.
    fn encode_raw(kind: ChunkKind, entries: Vec<FrameEntry>, raw: &[u8], level: i32, mut payload: Vec<u8>) -> Result<Frame> {
        assert!(!entries.is_empty() && entries.len() <= MAX_FRAME_CHUNKS);
        // One compression context per thread and level: creating one costs
        // about as much as compressing a 64 KiB block.
        thread_local! {
            static CCTX: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { std::cell::RefCell::new(None) };
        }
        if super::incompressible::looks_incompressible(raw) {
            return Ok(Frame::stored(kind, entries, raw, payload));
        }
        payload.clear();
        payload.reserve(zstd::zstd_safe::compress_bound(raw.len()));
        CCTX.with(|c| {
            let mut c = c.borrow_mut();
            if c.as_ref().map(|(l, _)| *l) != Some(level) {
                let mut z = zstd::bulk::Compressor::new(level)?;
                z.set_parameter(zstd::stream::raw::CParameter::ChecksumFlag(true))?;
                for p in frame_params(level) {
                    z.set_parameter(p)?;
                }
                *c = Some((level, z));
            }
            c.as_mut().unwrap().1.compress_to_buffer(raw, &mut payload)
        })
        .map_err(|e| Error::io(format!("compressing chunk {}", entries[0].id), e))?;
        if payload.len() >= raw.len() {
            return Ok(Frame::stored(kind, entries, raw, payload));
        }
        Ok(Frame {
            header: FrameHeader { codec: Codec::Zstd, kind, raw_len: raw.len() as u32, stored_len: payload.len() as u32, chunks: entries },
            payload,
        })
    }

    /// A frame keeping its chunks' bytes, `raw`, as they are (copied into
    /// `payload`, whose capacity is reused).
    fn stored(kind: ChunkKind, entries: Vec<FrameEntry>, raw: &[u8], mut payload: Vec<u8>) -> Frame {
        payload.clear();
        payload.extend_from_slice(raw);
        let len = payload.len() as u32;
        Frame { header: FrameHeader { codec: Codec::Stored, kind, raw_len: len, stored_len: len, chunks: entries }, payload }
    }
}

/// Frames hold up to 3 MiB (a backup's runs, src/backup.rs, which checks
/// at compile time that its runs fit): a window of 2^22 bytes lets a match
/// reach back to the frame's start.
pub const FRAME_WINDOW_LOG: u32 = 22;
/// Smallest hash table (2^17 entries) for that window; zstd sizes levels 1
/// and 2 for a window of 0.5–1 MiB (2^14 and 2^16 entries).
const FRAME_HASH_LOG: u32 = 17;

/// zstd's parameters for a frame at `level`, where they differ from the
/// level's own: zstd picks those for a stream of any length, kluis knows each
/// frame is one input of at most 3 MiB. On the benchmark's images: level 3
/// with the wider window compresses 0.5% smaller for the same CPU; level 2
/// with both takes 19% less CPU than level 3 for 1.8% more output, where
/// with zstd's own window and table it gave 5.7% more (docs/format.md §4).
/// Levels 3 and up already have a large enough hash table; negative (fast)
/// levels keep zstd's parameters, being chosen for speed.
fn frame_params(level: i32) -> Vec<zstd::stream::raw::CParameter> {
    use zstd::stream::raw::CParameter;
    match level {
        ..=0 => Vec::new(),
        1 | 2 => vec![CParameter::WindowLog(FRAME_WINDOW_LOG), CParameter::HashLog(FRAME_HASH_LOG)],
        _ => vec![CParameter::WindowLog(FRAME_WINDOW_LOG)],
    }
}

/// The decoded payload of a frame: all its chunks' bytes, concatenated.
/// A zstd payload is checked by zstd's content checksum; a stored one is
/// not checked here — see [`check_chunk`].
pub fn decode_payload(h: &FrameHeader, payload: &[u8], what: &dyn std::fmt::Display) -> Result<Vec<u8>> {
    let raw = match h.codec {
        Codec::Stored => payload.to_vec(),
        Codec::Zstd => with_decompressor(h, what, |d| d.decompress(payload, h.raw_len as usize))?,
    };
    if raw.len() != h.raw_len as usize {
        return Err(Error::Corrupt(format!("{} in {what}: length {} != {}", h.describe(), raw.len(), h.raw_len)));
    }
    Ok(raw)
}

/// [`decode_payload`] into `out`, which must be `h.raw_len` bytes long: a
/// caller decoding frame after frame keeps one buffer for all of them.
pub fn decode_payload_into(h: &FrameHeader, payload: &[u8], out: &mut [u8], what: &dyn std::fmt::Display) -> Result<()> {
    let n = match h.codec {
        Codec::Stored => {
            let n = payload.len().min(out.len());
            out[..n].copy_from_slice(&payload[..n]);
            payload.len()
        }
        Codec::Zstd => with_decompressor(h, what, |d| d.decompress_to_buffer(payload, out))?,
    };
    if n != h.raw_len as usize || out.len() != n {
        return Err(Error::Corrupt(format!("{} in {what}: length {n} != {}", h.describe(), h.raw_len)));
    }
    Ok(())
}

/// Runs `f` with this thread's zstd decompressor (made on first use).
fn with_decompressor<T>(h: &FrameHeader, what: &dyn std::fmt::Display, f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> std::io::Result<T>) -> Result<T> {
    thread_local! {
        static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
    }
    DCTX.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        f(d.as_mut().unwrap())
    })
    .map_err(|e| Error::Corrupt(format!("{} in {what}: cannot decompress: {e}", h.describe())))
}

/// The first `n` bytes of a frame's decoded payload, decoding no further.
/// Not checked: zstd's checksum covers only the whole frame.
pub fn decode_prefix(h: &FrameHeader, payload: &[u8], n: usize, what: &dyn std::fmt::Display) -> Result<Vec<u8>> {
    let mut whole = Some(payload);
    decode_prefix_from(h, n, what, &mut |_| Ok(whole.take().map(<[u8]>::to_vec).unwrap_or_default()))
}

/// [`decode_prefix`] over a payload that `next(at)` hands out piece by
/// piece, in order, from payload offset `at` (an empty piece: no more), so
/// a reader fetches only about as much of the payload as the prefix needs.
/// A stored payload is asked for from offset 0 until `n` bytes are in.
pub fn decode_prefix_from(h: &FrameHeader, n: usize, what: &dyn std::fmt::Display, next: &mut dyn FnMut(usize) -> Result<Vec<u8>>) -> Result<Vec<u8>> {
    use zstd::stream::raw::{Decoder, Operation};
    let n = n.min(h.raw_len as usize);
    let short = |at: usize| Error::Corrupt(format!("{} in {what}: payload ends at {at} of {n} bytes", h.describe()));
    if h.codec == Codec::Stored {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let piece = next(out.len())?;
            if piece.is_empty() {
                return Err(short(out.len()));
            }
            out.extend_from_slice(&piece[..piece.len().min(n - out.len())]);
        }
        return Ok(out);
    }
    // One decoder per thread: a fresh one allocates (and page-faults in) a
    // window as large as the frame on every random read.
    thread_local! {
        static DEC: std::cell::RefCell<Option<Decoder<'static>>> = const { std::cell::RefCell::new(None) };
    }
    let fail = |e: std::io::Error| Error::Corrupt(format!("{} in {what}: cannot decompress: {e}", h.describe()));
    DEC.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(Decoder::new().map_err(fail)?);
        }
        let dec = d.as_mut().unwrap();
        dec.reinit().map_err(fail)?;
        let mut out = vec![0u8; n];
        let (mut piece, mut read, mut fed, mut written) = (Vec::new(), 0, 0, 0);
        while written < n {
            let st = dec.run_on_buffers(&piece[read..], &mut out[written..]).map_err(fail)?;
            read += st.bytes_read;
            written += st.bytes_written;
            if st.bytes_read == 0 && st.bytes_written == 0 {
                if read < piece.len() {
                    return Err(Error::Corrupt(format!("{} in {what}: decoding stalls at {written} of {n} bytes", h.describe())));
                }
                // It has used all it was given: the next piece.
                piece = next(fed)?;
                read = 0;
                fed += piece.len();
                if piece.is_empty() {
                    return Err(short(written));
                }
            }
        }
        Ok(out)
    })
}

/// Checks that `raw` hashes to `id`, so a flipped bit is caught before the
/// bytes reach a restore or a mount.
pub fn check_chunk(id: &ChunkId, raw: &[u8], what: &dyn std::fmt::Display) -> Result<()> {
    if ChunkId::of(raw) != *id {
        return Err(Error::Corrupt(format!("chunk {id} in {what}: checksum mismatch")));
    }
    Ok(())
}

/// A frame decoded with every chunk's hash checked.
pub struct CheckedFrame {
    /// The decoded payload; None when it does not decode at all.
    pub raw: Option<Vec<u8>>,
    /// Per chunk, in table order: why it is damaged, or None when sound.
    pub errors: Vec<Option<String>>,
}

impl CheckedFrame {
    pub fn is_sound(&self) -> bool {
        self.errors.iter().all(Option::is_none)
    }
}

/// Decodes a frame and checks every chunk's hash (verify, gc, re-indexing).
pub fn check_frame(h: &FrameHeader, payload: &[u8], what: &dyn std::fmt::Display) -> CheckedFrame {
    match decode_payload(h, payload, what) {
        Ok(raw) => {
            let errors = h.ranges().map(|(e, r)| check_chunk(&e.id, &raw[r], what).err().map(|e| e.to_string())).collect();
            CheckedFrame { raw: Some(raw), errors }
        }
        Err(err) => {
            let msg = err.to_string();
            CheckedFrame { raw: None, errors: h.chunks.iter().map(|_| Some(msg.clone())).collect() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden bytes: if this fails, the on-disk format moved. Update
    /// docs/format.md and the format version, never just this test.
    #[test]
    fn frame_header_golden() {
        let h = FrameHeader {
            codec: Codec::Zstd,
            kind: ChunkKind::Data,
            raw_len: 65536 + 4096,
            stored_len: 1234,
            chunks: vec![
                FrameEntry { id: ChunkId::of(b"golden"), raw_len: 65536 },
                FrameEntry { id: ChunkId::of(b"golden 2"), raw_len: 4096 },
            ],
        };
        let b = h.to_bytes();
        assert_eq!(b.len(), 24 + 2 * 36);
        assert_eq!(&b[0..20], b"KFRM\x01\x00\x00\x00\x00\x10\x01\x00\xd2\x04\x00\x00\x02\x00\x00\x00");
        assert_eq!(&b[24..56], blake3::hash(b"golden").as_bytes());
        assert_eq!(&b[56..60], &65536u32.to_le_bytes());
        assert_eq!(&b[60..92], blake3::hash(b"golden 2").as_bytes());
        assert_eq!(&b[92..96], &4096u32.to_le_bytes());
        assert_eq!(crate::id::hex(&b[20..24]), "02637096");
        assert_eq!(FrameHeader::announced_len(&b[..24], &"t").unwrap(), 96);
        assert_eq!(FrameHeader::parse(&b, &"t").unwrap(), h);
        assert_eq!(&PACK_HEADER[..], b"KLUISPAK\x02\x00\x00\x00\x00\x00\x00\x00");
    }

    #[test]
    fn corrupt_headers_are_rejected() {
        let h = FrameHeader {
            codec: Codec::Stored,
            kind: ChunkKind::Data,
            raw_len: 3,
            stored_len: 3,
            chunks: vec![FrameEntry { id: ChunkId::of(b"x"), raw_len: 1 }, FrameEntry { id: ChunkId::of(b"yz"), raw_len: 2 }],
        };
        let good = h.to_bytes();
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x40;
            assert!(FrameHeader::parse(&b, &"t").is_err(), "flip at byte {i} not caught");
        }
        assert!(FrameHeader::parse(&good[..good.len() - 1], &"t").is_err());
    }

    #[test]
    fn encode_decode_round_trip() {
        let a = vec![7u8; 65536];
        let b: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let chunks = [(ChunkId::of(&a), &a[..]), (ChunkId::of(&b), &b[..])];
        let f = Frame::encode(ChunkKind::Data, &chunks, 3).unwrap();
        assert_eq!(f.header.codec, Codec::Zstd);
        assert!(f.payload.len() < 2000);
        let c = check_frame(&f.header, &f.payload, &"t");
        assert!(c.is_sound());
        let raw = c.raw.unwrap();
        let got: Vec<&[u8]> = f.header.ranges().map(|(_, r)| &raw[r]).collect();
        assert_eq!(got, vec![&a[..], &b[..]]);
        // zstd's checksum catches a flip anywhere in the payload.
        for at in [5, f.payload.len() / 2, f.payload.len() - 1] {
            let mut bad = f.payload.clone();
            bad[at] ^= 1;
            assert!(decode_payload(&f.header, &bad, &"t").is_err(), "flip at {at} decoded");
            assert!(!check_frame(&f.header, &bad, &"t").is_sound());
        }
        // A prefix decodes to the same bytes, for any length.
        for n in [1, 65536, 65537, 70000] {
            let p = decode_prefix(&f.header, &f.payload, n, &"t").unwrap();
            assert_eq!(p[..], raw[..n.min(raw.len())], "prefix of {n}");
        }
        // ... and from the payload handed out in pieces of any size.
        for piece in [1, 7, 1000, f.payload.len()] {
            for n in [1, 65536, 70000] {
                let mut next = |at: usize| Ok(f.payload[at.min(f.payload.len())..(at + piece).min(f.payload.len())].to_vec());
                let p = decode_prefix_from(&f.header, n, &"t", &mut next).unwrap();
                assert_eq!(p[..], raw[..n.min(raw.len())], "prefix of {n} in pieces of {piece}");
            }
        }
        // A payload cut short is an error, not a short prefix.
        let cut = &f.payload[..f.payload.len() / 2];
        let mut next = |at: usize| Ok(cut[at.min(cut.len())..].to_vec());
        assert!(decode_prefix_from(&f.header, 70000, &"t", &mut next).is_err());
        // Chunks given as ranges of one buffer make the same frame, whether
        // they follow each other in it or not, and whatever a payload given
        // back for reuse held before.
        let mut both = [&a[..], &b[..]].concat();
        let ranges = [(chunks[0].0, 0..a.len()), (chunks[1].0, a.len()..both.len())];
        let g = Frame::encode_ranges(ChunkKind::Data, &ranges, &mut both, 3, Vec::new()).unwrap();
        assert_eq!((g.header.clone(), g.payload), (f.header.clone(), f.payload.clone()));
        let mut gap = [&[5u8; 10][..], &a[..], &[9u8; 100], &b[..]].concat();
        let ranges = [(chunks[0].0, 10..10 + a.len()), (chunks[1].0, 10 + a.len() + 100..gap.len())];
        let g = Frame::encode_ranges(ChunkKind::Data, &ranges, &mut gap, 3, vec![7u8; 300_000]).unwrap();
        assert_eq!((g.header, g.payload), (f.header.clone(), f.payload.clone()));
        // A stored frame: only the chunk with the flipped byte is damaged.
        let mut rng = fastrand::Rng::with_seed(7);
        let r: Vec<u8> = (0..8192).map(|_| rng.u8(..)).collect();
        let s = [(ChunkId::of(&r[..4096]), &r[..4096]), (ChunkId::of(&r[4096..]), &r[4096..])];
        let mut f = Frame::encode(ChunkKind::Data, &s, 3).unwrap();
        assert_eq!(f.header.codec, Codec::Stored);
        let mut rr = r.clone();
        let g = Frame::encode_ranges(ChunkKind::Data, &[(s[0].0, 0..4096), (s[1].0, 4096..8192)], &mut rr, 3, vec![1u8; 20_000]).unwrap();
        assert_eq!((g.header.codec, &g.payload[..]), (Codec::Stored, &r[..]));
        let mut next = |at: usize| Ok(f.payload[at.min(8192)..(at + 3000).min(8192)].to_vec());
        assert_eq!(decode_prefix_from(&f.header, 5000, &"t", &mut next).unwrap(), r[..5000]);
        f.payload[5000] ^= 1;
        let c = check_frame(&f.header, &f.payload, &"t");
        assert!(c.errors[0].is_none() && c.errors[1].is_some());
    }
}
