//! Consistent multi-disk recovery points: scripts, file-system freeze and
//! point-in-time copies around a backup. docs/consistency.md is the user's
//! guide; this is the contract.
//!
//! # Sequence
//!
//! ```text
//! pre-script ─▶ freeze ─▶ point-in-time copies ─▶ thaw ─▶ post-script ─▶ read + store ─▶ release
//!                             (no copy of some disk: read + store here, holding the freeze)
//! ```
//!
//! 1. **pre-script** (`/bin/sh -c CMD` in `/`, own process group; its
//!    program must not be a relative path, see [`check_script`]): environment
//!    `KLUIS_ITEM`, `KLUIS_PHASE=pre`, `KLUIS_DISKS` (`NAME=PATH` lines),
//!    `KLUIS_DISK_<NAME>`, `KLUIS_FREEZE`, `KLUIS_VAULT`; a JSON description
//!    on stdin. It may print protocol lines on stdout:
//!    `snapshot NAME=PATH` (read disk NAME from PATH, a snapshot the script
//!    made) and `consistency application|file-system|crash` (the level its
//!    own quiescing reached, e.g. after `virsh domfsfreeze`). Other lines are
//!    logged. Non-zero exit, a timeout or a signal abort the backup: nothing
//!    is stored.
//! 2. **freeze**: FIFREEZE on each `--freeze` mountpoint, after the safety
//!    checks of [`check_freezable`]. A freeze that fails is a warning: the
//!    point is then not file-system consistent.
//! 3. **copies**: per disk, the script's snapshot, else a FICLONE reflink of
//!    the source into a hidden temporary file beside it
//!    (`.kluis-pit-PID-NAME-N`), else none.
//! 4. **thaw** (FITHAW), then the **post-script** (`KLUIS_PHASE=post`,
//!    `KLUIS_STATUS=ok|failed|interrupted`, `KLUIS_CONSISTENCY`). When some
//!    disk has no copy but something was quiesced, the disks are read and
//!    stored *before* the thaw (the freeze is held for the whole read) and
//!    the point's capture says `held-freeze`.
//! 5. **read + store** from the copies (crate::backup), which are deleted
//!    afterwards; **release**: if the pre-script named snapshots, the
//!    post-script runs once more with `KLUIS_PHASE=release` and
//!    `KLUIS_SNAPSHOTS` to drop them.
//!
//! Thaw and the post-script always run once the sequence has begun: on
//! success, on any error (a failing pre-script included) and on
//! SIGINT/SIGTERM (the
//! CLI's handler sets `cancel`; a running pre-script is then killed). A
//! second signal makes the CLI exit at once, after [`emergency_thaw`]. A
//! failing post-script does not undo the point; the job says `warning`.
//!
//! # libvirt items
//!
//! For an item protected with `--libvirt` (crate::libvirt) the disks and the
//! domain XML are looked up first. A running domain's freeze is the guest
//! agent's (`domfsfreeze`, counted like a `--freeze` mountpoint) and its
//! point-in-time copy is libvirt's backup job (capture `libvirt-backup`),
//! which is ended after the read whatever happened, before the item's
//! stale checkpoints are dropped. A shut-off domain follows the plain
//! sequence on its disk files.
//!
//! # Levels
//!
//! - `application`: a pre-script exited 0 and either printed
//!   `consistency application`, or printed no level while every `--freeze`
//!   mountpoint (at least one) was frozen — a pre-script is taken to
//!   quiesce the application and the freeze to flush it;
//! - `file-system`: every `--freeze` mountpoint (at least one) was frozen,
//!   or the pre-script printed `consistency file-system`;
//! - `crash`: anything else, e.g. no scripts and no freeze: what a power cut
//!   would leave.
//!
//! The level is the highest of these that holds; every point stores it.
//!
//! # Capture
//!
//! `reflink`, `snapshot` or `reflink+snapshot`: every disk was read from a
//! point-in-time copy; `held-freeze`: some disk was read from its live
//! source while the quiesce (pre-script and/or freeze) was held; `live`:
//! some disk was read live with nothing held (a crash-consistent point whose
//! disks are not from one instant).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::backup::{self, BackupReport, BackupRequest};
use crate::error::{Error, Result};
use crate::jobs::{JobLog, JobOutcome};
use crate::progress::Progress;
use crate::protect::ItemDef;
use crate::vault::Vault;

pub const DEFAULT_SCRIPT_TIMEOUT_S: u64 = 600;
/// Prefix of the temporary reflink copies beside a disk's source.
pub const COPY_PREFIX: &str = ".kluis-pit-";

