//! libvirt domains as protected items: every disk of a domain (cdrom and
//! floppy skipped), each named after its target device (`vda`, `sdb`), with
//! the domain XML kept as the config file `DOMAIN.xml`.
//!
//! # Why `virsh`, not the `virt` crate
//!
//! The `virt` crate binds libvirt's C library: every machine that builds
//! kluis would need libvirt-dev, and the binary would link libvirt.so even
//! for users who never touch a VM host. `virsh` is on every machine that runs
//! libvirt (it comes with the client package), speaks to the same daemon
//! through the same URIs (`--connect`), and its XML in and out is libvirt's
//! own stable interface. What we give up is a typed API and a little speed
//! (one process per call, a dozen calls per backup); what we keep is a
//! kluis without a C dependency. All calls go through [`Virsh`].
//!
//! # Running domains: libvirt's pull-mode backup
//!
//! ```text
//! pre-script ─▶ guest freeze (agent) ─▶ backup-begin + checkpoint ─▶ thaw ─▶ post-script
//!            ─▶ read every disk over NBD ─▶ store the point ─▶ end the job ─▶ drop stale checkpoints
//! ```
//!
//! `virsh backup-begin` starts a pull-mode backup (crate::libvirt::pull)
//! with a new checkpoint `kluis-ITEM-N` created at the same instant. QEMU
//! exposes each disk at that instant as an NBD export named after its
//! target, on a unix socket in a directory its user may use; disks whose
//! previous point recorded a checkpoint that libvirt still has are
//! incremental from it, and their export carries the dirty bitmap
//! `qemu:dirty-bitmap:backup-TARGET`: only those extents are read, the rest
//! comes from that point (crate::backup's `Tracker::Checkpoint`). Each disk
//! records `checkpoint:NAME` in its manifest entry, which is what the next
//! run looks for. The job is always ended (`domjobabort`): on success, on
//! any error, on SIGINT/SIGTERM (the guard's Drop) and on a second signal
//! (an emergency `virsh` run from the handler). Checkpoints of the item
//! that no longer serve (every one but the one the latest point recorded)
//! are deleted after each backup.
//!
//! With the QEMU guest agent answering `guest-ping`, the guest's file
//! systems are frozen (`domfsfreeze`) from just before the job begins to
//! just after, and the point is file-system consistent.
//!
//! # Shut-off domains
//!
//! The disk files are read directly (raw, qcow2 with its backing chain,
//! block devices), like any item's disks; a domain whose last shutdown was
//! the guest's own (`shut off (shutdown)`) is file-system consistent.

pub mod define;
pub mod pull;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A protected item's libvirt domain.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DomainRef {
    pub domain: String,
    /// libvirt connection URI (`--connect`); None: virsh's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
}

impl DomainRef {
    pub fn virsh(&self) -> Virsh {
        Virsh { connect: self.connect.clone() }
    }
}

/// Runs `virsh [-c URI] ...`.
#[derive(Clone, Debug)]
pub struct Virsh {
    pub connect: Option<String>,
}

impl Virsh {
    /// The argument vector for `virsh` with the connection.
    pub fn argv(&self, args: &[&str]) -> Vec<String> {
        let mut v = vec!["virsh".to_owned(), "-q".to_owned()];
        if let Some(c) = &self.connect {
            v.push("-c".into());
            v.push(c.clone());
        }
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// Runs virsh; its stdout, or an error with virsh's own message.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let argv = self.argv(args);
        let out = Command::new(&argv[0]).args(&argv[1..]).stdin(Stdio::null()).output().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound("virsh is not installed (it comes with libvirt's client tools, Debian package libvirt-clients)".into())
            } else {
                Error::io("cannot run virsh", e)
            }
        })?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        Err(VirshError { what: args.first().copied().unwrap_or("").to_owned(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }.into())
    }
}

/// What a failed virsh call said: its `error: ...` lines, joined.
struct VirshError {
    what: String,
    stderr: String,
}

impl VirshError {
    fn message(&self) -> String {
        let lines: Vec<&str> = self.stderr.lines().map(|l| l.trim()).filter(|l| !l.is_empty()).map(|l| l.strip_prefix("error: ").unwrap_or(l)).collect();
        // virsh says "failed to get domain 'x'" and then the reason.
        let msg = lines.join(": ");
        if msg.is_empty() { "failed (no message)".into() } else { msg }
    }
}

impl From<VirshError> for Error {
    fn from(e: VirshError) -> Error {
        let m = e.message();
        let text = format!("virsh {}: {m}", e.what);
        if m.contains("Domain not found") || m.contains("failed to get domain") {
            Error::NotFound(text)
        } else {
            Error::InvalidInput(text)
        }
    }
}

/// Kinds of `<disk device=...>` kluis backs up: cdroms and floppies are
/// media, not the machine's state.
fn is_backed_up(device: &str) -> bool {
    !matches!(device, "cdrom" | "floppy")
}

