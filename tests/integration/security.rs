//! Hardening (issue 19): what another local user, a mistyped path or a
//! signal can do to a kluis run. Planted symlinks at kluis's temporary
//! names, the modes of the vault under umask 022, what `mount
//! --allow-other` shows other users, block devices in use, special files
//! given where a file is expected, guest FIFOs, and SIGTERM during `files cp`.
//!
//! Tests needing root, loop devices, FUSE or mkfs print `SKIPPED` without them.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::common::*;
use super::mount::{fuse_ok, MountGuard};

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Waits for `child` at most `limit`; SIGKILLs it and panics if it is still running.
fn finish_within(mut child: Child, limit: Duration, what: &str) -> (Output, Duration) {
    let t = Instant::now();
    while t.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            let took = t.elapsed();
            return (child.wait_with_output().unwrap(), took);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!("{what} still running after {limit:?} (killed)\nstdout: {}\nstderr: {}", text(&out.stdout), text(&out.stderr));
}

/// The single non-empty line of stderr.
fn one_line(out: &Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} succeeded:\n{}{}", text(&out.stdout), text(&out.stderr));
    let err = text(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: expected one error line, got:\n{err}");
    lines[0].to_owned()
}

/// `kluis ARGS` run by `sh` under `umask`, with `before` (shell) run first
/// in the same process: kluis keeps the shell's pid (`exec`), so `$$` in
/// `before` is the pid kluis will have.
fn sh_then_kluis(env: &Env, umask: &str, before: &str, args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!("umask {umask}; {before}\nexec \"$@\"")).arg("sh").arg(KLUIS).arg("--vault").arg(&env.vault).arg("--no-progress");
    c.args(args).current_dir(env.tmp.path()).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("KLUIS_") {
            c.env_remove(&k);
        }
    }
    c
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).mode() & 0o7777
}

/// Every directory under `root` (itself included) 0700, every file 0600.
fn assert_owner_only(root: &Path) {
    assert_eq!(mode(root), 0o700, "{} is {:o}", root.display(), mode(root));
    for e in fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        let m = fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            assert_owner_only(&p);
        } else {
            assert_eq!(m.mode() & 0o7777, 0o600, "{} is {:o}", p.display(), m.mode() & 0o7777);
        }
    }
}

#[test]
fn restore_ignores_a_symlink_planted_at_its_temporary_name() {
    let env = Env::new();
    let mut rng = rng("restore_planted_symlink");
    let img = env.path("os.img");
    random_file(&img, 3 * MIB + 4096, &mut rng);
    let p = env.backup("vm", &[("os", &img)], &[]);
    // What a local user who can write the target directory plants: the
    // name kluis used to write to (`.NAME.kluis-tmp-PID`), pointing at a
    // file only root may change.
    let out_dir = env.path("shared");
    fs::create_dir(&out_dir).unwrap();
    let victim = env.path("victim");
    fs::write(&victim, b"root's precious file\n").unwrap();
    let target = out_dir.join("os.raw");
    let plant = format!("ln -s {} {}/.os.raw.kluis-tmp-$$", victim.display(), out_dir.display());
    let out = sh_then_kluis(&env, "022", &plant, &["restore", &p.sel(), "--disk", "os", "--to", target.to_str().unwrap()]).output().unwrap();
    assert!(fs::read(&victim).unwrap() == b"root's precious file\n", "restore wrote through the planted symlink ({})", text(&out.stderr));
    assert!(out.status.success(), "restore: {}", text(&out.stderr));
    assert!(!fs::symlink_metadata(&target).unwrap().file_type().is_symlink(), "the planted symlink was renamed into place");
    assert_same_file(&target, &img);
    assert_eq!(mode(&target), 0o600, "a restored disk holds every file of the guest");
}

