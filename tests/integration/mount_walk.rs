//! Every directory of the mount lists what it holds (issue 18): the mount
//! is walked from its root, never by a known name, with the tools a user
//! has (`find`, `ls -la`, `cp -a`, `rsync -a`, Python's `os.scandir`), and
//! what they find is compared with a loop mount of each original
//! filesystem (ext4, FAT, NTFS in a GPT disk; ext4 on a disk without a
//! partition table). Each walk runs twice: with READDIRPLUS (the default)
//! and with plain READDIR (`KLUIS_NO_READDIRPLUS`). `kluis files ls` must
//! list the same entries without FUSE. A partition whose filesystem cannot
//! be opened is listed too, and a 100,000-entry directory lists whole.
//!
//! Needs root (loop mounts), /dev/fuse and the mkfs tools; skips, saying
//! why, when one is missing. Every mount is released by a guard.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::common::*;
use super::guestfs::{add_links, compare, ext4, make_tree, need, ntfs, place, set_times, sfdisk, Check};
use super::mount::{fuse_ok, MountGuard};

/// A filesystem image mounted read-only (loop, or ntfs-3g); unmounted on drop.
struct LoopMount {
    dir: PathBuf,
}

impl LoopMount {
    fn new(image: &Path, dir: PathBuf, ntfs: bool) -> Result<LoopMount, String> {
        if ntfs { LoopMount::with(image, dir, "ntfs-3g", "ro") } else { LoopMount::with(image, dir, "mount", "loop,ro") }
    }

    fn writable(image: &Path, dir: PathBuf) -> Result<LoopMount, String> {
        LoopMount::with(image, dir, "mount", "loop")
    }

    fn with(image: &Path, dir: PathBuf, prog: &str, options: &str) -> Result<LoopMount, String> {
        fs::create_dir_all(&dir).unwrap();
        let (img, d) = (image.to_str().unwrap(), dir.to_str().unwrap());
        let out = tool(prog, &["-o", options, img, d]);
        match out {
            Some(o) if o.status.success() => Ok(LoopMount { dir }),
            Some(o) => Err(format!("cannot mount {img}: {}", text(&o.stderr).trim())),
            None => Err("mount tool not found".into()),
        }
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let d = self.dir.to_str().unwrap();
        if !tool("umount", &[d]).is_some_and(|o| o.status.success()) {
            let _ = tool("umount", &["-l", d]);
        }
    }
}

/// An original filesystem as the host reads it: a loop mount, or for FAT
/// on a kernel without vfat, the tree mtools copies out of it.
struct Original {
    dir: PathBuf,
    _mount: Option<LoopMount>,
}

impl Original {
    fn mount(image: &Path, dir: PathBuf, ntfs: bool) -> Result<Original, String> {
        Ok(Original { dir: dir.clone(), _mount: Some(LoopMount::new(image, dir, ntfs)?) })
    }

    fn fat(image: &Path, dir: PathBuf) -> Original {
        if let Ok(m) = Original::mount(image, dir.clone(), false) {
            return m;
        }
        let _ = fs::remove_dir(&dir);
        fs::create_dir_all(&dir).unwrap();
        tool_ok("mcopy", &["-s", "-m", "-n", "-i", image.to_str().unwrap(), "::/*", dir.to_str().unwrap()]);
        Original { dir, _mount: None }
    }
}

/// `find DIR -mindepth 1`: relative path → (type letter, size).
fn find(dir: &Path) -> BTreeMap<String, (char, u64)> {
    let out = tool_ok("find", &[dir.to_str().unwrap(), "-mindepth", "1", "-printf", "%y %s %P\\n"]);
    out.lines()
        .map(|l| {
            let mut f = l.splitn(3, ' ');
            let (t, s, p) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            (p.to_owned(), (t.chars().next().unwrap(), s.parse().unwrap()))
        })
        .collect()
}

