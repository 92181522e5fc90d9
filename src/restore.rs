//! Restoring the disks of a recovery point to raw (sparse) or VHD files, or
//! onto block devices: one disk, or several at once.
//!
//! Files are written under a temporary name in the target's directory and
//! renamed into place when complete (all of them, for several disks), so an
//! interrupted restore never leaves a half-written file under the requested
//! name. Frames are read, decompressed and checked by several threads, each
//! into buffers of its own that it uses again for the next frame, and each
//! run of consecutive blocks is written with one pwrite(2) straight from the
//! decoded frame; reads and writes go around the page cache where the
//! filesystems allow it (image/direct.rs, store::FrameBuf).
//!
//! A damaged point (chunks recorded as damaged by verify or rebuild-index,
//! see crate::verify) is refused before anything is written, naming the
//! byte ranges that are lost. With `partial`, everything intact is written,
//! the lost ranges are left as zeros (also where damage is met only while
//! reading), and the report lists them.

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::bounded;

use crate::catalog::{ChunkLocation, PointRow};
use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use crate::image::{vhd, IoBuf, TargetFile, TargetFormat};
use crate::progress::Progress;
use crate::recovery_point::{DiskReader, Manifest, FANOUT};
use crate::store::{FrameBuf, PackFiles};
use crate::vault::Vault;

#[derive(Debug, serde::Serialize)]
pub struct RestoreReport {
    pub item: String,
    pub point: String,
    pub disk: String,
    pub target: String,
    pub format: String,
    pub size: u64,
    pub bytes_written: u64,
    pub seconds: f64,
    /// Byte ranges [start, end) of the disk that are damaged in the vault
    /// and were written as zeros (a partial restore); empty otherwise.
    pub missing: Vec<(u64, u64)>,
}

/// Identity of a disk image made from a point: the same point and disk give
/// the same VHD unique id and timestamp, whether restored or read from a mount.
pub fn vhd_identity(point: &PointRow, disk: &str) -> ([u8; 16], u32) {
    let mut h = blake3::Hasher::new();
    h.update(&point.id.0 .0);
    h.update(disk.as_bytes());
    let uid: [u8; 16] = h.finalize().as_bytes()[..16].try_into().unwrap();
    // VHD timestamps count seconds from 2000-01-01T00:00:00Z.
    let ts = (point.time_ms / 1000 - 946_684_800).clamp(0, u32::MAX as i64) as u32;
    (uid, ts)
}

/// One disk of a point and where to write it.
#[derive(Clone, Debug)]
pub struct RestoreTarget {
    pub disk: String,
    pub to: PathBuf,
}

/// Targets for restoring into `dir`, as NAME.raw or NAME.vhd: the disks
/// named in `disks`, or every disk of the point when it is empty. `dir` is
/// made if missing.
pub fn targets_in_dir(point: &PointRow, disks: &[String], dir: &Path, format: TargetFormat) -> Result<Vec<RestoreTarget>> {
    let names: Vec<String> = if disks.is_empty() { Manifest::parse(&point.manifest)?.disks.into_iter().map(|d| d.name).collect() } else { disks.to_vec() };
    fs::create_dir_all(dir).map_err(|e| Error::io_path("cannot create", dir, e))?;
    let ext = match format {
        TargetFormat::Raw => "raw",
        TargetFormat::Qcow2 => "qcow2",
        TargetFormat::VhdFixed | TargetFormat::VhdDynamic => "vhd",
    };
    Ok(names.into_iter().map(|disk| RestoreTarget { to: dir.join(format!("{disk}.{ext}")), disk }).collect())
}

