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
    let full_disk = cli::no_space_hint(&args.command);
    match cli::run(args) {
        Ok(cli::Outcome::Ok) => ExitCode::SUCCESS,
        Ok(cli::Outcome::Damaged) => ExitCode::from(3),
        Err(kluis::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            if e.is_no_space() {
                eprintln!("kluis: error: {e} ({full_disk})");
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
