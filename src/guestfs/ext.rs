//! ext2/3/4 through the `ext4-view` crate, which replays the journal in
//! memory, so a crash-consistent point of a mounted filesystem reads as the
//! guest would see it after its next mount.
//!
//! The crate finds a file by walking its path from the root, checksumming
//! every directory block on the way; a stat per entry of a big directory
//! is then a walk per entry. So a directory is listed once with every
//! entry's attributes, read by inode number (`DirEntry::metadata`, no
//! walk), and kept in a [`DirCache`]: stat of a listed entry is a lookup.
//!
//! Three gaps of the crate are filled from our own reads (ext_raw.rs).
//! Opening a file walks its path, and every read of the crate runs under
//! one lock: where the filesystem needs no journal replay, a listed file
//! is opened by its inode number instead and read through its block map
//! ([`MappedFile`]), concurrently, in runs as long as the extents. It
//! hides inode numbers: a listing takes them from the directory's blocks,
//! each checked against the inode it names; where that fails (inline
//! directories, a journal not yet written back) a regular file's number
//! comes from `File`'s Debug output after a walk (pinned by a test). Link
//! counts come from the inode table (a journal-only update of the count is
//! not seen). And its handle is `Rc`-based, so it is kept behind a mutex
//! that no `Rc` ever leaves — see [`State`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ext4_view::{Ext4, Ext4Error, Ext4Read, FileType, Metadata};

use super::dircache::{self, DirCache, Listing};
use super::ext_raw::{Geometry, Run};
use super::readat::{Fuel, Slice, META_FUEL};
use super::{guard, show, FsKind, GAttr, GEntry, GKind, GuestFile, GuestFs, MAX_ENTRIES};
use crate::error::{Error, Result};

/// Inode numbers of this many listed directories are remembered (a
/// directory's number is what lets its own listing read its blocks).
const DIR_INOS: usize = 1_000_000;
const ROOT_INO: u64 = 2;
/// Read budget a listing adds per entry (one inode, a block-cache miss).
const ENTRY_FUEL: i64 = 64 << 10;

struct Reader(Slice);

impl Ext4Read for Reader {
    fn read(&mut self, start: u64, dst: &mut [u8]) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.0.read_exact_at(dst, start).map_err(|e| Box::new(e) as _)
    }
}

/// The crate's handle and every open `File` (each holds an `Rc` clone).
struct State {
    fs: Ext4,
    files: HashMap<u64, ext4_view::File>,
    next: u64,
}

// SAFETY: `State` owns every `Rc` that points into the filesystem (the
// `Ext4` handle and the open `File`s); all of them are created, used and
// dropped only while `ExtFs::state` is locked, and nothing holding an `Rc`
// is ever returned from a locked section (results are converted to owned
// plain data first). So no two threads ever touch the reference counts or
// the crate's `RefCell`s at once.
unsafe impl Send for State {}

pub struct ExtFs(Arc<Inner>);

struct Inner {
    state: Mutex<State>,
    fuel: Fuel,
    raw: Slice,
    geo: Geometry,
    dirs: DirCache,
    /// Path → inode number of the directories seen in listings (checked
    /// against their inodes), so that their own listing can read their
    /// blocks for their entries' numbers.
    dir_inos: Mutex<HashMap<Vec<u8>, u64>>,
}

fn err(path: &[u8], e: Ext4Error) -> Error {
    match e {
        Ext4Error::NotFound => Error::NotFound(format!("ext {}: no such file", show(path))),
        Ext4Error::NotADirectory => Error::InvalidInput(format!("ext {}: not a directory", show(path))),
        Ext4Error::IsADirectory | Ext4Error::IsASpecialFile => Error::InvalidInput(format!("ext {}: not a regular file", show(path))),
        Ext4Error::NotASymlink => Error::InvalidInput(format!("ext {}: not a symlink", show(path))),
        e => Error::Corrupt(format!("ext {}: {e}", show(path))),
    }
}

