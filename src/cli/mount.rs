//! `kluis mount` / `kluis umount`: run the FUSE session in the foreground
//! until it is unmounted (by `kluis umount`, `fusermount3 -u`) or the user
//! presses Ctrl-C, and always leave the mountpoint clean. The mountpoint
//! must be an empty directory unless `--nonempty` (fusermount's rule).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fuser::{Config, MountOption};

use kluis::browse::VaultTree;
use kluis::fuse::KluisFs;
use kluis::{Error, Result};

use super::{Out, CANCEL};

/// FUSE worker threads: enough to overlap decompression with kernel I/O.
const FUSE_THREADS: usize = 4;

pub fn run(vault: &Path, mountpoint: &Path, allow_other: bool, allow_group: Option<&str>, nonempty: bool, out: &Out) -> Result<()> {
    check_mountpoint(mountpoint, nonempty)?;
    let group = allow_group.map(group_id).transpose()?;
    let tree = VaultTree::new(vault)?;
    let mut options = vec![
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::FSName(format!("kluis:{}", vault.display())),
        MountOption::Subtype("kluis".into()),
    ];
    let mut config = Config::default();
    if allow_other {
        config.acl = fuser::SessionACL::All;
        options.push(MountOption::DefaultPermissions);
    }
    config.mount_options = options;
    config.n_threads = Some(FUSE_THREADS);
    config.clone_fd = true;
    let mut fs = KluisFs::new(tree);
    if allow_other {
        fs = fs.whole_disks_private(group);
    }
    if std::env::var_os("KLUIS_NO_READDIRPLUS").is_some() {
        fs = fs.plain_readdir();
    }
    let notifier = fs.notifier_slot();
    let session = fuser::spawn_mount(fs, mountpoint, &config)
        .map_err(|e| Error::io(format!("cannot mount at {}", mountpoint.display()), e))?;
    let _ = notifier.set(session.notifier());
    raise_readahead(mountpoint);
    out.result(&serde_json::json!({"mounted": mountpoint, "vault": vault}), || {
        format!("mounted {} at {}; `kluis umount {}` or Ctrl-C to stop", vault.display(), mountpoint.display(), mountpoint.display())
    })?;
    use std::io::Write;
    let _ = std::io::stdout().flush();
    loop {
        if session.guard.is_finished() {
            // Unmounted from outside (kluis umount, fusermount3 -u).
            return session.join().map_err(|e| Error::io("FUSE session", e));
        }
        if CANCEL.load(Ordering::Relaxed) {
            log::info!("unmounting {}", mountpoint.display());
            return session.umount_and_join().map_err(|e| Error::io(format!("unmount {}", mountpoint.display()), e));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A mount hides what its directory holds, so like fusermount3 (without
/// `-o nonempty`) a non-empty mountpoint is refused unless asked for.
fn check_mountpoint(mountpoint: &Path, nonempty: bool) -> Result<()> {
    let shown = mountpoint.display();
    match std::fs::metadata(mountpoint) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotFound(format!("mountpoint {shown} does not exist (create the directory first)")));
        }
        Err(e) => return Err(Error::io_path("cannot use mountpoint", mountpoint, e)),
        Ok(m) if !m.is_dir() => return Err(Error::InvalidInput(format!("mountpoint {shown} is not a directory"))),
        Ok(_) => {}
    }
    if !nonempty {
        let mut entries = std::fs::read_dir(mountpoint).map_err(|e| Error::io_path("cannot read mountpoint", mountpoint, e))?;
        if entries.next().is_some() {
            return Err(Error::InvalidInput(format!(
                "mountpoint {shown} is not empty: the mount would hide its contents (use --nonempty to mount over them)"
            )));
        }
    }
    Ok(())
}

/// A group given by name or number.
fn group_id(g: &str) -> Result<u32> {
    if let Ok(n) = g.parse() {
        return Ok(n);
    }
    let c = std::ffi::CString::new(g).map_err(|_| Error::InvalidInput(format!("--allow-group {g:?}: not a group name")))?;
    // getgrnam at startup, before any thread: its static result is not shared.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        return Err(Error::InvalidInput(format!("--allow-group {g}: no such group")));
    }
    Ok(unsafe { (*gr).gr_gid })
}

/// The kernel caps a FUSE mount's readahead at the default 128 KiB whatever
/// INIT negotiated; root may raise it through the mount's bdi so that
/// sequential reads arrive as 1 MiB requests. Best effort: without it reads
/// are just smaller.
fn raise_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(mountpoint) else { return };
    let dev = meta.dev();
    let path = format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(dev), libc::minor(dev));
    if let Err(e) = std::fs::write(&path, format!("{}", kluis::fuse::MAX_READ / 1024)) {
        log::info!("readahead stays at the kernel default ({path}: {e})");
    }
}

pub fn umount(mountpoint: &Path) -> Result<()> {
    let mounted = std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            let want = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_owned());
            m.lines().any(|l| l.split(' ').nth(1).map(|p| Path::new(&p.replace("\\040", " ")) == want).unwrap_or(false))
        })
        .unwrap_or(true);
    if !mounted {
        return Err(Error::InvalidInput(format!("{} is not mounted", mountpoint.display())));
    }
    let status = Command::new("fusermount3").arg("-u").arg(mountpoint).status();
    if matches!(status, Ok(s) if s.success()) {
        return Ok(());
    }
    // No fusermount3 (or it refused): root can unmount directly.
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()).map_err(|_| Error::InvalidInput("bad path".into()))?;
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    Err(Error::io(format!("cannot unmount {}", mountpoint.display()), std::io::Error::last_os_error()))
}
