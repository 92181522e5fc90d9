//! When a pack file the index no longer lists may be unlinked: reader
//! leases and retired packs.
//!
//! A reader that opens a disk lazily (the mount, `kluis files`) looks its
//! chunks up in a pinned index snapshot ([`crate::catalog::Catalog::open_snapshot`])
//! long after opening it, and opens packs only when it reads from them. So
//! gc and replication, which drop index rows and then unlink pack files,
//! must not unlink a pack such a reader's snapshot still points into:
//!
//! ```text
//! VAULT/leases/read-<start ms>-<pid>-<n>   a reader's lease: flock(2)ed (LOCK_EX) by its holder
//! VAULT/packs/retired                      "<ms> NAME" per line: packs dropped from the index at <ms>, kept for readers
//! ```
//!
//! A reader takes its lease (the file is made under a temporary name,
//! locked, then renamed, so a visible lease is always locked) *before* its
//! snapshot begins, and drops it when the disk closes. Whoever drops pack
//! rows (gc, replicate; under the vault's exclusive lock) calls
//! [`sweep_packs`] *after* the commit: a pack dropped at time T is unlinked
//! only when no live lease started at or before T; otherwise it stays, is
//! listed in `packs/retired` with T, and a later sweep unlinks it once
//! those leases are gone. A reader whose lease started after T has a
//! snapshot without the pack's rows, so it never asks for the pack.
//!
//! A lease whose holder died is unlocked (the kernel drops flocks with the
//! process) and is removed by the next sweep: a crashed reader holds
//! nothing back. Start times are wall-clock milliseconds of this host; the
//! object-storage backend will replace the flock by a heartbeat, with the
//! same rule.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

use super::pack::{pack_path, packs_on_disk};

pub const LEASES_DIR: &str = "leases";
const RETIRED: &str = "retired";

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A reader's lease on the packs its index snapshot points into; held
/// until dropped (or the process ends).
#[derive(Debug)]
pub struct ReadLease {
    path: PathBuf,
    _file: File,
}

impl ReadLease {
    /// Takes a lease in `vault`. Take it before beginning the snapshot it
    /// protects.
    pub fn take(vault: &Path) -> Result<ReadLease> {
        // A sweep may remove our temporary file between its creation and
        // its lock (it looks like one left by a dead reader): try again.
        let mut tries = 0;
        loop {
            match Self::try_take(vault) {
                Err(Error::Io { .. }) if tries < 3 => tries += 1,
                r => return r,
            }
        }
    }

    fn try_take(vault: &Path) -> Result<ReadLease> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = vault.join(LEASES_DIR);
        crate::newfile::create_dir_all(&dir, crate::newfile::Modes::of_vault(vault).dir).ctx(|| format!("create {}", dir.display()))?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tmp = dir.join(format!(".new-{pid}-{n}"));
        let file = crate::newfile::create_new(&tmp, crate::newfile::Modes::of_vault(vault).file).ctx(|| format!("create {}", tmp.display()))?;
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(format!("lock {}", tmp.display()), e));
        }
        let path = dir.join(format!("read-{}-{pid}-{n}", wall_ms()));
        fs::rename(&tmp, &path).ctx(|| format!("rename {} to {}", tmp.display(), path.display()))?;
        Ok(ReadLease { path, _file: file })
    }
}

impl Drop for ReadLease {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Start times of the leases held now; the files of dead holders go.
fn live_leases(vault: &Path) -> Vec<u64> {
    let mut live = Vec::new();
    let Ok(entries) = fs::read_dir(vault.join(LEASES_DIR)) else { return live };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(f) = File::open(e.path()) else { continue };
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
            // Nobody holds it: its reader is gone (or never finished taking it).
            let _ = fs::remove_file(e.path());
            continue;
        }
        // A `.new-` file is a lease being taken: its snapshot is not begun yet.
        if let Some(start) = name.strip_prefix("read-").and_then(|r| r.split('-').next()).and_then(|t| t.parse().ok()) {
            live.push(start);
        }
    }
    live
}

/// What a sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Pack files unlinked, and their bytes.
    pub removed: u64,
    pub bytes: u64,
    /// Packs left in place because a reader's lease may still need them.
    pub kept: u64,
}

fn retired_path(vault: &Path) -> PathBuf {
    vault.join("packs").join(RETIRED)
}

fn read_retired(vault: &Path) -> HashMap<String, u64> {
    let text = fs::read_to_string(retired_path(vault)).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (t, name) = l.split_once(' ')?;
            Some((name.to_owned(), t.parse().ok()?))
        })
        .collect()
}

