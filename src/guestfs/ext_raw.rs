//! What ext.rs reads of an ext2/3/4 filesystem itself, because `ext4-view`
//! does not expose it: inode-table slots (for the link count), the inode
//! numbers stored in directory blocks (for `st_ino` and hard links of
//! every entry of a listing, without a path walk per entry), and a file's
//! block map (extent tree or ext2/3 indirect blocks) as [`Run`]s, so that
//! a file is read by inode without the crate's path walk and global lock.
//!
//! These reads see the filesystem as written, not as its journal would
//! replay it. So nothing here is trusted alone: ext.rs takes an inode
//! number from a directory block only when that inode's slot agrees with
//! what `ext4-view` (journal applied) says of the entry, and walks the
//! path otherwise; and it reads file data through a block map only when
//! [`Geometry::as_replayed`] says there is no journal to replay, which is
//! exactly when `ext4-view` itself reads the blocks as written.
//!
//! Hand-written because no crate reads ext4 by inode number (ext4-view
//! opens by path only); the formats are the kernel's
//! (Documentation/filesystems/ext4).

use std::collections::HashMap;

use ext4_view::Metadata;

use super::readat::Slice;
use crate::error::{Error, Result};

const EXTENTS_FL: u32 = 0x8_0000;
const INLINE_DATA_FL: u32 = 0x1000_0000;
const ENCRYPT_FL: u32 = 0x800;
const COMPAT_HAS_JOURNAL: u32 = 0x4;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
const RO_COMPAT_HUGE_FILE: u32 = 0x8;
/// i_blocks counts filesystem blocks, not 512-byte sectors.
const HUGE_FILE_FL: u32 = 0x4_0000;
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
    blocks: u64,
    /// No journal, or one with nothing to replay: the blocks as written
    /// are the filesystem (`ext4-view` replays only when RECOVER is set).
    as_replayed: bool,
    /// Seed of the metadata checksums (metadata_csum), if on.
    csum_seed: Option<u32>,
    /// i_blocks has 48 bits (huge_file).
    huge_files: bool,
}