/// One disk of a domain, as its XML describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomDisk {
    /// Target device (`vda`): the disk's name in the vault.
    pub target: String,
    /// `<disk type=...>`: file, block, network, volume, ...
    pub kind: String,
    /// The file or device it reads (`<source file|dev>`), when it is one.
    pub source: Option<PathBuf>,
    /// `<driver type=...>`: raw, qcow2, ...
    pub format: Option<String>,
}

/// The domain as kluis needs it.
#[derive(Clone, Debug)]
pub struct Domain {
    pub name: String,
    /// `virsh domstate --reason`, e.g. `running (booted)`, `shut off (shutdown)`.
    pub state: String,
    /// Its persistent definition (or the live one for a transient domain).
    pub xml: String,
    pub disks: Vec<DomDisk>,
}

impl Domain {
    pub fn is_running(&self) -> bool {
        // A paused domain has a QEMU process too, and a backup job works on it.
        !self.state.starts_with("shut off") && !self.state.starts_with("crashed")
    }
}

/// Looks up `r`: its state, XML and the disks to back up. A domain that
/// does not exist is a NotFound error naming it.
pub fn domain(r: &DomainRef) -> Result<Domain> {
    let v = r.virsh();
    let state = v.run(&["domstate", "--reason", &r.domain]).map_err(|e| match e {
        Error::NotFound(_) => Error::NotFound(format!(
            "libvirt domain {:?} does not exist{}",
            r.domain,
            r.connect.as_deref().map(|c| format!(" on {c}")).unwrap_or_default()
        )),
        e => e,
    })?;
    let state = state.trim().to_owned();
    // The inactive XML is what a restore defines again; the live one has
    // the same disks, but may name its runtime state (aliases, ports).
    let xml = v.run(&["dumpxml", "--inactive", "--security-info", &r.domain])?;
    let (name, disks) = parse_domain(&xml)?;
    if disks.is_empty() {
        return Err(Error::InvalidInput(format!("libvirt domain {name} has no disks to back up (cdroms and floppies are skipped)")));
    }
    for d in &disks {
        crate::backup::check_name("disk", &d.target)?;
    }
    Ok(Domain { name, state, xml, disks })
}

/// The first child element of `n` named `tag`.
fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(tag))
}

fn xml_error(e: roxmltree::Error) -> Error {
    Error::InvalidInput(format!("libvirt domain XML: {e}"))
}

/// The domain's name and the disks kluis backs up, in XML order.
pub fn parse_domain(xml: &str) -> Result<(String, Vec<DomDisk>)> {
    let doc = roxmltree::Document::parse(xml).map_err(xml_error)?;
    let root = doc.root_element();
    let name = child(root, "name").and_then(|n| n.text()).map(|s| s.trim().to_owned()).ok_or_else(|| Error::InvalidInput("libvirt domain XML has no <name>".into()))?;
    let mut disks = Vec::new();
    let Some(devices) = child(root, "devices") else { return Ok((name, disks)) };
    for d in devices.children().filter(|c| c.has_tag_name("disk")) {
        let device = d.attribute("device").unwrap_or("disk");
        if !is_backed_up(device) {
            continue;
        }
        let target = child(d, "target")
            .and_then(|t| t.attribute("dev"))
            .ok_or_else(|| Error::InvalidInput(format!("libvirt domain {name}: a disk has no <target dev=...>")))?
            .to_owned();
        let source = child(d, "source").and_then(|s| s.attribute("file").or_else(|| s.attribute("dev"))).map(PathBuf::from);
        disks.push(DomDisk {
            target,
            kind: d.attribute("type").unwrap_or("file").to_owned(),
            source,
            format: child(d, "driver").and_then(|x| x.attribute("type")).map(str::to_owned),
        });
    }
    Ok((name, disks))
}

