//! NILFS2: used segments from the segment usage file (sufile), as of the last super root.
//!
//! The superblock (at byte 1024, a copy in the device's last 4 KiB) names the partial segment
//! written last; its last block is the super root, which holds the inodes of the DAT (virtual
//! to physical block translation), the checkpoint file and the sufile. The sufile's blocks are
//! found through its block mapping (direct, or a B-tree), their virtual numbers through the
//! DAT's (whose pointers are physical). Each segment usage entry says whether the segment is
//! clean; a log-structured filesystem writes segments whole and frees them only by cleaning,
//! so every segment not clean is kept whole, with the superblock area before the first segment
//! and the superblock copy at the end.
//!
//! Checked before the map is trusted: the superblock's and the super root's crcs, the
//! filesystem cleanly unmounted (writes after the super root would need roll-forward), every
//! mapping inside the device, and the clean segments counted matching the sufile's header.
//!
//! Not read: the checkpoints, the ifile, the files. Garbage inside dirty segments (blocks a
//! cleaner would reclaim) is stored: the map is by segment.

use super::{corrupt, le16, le32, le64, FsError, FsKind, FsReport};
use crate::device::{read_vec, BlockDevice};
use crate::extent::ExtentMap;

const FS: FsKind = FsKind::Nilfs2;
const MAGIC: u16 = 0x3434;
const SEGSUM_MAGIC: u32 = 0x1eaf_fa11;
/// `s_state`: unmounted cleanly.
const VALID_FS: u16 = 0x1;
/// Segment summary flag: the partial segment ends with a super root.
const SS_SR: u16 = 0x4;

/// The kernel's crc32_le: reflected 0xEDB88320, no inversion, seeded.
fn crc(seed: u32, data: &[u8]) -> u32 {
    const T: [u32; 256] = super::crc_table(0xEDB8_8320);
    data.iter().fold(seed, |c, &b| {
        (c >> 8) ^ T[((c ^ u32::from(b)) & 0xFF) as usize]
    })
}

/// The filesystem's geometry and a block reader.
struct Nilfs<'a> {
    dev: &'a dyn BlockDevice,
    bs: u64,
    blocks: u64,
}

impl Nilfs<'_> {
    fn block(&self, n: u64) -> Result<Vec<u8>, FsError> {
        if n == 0 || n >= self.blocks {
            return Err(corrupt(
                FS,
                format!("block {n} is outside the {}-block device", self.blocks),
            ));
        }
        Ok(read_vec(self.dev, n * self.bs, self.bs as usize)?)
    }
}

/// A metadata file's block mapping (the inode's `i_bmap`, seven 64-bit words).
struct Bmap<'a> {
    raw: &'a [u8],
}

impl Bmap<'_> {
    fn word(&self, i: usize) -> u64 {
        le64(self.raw, i * 8)
    }

    /// The pointer recorded for logical block `key`: direct (six pointers after a header
    /// word), or through the B-tree rooted in the inode (three keys, three pointers).
    /// `resolve` turns a node pointer into a block number (the DAT's are physical, other
    /// files' virtual).
    fn lookup(
        &self,
        fs: &Nilfs<'_>,
        key: u64,
        resolve: &dyn Fn(u64) -> Result<u64, FsError>,
    ) -> Result<u64, FsError> {
        let flags = self.raw[0];
        if flags & 0x1 == 0 {
            // Direct.
            let p = if key < 6 {
                self.word(1 + key as usize)
            } else {
                0
            };
            if p == 0 {
                return Err(corrupt(FS, format!("metadata block {key} is not mapped")));
            }
            return Ok(p);
        }
        let mut level = u64::from(self.raw[1]);
        let n = usize::from(le16(self.raw, 2));
        if n == 0 || n > 3 || !(1..14).contains(&level) {
            return Err(corrupt(
                FS,
                format!("B-tree root of level {level} with {n} children"),
            ));
        }
        let keys: Vec<u64> = (0..n).map(|i| self.word(1 + i)).collect();
        let ptrs: Vec<u64> = (0..n).map(|i| self.word(4 + i)).collect();
        let mut next = child(&keys, &ptrs, key, level)?;
        let ncmax = ((fs.bs - 16) / 16) as usize;
        while level > 1 {
            let node = fs.block(resolve(next)?)?;
            let (nlevel, nn) = (u64::from(node[1]), usize::from(le16(&node, 2)));
            if nlevel != level - 1 || nn == 0 || nn > ncmax {
                return Err(corrupt(
                    FS,
                    format!("B-tree node of level {nlevel} with {nn} children under level {level}"),
                ));
            }
            level = nlevel;
            let keys: Vec<u64> = (0..nn).map(|i| le64(&node, 16 + i * 8)).collect();
            let ptrs: Vec<u64> = (0..nn)
                .map(|i| le64(&node, 16 + ncmax * 8 + i * 8))
                .collect();
            next = child(&keys, &ptrs, key, level)?;
        }
        Ok(next)
    }
}

