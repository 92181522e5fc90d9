//! Pack files: where chunk bytes live. This module knows nothing of SQL.
//!
//! # Layout
//!
//! ```text
//! VAULT/packs/tmp/NAME.tmp       a pack being written (never read)
//! VAULT/packs/NN/NAME.pack       a finished pack; NN = first two hex chars of NAME
//! ```
//!
//! A pack is a 16-byte header followed by frames; each frame holds one or
//! more chunks compressed together: a header with codec flags, lengths, a
//! table of the chunks' ids and lengths and a header checksum, then the
//! stored bytes. A pack can therefore be re-indexed and verified from its own
//! bytes (see docs/format.md).
//!
//! # Write order (crash safety)
//!
//! 1. frames are appended to `tmp/NAME.tmp`;
//! 2. the file is fsynced, renamed to `NN/NAME.pack`, and the directory fsynced;
//! 3. only then does the caller commit index rows pointing into the pack.
//!
//! A crash before 3 leaves either a temp file or a pack no index row points
//! to; `gc` removes both. Packs are immutable once renamed; `gc` rewrites the
//! live frames of a mostly-dead pack into a new pack, commits the new
//! locations, and only then unlinks the old pack, unless a reader's lease
//! may still need it (lease.rs).

mod frame;
mod incompressible;
mod lease;
mod pack;

pub use frame::{check_chunk, check_frame, decode_payload, decode_payload_into, decode_prefix, ChunkKind, Codec, Frame, FrameEntry, FrameHeader, FRAME_WINDOW_LOG, MAX_FRAME_CHUNKS, PACK_HEADER, PACK_HEADER_SIZE};
pub(crate) use pack::fsync_dir;
pub use lease::{remove_packs_except, sweep_packs, ReadLease, Swept, LEASES_DIR};
pub use pack::{copy_pack, pack_path, packs_on_disk, remove_temp_packs, read_frame, read_frame_upto, read_frame_via, read_header, scan_pack, ChunkLocation, DecodedFrame, FinishedPack, FrameBuf, FrameLocation, PackFiles, PackWriter, ScannedFrame};
