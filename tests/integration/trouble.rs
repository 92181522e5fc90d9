//! Vaults in trouble (issue 19): a filesystem full to the last byte, a
//! vault that can only be read (a read-only mount, no write permission), a
//! replica killed in its first run, a pack whose last write finds the disk
//! full. Each must leave the vault readable and the next run working.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::common::*;
use super::mount::{fuse_ok, MountGuard};

/// Bytes an unprivileged writer may still put on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "statvfs {}", dir.display());
    st.f_bavail as u64 * st.f_frsize as u64
}

/// Fills the filesystem of `dir` to the last byte with (more of) the file
/// `dir/filler`: big writes until one fails, then smaller ones down to a
/// single byte. Returns the filler.
fn fill_up(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = OpenOptions::new().create(true).append(true).open(&path).unwrap();
    for size in [MIB as usize, 4096, 1] {
        let buf = vec![0xa5u8; size];
        loop {
            match f.write(&buf) {
                Ok(n) if n > 0 => {}
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("fill {}: {e}", path.display()),
            }
        }
    }
    f.sync_all().ok();
    assert_eq!(free_bytes(dir), 0, "{} is not full", dir.display());
    path
}

fn ids(env: &Env) -> Vec<String> {
    env.points(None).into_iter().map(|p| p.id).collect()
}

fn reserve_len(vault: &Path) -> Option<u64> {
    fs::metadata(vault.join("reserve")).ok().map(|m| m.len())
}

/// A vault of its own on a tmpfs of `size` mounted at `mnt` in the test's
/// directory, holding one point of item keep (a random disk `keep.raw`);
/// None, after `skip`, where no tmpfs can be mounted. Returns the Env,
/// `mnt`, the disk, the point and the mount's guard.
fn vault_on_tmpfs(t: &str, size: &str, rng: &mut fastrand::Rng) -> Option<(Env, PathBuf, PathBuf, Point, Tmpfs)> {
    let env = Env::empty();
    let mnt = env.path("mnt");
    let env = env.with_vault(mnt.join("vault"));
    let tmpfs = match Tmpfs::mount(mnt.clone(), size) {
        Ok(m) => m,
        Err(e) => {
            skip(t, &e);
            return None;
        }
    };
    env.ok(&["init"]);
    let keep = env.path("keep.raw");
    random_file(&keep, MIB + 4321, rng);
    let p1 = env.backup("keep", &[("os", keep.as_path())], &[]);
    Some((env, mnt, keep, p1, tmpfs))
}

#[test]
fn gc_runs_on_a_filesystem_full_to_the_last_byte() {
    let t = "gc_on_a_full_filesystem";
    let mut rng = rng(t);
    // `_tmpfs` last, so it is unmounted before the tempdir is removed.
    let Some((env, mnt, keep, p1, _tmpfs)) = vault_on_tmpfs(t, "16m", &mut rng) else {
        return;
    };
    let keep1 = env.path("keep.1");
    fs::copy(&keep, &keep1).unwrap();
    let gone = env.path("gone.raw");
    random_file(&gone, 3 * MIB, &mut rng);
    let p2 = env.backup("gone", &[("os", gone.as_path())], &[]);

    let filler = fill_up(&mnt);
    // Reading needs no room.
    assert_eq!(ids(&env), vec![p2.id.clone(), p1.id.clone()]);
    assert_same_file(&env.restore(&p1.sel(), "os", "raw"), &keep1);
    // A change that frees nothing says what is wrong, in one line.
    let f = env.fail(&["backup", "keep", "--disk", &format!("os={}", keep.display())]);
    assert!(f.one_error_line().contains("cannot open the index for writing"), "{}", f.stderr);
    // What makes room runs: settings and delete (borrowing the reserve,
    // and giving it back) and then gc.
    env.ok(&["vault", "set", "soft-delete-days", "0"]);
    env.ok(&["delete", &p2.sel()]);
    assert_eq!(ids(&env), vec![p1.id.clone()]);
    // The deletion's record took some of the borrowed room: as much of the
    // reserve as fits is back (gc makes it whole below).
    let r = reserve_len(&env.vault).expect("the reserve after delete");
    assert!(r >= MIB / 2, "the reserve after delete: {r} bytes");
    assert!(free_bytes(&mnt) < MIB / 16, "{} bytes left free", free_bytes(&mnt));

    // gc releases the reserve before it opens the index, frees the deleted
    // point's pack and takes the reserve back.
    let g = env.json(&["gc"]);
    assert!(g["bytes_freed"].as_u64().unwrap() >= 3 * MIB, "{g}");
    // Less the part of the reserve that the deletion's record had taken,
    // which gc made whole again out of the room it freed.
    assert!(free_bytes(&mnt) >= 3 * MIB - MIB / 16, "gc freed only {} bytes", free_bytes(&mnt));
    assert_eq!(reserve_len(&env.vault), Some(MIB), "the reserve after gc");

    // Once more with nothing to free: gc still runs and keeps its reserve
    // (it takes it back after closing the index, whose -wal and -shm used
    // its room), so the run after that can open the index too.
    fill_up(&mnt);
    for run in 1..=2 {
        let g = env.json(&["gc"]);
        assert_eq!(g["bytes_freed"], 0, "run {run}: {g}");
        assert_eq!(reserve_len(&env.vault), Some(MIB), "run {run}: the reserve after gc with nothing to free");
    }

    // Room again: the vault works as before.
    fs::remove_file(&filler).unwrap();
    random_writes(&keep, &mut rng, 5, 50_000);
    let p3 = env.backup("keep", &[("os", keep.as_path())], &[]);
    assert_same_file(&env.restore(&p3.sel(), "os", "raw"), &keep);
    assert_same_file(&env.restore(&p1.sel(), "os", "raw"), &keep1);
    env.verify_clean(true);
}

