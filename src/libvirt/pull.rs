//! A libvirt pull-mode backup job and its checkpoints (see the module docs
//! of crate::libvirt for the sequence).
//!
//! Files: the NBD socket `PID-DOMAIN.sock` and one scratch file per disk
//! `PID-DOMAIN-TARGET.scratch` (where QEMU keeps the old content of blocks
//! the guest overwrites while the job runs) live in [`run_dir`], a directory
//! QEMU's user may write: for the system daemon `/var/lib/libvirt/kluis`,
//! owned like `/var/lib/libvirt/qemu` (libvirt's QEMU user), since QEMU
//! itself binds the socket and opens the scratch files. A socket left by a
//! kluis that was killed (its PID gone) means its job may still run: the
//! next backup of the domain ends that job and removes the files first.
//!
//! Checkpoints are named `kluis-ITEM-MILLIS`; only qcow2 disks can carry
//! their bitmaps, so other disks are left out of them (and are read whole).

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{Domain, DomainRef, Virsh};
use crate::backup::Tracker;
use crate::error::{Error, Result};
use crate::jobs::JobLog;
use crate::recovery_point::Manifest;

/// The dirty bitmap libvirt exports for an incremental disk (we name it
/// ourselves, as libvirt's default would be, so as not to depend on it).
pub fn export_bitmap(target: &str) -> String {
    format!("backup-{target}")
}

/// Where sockets and scratch files go (see the module docs).
pub fn run_dir(connect: Option<&str>) -> Result<PathBuf> {
    let system = connect.is_none_or(|c| c.contains("/system"));
    let qemu_home = Path::new("/var/lib/libvirt/qemu");
    let is_root = unsafe { libc::geteuid() } == 0;
    if system && is_root && qemu_home.is_dir() {
        let dir = PathBuf::from("/var/lib/libvirt/kluis");
        make_dir(&dir, 0o750)?;
        let owner = fs::metadata(qemu_home).map_err(|e| Error::io_path("stat", qemu_home, e))?;
        let meta = fs::metadata(&dir).map_err(|e| Error::io_path("stat", &dir, e))?;
        if (meta.uid(), meta.gid()) != (owner.uid(), owner.gid()) {
            std::os::unix::fs::chown(&dir, Some(owner.uid()), Some(owner.gid())).map_err(|e| Error::io_path("chown", &dir, e))?;
        }
        return Ok(dir);
    }
    let base = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("kluis-libvirt-{}", unsafe { libc::geteuid() }));
    make_dir(&dir, 0o700)?;
    Ok(dir)
}

fn make_dir(dir: &Path, mode: u32) -> Result<()> {
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io_path("cannot create", dir, e)),
    }
}

/// A socket path short enough for sun_path (108 bytes).
pub fn socket_path(dir: &Path, domain: &str) -> PathBuf {
    let short: String = domain.chars().take(40).collect();
    dir.join(format!("{}-{short}.sock", std::process::id()))
}

/// `nbd+unix:///TARGET?socket=PATH`
pub fn export_url(socket: &Path, target: &str) -> String {
    format!("nbd+unix:///{target}?socket={}", socket.display())
}

/// Ends jobs and removes files that a killed kluis left for `domain`.
fn reap_stale(virsh: &Virsh, domain: &str, dir: &Path, log: &mut JobLog) {
    let short: String = domain.chars().take(40).collect();
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((pid, rest)) = name.split_once('-') else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() || !rest.starts_with(short.as_str()) {
            continue;
        }
        if rest == format!("{short}.sock") && virsh.run(&["domjobabort", domain]).is_ok() {
            log.warn(format!("ended the backup job of {domain} that a killed kluis (pid {pid}) left running"));
        }
        let _ = fs::remove_file(e.path());
    }
}

/// Checkpoint names of `item` are `kluis-ITEM-MILLIS`: the item, if `name` is one.
fn checkpoint_item(name: &str) -> Option<&str> {
    let (item, ms) = name.strip_prefix("kluis-")?.rsplit_once('-')?;
    (!ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit())).then_some(item)
}

/// The checkpoint a disk's manifest entry records (`checkpoint:NAME`).
pub fn recorded_checkpoint(tracking: Option<&str>) -> Option<&str> {
    tracking?.strip_prefix("checkpoint:")
}

