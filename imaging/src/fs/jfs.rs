//! JFS: used blocks from the block allocation map's persistent bitmaps.
//!
//! The superblock is at byte 32768; the aggregate inode table at 44 KiB. Its inode 2 is the
//! block allocation map, a file whose extents (an xtree rooted in the inode) hold a control
//! page (the map's size and free count), then dmap control pages and the dmaps: each dmap
//! describes 8192 blocks, its persistent map a bit per block (32-bit little-endian words, the
//! first block at the most significant bit). The map covers the aggregate up to the fsck
//! workspace; that and the inline log after it are kept whole, as is everything before the
//! secondary superblock's end (boot area, superblocks, the aggregate inode map and table).
//!
//! Checked before the map is trusted: the aggregate cleanly unmounted (its log may hold newer
//! maps otherwise), the map file's extents inside the aggregate, every dmap's start and block
//! count where the map's layout puts them, each dmap's free count matching its bitmap, and the
//! free blocks adding up to the control page's count.
//!
//! Not read: the inodes, the directories, the files.

use super::{corrupt, le16, le32, le64, FsError, FsKind, FsReport};
use crate::device::{read_vec, BlockDevice};
use crate::extent::ExtentMap;

const FS: FsKind = FsKind::Jfs;
const SUPER_AT: u64 = 0x8000;
/// The aggregate inode table; inode 2 is the block map.
const AIT_AT: u64 = 0xB000;
/// Everything before here is fixed metadata: the boot area up to the secondary superblock's
/// end.
const FIXED_END: u64 = 0x1_0000;
const PAGE: u64 = 4096;
/// Blocks a dmap describes.
const PER_DMAP: u64 = 8192;
/// The inline log flag in `s_flag`.
const INLINE_LOG: u32 = 0x800;

/// An extent descriptor (`pxd_t`): (address, length) in aggregate blocks.
fn pxd(b: &[u8], o: usize) -> (u64, u64) {
    let la = le32(b, o);
    (
        (u64::from(la >> 24) << 32) | u64::from(le32(b, o + 4)),
        u64::from(la & 0x00FF_FFFF),
    )
}

/// The extents of a file: (file offset, length, address) in blocks, sorted by offset.
type Extents = Vec<(u64, u64, u64)>;

/// Collects the extents under an xtree node holding `count` 16-byte slots from `slots` (the
/// first two are its header); internal entries lead to 4 KiB xtree pages.
fn xtree(
    dev: &dyn BlockDevice,
    node: &[u8],
    bs: u64,
    blocks: u64,
    depth: u32,
    out: &mut Extents,
) -> Result<(), FsError> {
    let flag = node[16];
    let next = usize::from(le16(node, 18));
    let max = usize::from(le16(node, 20));
    if next < 2 || next > max || max * 16 > node.len() || depth > 8 {
        return Err(corrupt(
            FS,
            format!("block map xtree node with {next} of {max} slots"),
        ));
    }
    for i in 2..next {
        let e = &node[i * 16..i * 16 + 16];
        let off = (u64::from(e[3]) << 32) | u64::from(le32(e, 4));
        let (addr, len) = pxd(e, 8);
        if len == 0 || addr.checked_add(len).is_none_or(|end| end > blocks) {
            return Err(corrupt(
                FS,
                format!("block map extent of {len} blocks at {addr} outside the aggregate"),
            ));
        }
        if flag & 0x04 != 0 {
            // Internal: the entry points at a child xtree page.
            let child = read_vec(dev, addr * bs, PAGE as usize)?;
            xtree(dev, &child, bs, blocks, depth + 1, out)?;
        } else if flag & 0x02 != 0 {
            out.push((off, len, addr));
        } else {
            return Err(corrupt(FS, format!("block map xtree node flag {flag:#x}")));
        }
    }
    Ok(())
}

/// The aggregate block holding logical block `l` of a file.
fn locate(ext: &Extents, l: u64) -> Option<u64> {
    ext.iter()
        .find(|&&(off, len, _)| l >= off && l < off + len)
        .map(|&(off, _, addr)| addr + (l - off))
}

