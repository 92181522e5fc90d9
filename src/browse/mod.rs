//! The vault as a read-only tree of items, recovery points, disks and config
//! files, independent of FUSE (the adapter in crate::fuse maps it to the
//! kernel; `kluis files` can walk it without a mount).
//!
//! ```text
//! /ITEM/latest -> <newest point name>
//! /ITEM/<point name>/recovery-point.json
//! /ITEM/<point name>/disks/NAME.raw | NAME.vhd
//! /ITEM/<point name>/config/FILE
//! /ITEM/<point name>/files/NAME/pN/...   (see guest.rs)
//! ```
//!
//! The list of items and points is a snapshot of the index refreshed at
//! most every [`REFRESH`], so new points appear and deleted ones vanish in a
//! live mount. Everything inside a point is immutable.

pub mod disk;
mod guest;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;

use crate::catalog::{Catalog, PointRow};
use crate::error::{Error, Result};
use crate::id::{ChunkId, RecoveryPointId};
use crate::image::vhd;
use crate::recovery_point::{BlockBytes, Manifest};
use crate::timefmt::point_names;
use disk::{OpenDisk, Prefetch, ReadCaches};
pub use guest::{parse_part, GuestHandle, GuestMeta};

/// How stale the list of items and points may be.
pub const REFRESH: Duration = Duration::from_millis(1000);
/// Decoded frames kept in memory, in bytes.
const CACHE_BYTES: u64 = 96 << 20;
/// Map pages kept in memory, in bytes: about 1,100 leaves with their chunk
/// locations, which cover 18 GiB of disk at 64 KiB blocks.
const PAGE_CACHE_BYTES: u64 = 16 << 20;
/// Blocks fetched ahead of a sequential reader: 16 MiB at 64 KiB blocks,
/// five frames of 3 MiB runs (eight of 2 MiB when this was measured; 3 MiB
/// runs read as fast). A `dd` of a mounted 3 GiB disk, cold,
/// alternating runs: 2.75–2.97 s (median 2.89) with 4 MiB ahead,
/// 2.41–2.61 s (2.52) with 16 MiB, 2.41–2.84 s (2.57) with 32 MiB.
const READAHEAD_BLOCKS: u64 = 256;
/// What a read of holes is answered from: the largest read the kernel sends.
static ZEROS: [u8; crate::fuse::MAX_READ as usize] = [0; crate::fuse::MAX_READ as usize];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DiskFormat {
    Raw,
    Vhd,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    Root,
    Item(String),
    /// `ITEM/latest` as it was looked up: (item, the name it points to).
    /// A new newest point makes a new node (a new inode), so the kernel may
    /// cache each node's target for good (FUSE_CACHE_SYMLINKS): `ls -l` of
    /// a big directory under `latest/` then costs no readlink per entry.
    Latest(String, String),
    Point(RecoveryPointId),
    PointJson(RecoveryPointId),
    DisksDir(RecoveryPointId),
    Disk(RecoveryPointId, String, DiskFormat),
    ConfigDir(RecoveryPointId),
    Config(RecoveryPointId, String),
    /// `files/`, `files/NAME`, a guest path (empty = the root of `pN`),
    /// `pN.txt` for an unsupported partition, `README.txt` for a disk
    /// with nothing we can read.
    FilesDir(RecoveryPointId),
    FilesDisk(RecoveryPointId, String),
    Guest(RecoveryPointId, String, u32, Vec<u8>),
    PartNote(RecoveryPointId, String, u32),
    DiskNote(RecoveryPointId, String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    CharDev,
    BlockDev,
    Fifo,
    Socket,
}

#[derive(Clone, Copy, Debug)]
pub struct Attr {
    pub kind: Kind,
    pub size: u64,
    /// Bytes actually backed by data (for `du` and sparse copies).
    pub allocated: u64,
    pub mode: u16,
    pub mtime_ms: i64,
    pub nlink: u32,
    /// Set for files inside a guest filesystem: their owner, exact mtime, inode.
    pub guest: Option<GuestMeta>,
}

struct PointInfo {
    row: PointRow,
    name: String,
    manifest: Manifest,
}

#[derive(Default)]
struct Snapshot {
    items: BTreeMap<String, Vec<Arc<PointInfo>>>,
    by_id: HashMap<RecoveryPointId, Arc<PointInfo>>,
}

/// Inode numbers: one per node, stable while the kernel holds a
/// reference to it (its lookup count: a lookup or a READDIRPLUS entry adds
/// one, FORGET takes them back), and then dropped, so a long-running mount
/// keeps only the nodes the kernel keeps. Numbers are never reused: a
/// number the kernel has forgotten never names another node.
struct Inodes {
    by_node: HashMap<Node, u64>,
    /// ino → (node, the kernel's lookup count).
    by_ino: HashMap<u64, (Node, u64)>,
    next: u64,
    /// Numbered nodes the kernel holds no count on (listed by a plain
    /// readdir, say) are dropped when there are more than this many nodes.
    prune_at: usize,
}

/// See [`Inodes::prune_at`].
const INODES_PRUNE_AT: usize = 100_000;

impl Inodes {
    fn new() -> Inodes {
        let mut i = Inodes { by_node: HashMap::new(), by_ino: HashMap::new(), next: 2, prune_at: INODES_PRUNE_AT };
        // The root is never forgotten.
        i.by_ino.insert(1, (Node::Root, u64::MAX / 2));
        i.by_node.insert(Node::Root, 1);
        i
    }

    fn ino(&mut self, node: &Node) -> u64 {
        if let Some(n) = self.by_node.get(node) {
            return *n;
        }
        if self.by_ino.len() >= self.prune_at {
            self.by_ino.retain(|_, (_, count)| *count > 0);
            let by_ino = &self.by_ino;
            self.by_node.retain(|_, ino| by_ino.contains_key(ino));
            self.prune_at = (2 * self.by_ino.len()).max(INODES_PRUNE_AT);
        }
        let n = self.next;
        self.next += 1;
        self.by_ino.insert(n, (node.clone(), 0));
        self.by_node.insert(node.clone(), n);
        n
    }
}

pub struct VaultTree {
    root: PathBuf,
    index: Mutex<Catalog>,
    snap: RwLock<(Instant, Arc<Snapshot>)>,
    inodes: Mutex<Inodes>,
    caches: Arc<ReadCaches>,
    guests: guest::GuestCache,
    open_disks: Mutex<HashMap<(RecoveryPointId, String), Weak<OpenDisk>>>,
    prefetch: Prefetch,
    started_ms: i64,
}

/// Threads that load frames ahead of a sequential reader. They read the
/// packs with direct I/O, which waits for the device, so there are three per
/// core: `dd` of the bench's mounted 3 GiB disk, cold, took 3.3–4.1 s with
/// two threads, 2.7–3.3 s with four, 2.6–3.0 s with six (two cores).
fn readahead_threads() -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    (3 * cores).clamp(4, 16)
}

