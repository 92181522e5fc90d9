//! What ext.rs reads of an ext2/3/4 filesystem itself, because `ext4-view`
//! does not expose it: inode-table slots (for the link count) and the
//! inode numbers stored in directory blocks (for `st_ino` and hard links
//! of every entry of a listing, without a path walk per entry).
//!
//! These reads see the filesystem as written, not as its journal would
//! replay it. So nothing here is trusted alone: ext.rs takes an inode
//! number from a directory block only when that inode's slot agrees with
//! what `ext4-view` (journal applied) says of the entry, and walks the
//! path otherwise.

use std::collections::HashMap;

use ext4_view::Metadata;

use super::readat::Slice;
use crate::error::{Error, Result};

const EXTENTS_FL: u32 = 0x8_0000;
const INLINE_DATA_FL: u32 = 0x1000_0000;
const EXTENT_MAGIC: u16 = 0xf30a;
/// Extent tree depth ext4 allows (a deeper one is corrupt).
const MAX_DEPTH: u16 = 5;

/// What we need to find an inode in the table ourselves.
#[derive(Clone, Copy)]
pub struct Geometry {
    block_size: u64,
    inodes_per_group: u64,
    inode_size: u64,
    desc_size: u64,
    gdt_block: u64,
    is64: bool,
}

/// The classic 128 bytes of an inode, as stored in the table.
pub struct Slot([u8; 128]);

