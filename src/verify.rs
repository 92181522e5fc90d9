//! Checking a vault: the index against the packs, every recovery point's
//! Merkle tree against the index, and with `read_data` every chunk's bytes
//! against its hash. Each damaged chunk is reported with the points, disks
//! and byte ranges it affects, so the operator knows what is lost.
//!
//! What it finds is recorded in the index (crate::catalog, schema 4): the
//! damaged chunks, so that no later backup deduplicates against them (the
//! next backup of the same data stores them again, and every point that
//! needs them is whole again), and a `damaged` flag on each point that
//! needs one, shown by `kluis points` and cleared by a verify that finds
//! the point whole. gc keeps damaged points and everything they still
//! reach (crate::gc); restore fails on them unless asked for a partial
//! restore (crate::restore). A full `verify --read-data` replaces the
//! record; any other verify adds to it.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::catalog::PointRow;
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::progress::Progress;
use crate::recovery_point::{Manifest, FANOUT, PAGE_BYTES};
use crate::catalog::PackChunk;
use crate::store::{check_frame, pack_path, read_header};
use crate::timefmt::rfc3339_s;
use crate::vault::Vault;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Affected {
    pub item: String,
    pub point: String,
    pub point_id: String,
    /// `disk NAME`, `config NAME` or `manifest`.
    pub part: String,
    /// Byte ranges [start, end) of the disk or file.
    pub ranges: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Damage {
    pub chunk: String,
    pub location: String,
    pub error: String,
    pub affects: Vec<Affected>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub points: usize,
    pub packs: usize,
    pub chunks_checked: u64,
    pub bytes_read: u64,
    pub damaged: Vec<Damage>,
    /// Chunks in the index that no point references (gc reclaims them).
    pub unreferenced_chunks: u64,
    /// Pack files the index does not know (left by an interrupted run; gc removes them).
    pub orphan_packs: usize,
    /// Map pages that could not be read: the chunks below them are unknown,
    /// so a damaged chunk with no `affects` may still be used by a point.
    pub unreadable_map_pages: u64,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty()
    }
}

/// A reference from a point to a chunk: which part, and which byte range.
#[derive(Clone)]
struct Use {
    point: usize,
    part: String,
    range: (u64, u64),
}

