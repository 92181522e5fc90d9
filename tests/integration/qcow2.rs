//! qcow2 in and out, checked against qemu-img: sources with a backing file,
//! compressed clusters and zero clusters; restores as sparse qcow2; images a
//! running QEMU holds are refused.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::common::*;

/// qemu-img and qemu-io, or a skip.
pub fn qemu_tools(test: &str) -> bool {
    if have("qemu-img") && have("qemu-io") {
        return true;
    }
    skip(test, "qemu-img/qemu-io are not installed");
    false
}

/// `qemu-io -c CMD ... IMAGE` (qcow2), asserting success.
pub fn qemu_io(image: &Path, cmds: &[String]) {
    let mut args: Vec<&str> = vec!["-f", "qcow2"];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(image.to_str().unwrap());
    let out = tool("qemu-io", &args).unwrap();
    assert!(out.status.success() && !text(&out.stdout).contains("error"), "qemu-io {args:?}: {}{}", text(&out.stdout), text(&out.stderr));
}

/// The raw bytes qemu reads from an image.
pub fn qemu_raw(env: &Env, image: &Path) -> PathBuf {
    let out = env.path(&format!("{}.qemu.raw", image.file_name().unwrap().to_string_lossy()));
    tool_ok("qemu-img", &["convert", "-O", "raw", image.to_str().unwrap(), out.to_str().unwrap()]);
    out
}

/// Bytes qemu reports allocated with data (not zero) in `image`, its
/// backing chain included.
fn qemu_data_bytes(image: &Path) -> u64 {
    let map: Value = serde_json::from_str(&tool_ok("qemu-img", &["map", "--output=json", image.to_str().unwrap()])).unwrap();
    map.as_array().unwrap().iter().filter(|e| e["data"] == true && e["zero"] == false).map(|e| e["length"].as_u64().unwrap()).sum()
}

/// bytes_read of each disk, from `backup --json`.
pub fn bytes_read(rep: &Value, disk: &str) -> u64 {
    rep["disks"].as_array().unwrap().iter().find(|d| d["name"] == disk).unwrap()["bytes_read"].as_u64().unwrap()
}

