//! btrfs: used blocks from the extent tree, placed on the device through the chunk tree.
//!
//! btrfs addresses everything by logical byte numbers; chunks map logical ranges onto device
//! stripes. The superblock (at 64 KiB, little-endian) carries the system chunks' map (enough to
//! read the chunk tree), the chunk tree's root and the root tree's root. The chunk tree gives the
//! whole map; the root tree gives the extent tree's root; the extent tree's items
//! (`EXTENT_ITEM` for data and for metadata without skinny refs, `METADATA_ITEM` for skinny
//! metadata) are every allocated logical range, metadata trees included. Each range is placed on
//! the device through its chunk, every copy of it (single, DUP and the mirrored profiles).
//!
//! Also kept: the first MiB, which btrfs leaves to boot loaders (mkfs zeroes it, so keeping it
//! costs nothing stored and clears the signature of whatever filesystem the target held before),
//! and the superblock copies at 64 MiB and 256 GiB.
//!
//! Checked before the map is trusted: the superblock's and every tree block's checksum (crc32c,
//! the default; the other algorithms are checked by address and fsid only), each tree block's
//! own address, fsid and level; items inside their leaf; chunks inside the device; extents inside
//! chunks; and the extents adding up to the superblock's `bytes_used`. Refused: a filesystem of
//! several devices (its blocks live partly on other disks), striped profiles, a pending log tree
//! (fsync'd data not yet committed: mounting once replays it) and incompatible features this
//! reader does not know.

use std::collections::{BTreeMap, HashSet};

use super::{corrupt, crc32c, le16, le32, le64, FsError, FsKind, FsReport};
use crate::device::{read_vec, BlockDevice};
use crate::extent::ExtentMap;

const FS: FsKind = FsKind::Btrfs;
/// The primary superblock's place, and its copies' (kept when inside the filesystem).
const SUPERS: [u64; 3] = [0x1_0000, 0x400_0000, 0x40_0000_0000];
const SUPER_SIZE: usize = 4096;
/// The area before the first chunk that btrfs never allocates.
const RESERVED: u64 = 1 << 20;
/// A tree block's header, then its items (leaf) or key pointers (node).
const HEADER: usize = 0x65;
const ITEM: usize = 25;
const KEY_PTR: usize = 33;
/// Levels 0 to 7 (`BTRFS_MAX_LEVEL` is 8).
const MAX_LEVEL: u8 = 7;

const ROOT_ITEM: u8 = 132;
const EXTENT_ITEM: u8 = 168;
const METADATA_ITEM: u8 = 169;
const CHUNK_ITEM: u8 = 228;
const EXTENT_TREE: u64 = 2;

/// Incompatible features whose trees this reader walks as described above: mixed backrefs,
/// default subvolume, mixed groups, lzo, zstd, big metadata, extended irefs, raid56 (refused per
/// chunk), skinny metadata, no holes, metadata uuid, raid1c34, simple quotas.
const KNOWN_INCOMPAT: u64 = 0xFFF | 1 << 16;
const INCOMPAT_METADATA_UUID: u64 = 1 << 10;
/// Chunk profiles that spread a range over stripes (RAID0, RAID10, RAID5, RAID6).
const STRIPED: u64 = 1 << 3 | 1 << 6 | 1 << 7 | 1 << 8;

/// One chunk: a logical range and where each of its copies starts on the device.
#[derive(Debug)]
struct Chunk {
    len: u64,
    copies: Vec<u64>,
}

/// What a tree walk calls for each leaf item: `(fs, objectid, type, offset, data)`.
type LeafVisit<'v, 'a> = dyn FnMut(&mut Fs<'a>, u64, u8, u64, &[u8]) -> Result<(), FsError> + 'v;

struct Fs<'a> {
    dev: &'a dyn BlockDevice,
    size: u64,
    node: usize,
    devid: u64,
    fsid: [u8; 16],
    crc: bool,
    chunks: BTreeMap<u64, Chunk>,
    /// Tree blocks read so far, against loops in damaged trees.
    seen: HashSet<u64>,
}

