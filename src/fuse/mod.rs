//! The fuser adapter: maps kernel requests onto crate::browse::VaultTree.
//! Each method is one match from a helper's `Result` to a reply; errors keep
//! their meaning (not found → ENOENT, I/O → its errno, corruption → EIO with
//! an error log naming the chunk and byte range). Everything is read-only:
//! the mount is `ro`, and every modifying request answers EROFS.
//!
//! Files inside guest filesystems (`files/`) carry the guest's owner, mode,
//! nanosecond mtime and inode number (shared by hard links); everything
//! else belongs to the mounting user. With `--allow-other` the whole disks
//! and config files, which would bypass the guest's modes, are 0400 (or
//! 0440 for one group): see [`KluisFs::whole_disks_private`]. A directory's entries are listed once
//! per opendir and served from that snapshot, so a 100,000-entry guest
//! directory costs one listing, not one per readdir batch.
//!
//! Round trips to this process are what a big `ls -l` or `cp -r` costs, so
//! the kernel is asked for as few as possible: readdir is READDIRPLUS,
//! carrying the attributes the listing already has (so no lookup per entry
//! follows), and the xattr calls answer ENOSYS once, which the kernel
//! remembers for the mount (`ls -l` asks two per entry otherwise).
//!
//! Every listed entry, `.` and `..` included, carries its real inode
//! number: fuser takes both the entry's node id and its d_ino from the
//! attributes, and readdir(3) drops an entry whose d_ino is 0. So a
//! READDIRPLUS entry always carries real attributes too (the kernel applies
//! them to an inode it already holds); those the listing lacks (a partition
//! before its filesystem is opened, NTFS entries) are read for it, and an
//! entry whose stat fails is still listed, with a TTL of 0 so that the
//! stat that follows reports the error. `KLUIS_NO_READDIRPLUS` mounts with
//! plain READDIR instead (names, kinds and inode numbers; then one lookup
//! per entry), the kernel's other listing path.
//!
//! OPEN answers ENOSYS too, where the kernel supports that (it says so at
//! INIT): it then opens files without asking and sends no RELEASE, which
//! halves the round trips of reading a small file. A file's handle is made
//! at its first read and kept per inode until the kernel forgets the inode,
//! which it never does while the file is open; so an open disk keeps its
//! index snapshot and its lease on the packs (store/lease.rs) through a gc,
//! as with handles per open. Inode numbers go too when the kernel forgets
//! them, so a long-running mount keeps only what the kernel keeps. And a reader going
//! through a guest directory's small files finds the next ones already in
//! the kernel's page cache (prefill.rs), with no round trip at all.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner, OpenFlags,
    InitFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, Request,
};

use crate::browse::{Attr, Handle, Kind, Node, VaultTree};
use crate::error::{Error, Result};

mod prefill;
pub use prefill::Prefill;

/// Inside a recovery point nothing ever changes: let the kernel cache it.
const TTL_IMMUTABLE: Duration = Duration::from_secs(3600);
/// The lists of items and points change with backups and deletes.
const TTL_DYNAMIC: Duration = Duration::from_secs(1);
/// Largest read the kernel may send (and readahead it may do).
pub const MAX_READ: u32 = 1 << 20;

/// A directory's entries (name, node, kind) as listed at opendir.
type DirSnapshot = Arc<Vec<(Vec<u8>, Node, Kind)>>;

pub struct KluisFs {
    tree: Arc<VaultTree>,
    /// Handles by file handle number (kernels that send OPEN).
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    /// Handles by inode number, when the kernel opens without asking.
    by_ino: Mutex<HashMap<u64, Arc<Handle>>>,
    /// The kernel opens files without OPEN when told ENOSYS.
    no_open: bool,
    /// Ask for READDIRPLUS at INIT (the default; see [`KluisFs::plain_readdir`]).
    readdirplus: bool,
    /// Open directories: their entries as listed at opendir.
    dirs: Mutex<HashMap<u64, DirSnapshot>>,
    next_fh: AtomicU64,
    /// Pushes the small files of a directory being read through.
    prefill: Prefill,
    uid: u32,
    gid: u32,
    /// (perm, gid) of whole disks and config files when other users can
    /// enter the mount (see [`KluisFs::whole_disks_private`]).
    whole_disks: Option<(u16, u32)>,
}

impl KluisFs {
    pub fn new(tree: Arc<VaultTree>) -> KluisFs {
        KluisFs {
            tree: tree.clone(),
            handles: Mutex::new(HashMap::new()),
            by_ino: Mutex::new(HashMap::new()),
            no_open: false,
            readdirplus: true,
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            prefill: Prefill::start(tree.clone()),
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
            whole_disks: None,
        }
    }

