//! The local directory backend: today's vault durability rules behind the
//! seam. An object is a file at `ROOT/KEY`; it is written to an exclusive
//! temporary name beside its target (O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600
//! or the vault's group bits, src/newfile.rs), fsynced, then renamed
//! (put) or hard-linked (create: link(2) fails with EEXIST if anything is
//! at the name, atomically) into place, and the directory is fsynced.
//! Reads use pread, so ranged reads from several threads share nothing.

use super::{Error, Key, ObjectMeta, Op, Result, Storage, check_prefix, source_error};
use crate::newfile::{self, Modes};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A vault directory as a [`Storage`].
#[derive(Debug)]
pub struct LocalDir {
    root: PathBuf,
    modes: Modes,
}

impl LocalDir {
    /// The store at `root`, which must be a directory.
    pub fn open(root: &Path) -> Result<LocalDir> {
        let meta = std::fs::metadata(root).map_err(|e| io_error(root, Op::Open, "", e))?;
        if !meta.is_dir() {
            return Err(Error::Permanent {
                store: root.display().to_string(),
                op: Op::Open,
                key: String::new(),
                detail: "not a directory".into(),
            });
        }
        Ok(LocalDir { root: root.to_path_buf(), modes: Modes::of_vault(root) })
    }

    /// The store at `root`, made (owner-only) if missing; missing parents
    /// get the caller's umask, as `kluis init` makes a vault.
    pub fn create(root: &Path) -> Result<LocalDir> {
        if !root.is_dir() {
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| io_error(root, Op::Open, "", e))?;
            }
            newfile::create_dir_all(root, newfile::PRIVATE_DIR).map_err(|e| io_error(root, Op::Open, "", e))?;
        }
        LocalDir::open(root)
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.root.join(key.as_str())
    }

    fn err(&self, op: Op, key: &Key, e: io::Error) -> Error {
        io_error(&self.root, op, key.as_str(), e)
    }

    /// Writes a complete, fsynced temporary file beside `key`'s path (its
    /// directory made if missing) and hands it to `place`, which puts it at
    /// the target; the temporary name is removed whatever happens.
    fn write_then(&self, op: Op, key: &Key, fill: impl FnOnce(&mut File) -> io::Result<()>, place: impl FnOnce(&Path, &Path) -> io::Result<()>) -> Result<()> {
        let target = self.path(key);
        let dir = target.parent().unwrap_or(&self.root).to_path_buf();
        newfile::create_dir_all(&dir, self.modes.dir).map_err(|e| self.err(op, key, e))?;
        let (tmp, mut f) = newfile::create_temp_beside(&target, self.modes.file).map_err(|e| self.err(op, key, e))?;
        let r = (|| {
            fill(&mut f)?;
            f.sync_all()?;
            drop(f);
            place(&tmp, &target)?;
            File::open(&dir)?.sync_all()
        })();
        // After a rename the temporary name is gone; after a link (or a
        // failure) it is still there.
        let _ = std::fs::remove_file(&tmp);
        r.map_err(|e| self.err(op, key, e))
    }

    fn open_read(&self, op: Op, key: &Key) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(self.path(key))
            .map_err(|e| self.err(op, key, e))
    }
}

fn io_error(root: &Path, op: Op, key: &str, e: io::Error) -> Error {
    let store = root.display().to_string();
    let key = key.to_string();
    match e.kind() {
        io::ErrorKind::NotFound => Error::NotFound { store, op, key },
        io::ErrorKind::AlreadyExists if op == Op::Create => Error::AlreadyExists { store, key },
        // EINTR is retried by std; EAGAIN/ETIMEDOUT (a network
        // filesystem) may pass.
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            Error::Transient { store, op, key, detail: e.to_string() }
        }
        _ => Error::Permanent { store, op, key, detail: e.to_string() },
    }
}

impl Storage for LocalDir {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn put(&self, key: &Key, bytes: &[u8]) -> Result<()> {
        self.write_then(Op::Put, key, |f| f.write_all(bytes), |tmp, target| std::fs::rename(tmp, target))
    }

