//! A disk of a recovery point opened for random reads, as the mount needs it:
//! every block's chunk location and every pack file are resolved when the
//! disk is opened, so reads never touch SQLite, and the packs stay readable
//! through their open descriptors even if gc rewrites or deletes them later.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::recovery_point::{collect_blocks, copy_blocks, DiskEntry};
use crate::store::{check_chunk, pack_path, read_frame, Codec};

/// Decompressed chunks shared by all open disks of a mount.
pub type ChunkCache = quick_cache::sync::Cache<ChunkId, Arc<Vec<u8>>>;

#[derive(Clone, Copy)]
struct Loc {
    pack: u32,
    offset: u64,
    frame_len: u32,
    inner: u32,
    raw_len: u32,
}

/// Where every chunk a disk needs is, plus its packs held open.
struct Locations {
    by_id: HashMap<ChunkId, Loc>,
    packs: Vec<(String, Arc<File>)>,
}

impl Locations {
    /// Reads the frame holding `id` and returns `id`'s bytes; the frame's
    /// other chunks go into `cache`, since a sequential read wants them next.
    ///
    /// A zstd frame's bytes are vouched for by zstd's content checksum
    /// (XXH64 over the decoded frame), so they are served without hashing
    /// each chunk again with blake3, which would cost a quarter of the read
    /// path's CPU; a stored frame has no such checksum and each chunk is
    /// blake3-checked. `verify --read-data` and restore check every hash.
    fn read(&self, id: &ChunkId, cache: &ChunkCache) -> Result<Vec<u8>> {
        let loc = self.by_id.get(id).ok_or_else(|| Error::Corrupt(format!("chunk {id} is not in the vault index")))?;
        let (name, file) = &self.packs[loc.pack as usize];
        let frame = read_frame(file, name, loc.offset, loc.frame_len)?;
        let what = format_args!("pack {name}");
        let wanted = frame.slice(id, loc.inner, loc.raw_len, &what)?.to_vec();
        let hashed = frame.header.codec == Codec::Stored;
        if hashed {
            check_chunk(id, &wanted, &what)?;
        }
        for (other, bytes) in frame.chunks() {
            if other != *id && cache.peek(&other).is_none() && (!hashed || check_chunk(&other, bytes, &what).is_ok()) {
                cache.insert(other, Arc::new(bytes.to_vec()));
            }
        }
        Ok(wanted)
    }
}

pub struct OpenDisk {
    pub entry: DiskEntry,
    /// Chunk id of every block, in order (ZERO for holes).
    blocks: Vec<ChunkId>,
    locs: Locations,
    cache: Arc<ChunkCache>,
}

/// Reads a chunk by looking it up in the index: used only while opening.
fn fetch_via_index(vault: &std::path::Path, index: &Catalog, id: &ChunkId) -> Result<Vec<u8>> {
    let loc = index.chunk_location(id)?.ok_or_else(|| Error::Corrupt(format!("map page {id} is not in the vault index")))?;
    let f = File::open(pack_path(vault, &loc.pack)).map_err(|e| Error::io(format!("open pack {}", loc.pack), e))?;
    let frame = read_frame(&f, &loc.pack, loc.offset, loc.frame_len)?;
    let what = format_args!("pack {}", loc.pack);
    let bytes = frame.slice(id, loc.inner, loc.raw_len, &what)?;
    check_chunk(id, bytes, &what)?;
    Ok(bytes.to_vec())
}

