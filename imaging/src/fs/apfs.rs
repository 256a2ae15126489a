//! APFS containers: used blocks from the space manager's chunk bitmaps, as of the latest valid
//! checkpoint.
//!
//! Block 0 holds a copy of the container superblock; the latest one is the valid superblock with
//! the highest transaction id in the checkpoint descriptor area. Its checkpoint-map blocks (just
//! before it in that ring) place the ephemeral objects in the checkpoint data area, the space
//! manager among them. The space manager lists chunk-info blocks (directly, or through
//! chunk-info address blocks on very large containers); each chunk-info entry covers one chunk
//! of `8 × block size` blocks and names its bitmap block (none when the chunk is all free). A
//! set bit (least significant first) is an allocated block: every volume's objects, the object
//! maps, the internal pool, the blocks waiting in the free queues.
//!
//! Kept besides the bitmaps: block 0, both checkpoint areas, the internal pool and its bitmaps.
//!
//! Checked before the map is trusted: every object's Fletcher-64 checksum and type, the
//! checkpoint maps, the chunk geometry the block size implies, each chunk-info block's index,
//! the chunks following each other, every chunk's free count matching its bitmap, and the free
//! blocks adding up to the space manager's count. Refused by name, so the raw copy takes over:
//! Fusion containers (two devices), checkpoint areas kept in a B-tree, version 1 containers and
//! incompatible features this reader does not know.
//!
//! Not read: the volumes, their object maps and file-system trees.

use super::{corrupt, le32, le64, FsError, FsKind, FsReport};
use crate::device::{read_vec, BlockDevice};
use crate::extent::ExtentMap;

const FS: FsKind = FsKind::Apfs;

// Object types (the low 16 bits of `o_type`).
const TYPE_NX_SUPERBLOCK: u32 = 0x01;
const TYPE_SPACEMAN: u32 = 0x05;
const TYPE_CAB: u32 = 0x06;
const TYPE_CIB: u32 = 0x07;
const TYPE_CHECKPOINT_MAP: u32 = 0x0c;

const INCOMPAT_VERSION1: u64 = 0x1;
const INCOMPAT_VERSION2: u64 = 0x2;
const INCOMPAT_FUSION: u64 = 0x100;

/// APFS's Fletcher-64 over everything after the checksum field.
fn fletcher64(data: &[u8]) -> u64 {
    const M: u64 = 0xFFFF_FFFF;
    let (mut s1, mut s2) = (0u64, 0u64);
    for w in data.chunks_exact(4) {
        s1 = (s1 + u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]))) % M;
        s2 = (s2 + s1) % M;
    }
    let c1 = M - (s1 + s2) % M;
    let c2 = M - (s1 + c1) % M;
    (c2 << 32) | c1
}

/// Whether `obj` (a whole object) carries its own checksum.
fn sum_ok(obj: &[u8]) -> bool {
    obj.len() > 8 && fletcher64(&obj[8..]) == le64(obj, 0)
}

fn obj_type(obj: &[u8]) -> u32 {
    le32(obj, 24) & 0xFFFF
}

fn xid(obj: &[u8]) -> u64 {
    le64(obj, 16)
}

/// The container: its geometry and a reader of its blocks.
struct Nx<'a> {
    dev: &'a dyn BlockDevice,
    bs: u64,
    blocks: u64,
}

impl Nx<'_> {
    fn block(&self, n: u64) -> Result<Vec<u8>, FsError> {
        if n >= self.blocks {
            return Err(corrupt(
                FS,
                format!("block {n} is outside the {}-block container", self.blocks),
            ));
        }
        Ok(read_vec(self.dev, n * self.bs, self.bs as usize)?)
    }

    /// Block `n` as an object of type `want`, its checksum checked; `what` names it in errors.
    fn object(&self, n: u64, want: u32, what: &str) -> Result<Vec<u8>, FsError> {
        let b = self.block(n)?;
        if !sum_ok(&b) {
            return Err(corrupt(
                FS,
                format!("{what} at block {n}: checksum mismatch"),
            ));
        }
        if obj_type(&b) != want {
            return Err(corrupt(
                FS,
                format!("{what} at block {n}: object type {:#x}", obj_type(&b)),
            ));
        }
        Ok(b)
    }

    /// Whether `[start, start + len)` lies inside the container.
    fn range(&self, start: u64, len: u64, what: &str) -> Result<(), FsError> {
        if start.checked_add(len).is_none_or(|end| end > self.blocks) {
            return Err(corrupt(
                FS,
                format!("{what} ({len} blocks at {start}) is outside the container"),
            ));
        }
        Ok(())
    }
}

