//! Backups of multi-disk items with config files, incremental points, byte-exact
//! and sparse restores, point selectors, and overwrite protection.

use std::fs;
use std::path::{Path, PathBuf};

use super::common::*;

/// One map page: 256 ids of 32 bytes (src/recovery_point/map.rs).
const MAP_PAGE: u64 = 8 * KIB;

fn copy(from: &Path, to: PathBuf) -> PathBuf {
    fs::copy(from, &to).unwrap();
    to
}

#[test]
fn multi_disk_item_backs_up_and_restores_every_point_exactly() {
    let mut rng = rng("multi_disk_item");
    let env = Env::new();

    // os: mostly holes, an odd size (not a multiple of 512 nor of the block).
    let os = env.path("os.raw");
    let os_size = 20 * MIB + 12_345;
    sparse_file(&os, os_size, &[(0, MIB), (5 * MIB + 100, 300 * KIB), (os_size - 5_000, 5_000)], &mut rng);
    // data: random except a 1 MiB hole, size a multiple of 512 but not of the block.
    let data = env.path("data.raw");
    let data_size = 3 * MIB + 3 * 512;
    sparse_file(&data, data_size, &[(0, MIB), (2 * MIB, data_size - 2 * MIB)], &mut rng);
    let xml = env.path("web01.xml");
    fs::write(&xml, "<domain type='kvm'><name>web01</name><memory>1048576</memory></domain>\n").unwrap();
    let tmpl = env.path("template.cfg");
    fs::write(&tmpl, random_bytes(&mut rng, 100 * KIB as usize + 7)).unwrap(); // more than one block

    let disks = [("os", os.as_path()), ("data", data.as_path())];
    let configs = [xml.as_path(), tmpl.as_path()];
    let mut expected: Vec<(Point, PathBuf, PathBuf)> = Vec::new();

    // Point 1: everything is new.
    let p1 = env.backup("web01", &disks, &configs);
    assert_eq!(p1.disks, vec![("os".into(), os_size), ("data".into(), data_size)]);
    assert_eq!(p1.configs, vec!["web01.xml".to_owned(), "template.cfg".to_owned()]);
    let data_bytes = MIB + 300 * KIB + 5_000 + (data_size - MIB);
    assert!(p1.new_bytes >= data_bytes, "first point stored only {} new bytes of {data_bytes}", p1.new_bytes);
    expected.push((p1, copy(&os, env.path("os.1")), copy(&data, env.path("data.1"))));

    // Point 2: one 4 KiB write into a hole of os; nothing else changes.
    write_at(&os, 8 * MIB + 1_000, &random_bytes(&mut rng, 4096));
    let p2 = env.backup("web01", &disks, &configs);
    // At most the two blocks the write touches, a leaf and the root page of
    // os's map, and the manifest.
    let bound = 2 * BLOCK + 2 * MAP_PAGE + 4 * KIB;
    assert!(p2.new_bytes <= bound, "a 4 KiB change cost {} new bytes (bound {bound})", p2.new_bytes);
    assert!(p2.new_bytes >= BLOCK, "the changed block was not stored: new_bytes {}", p2.new_bytes);
    expected.push((p2, copy(&os, env.path("os.2")), copy(&data, env.path("data.2"))));

    // Point 3: scattered writes on both disks, the data disk grows to another
    // odd size, a config file changes.
    random_writes(&os, &mut rng, 20, 10_000);
    random_writes(&data, &mut rng, 20, 100_000);
    let f = fs::OpenOptions::new().append(true).open(&data).unwrap();
    f.set_len(data_size + 70_001).unwrap();
    drop(f);
    write_at(&data, data_size + 70_000, b"!");
    fs::write(&xml, "<domain type='kvm'><name>web01</name><memory>2097152</memory></domain>\n").unwrap();
    let p3 = env.backup("web01", &disks, &configs);
    assert_eq!(p3.disks[1].1, data_size + 70_001);
    expected.push((p3, copy(&os, env.path("os.3")), copy(&data, env.path("data.3"))));

    // A point of another item does not disturb web01's selectors.
    let other = env.path("other.raw");
    random_file(&other, 300 * KIB, &mut rng);
    env.backup("db01", &[("os", other.as_path())], &[]);

    let listed = env.points(Some("web01"));
    assert_eq!(listed.iter().map(|p| p.id.clone()).collect::<Vec<_>>(), expected.iter().map(|e| e.0.id.clone()).collect::<Vec<_>>());

    // Every point, every disk, byte-exact; raw output is sparse.
    for (p, os_want, data_want) in &expected {
        let r = env.restore(&p.sel(), "os", "raw");
        assert_same_file(&r, os_want);
        let (alloc, size) = (allocated(&r), fs::metadata(&r).unwrap().len());
        assert!(alloc < size / 4, "restored os is not sparse: {alloc} of {size} bytes allocated");
        let r = env.restore(&p.sel(), "data", "raw");
        assert_same_file(&r, data_want);
    }

    // Selectors: latest, the time names `points` shows, id prefixes.
    let restored_point = |sel: &str| -> String {
        let to = env.path(&format!("sel-{}", fastrand::u64(..)));
        let v = env.json(&["restore", sel, "--disk", "data", "--to", to.to_str().unwrap()]);
        fs::remove_file(&to).unwrap();
        v["point"].as_str().expect("restore --json names the point").to_owned()
    };
    assert_eq!(restored_point("web01@latest"), expected[2].0.id);
    for (p, _, _) in &expected {
        assert_eq!(restored_point(&format!("web01@{}", p.name)), p.id, "selector web01@{}", p.name);
        assert_eq!(restored_point(&format!("web01@{}", &p.id[..8])), p.id);
        assert_eq!(restored_point(&format!("web01@{}", p.id.to_uppercase())), p.id);
    }
    assert_eq!(env.restore_hash("web01@latest", "os"), hash_file(&expected[2].1));

    env.verify_clean(true);
}

