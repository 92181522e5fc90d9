//! A vault: one directory holding everything.
//!
//! ```text
//! VAULT/kluis.vault     header (text): format version, vault id, block size
//! VAULT/index.sqlite    the index (WAL mode; -wal and -shm beside it)
//! VAULT/packs/…         pack files (see crate::store)
//! VAULT/records/…       items, policies, settings, deletions (see crate::records)
//! VAULT/lock            flock(2) target, see the lock table below
//! ```
//!
//! Everything in it is the owner's alone (0700/0600) unless a group was
//! given the vault directory on purpose; see crate::newfile.
//!
//! # Locks
//!
//! | operation                          | lock on VAULT/lock |
//! |------------------------------------|--------------------|
//! | backup, restore, verify            | shared             |
//! | gc                                 | exclusive          |
//! | mount, points, delete, prune, protect | none (SQLite WAL isolates readers; an open disk holds a reader's lease, store/lease.rs) |
//!
//! A reader that may not write the vault (a read-only mount or snapshot,
//! another user's vault) takes the shared lock on a read-only descriptor,
//! or none when there is no lock file; its index is opened read-only
//! (crate::catalog::IndexAccess) and every change is refused
//! ([`Vault::check_primary`]).
//!
//! gc needs exclusivity because a running backup reuses chunks that no
//! committed point references yet (its own freshly committed packs, and old
//! chunks it deduplicated against); gc would otherwise see them as garbage.
//! Restore and verify hold it so packs are not rewritten under them. gc
//! waits for running holders of the shared lock, and they wait for gc.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::catalog::{Catalog, IndexAccess, PointRow};
use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use crate::newfile::{Modes, PRIVATE_DIR};
use crate::recovery_point::{ChunkFetcher, DiskReader, Manifest};
use crate::store::PackFiles;

pub const HEADER_FILE: &str = "kluis.vault";
/// 2: frames of several chunks (1: one chunk per frame; not readable any more).
pub const FORMAT_VERSION: u32 = 2;
pub const DEFAULT_BLOCK_SIZE: u32 = 64 * 1024;
/// `VAULT/reserve`: space held back so that gc can always run, even after a
/// backup filled the filesystem to the last byte (SQLite needs room for its
/// log to delete anything). gc releases it first and takes it back last.
pub const RESERVE_FILE: &str = "reserve";
pub const RESERVE_BYTES: usize = 1 << 20;
/// zstd level of new chunks; chosen with scripts/bench.sh (docs/benchmarks.md).
/// Not level 2: with kluis's window and hash table (src/store/frame.rs) it
/// takes a fifth less CPU, but makes a vault 2% larger, which figure 4 (the
/// vault no larger than borg's) cannot afford in 3 MiB frames
/// (docs/format.md §4).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// The level of a header without a `zstd-level` line (written before the
/// line existed, when every vault used level 3).
const UNSTATED_ZSTD_LEVEL: i32 = 3;
/// Levels `init` accepts: zstd's fast (negative) levels up to 19.
pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = -7..=19;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultHeader {
    pub format: u32,
    pub id: String,
    pub block_size: u32,
    /// Compression level for new chunks. Readers don't need it (zstd frames
    /// decode at any level), so changing it never breaks a vault.
    pub zstd_level: i32,
    /// Set on a secondary vault kept by `kluis replicate`: the id of the
    /// vault it copies. A replica takes no backups or changes of its own
    /// until `kluis vault promote` clears this (crate::replicate).
    pub replica_of: Option<String>,
}

impl VaultHeader {
    /// ```text
    /// kluis-vault 2
    /// id 5f1c…(32 hex)
    /// block-size 65536
    /// zstd-level 3
    /// replica-of 9a0b…(32 hex)      (only on a replica)
    /// ```
    pub fn to_text(&self) -> String {
        let mut t = format!("kluis-vault {}\nid {}\nblock-size {}\nzstd-level {}\n", self.format, self.id, self.block_size, self.zstd_level);
        if let Some(r) = &self.replica_of {
            t.push_str(&format!("replica-of {r}\n"));
        }
        t
    }