// linux/fs.h: _IOWR('X', 119, int), _IOWR('X', 120, int), _IOW(0x94, 9, int)
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;
const FICLONE: libc::c_ulong = 0x4004_9409;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    Crash,
    FileSystem,
    Application,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Crash => "crash",
            Level::FileSystem => "file-system",
            Level::Application => "application",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "crash" => Some(Level::Crash),
            "file-system" | "filesystem" => Some(Level::FileSystem),
            "application" | "app" => Some(Level::Application),
            _ => None,
        }
    }
}

/// The level a capture reached; see the module docs.
pub fn level(pre_ok: bool, declared: Option<Level>, all_frozen: bool) -> Level {
    let frozen = if all_frozen { Level::FileSystem } else { Level::Crash };
    match (pre_ok, declared) {
        (true, Some(d)) => d.max(frozen),
        (true, None) if all_frozen => Level::Application,
        _ => frozen,
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ItemBackupReport {
    #[serde(flatten)]
    pub backup: BackupReport,
    pub consistency: String,
    pub capture: String,
    pub warnings: Vec<String>,
}

impl JobOutcome for ItemBackupReport {
    fn bytes(&self) -> (u64, u64) {
        (self.backup.disks.iter().map(|d| d.bytes_read).sum(), self.backup.stored_bytes)
    }
    fn detail(&self) -> serde_json::Value {
        json!({"point": self.backup.id, "time": self.backup.time, "consistency": self.consistency, "capture": self.capture})
    }
}

// ---------------------------------------------------------------- freeze

/// Descriptors of frozen file systems, for [`emergency_thaw`] from a
/// signal handler (atomics and ioctl(2) only: async-signal-safe).
static FROZEN_FDS: [AtomicI32; 32] = [const { AtomicI32::new(-1) }; 32];

/// Thaws every file system this process froze. For a signal handler that is
/// about to `_exit`: normal paths thaw through [`Frozen`].
pub fn emergency_thaw() {
    crate::libvirt::emergency_cleanup();
    for slot in &FROZEN_FDS {
        let fd = slot.swap(-1, Ordering::SeqCst);
        if fd >= 0 {
            unsafe { libc::ioctl(fd, FITHAW as _, 0) };
        }
    }
}

struct FrozenFs {
    mountpoint: PathBuf,
    file: File,
    slot: Option<usize>,
}

/// File systems frozen by this backup; thawed by `thaw_all` or on drop.
#[derive(Default)]
struct Frozen(Vec<FrozenFs>);

impl Frozen {
    fn freeze(&mut self, mountpoint: &Path) -> std::io::Result<()> {
        let file = File::open(mountpoint)?;
        if unsafe { libc::ioctl(file.as_raw_fd(), FIFREEZE as _, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = file.as_raw_fd();
        let slot = FROZEN_FDS.iter().position(|s| s.compare_exchange(-1, fd, Ordering::SeqCst, Ordering::SeqCst).is_ok());
        self.0.push(FrozenFs { mountpoint: mountpoint.to_owned(), file, slot });
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Thaws in reverse order; returns the failures.
    fn thaw_all(&mut self) -> Vec<(PathBuf, std::io::Error)> {
        let mut failed = Vec::new();
        while let Some(f) = self.0.pop() {
            if f.slot.is_some_and(|s| FROZEN_FDS[s].swap(-1, Ordering::SeqCst) < 0) {
                continue; // a signal handler thawed it already
            }
            if unsafe { libc::ioctl(f.file.as_raw_fd(), FITHAW as _, 0) } != 0 {
                failed.push((f.mountpoint, std::io::Error::last_os_error()));
            }
        }
        failed
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for (m, e) in self.thaw_all() {
            log::error!("thaw {}: {e} (run `fsfreeze -u {}`)", m.display(), m.display());
        }
    }
}

fn dev_of(p: &Path) -> Option<u64> {
    fs::metadata(p).ok().map(|m| m.dev())
}

/// Refuses mountpoints whose freeze would block kluis itself or the whole
/// system: not a mountpoint (the freeze would hit the file system holding
/// it), `/`, or the file system of the vault, the working directory, the
/// temporary directory, or the directory of a disk (where copies are made).
pub fn check_freezable(mountpoint: &Path, vault_root: &Path, disks: &[PathBuf]) -> Result<()> {
    let m = mountpoint.display();
    if !mountpoint.is_absolute() {
        return Err(Error::InvalidInput(format!("freeze {m}: give an absolute path")));
    }
    let meta = fs::metadata(mountpoint).map_err(|e| Error::io_path("freeze: cannot stat", mountpoint, e))?;
    if !meta.is_dir() {
        return Err(Error::InvalidInput(format!("freeze {m}: not a directory")));
    }
    let is_mount = match mountpoint.parent() {
        Some(parent) => dev_of(parent) != Some(meta.dev()),
        None => true,
    };
    if !is_mount {
        return Err(Error::InvalidInput(format!("refusing to freeze {m}: it is not a mountpoint (freezing it would freeze the file system that holds it)")));
    }
    let mut guarded: Vec<(String, PathBuf)> = vec![
        ("the root file system".into(), PathBuf::from("/")),
        ("the vault".into(), vault_root.to_owned()),
        ("the temporary directory".into(), std::env::temp_dir()),
    ];
    if let Ok(cwd) = std::env::current_dir() {
        guarded.push(("the working directory".into(), cwd));
    }
    for d in disks {
        let dir = d.parent().unwrap_or(Path::new("/"));
        guarded.push((format!("the directory of disk {}", d.display()), dir.to_owned()));
    }
    for (what, p) in guarded {
        if dev_of(&p) == Some(meta.dev()) {
            return Err(Error::InvalidInput(format!("refusing to freeze {m}: it is the file system of {what} ({})", p.display())));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- copies

/// A reflink copy beside a disk's source; removed on drop.
struct TempCopy {
    path: PathBuf,
}

impl Drop for TempCopy {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

static COPY_SEQ: AtomicU64 = AtomicU64::new(0);

/// FICLONE of `src` into a new file beside it; Err says why not.
fn reflink(src: &Path, disk: &str) -> std::result::Result<TempCopy, String> {
    let meta = fs::metadata(src).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let dir = src.parent().unwrap_or(Path::new("/"));
    let n = COPY_SEQ.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("{COPY_PREFIX}{}-{disk}-{n}", std::process::id()));
    let dst = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
    let copy = TempCopy { path };
    let s = File::open(src).map_err(|e| e.to_string())?;
    if unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, s.as_raw_fd()) } != 0 {
        return Err(format!("FICLONE: {}", std::io::Error::last_os_error()));
    }
    Ok(copy)
}

/// Removes copies left beside the sources by a kluis that was killed.
fn remove_stale_copies(disks: &[(String, PathBuf)]) {
    let mut dirs: Vec<&Path> = disks.iter().filter_map(|(_, p)| p.parent()).collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        let Ok(entries) = fs::read_dir(dir) else { continue };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(COPY_PREFIX)) else { continue };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                log::info!("removing {} left by an interrupted backup", e.path().display());
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

// ---------------------------------------------------------------- scripts

/// `KLUIS_DISK_<NAME>`: the name upper-cased, every other character `_`.
/// Names that give the same variable are refused when an item is protected
/// ([`check_disk_env_vars`]).
pub fn disk_env_var(name: &str) -> String {
    let key: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("KLUIS_DISK_{key}")
}

/// Refuses disk names that map to one `KLUIS_DISK_<NAME>` (`a-b`, `a_b`, `A-B`):
/// a script would see only one of the disks.
pub fn check_disk_env_vars<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<()> {
    let mut seen: HashMap<String, &str> = HashMap::new();
    for n in names {
        if let Some(other) = seen.insert(disk_env_var(n), n) {
            return Err(Error::InvalidInput(format!(
                "disk names {other:?} and {n:?} both become {} for scripts; rename one",
                disk_env_var(n)
            )));
        }
    }
    Ok(())
}

/// Refuses a script command whose program is a relative path (`./pre.sh`,
/// `bin/pre`): it would run whatever is at that path in the directory of
/// whoever runs the backup, the scheduler included. The command is one
/// string for `/bin/sh -c`, so the program is its first shell word after
/// any `NAME=value` assignments; a bare name (`pre.sh`) is looked up in
/// PATH, an absolute path or `~/…` is fixed.
pub fn check_script(what: &str, cmd: &str) -> Result<()> {
    let words = shell_words(cmd);
    let program = words.iter().find(|w| !is_assignment(w));
    if let Some(p) = program
        && p.contains('/')
        && !p.starts_with('/')
        && !p.starts_with('~')
    {
        return Err(Error::InvalidInput(format!(
            "{what} {cmd:?}: {p} is a relative path, which would run from whatever directory the backup starts in; give it as an absolute path"
        )));
    }
    Ok(())
}

fn is_assignment(w: &str) -> bool {
    w.split_once('=').is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !k.starts_with(|c: char| c.is_ascii_digit()))
}

/// The leading simple words of a shell command, quotes removed, up to the
/// first operator (`;`, `&`, `|`, `(`…) — enough to find its program.
fn shell_words(cmd: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = cmd.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if let Some(w) = cur.take() {
                    words.push(w);
                }
            }
            ';' | '&' | '|' | '(' | ')' | '<' | '>' => break,
            '\'' => {
                let w = cur.get_or_insert_with(String::new);
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    w.push(c);
                }
            }
            '"' => {
                let w = cur.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => w.extend(chars.next()),
                        c => w.push(c),
                    }
                }
            }
            '\\' => cur.get_or_insert_with(String::new).extend(chars.next()),
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(cur);
    words
}

#[derive(Debug)]
enum ScriptError {
    Failed(String),
    Interrupted,
}

struct ScriptOutput {
    stdout: String,
    status: ExitStatus,
    stderr: String,
    seconds: f64,
}

/// What every script run gets: the item, its disks, the vault.
struct ScriptEnv<'a> {
    item: &'a str,
    def: &'a ItemDef,
    vault: &'a Path,
    timeout: Duration,
}