/// The checkpoint areas, as block 0 describes them.
struct Areas {
    desc_base: u64,
    desc_blocks: u64,
    data_base: u64,
    data_blocks: u64,
}

/// The container superblock with the highest xid and a good checksum in the descriptor area.
fn latest_super(nx: &Nx<'_>, a: &Areas) -> Result<Vec<u8>, FsError> {
    let mut best: Option<Vec<u8>> = None;
    for i in 0..a.desc_blocks {
        let b = nx.block(a.desc_base + i)?;
        if &b[32..36] != b"NXSB" || obj_type(&b) != TYPE_NX_SUPERBLOCK || !sum_ok(&b) {
            continue;
        }
        if best.as_ref().is_none_or(|c| xid(&b) > xid(c)) {
            best = Some(b);
        }
    }
    best.ok_or_else(|| corrupt(FS, "no valid superblock in the checkpoint descriptor area"))
}

/// The space manager: found through the checkpoint's map blocks, read from the data area (where
/// ephemeral objects may wrap round its end).
fn spaceman(nx: &Nx<'_>, a: &Areas, sb: &[u8]) -> Result<Vec<u8>, FsError> {
    let oid = le64(sb, 0x98);
    let (desc_index, desc_len) = (u64::from(le32(sb, 0x88)), u64::from(le32(sb, 0x8C)));
    if desc_index >= a.desc_blocks || desc_len < 2 || desc_len > a.desc_blocks {
        return Err(corrupt(
            FS,
            format!("checkpoint of {desc_len} descriptor blocks from index {desc_index}"),
        ));
    }
    let per_block = (nx.bs as usize - 40) / 40;
    let mut found = None;
    let mut last = false;
    for k in 0..desc_len - 1 {
        let n = a.desc_base + (desc_index + k) % a.desc_blocks;
        let m = nx.object(n, TYPE_CHECKPOINT_MAP, "checkpoint map")?;
        if xid(&m) != xid(sb) {
            return Err(corrupt(
                FS,
                format!("checkpoint map at block {n} is of transaction {}", xid(&m)),
            ));
        }
        let count = le32(&m, 36) as usize;
        if count > per_block {
            return Err(corrupt(FS, format!("checkpoint map with {count} entries")));
        }
        for e in m[40..40 + count * 40].chunks_exact(40) {
            if le64(e, 24) == oid {
                found = Some((le32(e, 0) & 0xFFFF, u64::from(le32(e, 8)), le64(e, 32)));
            }
        }
        if le32(&m, 32) & 1 != 0 {
            last = true;
            break;
        }
    }
    if !last {
        return Err(corrupt(FS, "no checkpoint map block is marked last"));
    }
    let (kind, size, paddr) =
        found.ok_or_else(|| corrupt(FS, "no checkpoint mapping for the space manager"))?;
    if kind != TYPE_SPACEMAN
        || size == 0
        || size % nx.bs != 0
        || size / nx.bs > a.data_blocks
        || paddr < a.data_base
        || paddr >= a.data_base + a.data_blocks
    {
        return Err(corrupt(
            FS,
            format!("space manager mapped as type {kind:#x}, {size} bytes at block {paddr}"),
        ));
    }
    let mut obj = Vec::with_capacity(size as usize);
    for i in 0..size / nx.bs {
        let at = a.data_base + (paddr - a.data_base + i) % a.data_blocks;
        obj.extend(nx.block(at)?);
    }
    if !sum_ok(&obj) || obj_type(&obj) != TYPE_SPACEMAN || xid(&obj) != xid(sb) {
        return Err(corrupt(
            FS,
            format!("space manager at block {paddr}: checksum, type or transaction wrong"),
        ));
    }
    Ok(obj)
}

/// Chunk geometry and running totals while the chunk-info blocks are walked.
struct Walk {
    per_chunk: u64,
    per_cib: u64,
    cibs: u64,
    next: u64,
    free: u64,
}