pub(super) fn read(dev: &dyn BlockDevice) -> Result<FsReport, FsError> {
    if dev.len() < FIXED_END {
        return Err(corrupt(
            FS,
            "device too small for the aggregate's fixed metadata",
        ));
    }
    let sb = read_vec(dev, SUPER_AT, 4096)?;
    if &sb[0..4] != b"JFS1" {
        return Err(corrupt(FS, "no JFS superblock"));
    }
    let bs = u64::from(le32(&sb, 16));
    let pbs = u64::from(le32(&sb, 24));
    if !(512..=4096).contains(&bs) || !bs.is_power_of_two() || !(512..=bs).contains(&pbs) {
        return Err(corrupt(
            FS,
            format!("block size {bs}, device block size {pbs}"),
        ));
    }
    let state = le32(&sb, 40);
    if state != 0 {
        return Err(FsError::Unsupported {
            fs: FS,
            feature: format!("not cleanly unmounted (state {state}; its log may hold newer maps)"),
        });
    }
    // The size the map covers; the fsck workspace and an inline log follow it.
    let mapped = le64(&sb, 8)
        .checked_mul(pbs)
        .map(|b| b / bs)
        .ok_or_else(|| corrupt(FS, "aggregate size overflows"))?;
    let flags = le32(&sb, 36);
    let mut tail = vec![pxd(&sb, 80)];
    if flags & INLINE_LOG != 0 {
        tail.push(pxd(&sb, 72));
    }
    let blocks = tail
        .iter()
        .map(|&(a, l)| a.saturating_add(l))
        .fold(mapped, u64::max);
    let size = blocks
        .checked_mul(bs)
        .filter(|&n| n <= dev.len() && n >= FIXED_END)
        .ok_or_else(|| {
            corrupt(
                FS,
                format!(
                    "{blocks} blocks of {bs} bytes on a {}-byte device",
                    dev.len()
                ),
            )
        })?;

    // The block map inode's xtree root: slots of 16 bytes from byte 224 of the inode.
    let ino = read_vec(dev, AIT_AT + 2 * 512, 512)?;
    if le32(&ino, 8) != 2 {
        return Err(corrupt(
            FS,
            "the aggregate inode table's inode 2 is not the block map",
        ));
    }
    let mut ext = Extents::new();
    xtree(dev, &ino[224..512], bs, blocks, 0, &mut ext)?;
    let per_page = PAGE / bs;
    let page = |n: u64| -> Result<Vec<u8>, FsError> {
        let l = n * per_page;
        let at = locate(&ext, l)
            .filter(|_| (0..per_page).all(|k| locate(&ext, l + k).is_some()))
            .ok_or_else(|| corrupt(FS, format!("block map page {n} is in no extent")))?;
        Ok(read_vec(dev, at * bs, PAGE as usize)?)
    };
    let ctl = page(0)?;
    let (map_size, map_free) = (le64(&ctl, 0), le64(&ctl, 8));
    let l2 = le32(&ctl, 16);
    if u64::from(l2) != u64::from(per_page.trailing_zeros()) || map_size != mapped {
        return Err(corrupt(
            FS,
            format!(
                "block map of {map_size} blocks ({l2} per page, log2) for an aggregate of \
                 {mapped}"
            ),
        ));
    }

    let mut used = ExtentMap::new();
    used.push(0, FIXED_END);
    for (a, l) in tail {
        used.push(a * bs, l * bs);
    }
    let mut free = 0u64;
    for d in 0..map_size.div_ceil(PER_DMAP) {
        let start = d * PER_DMAP;
        // The dmap's page in the map file: the control page, then for each 2^23 and 2^33
        // blocks a level 0 and level 1 control page, before the dmaps they cover.
        let n = (start >> 13) + (start >> 23) + (start >> 33) + 3 + 1;
        let dm = page(n)?;
        let count = u64::from(le32(&dm, 0));
        let nfree = u64::from(le32(&dm, 4));
        if le64(&dm, 8) != start || count != PER_DMAP.min(map_size - start) || nfree > count {
            return Err(corrupt(
                FS,
                format!(
                    "dmap {d}: {count} blocks from {} where {} from {start} were expected",
                    le64(&dm, 8),
                    PER_DMAP.min(map_size - start)
                ),
            ));
        }
        // The persistent map as a bit string, the first block at bit 0: each little-endian
        // word's most significant byte first, each byte's bits reversed.
        let bits: Vec<u8> = dm[3072..4096]
            .chunks_exact(4)
            .flat_map(|w| [w[3], w[2], w[1], w[0]])
            .map(u8::reverse_bits)
            .collect();
        let set: u64 = (0..count)
            .filter(|&i| bits[(i / 8) as usize] & (1 << (i % 8)) != 0)
            .count() as u64;
        if count - set != nfree {
            return Err(corrupt(
                FS,
                format!(
                    "dmap {d}: {nfree} free blocks recorded, {} in its map",
                    count - set
                ),
            ));
        }
        free += nfree;
        used.push_bitmap(&bits, count, start, bs, 0);
    }
    if free != map_free {
        return Err(corrupt(
            FS,
            format!("the dmaps leave {free} blocks free, the map's control page {map_free}"),
        ));
    }
    let label = {
        let raw = &sb[152..168];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        let l = String::from_utf8_lossy(&raw[..end]).trim().to_string();
        (!l.is_empty()).then_some(l)
    };
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
#[path = "jfs_tests.rs"]
mod tests;
