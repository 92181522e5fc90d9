//! Writing, reading and scanning pack files.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::frame::*;
use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use crate::newfile::{create_dir_all, create_new, Modes};
use crate::image::{open_direct, IoBuf, DIRECT_ALIGN};

pub fn pack_path(vault: &Path, name: &str) -> PathBuf {
    vault.join("packs").join(&name[..2]).join(format!("{name}.pack"))
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("fsync directory {}", dir.display()))
}

/// A fresh pack name: 16 hex chars from the time, the pid and a counter, so
/// two processes (or a crashed earlier run) never pick the same name.
fn new_pack_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.update(&now.as_nanos().to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    crate::id::hex(&h.finalize().as_bytes()[..8])
}

/// `VAULT/packs/tmp/NAME.tmp`, the directory made if missing: where pack
/// `name` is written before [`install_pack`] makes it visible.
fn temp_pack_path(vault: &Path, name: &str) -> Result<PathBuf> {
    let tmp_dir = vault.join("packs").join("tmp");
    create_dir_all(&tmp_dir, Modes::of_vault(vault).dir).ctx(|| format!("create {}", tmp_dir.display()))?;
    Ok(tmp_dir.join(format!("{name}.tmp")))
}

/// The last steps of writing a pack, once `tmp` is fsynced: rename it to
/// `packs/NN/NAME.pack` and fsync that directory.
fn install_pack(vault: &Path, name: &str, tmp: &Path) -> Result<()> {
    let final_path = pack_path(vault, name);
    let dir = final_path.parent().unwrap();
    create_dir_all(dir, Modes::of_vault(vault).dir).ctx(|| format!("create {}", dir.display()))?;
    fs::rename(tmp, &final_path).ctx(|| format!("rename pack {name} into place in {}", vault.display()))?;
    fsync_dir(dir)
}

/// Removes the temporary files of interrupted runs (`packs/tmp/*`).
/// Returns how many files and bytes went.
pub fn remove_temp_packs(vault: &Path) -> Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    if let Ok(entries) = fs::read_dir(vault.join("packs").join("tmp")) {
        for e in entries.flatten() {
            bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(e.path()).ctx(|| format!("remove {}", e.path().display()))?;
            files += 1;
        }
    }
    Ok((files, bytes))
}

/// Copies finished pack `name` from vault `from` into vault `to` with the
/// write order of a new pack (a temporary file, fsynced, renamed into place,
/// its directory fsynced), so a crash leaves either no pack or the whole
/// one. `step` sees the bytes as they go; it may stop the copy with an
/// error (a cancel), and the temporary file goes with it. Returns the size.
pub fn copy_pack(from: &Path, to: &Path, name: &str, step: &mut dyn FnMut(u64) -> Result<()>) -> Result<u64> {
    use std::io::Read;
    /// Bytes between two calls of `step`; the copy itself is the kernel's
    /// (std::io::copy uses copy_file_range between files).
    const STEP: u64 = 8 << 20;
    let src_path = pack_path(from, name);
    let mut src = File::open(&src_path).ctx(|| format!("open pack {}", src_path.display()))?;
    let tmp_path = temp_pack_path(to, name)?;
    let _ = fs::remove_file(&tmp_path); // a leftover of an interrupted copy
    let mut dst = create_new(&tmp_path, Modes::of_vault(to).file).ctx(|| format!("create {}", tmp_path.display()))?;
    let copied = (|| {
        let mut total = 0;
        loop {
            let n = std::io::copy(&mut (&mut src).take(STEP), &mut dst).ctx(|| format!("copy pack {name} to {}", to.display()))?;
            if n == 0 {
                break;
            }
            total += n;
            step(n)?;
        }
        dst.sync_all().ctx(|| format!("fsync {}", tmp_path.display()))?;
        Ok(total)
    })();
    match copied.and_then(|total| install_pack(to, name, &tmp_path).map(|()| total)) {
        Ok(total) => Ok(total),
        Err(e) => {
            let _ = fs::remove_file(&tmp_path);
            Err(e)
        }
    }
}

/// Where one frame landed in a finished pack.
#[derive(Clone, Debug)]
pub struct FrameLocation {
    pub header: FrameHeader,
    pub offset: u64,
}