#[test]
fn time_selectors_and_names_of_points_taken_in_one_second() {
    let mut rng = rng("time_selectors");
    let mut env = Env::new();
    let disk = env.path("os.raw");
    random_file(&disk, 200 * KIB, &mut rng);
    // Three backups within one second (the clock is pinned): each point gets
    // its own whole second, so every name is unique and stable. Then one an
    // hour later.
    env.set_env("KLUIS_NOW", "2026-03-01T10:00:00.500Z");
    let mut pts = Vec::new();
    let mut hashes = Vec::new();
    for _ in 0..3 {
        random_writes(&disk, &mut rng, 3, 1000);
        hashes.push(hash_file(&disk));
        pts.push(env.backup("vm", &[("os", disk.as_path())], &[]));
    }
    env.set_env("KLUIS_NOW", "2026-03-01T11:00:00.250Z");
    random_writes(&disk, &mut rng, 3, 1000);
    hashes.push(hash_file(&disk));
    pts.push(env.backup("vm", &[("os", disk.as_path())], &[]));

    let names: Vec<&str> = pts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["2026-03-01T10:00:00Z", "2026-03-01T10:00:01Z", "2026-03-01T10:00:02Z", "2026-03-01T11:00:00Z"]);
    // Each listed name selects its own point.
    for (p, h) in pts.iter().zip(&hashes) {
        assert_eq!(&env.restore_hash(&format!("vm@{}", p.name), "os"), h, "vm@{}", p.name);
    }
    // A time between points selects the newest point at or before it.
    assert_eq!(env.restore_hash("vm@2026-03-01T10:30:00Z", "os"), hashes[2]);
    assert_eq!(env.restore_hash("vm@2026-03-01T10:00:01.999Z", "os"), hashes[1]);
    assert_eq!(env.restore_hash("vm@2026-03-01T12:00:00Z", "os"), hashes[3]);
    // A time before the first point selects nothing.
    let f = env.fail(&["restore", "vm@2026-03-01T09:00:00Z", "--disk", "os", "--to", "x.raw"]);
    f.one_error_line();
    assert!(!env.path("x.raw").exists());

    // Names do not move when a neighbour goes.
    env.ok(&["delete", "vm@2026-03-01T10:00:01Z"]);
    let after: Vec<String> = env.points(Some("vm")).into_iter().map(|p| p.name).collect();
    assert_eq!(after, ["2026-03-01T10:00:00Z", "2026-03-01T10:00:02Z", "2026-03-01T11:00:00Z"]);
    assert_eq!(env.restore_hash("vm@2026-03-01T10:00:02Z", "os"), hashes[2]);
    // ...and a deleted point's time now selects the one before it.
    assert_eq!(env.restore_hash("vm@2026-03-01T10:00:01Z", "os"), hashes[0]);
}

