//! ext2/3/4 through the `ext4-view` crate, which replays the journal in
//! memory, so a crash-consistent point of a mounted filesystem reads as the
//! guest would see it after its next mount.
//!
//! Two gaps of the crate are filled here. It hides inode numbers: the one
//! of a regular file is read from `File`'s Debug output (pinned by a test),
//! and its link count straight from the inode table (superblock + group
//! descriptor + inode, a few reads; a journal-only update of the count is
//! not seen). And its handle is `Rc`-based, so it is kept behind a mutex
//! that no `Rc` ever leaves — see [`State`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ext4_view::{Ext4, Ext4Error, Ext4Read, FileType, Metadata};

use super::readat::{Fuel, Slice};
use super::{guard, show, FsKind, GAttr, GEntry, GKind, GuestFile, GuestFs, MAX_ENTRIES};
use crate::error::{Error, Result};

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
    /// Kinds of the entries listed so far: a path known to be a regular
    /// file is stat'ed with one path walk (open) instead of two.
    kinds: HashMap<Vec<u8>, GKind>,
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
}

/// What we need to find an inode in the table ourselves.
#[derive(Clone, Copy)]
struct Geometry {
    block_size: u64,
    inodes_per_group: u64,
    inode_size: u64,
    desc_size: u64,
    gdt_block: u64,
    is64: bool,
}

impl Geometry {
    fn read(s: &Slice) -> Result<Geometry> {
        let mut sb = [0u8; 1024];
        s.read_exact_at(&mut sb, 1024)?;
        let u32le = |o: usize| u32::from_le_bytes(sb[o..o + 4].try_into().unwrap()) as u64;
        let u16le = |o: usize| u16::from_le_bytes(sb[o..o + 2].try_into().unwrap()) as u64;
        let log = u32le(24);
        if log > 6 {
            return Err(Error::Corrupt(format!("ext superblock: block size 2^{} KiB", log)));
        }
        let block_size = 1024u64 << log;
        let rev = u32le(76);
        let inode_size = if rev == 0 { 128 } else { u16le(88) };
        let is64 = u32le(96) & 0x80 != 0;
        let desc_size = if is64 { u16le(254).max(32) } else { 32 };
        let first_data = u32le(20);
        Ok(Geometry { block_size, inodes_per_group: u32le(40), inode_size, desc_size, gdt_block: first_data + 1, is64 })
    }

    /// The link count of inode `ino`, from its inode-table slot.
    fn nlink(&self, s: &Slice, ino: u64) -> Result<u32> {
        if ino == 0 || self.inodes_per_group == 0 || !(128..=65536).contains(&self.inode_size) {
            return Err(Error::Corrupt(format!("ext inode {ino}: bad geometry")));
        }
        let (group, index) = ((ino - 1) / self.inodes_per_group, (ino - 1) % self.inodes_per_group);
        let mut d = [0u8; 64];
        let doff = self.gdt_block * self.block_size + group * self.desc_size;
        s.read_exact_at(&mut d[..self.desc_size.min(64) as usize], doff)?;
        let mut table = u32::from_le_bytes(d[8..12].try_into().unwrap()) as u64;
        if self.is64 && self.desc_size >= 64 {
            table |= (u32::from_le_bytes(d[0x28..0x2c].try_into().unwrap()) as u64) << 32;
        }
        let off = table
            .checked_mul(self.block_size)
            .and_then(|t| t.checked_add(index * self.inode_size))
            .ok_or_else(|| Error::Corrupt(format!("ext inode {ino}: table offset overflows")))?;
        let mut n = [0u8; 2];
        s.read_exact_at(&mut n, off + 26)?;
        Ok(u16::from_le_bytes(n) as u32)
    }
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
fn inode_of(f: &ext4_view::File) -> Option<u64> {
    let d = format!("{f:?}");
    let rest = &d[d.find("inode: ")? + 7..];
    rest[..rest.find(|c: char| !c.is_ascii_digit())?].parse().ok()
}

impl ExtFs {
    pub fn open(slice: Slice) -> Result<ExtFs> {
        let fuel = slice.fuel.clone();
        fuel.set(super::readat::META_FUEL);
        let geo = Geometry::read(&slice)?;
        let fs = guard(|| "ext".into(), || Ext4::load(Box::new(Reader(slice.clone()))).map_err(|e| err(b"", e)))?;
        Ok(ExtFs(Arc::new(Inner { state: Mutex::new(State { fs, files: HashMap::new(), next: 0, kinds: HashMap::new() }), fuel, raw: slice, geo })))
    }

