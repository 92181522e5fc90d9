//! Vault settings, kept as rows of the index's `meta` table.
//!
//! | key                | default   | meaning                                                        |
//! |--------------------|-----------|----------------------------------------------------------------|
//! | `soft-delete-days` | 14        | days a deleted or pruned point stays restorable before gc may reclaim it (0: at the next gc) |
//! | `gc-schedule`      | `weekly sun 04:00` | when `kluis run-due` / `kluis daemon` run gc (a schedule, or `manual`) |
//! | `replicate-to`     | `none`    | the secondary vault (a directory) that `kluis replicate` and the scheduler keep up to date |
//! | `replicate-schedule` | `daily 05:00` | when `kluis run-due` / `kluis daemon` replicate (with `replicate-to` set) |

use serde::Serialize;

use crate::error::{Error, Result};
use crate::policy::Schedule;
use crate::vault::Vault;

pub const SOFT_DELETE_DAYS: &str = "soft-delete-days";
pub const GC_SCHEDULE: &str = "gc-schedule";
pub const DEFAULT_SOFT_DELETE_DAYS: u32 = 14;
pub const DEFAULT_GC_SCHEDULE: &str = "weekly sun 04:00";
pub const REPLICATE_TO: &str = "replicate-to";
pub const REPLICATE_SCHEDULE: &str = "replicate-schedule";
/// After the default gc slot, so a Sunday's copy has the space gc freed.
pub const DEFAULT_REPLICATE_SCHEDULE: &str = "daily 05:00";
const NO_TARGET: &str = "none";

#[derive(Clone, Debug, Serialize)]
pub struct Setting {
    pub key: &'static str,
    pub value: String,
    pub default: bool,
}

const KEYS: [(&str, &str); 4] = [
    (SOFT_DELETE_DAYS, "14"),
    (GC_SCHEDULE, DEFAULT_GC_SCHEDULE),
    (REPLICATE_TO, NO_TARGET),
    (REPLICATE_SCHEDULE, DEFAULT_REPLICATE_SCHEDULE),
];

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
        GC_SCHEDULE | REPLICATE_SCHEDULE => Schedule::parse(value)?.to_string(),
        REPLICATE_TO if value == NO_TARGET || value.is_empty() => NO_TARGET.to_owned(),
        REPLICATE_TO => {
            let abs = std::path::absolute(value).map_err(|e| Error::InvalidInput(format!("{key}: {value:?}: {e}")))?;
            abs.to_str().ok_or_else(|| Error::InvalidInput(format!("{key}: {value:?} is not a UTF-8 path")))?.to_owned()
        }
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

fn schedule_setting(vault: &Vault, key: &str, default: &str) -> Result<Schedule> {
    Schedule::parse(&vault.catalog().meta(key)?.unwrap_or_else(|| default.to_owned()))
}

pub fn gc_schedule(vault: &Vault) -> Result<Schedule> {
    schedule_setting(vault, GC_SCHEDULE, DEFAULT_GC_SCHEDULE)
}

/// The secondary vault replication keeps, if one is set.
pub fn replicate_to(vault: &Vault) -> Result<Option<std::path::PathBuf>> {
    Ok(vault.catalog().meta(REPLICATE_TO)?.filter(|v| v != NO_TARGET && !v.is_empty()).map(Into::into))
}

pub fn replicate_schedule(vault: &Vault) -> Result<Schedule> {
    schedule_setting(vault, REPLICATE_SCHEDULE, DEFAULT_REPLICATE_SCHEDULE)
}
