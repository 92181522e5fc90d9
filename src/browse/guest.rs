//! The `files/` part of a recovery point: partitions and guest filesystems.
//!
//! ```text
//! files/NAME/pN/...      partition N's filesystem (p0: a filesystem on the whole disk)
//! files/NAME/pN.txt      why partition N is not shown (XFS, LVM, swap, LUKS, unknown)
//! files/NAME/README.txt  when the disk has no partition table and no filesystem we know
//! ```
//!
//! Nothing is read until a path asks for it: the partition table when
//! `files/NAME` is listed or looked into, a filesystem when its `pN` is.
//! Open filesystems are cached (a few, most recently used) and keep their
//! disk open; a filesystem that fails to open answers EIO for its paths
//! and is tried again on the next access.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Attr, Handle, Kind, Node, PointInfo, VaultTree};
use crate::error::{Error, Result};
use crate::guestfs::{self, DiskReadAt, GAttr, GKind, GuestFile, GuestFs, Layout, ReadAt, Scheme, Slice};
use crate::id::RecoveryPointId;

/// Filesystems kept open (each keeps its disk open: an index snapshot and
/// a reader's lease; its map pages share the mount's bounded cache).
const OPEN_FS: usize = 8;
/// Guest attributes remembered (a lookup is followed by a getattr).
const CACHED_ATTRS: usize = 200_000;

type FsKey = (RecoveryPointId, String, u32);

#[derive(Default)]
pub(super) struct GuestCache {
    layouts: Mutex<HashMap<(RecoveryPointId, String), Arc<Layout>>>,
    /// Most recently used last.
    open: Mutex<Vec<(FsKey, Arc<dyn GuestFs>)>>,
    attrs: Mutex<HashMap<Node, GAttr>>,
    /// Hard-link key → the inode number of the first path seen with it.
    links: Mutex<HashMap<u64, u64>>,
}

/// Guest metadata the FUSE adapter shows instead of the vault's defaults.
#[derive(Clone, Copy, Debug)]
pub struct GuestMeta {
    pub uid: u32,
    pub gid: u32,
    pub mtime_s: i64,
    pub mtime_ns: u32,
    /// Identifies the guest inode across its hard links (a hash of the
    /// partition and the guest's inode number); None where the filesystem
    /// has no hard links.
    pub ino: Option<u64>,
}

pub fn kind_of(k: GKind) -> Kind {
    match k {
        GKind::File => Kind::File,
        GKind::Dir => Kind::Dir,
        GKind::Symlink => Kind::Symlink,
        GKind::CharDev => Kind::CharDev,
        GKind::BlockDev => Kind::BlockDev,
        GKind::Fifo => Kind::Fifo,
        GKind::Socket => Kind::Socket,
    }
}

/// A guest file shows its true allocation, so that `cp` and `du` see its
/// holes, when they add up to at least this. Smaller holes are shown as
/// allocated: a reader told of holes asks where they are (`cp`: three
/// SEEK round trips to this process per file), which costs more than
/// reading a few KiB of zeros; measured on a `cp -r` of 2,400 small files
/// with tail holes, 15% of its time.
const SHOWN_HOLES: u64 = 1 << 20;

/// The mount's view of guest node `node`'s attributes `a`.
fn attr_of(node: &Node, a: &GAttr) -> Attr {
    let Node::Guest(id, disk, part, _) = node else { unreachable!("attr_of a vault node") };
    let key = (*id, disk.clone(), *part);
    Attr {
        kind: kind_of(a.kind),
        size: a.size,
        allocated: match a.allocated {
            Some(n) if a.size.saturating_sub(n) >= SHOWN_HOLES => n,
            _ => a.size,
        },
        mode: a.mode,
        mtime_ms: a.mtime_s.saturating_mul(1000) + (a.mtime_ns / 1_000_000) as i64,
        nlink: a.nlink,
        guest: Some(GuestMeta { uid: a.uid, gid: a.gid, mtime_s: a.mtime_s, mtime_ns: a.mtime_ns, ino: a.ino.map(|i| st_ino(&key, i)) }),
    }
}

/// A stable st_ino for guest inode `ino` of one filesystem: hashed with the
/// point, disk and partition, top bit set so it never meets a vault node's.
fn st_ino(key: &FsKey, ino: u64) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(key.0.to_hex().as_bytes());
    h.update(key.1.as_bytes());
    h.update(&key.2.to_le_bytes());
    h.update(&ino.to_le_bytes());
    let b = h.finalize();
    u64::from_le_bytes(b.as_bytes()[..8].try_into().unwrap()) | (1 << 63)
}

fn part_name(n: u32) -> String {
    format!("p{n}")
}

