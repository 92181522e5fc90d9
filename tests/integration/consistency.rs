//! Consistent multi-disk points: a writer keeps two disks in lock-step and
//! pauses when the pre-script asks; failing scripts; SIGINT mid-sequence.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::common::*;

const SLOTS: u64 = 32;

/// Writes record N into disk A, then the same record into disk B, forever:
/// a consistent point of the pair has A == B byte for byte. Between records
/// it honours the pause protocol of the test scripts: while `DIR/pause`
/// exists it acknowledges with `DIR/paused` and writes nothing.
struct Writer {
    stop: Arc<AtomicBool>,
    records: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(dir: &Path, a: &Path, b: &Path) -> Writer {
        let (fa, fb) = (fs::OpenOptions::new().write(true).open(a).unwrap(), fs::OpenOptions::new().write(true).open(b).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let records = Arc::new(AtomicU64::new(0));
        let (pause, paused) = (dir.join("pause"), dir.join("paused"));
        let (s, r) = (stop.clone(), records.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            let mut block = vec![0u8; BLOCK as usize];
            while !s.load(Ordering::Relaxed) {
                if pause.exists() {
                    fs::write(&paused, b"").unwrap();
                    while pause.exists() && !s.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    fs::remove_file(&paused).unwrap();
                    continue;
                }
                n += 1;
                for chunk in block.chunks_mut(8) {
                    chunk.copy_from_slice(&n.to_le_bytes());
                }
                // Header (block 0) holds N; block 1 + N % SLOTS holds N everywhere.
                let off = (1 + n % SLOTS) * BLOCK;
                for f in [&fa, &fb] {
                    f.write_all_at(&block, off).unwrap();
                    f.write_all_at(&n.to_le_bytes(), 0).unwrap();
                }
                r.store(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        Writer { stop, records, thread: Some(thread) }
    }

    fn wait_for(&self, n: u64) {
        let t = Instant::now();
        while self.records.load(Ordering::Relaxed) < n {
            assert!(t.elapsed() < Duration::from_secs(30), "writer is stuck");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn header(path: &Path) -> u64 {
    let mut b = [0u8; 8];
    fs::File::open(path).unwrap().read_exact_at(&mut b, 0).unwrap();
    u64::from_le_bytes(b)
}

/// Pre-script: ask the writer to pause, wait for its acknowledgement, declare
/// the level. Post-script: let it go, wait until it resumed, log the status.
fn scripts(dir: &Path) -> (String, String) {
    let d = dir.display();
    let pre = format!(
        "touch {d}/pause; i=0; while [ ! -e {d}/paused ]; do sleep 0.01; i=$((i+1)); [ $i -lt 1000 ] || exit 9; done; \
         echo \"pre $KLUIS_ITEM $KLUIS_PHASE\" >> {d}/scripts.log; cat > {d}/pre-stdin.json; echo consistency application"
    );
    let post = format!(
        "rm -f {d}/pause; while [ -e {d}/paused ]; do sleep 0.01; done; echo \"post $KLUIS_PHASE $KLUIS_STATUS $KLUIS_CONSISTENCY\" >> {d}/scripts.log"
    );
    (pre, post)
}

fn jobs(env: &Env, item: &str) -> Vec<Value> {
    env.json(&["jobs", item]).as_array().unwrap().clone()
}

/// Makes disks a and b and a manual policy `m`; returns the test's
/// temporary directory and the `NAME=PATH` arguments of the two disks.
fn manual_vm(env: &Env) -> (String, String, String) {
    let (a, b) = make_disks(env);
    env.ok(&["policy", "set", "m", "--schedule", "manual"]);
    let (da, db) = (format!("a={}", a.display()), format!("b={}", b.display()));
    (env.tmp.path().display().to_string(), da, db)
}

/// Protects item `vm` with both disks, policy `m` and the two scripts.
fn protect_vm(env: &Env, da: &str, db: &str, pre: &str, post: &str) {
    env.ok(&["protect", "vm", "--disk", da, "--disk", db, "--policy", "m", "--pre-script", pre, "--post-script", post]);
}

fn make_disks(env: &Env) -> (PathBuf, PathBuf) {
    let (a, b) = (env.path("a.img"), env.path("b.img"));
    for p in [&a, &b] {
        fs::File::create(p).unwrap().set_len((SLOTS + 1) * BLOCK).unwrap();
    }
    (a, b)
}

#[test]
fn lockstep_disks_are_one_instant_with_scripts() {
    let env = Env::new();
    let (a, b) = make_disks(&env);
    let dir = env.tmp.path().to_owned();
    let (pre, post) = scripts(&dir);
    env.ok(&["policy", "set", "manual", "--schedule", "manual"]);
    let (da, db) = (format!("a={}", a.display()), format!("b={}", b.display()));
    env.ok(&["protect", "vm", "--disk", &da, "--disk", &db, "--policy", "manual", "--pre-script", &pre, "--post-script", &post]);

    let writer = Writer::start(&dir, &a, &b);
    let mut points = Vec::new();
    for i in 0..4 {
        writer.wait_for(50 * (i + 1));
        let rep = env.json(&["backup", "vm"]);
        assert_eq!(rep["consistency"], "application", "{rep}");
        points.push(rep["id"].as_str().unwrap().to_owned());
    }
    drop(writer);

    let mut seen = Vec::new();
    for id in &points {
        let sel = format!("vm@{}", &id[..12]);
        let (ra, rb) = (env.restore(&sel, "a", "raw"), env.restore(&sel, "b", "raw"));
        let (na, nb) = (header(&ra), header(&rb));
        assert_eq!(na, nb, "point {sel}: disk a holds record {na}, disk b {nb}");
        assert_same_file(&ra, &rb);
        assert!(na > 0);
        seen.push(na);
        fs::remove_file(ra).unwrap();
        fs::remove_file(rb).unwrap();
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "points did not advance: {seen:?}");

    for p in env.points(Some("vm")) {
        assert_eq!(p.json["consistency"], "application");
    }
    let log = fs::read_to_string(dir.join("scripts.log")).unwrap();
    assert_eq!(log.lines().filter(|l| *l == "pre vm pre").count(), 4, "{log}");
    assert_eq!(log.lines().filter(|l| *l == "post post ok application").count(), 4, "{log}");
    let stdin: Value = serde_json::from_str(&fs::read_to_string(dir.join("pre-stdin.json")).unwrap()).unwrap();
    assert_eq!(stdin["item"], "vm");
    assert_eq!(stdin["phase"], "pre");
    assert_eq!(stdin["disks"][1]["name"], "b");

    let js: Vec<Value> = jobs(&env, "vm").into_iter().filter(|j| j["kind"] == "backup").collect();
    assert_eq!(js.len(), 4);
    for j in &js {
        assert_eq!(j["kind"], "backup");
        assert_eq!(j["status"], "ok", "{j}");
        assert!(j["bytes_read"].as_u64().unwrap() > 0, "{j}");
        assert_eq!(j["detail"]["consistency"], "application");
        let steps = j["detail"]["steps"].as_array().unwrap();
        assert!(steps.iter().any(|s| s.as_str().unwrap().starts_with("pre-script ok")), "{j}");
        assert!(steps.iter().any(|s| s.as_str().unwrap().starts_with("post-script ok")), "{j}");
    }
    // `items` knows the item, its policy and its last job.
    let items = env.json(&["items"]);
    let vm = items.as_array().unwrap().iter().find(|i| i["item"] == "vm").unwrap();
    assert_eq!(vm["policy"], "manual");
    assert_eq!(vm["points"], 4);
    assert_eq!(vm["last_point"]["consistency"], "application");
    assert_eq!(vm["last_job"]["status"], "ok");
}

#[test]
fn without_scripts_points_are_crash_consistent() {
    let env = Env::new();
    let (a, b) = make_disks(&env);
    let writer = Writer::start(env.tmp.path(), &a, &b);
    writer.wait_for(20);
    let (da, db) = (format!("a={}", a.display()), format!("b={}", b.display()));
    let rep = env.json(&["backup", "vm", "--disk", &da, "--disk", &db]);
    drop(writer);
    assert_eq!(rep["consistency"], "crash", "{rep}");
    let p = env.points(Some("vm"));
    assert_eq!(p[0].json["consistency"], "crash");
    // Protected without scripts: the same.
    env.ok(&["policy", "set", "m", "--schedule", "manual"]);
    env.ok(&["protect", "vm", "--disk", &da, "--disk", &db, "--policy", "m"]);
    let rep = env.json(&["backup", "vm"]);
    assert_eq!(rep["consistency"], "crash", "{rep}");
    let human = env.ok(&["points", "vm"]);
    assert!(human.contains("crash"), "{human}");
}

#[test]
fn failing_pre_script_stores_nothing_and_runs_post() {
    let env = Env::new();
    let (d, da, db) = manual_vm(&env);
    env.ok(&["backup", "vm", "--disk", &da, "--disk", &db]);
    let before = env.snapshot();
    let pre = "echo 'database refuses to quiesce' >&2; exit 7".to_owned();
    let post = format!("echo \"$KLUIS_PHASE $KLUIS_STATUS\" > {d}/post.marker");
    protect_vm(&env, &da, &db, &pre, &post);
    let f = env.fail(&["backup", "vm"]);
    let line = f.one_error_line();
    assert!(line.contains("pre-script") && line.contains("exit status 7") && line.contains("database refuses"), "{line}");
    assert_eq!(fs::read_to_string(env.path("post.marker")).unwrap().trim(), "post failed");
    assert_eq!(env.snapshot(), before, "a failed pre-script changed the vault");
    let v = env.verify_clean(false);
    assert_eq!(v["unreferenced_chunks"], 0, "{v}");
    assert_eq!(v["orphan_packs"], 0, "{v}");
    let failed = env.json(&["jobs", "vm", "--failed"]);
    let j = &failed.as_array().unwrap()[0];
    assert_eq!(j["status"], "failed");
    assert!(j["error"].as_str().unwrap().contains("database refuses"), "{j}");
    assert!(j["ended"].is_string());
    let human = env.ok(&["jobs", "--failed"]);
    assert!(human.contains("failed") && human.contains("exit status 7"), "{human}");
}

#[test]
fn failing_post_script_is_reported_in_the_job() {
    let env = Env::new();
    let (d, da, db) = manual_vm(&env);
    let pre = "echo consistency application".to_owned();
    let post = format!("touch {d}/post.marker; echo 'cannot resume' >&2; exit 3");
    protect_vm(&env, &da, &db, &pre, &post);
    let rep = env.json(&["backup", "vm"]);
    assert!(env.path("post.marker").exists());
    assert_eq!(rep["consistency"], "application");
    assert!(rep["warnings"][0].as_str().unwrap().contains("cannot resume"), "{rep}");
    assert_eq!(env.points(Some("vm")).len(), 1);
    let js = jobs(&env, "vm");
    assert_eq!(js[0]["status"], "warning", "{:?}", js);
    assert!(js[0]["error"].as_str().unwrap().contains("post-script") && js[0]["error"].as_str().unwrap().contains("exit status 3"));
    assert_eq!(env.json(&["jobs", "--failed"]).as_array().unwrap().len(), 1);
    env.verify_clean(true);
}

#[test]
fn sigint_during_the_quiesce_runs_post_and_stores_nothing() {
    let env = Env::new();
    let (d, da, db) = manual_vm(&env);
    env.ok(&["backup", "vm", "--disk", &da, "--disk", &db]);
    let before = env.snapshot();
    // The pre-script "freezes" (here: starts) and then takes its time.
    let pre = format!("touch {d}/frozen; sleep 30; echo consistency application");
    let post = format!("rm -f {d}/frozen; echo \"$KLUIS_PHASE $KLUIS_STATUS\" > {d}/post.marker");
    protect_vm(&env, &da, &db, &pre, &post);
    let mut child = env.spawn(&["backup", "vm"]);
    let t = Instant::now();
    while !env.path("frozen").exists() {
        assert!(t.elapsed() < Duration::from_secs(20), "pre-script never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "kluis did not stop after SIGINT");
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = child.wait_with_output().unwrap();
    assert!(!status.success(), "backup succeeded despite SIGINT");
    assert!(text(&out.stderr).contains("interrupted"), "{}", text(&out.stderr));
    assert!(t.elapsed() < Duration::from_secs(15), "the sleeping pre-script was not killed");
    assert_eq!(fs::read_to_string(env.path("post.marker")).unwrap().trim(), "post interrupted");
    assert!(!env.path("frozen").exists(), "post-script (thaw) did not run");
    assert_eq!(env.snapshot(), before, "an interrupted backup changed the points or packs");
    let js = jobs(&env, "vm");
    let j = js.last().unwrap();
    assert_eq!(j["status"], "interrupted", "{j}");
    let steps = j["detail"]["steps"].as_array().unwrap();
    assert!(steps.iter().any(|s| s.as_str().unwrap().contains("pre-script interrupted")), "{j}");
    assert!(steps.iter().any(|s| s.as_str().unwrap().contains("post-script ok")), "{j}");
    let gc = env.json(&["gc"]);
    assert_eq!(gc["chunks_removed"], 0, "{gc}");
    let v = env.verify_clean(false);
    assert_eq!(v["unreferenced_chunks"], 0, "{v}");
}

#[test]
fn script_snapshots_are_read_and_released() {
    let env = Env::new();
    let mut rng = rng("script_snapshots");
    let (a, b) = (env.path("a.img"), env.path("b.img"));
    random_file(&a, 2 * MIB, &mut rng);
    random_file(&b, 2 * MIB, &mut rng);
    let d = env.tmp.path().display().to_string();
    // The "snapshot" of a is a copy the script makes; then a changes.
    let pre = format!("cp {d}/a.img {d}/a.snap && echo snapshot a={d}/a.snap && echo consistency file-system");
    let post = format!("echo \"$KLUIS_PHASE $KLUIS_SNAPSHOTS\" >> {d}/post.log; [ \"$KLUIS_PHASE\" != release ] || rm {d}/a.snap");
    env.ok(&["policy", "set", "m", "--schedule", "manual"]);
    let (da, db) = (format!("a={}", a.display()), format!("b={}", b.display()));
    protect_vm(&env, &da, &db, &pre, &post);
    let want = hash_file(&a);
    let rep = env.json(&["backup", "vm"]);
    assert_eq!(rep["consistency"], "file-system");
    assert!(!env.path("a.snap").exists(), "snapshot not released");
    let log = fs::read_to_string(env.path("post.log")).unwrap();
    assert!(log.contains("post ") && log.contains(&format!("release a={d}/a.snap")), "{log}");
    assert_eq!(env.restore_hash("vm@latest", "a"), want);
    // The manifest names the source, not the snapshot.
    let p = &env.points(Some("vm"))[0];
    assert_eq!(p.json["disks"][0]["source"], a.display().to_string());
}
