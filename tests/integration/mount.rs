//! `kluis mount`: every recovery point as a read-only tree, checked through a
//! real FUSE mount of the real binary.
//!
//! Each test starts `kluis mount` as a child process through [`MountGuard`],
//! which always unmounts and reaps it, also when the test panics. A test is
//! skipped (with a printed reason) only when /dev/fuse cannot be opened.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::common::*;

/// How long a mount may take to appear, and a mount process to exit.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(10);
/// New and deleted points must show in a live mount within this time
/// (the tree refreshes its list every second, the kernel caches entries 1 s).
const LIVE_TIMEOUT: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------- the guard

/// True when /dev/fuse can be opened; otherwise prints why the test is skipped.
pub(crate) fn fuse_ok(test: &str) -> bool {
    match OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        Ok(_) => true,
        Err(e) => {
            skip(test, &format!("cannot open /dev/fuse: {e}"));
            false
        }
    }
}

/// Mount points as /proc/mounts lists them (octal escapes undone).
fn mounted_paths() -> Vec<PathBuf> {
    let m = fs::read_to_string("/proc/mounts").unwrap_or_default();
    m.lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(|p| {
            let b = p.as_bytes();
            let mut out = Vec::with_capacity(b.len());
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
                    out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
                    i += 4;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            PathBuf::from(std::ffi::OsStr::from_bytes(&out))
        })
        .collect()
}

fn is_mounted(mp: &Path) -> bool {
    mounted_paths().iter().any(|p| p == mp)
}

/// Runs a command with no output; true on exit 0.
fn quiet(prog: &str, args: &[&Path]) -> bool {
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Collects everything a child writes to a pipe.
fn drain(mut r: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    let h = thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buf, h)
}