impl<'a> Fs<'a> {
    /// Parses a chunk item (its logical start is the key's offset) into the map.
    fn add_chunk(&mut self, logical: u64, c: &[u8]) -> Result<(), FsError> {
        let len = le64(c, 0);
        let kind = le64(c, 24);
        let n = usize::from(le16(c, 44));
        if n == 0 || c.len() < 48 + n * 32 || len == 0 || logical.checked_add(len).is_none() {
            return Err(corrupt(
                FS,
                format!("chunk at {logical}: {n} stripes, {len} bytes"),
            ));
        }
        if kind & STRIPED != 0 {
            return Err(FsError::Unsupported {
                fs: FS,
                feature: format!("chunk at {logical} has a striped profile ({kind:#x})"),
            });
        }
        let mut copies = Vec::with_capacity(n);
        for i in 0..n {
            let s = 48 + i * 32;
            let (devid, offset) = (le64(c, s), le64(c, s + 8));
            if devid != self.devid {
                return Err(FsError::Unsupported {
                    fs: FS,
                    feature: format!("chunk at {logical} lives on device {devid}"),
                });
            }
            if offset.checked_add(len).is_none_or(|e| e > self.size) {
                return Err(corrupt(
                    FS,
                    format!("chunk at {logical} placed at {offset}+{len}, past the device"),
                ));
            }
            copies.push(offset);
        }
        if let Some((&prev, p)) = self.chunks.range(..=logical).next_back() {
            if prev == logical && p.len == len && p.copies == copies {
                return Ok(()); // the same chunk, from the superblock and from the chunk tree
            }
            if prev + p.len > logical {
                return Err(corrupt(
                    FS,
                    format!("chunks at {prev} and {logical} overlap"),
                ));
            }
        }
        if let Some((&next, _)) = self.chunks.range(logical + 1..).next() {
            if logical + len > next {
                return Err(corrupt(
                    FS,
                    format!("chunks at {logical} and {next} overlap"),
                ));
            }
        }
        self.chunks.insert(logical, Chunk { len, copies });
        Ok(())
    }

    /// The chunk holding `logical..logical + len` whole, and the offset into it.
    fn locate(&self, logical: u64, len: u64) -> Result<(&Chunk, u64), FsError> {
        match self.chunks.range(..=logical).next_back() {
            Some((&start, c)) if logical - start + len <= c.len => Ok((c, logical - start)),
            _ => Err(corrupt(
                FS,
                format!("logical range {logical}+{len} is in no chunk"),
            )),
        }
    }

    /// Reads and checks the tree block at `logical`, from the first copy that checks.
    fn block(&mut self, logical: u64, level: u8) -> Result<Vec<u8>, FsError> {
        if !self.seen.insert(logical) {
            return Err(corrupt(FS, format!("tree block {logical} reached twice")));
        }
        let (chunk, off) = self.locate(logical, self.node as u64)?;
        let places: Vec<u64> = chunk.copies.iter().map(|c| c + off).collect();
        let mut why = String::new();
        for p in places {
            let b = read_vec(self.dev, p, self.node)?;
            match self.check_block(&b, logical, level) {
                Ok(()) => return Ok(b),
                Err(e) => why = e,
            }
        }
        Err(corrupt(FS, format!("tree block {logical}: {why}")))
    }

    fn check_block(&self, b: &[u8], logical: u64, level: u8) -> Result<(), String> {
        if self.crc && !crc32c(!0, &b[0x20..]) != le32(b, 0) {
            return Err("checksum mismatch".into());
        }
        if b[0x20..0x30] != self.fsid {
            return Err("belongs to another filesystem".into());
        }
        if le64(b, 0x30) != logical {
            return Err(format!("names itself {}", le64(b, 0x30)));
        }
        if b[0x64] != level {
            return Err(format!("is level {}, expected {level}", b[0x64]));
        }
        let n = le32(b, 0x60) as usize;
        let per = if level == 0 { ITEM } else { KEY_PTR };
        if n.checked_mul(per).is_none_or(|s| HEADER + s > b.len()) || (level > 0 && n == 0) {
            return Err(format!("holds {n} entries"));
        }
        Ok(())
    }