#[test]
fn vault_replica_and_restores_are_owner_only_under_umask_022() {
    let env = Env::empty();
    let mut rng = rng("vault_modes");
    let img = env.path("os.img");
    random_file(&img, 2 * MIB, &mut rng);
    let run = |args: &[&str]| {
        let out = sh_then_kluis(&env, "022", "", args).output().unwrap();
        assert!(out.status.success(), "kluis {args:?}: {}", text(&out.stderr));
    };
    run(&["init"]);
    run(&["backup", "vm", "--disk", &format!("os={}", img.display()), "--config", img.to_str().unwrap()]);
    run(&["points"]);
    assert!(!pack_files(&env.vault).is_empty());
    assert!(env.vault.join("index.sqlite").exists() && env.vault.join("lock").exists() && env.vault.join("reserve").exists());
    assert_owner_only(&env.vault);
    let replica = env.path("replica");
    run(&["replicate", "--to", replica.to_str().unwrap()]);
    assert_owner_only(&replica);
    run(&["rebuild-index"]);
    assert_owner_only(&env.vault);
    // A group given the vault on purpose (docs/cli.md) keeps reading what
    // later backups add; others still get nothing.
    fs::set_permissions(&env.vault, fs::Permissions::from_mode(0o2770)).unwrap();
    let old: Vec<PathBuf> = pack_files(&env.vault);
    random_file(&img, 2 * MIB, &mut rng);
    run(&["backup", "vm", "--disk", &format!("os={}", img.display())]);
    let new: Vec<PathBuf> = pack_files(&env.vault).into_iter().filter(|p| !old.contains(p)).collect();
    assert!(!new.is_empty());
    for p in &new {
        assert_eq!(mode(p), 0o660, "{} is {:o}", p.display(), mode(p));
    }
}

/// An ext4 image holding a FIFO (`pipe`, mtime 2001-09-09T01:46:40Z), a
/// regular file and `big` of `big_size` random bytes.
fn ext4_with_fifo(env: &Env, big_size: u64) -> Option<PathBuf> {
    if !have("mkfs.ext4") {
        skip("ext4_with_fifo", "mkfs.ext4 is not installed");
        return None;
    }
    let src = env.path("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("dir/hello"), b"hello\n").unwrap();
    tool_ok("mkfifo", &[src.join("dir/pipe").to_str().unwrap()]);
    tool_ok("touch", &["-h", "-d", "@1000000000", src.join("dir/pipe").to_str().unwrap()]);
    let mut rng = rng("ext4_with_fifo");
    random_file(&src.join("big"), big_size, &mut rng);
    let img = env.path("fs.img");
    let size = format!("{}M", big_size / MIB * 5 / 4 + 32);
    tool_ok("truncate", &["-s", &size, img.to_str().unwrap()]);
    tool_ok("mkfs.ext4", &["-q", "-F", "-d", src.to_str().unwrap(), img.to_str().unwrap()]);
    Some(img)
}

#[test]
fn files_cp_copies_a_guest_fifo_without_hanging() {
    let env = Env::new();
    let Some(img) = ext4_with_fifo(&env, MIB) else { return };
    let p = env.backup("vm", &[("os", &img)], &[]);
    let dest = env.path("out");
    let child = env.spawn(&["files", "cp", "-r", &p.sel(), "os:p0/dir", dest.to_str().unwrap()]);
    let (out, _) = finish_within(child, Duration::from_secs(60), "files cp -r of a directory with a FIFO");
    assert!(out.status.success(), "files cp: {}", text(&out.stderr));
    let m = fs::symlink_metadata(dest.join("pipe")).unwrap();
    assert!(m.file_type().is_fifo(), "pipe is not a FIFO: {m:?}");
    assert_eq!(m.mtime(), 1_000_000_000, "the FIFO's mtime");
    assert_eq!(fs::read(dest.join("hello")).unwrap(), b"hello\n");
}

#[test]
fn files_cp_stops_at_the_first_sigterm() {
    let env = Env::new();
    let Some(img) = ext4_with_fifo(&env, 384 * MIB) else { return };
    let p = env.backup("vm", &[("os", &img)], &[]);
    let dest = env.path("out");
    fs::create_dir(&dest).unwrap();
    let child = env.spawn(&["files", "cp", &p.sel(), "os:p0/big", dest.to_str().unwrap()]);
    // Mid-copy: once some bytes of the copy are on disk.
    let t = Instant::now();
    let written = || fs::read_dir(&dest).unwrap().flatten().map(|e| e.metadata().map(|m| m.blocks()).unwrap_or(0)).sum::<u64>();
    while written() == 0 {
        assert!(t.elapsed() < Duration::from_secs(60), "files cp wrote nothing within a minute");
        std::thread::sleep(Duration::from_millis(5));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let (out, took) = finish_within(child, Duration::from_secs(30), "files cp after one SIGTERM");
    let line = one_line(&out, "files cp after SIGTERM");
    assert!(line.contains("interrupted"), "{line}");
    eprintln!("files cp stopped {took:?} after SIGTERM");
    assert!(took < Duration::from_secs(5), "files cp took {took:?} to stop");
    let left: Vec<_> = fs::read_dir(&dest).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "the partial copy was left: {left:?}");
}

/// Runs `c` with at most 4 GiB of address space (an unbounded read fails
/// there instead of taking the machine's memory) and 30 s; returns the one
/// error line and how long it took.
fn refused_quickly(mut c: Command, what: &str) -> (String, Duration) {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    unsafe {
        use std::os::unix::process::CommandExt;
        c.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: 4 << 30, rlim_max: 4 << 30 };
            libc::setrlimit(libc::RLIMIT_AS, &lim);
            Ok(())
        });
    }
    let (out, took) = finish_within(c.spawn().unwrap(), Duration::from_secs(30), what);
    (one_line(&out, what), took)
}