    pub fn parse(text: &str, path: &Path) -> Result<VaultHeader> {
        let bad = || Error::InvalidInput(format!("{} is not a kluis vault (bad header {})", path.display(), HEADER_FILE));
        let mut lines = text.lines();
        let format = lines.next().and_then(|l| l.strip_prefix("kluis-vault ")).and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        if format != FORMAT_VERSION {
            let what = if format < FORMAT_VERSION {
                "made by an older kluis: restore from it with that kluis and back up again"
            } else {
                "made by a newer kluis: upgrade kluis"
            };
            return Err(Error::InvalidInput(format!(
                "{}: vault format {format} is not supported by this kluis (knows {FORMAT_VERSION}; {what})",
                path.display()
            )));
        }
        let mut id = None;
        let mut block_size = None;
        let mut zstd_level = UNSTATED_ZSTD_LEVEL;
        let mut replica_of = None;
        for l in lines {
            match l.split_once(' ') {
                Some(("id", v)) => id = Some(v.to_owned()),
                Some(("block-size", v)) => block_size = v.parse().ok(),
                Some(("zstd-level", v)) => zstd_level = v.parse().ok().filter(|l| ZSTD_LEVELS.contains(l)).ok_or_else(bad)?,
                Some(("replica-of", v)) => replica_of = Some(v.to_owned()),
                _ => {} // unknown keys are allowed: newer minor settings
            }
        }
        let block_size: u32 = block_size.ok_or_else(bad)?;
        if !block_size.is_power_of_two() || !(4096..=4 << 20).contains(&block_size) {
            return Err(bad());
        }
        Ok(VaultHeader { format, id: id.ok_or_else(bad)?, block_size, zstd_level, replica_of })
    }
}

/// Held for the life of an operation; released on drop (or process death).
/// None: a reader of a vault it cannot write, which has no lock file.
pub struct VaultLock(#[allow(dead_code)] Option<File>);

/// Takes the lock of the vault at `root` (see the lock table above); for
/// callers that have no open [`Vault`], such as an index rebuild.
pub fn lock_vault(root: &Path, exclusive: bool, on_wait: impl FnOnce()) -> Result<VaultLock> {
    let path = root.join("lock");
    let f = match crate::newfile::open_or_create(&path, Modes::of_vault(root).file) {
        Ok(f) => f,
        // A reader without write access (a read-only mount, another user's
        // vault) takes what it can: flock(2) works on a read-only
        // descriptor; and where there is no lock file to open, no writer
        // has come by since the vault was made.
        Err(e) if !exclusive && matches!(e.raw_os_error(), Some(libc::EROFS | libc::EACCES | libc::EPERM)) => {
            use std::os::unix::fs::OpenOptionsExt;
            match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(&path) {
                Ok(f) => f,
                Err(n) if n.kind() == std::io::ErrorKind::NotFound => return Ok(VaultLock(None)),
                Err(_) => return Err(Error::io_path("open", &path, e)),
            }
        }
        Err(e) => return Err(Error::io_path("open", &path, e)),
    };
    let op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH };
    if unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
        on_wait();
        loop {
            if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::io_path("lock", &path, e));
            }
        }
    }
    Ok(VaultLock(Some(f)))
}

pub struct Vault {
    root: PathBuf,
    pub header: VaultHeader,
    catalog: Mutex<Catalog>,
    /// How the index was opened; its other connections follow suit.
    access: IndexAccess,
    /// Why an index this process may write was opened read-only.
    write_error: Option<String>,
    /// The reserve was borrowed ([`Vault::open_for_small_change`]): given back on drop.
    borrowed_reserve: bool,
    packs: Arc<PackFiles>,
}

