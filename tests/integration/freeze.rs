//! FIFREEZE on a real file system: an ext4 image loop-mounted in the test's
//! own directory (never `/`, the vault's or the tempdir's file system, which
//! kluis refuses anyway). Needs root, mkfs.ext4 and loop devices; skips
//! otherwise. The guard thaws and unmounts whatever happens.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use super::common::*;

struct LoopMount {
    dir: PathBuf,
}

impl LoopMount {
    fn new(image: &Path, dir: PathBuf) -> Result<LoopMount, String> {
        LoopMount::with(image, dir, "mkfs.ext4", &["-q", "-F"], 64 * MIB)
    }

    fn with(image: &Path, dir: PathBuf, mkfs: &str, args: &[&str], size: u64) -> Result<LoopMount, String> {
        if tool(mkfs, &["-V"]).is_none() {
            return Err(format!("{mkfs} not installed"));
        }
        fs::File::create(image).unwrap().set_len(size).unwrap();
        let mut a = args.to_vec();
        a.push(image.to_str().unwrap());
        let out = tool(mkfs, &a).ok_or(format!("{mkfs} did not start"))?;
        if !out.status.success() {
            return Err(format!("{mkfs} failed: {}", text(&out.stderr).trim()));
        }
        fs::create_dir_all(&dir).unwrap();
        let out = tool("mount", &["-o", "loop", image.to_str().unwrap(), dir.to_str().unwrap()]).ok_or("mount(8) not found")?;
        if !out.status.success() {
            return Err(format!("mount -o loop failed: {}", text(&out.stderr).trim()));
        }
        Ok(LoopMount { dir })
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let d = self.dir.to_str().unwrap();
        let _ = tool("fsfreeze", &["-u", d]); // in case a failed test left it frozen
        if !tool("umount", &[d]).is_some_and(|o| o.status.success()) {
            let _ = tool("umount", &["-l", d]);
        }
    }
}

/// Writes a file into the mount from another thread: true if it finished in
/// time (the file system is not frozen).
fn writable(dir: &Path) -> bool {
    let p = dir.join(format!("probe-{}", fastrand::u64(..)));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = fs::write(&p, b"probe").and_then(|_| fs::File::open(&p)?.sync_all());
        let _ = tx.send(r.is_ok());
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap_or(false)
}

fn setup(test: &str) -> Option<(Env, LoopMount, PathBuf)> {
    let env = Env::new();
    let image = env.path("fs.img");
    match LoopMount::new(&image, env.path("mnt")) {
        Ok(m) => Some((env, m, image)),
        Err(why) => {
            skip(test, &why);
            None
        }
    }
}

fn last_job(env: &Env) -> Value {
    env.json(&["jobs", "vm"]).as_array().unwrap().last().unwrap().clone()
}

fn steps(job: &Value) -> String {
    job["detail"]["steps"].as_array().map(|s| s.iter().map(|x| x.as_str().unwrap().to_owned()).collect::<Vec<_>>().join("\n")).unwrap_or_default()
}

#[test]
fn freeze_makes_file_system_consistent_points() {
    let Some((env, m, image)) = setup("freeze_makes_file_system_consistent_points") else { return };
    let mnt = m.dir.to_str().unwrap().to_owned();
    let d = env.tmp.path().display().to_string();
    // Data still in the page cache: only the freeze's flush puts it in the image.
    let content = "written just before the backup\n".repeat(1000);
    fs::write(m.dir.join("hello.txt"), &content).unwrap();

    env.ok(&["policy", "set", "m", "--schedule", "manual"]);
    let disk = format!("os={}", image.display());
    let post = format!("echo \"$KLUIS_STATUS $KLUIS_CONSISTENCY\" > {d}/post.marker");
    env.ok(&["protect", "vm", "--disk", &disk, "--policy", "m", "--freeze", &mnt, "--post-script", &post]);
    let rep = env.json(&["backup", "vm"]);
    assert_eq!(rep["consistency"], "file-system", "{rep}");
    assert!(rep["capture"] == "held-freeze" || rep["capture"] == "reflink", "{rep}");
    assert!(writable(&m.dir), "the file system is still frozen after the backup");
    assert_eq!(fs::read_to_string(env.path("post.marker")).unwrap().trim(), "ok file-system");
    let job = last_job(&env);
    assert_eq!(job["status"], "ok", "{job}");
    let s = steps(&job);
    assert!(s.contains(&format!("froze {mnt}")) && s.contains(&format!("thawed {mnt}")), "{s}");

    // The point holds a clean file system with the file in it.
    let restored = env.restore("vm@latest", "os", "raw");
    if have("e2fsck") {
        let out = tool("e2fsck", &["-f", "-n", restored.to_str().unwrap()]).unwrap();
        assert!(out.status.success(), "e2fsck of the restored image: {}{}", text(&out.stdout), text(&out.stderr));
    }
    if have("debugfs") {
        let out = tool("debugfs", &["-R", "cat /hello.txt", restored.to_str().unwrap()]).unwrap();
        assert_eq!(text(&out.stdout), content);
    }

    // A pre-script that prints no level plus a freeze: application consistent.
    env.ok(&["protect", "vm", "--disk", &disk, "--policy", "m", "--freeze", &mnt, "--pre-script", "sync"]);
    assert_eq!(env.json(&["backup", "vm"])["consistency"], "application");
    assert!(writable(&m.dir));
    let human = env.ok(&["points", "vm"]);
    assert!(human.contains("file-system") && human.contains("application"), "{human}");
}

