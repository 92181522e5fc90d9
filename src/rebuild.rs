//! Rebuilding a lost or damaged index from the packs alone.
//!
//! The index is a cache of what the packs say (crate::store): every frame
//! names its chunk, and every recovery point's manifest is itself a chunk of
//! kind `Manifest` whose id is the point id. So a rebuild scans every pack
//! (re-hashing every chunk, so damage is not carried into the new index),
//! records packs and chunks, and turns each manifest into a recovery
//! point.
//!
//! A point is never dropped for damage: a manifest whose tree is not
//! complete (a pack truncated or lost, a chunk failing its hash) still
//! becomes a point, flagged damaged, and the chunks it misses are recorded
//! as damaged (crate::catalog, schema 4), so that gc keeps what the point
//! still reaches, restore names what is missing and a later backup of the
//! same data stores those chunks again (crate::verify describes the
//! record).
//!
//! What packs cannot tell — item definitions, policies, settings, the job
//! record, which points were deleted, and what each point added — is taken
//! from the previous index, which is moved aside (never deleted) and read
//! if SQLite can still read it; so are the points whose manifest is in no
//! pack any more (their manifest text must still hash to their id). Then
//! the vault's records (crate::records) add the items, policies and
//! settings the previous index did not give, and the deletions: a point
//! with a deletion record comes back deleted, never live, and one the
//! previous index no longer has was purged by gc and stays out. What is
//! lost (the job record without a readable previous index, and anything
//! made before records existed) is said on stderr and in the report
//! (`not_recovered`).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;
use std::sync::Arc;

use crate::catalog::{Catalog, PointRow};
use crate::error::{Error, IoContext, Result};
use crate::id::{ChunkId, RecoveryPointId};
use crate::progress::Progress;
use crate::recovery_point::{collect_blocks, ChunkFetcher, Manifest, PAGE_BYTES};
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
    /// Points kept although chunks they need are not intact in any pack,
    /// as `item@time (id): N chunks missing`; they are flagged damaged.
    pub damaged_points: Vec<String>,
    /// Manifests found that could not be read as one (no point can be
    /// made of them).
    pub incomplete_points: Vec<String>,
    /// Where the previous index was moved, if there was one.
    pub old_index: Option<String>,
    /// What was carried over from the previous index, as `what: count`.
    pub from_old_index: Vec<String>,
    /// What was added from the vault's records (crate::records), as
    /// `what: count`: items, policies and settings the previous index did
    /// not give, and deletions.
    pub from_records: Vec<String>,
    /// What this rebuild could not recover, in words (also logged).
    pub not_recovered: Vec<String>,
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

    // 0. What only the previous index knows, then what the records add.
    let mut old_points: Option<HashMap<RecoveryPointId, PointRow>> = None;
    match &report.old_index {
        None => report.not_recovered.push(format!("there was no index: {NOT_IN_PACKS}")),
        Some(old) => {
            let carried = Catalog::open(Path::new(old), false).and_then(|o| {
                let copied = catalog.copy_bookkeeping_from(Path::new(old))?;
                Ok((o.points(None, true)?, copied))
            });
            match carried {
                Ok((points, copied)) => {
                    report.from_old_index = copied.into_iter().map(|(what, n)| format!("{what}: {n}")).collect();
                    report.from_old_index.push(format!("points: {}", points.len()));
                    old_points = Some(points.into_iter().map(|p| (p.id, p)).collect());
                }
                Err(e) => report.not_recovered.push(format!("the previous index {old} cannot be read ({e}): {NOT_IN_PACKS}")),
            }
        }
    }
    let added = catalog.add_from_records()?;
    let deleted = catalog.deletion_records()?;
    report.from_records = added.iter().map(|(what, n)| format!("{what}: {n}")).collect();
    report.from_records.push(format!("deletion records: {}", deleted.len()));
    if old_points.is_none() {
        report.not_recovered.push(format!(
            "items, policies, settings and deletions come from the vault's records alone ({}): any made by a kluis older \
             than the records are lost, so check `kluis items` and `kluis policy ls`, protect and set again what is missing, \
             and delete again any point that should not be back",
            report.from_records.join(", ")
        ));
    }

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

    // 2. Points: every manifest found, whole or damaged; then the points of
    // the previous index whose manifest is in no pack.
    let fetch: Arc<dyn ChunkFetcher> = Arc::new(IndexFetcher::new(Catalog::open_reader(&index)?, Arc::new(PackFiles::new(root))));
    let mut missing: HashMap<ChunkId, String> = HashMap::new();
    let mut found = HashSet::new();
    for id in manifests {
        let bytes = fetch.fetch(&id)?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if let Err(e) = Manifest::parse(&text) {
            report.incomplete_points.push(format!("manifest {id}: {e}"));
            continue;
        }
        // A manifest stored twice (two packs) is one point.
        if !found.insert(RecoveryPointId(id)) {
            continue;
        }
        let id = RecoveryPointId(id);
        let old = old_points.as_ref().and_then(|o| o.get(&id));
        let known = match (&old_points, old, deleted.get(&id)) {
            (_, Some(_), _) => Known::Indexed,
            // Purged by gc since (its deletion record stays).
            (Some(_), None, Some(_)) => continue,
            // Not in a readable previous index: a backup killed before it
            // committed the point, or a point purged by a kluis that kept
            // no records; the latter is incomplete (gc took its chunks).
            (Some(_), None, None) => Known::Unknown,
            (None, _, _) => Known::NoIndex,
        };
        add_point(&mut catalog, fetch.as_ref(), id, text, old, deleted.get(&id).copied(), known, &mut missing, &mut report)?;
    }
    let mut rest: Vec<&PointRow> = old_points.iter().flat_map(|o| o.values()).filter(|p| !found.contains(&p.id)).collect();
    rest.sort_by_key(|p| (p.item.clone(), p.time_ms));
    for p in rest {
        if Manifest::id_of(p.manifest.as_bytes()) != p.id {
            report.not_recovered.push(format!("{}@{} ({}): in no pack, and its manifest in the previous index is damaged", p.item, crate::timefmt::rfc3339_s(p.time_ms), p.id));
            continue;
        }
        add_point(&mut catalog, fetch.as_ref(), p.id, p.manifest.clone(), Some(p), deleted.get(&p.id).copied(), Known::Indexed, &mut missing, &mut report)?;
    }
    let mut missing: Vec<(ChunkId, String)> = missing.into_iter().collect();
    missing.sort();
    catalog.mark_chunks_damaged(&missing)?;
    for line in report.not_recovered.iter().chain(&report.damaged_points) {
        log::warn!("rebuild-index: {line}");
    }
    Ok(report)
}