#[test]
fn special_files_given_as_config_disk_or_vault_header_are_refused_at_once() {
    let env = Env::new();
    let img = env.path("os.img");
    fs::File::create(&img).unwrap().set_len(MIB).unwrap();
    let fifo = env.path("vm.xml");
    tool_ok("mkfifo", &[fifo.to_str().unwrap()]);
    let disk = format!("os={}", img.display());
    for cfg in ["/dev/zero", fifo.to_str().unwrap()] {
        let mut c = env.cmd();
        c.args(["backup", "vm", "--disk", &disk, "--config", cfg]);
        let (line, took) = refused_quickly(c, &format!("backup --config {cfg}"));
        assert!(line.contains(cfg) && line.contains("not a regular file"), "{line}");
        assert!(took < Duration::from_secs(10), "--config {cfg} took {took:?}");
    }
    let mut c = env.cmd();
    c.args(["backup", "vm", "--disk", &format!("os={}", fifo.display())]);
    let (line, took) = refused_quickly(c, "backup --disk FIFO");
    assert!(line.contains(fifo.to_str().unwrap()) && line.contains("not a regular file or block device"), "{line}");
    assert!(took < Duration::from_secs(10), "--disk FIFO took {took:?}");
    assert!(env.points(None).is_empty());
    // A vault whose header is a FIFO or /dev/zero (a mistyped --vault).
    for (name, make) in [("fifo-vault", "fifo"), ("zero-vault", "zero")] {
        let v = env.path(name);
        fs::create_dir(&v).unwrap();
        if make == "fifo" {
            tool_ok("mkfifo", &[v.join("kluis.vault").to_str().unwrap()]);
        } else {
            std::os::unix::fs::symlink("/dev/zero", v.join("kluis.vault")).unwrap();
        }
        let mut c = Command::new(KLUIS);
        c.arg("--vault").arg(&v).arg("points").stdin(Stdio::null());
        let (line, took) = refused_quickly(c, &format!("points in {name}"));
        assert!(line.contains("kluis.vault") && line.contains("not a regular file"), "{line}");
        assert!(took < Duration::from_secs(10), "{name} took {took:?}");
    }
}

