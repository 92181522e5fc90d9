//! docs/cli.md against the binary, so the two cannot drift apart:
//!
//! - every `--json` example marked `<!-- json: NAME -->` (or `NAME []`: the
//!   output is an array of such objects) has exactly the keys, nesting and
//!   value types of what the real command prints here, and every marked
//!   example is checked (a new one needs a run in this test);
//! - every option `kluis CMD --help` lists is in CMD's section, every option
//!   a usage or example line there uses exists, and the global options are
//!   in their table.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::common::*;

fn cli_md() -> String {
    fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md")).expect("docs/cli.md")
}

/// A marked example: the JSON docs/cli.md shows, and whether the output is
/// an array of such values.
struct Example {
    value: Value,
    array_of: bool,
}

/// The marked examples of docs/cli.md. A marker applies to the next fenced
/// ```json block or inline `{…}` / `[…]` code span after it.
fn examples(md: &str) -> BTreeMap<String, Example> {
    let mut out = BTreeMap::new();
    let mut pending: Vec<(String, bool)> = Vec::new();
    let mut lines = md.lines();
    while let Some(line) = lines.next() {
        if let Some(m) = line.trim().strip_prefix("<!-- json:").and_then(|r| r.strip_suffix("-->")) {
            let m = m.trim();
            let (name, array_of) = match m.strip_suffix("[]") {
                Some(n) => (n.trim(), true),
                None => (m, false),
            };
            pending.push((name.to_owned(), array_of));
            continue;
        }
        if pending.is_empty() {
            continue;
        }
        let text = if line.trim() == "```json" {
            lines.by_ref().take_while(|l| l.trim() != "```").collect::<Vec<_>>().join("\n")
        } else if let Some(at) = line.find("`{").or_else(|| line.find("`[")) {
            let rest = &line[at + 1..];
            rest[..rest.find('`').unwrap_or_else(|| panic!("docs/cli.md: unclosed code span: {line}"))].to_owned()
        } else {
            continue;
        };
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("docs/cli.md: the example for {pending:?} is not JSON ({e}): {text}"));
        for (name, array_of) in pending.drain(..) {
            assert!(out.insert(name.clone(), Example { value: value.clone(), array_of }).is_none(), "docs/cli.md: two examples named {name}");
        }
    }
    assert!(pending.is_empty(), "docs/cli.md: markers {pending:?} have no example after them");
    out
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Where `got` differs in shape from `doc`: keys of objects must be the
/// same, arrays' elements each match the example's first one, leaves have
/// the same type; `null` on either side stands for an optional value.
fn shape_diff(path: &str, doc: &Value, got: &Value, out: &mut Vec<String>) {
    match (doc, got) {
        (Value::Null, _) | (_, Value::Null) => {}
        (Value::Object(d), Value::Object(g)) => {
            let (dk, gk): (BTreeSet<&String>, BTreeSet<&String>) = (d.keys().collect(), g.keys().collect());
            for k in gk.difference(&dk) {
                out.push(format!("{path}.{k}: printed but not documented"));
            }
            for k in dk.difference(&gk) {
                out.push(format!("{path}.{k}: documented but not printed"));
            }
            for k in dk.intersection(&gk) {
                shape_diff(&format!("{path}.{k}"), &d[*k], &g[*k], out);
            }
        }
        (Value::Array(d), Value::Array(g)) => {
            if let Some(first) = d.first() {
                for (i, x) in d.iter().enumerate().skip(1) {
                    shape_diff(&format!("{path}[{i}] (in the docs)"), first, x, out);
                }
                for (i, x) in g.iter().enumerate() {
                    shape_diff(&format!("{path}[{i}]"), first, x, out);
                }
            }
        }
        (d, g) if kind(d) == kind(g) => {}
        (d, g) => out.push(format!("{path}: documented as {} ({d}), printed as {} ({g})", kind(d), kind(g))),
    }
}

/// The outputs of the documented commands, by example name.
struct Outputs(BTreeMap<String, Value>);

impl Outputs {
    fn add(&mut self, name: &str, v: Value) -> Value {
        assert!(self.0.insert(name.to_owned(), v.clone()).is_none(), "{name} twice");
        v
    }
}

