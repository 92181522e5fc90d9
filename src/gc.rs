//! Reclaiming space: chunks that no recovery point references are dropped
//! from the index, packs with no live chunk are deleted, and packs that are
//! mostly garbage have their live frames copied into a new pack.
//!
//! Damage (crate::verify, crate::rebuild) never costs a point: gc deletes
//! no point but soft-deleted ones past their window, however damaged, and
//! keeps every chunk a point still reaches. A pack holding a live chunk
//! recorded as damaged is neither rewritten nor deleted (a damaged frame
//! cannot be copied forward, and the damage may have been a passing read
//! error that a later verify clears); once a backup stores the chunk again
//! its row moves to the new pack and the old one is collected as usual. A
//! map page recorded as damaged is walked as if empty (what lies below it
//! cannot be named), and damage records no point needs any more are
//! dropped. Any other unreadable page stops gc before it deletes anything:
//! gc frees only what it can prove dead.
//!
//! Runs under the exclusive vault lock (see crate::vault), so no backup is
//! adding chunks meanwhile. Order of operations, each step crash-safe:
//!
//! 0. purge the rows of soft-deleted points whose window (the vault setting
//!    `soft-delete-days`, see crate::settings) has passed; points deleted
//!    more recently stay live, so `kluis undelete` can bring them back;
//! 1. remove leftover temporary packs and pack files the index does not know;
//! 2. mark: walk every remaining point's manifest, configs and map pages;
//! 3. one transaction deletes dead chunk rows and dead pack rows; then the
//!    dead pack files are unlinked (a crash in between leaves orphan files,
//!    which step 1 of the next run removes), except those a reader's lease
//!    may still need (store/lease.rs), which a later run removes;
//! 4. rewrite: the live chunks of a mostly-dead pack are copied, hash-checked,
//!    to a new pack (a frame whose chunks are all live verbatim, the live
//!    chunks of a partly dead frame compressed again as a smaller frame),
//!    which is made durable; one transaction moves the rows and drops the old
//!    pack's row; then the old file is unlinked as in 3.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::sync::Arc;
use std::time::Instant;

use rusqlite::params;

use crate::error::{IoContext, Result};
use crate::id::ChunkId;
use crate::progress::Progress;
use crate::recovery_point::{ChunkFetcher, Manifest, MapReader, PAGE_BYTES};
use crate::catalog::PackChunk;
use crate::error::Error;
use crate::store::{check_frame, pack_path, remove_packs_except, remove_temp_packs, sweep_packs, Frame, FrameHeader, PackWriter, PACK_HEADER_SIZE};
use crate::vault::{check_primary, lock_vault, read_header, Vault, VaultLock, RESERVE_FILE};

/// A pack whose live bytes are below this fraction of its size is rewritten.
const REWRITE_BELOW: f64 = 0.5;

#[derive(Debug, Default, serde::Serialize)]
pub struct GcReport {
    /// Soft-deleted points past their window whose rows were removed.
    pub points_purged: u64,
    pub live_chunks: u64,
    pub chunks_removed: u64,
    pub packs_deleted: u64,
    pub packs_rewritten: u64,
    pub orphan_files_removed: u64,
    /// Packs dropped from the index but left in place for readers that
    /// may still need them (store/lease.rs); a later gc removes them.
    pub packs_kept_for_readers: u64,
    pub bytes_freed: u64,
    pub seconds: f64,
}

/// Every chunk id some recovery point (deleted ones included while they are
/// kept) needs: manifests, config chunks, map pages and data blocks.
pub fn live_chunks(vault: &Vault) -> Result<HashSet<ChunkId>> {
    let damaged: HashSet<ChunkId> = vault.catalog().damaged_chunks()?.into_keys().collect();
    let fetch: Arc<dyn ChunkFetcher> = Arc::new(PastDamage { inner: vault.fetcher()?, damaged });
    let mut live = HashSet::new();
    for p in vault.catalog().points(None, true)? {
        live.insert(p.id.0);
        let m = Manifest::parse(&p.manifest)?;
        live.extend(m.config_chunk_ids()?);
        for d in &m.disks {
            let map = MapReader::new(d.depth, d.root_id()?, d.blocks(), fetch.clone());
            map.walk_pages(&mut |id, ids, level| {
                live.insert(id);
                if level == 0 {
                    live.extend(ids.iter().filter(|c| !c.is_zero()));
                }
                Ok(())
            })?;
        }
    }
    Ok(live)
}

/// Reads map pages, giving a page recorded as damaged as an empty one.
struct PastDamage {
    inner: Arc<dyn ChunkFetcher>,
    damaged: HashSet<ChunkId>,
}

