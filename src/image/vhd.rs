//! Microsoft VHD images ("Virtual Hard Disk Image Format Specification" 1.0),
//! read natively and written without external tools.
//!
//! All integers are big-endian. A *fixed* VHD is the disk's bytes and a
//! 512-byte footer. A *dynamic* VHD is a copy of the footer at 0, a 1024-byte
//! dynamic header at 512, the block allocation table (BAT: one u32 sector
//! offset per block, `0xFFFFFFFF` = unallocated), blocks (a sector bitmap, bit
//! set = sector present, most significant bit first, then `block_size` bytes
//! of data), and the footer again at the very end.
//!
//! Reading validates everything it relies on, so a damaged file is an error
//! naming the file, never a panic or a silently wrong disk. Reads are
//! positional and the BAT lives in memory: many threads may read at once.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{DiskSource, SourceFile};
use crate::error::{Error, IoContext, Result};

pub const FOOTER_SIZE: u64 = 512;
/// Block size of the dynamic VHDs we write: the spec's default, also what
/// Hyper-V and qemu use.
pub const BLOCK_SIZE: u64 = 2 << 20;
/// The largest disk we write as VHD: qemu refuses to open anything above
/// 65535 × 255 × 255 sectors (a little under the spec's 2040 GiB).
pub const MAX_SIZE: u64 = 65535 * 255 * 255 * SECTOR;

const SECTOR: u64 = 512;
const DYN_HEADER_SIZE: usize = 1024;
const COOKIE: &[u8; 8] = b"conectix";
const SPARSE_COOKIE: &[u8; 8] = b"cxsparse";
const TYPE_FIXED: u32 = 2;
const TYPE_DYNAMIC: u32 = 3;
const TYPE_DIFFERENCING: u32 = 4;
const UNALLOCATED: u32 = u32::MAX;
/// Seconds from the Unix epoch to 2000-01-01T00:00:00Z, the VHD epoch.
const VHD_EPOCH: i64 = 946_684_800;

/// Creator application written in our footers. The spec makes current_size
/// the disk size, but qemu's vpc driver (qemu-img, libvirt) goes by the CHS
/// geometry unless it is the maximum 65535/16/255 or the creator app is one
/// whose current_size qemu trusts. CHS rarely fits a size exactly (10 MiB +
/// 1.5 KiB loses 15 sectors), so we must be on the trusted side:
/// - qemu 2.6 (2016) to 9.2 trusts only "win ", "qem2", "d2v ", "CTXS", "tap\0";
/// - qemu 10.0 and later trust everything but "vpc " and "qemu".
///
/// A name of our own would break every qemu before 10.0 (Debian 12, Ubuntu
/// 24.04), so we borrow "qem2": `qemu-img create -o force_size=on` writes it,
/// and its meaning, "current_size is the size", is exactly our contract.
/// (Older qemus trusted only "d2v "; not worth posing as Disk2vhd for them.)
/// Hyper-V, Windows, VirtualBox and Xen use current_size whatever this says.
/// The geometry stays the spec's, for BIOS-era guests.
const CREATOR_APP: &[u8; 4] = b"qem2";
/// Informational only. "Wi2k" is what qemu and Hyper-V write; the spec has
/// no host OS code for Linux.
const CREATOR_VERSION: u32 = 0x0001_0000;
const CREATOR_OS: &[u8; 4] = b"Wi2k";

/// Footer field offsets (spec, "Hard Disk Footer Format").
mod footer {
    pub const FEATURES: usize = 8;
    pub const VERSION: usize = 12;
    pub const DATA_OFFSET: usize = 16;
    pub const TIMESTAMP: usize = 24;
    pub const CREATOR_APP: usize = 28;
    pub const CREATOR_VERSION: usize = 32;
    pub const CREATOR_OS: usize = 36;
    pub const ORIGINAL_SIZE: usize = 40;
    pub const CURRENT_SIZE: usize = 48;
    pub const GEOMETRY: usize = 56;
    pub const DISK_TYPE: usize = 60;
    pub const CHECKSUM: usize = 64;
    pub const UNIQUE_ID: usize = 68;
}

/// Dynamic header field offsets (spec, "Dynamic Disk Header Format").
mod header {
    pub const DATA_OFFSET: usize = 8;
    pub const TABLE_OFFSET: usize = 16;
    pub const VERSION: usize = 24;
    pub const MAX_TABLE_ENTRIES: usize = 28;
    pub const BLOCK_SIZE: usize = 32;
    pub const CHECKSUM: usize = 36;
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
    b[at..at + bytes.len()].copy_from_slice(bytes);
}