impl VaultTree {
    pub fn new(vault_root: &Path) -> Result<Arc<VaultTree>> {
        let vault = crate::vault::Vault::open(vault_root)?; // validates the header
        let index = vault.index_reader()?;
        let (tx, rx) = bounded::<(Arc<OpenDisk>, u64)>(256);
        for _ in 0..readahead_threads() {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name("kluis-readahead".into())
                .spawn(move || {
                    disk::load_with_direct_io();
                    for (disk, block) in rx.iter() {
                        // Errors surface on the real read, with its context.
                        let _ = disk.block(block);
                    }
                })
                .map_err(|e| Error::io("start readahead thread", e))?;
        }
        let tree = VaultTree {
            root: vault_root.to_owned(),
            index: Mutex::new(index),
            snap: RwLock::new((Instant::now() - REFRESH * 2, Arc::new(Snapshot::default()))),
            inodes: Mutex::new(Inodes::new()),
            caches: Arc::new(ReadCaches::new(vault_root, vault.index_access(), CACHE_BYTES, PAGE_CACHE_BYTES)),
            guests: Default::default(),
            open_disks: Mutex::new(HashMap::new()),
            prefetch: tx,
            started_ms: crate::catalog::now_ms(),
        };
        tree.snapshot()?;
        Ok(Arc::new(tree))
    }

