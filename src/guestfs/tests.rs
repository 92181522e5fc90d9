//! Tests on real images made with sfdisk, sgdisk and mkfs.* (each test
//! prints `SKIPPED` and passes when its tool is missing), and a bounded
//! fuzz run: mutated copies of those images are walked completely under a
//! deadline; every outcome but a panic or a hang is fine.

use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

fn run(prog: &str, args: &[&str]) -> Option<bool> {
    match Command::new(prog).args(args).output() {
        Ok(o) => {
            if !o.status.success() {
                eprintln!("{prog} {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr));
            }
            Some(o.status.success())
        }
        Err(_) => None,
    }
}

/// A test that cannot run here passes with a SKIPPED line, or fails when
/// `KLUIS_TEST_STRICT` is set (as in CI: tests/integration/common.rs `skip`).
fn skip(test: &str, reason: &str) {
    if std::env::var("KLUIS_TEST_STRICT").is_ok_and(|v| !v.is_empty() && v != "0") {
        panic!("{test} cannot run: {reason} (KLUIS_TEST_STRICT is set, so a skip is a failure)");
    }
    eprintln!("SKIPPED {test}: {reason}");
}

/// Runs a tool; None (with a SKIPPED line) if it is not installed.
fn tool(test: &str, prog: &str, args: &[&str]) -> Option<()> {
    match run(prog, args) {
        Some(true) => Some(()),
        Some(false) => panic!("{prog} {} failed", args.join(" ")),
        None => {
            skip(test, &format!("{prog} is not installed"));
            None
        }
    }
}

fn sfdisk(test: &str, img: &Path, script: &str) -> Option<()> {
    use std::io::Write;
    let mut c = match Command::new("sfdisk").arg("-q").arg(img).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).spawn() {
        Ok(c) => c,
        Err(_) => {
            skip(test, "sfdisk is not installed");
            return None;
        }
    };
    c.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success(), "sfdisk failed on {script}");
    Some(())
}

fn blank(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

fn slice_of(path: &Path) -> Slice {
    Slice::whole(Arc::new(std::fs::read(path).unwrap()) as Arc<dyn ReadAt>)
}

fn layout_of(path: &Path) -> Layout {
    read_layout(&slice_of(path)).unwrap()
}

fn numbers(l: &Layout) -> Vec<(u32, u64, u64)> {
    l.partitions.iter().map(|p| (p.number, p.start / 512, p.size / 512)).collect()
}

const MIB: u64 = 1 << 20;

#[test]
fn mbr_with_extended_and_logical_partitions() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("d.img");
    blank(&img, 64 * MIB);
    let Some(()) = sfdisk("mbr", &img, "label: dos\n2048,8M,83\n,4M,c\n,,5\n,4M,83\n,4M,82\n,,7\n") else { return };
    let l = layout_of(&img);
    assert_eq!(l.scheme, Scheme::Mbr);
    // The extended container (p3) is not listed; logicals are p5, p6, p7,
    // each one sector-aligned 2048 sectors after its EBR.
    assert_eq!(numbers(&l), vec![(1, 2048, 16384), (2, 18432, 8192), (5, 28672, 8192), (6, 38912, 8192), (7, 49152, 81920)]);
    assert_eq!(l.partition(2).unwrap().table_type, "mbr 0x0c");
    assert_eq!(l.partition(6).unwrap().fs, FsKind::Swap, "type 0x82 hints at swap");
}

