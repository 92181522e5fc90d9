//! Helpers shared by the integration tests: running kluis, making disk
//! images, comparing files, looking inside a vault directory.

#![allow(dead_code)] // not every test module uses every helper

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const KLUIS: &str = env!("CARGO_BIN_EXE_kluis");
pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;
/// The default block size of `kluis init`.
pub const BLOCK: u64 = 64 * KIB;
/// Blocks in a full frame: a backup compresses the new blocks of each 3 MiB
/// run together.
pub const FRAME_BLOCKS: u64 = 3 * MIB / BLOCK;

/// A seeded generator; the seed is printed so a failure can be replayed with
/// `KLUIS_TEST_SEED`.
pub fn rng(test: &str) -> fastrand::Rng {
    let seed = std::env::var("KLUIS_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    eprintln!("{test}: seed {seed} (replay with KLUIS_TEST_SEED={seed})");
    fastrand::Rng::with_seed(seed)
}

/// Strict mode (`KLUIS_TEST_STRICT=1`, set by .ci/run): a missing facility
/// fails the test instead of skipping it, so CI cannot go green without
/// the coverage it is meant to give.
pub fn strict() -> bool {
    std::env::var("KLUIS_TEST_STRICT").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A test cannot run here (no /dev/fuse, not root, a tool missing): it
/// passes with a `SKIPPED` line, or fails in strict mode.
pub fn skip(test: &str, reason: &str) {
    if strict() {
        panic!("{test} cannot run: {reason} (KLUIS_TEST_STRICT is set, so a skip is a failure)");
    }
    eprintln!("SKIPPED {test}: {reason}");
}

/// A timing-dependent part of a test did not happen this run (the process
/// finished before it could be interrupted): not a missing facility, so
/// not a failure even in strict mode; the rest of the test still ran.
pub fn missed(test: &str, reason: &str) {
    eprintln!("MISSED {test}: {reason}");
}

/// A temporary directory holding one vault (`DIR/vault`) and the test's images.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub vault: PathBuf,
    envs: Vec<(String, String)>,
    /// A program that runs kluis (see [`Env::run_through`]).
    through: Vec<String>,
}

impl Env {
    /// A fresh directory with an initialized vault (default block size).
    pub fn new() -> Env {
        let e = Env::empty();
        e.ok(&["init"]);
        e
    }

    /// A fresh directory; the vault path is set but not initialized.
    pub fn empty() -> Env {
        let tmp = tempfile::Builder::new().prefix("kluis-it-").tempdir().expect("create tempdir");
        let vault = tmp.path().join("vault");
        Env { tmp, vault, envs: Vec::new(), through: Vec::new() }
    }

    /// The same test directory, but with the vault somewhere else (a tmpfs).
    pub fn with_vault(mut self, vault: PathBuf) -> Env {
        self.vault = vault;
        self
    }

    /// An environment variable for every kluis started from now on.
    pub fn set_env(&mut self, k: &str, v: &str) {
        self.envs.push((k.into(), v.into()));
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Every kluis started from now on runs as `PROGRAM ARGS... kluis ...`
    /// (e.g. setpriv, to run as another user).
    pub fn run_through(&mut self, program_and_args: &[&str]) {
        self.through = program_and_args.iter().map(|s| s.to_string()).collect();
    }

    /// `kluis --vault VAULT --no-progress`, run inside the test directory
    /// with a clean environment (no inherited KLUIS_* settings).
    pub fn cmd(&self) -> Command {
        let mut c = match self.through.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(KLUIS);
                c
            }
            None => Command::new(KLUIS),
        };
        c.arg("--vault").arg(&self.vault).arg("--no-progress");
        c.current_dir(self.tmp.path());
        for (k, _) in std::env::vars() {
            if k.starts_with("KLUIS_") || k == "RUST_LOG" {
                c.env_remove(&k);
            }
        }
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        c.stdin(Stdio::null());
        c
    }

    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.cmd().args(args).output().expect("run kluis")
    }

    /// Spawns kluis with piped output (for kill tests and concurrency).
    pub fn spawn<S: AsRef<OsStr>>(&self, args: &[S]) -> Child {
        self.cmd().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn kluis")
    }

    /// Runs kluis, asserts exit 0, returns stdout.
    pub fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        if !out.status.success() {
            panic!("kluis {} failed ({}):\nstdout: {}\nstderr: {}", show(args), out.status, text(&out.stdout), text(&out.stderr));
        }
        text(&out.stdout)
    }

    /// Runs kluis with `--json`, asserts exit 0, parses stdout.
    pub fn json<S: AsRef<OsStr>>(&self, args: &[S]) -> Value {
        let mut a: Vec<&OsStr> = vec![OsStr::new("--json")];
        a.extend(args.iter().map(|s| s.as_ref()));
        let s = self.ok(&a);
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("kluis {} --json: bad JSON ({e}): {s}", show(args)))
    }

    /// Runs kluis, asserts a non-zero exit, returns what it said.
    pub fn fail<S: AsRef<OsStr>>(&self, args: &[S]) -> Failure {
        let out = self.run(args);
        let f = Failure { code: out.status.code(), stdout: text(&out.stdout), stderr: text(&out.stderr), args: show(args) };
        if out.status.success() {
            panic!("kluis {} succeeded but should have failed:\nstdout: {}\nstderr: {}", f.args, f.stdout, f.stderr);
        }
        f
    }

    /// All points (oldest first per item), as `points --json` lists them.
    pub fn points(&self, item: Option<&str>) -> Vec<Point> {
        let v = match item {
            Some(i) => self.json(&["points", i]),
            None => self.json(&["points"]),
        };
        v.as_array().expect("points --json gives an array").iter().map(Point::from_json).collect()
    }

    /// Takes a backup and returns the new point as `points --json` shows it.
    pub fn backup(&self, item: &str, disks: &[(&str, &Path)], configs: &[&Path]) -> Point {
        let mut args: Vec<String> = vec!["backup".into(), item.into()];
        for (n, p) in disks {
            args.push("--disk".into());
            args.push(format!("{n}={}", p.display()));
        }
        for c in configs {
            args.push("--config".into());
            args.push(c.display().to_string());
        }
        let rep = self.json(&args);
        let id = rep["id"].as_str().expect("backup --json has an id").to_owned();
        self.points(Some(item)).into_iter().find(|p| p.id == id).unwrap_or_else(|| panic!("new point {id} not in points --json"))
    }

    /// Restores `selector`'s disk to a fresh file in the test directory and
    /// returns its path.
    pub fn restore(&self, selector: &str, disk: &str, format: &str) -> PathBuf {
        let to = self.path(&format!("restore-{}.{format}", fastrand::u64(..)));
        self.ok(&["restore", selector, "--disk", disk, "--to", to.to_str().unwrap(), "--format", format]);
        to
    }

    /// Restores raw, returns the blake3 of the result and removes the file.
    pub fn restore_hash(&self, selector: &str, disk: &str) -> String {
        let p = self.restore(selector, disk, "raw");
        let h = hash_file(&p);
        fs::remove_file(&p).unwrap();
        h
    }

    /// `verify [--read-data] --json`; returns (exit code, report).
    pub fn verify(&self, read_data: bool) -> (i32, Value) {
        let mut args = vec!["--json", "verify"];
        if read_data {
            args.push("--read-data");
        }
        let out = self.run(&args);
        let code = out.status.code().unwrap_or(-1);
        let v = serde_json::from_str(&text(&out.stdout))
            .unwrap_or_else(|e| panic!("verify --json: bad JSON ({e}), exit {code}\nstdout: {}\nstderr: {}", text(&out.stdout), text(&out.stderr)));
        (code, v)
    }

    /// Asserts verify exits 0 and reports no damage; returns the report.
    pub fn verify_clean(&self, read_data: bool) -> Value {
        let (code, v) = self.verify(read_data);
        assert_eq!(code, 0, "verify (read_data={read_data}) found damage: {v:#}");
        assert_eq!(v["damaged"].as_array().map(|a| a.len()), Some(0), "verify: {v:#}");
        v
    }

    /// Makes `delete` take effect at the next gc (the default soft-delete
    /// window keeps deleted points restorable for days).
    pub fn purge_deleted_at_gc(&self) {
        self.ok(&["vault", "set", "soft-delete-days", "0"]);
    }

    /// What must not change when a command fails: the points (deleted ones
    /// too) and the finished pack files with their sizes.
    pub fn snapshot(&self) -> (String, Vec<(String, u64)>) {
        let points = self.ok(&["--json", "points", "--deleted"]);
        let packs = pack_files(&self.vault).into_iter().map(|p| (p.display().to_string(), fs::metadata(&p).unwrap().len())).collect();
        (points, packs)
    }
}

