//! Vault settings, kept as rows of the index's `meta` table.
//!
//! | key                | default   | meaning                                                        |
//! |--------------------|-----------|----------------------------------------------------------------|
//! | `soft-delete-days` | 14        | days a deleted or pruned point stays restorable before gc may reclaim it (0: at the next gc) |
//! | `gc-schedule`      | `weekly sun 04:00` | when `kluis run-due` / `kluis daemon` run gc (a schedule, or `manual`) |

use serde::Serialize;

use crate::error::{Error, Result};
use crate::policy::Schedule;
use crate::vault::Vault;

pub const SOFT_DELETE_DAYS: &str = "soft-delete-days";
pub const GC_SCHEDULE: &str = "gc-schedule";
pub const DEFAULT_SOFT_DELETE_DAYS: u32 = 14;
pub const DEFAULT_GC_SCHEDULE: &str = "weekly sun 04:00";

#[derive(Clone, Debug, Serialize)]
pub struct Setting {
    pub key: &'static str,
    pub value: String,
    pub default: bool,
}

const KEYS: [(&str, &str); 2] = [(SOFT_DELETE_DAYS, "14"), (GC_SCHEDULE, DEFAULT_GC_SCHEDULE)];

pub fn all(vault: &Vault) -> Result<Vec<Setting>> {
    let cat = vault.catalog();
    KEYS.iter()
        .map(|(k, d)| {
            let v = cat.meta(k)?;
            Ok(Setting { key: k, default: v.is_none(), value: v.unwrap_or_else(|| d.to_string()) })
        })
        .collect()
}

/// Checks and stores a setting; returns its canonical value.
pub fn set(vault: &Vault, key: &str, value: &str) -> Result<String> {
    let canon = match key {
        SOFT_DELETE_DAYS => value
            .parse::<u32>()
            .ok()
            .filter(|d| *d <= 36_500)
            .ok_or_else(|| Error::InvalidInput(format!("{key}: expected a number of days (0 to 36500), got {value:?}")))?
            .to_string(),
        GC_SCHEDULE => Schedule::parse(value)?.to_string(),
        _ => {
            let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
            return Err(Error::InvalidInput(format!("unknown vault setting {key:?}; known: {}", known.join(", "))));
        }
    };
    vault.catalog().set_meta(key, &canon)?;
    Ok(canon)
}

pub fn soft_delete_days(vault: &Vault) -> Result<u32> {
    Ok(vault.catalog().meta(SOFT_DELETE_DAYS)?.and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_SOFT_DELETE_DAYS))
}

pub fn soft_delete_ms(vault: &Vault) -> Result<i64> {
    Ok(soft_delete_days(vault)? as i64 * crate::policy::schedule::DAY_MS)
}

pub fn gc_schedule(vault: &Vault) -> Result<Schedule> {
    match vault.catalog().meta(GC_SCHEDULE)? {
        Some(s) => Schedule::parse(&s),
        None => Schedule::parse(DEFAULT_GC_SCHEDULE),
    }
}