#[test]
fn gpt_from_sgdisk_and_sfdisk() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("g.img");
    blank(&img, 64 * MIB);
    let p = img.to_str().unwrap();
    let Some(()) = tool("gpt", "sgdisk", &["-n", "1:2048:+8M", "-t", "1:ef00", "-n", "3:0:+4M", "-t", "3:8300", "-n", "2:0:0", "-t", "2:8e00", p]) else { return };
    let l = layout_of(&img);
    assert_eq!(l.scheme, Scheme::Gpt);
    let n = numbers(&l);
    assert_eq!(n[0], (1, 2048, 16384));
    assert_eq!(n.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(l.partition(1).unwrap().table_type, "gpt c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    assert_eq!(l.partition(2).unwrap().fs, FsKind::Lvm);

    // Primary header destroyed: the backup at the end still gives the table.
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[512..1024].fill(0xff);
    let l2 = read_layout(&Slice::whole(Arc::new(bytes) as Arc<dyn ReadAt>)).unwrap();
    assert_eq!(numbers(&l2), n);

    let img2 = t.path().join("s.img");
    blank(&img2, 32 * MIB);
    let Some(()) = sfdisk("gpt", &img2, "label: gpt\n2048,4M\n,4M\n,\n") else { return };
    let l = layout_of(&img2);
    assert_eq!(l.scheme, Scheme::Gpt);
    assert_eq!(l.partitions.len(), 3);
    assert_eq!(l.partitions[1].start, 2048 * 512 + 4 * MIB);
}

/// A small source tree with the cases that matter.
fn source_tree(dir: &Path) {
    use std::os::unix::fs::{symlink, PermissionsExt};
    std::fs::create_dir_all(dir.join("d/sub")).unwrap();
    std::fs::write(dir.join("a.txt"), b"hello\n").unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    std::fs::write(dir.join("d/odd"), vec![7u8; 4095]).unwrap();
    std::fs::write(dir.join("d/sub/big"), (0..300_001u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>()).unwrap();
    std::fs::set_permissions(dir.join("d/odd"), std::fs::Permissions::from_mode(0o751)).unwrap();
    symlink("../a.txt", dir.join("d/link")).unwrap();
    std::fs::hard_link(dir.join("a.txt"), dir.join("hard")).unwrap();
}

struct Images {
    _dir: tempfile::TempDir,
    ext: Option<Vec<u8>>,
    fat: Option<Vec<u8>>,
    ntfs: Option<Vec<u8>>,
}

fn images(test: &str) -> Images {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    source_tree(&src);
    let p = |n: &str| t.path().join(n).to_str().unwrap().to_owned();
    let ext = {
        blank(Path::new(&p("ext")), 4 * MIB);
        tool(test, "mkfs.ext4", &["-q", "-F", "-d", src.to_str().unwrap(), &p("ext")]).map(|_| std::fs::read(p("ext")).unwrap())
    };
    let fat = {
        blank(Path::new(&p("fat")), 2 * MIB);
        tool(test, "mkfs.vfat", &["-F", "12", &p("fat")])
            .and_then(|_| tool(test, "mcopy", &["-s", "-i", &p("fat"), &format!("{}/a.txt", src.display()), &format!("{}/d", src.display()), "::/"]))
            .map(|_| std::fs::read(p("fat")).unwrap())
    };
    let ntfs = {
        blank(Path::new(&p("ntfs")), 4 * MIB);
        tool(test, "mkntfs", &["-F", "-Q", "-q", &p("ntfs")])
            .and_then(|_| tool(test, "ntfscp", &["-q", &p("ntfs"), &format!("{}/d/sub/big", src.display()), "big"]))
            .and_then(|_| tool(test, "ntfscp", &["-q", &p("ntfs"), &format!("{}/a.txt", src.display()), "a.txt"]))
            .map(|_| std::fs::read(p("ntfs")).unwrap())
    };
    Images { _dir: t, ext, fat, ntfs }
}

fn read_all(fs: &dyn GuestFs, path: &[u8]) -> Result<Vec<u8>> {
    let f = fs.open(path)?;
    let mut out = vec![0u8; f.size().min(64 << 20) as usize];
    let mut off = 0;
    while off < out.len() {
        let end = (off + 65536).min(out.len());
        let n = f.read_at(&mut out[off..end], off as u64)?;
        if n == 0 {
            break;
        }
        off += n;
    }
    out.truncate(off);
    Ok(out)
}

#[test]
fn ext_fat_ntfs_read_back() {
    let im = images("read_back");
    let big: Vec<u8> = (0..300_001u32).map(|i| (i * 7 % 251) as u8).collect();
    if let Some(img) = im.ext {
        let fs = open_fs(FsKind::Ext, Slice::whole(Arc::new(img) as Arc<dyn ReadAt>)).unwrap();
        let names: Vec<_> = fs.list(b"").unwrap().into_iter().map(|e| e.name).collect();
        assert!(names.contains(&b"a.txt".to_vec()) && names.contains(&b"d".to_vec()), "{names:?}");
        assert_eq!(read_all(&*fs, b"d/sub/big").unwrap(), big);
        assert_eq!(fs.stat(b"d/odd").unwrap().mode, 0o751);
        assert_eq!(fs.stat(b"d/odd").unwrap().size, 4095);
        assert_eq!(fs.readlink(b"d/link").unwrap(), b"../a.txt");
        assert_eq!(fs.stat(b"d/link").unwrap().kind, GKind::Symlink);
        let (a, h) = (fs.stat(b"a.txt").unwrap(), fs.stat(b"hard").unwrap());
        assert_eq!((a.ino, a.nlink), (h.ino, 2));
        assert!(a.ino.is_some());
        assert!(matches!(fs.stat(b"nope"), Err(Error::NotFound(_))));
        assert!(fs.stat(b"../etc").is_err());
        // Reads at any offset, out of order.
        let f = fs.open(b"d/sub/big").unwrap();
        let mut b = [0u8; 100];
        assert_eq!(f.read_at(&mut b, 200_000).unwrap(), 100);
        assert_eq!(&b[..], &big[200_000..200_100]);
        assert_eq!(f.read_at(&mut b, 10).unwrap(), 100);
        assert_eq!(&b[..], &big[10..110]);
        assert_eq!(f.read_at(&mut b, 300_000).unwrap(), 1);
    }
    if let Some(img) = im.fat {
        let fs = open_fs(FsKind::Fat, Slice::whole(Arc::new(img) as Arc<dyn ReadAt>)).unwrap();
        assert_eq!(read_all(&*fs, b"d/sub/big").unwrap(), big);
        assert_eq!(read_all(&*fs, b"a.txt").unwrap(), b"hello\n");
        assert_eq!(fs.stat(b"d").unwrap().kind, GKind::Dir);
        assert_eq!(fs.stat(b"d/odd").unwrap().size, 4095);
    }
    if let Some(img) = im.ntfs {
        let fs = open_fs(FsKind::Ntfs, Slice::whole(Arc::new(img) as Arc<dyn ReadAt>)).unwrap();
        let names: Vec<_> = fs.list(b"").unwrap().into_iter().map(|e| String::from_utf8(e.name).unwrap()).collect();
        assert_eq!(names, vec!["a.txt", "big"], "metafiles are hidden");
        assert_eq!(read_all(&*fs, b"big").unwrap(), big);
        assert_eq!(fs.stat(b"a.txt").unwrap().size, 6);
    }
}

#[test]
fn bare_filesystem_is_p0() {
    let im = images("bare");
    for (img, kind) in [(im.ext, FsKind::Ext), (im.fat, FsKind::Fat), (im.ntfs, FsKind::Ntfs)] {
        let Some(img) = img else { continue };
        let l = read_layout(&Slice::whole(Arc::new(img) as Arc<dyn ReadAt>)).unwrap();
        assert_eq!(l.scheme, Scheme::Bare, "{kind:?}");
        assert_eq!((l.partitions[0].number, l.partitions[0].fs), (0, kind));
    }
}

/// A file a fuzz case read completely: its path and bytes.
type ReadFile = (Vec<u8>, Vec<u8>);

/// Walks everything reachable, reading every file; errors are fine, a
/// name no host path can hold or two entries of one name are not (Err).
/// Files read whole (as long as their stat says) are collected when their
/// name is a plain one the reference tools can be asked for, and is the
/// only one in its directory ignoring case (the tools' lookups ignore it).
fn walk(fs: &dyn GuestFs, path: &[u8], depth: u32, budget: &mut u32, out: &mut Vec<ReadFile>) -> std::result::Result<(), String> {
    let Ok(list) = fs.list(path) else { return Ok(()) };
    let mut seen = std::collections::HashSet::new();
    for e in &list {
        if let Some(why) = bad_name(&e.name) {
            return Err(format!("{}: listed a name that {why}: {:?}", show(path), e.name.escape_ascii().to_string()));
        }
        if !seen.insert(&e.name) {
            return Err(format!("{}: listed {:?} twice", show(path), e.name.escape_ascii().to_string()));
        }
    }
    let folded: Vec<String> = list.iter().map(|e| String::from_utf8_lossy(&e.name).to_lowercase()).collect();
    for (i, e) in list.iter().enumerate() {
        if *budget == 0 {
            return Ok(());
        }
        *budget -= 1;
        let child = dircache::child(path, &e.name);
        let Ok(a) = fs.stat(&child) else { continue };
        match a.kind {
            GKind::Dir if depth < 12 => walk(fs, &child, depth + 1, budget, out)?,
            GKind::File => {
                let plain = child.iter().all(|b| b.is_ascii_alphanumeric() || b"._/+-".contains(b));
                let unique = folded.iter().filter(|f| **f == folded[i]).count() == 1;
                if let Ok(data) = read_all(fs, &child)
                    && data.len() as u64 == a.size
                {
                    holes_are_zeros(fs, &child, &data)?;
                    if plain && unique {
                        out.push((child, data));
                    }
                }
            }
            GKind::Symlink => {
                let _ = fs.readlink(&child);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Every hole the file's SEEK_DATA/SEEK_HOLE answers report (what `files
/// cp` skips) reads as zeros in `data`, the whole file as read.
fn holes_are_zeros(fs: &dyn GuestFs, path: &[u8], data: &[u8]) -> std::result::Result<(), String> {
    let Ok(f) = fs.open(path) else { return Ok(()) };
    let size = data.len() as u64;
    let mut off = 0;
    while off < size {
        let next = f.seek(off, true).unwrap_or(size).clamp(off, size);
        if let Some(i) = data[off as usize..next as usize].iter().position(|b| *b != 0) {
            return Err(format!("{}: byte {} is in a hole SEEK_DATA skipped but is not zero", show(path), off as usize + i));
        }
        if next >= size {
            break;
        }
        off = f.seek(next, false).unwrap_or(size).clamp(next + 1, size);
    }
    Ok(())
}

/// What one fuzz case runs on.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Fs(FsKind),
    Table,
    Vhd,
}

/// Runs one mutated image: the filesystem walked, the partition table
/// read (every partition inside the disk), or the VHD opened and read.
fn fuzz_one(target: Target, img: Vec<u8>, file: &Path) -> std::result::Result<Vec<ReadFile>, String> {
    let s = Slice::whole(Arc::new(img) as Arc<dyn ReadAt>);
    match target {
        Target::Fs(kind) => {
            let mut out = Vec::new();
            if let Ok(fs) = open_fs(kind, s) {
                walk(&*fs, b"", 0, &mut 2000, &mut out)?;
            }
            Ok(out)
        }
        Target::Table => {
            if let Ok(l) = read_layout(&s) {
                for p in &l.partitions {
                    if p.start.checked_add(p.size).is_none_or(|end| end > s.len()) {
                        return Err(format!("partition p{} ({} + {}) lies outside the {}-byte disk", p.number, p.start, p.size, s.len()));
                    }
                }
            }
            Ok(Vec::new())
        }
        Target::Vhd => {
            if let Ok(src) = crate::image::open_source(file)
                && let Ok(ranges) = src.data_ranges()
            {
                let mut buf = vec![0u8; 64 << 10];
                let mut left = 16u64 << 20;
                for r in ranges {
                    let mut at = r.start;
                    while at < r.end.min(src.size()) && left > 0 {
                        let n = (r.end.min(src.size()) - at).min(buf.len() as u64);
                        if src.read_at(&mut buf[..n as usize], at).is_err() {
                            break;
                        }
                        (at, left) = (at + n, left.saturating_sub(n));
                    }
                }
            }
            Ok(Vec::new())
        }
    }
}

/// The reference tool's read of `path` in image `img`, when it reads it
/// without complaint: debugfs for ext, mtools for FAT, ntfscat for NTFS.
fn reference_read(kind: FsKind, img: &Path, path: &[u8]) -> Option<Vec<u8>> {
    let (img, path) = (img.to_str().unwrap(), format!("/{}", String::from_utf8_lossy(path)));
    let out = match kind {
        FsKind::Ext => Command::new("debugfs").args(["-R", &format!("cat {path}"), img]).output(),
        FsKind::Fat => Command::new("mcopy").args(["-n", "-i", img, &format!("::{path}"), "-"]).output(),
        _ => Command::new("ntfscat").args([img, &path]).output(),
    }
    .ok()?;
    // debugfs names itself on stderr; anything more is a complaint.
    let complaints = String::from_utf8_lossy(&out.stderr).lines().filter(|l| !l.starts_with("debugfs ")).count();
    (out.status.success() && complaints == 0).then_some(out.stdout)
}

/// A GPT (sgdisk), an MBR with logical partitions (sfdisk) and a dynamic
/// VHD (qemu-img) of a small disk, where the tools are installed.
fn table_images(dir: &Path) -> [Option<Vec<u8>>; 3] {
    let gpt = dir.join("gpt");
    blank(&gpt, 4 * MIB);
    let gpt = run("sgdisk", &["-n", "1:2048:+1M", "-t", "1:ef00", "-n", "2:0:+1M", "-n", "3:0:0", gpt.to_str().unwrap()]).filter(|ok| *ok).map(|_| std::fs::read(&gpt).unwrap());
    let mbr = dir.join("mbr");
    blank(&mbr, 4 * MIB);
    let mbr = sfdisk("fuzz", &mbr, "label: dos\n2048,1M,83\n,512K,c\n,,5\n,512K,83\n,512K,7\n,,83\n").map(|_| std::fs::read(&mbr).unwrap());
    let (raw, vhd) = (dir.join("vhd.raw"), dir.join("disk.vhd"));
    std::fs::write(&raw, (0..4u32 << 20).map(|i| if (i >> 16) % 3 == 0 { (i % 251) as u8 } else { 0 }).collect::<Vec<_>>()).unwrap();
    let vhd = run("qemu-img", &["convert", "-O", "vpc", raw.to_str().unwrap(), vhd.to_str().unwrap()]).filter(|ok| *ok).map(|_| std::fs::read(&vhd).unwrap());
    [gpt, mbr, vhd]
}

/// Mutated copies of real images (ext4 with files, FAT12, NTFS, GPT, MBR
/// with logical partitions, a dynamic VHD), a few bytes changed in their
/// metadata. Each case runs in its own thread under a time bound and must
/// not panic or hang, nor list a name with `/` or NUL, `.`, `..` or one
/// name twice; every file it reads whole must equal what the reference
/// tool (debugfs, mcopy, ntfscat) reads from the same mutated image, when
/// that tool reads it without complaint. `KLUIS_FUZZ_CASES` (default 60
/// per image) and `KLUIS_FUZZ_SECS` (default 20 per image) bound the run;
/// the seed is printed and `KLUIS_TEST_SEED` (or `KLUIS_FUZZ_SEED`)
/// replays it; a failing image is saved under the temp directory.
#[test]
fn fuzz_mutated_images() {
    let im = images("fuzz");
    let env = |k: &str| std::env::var(k).ok().and_then(|s| s.parse::<u64>().ok());
    let secs = env("KLUIS_FUZZ_SECS").unwrap_or(20);
    let per_image = env("KLUIS_FUZZ_CASES").unwrap_or(60);
    let seed = env("KLUIS_TEST_SEED").or_else(|| env("KLUIS_FUZZ_SEED")).unwrap_or_else(|| fastrand::u64(..));
    eprintln!("fuzz: seed {seed} (replay with KLUIS_TEST_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);
    let t = tempfile::tempdir().unwrap();
    let [gpt, mbr, vhd] = table_images(t.path());
    let vhd_len = vhd.as_ref().map_or(0, |v| v.len());
    // (target, image, where its metadata is: mutations go there half the time)
    let cases: Vec<(Target, Vec<u8>, std::ops::Range<usize>)> = [
        (Target::Fs(FsKind::Ext), im.ext, 0..256 << 10),
        (Target::Fs(FsKind::Fat), im.fat, 0..64 << 10),
        (Target::Fs(FsKind::Ntfs), im.ntfs, 0..4 << 20),
        (Target::Table, gpt, 0..34 * 512),
        (Target::Table, mbr, 0..4 << 20),
        (Target::Vhd, vhd, 0..4 << 10),
    ]
    .into_iter()
    .filter_map(|(k, i, hot)| i.map(|i| (k, i, hot)))
    .collect();
    let mut compared = 0;
    for (target, base, hot) in cases {
        let file = t.path().join("case.img");
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut n = 0;
        while n < per_image && Instant::now() < deadline {
            let mut img = base.clone();
            for _ in 0..rng.usize(1..24) {
                let at = match (target, rng.u8(..3)) {
                    // A VHD's footer (at its end) is metadata too.
                    (Target::Vhd, 0) => vhd_len - 1 - rng.usize(..512),
                    (_, 0 | 1) => rng.usize(hot.start..hot.end.min(img.len())),
                    _ => rng.usize(..img.len()),
                };
                img[at] = match rng.u8(..4) {
                    0 => 0,
                    1 => 0xff,
                    2 => img[at] ^ (1 << rng.u8(..8)),
                    _ => rng.u8(..),
                };
            }
            std::fs::write(&file, &img).unwrap();
            let (tx, rx) = mpsc::channel();
            let (copy, path) = (img.clone(), file.clone());
            std::thread::spawn(move || {
                let r = std::panic::catch_unwind(move || fuzz_one(target, copy, &path));
                let _ = tx.send(r);
            });
            let fail = |why: String| -> ! {
                let p = std::env::temp_dir().join(format!("kluis-fuzz-{seed}-{target:?}-{n}.img"));
                std::fs::write(&p, &img).unwrap();
                panic!("{target:?} case {n} (seed {seed}): {why}; image saved as {}", p.display());
            };
            let files = match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(Ok(Ok(files))) => files,
                Ok(Ok(Err(why))) => fail(why),
                Ok(Err(_)) => fail("a panic escaped".into()),
                Err(_) => fail("hung for 20 s".into()),
            };
            if let Target::Fs(kind) = target {
                // ext: the tools do not replay a journal; compare only what
                // needs no replay (a mutation may set RECOVER).
                let replayed = kind != FsKind::Ext || ext_raw::Geometry::read(&Slice::whole(Arc::new(img.clone()) as Arc<dyn ReadAt>)).is_ok_and(|g| g.as_replayed());
                for (path, data) in files.iter().take(6).filter(|_| replayed) {
                    if let Some(want) = reference_read(kind, &file, path) {
                        compared += 1;
                        if want != *data {
                            fail(format!("{} reads {} bytes, the reference tool {} bytes, different", show(path), data.len(), want.len()));
                        }
                    }
                }
            }
            n += 1;
        }
        eprintln!("fuzz {target:?}: {n} mutated images");
    }
    eprintln!("fuzz: {compared} files compared with the reference tools");
}

/// A tree for the listing cache: a directory big enough for an htree
/// index, hard links within it and across directories, symlinks (fast
/// and slow), a FIFO, modes and, as root, owners.
fn listing_tree(dir: &Path) {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let big = dir.join("big");
    std::fs::create_dir_all(&big).unwrap();
    std::fs::create_dir_all(dir.join("d/sub")).unwrap();
    for i in 0..600 {
        std::fs::write(big.join(format!("f{i:04}")), vec![b'x'; i % 7]).unwrap();
    }
    std::fs::set_permissions(big.join("f0003"), std::fs::Permissions::from_mode(0o4750)).unwrap();
    std::fs::hard_link(big.join("f0001"), big.join("link-to-f0001")).unwrap();
    std::fs::hard_link(big.join("f0001"), dir.join("d/also-f0001")).unwrap();
    std::fs::hard_link(dir.join("d/sub").join("..").join("also-f0001"), dir.join("d/sub/third")).unwrap();
    symlink("../big/f0002", dir.join("d/rel")).unwrap();
    symlink("x".repeat(200), big.join("slow-link")).unwrap();
    assert_eq!(run("mkfifo", &[dir.join("d/fifo").to_str().unwrap()]), Some(true));
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::lchown(big.join("f0004"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(dir.join("d/rel"), Some(77), Some(88)).unwrap();
    }
}

/// What a listing caches for every entry equals what a stat by path
/// walk gives (ext4-view directly: the way ext.rs worked before its
/// listing cache): kind, mode, owner, size, mtime, and for regular files
/// the inode number; link counts are the source's, and exactly the hard
/// links share an inode number. With inode numbers from directory blocks
/// (htree-indexed and linear directories), and without: a fresh handle
/// asked for each path with its parents never listed.
#[test]
fn ext_listing_cache_matches_path_walks() {
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    listing_tree(&src);
    for (variant, index) in [("htree", true), ("linear", false)] {
        let img = t.path().join(variant);
        blank(&img, 16 * MIB);
        if tool("listing_cache", "mkfs.ext4", &["-q", "-F", "-d", src.to_str().unwrap(), img.to_str().unwrap()]).is_none() {
            return;
        }
        // mkfs -d leaves directories unindexed; a guest kernel indexes them.
        if index && run("e2fsck", &["-fyD", img.to_str().unwrap()]).is_none() {
            return;
        }
        let bytes = std::fs::read(&img).unwrap();
        let reference = ext4_view::Ext4::load(Box::new(bytes.clone())).unwrap();
        let fs = open_fs(FsKind::Ext, Slice::whole(Arc::new(bytes.clone()) as Arc<dyn ReadAt>)).unwrap();
        let mut stats = Vec::new();
        // Source inode → guest inode, and back: the hard-link groups match.
        let (mut fwd, mut back) = (HashMap::new(), HashMap::new());
        let mut dirs = vec![Vec::new()];
        let mut seen = 0;
        while let Some(dir) = dirs.pop() {
            for e in fs.list(&dir).unwrap() {
                let path = if dir.is_empty() { e.name.clone() } else { [&dir[..], b"/", &e.name].concat() };
                let shown = String::from_utf8_lossy(&path).into_owned();
                if shown == "lost+found" {
                    continue;
                }
                seen += 1;
                let a = fs.stat(&path).unwrap();
                stats.push((path.clone(), a));
                // A clean image: every number comes from the directory blocks.
                assert_eq!(e.attr, Some(a), "{variant} {shown}: listing and stat differ");
                let abs = [b"/", &path[..]].concat();
                let m = reference.symlink_metadata(abs.as_slice()).unwrap();
                let want_kind = if m.is_dir() { GKind::Dir } else if m.is_symlink() { GKind::Symlink } else if m.file_type().is_fifo() { GKind::Fifo } else { GKind::File };
                assert_eq!(a.kind, want_kind, "{variant} {shown}");
                assert_eq!((a.mode, a.uid, a.gid), (m.mode(), m.uid(), m.gid()), "{variant} {shown}");
                assert_eq!((a.mtime_s, a.mtime_ns), (m.modified().seconds(), m.modified().nanoseconds()), "{variant} {shown}");
                let host = std::fs::symlink_metadata(src.join(&shown)).unwrap();
                match a.kind {
                    GKind::Dir => {
                        assert_eq!((a.size, a.nlink, a.ino), (m.len(), 2, None), "{variant} {shown}");
                        assert!(a.size >= 1024, "{variant} {shown}: a directory's size is its blocks'");
                        dirs.push(path);
                    }
                    GKind::File => {
                        assert_eq!(a.size, m.len(), "{variant} {shown}");
                        let ino = ext::inode_of(&reference.open(abs.as_slice()).unwrap());
                        assert!(ino.is_some());
                        assert_eq!(a.ino, ino, "{variant} {shown}: inode number");
                        assert_eq!(a.nlink as u64, host.nlink(), "{variant} {shown}: link count");
                        let g = a.ino.unwrap();
                        assert_eq!(*fwd.entry(host.ino()).or_insert(g), g, "{variant} {shown}: hard links split");
                        assert_eq!(*back.entry(g).or_insert(host.ino()), host.ino(), "{variant} {shown}: distinct files share an inode");
                    }
                    _ => {
                        assert_eq!((a.size, a.nlink, a.ino), (m.len(), 1, None), "{variant} {shown}");
                    }
                }
            }
        }
        assert_eq!(seen, 2 + 602 + 4 + 1, "{variant}: entries walked");
        assert_eq!(fwd.len(), 600, "{variant}: distinct regular files");
        // Deepest first, so no parent was listed (with its entries'
        // numbers) before: inode numbers come from path walks.
        let fresh = open_fs(FsKind::Ext, Slice::whole(Arc::new(bytes) as Arc<dyn ReadAt>)).unwrap();
        stats.sort_by_key(|(p, _)| std::cmp::Reverse(p.iter().filter(|b| **b == b'/').count()));
        for (path, a) in &stats {
            assert_eq!(fresh.stat(path).unwrap(), *a, "{variant} {}: stat without listing first", String::from_utf8_lossy(path));
        }
    }
}

/// Files whose block maps take every shape: empty, a partial block, runs
/// split by holes (an extent tree of depth 1; ext2's double and triple
/// indirect blocks at 1 KiB blocks), a tail hole past the last data.
fn mapped_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    use std::io::{Seek, SeekFrom, Write};
    std::fs::create_dir_all(dir.join("d")).unwrap();
    let pattern = |n: usize, k: u32| -> Vec<u8> { (0..n as u32).map(|i| (i.wrapping_mul(k) % 251) as u8).collect() };
    let mut files = vec![
        ("empty".to_string(), Vec::new()),
        ("one".into(), vec![7]),
        ("d/4095".into(), pattern(4095, 3)),
        ("d/4096".into(), pattern(4096, 5)),
        ("d/4097".into(), pattern(4097, 7)),
        ("d/3m".into(), pattern(3 << 20, 11)),
    ];
    for (name, data) in &files {
        std::fs::write(dir.join(name), data).unwrap();
    }
    // 300 islands of 5000 bytes every 256 KiB, then a hole to 80 MiB.
    let mut sparse = vec![0u8; 80 << 20];
    let mut f = std::fs::File::create(dir.join("sparse")).unwrap();
    for i in 0..300usize {
        let island = vec![(i % 250 + 1) as u8; 5000];
        sparse[i << 18..(i << 18) + 5000].copy_from_slice(&island);
        f.seek(SeekFrom::Start((i << 18) as u64)).unwrap();
        f.write_all(&island).unwrap();
    }
    f.set_len(80 << 20).unwrap();
    files.push(("sparse".into(), sparse));
    files
}

/// A file read through its block map (by inode, no lock) gives exactly
/// what ext4-view and the source give, whole and at odd offsets, on
/// ext4 (extents, metadata checksums), ext4 with 1 KiB blocks, ext3 and
/// ext2 (indirect blocks). (Inline data is left to the crate, which
/// refuses such a filesystem as a whole.)
#[test]
fn ext_mapped_reads_match_the_source() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let files = mapped_tree(&src);
    let variants: [(&str, &[&str]); 4] = [
        ("ext4", &["-t", "ext4", "-b", "4096"]),
        ("ext4-1k", &["-t", "ext4", "-b", "1024"]),
        ("ext3", &["-t", "ext3", "-b", "1024"]),
        ("ext2", &["-t", "ext2", "-b", "1024"]),
    ];
    for (variant, opts) in variants {
        let img = t.path().join(variant);
        blank(&img, 128 * MIB);
        let mut args = vec!["-q", "-F"];
        args.extend_from_slice(opts);
        args.extend(["-d", src.to_str().unwrap(), img.to_str().unwrap()]);
        if tool("mapped_reads", "mke2fs", &args).is_none() {
            return;
        }
        let bytes = std::fs::read(&img).unwrap();
        let reference = ext4_view::Ext4::load(Box::new(bytes.clone())).unwrap();
        let fs = ext::ExtFs::open(Slice::whole(Arc::new(bytes) as Arc<dyn ReadAt>)).unwrap();
        for (name, want) in &files {
            let a = fs.stat(name.as_bytes()).unwrap();
            // Allocation as debugfs counts it (i_blocks, 512-byte units).
            let out = Command::new("debugfs").args(["-R", &format!("stat /{name}"), img.to_str().unwrap()]).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let count: u64 = text.split("Blockcount: ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()).expect("debugfs Blockcount");
            assert_eq!(a.allocated, Some(count * 512), "{variant} {name}: allocated");
            let f = fs.open_mapped(name.as_bytes(), &a).unwrap().expect("opened by block map");
            let mut got = vec![0xAAu8; want.len() + 10];
            assert_eq!(f.read_at(&mut got, 0).unwrap(), want.len(), "{variant} {name}");
            assert!(got[..want.len()] == want[..], "{variant} {name}: contents");
            // ext4-view 1.0 cannot read holes of indirect-mapped files.
            match reference.read(format!("/{name}").as_str()) {
                Ok(r) => assert!(r == *want, "{variant} {name}: ext4-view"),
                Err(e) => assert!(name == "sparse" && ["ext2", "ext3"].contains(&variant), "{variant} {name}: {e}"),
            }
            if name == "sparse" {
                // Each island is data to its block's end, then a hole.
                let bs = ext_raw::Geometry::read(&Slice::whole(Arc::new(std::fs::read(&img).unwrap()) as Arc<dyn ReadAt>)).unwrap().block_size();
                assert_eq!(bs, if variant == "ext4" { 4096 } else { 1024 }, "{variant}: block size");
                let island = 5000u64.next_multiple_of(bs);
                for i in [0u64, 1, 150, 299] {
                    let at = i << 18;
                    assert_eq!(f.seek(at, true), Some(at), "{variant} data at island {i}");
                    assert_eq!(f.seek(at + 1, false), Some(at + island), "{variant} hole after island {i}");
                    assert_eq!(f.seek(at + island, false), Some(at + island), "{variant} in the hole after {i}");
                    let next = if i == 299 { None } else { Some((i + 1) << 18) };
                    assert_eq!(f.seek(at + island, true), next, "{variant} data after island {i}");
                }
                assert_eq!(f.seek((80 << 20) - 1, false), Some((80 << 20) - 1), "{variant} tail hole");
                assert!(a.allocated.unwrap() < want.len() as u64 / 10, "{variant}: the holes are not allocated");
            }
            // Reads that start and end inside blocks, runs and holes.
            for &(off, len) in &[(1usize, 4094usize), (4095, 2), (5000, 70_000), (262_100, 100), (3 << 20, 5)] {
                let mut b = vec![0xAAu8; len];
                let n = f.read_at(&mut b, off as u64).unwrap();
                let (start, end) = (off.min(want.len()), (off + len).min(want.len()));
                assert_eq!(n, end - start, "{variant} {name} at {off}");
                assert!(b[..n] == want[start..end], "{variant} {name}: {len} bytes at {off}");
            }
        }
    }
}

/// An extent block whose bytes changed fails its checksum: the file is
/// an error at open, never other bytes.
#[test]
fn ext_mapped_extent_block_checksum() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    mapped_tree(&src);
    let img = t.path().join("img");
    blank(&img, 128 * MIB);
    if tool("extent_checksum", "mkfs.ext4", &["-q", "-F", "-d", src.to_str().unwrap(), img.to_str().unwrap()]).is_none() {
        return;
    }
    let mut bytes = std::fs::read(&img).unwrap();
    let fs = ext::ExtFs::open(Slice::whole(Arc::new(bytes.clone()) as Arc<dyn ReadAt>)).unwrap();
    let a = fs.stat(b"sparse").unwrap();
    assert!(fs.open_mapped(b"sparse", &a).unwrap().is_some());
    // The root in the inode is an index node (depth 1): its first entry
    // names the leaf block.
    let slice = Slice::whole(Arc::new(bytes.clone()) as Arc<dyn ReadAt>);
    let geo = ext_raw::Geometry::read(&slice).unwrap();
    let slot = geo.slot(&slice, a.ino.unwrap()).unwrap();
    let root = &slot.bytes()[0x28..0x64];
    assert_eq!((u16::from_le_bytes([root[0], root[1]]), u16::from_le_bytes([root[6], root[7]])), (0xf30a, 1), "depth-1 extent tree");
    let leaf = u32::from_le_bytes(root[16..20].try_into().unwrap()) as usize;
    // The fourth extent of the leaf: its length field.
    bytes[leaf * geo.block_size() as usize + 12 + 3 * 12 + 4] ^= 1;
    let fs = ext::ExtFs::open(Slice::whole(Arc::new(bytes) as Arc<dyn ReadAt>)).unwrap();
    let err = fs.open_mapped(b"sparse", &a).err().expect("a damaged extent block is an error");
    assert!(err.to_string().contains("checksum"), "{err}");
}

/// A point taken while the filesystem was mounted has a journal to replay
/// (RECOVER set): files are then read by ext4-view, journal applied, and
/// never through block maps, which would show the blocks before replay.
#[test]
fn ext_with_a_journal_to_replay_is_read_by_the_crate() {
    if unsafe { libc::geteuid() } != 0 {
        skip("journal_replay", "needs root for a loop mount");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (img, mnt, copy) = (t.path().join("img"), t.path().join("mnt"), t.path().join("copy"));
    std::fs::create_dir(&mnt).unwrap();
    blank(&img, 64 * MIB);
    if tool("journal_replay", "mkfs.ext4", &["-q", "-F", img.to_str().unwrap()]).is_none() {
        return;
    }
    if run("mount", &["-o", "loop", img.to_str().unwrap(), mnt.to_str().unwrap()]) != Some(true) {
        skip("journal_replay", "loop mount failed");
        return;
    }
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let written = std::panic::catch_unwind(|| {
        std::fs::write(mnt.join("late"), &content).unwrap();
        assert_eq!(run("sync", &[]), Some(true));
        // The crash-consistent copy: what a snapshot of the running guest holds.
        std::fs::copy(&img, &copy).unwrap();
    });
    assert_eq!(run("umount", &[mnt.to_str().unwrap()]), Some(true));
    written.unwrap();
    let bytes = std::fs::read(&copy).unwrap();
    let slice = Slice::whole(Arc::new(bytes.clone()) as Arc<dyn ReadAt>);
    assert!(!ext_raw::Geometry::read(&slice).unwrap().as_replayed(), "the copy has a journal to replay");
    let fs = ext::ExtFs::open(slice).unwrap();
    let a = fs.stat(b"late").unwrap();
    assert!(fs.open_mapped(b"late", &a).unwrap().is_none());
    assert_eq!(read_all(&fs, b"late").unwrap(), content);
}

/// Panics `guard` catches inside a filesystem crate when
/// `KLUIS_GUARD_PROBE` is set (only `guarded_panics_are_quiet` sets it).
#[test]
fn guard_probe() {
    if std::env::var_os("KLUIS_GUARD_PROBE").is_some() {
        let e = guard(|| "FAT".into(), || -> Result<()> { panic!("attempt to subtract with overflow") }).unwrap_err();
        assert!(e.to_string().contains("FAT: the filesystem parser gave up (attempt to subtract with overflow)"), "{e}");
    }
}

/// A panic `guard` turns into an error prints nothing of its own (no
/// "panicked at", no backtrace), even in a `--nocapture` run with
/// RUST_BACKTRACE set.
#[test]
fn guarded_panics_are_quiet() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "guestfs::tests::guard_probe", "--nocapture", "--test-threads=1"])
        .env("KLUIS_GUARD_PROBE", "1")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "a caught panic was printed:\n{err}");
}

/// The character slots of a FAT long-name entry (13 UTF-16 units).
const LFN_SLOTS: [usize; 13] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];

