//! The crate error. Every message names the object it is about ("chunk
//! 3fa9c2e1 in pack 00af…: checksum mismatch") so that the one line the CLI
//! prints is enough to act on.

use std::io;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("index database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("interrupted")]
    Interrupted,
    /// A pre- or post-script failed (crate::consistency).
    #[error("{0}")]
    Script(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
    pub fn io_path(what: &str, path: &Path, source: io::Error) -> Self {
        Error::Io { context: format!("{what} {}", path.display()), source }
    }
    /// The errno a FUSE adapter should answer with.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::NotFound(_) => libc::ENOENT,
            Error::InvalidInput(_) => libc::EINVAL,
            _ => libc::EIO,
        }
    }
    /// True when the underlying cause is a full disk, so callers can say so plainly.
    pub fn is_no_space(&self) -> bool {
        match self {
            Error::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => e.code == rusqlite::ErrorCode::DiskFull,
            _ => false,
        }
    }
}

/// Attach context to io::Result values.
pub trait IoContext<T> {
    fn ctx(self, f: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, f: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(f(), e))
    }
}