/// A disk holding a bare ext4 filesystem (shown as p0) with a few files,
/// its `hello.txt`, and a point of item vm of it.
fn guest_point(env: &Env, rng: &mut fastrand::Rng) -> (PathBuf, Vec<u8>, Point) {
    let src = env.path("guest-src");
    fs::create_dir_all(src.join("sub")).unwrap();
    let hello = text_bytes(20_000, rng.u64(..));
    fs::write(src.join("hello.txt"), &hello).unwrap();
    fs::write(src.join("sub/data.bin"), random_bytes(rng, 300_000)).unwrap();
    let disk = env.path("guest.raw");
    tool_ok("truncate", &["-s", "8M", disk.to_str().unwrap()]);
    tool_ok("mkfs.ext4", &["-q", "-F", "-d", src.to_str().unwrap(), disk.to_str().unwrap()]);
    let p = env.backup("vm", &[("os", disk.as_path())], &[]);
    (disk, hello, p)
}

/// Everything a reader does, through `r` (whose vault can only be read):
/// points, restore, files ls and cp, verify, jobs, and with `mount` a FUSE
/// mount whose disk and guest file read back byte-exact.
fn read_everything(r: &Env, p: &Point, disk: &Path, hello: &[u8], mount: bool) {
    let who = r.vault.display().to_string();
    assert!(ids(r).contains(&p.id), "{who}: points");
    assert_same_file(&r.restore(&p.sel(), "os", "raw"), disk);
    let ls = r.json(&["files", "ls", &p.sel(), "os:p0/"]);
    assert!(ls.to_string().contains("hello.txt"), "{who}: files ls: {ls}");
    let dest = r.path(&format!("hello-{}.txt", fastrand::u64(..)));
    r.ok(&["files", "cp", &p.sel(), "os:p0/hello.txt", dest.to_str().unwrap()]);
    assert_eq!(fs::read(&dest).unwrap(), hello, "{who}: files cp");
    r.verify_clean(true);
    r.ok(&["jobs"]);
    if mount {
        let mp = r.path(&format!("mp-{}", fastrand::u64(..)));
        let m = MountGuard::start(r, &mp);
        let point = m.mp.join(&p.item).join(&p.name);
        assert_same_file(&point.join("disks/os.raw"), disk);
        assert_eq!(fs::read(point.join("files/os/p0/hello.txt")).unwrap(), hello, "{who}: guest file through the mount");
    }
}

/// Commands that would change the vault are refused with one line, and
/// change nothing.
fn changes_refused(r: &Env, p: &Point, disk: &Path) {
    let before = r.ok(&["--json", "points", "--deleted"]);
    let disk_arg = format!("os={}", disk.display());
    for args in [vec!["backup", "vm", "--disk", &disk_arg], vec!["delete", &p.sel()], vec!["gc"]] {
        r.fail(&args).one_error_line();
    }
    assert_eq!(r.ok(&["--json", "points", "--deleted"]), before);
}