/// One's complement of the byte sum, skipping the 4-byte checksum field
/// itself (the spec sums with the field zeroed, which is the same thing).
fn checksum(b: &[u8], field: usize) -> u32 {
    let skip = field..field + 4;
    !b.iter().enumerate().filter(|(i, _)| !skip.contains(i)).fold(0u32, |a, (_, &x)| a.wrapping_add(u32::from(x)))
}

fn corrupt(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("{}: {msg}", path.display()))
}

/// `return Err(Corrupt("<path>: <message>"))`.
macro_rules! bail {
    ($path:expr, $($fmt:tt)+) => {
        return Err(corrupt($path, format!($($fmt)+)))
    };
}

/// Converts Unix seconds to a VHD timestamp (seconds since 2000-01-01 UTC),
/// clamped to what the u32 field can hold.
pub fn vhd_timestamp(unix_secs: i64) -> u32 {
    (unix_secs - VHD_EPOCH).clamp(0, i64::from(u32::MAX)) as u32
}

// ---------------------------------------------------------------- reading

/// The footer and, when found at the end of the file, its length: images
/// from before Virtual PC 2004 have a 511-byte one. `None` for the length
/// means only a dynamic VHD's copy at offset 0 is left: the end is gone.
fn find_footer(file: &File, len: u64, path: &Path) -> Result<Option<([u8; 512], Option<u64>)>> {
    let head = (len >= 512).then_some(0);
    for (at, n) in [(len.checked_sub(512), 512), (len.checked_sub(511), 511), (head, 512)] {
        let Some(at) = at else { continue };
        let mut buf = [0u8; 512];
        file.read_exact_at(&mut buf[..n], at).ctx(|| format!("read VHD footer of {}", path.display()))?;
        // A raw disk has no business starting with a footer: at offset 0,
        // require a type that has a copy there.
        let t = be32(&buf, footer::DISK_TYPE);
        let tail = at > 0 || n as u64 == len;
        if &buf[..8] == COOKIE && (tail || t == TYPE_DYNAMIC || t == TYPE_DIFFERENCING) {
            return Ok(Some((buf, tail.then_some(n as u64))));
        }
    }
    Ok(None)
}

/// True if the file has the `conectix` cookie at its end (512- or old 511-byte
/// footer) or a dynamic VHD's footer copy at 0. [`VhdSource::open`] checks the
/// rest, so a damaged VHD is reported as such, not backed up as raw bytes.
pub fn looks_like_vhd(file: &File, len: u64) -> Result<bool> {
    Ok(find_footer(file, len, Path::new("disk image"))?.is_some())
}

pub struct VhdSource {
    src: SourceFile,
    size: u64,
    dynamic: Option<Dynamic>,
}

struct Dynamic {
    /// One entry per block of the virtual disk (entries past it are ignored).
    bat: Vec<u32>,
    block_size: u64,
    bitmap_size: u64,
    /// Per block: is every sector present, as far as we know? Writers (qemu,
    /// Hyper-V, us) nearly always set every bit, so after one look at the
    /// bitmap a block is read with a single pread.
    full: Vec<AtomicBool>,
}

impl VhdSource {
    pub fn open(file: File, path: &Path) -> Result<Self> {
        let len = file.metadata().ctx(|| format!("cannot stat {}", path.display()))?.len();
        let (foot, at) = find_footer(&file, len, path)?.ok_or_else(|| {
            corrupt(path, "no VHD footer ('conectix' cookie) at the end of the file")
        })?;
        let Some(footer_len) = at else {
            bail!(path, "dynamic VHD has no footer at the end of the file (truncated?)");
        };
        let (stored, computed) = (be32(&foot, footer::CHECKSUM), checksum(&foot, footer::CHECKSUM));
        if stored != computed {
            bail!(path, "VHD footer checksum mismatch (stored {stored:#010x}, computed {computed:#010x})");
        }
        let version = be32(&foot, footer::VERSION);
        if version >> 16 != 1 {
            bail!(path, "unsupported VHD footer version {version:#010x}");
        }
        let size = be64(&foot, footer::CURRENT_SIZE);
        let end_of_data = len - footer_len;
        let dynamic = match be32(&foot, footer::DISK_TYPE) {
            TYPE_FIXED if size > end_of_data => {
                bail!(path, "fixed VHD of {size} bytes holds only {end_of_data} bytes of data (truncated?)")
            }
            TYPE_FIXED => None,
            TYPE_DYNAMIC => Some(Dynamic::open(&file, path, &foot, size, end_of_data)?),
            TYPE_DIFFERENCING => {
                return Err(Error::InvalidInput(format!(
                    "{}: differencing VHDs are not supported; merge it first (qemu-img convert)",
                    path.display()
                )));
            }
            t => bail!(path, "unknown VHD disk type {t}"),
        };
        Ok(VhdSource { src: SourceFile::new(file, path), size, dynamic })
    }

