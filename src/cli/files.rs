//! `kluis files ls|cp|versions`: guest files without FUSE. Walks the same
//! browse tree the mount shows (`files/NAME/pN/...`), so both agree on
//! names, metadata and errors. Paths are written `NAME:pN/path/in/guest`;
//! `NAME` alone means the disk's partitions.
//!
//! `cp` writes under the target only: every host entry it makes is created
//! relative to a directory it opened itself (`openat`, `mkdirat`, ... with
//! `O_NOFOLLOW`), by a guest name checked to be one plain component
//! ([`guestfs::bad_name`]). A guest name is never joined into a host path
//! string, and no symlink in the target, whether the guest's own copy or
//! one a local user put there meanwhile, is followed.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::{self, File, FileTimes};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use serde::Serialize;

use kluis::browse::{parse_part, Attr, Kind, Node, VaultTree};
use kluis::guestfs;
use kluis::vault::Vault;
use kluis::{Error, RecoveryPointId, Result};

use super::output::bytes;
use super::Out;

#[derive(Subcommand, Debug)]
pub enum FilesCmd {
    /// List a directory inside a disk (NAME:pN/path), or the partitions of disk NAME
    Ls {
        /// ITEM@latest, ITEM@<UTC time> or ITEM@<id prefix>
        point: String,
        /// NAME, NAME:pN or NAME:pN/path/in/guest
        path: String,
    },
    /// Copy a guest file (or with -r a directory) out, keeping mode, mtime, symlinks and hard links
    Cp {
        point: String,
        /// NAME:pN/path/in/guest
        path: String,
        dest: PathBuf,
        /// Copy directories recursively
        #[arg(short, long)]
        recursive: bool,
    },
    /// The recovery points in which a guest file differs from the point before
    Versions {
        item: String,
        /// NAME:pN/path/in/guest
        path: String,
    },
}

/// `NAME:pN/a/b` → ("NAME", Some(N), "a/b").
fn parse_spec(s: &str) -> Result<(String, Option<u32>, Vec<u8>)> {
    let bad = || Error::InvalidInput(format!("{s:?}: expected NAME, NAME:pN or NAME:pN/path (e.g. os:p1/etc/fstab)"));
    let Some((disk, rest)) = s.split_once(':') else {
        return if s.is_empty() { Err(bad()) } else { Ok((s.to_owned(), None, Vec::new())) };
    };
    if disk.is_empty() {
        return Err(bad());
    }
    // `os:` (or `os:/`) names the disk itself, as `os` does: its partitions.
    if rest.trim_matches('/').is_empty() {
        return Ok((disk.to_owned(), None, Vec::new()));
    }
    let (part, path) = rest.split_once('/').unwrap_or((rest, ""));
    let n = parse_part(part).ok_or_else(bad)?;
    Ok((disk.to_owned(), Some(n), path.trim_matches('/').as_bytes().to_vec()))
}

/// The node of `path` in partition `part`, looked up one component at a time.
fn resolve(tree: &VaultTree, id: RecoveryPointId, disk: &str, part: Option<u32>, path: &[u8]) -> Result<Node> {
    let disks = Node::FilesDir(id);
    let mut node = tree.lookup_bytes(&disks, disk.as_bytes()).map_err(|e| match e {
        Error::NotFound(_) => {
            let names: Vec<String> = tree.children(&disks).map(|c| c.into_iter().map(|(n, _)| n).collect()).unwrap_or_default();
            Error::NotFound(format!(
                "the point has no disk {disk:?} (its disks: {}); expected NAME, NAME:pN or NAME:pN/path (e.g. os:p1/etc/fstab)",
                names.join(", ")
            ))
        }
        e => e,
    })?;
    let Some(n) = part else { return Ok(node) };
    node = tree.lookup_bytes(&node, format!("p{n}").as_bytes()).map_err(|e| match e {
        Error::NotFound(_) => Error::NotFound(format!("disk {disk} has no readable partition p{n} (see `kluis files ls ITEM@RP {disk}`)")),
        e => e,
    })?;
    for c in path.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
        node = tree.lookup_bytes(&node, c).map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(format!("{disk}:p{n}/{}: no such file or directory", String::from_utf8_lossy(path))),
            e => e,
        })?;
    }
    Ok(node)
}

