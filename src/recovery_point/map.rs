//! Building and reading Merkle block maps (see the module docs).

use std::sync::{Arc, Mutex};

use super::reader::ChunkFetcher;
use crate::error::{Error, Result};
use crate::id::ChunkId;

/// Ids per map page. 256 × 32 bytes = 8 KiB pages: one page covers 16 MiB of
/// a disk at 64 KiB blocks, so a scattered 4 KiB write costs one 64 KiB block
/// plus ~8 KiB of map per level; bigger pages would multiply that overhead.
pub const FANOUT: usize = 256;
pub const PAGE_BYTES: usize = FANOUT * 32;

/// Levels of pages for a map of `blocks` entries (0 for an empty disk).
pub fn depth_for(blocks: u64) -> u8 {
    let mut depth = 0u8;
    let mut span = 1u64;
    while span < blocks {
        span = span.saturating_mul(FANOUT as u64);
        depth += 1;
    }
    depth.max(if blocks > 0 { 1 } else { 0 })
}

fn page_bytes(ids: &[ChunkId]) -> Vec<u8> {
    let mut b = vec![0u8; PAGE_BYTES];
    for (i, id) in ids.iter().enumerate() {
        b[i * 32..i * 32 + 32].copy_from_slice(&id.0);
    }
    b
}

fn parse_page(b: &[u8], id: &ChunkId) -> Result<Vec<ChunkId>> {
    if b.len() != PAGE_BYTES {
        return Err(Error::Corrupt(format!("map page {id}: {} bytes, expected {PAGE_BYTES}", b.len())));
    }
    Ok(b.chunks_exact(32).map(|c| ChunkId::from_slice(c).unwrap()).collect())
}

/// Streams leaf ids in block order and emits pages bottom-up, keeping only
/// one partial page per level in memory.
///
/// `store(page_bytes)` is passed to each call rather than kept, so the caller
/// can interleave page stores with its own writes to the same pack.
pub struct MapBuilder {
    depth: u8,
    levels: Vec<Vec<ChunkId>>,
}

pub type PageStore<'a> = dyn FnMut(&[u8]) -> Result<ChunkId> + 'a;
/// Called with (page id, its entries, level; 0 = leaf) by [`MapReader::walk_pages`].
pub type PageVisitor<'a> = dyn FnMut(ChunkId, &[ChunkId], u8) -> Result<()> + 'a;
/// Reads a page's bytes by id, for [`collect_blocks`].
pub type PageFetch<'a> = dyn FnMut(&ChunkId) -> Result<Vec<u8>> + 'a;
/// Per level (0 = leaves): the last page read there, by index.
type LevelCache = Vec<Option<(u64, Arc<Vec<ChunkId>>)>>;

impl MapBuilder {
    pub fn new(blocks: u64) -> Self {
        let depth = depth_for(blocks);
        MapBuilder { depth, levels: vec![Vec::with_capacity(FANOUT); depth as usize] }
    }

    pub fn push(&mut self, id: ChunkId, store: &mut PageStore) -> Result<()> {
        self.push_at(0, id, store)
    }

    fn push_at(&mut self, level: usize, id: ChunkId, store: &mut PageStore) -> Result<()> {
        self.levels[level].push(id);
        if self.levels[level].len() == FANOUT && level + 1 < self.levels.len() {
            self.flush(level, store)?;
        }
        Ok(())
    }

    fn flush(&mut self, level: usize, store: &mut PageStore) -> Result<()> {
        let ids = std::mem::replace(&mut self.levels[level], Vec::with_capacity(FANOUT));
        let page_id = store_page(&ids, store)?;
        self.push_at(level + 1, page_id, store)
    }

    /// Returns (depth, root id).
    pub fn finish(mut self, store: &mut PageStore) -> Result<(u8, ChunkId)> {
        if self.depth == 0 {
            return Ok((0, ChunkId::ZERO));
        }
        for level in 0..self.levels.len() - 1 {
            if !self.levels[level].is_empty() {
                self.flush(level, store)?;
            }
        }
        let top = std::mem::take(self.levels.last_mut().unwrap());
        let root = store_page(&top, store)?;
        Ok((self.depth, root))
    }
}

fn store_page(ids: &[ChunkId], store: &mut PageStore) -> Result<ChunkId> {
    if ids.iter().all(|i| i.is_zero()) {
        return Ok(ChunkId::ZERO);
    }
    store(&page_bytes(ids))
}

