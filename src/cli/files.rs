//! `kluis files ls|cp|versions`: guest files without FUSE. Walks the same
//! browse tree the mount shows (`files/NAME/pN/...`), so both agree on
//! names, metadata and errors. Paths are written `NAME:pN/path/in/guest`;
//! `NAME` alone means the disk's partitions.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use serde::Serialize;

use kluis::browse::{parse_part, Attr, Kind, Node, VaultTree};
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
    let mut node = tree.lookup_bytes(&Node::FilesDir(id), disk.as_bytes())?;
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
    /// st_ino of guest files with several links → the first copy made.
    links: HashMap<u64, PathBuf>,
    root: bool,
    rep: CopyReport,
    buf: Vec<u8>,
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
    let mut c = Copier { tree: &tree, recursive, links: HashMap::new(), root: unsafe { libc::geteuid() } == 0, rep: CopyReport::default(), buf: vec![0u8; 1 << 20] };
    c.copy(&node, &target, true)?;
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

impl Copier<'_> {
    /// Copies `node` to `dest`. Errors below the top are reported and
    /// counted so one damaged file does not stop a tree copy.
    fn copy(&mut self, node: &Node, dest: &Path, top: bool) -> Result<()> {
        match self.copy_one(node, dest) {
            Ok(()) => Ok(()),
            Err(e) if !top => {
                log::error!("{}: {e}", dest.display());
                eprintln!("kluis: error: {}: {e}", dest.display());
                self.rep.errors += 1;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn copy_one(&mut self, node: &Node, dest: &Path) -> Result<()> {
        let a = self.tree.attr(node)?;
        let io = |what: &str, e| Error::io_path(what, dest, e);
        match a.kind {
            Kind::Dir => {
                if !self.recursive {
                    return Err(Error::InvalidInput(format!("{} is a directory (use -r)", dest.display())));
                }
                match fs::create_dir(dest) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dest.is_dir() => {}
                    Err(e) => return Err(io("create directory", e)),
                }
                self.rep.dirs += 1;
                for (name, child, _) in self.tree.entries(node)? {
                    self.copy(&child, &dest.join(OsStr::from_bytes(&name)), false)?;
                }
                self.finish(dest, &a, false)?;
            }
            Kind::File => {
                let ino = a.guest.and_then(|g| g.ino).filter(|_| a.nlink > 1);
                if let Some(first) = ino.and_then(|i| self.links.get(&i)) {
                    let _ = fs::remove_file(dest);
                    fs::hard_link(first, dest).map_err(|e| io("link", e))?;
                    self.rep.hardlinks += 1;
                    return Ok(());
                }
                let h = self.tree.open(node)?;
                let f = OpenOptions::new().write(true).create(true).truncate(true).open(dest).map_err(|e| io("create", e))?;
                let size = h.size();
                let mut off = 0u64;
                while off < size {
                    let d = h.read(off, self.buf.len())?;
                    if d.is_empty() {
                        return Err(Error::Corrupt(format!("{}: file ends at {off} of {size} bytes", dest.display())));
                    }
                    // All-zero runs become holes, as a sparse guest file had them.
                    if d.iter().any(|b| *b != 0) {
                        f.write_all_at(&d, off).map_err(|e| io("write", e))?;
                    }
                    off += d.len() as u64;
                }
                f.set_len(size).map_err(|e| io("write", e))?;
                drop(f);
                self.rep.files += 1;
                self.rep.bytes += size;
                if let Some(i) = ino {
                    self.links.insert(i, dest.to_owned());
                }
                self.finish(dest, &a, false)?;
            }
            Kind::Symlink => {
                let t = self.tree.readlink_bytes(node)?;
                let _ = fs::remove_file(dest);
                std::os::unix::fs::symlink(OsStr::from_bytes(&t), dest).map_err(|e| io("create symlink", e))?;
                self.rep.symlinks += 1;
                self.finish(dest, &a, true)?;
            }
            Kind::Fifo => {
                let c = cstr(dest)?;
                if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                    return Err(io("create fifo", std::io::Error::last_os_error()));
                }
                self.rep.other += 1;
                self.finish(dest, &a, false)?;
            }
            Kind::CharDev | Kind::BlockDev | Kind::Socket => {
                log::warn!("{}: device or socket not copied", dest.display());
                self.rep.other += 1;
            }
        }
        Ok(())
    }

    /// Owner (when root), mode and mtime, in that order: chown clears setuid.
    fn finish(&self, dest: &Path, a: &Attr, symlink: bool) -> Result<()> {
        let c = cstr(dest)?;
        if let (true, Some(g)) = (self.root, a.guest)
            && unsafe { libc::lchown(c.as_ptr(), g.uid, g.gid) } != 0
        {
            log::warn!("{}: chown: {}", dest.display(), std::io::Error::last_os_error());
        }
        if !symlink {
            fs::set_permissions(dest, fs::Permissions::from_mode(a.mode as u32 & 0o7777)).map_err(|e| Error::io_path("chmod", dest, e))?;
        }
        let t = mtime_of(a);
        if symlink {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            let ts = [
                libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
                libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as _ },
            ];
            if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } != 0 {
                log::warn!("{}: set mtime: {}", dest.display(), std::io::Error::last_os_error());
            }
        } else {
            let f = File::open(dest).map_err(|e| Error::io_path("open", dest, e))?;
            f.set_times(FileTimes::new().set_modified(t)).map_err(|e| Error::io_path("set mtime of", dest, e))?;
        }
        Ok(())
    }
}

fn cstr(p: &Path) -> Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::InvalidInput(format!("{}: NUL in path", p.display())))
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