/// `len` blocks of a file from logical block `logical`, stored from
/// physical block `physical`. Blocks no run covers (holes, unwritten
/// extents) read as zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub logical: u64,
    pub len: u64,
    pub physical: u64,
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
        let (compat, incompat, ro_compat) = (u32le(&sb, 92), u32le(&sb, 96), u32le(&sb, 100));
        let is64 = incompat & INCOMPAT_64BIT != 0;
        let desc_size = if is64 { (u16le(&sb, 254) as u64).max(32) } else { 32 };
        let first_data = u32le(&sb, 20) as u64;
        // What the superblock claims, within what the partition holds.
        let blocks = (u32le(&sb, 4) as u64 | if is64 { (u32le(&sb, 0x150) as u64) << 32 } else { 0 }).min(s.len() / block_size);
        let as_replayed = compat & COMPAT_HAS_JOURNAL == 0 || incompat & INCOMPAT_RECOVER == 0;
        let csum_seed = (ro_compat & RO_COMPAT_METADATA_CSUM != 0)
            .then(|| if incompat & INCOMPAT_CSUM_SEED != 0 { u32le(&sb, 0x270) } else { crc32c(!0, &[&sb[0x68..0x78]]) });
        Ok(Geometry {
            block_size,
            inodes_per_group: u32le(&sb, 40) as u64,
            inode_size,
            desc_size,
            gdt_block: first_data + 1,
            is64,
            blocks,
            as_replayed,
            csum_seed,
            huge_files: ro_compat & RO_COMPAT_HUGE_FILE != 0,
        })
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Bytes allocated to the inode in `slot` (its i_blocks), as stat's
    /// st_blocks counts them.
    pub fn allocated(&self, slot: &Slot) -> u64 {
        let b = &slot.0;
        let mut n = u32le(b, 0x1c) as u64;
        if self.huge_files {
            n |= (u16le(b, 0x74) as u64) << 32;
            if u32le(b, 0x20) & HUGE_FILE_FL != 0 {
                return n.saturating_mul(self.block_size);
            }
        }
        n.saturating_mul(512)
    }

    /// True when the filesystem needs no journal replay, so a file's
    /// blocks as written are its contents (see the module doc).
    pub fn as_replayed(&self) -> bool {
        self.as_replayed
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
    /// inode `ino` (`slot`). Err for what we do not read (inline data) or
    /// cannot.
    pub fn dir_entries(&self, s: &Slice, ino: u64, slot: &Slot) -> Result<HashMap<Vec<u8>, u64>> {
        let nblocks = slot.size().div_ceil(self.block_size);
        if nblocks > super::MAX_ENTRIES as u64 {
            return Err(Error::Corrupt("ext: directory too large".into()));
        }
        let mut blocks = Vec::with_capacity(nblocks as usize);
        for r in self.block_map(s, ino, slot)? {
            blocks.extend((0..r.len).map(|i| r.physical + i));
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
                // A second entry of a name (damage) must not lend the
                // first its inode: the first is the one a listing shows.
                if ino != 0 && len > 0 {
                    out.entry(buf[off + 8..off + 8 + len].to_vec()).or_insert(ino as u64);
                }
                off += rec;
            }
        }
        Ok(out)
    }

    /// The block map of inode `ino` (`slot`) up to its size: the runs of
    /// stored blocks in logical order. Err for inline data and encrypted
    /// files (not read here) and for a damaged map: a bad extent header,
    /// a tree deeper than ext4 allows, runs out of order or past the end
    /// of the filesystem, or an extent block whose checksum is wrong.
    pub fn block_map(&self, s: &Slice, ino: u64, slot: &Slot) -> Result<Vec<Run>> {
        let b = &slot.0;
        let flags = u32le(b, 0x20);
        if flags & (INLINE_DATA_FL | ENCRYPT_FL) != 0 {
            return Err(Error::InvalidInput("ext: inline or encrypted data".into()));
        }
        let want = slot.size().div_ceil(self.block_size);
        let mut map = BlockMap { geo: self, want, runs: Vec::new(), csum: None };
        if flags & EXTENTS_FL != 0 {
            // Extent blocks are checksummed with the inode's own seed.
            map.csum = self.csum_seed.map(|seed| crc32c(seed, &[&(ino as u32).to_le_bytes(), &b[0x64..0x68]]));
            map.extents(s, &b[0x28..0x64], MAX_DEPTH)?;
        } else {
            for i in 0..15usize {
                let level = i.saturating_sub(11) as u32;
                let first = match level {
                    0 => i as u64,
                    l => 12 + (1..l).map(|k| self.per_block().pow(k)).sum::<u64>(),
                };
                map.indirect(s, u32le(b, 0x28 + i * 4) as u64, level, first)?;
            }
        }
        Ok(map.runs)
    }

    /// The largest size a file mapped like `slot` can have: 2^32 blocks
    /// through extents (32-bit logical block numbers), 12 direct blocks
    /// and three levels of indirect ones in ext2/3. A bigger size is no
    /// sparse file but damage.
    pub fn max_size(&self, slot: &Slot) -> u64 {
        let blocks = if u32le(&slot.0, 0x20) & EXTENTS_FL != 0 {
            1 << 32
        } else {
            let p = self.per_block();
            12 + p + p * p + p * p * p
        };
        blocks * self.block_size
    }

    fn per_block(&self) -> u64 {
        self.block_size / 4
    }
}

/// A block map being read: the runs found so far, up to `want` blocks.
struct BlockMap<'a> {
    geo: &'a Geometry,
    want: u64,
    runs: Vec<Run>,
    /// The inode's checksum seed, when extent blocks carry checksums.
    csum: Option<u32>,
}

