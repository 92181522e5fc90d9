//! Bad input: each case fails with exactly one `kluis: error:` line on
//! stderr, a non-zero exit, and leaves the vault as it was.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::common::*;

/// Flips the footer checksum of a VHD at `footer_at` (a byte of field
/// "checksum", offset 64 of the 512-byte footer).
fn break_footer_checksum(vhd: &Path, footer_at: u64) {
    let f = OpenOptions::new().read(true).write(true).open(vhd).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, footer_at + 64).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], footer_at + 64).unwrap();
}

#[test]
fn bad_input_fails_cleanly_and_leaves_the_vault_unchanged() {
    let mut rng = rng("bad_input");
    let env = Env::new();
    let disk = env.path("os.raw");
    sparse_file(&disk, 5 * MIB + 512, &[(0, MIB), (3 * MIB, 2 * MIB + 512)], &mut rng);
    env.backup("web01", &[("os", disk.as_path())], &[]);

    // VHDs to break, made by kluis itself.
    let dynamic = env.restore("web01@latest", "os", "vhd-dynamic");
    let fixed = env.restore("web01@latest", "os", "vhd");
    let truncated = env.path("truncated.vhd");
    fs::copy(&dynamic, &truncated).unwrap();
    let len = fs::metadata(&truncated).unwrap().len();
    OpenOptions::new().write(true).open(&truncated).unwrap().set_len(len / 2).unwrap();
    let bad_fixed = env.path("bad-fixed.vhd");
    fs::copy(&fixed, &bad_fixed).unwrap();
    break_footer_checksum(&bad_fixed, fs::metadata(&fixed).unwrap().len() - 512);
    let bad_dynamic = env.path("bad-dynamic.vhd");
    fs::copy(&dynamic, &bad_dynamic).unwrap();
    let dlen = fs::metadata(&dynamic).unwrap().len();
    break_footer_checksum(&bad_dynamic, 0);
    break_footer_checksum(&bad_dynamic, dlen - 512);
    // A sanity check that the unbroken ones are accepted (in a scratch vault).
    let scratch = Env::new();
    scratch.backup("ok", &[("dyn", dynamic.as_path()), ("fix", fixed.as_path())], &[]);

    let not_vault = env.path("not-a-vault");
    fs::create_dir(&not_vault).unwrap();
    let full = env.path("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("precious"), "keep me").unwrap();
    let cfg_dir = env.path("cfgdir");
    fs::create_dir(&cfg_dir).unwrap();

    let d = |name: &str, p: &Path| format!("{name}={}", p.display());
    let os = d("os", &disk);
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        ("truncated VHD", vec!["backup".into(), "web01".into(), "--disk".into(), d("os", &truncated)], "truncated"),
        ("VHD footer checksum", vec!["backup".into(), "web01".into(), "--disk".into(), d("os", &bad_fixed)], "checksum"),
        ("dynamic VHD footer checksums", vec!["backup".into(), "web01".into(), "--disk".into(), d("os", &bad_dynamic)], "checksum"),
        ("missing disk", vec!["backup".into(), "web01".into(), "--disk".into(), d("os", &env.path("nosuch.raw"))], "nosuch.raw"),
        ("duplicate disk name", vec!["backup".into(), "web01".into(), "--disk".into(), os.clone(), "--disk".into(), os.clone()], "twice"),
        ("--disk without =", vec!["backup".into(), "web01".into(), "--disk".into(), disk.display().to_string()], "NAME=PATH"),
        ("--disk with empty name", vec!["backup".into(), "web01".into(), "--disk".into(), format!("={}", disk.display())], "NAME=PATH"),
        ("--disk with empty path", vec!["backup".into(), "web01".into(), "--disk".into(), "os=".into()], "NAME=PATH"),
        ("bad item name", vec!["backup".into(), "../web01".into(), "--disk".into(), os.clone()], "item name"),
        ("bad disk name", vec!["backup".into(), "web01".into(), "--disk".into(), d("o/s", &disk)], "disk name"),
        ("missing config", vec!["backup".into(), "web01".into(), "--disk".into(), os.clone(), "--config".into(), "nosuch.xml".into()], "nosuch.xml"),
        ("config is a directory", vec!["backup".into(), "web01".into(), "--disk".into(), os.clone(), "--config".into(), cfg_dir.display().to_string()], "cfgdir"),
        ("disk is a directory", vec!["backup".into(), "web01".into(), "--disk".into(), d("os", &cfg_dir)], "cfgdir"),
        ("unknown point id", vec!["restore".into(), "web01@deadbeef".into(), "--disk".into(), "os".into(), "--to".into(), "x.raw".into()], "deadbeef"),
        ("unknown item", vec!["restore".into(), "nosuch@latest".into(), "--disk".into(), "os".into(), "--to".into(), "x.raw".into()], "nosuch"),
        ("bad selector", vec!["restore".into(), "web01@yesterday".into(), "--disk".into(), "os".into(), "--to".into(), "x.raw".into()], "yesterday"),
        ("unknown format", vec!["restore".into(), "web01@latest".into(), "--disk".into(), "os".into(), "--to".into(), "x.raw".into(), "--format".into(), "vmdk".into()], "vmdk"),
        ("verify unknown point", vec!["verify".into(), "web01@deadbeef".into()], "deadbeef"),
        ("delete unknown point", vec!["delete".into(), "web01@deadbeef".into()], "deadbeef"),
        ("delete unknown item", vec!["delete".into(), "nosuch@latest".into()], "nosuch"),
        ("points of unknown item", vec!["points".into(), "nosuch".into()], "nosuch"),
        ("init on a vault", vec!["init".into()], "already"),
    ];
    for (what, args, needle) in &cases {
        let before = env.snapshot();
        let f = env.fail(args.as_slice());
        let line = f.one_error_line();
        assert_eq!(f.code, Some(1), "{what}: exit code");
        assert!(line.to_lowercase().contains(&needle.to_lowercase()), "{what}: error line does not mention {needle:?}: {line}");
        assert_eq!(env.snapshot(), before, "{what}: the vault changed");
        assert!(temp_packs(&env.vault).is_empty(), "{what}: temporary packs left");
        assert!(!env.path("x.raw").exists(), "{what}: a restore target was created");
        eprintln!("ok  {what}: {line}");
    }

    // A vault of an older format: its header says version 1.
    let old_format = env.path("old-vault");
    fs::create_dir(&old_format).unwrap();
    fs::write(old_format.join("kluis.vault"), "kluis-vault 1\nid 00112233445566778899aabbccddeeff\nblock-size 65536\n").unwrap();

    // Directories that are not vaults (of this format) stay untouched.
    for (what, dir, args) in [
        ("points in a format-1 vault", &old_format, vec!["points".to_owned()]),
        ("backup into a format-1 vault", &old_format, vec!["backup".into(), "web01".into(), "--disk".into(), os.clone()]),
        ("points in a non-vault", &not_vault, vec!["points".to_owned()]),
        ("backup into a non-vault", &not_vault, vec!["backup".into(), "web01".into(), "--disk".into(), os.clone()]),
        ("gc in a non-vault", &not_vault, vec!["gc".into()]),
        ("verify a missing dir", &env.path("nowhere"), vec!["verify".into()]),
        ("init on a non-empty dir", &full, vec!["init".into()]),
        ("init with a bad block size", &env.path("new-vault"), vec!["init".into(), "--block-size".into(), "1000".into()]),
    ] {
        let e = Env::empty().with_vault(dir.clone());
        let listing = |p: &Path| -> Vec<String> {
            fs::read_dir(p).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default()
        };
        let (before, existed) = (listing(dir), dir.exists());
        let line = e.fail(&args).one_error_line().to_owned();
        assert_eq!(listing(dir), before, "{what}: {} changed", dir.display());
        assert_eq!(dir.exists(), existed, "{what}: created {}", dir.display());
        eprintln!("ok  {what}: {line}");
    }
    assert_eq!(fs::read_to_string(full.join("precious")).unwrap(), "keep me");

    // And the vault still works.
    assert_same_file(&env.restore("web01@latest", "os", "raw"), &disk);
    env.verify_clean(true);
}
