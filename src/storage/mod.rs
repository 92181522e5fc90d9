//! The storage seam: one small synchronous trait, [`Storage`], through
//! which a vault's objects are read and written, whatever holds them — a
//! local directory ([`LocalDir`]), S3, Azure Blob or GCS ([`Remote`], over
//! the `object_store` crate), memory ([`Memory`], for tests).
//!
//! Shaped after rustic_core's `ReadBackend`/`WriteBackend`: whole-object
//! writes, ranged reads, list by prefix, delete; plus a conditional create
//! that is the basis of locks, leases and idempotent content-addressed
//! puts. Callers never match on which backend they have.
//!
//! **Not yet used by the binary** (issue 20, first step): the vault, packs,
//! gc and friends still use the directory directly; see "Plan" below.
//!
//! # Keys
//!
//! A [`Key`] is a relative, `/`-separated name (`packs/ab/0123…`,
//! `records/items/…`, `locks/gc`): segments of ASCII letters, digits, `-`,
//! `_` and `.`, never empty, never starting with `.` (so no `.`/`..` and no
//! clash with [`LocalDir`]'s temporary files). Only [`LocalDir`] turns a key
//! into a path; a remote backend puts its address's prefix in front.
//!
//! # Contract
//!
//! - **Puts are atomic and durable when they return.** A reader sees the
//!   whole old object or the whole new one, never a part
//!   ([`LocalDir`]: temporary file, fsync, rename, fsync of the directory;
//!   S3/Azure/GCS: a single PUT or a multipart upload, which becomes
//!   visible only when completed and is acknowledged only once stored).
//!   [`Storage::put_file`] streams a local file (large packs: a multipart
//!   upload of bounded memory, never the whole file in memory). Puts
//!   replace: packs need no create-if-absent because their names are
//!   unique (or content-addressed, so a replacement has the same bytes),
//!   and S3 cannot make a multipart upload conditional everywhere.
//! - **Logging.** object_store, reqwest and hyper log through `log` and
//!   `tracing`; at debug level reqwest names request URLs, which for an
//!   Azure SAS token would carry the token, so the binary must keep those
//!   crates at `warn` whatever `-v` asks (main.rs, when the seam is wired).
//! - **[`Storage::create`] makes an object only if the key is absent**, and
//!   returns [`Error::AlreadyExists`] otherwise: of two writers racing for a
//!   key exactly one succeeds. [`LocalDir`]: link(2) of a complete, fsynced
//!   temporary file (atomic on every local filesystem). Azure Blob (and
//!   Azurite): `If-None-Match: *` on Put Blob. S3: `If-None-Match: *` on
//!   PutObject (AWS since 2024, MinIO, Ceph RGW, R2, moto ≥ 5;
//!   `AWS_CONDITIONAL_PUT=etag`, object_store's default). GCS:
//!   `ifGenerationMatch=0`. A server that ignores the header would make
//!   create an ordinary put: kluis will refuse such a store for locks
//!   (a probe at vault open, next step). moto's check is not atomic under
//!   concurrent requests (a Python check-then-put), so its race test is
//!   informative only.
//! - **A create retried after a transient failure** may find the object it
//!   made itself on the first attempt (the response was lost): if the
//!   object there has exactly the bytes being created it counts as done
//!   ([`Retrying`]). Objects made by create therefore carry something unique
//!   to their writer (a lock's owner token) or are content-addressed.
//! - **Reads** return exactly the bytes asked for: a range past the end of
//!   the object is an error, not a short read. [`Storage::read_ranges`]
//!   issues several ranged reads at once (remote: concurrently).
//! - **Lists** return every object under a prefix (recursively, with
//!   sizes), sorted by key, and nothing half-written ([`LocalDir`] hides its
//!   temporary files). **Delete** is idempotent: deleting an absent key is
//!   not an error (S3 semantics).
//! - **Consistency.** S3 (since December 2020), Azure Blob and GCS are
//!   strongly read-after-write consistent for puts, deletes and lists, as a
//!   local filesystem is: an object a put returned for is in the next
//!   list, by any client. kluis relies on that and on nothing weaker; it
//!   never relies on a deleted object staying readable while open (a local
//!   filesystem's property that object stores lack), which is why gc needs
//!   leases or a grace period on object storage.
//!
//! # Errors
//!
//! [`Error`] names the operation, the object and the status in one line
//! (`s3://bkt/v1: read packs/ab/x: HTTP 403 Forbidden (AccessDenied)`) and
//! says whether a retry can help ([`Error::is_transient`]: 5xx, 429/503
//! throttling, timeouts, connection resets, versus not found, forbidden,
//! bad request). It never carries a secret: messages are built from the
//! status and the service's error code, not from request URLs or headers,
//! and no backend's or address's `Debug` prints credentials (they stay
//! inside object_store's builders, read from the environment).
//!
//! # Retries
//!
//! object_store retries each HTTP request itself (configured in
//! [`Remote`]: backoff from 100 ms doubling to 5 s, up to 5 tries within
//! 2 minutes).
//! [`Retrying`] wraps any backend and retries whole operations on
//! transient errors with exponential backoff and full jitter — that is
//! what restarts a multipart upload whose part failed for good, and it is
//! what [`Faulty`] tests: a backend that fails or cuts a fraction of
//! requests (seeded) or the Nth one.
//!
//! # Plan for the rest of issue 20
//!
//! Next, callers move onto the seam, one at a time, each keeping today's
//! local guarantees and tests:
//! 1. the pack writer (finished packs go out with `put_file`) and one pack
//!    reader (`read_range`/`read_ranges`, with a bounded local range cache
//!    for remote vaults) shared by restore, mount, verify, gc, replicate;
//! 2. the vault header (`config`, made with `create`) and the vault id;
//! 3. locks become lease objects under `locks/` made with `create`
//!    (owner token, host, expiry), renewed while held; gc is the one
//!    exclusive operation, backups take shared leases;
//! 4. gc deletes a pack only when no lease older than it is live and the
//!    pack is unreferenced for a grace period (a deleted object is gone at
//!    once on object storage, unlike an open local file);
//! 5. per-point manifests and records for items, policies and settings as
//!    objects (`records/…`), so the vault is self-contained;
//! 6. SQLite becomes a cache under `$XDG_CACHE_HOME/kluis/VAULT-ID`,
//!    brought up to date by listing what is new; replicate copies objects
//!    between any two backends;
//! 7. every object's bytes pass through one encode/decode point, ready
//!    for encryption.
//!
//! The key layout planned is in docs/format.md, "Object storage (in
//! progress)".

