//! gc and backups exclude each other through VAULT/lock: gc waits for a
//! running backup (which may be reusing chunks no committed point
//! references yet), and a backup waits for a running gc.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::process::Child;
use std::time::{Duration, Instant};

use super::common::*;

fn wait_ok(child: Child, what: &str) -> (String, String) {
    let out = child.wait_with_output().unwrap();
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{what} failed ({}):\n{so}{se}", out.status);
    (so, se)
}

#[test]
fn gc_waits_for_a_running_backup() {
    let mut rng = rng("gc_waits_for_backup");
    let mut env = Env::new();
    env.purge_deleted_at_gc();
    // Garbage for gc to find: a deleted point whose chunks the next backup
    // deduplicates against. If gc did not wait, it would drop them from under
    // the running backup, and the new point would be broken.
    let old = env.path("old.raw");
    random_file(&old, 8 * MIB, &mut rng);
    let p_old = env.backup("old", &[("os", old.as_path())], &[]);
    let gone = env.path("gone.raw");
    random_file(&gone, 4 * MIB, &mut rng);
    let p_gone = env.backup("gone", &[("os", gone.as_path())], &[]);
    env.ok(&["delete", &p_old.sel()]);
    env.ok(&["delete", &p_gone.sel()]);

    // The big disk starts with old's blocks, then 248 MiB of fresh data.
    let big = env.path("big.raw");
    fs::copy(&old, &big).unwrap();
    {
        use std::io::Write;
        let mut f = OpenOptions::new().append(true).open(&big).unwrap();
        let mut buf = vec![0u8; MIB as usize];
        for _ in 0..248 {
            rng.fill(&mut buf);
            f.write_all(&buf).unwrap();
        }
    }
    env.set_env("KLUIS_PACK_SIZE", "4194304");
    let packs_before = pack_files(&env.vault).len();
    let t0 = Instant::now();
    let backup = env.spawn(&["backup", "new", "--disk", &format!("os={}", big.display())]);
    // The backup holds the lock once it writes a pack.
    while temp_packs(&env.vault).is_empty() && pack_files(&env.vault).len() == packs_before {
        assert!(t0.elapsed() < Duration::from_secs(60), "backup wrote nothing in 60 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    let gc = env.spawn(&["--json", "gc"]);
    let (bout, _) = wait_ok(backup, "backup");
    let backup_done = t0.elapsed();
    let (gout, gerr) = wait_ok(gc, "gc");
    eprintln!("backup took {:.2}s, gc ended at {:.2}s", backup_done.as_secs_f64(), t0.elapsed().as_secs_f64());
    assert!(gerr.contains("waiting for running backups"), "gc did not wait for the backup (stderr: {gerr:?}; backup: {bout})");
    let rep: serde_json::Value = serde_json::from_str(&gout).unwrap();
    // gone's chunks were garbage; old's were reused by the new point.
    assert!(rep["chunks_removed"].as_u64().unwrap() >= 64, "{rep}");

    assert_same_file(&env.restore("new@latest", "os", "raw"), &big);
    let v = env.verify_clean(true);
    assert_eq!(v["unreferenced_chunks"], 0, "{v}");
    assert_eq!(v["points"], 1, "{v}");
}

/// Holds VAULT/lock the way another kluis would.
fn hold_lock(env: &Env, exclusive: bool) -> File {
    let f = OpenOptions::new().create(true).truncate(false).write(true).open(env.vault.join("lock")).unwrap();
    if exclusive { f.lock().unwrap() } else { f.lock_shared().unwrap() }
    f
}

/// Waits until `child` has written `needle` to stderr; returns the pipe
/// (keep it open while the child runs) and what it wrote.
fn stderr_until(child: &mut Child, needle: &str) -> (std::process::ChildStderr, String) {
    let mut err = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !text(&seen).contains(needle) {
        let n = err.read(&mut buf).unwrap();
        assert!(n > 0, "child closed stderr without saying {needle:?}: {}", text(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    (err, text(&seen))
}

#[test]
fn backup_waits_for_gc_and_gc_for_backups() {
    let mut rng = rng("lock_both_ways");
    let env = Env::new();
    env.purge_deleted_at_gc();
    let disk = env.path("os.raw");
    random_file(&disk, 2 * MIB, &mut rng);
    let p1 = env.backup("web01", &[("os", disk.as_path())], &[]);

    // "gc" holds the lock: a backup waits and writes nothing meanwhile.
    let packs = pack_files(&env.vault);
    let lock = hold_lock(&env, true);
    random_writes(&disk, &mut rng, 5, 100_000);
    let mut backup = env.spawn(&["backup", "web01", "--disk", &format!("os={}", disk.display())]);
    let _pipe = stderr_until(&mut backup, "waiting for a running gc");
    std::thread::sleep(Duration::from_millis(300));
    assert!(backup.try_wait().unwrap().is_none(), "backup went ahead while gc held the lock");
    assert_eq!(pack_files(&env.vault), packs, "backup wrote packs while gc held the lock");
    assert!(temp_packs(&env.vault).is_empty());
    drop(lock);
    wait_ok(backup, "backup after gc");
    assert_eq!(env.points(Some("web01")).len(), 2);

    // "a backup" holds the lock: gc waits; restores and verify do not.
    env.ok(&["delete", &p1.sel()]);
    let lock = hold_lock(&env, false);
    let mut gc = env.spawn(&["gc"]);
    let _pipe2 = stderr_until(&mut gc, "waiting for running backups");
    std::thread::sleep(Duration::from_millis(300));
    assert!(gc.try_wait().unwrap().is_none(), "gc went ahead while a backup held the lock");
    assert_same_file(&env.restore("web01@latest", "os", "raw"), &disk);
    env.verify_clean(false);
    // A second backup shares the lock and is not held up.
    random_writes(&disk, &mut rng, 5, 100_000);
    env.backup("web01", &[("os", disk.as_path())], &[]);
    drop(lock);
    wait_ok(gc, "gc after backup");
    assert_same_file(&env.restore("web01@latest", "os", "raw"), &disk);
    let v = env.verify_clean(true);
    assert_eq!(v["unreferenced_chunks"], 0, "{v}");
}
