//! The frozen byte format of packs and frames. Every constant here is part of
//! the on-disk format: docs/format.md describes it and golden tests pin it.

use crate::error::{Error, Result};
use crate::id::ChunkId;

/// First 16 bytes of every pack: magic "KLUISPAK", format version 1 (u32 LE), 4 reserved zero bytes.
pub const PACK_HEADER: [u8; 16] = *b"KLUISPAK\x01\x00\x00\x00\x00\x00\x00\x00";
pub const PACK_HEADER_SIZE: u64 = 16;
pub const FRAME_MAGIC: [u8; 4] = *b"KCHK";
pub const FRAME_HEADER_SIZE: usize = 56;

/// Low 4 bits of the flags: how the payload is encoded. Bits 4..16 are
/// reserved (encryption, other codecs) and must be zero in format version 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Stored = 0,
    Zstd = 1,
}

/// What a chunk holds. Only a hint for tools (verify, re-indexing): chunk ids
/// are content hashes, so a chunk is the same whatever it was stored as.
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

/// ```text
/// offset size field
///  0      4  magic "KCHK"
///  4      2  flags (u16 LE): bits 0-3 codec (0 stored, 1 zstd), rest reserved = 0
///  6      1  kind (0 data, 1 map page, 2 config, 3 manifest)
///  7      1  reserved = 0
///  8      4  raw length (u32 LE)
/// 12      4  stored length (u32 LE)
/// 16     32  chunk id = blake3(raw bytes)
/// 48      4  header check = first 4 bytes of blake3(bytes 0..48), LE
/// 52      4  reserved = 0
/// 56      …  stored bytes
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub id: ChunkId,
    pub codec: Codec,
    pub kind: ChunkKind,
    pub raw_len: u32,
    pub stored_len: u32,
}

impl FrameHeader {
    pub fn to_bytes(&self) -> [u8; FRAME_HEADER_SIZE] {
        let mut b = [0u8; FRAME_HEADER_SIZE];
        b[0..4].copy_from_slice(&FRAME_MAGIC);
        b[4..6].copy_from_slice(&(self.codec as u16).to_le_bytes());
        b[6] = self.kind as u8;
        b[8..12].copy_from_slice(&self.raw_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.stored_len.to_le_bytes());
        b[16..48].copy_from_slice(&self.id.0);
        let check = header_check(&b[0..48]);
        b[48..52].copy_from_slice(&check.to_le_bytes());
        b
    }

    /// Parses and validates a frame header; `what` names it in errors.
    pub fn parse(b: &[u8], what: &dyn std::fmt::Display) -> Result<FrameHeader> {
        if b.len() < FRAME_HEADER_SIZE {
            return Err(Error::Corrupt(format!("{what}: truncated frame header")));
        }
        if b[0..4] != FRAME_MAGIC {
            return Err(Error::Corrupt(format!("{what}: bad frame magic")));
        }
        let stored_check = u32::from_le_bytes(b[48..52].try_into().unwrap());
        if stored_check != header_check(&b[0..48]) {
            return Err(Error::Corrupt(format!("{what}: frame header checksum mismatch")));
        }
        let flags = u16::from_le_bytes([b[4], b[5]]);
        let codec = match flags {
            0 => Codec::Stored,
            1 => Codec::Zstd,
            _ => return Err(Error::Corrupt(format!("{what}: unsupported frame flags {flags:#x}"))),
        };
        let kind = ChunkKind::from_u8(b[6])
            .ok_or_else(|| Error::Corrupt(format!("{what}: unknown chunk kind {}", b[6])))?;
        Ok(FrameHeader {
            id: ChunkId::from_slice(&b[16..48]).unwrap(),
            codec,
            kind,
            raw_len: u32::from_le_bytes(b[8..12].try_into().unwrap()),
            stored_len: u32::from_le_bytes(b[12..16].try_into().unwrap()),
        })
    }
}

fn header_check(b: &[u8]) -> u32 {
    let h = blake3::hash(b);
    u32::from_le_bytes(h.as_bytes()[0..4].try_into().unwrap())
}

/// A chunk ready to append: header + payload.
pub struct EncodedChunk {
    pub header: FrameHeader,
    pub payload: Vec<u8>,
}

impl EncodedChunk {
    pub fn frame_len(&self) -> u64 {
        (FRAME_HEADER_SIZE + self.payload.len()) as u64
    }
}

