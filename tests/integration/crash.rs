//! Crash safety: `kluis backup` and `kluis gc` killed with SIGKILL at random
//! instants. After every kill, every point that existed before still
//! restores byte-exact and `verify` finds no damage; at the end a fresh
//! backup, gc and `verify --read-data` are clean.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::common::*;

/// Expected content of one point: blake3 of each disk.
#[derive(Clone, Debug)]
struct Want {
    os: String,
    data: String,
}

/// Moving estimate of how long an operation takes when left alone.
struct Estimate(f64);

impl Estimate {
    fn add(&mut self, d: Duration) {
        self.0 = 0.6 * self.0 + 0.4 * d.as_secs_f64();
    }
    /// A kill instant spread over the whole run, a little past its usual end.
    fn pick(&self, rng: &mut fastrand::Rng) -> Duration {
        Duration::from_secs_f64(rng.f64() * self.0 * 1.2)
    }
}

struct Crash {
    env: Env,
    rng: fastrand::Rng,
    os: std::path::PathBuf,
    data: std::path::PathBuf,
    want: BTreeMap<String, Want>,
}

impl Crash {
    fn current(&self) -> Want {
        Want { os: hash_file(&self.os), data: hash_file(&self.data) }
    }

    fn mutate(&mut self) {
        // A fresh stretch of 1-6 MiB (many new chunks, hence many pack
        // commits at 256 KiB packs) plus scattered small writes.
        let size = std::fs::metadata(&self.os).unwrap().len();
        let len = self.rng.u64(MIB..=6 * MIB);
        let off = self.rng.u64(0..size - len);
        write_at(&self.os, off, &random_bytes(&mut self.rng, len as usize));
        random_writes(&self.os, &mut self.rng, 10, 8 * KIB);
        random_writes(&self.data, &mut self.rng, 2, 100 * KIB);
    }

    fn backup_args(&self) -> Vec<String> {
        vec!["backup".into(), "vm".into(), "--disk".into(), format!("os={}", self.os.display()), "--disk".into(), format!("data={}", self.data.display())]
    }

    /// Points now listed; a point we did not know must come from the backup
    /// whose source content was `candidate` (a killed backup may have
    /// committed it just before dying).
    fn reconcile(&mut self, candidate: Option<&Want>, what: &str) -> Vec<String> {
        let ids: Vec<String> = self.env.points(Some("vm")).into_iter().map(|p| p.id).collect();
        for id in self.want.keys() {
            assert!(ids.contains(id), "after {what}: point {id} disappeared (points now: {ids:?})");
        }
        let new: Vec<&String> = ids.iter().filter(|id| !self.want.contains_key(*id)).collect();
        assert!(new.len() <= 1 && (new.is_empty() || candidate.is_some()), "after {what}: unexpected new points {new:?}");
        if let Some(id) = new.first() {
            self.want.insert((*id).clone(), candidate.unwrap().clone());
        }
        ids
    }

    /// Every file under VAULT/packs (finished and temporary): a kill that
    /// changed this landed while the run was writing.
    fn pack_listing(&self) -> Vec<std::path::PathBuf> {
        let mut v = pack_files(&self.env.vault);
        v.extend(temp_packs(&self.env.vault));
        v.sort();
        v
    }

    fn check_point(&self, id: &str, what: &str) {
        let w = &self.want[id];
        let sel = format!("vm@{id}");
        assert_eq!(self.env.restore_hash(&sel, "os"), w.os, "after {what}: disk os of point {id} restores wrong");
        assert_eq!(self.env.restore_hash(&sel, "data"), w.data, "after {what}: disk data of point {id} restores wrong");
    }
}

