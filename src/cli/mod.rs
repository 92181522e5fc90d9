//! Command-line interface: clap structs, running commands, printing results
//! for humans or as JSON (`--json`). Only the binary uses this module.

mod files;
mod mount;
mod output;
mod progress;
mod protect;
mod restore_vm;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

use kluis::image::TargetFormat;
use kluis::vault::{Vault, DEFAULT_BLOCK_SIZE};
use kluis::{Error, Result};

pub use output::Out;

/// The help heading of the global flags, so a command's help lists its own
/// options together and the global ones apart.
const GLOBAL: &str = "Global options";

#[derive(Parser, Debug)]
#[command(name = "kluis", version, about = "Backup and disaster-recovery vault for virtual-machine disks")]
pub struct Cli {
    /// Vault directory [default: $KLUIS_VAULT, else $XDG_DATA_HOME/kluis, else ~/.local/share/kluis]
    #[arg(long, global = true, value_name = "DIR", help_heading = GLOBAL)]
    pub vault: Option<PathBuf>,
    /// Machine-readable output (JSON) on stdout
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,
    /// More log output (-v info, -vv debug)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = GLOBAL)]
    pub verbose: u8,
    /// Only errors
    #[arg(short, long, global = true, help_heading = GLOBAL)]
    pub quiet: bool,
    /// No progress bars even on a terminal
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub no_progress: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new, empty vault
    Init {
        /// Block size in bytes (a power of two, 4 KiB to 4 MiB); 64 KiB is the benchmarked default
        #[arg(long, default_value_t = DEFAULT_BLOCK_SIZE)]
        block_size: u32,
        /// zstd level for new chunks (-7 fastest .. 19 smallest)
        #[arg(long, default_value_t = kluis::vault::DEFAULT_ZSTD_LEVEL, allow_negative_numbers = true)]
        zstd_level: i32,
    },
    /// Take a recovery point of all disks (and config files) of ITEM
    Backup {
        item: String,
        /// A disk as NAME=PATH (raw image, VHD, qcow2 or block device) or NAME=URL (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH); repeat for each disk (not for a protected item)
        #[arg(long = "disk", value_name = "NAME=PATH|URL", value_parser = disk_arg)]
        disks: Vec<String>,
        /// A configuration file to keep with the point (libvirt XML, ...); repeatable
        #[arg(long = "config", value_name = "FILE")]
        configs: Vec<PathBuf>,
        /// Read only the extents the NBD disks' qemu:dirty-bitmap:NAME reports dirty; the rest comes from the previous point
        #[arg(long, value_name = "NAME")]
        dirty_bitmap: Option<String>,
        /// Read only the byte ranges FILE lists for disk NAME (format in docs/cli.md); repeatable
        #[arg(long = "changed-ranges", value_name = "NAME=FILE")]
        changed_ranges: Vec<String>,
        /// Every disk of this libvirt domain (cdrom and floppy skipped) and its XML, incremental by libvirt checkpoint while it runs
        #[arg(long, value_name = "DOMAIN", conflicts_with_all = ["disks", "configs", "dirty_bitmap", "changed_ranges"])]
        libvirt: Option<String>,
        /// libvirt connection URI for --libvirt [default: virsh's]
        #[arg(long, value_name = "URI", requires = "libvirt")]
        connect: Option<String>,
    },
    /// List recovery points
    Points {
        item: Option<String>,
        /// Include deleted points
        #[arg(long)]
        deleted: bool,
    },
    /// Write disks of a recovery point to files or block devices
    Restore {
        /// ITEM@latest, ITEM@<UTC time> or ITEM@<id prefix>
        point: String,
        /// A disk to restore; repeat, each with its own --to, to restore several at once
        #[arg(long, value_name = "NAME")]
        disk: Vec<String>,
        /// Where the --disk of the same position goes
        #[arg(long, value_name = "PATH")]
        to: Vec<PathBuf>,
        /// Restore into DIR as NAME.raw / NAME.vhd: every disk of the point, or the --disk ones
        #[arg(long, value_name = "DIR", conflicts_with = "to")]
        to_dir: Option<PathBuf>,
        /// raw (sparse), vhd (fixed) or vhd-dynamic
        #[arg(long, default_value = "raw", value_parser = clap::builder::PossibleValuesParser::new(TargetFormat::NAMES))]
        format: String,
        /// Overwrite an existing target
        #[arg(long)]
        force: bool,
        /// Restore a damaged point anyway: what is intact, zeros where
        /// chunks are damaged, and list the missing byte ranges
        #[arg(long)]
        partial: bool,
        /// Also define a new libvirt domain NEWNAME from the point's saved XML (new UUID and MACs, disks in --to-dir); not started
        #[arg(long, value_name = "NEWNAME", requires = "to_dir")]
        libvirt_define: Option<String>,
        /// libvirt connection URI for --libvirt-define [default: virsh's]
        #[arg(long, value_name = "URI", requires = "libvirt_define")]
        connect: Option<String>,
        /// Rewrite only the blocks of the existing raw or qcow2 image --to that differ from the point
        #[arg(long, requires = "to", conflicts_with_all = ["to_dir", "force", "libvirt_define", "partial"])]
        in_place: bool,
    },
    /// Check the vault (all points, or one); --read-data re-hashes every chunk
    Verify {
        point: Option<String>,
        /// Also decompress and re-hash every chunk (reads the whole vault)
        #[arg(long)]
        read_data: bool,
    },
    /// Delete a recovery point (soft: `undelete` brings it back until gc reclaims it after the soft-delete window)
    Delete { point: String },
    /// Reclaim space no recovery point uses
    Gc,
    /// Rebuild a lost or damaged index from the packs (the old one is kept aside)
    RebuildIndex,
    /// Copy the vault to a secondary vault (a replica) that can take over after a disaster; copies only new packs
    Replicate {
        /// The replica: a new or empty directory, or a replica of this vault [default: the vault's replicate-to setting]
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
    },
    /// Show every recovery point as a read-only folder (foreground until unmounted or Ctrl-C)
    Mount {
        mountpoint: PathBuf,
        /// Let other users in (turns on the kernel's permission checks; whole disks and configs stay the mounting user's)
        #[arg(long)]
        allow_other: bool,
        /// Mount over a directory that is not empty (its contents are hidden until unmounted)
        #[arg(long)]
        nonempty: bool,
        /// With --allow-other: members of GROUP (name or gid) may also read whole disks and configs
        #[arg(long, value_name = "GROUP", requires = "allow_other")]
        allow_group: Option<String>,
    },
    /// Unmount a `kluis mount`
    Umount { mountpoint: PathBuf },
    /// Files inside the disks of a recovery point, without FUSE (ITEM@RP NAME:pN/path)
    Files {
        #[command(subcommand)]
        cmd: files::FilesCmd,
    },
    #[command(flatten)]
    Protected(protect::Cmd),
}