    fn snapshot(&self) -> Result<Arc<Snapshot>> {
        {
            let s = self.snap.read().unwrap();
            if s.0.elapsed() < REFRESH {
                return Ok(s.1.clone());
            }
        }
        let rows = self.index.lock().unwrap().points(None, false)?;
        let mut snap = Snapshot::default();
        let mut grouped: BTreeMap<String, Vec<PointRow>> = BTreeMap::new();
        for r in rows {
            grouped.entry(r.item.clone()).or_default().push(r);
        }
        for (item, rows) in grouped {
            let names = point_names(&rows.iter().map(|r| r.time_ms).collect::<Vec<_>>());
            let mut list = Vec::new();
            for (row, name) in rows.into_iter().zip(names) {
                let manifest = match Manifest::parse(&row.manifest) {
                    Ok(m) => m,
                    Err(e) => {
                        log::error!("recovery point {} of {item}: {e}; not shown", row.id);
                        continue;
                    }
                };
                let p = Arc::new(PointInfo { row, name, manifest });
                snap.by_id.insert(p.row.id, p.clone());
                list.push(p);
            }
            snap.items.insert(item, list);
        }
        let snap = Arc::new(snap);
        *self.snap.write().unwrap() = (Instant::now(), snap.clone());
        Ok(snap)
    }

    pub fn ino(&self, node: &Node) -> u64 {
        self.inodes.lock().unwrap().ino(node)
    }

    /// The kernel took a reference to inode `ino` of `node` (a lookup).
    pub fn looked_up(&self, ino: u64, node: &Node) {
        let mut i = self.inodes.lock().unwrap();
        let e = i.by_ino.entry(ino).or_insert_with(|| (node.clone(), 0));
        e.1 += 1;
        let node = e.0.clone();
        i.by_node.entry(node).or_insert(ino);
    }

    /// The kernel dropped `n` references to inode `ino`; at none left, the
    /// number goes.
    pub fn forget(&self, ino: u64, n: u64) {
        let mut i = self.inodes.lock().unwrap();
        let Some(e) = i.by_ino.get_mut(&ino) else { return };
        e.1 = e.1.saturating_sub(n);
        if e.1 == 0 {
            let (node, _) = i.by_ino.remove(&ino).unwrap();
            if i.by_node.get(&node) == Some(&ino) {
                i.by_node.remove(&node);
            }
        }
    }

    /// Inode numbers known now (for tests and the bench).
    pub fn inode_count(&self) -> usize {
        self.inodes.lock().unwrap().by_ino.len()
    }

    pub fn node(&self, ino: u64) -> Option<Node> {
        self.inodes.lock().unwrap().by_ino.get(&ino).map(|(n, _)| n.clone())
    }

    fn point(&self, id: &RecoveryPointId) -> Result<Arc<PointInfo>> {
        self.snapshot()?.by_id.get(id).cloned().ok_or_else(|| Error::NotFound("recovery point is gone".into()))
    }

    /// True for nodes whose content can change (directories listing points).
    pub fn is_dynamic(node: &Node) -> bool {
        matches!(node, Node::Root | Node::Item(_) | Node::Latest(..))
    }

