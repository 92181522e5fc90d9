//! Taking a recovery point.
//!
//! Per disk, a pipeline keeps both cores busy:
//!
//! ```text
//! reader thread ──blocks──▶ workers (hash, compare, compress) ──▶ this thread (pack writer, map builder)
//! ```
//!
//! The reader walks the disk in block order, reading only blocks that touch a
//! data range of the source (holes are all-zero blocks, never read), and tags
//! each block with the id it had in the previous point of the item. A worker
//! hashes the block; if the id equals the previous one, or is all-zero, or is
//! already stored, the block costs that hash and nothing else. Only new
//! content is compressed and handed to this thread, which appends it to the
//! current pack and feeds ids, in order, to the map builder.
//!
//! With changed-block tracking (a dirty bitmap, a changed-ranges file: see
//! [`Tracker`]), blocks outside the changed extents are "known unchanged":
//! the reader neither reads nor sends them to be hashed, and they keep the
//! id they had in the base point. `plan_tracking` decides when that is safe.
//!
//! Packs are committed to the index as they fill (so memory stays flat); the
//! point itself is committed last, after its manifest is durable. Killing the
//! process at any moment leaves earlier points intact and at most
//! unreferenced chunks, which gc reclaims.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::catalog::{now_ms, Catalog, PointRow};
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::image::{open_source, DiskSource, IoBuf};
use crate::progress::Progress;
use crate::recovery_point::{ConfigEntry, DiskEntry, MapBuilder, MapReader, Manifest};
use crate::store::{ChunkKind, Frame, PackWriter};
use crate::timefmt::rfc3339_ms;
use crate::vault::Vault;

/// Largest configuration file accepted (they are libvirt XMLs and the like).
const MAX_CONFIG_BYTES: u64 = 64 << 20;
/// Runs of blocks in flight between the reader and the workers, per worker
/// (with 3 MiB runs, 6 MiB per worker in each channel).
const QUEUE_PER_WORKER: usize = 2;

#[derive(Clone, Debug, Default)]
pub struct BackupRequest {
    pub item: String,
    pub disks: Vec<(String, PathBuf)>,
    pub configs: Vec<PathBuf>,
    pub consistency: String,
    /// Point-in-time copies to read instead of a disk's source (a reflink
    /// copy or a snapshot made by a script, see crate::consistency), by disk
    /// name. The manifest still names the source the copy was made of.
    pub read_from: Vec<(String, PathBuf)>,
    /// How the disks were captured, recorded with the point.
    pub capture: Option<String>,
    /// Changed-block trackers, by disk name (see [`Tracker`]).
    pub tracking: Vec<(String, Tracker)>,
}

/// Changed-block tracking for one disk: the blocks the tracker does not
/// report as changed are taken from the disk's previous point without
/// being read. Used only when that is safe (see `plan_tracking`); otherwise
/// the backup reads every block and compares by hash, and says why in the
/// point (`fallback`) and the job.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tracker {
    /// An NBD export's `qemu:dirty-bitmap:NAME` meta context.
    DirtyBitmap(String),
    /// A file of changed byte ranges (crate::image::changed).
    ChangedRanges(PathBuf),
    /// A libvirt checkpoint (crate::libvirt): the point is checkpoint `at`
    /// (empty for a disk libvirt cannot checkpoint); with `since` Ok((C,
    /// BITMAP)), the NBD export's `qemu:dirty-bitmap:BITMAP` holds the
    /// writes since checkpoint C, which the base point must have recorded;
    /// Err says why the disk is read whole. Made per run, never stored in
    /// an item's definition.
    #[serde(skip)]
    Checkpoint { at: String, since: std::result::Result<(String, String), String> },
}

impl Tracker {
    /// As recorded in the manifest's `tracking`.
    pub fn label(&self) -> String {
        match self {
            Tracker::DirtyBitmap(b) => format!("dirty-bitmap:{b}"),
            Tracker::ChangedRanges(_) => "changed-ranges".into(),
            Tracker::Checkpoint { at, .. } if at.is_empty() => "libvirt-backup".into(),
            Tracker::Checkpoint { at, .. } => format!("checkpoint:{at}"),
        }
    }