pub struct FinishedPack {
    pub name: String,
    pub size: u64,
    pub frames: Vec<FrameLocation>,
}

/// Appends frames to a temporary pack; [`PackWriter::finish`] makes it durable
/// and visible. Dropping an unfinished writer removes the temporary file.
pub struct PackWriter {
    vault: PathBuf,
    name: String,
    tmp_path: PathBuf,
    out: Option<BufWriter<File>>,
    len: u64,
    /// Bytes already handed to the kernel's writeback (see `append`).
    written_back: u64,
    frames: Vec<FrameLocation>,
}

/// A pack's bytes are sent on their way to the disk every this many bytes,
/// instead of all at its fsync.
const WRITEBACK_STEP: u64 = 8 << 20;

impl PackWriter {
    pub fn create(vault: &Path) -> Result<PackWriter> {
        let name = new_pack_name();
        let tmp_path = temp_pack_path(vault, &name)?;
        let file = create_new(&tmp_path, Modes::of_vault(vault).file).ctx(|| format!("create pack {}", tmp_path.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&PACK_HEADER).ctx(|| format!("write pack {name}"))?;
        Ok(PackWriter { vault: vault.to_owned(), name, tmp_path, out: Some(out), len: PACK_HEADER_SIZE, written_back: 0, frames: Vec::new() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes written so far, header included.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Appends one frame and returns its offset in the pack.
    pub fn append(&mut self, frame: &Frame) -> Result<u64> {
        let out = self.out.as_mut().expect("append after finish");
        let offset = self.len;
        let name = &self.name;
        out.write_all(&frame.header.to_bytes()).ctx(|| format!("write pack {name}"))?;
        out.write_all(&frame.payload).ctx(|| format!("write pack {name}"))?;
        self.len += frame.frame_len();
        self.frames.push(FrameLocation { header: frame.header.clone(), offset });
        if self.len - self.written_back >= WRITEBACK_STEP {
            self.start_writeback()?;
        }
        Ok(offset)
    }

    /// Starts writing what the pack has so far to the disk, without waiting
    /// for it. Left to the final fsync, 128 MiB of a pack went out at once
    /// while the backup stood still, and the last pack's made the end of a
    /// backup wait for the disk.
    fn start_writeback(&mut self) -> Result<()> {
        let out = self.out.as_mut().expect("writeback after finish");
        out.flush().ctx(|| format!("write pack {}", self.name))?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(out.get_ref());
        // Advisory: if the kernel refuses, the fsync in `finish` still
        // writes everything.
        unsafe { libc::sync_file_range(fd, self.written_back as i64, (self.len - self.written_back) as i64, libc::SYNC_FILE_RANGE_WRITE) };
        self.written_back = self.len;
        Ok(())
    }

    /// fsync, rename into place, fsync the directory. After this returns the
    /// pack survives a crash and index rows may point into it.
    /// A failure on the way (ENOSPC at the last write) removes the
    /// temporary file, as dropping an unfinished writer does.
    pub fn finish(mut self) -> Result<FinishedPack> {
        let out = self.out.take().expect("finish twice");
        let durable = out
            .into_inner()
            .map_err(|e| Error::io(format!("write pack {}", self.name), e.into_error()))
            .and_then(|file| file.sync_all().ctx(|| format!("fsync pack {}", self.name)))
            .and_then(|()| install_pack(&self.vault, &self.name, &self.tmp_path));
        if let Err(e) = durable {
            let _ = fs::remove_file(&self.tmp_path);
            return Err(e);
        }
        Ok(FinishedPack { name: self.name.clone(), size: self.len, frames: std::mem::take(&mut self.frames) })
    }
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

/// Where a chunk lives: the frame holding it, and its place in the frame's
/// decoded bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    pub pack: String,
    pub offset: u64,
    pub frame_len: u32,
    pub inner: u32,
    pub raw_len: u32,
}

/// A frame read back and decoded (a zstd payload is checked by zstd's
/// content checksum on the way; a stored one is not). `raw` is the decoded
/// payload: its own vector, or a [`FrameBuf`]'s buffer.
pub struct DecodedFrame<B = Vec<u8>> {
    pub header: FrameHeader,
    pub raw: B,
}

impl<B: AsRef<[u8]>> DecodedFrame<B> {
    /// The bytes of chunk `id` at `inner..inner + raw_len`, as the index
    /// says, after checking that the frame's table agrees and that they hash
    /// to `id`. Works on a decoded prefix too, as far as it goes.
    pub fn checked_slice(&self, id: &ChunkId, inner: u32, raw_len: u32, what: &dyn std::fmt::Display) -> Result<&[u8]> {
        self.position(id, inner, raw_len, what)?;
        let bytes = self
            .raw
            .as_ref()
            .get(inner as usize..(inner + raw_len) as usize)
            .ok_or_else(|| Error::Corrupt(format!("chunk {id} in {what}: past the decoded bytes")))?;
        check_chunk(id, bytes, what)?;
        Ok(bytes)
    }

    /// The place in the table of chunk `id` at `inner..inner + raw_len`.
    pub fn position(&self, id: &ChunkId, inner: u32, raw_len: u32, what: &dyn std::fmt::Display) -> Result<usize> {
        self.header
            .ranges()
            .position(|(e, r)| e.id == *id && r.start == inner as usize && r.len() == raw_len as usize)
            .ok_or_else(|| Error::Corrupt(format!("chunk {id} in {what}: the frame there does not hold it")))
    }

    /// Every chunk of the frame with its bytes, in table order.
    pub fn chunks(&self) -> impl Iterator<Item = (ChunkId, &[u8])> {
        self.header.ranges().map(|(e, r)| (e.id, &self.raw.as_ref()[r]))
    }
}

/// Reads and decodes the frame of `frame_len` bytes at `offset` of `file`
/// (pack `name`).
pub fn read_frame(file: &File, name: &str, offset: u64, frame_len: u32) -> Result<DecodedFrame> {
    read_frame_upto(file, name, offset, frame_len, None)
}

/// [`read_frame`], decoding only the first `upto` bytes of the payload when
/// `upto` is set: a random read of one block then costs on average half a
/// frame's reading and decoding. A prefix is not covered by zstd's checksum
/// (that needs the whole frame): the caller checks the chunks it uses with
/// blake3.
pub fn read_frame_upto(file: &File, name: &str, offset: u64, frame_len: u32, upto: Option<usize>) -> Result<DecodedFrame> {
    let what = format_args!("pack {name} at offset {offset}");
    let read = |buf: &mut [u8], at: u64| file.read_exact_at(buf, at).map_err(|e| read_error(e, &what));
    // A prefix reads the header and the start of the payload first (one
    // read covers both for frames of the usual size), then the payload only
    // as far as the decoder gets.
    let first = match upto {
        Some(_) => (frame_len as usize).min(PREFIX_FIRST_READ),
        None => frame_len as usize,
    };
    let mut buf = vec![0u8; first];
    read(&mut buf, offset)?;
    if buf.len() >= FRAME_FIXED_SIZE {
        let need = FrameHeader::announced_len(&buf, &what)?.min(frame_len as usize);
        if need > buf.len() {
            let have = buf.len();
            buf.resize(need, 0);
            read(&mut buf[have..], offset + have as u64)?;
        }
    }
    let header = parse_frame(&buf, frame_len, &what)?;
    let hl = header.header_len();
    let raw = match upto {
        Some(n) if n < header.raw_len as usize => {
            // About the share of the payload that holds n of its raw bytes,
            // plus a margin for zstd's blocks; the decoder asks for more if
            // that falls short.
            let stored = header.stored_len as usize;
            let estimate = (stored as u64 * n as u64 / header.raw_len as u64) as usize + PREFIX_MARGIN;
            let mut have = buf.split_off(hl.min(buf.len()));
            decode_prefix_from(&header, n, &what, &mut |at| {
                if !have.is_empty() {
                    return Ok(std::mem::take(&mut have));
                }
                let want = estimate.saturating_sub(at).max(PREFIX_MARGIN).min(stored.saturating_sub(at));
                let mut piece = vec![0u8; want];
                read(&mut piece, offset + (hl + at) as u64)?;
                Ok(piece)
            })?
        }
        _ => {
            if buf.len() < frame_len as usize {
                let have = buf.len();
                buf.resize(frame_len as usize, 0);
                read(&mut buf[have..], offset + have as u64)?;
            }
            decode_payload(&header, &buf[hl..], &what)?
        }
    };
    Ok(DecodedFrame { header, raw })
}

/// The first read of a frame whose prefix is wanted: the header and some
/// payload (bytes).
const PREFIX_FIRST_READ: usize = 64 << 10;
/// What the payload estimate of a prefix adds, and then asks for at a time.
const PREFIX_MARGIN: usize = 32 << 10;

/// Reads the header (chunk table included) of the frame at `offset`.
pub fn read_header(file: &File, offset: u64, what: &dyn std::fmt::Display) -> Result<FrameHeader> {
    let truncated = || Error::Corrupt(format!("{what}: truncated frame header"));
    let mut hb = vec![0u8; FRAME_FIXED_SIZE];
    file.read_exact_at(&mut hb, offset).map_err(|_| truncated())?;
    hb.resize(FrameHeader::announced_len(&hb, what)?, 0);
    file.read_exact_at(&mut hb[FRAME_FIXED_SIZE..], offset + FRAME_FIXED_SIZE as u64).map_err(|_| truncated())?;
    FrameHeader::parse(&hb, what)
}

/// One frame after another read and decoded into the same two buffers, so
/// that no frame allocates, or faults in fresh pages (which costs more than
/// the decoding on a VM): a restore worker's. The pack is read around the
/// page cache where its filesystem allows, since a restore reads each frame
/// once.
pub struct FrameBuf {
    stored: IoBuf,
    raw: IoBuf,
}

impl Default for FrameBuf {
    fn default() -> FrameBuf {
        FrameBuf { stored: IoBuf::new(0), raw: IoBuf::new(0) }
    }
}

impl FrameBuf {
    /// Reads and decodes the frame `loc` points into. The decoded bytes are
    /// 4 KiB-aligned, so they can be written with direct I/O.
    pub fn read(&mut self, packs: &PackFiles, loc: &ChunkLocation) -> Result<DecodedFrame<&[u8]>> {
        let what = format_args!("pack {} at offset {}", loc.pack, loc.offset);
        let direct = packs.direct_file(&loc.pack)?;
        let bytes = read_stored(&*packs.file(&loc.pack)?, direct.as_deref(), loc.offset, loc.frame_len, &mut self.stored, &what)?;
        let header = parse_frame(bytes, loc.frame_len, &what)?;
        self.raw.resize(header.raw_len as usize, 0);
        decode_payload_into(&header, &bytes[header.header_len()..], &mut self.raw, &what)?;
        Ok(DecodedFrame { header, raw: &self.raw[..] })
    }
}

/// Reads and decodes the frame of `frame_len` bytes at `offset` of `file`
/// into a vector of its own, like [`read_frame`], but reading the frame's
/// stored bytes into `buf` (with O_DIRECT through `direct` where given):
/// for a reader that decodes many frames once each and keeps them.
pub fn read_frame_via(file: &File, direct: Option<&File>, name: &str, offset: u64, frame_len: u32, buf: &mut IoBuf) -> Result<DecodedFrame> {
    let what = format_args!("pack {name} at offset {offset}");
    let bytes = read_stored(file, direct, offset, frame_len, buf, &what)?;
    let header = parse_frame(bytes, frame_len, &what)?;
    let raw = decode_payload(&header, &bytes[header.header_len()..], &what)?;
    Ok(DecodedFrame { header, raw })
}

/// The header of a frame read whole, checked against the length the index
/// gives it.
fn parse_frame(bytes: &[u8], frame_len: u32, what: &dyn std::fmt::Display) -> Result<FrameHeader> {
    let header = FrameHeader::parse(bytes, what)?;
    if header.frame_len() != frame_len as u64 {
        return Err(Error::Corrupt(format!("{what}: frame is {} bytes, the index says {frame_len}", header.frame_len())));
    }
    Ok(header)
}

/// The `len` bytes at `offset` of a pack, read into `buf`: with O_DIRECT
/// through `direct` when given and the filesystem takes it, else through
/// `file` and the page cache.
fn read_stored<'a>(file: &File, direct: Option<&File>, offset: u64, len: u32, buf: &'a mut IoBuf, what: &dyn std::fmt::Display) -> Result<&'a [u8]> {
    let len = len as usize;
    let at = match direct {
        Some(f) => read_direct(f, offset, len, buf).map_err(|e| read_error(e, what))?,
        None => None,
    };
    let at = match at {
        Some(at) => at,
        None => {
            buf.resize(len, 0);
            file.read_exact_at(&mut buf[..len], offset).map_err(|e| read_error(e, what))?;
            0
        }
    };
    Ok(&buf[at..at + len])
}

/// Reads `len` bytes at `offset` of a file opened with O_DIRECT into `buf`,
/// widened to whole pages; returns where in `buf` they start, or None when
/// the filesystem refuses direct reads after all (EINVAL).
fn read_direct(f: &File, offset: u64, len: usize, buf: &mut IoBuf) -> std::io::Result<Option<usize>> {
    let start = offset / DIRECT_ALIGN as u64 * DIRECT_ALIGN as u64;
    let lead = (offset - start) as usize;
    let span = (lead + len).next_multiple_of(DIRECT_ALIGN);
    buf.resize(span, 0);
    // The pack's last page may be short: read until its end.
    let mut got = 0;
    while got < lead + len {
        match f.read_at(&mut buf[got..span], start + got as u64) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && got == 0 => return Ok(None),
            Err(e) => return Err(e),
        }
        if got % DIRECT_ALIGN != 0 && got < lead + len {
            // A short read inside the file ends a direct read: the rest
            // would be unaligned.
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(Some(lead))
}

fn read_error(e: std::io::Error, what: &dyn std::fmt::Display) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::Corrupt(format!("{what}: pack is truncated"))
    } else {
        Error::io(format!("read {what}"), e)
    }
}

/// Decoded frames kept by [`PackFiles`]: a reader through the index (map
/// pages and config files, a restore to a dynamic VHD) asks for
/// the chunks of one frame one after another, and must not decompress the
/// frame again for each.
const FRAME_CACHE_FRAMES: usize = 32;

/// Open pack files, shared by readers. Files are opened on first use and kept
/// open; a pack that `gc` unlinks stays readable through an fd opened before.
pub struct PackFiles {
    vault: PathBuf,
    open: Mutex<HashMap<String, Arc<File>>>,
    /// The same packs opened with O_DIRECT (None: the filesystem has none).
    direct: Mutex<HashMap<String, Option<Arc<File>>>>,
    frames: quick_cache::sync::Cache<(String, u64), Arc<DecodedFrame>>,
}

impl PackFiles {
    pub fn new(vault: &Path) -> PackFiles {
        PackFiles { vault: vault.to_owned(), open: Mutex::new(HashMap::new()), direct: Mutex::new(HashMap::new()), frames: quick_cache::sync::Cache::new(FRAME_CACHE_FRAMES) }
    }