/// `kluis --json ARGS` at the clock time `now`.
fn at<S: AsRef<OsStr>>(env: &Env, now: &str, args: &[S]) -> Value {
    let out = env.cmd().env("KLUIS_NOW", now).arg("--json").args(args).output().unwrap();
    assert!(out.status.success(), "kluis {:?}: {}", args.iter().map(|a| a.as_ref().to_owned()).collect::<Vec<_>>(), text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", text(&out.stdout)))
}

#[test]
fn docs_json_examples_match_the_binary() {
    let t = "docs_json_examples_match_the_binary";
    if !have("mkfs.ext4") {
        return skip(t, "mkfs.ext4 is missing (e2fsprogs)");
    }
    let mut rng = rng(t);
    let mut got = Outputs(BTreeMap::new());
    let env = Env::empty();
    got.add("init", env.json(&["init"]));

    // Disk os: an ext4 with a file; disk data: raw.
    let tree = env.path("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("hello.txt"), "hello\n").unwrap();
    let os = env.path("os.img");
    tool_ok("mkfs.ext4", &["-q", "-F", "-d", tree.to_str().unwrap(), os.to_str().unwrap(), "8M"]);
    let data = env.path("data.raw");
    random_file(&data, MIB, &mut rng);
    let cfg = env.path("web01.xml");
    fs::write(&cfg, "<domain/>").unwrap();

    let (t0, t1, t2) = ("2030-01-01T00:10:00Z", "2030-01-01T01:00:30Z", "2030-01-01T01:10:00Z");
    got.add("vault-show", at(&env, t0, &["vault", "show"]));
    got.add("vault-set", at(&env, t0, &["vault", "set", "soft-delete-days", "14"]));
    got.add("policy-set", at(&env, t0, &["policy", "set", "hourly", "--schedule", "hourly", "--keep-last", "1"]));
    let disk = |n: &str, p: &Path| format!("{n}={}", p.display());
    got.add("protect", at(&env, t0, &["protect", "web01", "--disk", &disk("os", &os), "--disk", &disk("data", &data), "--config", cfg.to_str().unwrap(), "--policy", "hourly"]));
    // Due: the hourly slot at 01:00 has passed since the item was protected.
    let run = got.add("run-due", at(&env, t1, &["run-due"]));
    assert!(!run["ran"].as_array().unwrap().is_empty(), "run-due ran nothing: {run}");
    fs::write(tree.join("hello.txt"), "hello again\n").unwrap();
    write_at(&data, 0, &random_bytes(&mut rng, 4096));
    got.add("backup", at(&env, t2, &["backup", "web01"]));
    let pruned = got.add("prune", at(&env, t2, &["prune"]));
    let old = pruned[0]["pruned"][0]["id"].as_str().unwrap_or_else(|| panic!("nothing pruned: {pruned}")).to_owned();
    got.add("undelete", at(&env, t2, &["undelete", &format!("web01@{old}")]));
    got.add("delete", at(&env, t2, &["delete", &format!("web01@{old}")]));
    got.add("points", at(&env, t2, &["points", "--deleted"]));
    got.add("items", at(&env, t2, &["items"]));
    got.add("policy-ls", at(&env, t2, &["policy", "ls"]));

    let r = got.add("restore", at(&env, t2, &["restore", "web01@latest", "--disk", "os", "--to", "os.vhd", "--format", "vhd-dynamic"]));
    assert_eq!(r["format"], "vhd-dynamic", "restore names the format as --format does");
    got.add("restore-several", at(&env, t2, &["restore", "web01@latest", "--to-dir", "all"]));

    got.add("files-ls-partitions", at(&env, t2, &["files", "ls", "web01@latest", "os"]));
    let dir = got.add("files-ls-dir", at(&env, t2, &["files", "ls", "web01@latest", "os:p0/"]));
    assert!(dir.as_array().unwrap().iter().any(|e| e["name"] == "hello.txt"), "{dir}");
    got.add("files-cp", at(&env, t2, &["files", "cp", "web01@latest", "os:p0/hello.txt", "hello.txt"]));
    got.add("files-versions", at(&env, t2, &["files", "versions", "web01", "os:p0/hello.txt"]));

    if super::mount::fuse_ok(t) {
        let mp = env.path("mnt");
        let mut m = super::mount::MountGuard::start_with(&env, &mp, &["--json"]);
        let mut mounted = Value::Null;
        let t = std::time::Instant::now();
        while mounted.is_null() {
            assert!(t.elapsed() < Duration::from_secs(5), "no JSON from mount --json: {}", m.stdout());
            mounted = serde_json::from_str(&m.stdout()).unwrap_or(Value::Null);
            std::thread::sleep(Duration::from_millis(20));
        }
        got.add("mount", mounted);
        let rp = fs::read(mp.join("web01/latest/recovery-point.json")).unwrap();
        got.add("recovery-point.json", serde_json::from_slice(&rp).unwrap());
        got.add("umount", env.json(&[OsStr::new("umount"), mp.as_os_str()]));
        assert!(m.wait_exit(Duration::from_secs(10)).success());
    }

    let replica = env.path("replica");
    got.add("replicate", at(&env, t2, &[OsStr::new("replicate"), OsStr::new("--to"), replica.as_os_str()]));
    got.add("vault-promote", Env::empty().with_vault(replica).json(&["vault", "promote"]));
    got.add("unprotect", at(&env, t2, &["unprotect", "web01"]));
    got.add("policy-rm", at(&env, t2, &["policy", "rm", "hourly"]));
    env.ok(&["vault", "set", "soft-delete-days", "0"]);
    got.add("gc", at(&env, t2, &["gc"]));
    got.add("jobs", at(&env, t2, &["jobs", "--last", "1"]));
    got.add("rebuild-index", at(&env, t2, &["rebuild-index"]));

    // verify with damage, so the example's `damaged` entries are checked too:
    // one byte of the first chunk frame's payload flipped.
    let (pack, f) = pack_files(&env.vault).iter().flat_map(|p| frames(p).into_iter().map(move |f| (p.clone(), f))).find(|(_, f)| f.stored_len > 16).expect("a frame");
    let at_byte = f.payload() + 8;
    let mut b = fs::read(&pack).unwrap();
    b[at_byte as usize] ^= 0xff;
    fs::write(&pack, b).unwrap();
    let out = env.cmd().args(["--json", "verify", "--read-data"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "verify of a damaged vault: {}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!v["damaged"].as_array().unwrap().is_empty(), "{v}");
    got.add("verify", v);

    let docs = examples(&cli_md());
    let mut problems = Vec::new();
    // Values too where the example shows the one this test asked for.
    if docs.get("restore").is_some_and(|ex| ex.value["format"] != got.0["restore"]["format"]) {
        problems.push(format!("restore.format: documented as {}, printed as {}", docs["restore"].value["format"], got.0["restore"]["format"]));
    }
    for (name, ex) in &docs {
        let Some(g) = got.0.get(name) else {
            // Without FUSE the mount's examples went unchecked (and fuse_ok said so).
            if !["mount", "recovery-point.json", "umount"].contains(&name.as_str()) || super::mount::fuse_ok(t) {
                problems.push(format!("{name}: documented, but this test does not run it"));
            }
            continue;
        };
        if ex.array_of {
            match g.as_array() {
                Some(list) if !list.is_empty() => {
                    for (i, x) in list.iter().enumerate() {
                        shape_diff(&format!("{name}[{i}]"), &ex.value, x, &mut problems);
                    }
                }
                _ => problems.push(format!("{name}: expected a non-empty array, got {g}")),
            }
        } else {
            shape_diff(name, &ex.value, g, &mut problems);
        }
    }
    for name in got.0.keys().filter(|n| !docs.contains_key(*n)) {
        problems.push(format!("{name}: run here, but docs/cli.md has no `<!-- json: {name} -->` example"));
    }
    assert!(problems.is_empty(), "docs/cli.md and the binary disagree:\n  {}", problems.join("\n  "));
}

/// The options `kluis ARGS --help` lists, short and long, by heading
/// ("Options", "Global options").
fn help_options(args: &[&str]) -> BTreeMap<String, Vec<(Option<String>, String)>> {
    let help = Env::empty().ok(&[args, &["--help"]].concat());
    let mut out: BTreeMap<String, Vec<_>> = BTreeMap::new();
    let mut heading = String::new();
    for line in help.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            heading = line.trim_end_matches(':').to_owned();
            continue;
        }
        let l = line.trim_start();
        if !l.starts_with('-') {
            continue;
        }
        let mut short = None;
        let mut long = None;
        for w in l.split([' ', ',']).take_while(|w| w.starts_with('-') || w.is_empty() || w.starts_with('<')) {
            if let Some(x) = w.strip_prefix("--") {
                long = Some(format!("--{}", x.trim_end_matches("...")));
            } else if w.len() == 2 && w.starts_with('-') {
                short = Some(w.to_owned());
            }
        }
        if let Some(long) = long.filter(|l| l != "--help" && l != "--version") {
            out.entry(heading.clone()).or_default().push((short, long));
        }
    }
    out
}

/// Subcommands `kluis ARGS --help` lists (without `help`).
fn subcommands(args: &[&str]) -> Vec<String> {
    let help = Env::empty().ok(&[args, &["--help"]].concat());
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect()
}

/// Whether `text` has `word` not as part of a longer option name.
fn has_option(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '-') && !after.is_some_and(|c| c.is_alphanumeric() || c == '-')
    })
}

