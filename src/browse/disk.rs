//! A disk of a recovery point opened for random reads, as the mount needs it:
//! every block's chunk location and every pack file are resolved when the
//! disk is opened, so reads never touch SQLite, and the packs stay readable
//! through their open descriptors even if gc rewrites or deletes them later.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::recovery_point::{collect_blocks, copy_blocks, BlockBytes, DiskEntry};
use crate::image::{open_direct, IoBuf};
use crate::store::{check_chunk, pack_path, read_frame, read_frame_upto, read_frame_via, Codec, DecodedFrame};

/// A frame as the mount keeps it: decoded, with the chunks that failed
/// their check.
pub struct CachedFrame {
    frame: DecodedFrame,
    /// Per chunk, in table order: why it is damaged (stored frames only).
    damaged: Vec<Option<String>>,
}

impl AsRef<[u8]> for CachedFrame {
    fn as_ref(&self) -> &[u8] {
        &self.frame.raw
    }
}

/// Identifies a frame across the disks of a mount: (pack, offset of the frame).
pub type FrameKey = (u64, u64);

/// Decoded frames shared by all open disks of a mount, weighed by their bytes.
pub type FrameCache = quick_cache::sync::Cache<FrameKey, Arc<CachedFrame>, FrameWeight>;

#[derive(Clone)]
pub struct FrameWeight;

impl quick_cache::Weighter<FrameKey, Arc<CachedFrame>> for FrameWeight {
    fn weight(&self, _: &FrameKey, f: &Arc<CachedFrame>) -> u64 {
        f.frame.raw.len().max(1) as u64
    }
}

/// A cache holding about `bytes` of decoded frames. The cache is split in
/// shards, each with an equal share of `bytes`, and a frame only stays in
/// its own shard: each must hold several of the largest frames, or the
/// frames a sequential reader's readahead loads push each other out before
/// they are read (with quick_cache's default of four shards per core, a
/// mount's `dd` of a disk in 8 MiB frames read the same frames again and
/// again: 11.0 s instead of 3).
pub fn frame_cache(bytes: u64) -> FrameCache {
    // At least 16 of a backup's frames per shard: two shards of 48 MiB for
    // the mount's 96 MiB and 3 MiB runs. (quick_cache also merges shards
    // expected to hold fewer than 32 items; at 256 KiB per item, the
    // estimate below, that never overrides this.)
    let fit = (bytes / (16 * crate::backup::RUN_BYTES)).clamp(1, 8);
    let shards = 1usize << fit.ilog2();
    let options = quick_cache::OptionsBuilder::new()
        .estimated_items_capacity((bytes / (256 << 10)) as usize)
        .weight_capacity(bytes)
        .shards(shards)
        .build()
        .expect("every option is set");
    FrameCache::with_options(options, FrameWeight, Default::default(), Default::default())
}

/// The queue of the mount's readahead threads: (disk, block) whose frame
/// to load into the cache.
pub type Prefetch = Sender<(Arc<OpenDisk>, u64)>;

/// A pack's name as a number: names are 16 hex chars (see store::pack);
/// anything else is hashed.
fn pack_key(name: &str) -> u64 {
    u64::from_str_radix(name, 16).unwrap_or_else(|_| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut h);
        h.finish()
    })
}

#[derive(Clone, Copy)]
struct Loc {
    pack: u32,
    offset: u64,
    frame_len: u32,
    inner: u32,
    raw_len: u32,
}

