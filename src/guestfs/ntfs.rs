//! NTFS through the `ntfs` crate. Its handle holds no reader, so every
//! operation makes its own cursor (with its own read budget) and runs
//! without a lock. The MFT record number is the inode number, and the
//! record's hard-link count is `nlink`.
//!
//! NTFS keeps no POSIX owner or mode here: files show as 0644 (0444 with
//! the read-only attribute), directories 0755, owned by 0:0. Symlinks are
//! the reparse points Windows and ntfs-3g write (symlink and junction tags)
//! and Interix/ntfs-3g `IntxLNK` files; their target is shown as stored,
//! with `\` turned into `/`. DOS 8.3 aliases and the `$` metafiles of the
//! root are hidden. Compressed and encrypted files read as EIO.
//!
//! Names are case-sensitive, as ntfs-3g shows them: Windows' POSIX
//! namespace (and ntfs-3g by default) lets `Foo` and `foo` live in one
//! directory. The crate's index search ignores case and returns whichever
//! it meets first, so a lookup takes its answer only when the name is
//! exactly the one asked for, and else scans the directory
//! ([`super::pick`]). Names that are not valid UTF-16 are skipped with a
//! warning, as ntfs-3g does ("unrepresentable"): shown lossily, two of
//! them would merge.

use std::io::SeekFrom;
use std::sync::Arc;

use ntfs::attribute_value::NtfsAttributeValue;
use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::{NtfsFileAttributeFlags, NtfsFileNamespace};
use ntfs::{Ntfs, NtfsAttributeFlags, NtfsAttributeType, NtfsError, NtfsFile, NtfsReadSeek};

use super::readat::{Cursor, Slice, META_FUEL};
use super::{guard, show, FsKind, GAttr, GEntry, GKind, GuestFile, GuestFs, MAX_ENTRIES};
use crate::error::{Error, Result};

const ROOT: u64 = 5;
/// Records below this in the root are NTFS's own metafiles ($MFT, ...).
const FIRST_USER_RECORD: u64 = 24;
const TAG_SYMLINK: u32 = 0xa000_000c;
const TAG_MOUNT_POINT: u32 = 0xa000_0003;
/// 100 ns intervals from 1601-01-01 to 1970-01-01.
const EPOCH_DIFF: u64 = 116_444_736_000_000_000;

/// A directory entry as the directory's index holds it: the file's record
/// number and the index's copy of its flags and kind.
struct Indexed {
    rec: u64,
    flags: NtfsFileAttributeFlags,
    dir: bool,
}

struct Inner {
    ntfs: Ntfs,
    slice: Slice,
}

pub struct NtfsFs(Arc<Inner>);

fn err(path: &[u8], e: NtfsError) -> Error {
    match e {
        NtfsError::NotADirectory { .. } => Error::InvalidInput(format!("NTFS {}: not a directory", show(path))),
        e => Error::Corrupt(format!("NTFS {}: {e}", show(path))),
    }
}

impl NtfsFs {
    pub fn open(slice: Slice) -> Result<NtfsFs> {
        let mut io = Cursor::new(slice.clone());
        let ntfs = guard(
            || "NTFS".into(),
            || {
                let mut n = Ntfs::new(&mut io).map_err(|e| err(b"", e))?;
                n.read_upcase_table(&mut io).map_err(|e| err(b"", e))?;
                Ok(n)
            },
        )?;
        Ok(NtfsFs(Arc::new(Inner { ntfs, slice })))
    }
}

