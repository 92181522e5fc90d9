//! Rough edges a new user meets (issue 18): disk formats kluis cannot read
//! yet, error messages that must point the right way, mount's non-empty
//! rule, quiet commands that must say something, usage errors, help layout
//! and progress bars that fit the terminal.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::io::FromRawFd;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::common::*;

#[test]
fn foreign_image_formats_are_refused_by_name() {
    let t = "foreign_image_formats_are_refused_by_name";
    if !have("qemu-img") {
        return skip(t, "qemu-img is missing");
    }
    let env = Env::new();
    // (qcow2 has a reader now: tests/integration/qcow2.rs.)
    let cases = [
        ("vmdk", &["-f", "vmdk"][..], "os.vmdk", "VMDK image"),
        // A flat VMDK is a text descriptor naming a raw extent (os2-flat.vmdk).
        ("vmdk", &["-f", "vmdk", "-o", "subformat=monolithicFlat"], "os2.vmdk", "VMDK descriptor"),
        ("vhdx", &["-f", "vhdx"], "os.vhdx", "VHDX image"),
    ];
    for (fmt, opts, file, needle) in cases {
        let path = env.path(file);
        let mut args = vec!["create", "-q"];
        args.extend(opts);
        args.extend([path.to_str().unwrap(), "16M"]);
        tool_ok("qemu-img", &args);
        let before = env.snapshot();
        let f = env.fail(&["backup", "web01", "--disk", &format!("os={}", path.display())]);
        let line = f.one_error_line();
        assert_eq!(f.code, Some(1), "{fmt}: {line}");
        assert!(line.contains(needle) && line.contains(file) && line.contains("disk os"), "{fmt}: {line}");
        assert_eq!(env.snapshot(), before, "{fmt}: the vault changed");
        eprintln!("ok  {fmt}: {line}");
    }
    assert!(env.points(None).is_empty());
    // The raw extent of the flat VMDK is a plain raw disk, and backs up as one.
    env.backup("web01", &[("os", &env.path("os2-flat.vmdk"))], &[]);
}

#[test]
fn error_messages_point_the_right_way() {
    let mut rng = rng("error_messages_point_the_right_way");
    let env = Env::new();
    let disk = env.path("os.raw");
    sparse_file(&disk, 4 * MIB, &[(0, MIB)], &mut rng);
    env.backup("web01", &[("os", disk.as_path())], &[]);

    // files ls with a name that is not a disk: say what is wrong, and the form.
    let line = env.fail(&["files", "ls", "web01@latest", "foo"]).one_error_line().to_owned();
    assert!(line.contains("no disk \"foo\"") && line.contains("os") && line.contains("NAME:pN/path"), "{line}");

    // restore --to a directory: refused at once, with or without --force,
    // pointing to --to-dir; nothing is written into the directory.
    let dir = env.path("restore-here");
    fs::create_dir(&dir).unwrap();
    for force in [false, true] {
        let mut args = vec!["restore", "web01@latest", "--disk", "os", "--to", dir.to_str().unwrap()];
        if force {
            args.push("--force");
        }
        let line = env.fail(&args).one_error_line().to_owned();
        assert!(line.contains("is a directory") && line.contains("--to-dir"), "force {force}: {line}");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "force {force}: wrote into the directory");
        assert!(fs::read_dir(env.tmp.path()).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().contains("kluis-tmp")));
    }

    // A missing parent directory is named, not a temporary file in it.
    let target = env.path("no/such/dir/os.raw");
    let line = env.fail(&["restore", "web01@latest", "--disk", "os", "--to", target.to_str().unwrap()]).one_error_line().to_owned();
    assert!(line.contains("no/such/dir does not exist") && !line.contains("kluis-tmp"), "{line}");
    let file = env.path("a-file");
    fs::write(&file, "").unwrap();
    let line = env.fail(&["restore", "web01@latest", "--disk", "os", "--to", file.join("os.raw").to_str().unwrap()]).one_error_line().to_owned();
    assert!(line.contains("a-file is not a directory") && !line.contains("kluis-tmp"), "{line}");

    // mount: a missing mountpoint is missing, not "not a directory"; a
    // non-empty one is refused unless --nonempty (no FUSE needed to refuse).
    let line = env.fail(&["mount", env.path("nosuch").to_str().unwrap()]).one_error_line().to_owned();
    assert!(line.contains("does not exist"), "{line}");
    let full = env.path("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("precious"), "keep me").unwrap();
    let line = env.fail(&["mount", full.to_str().unwrap()]).one_error_line().to_owned();
    assert!(line.contains("not empty") && line.contains("--nonempty"), "{line}");
    assert_eq!(fs::read_to_string(full.join("precious")).unwrap(), "keep me");
}

