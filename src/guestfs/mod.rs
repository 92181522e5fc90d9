//! Guest filesystems inside the disks of a recovery point, read in process:
//! no root, no loop device, no helper VM.
//!
//! ```text
//! ReadAt (OpenDisk | Vec<u8> | File)
//!   └─ Slice: one partition's window, with a read budget (Fuel)
//!        ├─ part::read_layout   GPT / MBR + logical / bare filesystem (p0)
//!        └─ GuestFs             ext2/3/4 (ext4-view) | FAT12/16/32 (fatfs) | NTFS (ntfs)
//! ```
//!
//! A [`GuestFs`] is addressed by paths relative to its root (bytes, `/`
//! separated, no leading slash; `""` is the root). Paths never leave the
//! guest filesystem: a symlink is returned as its stored target text and is
//! only ever followed by the kernel (in a mount) or not at all (`kluis
//! files`).
//!
//! # Robustness
//!
//! The parsers read untrusted bytes. Every call into a filesystem crate runs
//! under [`guard`]: a panic becomes [`Error::Corrupt`] (EIO in the mount),
//! and the slice's [`readat::Fuel`] caps the bytes one operation may read,
//! so a cyclic structure ends in an error rather than a hang. Directory
//! listings are capped at [`MAX_ENTRIES`]. The fuzz test below mutates real
//! images and walks them under a deadline.
//!
//! # Names
//!
//! A listing never shows a name that is not one plain path component
//! ([`bad_name`]: `/` or NUL inside, `.`, `..`) nor a second entry of a
//! name: such entries are skipped with a warning (`good_entries`) and the
//! rest of the directory is listed, so no guest name can lead a caller's
//! host path out of its target and no two files share a name. Lookups
//! match names exactly, and ignoring case only where one name alone
//! matches (`pick`), so `Foo` and `foo` stay two files.

pub mod readat;
pub mod part;
mod dircache;
mod ext;
mod ext_raw;
mod fat;
mod ntfs;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::error::{Error, Result};
pub use part::{read_layout, Layout, Partition, Scheme};
pub use readat::{DiskReadAt, ReadAt, Slice};

/// Entries of one directory we list at most (ext4 allows ~2^32; a listing
/// past this is a loop in a corrupt directory, or not useful anyway).
pub const MAX_ENTRIES: usize = 4_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FsKind {
    Ext,
    Fat,
    Ntfs,
    Xfs,
    Btrfs,
    Lvm,
    Luks,
    Swap,
    Unknown,
}

