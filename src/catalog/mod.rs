//! The SQLite index: a cache of what the packs say (chunk locations) plus the
//! vault's bookkeeping (recovery points, items, jobs). Knows nothing of pack
//! bytes. Opened in WAL mode so readers (mounts, verify) never block a backup.
//! A vault this process may not write (or whose filesystem is too full to
//! open the index for writing) is read without writing anything: see
//! [`IndexAccess`].
//!
//! The schema is documented in docs/format.md; `SCHEMA_VERSION` is bumped with
//! a migration whenever it changes.

mod damage;
mod items;
mod schema;

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::error::{Error, Result};
use crate::id::{ChunkId, RecoveryPointId};
pub use crate::store::ChunkLocation;
use crate::store::FinishedPack;

pub use items::{ItemRow, PolicyRow};
pub use schema::SCHEMA_VERSION;

/// One recovery point as the index keeps it.
#[derive(Clone, Debug)]
pub struct PointRow {
    pub id: RecoveryPointId,
    pub item: String,
    /// Unix time in milliseconds, UTC.
    pub time_ms: i64,
    pub consistency: String,
    pub manifest: String,
    pub logical_size: u64,
    pub new_bytes: u64,
    pub stored_bytes: u64,
    pub deleted_ms: Option<i64>,
    /// How the disks were captured (`reflink`, `snapshot`, `held-freeze`,
    /// `live`, ...; see crate::consistency); None for points of schema 1.
    pub capture: Option<String>,
    /// The point needs chunks that are not intact in any pack (see
    /// [`Catalog::damaged_chunks`]): restoring it fails unless partial.
    pub damaged: bool,
}

/// One chunk row of a pack (see [`Catalog::chunks_in_pack`]).
#[derive(Clone, Debug)]
pub struct PackChunk {
    pub id: ChunkId,
    pub offset: u64,
    pub frame_len: u32,
    pub inner: u32,
    pub raw_len: u32,
}

pub struct PackRow {
    pub id: i64,
    pub name: String,
    pub size: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub item: Option<String>,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub status: String,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    pub error: Option<String>,
    /// JSON: what the job did step by step (scripts, freeze, copies), its point.
    pub detail: Option<String>,
    pub pid: Option<i64>,
}

/// The columns [`job_row`] reads, in its order.
pub(crate) const JOB_COLUMNS: &str = "id, kind, item, started_ms, ended_ms, status, bytes_read, bytes_stored, error, detail, pid";

pub(crate) fn job_row(r: &rusqlite::Row) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        item: r.get(2)?,
        started_ms: r.get(3)?,
        ended_ms: r.get(4)?,
        status: r.get(5)?,
        bytes_read: r.get(6)?,
        bytes_stored: r.get(7)?,
        error: r.get(8)?,
        detail: r.get(9)?,
        pid: r.get(10)?,
    })
}

pub struct Catalog {
    conn: Connection,
    /// The vault whose records (crate::records) mirror items, policies,
    /// settings and deletions; None for a read-only connection.
    records: Option<std::path::PathBuf>,
}

const LOCATION_QUERY: &str =
    "SELECT (SELECT name FROM packs WHERE id = c.pack), c.offset, c.frame_len, c.inner, c.raw_len FROM chunks c WHERE c.id = ?1";

fn id_blob(id: &ChunkId) -> &[u8] {
    &id.0[..]
}

fn blob_id(b: Vec<u8>) -> rusqlite::Result<ChunkId> {
    ChunkId::from_slice(&b).ok_or_else(|| rusqlite::Error::InvalidColumnType(0, "id".into(), rusqlite::types::Type::Blob))
}

/// How a vault's index is opened (see [`Catalog::open_index`]); its other
/// connections ([`Catalog::open_reader_as`]) are opened the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexAccess {
    /// Read and write, in WAL mode: the usual case.
    Write,
    /// No write access (a read-only mount, a snapshot, another user's
    /// vault) but a writer's `-wal` and `-shm` are there: read through
    /// them, under SQLite's locks, so what the log holds is seen.
    ReadOnly,
    /// No write access and no `-shm` to be had: opened `immutable=1`, which
    /// needs neither. Only taken when the log is absent or empty, since an
    /// immutable reader ignores it (and a partly checkpointed database is
    /// only consistent together with its log).
    Immutable,
    /// No index at all: a replica whose first `kluis replicate` did not get
    /// as far as installing one. Reads as an index without rows.
    Empty,
}

