//! Restoring a disk of a recovery point to a raw (sparse) or VHD file, or
//! onto a block device.
//!
//! Files are written under a temporary name in the target's directory and
//! renamed into place when complete, so an interrupted restore never leaves a
//! half-written file under the requested name. Chunks are fetched, checked
//! and decompressed by several threads that write with pwrite(2), each run
//! of consecutive blocks at once, around the page cache where the target
//! allows it (image/direct.rs).

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::bounded;

use crate::catalog::{Catalog, ChunkLocation, PointRow};
use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use crate::image::{vhd, IoBuf, TargetFile, TargetFormat};
use crate::progress::Progress;
use crate::recovery_point::{DiskReader, FANOUT};
use crate::store::PackFiles;
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

#[allow(clippy::too_many_arguments)]
pub fn restore(
    vault: &Vault,
    point: &PointRow,
    disk: &str,
    to: &Path,
    format: TargetFormat,
    force: bool,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<RestoreReport> {
    let started = Instant::now();
    // Shared lock: gc waits, so no pack this restore reads is rewritten under it.
    let _lock = vault.lock(false, || log::warn!("waiting for a running gc to finish"))?;
    let reader = Arc::new(vault.disk_reader(point, disk)?);
    let size = reader.size();
    let is_device = fs::metadata(to).map(|m| m.file_type().is_block_device()).unwrap_or(false);
    if to.exists() && !force {
        return Err(Error::AlreadyExists(format!("{} exists; use --force to overwrite it", to.display())));
    }
    if is_device && format != TargetFormat::Raw {
        return Err(Error::InvalidInput(format!("{} is a block device: only --format raw can be written to it", to.display())));
    }
    if format != TargetFormat::Raw && size > vhd::MAX_SIZE {
        return Err(Error::InvalidInput(format!("disk {disk} is {size} bytes; VHD holds at most {} (use --format raw)", vhd::MAX_SIZE)));
    }
    let tmp = if is_device { to.to_owned() } else { temp_name(to) };
    let out = if is_device {
        OpenOptions::new().write(true).open(to).map_err(|e| Error::io_path("cannot open", to, e))?
    } else {
        OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).map_err(|e| Error::io_path("cannot create", &tmp, e))?
    };
    let cleanup = TempGuard(if is_device { None } else { Some(tmp.clone()) });
    if is_device {
        let dev_size = unsafe { libc::lseek64(std::os::unix::io::AsRawFd::as_raw_fd(&out), 0, libc::SEEK_END) };
        if (dev_size as u64) < size {
            return Err(Error::InvalidInput(format!("{} holds {dev_size} bytes; the disk needs {size}", to.display())));
        }
    }
    progress.start(&format!("{}/{disk}", point.item), size);
    let written = match format {
        TargetFormat::Raw => {
            if !is_device {
                out.set_len(size).ctx(|| format!("size {}", tmp.display()))?;
            }
            write_blocks(vault, &reader, &TargetFile::new(&out, &tmp), is_device, progress, cancel)?
        }
        TargetFormat::VhdFixed => {
            let data = vhd::vhd_data_size(size);
            out.set_len(data + vhd::FOOTER_SIZE).ctx(|| format!("size {}", tmp.display()))?;
            let n = write_blocks(vault, &reader, &TargetFile::new(&out, &tmp), false, progress, cancel)?;
            let (uid, ts) = vhd_identity(point, disk);
            out.write_all_at(&vhd::fixed_footer(size, uid, ts), data).ctx(|| format!("write {}", tmp.display()))?;
            n + vhd::FOOTER_SIZE
        }
        TargetFormat::VhdDynamic => {
            let ranges = data_ranges(&reader)?;
            let (uid, ts) = vhd_identity(point, disk);
            let mut n = 0u64;
            vhd::write_dynamic(&out, size, &ranges, uid, ts, &mut |off, buf| {
                if cancel.load(Ordering::Relaxed) {
                    return Err(Error::Interrupted);
                }
                reader.read_at(buf, off)?;
                n += buf.len() as u64;
                progress.advance(buf.len() as u64);
                Ok(())
            })?;
            n
        }
    };
    out.sync_all().ctx(|| format!("fsync {}", tmp.display()))?;
    progress.finish();
    if !is_device {
        fs::rename(&tmp, to).map_err(|e| Error::io_path("cannot rename into", to, e))?;
        std::mem::forget(cleanup);
    }
    Ok(RestoreReport {
        item: point.item.clone(),
        point: point.id.to_hex(),
        disk: disk.to_owned(),
        target: to.display().to_string(),
        format: format.name().to_owned(),
        size,
        bytes_written: written,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn temp_name(to: &Path) -> PathBuf {
    let name = to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    to.with_file_name(format!(".{name}.kluis-tmp-{}", std::process::id()))
}

struct TempGuard(Option<PathBuf>);
impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = fs::remove_file(p);
        }
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

/// Blocks a restore worker writes in one go: all from one frame (decoded
/// once), or zero blocks (`frame` None).
struct Job {
    frame: Option<ChunkLocation>,
    /// (block index, chunk id, its offset in the frame's decoded bytes)
    blocks: Vec<(u64, ChunkId, u32)>,
}

/// Writes every non-zero block at its offset (and zero blocks too when
/// `write_zeros`, for devices that may hold old data). Returns bytes written.
///
/// This thread walks the map and looks every chunk up in one read
/// transaction (one SQLite snapshot, no per-statement locking), and hands
/// the blocks out by frame, so that each worker decodes a different frame
/// and no frame is decoded twice in a row; workers only read, decompress,
/// check and pwrite.
fn write_blocks(
    vault: &Vault,
    reader: &DiskReader,
    out: &TargetFile,
    write_zeros: bool,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<u64> {
    let (bs, size) = (reader.block_size(), reader.size());
    let blocks = reader.map().blocks();
    // Direct writes wait for the device: twice as many workers as cores
    // keep it busy while the others decode (4 against 2 on two cores: the
    // benchmark's two disks in 4.2–4.5 s against 4.5–5.5 s).
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2);
    let workers = if out.is_direct() { 2 * cores } else { cores };
    let written = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let index = Catalog::open_reader(&vault.index_path())?;
    let packs = vault.packs();
    let (tx, rx) = bounded::<Job>(workers * 2);
    std::thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        for _ in 0..workers {
            let rx = rx.clone();
            let (written, failed) = (&written, &failed);
            handles.push(s.spawn(move || -> Result<()> {
                let zeros = vec![0u8; bs as usize];
                let mut run = IoBuf::new(0);
                for job in rx.iter() {
                    let r = write_job(&job, packs, out, &mut run, &zeros, bs, size, written);
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
            let mut job = Job { frame: None, blocks: Vec::new() };
            for page in 0..blocks.div_ceil(FANOUT as u64) {
                let ids = reader.map().leaf(page)?;
                for (i, id) in ids.iter().enumerate() {
                    let index_no = page * FANOUT as u64 + i as u64;
                    if index_no >= blocks {
                        break;
                    }
                    if cancel.load(Ordering::Relaxed) {
                        return Err(Error::Interrupted);
                    }
                    if failed.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    if !id.is_zero() || write_zeros {
                        let loc = if id.is_zero() {
                            None
                        } else {
                            Some(index.chunk_location(id)?.ok_or_else(|| {
                                Error::Corrupt(format!("chunk {id} (disk bytes {}..) is referenced but missing from the index", index_no * bs))
                            })?)
                        };
                        let same = match (&job.frame, &loc) {
                            (None, None) => true,
                            (Some(a), Some(b)) => a.pack == b.pack && a.offset == b.offset,
                            _ => false,
                        };
                        if !same || job.blocks.len() >= JOB_BLOCKS {
                            let next = Job { frame: loc.clone(), blocks: Vec::new() };
                            let done = std::mem::replace(&mut job, next);
                            if !done.blocks.is_empty() && tx.send(done).is_err() {
                                return Ok(());
                            }
                        }
                        job.blocks.push((index_no, *id, loc.map_or(0, |l| l.inner)));
                    }
                    progress.advance(bs.min(size - index_no * bs));
                }
            }
            if !job.blocks.is_empty() {
                let _ = tx.send(job);
            }
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

/// Zero blocks per job at most (a frame holds far fewer).
const JOB_BLOCKS: usize = 64;

/// Writes the blocks of `job`: each run of consecutive ones gathered in
/// `run` (aligned, for direct writes) and written at once.
#[allow(clippy::too_many_arguments)]
fn write_job(job: &Job, packs: &PackFiles, out: &TargetFile, run: &mut IoBuf, zeros: &[u8], bs: u64, size: u64, written: &AtomicU64) -> Result<()> {
    let span = |i: u64| (i * bs, bs.min(size - i * bs) as usize);
    // The job's disk bytes (jobs are never empty): blocks are in order.
    let (start, _) = span(job.blocks[0].0);
    let end = {
        let (off, len) = span(job.blocks[job.blocks.len() - 1].0);
        off + len as u64
    };
    let frame = match &job.frame {
        Some(loc) => Some((loc, packs.frame(loc).map_err(|e| in_range(e, start, (end - start) as usize))?)),
        None => None,
    };
    run.clear();
    let mut run_at = start;
    for &(index, id, inner) in &job.blocks {
        let (off, len) = span(index);
        let data = match &frame {
            None => &zeros[..len],
            Some((loc, f)) => {
                let what = format_args!("pack {}", loc.pack);
                f.checked_slice(&id, inner, len as u32, &what).map_err(|e| in_range(e, off, len))?
            }
        };
        if run_at + run.len() as u64 != off {
            out.write_at(run, run_at)?;
            run.clear();
            run_at = off;
        }
        run.extend_from_slice(data);
        written.fetch_add(len as u64, Ordering::Relaxed);
    }
    out.write_at(run, run_at)
}

/// Adds the disk bytes to a damage report.
fn in_range(e: Error, off: u64, len: usize) -> Error {
    match e {
        Error::Corrupt(m) => Error::Corrupt(format!("{m} (disk bytes {off}..{})", off + len as u64)),
        e => e,
    }
}