impl FsKind {
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Ext => "ext2/3/4",
            FsKind::Fat => "FAT",
            FsKind::Ntfs => "NTFS",
            FsKind::Xfs => "XFS",
            FsKind::Btrfs => "Btrfs",
            FsKind::Lvm => "LVM physical volume",
            FsKind::Luks => "LUKS encrypted volume",
            FsKind::Swap => "Linux swap",
            FsKind::Unknown => "unknown",
        }
    }

    pub fn supported(self) -> bool {
        matches!(self, FsKind::Ext | FsKind::Fat | FsKind::Ntfs)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GKind {
    File,
    Dir,
    Symlink,
    CharDev,
    BlockDev,
    Fifo,
    Socket,
}

/// A guest file's metadata as the guest filesystem stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GAttr {
    pub kind: GKind,
    pub size: u64,
    /// Permission bits incl. setuid/setgid/sticky (0o7777).
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime_s: i64,
    pub mtime_ns: u32,
    /// The guest's inode number, where hard links can share it.
    pub ino: Option<u64>,
    pub nlink: u32,
    /// Bytes the filesystem gave the file, where known (less than `size`
    /// for a file with holes; it counts the file's own metadata blocks).
    pub allocated: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GEntry {
    pub name: Vec<u8>,
    pub kind: GKind,
    /// What `stat` of the entry returns, where the listing got it at no
    /// extra cost (so a caller can answer stats from the listing).
    pub attr: Option<GAttr>,
}

/// A filesystem inside a partition. Implementations are `Send + Sync` and
/// cheap to call concurrently (they lock internally where the crate needs it).
pub trait GuestFs: Send + Sync {
    fn kind(&self) -> FsKind;
    /// Metadata of `path` itself (a symlink is not followed).
    fn stat(&self, path: &[u8]) -> Result<GAttr>;
    /// The entries of directory `path`, without `.` and `..`.
    fn list(&self, path: &[u8]) -> Result<Vec<GEntry>>;
    /// The target of symlink `path`, as stored.
    fn readlink(&self, path: &[u8]) -> Result<Vec<u8>>;
    /// Opens regular file `path` for reads at any offset.
    fn open(&self, path: &[u8]) -> Result<Box<dyn GuestFile>>;
}

pub trait GuestFile: Send + Sync {
    fn size(&self) -> u64;
    /// Reads up to `buf.len()` bytes at `offset`; short only at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize>;
    /// SEEK_DATA (`data`) / SEEK_HOLE from `offset` (< size): where the
    /// next data or hole starts, None for no more data. Without a block
    /// map, the file is all data.
    fn seek(&self, offset: u64, data: bool) -> Option<u64> {
        Some(if data { offset } else { self.size() })
    }
}

/// Opens the filesystem of kind `kind` in `slice`.
pub fn open_fs(kind: FsKind, slice: Slice) -> Result<Arc<dyn GuestFs>> {
    match kind {
        FsKind::Ext => Ok(Arc::new(ext::ExtFs::open(slice)?)),
        FsKind::Fat => Ok(Arc::new(fat::FatFs::open(slice)?)),
        FsKind::Ntfs => Ok(Arc::new(ntfs::NtfsFs::open(slice)?)),
        k => Err(Error::InvalidInput(format!("{} is not supported", k.name()))),
    }
}

thread_local! {
    /// Depth of [`guard`] calls on this thread: their panics are expected.
    static GUARDED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Chains a panic hook (once) that keeps the panics [`guard`] catches out
/// of stderr: they become one error naming the filesystem, so the default
/// hook's "thread panicked at ..." (and backtrace) would be noise on top
/// of it. Every other panic goes to the previous hook as before.
fn quiet_guarded_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(|g| g.get()) > 0 {
                log::debug!("filesystem parser: {info}");
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `f` (a call into a filesystem crate) so that a panic in the crate
/// becomes an error naming `what`.
pub fn guard<T>(what: impl FnOnce() -> String, f: impl FnOnce() -> Result<T>) -> Result<T> {
    quiet_guarded_panics();
    GUARDED.with(|g| g.set(g.get() + 1));
    let r = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(g.get() - 1));
    match r {
        Ok(r) => r,
        Err(p) => {
            let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
            Err(Error::Corrupt(format!("{}: the filesystem parser gave up ({msg}); the filesystem is damaged", what())))
        }
    }
}

/// The components of a relative guest path; `..` and `.` are refused so a
/// path can never climb out of the root.
pub fn components(path: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(Error::InvalidInput(format!("{}: `..` is not allowed in a guest path", String::from_utf8_lossy(path)))),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Why `name`, as a guest directory holds it, cannot be one path component
/// on the host; None for a good name. Guest filesystems never store such
/// names themselves (the kernels and Windows refuse `/` and NUL, and `.`
/// and `..` are only the dot entries), so they come from damage or from
/// an attacker: a name like `../../etc/x` must never reach a host path.
pub fn bad_name(name: &[u8]) -> Option<&'static str> {
    match name {
        b"" => Some("is empty"),
        b"." | b".." => Some("is a dot entry"),
        n if n.contains(&b'/') => Some("contains `/`"),
        n if n.contains(&0) => Some("contains NUL"),
        _ => None,
    }
}

/// The entries of directory `dir` that can be shown: a bad name
/// ([`bad_name`]) or a second entry of the same name (which no lookup
/// could tell from the first) is skipped with a warning, so one bad entry
/// never fails the whole listing nor merges two files into one name.
pub(crate) fn good_entries<T>(fs: &str, dir: &[u8], entries: Vec<(Vec<u8>, T)>) -> Vec<(Vec<u8>, T)> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(entries.len());
    for (name, e) in entries {
        let why = bad_name(&name).or_else(|| (!seen.insert(name.clone())).then_some("is a second entry of that name"));
        match why {
            Some(why) => skipped(fs, dir, &name, why),
            None => out.push((name, e)),
        }
    }
    out
}

/// The warning for an entry of `dir` that is not shown.
pub(crate) fn skipped(fs: &str, dir: &[u8], name: &[u8], why: &str) {
    log::warn!("{fs} {}: skipped an entry whose name {why}: {:?} (damaged or crafted filesystem)", show(dir), name.escape_ascii().to_string());
}

/// Which of `names` a lookup of `want` finds: the entry of exactly that
/// name, else the one entry whose name matches ignoring case (a Windows
/// user's spelling of an NTFS or FAT name); never one of several that
/// differ only in case.
pub(crate) fn pick<T>(names: impl IntoIterator<Item = (Vec<u8>, T)>, want: &[u8]) -> Option<T> {
    let fold = |n: &[u8]| String::from_utf8_lossy(n).to_lowercase();
    let want_folded = fold(want);
    let mut folded = Vec::new();
    for (n, t) in names {
        if n == want {
            return Some(t);
        }
        if fold(&n) == want_folded {
            folded.push(t);
        }
    }
    if folded.len() == 1 { folded.pop() } else { None }
}

/// How many bytes a read of `len` at `offset` may return from a file of
/// `size`: 0 at or past the end.
pub(crate) fn readable(size: u64, offset: u64, len: usize) -> usize {
    if offset >= size { 0 } else { len.min((size - offset) as usize) }
}

/// Calls `read` until `buf` is full or it returns 0 (end of data): the
/// filesystem crates may return short reads at extent or cluster edges.
pub(crate) fn read_full(buf: &mut [u8], mut read: impl FnMut(&mut [u8]) -> Result<usize>) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match read(&mut buf[done..])? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

pub fn show(path: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(path))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm), for filesystems that store civil times (FAT).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests;
