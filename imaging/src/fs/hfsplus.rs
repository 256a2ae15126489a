//! HFS+ and HFSX: used allocation blocks from the allocation file.
//!
//! The volume header (big-endian, at byte 1024) describes the allocation file as a fork of up
//! to eight extents; the file is a bitmap with a bit per allocation block, the first block at
//! the most significant bit of byte 0, set when the block is in use. The boot blocks, the
//! volume header and its copy in the volume's second-to-last 512 bytes are kept whatever the
//! bitmap says.
//!
//! Checked before the map is trusted: the volume cleanly unmounted (a journal to replay, or a
//! crash, leaves the bitmap behind), the allocation file inside the volume and large enough,
//! and its clear bits adding up to the header's free count. Refused by name, so the raw copy
//! takes over: an allocation file spilling into the extents overflow file, and HFS+ wrapped
//! in a classic HFS volume.
//!
//! Not read: the catalog, the files.

// HFS+ is big-endian on disk: the workspace's ban on big-endian conversions (meant to catch
// slips in the little-endian formats) does not apply here.
#![allow(clippy::big_endian_bytes)]

use super::{corrupt, FsError, FsKind, FsReport};
use crate::device::{read_vec, BlockDevice};
use crate::extent::ExtentMap;

const FS: FsKind = FsKind::Hfsplus;
/// Volume attribute: unmounted cleanly.
const UNMOUNTED: u32 = 1 << 8;

fn be16(b: &[u8], o: usize) -> u16 {
    b.get(o..o + 2)
        .map_or(0, |s| u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4)
        .map_or(0, |s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Whether the 4 KiB at the start of a device hold an HFS+ or HFSX volume header.
pub(super) fn probe(head: &[u8]) -> bool {
    matches!(
        (head.get(1024..1026), be16(head, 1026)),
        (Some(b"H+"), 4) | (Some(b"HX"), 5)
    )
}

pub(super) fn read(dev: &dyn BlockDevice) -> Result<FsReport, FsError> {
    if dev.len() < 2048 {
        return Err(corrupt(FS, "device too small for a volume header"));
    }
    let h = read_vec(dev, 1024, 512)?;
    if &h[0..2] == b"BD" {
        return Err(FsError::Unsupported {
            fs: FS,
            feature: "HFS+ wrapped in a classic HFS volume".into(),
        });
    }
    if !probe(&read_vec(dev, 0, 2048)?) {
        return Err(corrupt(FS, "no HFS+ volume header"));
    }
    if be32(&h, 4) & UNMOUNTED == 0 {
        return Err(FsError::Unsupported {
            fs: FS,
            feature: "not cleanly unmounted (its journal or a crash may leave the bitmap \
                      behind)"
                .into(),
        });
    }
    let bs = u64::from(be32(&h, 40));
    let blocks = u64::from(be32(&h, 44));
    let free = u64::from(be32(&h, 48));
    if !(512..=1 << 20).contains(&bs) || !bs.is_power_of_two() || free > blocks {
        return Err(corrupt(
            FS,
            format!("{blocks} blocks of {bs} bytes, {free} free"),
        ));
    }
    let size = blocks
        .checked_mul(bs)
        .filter(|&n| n <= dev.len() && n >= 2048)
        .ok_or_else(|| {
            corrupt(
                FS,
                format!(
                    "{blocks} blocks of {bs} bytes on a {}-byte device",
                    dev.len()
                ),
            )
        })?;
    // The allocation file's fork: its block count and eight (start, count) extents.
    let fork = &h[112..192];
    let fork_blocks = u64::from(be32(fork, 12));
    let extents: Vec<(u64, u64)> = (0..8)
        .map(|i| {
            (
                u64::from(be32(fork, 16 + i * 8)),
                u64::from(be32(fork, 20 + i * 8)),
            )
        })
        .filter(|&(_, n)| n > 0)
        .collect();
    let in_header: u64 = extents.iter().map(|&(_, n)| n).sum();
    if in_header < fork_blocks {
        return Err(FsError::Unsupported {
            fs: FS,
            feature: "an allocation file continued in the extents overflow file".into(),
        });
    }
    let needed = blocks.div_ceil(8);
    if in_header * bs < needed {
        return Err(corrupt(
            FS,
            format!("an allocation file of {in_header} blocks for {blocks} blocks"),
        ));
    }
    let mut bitmap = Vec::with_capacity(needed as usize);
    for &(start, n) in &extents {
        if start + n > blocks {
            return Err(corrupt(
                FS,
                format!("allocation file extent of {n} blocks at {start} outside the volume"),
            ));
        }
        let want = (n * bs).min(needed - bitmap.len() as u64);
        if want == 0 {
            break;
        }
        bitmap.extend(read_vec(dev, start * bs, want as usize)?);
    }
    // The first block at bit 7 of byte 0: reversed, the extent map's bit order.
    let bits: Vec<u8> = bitmap.iter().map(|b| b.reverse_bits()).collect();
    let set: u64 = (0..blocks)
        .filter(|&i| bits[(i / 8) as usize] & (1 << (i % 8)) != 0)
        .count() as u64;
    if blocks - set != free {
        return Err(corrupt(
            FS,
            format!(
                "the allocation file leaves {} blocks free, the volume header {free}",
                blocks - set
            ),
        ));
    }
    let mut used = ExtentMap::new();
    used.push(0, 1536);
    used.push_bitmap(&bits, blocks, 0, bs, 0);
    // The alternate volume header: 1024 bytes before the volume's end.
    used.push(size - 1024, 512);
    used.normalize();
    Ok(FsReport {
        kind: FS,
        block_size: bs as u32,
        fs_size: size,
        used,
        label: None,
        volumes: Vec::new(),
    })
}

#[cfg(test)]
#[path = "hfsplus_tests.rs"]
mod tests;
