//! Raw images and block devices.

use std::fs::File;
use std::ops::Range;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::{DiskSource, SourceFile};
use crate::error::{Error, IoContext, Result};

pub struct RawSource {
    src: SourceFile,
    size: u64,
    block_device: bool,
}

impl RawSource {
    pub fn file(file: File, path: &Path) -> Result<Self> {
        let size = file.metadata().ctx(|| format!("cannot stat {}", path.display()))?.len();
        Ok(RawSource { src: SourceFile::new(file, path), size, block_device: false })
    }

    pub fn block_device(file: File, path: &Path) -> Result<Self> {
        // BLKGETSIZE64 would also do; seeking to the end is portable across
        // device types and gives the same answer.
        let size = unsafe { libc::lseek64(file.as_raw_fd(), 0, libc::SEEK_END) };
        if size < 0 {
            return Err(Error::io_path("cannot size block device", path, std::io::Error::last_os_error()));
        }
        Ok(RawSource { src: SourceFile::new(file, path), size: size as u64, block_device: true })
    }
}

impl DiskSource for RawSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.src.read_at(buf, offset)
    }

    #[allow(clippy::single_range_in_vec_init)] // one range covering the device, on purpose
    fn data_ranges(&self) -> Result<Vec<Range<u64>>> {
        if self.block_device {
            return Ok(vec![0..self.size]);
        }
        data_ranges_of(self.src.file(), self.size, self.src.path())
    }

    fn kind(&self) -> &'static str {
        if self.block_device { "block-device" } else { "raw" }
    }

    fn set_direct(&self, on: bool) {
        self.src.set_direct(on);
    }

    fn will_read(&self, offset: u64, len: u64) {
        self.src.will_read(offset, len);
    }
}

/// Walks a file's data extents with SEEK_DATA/SEEK_HOLE. Filesystems without
/// hole support report one extent covering the whole file, which is correct.
#[allow(clippy::single_range_in_vec_init)] // "all of it" is one range, on purpose
pub fn data_ranges_of(file: &File, size: u64, path: &Path) -> Result<Vec<Range<u64>>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        let data = unsafe { libc::lseek64(fd, pos as i64, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ENXIO) => break, // no more data after pos
                Some(libc::EINVAL) if out.is_empty() => return Ok(vec![0..size]), // no SEEK_DATA support
                _ => return Err(Error::io_path("SEEK_DATA on", path, err)),
            }
        }
        let hole = unsafe { libc::lseek64(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(Error::io_path("SEEK_HOLE on", path, std::io::Error::last_os_error()));
        }
        let (start, end) = (data as u64, (hole as u64).min(size));
        if start >= end {
            break;
        }
        out.push(start..end);
        pos = end;
    }
    Ok(out)
}
