//! Crafted guest filesystems against `kluis files` and the mount (issue
//! 19): long names that climb out of a copy's target or hold `/`, NTFS
//! names that differ only in case, a symlink planted in the target, an
//! inode claiming 60 GiB. Images are made with mkfs.vfat + mcopy (long
//! names then rewritten in place), mkntfs + ntfs-3g, mkfs.ext4 + debugfs.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::common::*;
use super::guestfs::{can_fuse, need, Mount};

/// The character slots of a FAT long-name entry (13 UTF-16 units).
const LFN_SLOTS: [usize; 13] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];

/// Rewrites the long-name entry spelling `from` (13 characters) to spell
/// `to`: the checksum covers only the short name, so the entry stays valid.
fn patch_lfn(img: &Path, from: &str, to: &str) {
    let mut b = fs::read(img).unwrap();
    let (from, to): (Vec<u16>, Vec<u16>) = (from.encode_utf16().collect(), to.encode_utf16().collect());
    assert!(from.len() == 13 && to.len() == 13);
    let at = (0..b.len() / 32)
        .map(|i| i * 32)
        .find(|&e| b[e + 11] == 0x0f && LFN_SLOTS.iter().zip(&from).all(|(o, c)| b[e + o..e + o + 2] == c.to_le_bytes()))
        .expect("the long-name entry");
    for (o, c) in LFN_SLOTS.iter().zip(&to) {
        b[at + o..at + o + 2].copy_from_slice(&c.to_le_bytes());
    }
    fs::write(img, b).unwrap();
}

/// A directory `src` holding `files` (path, contents), made in that order
/// with their parent directories.
fn tree(env: &Env, files: &[(&str, &[u8])]) -> PathBuf {
    let src = env.path("src");
    for (path, data) in files {
        let path = src.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }
    src
}

/// An 8 MiB ext4 image `ext.img` holding the tree `src`.
fn ext4_of(env: &Env, src: &Path) -> PathBuf {
    let img = env.path("ext.img");
    tool_ok("truncate", &["-s", "8M", img.to_str().unwrap()]);
    tool_ok("mkfs.ext4", &["-q", "-F", "-d", src.to_str().unwrap(), img.to_str().unwrap()]);
    img
}

/// The test's Env and a point of item vm whose disk d is an NTFS volume
/// of `size` that `write` filled through an ntfs-3g mount (unmounted even
/// when `write` panics); None, after `skip`, where mkntfs or ntfs-3g is
/// missing or cannot mount.
fn ntfs_point(t: &str, size: &str, write: impl FnOnce(&Path) + std::panic::UnwindSafe) -> Option<(Env, Point)> {
    if !need(t, &["mkntfs", "ntfs-3g"]) {
        return None;
    }
    let env = Env::new();
    let img = env.path("ntfs.img");
    tool_ok("truncate", &["-s", size, img.to_str().unwrap()]);
    tool_ok("mkntfs", &["-F", "-Q", "-q", img.to_str().unwrap()]);
    let mp = env.path("ntfs-mnt");
    fs::create_dir_all(&mp).unwrap();
    let out = tool("ntfs-3g", &[img.to_str().unwrap(), mp.to_str().unwrap()]).unwrap();
    if !out.status.success() {
        skip(t, &format!("ntfs-3g cannot mount: {}", text(&out.stderr)));
        return None;
    }
    let written = std::panic::catch_unwind(|| write(&mp));
    tool_ok("fusermount3", &["-u", mp.to_str().unwrap()]);
    written.unwrap();
    let p = env.backup("vm", &[("d", &img)], &[]);
    Some((env, p))
}