    /// For a mount other users can enter (`--allow-other`): guest files
    /// keep their guest owners and modes, but `disks/*.raw|vhd` and
    /// `config/*` hold every file of the guest regardless of those modes,
    /// so they become readable by the mounting user only (0400), or also
    /// by `group` (0440).
    pub fn whole_disks_private(mut self, group: Option<u32>) -> KluisFs {
        self.whole_disks = Some(match group {
            Some(g) => (0o440, g),
            None => (0o400, self.gid),
        });
        self
    }

    /// Lists directories with plain READDIR (names and kinds; a lookup per
    /// entry then follows), not READDIRPLUS: the kernel's other listing
    /// path, for tests and for kernels whose READDIRPLUS misbehaves
    /// (`KLUIS_NO_READDIRPLUS`, docs/cli.md).
    pub fn plain_readdir(mut self) -> KluisFs {
        self.readdirplus = false;
        self
    }

    /// Where the mount's pushes into the kernel's page cache go (see
    /// [`Prefill`]): to be set to the session's notifier once mounted.
    pub fn notifier_slot(&self) -> Arc<std::sync::OnceLock<fuser::Notifier>> {
        self.prefill.notifier_slot()
    }

    fn node(&self, ino: INodeNo) -> Result<Node, Errno> {
        self.tree.node(ino.0).ok_or(Errno::ENOENT)
    }

    fn file_attr(&self, node: &Node, a: &Attr) -> FileAttr {
        let t = match a.guest {
            Some(g) if g.mtime_s >= 0 => UNIX_EPOCH + Duration::new(g.mtime_s as u64, g.mtime_ns.min(999_999_999)),
            Some(g) => UNIX_EPOCH.checked_sub(Duration::from_secs(g.mtime_s.unsigned_abs())).unwrap_or(UNIX_EPOCH),
            None => UNIX_EPOCH + Duration::from_millis(a.mtime_ms.max(0) as u64),
        };
        let ino = self.tree.ino_of(node, a);
        let (perm, gid) = match (node, self.whole_disks) {
            (Node::Disk(..) | Node::Config(..), Some((perm, gid))) => (perm, gid),
            _ => (a.mode, a.guest.map_or(self.gid, |g| g.gid)),
        };
        FileAttr {
            ino: INodeNo(ino),
            size: a.size,
            blocks: a.allocated.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: file_type(a.kind),
            perm,
            nlink: a.nlink,
            uid: a.guest.map_or(self.uid, |g| g.uid),
            gid,
            rdev: 0,
            blksize: 65536,
            flags: 0,
        }
    }

    fn ttl(node: &Node) -> Duration {
        if VaultTree::is_dynamic(node) || matches!(node, Node::Point(_)) { TTL_DYNAMIC } else { TTL_IMMUTABLE }
    }

    fn lookup_(&self, parent: INodeNo, name: &OsStr) -> Result<(Node, FileAttr), Errno> {
        let parent = self.node(parent)?;
        let node = self.tree.lookup_bytes(&parent, name.as_bytes()).map_err(errno)?;
        let attr = self.tree.attr(&node).map_err(errno)?;
        Ok((node.clone(), self.file_attr(&node, &attr)))
    }

    fn getattr_(&self, ino: INodeNo) -> Result<(Node, FileAttr), Errno> {
        let node = self.node(ino)?;
        let attr = self.tree.attr(&node).map_err(errno)?;
        Ok((node.clone(), self.file_attr(&node, &attr)))
    }

