//! drover's disk images: the format, the chunk store, the used-block readers and the capture,
//! restore and verify pipelines.
//!
//! An image describes a whole disk (or one partition, or a bare filesystem) as a
//! [`manifest::Manifest`] plus content-addressed chunks in a [`store::Store`]. Capture reads only
//! the blocks the filesystems' own allocation data marks used ([`fs`]); restore writes only
//! those, each chunk hash-checked first.
//!
//! Layout, top-down:
//! - [`disks`]: a machine's disks from `/sys/block` and which one a task writes.
//! - [`device`]: the [`device::BlockDevice`] trait every read and write goes through; files,
//!   block devices, partitions of them, and an in-memory fake.
//! - [`table`]: MBR and GPT (via mbrman and gptman); GPT relocation for other disk sizes.
//! - [`fs`]: used-block readers for ext2/3/4, FAT12/16/32, exFAT, NTFS and swap, and the raw
//!   non-zero-region fallback.
//! - [`extent`]: the used-extent maps those readers produce.
//! - [`manifest`]: the versioned manifest and its validation of untrusted input.
//! - [`store`]: chunks and manifests on disk, atomically written; gc.
//! - [`capture`] and [`restore`]: the pipelines, parallel over chunks on plain threads.
//! - [`explore`]: an image read as its disk at any offset, its partitions, exported as raw
//!   or qcow2.
//! - [`torrent`]: an image as a BitTorrent payload (used extents at their disk offsets),
//!   its piece hashes and metainfo.
//!
//! This crate is synchronous and does no networking: the multicast, BitTorrent and HTTP
//! transports live elsewhere and move this crate's chunks. It has no tokio dependency.

#![warn(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

pub mod capture;
pub mod device;
pub mod disks;
pub mod explore;
pub mod extent;
mod fat_resize;
pub mod fs;
#[doc(hidden)]
pub mod fuzzing;
pub mod import;
pub mod manifest;
pub mod mount;
pub mod progress;
pub mod relayout;
pub mod restore;
pub mod shrink;
pub mod store;
pub mod table;
pub mod torrent;
pub mod usage;
