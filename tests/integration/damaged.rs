//! Damage never costs a point, and rebuild-index forgets nothing it can
//! keep (issue #19): a point whose chunks are damaged stays listed and
//! marked through rebuild-index and gc, restores fail naming the lost
//! ranges unless `--partial`, and the next backup of the same data stores
//! the damaged chunks again. Backups of one item running at once get
//! distinct times and names.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::common::*;

const BS: u64 = 64 * KIB;

/// `want` with zeros over `missing`, byte for byte against `got`.
fn assert_partial(got: &Path, want: &Path, missing: &[(u64, u64)]) {
    let (g, mut w) = (fs::read(got).unwrap(), fs::read(want).unwrap());
    for &(a, b) in missing {
        w[a as usize..b as usize].fill(0);
    }
    assert_eq!(g.len(), w.len(), "{} has the wrong size", got.display());
    if let Some(i) = g.iter().zip(&w).position(|(a, b)| a != b) {
        panic!("{} differs from the intact data (zeros over {missing:?}) at byte {i}", got.display());
    }
}

fn ranges(v: &Value) -> Vec<(u64, u64)> {
    v.as_array().unwrap_or_else(|| panic!("not a list of ranges: {v}")).iter().map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap())).collect()
}

/// Byte ranges of `blocks` (sorted block numbers) of a disk of `size`, merged.
fn block_ranges(blocks: &[u64], size: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &b in blocks {
        let (s, e) = (b * BS, ((b + 1) * BS).min(size));
        match out.last_mut() {
            Some(last) if last.1 == s => last.1 = e,
            _ => out.push((s, e)),
        }
    }
    out
}

/// A random disk `os.raw` of `size` and a point of item web01 of it.
fn web01_point(env: &Env, size: u64, rng: &mut fastrand::Rng) -> (PathBuf, Point) {
    let disk = env.path("os.raw");
    random_file(&disk, size, rng);
    let p = env.backup("web01", &[("os", disk.as_path())], &[]);
    (disk, p)
}

/// The vault's pack that holds chunk `id`.
fn pack_holding(env: &Env, id: &str) -> PathBuf {
    pack_files(&env.vault).into_iter().find(|p| frames(p).iter().any(|f| f.holds(id))).unwrap_or_else(|| panic!("no pack holds {id}"))
}

/// The pack that holds chunk `id`, and the offset in it of byte `plus` of
/// the chunk's stored bytes.
fn byte_of_chunk(env: &Env, id: &str, plus: u64) -> (PathBuf, u64) {
    let pack = pack_holding(env, id);
    let f = frames(&pack).into_iter().find(|f| f.holds(id)).unwrap();
    let at = f.chunk_offset(id) + plus;
    (pack, at)
}

