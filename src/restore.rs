//! Restoring a disk of a recovery point to a raw (sparse) or VHD file, or
//! onto a block device.
//!
//! Files are written under a temporary name in the target's directory and
//! renamed into place when complete, so an interrupted restore never leaves a
//! half-written file under the requested name. Chunks are fetched, checked
//! and decompressed by several threads that write with pwrite(2).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::bounded;

use crate::catalog::{Catalog, ChunkLocation, PointRow};
use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use crate::image::{vhd, TargetFormat};
use crate::progress::Progress;
use crate::recovery_point::{DiskReader, FANOUT};
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
            write_blocks(vault, &reader, &out, is_device, progress, cancel)?
        }
        TargetFormat::VhdFixed => {
            let data = vhd::vhd_data_size(size);
            out.set_len(data + vhd::FOOTER_SIZE).ctx(|| format!("size {}", tmp.display()))?;
            let n = write_blocks(vault, &reader, &out, false, progress, cancel)?;
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

/// Writes every non-zero block at its offset (and zero blocks too when
/// `write_zeros`, for devices that may hold old data). Returns bytes written.
///
/// This thread walks the map and looks every chunk up in one read
/// transaction (one SQLite snapshot, no per-statement locking); workers get
/// ready locations and only read, check, decompress and pwrite.
fn write_blocks(
    vault: &Vault,
    reader: &DiskReader,
    out: &File,
    write_zeros: bool,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<u64> {
    let (bs, size) = (reader.block_size(), reader.size());
    let blocks = reader.map().blocks();
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2);
    let written = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let index = Catalog::open_reader(&vault.index_path())?;
    let packs = vault.packs();
    let (tx, rx) = bounded::<(u64, ChunkId, Option<ChunkLocation>)>(workers * 16);
    std::thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        for _ in 0..workers {
            let rx = rx.clone();
            let (written, failed) = (&written, &failed);
            handles.push(s.spawn(move || -> Result<()> {
                let zeros = vec![0u8; bs as usize];
                for (index, id, loc) in rx.iter() {
                    let off = index * bs;
                    let len = bs.min(size - off) as usize;
                    let r = match loc {
                        None => out.write_all_at(&zeros[..len], off),
                        Some(loc) => match packs.read_chunk(&loc, id) {
                            Ok(data) => out.write_all_at(&data, off),
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                return Err(match e {
                                    Error::Corrupt(m) => Error::Corrupt(format!("{m} (disk bytes {off}..{})", off + len as u64)),
                                    e => e,
                                });
                            }
                        },
                    };
                    if let Err(e) = r {
                        failed.store(true, Ordering::Relaxed);
                        return Err(Error::io("write restored disk", e));
                    }
                    written.fetch_add(len as u64, Ordering::Relaxed);
                }
                Ok(())
            }));
        }
        drop(rx);
        let walk = || -> Result<()> {
            let _snapshot = index.conn().unchecked_transaction()?;
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
                        if tx.send((index_no, *id, loc)).is_err() {
                            return Ok(());
                        }
                    }
                    progress.advance(bs.min(size - index_no * bs));
                }
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