/// Restores several disks of a point at once ("restore the VM"), each by
/// its own threads, so that one disk's decoding fills the time another's
/// workers wait for their writes. Every target is checked before anything
/// is written, and the new files are renamed into place only when all of
/// them are complete and durable: a failure leaves no target changed
/// (block devices excepted, which are written in place). With `partial`,
/// a damaged disk is restored anyway (see the module doc).
#[allow(clippy::too_many_arguments)]
pub fn restore_disks(
    vault: &Vault,
    point: &PointRow,
    targets: &[RestoreTarget],
    format: TargetFormat,
    force: bool,
    partial: bool,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<Vec<RestoreReport>> {
    let started = Instant::now();
    if targets.is_empty() {
        return Err(Error::InvalidInput("name at least one disk to restore".into()));
    }
    for (i, t) in targets.iter().enumerate() {
        if let Some(u) = targets[..i].iter().find(|u| u.disk == t.disk || u.to == t.to) {
            let what = if u.disk == t.disk { format!("disk {} is named twice", t.disk) } else { format!("{} is the target of two disks", t.to.display()) };
            return Err(Error::InvalidInput(what));
        }
    }
    // Shared lock: gc waits, so no pack this restore reads is rewritten under it.
    let _lock = vault.lock(false, || log::warn!("waiting for a running gc to finish"))?;
    let known: Arc<HashSet<ChunkId>> = Arc::new(vault.catalog().damaged_chunks()?.into_keys().collect());
    let checked = targets.iter().map(|t| Checked::new(vault, point, t, format, force, partial, &known)).collect::<Result<Vec<_>>>()?;
    let opened = checked.into_iter().map(Opened::new).collect::<Result<Vec<_>>>()?;
    let total = opened.iter().map(|o| o.checked.size).sum();
    let label = match targets {
        [t] => format!("{}/{}", point.item, t.disk),
        _ => format!("{} ({} disks)", point.item, targets.len()),
    };
    progress.start(&label, total);
    let failed = AtomicBool::new(false);
    let stop = || cancel.load(Ordering::Relaxed) || failed.load(Ordering::Relaxed);
    let together = opened.len();
    let results: Vec<Result<(u64, f64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = opened
            .iter()
            .map(|o| {
                let (failed, stop) = (&failed, &stop);
                s.spawn(move || {
                    let r = o.write(vault, point, format, together, progress, stop).map(|n| (n, started.elapsed().as_secs_f64()));
                    let r = r.map_err(|e| match e {
                        Error::Corrupt(m) => Error::Corrupt(format!("disk {}: {m}", o.checked.disk)),
                        e => e,
                    });
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("restore thread panicked")).collect()
    });
    // The first real error, rather than another disk's "interrupted" after it.
    let mut done = Vec::new();
    let mut first_err: Option<Error> = None;
    for r in results {
        match r {
            Ok(d) => done.push(d),
            Err(e) if first_err.as_ref().is_none_or(|f| matches!(f, Error::Interrupted)) => first_err = Some(e),
            Err(_) => {}
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    progress.finish();
    let mut reports = Vec::new();
    for (o, (written, seconds)) in opened.into_iter().zip(done) {
        let c = o.commit()?;
        let missing = c.lost.ranges();
        reports.push(RestoreReport {
            item: point.item.clone(),
            point: point.id.to_hex(),
            disk: c.disk,
            target: c.to.display().to_string(),
            format: format.name().to_owned(),
            size: c.size,
            bytes_written: written,
            seconds,
            missing,
        });
    }
    Ok(reports)
}

/// A target that passed every check; nothing is written yet.
struct Checked {
    disk: String,
    to: PathBuf,
    reader: DiskReader,
    size: u64,
    is_device: bool,
    lost: Lost,
}

impl Checked {
    fn new(vault: &Vault, point: &PointRow, t: &RestoreTarget, format: TargetFormat, force: bool, partial: bool, known: &Arc<HashSet<ChunkId>>) -> Result<Checked> {
        let (disk, to) = (&t.disk, &t.to);
        let reader = vault.disk_reader(point, disk)?;
        let size = reader.size();
        let is_device = fs::metadata(to).map(|m| m.file_type().is_block_device()).unwrap_or(false);
        // Checked before anything is written: a directory cannot be renamed
        // over, and a missing parent would be reported by the temporary name.
        if to.is_dir() {
            return Err(Error::InvalidInput(format!(
                "{} is a directory: a disk is restored to a file or block device (`--to-dir DIR` restores into a directory)",
                to.display()
            )));
        }
        let parent = to.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !parent.is_dir() {
            let why = if parent.exists() { "is not a directory" } else { "does not exist" };
            return Err(Error::NotFound(format!("cannot restore to {}: {} {why}", to.display(), parent.display())));
        }
        if to.exists() && !force {
            return Err(Error::AlreadyExists(format!("{} exists; use --force to overwrite it", to.display())));
        }
        if is_device && format != TargetFormat::Raw {
            return Err(Error::InvalidInput(format!("{} is a block device: only --format raw can be written to it", to.display())));
        }
        if matches!(format, TargetFormat::VhdFixed | TargetFormat::VhdDynamic) && size > vhd::MAX_SIZE {
            return Err(Error::InvalidInput(format!("disk {disk} is {size} bytes; VHD holds at most {} (use --format raw)", vhd::MAX_SIZE)));
        }
        if is_device {
            let dev = open_device(to, false)?;
            let dev_size = unsafe { libc::lseek64(std::os::unix::io::AsRawFd::as_raw_fd(&dev), 0, libc::SEEK_END) };
            if (dev_size as u64) < size {
                return Err(Error::InvalidInput(format!("{} holds {dev_size} bytes; the disk needs {size}", to.display())));
            }
        }
        let lost = Lost { known: known.clone(), partial, ranges: Mutex::new(Vec::new()) };
        let (damaged, first) = lost.recorded_in(&reader)?;
        if !damaged.is_empty() {
            let when = crate::timefmt::rfc3339_s(point.time_ms);
            if !partial {
                return Err(Error::Corrupt(format!(
                    "disk {disk} of {}@{when} is damaged in the vault: bytes {} are lost ({}`kluis verify` names all); \
                     `--partial` restores the rest, with zeros there",
                    point.item,
                    name_ranges(&damaged),
                    first.map(|c| format!("chunk {c}, ")).unwrap_or_default()
                )));
            }
            if format == TargetFormat::VhdDynamic {
                return Err(Error::InvalidInput(format!("disk {disk} is damaged: --partial writes --format raw or vhd, not vhd-dynamic")));
            }
        }
        Ok(Checked { disk: disk.clone(), to: to.clone(), reader, size, is_device, lost })
    }
}

/// A target opened for writing: a temporary file next to it (removed
/// unless committed), or the block device itself.
struct Opened {
    checked: Checked,
    tmp: PathBuf,
    out: fs::File,
    cleanup: TempGuard,
}

impl Opened {
    fn new(checked: Checked) -> Result<Opened> {
        let to = &checked.to;
        if checked.is_device {
            let out = open_device(to, true)?;
            return Ok(Opened { tmp: to.clone(), out, cleanup: TempGuard(None), checked });
        }
        // Exclusive, never through a symlink, under a name no one can
        // predict: the target's directory may be writable by others.
        let (tmp, out) = crate::newfile::create_temp_beside(to, crate::newfile::PRIVATE_FILE).map_err(|e| Error::io_path("cannot create a temporary file beside", to, e))?;
        Ok(Opened { cleanup: TempGuard(Some(tmp.clone())), tmp, out, checked })
    }

    /// Writes the disk in `format` and makes it durable; returns bytes written.
    /// `together`: how many disks are being restored at the same time.
    #[allow(clippy::too_many_arguments)]
    fn write(&self, vault: &Vault, point: &PointRow, format: TargetFormat, together: usize, progress: &dyn Progress, stop: &(dyn Fn() -> bool + Sync)) -> Result<u64> {
        let (out, tmp, c) = (&self.out, &self.tmp, &self.checked);
        let (reader, size) = (&c.reader, c.size);
        let written = match format {
            TargetFormat::Raw => {
                if !c.is_device {
                    out.set_len(size).ctx(|| format!("size {}", tmp.display()))?;
                }
                write_blocks(vault, reader, &TargetFile::new(out, tmp), c.is_device, &c.lost, together, progress, stop)?
            }
            TargetFormat::VhdFixed => {
                let data = vhd::vhd_data_size(size);
                out.set_len(data + vhd::FOOTER_SIZE).ctx(|| format!("size {}", tmp.display()))?;
                let n = write_blocks(vault, reader, &TargetFile::new(out, tmp), false, &c.lost, together, progress, stop)?;
                let (uid, ts) = vhd_identity(point, &c.disk);
                out.write_all_at(&vhd::fixed_footer(size, uid, ts), data).ctx(|| format!("write {}", tmp.display()))?;
                n + vhd::FOOTER_SIZE
            }
            TargetFormat::VhdDynamic => {
                let ranges = data_ranges(reader)?;
                let (uid, ts) = vhd_identity(point, &c.disk);
                let mut n = 0u64;
                vhd::write_dynamic(out, size, &ranges, uid, ts, &mut counted_fill(reader, &mut n, progress, stop))?;
                n
            }
            TargetFormat::Qcow2 => {
                let ranges = data_ranges(reader)?;
                let mut n = 0u64;
                crate::image::qcow2::write_image(tmp, size, &ranges, &mut counted_fill(reader, &mut n, progress, stop))?;
                n
            }
        };
        out.sync_all().ctx(|| format!("fsync {}", tmp.display()))?;
        Ok(written)
    }

    /// Puts a complete file under its name.
    fn commit(self) -> Result<Checked> {
        if !self.checked.is_device {
            let to = &self.checked.to;
            fs::rename(&self.tmp, to).map_err(|e| Error::io_path("cannot rename into", to, e))?;
            std::mem::forget(self.cleanup);
        }
        Ok(self.checked)
    }
}

/// Opens block device `to` with O_EXCL, which for a block device means
/// "not mounted, not held by another exclusive opener" (the kernel answers
/// EBUSY otherwise): a restore never writes under a mounted file system,
/// a RAID member or a device-mapper volume in use.
fn open_device(to: &Path, write: bool) -> Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    match OpenOptions::new().read(true).write(write).custom_flags(libc::O_EXCL).open(to) {
        Ok(f) => Ok(f),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(Error::InvalidInput(format!(
            "{} is in use (mounted, or held by another program or device-mapper/RAID): unmount it first; nothing was written",
            to.display()
        ))),
        Err(e) => Err(Error::io_path("cannot open", to, e)),
    }
}

struct TempGuard(Option<PathBuf>);
impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

/// Byte ranges [start, end) of a disk.
type Ranges = Vec<(u64, u64)>;

/// Damage met by a restore: the chunks recorded as damaged, whether to go
/// on past damage, and the byte ranges left as zeros for it.
struct Lost {
    known: Arc<HashSet<ChunkId>>,
    partial: bool,
    ranges: Mutex<Vec<(u64, u64)>>,
}

impl Lost {
    /// The byte ranges of the disk whose chunks are recorded as damaged or
    /// whose map pages cannot be read, and the first such chunk. Walks the
    /// map only when the vault records any damage.
    fn recorded_in(&self, reader: &DiskReader) -> Result<(Ranges, Option<ChunkId>)> {
        let mut first_id = None;
        if self.known.is_empty() {
            return Ok((Vec::new(), first_id));
        }
        let (bs, size, blocks) = (reader.block_size(), reader.size(), reader.map().blocks());
        let mut out = Vec::new();
        for page in 0..blocks.div_ceil(FANOUT as u64) {
            let first = page * FANOUT as u64;
            let span = |from: u64, n: u64| (from * bs, ((from + n) * bs).min(size));
            match reader.map().leaf(page) {
                Ok(ids) => {
                    for (i, id) in ids.iter().enumerate().take((blocks - first) as usize) {
                        if self.known.contains(id) {
                            first_id.get_or_insert(*id);
                            out.push(span(first + i as u64, 1));
                        }
                    }
                }
                Err(_) => out.push(span(first, FANOUT as u64)),
            }
        }
        Ok((merge(out), first_id))
    }

    /// Takes the error met writing `len` bytes at `off`: with `partial`,
    /// notes the range as lost (it stays zero) and goes on.
    fn met(&self, e: Error, off: u64, len: u64) -> Result<()> {
        if !self.partial || matches!(e, Error::Interrupted) {
            return Err(in_range(e, off, len as usize));
        }
        log::debug!("disk bytes {off}..{}: {e}", off + len);
        self.ranges.lock().unwrap().push((off, off + len));
        Ok(())
    }

    fn ranges(&self) -> Vec<(u64, u64)> {
        merge(std::mem::take(&mut *self.ranges.lock().unwrap()))
    }
}

/// Sorted, with touching ranges joined.
fn merge(mut r: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (s, e) in r {
        match out.last_mut() {
            Some(last) if last.1 >= s => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// `0..65536, 131072..196608` (the first ten, then how many more).
fn name_ranges(r: &[(u64, u64)]) -> String {
    let mut s: Vec<String> = r.iter().take(10).map(|(a, b)| format!("{a}..{b}")).collect();
    if r.len() > 10 {
        s.push(format!("and {} more ranges", r.len() - 10));
    }
    s.join(", ")
}

/// What the container writers (dynamic VHD, qcow2) call for each stretch of
/// data they lay out: it is read from the point into `buf`, counted in `n`
/// and in `progress`, and stops the restore once `stop` says so.
fn counted_fill<'a>(
    reader: &'a DiskReader,
    n: &'a mut u64,
    progress: &'a dyn Progress,
    stop: &'a (dyn Fn() -> bool + Sync),
) -> impl FnMut(u64, &mut [u8]) -> Result<()> + 'a {
    move |off, buf| {
        if stop() {
            return Err(Error::Interrupted);
        }
        reader.read_at(buf, off)?;
        *n += buf.len() as u64;
        progress.advance(buf.len() as u64);
        Ok(())
    }
}

/// Byte ranges of the disk's non-zero blocks, merged.
pub fn data_ranges(reader: &DiskReader) -> Result<Vec<std::ops::Range<u64>>> {
    let (bs, size) = (reader.block_size(), reader.size());
    let mut out: Vec<std::ops::Range<u64>> = Vec::new();
    let blocks = reader.map().blocks();
    for page in 0..blocks.div_ceil(FANOUT as u64) {
        let ids = reader.map().leaf(page)?;
        for (i, id) in ids.iter().enumerate() {
            let index = page * FANOUT as u64 + i as u64;
            if index >= blocks || id.is_zero() {
                continue;
            }
            let (s, e) = (index * bs, ((index + 1) * bs).min(size));
            match out.last_mut() {
                Some(last) if last.end == s => last.end = e,
                _ => out.push(s..e),
            }
        }
    }
    Ok(out)
}

/// Blocks a restore worker writes in one go: those of one window of the
/// disk that one frame holds (decoded once), or a stretch of zero blocks
/// (`frame` None).
struct Job {
    frame: Option<ChunkLocation>,
    /// (block index, chunk id, its offset in the frame's decoded bytes)
    blocks: Vec<(u64, ChunkId, u32)>,
}

/// Disk blocks whose chunks are gathered by frame before any is handed
/// out (256 MiB of 64 KiB blocks). A frame stays whole in a window even
/// where later points replaced some of its blocks, or where another stretch
/// of the disk has the same content, so it is read and decoded once per
/// window instead of once per stretch; the window bounds the memory that
/// takes (about 50 bytes a block) and the wait before the first write.
const WINDOW_BLOCKS: u64 = 4096;

/// Zeros written at once onto a device (an aligned buffer per worker).
const ZERO_WRITE: usize = 1 << 20;

/// Blocks per job at most: a chunk that many blocks of a window share (a
/// disk filled with one pattern) is still written by several workers.
const JOB_BLOCKS: usize = 256;

/// Writes every non-zero block at its offset (and zero blocks too when
/// `write_zeros`, for devices that may hold old data). Returns bytes written.
///
/// This thread walks the map and looks every chunk up in one read
/// transaction (one SQLite snapshot, no per-statement locking), and hands
/// the blocks out by frame, window by window; workers only read,
/// decompress, check and pwrite.
#[allow(clippy::too_many_arguments)]
fn write_blocks(
    vault: &Vault,
    reader: &DiskReader,
    out: &TargetFile,
    write_zeros: bool,
    lost: &Lost,
    together: usize,
    progress: &dyn Progress,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<u64> {
    let (bs, size) = (reader.block_size(), reader.size());
    let blocks = reader.map().blocks();
    // Direct writes wait for the device: twice as many workers as cores
    // keep it busy while the others decode (4 against 2 on two cores: the
    // benchmark's two disks in 4.2–4.5 s against 4.5–5.5 s). Disks
    // restored together share twice that, so that a machine with many
    // disks does not get a crowd of threads and buffers.
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2);
    let per_disk = if out.is_direct() { 2 * cores } else { cores };
    let workers = (2 * per_disk / together).clamp(1, per_disk);
    let written = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let index = vault.index_reader()?;
    let packs = vault.packs();
    let (tx, rx) = bounded::<Job>(workers * 2);
    std::thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        for _ in 0..workers {
            let rx = rx.clone();
            let (written, failed) = (&written, &failed);
            handles.push(s.spawn(move || -> Result<()> {
                let mut zeros = IoBuf::new(0);
                zeros.resize(ZERO_WRITE, 0);
                let mut frame = FrameBuf::default();
                for job in rx.iter() {
                    let r = write_job(&job, packs, out, &mut frame, &zeros, bs, size, written, lost, write_zeros);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                        return r;
                    }
                }
                Ok(())
            }));
        }
        drop(rx);
        let walk = || -> Result<()> {
            let _snapshot = index.conn().unchecked_transaction()?;
            let mut window = Window::default();
            for page in 0..blocks.div_ceil(FANOUT as u64) {
                let ids = match reader.map().leaf(page) {
                    Ok(ids) => ids,
                    Err(e) => {
                        let first = page * FANOUT as u64;
                        let n = (blocks - first).min(FANOUT as u64);
                        lost.met(e, first * bs, (n * bs).min(size - first * bs))?;
                        if write_zeros {
                            (first..first + n).for_each(|b| window.add_zero(b));
                        }
                        progress.advance((n * bs).min(size - first * bs));
                        continue;
                    }
                };
                for (i, id) in ids.iter().enumerate() {
                    let index_no = page * FANOUT as u64 + i as u64;
                    if index_no >= blocks {
                        break;
                    }
                    if stop() {
                        return Err(Error::Interrupted);
                    }
                    if failed.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    if index_no.is_multiple_of(WINDOW_BLOCKS) && !window.send(&tx) {
                        return Ok(());
                    }
                    if !id.is_zero() {
                        let damaged = lost.known.contains(id);
                        match if damaged { None } else { index.chunk_location(id)? } {
                            Some(loc) => window.add(loc, index_no, *id),
                            None => {
                                let why = if damaged { "is recorded as damaged" } else { "is referenced but missing from the index" };
                                lost.met(Error::Corrupt(format!("chunk {id} {why}")), index_no * bs, bs.min(size - index_no * bs))?;
                                if write_zeros {
                                    window.add_zero(index_no);
                                }
                            }
                        }
                    } else if write_zeros {
                        window.add_zero(index_no);
                    }
                    progress.advance(bs.min(size - index_no * bs));
                }
            }
            window.send(&tx);
            Ok(())
        };
        let walked = walk();
        drop(tx);
        for h in handles {
            h.join().expect("restore worker panicked")?;
        }
        walked
    })?;
    Ok(written.into_inner())
}

/// The jobs of one window of the disk, in the order their first block
/// comes, so that writes go forward through the disk.
#[derive(Default)]
struct Window {
    jobs: Vec<Job>,
    by_frame: HashMap<(String, u64), usize>,
}

impl Window {
    fn add(&mut self, loc: ChunkLocation, index: u64, id: ChunkId) {
        let inner = loc.inner;
        let key = (loc.pack.clone(), loc.offset);
        if let Some(job) = self.by_frame.get(&key).map(|&j| &mut self.jobs[j]).filter(|j| j.blocks.len() < JOB_BLOCKS) {
            job.blocks.push((index, id, inner));
            return;
        }
        self.by_frame.insert(key, self.jobs.len());
        self.jobs.push(Job { frame: Some(loc), blocks: vec![(index, id, inner)] });
    }

    fn add_zero(&mut self, index: u64) {
        match self.jobs.last_mut() {
            Some(j) if j.frame.is_none() && j.blocks.len() < JOB_BLOCKS && j.blocks.last().is_some_and(|b| b.0 + 1 == index) => {
                j.blocks.push((index, ChunkId::ZERO, 0))
            }
            _ => self.jobs.push(Job { frame: None, blocks: vec![(index, ChunkId::ZERO, 0)] }),
        }
    }

    /// Hands the window's jobs out; false once the workers are gone.
    fn send(&mut self, tx: &crossbeam_channel::Sender<Job>) -> bool {
        self.by_frame.clear();
        self.jobs.drain(..).all(|j| tx.send(j).is_ok())
    }
}

/// Writes the blocks of `job`, each run of them that lies consecutively
/// both on the disk and in the frame with one write straight from the
/// decoded frame (whose buffer is aligned for direct I/O).
#[allow(clippy::too_many_arguments)]
fn write_job(
    job: &Job,
    packs: &PackFiles,
    out: &TargetFile,
    frame: &mut FrameBuf,
    zeros: &[u8],
    bs: u64,
    size: u64,
    written: &AtomicU64,
    lost: &Lost,
    write_zeros: bool,
) -> Result<()> {
    let span = |i: u64| (i * bs, bs.min(size - i * bs) as usize);
    let Some(loc) = &job.frame else {
        // Zero blocks come in consecutive stretches (Window::add_zero):
        // written a buffer at a time, not a block at a time.
        let (mut off, _) = span(job.blocks[0].0);
        let end = {
            let (last, len) = span(job.blocks[job.blocks.len() - 1].0);
            last + len as u64
        };
        while off < end {
            let n = zeros.len().min((end - off) as usize);
            out.write_at(&zeros[..n], off)?;
            written.fetch_add(n as u64, Ordering::Relaxed);
            off += n as u64;
        }
        return Ok(());
    };
    // A block that cannot be had: an error, or with `partial` a lost range
    // (zeros, written out on a device that may hold old data).
    let skip = |e: Error, off: u64, len: usize| -> Result<()> {
        lost.met(e, off, len as u64)?;
        let mut at = off;
        while write_zeros && at < off + len as u64 {
            let n = zeros.len().min((off + len as u64 - at) as usize);
            out.write_at(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    };
    let f = match frame.read(packs, loc) {
        Ok(f) => f,
        Err(e) if !lost.partial => return Err(in_range(e, span(job.blocks[0].0).0, bs as usize)),
        Err(e) => {
            let msg = e.to_string();
            for &(index, _, _) in &job.blocks {
                let (off, len) = span(index);
                skip(Error::Corrupt(msg.clone()), off, len)?;
            }
            return Ok(());
        }
    };
    let what = format_args!("pack {}", loc.pack);
    // (disk offset, offset in the frame, length) of the run being gathered
    let mut run: Option<(u64, usize, usize)> = None;
    for &(index, id, inner) in &job.blocks {
        let (off, len) = span(index);
        if let Err(e) = f.checked_slice(&id, inner, len as u32, &what) {
            if let Some((d, i, l)) = run.take() {
                out.write_at(&f.raw[i..i + l], d)?;
            }
            skip(e, off, len)?;
            continue;
        }
        let inner = inner as usize;
        run = match run {
            Some((d, i, l)) if d + l as u64 == off && i + l == inner => Some((d, i, l + len)),
            Some((d, i, l)) => {
                out.write_at(&f.raw[i..i + l], d)?;
                Some((off, inner, len))
            }
            None => Some((off, inner, len)),
        };
        written.fetch_add(len as u64, Ordering::Relaxed);
    }
    if let Some((d, i, l)) = run {
        out.write_at(&f.raw[i..i + l], d)?;
    }
    Ok(())
}

/// Adds the disk bytes to a damage report.
fn in_range(e: Error, off: u64, len: usize) -> Error {
    match e {
        Error::Corrupt(m) => Error::Corrupt(format!("{m} (disk bytes {off}..{})", off + len as u64)),
        e => e,
    }
}
