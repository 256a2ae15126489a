//! f2fs: used blocks from the segment information table (SIT), with the SIT journal the last
//! checkpoint keeps in its summary blocks.
//!
//! Layout: the superblock at byte 1024 of blocks 0 and 1, then from `segment0_blkaddr` the
//! checkpoint, SIT, NAT and SSA areas, then the main area of 2 MiB segments. Everything before
//! the main area is kept whole (both checkpoint packs, both SIT and NAT copies, the summaries).
//! In the main area, each segment's SIT entry holds a 512-bit map of its valid blocks (most
//! significant bit first). Of the SIT's two copies, the checkpoint's SIT version bitmap says
//! which holds each SIT block; entries changed since that block was written live in the SIT
//! journal, inside the cold-data summary of the newer valid checkpoint pack.
//!
//! Checked before the map is trusted: the superblock's areas following each other as mkfs lays
//! them out, the checkpoint pack's two copies of its header agreeing (crc and version), every
//! SIT entry's count matching its map, and the valid blocks adding up to the checkpoint's
//! `valid_block_count`. Refused by name, so the raw copy takes over: a filesystem not cleanly
//! unmounted (blocks written after the checkpoint, for roll-forward recovery, are in no map),
//! one marked for fsck or with checkpointing disabled, several devices, and block sizes other
//! than 4 KiB.
//!
//! Not read: the NAT, the nodes, the files. Stale blocks in free segments are not stored.

use super::{corrupt, le16, le32, le64, FsError, FsKind, FsReport};
use crate::device::{read_vec, BlockDevice};
use crate::extent::ExtentMap;

const FS: FsKind = FsKind::F2fs;
/// The superblock's magic, also the seed of its crc32.
const MAGIC: u32 = 0xF2F5_2010;
const BLOCK: u64 = 4096;
/// Blocks per segment: the SIT's 64-byte valid maps fix it at 512.
const SEG_BLOCKS: u64 = 512;
/// A SIT entry: a 16-bit count and type, the 64-byte map, a 64-bit mtime.
const SIT_ENTRY: usize = 74;
const SIT_PER_BLOCK: u64 = BLOCK / SIT_ENTRY as u64;
/// The journal inside a summary block: after 512 entries of 7 bytes.
const JOURNAL_AT: usize = 512 * 7;
/// Bytes of journal in a summary block (up to the 5-byte footer).
const JOURNAL_LEN: usize = 4096 - 5 - JOURNAL_AT;
/// A SIT journal entry: the segment number, then a SIT entry.
const SIT_JOURNAL_ENTRY: usize = 4 + SIT_ENTRY;

// Checkpoint flags.
const CP_UMOUNT: u32 = 0x1;
const CP_COMPACT_SUM: u32 = 0x4;
const CP_ERROR: u32 = 0x8;
const CP_FSCK: u32 = 0x10;
const CP_LARGE_NAT_BITMAP: u32 = 0x400;
const CP_DISABLED: u32 = 0x1000;

/// Superblock feature: the superblock carries a crc32.
const FEATURE_SB_CHKSUM: u32 = 0x800;

/// The f2fs crc32: the reflected 0xEDB88320 polynomial, seeded with the magic, no final
/// inversion.
fn crc(data: &[u8]) -> u32 {
    const T: [u32; 256] = super::crc_table(0xEDB8_8320);
    data.iter().fold(MAGIC, |c, &b| {
        (c >> 8) ^ T[((c ^ u32::from(b)) & 0xFF) as usize]
    })
}

/// The superblock's fields the reader relies on.
struct Super {
    block_count: u64,
    seg0: u64,
    cp: u64,
    sit: u64,
    nat: u64,
    ssa: u64,
    main: u64,
    segs_ckpt: u64,
    segs_sit: u64,
    segs_nat: u64,
    segs_ssa: u64,
    segs_main: u64,
    cp_payload: u64,
    label: Option<String>,
}

