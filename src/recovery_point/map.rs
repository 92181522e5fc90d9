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
}