    pub fn file(&self, name: &str) -> Result<Arc<File>> {
        if let Some(f) = self.open.lock().unwrap().get(name) {
            return Ok(f.clone());
        }
        let path = pack_path(&self.vault, name);
        let f = Arc::new(File::open(&path).map_err(|e| Error::io(format!("open pack {name}"), e))?);
        self.open.lock().unwrap().insert(name.to_owned(), f.clone());
        Ok(f)
    }

    /// Pack `name` opened for direct reads, if its filesystem has them (and
    /// KLUIS_NO_DIRECT is not set).
    pub fn direct_file(&self, name: &str) -> Result<Option<Arc<File>>> {
        if let Some(f) = self.direct.lock().unwrap().get(name) {
            return Ok(f.clone());
        }
        self.file(name)?; // a missing pack is an error, not "no direct I/O"
        let f = open_direct(&pack_path(&self.vault, name), false).map(Arc::new);
        self.direct.lock().unwrap().insert(name.to_owned(), f.clone());
        Ok(f)
    }

    /// The decoded frame `loc` points into.
    fn frame(&self, loc: &ChunkLocation) -> Result<Arc<DecodedFrame>> {
        // Concurrent misses on one frame wait for a single decompression.
        self.frames.get_or_insert_with(&(loc.pack.clone(), loc.offset), || {
            read_frame(&*self.file(&loc.pack)?, &loc.pack, loc.offset, loc.frame_len).map(Arc::new)
        })
    }