    pub fn attr(&self, node: &Node) -> Result<Attr> {
        let dir = |mtime_ms| Attr { kind: Kind::Dir, size: 0, allocated: 0, mode: 0o555, mtime_ms, nlink: 2, guest: None };
        let file = |size, allocated, mtime_ms| Attr { kind: Kind::File, size, allocated, mode: 0o444, mtime_ms, nlink: 1, guest: None };
        Ok(match node {
            Node::Root => dir(self.started_ms),
            Node::Item(item) => {
                let snap = self.snapshot()?;
                let list = snap.items.get(item).ok_or_else(|| Error::NotFound(format!("no item {item}")))?;
                dir(list.last().map(|p| p.row.time_ms).unwrap_or(self.started_ms))
            }
            Node::Latest(item, target) => {
                let t = self.snapshot()?.items.get(item).and_then(|l| l.iter().find(|p| p.name == *target)).map_or(0, |p| p.row.time_ms);
                Attr { kind: Kind::Symlink, size: target.len() as u64, allocated: 0, mode: 0o777, mtime_ms: t, nlink: 1, guest: None }
            }
            Node::Point(id) | Node::DisksDir(id) | Node::ConfigDir(id) => dir(self.point(id)?.row.time_ms),
            Node::PointJson(id) => {
                let p = self.point(id)?;
                let n = point_json(&p).len() as u64;
                file(n, n, p.row.time_ms)
            }
            Node::Disk(id, name, fmt) => {
                let p = self.point(id)?;
                let d = p.manifest.disk(name)?;
                let size = match fmt {
                    DiskFormat::Raw => d.size,
                    DiskFormat::Vhd => vhd::vhd_data_size(d.size) + vhd::FOOTER_SIZE,
                };
                // Allocation is estimated from the new data the point stored;
                // exact numbers need the map, which stat must not load.
                file(size, size, p.row.time_ms)
            }
            Node::Config(id, name) => {
                let p = self.point(id)?;
                let c = p.manifest.configs.iter().find(|c| &c.name == name).ok_or_else(|| Error::NotFound(name.clone()))?;
                file(c.size, c.size, p.row.time_ms)
            }
            Node::FilesDir(_) | Node::FilesDisk(..) | Node::Guest(..) | Node::PartNote(..) | Node::DiskNote(..) => self.guest_attr(node)?,
        })
    }

    /// The attributes of `node` if they cost no guest-filesystem read:
    /// every vault node, and a guest node already stat'ed or listed.
    pub fn cached_attr(&self, node: &Node) -> Option<Attr> {
        match node {
            Node::Guest(..) => self.guest_cached_attr(node),
            _ => self.attr(node).ok(),
        }
    }

    pub fn lookup(&self, parent: &Node, name: &str) -> Result<Node> {
        self.lookup_bytes(parent, name.as_bytes())
    }

    /// Guest names are bytes (ext4 allows any but `/` and NUL).
    pub fn lookup_bytes(&self, parent: &Node, name: &[u8]) -> Result<Node> {
        if matches!(parent, Node::FilesDir(_) | Node::FilesDisk(..) | Node::Guest(..)) {
            return self.guest_lookup(parent, name);
        }
        let name = std::str::from_utf8(name).map_err(|_| Error::NotFound(String::from_utf8_lossy(name).into_owned()))?;
        let not_found = || Error::NotFound(name.to_owned());
        Ok(match parent {
            Node::Root => {
                if self.snapshot()?.items.contains_key(name) { Node::Item(name.to_owned()) } else { return Err(not_found()) }
            }
            Node::Item(item) => {
                let snap = self.snapshot()?;
                let list = snap.items.get(item).ok_or_else(not_found)?;
                if name == "latest" {
                    return Ok(Node::Latest(item.clone(), list.last().ok_or_else(not_found)?.name.clone()));
                }
                Node::Point(list.iter().find(|p| p.name == name).ok_or_else(not_found)?.row.id)
            }
            Node::Point(id) => match name {
                "recovery-point.json" => Node::PointJson(*id),
                "disks" => Node::DisksDir(*id),
                "config" => Node::ConfigDir(*id),
                "files" => Node::FilesDir(*id),
                _ => return Err(not_found()),
            },
            Node::DisksDir(id) => {
                let p = self.point(id)?;
                let (stem, fmt) = if let Some(s) = name.strip_suffix(".raw") {
                    (s, DiskFormat::Raw)
                } else if let Some(s) = name.strip_suffix(".vhd") {
                    (s, DiskFormat::Vhd)
                } else {
                    return Err(not_found());
                };
                let d = p.manifest.disks.iter().find(|d| d.name == stem).ok_or_else(not_found)?;
                if fmt == DiskFormat::Vhd && d.size > vhd::MAX_SIZE {
                    return Err(not_found());
                }
                Node::Disk(*id, stem.to_owned(), fmt)
            }
            Node::ConfigDir(id) => {
                let p = self.point(id)?;
                p.manifest.configs.iter().find(|c| c.name == name).ok_or_else(not_found)?;
                Node::Config(*id, name.to_owned())
            }
            _ => return Err(Error::InvalidInput(format!("{name}: not a directory"))),
        })
    }