    /// The dirty bitmap to ask the NBD export for.
    fn bitmap(&self) -> Option<&str> {
        match self {
            Tracker::DirtyBitmap(b) | Tracker::Checkpoint { since: Ok((_, b)), .. } => Some(b),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DiskStats {
    pub name: String,
    pub size: u64,
    pub bytes_read: u64,
    pub blocks_changed: u64,
    pub new_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking: Option<String>,
    /// The point untracked blocks were taken from, when the tracker was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Why a tracker was not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BackupReport {
    pub item: String,
    pub id: String,
    pub time: String,
    pub disks: Vec<DiskStats>,
    /// Raw bytes of chunks this backup added to the vault.
    pub new_bytes: u64,
    /// Bytes those chunks (and map pages, manifest) take in packs.
    pub stored_bytes: u64,
    pub logical_size: u64,
    pub seconds: f64,
}

pub struct Options {
    pub pack_target: u64,
    pub zstd_level: i32,
    pub workers: usize,
}

impl Options {
    pub fn for_vault(vault: &Vault) -> Self {
        Options { zstd_level: vault.zstd_level(), ..Options::default() }
    }
}

impl Default for Options {
    fn default() -> Self {
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2);
        // KLUIS_PACK_SIZE lets tests make many small packs (more crash points).
        let pack_target = std::env::var("KLUIS_PACK_SIZE").ok().and_then(|v| v.parse().ok()).unwrap_or(128 << 20);
        Options { pack_target, zstd_level: crate::vault::DEFAULT_ZSTD_LEVEL, workers }
    }
}

/// Checks names and paths before anything is written.
pub fn validate(req: &BackupRequest) -> Result<()> {
    check_name("item", &req.item)?;
    if req.disks.is_empty() {
        return Err(Error::InvalidInput(format!("backup of {}: no disks given (use --disk NAME=PATH)", req.item)));
    }
    let mut seen = HashSet::new();
    for (name, path) in &req.disks {
        check_name("disk", name)?;
        if !seen.insert(name) {
            return Err(Error::InvalidInput(format!("disk name {name:?} is given twice")));
        }
        if !path.to_str().is_some_and(crate::image::nbd::is_url) && !path.exists() {
            return Err(Error::NotFound(format!("disk {name}: {} does not exist", path.display())));
        }
    }
    for (name, t) in &req.tracking {
        let Some((_, path)) = req.disks.iter().find(|(d, _)| d == name) else {
            return Err(Error::InvalidInput(format!("changed-block tracking given for {name:?}, which is not a disk of {}", req.item)));
        };
        match t {
            Tracker::DirtyBitmap(b) if !path.to_str().is_some_and(crate::image::nbd::is_url) => {
                return Err(Error::InvalidInput(format!("disk {name}: --dirty-bitmap {b} needs an NBD disk (nbd://... or nbd+unix://...), not {}", path.display())));
            }
            Tracker::ChangedRanges(f) if !f.is_file() => {
                return Err(Error::NotFound(format!("disk {name}: changed-ranges file {} does not exist", f.display())));
            }
            _ => {}
        }
    }
    for (name, _) in &req.read_from {
        if !req.disks.iter().any(|(d, _)| d == name) {
            return Err(Error::InvalidInput(format!("point-in-time copy given for {name:?}, which is not a disk of {}", req.item)));
        }
    }
    let mut cfg_names = HashSet::new();
    for c in &req.configs {
        let name = config_name(c)?;
        if !cfg_names.insert(name.clone()) {
            return Err(Error::InvalidInput(format!("two config files are named {name:?}")));
        }
    }
    Ok(())
}

/// Item and disk names become directory and file names in the mount.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !name.starts_with('.');
    if ok { Ok(()) } else {
        Err(Error::InvalidInput(format!("{what} name {name:?}: use letters, digits, '-', '_' and '.', not starting with '.'")))
    }
}

fn config_name(p: &Path) -> Result<String> {
    p.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| Error::InvalidInput(format!("config file {}: no usable file name", p.display())))
}

/// Session state shared by workers: ids written by this backup that the
/// index does not have yet (their pack is still open).
struct Pending(Mutex<HashSet<ChunkId>>);

/// Appends chunks to packs, committing each pack to the index when it fills.
struct PackSink<'a> {
    vault: &'a Vault,
    writer: Option<PackWriter>,
    pending: Arc<Pending>,
    /// Chunks recorded as damaged when the backup began (crate::verify): a
    /// block equal to its block in the previous point is stored again if
    /// its chunk is one of these, even where that point is not marked.
    damaged: Arc<HashSet<ChunkId>>,
    opts: &'a Options,
    stored_bytes: u64,
    new_bytes: u64,
}