    /// Walks the tree rooted at `root`, calling `leaf_item(objectid, type, offset, data)` for
    /// every leaf item in key order.
    fn walk(
        &mut self,
        root: u64,
        level: u8,
        leaf_item: &mut LeafVisit<'_, 'a>,
    ) -> Result<(), FsError> {
        if level > MAX_LEVEL {
            return Err(corrupt(FS, format!("tree of level {level}")));
        }
        let mut stack = vec![(root, level)];
        while let Some((logical, level)) = stack.pop() {
            let b = self.block(logical, level)?;
            let n = le32(&b, 0x60) as usize;
            if level > 0 {
                for i in (0..n).rev() {
                    stack.push((le64(&b, HEADER + i * KEY_PTR + 17), level - 1));
                }
                continue;
            }
            for i in 0..n {
                let o = HEADER + i * ITEM;
                let (objectid, kind, offset) = (le64(&b, o), b[o + 8], le64(&b, o + 9));
                let (at, size) = (le32(&b, o + 17) as usize, le32(&b, o + 21) as usize);
                let Some(data) = b.get(HEADER + at..HEADER + at + size) else {
                    return Err(corrupt(
                        FS,
                        format!("tree block {logical}: item {i} runs past the block"),
                    ));
                };
                leaf_item(self, objectid, kind, offset, data)?;
            }
        }
        Ok(())
    }

    /// Marks `logical..logical + len` used, every copy of it.
    fn mark(&self, used: &mut ExtentMap, logical: u64, len: u64) -> Result<(), FsError> {
        let (chunk, off) = self.locate(logical, len)?;
        for c in &chunk.copies {
            used.push(c + off, len);
        }
        Ok(())
    }
}

/// Checks the superblock and reads the chunk map (system chunks, then the chunk tree).
fn open(dev: &dyn BlockDevice) -> Result<(Fs<'_>, Vec<u8>), FsError> {
    if dev.len() < SUPERS[0] + SUPER_SIZE as u64 {
        return Err(corrupt(FS, "device too small for a superblock"));
    }
    let sb = read_vec(dev, SUPERS[0], SUPER_SIZE)?;
    if sb.get(0x40..0x48) != Some(b"_BHRfS_M") || le64(&sb, 0x30) != SUPERS[0] {
        return Err(corrupt(FS, "no btrfs superblock"));
    }
    let csum_type = le16(&sb, 0xC4);
    if csum_type == 0 && !crc32c(!0, &sb[0x20..]) != le32(&sb, 0) {
        return Err(corrupt(FS, "superblock checksum mismatch"));
    }
    let devices = le64(&sb, 0x88);
    if devices != 1 {
        return Err(FsError::Unsupported {
            fs: FS,
            feature: format!(
                "a filesystem of {devices} devices (its data lives partly on other disks)"
            ),
        });
    }
    let incompat = le64(&sb, 0xBC);
    if incompat & !KNOWN_INCOMPAT != 0 {
        return Err(FsError::Unsupported {
            fs: FS,
            feature: format!("incompatible features {:#x}", incompat & !KNOWN_INCOMPAT),
        });
    }
    if le64(&sb, 0x60) != 0 {
        return Err(FsError::Unsupported {
            fs: FS,
            feature: "a pending log tree (not unmounted cleanly; mount it once to replay)".into(),
        });
    }
    let sector = u64::from(le32(&sb, 0x90));
    let node = u64::from(le32(&sb, 0x94));
    if !(512..=65536).contains(&sector)
        || !sector.is_power_of_two()
        || !(sector..=65536).contains(&node)
        || !node.is_power_of_two()
        || (node as usize) < HEADER + KEY_PTR
    {
        return Err(corrupt(
            FS,
            format!("sector size {sector}, node size {node}"),
        ));
    }
    // The device item: this device's id and size.
    let devid = le64(&sb, 0xC9);
    let size = le64(&sb, 0xC9 + 8);
    if size < RESERVED || size > dev.len() {
        return Err(corrupt(
            FS,
            format!("device of {size} bytes on a {}-byte partition", dev.len()),
        ));
    }
    let fsid_at = if incompat & INCOMPAT_METADATA_UUID != 0 {
        0x23B
    } else {
        0x20
    };
    let mut fs = Fs {
        dev,
        size,
        node: node as usize,
        devid,
        fsid: sb[fsid_at..fsid_at + 16].try_into().expect("16 bytes"),
        crc: csum_type == 0,
        chunks: BTreeMap::new(),
        seen: HashSet::new(),
    };

    // The system chunks, enough to read the chunk tree.
    let array_len = le32(&sb, 0xA0) as usize;
    let array = sb
        .get(0x32B..0x32B + array_len)
        .filter(|_| array_len <= 2048)
        .ok_or_else(|| corrupt(FS, format!("system chunk array of {array_len} bytes")))?;
    let mut o = 0;
    while o < array.len() {
        let (kind, logical) = (array.get(o + 8).copied(), le64(array, o + 9));
        let item = array.get(o + 17..).unwrap_or_default();
        let n = usize::from(le16(item, 44));
        if kind != Some(CHUNK_ITEM) || item.len() < 48 + n * 32 {
            return Err(corrupt(FS, "system chunk array holds something else"));
        }
        fs.add_chunk(logical, &item[..48 + n * 32])?;
        o += 17 + 48 + n * 32;
    }

    // The chunk tree: the whole map.
    fs.walk(
        le64(&sb, 0x58),
        sb[0xC7],
        &mut |fs, _, kind, offset, data| {
            if kind == CHUNK_ITEM {
                fs.add_chunk(offset, data)?;
            }
            Ok(())
        },
    )?;
    Ok((fs, sb))
}