#[test]
fn restore_refuses_an_existing_target_without_force() {
    let mut rng = rng("restore_force");
    let env = Env::new();
    let disk = env.path("os.raw");
    random_file(&disk, MIB + 1, &mut rng);
    env.backup("web01", &[("os", disk.as_path())], &[]);

    let target = env.path("target.raw");
    let old = b"precious data that must survive".to_vec();
    fs::write(&target, &old).unwrap();
    let f = env.fail(&["restore", "web01@latest", "--disk", "os", "--to", "target.raw"]);
    let line = f.one_error_line();
    assert!(line.contains("exists") && line.contains("--force"), "unhelpful message: {line}");
    assert_eq!(fs::read(&target).unwrap(), old, "target was touched");
    // No temporary file left beside it.
    let left: Vec<_> = fs::read_dir(env.tmp.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().contains("kluis-tmp")), "temp file left: {left:?}");

    env.ok(&["restore", "web01@latest", "--disk", "os", "--to", "target.raw", "--force"]);
    assert_same_file(&target, &disk);

    // A disk the point does not have.
    let f = env.fail(&["restore", "web01@latest", "--disk", "nosuch", "--to", "other.raw"]);
    f.one_error_line();
    assert!(!env.path("other.raw").exists());
}

#[test]
fn delete_and_gc_reclaim_space() {
    let mut rng = rng("delete_gc");
    let env = Env::new();
    env.purge_deleted_at_gc();
    let a = env.path("a.raw");
    let b = env.path("b.raw");
    random_file(&a, 8 * MIB, &mut rng);
    random_file(&b, 6 * MIB, &mut rng);
    let pa = env.backup("alpha", &[("os", a.as_path())], &[]);
    // beta's first point has unique data, its second shares nothing with it.
    let pb1 = env.backup("beta", &[("os", b.as_path())], &[]);
    random_file(&b, 6 * MIB, &mut rng);
    let pb2 = env.backup("beta", &[("os", b.as_path())], &[]);
    let before = packs_size(&env.vault);

    env.ok(&["delete", &pb1.sel()]);
    assert!(env.points(Some("beta")).iter().all(|p| p.id != pb1.id));
    let gc = env.json(&["gc"]);
    let after = packs_size(&env.vault);
    assert!(
        after + 5 * MIB < before,
        "gc freed too little: packs {before} -> {after} bytes after deleting a point with 6 MiB unique data ({gc})"
    );
    assert!(gc["chunks_removed"].as_u64().unwrap() >= 96, "{gc}");

    assert_eq!(env.restore_hash(&pa.sel(), "os"), hash_file(&a));
    assert_eq!(env.restore_hash(&pb2.sel(), "os"), hash_file(&b));
    let f = env.fail(&["restore", &pb1.sel(), "--disk", "os", "--to", "gone.raw"]);
    f.one_error_line();
    let v = env.verify_clean(true);
    assert_eq!(v["unreferenced_chunks"], 0, "{v}");
    assert_eq!(v["orphan_packs"], 0, "{v}");
    // A second gc has nothing left to do.
    let gc2 = env.json(&["gc"]);
    assert_eq!(gc2["chunks_removed"], 0, "{gc2}");
    assert_eq!(packs_size(&env.vault), after);
}

