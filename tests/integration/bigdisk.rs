//! A big sparse disk (256 GiB, a few MiB of data): opening it through the
//! mount, `kluis files` and restore costs what a small disk costs, and
//! everything reads back right (issue 18). And the mount forgets the inodes
//! the kernel forgets.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::common::*;
use super::mount::{fuse_ok, MountGuard};

const GIB: u64 = 1024 * MIB;

fn need(test: &str, tools: &[&str]) -> bool {
    for t in tools {
        if !have(t) {
            skip(test, &format!("{t} is not installed"));
            return false;
        }
    }
    true
}

/// VmRSS of process `pid`, in bytes.
fn rss(pid: i32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap();
    kb * 1024
}

/// A 256 GiB GPT disk: an ext4 partition of 32 MiB at 1 MiB holding
/// `hello.txt` and `data.bin`, and data islands scattered to the last byte.
/// Returns the disk, the islands (offset, bytes) and data.bin's bytes.
/// Bytes written at an offset.
type Islands = Vec<(u64, Vec<u8>)>;

fn big_disk(env: &Env, rng: &mut fastrand::Rng) -> (std::path::PathBuf, Islands, Vec<u8>) {
    let size = 256 * GIB;
    let src = env.path("guest");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("hello.txt"), b"hello from a big disk\n").unwrap();
    let data = random_bytes(rng, 300_000);
    fs::write(src.join("data.bin"), &data).unwrap();
    let part = env.path("part.img");
    tool_ok("truncate", &["-s", "32M", part.to_str().unwrap()]);
    tool_ok("mkfs.ext4", &["-q", "-F", "-d", src.to_str().unwrap(), part.to_str().unwrap()]);
    let img = env.path("big.img");
    File::create(&img).unwrap().set_len(size).unwrap();
    let mut c = Command::new("sfdisk").arg("-q").arg(&img).stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    c.stdin.take().unwrap().write_all(b"label: gpt\nstart=2048, size=65536, type=linux\n").unwrap();
    assert!(c.wait().unwrap().success(), "sfdisk");
    write_at(&img, MIB, &fs::read(&part).unwrap());
    let islands: Islands = [(GIB + 5, 70_000), (17 * GIB + 4096, 3 * MIB), (100 * GIB, BLOCK), (255 * GIB + 12_345, 1000), (size - 777, 777)]
        .into_iter()
        .map(|(off, len)| (off, random_bytes(rng, len as usize)))
        .collect();
    for (off, b) in &islands {
        write_at(&img, *off, b);
    }
    (img, islands, data)
}