impl Vault {
    pub fn init(root: &Path, block_size: u32, zstd_level: i32) -> Result<Vault> {
        if root.join(HEADER_FILE).exists() {
            return Err(Error::AlreadyExists(format!("{} is already a kluis vault", root.display())));
        }
        if root.exists() && fs::read_dir(root).ctx(|| format!("list {}", root.display()))?.next().is_some() {
            return Err(Error::InvalidInput(format!("{} exists and is not empty; choose an empty or new directory", root.display())));
        }
        if !block_size.is_power_of_two() || !(4096..=4 << 20).contains(&block_size) {
            return Err(Error::InvalidInput(format!("block size {block_size} must be a power of two between 4096 and 4194304")));
        }
        // Owner-only whatever the umask: packs hold every byte of every disk.
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).ctx(|| format!("create {}", parent.display()))?;
        }
        crate::newfile::create_dir_all(&root.join("packs/tmp"), PRIVATE_DIR).ctx(|| format!("create vault {}", root.display()))?;
        fs::set_permissions(root, fs::Permissions::from_mode(PRIVATE_DIR)).ctx(|| format!("chmod {}", root.display()))?;
        if !ZSTD_LEVELS.contains(&zstd_level) {
            return Err(Error::InvalidInput(format!("zstd level {zstd_level} must be between {} and {}", ZSTD_LEVELS.start(), ZSTD_LEVELS.end())));
        }
        let header = VaultHeader { format: FORMAT_VERSION, id: new_vault_id(), block_size, zstd_level, replica_of: None };
        Catalog::open(&root.join("index.sqlite"), true)?;
        // The header goes last: a directory without it is not a vault, so a
        // crash during init leaves nothing that pretends to be one.
        write_header(root, &header)?;
        let vault = Vault::open(root)?;
        vault.ensure_reserve();
        Ok(vault)
    }

    /// Opens the vault at `root`: for reading and writing where this
    /// process may write it, else for reading only (see [`IndexAccess`];
    /// changes are then refused by [`Vault::check_primary`]).
    pub fn open(root: &Path) -> Result<Vault> {
        let header = read_header(root)?;
        // A replica may have no index yet (crate::replicate): it has no points.
        let index = Catalog::open_index(&root.join("index.sqlite"), header.replica_of.is_some())
            .map_err(|e| Error::Corrupt(format!("{}: cannot open index: {e}", root.display())))?;
        Ok(Vault {
            root: root.to_owned(),
            header,
            catalog: Mutex::new(index.catalog),
            access: index.access,
            write_error: index.write_error,
            borrowed_reserve: false,
            packs: Arc::new(PackFiles::new(root)),
        })
    }

    /// [`Vault::open`] for a command that changes a few index rows (delete,
    /// prune, settings), not one that stores data: where the index cannot be
    /// opened for writing because the filesystem is full to the last byte
    /// (no room for SQLite's `-shm`), it borrows the reserve, as gc does,
    /// and gives it back when the vault is dropped, after closing the index.
    /// So room can be made on a full vault (delete, then gc). Otherwise the
    /// reserve stays untouched.
    pub fn open_for_small_change(root: &Path) -> Result<Vault> {
        let vault = Vault::open(root)?;
        if vault.write_error.is_none() || vault.header.replica_of.is_some() {
            return Ok(vault);
        }
        drop(vault);
        if fs::remove_file(root.join(RESERVE_FILE)).is_err() {
            return Vault::open(root);
        }
        let mut vault = Vault::open(root)?;
        vault.borrowed_reserve = true;
        Ok(vault)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Fails on a replica (see [`VaultHeader::replica_of`]) and on a vault
    /// opened for reading only: for every command that would change what
    /// the vault holds.
    pub fn check_primary(&self) -> Result<()> {
        check_primary(&self.root, &self.header)?;
        if let Some(e) = &self.write_error {
            return Err(Error::InvalidInput(format!(
                "{}: cannot open the index for writing: {e} (on a full filesystem, `kluis delete`, `prune`, `vault set` and `gc` still run)",
                self.root.display()
            )));
        }
        if !matches!(self.access, IndexAccess::Write | IndexAccess::Empty) {
            return Err(Error::InvalidInput(format!(
                "{} is read-only here (a read-only mount, or no write permission): it can be read, not changed",
                self.root.display()
            )));
        }
        Ok(())
    }

    /// True when this process may change the index (opened for writing,
    /// and that open did not fall back to reading only).
    pub fn index_writable(&self) -> bool {
        self.access == IndexAccess::Write && self.write_error.is_none()
    }

    /// How the index was opened.
    pub fn index_access(&self) -> IndexAccess {
        self.access
    }

    /// Another connection to the index, for reading (worker threads, mounts).
    pub fn index_reader(&self) -> Result<Catalog> {
        Catalog::open_reader_as(&self.index_path(), self.access)
    }

    /// Replaces the header (`kluis vault promote`); atomic.
    pub fn rewrite_header(&mut self, header: VaultHeader) -> Result<()> {
        write_header(&self.root, &header)?;
        self.header = header;
        Ok(())
    }

    pub fn index_path(&self) -> PathBuf {
        self.root.join("index.sqlite")
    }

    pub fn block_size(&self) -> u32 {
        self.header.block_size
    }

    /// zstd level for frames written now.
    pub fn zstd_level(&self) -> i32 {
        self.header.zstd_level
    }

    pub fn catalog(&self) -> std::sync::MutexGuard<'_, Catalog> {
        self.catalog.lock().unwrap()
    }

    pub fn packs(&self) -> &Arc<PackFiles> {
        &self.packs
    }

    /// Makes sure the reserve exists; best effort (a full disk is exactly
    /// when it can't be made, and that must not fail the caller). Where the
    /// whole reserve no longer fits (a small change that borrowed it wrote
    /// its records into that room), as much as fits is kept, in sixteenths;
    /// the next gc, which frees room, makes it whole again.
    pub fn ensure_reserve(&self) {
        let path = self.root.join(RESERVE_FILE);
        let existing = fs::metadata(&path).map(|m| m.len() as usize).unwrap_or(0);
        if existing == RESERVE_BYTES {
            return;
        }
        // Real zeros, not a hole: the blocks must be allocated to be worth anything.
        let tmp = self.root.join(format!("{RESERVE_FILE}.tmp"));
        let mut last = None;
        for size in (1..=16).rev().map(|k| k * RESERVE_BYTES / 16).filter(|s| *s > existing) {
            match crate::newfile::replace_with(&path, &tmp, &vec![0u8; size], Modes::of_vault(&self.root).file) {
                Ok(()) => return,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => last = Some(e),
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = last {
            log::warn!("cannot set aside {} KiB of reserve space in {}: {e}", RESERVE_BYTES >> 10, self.root.display());
        }
    }

    /// Closes the index, leaving an empty one in its place: SQLite folds its
    /// log in and removes `-wal` and `-shm`, whose room a full filesystem
    /// may need back (crate::gc::close). For the end of a command.
    pub fn close_index(&self) -> Result<()> {
        *self.catalog() = Catalog::empty()?;
        Ok(())
    }

    /// Frees the reserve (see [`RESERVE_FILE`]).
    pub fn release_reserve(&self) {
        let _ = fs::remove_file(self.root.join(RESERVE_FILE));
    }

    /// Takes the vault lock, shared or exclusive, waiting for it; `on_wait`
    /// is called once if the lock is not free at once (to tell the user).
    pub fn lock(&self, exclusive: bool, on_wait: impl FnOnce()) -> Result<VaultLock> {
        lock_vault(&self.root, exclusive, on_wait)
    }

    /// A fetcher reading chunks through the index and the packs. Each call
    /// looks the location up in SQLite; fine for restore and verify.
    pub fn fetcher(&self) -> Result<Arc<dyn ChunkFetcher>> {
        Ok(Arc::new(IndexFetcher::new(self.index_reader()?, self.packs.clone())))
    }

    pub fn disk_reader(&self, point: &PointRow, disk: &str) -> Result<DiskReader> {
        let m = Manifest::parse(&point.manifest)?;
        DiskReader::new(m.disk(disk)?.clone(), self.fetcher()?)
    }

    /// Resolves `ITEM@latest`, `ITEM@<UTC time>` or `ITEM@<id prefix>`
    /// (`ITEM` alone means latest). Deleted points resolve only with `deleted`.
    pub fn select(&self, selector: &str, deleted: bool) -> Result<PointRow> {
        let (item, which) = selector.split_once('@').unwrap_or((selector, "latest"));
        let points = self.catalog().points(Some(item), deleted)?;
        if points.is_empty() {
            return Err(Error::NotFound(format!("no recovery points for item {item:?}")));
        }
        select_point(points, item, which)
    }
}

impl Drop for Vault {
    fn drop(&mut self) {
        if self.borrowed_reserve {
            // The index's -wal and -shm go when it closes; their room is
            // part of what the reserve needs.
            let _ = self.close_index();
            self.ensure_reserve();
        }
    }
}

/// Reads and checks the header of the vault at `root`.
pub fn read_header(root: &Path) -> Result<VaultHeader> {
    let hp = root.join(HEADER_FILE);
    let text = match read_header_text(&hp) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotFound(format!("{} is not a kluis vault (run `kluis init` first)", root.display())));
        }
        Err(e) => return Err(Error::io_path("read", &hp, e)),
    };
    VaultHeader::parse(&text, root)
}