    fn read_file(&self, buf: &mut [u8], at: u64) -> Result<()> {
        self.src.read_at(buf, at)
    }
}

impl Dynamic {
    fn open(file: &File, path: &Path, foot: &[u8], size: u64, end_of_data: u64) -> Result<Self> {
        let hdr_off = be64(foot, footer::DATA_OFFSET);
        if hdr_off.checked_add(DYN_HEADER_SIZE as u64).is_none_or(|e| e > end_of_data) {
            bail!(path, "dynamic header offset {hdr_off} lies past the end of the file");
        }
        let mut hdr = [0u8; DYN_HEADER_SIZE];
        file.read_exact_at(&mut hdr, hdr_off)
            .ctx(|| format!("read dynamic VHD header of {}", path.display()))?;
        if &hdr[..8] != SPARSE_COOKIE {
            bail!(path, "dynamic VHD header lacks its 'cxsparse' cookie");
        }
        if be32(&hdr, header::CHECKSUM) != checksum(&hdr, header::CHECKSUM) {
            bail!(path, "dynamic VHD header checksum mismatch");
        }
        let version = be32(&hdr, header::VERSION);
        if version >> 16 != 1 {
            bail!(path, "unsupported dynamic VHD header version {version:#010x}");
        }
        let block_size = u64::from(be32(&hdr, header::BLOCK_SIZE));
        if !block_size.is_power_of_two() || block_size < SECTOR {
            bail!(path, "invalid VHD block size {block_size}");
        }
        let blocks = size.div_ceil(block_size);
        let max_entries = u64::from(be32(&hdr, header::MAX_TABLE_ENTRIES));
        if max_entries < blocks {
            bail!(path, "BAT has {max_entries} entries but a disk of {size} bytes needs {blocks}");
        }
        // Bounds-checking the table against the file first also caps the
        // allocations below by the file's size, whatever the header claims.
        let table_off = be64(&hdr, header::TABLE_OFFSET);
        if table_off.checked_add(blocks * 4).is_none_or(|e| e > end_of_data) {
            bail!(path, "VHD block allocation table lies past the end of the file (truncated?)");
        }
        let mut raw = vec![0u8; (blocks * 4) as usize];
        file.read_exact_at(&mut raw, table_off)
            .ctx(|| format!("read VHD block allocation table of {}", path.display()))?;
        let bat: Vec<u32> = raw.chunks_exact(4).map(|c| be32(c, 0)).collect();
        let bitmap_size = (block_size / SECTOR).div_ceil(8).next_multiple_of(SECTOR);
        for (i, &entry) in bat.iter().enumerate() {
            if entry == UNALLOCATED {
                continue;
            }
            let used = (size - i as u64 * block_size).min(block_size).next_multiple_of(SECTOR);
            let end = u64::from(entry) * SECTOR + bitmap_size + used;
            if end > end_of_data {
                bail!(path, "VHD block {i} (sector {entry}) lies past the end of the file (truncated?)");
            }
        }
        let full = bat.iter().map(|_| AtomicBool::new(false)).collect();
        Ok(Dynamic { bat, block_size, bitmap_size, full })
    }
}