/// Rewrites the one long-name entry spelling `from` (13 characters, as
/// mcopy wrote it) to spell `to` (as long): the checksum covers the short
/// name only, so the entry stays valid — what a crafted image holds.
pub(crate) fn patch_lfn(img: &mut [u8], from: &str, to: &str) {
    let (from, to): (Vec<u16>, Vec<u16>) = (from.encode_utf16().collect(), to.encode_utf16().collect());
    assert!(from.len() == 13 && to.len() == 13);
    let at = (0..img.len() / 32)
        .map(|i| i * 32)
        .find(|&e| img[e + 11] == 0x0f && LFN_SLOTS.iter().zip(&from).all(|(o, c)| img[e + o..e + o + 2] == c.to_le_bytes()))
        .expect("the long-name entry");
    for (o, c) in LFN_SLOTS.iter().zip(&to) {
        img[at + o..at + o + 2].copy_from_slice(&c.to_le_bytes());
    }
}

fn names(fs: &dyn GuestFs, dir: &[u8]) -> Vec<String> {
    let mut n: Vec<String> = fs.list(dir).unwrap().into_iter().map(|e| String::from_utf8(e.name).unwrap()).collect();
    n.sort();
    n
}

/// A FAT volume whose long names were rewritten: one to climb out of a
/// copy's target (`../../escape`), one with `/` inside, one `..`, and
/// one that differs from another only in case. The bad names are not
/// listed (the rest of the directory is), nothing reaches them by path,
/// and each of the two case-differing names reads its own bytes (fatfs's
/// own lookup ignores case and returned the first).
#[test]
fn fat_bad_and_case_differing_long_names() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for d in ["dirAAAAAAAAAA", "ok"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    std::fs::write(src.join("dirAAAAAAAAAA/inner"), b"inner").unwrap();
    for (n, data) in [("slashAAAAAAAA", "slash"), ("dotsAAAAAAAAA", "dots"), ("caseAAAAAAAAA", "first"), ("caseBBBBBBBBB", "second"), ("ok/plain.txt", "plain")] {
        std::fs::write(src.join(n), data).unwrap();
    }
    let img = t.path().join("fat");
    blank(&img, 2 * MIB);
    let p = img.to_str().unwrap();
    if tool("fat_names", "mkfs.vfat", &["-F", "12", p]).is_none() {
        return;
    }
    let items: Vec<String> = std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().path().display().to_string()).collect();
    let mut args = vec!["-s", "-i", p];
    args.extend(items.iter().map(|s| s.as_str()));
    args.push("::/");
    if tool("fat_names", "mcopy", &args).is_none() {
        return;
    }
    let mut bytes = std::fs::read(&img).unwrap();
    patch_lfn(&mut bytes, "dirAAAAAAAAAA", "../../escape/");
    patch_lfn(&mut bytes, "slashAAAAAAAA", "a/b\u{0}\u{ffff}\u{ffff}\u{ffff}\u{ffff}\u{ffff}\u{ffff}\u{ffff}\u{ffff}\u{ffff}");
    patch_lfn(&mut bytes, "dotsAAAAAAAAA", "..\u{0}\u{ffff}\u{ffff}\u{ffff}\u{ffff}\u{ffff}\u{ffff}\u{ffff}\u{ffff}\u{ffff}\u{ffff}");
    patch_lfn(&mut bytes, "caseBBBBBBBBB", "CASEaaaaaaaaa");
    let fs = open_fs(FsKind::Fat, Slice::whole(Arc::new(bytes) as Arc<dyn ReadAt>)).unwrap();
    assert_eq!(names(&*fs, b""), vec!["CASEaaaaaaaaa", "caseAAAAAAAAA", "ok"]);
    assert_eq!(read_all(&*fs, b"caseAAAAAAAAA").unwrap(), b"first");
    assert_eq!(read_all(&*fs, b"CASEaaaaaaaaa").unwrap(), b"second");
    assert_eq!(fs.stat(b"CASEaaaaaaaaa").unwrap().size, 6);
    // Another spelling matches both: neither is taken.
    assert!(matches!(fs.stat(b"caseaaaaaaaaa"), Err(Error::NotFound(_))));
    assert!(matches!(fs.open(b"caseaaaaaaaaa"), Err(Error::NotFound(_))));
    // A spelling that matches one name alone still finds it.
    assert_eq!(read_all(&*fs, b"OK/PLAIN.TXT").unwrap(), b"plain");
    for bad in [&b"../../escape"[..], b"a/b", b"a"] {
        assert!(fs.stat(bad).is_err(), "{}", String::from_utf8_lossy(bad));
    }
}