/// [`Vault::check_primary`]'s replica half, for a vault not open yet.
pub fn check_primary(root: &Path, header: &VaultHeader) -> Result<()> {
    match &header.replica_of {
        None => Ok(()),
        Some(of) => Err(Error::InvalidInput(format!(
            "{} is a replica of vault {of}, kept by `kluis replicate`: it takes no backups or changes of its own \
             (`kluis vault promote` makes it a vault of its own)",
            root.display()
        ))),
    }
}

fn select_point(mut points: Vec<PointRow>, item: &str, which: &str) -> Result<PointRow> {
    if which == "latest" {
        return Ok(points.pop().unwrap());
    }
    if let Some(t) = parse_time_ms(which) {
        // A time names the point taken at that time, or the newest before it,
        // like "restore to how it was at 04:00".
        // Points are oldest first; a name to the second belongs to the first
        // point of that second (later ones get milliseconds, see
        // timefmt::point_names), so the first match is the one so named.
        if let Some(p) = points.iter().find(|p| crate::timefmt::point_name_matches(p.time_ms, which)) {
            return Ok(p.clone());
        }
        return points
            .into_iter()
            .rev()
            .find(|p| p.time_ms <= t)
            .ok_or_else(|| Error::NotFound(format!("item {item} has no recovery point at or before {which}")));
    }
    let lower = which.to_ascii_lowercase();
    if lower.len() >= 4 && lower.chars().all(|c| c.is_ascii_hexdigit()) {
        let found: Vec<_> = points.into_iter().filter(|p| p.id.to_hex().starts_with(&lower)).collect();
        return match found.len() {
            1 => Ok(found.into_iter().next().unwrap()),
            0 => Err(Error::NotFound(format!("item {item} has no recovery point with id {which}"))),
            n => Err(Error::InvalidInput(format!("id prefix {which} matches {n} recovery points of {item}; give more digits"))),
        };
    }
    Err(Error::InvalidInput(format!("{item}@{which}: expected latest, a UTC time like 2026-11-21T04:00:00Z, or an id prefix (4+ hex digits)")))
}