/// One chunk-info block: its chunks' bitmaps into `used`.
fn cib(nx: &Nx<'_>, n: u64, index: u64, w: &mut Walk, used: &mut ExtentMap) -> Result<(), FsError> {
    let b = nx.object(n, TYPE_CIB, "chunk-info block")?;
    let count = u64::from(le32(&b, 36));
    let last = index + 1 == w.cibs;
    if u64::from(le32(&b, 32)) != index
        || count == 0
        || count > w.per_cib
        || (!last && count != w.per_cib)
    {
        return Err(corrupt(
            FS,
            format!(
                "chunk-info block {index} at block {n}: index {}, {count} chunks",
                le32(&b, 32)
            ),
        ));
    }
    for k in 0..count as usize {
        let c = &b[40 + k * 32..72 + k * 32];
        let (addr, raw_count, free, bitmap) = (le64(c, 8), le32(c, 16), le32(c, 20), le64(c, 24));
        let blocks = u64::from(raw_count & 0x000F_FFFF);
        let last_chunk = last && k as u64 + 1 == count;
        if addr != w.next
            || raw_count & 0xFFF0_0000 != 0
            || blocks == 0
            || blocks > w.per_chunk
            || (!last_chunk && blocks != w.per_chunk)
            || u64::from(free) > blocks
        {
            return Err(corrupt(
                FS,
                format!(
                    "chunk at block {addr} ({blocks} blocks, {free} free) where block {} was \
                     expected",
                    w.next
                ),
            ));
        }
        nx.range(addr, blocks, "a chunk")?;
        let counted_free = if bitmap == 0 {
            blocks
        } else {
            let map = nx.block(bitmap)?;
            let bytes = blocks.div_ceil(8) as usize;
            let mut set: u64 = map[..bytes].iter().map(|x| u64::from(x.count_ones())).sum();
            if blocks % 8 != 0 {
                // Bits past the chunk's end are not blocks.
                set -= u64::from((map[bytes - 1] >> (blocks % 8)).count_ones());
            }
            used.push_bitmap(&map, blocks, addr, nx.bs, 0);
            blocks - set
        };
        if counted_free != u64::from(free) {
            return Err(corrupt(
                FS,
                format!("chunk at block {addr}: {free} free blocks recorded, {counted_free} in its bitmap"),
            ));
        }
        w.next = addr + blocks;
        w.free += u64::from(free);
    }
    Ok(())
}