    fn with<T>(&self, path: &[u8], f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        self.0.with(path, super::readat::META_FUEL, f)
    }

    fn attr(&self, st: &State, path: &[u8], p: &ext4_view::PathBuf, m: &Metadata, opened: Option<&ext4_view::File>) -> Result<GAttr> {
        let k = kind(m.file_type());
        let t = m.modified();
        let (mut ino, mut nlink) = (None, if k == GKind::Dir { 2 } else { 1 });
        if k == GKind::File {
            let f = match opened {
                Some(f) => inode_of(f),
                None => inode_of(&st.fs.open(p).map_err(|e| err(path, e))?),
            };
            ino = f;
            if let Some(i) = ino {
                nlink = self.0.geo.nlink(&self.0.raw, i).unwrap_or(1).max(1);
            }
        }
        Ok(GAttr {
            kind: k,
            size: if k == GKind::Dir { 0 } else { m.len() },
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime_s: t.seconds(),
            mtime_ns: t.nanoseconds(),
            ino,
            nlink,
        })
    }
}

impl GuestFs for ExtFs {
    fn kind(&self) -> FsKind {
        FsKind::Ext
    }

    fn stat(&self, path: &[u8]) -> Result<GAttr> {
        let p = abs(path)?;
        self.with(path, |st| {
            if st.kinds.get(path) == Some(&GKind::File)
                && let Ok(f) = st.fs.open(&p)
            {
                let m = f.metadata().clone();
                return self.attr(st, path, &p, &m, Some(&f));
            }
            let m = st.fs.symlink_metadata(&p).map_err(|e| err(path, e))?;
            self.attr(st, path, &p, &m, None)
        })
    }

    fn list(&self, path: &[u8]) -> Result<Vec<GEntry>> {
        let p = abs(path)?;
        self.with(path, |st| {
            let mut out = Vec::new();
            for e in st.fs.read_dir(&p).map_err(|e| err(path, e))? {
                let e = e.map_err(|e| err(path, e))?;
                let name = e.file_name();
                let name = name.as_ref();
                if name == b"." || name == b".." {
                    continue;
                }
                if out.len() >= MAX_ENTRIES {
                    return Err(Error::Corrupt(format!("ext {}: more than {MAX_ENTRIES} entries", show(path))));
                }
                out.push(GEntry { name: name.to_vec(), kind: kind(e.file_type().map_err(|e| err(path, e))?) });
            }
            if st.kinds.len() + out.len() > 2_000_000 {
                st.kinds.clear();
            }
            for e in &out {
                let child = if path.is_empty() { e.name.clone() } else { [path, b"/", &e.name].concat() };
                st.kinds.insert(child, e.kind);
            }
            Ok(out)
        })
    }

    fn readlink(&self, path: &[u8]) -> Result<Vec<u8>> {
        let p = abs(path)?;
        self.with(path, |st| {
            let t = st.fs.read_link(&p).map_err(|e| err(path, e))?;
            Ok(t.as_ref().to_vec())
        })
    }

    fn open(&self, path: &[u8]) -> Result<Box<dyn GuestFile>> {
        let p = abs(path)?;
        let (slot, size) = self.with(path, |st| {
            // A listed regular file needs one path walk; else check first
            // that `open` (which follows symlinks) will not follow one.
            if st.kinds.get(path) != Some(&GKind::File) {
                let m = st.fs.symlink_metadata(&p).map_err(|e| err(path, e))?;
                if !m.file_type().is_regular_file() {
                    return Err(Error::InvalidInput(format!("ext {}: not a regular file", show(path))));
                }
            }
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
        self.fs.with(path, super::readat::META_FUEL + 4 * want as i64, |st| {
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