/// Python's `os.scandir`, recursively, not following symlinks: relative
/// path → type letter as find prints it.
fn scandir(dir: &Path) -> BTreeMap<String, char> {
    let script = r#"
import os, sys
root = sys.argv[1]
def walk(d):
    with os.scandir(d) as it:
        for e in it:
            t = 'l' if e.is_symlink() else 'd' if e.is_dir(follow_symlinks=False) else 'f' if e.is_file(follow_symlinks=False) else '?'
            print(t, os.path.relpath(e.path, root))
            if t == 'd':
                walk(e.path)
walk(root)
"#;
    let out = tool_ok("python3", &["-c", script, dir.to_str().unwrap()]);
    out.lines().map(|l| (l[2..].to_owned(), l.chars().next().unwrap())).collect()
}

/// The names `ls -la` shows in `dir`, `.` and `..` included.
fn ls_la(dir: &Path) -> BTreeSet<String> {
    let out = tool_ok("ls", &["-la", "--time-style=+%s", dir.to_str().unwrap()]);
    out.lines()
        .skip(1) // "total N"
        .map(|l| {
            let name = l.split_whitespace().nth(6).unwrap_or_else(|| panic!("ls -la line {l:?}"));
            name.to_owned()
        })
        .collect()
}

/// The entries of `dir` (relative) in a find listing: its direct children.
fn children<'a>(listing: impl Iterator<Item = &'a String>, dir: &str) -> BTreeSet<String> {
    let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
    listing.filter_map(|p| p.strip_prefix(&prefix).filter(|r| !r.contains('/')).map(str::to_owned)).collect()
}

/// One guest filesystem: where it is in the mount and its loop mount.
struct Part {
    /// `os/p1`: under `files/`, and `os:p1` for `kluis files`.
    disk: &'static str,
    part: &'static str,
    original: Original,
    check: Check,
    /// Directory sizes are the original's (ext4; NTFS as ntfs-3g shows them).
    dir_sizes: bool,
}

/// The source trees, with an empty directory and an empty file added.
fn tree(dir: &Path, rng: &mut fastrand::Rng, links: bool) {
    make_tree(dir, rng);
    fs::create_dir_all(dir.join("void")).unwrap();
    fs::create_dir_all(dir.join("etc/deep/hollow")).unwrap();
    if links {
        add_links(dir);
        set_times(dir);
    }
}