impl DiskSource for VhdSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|e| e > self.size) {
            let (path, n) = (self.src.path().display(), buf.len());
            return Err(Error::InvalidInput(format!("{path}: read of {n} bytes at {offset} passes the disk's end")));
        }
        let Some(d) = &self.dynamic else {
            return self.read_file(buf, offset);
        };
        let mut done = 0;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (block, in_block) = ((pos / d.block_size) as usize, pos % d.block_size);
            let n = ((d.block_size - in_block) as usize).min(buf.len() - done);
            let part = &mut buf[done..done + n];
            done += n;
            let entry = d.bat[block];
            if entry == UNALLOCATED {
                part.fill(0);
                continue;
            }
            let bitmap_at = u64::from(entry) * SECTOR;
            self.read_file(part, bitmap_at + d.bitmap_size + in_block)?;
            if d.full[block].load(Ordering::Relaxed) {
                continue;
            }
            let mut bitmap = vec![0u8; d.bitmap_size as usize];
            self.read_file(&mut bitmap, bitmap_at)?;
            let present = |s: u64| bitmap[(s / 8) as usize] & (0x80 >> (s % 8)) != 0;
            // Only sectors inside the virtual disk count: bits past its end
            // (last, partial block) are meaningless.
            let sectors = (self.size - block as u64 * d.block_size).min(d.block_size).div_ceil(SECTOR);
            if (0..sectors).all(present) {
                d.full[block].store(true, Ordering::Relaxed);
                continue;
            }
            let end = in_block + n as u64;
            for s in (in_block / SECTOR..end.div_ceil(SECTOR)).filter(|&s| !present(s)) {
                let from = (s * SECTOR).max(in_block) - in_block;
                let to = ((s + 1) * SECTOR).min(end) - in_block;
                part[from as usize..to as usize].fill(0);
            }
        }
        Ok(())
    }

    fn data_ranges(&self) -> Result<Vec<Range<u64>>> {
        let Some(d) = &self.dynamic else {
            // The data area starts at 0, so the file's own extents, clamped
            // to the disk (the footer is past it), are the disk's.
            return super::raw::data_ranges_of(self.src.file(), self.size, self.src.path());
        };
        let mut out: Vec<Range<u64>> = Vec::new();
        for (i, _) in d.bat.iter().enumerate().filter(|(_, e)| **e != UNALLOCATED) {
            let start = i as u64 * d.block_size;
            let end = (start + d.block_size).min(self.size);
            match out.last_mut() {
                Some(last) if last.end == start => last.end = end,
                _ => out.push(start..end),
            }
        }
        Ok(out)
    }

    fn kind(&self) -> &'static str {
        if self.dynamic.is_some() { "vhd-dynamic" } else { "vhd-fixed" }
    }

    fn set_direct(&self, on: bool) {
        self.src.set_direct(on);
    }

    fn will_read(&self, offset: u64, len: u64) {
        // A fixed VHD's data sits at the disk's own offsets; a dynamic one's
        // blocks are wherever they were allocated, so no hint for those.
        if self.dynamic.is_none() {
            self.src.will_read(offset, len);
        }
    }
}

// ---------------------------------------------------------------- writing

/// Size of the data area of a VHD for a disk of `size` bytes: rounded up to a
/// multiple of 512. VHD sizes count whole sectors, so a disk of an odd byte
/// size comes back from a VHD padded with zeros to the next sector.
pub fn vhd_data_size(size: u64) -> u64 {
    size.next_multiple_of(SECTOR)
}

/// CHS geometry of a disk of `sectors` sectors, per the spec's appendix
/// ("CHS Calculation"): capped at 65535/16/255, and otherwise rounding down,
/// so it may describe slightly less than the disk (see [`CREATOR_APP`]).
fn geometry(sectors: u64) -> (u16, u8, u8) {
    let total = sectors.min(65535 * 16 * 255);
    let (spt, heads, cyl_times_heads) = if total >= 65535 * 16 * 63 {
        (255, 16, total / 255)
    } else {
        let (mut spt, mut cth) = (17, total / 17);
        let mut heads = cth.div_ceil(1024).max(4);
        if cth >= heads * 1024 || heads > 16 {
            (spt, heads, cth) = (31, 16, total / 31);
        }
        if cth >= heads * 1024 {
            (spt, heads, cth) = (63, 16, total / 63);
        }
        (spt, heads, cth)
    };
    ((cyl_times_heads / heads) as u16, heads as u8, spt as u8)
}

fn make_footer(size: u64, disk_type: u32, data_offset: u64, unique_id: [u8; 16], timestamp: u32) -> [u8; 512] {
    let data_size = vhd_data_size(size);
    let (cyls, heads, spt) = geometry(data_size / SECTOR);
    let mut f = [0u8; 512];
    put(&mut f, 0, COOKIE);
    // Bit 1 of the features is "reserved, must always be set".
    put(&mut f, footer::FEATURES, &2u32.to_be_bytes());
    put(&mut f, footer::VERSION, &0x0001_0000u32.to_be_bytes());
    put(&mut f, footer::DATA_OFFSET, &data_offset.to_be_bytes());
    put(&mut f, footer::TIMESTAMP, &timestamp.to_be_bytes());
    put(&mut f, footer::CREATOR_APP, CREATOR_APP);
    put(&mut f, footer::CREATOR_VERSION, &CREATOR_VERSION.to_be_bytes());
    put(&mut f, footer::CREATOR_OS, CREATOR_OS);
    put(&mut f, footer::ORIGINAL_SIZE, &data_size.to_be_bytes());
    put(&mut f, footer::CURRENT_SIZE, &data_size.to_be_bytes());
    put(&mut f, footer::GEOMETRY, &[(cyls >> 8) as u8, cyls as u8, heads, spt]);
    put(&mut f, footer::DISK_TYPE, &disk_type.to_be_bytes());
    put(&mut f, footer::UNIQUE_ID, &unique_id);
    // Saved state (byte 84) and the reserved rest stay zero.
    let sum = checksum(&f, footer::CHECKSUM);
    put(&mut f, footer::CHECKSUM, &sum.to_be_bytes());
    f
}