fn abs(path: &[u8]) -> Result<ext4_view::PathBuf> {
    super::components(path)?;
    let mut p = Vec::with_capacity(path.len() + 1);
    p.push(b'/');
    p.extend_from_slice(path);
    ext4_view::PathBuf::try_from(p.as_slice()).map_err(|e| Error::InvalidInput(format!("ext {}: {e}", show(path))))
}

fn kind(t: FileType) -> GKind {
    if t.is_dir() {
        GKind::Dir
    } else if t.is_symlink() {
        GKind::Symlink
    } else if t.is_char_dev() {
        GKind::CharDev
    } else if t.is_block_dev() {
        GKind::BlockDev
    } else if t.is_fifo() {
        GKind::Fifo
    } else if t.is_socket() {
        GKind::Socket
    } else {
        GKind::File
    }
}

/// `File { inode: 12, position: 0, .. }` → 12.
pub(super) fn inode_of(f: &ext4_view::File) -> Option<u64> {
    let d = format!("{f:?}");
    let rest = &d[d.find("inode: ")? + 7..];
    rest[..rest.find(|c: char| !c.is_ascii_digit())?].parse().ok()
}

/// What our own read of an inode's slot adds to ext4-view's metadata:
/// number, link count and allocated bytes.
type Inode = (u64, u32, u64);

/// The attributes of `m`. `inode` is known where the slot was read; a
/// regular file without it is *unresolved*: `ino` None, `nlink` 1, and
/// [`ExtFs::stat`] completes it with a walk.
fn attr_of(m: &Metadata, inode: Option<Inode>) -> GAttr {
    let k = kind(m.file_type());
    let t = m.modified();
    let (ino, nlink, allocated) = match (k, inode) {
        (GKind::Dir, _) => (None, 2, None),
        (GKind::File, Some((i, n, a))) => (Some(i), n.max(1), Some(a)),
        _ => (None, 1, None),
    };
    GAttr {
        kind: k,
        // A directory's too (4096 for a small one), as the guest's stat says.
        size: m.len(),
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime_s: t.seconds(),
        mtime_ns: t.nanoseconds(),
        ino,
        nlink,
        allocated,
    }
}

fn unresolved(a: &GAttr) -> bool {
    a.kind == GKind::File && a.ino.is_none()
}

impl ExtFs {
    pub fn open(slice: Slice) -> Result<ExtFs> {
        let fuel = slice.fuel.clone();
        fuel.set(META_FUEL);
        let geo = Geometry::read(&slice)?;
        let fs = guard(|| "ext".into(), || Ext4::load(Box::new(Reader(slice.clone()))).map_err(|e| err(b"", e)))?;
        let state = Mutex::new(State { fs, files: HashMap::new(), next: 0 });
        Ok(ExtFs(Arc::new(Inner { state, fuel, raw: slice, geo, dirs: DirCache::default(), dir_inos: Mutex::new(HashMap::new()) })))
    }

    fn with<T>(&self, path: &[u8], f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        self.0.with(path, META_FUEL, f)
    }

