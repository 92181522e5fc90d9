//! Small records kept in the vault beside the packs, so that what only the
//! index knew survives the loss of the index (`kluis rebuild-index` reads
//! them back, see crate::rebuild). One file per record, so that several
//! writers never rewrite one shared file:
//!
//! ```text
//! VAULT/records/items/NAME        {"policy": "P" | null, "definition": "<ItemDef JSON>"}  a protected item
//! VAULT/records/policies/NAME     {"schedule": "daily 02:00", "keep_last": 0, …} a policy
//! VAULT/records/settings/KEY      the value, as `kluis vault set` stored it
//! VAULT/records/deleted/POINTID   the Unix time (ms) the point was deleted
//! ```
//!
//! Names are item and policy names (crate::backup::check_name: no `/`, no
//! leading `.`), setting keys, and point ids in hex. A deletion record
//! outlives gc's purge of the point: it is what keeps a rebuild from
//! bringing a purged point back from manifests still in a pack. Writes are
//! atomic: a temporary name in the same directory made with O_EXCL and mode
//! 0600, fsync, rename over the record, fsync of the directory; a crash
//! leaves the old record or the new, and at worst a `.tmp-*` file that the
//! next write of the same record replaces and readers ignore. Directories
//! are made 0700: item definitions hold scripts and paths. The catalog
//! writes them whenever it changes such a row (crate::catalog); replicate
//! mirrors them into the replica with its packs. They are a step towards a
//! self-contained vault whose index is only a cache.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

pub const RECORDS_DIR: &str = "records";

/// The kinds of record, each a directory of `VAULT/records`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Item,
    Policy,
    Setting,
    Deleted,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Item => "items",
            Kind::Policy => "policies",
            Kind::Setting => "settings",
            Kind::Deleted => "deleted",
        }
    }
}

fn path(root: &Path, kind: Kind, name: &str) -> Result<PathBuf> {
    if name.is_empty() || name.starts_with('.') || name.contains('/') || name.contains('\0') {
        return Err(Error::InvalidInput(format!("{name:?} cannot name a record")));
    }
    Ok(root.join(RECORDS_DIR).join(kind.dir()).join(name))
}

/// Writes (or replaces) the record `name` of `kind` in the vault at `root`.
pub fn put(root: &Path, kind: Kind, name: &str, bytes: &[u8]) -> Result<()> {
    let to = path(root, kind, name)?;
    let dir = to.parent().expect("a record has a directory");
    // Item definitions hold scripts and paths: for the vault's owner only.
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).ctx(|| format!("create {}", dir.display()))?;
    // Exclusive, mode 0600, fsynced, renamed over the record (a leftover of
    // a crashed write by a process of the same id is removed first).
    let tmp = dir.join(format!(".tmp-{name}-{}", std::process::id()));
    crate::newfile::replace_with(&to, &tmp, bytes, crate::newfile::PRIVATE_FILE).map_err(|e| Error::io_path("cannot write record", &to, e))?;
    crate::store::fsync_dir(dir)
}

/// Removes a record; one that does not exist is fine.
pub fn remove(root: &Path, kind: Kind, name: &str) -> Result<()> {
    let p = path(root, kind, name)?;
    match fs::remove_file(&p) {
        Ok(()) => fs::File::open(p.parent().unwrap()).and_then(|d| d.sync_all()).ctx(|| format!("fsync {}", p.display())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io_path("cannot remove record", &p, e)),
    }
}

/// Every record of `kind`, as (name, bytes), sorted by name.
pub fn list(root: &Path, kind: Kind) -> Result<Vec<(String, Vec<u8>)>> {
    let dir = root.join(RECORDS_DIR).join(kind.dir());
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io_path("cannot list", &dir, e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.ctx(|| format!("list {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let bytes = fs::read(e.path()).ctx(|| format!("read {}", e.path().display()))?;
        out.push((name, bytes));
    }
    out.sort();
    Ok(out)
}

/// Makes the records of the vault at `to` those of the vault at `from`
/// (`kluis replicate`): each record written anew, records `from` lacks
/// removed. Returns how many records `to` holds.
pub fn mirror(from: &Path, to: &Path) -> Result<usize> {
    let mut n = 0;
    for kind in [Kind::Item, Kind::Policy, Kind::Setting, Kind::Deleted] {
        let want = list(from, kind)?;
        for (name, bytes) in &want {
            put(to, kind, name, bytes)?;
        }
        for (name, _) in list(to, kind)? {
            if !want.iter().any(|(w, _)| *w == name) {
                remove(to, kind, &name)?;
            }
        }
        n += want.len();
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn put_replace_list_remove() {
        let t = tempfile::tempdir().unwrap();
        put(t.path(), Kind::Item, "web01", b"one").unwrap();
        put(t.path(), Kind::Item, "web01", b"two").unwrap();
        put(t.path(), Kind::Item, "db01", b"three").unwrap();
        assert_eq!(list(t.path(), Kind::Item).unwrap(), vec![("db01".into(), b"three".to_vec()), ("web01".into(), b"two".to_vec())]);
        let mode = fs::metadata(t.path().join("records/items/web01")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(t.path().join("records/items")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        remove(t.path(), Kind::Item, "web01").unwrap();
        remove(t.path(), Kind::Item, "web01").unwrap();
        assert_eq!(list(t.path(), Kind::Item).unwrap().len(), 1);
        assert!(list(t.path(), Kind::Policy).unwrap().is_empty());
        assert!(put(t.path(), Kind::Item, "../x", b"").is_err());

        let r = tempfile::tempdir().unwrap();
        put(r.path(), Kind::Policy, "stale", b"{}").unwrap();
        assert_eq!(mirror(t.path(), r.path()).unwrap(), 1);
        assert_eq!(list(r.path(), Kind::Item).unwrap(), list(t.path(), Kind::Item).unwrap());
        assert!(list(r.path(), Kind::Policy).unwrap().is_empty());
    }
}
