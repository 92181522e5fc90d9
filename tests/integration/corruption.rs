//! Damaged packs: a flipped byte in a chunk, a truncated pack, a lost pack.
//! `verify` must name what is damaged and what it affects; restores of the
//! affected disk must fail naming the chunk, never write wrong bytes.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use serde_json::Value;

use super::common::*;

/// The vault's largest pack.
fn largest_pack(env: &Env) -> PathBuf {
    pack_files(&env.vault).into_iter().max_by_key(|p| fs::metadata(p).unwrap().len()).expect("no packs")
}

fn affects<'a>(damage: &'a Value, point_id: &str) -> Option<&'a Value> {
    damage["affects"].as_array().unwrap().iter().find(|a| a["point_id"] == point_id)
}

/// When a pack holding a disk's map is lost, the chunks below the map
/// cannot be attributed; the lost map page itself must name the point, the
/// disk and the bytes it covers, and nothing may claim the other damaged
/// chunks are unused.
fn check_lost_map(v: &Value, human: &str, point_id: &str, disk_size: u64) {
    let damaged = v["damaged"].as_array().unwrap();
    assert!(v["unreadable_map_pages"].as_u64().unwrap() >= 1, "{v:#}");
    let map = damaged
        .iter()
        .filter_map(|d| affects(d, point_id))
        .find(|a| a["part"] == "disk os")
        .unwrap_or_else(|| panic!("no damage names disk os of point {point_id}: {v:#}"));
    assert_eq!(map["ranges"], serde_json::json!([[0, disk_size]]), "{map:#}");
    for d in damaged {
        let a = d["affects"].as_array().unwrap();
        assert!(a.iter().all(|a| a["point_id"] == point_id), "damage attributed to another point: {d:#}");
    }
    assert!(!human.contains("no recovery point uses it"), "verify claims damaged chunks are unused:\n{human}");
}