impl ChunkFetcher for PastDamage {
    fn fetch(&self, id: &ChunkId) -> Result<Arc<Vec<u8>>> {
        match self.damaged.contains(id) {
            true => Ok(Arc::new(vec![0; PAGE_BYTES])),
            false => self.inner.fetch(id),
        }
    }
}

fn wait_for_backups() {
    log::warn!("waiting for running backups to finish before gc");
}

/// Opens the vault at `root` for [`gc_locked`]; [`close`] ends the run. On
/// a filesystem full to the last byte SQLite cannot even open the index (it
/// makes its `-wal` and `-shm` first), so the order is: the header checked
/// (no gc on a replica), the exclusive lock taken, the reserve released, and
/// only then the index opened. If the index cannot be opened at all, the
/// reserve stays released until a gc runs.
pub fn open(root: &std::path::Path) -> Result<(Vault, VaultLock)> {
    check_primary(root, &read_header(root)?)?;
    let lock = lock_vault(root, true, wait_for_backups)?;
    let _ = fs::remove_file(root.join(RESERVE_FILE));
    let vault = Vault::open(root)?;
    vault.check_primary()?;
    Ok((vault, lock))
}

/// Ends a run begun by [`open`]: the index is closed first (SQLite folds in
/// and removes its `-wal` and `-shm`), so that the reserve can be taken back
/// even when gc freed nothing on a full filesystem; then the lock goes.
pub fn close(vault: Vault, lock: VaultLock) {
    if let Err(e) = vault.close_index() {
        log::warn!("closing the index of {}: {e}", vault.root().display());
    }
    vault.ensure_reserve();
    drop(lock);
}

/// gc of a vault that is open already (the scheduler's).
pub fn gc(vault: &Vault, progress: &dyn Progress) -> Result<GcReport> {
    let lock = vault.lock(true, wait_for_backups)?;
    // Room to work on a full filesystem; taken back when done, even on error.
    vault.release_reserve();
    let result = gc_locked(vault, &lock, progress);
    vault.ensure_reserve();
    result
}

/// gc under the exclusive `lock` of [`open`] or [`gc`], the reserve released.
pub fn gc_locked(vault: &Vault, _lock: &VaultLock, progress: &dyn Progress) -> Result<GcReport> {
    collect(vault, progress, Instant::now())
}