/// The 512-byte footer of a fixed VHD whose data area is `vhd_data_size(size)`.
/// A pure function of its arguments, so a FUSE mount can serve `NAME.vhd` as
/// the disk, zero padding to the sector, then this footer, with no state.
pub fn fixed_footer(size: u64, unique_id: [u8; 16], timestamp: u32) -> [u8; 512] {
    make_footer(size, TYPE_FIXED, u64::MAX, unique_id, timestamp)
}

fn is_zero(b: &[u8]) -> bool {
    // OR-folding fixed-size chunks vectorises; a byte-wise `all` does not.
    let chunks = b.chunks_exact(64);
    let tail = chunks.remainder();
    chunks.into_iter().all(|c| c.iter().fold(0, |a, &x| a | x) == 0) && tail.iter().all(|&x| x == 0)
}

/// Write a dynamic VHD of a disk of `size` bytes to `out` (an empty file).
/// `data_ranges` are sorted disjoint byte ranges that may hold non-zero data
/// (everything else is zeros); only the 2 MiB VHD blocks intersecting them
/// are allocated, and of those, blocks that turn out all-zero are not.
/// `read(offset, buf)` fills `buf` with the disk bytes at `offset`; it is
/// called once per allocated block, with the block's span clipped to `size`.
///
/// Layout: footer copy, header, BAT (at 1536, as qemu and Hyper-V place it),
/// then blocks packed in disk order, then the footer. The file is not synced:
/// that is the caller's choice (a restore syncs before renaming into place).
pub fn write_dynamic(
    out: &File,
    size: u64,
    data_ranges: &[Range<u64>],
    unique_id: [u8; 16],
    timestamp: u32,
    read: &mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
) -> Result<()> {
    if size > MAX_SIZE {
        return Err(Error::InvalidInput(format!("a VHD holds at most {MAX_SIZE} bytes; this disk has {size}")));
    }
    let write = |buf: &[u8], at: u64| out.write_all_at(buf, at).ctx(|| format!("write VHD at offset {at}"));
    let entries = vhd_data_size(size).div_ceil(BLOCK_SIZE);
    let table_off = FOOTER_SIZE + DYN_HEADER_SIZE as u64;
    let mut bat = vec![UNALLOCATED; entries as usize];
    let table_len = (entries * 4).next_multiple_of(SECTOR);
    let mut next = table_off + table_len;

    // A 2 MiB block covers 4096 sectors: a 512-byte bitmap, all bits set
    // (every sector present), written in one go with the data after it.
    let bitmap = SECTOR as usize;
    let mut block = vec![0u8; bitmap + BLOCK_SIZE as usize];
    block[..bitmap].fill(0xff);
    let mut last_block = None;
    for r in data_ranges {
        let r = r.start.min(size)..r.end.min(size);
        if r.is_empty() {
            continue;
        }
        for b in r.start / BLOCK_SIZE..=(r.end - 1) / BLOCK_SIZE {
            if last_block.is_some_and(|l| b <= l) {
                continue; // already done for the previous range
            }
            last_block = Some(b);
            let start = b * BLOCK_SIZE;
            let len = ((start + BLOCK_SIZE).min(size) - start) as usize;
            let data = &mut block[bitmap..];
            data[len..].fill(0); // the last block's tail past the disk's end
            read(start, &mut data[..len])?;
            if is_zero(&data[..len]) {
                continue;
            }
            write(&block, next)?;
            bat[b as usize] = u32::try_from(next / SECTOR).expect("MAX_SIZE keeps offsets in 32-bit sectors");
            next += block.len() as u64;
        }
    }

    // The padding after the last entry is 0xFF too, as qemu writes it.
    let mut table = vec![0xffu8; table_len as usize];
    for (i, e) in bat.iter().enumerate() {
        put(&mut table, i * 4, &e.to_be_bytes());
    }
    write(&table, table_off)?;

    let mut hdr = [0u8; DYN_HEADER_SIZE];
    put(&mut hdr, 0, SPARSE_COOKIE);
    put(&mut hdr, header::DATA_OFFSET, &u64::MAX.to_be_bytes());
    put(&mut hdr, header::TABLE_OFFSET, &table_off.to_be_bytes());
    put(&mut hdr, header::VERSION, &0x0001_0000u32.to_be_bytes());
    put(&mut hdr, header::MAX_TABLE_ENTRIES, &(entries as u32).to_be_bytes());
    put(&mut hdr, header::BLOCK_SIZE, &(BLOCK_SIZE as u32).to_be_bytes());
    let sum = checksum(&hdr, header::CHECKSUM);
    put(&mut hdr, header::CHECKSUM, &sum.to_be_bytes());
    write(&hdr, FOOTER_SIZE)?;

    let foot = make_footer(size, TYPE_DYNAMIC, FOOTER_SIZE, unique_id, timestamp);
    write(&foot, 0)?;
    write(&foot, next)?;
    // In case `out` was not empty after all: nothing may follow the footer.
    out.set_len(next + FOOTER_SIZE).ctx(|| "truncate VHD after its footer".to_string())
}