fn show<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A failed run of kluis.
#[derive(Debug)]
pub struct Failure {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub args: String,
}

impl Failure {
    /// The contract for errors: exactly one line on stderr, starting with
    /// `kluis: error:`; returns that line.
    pub fn one_error_line(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("kluis: error: "),
            "kluis {}: expected one line `kluis: error: ...` on stderr, got (exit {:?}):\n{}",
            self.args,
            self.code,
            self.stderr
        );
        lines[0]
    }
}

/// One entry of `points --json`.
#[derive(Clone, Debug)]
pub struct Point {
    pub item: String,
    pub name: String,
    pub id: String,
    pub new_bytes: u64,
    pub stored_bytes: u64,
    pub disks: Vec<(String, u64)>,
    pub configs: Vec<String>,
    pub json: Value,
}

impl Point {
    fn from_json(v: &Value) -> Point {
        let s = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("point without {k}: {v}")).to_owned();
        let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("point without {k}: {v}"));
        Point {
            item: s("item"),
            name: s("name"),
            id: s("id"),
            new_bytes: n("new_bytes"),
            stored_bytes: n("stored_bytes"),
            disks: v["disks"]
                .as_array()
                .expect("disks")
                .iter()
                .map(|d| (d["name"].as_str().unwrap().to_owned(), d["size"].as_u64().unwrap()))
                .collect(),
            configs: v["configs"].as_array().expect("configs").iter().map(|c| c.as_str().unwrap().to_owned()).collect(),
            json: v.clone(),
        }
    }

    /// `ITEM@<id prefix>`: selects exactly this point.
    pub fn sel(&self) -> String {
        format!("{}@{}", self.item, &self.id[..12])
    }
}