fn open_tree(vault_dir: &Path, selector: &str) -> Result<(Arc<VaultTree>, RecoveryPointId)> {
    let vault = Vault::open(vault_dir)?;
    let p = vault.select(selector, false)?;
    drop(vault);
    Ok((VaultTree::new(vault_dir)?, p.id))
}

#[derive(Serialize)]
struct EntryOut {
    name: String,
    kind: &'static str,
    size: u64,
    mode: String,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: String,
    nlink: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Dir => "dir",
        Kind::File => "file",
        Kind::Symlink => "symlink",
        Kind::CharDev => "char",
        Kind::BlockDev => "block",
        Kind::Fifo => "fifo",
        Kind::Socket => "socket",
    }
}

fn mode_string(k: Kind, mode: u16) -> String {
    let t = match k {
        Kind::Dir => 'd',
        Kind::Symlink => 'l',
        Kind::CharDev => 'c',
        Kind::BlockDev => 'b',
        Kind::Fifo => 'p',
        Kind::Socket => 's',
        Kind::File => '-',
    };
    let mut s: Vec<char> = std::iter::once(t).chain("rwxrwxrwx".chars().enumerate().map(|(i, c)| if mode & (0o400 >> i) != 0 { c } else { '-' })).collect();
    // setuid, setgid, sticky: s/S, s/S, t/T over the x bits.
    for (bit, at, c) in [(0o4000, 3, 's'), (0o2000, 6, 's'), (0o1000, 9, 't')] {
        if mode & bit != 0 {
            s[at] = if s[at] == 'x' { c } else { c.to_ascii_uppercase() };
        }
    }
    s.into_iter().collect()
}

fn mtime_of(a: &Attr) -> SystemTime {
    match a.guest {
        Some(g) if g.mtime_s >= 0 => UNIX_EPOCH + Duration::new(g.mtime_s as u64, g.mtime_ns.min(999_999_999)),
        Some(g) => UNIX_EPOCH.checked_sub(Duration::from_secs(g.mtime_s.unsigned_abs())).unwrap_or(UNIX_EPOCH),
        None => UNIX_EPOCH + Duration::from_millis(a.mtime_ms.max(0) as u64),
    }
}

fn time_text(a: &Attr) -> String {
    let (s, ns) = match a.guest {
        Some(g) => (g.mtime_s, g.mtime_ns),
        None => (a.mtime_ms.div_euclid(1000), (a.mtime_ms.rem_euclid(1000) * 1_000_000) as u32),
    };
    jiff::Timestamp::new(s, ns as i32).map(|t| t.to_string()).unwrap_or_else(|_| s.to_string())
}

fn entry(tree: &VaultTree, name: &[u8], node: &Node) -> Result<EntryOut> {
    let a = tree.attr(node)?;
    let target = if a.kind == Kind::Symlink { Some(String::from_utf8_lossy(&tree.readlink_bytes(node)?).into_owned()) } else { None };
    Ok(EntryOut {
        name: String::from_utf8_lossy(name).into_owned(),
        kind: kind_name(a.kind),
        size: a.size,
        mode: format!("{:04o}", a.mode),
        uid: a.guest.map(|g| g.uid),
        gid: a.guest.map(|g| g.gid),
        mtime: time_text(&a),
        nlink: a.nlink,
        target,
    })
}

pub fn run(vault_dir: &Path, cmd: FilesCmd, out: &Out) -> Result<()> {
    match cmd {
        FilesCmd::Ls { point, path } => ls(vault_dir, &point, &path, out),
        FilesCmd::Cp { point, path, dest, recursive } => cp(vault_dir, &point, &path, &dest, recursive, out),
        FilesCmd::Versions { item, path } => versions(vault_dir, &item, &path, out),
    }
}

