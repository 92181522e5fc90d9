//! FAT12/16/32 (EFI system partitions, boot and data volumes) through the
//! `fatfs` crate. FAT has no owners, modes or links: files show as
//! 0644 (0444 when read-only), directories 0755, owned by 0:0; times are
//! the stored local time taken as UTC (FAT does not record the zone).
//!
//! `fatfs` finds an entry by scanning its directory, so listings are kept
//! with their attributes in a [`DirCache`], making `ls -l` of a directory
//! one scan instead of one per entry. Its lookup by path ignores case and
//! takes the first match (and matches 8.3 aliases), so `foo` could open
//! `Foo`; paths are walked here instead, by exact name ([`find`]), and
//! names no host path can hold are not listed ([`super::good_entries`]).

use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};

use fatfs::{Dir, DirEntry, FileSystem, FsOptions};

use super::dircache::{DirCache, Listing};
use super::readat::{Cursor, Fuel, Slice, META_FUEL};
use super::{days_from_civil, guard, show, FsKind, GAttr, GEntry, GKind, GuestFile, GuestFs, MAX_ENTRIES};
use crate::error::{Error, Result};

/// The crate's handle, used only under `Inner::fs`'s lock.
struct Handle(FileSystem<Cursor>);

// SAFETY: `FileSystem` is `!Send` only through the `&'static dyn` codepage
// converter and time provider in its options; we pass the crate's defaults,
// which are stateless unit structs, so moving the handle between threads
// (always under the mutex) shares nothing.
unsafe impl Send for Handle {}

struct Inner {
    fs: Mutex<Handle>,
    fuel: Fuel,
    dirs: DirCache,
}

pub struct FatFs(Arc<Inner>);

fn io_err(path: &[u8], e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound(format!("FAT {}: no such file", show(path))),
        std::io::ErrorKind::InvalidInput => Error::InvalidInput(format!("FAT {}: {e}", show(path))),
        _ => Error::Corrupt(format!("FAT {}: {e}", show(path))),
    }
}

/// The entries of `dir` but its dot entries, in directory order (bad
/// names included: see [`super::good_entries`]).
fn named<'a>(dir: &Dir<'a, Cursor>, path: &[u8]) -> Result<Vec<(Vec<u8>, DirEntry<'a, Cursor>)>> {
    let mut out = Vec::new();
    for e in dir.iter() {
        let e = e.map_err(|e| io_err(path, e))?;
        // The dot entries, by their short names (a long name `..` on
        // another entry is a bad name, warned about below).
        if matches!(e.short_file_name().as_str(), "." | "..") {
            continue;
        }
        if out.len() >= MAX_ENTRIES.min(1 << 20) {
            return Err(Error::Corrupt(format!("FAT {}: too many entries (a loop?)", show(path))));
        }
        out.push((e.file_name().into_bytes(), e));
    }
    Ok(out)
}

/// The entry at `path` (not the root), found one component at a time by
/// exact name, else by the one name that matches ignoring case
/// ([`super::pick`]).
fn find<'a>(fs: &'a FileSystem<Cursor>, path: &[u8]) -> Result<DirEntry<'a, Cursor>> {
    let not_found = || Error::NotFound(format!("FAT {}: no such file", show(path)));
    let mut dir = fs.root_dir();
    let comps = super::components(path)?;
    for (i, c) in comps.iter().enumerate() {
        let e = super::pick(named(&dir, path)?, c).ok_or_else(not_found)?;
        if i + 1 == comps.len() {
            return Ok(e);
        }
        if !e.is_dir() {
            return Err(Error::InvalidInput(format!("FAT {}: not a directory", show(path))));
        }
        dir = e.to_dir();
    }
    Err(not_found())
}

fn root_attr() -> GAttr {
    GAttr { kind: GKind::Dir, size: 0, mode: 0o755, uid: 0, gid: 0, mtime_s: 0, mtime_ns: 0, ino: None, nlink: 2, allocated: None }
}

fn entry_attr(e: &DirEntry<Cursor>) -> GAttr {
    let dir = e.is_dir();
    let ro = e.attributes().contains(fatfs::FileAttributes::READ_ONLY);
    let m = e.modified();
    let (d, t) = (m.date, m.time);
    let days = days_from_civil(d.year as i64, (d.month as u32).clamp(1, 12), (d.day as u32).clamp(1, 31));
    let secs = days * 86400 + t.hour as i64 * 3600 + t.min as i64 * 60 + t.sec as i64;
    let mode = match (dir, ro) {
        (true, _) => 0o755,
        (false, false) => 0o644,
        (false, true) => 0o444,
    };
    GAttr {
        kind: if dir { GKind::Dir } else { GKind::File },
        size: if dir { 0 } else { e.len() },
        mode,
        uid: 0,
        gid: 0,
        mtime_s: secs,
        mtime_ns: (t.millis as u32 % 1000) * 1_000_000,
        ino: None,
        nlink: if dir { 2 } else { 1 },
        allocated: None,
    }
}