/// "p3" → 3; "p03" and "p" are not partition names.
pub fn parse_part(s: &str) -> Option<u32> {
    let d = s.strip_prefix('p')?;
    if d.is_empty() || (d.len() > 1 && d.starts_with('0')) || !d.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    d.parse().ok()
}

impl VaultTree {
    /// The partition table of a disk, read once per mount.
    pub fn layout(&self, id: &RecoveryPointId, disk: &str) -> Result<Arc<Layout>> {
        let key = (*id, disk.to_owned());
        if let Some(l) = self.guests.layouts.lock().unwrap().get(&key) {
            return Ok(l.clone());
        }
        let p = self.point(id)?;
        let l = Arc::new(guestfs::read_layout(&Slice::whole(self.disk_bytes(&p, disk)?))?);
        self.guests.layouts.lock().unwrap().insert(key, l.clone());
        Ok(l)
    }

    fn disk_bytes(&self, p: &PointInfo, disk: &str) -> Result<Arc<dyn ReadAt>> {
        Ok(Arc::new(DiskReadAt { disk: self.open_disk(p, disk)?, prefetch: self.prefetch.clone() }))
    }

    /// The open filesystem of partition `part` (cached).
    pub fn guest_fs(&self, id: &RecoveryPointId, disk: &str, part: u32) -> Result<Arc<dyn GuestFs>> {
        let key = (*id, disk.to_owned(), part);
        {
            let mut open = self.guests.open.lock().unwrap();
            if let Some(i) = open.iter().position(|(k, _)| *k == key) {
                let e = open.remove(i);
                let fs = e.1.clone();
                open.push(e);
                return Ok(fs);
            }
        }
        let layout = self.layout(id, disk)?;
        let part_ = layout.partition(part).ok_or_else(|| Error::NotFound(format!("disk {disk} has no partition {part}")))?;
        let p = self.point(id)?;
        let slice = Slice::new(self.disk_bytes(&p, disk)?, part_.start, part_.size);
        let fs = guestfs::open_fs(part_.fs, slice).map_err(|e| match e {
            Error::Corrupt(m) => Error::Corrupt(format!("disk {disk} partition p{part}: {m}")),
            e => e,
        })?;
        let mut open = self.guests.open.lock().unwrap();
        if open.len() >= OPEN_FS {
            open.remove(0);
        }
        open.push((key, fs.clone()));
        Ok(fs)
    }

    pub(super) fn guest_attr(&self, node: &Node) -> Result<Attr> {
        let (time, size, text) = match node {
            Node::FilesDir(id) | Node::FilesDisk(id, _) => {
                let t = self.point(id)?.row.time_ms;
                return Ok(Attr { kind: Kind::Dir, size: 0, allocated: 0, mode: 0o555, mtime_ms: t, nlink: 2, guest: None });
            }
            Node::PartNote(id, ..) | Node::DiskNote(id, _) => {
                let t = self.point(id)?.row.time_ms;
                let n = self.note(node)?.len() as u64;
                (t, n, true)
            }
            Node::Guest(id, disk, part, path) => return Ok(attr_of(node, &self.guest_stat(node, id, disk, *part, path)?)),
            _ => return Err(Error::InvalidInput("not a guest node".into())),
        };
        debug_assert!(text);
        Ok(Attr { kind: Kind::File, size, allocated: size, mode: 0o444, mtime_ms: time, nlink: 1, guest: None })
    }

    /// The guest's metadata of `node` (cached: a lookup is followed by a getattr).
    pub fn guest_stat(&self, node: &Node, id: &RecoveryPointId, disk: &str, part: u32, path: &[u8]) -> Result<GAttr> {
        if let Some(a) = self.guests.attrs.lock().unwrap().get(node) {
            return Ok(*a);
        }
        let a = self.guest_fs(id, disk, part)?.stat(path)?;
        self.remember_attrs([(node.clone(), a)]);
        Ok(a)
    }

    fn remember_attrs(&self, attrs: impl IntoIterator<Item = (Node, GAttr)>) {
        let mut c = self.guests.attrs.lock().unwrap();
        for (node, a) in attrs {
            if c.len() >= CACHED_ATTRS {
                c.clear();
            }
            c.insert(node, a);
        }
    }

    /// The attributes of guest node `node` if known without asking the
    /// guest filesystem (from a stat or a listing); `None` for other nodes.
    pub(super) fn guest_cached_attr(&self, node: &Node) -> Option<Attr> {
        let a = *self.guests.attrs.lock().unwrap().get(node)?;
        Some(attr_of(node, &a))
    }