    fn put_file(&self, key: &Key, path: &Path) -> Result<()> {
        let mut src = File::open(path).map_err(|e| source_error(self, key, path, e))?;
        // std::io::copy uses copy_file_range (a reflink or in-kernel copy
        // where the filesystem can).
        self.write_then(Op::Put, key, |f| io::copy(&mut src, f).map(drop), |tmp, target| std::fs::rename(tmp, target))
    }

    fn create(&self, key: &Key, bytes: &[u8]) -> Result<()> {
        self.write_then(Op::Create, key, |f| f.write_all(bytes), |tmp, target| std::fs::hard_link(tmp, target))
    }

    fn read(&self, key: &Key) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.open_read(Op::Read, key)?.read_to_end(&mut v).map_err(|e| self.err(Op::Read, key, e))?;
        Ok(v)
    }

    fn read_range(&self, key: &Key, offset: u64, len: u64) -> Result<Vec<u8>> {
        let f = self.open_read(Op::Read, key)?;
        let mut v = vec![0u8; usize::try_from(len).expect("range length fits in memory")];
        f.read_exact_at(&mut v, offset).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => Error::Permanent {
                store: self.describe(),
                op: Op::Read,
                key: key.to_string(),
                detail: format!("range {offset}+{len} is past the end of the object"),
            },
            _ => self.err(Op::Read, key, e),
        })?;
        Ok(v)
    }

    fn head(&self, key: &Key) -> Result<ObjectMeta> {
        let m = std::fs::symlink_metadata(self.path(key)).map_err(|e| self.err(Op::Head, key, e))?;
        if !m.is_file() {
            return Err(Error::Permanent { store: self.describe(), op: Op::Head, key: key.to_string(), detail: "not a regular file".into() });
        }
        Ok(ObjectMeta { key: key.clone(), size: m.len() })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        check_prefix(prefix)?;
        let mut out = Vec::new();
        let start = if prefix.is_empty() { self.root.clone() } else { self.root.join(prefix) };
        // No directory for this prefix: nothing was put under it (a file
        // there is an object named like the prefix, not below it).
        match std::fs::symlink_metadata(&start) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Ok(m) if !m.is_dir() => return Ok(out),
            _ => {}
        }
        walk(&start, prefix, &mut out).map_err(|e| io_error(&self.root, Op::List, prefix, e))?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &Key) -> Result<()> {
        let path = self.path(key);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.err(Op::Delete, key, e)),
        }
        let dir = path.parent().unwrap_or(&self.root);
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| self.err(Op::Delete, key, e))
    }
}

/// Files below `dir` whose names are keys (temporary files, starting with
/// `.`, and anything else that is not a valid key are not objects).
fn walk(dir: &Path, rel: &str, out: &mut Vec<ObjectMeta>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        let rel = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let Ok(key) = Key::new(rel.clone()) else { continue };
        let ft = entry.file_type()?;
        if ft.is_dir() {
            walk(&entry.path(), &rel, out)?;
        } else if ft.is_file() {
            match entry.metadata() {
                Ok(m) => out.push(ObjectMeta { key, size: m.len() }),
                // Deleted between readdir and stat.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn objects_are_private_files_and_temporaries_are_not_listed() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalDir::create(&d.path().join("v")).unwrap();
        let k = Key::new("packs/ab/p1").unwrap();
        s.put(&k, b"hello").unwrap();
        let m = std::fs::metadata(d.path().join("v/packs/ab/p1")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o600);
        assert_eq!(std::fs::metadata(d.path().join("v/packs")).unwrap().mode() & 0o7777, 0o700);
        std::fs::write(d.path().join("v/packs/ab/.p2.kluis-tmp-1-2"), b"half").unwrap();
        assert_eq!(s.list("packs").unwrap(), vec![ObjectMeta { key: k.clone(), size: 5 }]);
        // A symlink planted at a key is neither followed on read nor
        // replaced by create.
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("v/packs/ab/evil")).unwrap();
        let evil = Key::new("packs/ab/evil").unwrap();
        assert!(s.read(&evil).is_err());
        assert!(s.create(&evil, b"x").unwrap_err().is_already_exists());
        assert!(s.list("packs").unwrap().iter().all(|m| m.key != evil));
    }
}
