//! exFAT: the allocation bitmap.
//!
//! The boot regions (main and backup), the FATs and everything else before the cluster heap are
//! kept whole; in the heap a cluster is used when its bit in the allocation bitmap is set. The
//! bitmap is found through its entry (type 0x81) in the root directory, whose clusters are
//! followed through the FAT. As in the Linux driver, the bitmap itself is read as a contiguous
//! run of clusters.

use super::{corrupt, le16, le32, le64, FsError, FsKind, FsReport};
use crate::device::{read_vec, BlockDevice};
use crate::extent::ExtentMap;

const K: FsKind = FsKind::Exfat;
const ENTRY_BITMAP: u8 = 0x81;
const ENTRY_LABEL: u8 = 0x83;

pub(super) fn probe(head: &[u8]) -> bool {
    head.get(3..11) == Some(b"EXFAT   ")
}

pub(super) fn read(dev: &dyn BlockDevice) -> Result<FsReport, FsError> {
    let b = read_vec(dev, 0, 512)?;
    if !probe(&b) {
        return Err(corrupt(K, "no exFAT signature"));
    }
    let volume_len = le64(&b, 0x48);
    let fat_offset = u64::from(le32(&b, 0x50));
    let fat_len = u64::from(le32(&b, 0x54));
    let heap_offset = u64::from(le32(&b, 0x58));
    let clusters = u64::from(le32(&b, 0x5C));
    let root = le32(&b, 0x60);
    let flags = le16(&b, 0x6A);
    let bps_shift = u32::from(b[0x6C]);
    let spc_shift = u32::from(b[0x6D]);
    let fats = u64::from(b[0x6E]);
    if !(9..=12).contains(&bps_shift) || spc_shift > 25 - bps_shift {
        return Err(corrupt(
            K,
            format!("sector shift {bps_shift} / cluster shift {spc_shift}"),
        ));
    }
    if !(1..=2).contains(&fats) {
        return Err(corrupt(K, format!("{fats} FATs")));
    }
    let bps = 1u64 << bps_shift;
    let cluster = bps << spc_shift;
    let fs_size = super::volume_size(K, volume_len, bps, dev)?;
    let heap = heap_offset * bps;
    if fat_offset < 24
        || (fat_offset + fats * fat_len) > heap_offset
        || clusters == 0
        || heap + clusters * cluster > fs_size
        || fat_len * bps < (clusters + 2) * 4
    {
        return Err(corrupt(K, "FAT or cluster heap outside the volume"));
    }
    let active_fat = if fats == 2 && flags & 1 != 0 {
        fat_offset + fat_len
    } else {
        fat_offset
    };
    let fat_at = active_fat * bps;
    let valid = |c: u32| u64::from(c) >= 2 && u64::from(c) < clusters + 2;
    let cluster_pos = |c: u32| heap + (u64::from(c) - 2) * cluster;

    // Walk the root directory's cluster chain, looking for the bitmap and label entries.
    let mut bitmap_entry = None;
    let mut label = None;
    let mut c = root;
    let mut steps = 0u64;
    let mut buf = vec![0u8; cluster as usize];
    'chain: loop {
        if !valid(c) {
            return Err(corrupt(
                K,
                format!("root directory cluster {c} out of range"),
            ));
        }
        dev.read_at(&mut buf, cluster_pos(c))?;
        for e in buf.chunks_exact(32) {
            match e[0] {
                0 => break 'chain,
                ENTRY_BITMAP if e[1] & 1 == 0 && bitmap_entry.is_none() => {
                    bitmap_entry = Some((le32(e, 0x14), le64(e, 0x18)));
                }
                ENTRY_LABEL => {
                    let n = usize::from(e[1]).min(11);
                    let units: Vec<u16> = (0..n).map(|i| le16(e, 2 + 2 * i)).collect();
                    label = Some(String::from_utf16_lossy(&units));
                }
                _ => {}
            }
        }
        steps += 1;
        if steps > clusters {
            return Err(corrupt(K, "root directory cluster chain loops"));
        }
        let next = le32(&read_vec(dev, fat_at + u64::from(c) * 4, 4)?, 0);
        if next >= 0xFFFF_FFF8 {
            break;
        }
        c = next;
    }
    let (first, len) = bitmap_entry
        .ok_or_else(|| corrupt(K, "no allocation bitmap entry in the root directory"))?;
    if !valid(first) || len < clusters.div_ceil(8) {
        return Err(corrupt(
            K,
            format!("allocation bitmap at cluster {first}, {len} bytes"),
        ));
    }
    let bitmap_clusters = len.div_ceil(cluster);
    if u64::from(first) - 2 + bitmap_clusters > clusters {
        return Err(corrupt(K, "allocation bitmap runs past the cluster heap"));
    }
    let mut used = ExtentMap::new();
    used.push(0, heap);
    // Read the bitmap in pieces so a huge volume does not need it all in memory at once.
    let need = clusters.div_ceil(8);
    let piece = 1u64 << 20;
    let mut bm = vec![0u8; piece.min(need) as usize];
    let mut done = 0u64;
    while done < need {
        let n = (need - done).min(piece) as usize;
        dev.read_at(&mut bm[..n], cluster_pos(first) + done)?;
        let first_index = done * 8;
        let count = (clusters - first_index).min(n as u64 * 8);
        used.push_bitmap(&bm[..n], count, first_index, cluster, heap);
        done += n as u64;
    }
    used.normalize();
    Ok(FsReport {
        kind: K,
        block_size: cluster as u32,
        fs_size,
        used,
        label: label.filter(|l| !l.is_empty()),
        volumes: Vec::new(),
    })
}
