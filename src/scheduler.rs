//! `kluis run-due` and `kluis daemon`: run every backup, prune, gc and
//! replication that is due now. Times come from crate::catalog::now_ms (so `KLUIS_NOW` moves
//! the clock in tests).
//!
//! - **backup** of a protected item is due when a slot of its policy's
//!   schedule lies after the start of its last backup job (whatever its
//!   outcome, scheduled or manual), or, before its first, after the moment
//!   it was protected. Missed slots are not made up one by one: one backup
//!   covers them all. A failed backup is tried again at the next slot.
//! - **prune** of an item is due when its policy has retention and a point
//!   was added, or the policy or item changed, since its last prune job.
//!   Within one run an item's prune follows its backup.
//! - **gc** is due by the vault's `gc-schedule` setting (crate::settings).
//! - **replicate** is due by `replicate-schedule`, when `replicate-to` names
//!   a secondary vault; it runs last, so the copy has this run's points.
//!
//! Only one scheduler runs per vault at a time (flock on VAULT/scheduler.lock);
//! a second one skips its run.

use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::catalog::now_ms;
use crate::error::{Error, IoContext, Result};
use crate::jobs;
use crate::policy::{self, Policy, Schedule};
use crate::progress::Progress;
use crate::protect::{self, Item};
use crate::vault::Vault;

#[derive(Clone, Debug, Serialize)]
pub struct Ran {
    pub kind: String,
    pub item: Option<String>,
    pub status: String,
    pub error: Option<String>,
    /// The new point of a backup.
    pub point: Option<String>,
    pub consistency: Option<String>,
    pub pruned: Option<usize>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RunDueReport {
    pub time: String,
    pub ran: Vec<Ran>,
    /// Set when another scheduler held the lock and this run did nothing.
    pub skipped: bool,
}

impl RunDueReport {
    pub fn failures(&self) -> usize {
        self.ran.iter().filter(|r| r.status != "ok" && r.status != "warning").count()
    }
}

fn backup_due(vault: &Vault, item: &Item, schedule: &Schedule, now: i64) -> Result<bool> {
    let anchor = match vault.catalog().last_job(&item.name, Some("backup"))? {
        Some(j) => j.started_ms,
        None => item.created_ms,
    };
    Ok(schedule.due(anchor, now))
}

fn prune_due(vault: &Vault, item: &Item, policy: &Policy) -> Result<bool> {
    if policy.keep.is_off() {
        return Ok(false);
    }
    let newest = vault.catalog().points(Some(&item.name), false)?.iter().map(|p| p.time_ms).max();
    let Some(last) = vault.catalog().last_job(&item.name, Some("prune"))? else { return Ok(newest.is_some()) };
    let policy_changed = policy::updated_ms(vault, &policy.name)?.unwrap_or(0);
    Ok(newest.is_some_and(|t| t > last.started_ms) || policy_changed > last.started_ms || item.updated_ms > last.started_ms)
}

/// Holds VAULT/scheduler.lock; None if another scheduler has it.
fn scheduler_lock(vault: &Vault) -> Result<Option<std::fs::File>> {
    let path = vault.root().join("scheduler.lock");
    let f = crate::newfile::open_or_create(&path, crate::newfile::Modes::of_vault(vault.root()).file).ctx(|| format!("open {}", path.display()))?;
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Ok(None);
    }
    Ok(Some(f))
}