/// Compresses a chunk with zstd at `level`; keeps the raw bytes when zstd
/// does not make them smaller (already-compressed data, random pages).
pub fn encode_chunk(id: ChunkId, kind: ChunkKind, raw: &[u8], level: i32) -> Result<EncodedChunk> {
    // One compression context per thread and level: creating one costs
    // about as much as compressing a 64 KiB block.
    thread_local! {
        static CCTX: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { std::cell::RefCell::new(None) };
    }
    let compressed = CCTX
        .with(|c| {
            let mut c = c.borrow_mut();
            if c.as_ref().map(|(l, _)| *l) != Some(level) {
                *c = Some((level, zstd::bulk::Compressor::new(level)?));
            }
            c.as_mut().unwrap().1.compress(raw)
        })
        .map_err(|e| Error::io(format!("compressing chunk {id}"), e))?;
    let (codec, payload) = if compressed.len() < raw.len() {
        (Codec::Zstd, compressed)
    } else {
        (Codec::Stored, raw.to_vec())
    };
    Ok(EncodedChunk {
        header: FrameHeader { id, codec, kind, raw_len: raw.len() as u32, stored_len: payload.len() as u32 },
        payload,
    })
}

/// Decodes a payload and checks that it hashes to the header's id, so a
/// flipped bit anywhere is caught before the bytes reach a restore or a mount.
pub fn decode_payload(h: &FrameHeader, payload: &[u8], what: &dyn std::fmt::Display) -> Result<Vec<u8>> {
    let raw = match h.codec {
        Codec::Stored => payload.to_vec(),
        Codec::Zstd => {
            thread_local! {
                static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
            }
            DCTX.with(|d| {
                let mut d = d.borrow_mut();
                if d.is_none() {
                    *d = Some(zstd::bulk::Decompressor::new()?);
                }
                d.as_mut().unwrap().decompress(payload, h.raw_len as usize)
            })
            .map_err(|e| Error::Corrupt(format!("chunk {} in {what}: cannot decompress: {e}", h.id)))?
        }
    };
    if raw.len() != h.raw_len as usize {
        return Err(Error::Corrupt(format!("chunk {} in {what}: length {} != {}", h.id, raw.len(), h.raw_len)));
    }
    if ChunkId::of(&raw) != h.id {
        return Err(Error::Corrupt(format!("chunk {} in {what}: checksum mismatch", h.id)));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden bytes: if this fails, the on-disk format moved. Update
    /// docs/format.md and the format version, never just this test.
    #[test]
    fn frame_header_golden() {
        let h = FrameHeader {
            id: ChunkId::of(b"golden"),
            codec: Codec::Zstd,
            kind: ChunkKind::MapPage,
            raw_len: 65536,
            stored_len: 1234,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..16], b"KCHK\x01\x00\x01\x00\x00\x00\x01\x00\xd2\x04\x00\x00");
        assert_eq!(&b[16..48], blake3::hash(b"golden").as_bytes());
        assert_eq!(crate::id::hex(&b[48..56]), "46f54dcc00000000");
        assert_eq!(FrameHeader::parse(&b, &"t").unwrap(), h);
        assert_eq!(&PACK_HEADER[..], b"KLUISPAK\x01\x00\x00\x00\x00\x00\x00\x00");
    }

    #[test]
    fn corrupt_headers_are_rejected() {
        let h = FrameHeader { id: ChunkId::of(b"x"), codec: Codec::Stored, kind: ChunkKind::Data, raw_len: 1, stored_len: 1 };
        let good = h.to_bytes();
        for i in 0..52 {
            let mut b = good;
            b[i] ^= 0x40;
            assert!(FrameHeader::parse(&b, &"t").is_err(), "flip at byte {i} not caught");
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let data = vec![7u8; 65536];
        let id = ChunkId::of(&data);
        let e = encode_chunk(id, ChunkKind::Data, &data, 3).unwrap();
        assert_eq!(e.header.codec, Codec::Zstd);
        assert!(e.payload.len() < 100);
        assert_eq!(decode_payload(&e.header, &e.payload, &"t").unwrap(), data);
        let mut bad = e.payload.clone();
        let n = bad.len() / 2;
        bad[n] ^= 1;
        assert!(decode_payload(&e.header, &bad, &"t").is_err());
    }
}