fn parse_super(sb: &[u8]) -> Result<Super, FsError> {
    if le32(sb, 0) != MAGIC {
        return Err(corrupt(FS, "no f2fs superblock"));
    }
    if le32(sb, 2180) & FEATURE_SB_CHKSUM != 0 {
        let at = le32(sb, 32) as usize;
        if at + 4 > sb.len() || crc(&sb[..at]) != le32(sb, at) {
            return Err(corrupt(FS, "superblock checksum mismatch"));
        }
    }
    let (log_sector, log_spb, log_block, log_seg) =
        (le32(sb, 8), le32(sb, 12), le32(sb, 16), le32(sb, 20));
    if log_block != 12 {
        return Err(FsError::Unsupported {
            fs: FS,
            feature: format!("{}-byte blocks", 1u64 << log_block.min(63)),
        });
    }
    if log_seg != 9 || !(9..=12).contains(&log_sector) || log_sector + log_spb != 12 {
        return Err(corrupt(
            FS,
            format!("2^{log_sector}-byte sectors, 2^{log_spb} per block, 2^{log_seg} blocks per segment"),
        ));
    }
    // Several devices: the first device's path is set.
    if sb[2201] != 0 {
        return Err(FsError::Unsupported {
            fs: FS,
            feature: "several devices".into(),
        });
    }
    let units: Vec<u16> = sb[124..124 + 1024]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let s = Super {
        block_count: le64(sb, 36),
        segs_ckpt: u64::from(le32(sb, 52)),
        segs_sit: u64::from(le32(sb, 56)),
        segs_nat: u64::from(le32(sb, 60)),
        segs_ssa: u64::from(le32(sb, 64)),
        segs_main: u64::from(le32(sb, 68)),
        seg0: u64::from(le32(sb, 72)),
        cp: u64::from(le32(sb, 76)),
        sit: u64::from(le32(sb, 80)),
        nat: u64::from(le32(sb, 84)),
        ssa: u64::from(le32(sb, 88)),
        main: u64::from(le32(sb, 92)),
        cp_payload: u64::from(le32(sb, 1664)),
        label: (!units.is_empty()).then(|| String::from_utf16_lossy(&units)),
    };
    // The areas follow each other as mkfs lays them out (the kernel checks the same).
    let areas = [
        (s.cp, s.seg0),
        (s.sit, s.cp + s.segs_ckpt * SEG_BLOCKS),
        (s.nat, s.sit + s.segs_sit * SEG_BLOCKS),
        (s.ssa, s.nat + s.segs_nat * SEG_BLOCKS),
        (s.main, s.ssa + s.segs_ssa * SEG_BLOCKS),
    ];
    if areas.iter().any(|&(at, want)| at != want)
        || s.segs_ckpt < 2
        || s.segs_sit < 2
        || s.segs_sit % 2 != 0
        || s.segs_main == 0
        || s.main + s.segs_main * SEG_BLOCKS > s.block_count
    {
        return Err(corrupt(
            FS,
            format!(
                "areas at blocks cp {} sit {} nat {} ssa {} main {} ({} main segments) do not \
                 follow each other inside {} blocks",
                s.cp, s.sit, s.nat, s.ssa, s.main, s.segs_main, s.block_count
            ),
        ));
    }
    if s.cp_payload >= SEG_BLOCKS {
        return Err(corrupt(
            FS,
            format!("checkpoint payload of {} blocks", s.cp_payload),
        ));
    }
    Ok(s)
}

/// One valid checkpoint pack: its header block (and payload blocks), where it starts.
struct Checkpoint {
    /// The header block followed by the payload blocks.
    head: Vec<u8>,
    start: u64,
    version: u64,
}

impl Checkpoint {
    fn flags(&self) -> u32 {
        le32(&self.head, 132)
    }
    fn total_blocks(&self) -> u64 {
        u64::from(le32(&self.head, 136))
    }
    fn payload_blocks(&self) -> u64 {
        self.head.len() as u64 / BLOCK - 1
    }
}

/// The checkpoint pack at `start`, when its header and its closing copy hold together.
fn pack(dev: &dyn BlockDevice, s: &Super, start: u64) -> Result<Option<Checkpoint>, FsError> {
    let valid_block = |b: &[u8]| -> bool {
        let at = le32(b, 164) as usize;
        at >= 192 && at + 4 <= b.len() && crc(&b[..at]) == le32(b, at)
    };
    let head = read_vec(dev, start * BLOCK, BLOCK as usize)?;
    if !valid_block(&head) {
        return Ok(None);
    }
    let total = u64::from(le32(&head, 136));
    if total < 2 + s.cp_payload || total > SEG_BLOCKS {
        return Ok(None);
    }
    let tail = read_vec(dev, (start + total - 1) * BLOCK, BLOCK as usize)?;
    if !valid_block(&tail) || le64(&tail, 0) != le64(&head, 0) {
        return Ok(None);
    }
    let mut head = head;
    if s.cp_payload > 0 {
        head.extend(read_vec(
            dev,
            (start + 1) * BLOCK,
            (s.cp_payload * BLOCK) as usize,
        )?);
    }
    Ok(Some(Checkpoint {
        version: le64(&head, 0),
        head,
        start,
    }))
}

