//! The fuser adapter: maps kernel requests onto crate::browse::VaultTree.
//! Each method is one match from a helper's `Result` to a reply; errors keep
//! their meaning (not found → ENOENT, I/O → its errno, corruption → EIO with
//! an error log naming the chunk and byte range). Everything is read-only:
//! the mount is `ro`, and every modifying request answers EROFS.
//!
//! Files inside guest filesystems (`files/`) carry the guest's owner, mode,
//! nanosecond mtime and inode number (shared by hard links); everything
//! else belongs to the mounting user. A directory's entries are listed once
//! per opendir and served from that snapshot, so a 100,000-entry guest
//! directory costs one listing, not one per readdir batch.
//!
//! Round trips to this process are what a big `ls -l` or `cp -r` costs, so
//! the kernel is asked for as few as possible: readdir is READDIRPLUS,
//! carrying the attributes the listing already has (so no lookup per entry
//! follows), and the xattr calls answer ENOSYS once, which the kernel
//! remembers for the mount (`ls -l` asks two per entry otherwise).
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
    /// Open directories: their entries as listed at opendir.
    dirs: Mutex<HashMap<u64, DirSnapshot>>,
    next_fh: AtomicU64,
    /// Pushes the small files of a directory being read through.
    prefill: Prefill,
    uid: u32,
    gid: u32,
}

impl KluisFs {
    pub fn new(tree: Arc<VaultTree>) -> KluisFs {
        KluisFs {
            tree: tree.clone(),
            handles: Mutex::new(HashMap::new()),
            by_ino: Mutex::new(HashMap::new()),
            no_open: false,
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            prefill: Prefill::start(tree.clone()),
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
        }
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
        FileAttr {
            ino: INodeNo(ino),
            size: a.size,
            blocks: a.allocated.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: file_type(a.kind),
            perm: a.mode,
            nlink: a.nlink,
            uid: a.guest.map_or(self.uid, |g| g.uid),
            gid: a.guest.map_or(self.gid, |g| g.gid),
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
            // The offset handed back is that of the next entry.
            if reply.add(INodeNo(self.tree.ino(child)), (i + 1) as u64, file_type(*kind), OsStr::from_bytes(name)) {
                break;
            }
        }
        Ok(())
    }

    fn readdirplus_(&self, fh: FileHandle, offset: u64, reply: &mut ReplyDirectoryPlus) -> Result<(), Errno> {
        let entries = self.dirs.lock().unwrap().get(&fh.0).cloned().ok_or(Errno::EBADF)?;
        for (i, (name, child, kind)) in entries.iter().enumerate().skip(offset as usize) {
            // An entry whose attributes would cost a guest read (and `.`
            // and `..`, which the kernel does not take) goes out plain,
            // node id 0: the kernel looks it up when it needs it.
            let known = if i < 2 { None } else { self.tree.cached_attr(child) };
            let (attr, ttl) = match known {
                Some(a) => (self.file_attr(child, &a), Self::ttl(child)),
                None => (plain_attr(*kind), Duration::ZERO),
            };
            let ino = if attr.ino.0 == 0 { self.tree.ino(child) } else { attr.ino.0 };
            if reply.add(INodeNo(ino), (i + 1) as u64, OsStr::from_bytes(name), &ttl, &attr, Generation(0)) {
                break;
            }
            if attr.ino.0 != 0 {
                // The kernel counts a lookup for an entry with attributes.
                self.tree.looked_up(ino, child);
            }
        }
        Ok(())
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

/// Attributes with node id 0: "no attributes" in a READDIRPLUS entry.
fn plain_attr(k: Kind) -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: file_type(k),
        perm: 0,
        nlink: 0,
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
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS) {
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
