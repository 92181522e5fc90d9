//! A disk of a recovery point opened for random reads, as the mount and
//! `kluis files` need it. Opening one costs the same whatever the disk's
//! size: its map is read a page at a time as blocks are asked for, through
//! a page cache shared by the mount's disks and bounded in bytes, and each
//! leaf page's chunk locations are looked up when the leaf is read, in an
//! index snapshot the disk pins when opened (so every answer agrees with
//! the map, whatever gc or a replication commits meanwhile). Packs are
//! opened when first read from; the disk's reader lease keeps gc and
//! replication from unlinking any pack its snapshot points into
//! (store/lease.rs). Frames are decoded whole into a shared cache.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crossbeam_channel::Sender;

use crate::catalog::{Catalog, IndexAccess};
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::image::{open_direct, IoBuf};
use crate::recovery_point::{copy_blocks, BlockBytes, DiskEntry, LazyMap, MapPage, PageCache, PageSource, FANOUT};
use crate::store::{check_chunk, pack_path, read_frame_upto, read_frame_via, Codec, DecodedFrame, ReadLease};

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


/// Open pack files kept at once by a mount; more are opened again on use.
const OPEN_PACKS: usize = 256;

/// Where a chunk is: an interned pack (see [`PackTable`]) and the frame.
#[derive(Clone, Copy)]
struct Loc {
    pack: u32,
    frame_len: u32,
    inner: u32,
    raw_len: u32,
    offset: u64,
}

/// The location of a chunk the index does not know (a damaged vault).
const NOT_INDEXED: Loc = Loc { pack: u32::MAX, frame_len: 0, inner: 0, raw_len: 0, offset: 0 };

struct OpenPack {
    name: Arc<str>,
    file: File,
    /// The same file opened with O_DIRECT (None where the filesystem has
    /// none), on the first load by a readahead thread: they read whole
    /// frames with it, around the page cache, since the mount keeps what it
    /// decodes. `kluis files` and random readers never open it.
    direct: std::sync::OnceLock<Option<File>>,
}

impl OpenPack {
    fn direct(&self) -> Option<&File> {
        // Through /proc/self/fd: the very file held open.
        self.direct
            .get_or_init(|| {
                use std::os::fd::AsRawFd;
                open_direct(std::path::Path::new(&format!("/proc/self/fd/{}", self.file.as_raw_fd())), false)
            })
            .as_ref()
    }
}

/// Name → number, and per number (name, frame-cache key).
type PackNames = (HashMap<Arc<str>, u32>, Vec<(Arc<str>, u64)>);

/// The packs a mount has met, by number (so a location is 24 bytes), and a
/// bounded set of them held open. A pack is opened by name when needed:
/// the reader's lease keeps every pack its snapshot points into in place
/// (store/lease.rs).
struct PackTable {
    vault: PathBuf,
    names: RwLock<PackNames>,
    open: quick_cache::sync::Cache<u32, Arc<OpenPack>>,
}

impl PackTable {
    fn intern(&self, name: &str) -> u32 {
        if let Some(n) = self.names.read().unwrap().0.get(name) {
            return *n;
        }
        let mut t = self.names.write().unwrap();
        if let Some(n) = t.0.get(name) {
            return *n;
        }
        let n = t.1.len() as u32;
        let name: Arc<str> = name.into();
        t.1.push((name.clone(), pack_key(&name)));
        t.0.insert(name, n);
        n
    }

    fn name(&self, pack: u32) -> Arc<str> {
        self.names.read().unwrap().1.get(pack as usize).map_or_else(|| "?".into(), |p| p.0.clone())
    }

    fn frame_key(&self, loc: &Loc) -> FrameKey {
        (self.names.read().unwrap().1[loc.pack as usize].1, loc.offset)
    }