/// Reads a block map lazily, caching the last page seen at each level, so a
/// sequential walk loads each page once and random access costs at most
/// `depth` page loads.
pub struct MapReader {
    depth: u8,
    root: ChunkId,
    blocks: u64,
    fetch: Arc<dyn ChunkFetcher>,
    /// Per level (0 = leaves): (page index at that level, its ids).
    cache: Mutex<LevelCache>,
}

impl MapReader {
    pub fn new(depth: u8, root: ChunkId, blocks: u64, fetch: Arc<dyn ChunkFetcher>) -> MapReader {
        MapReader { depth, root, blocks, fetch, cache: Mutex::new(vec![None; depth as usize]) }
    }

    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The ids of leaf page `page` (blocks `page*FANOUT ..`); all ZERO for a hole.
    pub fn leaf(&self, page: u64) -> Result<Arc<Vec<ChunkId>>> {
        self.page_at(0, page)
    }

    fn page_at(&self, level: u8, index: u64) -> Result<Arc<Vec<ChunkId>>> {
        if let Some((i, ids)) = &self.cache.lock().unwrap()[level as usize]
            && *i == index
        {
            return Ok(ids.clone());
        }
        let id = if level + 1 == self.depth {
            if index != 0 {
                return Err(Error::InvalidInput(format!("map page {index} out of range")));
            }
            self.root
        } else {
            let parent = self.page_at(level + 1, index / FANOUT as u64)?;
            parent[(index % FANOUT as u64) as usize]
        };
        let ids = if id.is_zero() {
            Arc::new(vec![ChunkId::ZERO; FANOUT])
        } else {
            Arc::new(parse_page(&self.fetch.fetch(&id)?, &id)?)
        };
        self.cache.lock().unwrap()[level as usize] = Some((index, ids.clone()));
        Ok(ids)
    }

    pub fn block(&self, index: u64) -> Result<ChunkId> {
        if index >= self.blocks {
            return Err(Error::InvalidInput(format!("block {index} past the end of the disk ({} blocks)", self.blocks)));
        }
        Ok(self.leaf(index / FANOUT as u64)?[(index % FANOUT as u64) as usize])
    }

    /// Calls `visit(page_id, level)` for every stored page of the map, parents
    /// before children, without touching leaf data. Used by gc and verify.
    pub fn walk_pages(&self, visit: &mut PageVisitor) -> Result<()> {
        if self.depth == 0 || self.root.is_zero() {
            return Ok(());
        }
        self.walk_from(self.root, self.depth - 1, visit)
    }

    fn walk_from(&self, id: ChunkId, level: u8, visit: &mut PageVisitor) -> Result<()> {
        let ids = parse_page(&self.fetch.fetch(&id)?, &id)?;
        visit(id, &ids, level)?;
        if level > 0 {
            for child in ids.iter().filter(|c| !c.is_zero()) {
                self.walk_from(*child, level - 1, visit)?;
            }
        }
        Ok(())
    }
}

/// A map page as a lazily read map keeps it: its ids, plus whatever its
/// source attaches (the mount attaches the chunk locations of a leaf).
pub trait MapPage: Send + Sync + 'static {
    fn ids(&self) -> &[ChunkId];
    /// What the page costs in memory, for the cache's bound.
    fn bytes(&self) -> u64;
}

impl MapPage for Vec<ChunkId> {
    fn ids(&self) -> &[ChunkId] {
        self
    }
    fn bytes(&self) -> u64 {
        (self.len() * 32) as u64
    }
}

/// Where a [`LazyMap`] gets its pages.
pub trait PageSource: Send + Sync {
    type Page: MapPage;
    /// The page `id` at `level` (0 = leaf), whose ids are `ids` (already
    /// read and checked): the source adds what it attaches.
    fn make(&self, ids: Vec<ChunkId>, level: u8) -> Result<Self::Page>;
    /// The stored bytes of page `id`.
    fn fetch(&self, id: &ChunkId) -> Result<Arc<Vec<u8>>>;
    /// Pages are cached by (scope, id): pages with the same id hold the same
    /// ids, but what a source attaches may be valid for that source only
    /// (chunk locations as one index snapshot saw them).
    fn scope(&self, level: u8) -> u64;
    /// The page standing for a zero id at `level` (a stretch of holes).
    fn zero(&self, level: u8) -> Arc<Self::Page>;
}

/// (scope, page id), see [`PageSource::scope`].
pub type PageKey = (u64, ChunkId);

#[derive(Clone)]
pub struct PageWeight;