impl PackSink<'_> {
    fn append(&mut self, frame: &Frame) -> Result<()> {
        if self.writer.is_none() {
            self.writer = Some(PackWriter::create(self.vault.root())?);
        }
        let w = self.writer.as_mut().unwrap();
        w.append(frame)?;
        self.stored_bytes += frame.frame_len();
        self.new_bytes += frame.header.raw_len as u64;
        if w.len() >= self.opts.pack_target {
            self.flush()?;
        }
        Ok(())
    }

    /// Stores `raw` unless this backup or the index already has it.
    fn put(&mut self, kind: ChunkKind, raw: &[u8], index: &Catalog) -> Result<ChunkId> {
        let id = ChunkId::of(raw);
        if self.pending.0.lock().unwrap().contains(&id) || index.has_chunk(&id)? {
            return Ok(id);
        }
        let frame = Frame::encode(kind, &[(id, raw)], self.opts.zstd_level)?;
        self.pending.0.lock().unwrap().insert(id);
        self.append(&frame)?;
        Ok(id)
    }

    fn flush(&mut self) -> Result<()> {
        if let Some(w) = self.writer.take() {
            if w.is_empty() {
                return Ok(());
            }
            let pack = w.finish()?;
            self.vault.catalog().commit_pack(&pack)?;
            let mut pending = self.pending.0.lock().unwrap();
            for e in pack.frames.iter().flat_map(|f| &f.header.chunks) {
                pending.remove(&e.id);
            }
        }
        Ok(())
    }
}

/// How far ahead of the reader the source is asked to fetch.
const PREFETCH_AHEAD: u64 = 8 << 20;

/// Blocks travel between threads in runs of this many bytes, so that channel
/// hand-offs and read syscalls are per run rather than per block, and the
/// new blocks of a run are compressed together as one frame. 3 MiB (48
/// blocks of 64 KiB). Larger runs compress smaller, and at level 2 for less
/// CPU (docs/format.md §4: 5 MiB runs at level 2 made a vault 1.0% smaller
/// than 3 MiB at level 3, for 18% less zstd CPU), but they cost every
/// reader that wants part of a frame: with 5 MiB frames a mount's `dd` of a
/// disk took 3.05–3.11 s against 2.55–2.70 s, a random 4 KiB read 1.26 ms
/// against 0.94 ms, and `kluis files cp -r` of a 300 MiB guest tree
/// 0.84–0.96 s against 0.66–0.77 s (docs/benchmarks.md, session 8); with
/// 6 MiB frames at level 2, a guest `cp -r` through a mount took a fifth
/// longer (session 9).
pub const RUN_BYTES: u64 = 3 << 20;
// A run is one frame, and zstd's window for frames must reach over all of
// it; growing runs without the window would compress worse, silently.
const _: () = assert!(RUN_BYTES <= 1 << crate::store::FRAME_WINDOW_LOG, "RUN_BYTES outgrew FRAME_WINDOW_LOG (src/store/frame.rs)");

/// Blocks per run for blocks of `bs` bytes: at least one, and never more
/// than a frame may hold.
fn run_blocks(bs: u64) -> u64 {
    (RUN_BYTES / bs).clamp(1, crate::store::MAX_FRAME_CHUNKS as u64)
}

/// A run of consecutive blocks `first..first + prev.len()`.
struct Job {
    first: u64,
    /// The bytes of blocks `data_from..` of the run up to the last block
    /// with data; empty when the whole run lies in holes.
    data: IoBuf,
    data_from: usize,
    /// Per block: does it touch a data range of the source (else it is a
    /// hole), and is it to be read.
    has_data: Vec<bool>,
    /// Per block, for a tracked backup: known unchanged, so its previous id
    /// stands without a read (empty when untracked).
    kept: Vec<bool>,
    /// Per block: its id in the previous point.
    prev: Vec<ChunkId>,
}

struct Done {
    first: u64,
    ids: Vec<ChunkId>,
    /// The run's new blocks, compressed together as one frame.
    frame: Option<Frame>,
}