/// What [`Catalog::open_index`] opened.
pub struct OpenedIndex {
    pub catalog: Catalog,
    pub access: IndexAccess,
    /// Set when the index could be written but opening it for writing
    /// failed, so it was opened read-only: the error.
    pub write_error: Option<String>,
}

/// Makes a missing database file empty, with the vault's mode for new
/// files (0600 unless a group was given the vault), before SQLite opens
/// it: SQLite would create it 0644 (less the umask), and gives the `-wal`
/// and `-shm` files the mode of the database file, so all three follow.
/// An empty file is an empty database to SQLite.
fn owner_only(path: &Path) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match crate::newfile::create_new(path, crate::newfile::Modes::of_vault(dir).file) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io_path("create", path, e)),
    }
}

impl Catalog {
    /// Opens (and with `create`, creates) the index at `path`.
    pub fn open(path: &Path, create: bool) -> Result<Catalog> {
        let mut c = Catalog { conn: Self::connect(path, create)?, records: path.parent().map(Path::to_owned) };
        schema::migrate(&mut c.conn, create)?;
        Ok(c)
    }

    fn connect(path: &Path, create: bool) -> Result<Connection> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
            owner_only(path)?;
        }
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(Duration::from_secs(60))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(conn)
    }

    /// Opens a vault's existing index for what this process may do with
    /// it: read and write when it can write both the index and its
    /// directory (where SQLite makes `-wal` and `-shm`), else read-only
    /// ([`IndexAccess`]). Also read-only when opening it for writing fails
    /// (a filesystem full to the last byte has no room for the `-shm`):
    /// [`OpenedIndex::write_error`] says why. With `may_be_absent` (a
    /// replica), a missing index, or one that never got its schema, reads
    /// as empty.
    pub fn open_index(path: &Path, may_be_absent: bool) -> Result<OpenedIndex> {
        let empty = || Ok(OpenedIndex { catalog: Catalog::empty()?, access: IndexAccess::Empty, write_error: None });
        if may_be_absent && !path.exists() {
            return empty();
        }
        let mut write_error = None;
        let (mut c, access) = match writable(path).then(|| Self::connect(path, false)) {
            Some(Ok(conn)) => (Catalog { conn, records: path.parent().map(Path::to_owned) }, IndexAccess::Write),
            Some(Err(e)) => match Self::open_read_only(path) {
                Ok(ro) => {
                    write_error = Some(e.to_string());
                    ro
                }
                Err(_) => return Err(e),
            },
            None => Self::open_read_only(path)?,
        };
        let version = schema::version(&c.conn)?;
        if version == 0 && may_be_absent {
            return empty();
        }
        if access == IndexAccess::Write {
            schema::migrate(&mut c.conn, false)?;
        } else if version > SCHEMA_VERSION {
            schema::migrate(&mut c.conn, false)?; // refuses, saying why
        } else if version != SCHEMA_VERSION {
            return Err(Error::InvalidInput(format!(
                "{}: the index has schema version {version}; upgrading it to {SCHEMA_VERSION} needs write access to the vault",
                path.display()
            )));
        }
        Ok(OpenedIndex { catalog: c, access, write_error })
    }

    /// [`Catalog::open_index`] without write access.
    fn open_read_only(path: &Path) -> Result<(Catalog, IndexAccess)> {
        let ro = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        // The first read is what opens the -wal and -shm.
        let through_log = Connection::open_with_flags(path, ro).and_then(|c| {
            c.busy_timeout(Duration::from_secs(60))?;
            c.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0))?;
            Ok(c)
        });
        match through_log {
            Ok(conn) => Ok((Catalog { conn, records: None }, IndexAccess::ReadOnly)),
            Err(e) => {
                let wal = path.with_file_name(format!("{}-wal", path.file_name().unwrap_or_default().to_string_lossy()));
                if std::fs::metadata(&wal).map(|m| m.len() > 0).unwrap_or(false) {
                    return Err(Error::InvalidInput(format!(
                        "{}: cannot read the index without write access: its log {} holds changes that only a \
                         writer can fold in ({e}); open the vault once with write access, or copy it somewhere writable",
                        path.display(),
                        wal.display()
                    )));
                }
                Ok((Self::open_immutable(path)?, IndexAccess::Immutable))
            }
        }
    }

    fn open_immutable(path: &Path) -> Result<Catalog> {
        use std::os::unix::ffi::OsStrExt;
        let abs = std::path::absolute(path).map_err(|e| Error::io_path("resolve", path, e))?;
        // A URI: every byte but the unreserved ones and '/' percent-encoded.
        let mut uri = b"file:".to_vec();
        for &b in abs.as_os_str().as_bytes() {
            if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
                uri.push(b);
            } else {
                uri.extend_from_slice(format!("%{b:02X}").as_bytes());
            }
        }
        uri.extend_from_slice(b"?immutable=1");
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(Path::new(std::ffi::OsStr::from_bytes(&uri)), flags)?;
        Ok(Catalog { conn, records: None })
    }

    /// An index without rows, in memory (see [`IndexAccess::Empty`]).
    pub fn empty() -> Result<Catalog> {
        let mut c = Catalog { conn: Connection::open_in_memory()?, records: None };
        schema::migrate(&mut c.conn, true)?;
        Ok(c)
    }

    /// A second connection for reading only (worker threads, mounts).
    pub fn open_reader(path: &Path) -> Result<Catalog> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        conn.busy_timeout(Duration::from_secs(60))?;
        Ok(Catalog { conn, records: None })
    }

    /// [`Catalog::open_reader`] for an index opened with `access`.
    pub fn open_reader_as(path: &Path, access: IndexAccess) -> Result<Catalog> {
        match access {
            IndexAccess::Write | IndexAccess::ReadOnly => Self::open_reader(path),
            IndexAccess::Immutable => Self::open_immutable(path),
            IndexAccess::Empty => Self::empty(),
        }
    }

    /// A read-only connection that sees the index as it is now for as long
    /// as it lives (one read transaction, held): what a disk opened for
    /// reading looks its chunks up in, so that every lookup agrees with the
    /// map it walks even while gc or a replication changes the index. It
    /// holds the WAL back from being checkpointed past this instant until
    /// dropped. Its page cache is SQLite's default (2 MB at most): with 1 MB,
    /// a mount's `dd` of a 2 GiB disk (a 3.6 MB index) made five times the
    /// index reads, 0.17 s more system time than with 2 MB.
    pub fn open_snapshot(path: &Path, access: IndexAccess) -> Result<Catalog> {
        let c = Catalog::open_reader_as(path, access)?;
        c.conn.execute_batch("BEGIN DEFERRED")?;
        // A deferred transaction takes its snapshot at its first read.
        c.conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
        Ok(c)
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    // ---- chunks and packs ----

    /// Whether an intact copy of the chunk is indexed: a chunk recorded as
    /// damaged is not, so that backups store it again instead of
    /// deduplicating against the broken copy.
    pub fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        let mut st = self
            .conn
            .prepare_cached("SELECT 1 FROM chunks WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM damaged_chunks WHERE id = ?1)")?;
        Ok(st.exists([id_blob(id)])?)
    }

    pub fn chunk_location(&self, id: &ChunkId) -> Result<Option<ChunkLocation>> {
        // The pack's name by a subquery, not a join: with the join, SQLite
        // ties the plan to the bound id, and the statement cache's reset
        // makes it re-prepare the statement on every call (4x the time of
        // a lookup; restore and mounts make one per block).
        let mut st = self.conn.prepare_cached(LOCATION_QUERY)?;
        let r = st
            .query_row([id_blob(id)], |r| {
                Ok(ChunkLocation { pack: r.get(0)?, offset: r.get(1)?, frame_len: r.get(2)?, inner: r.get(3)?, raw_len: r.get(4)? })
            })
            .optional()?;
        Ok(r)
    }

    /// The locations of `ids`, in order (None for an id not indexed, and
    /// for ZERO): a map page's worth of lookups, for the mount.
    pub fn chunk_locations(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkLocation>>> {
        // In id order, so that lookups that share index pages come together.
        let mut order: Vec<usize> = (0..ids.len()).filter(|&i| !ids[i].is_zero()).collect();
        order.sort_unstable_by_key(|&i| ids[i]);
        let mut out = vec![None; ids.len()];
        for i in order {
            out[i] = self.chunk_location(&ids[i])?;
        }
        Ok(out)
    }

    /// Records a durable pack and the chunks of its frames in one
    /// transaction. A chunk that is already indexed elsewhere keeps its old
    /// location (the duplicate copy is garbage for gc), unless the old copy
    /// is recorded as damaged: then the new copy replaces it and the chunk
    /// is whole again.
    pub fn commit_pack(&mut self, pack: &FinishedPack) -> Result<()> {
        self.commit_pack_except(pack, &std::collections::HashSet::new())
    }

    /// [`Catalog::commit_pack`] leaving out the chunks in `skip` (damaged
    /// ones found while re-indexing).
    pub fn commit_pack_except(&mut self, pack: &FinishedPack, skip: &std::collections::HashSet<ChunkId>) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("INSERT INTO packs(name, size, created_ms) VALUES (?1, ?2, ?3)", params![pack.name, pack.size, now_ms()])?;
        let pack_id = tx.last_insert_rowid();
        let any_damaged: bool = tx.query_row("SELECT EXISTS (SELECT 1 FROM damaged_chunks)", [], |r| r.get(0))?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR IGNORE INTO chunks(id, pack, offset, frame_len, inner, raw_len, kind) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut heal = tx.prepare_cached("DELETE FROM damaged_chunks WHERE id = ?1")?;
            let mut replace = tx.prepare_cached(
                "INSERT OR REPLACE INTO chunks(id, pack, offset, frame_len, inner, raw_len, kind) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for f in &pack.frames {
                for (e, r) in f.header.ranges().filter(|(e, _)| !skip.contains(&e.id)) {
                    let row = params![id_blob(&e.id), pack_id, f.offset, f.header.frame_len(), r.start, e.raw_len, f.header.kind as u8];
                    if any_damaged && heal.execute([id_blob(&e.id)])? > 0 {
                        replace.execute(row)?;
                    } else {
                        st.execute(row)?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn packs(&self) -> Result<Vec<PackRow>> {
        let mut st = self.conn.prepare("SELECT id, name, size FROM packs ORDER BY id")?;
        let rows = st.query_map([], |r| Ok(PackRow { id: r.get(0)?, name: r.get(1)?, size: r.get(2)? }))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Chunks of one pack in frame order.
    pub fn chunks_in_pack(&self, pack_id: i64) -> Result<Vec<PackChunk>> {
        Self::chunks_in_pack_tx(&self.conn, pack_id)
    }

    /// [`Catalog::chunks_in_pack`] inside a transaction of the caller's.
    pub fn chunks_in_pack_tx(conn: &Connection, pack_id: i64) -> Result<Vec<PackChunk>> {
        let mut st = conn.prepare_cached(
            "SELECT id, offset, frame_len, inner, raw_len FROM chunks WHERE pack = ?1 ORDER BY offset, inner",
        )?;
        let rows = st.query_map([pack_id], |r| {
            Ok(PackChunk { id: blob_id(r.get(0)?)?, offset: r.get(1)?, frame_len: r.get(2)?, inner: r.get(3)?, raw_len: r.get(4)? })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn chunk_count(&self) -> Result<u64> {
        Ok(self.conn.query_row("SELECT count(*) FROM chunks", [], |r| r.get(0))?)
    }

    // ---- recovery points ----

    pub fn insert_point(&mut self, p: &PointRow) -> Result<()> {
        self.conn.execute(
            "INSERT INTO points(id, item, time_ms, consistency, manifest, logical_size, new_bytes, stored_bytes, deleted_ms, capture, damaged)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![id_blob(&p.id.0), p.item, p.time_ms, p.consistency, p.manifest, p.logical_size, p.new_bytes, p.stored_bytes, p.deleted_ms, p.capture, p.damaged],
        )?;
        Ok(())
    }

    /// Points, oldest first; `item` filters; deleted ones only with `deleted`.
    pub fn points(&self, item: Option<&str>, deleted: bool) -> Result<Vec<PointRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, item, time_ms, consistency, manifest, logical_size, new_bytes, stored_bytes, deleted_ms, capture, damaged FROM points
             WHERE (?1 IS NULL OR item = ?1) AND ((deleted_ms IS NULL) OR ?2) ORDER BY item, time_ms, id",
        )?;
        let rows = st.query_map(params![item, deleted], |r| {
            Ok(PointRow {
                id: RecoveryPointId(blob_id(r.get(0)?)?),
                item: r.get(1)?,
                time_ms: r.get(2)?,
                consistency: r.get(3)?,
                manifest: r.get(4)?,
                logical_size: r.get(5)?,
                new_bytes: r.get(6)?,
                stored_bytes: r.get(7)?,
                deleted_ms: r.get(8)?,
                capture: r.get(9)?,
                damaged: r.get(10)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn set_point_deleted(&mut self, id: &RecoveryPointId, deleted_ms: Option<i64>) -> Result<bool> {
        let changed = self.conn.execute("UPDATE points SET deleted_ms = ?2 WHERE id = ?1", params![id_blob(&id.0), deleted_ms])? > 0;
        if changed {
            self.record_deleted(id, deleted_ms)?;
        }
        Ok(changed)
    }

    pub fn items(&self) -> Result<Vec<String>> {
        let mut st = self.conn.prepare("SELECT DISTINCT item FROM points ORDER BY item")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // ---- jobs ----

    pub fn job_start(&mut self, kind: &str, item: Option<&str>) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO jobs(kind, item, started_ms, status, bytes_read, bytes_stored, pid) VALUES (?1, ?2, ?3, 'running', 0, 0, ?4)",
            params![kind, item, now_ms(), std::process::id()],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn job_finish(&mut self, id: i64, status: &str, bytes_read: u64, bytes_stored: u64, error: Option<&str>) -> Result<()> {
        self.job_finish_detail(id, status, bytes_read, bytes_stored, error, None)
    }

    pub fn job_finish_detail(
        &mut self,
        id: i64,
        status: &str,
        bytes_read: u64,
        bytes_stored: u64,
        error: Option<&str>,
        detail: Option<&str>,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE jobs SET ended_ms = ?2, status = ?3, bytes_read = ?4, bytes_stored = ?5, error = ?6, detail = ?7 WHERE id = ?1",
            params![id, now_ms(), status, bytes_read, bytes_stored, error, detail],
        )?;
        Ok(())
    }

    /// Jobs, oldest first; `failed_only` keeps those that did not end `ok`
    /// (failed, interrupted, died, warning) and are not running.
    pub fn jobs(&self, item: Option<&str>, failed_only: bool) -> Result<Vec<JobRow>> {
        let mut st = self.conn.prepare(
            &format!("SELECT {JOB_COLUMNS} FROM jobs
             WHERE (?1 IS NULL OR item = ?1) AND (NOT ?2 OR status NOT IN ('ok', 'running')) ORDER BY id"),
        )?;
        let rows = st.query_map(params![item, failed_only], |r| {
            job_row(r)
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    // ---- replication (crate::replicate) ----

    /// Writes a consistent copy of the whole index, as of one instant, to
    /// the new file `to` (`VACUUM INTO`: one read transaction, compacted).
    pub fn snapshot_into(&self, to: &Path) -> Result<()> {
        owner_only(to)?;
        let to = to.to_str().ok_or_else(|| Error::InvalidInput(format!("{}: not a UTF-8 path", to.display())))?;
        self.conn.execute("VACUUM INTO ?1", [to])?;
        Ok(())
    }

    /// Replaces this index's whole content with that of the database `from`,
    /// in one write transaction (SQLite's backup API): readers of this index
    /// see the old content or the new, and a crash leaves the old.
    pub fn replace_with(&mut self, from: &Connection) -> Result<()> {
        use rusqlite::backup::{Backup, StepResult};
        let backup = Backup::new(from, &mut self.conn)?;
        let started = std::time::Instant::now();
        loop {
            match backup.step(-1)? {
                StepResult::Done => return Ok(()),
                // Another connection writes this index (a job record);
                // wait for it, as the busy timeout would.
                StepResult::Busy | StepResult::Locked if started.elapsed() < Duration::from_secs(60) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => return Err(Error::Corrupt(format!("copying the index did not complete ({other:?})"))),
            }
        }
    }

    /// Ends the `running` job rows of `kind` started by this process: in a
    /// replica, the row of the replicate job that made the copy (it was
    /// running when the index was copied).
    pub fn end_copied_jobs(&mut self, kind: &str, status: &str, bytes: u64) -> Result<()> {
        self.conn.execute(
            "UPDATE jobs SET ended_ms = ?3, status = ?2, bytes_read = ?5, bytes_stored = ?5
             WHERE kind = ?1 AND status = 'running' AND pid = ?4",
            params![kind, status, now_ms(), std::process::id(), bytes],
        )?;
        Ok(())
    }

    pub fn delete_meta(&mut self, key: &str) -> Result<()> {
        self.conn.execute("DELETE FROM meta WHERE key = ?1", [key])?;
        self.record(crate::records::Kind::Setting, key, None)
    }
}

/// Whether this process may write the index at `path` and make files beside
/// it (SQLite's `-wal` and `-shm`): false on a read-only mount and without
/// permission. Asked of the kernel (access(2) with the effective ids), not
/// found out by failing, so that a real error (a full disk) is not taken
/// for a read-only vault.
fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let may_write = |p: &Path| {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else { return false };
        unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::W_OK, libc::AT_EACCESS) == 0 }
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    may_write(path) && may_write(dir)
}

/// Wall-clock now in Unix milliseconds; `KLUIS_NOW` (RFC 3339) overrides it
/// so that schedules and retention can be tested without waiting.
pub fn now_ms() -> i64 {
    if let Ok(s) = std::env::var("KLUIS_NOW")
        && let Ok(ts) = s.parse::<jiff::Timestamp>()
    {
        return ts.as_millisecond();
    }
    jiff::Timestamp::now().as_millisecond()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The immutable opening of a read-only vault's index works whatever
    /// the vault's path holds (it goes through a URI), sees the rows, and
    /// leaves no -wal or -shm behind.
    #[test]
    fn immutable_index_at_an_awkward_path() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("a b%20c?d#e&f=g");
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("index.sqlite");
        let c = Catalog::open(&path, true).unwrap();
        c.conn.execute("INSERT INTO meta(key, value) VALUES ('k', 'v')", []).unwrap();
        drop(c);
        let r = Catalog::open_reader_as(&path, IndexAccess::Immutable).unwrap();
        assert_eq!(r.meta("k").unwrap().as_deref(), Some("v"));
        drop(r);
        let mut left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        left.sort();
        assert_eq!(left, vec![std::ffi::OsString::from("index.sqlite")]);
        assert_eq!(Catalog::open_reader_as(&path, IndexAccess::Empty).unwrap().points(None, true).unwrap().len(), 0);
    }

    /// A lookup per block (restore, mounts) reuses its prepared statement:
    /// SQLite never has to re-prepare it (see `chunk_location`).
    #[test]
    fn chunk_lookups_are_not_re_prepared() {
        let t = tempfile::tempdir().unwrap();
        let c = Catalog::open(&t.path().join("index.sqlite"), true).unwrap();
        c.conn.execute("INSERT INTO packs(id, name, size, created_ms) VALUES (7, 'pack-7', 4096, 0)", []).unwrap();
        for i in 0..50u8 {
            c.conn
                .execute(
                    "INSERT INTO chunks(id, pack, offset, frame_len, inner, raw_len, kind) VALUES (?1, 7, ?2, 100, ?3, 65536, 0)",
                    params![&[i; 32][..], 24 + i as u64 * 100, i as u32],
                )
                .unwrap();
        }
        for i in 0..50u8 {
            let loc = c.chunk_location(&ChunkId([i; 32])).unwrap().unwrap();
            assert_eq!((loc.pack.as_str(), loc.offset, loc.inner, loc.raw_len), ("pack-7", 24 + i as u64 * 100, i as u32, 65536));
        }
        assert!(c.chunk_location(&ChunkId([99; 32])).unwrap().is_none());
        let st = c.conn.prepare_cached(LOCATION_QUERY).unwrap();
        assert_eq!(st.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }
}