impl<P: MapPage> quick_cache::Weighter<PageKey, Arc<P>> for PageWeight {
    fn weight(&self, _: &PageKey, p: &Arc<P>) -> u64 {
        p.bytes().max(1)
    }
}

/// Map pages kept in memory, at most about `bytes` of them, shared by every
/// map read through it (a mount's open disks).
pub struct PageCache<P: MapPage> {
    cache: quick_cache::sync::Cache<PageKey, Arc<P>, PageWeight>,
}

impl<P: MapPage> PageCache<P> {
    pub fn new(bytes: u64) -> PageCache<P> {
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity((bytes / PAGE_BYTES as u64).max(1) as usize)
            .weight_capacity(bytes)
            .build()
            .expect("every option is set");
        PageCache { cache: quick_cache::sync::Cache::with_options(options, PageWeight, Default::default(), Default::default()) }
    }

    /// Bytes of pages held now (never much above the bound).
    pub fn weight(&self) -> u64 {
        self.cache.weight()
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

/// A block map read lazily, page by page, through a bounded [`PageCache`]:
/// opening one costs nothing whatever the disk's size, and a lookup costs at
/// most `depth` page loads. A zero id at any level answers for its whole
/// stretch without a load, so holes, SEEK_DATA/SEEK_HOLE and comparisons
/// of two maps skip unchanged or empty stretches a page at a time.
pub struct LazyMap<S: PageSource> {
    depth: u8,
    root: ChunkId,
    blocks: u64,
    source: S,
    cache: Arc<PageCache<S::Page>>,
    /// The last leaves used (leaf number, page), newest first: a
    /// sequential reader's next block is almost always in one of them (its
    /// own leaf, or the next one its readahead is in), and finding it there
    /// costs no hashing.
    last: Mutex<RecentLeaves<S::Page>>,
}

/// (leaf number, page), newest first.
type RecentLeaves<P> = [Option<(u64, Arc<P>)>; RECENT_LEAVES];

/// See [`LazyMap::last`].
const RECENT_LEAVES: usize = 4;

impl<S: PageSource> LazyMap<S> {
    pub fn new(depth: u8, root: ChunkId, blocks: u64, source: S, cache: Arc<PageCache<S::Page>>) -> LazyMap<S> {
        LazyMap { depth, root, blocks, source, cache, last: Mutex::new(Default::default()) }
    }

    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    pub fn source(&self) -> &S {
        &self.source
    }

    /// Blocks one page at `level` spans.
    fn span(level: u8) -> u64 {
        (FANOUT as u64).saturating_pow(level as u32 + 1)
    }

    fn page(&self, id: &ChunkId, level: u8) -> Result<Arc<S::Page>> {
        if id.is_zero() {
            return Ok(self.source.zero(level));
        }
        let key = (self.source.scope(level), *id);
        self.cache.cache.get_or_insert_with(&key, || {
            let ids = parse_page(&self.source.fetch(id)?, id)?;
            self.source.make(ids, level).map(Arc::new)
        })
    }

    /// Leaf page `leaf` (blocks `leaf * FANOUT ..`): all zero ids for holes.
    pub fn leaf(&self, leaf: u64) -> Result<Arc<S::Page>> {
        if let Some((_, p)) = self.last.lock().unwrap().iter().flatten().find(|(n, _)| *n == leaf) {
            return Ok(p.clone());
        }
        if self.depth == 0 || leaf >= self.blocks.div_ceil(FANOUT as u64) {
            return Err(Error::InvalidInput(format!("map leaf {leaf} out of range")));
        }
        let mut id = self.root;
        for level in (1..self.depth).rev() {
            let parent = self.page(&id, level)?;
            // A child of a page at `level` spans FANOUT^(level-1) leaves.
            id = parent.ids()[((leaf / (FANOUT as u64).pow(level as u32 - 1)) % FANOUT as u64) as usize];
        }
        let p = self.page(&id, 0)?;
        let mut last = self.last.lock().unwrap();
        last.rotate_right(1);
        last[0] = Some((leaf, p.clone()));
        Ok(p)
    }

    pub fn block(&self, index: u64) -> Result<ChunkId> {
        if index >= self.blocks {
            return Ok(ChunkId::ZERO);
        }
        Ok(self.leaf(index / FANOUT as u64)?.ids()[(index % FANOUT as u64) as usize])
    }

    /// The first block ≥ `from` that holds data (`data`) or is a hole;
    /// None when there is none before the end.
    pub fn next(&self, from: u64, data: bool) -> Result<Option<u64>> {
        if from >= self.blocks || self.depth == 0 {
            return Ok(None);
        }
        let found = self.next_in(self.root, self.depth - 1, 0, from, data)?;
        Ok(found.filter(|b| *b < self.blocks))
    }

    /// [`LazyMap::next`] within the page `id` at `level` covering blocks from `base`.
    fn next_in(&self, id: ChunkId, level: u8, base: u64, from: u64, data: bool) -> Result<Option<u64>> {
        if id.is_zero() {
            return Ok(if data { None } else { Some(from.max(base)) });
        }
        let page = self.page(&id, level)?;
        let child_span = if level == 0 { 1 } else { Self::span(level - 1) };
        let first = (from.saturating_sub(base) / child_span) as usize;
        for (i, child) in page.ids().iter().enumerate().skip(first) {
            let cbase = base + i as u64 * child_span;
            if cbase >= self.blocks {
                break;
            }
            if level == 0 {
                if child.is_zero() != data {
                    return Ok(Some(cbase));
                }
            } else if let Some(b) = self.next_in(*child, level - 1, cbase, from, data)? {
                return Ok(Some(b));
            }
        }
        Ok(None)
    }

    /// True when blocks `first..end` have the same ids here and in `other`.
    /// Maps of the same depth are compared page by page, so an unchanged
    /// stretch costs one comparison per page id, not one per block.
    pub fn same_blocks<T: PageSource>(&self, other: &LazyMap<T>, first: u64, end: u64) -> Result<bool> {
        let end = end.min(self.blocks.max(other.blocks));
        if first >= end {
            return Ok(true);
        }
        if self.depth != other.depth || self.depth == 0 {
            for i in first..end {
                if self.block(i)? != other.block(i)? {
                    return Ok(false);
                }
            }
            return Ok(true);
        }
        self.same_in(other, self.root, other.root, self.depth - 1, 0, first, end)
    }

    #[allow(clippy::too_many_arguments)]
    fn same_in<T: PageSource>(&self, other: &LazyMap<T>, a: ChunkId, b: ChunkId, level: u8, base: u64, first: u64, end: u64) -> Result<bool> {
        if a == b {
            return Ok(true);
        }
        let (pa, pb) = (self.page(&a, level)?, other.page(&b, level)?);
        let child_span = if level == 0 { 1 } else { Self::span(level - 1) };
        for i in 0..FANOUT {
            let cbase = base + i as u64 * child_span;
            if cbase >= end {
                break;
            }
            if cbase + child_span <= first {
                continue;
            }
            let (ca, cb) = (pa.ids()[i], pb.ids()[i]);
            let same = if level == 0 { ca == cb } else { self.same_in(other, ca, cb, level - 1, cbase, first, end)? };
            if !same {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Every block id of a map, in order, fetching each page once through
/// `fetch` (which need not be thread-safe, unlike a [`ChunkFetcher`]).
pub fn collect_blocks(depth: u8, root: ChunkId, blocks: u64, fetch: &mut PageFetch) -> Result<Vec<ChunkId>> {
    let mut out = Vec::with_capacity(blocks as usize);
    if depth > 0 {
        collect_from(root, depth - 1, blocks, fetch, &mut out)?;
    }
    out.resize(blocks as usize, ChunkId::ZERO);
    Ok(out)
}

fn collect_from(id: ChunkId, level: u8, blocks: u64, fetch: &mut PageFetch, out: &mut Vec<ChunkId>) -> Result<()> {
    let span = (FANOUT as u64).pow(level as u32 + 1);
    let want = (blocks - out.len() as u64).min(span);
    if id.is_zero() {
        out.resize(out.len() + want as usize, ChunkId::ZERO);
        return Ok(());
    }
    let ids = parse_page(&fetch(&id)?, &id)?;
    for child in ids {
        if out.len() as u64 >= blocks {
            break;
        }
        if level == 0 {
            out.push(child);
        } else {
            collect_from(child, level - 1, blocks, fetch, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct MemStore(Mutex<HashMap<ChunkId, Vec<u8>>>);
    impl ChunkFetcher for MemStore {
        fn fetch(&self, id: &ChunkId) -> Result<Arc<Vec<u8>>> {
            self.0.lock().unwrap().get(id).cloned().map(Arc::new).ok_or_else(|| Error::NotFound(format!("{id}")))
        }
    }

    fn build(store: &Arc<MemStore>, ids: &[ChunkId]) -> (u8, ChunkId) {
        let s = store.clone();
        let mut put = move |b: &[u8]| {
            let id = ChunkId::of(b);
            s.0.lock().unwrap().insert(id, b.to_vec());
            Ok(id)
        };
        let mut mb = MapBuilder::new(ids.len() as u64);
        for id in ids {
            mb.push(*id, &mut put).unwrap();
        }
        mb.finish(&mut put).unwrap()
    }

    #[test]
    fn depth() {
        assert_eq!(depth_for(0), 0);
        assert_eq!(depth_for(1), 1);
        assert_eq!(depth_for(256), 1);
        assert_eq!(depth_for(257), 2);
        assert_eq!(depth_for(65536), 2);
        assert_eq!(depth_for(65537), 3);
        // 1 TiB at 64 KiB blocks
        assert_eq!(depth_for(1 << 24), 3);
    }

    #[test]
    fn round_trip_many_sizes() {
        for n in [1u64, 2, 255, 256, 257, 1000, 65536, 65537, 70000] {
            let store = Arc::new(MemStore::default());
            let ids: Vec<ChunkId> = (0..n).map(|i| if i % 7 == 3 { ChunkId::ZERO } else { ChunkId::of(&i.to_le_bytes()) }).collect();
            let (depth, root) = build(&store, &ids);
            assert_eq!(depth, depth_for(n));
            let r = MapReader::new(depth, root, n, store.clone());
            for i in (0..n).step_by(97).chain([n - 1]) {
                assert_eq!(r.block(i).unwrap(), ids[i as usize], "n={n} i={i}");
            }
            assert!(r.block(n).is_err());
            let all = collect_blocks(depth, root, n, &mut |id| Ok(store.fetch(id)?.to_vec())).unwrap();
            assert_eq!(all, ids);
        }
    }

    #[test]
    fn unchanged_stretches_share_pages_and_zero_maps_cost_nothing() {
        let store = Arc::new(MemStore::default());
        let n = 4096u64;
        let mut ids: Vec<ChunkId> = (0..n).map(|i| ChunkId::of(&i.to_le_bytes())).collect();
        build(&store, &ids);
        let before = store.0.lock().unwrap().len();
        ids[1000] = ChunkId::of(b"changed");
        build(&store, &ids);
        // One new leaf page and one new root page.
        assert_eq!(store.0.lock().unwrap().len(), before + 2);
        let zero_store = Arc::new(MemStore::default());
        assert_eq!(build(&zero_store, &vec![ChunkId::ZERO; 5000]), (2, ChunkId::ZERO));
        assert!(zero_store.0.lock().unwrap().is_empty());
    }

    /// A page source over a MemStore that counts its loads.
    struct Counting {
        store: Arc<MemStore>,
        loads: std::sync::atomic::AtomicU64,
    }
    impl PageSource for Counting {
        type Page = Vec<ChunkId>;
        fn make(&self, ids: Vec<ChunkId>, _level: u8) -> Result<Vec<ChunkId>> {
            Ok(ids)
        }
        fn fetch(&self, id: &ChunkId) -> Result<Arc<Vec<u8>>> {
            self.loads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.store.fetch(id)
        }
        fn scope(&self, _level: u8) -> u64 {
            0
        }
        fn zero(&self, _level: u8) -> Arc<Vec<ChunkId>> {
            Arc::new(vec![ChunkId::ZERO; FANOUT])
        }
    }

    fn lazy(store: &Arc<MemStore>, ids: &[ChunkId], cache_bytes: u64) -> LazyMap<Counting> {
        let (depth, root) = build(store, ids);
        let source = Counting { store: store.clone(), loads: Default::default() };
        LazyMap::new(depth, root, ids.len() as u64, source, Arc::new(PageCache::new(cache_bytes)))
    }

    /// Block ids of a sparse disk of `n` blocks with data in `runs` (start, len).
    fn sparse(n: u64, runs: &[(u64, u64)]) -> Vec<ChunkId> {
        let mut ids = vec![ChunkId::ZERO; n as usize];
        for &(s, l) in runs {
            for i in s..s + l {
                ids[i as usize] = ChunkId::of(&i.to_le_bytes());
            }
        }
        ids
    }

    /// What SEEK_DATA (`data`) / SEEK_HOLE finds from block `from`, by brute force.
    fn next_slow(ids: &[ChunkId], from: u64, data: bool) -> Option<u64> {
        (from..ids.len() as u64).find(|&i| ids[i as usize].is_zero() != data)
    }

    #[test]
    fn lazy_map_answers_holes_and_seeks_at_every_level() {
        // Three levels (65536 < n): a hole of a whole level-1 page (65536
        // blocks), holes of whole leaves, holes inside leaves, data up to
        // the last block, and a partial last page at every level.
        let n = 3 * 65536 + 1000;
        let runs = [(0, 3), (255, 2), (700, 1), (65536 * 2 + 5, 300), (65536 * 2 + 10_000, 1), (n - 1, 1)];
        let ids = sparse(n, &runs);
        let store = Arc::new(MemStore::default());
        let m = lazy(&store, &ids, 1 << 20);
        assert_eq!(m.depth, 3);
        let probes = [0, 1, 2, 3, 254, 255, 257, 600, 700, 701, 1000, 65535, 65536, 100_000, 65536 * 2, 65536 * 2 + 5, 65536 * 2 + 304, 65536 * 2 + 305, 65536 * 2 + 9_999, 65536 * 2 + 10_001, n - 2, n - 1];
        for &from in &probes {
            for data in [true, false] {
                assert_eq!(m.next(from, data).unwrap(), next_slow(&ids, from, data), "from {from} data {data}");
            }
            assert_eq!(m.block(from).unwrap(), ids[from as usize], "block {from}");
        }
        assert_eq!(m.next(n, true).unwrap(), None);
        assert_eq!(m.block(n).unwrap(), ChunkId::ZERO);
        // Seeking over the level-1 hole (65536 blocks) loaded no page of it:
        // only pages that hold data exist to be loaded.
        let loads = m.source.loads.load(std::sync::atomic::Ordering::Relaxed);
        assert!(loads <= store.0.lock().unwrap().len() as u64, "{loads} loads");

        // A disk of nothing: no page at all, and every answer from the root id.
        let empty = lazy(&Arc::new(MemStore::default()), &vec![ChunkId::ZERO; 70_000], 1 << 20);
        assert_eq!(empty.root, ChunkId::ZERO);
        assert_eq!(empty.next(0, true).unwrap(), None);
        assert_eq!(empty.next(12_345, false).unwrap(), Some(12_345));
        assert_eq!(empty.block(69_999).unwrap(), ChunkId::ZERO);
        assert_eq!(empty.source.loads.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[test]
    fn lazy_map_cache_is_bounded_and_evicts() {
        // 64 leaves of data; a cache of 8 pages' worth.
        let n = 64 * FANOUT as u64;
        let ids: Vec<ChunkId> = (0..n).map(|i| ChunkId::of(&i.to_le_bytes())).collect();
        let store = Arc::new(MemStore::default());
        let bound = 8 * PAGE_BYTES as u64;
        let m = lazy(&store, &ids, bound);
        for round in 0..2 {
            for i in (0..n).step_by(97) {
                assert_eq!(m.block(i).unwrap(), ids[i as usize], "round {round} block {i}");
            }
            assert!(m.cache.weight() <= bound, "cache holds {} bytes, bound {bound}", m.cache.weight());
            assert!(m.cache.len() <= 9, "{} pages cached", m.cache.len());
        }
        // Every leaf was read in both rounds: evicted in between.
        let loads = m.source.loads.load(std::sync::atomic::Ordering::Relaxed);
        assert!(loads > 64 + 1, "{loads} loads: nothing was evicted");
        // A sequential walk reads each leaf once (the last leaf is kept).
        let before = loads;
        for i in 0..n {
            m.block(i).unwrap();
        }
        let walk = m.source.loads.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert!(walk <= 64 + 64, "{walk} loads for a sequential walk of 64 leaves");
    }

    #[test]
    fn lazy_maps_compare_by_page() {
        let n = 3 * 65536u64;
        let a = sparse(n, &[(0, 70_000), (150_000, 1000)]);
        let mut b = a.clone();
        b[160_000] = ChunkId::of(b"changed");
        let store = Arc::new(MemStore::default());
        let (ma, mb) = (lazy(&store, &a, 1 << 22), lazy(&store, &b, 1 << 22));
        assert!(ma.same_blocks(&mb, 0, 160_000).unwrap());
        assert!(ma.same_blocks(&mb, 160_001, n).unwrap());
        assert!(!ma.same_blocks(&mb, 159_000, 160_001).unwrap());
        assert!(!ma.same_blocks(&mb, 0, n).unwrap());
        // The unchanged first 70,000 blocks compared by their level-1 page
        // ids, then one leaf: far fewer loads than leaves.
        let loads = ma.source.loads.load(std::sync::atomic::Ordering::Relaxed);
        assert!(loads < 20, "{loads} loads");
    }
}