impl BlockMap<'_> {
    /// Adds `len` blocks at `logical` stored from `physical`, merging with
    /// the run before when they continue it.
    fn push(&mut self, logical: u64, len: u64, physical: u64) -> Result<()> {
        let bad = || Error::Corrupt("ext: bad block map".into());
        let len = len.min(self.want.saturating_sub(logical));
        if len == 0 {
            return Ok(());
        }
        if physical == 0 || physical.checked_add(len).is_none_or(|end| end > self.geo.blocks) {
            return Err(bad());
        }
        match self.runs.last_mut() {
            Some(r) if logical < r.logical + r.len => return Err(bad()),
            Some(r) if logical == r.logical + r.len && physical == r.physical + r.len => r.len += len,
            _ => self.runs.push(Run { logical, len, physical }),
        }
        Ok(())
    }

    fn extents(&mut self, s: &Slice, node: &[u8], depth_left: u16) -> Result<()> {
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
            let logical = u32le(e, 0) as u64;
            if logical >= self.want {
                break;
            }
            if depth > 0 {
                let leaf = u32le(e, 4) as u64 | (u16le(e, 8) as u64) << 32;
                if leaf == 0 || leaf >= self.geo.blocks {
                    return Err(bad());
                }
                let mut child = vec![0u8; self.geo.block_size as usize];
                s.read_exact_at(&mut child, leaf * self.geo.block_size)?;
                self.check(&child)?;
                self.extents(s, &child, depth)?;
            } else {
                let len = u16le(e, 4) as u64;
                let start = u32le(e, 8) as u64 | (u16le(e, 6) as u64) << 32;
                // Past 32768: an unwritten extent, which reads as zeros.
                if len <= 32768 {
                    self.push(logical, len, start)?;
                }
            }
        }
        Ok(())
    }

    /// The checksum in the tail of extent block `node`, when the
    /// filesystem has metadata checksums.
    fn check(&self, node: &[u8]) -> Result<()> {
        let Some(seed) = self.csum else { return Ok(()) };
        let tail = 12 + 12 * u16le(node, 4) as usize;
        if tail + 4 > node.len() || crc32c(seed, &[&node[..tail]]) != u32le(node, tail) {
            return Err(Error::Corrupt("ext: extent block checksum mismatch".into()));
        }
        Ok(())
    }

    /// An ext2/3 block pointer of `level` (0 direct, 1–3 indirect) whose
    /// first logical block is `first`.
    fn indirect(&mut self, s: &Slice, block: u64, level: u32, first: u64) -> Result<()> {
        if block == 0 || first >= self.want {
            return Ok(());
        }
        if level == 0 {
            return self.push(first, 1, block);
        }
        if block >= self.geo.blocks {
            return Err(Error::Corrupt("ext: bad indirect block".into()));
        }
        let per = self.geo.per_block();
        let mut b = vec![0u8; self.geo.block_size as usize];
        s.read_exact_at(&mut b, block * self.geo.block_size)?;
        let span = per.pow(level - 1);
        for i in 0..per {
            self.indirect(s, u32le(&b, i as usize * 4) as u64, level - 1, first + i * span)?;
        }
        Ok(())
    }
}

/// The kernel's crc32c of `parts` from `seed`, without the final
/// inversion (what ext4 stores), through the `crc` crate.
fn crc32c(seed: u32, parts: &[&[u8]]) -> u32 {
    const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    let mut d = CRC32C.digest_with_initial(seed.reverse_bits());
    for p in parts {
        d.update(p);
    }
    !d.finalize()
}

impl Slot {
    pub fn nlink(&self) -> u32 {
        u16le(&self.0, 26) as u32
    }

    pub fn size(&self) -> u64 {
        u32le(&self.0, 4) as u64 | (u32le(&self.0, 0x6c) as u64) << 32
    }

    #[cfg(test)]
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The attributes this slot alone gives (mtime to the second), for an
    /// entry ext4-view cannot reach: kind, mode, owner, size, links and,
    /// for a regular file, inode number and allocation.
    pub fn attr(&self, geo: &Geometry, ino: u64) -> super::GAttr {
        use super::GKind;
        let b = &self.0;
        let kind = match u16le(b, 0) & 0o170000 {
            0o040000 => GKind::Dir,
            0o120000 => GKind::Symlink,
            0o020000 => GKind::CharDev,
            0o060000 => GKind::BlockDev,
            0o010000 => GKind::Fifo,
            0o140000 => GKind::Socket,
            _ => GKind::File,
        };
        let file = kind == GKind::File;
        super::GAttr {
            kind,
            size: if kind == GKind::Dir { 0 } else { self.size() },
            mode: u16le(b, 0) & 0o7777,
            uid: u16le(b, 2) as u32 | (u16le(b, 0x78) as u32) << 16,
            gid: u16le(b, 0x18) as u32 | (u16le(b, 0x7a) as u32) << 16,
            mtime_s: u32le(b, 0x10) as i32 as i64,
            mtime_ns: 0,
            ino: file.then_some(ino),
            nlink: if kind == GKind::Dir { 2 } else if file { self.nlink().max(1) } else { 1 },
            allocated: file.then(|| geo.allocated(self)),
        }
    }

    pub fn is_regular(&self) -> bool {
        u16le(&self.0, 0) & 0o170000 == 0o100000
    }

    /// True when this slot holds the inode `m` describes (`ext4-view`
    /// read it with the journal applied): type and mode, owner, size and
    /// the seconds of atime and mtime all agree.
    pub fn matches(&self, m: &Metadata) -> bool {
        let b = &self.0;
        let uid = u16le(b, 2) as u32 | (u16le(b, 0x78) as u32) << 16;
        let gid = u16le(b, 0x18) as u32 | (u16le(b, 0x7a) as u32) << 16;
        let size = self.size();
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
