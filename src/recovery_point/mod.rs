//! Recovery points: a manifest naming every disk's block-map root and every
//! config file, hashed into the point's id.
//!
//! # Block maps
//!
//! A disk of `n` blocks has a map: block index → chunk id, with
//! [`ChunkId::ZERO`](crate::ChunkId::ZERO) for all-zero blocks. The map is cut
//! into pages of [`FANOUT`] ids (32 bytes each, zero-padded at the end), each
//! stored as a content-addressed chunk; a page of only zero ids is itself
//! `ZERO` and not stored. Pages of level 1 list the ids of level-0 pages, and
//! so on up to one root page. Depth is the smallest `d` with `FANOUT^d >= n`.
//! So an unchanged 4 MiB..16 MiB stretch of a disk costs nothing in a new
//! point, a changed block costs one page per level, and a point's metadata in
//! the index is one manifest whatever the disk size.

mod manifest;
mod map;
mod reader;

pub use manifest::{ConfigEntry, DiskEntry, Manifest, MANIFEST_VERSION};
pub use map::{collect_blocks, depth_for, LazyMap, MapBuilder, MapPage, MapReader, PageCache, PageKey, PageSource, FANOUT, PAGE_BYTES};
pub use reader::{copy_blocks, BlockBytes, ChunkFetcher, DiskReader};