#[test]
fn freeze_is_thawed_when_scripts_fail() {
    let Some((env, m, image)) = setup("freeze_is_thawed_when_scripts_fail") else { return };
    let mnt = m.dir.to_str().unwrap().to_owned();
    let d = env.tmp.path().display().to_string();
    env.ok(&["policy", "set", "m", "--schedule", "manual"]);
    let disk = format!("os={}", image.display());

    // Failing post-script: the point is kept, the file system thawed.
    let post = format!("touch {d}/post.marker; exit 5");
    env.ok(&["protect", "vm", "--disk", &disk, "--policy", "m", "--freeze", &mnt, "--post-script", &post]);
    let rep = env.json(&["backup", "vm"]);
    assert_eq!(rep["consistency"], "file-system");
    assert!(writable(&m.dir), "still frozen after a failing post-script");
    assert!(env.path("post.marker").exists());
    let job = last_job(&env);
    assert_eq!(job["status"], "warning", "{job}");
    assert!(steps(&job).contains(&format!("thawed {mnt}")));

    // Failing pre-script: no freeze is taken, nothing stored, post still runs.
    fs::remove_file(env.path("post.marker")).unwrap();
    let before = env.snapshot();
    let post = format!("echo $KLUIS_STATUS > {d}/post.marker");
    env.ok(&["protect", "vm", "--disk", &disk, "--policy", "m", "--freeze", &mnt, "--pre-script", "exit 1", "--post-script", &post]);
    env.fail(&["backup", "vm"]).one_error_line();
    assert!(writable(&m.dir));
    assert_eq!(fs::read_to_string(env.path("post.marker")).unwrap().trim(), "failed");
    assert_eq!(env.snapshot(), before);
    let job = last_job(&env);
    assert_eq!(job["status"], "failed");
    assert!(!steps(&job).contains("froze"), "{job}");

    // A disk that has gone: the backup fails, nothing stays frozen.
    let missing = env.path("gone.img");
    fs::copy(&image, &missing).unwrap();
    env.ok(&["protect", "vm", "--disk", &format!("os={}", missing.display()), "--policy", "m", "--freeze", &mnt]);
    fs::remove_file(&missing).unwrap();
    env.fail(&["backup", "vm"]).one_error_line();
    assert!(writable(&m.dir));
}

#[test]
fn refuses_dangerous_freezes() {
    let env = Env::new();
    fs::write(env.path("os.img"), vec![1u8; 4096]).unwrap();
    env.ok(&["policy", "set", "m", "--schedule", "manual"]);
    for (target, why) in [("/", "root"), (env.tmp.path().to_str().unwrap(), "mountpoint"), ("relative", "absolute")] {
        let f = env.fail(&["protect", "vm", "--disk", "os=os.img", "--policy", "m", "--freeze", target]);
        let line = f.one_error_line().to_owned();
        assert!(line.contains("freeze"), "{target} ({why}): {line}");
    }
}