thread_local! {
    static DIRECT_LOADS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes the frames this thread loads be read with O_DIRECT: for the
/// mount's readahead threads, several of which read at once while others
/// decode. A thread that loads a frame because its own reader needs it now
/// (a FUSE thread the readahead did not get ahead of, `kluis files`) waits
/// for that read, and reads through the page cache, whose readahead of the
/// pack may have it already. (`kluis files ls` of a 100,000-entry guest
/// directory, cold, alternating: 0.62–0.81 s with session 5's reads, 0.62–
/// 0.67 s with direct reads in every thread, 0.61–0.62 s like this.)
pub fn load_with_direct_io() {
    DIRECT_LOADS.set(true);
}

/// Where every chunk a disk needs is, plus its packs held open.
struct Locations {
    by_id: HashMap<ChunkId, Loc>,
    packs: Vec<OpenPack>,
}

struct OpenPack {
    name: String,
    key: u64,
    file: Arc<File>,
    /// The same file opened with O_DIRECT (None where the filesystem has
    /// none), on the first load by a readahead thread: they read whole
    /// frames with it, around the page cache, since the mount keeps what it
    /// decodes. `kluis files` and random readers never open it.
    direct: std::sync::OnceLock<Option<File>>,
}

impl OpenPack {
    fn direct(&self) -> Option<&File> {
        // Through /proc/self/fd: the very file held open, even if a gc has
        // since unlinked it.
        self.direct
            .get_or_init(|| {
                use std::os::fd::AsRawFd;
                open_direct(std::path::Path::new(&format!("/proc/self/fd/{}", self.file.as_raw_fd())), false)
            })
            .as_ref()
    }
}

impl Locations {
    fn get(&self, id: &ChunkId) -> Result<(Loc, FrameKey)> {
        let loc = *self.by_id.get(id).ok_or_else(|| Error::Corrupt(format!("chunk {id} is not in the vault index")))?;
        Ok((loc, (self.packs[loc.pack as usize].key, loc.offset)))
    }

    /// Reads and decodes the frame at `loc`.
    ///
    /// A zstd frame's bytes are vouched for by zstd's content checksum
    /// (XXH64 over the decoded frame), so they are served without hashing
    /// each chunk again with blake3, which would cost a quarter of the read
    /// path's CPU; a stored frame has no such checksum and each of its
    /// chunks is blake3-checked here, once. `verify --read-data` and restore
    /// check every hash.
    fn load(&self, loc: &Loc) -> Result<CachedFrame> {
        thread_local! {
            static STORED: std::cell::RefCell<IoBuf> = std::cell::RefCell::new(IoBuf::new(0));
        }
        let p = &self.packs[loc.pack as usize];
        let name = &p.name;
        let direct = if DIRECT_LOADS.get() { p.direct() } else { None };
        let frame = STORED.with(|b| read_frame_via(&p.file, direct, name, loc.offset, loc.frame_len, &mut b.borrow_mut()))?;
        let damaged = match frame.header.codec {
            Codec::Zstd => vec![None; frame.header.chunks.len()],
            Codec::Stored => frame.chunks().map(|(id, b)| check_chunk(&id, b, &format_args!("pack {name}")).err().map(|e| e.to_string())).collect(),
        };
        Ok(CachedFrame { frame, damaged })
    }
}

pub struct OpenDisk {
    pub entry: DiskEntry,
    /// Chunk id of every block, in order (ZERO for holes).
    blocks: Vec<ChunkId>,
    locs: Locations,
    cache: Arc<FrameCache>,
}

/// Reads a chunk by looking it up in the index: used only while opening.
fn fetch_via_index(vault: &std::path::Path, index: &Catalog, id: &ChunkId) -> Result<Vec<u8>> {
    let loc = index.chunk_location(id)?.ok_or_else(|| Error::Corrupt(format!("map page {id} is not in the vault index")))?;
    let f = File::open(pack_path(vault, &loc.pack)).map_err(|e| Error::io(format!("open pack {}", loc.pack), e))?;
    let frame = read_frame(&f, &loc.pack, loc.offset, loc.frame_len)?;
    Ok(frame.checked_slice(id, loc.inner, loc.raw_len, &format_args!("pack {}", loc.pack))?.to_vec())
}

impl OpenDisk {
    /// Loads the map and the locations of its chunks. A concurrent gc may
    /// move chunks between our lookup and our open(2) of the pack; then the
    /// open fails with ENOENT and we look again.
    pub fn open(vault: &std::path::Path, index: &Catalog, entry: DiskEntry, cache: Arc<FrameCache>) -> Result<OpenDisk> {
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
                    let path = pack_path(vault, &loc.pack);
                    let f = File::open(&path).map_err(|e| Error::io(format!("open pack {}", loc.pack), e))?;
                    packs.push(OpenPack { name: loc.pack.clone(), key: pack_key(&loc.pack), file: Arc::new(f), direct: Default::default() });
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
    pub fn block(&self, index: u64) -> Result<Option<BlockBytes>> {
        let id = self.block_id(index);
        if id.is_zero() {
            return Ok(None);
        }
        let (loc, key) = self.locs.get(&id).map_err(|e| self.in_block(index, e))?;
        // Concurrent misses on one frame (a FUSE thread and a readahead
        // thread, say) wait for a single load instead of each decompressing.
        let cached = self.cache.get_or_insert_with(&key, || self.locs.load(&loc).map(Arc::new)).map_err(|e| self.in_block(index, e))?;
        self.check_in(&cached, index, &id, &loc)?;
        let range = loc.inner as usize..(loc.inner + loc.raw_len) as usize;
        Ok(Some(BlockBytes::new(cached, range)))
    }

    /// That `cached` holds block `index` (chunk `id`) where `loc` says, and
    /// that the chunk is not one found damaged when the frame was loaded.
    fn check_in(&self, cached: &CachedFrame, index: u64, id: &ChunkId, loc: &Loc) -> Result<()> {
        let what = format_args!("pack {}", self.locs.packs[loc.pack as usize].name);
        let i = cached.frame.position(id, loc.inner, loc.raw_len, &what).map_err(|e| self.in_block(index, e))?;
        match &cached.damaged[i] {
            Some(why) => Err(self.in_block(index, Error::Corrupt(why.clone()))),
            None => Ok(()),
        }
    }

    /// Reads `buf.len()` bytes at `offset` for a random reader: a block whose
    /// frame is not cached is decoded from the frame's start only as far as
    /// that block, checked with blake3, and nothing is cached (the kernel's
    /// page cache keeps what the reader re-reads). A sequential reader goes
    /// through [`OpenDisk::read_at`] instead and caches whole frames.
    pub fn read_at_random(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        copy_blocks(buf, offset, self.size(), self.block_size(), &mut |i| {
            let id = self.block_id(i);
            match self.frame_of(i) {
                Some(key) if !self.is_cached(&key) => self.block_prefix(i, &id).map(Some),
                _ => self.block(i),
            }
        })
    }

    fn block_prefix(&self, index: u64, id: &ChunkId) -> Result<BlockBytes> {
        let (loc, _) = self.locs.get(id)?;
        let OpenPack { name, file, .. } = &self.locs.packs[loc.pack as usize];
        let what = format_args!("pack {name}");
        let frame = read_frame_upto(file, name, loc.offset, loc.frame_len, Some((loc.inner + loc.raw_len) as usize))
            .and_then(|f| {
                f.checked_slice(id, loc.inner, loc.raw_len, &what)?;
                Ok(f)
            })
            .map_err(|e| self.in_block(index, e))?;
        Ok(BlockBytes::new(Arc::new(frame.raw), loc.inner as usize..(loc.inner + loc.raw_len) as usize))
    }

    /// Adds the block's disk range to an error.
    fn in_block(&self, index: u64, e: Error) -> Error {
        let s = index * self.block_size();
        let msg = format!("disk {} bytes {s}..{}: {e}", self.entry.name, (s + self.block_size()).min(self.size()));
        match e {
            Error::Io { source, .. } => Error::io(msg, source),
            _ => Error::Corrupt(msg),
        }
    }

    /// `len` bytes at `offset` as one range of a cached frame, when they
    /// are consecutive in one frame and the frame is already decoded (the
    /// readahead's work); None otherwise.
    pub fn contiguous(&self, offset: u64, len: usize) -> Result<Option<BlockBytes>> {
        // Only the disk's own bytes: past its end (a VHD's padding and
        // footer) the frame holds other chunks or nothing.
        if len == 0 || offset + len as u64 > self.size() {
            return Ok(None);
        }
        let bs = self.block_size();
        let (first, last) = (offset / bs, (offset + len as u64 - 1) / bs);
        let Some(key) = self.frame_of(first) else { return Ok(None) };
        let Some(cached) = self.cache.get(&key) else { return Ok(None) };
        let start = self.locs.get(&self.block_id(first))?.0.inner as u64;
        for i in first..=last {
            let id = self.block_id(i);
            match self.locs.get(&id) {
                Ok((loc, k)) if !id.is_zero() && k == key && loc.inner as u64 == start + (i - first) * bs => {
                    // Damage is reported as a read of the block would.
                    self.check_in(&cached, i, &id, &loc)?;
                }
                _ => return Ok(None),
            }
        }
        let from = (start + offset % bs) as usize;
        Ok(Some(BlockBytes::new(cached, from..from + len)))
    }

    /// True when `[offset, offset + len)` lies in holes only.
    pub fn is_hole(&self, offset: u64, len: u64) -> bool {
        let bs = self.block_size();
        len > 0 && (offset / bs..(offset + len).div_ceil(bs)).all(|i| self.block_id(i).is_zero())
    }

    /// The frame holding block `index`, or None for a hole.
    pub fn frame_of(&self, index: u64) -> Option<FrameKey> {
        let id = self.block_id(index);
        if id.is_zero() { None } else { self.locs.get(&id).ok().map(|(_, k)| k) }
    }

    pub fn is_cached(&self, key: &FrameKey) -> bool {
        self.cache.contains_key(key)
    }

    /// Queues the frames holding `[offset, offset + len)` that are not
    /// cached for the readahead threads, one request per frame (its first
    /// block loads all of it). Stops quietly when the queue is full.
    pub fn prefetch(self: &Arc<Self>, tx: &Prefetch, offset: u64, len: u64) {
        let bs = self.block_size();
        let (first, end) = (offset / bs, (offset + len).div_ceil(bs).min(self.block_count()));
        let mut last = None;
        for b in first..end {
            let Some(frame) = self.frame_of(b) else { continue };
            if last == Some(frame) || self.is_cached(&frame) {
                continue;
            }
            last = Some(frame);
            if tx.try_send((self.clone(), b)).is_err() {
                break;
            }
        }
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