/// Set by SIGINT/SIGTERM; long operations stop at the next block and clean up.
pub static CANCEL: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    if CANCEL.swap(true, Ordering::SeqCst) {
        // Second signal: the user insists. Never leave a file system frozen.
        kluis::consistency::emergency_thaw();
        unsafe { libc::_exit(130) };
    }
}

pub fn install_signal_handlers() {
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn default_vault() -> Result<PathBuf> {
    if let Some(v) = std::env::var_os("KLUIS_VAULT").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(v));
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("kluis"));
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(h).join(".local/share/kluis"));
    }
    Err(Error::InvalidInput("no vault given: use --vault DIR or set KLUIS_VAULT".into()))
}

/// What to add to an error caused by a full filesystem: which one is full
/// and what the failed run left behind.
pub fn no_space_hint(cmd: &Command) -> &'static str {
    match cmd {
        Command::Replicate { .. } => {
            "the replica's filesystem is full; its recovery points are intact; the next `kluis replicate` removes what this run left"
        }
        Command::Restore { .. } | Command::Files { .. } => "the target's filesystem is full",
        _ => "the vault's filesystem is full; earlier recovery points are intact; `kluis gc` reclaims what the failed run left",
    }
}

/// What a command leaves for the exit code besides errors.
pub enum Outcome {
    Ok,
    /// verify found damage
    Damaged,
}

