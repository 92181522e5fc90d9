//! Partition tables: GPT (primary header, else the backup at the disk's
//! end), MBR with extended/logical partitions, and the bare filesystem with
//! no table. Numbering follows Linux: GPT entry i is p(i+1); MBR primaries
//! are p1..p4 by slot, logical partitions p5 onward in chain order; a bare
//! filesystem is p0. Every count, offset and chain is bounded, so a hostile
//! table costs a few sector reads and then an error or a shorter list.

use std::collections::HashSet;

use super::readat::Slice;
use super::FsKind;
use crate::error::Result;

const SECTOR: u64 = 512;
/// Logical partitions followed before we call the EBR chain corrupt.
const MAX_LOGICAL: usize = 256;
/// GPT entries read at most (the standard array has 128).
const MAX_GPT_ENTRIES: u32 = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// pN: see the module doc.
    pub number: u32,
    pub start: u64,
    pub size: u64,
    /// What the table says: "gpt 0fc63daf-…" or "mbr 0x83".
    pub table_type: String,
    /// What the first bytes say.
    pub fs: FsKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    Gpt,
    Mbr,
    /// A filesystem on the whole disk, shown as p0.
    Bare,
    /// Nothing we recognise.
    None,
}

#[derive(Clone, Debug)]
pub struct Layout {
    pub scheme: Scheme,
    pub partitions: Vec<Partition>,
}

impl Layout {
    pub fn partition(&self, n: u32) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.number == n)
    }
}