fn parse_time_ms(s: &str) -> Option<i64> {
    s.parse::<jiff::Timestamp>().ok().map(|t| t.as_millisecond())
}

/// The text of a vault header file: at most 64 KiB of a regular file (a
/// FIFO or a device at that name, from a mistyped `--vault`, would
/// otherwise hang or fill memory).
pub(crate) fn read_header_text(path: &Path) -> std::io::Result<String> {
    use crate::newfile::Unread;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let bytes = crate::newfile::read_regular(path, 64 << 10).map_err(|e| match e {
        Unread::NotRegular => bad("not a regular file"),
        Unread::TooBig => bad("larger than a vault header can be"),
        Unread::Io(e) => e,
    })?;
    String::from_utf8(bytes).map_err(|_| bad("not text"))
}

/// Writes `VAULT/kluis.vault` atomically: a temporary file, fsynced, renamed
/// over the old one, and the directory fsynced.
pub(crate) fn write_header(root: &Path, header: &VaultHeader) -> Result<()> {
    let tmp = root.join(format!("{HEADER_FILE}.tmp"));
    crate::newfile::replace_with(&root.join(HEADER_FILE), &tmp, header.to_text().as_bytes(), Modes::of_vault(root).file)
        .ctx(|| format!("write {}", root.join(HEADER_FILE).display()))?;
    crate::store::fsync_dir(root)
}

