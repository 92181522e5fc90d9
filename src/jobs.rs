//! Jobs: every backup, restore, verify, prune, gc and replicate run is recorded in the
//! index with its start, end, status, bytes read and stored, error text and
//! a step log (`detail`, JSON).
//!
//! | status        | meaning                                                     |
//! |---------------|-------------------------------------------------------------|
//! | `running`     | started, not ended                                          |
//! | `ok`          | done                                                        |
//! | `warning`     | done, but something is worth a look (a post-script failed, a freeze could not be taken); `error` says what |
//! | `failed`      | ended with an error (`error`), or verify found damage       |
//! | `interrupted` | stopped by SIGINT/SIGTERM; cleanup (thaw, post-script) ran  |
//! | `died`        | its process ended without recording anything (killed -9, power loss); found by the next job |
//!
//! Recording is best-effort: a job whose row cannot be written (a full
//! disk) still runs, and its own error is what the user sees.

use serde::Serialize;
use serde_json::{json, Value};

use crate::catalog::JobRow;
use crate::error::{Error, Result};
use crate::vault::Vault;

/// What a job tells as it goes: steps for the record, warnings that make
/// its status `warning`.
#[derive(Debug, Default)]
pub struct JobLog {
    pub steps: Vec<String>,
    pub warnings: Vec<String>,
}

impl JobLog {
    pub fn step(&mut self, s: impl Into<String>) {
        let s = s.into();
        log::info!("{s}");
        self.steps.push(s);
    }

    pub fn warn(&mut self, s: impl Into<String>) {
        let s = s.into();
        log::warn!("{s}");
        self.steps.push(format!("warning: {s}"));
        self.warnings.push(s);
    }
}

/// A job's result, as the record needs it.
pub trait JobOutcome {
    /// (bytes read, bytes stored)
    fn bytes(&self) -> (u64, u64) {
        (0, 0)
    }
    /// Set when the job ran to the end but failed its purpose (verify found damage).
    fn failure(&self) -> Option<String> {
        None
    }
    fn detail(&self) -> Value {
        Value::Null
    }
}

/// Runs `f` as a job of `kind` for `item`, recording its outcome.
pub fn run<T: JobOutcome>(vault: &Vault, kind: &str, item: Option<&str>, f: impl FnOnce(&mut JobLog) -> Result<T>) -> Result<T> {
    reap_dead(vault);
    let id = match vault.catalog().job_start(kind, item) {
        Ok(id) => Some(id),
        Err(e) => {
            log::info!("could not record the start of the {kind} job: {e}");
            None
        }
    };
    let mut log = JobLog::default();
    let result = f(&mut log);
    if let Some(id) = id {
        let (status, read, stored, error, mut detail) = match &result {
            Ok(t) => {
                let (r, s) = t.bytes();
                match t.failure() {
                    Some(f) => ("failed", r, s, Some(f), t.detail()),
                    None if !log.warnings.is_empty() => ("warning", r, s, Some(log.warnings.join("; ")), t.detail()),
                    None => ("ok", r, s, None, t.detail()),
                }
            }
            Err(Error::Interrupted) => ("interrupted", 0, 0, Some("interrupted by a signal".to_owned()), Value::Null),
            Err(e) => ("failed", 0, 0, Some(e.to_string()), Value::Null),
        };
        if !log.steps.is_empty() {
            if !detail.is_object() {
                detail = json!({});
            }
            detail["steps"] = json!(log.steps);
        }
        let detail = (!detail.is_null()).then(|| detail.to_string());
        if let Err(e) = vault.catalog().job_finish_detail(id, status, read, stored, error.as_deref(), detail.as_deref()) {
            log::info!("could not record the end of the {kind} job: {e}");
        }
    }
    result
}

/// Marks jobs whose process is gone as `died`.
fn reap_dead(vault: &Vault) {
    let Ok(running) = vault.catalog().running_jobs() else { return };
    for (id, pid) in running {
        let alive = pid.is_some_and(|p| p == std::process::id() as i64 || std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = vault.catalog().mark_job_died(id);
        }
    }
}