/// `kluis --vault V mount MP` running as a child process. Dropping it (also
/// while a test panics) unmounts with `fusermount3 -u` (falling back to
/// `umount -l`), waits for the process with a timeout and kills it if it
/// hangs, so no test leaves a mount behind.
pub struct MountGuard {
    pub mp: PathBuf,
    child: Child,
    status: Option<ExitStatus>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl MountGuard {
    pub fn start(env: &Env, mp: &Path) -> MountGuard {
        MountGuard::start_with(env, mp, &[])
    }

    /// `global` goes before `mount` (e.g. `--json`).
    pub fn start_with(env: &Env, mp: &Path, global: &[&str]) -> MountGuard {
        MountGuard::start_args(env, mp, global, &[])
    }

    /// `args` go after the mountpoint (e.g. `--allow-other`).
    pub fn start_args(env: &Env, mp: &Path, global: &[&str], args: &[&str]) -> MountGuard {
        fs::create_dir_all(mp).unwrap();
        let mp = fs::canonicalize(mp).unwrap();
        assert!(!is_mounted(&mp), "{} is already mounted", mp.display());
        let mut child = env
            .cmd()
            .args(global)
            .arg("mount")
            .arg(&mp)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kluis mount");
        let (stdout, h1) = drain(child.stdout.take().unwrap());
        let (stderr, h2) = drain(child.stderr.take().unwrap());
        // From here on a panic drops the guard, which cleans up.
        let mut g = MountGuard { mp, child, status: None, stdout, stderr, readers: vec![h1, h2] };
        let t0 = Instant::now();
        loop {
            if is_mounted(&g.mp) && g.stdout().contains("mounted") {
                return g;
            }
            if let Some(st) = g.child.try_wait().unwrap() {
                g.status = Some(st);
                for h in g.readers.drain(..) {
                    let _ = h.join();
                }
                panic!("kluis mount {} exited early ({st})\nstdout: {}\nstderr: {}", g.mp.display(), g.stdout(), g.stderr());
            }
            if t0.elapsed() > MOUNT_TIMEOUT {
                panic!(
                    "kluis mount {} not ready within {MOUNT_TIMEOUT:?} (in /proc/mounts: {})\nstdout: {}\nstderr: {}",
                    g.mp.display(),
                    is_mounted(&g.mp),
                    g.stdout(),
                    g.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stdout(&self) -> String {
        text(&self.stdout.lock().unwrap())
    }

    pub fn stderr(&self) -> String {
        text(&self.stderr.lock().unwrap())
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Still running (not exited)?
    pub fn alive(&mut self) -> bool {
        self.status.is_none() && self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the mount process to exit on its own; panics (and so
    /// cleans up through Drop) if it does not within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.status {
                return st;
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                self.status = Some(st);
                for h in self.readers.drain(..) {
                    let _ = h.join();
                }
                return st;
            }
            if t0.elapsed() > timeout {
                panic!("kluis mount {} still running {timeout:?} later\nstderr: {}", self.mp.display(), self.stderr());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        // Never panic here: this runs while a failed test unwinds.
        if is_mounted(&self.mp) && !quiet("fusermount3", &[Path::new("-u"), &self.mp]) && is_mounted(&self.mp) {
            quiet("umount", &[Path::new("-l"), &self.mp]);
        }
        if self.status.is_none() {
            let t0 = Instant::now();
            loop {
                match self.child.try_wait() {
                    Ok(Some(st)) => {
                        self.status = Some(st);
                        break;
                    }
                    Ok(None) if t0.elapsed() < MOUNT_TIMEOUT => thread::sleep(Duration::from_millis(20)),
                    _ => {
                        eprintln!("kluis mount {} did not exit after unmount: killing it", self.mp.display());
                        let _ = self.child.kill();
                        let _ = self.child.wait();
                        break;
                    }
                }
            }
        }
        // A killed daemon can leave a dead connection mounted.
        if is_mounted(&self.mp) && !quiet("umount", &[Path::new("-l"), &self.mp]) {
            quiet("fusermount3", &[Path::new("-uz"), &self.mp]);
        }
    }
}

// ---------------------------------------------------------------- small helpers

/// Polls `f` until it holds; panics after `timeout`. Returns the time taken.
fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    loop {
        if f() {
            return t0.elapsed();
        }
        if t0.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Sorted names in a directory (None if it cannot be listed).
fn try_list(dir: &Path) -> Option<Vec<String>> {
    let mut v: Vec<String> = fs::read_dir(dir).ok()?.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned())).collect::<io::Result<_>>().ok()?;
    v.sort();
    Some(v)
}

fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// The directory of a point in the mount.
fn point_dir(mp: &Path, p: &Point) -> PathBuf {
    mp.join(&p.item).join(&p.name)
}

fn disk_path(mp: &Path, p: &Point, disk: &str, ext: &str) -> PathBuf {
    point_dir(mp, p).join("disks").join(format!("{disk}.{ext}"))
}

fn latest(mp: &Path, item: &str) -> Option<String> {
    fs::read_link(mp.join(item).join("latest")).ok().map(|t| t.to_string_lossy().into_owned())
}

/// Ids of the points an item shows, from their recovery-point.json.
fn point_ids(mp: &Path, item: &str) -> Vec<String> {
    let Some(names) = try_list(&mp.join(item)) else { return Vec::new() };
    names
        .iter()
        .filter(|n| *n != "latest")
        .filter_map(|n| fs::read(mp.join(item).join(n).join("recovery-point.json")).ok())
        .filter_map(|b| serde_json::from_slice::<Value>(&b).ok()?["id"].as_str().map(str::to_owned))
        .collect()
}

fn round512(n: u64) -> u64 {
    n.div_ceil(512) * 512
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// `Ok` or the OS error of a libc call returning -1.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// `kluis gc --json` run as if a year had passed, so that points deleted
/// by the test are past any soft-delete window and their data is reclaimed.
fn gc_past_soft_delete(env: &Env) -> Value {
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365);
    let out = env.cmd().env("KLUIS_NOW", later.to_string()).args(["--json", "gc"]).output().unwrap();
    assert!(out.status.success(), "kluis gc failed ({}):\n{}{}", out.status, text(&out.stdout), text(&out.stderr));
    serde_json::from_str(&text(&out.stdout)).unwrap_or_else(|e| panic!("gc --json: {e}: {}", text(&out.stdout)))
}

/// Copies `src` to a new file in the test directory (one version of a disk).
fn keep(env: &Env, src: &Path, name: &str) -> PathBuf {
    let to = env.path(name);
    fs::copy(src, &to).unwrap();
    to
}

/// Checks random reads of a mounted file against the source: unaligned
/// offsets and lengths that cross block boundaries.
fn random_reads(got: &Path, want: &Path, rng: &mut fastrand::Rng, count: usize) {
    let (g, w) = (File::open(got).unwrap(), File::open(want).unwrap());
    let size = w.metadata().unwrap().len();
    for _ in 0..count {
        let len = rng.u64(1..=(3 * BLOCK).min(size)) as usize;
        let off = rng.u64(0..=size - len as u64);
        let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
        g.read_exact_at(&mut a, off).unwrap_or_else(|e| panic!("read {len} at {off} of {}: {e}", got.display()));
        w.read_exact_at(&mut b, off).unwrap();
        assert!(a == b, "{}: {len} bytes at {off} differ from {}", got.display(), want.display());
    }
}

// ---------------------------------------------------------------- 1. disks byte for byte

#[test]
fn mount_disks_byte_exact_across_points() {
    let t = "mount_disks_byte_exact_across_points";
    if !fuse_ok(t) {
        return;
    }
    let mut rng = rng(t);
    let env = Env::new();
    let src = |item: &str, disk: &str| env.path(&format!("{item}-{disk}.img"));
    // Odd tails: none of these is a multiple of the block size or of 512.
    random_file(&src("web", "os"), 3 * MIB + 12345, &mut rng);
    sparse_file(&src("web", "data"), 2 * MIB + 511, &[(100 * KIB, 300 * KIB), (2 * MIB, 511)], &mut rng);
    random_file(&src("db", "os"), 4 * MIB - 1, &mut rng);
    random_file(&src("db", "data"), MIB + 1, &mut rng);

    // (point, [(disk, copy of its source at backup time)])
    let mut versions: Vec<(Point, Vec<(&str, PathBuf)>)> = Vec::new();
    for v in 0..3 {
        if v > 0 {
            for item in ["web", "db"] {
                for disk in ["os", "data"] {
                    random_writes(&src(item, disk), &mut rng, 6, 150 * KIB);
                }
            }
        }
        if v == 1 {
            // A stretch that becomes all zeros again must read back as zeros.
            write_at(&src("web", "os"), 2 * BLOCK, &vec![0u8; 2 * BLOCK as usize]);
        }
        if v == 2 {
            // The disk grew, with data in its new odd tail.
            let p = src("db", "data");
            let old = fs::metadata(&p).unwrap().len();
            OpenOptions::new().write(true).open(&p).unwrap().set_len(old + 70001).unwrap();
            write_at(&p, old + 69000, &random_bytes(&mut rng, 1001));
        }
        for item in ["web", "db"] {
            let p = env.backup(item, &[("os", &src(item, "os")), ("data", &src(item, "data"))], &[]);
            let copies = ["os", "data"].map(|d| (d, keep(&env, &src(item, d), &format!("{item}-{d}.v{v}")))).to_vec();
            versions.push((p, copies));
        }
    }

    let mp = env.path("mnt");
    let _m = MountGuard::start(&env, &mp);
    assert_eq!(list(&mp), sorted(&["db", "web"]));
    for item in ["web", "db"] {
        let mut want: Vec<&str> = versions.iter().filter(|(p, _)| p.item == item).map(|(p, _)| p.name.as_str()).collect();
        want.push("latest");
        assert_eq!(list(&mp.join(item)), sorted(&want), "points of {item}");
    }
    // Every disk of every point open at once (as when comparing versions)
    // and read in turns: no point may serve another point's blocks.
    let mut open = Vec::new(); // (mounted file, its path, the source copy)
    for (p, copies) in &versions {
        assert_eq!(list(&point_dir(&mp, p).join("disks")), sorted(&["data.raw", "data.vhd", "os.raw", "os.vhd"]));
        for (disk, copy) in copies {
            let got = disk_path(&mp, p, disk, "raw");
            let size = fs::metadata(copy).unwrap().len();
            assert_eq!(fs::metadata(&got).unwrap().len(), size, "size of {}", got.display());
            open.push((File::open(&got).unwrap(), got, File::open(copy).unwrap(), size));
        }
    }
    let step = 256 * KIB;
    let (mut a, mut b) = (vec![0u8; step as usize], vec![0u8; step as usize]);
    let mut off = 0;
    while open.iter().any(|o| o.3 > off) {
        for (got, path, want, size) in open.iter().filter(|o| o.3 > off) {
            let n = step.min(size - off) as usize;
            got.read_exact_at(&mut a[..n], off).unwrap_or_else(|e| panic!("read {n} at {off} of {}: {e}", path.display()));
            want.read_exact_at(&mut b[..n], off).unwrap();
            if let Some(i) = (0..n).find(|&i| a[i] != b[i]) {
                panic!("{} differs from its source at byte {}", path.display(), off + i as u64);
            }
        }
        off += step;
    }
    drop(open);
    // `latest` is the last point of each item, and reads as it.
    for item in ["web", "db"] {
        let (p, copies) = versions.iter().rev().find(|(p, _)| p.item == item).unwrap();
        assert_eq!(latest(&mp, item).as_deref(), Some(p.name.as_str()));
        for (disk, copy) in copies {
            let got = mp.join(item).join("latest/disks").join(format!("{disk}.raw"));
            assert_same_file(&got, copy);
            random_reads(&got, copy, &mut rng, 40);
        }
    }
    // Random access into an older point too (its blocks differ from latest).
    let (p, copies) = &versions[0];
    random_reads(&disk_path(&mp, p, "os", "raw"), &copies[0].1, &mut rng, 40);
}

// ---------------------------------------------------------------- 2. VHD

#[test]
fn mount_vhd_passes_qemu_img() {
    let t = "mount_vhd_passes_qemu_img";
    if !fuse_ok(t) {
        return;
    }
    assert!(have("qemu-img"), "qemu-img is needed to check the VHD files of the mount");
    let mut rng = rng(t);
    let env = Env::new();
    // An odd size (padded to 512 in the VHD), a sector multiple, a sparse one.
    let disks = [("odd", 3 * MIB + 1000), ("even", 2 * MIB + 3 * 512), ("holes", 5 * MIB + 7)];
    for (name, size) in disks {
        let p = env.path(&format!("{name}.img"));
        if name == "holes" {
            sparse_file(&p, size, &[(MIB + 4000, 5000), (size - 3, 3)], &mut rng);
        } else {
            random_file(&p, size, &mut rng);
        }
    }
    let paths: Vec<(String, PathBuf)> = disks.iter().map(|(n, _)| (n.to_string(), env.path(&format!("{n}.img")))).collect();
    let args: Vec<(&str, &Path)> = paths.iter().map(|(n, p)| (n.as_str(), p.as_path())).collect();
    let p = env.backup("vm", &args, &[]);

    let mp = env.path("mnt");
    let _m = MountGuard::start(&env, &mp);
    for (name, size) in disks {
        let source = env.path(&format!("{name}.img"));
        let vhd_in_mount = disk_path(&mp, &p, name, "vhd");
        let data_size = round512(size);
        assert_eq!(fs::metadata(&vhd_in_mount).unwrap().len(), data_size + 512, "size of {}", vhd_in_mount.display());

        // The VHD's tail in one read, from the last block's start, once the
        // disk's frames are decoded (the raw file is read first, the VHD not
        // yet, so the kernel asks kluis): disk bytes, zero padding, footer.
        let want = fs::read(&source).unwrap();
        assert!(fs::read(disk_path(&mp, &p, name, "raw")).unwrap() == want, "{name}.raw differs from the disk");
        let from = (size - 1) / BLOCK * BLOCK;
        let mut tail = vec![0u8; (data_size + 512 - from) as usize];
        File::open(&vhd_in_mount).unwrap().read_exact_at(&mut tail, from).unwrap();
        let (data, rest) = tail.split_at((size - from) as usize);
        assert!(data == &want[from as usize..], "{name}.vhd: the tail of the data differs");
        let (pad, footer) = rest.split_at((data_size - size) as usize);
        assert!(pad.iter().all(|&x| x == 0) && footer.starts_with(b"conectix"), "{name}.vhd: bad padding or footer in the tail read");

        let vhd = env.path(&format!("{name}.vhd"));
        tool_ok("cp", &[vhd_in_mount.to_str().unwrap(), vhd.to_str().unwrap()]);
        let b = fs::read(&vhd).unwrap();
        assert!(b[..size as usize] == want[..], "{name}.vhd: the data part differs from the disk");
        assert!(b[size as usize..data_size as usize].iter().all(|&x| x == 0), "{name}.vhd: padding before the footer is not zero");
        assert_eq!(&b[data_size as usize..data_size as usize + 8], b"conectix", "{name}.vhd: no footer cookie at {data_size}");

        let vs = vhd.to_str().unwrap();
        let check = tool("qemu-img", &["check", "-f", "vpc", vs]).unwrap();
        // qemu ≥ 10 answers 63 "does not support checks" for vpc: that still
        // means the image opened and its header was accepted.
        assert!(
            matches!(check.status.code(), Some(0) | Some(63)),
            "qemu-img check {name}.vhd: {}\n{}{}",
            check.status,
            text(&check.stdout),
            text(&check.stderr)
        );
        let info: Value = serde_json::from_str(&tool_ok("qemu-img", &["info", "--output=json", "-f", "vpc", vs])).unwrap();
        assert_eq!(info["virtual-size"].as_u64(), Some(data_size), "qemu-img info {name}.vhd: {info:#}");

        let back = env.path(&format!("{name}.back.raw"));
        tool_ok("qemu-img", &["convert", "-f", "vpc", "-O", "raw", vs, back.to_str().unwrap()]);
        let r = fs::read(&back).unwrap();
        assert_eq!(r.len() as u64, data_size, "qemu-img convert {name}.vhd: size");
        assert!(r[..size as usize] == want[..], "qemu-img convert {name}.vhd: bytes differ from the disk");
        assert!(r[size as usize..].iter().all(|&x| x == 0), "qemu-img convert {name}.vhd: padding not zero");
    }
}

// ---------------------------------------------------------------- 3. read-only

#[test]
fn mount_every_write_fails_with_erofs() {
    let t = "mount_every_write_fails_with_erofs";
    if !fuse_ok(t) {
        return;
    }
    let mut rng = rng(t);
    let env = Env::new();
    let img = env.path("os.img");
    random_file(&img, MIB + 17, &mut rng);
    let cfg = env.path("vm.xml");
    fs::write(&cfg, "<domain/>\n").unwrap();
    let p = env.backup("web", &[("os", &img)], &[&cfg]);

    let mp = env.path("mnt");
    let _m = MountGuard::start(&env, &mp);
    let item = mp.join("web");
    let point = point_dir(&mp, &p);
    let disks = point.join("disks");
    let raw = disks.join("os.raw");
    let conf = point.join("config/vm.xml");
    let json = point.join("recovery-point.json");
    let before: Vec<Vec<String>> = [&mp, &item, &point, &disks, &point.join("config")].iter().map(|d| list(d)).collect();

    type Op = (String, Box<dyn Fn() -> io::Result<()>>);
    let mut ops: Vec<Op> = Vec::new();
    let mut op = |what: String, f: Box<dyn Fn() -> io::Result<()>>| ops.push((what, f));
    for f in [&raw, &conf, &json, &disks.join("os.vhd")] {
        let f = f.clone();
        let g = f.clone();
        op(format!("open {} for writing", f.display()), Box::new(move || OpenOptions::new().write(true).open(&g).map(drop)));
        let g = f.clone();
        op(format!("open {} read-write", f.display()), Box::new(move || OpenOptions::new().read(true).write(true).open(&g).map(drop)));
        let g = f.clone();
        op(format!("open {} for append", f.display()), Box::new(move || OpenOptions::new().append(true).open(&g).map(drop)));
        let g = f.clone();
        op(format!("open {} with O_TRUNC", f.display()), Box::new(move || OpenOptions::new().write(true).truncate(true).open(&g).map(drop)));
        let g = f.clone();
        op(format!("truncate {}", f.display()), Box::new(move || check(unsafe { libc::truncate(cstr(&g).as_ptr(), 0) })));
        let g = f.clone();
        op(format!("chmod {}", f.display()), Box::new(move || fs::set_permissions(&g, fs::Permissions::from_mode(0o644))));
        let g = f.clone();
        op(format!("chown {}", f.display()), Box::new(move || std::os::unix::fs::chown(&g, Some(0), Some(0))));
        let g = f.clone();
        op(
            format!("utime {}", f.display()),
            Box::new(move || check(unsafe { libc::utimensat(libc::AT_FDCWD, cstr(&g).as_ptr(), std::ptr::null(), 0) })),
        );
        let g = f.clone();
        op(
            format!("setxattr {}", f.display()),
            Box::new(move || {
                let (n, v) = (CString::new("user.kluis").unwrap(), b"x");
                check(unsafe { libc::setxattr(cstr(&g).as_ptr(), n.as_ptr(), v.as_ptr().cast(), 1, 0) })
            }),
        );
        let g = f.clone();
        op(format!("unlink {}", f.display()), Box::new(move || fs::remove_file(&g)));
        let g = f.clone();
        let to = f.with_extension("moved");
        op(format!("rename {}", f.display()), Box::new(move || fs::rename(&g, &to)));
        let g = f.clone();
        let to = mp.join("hardlink");
        op(format!("link {}", f.display()), Box::new(move || fs::hard_link(&g, &to)));
    }
    for d in [&mp, &item, &point, &disks, &point.join("config")] {
        let d = d.clone();
        let g = d.join("new-file");
        op(format!("create {}", g.display()), Box::new(move || File::create(&g).map(drop)));
        let g = d.join("new-file");
        op(format!("create_new {}", g.display()), Box::new(move || OpenOptions::new().write(true).create_new(true).open(&g).map(drop)));
        let g = d.join("new-dir");
        op(format!("mkdir {}", g.display()), Box::new(move || fs::create_dir(&g)));
        let g = d.join("new-link");
        op(format!("symlink {}", g.display()), Box::new(move || std::os::unix::fs::symlink("latest", &g)));
        let g = d.join("new-fifo");
        op(format!("mkfifo {}", g.display()), Box::new(move || check(unsafe { libc::mkfifo(cstr(&g).as_ptr(), 0o644) })));
        let g = d.clone();
        op(format!("chmod {}", d.display()), Box::new(move || fs::set_permissions(&g, fs::Permissions::from_mode(0o755))));
        let g = d.clone();
        op(
            format!("utime {}", d.display()),
            Box::new(move || check(unsafe { libc::utimensat(libc::AT_FDCWD, cstr(&g).as_ptr(), std::ptr::null(), 0) })),
        );
    }
    for d in [&item, &point, &disks, &point.join("config")] {
        let g = d.clone();
        op(format!("rmdir {}", d.display()), Box::new(move || fs::remove_dir(&g)));
        let g = d.clone();
        let to = d.with_file_name("renamed");
        op(format!("rename {}", d.display()), Box::new(move || fs::rename(&g, &to)));
    }
    let l = item.join("latest");
    op("unlink latest".into(), Box::new(move || fs::remove_file(&l)));
    let l = item.join("latest");
    let to = item.join("newest");
    op("rename latest".into(), Box::new(move || fs::rename(&l, &to)));
    let r = raw.clone();
    op(
        "ftruncate/futimens of a read-only descriptor".into(),
        Box::new(move || {
            let f = File::open(&r)?;
            // A read-only descriptor may fail ftruncate with EINVAL (not ours
            // to check); futimens must still say the filesystem is read-only.
            let ts = [libc::timespec { tv_sec: 0, tv_nsec: 0 }; 2];
            check(unsafe { libc::futimens(f.as_raw_fd(), ts.as_ptr()) })
        }),
    );

    let mut wrong = Vec::new();
    for (what, f) in &ops {
        match f() {
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
            Err(e) => wrong.push(format!("{what}: {e} (want EROFS)")),
            Ok(()) => wrong.push(format!("{what}: succeeded (want EROFS)")),
        }
    }
    assert!(wrong.is_empty(), "{} of {} writes did not fail with EROFS:\n{}", wrong.len(), ops.len(), wrong.join("\n"));
    // Nothing changed.
    let after: Vec<Vec<String>> = [&mp, &item, &point, &disks, &point.join("config")].iter().map(|d| list(d)).collect();
    assert_eq!(before, after);
    assert_same_file(&raw, &img);
    assert_eq!(fs::read(&conf).unwrap(), b"<domain/>\n");
}

// ---------------------------------------------------------------- 4. live updates

#[test]
fn mount_shows_new_and_deleted_points_live() {
    let t = "mount_shows_new_and_deleted_points_live";
    if !fuse_ok(t) {
        return;
    }
    let mut rng = rng(t);
    let env = Env::new();
    let img = env.path("os.img");
    random_file(&img, MIB + 3, &mut rng);
    let p1 = env.backup("web", &[("os", &img)], &[]);
    let v1 = keep(&env, &img, "os.v1");

    let mp = env.path("mnt");
    let _m = MountGuard::start(&env, &mp);
    assert_eq!(list(&mp.join("web")), sorted(&["latest", &p1.name]));
    assert_eq!(latest(&mp, "web").as_deref(), Some(p1.name.as_str()));

    // Each point name must be distinct at second resolution for this test to
    // say anything about `latest`: step over a second boundary.
    thread::sleep(Duration::from_millis(1100));
    random_writes(&img, &mut rng, 5, 100 * KIB);
    let v2 = keep(&env, &img, "os.v2");
    let p2 = env.backup("web", &[("os", &img)], &[]);
    let took = wait_until(LIVE_TIMEOUT, "the new point in the mount", || try_list(&mp.join("web")).is_some_and(|l| l.contains(&p2.name)));
    eprintln!("{t}: new point visible after {took:?}");
    wait_until(LIVE_TIMEOUT, "latest to follow the new point", || latest(&mp, "web").as_deref() == Some(p2.name.as_str()));
    assert_same_file(&mp.join("web/latest/disks/os.raw"), &v2);
    assert_same_file(&disk_path(&mp, &p1, "os", "raw"), &v1);

    // A new item appears at the root.
    let db = env.path("db.img");
    random_file(&db, 300 * KIB + 1, &mut rng);
    let q = env.backup("db", &[("os", &db)], &[]);
    wait_until(LIVE_TIMEOUT, "the new item in the mount", || try_list(&mp).is_some_and(|l| l.contains(&"db".to_owned())));
    assert_same_file(&disk_path(&mp, &q, "os", "raw"), &db);

    // Deleting the newest point: it vanishes and latest goes back.
    env.ok(&["delete", &p2.sel()]);
    let took = wait_until(LIVE_TIMEOUT, "the deleted point to vanish", || {
        try_list(&mp.join("web")).is_some_and(|l| !l.contains(&p2.name)) && !point_dir(&mp, &p2).exists()
    });
    eprintln!("{t}: deleted point gone after {took:?}");
    wait_until(LIVE_TIMEOUT, "latest to go back to the first point", || latest(&mp, "web").as_deref() == Some(p1.name.as_str()));
    assert_same_file(&mp.join("web/latest/disks/os.raw"), &v1);

    // Deleting the last point of an item removes the item.
    env.ok(&["delete", &q.sel()]);
    wait_until(LIVE_TIMEOUT, "the emptied item to vanish", || try_list(&mp).is_some_and(|l| l == vec!["web".to_owned()]) && !mp.join("db").exists());
}

// ---------------------------------------------------------------- 5. gc and backup while reading

#[test]
fn mount_read_survives_delete_and_gc() {
    let t = "mount_read_survives_delete_and_gc";
    if !fuse_ok(t) {
        return;
    }
    let mut rng = rng(t);
    let mut env = Env::new();
    // Small packs, so gc has whole packs to delete and others to rewrite.
    env.set_env("KLUIS_PACK_SIZE", &(MIB / 2).to_string());
    let size = 16 * MIB + 777;
    let blocks = size.div_ceil(BLOCK);
    let img = env.path("os.img");
    random_file(&img, size, &mut rng);
    let v1 = keep(&env, &img, "os.v1");
    let p1 = env.backup("web", &[("os", &img)], &[]);
    let p1_ids = block_ids(&v1, BLOCK);

    // The next point shares every 4th block of the last quarter with p1 and
    // nothing else: once p1 is gone, the packs of its first three quarters
    // are dead (deleted) and those of the last quarter mostly dead (rewritten).
    let f = OpenOptions::new().write(true).open(&img).unwrap();
    for b in 0..blocks {
        if !(b >= blocks * 3 / 4 && b % 4 == 0) {
            let len = BLOCK.min(size - b * BLOCK);
            f.write_all_at(&random_bytes(&mut rng, len as usize), b * BLOCK).unwrap();
        }
    }
    drop(f);
    let v2 = keep(&env, &img, "os.v2");
    let p2 = env.backup("web", &[("os", &img)], &[]);

    let mp = env.path("mnt");
    let m = MountGuard::start(&env, &mp);
    let disk = File::open(disk_path(&mp, &p1, "os", "raw")).unwrap();
    let want = fs::read(&v1).unwrap();
    let half = 6 * MIB as usize; // beyond this, nothing is cached or read ahead yet
    let mut got = vec![0u8; size as usize];
    disk.read_exact_at(&mut got[..half], 0).unwrap();
    assert!(got[..half] == want[..half], "first part of p1 differs before gc");

    // Which packs hold the blocks not read yet.
    let mut unread_packs = std::collections::BTreeSet::new();
    let unread: std::collections::HashSet<&String> = p1_ids[(half as u64).div_ceil(BLOCK) as usize + 64..].iter().collect();
    for pack in pack_files(&env.vault) {
        if frames(&pack).iter().any(|fr| fr.chunks.iter().any(|(id, _)| unread.contains(id))) {
            unread_packs.insert(pack);
        }
    }
    assert!(!unread_packs.is_empty());

    env.ok(&["delete", &p1.sel()]);
    let gc = gc_past_soft_delete(&env);
    eprintln!("{t}: gc {gc}");
    assert!(gc["packs_deleted"].as_u64().unwrap() >= 1, "gc deleted no pack: {gc:#}");
    assert!(gc["packs_rewritten"].as_u64().unwrap() >= 1, "gc rewrote no pack: {gc:#}");
    // The packs holding p1's unread blocks are out of the index but stay on
    // disk: the open disk's lease holds them (store/lease.rs).
    assert!(gc["packs_kept_for_readers"].as_u64().unwrap() >= 1, "gc kept no pack for the open disk: {gc:#}");
    let gone: Vec<&PathBuf> = unread_packs.iter().filter(|p| !p.exists()).collect();
    assert!(gone.is_empty(), "gc removed packs the open disk still needs: {gone:?}");
    // The point is gone from the tree (by id: if p2 was taken in the same
    // second as p1, p2 now has the name p1 had) ...
    wait_until(LIVE_TIMEOUT, "the deleted point to vanish", || !point_ids(&mp, "web").contains(&p1.id));
    // ... but the open file reads on, from the packs gc unlinked.
    disk.read_exact_at(&mut got[half..], half as u64).unwrap_or_else(|e| panic!("reading p1 after gc: {e}"));
    if let Some(i) = (0..size as usize).find(|&i| got[i] != want[i]) {
        panic!("p1 read through the mount differs from its source at byte {i} (after gc from byte {half})");
    }
    drop(disk);
    // p2's name may have changed with p1 gone (see above): look it up again.
    let p2 = env.points(Some("web")).into_iter().find(|p| p.id == p2.id).expect("p2 is still there");
    wait_until(LIVE_TIMEOUT, "p2 under its current name", || point_dir(&mp, &p2).exists());
    assert_same_file(&disk_path(&mp, &p2, "os", "raw"), &v2);
    // Once no reader is left, the next gc removes what the first one kept.
    drop(m);
    let gc = gc_past_soft_delete(&env);
    assert_eq!(gc["packs_kept_for_readers"].as_u64(), Some(0), "{gc:#}");
    let left: Vec<&PathBuf> = unread_packs.iter().filter(|p| p.exists()).collect();
    assert!(left.is_empty(), "gc left packs holding p1's unread blocks after the mount ended: {left:?}");
    env.verify_clean(true);
}

/// A replica mounts like any vault and follows replication live: new
/// points appear, points gc dropped on the primary vanish, and a disk file
/// opened before the replication keeps reading the packs it removed.
#[test]
fn mount_of_a_replica_follows_replication() {
    let t = "mount_of_a_replica_follows_replication";
    if !fuse_ok(t) {
        return;
    }
    let mut rng = rng(t);
    let mut p = Env::new();
    p.set_env("KLUIS_PACK_SIZE", &(MIB / 2).to_string());
    p.purge_deleted_at_gc();
    let s = Env::empty();
    let to = s.vault.to_str().unwrap().to_owned();
    let img = p.path("os.img");
    let size = 40 * MIB + 99; // its tail is beyond any readahead of the first read
    random_file(&img, size, &mut rng);
    let v1 = keep(&p, &img, "os.v1");
    let p1 = p.backup("web", &[("os", &img)], &[]);
    p.ok(&["replicate", "--to", &to]);

    let mp = p.path("mnt");
    let m = MountGuard::start(&s, &mp);
    let disk = File::open(disk_path(&mp, &p1, "os", "raw")).unwrap();
    let want = fs::read(&v1).unwrap();
    let mut got = vec![0u8; size as usize];
    disk.read_exact_at(&mut got[..MIB as usize], 0).unwrap();

    // p1 replaced by p2 on the primary, collected, replicated.
    thread::sleep(Duration::from_millis(1100)); // a point name of its own
    random_file(&img, size, &mut rng);
    let v2 = keep(&p, &img, "os.v2");
    let p2 = p.backup("web", &[("os", &img)], &[]);
    p.ok(&["delete", &p1.sel()]);
    p.ok(&["gc"]);
    let r = p.json(&["replicate", "--to", &to]);
    // The packs p1 needs are out of the replica's index, but stay while its
    // disk is open there.
    assert_eq!(r["packs_removed"].as_u64(), Some(0), "{r}");
    assert!(r["packs_kept_for_readers"].as_u64().unwrap() >= 1, "{r}");
    wait_until(LIVE_TIMEOUT, "the replicated point in the mount", || point_ids(&mp, "web") == vec![p2.id.clone()]);
    assert_same_file(&disk_path(&mp, &p2, "os", "raw"), &v2);
    // The open file of p1 reads on from the unlinked packs.
    disk.read_exact_at(&mut got[MIB as usize..], MIB).unwrap_or_else(|e| panic!("reading p1 after replication: {e}"));
    assert!(got == want, "p1 read through the replica's mount differs after replication");
    // With no reader left, the next run removes them.
    drop(disk);
    drop(m);
    let r2 = p.json(&["replicate", "--to", &to]);
    assert_eq!(r2["packs_removed"], r["packs_kept_for_readers"], "{r2}");
    assert_eq!(r2["packs_kept_for_readers"].as_u64(), Some(0), "{r2}");
}

#[test]
fn mount_read_during_backups() {
    let t = "mount_read_during_backups";
    if !fuse_ok(t) {
        return;
    }
    let mut rng = rng(t);
    let env = Env::new();
    let img = env.path("os.img");
    random_file(&img, 8 * MIB + 4097, &mut rng);
    let v1 = keep(&env, &img, "os.v1");
    let p1 = env.backup("web", &[("os", &img)], &[]);

    let mp = env.path("mnt");
    let _m = MountGuard::start(&env, &mp);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (item, first, stop) = (mp.join("web"), p1.name.clone(), stop.clone());
        thread::spawn(move || {
            // Over and over while backups run: fresh opens, small reads,
            // alternately of the first point and of whatever `latest` is
            // now (opening a new point reads the index a backup is writing).
            let mut seen: Vec<(String, String)> = Vec::new(); // (point, blake3 of its disk)
            let t0 = Instant::now();
            // Until the backups are done and a point they made was read too.
            while seen.len() < 4 || !stop.load(Ordering::Relaxed) || (seen.iter().all(|s| s.0 == first) && t0.elapsed() < MOUNT_TIMEOUT) {
                let name = if seen.len().is_multiple_of(2) {
                    first.clone()
                } else {
                    fs::read_link(item.join("latest")).unwrap_or_else(|e| panic!("readlink latest during backup: {e}")).to_string_lossy().into_owned()
                };
                let path = item.join(&name).join("disks/os.raw");
                let mut f = File::open(&path).unwrap_or_else(|e| panic!("open {} during backup: {e}", path.display()));
                // Drop the kernel's cached pages: every pass must reach kluis.
                unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
                let mut h = blake3::Hasher::new();
                let mut buf = vec![0u8; 100 * KIB as usize + 13];
                loop {
                    let n = f.read(&mut buf).unwrap_or_else(|e| panic!("read {} during backup: {e}", path.display()));
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                seen.push((name, h.finalize().to_hex().to_string()));
            }
            seen
        })
    };
    let mut versions = vec![(p1.clone(), v1)];
    for v in 0..3 {
        if v > 0 {
            // Let the mount see the last point while the next backup runs.
            thread::sleep(Duration::from_millis(1100));
        }
        random_writes(&img, &mut rng, 8, 300 * KIB);
        let p = env.backup("web", &[("os", &img)], &[]);
        versions.push((p, keep(&env, &img, &format!("os.v{}", v + 2))));
    }
    stop.store(true, Ordering::Relaxed);
    let seen = reader.join().expect("reader thread");
    let want: std::collections::HashMap<&str, String> = versions.iter().map(|(p, c)| (p.name.as_str(), hash_file(c))).collect();
    for (i, (name, hash)) in seen.iter().enumerate() {
        let w = want.get(name.as_str()).unwrap_or_else(|| panic!("read {i} was of an unknown point {name}"));
        assert_eq!(hash, w, "read {i}: disk of {name} read during backups differs from its source");
    }
    let points: std::collections::BTreeSet<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    eprintln!("{t}: {} full reads of {} points during 3 backups", seen.len(), points.len());
    assert!(points.len() >= 2, "only {points:?} read while backups ran");
    for (p, copy) in &versions {
        wait_until(LIVE_TIMEOUT, "a point taken during reads", || point_dir(&mp, p).exists());
        assert_same_file(&disk_path(&mp, p, "os", "raw"), copy);
    }
}

// ---------------------------------------------------------------- 6. sparse

#[test]
fn mount_sparse_copy_and_seek_data() {
    let t = "mount_sparse_copy_and_seek_data";
    if !fuse_ok(t) {
        return;
    }
    let mut rng = rng(t);
    let env = Env::new();
    let size = 8 * MIB + 100;
    let img = env.path("holes.img");
    sparse_file(&img, size, &[(2 * MIB + 4096, 1000), (5 * MIB, 2 * BLOCK), (8 * MIB + 10, 90)], &mut rng);
    let p = env.backup("vm", &[("os", &img)], &[]);

    // Where the data is, block by block, as the source says.
    let src = fs::read(&img).unwrap();
    let data_blocks: Vec<bool> = src.chunks(BLOCK as usize).map(|c| c.iter().any(|&b| b != 0)).collect();
    let mut runs = Vec::new(); // [start, end) of data
    for (i, &d) in data_blocks.iter().enumerate() {
        let (s, e) = (i as u64 * BLOCK, ((i as u64 + 1) * BLOCK).min(size));
        match runs.last_mut() {
            Some((_, end)) if d && *end == s => *end = e,
            _ if d => runs.push((s, e)),
            _ => {}
        }
    }
    assert_eq!(runs, vec![(2 * MIB, 2 * MIB + BLOCK), (5 * MIB, 5 * MIB + 2 * BLOCK), (8 * MIB, size)]);

    let mp = env.path("mnt");
    let _m = MountGuard::start(&env, &mp);
    let raw = disk_path(&mp, &p, "os", "raw");
    let f = File::open(&raw).unwrap();
    assert_eq!(seek_runs(&f, size, &[size - 1, 100, 2 * MIB + 10], &mut rng), runs, "SEEK_DATA/SEEK_HOLE runs of {}", raw.display());
    assert_eq!(lseek(&f, 0, libc::SEEK_DATA).unwrap(), 2 * MIB, "first data is the first non-zero block");
    drop(f);

    // The VHD: the same runs, and its footer is data.
    let vhd_path = disk_path(&mp, &p, "os", "vhd");
    let vhd = File::open(&vhd_path).unwrap();
    let vsize = round512(size) + 512;
    // Probe the padding between the disk's end and the footer too.
    let vruns = seek_runs(&vhd, vsize, &[size - 1, size, size + 1, round512(size) - 1, round512(size)], &mut rng);
    assert_eq!(vruns[..2], runs[..2], "SEEK_DATA/SEEK_HOLE runs of {}", vhd_path.display());
    assert_eq!(vruns.last().map(|r| r.1), Some(vsize), "{}: the footer is not data: {vruns:?}", vhd_path.display());
    assert!(vruns[2..].iter().any(|r| r.0 <= 8 * MIB && r.1 >= size), "{}: the last disk block is not data: {vruns:?}", vhd_path.display());
    drop(vhd);

    let out = env.path("copy.raw");
    tool_ok("cp", &["--sparse=always", raw.to_str().unwrap(), out.to_str().unwrap()]);
    assert_same_file(&out, &img);
    let alloc = allocated(&out);
    assert!(alloc <= MIB, "cp --sparse=always of a mostly-hole disk allocated {alloc} of {size} bytes");
}

// ---------------------------------------------------------------- 7. config and recovery-point.json

#[test]
fn mount_config_and_point_json() {
    let t = "mount_config_and_point_json";
    if !fuse_ok(t) {
        return;
    }
    let mut rng = rng(t);
    let env = Env::new();
    let (os, data) = (env.path("os.img"), env.path("data.img"));
    random_file(&os, 700 * KIB + 9, &mut rng);
    random_file(&data, 200 * KIB, &mut rng);
    let (xml, tpl) = (env.path("web01.xml"), env.path("template.json"));
    let big: String = (0..20_000).map(|i| format!("<line n='{i}'/>\n")).collect(); // > 1 block: several chunks
    let mut points = Vec::new(); // (point, [(name, bytes)])
    for v in 0..3 {
        let x = format!("<domain version='{v}'>\n{}</domain>\n", if v == 1 { big.as_str() } else { "" });
        fs::write(&xml, &x).unwrap();
        fs::write(&tpl, format!("{{\"v\": {v}}}\n")).unwrap();
        let configs: Vec<&Path> = if v == 2 { vec![&xml] } else { vec![&xml, &tpl] };
        let p = env.backup("web", &[("os", &os), ("data", &data)], &configs);
        let mut saved = vec![("web01.xml".to_owned(), x.into_bytes())];
        if v != 2 {
            saved.push(("template.json".to_owned(), fs::read(&tpl).unwrap()));
        }
        points.push((p, saved));
        random_writes(&os, &mut rng, 3, 10 * KIB);
    }

    let mp = env.path("mnt");
    let _m = MountGuard::start(&env, &mp);
    for (p, saved) in &points {
        let dir = point_dir(&mp, p);
        // (`files/`, the guest filesystems, is tested elsewhere.)
        let mut entries = list(&dir);
        entries.retain(|e| e != "files");
        assert_eq!(entries, sorted(&["config", "disks", "recovery-point.json"]), "entries of {}", dir.display());
        let names: Vec<&str> = saved.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(list(&dir.join("config")), sorted(&names), "config files of {}", p.name);
        for (name, bytes) in saved {
            let f = dir.join("config").join(name);
            assert_eq!(fs::metadata(&f).unwrap().len(), bytes.len() as u64, "stat size of {}", f.display());
            assert!(fs::read(&f).unwrap() == *bytes, "{} differs from the file backed up", f.display());
        }

        let jf = dir.join("recovery-point.json");
        let s = fs::read_to_string(&jf).unwrap();
        assert_eq!(fs::metadata(&jf).unwrap().len(), s.len() as u64, "stat size of {}", jf.display());
        let j: Value = serde_json::from_str(&s).unwrap_or_else(|e| panic!("{}: bad JSON ({e}):\n{s}", jf.display()));
        assert_eq!(j["id"].as_str(), Some(p.id.as_str()), "{jf:?}: {j:#}");
        assert_eq!(j["item"].as_str(), Some("web"), "{jf:?}: {j:#}");
        let time = j["time"].as_str().unwrap_or_else(|| panic!("{jf:?} has no time: {j:#}"));
        assert_eq!(Some(time), p.json["time"].as_str(), "{jf:?}: time differs from points --json");
        assert!(time.starts_with(p.name.trim_end_matches('Z')), "{jf:?}: time {time} does not match the directory {}", p.name);
        assert!(j["consistency"].is_string(), "{jf:?}: {j:#}");
        let disks: Vec<(String, u64)> = j["disks"]
            .as_array()
            .unwrap_or_else(|| panic!("{jf:?} has no disks: {j:#}"))
            .iter()
            .map(|d| (d["name"].as_str().unwrap().to_owned(), d["size"].as_u64().unwrap()))
            .collect();
        let mut disks_sorted = disks.clone();
        disks_sorted.sort();
        assert_eq!(disks_sorted, vec![("data".to_owned(), 200 * KIB), ("os".to_owned(), 700 * KIB + 9)], "{jf:?}");
        assert_eq!(disks, p.disks, "{jf:?}: disks differ from points --json");
        let cfgs: Vec<(String, u64)> =
            j["configs"].as_array().unwrap().iter().map(|c| (c["name"].as_str().unwrap().to_owned(), c["size"].as_u64().unwrap())).collect();
        let want: Vec<(String, u64)> = saved.iter().map(|(n, b)| (n.clone(), b.len() as u64)).collect();
        assert_eq!(cfgs, want, "{jf:?}: configs");
    }
}

// ---------------------------------------------------------------- 8. corruption

#[test]
fn mount_corrupt_chunk_gives_eio_and_stays_up() {
    let t = "mount_corrupt_chunk_gives_eio_and_stays_up";
    if !fuse_ok(t) {
        return;
    }
    let mut rng = rng(t);
    let env = Env::new();
    let size = 4 * MIB + 333;
    let img = env.path("os.img");
    random_file(&img, size, &mut rng);
    let p = env.backup("web", &[("os", &img)], &[]);

    // Flip one byte in the middle of the payload of block 32's chunk.
    let bad = 32u64;
    let id = block_ids(&img, BLOCK)[bad as usize].clone();
    let (pack, frame) = pack_files(&env.vault)
        .into_iter()
        .find_map(|p| frames(&p).into_iter().find(|f| f.holds(&id)).map(|f| (p, f)))
        .unwrap_or_else(|| panic!("chunk {id} of block {bad} is in no pack"));
    let at = frame.chunk_offset(&id) + BLOCK / 2;
    let mut byte = [0u8];
    File::open(&pack).unwrap().read_exact_at(&mut byte, at).unwrap();
    write_at(&pack, at, &[byte[0] ^ 0x5a]);

    let mp = env.path("mnt");
    let mut m = MountGuard::start(&env, &mp);
    let want = fs::read(&img).unwrap();
    let raw = disk_path(&mp, &p, "os", "raw");
    let f = File::open(&raw).unwrap();
    let mut buf = vec![0u8; 4096];
    let e = f.read_exact_at(&mut buf, bad * BLOCK + 1000).expect_err("reading the corrupt block succeeded");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "reading the corrupt block: {e}");
    // Again (nothing bad may have been cached), and through the VHD view.
    let e = f.read_exact_at(&mut buf, bad * BLOCK).expect_err("second read of the corrupt block succeeded");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "second read of the corrupt block: {e}");
    let vhd = File::open(disk_path(&mp, &p, "os", "vhd")).unwrap();
    let e = vhd.read_exact_at(&mut buf, bad * BLOCK + 512).expect_err("reading the corrupt block of the VHD succeeded");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "reading the corrupt block of the VHD: {e}");
    let e = fs::read(&raw).expect_err("reading the whole damaged disk succeeded");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "reading the whole damaged disk: {e}");

    // Everything else still reads (well before the bad block, so kernel
    // readahead cannot reach it, and after it).
    for (off, len) in [(0, BLOCK as usize), (5 * BLOCK + 7, 3 * BLOCK as usize), ((bad + 1) * BLOCK, 2 * BLOCK as usize), (4 * MIB, 333)] {
        let mut b = vec![0u8; len];
        f.read_exact_at(&mut b, off).unwrap_or_else(|e| panic!("reading {len} at {off} after the error: {e}"));
        assert!(b[..] == want[off as usize..off as usize + len], "{len} bytes at {off} differ");
    }
    drop((f, vhd));
    assert_eq!(list(&mp), vec!["web".to_owned()], "the mount root after the error");
    assert_eq!(list(&mp.join("web")), sorted(&["latest", &p.name]));
    assert!(m.alive(), "the mount process died after a read error: {}", m.stderr());
    assert!(is_mounted(&m.mp));
    wait_until(Duration::from_secs(2), "the mount to log the damaged chunk on stderr", || m.stderr().contains(&id[..8]));
    let line = m.stderr().lines().find(|l| l.contains(&id[..8])).unwrap().to_owned();
    eprintln!("{t}: mount said: {line}");
}

// ---------------------------------------------------------------- 9. two mounts, umount, SIGINT

#[test]
fn mount_twice_then_umount_and_sigint() {
    let t = "mount_twice_then_umount_and_sigint";
    if !fuse_ok(t) {
        return;
    }
    let mut rng = rng(t);
    let env = Env::new();
    let img = env.path("os.img");
    random_file(&img, 2 * MIB + 5, &mut rng);
    let p = env.backup("web", &[("os", &img)], &[]);

    let (mp1, mp2) = (env.path("mnt1"), env.path("mnt2"));
    let mut m1 = MountGuard::start(&env, &mp1);
    let mut m2 = MountGuard::start_with(&env, &mp2, &["--json"]);
    assert!(m1.stdout().starts_with("mounted "), "human output of mount: {}", m1.stdout());
    let j: Value = {
        let mut v = Value::Null;
        wait_until(Duration::from_secs(2), "the JSON line of `mount --json`", || {
            serde_json::from_str::<Value>(&m2.stdout()).map(|x| v = x).is_ok()
        });
        v
    };
    assert!(j["mounted"].as_str().is_some_and(|s| s.ends_with("mnt2")), "mount --json said: {j:#}");
    // Both serve the same data at the same time.
    let (a, b) = (File::open(disk_path(&mp1, &p, "os", "raw")).unwrap(), File::open(disk_path(&mp2, &p, "os", "raw")).unwrap());
    let (mut x, mut y) = (vec![0u8; 100_000], vec![0u8; 100_000]);
    a.read_exact_at(&mut x, 12345).unwrap();
    b.read_exact_at(&mut y, 12345).unwrap();
    assert!(x == y);
    drop((a, b));
    assert_same_file(&disk_path(&mp1, &p, "os", "raw"), &img);
    assert_same_file(&disk_path(&mp2, &p, "os", "raw"), &img);

    // `kluis umount`: the first mount ends cleanly, the second is untouched.
    env.ok(&["umount", m1.mp.to_str().unwrap()]);
    let st = m1.wait_exit(MOUNT_TIMEOUT);
    assert!(st.success(), "kluis mount after `kluis umount` exited {st}\nstderr: {}", m1.stderr());
    assert!(!is_mounted(&m1.mp), "{} still in /proc/mounts", m1.mp.display());
    assert_eq!(list(&m1.mp), Vec::<String>::new(), "mountpoint not empty after umount");
    assert!(m2.alive() && is_mounted(&m2.mp));
    assert_same_file(&disk_path(&mp2, &p, "os", "raw"), &img);
    // Unmounting what is no longer mounted is an error, in one line.
    env.fail(&["umount", m1.mp.to_str().unwrap()]).one_error_line();

    // SIGINT: the second mount unmounts itself and exits 0.
    assert_eq!(unsafe { libc::kill(m2.pid(), libc::SIGINT) }, 0);
    let st = m2.wait_exit(MOUNT_TIMEOUT);
    assert!(st.success(), "kluis mount after SIGINT exited {st}\nstderr: {}", m2.stderr());
    assert!(!is_mounted(&m2.mp), "{} still in /proc/mounts after SIGINT", m2.mp.display());
    assert_eq!(list(&m2.mp), Vec::<String>::new(), "mountpoint not empty after SIGINT");
}