impl ScriptEnv<'_> {
    fn env(&self, phase: &str, extra: &[(&str, String)]) -> Vec<(String, String)> {
        let mut env = vec![
            ("KLUIS_ITEM".to_owned(), self.item.to_owned()),
            ("KLUIS_PHASE".to_owned(), phase.to_owned()),
            ("KLUIS_VAULT".to_owned(), self.vault.display().to_string()),
            ("KLUIS_DISKS".to_owned(), self.def.disks.iter().map(|d| format!("{}={}\n", d.name, d.path.display())).collect()),
            ("KLUIS_FREEZE".to_owned(), self.def.freeze.iter().map(|f| format!("{}\n", f.display())).collect()),
        ];
        for d in &self.def.disks {
            env.push((disk_env_var(&d.name), d.path.display().to_string()));
        }
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        env
    }

    fn stdin(&self, phase: &str, extra: &[(&str, String)]) -> Vec<u8> {
        let mut v = json!({
            "item": self.item,
            "phase": phase,
            "disks": self.def.disks,
            "configs": self.def.configs,
            "freeze": self.def.freeze,
        });
        for (k, val) in extra {
            let key = k.trim_start_matches("KLUIS_").to_ascii_lowercase();
            v[key] = json!(val);
        }
        let mut b = serde_json::to_vec_pretty(&v).expect("json");
        b.push(b'\n');
        b
    }

    /// Runs `cmd` for `phase`; a cancel kills its process group.
    fn run(&self, what: &str, cmd: &str, phase: &str, extra: &[(&str, String)], cancel: Option<&AtomicBool>) -> std::result::Result<ScriptOutput, ScriptError> {
        let started = Instant::now();
        // A definition stored by an older kluis may still hold one.
        check_script(what, cmd).map_err(|e| ScriptError::Failed(format!("{e}; run `kluis protect` again with an absolute path")))?;
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            // The same directory whoever runs the backup (a user's shell,
            // the scheduler): a relative path in the command means one place.
            .current_dir("/")
            .envs(self.env(phase, extra))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| ScriptError::Failed(format!("{what} `{cmd}` could not start: {e}")))?;
        let input = self.stdin(phase, extra);
        let mut stdin = child.stdin.take().expect("piped");
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input); // a script need not read it
        });
        let (tx, rx) = crossbeam_channel::unbounded::<(usize, Vec<u8>)>();
        let pipes: [(usize, Box<dyn Read + Send>); 2] =
            [(0, Box::new(child.stdout.take().expect("piped"))), (1, Box::new(child.stderr.take().expect("piped")))];
        for (which, pipe) in pipes {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = pipe.take(1 << 20).read_to_end(&mut buf);
                let _ = tx.send((which, buf));
            });
        }
        drop(tx);
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) => {}
                Err(e) => return Err(ScriptError::Failed(format!("{what}: wait: {e}"))),
            }
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                kill_group(&mut child);
                return Err(ScriptError::Interrupted);
            }
            if started.elapsed() > self.timeout {
                kill_group(&mut child);
                return Err(ScriptError::Failed(format!("{what} `{cmd}` timed out after {}s and was killed", self.timeout.as_secs())));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // A script that leaves a background process holding its pipes must
        // not hang the backup: take what arrived within a moment.
        let (mut out, mut err) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            match rx.recv_timeout(Duration::from_secs(2)) {
                Ok((0, b)) => out = b,
                Ok((_, b)) => err = b,
                Err(_) => break,
            }
        }
        let output = ScriptOutput {
            stdout: String::from_utf8_lossy(&out).into_owned(),
            status,
            stderr: String::from_utf8_lossy(&err).into_owned(),
            seconds: started.elapsed().as_secs_f64(),
        };
        if !output.status.success() {
            let last = output.stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            let tail = if last.is_empty() { String::new() } else { format!(": {last}") };
            return Err(ScriptError::Failed(format!("{what} `{cmd}` failed ({}){tail}", describe(output.status))));
        }
        Ok(output)
    }
}

