//! `restore ITEM@RP --disk NAME --to EXISTING --in-place`: rewrites only
//! the blocks of an existing disk image that differ from the point — the
//! cloud vault's "replace existing disk", fast after a small mistake.
//!
//! Each block of EXISTING (a raw file or block device, or a qcow2 image;
//! the disk's size) is hashed with the vault's block hash and compared with
//! the point's block map; only blocks whose id differs are written, from
//! the point (all-zero blocks as zeros). Holes of EXISTING are not read:
//! they are zero blocks. The image must not be in use: QEMU's lock on it
//! refuses the restore (crate::image::qcow2::refuse_if_in_use).
//!
//! Not atomic, by nature: an interrupted in-place restore leaves EXISTING
//! part old, part restored, and running it again finishes the job (it
//! rewrites only what still differs).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::catalog::PointRow;
use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use crate::image::qcow2::{self, Qcow2Source};
use crate::image::raw::RawSource;
use crate::image::DiskSource;
use crate::progress::Progress;
use crate::recovery_point::FANOUT;
use crate::vault::Vault;

#[derive(Debug, serde::Serialize)]
pub struct InPlaceReport {
    pub item: String,
    pub point: String,
    pub disk: String,
    pub target: String,
    /// `raw` or `qcow2`.
    pub format: String,
    pub size: u64,
    /// Blocks compared, and of those rewritten.
    pub blocks: u64,
    pub blocks_written: u64,
    /// Bytes written into the target (the differing blocks).
    pub bytes_written: u64,
    /// Bytes of the target read to compare (its holes are not read).
    pub bytes_read: u64,
    pub seconds: f64,
}

/// The existing image, read and written where it is.
enum Target {
    Raw { read: RawSource, file: File },
    Qcow2(Qcow2Source),
}

impl Target {
    fn open(path: &Path) -> Result<Target> {
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| Error::io_path("cannot open", path, e))?;
        let ft = file.metadata().ctx(|| format!("cannot stat {}", path.display()))?.file_type();
        if ft.is_block_device() {
            return Ok(Target::Raw { read: RawSource::block_device(file.try_clone().ctx(|| format!("dup {}", path.display()))?, path)?, file });
        }
        if !ft.is_file() {
            return Err(Error::InvalidInput(format!("{}: not a regular file or block device", path.display())));
        }
        // QEMU locks raw images the same way as qcow2 ones.
        qcow2::refuse_if_in_use(&file, path)?;
        if qcow2::looks_like_qcow2(&file)? {
            return Ok(Target::Qcow2(Qcow2Source::open_rw(path, file)?));
        }
        let len = file.metadata().ctx(|| format!("cannot stat {}", path.display()))?.len();
        if crate::image::vhd::looks_like_vhd(&file, len)? {
            return Err(Error::InvalidInput(format!("{} is a VHD: an in-place restore writes raw or qcow2 images only", path.display())));
        }
        Ok(Target::Raw { read: RawSource::file(file.try_clone().ctx(|| format!("dup {}", path.display()))?, path)?, file })
    }

    fn source(&self) -> &dyn DiskSource {
        match self {
            Target::Raw { read, .. } => read,
            Target::Qcow2(q) => q,
        }
    }

    fn write(&self, buf: &[u8], offset: u64, path: &Path) -> Result<()> {
        match self {
            Target::Raw { file, .. } => file.write_all_at(buf, offset).ctx(|| format!("write {} bytes at {offset} of {}", buf.len(), path.display())),
            Target::Qcow2(q) => q.write_at(buf, offset),
        }
    }

    fn write_zeros(&self, offset: u64, len: u64, zeros: &[u8], path: &Path) -> Result<()> {
        match self {
            Target::Raw { .. } => self.write(&zeros[..len as usize], offset, path),
            Target::Qcow2(q) => q.write_zeroes(offset, len),
        }
    }

    fn sync(&self, path: &Path) -> Result<()> {
        match self {
            Target::Raw { file, .. } => file.sync_all().ctx(|| format!("fsync {}", path.display())),
            Target::Qcow2(q) => q.flush(),
        }
    }
}

/// Blocks compared per read of the target.
const RUN_BLOCKS: u64 = 64;

pub fn restore_in_place(vault: &Vault, point: &PointRow, disk: &str, to: &Path, progress: &dyn Progress, cancel: &AtomicBool) -> Result<InPlaceReport> {
    let started = Instant::now();
    let _lock = vault.lock(false, || log::warn!("waiting for a running gc to finish"))?;
    let reader = vault.disk_reader(point, disk)?;
    if !to.exists() {
        return Err(Error::NotFound(format!("{} does not exist: --in-place rewrites an existing disk image (leave out --in-place to make a new one)", to.display())));
    }
    let target = Target::open(to)?;
    let src = target.source();
    let (size, bs) = (reader.size(), reader.block_size());
    if src.size() != size {
        return Err(Error::InvalidInput(format!(
            "{} holds {} bytes and disk {disk} of the point {size}: an in-place restore needs an image of the disk's size",
            to.display(),
            src.size()
        )));
    }
    let data = src.data_ranges()?;
    let blocks = size.div_ceil(bs);
    let mut rep = InPlaceReport {
        item: point.item.clone(),
        point: point.id.to_hex(),
        disk: disk.to_owned(),
        target: to.display().to_string(),
        format: src.kind().to_owned(),
        size,
        blocks,
        blocks_written: 0,
        bytes_written: 0,
        bytes_read: 0,
        seconds: 0.0,
    };
    progress.start(&format!("{}/{disk} in place", point.item), size);
    let zeros = vec![0u8; bs as usize];
    let mut cur = vec![0u8; (RUN_BLOCKS * bs) as usize];
    let mut want = vec![0u8; bs as usize];
    let mut next_range = 0usize;
    let mut ids: std::sync::Arc<Vec<ChunkId>> = Default::default();
    let mut page_loaded = u64::MAX;
    let mut first = 0u64;
    while first < blocks {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        let n = RUN_BLOCKS.min(blocks - first);
        let (start, end) = (first * bs, ((first + n) * bs).min(size));
        while next_range < data.len() && data[next_range].end <= start {
            next_range += 1;
        }
        // Only the part of the run that touches the target's data is read.
        let has_data = next_range < data.len() && data[next_range].start < end;
        if has_data {
            src.read_at(&mut cur[..(end - start) as usize], start)?;
            rep.bytes_read += end - start;
        }
        for index in first..first + n {
            let page = index / FANOUT as u64;
            if page != page_loaded {
                ids = reader.map().leaf(page)?;
                page_loaded = page;
            }
            let point_id = ids[(index % FANOUT as u64) as usize];
            let (off, len) = (index * bs, bs.min(size - index * bs));
            let at = (off - start) as usize;
            let block = &cur[at..at + len as usize];
            let have = if !has_data || block.iter().all(|&b| b == 0) { ChunkId::ZERO } else { ChunkId::of(block) };
            if have == point_id {
                continue;
            }
            if point_id.is_zero() {
                target.write_zeros(off, len, &zeros, to)?;
            } else {
                let got = reader.read_at(&mut want[..len as usize], off)?;
                if got as u64 != len {
                    return Err(Error::Corrupt(format!("disk {disk}: short read of block {index} from the point")));
                }
                target.write(&want[..len as usize], off, to)?;
            }
            rep.blocks_written += 1;
            rep.bytes_written += len;
        }
        progress.advance(end - start);
        first += n;
    }
    target.sync(to)?;
    progress.finish();
    rep.seconds = started.elapsed().as_secs_f64();
    Ok(rep)
}