pub fn backup(vault: &Vault, req: &BackupRequest, progress: &dyn Progress, cancel: &AtomicBool) -> Result<BackupReport> {
    validate(req)?;
    let started = Instant::now();
    let opts = Options::for_vault(vault);
    let sources: Vec<(String, PathBuf, Box<dyn DiskSource>)> = req
        .disks
        .iter()
        .map(|(n, p)| {
            let from = req.read_from.iter().find(|(d, _)| d == n).map_or(p, |(_, c)| c);
            let source = match (tracker_of(req, n).and_then(Tracker::bitmap), p.to_str().filter(|s| crate::image::nbd::is_url(s))) {
                (Some(b), Some(url)) => crate::image::nbd::NbdSource::open(url, Some(b)).map(|s| Box::new(s) as Box<dyn DiskSource>),
                // A point-in-time copy carries no QEMU lock: check the source.
                _ => crate::image::qcow2::check_not_in_use(p).and_then(|_| open_source(from)),
            };
            Ok((n.clone(), p.clone(), source.map_err(|e| prefix_disk(n, e))?))
        })
        .collect::<Result<_>>()?;
    let configs: Vec<(String, Vec<u8>)> = req.configs.iter().map(|p| read_config(p)).collect::<Result<_>>()?;
    // Bad changed-ranges files fail the backup before anything is stored.
    let changed_files: Vec<Option<Vec<Range<u64>>>> = sources
        .iter()
        .map(|(n, _, src)| match tracker_of(req, n) {
            Some(Tracker::ChangedRanges(f)) => crate::image::changed::read_file(f, src.size()).map(Some).map_err(|e| prefix_disk(n, e)),
            _ => Ok(None),
        })
        .collect::<Result<_>>()?;

    let _lock = vault.lock(false, || log::warn!("waiting for a running gc to finish"))?;
    let time_ms = next_time(vault, &req.item)?;
    // The newest point that is whole: a block equal to its block there is
    // known to be stored intact. A damaged point's blocks are compared with
    // the index instead, where damaged chunks count as absent, so this
    // backup stores them again (and so heals the older points too).
    let previous = vault.catalog().points(Some(&req.item), false)?.into_iter().rev().find(|p| !p.damaged);
    let prev_manifest = previous.as_ref().map(|p| Manifest::parse(&p.manifest)).transpose()?;
    let latest_any = vault.catalog().points(Some(&req.item), true)?.into_iter().max_by_key(|p| p.time_ms);
    let fetch = vault.fetcher()?;

    let pending = Arc::new(Pending(Mutex::new(HashSet::new())));
    let damaged = Arc::new(vault.catalog().damaged_chunks()?.into_keys().collect());
    let mut sink = PackSink { vault, writer: None, pending: pending.clone(), damaged, opts: &opts, stored_bytes: 0, new_bytes: 0 };
    let mut disks = Vec::new();
    let mut stats = Vec::new();
    let bs = vault.block_size();
    for ((name, path, source), changed_file) in sources.iter().zip(changed_files) {
        let prev = prev_manifest.as_ref().and_then(|m| m.disks.iter().find(|d| &d.name == name && d.block_size == bs)).cloned();
        let base = previous.as_ref().zip(prev.as_ref());
        let plan = plan_tracking(tracker_of(req, name), source.as_ref(), base, latest_any.as_ref(), changed_file).map_err(|e| prefix_disk(name, e))?;
        let prev_map = prev.map(|d| Ok::<_, Error>(MapReader::new(d.depth, d.root_id()?, d.blocks(), fetch.clone()))).transpose()?;
        progress.start(&format!("{}/{}", req.item, name), source.size());
        // A first backup is bound by CPU, an incremental one by reading
        // (image/direct.rs): direct reads for the first only.
        source.set_direct(prev_map.is_none());
        let (mut entry, mut st) = backup_disk(vault, name, path, source.as_ref(), prev_map, plan.changed, &mut sink, &opts, progress, cancel)
            .map_err(|e| prefix_disk(name, e))?;
        (entry.tracking, entry.base, entry.fallback) = (plan.tracking, plan.base, plan.fallback);
        (st.tracking, st.base, st.fallback) = (entry.tracking.clone(), entry.base.clone(), entry.fallback.clone());
        progress.finish();
        disks.push(entry);
        stats.push(st);
    }

    // A reader of our own: `sink.put` may fill a pack and commit it through
    // the vault's writer connection, which must not be held here.
    let index = Catalog::open_reader(&vault.index_path())?;
    let index_ref: &Catalog = &index;
    let mut config_entries = Vec::new();
    for (name, bytes) in &configs {
        let mut chunks = Vec::new();
        for part in bytes.chunks(bs as usize) {
            chunks.push(sink.put(ChunkKind::Config, part, index_ref)?.to_hex());
        }
        config_entries.push(ConfigEntry { name: name.clone(), size: bytes.len() as u64, chunks });
    }
    let manifest = Manifest {
        version: crate::recovery_point::MANIFEST_VERSION,
        item: req.item.clone(),
        time: rfc3339_ms(time_ms),
        consistency: req.consistency.clone(),
        disks,
        configs: config_entries,
    };
    let bytes = manifest.to_bytes();
    let id = sink.put(ChunkKind::Manifest, &bytes, index_ref)?;
    drop(index);
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }
    sink.flush()?;
    let logical_size = manifest.disks.iter().map(|d| d.size).sum();
    let row = PointRow {
        id: crate::id::RecoveryPointId(id),
        item: req.item.clone(),
        time_ms,
        consistency: req.consistency.clone(),
        manifest: String::from_utf8(bytes).unwrap(),
        logical_size,
        new_bytes: sink.new_bytes,
        stored_bytes: sink.stored_bytes,
        deleted_ms: None,
        capture: req.capture.clone(),
        damaged: false,
    };
    vault.catalog().insert_point(&row)?;
    Ok(BackupReport {
        item: req.item.clone(),
        id: id.to_hex(),
        time: crate::timefmt::rfc3339_s(time_ms),
        disks: stats,
        new_bytes: sink.new_bytes,
        stored_bytes: sink.stored_bytes,
        logical_size,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn prefix_disk(name: &str, e: Error) -> Error {
    match e {
        Error::Io { context, source } => Error::Io { context: format!("disk {name}: {context}"), source },
        Error::Corrupt(m) => Error::Corrupt(format!("disk {name}: {m}")),
        Error::InvalidInput(m) => Error::InvalidInput(format!("disk {name}: {m}")),
        Error::NotFound(m) => Error::NotFound(format!("disk {name}: {m}")),
        other => other,
    }
}

fn tracker_of<'a>(req: &'a BackupRequest, disk: &str) -> Option<&'a Tracker> {
    req.tracking.iter().find(|(d, _)| d == disk).map(|(_, t)| t)
}