    /// Directory `dir` listed with its entries' attributes (cached).
    fn listing(&self, dir: &[u8]) -> Result<Arc<Listing>> {
        if let Some(l) = self.0.dirs.get(dir) {
            return Ok(l);
        }
        let p = abs(dir)?;
        let dir_ino = if dir.is_empty() { Some(ROOT_INO) } else { self.0.dir_inos.lock().unwrap().get(dir).copied() };
        let (inner, raw) = (&self.0, &self.0.raw);
        let mut subdirs = Vec::new();
        let entries = self.with(dir, |st| {
            // Name → inode number from the directory's blocks; without it
            // (unknown directory, inline data, damage) files stay unresolved.
            let numbers = dir_ino.and_then(|d| inner.geo.slot(raw, d).and_then(|s| inner.geo.dir_entries(raw, d, &s)).ok()).unwrap_or_default();
            let mut found = Vec::new();
            // The crate ends a listing at a name no path can hold (`/` or
            // NUL inside); the entries after it come from our own read.
            let mut cut = false;
            for e in st.fs.read_dir(&p).map_err(|e| err(dir, e))? {
                let e = match e {
                    Ok(e) => e,
                    Err(e) if e.to_string().contains("has invalid name") => {
                        cut = true;
                        break;
                    }
                    Err(e) => return Err(err(dir, e)),
                };
                let name = e.file_name().as_ref().to_vec();
                if name == b"." || name == b".." {
                    continue;
                }
                if found.len() >= MAX_ENTRIES {
                    return Err(Error::Corrupt(format!("ext {}: more than {MAX_ENTRIES} entries", show(dir))));
                }
                let number = numbers.get(&name).copied();
                found.push((name, e, number));
            }
            // Inodes are read through the crate's small block cache: in an
            // htree's hash order nearly every entry misses it, in inode
            // order one read serves a block of inodes.
            let mut order: Vec<usize> = (0..found.len()).collect();
            order.sort_by_key(|&i| found[i].2.unwrap_or(u64::MAX));
            let mut attrs = vec![None; found.len()];
            for i in order {
                let (name, e, number) = &found[i];
                // Each entry's inode gets its own budget on top.
                inner.fuel.add(ENTRY_FUEL);
                let m = e.metadata().map_err(|e| err(&dircache::child(dir, name), e))?;
                // Trusted only if the inode it names is the one ext4-view read.
                let inode = number.and_then(|i| match inner.geo.slot(raw, i) {
                    Ok(s) if s.matches(&m) => Some((i, s.nlink(), inner.geo.allocated(&s))),
                    _ => None,
                });
                if let (true, Some((i, ..))) = (m.is_dir(), inode) {
                    subdirs.push((dircache::child(dir, name), i));
                }
                attrs[i] = Some(attr_of(&m, inode));
            }
            let mut entries: Vec<_> = found.into_iter().zip(attrs).map(|((name, ..), a)| (name, a.expect("every entry was read"))).collect();
            if cut {
                inner.rest_of(dir, &numbers, &mut entries);
            }
            Ok(entries)
        })?;
        let entries = super::good_entries("ext", dir, entries);
        let mut inos = self.0.dir_inos.lock().unwrap();
        if inos.len() + subdirs.len() > DIR_INOS {
            inos.clear();
        }
        inos.extend(subdirs);
        drop(inos);
        Ok(self.0.dirs.insert(dir, Listing::new(entries)))
    }

    /// The attributes of `path` from its directory's listing (a regular
    /// file maybe unresolved).
    fn listed(&self, path: &[u8]) -> Result<GAttr> {
        let Some((parent, name)) = dircache::split(path)? else {
            let p = abs(path)?;
            return self.with(path, |st| Ok(attr_of(&st.fs.symlink_metadata(&p).map_err(|e| err(path, e))?, None)));
        };
        self.listing(&parent)?.get(&name).copied().ok_or_else(|| Error::NotFound(format!("ext {}: no such file", show(path))))
    }

    /// Completes the attributes `a` of regular file `path` (unresolved) by
    /// a walk: inode number, and from its slot link count and allocation.
    fn resolve(&self, path: &[u8], a: &mut GAttr) -> Result<()> {
        let p = abs(path)?;
        a.ino = self.with(path, |st| Ok(inode_of(&st.fs.open(&p).map_err(|e| err(path, e))?)))?;
        if let Some(s) = a.ino.and_then(|i| self.0.geo.slot(&self.0.raw, i).ok()) {
            (a.nlink, a.allocated) = (s.nlink().max(1), Some(self.0.geo.allocated(&s)));
        }
        Ok(())
    }

