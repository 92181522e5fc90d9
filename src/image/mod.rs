//! Disk sources and targets. A backup reads any [`DiskSource`]: a raw image
//! (sparse-aware), a fixed or dynamic VHD read natively, a qcow2 image (with
//! its backing chain), an NBD export, or a block device. [`open_source`],
//! which every backup goes through, refuses formats there is no reader for
//! yet (VMDK, VHDX) by their magic, by name.
//! Restores write raw (sparse), VHD (fixed or dynamic) or qcow2 targets.
//!
//! Sources are `Sync` and read with positional I/O, so the backup pipeline can
//! have several readers in flight without a shared file cursor.

pub mod changed;
mod direct;
pub mod nbd;
pub mod qcow2;
pub mod raw;
pub mod vhd;

pub use direct::{open_direct, IoBuf, SourceFile, TargetFile, DIRECT_ALIGN};

use std::fs::File;
use std::ops::Range;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

pub trait DiskSource: Send + Sync {
    /// Logical size of the disk in bytes (for a VHD: the virtual size).
    fn size(&self) -> u64;
    /// Fill `buf` with the disk's bytes at `offset`; `offset + buf.len()` must
    /// not pass `size()`. Unallocated parts read as zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Byte ranges that may hold non-zero data, sorted and disjoint. Everything
    /// outside them reads as zeros and is never read by a backup.
    fn data_ranges(&self) -> Result<Vec<Range<u64>>>;
    /// What kind of source this is, for messages and the recovery point.
    fn kind(&self) -> &'static str;
    /// A hint that `offset..offset + len` will be read soon (a backup asks a
    /// few MiB ahead, so the device has more than the kernel's readahead in
    /// flight). The default does nothing.
    fn will_read(&self, _offset: u64, _len: u64) {}
    /// Whether to read around the page cache where the source can (see
    /// direct.rs); sources that cannot ignore it.
    fn set_direct(&self, _on: bool) {}
    /// Extents written since the source's own change tracker was started
    /// (an NBD export's `qemu:dirty-bitmap:NAME`), sorted and disjoint;
    /// `None` when the source has no such tracker.
    fn dirty_ranges(&self) -> Result<Option<Vec<Range<u64>>>> {
        Ok(None)
    }
}

/// Asks the kernel to start reading `offset..offset + len` of `file` (see
/// [`DiskSource::will_read`]).
pub(crate) fn will_need(file: &File, offset: u64, len: u64) {
    advise(file, offset, len, libc::POSIX_FADV_WILLNEED);
}

/// posix_fadvise(2): only a hint, so an error changes nothing and is ignored.
fn advise(file: &File, offset: u64, len: u64, advice: libc::c_int) {
    unsafe {
        libc::posix_fadvise(std::os::unix::io::AsRawFd::as_raw_fd(file), offset as i64, len as i64, advice);
    }
}

/// Image formats kluis has no reader for, by the magic at offset 0 (from
/// each format's specification: qcow2 `QFI\xfb`; VMDK sparse extent `KDMV`,
/// and a VMDK descriptor file's first line; VHDX's file type identifier).
/// Backing one up as raw bytes would store the container, not the disk.
const FOREIGN_FORMATS: [(&[u8], &str); 4] = [
    (b"QFI\xfb", "qcow2"),
    (b"KDMV", "VMDK"),
    (b"# Disk DescriptorFile", "VMDK descriptor"),
    (b"vhdxfile", "VHDX"),
];

/// The name of the foreign image format `file` starts with, if any.
fn foreign_format(file: &File, path: &Path) -> Result<Option<&'static str>> {
    let mut head = [0u8; 32];
    let mut got = 0;
    while got < head.len() {
        match std::os::unix::fs::FileExt::read_at(file, &mut head[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io_path("cannot read", path, e)),
        }
    }
    Ok(FOREIGN_FORMATS.iter().find(|(magic, _)| head[..got].starts_with(magic)).map(|&(_, name)| name))
}

/// Opens a disk source, telling the format from the content: an NBD URL
/// (`nbd://`, `nbd+unix://`) is an export; a file starting with `QFI\xfb` is
/// qcow2 (refused while a QEMU holds it); a file whose last 512 bytes (or,
/// for an odd-sized dynamic VHD, first 512) carry the `conectix` cookie is
/// a VHD; a block device is read as one; anything else is raw. A VMDK or
/// VHDX image (file or device), or a qcow2 on a block device, is refused by
/// name.
pub fn open_source(path: &Path) -> Result<Box<dyn DiskSource>> {
    if let Some(url) = path.to_str().filter(|s| nbd::is_url(s)) {
        return Ok(Box::new(nbd::NbdSource::open(url, None)?));
    }
    use std::os::unix::fs::FileTypeExt;
    let file = crate::newfile::open_to_read(path).map_err(|e| Error::io_path("cannot open disk", path, e))?;
    let meta = file.metadata().ctx(|| format!("cannot stat {}", path.display()))?;
    let ft = meta.file_type();
    // Disks are read front to back: ask for the larger sequential readahead window.
    advise(&file, 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    if (ft.is_file() || ft.is_block_device())
        && let Some(name) = foreign_format(&file, path)?
    {
        match (name, ft.is_file()) {
            ("qcow2", true) => {} // read below
            ("qcow2", false) => {
                return Err(Error::InvalidInput(format!(
                    "{} is a block device holding a qcow2 image; kluis reads qcow2 from files (or back it up through an NBD export of it)",
                    path.display()
                )));
            }
            _ => {
                return Err(Error::InvalidInput(format!(
                    "{} is a {name} image; kluis reads raw, VHD and qcow2 images and block devices",
                    path.display()
                )));
            }
        }
    }
    if ft.is_block_device() {
        return Ok(Box::new(raw::RawSource::block_device(file, path)?));
    }
    if !ft.is_file() {
        return Err(Error::InvalidInput(format!(
            "{}: not a regular file or block device",
            path.display()
        )));
    }
    if qcow2::looks_like_qcow2(&file)? {
        qcow2::refuse_if_in_use(&file, path)?;
        return Ok(Box::new(qcow2::Qcow2Source::open(path, file)?));
    }
    if vhd::looks_like_vhd(&file, meta.len())? {
        return Ok(Box::new(vhd::VhdSource::open(file, path)?));
    }
    Ok(Box::new(raw::RawSource::file(file, path)?))
}

/// Output formats of `restore`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetFormat {
    Raw,
    VhdFixed,
    VhdDynamic,
    Qcow2,
}

impl TargetFormat {
    /// Every name `--format` accepts (`vhd-fixed` is an alias of `vhd`).
    pub const NAMES: [&str; 5] = ["raw", "vhd", "vhd-fixed", "vhd-dynamic", "qcow2"];

    /// The name `--format` takes.
    pub fn name(self) -> &'static str {
        match self {
            TargetFormat::Raw => "raw",
            TargetFormat::VhdFixed => "vhd",
            TargetFormat::VhdDynamic => "vhd-dynamic",
            TargetFormat::Qcow2 => "qcow2",
        }
    }
}

impl std::str::FromStr for TargetFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "raw" => Ok(TargetFormat::Raw),
            "vhd" | "vhd-fixed" => Ok(TargetFormat::VhdFixed),
            "vhd-dynamic" => Ok(TargetFormat::VhdDynamic),
            "qcow2" => Ok(TargetFormat::Qcow2),
            _ => Err(Error::InvalidInput(format!(
                "unknown format {s:?} (expected raw, vhd, vhd-dynamic or qcow2)"
            ))),
        }
    }
}