/// In a node of `level`: at level 1 the pointer for exactly `key`, above it the child whose
/// range holds `key`.
fn child(keys: &[u64], ptrs: &[u64], key: u64, level: u64) -> Result<u64, FsError> {
    let i = if level == 1 {
        keys.iter().position(|&k| k == key)
    } else {
        keys.iter().rposition(|&k| k <= key)
    };
    i.map(|i| ptrs[i])
        .filter(|&p| p != 0)
        .ok_or_else(|| corrupt(FS, format!("metadata block {key} is not in its B-tree")))
}

/// Where entry `nr` of a persistent-allocator file (the DAT) lies: its logical block and the
/// byte offset in it. Groups of `8 × block size` entries each have a bitmap block before
/// their entry blocks; a descriptor block leads every `block size / 4` groups.
fn palloc_entry(bs: u64, entry_size: u64, nr: u64) -> (u64, u64) {
    let per_block = bs / entry_size;
    let per_group = bs * 8;
    let blocks_per_group = per_group.div_ceil(per_block) + 1;
    let groups_per_desc = bs / 4;
    let blocks_per_desc = groups_per_desc * blocks_per_group + 1;
    let (group, in_group) = (nr / per_group, nr % per_group);
    let desc = (group / groups_per_desc) * blocks_per_desc;
    let bitmap = desc + 1 + (group % groups_per_desc) * blocks_per_group;
    (
        bitmap + 1 + in_group / per_block,
        (in_group % per_block) * entry_size,
    )
}

/// Whether the superblock area (bytes 1024 on of `head`) holds a NILFS2 superblock: the magic
/// and revision 2 (two bytes of magic alone turn up in other data).
pub(super) fn probe(head: &[u8]) -> bool {
    le16(head, 1024 + 6) == MAGIC && le32(head, 1024) == 2
}