#[test]
fn mount_walk_finds_every_entry() {
    let t = "mount_walk_finds_every_entry";
    if !need(t, &["sfdisk", "mkfs.ext4", "mkfs.vfat", "mcopy", "mkntfs", "ntfs-3g", "rsync", "python3"]) || !fuse_ok(t) {
        return;
    }
    if unsafe { libc::geteuid() } != 0 {
        return skip(t, "loop mounts need root");
    }
    let mut rng = rng(t);
    let mut env = Env::new();
    let (full, fat_src) = (env.path("src"), env.path("src-fat"));
    tree(&full, &mut rng, true);
    tree(&fat_src, &mut rng, false);

    // Disk os: GPT with p1 ext4, p2 FAT16, p3 NTFS; disk bare: ext4 without a table.
    let os = env.path("os.img");
    tool_ok("truncate", &["-s", "100M", os.to_str().unwrap()]);
    sfdisk(&os, "label: gpt\n2048,40M,L\n83968,20M,EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n124928,24M,EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n");
    let p1 = ext4(&env, "p1.ext4", &full, "40M");
    place(&os, &p1, 2048);
    let p2 = env.path("p2.fat");
    tool_ok("truncate", &["-s", "20M", p2.to_str().unwrap()]);
    tool_ok("mkfs.vfat", &["-F", "16", p2.to_str().unwrap()]);
    let items: Vec<String> = fs::read_dir(&fat_src).unwrap().map(|e| e.unwrap().path().display().to_string()).collect();
    let mut args = vec!["-s", "-m", "-i", p2.to_str().unwrap()];
    args.extend(items.iter().map(|s| s.as_str()));
    args.push("::/");
    tool_ok("mcopy", &args);
    place(&os, &p2, 83968);
    let Some(p3) = ntfs(&env, "p3.ntfs", &full) else { return };
    place(&os, &p3, 124928);
    let bare = ext4(&env, "bare.img", &full, "24M");
    let xml = env.path("vm.xml");
    fs::write(&xml, "<domain/>\n").unwrap();
    let point = env.backup("vm", &[("os", &os), ("bare", &bare)], &[&xml]);

    let mount = |img: &Path, name: &str, ntfs| match Original::mount(img, env.path(name), ntfs) {
        Ok(m) => Some(m),
        Err(e) => {
            skip(t, &e);
            None
        }
    };
    let exact = Check { owner: true, mode: true, mtime_ns: Some(0), links: true };
    let Some(l1) = mount(&p1, "orig-p1", false) else { return };
    let l2 = Original::fat(&p2, env.path("orig-p2"));
    let Some(l3) = mount(&p3, "orig-p3", true) else { return };
    let Some(l0) = mount(&bare, "orig-bare", false) else { return };
    let parts = [
        Part { disk: "os", part: "p1", original: l1, check: exact, dir_sizes: true },
        Part { disk: "os", part: "p2", original: l2, check: Check { owner: false, mode: false, mtime_ns: None, links: false }, dir_sizes: false },
        Part { disk: "os", part: "p3", original: l3, check: Check { owner: false, mode: false, mtime_ns: Some(0), links: true }, dir_sizes: true },
        Part { disk: "bare", part: "p0", original: l0, check: exact, dir_sizes: true },
    ];

    // `kluis files ls`, without FUSE: the partitions, then every directory.
    let json = env.json(&["files", "ls", &point.sel(), "os"]);
    let names: Vec<&str> = json.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["os:p1", "os:p2", "os:p3"], "files ls os");
    assert_eq!(env.json(&["files", "ls", &point.sel(), "os:"]), json, "files ls os:");
    let json = env.json(&["files", "ls", &point.sel(), "bare"]);
    assert_eq!(json.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect::<Vec<_>>(), ["bare:p0"]);
    for p in &parts {
        let want = find(&p.original.dir);
        for dir in std::iter::once("").chain(want.iter().filter(|(_, (t, _))| *t == 'd').map(|(n, _)| n.as_str())) {
            let spec = format!("{}:{}/{dir}", p.disk, p.part);
            let got = env.json(&["files", "ls", &point.sel(), &spec]);
            let got: BTreeMap<String, (char, u64)> = got
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let kind = match e["kind"].as_str().unwrap() {
                        "dir" => 'd',
                        "symlink" => 'l',
                        "file" => 'f',
                        k => panic!("kind {k}"),
                    };
                    (e["name"].as_str().unwrap().to_owned(), (kind, e["size"].as_u64().unwrap()))
                })
                .collect();
            let want_here: BTreeMap<String, (char, u64)> = children(want.keys(), dir).into_iter().map(|n| {
                let full = if dir.is_empty() { n.clone() } else { format!("{dir}/{n}") };
                (n, want[&full])
            }).collect();
            assert_eq!(got.keys().collect::<Vec<_>>(), want_here.keys().collect::<Vec<_>>(), "files ls {spec}");
            for (n, (k, size)) in &want_here {
                assert_eq!(got[n].0, *k, "files ls {spec}: kind of {n}");
                if *k == 'f' || (*k == 'd' && p.dir_sizes) {
                    assert_eq!(got[n].1, *size, "files ls {spec}: size of {n}");
                }
            }
        }
    }

    for plain in [false, true] {
        let how = if plain { "READDIR" } else { "READDIRPLUS" };
        if plain {
            env.set_env("KLUIS_NO_READDIRPLUS", "1");
        }
        let m = MountGuard::start(&env, &env.path(&format!("mnt-{how}")));
        let mp = m.mp.clone();

        // find from the root reaches the vault's own entries...
        let found = find(&mp);
        let pt = format!("vm/{}", point.name);
        for (path, t) in [
            ("vm".to_owned(), 'd'),
            ("vm/latest".to_owned(), 'l'),
            (pt.clone(), 'd'),
            (format!("{pt}/recovery-point.json"), 'f'),
            (format!("{pt}/disks/os.raw"), 'f'),
            (format!("{pt}/disks/os.vhd"), 'f'),
            (format!("{pt}/disks/bare.raw"), 'f'),
            (format!("{pt}/config/vm.xml"), 'f'),
            (format!("{pt}/files/os/p1"), 'd'),
            (format!("{pt}/files/os/p2"), 'd'),
            (format!("{pt}/files/os/p3"), 'd'),
            (format!("{pt}/files/bare/p0"), 'd'),
        ] {
            assert_eq!(found.get(&path).map(|e| e.0), Some(t), "{how}: find {} does not show {path}", mp.display());
        }
        // ... and every guest entry, with its type and size, and no other.
        for p in &parts {
            let prefix = format!("{pt}/files/{}/{}/", p.disk, p.part);
            let got: BTreeMap<&str, (char, u64)> = found.iter().filter_map(|(k, v)| k.strip_prefix(&prefix).map(|r| (r, *v))).collect();
            let want = find(&p.original.dir);
            assert_eq!(got.keys().copied().collect::<Vec<_>>(), want.keys().map(String::as_str).collect::<Vec<_>>(), "{how}: find under {prefix}");
            for (name, (t, size)) in &want {
                assert_eq!(got[name.as_str()].0, *t, "{how}: type of {prefix}{name}");
                if *t == 'f' || (*t == 'd' && p.dir_sizes) {
                    assert_eq!(got[name.as_str()].1, *size, "{how}: size of {prefix}{name}");
                }
            }
            if p.dir_sizes {
                let root = fs::metadata(mp.join(&prefix)).unwrap().len();
                assert_eq!(root, fs::metadata(&p.original.dir).unwrap().len(), "{how}: size of {prefix}");
                assert!(root > 0);
            }
        }

        // os.scandir sees what find sees.
        let scanned = scandir(&mp);
        assert_eq!(
            scanned.iter().map(|(k, v)| (k.as_str(), *v)).collect::<Vec<_>>(),
            found.iter().map(|(k, v)| (k.as_str(), v.0)).collect::<Vec<_>>(),
            "{how}: os.scandir and find disagree"
        );

        // ls -la: `.`, `..` and every entry, in every directory of the mount.
        for dir in std::iter::once("").chain(found.iter().filter(|(_, (t, _))| *t == 'd').map(|(n, _)| n.as_str())) {
            let mut want = children(found.keys(), dir);
            want.extend([".".to_owned(), "..".to_owned()]);
            assert_eq!(ls_la(&mp.join(dir)), want, "{how}: ls -la {dir}/");
        }
        let latest_files = mp.join("vm/latest/files");
        assert_eq!(ls_la(&latest_files), BTreeSet::from([".", "..", "os", "bare"].map(String::from)), "{how}: ls -la vm/latest/files");

        // cp -a and rsync -aH (-H: hard links too) of latest/files: the originals' trees.
        let copy = env.path(&format!("cp-{how}"));
        tool_ok("cp", &["-a", latest_files.to_str().unwrap(), copy.to_str().unwrap()]);
        let synced = env.path(&format!("rsync-{how}"));
        tool_ok("rsync", &["-aH", &format!("{}/", latest_files.display()), synced.to_str().unwrap()]);
        for p in &parts {
            let rel = format!("{}/{}", p.disk, p.part);
            let want: Vec<(String, char)> = find(&p.original.dir).into_iter().map(|(k, v)| (k, v.0)).collect();
            for got in [&copy, &synced] {
                let here: Vec<(String, char)> = find(&got.join(&rel)).into_iter().map(|(k, v)| (k, v.0)).collect();
                assert_eq!(here, want, "{how}: {} of {rel}", got.display());
                eprintln!("{how}: comparing {} with {}", got.join(&rel).display(), p.original.dir.display());
                compare(&p.original.dir, &got.join(&rel), p.check);
            }
        }
        drop(m);
    }
}