/// Per disk: the tracker of this run. `at` is the checkpoint this job
/// creates; a disk is incremental from the checkpoint its previous point
/// recorded when libvirt still has it and the disk is qcow2.
pub fn plan(domain: &Domain, at: &str, previous: Option<&Manifest>, existing: &HashSet<String>) -> Vec<(String, Tracker)> {
    domain
        .disks
        .iter()
        .map(|d| {
            let since = if d.format.as_deref() != Some("qcow2") {
                Err(format!("it is {} and libvirt keeps checkpoint bitmaps only for qcow2 disks", d.format.as_deref().unwrap_or("of unknown format")))
            } else {
                match previous.map(|m| m.disks.iter().find(|e| e.name == d.target)) {
                    None | Some(None) => Err("no earlier point of this disk to base on".to_owned()),
                    Some(Some(e)) => match recorded_checkpoint(e.tracking.as_deref()) {
                        None => Err("the previous point has no libvirt checkpoint (it was taken another way)".to_owned()),
                        Some(c) if !existing.contains(c) => Err(format!("libvirt no longer has checkpoint {c} of the previous point")),
                        Some(c) => Ok((c.to_owned(), export_bitmap(&d.target))),
                    },
                }
            };
            let at = if d.format.as_deref() == Some("qcow2") { at.to_owned() } else { String::new() };
            (d.target.clone(), Tracker::Checkpoint { at, since })
        })
        .collect()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;").replace('"', "&quot;")
}

/// The `<domainbackup>` and `<domaincheckpoint>` documents for a job.
fn job_xml(plan: &[(String, Tracker)], socket: &Path, scratch: &dyn Fn(&str) -> PathBuf, checkpoint: &str) -> (String, String) {
    let mut b = format!("<domainbackup mode='pull'>\n  <server transport='unix' socket='{}'/>\n  <disks>\n", xml_escape(&socket.to_string_lossy()));
    let mut c = format!("<domaincheckpoint>\n  <name>{}</name>\n  <disks>\n", xml_escape(checkpoint));
    for (target, t) in plan {
        let t_esc = xml_escape(target);
        let mode = match t {
            Tracker::Checkpoint { since: Ok((since, bitmap)), .. } => {
                format!("backupmode='incremental' incremental='{}' exportbitmap='{}'", xml_escape(since), xml_escape(bitmap))
            }
            _ => "backupmode='full'".to_owned(),
        };
        b += &format!(
            "    <disk name='{t_esc}' backup='yes' type='file' {mode} exportname='{t_esc}'>\n      <scratch file='{}'/>\n    </disk>\n",
            xml_escape(&scratch(target).to_string_lossy())
        );
        let in_checkpoint = matches!(t, Tracker::Checkpoint { at, .. } if !at.is_empty());
        c += &format!("    <disk name='{t_esc}' checkpoint='{}'/>\n", if in_checkpoint { "bitmap" } else { "no" });
    }
    // Disks kluis skips (cdrom, floppy) are left out of both: libvirt then
    // leaves them alone.
    b += "  </disks>\n</domainbackup>\n";
    c += "  </disks>\n</domaincheckpoint>\n";
    (b, c)
}

/// A running pull-mode backup job: ended on drop, whatever happened.
pub struct PullJob {
    virsh: Virsh,
    domain: String,
    /// The checkpoint made with the job.
    pub checkpoint: String,
    /// (disk, tracker) for crate::backup.
    pub tracking: Vec<(String, Tracker)>,
    /// (disk, NBD URL)
    pub exports: Vec<(String, String)>,
    files: Vec<PathBuf>,
    active: bool,
}