    /// Entries of a directory, in a stable order (names lossily as UTF-8;
    /// [`VaultTree::entries`] has the exact bytes).
    pub fn children(&self, dir: &Node) -> Result<Vec<(String, Node)>> {
        Ok(self.entries(dir)?.into_iter().map(|(n, node, _)| (String::from_utf8_lossy(&n).into_owned(), node)).collect())
    }

    /// Entries of a directory with their kinds, in a stable order.
    pub fn entries(&self, dir: &Node) -> Result<Vec<(Vec<u8>, Node, Kind)>> {
        if matches!(dir, Node::FilesDir(_) | Node::FilesDisk(..) | Node::Guest(..)) {
            return self.guest_entries(dir);
        }
        let kind = |n: &Node| match n {
            Node::Latest(..) => Kind::Symlink,
            Node::PointJson(_) | Node::Disk(..) | Node::Config(..) => Kind::File,
            _ => Kind::Dir,
        };
        Ok(self
            .vault_children(dir)?
            .into_iter()
            .map(|(n, node)| {
                let k = kind(&node);
                (n.into_bytes(), node, k)
            })
            .collect())
    }

    fn vault_children(&self, dir: &Node) -> Result<Vec<(String, Node)>> {
        Ok(match dir {
            Node::Root => self.snapshot()?.items.keys().map(|i| (i.clone(), Node::Item(i.clone()))).collect(),
            Node::Item(item) => {
                let snap = self.snapshot()?;
                let list = snap.items.get(item).ok_or_else(|| Error::NotFound(item.clone()))?;
                let mut v = Vec::new();
                if let Some(newest) = list.last() {
                    v.push(("latest".to_owned(), Node::Latest(item.clone(), newest.name.clone())));
                }
                v.extend(list.iter().map(|p| (p.name.clone(), Node::Point(p.row.id))));
                v
            }
            Node::Point(id) => {
                self.point(id)?;
                vec![
                    ("recovery-point.json".into(), Node::PointJson(*id)),
                    ("disks".into(), Node::DisksDir(*id)),
                    ("config".into(), Node::ConfigDir(*id)),
                    ("files".into(), Node::FilesDir(*id)),
                ]
            }
            Node::DisksDir(id) => {
                let p = self.point(id)?;
                let mut v = Vec::new();
                for d in &p.manifest.disks {
                    v.push((format!("{}.raw", d.name), Node::Disk(*id, d.name.clone(), DiskFormat::Raw)));
                    if d.size <= vhd::MAX_SIZE {
                        v.push((format!("{}.vhd", d.name), Node::Disk(*id, d.name.clone(), DiskFormat::Vhd)));
                    }
                }
                v
            }
            Node::ConfigDir(id) => {
                let p = self.point(id)?;
                p.manifest.configs.iter().map(|c| (c.name.clone(), Node::Config(*id, c.name.clone()))).collect()
            }
            _ => return Err(Error::InvalidInput("not a directory".into())),
        })
    }

    pub fn parent(&self, node: &Node) -> Node {
        match node {
            Node::Root | Node::Item(_) => Node::Root,
            Node::Latest(i, _) => Node::Item(i.clone()),
            Node::Point(id) => self.point(id).map(|p| Node::Item(p.row.item.clone())).unwrap_or(Node::Root),
            Node::PointJson(id) | Node::DisksDir(id) | Node::ConfigDir(id) => Node::Point(*id),
            Node::Disk(id, ..) => Node::DisksDir(*id),
            Node::Config(id, _) => Node::ConfigDir(*id),
            Node::FilesDir(_) | Node::FilesDisk(..) | Node::Guest(..) | Node::PartNote(..) | Node::DiskNote(..) => Self::guest_parent(node),
        }
    }

