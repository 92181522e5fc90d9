//! Object storage (S3, Azure Blob, GCS) through the `object_store` crate,
//! behind the synchronous seam: a small tokio runtime lives inside the
//! backend (two worker threads drive the HTTP connections) and every
//! method blocks on it, so the rest of kluis stays synchronous and never
//! sees async.
//!
//! Configuration comes from the environment as object_store's builders
//! read it (`AWS_*`, `AZURE_*`, `GOOGLE_*`); [`Remote::from_env`] takes
//! extra `(key, value)` settings in the same key names (tests point it at a
//! loopback server that way). Credentials stay inside object_store: this
//! type's `Debug` shows only the address, and error messages are built
//! from the HTTP status and the service's error code, never from request
//! URLs (an Azure SAS token travels in the query string) or headers.

use super::{Address, Error, Key, ObjectMeta, Op, Range, Result, Storage, check_prefix, source_error};
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Files larger than this go up as a multipart upload in parts of this
/// size (S3's minimum part is 5 MiB; Azure's blocks have no minimum).
const PART: usize = 8 << 20;
/// Parts in flight at once: memory for an upload is bounded by
/// (PARTS_IN_FLIGHT + 1) × PART, whatever the file's size.
const PARTS_IN_FLIGHT: usize = 4;
/// Ranged reads in flight at once in [`Storage::read_ranges`].
const READS_IN_FLIGHT: usize = 8;

/// An object-store bucket or container (and a prefix in it) as a [`Storage`].
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    /// The address's prefix, empty for the bucket's root.
    prefix: String,
    address: String,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({})", self.address)
    }
}

/// object_store's own per-request retries (5xx, 429, connection errors,
/// timeouts of idempotent requests): quick, bounded; [`super::Retrying`]
/// adds whole-operation retries above.
fn retry_config() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig { init_backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(5), base: 2.0 },
        max_retries: 4,
        retry_timeout: Duration::from_secs(120),
    }
}

impl Remote {
    /// The store at `address` (not a directory), configured from the
    /// environment and then from `settings` (object_store config keys,
    /// e.g. `("aws_endpoint", "http://127.0.0.1:9000")`).
    pub fn from_env(address: &Address, settings: &[(&str, &str)]) -> Result<Remote> {
        use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
        use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
        use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
        let shown = address.to_string();
        let fail = |e: object_store::Error| Error::Permanent { store: shown.clone(), op: Op::Open, key: String::new(), detail: describe_error(&e).1 };
        let (store, prefix): (Arc<dyn ObjectStore>, &String) = match address {
            Address::Dir(_) => {
                return Err(Error::InvalidAddress { address: shown.clone(), why: "a directory is not an object store".into() });
            }
            Address::S3 { bucket, prefix } => {
                let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry_config());
                for (k, v) in settings {
                    b = b.with_config(k.parse::<AmazonS3ConfigKey>().map_err(fail)?, *v);
                }
                (Arc::new(b.build().map_err(fail)?), prefix)
            }
            Address::Azure { container, prefix } => {
                let mut b = MicrosoftAzureBuilder::from_env().with_container_name(container).with_retry(retry_config());
                for (k, v) in settings {
                    b = b.with_config(k.parse::<AzureConfigKey>().map_err(fail)?, *v);
                }
                (Arc::new(b.build().map_err(fail)?), prefix)
            }
            Address::Gcs { bucket, prefix } => {
                let mut b = GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket).with_retry(retry_config());
                for (k, v) in settings {
                    b = b.with_config(k.parse::<GoogleConfigKey>().map_err(fail)?, *v);
                }
                (Arc::new(b.build().map_err(fail)?), prefix)
            }
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kluis-objstore")
            .enable_all()
            .build()
            .map_err(|e| Error::Permanent { store: shown.clone(), op: Op::Open, key: String::new(), detail: format!("starting the I/O runtime: {e}") })?;
        Ok(Remote { store, prefix: prefix.clone(), address: shown, rt })
    }

    fn path(&self, key: &str) -> ObjPath {
        let full = if self.prefix.is_empty() { key.to_string() } else if key.is_empty() { self.prefix.clone() } else { format!("{}/{key}", self.prefix) };
        // Keys and prefixes are checked to be plain segments, which
        // object_store takes as they are.
        ObjPath::from(full)
    }

    fn err(&self, op: Op, key: &str, e: object_store::Error) -> Error {
        let (store, key) = (self.address.clone(), key.to_string());
        match e {
            // A 404 means the object is absent only when the bucket or
            // container is there: a missing one is a configuration error,
            // and a put cannot miss its object.
            object_store::Error::NotFound { .. } => {
                let detail = describe_error(&e).1;
                if matches!(op, Op::Put | Op::Create) || detail.contains("NoSuchBucket") || detail.contains("ContainerNotFound") {
                    Error::Permanent { store, op, key, detail }
                } else {
                    Error::NotFound { store, op, key }
                }
            }
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } if op == Op::Create => Error::AlreadyExists { store, key },
            e => {
                let (transient, detail) = describe_error(&e);
                if transient { Error::Transient { store, op, key, detail } } else { Error::Permanent { store, op, key, detail } }
            }
        }
    }

    async fn get_range(&self, key: &Key, offset: u64, len: u64) -> Result<Vec<u8>> {
        let past_end = || Error::Permanent {
            store: self.address.clone(),
            op: Op::Read,
            key: key.to_string(),
            detail: format!("range {offset}+{len} is past the end of the object"),
        };
        let end = offset.checked_add(len).ok_or_else(past_end)?;
        if len == 0 {
            // An empty range is not a valid HTTP range; the object must
            // still exist and reach `offset`.
            let size = self.store.head(&self.path(key.as_str())).await.map_err(|e| self.err(Op::Read, key.as_str(), e))?.size;
            return if offset <= size { Ok(Vec::new()) } else { Err(past_end()) };
        }
        let b = self.store.get_range(&self.path(key.as_str()), offset..end).await.map_err(|e| match e {
            // 416: the range starts past the end.
            e if status_of(&e) == Some(416) => past_end(),
            e => self.err(Op::Read, key.as_str(), e),
        })?;
        if b.len() as u64 != len {
            return Err(past_end());
        }
        Ok(b.to_vec())
    }
}

