//! Protected items: the stored definition of a VM (its disks, configuration
//! files, scripts, file systems to freeze) and its policy, so that
//! `kluis backup ITEM` and the scheduler need nothing else.
//!
//! A definition is kept as JSON in the `items` table. Paths are made
//! absolute when the item is protected (not canonical: a
//! `/dev/disk/by-id/...` link must stay a link), because scheduled backups
//! run from another directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backup::{self, BackupRequest};
use crate::error::{Error, Result};
use crate::vault::Vault;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskDef {
    pub name: String,
    pub path: PathBuf,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ItemDef {
    pub disks: Vec<DiskDef>,
    #[serde(default)]
    pub configs: Vec<PathBuf>,
    /// Shell command run (by `sh -c`) before the freeze; see crate::consistency.
    #[serde(default)]
    pub pre_script: Option<String>,
    /// Shell command run after the thaw (and to release script snapshots).
    #[serde(default)]
    pub post_script: Option<String>,
    /// Mountpoints frozen with FIFREEZE while the point-in-time copies are made.
    #[serde(default)]
    pub freeze: Vec<PathBuf>,
    /// Seconds a script may run before it is killed (default 600).
    #[serde(default)]
    pub script_timeout_s: Option<u64>,
    /// Changed-block trackers by disk name (crate::backup::Tracker).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracking: Vec<(String, backup::Tracker)>,
    /// A libvirt domain whose disks and XML make up the item, looked up at
    /// each backup (crate::libvirt); `disks` is then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt: Option<crate::libvirt::DomainRef>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Item {
    pub name: String,
    pub policy: Option<String>,
    #[serde(flatten)]
    pub def: ItemDef,
    #[serde(skip)]
    pub created_ms: i64,
    #[serde(skip)]
    pub updated_ms: i64,
}

impl ItemDef {
    pub fn request(&self, item: &str) -> BackupRequest {
        BackupRequest {
            item: item.to_owned(),
            disks: self.disks.iter().map(|d| (d.name.clone(), d.path.clone())).collect(),
            configs: self.configs.clone(),
            consistency: "crash".into(),
            tracking: self.tracking.clone(),
            ..Default::default()
        }
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(|e| Error::io_path("resolve", p, e))
}

/// Stores (or replaces) the definition of `name`. Disks must exist, the
/// policy must exist, freeze mountpoints must pass the safety checks.
pub fn protect(vault: &Vault, name: &str, mut def: ItemDef, policy: Option<&str>) -> Result<Item> {
    for d in &mut def.disks {
        // An NBD URL is not a path.
        if !d.path.to_str().is_some_and(crate::image::nbd::is_url) {
            d.path = absolute(&d.path)?;
        }
    }
    for c in &mut def.configs {
        *c = absolute(c)?;
    }
    for f in &mut def.freeze {
        *f = absolute(f)?;
    }
    def.freeze.sort();
    def.freeze.dedup();
    match &def.libvirt {
        Some(r) => {
            // The domain must exist now; its disks are looked up at each backup.
            let dom = crate::libvirt::domain(r)?;
            backup::check_name("item", name)?;
            if !def.disks.is_empty() {
                return Err(Error::InvalidInput(format!("{name}: give --libvirt or --disk, not both (the disks of {} come from libvirt)", dom.name)));
            }
        }
        None => backup::validate(&def.request(name))?,
    }
    for c in &def.configs {
        if !c.is_file() {
            return Err(Error::NotFound(format!("config file {} does not exist", c.display())));
        }
    }
    let disks: Vec<PathBuf> = def.disks.iter().map(|d| d.path.clone()).collect();
    for f in &def.freeze {
        crate::consistency::check_freezable(f, vault.root(), &disks)?;
    }
    if let Some(p) = policy {
        crate::policy::get(vault, p)?;
    }
    for (what, s) in [("pre-script", &def.pre_script), ("post-script", &def.post_script)] {
        if s.as_deref().is_some_and(|s| s.trim().is_empty()) {
            return Err(Error::InvalidInput(format!("{what} is empty")));
        }
        if let Some(cmd) = s {
            crate::consistency::check_script(what, cmd)?;
        }
    }
    crate::consistency::check_disk_env_vars(def.disks.iter().map(|d| d.name.as_str()))?;
    let json = serde_json::to_string(&def).expect("item definition serializes");
    vault.catalog().put_item(name, policy, &json)?;
    get(vault, name)?.ok_or_else(|| Error::NotFound(format!("item {name} vanished")))
}

pub fn get(vault: &Vault, name: &str) -> Result<Option<Item>> {
    vault.catalog().item(name)?.map(from_row).transpose()
}

pub fn list(vault: &Vault) -> Result<Vec<Item>> {
    vault.catalog().protected_items()?.into_iter().map(from_row).collect()
}

/// Forgets the definition; the item's recovery points stay.
pub fn unprotect(vault: &Vault, name: &str) -> Result<()> {
    if !vault.catalog().remove_item(name)? {
        return Err(Error::NotFound(format!("item {name:?} is not protected")));
    }
    Ok(())
}

fn from_row(r: crate::catalog::ItemRow) -> Result<Item> {
    let def: ItemDef = serde_json::from_str(&r.definition)
        .map_err(|e| Error::Corrupt(format!("item {}: unreadable definition in the index: {e}", r.name)))?;
    Ok(Item { name: r.name, policy: r.policy, def, created_ms: r.created_ms, updated_ms: r.updated_ms })
}
