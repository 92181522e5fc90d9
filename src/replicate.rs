//! Replication: keeps a secondary vault (a directory on another disk, or an
//! NFS or sshfs mount) a complete copy of this one, ready to take over after
//! a disaster.
//!
//! A replica is an ordinary vault whose header says `replica-of ID`
//! (crate::vault::VaultHeader). Every reading command works on it: points,
//! restore, mount, files, verify, jobs. Commands that would change it refuse,
//! until `kluis vault promote` makes it a vault of its own. Its packs are
//! byte copies of the primary's (immutable, so each is copied once) and its
//! index is a copy of the primary's index.
//!
//! # One run
//!
//! 1. The replica is made if `to` is missing or empty (header first, with a
//!    new vault id and `replica-of`: from then on it reads as a replica
//!    with no points until step 4 gives it an index), then locked
//!    exclusively (its restores and verifies wait, as they do for gc) and
//!    its header checked under the lock. The primary is locked shared: gc, which deletes and rewrites
//!    packs, waits; backups go on, and what they commit after step 2 goes
//!    with the next run.
//! 2. The primary's index is copied as of one instant into
//!    `REPLICA/index.sqlite.incoming` (SQLite's `VACUUM INTO`).
//! 3. Every pack that copy lists and the replica lacks is copied, in the
//!    write order of a new pack (temporary name, fsync, rename, fsync).
//! 4. The replica's index is replaced by the copy in one SQLite transaction
//!    (its first index: the copy, fsynced and renamed into place); then the
//!    vault's records (crate::records) are mirrored.
//! 5. The replica's packs that its new index does not list (gc removed or
//!    rewrote them on the primary) are deleted, except those a reader of
//!    the replica (a mount) may still need: a later run deletes them
//!    (store/lease.rs).
//!
//! A kill at any instant leaves the replica as the previous run left it or
//! as this one does: before 4 its index lists only packs it already had, 4
//! is one transaction, and after 4 only unlisted packs are left over, which
//! the next run deletes (with the temporary files of 2 and 3).
//!
//! The whole index is copied each run (compacted: about 110 bytes per stored
//! chunk); packs only when new.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use crate::catalog::Catalog;
use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
use crate::store::{copy_pack, pack_path, remove_packs_except, remove_temp_packs};
use crate::vault::{lock_vault, new_vault_id, write_header, Vault, VaultHeader, FORMAT_VERSION, HEADER_FILE};

/// The copy of the primary's index (step 2), in the replica.
const INCOMING: &str = "index.sqlite.incoming";

#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplicateReport {
    pub to: PathBuf,
    /// The replica was made by this run.
    pub created: bool,
    /// Recovery points in the replica now (deleted ones not counted).
    pub points: u64,
    /// Packs in the replica now.
    pub packs: u64,
    pub packs_copied: u64,
    pub bytes_copied: u64,
    pub packs_removed: u64,
    pub bytes_removed: u64,
    /// Packs the new index no longer lists, left in place for a reader of
    /// the replica that may still need them (a later run removes them).
    pub packs_kept_for_readers: u64,
    /// Size of the index copy.
    pub index_bytes: u64,
    pub seconds: f64,
}