fn describe(s: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => s.to_string(),
    }
}

/// SIGTERM to the script's process group, SIGKILL after 3 s.
fn kill_group(child: &mut Child) {
    let pgid = child.id() as libc::pid_t;
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
}

/// What the pre-script said on stdout.
#[derive(Debug, Default, PartialEq, Eq)]
struct PreProtocol {
    snapshots: Vec<(String, PathBuf)>,
    declared: Option<Level>,
    other: Vec<String>,
}

fn parse_protocol(stdout: &str, disks: &[String]) -> std::result::Result<PreProtocol, String> {
    let mut p = PreProtocol::default();
    for line in stdout.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("snapshot ") {
            let (name, path) = rest.split_once('=').ok_or_else(|| format!("pre-script: bad line {l:?} (expected snapshot NAME=PATH)"))?;
            let name = name.trim();
            if !disks.iter().any(|d| d == name) {
                return Err(format!("pre-script: snapshot of {name:?}, which is not a disk of this item"));
            }
            if p.snapshots.iter().any(|(n, _)| n == name) {
                return Err(format!("pre-script: two snapshots for disk {name}"));
            }
            // Relative to the script's working directory, which is `/`.
            p.snapshots.push((name.to_owned(), Path::new("/").join(path.trim())));
        } else if let Some(rest) = l.strip_prefix("consistency ") {
            p.declared = Some(Level::parse(rest.trim()).ok_or_else(|| format!("pre-script: unknown level in {l:?} (application, file-system or crash)"))?);
        } else if !l.is_empty() {
            p.other.push(l.to_owned());
        }
    }
    Ok(p)
}