// ---------------------------------------------------------------- images

pub fn random_bytes(rng: &mut fastrand::Rng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill(&mut v);
    v
}

/// A file of `size` random bytes.
pub fn random_file(path: &Path, size: u64, rng: &mut fastrand::Rng) {
    let mut f = File::create(path).unwrap();
    let mut left = size;
    let mut buf = vec![0u8; MIB as usize];
    while left > 0 {
        let n = left.min(MIB) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.sync_all().unwrap();
}

/// A sparse file of `size` bytes with random data only in `extents` (offset, len).
pub fn sparse_file(path: &Path, size: u64, extents: &[(u64, u64)], rng: &mut fastrand::Rng) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for &(off, len) in extents {
        assert!(off + len <= size, "extent {off}+{len} past {size}");
        f.write_all_at(&random_bytes(rng, len as usize), off).unwrap();
    }
    f.sync_all().unwrap();
}

/// Writes random bytes at (offset, len) into an existing file.
pub fn write_at(path: &Path, off: u64, data: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, off).unwrap();
    f.sync_all().unwrap();
}

/// Two points of item web01 over a random disk `os.raw` of `size`, the
/// second changing 100 bytes of block 0 only (the rest is shared with the
/// first): the disk (as point 2 has it), its copy `os.1` as point 1 has it,
/// and the two points.
pub fn two_points_sharing_all_but_block_0(env: &Env, size: u64, rng: &mut fastrand::Rng) -> (PathBuf, PathBuf, Point, Point) {
    let disk = env.path("os.raw");
    random_file(&disk, size, rng);
    let v1 = env.path("os.1");
    fs::copy(&disk, &v1).unwrap();
    let p1 = env.backup("web01", &[("os", disk.as_path())], &[]);
    write_at(&disk, 10, &random_bytes(rng, 100));
    let p2 = env.backup("web01", &[("os", disk.as_path())], &[]);
    (disk, v1, p1, p2)
}