impl Inner {
    /// Runs `f` on the file record at `path`, under the panic guard and a
    /// metadata budget: the common start of stat, list and readlink.
    fn on_file<T>(&self, path: &[u8], f: impl FnOnce(&Self, &mut Cursor, NtfsFile<'_>) -> Result<T>) -> Result<T> {
        guard(
            || format!("NTFS {}", show(path)),
            || {
                let mut io = self.io(META_FUEL);
                let rec = self.resolve(&mut io, path)?;
                let file = self.ntfs.file(&mut io, rec).map_err(|e| err(path, e))?;
                f(self, &mut io, file)
            },
        )
    }

    /// A cursor whose budget is its own: operations run in parallel.
    fn io(&self, fuel: i64) -> Cursor {
        let mut s = self.slice.clone();
        s.fuel = Default::default();
        s.fuel.set(fuel);
        Cursor::new(s)
    }

    /// The record number of `path`, one index lookup per component.
    fn resolve(&self, io: &mut Cursor, path: &[u8]) -> Result<u64> {
        let mut rec = ROOT;
        for c in super::components(path)? {
            let name = std::str::from_utf8(c).map_err(|_| Error::NotFound(format!("NTFS {}: no such file", show(path))))?;
            let dir = self.ntfs.file(io, rec).map_err(|e| err(path, e))?;
            let index = dir.directory_index(io).map_err(|e| err(path, e))?;
            let mut finder = index.finder();
            let exact = match NtfsFileNameIndex::find(&mut finder, &self.ntfs, io, name) {
                None => None,
                Some(entry) => {
                    let entry = entry.map_err(|e| err(path, e))?;
                    let key = entry.key().ok_or_else(|| Error::Corrupt(format!("NTFS {}: index entry without a key", show(path))))?.map_err(|e| err(path, e))?;
                    let same = key.namespace() != NtfsFileNamespace::Dos && key.name().to_string().is_ok_and(|n| n == name);
                    same.then(|| entry.file_reference().file_record_number())
                }
            };
            let next = match exact {
                Some(next) => next,
                // Another spelling, or nothing: a name that differs only
                // in case may sit next to the one the search met.
                None => super::pick(self.named(io, path, &dir, false)?.into_iter().map(|(n, e)| (n, e.rec)), c)
                    .ok_or_else(|| Error::NotFound(format!("NTFS {}: no such file", show(path))))?,
            };
            if rec == ROOT && next < FIRST_USER_RECORD {
                return Err(Error::NotFound(format!("NTFS {}: no such file", show(path))));
            }
            rec = next;
        }
        Ok(rec)
    }

    /// The entries of directory `dir` (`path`, for messages) with what its
    /// index says of them;
    /// DOS aliases and the root's metafiles left out, bad names not (see
    /// [`super::good_entries`]). Names that are not UTF-16 are left out,
    /// with a warning when `listing`.
    fn named(&self, io: &mut Cursor, path: &[u8], dir: &NtfsFile, listing: bool) -> Result<Vec<(Vec<u8>, Indexed)>> {
        let index = dir.directory_index(io).map_err(|e| err(path, e))?;
        let mut it = index.entries();
        let mut out = Vec::new();
        while let Some(e) = it.next(io) {
            let e = e.map_err(|e| err(path, e))?;
            let Some(key) = e.key() else { continue };
            let key = key.map_err(|e| err(path, e))?;
            if key.namespace() == NtfsFileNamespace::Dos {
                continue;
            }
            let rec = e.file_reference().file_record_number();
            if dir.file_record_number() == ROOT && rec < FIRST_USER_RECORD {
                continue;
            }
            if out.len() >= MAX_ENTRIES {
                return Err(Error::Corrupt(format!("NTFS {}: more than {MAX_ENTRIES} entries", show(path))));
            }
            match key.name().to_string() {
                Ok(name) => out.push((name.into_bytes(), Indexed { rec, flags: key.file_attributes(), dir: key.is_directory() })),
                Err(_) if !listing => {}
                Err(_) => super::skipped("NTFS", path, key.name().to_string_lossy().as_bytes(), "is not valid UTF-16"),
            }
        }
        Ok(out)
    }

    fn attr(&self, io: &mut Cursor, path: &[u8], f: &NtfsFile) -> Result<GAttr> {
        let info = f.info().map_err(|e| err(path, e))?;
        let flags = info.file_attributes();
        let t = info.modification_time().nt_timestamp() as i128 - EPOCH_DIFF as i128;
        let dir = f.is_directory();
        let link = if dir && !flags.contains(NtfsFileAttributeFlags::REPARSE_POINT) { None } else { self.link_target(io, path, f, flags)? };
        let (kind, size) = match (&link, dir) {
            (Some(t), _) => (GKind::Symlink, t.len() as u64),
            (None, true) => (GKind::Dir, self.index_len(io, path, f)?),
            (None, false) => (GKind::File, self.data_len(io, path, f)?),
        };
        let ro = flags.contains(NtfsFileAttributeFlags::READ_ONLY);
        Ok(GAttr {
            kind,
            size,
            mode: match kind {
                GKind::Dir => 0o755,
                GKind::Symlink => 0o777,
                _ if ro => 0o444,
                _ => 0o644,
            },
            uid: 0,
            gid: 0,
            mtime_s: t.div_euclid(10_000_000) as i64,
            mtime_ns: (t.rem_euclid(10_000_000) * 100) as u32,
            ino: Some(f.file_record_number()),
            nlink: if dir { 2 } else { f.hard_link_count().max(1) as u32 },
            allocated: None,
        })
    }

    /// Where the data of file `f` (`size` bytes) is stored, as sorted,
    /// disjoint `[start, end)` ranges of the file: everything else is in
    /// sparse runs and reads as zeros. None where the runs are not in one
    /// attribute (an attribute list), or the data is resident, compressed
    /// or encrypted: then the file is all data.
    fn stretches(&self, io: &mut Cursor, path: &[u8], f: &NtfsFile, size: u64) -> Result<Option<Vec<(u64, u64)>>> {
        let Some(item) = f.data(io, "") else { return Ok(None) };
        let a = item.map_err(|e| err(path, e))?;
        let a = a.to_attribute().map_err(|e| err(path, e))?;
        if a.flags().intersects(NtfsAttributeFlags::COMPRESSED | NtfsAttributeFlags::ENCRYPTED) {
            return Ok(None);
        }
        let NtfsAttributeValue::NonResident(v) = a.value(io).map_err(|e| err(path, e))? else { return Ok(None) };
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut pos = 0u64;
        for run in v.data_runs() {
            if pos >= size || out.len() >= MAX_ENTRIES {
                break;
            }
            let run = run.map_err(|e| err(path, e))?;
            let end = pos.saturating_add(run.allocated_size()).min(size);
            if run.data_position().value().is_some() && end > pos {
                match out.last_mut() {
                    Some(last) if last.1 == pos => last.1 = end,
                    _ => out.push((pos, end)),
                }
            }
            pos = end;
        }
        // Past the runs there is nothing to read: the crate fails there.
        if pos < size {
            out.push((pos, size));
        }
        Ok(Some(out))
    }

    /// A directory's size as ntfs-3g states it: that of its index
    /// allocation (`$I30`); 0 while the index fits in the record's root.
    fn index_len(&self, io: &mut Cursor, path: &[u8], f: &NtfsFile) -> Result<u64> {
        let mut attrs = f.attributes();
        while let Some(item) = attrs.next(io) {
            let item = item.map_err(|e| err(path, e))?;
            let a = item.to_attribute().map_err(|e| err(path, e))?;
            if a.ty().ok() == Some(NtfsAttributeType::IndexAllocation) && a.name().is_ok_and(|n| n == "$I30") {
                return Ok(a.value_length());
            }
        }
        Ok(0)
    }

    fn data_len(&self, io: &mut Cursor, path: &[u8], f: &NtfsFile) -> Result<u64> {
        match f.data(io, "") {
            None => Ok(0),
            Some(item) => {
                let item = item.map_err(|e| err(path, e))?;
                Ok(item.to_attribute().map_err(|e| err(path, e))?.value_length())
            }
        }
    }

    /// The target of a symlink-like reparse point or Interix link, if `f` is one.
    fn link_target(&self, io: &mut Cursor, path: &[u8], f: &NtfsFile, flags: NtfsFileAttributeFlags) -> Result<Option<Vec<u8>>> {
        if flags.contains(NtfsFileAttributeFlags::REPARSE_POINT) {
            let mut attrs = f.attributes();
            while let Some(item) = attrs.next(io) {
                let item = item.map_err(|e| err(path, e))?;
                let a = item.to_attribute().map_err(|e| err(path, e))?;
                if a.ty().ok() != Some(NtfsAttributeType::ReparsePoint) {
                    continue;
                }
                let n = a.value_length().min(16 << 10) as usize;
                let mut buf = vec![0u8; n];
                a.value(io).map_err(|e| err(path, e))?.read_exact(io, &mut buf).map_err(|e| err(path, e))?;
                return Ok(parse_reparse(&buf));
            }
            return Ok(None);
        }
        if flags.contains(NtfsFileAttributeFlags::SYSTEM)
            && !f.is_directory()
            && let Some(item) = f.data(io, "")
        {
            let a = item.map_err(|e| err(path, e))?;
            let a = a.to_attribute().map_err(|e| err(path, e))?;
            let n = a.value_length();
            if (10..=8192).contains(&n) && n % 2 == 0 {
                let mut buf = vec![0u8; n as usize];
                a.value(io).map_err(|e| err(path, e))?.read_exact(io, &mut buf).map_err(|e| err(path, e))?;
                if let Some(t) = buf.strip_prefix(b"IntxLNK\x01") {
                    return Ok(Some(utf16(t)));
                }
            }
        }
        Ok(None)
    }
}

fn utf16(b: &[u8]) -> Vec<u8> {
    let units: Vec<u16> = b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    String::from_utf16_lossy(&units).into_bytes()
}

/// Symlink (tag 0xA000000C) and junction (0xA0000003) reparse data: the
/// print name if present, else the substitute name; `\` becomes `/`.
fn parse_reparse(b: &[u8]) -> Option<Vec<u8>> {
    if b.len() < 16 {
        return None;
    }
    let tag = u32::from_le_bytes(b[0..4].try_into().unwrap());
    let u16le = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let path_base = match tag {
        TAG_SYMLINK => 20,
        TAG_MOUNT_POINT => 16,
        _ => return None,
    };
    let (sub_off, sub_len, pr_off, pr_len) = (u16le(8), u16le(10), u16le(12), u16le(14));
    let pick = |off: usize, len: usize| b.get(path_base + off..path_base + off + len).filter(|s| !s.is_empty());
    let raw = pick(pr_off, pr_len).or_else(|| pick(sub_off, sub_len))?;
    let mut t = utf16(raw);
    for c in t.iter_mut() {
        if *c == b'\\' {
            *c = b'/';
        }
    }
    Some(t)
}

impl GuestFs for NtfsFs {
    fn kind(&self) -> FsKind {
        FsKind::Ntfs
    }