#[test]
fn docs_list_every_option_of_every_command() {
    let md = cli_md();
    // "## restore" ... up to the next "## ": the section of `restore`.
    let section = |cmd: &str| -> String {
        let mut lines = md.lines().skip_while(|l| {
            !l.strip_prefix("## ").is_some_and(|h| h == cmd || h.starts_with(&format!("{cmd} ")) || h.starts_with(&format!("{cmd},")))
        });
        let head = lines.next().unwrap_or_else(|| panic!("docs/cli.md has no `## {cmd}` section"));
        std::iter::once(head).chain(lines.take_while(|l| !l.starts_with("## "))).collect::<Vec<_>>().join("\n")
    };
    let global: Vec<String> = help_options(&[])["Global options"].iter().map(|(_, l)| l.clone()).collect();
    let table = section("Global options");
    let mut problems = Vec::new();
    for g in &global {
        if !has_option(&table, g) {
            problems.push(format!("global option {g} is not in the Global options table"));
        }
    }
    let mut commands: Vec<Vec<String>> = Vec::new();
    for top in subcommands(&[]) {
        let subs = subcommands(&[top.as_str()]);
        if subs.is_empty() {
            commands.push(vec![top]);
        } else {
            commands.extend(subs.into_iter().map(|s| vec![top.clone(), s]));
        }
    }
    assert!(commands.len() > 20, "{commands:?}");
    let mut known: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for cmd in &commands {
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let sec = section(&cmd[0]);
        let opts = help_options(&args);
        for heading in opts.keys() {
            assert!(heading == "Options" || heading == "Global options", "kluis {} --help: options under {heading:?}", cmd.join(" "));
        }
        for (short, long) in opts.get("Options").into_iter().flatten() {
            if !has_option(&sec, long) && !short.as_ref().is_some_and(|s| has_option(&sec, s)) {
                problems.push(format!("kluis {} {long}: not in its section of docs/cli.md", cmd.join(" ")));
            }
            known.entry(cmd[0].clone()).or_default().insert(long.clone());
            known.entry(cmd[0].clone()).or_default().extend(short.clone());
        }
    }
    // The other way: usage and example lines use only options that exist.
    let tops: BTreeSet<&String> = commands.iter().map(|c| &c[0]).collect();
    for top in tops {
        let opts = known.get(top).cloned().unwrap_or_default();
        let sec = section(top);
        let mut in_text = false;
        for line in sec.lines() {
            if line.starts_with("```") {
                in_text = line == "```text";
                continue;
            }
            let l = line.trim_start().trim_start_matches("$ ");
            if !in_text || !l.starts_with("kluis ") {
                continue;
            }
            for w in l.split([' ', '[', ']', '|', '=']).filter(|w| w.starts_with('-') && w.len() > 1) {
                let w = w.trim_end_matches([',', '.', ')']);
                if !opts.contains(w) && !global.iter().any(|g| g == w) && !w.starts_with("-v") && w != "-q" {
                    problems.push(format!("docs/cli.md `## {top}`: `{l}` uses {w}, which kluis {top} does not have"));
                }
            }
        }
    }
    problems.sort();
    problems.dedup();
    assert!(problems.is_empty(), "docs/cli.md and `--help` disagree:\n  {}", problems.join("\n  "));
}