mod faulty;
mod local;
mod memory;
mod remote;
mod retry;

pub use faulty::{Faulty, FaultPlan};
pub use local::LocalDir;
pub use memory::Memory;
pub use remote::Remote;
pub use retry::{Backoff, Retrying};

use std::fmt;
use std::path::{Path, PathBuf};

/// A vault object's name: relative, `/`-separated (see the module docs).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    pub fn new(s: impl Into<String>) -> Result<Key> {
        let s = s.into();
        match key_problem(&s) {
            None => Ok(Key(s)),
            Some(why) => Err(Error::InvalidKey { key: s, why }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn key_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("empty");
    }
    if s.len() > 512 {
        return Some("longer than 512 bytes");
    }
    for seg in s.split('/') {
        if seg.is_empty() {
            return Some("empty segment (leading, trailing or double '/')");
        }
        if seg.starts_with('.') {
            return Some("a segment starts with '.'");
        }
        if !seg.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
            return Some("only ASCII letters, digits, '-', '_', '.' and '/' are allowed");
        }
    }
    None
}

/// Checks a list prefix: empty (everything) or a valid key (everything
/// below it, as a directory).
fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    Key::new(prefix).map(|_| ())
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// What a list or head tells about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: Key,
    pub size: u64,
}

/// One ranged read of [`Storage::read_ranges`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub key: Key,
    pub offset: u64,
    pub len: u64,
}

/// The operation an error happened in (part of its message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Put,
    Create,
    Read,
    Head,
    List,
    Delete,
    Open,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Put => "put",
            Op::Create => "create",
            Op::Read => "read",
            Op::Head => "head",
            Op::List => "list",
            Op::Delete => "delete",
            Op::Open => "open",
        })
    }
}

/// A storage error: one line naming the store, operation, object and
/// status; never a secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{store}: {op} {key}: not found")]
    NotFound { store: String, op: Op, key: String },
    #[error("{store}: create {key}: already exists")]
    AlreadyExists { store: String, key: String },
    /// A retry may help (5xx, throttling, timeout, connection reset); the
    /// message says how many attempts were made when retries ran out.
    #[error("{store}: {op} {key}: {detail}")]
    Transient { store: String, op: Op, key: String, detail: String },
    /// A retry cannot help (forbidden, bad request, a range past the end).
    #[error("{store}: {op} {key}: {detail}")]
    Permanent { store: String, op: Op, key: String, detail: String },
    #[error("invalid object key {key:?}: {why}")]
    InvalidKey { key: String, why: &'static str },
    #[error("invalid vault address {address:?}: {why}")]
    InvalidAddress { address: String, why: String },
}