impl PullJob {
    /// Starts the job with checkpoint `kluis-ITEM-MILLIS`.
    pub fn begin(r: &DomainRef, domain: &Domain, item: &str, previous: Option<&Manifest>, socket: &Path, log: &mut JobLog) -> Result<PullJob> {
        let virsh = r.virsh();
        let dir = socket.parent().expect("socket in a directory");
        reap_stale(&virsh, &r.domain, dir, log);
        let existing: HashSet<String> = virsh.run(&["checkpoint-list", &r.domain, "--name"])?.lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect();
        let checkpoint = format!("kluis-{item}-{}", crate::catalog::now_ms());
        let tracking = plan(domain, &checkpoint, previous, &existing);
        let stem = socket.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        let scratch = |t: &str| dir.join(format!("{stem}-{t}.scratch"));
        let (bxml, cxml) = job_xml(&tracking, socket, &scratch, &checkpoint);
        let tmp = tempfile::Builder::new().prefix("kluis-libvirt-").tempdir().map_err(|e| Error::io("cannot create a temporary directory", e))?;
        let (bpath, cpath) = (tmp.path().join("backup.xml"), tmp.path().join("checkpoint.xml"));
        fs::write(&bpath, &bxml).map_err(|e| Error::io_path("write", &bpath, e))?;
        fs::write(&cpath, &cxml).map_err(|e| Error::io_path("write", &cpath, e))?;
        let mut files: Vec<PathBuf> = tracking.iter().map(|(t, _)| scratch(t)).collect();
        files.push(socket.to_owned());
        for f in &files {
            let _ = fs::remove_file(f);
        }
        // Registered before the job exists: a second Ctrl-C during
        // backup-begin still ends it.
        super::set_emergency(super::Slot::Job, Some(virsh.argv(&["domjobabort", &r.domain])));
        let mut job = PullJob { virsh, domain: r.domain.clone(), checkpoint, tracking, exports: Vec::new(), files, active: true };
        let with_cp = job.tracking.iter().any(|(_, t)| matches!(t, Tracker::Checkpoint { at, .. } if !at.is_empty()));
        let (b, c) = (bpath.to_string_lossy().into_owned(), cpath.to_string_lossy().into_owned());
        let mut args = vec!["backup-begin", &r.domain, &b];
        if with_cp {
            args.push(&c);
        }
        if let Err(e) = job.virsh.run(&args) {
            job.active = false;
            super::set_emergency(super::Slot::Job, None);
            return Err(Error::InvalidInput(format!("libvirt backup of {}: {e}", r.domain)));
        }
        if !with_cp {
            job.checkpoint.clear();
        }
        job.exports = job.tracking.iter().map(|(t, _)| (t.clone(), export_url(socket, t))).collect();
        let incremental: Vec<String> = job.tracking.iter().filter_map(|(t, tr)| match tr {
            Tracker::Checkpoint { since: Ok((c, _)), .. } => Some(format!("{t} since {c}")),
            _ => None,
        }).collect();
        let untracked: Vec<String> = job.tracking.iter().filter_map(|(t, tr)| match tr {
            Tracker::Checkpoint { at, since: Err(why) } if at.is_empty() => Some(format!("{t} ({why})")),
            _ => None,
        }).collect();
        log.step(format!(
            "libvirt: backup job of {} begun{}; {}{}",
            r.domain,
            if job.checkpoint.is_empty() { String::new() } else { format!(" with checkpoint {}", job.checkpoint) },
            if incremental.is_empty() { "no disk incremental".to_owned() } else { format!("incremental: {}", incremental.join(", ")) },
            if untracked.is_empty() { String::new() } else { format!("; always read whole and compared by hash: {}", untracked.join(", ")) }
        ));
        Ok(job)
    }

    /// The trackers for crate::backup: disks libvirt cannot checkpoint have
    /// none (they are read whole every time, which is not worth a warning).
    pub fn trackers(&self) -> Vec<(String, Tracker)> {
        self.tracking.iter().filter(|(_, t)| matches!(t, Tracker::Checkpoint { at, .. } if !at.is_empty())).cloned().collect()
    }

    /// Ends the job (`domjobabort`, which is how a pull-mode job ends) and
    /// removes its socket and scratch files.
    pub fn end(&mut self) -> Result<()> {
        if !self.active {
            return Ok(());
        }
        self.active = false;
        let r = self.virsh.run(&["domjobabort", &self.domain]);
        super::set_emergency(super::Slot::Job, None);
        for f in &self.files {
            let _ = fs::remove_file(f);
        }
        r.map(|_| ()).map_err(|e| Error::InvalidInput(format!("could not end the libvirt backup job of {}: {e} (run `virsh domjobabort {}`)", self.domain, self.domain)))
    }
}

impl Drop for PullJob {
    fn drop(&mut self) {
        if let Err(e) = self.end() {
            log::error!("{e}");
        }
    }
}

/// Deletes the item's checkpoints that no longer serve: every
/// `kluis-ITEM-*` checkpoint but the one the item's latest point recorded
/// (after a failed run, that is the previous point's, so the failed run's
/// new checkpoint goes). Failures are warnings: the next run tries again.
pub fn drop_stale_checkpoints(r: &DomainRef, item: &str, latest: Option<&Manifest>, log: &mut JobLog) {
    let virsh = r.virsh();
    let keep: HashSet<&str> = latest.map(|m| m.disks.iter().filter_map(|d| recorded_checkpoint(d.tracking.as_deref())).collect()).unwrap_or_default();
    let list = match virsh.run(&["checkpoint-list", &r.domain, "--name"]) {
        Ok(l) => l,
        Err(e) => {
            log.warn(format!("libvirt: cannot list the checkpoints of {}: {e}", r.domain));
            return;
        }
    };
    for name in list.lines().map(str::trim).filter(|n| checkpoint_item(n) == Some(item) && !keep.contains(n)) {
        match virsh.run(&["checkpoint-delete", &r.domain, name]) {
            Ok(_) => log.step(format!("libvirt: deleted checkpoint {name}, which no point needs")),
            Err(e) => log.warn(format!("libvirt: could not delete checkpoint {name}: {e}")),
        }
    }
}

