//! How kluis makes files and directories.
//!
//! Every file kluis creates is created exclusively (`O_CREAT|O_EXCL`) and
//! never through a symlink (`O_NOFOLLOW`): a path that already exists —
//! a symlink planted by another user in a directory they can write, or a
//! leftover — makes the creation fail instead of truncating whatever the
//! name points to. Temporary names beside a target carry a random part, so
//! they cannot be predicted either.
//!
//! Modes are set explicitly with fchmod/chmod after creation, not left to
//! the umask: the vault, its packs, index, header and locks are the
//! owner's alone (0700 directories, 0600 files), as restic and borg make
//! their repositories, whatever umask the caller runs under. Giving a group
//! access is a deliberate step: group bits given to the vault directory
//! are then given to what kluis makes in it ([`Modes::of_vault`], as
//! restic follows its config file's mode; docs/cli.md, "Who can read a
//! vault").
//!
//! Files a user names for kluis to read (disks, config files, a vault's
//! header) are opened with [`open_to_read`], which never waits: a FIFO at
//! that name would otherwise block the open until some writer came.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of the directories kluis makes for a new vault.
pub const PRIVATE_DIR: u32 = 0o700;
/// Mode of the files kluis makes in a new vault, and of restored disk images.
pub const PRIVATE_FILE: u32 = 0o600;

/// Modes of new directories and files in one vault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modes {
    pub dir: u32,
    pub file: u32,
}

impl Modes {
    pub const PRIVATE: Modes = Modes { dir: PRIVATE_DIR, file: PRIVATE_FILE };

    /// The owner's alone, plus the group bits (and setgid) the vault
    /// directory `root` has: a group that was given the vault keeps
    /// reading what later backups add. Others never get anything.
    pub fn of_vault(root: &Path) -> Modes {
        use std::os::unix::fs::MetadataExt;
        let g = std::fs::metadata(root).map(|m| m.mode()).unwrap_or(0);
        Modes { dir: PRIVATE_DIR | (g & 0o2070), file: PRIVATE_FILE | (g & 0o060) }
    }
}

/// Creates `path` for writing with exactly `mode`; fails with
/// `AlreadyExists` if anything (a symlink included) is at `path`.
pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    // The umask may have taken bits away that `mode` asks for.
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(f)
}

/// Creates a fresh temporary file beside `target` (same directory, so a
/// rename puts it in place), named `.NAME.kluis-tmp-PID-RANDOM`, with
/// exactly `mode`. Returns its path and the open file.
pub fn create_temp_beside(target: &Path, mode: u32) -> io::Result<(PathBuf, File)> {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut last = None;
    for _ in 0..16 {
        let tmp = target.with_file_name(temp_name(&name));
        match create_new(&tmp, mode) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)))
}

/// Writes `bytes` to `path` through `path.tmp`-style temporary `tmp`
/// (removed first if an interrupted run left it), fsynced, then renamed
/// over `path`, with exactly `mode`.
pub fn replace_with(path: &Path, tmp: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    match std::fs::remove_file(tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let made = (|| {
        let mut f = create_new(tmp, mode)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(tmp, path)
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    made
}

/// Opens `path` for writing, creating it with exactly `mode` if missing;
/// for lock files, which stay. Never follows a symlink at `path`.
pub fn open_or_create(path: &Path, mode: u32) -> io::Result<File> {
    match create_new(path, mode) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path)
        }
        r => r,
    }
}

/// `mkdir -p` in which every directory made gets exactly `mode`;
/// directories that exist already are left as they are. (Callers make a
/// vault's parents with the caller's umask first: only the vault is private.)
pub fn create_dir_all(path: &Path, mode: u32) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent, mode)?;
    }
    match std::fs::DirBuilder::new().mode(mode & 0o777).create(path) {
        Ok(()) => std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)),
        // Made by someone else meanwhile (two backups starting at once).
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens `path` for reading without waiting: with O_NONBLOCK, so that a
/// FIFO at the name does not block until a writer comes, then back to
/// blocking reads (callers refuse what is not a regular file or device
/// before they read).
pub fn open_to_read(path: &Path) -> io::Result<File> {
    use std::os::unix::io::AsRawFd;
    let f = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, 0) };
    Ok(f)
}

/// Why [`read_regular`] read nothing.
#[derive(Debug)]
pub enum Unread {
    NotRegular,
    TooBig,
    Io(io::Error),
}

/// The bytes of regular file `path`, at most `limit` of them: the limit
/// holds for the bytes read, not only for the size stat gave (a file may
/// grow while it is read; `/dev/zero` has size 0).
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, Unread> {
    use std::io::Read;
    let f = open_to_read(path).map_err(Unread::Io)?;
    let meta = f.metadata().map_err(Unread::Io)?;
    if !meta.is_file() {
        return Err(Unread::NotRegular);
    }
    if meta.len() > limit {
        return Err(Unread::TooBig);
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(limit + 1).read_to_end(&mut bytes).map_err(Unread::Io)?;
    if bytes.len() as u64 > limit {
        return Err(Unread::TooBig);
    }
    Ok(bytes)
}

/// A fresh temporary name beside a file called `name`:
/// `.NAME.kluis-tmp-PID-RANDOM`, which nobody can predict, so nobody can
/// plant anything there in advance (it is still created exclusively).
pub fn temp_name(name: &str) -> String {
    format!(".{name}.kluis-tmp-{}-{:016x}", std::process::id(), random_u64())
}

/// Random bits for names no one can guess (getrandom(2); the time and a
/// counter if it fails, which still never repeats within a process).
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    if n == b.len() as isize {
        return u64::from_le_bytes(b);
    }
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    t ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(48)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn never_through_a_symlink_and_modes_despite_umask() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert_eq!(create_new(&link, PRIVATE_FILE).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert!(open_or_create(&link, PRIVATE_FILE).is_err());
        assert!(replace_with(&victim, &link, b"x", PRIVATE_FILE).is_ok());
        assert!(std::fs::symlink_metadata(&link).is_err(), "the leftover at the temporary name is replaced, not followed");
        let f = d.path().join("f");
        create_new(&f, PRIVATE_FILE).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o7777, 0o600);
        let (t1, _) = create_temp_beside(&f, PRIVATE_FILE).unwrap();
        let (t2, _) = create_temp_beside(&f, PRIVATE_FILE).unwrap();
        assert_ne!(t1, t2);
        let deep = d.path().join("a/b/c");
        create_dir_all(&deep, PRIVATE_DIR).unwrap();
        for p in [d.path().join("a"), d.path().join("a/b"), deep] {
            assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o700, "{}", p.display());
        }
        assert_eq!(Modes::of_vault(&d.path().join("a")), Modes::PRIVATE);
        std::fs::set_permissions(d.path().join("a"), std::fs::Permissions::from_mode(0o2775)).unwrap();
        assert_eq!(Modes::of_vault(&d.path().join("a")), Modes { dir: 0o2770, file: 0o660 });
    }
}
