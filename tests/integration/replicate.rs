//! Replication to a secondary vault: `kluis replicate --to DIR` keeps a
//! replica that restores every point byte-exact, copies only what is new,
//! lets go of what gc removed, refuses changes until `kluis vault promote`,
//! and survives `kill -9` at any instant.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::common::*;

/// Pack file name → size.
fn pack_sizes(vault: &Path) -> BTreeMap<String, u64> {
    pack_files(vault).iter().map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), fs::metadata(p).unwrap().len())).collect()
}

fn ids(env: &Env) -> Vec<String> {
    env.points(None).into_iter().map(|p| p.id).collect()
}

fn vault_id(vault: &Path) -> String {
    let h = fs::read_to_string(vault.join("kluis.vault")).unwrap();
    h.lines().find_map(|l| l.strip_prefix("id ")).unwrap().to_owned()
}

/// Every file under `dir` (relative to it) with its size: what a refused
/// command must not change. SQLite's -wal and -shm files do not count.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if !e.file_name().to_string_lossy().starts_with("index.sqlite-") {
                out.push((e.path().strip_prefix(dir).unwrap().display().to_string(), m.len()));
            }
        }
    }
    out.sort();
    out
}

fn replicate(p: &Env, to: &Path) -> serde_json::Value {
    p.json(&["replicate", "--to", to.to_str().unwrap()])
}