    /// Opens `ino`: a file handle number, or (no-open mode) ENOSYS once
    /// its handle is made, so that this first open still fails as it should.
    fn open_(&self, ino: INodeNo, flags: OpenFlags) -> Result<u64, Errno> {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(Errno::EROFS);
        }
        if self.no_open {
            self.handle(ino, FileHandle(0))?;
            return Err(Errno::ENOSYS);
        }
        let node = self.node(ino)?;
        let h = self.tree.open(&node).map_err(errno)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(fh, Arc::new(h));
        Ok(fh)
    }

    /// The handle of open file `fh`, or for 0 (opened without OPEN) the
    /// handle of inode `ino`, made at its first use.
    fn handle(&self, ino: INodeNo, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        if fh.0 != 0 {
            return self.handles.lock().unwrap().get(&fh.0).cloned().ok_or(Errno::EBADF);
        }
        if let Some(h) = self.by_ino.lock().unwrap().get(&ino.0) {
            return Ok(h.clone());
        }
        // Made outside the lock (a disk's map loads here); a racing first
        // read of the same inode may make a second one, and one wins.
        let h = Arc::new(self.tree.open(&self.node(ino)?).map_err(errno)?);
        Ok(self.by_ino.lock().unwrap().entry(ino.0).or_insert(h).clone())
    }

    fn read_(&self, ino: INodeNo, fh: FileHandle, offset: u64, size: u32) -> Result<crate::browse::ReadBytes, Errno> {
        let h = self.handle(ino, fh)?;
        if offset == 0 && matches!(*h, Handle::Guest(_)) {
            self.prefill.read_from_start(&self.tree, ino.0, h.size());
        }
        h.read(offset, size as usize).map_err(errno)
    }

    fn opendir_(&self, ino: INodeNo) -> Result<u64, Errno> {
        let node = self.node(ino)?;
        let mut entries = vec![(b".".to_vec(), node.clone(), Kind::Dir), (b"..".to_vec(), self.tree.parent(&node), Kind::Dir)];
        entries.extend(self.tree.entries(&node).map_err(errno)?);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().unwrap().insert(fh, Arc::new(entries));
        Ok(fh)
    }

    fn readdir_(&self, fh: FileHandle, offset: u64, reply: &mut ReplyDirectory) -> Result<(), Errno> {
        let entries = self.dirs.lock().unwrap().get(&fh.0).cloned().ok_or(Errno::EBADF)?;
        for (i, (name, child, kind)) in entries.iter().enumerate().skip(offset as usize) {
            // d_ino is the st_ino stat shows (hard links share it) where
            // the listing told; never 0, which readdir(3) skips.
            let ino = match self.tree.cached_attr(child) {
                Some(a) if i >= 2 => self.tree.ino_of(child, &a),
                _ => self.tree.ino(child),
            };
            // The offset handed back is that of the next entry.
            if reply.add(INodeNo(ino), (i + 1) as u64, file_type(*kind), OsStr::from_bytes(name)) {
                break;
            }
        }
        Ok(())
    }

    fn readdirplus_(&self, fh: FileHandle, offset: u64, reply: &mut ReplyDirectoryPlus) -> Result<(), Errno> {
        let entries = self.dirs.lock().unwrap().get(&fh.0).cloned().ok_or(Errno::EBADF)?;
        for (i, (name, child, kind)) in entries.iter().enumerate().skip(offset as usize) {
            let (attr, ttl) = self.plus_attr(i < 2, child, *kind);
            if reply.add(attr.ino, (i + 1) as u64, OsStr::from_bytes(name), &ttl, &attr, Generation(0)) {
                break;
            }
            if i >= 2 {
                // The kernel counts a lookup for every entry it links (not
                // `.` and `..`, whose entry_out it skips).
                self.tree.looked_up(attr.ino.0, child);
            }
        }
        Ok(())
    }

    /// What a READDIRPLUS entry for `child` carries. fuser takes both the
    /// entry's node id and its d_ino from `attr.ino` (not from the `ino`
    /// argument of `add`), so there is no "name only" entry: node id 0
    /// would make d_ino 0 too, and readdir(3) drops such entries. So every
    /// entry carries its real inode, and with it its real attributes: the
    /// kernel applies them to an inode it already has (a made-up size 0
    /// would truncate a cached file's pages). Where the listing did not
    /// give them (a partition before its filesystem is opened, an NTFS
    /// entry) they are read here, as the lookup that would follow would.
    fn plus_attr(&self, dot: bool, child: &Node, kind: Kind) -> (FileAttr, Duration) {
        // The kernel takes only the name and d_ino of `.` and `..`
        // (fuse_direntplus_link skips their entry_out).
        if dot {
            return (placeholder_attr(kind, self.tree.ino(child)), Duration::ZERO);
        }
        match self.tree.cached_attr(child).map_or_else(|| self.tree.attr(child), Ok) {
            Ok(a) => (self.file_attr(child, &a), Self::ttl(child)),
            // Still listed; the stat or lookup that follows (not cached:
            // TTL 0) gets the error. The kernel cannot hold good
            // attributes of it unless an earlier stat worked and this one
            // failed for a passing reason; a getattr then corrects them.
            Err(e) => {
                let _ = errno(e);
                (placeholder_attr(kind, self.tree.ino(child)), Duration::ZERO)
            }
        }
    }

    fn lseek_(&self, ino: INodeNo, fh: FileHandle, offset: i64, whence: i32) -> Result<i64, Errno> {
        let h = self.handle(ino, fh)?;
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return Err(Errno::EINVAL),
        };
        if offset < 0 {
            return Err(Errno::EINVAL);
        }
        h.seek(offset as u64, data).map_err(errno)?.map(|o| o as i64).ok_or(Errno::ENXIO)
    }
}

