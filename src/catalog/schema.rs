//! Schema and migrations of index.sqlite. Keep docs/format.md in step.

use rusqlite::Connection;

use crate::error::{Error, Result};

pub const SCHEMA_VERSION: i64 = 4;

pub const SCHEMA_V1: &str = "
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE packs(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE chunks(
    id BLOB PRIMARY KEY,
    pack INTEGER NOT NULL REFERENCES packs(id),
    offset INTEGER NOT NULL,
    stored_len INTEGER NOT NULL,
    raw_len INTEGER NOT NULL,
    kind INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX chunks_by_pack ON chunks(pack);
CREATE TABLE points(
    id BLOB PRIMARY KEY,
    item TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    consistency TEXT NOT NULL,
    manifest TEXT NOT NULL,
    logical_size INTEGER NOT NULL,
    new_bytes INTEGER NOT NULL,
    stored_bytes INTEGER NOT NULL,
    deleted_ms INTEGER
);
CREATE INDEX points_by_item ON points(item, time_ms);
CREATE TABLE jobs(
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    item TEXT,
    started_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    status TEXT NOT NULL,
    bytes_read INTEGER NOT NULL,
    bytes_stored INTEGER NOT NULL,
    error TEXT
);
";

/// Version 2: protected items, policies, settings, job details, the capture
/// method of a point. Only adds tables and nullable columns, so a version 1
/// index upgrades in place and its rows keep their meaning.
pub const MIGRATE_V2: &str = "
CREATE TABLE items(
    name TEXT PRIMARY KEY,
    policy TEXT,
    definition TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE policies(
    name TEXT PRIMARY KEY,
    schedule TEXT NOT NULL,
    keep_last INTEGER NOT NULL,
    keep_daily INTEGER NOT NULL,
    keep_weekly INTEGER NOT NULL,
    keep_monthly INTEGER NOT NULL,
    keep_yearly INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
ALTER TABLE points ADD COLUMN capture TEXT;
ALTER TABLE jobs ADD COLUMN detail TEXT;
ALTER TABLE jobs ADD COLUMN pid INTEGER;
CREATE INDEX jobs_by_item ON jobs(item, kind, id);
";

/// Version 3 (vault format 2): a frame holds several chunks, so a chunk's
/// location is its frame (`offset`, `frame_len`: header and payload) plus
/// its place in the frame's decoded bytes (`inner`). An index of version 2
/// belongs to a vault of format 1, which this kluis refuses to open before
/// it reaches the index, so no row is ever reinterpreted.
pub const MIGRATE_V3: &str = "
ALTER TABLE chunks RENAME COLUMN stored_len TO frame_len;
ALTER TABLE chunks ADD COLUMN inner INTEGER NOT NULL DEFAULT 0;
";

/// Version 4: damage that verify or rebuild-index found, kept so that it
/// is never forgotten: `damaged_chunks` lists chunks some point needs that
/// are not intact in any pack (no backup deduplicates against them, so the
/// next backup of the same data stores them again and the row goes);
/// `points.damaged` flags the points that need one (set by verify and
/// rebuild-index, cleared by a verify that finds the point whole);
/// `point_times` holds the newest time handed to a backup of each item, so
/// concurrent backups of one item get distinct, increasing times.
pub const MIGRATE_V4: &str = "
CREATE TABLE damaged_chunks(
    id BLOB PRIMARY KEY,
    found_ms INTEGER NOT NULL,
    error TEXT NOT NULL
) WITHOUT ROWID;
ALTER TABLE points ADD COLUMN damaged INTEGER NOT NULL DEFAULT 0;
CREATE TABLE point_times(
    item TEXT PRIMARY KEY,
    last_ms INTEGER NOT NULL
);
";

/// Steps from each version to the next; `MIGRATIONS[i]` goes from i+1 to i+2.
const MIGRATIONS: &[&str] = &[MIGRATE_V2, MIGRATE_V3, MIGRATE_V4];

/// The schema version of the index `conn` (0: none yet).
pub fn version(conn: &Connection) -> Result<i64> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

pub fn migrate(conn: &mut Connection, create: bool) -> Result<()> {
    let mut version = self::version(conn)?;
    if version > SCHEMA_VERSION {
        return Err(Error::InvalidInput(format!(
            "index.sqlite has schema version {version}; this kluis knows up to {SCHEMA_VERSION}: upgrade kluis"
        )));
    }
    if version == 0 {
        if !create {
            return Err(Error::Corrupt("index.sqlite has no kluis schema".into()));
        }
        let tx = conn.transaction()?;
        tx.execute_batch(SCHEMA_V1)?;
        tx.pragma_update(None, "user_version", 1)?;
        tx.commit()?;
        version = 1;
    }
    // A fresh index runs the same steps as an upgraded one, so the two can
    // never differ. Each step commits with its version number, so a crash
    // between steps resumes at the next one.
    while version < SCHEMA_VERSION {
        let tx = conn.transaction()?;
        // Re-read inside the write transaction: another process may have
        // migrated meanwhile.
        let now: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if now == version {
            tx.execute_batch(MIGRATIONS[(version - 1) as usize])?;
            tx.pragma_update(None, "user_version", version + 1)?;
        }
        tx.commit()?;
        version = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_upgrades_to_fresh_schema() {
        let dump = |c: &Connection| -> Vec<String> {
            let mut st = c.prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name").unwrap();
            st.query_map([], |r| r.get::<_, String>(0)).unwrap().map(|r| r.unwrap()).collect()
        };
        let mut fresh = Connection::open_in_memory().unwrap();
        migrate(&mut fresh, true).unwrap();
        let mut old = Connection::open_in_memory().unwrap();
        old.execute_batch(SCHEMA_V1).unwrap();
        old.pragma_update(None, "user_version", 1).unwrap();
        old.execute("INSERT INTO jobs(kind, started_ms, status, bytes_read, bytes_stored) VALUES ('gc', 1, 'ok', 0, 0)", []).unwrap();
        migrate(&mut old, false).unwrap();
        assert_eq!(dump(&fresh), dump(&old));
        let v: i64 = old.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let n: i64 = old.query_row("SELECT count(*) FROM jobs WHERE detail IS NULL", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1);
    }
}