#[test]
fn gc_recompresses_the_live_chunks_of_partly_dead_frames() {
    let env = Env::new();
    env.purge_deleted_at_gc();
    let disk = env.path("os.raw");
    fs::write(&disk, text_bytes((2 * FRAME_BLOCKS * BLOCK) as usize, 1)).unwrap();
    let p1 = env.backup("vm", &[("os", disk.as_path())], &[]);
    // New content in three blocks of four: each full frame of point 1 keeps
    // a quarter of its chunks live once point 1 is gone.
    for b in (0..2 * FRAME_BLOCKS).filter(|b| b % 4 != 3) {
        write_at(&disk, b * BLOCK, &text_bytes(BLOCK as usize, 1000 + b));
    }
    let p2 = env.backup("vm", &[("os", disk.as_path())], &[]);
    let grouped = |f: &Frame| f.kind == 0 && f.codec == 1 && f.chunks.len() > 1;
    let before: Vec<Frame> = pack_files(&env.vault).iter().flat_map(|p| frames(p)).collect();
    assert!(before.iter().any(|f| grouped(f) && f.chunks.len() == FRAME_BLOCKS as usize), "no full {FRAME_BLOCKS}-chunk zstd frame: {before:?}");

    env.ok(&["delete", &p1.sel()]);
    let gc = env.json(&["gc"]);
    assert!(gc["packs_rewritten"].as_u64().unwrap() + gc["packs_deleted"].as_u64().unwrap() >= 1, "{gc}");
    let after: Vec<Frame> = pack_files(&env.vault).iter().flat_map(|p| frames(p)).collect();
    // Point 1's frames kept only their live blocks, still compressed together.
    assert!(after.iter().any(|f| grouped(f) && f.chunks.len() == FRAME_BLOCKS as usize / 4), "no re-compressed partial frame: {after:?}");
    let ids: std::collections::HashSet<String> = block_ids(&disk, BLOCK).into_iter().collect();
    let stored: Vec<&String> = after.iter().flat_map(|f| f.chunks.iter().map(|(id, _)| id)).collect();
    assert!(stored.iter().filter(|id| ids.contains(**id)).count() >= ids.len(), "a live block lost its frame");
    assert_eq!(env.restore_hash(&p2.sel(), "os"), hash_file(&disk));
    let v = env.verify_clean(true);
    assert_eq!(v["unreferenced_chunks"], 0, "{v}");
}