pub(crate) fn new_vault_id() -> String {
    let mut h = blake3::Hasher::new();
    h.update(&std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos().to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    if let Ok(b) = fs::read("/proc/sys/kernel/random/uuid") {
        h.update(&b);
    }
    crate::id::hex(&h.finalize().as_bytes()[..16])
}

/// Fetches chunks by looking each up in the index (maps, configs,
/// manifests; bulk readers resolve locations in batches instead).
pub(crate) struct IndexFetcher {
    index: Mutex<Catalog>,
    packs: Arc<PackFiles>,
}

impl IndexFetcher {
    pub(crate) fn new(index: Catalog, packs: Arc<PackFiles>) -> IndexFetcher {
        IndexFetcher { index: Mutex::new(index), packs }
    }
}

impl ChunkFetcher for IndexFetcher {
    fn fetch(&self, id: &ChunkId) -> Result<Arc<Vec<u8>>> {
        let loc = self.index.lock().unwrap().chunk_location(id)?;
        let loc = loc.ok_or_else(|| Error::Corrupt(format!("chunk {id} is referenced but missing from the index")))?;
        Ok(Arc::new(self.packs.read_chunk(&loc, *id)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_golden() {
        let h = VaultHeader { format: 2, id: "00112233445566778899aabbccddeeff".into(), block_size: 65536, zstd_level: 3, replica_of: None };
        assert_eq!(h.to_text(), "kluis-vault 2\nid 00112233445566778899aabbccddeeff\nblock-size 65536\nzstd-level 3\n");
        let r = VaultHeader { replica_of: Some("ffeeddccbbaa99887766554433221100".into()), ..h.clone() };
        assert_eq!(
            r.to_text(),
            "kluis-vault 2\nid 00112233445566778899aabbccddeeff\nblock-size 65536\nzstd-level 3\nreplica-of ffeeddccbbaa99887766554433221100\n"
        );
        assert_eq!(VaultHeader::parse(&r.to_text(), Path::new("v")).unwrap(), r);
        // A header without the zstd-level line reads as level 3, the only
        // one there was when it was written.
        let old = VaultHeader::parse("kluis-vault 2\nid 00112233445566778899aabbccddeeff\nblock-size 65536\n", Path::new("v")).unwrap();
        assert_eq!(old.zstd_level, 3);
        assert!(VaultHeader::parse("kluis-vault 2\nid x\nblock-size 65536\nzstd-level 99\n", Path::new("v")).is_err());
        assert_eq!(VaultHeader::parse(&h.to_text(), Path::new("v")).unwrap(), h);
        let e = VaultHeader::parse("kluis-vault 1\nid x\nblock-size 65536\n", Path::new("v")).unwrap_err();
        assert!(e.to_string().contains("vault format 1 is not supported"), "{e}");
        assert!(VaultHeader::parse("kluis-vault 3\nid x\nblock-size 65536\n", Path::new("v")).is_err());
        assert!(VaultHeader::parse("hello", Path::new("v")).is_err());
        assert!(VaultHeader::parse("kluis-vault 2\nid x\nblock-size 1000\n", Path::new("v")).is_err());
    }
}