fn collect(vault: &Vault, progress: &dyn Progress, started: Instant) -> Result<GcReport> {
    let mut report = GcReport::default();

    // 0. Soft-deleted points past the window.
    let cutoff = crate::catalog::now_ms() - crate::settings::soft_delete_ms(vault)?;
    report.points_purged = vault.catalog().purge_deleted_before(cutoff)? as u64;

    // 1. Leftovers of interrupted runs.
    let packs = vault.catalog().packs()?;
    let known: HashSet<&str> = packs.iter().map(|p| p.name.as_str()).collect();
    let (files, bytes) = remove_temp_packs(vault.root())?;
    let swept = remove_packs_except(vault.root(), &known)?;
    report.orphan_files_removed += files + swept.removed;
    report.bytes_freed += bytes + swept.bytes;
    report.packs_kept_for_readers += swept.kept;

    // 2. Mark.
    let live = live_chunks(vault)?;
    report.live_chunks = live.len() as u64;
    let damaged: HashSet<ChunkId> = vault.catalog().damaged_chunks()?.into_keys().collect();
    vault.catalog().forget_damaged_except(&live)?;

    // 3. Sweep rows; plan rewrites.
    let mut dead_packs = Vec::new();
    // (pack id, pack name, its live chunks)
    let mut rewrite: Vec<(i64, String, Vec<PackChunk>)> = Vec::new();
    {
        let mut cat = vault.catalog();
        let tx = cat.conn_mut().transaction()?;
        for pack in &packs {
            let rows = crate::catalog::Catalog::chunks_in_pack_tx(&tx, pack.id)?;
            let live_bytes = live_share(&rows, &live);
            let (alive, dead): (Vec<_>, Vec<_>) = rows.into_iter().partition(|c| live.contains(&c.id));
            let holds_damage = alive.iter().any(|c| damaged.contains(&c.id));
            {
                let mut del = tx.prepare_cached("DELETE FROM chunks WHERE id = ?1")?;
                for c in &dead {
                    del.execute([&c.id.0[..]])?;
                }
            }
            report.chunks_removed += dead.len() as u64;
            if alive.is_empty() {
                tx.execute("DELETE FROM packs WHERE id = ?1", [pack.id])?;
                dead_packs.push(pack.name.clone());
            } else if !holds_damage && (live_bytes as f64) < REWRITE_BELOW * (pack.size - PACK_HEADER_SIZE) as f64 {
                rewrite.push((pack.id, pack.name.clone(), alive));
            }
        }
        tx.commit()?;
    }
    report.packs_deleted += dead_packs.len() as u64;
    let swept = sweep_packs(vault.root(), dead_packs.iter().map(|n| n.as_str()))?;
    (report.bytes_freed, report.packs_kept_for_readers) = (report.bytes_freed + swept.bytes, report.packs_kept_for_readers + swept.kept);

    // 4. Rewrite mostly-dead packs.
    let total: u64 = rewrite.iter().map(|(_, _, rows)| rows.len() as u64).sum();
    progress.start("gc rewrite", total);
    for (pack_id, name, rows) in rewrite {
        let old_size = fs::metadata(pack_path(vault.root(), &name)).map(|m| m.len()).unwrap_or(0);
        let file = vault.packs().file(&name)?;
        let mut w = PackWriter::create(vault.root())?;
        // Chunk id -> (frame offset, frame length, inner offset) in the new pack.
        let mut moved: HashMap<ChunkId, (u64, u64, usize)> = HashMap::new();
        for frame_rows in rows.chunk_by(|a, b| a.offset == b.offset) {
            let first = &frame_rows[0];
            let frame = rewrite_frame(&file, &name, first.offset, first.frame_len, frame_rows, vault.zstd_level())?;
            let off = w.append(&frame)?;
            for (e, r) in frame.header.ranges() {
                moved.insert(e.id, (off, frame.frame_len(), r.start));
            }
            progress.advance(frame_rows.len() as u64);
        }
        let finished = w.finish()?;
        {
            let mut cat = vault.catalog();
            let tx = cat.conn_mut().transaction()?;
            tx.execute("INSERT INTO packs(name, size, created_ms) VALUES (?1, ?2, ?3)", params![finished.name, finished.size, crate::catalog::now_ms()])?;
            let new_id = tx.last_insert_rowid();
            {
                let mut up = tx.prepare_cached("UPDATE chunks SET pack = ?2, offset = ?3, frame_len = ?4, inner = ?5 WHERE id = ?1")?;
                for (id, (off, len, inner)) in &moved {
                    up.execute(params![&id.0[..], new_id, off, len, inner])?;
                }
            }
            tx.execute("DELETE FROM packs WHERE id = ?1", [pack_id])?;
            tx.commit()?;
        }
        report.packs_kept_for_readers += sweep_packs(vault.root(), [name.as_str()])?.kept;
        report.packs_rewritten += 1;
        report.bytes_freed += old_size.saturating_sub(finished.size);
    }
    progress.finish();
    vault.packs().clear();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Estimated live bytes of a pack: each frame's length shared out among its
/// indexed chunks by raw length.
fn live_share(rows: &[PackChunk], live: &HashSet<ChunkId>) -> u64 {
    rows.chunk_by(|a, b| a.offset == b.offset)
        .map(|f| {
            let raw: u64 = f.iter().map(|c| c.raw_len as u64).sum();
            let alive: u64 = f.iter().filter(|c| live.contains(&c.id)).map(|c| c.raw_len as u64).sum();
            (f[0].frame_len as u64 * alive).checked_div(raw).unwrap_or(0)
        })
        .sum()
}

/// The frame to write in place of the one at `offset` whose live chunks are
/// `keep`: the same bytes when every chunk of it is kept, else the kept
/// chunks compressed again. Damage is never copied forward silently: a kept
/// chunk that fails its hash stops the rewrite of this pack (verify names it).
fn rewrite_frame(file: &std::fs::File, name: &str, offset: u64, frame_len: u32, keep: &[PackChunk], level: i32) -> Result<Frame> {
    use std::os::unix::fs::FileExt;
    let what = format_args!("pack {name} offset {offset}");
    let mut buf = vec![0u8; frame_len as usize];
    file.read_exact_at(&mut buf, offset).ctx(|| format!("read pack {name}"))?;
    let header = FrameHeader::parse(&buf, &what)?;
    let checked = check_frame(&header, &buf[header.header_len()..], &what);
    let mut kept = Vec::new();
    for ((e, r), err) in header.ranges().zip(&checked.errors) {
        if keep.iter().any(|c| c.id == e.id && c.inner as usize == r.start) {
            if let Some(err) = err {
                return Err(Error::Corrupt(err.clone()));
            }
            kept.push((e.id, r));
        }
    }
    if kept.len() == header.chunks.len() {
        let payload = buf.split_off(header.header_len());
        return Ok(Frame { header, payload });
    }
    let raw = checked.raw.expect("sound chunks come from a decoded frame");
    let chunks: Vec<(ChunkId, &[u8])> = kept.into_iter().map(|(id, r)| (id, &raw[r])).collect();
    Frame::encode(header.kind, &chunks, level)
}
