//! A cheap test for data that zstd cannot shrink: encrypted volumes,
//! compressed archives, media. A backup stores such a run as it is instead
//! of spending its most expensive step on it: zstd at level 3 searches
//! random bytes for matches at the speed it searches anything (about 0.3 GB
//! per second and core on the benchmark machine), only for the frame to be
//! kept raw in the end (crate::store::Frame).
//!
//! Hand-written, because what is needed is a sampled byte histogram, not a
//! compressor: no crate estimates this more cheaply than these few lines.
//!
//! The test is the order-0 entropy of a sample, every 16th byte of each 64
//! KiB window (4096 bytes). Uniformly random bytes measure 7.95 bits per
//! byte on such a sample (the estimate runs 0.045 bits low, with a spread of
//! about 0.01); text measures 4–5, machine code 5–6.5, a file system's
//! metadata far less. Data is called incompressible when every window
//! measures above [`RANDOM_BITS`]. The first window that does not ends the
//! test, so compressible data pays for one sample: a few microseconds
//! against the 10 ms zstd takes for a 3 MiB run.
//!
//! What it misses: random bytes that repeat within one run off the block
//! grid (two copies of an encrypted file a few KiB apart), which zstd would
//! find and this test stores twice. Copies on the block grid are
//! deduplicated before they get here.

/// Bytes judged by one sample.
const WINDOW: usize = 64 << 10;
/// Every this many bytes, one is sampled.
const STRIDE: usize = 16;
/// Shorter windows (a run's tail) are too short to judge and do not count.
const MIN_WINDOW: usize = WINDOW / 4;
/// Above this many bits per byte a sample counts as random.
const RANDOM_BITS: f64 = 7.9;

/// True when no window of `data` looks compressible; false for data too
/// short to judge (shorter than [`MIN_WINDOW`]).
pub fn looks_incompressible(data: &[u8]) -> bool {
    data.len() >= MIN_WINDOW && data.chunks(WINDOW).all(|w| w.len() < MIN_WINDOW || sampled_bits_per_byte(w) > RANDOM_BITS)
}

/// Order-0 entropy, in bits per byte, of every [`STRIDE`]th byte of `w`.
fn sampled_bits_per_byte(w: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    let mut n = 0u32;
    for b in w.iter().step_by(STRIDE) {
        counts[*b as usize] += 1;
        n += 1;
    }
    let n = n as f64;
    counts.iter().filter(|&&c| c > 0).map(|&c| c as f64 / n).map(|p| -p * p.log2()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_is_incompressible_and_structured_data_is_not() {
        let mut rng = fastrand::Rng::with_seed(11);
        let random: Vec<u8> = (0..3 << 20).map(|_| rng.u8(..)).collect();
        assert!(looks_incompressible(&random));
        let bits = sampled_bits_per_byte(&random[..WINDOW]);
        assert!((7.93..7.98).contains(&bits), "{bits}");
        let text: Vec<u8> = (0..3 << 20).map(|i: u32| b"kluis keeps disks; "[i as usize % 19] ^ (i / 4099) as u8).collect();
        assert!(!looks_incompressible(&text));
        // Structured data with about 4 bits of entropy per byte (a seeded
        // draw from 16 symbols; not the test's own executable, whose bytes
        // change with every build) is compressible, and zstd's output of it
        // is as random as random bytes.
        let structured: Vec<u8> = (0..3 << 20).map(|_| b"0123456789abcdef"[rng.usize(..16)]).collect();
        assert!(!looks_incompressible(&structured));
        let squeezed = zstd::bulk::compress(&structured, 3).unwrap();
        assert!(squeezed.len() >= 2 * WINDOW);
        assert!(looks_incompressible(&squeezed));
        // One compressible window anywhere keeps the run compressed.
        let mut mixed = random.clone();
        mixed[2 * WINDOW..3 * WINDOW].copy_from_slice(&text[..WINDOW]);
        assert!(!looks_incompressible(&mixed));
        // A short tail does not decide; data too short to judge is not called random.
        assert!(looks_incompressible(&random[..2 * WINDOW + 100]));
        assert!(!looks_incompressible(&random[..MIN_WINDOW - 1]));
        assert!(!looks_incompressible(&[]));
    }
}
