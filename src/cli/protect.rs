//! Commands for protected items, policies, retention, scheduling, jobs and
//! vault settings; also the backup and delete commands' bodies.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::Serialize;

use kluis::consistency::{self, ItemBackupReport};
use kluis::jobs;
use kluis::policy::{self, Keep};
use kluis::protect::{self, DiskDef, ItemDef};
use kluis::scheduler;
use kluis::timefmt::{point_names, rfc3339_s};
use kluis::vault::Vault;
use kluis::{settings, Error, Result};

use super::output::{bytes, Out};
use super::progress::Bars;
use super::{disk_arg, parse_disk_arg, CANCEL};

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Store ITEM's definition (disks, configs, scripts, freeze) and policy; then `kluis backup ITEM` needs nothing else
    Protect(ProtectArgs),
    /// Forget ITEM's definition (its recovery points stay)
    Unprotect { item: String },
    /// List items: policy, last recovery point, last job
    Items,
    /// Backup policies: schedule and retention
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Apply each item's policy retention: soft-delete the points it does not keep
    Prune {
        item: Option<String>,
        /// Only show what would be pruned
        #[arg(long)]
        dry_run: bool,
    },
    /// Bring back a deleted or pruned recovery point (within the soft-delete window)
    Undelete { point: String },
    /// Run every backup, prune and gc that is due now (for cron or a systemd timer)
    RunDue,
    /// Run due backups, prunes and gc in a loop until Ctrl-C
    Daemon {
        /// Longest sleep between checks, in seconds
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        max_sleep: u64,
    },
    /// List recorded jobs (backup, restore, verify, prune, gc)
    Jobs {
        item: Option<String>,
        /// Only jobs that did not end ok (failed, interrupted, died, warning)
        #[arg(long)]
        failed: bool,
        /// Only the newest N
        #[arg(long, value_name = "N")]
        last: Option<usize>,
    },
    /// Vault settings (soft-delete-days, gc-schedule, replicate-to, replicate-schedule); promote a replica
    #[command(subcommand, name = "vault")]
    Settings(VaultCmd),
}