    pub fn readlink(&self, node: &Node) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.readlink_bytes(node)?).into_owned())
    }

    /// A symlink's target as stored (guest targets are bytes).
    pub fn readlink_bytes(&self, node: &Node) -> Result<Vec<u8>> {
        match node {
            Node::Guest(..) => self.guest_readlink(node),
            Node::Latest(_, target) => Ok(target.clone().into_bytes()),
            _ => Err(Error::InvalidInput("not a symlink".into())),
        }
    }

    pub fn open(&self, node: &Node) -> Result<Handle> {
        match node {
            Node::PointJson(id) => Ok(Handle::bytes(point_json(&self.point(id)?).into_bytes())),
            Node::Config(id, name) => {
                let p = self.point(id)?;
                let c = p.manifest.configs.iter().find(|c| &c.name == name).ok_or_else(|| Error::NotFound(name.clone()))?;
                let vault = crate::vault::Vault::open(&self.root)?;
                let fetch = vault.fetcher()?;
                let mut bytes = Vec::with_capacity(c.size as usize);
                for h in &c.chunks {
                    let cid = ChunkId::from_hex(h).ok_or_else(|| Error::Corrupt(format!("config {name}: bad chunk id")))?;
                    bytes.extend_from_slice(&fetch.fetch(&cid)?);
                }
                Ok(Handle::bytes(bytes))
            }
            Node::Disk(id, name, fmt) => {
                let p = self.point(id)?;
                let disk = self.open_disk(&p, name)?;
                let footer = match fmt {
                    DiskFormat::Raw => None,
                    DiskFormat::Vhd => {
                        let (uid, ts) = crate::restore::vhd_identity(&p.row, name);
                        Some(Box::new(vhd::fixed_footer(disk.size(), uid, ts)))
                    }
                };
                Ok(Handle::Disk(DiskHandle { disk, footer, next: AtomicU64::new(u64::MAX), prefetch: self.prefetch.clone() }))
            }
            Node::Guest(..) | Node::PartNote(..) | Node::DiskNote(..) => self.guest_open(node),
            _ => Err(Error::InvalidInput("not a file".into())),
        }
    }

    /// One OpenDisk per (point, disk) while any handle holds it.
    fn open_disk(&self, p: &PointInfo, name: &str) -> Result<Arc<OpenDisk>> {
        let key = (p.row.id, name.to_owned());
        if let Some(d) = self.open_disks.lock().unwrap().get(&key).and_then(Weak::upgrade) {
            return Ok(d);
        }
        let entry = p.manifest.disk(name)?.clone();
        let label = format!("{} point {} ({}) disk {name}", p.row.item, p.name, p.row.id);
        let d = Arc::new(OpenDisk::open(&self.caches, entry, label)?);
        let mut open = self.open_disks.lock().unwrap();
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(key, Arc::downgrade(&d));
        Ok(d)
    }
}

fn point_json(p: &Arc<PointInfo>) -> String {
    let m = &p.manifest;
    let v = serde_json::json!({
        "id": p.row.id.to_hex(),
        "item": m.item,
        "name": p.name,
        "time": m.time,
        "consistency": p.row.consistency,
        "root_hash": p.row.id.to_hex(),
        "logical_size": p.row.logical_size,
        "new_bytes": p.row.new_bytes,
        "stored_bytes": p.row.stored_bytes,
        "disks": m.disks.iter().map(|d| serde_json::json!({
            "name": d.name, "size": d.size, "block_size": d.block_size, "map_root": d.root,
            "source": d.source, "source_kind": d.source_kind,
        })).collect::<Vec<_>>(),
        "configs": m.configs.iter().map(|c| serde_json::json!({"name": c.name, "size": c.size})).collect::<Vec<_>>(),
    });
    let mut s = serde_json::to_string_pretty(&v).expect("json");
    s.push('\n');
    s
}

pub struct DiskHandle {
    disk: Arc<OpenDisk>,
    /// Set for NAME.vhd: the data is padded to a sector and followed by this footer.
    footer: Option<Box<[u8; 512]>>,
    /// Where the next sequential read would start; drives readahead.
    next: AtomicU64,
    prefetch: Prefetch,
}

/// What a read returns: its own bytes, a range of a cached frame, or zeros.
pub enum ReadBytes {
    Owned(Vec<u8>),
    Shared(BlockBytes),
    Zeros(usize),
}

impl std::ops::Deref for ReadBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ReadBytes::Owned(v) => v,
            ReadBytes::Shared(b) => b,
            ReadBytes::Zeros(n) => &ZEROS[..*n],
        }
    }
}

pub enum Handle {
    Bytes(Arc<Vec<u8>>),
    Disk(DiskHandle),
    Guest(GuestHandle),
}

impl Handle {
    fn bytes(b: Vec<u8>) -> Handle {
        Handle::Bytes(Arc::new(b))
    }