/// `files cp` of `d:p0/big` of point `p` to `big` in the test directory,
/// in seconds, as a sparse file of `len` bytes (no more than 1 MiB
/// allocated); returns the copy.
fn sparse_cp_of_big(t: &str, env: &Env, p: &Point, what: &str, len: u64) -> PathBuf {
    let out = env.path("big");
    let t0 = Instant::now();
    env.ok(&["files", "cp", &p.sel(), "d:p0/big", out.to_str().unwrap()]);
    let took = t0.elapsed();
    eprintln!("{t}: files cp of {what} took {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let m = fs::metadata(&out).unwrap();
    assert_eq!(m.len(), len);
    assert!(m.blocks() * 512 <= MIB, "{} bytes allocated", m.blocks() * 512);
    out
}

/// A FAT disk (no table) whose long names were rewritten to
/// `../../escape/` (a directory holding `inner`) and `a/b`, next to
/// ordinary files. `files cp -r` from two levels below the test directory
/// creates nothing outside its target (it created `escape/` two levels
/// up), `files ls` and the mount list the good names and skip the bad ones
/// with a warning, and nothing fails as a whole.
#[test]
fn crafted_fat_names_stay_inside_the_target() {
    let t = "crafted_fat_names";
    if !need(t, &["mkfs.vfat", "mcopy"]) {
        return;
    }
    let env = Env::new();
    let src = tree(&env, &[("dirAAAAAAAAAA/inner", b"inner"), ("slashAAAAAAAA", b"slash"), ("good.txt", b"good")]);
    let img = env.path("fat.img");
    tool_ok("truncate", &["-s", "4M", img.to_str().unwrap()]);
    tool_ok("mkfs.vfat", &["-F", "12", img.to_str().unwrap()]);
    let items: Vec<String> = fs::read_dir(&src).unwrap().map(|e| e.unwrap().path().display().to_string()).collect();
    let mut args = vec!["-s", "-i", img.to_str().unwrap()];
    args.extend(items.iter().map(|s| s.as_str()));
    args.push("::/");
    tool_ok("mcopy", &args);
    patch_lfn(&img, "dirAAAAAAAAAA", "../../escape/");
    patch_lfn(&img, "slashAAAAAAAA", "a/b\u{0}\u{ffff}\u{ffff}\u{ffff}\u{ffff}\u{ffff}\u{ffff}\u{ffff}\u{ffff}\u{ffff}");
    let p = env.backup("vm", &[("d", &img)], &[]);

    let below = env.path("one/two");
    fs::create_dir_all(&below).unwrap();
    let out = below.join("out");
    let run = env.run(&["files", "cp", "-r", &p.sel(), "d:p0/", out.to_str().unwrap()]);
    let stderr = text(&run.stderr);
    assert!(!env.path("one/escape").exists() && !env.path("escape").exists(), "a guest name climbed out of the target:\n{stderr}");
    assert!(run.status.success(), "{stderr}");
    assert_eq!(fs::read(out.join("good.txt")).unwrap(), b"good");
    let mut got: Vec<String> = fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    got.sort();
    assert_eq!(got, vec!["good.txt"]);
    assert_eq!(stderr.matches("skipped an entry whose name contains `/`").count(), 2, "{stderr}");

    let ls = env.json(&["files", "ls", &p.sel(), "d:p0/"]);
    let names: Vec<&str> = ls.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["good.txt"]);

    if !can_fuse(t) {
        return;
    }
    let (m, _) = Mount::start(&env, &env.path("mnt"));
    let dir = m.mp.join(format!("vm/{}/files/d/p0", p.name));
    let listed: Vec<String> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(listed, vec!["good.txt"]);
    assert_eq!(fs::read(dir.join("good.txt")).unwrap(), b"good");
}

/// An NTFS volume written through ntfs-3g with `Foo` and `foo`, `Dir/x`
/// and `dir/y`: `files ls` lists all four, `files cp -r` and the mount
/// give each its own bytes and entries (the index search ignores case and
/// returned Foo for foo, and lost y).
#[test]
fn ntfs_names_differing_in_case() {
    let t = "ntfs_case";
    let Some((env, p)) = ntfs_point(t, "8M", |mp| {
        fs::write(mp.join("Foo"), b"upper case").unwrap();
        fs::write(mp.join("foo"), b"lower").unwrap();
        fs::create_dir(mp.join("Dir")).unwrap();
        fs::create_dir(mp.join("dir")).unwrap();
        fs::write(mp.join("Dir/x"), b"x").unwrap();
        fs::write(mp.join("dir/y"), b"y").unwrap();
    }) else {
        return;
    };

    let ls = env.json(&["files", "ls", &p.sel(), "d:p0/"]);
    let listed: Vec<(&str, u64)> = ls.as_array().unwrap().iter().map(|e| (e["name"].as_str().unwrap(), e["size"].as_u64().unwrap())).collect();
    assert_eq!(listed, vec![("Dir", 0), ("Foo", 10), ("dir", 0), ("foo", 5)]);
    let copy = env.path("copy");
    env.ok(&["files", "cp", "-r", &p.sel(), "d:p0/", copy.to_str().unwrap()]);
    let check = |root: &Path| {
        assert_eq!(fs::read(root.join("Foo")).unwrap(), b"upper case");
        assert_eq!(fs::read(root.join("foo")).unwrap(), b"lower");
        assert_eq!(fs::read(root.join("Dir/x")).unwrap(), b"x");
        assert_eq!(fs::read(root.join("dir/y")).unwrap(), b"y");
        assert!(!root.join("Dir/y").exists() && !root.join("dir/x").exists());
    };
    check(&copy);
    if !can_fuse(t) {
        return;
    }
    let (m, _) = Mount::start(&env, &env.path("mnt"));
    check(&m.mp.join(format!("vm/{}/files/d/p0", p.name)));
}