/// What a disk's tracker decided: `changed` is set when the backup may read
/// only those ranges and take every other block from `base`.
#[derive(Default)]
struct TrackingPlan {
    changed: Option<Vec<Range<u64>>>,
    tracking: Option<String>,
    base: Option<String>,
    fallback: Option<String>,
}

/// Uses the tracker only when its changes are known to be relative to the
/// disk's previous point (`base`): that point is the item's latest (a
/// deleted later point may be what the tracker counted from), the disk
/// kept its size, and, for a dirty bitmap, the bitmap exists now and
/// already existed when `base` was read (its manifest names it), so every
/// write since then is in it. Anything else reads the whole disk and
/// compares by hash, and says why.
fn plan_tracking(
    tracker: Option<&Tracker>,
    source: &dyn DiskSource,
    base: Option<(&PointRow, &DiskEntry)>,
    latest_any: Option<&PointRow>,
    changed_file: Option<Vec<Range<u64>>>,
) -> Result<TrackingPlan> {
    let Some(t) = tracker else { return Ok(TrackingPlan::default()) };
    let label = t.label();
    let fallback = |tracking: Option<String>, why: String| Ok(TrackingPlan { tracking, fallback: Some(why), ..Default::default() });
    let changed = match (t, changed_file) {
        (Tracker::DirtyBitmap(b), _) => match source.dirty_ranges()? {
            Some(r) => r,
            None => return fallback(None, format!("the export has no dirty bitmap {b:?}")),
        },
        (Tracker::Checkpoint { since: Err(why), .. }, _) => return fallback(Some(label), why.clone()),
        (Tracker::Checkpoint { since: Ok((c, _)), .. }, _) => match source.dirty_ranges()? {
            Some(r) => r,
            None => return fallback(Some(label), format!("the export has no dirty bitmap since checkpoint {c}")),
        },
        (Tracker::ChangedRanges(_), Some(r)) => r,
        (Tracker::ChangedRanges(_), None) => unreachable!("changed-ranges files are read before the disks"),
    };
    let Some((point, disk)) = base else {
        return fallback(Some(label), "no earlier point of this disk to base on".into());
    };
    let base_name = format!("{} ({})", crate::timefmt::rfc3339_s(point.time_ms), &point.id.0.to_hex()[..8]);
    if let Some(l) = latest_any.filter(|l| l.id != point.id) {
        return fallback(Some(label), format!("the item's latest point {} is deleted, so the tracker may count from it rather than from {base_name}", crate::timefmt::rfc3339_s(l.time_ms)));
    }
    if disk.size != source.size() {
        return fallback(Some(label), format!("the disk's size changed since {base_name} ({} -> {} bytes)", disk.size, source.size()));
    }
    if matches!(t, Tracker::DirtyBitmap(_)) && disk.tracking.as_deref() != Some(label.as_str()) {
        return fallback(Some(label), format!("{base_name} was not read with this bitmap in place, so writes before the bitmap began could be missed"));
    }
    if let Tracker::Checkpoint { since: Ok((c, _)), .. } = t
        && disk.tracking.as_deref() != Some(format!("checkpoint:{c}").as_str())
    {
        return fallback(Some(label), format!("{base_name} is not checkpoint {c}, so the bitmap may miss writes made since it"));
    }
    Ok(TrackingPlan { changed: Some(changed), tracking: Some(label), base: Some(point.id.0.to_hex()), fallback: None })
}