/// `count` random writes of 1..=max_len bytes at random places of the file
/// (which keeps its size).
pub fn random_writes(path: &Path, rng: &mut fastrand::Rng, count: usize, max_len: u64) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    let size = f.metadata().unwrap().len();
    for _ in 0..count {
        let len = rng.u64(1..=max_len.min(size));
        let off = rng.u64(0..=size - len);
        f.write_all_at(&random_bytes(rng, len as usize), off).unwrap();
    }
    f.sync_all().unwrap();
}

/// Bytes the file really occupies on disk.
pub fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

// ---------------------------------------------------------------- comparing

pub fn hash_file(path: &Path) -> String {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().to_hex().to_string()
}

/// Asserts two files hold the same bytes; names the first difference.
pub fn assert_same_file(got: &Path, want: &Path) {
    let (a, b) = (fs::metadata(got).unwrap().len(), fs::metadata(want).unwrap().len());
    assert_eq!(a, b, "{} is {a} bytes, {} is {b}", got.display(), want.display());
    if hash_file(got) == hash_file(want) {
        return;
    }
    let (fa, fb) = (File::open(got).unwrap(), File::open(want).unwrap());
    let mut off = 0u64;
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    while off < a {
        let n = (a - off).min(MIB) as usize;
        fa.read_exact_at(&mut ba[..n], off).unwrap();
        fb.read_exact_at(&mut bb[..n], off).unwrap();
        if let Some(i) = (0..n).find(|&i| ba[i] != bb[i]) {
            panic!("{} differs from {} first at byte {}", got.display(), want.display(), off + i as u64);
        }
        off += n as u64;
    }
    unreachable!("hashes differ but bytes are equal");
}

// ---------------------------------------------------------------- vault internals

