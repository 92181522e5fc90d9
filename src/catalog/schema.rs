//! Schema and migrations of index.sqlite. Keep docs/format.md in step.

use rusqlite::Connection;

use crate::error::{Error, Result};

pub const SCHEMA_VERSION: i64 = 1;

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

pub fn migrate(conn: &mut Connection, create: bool) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version == 0 {
        if !create {
            return Err(Error::Corrupt("index.sqlite has no kluis schema".into()));
        }
        let tx = conn.transaction()?;
        tx.execute_batch(SCHEMA_V1)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        return Ok(());
    }
    if version > SCHEMA_VERSION {
        return Err(Error::InvalidInput(format!(
            "index.sqlite has schema version {version}; this kluis knows up to {SCHEMA_VERSION}: upgrade kluis"
        )));
    }
    Ok(())
}
