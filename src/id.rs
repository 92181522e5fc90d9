//! Content ids. A [`ChunkId`] is the blake3 hash of a chunk's plaintext; the
//! all-zero id is reserved for "all-zero data" (a hole), which is never stored.
//! A [`RecoveryPointId`] is the blake3 hash of a recovery point's manifest, so
//! one id verifies the whole point (manifest → map roots → pages → blocks).

use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Stands for a block (or a whole map page) of zeros; never stored.
    pub const ZERO: ChunkId = ChunkId([0; 32]);

    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
    pub fn from_hex(s: &str) -> Option<ChunkId> {
        parse_hex32(s).map(ChunkId)
    }
    pub fn from_slice(b: &[u8]) -> Option<ChunkId> {
        b.try_into().ok().map(ChunkId)
    }
}

/// Short form (8 hex chars) for messages; `{:#}` prints the full hash.
impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() { f.write_str(&self.to_hex()) } else { f.write_str(&self.to_hex()[..8]) }
    }
}
impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecoveryPointId(pub ChunkId);

impl RecoveryPointId {
    pub fn to_hex(&self) -> String {
        self.0.to_hex()
    }
}
impl fmt::Display for RecoveryPointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}
impl fmt::Debug for RecoveryPointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecoveryPointId({self})")
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let txt = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(txt, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn hex_round_trip_and_short_display() {
        let id = ChunkId::of(b"kluis");
        assert_eq!(ChunkId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(format!("{id}").len(), 8);
        assert_eq!(format!("{id:#}"), id.to_hex());
        assert!(ChunkId::ZERO.is_zero());
        assert!(!id.is_zero());
    }
}
