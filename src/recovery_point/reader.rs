//! Reading a disk of a recovery point at any offset.

use std::sync::Arc;

use super::map::MapReader;
use super::manifest::DiskEntry;
use crate::error::Result;
use crate::id::ChunkId;

/// Gives a chunk's plaintext by id, verified against the id. Implemented by
/// the vault (index + packs) and by the mount's location cache.
pub trait ChunkFetcher: Send + Sync {
    fn fetch(&self, id: &ChunkId) -> Result<Arc<Vec<u8>>>;
}

/// A disk of a recovery point as a byte array.
pub struct DiskReader {
    pub entry: DiskEntry,
    map: MapReader,
    fetch: Arc<dyn ChunkFetcher>,
}

impl DiskReader {
    pub fn new(entry: DiskEntry, fetch: Arc<dyn ChunkFetcher>) -> Result<DiskReader> {
        let map = MapReader::new(entry.depth, entry.root_id()?, entry.blocks(), fetch.clone());
        Ok(DiskReader { entry, map, fetch })
    }

    pub fn size(&self) -> u64 {
        self.entry.size
    }

    pub fn block_size(&self) -> u64 {
        self.entry.block_size as u64
    }

    pub fn map(&self) -> &MapReader {
        &self.map
    }

    /// Fills `buf` from `offset`; returns the bytes read (short only at the end of the disk).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        copy_blocks(buf, offset, self.size(), self.block_size(), &mut |index| {
            let id = self.map.block(index)?;
            if id.is_zero() { Ok(None) } else { self.fetch.fetch(&id).map(|c| Some(BlockBytes::whole(c))) }
        })
    }
}

/// The bytes of one block: a range of a shared buffer (a chunk, or a
/// decoded frame holding it), so a cache hit copies nothing.
pub struct BlockBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    range: std::ops::Range<usize>,
}

impl BlockBytes {
    pub fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>, range: std::ops::Range<usize>) -> BlockBytes {
        BlockBytes { owner, range }
    }

    pub fn whole(chunk: Arc<Vec<u8>>) -> BlockBytes {
        let range = 0..chunk.len();
        BlockBytes { owner: chunk, range }
    }
}

impl std::ops::Deref for BlockBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.range.clone()]
    }
}

/// Copies a disk's bytes from `offset` into `buf`, block by block, where
/// `block(index)` gives a block's bytes or None for a hole (zeros). Returns
/// the bytes copied: `buf.len()`, or fewer at the disk's end (`size`).
pub fn copy_blocks(
    buf: &mut [u8],
    offset: u64,
    size: u64,
    block_size: u64,
    block: &mut dyn FnMut(u64) -> Result<Option<BlockBytes>>,
) -> Result<usize> {
    if offset >= size {
        return Ok(0);
    }
    let len = buf.len().min((size - offset) as usize);
    let mut done = 0usize;
    while done < len {
        let pos = offset + done as u64;
        let (index, within) = (pos / block_size, (pos % block_size) as usize);
        let n = (block_size as usize - within).min(len - done);
        let out = &mut buf[done..done + n];
        match block(index)? {
            None => out.fill(0),
            Some(data) => out.copy_from_slice(&data[within..within + n]),
        }
        done += n;
    }
    Ok(len)
}