/// NTFS names that differ only in case, as ntfs-3g (and Windows' POSIX
/// namespace) write them: both listed, each read with its own bytes, each
/// directory with its own entries. The crate's index search ignores case.
#[test]
fn ntfs_names_differing_in_case() {
    if unsafe { libc::geteuid() } != 0 {
        skip("ntfs_case", "needs root for ntfs-3g");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (img, mnt) = (t.path().join("ntfs"), t.path().join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    blank(&img, 8 * MIB);
    if tool("ntfs_case", "mkntfs", &["-F", "-Q", "-q", img.to_str().unwrap()]).is_none() {
        return;
    }
    match run("ntfs-3g", &[img.to_str().unwrap(), mnt.to_str().unwrap()]) {
        Some(true) => {}
        _ => {
            skip("ntfs_case", "ntfs-3g cannot mount here");
            return;
        }
    }
    let written = std::panic::catch_unwind(|| {
        std::fs::write(mnt.join("Foo"), b"upper case").unwrap();
        std::fs::write(mnt.join("foo"), b"lower").unwrap();
        std::fs::create_dir(mnt.join("Dir")).unwrap();
        std::fs::create_dir(mnt.join("dir")).unwrap();
        std::fs::write(mnt.join("Dir/x"), b"x").unwrap();
        std::fs::write(mnt.join("dir/y"), b"y").unwrap();
    });
    assert_eq!(run("umount", &[mnt.to_str().unwrap()]), Some(true));
    written.unwrap();
    let fs = open_fs(FsKind::Ntfs, Slice::whole(Arc::new(std::fs::read(&img).unwrap()) as Arc<dyn ReadAt>)).unwrap();
    assert_eq!(names(&*fs, b""), vec!["Dir", "Foo", "dir", "foo"]);
    assert_eq!(read_all(&*fs, b"Foo").unwrap(), b"upper case");
    assert_eq!(read_all(&*fs, b"foo").unwrap(), b"lower");
    assert_eq!((fs.stat(b"Foo").unwrap().size, fs.stat(b"foo").unwrap().size), (10, 5));
    assert_ne!(fs.stat(b"Foo").unwrap().ino, fs.stat(b"foo").unwrap().ino);
    assert_eq!(names(&*fs, b"Dir"), vec!["x"]);
    assert_eq!(names(&*fs, b"dir"), vec!["y"]);
    assert_eq!(read_all(&*fs, b"dir/y").unwrap(), b"y");
    assert!(matches!(fs.stat(b"Dir/y"), Err(Error::NotFound(_))));
    // Ambiguous spellings find nothing; a unique one still finds its file.
    assert!(matches!(fs.stat(b"FOO"), Err(Error::NotFound(_))));
    assert!(matches!(fs.stat(b"DIR/x"), Err(Error::NotFound(_))));
    assert_eq!(read_all(&*fs, b"Dir/X").unwrap(), b"x");
}

/// Replaces the one occurrence of `from` in `img` by `to` (as long).
fn patch_bytes(img: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let at: Vec<usize> = img.windows(from.len()).enumerate().filter(|(_, w)| *w == from).map(|(i, _)| i).collect();
    assert_eq!(at.len(), 1, "{} occurs {} times", String::from_utf8_lossy(from), at.len());
    img[at[0]..at[0] + to.len()].copy_from_slice(to);
}

/// An ext4 root directory whose entries, in directory order, are: good
/// files, one name holding `/`, one holding NUL, one `..`, a second
/// entry named like an earlier one, more good files. ext4-view stops a
/// listing at the first bad name; every good entry is still listed (the
/// later ones from the directory's blocks) and reads its own bytes, the
/// bad ones are not, and a second entry of a name never hides the first.
/// A file claiming more than ext allows is damage at open.
#[test]
fn ext_bad_names_do_not_fail_the_listing() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("ext");
    blank(&img, 8 * MIB);
    let p = img.to_str().unwrap();
    if tool("ext_names", "mkfs.ext4", &["-q", "-F", "-O", "^metadata_csum", p]).is_none() {
        return;
    }
    let mut cmds = String::new();
    let order = ["good1", "slashXname", "nulXXname", "dotsXX", "good2", "dupXX", "good3", "good4"];
    for n in order {
        let f = t.path().join(n);
        // Contents: the name reversed, so the name occurs once in the image.
        std::fs::write(&f, n.bytes().rev().collect::<Vec<_>>()).unwrap();
        cmds.push_str(&format!("write {} {n}\n", f.display()));
    }
    cmds.push_str("sif /good4 size 0x4000000000000000\n");
    let script = t.path().join("cmds");
    std::fs::write(&script, cmds).unwrap();
    if tool("ext_names", "debugfs", &["-w", "-f", script.to_str().unwrap(), p]).is_none() {
        return;
    }
    let mut bytes = std::fs::read(&img).unwrap();
    patch_bytes(&mut bytes, b"slashXname", b"../../x/yz");
    patch_bytes(&mut bytes, b"nulXXname", b"nul\0name\0");
    // The name length byte sits 2 bytes before the name: `..` is 2 long.
    let at = bytes.windows(6).position(|w| w == b"dotsXX").unwrap();
    bytes[at - 2] = 2;
    bytes[at..at + 2].copy_from_slice(b"..");
    patch_bytes(&mut bytes, b"dupXX", b"good1");
    let fs = open_fs(FsKind::Ext, Slice::whole(Arc::new(bytes) as Arc<dyn ReadAt>)).unwrap();
    assert_eq!(names(&*fs, b""), vec!["good1", "good2", "good3", "good4", "lost+found"]);
    for n in ["good1", "good2", "good3"] {
        assert_eq!(read_all(&*fs, n.as_bytes()).unwrap(), n.bytes().rev().collect::<Vec<_>>(), "{n}");
    }
    assert_eq!(fs.stat(b"good2").unwrap().mode, 0o644);
    let err = fs.open(b"good4").err().expect("a size past what ext allows is an error");
    assert!(matches!(err, Error::Corrupt(_)), "{err}");
}

/// NTFS names that are not valid UTF-16 (unpaired surrogates, which
/// Windows allows): two that differ only there would show as one lossy
/// name, which no lookup finds. They are skipped, as ntfs-3g does, and the
/// rest of the directory is listed and read.
#[test]
fn ntfs_names_that_are_not_utf16_are_skipped() {
    let t = tempfile::tempdir().unwrap();
    let (img, one) = (t.path().join("ntfs"), t.path().join("one"));
    blank(&img, 4 * MIB);
    std::fs::write(&one, b"1").unwrap();
    let p = img.to_str().unwrap();
    if tool("ntfs_utf16", "mkntfs", &["-F", "-Q", "-q", p]).is_none() {
        return;
    }
    // Short names: no copy straddles a sector end (where the fixups are).
    for n in ["zzzz1", "zzzz2", "good"] {
        tool("ntfs_utf16", "ntfscp", &["-q", p, one.to_str().unwrap(), n]).unwrap();
    }
    let mut bytes = std::fs::read(&img).unwrap();
    // Both copies of each name (its record's $FILE_NAME, the index entry):
    // `zz\u{d800}zz` and `zz\u{dbff}zz`: one lossy spelling for both.
    for (name, surrogate) in [("zzzz1", 0xd800u16), ("zzzz2", 0xdbffu16)] {
        let from: Vec<u8> = name.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        let to: Vec<u8> = "zz".encode_utf16().chain([surrogate]).chain("zz".encode_utf16()).flat_map(|u| u.to_le_bytes()).collect();
        let at: Vec<usize> = bytes.windows(from.len()).enumerate().filter(|(_, w)| *w == from).map(|(i, _)| i).collect();
        assert_eq!(at.len(), 2, "{name}");
        for i in at {
            bytes[i..i + to.len()].copy_from_slice(&to);
        }
    }
    let fs = open_fs(FsKind::Ntfs, Slice::whole(Arc::new(bytes) as Arc<dyn ReadAt>)).unwrap();
    assert_eq!(names(&*fs, b""), vec!["good"]);
    assert_eq!(read_all(&*fs, b"good").unwrap(), b"1");
}