/// A 100,000-entry guest directory lists whole through both listing calls
/// and `kluis files ls`.
#[test]
fn mount_lists_a_100k_entry_directory() {
    let t = "mount_lists_a_100k_entry_directory";
    if !need(t, &["mkfs.ext4", "python3"]) || !fuse_ok(t) {
        return;
    }
    if unsafe { libc::geteuid() } != 0 {
        return skip(t, "the directory is made through a loop mount, which needs root");
    }
    const N: usize = 100_000;
    let mut env = Env::new();
    // Made by the kernel's ext4 (htree): mkfs.ext4 -d and debugfs insert
    // each name by a scan of the directory, minutes for 100,000.
    let img = env.path("big.img");
    tool_ok("truncate", &["-s", "512M", img.to_str().unwrap()]);
    tool_ok("mkfs.ext4", &["-q", "-F", "-N", "120000", img.to_str().unwrap()]);
    {
        let Ok(m) = LoopMount::writable(&img, env.path("make")).map_err(|e| skip(t, &e)) else { return };
        fs::create_dir(m.dir.join("many")).unwrap();
        for i in 0..N {
            fs::write(m.dir.join(format!("many/f{i:06}")), b"").unwrap();
        }
    }
    let point = env.backup("vm", &[("d", &img)], &[]);

    let listed = env.json(&["files", "ls", &point.sel(), "d:p0/many"]);
    assert_eq!(listed.as_array().unwrap().len(), N, "kluis files ls");
    for plain in [false, true] {
        let how = if plain { "READDIR" } else { "READDIRPLUS" };
        if plain {
            env.set_env("KLUIS_NO_READDIRPLUS", "1");
        }
        let m = MountGuard::start(&env, &env.path(&format!("mnt-{how}")));
        let dir = m.mp.join("vm/latest/files/d/p0/many");
        let n: usize = tool_ok("python3", &["-c", "import os, sys; print(sum(1 for _ in os.scandir(sys.argv[1])))", dir.to_str().unwrap()]).trim().parse().unwrap();
        assert_eq!(n, N, "{how}: os.scandir");
        let ls = tool_ok("ls", &["-f", dir.to_str().unwrap()]);
        assert_eq!(ls.lines().count(), N + 2, "{how}: ls -f (with . and ..)");
        assert!(ls.lines().any(|l| l == "..") && ls.lines().any(|l| l == "f099999"), "{how}: ls -f");
        drop(m);
    }
}