#[test]
fn restore_onto_a_mounted_block_device_is_refused() {
    let t = "restore_onto_a_mounted_block_device_is_refused";
    if !is_root() || !have("mkfs.ext4") {
        return skip(t, "needs root and mkfs.ext4");
    }
    let env = Env::new();
    let mut rng = rng(t);
    let img = env.path("os.img");
    random_file(&img, 4 * MIB, &mut rng);
    let p = env.backup("vm", &[("os", &img)], &[]);
    let backing = env.path("target.img");
    tool_ok("truncate", &["-s", "8M", backing.to_str().unwrap()]);
    tool_ok("mkfs.ext4", &["-q", "-F", backing.to_str().unwrap()]);
    let dev = match LoopDev::attach(&backing) {
        Ok(d) => d,
        Err(e) => return skip(t, &e),
    };
    let mnt = env.path("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = match Mounted::new(&dev.dev, &mnt) {
        Ok(m) => m,
        Err(e) => return skip(t, &e),
    };
    fs::write(mnt.join("data"), b"in use").unwrap();
    let f = env.fail(&["restore", &p.sel(), "--disk", "os", "--to", dev.dev.to_str().unwrap(), "--force"]);
    let line = f.one_error_line();
    assert!(line.contains(dev.dev.to_str().unwrap()) && line.contains("in use"), "{line}");
    // The mounted file system writes its own metadata meanwhile, so the
    // device is compared with what the restore would have put there: no
    // block of the (random) disk may have landed on it.
    tool_ok("sync", &[]);
    let want = fs::read(&img).unwrap();
    let mut got = vec![0u8; want.len()];
    std::os::unix::fs::FileExt::read_exact_at(&fs::File::open(&dev.dev).unwrap(), &mut got, 0).unwrap();
    for (i, (g, w)) in got.chunks(BLOCK as usize).zip(want.chunks(BLOCK as usize)).enumerate() {
        assert!(g != w, "block {i} of the disk was written onto the mounted device");
    }
    assert_eq!(fs::read(mnt.join("data")).unwrap(), b"in use");
    // Unmounted, the same restore goes through.
    drop(m);
    env.ok(&["restore", &p.sel(), "--disk", "os", "--to", dev.dev.to_str().unwrap(), "--force"]);
    let mut got = vec![0u8; 4 * MIB as usize];
    std::os::unix::fs::FileExt::read_exact_at(&fs::File::open(&dev.dev).unwrap(), &mut got, 0).unwrap();
    assert!(got == fs::read(&img).unwrap(), "restored bytes differ");
}

/// A file system mounted with mount(8); unmounted on drop.
struct Mounted(PathBuf);

impl Mounted {
    fn new(dev: &Path, dir: &Path) -> Result<Mounted, String> {
        let out = tool("mount", &[dev.to_str().unwrap(), dir.to_str().unwrap()]).ok_or("mount(8) not found")?;
        if !out.status.success() {
            return Err(format!("mount failed: {}", text(&out.stderr).trim()));
        }
        Ok(Mounted(dir.to_owned()))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let d = self.0.to_str().unwrap();
        if !tool("umount", &[d]).is_some_and(|o| o.status.success()) {
            let _ = tool("umount", &["-l", d]);
        }
    }
}

