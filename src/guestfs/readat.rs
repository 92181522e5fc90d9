//! Byte sources for the guest layer: a disk of a recovery point (through the
//! mount's [`OpenDisk`], so reads hit the shared chunk cache and never touch
//! SQLite), an in-memory image (tests, fuzzing) or a file; a [`Slice`] is a
//! partition's window onto one of them.
//!
//! Every read of a slice draws on its [`Fuel`]: each guest-filesystem
//! operation sets a budget before it starts, so a corrupt structure that
//! makes a parser loop (a cyclic cluster chain, a self-referencing extent
//! tree) ends in an error instead of a hung mount.

use std::io;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crate::browse::disk::{OpenDisk, Prefetch};
use crate::error::{Error, Result};

pub trait ReadAt: Send + Sync {
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; an error if that runs past the end.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// A hint that `[offset, offset + len)` will be read soon.
    fn will_need(&self, _offset: u64, _len: u64) {}
}

/// A disk of a recovery point, with the mount's readahead queue.
pub struct DiskReadAt {
    pub disk: Arc<OpenDisk>,
    pub prefetch: Prefetch,
}

impl ReadAt for DiskReadAt {
    fn size(&self) -> u64 {
        self.disk.size()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let n = self.disk.read_at(buf, offset)?;
        if n < buf.len() {
            return Err(past_end(offset, buf.len(), self.size()));
        }
        Ok(())
    }
    fn will_need(&self, offset: u64, len: u64) {
        self.disk.prefetch(&self.prefetch, offset, len);
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64).filter(|e| *e <= self.len() as u64);
        match end {
            Some(end) => {
                buf.copy_from_slice(&self[offset as usize..end as usize]);
                Ok(())
            }
            None => Err(past_end(offset, buf.len(), self.size())),
        }
    }
}

impl ReadAt for std::fs::File {
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset).map_err(|e| Error::io(format!("read {} bytes at {offset}", buf.len()), e))
    }
}

fn past_end(offset: u64, len: usize, size: u64) -> Error {
    Error::Corrupt(format!("read of {len} bytes at {offset} runs past the end ({size} bytes)"))
}

/// Bytes a guest operation may still read. Shared by the slice and the
/// filesystem that sets it; negative means spent.
#[derive(Clone, Default)]
pub struct Fuel(Arc<AtomicI64>);

/// Metadata any one operation may read before we call the structure cyclic.
pub const META_FUEL: i64 = 512 << 20;

impl Fuel {
    /// A budget of `bytes`.
    pub fn new(bytes: i64) -> Fuel {
        let fuel = Fuel::default();
        fuel.set(bytes);
        fuel
    }

    pub fn set(&self, bytes: i64) {
        self.0.store(bytes, Ordering::Relaxed);
    }
    /// Adds to what is left: for an operation whose work grows with what
    /// it finds (a listing, per entry).
    pub fn add(&self, bytes: i64) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }
    /// Budget for reading `len` bytes of file data plus the metadata to find them.
    pub fn set_for_read(&self, len: usize) {
        self.set(META_FUEL + 4 * len as i64);
    }
    fn spend(&self, n: usize) -> Result<()> {
        if self.0.fetch_sub(n as i64, Ordering::Relaxed) < n as i64 {
            return Err(Error::Corrupt("guest filesystem: read budget exhausted (a loop in its structures?)".into()));
        }
        Ok(())
    }
}

/// A window `[start, start+len)` of a byte source: one partition.
#[derive(Clone)]
pub struct Slice {
    inner: Arc<dyn ReadAt>,
    start: u64,
    len: u64,
    pub fuel: Fuel,
}

impl Slice {
    pub fn new(inner: Arc<dyn ReadAt>, start: u64, len: u64) -> Slice {
        let len = len.min(inner.size().saturating_sub(start));
        Slice { inner, start, len, fuel: Fuel::new(META_FUEL) }
    }

    pub fn whole(inner: Arc<dyn ReadAt>) -> Slice {
        let n = inner.size();
        Slice::new(inner, 0, n)
    }

    /// The same window with a read budget of its own, for work that runs
    /// outside the filesystem's lock.
    pub fn with_fuel(&self, bytes: i64) -> Slice {
        Slice { fuel: Fuel::new(bytes), ..self.clone() }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.fuel.spend(buf.len())?;
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= self.len => self.inner.read_exact_at(buf, self.start + offset),
            _ => Err(past_end(offset, buf.len(), self.len)),
        }
    }

    /// Passes on a hint that `[offset, offset + len)` will be read soon.
    pub fn will_need(&self, offset: u64, len: u64) {
        if offset < self.len {
            self.inner.will_need(self.start + offset, len.min(self.len - offset));
        }
    }

    /// Reads what there is (zero-filled past the end): for probing.
    pub fn read_upto(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        buf.fill(0);
        if offset >= self.len {
            return Ok(());
        }
        let n = buf.len().min((self.len - offset) as usize);
        self.read_exact_at(&mut buf[..n], offset)
    }
}

/// `Read + Seek` over a slice, for crates that want a std stream. Writes
/// fail: nothing under the mount is ever written.
pub struct Cursor {
    pub slice: Slice,
    pos: u64,
}

impl Cursor {
    pub fn new(slice: Slice) -> Cursor {
        Cursor { slice, pos: 0 }
    }
}

pub fn to_io(e: Error) -> io::Error {
    io::Error::other(e.to_string())
}

impl io::Read for Cursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.slice.len() {
            return Ok(0);
        }
        let n = buf.len().min((self.slice.len() - self.pos) as usize);
        self.slice.read_exact_at(&mut buf[..n], self.pos).map_err(to_io)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Seek for Cursor {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let new = match pos {
            io::SeekFrom::Start(p) => Some(p),
            io::SeekFrom::End(d) => self.slice.len().checked_add_signed(d),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

impl io::Write for Cursor {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::from_raw_os_error(libc::EROFS))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
