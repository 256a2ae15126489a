//! XFS: used blocks from the free-space B+trees of every allocation group.
//!
//! The superblock (big-endian, at byte 0) gives the block size, the number of blocks, the
//! allocation groups' size and count. Each group's AGF (its second sector) roots the by-block
//! free-space B+tree (`ABTB` in v4 filesystems, `AB3B` with the v5 CRC headers); its leaf
//! records are the group's free extents. Everything else is used: inodes, directories, file
//! data, the btrees themselves, the AG free list and the internal log (kept whole: a restored
//! log full of another disk's bytes would not mount).
//!
//! Checked before the map is trusted: each AGF's magic, sequence number and length; each btree
//! block's magic, level and (v5) its own block number and owning group; records in order, inside
//! the group and not overlapping; and the free blocks counted per group equal to the AGF's
//! `agf_freeblks`. Anything else is an error, and the raw copy takes over. The realtime
//! section lives on another device and is not read; an external log likewise.

use super::{corrupt, FsError, FsKind, FsReport};
use crate::device::{read_vec, BlockDevice};
use crate::extent::ExtentMap;

const FS: FsKind = FsKind::Xfs;
/// Deepest free-space btree accepted (XFS's own limit for AG btrees is far below).
const MAX_LEVELS: u32 = 16;

// XFS keeps its metadata big-endian, unlike every other format drover reads.
#[allow(clippy::big_endian_bytes)]
fn be16(b: &[u8], o: usize) -> u16 {
    b.get(o..o + 2)
        .map_or(0, |s| u16::from_be_bytes([s[0], s[1]]))
}

// XFS keeps its metadata big-endian, unlike every other format drover reads.
#[allow(clippy::big_endian_bytes)]
fn be32(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4)
        .map_or(0, |s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

// XFS keeps its metadata big-endian, unlike every other format drover reads.
#[allow(clippy::big_endian_bytes)]
fn be64(b: &[u8], o: usize) -> u64 {
    b.get(o..o + 8).map_or(0, |s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_be_bytes(a)
    })
}

/// The superblock's fields the reader relies on.
struct Super {
    block: u64,
    blocks: u64,
    ag_blocks: u64,
    ag_count: u64,
    sector: u64,
    v5: bool,
    label: Option<String>,
}

fn superblock(dev: &dyn BlockDevice) -> Result<Super, FsError> {
    let sb = read_vec(dev, 0, 512.min(dev.len() as usize))?;
    if sb.get(..4) != Some(b"XFSB") {
        return Err(corrupt(FS, "no XFS superblock"));
    }
    let block = u64::from(be32(&sb, 4));
    let sector = u64::from(be16(&sb, 102));
    let version = be16(&sb, 100) & 0xf;
    if !(512..=65536).contains(&block) || !block.is_power_of_two() {
        return Err(corrupt(FS, format!("block size {block}")));
    }
    if !(512..=32768).contains(&sector) || !sector.is_power_of_two() || sector > block {
        return Err(corrupt(FS, format!("sector size {sector}")));
    }
    if !(4..=5).contains(&version) {
        return Err(FsError::Unsupported {
            fs: FS,
            feature: format!("superblock version {version}"),
        });
    }
    let s = Super {
        block,
        blocks: be64(&sb, 8),
        ag_blocks: u64::from(be32(&sb, 84)),
        ag_count: u64::from(be32(&sb, 88)),
        sector,
        v5: version == 5,
        label: {
            let l = String::from_utf8_lossy(&sb[108..120])
                .trim_end_matches('\0')
                .to_string();
            (!l.is_empty()).then_some(l)
        },
    };
    if s.ag_blocks < 8 || s.ag_count == 0 || s.blocks == 0 {
        return Err(corrupt(
            FS,
            format!(
                "{} groups of {} blocks, {} blocks",
                s.ag_count, s.ag_blocks, s.blocks
            ),
        ));
    }
    // The groups cover the blocks exactly: all full but the last.
    let before_last = (s.ag_count - 1).checked_mul(s.ag_blocks);
    if !before_last.is_some_and(|b| b < s.blocks && s.blocks - b <= s.ag_blocks) {
        return Err(corrupt(
            FS,
            format!(
                "{} groups of {} blocks do not make {} blocks",
                s.ag_count, s.ag_blocks, s.blocks
            ),
        ));
    }
    Ok(s)
}

