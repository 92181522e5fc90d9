//! kluis: a backup and disaster-recovery vault for virtual-machine disks.

pub mod error;
pub mod id;
pub mod newfile;
pub mod image;
pub mod store;
pub mod records;
pub mod catalog;
pub mod recovery_point;
pub mod timefmt;
pub mod vault;
pub mod progress;
pub mod backup;
pub mod restore;
pub mod restore_in_place;
pub mod verify;
pub mod gc;
pub mod browse;
pub mod fuse;
pub mod settings;
pub mod jobs;
pub mod policy;
pub mod protect;
pub mod consistency;
pub mod scheduler;
pub mod guestfs;
pub mod rebuild;
pub mod replicate;
pub mod libvirt;
pub mod storage;

pub use error::{Error, Result};
pub use id::{ChunkId, RecoveryPointId};
