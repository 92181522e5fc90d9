//! What the index remembers about damage (schema 4), the allocation of
//! point times, and what a rebuild carries over from an old index. Rows
//! only: crate::verify and crate::rebuild decide what is damaged, crate::gc
//! and crate::restore act on it.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rusqlite::{params, TransactionBehavior};

use super::{blob_id, id_blob, now_ms, Catalog};
use crate::error::{Error, Result};
use crate::id::{ChunkId, RecoveryPointId};

impl Catalog {
    // ---- damaged chunks and points ----

    /// Records chunks as damaged (lost or failing their hash), with why; a
    /// chunk already recorded keeps its first record.
    pub fn mark_chunks_damaged(&mut self, chunks: &[(ChunkId, String)]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached("INSERT OR IGNORE INTO damaged_chunks(id, found_ms, error) VALUES (?1, ?2, ?3)")?;
            let now = now_ms();
            for (id, error) in chunks {
                st.execute(params![id_blob(id), now, error])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every chunk recorded as damaged, with why.
    pub fn damaged_chunks(&self) -> Result<HashMap<ChunkId, String>> {
        let mut st = self.conn.prepare_cached("SELECT id, error FROM damaged_chunks")?;
        let rows = st.query_map([], |r| Ok((blob_id(r.get(0)?)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Drops the damage records of chunks not in `keep` (healed, or needed
    /// by no point any more); returns how many.
    pub fn forget_damaged_except(&mut self, keep: &HashSet<ChunkId>) -> Result<usize> {
        let gone: Vec<ChunkId> = self.damaged_chunks()?.into_keys().filter(|id| !keep.contains(id)).collect();
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached("DELETE FROM damaged_chunks WHERE id = ?1")?;
            for id in &gone {
                st.execute([id_blob(id)])?;
            }
        }
        tx.commit()?;
        Ok(gone.len())
    }

    /// Flags or clears points as damaged, in one transaction.
    pub fn set_points_damaged(&mut self, points: &[(RecoveryPointId, bool)]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached("UPDATE points SET damaged = ?2 WHERE id = ?1")?;
            for (id, damaged) in points {
                st.execute(params![id_blob(&id.0), damaged])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    // ---- point times ----

    /// The time of a new point of `item` taken at `now` (Unix ms, already
    /// cut to the second): `now`, or the second after the newest time this
    /// item's points have or were handed, whichever is later. Decided in
    /// one write transaction, so backups of one item running at once never
    /// get the same time.
    pub fn allocate_point_time(&mut self, item: &str, now: i64) -> Result<i64> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let last: Option<i64> = tx.query_row(
            "SELECT max(t) FROM (SELECT max(time_ms) AS t FROM points WHERE item = ?1
                                 UNION ALL SELECT last_ms FROM point_times WHERE item = ?1)",
            [item],
            |r| r.get(0),
        )?;
        let t = match last {
            Some(l) if l + 1000 > now => l - l.rem_euclid(1000) + 1000,
            _ => now,
        };
        tx.execute(
            "INSERT INTO point_times(item, last_ms) VALUES (?1, ?2) ON CONFLICT(item) DO UPDATE SET last_ms = ?2",
            params![item, t],
        )?;
        tx.commit()?;
        Ok(t)
    }

    // ---- rebuild ----

    /// Copies what only the index knows — items, policies, settings and the
    /// job record — from the old index at `old` (of this schema version:
    /// open it with [`Catalog::open`] first) into this one.
    /// Returns the tables copied, with their row counts.
    pub fn copy_bookkeeping_from(&mut self, old: &Path) -> Result<Vec<(&'static str, usize)>> {
        let old = old.to_str().ok_or_else(|| Error::InvalidInput(format!("{}: not a UTF-8 path", old.display())))?;
        self.conn.execute("ATTACH DATABASE ?1 AS old", [old])?;
        let copied = (|| -> Result<Vec<(&'static str, usize)>> {
            let tx = self.conn.transaction()?;
            let mut out = Vec::new();
            for (table, sql) in [
                ("items", "INSERT OR IGNORE INTO items SELECT name, policy, definition, created_ms, updated_ms FROM old.items"),
                (
                    "policies",
                    "INSERT OR IGNORE INTO policies SELECT name, schedule, keep_last, keep_daily, keep_weekly, keep_monthly,
                     keep_yearly, created_ms, updated_ms FROM old.policies",
                ),
                ("settings", "INSERT OR IGNORE INTO meta SELECT key, value FROM old.meta"),
                (
                    "jobs",
                    "INSERT INTO jobs(kind, item, started_ms, ended_ms, status, bytes_read, bytes_stored, error, detail, pid)
                     SELECT kind, item, started_ms, ended_ms, status, bytes_read, bytes_stored, error, detail, pid FROM old.jobs ORDER BY id",
                ),
            ] {
                out.push((table, tx.execute(sql, [])?));
            }
            tx.commit()?;
            Ok(out)
        })();
        self.conn.execute("DETACH DATABASE old", [])?;
        copied
    }
}