/// Finished packs: VAULT/packs/??/*.pack, sorted.
pub fn pack_files(vault: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(dirs) = fs::read_dir(vault.join("packs")) else { return out };
    for d in dirs.flatten() {
        let name = d.file_name();
        if name.len() != 2 || !d.path().is_dir() {
            continue;
        }
        for f in fs::read_dir(d.path()).unwrap().flatten() {
            if f.path().extension() == Some(OsStr::new("pack")) {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out
}

pub fn packs_size(vault: &Path) -> u64 {
    pack_files(vault).iter().map(|p| fs::metadata(p).unwrap().len()).sum()
}

/// Files left in VAULT/packs/tmp.
pub fn temp_packs(vault: &Path) -> Vec<PathBuf> {
    fs::read_dir(vault.join("packs/tmp")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

/// One frame of a pack, parsed from its bytes (layout in src/store/frame.rs:
/// 16-byte pack header, then frames of a 24-byte fixed header, a 36-byte
/// table entry (id, raw length) per chunk, and the payload).
#[derive(Clone, Debug)]
pub struct Frame {
    pub offset: u64,
    pub kind: u8,
    /// 0 stored (the payload is the chunks' bytes), 1 zstd.
    pub codec: u8,
    pub raw_len: u32,
    pub stored_len: u32,
    /// (chunk id in hex, raw length), in payload order.
    pub chunks: Vec<(String, u32)>,
}

impl Frame {
    /// Offset in the pack of the first payload byte.
    pub fn payload(&self) -> u64 {
        self.offset + 24 + 36 * self.chunks.len() as u64
    }

    pub fn holds(&self, id: &str) -> bool {
        self.chunks.iter().any(|(c, _)| c == id)
    }

    /// Where chunk `id`'s bytes start in the pack; only a stored frame keeps
    /// them as they are.
    pub fn chunk_offset(&self, id: &str) -> u64 {
        assert_eq!(self.codec, 0, "chunk bytes are only addressable in a stored frame");
        let i = self.chunks.iter().position(|(c, _)| c == id).expect("chunk in frame");
        self.payload() + self.chunks[..i].iter().map(|(_, l)| *l as u64).sum::<u64>()
    }

    /// The chunk whose bytes lie at pack offset `at` of a stored frame.
    pub fn chunk_at(&self, at: u64) -> &str {
        assert_eq!(self.codec, 0, "chunk bytes are only addressable in a stored frame");
        let mut start = self.payload();
        for (id, len) in &self.chunks {
            if at < start + *len as u64 {
                return id;
            }
            start += *len as u64;
        }
        panic!("offset {at} is past frame at {}", self.offset)
    }
}

pub const PACK_HEADER: u64 = 16;

pub fn frames(pack: &Path) -> Vec<Frame> {
    let b = fs::read(pack).unwrap();
    assert_eq!(&b[..8], b"KLUISPAK", "{} is not a pack", pack.display());
    let u32le = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let mut out = Vec::new();
    let mut off = PACK_HEADER as usize;
    while off + 24 <= b.len() {
        assert_eq!(&b[off..off + 4], b"KFRM", "bad frame magic at {off} in {}", pack.display());
        let n = u16::from_le_bytes([b[off + 16], b[off + 17]]) as usize;
        let chunks = (0..n)
            .map(|i| {
                let e = off + 24 + 36 * i;
                (b[e..e + 32].iter().map(|x| format!("{x:02x}")).collect(), u32le(e + 32))
            })
            .collect();
        let f = Frame { offset: off as u64, kind: b[off + 6], codec: b[off + 4], raw_len: u32le(off + 8), stored_len: u32le(off + 12), chunks };
        off = (f.payload() + f.stored_len as u64) as usize;
        out.push(f);
    }
    out
}

/// Compressible text, different for every `seed`: lines with counters.
pub fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("{seed:08} row {i:010} status=ok size={} path=/var/lib/{}\n", i * 7 % 1000, i % 97).as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// blake3 of each `block`-sized block of a file (the chunk ids kluis gives them).
pub fn block_ids(path: &Path, block: u64) -> Vec<String> {
    let b = fs::read(path).unwrap();
    b.chunks(block as usize).map(|c| blake3::hash(c).to_hex().to_string()).collect()
}

// ---------------------------------------------------------------- external tools

/// Runs a helper tool; None if it cannot be started (not installed).
pub fn tool(prog: &str, args: &[&str]) -> Option<Output> {
    Command::new(prog).args(args).stdin(Stdio::null()).output().ok()
}

pub fn have(prog: &str) -> bool {
    tool(prog, &["--version"]).is_some()
}

/// Runs a helper tool and asserts success.
pub fn tool_ok(prog: &str, args: &[&str]) -> String {
    let out = tool(prog, args).unwrap_or_else(|| panic!("{prog} not found"));
    assert!(out.status.success(), "{prog} {} failed: {}\n{}", args.join(" "), text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

/// A tmpfs mounted on a fresh directory; unmounted on drop.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Err(reason) when mounting is not possible here (not root, no tmpfs).
    pub fn mount(dir: PathBuf, size: &str) -> Result<Tmpfs, String> {
        fs::create_dir_all(&dir).unwrap();
        let opt = format!("size={size}");
        let out = tool("mount", &["-t", "tmpfs", "-o", &opt, "tmpfs", dir.to_str().unwrap()]).ok_or("mount(8) not found")?;
        if !out.status.success() {
            return Err(format!("mount -t tmpfs failed: {}", text(&out.stderr).trim()));
        }
        Ok(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let d = self.dir.to_str().unwrap();
        if !tool("umount", &[d]).is_some_and(|o| o.status.success()) {
            // Something still holds it (a killed child?): detach lazily.
            let _ = tool("umount", &["-l", d]);
        }
    }
}

/// A loop device attached to an image file; detached on drop.
pub struct LoopDev {
    pub dev: PathBuf,
}

impl LoopDev {
    pub fn attach(image: &Path) -> Result<LoopDev, String> {
        let out = tool("losetup", &["-f", "--show", image.to_str().unwrap()]).ok_or("losetup not found")?;
        if !out.status.success() {
            return Err(format!("losetup -f --show failed: {}", text(&out.stderr).trim()));
        }
        let dev = text(&out.stdout).trim().to_owned();
        if dev.is_empty() {
            return Err("losetup printed no device".into());
        }
        Ok(LoopDev { dev: PathBuf::from(dev) })
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = tool("losetup", &["-d", self.dev.to_str().unwrap()]);
    }
}

pub fn lseek(f: &File, off: i64, whence: libc::c_int) -> io::Result<u64> {
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as u64) }
}

/// The data runs `[start, end)` of an open file as SEEK_DATA / SEEK_HOLE
/// walk them, checked for consistency: probed at every run boundary (±1) and
/// at random offsets, SEEK_DATA must give the offset itself inside a run and
/// the next run's start otherwise (ENXIO past the last), SEEK_HOLE the run's
/// end inside a run and the offset itself otherwise.
pub fn seek_runs(f: &File, size: u64, extra: &[u64], rng: &mut fastrand::Rng) -> Vec<(u64, u64)> {
    let data = |x: u64| match lseek(f, x as i64, libc::SEEK_DATA) {
        Ok(o) => Some(o),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => None,
        Err(e) => panic!("SEEK_DATA from {x}: {e}"),
    };
    let hole = |x: u64| lseek(f, x as i64, libc::SEEK_HOLE).unwrap_or_else(|e| panic!("SEEK_HOLE from {x}: {e}"));
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0;
    while pos < size {
        let Some(s) = data(pos) else { break };
        let e = hole(s);
        assert!(s >= pos && e > s && e <= size, "SEEK_DATA from {pos} gave {s}, SEEK_HOLE from there {e} (size {size}; runs so far {runs:?})");
        runs.push((s, e));
        pos = e;
    }
    assert_eq!(data(size), None, "SEEK_DATA at the end of the file");
    let mut probes: Vec<u64> = (0..20).map(|_| rng.u64(0..size)).collect();
    probes.extend_from_slice(extra);
    probes.push(0);
    probes.push(size - 1);
    for &(s, e) in &runs {
        probes.extend([s.saturating_sub(1), s, s + 1, e - 1, e, e + 1]);
    }
    for x in probes.into_iter().filter(|&x| x < size) {
        let inside = runs.iter().find(|r| r.0 <= x && x < r.1);
        let want_data = inside.map(|_| x).or_else(|| runs.iter().find(|r| r.0 > x).map(|r| r.0));
        assert_eq!(data(x), want_data, "SEEK_DATA from {x} disagrees with the runs {runs:?}");
        assert_eq!(hole(x), inside.map(|r| r.1).unwrap_or(x), "SEEK_HOLE from {x} disagrees with the runs {runs:?}");
    }
    runs
}

/// How a run ended.
pub enum End {
    Killed,
    Exited(Duration),
}

/// Lets `child` run for `delay`, then SIGKILLs it (std's `Child::kill`).
/// Returns whether it was still running. A run that ends on its own must
/// have succeeded.
pub fn kill_after(mut child: Child, delay: Duration, what: &str) -> End {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let took = start.elapsed();
            let out = child.wait_with_output().unwrap();
            assert!(st.success(), "{what} failed on its own ({st}):\n{}{}", text(&out.stdout), text(&out.stderr));
            return End::Exited(took);
        }
        let el = start.elapsed();
        if el >= delay {
            break;
        }
        std::thread::sleep((delay - el).min(Duration::from_micros(500)));
    }
    let at = start.elapsed();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    match out.status.code() {
        None => End::Killed, // died of the signal
        Some(0) => End::Exited(at), // finished between the last poll and the kill
        Some(c) => panic!("{what} exited {c} just before the kill:\n{}{}", text(&out.stdout), text(&out.stderr)),
    }
}