// ---------------------------------------------------------------- the sequence

/// What has to be undone, whatever happens.
#[derive(Default)]
struct Session {
    post_done: bool,
    frozen: Frozen,
    copies: Vec<TempCopy>,
    snapshots: Vec<(String, PathBuf)>,
    level: Option<Level>,
    /// A libvirt guest frozen through its agent; thawed with `frozen`.
    guest: Option<crate::libvirt::pull::GuestFreeze>,
    /// A libvirt backup job: ended after the read, whatever happened.
    pull: Option<crate::libvirt::pull::PullJob>,
}

/// Takes a recovery point of `item` following the sequence above.
pub fn backup_item(
    vault: &Vault,
    item: &str,
    def: &ItemDef,
    progress: &dyn Progress,
    cancel: &AtomicBool,
    log: &mut JobLog,
) -> Result<ItemBackupReport> {
    // A libvirt item's disks and XML come from its domain, as it is now.
    let lv = def.libvirt.as_ref().map(crate::libvirt::Resolved::new).transpose()?;
    let resolved;
    let def = match &lv {
        Some(l) => {
            let mut d = def.clone();
            d.disks = l.disks()?.into_iter().map(|(name, path)| crate::protect::DiskDef { name, path }).collect();
            d.configs.push(l.config.clone());
            resolved = d;
            &resolved
        }
        None => def,
    };
    let mut req = def.request(item);
    backup::validate(&req)?;
    let scripts = ScriptEnv {
        item,
        def,
        vault: vault.root(),
        timeout: Duration::from_secs(def.script_timeout_s.unwrap_or(DEFAULT_SCRIPT_TIMEOUT_S)),
    };
    remove_stale_copies(&req.disks);
    let mut s = Session::default();
    let result = capture_and_store(vault, &mut req, &scripts, lv.as_ref(), &mut s, progress, cancel, log);
    // Cleanup, in order: thaw, post-script, release, end the libvirt job
    // and drop its stale checkpoints, remove copies.
    thaw(&mut s, log);
    let status = match &result {
        Ok(_) => "ok",
        Err(Error::Interrupted) => "interrupted",
        Err(_) => "failed",
    };
    if !s.post_done {
        post(&scripts, &mut s, status, log);
    }
    if let Some(cmd) = def.post_script.as_ref().filter(|_| !s.snapshots.is_empty()) {
        let list: String = s.snapshots.iter().map(|(n, p)| format!("{n}={}\n", p.display())).collect();
        let extra = [("KLUIS_STATUS", status.to_owned()), ("KLUIS_SNAPSHOTS", list)];
        match scripts.run("post-script (release)", cmd, "release", &extra, None) {
            Ok(o) => log.step(format!("post-script released the snapshots ({:.1}s)", o.seconds)),
            Err(ScriptError::Failed(m)) => log.warn(m),
            Err(ScriptError::Interrupted) => unreachable!("no cancel given"),
        }
    }
    if let Some(mut job) = s.pull.take() {
        match job.end() {
            Ok(()) => log.step("libvirt: backup job ended"),
            Err(e) => log.warn(e.to_string()),
        }
    }
    if let Some(l) = lv.as_ref().filter(|l| l.socket.is_some()) {
        let latest = vault.catalog().points(Some(item), false).ok().and_then(|mut p| p.pop()).and_then(|p| crate::recovery_point::Manifest::parse(&p.manifest).ok());
        crate::libvirt::pull::drop_stale_checkpoints(&l.r, item, latest.as_ref(), log);
    }
    s.copies.clear();
    let (rep, level, capture) = result?;
    Ok(ItemBackupReport { backup: rep, consistency: level.as_str().to_owned(), capture, warnings: log.warnings.clone() })
}