impl Error {
    /// Whether trying the same operation again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Transient { .. })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(self, Error::AlreadyExists { .. })
    }

    /// The same error with `note` appended to its detail (retry counts).
    fn with_note(self, note: &str) -> Error {
        match self {
            Error::Transient { store, op, key, detail } => {
                Error::Transient { store, op, key, detail: format!("{detail} ({note})") }
            }
            Error::Permanent { store, op, key, detail } => {
                Error::Permanent { store, op, key, detail: format!("{detail} ({note})") }
            }
            e => e,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `put_file`'s local source could not be read: permanent, and never
/// "not found" (which would read as the object being missing).
fn source_error(store: &dyn Storage, key: &Key, path: &Path, e: std::io::Error) -> Error {
    Error::Permanent { store: store.describe(), op: Op::Put, key: key.to_string(), detail: format!("source {}: {e}", path.display()) }
}

/// A store of vault objects. Every method is synchronous and may be
/// called from several threads at once. See the module docs for the
/// contract each method keeps on every backend.
pub trait Storage: Send + Sync {
    /// Where the objects are, for messages (`/srv/vault`, `s3://b/p`);
    /// never a secret.
    fn describe(&self) -> String;

    /// Stores `bytes` under `key`, replacing any object there; atomic,
    /// durable when it returns.
    fn put(&self, key: &Key, bytes: &[u8]) -> Result<()>;

    /// Stores the contents of the local file at `path` under `key`, as
    /// `put` does, streaming it (bounded memory whatever its size).
    fn put_file(&self, key: &Key, path: &Path) -> Result<()>;

    /// Stores `bytes` under `key` only if no object is there; otherwise
    /// [`Error::AlreadyExists`] and the object there is left alone.
    fn create(&self, key: &Key, bytes: &[u8]) -> Result<()>;

    /// The whole object.
    fn read(&self, key: &Key) -> Result<Vec<u8>>;

    /// Exactly `len` bytes at `offset`; a range past the end is an error.
    fn read_range(&self, key: &Key, offset: u64, len: u64) -> Result<Vec<u8>>;

    /// Several ranged reads, results in the order asked; a remote backend
    /// issues them concurrently.
    fn read_ranges(&self, ranges: &[Range]) -> Result<Vec<Vec<u8>>> {
        ranges.iter().map(|r| self.read_range(&r.key, r.offset, r.len)).collect()
    }

    /// The object's size.
    fn head(&self, key: &Key) -> Result<ObjectMeta>;

    /// Every object whose key is `prefix` followed by `/…` (all objects
    /// if `prefix` is empty), sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// Removes the object; an absent key is not an error.
    fn delete(&self, key: &Key) -> Result<()>;
}

/// A reference, a box or an Arc of a store is a store (wrappers such as
/// [`Faulty`] and [`Retrying`] take any of them).
macro_rules! forward_storage {
    ($($ty:ty),*) => {$(
        impl<S: Storage + ?Sized> Storage for $ty {
            fn describe(&self) -> String {
                (**self).describe()
            }
            fn put(&self, key: &Key, bytes: &[u8]) -> Result<()> {
                (**self).put(key, bytes)
            }
            fn put_file(&self, key: &Key, path: &Path) -> Result<()> {
                (**self).put_file(key, path)
            }
            fn create(&self, key: &Key, bytes: &[u8]) -> Result<()> {
                (**self).create(key, bytes)
            }
            fn read(&self, key: &Key) -> Result<Vec<u8>> {
                (**self).read(key)
            }
            fn read_range(&self, key: &Key, offset: u64, len: u64) -> Result<Vec<u8>> {
                (**self).read_range(key, offset, len)
            }
            fn read_ranges(&self, ranges: &[Range]) -> Result<Vec<Vec<u8>>> {
                (**self).read_ranges(ranges)
            }
            fn head(&self, key: &Key) -> Result<ObjectMeta> {
                (**self).head(key)
            }
            fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
                (**self).list(prefix)
            }
            fn delete(&self, key: &Key) -> Result<()> {
                (**self).delete(key)
            }
        }
    )*};
}
forward_storage!(&S, Box<S>, std::sync::Arc<S>);

/// Where a vault lives, as `--vault`/`KLUIS_VAULT` will accept it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A plain path (anything without a `scheme://`).
    Dir(PathBuf),
    /// `s3://BUCKET/PREFIX`
    S3 { bucket: String, prefix: String },
    /// `az://CONTAINER/PREFIX`
    Azure { container: String, prefix: String },
    /// `gs://BUCKET/PREFIX`
    Gcs { bucket: String, prefix: String },
}

