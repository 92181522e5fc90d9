//! Rebuilding a lost or damaged index from the packs alone.
//!
//! The index is a cache of what the packs say (crate::store): every frame
//! names its chunk, and every recovery point's manifest is itself a chunk of
//! kind `Manifest` whose id is the point id. So a rebuild scans every pack
//! (re-hashing every chunk, so damage is not carried into the new index),
//! records packs and chunks, and turns each manifest whose whole tree is
//! present into a recovery point.
//!
//! What packs cannot tell, and the rebuild therefore chooses:
//! - a point deleted but not yet collected by gc, or a backup killed between
//!   storing its manifest and committing its point, comes back as a live
//!   point: nothing is lost, and the operator can delete it again;
//! - a manifest whose tree is incomplete (gc collected part of it) is skipped
//!   and reported;
//! - item definitions, policies, settings and the job record live only in
//!   the index: they are not recovered (the old index is kept aside).

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use crate::catalog::{Catalog, PointRow};
use crate::error::{Error, IoContext, Result};
use crate::id::{ChunkId, RecoveryPointId};
use crate::progress::Progress;
use crate::recovery_point::{collect_blocks, ChunkFetcher, Manifest};
use crate::store::{pack_path, packs_on_disk, scan_pack, ChunkKind, FinishedPack, FrameLocation, PackFiles};
use crate::vault::{lock_vault, IndexFetcher, VaultHeader, HEADER_FILE};

#[derive(Debug, Default, serde::Serialize)]
pub struct RebuildReport {
    pub packs: u64,
    pub chunks: u64,
    pub damaged_chunks: u64,
    /// Packs whose scan stopped early (a frame header is unreadable); the
    /// frames before the damage are kept.
    pub damaged_packs: Vec<String>,
    pub points: u64,
    /// Manifests found whose tree is not complete, as `item@time (id)`.
    pub incomplete_points: Vec<String>,
    /// Where the previous index was moved, if there was one.
    pub old_index: Option<String>,
}

pub fn rebuild_index(root: &Path, progress: &dyn Progress) -> Result<RebuildReport> {
    let hp = root.join(HEADER_FILE);
    let text = crate::vault::read_header_text(&hp).map_err(|e| Error::io_path("not a kluis vault: cannot read", &hp, e))?;
    VaultHeader::parse(&text, root)?;
    let _lock = lock_vault(root, true, || log::warn!("waiting for running backups to finish before the rebuild"))?;
    let mut report = RebuildReport::default();

    let index = root.join("index.sqlite");
    if index.exists() {
        let aside = format!("index.sqlite.old-{}", crate::catalog::now_ms());
        for suffix in ["", "-wal", "-shm"] {
            let from = root.join(format!("index.sqlite{suffix}"));
            if from.exists() {
                let to = root.join(format!("{aside}{suffix}"));
                fs::rename(&from, &to).ctx(|| format!("move {} aside", from.display()))?;
            }
        }
        report.old_index = Some(root.join(aside).display().to_string());
    }
    let mut catalog = Catalog::open(&index, true)?;

    // 1. Packs and chunks, from the packs' own bytes.
    let names = packs_on_disk(root)?;
    let total: u64 = names.iter().map(|n| fs::metadata(pack_path(root, n)).map(|m| m.len()).unwrap_or(0)).sum();
    progress.start("rebuild index", total);
    let mut manifests = Vec::new();
    for name in names {
        let path = pack_path(root, &name);
        let size = fs::metadata(&path).ctx(|| format!("stat {}", path.display()))?.len();
        let mut frames = Vec::new();
        let mut damaged = HashSet::new();
        let scanned = scan_pack(&path, true, |f| {
            for (e, err) in f.header.chunks.iter().zip(&f.errors) {
                match err {
                    Some(err) => {
                        report.damaged_chunks += 1;
                        damaged.insert(e.id);
                        log::error!("pack {name}: chunk {} in the frame at offset {}: {err}", e.id, f.offset);
                    }
                    None => {
                        report.chunks += 1;
                        if f.header.kind == ChunkKind::Manifest {
                            manifests.push(e.id);
                        }
                    }
                }
            }
            frames.push(FrameLocation { header: f.header, offset: f.offset });
        });
        if let Err(e) = scanned {
            log::error!("{e}");
            report.damaged_packs.push(name.clone());
        }
        progress.advance(size);
        report.packs += 1;
        catalog.commit_pack_except(&FinishedPack { name, size, frames }, &damaged)?;
    }
    progress.finish();

    // 2. Points: every manifest whose whole tree is in the new index.
    let fetch: Arc<dyn ChunkFetcher> = Arc::new(IndexFetcher::new(Catalog::open_reader(&index)?, Arc::new(PackFiles::new(root))));
    for id in manifests {
        let bytes = fetch.fetch(&id)?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let m = match Manifest::parse(&text) {
            Ok(m) => m,
            Err(e) => {
                report.incomplete_points.push(format!("manifest {id}: {e}"));
                continue;
            }
        };
        let time_ms = m.time.parse::<jiff::Timestamp>().map(|t| t.as_millisecond()).unwrap_or(0);
        let name = format!("{}@{} ({id})", m.item, crate::timefmt::rfc3339_s(time_ms));
        if let Err(e) = complete(&m, &catalog, fetch.as_ref()) {
            report.incomplete_points.push(format!("{name}: {e}"));
            continue;
        }
        catalog.insert_point(&PointRow {
            id: RecoveryPointId(id),
            item: m.item.clone(),
            time_ms,
            consistency: m.consistency.clone(),
            manifest: text,
            logical_size: m.disks.iter().map(|d| d.size).sum(),
            // What a point added is not recorded in the packs.
            new_bytes: 0,
            stored_bytes: 0,
            deleted_ms: None,
            capture: None,
        })?;
        report.points += 1;
    }
    Ok(report)
}

/// Checks that every chunk the manifest names, through its maps, is indexed.
fn complete(m: &Manifest, index: &Catalog, fetch: &dyn ChunkFetcher) -> Result<()> {
    let missing = |id: &ChunkId| Error::Corrupt(format!("chunk {id} is missing"));
    for id in m.config_chunk_ids()? {
        if !index.has_chunk(&id)? {
            return Err(missing(&id));
        }
    }
    for d in &m.disks {
        let blocks = collect_blocks(d.depth, d.root_id()?, d.blocks(), &mut |id| Ok(fetch.fetch(id)?.to_vec()))?;
        for id in blocks.iter().filter(|i| !i.is_zero()) {
            if !index.has_chunk(id)? {
                return Err(Error::Corrupt(format!("disk {}: chunk {id} is missing", d.name)));
            }
        }
    }
    Ok(())
}

