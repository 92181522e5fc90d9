//! Reclaiming space: chunks that no recovery point references are dropped
//! from the index, packs with no live chunk are deleted, and packs that are
//! mostly garbage have their live frames copied into a new pack.
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
//!    which step 1 of the next run removes);
//! 4. rewrite: live frames are copied (verbatim, hash-checked) to a new pack,
//!    which is made durable; one transaction moves the rows and drops the old
//!    pack's row; then the old file is unlinked. Readers that opened the old
//!    pack keep reading it through their open descriptor.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use rusqlite::params;

use crate::error::{IoContext, Result};
use crate::id::ChunkId;
use crate::progress::Progress;
use crate::recovery_point::{Manifest, MapReader};
use crate::store::{decode_payload, pack_path, packs_on_disk, EncodedChunk, FrameHeader, PackWriter, FRAME_HEADER_SIZE, PACK_HEADER_SIZE};
use crate::vault::Vault;

/// A chunk of a pack: (id, offset, stored length).
type ChunkRef = (ChunkId, u64, u32);

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
    pub bytes_freed: u64,
    pub seconds: f64,
}

/// Every chunk id some recovery point (deleted ones included while they are
/// kept) needs: manifests, config chunks, map pages and data blocks.
pub fn live_chunks(vault: &Vault) -> Result<HashSet<ChunkId>> {
    let fetch = vault.fetcher()?;
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

pub fn gc(vault: &Vault, progress: &dyn Progress) -> Result<GcReport> {
    let started = Instant::now();
    let _lock = vault.lock(true, || log::warn!("waiting for running backups to finish before gc"))?;
    // Room to work on a full filesystem; taken back when done, even on error.
    vault.release_reserve();
    let result = collect(vault, progress, started);
    vault.ensure_reserve();
    result
}

fn collect(vault: &Vault, progress: &dyn Progress, started: Instant) -> Result<GcReport> {
    let mut report = GcReport::default();

    // 0. Soft-deleted points past the window.
    let cutoff = crate::catalog::now_ms() - crate::settings::soft_delete_ms(vault)?;
    report.points_purged = vault.catalog().purge_deleted_before(cutoff)? as u64;

    // 1. Leftovers of interrupted runs.
    let tmp = vault.root().join("packs/tmp");
    if let Ok(entries) = fs::read_dir(&tmp) {
        for e in entries.flatten() {
            report.bytes_freed += e.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(e.path()).ctx(|| format!("remove {}", e.path().display()))?;
            report.orphan_files_removed += 1;
        }
    }
    let packs = vault.catalog().packs()?;
    let known: HashSet<&str> = packs.iter().map(|p| p.name.as_str()).collect();
    for name in packs_on_disk(vault.root())? {
        if !known.contains(name.as_str()) {
            let path = pack_path(vault.root(), &name);
            report.bytes_freed += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&path).ctx(|| format!("remove {}", path.display()))?;
            report.orphan_files_removed += 1;
        }
    }

    // 2. Mark.
    let live = live_chunks(vault)?;
    report.live_chunks = live.len() as u64;

    // 3. Sweep rows; plan rewrites.
    let mut dead_packs = Vec::new();
    // (pack id, pack name, its live chunks as (id, offset, stored length))
    let mut rewrite: Vec<(i64, String, Vec<ChunkRef>)> = Vec::new();
    {
        let mut cat = vault.catalog();
        let tx = cat.conn_mut().transaction()?;
        for pack in &packs {
            let rows: Vec<ChunkRef> = {
                let mut st = tx.prepare_cached("SELECT id, offset, stored_len FROM chunks WHERE pack = ?1")?;
                let it = st.query_map([pack.id], |r| {
                    let b: Vec<u8> = r.get(0)?;
                    Ok((ChunkId::from_slice(&b).unwrap_or_default(), r.get(1)?, r.get(2)?))
                })?;
                it.collect::<rusqlite::Result<_>>()?
            };
            let (alive, dead): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(id, _, _)| live.contains(id));
            {
                let mut del = tx.prepare_cached("DELETE FROM chunks WHERE id = ?1")?;
                for (id, _, _) in &dead {
                    del.execute([&id.0[..]])?;
                }
            }
            report.chunks_removed += dead.len() as u64;
            let live_bytes: u64 = alive.iter().map(|(_, _, l)| FRAME_HEADER_SIZE as u64 + *l as u64).sum();
            if alive.is_empty() {
                tx.execute("DELETE FROM packs WHERE id = ?1", [pack.id])?;
                dead_packs.push(pack.name.clone());
                report.bytes_freed += pack.size;
            } else if (live_bytes as f64) < REWRITE_BELOW * (pack.size - PACK_HEADER_SIZE) as f64 {
                rewrite.push((pack.id, pack.name.clone(), alive));
            }
        }
        tx.commit()?;
    }
    for name in &dead_packs {
        let path = pack_path(vault.root(), name);
        fs::remove_file(&path).ctx(|| format!("remove {}", path.display()))?;
        report.packs_deleted += 1;
    }

    // 4. Rewrite mostly-dead packs.
    let total: u64 = rewrite.iter().map(|(_, _, rows)| rows.len() as u64).sum();
    progress.start("gc rewrite", total);
    for (pack_id, name, rows) in rewrite {
        let old_size = fs::metadata(pack_path(vault.root(), &name)).map(|m| m.len()).unwrap_or(0);
        let file = vault.packs().file(&name)?;
        let mut w = PackWriter::create(vault.root())?;
        let mut moved: HashMap<ChunkId, u64> = HashMap::new();
        for (id, off, stored_len) in &rows {
            let mut buf = vec![0u8; FRAME_HEADER_SIZE + *stored_len as usize];
            file.read_exact_at(&mut buf, *off).ctx(|| format!("read pack {name}"))?;
            let header = FrameHeader::parse(&buf[..FRAME_HEADER_SIZE], &format_args!("pack {name} offset {off}"))?;
            // Never copy damage forward silently: a chunk that fails its hash
            // stops the rewrite of this pack (verify reports it).
            decode_payload(&header, &buf[FRAME_HEADER_SIZE..], &format_args!("pack {name}"))?;
            let new_off = w.append(&EncodedChunk { header, payload: buf[FRAME_HEADER_SIZE..].to_vec() })?;
            moved.insert(*id, new_off);
            progress.advance(1);
        }
        let finished = w.finish()?;
        {
            let mut cat = vault.catalog();
            let tx = cat.conn_mut().transaction()?;
            tx.execute("INSERT INTO packs(name, size, created_ms) VALUES (?1, ?2, ?3)", params![finished.name, finished.size, crate::catalog::now_ms()])?;
            let new_id = tx.last_insert_rowid();
            {
                let mut up = tx.prepare_cached("UPDATE chunks SET pack = ?2, offset = ?3 WHERE id = ?1")?;
                for (id, off) in &moved {
                    up.execute(params![&id.0[..], new_id, off])?;
                }
            }
            tx.execute("DELETE FROM packs WHERE id = ?1", [pack_id])?;
            tx.commit()?;
        }
        let path = pack_path(vault.root(), &name);
        fs::remove_file(&path).ctx(|| format!("remove {}", path.display()))?;
        report.packs_rewritten += 1;
        report.bytes_freed += old_size.saturating_sub(finished.size);
    }
    progress.finish();
    vault.packs().clear();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
