//! libvirt domains end to end, against the real daemon (`qemu:///system`)
//! and a real QEMU (TCG, no guest OS): full and incremental points of a
//! running domain through libvirt's pull-mode backup, a shut-off domain
//! read from its files, a new domain defined from a point, a domain that
//! does not exist; and in-place restores into raw and qcow2 images.
//!
//! The libvirt tests need root, virsh and a running libvirtd (.ci/run
//! starts it); they skip without them. Images live under
//! /var/lib/libvirt/images, where libvirt's QEMU user may open them.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::common::*;
use super::qcow2::{qemu_io, qemu_raw, qemu_tools, Qemu};

const URI: &str = "qemu:///system";

fn virsh(args: &[&str]) -> std::process::Output {
    let mut a = vec!["-c", URI];
    a.extend_from_slice(args);
    tool("virsh", &a).expect("run virsh")
}

fn virsh_ok(args: &[&str]) -> String {
    let out = virsh(args);
    assert!(out.status.success(), "virsh {args:?}: {}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

/// libvirtd answering on qemu:///system as root, with QEMU; or a skip.
fn libvirt(test: &str) -> bool {
    if !qemu_tools(test) {
        return false;
    }
    if unsafe { libc::geteuid() } != 0 {
        skip(test, "needs root for qemu:///system");
        return false;
    }
    if !have("virsh") || !have("qemu-system-x86_64") {
        skip(test, "virsh or qemu-system-x86_64 is not installed (libvirt-daemon-system, qemu-system-x86)");
        return false;
    }
    if !virsh(&["version"]).status.success() {
        skip(test, "libvirtd does not answer on qemu:///system (start virtlogd, virtlockd and libvirtd)");
        return false;
    }
    true
}

/// A libvirt domain and its image directory; destroyed and undefined
/// (checkpoints too) on drop, even when the test fails.
struct Dom {
    name: String,
    dir: PathBuf,
    /// Other domains the test defined (restores).
    also: Vec<String>,
}

impl Dom {
    /// Defines domain `kluis-it-N` (type qemu: TCG, no OS) with a qcow2
    /// image made from `raw` as vda, an empty cdrom and a NIC.
    fn define(test: &str, raw: &Path) -> Dom {
        Dom::define_with(test, raw, None)
    }

    /// ... and, with `vdb`, a copy of that raw image as disk vdb.
    fn define_with(test: &str, raw: &Path, vdb: Option<&Path>) -> Dom {
        let name = format!("kluis-it-{}-{}", std::process::id(), fastrand::u32(..));
        let dir = PathBuf::from("/var/lib/libvirt/images").join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let dom = Dom { name, dir, also: Vec::new() };
        let img = dom.disk();
        tool_ok("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", raw.to_str().unwrap(), img.to_str().unwrap()]);
        let vdb_xml = match vdb {
            Some(src) => {
                let to = dom.dir.join("vdb.raw");
                std::fs::copy(src, &to).unwrap();
                format!("<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{}'/><target dev='vdb' bus='virtio'/></disk>", to.display())
            }
            None => String::new(),
        };
        let xml = format!(
            "<domain type='qemu'>
  <name>{}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    {}
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='hdc' bus='ide'/><readonly/></disk>
    <interface type='user'><mac address='52:54:00:4b:4c:01'/><model type='virtio'/><rom enabled='no'/></interface>
  </devices>
</domain>",
            dom.name,
            img.display(),
            vdb_xml
        );
        let path = dom.dir.join("domain.xml");
        std::fs::write(&path, xml).unwrap();
        virsh_ok(&["define", path.to_str().unwrap()]);
        eprintln!("{test}: domain {}", dom.name);
        dom
    }

    fn disk(&self) -> PathBuf {
        self.dir.join("vda.qcow2")
    }

    fn start(&self) {
        virsh_ok(&["start", &self.name]);
    }

    fn dumpxml(name: &str) -> String {
        virsh_ok(&["dumpxml", "--inactive", name])
    }

    /// `qemu-io` inside the running QEMU, on vda.
    fn guest_write(&self, cmd: &str) {
        let out = virsh_ok(&["qemu-monitor-command", &self.name, "--hmp", &format!("qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"{cmd}\"")]);
        assert!(!out.contains("rror"), "qemu-io in the domain: {out}");
    }

    fn checkpoints(&self) -> Vec<String> {
        virsh_ok(&["checkpoint-list", &self.name, "--name"]).lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect()
    }

    /// The domain's job type (`None` when it has none).
    fn job(&self) -> String {
        let out = virsh(&["domjobinfo", &self.name]);
        if !out.status.success() {
            // "backup job data missing" while a backup job starts or ends.
            return format!("unknown ({})", text(&out.stderr).trim());
        }
        let info = text(&out.stdout);
        info.lines().find(|l| l.starts_with("Job type:")).unwrap_or("").trim_start_matches("Job type:").trim().to_owned()
    }
}

impl Drop for Dom {
    fn drop(&mut self) {
        for n in self.also.iter().chain(std::iter::once(&self.name)) {
            let _ = virsh(&["domjobabort", n]);
            let _ = virsh(&["destroy", n]);
            let _ = virsh(&["undefine", "--checkpoints-metadata", "--nvram", n]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn uuid_and_macs(xml: &str) -> (String, Vec<String>) {
    let between = |s: &str, a: &str, b: &str| s.split(a).nth(1).and_then(|r| r.split(b).next()).map(str::to_owned);
    let uuid = between(xml, "<uuid>", "</uuid>").unwrap();
    let macs = xml.split("<mac address='").skip(1).map(|r| r.split('\'').next().unwrap().to_owned()).collect();
    (uuid, macs)
}

fn policy(env: &Env) {
    env.ok(&["policy", "set", "manual", "--schedule", "manual"]);
}

#[test]
fn libvirt_running_domain_full_then_incremental_both_restore_exactly() {
    let t = "libvirt_running_domain_full_then_incremental_both_restore_exactly";
    if !libvirt(t) {
        return;
    }
    let mut rng = rng(t);
    let env = Env::new();
    let raw = env.path("vda.raw");
    sparse_file(&raw, 256 * MIB, &[(0, 8 * MIB), (100 * MIB, 6 * MIB), (250 * MIB, 2 * MIB)], &mut rng);
    // A raw disk too: libvirt keeps no checkpoint bitmap for it, so it is
    // read whole each time, without a warning.
    let vdb = env.path("vdb.raw");
    sparse_file(&vdb, 8 * MIB, &[(MIB, 2 * MIB)], &mut rng);
    let dom = Dom::define_with(t, &raw, Some(&vdb));
    dom.start();
    policy(&env);
    env.ok(&["protect", "web01", "--libvirt", &dom.name, "--connect", URI, "--policy", "manual"]);
    assert_eq!(env.json(&["items"])[0]["disks"], serde_json::json!([format!("libvirt:{}", dom.name)]));

    // Full: every data block read once, through the job's NBD export.
    let full: Value = env.json(&["backup", "web01"]);
    let p1 = env.points(Some("web01")).pop().unwrap();
    assert_eq!(p1.disks, vec![("vda".to_owned(), 256 * MIB), ("vdb".to_owned(), 8 * MIB)], "the cdrom is skipped: {:#}", p1.json);
    assert_eq!(p1.configs, vec![format!("{}.xml", dom.name)]);
    assert_eq!(full["capture"], "libvirt-backup");
    assert_eq!(full["consistency"], "crash", "no guest agent: crash-consistent");
    let d1 = &full["disks"][0];
    assert!(d1["tracking"].as_str().unwrap().starts_with("checkpoint:kluis-web01-"), "{full:#}");
    assert!(d1["base"].is_null(), "{full:#}");
    assert_eq!(dom.job(), "None", "the backup job was ended");
    let cp1 = d1["tracking"].as_str().unwrap().trim_start_matches("checkpoint:").to_owned();
    assert_eq!(dom.checkpoints(), vec![cp1.clone()]);

    // The guest writes 128 KiB; the next point reads only that.
    dom.guest_write("write -P 0x55 200M 128k");
    let inc: Value = env.json(&["backup", "web01"]);
    let d2 = &inc["disks"][0];
    assert_eq!(d2["bytes_read"].as_u64(), Some(128 * KIB), "incremental from checkpoint {cp1}: {inc:#}");
    assert_eq!(d2["base"].as_str(), Some(p1.id.as_str()), "{inc:#}");
    // Whole: the export of a raw disk reports every byte allocated.
    assert_eq!(inc["disks"][1]["bytes_read"].as_u64(), Some(8 * MIB), "the raw disk is read whole: {inc:#}");
    assert!(inc["disks"][1]["tracking"].is_null() && inc["disks"][1]["fallback"].is_null(), "{inc:#}");
    assert_eq!(inc["warnings"], serde_json::json!([]), "{inc:#}");
    let cp2 = d2["tracking"].as_str().unwrap().trim_start_matches("checkpoint:").to_owned();
    assert_ne!(cp1, cp2);
    assert_eq!(dom.checkpoints(), vec![cp2.clone()], "the first point's checkpoint no longer serves and is deleted");
    assert_eq!(dom.job(), "None");
    let left: Vec<_> = std::fs::read_dir("/var/lib/libvirt/kluis").unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains(&dom.name)).collect();
    assert!(left.is_empty(), "socket and scratch files removed: {left:?}");
    let p2 = env.points(Some("web01")).pop().unwrap();

    // A checkpoint deleted behind kluis's back: the next point reads the
    // disk whole, says why, and makes a new checkpoint to go on from.
    virsh_ok(&["checkpoint-delete", &dom.name, &cp2]);
    let again: Value = env.json(&["backup", "web01"]);
    let d3 = &again["disks"][0];
    assert!(d3["fallback"].as_str().unwrap().contains(&format!("libvirt no longer has checkpoint {cp2}")), "{again:#}");
    assert_eq!(d3["bytes_read"].as_u64(), Some(16 * MIB + 128 * KIB), "{again:#}");
    let cp3 = d3["tracking"].as_str().unwrap().trim_start_matches("checkpoint:").to_owned();
    assert_eq!(dom.checkpoints(), vec![cp3]);

    // Both points restore exactly: the first is the image as made, the
    // second the image as the shut-off domain leaves it.
    virsh_ok(&["destroy", &dom.name]);
    assert_same_file(&env.restore(&p1.sel(), "vda", "raw"), &raw);
    let after = qemu_raw(&env, &dom.disk());
    assert_same_file(&env.restore(&p2.sel(), "vda", "raw"), &after);
    assert_ne!(hash_file(&after), hash_file(&raw));
    assert_same_file(&env.restore(&p2.sel(), "vdb", "raw"), &vdb);
    env.verify_clean(true);

    // Shut off: the disk file is read directly; no job, no checkpoint.
    let off: Value = env.json(&["backup", "web01"]);
    assert_ne!(off["capture"], "libvirt-backup", "{off:#}");
    assert_eq!(off["disks"][0]["bytes_read"].as_u64(), Some(16 * MIB + 128 * KIB), "the qcow2's data clusters: {off:#}");
    let p3 = env.points(Some("web01")).pop().unwrap();
    assert_eq!(env.restore_hash(&p3.sel(), "vda"), hash_file(&after));
}

#[test]
fn libvirt_define_makes_a_new_domain_from_a_point() {
    let t = "libvirt_define_makes_a_new_domain_from_a_point";
    if !libvirt(t) {
        return;
    }
    let mut rng = rng(t);
    let env = Env::new();
    let raw = env.path("vda.raw");
    sparse_file(&raw, 32 * MIB, &[(0, 3 * MIB), (20 * MIB, MIB)], &mut rng);
    let mut dom = Dom::define(t, &raw);
    // A defined, never started domain: read from its files.
    let rep = env.json(&["backup", "web02", "--libvirt", &dom.name, "--connect", URI]);
    assert_eq!(rep["consistency"], "crash", "{rep:#}");
    let new = format!("{}-copy", dom.name);
    dom.also.push(new.clone());
    let dir = dom.dir.join("restored");
    let def = env.json(&["restore", "web02@latest", "--to-dir", dir.to_str().unwrap(), "--libvirt-define", &new, "--connect", URI, "--format", "qcow2"]);
    assert_eq!(def["domain"], new.as_str());

    let (old_xml, new_xml) = (Dom::dumpxml(&dom.name), Dom::dumpxml(&new));
    let ((old_uuid, old_macs), (new_uuid, new_macs)) = (uuid_and_macs(&old_xml), uuid_and_macs(&new_xml));
    assert!(new_xml.contains(&format!("<name>{new}</name>")));
    assert_ne!(old_uuid, new_uuid);
    assert_eq!(old_macs.len(), 1);
    assert_eq!(new_macs.len(), 1);
    assert_ne!(old_macs, new_macs);
    let disk = dir.join("vda.qcow2");
    assert!(new_xml.contains(&format!("<source file='{}'/>", disk.display())), "{new_xml}");
    assert!(new_xml.contains("type='qcow2'") && new_xml.contains("device='cdrom'"), "{new_xml}");
    assert!(virsh_ok(&["domstate", &new]).trim().starts_with("shut off"), "not started");
    assert_same_file(&qemu_raw(&env, &disk), &raw);
    tool_ok("qemu-img", &["check", disk.to_str().unwrap()]);

    // The name is taken now: refused before anything is written.
    let dir2 = dom.dir.join("again");
    let f = env.fail(&["restore", "web02@latest", "--to-dir", dir2.to_str().unwrap(), "--libvirt-define", &new, "--connect", URI]);
    assert!(f.one_error_line().contains(&format!("libvirt already has a domain named {new}")), "{}", f.stderr);
    assert!(!dir2.join("vda.raw").exists());

    // Scripts run around a libvirt item's backup as for any item.
    policy(&env);
    let seen = env.path("post.txt");
    let post = format!("echo \"$KLUIS_PHASE $KLUIS_STATUS $KLUIS_DISKS\" > {}", seen.display());
    env.ok(&["protect", "web03", "--libvirt", &dom.name, "--connect", URI, "--policy", "manual", "--pre-script", "echo consistency application", "--post-script", &post]);
    let rep = env.json(&["backup", "web03"]);
    assert_eq!(rep["consistency"], "application", "{rep:#}");
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), format!("post ok vda={}\n\n", dom.disk().display()));
}

#[test]
fn libvirt_domain_that_does_not_exist_is_one_line_and_stores_nothing() {
    let t = "libvirt_domain_that_does_not_exist_is_one_line_and_stores_nothing";
    if !libvirt(t) {
        return;
    }
    let env = Env::new();
    policy(&env);
    let before = env.snapshot();
    let f = env.fail(&["backup", "web01", "--libvirt", "kluis-no-such-domain", "--connect", URI]);
    assert_eq!(f.one_error_line(), "kluis: error: libvirt domain \"kluis-no-such-domain\" does not exist on qemu:///system");
    let f = env.fail(&["protect", "web01", "--libvirt", "kluis-no-such-domain", "--connect", URI, "--policy", "manual"]);
    assert!(f.one_error_line().contains("does not exist"));
    assert_eq!(env.snapshot(), before);
    assert!(env.json(&["items"]).as_array().unwrap().is_empty());
}

/// A disk image and a point of it, and a copy of it as restored.
fn in_place_setup(env: &Env, rng: &mut fastrand::Rng) -> (PathBuf, Point) {
    let src = env.path("src.raw");
    sparse_file(&src, 24 * MIB, &[(0, 5 * MIB), (10 * MIB, 3 * MIB), (23 * MIB, MIB)], rng);
    let p = env.backup("vm", &[("os", &src)], &[]);
    (src, p)
}

/// The blocks the edits touch, in bytes.
fn blocks_bytes(edits: &[(u64, u64)]) -> u64 {
    let mut b: Vec<u64> = edits.iter().flat_map(|&(o, l)| o / BLOCK..(o + l).div_ceil(BLOCK)).collect();
    b.sort();
    b.dedup();
    b.len() as u64 * BLOCK
}

// Edits: data changed, data written into a hole, data zeroed.
const EDITS: [(u64, u64); 4] = [(MIB + 100, 70 * KIB), (7 * MIB, 64 * KIB), (11 * MIB, 3 * KIB), (23 * MIB + 4 * KIB, 200 * KIB)];

#[test]
fn in_place_restore_rewrites_only_differing_blocks_of_a_raw_image() {
    let t = "in_place_restore_rewrites_only_differing_blocks_of_a_raw_image";
    let mut rng = rng(t);
    let env = Env::new();
    let (src, p) = in_place_setup(&env, &mut rng);
    let target = env.restore(&p.sel(), "os", "raw");
    for (i, &(o, l)) in EDITS.iter().enumerate() {
        let fill = if i == 2 { vec![0u8; l as usize] } else { random_bytes(&mut rng, l as usize) };
        write_at(&target, o, &fill);
    }
    let rep = env.json(&["restore", &p.sel(), "--disk", "os", "--to", target.to_str().unwrap(), "--in-place"]);
    assert_eq!(rep["bytes_written"].as_u64(), Some(blocks_bytes(&EDITS)), "{rep:#}");
    assert_eq!(rep["format"], "raw");
    assert_same_file(&target, &src);
    // Nothing differs now: nothing is written.
    let again = env.json(&["restore", &p.sel(), "--disk", "os", "--to", target.to_str().unwrap(), "--in-place"]);
    assert_eq!(again["bytes_written"].as_u64(), Some(0));
    // A target of another size is refused, unchanged.
    let small = env.path("small.raw");
    std::fs::write(&small, vec![7u8; 4096]).unwrap();
    let f = env.fail(&["restore", &p.sel(), "--disk", "os", "--to", small.to_str().unwrap(), "--in-place"]);
    assert!(f.one_error_line().contains("needs an image of the disk's size"), "{}", f.stderr);
    assert_eq!(std::fs::read(&small).unwrap(), vec![7u8; 4096]);
}

#[test]
fn in_place_restore_rewrites_only_differing_blocks_of_a_qcow2_image() {
    let t = "in_place_restore_rewrites_only_differing_blocks_of_a_qcow2_image";
    if !qemu_tools(t) {
        return;
    }
    let mut rng = rng(t);
    let env = Env::new();
    let (src, p) = in_place_setup(&env, &mut rng);
    let target = env.path("target.qcow2");
    tool_ok("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", src.to_str().unwrap(), target.to_str().unwrap()]);
    let cmds: Vec<String> = EDITS.iter().enumerate().map(|(i, (o, l))| if i == 2 { format!("write -z {o} {l}") } else { format!("write -P {} {o} {l}", 0x61 + i) }).collect();
    qemu_io(&target, &cmds);
    let rep = env.json(&["restore", &p.sel(), "--disk", "os", "--to", target.to_str().unwrap(), "--in-place"]);
    assert_eq!(rep["bytes_written"].as_u64(), Some(blocks_bytes(&EDITS)), "{rep:#}");
    assert_eq!(rep["format"], "qcow2");
    tool_ok("qemu-img", &["check", target.to_str().unwrap()]);
    assert_same_file(&qemu_raw(&env, &target), &src);
    let again = env.json(&["restore", &p.sel(), "--disk", "os", "--to", target.to_str().unwrap(), "--in-place"]);
    assert_eq!(again["bytes_written"].as_u64(), Some(0));

    // An image a QEMU holds is refused, untouched.
    qemu_io(&target, &["write -P 0x99 0 64k".to_owned()]);
    let before = hash_file(&target);
    let sock = env.path("nbd.sock");
    let _q = Qemu::start("qemu-nbd", &["-f", "qcow2", "-k", sock.to_str().unwrap(), target.to_str().unwrap()], &sock);
    let f = env.fail(&["restore", &p.sel(), "--disk", "os", "--to", target.to_str().unwrap(), "--in-place"]);
    assert!(f.one_error_line().contains("in use by a running QEMU"), "{}", f.stderr);
    assert_eq!(hash_file(&target), before);
}

/// Waits until the domain has a job (the backup's read is under way).
fn wait_for_job(dom: &Dom, child: &mut std::process::Child) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while dom.job() == "None" {
        assert!(child.try_wait().unwrap().is_none(), "kluis ended before its backup job was seen");
        assert!(std::time::Instant::now() < deadline, "no backup job within 60 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn signal(child: &std::process::Child, sig: libc::c_int) {
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
}

#[test]
fn libvirt_job_is_ended_on_ctrl_c_twice_ctrl_c_and_after_kill_9() {
    let t = "libvirt_job_is_ended_on_ctrl_c_twice_ctrl_c_and_after_kill_9";
    if !libvirt(t) {
        return;
    }
    let mut rng = rng(t);
    let env = Env::new();
    let raw = env.path("vda.raw");
    random_file(&raw, 384 * MIB, &mut rng);
    let dom = Dom::define(t, &raw);
    dom.start();
    let args = ["backup", "web01", "--libvirt", dom.name.as_str(), "--connect", URI];

    // Ctrl-C: the backup stops, the job ends, its checkpoint goes.
    let mut child = env.spawn(&args);
    wait_for_job(&dom, &mut child);
    signal(&child, libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "interrupted: {}", text(&out.stderr));
    assert_eq!(dom.job(), "None", "Ctrl-C ended the job");
    assert!(dom.checkpoints().is_empty(), "the interrupted run's checkpoint serves no point: {:?}", dom.checkpoints());
    assert!(env.points(None).is_empty(), "no point stored");

    // Ctrl-C twice: kluis exits at once, and still ends the job.
    let mut child = env.spawn(&args);
    wait_for_job(&dom, &mut child);
    signal(&child, libc::SIGINT);
    // Apart, so that the two are not merged into one pending signal.
    std::thread::sleep(std::time::Duration::from_millis(5));
    signal(&child, libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert_eq!(dom.job(), "None", "a second Ctrl-C ended the job too");

    // kill -9 leaves the job running; the next backup ends it and works.
    let mut child = env.spawn(&args);
    wait_for_job(&dom, &mut child);
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    assert_ne!(dom.job(), "None", "kill -9 cannot end the job");
    let rep = env.json(&args);
    assert_eq!(dom.job(), "None");
    let cp = rep["disks"][0]["tracking"].as_str().unwrap().trim_start_matches("checkpoint:").to_owned();
    assert_eq!(dom.checkpoints(), vec![cp], "the killed runs' checkpoints are deleted");
    let jobs = env.json(&["jobs"]);
    let last = jobs.as_array().unwrap().iter().filter(|j| j["kind"] == "backup").max_by_key(|j| j["id"].as_i64().unwrap()).unwrap().clone();
    assert!(last["error"].as_str().unwrap_or("").contains("a killed kluis"), "the reaped job is a warning: {last:#}");
    virsh_ok(&["destroy", &dom.name]);
    assert_eq!(env.restore_hash("web01@latest", "vda"), hash_file(&raw));
}