/// Attributes that say nothing but the kind, for inode `ino`: for entries
/// whose attributes the kernel ignores or must not keep (TTL 0).
fn placeholder_attr(k: Kind, ino: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: file_type(k),
        perm: 0,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
    }
}

/// Error → errno, logging what the caller cannot see (corruption, I/O).
fn errno(e: Error) -> Errno {
    match &e {
        Error::NotFound(_) => {}
        Error::Corrupt(_) | Error::Io { .. } | Error::Sqlite(_) => log::error!("{e}"),
        _ => log::warn!("{e}"),
    }
    Errno::from_i32(e.errno())
}

/// Runs the helper behind a request. A panic in it (a bug) answers this
/// request EIO, with an error line, instead of ending fuser's event loop and
/// with it the mount: every other file stays readable.
fn guarded<T>(request: &str, f: impl FnOnce() -> Result<T, Errno>) -> Result<T, Errno> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let why = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
        log::error!("{request}: internal error ({why}), answered EIO");
        Err(Errno::EIO)
    })
}

impl Filesystem for KluisFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(MAX_READ);
        let _ = config.set_max_write(MAX_READ);
        // Always plus, not the kernel's adaptive mode: `ls -l` reads the
        // whole directory before its first stat, and adaptive mode gives
        // attributes with the first batch only.
        if !self.readdirplus {
            log::info!("plain READDIR: one lookup per listed entry");
        } else if let Err(missing) = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS) {
            log::info!("kernel without {missing:?}: one lookup per listed entry");
        }
        // Symlink targets never change for a given node (see Node::Latest),
        // so the kernel may keep them.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_CACHE_SYMLINKS) {
            log::info!("kernel without {missing:?}: one readlink per path walk through a symlink");
        }
        self.no_open = config.capabilities().contains(InitFlags::FUSE_NO_OPEN_SUPPORT);
        Ok(())
    }

    // The kernel has dropped `nlookup` references to the inode; at none
    // left, no file of it is open any more and its number goes.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.tree.forget(ino.0, nlookup);
        if self.tree.node(ino.0).is_none() {
            self.by_ino.lock().unwrap().remove(&ino.0);
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match guarded("lookup", || self.lookup_(parent, name)) {
            Ok((node, attr)) => {
                self.tree.looked_up(attr.ino.0, &node);
                reply.entry(&Self::ttl(&node), &attr, Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match guarded("getattr", || self.getattr_(ino)) {
            Ok((node, attr)) => reply.attr(&Self::ttl(&node), &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match guarded("readlink", || self.node(ino).and_then(|n| self.tree.readlink_bytes(&n).map_err(errno))) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match guarded("open", || self.open_(ino, flags)) {
            // Content never changes while open: keep the page cache across opens.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match guarded("read", || self.read_(ino, fh, offset, size)) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match guarded("opendir", || self.opendir_(ino)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match guarded("readdir", || self.readdir_(fh, offset, &mut reply)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        match guarded("readdirplus", || self.readdirplus_(fh, offset, &mut reply)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.dirs.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn lseek(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        match guarded("lseek", || self.lseek_(ino, fh, offset, whence)) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        }
    }

    // Nothing is ever written, so close(2) has nothing to flush. ENOSYS
    // makes the kernel stop sending FLUSH for the whole mount (it counts as
    // success), which saves a round trip per file closed: per file, in a
    // `cp -r` of many small ones.
    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    // No extended attributes are shown. ENOSYS (not ENODATA) makes the
    // kernel stop asking: it answers EOPNOTSUPP itself from then on.
    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 65536, 255, 65536);
    }

    // Every modification: the vault is read-only through the mount.
    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }
    fn mknod(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, _r: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }
    fn mkdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }
    fn unlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
    fn rmdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
    fn symlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _l: &Path, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }
    fn rename(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _np: INodeNo, _nn: &OsStr, _f: fuser::RenameFlags, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
    fn link(&self, _req: &Request, _i: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }
    fn create(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, _f: i32, reply: fuser::ReplyCreate) {
        reply.error(Errno::EROFS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_request_answers_eio() {
        assert_eq!(guarded("t", || Ok::<_, Errno>(7)), Ok(7));
        assert_eq!(guarded("t", || Err::<(), _>(Errno::ENOENT)), Err(Errno::ENOENT));
        assert_eq!(guarded("t", || -> Result<(), Errno> { panic!("a bug") }), Err(Errno::EIO));
        let mut v = vec![1];
        assert_eq!(guarded("t", || -> Result<(), Errno> { v.push(2); panic!("{}", v.len()) }), Err(Errno::EIO));
    }
}