/// A domain looked up for one backup: its disks as the backup reads them
/// and its XML in a temporary `DOMAIN.xml` to keep as config.
pub struct Resolved {
    pub r: DomainRef,
    pub domain: Domain,
    /// The NBD socket of the job, for a running domain.
    pub socket: Option<PathBuf>,
    pub config: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Resolved {
    pub fn new(r: &DomainRef) -> Result<Resolved> {
        let domain = domain(r)?;
        let tmp = tempfile::Builder::new().prefix("kluis-libvirt-").tempdir().map_err(|e| Error::io("cannot create a temporary directory", e))?;
        let config = tmp.path().join(format!("{}.xml", domain.name));
        std::fs::write(&config, &domain.xml).map_err(|e| Error::io_path("write", &config, e))?;
        let socket = if domain.is_running() { Some(pull::socket_path(&pull::run_dir(r.connect.as_deref())?, &domain.name)) } else { None };
        Ok(Resolved { r: r.clone(), domain, socket, config, _tmp: tmp })
    }

    /// (name, source) of every disk: the job's NBD exports for a running
    /// domain, the files or devices for a shut-off one.
    pub fn disks(&self) -> Result<Vec<(String, PathBuf)>> {
        self.domain
            .disks
            .iter()
            .map(|d| match (&self.socket, &d.source) {
                (Some(sock), _) => Ok((d.target.clone(), PathBuf::from(pull::export_url(sock, &d.target)))),
                (None, Some(p)) if matches!(d.kind.as_str(), "file" | "block") => Ok((d.target.clone(), p.clone())),
                (None, _) => Err(Error::InvalidInput(format!(
                    "disk {} of libvirt domain {} is a {} disk: kluis reads it only while the domain runs (through libvirt's backup job)",
                    d.target, self.domain.name, d.kind
                ))),
            })
            .collect()
    }

    /// A shut-off domain whose guest shut itself down: its disks are at rest.
    pub fn shut_down_cleanly(&self) -> bool {
        self.domain.state == "shut off (shutdown)"
    }
}

/// Whether the guest agent answers (a short `guest-ping`).
pub fn agent_answers(r: &DomainRef) -> bool {
    r.virsh().run(&["qemu-agent-command", "--timeout", "5", &r.domain, r#"{"execute":"guest-ping"}"#]).is_ok()
}

// ---------------------------------------------------------------- signals

/// What an emergency exit must still undo: thaw the guest, end the job.
#[derive(Clone, Copy)]
pub(crate) enum Slot {
    Thaw = 0,
    Job = 1,
}

/// A command prepared for a signal handler: nothing is allocated there.
struct Prepared {
    path: std::ffi::CString,
    _args: Vec<std::ffi::CString>,
    argv: Vec<*const libc::c_char>,
}

static EMERGENCY: [std::sync::atomic::AtomicPtr<Prepared>; 2] = [const { std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()) }; 2];

fn find_in_path(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).map(|d| d.join(cmd)).find(|p| p.is_file())
}

/// Sets (or clears) what [`emergency_cleanup`] runs for `slot`.
pub(crate) fn set_emergency(slot: Slot, argv: Option<Vec<String>>) {
    use std::ffi::CString;
    let new = argv
        .and_then(|a| {
            let path = CString::new(find_in_path(&a[0])?.into_os_string().into_encoded_bytes()).ok()?;
            let args: Vec<CString> = a.into_iter().map(|s| CString::new(s).ok()).collect::<Option<_>>()?;
            let mut argv: Vec<*const libc::c_char> = args.iter().map(|c| c.as_ptr()).collect();
            argv.push(std::ptr::null());
            Some(Box::into_raw(Box::new(Prepared { path, _args: args, argv })))
        })
        .unwrap_or(std::ptr::null_mut());
    let old = EMERGENCY[slot as usize].swap(new, std::sync::atomic::Ordering::SeqCst);
    if !old.is_null() {
        // Swapped out, so no handler holds it.
        drop(unsafe { Box::from_raw(old) });
    }
}

/// For a signal handler about to `_exit`: thaws the guest and ends the
/// backup job this process started, by running virsh (fork, execv and
/// waitpid only: async-signal-safe). Normal paths end them through
/// [`pull::PullJob`] and [`pull::GuestFreeze`].
pub fn emergency_cleanup() {
    for slot in &EMERGENCY {
        let p = slot.swap(std::ptr::null_mut(), std::sync::atomic::Ordering::SeqCst);
        if p.is_null() {
            continue;
        }
        unsafe {
            let c = &*p;
            let pid = libc::fork();
            if pid == 0 {
                libc::execv(c.path.as_ptr(), c.argv.as_ptr());
                libc::_exit(127);
            } else if pid > 0 {
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_skip_cdrom_and_floppy() {
        let xml = r#"<domain type='qemu'><name>web01</name><devices>
            <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/var/lib/libvirt/images/web01.qcow2'/><target dev='vda' bus='virtio'/></disk>
            <disk type='file' device='cdrom'><source file='/iso/debian.iso'/><target dev='sda' bus='sata'/></disk>
            <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg/data'/><target dev='sdb' bus='scsi'/></disk>
            <disk type='file' device='floppy'><target dev='fda'/></disk>
            </devices></domain>"#;
        let (name, disks) = parse_domain(xml).unwrap();
        assert_eq!(name, "web01");
        let t: Vec<(&str, &str, Option<&str>)> = disks.iter().map(|d| (d.target.as_str(), d.kind.as_str(), d.format.as_deref())).collect();
        assert_eq!(t, vec![("vda", "file", Some("qcow2")), ("sdb", "block", Some("raw"))]);
        assert_eq!(disks[1].source.as_deref(), Some(std::path::Path::new("/dev/vg/data")));
    }

    #[test]
    fn virsh_errors_read_as_one_line() {
        let e: Error = VirshError { what: "domstate".into(), stderr: "error: failed to get domain 'nope'\nerror: Domain not found: no domain with matching name 'nope'\n".into() }.into();
        assert!(matches!(e, Error::NotFound(_)));
        assert_eq!(e.to_string(), "virsh domstate: failed to get domain 'nope': Domain not found: no domain with matching name 'nope'");
    }
}