pub(super) fn read(dev: &dyn BlockDevice) -> Result<FsReport, FsError> {
    if dev.len() < 4096 {
        return Err(corrupt(FS, "device too small for a container superblock"));
    }
    let head = read_vec(dev, 0, 4096)?;
    if &head[32..36] != b"NXSB" {
        return Err(corrupt(FS, "no APFS container superblock"));
    }
    let bs = u64::from(le32(&head, 36));
    if !(4096..=65536).contains(&bs) || !bs.is_power_of_two() {
        return Err(corrupt(FS, format!("block size {bs}")));
    }
    let blocks = le64(&head, 40);
    let size = blocks
        .checked_mul(bs)
        .filter(|&n| n <= dev.len())
        .ok_or_else(|| {
            corrupt(
                FS,
                format!(
                    "{blocks} blocks of {bs} bytes on a {}-byte device",
                    dev.len()
                ),
            )
        })?;
    let nx = Nx { dev, bs, blocks };
    let b0 = nx.block(0)?;
    if !sum_ok(&b0) || obj_type(&b0) != TYPE_NX_SUPERBLOCK {
        return Err(corrupt(FS, "block 0: checksum or object type wrong"));
    }
    let incompat = le64(&b0, 0x40);
    if incompat & INCOMPAT_FUSION != 0 {
        return Err(FsError::Unsupported {
            fs: FS,
            feature: "Fusion container (two devices)".into(),
        });
    }
    if incompat & !INCOMPAT_VERSION2 != 0 || incompat & INCOMPAT_VERSION2 == 0 {
        let what = if incompat & INCOMPAT_VERSION1 != 0 {
            "APFS version 1 container".to_string()
        } else {
            format!("incompatible features {incompat:#x}")
        };
        return Err(FsError::Unsupported {
            fs: FS,
            feature: what,
        });
    }
    let (desc_blocks, data_blocks) = (le32(&b0, 0x68), le32(&b0, 0x6C));
    let (desc_base, data_base) = (le64(&b0, 0x70), le64(&b0, 0x78));
    if (desc_blocks | data_blocks) & 0x8000_0000 != 0 || (desc_base | data_base) >> 63 != 0 {
        return Err(FsError::Unsupported {
            fs: FS,
            feature: "checkpoint areas kept in a B-tree".into(),
        });
    }
    let a = Areas {
        desc_base,
        desc_blocks: u64::from(desc_blocks),
        data_base,
        data_blocks: u64::from(data_blocks),
    };
    nx.range(a.desc_base, a.desc_blocks, "the checkpoint descriptor area")?;
    nx.range(a.data_base, a.data_blocks, "the checkpoint data area")?;
    if a.desc_blocks == 0 || a.data_blocks == 0 {
        return Err(corrupt(FS, "empty checkpoint area"));
    }
    let sb = latest_super(&nx, &a)?;
    if le32(&sb, 36) as u64 != bs || le64(&sb, 40) != blocks {
        return Err(corrupt(
            FS,
            "the latest superblock disagrees with block 0 on the container's size",
        ));
    }
    let sm = spaceman(&nx, &a, &sb)?;

    // Geometry: one bitmap block per chunk.
    let per_chunk = 8 * bs;
    let per_cib = (bs - 40) / 32;
    let per_cab = (bs - 40) / 8;
    if u64::from(le32(&sm, 32)) != bs
        || u64::from(le32(&sm, 36)) != per_chunk
        || u64::from(le32(&sm, 40)) != per_cib
        || u64::from(le32(&sm, 44)) != per_cab
    {
        return Err(corrupt(
            FS,
            "space manager geometry does not match the block size",
        ));
    }
    let dev0 = &sm[48..96];
    let (sm_blocks, chunks, cibs, cabs) = (
        le64(dev0, 0),
        le64(dev0, 8),
        u64::from(le32(dev0, 16)),
        u64::from(le32(dev0, 20)),
    );
    let (sm_free, addr_off) = (le64(dev0, 24), le32(dev0, 32) as usize);
    if le64(&sm, 96) != 0 {
        return Err(FsError::Unsupported {
            fs: FS,
            feature: "a second (tier 2) device".into(),
        });
    }
    let want_cabs = match cibs.div_ceil(per_cab) {
        1 => 0,
        n => n,
    };
    if sm_blocks != blocks
        || chunks != sm_blocks.div_ceil(per_chunk)
        || cibs != chunks.div_ceil(per_cib)
        || cabs != want_cabs
    {
        return Err(corrupt(
            FS,
            format!(
                "space manager: {sm_blocks} blocks in {chunks} chunks, {cibs} chunk-info \
                 blocks, {cabs} address blocks"
            ),
        ));
    }
    let addrs = if cabs == 0 { cibs } else { cabs } as usize;
    let table = sm
        .get(addr_off..addr_off + addrs * 8)
        .filter(|_| addr_off >= 144 && addr_off % 8 == 0)
        .ok_or_else(|| {
            corrupt(
                FS,
                format!("space manager address table at offset {addr_off}"),
            )
        })?;
    let addr = |i: usize| le64(table, i * 8);

    let mut used = ExtentMap::new();
    let mut w = Walk {
        per_chunk,
        per_cib,
        cibs,
        next: 0,
        free: 0,
    };
    if cabs == 0 {
        for i in 0..cibs {
            cib(&nx, addr(i as usize), i, &mut w, &mut used)?;
        }
    } else {
        let mut index = 0;
        for i in 0..cabs {
            let n = addr(i as usize);
            let cab = nx.object(n, TYPE_CAB, "chunk-info address block")?;
            let count = u64::from(le32(&cab, 36));
            if u64::from(le32(&cab, 32)) != i
                || count == 0
                || count > per_cab
                || (i + 1 < cabs && count != per_cab)
            {
                return Err(corrupt(
                    FS,
                    format!("chunk-info address block {i} at block {n}: {count} entries"),
                ));
            }
            for k in 0..count as usize {
                cib(&nx, le64(&cab, 40 + k * 8), index, &mut w, &mut used)?;
                index += 1;
            }
        }
        if index != cibs {
            return Err(corrupt(
                FS,
                format!("{index} chunk-info blocks listed, {cibs} counted"),
            ));
        }
    }
    if w.next != blocks || w.free != sm_free {
        return Err(corrupt(
            FS,
            format!(
                "the chunks cover {} blocks with {} free; the space manager says {blocks} with \
                 {sm_free}",
                w.next, w.free
            ),
        ));
    }

    // What the bitmaps describe only indirectly, kept whatever they say.
    let (ip_blocks, ip_bm_blocks) = (le64(&sm, 152), u64::from(le32(&sm, 164)));
    let (ip_bm_base, ip_base) = (le64(&sm, 168), le64(&sm, 176));
    nx.range(ip_base, ip_blocks, "the internal pool")?;
    nx.range(ip_bm_base, ip_bm_blocks, "the internal pool's bitmaps")?;
    for (start, len) in [
        (0, 1),
        (a.desc_base, a.desc_blocks),
        (a.data_base, a.data_blocks),
        (ip_base, ip_blocks),
        (ip_bm_base, ip_bm_blocks),
    ] {
        used.push(start * bs, len * bs);
    }
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
#[path = "apfs_tests.rs"]
mod tests;