/// A read-only bind mount of a directory; unmounted on drop.
struct ReadOnlyBind {
    dir: PathBuf,
}

impl ReadOnlyBind {
    fn mount(from: &Path, dir: &Path) -> Result<ReadOnlyBind, String> {
        fs::create_dir_all(dir).unwrap();
        let (f, d) = (from.to_str().unwrap(), dir.to_str().unwrap());
        let out = tool("mount", &["--bind", f, d]).ok_or("mount(8) not found")?;
        if !out.status.success() {
            return Err(format!("mount --bind failed: {}", text(&out.stderr).trim()));
        }
        let guard = ReadOnlyBind { dir: dir.to_owned() };
        tool_ok("mount", &["-o", "remount,bind,ro", d]);
        Ok(guard)
    }
}

impl Drop for ReadOnlyBind {
    fn drop(&mut self) {
        let d = self.dir.to_str().unwrap();
        if !tool("umount", &[d]).is_some_and(|o| o.status.success()) {
            let _ = tool("umount", &["-l", d]);
        }
    }
}

#[test]
fn a_vault_on_a_read_only_mount_can_be_read() {
    let t = "read_only_mount";
    let can_mount = fuse_ok(t);
    let mut rng = rng(t);
    let env = Env::new();
    let (disk, hello, p1) = guest_point(&env, &mut rng);
    let r = Env::empty().with_vault(env.path("ro"));
    // Declared after `env`, so it is unmounted before the tempdir is removed.
    let _bind = match ReadOnlyBind::mount(&env.vault, &r.vault) {
        Ok(b) => b,
        Err(e) => return skip(t, &e),
    };
    assert!(!r.vault.join("index.sqlite-wal").exists(), "nobody has the index open: no log to read");
    read_everything(&r, &p1, &disk, &hello, can_mount);
    changes_refused(&r, &p1, &disk);
    if !can_mount {
        return;
    }

    // A snapshot taken while a writer had the index open: its newest point
    // is only in the log (-wal), which a reader must see through the -shm.
    let mp = env.path("writer-mp");
    let _writer = MountGuard::start(&env, &mp); // holds the index open, so the log stays
    let small = env.path("small.raw");
    random_file(&small, MIB + 999, &mut rng);
    let p2 = env.backup("small", &[("os", small.as_path())], &[]);
    assert!(fs::metadata(r.vault.join("index.sqlite-wal")).map(|m| m.len()).unwrap_or(0) > 0, "the backup's rows are in the log");
    assert_eq!(ids(&r), vec![p2.id.clone(), p1.id.clone()]);
    assert_same_file(&r.restore(&p2.sel(), "os", "raw"), &small);
    read_everything(&r, &p1, &disk, &hello, true);
}