#[test]
fn relative_scripts_and_colliding_disk_names_are_refused() {
    let env = Env::new();
    let (a, b) = (env.path("a.img"), env.path("b.img"));
    for p in [&a, &b] {
        fs::File::create(p).unwrap().set_len(MIB).unwrap();
    }
    env.ok(&["policy", "set", "m", "--schedule", "manual"]);
    let da = format!("os={}", a.display());
    fs::write(env.path("pre.sh"), "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(env.path("pre.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    for (flag, cmd) in [("--pre-script", "./pre.sh"), ("--post-script", "scripts/post --now")] {
        let f = env.fail(&["protect", "vm", "--disk", &da, "--policy", "m", flag, cmd]);
        let line = f.one_error_line();
        assert!(line.contains("relative path") && line.contains(cmd.split(' ').next().unwrap()), "{line}");
    }
    for (x, y) in [("a-b", "a_b"), ("os", "OS"), ("x.y", "x-y")] {
        let f = env.fail(&["protect", "vm", "--disk", &format!("{x}={}", a.display()), "--disk", &format!("{y}={}", b.display()), "--policy", "m"]);
        let line = f.one_error_line();
        assert!(line.contains(&format!("{x:?}")) && line.contains(&format!("{y:?}")) && line.contains("KLUIS_DISK_"), "{line}");
    }
    assert!(env.json(&["items"]).as_array().unwrap().is_empty(), "a refused definition was stored");
    // An absolute script runs, and always in `/` (wherever kluis was started).
    let d = env.tmp.path().display();
    env.ok(&["protect", "vm", "--disk", &da, "--policy", "m", "--pre-script", &format!("{d}/pre.sh; pwd > {d}/pwd")]);
    env.ok(&["backup", "vm"]);
    assert_eq!(fs::read_to_string(env.path("pwd")).unwrap(), "/\n");
    // A relative script stored by an older kluis is refused when it would run.
    fs::write(env.path("pre.sh"), format!("#!/bin/sh\ntouch {d}/ran\n")).unwrap();
    let db = rusqlite::Connection::open(env.vault.join("index.sqlite")).unwrap();
    let n = db.execute("UPDATE items SET definition = json_set(definition, '$.pre_script', './pre.sh') WHERE name = 'vm'", []).unwrap();
    assert_eq!(n, 1);
    drop(db);
    let before = env.points(Some("vm")).len();
    let f = env.fail(&["backup", "vm"]);
    let line = f.one_error_line();
    assert!(line.contains("./pre.sh") && line.contains("relative path"), "{line}");
    assert!(!env.path("ran").exists(), "the relative script ran");
    assert_eq!(env.points(Some("vm")).len(), before);
}

/// `cat PATH` as user and group 65534 (nobody/nogroup).
fn read_as_nobody(path: &Path) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("setpriv")
}

#[test]
fn mount_allow_other_keeps_whole_disks_from_other_users() {
    let t = "mount_allow_other_keeps_whole_disks_from_other_users";
    if !fuse_ok(t) {
        return;
    }
    if !is_root() || !have("setpriv") {
        return skip(t, "needs root (for --allow-other without user_allow_other) and setpriv");
    }
    let env = Env::new();
    // Other users must be able to reach the mountpoint at all.
    fs::set_permissions(env.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut rng = rng(t);
    let img = env.path("os.img");
    random_file(&img, MIB, &mut rng);
    let cfg = env.path("vm.xml");
    fs::write(&cfg, "<domain><password>s3cret</password></domain>").unwrap();
    let p = env.backup("vm", &[("os", &img)], &[&cfg]);
    for (args, perm, gid) in [(vec!["--allow-other"], 0o400, 0), (vec!["--allow-other", "--allow-group", "65534"], 0o440, 65534)] {
        let mp = env.path("mnt");
        let g = MountGuard::start_args(&env, &mp, &[], &args);
        let point = mp.join("vm").join(&p.name);
        let json = point.join("recovery-point.json");
        assert!(read_as_nobody(&json).status.success(), "{args:?}: another user cannot enter the mount at all");
        for f in [point.join("disks/os.raw"), point.join("disks/os.vhd"), point.join("config/vm.xml")] {
            let m = fs::metadata(&f).unwrap();
            assert!((m.mode() & 0o7777, m.gid()) == (perm, gid), "{args:?}: {} is {:o} group {}", f.display(), m.mode() & 0o7777, m.gid());
            let out = read_as_nobody(&f);
            assert_eq!(out.status.success(), gid == 65534, "{args:?}: nobody reading {}: {}", f.display(), text(&out.stderr));
        }
        drop(g);
    }
}
