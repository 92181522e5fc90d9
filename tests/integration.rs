//! kluis integration suite: one test binary that drives the real `kluis`
//! executable (`env!("CARGO_BIN_EXE_kluis")`) against a fresh temporary
//! directory per test, always with an explicit `--vault DIR`.
//!
//! Randomness comes from `fastrand` with a seed printed by each test; set
//! `KLUIS_TEST_SEED=N` to replay a failure. `KLUIS_CRASH_ITERS=N` sets how
//! many processes the crash test kills (default 50).
//!
//! Tests that need root-only or optional facilities (tmpfs mounts, loop
//! devices, qemu-img) print `SKIPPED: reason` and pass when the facility is
//! missing, or fail when `KLUIS_TEST_STRICT=1` (as .ci/run sets); everything
//! they mount or attach is released by a guard.

mod integration {
    pub mod common;

    mod backup_restore;
    mod bad_input;
    mod bigdisk;
    mod edges;
    mod corruption;
    mod crash;
    mod damaged;
    mod docs;
    mod enospc;
    mod gc_lock;
    mod mount;
    mod rebuild;
    mod replicate;
    mod vhd;

    // files inside guest filesystems (issue 4)
    mod guestfs;
    // guest names, case and sizes (issue 19)
    mod guestnames;
    // every directory of the mount lists what it holds (issue 18)
    mod mount_walk;

    // protected items, consistency, retention, jobs (issue 5)
    mod consistency;
    mod freeze;
    mod protect;
    mod retention;

    // hardening: symlinks, modes, signals, special files (issue 19)
    mod security;

    // full, read-only and half-made vaults (issue 19)
    mod trouble;

    // hypervisor sources: qcow2, NBD, changed-block tracking (issue 21)
    mod nbd;
    mod qcow2;

    // libvirt domains, VM restores (issue 21)
    mod libvirt;

    // the storage seam on a directory, memory, S3 and Azure Blob (issue 20)
    mod objstore;
}
