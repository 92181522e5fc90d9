//! VHD in and out, checked against qemu-img, and block-device sources.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::common::*;

fn qemu_img(test: &str) -> bool {
    if have("qemu-img") {
        return true;
    }
    skip(test, "qemu-img is not installed");
    false
}

/// `qemu-img check -f vpc`: qemu's vpc driver has no checker and answers 63
/// ("This image format does not support checks"); anything else but 0 means
/// qemu found the image broken.
fn qemu_check(vhd: &Path) {
    let out = tool("qemu-img", &["check", "-f", "vpc", vhd.to_str().unwrap()]).unwrap();
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(63),
        "qemu-img check {}: exit {code:?}\n{}{}",
        vhd.display(),
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn qemu_info(vhd: &Path) -> Value {
    let s = tool_ok("qemu-img", &["info", "-f", "vpc", "--output=json", vhd.to_str().unwrap()]);
    serde_json::from_str(&s).unwrap()
}

/// The raw bytes qemu reads from a VHD.
fn qemu_to_raw(vhd: &Path, out: &Path) {
    tool_ok("qemu-img", &["convert", "-f", "vpc", "-O", "raw", vhd.to_str().unwrap(), out.to_str().unwrap()]);
}

/// A copy of `raw` zero-padded to a whole number of sectors: what a VHD of
/// it holds (VHDs are sector-granular).
fn padded(env: &Env, raw: &Path) -> PathBuf {
    let p = env.path(&format!("{}.padded", raw.file_name().unwrap().to_string_lossy()));
    fs::copy(raw, &p).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(f.metadata().unwrap().len().next_multiple_of(512)).unwrap();
    p
}

#[test]
fn restored_vhds_pass_qemu_img_and_convert_back_exactly() {
    let t = "restored_vhds_pass_qemu_img";
    if !qemu_img(t) {
        return;
    }
    let mut rng = rng(t);
    let env = Env::new();
    // Sector-aligned but not block-aligned, mostly holes (the dynamic VHD
    // must leave 2 MiB blocks unallocated), and an odd-sized random disk.
    let sparse = env.path("sparse.raw");
    let sparse_size = 9 * MIB + 3 * 512;
    sparse_file(&sparse, sparse_size, &[(100 * KIB, 200 * KIB), (4 * MIB + 10, 20), (sparse_size - 700, 700)], &mut rng);
    let odd = env.path("odd.raw");
    random_file(&odd, 3 * MIB + 1001, &mut rng);
    env.backup("vm", &[("sparse", sparse.as_path()), ("odd", odd.as_path())], &[]);

    for (disk, raw) in [("sparse", &sparse), ("odd", &odd)] {
        let want = padded(&env, raw);
        let vsize = fs::metadata(&want).unwrap().len();
        for format in ["vhd", "vhd-dynamic"] {
            let vhd = env.restore("vm@latest", disk, format);
            qemu_check(&vhd);
            let info = qemu_info(&vhd);
            assert_eq!(info["format"], "vpc", "{disk} {format}: {info:#}");
            assert_eq!(info["virtual-size"].as_u64(), Some(vsize), "{disk} {format}: {info:#}");
            let len = fs::metadata(&vhd).unwrap().len();
            if format == "vhd" {
                assert_eq!(len, vsize + 512, "fixed VHD of {disk} is data + footer");
            } else if disk == "sparse" {
                // Three of its five 2 MiB blocks hold data; two stay unallocated.
                assert!(len < 3 * 2 * MIB + 64 * KIB, "dynamic VHD of a mostly empty disk is {len} bytes");
            }
            let back = env.path(&format!("{disk}-{format}.back.raw"));
            qemu_to_raw(&vhd, &back);
            assert_same_file(&back, &want);

            // kluis reads its own VHDs back as a source, too.
            let item = format!("again-{disk}-{format}");
            env.backup(&item, &[("d", vhd.as_path())], &[]);
            let r = env.restore(&format!("{item}@latest"), "d", "raw");
            assert_same_file(&r, &want);
        }
    }
}

#[test]
fn backups_from_qemu_made_vhds_restore_exactly() {
    let t = "backups_from_vhd_sources";
    if !qemu_img(t) {
        return;
    }
    let mut rng = rng(t);
    let env = Env::new();
    let raw = env.path("disk.raw");
    let size = 7 * MIB + 5 * 512;
    sparse_file(&raw, size, &[(0, 300 * KIB), (3 * MIB, MIB + 4321), (size - 512, 512)], &mut rng);
    let fixed = env.path("fixed.vhd");
    let dynamic = env.path("dynamic.vhd");
    let make_vhds = || {
        for (sub, out) in [("fixed", &fixed), ("dynamic", &dynamic)] {
            let _ = fs::remove_file(out);
            let opts = format!("subformat={sub},force_size=on");
            tool_ok("qemu-img", &["convert", "-f", "raw", "-O", "vpc", "-o", &opts, raw.to_str().unwrap(), out.to_str().unwrap()]);
            assert_eq!(qemu_info(out)["virtual-size"].as_u64(), Some(size), "qemu-img made a VHD of another size");
        }
    };

    let mut points = Vec::new();
    for round in 0..2 {
        if round > 0 {
            random_writes(&raw, &mut rng, 10, 50_000);
        }
        make_vhds();
        let keep = env.path(&format!("disk.raw.{round}"));
        fs::copy(&raw, &keep).unwrap();
        let p = env.backup("vm", &[("fixed", fixed.as_path()), ("dynamic", dynamic.as_path()), ("raw", raw.as_path())], &[]);
        assert_eq!(p.disks.iter().map(|d| d.1).collect::<Vec<_>>(), vec![size; 3]);
        points.push((p, keep));
    }
    // The second round is incremental: the VHD disks dedup against the raw one.
    assert!(points[1].0.new_bytes < 3 * MIB, "incremental VHD backup stored {} new bytes", points[1].0.new_bytes);
    for (p, keep) in &points {
        for disk in ["fixed", "dynamic", "raw"] {
            let r = env.restore(&p.sel(), disk, "raw");
            assert_same_file(&r, keep);
        }
    }
    env.verify_clean(true);
}

#[test]
fn block_device_source_backs_up_and_restores() {
    let t = "block_device_source";
    let mut rng = rng(t);
    let env = Env::new();
    let img = env.path("disk.img");
    let size = 6 * MIB + 512;
    sparse_file(&img, size, &[(0, MIB), (4 * MIB + 77, 100_000)], &mut rng);
    let dev = match LoopDev::attach(&img) {
        Ok(d) => d,
        Err(e) => return skip(t, &e),
    };
    let p = env.backup("phys", &[("os", dev.dev.as_path())], &[]);
    assert_eq!(p.disks, vec![("os".to_owned(), size)]);
    let r = env.restore("phys@latest", "os", "raw");
    assert_same_file(&r, &img);

    // Change the image through the device, back up again, both points exact.
    let keep = env.path("disk.img.1");
    fs::copy(&img, &keep).unwrap();
    write_at(&dev.dev, 2 * MIB + 5, &random_bytes(&mut rng, 70_000));
    let p2 = env.backup("phys", &[("os", dev.dev.as_path())], &[]);
    assert!(p2.new_bytes < 4 * BLOCK + 64 * KIB, "incremental backup of a device stored {} new bytes", p2.new_bytes);
    assert_same_file(&env.restore(&p.sel(), "os", "raw"), &keep);
    assert_same_file(&env.restore(&p2.sel(), "os", "raw"), &img);

    // Restore onto a block device full of old data: every byte is replaced,
    // holes included, and the device needs --force like any existing target.
    let target_img = env.path("target.img");
    random_file(&target_img, size, &mut rng);
    let target = LoopDev::attach(&target_img).unwrap_or_else(|e| panic!("second loop device: {e}"));
    let tdev = target.dev.to_str().unwrap();
    env.fail(&["restore", &p.sel(), "--disk", "os", "--to", tdev]).one_error_line();
    env.ok(&["restore", &p.sel(), "--disk", "os", "--to", tdev, "--force"]);
    drop(target);
    assert_same_file(&target_img, &keep);
    drop(dev);
}
