//! FAT12/16/32: the file allocation table.
//!
//! Everything before the data area (boot sector, reserved sectors with the FAT32 backup boot
//! sector and FSInfo, every FAT copy, the FAT12/16 root directory) is kept; in the data area a
//! cluster is used when its FAT entry is non-zero (bad-cluster marks included: copying them is
//! harmless, dropping a used one is not).

use super::{corrupt, le16, le32, FsError, FsKind, FsReport};
use crate::device::BlockDevice;
use crate::extent::ExtentMap;

/// Bytes of FAT read at a time: a multiple of 3 (FAT12 entry pairs), 4 and every sector size.
const FAT_PIECE: u64 = 3 << 19;

struct Bpb {
    kind: FsKind,
    bps: u64,
    spc: u64,
    total_sectors: u64,
    fat_start: u64,
    fat_sectors: u64,
    data_start: u64,
    clusters: u64,
    label: Option<String>,
}

fn parse(b: &[u8]) -> Result<Bpb, &'static str> {
    if b.len() < 512 {
        return Err("boot sector too short");
    }
    if !(b[0] == 0xEB && b[2] == 0x90 || b[0] == 0xE9) {
        return Err("no x86 jump at the start of the boot sector");
    }
    let bps = u64::from(le16(b, 0x0B));
    let spc = u64::from(b[0x0D]);
    let reserved = u64::from(le16(b, 0x0E));
    let fats = u64::from(b[0x10]);
    let root_entries = u64::from(le16(b, 0x11));
    let total16 = u64::from(le16(b, 0x13));
    let media = b[0x15];
    let fat16 = u64::from(le16(b, 0x16));
    let total32 = u64::from(le32(b, 0x20));
    let fat32 = u64::from(le32(b, 0x24));
    if !(512..=4096).contains(&bps) || !bps.is_power_of_two() {
        return Err("bytes per sector is not 512, 1024, 2048 or 4096");
    }
    if spc == 0 || !spc.is_power_of_two() {
        return Err("sectors per cluster is not a power of two");
    }
    if reserved == 0 || fats == 0 || fats > 4 {
        return Err("reserved sector or FAT count out of range");
    }
    if media != 0xF0 && media < 0xF8 {
        return Err("media descriptor out of range");
    }
    let total_sectors = if total16 != 0 { total16 } else { total32 };
    let fat_sectors = if fat16 != 0 { fat16 } else { fat32 };
    if total_sectors == 0 || fat_sectors == 0 {
        return Err("zero total sectors or FAT size");
    }
    let root_sectors = (root_entries * 32).div_ceil(bps);
    let data_start = reserved + fats * fat_sectors + root_sectors;
    if data_start >= total_sectors {
        return Err("data area starts past the end of the volume");
    }
    let clusters = (total_sectors - data_start) / spc;
    let kind = if clusters < 4085 {
        FsKind::Fat12
    } else if clusters < 65525 {
        FsKind::Fat16
    } else {
        FsKind::Fat32
    };
    if kind == FsKind::Fat32 && (root_entries != 0 || fat16 != 0) {
        return Err("FAT32 cluster count with a FAT12/16 root directory");
    }
    let label_at = if fat16 == 0 { 0x47 } else { 0x2B };
    let label = String::from_utf8_lossy(&b[label_at..label_at + 11])
        .trim()
        .to_string();
    Ok(Bpb {
        kind,
        bps,
        spc,
        total_sectors,
        fat_start: reserved,
        fat_sectors,
        data_start,
        clusters,
        label: (!label.is_empty() && label != "NO NAME").then_some(label),
    })
}

/// Recognises a FAT boot sector (NTFS and exFAT are probed before this).
pub(super) fn probe(head: &[u8]) -> Option<FsKind> {
    let b = head.get(..512)?;
    if b[510] != 0x55 || b[511] != 0xAA {
        return None;
    }
    parse(b).ok().map(|p| p.kind)
}

pub(super) fn read(dev: &dyn BlockDevice) -> Result<FsReport, FsError> {
    let mut b = vec![0u8; 512];
    dev.read_at(&mut b, 0)?;
    let p = parse(&b).map_err(|r| corrupt(FsKind::Fat32, r))?;
    let kind = p.kind;
    let fs_size = super::volume_size(kind, p.total_sectors, p.bps, dev)?;
    let entry_bits: u64 = match kind {
        FsKind::Fat12 => 12,
        FsKind::Fat16 => 16,
        _ => 32,
    };
    let entries = p.clusters + 2;
    let fat_bytes = p.fat_sectors * p.bps;
    if fat_bytes * 8 / entry_bits < entries {
        return Err(corrupt(
            kind,
            format!(
                "a FAT of {fat_bytes} bytes cannot describe {} clusters",
                p.clusters
            ),
        ));
    }
    let cluster = p.spc * p.bps;
    let data = p.data_start * p.bps;
    let mut used = ExtentMap::new();
    used.push(0, data);

    let need = (entries * entry_bits).div_ceil(8);
    let fat_off = p.fat_start * p.bps;
    let mut buf = vec![0u8; FAT_PIECE.min(need) as usize];
    let mut pos = 0u64; // byte offset in the FAT of buf[0]
    while pos < need {
        let n = (need - pos).min(buf.len() as u64) as usize;
        dev.read_at(&mut buf[..n], fat_off + pos)?;
        let piece = &buf[..n];
        // Entries whose bytes lie wholly in this piece.
        let first = pos * 8 / entry_bits;
        let last = ((pos + n as u64) * 8 / entry_bits).min(entries);
        for e in first.max(2)..last {
            let bit = e * entry_bits - pos * 8;
            let o = (bit / 8) as usize;
            let v = match kind {
                FsKind::Fat12 => {
                    let w = u16::from_le_bytes([piece[o], piece[o + 1]]);
                    if e % 2 == 0 { w & 0x0FFF } else { w >> 4 }.into()
                }
                FsKind::Fat16 => u32::from(le16(piece, o)),
                _ => le32(piece, o) & 0x0FFF_FFFF,
            };
            if v != 0 {
                used.push(data + (e - 2) * cluster, cluster);
            }
        }
        pos += n as u64;
    }
    used.normalize();
    Ok(FsReport {
        kind,
        block_size: cluster as u32,
        fs_size,
        used,
        label: p.label,
        volumes: Vec::new(),
    })
}