/// Runs what is due now; failures of single jobs are reported, not returned.
pub fn run_due(vault: &Vault, progress: &dyn Progress, cancel: &AtomicBool) -> Result<RunDueReport> {
    let now = now_ms();
    let mut rep = RunDueReport { time: crate::timefmt::rfc3339_s(now), ..Default::default() };
    let Some(_lock) = scheduler_lock(vault)? else {
        log::warn!("another kluis run-due or daemon is running on this vault; skipping");
        rep.skipped = true;
        return Ok(rep);
    };
    for item in protect::list(vault)? {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        let Some(pname) = &item.policy else { continue };
        let policy = match policy::get(vault, pname) {
            Ok(p) => p,
            Err(e) => {
                rep.ran.push(Ran { kind: "backup".into(), item: Some(item.name.clone()), status: "failed".into(), error: Some(e.to_string()), point: None, consistency: None, pruned: None });
                continue;
            }
        };
        let schedule = policy.schedule()?;
        if backup_due(vault, &item, &schedule, now)? {
            let r = jobs::run(vault, "backup", Some(&item.name), |log| crate::consistency::backup_item(vault, &item.name, &item.def, progress, cancel, log));
            let (status, error, point, consistency) = match &r {
                Ok(b) if b.warnings.is_empty() => ("ok", None, Some(b.backup.id.clone()), Some(b.consistency.clone())),
                Ok(b) => ("warning", Some(b.warnings.join("; ")), Some(b.backup.id.clone()), Some(b.consistency.clone())),
                Err(Error::Interrupted) => return Err(Error::Interrupted),
                Err(e) => ("failed", Some(e.to_string()), None, None),
            };
            rep.ran.push(Ran { kind: "backup".into(), item: Some(item.name.clone()), status: status.into(), error, point, consistency, pruned: None });
        }
        if prune_due(vault, &item, &policy)? {
            let r = jobs::run(vault, "prune", Some(&item.name), |_| policy::prune_item(vault, &item.name, &policy, false));
            let ran = match r {
                Ok(p) => Ran { kind: "prune".into(), item: Some(item.name.clone()), status: "ok".into(), error: None, point: None, consistency: None, pruned: Some(p.pruned.len()) },
                Err(e) => Ran { kind: "prune".into(), item: Some(item.name.clone()), status: "failed".into(), error: Some(e.to_string()), point: None, consistency: None, pruned: None },
            };
            rep.ran.push(ran);
        }
    }
    if vault_job_due(vault, "gc", &crate::settings::gc_schedule(vault)?, now, cancel)? {
        let r = jobs::run(vault, "gc", None, |_| crate::gc::gc(vault, progress));
        rep.ran.push(vault_job_ran("gc", r)?);
    }
    if let Some(to) = crate::settings::replicate_to(vault)?
        && vault_job_due(vault, "replicate", &crate::settings::replicate_schedule(vault)?, now, cancel)?
    {
        let r = jobs::run(vault, "replicate", None, |_| crate::replicate::replicate(vault, &to, progress, cancel));
        rep.ran.push(vault_job_ran("replicate", r)?);
    }
    Ok(rep)
}

/// A job of the whole vault (gc, replicate) is due when a slot of its
/// schedule lies after the start of its last run.
fn vault_job_due(vault: &Vault, kind: &str, schedule: &Schedule, now: i64, cancel: &AtomicBool) -> Result<bool> {
    let anchor = vault.catalog().last_job_start(kind)?.unwrap_or(i64::MIN);
    Ok(schedule.due(anchor, now) && !cancel.load(Ordering::Relaxed))
}

fn vault_job_ran<T>(kind: &str, r: Result<T>) -> Result<Ran> {
    let (status, error) = match &r {
        Ok(_) => ("ok", None),
        Err(Error::Interrupted) => return Err(Error::Interrupted),
        Err(e) => ("failed", Some(e.to_string())),
    };
    Ok(Ran { kind: kind.into(), item: None, status: status.into(), error, point: None, consistency: None, pruned: None })
}

/// The next moment something may become due (the earliest next slot).
pub fn next_wakeup(vault: &Vault, now: i64) -> Result<Option<i64>> {
    let mut next: Option<i64> = crate::settings::gc_schedule(vault)?.next_slot(now);
    if crate::settings::replicate_to(vault)?.is_some()
        && let Some(t) = crate::settings::replicate_schedule(vault)?.next_slot(now)
    {
        next = Some(next.map_or(t, |n| n.min(t)));
    }
    for item in protect::list(vault)? {
        let Some(p) = &item.policy else { continue };
        let Ok(policy) = policy::get(vault, p) else { continue };
        if let Some(t) = policy.schedule()?.next_slot(now) {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
    }
    Ok(next)
}

/// `run_due` in a loop until `cancel`; `each` sees every run that did something.
pub fn daemon(vault: &Vault, progress: &dyn Progress, cancel: &AtomicBool, max_sleep: Duration, mut each: impl FnMut(&RunDueReport) -> Result<()>) -> Result<()> {
    loop {
        let rep = run_due(vault, progress, cancel)?;
        if !rep.ran.is_empty() {
            each(&rep)?;
        }
        let now = now_ms();
        let wake = next_wakeup(vault, now)?.map(|t| (t - now).max(0) as u64).unwrap_or(u64::MAX);
        let sleep = Duration::from_millis(wake).min(max_sleep).max(Duration::from_millis(200));
        let until = std::time::Instant::now() + sleep;
        while std::time::Instant::now() < until {
            if cancel.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
