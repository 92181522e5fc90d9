//! Fault injection below the seam (redb's `CrashBackend` idea): a wrapper
//! that makes requests fail, seeded so a failing run replays. A *failed*
//! request never reaches the inner backend; a *cut* one does and then
//! reports a transient error, as when a connection drops after the server
//! stored the object but before the client saw the answer — the case that
//! makes retried creates and puts have to be idempotent.

use super::{Error, Key, ObjectMeta, Op, Range, Result, Storage};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Which requests [`Faulty`] breaks.
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultPlan {
    pub seed: u64,
    /// Fraction of requests that fail before reaching the backend.
    pub fail: f64,
    /// Fraction of requests that are carried out and then reported failed.
    pub cut: f64,
    /// The Nth request (1-based) fails permanently, whatever else.
    pub fail_nth: Option<u64>,
}

/// A backend that breaks requests according to a [`FaultPlan`].
#[derive(Debug)]
pub struct Faulty<B> {
    inner: B,
    plan: FaultPlan,
    rng: Mutex<u64>,
    requests: AtomicU64,
    injected: AtomicU64,
}

enum Fate {
    Pass,
    Fail,
    Cut,
    FailForGood,
}

/// splitmix64: small, seedable, good enough to pick faults and jitter.
pub(super) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl<B: Storage> Faulty<B> {
    pub fn new(inner: B, plan: FaultPlan) -> Faulty<B> {
        Faulty { inner, plan, rng: Mutex::new(plan.seed), requests: AtomicU64::new(0), injected: AtomicU64::new(0) }
    }

    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Requests seen so far, and how many of them were broken.
    pub fn counts(&self) -> (u64, u64) {
        (self.requests.load(Ordering::Relaxed), self.injected.load(Ordering::Relaxed))
    }

    fn fate(&self) -> Fate {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let fate = if self.plan.fail_nth == Some(n) {
            Fate::FailForGood
        } else {
            let x = (splitmix(&mut self.rng.lock().unwrap()) >> 11) as f64 / (1u64 << 53) as f64;
            if x < self.plan.fail {
                Fate::Fail
            } else if x < self.plan.fail + self.plan.cut {
                Fate::Cut
            } else {
                Fate::Pass
            }
        };
        if !matches!(fate, Fate::Pass) {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
        fate
    }

    fn call<T>(&self, op: Op, key: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let injected = |transient: bool, what: &str| {
            let (store, key, detail) = (self.inner.describe(), key.to_string(), format!("injected fault: {what}"));
            if transient { Error::Transient { store, op, key, detail } } else { Error::Permanent { store, op, key, detail } }
        };
        match self.fate() {
            Fate::Pass => f(),
            Fate::Fail => Err(injected(true, "HTTP 503 Service Unavailable (SlowDown)")),
            Fate::FailForGood => Err(injected(false, "HTTP 500 Internal Server Error, for good")),
            Fate::Cut => {
                f()?;
                Err(injected(true, "connection reset after the request was sent"))
            }
        }
    }
}

impl<B: Storage> Storage for Faulty<B> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn put(&self, key: &Key, bytes: &[u8]) -> Result<()> {
        self.call(Op::Put, key.as_str(), || self.inner.put(key, bytes))
    }
    fn put_file(&self, key: &Key, path: &Path) -> Result<()> {
        self.call(Op::Put, key.as_str(), || self.inner.put_file(key, path))
    }
    fn create(&self, key: &Key, bytes: &[u8]) -> Result<()> {
        self.call(Op::Create, key.as_str(), || self.inner.create(key, bytes))
    }
    fn read(&self, key: &Key) -> Result<Vec<u8>> {
        self.call(Op::Read, key.as_str(), || self.inner.read(key))
    }
    fn read_range(&self, key: &Key, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.call(Op::Read, key.as_str(), || self.inner.read_range(key, offset, len))
    }
    fn read_ranges(&self, ranges: &[Range]) -> Result<Vec<Vec<u8>>> {
        let first = ranges.first().map(|r| r.key.as_str()).unwrap_or("");
        self.call(Op::Read, first, || self.inner.read_ranges(ranges))
    }
    fn head(&self, key: &Key) -> Result<ObjectMeta> {
        self.call(Op::Head, key.as_str(), || self.inner.head(key))
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.call(Op::List, prefix, || self.inner.list(prefix))
    }
    fn delete(&self, key: &Key) -> Result<()> {
        self.call(Op::Delete, key.as_str(), || self.inner.delete(key))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Backoff, Memory, Retrying};
    use super::*;

    fn k(s: &str) -> Key {
        Key::new(s).unwrap()
    }

    #[test]
    fn retries_hide_a_tenth_of_requests_failing_or_cut() {
        let mem = Memory::new();
        let s = Retrying::new(Faulty::new(mem.clone(), FaultPlan { seed: 7, fail: 0.05, cut: 0.05, fail_nth: None }), Backoff::quick(12));
        for i in 0..300 {
            let key = k(&format!("locks/l{i}"));
            let body = format!("owner {i}");
            // Cut creates store the object and report failure: the retry
            // finds its own bytes there and counts it as done.
            s.create(&key, body.as_bytes()).unwrap();
            assert_eq!(s.read(&key).unwrap(), body.as_bytes());
            assert_eq!(s.read_range(&key, 6, 1).unwrap(), &body.as_bytes()[6..7]);
        }
        assert_eq!(s.list("locks").unwrap().len(), 300);
        let (requests, injected) = s.inner().counts();
        assert!(injected > requests / 20, "{injected} of {requests} broken");
        // Someone else's object is not taken for ours.
        mem.put(&k("locks/other"), b"owner X").unwrap();
        assert!(s.create(&k("locks/other"), b"owner Y").unwrap_err().is_already_exists());
    }

    #[test]
    fn the_nth_request_fails_for_good_in_one_line() {
        let s = Retrying::new(Faulty::new(Memory::new(), FaultPlan { fail_nth: Some(2), ..Default::default() }), Backoff::quick(3));
        s.put(&k("a/b"), b"x").unwrap();
        let e = s.read(&k("a/b")).unwrap_err();
        assert!(!e.is_transient());
        assert_eq!(e.to_string(), "memory: read a/b: injected fault: HTTP 500 Internal Server Error, for good");
        let s = Retrying::new(Faulty::new(Memory::new(), FaultPlan { fail: 1.0, ..Default::default() }), Backoff::quick(3));
        let e = s.put(&k("a/b"), b"x").unwrap_err();
        assert!(e.is_transient());
        assert_eq!(e.to_string(), "memory: put a/b: injected fault: HTTP 503 Service Unavailable (SlowDown) (gave up after 3 attempts)");
    }
}