/// A point's time: now, cut to the whole second, and always at least one
/// second after the item's previous point (deleted ones included) and any
/// time already handed to a backup of the item still running. So the name
/// of a point (its time to the second) is unique within its item and never
/// changes, even when its neighbours are deleted; points are strictly
/// ordered even if the clock stepped back or backups of one item run at
/// once. Backups of one item taken faster than one a second are dated up
/// to a few seconds ahead.
fn next_time(vault: &Vault, item: &str) -> Result<i64> {
    let now = now_ms();
    vault.catalog().allocate_point_time(item, now - now.rem_euclid(1000))
}

fn read_config(p: &Path) -> Result<(String, Vec<u8>)> {
    let name = config_name(p)?;
    use crate::newfile::Unread;
    let bytes = crate::newfile::read_regular(p, MAX_CONFIG_BYTES).map_err(|e| match e {
        Unread::NotRegular => Error::InvalidInput(format!("config file {}: not a regular file", p.display())),
        Unread::TooBig => Error::InvalidInput(format!("config file {} is larger than the limit of {MAX_CONFIG_BYTES} bytes", p.display())),
        Unread::Io(e) => Error::io_path("cannot read config file", p, e),
    })?;
    Ok((name, bytes))
}

/// Which blocks of a disk touch a data range: the rest are holes.
struct HoleMap {
    ranges: Vec<Range<u64>>,
    next: usize,
}

impl HoleMap {
    /// Blocks must be asked for in increasing order.
    fn block_has_data(&mut self, start: u64, end: u64) -> bool {
        while self.next < self.ranges.len() && self.ranges[self.next].end <= start {
            self.next += 1;
        }
        self.next < self.ranges.len() && self.ranges[self.next].start < end
    }
}

fn is_all_zero(b: &[u8]) -> bool {
    let (pre, mid, post) = unsafe { b.align_to::<u128>() };
    pre.iter().all(|&x| x == 0) && mid.iter().all(|&x| x == 0) && post.iter().all(|&x| x == 0)
}

