//! Files inside guest filesystems (issue 4): real images built with
//! sfdisk/sgdisk, mkfs.ext4 -d, mkfs.vfat + mcopy, mkntfs + ntfs-3g, backed
//! up, then read back through the FUSE mount (`files/NAME/pN/...`) and
//! through `kluis files cp`, and compared with the source tree: content,
//! size, mode, owner, mtime, symlink targets, hard links.
//!
//! A test skips (printing why) only when a tool, /dev/fuse or root is
//! missing. Mounts are always released by [`Mount`]'s Drop.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::common::*;

/// The source tree every filesystem gets (FAT: without links and modes).
/// The data of `etc/sparse` (3 MiB): the rest is holes.
const SPARSE: [(u64, u64); 3] = [(0, 5000), (MIB + 100, 100), (3 * MIB - 10, 10)];

pub(super) fn make_tree(dir: &Path, rng: &mut fastrand::Rng) {
    fs::create_dir_all(dir.join("etc/deep/er/est")).unwrap();
    fs::create_dir_all(dir.join("home/user")).unwrap();
    for (name, size) in [("empty", 0u64), ("one", 1), ("page-1", 4095), ("etc/big", MIB + 1), ("etc/deep/er/est/x", 70_000), ("home/user/notes.txt", 12)] {
        random_file(&dir.join(name), size, rng);
    }
    sparse_file(&dir.join("etc/sparse"), 3 * MIB, &SPARSE, rng);
    for (name, mode) in [("one", 0o600), ("page-1", 0o4755), ("etc/big", 0o640), ("home/user", 0o700)] {
        fs::set_permissions(dir.join(name), fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// Links and owners, which FAT cannot hold.
pub(super) fn add_links(dir: &Path) {
    symlink("../one", dir.join("etc/rel-link")).unwrap();
    symlink("/etc/big", dir.join("abs-link")).unwrap();
    symlink("nowhere/at/all", dir.join("home/dangling")).unwrap();
    fs::hard_link(dir.join("etc/deep/er/est/x"), dir.join("home/x-hard")).unwrap();
    std::os::unix::fs::lchown(dir.join("home/user"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::chown(dir.join("home/user/notes.txt"), Some(1000), Some(100)).unwrap();
}

pub(super) fn set_times(dir: &Path) {
    // Fixed, distinct mtimes with sub-second parts (leaves first, then dirs).
    let mut all = Vec::new();
    collect(dir, &mut all);
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        let t = format!("@{}.{:09}", 1_600_000_000 + i as u64 * 3677, 123_456_700 + i as u64 * 100);
        tool_ok("touch", &["-h", "-d", &t, p.to_str().unwrap()]);
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if p.is_dir() && !p.is_symlink() {
            collect(&p, out);
        }
    }
}

#[derive(Clone, Copy)]
pub(super) struct Check {
    pub owner: bool,
    pub mode: bool,
    /// mtime must match to this many nanoseconds (ext4 via mkfs -d keeps
    /// whole seconds, NTFS 100 ns, FAT 2 s and local time).
    pub mtime_ns: Option<i128>,
    pub links: bool,
}

/// Compares `got` (a copy or the mount) with `want`, recursively.
pub(super) fn compare(want: &Path, got: &Path, c: Check) {
    let mut inos: HashMap<u64, u64> = HashMap::new();
    let mut all = Vec::new();
    collect(want, &mut all);
    assert!(!all.is_empty());
    for w in all {
        let rel = w.strip_prefix(want).unwrap();
        let g = got.join(rel);
        let (wm, gm) = (fs::symlink_metadata(&w).unwrap(), fs::symlink_metadata(&g).unwrap_or_else(|e| panic!("{}: {e}", g.display())));
        assert_eq!(wm.file_type().is_dir(), gm.file_type().is_dir(), "{}", rel.display());
        if c.links {
            assert_eq!(wm.file_type().is_symlink(), gm.file_type().is_symlink(), "{}", rel.display());
        }
        if wm.file_type().is_symlink() {
            if c.links {
                assert_eq!(fs::read_link(&w).unwrap(), fs::read_link(&g).unwrap(), "symlink {}", rel.display());
            }
            continue;
        }
        if wm.is_file() {
            assert_eq!(wm.len(), gm.len(), "size of {}", rel.display());
            assert_same_file(&g, &w);
        }
        if c.mode {
            assert_eq!(wm.mode() & 0o7777, gm.mode() & 0o7777, "mode of {}", rel.display());
        }
        if c.owner {
            assert_eq!((wm.uid(), wm.gid()), (gm.uid(), gm.gid()), "owner of {}", rel.display());
        }
        if let Some(tol) = c.mtime_ns {
            let (wt, gt) = (wm.mtime() as i128 * 1_000_000_000 + wm.mtime_nsec() as i128, gm.mtime() as i128 * 1_000_000_000 + gm.mtime_nsec() as i128);
            assert!((wt - gt).abs() <= tol, "mtime of {}: want {wt}, got {gt}", rel.display());
        }
        if c.links && wm.is_file() && wm.nlink() > 1 {
            assert_eq!(gm.nlink(), wm.nlink(), "nlink of {}", rel.display());
            if let Some(prev) = inos.insert(wm.ino(), gm.ino()) {
                assert_eq!(prev, gm.ino(), "hard links of {} do not share an inode", rel.display());
            }
        }
    }
}

/// `kluis mount` as a child; Drop unmounts (`fusermount3 -u`, else lazily)
/// and reaps it, also when the test panics.
pub(super) struct Mount {
    pub(super) mp: PathBuf,
    child: Child,
    log: PathBuf,
}

fn mounted(mp: &Path) -> bool {
    fs::read_to_string("/proc/mounts").unwrap_or_default().lines().any(|l| l.split(' ').nth(1) == mp.to_str())
}

impl Mount {
    pub(super) fn start(env: &Env, mp: &Path) -> (Mount, Instant) {
        fs::create_dir_all(mp).unwrap();
        let mp = fs::canonicalize(mp).unwrap();
        let t0 = Instant::now();
        // The mount logs the damaged disk's errors: keep them for a failure, out of a passing run.
        let log = env.path("mount.stderr");
        let child = env.cmd().arg("mount").arg(&mp).stdout(Stdio::null()).stderr(fs::File::create(&log).unwrap()).spawn().unwrap();
        let m = Mount { mp, child, log };
        while !mounted(&m.mp) {
            assert!(t0.elapsed() < Duration::from_secs(10), "mount did not appear");
            std::thread::sleep(Duration::from_millis(5));
        }
        (m, t0)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kluis mount stderr:\n{}", fs::read_to_string(&self.log).unwrap_or_default());
        }
        let mp = self.mp.to_str().unwrap();
        if mounted(&self.mp) && !tool("fusermount3", &["-u", mp]).is_some_and(|o| o.status.success()) {
            let _ = tool("umount", &["-l", mp]);
        }
        let t0 = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub(super) fn can_fuse(test: &str) -> bool {
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        skip(test, &format!("cannot open /dev/fuse: {e}"));
        return false;
    }
    true
}

pub(super) fn need(test: &str, tools: &[&str]) -> bool {
    for t in tools {
        if Command::new("sh").arg("-c").arg(format!("command -v {t}")).output().map(|o| !o.status.success()).unwrap_or(true) {
            skip(test, &format!("{t} is not installed"));
            return false;
        }
    }
    true
}

pub(super) fn sfdisk(img: &Path, script: &str) {
    use std::io::Write;
    let mut c = Command::new("sfdisk").arg("-q").arg(img).stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    c.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success(), "sfdisk {script}");
}

/// Writes `fs_img` into `disk` at sector `start`.
pub(super) fn place(disk: &Path, fs_img: &Path, start: u64) {
    tool_ok("dd", &[&format!("if={}", fs_img.display()), &format!("of={}", disk.display()), "bs=1M", &format!("seek={}", start * 512), "oflag=seek_bytes", "conv=notrunc,sparse", "status=none"]);
}

pub(super) fn ext4(env: &Env, name: &str, src: &Path, size: &str) -> PathBuf {
    let p = env.path(name);
    tool_ok("truncate", &["-s", size, p.to_str().unwrap()]);
    tool_ok("mkfs.ext4", &["-q", "-F", "-d", src.to_str().unwrap(), p.to_str().unwrap()]);
    p
}

/// An NTFS image holding `src` (copied with cp -a through ntfs-3g), or None
/// when ntfs-3g cannot mount here.
pub(super) fn ntfs(env: &Env, name: &str, src: &Path) -> Option<PathBuf> {
    let p = env.path(name);
    tool_ok("truncate", &["-s", "24M", p.to_str().unwrap()]);
    tool_ok("mkntfs", &["-F", "-Q", "-q", p.to_str().unwrap()]);
    let mp = env.path(&format!("{name}-mnt"));
    fs::create_dir_all(&mp).unwrap();
    let out = tool("ntfs-3g", &[p.to_str().unwrap(), mp.to_str().unwrap()])?;
    if !out.status.success() {
        skip("guestfs ntfs", &format!("ntfs-3g cannot mount: {}", text(&out.stderr)));
        return None;
    }
    let cp = tool("cp", &["-a", &format!("{}/.", src.display()), mp.to_str().unwrap()]);
    let _ = tool("fusermount3", &["-u", mp.to_str().unwrap()]);
    assert!(cp.is_some_and(|o| o.status.success()), "cp -a into NTFS failed");
    Some(p)
}

/// Sources: the full tree (ext4, NTFS) and a FAT-friendly one.
struct Sources {
    full: PathBuf,
    fat: PathBuf,
}

fn sources(env: &Env, rng: &mut fastrand::Rng) -> Sources {
    let full = env.path("src");
    make_tree(&full, rng);
    add_links(&full);
    set_times(&full);
    let fat = env.path("src-fat");
    make_tree(&fat, rng);
    Sources { full, fat }
}

/// Disk `os`: MBR with p1 ext4, p2 FAT16, extended with p5 NTFS and p6
/// unformatted. Returns the image and whether NTFS is in it.
fn os_disk(env: &Env, s: &Sources) -> (PathBuf, bool) {
    let disk = env.path("os.img");
    tool_ok("truncate", &["-s", "128M", disk.to_str().unwrap()]);
    sfdisk(&disk, "label: dos\n2048,40M,83\n,20M,6\n,,5\n,30M,7\n,8M,83\n");
    place(&disk, &ext4(env, "p1.ext4", &s.full, "40M"), 2048);
    let fat = env.path("p2.fat");
    tool_ok("truncate", &["-s", "20M", fat.to_str().unwrap()]);
    tool_ok("mkfs.vfat", &["-F", "16", fat.to_str().unwrap()]);
    let items: Vec<String> = fs::read_dir(&s.fat).unwrap().map(|e| e.unwrap().path().display().to_string()).collect();
    let mut args = vec!["-s", "-m", "-i", fat.to_str().unwrap()];
    args.extend(items.iter().map(|s| s.as_str()));
    args.push("::/");
    tool_ok("mcopy", &args);
    place(&disk, &fat, 2048 + 40 * 2048);
    // The first logical partition starts 2048 sectors after the extended one.
    let with_ntfs = match ntfs(env, "p5.ntfs", &s.full) {
        Some(n) => {
            place(&disk, &n, 2048 + 60 * 2048 + 2048);
            true
        }
        None => false,
    };
    (disk, with_ntfs)
}

#[test]
fn guest_files_through_mount_and_cli() {
    let t = "guest_files_through_mount_and_cli";
    if !need(t, &["sfdisk", "sgdisk", "mkfs.ext4", "mkfs.vfat", "mcopy", "mkntfs", "ntfs-3g"]) || !can_fuse(t) {
        return;
    }
    if unsafe { libc::geteuid() } != 0 {
        return skip(t, "needs root (file owners in the source tree)");
    }
    let mut rng = rng(t);
    let env = Env::new();
    let s = sources(&env, &mut rng);
    let (os, with_ntfs) = os_disk(&env, &s);
    // Disk `data`: GPT with one ext4 partition at 1 MiB.
    let data = env.path("data.img");
    tool_ok("truncate", &["-s", "48M", data.to_str().unwrap()]);
    tool_ok("sgdisk", &["-n", "1:2048:+40M", "-t", "1:8300", data.to_str().unwrap()]);
    place(&data, &ext4(&env, "data.ext4", &s.full, "40M"), 2048);
    // Disk `bare`: ext4 on the whole disk, no table → p0.
    let bare = ext4(&env, "bare.img", &s.full, "16M");
    // Disk `bad`: an ext4 whose group descriptors are garbage.
    let bad = ext4(&env, "bad.img", &s.full, "16M");
    // Past the superblock (1024..2048): the group descriptors of 1 KiB- and 4 KiB-block layouts.
    write_at(&bad, 2048, &random_bytes(&mut rng, 6144));
    let p = env.backup("vm", &[("os", &os), ("data", &data), ("bare", &bare), ("bad", &bad)], &[]);

    // --- partitions as the CLI sees them
    let parts = env.json(&["files", "ls", &p.sel(), "os"]);
    let names: Vec<&str> = parts.as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["os:p1", "os:p2", if with_ntfs { "os:p5" } else { "p5.txt" }, "p6.txt"]);

    // --- through the mount
    let (m, _) = Mount::start(&env, &env.path("mnt"));
    let files = m.mp.join("vm").join(&p.name).join("files");
    let full = Check { owner: true, mode: true, mtime_ns: Some(999_999_999), links: true };
    compare(&s.full, &files.join("os/p1"), full);
    compare(&s.full, &files.join("data/p1"), full);
    compare(&s.full, &files.join("bare/p0"), full);
    compare(&s.fat, &files.join("os/p2"), Check { owner: false, mode: false, mtime_ns: Some(2_000_000_000 + 86_400 * 1_000_000_000), links: false });
    if with_ntfs {
        compare(&s.full, &files.join("os/p5"), Check { owner: false, mode: false, mtime_ns: Some(100), links: true });
    }
    let note = fs::read_to_string(files.join("os/p6.txt")).unwrap();
    assert!(note.contains("p6") && note.contains("disks/os.raw"), "{note}");
    // A damaged guest filesystem is EIO, and the mount lives on.
    let e = fs::read_dir(files.join("bad/p0")).and_then(|mut d| d.next().transpose()).expect_err("damaged ext4 listed");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_same_file(&files.join("os/p1/etc/big"), &s.full.join("etc/big"));
    // A sparse guest file keeps its holes: SEEK_DATA/SEEK_HOLE find its
    // data in whole guest blocks, and st_blocks counts only those.
    let sparse = fs::File::open(files.join("os/p1/etc/sparse")).unwrap();
    let runs = seek_runs(&sparse, 3 * MIB, &[], &mut rng);
    assert_eq!(runs.len(), SPARSE.len(), "{runs:?}");
    for ((s, e), (off, len)) in runs.iter().zip(SPARSE) {
        assert!(*s <= off && off + len <= *e && e - s <= len + 8192, "run {s}..{e} for data {off}+{len}");
    }
    assert!(sparse.metadata().unwrap().blocks() * 512 <= 64 * 1024, "st_blocks of a sparse guest file");
    // Read-only.
    assert!(fs::write(files.join("os/p1/new"), b"x").is_err());

    // --- cp -r out of the mount keeps everything (cp -a) and so does `kluis files cp`
    let via_mount = env.path("via-mount");
    tool_ok("cp", &["-a", files.join("os/p1").to_str().unwrap(), via_mount.to_str().unwrap()]);
    compare(&s.full, &via_mount, full);
    drop(m);

    for (spec, want, check) in [("os:p1/", &s.full, full), ("bare:p0", &s.full, full), ("os:p2/", &s.fat, Check { owner: false, mode: false, mtime_ns: None, links: false })] {
        let dest = env.path(&format!("cp-{}", spec.replace([':', '/'], "-")));
        let rep = env.json(&["files", "cp", &p.sel(), spec, dest.to_str().unwrap(), "-r"]);
        assert_eq!(rep["errors"], 0, "{rep}");
        compare(want, &dest, check);
    }
    // One file to an existing directory; a directory without -r fails.
    let one = env.path("one-file");
    fs::create_dir(&one).unwrap();
    env.ok(&["files", "cp", &p.sel(), "os:p1/page-1", one.to_str().unwrap()]);
    assert_eq!(fs::metadata(one.join("page-1")).unwrap().mode() & 0o7777, 0o4755);
    assert_same_file(&one.join("page-1"), &s.full.join("page-1"));
    env.fail(&["files", "cp", &p.sel(), "os:p1/etc", one.to_str().unwrap()]).one_error_line();
    env.fail(&["files", "ls", &p.sel(), "os:p1/no/such"]).one_error_line();
    let ls = env.json(&["files", "ls", &p.sel(), "os:p1/etc"]);
    let link = ls.as_array().unwrap().iter().find(|e| e["name"] == "rel-link").unwrap();
    assert_eq!((link["kind"].as_str(), link["target"].as_str()), (Some("symlink"), Some("../one")));
}

#[test]
fn guest_file_versions() {
    let t = "guest_file_versions";
    if !need(t, &["mkfs.ext4", "debugfs"]) {
        return;
    }
    let mut rng = rng(t);
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src, &mut rng);
    let disk = ext4(&env, "d.img", &src, "16M");
    let p1 = env.backup("vm", &[("d", &disk)], &[]);
    // Unchanged: not listed (the partition's blocks are all the same).
    env.backup("vm", &[("d", &disk)], &[]);
    // Another file changes; ours does not (same blocks in a changed partition).
    let d = disk.to_str().unwrap();
    let other = env.path("other");
    random_file(&other, 5000, &mut rng);
    tool_ok("debugfs", &["-w", "-R", &format!("write {} newfile", other.display()), d]);
    env.backup("vm", &[("d", &disk)], &[]);
    // Ours changes.
    let v2 = env.path("v2");
    random_file(&v2, 777, &mut rng);
    tool_ok("debugfs", &["-w", "-R", "rm home/user/notes.txt", d]);
    tool_ok("debugfs", &["-w", "-R", &format!("write {} home/user/notes.txt", v2.display()), d]);
    let p4 = env.backup("vm", &[("d", &disk)], &[]);
    // And goes away.
    tool_ok("debugfs", &["-w", "-R", "rm home/user/notes.txt", d]);
    let p5 = env.backup("vm", &[("d", &disk)], &[]);

    let v = env.json(&["files", "versions", "vm", "d:p0/home/user/notes.txt"]);
    let got: Vec<(String, String)> = v.as_array().unwrap().iter().map(|x| (x["id"].as_str().unwrap().to_owned(), x["change"].as_str().unwrap().to_owned())).collect();
    assert_eq!(got, vec![(p1.id.clone(), "new".into()), (p4.id.clone(), "changed".into()), (p5.id.clone(), "deleted".into())], "{v:#}");
    assert_eq!(v[1]["size"], 777);
    // Copy out the old version.
    let out = env.path("old");
    env.ok(&["files", "cp", &p1.sel(), "d:p0/home/user/notes.txt", out.to_str().unwrap()]);
    assert_same_file(&out, &src.join("home/user/notes.txt"));
}

/// Mount start → first byte of a guest file on a 2 GiB disk, and a big
/// directory listed through the mount. Prints the numbers and fails only
/// far above the targets. `KLUIS_GUEST_ENTRIES` sets the directory's size
/// (default 20,000 to keep the suite short; the benchmark uses 100,000).
#[test]
fn guest_latency_and_big_directory() {
    let t = "guest_latency_and_big_directory";
    if !need(t, &["mkfs.ext4"]) || !can_fuse(t) {
        return;
    }
    let mut rng = rng(t);
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("many")).unwrap();
    let entries: usize = std::env::var("KLUIS_GUEST_ENTRIES").ok().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    for i in 0..entries {
        fs::write(src.join(format!("many/f{i:06}")), b"").unwrap();
    }
    random_file(&src.join("hello"), 100_000, &mut rng);
    let disk = ext4(&env, "big.img", &src, "2G");
    let p = env.backup("vm", &[("d", &disk)], &[]);
    fs::remove_dir_all(src.join("many")).unwrap();

    let (m, t0) = Mount::start(&env, &env.path("mnt"));
    let f = m.mp.join("vm").join(&p.name).join("files/d/p0/hello");
    let mut b = [0u8; 1];
    std::io::Read::read_exact(&mut fs::File::open(&f).unwrap(), &mut b).unwrap();
    let first = t0.elapsed();
    let t1 = Instant::now();
    let n = fs::read_dir(m.mp.join("vm").join(&p.name).join("files/d/p0/many")).unwrap().count();
    let list = t1.elapsed();
    assert_eq!(n, entries);
    eprintln!("guest: mount start -> first byte of a guest file on a 2 GiB disk: {first:?}; readdir of {entries} entries: {list:?}");
    assert!(first < Duration::from_secs(5), "first byte after {first:?}");
    assert!(list < Duration::from_secs(5), "listing took {list:?}");
}

