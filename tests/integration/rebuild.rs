//! A lost index is rebuilt from the packs: every point comes back with the
//! same id and restores exactly; damaged chunks are left out, never indexed.

use std::fs;

use super::common::*;

#[test]
fn lost_index_is_rebuilt_from_the_packs() {
    let mut rng = rng("lost_index_is_rebuilt");
    let mut env = Env::new();
    env.set_env("KLUIS_PACK_SIZE", "262144"); // several packs
    let disk = env.path("os.raw");
    sparse_file(&disk, 6 * MIB + 777, &[(0, 2 * MIB), (4 * MIB, 2 * MIB)], &mut rng);
    let xml = env.path("vm.xml");
    fs::write(&xml, "<domain/>\n").unwrap();

    let mut expected = Vec::new();
    for round in 0..3 {
        if round > 0 {
            random_writes(&disk, &mut rng, 20, 8 * KIB);
        }
        let p = env.backup("vm", &[("os", disk.as_path())], &[xml.as_path()]);
        let copy = env.path(&format!("os.{round}.raw"));
        fs::copy(&disk, &copy).unwrap();
        expected.push((p, copy));
    }
    let before: Vec<String> = env.points(None).into_iter().map(|p| p.id).collect();

    // Lose the index entirely.
    for f in fs::read_dir(env.path("vault")).unwrap() {
        let f = f.unwrap().path();
        if f.file_name().unwrap().to_string_lossy().starts_with("index.sqlite") {
            fs::remove_file(f).unwrap();
        }
    }
    env.fail(&["points"]).one_error_line();

    let rep = env.json(&["rebuild-index"]);
    assert_eq!(rep["points"].as_u64(), Some(3), "{rep}");
    assert_eq!(rep["damaged_chunks"].as_u64(), Some(0), "{rep}");
    assert!(rep["incomplete_points"].as_array().unwrap().is_empty(), "{rep}");
    let after: Vec<String> = env.points(None).into_iter().map(|p| p.id).collect();
    assert_eq!(after, before, "the same points, with the same ids, in the same order");
    for (p, copy) in &expected {
        assert_same_file(&env.restore(&p.sel(), "os", "raw"), copy);
    }
    env.verify_clean(true);

    // A second rebuild keeps the previous index aside and flips nothing.
    let rep = env.json(&["rebuild-index"]);
    assert!(rep["old_index"].as_str().is_some_and(|o| o.contains("index.sqlite.old-")), "{rep}");
    assert_eq!(rep["points"].as_u64(), Some(3));

    // A flipped byte in a data chunk: that chunk is left out of the index,
    // and the points that need it come back marked damaged, never dropped
    // (issue #19), nor indexed as if whole.
    let pack = pack_files(&env.path("vault")).into_iter().max_by_key(|p| fs::metadata(p).unwrap().len()).unwrap();
    let f = frames(&pack).into_iter().find(|f| f.kind == 0).expect("a data frame");
    let mut bytes = fs::read(&pack).unwrap();
    // Random data is stored as is, so the flip damages exactly one chunk.
    assert_eq!(f.codec, 0);
    bytes[(f.payload() + f.stored_len as u64 / 2) as usize] ^= 0x55;
    fs::write(&pack, bytes).unwrap();
    let rep = env.json(&["rebuild-index"]);
    assert_eq!(rep["damaged_chunks"].as_u64(), Some(1), "{rep}");
    let damaged = rep["damaged_points"].as_array().unwrap().len();
    assert!(damaged >= 1, "{rep}");
    assert!(rep["incomplete_points"].as_array().unwrap().is_empty(), "{rep}");
    assert_eq!(rep["points"].as_u64(), Some(3), "{rep}");
    // verify finds that one chunk and nothing else; the points not marked
    // damaged restore exactly.
    let (code, v) = env.verify(true);
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(v["damaged"].as_array().unwrap().len(), 1, "{v:#}");
    let now = env.points(None);
    assert_eq!(now.iter().filter(|p| p.json["damaged"] == true).count(), damaged, "{now:#?}");
    for ((p, copy), n) in expected.iter().zip(&now) {
        assert_eq!(p.id, n.id);
        if n.json["damaged"] == false {
            assert_same_file(&env.restore(&p.sel(), "os", "raw"), copy);
        }
    }
}
