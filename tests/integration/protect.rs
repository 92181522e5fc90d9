//! Protected items, soft delete with its window, jobs for every command.

use std::fs;
use std::process::Output;

use serde_json::Value;

use super::common::*;

fn at(env: &Env, now: &str, args: &[&str]) -> Output {
    env.cmd().env("KLUIS_NOW", now).args(args).output().unwrap()
}

fn at_ok(env: &Env, now: &str, args: &[&str]) -> String {
    let o = at(env, now, args);
    assert!(o.status.success(), "kluis {args:?} at {now} failed: {}{}", text(&o.stdout), text(&o.stderr));
    text(&o.stdout)
}

fn at_json(env: &Env, now: &str, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&at_ok(env, now, &a)).unwrap()
}

#[test]
fn protect_then_backup_needs_no_arguments() {
    let env = Env::new();
    let mut rng = rng("protect_backup");
    let (os, data) = (env.path("os.img"), env.path("data.img"));
    random_file(&os, MIB, &mut rng);
    random_file(&data, 3 * MIB / 2, &mut rng);
    fs::write(env.path("vm.xml"), "<domain/>").unwrap();

    // Unknown policy, missing disk, bad names: refused, nothing stored.
    let f = env.fail(&["protect", "vm", "--disk", "os=os.img", "--policy", "nope"]);
    assert!(f.one_error_line().contains("nope"), "{}", f.stderr);
    env.ok(&["policy", "set", "daily", "--schedule", "daily 02:00", "--keep-daily", "7"]);
    env.fail(&["protect", "vm", "--disk", "os=missing.img", "--policy", "daily"]).one_error_line();
    env.fail(&["protect", "bad/name", "--disk", "os=os.img", "--policy", "daily"]).one_error_line();
    let f = env.fail(&["protect", "vm", "--disk", "os=os.img", "--policy", "daily", "--freeze", env.tmp.path().to_str().unwrap()]);
    assert!(f.one_error_line().contains("refusing to freeze"), "{}", f.stderr);
    assert_eq!(env.json(&["items"]).as_array().unwrap().len(), 0);

    // Relative paths are stored absolute, so a scheduler elsewhere finds them.
    let item = env.json(&["protect", "vm", "--disk", "os=os.img", "--disk", "data=data.img", "--config", "vm.xml", "--policy", "daily"]);
    assert_eq!(item["disks"][0]["path"], os.display().to_string(), "{item}");
    let other_dir = tempfile::tempdir().unwrap();
    let out = env.cmd().current_dir(other_dir.path()).args(["--json", "backup", "vm"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rep: Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(rep["consistency"], "crash");
    let p = &env.points(Some("vm"))[0];
    assert_eq!(p.disks, vec![("os".into(), MIB), ("data".into(), 3 * MIB / 2)]);
    assert_eq!(p.configs, vec!["vm.xml".to_owned()]);
    assert_eq!(p.json["consistency"], "crash");
    assert_eq!(env.restore_hash(&p.sel(), "data"), hash_file(&data));

    // A protected item takes its disks from its definition only.
    let f = env.fail(&["backup", "vm", "--disk", "os=os.img"]);
    assert!(f.one_error_line().contains("protected"), "{}", f.stderr);
    // An unprotected item still needs --disk.
    let f = env.fail(&["backup", "other"]);
    assert!(f.one_error_line().contains("--disk"), "{}", f.stderr);

    // Re-protecting replaces the definition.
    env.ok(&["protect", "vm", "--disk", "os=os.img", "--policy", "daily"]);
    env.ok(&["backup", "vm"]);
    assert_eq!(env.points(Some("vm")).last().unwrap().disks.len(), 1);

    let items = env.json(&["items"]);
    let vm = &items.as_array().unwrap()[0];
    assert_eq!(vm["item"], "vm");
    assert_eq!(vm["protected"], true);
    assert_eq!(vm["policy"], "daily");
    assert_eq!(vm["schedule"], "daily 02:00");
    assert_eq!(vm["points"], 2);
    assert_eq!(vm["last_job"]["kind"], "backup");
    assert_eq!(vm["last_job"]["status"], "ok");
    let human = env.ok(&["items"]);
    assert!(human.lines().nth(1).unwrap().starts_with("vm "), "{human}");

    let pols = env.json(&["policy", "ls"]);
    assert_eq!(pols[0]["keep"]["daily"], 7);
    // policy set keeps what is not given.
    env.ok(&["policy", "set", "daily", "--keep-weekly", "4"]);
    let pols = env.json(&["policy", "ls"]);
    assert_eq!((pols[0]["schedule"].as_str(), pols[0]["keep"]["daily"].as_u64(), pols[0]["keep"]["weekly"].as_u64()), (Some("daily 02:00"), Some(7), Some(4)));
    env.fail(&["policy", "set", "x", "--schedule", "fortnightly"]).one_error_line();
    env.fail(&["policy", "rm", "daily"]).one_error_line(); // in use

    env.ok(&["unprotect", "vm"]);
    assert_eq!(env.points(Some("vm")).len(), 2, "unprotect must keep the points");
    env.ok(&["policy", "rm", "daily"]);
}

#[test]
fn deleted_points_stay_restorable_for_the_window() {
    let env = Env::new();
    let mut rng = rng("soft_delete");
    let a = env.path("a.img");
    random_file(&a, 2 * MIB, &mut rng);
    let t0 = "2026-03-01T00:00:00Z";
    let da = format!("os={}", a.display());
    at_ok(&env, t0, &["backup", "vm", "--disk", &da]);
    let h1 = hash_file(&a);
    random_file(&a, 2 * MIB, &mut rng);
    at_ok(&env, "2026-03-01T01:00:00Z", &["backup", "vm", "--disk", &da]);
    let pts = env.points(Some("vm"));
    let first = pts[0].sel();

    let del = at_json(&env, "2026-03-02T00:00:00Z", &["delete", &first]);
    assert_eq!(del["purge_after"], "2026-03-16T00:00:00Z", "{del}");
    assert_eq!(env.points(Some("vm")).len(), 1);
    let all = at_json(&env, "2026-03-02T00:00:00Z", &["points", "vm", "--deleted"]);
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert_eq!(all[0]["deleted"], "2026-03-02T00:00:00Z");
    // A deleted point is not restorable as such ...
    env.fail(&["restore", &first, "--disk", "os", "--to", "x.raw"]).one_error_line();
    // ... and gc within the window keeps its data.
    let gc = at_json(&env, "2026-03-15T23:59:59Z", &["gc"]);
    assert_eq!((gc["points_purged"].as_u64(), gc["chunks_removed"].as_u64()), (Some(0), Some(0)), "{gc}");
    at_ok(&env, "2026-03-15T23:59:59Z", &["undelete", &first]);
    assert_eq!(env.restore_hash(&first, "os"), h1);
    env.fail(&["undelete", &first]).one_error_line(); // not deleted any more

    // Past the window gc purges the row and reclaims the data.
    at_ok(&env, "2026-03-16T00:00:00Z", &["delete", &first]);
    let gc = at_json(&env, "2026-03-30T00:00:00Z", &["gc"]);
    assert_eq!(gc["points_purged"], 1, "{gc}");
    assert!(gc["chunks_removed"].as_u64().unwrap() >= 32, "{gc}");
    assert_eq!(env.json(&["points", "vm", "--deleted"]).as_array().unwrap().len(), 1);
    env.fail(&["undelete", &first]).one_error_line();
    let v = env.verify_clean(true);
    assert_eq!(v["unreferenced_chunks"], 0, "{v}");

    // The window is a vault setting.
    env.ok(&["vault", "set", "soft-delete-days", "0"]);
    assert_eq!(env.json(&["vault", "show"])[0]["value"], "0");
    env.fail(&["vault", "set", "soft-delete-days", "forever"]).one_error_line();
    env.fail(&["vault", "set", "colour", "blue"]).one_error_line();
    env.ok(&["delete", "vm@latest"]);
    let gc = env.json(&["gc"]);
    assert_eq!(gc["points_purged"], 1, "{gc}");
    assert!(env.json(&["points", "--deleted"]).as_array().unwrap().is_empty());
}

#[test]
fn every_command_is_a_job() {
    let env = Env::new();
    let mut rng = rng("jobs");
    let a = env.path("a.img");
    random_file(&a, MIB, &mut rng);
    let da = format!("os={}", a.display());
    env.ok(&["backup", "vm", "--disk", &da]);
    env.ok(&["restore", "vm@latest", "--disk", "os", "--to", "r.raw"]);
    env.fail(&["restore", "vm@latest", "--disk", "nosuch", "--to", "r2.raw"]);
    env.ok(&["verify", "--read-data"]);
    env.ok(&["verify", "vm@latest"]);
    env.ok(&["gc"]);
    env.ok(&["policy", "set", "p", "--schedule", "manual", "--keep-last", "1"]);
    env.ok(&["protect", "vm", "--disk", &da, "--policy", "p"]);
    env.ok(&["backup", "vm"]);
    env.ok(&["prune", "vm", "--dry-run"]);
    let pruned = env.json(&["prune", "vm"]);
    assert_eq!(pruned[0]["pruned"].as_array().unwrap().len(), 1, "{pruned}");

    let js = env.json(&["jobs"]);
    let kinds: Vec<(&str, &str)> = js.as_array().unwrap().iter().map(|j| (j["kind"].as_str().unwrap(), j["status"].as_str().unwrap())).collect();
    assert_eq!(
        kinds,
        vec![
            ("backup", "ok"),
            ("restore", "ok"),
            ("restore", "failed"),
            ("verify", "ok"),
            ("verify", "ok"),
            ("gc", "ok"),
            ("backup", "ok"),
            ("prune", "ok"),
        ]
    );
    let j = &js[0];
    assert_eq!(j["item"], "vm");
    assert_eq!(j["bytes_read"], MIB);
    assert!(j["bytes_stored"].as_u64().unwrap() > MIB / 2);
    assert!(j["ended"].is_string() && j["seconds"].is_number());
    assert_eq!(js[1]["bytes_read"], MIB, "restore counts the bytes it wrote");
    assert!(js[2]["error"].as_str().unwrap().contains("nosuch"), "{}", js[2]);
    assert!(js[3]["bytes_read"].as_u64().unwrap() > 0);
    assert!(js[5]["item"].is_null());
    assert_eq!(env.json(&["jobs", "--failed"]).as_array().unwrap().len(), 1);
    assert_eq!(env.json(&["jobs", "vm", "--last", "2"]).as_array().unwrap().len(), 2);
    assert_eq!(env.json(&["jobs", "nosuch"]).as_array().unwrap().len(), 0);

    // A job whose process was killed is found dead by the next one.
    let mut big = rng.clone();
    let b = env.path("big.img");
    random_file(&b, 64 * MIB, &mut big);
    let mut child = env.cmd().env("KLUIS_PACK_SIZE", "65536").args(["backup", "big", "--disk", &format!("os={}", b.display())])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !env.json(&["jobs", "big"]).as_array().unwrap().iter().any(|j| j["status"] == "running") {
        assert!(t.elapsed().as_secs() < 30, "backup job never showed as running");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let js = env.json(&["jobs", "big"]);
    let last = js.as_array().unwrap().last().unwrap();
    if last["status"] == "ok" {
        missed("every_command_is_a_job (killed job)", "the backup finished before it could be killed");
    } else {
        assert_eq!(last["status"], "died", "{last}");
    }
}

#[test]
fn run_due_and_daemon() {
    let env = Env::new();
    let mut rng = rng("run_due");
    let a = env.path("a.img");
    random_file(&a, MIB, &mut rng);
    let t0 = "2026-05-01T00:00:00Z";
    at_ok(&env, t0, &["policy", "set", "h", "--schedule", "every 6h", "--keep-last", "2"]);
    at_ok(&env, t0, &["vault", "set", "gc-schedule", "manual"]);
    at_ok(&env, t0, &["protect", "good", "--disk", &format!("os={}", a.display()), "--policy", "h"]);
    at_ok(&env, t0, &["protect", "bad", "--disk", &format!("os={}", a.display()), "--policy", "h", "--pre-script", "exit 2"]);
    let r = at_json(&env, "2026-05-01T05:59:59Z", &["run-due"]);
    assert!(r["ran"].as_array().unwrap().is_empty(), "{r}");

    // One item failing does not stop the others; the exit code says so.
    let o = at(&env, "2026-05-01T06:00:00Z", &["--json", "run-due"]);
    assert!(!o.status.success());
    let r: Value = serde_json::from_str(&text(&o.stdout)).unwrap();
    let ran: Vec<(String, String, String)> = r["ran"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["kind"].as_str().unwrap().into(), j["item"].as_str().unwrap().into(), j["status"].as_str().unwrap().into()))
        .collect();
    let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(ran, vec![s("backup", "bad", "failed"), s("backup", "good", "ok"), s("prune", "good", "ok")]);
    assert!(text(&o.stderr).contains("failed"), "{}", text(&o.stderr));
    assert_eq!(env.json(&["jobs", "bad", "--failed"]).as_array().unwrap().len(), 1);

    // The failed backup is retried at the next slot, not at once.
    let r = at_json(&env, "2026-05-01T06:30:00Z", &["run-due"]);
    assert!(r["ran"].as_array().unwrap().is_empty(), "{r}");
    at_ok(&env, t0, &["unprotect", "bad"]);

    // The daemon does the same in a loop and stops cleanly on SIGINT.
    let mut child = env.cmd().env("KLUIS_NOW", "2026-05-01T12:00:00Z").args(["daemon", "--max-sleep", "1"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let t = std::time::Instant::now();
    while env.points(Some("good")).len() < 2 {
        assert!(t.elapsed().as_secs() < 30, "the daemon took no backup");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert!(status.success(), "daemon exit: {status}");
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(out.contains("backup good ok"), "{out}");
    // Only once for the slot, however often it looped.
    assert_eq!(env.points(Some("good")).len(), 2);
}