#[derive(Serialize)]
struct PartOut {
    name: String,
    number: u32,
    filesystem: &'static str,
    supported: bool,
    start: u64,
    size: u64,
    table_type: String,
}

fn ls(vault_dir: &Path, point: &str, spec: &str, out: &Out) -> Result<()> {
    let (disk, part, path) = parse_spec(spec)?;
    let (tree, id) = open_tree(vault_dir, point)?;
    if part.is_none() {
        resolve(&tree, id, &disk, None, b"")?;
        let layout = tree.layout(&id, &disk)?;
        let list: Vec<PartOut> = layout
            .partitions
            .iter()
            .map(|p| PartOut {
                name: if p.fs.supported() { format!("{disk}:p{}", p.number) } else { format!("p{}.txt", p.number) },
                number: p.number,
                filesystem: p.fs.name(),
                supported: p.fs.supported(),
                start: p.start,
                size: p.size,
                table_type: p.table_type.clone(),
            })
            .collect();
        if out.is_json() {
            return out.json_value(&list);
        }
        if list.is_empty() {
            return out.line(&format!("disk {disk}: no partition table and no filesystem kluis can read"));
        }
        out.line(&format!("{:<12} {:<22} {:>10} {:>14}  {}", "PARTITION", "FILESYSTEM", "SIZE", "START", "TABLE TYPE"))?;
        for p in &list {
            let name = if p.supported { p.name.clone() } else { format!("{disk}:p{} (not readable)", p.number) };
            out.line(&format!("{:<12} {:<22} {:>10} {:>14}  {}", name, p.filesystem, bytes(p.size), p.start, p.table_type))?;
        }
        return Ok(());
    }
    let node = resolve(&tree, id, &disk, part, &path)?;
    let a = tree.attr(&node)?;
    let mut list = Vec::new();
    let mut failed = 0;
    if a.kind == Kind::Dir {
        for (name, child, _) in tree.entries(&node)? {
            match entry(&tree, &name, &child) {
                Ok(e) => list.push(e),
                Err(e) => {
                    failed += 1;
                    log::error!("{}: {e}", String::from_utf8_lossy(&name));
                }
            }
        }
    } else {
        let name = path.rsplit(|b| *b == b'/').next().unwrap_or(b"");
        list.push(entry(&tree, name, &node)?);
    }
    list.sort_by(|a, b| a.name.cmp(&b.name));
    if out.is_json() {
        out.json_value(&list)?;
    } else {
        let mut w = std::io::BufWriter::new(std::io::stdout().lock());
        for e in &list {
            let kind = match e.kind {
                "dir" => Kind::Dir,
                "symlink" => Kind::Symlink,
                "char" => Kind::CharDev,
                "block" => Kind::BlockDev,
                "fifo" => Kind::Fifo,
                "socket" => Kind::Socket,
                _ => Kind::File,
            };
            let mode = u16::from_str_radix(&e.mode, 8).unwrap_or(0);
            let target = e.target.as_ref().map(|t| format!(" -> {t}")).unwrap_or_default();
            writeln!(
                w,
                "{} {:>3} {:>5} {:>5} {:>12} {} {}{}",
                mode_string(kind, mode),
                e.nlink,
                e.uid.unwrap_or(0),
                e.gid.unwrap_or(0),
                e.size,
                e.mtime,
                e.name,
                target
            )
            .map_err(|e| Error::io("write output", e))?;
        }
        w.flush().map_err(|e| Error::io("write output", e))?;
    }
    if failed > 0 {
        return Err(Error::Corrupt(format!("{failed} entries could not be read (damaged guest filesystem?)")));
    }
    Ok(())
}

#[derive(Default, Serialize)]
struct CopyReport {
    files: u64,
    dirs: u64,
    symlinks: u64,
    hardlinks: u64,
    other: u64,
    bytes: u64,
    errors: u64,
}