    /// Reads chunk `id` from where the index says it is, checking its hash.
    pub fn read_chunk(&self, loc: &ChunkLocation, id: ChunkId) -> Result<Vec<u8>> {
        let frame = self.frame(loc)?;
        Ok(frame.checked_slice(&id, loc.inner, loc.raw_len, &format_args!("pack {}", loc.pack))?.to_vec())
    }

    /// Forgets open files and decoded frames (after gc replaced packs).
    pub fn clear(&self) {
        self.open.lock().unwrap().clear();
        self.direct.lock().unwrap().clear();
        self.frames.clear();
    }
}

/// One frame found by [`scan_pack`]; with `read_data`, `errors` says per
/// chunk why it is damaged (None when sound); without, it is empty.
pub struct ScannedFrame {
    pub header: FrameHeader,
    pub offset: u64,
    pub errors: Vec<Option<String>>,
}

/// Walks a pack's frames from its own bytes. With `read_data`, every payload
/// is decoded and every chunk hash-checked. Stops at the first unreadable
/// header with an error naming its offset.
pub fn scan_pack(path: &Path, read_data: bool, mut visit: impl FnMut(ScannedFrame)) -> Result<()> {
    let f = File::open(path).map_err(|e| Error::io_path("open pack", path, e))?;
    let size = f.metadata().ctx(|| format!("stat {}", path.display()))?.len();
    let mut head = [0u8; PACK_HEADER_SIZE as usize];
    f.read_exact_at(&mut head, 0).map_err(|_| Error::Corrupt(format!("{}: truncated pack header", path.display())))?;
    if head != PACK_HEADER {
        return Err(Error::Corrupt(format!("{}: not a kluis pack of this format (bad header)", path.display())));
    }
    let mut offset = PACK_HEADER_SIZE;
    let mut payload = Vec::new();
    while offset < size {
        let what = format_args!("{} at offset {offset}", path.display());
        let header = read_header(&f, offset, &what)?;
        let end = offset + header.frame_len();
        if end > size {
            return Err(Error::Corrupt(format!("{what}: frame runs past the end of the pack")));
        }
        let mut errors = Vec::new();
        if read_data {
            payload.resize(header.stored_len as usize, 0);
            f.read_exact_at(&mut payload, offset + header.header_len() as u64).ctx(|| format!("read {}", path.display()))?;
            errors = check_frame(&header, &payload, &format_args!("pack {}", path.display())).errors;
        }
        visit(ScannedFrame { header, offset, errors });
        offset = end;
    }
    Ok(())
}

/// Names of all finished packs in the vault's `packs/` directory.
pub fn packs_on_disk(vault: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let root = vault.join("packs");
    let Ok(dirs) = fs::read_dir(&root) else { return Ok(out) };
    for d in dirs {
        let d = d.ctx(|| format!("list {}", root.display()))?;
        if d.file_name() == "tmp" || !d.path().is_dir() {
            continue;
        }
        for f in fs::read_dir(d.path()).ctx(|| format!("list {}", d.path().display()))? {
            let f = f.ctx(|| format!("list {}", d.path().display()))?;
            if let Some(name) = f.file_name().to_str().and_then(|n| n.strip_suffix(".pack")) {
                out.push(name.to_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ChunkKind;

    /// On the temporary directory's filesystem and on the target's (direct
    /// reads where a filesystem has them: tmpfs has not).
    #[test]
    fn write_read_scan() {
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        fs::create_dir_all(&target).unwrap();
        for dir in [tempfile::tempdir().unwrap(), tempfile::tempdir_in(&target).unwrap()] {
            write_read_scan_in(dir.path());
        }
    }

    fn write_read_scan_in(dir: &Path) {
        let mut w = PackWriter::create(dir).unwrap();
        let mut locs = Vec::new();
        for i in 0..10u8 {
            // Frames of one to three chunks.
            let data: Vec<Vec<u8>> = (0..1 + i % 3).map(|j| vec![i ^ j; 1000 + i as usize + j as usize]).collect();
            let chunks: Vec<(ChunkId, &[u8])> = data.iter().map(|d| (ChunkId::of(d), &d[..])).collect();
            let f = Frame::encode(ChunkKind::Data, &chunks, 3).unwrap();
            let off = w.append(&f).unwrap();
            for ((e, r), d) in f.header.ranges().zip(&data) {
                locs.push((e.id, off, f.frame_len() as u32, r.start as u32, d.clone()));
            }
        }
        // Then 18 MiB of incompressible frames, so the pack is sent to the
        // disk in steps on the way (start_writeback) and read back across them.
        assert_eq!(w.written_back, 0);
        let mut chunks_written = locs.len();
        for i in 0..6u8 {
            let data: Vec<Vec<u8>> = (0..48u8)
                .map(|j| {
                    let mut d = vec![0u8; 65536];
                    blake3::Hasher::new().update(&[i, j]).finalize_xof().fill(&mut d);
                    d
                })
                .collect();
            let chunks: Vec<(ChunkId, &[u8])> = data.iter().map(|d| (ChunkId::of(d), &d[..])).collect();
            let f = Frame::encode(ChunkKind::Data, &chunks, 3).unwrap();
            let off = w.append(&f).unwrap();
            chunks_written += chunks.len();
            // Each read decodes the whole frame: the first and last chunk do.
            for ((e, r), d) in f.header.ranges().zip(&data).step_by(47) {
                locs.push((e.id, off, f.frame_len() as u32, r.start as u32, d.clone()));
            }
        }
        assert!(w.written_back >= 2 * WRITEBACK_STEP && w.len() - w.written_back < WRITEBACK_STEP, "{} of {}", w.written_back, w.len());
        let p = w.finish().unwrap();
        assert_eq!(packs_on_disk(dir).unwrap(), vec![p.name.clone()]);
        let files = PackFiles::new(dir);
        // One FrameBuf for all frames, big and small, in the pack's order
        // and backwards; the pack's last frame ends mid-page.
        let (mut buf, mut stored) = (FrameBuf::default(), IoBuf::new(0));
        for (id, offset, frame_len, inner, data) in locs.iter().chain(locs.iter().rev()) {
            let loc = ChunkLocation { pack: p.name.clone(), offset: *offset, frame_len: *frame_len, inner: *inner, raw_len: data.len() as u32 };
            assert_eq!(&files.read_chunk(&loc, *id).unwrap(), data);
            let f = read_frame_via(&files.file(&p.name).unwrap(), files.direct_file(&p.name).unwrap().as_deref(), &p.name, *offset, *frame_len, &mut stored).unwrap();
            assert_eq!(f.checked_slice(id, *inner, data.len() as u32, &"t").unwrap(), &data[..]);
            let f = buf.read(&files, &loc).unwrap();
            assert_eq!(f.checked_slice(id, *inner, data.len() as u32, &"t").unwrap(), &data[..]);
            assert_eq!(f.raw.as_ptr() as usize % DIRECT_ALIGN, 0);
            // The index pointing at the wrong place is caught.
            let wrong = ChunkLocation { inner: inner + 1, ..loc.clone() };
            assert!(files.read_chunk(&wrong, *id).is_err());
            assert!(buf.read(&files, &loc).unwrap().checked_slice(id, inner + 1, data.len() as u32, &"t").is_err());
            let wrong = ChunkLocation { frame_len: frame_len + 1, ..loc };
            assert!(buf.read(&files, &wrong).is_err());
        }
        assert_eq!(files.direct_file(&p.name).unwrap().is_some(), crate::image::open_direct(&pack_path(dir, &p.name), false).is_some());
        let mut n = 0;
        scan_pack(&pack_path(dir, &p.name), true, |f| {
            assert!(f.errors.iter().all(Option::is_none));
            n += f.header.chunks.len();
        })
        .unwrap();
        assert_eq!(n, chunks_written);
        // A pack cut short: its last frame is reported truncated.
        let (_, offset, frame_len, inner, data) = locs.last().unwrap();
        let path = pack_path(dir, &p.name);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(offset + *frame_len as u64 - 10).unwrap();
        let loc = ChunkLocation { pack: p.name.clone(), offset: *offset, frame_len: *frame_len, inner: *inner, raw_len: data.len() as u32 };
        let e = FrameBuf::default().read(&PackFiles::new(dir), &loc).err().expect("a truncated frame is an error");
        assert!(e.to_string().contains("truncated"), "{e}");
        // A dropped, unfinished writer leaves nothing behind.
        let w = PackWriter::create(dir).unwrap();
        drop(w);
        assert_eq!(fs::read_dir(dir.join("packs/tmp")).unwrap().count(), 0);
    }
}