fn thaw(s: &mut Session, log: &mut JobLog) {
    if let Some(mut g) = s.guest.take() {
        match g.thaw() {
            Ok(()) => log.step("thawed the guest's file systems (guest agent)"),
            Err(e) => log.warn(format!("thaw the guest's file systems: {e}")),
        }
    }
    if s.frozen.is_empty() {
        return;
    }
    let names: Vec<String> = s.frozen.0.iter().map(|f| f.mountpoint.display().to_string()).collect();
    let failed = s.frozen.thaw_all();
    for (m, e) in &failed {
        log.warn(format!("thaw {}: {e} (run `fsfreeze -u {}`)", m.display(), m.display()));
    }
    if failed.is_empty() {
        log.step(format!("thawed {}", names.join(", ")));
    }
}

fn post(scripts: &ScriptEnv, s: &mut Session, status: &str, log: &mut JobLog) {
    s.post_done = true;
    let Some(cmd) = &scripts.def.post_script else { return };
    let level = s.level.unwrap_or(Level::Crash).as_str().to_owned();
    let extra = [("KLUIS_STATUS", status.to_owned()), ("KLUIS_CONSISTENCY", level)];
    // Never cancelled: the post-script is what resumes the application.
    match scripts.run("post-script", cmd, "post", &extra, None) {
        Ok(o) => {
            for l in o.stdout.lines().filter(|l| !l.trim().is_empty()) {
                log.step(format!("post-script: {l}"));
            }
            log.step(format!("post-script ok ({:.1}s, status {status})", o.seconds));
        }
        Err(ScriptError::Failed(m)) => log.warn(m),
        Err(ScriptError::Interrupted) => unreachable!("no cancel given"),
    }
}

fn check_cancel(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Relaxed) { Err(Error::Interrupted) } else { Ok(()) }
}

