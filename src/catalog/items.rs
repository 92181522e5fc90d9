//! Protected items, policies, vault settings and job bookkeeping (schema 2).
//! Rows only: what they mean lives in crate::protect, crate::policy and
//! crate::jobs.

use rusqlite::{params, OptionalExtension};

use super::{job_row, now_ms, Catalog, JobRow, JOB_COLUMNS};
use crate::error::Result;
use crate::id::RecoveryPointId;
use crate::records::{self, Kind};

/// A protected item: its name, policy and definition (JSON, see
/// crate::protect::ItemDef).
#[derive(Clone, Debug)]
pub struct ItemRow {
    pub name: String,
    pub policy: Option<String>,
    pub definition: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyRow {
    pub name: String,
    /// As the user wrote it (`daily 02:00`), parsed by crate::policy::Schedule.
    pub schedule: String,
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl Catalog {
    // ---- items ----

    /// Inserts or replaces an item; a replaced item keeps its creation time.
    pub fn put_item(&mut self, name: &str, policy: Option<&str>, definition: &str) -> Result<()> {
        let now = now_ms();
        self.conn.execute(
            "INSERT INTO items(name, policy, definition, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT(name) DO UPDATE SET policy = ?2, definition = ?3, updated_ms = ?4",
            params![name, policy, definition, now],
        )?;
        self.record(Kind::Item, name, Some(&serde_json::json!({"policy": policy, "definition": definition})))
    }

    pub fn item(&self, name: &str) -> Result<Option<ItemRow>> {
        Ok(self
            .conn
            .query_row("SELECT name, policy, definition, created_ms, updated_ms FROM items WHERE name = ?1", [name], item_row)
            .optional()?)
    }

    pub fn protected_items(&self) -> Result<Vec<ItemRow>> {
        let mut st = self.conn.prepare("SELECT name, policy, definition, created_ms, updated_ms FROM items ORDER BY name")?;
        let rows = st.query_map([], item_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn remove_item(&mut self, name: &str) -> Result<bool> {
        let removed = self.conn.execute("DELETE FROM items WHERE name = ?1", [name])? > 0;
        self.record(Kind::Item, name, None)?;
        Ok(removed)
    }

    // ---- policies ----

    pub fn put_policy(&mut self, p: &PolicyRow) -> Result<()> {
        self.conn.execute(
            "INSERT INTO policies(name, schedule, keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly, created_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
             ON CONFLICT(name) DO UPDATE SET schedule = ?2, keep_last = ?3, keep_daily = ?4, keep_weekly = ?5,
                 keep_monthly = ?6, keep_yearly = ?7, updated_ms = ?8",
            params![p.name, p.schedule, p.keep_last, p.keep_daily, p.keep_weekly, p.keep_monthly, p.keep_yearly, now_ms()],
        )?;
        self.record(Kind::Policy, &p.name, Some(&serde_json::to_value(p).expect("a policy row is JSON")))
    }

    pub fn policy(&self, name: &str) -> Result<Option<PolicyRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT name, schedule, keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly, created_ms, updated_ms
             FROM policies WHERE name = ?1",
        )?;
        Ok(st.query_row([name], policy_row).optional()?)
    }

    pub fn policies(&self) -> Result<Vec<PolicyRow>> {
        let mut st = self.conn.prepare(
            "SELECT name, schedule, keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly, created_ms, updated_ms
             FROM policies ORDER BY name",
        )?;
        let rows = st.query_map([], policy_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn remove_policy(&mut self, name: &str) -> Result<bool> {
        let removed = self.conn.execute("DELETE FROM policies WHERE name = ?1", [name])? > 0;
        self.record(Kind::Policy, name, None)?;
        Ok(removed)
    }

    // ---- settings (rows of meta) ----

    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)", params![key, value])?;
        self.record(Kind::Setting, key, Some(&serde_json::Value::String(value.to_owned())))
    }

    // ---- records in the vault (crate::records) ----

    /// Mirrors a row into the vault's records (None removes the record);
    /// the row is committed first, so a record never claims what the index
    /// does not hold, and a failure here is reported, not hidden.
    pub(super) fn record(&self, kind: Kind, name: &str, value: Option<&serde_json::Value>) -> Result<()> {
        let Some(root) = &self.records else { return Ok(()) };
        match value {
            Some(serde_json::Value::String(s)) if kind == Kind::Setting => records::put(root, kind, name, s.as_bytes()),
            Some(v) => records::put(root, kind, name, v.to_string().as_bytes()),
            None => records::remove(root, kind, name),
        }
    }

    /// Mirrors a point's deletion (or undeletion, None) into the records.
    pub fn record_deleted(&self, id: &RecoveryPointId, deleted_ms: Option<i64>) -> Result<()> {
        self.record(Kind::Deleted, &id.to_hex(), deleted_ms.map(serde_json::Value::from).as_ref())
    }

    /// Adds the items, policies and settings of the vault's records that
    /// this index lacks (after a rebuild); returns how many of each.
    pub fn add_from_records(&mut self) -> Result<Vec<(&'static str, usize)>> {
        let Some(root) = self.records.clone() else { return Ok(Vec::new()) };
        let now = now_ms();
        let tx = self.conn.transaction()?;
        let mut counts = vec![("item records", 0), ("policy records", 0), ("setting records", 0)];
        for (name, bytes) in records::list(&root, Kind::Item)? {
            let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| crate::error::Error::Corrupt(format!("record items/{name}: {e}")))?;
            counts[0].1 += tx.execute(
                "INSERT OR IGNORE INTO items(name, policy, definition, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?4)",
                params![name, v["policy"].as_str(), v["definition"].as_str().unwrap_or("{}"), now],
            )?;
        }
        for (name, bytes) in records::list(&root, Kind::Policy)? {
            let p: PolicyRow = serde_json::from_slice(&bytes).map_err(|e| crate::error::Error::Corrupt(format!("record policies/{name}: {e}")))?;
            counts[1].1 += tx.execute(
                "INSERT OR IGNORE INTO policies(name, schedule, keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![name, p.schedule, p.keep_last, p.keep_daily, p.keep_weekly, p.keep_monthly, p.keep_yearly, p.created_ms, p.updated_ms],
            )?;
        }
        for (key, bytes) in records::list(&root, Kind::Setting)? {
            counts[2].1 += tx.execute("INSERT OR IGNORE INTO meta(key, value) VALUES (?1, ?2)", params![key, String::from_utf8_lossy(&bytes)])?;
        }
        tx.commit()?;
        Ok(counts)
    }

    /// The deletion records: point id → when it was deleted.
    pub fn deletion_records(&self) -> Result<std::collections::HashMap<RecoveryPointId, i64>> {
        let Some(root) = &self.records else { return Ok(Default::default()) };
        let mut out = std::collections::HashMap::new();
        for (name, bytes) in records::list(root, Kind::Deleted)? {
            let id = crate::id::ChunkId::from_hex(&name);
            let ms = String::from_utf8_lossy(&bytes).trim().parse::<i64>().ok();
            match (id, ms) {
                (Some(id), Some(ms)) => {
                    out.insert(RecoveryPointId(id), ms);
                }
                _ => log::warn!("ignoring the malformed record deleted/{name}"),
            }
        }
        Ok(out)
    }

    // ---- soft delete ----

    /// Removes the rows of points deleted at or before `cutoff_ms`; their
    /// chunks become garbage. Returns how many.
    pub fn purge_deleted_before(&mut self, cutoff_ms: i64) -> Result<usize> {
        Ok(self.conn.execute("DELETE FROM points WHERE deleted_ms IS NOT NULL AND deleted_ms <= ?1", [cutoff_ms])?)
    }

    // ---- jobs ----

    /// The newest job of `kind` (any kind if None) for `item`, any status.
    pub fn last_job(&self, item: &str, kind: Option<&str>) -> Result<Option<JobRow>> {
        let mut st = self.conn.prepare_cached(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE item = ?1 AND (?2 IS NULL OR kind = ?2) ORDER BY id DESC LIMIT 1"),
        )?;
        Ok(st
            .query_row(params![item, kind], job_row)
            .optional()?)
    }

    /// Jobs still marked running, with the process that runs them.
    pub fn running_jobs(&self) -> Result<Vec<(i64, Option<i64>)>> {
        let mut st = self.conn.prepare("SELECT id, pid FROM jobs WHERE status = 'running'")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Marks a running job whose process is gone (killed, power loss).
    pub fn mark_job_died(&mut self, id: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE jobs SET status = 'died', error = 'the process running this job ended without recording an outcome (killed?)'
             WHERE id = ?1 AND status = 'running'",
            [id],
        )?;
        Ok(())
    }
}

fn item_row(r: &rusqlite::Row) -> rusqlite::Result<ItemRow> {
    Ok(ItemRow { name: r.get(0)?, policy: r.get(1)?, definition: r.get(2)?, created_ms: r.get(3)?, updated_ms: r.get(4)? })
}

fn policy_row(r: &rusqlite::Row) -> rusqlite::Result<PolicyRow> {
    Ok(PolicyRow {
        name: r.get(0)?,
        schedule: r.get(1)?,
        keep_last: r.get(2)?,
        keep_daily: r.get(3)?,
        keep_weekly: r.get(4)?,
        keep_monthly: r.get(5)?,
        keep_yearly: r.get(6)?,
        created_ms: r.get(7)?,
        updated_ms: r.get(8)?,
    })
}

impl Catalog {
    /// When the newest job of `kind` (any item) started.
    pub fn last_job_start(&self, kind: &str) -> Result<Option<i64>> {
        Ok(self.conn.query_row("SELECT max(started_ms) FROM jobs WHERE kind = ?1", [kind], |r| r.get(0))?)
    }
}
