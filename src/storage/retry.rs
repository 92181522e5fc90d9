//! Whole-operation retries over any backend: exponential backoff with
//! full jitter ("Exponential Backoff and Jitter", AWS architecture blog,
//! 2015) on transient errors only. Below it, object_store retries single
//! HTTP requests; this layer restarts what a request-level retry cannot
//! (a multipart upload whose part failed for good, a cut connection in the
//! middle of a streamed read) and makes a retried create idempotent.

use super::{Error, Key, ObjectMeta, Range, Result, Storage};
use std::path::Path;
use std::time::Duration;

/// How [`Retrying`] waits between attempts.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// Attempts in all, the first one included.
    pub attempts: u32,
    /// The first wait's upper bound; it doubles each attempt.
    pub base: Duration,
    /// No wait is longer.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { attempts: 6, base: Duration::from_millis(200), max: Duration::from_secs(10) }
    }
}

impl Backoff {
    /// Fast and many: for tests with injected faults.
    pub fn quick(attempts: u32) -> Backoff {
        Backoff { attempts, base: Duration::from_millis(1), max: Duration::from_millis(20) }
    }

    fn wait(&self, attempt: u32, seed: &mut u64) -> Duration {
        let cap = self.base.saturating_mul(1u32 << attempt.min(20)).min(self.max);
        // Full jitter: uniform in [0, cap], so clients that failed together
        // do not retry together.
        let r = super::faulty::splitmix(seed);
        Duration::from_nanos(((cap.as_nanos() * u128::from(r >> 11)) >> 53) as u64)
    }
}

/// A backend whose operations are retried on transient errors.
#[derive(Debug)]
pub struct Retrying<B> {
    inner: B,
    backoff: Backoff,
}

impl<B: Storage> Retrying<B> {
    pub fn new(inner: B, backoff: Backoff) -> Retrying<B> {
        Retrying { inner, backoff }
    }

    pub fn inner(&self) -> &B {
        &self.inner
    }

    fn run<T>(&self, mut op: impl FnMut(u32) -> Result<T>) -> Result<T> {
        let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
            ^ (std::process::id() as u64) << 32;
        let mut attempt = 0;
        loop {
            match op(attempt) {
                Err(e) if e.is_transient() => {
                    attempt += 1;
                    if attempt >= self.backoff.attempts {
                        return Err(e.with_note(&format!("gave up after {attempt} attempts")));
                    }
                    log::debug!("{e}; retrying (attempt {} of {})", attempt + 1, self.backoff.attempts);
                    std::thread::sleep(self.backoff.wait(attempt - 1, &mut seed));
                }
                r => return r,
            }
        }
    }
}

impl<B: Storage> Storage for Retrying<B> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn put(&self, key: &Key, bytes: &[u8]) -> Result<()> {
        self.run(|_| self.inner.put(key, bytes))
    }

    fn put_file(&self, key: &Key, path: &Path) -> Result<()> {
        self.run(|_| self.inner.put_file(key, path))
    }

    /// A create that failed transiently may have been stored all the same
    /// (the response was lost): finding exactly our bytes there on a later
    /// attempt means it was ours, and it counts as done.
    fn create(&self, key: &Key, bytes: &[u8]) -> Result<()> {
        self.run(|attempt| match self.inner.create(key, bytes) {
            Err(Error::AlreadyExists { .. }) if attempt > 0 && self.same_object(key, bytes)? => Ok(()),
            r => r,
        })
    }

    fn read(&self, key: &Key) -> Result<Vec<u8>> {
        self.run(|_| self.inner.read(key))
    }

    fn read_range(&self, key: &Key, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.run(|_| self.inner.read_range(key, offset, len))
    }

    fn read_ranges(&self, ranges: &[Range]) -> Result<Vec<Vec<u8>>> {
        self.run(|_| self.inner.read_ranges(ranges))
    }

    fn head(&self, key: &Key) -> Result<ObjectMeta> {
        self.run(|_| self.inner.head(key))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.run(|_| self.inner.list(prefix))
    }

    fn delete(&self, key: &Key) -> Result<()> {
        self.run(|_| self.inner.delete(key))
    }
}

impl<B: Storage> Retrying<B> {
    /// Whether the object at `key` has exactly `bytes` (size first, so a
    /// different object of another size costs one HEAD).
    fn same_object(&self, key: &Key, bytes: &[u8]) -> Result<bool> {
        if self.inner.head(key)?.size != bytes.len() as u64 {
            return Ok(false);
        }
        Ok(self.inner.read(key)? == bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_jittered_below_a_doubling_cap() {
        let b = Backoff { attempts: 10, base: Duration::from_millis(100), max: Duration::from_secs(2) };
        let mut seed = 42;
        for attempt in 0..10 {
            let cap = Duration::from_millis(100 << attempt).min(Duration::from_secs(2));
            let waits: Vec<Duration> = (0..200).map(|_| b.wait(attempt, &mut seed)).collect();
            assert!(waits.iter().all(|w| *w <= cap), "attempt {attempt}");
            // Full jitter: spread over the whole range, not bunched at the cap.
            let (lo, hi) = (waits.iter().filter(|w| **w < cap / 4).count(), waits.iter().filter(|w| **w > cap * 3 / 4).count());
            assert!(lo > 20 && hi > 20, "attempt {attempt}: {lo} low, {hi} high");
        }
    }
}