pub fn verify(vault: &Vault, only: Option<&PointRow>, read_data: bool, progress: &dyn Progress) -> Result<VerifyReport> {
    // Shared lock: gc waits, so packs don't move while they are checked.
    let _lock = vault.lock(false, || log::warn!("waiting for a running gc to finish"))?;
    let mut report = VerifyReport::default();
    let points: Vec<PointRow> = match only {
        Some(p) => vec![p.clone()],
        None => vault.catalog().points(None, true)?,
    };
    report.points = points.len();
    let mut damaged: HashMap<ChunkId, (String, String)> = HashMap::new();
    // Chunks recorded as damaged earlier count as missing (see
    // Catalog::has_chunk); say why.
    let recorded = vault.catalog().damaged_chunks()?;
    let mut sound: HashSet<ChunkId> = HashSet::new();
    let missing = |id: &ChunkId| -> (String, String) {
        match recorded.get(id) {
            Some(why) => ("index".into(), format!("recorded as damaged: {why}")),
            None => ("index".into(), "chunk missing from the vault".into()),
        }
    };

    // 1. Every index row against the frame it points to.
    let packs = vault.catalog().packs()?;
    report.packs = packs.len();
    let known: HashSet<String> = packs.iter().map(|p| p.name.clone()).collect();
    report.orphan_packs = crate::store::packs_on_disk(vault.root())?.into_iter().filter(|n| !known.contains(n)).count();
    let total: u64 = packs.iter().map(|p| p.size).sum();
    progress.start(if read_data { "verify data" } else { "verify index" }, total);
    for pack in &packs {
        let rows = vault.catalog().chunks_in_pack(pack.id)?;
        let path = pack_path(vault.root(), &pack.name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                for c in rows {
                    damaged.insert(c.id, (format!("pack {} offset {}", pack.name, c.offset), format!("pack file missing: {e}")));
                }
                continue;
            }
        };
        let actual = file.metadata().map(|m| m.len()).unwrap_or(0);
        for frame_rows in rows.chunk_by(|a, b| a.offset == b.offset) {
            let (off, frame_len) = (frame_rows[0].offset, frame_rows[0].frame_len);
            report.chunks_checked += frame_rows.len() as u64;
            let loc = format!("pack {} offset {off}", pack.name);
            let outcome = check_frame_at(&file, actual, off, frame_len, frame_rows, read_data, &loc);
            report.bytes_read += outcome.bytes_read;
            progress.advance(frame_len as u64);
            for (c, err) in frame_rows.iter().zip(outcome.errors) {
                match err {
                    Some(msg) => {
                        let msg = msg.rsplit(": ").next().unwrap_or(&msg).to_owned();
                        damaged.insert(c.id, (loc.clone(), msg));
                    }
                    // Re-hashed and sound: the damage recorded was a
                    // passing read error (or fixed by hand).
                    None if read_data && recorded.contains_key(&c.id) => {
                        sound.insert(c.id);
                    }
                    None => {}
                }
            }
        }
    }
    progress.finish();

    // 2. Every point's tree against the index; record where each chunk is used.
    let fetch = vault.fetcher()?;
    let index = vault.index_reader()?;
    let _snapshot = index.conn().unchecked_transaction()?;
    let mut uses: HashMap<ChunkId, Vec<Use>> = HashMap::new();
    let mut referenced: HashSet<ChunkId> = HashSet::new();
    for (pi, p) in points.iter().enumerate() {
        let bytes = p.manifest.as_bytes();
        if Manifest::id_of(bytes) != p.id {
            damaged.insert(p.id.0, ("index".into(), "manifest does not hash to the point id".into()));
        }
        referenced.insert(p.id.0);
        if !index.has_chunk(&p.id.0)? && !sound.contains(&p.id.0) {
            damaged.entry(p.id.0).or_insert_with(|| missing(&p.id.0));
        }
        uses.entry(p.id.0).or_default().push(Use { point: pi, part: "manifest".into(), range: (0, bytes.len() as u64) });
        let m = Manifest::parse(&p.manifest)?;
        for c in &m.configs {
            let bs = vault.block_size() as u64;
            for (i, h) in c.chunks.iter().enumerate() {
                let id = ChunkId::from_hex(h).ok_or_else(|| Error::Corrupt(format!("config {}: bad chunk id", c.name)))?;
                referenced.insert(id);
                if !index.has_chunk(&id)? && !sound.contains(&id) {
                    damaged.entry(id).or_insert_with(|| missing(&id));
                }
                let s = i as u64 * bs;
                uses.entry(id).or_default().push(Use { point: pi, part: format!("config {}", c.name), range: (s, (s + bs).min(c.size)) });
            }
        }
        for d in &m.disks {
            let root = d.root_id()?;
            if d.depth == 0 || root.is_zero() {
                continue;
            }
            let span = (FANOUT as u64).pow(d.depth as u32 - 1);
            let mut ctx = Walk { fetch: fetch.as_ref(), index: &index, missing: &missing, sound: &sound, point: pi, part: format!("disk {}", d.name), bs: d.block_size as u64, size: d.size, unreadable: 0 };
            ctx.walk(root, d.depth - 1, 0, span, &mut damaged, &mut uses, &mut referenced)?;
            report.unreadable_map_pages += ctx.unreadable;
        }
    }
    if only.is_none() {
        report.unreferenced_chunks = vault.catalog().chunk_count()?.saturating_sub(referenced.len() as u64);
    }

    // 3. Damage, with what it affects; damage no point uses is still reported.
    let mut list: Vec<_> = damaged.into_iter().filter(|(id, _)| only.is_none() || referenced.contains(id)).collect();
    list.sort_by(|a, b| a.1 .0.cmp(&b.1 .0));
    for (id, (loc, err)) in list {
        let mut affects: Vec<Affected> = Vec::new();
        for u in uses.get(&id).map(|v| v.as_slice()).unwrap_or(&[]) {
            let p = &points[u.point];
            match affects.iter_mut().find(|a| a.point_id == p.id.to_hex() && a.part == u.part) {
                Some(a) => match a.ranges.last_mut() {
                    Some(last) if last.1 == u.range.0 => last.1 = u.range.1,
                    _ => a.ranges.push(u.range),
                },
                None => affects.push(Affected {
                    item: p.item.clone(),
                    point: rfc3339_s(p.time_ms),
                    point_id: p.id.to_hex(),
                    part: u.part.clone(),
                    ranges: vec![u.range],
                }),
            }
        }
        report.damaged.push(Damage { chunk: id.to_hex(), location: loc, error: err, affects });
    }
    record(vault, &points, &report, &recorded, &sound, only.is_none() && read_data)?;
    Ok(report)
}

/// Records what `report` found (see the module doc), and forgets the
/// recorded damage found `sound`; with `complete` (every point and every
/// chunk's bytes were checked), all it did not find.
fn record(
    vault: &Vault,
    points: &[PointRow],
    report: &VerifyReport,
    known: &HashMap<ChunkId, String>,
    sound: &HashSet<ChunkId>,
    complete: bool,
) -> Result<()> {
    // A vault read without write access (a read-only mount, another
    // user's vault) is verified all the same; what was found is reported,
    // only not remembered for later backups and restores.
    if !vault.index_writable() {
        if !report.damaged.is_empty() {
            log::warn!("{}: the index cannot be written here, so this damage is reported but not recorded", vault.root().display());
        }
        return Ok(());
    }
    let chunks: Vec<(ChunkId, String)> = report
        .damaged
        .iter()
        .filter_map(|d| Some((ChunkId::from_hex(&d.chunk)?, format!("{}: {}", d.location, d.error))))
        .collect();
    let hit: HashSet<&str> = report.damaged.iter().flat_map(|d| &d.affects).map(|a| a.point_id.as_str()).collect();
    let flags: Vec<_> = points.iter().map(|p| (p.id, hit.contains(p.id.to_hex().as_str()))).collect();
    let mut cat = vault.catalog();
    cat.mark_chunks_damaged(&chunks)?;
    let mut keep: HashSet<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
    if !complete {
        keep.extend(known.keys().filter(|id| !sound.contains(id)));
    }
    cat.forget_damaged_except(&keep)?;
    cat.set_points_damaged(&flags)?;
    Ok(())
}