/// `files cp` into a directory where a symlink of the copy's name was
/// planted (by a local user, or by the guest's own copy of an entry of the
/// same name) refuses to follow it: nothing is written where it points.
#[test]
fn files_cp_does_not_follow_a_symlink_in_the_target() {
    let t = "cp_symlink_in_target";
    if !need(t, &["mkfs.ext4"]) {
        return;
    }
    let env = Env::new();
    let img = ext4_of(&env, &tree(&env, &[("x/passwd", b"from the guest")]));
    let p = env.backup("vm", &[("d", &img)], &[]);
    let (dest, outside) = (env.path("dest"), env.path("outside"));
    fs::create_dir_all(&dest).unwrap();
    fs::create_dir_all(&outside).unwrap();
    symlink(&outside, dest.join("x")).unwrap();
    let f = env.fail(&["files", "cp", "-r", &p.sel(), "d:p0/x", dest.to_str().unwrap()]);
    assert!(f.one_error_line().contains("dest/x"), "{}", f.stderr);
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "written through the symlink");
    // Below the top, the same: the error is counted, the copy goes on.
    fs::create_dir_all(dest.join("tree/p0")).unwrap();
    symlink(&outside, dest.join("tree/p0/x")).unwrap();
    let f = env.fail(&["files", "cp", "-r", &p.sel(), "d:p0/", dest.join("tree").to_str().unwrap()]);
    assert!(f.stderr.contains("tree/p0/x"), "{}", f.stderr);
    assert!(dest.join("tree/p0/lost+found").is_dir(), "the rest is copied");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "written through the symlink");
}

/// An ext4 inode whose size was set to 60 GiB (debugfs `sif`) over one
/// block of data: `files cp` reads the stored data only and gives a sparse
/// 60 GiB file with that data in front, in seconds (it spent 50 s writing
/// holes).
#[test]
fn files_cp_of_an_inode_claiming_60_gib() {
    let t = "cp_60_gib";
    if !need(t, &["mkfs.ext4", "debugfs"]) {
        return;
    }
    let env = Env::new();
    let img = ext4_of(&env, &tree(&env, &[("big", b"the only data")]));
    tool_ok("debugfs", &["-w", "-R", "sif /big size 64424509440", img.to_str().unwrap()]);
    let p = env.backup("vm", &[("d", &img)], &[]);
    let out = sparse_cp_of_big(t, &env, &p, "a 60 GiB inode", 60 << 30);
    let mut head = vec![0u8; 8192];
    std::os::unix::fs::FileExt::read_exact_at(&fs::File::open(&out).unwrap(), &mut head, 0).unwrap();
    assert_eq!(&head[..13], b"the only data");
    assert!(head[13..].iter().all(|b| *b == 0));
}

/// An NTFS file of 4 GiB written through ntfs-3g as 4 bytes and a sparse
/// rest: `files cp` reads only the stored clusters (from the data runs)
/// and gives the same sparse file (it read 4 GiB of zeros, 60 s).
#[test]
fn files_cp_of_a_sparse_ntfs_file() {
    let t = "cp_sparse_ntfs";
    let Some((env, p)) = ntfs_point(t, "16M", |mp| {
        fs::write(mp.join("big"), b"head").unwrap();
        fs::OpenOptions::new().write(true).open(mp.join("big")).unwrap().set_len(4 << 30).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&fs::OpenOptions::new().write(true).open(mp.join("big")).unwrap(), b"tail", (3 << 30) + 7).unwrap();
    }) else {
        return;
    };
    let out = sparse_cp_of_big(t, &env, &p, "a 4 GiB sparse NTFS file", 4 << 30);
    let f = fs::File::open(&out).unwrap();
    let mut b = [0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, 0).unwrap();
    assert_eq!(&b, b"head\0\0\0\0");
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, (3 << 30) + 3).unwrap();
    assert_eq!(&b, b"\0\0\0\0tail");
}
