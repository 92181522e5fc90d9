//! NBD exports as disks (qemu-nbd, qemu-storage-daemon, nbdkit) and
//! changed-block tracking: dirty bitmaps over NBD and changed-ranges files.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::common::*;
use super::qcow2::{bytes_read, qemu_io, qemu_raw, qemu_tools, Qemu};

/// bytes_read of the newest backup job, as the job record has it.
fn last_backup_job_read(env: &Env) -> u64 {
    let jobs = env.json(&["jobs"]);
    let j = jobs.as_array().unwrap().iter().filter(|j| j["kind"] == "backup").max_by_key(|j| j["id"].as_i64().unwrap()).unwrap().clone();
    j["bytes_read"].as_u64().unwrap()
}

/// The manifest entry of `disk` in the newest point of `item`.
fn disk_entry(env: &Env, item: &str, disk: &str) -> Value {
    let p = env.points(Some(item)).pop().unwrap();
    // `points --json` lists disks with their tracking fields.
    p.json["disks"].as_array().unwrap().iter().find(|d| d["name"] == disk).cloned().unwrap()
}

/// Blocks of `BLOCK` bytes that the writes `(offset, len)` touch, in bytes.
fn touched_bytes(writes: &[(u64, u64)]) -> u64 {
    let mut blocks: Vec<u64> = writes.iter().flat_map(|&(o, l)| o / BLOCK..(o + l).div_ceil(BLOCK)).collect();
    blocks.sort();
    blocks.dedup();
    blocks.len() as u64 * BLOCK
}

/// A qcow2 of random data with holes and an enabled persistent bitmap `b0`.
fn disk_with_bitmap(env: &Env, rng: &mut fastrand::Rng) -> PathBuf {
    let raw = env.path("src.raw");
    sparse_file(&raw, 64 * MIB, &[(0, 12 * MIB), (20 * MIB, 8 * MIB), (50 * MIB, 3 * MIB)], rng);
    let img = env.path("disk.qcow2");
    tool_ok("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", raw.to_str().unwrap(), img.to_str().unwrap()]);
    tool_ok("qemu-img", &["bitmap", "--add", "--enable", img.to_str().unwrap(), "b0"]);
    img
}

/// The day's writes (offset, length) made with qemu-io.
fn churn(img: &Path) -> Vec<(u64, u64)> {
    let writes = [(MIB + 4096, 64 * KIB), (5 * MIB, 2 * MIB), (24 * MIB + 100, 300 * KIB), (40 * MIB, MIB), (63 * MIB, 512 * KIB)];
    let cmds: Vec<String> = writes.iter().enumerate().map(|(i, (o, l))| format!("write -P {} {o} {l}", 0x30 + i)).collect();
    qemu_io(img, &cmds);
    writes.to_vec()
}

fn qemu_nbd(img: &Path, sock: &Path, bitmap: Option<&str>) -> Qemu {
    let mut args = vec!["-t", "-f", "qcow2", "-x", "os", "-k", sock.to_str().unwrap()];
    if let Some(b) = bitmap {
        args.extend(["-B", b]);
    }
    args.push(img.to_str().unwrap());
    let _ = std::fs::remove_file(sock);
    Qemu::start("qemu-nbd", &args, sock)
}

fn qsd(img: &Path, sock: &Path, bitmap: &str) -> Qemu {
    let blockdev = format!("driver=file,filename={},node-name=f", img.display());
    let nbd = format!("addr.type=unix,addr.path={}", sock.display());
    // Writable: QEMU refuses an enabled bitmap on a read-only export.
    let export = format!("type=nbd,id=e,node-name=q,name=os,writable=on,bitmaps.0={bitmap}");
    let _ = std::fs::remove_file(sock);
    Qemu::start("qemu-storage-daemon", &["--blockdev", &blockdev, "--blockdev", "driver=qcow2,file=f,node-name=q", "--nbd-server", &nbd, "--export", &export], sock)
}

/// Whether the qemu tools and `prog` are installed (else `skip`).
fn qemu_tools_and(t: &str, prog: &str) -> bool {
    if !qemu_tools(t) {
        return false;
    }
    if !have(prog) {
        skip(t, &format!("{prog} is not installed"));
        return false;
    }
    true
}