#[test]
fn damaged_points_survive_rebuild_and_gc_restore_partially_and_heal() {
    let mut rng = rng("damaged_points_survive");
    let mut env = Env::new();
    // A pack per frame, so that one pack holds data only.
    env.set_env("KLUIS_PACK_SIZE", "262144");
    let size = 8 * MIB + 333;
    let (disk, v1, p1, p2) = two_points_sharing_all_but_block_0(&env, size, &mut rng);

    // Truncate the pack that holds block 60 (and its neighbours).
    let ids = block_ids(&disk, BS);
    let pack = pack_holding(&env, &ids[60]);
    let in_pack: Vec<(String, u32)> = frames(&pack).into_iter().flat_map(|f| f.chunks).collect();
    let lost: Vec<u64> = (0..ids.len() as u64).filter(|&b| in_pack.iter().any(|(c, _)| *c == ids[b as usize])).collect();
    assert!(lost.len() >= 16 && !lost.contains(&0), "blocks in the pack: {lost:?}");
    let lost_ranges = block_ranges(&lost, size);
    let len = fs::metadata(&pack).unwrap().len();
    OpenOptions::new().write(true).open(&pack).unwrap().set_len(len / 2).unwrap();

    let (code, v) = env.verify(false);
    assert_eq!(code, 3, "{v:#}");
    let damaged = v["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), lost.len(), "{v:#}");
    for d in damaged {
        let points: Vec<&str> = d["affects"].as_array().unwrap().iter().map(|a| a["point_id"].as_str().unwrap()).collect();
        assert!(points.contains(&p1.id.as_str()) && points.contains(&p2.id.as_str()), "{d:#}");
    }
    let marked = |env: &Env| env.points(Some("web01")).iter().map(|p| (p.id.clone(), p.json["damaged"].as_bool().unwrap())).collect::<Vec<_>>();

    // rebuild-index, then gc: both points stay, marked damaged.
    let rep = env.json(&["rebuild-index"]);
    assert_eq!(rep["points"].as_u64(), Some(2), "{rep:#}");
    env.ok(&["gc"]);
    let ids: Vec<String> = env.points(Some("web01")).into_iter().map(|p| p.id).collect();
    assert_eq!(ids, vec![p1.id.clone(), p2.id.clone()], "rebuild-index and gc dropped damaged points");
    assert_eq!(rep["damaged_points"].as_array().unwrap().len(), 2, "{rep:#}");
    assert_eq!(marked(&env), vec![(p1.id.clone(), true), (p2.id.clone(), true)], "after rebuild-index and gc");
    let human = env.ok(&["points", "web01"]);
    assert_eq!(human.matches("DAMAGED").count(), 2, "{human}");

    // A restore fails before writing anything, naming the lost ranges.
    let f = env.fail(&["restore", &p1.sel(), "--disk", "os", "--to", "bad.raw"]);
    let line = f.one_error_line();
    let first = format!("{}..{}", lost_ranges[0].0, lost_ranges[0].1);
    assert!(line.contains(&first) && line.contains("--partial"), "{line}");
    assert!(!env.path("bad.raw").exists());

    // --partial writes everything intact, zeros elsewhere, and lists what is missing.
    for (p, want) in [(&p1, &v1), (&p2, &disk)] {
        let to = env.path(&format!("partial-{}.raw", &p.id[..8]));
        let out = env.run(&["--json", "restore", &p.sel(), "--disk", "os", "--to", to.to_str().unwrap(), "--partial"]);
        assert!(out.status.success(), "restore --partial: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("written as zeros"), "the missing ranges are said on stderr: {}", text(&out.stderr));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(ranges(&r["missing"]), lost_ranges, "{r:#}");
        assert_partial(&to, want, &lost_ranges);
    }

    // The next backup of the unchanged disk stores the damaged blocks again.
    let p3 = env.backup("web01", &[("os", disk.as_path())], &[]);
    assert!(p3.new_bytes >= lost.len() as u64 * BS - BS, "only {} new bytes: the damaged blocks were deduplicated", p3.new_bytes);
    assert_same_file(&env.restore(&p3.sel(), "os", "raw"), &disk);
    let out = env.run(&["--json", "verify", &p3.sel(), "--read-data"]);
    assert_eq!(out.status.code(), Some(0), "verify of the new point: {}", text(&out.stdout));
    // And so the older points are whole again: they restore exactly, and a
    // full verify finds nothing and clears their marks; gc keeps it so.
    assert_same_file(&env.restore(&p2.sel(), "os", "raw"), &disk);
    assert_same_file(&env.restore(&p1.sel(), "os", "raw"), &v1);
    env.verify_clean(true);
    assert!(marked(&env).iter().all(|(_, d)| !d), "{:?}", marked(&env));
    env.ok(&["gc"]);
    assert_same_file(&env.restore(&p1.sel(), "os", "raw"), &v1);
    env.verify_clean(true);
}

/// Several `kluis backup` processes of one item started at once, of one disk
/// (identical points but for their time) and of another: all succeed, with
/// distinct, increasing times and names; each restores exactly and shows in
/// `points` and in the mount under its own name.
#[test]
fn concurrent_backups_of_one_item_get_distinct_times_and_names() {
    let mut rng = rng("concurrent_backups_one_item");
    let env = Env::new();
    let same = env.path("same.raw");
    random_file(&same, 2 * MIB + 1234, &mut rng);
    let other = env.path("other.raw");
    random_file(&other, 3 * MIB, &mut rng);
    let disks = [&same, &same, &same, &other, &same, &other];
    let children: Vec<_> = disks
        .iter()
        .map(|d| env.spawn(&["--json".to_owned(), "backup".to_owned(), "vm".to_owned(), "--disk".to_owned(), format!("os={}", d.display())]))
        .collect();
    let mut made = Vec::new();
    for (c, d) in children.into_iter().zip(disks) {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "a concurrent backup failed: {}", text(&out.stderr));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        made.push((r["id"].as_str().unwrap().to_owned(), r["time"].as_str().unwrap().to_owned(), d));
    }
    let points = env.points(Some("vm"));
    assert_eq!(points.len(), disks.len(), "{points:#?}");
    let mut times: Vec<&str> = made.iter().map(|m| m.1.as_str()).collect();
    times.sort();
    times.dedup();
    assert_eq!(times.len(), disks.len(), "points share a time: {made:?}");
    let mut names: Vec<&str> = points.iter().map(|p| p.name.as_str()).collect();
    names.dedup();
    assert_eq!(names.len(), disks.len(), "points share a name: {names:?}");
    for (id, _, d) in &made {
        assert_same_file(&env.restore(&format!("vm@{}", &id[..12]), "os", "raw"), d);
    }
    for p in &points {
        assert_same_file(&env.restore(&format!("vm@{}", p.name), "os", "raw"), made.iter().find(|m| m.0 == p.id).unwrap().2);
    }
    if !super::mount::fuse_ok("concurrent_backups_of_one_item_get_distinct_times_and_names") {
        return;
    }
    let mp = env.path("mnt");
    let _m = super::mount::MountGuard::start(&env, &mp);
    let mut listed: Vec<String> = fs::read_dir(mp.join("vm")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n != "latest").collect();
    listed.sort();
    let mut want: Vec<String> = points.iter().map(|p| p.name.clone()).collect();
    want.sort();
    assert_eq!(listed, want);
    for p in &points {
        let rp: Value = serde_json::from_slice(&fs::read(mp.join("vm").join(&p.name).join("recovery-point.json")).unwrap()).unwrap();
        assert_eq!(rp["id"].as_str(), Some(p.id.as_str()), "{} shows another point", p.name);
    }
}

/// Removes the index (and any kept aside): the vault as a new machine sees it.
fn lose_index(env: &Env) {
    for f in fs::read_dir(&env.vault).unwrap() {
        let f = f.unwrap().path();
        if f.file_name().unwrap().to_string_lossy().starts_with("index.sqlite") {
            fs::remove_file(f).unwrap();
        }
    }
}

/// rebuild-index forgets no item, policy, setting or job, and brings back
/// no deleted point: from the previous index when it can be read, from the
/// vault's records when it is lost; what it cannot recover it says on
/// stderr and in `--json`.
#[test]
fn rebuild_index_keeps_items_policies_settings_jobs_and_deletions() {
    let mut rng = rng("rebuild_keeps_bookkeeping");
    let env = Env::new();
    let disk = env.path("os.raw");
    random_file(&disk, MIB + 5, &mut rng);
    env.ok(&["policy", "set", "nightly", "--schedule", "daily 02:00", "--keep-daily", "7"]);
    env.ok(&["protect", "vm", "--disk", &format!("os={}", disk.display()), "--policy", "nightly"]);
    env.ok(&["vault", "set", "soft-delete-days", "30"]);
    let p1 = env.backup("vm", &[], &[]);
    write_at(&disk, 0, &random_bytes(&mut rng, 4096));
    let p2 = env.backup("vm", &[], &[]);
    env.ok(&["delete", &p1.sel()]);
    // What defines an item (its last point and job move on).
    let defs = |env: &Env| {
        let v = env.json(&["items"]);
        v.as_array().unwrap().iter().map(|i| (i["item"].clone(), i["policy"].clone(), i["disks"].clone(), i["protected"].clone(), i["schedule"].clone())).collect::<Vec<_>>()
    };
    let items = defs(&env);
    let policies = env.json(&["policy", "ls"]);
    let settings = env.json(&["vault", "show"]);
    let jobs = env.json(&["jobs"]).as_array().unwrap().len();
    let live = |env: &Env| env.points(Some("vm")).into_iter().map(|p| p.id).collect::<Vec<_>>();
    let check = |env: &Env, with_jobs: bool| {
        assert_eq!(defs(env), items, "items after rebuild-index");
        assert_eq!(env.json(&["policy", "ls"]), policies, "policies after rebuild-index");
        assert_eq!(env.json(&["vault", "show"]), settings, "settings after rebuild-index");
        let now = live(env);
        assert!(now.contains(&p2.id) && !now.contains(&p1.id), "the deleted point came back, or the live one went: {now:?}");
        let deleted = env.json(&["points", "vm", "--deleted"]);
        assert!(deleted.as_array().unwrap().iter().any(|p| p["id"] == p1.id.as_str() && p["deleted"].is_string()), "{deleted:#}");
        if with_jobs {
            assert!(env.json(&["jobs"]).as_array().unwrap().len() >= jobs, "jobs lost");
        }
        // A protected item is still backed up from its definition.
        env.backup("vm", &[], &[]);
    };

    // With the previous index readable.
    let rep = env.json(&["rebuild-index"]);
    check(&env, true);
    assert!(rep["not_recovered"].as_array().unwrap().is_empty(), "{rep:#}");

    // With the index lost: the vault's records, and a loud word on what is gone.
    lose_index(&env);
    let out = env.run(&["--json", "rebuild-index"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    check(&env, false);
    let lost = rep["not_recovered"].as_array().unwrap();
    assert!(lost.iter().any(|l| l.as_str().unwrap().contains("job record")), "{rep:#}");
    assert!(text(&out.stderr).contains("job record"), "not said on stderr: {}", text(&out.stderr));
    assert_same_file(&env.restore(&p2.sel(), "os", "raw"), &disk);
}

/// Damage found by a verify of one point is not deduplicated against by the
/// next backup, even where it compares with another point that uses the
/// same chunk and is not marked: the block is stored again.
#[test]
fn damage_found_through_one_point_is_stored_again_by_the_next_backup() {
    let mut rng = rng("damage_through_one_point");
    let env = Env::new();
    let (disk, p1) = web01_point(&env, 2 * MIB, &mut rng);
    write_at(&disk, 0, &random_bytes(&mut rng, 512));
    let p2 = env.backup("web01", &[("os", disk.as_path())], &[]);
    // Flip a byte of block 5's chunk, shared by both points (random data is
    // stored as is, so exactly that chunk is damaged).
    let ids = block_ids(&disk, BS);
    let (pack, at) = byte_of_chunk(&env, &ids[5], 100);
    let mut bytes = fs::read(&pack).unwrap();
    bytes[at as usize] ^= 0x55;
    fs::write(&pack, bytes).unwrap();
    let out = env.run(&["--json", "verify", &p1.sel(), "--read-data"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    let marks: Vec<(String, bool)> = env.points(Some("web01")).into_iter().map(|p| (p.id, p.json["damaged"].as_bool().unwrap())).collect();
    assert_eq!(marks, vec![(p1.id.clone(), true), (p2.id.clone(), false)], "only the verified point is marked");

    let p3 = env.backup("web01", &[("os", disk.as_path())], &[]);
    assert!(p3.new_bytes >= BS, "block 5 was not stored again: {} new bytes", p3.new_bytes);
    let out = env.run(&["--json", "verify", &p3.sel(), "--read-data"]);
    assert_eq!(out.status.code(), Some(0), "the new point uses the damaged chunk: {}", text(&out.stdout));
    assert_same_file(&env.restore(&p3.sel(), "os", "raw"), &disk);
    assert_same_file(&env.restore(&p2.sel(), "os", "raw"), &disk);
}

/// A truncated pack that held a point's map and manifest: rebuild-index
/// keeps the point from the previous index (its manifest text still hashes
/// to its id), gc keeps it and whatever it still reaches, a partial restore
/// names every lost byte, and the next backup restores exactly.
#[test]
fn point_whose_manifest_pack_is_truncated_survives_rebuild_and_gc() {
    let mut rng = rng("manifest_pack_truncated");
    let env = Env::new();
    let (disk, p) = web01_point(&env, 3 * MIB + 100, &mut rng);
    let other = env.path("db.raw");
    random_file(&other, MIB, &mut rng);
    env.backup("db01", &[("os", other.as_path())], &[]);
    // web01's one pack: its data, map and manifest.
    let ids = block_ids(&disk, BS);
    let pack = pack_holding(&env, &ids[0]);
    assert!(frames(&pack).iter().any(|f| f.holds(&p.id)), "the manifest is not in the data's pack");
    let len = fs::metadata(&pack).unwrap().len();
    OpenOptions::new().write(true).open(&pack).unwrap().set_len(len / 2).unwrap();

    let rep = env.json(&["rebuild-index"]);
    assert_eq!(rep["points"].as_u64(), Some(2), "{rep:#}");
    env.ok(&["gc"]);
    let web: Vec<Point> = env.points(Some("web01"));
    assert_eq!(web.len(), 1, "the point whose manifest pack was truncated is gone");
    assert_eq!(web[0].id, p.id);
    assert_eq!(web[0].json["damaged"], true, "{:#}", web[0].json);
    assert_same_file(&env.restore("db01@latest", "os", "raw"), &other);

    let f = env.fail(&["restore", &p.sel(), "--disk", "os", "--to", "bad.raw"]);
    assert!(f.one_error_line().contains("--partial"), "{}", f.stderr);
    let to = env.path("partial.raw");
    let r = env.json(&["restore", &p.sel(), "--disk", "os", "--to", to.to_str().unwrap(), "--partial"]);
    let missing = ranges(&r["missing"]);
    assert!(!missing.is_empty(), "{r:#}");
    assert_partial(&to, &disk, &missing);

    let p2 = env.backup("web01", &[("os", disk.as_path())], &[]);
    assert_same_file(&env.restore(&p2.sel(), "os", "raw"), &disk);
    let out = env.run(&["--json", "verify", &p2.sel(), "--read-data"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

/// gc acts on recorded damage without destroying anything: a pack holding
/// a damaged chunk some point needs is kept whole, so when the damage was
/// a passing read error, a later verify finds the point whole again.
#[test]
fn gc_keeps_the_pack_of_recorded_damage() {
    let mut rng = rng("gc_keeps_damaged_pack");
    let env = Env::new();
    env.purge_deleted_at_gc();
    let (disk, p1) = web01_point(&env, 2 * MIB, &mut rng);
    // Point 2 rewrites most of the disk: most of point 1's pack goes dead
    // once point 1 is deleted, all but block 30.
    let keep = fs::read(&disk).unwrap()[30 * BS as usize..31 * BS as usize].to_vec();
    random_file(&disk, 2 * MIB, &mut rng);
    write_at(&disk, 30 * BS, &keep);
    let p2 = env.backup("web01", &[("os", disk.as_path())], &[]);
    let ids = block_ids(&disk, BS);
    let (pack, at) = byte_of_chunk(&env, &ids[30], 7);
    let good = fs::read(&pack).unwrap();
    let mut bad = good.clone();
    bad[at as usize] ^= 0x55;
    fs::write(&pack, &bad).unwrap();
    let (code, _) = env.verify(true);
    assert_eq!(code, 3);
    env.ok(&["delete", &p1.sel()]);
    env.ok(&["gc"]);
    assert!(pack.exists(), "gc deleted or rewrote the pack that holds recorded damage");
    // The byte was a passing error: a full verify clears the record and the
    // mark, and the point restores exactly.
    fs::write(&pack, &good).unwrap();
    env.verify_clean(true);
    assert_eq!(env.points(Some("web01"))[0].json["damaged"], false);
    assert_same_file(&env.restore(&p2.sel(), "os", "raw"), &disk);
}

/// A replica carries the vault's records: promoted after a disaster and
/// its index lost, it still knows its items, policies and deletions.
#[test]
fn promoted_replica_rebuilds_its_items_and_deletions() {
    let mut rng = rng("replica_records");
    let env = Env::new();
    let disk = env.path("os.raw");
    random_file(&disk, MIB, &mut rng);
    env.ok(&["policy", "set", "nightly", "--schedule", "daily 02:00"]);
    env.ok(&["protect", "vm", "--disk", &format!("os={}", disk.display()), "--policy", "nightly"]);
    let p1 = env.backup("vm", &[], &[]);
    write_at(&disk, 0, &random_bytes(&mut rng, 512));
    let p2 = env.backup("vm", &[], &[]);
    env.ok(&["delete", &p1.sel()]);
    let dr = env.path("dr");
    env.ok(&["replicate", "--to", dr.to_str().unwrap()]);
    let replica = Env::empty().with_vault(dr.clone());
    replica.ok(&["vault", "promote"]);
    lose_index(&replica);
    replica.ok(&["rebuild-index"]);
    let items = replica.json(&["items"]);
    assert_eq!(items[0]["policy"], "nightly", "{items:#}");
    assert_eq!(replica.json(&["policy", "ls"]).as_array().unwrap().len(), 1);
    let live: Vec<String> = replica.points(Some("vm")).into_iter().map(|p| p.id).collect();
    assert_eq!(live, vec![p2.id.clone()], "the deleted point came back on the replica");
    assert_same_file(&replica.restore(&p2.sel(), "os", "raw"), &disk);
}