/// A partition whose filesystem cannot be opened (damaged group
/// descriptors) is still listed beside a good one; only its stat fails,
/// with EIO.
#[test]
fn mount_lists_a_damaged_partition() {
    let t = "mount_lists_a_damaged_partition";
    if !need(t, &["sfdisk", "mkfs.ext4", "python3"]) || !fuse_ok(t) {
        return;
    }
    let mut env = Env::new();
    let disk = env.path("d.img");
    tool_ok("truncate", &["-s", "40M", disk.to_str().unwrap()]);
    sfdisk(&disk, "label: gpt\n2048,16M,L\n34816,16M,L\n");
    let empty = env.path("empty");
    fs::create_dir_all(&empty).unwrap();
    place(&disk, &ext4(&env, "good.ext4", &empty, "16M"), 2048);
    let bad = ext4(&env, "bad.ext4", &empty, "16M");
    // The group descriptors (block 2 on a 1 KiB-block filesystem) garbled.
    write_at(&bad, 2048, &random_bytes(&mut rng(t), 8192));
    place(&disk, &bad, 34816);
    env.backup("vm", &[("d", &disk)], &[]);
    for plain in [false, true] {
        let how = if plain { "READDIR" } else { "READDIRPLUS" };
        if plain {
            env.set_env("KLUIS_NO_READDIRPLUS", "1");
        }
        let m = MountGuard::start(&env, &env.path(&format!("mnt-{how}")));
        let dir = m.mp.join("vm/latest/files/d");
        let ls = tool_ok("ls", &["-f", dir.to_str().unwrap()]);
        assert_eq!(ls.lines().collect::<BTreeSet<_>>(), BTreeSet::from([".", "..", "p1", "p2"]), "{how}: ls -f");
        let names = tool_ok("python3", &["-c", "import os, sys; print(sorted(e.name for e in os.scandir(sys.argv[1])))", dir.to_str().unwrap()]);
        assert_eq!(names.trim(), "['p1', 'p2']", "{how}: os.scandir");
        assert!(fs::metadata(dir.join("p1")).unwrap().is_dir());
        let e = fs::metadata(dir.join("p2")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{how}: stat p2: {e}");
        drop(m);
    }
}