/// The newer of the two checkpoint packs that are valid.
fn checkpoint(dev: &dyn BlockDevice, s: &Super) -> Result<Checkpoint, FsError> {
    let one = pack(dev, s, s.cp)?;
    let two = pack(dev, s, s.cp + SEG_BLOCKS)?;
    match (one, two) {
        // The kernel's ver_after: a signed comparison, so a wrapped counter still orders.
        (Some(a), Some(b)) => Ok(if (b.version.wrapping_sub(a.version) as i64) > 0 {
            b
        } else {
            a
        }),
        (Some(a), None) => Ok(a),
        (None, Some(b)) => Ok(b),
        (None, None) => Err(corrupt(FS, "neither checkpoint pack is valid")),
    }
}

/// The SIT journal of the checkpoint: (segment, SIT entry) pairs newer than the SIT blocks.
fn sit_journal(dev: &dyn BlockDevice, cp: &Checkpoint) -> Result<Vec<(u64, Vec<u8>)>, FsError> {
    let flags = cp.flags();
    let total = cp.total_blocks();
    let journal = if flags & CP_COMPACT_SUM != 0 {
        // Compacted summaries: the NAT journal, then the SIT journal, at the summaries' start.
        let start = u64::from(le32(&cp.head, 140));
        if start == 0 || start >= total {
            return Err(corrupt(
                FS,
                format!("summaries at block {start} of a {total}-block pack"),
            ));
        }
        let b = read_vec(dev, (cp.start + start) * BLOCK, BLOCK as usize)?;
        b[JOURNAL_LEN..2 * JOURNAL_LEN].to_vec()
    } else {
        // Three data summary blocks (hot, warm, cold), then (the pack being an unmount's) three
        // node ones, then the pack's closing header. The SIT journal is in the cold data one.
        if total < 8 + cp.payload_blocks() {
            return Err(corrupt(
                FS,
                format!("a {total}-block checkpoint pack holds no summaries"),
            ));
        }
        let b = read_vec(dev, (cp.start + total - 5) * BLOCK, BLOCK as usize)?;
        b[JOURNAL_AT..JOURNAL_AT + JOURNAL_LEN].to_vec()
    };
    let n = usize::from(le16(&journal, 0));
    if 2 + n * SIT_JOURNAL_ENTRY > JOURNAL_LEN {
        return Err(corrupt(FS, format!("{n} SIT journal entries")));
    }
    Ok((0..n)
        .map(|i| {
            let e = &journal[2 + i * SIT_JOURNAL_ENTRY..2 + (i + 1) * SIT_JOURNAL_ENTRY];
            (u64::from(le32(e, 0)), e[4..].to_vec())
        })
        .collect())
}

/// Whether bit `i` of `map` is set, most significant bit first (f2fs's bit order).
fn bit(map: &[u8], i: u64) -> bool {
    map.get((i / 8) as usize)
        .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
}