#[test]
fn qcow2_sources_back_up_to_exactly_what_qemu_reads() {
    let t = "qcow2_sources_back_up_to_exactly_what_qemu_reads";
    if !qemu_tools(t) {
        return;
    }
    let mut rng = rng(t);
    let env = Env::new();
    let size = 48 * MIB;
    // A v2 (compat 0.10) base made from random data with holes.
    let raw = env.path("base.raw");
    sparse_file(&raw, size, &[(0, 5 * MIB), (9 * MIB + 4096, 3 * MIB), (30 * MIB, 2 * MIB)], &mut rng);
    let base = env.path("base.qcow2");
    tool_ok("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", "-o", "compat=0.10", raw.to_str().unwrap(), base.to_str().unwrap()]);
    // A v3 overlay: new data, zero clusters over base data, data in base holes.
    let top = env.path("top.qcow2");
    tool_ok("qemu-img", &["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top.to_str().unwrap()]);
    qemu_io(&top, &[format!("write -P 0x5a {} 1M", MIB), format!("write -z {} 1M", 10 * MIB), format!("write -P 0xa5 {} 512k", 40 * MIB), "write -z 0 64k".into()]);
    // The same disk with every cluster compressed.
    let comp = env.path("comp.qcow2");
    tool_ok("qemu-img", &["convert", "-c", "-O", "qcow2", top.to_str().unwrap(), comp.to_str().unwrap()]);
    assert!(tool_ok("qemu-img", &["info", comp.to_str().unwrap()]).contains("compression type: zlib"));

    let rep = env.json(&["backup", "vm", "--disk", "base=base.qcow2", "--disk", "top=top.qcow2", "--disk", "comp=comp.qcow2"]);
    for (disk, image) in [("base", &base), ("top", &top), ("comp", &comp)] {
        let restored = env.restore("vm@latest", disk, "raw");
        assert_same_file(&restored, &qemu_raw(&env, image));
        // Holes and zero clusters are not read: at most the data qemu maps,
        // rounded out to whole 64 KiB blocks at each end of each extent.
        let read = bytes_read(&rep, disk);
        let data = qemu_data_bytes(image);
        assert!(read <= data + 8 * BLOCK && read < size / 3, "{disk}: read {read} bytes for {data} bytes of data");
    }
    let p = env.points(Some("vm"));
    let kinds: Vec<&str> = p[0].json["disks"].as_array().map_or(vec![], |d| d.iter().filter_map(|d| d["source_kind"].as_str()).collect());
    assert!(kinds.is_empty() || kinds.iter().all(|k| *k == "qcow2"), "{kinds:?}");
}

#[test]
fn restore_as_qcow2_passes_qemu_img_check_and_converts_back_exactly() {
    let t = "restore_as_qcow2_passes_qemu_img_check";
    if !qemu_tools(t) {
        return;
    }
    let mut rng = rng(t);
    let env = Env::new();
    // Not a whole number of clusters, data at both ends and in between.
    let size = 20 * MIB + 12345;
    let disk = env.path("disk.raw");
    sparse_file(&disk, size, &[(0, 200 * KIB), (5 * MIB, 3 * MIB + 7), (size - 70000, 70000)], &mut rng);
    env.backup("vm", &[("os", &disk)], &[]);
    let q = env.path("out.qcow2");
    env.ok(&["restore", "vm@latest", "--disk", "os", "--to", q.to_str().unwrap(), "--format", "qcow2"]);
    tool_ok("qemu-img", &["check", q.to_str().unwrap()]);
    let info: Value = serde_json::from_str(&tool_ok("qemu-img", &["info", "--output=json", q.to_str().unwrap()])).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"].as_u64().unwrap(), size.next_multiple_of(512));
    // Sparse: only the data clusters (and a little metadata) are allocated.
    assert!(info["actual-size"].as_u64().unwrap() < 8 * MIB, "{info}");
    let back = qemu_raw(&env, &q);
    let want = env.path("want.raw");
    std::fs::copy(&disk, &want).unwrap();
    std::fs::OpenOptions::new().write(true).open(&want).unwrap().set_len(size.next_multiple_of(512)).unwrap();
    assert_same_file(&back, &want);
    // And kluis reads its own output back as a source, told by its content
    // (not its name).
    let renamed = env.path("guest.img");
    std::fs::rename(&q, &renamed).unwrap();
    let rep = env.json(&["backup", "again", "--disk", "os=guest.img"]);
    // 54 blocks of data and the 12800 bytes of the last cluster; no holes.
    assert_eq!(bytes_read(&rep, "os"), 54 * BLOCK + 12800, "{rep}");
    assert_same_file(&env.restore("again@latest", "os", "raw"), &want);
}

/// A QEMU process that holds an image (qemu-storage-daemon exporting it
/// over NBD); killed on drop.
pub struct Qemu {
    child: std::process::Child,
}

impl Qemu {
    /// Starts `prog args`, waits until `socket` exists. Stopped by SIGTERM
    /// (QEMU then closes images cleanly: a killed qemu-nbd leaves its
    /// persistent bitmaps marked in use, and unusable).
    pub fn start(prog: &str, args: &[&str], socket: &Path) -> Qemu {
        let child = std::process::Command::new(prog)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {prog}: {e}"));
        let q = Qemu { child };
        for _ in 0..200 {
            if socket.exists() {
                return q;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("{prog} {args:?}: no socket {} after 5 s", socket.display());
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

#[test]
fn a_qcow2_held_by_a_running_qemu_is_refused() {
    let t = "a_qcow2_held_by_a_running_qemu_is_refused";
    if !qemu_tools(t) {
        return;
    }
    if !have("qemu-storage-daemon") {
        skip(t, "qemu-storage-daemon is not installed");
        return;
    }
    let env = Env::new();
    let img = env.path("web01.qcow2");
    tool_ok("qemu-img", &["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "16M"]);
    qemu_io(&img, &["write -P 0x61 0 2M".into()]);
    let sock = env.path("qsd.sock");
    let blockdev = format!("driver=file,filename={},node-name=f", img.display());
    let nbd = format!("addr.type=unix,addr.path={}", sock.display());
    let qsd = Qemu::start(
        "qemu-storage-daemon",
        &["--blockdev", &blockdev, "--blockdev", "driver=qcow2,file=f,node-name=q", "--nbd-server", &nbd, "--export", "type=nbd,id=e,node-name=q,name=os"],
        &sock,
    );
    let f = env.fail(&["backup", "vm", "--disk", "os=web01.qcow2"]);
    let line = f.one_error_line();
    assert!(line.contains("in use by a running QEMU") && line.contains("NBD export") && line.contains("domain"), "{line}");
    assert!(env.points(None).is_empty());
    // Through the export it works, and reads what QEMU serves.
    let url = format!("os=nbd+unix:///os?socket={}", sock.display());
    env.ok(&["backup", "vm", "--disk", &url]);
    drop(qsd);
    assert_same_file(&env.restore("vm@latest", "os", "raw"), &qemu_raw(&env, &img));
    // With QEMU gone, the file itself backs up.
    env.ok(&["backup", "vm2", "--disk", "os=web01.qcow2"]);
}