/// A job as listed by `kluis jobs`.
#[derive(Clone, Debug, Serialize)]
pub struct JobView {
    pub id: i64,
    pub kind: String,
    pub item: Option<String>,
    pub started: String,
    pub ended: Option<String>,
    pub seconds: Option<f64>,
    pub status: String,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    pub error: Option<String>,
    pub detail: Value,
}

impl From<JobRow> for JobView {
    fn from(j: JobRow) -> JobView {
        JobView {
            id: j.id,
            kind: j.kind,
            item: j.item,
            started: crate::timefmt::rfc3339_s(j.started_ms),
            ended: j.ended_ms.map(crate::timefmt::rfc3339_s),
            seconds: j.ended_ms.map(|e| (e - j.started_ms) as f64 / 1000.0),
            status: j.status,
            bytes_read: j.bytes_read,
            bytes_stored: j.bytes_stored,
            error: j.error,
            detail: j.detail.and_then(|d| serde_json::from_str(&d).ok()).unwrap_or(Value::Null),
        }
    }
}

pub fn list(vault: &Vault, item: Option<&str>, failed_only: bool) -> Result<Vec<JobView>> {
    reap_dead(vault);
    Ok(vault.catalog().jobs(item, failed_only)?.into_iter().map(JobView::from).collect())
}

// ---- outcomes of the library's operations ----

impl JobOutcome for crate::restore::RestoreReport {
    fn bytes(&self) -> (u64, u64) {
        (self.bytes_written, 0)
    }
    fn detail(&self) -> Value {
        json!({"point": self.point, "disk": self.disk, "target": self.target, "format": self.format})
    }
}

impl JobOutcome for Vec<crate::restore::RestoreReport> {
    fn bytes(&self) -> (u64, u64) {
        (self.iter().map(|r| r.bytes_written).sum(), 0)
    }
    fn detail(&self) -> Value {
        match self.as_slice() {
            [one] => one.detail(),
            all => json!({
                "point": all.first().map(|r| &r.point),
                "disks": all.iter().map(|r| json!({"disk": r.disk, "target": r.target, "format": r.format})).collect::<Vec<_>>(),
            }),
        }
    }
}

impl JobOutcome for crate::verify::VerifyReport {
    fn bytes(&self) -> (u64, u64) {
        (self.bytes_read, 0)
    }
    fn failure(&self) -> Option<String> {
        (!self.is_clean()).then(|| format!("{} damaged chunk(s)", self.damaged.len()))
    }
    fn detail(&self) -> Value {
        json!({"points": self.points, "chunks_checked": self.chunks_checked, "damaged": self.damaged.len()})
    }
}

impl JobOutcome for crate::gc::GcReport {
    fn detail(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl JobOutcome for crate::policy::ItemPrune {
    fn detail(&self) -> Value {
        json!({
            "policy": self.policy,
            "dry_run": self.dry_run,
            "kept": self.kept.len(),
            "pruned": self.pruned.iter().map(|p| &p.name).collect::<Vec<_>>(),
        })
    }
}

impl JobOutcome for crate::replicate::ReplicateReport {
    fn bytes(&self) -> (u64, u64) {
        (self.bytes_copied, self.bytes_copied)
    }
    fn detail(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl JobOutcome for crate::restore_in_place::InPlaceReport {
    fn bytes(&self) -> (u64, u64) {
        (self.bytes_written, 0)
    }
    fn detail(&self) -> Value {
        json!({"point": self.point, "disk": self.disk, "target": self.target, "in_place": true, "blocks_written": self.blocks_written})
    }
}

impl JobOutcome for crate::libvirt::define::DefineReport {
    fn bytes(&self) -> (u64, u64) {
        (self.disks.iter().map(|r| r.bytes_written).sum(), 0)
    }
    fn detail(&self) -> Value {
        json!({"point": self.point, "libvirt_define": self.domain, "disks": self.disks.iter().map(|r| json!({"disk": r.disk, "target": r.target})).collect::<Vec<_>>()})
    }
}