#[test]
fn killed_backups_and_gcs_leave_every_point_intact() {
    let t = "crash";
    let kills_wanted: usize = std::env::var("KLUIS_CRASH_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let started = Instant::now();
    let mut env = Env::new();
    // Small packs: a backup commits a pack every 256 KiB, so there are many
    // instants between durable states to land a kill in.
    env.set_env("KLUIS_PACK_SIZE", "262144");
    env.purge_deleted_at_gc();
    let mut c = Crash { os: env.path("os.raw"), data: env.path("data.raw"), env, rng: rng(t), want: BTreeMap::new() };
    let os_size = 24 * MIB + 4096;
    sparse_file(&c.os, os_size, &[(0, 16 * MIB), (20 * MIB, 2 * MIB)], &mut c.rng);
    random_file(&c.data, 2 * MIB + 1234, &mut c.rng);

    // A couple of good points; the second backup, left alone, calibrates.
    let mut est_backup = Estimate(0.0);
    for i in 0..2 {
        if i > 0 {
            c.mutate();
        }
        let w = c.current();
        let t0 = Instant::now();
        let out = c.env.json(&c.backup_args());
        est_backup.0 = t0.elapsed().as_secs_f64();
        c.want.insert(out["id"].as_str().unwrap().to_owned(), w);
    }
    let t0 = Instant::now();
    c.env.ok(&["gc"]);
    let mut est_gc = Estimate(t0.elapsed().as_secs_f64().max(0.02));
    eprintln!("{t}: backup takes ~{:.3}s, gc ~{:.3}s", est_backup.0, est_gc.0);

    let (mut kills_backup, mut kills_gc, mut done_backup, mut done_gc) = (0usize, 0usize, 0usize, 0usize);
    // Kills that landed after the run had changed the packs directory.
    let (mut mid_backup, mut mid_gc) = (0usize, 0usize);
    let mut iter = 0usize;
    while kills_backup + kills_gc < kills_wanted {
        iter += 1;
        assert!(iter <= kills_wanted * 4, "only {} kills landed in {iter} runs: the calibration is off", kills_backup + kills_gc);
        let leave_alone = iter.is_multiple_of(10); // now and then a run completes: real durations, fresh points
        let what;
        let mut candidate = None;
        if c.rng.u32(0..3) == 0 {
            // gc, sometimes with real garbage: a deleted point.
            if c.want.len() > 3 && c.rng.bool() {
                let ids: Vec<String> = c.want.keys().cloned().collect();
                let victim = &ids[c.rng.usize(0..ids.len())];
                c.env.ok(&["delete", &format!("vm@{victim}")]);
                c.want.remove(victim);
            }
            what = format!("gc run {iter}");
            let delay = if leave_alone { Duration::from_secs(600) } else { est_gc.pick(&mut c.rng) };
            let before = c.pack_listing();
            match kill_after(c.env.spawn(&["gc"]), delay, &what) {
                End::Killed => {
                    kills_gc += 1;
                    mid_gc += (c.pack_listing() != before) as usize;
                }
                End::Exited(d) => {
                    done_gc += 1;
                    est_gc.add(d);
                }
            }
        } else {
            if c.rng.u32(0..8) != 0 {
                c.mutate();
            }
            candidate = Some(c.current());
            what = format!("backup run {iter}");
            let delay = if leave_alone { Duration::from_secs(600) } else { est_backup.pick(&mut c.rng) };
            let before = c.pack_listing();
            match kill_after(c.env.spawn(&c.backup_args()), delay, &what) {
                End::Killed => {
                    kills_backup += 1;
                    mid_backup += (c.pack_listing() != before) as usize;
                }
                End::Exited(d) => {
                    done_backup += 1;
                    est_backup.add(d);
                }
            }
        }

        let ids = c.reconcile(candidate.as_ref(), &what);
        c.check_point(ids.last().unwrap(), &what);
        let older = &ids[c.rng.usize(0..ids.len())];
        c.check_point(older, &what);
        c.env.verify_clean(iter % 10 == 5);
    }
    eprintln!(
        "{t}: {iter} runs: killed {kills_backup} backups ({mid_backup} while writing packs) and {kills_gc} gcs ({mid_gc} after changing packs), \
         {done_backup} backups and {done_gc} gcs completed; {} points; {:.1}s",
        c.want.len(),
        started.elapsed().as_secs_f64()
    );
    // The kills must spread over the runs, not all land before any work.
    assert!(mid_backup * 3 >= kills_backup, "only {mid_backup} of {kills_backup} backup kills landed while packs were written");

    // Every point, then a fresh backup, a full gc and a clean read of everything.
    let ids: Vec<String> = c.want.keys().cloned().collect();
    for id in &ids {
        c.check_point(id, "all kills");
    }
    c.mutate();
    let w = c.current();
    let out = c.env.json(&c.backup_args());
    let fresh = out["id"].as_str().unwrap().to_owned();
    c.want.insert(fresh.clone(), w);
    c.env.ok(&["gc"]);
    let v = c.env.verify_clean(true);
    assert_eq!(v["unreferenced_chunks"], 0, "gc left garbage: {v}");
    assert_eq!(v["orphan_packs"], 0, "gc left orphan packs: {v}");
    assert!(temp_packs(&c.env.vault).is_empty(), "gc left temporary packs: {:?}", temp_packs(&c.env.vault));
    let ids: Vec<String> = c.want.keys().cloned().collect();
    for id in &ids {
        c.check_point(id, "final gc");
    }
    assert_eq!(c.reconcile(None, "final gc").len(), c.want.len());
    eprintln!("{t}: finished in {:.1}s", started.elapsed().as_secs_f64());
}