fn u16le(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32le(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

impl Geometry {
    pub fn read(s: &Slice) -> Result<Geometry> {
        let mut sb = [0u8; 1024];
        s.read_exact_at(&mut sb, 1024)?;
        let log = u32le(&sb, 24);
        if log > 6 {
            return Err(Error::Corrupt(format!("ext superblock: block size 2^{} KiB", log)));
        }
        let block_size = 1024u64 << log;
        let rev = u32le(&sb, 76);
        let inode_size = if rev == 0 { 128 } else { u16le(&sb, 88) as u64 };
        let is64 = u32le(&sb, 96) & 0x80 != 0;
        let desc_size = if is64 { (u16le(&sb, 254) as u64).max(32) } else { 32 };
        let first_data = u32le(&sb, 20) as u64;
        Ok(Geometry { block_size, inodes_per_group: u32le(&sb, 40) as u64, inode_size, desc_size, gdt_block: first_data + 1, is64 })
    }

    /// Inode `ino`'s slot in the inode table.
    pub fn slot(&self, s: &Slice, ino: u64) -> Result<Slot> {
        if ino == 0 || self.inodes_per_group == 0 || !(128..=65536).contains(&self.inode_size) {
            return Err(Error::Corrupt(format!("ext inode {ino}: bad geometry")));
        }
        let (group, index) = ((ino - 1) / self.inodes_per_group, (ino - 1) % self.inodes_per_group);
        let mut d = [0u8; 64];
        let doff = self.gdt_block * self.block_size + group * self.desc_size;
        s.read_exact_at(&mut d[..self.desc_size.min(64) as usize], doff)?;
        let mut table = u32le(&d, 8) as u64;
        if self.is64 && self.desc_size >= 64 {
            table |= (u32le(&d, 0x28) as u64) << 32;
        }
        let off = table
            .checked_mul(self.block_size)
            .and_then(|t| t.checked_add(index * self.inode_size))
            .ok_or_else(|| Error::Corrupt(format!("ext inode {ino}: table offset overflows")))?;
        let mut b = [0u8; 128];
        s.read_exact_at(&mut b, off)?;
        Ok(Slot(b))
    }

    /// Name → inode number of every entry in the blocks of directory
    /// inode `slot`. Err for what we do not read (inline data) or cannot.
    pub fn dir_entries(&self, s: &Slice, slot: &Slot) -> Result<HashMap<Vec<u8>, u64>> {
        let b = &slot.0;
        let flags = u32le(b, 0x20);
        if flags & INLINE_DATA_FL != 0 {
            return Err(Error::InvalidInput("ext: inline directory".into()));
        }
        let size = u32le(b, 4) as u64 | (u32le(b, 0x6c) as u64) << 32;
        let nblocks = size.div_ceil(self.block_size);
        if nblocks > super::MAX_ENTRIES as u64 {
            return Err(Error::Corrupt("ext: directory too large".into()));
        }
        let mut blocks = Vec::with_capacity(nblocks as usize);
        if flags & EXTENTS_FL != 0 {
            self.extent_blocks(s, &b[0x28..0x64], MAX_DEPTH, nblocks, &mut blocks)?;
        } else {
            self.mapped_blocks(s, &b[0x28..0x64], nblocks, &mut blocks)?;
        }
        let mut out = HashMap::new();
        let mut buf = vec![0u8; self.block_size as usize];
        for blk in blocks {
            if blk == 0 {
                continue;
            }
            s.read_exact_at(&mut buf, blk * self.block_size)?;
            let mut off = 0;
            while off + 8 <= buf.len() {
                let (ino, rec, len) = (u32le(&buf, off), u16le(&buf, off + 4) as usize, buf[off + 6] as usize);
                if rec < 8 || off + rec > buf.len() || 8 + len > rec {
                    return Err(Error::Corrupt("ext: bad directory entry".into()));
                }
                // Inode 0: free space, an htree node, the checksum tail.
                if ino != 0 && len > 0 {
                    out.insert(buf[off + 8..off + 8 + len].to_vec(), ino as u64);
                }
                off += rec;
            }
        }
        Ok(out)
    }

    /// Physical blocks of the first `want` logical blocks of an extent
    /// tree (0 for holes), in logical order.
    fn extent_blocks(&self, s: &Slice, node: &[u8], depth_left: u16, want: u64, out: &mut Vec<u64>) -> Result<()> {
        let bad = || Error::Corrupt("ext: bad extent tree".into());
        if u16le(node, 0) != EXTENT_MAGIC || depth_left == 0 {
            return Err(bad());
        }
        let (count, depth) = (u16le(node, 2) as usize, u16le(node, 6));
        if 12 + count * 12 > node.len() || depth >= depth_left {
            return Err(bad());
        }
        for i in 0..count {
            let e = &node[12 + i * 12..24 + i * 12];
            if depth > 0 {
                let leaf = u32le(e, 4) as u64 | (u16le(e, 8) as u64) << 32;
                let mut child = vec![0u8; self.block_size as usize];
                s.read_exact_at(&mut child, leaf.checked_mul(self.block_size).ok_or_else(bad)?)?;
                self.extent_blocks(s, &child, depth, want, out)?;
            } else {
                let logical = u32le(e, 0) as u64;
                let len = u16le(e, 4) as u64;
                let start = u32le(e, 8) as u64 | (u16le(e, 6) as u64) << 32;
                // Past 32768: an unwritten extent, which reads as zeros.
                let (len, unwritten) = if len > 32768 { (len - 32768, true) } else { (len, false) };
                if logical < out.len() as u64 {
                    return Err(bad());
                }
                while (out.len() as u64) < logical.min(want) {
                    out.push(0);
                }
                for j in 0..len {
                    if out.len() as u64 >= want {
                        return Ok(());
                    }
                    out.push(if unwritten { 0 } else { start + j });
                }
            }
            if out.len() as u64 >= want {
                break;
            }
        }
        Ok(())
    }

    /// The same for an ext2/3 block map: 12 direct, then single, double
    /// and triple indirect blocks.
    fn mapped_blocks(&self, s: &Slice, iblock: &[u8], want: u64, out: &mut Vec<u64>) -> Result<()> {
        for i in 0..15 {
            if out.len() as u64 >= want {
                break;
            }
            let b = u32le(iblock, i * 4) as u64;
            let level = i.saturating_sub(11) as u32;
            self.mapped(s, b, level, want, out)?;
        }
        Ok(())
    }

    fn mapped(&self, s: &Slice, block: u64, level: u32, want: u64, out: &mut Vec<u64>) -> Result<()> {
        let per = self.block_size / 4;
        if level == 0 {
            out.push(block);
            return Ok(());
        }
        if block == 0 {
            let n = per.pow(level).min(want - out.len() as u64);
            out.extend(std::iter::repeat_n(0, n as usize));
            return Ok(());
        }
        let mut b = vec![0u8; self.block_size as usize];
        s.read_exact_at(&mut b, block * self.block_size)?;
        for i in 0..per as usize {
            if out.len() as u64 >= want {
                break;
            }
            self.mapped(s, u32le(&b, i * 4) as u64, level - 1, want, out)?;
        }
        Ok(())
    }
}

impl Slot {
    pub fn nlink(&self) -> u32 {
        u16le(&self.0, 26) as u32
    }

    /// True when this slot holds the inode `m` describes (`ext4-view`
    /// read it with the journal applied): type and mode, owner, size and
    /// the seconds of atime and mtime all agree.
    pub fn matches(&self, m: &Metadata) -> bool {
        let b = &self.0;
        let uid = u16le(b, 2) as u32 | (u16le(b, 0x78) as u32) << 16;
        let gid = u16le(b, 0x18) as u32 | (u16le(b, 0x7a) as u32) << 16;
        let size = u32le(b, 4) as u64 | (u32le(b, 0x6c) as u64) << 32;
        let kind_ok = match u16le(b, 0) & 0o170000 {
            0o040000 => m.is_dir(),
            0o120000 => m.is_symlink(),
            0o100000 => m.file_type().is_regular_file(),
            _ => !m.is_dir() && !m.is_symlink() && !m.file_type().is_regular_file(),
        };
        kind_ok
            && u16le(b, 0) & 0o7777 == m.mode()
            && uid == m.uid()
            && gid == m.gid()
            && (m.is_dir() || size == m.len())
            && u32le(b, 8) == m.accessed().seconds() as u32
            && u32le(b, 0x10) == m.modified().seconds() as u32
    }
}