/// Brings the replica at `to` up to date with `vault` (made if `to` is
/// missing or an empty directory).
pub fn replicate(vault: &Vault, to: &Path, progress: &dyn Progress, cancel: &AtomicBool) -> Result<ReplicateReport> {
    let started = Instant::now();
    check_apart(vault.root(), to)?;
    let created = make_replica(vault, to)?;
    // Checked before the lock (whose file would be new in a vault that is
    // not ours to touch) and again under it (a promotion may have come between).
    check_replica(vault, to)?;
    let _replica = lock_vault(to, true, || log::warn!("waiting for restores and verifies of {} to finish", to.display()))?;
    check_replica(vault, to)?;
    let _primary = vault.lock(false, || log::warn!("waiting for a running gc to finish before replicating"))?;
    let mut rep = ReplicateReport { to: to.to_owned(), created, ..Default::default() };

    // Leftovers of an interrupted run.
    remove_temp_packs(to)?;
    let incoming = to.join(INCOMING);
    let _ = fs::remove_file(&incoming);
    let _incoming_goes = RemoveOnDrop(&incoming);

    // 2. The primary's index as of now.
    vault.catalog().snapshot_into(&incoming)?;
    rep.index_bytes = fs::metadata(&incoming).map(|m| m.len()).unwrap_or(0);
    let snap = Connection::open_with_flags(&incoming, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let packs: Vec<(String, u64)> = {
        let mut st = snap.prepare("SELECT name, size FROM packs ORDER BY id")?;
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?
    };
    rep.points = snap.query_row("SELECT count(*) FROM points WHERE deleted_ms IS NULL", [], |r| r.get(0))?;
    rep.packs = packs.len() as u64;

    // 3. The packs the replica lacks.
    let missing: Vec<&(String, u64)> =
        packs.iter().filter(|(name, size)| fs::metadata(pack_path(to, name)).map_or(true, |m| m.len() != *size)).collect();
    progress.start("replicating", missing.iter().map(|(_, size)| size).sum());
    for (name, size) in missing {
        let src = pack_path(vault.root(), name);
        let have = fs::metadata(&src).ctx(|| format!("pack {name} of {}", vault.root().display()))?.len();
        if have != *size {
            return Err(Error::Corrupt(format!(
                "pack {name} of {} is {have} bytes where its index says {size}: run `kluis verify` on it; the replica is unchanged",
                vault.root().display()
            )));
        }
        let n = copy_pack(vault.root(), to, name, &mut |n| {
            progress.advance(n);
            if cancel.load(Ordering::Relaxed) { Err(Error::Interrupted) } else { Ok(()) }
        })?;
        rep.packs_copied += 1;
        rep.bytes_copied += n;
    }
    progress.finish();
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }

    // 4. The new index, in one transaction; a replica's first is the copy
    // itself, renamed into place.
    let index = to.join("index.sqlite");
    if index.exists() {
        Catalog::open(&index, true)?.replace_with(&snap)?;
        drop(snap);
    } else {
        drop(snap);
        install_first_index(&incoming, &index)?;
    }
    // Opened again so that its settings (WAL) hold for what follows.
    let replica = Vault::open(to)?;
    // In the copy, this run's own job was still running.
    replica.catalog().end_copied_jobs("replicate", "ok", rep.bytes_copied)?;
    // What a rebuild of the replica's index needs besides its packs.
    crate::records::mirror(vault.root(), to)?;

    // 5. Packs the primary no longer has.
    let listed: HashSet<&str> = packs.iter().map(|(n, _)| n.as_str()).collect();
    let swept = remove_packs_except(to, &listed)?;
    (rep.packs_removed, rep.bytes_removed, rep.packs_kept_for_readers) = (swept.removed, swept.bytes, swept.kept);
    // Room for a gc on a full disk, once promoted.
    replica.ensure_reserve();
    rep.seconds = started.elapsed().as_secs_f64();
    Ok(rep)
}

/// Makes the copy `incoming` the replica's first index: fsynced (`VACUUM
/// INTO` does not), renamed into place, the directory fsynced. Until the
/// rename the replica has no index, which reads as no points
/// (crate::catalog::IndexAccess::Empty); then it has all of them.
fn install_first_index(incoming: &Path, index: &Path) -> Result<()> {
    fs::File::open(incoming).and_then(|f| f.sync_all()).ctx(|| format!("fsync {}", incoming.display()))?;
    // A log or shared-memory file without its database is nobody's (a
    // crash of an older kluis mid-creation): SQLite would apply it to the
    // new one.
    for leftover in ["index.sqlite-wal", "index.sqlite-shm"] {
        let p = index.with_file_name(leftover);
        if let Err(e) = fs::remove_file(&p)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(Error::io_path("remove", &p, e));
        }
    }
    fs::rename(incoming, index).ctx(|| format!("rename {} to {}", incoming.display(), index.display()))?;
    crate::store::fsync_dir(index.parent().unwrap_or(Path::new(".")))
}

/// What `kluis vault promote` did.
#[derive(Clone, Debug, Serialize)]
pub struct PromoteReport {
    pub vault: PathBuf,
    pub was_replica_of: String,
    pub points: u64,
    /// The primary's `replicate-to`, which came with the copied index and
    /// was cleared so this vault does not replicate onto its old place.
    pub cleared_replicate_to: Option<PathBuf>,
}

/// Makes replica `vault` a vault of its own: it takes backups and changes
/// from now on, and replication from its old primary refuses it.
pub fn promote(vault: &mut Vault) -> Result<PromoteReport> {
    let Some(of) = vault.header.replica_of.clone() else {
        return Err(Error::InvalidInput(format!("{} is not a replica; there is nothing to promote", vault.root().display())));
    };
    // A replication in progress finishes first.
    let _lock = vault.lock(true, || log::warn!("waiting for a running replication to finish"))?;
    let cleared = crate::settings::replicate_to(vault)?;
    if cleared.is_some() {
        vault.catalog().delete_meta(crate::settings::REPLICATE_TO)?;
    }
    let points = vault.catalog().points(None, false)?.len() as u64;
    if vault.index_access() == crate::catalog::IndexAccess::Empty {
        // No replicate got as far as its index: a vault of its own needs one.
        Catalog::open(&vault.index_path(), true)?;
    }
    // A killed replicate's copy of its primary's index has no use any more.
    let _ = fs::remove_file(vault.root().join(INCOMING));
    let header = VaultHeader { replica_of: None, ..vault.header.clone() };
    vault.rewrite_header(header)?;
    Ok(PromoteReport { vault: vault.root().to_owned(), was_replica_of: of, points, cleared_replicate_to: cleared })
}

