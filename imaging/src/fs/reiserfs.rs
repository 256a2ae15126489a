//! reiserfs (formats 3.5 and 3.6): used blocks from the bitmap blocks.
//!
//! The superblock is at byte 65536; the first bitmap block follows it, and bitmap `i` (from 1)
//! is block `i × 8 × block size`, the first block it describes. A set bit (least significant
//! first) is a used block: the first 64 KiB, the superblock, the bitmaps, the journal, the tree
//! and the data. Everything before the first bitmap is kept whole anyway.
//!
//! Checked before the map is trusted: the filesystem cleanly unmounted (a journal to replay
//! would change the bitmaps) and marked consistent, the bitmap count matching the block
//! count, every bitmap inside the filesystem, and the set bits adding up to the superblock's
//! used count.
//!
//! Not read: the tree, the journal. Restored bytes outside the map are whatever the target
//! held: reiserfs reads no block its bitmap calls free.

use super::{corrupt, le16, le32, FsError, FsKind, FsReport};
use crate::device::{read_vec, BlockDevice};
use crate::extent::ExtentMap;

const FS: FsKind = FsKind::Reiserfs;
const SUPER_AT: u64 = 65536;
/// `s_umount_state` of a cleanly unmounted filesystem.
const VALID_FS: u16 = 1;

/// Whether the 4 KiB read at byte 65536 holds a reiserfs superblock.
pub(super) fn probe(sb: &[u8]) -> bool {
    matches!(
        sb.get(52..62),
        Some(m) if m.starts_with(b"ReIsErFs\0") || m.starts_with(b"ReIsEr2Fs\0") || m.starts_with(b"ReIsEr3Fs\0")
    )
}

pub(super) fn read(dev: &dyn BlockDevice) -> Result<FsReport, FsError> {
    if dev.len() < SUPER_AT + 4096 {
        return Err(corrupt(FS, "device too small for a superblock"));
    }
    let sb = read_vec(dev, SUPER_AT, 4096)?;
    if !probe(&sb) {
        return Err(corrupt(FS, "no reiserfs superblock"));
    }
    let blocks = u64::from(le32(&sb, 0));
    let free = u64::from(le32(&sb, 4));
    let bs = u64::from(le16(&sb, 44));
    if !(512..=65536).contains(&bs) || !bs.is_power_of_two() {
        return Err(corrupt(FS, format!("block size {bs}")));
    }
    let size = blocks
        .checked_mul(bs)
        .filter(|&n| n <= dev.len() && n > SUPER_AT + bs)
        .ok_or_else(|| {
            corrupt(
                FS,
                format!(
                    "{blocks} blocks of {bs} bytes on a {}-byte device",
                    dev.len()
                ),
            )
        })?;
    let umount = le16(&sb, 50);
    if umount != VALID_FS {
        return Err(FsError::Unsupported {
            fs: FS,
            feature: "not cleanly unmounted (its journal may hold newer bitmaps)".into(),
        });
    }
    if le16(&sb, 62) != 0 {
        return Err(corrupt(FS, "marked as having errors"));
    }
    let per_map = bs * 8;
    let maps = blocks.div_ceil(per_map);
    // Past 65535 bitmaps the count no longer fits its field and is written as 0.
    let nr = u64::from(le16(&sb, 70));
    if nr != maps && !(nr == 0 && maps > 0xFFFF) {
        return Err(corrupt(
            FS,
            format!("{nr} bitmaps for {blocks} blocks of {bs} bytes"),
        ));
    }
    let first_map = SUPER_AT / bs + 1;
    let mut used = ExtentMap::new();
    used.push(0, (first_map + 1) * bs);
    let mut set = 0u64;
    for i in 0..maps {
        let at = if i == 0 { first_map } else { i * per_map };
        let map = read_vec(dev, at * bs, bs as usize)?;
        let count = per_map.min(blocks - i * per_map);
        let full = (count / 8) as usize;
        set += map[..full]
            .iter()
            .map(|b| u64::from(b.count_ones()))
            .sum::<u64>();
        if count % 8 != 0 {
            set += u64::from((map[full] & ((1u8 << (count % 8)) - 1)).count_ones());
        }
        // A bitmap must mark itself used.
        let own = at - i * per_map;
        if map[(own / 8) as usize] & (1 << (own % 8)) == 0 {
            return Err(corrupt(
                FS,
                format!("bitmap {i} at block {at} marks itself free"),
            ));
        }
        used.push_bitmap(&map, count, i * per_map, bs, 0);
    }
    if blocks - set != free {
        return Err(corrupt(
            FS,
            format!(
                "the bitmaps leave {} blocks free, the superblock {free}",
                blocks - set
            ),
        ));
    }
    let label = (le16(&sb, 72) >= 2)
        .then(|| {
            let raw = &sb[100..116];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(&raw[..end]).into_owned()
        })
        .filter(|l| !l.is_empty());
    used.normalize();
    Ok(FsReport {
        kind: FS,
        block_size: bs as u32,
        fs_size: size,
        used,
        label,
        volumes: Vec::new(),
    })
}

#[cfg(test)]
#[path = "reiserfs_tests.rs"]
mod tests;