    pub(super) fn guest_lookup(&self, parent: &Node, name: &[u8]) -> Result<Node> {
        let not_found = || Error::NotFound(String::from_utf8_lossy(name).into_owned());
        let name_s = std::str::from_utf8(name).map_err(|_| not_found());
        Ok(match parent {
            Node::FilesDir(id) => {
                let name = name_s?;
                self.point(id)?.manifest.disks.iter().find(|d| d.name == name).ok_or_else(not_found)?;
                Node::FilesDisk(*id, name.to_owned())
            }
            Node::FilesDisk(id, disk) => {
                let name = name_s?;
                let layout = self.layout(id, disk)?;
                if name == "README.txt" && layout.scheme == Scheme::None {
                    return Ok(Node::DiskNote(*id, disk.clone()));
                }
                let (stem, note) = match name.strip_suffix(".txt") {
                    Some(s) => (s, true),
                    None => (name, false),
                };
                let n = parse_part(stem).ok_or_else(not_found)?;
                let p = layout.partition(n).ok_or_else(not_found)?;
                match (note, p.fs.supported()) {
                    (false, true) => Node::Guest(*id, disk.clone(), n, Vec::new()),
                    (true, false) => Node::PartNote(*id, disk.clone(), n),
                    _ => return Err(not_found()),
                }
            }
            Node::Guest(id, disk, part, path) => {
                // The listings never show such a name (see guestfs::bad_name).
                if guestfs::bad_name(name).is_some() {
                    return Err(not_found());
                }
                let child = if path.is_empty() { name.to_vec() } else { [&path[..], b"/", name].concat() };
                let node = Node::Guest(*id, disk.clone(), *part, child.clone());
                self.guest_stat(&node, id, disk, *part, &child)?;
                node
            }
            _ => return Err(Error::InvalidInput(format!("{}: not a directory", String::from_utf8_lossy(name)))),
        })
    }

    pub(super) fn guest_entries(&self, dir: &Node) -> Result<Vec<(Vec<u8>, Node, Kind)>> {
        Ok(match dir {
            Node::FilesDir(id) => {
                let p = self.point(id)?;
                p.manifest.disks.iter().map(|d| (d.name.clone().into_bytes(), Node::FilesDisk(*id, d.name.clone()), Kind::Dir)).collect()
            }
            Node::FilesDisk(id, disk) => {
                let layout = self.layout(id, disk)?;
                if layout.scheme == Scheme::None {
                    return Ok(vec![(b"README.txt".to_vec(), Node::DiskNote(*id, disk.clone()), Kind::File)]);
                }
                layout
                    .partitions
                    .iter()
                    .map(|p| {
                        if p.fs.supported() {
                            (part_name(p.number).into_bytes(), Node::Guest(*id, disk.clone(), p.number, Vec::new()), Kind::Dir)
                        } else {
                            (format!("p{}.txt", p.number).into_bytes(), Node::PartNote(*id, disk.clone(), p.number), Kind::File)
                        }
                    })
                    .collect()
            }
            Node::Guest(id, disk, part, path) => {
                let fs = self.guest_fs(id, disk, *part)?;
                let mut attrs = Vec::new();
                let out = fs
                    .list(path)?
                    .into_iter()
                    .map(|e| {
                        let child = if path.is_empty() { e.name.clone() } else { [&path[..], b"/", &e.name].concat() };
                        let node = Node::Guest(*id, disk.clone(), *part, child);
                        if let Some(a) = e.attr {
                            attrs.push((node.clone(), a));
                        }
                        (e.name, node, kind_of(e.kind))
                    })
                    .collect();
                // The entries' stats, free with the listing: the lookups
                // and getattrs (or readdirplus) that follow are answered here.
                self.remember_attrs(attrs);
                out
            }
            _ => return Err(Error::InvalidInput("not a directory".into())),
        })
    }

    pub(super) fn guest_parent(node: &Node) -> Node {
        match node {
            Node::FilesDir(id) => Node::Point(*id),
            Node::FilesDisk(id, _) => Node::FilesDir(*id),
            Node::PartNote(id, d, _) | Node::DiskNote(id, d) => Node::FilesDisk(*id, d.clone()),
            Node::Guest(id, d, p, path) => match path.iter().rposition(|b| *b == b'/') {
                None if path.is_empty() => Node::FilesDisk(*id, d.clone()),
                None => Node::Guest(*id, d.clone(), *p, Vec::new()),
                Some(i) => Node::Guest(*id, d.clone(), *p, path[..i].to_vec()),
            },
            _ => Node::Root,
        }
    }

    pub(super) fn guest_readlink(&self, node: &Node) -> Result<Vec<u8>> {
        match node {
            Node::Guest(id, disk, part, path) => self.guest_fs(id, disk, *part)?.readlink(path),
            _ => Err(Error::InvalidInput("not a symlink".into())),
        }
    }