/// What is lost with the index, records or not.
const NOT_IN_PACKS: &str = "the job record is lost, and so are each point's capture method and new and stored byte counts";

/// What the previous index says of a point found in the packs.
#[derive(PartialEq)]
enum Known {
    /// The previous index has it.
    Indexed,
    /// The previous index was read and does not have it.
    Unknown,
    /// There is no readable previous index.
    NoIndex,
}

/// Indexes the point whose manifest is `text`: flagged damaged, with its
/// missing chunks added to `missing`, unless its whole tree is indexed.
/// `old` is its row in the previous index, for what packs cannot tell, and
/// `deleted` when its deletion record says it was deleted. A damaged point
/// is kept unless the previous index was read and knows it not (see
/// [`Known::Unknown`]).
#[allow(clippy::too_many_arguments)]
fn add_point(
    catalog: &mut Catalog,
    fetch: &dyn ChunkFetcher,
    id: RecoveryPointId,
    text: String,
    old: Option<&PointRow>,
    deleted: Option<i64>,
    known: Known,
    missing: &mut HashMap<ChunkId, String>,
    report: &mut RebuildReport,
) -> Result<()> {
    let m = Manifest::parse(&text)?;
    let time_ms = m.time.parse::<jiff::Timestamp>().map(|t| t.as_millisecond()).unwrap_or(0);
    let mut lost = missing_chunks(&m, catalog, fetch)?;
    if !catalog.has_chunk(&id.0)? {
        lost.push(id.0);
    }
    let name = || format!("{}@{} ({id})", m.item, crate::timefmt::rfc3339_s(time_ms));
    if !lost.is_empty() && known == Known::Unknown {
        report.incomplete_points.push(format!("{}: in no index and {} chunks missing (collected by gc?): left out", name(), lost.len()));
        return Ok(());
    }
    if !lost.is_empty() {
        report.damaged_points.push(format!("{}@{} ({id}): {} chunks missing, kept and marked damaged", m.item, crate::timefmt::rfc3339_s(time_ms), lost.len()));
        for c in &lost {
            missing.entry(*c).or_insert_with(|| "not intact in any pack (rebuild-index)".into());
        }
    }
    catalog.insert_point(&PointRow {
        id,
        item: m.item.clone(),
        time_ms,
        consistency: m.consistency.clone(),
        manifest: text,
        logical_size: m.disks.iter().map(|d| d.size).sum(),
        // What a point added is not recorded in the packs.
        new_bytes: old.map_or(0, |o| o.new_bytes),
        stored_bytes: old.map_or(0, |o| o.stored_bytes),
        deleted_ms: old.map_or(deleted, |o| o.deleted_ms),
        capture: old.and_then(|o| o.capture.clone()),
        damaged: !lost.is_empty(),
    })?;
    report.points += 1;
    Ok(())
}

/// The chunks the manifest names, through its maps, that are not indexed
/// (a map page that cannot be read counts, and hides what lies below it).
fn missing_chunks(m: &Manifest, index: &Catalog, fetch: &dyn ChunkFetcher) -> Result<Vec<ChunkId>> {
    let mut missing = Vec::new();
    for id in m.config_chunk_ids()? {
        if !index.has_chunk(&id)? {
            missing.push(id);
        }
    }
    for d in &m.disks {
        let mut pages = Vec::new();
        let blocks = collect_blocks(d.depth, d.root_id()?, d.blocks(), &mut |id| match fetch.fetch(id) {
            Ok(b) => Ok(b.to_vec()),
            Err(_) => {
                pages.push(*id);
                Ok(vec![0; PAGE_BYTES])
            }
        })?;
        missing.extend(pages);
        for id in blocks.iter().filter(|i| !i.is_zero()) {
            if !index.has_chunk(id)? {
                missing.push(*id);
            }
        }
    }
    missing.sort();
    missing.dedup();
    Ok(missing)
}