fn write_retired(vault: &Path, retired: &HashMap<String, u64>) -> Result<()> {
    let path = retired_path(vault);
    if retired.is_empty() {
        return match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(format!("remove {}", path.display()), e)),
            _ => Ok(()),
        };
    }
    let mut names: Vec<_> = retired.iter().collect();
    names.sort();
    let text: String = names.into_iter().map(|(n, t)| format!("{t} {n}\n")).collect();
    // Written as every file in the vault is (src/newfile.rs); a lost list
    // would only make its packs wait for every lease live at the next
    // sweep instead of the older ones.
    let tmp = path.with_extension("tmp");
    crate::newfile::replace_with(&path, &tmp, text.as_bytes(), crate::newfile::Modes::of_vault(vault).file).ctx(|| format!("write {}", path.display()))
}

/// Unlinks the pack files `names`, which the index no longer lists (the
/// caller has committed that), unless a live lease may still need one:
/// those are kept and listed in `packs/retired` for a later sweep.
pub fn sweep_packs<'a>(vault: &Path, names: impl IntoIterator<Item = &'a str>) -> Result<Swept> {
    let now = wall_ms();
    let leases = live_leases(vault);
    let mut retired = read_retired(vault);
    let before = retired.clone();
    let mut swept = Swept::default();
    for name in names {
        // Dropped now, unless an earlier sweep kept it (then: since then).
        let dropped = *retired.get(name).unwrap_or(&now);
        let path = pack_path(vault, name);
        if leases.iter().any(|start| *start <= dropped) {
            retired.insert(name.to_owned(), dropped);
            swept.kept += 1;
            continue;
        }
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        match fs::remove_file(&path) {
            Ok(()) => {
                swept.removed += 1;
                swept.bytes += size;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("remove {}", path.display()), e)),
        }
        retired.remove(name);
    }
    // Entries whose file went some other way.
    retired.retain(|name, _| pack_path(vault, name).exists());
    if retired != before {
        write_retired(vault, &retired)?;
    }
    Ok(swept)
}

/// Sweeps (see [`sweep_packs`]) every pack file whose name is not in `keep`.
pub fn remove_packs_except(vault: &Path, keep: &std::collections::HashSet<&str>) -> Result<Swept> {
    let names: Vec<String> = packs_on_disk(vault)?.into_iter().filter(|n| !keep.contains(n.as_str())).collect();
    sweep_packs(vault, names.iter().map(|n| n.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(vault: &Path, name: &str) -> PathBuf {
        let p = pack_path(vault, name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, b"pack").unwrap();
        p
    }

    #[test]
    fn a_pack_is_kept_while_an_older_lease_lives() {
        let t = tempfile::tempdir().unwrap();
        let v = t.path();
        let a = pack(v, "aa00000000000001");
        let b = pack(v, "bb00000000000002");
        let lease = ReadLease::take(v).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        // Dropped after the lease began: kept, and listed.
        let s = sweep_packs(v, ["aa00000000000001"]).unwrap();
        assert_eq!(s, Swept { removed: 0, bytes: 0, kept: 1 });
        assert!(a.exists());
        assert!(read_retired(v).contains_key("aa00000000000001"));
        // A lease taken after the drop does not hold it back ...
        std::thread::sleep(std::time::Duration::from_millis(5));
        let young = ReadLease::take(v).unwrap();
        drop(lease);
        let s = remove_packs_except(v, &["bb00000000000002"].into_iter().collect()).unwrap();
        assert_eq!((s.removed, s.kept), (1, 0));
        assert!(!a.exists() && b.exists());
        assert!(!retired_path(v).exists());
        // ... but holds back what is dropped while it lives.
        let s = sweep_packs(v, ["bb00000000000002"]).unwrap();
        assert_eq!((s.removed, s.kept), (0, 1));
        drop(young);
        assert_eq!(sweep_packs(v, ["bb00000000000002"]).unwrap().removed, 1);
        assert!(!b.exists());
    }

    #[test]
    fn a_dead_readers_lease_holds_nothing() {
        let t = tempfile::tempdir().unwrap();
        let v = t.path();
        let a = pack(v, "aa00000000000001");
        // What a reader killed with its lease leaves: the file, unlocked.
        fs::create_dir_all(v.join(LEASES_DIR)).unwrap();
        let stale = v.join(LEASES_DIR).join("read-1-4242-0");
        fs::write(&stale, b"").unwrap();
        assert_eq!(sweep_packs(v, ["aa00000000000001"]).unwrap().removed, 1);
        assert!(!a.exists() && !stale.exists());
    }
}