    pub(super) fn guest_open(&self, node: &Node) -> Result<Handle> {
        match node {
            Node::PartNote(..) | Node::DiskNote(..) => Ok(Handle::bytes(self.note(node)?.into_bytes())),
            Node::Guest(id, disk, part, path) => {
                let fs = self.guest_fs(id, disk, *part)?;
                let file = fs.open(path)?;
                Ok(Handle::Guest(GuestHandle { file, _fs: fs }))
            }
            _ => Err(Error::InvalidInput("not a file".into())),
        }
    }

    /// The inode number to show for `node`: one per node, except that all
    /// paths of a hard-linked guest file share the first one's, so the
    /// kernel (which takes the inode number as the node id) sees one file.
    pub fn ino_of(&self, node: &Node, a: &Attr) -> u64 {
        match a.guest.and_then(|g| g.ino) {
            Some(key) if a.nlink > 1 && a.kind != Kind::Dir => {
                let mut links = self.guests.links.lock().unwrap();
                match links.get(&key) {
                    // Still a live number: the kernel knows the file by it.
                    Some(ino) if self.node(*ino).is_some() => *ino,
                    _ => {
                        if links.len() >= CACHED_ATTRS {
                            links.clear();
                        }
                        let ino = self.ino(node);
                        links.insert(key, ino);
                        ino
                    }
                }
            }
            _ => self.ino(node),
        }
    }

    /// The points of `item`, oldest first, with their names in the mount.
    pub fn item_points(&self, item: &str) -> Result<Vec<(String, RecoveryPointId)>> {
        let snap = self.snapshot()?;
        let list = snap.items.get(item).ok_or_else(|| Error::NotFound(format!("no recovery points for item {item:?}")))?;
        Ok(list.iter().map(|p| (p.name.clone(), p.row.id)).collect())
    }

    /// True when partition `part` of `disk` is block for block the same in
    /// points `a` and `b` (same place, same chunk ids): then every file in
    /// it is too, without reading any of them.
    pub fn same_partition(&self, a: &RecoveryPointId, b: &RecoveryPointId, disk: &str, part: u32) -> Result<bool> {
        let (la, lb) = (self.layout(a, disk)?, self.layout(b, disk)?);
        let (Some(pa), Some(pb)) = (la.partition(part), lb.partition(part)) else { return Ok(false) };
        if (pa.start, pa.size) != (pb.start, pb.size) {
            return Ok(false);
        }
        let (pa_, pb_) = (self.point(a)?, self.point(b)?);
        let (da, db) = (self.open_disk(&pa_, disk)?, self.open_disk(&pb_, disk)?);
        if da.block_size() != db.block_size() || pa.size == 0 {
            return Ok(da.block_size() == db.block_size());
        }
        let bs = da.block_size();
        da.same_blocks(&db, pa.start / bs, (pa.start + pa.size).div_ceil(bs))
    }

    fn note(&self, node: &Node) -> Result<String> {
        match node {
            Node::DiskNote(id, disk) => {
                let size = self.point(id)?.manifest.disk(disk)?.size;
                Ok(format!(
                    "Disk {disk} ({size} bytes) has no partition table (GPT or MBR) and no filesystem kluis can read\n\
                     at its start. It may be empty, encrypted, or a filesystem kluis does not support.\n\n\
                     The whole disk is in ../../disks/{disk}.raw; to inspect it with the host's tools:\n\
                     \x20 sudo losetup -r -f -P --show disks/{disk}.raw\n"
                ))
            }
            Node::PartNote(id, disk, n) => {
                let layout = self.layout(id, disk)?;
                let p = layout.partition(*n).ok_or_else(|| Error::NotFound(format!("p{n}.txt")))?;
                Ok(format!(
                    "Partition p{n} of disk {disk} holds: {}.\n\
                     kluis reads ext2/3/4, FAT12/16/32 and NTFS inside disks; this one is not shown as files.\n\n\
                     table entry: {}\nstart: byte {}\nsize: {} bytes\n\n\
                     The whole disk is in ../../disks/{disk}.raw; to mount this partition read-only with the host's tools:\n\
                     \x20 sudo losetup -r -f -P --show disks/{disk}.raw      # prints /dev/loopX\n\
                     \x20 sudo mount -o ro /dev/loopXp{n} /mnt               # LVM: vgscan and vgchange -ay first; LUKS: cryptsetup open --readonly\n",
                    p.fs.name(),
                    p.table_type,
                    p.start,
                    p.size
                ))
            }
            _ => Err(Error::InvalidInput("not a note".into())),
        }
    }
}

pub struct GuestHandle {
    pub(super) file: Box<dyn GuestFile>,
    /// Keeps the filesystem (and its disk) open while the file is.
    pub(super) _fs: Arc<dyn GuestFs>,
}

impl GuestHandle {
    pub fn size(&self) -> u64 {
        self.file.size()
    }
}
