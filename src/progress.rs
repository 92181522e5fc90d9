//! Progress reporting as a trait: the library reports, the CLI draws (bars on
//! a TTY, nothing when piped).

pub trait Progress: Sync {
    /// A new phase of `total` units (bytes) named `label`.
    fn start(&self, label: &str, total: u64);
    fn advance(&self, n: u64);
    fn finish(&self);
}

pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}