impl OpenDisk {
    /// Loads the map and the locations of its chunks. A concurrent gc may
    /// move chunks between our lookup and our open(2) of the pack; then the
    /// open fails with ENOENT and we look again.
    pub fn open(vault: &std::path::Path, index: &Catalog, entry: DiskEntry, cache: Arc<ChunkCache>) -> Result<OpenDisk> {
        let mut last_err = None;
        for _ in 0..5 {
            match Self::try_open(vault, index, &entry) {
                Ok((blocks, locs)) => return Ok(OpenDisk { entry, blocks, locs, cache }),
                Err(e @ Error::Io { .. }) => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap())
    }

    fn try_open(vault: &std::path::Path, index: &Catalog, entry: &DiskEntry) -> Result<(Vec<ChunkId>, Locations)> {
        // One snapshot for all lookups: consistent, and no locking per statement.
        let _snapshot = index.conn().unchecked_transaction()?;
        let blocks = collect_blocks(entry.depth, entry.root_id()?, entry.blocks(), &mut |id| fetch_via_index(vault, index, id))?;
        let mut by_id = HashMap::new();
        let mut pack_index: HashMap<String, u32> = HashMap::new();
        let mut packs = Vec::new();
        for id in blocks.iter().filter(|i| !i.is_zero()) {
            if by_id.contains_key(id) {
                continue;
            }
            let loc = index.chunk_location(id)?.ok_or_else(|| Error::Corrupt(format!("disk {}: chunk {id} is not in the vault index", entry.name)))?;
            let p = match pack_index.get(&loc.pack) {
                Some(p) => *p,
                None => {
                    let f = File::open(pack_path(vault, &loc.pack)).map_err(|e| Error::io(format!("open pack {}", loc.pack), e))?;
                    packs.push((loc.pack.clone(), Arc::new(f)));
                    pack_index.insert(loc.pack.clone(), (packs.len() - 1) as u32);
                    (packs.len() - 1) as u32
                }
            };
            by_id.insert(*id, Loc { pack: p, offset: loc.offset, frame_len: loc.frame_len, inner: loc.inner, raw_len: loc.raw_len });
        }
        Ok((blocks, Locations { by_id, packs }))
    }

    pub fn size(&self) -> u64 {
        self.entry.size
    }

    pub fn block_size(&self) -> u64 {
        self.entry.block_size as u64
    }

    pub fn block_count(&self) -> u64 {
        self.blocks.len() as u64
    }

    pub fn block_id(&self, index: u64) -> ChunkId {
        self.blocks.get(index as usize).copied().unwrap_or(ChunkId::ZERO)
    }

    /// The plaintext of block `index` (None for a hole), via the cache.
    pub fn block(&self, index: u64) -> Result<Option<Arc<Vec<u8>>>> {
        let id = self.block_id(index);
        if id.is_zero() {
            return Ok(None);
        }
        // Concurrent misses on one chunk (a FUSE thread and a readahead
        // thread, say) wait for a single load instead of each decompressing.
        let data = self.cache.get_or_insert_with(&id, || {
            self.locs.read(&id, &self.cache).map(Arc::new).map_err(|e| {
                let s = index * self.block_size();
                let msg = format!("disk {} bytes {s}..{}: {e}", self.entry.name, (s + self.block_size()).min(self.size()));
                match e {
                    Error::Io { source, .. } => Error::io(msg, source),
                    _ => Error::Corrupt(msg),
                }
            })
        })?;
        Ok(Some(data))
    }

    pub fn is_cached(&self, index: u64) -> bool {
        let id = self.block_id(index);
        id.is_zero() || self.cache.get(&id).is_some()
    }

    /// Reads up to `buf.len()` bytes at `offset`; short only at the end.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        copy_blocks(buf, offset, self.size(), self.block_size(), &mut |i| self.block(i))
    }

    /// SEEK_DATA / SEEK_HOLE over the block map: the first offset ≥ `from`
    /// that starts data (`data`) or a hole. None when there is no more data.
    pub fn seek(&self, from: u64, data: bool) -> Option<u64> {
        let size = self.size();
        if from >= size {
            return None;
        }
        let bs = self.block_size();
        let mut i = from / bs;
        while i < self.block_count() {
            if self.block_id(i).is_zero() != data {
                return Some((i * bs).max(from));
            }
            i += 1;
        }
        // The end of the file counts as a hole.
        if data { None } else { Some(size) }
    }
}