    fn stat(&self, path: &[u8]) -> Result<GAttr> {
        self.0.on_file(path, |s, io, f| s.attr(io, path, &f))
    }

    fn list(&self, path: &[u8]) -> Result<Vec<GEntry>> {
        self.0.on_file(path, |s, io, dir| {
            let mut out = Vec::new();
            let mut links = Vec::new();
            for (name, Indexed { rec, flags, dir: is_dir }) in super::good_entries("NTFS", path, s.named(io, path, &dir, true)?) {
                if flags.contains(NtfsFileAttributeFlags::REPARSE_POINT) || flags.contains(NtfsFileAttributeFlags::SYSTEM) {
                    links.push((out.len(), rec));
                }
                let kind = if is_dir { GKind::Dir } else { GKind::File };
                out.push(GEntry { name, kind, attr: None });
            }
            // The index's copy of the flags only hints at a link; ask the record.
            for (i, rec) in links {
                let child = [path, b"/", &out[i].name].concat();
                if let Ok(f) = s.ntfs.file(io, rec)
                    && let Ok(a) = s.attr(io, &child, &f)
                {
                    out[i].kind = a.kind;
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    fn readlink(&self, path: &[u8]) -> Result<Vec<u8>> {
        self.0.on_file(path, |s, io, f| {
            let flags = f.info().map_err(|e| err(path, e))?.file_attributes();
            s.link_target(io, path, &f, flags)?.ok_or_else(|| Error::InvalidInput(format!("NTFS {}: not a symlink", show(path))))
        })
    }

    fn open(&self, path: &[u8]) -> Result<Box<dyn GuestFile>> {
        let s = &self.0;
        let (rec, size, stretches) = guard(
            || format!("NTFS {}", show(path)),
            || {
                let mut io = s.io(META_FUEL);
                let rec = s.resolve(&mut io, path)?;
                let f = s.ntfs.file(&mut io, rec).map_err(|e| err(path, e))?;
                let a = s.attr(&mut io, path, &f)?;
                if a.kind != GKind::File {
                    return Err(Error::InvalidInput(format!("NTFS {}: not a regular file", show(path))));
                }
                Ok((rec, a.size, s.stretches(&mut io, path, &f, a.size)?))
            },
        )?;
        Ok(Box::new(NtfsFileHandle { fs: self.0.clone(), rec, size, path: path.to_vec(), stretches }))
    }
}

struct NtfsFileHandle {
    fs: Arc<Inner>,
    rec: u64,
    size: u64,
    path: Vec<u8>,
    /// See [`Inner::stretches`].
    stretches: Option<Vec<(u64, u64)>>,
}

impl GuestFile for NtfsFileHandle {
    fn size(&self) -> u64 {
        self.size
    }

    /// From the data runs: a sparse file's holes are skipped by readers
    /// that ask (`files cp`), so a file that claims 60 GiB over a few
    /// clusters costs those clusters.
    fn seek(&self, offset: u64, data: bool) -> Option<u64> {
        let Some(st) = &self.stretches else { return Some(if data { offset } else { self.size }) };
        let i = st.partition_point(|&(_, end)| end <= offset);
        match (st.get(i), data) {
            (None, true) => None,
            (Some(&(start, _)), true) => Some(start.max(offset)),
            // Stretches are merged: a hole starts where this one ends.
            (Some(&(start, end)), false) if start <= offset => Some(end),
            (_, false) => Some(offset),
        }
    }

    /// Re-reads the file record (one MFT record) and seeks its data runs.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let want = super::readable(self.size, offset, buf.len());
        if want == 0 {
            return Ok(0);
        }
        let (s, path) = (&self.fs, &self.path[..]);
        guard(
            || format!("NTFS {}", show(path)),
            || {
                let mut io = s.io(META_FUEL + 4 * want as i64);
                let f = s.ntfs.file(&mut io, self.rec).map_err(|e| err(path, e))?;
                let item = f.data(&mut io, "").ok_or_else(|| Error::Corrupt(format!("NTFS {}: no data", show(path))))?.map_err(|e| err(path, e))?;
                let a = item.to_attribute().map_err(|e| err(path, e))?;
                if a.flags().intersects(NtfsAttributeFlags::COMPRESSED | NtfsAttributeFlags::ENCRYPTED) {
                    return Err(Error::Corrupt(format!("NTFS {}: compressed or encrypted files are not supported", show(path))));
                }
                let mut v = a.value(&mut io).map_err(|e| err(path, e))?;
                v.seek(&mut io, SeekFrom::Start(offset)).map_err(|e| err(path, e))?;
                super::read_full(&mut buf[..want], |b| v.read(&mut io, b).map_err(|e| err(path, e)))
            },
        )
    }
}