struct Copier<'a> {
    tree: &'a VaultTree,
    recursive: bool,
    /// st_ino of guest files with several links → the first copy made, as
    /// its path from the top's directory (not an open directory: a tree of
    /// many directories with links would run out of descriptors).
    links: HashMap<u64, Vec<CString>>,
    root: bool,
    rep: CopyReport,
    buf: Vec<u8>,
    /// The directory the top of the copy is in: where `links` start.
    origin: Arc<OwnedFd>,
}

fn cp(vault_dir: &Path, point: &str, spec: &str, dest: &Path, recursive: bool, out: &Out) -> Result<()> {
    let (disk, part, path) = parse_spec(spec)?;
    let Some(n) = part else {
        return Err(Error::InvalidInput(format!("{spec:?}: name a partition, e.g. {disk}:p1/ (disks/{disk}.raw in the mount is the whole disk)")));
    };
    let (tree, id) = open_tree(vault_dir, point)?;
    let node = resolve(&tree, id, &disk, part, &path)?;
    let base = match path.rsplit(|b| *b == b'/').next() {
        Some(b) if !b.is_empty() => b.to_vec(),
        _ => format!("p{n}").into_bytes(),
    };
    let target = if dest.is_dir() { dest.join(OsStr::from_bytes(&base)) } else { dest.to_owned() };
    let top = Dest::top(&target, dest.is_dir().then_some(&base[..]))?;
    let origin = top.dir.clone();
    let mut c = Copier { tree: &tree, recursive, links: HashMap::new(), root: unsafe { libc::geteuid() } == 0, rep: CopyReport::default(), buf: vec![0u8; 1 << 20], origin };
    c.copy(&node, &top, true)?;
    let rep = c.rep;
    out.result(&rep, || {
        format!(
            "copied {} files ({}), {} directories, {} symlinks, {} hard links to {}{}",
            rep.files,
            bytes(rep.bytes),
            rep.dirs,
            rep.symlinks,
            rep.hardlinks,
            target.display(),
            if rep.errors > 0 { format!("; {} errors", rep.errors) } else { String::new() }
        )
    })?;
    if rep.errors > 0 {
        return Err(Error::Corrupt(format!("{} guest files could not be copied (see the messages above)", rep.errors)));
    }
    Ok(())
}

/// Entry `name` of directory `dir`, which the copy opened itself; `shown`
/// is its path for messages.
struct Dest {
    dir: Arc<OwnedFd>,
    name: CString,
    shown: PathBuf,
    /// The names from the top's directory down to this entry.
    rel: Vec<CString>,
}

/// A libc call's result: `errno` when it is negative.
fn last_err(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r) }
}

impl Dest {
    /// The top of a copy: `target` as the user named it (symlinks on the
    /// way are the user's to follow), `guest_name` the guest's name of it
    /// when it was taken from the guest.
    fn top(target: &Path, guest_name: Option<&[u8]>) -> Result<Dest> {
        if let Some(why) = guest_name.and_then(guestfs::bad_name) {
            return Err(Error::InvalidInput(format!("{}: the guest name {why}", target.display())));
        }
        let name = target.file_name().filter(|n| *n != ".." && *n != ".").ok_or_else(|| Error::InvalidInput(format!("{}: name the file or directory to create", target.display())))?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = File::open(parent).map_err(|e| Error::io_path("open directory", parent, e))?;
        let name = cstr(Path::new(name))?;
        Ok(Dest { dir: Arc::new(dir.into()), rel: vec![name.clone()], name, shown: target.to_owned() })
    }