#[allow(clippy::too_many_arguments)]
fn backup_disk(
    vault: &Vault,
    name: &str,
    path: &Path,
    source: &dyn DiskSource,
    prev: Option<MapReader>,
    changed: Option<Vec<Range<u64>>>,
    sink: &mut PackSink,
    opts: &Options,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<(DiskEntry, DiskStats)> {
    let size = source.size();
    let bs = vault.block_size() as u64;
    let blocks = size.div_ceil(bs);
    let mut holes = HoleMap { ranges: source.data_ranges()?, next: 0 };
    // Blocks outside `changed` are known unchanged: their previous id is kept
    // without a read.
    let mut changed = changed.map(|ranges| HoleMap { ranges, next: 0 });
    let mut st = DiskStats { name: name.to_owned(), size, ..Default::default() };
    let failed = AtomicBool::new(false);

    let run = run_blocks(bs);
    let damaged = sink.damaged.clone();
    let (job_tx, job_rx) = bounded::<Job>(opts.workers * QUEUE_PER_WORKER);
    let (done_tx, done_rx) = bounded::<Result<Done>>(opts.workers * QUEUE_PER_WORKER);
    // Buffers given back for reuse, as many as can be in flight: run buffers
    // from the workers for the reader to fill again, and frames' payload
    // buffers once written, so that a frame costs no allocation (and no page
    // faults) once the pipeline is full.
    let in_flight = opts.workers * (QUEUE_PER_WORKER + 1) + 1;
    let (free_tx, free_rx) = bounded::<IoBuf>(in_flight);
    let (payload_tx, payload_rx) = bounded::<Vec<u8>>(in_flight);

    let result = std::thread::scope(|s| -> Result<(DiskEntry, DiskStats)> {
        // Reader: runs of blocks in order, one read per run, holes without I/O.
        let reader = s.spawn(|| -> Result<u64> {
            let job_tx = job_tx;
            let mut read = 0u64;
            let mut first = 0u64;
            while first < blocks {
                if cancel.load(Ordering::Relaxed) || failed.load(Ordering::Relaxed) {
                    return Ok(read);
                }
                let n = run.min(blocks - first);
                let mut has_data = Vec::with_capacity(n as usize);
                let mut kept = Vec::new();
                let mut prev_ids = Vec::with_capacity(n as usize);
                for index in first..first + n {
                    let start = index * bs;
                    let end = (start + bs).min(size);
                    let data = holes.block_has_data(start, end);
                    let prev_id = match &prev {
                        Some(m) if index < m.blocks() => Some(m.block(index)?),
                        _ => None,
                    };
                    let prev_damaged = prev_id.is_some_and(|id| damaged.contains(&id));
                    if let Some(c) = &mut changed {
                        // Unchanged by the tracker: taken from the base point
                        // without reading, unless its chunk there is damaged
                        // (then it is read, and stored again).
                        let keep = data && !c.block_has_data(start, end) && !prev_damaged;
                        kept.push(keep);
                        has_data.push(data && !keep);
                    } else {
                        has_data.push(data);
                    }
                    // A damaged previous chunk compares as "no previous
                    // block": the worker then asks the index, which counts
                    // it as absent, and the block is stored again.
                    prev_ids.push(prev_id.filter(|_| !prev_damaged).unwrap_or(ChunkId::ZERO));
                }
                let mut data = IoBuf::new(0);
                let mut data_from = 0;
                if let (Some(a), Some(b)) = (has_data.iter().position(|&d| d), has_data.iter().rposition(|&d| d)) {
                    let start = (first + a as u64) * bs;
                    let end = ((first + b as u64 + 1) * bs).min(size);
                    data = free_rx.try_recv().unwrap_or_else(|_| IoBuf::new(0));
                    data.resize((end - start) as usize, 0);
                    source.will_read(start + PREFETCH_AHEAD, end - start);
                    // One read per stretch of blocks to read: holes and
                    // blocks known unchanged between them are never read
                    // (over NBD they would cost the network).
                    let mut i = a;
                    while i <= b {
                        let j = (i..=b).find(|&j| !has_data[j]).unwrap_or(b + 1);
                        let (s, e) = ((first + i as u64) * bs, ((first + j as u64) * bs).min(size));
                        let at = (s - start) as usize;
                        source.read_at(&mut data[at..at + (e - s) as usize], s)?;
                        read += e - s;
                        i = (j..=b).find(|&k| has_data[k]).unwrap_or(b + 1);
                    }
                    data_from = a;
                }
                if job_tx.send(Job { first, data, data_from, has_data, kept, prev: prev_ids }).is_err() {
                    break;
                }
                first += n;
            }
            Ok(read)
        });

        for _ in 0..opts.workers {
            let (job_rx, done_tx, free_tx, payload_rx) = (job_rx.clone(), done_tx.clone(), free_tx.clone(), payload_rx.clone());
            let pending = sink.pending.clone();
            let index_path = vault.index_path();
            let level = opts.zstd_level;
            let failed = &failed;
            s.spawn(move || {
                let index = match Catalog::open_reader(&index_path) {
                    Ok(i) => i,
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        let _ = done_tx.send(Err(e));
                        return;
                    }
                };
                worker(&index, &pending, level, bs as usize, job_rx, done_tx, free_tx, payload_rx, failed);
            });
        }
        drop((job_rx, done_tx, free_tx, payload_rx));

        // This thread: reorder results, write new chunks, build the map.
        let index = Catalog::open_reader(&vault.index_path())?;
        let mut builder = MapBuilder::new(blocks);
        // Results arrive out of order; the map takes ids in block order.
        let mut ready: HashMap<u64, Vec<ChunkId>> = HashMap::new();
        let mut next = 0u64;
        let (mut changed, mut new_bytes) = (0u64, 0u64);
        let mut step = |msg: Result<Done>, sink: &mut PackSink| -> Result<()> {
            let d = msg?;
            if let Some(frame) = d.frame {
                changed += frame.header.chunks.len() as u64;
                new_bytes += frame.header.raw_len as u64;
                sink.append(&frame)?;
                let _ = payload_tx.try_send(frame.payload);
            }
            let covered = ((d.first + d.ids.len() as u64) * bs).min(size) - d.first * bs;
            ready.insert(d.first, d.ids);
            while let Some(ids) = ready.remove(&next) {
                next += ids.len() as u64;
                for id in ids {
                    builder.push(id, &mut |page: &[u8]| sink.put(ChunkKind::MapPage, page, &index))?;
                }
            }
            progress.advance(covered);
            Ok(())
        };
        let mut outcome: Result<()> = Ok(());
        for msg in done_rx.iter() {
            if let Err(e) = step(msg, sink) {
                failed.store(true, Ordering::Relaxed);
                outcome = Err(e);
                break;
            }
        }
        // Drain so that no thread blocks on a full channel after a failure.
        if outcome.is_err() {
            for _ in done_rx.iter() {}
        }
        let read = reader.join().expect("reader thread panicked");
        outcome?;
        st.bytes_read = read?;
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        if next != blocks {
            return Err(Error::Corrupt(format!("internal: {next} of {blocks} blocks processed")));
        }
        st.blocks_changed = changed;
        st.new_bytes = new_bytes;
        let (depth, root) = builder.finish(&mut |page: &[u8]| sink.put(ChunkKind::MapPage, page, &index))?;
        let entry = DiskEntry {
            name: name.to_owned(),
            size,
            block_size: bs as u32,
            depth,
            root: root.to_hex(),
            source: path.display().to_string(),
            source_kind: source.kind().to_owned(),
            tracking: None,
            base: None,
            fallback: None,
        };
        Ok((entry, st))
    })?;
    Ok(result)
}