/// The replica must be neither the vault nor inside it, nor around it.
fn check_apart(vault: &Path, to: &Path) -> Result<()> {
    let v = fs::canonicalize(vault).ctx(|| format!("resolve {}", vault.display()))?;
    // `to` may not exist yet: resolve its nearest existing ancestor (through
    // any symlink) and append the rest.
    let abs = std::path::absolute(to).ctx(|| format!("resolve {}", to.display()))?;
    let mut t = None;
    for base in abs.ancestors() {
        if let Ok(real) = fs::canonicalize(base) {
            t = Some(real.join(abs.strip_prefix(base).unwrap_or(Path::new(""))));
            break;
        }
    }
    let t = t.unwrap_or(abs);
    if t.starts_with(&v) || v.starts_with(&t) {
        return Err(Error::InvalidInput(format!(
            "{}: a replica must be a directory outside the vault {} (and not around it)",
            to.display(),
            vault.display()
        )));
    }
    Ok(())
}

/// Makes `to` an empty replica of `vault` when it is missing or an empty
/// directory; leaves an existing vault to [`check_replica`]. Returns
/// whether it made one.
fn make_replica(vault: &Vault, to: &Path) -> Result<bool> {
    if to.join(HEADER_FILE).exists() {
        return Ok(false);
    }
    // The header's temporary file is all an earlier run killed before the
    // header can have left.
    let header_tmp = format!("{HEADER_FILE}.tmp");
    if to.exists() && fs::read_dir(to).ctx(|| format!("list {}", to.display()))?.flatten().any(|e| e.file_name() != header_tmp.as_str()) {
        return Err(Error::InvalidInput(format!(
            "{} exists, is not empty and is not a kluis vault; replicate to a new or empty directory, or to a replica of this vault",
            to.display()
        )));
    }
    // Owner-only, like a vault made by `kluis init` (crate::newfile).
    if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).ctx(|| format!("create {}", parent.display()))?;
    }
    crate::newfile::create_dir_all(to, crate::newfile::PRIVATE_DIR).ctx(|| format!("create {}", to.display()))?;
    fs::set_permissions(to, <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(crate::newfile::PRIVATE_DIR)).ctx(|| format!("chmod {}", to.display()))?;
    let header = VaultHeader {
        format: FORMAT_VERSION,
        id: new_vault_id(),
        block_size: vault.header.block_size,
        zstd_level: vault.header.zstd_level,
        replica_of: Some(vault.header.id.clone()),
    };
    // Header first: from here on the directory is a (still empty) replica
    // that the next run continues, whatever happens to this one.
    write_header(to, &header)?;
    crate::newfile::create_dir_all(&to.join("packs").join("tmp"), crate::newfile::PRIVATE_DIR).ctx(|| format!("create {}", to.display()))?;
    Ok(true)
}

/// Checks, under the replica's lock, that `to` is a replica of `vault`; a
/// promoted replica is refused. Follows the primary's zstd level.
fn check_replica(vault: &Vault, to: &Path) -> Result<()> {
    let hp = to.join(HEADER_FILE);
    let h = VaultHeader::parse(&crate::vault::read_header_text(&hp).ctx(|| format!("read {}", hp.display()))?, to)?;
    match &h.replica_of {
        Some(of) if *of == vault.header.id => {}
        Some(of) => {
            return Err(Error::InvalidInput(format!(
                "{} is a replica of another vault ({of}), not of {} ({})",
                to.display(),
                vault.root().display(),
                vault.header.id
            )));
        }
        None => {
            return Err(Error::InvalidInput(format!(
                "{} is a vault of its own (id {}), not a replica of {}: it was promoted, or made by `kluis init`; \
                 replicate to a new or empty directory instead",
                to.display(),
                h.id,
                vault.root().display()
            )));
        }
    }
    if h.block_size != vault.header.block_size {
        return Err(Error::Corrupt(format!(
            "{}: block size {} differs from its primary's ({}); its header was changed by hand",
            to.display(),
            h.block_size,
            vault.header.block_size
        )));
    }
    if h.zstd_level != vault.header.zstd_level {
        write_header(to, &VaultHeader { zstd_level: vault.header.zstd_level, ..h })?;
    }
    Ok(())
}

struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
}