#[test]
fn flipped_byte_is_found_and_named_with_what_it_affects() {
    let mut rng = rng("flipped_byte");
    let env = Env::new();
    let size = 4 * MIB + 333;
    let (_, v1, p1, p2) = two_points_sharing_all_but_block_0(&env, size, &mut rng);
    // Another item in the same vault, untouched by the damage.
    let other = env.path("db.raw");
    random_file(&other, MIB, &mut rng);
    env.backup("db01", &[("os", other.as_path())], &[]);
    env.verify_clean(true);

    // Flip one byte inside the payload of the data chunk at the middle of
    // point 1's pack.
    let pack = largest_pack(&env);
    let len = fs::metadata(&pack).unwrap().len();
    let mid = len / 2;
    let frames = frames(&pack);
    let f = frames
        .iter()
        .filter(|f| f.kind == 0)
        .min_by_key(|f| (f.payload() + f.stored_len as u64 / 2).abs_diff(mid))
        .expect("a data frame");
    let at = if mid >= f.payload() && mid < f.payload() + f.stored_len as u64 { mid } else { f.payload() + f.stored_len as u64 / 2 };
    let file = OpenOptions::new().read(true).write(true).open(&pack).unwrap();
    let mut b = [0u8];
    file.read_exact_at(&mut b, at).unwrap();
    file.write_all_at(&[b[0] ^ 0x5a], at).unwrap();
    drop(file);
    // Random data is stored as is, so the flip damages exactly one chunk.
    let chunk = f.chunk_at(at).to_owned();
    let block = block_ids(&v1, BLOCK).iter().position(|id| *id == chunk).expect("damaged chunk is a block of the disk") as u64;
    assert!(block > 0, "picked the block point 2 replaced");
    let range = (block * BLOCK, ((block + 1) * BLOCK).min(size));
    eprintln!("flipped byte {at} of {} (chunk {chunk}, disk bytes {}..{})", pack.display(), range.0, range.1);

    // Human output: exit 3, the chunk, the points, the disk and the range.
    let out = env.run(&["verify", "--read-data"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "verify --read-data: {stdout}{}", text(&out.stderr));
    assert!(stdout.contains(&chunk[..8]), "verify does not name chunk {chunk}:\n{stdout}");
    assert!(stdout.contains("disk os"), "verify does not name the disk:\n{stdout}");
    assert!(stdout.contains(&format!("{}..{}", range.0, range.1)), "verify does not give the byte range {range:?}:\n{stdout}");
    assert_eq!(stdout.matches("affects web01@").count(), 2, "both points of web01 use the chunk:\n{stdout}");
    assert!(!stdout.contains("db01"), "db01 is not affected:\n{stdout}");

    // JSON output: the same, exactly.
    let (code, v) = env.verify(true);
    assert_eq!(code, 3);
    let damaged = v["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{v:#}");
    let d = &damaged[0];
    assert_eq!(d["chunk"], chunk.as_str());
    assert!(d["location"].as_str().unwrap().contains(pack.file_stem().unwrap().to_str().unwrap()), "{d:#}");
    for p in [&p1, &p2] {
        let a = affects(d, &p.id).unwrap_or_else(|| panic!("point {} not listed as affected: {d:#}", p.id));
        assert_eq!(a["item"], "web01");
        assert_eq!(a["part"], "disk os");
        assert_eq!(a["ranges"], serde_json::json!([[range.0, range.1]]), "{a:#}");
        assert!(p.name.starts_with(a["point"].as_str().unwrap().trim_end_matches('Z')), "{a:#} vs {}", p.name);
    }
    assert_eq!(d["affects"].as_array().unwrap().len(), 2, "{d:#}");

    // Restores of the affected disk fail naming the chunk, and leave nothing.
    for p in [&p1, &p2] {
        let f = env.fail(&["restore", &p.sel(), "--disk", "os", "--to", "bad.raw"]);
        let line = f.one_error_line();
        assert!(line.contains(&chunk[..8]), "restore error does not name chunk {chunk}: {line}");
        assert!(!env.path("bad.raw").exists());
    }
    // Everything else is fine.
    assert_same_file(&env.restore("db01@latest", "os", "raw"), &other);
    let (code, v) = {
        let out = env.run(&["--json", "verify", "db01@latest", "--read-data"]);
        (out.status.code(), serde_json::from_str::<Value>(&text(&out.stdout)).unwrap())
    };
    assert_eq!(code, Some(0), "verify of the unaffected item: {v:#}");
    // Plain verify reads no payloads: it may or may not notice; either way it
    // must not crash.
    let plain = env.run(&["verify"]);
    assert!(matches!(plain.status.code(), Some(0) | Some(3)), "plain verify: {}", text(&plain.stderr));
}

#[test]
fn truncated_pack_is_found_without_reading_data() {
    let mut rng = rng("truncated_pack");
    let env = Env::new();
    let disk = env.path("os.raw");
    random_file(&disk, 3 * MIB, &mut rng);
    let p = env.backup("web01", &[("os", disk.as_path())], &[]);
    // Another item whose pack stays intact.
    let other = env.path("db.raw");
    random_file(&other, MIB, &mut rng);
    env.backup("db01", &[("os", other.as_path())], &[]);
    let pack = largest_pack(&env);
    let len = fs::metadata(&pack).unwrap().len();
    OpenOptions::new().write(true).open(&pack).unwrap().set_len(len / 2).unwrap();

    let out = env.run(&["verify"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "verify of a truncated pack: {stdout}{}", text(&out.stderr));
    assert!(stdout.contains("truncated") && stdout.contains("affects web01@"), "{stdout}");
    let (code, v) = env.verify(false);
    assert_eq!(code, 3);
    let damaged = v["damaged"].as_array().unwrap();
    // Half the disk's chunks, and (at the pack's end) its map and manifest.
    assert!(damaged.len() >= 20, "only {} chunks reported damaged: {v:#}", damaged.len());
    assert!(damaged.iter().all(|d| d["error"].as_str().unwrap().contains("truncated")), "{v:#}");
    check_lost_map(&v, &stdout, &p.id, 3 * MIB);
    assert_same_file(&env.restore("db01@latest", "os", "raw"), &other);
    let f = env.fail(&["restore", "web01@latest", "--disk", "os", "--to", "bad.raw"]);
    f.one_error_line();
    assert!(!env.path("bad.raw").exists());
}

#[test]
fn missing_pack_is_reported() {
    let mut rng = rng("missing_pack");
    let env = Env::new();
    let a = env.path("a.raw");
    let b = env.path("b.raw");
    random_file(&a, 2 * MIB, &mut rng);
    env.backup("alpha", &[("os", a.as_path())], &[]);
    random_file(&b, MIB, &mut rng);
    let pb = env.backup("beta", &[("os", b.as_path())], &[]);
    // beta's pack is the smaller one.
    let packs = pack_files(&env.vault);
    assert_eq!(packs.len(), 2);
    let gone = packs.iter().min_by_key(|p| fs::metadata(p).unwrap().len()).unwrap();
    fs::remove_file(gone).unwrap();

    let out = env.run(&["verify"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    let (code, v) = env.verify(false);
    assert_eq!(code, 3, "{v:#}");
    let damaged = v["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 16 + 2, "beta's 16 blocks, its map page and manifest: {v:#}");
    assert!(damaged.iter().all(|d| d["error"].as_str().unwrap().contains("missing")), "{v:#}");
    check_lost_map(&v, &text(&out.stdout), &pb.id, MIB);
    env.fail(&["restore", "beta@latest", "--disk", "os", "--to", "bad.raw"]).one_error_line();
    assert_same_file(&env.restore("alpha@latest", "os", "raw"), &a);
}

#[test]
fn damaged_compressed_frame_loses_its_blocks_and_only_those() {
    let env = Env::new();
    let disk = env.path("os.raw");
    fs::write(&disk, text_bytes((3 * FRAME_BLOCKS * BLOCK) as usize, 7)).unwrap();
    let p = env.backup("web01", &[("os", disk.as_path())], &[]);

    // The frame of the second run of blocks (F..2F), the middle one of the
    // disk's three full zstd frames (workers finish runs in any order, so
    // find it by id).
    const F: u64 = FRAME_BLOCKS;
    let ids = block_ids(&disk, BLOCK);
    let pack = largest_pack(&env);
    let frame = frames(&pack)
        .into_iter()
        .find(|f| f.kind == 0 && f.codec == 1 && f.chunks.len() == F as usize && f.chunks[0].0 == ids[F as usize])
        .expect("a compressed frame of blocks F..2F");
    let at = frame.payload() + frame.stored_len as u64 / 2;
    let mut b = [0u8];
    let file = OpenOptions::new().read(true).write(true).open(&pack).unwrap();
    file.read_exact_at(&mut b, at).unwrap();
    file.write_all_at(&[b[0] ^ 0x5a], at).unwrap();
    drop(file);

    // verify names exactly the frame's F chunks, each with its block's range.
    let (code, v) = env.verify(true);
    assert_eq!(code, 3, "{v:#}");
    let damaged = v["damaged"].as_array().unwrap();
    let named: std::collections::HashSet<&str> = damaged.iter().map(|d| d["chunk"].as_str().unwrap()).collect();
    let want: std::collections::HashSet<&str> = frame.chunks.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(named, want, "{v:#}");
    for d in damaged {
        let i = ids.iter().position(|id| id == d["chunk"].as_str().unwrap()).unwrap() as u64;
        let a = affects(d, &p.id).unwrap_or_else(|| panic!("{d:#}"));
        assert_eq!(a["ranges"], serde_json::json!([[i * BLOCK, (i + 1) * BLOCK]]), "{d:#}");
    }

    // restore refuses with one line naming the first damaged block's chunk.
    let f = env.fail(&["restore", &p.sel(), "--disk", "os", "--to", "bad.raw"]);
    let line = f.one_error_line();
    assert!(line.contains(&ids[F as usize][..8]), "restore error does not name chunk {}: {line}", ids[F as usize]);
    assert!(!env.path("bad.raw").exists());
    eprintln!("restore: {line}");

    // Through the mount, a block of the damaged frame reads as EIO or (a
    // block before the damage, decoded on its own and blake3-checked) as
    // its right bytes, never as wrong ones; the blocks next to it read right.
    if super::mount::fuse_ok("damaged_compressed_frame") {
        let mp = env.path("mnt");
        let _m = super::mount::MountGuard::start(&env, &mp);
        let want = fs::read(&disk).unwrap();
        let raw = File::open(mp.join("web01/latest/disks/os.raw")).unwrap();
        let mut buf = vec![0u8; 4096];
        let mut eio = 0;
        for blk in (F..2 * F).rev() {
            let at = blk * BLOCK + 512;
            match raw.read_exact_at(&mut buf, at) {
                Ok(()) => assert!(buf[..] == want[at as usize..at as usize + 4096], "block {blk} of the damaged frame read wrong bytes"),
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EIO), "block {blk}: {e}");
                    eio += 1;
                }
            }
        }
        assert!(eio >= 1, "no block of the damaged frame gave EIO");
        for blk in [F - 1, 2 * F] {
            raw.read_exact_at(&mut buf, blk * BLOCK).unwrap();
            assert!(buf[..] == want[(blk * BLOCK) as usize..(blk * BLOCK) as usize + 4096], "block {blk} next to the damage differs");
        }
    }
}