/// The test's Env, a qcow2 made by `disk_with_bitmap`, the path of a unix
/// socket to serve it on, and the `--disk` argument naming that export.
fn bitmap_disk_over_nbd(t: &str) -> (Env, PathBuf, PathBuf, String) {
    let mut rng = rng(t);
    let env = Env::new();
    let img = disk_with_bitmap(&env, &mut rng);
    let sock = env.path("nbd.sock");
    let disk = format!("os=nbd+unix:///os?socket={}", sock.display());
    (env, img, sock, disk)
}

/// For a test of nbdkit (None after `skip` where it is not installed): the
/// test's rng and Env, a sparse disk `disk.raw` of `size` with data at
/// `extents`, and the path of a unix socket to serve it on.
fn nbdkit_disk(t: &str, size: u64, extents: &[(u64, u64)]) -> Option<(fastrand::Rng, Env, PathBuf, PathBuf)> {
    if !have("nbdkit") {
        skip(t, "nbdkit is not installed");
        return None;
    }
    let mut rng = rng(t);
    let env = Env::new();
    let raw = env.path("disk.raw");
    sparse_file(&raw, size, extents, &mut rng);
    let sock = env.path("nbdkit.sock");
    Some((rng, env, raw, sock))
}

/// nbdkit serving the file `raw` on the unix socket `sock`.
fn nbdkit_unix(raw: &Path, sock: &Path) -> Qemu {
    Qemu::start("nbdkit", &["-f", "-U", sock.to_str().unwrap(), "file", &format!("file={}", raw.display())], sock)
}

/// Full then tracked backup through `serve`; the tracked one reads no more
/// than the dirty blocks and restores to what qemu reads.
fn tracked_backup_reads_only_dirty_extents(t: &str, serve: fn(&Path, &Path, &str) -> Qemu) {
    let (env, img, sock, disk) = bitmap_disk_over_nbd(t);
    let args = ["backup", "vm", "--disk", &disk, "--dirty-bitmap", "b0"];
    {
        let _s = serve(&img, &sock, "b0");
        let rep = env.json(&args);
        assert_eq!(bytes_read(&rep, "os"), 23 * MIB, "the first backup reads every data extent");
    }
    let first = disk_entry(&env, "vm", "os");
    assert_eq!(first["tracking"], "dirty-bitmap:b0", "{first}");
    assert!(first["fallback"].as_str().unwrap().contains("no earlier point"), "{first}");

    let writes = churn(&img);
    let dirty = touched_bytes(&writes);
    let rep = {
        let _s = serve(&img, &sock, "b0");
        env.json(&args)
    };
    let read = bytes_read(&rep, "os");
    assert!(read > 0 && read <= dirty, "tracked backup read {read} bytes; {dirty} bytes of blocks are dirty");
    assert_eq!(last_backup_job_read(&env), read, "the job records the bytes read");
    let second = disk_entry(&env, "vm", "os");
    let points = env.points(Some("vm"));
    assert_eq!(second["base"].as_str(), Some(points[0].id.as_str()), "{second}");
    assert!(second.get("fallback").is_none_or(Value::is_null), "{second}");
    assert_same_file(&env.restore("vm@latest", "os", "raw"), &qemu_raw(&env, &img));
}

#[test]
fn dirty_bitmap_over_qemu_nbd_reads_only_dirty_extents() {
    let t = "dirty_bitmap_over_qemu_nbd";
    if !qemu_tools_and(t, "qemu-nbd") {
        return;
    }
    tracked_backup_reads_only_dirty_extents(t, |img, sock, b| qemu_nbd(img, sock, Some(b)));
}

#[test]
fn dirty_bitmap_over_qemu_storage_daemon_reads_only_dirty_extents() {
    let t = "dirty_bitmap_over_qemu_storage_daemon";
    if !qemu_tools_and(t, "qemu-storage-daemon") {
        return;
    }
    tracked_backup_reads_only_dirty_extents(t, qsd);
}

