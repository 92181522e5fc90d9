//! The VM restores: `restore --libvirt-define NEWNAME --to-dir DIR` (a new
//! domain from a point) and `restore --disk NAME --to EXISTING --in-place`
//! (rewrite only the differing blocks).

use std::path::{Path, PathBuf};

use kluis::image::TargetFormat;
use kluis::vault::Vault;
use kluis::{Error, Result};

use super::output::{bytes, Out};
use super::progress::Bars;
use super::CANCEL;

fn item_of(point: &str) -> &str {
    point.split_once('@').map_or(point, |(i, _)| i)
}

pub fn in_place(vault_dir: &Path, point: &str, disk: &[String], to: &[PathBuf], out: &Out, bars: &Bars) -> Result<()> {
    let (disk, to) = match (disk, to) {
        ([d], [t]) => (d, t),
        _ => return Err(Error::InvalidInput("--in-place rewrites one disk: give one --disk NAME and one --to EXISTING".into())),
    };
    let vault = Vault::open(vault_dir)?;
    let rep = kluis::jobs::run(&vault, "restore", Some(item_of(point)), |_| {
        let p = vault.select(point, false)?;
        kluis::restore_in_place::restore_in_place(&vault, &p, disk, to, bars, &CANCEL)
    })?;
    out.result(&rep, || {
        format!(
            "restored {}/{} in place into {} ({}): {} of {} blocks differed, {} written, {} read, {:.1}s",
            rep.item,
            rep.disk,
            rep.target,
            rep.format,
            rep.blocks_written,
            rep.blocks,
            bytes(rep.bytes_written),
            bytes(rep.bytes_read),
            rep.seconds
        )
    })
}

#[allow(clippy::too_many_arguments)]
pub fn define(vault_dir: &Path, point: &str, name: &str, connect: Option<String>, dir: &Path, format: TargetFormat, force: bool, out: &Out, bars: &Bars) -> Result<()> {
    let vault = Vault::open(vault_dir)?;
    let virsh = kluis::libvirt::Virsh { connect };
    let rep = kluis::jobs::run(&vault, "restore", Some(item_of(point)), |_| {
        let p = vault.select(point, false)?;
        kluis::libvirt::define::define_from_point(&vault, &p, &virsh, name, dir, format, force, bars, &CANCEL)
    })?;
    out.result(&rep, || {
        let disks: Vec<String> = rep.disks.iter().map(|d| format!("{} -> {}", d.disk, d.target)).collect();
        format!("defined libvirt domain {} (not started) from {}@{}: {}; its XML is {}", rep.domain, rep.item, &rep.point[..8], disks.join(", "), rep.xml)
    })
}