impl Address {
    pub fn parse(s: &str) -> Result<Address> {
        // A credential pasted into the URL (`s3://KEY:SECRET@bucket`) is
        // refused, and not repeated in the message.
        let shown = match s.split_once("://") {
            Some((scheme, rest)) if rest.contains('@') => format!("{scheme}://…@{}", rest.rsplit('@').next().unwrap_or("")),
            _ => s.to_string(),
        };
        let bad = |why: &str| Error::InvalidAddress { address: shown.clone(), why: why.to_string() };
        let Some((scheme, rest)) = s.split_once("://") else {
            if s.is_empty() {
                return Err(bad("empty"));
            }
            return Ok(Address::Dir(PathBuf::from(s)));
        };
        let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_end_matches('/').to_string();
        if name.is_empty() {
            return Err(bad("no bucket or container name after the scheme"));
        }
        if name.contains(['@', ':', '?', '#']) {
            return Err(bad("the bucket or container is a bare name; credentials and endpoints come from the environment"));
        }
        if !prefix.is_empty() {
            check_prefix(&prefix).map_err(|e| bad(&format!("prefix: {e}")))?;
        }
        let name = name.to_string();
        match scheme {
            "s3" => Ok(Address::S3 { bucket: name, prefix }),
            "az" | "azure" => Ok(Address::Azure { container: name, prefix }),
            "gs" => Ok(Address::Gcs { bucket: name, prefix }),
            other => Err(bad(&format!("unknown scheme {other:?} (use a directory path, s3://, az:// or gs://)"))),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, name, prefix) = match self {
            Address::Dir(p) => return write!(f, "{}", p.display()),
            Address::S3 { bucket, prefix } => ("s3", bucket, prefix),
            Address::Azure { container, prefix } => ("az", container, prefix),
            Address::Gcs { bucket, prefix } => ("gs", bucket, prefix),
        };
        if prefix.is_empty() { write!(f, "{scheme}://{name}") } else { write!(f, "{scheme}://{name}/{prefix}") }
    }
}

/// Opens the store at `address`: a directory as [`LocalDir`] (made if
/// missing), an object store as [`Remote`] configured from the standard
/// environment variables, wrapped in [`Retrying`].
pub fn open(address: &Address) -> Result<Box<dyn Storage>> {
    match address {
        Address::Dir(p) => Ok(Box::new(LocalDir::create(p)?)),
        _ => Ok(Box::new(Retrying::new(Remote::from_env(address, &[])?, Backoff::default()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_relative_plain_names() {
        for good in ["packs/ab/0123abcd", "config", "records/items/vm-1.json", "locks/gc_lease-2"] {
            Key::new(good).unwrap();
        }
        for bad in ["", "/abs", "a//b", "a/", "../x", "a/./b", "a/.tmp", "sp ace", "a\\b", "é"] {
            let e = Key::new(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidKey { .. }), "{bad:?}: {e}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(Address::parse("/srv/v").unwrap(), Address::Dir("/srv/v".into()));
        assert_eq!(Address::parse("rel/v").unwrap(), Address::Dir("rel/v".into()));
        assert_eq!(Address::parse("s3://bkt/a/b/").unwrap(), Address::S3 { bucket: "bkt".into(), prefix: "a/b".into() });
        assert_eq!(Address::parse("az://c").unwrap(), Address::Azure { container: "c".into(), prefix: String::new() });
        assert_eq!(Address::parse("gs://g/p").unwrap(), Address::Gcs { bucket: "g".into(), prefix: "p".into() });
        assert_eq!(Address::parse("s3://bkt/a/b").unwrap().to_string(), "s3://bkt/a/b");
        for bad in ["", "s3://", "s3:///p", "ftp://x/y", "s3://key:secret@bkt/p", "s3://b/../p", "az://c/a//b"] {
            let e = Address::parse(bad).unwrap_err();
            assert!(e.to_string().starts_with("invalid vault address"), "{bad:?}: {e}");
            assert!(!e.to_string().contains('\n'));
        }
        let e = Address::parse("s3://AKIA:sekrit@b/p").unwrap_err().to_string();
        assert!(e.contains("environment") && !e.contains("sekrit") && !e.contains("AKIA"), "{e}");
    }
}