#[test]
fn tracking_falls_back_to_compare_by_hash_and_says_why() {
    let t = "tracking_falls_back";
    if !qemu_tools_and(t, "qemu-nbd") {
        return;
    }
    let (env, img, sock, disk) = bitmap_disk_over_nbd(t);
    {
        let _s = qemu_nbd(&img, &sock, Some("b0"));
        env.ok(&["backup", "vm", "--disk", &disk, "--dirty-bitmap", "b0"]);
        // A bitmap the export does not have: a full read, one warning line,
        // a complete point that says why.
        let out = env.run(&["backup", "vm", "--disk", &disk, "--dirty-bitmap", "nope"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("no dirty bitmap \"nope\"") && err.contains("compared by hash"), "{err}");
        assert!(disk_entry(&env, "vm", "os")["fallback"].as_str().unwrap().contains("no dirty bitmap"));
        assert_eq!(last_backup_job_read(&env), 23 * MIB);
        let jobs = env.json(&["jobs"]);
        assert!(jobs.as_array().unwrap().iter().any(|j| j["status"] == "warning"), "{jobs}");
    }
    churn(&img);
    {
        // The point before was not read with b0 in place: b0 may lack writes.
        let _s = qemu_nbd(&img, &sock, Some("b0"));
        let rep = env.json(&["backup", "vm", "--disk", &disk, "--dirty-bitmap", "b0"]);
        assert_eq!(bytes_read(&rep, "os"), 23 * MIB + MIB + 512 * KIB);
        assert!(disk_entry(&env, "vm", "os")["fallback"].as_str().unwrap().contains("not read with this bitmap"));
        // Now the latest point has b0; deleting it leaves a base b0 may not cover.
        let latest = env.points(Some("vm")).pop().unwrap();
        env.ok(&["delete", &latest.sel()]);
        let rep = env.json(&["backup", "vm", "--disk", &disk, "--dirty-bitmap", "b0"]);
        assert!(bytes_read(&rep, "os") > 20 * MIB);
        assert!(disk_entry(&env, "vm", "os")["fallback"].as_str().unwrap().contains("is deleted"));
    }
    assert_same_file(&env.restore("vm@latest", "os", "raw"), &qemu_raw(&env, &img));
}

#[test]
fn nbdkit_exports_over_unix_and_tcp_back_up_exactly_without_reading_holes() {
    let t = "nbdkit_exports";
    let Some((mut rng, env, raw, sock)) = nbdkit_disk(t, 32 * MIB, &[(MIB, 3 * MIB), (17 * MIB, 2 * MIB + 4096)]) else {
        return;
    };
    let file = format!("file={}", raw.display());
    {
        let _s = nbdkit_unix(&raw, &sock);
        let rep = env.json(&["backup", "vm", "--disk", &format!("os=nbd+unix:///?socket={}", sock.display())]);
        assert!(bytes_read(&rep, "os") <= 6 * MIB, "{rep}");
    }
    assert_same_file(&env.restore("vm@latest", "os", "raw"), &raw);
    // TCP on loopback, a port picked from the test's seed.
    let port = 20000 + rng.u16(..20000);
    let pidfile = env.path("nbdkit.pid");
    let _s = Qemu::start("nbdkit", &["-f", "-i", "127.0.0.1", "-p", &port.to_string(), "-P", pidfile.to_str().unwrap(), "file", &file], &pidfile);
    env.ok(&["backup", "tcp", "--disk", &format!("os=nbd://127.0.0.1:{port}/")]);
    assert_same_file(&env.restore("tcp@latest", "os", "raw"), &raw);
}

#[test]
fn protect_keeps_an_nbd_url_as_given() {
    let t = "protect_keeps_an_nbd_url";
    let Some((_, env, raw, sock)) = nbdkit_disk(t, 8 * MIB, &[(0, MIB)]) else {
        return;
    };
    let url = format!("nbd+unix:///os?socket={}", sock.display());
    let _s = nbdkit_unix(&raw, &sock);
    env.ok(&["policy", "set", "daily", "--schedule", "daily 02:00", "--keep-daily", "7"]);
    let item = env.json(&["protect", "vm", "--disk", &format!("os={url}"), "--policy", "daily"]);
    assert_eq!(item["disks"][0]["path"].as_str(), Some(url.as_str()), "{item}");
    env.ok(&["backup", "vm"]);
    assert_same_file(&env.restore("vm@latest", "os", "raw"), &raw);
    // A bitmap in the definition needs an NBD disk.
    let f = env.fail(&["protect", "file", "--disk", "os=disk.raw", "--policy", "daily", "--dirty-bitmap", "b0"]);
    assert!(f.one_error_line().contains("no NBD disk"));
}

#[test]
fn changed_ranges_file_reads_only_those_ranges() {
    let t = "changed_ranges_file";
    let mut rng = rng(t);
    let env = Env::new();
    let disk = env.path("disk.raw");
    random_file(&disk, 16 * MIB, &mut rng);
    env.backup("vm", &[("os", &disk)], &[]);
    let writes = [(100, 5000), (3 * MIB, MIB), (16 * MIB - 10, 10)];
    for (o, l) in writes {
        write_at(&disk, o, &random_bytes(&mut rng, l as usize));
    }
    let list = env.path("changed.txt");
    std::fs::write(&list, "# offset length\n3145728 0x100000\n\n100 5000\n16777206 10\n").unwrap();
    let rep = env.json(&["backup", "vm", "--disk", "os=disk.raw", "--changed-ranges", "os=changed.txt"]);
    assert_eq!(bytes_read(&rep, "os"), touched_bytes(&writes));
    let e = disk_entry(&env, "vm", "os");
    assert_eq!(e["tracking"], "changed-ranges", "{e}");
    assert_same_file(&env.restore("vm@latest", "os", "raw"), &disk);
}

#[test]
fn bad_changed_ranges_files_store_nothing() {
    let env = Env::new();
    let disk = env.path("disk.raw");
    random_file(&disk, 4 * MIB, &mut rng("bad_changed_ranges_files"));
    env.backup("vm", &[("os", &disk)], &[]);
    for (body, want) in [
        ("0 100000\n65536 10\n", "line 2: range 65536+10 overlaps the range on line 1"),
        ("4194000 1000\n", "line 1: range 4194000+1000 ends past the end of the disk (4194304 bytes)"),
        ("12 twelve\n", "line 1: expected OFFSET LENGTH"),
    ] {
        std::fs::write(env.path("c.txt"), body).unwrap();
        let f = env.fail(&["backup", "vm", "--disk", "os=disk.raw", "--changed-ranges", "os=c.txt"]);
        let line = f.one_error_line();
        assert!(line.contains("changed-ranges file") && line.contains(want), "{line}");
        assert_eq!(env.points(Some("vm")).len(), 1);
    }
    let f = env.fail(&["backup", "vm", "--disk", "os=disk.raw", "--dirty-bitmap", "b0"]);
    assert!(f.one_error_line().contains("no NBD disk"));
}

/// An NBD server that completes the handshake (no structured replies) and
/// closes the connection on the first read.
fn closing_server(sock: &Path, size: u64) -> std::thread::JoinHandle<()> {
    let l = UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut hello = Vec::new();
        hello.extend_from_slice(b"NBDMAGIC");
        hello.extend_from_slice(b"IHAVEOPT");
        hello.extend_from_slice(&3u16.to_be_bytes());
        c.write_all(&hello).unwrap();
        let mut b4 = [0u8; 4];
        c.read_exact(&mut b4).unwrap();
        loop {
            let mut h = [0u8; 16];
            c.read_exact(&mut h).unwrap();
            let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
            let len = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let mut data = vec![0u8; len as usize];
            c.read_exact(&mut data).unwrap();
            let reply = |c: &mut std::os::unix::net::UnixStream, typ: u32, d: &[u8]| {
                let mut r = Vec::new();
                r.extend_from_slice(&0x0003_e889_0455_65a9u64.to_be_bytes());
                r.extend_from_slice(&opt.to_be_bytes());
                r.extend_from_slice(&typ.to_be_bytes());
                r.extend_from_slice(&(d.len() as u32).to_be_bytes());
                r.extend_from_slice(d);
                c.write_all(&r).unwrap();
            };
            if opt == 7 {
                let mut info = vec![0u8, 0];
                info.extend_from_slice(&size.to_be_bytes());
                info.extend_from_slice(&1u16.to_be_bytes());
                reply(&mut c, 3, &info);
                reply(&mut c, 1, &[]);
                break;
            }
            reply(&mut c, 0x8000_0001, &[]); // NBD_REP_ERR_UNSUP
        }
        let mut req = [0u8; 28];
        c.read_exact(&mut req).unwrap();
        // Half a reply header, then gone.
        c.write_all(&0x6744_6698u32.to_be_bytes()).unwrap();
    })
}

#[test]
fn a_server_that_closes_mid_read_fails_the_backup_with_one_line() {
    let env = Env::new();
    let sock = env.path("closing.sock");
    let server = closing_server(&sock, 8 * MIB);
    let f = env.fail(&["backup", "vm", "--disk", &format!("os=nbd+unix:///os?socket={}", sock.display())]);
    let line = f.one_error_line();
    assert!(line.contains("disk os") && line.contains("closed the connection") && line.contains("read"), "{line}");
    server.join().unwrap();
    assert!(env.points(None).is_empty());
    env.verify_clean(false);
}