fn u16le(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32le(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64le(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Reads the table of `disk` and probes each partition's first bytes.
pub fn read_layout(disk: &Slice) -> Result<Layout> {
    let mut s0 = [0u8; 512];
    disk.read_upto(&mut s0, 0)?;
    let has_sig = s0[510] == 0x55 && s0[511] == 0xaa;
    let protective = has_sig && (0..4).any(|i| s0[446 + i * 16 + 4] == 0xee);
    if (protective || has_sig)
        && let Some(parts) = read_gpt(disk)?
    {
        return finish(disk, Scheme::Gpt, parts);
    }
    // A FAT or NTFS boot sector also ends in 55 aa: look for a filesystem
    // on the whole disk before taking sector 0 for an MBR.
    let whole = probe(disk, 0, disk.len())?;
    if matches!(whole, FsKind::Fat | FsKind::Ntfs) || (!has_sig && whole != FsKind::Unknown) {
        return Ok(Layout { scheme: Scheme::Bare, partitions: vec![whole_disk(disk, whole)] });
    }
    if has_sig {
        let parts = read_mbr(disk, &s0)?;
        if !parts.is_empty() {
            return finish(disk, Scheme::Mbr, parts);
        }
    }
    if whole != FsKind::Unknown {
        return Ok(Layout { scheme: Scheme::Bare, partitions: vec![whole_disk(disk, whole)] });
    }
    Ok(Layout { scheme: Scheme::None, partitions: Vec::new() })
}

fn whole_disk(disk: &Slice, fs: FsKind) -> Partition {
    Partition { number: 0, start: 0, size: disk.len(), table_type: "none (whole disk)".into(), fs }
}

fn finish(disk: &Slice, scheme: Scheme, mut parts: Vec<Partition>) -> Result<Layout> {
    for p in &mut parts {
        // Clip to the disk: a table may promise more than the image holds.
        p.size = p.size.min(disk.len().saturating_sub(p.start));
        p.fs = if p.size == 0 { FsKind::Unknown } else { probe(disk, p.start, p.size)? };
        if p.fs == FsKind::Unknown {
            p.fs = hint_from_type(&p.table_type);
        }
    }
    Ok(Layout { scheme, partitions: parts })
}

/// The table's type says what a probe cannot (an LVM PV is found by its
/// label, but a swap or RAID partition with a damaged start is not).
fn hint_from_type(t: &str) -> FsKind {
    match t {
        "mbr 0x82" | "gpt 0657fd6d-a4ab-43c4-84e5-0933c84b4f4f" => FsKind::Swap,
        "mbr 0x8e" | "gpt e6d6d379-f507-44c2-a23c-238f2a3df928" => FsKind::Lvm,
        _ => FsKind::Unknown,
    }
}

fn read_mbr(disk: &Slice, s0: &[u8; 512]) -> Result<Vec<Partition>> {
    let mut parts = Vec::new();
    let mut extended = None;
    for slot in 0..4 {
        let e = &s0[446 + slot * 16..446 + slot * 16 + 16];
        let (ty, start, count) = (e[4], u32le(e, 8) as u64, u32le(e, 12) as u64);
        if ty == 0 || count == 0 {
            continue;
        }
        if matches!(ty, 0x05 | 0x0f | 0x85) {
            extended.get_or_insert(start);
            continue;
        }
        parts.push(Partition {
            number: slot as u32 + 1,
            start: start * SECTOR,
            size: count * SECTOR,
            table_type: format!("mbr 0x{ty:02x}"),
            fs: FsKind::Unknown,
        });
    }
    if let Some(ext) = extended {
        read_logical(disk, ext, &mut parts)?;
    }
    Ok(parts)
}

/// Follows the EBR chain: entry 0 of each EBR is a logical partition
/// (relative to that EBR), entry 1 the next EBR (relative to the extended
/// partition's start). A loop or an unreadable EBR ends the chain.
fn read_logical(disk: &Slice, ext: u64, parts: &mut Vec<Partition>) -> Result<()> {
    let mut seen = HashSet::new();
    let mut ebr = ext;
    let mut number = 5;
    while seen.insert(ebr) && seen.len() <= MAX_LOGICAL {
        let mut s = [0u8; 512];
        if ebr.checked_mul(SECTOR).is_none_or(|o| o + SECTOR > disk.len()) {
            log::warn!("extended partition: EBR at sector {ebr} is past the end of the disk");
            break;
        }
        disk.read_exact_at(&mut s, ebr * SECTOR)?;
        if s[510] != 0x55 || s[511] != 0xaa {
            break;
        }
        let (l, n) = (&s[446..462], &s[462..478]);
        if l[4] != 0 && u32le(l, 12) != 0 {
            parts.push(Partition {
                number,
                start: (ebr + u32le(l, 8) as u64) * SECTOR,
                size: u32le(l, 12) as u64 * SECTOR,
                table_type: format!("mbr 0x{:02x}", l[4]),
                fs: FsKind::Unknown,
            });
            number += 1;
        }
        if n[4] == 0 || u32le(n, 8) == 0 {
            break;
        }
        ebr = ext + u32le(n, 8) as u64;
    }
    Ok(())
}

/// The GPT, from the primary header at LBA 1 or the backup at the last LBA;
/// None if neither is valid. Tries 512- then 4096-byte sectors.
fn read_gpt(disk: &Slice) -> Result<Option<Vec<Partition>>> {
    for lba_size in [512u64, 4096] {
        let last = disk.len() / lba_size;
        if last < 2 {
            continue;
        }
        for header_lba in [1, last - 1] {
            if let Some(p) = read_gpt_at(disk, lba_size, header_lba)? {
                return Ok(Some(p));
            }
        }
    }
    Ok(None)
}

fn read_gpt_at(disk: &Slice, lba: u64, at: u64) -> Result<Option<Vec<Partition>>> {
    let mut h = vec![0u8; 512];
    disk.read_upto(&mut h, at * lba)?;
    if &h[..8] != b"EFI PART" {
        return Ok(None);
    }
    let hsize = u32le(&h, 12) as usize;
    if !(92..=512).contains(&hsize) {
        return Ok(None);
    }
    let want = u32le(&h, 16);
    let mut hc = h[..hsize].to_vec();
    hc[16..20].fill(0);
    if crc32(&hc) != want {
        log::warn!("GPT header at LBA {at}: bad checksum");
        return Ok(None);
    }
    let (entries_lba, count, esize) = (u64le(&h, 72), u32le(&h, 80), u32le(&h, 84) as usize);
    if count > MAX_GPT_ENTRIES || !(128..=4096).contains(&esize) || esize % 8 != 0 {
        return Ok(None);
    }
    let len = count as usize * esize;
    let Some(off) = entries_lba.checked_mul(lba).filter(|o| o.checked_add(len as u64).is_some_and(|e| e <= disk.len())) else {
        return Ok(None);
    };
    let mut a = vec![0u8; len];
    disk.read_exact_at(&mut a, off)?;
    if crc32(&a) != u32le(&h, 88) {
        log::warn!("GPT entries at LBA {entries_lba}: bad checksum");
        return Ok(None);
    }
    let mut parts = Vec::new();
    for i in 0..count as usize {
        let e = &a[i * esize..(i + 1) * esize];
        if e[..16].iter().all(|b| *b == 0) {
            continue;
        }
        let (first, end) = (u64le(e, 32), u64le(e, 40));
        if end < first {
            continue;
        }
        let (Some(start), Some(size)) = (first.checked_mul(lba), (end - first + 1).checked_mul(lba)) else { continue };
        parts.push(Partition { number: i as u32 + 1, start, size, table_type: format!("gpt {}", guid(&e[..16])), fs: FsKind::Unknown });
    }
    Ok(Some(parts))
}

/// GUIDs are stored mixed-endian: the first three fields little-endian.
fn guid(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
        u32le(b, 0),
        u16le(b, 4),
        u16le(b, 6),
        b[8],
        b[9],
        b[10..16].iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, b| t[((c ^ *b as u32) & 0xff) as usize] ^ (c >> 8))
}

/// What filesystem starts at `start`, from its magic numbers only.
pub fn probe(disk: &Slice, start: u64, size: u64) -> Result<FsKind> {
    let mut b = vec![0u8; 8192];
    let n = (size.min(8192)) as usize;
    disk.read_upto(&mut b[..n], start)?;
    if n >= 1082 && u16le(&b, 1080) == 0xef53 {
        return Ok(FsKind::Ext);
    }
    if &b[3..11] == b"NTFS    " {
        return Ok(FsKind::Ntfs);
    }
    if is_fat_boot(&b[..512]) {
        return Ok(FsKind::Fat);
    }
    if &b[..4] == b"XFSB" {
        return Ok(FsKind::Xfs);
    }
    if &b[..6] == b"LUKS\xba\xbe" {
        return Ok(FsKind::Luks);
    }
    if (0..4).any(|s| &b[s * 512..s * 512 + 8] == b"LABELONE") {
        return Ok(FsKind::Lvm);
    }
    if &b[4086..4096] == b"SWAPSPACE2" || &b[4086..4096] == b"SWAP-SPACE" {
        return Ok(FsKind::Swap);
    }
    let mut m = [0u8; 8];
    if size > 0x10048 {
        disk.read_upto(&mut m, start + 0x10040)?;
        if &m == b"_BHRfS_M" {
            return Ok(FsKind::Btrfs);
        }
    }
    Ok(FsKind::Unknown)
}

/// A FAT boot sector: the signature plus a plausible BIOS parameter block.
fn is_fat_boot(b: &[u8]) -> bool {
    let bps = u16le(b, 11);
    let spc = b[13];
    let named = &b[54..57] == b"FAT" || &b[82..87] == b"FAT32";
    b[510] == 0x55
        && b[511] == 0xaa
        && named
        && matches!(bps, 512 | 1024 | 2048 | 4096)
        && spc.is_power_of_two()
        && u16le(b, 14) > 0
        && matches!(b[16], 1 | 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guestfs::readat::ReadAt;
    use std::sync::Arc;

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    fn slice(v: Vec<u8>) -> Slice {
        Slice::whole(Arc::new(v) as Arc<dyn ReadAt>)
    }

    fn mbr_entry(b: &mut [u8], slot: usize, ty: u8, start: u32, count: u32) {
        let e = &mut b[446 + slot * 16..462 + slot * 16];
        e[4] = ty;
        e[8..12].copy_from_slice(&start.to_le_bytes());
        e[12..16].copy_from_slice(&count.to_le_bytes());
    }

    #[test]
    fn ebr_loop_ends() {
        let mut d = vec![0u8; 1 << 20];
        d[510] = 0x55;
        d[511] = 0xaa;
        mbr_entry(&mut d, 0, 0x05, 8, 1000);
        // EBR at 8 whose "next" points back to itself.
        let e = 8 * 512;
        d[e + 510] = 0x55;
        d[e + 511] = 0xaa;
        mbr_entry(&mut d[e..], 0, 0x83, 2, 10);
        mbr_entry(&mut d[e..], 1, 0x05, 0, 0);
        d[e + 462 + 8..e + 462 + 12].copy_from_slice(&0u32.to_le_bytes());
        d[e + 462 + 4] = 0x05;
        d[e + 462 + 12] = 1;
        let l = read_layout(&slice(d)).unwrap();
        assert_eq!(l.scheme, Scheme::Mbr);
        assert_eq!(l.partitions.iter().map(|p| p.number).collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn huge_values_are_clipped() {
        let mut d = vec![0u8; 1 << 20];
        d[510] = 0x55;
        d[511] = 0xaa;
        mbr_entry(&mut d, 0, 0x83, u32::MAX, u32::MAX);
        mbr_entry(&mut d, 1, 0x83, 1, u32::MAX);
        let l = read_layout(&slice(d)).unwrap();
        assert_eq!(l.partitions[0].size, 0);
        assert_eq!(l.partitions[1].size, (1 << 20) - 512);
    }

    #[test]
    fn empty_disk_has_no_layout() {
        let l = read_layout(&slice(vec![0u8; 1 << 16])).unwrap();
        assert_eq!(l.scheme, Scheme::None);
        assert!(read_layout(&slice(Vec::new())).unwrap().partitions.is_empty());
    }
}