#[allow(clippy::too_many_arguments)]
fn capture_and_store(
    vault: &Vault,
    req: &mut BackupRequest,
    scripts: &ScriptEnv,
    lv: Option<&crate::libvirt::Resolved>,
    s: &mut Session,
    progress: &dyn Progress,
    cancel: &AtomicBool,
    log: &mut JobLog,
) -> Result<(BackupReport, Level, String)> {
    let def = scripts.def;
    check_cancel(cancel)?;

    // 1. pre-script
    let mut pre_ok = false;
    let mut declared = None;
    if let Some(cmd) = &def.pre_script {
        log.step("pre-script: start");
        match scripts.run("pre-script", cmd, "pre", &[], Some(cancel)) {
            Ok(o) => {
                let disks: Vec<String> = def.disks.iter().map(|d| d.name.clone()).collect();
                let p = parse_protocol(&o.stdout, &disks).map_err(|m| Error::Script(format!("{m}; nothing was stored")))?;
                for l in &p.other {
                    log.step(format!("pre-script: {l}"));
                }
                log.step(format!(
                    "pre-script ok ({:.1}s{}{})",
                    o.seconds,
                    p.declared.map(|l| format!(", declares {}", l.as_str())).unwrap_or_default(),
                    if p.snapshots.is_empty() { String::new() } else { format!(", {} snapshot(s)", p.snapshots.len()) }
                ));
                if !o.stderr.trim().is_empty() {
                    log::info!("pre-script stderr: {}", o.stderr.trim());
                }
                pre_ok = true;
                declared = p.declared;
                s.snapshots = p.snapshots;
            }
            Err(ScriptError::Interrupted) => {
                log.step("pre-script interrupted by a signal and killed; nothing was stored");
                return Err(Error::Interrupted);
            }
            Err(ScriptError::Failed(m)) => {
                log.step(m.clone());
                return Err(Error::Script(format!("{m}; nothing was stored")));
            }
        }
    }
    check_cancel(cancel)?;

    // 2. freeze
    let disk_paths: Vec<PathBuf> = def.disks.iter().map(|d| d.path.clone()).collect();
    let running = lv.filter(|l| l.socket.is_some());
    let mut all_frozen = !def.freeze.is_empty();
    if let Some(l) = running {
        if crate::libvirt::agent_answers(&l.r) {
            all_frozen = true;
            match crate::libvirt::pull::GuestFreeze::freeze(&l.r) {
                Ok(g) => {
                    s.guest = Some(g);
                    log.step(format!("froze the file systems of {} (guest agent)", l.domain.name));
                }
                Err(e) => {
                    all_frozen = false;
                    log.warn(format!("could not freeze the guest's file systems: {e}; the point is not file-system consistent"));
                }
            }
        } else {
            log.step(format!("{}: no guest agent answered; the point is crash-consistent", l.domain.name));
        }
    }
    for m in &def.freeze {
        let r = check_freezable(m, vault.root(), &disk_paths).and_then(|_| s.frozen.freeze(m).map_err(|e| Error::io_path("FIFREEZE", m, e)));
        match r {
            Ok(()) => log.step(format!("froze {}", m.display())),
            Err(e) => {
                all_frozen = false;
                log.warn(format!("could not freeze {}: {e}; the point is not file-system consistent", m.display()));
            }
        }
    }
    if !all_frozen && (!s.frozen.is_empty() || s.guest.is_some()) {
        // Partly frozen helps nothing and blocks writers: thaw at once.
        thaw(s, log);
    }
    let mut level = level(pre_ok, declared, all_frozen);
    if lv.is_some_and(|l| l.shut_down_cleanly()) {
        log.step("the domain is shut off after a clean shutdown: its disks are at rest");
        level = level.max(Level::FileSystem);
    }
    s.level = Some(level);
    req.consistency = level.as_str().to_owned();
    check_cancel(cancel)?;

    // 3. point-in-time copies
    let mut methods = Vec::new();
    let mut live = Vec::new();
    if let Some(l) = running {
        let previous = vault.catalog().points(Some(&req.item), false)?.pop().map(|p| crate::recovery_point::Manifest::parse(&p.manifest)).transpose()?;
        let job = crate::libvirt::pull::PullJob::begin(&l.r, &l.domain, &req.item, previous.as_ref(), l.socket.as_deref().expect("running"), log)?;
        req.tracking = job.trackers();
        s.pull = Some(job);
        methods.push("libvirt-backup");
    }
    for (name, path) in req.disks.clone() {
        if running.is_some() {
            break;
        }
        if let Some((_, snap)) = s.snapshots.iter().find(|(n, _)| *n == name) {
            req.read_from.push((name.clone(), snap.clone()));
            methods.push("snapshot");
            log.step(format!("{name}: script snapshot {}", snap.display()));
            continue;
        }
        match reflink(&path, &name) {
            Ok(copy) => {
                req.read_from.push((name.clone(), copy.path.clone()));
                s.copies.push(copy);
                methods.push("reflink");
                log.step(format!("{name}: reflink copy"));
            }
            Err(why) => {
                log.step(format!("{name}: no point-in-time copy ({why})"));
                live.push(name);
            }
        }
    }
    check_cancel(cancel)?;

    let quiesced = pre_ok || !s.frozen.is_empty() || s.guest.is_some();
    let hold = quiesced && !live.is_empty();
    let capture = if !live.is_empty() {
        if hold { "held-freeze" } else { "live" }.to_owned()
    } else {
        methods.sort();
        methods.dedup();
        methods.join("+")
    };
    req.capture = Some(capture.clone());
    if hold {
        log.step(format!("holding the {} for the whole read of {}", if s.frozen.is_empty() { "pre-script's quiesce" } else { "freeze" }, live.join(", ")));
    } else {
        // 4. thaw, post-script: the copies hold the instant.
        thaw(s, log);
        post(scripts, s, "ok", log);
    }

    // 5. read and store
    let rep = backup::backup(vault, req, progress, cancel)?;
    for d in &rep.disks {
        match (&d.tracking, &d.base, &d.fallback) {
            (Some(t), Some(base), _) => log.step(format!("{}: {t}: read only the changed extents ({} bytes), the rest from point {}", d.name, d.bytes_read, &base[..8])),
            (t, _, Some(why)) => {
                let msg = format!("{}: {} not used ({why}); read the whole disk and compared by hash", d.name, t.as_deref().unwrap_or("changed-block tracking"));
                // A first point has nothing to base on: expected, not a warning.
                if d.base.is_none() && why.starts_with("no earlier point") { log.step(msg) } else { log.warn(msg) }
            }
            _ => {}
        }
    }
    log.step(format!("stored point {} ({} consistent, capture {capture})", &rep.id[..8], level.as_str()));
    if hold {
        thaw(s, log);
        post(scripts, s, "ok", log);
    }
    Ok((rep, level, capture))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_script_programs_and_colliding_disk_vars() {
        for ok in ["/etc/kluis/pre", "'/opt/my dir/pre' --db x", "sync", "exit 1", "FOO=1 /x/pre", "~/pre.sh", "pre.sh arg", "sh -c 'cd /x && ./y'", "echo a/b"] {
            assert!(check_script("pre-script", ok).is_ok(), "{ok}");
        }
        for bad in ["./pre.sh", "  ./pre.sh --x", "bin/pre", "\"./my pre\"", "FOO=1 ./pre", "'./pre';true", "../pre"] {
            assert!(check_script("pre-script", bad).is_err(), "{bad}");
        }
        assert!(check_disk_env_vars(["os", "data", "a-b"]).is_ok());
        let e = check_disk_env_vars(["a-b", "os", "a_b"]).unwrap_err().to_string();
        assert!(e.contains("KLUIS_DISK_A_B") && e.contains("\"a-b\"") && e.contains("\"a_b\""), "{e}");
        assert!(check_disk_env_vars(["OS", "os"]).is_err());
    }

    #[test]
    fn levels() {
        use Level::*;
        // (pre-script ok, declared, all frozen) -> level
        let table = [
            (false, None, false, Crash),
            (false, None, true, FileSystem),
            (true, None, false, Crash),
            (true, None, true, Application),
            (true, Some(Application), false, Application),
            (true, Some(FileSystem), false, FileSystem),
            (true, Some(FileSystem), true, FileSystem),
            (true, Some(Crash), true, FileSystem),
            (true, Some(Crash), false, Crash),
            (false, Some(Application), false, Crash),
        ];
        for (pre, decl, frozen, want) in table {
            assert_eq!(level(pre, decl, frozen), want, "{pre} {decl:?} {frozen}");
        }
    }

    #[test]
    fn protocol() {
        let disks = vec!["os".to_owned(), "data".to_owned()];
        let p = parse_protocol("hello\nsnapshot os=/dev/vg/os-snap\nconsistency application\n\n", &disks).unwrap();
        assert_eq!(p.snapshots, vec![("os".to_owned(), PathBuf::from("/dev/vg/os-snap"))]);
        assert_eq!(p.declared, Some(Level::Application));
        assert_eq!(p.other, vec!["hello".to_owned()]);
        assert!(parse_protocol("snapshot swap=/x", &disks).is_err());
        assert!(parse_protocol("snapshot os", &disks).is_err());
        assert!(parse_protocol("consistency perfect", &disks).is_err());
        assert!(parse_protocol("snapshot os=/a\nsnapshot os=/b", &disks).is_err());
    }

    #[test]
    fn refuses_to_freeze_root_and_plain_directories() {
        let d = tempfile::tempdir().unwrap();
        assert!(check_freezable(Path::new("/"), d.path(), &[]).is_err());
        assert!(check_freezable(d.path(), Path::new("/nonexistent"), &[]).is_err());
        assert!(check_freezable(Path::new("relative"), d.path(), &[]).is_err());
    }
}
