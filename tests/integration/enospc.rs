//! A full vault filesystem: the backup that does not fit fails with a clear
//! message, and the vault stays usable.

use std::fs;

use super::common::*;

/// One run on a fresh 8 MiB tmpfs; `pack_size` None is the default (one
/// big pack per backup: the failing pack is a temp file), else small packs
/// (the failing backup has filled the disk with committed packs first).
fn fill_the_vault(pack_size: Option<&str>) {
    let t = format!("enospc (pack size {})", pack_size.unwrap_or("default"));
    let mut rng = rng(&t);
    let env = Env::empty();
    let mnt = env.path("mnt");
    let mut env = env.with_vault(mnt.join("vault"));
    // Declared after `env`, so it is unmounted before the tempdir is removed.
    let _tmpfs = match Tmpfs::mount(mnt, "8m") {
        Ok(m) => m,
        Err(e) => return skip(&t, &e),
    };
    if let Some(s) = pack_size {
        env.set_env("KLUIS_PACK_SIZE", s);
    }
    env.ok(&["init"]);

    let small = env.path("small.raw");
    random_file(&small, MIB + 4321, &mut rng);
    let small1 = env.path("small.1");
    fs::copy(&small, &small1).unwrap();
    let p1 = env.backup("small", &[("os", small.as_path())], &[]);
    let points_before = env.points(None).into_iter().map(|p| p.id).collect::<Vec<_>>();

    let big = env.path("big.raw");
    random_file(&big, 32 * MIB, &mut rng);
    let f = env.fail(&["backup", "big", "--disk", &format!("os={}", big.display())]);
    assert_eq!(f.code, Some(1), "{t}: exit code of a backup into a full vault");
    let line = f.one_error_line();
    assert!(line.to_lowercase().contains("no space"), "{t}: the error does not say the vault is full: {line}");
    eprintln!("{t}: {line}");

    // Usable: the same points, the earlier point restores (outside the
    // tmpfs), nothing damaged.
    assert_eq!(env.points(None).into_iter().map(|p| p.id).collect::<Vec<_>>(), points_before, "{t}");
    assert_same_file(&env.restore(&p1.sel(), "os", "raw"), &small1);
    env.verify_clean(false);

    // Free space: the source goes away, gc reclaims what the failed backup
    // left, and a new backup fits.
    fs::remove_file(&big).unwrap();
    env.ok(&["gc"]);
    let v = env.verify_clean(true);
    assert_eq!(v["unreferenced_chunks"], 0, "{t}: {v}");
    assert!(packs_size(&env.vault) < 2 * MIB, "{t}: gc left {} bytes of packs", packs_size(&env.vault));
    random_writes(&small, &mut rng, 5, 50_000);
    let p2 = env.backup("small", &[("os", small.as_path())], &[]);
    assert_same_file(&env.restore(&p2.sel(), "os", "raw"), &small);
    assert_same_file(&env.restore(&p1.sel(), "os", "raw"), &small1);
    env.verify_clean(true);
}

#[test]
fn full_vault_fails_cleanly_with_one_big_pack() {
    fill_the_vault(None);
}

#[test]
fn full_vault_fails_cleanly_with_small_packs() {
    fill_the_vault(Some("1048576"));
}

/// With small packs the failed backup leaves committed (unreferenced) packs
/// that fill the filesystem to the last page; gc must still run (it frees
/// the vault's reserve file first, so SQLite has room for its log).
#[test]
fn full_vault_fails_cleanly_with_tiny_packs() {
    fill_the_vault(Some("131072"));
}