#[test]
fn a_replica_follows_its_vault_and_restores_byte_exact() {
    let mut rng = rng("replicate_follows");
    let mut p = Env::new();
    p.set_env("KLUIS_PACK_SIZE", "2097152"); // several packs per backup
    p.purge_deleted_at_gc();
    let s = Env::empty();
    let os = p.path("os.raw");
    let data = p.path("data.raw");
    sparse_file(&os, 16 * MIB, &[(0, 6 * MIB), (10 * MIB, 3 * MIB)], &mut rng);
    fs::write(&data, text_bytes(5 * MIB as usize, rng.u64(..))).unwrap();
    let disks = [("os", os.as_path()), ("data", data.as_path())];
    let p1 = p.backup("vm", &disks, &[]);
    let want1 = (hash_file(&os), hash_file(&data));

    // The first run copies everything.
    let r = replicate(&p, &s.vault);
    let packs1 = pack_sizes(&p.vault);
    assert!(packs1.len() >= 3, "{packs1:?}");
    assert_eq!(r["created"], true, "{r}");
    assert_eq!(r["packs_copied"].as_u64(), Some(packs1.len() as u64), "{r}");
    assert_eq!(r["bytes_copied"].as_u64(), Some(packs1.values().sum::<u64>()), "{r}");
    assert_eq!(pack_sizes(&s.vault), packs1);

    // After a change, only the new packs travel.
    random_writes(&os, &mut rng, 20, 64 * KIB);
    let p2 = p.backup("vm", &disks, &[]);
    let want2 = (hash_file(&os), hash_file(&data));
    let scratch = p.path("scratch.raw");
    random_file(&scratch, 5 * MIB, &mut rng);
    let gone = p.backup("scratch", &[("os", scratch.as_path())], &[]);
    let packs2 = pack_sizes(&p.vault);
    let new: Vec<u64> = packs2.iter().filter(|(n, _)| !packs1.contains_key(*n)).map(|(_, s)| *s).collect();
    let r = replicate(&p, &s.vault);
    assert_eq!(r["created"], false, "{r}");
    assert_eq!(r["packs_copied"].as_u64(), Some(new.len() as u64), "{r}");
    assert_eq!(r["bytes_copied"].as_u64(), Some(new.iter().sum::<u64>()), "{r}");
    assert_eq!(r["points"], 3, "{r}");
    // The replica's record ends with the run that made it.
    let jobs = s.json(&["jobs"]);
    let last = jobs.as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["kind"].as_str(), last["status"].as_str()), (Some("replicate"), Some("ok")), "{jobs:#}");
    assert_eq!(last["bytes_read"], r["bytes_copied"], "{jobs:#}");
    assert_eq!(ids(&s), ids(&p));
    for (pt, (wos, wdata)) in [(&p1, &want1), (&p2, &want2)] {
        assert_eq!(&s.restore_hash(&pt.sel(), "os"), wos, "point {} restores wrong from the replica", pt.id);
        assert_eq!(&s.restore_hash(&pt.sel(), "data"), wdata, "point {} restores wrong from the replica", pt.id);
    }
    assert_eq!(s.restore_hash(&gone.sel(), "os"), hash_file(&scratch));
    s.verify_clean(true);

    // Nothing new: nothing copied.
    let r = replicate(&p, &s.vault);
    assert_eq!((r["packs_copied"].as_u64(), r["packs_removed"].as_u64()), (Some(0), Some(0)), "{r}");

    // What gc drops on the primary goes from the replica too.
    p.ok(&["delete", &gone.sel()]);
    let g = p.json(&["gc"]);
    assert!(g["packs_deleted"].as_u64().unwrap() >= 1, "{g}");
    let r = replicate(&p, &s.vault);
    assert!(r["packs_removed"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(pack_sizes(&s.vault), pack_sizes(&p.vault));
    assert_eq!(ids(&s), vec![p1.id.clone(), p2.id.clone()]);
    assert!(s.fail(&["restore", &gone.sel(), "--disk", "os", "--to", "x.raw"]).one_error_line().contains("scratch"));
    let v = s.verify_clean(true);
    assert_eq!((v["unreferenced_chunks"].as_u64(), v["orphan_packs"].as_u64()), (Some(0), Some(0)), "{v}");
}

#[test]
fn a_replica_refuses_changes_until_promoted() {
    let mut rng = rng("replicate_promote");
    let p = Env::new();
    let s = Env::empty();
    let os = p.path("os.raw");
    random_file(&os, 2 * MIB, &mut rng);
    let disk = format!("os={}", os.display());
    let pt = p.backup("vm", &[("os", os.as_path())], &[]);
    replicate(&p, &s.vault);

    // Reading works on a replica.
    assert_eq!(ids(&s), vec![pt.id.clone()]);
    for args in [&["items"][..], &["jobs"], &["vault", "show"], &["policy", "ls"], &["prune", "--dry-run"]] {
        s.ok(args);
    }
    // Changing does not, and changes nothing.
    let before = listing(&s.vault);
    let sel = pt.sel();
    let refused: Vec<Vec<&str>> = vec![
        vec!["backup", "vm", "--disk", &disk],
        vec!["delete", &sel],
        vec!["undelete", &sel],
        vec!["gc"],
        vec!["prune"],
        vec!["run-due"],
        vec!["protect", "vm", "--disk", &disk, "--policy", "daily"],
        vec!["unprotect", "vm"],
        vec!["policy", "set", "daily", "--schedule", "daily 02:00"],
        vec!["vault", "set", "soft-delete-days", "3"],
    ];
    for args in &refused {
        let f = s.fail(args);
        assert!(f.one_error_line().contains("is a replica of vault"), "{args:?}: {}", f.stderr);
    }
    assert_eq!(listing(&s.vault), before, "a refused command changed the replica");

    // Bad targets: one error line, and the target stays as it was.
    let junk = p.path("junk");
    fs::create_dir(&junk).unwrap();
    fs::write(junk.join("notes.txt"), "mine").unwrap();
    let own = Env::new(); // a vault made by init
    let other = Env::new();
    let other_replica = Env::empty();
    replicate(&other, &other_replica.vault);
    let inside = p.vault.join("packs/copy");
    let link = p.path("vault-link");
    std::os::unix::fs::symlink(&p.vault, &link).unwrap();
    let through_link = link.join("copy");
    let cases: Vec<(&Path, &str)> = vec![
        (&junk, "is not empty and is not a kluis vault"),
        (&p.vault, "outside the vault"),
        (&inside, "outside the vault"),
        (&through_link, "outside the vault"),
        (&own.vault, "is a vault of its own"),
        (&other_replica.vault, "is a replica of another vault"),
    ];
    for (to, says) in cases {
        let before = if to.exists() { listing(to) } else { Vec::new() };
        let f = p.fail(&["replicate", "--to", to.to_str().unwrap()]);
        assert!(f.one_error_line().contains(says), "replicate --to {}: {}", to.display(), f.stderr);
        assert_eq!(if to.exists() { listing(to) } else { Vec::new() }, before, "replicate --to {} changed it", to.display());
    }
    assert!(p.fail(&["replicate"]).one_error_line().contains("no replica given"));
    assert!(p.fail(&["vault", "promote"]).one_error_line().contains("is not a replica"));

    // Take over: the replica becomes a vault of its own.
    let r = s.json(&["vault", "promote"]);
    assert_eq!(r["was_replica_of"].as_str(), Some(vault_id(&p.vault).as_str()), "{r}");
    assert!(!fs::read_to_string(s.vault.join("kluis.vault")).unwrap().contains("replica-of"));
    random_writes(&os, &mut rng, 4, 64 * KIB);
    let taken = s.backup("vm", &[("os", os.as_path())], &[]);
    assert_eq!(s.restore_hash(&taken.sel(), "os"), hash_file(&os));
    assert_eq!(s.restore_hash(&pt.sel(), "os"), p.restore_hash(&pt.sel(), "os"));
    s.verify_clean(true);
    // Its old primary no longer writes into it.
    let f = p.fail(&["replicate", "--to", s.vault.to_str().unwrap()]);
    assert!(f.one_error_line().contains("is a vault of its own"), "{}", f.stderr);
}

#[test]
fn the_scheduler_replicates_when_due() {
    let mut rng = rng("replicate_scheduled");
    let mut p = Env::new();
    let s = Env::empty();
    let os = p.path("os.raw");
    random_file(&os, MIB, &mut rng);
    let pt = p.backup("vm", &[("os", os.as_path())], &[]);
    p.ok(&["vault", "set", "replicate-to", s.vault.to_str().unwrap()]);
    p.ok(&["vault", "set", "replicate-schedule", "daily 05:00"]);
    let kinds = |v: &serde_json::Value| -> Vec<String> {
        v["ran"].as_array().unwrap().iter().filter(|r| r["status"] == "ok").map(|r| r["kind"].as_str().unwrap().to_owned()).collect()
    };
    p.set_env("KLUIS_NOW", "2099-03-10T06:00:00Z");
    let first = p.json(&["run-due"]);
    assert!(kinds(&first).contains(&"replicate".to_owned()), "{first:#}");
    assert_eq!(ids(&s), vec![pt.id.clone()]);
    // Not again before the next slot; at it, again.
    p.set_env("KLUIS_NOW", "2099-03-11T04:59:00Z");
    assert!(!kinds(&p.json(&["run-due"])).contains(&"replicate".to_owned()));
    p.set_env("KLUIS_NOW", "2099-03-11T05:00:00Z");
    assert!(kinds(&p.json(&["run-due"])).contains(&"replicate".to_owned()));
    // `kluis replicate` alone uses the setting.
    assert_eq!(p.json(&["replicate"])["to"].as_str(), s.vault.to_str());
}

#[test]
fn killed_replications_leave_the_replica_usable() {
    let t = "replicate_crash";
    let kills_wanted = 10;
    let mut rng = rng(t);
    let mut p = Env::new();
    p.set_env("KLUIS_PACK_SIZE", "1048576"); // many packs: many instants between durable states
    p.purge_deleted_at_gc();
    let s = Env::empty();
    let os = p.path("os.raw");
    random_file(&os, 48 * MIB, &mut rng);
    let p1 = p.backup("vm", &[("os", os.as_path())], &[]);
    let want1 = hash_file(&os);
    replicate(&p, &s.vault);
    // The replica as of p1, to start every run from.
    let base = p.path("replica-at-p1");
    let cp = |from: &Path, to: &Path| {
        let _ = fs::remove_dir_all(to);
        assert!(Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success());
    };
    cp(&s.vault, &base);

    // The primary moves on: new data, p1 deleted and collected, so a run
    // copies packs, replaces the index and deletes packs.
    write_at(&os, 0, &random_bytes(&mut rng, 40 * MIB as usize));
    let p2 = p.backup("vm", &[("os", os.as_path())], &[]);
    let want2 = hash_file(&os);
    p.ok(&["delete", &p1.sel()]);
    p.ok(&["gc"]);
    let want: BTreeMap<String, String> = [(p1.id.clone(), want1), (p2.id.clone(), want2)].into();
    // How long such a run takes when left alone.
    let t0 = Instant::now();
    replicate(&p, &s.vault);
    let full = t0.elapsed().as_secs_f64();

    let before = listing(&base);
    // Kills that landed after the run had changed the replica.
    let (mut kills, mut mid, mut done) = (0, 0, 0);
    for run in 1..=kills_wanted * 4 {
        if kills == kills_wanted {
            break;
        }
        cp(&base, &s.vault);
        let delay = Duration::from_secs_f64(rng.f64() * full * 1.3);
        let child = p.spawn(&["replicate", "--to", s.vault.to_str().unwrap()]);
        match kill_after(child, delay, &format!("replicate run {run}")) {
            End::Killed => {
                kills += 1;
                mid += (listing(&s.vault) != before) as usize;
            }
            End::Exited(_) => done += 1,
        }
        // Whatever the instant: p1 alone or p2 alone, restoring byte-exact,
        // and no damage (left-over packs are allowed until the next run).
        let now = ids(&s);
        assert!(now == vec![p1.id.clone()] || now == vec![p2.id.clone()], "after replicate run {run}: points {now:?}");
        let id = &now[0];
        assert_eq!(&s.restore_hash(&format!("vm@{id}"), "os"), &want[id], "after replicate run {run}: point {id} restores wrong");
        let (code, v) = s.verify(true);
        assert_eq!(code, 0, "after replicate run {run}: verify: {v:#}");
    }
    eprintln!("{t}: {kills} runs killed ({mid} after changing the replica), {done} finished (a run took {full:.3}s)");
    assert_eq!(kills, kills_wanted, "only {kills} kills landed");
    assert!(mid >= 2, "only {mid} kills landed after the run had started changing the replica");

    // The next run completes the copy.
    replicate(&p, &s.vault);
    assert_eq!(ids(&s), vec![p2.id.clone()]);
    assert_eq!(pack_sizes(&s.vault), pack_sizes(&p.vault));
    assert!(temp_packs(&s.vault).is_empty());
    let v = s.verify_clean(true);
    assert_eq!((v["unreferenced_chunks"].as_u64(), v["orphan_packs"].as_u64()), (Some(0), Some(0)), "{v}");
    assert_eq!(s.restore_hash(&p2.sel(), "os"), want[&p2.id]);
}

#[test]
fn a_full_replica_fails_cleanly_and_keeps_its_points() {
    let t = "replicate_enospc";
    let mut rng = rng(t);
    let mut p = Env::new();
    p.set_env("KLUIS_PACK_SIZE", "1048576"); // the failing run lands some packs before the disk is full
    p.purge_deleted_at_gc();
    let s = Env::empty();
    let mnt = s.path("mnt");
    let s = s.with_vault(mnt.join("replica"));
    // Declared after `s`, so it is unmounted before the tempdir is removed.
    let _tmpfs = match Tmpfs::mount(mnt, "8m") {
        Ok(m) => m,
        Err(e) => return skip(t, &e),
    };
    let small = p.path("small.raw");
    random_file(&small, MIB + 4321, &mut rng);
    let p1 = p.backup("small", &[("os", small.as_path())], &[]);
    replicate(&p, &s.vault);

    let big = p.path("big.raw");
    random_file(&big, 32 * MIB, &mut rng);
    let p2 = p.backup("big", &[("os", big.as_path())], &[]);
    let f = p.fail(&["replicate", "--to", s.vault.to_str().unwrap()]);
    assert_eq!(f.code, Some(1), "{t}: exit code of a replication into a full replica");
    let line = f.one_error_line();
    assert!(line.to_lowercase().contains("no space"), "{t}: the error does not say the replica is full: {line}");
    eprintln!("{t}: {line}");
    // The replica as before: its point restores, nothing damaged.
    assert_eq!(ids(&s), vec![p1.id.clone()]);
    assert_eq!(s.restore_hash(&p1.sel(), "os"), hash_file(&small));
    s.verify_clean(true);
    let failed = p.json(&["jobs", "--failed"]);
    assert_eq!(failed.as_array().unwrap().last().unwrap()["kind"], "replicate", "{failed:#}");

    // Once the primary lets the big point go, the next run fits and tidies up.
    p.ok(&["delete", &p2.sel()]);
    p.ok(&["gc"]);
    replicate(&p, &s.vault);
    assert_eq!(pack_sizes(&s.vault), pack_sizes(&p.vault));
    let v = s.verify_clean(true);
    assert_eq!((v["unreferenced_chunks"].as_u64(), v["orphan_packs"].as_u64()), (Some(0), Some(0)), "{v}");
}