/// Pages of `f` that the kernel holds in its page cache (mincore on a
/// mapping of it, which reads nothing), and the file's page count.
fn resident_pages(f: &Path) -> (usize, usize) {
    use std::os::fd::AsRawFd;
    let file = fs::File::open(f).unwrap();
    let len = file.metadata().unwrap().len() as usize;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let pages = len.div_ceil(page);
    let mut vec = vec![0u8; pages];
    unsafe {
        let map = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0);
        assert_ne!(map, libc::MAP_FAILED, "mmap {}", f.display());
        assert_eq!(libc::mincore(map, len, vec.as_mut_ptr()), 0, "mincore {}", f.display());
        libc::munmap(map, len);
    }
    (vec.iter().filter(|b| **b & 1 != 0).count(), pages)
}

/// Reading the small files of a guest directory one after the other (as
/// `cp -r` does) makes the mount push the following ones into the page
/// cache before they are read, with their exact bytes; a single read in a
/// directory pushes nothing.
#[test]
fn guest_directory_walk_is_read_ahead() {
    let t = "guest_directory_walk_is_read_ahead";
    if !need(t, &["mkfs.ext4"]) || !can_fuse(t) {
        return;
    }
    let mut rng = rng(t);
    let env = Env::new();
    let src = env.path("src");
    for d in ["walk", "single"] {
        fs::create_dir_all(src.join(d)).unwrap();
        for i in 0..40 {
            let n = rng.u64(1..60_000);
            random_file(&src.join(d).join(format!("f{i:02}")), n, &mut rng);
        }
    }
    let disk = ext4(&env, "walk.img", &src, "64M");
    let p = env.backup("vm", &[("d", &disk)], &[]);

    let (m, _) = Mount::start(&env, &env.path("mnt"));
    let root = m.mp.join("vm").join(&p.name).join("files/d/p0");
    let listed = |d: &str| -> Vec<PathBuf> { fs::read_dir(root.join(d)).unwrap().map(|e| e.unwrap().path()).collect() };

    let single = listed("single");
    assert_eq!(fs::read(&single[0]).unwrap(), fs::read(src.join("single").join(single[0].file_name().unwrap())).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    for f in &single[1..] {
        assert_eq!(resident_pages(f).0, 0, "{} was pushed after a single read in its directory", f.display());
    }

    let walk = listed("walk");
    for f in &walk[..2] {
        fs::read(f).unwrap();
    }
    let t0 = Instant::now();
    let cached = |f: &PathBuf| {
        let (r, n) = resident_pages(f);
        r == n
    };
    while !walk[2..].iter().all(cached) {
        let missing: Vec<_> = walk[2..].iter().filter(|f| !cached(f)).collect();
        assert!(t0.elapsed() < Duration::from_secs(10), "not pushed after 10 s: {missing:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    for f in &walk {
        let want = fs::read(src.join("walk").join(f.file_name().unwrap())).unwrap();
        assert!(fs::read(f).unwrap() == want, "{} read back wrong", f.display());
    }
}