/// The guest's file systems frozen through the QEMU guest agent; thawed by
/// [`GuestFreeze::thaw`] or on drop.
pub struct GuestFreeze {
    r: DomainRef,
    frozen: bool,
}

impl GuestFreeze {
    /// Freezes through the agent (`domfsfreeze`).
    pub fn freeze(r: &DomainRef) -> Result<GuestFreeze> {
        super::set_emergency(super::Slot::Thaw, Some(r.virsh().argv(&["domfsthaw", &r.domain])));
        match r.virsh().run(&["domfsfreeze", &r.domain]) {
            Ok(_) => Ok(GuestFreeze { r: r.clone(), frozen: true }),
            Err(e) => {
                // A freeze that failed halfway may have frozen some: thaw.
                let _ = r.virsh().run(&["domfsthaw", &r.domain]);
                super::set_emergency(super::Slot::Thaw, None);
                Err(e)
            }
        }
    }

    pub fn thaw(&mut self) -> Result<()> {
        if !self.frozen {
            return Ok(());
        }
        self.frozen = false;
        let r = self.r.virsh().run(&["domfsthaw", &self.r.domain]);
        super::set_emergency(super::Slot::Thaw, None);
        r.map(|_| ())
    }
}

impl Drop for GuestFreeze {
    fn drop(&mut self) {
        if let Err(e) = self.thaw() {
            log::error!("thaw the guest file systems of {}: {e} (run `virsh domfsthaw {}`)", self.r.domain, self.r.domain);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::DomDisk;
    use crate::recovery_point::DiskEntry;

    fn disk(t: &str, fmt: &str) -> DomDisk {
        DomDisk { target: t.into(), kind: "file".into(), source: None, format: Some(fmt.into()) }
    }

    fn entry(name: &str, tracking: Option<&str>) -> DiskEntry {
        DiskEntry {
            name: name.into(),
            size: 1,
            block_size: 65536,
            depth: 1,
            root: "00".repeat(32),
            source: String::new(),
            source_kind: "nbd".into(),
            tracking: tracking.map(str::to_owned),
            base: None,
            fallback: None,
        }
    }

    #[test]
    fn checkpoint_names_belong_to_their_item_only() {
        assert_eq!(checkpoint_item("kluis-web-01-1700000000000"), Some("web-01"));
        assert_eq!(checkpoint_item("kluis-web-1700000000000"), Some("web"));
        assert_eq!(checkpoint_item("kluis-web-"), None);
        assert_eq!(checkpoint_item("virtnbdbackup.0"), None);
    }

    #[test]
    fn plan_is_incremental_only_from_a_checkpoint_libvirt_still_has() {
        let dom = Domain { name: "d".into(), state: "running".into(), xml: String::new(), disks: vec![disk("vda", "qcow2"), disk("vdb", "qcow2"), disk("vdc", "raw"), disk("vdd", "qcow2")] };
        let prev = Manifest {
            version: 1,
            item: "i".into(),
            time: String::new(),
            consistency: "crash".into(),
            disks: vec![entry("vda", Some("checkpoint:kluis-i-1")), entry("vdb", Some("checkpoint:kluis-i-0")), entry("vdc", None)],
            configs: vec![],
        };
        let existing: HashSet<String> = ["kluis-i-1".to_owned()].into();
        let p = plan(&dom, "kluis-i-2", Some(&prev), &existing);
        let since: Vec<_> = p.iter().map(|(_, t)| match t { Tracker::Checkpoint { since, .. } => since.clone(), _ => unreachable!() }).collect();
        assert_eq!(since[0], Ok(("kluis-i-1".to_owned(), "backup-vda".to_owned())));
        assert!(since[1].as_ref().unwrap_err().contains("no longer has checkpoint kluis-i-0"));
        assert!(since[2].as_ref().unwrap_err().contains("qcow2"));
        assert_eq!(since[3], Err("no earlier point of this disk to base on".to_owned()));
        // A raw disk is left out of the checkpoint.
        assert!(matches!(&p[2].1, Tracker::Checkpoint { at, .. } if at.is_empty()));
        let (b, c) = job_xml(&p, Path::new("/run/x.sock"), &|t| PathBuf::from(format!("/run/x-{t}.scratch")), "kluis-i-2");
        assert!(b.contains("<disk name='vda' backup='yes' type='file' backupmode='incremental' incremental='kluis-i-1' exportbitmap='backup-vda' exportname='vda'>"));
        assert!(b.contains("<disk name='vdb' backup='yes' type='file' backupmode='full' exportname='vdb'>"));
        assert!(c.contains("<disk name='vdc' checkpoint='no'/>") && c.contains("<disk name='vda' checkpoint='bitmap'/>"));
    }
}
