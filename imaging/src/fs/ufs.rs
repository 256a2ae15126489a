//! UFS1 and UFS2 (the BSDs' FFS, little-endian): used fragments from the cylinder groups'
//! free-fragment maps.
//!
//! The superblock is at byte 8192 or 65536 (UFS2 from FreeBSD's newfs), or 262144. Cylinder
//! group `c` describes the `fs_fpg` fragments from `c × fs_fpg`; its header block (at the
//! group's start, shifted per group on UFS1, plus `fs_cblkno`) holds a map with a bit per
//! fragment, set when the fragment is free. Everything else is in use: the boot area, the
//! superblock copies, the group headers, the inode tables, the directories, the files.
//!
//! Checked before the map is trusted: the filesystem marked clean, every group header's magic
//! and index, each group's free fragments matching its summary (free blocks × fragments per
//! block + free fragments), and the groups adding up to the superblock's totals.
//!
//! Not read: the inodes, the files. Big-endian UFS (SPARC) is not recognised.

use super::{corrupt, le32, le64, FsError, FsKind, FsReport};
use crate::device::{read_vec, BlockDevice};
use crate::extent::ExtentMap;

const FS: FsKind = FsKind::Ufs;
const UFS1_MAGIC: u32 = 0x0001_1954;
const UFS2_MAGIC: u32 = 0x1954_0119;
const CG_MAGIC: u32 = 0x0009_0255;
/// Where a superblock may be.
const SUPER_AT: [u64; 3] = [8192, 65536, 262_144];
const SUPER_LEN: usize = 1376;

/// The superblock's offset and bytes, when one is on `dev`.
fn find_super(dev: &dyn BlockDevice) -> Result<Option<(u64, Vec<u8>)>, FsError> {
    for at in SUPER_AT {
        if at + SUPER_LEN as u64 > dev.len() {
            break;
        }
        let sb = read_vec(dev, at, SUPER_LEN)?;
        let magic = le32(&sb, 1372);
        // UFS2 at 8192 is what NetBSD's makefs writes; FreeBSD's newfs puts it at 65536.
        if (magic == UFS1_MAGIC && at != 65536) || magic == UFS2_MAGIC {
            return Ok(Some((at, sb)));
        }
    }
    Ok(None)
}

/// Whether `dev` holds a UFS superblock.
pub(super) fn probe(dev: &dyn BlockDevice) -> Result<bool, std::io::Error> {
    match find_super(dev) {
        Ok(s) => Ok(s.is_some()),
        Err(FsError::Io(e)) => Err(e),
        Err(_) => Ok(false),
    }
}