pub(super) fn read(dev: &dyn BlockDevice) -> Result<FsReport, FsError> {
    if dev.len() < 2 * BLOCK {
        return Err(corrupt(FS, "device too small for a superblock"));
    }
    // The primary superblock, or its copy in block 1 when the primary is damaged.
    let s = match parse_super(&read_vec(dev, 1024, 3072)?) {
        Ok(s) => s,
        Err(e) => parse_super(&read_vec(dev, BLOCK + 1024, 3072)?).map_err(|_| e)?,
    };
    let fs_size = s
        .block_count
        .checked_mul(BLOCK)
        .filter(|&n| n <= dev.len())
        .ok_or_else(|| {
            corrupt(
                FS,
                format!("{} blocks on a {}-byte device", s.block_count, dev.len()),
            )
        })?;
    let cp = checkpoint(dev, &s)?;
    let flags = cp.flags();
    if flags & (CP_ERROR | CP_FSCK) != 0 {
        return Err(corrupt(FS, "the checkpoint asks for fsck"));
    }
    if flags & CP_DISABLED != 0 {
        return Err(FsError::Unsupported {
            fs: FS,
            feature: "checkpointing disabled".into(),
        });
    }
    if flags & CP_UMOUNT == 0 {
        return Err(FsError::Unsupported {
            fs: FS,
            feature: "not cleanly unmounted (blocks written after the last checkpoint are in no \
                      map)"
                .into(),
        });
    }

    // Which SIT copy holds each SIT block.
    let sit_half = s.segs_sit / 2 * SEG_BLOCKS;
    let sit_blocks = s.segs_main.div_ceil(SIT_PER_BLOCK);
    if sit_blocks > sit_half {
        return Err(corrupt(
            FS,
            format!(
                "{} main segments need more SIT blocks than {sit_half}",
                s.segs_main
            ),
        ));
    }
    let sit_bytes = le32(&cp.head, 156) as usize;
    let nat_bytes = le32(&cp.head, 160) as usize;
    let bitmap_at = if flags & CP_LARGE_NAT_BITMAP != 0 {
        192 + nat_bytes + 4
    } else if s.cp_payload > 0 {
        BLOCK as usize
    } else {
        192
    };
    let version = cp
        .head
        .get(bitmap_at..bitmap_at + sit_bytes)
        .filter(|_| sit_bytes as u64 * 8 >= sit_blocks)
        .ok_or_else(|| corrupt(FS, format!("SIT version bitmap of {sit_bytes} bytes")))?;

    let mut entries: Vec<Option<Vec<u8>>> = vec![None; s.segs_main as usize];
    for (segno, e) in sit_journal(dev, &cp)? {
        let slot = entries
            .get_mut(segno as usize)
            .ok_or_else(|| corrupt(FS, format!("SIT journal names segment {segno}")))?;
        *slot = Some(e);
    }

    let mut used = ExtentMap::new();
    used.push(0, s.main * BLOCK);
    let mut valid = 0u64;
    for blk in 0..sit_blocks {
        let first = blk * SIT_PER_BLOCK;
        let last = (first + SIT_PER_BLOCK).min(s.segs_main);
        // A SIT block whose every segment the journal overrides need not be read.
        let mut block = None;
        for segno in first..last {
            let entry = match &entries[segno as usize] {
                Some(e) => e.as_slice(),
                None => {
                    let b = match &mut block {
                        Some(b) => b,
                        None => {
                            let at = s.sit + blk + if bit(version, blk) { sit_half } else { 0 };
                            block.insert(read_vec(dev, at * BLOCK, BLOCK as usize)?)
                        }
                    };
                    let o = ((segno - first) as usize) * SIT_ENTRY;
                    &b[o..o + SIT_ENTRY]
                }
            };
            let count = u64::from(le16(entry, 0) & 0x3FF);
            let map = &entry[2..2 + 64];
            let ones: u64 = map.iter().map(|b| u64::from(b.count_ones())).sum();
            if ones != count {
                return Err(corrupt(
                    FS,
                    format!("segment {segno}: {count} valid blocks but {ones} bits set"),
                ));
            }
            valid += count;
            let base = (s.main + segno * SEG_BLOCKS) * BLOCK;
            let mut i = 0;
            while i < SEG_BLOCKS {
                if !bit(map, i) {
                    i += 1;
                    continue;
                }
                let run = (i..SEG_BLOCKS).take_while(|&j| bit(map, j)).count() as u64;
                used.push(base + i * BLOCK, run * BLOCK);
                i += run;
            }
        }
    }
    let claimed = le64(&cp.head, 16);
    if valid != claimed {
        return Err(corrupt(
            FS,
            format!("the SIT counts {valid} valid blocks, the checkpoint {claimed}"),
        ));
    }
    used.normalize();
    Ok(FsReport {
        kind: FS,
        block_size: BLOCK as u32,
        fs_size,
        used,
        label: s.label,
        volumes: Vec::new(),
    })
}

#[cfg(test)]
#[path = "f2fs_tests.rs"]
mod tests;
