//! Images you can open: an image read as its disk at any offset ([`ImageDisk`]), the pieces
//! of it worth opening on their own (the whole disk, each partition: [`pieces`]), and the
//! image written out as a sparse raw file or a qcow2 file ([`export`]), or read in from one
//! ([`qcow2::Qcow2File`]).
//!
//! Nothing here writes to a store or needs root: mounting (FUSE) and serving (NBD) are the
//! daemon crate's, on top of [`ImageDisk`].

mod disk;
pub mod export;
pub mod qcow2;

pub use disk::{ImageDisk, ReadCounts, DEFAULT_CACHE_BYTES};

use crate::fs::FsKind;
use crate::manifest::{AreaKind, Manifest};

/// A piece of an image's disk that opens on its own: the whole disk, or one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Its name: `disk`, or `p` and the partition's number (`p1`, `p5`).
    pub name: String,
    /// First byte on the disk.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// The filesystem the capture found on it, if any.
    pub fs: Option<FsKind>,
    /// Its filesystem's label.
    pub label: Option<String>,
}

/// The pieces of image `m`: `disk` first, then each partition of its table by number.
pub fn pieces(m: &Manifest) -> Vec<Piece> {
    let mut out = vec![Piece {
        name: "disk".into(),
        offset: 0,
        len: m.disk_size,
        fs: m
            .areas
            .iter()
            .find(|a| matches!(a.kind, AreaKind::Whole))
            .and_then(|a| a.fs.as_ref())
            .map(|f| f.kind),
        label: None,
    }];
    let mut parts = m.table.partitions.clone();
    parts.sort_by_key(|p| p.number);
    for p in parts {
        let fs = m
            .areas
            .iter()
            .find(|a| a.kind == AreaKind::Partition { number: p.number })
            .and_then(|a| a.fs.as_ref());
        out.push(Piece {
            name: format!("p{}", p.number),
            offset: p.start,
            len: p.size,
            fs: fs.map(|f| f.kind),
            label: fs.and_then(|f| f.label.clone()),
        });
    }
    out
}

/// The piece `name` of image `m`: `disk`, `pN`, or just the number `N`.
pub fn piece(m: &Manifest, name: &str) -> Option<Piece> {
    let want = if name.bytes().all(|b| b.is_ascii_digit()) && !name.is_empty() {
        format!("p{name}")
    } else {
        name.to_string()
    };
    pieces(m).into_iter().find(|p| p.name == want)
}

#[cfg(test)]
mod tests;