    /// Entry `name` of directory `dir` (`self`, opened), for a guest name:
    /// refused unless it is one plain component.
    fn child(&self, dir: &Arc<OwnedFd>, name: &[u8]) -> Result<Dest> {
        let shown = self.shown.join(OsStr::from_bytes(name));
        if let Some(why) = guestfs::bad_name(name) {
            return Err(Error::InvalidInput(format!("{}: not created, the guest name {why}", shown.display())));
        }
        let name = cstr(Path::new(OsStr::from_bytes(name)))?;
        let rel = self.rel.iter().cloned().chain([name.clone()]).collect();
        Ok(Dest { dir: dir.clone(), name, shown, rel })
    }

    fn io(&self, what: &str, e: std::io::Error) -> Error {
        Error::io_path(what, &self.shown, e)
    }

    /// openat(2) of the entry, never through a symlink.
    fn open(&self, flags: libc::c_int, mode: libc::mode_t) -> std::io::Result<OwnedFd> {
        let fd = last_err(unsafe { libc::openat(self.dir.as_raw_fd(), self.name.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC, mode as libc::c_uint) })?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// A new file beside the entry, under a name nobody can predict, made
    /// exclusively (O_EXCL, never through a symlink); removed unless
    /// [`Partial::install`] renames it over the entry.
    fn create_temp(&self) -> std::io::Result<Partial> {
        let base = String::from_utf8_lossy(self.name.as_bytes()).into_owned();
        let mut last = None;
        for _ in 0..16 {
            let tmp = CString::new(kluis::newfile::temp_name(&base)).map_err(std::io::Error::other)?;
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
            match last_err(unsafe { libc::openat(self.dir.as_raw_fd(), tmp.as_ptr(), flags, 0o600 as libc::c_uint) }) {
                // SAFETY: openat returned a new descriptor that nothing else owns.
                Ok(fd) => return Ok(Partial { dir: self.dir.clone(), name: Some(tmp), file: File::from(unsafe { OwnedFd::from_raw_fd(fd) }) }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::AlreadyExists)))
    }

    /// Removes a non-directory at the entry, if any.
    fn unlink(&self) {
        unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.name.as_ptr(), 0) };
    }

    fn at(&self) -> (libc::c_int, &CStr) {
        (self.dir.as_raw_fd(), &self.name)
    }
}

/// A file being written under a temporary name in a directory the copy
/// opened; removed unless installed.
struct Partial {
    dir: Arc<OwnedFd>,
    name: Option<CString>,
    file: File,
}

impl Partial {
    /// Renames the finished file over `dest` (replacing what is there; a
    /// symlink there is replaced, never followed).
    fn install(mut self, dest: &Dest) -> Result<()> {
        let tmp = self.name.take().expect("installed once");
        let (dir, name) = dest.at();
        let r = last_err(unsafe { libc::renameat(self.dir.as_raw_fd(), tmp.as_ptr(), dir, name.as_ptr()) });
        if let Err(e) = r {
            self.name = Some(tmp);
            return Err(dest.io("rename into", e));
        }
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(n) = &self.name {
            unsafe { libc::unlinkat(self.dir.as_raw_fd(), n.as_ptr(), 0) };
        }
    }
}

/// Err(Interrupted) once SIGINT or SIGTERM came (docs/cli.md: `files cp`
/// and `files versions` stop at the first one).
fn stop_requested() -> Result<()> {
    if super::CANCEL.load(std::sync::atomic::Ordering::Relaxed) { Err(Error::Interrupted) } else { Ok(()) }
}

