//! The `kluis` binary: parse arguments, set up logging, run, map the outcome
//! to an exit code (0 ok, 1 error, 2 usage, 3 verify found damage).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let level = match (args.quiet, args.verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        _ => "debug",
    };
    // fuser logs unimplemented requests and benign unmount races at warn;
    // fatfs warns about harmless BPB oddities of guest volumes.
    let filter = format!("{level},fuser=error,fatfs=error");
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter))
        .format_timestamp(None)
        .format_target(false)
        .init();
    cli::install_signal_handlers();
    raise_fd_limit();
    if matches!(args.command, cli::Command::Backup { .. } | cli::Command::Protected(_)) {
        fix_mmap_threshold();
    }
    match cli::run(args) {
        Ok(cli::Outcome::Ok) => ExitCode::SUCCESS,
        Ok(cli::Outcome::Damaged) => ExitCode::from(3),
        Err(kluis::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            if e.is_no_space() {
                eprintln!("kluis: error: {e} (the vault's filesystem is full; earlier recovery points are intact; `kluis gc` reclaims what the failed run left)");
            } else {
                eprintln!("kluis: error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard one: a mount and a
/// restore keep every pack a disk needs open (twice where the packs are
/// also read with O_DIRECT), and a disk of a terabyte lives in thousands of
/// 128 MiB packs, past the usual soft limit of 1024.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// For commands that back up: buffers of 4 MiB and more (the 5 MiB runs and
/// frames) get their own mappings, returned to the system when freed.
/// glibc's default moves that threshold up to the largest block freed so
/// far, after which such buffers come from the per-thread heaps and stay
/// resident there: a full backup of the benchmark's images peaked at 60–62
/// MiB that way, 53–55 MiB with the threshold fixed, for the same CPU time
/// (with 8 MiB runs: 84 and 75 MiB); the backup reuses its big buffers, so
/// it makes few mappings. Not for a mount, which decodes frames into new
/// buffers all the time: glibc's reuse of freed heap saves it a page fault
/// per 4 KiB (a `dd` of a mounted 3 GiB disk in 8 MiB frames: 616,000 faults
/// with the threshold fixed, 124,000 without).
fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}