#[allow(clippy::too_many_arguments)]
fn worker(
    index: &Catalog,
    pending: &Pending,
    level: i32,
    bs: usize,
    jobs: Receiver<Job>,
    done: Sender<Result<Done>>,
    free: Sender<IoBuf>,
    payloads: Receiver<Vec<u8>>,
    failed: &AtomicBool,
) {
    for mut job in jobs.iter() {
        let r = (|| -> Result<Done> {
            let mut ids = Vec::with_capacity(job.prev.len());
            // New blocks, as ranges of job.data.
            let mut new: Vec<(ChunkId, Range<usize>)> = Vec::new();
            // One snapshot per run: its lookups skip SQLite's per-statement
            // locking. A chunk committed (and so dropped from `pending`)
            // during the run may be stored twice; the index keeps the first
            // copy and gc drops the other.
            let _snapshot = index.conn().unchecked_transaction()?;
            for (i, &has_data) in job.has_data.iter().enumerate() {
                if !has_data {
                    ids.push(if job.kept.get(i) == Some(&true) { job.prev[i] } else { ChunkId::ZERO });
                    continue;
                }
                let from = (i - job.data_from) * bs;
                let range = from..(from + bs).min(job.data.len());
                let data = &job.data[range.clone()];
                let id = if is_all_zero(data) { ChunkId::ZERO } else { ChunkId::of(data) };
                if !id.is_zero() && id != job.prev[i] && !pending.0.lock().unwrap().contains(&id) && !index.has_chunk(&id)? {
                    // Claim it so that another worker with the same content skips it.
                    if pending.0.lock().unwrap().insert(id) {
                        new.push((id, range));
                    }
                }
                ids.push(id);
            }
            let frame = if new.is_empty() { None } else { Some(Frame::encode_ranges(ChunkKind::Data, &new, &mut job.data, level, payloads.try_recv().unwrap_or_default())?) };
            drop(new);
            if !job.data.is_empty() {
                let _ = free.try_send(job.data);
            }
            Ok(Done { first: job.first, ids, frame })
        })();
        if r.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        if done.send(r).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_3_mib_within_frame_limits() {
        assert_eq!(run_blocks(64 << 10), 48);
        assert_eq!(run_blocks(4096), 768);
        assert_eq!(run_blocks(1 << 20), 3);
        assert_eq!(run_blocks(4 << 20), 1);
        assert_eq!(run_blocks(512), crate::store::MAX_FRAME_CHUNKS as u64);
    }
}
