//! ext2/ext3/ext4: the block bitmaps of every block group.
//!
//! Handles 1 KiB to 64 KiB blocks, flex_bg (bitmaps and inode tables outside their group),
//! 64bit descriptors, meta_bg descriptor placement, sparse_super and sparse_super2 backups, and
//! uninit_bg/metadata_csum groups flagged BLOCK_UNINIT (whose bitmap was never written: their used
//! blocks are computed as e2fsprogs and the kernel do, from the superblock and descriptor backups
//! they hold, plus every group's bitmaps and inode table wherever they live).
//!
//! bigalloc is read by clusters: the block bitmap holds a bit per cluster, and the descriptors
//! count free clusters.
//!
//! Refused (so the raw fallback takes over): an external journal device, a journal
//! that needs recovery (its replay would write blocks the on-disk bitmaps call free), a
//! superblock or group descriptor whose checksum (metadata_csum's crc32c, uninit_bg's crc16)
//! does not match — a damaged BLOCK_UNINIT flag would otherwise hide a whole group's data — and
//! any descriptor whose bitmaps point outside the filesystem or whose free count is below what
//! its bitmap shows.

use super::{corrupt, crc32c, le16, le32, FsError, FsKind, FsReport};
use crate::device::{read_vec, BlockDevice};
use crate::extent::ExtentMap;

const SB_OFFSET: u64 = 1024;
const MAGIC: u16 = 0xEF53;

const COMPAT_HAS_JOURNAL: u32 = 0x4;
const COMPAT_SPARSE_SUPER2: u32 = 0x200;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_FLEX_BG: u32 = 0x200;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_HUGE_FILE: u32 = 0x8;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_BIGALLOC: u32 = 0x200;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
const BG_BLOCK_UNINIT: u16 = 0x2;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
/// Offset of `bg_checksum` in a group descriptor.
const BG_CHECKSUM: usize = 0x1E;