impl FatFs {
    pub fn open(slice: Slice) -> Result<FatFs> {
        let fuel = slice.fuel.clone();
        fuel.set(META_FUEL);
        let fs = guard(|| "FAT".into(), || FileSystem::new(Cursor::new(slice), FsOptions::new()).map_err(|e| io_err(b"", e)))?;
        Ok(FatFs(Arc::new(Inner { fs: Mutex::new(Handle(fs)), fuel, dirs: DirCache::default() })))
    }

    /// Entries of a directory with their attributes, cached.
    fn entries(&self, path: &[u8]) -> Result<Arc<Listing>> {
        if let Some(e) = self.0.dirs.get(path) {
            return Ok(e.clone());
        }
        let list = self.0.with(path, META_FUEL, |fs| {
            let dir = match path {
                b"" => fs.root_dir(),
                _ => match find(fs, path)? {
                    e if e.is_dir() => e.to_dir(),
                    _ => return Err(Error::InvalidInput(format!("FAT {}: not a directory", show(path)))),
                },
            };
            let good = super::good_entries("FAT", path, named(&dir, path)?);
            Ok(good.into_iter().map(|(n, e)| (n, entry_attr(&e))).collect())
        })?;
        Ok(self.0.dirs.insert(path, Listing::new(list)))
    }
}

impl Inner {
    fn with<T>(&self, path: &[u8], fuel: i64, f: impl FnOnce(&FileSystem<Cursor>) -> Result<T>) -> Result<T> {
        let fs = self.fs.lock().unwrap_or_else(|p| p.into_inner());
        self.fuel.set(fuel);
        guard(|| format!("FAT {}", show(path)), || f(&fs.0))
    }
}

impl GuestFs for FatFs {
    fn kind(&self) -> FsKind {
        FsKind::Fat
    }

    fn stat(&self, path: &[u8]) -> Result<GAttr> {
        let comps = super::components(path)?;
        let Some((name, parent)) = comps.split_last() else { return Ok(root_attr()) };
        let parent = parent.join(&b'/');
        let list = self.entries(&parent)?;
        // FAT names are case-insensitive; the exact spelling first.
        list.get(name)
            .copied()
            .or_else(|| super::pick(list.entries().iter().map(|(n, a)| (n.clone(), *a)), name))
            .ok_or_else(|| Error::NotFound(format!("FAT {}: no such file", show(path))))
    }

    fn list(&self, path: &[u8]) -> Result<Vec<GEntry>> {
        if self.stat(path)?.kind != GKind::Dir {
            return Err(Error::InvalidInput(format!("FAT {}: not a directory", show(path))));
        }
        Ok(self.entries(&super::components(path)?.join(&b'/'))?.entries().iter().map(|(n, a)| GEntry { name: n.clone(), kind: a.kind, attr: Some(*a) }).collect())
    }

    fn readlink(&self, path: &[u8]) -> Result<Vec<u8>> {
        Err(Error::InvalidInput(format!("FAT {}: not a symlink", show(path))))
    }

    fn open(&self, path: &[u8]) -> Result<Box<dyn GuestFile>> {
        let a = self.stat(path)?;
        if a.kind != GKind::File {
            return Err(Error::InvalidInput(format!("FAT {}: not a regular file", show(path))));
        }
        Ok(Box::new(FatFile { fs: self.0.clone(), path: path.to_vec(), size: a.size }))
    }
}

struct FatFile {
    fs: Arc<Inner>,
    path: Vec<u8>,
    size: u64,
}

impl GuestFile for FatFile {
    fn size(&self) -> u64 {
        self.size
    }

    /// Opens the file anew for every read: `fatfs` files borrow the
    /// filesystem. The seek walks the cluster chain from its start, which
    /// is fine for the small files FAT volumes hold.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let want = super::readable(self.size, offset, buf.len());
        if want == 0 {
            return Ok(0);
        }
        let path = &self.path[..];
        self.fs.with(path, META_FUEL + 4 * want as i64, |fs| {
            let e = find(fs, path)?;
            if e.is_dir() {
                return Err(Error::InvalidInput(format!("FAT {}: not a regular file", show(path))));
            }
            let mut f = e.to_file();
            f.seek(SeekFrom::Start(offset)).map_err(|e| io_err(path, e))?;
            super::read_full(&mut buf[..want], |b| f.read(b).map_err(|e| io_err(path, e)))
        })
    }
}