#[cfg(test)]
// One-range slices are exactly what `data_ranges` means here, not a typo.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    fn qemu_img(args: &[&str]) -> (bool, String, String) {
        let o = Command::new("qemu-img").args(args).output().expect("qemu-img is installed");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (o.status.success(), text(&o.stdout), text(&o.stderr))
    }

    fn qemu_ok(args: &[&str]) -> String {
        let (ok, out, err) = qemu_img(args);
        assert!(ok, "qemu-img {args:?}: {err}");
        out
    }

    fn p(path: &Path) -> &str {
        path.to_str().unwrap()
    }

    /// A disk with random data in `ranges`, zeros elsewhere, and a sparse raw file of it.
    fn make_disk(dir: &Path, size: u64, ranges: &[Range<u64>]) -> (PathBuf, Vec<u8>) {
        let mut rng = fastrand::Rng::with_seed(size);
        let (path, mut data) = (dir.join(format!("disk-{size}.raw")), vec![0u8; size as usize]);
        let f = File::create(&path).unwrap();
        f.set_len(size).unwrap();
        for r in ranges {
            rng.fill(&mut data[r.start as usize..r.end as usize]);
            f.write_all_at(&data[r.start as usize..r.end as usize], r.start).unwrap();
        }
        (path, data)
    }

    /// Reads in steps of 192.5 KiB, which cross blocks at varying offsets.
    fn read_all(src: &VhdSource) -> Vec<u8> {
        let mut out = vec![0u8; src.size() as usize];
        for (i, chunk) in out.chunks_mut(192 * 1024 + 512).enumerate() {
            src.read_at(chunk, i as u64 * (192 * 1024 + 512)).unwrap();
        }
        out
    }

    fn open(path: &Path) -> Result<VhdSource> {
        VhdSource::open(File::open(path).unwrap(), path)
    }

    /// `qemu-img check` (vpc answers that it has none), the virtual size qemu
    /// sees, and a byte-exact conversion back to raw.
    fn assert_qemu_reads(vhd: &Path, data: &[u8]) {
        let (ok, _, err) = qemu_img(&["check", "-f", "vpc", p(vhd)]);
        assert!(ok || err.contains("does not support checks"), "check: {err}");
        let info = qemu_ok(&["info", "-f", "vpc", "--output=json", p(vhd)]);
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["virtual-size"].as_u64(), Some(data.len() as u64));
        let back = vhd.with_extension("back.raw");
        qemu_ok(&["convert", "-f", "vpc", "-O", "raw", p(vhd), p(&back)]);
        assert!(std::fs::read(&back).unwrap() == data, "{} converts back to other bytes", vhd.display());
    }

    #[test]
    fn reads_what_qemu_writes() {
        let dir = tempfile::tempdir().unwrap();
        let size = 9 * MIB + 5 * 512;
        let ranges = [0..65536, 3 * MIB + 100..3 * MIB + 70000, 4 * MIB - 10..4 * MIB + 10, size - 1000..size];
        let (raw, data) = make_disk(dir.path(), size, &ranges);
        for (sub, force) in [("fixed", false), ("fixed", true), ("dynamic", false), ("dynamic", true)] {
            let vhd = dir.path().join(format!("{sub}-{force}.vhd"));
            let opts = format!("subformat={sub}{}", if force { ",force_size=on" } else { "" });
            qemu_ok(&["convert", "-f", "raw", "-O", "vpc", "-o", &opts, p(&raw), p(&vhd)]);
            let f = File::open(&vhd).unwrap();
            assert!(looks_like_vhd(&f, f.metadata().unwrap().len()).unwrap());
            let src = VhdSource::open(f, &vhd).unwrap();
            assert_eq!(src.kind(), format!("vhd-{sub}"));
            // Without force_size qemu rounds the disk up to its CHS geometry.
            assert!(src.size() == size || !force && src.size() > size && src.size() < size + MIB);
            let got = read_all(&src);
            assert!(got[..size as usize] == data[..] && is_zero(&got[size as usize..]), "{sub} {force}");
            let mut pos = 0; // every non-zero byte lies in a data range
            for r in src.data_ranges().unwrap() {
                assert!(r.start >= pos && r.end > r.start && r.end <= src.size());
                assert!(is_zero(&got[pos as usize..r.start as usize]));
                pos = r.end;
            }
            assert!(is_zero(&got[pos as usize..]));
        }
    }

    /// `write_dynamic`'s `read` over an in-memory disk, checking we never ask
    /// for bytes past the disk's end.
    fn reader(data: &[u8]) -> impl FnMut(u64, &mut [u8]) -> Result<()> + '_ {
        move |off, buf| {
            assert!(off.is_multiple_of(BLOCK_SIZE) && off as usize + buf.len() <= data.len());
            buf.copy_from_slice(&data[off as usize..off as usize + buf.len()]);
            Ok(())
        }
    }

    #[test]
    fn qemu_reads_what_we_write() {
        let dir = tempfile::tempdir().unwrap();
        // Sector counts CHS cannot express, partial last blocks, and a size
        // that is not even a whole sector (it comes back padded).
        for size in [10 * MIB + 3 * 512, 5 * MIB, 3 * MIB + 4096 + 512, 3 * MIB + 100] {
            let mut ranges = vec![100..5000, 2 * MIB - 512..2 * MIB + 512, size - 700..size];
            let (_, data) = make_disk(dir.path(), size, &ranges);
            let (uid, ts) = ([7u8; 16], vhd_timestamp(1_767_225_600));
            let mut padded = data.clone();
            padded.resize(vhd_data_size(size) as usize, 0);

            let fixed = dir.path().join(format!("fixed-{size}.vhd"));
            let f = File::create(&fixed).unwrap();
            f.write_all_at(&data, 0).unwrap();
            f.write_all_at(&fixed_footer(size, uid, ts), vhd_data_size(size)).unwrap();
            assert_qemu_reads(&fixed, &padded);
            assert!(read_all(&open(&fixed).unwrap()) == padded);

            if size > 8 * MIB {
                ranges.insert(2, 6 * MIB..6 * MIB + 8192); // reads as zeros: block 3 stays unallocated
            }
            let dynamic = dir.path().join(format!("dynamic-{size}.vhd"));
            write_dynamic(&File::create(&dynamic).unwrap(), size, &ranges, uid, ts, &mut reader(&data)).unwrap();
            assert_qemu_reads(&dynamic, &padded);
            let src = open(&dynamic).unwrap();
            assert!(src.kind() == "vhd-dynamic" && read_all(&src) == padded);
            let end = padded.len() as u64;
            let expect = if size > 8 * MIB { vec![0..4 * MIB, 10 * MIB..end] } else { vec![0..end] };
            assert_eq!(src.data_ranges().unwrap(), expect);
        }
    }

    /// A small dynamic VHD of ours: blocks 0 and 2 allocated.
    fn small_dynamic(dir: &Path) -> (PathBuf, Vec<u8>) {
        let size = 5 * MIB;
        let (_, data) = make_disk(dir, size, &[0..MIB, 4 * MIB..size]);
        let path = dir.join("small.vhd");
        write_dynamic(&File::create(&path).unwrap(), size, &[0..size], [2; 16], 0, &mut reader(&data)).unwrap();
        (path, data)
    }

    fn patch(path: &Path, at: u64, bytes: &[u8]) {
        std::fs::OpenOptions::new().write(true).open(path).unwrap().write_all_at(bytes, at).unwrap();
    }

    fn refresh_footer_checksum(path: &Path, at: u64) {
        let mut foot = [0u8; 512];
        File::open(path).unwrap().read_exact_at(&mut foot, at).unwrap();
        patch(path, at + footer::CHECKSUM as u64, &checksum(&foot, footer::CHECKSUM).to_be_bytes());
    }

    fn open_err(path: &Path) -> String {
        open(path).err().unwrap_or_else(|| panic!("{} opened", path.display())).to_string()
    }

    #[test]
    fn damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (good, _) = small_dynamic(dir.path());
        let len = std::fs::metadata(&good).unwrap().len();
        let copy = |name: &str| {
            let p = dir.path().join(name);
            std::fs::copy(&good, &p).unwrap();
            p
        };

        // Truncated: the footer copy at 0 still identifies it, open refuses it.
        let cut = copy("cut.vhd");
        std::fs::OpenOptions::new().write(true).open(&cut).unwrap().set_len(len - MIB).unwrap();
        assert!(looks_like_vhd(&File::open(&cut).unwrap(), len - MIB).unwrap());
        assert!(open_err(&cut).contains("truncated"), "{}", open_err(&cut));

        let cases: [(u64, &[u8], &str); 4] = [
            (len - 512 + 50, &[0x5a], "footer checksum mismatch"),
            (1536 + 8, &0x0100_0000u32.to_be_bytes(), "block 2 (sector 16777216) lies past the end"),
            (512 + 40, &[1], "header checksum mismatch"),
            (len - 512 + footer::DISK_TYPE as u64, &TYPE_DIFFERENCING.to_be_bytes(), "differencing VHDs"),
        ];
        for (i, (at, bytes, expect)) in cases.into_iter().enumerate() {
            let bad = copy(&format!("bad{i}.vhd"));
            patch(&bad, at, bytes);
            if i > 0 {
                refresh_footer_checksum(&bad, len - 512);
            }
            assert!(open_err(&bad).contains(expect), "{}", open_err(&bad));
        }
        assert!(matches!(open(&dir.path().join("bad3.vhd")), Err(Error::InvalidInput(_))));

        let fixed = dir.path().join("short-fixed.vhd"); // data area shorter than the footer says
        File::create(&fixed).unwrap().write_all_at(&fixed_footer(4 * MIB, [0; 16], 0), 3 * MIB).unwrap();
        assert!(open_err(&fixed).contains("truncated"));

        // Random damage to the metadata: an error or a readable disk, never a panic.
        let mut rng = fastrand::Rng::with_seed(42);
        let (fuzz, meta) = (copy("fuzz.vhd"), std::fs::read(&good).unwrap());
        for _ in 0..300 {
            let at = if rng.bool() { rng.u64(0..2048) } else { rng.u64(len - 512..len) };
            patch(&fuzz, at, &[rng.u8(..)]);
            if rng.bool() {
                refresh_footer_checksum(&fuzz, len - 512);
            }
            if let Ok(src) = open(&fuzz) {
                let _ = src.read_at(&mut vec![0u8; src.size().min(8 * MIB) as usize], 0);
                let _ = src.data_ranges();
            }
            patch(&fuzz, 0, &meta[..2048]);
            patch(&fuzz, len - 512, &meta[meta.len() - 512..]);
        }
    }

    #[test]
    fn sector_bitmap_is_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut data) = small_dynamic(dir.path());
        patch(&path, 1536 + 512, &[0b1011_1111, 0x00]); // block 0: sectors 1 and 8..16 absent
        data[512..1024].fill(0);
        data[8 * 512..16 * 512].fill(0);
        let src = open(&path).unwrap();
        assert!(read_all(&src) == data);
        let mut small = [0u8; 700]; // ends inside an absent sector
        src.read_at(&mut small, 1000).unwrap();
        assert!(small[..] == data[1000..1700]);
    }

    #[test]
    fn geometry_follows_the_spec() {
        assert_eq!(geometry(20483), (301, 4, 17));
        assert_eq!(geometry(2 * 1024 * 1024), (2080, 16, 63)); // 1 GiB
        assert_eq!(geometry(409_600), (825, 16, 31)); // 200 MiB
        assert_eq!(geometry(65535 * 16 * 255), (65535, 16, 255));
        assert_eq!(geometry(MAX_SIZE / 512), (65535, 16, 255));
    }

    /// Golden bytes, worked out field by field from the spec's footer table:
    /// a format change must show up here, not in a customer's hypervisor.
    #[test]
    fn fixed_footer_golden() {
        let uid: [u8; 16] = std::array::from_fn(|i| 0xa0 + i as u8);
        let ts = vhd_timestamp(1_767_225_600); // 2026-01-01T00:00:00Z
        let f = fixed_footer(10 * MIB + 3 * 512, uid, ts);
        let expect = concat!(
            "636f6e6563746978", "00000002", "00010000", // cookie, features, version
            "ffffffffffffffff", "30e87580", "71656d32", // data offset, timestamp, "qem2"
            "00010000", "5769326b",                     // creator version, "Wi2k"
            "0000000000a00600", "0000000000a00600",     // original and current size
            "012d0411", "00000002", "ffffe3be",         // CHS 301/4/17, fixed, checksum
            "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf", "00",   // unique id, saved state
        );
        let hex: String = f[..85].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expect);
        assert!(is_zero(&f[85..]));
        assert_eq!(f, fixed_footer(10 * MIB + 3 * 512, uid, ts)); // deterministic
        assert_eq!(be64(&fixed_footer(1000, uid, ts), footer::CURRENT_SIZE), 1024);
    }
}