/// The extent tree's root block and level, from the root tree.
fn extent_root(fs: &mut Fs<'_>, sb: &[u8]) -> Result<(u64, u8), FsError> {
    let mut found = None;
    fs.walk(
        le64(sb, 0x50),
        sb[0xC6],
        &mut |_, objectid, kind, _, data| {
            if objectid == EXTENT_TREE && kind == ROOT_ITEM {
                if data.len() < 239 {
                    return Err(corrupt(FS, "extent tree's root item is short"));
                }
                found = Some((le64(data, 176), data[238]));
            }
            Ok(())
        },
    )?;
    found.ok_or_else(|| corrupt(FS, "no extent tree"))
}

pub(super) fn read(dev: &dyn BlockDevice) -> Result<FsReport, FsError> {
    let (mut fs, sb) = open(dev)?;
    let (root, level) = extent_root(&mut fs, &sb)?;
    let node = fs.node as u64;
    let size = fs.size;
    let sector = u64::from(le32(&sb, 0x90));

    // The extent tree: every allocated range.
    let mut used = ExtentMap::new();
    let mut total = 0u64;
    fs.walk(root, level, &mut |fs, objectid, kind, offset, _| {
        let len = match kind {
            EXTENT_ITEM => offset,
            METADATA_ITEM => node,
            _ => return Ok(()),
        };
        if len == 0 {
            return Err(corrupt(FS, format!("empty extent at {objectid}")));
        }
        fs.mark(&mut used, objectid, len)?;
        total = total.saturating_add(len);
        Ok(())
    })?;
    let bytes_used = le64(&sb, 0x78);
    if total != bytes_used {
        return Err(corrupt(
            FS,
            format!("the extent tree holds {total} bytes, the superblock says {bytes_used}"),
        ));
    }

    used.push(0, RESERVED.min(size));
    for s in SUPERS {
        if s + SUPER_SIZE as u64 <= size {
            used.push(s, SUPER_SIZE as u64);
        }
    }
    used.normalize();
    let label = String::from_utf8_lossy(&sb[0x12B..0x12B + 256])
        .trim_end_matches('\0')
        .to_string();
    Ok(FsReport {
        kind: FS,
        block_size: sector as u32,
        fs_size: size,
        used,
        label: (!label.is_empty()).then_some(label),
        volumes: Vec::new(),
    })
}

#[cfg(test)]
#[path = "btrfs_tests.rs"]
mod tests;