pub(super) fn read(dev: &dyn BlockDevice) -> Result<FsReport, FsError> {
    let (sb_at, sb) = find_super(dev)?.ok_or_else(|| corrupt(FS, "no UFS superblock"))?;
    let ufs2 = le32(&sb, 1372) == UFS2_MAGIC;
    let i32_at = |o: usize| le32(&sb, o) as i32;
    let (cblkno, cgoffset, cgmask) = (i32_at(12), i32_at(24), i32_at(28));
    let ncg = u64::from(le32(&sb, 44));
    let (bsize, fsize, frag) = (i32_at(48), i32_at(52), i32_at(56));
    let fpg = i32_at(188);
    if !(512..=65536).contains(&fsize)
        || !(4096..=65536).contains(&bsize)
        || !matches!(frag, 1 | 2 | 4 | 8)
        || bsize != fsize * frag
        || fpg <= 0
        || cblkno < 0
        || ncg == 0
    {
        return Err(corrupt(
            FS,
            format!("{bsize}-byte blocks of {frag} {fsize}-byte fragments, {ncg} groups of {fpg}"),
        ));
    }
    let (fsize, frag, fpg) = (fsize as u64, frag as u64, fpg as u64);
    let frags = if ufs2 {
        le64(&sb, 1080)
    } else {
        u64::from(le32(&sb, 36))
    };
    let size = frags
        .checked_mul(fsize)
        .filter(|&n| n <= dev.len() && frags <= ncg * fpg && frags > (ncg - 1) * fpg)
        .ok_or_else(|| {
            corrupt(
                FS,
                format!(
                    "{frags} fragments of {fsize} bytes in {ncg} groups on a {}-byte device",
                    dev.len()
                ),
            )
        })?;
    if sb[209] != 1 {
        return Err(FsError::Unsupported {
            fs: FS,
            feature: "not marked clean (unmounted uncleanly, or needing fsck)".into(),
        });
    }
    // The superblock's totals: free blocks and free fragments.
    let (want_blocks, want_frags) = if ufs2 {
        (le64(&sb, 1016), le64(&sb, 1032))
    } else {
        (u64::from(le32(&sb, 196)), u64::from(le32(&sb, 204)))
    };

    let mut used = ExtentMap::new();
    used.push(0, sb_at + SUPER_LEN as u64);
    let (mut free_blocks, mut free_frags) = (0u64, 0u64);
    for c in 0..ncg {
        let base = c * fpg;
        let start = if ufs2 {
            base
        } else {
            // UFS1 staggers each group's header by a multiple of fs_old_cgoffset.
            base + (cgoffset.max(0) as u64) * (c & !(cgmask as i64 as u64))
        };
        let hdr_at = (start + cblkno as u64) * fsize;
        if hdr_at + bsize as u64 > dev.len() {
            return Err(corrupt(
                FS,
                format!("group {c}'s header is past the device"),
            ));
        }
        let cg = read_vec(dev, hdr_at, bsize as usize)?;
        let ndblk = u64::from(le32(&cg, 20));
        let freeoff = le32(&cg, 96) as usize;
        if le32(&cg, 4) != CG_MAGIC
            || u64::from(le32(&cg, 12)) != c
            || ndblk > fpg
            || base + ndblk > frags
        {
            return Err(corrupt(
                FS,
                format!(
                    "group {c}'s header at byte {hdr_at}: magic {:#x}, index {}, {ndblk} fragments",
                    le32(&cg, 4),
                    le32(&cg, 12)
                ),
            ));
        }
        let map = cg
            .get(freeoff..freeoff + ndblk.div_ceil(8) as usize)
            .ok_or_else(|| corrupt(FS, format!("group {c}'s free map at offset {freeoff}")))?;
        // The map marks free fragments: what is used is its complement.
        let inverted: Vec<u8> = map.iter().map(|b| !b).collect();
        let free = ndblk
            - (0..ndblk)
                .filter(|&i| inverted[(i / 8) as usize] & (1 << (i % 8)) != 0)
                .count() as u64;
        let (nbfree, nffree) = (u64::from(le32(&cg, 28)), u64::from(le32(&cg, 36)));
        if free != nbfree * frag + nffree {
            return Err(corrupt(
                FS,
                format!(
                    "group {c}: {free} free fragments in its map, {nbfree} free blocks and \
                     {nffree} free fragments in its summary"
                ),
            ));
        }
        free_blocks += nbfree;
        free_frags += nffree;
        used.push_bitmap(&inverted, ndblk, base, fsize, 0);
    }
    if (free_blocks, free_frags) != (want_blocks, want_frags) {
        return Err(corrupt(
            FS,
            format!(
                "the groups hold {free_blocks} free blocks and {free_frags} free fragments, \
                 the superblock {want_blocks} and {want_frags}"
            ),
        ));
    }
    let label = ufs2
        .then(|| {
            let raw = &sb[680..712];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(&raw[..end]).into_owned()
        })
        .filter(|l| !l.is_empty());
    used.normalize();
    Ok(FsReport {
        kind: FS,
        block_size: fsize as u32,
        fs_size: size,
        used,
        label,
        volumes: Vec::new(),
    })
}

#[cfg(test)]
#[path = "ufs_tests.rs"]
mod tests;