    pub fn size(&self) -> u64 {
        match self {
            Handle::Bytes(b) => b.len() as u64,
            Handle::Disk(h) => match h.footer {
                None => h.disk.size(),
                Some(_) => vhd::vhd_data_size(h.disk.size()) + vhd::FOOTER_SIZE,
            },
            Handle::Guest(g) => g.size(),
        }
    }

    pub fn read(&self, offset: u64, len: usize) -> Result<ReadBytes> {
        let size = self.size();
        if offset >= size {
            return Ok(ReadBytes::Owned(Vec::new()));
        }
        let len = len.min((size - offset) as usize);
        if let Handle::Disk(h) = self {
            // The common case of a sequential reader: the whole request lies
            // in one cached frame and is answered from it without a copy.
            if let Some(b) = h.disk.contiguous(offset, len)? {
                h.readahead(offset, len as u64);
                return Ok(ReadBytes::Shared(b));
            }
            // A hole (a third of the benchmark's OS disk): nothing to
            // fill, decode or allocate.
            if len <= ZEROS.len() && offset + len as u64 <= h.disk.size() && h.disk.is_hole(offset, len as u64)? {
                h.readahead(offset, len as u64);
                return Ok(ReadBytes::Zeros(len));
            }
        }
        let mut buf = vec![0u8; len];
        if let Handle::Guest(g) = self {
            let n = g.file.read_at(&mut buf, offset)?;
            buf.truncate(n);
            return Ok(ReadBytes::Owned(buf));
        }
        match self {
            Handle::Bytes(b) => buf.copy_from_slice(&b[offset as usize..offset as usize + len]),
            Handle::Disk(h) => {
                let dsize = h.disk.size();
                if offset < dsize {
                    let n = len.min((dsize - offset) as usize);
                    // A small read that does not continue the last one is
                    // random access: don't decode (and cache) whole frames for it.
                    if n as u64 <= h.disk.block_size() && h.next.load(Ordering::Relaxed) != offset {
                        h.disk.read_at_random(&mut buf[..n], offset)?;
                    } else {
                        h.disk.read_at(&mut buf[..n], offset)?;
                    }
                }
                if let Some(footer) = &h.footer {
                    let fstart = vhd::vhd_data_size(dsize);
                    // Padding between the disk's end and the footer stays zero.
                    let end = offset + len as u64;
                    if end > fstart {
                        let from = offset.max(fstart);
                        let src = &footer[(from - fstart) as usize..(end - fstart) as usize];
                        let at = (from - offset) as usize;
                        buf[at..at + src.len()].copy_from_slice(src);
                    }
                }
                h.readahead(offset, len as u64);
            }
            Handle::Guest(_) => unreachable!(),
        }
        Ok(ReadBytes::Owned(buf))
    }

    /// SEEK_DATA (`data`) / SEEK_HOLE from `offset`.
    pub fn seek(&self, offset: u64, data: bool) -> Result<Option<u64>> {
        let size = self.size();
        if offset >= size {
            return Ok(None);
        }
        Ok(match self {
            Handle::Bytes(_) => Some(if data { offset } else { size }),
            Handle::Guest(g) => g.file.seek(offset, data),
            Handle::Disk(h) => {
                let dsize = h.disk.size();
                match (h.footer.is_some(), h.disk.seek(offset.min(dsize), data)?) {
                    (_, Some(p)) if p < dsize => Some(p.max(offset)),
                    // Past the disk's data: for a VHD the padding and the
                    // footer are data (as SEEK_HOLE says: no hole before the end).
                    (true, _) => Some(if data { dsize.max(offset) } else { size }),
                    (false, r) => r,
                }
            }
        })
    }
}

impl DiskHandle {
    /// On a sequential read, queue the following blocks for the readahead
    /// threads so that decompression overlaps with the reader's own work.
    fn readahead(&self, offset: u64, len: u64) {
        let expected = self.next.swap(offset + len, Ordering::Relaxed);
        if expected == offset {
            let bs = self.disk.block_size();
            self.disk.prefetch(&self.prefetch, (offset + len).next_multiple_of(bs), READAHEAD_BLOCKS * bs);
        }
    }
}