/// The kernel's crc16 (polynomial 0x8005, reflected), without inversion.
fn crc16(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Recognises ext2/3/4 from the first 4 KiB (the superblock sits at byte 1024).
pub(super) fn probe(head: &[u8]) -> Option<FsKind> {
    let sb = head.get(SB_OFFSET as usize..SB_OFFSET as usize + 1024)?;
    if le16(sb, 0x38) != MAGIC {
        return None;
    }
    Some(kind_of(sb))
}

fn kind_of(sb: &[u8]) -> FsKind {
    let compat = le32(sb, 0x5C);
    let incompat = le32(sb, 0x60);
    let ro = le32(sb, 0x64);
    if incompat & (INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG) != 0
        || ro & (RO_COMPAT_HUGE_FILE | RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0
    {
        FsKind::Ext4
    } else if compat & COMPAT_HAS_JOURNAL != 0 {
        FsKind::Ext3
    } else {
        FsKind::Ext2
    }
}

struct Geometry {
    kind: FsKind,
    bs: u64,
    /// Allocation unit: the cluster with bigalloc, else the block.
    cluster: u64,
    blocks: u64,
    first_data_block: u64,
    bpg: u64,
    groups: u64,
    desc_size: u64,
    descs_per_block: u64,
    inode_table_blocks: u64,
    reserved_gdt: u64,
    meta_bg: bool,
    first_meta_bg: u64,
    sparse_super: bool,
    sparse_super2: Option<[u64; 2]>,
    csum: bool,
    /// Descriptor checksum: crc32c seed (metadata_csum), or the uuid for crc16 (gdt_csum).
    desc_csum: DescCsum,
}

#[derive(Clone, Copy)]
enum DescCsum {
    None,
    Crc16([u8; 16], bool),
    Crc32c(u32),
}

impl Geometry {
    fn parse(sb: &[u8], dev_len: u64) -> Result<Self, FsError> {
        let kind = kind_of(sb);
        let err = |r: &str| corrupt(kind, r);
        let compat = le32(sb, 0x5C);
        let incompat = le32(sb, 0x60);
        let ro = le32(sb, 0x64);
        if incompat & INCOMPAT_JOURNAL_DEV != 0 {
            return Err(FsError::Unsupported {
                fs: kind,
                feature: "external journal device".into(),
            });
        }
        if incompat & INCOMPAT_RECOVER != 0 {
            return Err(FsError::Unsupported {
                fs: kind,
                feature: "journal needs recovery (filesystem not cleanly unmounted)".into(),
            });
        }
        let log_bs = le32(sb, 0x18);
        if log_bs > 6 {
            return Err(err(&format!("block size 2^(10+{log_bs}) is out of range")));
        }
        let bs = 1024u64 << log_bs;
        let bigalloc = ro & RO_COMPAT_BIGALLOC != 0;
        let cluster = if bigalloc {
            let log_c = le32(sb, 0x1C);
            if log_c < log_bs || log_c > log_bs + 16 {
                return Err(err(&format!(
                    "cluster size 2^(10+{log_c}) with {bs}-byte blocks"
                )));
            }
            1024u64 << log_c
        } else {
            bs
        };
        let is64 = incompat & INCOMPAT_64BIT != 0;
        let mut blocks = u64::from(le32(sb, 0x04));
        if is64 {
            blocks |= u64::from(le32(sb, 0x150)) << 32;
        }
        let first_data_block = u64::from(le32(sb, 0x14));
        // Per group: blocks, and with bigalloc clusters (a bitmap block's bits).
        let bpg = u64::from(le32(sb, 0x20));
        let upg = if bigalloc {
            u64::from(le32(sb, 0x24))
        } else {
            bpg
        };
        let ipg = u64::from(le32(sb, 0x28));
        if upg == 0 || upg > 8 * bs || upg % 8 != 0 || upg.checked_mul(cluster / bs) != Some(bpg) {
            return Err(err(&format!(
                "{bpg} blocks and {upg} allocation units per group with {bs}-byte blocks"
            )));
        }
        if first_data_block != u64::from(bs == 1024 && !bigalloc) {
            return Err(err(&format!(
                "first data block {first_data_block} with {bs}-byte blocks"
            )));
        }
        if blocks <= first_data_block || blocks.checked_mul(bs).is_none_or(|n| n > dev_len) {
            return Err(err(&format!(
                "{blocks} blocks of {bs} bytes do not fit the {dev_len}-byte device"
            )));
        }
        let rev = le32(sb, 0x4C);
        let inode_size = if rev == 0 {
            128
        } else {
            u64::from(le16(sb, 0x58))
        };
        if inode_size < 128 || inode_size > bs || !inode_size.is_power_of_two() {
            return Err(err(&format!("inode size {inode_size}")));
        }
        if ipg == 0 || ipg > 8 * bs {
            return Err(err(&format!("{ipg} inodes per group")));
        }
        let desc_size = if is64 { u64::from(le16(sb, 0xFE)) } else { 32 };
        if desc_size < 32 || desc_size > bs || !desc_size.is_power_of_two() {
            return Err(err(&format!("group descriptor size {desc_size}")));
        }
        let groups = (blocks - first_data_block).div_ceil(bpg);
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&sb[0x68..0x78]);
        let desc_csum = if ro & RO_COMPAT_METADATA_CSUM != 0 {
            // The superblock's own checksum covers everything before it.
            if crc32c(!0, &sb[..0x3FC]) != le32(sb, 0x3FC) {
                return Err(err("superblock checksum mismatch"));
            }
            let seed = if incompat & INCOMPAT_CSUM_SEED != 0 {
                le32(sb, 0x270)
            } else {
                crc32c(!0, &uuid)
            };
            DescCsum::Crc32c(seed)
        } else if ro & RO_COMPAT_GDT_CSUM != 0 {
            DescCsum::Crc16(uuid, is64)
        } else {
            DescCsum::None
        };
        let sparse_super2 = (compat & COMPAT_SPARSE_SUPER2 != 0)
            .then(|| [u64::from(le32(sb, 0x24C)), u64::from(le32(sb, 0x250))]);
        Ok(Self {
            kind,
            bs,
            cluster,
            blocks,
            first_data_block,
            bpg,
            groups,
            desc_size,
            descs_per_block: bs / desc_size,
            inode_table_blocks: (ipg * inode_size).div_ceil(bs),
            reserved_gdt: if incompat & INCOMPAT_META_BG != 0 {
                0
            } else {
                u64::from(le16(sb, 0xCE))
            },
            meta_bg: incompat & INCOMPAT_META_BG != 0,
            first_meta_bg: u64::from(le32(sb, 0x104)),
            sparse_super: ro & RO_COMPAT_SPARSE_SUPER != 0,
            sparse_super2,
            csum: ro & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0,
            desc_csum,
        })
    }

    /// Whether descriptor `d` of group `g` carries the checksum its features promise.
    fn desc_checksum_ok(&self, g: u64, d: &[u8]) -> bool {
        let group = (g as u32).to_le_bytes();
        let stored = le16(d, BG_CHECKSUM);
        let tail = d.get(BG_CHECKSUM + 2..).unwrap_or(&[]);
        match self.desc_csum {
            DescCsum::None => true,
            DescCsum::Crc32c(seed) => {
                let mut c = crc32c(seed, &group);
                c = crc32c(c, &d[..BG_CHECKSUM]);
                c = crc32c(c, &[0, 0]);
                c = crc32c(c, tail);
                (c & 0xFFFF) as u16 == stored
            }
            DescCsum::Crc16(uuid, is64) => {
                let mut c = crc16(!0, &uuid);
                c = crc16(c, &group);
                c = crc16(c, &d[..BG_CHECKSUM]);
                if is64 {
                    c = crc16(c, tail);
                }
                c == stored
            }
        }
    }

    fn group_start(&self, g: u64) -> u64 {
        self.first_data_block + g * self.bpg
    }

    fn group_blocks(&self, g: u64) -> u64 {
        (self.blocks - self.group_start(g)).min(self.bpg)
    }

    fn has_super(&self, g: u64) -> bool {
        if g == 0 {
            return true;
        }
        if let Some(b) = self.sparse_super2 {
            return g == b[0] || g == b[1];
        }
        if g == 1 || !self.sparse_super {
            return true;
        }
        // Powers of 3, 5 and 7.
        [3u64, 5, 7].iter().any(|&p| {
            let mut x = p;
            while x < g {
                x *= p;
            }
            x == g
        })
    }

    /// The block where group `g`'s superblock (copy) would be: its first block, except that
    /// the primary superblock is always at byte 1024 (block 1 with 1 KiB blocks, even when
    /// bigalloc makes block 0 the first data block).
    fn super_block(&self, g: u64) -> u64 {
        match self.group_start(g) {
            0 if self.bs == 1024 => 1,
            s => s,
        }
    }

    /// Number of old-style (non-meta_bg) group descriptor blocks.
    fn old_desc_blocks(&self) -> u64 {
        if self.meta_bg {
            self.first_meta_bg
        } else {
            self.groups.div_ceil(self.descs_per_block)
        }
    }

    /// The block holding group `g`'s descriptor (primary copy).
    fn desc_block(&self, g: u64) -> u64 {
        let mg = g / self.descs_per_block;
        if self.meta_bg && mg >= self.first_meta_bg {
            let first = mg * self.descs_per_block;
            self.super_block(first) + u64::from(self.has_super(first))
        } else {
            self.super_block(0) + 1 + mg
        }
    }

    /// Superblock and descriptor blocks (and reserved GDT blocks) stored in group `g`, as
    /// e2fsprogs' `ext2fs_super_and_bgd_loc2` counts them.
    fn base_meta(&self, g: u64, out: &mut ExtentMap) {
        let start = self.super_block(g);
        let has_super = self.has_super(g);
        if has_super {
            out.push(start * self.bs, self.bs);
        }
        let mg = g / self.descs_per_block;
        if !self.meta_bg || mg < self.first_meta_bg {
            if has_super {
                let n = self.old_desc_blocks() + self.reserved_gdt;
                out.push((start + 1) * self.bs, n * self.bs);
            }
        } else {
            let r = g % self.descs_per_block;
            if r == 0 || r == 1 || r == self.descs_per_block - 1 {
                out.push((start + u64::from(has_super)) * self.bs, self.bs);
            }
        }
    }
}

struct Desc {
    block_bitmap: u64,
    inode_bitmap: u64,
    inode_table: u64,
    free_blocks: u64,
    flags: u16,
}

pub(super) fn read(dev: &dyn BlockDevice) -> Result<FsReport, FsError> {
    let sb = read_vec(dev, SB_OFFSET, 1024)?;
    if le16(&sb, 0x38) != MAGIC {
        return Err(corrupt(FsKind::Ext4, "no ext superblock magic"));
    }
    let geo = Geometry::parse(&sb, dev.len())?;
    let kind = geo.kind;
    let bs = geo.bs;
    let mut used = ExtentMap::new();
    // Boot block and superblock: bytes 0..2048 are never in a bitmap with 1 KiB blocks
    // (block 0 precedes first_data_block), and always kept.
    used.push(0, 2048.min(geo.blocks * bs));

    // Read every descriptor, one descriptor block at a time.
    let mut descs = Vec::with_capacity(geo.groups as usize);
    let mut cached: Option<(u64, Vec<u8>)> = None;
    for g in 0..geo.groups {
        let blk = geo.desc_block(g);
        if blk >= geo.blocks {
            return Err(corrupt(
                kind,
                format!("descriptor of group {g} at block {blk}, past the end"),
            ));
        }
        if cached.as_ref().is_none_or(|(b, _)| *b != blk) {
            cached = Some((blk, read_vec(dev, blk * bs, bs as usize)?));
        }
        // `cached` was just filled for `blk`.
        let buf = &cached.as_ref().unwrap().1;
        let o = ((g % geo.descs_per_block) * geo.desc_size) as usize;
        let d = &buf[o..o + geo.desc_size as usize];
        if !geo.desc_checksum_ok(g, d) {
            return Err(corrupt(
                kind,
                format!("group {g}: descriptor checksum mismatch"),
            ));
        }
        let hi = |off: usize| {
            if geo.desc_size >= 64 {
                u64::from(le32(d, off)) << 32
            } else {
                0
            }
        };
        let hi16 = |off: usize| {
            if geo.desc_size >= 64 {
                u64::from(le16(d, off)) << 16
            } else {
                0
            }
        };
        descs.push(Desc {
            block_bitmap: u64::from(le32(d, 0x00)) | hi(0x20),
            inode_bitmap: u64::from(le32(d, 0x04)) | hi(0x24),
            inode_table: u64::from(le32(d, 0x08)) | hi(0x28),
            free_blocks: u64::from(le16(d, 0x0C)) | hi16(0x2C),
            flags: if geo.csum { le16(d, 0x12) } else { 0 },
        });
    }

    // Every group's bitmaps and inode table, wherever flex_bg put them.
    for (g, d) in descs.iter().enumerate() {
        for (what, b, n) in [
            ("block bitmap", d.block_bitmap, 1),
            ("inode bitmap", d.inode_bitmap, 1),
            ("inode table", d.inode_table, geo.inode_table_blocks),
        ] {
            if b < geo.first_data_block || b.checked_add(n).is_none_or(|e| e > geo.blocks) {
                return Err(corrupt(
                    kind,
                    format!(
                        "group {g}: {what} at block {b} (+{n}) is outside the {} blocks",
                        geo.blocks
                    ),
                ));
            }
            used.push(b * bs, n * bs);
        }
    }
    // The old-style descriptor table and its reserved growth blocks, in the primary location.
    geo.base_meta(0, &mut used);

    let mut bitmap = vec![0u8; bs as usize];
    let ratio = geo.cluster / bs;
    for (g, d) in descs.iter().enumerate() {
        let g = g as u64;
        let start = geo.group_start(g);
        // Bits in the group's bitmap: its blocks, or its clusters.
        let n = geo.group_blocks(g).div_ceil(ratio);
        if d.flags & BG_BLOCK_UNINIT != 0 {
            // The bitmap was never written: the group holds only its base metadata (and any
            // flex_bg metadata, added above).
            geo.base_meta(g, &mut used);
            continue;
        }
        dev.read_at(&mut bitmap, d.block_bitmap * bs)?;
        let bits = &bitmap[..(n as usize).div_ceil(8)];
        let set: u64 = count_bits(bits, n);
        let free = n - set;
        if free > d.free_blocks {
            return Err(corrupt(
                kind,
                format!(
                    "group {g}: bitmap shows {free} free blocks but the descriptor counts {}",
                    d.free_blocks
                ),
            ));
        }
        used.push_bitmap(bits, n, start / ratio, geo.cluster, 0);
    }
    used.normalize();
    // The last cluster may run past the last block.
    let used: ExtentMap = used.clip(0, geo.blocks * bs).collect();

    let label = String::from_utf8_lossy(&sb[0x78..0x88])
        .trim_end_matches('\0')
        .to_string();
    Ok(FsReport {
        kind,
        block_size: geo.cluster as u32,
        fs_size: geo.blocks * bs,
        used,
        label: (!label.is_empty()).then_some(label),
        volumes: Vec::new(),
    })
}

fn count_bits(bits: &[u8], n: u64) -> u64 {
    let full = (n / 8) as usize;
    let mut c: u64 = bits[..full].iter().map(|b| u64::from(b.count_ones())).sum();
    for i in (full as u64 * 8)..n {
        if bits[(i / 8) as usize] & (1 << (i % 8)) != 0 {
            c += 1;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(groups: u64, sparse: bool) -> Geometry {
        Geometry {
            kind: FsKind::Ext4,
            bs: 4096,
            cluster: 4096,
            blocks: groups * 32768,
            first_data_block: 0,
            bpg: 32768,
            groups,
            desc_size: 64,
            descs_per_block: 64,
            inode_table_blocks: 512,
            reserved_gdt: 10,
            meta_bg: false,
            first_meta_bg: 0,
            sparse_super: sparse,
            sparse_super2: None,
            csum: true,
            desc_csum: DescCsum::None,
        }
    }

    #[test]
    fn sparse_super_backups() {
        let g = geo(100, true);
        let with: Vec<u64> = (0..100).filter(|&i| g.has_super(i)).collect();
        assert_eq!(with, vec![0, 1, 3, 5, 7, 9, 25, 27, 49, 81]);
        let g = geo(4, false);
        assert!((0..4).all(|i| g.has_super(i)));
    }

    #[test]
    fn base_meta_counts_gdt_and_reserved() {
        let g = geo(100, true);
        let mut m = ExtentMap::new();
        g.base_meta(3, &mut m);
        // superblock + 2 descriptor blocks (100 groups / 64 per block) + 10 reserved.
        assert_eq!(m.total(), 13 * 4096);
        assert_eq!(m.iter().next().unwrap().start, 3 * 32768 * 4096);
        let mut m = ExtentMap::new();
        g.base_meta(2, &mut m);
        assert!(m.is_empty());
    }

    #[test]
    fn checksums_match_known_vectors() {
        // crc32c("123456789") is 0xE3069283 with the usual inversions.
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
        // CRC-16/MODBUS("123456789") = 0x4B37: the kernel's crc16 seeded with !0.
        assert_eq!(crc16(!0, b"123456789"), 0x4B37);
    }

    #[test]
    fn bits_counted_up_to_n() {
        assert_eq!(count_bits(&[0xff, 0xff], 12), 12);
        assert_eq!(count_bits(&[0x0f, 0x01], 9), 5);
    }
}
