//! Writing, reading and scanning pack files.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::frame::*;
use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;

pub fn pack_path(vault: &Path, name: &str) -> PathBuf {
    vault.join("packs").join(&name[..2]).join(format!("{name}.pack"))
}

fn fsync_dir(dir: &Path) -> Result<()> {
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

/// Where one frame landed in a finished pack.
#[derive(Clone, Copy, Debug)]
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
    frames: Vec<FrameLocation>,
}

impl PackWriter {
    pub fn create(vault: &Path) -> Result<PackWriter> {
        let name = new_pack_name();
        let tmp_dir = vault.join("packs").join("tmp");
        fs::create_dir_all(&tmp_dir).ctx(|| format!("create {}", tmp_dir.display()))?;
        let tmp_path = tmp_dir.join(format!("{name}.tmp"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .ctx(|| format!("create pack {}", tmp_path.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&PACK_HEADER).ctx(|| format!("write pack {name}"))?;
        Ok(PackWriter { vault: vault.to_owned(), name, tmp_path, out: Some(out), len: PACK_HEADER_SIZE, frames: Vec::new() })
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
    pub fn append(&mut self, chunk: &EncodedChunk) -> Result<u64> {
        let out = self.out.as_mut().expect("append after finish");
        let offset = self.len;
        let name = &self.name;
        out.write_all(&chunk.header.to_bytes()).ctx(|| format!("write pack {name}"))?;
        out.write_all(&chunk.payload).ctx(|| format!("write pack {name}"))?;
        self.len += chunk.frame_len();
        self.frames.push(FrameLocation { header: chunk.header, offset });
        Ok(offset)
    }

    /// fsync, rename into place, fsync the directory. After this returns the
    /// pack survives a crash and index rows may point into it.
    pub fn finish(mut self) -> Result<FinishedPack> {
        let out = self.out.take().expect("finish twice");
        let file = out.into_inner().map_err(|e| Error::io(format!("write pack {}", self.name), e.into_error()))?;
        file.sync_all().ctx(|| format!("fsync pack {}", self.name))?;
        drop(file);
        let final_path = pack_path(&self.vault, &self.name);
        let dir = final_path.parent().unwrap();
        fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
        fs::rename(&self.tmp_path, &final_path).ctx(|| format!("rename pack {} into place", self.name))?;
        fsync_dir(dir)?;
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

/// Open pack files, shared by readers. Files are opened on first use and kept
/// open; a pack that `gc` unlinks stays readable through an fd opened before.
#[derive(Default)]
pub struct PackFiles {
    vault: PathBuf,
    open: Mutex<HashMap<String, Arc<File>>>,
}

impl PackFiles {
    pub fn new(vault: &Path) -> PackFiles {
        PackFiles { vault: vault.to_owned(), open: Mutex::new(HashMap::new()) }
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

    /// Reads, decodes and hash-checks the chunk `id` stored at `offset` of pack
    /// `name` with `stored_len` payload bytes.
    pub fn read_chunk(&self, name: &str, offset: u64, stored_len: u32, id: ChunkId) -> Result<Vec<u8>> {
        let f = self.file(name)?;
        let mut buf = vec![0u8; FRAME_HEADER_SIZE + stored_len as usize];
        f.read_exact_at(&mut buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::Corrupt(format!("chunk {id} in pack {name}: pack is truncated"))
            } else {
                Error::io(format!("read chunk {id} from pack {name}"), e)
            }
        })?;
        let what = format_args!("pack {name} at offset {offset}");
        let h = FrameHeader::parse(&buf[..FRAME_HEADER_SIZE], &what)?;
        if h.id != id || h.stored_len != stored_len {
            return Err(Error::Corrupt(format!("chunk {id} in pack {name}: frame at offset {offset} holds chunk {} instead", h.id)));
        }
        decode_payload(&h, &buf[FRAME_HEADER_SIZE..], &format_args!("pack {name}"))
    }

    /// Forgets open files (after gc replaced packs).
    pub fn clear(&self) {
        self.open.lock().unwrap().clear();
    }
}

/// One frame found by [`scan_pack`]; `error` is set when its payload failed
/// to decode or hash (only checked with `read_data`).
pub struct ScannedFrame {
    pub header: FrameHeader,
    pub offset: u64,
    pub error: Option<String>,
}

/// Walks a pack's frames from its own bytes. With `read_data`, every payload
/// is decoded and hash-checked. Stops at the first unreadable header and
/// reports it as the `Err` of the last element's position.
pub fn scan_pack(path: &Path, read_data: bool, mut visit: impl FnMut(ScannedFrame)) -> Result<()> {
    let f = File::open(path).map_err(|e| Error::io_path("open pack", path, e))?;
    let size = f.metadata().ctx(|| format!("stat {}", path.display()))?.len();
    let mut head = [0u8; PACK_HEADER_SIZE as usize];
    f.read_exact_at(&mut head, 0).map_err(|_| Error::Corrupt(format!("{}: truncated pack header", path.display())))?;
    if head != PACK_HEADER {
        return Err(Error::Corrupt(format!("{}: not a kluis pack (bad header)", path.display())));
    }
    let mut offset = PACK_HEADER_SIZE;
    let mut hb = [0u8; FRAME_HEADER_SIZE];
    let mut payload = Vec::new();
    while offset < size {
        let what = format_args!("{} at offset {offset}", path.display());
        f.read_exact_at(&mut hb, offset).map_err(|_| Error::Corrupt(format!("{what}: truncated frame header")))?;
        let header = FrameHeader::parse(&hb, &what)?;
        let end = offset + FRAME_HEADER_SIZE as u64 + header.stored_len as u64;
        if end > size {
            return Err(Error::Corrupt(format!("{what}: frame runs past the end of the pack")));
        }
        let mut error = None;
        if read_data {
            payload.resize(header.stored_len as usize, 0);
            f.read_exact_at(&mut payload, offset + FRAME_HEADER_SIZE as u64).ctx(|| format!("read {}", path.display()))?;
            if let Err(e) = decode_payload(&header, &payload, &format_args!("pack {}", path.display())) {
                error = Some(e.to_string());
            }
        }
        visit(ScannedFrame { header, offset, error });
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
    use crate::store::{encode_chunk, ChunkKind};

    #[test]
    fn write_read_scan() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PackWriter::create(dir.path()).unwrap();
        let mut locs = Vec::new();
        for i in 0..10u8 {
            let data = vec![i; 1000 + i as usize];
            let id = ChunkId::of(&data);
            let e = encode_chunk(id, ChunkKind::Data, &data, 3).unwrap();
            locs.push((id, w.append(&e).unwrap(), e.header.stored_len, data));
        }
        let p = w.finish().unwrap();
        assert_eq!(packs_on_disk(dir.path()).unwrap(), vec![p.name.clone()]);
        let files = PackFiles::new(dir.path());
        for (id, off, sl, data) in &locs {
            assert_eq!(&files.read_chunk(&p.name, *off, *sl, *id).unwrap(), data);
        }
        let mut n = 0;
        scan_pack(&pack_path(dir.path(), &p.name), true, |f| {
            assert!(f.error.is_none());
            n += 1;
        })
        .unwrap();
        assert_eq!(n, 10);
        // A dropped, unfinished writer leaves nothing behind.
        let w = PackWriter::create(dir.path()).unwrap();
        drop(w);
        assert_eq!(fs::read_dir(dir.path().join("packs/tmp")).unwrap().count(), 0);
    }
}