/// openat(2) of directory `name` in `dir`, never through a symlink.
fn open_dir_at(dir: libc::c_int, name: &CStr) -> std::io::Result<OwnedFd> {
    let fd = last_err(unsafe { libc::openat(dir, name.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) })?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Copier<'_> {
    /// Copies `node` to `dest`. Errors below the top are reported and
    /// counted so one damaged file does not stop a tree copy.
    fn copy(&mut self, node: &Node, dest: &Dest, top: bool) -> Result<()> {
        match self.copy_one(node, dest) {
            Ok(()) => Ok(()),
            // A signal stops the whole copy, not only this file.
            Err(e) if !top && !matches!(e, Error::Interrupted) => {
                log::error!("{}: {e}", dest.shown.display());
                eprintln!("kluis: error: {}: {e}", dest.shown.display());
                self.rep.errors += 1;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn copy_one(&mut self, node: &Node, dest: &Dest) -> Result<()> {
        stop_requested()?;
        let a = self.tree.attr(node)?;
        match a.kind {
            Kind::Dir => {
                if !self.recursive {
                    return Err(Error::InvalidInput(format!("{} is a directory (use -r)", dest.shown.display())));
                }
                let (dir, name) = dest.at();
                // Private until finished; an existing directory is reused,
                // an existing symlink is not followed (ELOOP below).
                if let Err(e) = last_err(unsafe { libc::mkdirat(dir, name.as_ptr(), 0o700) })
                    && e.kind() != std::io::ErrorKind::AlreadyExists
                {
                    return Err(dest.io("create directory", e));
                }
                let (dir, name) = dest.at();
                let fd = Arc::new(open_dir_at(dir, name).map_err(|e| dest.io("open directory", e))?);
                self.rep.dirs += 1;
                for (name, child, _) in self.tree.entries(node)? {
                    match dest.child(&fd, &name) {
                        Ok(d) => self.copy(&child, &d, false)?,
                        Err(e) => {
                            eprintln!("kluis: error: {e}");
                            self.rep.errors += 1;
                        }
                    }
                }
                self.finish(&File::from(fd.try_clone().map_err(|e| dest.io("open directory", e))?), dest, &a)?;
            }
            Kind::File => {
                let ino = a.guest.and_then(|g| g.ino).filter(|_| a.nlink > 1);
                if let Some(first) = ino.and_then(|i| self.links.get(&i)) {
                    dest.unlink();
                    // The first copy's directory, walked down again from
                    // the top without following symlinks.
                    let (last, path) = first.split_last().expect("a path has a name");
                    let mut held = None;
                    for c in path {
                        let at = held.as_ref().map_or(self.origin.as_raw_fd(), |d: &OwnedFd| d.as_raw_fd());
                        held = Some(open_dir_at(at, c).map_err(|e| dest.io("link", e))?);
                    }
                    let fdir = held.as_ref().map_or(self.origin.as_raw_fd(), |d| d.as_raw_fd());
                    let (dir, name) = dest.at();
                    last_err(unsafe { libc::linkat(fdir, last.as_ptr(), dir, name.as_ptr(), 0) }).map_err(|e| dest.io("link", e))?;
                    self.rep.hardlinks += 1;
                    return Ok(());
                }
                let h = self.tree.open(node)?;
                // Written under a fresh name made exclusively beside the
                // entry and renamed over it when complete: never through a
                // symlink there, and no partial file left by an interruption.
                let partial = dest.create_temp().map_err(|e| dest.io("create", e))?;
                let f = partial.file.try_clone().map_err(|e| dest.io("create", e))?;
                let size = h.size();
                let mut off = 0u64;
                while off < size {
                    stop_requested()?;
                    // Only the data the guest stored is read: a file that
                    // claims 60 GiB over a few blocks costs those blocks.
                    let Some(data) = h.seek(off, true)?.map(|d| d.max(off)).filter(|d| *d < size) else { break };
                    let end = h.seek(data, false)?.unwrap_or(size).clamp(data + 1, size);
                    off = data;
                    while off < end {
                        stop_requested()?;
                        let d = h.read(off, self.buf.len().min((end - off) as usize))?;
                        if d.is_empty() {
                            return Err(Error::Corrupt(format!("{}: file ends at {off} of {size} bytes", dest.shown.display())));
                        }
                        // All-zero runs become holes, as a sparse guest file had them.
                        if d.iter().any(|b| *b != 0) {
                            f.write_all_at(&d, off).map_err(|e| dest.io("write", e))?;
                        }
                        off += d.len() as u64;
                    }
                }
                f.set_len(size).map_err(|e| dest.io("write", e))?;
                self.finish(&f, dest, &a)?;
                partial.install(dest)?;
                self.rep.files += 1;
                self.rep.bytes += size;
                if let Some(i) = ino {
                    self.links.insert(i, dest.rel.clone());
                }
            }
            Kind::Symlink => {
                let t = self.tree.readlink_bytes(node)?;
                dest.unlink();
                let target = CString::new(t).map_err(|_| Error::Corrupt(format!("{}: NUL in the symlink's target", dest.shown.display())))?;
                let (dir, name) = dest.at();
                last_err(unsafe { libc::symlinkat(target.as_ptr(), dir, name.as_ptr()) }).map_err(|e| dest.io("create symlink", e))?;
                self.rep.symlinks += 1;
                self.finish_symlink(dest, &a);
            }
            Kind::Fifo => {
                let (dir, name) = dest.at();
                last_err(unsafe { libc::mkfifoat(dir, name.as_ptr(), 0o600) }).map_err(|e| dest.io("create fifo", e))?;
                // Opened to read without waiting for a writer, only to set
                // its metadata through the descriptor.
                let f = File::from(dest.open(libc::O_RDONLY | libc::O_NONBLOCK, 0).map_err(|e| dest.io("open fifo", e))?);
                self.rep.other += 1;
                self.finish(&f, dest, &a)?;
            }
            Kind::CharDev | Kind::BlockDev | Kind::Socket => {
                log::warn!("{}: device or socket not copied", dest.shown.display());
                self.rep.other += 1;
            }
        }
        Ok(())
    }

    /// Owner (when root), mode and mtime of the entry open as `f`, in that
    /// order: chown clears setuid.
    fn finish(&self, f: &File, dest: &Dest, a: &Attr) -> Result<()> {
        if let (true, Some(g)) = (self.root, a.guest)
            && let Err(e) = std::os::unix::fs::fchown(f, Some(g.uid), Some(g.gid))
        {
            log::warn!("{}: chown: {e}", dest.shown.display());
        }
        f.set_permissions(fs::Permissions::from_mode(a.mode as u32 & 0o7777)).map_err(|e| dest.io("chmod", e))?;
        f.set_times(FileTimes::new().set_modified(mtime_of(a))).map_err(|e| dest.io("set mtime of", e))?;
        Ok(())
    }

    /// Owner (when root) and mtime of a symlink, not followed.
    fn finish_symlink(&self, dest: &Dest, a: &Attr) {
        let (dir, name) = dest.at();
        if let (true, Some(g)) = (self.root, a.guest)
            && unsafe { libc::fchownat(dir, name.as_ptr(), g.uid, g.gid, libc::AT_SYMLINK_NOFOLLOW) } != 0
        {
            log::warn!("{}: chown: {}", dest.shown.display(), std::io::Error::last_os_error());
        }
        let d = mtime_of(a).duration_since(UNIX_EPOCH).unwrap_or_default();
        let ts = [
            libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
            libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as _ },
        ];
        if unsafe { libc::utimensat(dir, name.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } != 0 {
            log::warn!("{}: set mtime: {}", dest.shown.display(), std::io::Error::last_os_error());
        }
    }
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::InvalidInput(format!("{}: NUL in path", p.display())))
}

#[derive(Serialize)]
struct VersionOut {
    point: String,
    id: String,
    change: &'static str,
    kind: Option<&'static str>,
    size: Option<u64>,
    mtime: Option<String>,
}

/// What identifies a version: the metadata, plus a content hash computed
/// only when the metadata alone cannot tell.
struct Seen {
    id: RecoveryPointId,
    node: Node,
    attr: Attr,
    hash: Option<blake3::Hash>,
}

fn content_hash(tree: &VaultTree, node: &Node, a: &Attr) -> Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    match a.kind {
        Kind::File => {
            let f = tree.open(node)?;
            let mut off = 0;
            while off < f.size() {
                stop_requested()?;
                let d = f.read(off, 1 << 20)?;
                if d.is_empty() {
                    break;
                }
                h.update(&d);
                off += d.len() as u64;
            }
        }
        Kind::Symlink => {
            h.update(&tree.readlink_bytes(node)?);
        }
        _ => {}
    }
    Ok(h.finalize())
}

fn versions(vault_dir: &Path, item: &str, spec: &str, out: &Out) -> Result<()> {
    let (disk, part, path) = parse_spec(spec)?;
    if part.is_none() {
        return Err(Error::InvalidInput(format!("{spec:?}: name a file, e.g. {disk}:p1/etc/fstab")));
    }
    Vault::open(vault_dir)?;
    let tree = VaultTree::new(vault_dir)?;
    let mut list = Vec::new();
    let mut prev: Option<Seen> = None;
    for (name, id) in tree.item_points(item)? {
        stop_requested()?;
        let mut hash = None;
        let found = match resolve(&tree, id, &disk, part, &path) {
            Ok(node) => Some((tree.attr(&node)?, node)),
            Err(Error::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let change = match (&prev, &found) {
            (None, None) => continue,
            (Some(_), None) => "deleted",
            (None, Some(_)) => "new",
            (Some(p), Some((a, node))) => {
                if tree.same_partition(&p.id, &id, &disk, part.unwrap())? {
                    prev.as_mut().unwrap().id = id;
                    continue;
                }
                let same_meta = p.attr.kind == a.kind && p.attr.size == a.size && p.attr.mtime_ms == a.mtime_ms && p.attr.mode == a.mode;
                let differs = if !same_meta {
                    true
                } else if a.kind == Kind::Dir {
                    false
                } else {
                    let ph = match p.hash {
                        Some(h) => h,
                        None => content_hash(&tree, &p.node, &p.attr)?,
                    };
                    let h = content_hash(&tree, node, a)?;
                    hash = Some(h);
                    ph != h
                };
                if !differs {
                    let p = prev.as_mut().unwrap();
                    (p.id, p.node, p.hash) = (id, node.clone(), hash.or(p.hash));
                    continue;
                }
                "changed"
            }
        };
        list.push(VersionOut {
            point: name,
            id: id.to_hex(),
            change,
            kind: found.as_ref().map(|(a, _)| kind_name(a.kind)),
            size: found.as_ref().map(|(a, _)| a.size),
            mtime: found.as_ref().map(|(a, _)| time_text(a)),
        });
        prev = found.map(|(attr, node)| Seen { id, node, attr, hash });
    }
    if out.is_json() {
        return out.json_value(&list);
    }
    if list.is_empty() {
        return Err(Error::NotFound(format!("{spec}: in no recovery point of {item}")));
    }
    out.line(&format!("{:<24} {:<8} {:<8} {:>12}  {}", "POINT", "ID", "CHANGE", "SIZE", "MTIME"))?;
    for v in &list {
        out.line(&format!(
            "{:<24} {:<8} {:<8} {:>12}  {}",
            v.point,
            &v.id[..8],
            v.change,
            v.size.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            v.mtime.clone().unwrap_or_else(|| "-".into())
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(parse_spec("os").unwrap(), ("os".into(), None, vec![]));
        assert_eq!(parse_spec("os:").unwrap(), ("os".into(), None, vec![]));
        assert_eq!(parse_spec("os:/").unwrap(), ("os".into(), None, vec![]));
        assert!(parse_spec(":").is_err());
        assert_eq!(parse_spec("os:p1").unwrap(), ("os".into(), Some(1), vec![]));
        assert_eq!(parse_spec("os:p12/etc/fstab").unwrap(), ("os".into(), Some(12), b"etc/fstab".to_vec()));
        assert_eq!(parse_spec("os:p0/").unwrap(), ("os".into(), Some(0), vec![]));
        assert!(parse_spec("os:1/etc").is_err());
        assert!(parse_spec(":p1").is_err());
        assert!(parse_spec("os:p01").is_err());
    }
}