    /// Regular file `path` (listed as `a`) opened by inode number, when
    /// the filesystem needs no journal replay and the listing knows the
    /// number; None where the crate must read it (a journal to replay, an
    /// unresolved number, inline data, encryption).
    pub(super) fn open_mapped(&self, path: &[u8], a: &GAttr) -> Result<Option<MappedFile>> {
        let (inner, Some(ino)) = (&self.0, a.ino) else { return Ok(None) };
        if !inner.geo.as_replayed() {
            return Ok(None);
        }
        // Its own budget: this runs outside the crate's lock.
        let raw = inner.raw.with_fuel(META_FUEL);
        let slot = inner.geo.slot(&raw, ino)?;
        if !slot.is_regular() || slot.size() != a.size {
            return Err(Error::Corrupt(format!("ext {}: inode {ino} is not the listed file", show(path))));
        }
        if a.size > inner.geo.max_size(&slot) {
            return Err(Error::Corrupt(format!("ext {}: inode {ino} claims {} bytes, more than ext allows", show(path), a.size)));
        }
        match inner.geo.block_map(&raw, ino, &slot) {
            Ok(runs) => Ok(Some(MappedFile {
                data: raw.with_fuel(i64::MAX),
                runs,
                size: a.size,
                block_size: inner.geo.block_size(),
                next: AtomicU64::new(0),
            })),
            Err(Error::InvalidInput(_)) => Ok(None),
            Err(e) => Err(Error::Corrupt(format!("ext {}: {e}", show(path)))),
        }
    }
}

impl GuestFs for ExtFs {
    fn kind(&self) -> FsKind {
        FsKind::Ext
    }

    fn stat(&self, path: &[u8]) -> Result<GAttr> {
        let mut a = self.listed(path)?;
        if unresolved(&a) {
            self.resolve(path, &mut a)?;
        }
        Ok(a)
    }

    fn list(&self, path: &[u8]) -> Result<Vec<GEntry>> {
        let l = self.listing(&super::components(path)?.join(&b'/'))?;
        Ok(l.entries().iter().map(|(n, a)| GEntry { name: n.clone(), kind: a.kind, attr: (!unresolved(a)).then_some(*a) }).collect())
    }

    fn readlink(&self, path: &[u8]) -> Result<Vec<u8>> {
        let p = abs(path)?;
        self.with(path, |st| {
            let t = st.fs.read_link(&p).map_err(|e| err(path, e))?;
            Ok(t.as_ref().to_vec())
        })
    }

    fn open(&self, path: &[u8]) -> Result<Box<dyn GuestFile>> {
        // `open` follows symlinks: check first (from the listing) that
        // `path` itself is a regular file.
        let a = self.listed(path)?;
        if a.kind != GKind::File {
            return Err(Error::InvalidInput(format!("ext {}: not a regular file", show(path))));
        }
        if let Some(f) = self.open_mapped(path, &a)? {
            return Ok(Box::new(f));
        }
        let p = abs(path)?;
        let (slot, size) = self.with(path, |st| {
            let f = st.fs.open(&p).map_err(|e| err(path, e))?;
            let size = f.metadata().len();
            st.next += 1;
            let slot = st.next;
            st.files.insert(slot, f);
            Ok((slot, size))
        })?;
        Ok(Box::new(ExtFile { fs: self.0.clone(), slot, size, path: path.to_vec() }))
    }
}

impl Inner {
    /// Adds to `entries` (what ext4-view listed of directory `dir` before
    /// a name it refuses) the other entries of `numbers` (the directory's
    /// own blocks), with attributes from their inodes, where the blocks as
    /// written are the filesystem (nothing to replay); the bad names
    /// themselves are then skipped like any other.
    fn rest_of(&self, dir: &[u8], numbers: &HashMap<Vec<u8>, u64>, entries: &mut Vec<(Vec<u8>, GAttr)>) {
        if !self.geo.as_replayed() || numbers.is_empty() {
            log::warn!("ext {}: listed up to an entry with a bad name; the entries after it are not shown", show(dir));
            return;
        }
        let listed: std::collections::HashSet<Vec<u8>> = entries.iter().map(|(n, _)| n.clone()).collect();
        let mut rest: Vec<_> = numbers.iter().filter(|(n, _)| *n != b"." && *n != b".." && !listed.contains(*n)).collect();
        rest.sort();
        for (name, &ino) in rest {
            self.fuel.add(ENTRY_FUEL);
            match self.geo.slot(&self.raw, ino) {
                Ok(s) => entries.push((name.clone(), s.attr(&self.geo, ino))),
                Err(e) => log::warn!("ext {}: entry {:?}: {e}", show(dir), name.escape_ascii().to_string()),
            }
        }
    }