pub fn run(cli: Cli) -> Result<Outcome> {
    let out = Out::new(cli.json);
    let vault_dir = match &cli.vault {
        Some(v) => v.clone(),
        None => default_vault()?,
    };
    let bars = progress::Bars::new(!cli.no_progress && !cli.quiet);
    match cli.command {
        Command::Init { block_size, zstd_level } => {
            let v = Vault::init(&vault_dir, block_size, zstd_level)?;
            out.result(&serde_json::json!({"vault": vault_dir, "id": v.header.id, "block_size": block_size, "zstd_level": zstd_level}), || {
                format!("initialized vault {} (block size {block_size}, zstd level {zstd_level})", vault_dir.display())
            })?;
        }
        Command::Backup { item, disks, configs, dirty_bitmap, changed_ranges, libvirt, connect } => {
            let changed = changed_ranges.iter().map(|c| parse_disk_arg(c).map_err(|_| Error::InvalidInput(format!("--changed-ranges {c:?}: expected NAME=FILE")))).collect::<Result<Vec<_>>>()?;
            let domain = libvirt.map(|domain| kluis::libvirt::DomainRef { domain, connect });
            protect::backup(&vault_dir, item, disks, configs, (dirty_bitmap, changed), domain, &out, &bars)?;
        }
        Command::Points { item, deleted } => {
            let vault = Vault::open(&vault_dir)?;
            output::points(&out, &vault, item.as_deref(), deleted)?;
        }
        Command::Restore { point, disk, to, to_dir, format, force, partial, libvirt_define, connect, in_place } => {
            let format: TargetFormat = format.parse()?;
            if in_place {
                restore_vm::in_place(&vault_dir, &point, &disk, &to, &out, &bars)?;
                return Ok(Outcome::Ok);
            }
            if let Some(name) = libvirt_define {
                let dir = to_dir.as_deref().expect("clap: --libvirt-define requires --to-dir");
                restore_vm::define(&vault_dir, &point, &name, connect, dir, format, force, &out, &bars)?;
                return Ok(Outcome::Ok);
            }
            if to_dir.is_none() && (disk.is_empty() || disk.len() != to.len()) {
                return Err(Error::InvalidInput(format!(
                    "give each --disk its --to ({} --disk, {} --to), or use --to-dir DIR",
                    disk.len(),
                    to.len()
                )));
            }
            let vault = Vault::open(&vault_dir)?;
            let item = point.split_once('@').map_or(point.as_str(), |(i, _)| i);
            let reps = kluis::jobs::run(&vault, "restore", Some(item), |_| {
                let p = vault.select(&point, false)?;
                let targets = match &to_dir {
                    Some(dir) => kluis::restore::targets_in_dir(&p, &disk, dir, format)?,
                    None => disk.iter().zip(&to).map(|(d, t)| kluis::restore::RestoreTarget { disk: d.clone(), to: t.clone() }).collect(),
                };
                kluis::restore::restore_disks(&vault, &p, &targets, format, force, partial, &bars, &CANCEL)
            })?;
            for r in &reps {
                for m in &r.missing {
                    log::warn!("{}/{}: bytes {}..{} are damaged in the vault; written as zeros", r.item, r.disk, m.0, m.1);
                }
            }
            let human = || {
                let line = |r: &kluis::restore::RestoreReport| {
                    let missing: u64 = r.missing.iter().map(|m| m.1 - m.0).sum();
                    let partial = if r.missing.is_empty() { String::new() } else { format!("; PARTIAL: {} in {} ranges missing, written as zeros", output::bytes(missing), r.missing.len()) };
                    format!("restored {}/{} to {} ({}, {:.1}s){partial}", r.item, r.disk, r.target, output::bytes(r.size), r.seconds)
                };
                reps.iter().map(line).collect::<Vec<_>>().join("\n")
            };
            match reps.as_slice() {
                [one] => out.result(one, human)?,
                _ => out.result(&reps, human)?,
            }
        }
        Command::Verify { point, read_data } => {
            let vault = Vault::open(&vault_dir)?;
            let item = point.as_deref().map(|s| s.split_once('@').map_or(s, |(i, _)| i));
            let rep = kluis::jobs::run(&vault, "verify", item, |_| {
                let p = point.as_deref().map(|s| vault.select(s, true)).transpose()?;
                kluis::verify::verify(&vault, p.as_ref(), read_data, &bars)
            })?;
            output::verify(&out, &rep)?;
            if !rep.is_clean() {
                return Ok(Outcome::Damaged);
            }
        }
        Command::Delete { point } => {
            protect::delete(&vault_dir, &point, &out)?;
        }
        Command::RebuildIndex => {
            let rep = kluis::rebuild::rebuild_index(&vault_dir, &bars)?;
            for p in &rep.incomplete_points {
                log::warn!("not recovered: {p}");
            }
            out.result(&rep, || {
                format!(
                    "rebuilt the index of {}: {} packs, {} chunks, {} recovery points ({} damaged, kept; {} manifests unreadable; {} damaged chunks skipped){}",
                    vault_dir.display(),
                    rep.packs,
                    rep.chunks,
                    rep.points,
                    rep.damaged_points.len(),
                    rep.incomplete_points.len(),
                    rep.damaged_chunks,
                    rep.old_index.as_deref().map(|o| format!("; previous index kept as {o}")).unwrap_or_default()
                )
            })?;
        }
        Command::Gc => {
            // Not Vault::open: on a full filesystem the reserve must go first.
            let (vault, lock) = kluis::gc::open(&vault_dir)?;
            let rep = kluis::jobs::run(&vault, "gc", None, |_| kluis::gc::gc_locked(&vault, &lock, &bars));
            kluis::gc::close(vault, lock);
            let rep = rep?;
            out.result(&rep, || {
                format!(
                    "gc: {} expired points purged, {} chunks removed, {} packs deleted, {} rewritten, {} freed, {} live chunks",
                    rep.points_purged,
                    rep.chunks_removed,
                    rep.packs_deleted,
                    rep.packs_rewritten,
                    output::bytes(rep.bytes_freed),
                    rep.live_chunks
                ) + &kept_for_readers(rep.packs_kept_for_readers)
            })?;
        }
        Command::Replicate { to } => {
            let vault = Vault::open(&vault_dir)?;
            let to = match to {
                Some(t) => t,
                None => kluis::settings::replicate_to(&vault)?.ok_or_else(|| {
                    Error::InvalidInput("no replica given: use --to DIR, or set one with `kluis vault set replicate-to DIR`".into())
                })?,
            };
            let rep = kluis::jobs::run(&vault, "replicate", None, |_| kluis::replicate::replicate(&vault, &to, &bars, &CANCEL))?;
            out.result(&rep, || {
                format!(
                    "replicated {} to {}{}: {} points; {} of {} packs copied ({}), {} removed; {:.1}s",
                    vault_dir.display(),
                    rep.to.display(),
                    if rep.created { " (a new replica)" } else { "" },
                    rep.points,
                    rep.packs_copied,
                    rep.packs,
                    output::bytes(rep.bytes_copied),
                    rep.packs_removed,
                    rep.seconds
                ) + &kept_for_readers(rep.packs_kept_for_readers)
            })?;
        }
        Command::Mount { mountpoint, allow_other, allow_group, nonempty } => {
            mount::run(&vault_dir, &mountpoint, allow_other, allow_group.as_deref(), nonempty, &out)?;
        }
        Command::Umount { mountpoint } => {
            mount::umount(&mountpoint)?;
            out.result(&serde_json::json!({"unmounted": mountpoint}), || format!("unmounted {}", mountpoint.display()))?;
        }
        Command::Files { cmd } => files::run(&vault_dir, cmd, &out)?,
        Command::Protected(cmd) => protect::run(cmd, &vault_dir, &out, &bars)?,
    }
    std::io::stdout().flush().map_err(|e| Error::io("write output", e))?;
    Ok(Outcome::Ok)
}

/// Checks `--disk NAME=PATH` while clap parses, so a malformed one is a
/// usage error (exit 2) like any other.
fn disk_arg(s: &str) -> std::result::Result<String, String> {
    parse_disk_arg(s).map(|_| s.to_owned()).map_err(|_| "expected NAME=PATH (e.g. os=/var/lib/images/os.raw)".to_owned())
}

fn parse_disk_arg(s: &str) -> Result<(String, PathBuf)> {
    match s.split_once('=') {
        Some((n, p)) if !n.is_empty() && !p.is_empty() => Ok((n.to_owned(), PathBuf::from(p))),
        _ => Err(Error::InvalidInput(format!("--disk {s:?}: expected NAME=PATH"))),
    }
}

/// The tail of gc's and replicate's line when packs wait for readers.
fn kept_for_readers(n: u64) -> String {
    if n == 0 { String::new() } else { format!("; {n} packs kept for open readers (a later run removes them)") }
}
