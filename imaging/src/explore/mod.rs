//! Images you can open: an image read as its disk at any offset ([`ImageDisk`]), the pieces
//! of it worth opening on their own (the whole disk, each partition, each plain LVM logical
//! volume: [`pieces`], read through [`PieceDevice`]), and the
//! image written out as a sparse raw file or a qcow2 file ([`export`]), or read in from one
//! ([`qcow2::Qcow2File`]).
//!
//! Nothing here writes to a store or needs root: mounting (FUSE) and serving (NBD) are the
//! daemon crate's, on top of [`ImageDisk`].

mod disk;
mod exfat_files;
pub mod export;
pub mod files;
pub mod qcow2;

pub use disk::{ImageDisk, ReadCounts, DEFAULT_CACHE_BYTES};

use std::io;
use std::sync::Arc;

use crate::device::BlockDevice;
use crate::fs::{FsKind, VolumeSegment};
use crate::manifest::{AreaKind, Manifest};

/// A piece of an image's disk that opens on its own: the whole disk, one partition, or one
/// LVM logical volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Its name: `disk`; `p` and the partition's number (`p1`, `p5`); a logical volume's
    /// device-mapper name (`vg-lv`, a `-` inside either name doubled).
    pub name: String,
    /// First byte on the disk (a partition's, the disk's).
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// The filesystem the capture found on it, if any.
    pub fs: Option<FsKind>,
    /// Its filesystem's label.
    pub label: Option<String>,
    /// A logical volume's runs, their areas as disk offsets; empty for a contiguous piece
    /// (`offset..offset + len`).
    pub segments: Vec<VolumeSegment>,
}

impl Piece {
    /// Fills `buf` from byte `at` of the piece, read from `disk`.
    pub fn read(&self, disk: &dyn BlockDevice, buf: &mut [u8], at: u64) -> io::Result<()> {
        if at
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.len)
        {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read past the end of {}", self.name),
            ));
        }
        if self.segments.is_empty() {
            return disk.read_at(buf, self.offset + at);
        }
        let mut done = 0usize;
        while done < buf.len() {
            let o = at + done as u64;
            let i = self.segments.partition_point(|s| s.at + s.len <= o);
            let seg = self
                .segments
                .get(i)
                .filter(|s| s.at <= o && !s.areas.is_empty() && s.stripe > 0)
                .ok_or_else(|| io::Error::other(format!("{} has no bytes at {o}", self.name)))?;
            let rel = o - seg.at;
            let k = seg.areas.len() as u64;
            let (chunk, within) = (rel / seg.stripe, rel % seg.stripe);
            let from = seg.areas[(chunk % k) as usize] + (chunk / k) * seg.stripe + within;
            let n = ((seg.stripe - within).min(seg.len - rel) as usize).min(buf.len() - done);
            disk.read_at(&mut buf[done..done + n], from)?;
            done += n;
        }
        Ok(())
    }
}

/// A piece read as a device of its own (read-only).
pub struct PieceDevice {
    /// The image's disk.
    pub disk: Arc<dyn BlockDevice>,
    /// The piece.
    pub piece: Piece,
}

impl BlockDevice for PieceDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.piece.read(self.disk.as_ref(), buf, offset)
    }

    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(crate::device::read_only("an image"))
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> u64 {
        self.piece.len
    }
}

/// A logical volume's device-mapper name from `vg/lv`.
fn dm_name(full: &str) -> String {
    let (vg, lv) = full.split_once('/').unwrap_or(("", full));
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
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
        segments: Vec::new(),
    }];
    let mut volumes: Vec<Piece> = m
        .areas
        .iter()
        .filter(|a| matches!(a.kind, AreaKind::Whole))
        .filter_map(|a| a.fs.as_ref())
        .flat_map(|f| volume_pieces(f, 0))
        .collect();
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
            segments: Vec::new(),
        });
        if let Some(f) = fs {
            volumes.extend(volume_pieces(f, p.start));
        }
    }
    out.extend(volumes);
    out
}

/// The logical volumes of a container at disk offset `base` that open on their own.
fn volume_pieces(f: &crate::manifest::FsInfo, base: u64) -> impl Iterator<Item = Piece> + '_ {
    f.volumes
        .iter()
        .filter(|v| !v.segments.is_empty())
        .map(move |v| Piece {
            name: dm_name(&v.name),
            offset: 0,
            len: v.size,
            fs: Some(v.kind),
            label: v.label.clone(),
            segments: v
                .segments
                .iter()
                .map(|s| VolumeSegment {
                    areas: s.areas.iter().map(|a| a + base).collect(),
                    ..s.clone()
                })
                .collect(),
        })
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