/// On a file system with reflinks (XFS here), every disk is copied at one
/// instant with FICLONE inside the quiesce, the application resumes before
/// the (long) read, and the copies are gone afterwards.
#[test]
fn reflink_copies_are_taken_inside_the_quiesce() {
    let env = Env::new();
    let m = match LoopMount::with(&env.path("xfs.img"), env.path("xfs"), "mkfs.xfs", &["-q", "-f", "-m", "reflink=1"], 320 * MIB) {
        Ok(m) => m,
        Err(why) => return skip("reflink_copies_are_taken_inside_the_quiesce", &why),
    };
    let mut rng = rng("reflink");
    let (a, b) = (m.dir.join("a.img"), m.dir.join("b.img"));
    random_file(&a, 4 * MIB, &mut rng);
    random_file(&b, 4 * MIB, &mut rng);
    let d = env.tmp.path().display().to_string();
    let pre = format!("date +%s%N > {d}/pre.t; echo consistency application");
    let post = format!("date +%s%N > {d}/post.t");
    env.ok(&["policy", "set", "m", "--schedule", "manual"]);
    let (da, db) = (format!("a={}", a.display()), format!("b={}", b.display()));
    env.ok(&["protect", "vm", "--disk", &da, "--disk", &db, "--policy", "m", "--pre-script", &pre, "--post-script", &post]);
    let (ha, hb) = (hash_file(&a), hash_file(&b));
    let rep = env.json(&["backup", "vm"]);
    assert_eq!((rep["consistency"].as_str(), rep["capture"].as_str()), (Some("application"), Some("reflink")), "{rep}");
    let job = last_job(&env);
    let s = steps(&job);
    let (post_at, stored_at) = (s.find("post-script ok").unwrap(), s.find("stored point").unwrap());
    assert!(post_at < stored_at, "the post-script should run before the read: {s}");
    let left: Vec<_> = fs::read_dir(&m.dir).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with(".kluis-pit-")).collect();
    assert!(left.is_empty(), "copies left behind: {left:?}");
    assert_eq!(env.restore_hash("vm@latest", "a"), ha);
    assert_eq!(env.restore_hash("vm@latest", "b"), hb);
    let p = &env.points(Some("vm"))[0];
    assert_eq!(p.json["capture"], "reflink");
    assert_eq!(p.json["disks"][0]["source"], a.display().to_string());

    // A copy left by a killed kluis (a pid that no longer runs) is removed.
    let stale = m.dir.join(".kluis-pit-999999999-a-0");
    fs::write(&stale, b"x").unwrap();
    env.ok(&["backup", "vm"]);
    assert!(!stale.exists());
}

/// SIGINT while the freeze is held for the read of a disk that cannot be
/// copied (a block device): kluis stops, thaws, runs the post-script and
/// stores nothing.
#[test]
fn sigint_while_frozen_thaws() {
    let Some((env, m, _image)) = setup("sigint_while_frozen_thaws") else { return };
    // A 4 GiB block device (a loop device over a sparse file) takes seconds to read.
    let backing = env.path("big.img");
    fs::File::create(&backing).unwrap().set_len(4096 * MIB).unwrap();
    let dev = match LoopDev::attach(&backing) {
        Ok(d) => d,
        Err(why) => return skip("sigint_while_frozen_thaws", &why),
    };
    let mnt = m.dir.to_str().unwrap().to_owned();
    let d = env.tmp.path().display().to_string();
    env.ok(&["policy", "set", "m", "--schedule", "manual"]);
    let post = format!("echo $KLUIS_STATUS > {d}/post.marker");
    env.ok(&["protect", "vm", "--disk", &format!("os={}", dev.dev.display()), "--policy", "m", "--freeze", &mnt, "--post-script", &post]);
    let before = env.snapshot();
    let mut child = env.spawn(&["backup", "vm"]);
    // Frozen when a write into the mount stops completing.
    let t = std::time::Instant::now();
    let mut frozen = false;
    while t.elapsed() < Duration::from_secs(20) && child.try_wait().unwrap().is_none() {
        let p = m.dir.join("probe");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let r = fs::write(&p, b"x").and_then(|_| fs::File::open(&p)?.sync_all());
            let _ = tx.send(r.is_ok());
        });
        if rx.recv_timeout(Duration::from_millis(1000)).is_err() {
            frozen = true;
            break;
        }
    }
    if !frozen {
        let _ = child.kill();
        return missed("sigint_while_frozen_thaws", "the backup finished before the freeze could be seen");
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("interrupted"), "{}", text(&out.stderr));
    assert!(writable(&m.dir), "still frozen after SIGINT");
    assert_eq!(fs::read_to_string(env.path("post.marker")).unwrap().trim(), "interrupted");
    assert_eq!(env.snapshot().0, before.0, "an interrupted backup changed the points");
    let job = last_job(&env);
    assert_eq!(job["status"], "interrupted", "{job}");
    if steps(&job).contains(&format!("froze {mnt}")) {
        assert!(steps(&job).contains(&format!("thawed {mnt}")), "{job}");
    } else {
        // A slow machine made a write look blocked before the freeze.
        missed("sigint_while_frozen_thaws (freeze part)", "SIGINT came before the freeze");
    }
    env.ok(&["gc"]);
    let v = env.verify_clean(false);
    assert_eq!(v["unreferenced_chunks"], 0, "{v}");
}
