//! Positional reads of a source image and writes of a restored one, through
//! O_DIRECT where an access allows it.
//!
//! A backup reads every byte of a disk once. Through the page cache that
//! costs a copy and the cache's bookkeeping for every page, and pushes out
//! what the host had cached: on this project's test VM a cold `dd` of a
//! 3 GiB image took 2.8–3.8 CPU seconds of system time buffered and
//! 0.10–0.14 s with O_DIRECT, and a full backup of the benchmark's images
//! went from 6.9–8.1 s to 5.8–5.9 s. So a source file is also opened with
//! O_DIRECT, and a read whose buffer, offset and length are aligned to
//! [`DIRECT_ALIGN`] (a backup's runs of blocks, read into an [`IoBuf`])
//! goes through it; any other read, and every read on a filesystem that
//! refuses O_DIRECT (tmpfs), goes through the page cache as before.
//!
//! Only a first backup reads this way ([`SourceFile::set_direct`]). An
//! incremental one is bound by how fast the disk is read, not by CPU (it
//! hashes, and compresses only what changed), and there the kernel's
//! readahead plus our hint 8 MiB ahead read faster than direct reads:
//! 1.37–1.45 s against 2.0–2.4 s (with one to three reads in flight) for a
//! cold incremental of the same images.
//!
//! A restore writes every byte of a disk once, and the same goes for its
//! output ([`TargetFile`]): through the page cache, each page is a fresh
//! allocation, a copy, and writeback that the final fsync waits for. A cold
//! restore of the benchmark's two disks took 4.8–5.9 s buffered and 4.2–4.6 s
//! direct (system time 2.2–3.8 → 0.3–0.6 s for the database disk); this VM
//! writes 1.0 GB/s with one direct write of 2 MiB in flight and 1.7 GB/s
//! with four, against 0.37 GB/s buffered with an fsync.
//!
//! `KLUIS_NO_DIRECT=1` turns direct reads and writes off.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// Buffer address, file offset and length of an O_DIRECT read must be
/// multiples of the device's logical block size, which is at most this.
pub const DIRECT_ALIGN: usize = 4096;

/// A buffer a backup reads a run of blocks into, aligned for O_DIRECT.
pub type IoBuf = aligned_vec::AVec<u8, aligned_vec::ConstAlign<DIRECT_ALIGN>>;

pub struct SourceFile {
    file: File,
    /// The same file opened with O_DIRECT, where that is allowed.
    direct: Option<File>,
    /// Whether aligned reads use `direct` (on by default).
    use_direct: AtomicBool,
    path: PathBuf,
}

impl SourceFile {
    pub fn new(file: File, path: &Path) -> SourceFile {
        let direct = reopen_direct(&file, path, false);
        SourceFile { file, direct, use_direct: AtomicBool::new(true), path: path.to_owned() }
    }

    /// Turns direct reads on or off (where the file allows them at all).
    pub fn set_direct(&self, on: bool) {
        self.use_direct.store(on, Ordering::Relaxed);
    }

    fn direct(&self) -> Option<&File> {
        self.direct.as_ref().filter(|_| self.use_direct.load(Ordering::Relaxed))
    }