/// `restore` of several disks in one command (pairs of --disk/--to, or
/// --to-dir), on a vault of 4 KiB blocks so that a disk spans several of
/// restore's windows and frames are shared across them; all or nothing.
#[test]
fn several_disks_restore_at_once_all_or_nothing() {
    let mut rng = rng("several_disks_restore");
    let env = Env::empty();
    env.ok(&["init", "--block-size", "4096"]);
    let bs = 4 * KIB;

    // os: 40 MiB (10,240 blocks, three windows of restore): random 8 MiB,
    // the same 8 MiB again after a hole (chunks shared across windows), one
    // block repeated, a tail of text, odd size.
    let os = env.path("os.raw");
    let os_size = 40 * MIB + 1_000;
    sparse_file(&os, os_size, &[(0, 8 * MIB)], &mut rng);
    let head = fs::read(&os).unwrap()[..8 * MIB as usize].to_vec();
    write_at(&os, 20 * MIB, &head);
    write_at(&os, 36 * MIB, &text_bytes(4 * MIB as usize + 1_000, 7));
    // 600 blocks of one chunk: more than one restore job holds.
    write_at(&os, 30 * MIB, &random_bytes(&mut rng, bs as usize).repeat(600));
    let data = env.path("data.raw");
    random_file(&data, 3 * MIB + 512, &mut rng);
    let disks = [("os", os.as_path()), ("data", data.as_path())];
    let p1 = env.backup("web01", &disks, &[]);
    let (os1, data1) = (copy(&os, env.path("os.1")), copy(&data, env.path("data.1")));
    // Scattered writes split p1's frames into stretches taken from
    // different frames.
    random_writes(&os, &mut rng, 200, 6_000);
    random_writes(&data, &mut rng, 50, 6_000);
    env.backup("web01", &disks, &[]);

    // Pairs, in the order given; JSON: one report per disk.
    let v = env.json(&["restore", "web01@latest", "--disk", "data", "--to", "d.raw", "--disk", "os", "--to", "o.raw"]);
    let reps = v.as_array().expect("several disks: an array of reports");
    assert_eq!(reps.iter().map(|r| r["disk"].as_str().unwrap()).collect::<Vec<_>>(), ["data", "os"]);
    assert_same_file(&env.path("o.raw"), &os);
    assert_same_file(&env.path("d.raw"), &data);
    let alloc = allocated(&env.path("o.raw"));
    assert!(alloc < os_size * 3 / 4, "restored os is not sparse: {alloc} of {os_size} bytes allocated");

    // --to-dir: every disk of the point, named as in a mount.
    env.ok(&["restore", &p1.sel(), "--to-dir", "all"]);
    assert_same_file(&env.path("all/os.raw"), &os1);
    assert_same_file(&env.path("all/data.raw"), &data1);
    // ... or the named ones, in another format.
    env.ok(&["restore", "web01@latest", "--to-dir", "vhds", "--disk", "data", "--format", "vhd"]);
    let names: Vec<_> = fs::read_dir(env.path("vhds")).unwrap().flatten().map(|e| e.file_name().into_string().unwrap()).collect();
    assert_eq!(names, ["data.vhd"]);
    let vhd = fs::read(env.path("vhds/data.vhd")).unwrap();
    assert_eq!(&vhd[..data.metadata().unwrap().len() as usize], &fs::read(&data).unwrap()[..]);

    // An existing target: nothing written, for the other disk either.
    fs::write(env.path("taken.raw"), b"keep me").unwrap();
    let f = env.fail(&["restore", "web01@latest", "--disk", "os", "--to", "new.raw", "--disk", "data", "--to", "taken.raw"]);
    assert!(f.one_error_line().contains("taken.raw"));
    assert!(!env.path("new.raw").exists(), "a failed restore of several disks left one of them");
    assert_eq!(fs::read(env.path("taken.raw")).unwrap(), b"keep me");

    // Bad pairings, in one line each.
    for args in [
        &["--disk", "os", "--disk", "data", "--to", "x.raw"][..],
        &["--disk", "os", "--to", "x.raw", "--disk", "os", "--to", "y.raw"],
        &["--disk", "os", "--to", "x.raw", "--disk", "data", "--to", "x.raw"],
        &["--to", "x.raw"],
    ] {
        let mut a = vec!["restore", "web01@latest"];
        a.extend_from_slice(args);
        env.fail(&a).one_error_line();
        assert!(!env.path("x.raw").exists() && !env.path("y.raw").exists());
    }

    // A damaged chunk of one disk fails the whole restore; the other disk's
    // finished file is not left either, nor any temporary file.
    let first = &block_ids(&data, bs)[0];
    let (pack, frame) = pack_files(&env.vault)
        .into_iter()
        .find_map(|p| frames(&p).into_iter().find(|f| f.holds(first)).map(|f| (p, f)))
        .expect("the data disk's first block is in a pack");
    let at = frame.chunk_offset(first) + 100;
    let mut b = fs::read(&pack).unwrap();
    b[at as usize] ^= 0x40;
    fs::write(&pack, b).unwrap();
    let f = env.fail(&["restore", "web01@latest", "--to-dir", "broken"]);
    let line = f.one_error_line();
    assert!(line.contains(&first[..8]) && line.contains("disk data"), "error does not name the damaged chunk and its disk: {line}");
    let left: Vec<_> = fs::read_dir(env.path("broken")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "a failed restore left {left:?}");
}