/// The HTTP status of a failed request in an object_store error's chain,
/// and the service's error body. object_store keeps its `RetryError` and
/// `RequestError` types crate-private, so this reads the one message of
/// theirs that carries them, `Server returned non-2xx status code: 403
/// Forbidden: BODY` (or `Server returned error response: BODY` for an
/// error in a 200 reply, S3's way for some failures).
fn http_status(e: &object_store::Error) -> Option<(Option<u16>, String)> {
    chain(e).find_map(|s| {
        let text = s.to_string();
        if let Some(rest) = text.strip_prefix("Server returned non-2xx status code: ") {
            let code = rest.get(..3).and_then(|c| c.parse().ok())?;
            let body = rest.split_once(": ").map(|(_, b)| b.to_string()).unwrap_or_default();
            Some((Some(code), body))
        } else {
            text.strip_prefix("Server returned error response: ").map(|b| (None, b.to_string()))
        }
    })
}

fn status_of(e: &object_store::Error) -> Option<u16> {
    http_status(e).and_then(|(s, _)| s)
}

fn chain<'a>(e: &'a (dyn std::error::Error + 'static)) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// Whether a retry can help, and a one-line description with the status
/// and the service's error code; built from parts that never hold a
/// secret (not from request URLs, whose query may carry a SAS token).
fn describe_error(e: &object_store::Error) -> (bool, String) {
    use object_store::client::HttpErrorKind as K;
    if let Some((status, body)) = http_status(e) {
        let svc = service_code(&body);
        let mut detail = match status {
            Some(code) => {
                let reason = http_reason(code);
                format!("HTTP {code}{}{reason}", if reason.is_empty() { "" } else { " " })
            }
            None => "error response".to_string(),
        };
        if let Some(svc) = &svc {
            detail += &format!(" ({svc})");
        }
        // 408 timeout, 429 throttling, 5xx (500 InternalError, 503
        // SlowDown); an error inside a 200 reply by its code.
        let transient = match status {
            Some(code) => code == 408 || code == 429 || code >= 500,
            None => matches!(svc.as_deref(), Some("InternalError" | "SlowDown" | "ServiceUnavailable")),
        };
        return (transient, detail);
    }
    if let Some(h) = chain(e).find_map(|s| s.downcast_ref::<object_store::client::HttpError>()) {
        let transient = matches!(h.kind(), K::Connect | K::Request | K::Timeout | K::Interrupted);
        let what = match h.kind() {
            K::Connect => "cannot connect",
            K::Request => "request failed",
            K::Timeout => "timed out",
            K::Interrupted => "connection interrupted",
            K::Decode => "bad response",
            _ => "HTTP error",
        };
        // The innermost OS error says why (connection refused, reset, …).
        let io = chain(e).filter_map(|s| s.downcast_ref::<std::io::Error>()).last();
        return (transient, match io {
            Some(io) => format!("{what}: {io}"),
            None => what.to_string(),
        });
    }
    // No request was made (a configuration error): object_store's message.
    (false, e.to_string().replace('\n', " "))
}

fn http_reason(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        412 => "Precondition Failed",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// The `<Code>…</Code>` of an S3 or Azure error body (`AccessDenied`,
/// `SlowDown`, `AuthenticationFailed`).
fn service_code(body: &str) -> Option<String> {
    let start = body.find("<Code>")? + "<Code>".len();
    let len = body[start..].find("</Code>")?;
    let code = &body[start..start + len];
    (code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')).then(|| code.to_string())
}

enum UploadError {
    Store(object_store::Error),
    Source(std::io::Error),
}

impl Storage for Remote {
    fn describe(&self) -> String {
        self.address.clone()
    }

    fn put(&self, key: &Key, bytes: &[u8]) -> Result<()> {
        let payload = PutPayload::from(bytes.to_vec());
        self.rt.block_on(self.store.put(&self.path(key.as_str()), payload)).map(drop).map_err(|e| self.err(Op::Put, key.as_str(), e))
    }

    fn put_file(&self, key: &Key, path: &Path) -> Result<()> {
        let source_err = |e: std::io::Error| source_error(self, key, path, e);
        let mut file = std::fs::File::open(path).map_err(source_err)?;
        let size = file.metadata().map_err(source_err)?.len();
        if size <= PART as u64 {
            let mut v = Vec::with_capacity(size as usize);
            file.read_to_end(&mut v).map_err(source_err)?;
            return self.put(key, &v);
        }
        let location = self.path(key.as_str());
        let r = self.rt.block_on(async {
            let upload = self.store.put_multipart(&location).await.map_err(UploadError::Store)?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
            let mut buf = vec![0u8; 1 << 20];
            let sent = async {
                loop {
                    // A blocking read on this (the caller's) thread: the
                    // runtime's workers keep the parts in flight moving.
                    let n = match file.read(&mut buf) {
                        Ok(0) => return Ok(()),
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(UploadError::Source(e)),
                    };
                    w.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(UploadError::Store)?;
                    w.write(&buf[..n]);
                }
            }
            .await;
            match sent {
                Ok(()) => w.finish().await.map(drop).map_err(UploadError::Store),
                Err(e) => {
                    // Parts already stored cost money until aborted (a
                    // crashed upload needs the bucket's lifecycle rule).
                    let _ = w.abort().await;
                    Err(e)
                }
            }
        });
        r.map_err(|e| match e {
            UploadError::Store(e) => self.err(Op::Put, key.as_str(), e),
            UploadError::Source(e) => source_err(e),
        })
    }

    fn create(&self, key: &Key, bytes: &[u8]) -> Result<()> {
        let payload = PutPayload::from(bytes.to_vec());
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        self.rt.block_on(self.store.put_opts(&self.path(key.as_str()), payload, opts)).map(drop).map_err(|e| self.err(Op::Create, key.as_str(), e))
    }

    fn read(&self, key: &Key) -> Result<Vec<u8>> {
        self.rt
            .block_on(async { self.store.get(&self.path(key.as_str())).await?.bytes().await })
            .map(|b| b.to_vec())
            .map_err(|e| self.err(Op::Read, key.as_str(), e))
    }

    fn read_range(&self, key: &Key, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.rt.block_on(self.get_range(key, offset, len))
    }

    fn read_ranges(&self, ranges: &[Range]) -> Result<Vec<Vec<u8>>> {
        self.rt.block_on(
            futures_util::stream::iter(ranges.iter().map(|r| self.get_range(&r.key, r.offset, r.len))).buffered(READS_IN_FLIGHT).try_collect(),
        )
    }

    fn head(&self, key: &Key) -> Result<ObjectMeta> {
        let m = self.rt.block_on(self.store.head(&self.path(key.as_str()))).map_err(|e| self.err(Op::Head, key.as_str(), e))?;
        Ok(ObjectMeta { key: key.clone(), size: m.size })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        check_prefix(prefix)?;
        let below = self.path(prefix);
        let metas: Vec<object_store::ObjectMeta> = self
            .rt
            .block_on(self.store.list(if below.as_ref().is_empty() { None } else { Some(&below) }).try_collect())
            .map_err(|e| self.err(Op::List, prefix, e))?;
        let strip = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let mut out: Vec<ObjectMeta> = metas
            .into_iter()
            .filter_map(|m| {
                let key = m.location.as_ref().strip_prefix(&strip).and_then(|k| Key::new(k).ok());
                if key.is_none() {
                    log::debug!("{}: ignoring {} (not a vault object name)", self.address, m.location);
                }
                Some(ObjectMeta { key: key?, size: m.size })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &Key) -> Result<()> {
        match self.rt.block_on(self.store.delete(&self.path(key.as_str()))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(Op::Delete, key.as_str(), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_codes_are_plain_words() {
        assert_eq!(service_code("<Error><Code>AccessDenied</Code><Message>x</Message></Error>").as_deref(), Some("AccessDenied"));
        assert_eq!(service_code("<Code>a b</Code>"), None);
        assert_eq!(service_code("no xml"), None);
    }

    #[test]
    fn debug_never_shows_credentials() {
        let a = Address::parse("s3://bkt/v1").unwrap();
        let r = Remote::from_env(&a, &[("aws_access_key_id", "AKIAEXAMPLE"), ("aws_secret_access_key", "sekrit-value"), ("aws_region", "us-east-1")]).unwrap();
        let shown = format!("{r:?} {}", r.describe());
        assert!(!shown.contains("sekrit") && !shown.contains("AKIAEXAMPLE"), "{shown}");
    }
}
