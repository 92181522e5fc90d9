//! Backup policies: a schedule plus grandfather-father-son retention, and
//! `prune`, which applies a policy's retention to an item's points.
//!
//! Pruning never removes data: it soft-deletes points (sets their
//! `deleted_ms`), so they stay restorable with `kluis undelete` for the
//! vault's soft-delete window; gc reclaims them after that (crate::gc).

pub mod retention;
pub mod schedule;

use serde::Serialize;

use crate::catalog::{now_ms, PolicyRow};
use crate::error::{Error, Result};
use crate::timefmt::{point_names, rfc3339_s};
use crate::vault::Vault;

pub use retention::{plan, Decision, Keep};
pub use schedule::Schedule;

#[derive(Clone, Debug, Serialize)]
pub struct Policy {
    pub name: String,
    /// Canonical spelling, see schedule::Schedule's Display.
    pub schedule: String,
    pub keep: Keep,
}

impl Policy {
    pub fn schedule(&self) -> Result<Schedule> {
        Schedule::parse(&self.schedule)
    }

    fn from_row(r: PolicyRow) -> Policy {
        Policy {
            name: r.name,
            schedule: r.schedule,
            keep: Keep { last: r.keep_last, daily: r.keep_daily, weekly: r.keep_weekly, monthly: r.keep_monthly, yearly: r.keep_yearly },
        }
    }
}

/// Creates or replaces a policy.
pub fn set(vault: &Vault, name: &str, schedule: &str, keep: Keep) -> Result<Policy> {
    crate::backup::check_name("policy", name)?;
    let schedule = Schedule::parse(schedule)?.to_string();
    vault.catalog().put_policy(&PolicyRow {
        name: name.to_owned(),
        schedule: schedule.clone(),
        keep_last: keep.last,
        keep_daily: keep.daily,
        keep_weekly: keep.weekly,
        keep_monthly: keep.monthly,
        keep_yearly: keep.yearly,
        created_ms: 0,
        updated_ms: 0,
    })?;
    Ok(Policy { name: name.to_owned(), schedule, keep })
}

pub fn get(vault: &Vault, name: &str) -> Result<Policy> {
    vault
        .catalog()
        .policy(name)?
        .map(Policy::from_row)
        .ok_or_else(|| Error::NotFound(format!("no policy named {name:?} (create it with `kluis policy set {name} --schedule ...`)")))
}

/// When the policy last changed (prune is due again after a change).
pub fn updated_ms(vault: &Vault, name: &str) -> Result<Option<i64>> {
    Ok(vault.catalog().policy(name)?.map(|p| p.updated_ms))
}

pub fn list(vault: &Vault) -> Result<Vec<Policy>> {
    Ok(vault.catalog().policies()?.into_iter().map(Policy::from_row).collect())
}

/// Removes a policy no item uses.
pub fn remove(vault: &Vault, name: &str) -> Result<()> {
    let users: Vec<String> =
        vault.catalog().protected_items()?.into_iter().filter(|i| i.policy.as_deref() == Some(name)).map(|i| i.name).collect();
    if !users.is_empty() {
        return Err(Error::InvalidInput(format!("policy {name} is used by {}; protect them with another policy first", users.join(", "))));
    }
    if !vault.catalog().remove_policy(name)? {
        return Err(Error::NotFound(format!("no policy named {name:?}")));
    }
    Ok(())
}

#[derive(Clone, Debug, Serialize)]
pub struct PointDecision {
    pub name: String,
    pub id: String,
    pub reasons: Vec<&'static str>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ItemPrune {
    pub item: String,
    pub policy: String,
    pub dry_run: bool,
    pub kept: Vec<PointDecision>,
    pub pruned: Vec<PointDecision>,
}

/// Applies `keep` to the live points of `item`: the ones it does not keep
/// are soft-deleted (unless `dry_run`), all in one transaction.
pub fn prune_item(vault: &Vault, item: &str, policy: &Policy, dry_run: bool) -> Result<ItemPrune> {
    let points = vault.catalog().points(Some(item), false)?;
    let times: Vec<i64> = points.iter().map(|p| p.time_ms).collect();
    let decisions = plan(&times, &policy.keep);
    let names = point_names(&times);
    let mut rep = ItemPrune { item: item.to_owned(), policy: policy.name.clone(), dry_run, kept: Vec::new(), pruned: Vec::new() };
    for ((p, d), name) in points.iter().zip(decisions).zip(names) {
        let pd = PointDecision { name, id: p.id.to_hex(), reasons: d.reasons.clone() };
        if d.keep() { rep.kept.push(pd) } else { rep.pruned.push(pd) }
    }
    rep.kept.reverse();
    rep.pruned.reverse();
    if !dry_run && !rep.pruned.is_empty() {
        let now = now_ms();
        let mut cat = vault.catalog();
        let tx = cat.conn_mut().transaction()?;
        let mut gone = Vec::new();
        for (p, d) in points.iter().zip(plan(&times, &policy.keep)) {
            if !d.keep() {
                tx.execute("UPDATE points SET deleted_ms = ?2 WHERE id = ?1 AND deleted_ms IS NULL", rusqlite::params![&p.id.0 .0[..], now])?;
                gone.push(p.id);
            }
        }
        tx.commit()?;
        for id in &gone {
            cat.record_deleted(id, Some(now))?;
        }
        log::info!("prune {item}: kept {}, pruned {} (soft-deleted at {})", rep.kept.len(), rep.pruned.len(), rfc3339_s(now));
    }
    Ok(rep)
}