/// `mount --nonempty` mounts over a non-empty directory, whose contents
/// are back after unmounting.
#[test]
fn mount_nonempty_when_asked() {
    let t = "mount_nonempty_when_asked";
    if !super::mount::fuse_ok(t) {
        return;
    }
    let mut rng = rng(t);
    let env = Env::new();
    let disk = env.path("os.raw");
    random_file(&disk, MIB, &mut rng);
    env.backup("web01", &[("os", disk.as_path())], &[]);
    let mp = env.path("mnt");
    fs::create_dir(&mp).unwrap();
    fs::write(mp.join("precious"), "keep me").unwrap();
    let mp = fs::canonicalize(&mp).unwrap();
    let child = env.cmd().args(["mount", "--nonempty"]).arg(&mp).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    struct Unmount<'a>(std::process::Child, &'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("fusermount3").arg("-u").arg(self.1).stderr(Stdio::null()).status();
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut guard = Unmount(child, &mp);
    let t0 = Instant::now();
    while !mp.join("web01").exists() {
        assert!(guard.0.try_wait().unwrap().is_none(), "kluis mount --nonempty exited early");
        assert!(t0.elapsed() < Duration::from_secs(20), "mount not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!mp.join("precious").exists(), "the mount should cover the directory");
    env.ok(&["umount", mp.to_str().unwrap()]);
    assert!(guard.0.wait().unwrap().success());
    assert_eq!(fs::read_to_string(mp.join("precious")).unwrap(), "keep me");
}

#[test]
fn prune_with_nothing_to_do_says_so() {
    let env = Env::new();
    let out = env.ok(&["prune"]);
    assert!(out.contains("nothing to do"), "prune printed {out:?}");
    assert_eq!(env.json(&["prune"]), serde_json::json!([]));
}

/// Usage errors are the argument parser's: exit 2 and the usage hint, as
/// docs/cli.md says.
#[test]
fn usage_errors_exit_2() {
    let env = Env::new();
    let cases: [(&[&str], &str); 6] = [
        (&["backup", "web01", "--disk", "os.raw"], "NAME=PATH"),
        (&["backup", "web01", "--disk", "=os.raw"], "NAME=PATH"),
        (&["backup", "web01", "--disk", "os="], "NAME=PATH"),
        (&["protect", "web01", "--disk", "os.raw", "--policy", "p"], "NAME=PATH"),
        (&["restore", "web01@latest", "--disk", "os", "--to", "x.raw", "--format", "vmdk"], "vmdk"),
        (&["restore", "web01@latest", "--nosuch"], "--nosuch"),
    ];
    for (args, needle) in cases {
        let before = env.snapshot();
        let f = env.fail(args);
        assert_eq!(f.code, Some(2), "{args:?}: {}", f.stderr);
        assert!(f.stderr.starts_with("error: ") && f.stderr.contains(needle), "{args:?}: {}", f.stderr);
        assert_eq!(env.snapshot(), before);
    }
}

/// `restore --help` lists its own options together, the global ones under
/// their own heading.
#[test]
fn help_lists_global_flags_apart() {
    let env = Env::empty();
    for cmd in ["restore", "backup", "mount"] {
        let help = env.ok(&[cmd, "--help"]);
        let (own, global) = help.split_once("\nGlobal options:\n").unwrap_or_else(|| panic!("{cmd} --help has no global heading:\n{help}"));
        for flag in ["--vault", "--json", "--quiet", "--no-progress", "--verbose"] {
            assert!(!own.contains(flag) && global.contains(flag), "{cmd} --help: {flag} is not under Global options:\n{help}");
        }
    }
    let help = env.ok(&["restore", "--help"]);
    assert!(help.find("--disk").unwrap() < help.find("--to ").unwrap() && help.find("--to ").unwrap() < help.find("--vault").unwrap());
}

/// A pseudo-terminal of `cols` columns; returns (master, slave).
fn pty(cols: u16) -> (File, File) {
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(m >= 0 && libc::grantpt(m) == 0 && libc::unlockpt(m) == 0, "no pty");
        let name = std::ffi::CStr::from_ptr(libc::ptsname(m)).to_owned();
        let s = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        assert!(s >= 0, "cannot open {name:?}");
        let ws = libc::winsize { ws_row: 24, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        assert_eq!(libc::ioctl(s, libc::TIOCSWINSZ, &ws), 0);
        (File::from_raw_fd(m), File::from_raw_fd(s))
    }
}

/// What a terminal shows, line by line: escape sequences dropped, `\r` and
/// `\n` both start a new line.
fn screen_lines(raw: &[u8]) -> Vec<String> {
    let s = String::from_utf8_lossy(raw);
    let mut lines = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' if chars.peek() == Some(&'[') => {
                chars.next();
                for x in chars.by_ref() {
                    if x.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            '\r' | '\n' => lines.push(String::new()),
            c if !c.is_control() => lines.last_mut().unwrap().push(c),
            _ => {}
        }
    }
    lines.retain(|l| !l.is_empty());
    lines
}

/// Progress bars fit the terminal: no line is wider than its columns (a
/// wider one wraps, and each redraw then scrolls instead of overwriting).
#[test]
fn progress_bar_fits_the_terminal() {
    let mut rng = rng("progress_bar_fits_the_terminal");
    let env = Env::new();
    let disk = env.path("os.raw");
    random_file(&disk, 96 * MIB, &mut rng);
    for cols in [40u16, 64, 80, 100, 160] {
        let (mut master, slave) = pty(cols);
        // Without --no-progress (Env::cmd adds it), stderr on the terminal.
        let mut c = std::process::Command::new(KLUIS);
        c.arg("--vault").arg(&env.vault).args(["backup", "web01", "--disk"]).arg(format!("os={}", disk.display()));
        c.current_dir(env.tmp.path()).env_remove("KLUIS_VAULT").stdin(Stdio::null()).stdout(Stdio::null()).stderr(slave);
        let mut child = c.spawn().unwrap();
        drop(c); // closes our copy of the slave, so reading ends when kluis exits
        let mut raw = Vec::new();
        let reader = std::thread::spawn(move || {
            let _ = master.read_to_end(&mut raw); // EIO once the last slave fd closes
            raw
        });
        assert!(child.wait().unwrap().success());
        let raw = reader.join().unwrap();
        let lines = screen_lines(&raw);
        assert!(lines.iter().any(|l| l.contains('%') || l.contains("eta")), "{cols} columns: no bar drawn: {lines:?}");
        let widest = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0);
        assert!(widest <= cols as usize, "{cols} columns: a line of {widest}: {:?}", lines.iter().find(|l| l.chars().count() == widest));
        eprintln!("ok  {cols} columns: {} lines drawn, widest {widest}", lines.len());
    }
}

/// Skips for a missing facility when `KLUIS_TEST_SKIP_PROBE` is set (only
/// `skip_fails_in_strict_mode` sets it); otherwise does nothing.
#[test]
fn skip_probe() {
    if std::env::var_os("KLUIS_TEST_SKIP_PROBE").is_some() {
        skip("skip_probe", "a facility this machine lacks");
    }
}

/// `KLUIS_TEST_STRICT=1` (set by .ci/run) turns a skip into a failure, so
/// CI cannot pass without the coverage it is there for.
#[test]
fn skip_fails_in_strict_mode() {
    let me = std::env::current_exe().unwrap();
    let run = |strict: Option<&str>| {
        let mut c = std::process::Command::new(&me);
        c.args(["--exact", "integration::edges::skip_probe", "--nocapture", "--test-threads=1"]).env("KLUIS_TEST_SKIP_PROBE", "1");
        c.env_remove("KLUIS_TEST_STRICT");
        if let Some(v) = strict {
            c.env("KLUIS_TEST_STRICT", v);
        }
        c.output().unwrap()
    };
    let lax = run(None);
    assert!(lax.status.success() && text(&lax.stderr).contains("SKIPPED skip_probe"), "{}", text(&lax.stderr));
    assert!(run(Some("0")).status.success(), "KLUIS_TEST_STRICT=0 is not strict");
    let strict = run(Some("1"));
    assert!(!strict.status.success(), "a skip passed in strict mode");
    assert!(text(&strict.stderr).contains("a facility this machine lacks"), "{}", text(&strict.stderr));
}