#[test]
fn a_vault_without_write_permission_can_be_read() {
    let t = "no_write_permission";
    let can_mount = fuse_ok(t);
    let mut rng = rng(t);
    let env = Env::new();
    let (disk, hello, p1) = guest_point(&env, &mut rng);
    // Nobody may write the vault, its owner included; everyone may read it.
    tool_ok("chmod", &["-R", "a+rX,a-w", env.vault.to_str().unwrap()]);
    fs::set_permissions(env.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();

    // Its owner (root, held to the permission bits: no CAP_DAC_OVERRIDE).
    let mut owner = Env::empty().with_vault(env.vault.clone());
    owner.run_through(&["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]);
    read_everything(&owner, &p1, &disk, &hello, can_mount);
    changes_refused(&owner, &p1, &disk);

    // Another user (without /dev/fuse, so no mount).
    let mut other = Env::empty().with_vault(env.vault.clone());
    std::os::unix::fs::chown(other.tmp.path(), Some(65534), Some(65534)).unwrap();
    other.run_through(&["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
    read_everything(&other, &p1, &disk, &hello, false);
    changes_refused(&other, &p1, &disk);
}

#[test]
fn a_replica_killed_in_its_first_run_reads_as_one_without_points() {
    let t = "replicate_first_run_killed";
    let mut rng = rng(t);
    let mut p = Env::new();
    p.set_env("KLUIS_PACK_SIZE", "1048576"); // many packs: a long first run
    let os = p.path("os.raw");
    random_file(&os, 32 * MIB, &mut rng);
    let p1 = p.backup("vm", &[("os", os.as_path())], &[]);
    let want = hash_file(&os);
    let s = Env::empty();
    let to = s.vault.to_str().unwrap().to_owned();
    let t0 = Instant::now();
    p.ok(&["replicate", "--to", &to]);
    let full = t0.elapsed().as_secs_f64();
    let can_mount = fuse_ok(t);

    let (mut kills, mut empty, mut mounted) = (0, 0, 0);
    for run in 1..=40 {
        if kills >= 10 && empty >= 4 {
            break;
        }
        let _ = fs::remove_dir_all(&s.vault);
        let delay = Duration::from_secs_f64(rng.f64() * full * 1.2);
        if let End::Killed = kill_after(p.spawn(&["replicate", "--to", &to]), delay, &format!("replicate run {run}")) {
            kills += 1;
        }
        if !s.vault.join("kluis.vault").exists() {
            // Killed before the header: nothing there claims to be a vault.
            let left: Vec<_> = fs::read_dir(&s.vault).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
            assert!(left.iter().all(|n| n == "kluis.vault.tmp"), "run {run}: {left:?} without a header");
            continue;
        }
        let now = ids(&s);
        if now.is_empty() {
            empty += 1;
            // A replica with no points: reading works, changing is refused.
            for args in [&["items"][..], &["jobs"], &["vault", "show"], &["--json", "points", "--deleted"]] {
                s.ok(args);
            }
            let (code, v) = s.verify(false);
            assert_eq!((code, v["points"].as_u64()), (0, Some(0)), "run {run}: verify: {v}");
            let f = s.fail(&["backup", "vm", "--disk", &format!("os={}", os.display())]);
            assert!(f.one_error_line().contains("is a replica of vault"), "run {run}: {}", f.stderr);
            if can_mount && mounted < 2 {
                mounted += 1;
                let m = MountGuard::start(&s, &s.path("mp"));
                assert_eq!(fs::read_dir(&m.mp).unwrap().count(), 0, "run {run}: the mount of a replica with no points");
            }
        } else {
            assert_eq!(now, vec![p1.id.clone()], "run {run}");
            assert_eq!(s.restore_hash(&p1.sel(), "os"), want, "run {run}");
        }
    }
    eprintln!("{t}: {kills} runs killed, {empty} left a replica with no points (a run took {full:.3}s)");
    assert!(empty >= 2, "only {empty} kills landed between the header and the index");

    // The next run completes the copy.
    p.ok(&["replicate", "--to", &to]);
    assert_eq!(ids(&s), vec![p1.id.clone()]);
    assert_eq!(s.restore_hash(&p1.sel(), "os"), want);
    assert!(temp_packs(&s.vault).is_empty());
    let v = s.verify_clean(true);
    assert_eq!((v["unreferenced_chunks"].as_u64(), v["orphan_packs"].as_u64()), (Some(0), Some(0)), "{v}");
}

#[test]
fn no_space_at_a_packs_last_write_leaves_no_temporary_pack() {
    let t = "enospc_at_pack_finish";
    let mut rng = rng(t);
    // `_tmpfs` last, so it is unmounted before the tempdir is removed.
    let Some((env, mnt, keep, p1, _tmpfs)) = vault_on_tmpfs(t, "8m", &mut rng) else {
        return;
    };
    let before = env.snapshot();

    // Room for less than the next pack, which stays in its writer's 1 MiB
    // buffer until the pack is finished: its last write is its first.
    let filler = fill_up(&mnt);
    let f = OpenOptions::new().write(true).open(&filler).unwrap();
    f.set_len(f.metadata().unwrap().len() - 256 * KIB).unwrap();
    let big = env.path("big.raw");
    random_file(&big, 768 * KIB, &mut rng);
    let f = env.fail(&["backup", "big", "--disk", &format!("os={}", big.display())]);
    let line = f.one_error_line();
    assert!(line.to_lowercase().contains("no space"), "{t}: {line}");
    assert!(line.contains("write pack"), "{t}: not the pack's write: {line}");
    assert_eq!(temp_packs(&env.vault), Vec::<PathBuf>::new(), "{t}: the failed backup left its temporary pack");
    assert_eq!(env.snapshot(), before);
    assert_same_file(&env.restore(&p1.sel(), "os", "raw"), &keep);
    env.verify_clean(true);
}