#[test]
fn a_big_sparse_disk_opens_at_once_everywhere() {
    let t = "a_big_sparse_disk_opens_at_once_everywhere";
    if !need(t, &["sfdisk", "mkfs.ext4"]) || !fuse_ok(t) {
        return;
    }
    let mut rng = rng(t);
    let env = Env::new();
    let (img, islands, data) = big_disk(&env, &mut rng);
    let size = 256 * GIB;
    let t0 = Instant::now();
    let p = env.backup("vm", &[("os", &img)], &[]);
    eprintln!("{t}: backup of a 256 GiB sparse disk: {:?}", t0.elapsed());

    // The mount: first byte, every island, SEEK_DATA over the whole disk,
    // and a guest file, at a memory cost that does not grow with the disk
    // (its map is 4 Mi block ids: 128 MiB, were it loaded whole).
    let mp = env.path("mnt");
    let m = MountGuard::start(&env, &mp);
    let raw = mp.join("vm").join(&p.name).join("disks/os.raw");
    let t0 = Instant::now();
    let f = File::open(&raw).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 0).unwrap();
    let first = t0.elapsed();
    for (off, want) in &islands {
        let mut got = vec![0u8; want.len() + 1];
        f.read_exact_at(&mut got, off - 1).unwrap_or_else(|e| panic!("read at {off}: {e}"));
        assert!(got[1..] == want[..] && got[0] == 0, "island at {off} differs");
    }
    // Past the partition, the data runs are the islands' blocks.
    let runs = seek_runs(&f, size, &[GIB, 200 * GIB], &mut rng);
    let after: Vec<(u64, u64)> = runs.into_iter().filter(|r| r.0 >= 33 * MIB).collect();
    let want: Vec<(u64, u64)> = islands.iter().map(|(o, b)| (o / BLOCK * BLOCK, ((o + b.len() as u64).div_ceil(BLOCK) * BLOCK).min(size))).collect();
    assert_eq!(after, want, "data runs past the partition");
    let guest = mp.join("vm").join(&p.name).join("files/os/p1");
    assert_eq!(fs::read(guest.join("data.bin")).unwrap(), data);
    let mem = rss(m.pid());
    eprintln!("{t}: first byte of a 256 GiB disk through the mount after {first:?}; mount RSS {} MiB", mem >> 20);
    assert!(first < Duration::from_secs(2), "first byte after {first:?}");
    assert!(mem < 100 << 20, "the mount holds {} MiB after reading a few MiB of a big disk", mem >> 20);
    drop(f);
    drop(m);

    // `kluis files`: the same guest file without FUSE.
    let t0 = Instant::now();
    let out = env.path("data.out");
    env.ok(&["files", "cp", &p.sel(), "os:p1/data.bin", out.to_str().unwrap()]);
    let cp = t0.elapsed();
    assert_eq!(fs::read(&out).unwrap(), data);
    let ls = env.ok(&["files", "ls", &p.sel(), "os:p1"]);
    assert!(ls.contains("hello.txt") && ls.contains("data.bin"), "{ls}");
    eprintln!("{t}: files cp of a guest file of a 256 GiB disk: {cp:?}");
    assert!(cp < Duration::from_secs(5), "files cp took {cp:?}");

    // Restore: sparse, the same islands, the same runs.
    let to = env.path("restored.raw");
    let t0 = Instant::now();
    env.ok(&["restore", &p.sel(), "--disk", "os", "--to", to.to_str().unwrap()]);
    let took = t0.elapsed();
    eprintln!("{t}: restore of a 256 GiB sparse disk: {took:?}");
    let r = File::open(&to).unwrap();
    assert_eq!(r.metadata().unwrap().len(), size);
    for (off, want) in &islands {
        let mut got = vec![0u8; want.len()];
        r.read_exact_at(&mut got, *off).unwrap();
        assert!(got == *want, "restored island at {off} differs");
    }
    assert!(allocated(&to) < 64 * MIB, "restored file allocates {} bytes", allocated(&to));
    let mut head = vec![0u8; 40 * MIB as usize];
    r.read_exact_at(&mut head, 0).unwrap();
    let mut want = vec![0u8; 40 * MIB as usize];
    File::open(&img).unwrap().read_exact_at(&mut want, 0).unwrap();
    assert!(head == want, "restored partition table and partition differ");
}

/// The mount drops the inodes the kernel forgets: a disk file stat'ed again
/// after the kernel evicted its inode gets a new number (numbers are never
/// reused), so the mount keeps only what the kernel keeps.
#[test]
fn the_mount_forgets_what_the_kernel_forgets() {
    let t = "the_mount_forgets_what_the_kernel_forgets";
    if !fuse_ok(t) {
        return;
    }
    if fs::write("/proc/sys/vm/drop_caches", "2").is_err() {
        skip(t, "cannot write /proc/sys/vm/drop_caches (not root)");
        return;
    }
    let mut rng = rng(t);
    let env = Env::new();
    let img = env.path("os.img");
    random_file(&img, MIB, &mut rng);
    let p = env.backup("vm", &[("os", &img)], &[]);
    let mp = env.path("mnt");
    let _m = MountGuard::start(&env, &mp);
    let raw = mp.join("vm").join(&p.name).join("disks/os.raw");
    use std::os::unix::fs::MetadataExt;
    let first = fs::metadata(&raw).unwrap().ino();
    let t0 = Instant::now();
    loop {
        // Evicts unused dentries and inodes: the kernel sends FORGET.
        fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let now = fs::metadata(&raw).unwrap().ino();
        if now != first {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "inode {first} of {} was never forgotten", raw.display());
    }
    assert_same_file(&raw, &img);
}