#[derive(Args, Debug)]
pub struct ProtectArgs {
    item: String,
    /// A disk as NAME=PATH (raw image, VHD, qcow2 or block device) or NAME=URL (an NBD export); repeat for each disk
    #[arg(long = "disk", value_name = "NAME=PATH|URL", required_unless_present = "libvirt", conflicts_with = "libvirt", value_parser = disk_arg)]
    disks: Vec<String>,
    /// Back up the NBD disks by their qemu:dirty-bitmap:NAME (see `kluis backup --dirty-bitmap`)
    #[arg(long, value_name = "NAME", conflicts_with = "libvirt")]
    dirty_bitmap: Option<String>,
    /// A libvirt domain: its disks (cdrom and floppy skipped) and XML, looked up at each backup
    #[arg(long, value_name = "DOMAIN")]
    libvirt: Option<String>,
    /// libvirt connection URI for --libvirt [default: virsh's]
    #[arg(long, value_name = "URI", requires = "libvirt")]
    connect: Option<String>,
    /// A configuration file to keep with every point; repeatable
    #[arg(long = "config", value_name = "FILE")]
    configs: Vec<PathBuf>,
    /// The backup policy (see `kluis policy set`)
    #[arg(long)]
    policy: String,
    /// Shell command run before the freeze (quiesce the application; may print `snapshot NAME=PATH`, `consistency LEVEL`)
    #[arg(long, value_name = "CMD")]
    pre_script: Option<String>,
    /// Shell command run after the thaw (resume the application), whatever happened
    #[arg(long, value_name = "CMD")]
    post_script: Option<String>,
    /// Freeze this mounted file system (FIFREEZE) while the copies are made; repeatable
    #[arg(long = "freeze", value_name = "MOUNTPOINT")]
    freeze: Vec<PathBuf>,
    /// Kill a script running longer than this
    #[arg(long, value_name = "SECS")]
    script_timeout: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Create or change a policy (options not given keep their value)
    Set {
        name: String,
        /// hourly, 'every 4h', 'every 30m', 'daily 02:00', 'weekly sun 03:00' or manual (UTC)
        #[arg(long)]
        schedule: Option<String>,
        /// Keep the N newest points
        #[arg(long, value_name = "N")]
        keep_last: Option<u32>,
        /// Keep the newest point of each of the N most recent days that have one
        #[arg(long, value_name = "N")]
        keep_daily: Option<u32>,
        /// ... of each of the N most recent ISO weeks that have one
        #[arg(long, value_name = "N")]
        keep_weekly: Option<u32>,
        /// ... of each of the N most recent months that have one
        #[arg(long, value_name = "N")]
        keep_monthly: Option<u32>,
        /// ... of each of the N most recent years that have one
        #[arg(long, value_name = "N")]
        keep_yearly: Option<u32>,
    },
    /// List policies
    Ls,
    /// Remove a policy no item uses
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
pub enum VaultCmd {
    /// Show the vault's settings
    Show,
    /// Change a setting: soft-delete-days N | gc-schedule SCHEDULE | replicate-to DIR|none | replicate-schedule SCHEDULE
    Set { key: String, value: String },
    /// Make this replica a vault of its own (after a disaster): it takes backups from now on
    Promote,
}

/// Whether `cmd` changes what the vault holds (refused on a replica).
fn changes_vault(cmd: &Cmd) -> bool {
    match cmd {
        Cmd::Items | Cmd::Jobs { .. } | Cmd::Policy(PolicyCmd::Ls) | Cmd::Settings(VaultCmd::Show | VaultCmd::Promote) => false,
        Cmd::Prune { dry_run, .. } => !dry_run,
        _ => true,
    }
}

pub fn run(cmd: Cmd, vault_dir: &Path, out: &Out, bars: &Bars) -> Result<()> {
    // Small changes may borrow the reserve on a full filesystem (and give
    // it back); runs that store backups must not.
    let small_change = changes_vault(&cmd) && !matches!(cmd, Cmd::RunDue | Cmd::Daemon { .. });
    let mut vault = if small_change { Vault::open_for_small_change(vault_dir)? } else { Vault::open(vault_dir)? };
    if changes_vault(&cmd) {
        vault.check_primary()?;
    }
    match cmd {
        Cmd::Protect(a) => protect_cmd(&vault, a, out),
        Cmd::Unprotect { item } => {
            protect::unprotect(&vault, &item)?;
            out.result(&serde_json::json!({"unprotected": item}), || format!("{item} is no longer protected; its recovery points stay"))
        }
        Cmd::Items => items(&vault, out),
        Cmd::Policy(p) => policy_cmd(&vault, p, out),
        Cmd::Prune { item, dry_run } => prune(&vault, item.as_deref(), dry_run, out),
        Cmd::Undelete { point } => undelete(&vault, &point, out),
        Cmd::RunDue => {
            let rep = scheduler::run_due(&vault, bars, &CANCEL)?;
            print_run(out, &rep)?;
            match rep.failures() {
                0 => Ok(()),
                n => Err(Error::Script(format!("{n} scheduled job(s) failed; see `kluis jobs --failed`"))),
            }
        }
        Cmd::Daemon { max_sleep } => {
            log::info!("kluis daemon: running due jobs until interrupted");
            let r = scheduler::daemon(&vault, bars, &CANCEL, std::time::Duration::from_secs(max_sleep.max(1)), |rep| print_run(out, rep));
            match r {
                Err(Error::Interrupted) | Ok(()) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Cmd::Jobs { item, failed, last } => jobs_cmd(&vault, item.as_deref(), failed, last, out),
        Cmd::Settings(VaultCmd::Show) => {
            let all = settings::all(&vault)?;
            if out.is_json() {
                return out.json_value(&all);
            }
            for s in &all {
                out.line(&format!("{:<18} {}{}", s.key, s.value, if s.default { "  (default)" } else { "" }))?;
            }
            Ok(())
        }
        Cmd::Settings(VaultCmd::Set { key, value }) => {
            let v = settings::set(&vault, &key, &value)?;
            out.result(&serde_json::json!({"key": key, "value": v}), || format!("{key} = {v}"))
        }
        Cmd::Settings(VaultCmd::Promote) => {
            let rep = kluis::replicate::promote(&mut vault)?;
            out.result(&rep, || {
                let cleared = rep.cleared_replicate_to.as_ref().map(|t| format!("; replicate-to ({}) cleared", t.display())).unwrap_or_default();
                format!(
                    "{} is a vault of its own now (was a replica of {}), with {} recovery points{cleared}",
                    rep.vault.display(),
                    rep.was_replica_of,
                    rep.points
                )
            })
        }
    }
}

// ---------------------------------------------------------------- backup, delete

/// `kluis backup ITEM [--disk ...] [--config ...]`: a protected item backs up
/// from its definition; an unprotected one needs its disks on the command line.
/// `tracking`: `--dirty-bitmap` (for every NBD disk) and `--changed-ranges`
/// (by disk), for this run only.
#[allow(clippy::too_many_arguments)]
pub fn backup(
    vault_dir: &Path,
    item: String,
    disks: Vec<String>,
    configs: Vec<PathBuf>,
    tracking: (Option<String>, Vec<(String, PathBuf)>),
    libvirt: Option<kluis::libvirt::DomainRef>,
    out: &Out,
    bars: &Bars,
) -> Result<()> {
    let adhoc = if let Some(r) = libvirt {
        kluis::backup::check_name("item", &item)?;
        // Fails here, with nothing stored, for a domain that does not exist.
        kluis::libvirt::domain(&r)?;
        Some(ItemDef { libvirt: Some(r), ..Default::default() })
    } else if disks.is_empty() {
        None
    } else {
        let disks = disks.iter().map(|d| parse_disk_arg(d)).collect::<Result<Vec<_>>>()?;
        let def = ItemDef { disks: disks.into_iter().map(|(name, path)| DiskDef { name, path }).collect(), configs: configs.clone(), ..Default::default() };
        kluis::backup::validate(&def.request(&item))?;
        Some(def)
    };
    let vault = Vault::open(vault_dir)?;
    vault.check_primary()?;
    let def = match (protect::get(&vault, &item)?, adhoc) {
        (Some(_), Some(_)) => {
            return Err(Error::InvalidInput(format!(
                "{item} is protected: its disks come from its definition; run `kluis backup {item}` without --disk or --libvirt, or change it with `kluis protect`"
            )));
        }
        (Some(i), None) if configs.is_empty() => i.def,
        (Some(_), None) => return Err(Error::InvalidInput(format!("{item} is protected: its config files come from its definition (change it with `kluis protect`)"))),
        (None, Some(def)) => def,
        (None, None) => {
            kluis::backup::check_name("item", &item)?;
            return Err(Error::InvalidInput(format!(
                "backup of {item}: no disks given (use --disk NAME=PATH, or protect the item first with `kluis protect`)"
            )));
        }
    };
    let mut def = def;
    let (bitmap, changed) = tracking;
    if let Some(b) = bitmap {
        // This run's bitmap replaces the definition's.
        def.tracking.retain(|(_, t)| !matches!(t, kluis::backup::Tracker::DirtyBitmap(_)));
        track_nbd_disks(&mut def, &item, b)?;
    }
    for (name, file) in changed {
        if def.tracking.iter().any(|(n, _)| *n == name) {
            return Err(Error::InvalidInput(format!("disk {name}: give one tracker (--dirty-bitmap or --changed-ranges), once")));
        }
        def.tracking.push((name, kluis::backup::Tracker::ChangedRanges(file)));
    }
    let rep = jobs::run(&vault, "backup", Some(&item), |log| consistency::backup_item(&vault, &item, &def, bars, &CANCEL, log))?;
    out.result(&rep, || backup_line(&rep))
}

/// `--dirty-bitmap B`: every NBD disk of `def` is tracked by bitmap B.
fn track_nbd_disks(def: &mut ItemDef, item: &str, b: String) -> Result<()> {
    let nbd: Vec<String> = def.disks.iter().filter(|d| d.path.to_str().is_some_and(kluis::image::nbd::is_url)).map(|d| d.name.clone()).collect();
    if nbd.is_empty() {
        return Err(Error::InvalidInput(format!("--dirty-bitmap {b}: {item} has no NBD disk (nbd://... or nbd+unix://...)")));
    }
    def.tracking.extend(nbd.into_iter().map(|n| (n, kluis::backup::Tracker::DirtyBitmap(b.clone()))));
    Ok(())
}

fn backup_line(rep: &ItemBackupReport) -> String {
    let b = &rep.backup;
    let read: u64 = b.disks.iter().map(|d| d.bytes_read).sum();
    format!(
        "{}@{} ({}) {} disk(s), {} read, {} new, {} stored, {:.1}s, {}-consistent ({})",
        b.item,
        b.time,
        &b.id[..8],
        b.disks.len(),
        bytes(read),
        bytes(b.new_bytes),
        bytes(b.stored_bytes),
        b.seconds,
        rep.consistency,
        rep.capture
    )
}

/// `kluis delete ITEM@RP`: a soft delete; gc reclaims the point's data once
/// the vault's soft-delete window has passed.
pub fn delete(vault_dir: &Path, point: &str, out: &Out) -> Result<()> {
    let vault = Vault::open_for_small_change(vault_dir)?;
    vault.check_primary()?;
    let p = vault.select(point, false)?;
    let now = kluis::catalog::now_ms();
    vault.catalog().set_point_deleted(&p.id, Some(now))?;
    let name = rfc3339_s(p.time_ms);
    let days = settings::soft_delete_days(&vault)?;
    let purge = rfc3339_s(now + settings::soft_delete_ms(&vault)?);
    out.result(&serde_json::json!({"deleted": p.id.to_hex(), "item": p.item, "time": name, "purge_after": purge}), || {
        format!(
            "deleted {}@{} ({}); restorable with `kluis undelete` for {days} day(s), until {purge}; gc reclaims its space after that",
            p.item, name, p.id
        )
    })
}

fn undelete(vault: &Vault, point: &str, out: &Out) -> Result<()> {
    let (item, _) = point.split_once('@').unwrap_or((point, "latest"));
    let deleted: Vec<_> = vault.catalog().points(Some(item), true)?.into_iter().filter(|p| p.deleted_ms.is_some()).collect();
    if deleted.is_empty() {
        return Err(Error::NotFound(format!("item {item:?} has no deleted recovery points (gc may have purged them)")));
    }
    let p = vault.select(point, true)?;
    if p.deleted_ms.is_none() {
        return Err(Error::InvalidInput(format!("{}@{} is not deleted", p.item, rfc3339_s(p.time_ms))));
    }
    vault.catalog().set_point_deleted(&p.id, None)?;
    let name = rfc3339_s(p.time_ms);
    out.result(&serde_json::json!({"undeleted": p.id.to_hex(), "item": p.item, "time": name}), || format!("undeleted {}@{} ({})", p.item, name, p.id))
}

// ---------------------------------------------------------------- protect, items

fn protect_cmd(vault: &Vault, a: ProtectArgs, out: &Out) -> Result<()> {
    let disks = a.disks.iter().map(|d| parse_disk_arg(d)).collect::<Result<Vec<_>>>()?;
    let mut def = ItemDef {
        disks: disks.into_iter().map(|(name, path)| DiskDef { name, path }).collect(),
        configs: a.configs,
        pre_script: a.pre_script,
        post_script: a.post_script,
        freeze: a.freeze,
        script_timeout_s: a.script_timeout,
        tracking: Vec::new(),
        libvirt: a.libvirt.map(|domain| kluis::libvirt::DomainRef { domain, connect: a.connect }),
    };
    if let Some(b) = a.dirty_bitmap {
        track_nbd_disks(&mut def, &a.item, b)?;
    }
    let existed = protect::get(vault, &a.item)?.is_some();
    let item = protect::protect(vault, &a.item, def, Some(&a.policy))?;
    out.result(&item, || {
        let mut disks: Vec<String> = item.def.disks.iter().map(|d| format!("{}={}", d.name, d.path.display())).collect();
        if let Some(r) = &item.def.libvirt {
            disks.push(format!("libvirt domain {}{}", r.domain, r.connect.as_deref().map(|c| format!(" on {c}")).unwrap_or_default()));
        }
        format!("{} {} with policy {}: {}", if existed { "updated" } else { "protected" }, item.name, a.policy, disks.join(" "))
    })
}

#[derive(Serialize)]
struct PointBrief {
    name: String,
    id: String,
    consistency: String,
    capture: Option<String>,
}

#[derive(Serialize)]
struct JobBrief {
    kind: String,
    status: String,
    started: String,
    error: Option<String>,
}

#[derive(Serialize)]
struct ItemOut {
    item: String,
    protected: bool,
    policy: Option<String>,
    schedule: Option<String>,
    disks: Vec<String>,
    points: usize,
    deleted_points: usize,
    last_point: Option<PointBrief>,
    last_job: Option<JobBrief>,
    next_backup: Option<String>,
}

fn items(vault: &Vault, out: &Out) -> Result<()> {
    let protected = protect::list(vault)?;
    let mut names: Vec<String> = protected.iter().map(|i| i.name.clone()).collect();
    names.extend(vault.catalog().items()?);
    names.sort();
    names.dedup();
    let now = kluis::catalog::now_ms();
    let mut list = Vec::new();
    for name in names {
        let def = protected.iter().find(|i| i.name == name);
        let points = vault.catalog().points(Some(&name), true)?;
        let live: Vec<_> = points.iter().filter(|p| p.deleted_ms.is_none()).collect();
        let last_point = live.last().map(|p| {
            let names = point_names(&live.iter().map(|p| p.time_ms).collect::<Vec<_>>());
            PointBrief { name: names.last().cloned().unwrap_or_default(), id: p.id.to_hex(), consistency: p.consistency.clone(), capture: p.capture.clone() }
        });
        let last_job = vault.catalog().last_job(&name, None)?.map(|j| JobBrief { kind: j.kind, status: j.status, started: rfc3339_s(j.started_ms), error: j.error });
        let pol = def.and_then(|d| d.policy.as_deref()).and_then(|p| policy::get(vault, p).ok());
        let schedule = pol.as_ref().and_then(|p| p.schedule().ok());
        list.push(ItemOut {
            item: name.clone(),
            protected: def.is_some(),
            policy: def.and_then(|d| d.policy.clone()),
            schedule: pol.as_ref().map(|p| p.schedule.clone()),
            disks: def
                .map(|d| match &d.def.libvirt {
                    // Its disks are the domain's, looked up at each backup.
                    Some(r) => vec![format!("libvirt:{}", r.domain)],
                    None => d.def.disks.iter().map(|d| d.name.clone()).collect(),
                })
                .unwrap_or_default(),
            points: live.len(),
            deleted_points: points.len() - live.len(),
            last_point,
            last_job,
            next_backup: schedule.and_then(|s| s.next_slot(now)).map(rfc3339_s),
        });
    }
    if out.is_json() {
        return out.json_value(&list);
    }
    out.line(&format!("{:<12} {:<10} {:<18} {:<12} {:>6}  {:<22} {:<11} {}", "ITEM", "POLICY", "SCHEDULE", "DISKS", "POINTS", "LAST POINT", "CONSISTENCY", "LAST JOB"))?;
    for i in &list {
        let job = i.last_job.as_ref().map(|j| format!("{} {} {}", j.kind, j.status, j.started)).unwrap_or_else(|| "-".into());
        out.line(&format!(
            "{:<12} {:<10} {:<18} {:<12} {:>6}  {:<22} {:<11} {}",
            i.item,
            i.policy.as_deref().unwrap_or(if i.protected { "-" } else { "(unprotected)" }),
            i.schedule.as_deref().unwrap_or("-"),
            if i.disks.is_empty() { "-".to_owned() } else { i.disks.join(",") },
            i.points,
            i.last_point.as_ref().map(|p| p.name.as_str()).unwrap_or("-"),
            i.last_point.as_ref().map(|p| p.consistency.as_str()).unwrap_or("-"),
            job
        ))?;
    }
    Ok(())
}

// ---------------------------------------------------------------- policies, prune

fn policy_cmd(vault: &Vault, cmd: PolicyCmd, out: &Out) -> Result<()> {
    match cmd {
        PolicyCmd::Set { name, schedule, keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly } => {
            let old = policy::get(vault, &name).ok();
            let schedule = match (schedule, &old) {
                (Some(s), _) => s,
                (None, Some(o)) => o.schedule.clone(),
                (None, None) => return Err(Error::InvalidInput(format!("new policy {name}: give --schedule (e.g. 'daily 02:00', or manual)"))),
            };
            let base = old.as_ref().map(|o| o.keep).unwrap_or_default();
            let keep = Keep {
                last: keep_last.unwrap_or(base.last),
                daily: keep_daily.unwrap_or(base.daily),
                weekly: keep_weekly.unwrap_or(base.weekly),
                monthly: keep_monthly.unwrap_or(base.monthly),
                yearly: keep_yearly.unwrap_or(base.yearly),
            };
            let p = policy::set(vault, &name, &schedule, keep)?;
            out.result(&p, || format!("policy {}: {}, {}", p.name, p.schedule, keep_text(&p.keep)))
        }
        PolicyCmd::Ls => {
            let list = policy::list(vault)?;
            if out.is_json() {
                return out.json_value(&list);
            }
            let items = protect::list(vault)?;
            out.line(&format!("{:<12} {:<18} {:>5} {:>6} {:>7} {:>8} {:>7}  {}", "NAME", "SCHEDULE", "LAST", "DAILY", "WEEKLY", "MONTHLY", "YEARLY", "ITEMS"))?;
            for p in &list {
                let users: Vec<&str> = items.iter().filter(|i| i.policy.as_deref() == Some(p.name.as_str())).map(|i| i.name.as_str()).collect();
                let k = &p.keep;
                out.line(&format!(
                    "{:<12} {:<18} {:>5} {:>6} {:>7} {:>8} {:>7}  {}",
                    p.name, p.schedule, k.last, k.daily, k.weekly, k.monthly, k.yearly, users.join(",")
                ))?;
            }
            Ok(())
        }
        PolicyCmd::Rm { name } => {
            policy::remove(vault, &name)?;
            out.result(&serde_json::json!({"removed": name}), || format!("removed policy {name}"))
        }
    }
}

fn keep_text(k: &Keep) -> String {
    if k.is_off() {
        return "keeps every point (no retention)".into();
    }
    let parts: Vec<String> = [("last", k.last), ("daily", k.daily), ("weekly", k.weekly), ("monthly", k.monthly), ("yearly", k.yearly)]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(w, n)| format!("{w} {n}"))
        .collect();
    format!("keeps {}", parts.join(", "))
}

fn prune(vault: &Vault, item: Option<&str>, dry_run: bool, out: &Out) -> Result<()> {
    let items = match item {
        Some(name) => {
            let i = protect::get(vault, name)?.ok_or_else(|| Error::NotFound(format!("item {name:?} is not protected, so it has no policy to prune by")))?;
            if i.policy.is_none() {
                return Err(Error::InvalidInput(format!("item {name} has no policy")));
            }
            vec![i]
        }
        None => protect::list(vault)?.into_iter().filter(|i| i.policy.is_some()).collect(),
    };
    let mut reports = Vec::new();
    for i in items {
        let pol = policy::get(vault, i.policy.as_deref().unwrap())?;
        let rep = if dry_run {
            policy::prune_item(vault, &i.name, &pol, true)?
        } else {
            jobs::run(vault, "prune", Some(&i.name), |_| policy::prune_item(vault, &i.name, &pol, false))?
        };
        reports.push(rep);
    }
    if out.is_json() {
        return out.json_value(&reports);
    }
    if reports.is_empty() {
        return out.line("prune: nothing to do: no protected item has a policy (`kluis protect ITEM ... --policy P`)");
    }
    for r in &reports {
        out.line(&format!(
            "{}: {} {}, kept {} (policy {}){}",
            r.item,
            if r.dry_run { "would prune" } else { "pruned" },
            r.pruned.len(),
            r.kept.len(),
            r.policy,
            if r.pruned.is_empty() || r.dry_run { String::new() } else { "; `kluis undelete` brings them back".into() }
        ))?;
        for p in &r.pruned {
            out.line(&format!("  - {}@{} ({})", r.item, p.name, &p.id[..8]))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- run-due, jobs

fn print_run(out: &Out, rep: &scheduler::RunDueReport) -> Result<()> {
    if out.is_json() {
        return out.json_value(rep);
    }
    if rep.ran.is_empty() && !rep.skipped {
        return out.line(&format!("{}: nothing due", rep.time));
    }
    for r in &rep.ran {
        let what = match (r.kind.as_str(), &r.point, r.pruned) {
            ("backup", Some(p), _) => format!(" point {} ({})", &p[..8], r.consistency.as_deref().unwrap_or("?")),
            ("prune", _, Some(n)) => format!(" {n} pruned"),
            _ => String::new(),
        };
        out.line(&format!(
            "{}: {} {} {}{}{}",
            rep.time,
            r.kind,
            r.item.as_deref().unwrap_or("vault"),
            r.status,
            what,
            r.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
        ))?;
    }
    Ok(())
}

fn jobs_cmd(vault: &Vault, item: Option<&str>, failed: bool, last: Option<usize>, out: &Out) -> Result<()> {
    let mut list = jobs::list(vault, item, failed)?;
    if let Some(n) = last {
        let skip = list.len().saturating_sub(n);
        list.drain(..skip);
    }
    if out.is_json() {
        return out.json_value(&list);
    }
    out.line(&format!("{:>5} {:<9} {:<12} {:<20} {:>7} {:<11} {:>10} {:>10}  {}", "ID", "KIND", "ITEM", "STARTED", "SECS", "STATUS", "READ", "STORED", "ERROR"))?;
    for j in &list {
        out.line(&format!(
            "{:>5} {:<9} {:<12} {:<20} {:>7} {:<11} {:>10} {:>10}  {}",
            j.id,
            j.kind,
            j.item.as_deref().unwrap_or("-"),
            j.started,
            j.seconds.map(|s| format!("{s:.1}")).unwrap_or_else(|| "-".into()),
            j.status,
            bytes(j.bytes_read),
            bytes(j.bytes_stored),
            j.error.as_deref().unwrap_or("")
        ))?;
    }
    Ok(())
}