    fn get(&self, pack: u32) -> Result<Arc<OpenPack>> {
        self.open.get_or_insert_with(&pack, || {
            let name = self.name(pack);
            let path = pack_path(&self.vault, &name);
            let file = File::open(&path).map_err(|e| Error::io(format!("open pack {name}"), e))?;
            Ok(Arc::new(OpenPack { name, file, direct: Default::default() }))
        })
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
        let p = self.get(loc.pack)?;
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

/// A map page of an open disk: its ids and, for a leaf, where each of its
/// chunks is (as the disk's index snapshot says).
pub struct DiskPage {
    ids: Vec<ChunkId>,
    locs: Vec<Loc>,
}

impl MapPage for DiskPage {
    fn ids(&self) -> &[ChunkId] {
        &self.ids
    }
    fn bytes(&self) -> u64 {
        (std::mem::size_of::<DiskPage>() + self.ids.len() * 32 + self.locs.len() * std::mem::size_of::<Loc>()) as u64
    }
}

/// Decoded frames, map pages and open packs of a mount, shared by all its
/// open disks: what bounds its memory, whatever the number and size of
/// the disks it serves.
pub struct ReadCaches {
    frames: Arc<FrameCache>,
    pages: Arc<PageCache<DiskPage>>,
    packs: PackTable,
    access: IndexAccess,
    next_view: AtomicU64,
    zero_leaf: Arc<DiskPage>,
    zero_inner: Arc<DiskPage>,
}

impl ReadCaches {
    /// Caches for reading vault `vault`: about `frame_bytes` of decoded
    /// frames and `page_bytes` of map pages.
    /// `access`: how this process may open the vault's index (a read-only
    /// vault's snapshots are opened read-only or immutable, like its index).
    pub fn new(vault: &Path, access: IndexAccess, frame_bytes: u64, page_bytes: u64) -> ReadCaches {
        ReadCaches {
            access,
            frames: Arc::new(frame_cache(frame_bytes)),
            pages: Arc::new(PageCache::new(page_bytes)),
            packs: PackTable { vault: vault.to_owned(), names: Default::default(), open: quick_cache::sync::Cache::new(OPEN_PACKS) },
            next_view: AtomicU64::new(1),
            zero_leaf: Arc::new(DiskPage { ids: vec![ChunkId::ZERO; FANOUT], locs: vec![NOT_INDEXED; FANOUT] }),
            zero_inner: Arc::new(DiskPage { ids: vec![ChunkId::ZERO; FANOUT], locs: Vec::new() }),
        }
    }

    /// Bytes of map pages held now.
    pub fn page_bytes(&self) -> u64 {
        self.pages.weight()
    }

    /// The decoded frame `loc` points into, from the cache or loaded into it.
    /// Concurrent misses on one frame (a FUSE thread and a readahead thread,
    /// say) wait for a single load instead of each decompressing.
    fn frame(&self, loc: &Loc) -> Result<Arc<CachedFrame>> {
        self.frames.get_or_insert_with(&self.packs.frame_key(loc), || self.packs.load(loc).map(Arc::new))
    }
}

/// The index as a disk saw it when opened: a pinned snapshot, and the lease
/// that keeps the packs it points into in place.
struct IndexView {
    /// Scopes the disk's leaves in the shared page cache: their locations
    /// hold for this snapshot.
    id: u64,
    index: Mutex<Catalog>,
    _lease: Option<ReadLease>,
}

/// A disk's map pages, read through its snapshot and the mount's caches.
pub struct DiskPages {
    view: IndexView,
    caches: Arc<ReadCaches>,
}

impl DiskPages {
    fn locate(&self, id: &ChunkId) -> Result<Loc> {
        let loc = self.view.index.lock().unwrap().chunk_location(id)?;
        let loc = loc.ok_or_else(|| Error::Corrupt(format!("chunk {id} is not in the vault index")))?;
        Ok(Loc { pack: self.caches.packs.intern(&loc.pack), frame_len: loc.frame_len, inner: loc.inner, raw_len: loc.raw_len, offset: loc.offset })
    }
}

impl PageSource for DiskPages {
    type Page = DiskPage;

    fn fetch(&self, id: &ChunkId) -> Result<Arc<Vec<u8>>> {
        let loc = self.locate(id).map_err(|e| match e {
            Error::Corrupt(_) => Error::Corrupt(format!("map page {id} is not in the vault index")),
            e => e,
        })?;
        let cached = self.caches.frame(&loc)?;
        let i = cached.frame.position(id, loc.inner, loc.raw_len, &format_args!("pack {}", self.caches.packs.name(loc.pack)))?;
        if let Some(why) = &cached.damaged[i] {
            return Err(Error::Corrupt(why.clone()));
        }
        Ok(Arc::new(cached.frame.raw[loc.inner as usize..(loc.inner + loc.raw_len) as usize].to_vec()))
    }

    fn make(&self, ids: Vec<ChunkId>, level: u8) -> Result<DiskPage> {
        if level > 0 {
            return Ok(DiskPage { ids, locs: Vec::new() });
        }
        let found = self.view.index.lock().unwrap().chunk_locations(&ids)?;
        let locs = found
            .into_iter()
            .map(|l| match l {
                None => NOT_INDEXED,
                Some(l) => Loc { pack: self.caches.packs.intern(&l.pack), frame_len: l.frame_len, inner: l.inner, raw_len: l.raw_len, offset: l.offset },
            })
            .collect();
        Ok(DiskPage { ids, locs })
    }

    fn scope(&self, level: u8) -> u64 {
        if level == 0 { self.view.id } else { 0 }
    }

    fn zero(&self, level: u8) -> Arc<DiskPage> {
        if level == 0 { self.caches.zero_leaf.clone() } else { self.caches.zero_inner.clone() }
    }
}

/// A disk open for reading. Opening it reads nothing of its map: pages are
/// read as blocks are asked for, through the mount's bounded page cache,
/// and a leaf's chunk locations are looked up (in the disk's own index
/// snapshot) when the leaf is read.
pub struct OpenDisk {
    pub entry: DiskEntry,
    /// Names the disk in errors: item, point and disk.
    label: String,
    map: LazyMap<DiskPages>,
    caches: Arc<ReadCaches>,
}

impl OpenDisk {
    /// Opens `entry` of a point of the vault `caches` reads. Takes a reader
    /// lease and then an index snapshot, both held while the disk is open;
    /// a vault where no lease can be made (read-only to us) is read without
    /// one: a pack gc removes meanwhile then fails its reads (EIO), never
    /// gives other bytes.
    pub fn open(caches: &Arc<ReadCaches>, entry: DiskEntry, label: String) -> Result<OpenDisk> {
        let vault = &caches.packs.vault;
        let lease = match ReadLease::take(vault) {
            Ok(l) => Some(l),
            Err(e) => {
                static ONCE: std::sync::Once = std::sync::Once::new();
                ONCE.call_once(|| log::warn!("{e}: reading without a lease; a gc may remove packs under open disks"));
                None
            }
        };
        let index = Catalog::open_snapshot(&vault.join("index.sqlite"), caches.access)?;
        let view = IndexView { id: caches.next_view.fetch_add(1, Ordering::Relaxed), index: Mutex::new(index), _lease: lease };
        let source = DiskPages { view, caches: caches.clone() };
        let map = LazyMap::new(entry.depth, entry.root_id()?, entry.blocks(), source, caches.pages.clone());
        Ok(OpenDisk { entry, label, map, caches: caches.clone() })
    }

    pub fn size(&self) -> u64 {
        self.entry.size
    }

    pub fn block_size(&self) -> u64 {
        self.entry.block_size as u64
    }

    pub fn block_count(&self) -> u64 {
        self.map.blocks()
    }

    /// Block `index`'s chunk id and location (ZERO past the end).
    fn entry_at(&self, index: u64) -> Result<(ChunkId, Loc)> {
        if index >= self.block_count() {
            return Ok((ChunkId::ZERO, NOT_INDEXED));
        }
        let leaf = self.map.leaf(index / FANOUT as u64).map_err(|e| self.in_block(index, e))?;
        let i = (index % FANOUT as u64) as usize;
        Ok((leaf.ids[i], leaf.locs[i]))
    }

    pub fn block_id(&self, index: u64) -> Result<ChunkId> {
        Ok(self.entry_at(index)?.0)
    }

    /// Block `index`'s chunk, where it is and its frame; None for a hole.
    fn located(&self, index: u64) -> Result<Option<(ChunkId, Loc, FrameKey)>> {
        let (id, loc) = self.entry_at(index)?;
        if id.is_zero() {
            return Ok(None);
        }
        if loc.pack == NOT_INDEXED.pack {
            return Err(self.in_block(index, Error::Corrupt(format!("chunk {id} is not in the vault index"))));
        }
        Ok(Some((id, loc, self.caches.packs.frame_key(&loc))))
    }

    /// The plaintext of block `index` (None for a hole), via the cache.
    pub fn block(&self, index: u64) -> Result<Option<BlockBytes>> {
        let Some((id, loc, _)) = self.located(index)? else { return Ok(None) };
        let cached = self.caches.frame(&loc).map_err(|e| self.in_block(index, e))?;
        self.check_in(&cached, index, &id, &loc)?;
        let range = loc.inner as usize..(loc.inner + loc.raw_len) as usize;
        Ok(Some(BlockBytes::new(cached, range)))
    }

    /// That `cached` holds block `index` (chunk `id`) where `loc` says, and
    /// that the chunk is not one found damaged when the frame was loaded.
    fn check_in(&self, cached: &CachedFrame, index: u64, id: &ChunkId, loc: &Loc) -> Result<()> {
        let what = format_args!("pack {}", self.caches.packs.name(loc.pack));
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
        copy_blocks(buf, offset, self.size(), self.block_size(), &mut |i| match self.located(i)? {
            Some((id, loc, key)) if !self.is_cached(&key) => self.block_prefix(i, &id, &loc).map(Some),
            _ => self.block(i),
        })
    }

    fn block_prefix(&self, index: u64, id: &ChunkId, loc: &Loc) -> Result<BlockBytes> {
        let p = self.caches.packs.get(loc.pack).map_err(|e| self.in_block(index, e))?;
        let what = format_args!("pack {}", p.name);
        let frame = read_frame_upto(&p.file, &p.name, loc.offset, loc.frame_len, Some((loc.inner + loc.raw_len) as usize))
            .and_then(|f| {
                f.checked_slice(id, loc.inner, loc.raw_len, &what)?;
                Ok(f)
            })
            .map_err(|e| self.in_block(index, e))?;
        Ok(BlockBytes::new(Arc::new(frame.raw), loc.inner as usize..(loc.inner + loc.raw_len) as usize))
    }

    /// Adds the disk, its point and the block's byte range to an error.
    fn in_block(&self, index: u64, e: Error) -> Error {
        let s = index * self.block_size();
        let msg = format!("{} bytes {s}..{}: {e}", self.label, (s + self.block_size()).min(self.size()));
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
        let Some((_, loc0, key)) = self.located(first)? else { return Ok(None) };
        let Some(cached) = self.caches.frames.get(&key) else { return Ok(None) };
        let start = loc0.inner as u64;
        for i in first..=last {
            match self.located(i)? {
                Some((id, loc, k)) if k == key && loc.inner as u64 == start + (i - first) * bs => {
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
    pub fn is_hole(&self, offset: u64, len: u64) -> Result<bool> {
        let bs = self.block_size();
        if len == 0 {
            return Ok(false);
        }
        let (first, end) = (offset / bs, (offset + len).div_ceil(bs));
        Ok(self.map.next(first, true)?.is_none_or(|b| b >= end))
    }

    /// The frame holding block `index`, or None for a hole (or a chunk the
    /// index lacks: its read reports that).
    pub fn frame_of(&self, index: u64) -> Result<Option<FrameKey>> {
        Ok(self.located(index).ok().flatten().map(|(_, _, k)| k))
    }

    pub fn is_cached(&self, key: &FrameKey) -> bool {
        self.caches.frames.contains_key(key)
    }

    /// Queues the frames holding `[offset, offset + len)` that are not
    /// cached for the readahead threads, one request per frame (its first
    /// block loads all of it). Stops quietly when the queue is full, or at
    /// a map page that cannot be read (the read itself reports it).
    pub fn prefetch(self: &Arc<Self>, tx: &Prefetch, offset: u64, len: u64) {
        let bs = self.block_size();
        let (first, end) = (offset / bs, (offset + len).div_ceil(bs).min(self.block_count()));
        let mut last = None;
        let mut b = first;
        // A leaf at a time: one map lookup per 256 blocks, not per block.
        while b < end {
            let Ok(leaf) = self.map.leaf(b / FANOUT as u64) else { break };
            let leaf_end = ((b / FANOUT as u64 + 1) * FANOUT as u64).min(end);
            for i in b..leaf_end {
                let j = (i % FANOUT as u64) as usize;
                let loc = &leaf.locs[j];
                if leaf.ids[j].is_zero() || loc.pack == NOT_INDEXED.pack {
                    continue;
                }
                let frame = self.caches.packs.frame_key(loc);
                if last == Some(frame) || self.is_cached(&frame) {
                    continue;
                }
                last = Some(frame);
                if tx.try_send((self.clone(), i)).is_err() {
                    return;
                }
            }
            b = leaf_end;
        }
    }

    /// Reads up to `buf.len()` bytes at `offset`; short only at the end.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        copy_blocks(buf, offset, self.size(), self.block_size(), &mut |i| self.block(i))
    }

    /// SEEK_DATA / SEEK_HOLE over the block map: the first offset ≥ `from`
    /// that starts data (`data`) or a hole. None when there is no more data.
    /// Zero map pages answer for their whole stretch.
    pub fn seek(&self, from: u64, data: bool) -> Result<Option<u64>> {
        let size = self.size();
        if from >= size {
            return Ok(None);
        }
        let bs = self.block_size();
        Ok(match self.map.next(from / bs, data)? {
            Some(i) => Some((i * bs).max(from)),
            // The end of the file counts as a hole.
            None if data => None,
            None => Some(size),
        })
    }

    /// True when blocks `first..end` are the same chunks here and in `other`
    /// (compared a map page at a time where the maps allow).
    pub fn same_blocks(&self, other: &OpenDisk, first: u64, end: u64) -> Result<bool> {
        self.map.same_blocks(&other.map, first, end)
    }
}