    /// Runs `f` on the locked state with a budget of `fuel` bytes. The
    /// guard runs inside the lock, so a panic never poisons it.
    fn with<T>(&self, path: &[u8], fuel: i64, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.fuel.set(fuel);
        guard(|| format!("ext {}", show(path)), || f(&mut st))
    }
}

struct ExtFile {
    fs: Arc<Inner>,
    slot: u64,
    size: u64,
    path: Vec<u8>,
}

impl GuestFile for ExtFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let want = super::readable(self.size, offset, buf.len());
        if want == 0 {
            return Ok(0);
        }
        let path = &self.path;
        self.fs.with(path, META_FUEL + 4 * want as i64, |st| {
            let f = st.files.get_mut(&self.slot).ok_or_else(|| Error::InvalidInput("file is closed".into()))?;
            // Sequential reads continue where the last one stopped; a jump
            // costs a walk of the extent list (the crate's seek).
            if f.position() != offset {
                f.seek_to(offset).map_err(|e| err(path, e))?;
            }
            super::read_full(&mut buf[..want], |b| f.read_bytes(b).map_err(|e| err(path, e)))
        })
    }
}

impl Drop for ExtFile {
    fn drop(&mut self) {
        // The File holds an Rc: drop it under the lock.
        let mut st = self.fs.state.lock().unwrap_or_else(|p| p.into_inner());
        st.files.remove(&self.slot);
    }
}

/// A regular file read through its block map (see [`ExtFs::open_mapped`]):
/// no lock, and one read of the partition per run a request spans.
pub(super) struct MappedFile {
    /// The partition, with a budget of its own that never runs out: the
    /// map is finite, so a read cannot loop.
    data: Slice,
    runs: Vec<Run>,
    size: u64,
    block_size: u64,
    /// Where a sequential reader's next read starts.
    next: AtomicU64,
}

/// How far ahead of a sequential reader its blocks are asked for.
const READAHEAD: u64 = 4 << 20;

impl MappedFile {
    /// The stored stretches of `[offset, offset + len)` in order, as
    /// (`pos`, `at`, `n`): `n` bytes of the file from `pos`, found at `at`
    /// in the partition. What lies between them reads as zeros.
    fn stretches(&self, offset: u64, len: u64) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        let bs = self.block_size;
        let end = offset.saturating_add(len).min(self.size);
        let first = self.runs.partition_point(|r| r.logical + r.len <= offset / bs);
        self.runs[first..].iter().map_while(move |r| {
            let (from, to) = ((r.logical * bs).max(offset), ((r.logical + r.len) * bs).min(end));
            (from < to).then(|| (from, (r.physical + from / bs - r.logical) * bs + from % bs, to - from))
        })
    }
}

impl GuestFile for MappedFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn seek(&self, offset: u64, data: bool) -> Option<u64> {
        let mut after = self.stretches(offset, u64::MAX);
        match (after.next(), data) {
            (first, true) => first.map(|(pos, ..)| pos),
            // In data: the hole starts where consecutive stretches stop.
            (Some((pos, _, n)), false) if pos == offset => {
                let mut end = pos + n;
                for (pos, _, n) in after {
                    if pos != end {
                        break;
                    }
                    end = pos + n;
                }
                Some(end)
            }
            (_, false) => Some(offset),
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let want = super::readable(self.size, offset, buf.len());
        let end = offset + want as u64;
        if self.next.swap(end, Ordering::Relaxed) == offset {
            for (_, at, n) in self.stretches(end, READAHEAD) {
                self.data.will_need(at, n);
            }
        }
        // Bytes of `buf` filled so far; the gaps between stretches are holes.
        let mut filled = 0;
        for (pos, at, n) in self.stretches(offset, want as u64) {
            let (from, to) = ((pos - offset) as usize, (pos - offset + n) as usize);
            buf[filled..from].fill(0);
            self.data.read_exact_at(&mut buf[from..to], at)?;
            filled = to;
        }
        buf[filled..want].fill(0);
        Ok(want)
    }
}