    /// The file as opened (for metadata, SEEK_DATA and small reads).
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills `buf` from `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if let Some(direct) = self.direct().filter(|_| aligned(buf.as_ptr() as usize) && aligned(buf.len()) && offset.is_multiple_of(DIRECT_ALIGN as u64)) {
            match direct.read_exact_at(buf, offset) {
                Ok(()) => return Ok(()),
                // A device with larger logical blocks, say: read it as usual.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(self.failed(offset, e)),
            }
        }
        self.file.read_exact_at(buf, offset).map_err(|e| self.failed(offset, e))
    }

    fn failed(&self, offset: u64, e: std::io::Error) -> Error {
        Error::io(format!("read {} at offset {offset}", self.path.display()), e)
    }

    /// Asks the kernel to start reading `offset..offset + len`, unless
    /// reads bypass its cache (filling it would read twice).
    pub fn will_read(&self, offset: u64, len: u64) {
        if self.direct().is_none() {
            super::will_need(&self.file, offset, len);
        }
    }
}

fn aligned(n: usize) -> bool {
    n.is_multiple_of(DIRECT_ALIGN)
}

/// `path` opened again with O_DIRECT, for reading or writing: None where the
/// filesystem refuses it (tmpfs) or `KLUIS_NO_DIRECT` is set.
pub fn open_direct(path: &Path, write: bool) -> Option<File> {
    if std::env::var_os("KLUIS_NO_DIRECT").is_some() {
        return None;
    }
    OpenOptions::new().read(!write).write(write).custom_flags(libc::O_DIRECT).open(path).ok()
}

/// [`open_direct`] of `path`, kept only if it is the very file `file` has
/// open: another user who can write the directory may have put a symlink
/// at the name since (a restore's temporary file), and the data must not
/// follow it.
fn reopen_direct(file: &File, path: &Path, write: bool) -> Option<File> {
    use std::os::unix::fs::MetadataExt;
    let direct = open_direct(path, write)?;
    let (a, b) = (file.metadata().ok()?, direct.metadata().ok()?);
    (a.dev() == b.dev() && a.ino() == b.ino() && a.rdev() == b.rdev()).then_some(direct)
}

/// A restore's output file (or device), written at positions: whole
/// aligned pages through O_DIRECT where the target allows it, everything
/// else through the page cache.
pub struct TargetFile<'a> {
    file: &'a File,
    direct: Option<File>,
    path: &'a Path,
    /// A regular file: space is allocated before each direct write.
    regular: bool,
}

impl<'a> TargetFile<'a> {
    /// `file` is `path` opened for writing.
    pub fn new(file: &'a File, path: &'a Path) -> TargetFile<'a> {
        let regular = file.metadata().map(|m| m.is_file()).unwrap_or(false);
        TargetFile { file, direct: reopen_direct(file, path, true), path, regular }
    }

    /// Whether aligned writes bypass the page cache (then they wait for the
    /// device, and a restore keeps more of them in flight).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Writes `buf` at `offset`. When buffer and offset are aligned, its
    /// whole pages go straight to the device and only a partial last page
    /// through the page cache; otherwise all of it goes through the cache,
    /// and its writeback is started (not waited for), so that the device
    /// works while the restore decodes and the final fsync has little left.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let whole = buf.len() / DIRECT_ALIGN * DIRECT_ALIGN;
        let mut done = 0;
        if let Some(direct) = self.direct.as_ref().filter(|_| whole > 0 && aligned(buf.as_ptr() as usize) && offset.is_multiple_of(DIRECT_ALIGN as u64)) {
            if self.regular {
                // A direct write into a hole allocates, and ext4 takes the
                // file's lock exclusively for it, so the writes of all
                // workers would go one at a time; into space allocated
                // beforehand (unwritten extents) they run side by side. The
                // restore of the bench's two disks, cold, alternating: 3.93–
                // 4.51 s against 3.97–5.57 s (seven of eight pairs faster).
                // Only what is written is allocated, so the file stays sparse.
                // Where fallocate is not supported, the write allocates.
                unsafe {
                    libc::fallocate(std::os::unix::io::AsRawFd::as_raw_fd(direct), libc::FALLOC_FL_KEEP_SIZE, offset as i64, whole as i64);
                }
            }
            match direct.write_all_at(&buf[..whole], offset) {
                Ok(()) => done = whole,
                // A device with larger logical blocks, say: write it as usual.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(self.failed(offset, e)),
            }
        }
        if done < buf.len() {
            let at = offset + done as u64;
            self.file.write_all_at(&buf[done..], at).map_err(|e| self.failed(at, e))?;
            // Only a hint: errors surface at the final fsync.
            unsafe {
                libc::sync_file_range(std::os::unix::io::AsRawFd::as_raw_fd(self.file), at as i64, (buf.len() - done) as i64, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
        Ok(())
    }

    fn failed(&self, offset: u64, e: std::io::Error) -> Error {
        Error::io(format!("write {} at offset {offset}", self.path.display()), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A symlink put at a target's name after it was created is not where
    /// the direct writes go.
    #[test]
    fn direct_reopen_does_not_follow_a_swapped_name() {
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&target).unwrap();
        let d = tempfile::tempdir_in(&target).unwrap();
        let (p, victim) = (d.path().join("t"), d.path().join("victim"));
        std::fs::write(&victim, vec![7u8; 8192]).unwrap();
        let f = OpenOptions::new().write(true).create_new(true).open(&p).unwrap();
        f.set_len(8192).unwrap();
        let direct_here = TargetFile::new(&f, &p).is_direct();
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        let t = TargetFile::new(&f, &p);
        assert!(!t.is_direct() || !direct_here, "direct writes would go through the symlink");
        let mut buf = IoBuf::new(0);
        buf.resize(4096, 1);
        t.write_at(&buf, 0).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), vec![7u8; 8192]);
    }

    /// Aligned reads (direct where the filesystem allows) and unaligned ones
    /// (through the cache) give the file's bytes: in the system's temporary
    /// directory (often tmpfs, which refuses O_DIRECT) and in target/ (a
    /// disk filesystem, which takes it).
    #[test]
    fn aligned_and_unaligned_reads_agree() {
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&target).unwrap();
        for t in [tempfile::tempdir().unwrap(), tempfile::tempdir_in(&target).unwrap()] {
            reads_agree(t.path());
        }
    }

    /// Aligned runs (direct where the filesystem allows), a run with a
    /// partial last page, and unaligned writes all land where they should,
    /// on tmpfs and on a disk filesystem.
    #[test]
    fn aligned_and_unaligned_writes_land() {
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&target).unwrap();
        for t in [tempfile::tempdir().unwrap(), tempfile::tempdir_in(&target).unwrap()] {
            let p = t.path().join("out");
            let len = 5 * DIRECT_ALIGN + 100;
            let want: Vec<u8> = (0..len as u32).map(|i| (i * 7 % 253) as u8 + 1).collect();
            let file = OpenOptions::new().write(true).create(true).truncate(true).open(&p).unwrap();
            file.set_len(len as u64).unwrap();
            let out = TargetFile::new(&file, &p);
            let mut run = IoBuf::new(0);
            // Two whole pages; then from page 3 to the end (partial last page).
            run.extend_from_slice(&want[..2 * DIRECT_ALIGN]);
            out.write_at(&run, 0).unwrap();
            run.clear();
            run.extend_from_slice(&want[3 * DIRECT_ALIGN..]);
            out.write_at(&run, 3 * DIRECT_ALIGN as u64).unwrap();
            // Page 2 from an unaligned offset, in two pieces.
            out.write_at(&want[2 * DIRECT_ALIGN..2 * DIRECT_ALIGN + 10], 2 * DIRECT_ALIGN as u64).unwrap();
            out.write_at(&want[2 * DIRECT_ALIGN + 10..3 * DIRECT_ALIGN], 2 * DIRECT_ALIGN as u64 + 10).unwrap();
            file.sync_all().unwrap();
            assert!(std::fs::read(&p).unwrap() == want, "{}: bytes differ (direct: {})", p.display(), out.is_direct());
        }
    }

    fn reads_agree(dir: &Path) {
        let p = dir.join("img");
        let data: Vec<u8> = (0..3 * DIRECT_ALIGN as u32 + 100).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = SourceFile::new(File::open(&p).unwrap(), &p);
        for on in [true, false] {
            f.set_direct(on);
            reads_agree_on(&f, &data);
        }
    }

    fn reads_agree_on(f: &SourceFile, data: &[u8]) {
        let mut buf = IoBuf::new(0);
        buf.resize(2 * DIRECT_ALIGN, 0);
        f.read_at(&mut buf, DIRECT_ALIGN as u64).unwrap();
        assert_eq!(&buf[..], &data[DIRECT_ALIGN..3 * DIRECT_ALIGN]);
        let mut odd = vec![0u8; 1000];
        f.read_at(&mut odd, 3 * DIRECT_ALIGN as u64 - 900).unwrap();
        assert_eq!(&odd[..], &data[3 * DIRECT_ALIGN - 900..3 * DIRECT_ALIGN + 100]);
        // Past the end: an error, not zeros.
        assert!(f.read_at(&mut buf, 2 * DIRECT_ALIGN as u64).is_err());
    }
}
