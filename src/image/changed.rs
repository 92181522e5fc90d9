//! Changed-ranges files: the byte ranges of a disk written since its
//! previous recovery point, from any tracker (LVM thin `thin_delta`, a cloud
//! API's page-range diff, a hypervisor's CBT), for `--changed-ranges
//! NAME=FILE`.
//!
//! Format (docs/cli.md): one range a line, `OFFSET LENGTH` in bytes,
//! decimal or `0x` hex, separated by blanks; blank lines and lines starting
//! with `#` are ignored. Ranges may come in any order and may touch, but
//! must not overlap and must lie within the disk: a file that breaks either
//! rule is refused with the line it breaks it on, since a tracker that gets
//! these wrong cannot be trusted with the rest.

use std::ops::Range;
use std::path::Path;

use crate::error::{Error, Result};

fn number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Reads `path` for a disk of `size` bytes: sorted, merged ranges.
pub fn read_file(path: &Path, size: u64) -> Result<Vec<Range<u64>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io_path("cannot read changed-ranges file", path, e))?;
    parse(&text, size).map_err(|m| Error::InvalidInput(format!("changed-ranges file {}: {m}", path.display())))
}

/// The parser behind [`read_file`]; errors name the line.
pub fn parse(text: &str, size: u64) -> std::result::Result<Vec<Range<u64>>, String> {
    // (range, line number)
    let mut all: Vec<(Range<u64>, usize)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("line {n}: expected OFFSET LENGTH, got {line:?}"));
        };
        let (Some(off), Some(len)) = (number(a), number(b)) else {
            return Err(format!("line {n}: expected OFFSET LENGTH in bytes, got {line:?}"));
        };
        let end = off.checked_add(len).filter(|&e| e <= size).ok_or_else(|| format!("line {n}: range {off}+{len} ends past the end of the disk ({size} bytes)"))?;
        if len > 0 {
            all.push((off..end, n));
        }
    }
    all.sort_by_key(|(r, _)| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(all.len());
    let mut last_line = 0;
    for (r, n) in all {
        match out.last_mut() {
            Some(prev) if r.start < prev.end => {
                return Err(format!("line {n}: range {}+{} overlaps the range on line {last_line}", r.start, r.end - r.start));
            }
            Some(prev) if r.start == prev.end => prev.end = r.end,
            _ => out.push(r.clone()),
        }
        last_line = n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sorts_and_merges() {
        let r = parse("# thin_delta, converted\n65536 65536\n\n0 0x10000\n1048576 4096\n", 1 << 21).unwrap();
        assert_eq!(r, vec![0..131072, 1048576..1052672]);
    }

    #[test]
    fn refuses_overlaps_and_ranges_past_the_end() {
        assert!(parse("0 100\n50 100\n", 1000).unwrap_err().contains("line 2: range 50+100 overlaps the range on line 1"));
        assert!(parse("900 200\n", 1000).unwrap_err().contains("line 1: range 900+200 ends past the end of the disk (1000 bytes)"));
        assert!(parse("1 2 3\n", 1000).unwrap_err().contains("line 1"));
        assert!(parse("18446744073709551615 2\n", 1000).is_err());
    }
}