pub(super) fn read(dev: &dyn BlockDevice) -> Result<FsReport, FsError> {
    if dev.len() < 4096 {
        return Err(corrupt(FS, "device too small for a superblock"));
    }
    let sb = read_vec(dev, 1024, 1024)?;
    if le16(&sb, 6) != MAGIC {
        return Err(corrupt(FS, "no NILFS2 superblock"));
    }
    let bytes = usize::from(le16(&sb, 8));
    let seed = le32(&sb, 12);
    if !(280..=1024).contains(&bytes) {
        return Err(corrupt(FS, format!("superblock of {bytes} bytes")));
    }
    let sum = crc(crc(crc(seed, &sb[..16]), &[0; 4]), &sb[20..bytes]);
    if sum != le32(&sb, 16) {
        return Err(corrupt(FS, "superblock checksum mismatch"));
    }
    let log_bs = le32(&sb, 20);
    if log_bs > 6 {
        return Err(corrupt(FS, format!("block size 2^{}", log_bs + 10)));
    }
    let bs = 1024u64 << log_bs;
    let nsegs = le64(&sb, 24);
    let dev_size = le64(&sb, 32);
    let first = le64(&sb, 40);
    let bps = u64::from(le32(&sb, 48));
    if dev_size > dev.len() || dev_size < 8192 {
        return Err(corrupt(
            FS,
            format!(
                "a {dev_size}-byte filesystem on a {}-byte device",
                dev.len()
            ),
        ));
    }
    let blocks = dev_size / bs;
    if bps < 16 || nsegs == 0 || nsegs.checked_mul(bps).is_none_or(|n| n > blocks) || first >= bps {
        return Err(corrupt(
            FS,
            format!("{nsegs} segments of {bps} blocks from block {first} in {blocks} blocks"),
        ));
    }
    if le16(&sb, 0x74) & VALID_FS == 0 {
        return Err(FsError::Unsupported {
            fs: FS,
            feature: "not cleanly unmounted (writes after the last super root need roll-forward)"
                .into(),
        });
    }
    let (inode_size, dat_entry, su_size) = (
        u64::from(le16(&sb, 0x90)),
        u64::from(le16(&sb, 0x92)),
        u64::from(le16(&sb, 0x96)),
    );
    if !(128..=512).contains(&inode_size)
        || !(32..=bs / 2).contains(&dat_entry)
        || !(16..=bs / 2).contains(&su_size)
    {
        return Err(corrupt(
            FS,
            format!("inodes of {inode_size}, DAT entries of {dat_entry}, segment usages of {su_size} bytes"),
        ));
    }
    let nilfs = Nilfs { dev, bs, blocks };

    // The last partial segment and its super root.
    let pseg = le64(&sb, 0x40);
    let ss = nilfs.block(pseg)?;
    let (ss_flags, ss_blocks) = (le16(&ss, 14), u64::from(le32(&ss, 40)));
    if le32(&ss, 8) != SEGSUM_MAGIC || ss_flags & SS_SR == 0 || ss_blocks < 2 || ss_blocks > bps {
        return Err(corrupt(
            FS,
            format!("the last partial segment at block {pseg} has no super root"),
        ));
    }
    let sr = nilfs.block(pseg + ss_blocks - 1)?;
    let sr_bytes = usize::from(le16(&sr, 4));
    if sr_bytes < 16 + 3 * inode_size as usize
        || sr_bytes > sr.len()
        || crc(seed, &sr[4..sr_bytes]) != le32(&sr, 0)
    {
        return Err(corrupt(FS, "super root checksum mismatch"));
    }
    let inode = |i: u64| &sr[(16 + i * inode_size) as usize..(16 + (i + 1) * inode_size) as usize];
    let (dat_ino, su_ino) = (inode(0), inode(2));
    let dat = Bmap {
        raw: &dat_ino[56..112],
    };
    let sufile = Bmap {
        raw: &su_ino[56..112],
    };
    let physical = |p: u64| -> Result<u64, FsError> { Ok(p) };
    // A virtual block number through the DAT.
    let translate = |v: u64| -> Result<u64, FsError> {
        let (blk, off) = palloc_entry(bs, dat_entry, v);
        let b = nilfs.block(dat.lookup(&nilfs, blk, &physical)?)?;
        let p = le64(&b, off as usize);
        if p == 0 {
            return Err(corrupt(
                FS,
                format!("virtual block {v} has no physical block"),
            ));
        }
        Ok(p)
    };

    // The segment usage entries, after the header's slots.
    let per_block = bs / su_size;
    let first_slot = 24u64.div_ceil(su_size);
    let block_of = |slot: u64| -> Result<Vec<u8>, FsError> {
        let v = sufile.lookup(&nilfs, slot / per_block, &translate)?;
        nilfs.block(translate(v)?)
    };
    let head = block_of(0)?;
    let want_clean = le64(&head, 0);
    let mut used = ExtentMap::new();
    used.push(0, first * bs);
    // The superblock copy in the device's last 4 KiB.
    used.push((dev_size >> 12).saturating_sub(1) << 12, 4096);
    let mut clean = 0u64;
    let mut cached: Option<(u64, Vec<u8>)> = Some((0, head));
    for seg in 0..nsegs {
        let slot = first_slot + seg;
        let b = slot / per_block;
        if cached.as_ref().is_none_or(|(n, _)| *n != b) {
            cached = Some((b, block_of(slot)?));
        }
        let data = &cached.as_ref().expect("cached above").1;
        let flags = le32(data, ((slot % per_block) * su_size + 12) as usize);
        if flags == 0 {
            clean += 1;
            continue;
        }
        let start = (seg * bps).max(first);
        used.push(start * bs, ((seg + 1) * bps - start) * bs);
    }
    if clean != want_clean {
        return Err(corrupt(
            FS,
            format!("{clean} clean segments counted, the segment usage file says {want_clean}"),
        ));
    }
    let label = {
        let raw = &sb[0xA8..0xA8 + 80];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        let l = String::from_utf8_lossy(&raw[..end]).into_owned();
        (!l.is_empty()).then_some(l)
    };
    used.normalize();
    Ok(FsReport {
        kind: FS,
        block_size: bs as u32,
        fs_size: dev_size,
        used,
        label,
        volumes: Vec::new(),
    })
}

#[cfg(test)]
#[path = "nilfs2_tests.rs"]
mod tests;