/// One allocation group's free extents (group-relative blocks), appended to `free` as bytes.
fn group_free(
    dev: &dyn BlockDevice,
    s: &Super,
    ag: u64,
    free: &mut ExtentMap,
) -> Result<(), FsError> {
    let ag_start = ag * s.ag_blocks * s.block;
    let ag_len = if ag + 1 == s.ag_count {
        s.blocks - ag * s.ag_blocks
    } else {
        s.ag_blocks
    };
    let agf = read_vec(dev, ag_start + s.sector, s.sector as usize)?;
    if agf.get(..4) != Some(b"XAGF") {
        return Err(corrupt(FS, format!("group {ag}: no AGF")));
    }
    if u64::from(be32(&agf, 8)) != ag || u64::from(be32(&agf, 12)) != ag_len {
        return Err(corrupt(
            FS,
            format!(
                "group {ag}: AGF says group {} of {} blocks, expected {ag_len}",
                be32(&agf, 8),
                be32(&agf, 12)
            ),
        ));
    }
    let root = u64::from(be32(&agf, 16));
    let levels = be32(&agf, 28);
    let want_free = u64::from(be32(&agf, 52));
    if levels == 0 || levels > MAX_LEVELS {
        return Err(corrupt(
            FS,
            format!("group {ag}: free-space btree of {levels} levels"),
        ));
    }
    let (magic, header): (&[u8], usize) = if s.v5 { (b"AB3B", 56) } else { (b"ABTB", 16) };
    let mut counted = 0u64;
    // The last free extent seen (its end), to check order and overlap across leaves.
    let mut last_end = 0u64;
    // Blocks visited, bounding the walk however the pointers are laid.
    let mut visited = 0u64;
    let mut stack = vec![(root, levels - 1)];
    while let Some((bno, level)) = stack.pop() {
        visited += 1;
        if bno == 0 || bno >= ag_len || visited > ag_len {
            return Err(corrupt(
                FS,
                format!("group {ag}: btree block {bno} outside the group"),
            ));
        }
        let b = read_vec(dev, ag_start + bno * s.block, s.block as usize)?;
        if b.get(..4) != Some(magic) || u32::from(be16(&b, 4)) != level {
            return Err(corrupt(
                FS,
                format!("group {ag}: block {bno} is not a free-space btree block of level {level}"),
            ));
        }
        if s.v5 {
            // Its own address (in 512-byte units from the device's start) and its group.
            let daddr = be64(&b, 16);
            if daddr != (ag_start + bno * s.block) / 512 || u64::from(be32(&b, 48)) != ag {
                return Err(corrupt(
                    FS,
                    format!("group {ag}: btree block {bno} names another place"),
                ));
            }
        }
        let n = usize::from(be16(&b, 6));
        if level == 0 {
            if header + n * 8 > b.len() {
                return Err(corrupt(
                    FS,
                    format!("group {ag}: leaf {bno} of {n} records"),
                ));
            }
            for i in 0..n {
                let o = header + i * 8;
                let (start, count) = (u64::from(be32(&b, o)), u64::from(be32(&b, o + 4)));
                if count == 0 || start < last_end || start + count > ag_len {
                    return Err(corrupt(
                        FS,
                        format!("group {ag}: free extent {start}+{count} out of order or place"),
                    ));
                }
                last_end = start + count;
                counted += count;
                free.push(ag_start + start * s.block, count * s.block);
            }
        } else {
            // Keys then pointers; the pointers start after the block's room for keys.
            let max = (b.len() - header) / 12;
            if n == 0 || n > max {
                return Err(corrupt(FS, format!("group {ag}: node {bno} of {n} keys")));
            }
            let ptrs = header + max * 8;
            // Pushed last-first so the leaves are walked left to right.
            for i in (0..n).rev() {
                stack.push((u64::from(be32(&b, ptrs + i * 4)), level - 1));
            }
        }
    }
    if counted != want_free {
        return Err(corrupt(
            FS,
            format!(
                "group {ag}: free-space btree holds {counted} blocks, the AGF says {want_free}"
            ),
        ));
    }
    Ok(())
}

pub(super) fn read(dev: &dyn BlockDevice) -> Result<FsReport, FsError> {
    let s = superblock(dev)?;
    let fs_size = super::volume_size(FS, s.blocks, s.block, dev)?;
    let mut free = ExtentMap::new();
    for ag in 0..s.ag_count {
        group_free(dev, &s, ag, &mut free)?;
    }
    free.normalize();
    Ok(FsReport {
        kind: FS,
        block_size: s.block as u32,
        fs_size,
        used: free.gaps(0, fs_size),
        label: s.label,
        volumes: Vec::new(),
    })
}

#[cfg(test)]
#[path = "xfs_tests.rs"]
mod tests;