struct Walk<'a> {
    fetch: &'a dyn crate::recovery_point::ChunkFetcher,
    index: &'a crate::catalog::Catalog,
    missing: &'a dyn Fn(&ChunkId) -> (String, String),
    /// Chunks recorded as damaged that this verify re-hashed and found sound.
    sound: &'a HashSet<ChunkId>,
    point: usize,
    part: String,
    bs: u64,
    size: u64,
    /// Pages of this disk's map that could not be read.
    unreadable: u64,
}

impl Walk<'_> {
    /// Visits the page `id` at `level` whose first block is `first` and whose
    /// entries each cover `span` blocks.
    #[allow(clippy::too_many_arguments)]
    fn walk(
        &mut self,
        id: ChunkId,
        level: u8,
        first: u64,
        span: u64,
        damaged: &mut HashMap<ChunkId, (String, String)>,
        uses: &mut HashMap<ChunkId, Vec<Use>>,
        referenced: &mut HashSet<ChunkId>,
    ) -> Result<()> {
        referenced.insert(id);
        let covered = (first * self.bs, ((first + span * FANOUT as u64) * self.bs).min(self.size));
        let page = match self.fetch.fetch(&id) {
            Ok(p) if p.len() == PAGE_BYTES => p,
            Ok(_) => {
                self.unreadable += 1;
                damaged.entry(id).or_insert(("map".into(), "map page has the wrong size".into()));
                uses.entry(id).or_default().push(Use { point: self.point, part: self.part.clone(), range: covered });
                return Ok(());
            }
            Err(e) => {
                self.unreadable += 1;
                damaged.entry(id).or_insert(("map".into(), e.to_string()));
                uses.entry(id).or_default().push(Use { point: self.point, part: self.part.clone(), range: covered });
                return Ok(());
            }
        };
        if damaged.contains_key(&id) {
            uses.entry(id).or_default().push(Use { point: self.point, part: self.part.clone(), range: covered });
        }
        for (i, c) in page.chunks_exact(32).enumerate() {
            let child = ChunkId::from_slice(c).unwrap();
            if child.is_zero() {
                continue;
            }
            let child_first = first + i as u64 * span;
            if level > 0 {
                self.walk(child, level - 1, child_first, span / FANOUT as u64, damaged, uses, referenced)?;
                continue;
            }
            let fresh = referenced.insert(child);
            if fresh && !self.index.has_chunk(&child)? && !self.sound.contains(&child) {
                damaged.entry(child).or_insert_with(|| (self.missing)(&child));
            }
            if damaged.contains_key(&child) {
                let s = child_first * self.bs;
                uses.entry(child).or_default().push(Use { point: self.point, part: self.part.clone(), range: (s, (s + self.bs).min(self.size)) });
            }
        }
        Ok(())
    }
}

struct FrameCheck {
    bytes_read: u64,
    /// Per row, in order: why its chunk is damaged, or None.
    errors: Vec<Option<String>>,
}

/// Checks the frame at `off` against the index rows that point into it: its
/// header, that its table holds each row's chunk where the row says, and
/// with `read_data` that each chunk decodes and hashes to its id.
fn check_frame_at(file: &File, pack_len: u64, off: u64, frame_len: u32, rows: &[PackChunk], read_data: bool, loc: &str) -> FrameCheck {
    let all = |msg: String| rows.iter().map(|_| Some(msg.clone())).collect();
    if off + frame_len as u64 > pack_len {
        return FrameCheck { bytes_read: 0, errors: all("frame runs past the end of the pack (truncated)".into()) };
    }
    let header = read_header(file, off, &"frame").and_then(|h| match h.frame_len() == frame_len as u64 {
        true => Ok(h),
        false => Err(Error::Corrupt(format!("frame is {} bytes, the index says {frame_len}", h.frame_len()))),
    });
    let header = match header {
        Ok(h) => h,
        Err(e) => return FrameCheck { bytes_read: 0, errors: all(e.to_string()) },
    };
    let mut payload = vec![0u8; if read_data { header.stored_len as usize } else { 0 }];
    if let Err(e) = file.read_exact_at(&mut payload, off + header.header_len() as u64) {
        return FrameCheck { bytes_read: 0, errors: all(format!("read: {e}")) };
    }
    let checked = read_data.then(|| check_frame(&header, &payload, &format_args!("{loc}")));
    let errors = rows
        .iter()
        .map(|c| {
            let Some(i) = header.ranges().position(|(e, r)| e.id == c.id && r.start == c.inner as usize && r.len() == c.raw_len as usize) else {
                return Some("the frame there does not hold this chunk".to_owned());
            };
            checked.as_ref().and_then(|k| k.errors[i].clone())
        })
        .collect();
    let bytes_read = (header.header_len() + payload.len()) as u64;
    FrameCheck { bytes_read, errors }
}
