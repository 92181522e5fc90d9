//! Progress bars on a terminal (stderr), nothing when piped.

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Bars {
    enabled: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    pub fn new(wanted: bool) -> Bars {
        Bars { enabled: wanted && std::io::stderr().is_terminal(), bar: Mutex::new(None) }
    }
}

impl kluis::progress::Progress for Bars {
    fn start(&self, label: &str, total: u64) {
        if !self.enabled {
            return;
        }
        let b = ProgressBar::new(total);
        b.set_style(ProgressStyle::with_template(template(stderr_width())).expect("valid template").progress_chars("=> "));
        b.set_message(label.to_owned());
        *self.bar.lock().unwrap() = Some(b);
    }
    fn advance(&self, n: u64) {
        if let Some(b) = &*self.bar.lock().unwrap() {
            b.inc(n);
        }
    }
    fn finish(&self) {
        if let Some(b) = self.bar.lock().unwrap().take() {
            b.finish_and_clear();
        }
    }
}

/// The widest line each template draws besides its `wide_` part (label 20,
/// sizes "1023.9 MiB/1023.9 MiB", rate, an eta like "59 minutes"), plus a
/// bar worth seeing. A line wider than the terminal wraps, and every redraw
/// then adds a line instead of replacing one.
const FULL_MIN: u16 = 96;
const SHORT_MIN: u16 = 50;

/// A template that fits `width` columns: `wide_bar` takes what is left.
fn template(width: u16) -> &'static str {
    if width >= FULL_MIN {
        "{msg:20!} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else if width >= SHORT_MIN {
        "{msg:14!} [{wide_bar}] {percent:>3}% eta {eta}"
    } else {
        "{wide_msg} {percent:>3}%"
    }
}

/// Columns of the terminal on stderr (80 if it will not say).
fn stderr_width() -> u16 {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 { ws.ws_col } else { 80 }
}
