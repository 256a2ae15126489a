//! minix (v1, v2 and v3): used zones from the zone bitmap.
//!
//! The superblock sits at byte 1024. Then, from block 2, the inode bitmap, the zone bitmap and
//! the inode table; data zones start at `firstdatazone`. Bit 0 of the zone bitmap stands for
//! the zone before the first data zone and is always set; bit `i` is zone
//! `firstdatazone + i - 1`. Everything before the first data zone (boot block, superblock,
//! bitmaps, inode table) is kept whole.
//!
//! Checked before the map is trusted: the bitmaps large enough for the inodes and zones they
//! describe, the first data zone after the inode table, the zones inside the device, and the
//! zone bitmap's reserved bit set.

use super::{corrupt, le16, le32, FsError, FsKind, FsReport};
use crate::device::{read_vec, BlockDevice};
use crate::extent::ExtentMap;

const FS: FsKind = FsKind::Minix;

/// The superblock's fields, whichever version wrote them.
struct Super {
    block: u64,
    inode_size: u64,
    inodes: u64,
    imap_blocks: u64,
    zmap_blocks: u64,
    first_zone: u64,
    log_zone: u32,
    zones: u64,
}

/// Parses the superblock (the 1 KiB at byte 1024), or `None` when it is not minix.
fn parse(sb: &[u8]) -> Option<Super> {
    let v12 = |inode_size, zones| Super {
        block: 1024,
        inode_size,
        inodes: u64::from(le16(sb, 0)),
        imap_blocks: u64::from(le16(sb, 4)),
        zmap_blocks: u64::from(le16(sb, 6)),
        first_zone: u64::from(le16(sb, 8)),
        log_zone: u32::from(le16(sb, 10)),
        zones,
    };
    let s = match le16(sb, 16) {
        0x137F | 0x138F => v12(32, u64::from(le16(sb, 2))),
        0x2468 | 0x2478 => v12(64, u64::from(le32(sb, 20))),
        _ if le16(sb, 24) == 0x4D5A => Super {
            block: u64::from(le16(sb, 28)),
            inode_size: 64,
            inodes: u64::from(le32(sb, 0)),
            imap_blocks: u64::from(le16(sb, 6)),
            zmap_blocks: u64::from(le16(sb, 8)),
            first_zone: u64::from(le16(sb, 10)),
            log_zone: u32::from(le16(sb, 12)),
            zones: u64::from(le32(sb, 20)),
        },
        _ => return None,
    };
    Some(s)
}

/// Whether the superblock's fields hold together; the reason when they do not.
fn check(s: &Super, dev_len: u64) -> Result<(), String> {
    if !(1024..=65536).contains(&s.block) || !s.block.is_power_of_two() || s.log_zone > 8 {
        return Err(format!("block size {}, zone 2^{}", s.block, s.log_zone));
    }
    let bits = s.block * 8;
    let inode_blocks = (s.inodes * s.inode_size).div_ceil(s.block);
    let meta = 2 + s.imap_blocks + s.zmap_blocks + inode_blocks;
    if s.inodes == 0
        || s.imap_blocks * bits < s.inodes + 1
        || s.zones <= s.first_zone
        || s.zmap_blocks * bits < s.zones - s.first_zone + 1
        || (s.first_zone << s.log_zone) < meta
    {
        return Err(format!(
            "{} inodes in {} bitmap blocks, {} zones in {} bitmap blocks, data from zone {}",
            s.inodes, s.imap_blocks, s.zones, s.zmap_blocks, s.first_zone
        ));
    }
    let zone = s.block << s.log_zone;
    if s.zones.checked_mul(zone).is_none_or(|n| n > dev_len) {
        return Err(format!(
            "{} zones of {zone} bytes on a {dev_len}-byte device",
            s.zones
        ));
    }
    Ok(())
}

/// Recognises minix by its superblock: the magic and fields that hold together (two bytes of
/// magic alone turn up in other data).
pub(super) fn probe(dev: &dyn BlockDevice, head: &[u8]) -> bool {
    head.get(1024..2048)
        .and_then(parse)
        .is_some_and(|s| check(&s, dev.len()).is_ok())
}

pub(super) fn read(dev: &dyn BlockDevice) -> Result<FsReport, FsError> {
    if dev.len() < 2048 {
        return Err(corrupt(FS, "device too small for a superblock"));
    }
    let sb = read_vec(dev, 1024, 1024)?;
    let s = parse(&sb).ok_or_else(|| corrupt(FS, "no minix superblock"))?;
    check(&s, dev.len()).map_err(|why| corrupt(FS, why))?;
    let zone = s.block << s.log_zone;
    let map_at = (2 + s.imap_blocks) * s.block;
    let map = read_vec(dev, map_at, (s.zmap_blocks * s.block) as usize)?;
    if map[0] & 1 == 0 {
        return Err(corrupt(FS, "the zone bitmap's reserved bit is clear"));
    }
    let mut used = ExtentMap::new();
    used.push(0, s.first_zone * zone);
    // Bit i is zone first_zone + i - 1: bit 0 (the reserved zone) lands inside the kept area.
    let count = s.zones - s.first_zone + 1;
    used.push_bitmap(&map, count, s.first_zone - 1, zone, 0);
    used.normalize();
    Ok(FsReport {
        kind: FS,
        block_size: zone as u32,
        fs_size: s.zones * zone,
        used,
        label: None,
        volumes: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;
    use crate::device::FileDevice;

    fn tools() -> bool {
        super::super::test_support::have_tools(&["mkfs.minix", "fsck.minix", "partclone.minix"])
    }

    /// partclone.minix's "Space in use", in bytes.
    fn partclone_used(img: &Path, out: &Path) -> u64 {
        let o = Command::new("partclone.minix")
            .args(["-c", "-s"])
            .arg(img)
            .arg("-O")
            .arg(out)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stderr).replace('\r', "\n");
        assert!(o.status.success(), "partclone.minix: {text}");
        let field = |name: &str, unit: &str| -> u64 {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .and_then(|r| r.rsplit('=').next())
                .and_then(|r| r.trim().strip_suffix(unit))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        field("Space in use:", "Blocks") * field("Block size:", "Byte")
    }

    /// Made by mkfs.minix (this kernel has no minix driver, so it holds its root directory
    /// only), read, scribbled over outside the map; fsck.minix still passes, and the used bytes
    /// are within 2 % of partclone's (v1 and v2, which partclone reads).
    #[test]
    fn each_version_by_its_zone_bitmap() {
        if !tools() {
            return;
        }
        for v in ["-1", "-2", "-3"] {
            let dir = tempfile::tempdir().unwrap();
            let img = dir.path().join("minix.img");
            std::fs::write(&img, vec![0xA5u8; 32 << 20]).unwrap();
            let out = Command::new("mkfs.minix")
                .arg(v)
                .arg(&img)
                .output()
                .unwrap();
            assert!(out.status.success(), "mkfs.minix {v}");
            let dev = FileDevice::open_read(&img).unwrap();
            assert!(probe(&dev, &read_vec(&dev, 0, 4096).unwrap()), "{v}");
            let rep = read(&dev).unwrap();
            drop(dev);
            let used = rep.used.total();
            assert!(used < 2 << 20, "{v}: {used}");
            if v != "-3" {
                let theirs = partclone_used(&img, &dir.path().join("pc"));
                eprintln!("minix {v}: drover {used} bytes, partclone.minix {theirs}");
                assert!(
                    used as f64 <= theirs as f64 * 1.02,
                    "{v}: drover {used}, partclone.minix {theirs}"
                );
            }
            super::super::test_support::scribble_outside(&img, &rep.used);
            let out = Command::new("fsck.minix")
                .arg("-f")
                .arg(&img)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{v}: fsck.minix after the scribble: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }

    /// A v2 filesystem by hand, 128 KiB: 64 inodes, 128 zones, one bitmap block each, data
    /// from zone 8, zone 8 in use. The fuzz seed of the minix reader.
    fn synthetic() -> Vec<u8> {
        let mut d = vec![0u8; 128 << 10];
        let sb = &mut d[1024..2048];
        sb[0..2].copy_from_slice(&64u16.to_le_bytes());
        sb[4..6].copy_from_slice(&1u16.to_le_bytes());
        sb[6..8].copy_from_slice(&1u16.to_le_bytes());
        sb[8..10].copy_from_slice(&8u16.to_le_bytes());
        sb[16..18].copy_from_slice(&0x2478u16.to_le_bytes());
        sb[20..24].copy_from_slice(&128u32.to_le_bytes());
        d[2 * 1024] = 0b11; // inodes 0 (reserved) and 1 (the root)
        d[3 * 1024] = 0b11; // the reserved bit and zone 8
        d
    }

    #[test]
    fn bitmaps_too_small_or_a_clear_reserved_bit_are_refused() {
        let d = synthetic();
        super::super::test_support::pinned_seed("seed-minix", &d);
        let rep = read(&crate::device::MemDevice::new(d.clone())).unwrap();
        let got: Vec<(u64, u64)> = rep.used.iter().map(|e| (e.start, e.len)).collect();
        assert_eq!(got, [(0, 9 * 1024)]);
        let mut bad = d.clone();
        bad[3 * 1024] = 0b10;
        let e = read(&crate::device::MemDevice::new(bad))
            .unwrap_err()
            .to_string();
        assert!(e.contains("reserved bit"), "{e}");
        let mut bad = d;
        bad[1024 + 20..1024 + 24].copy_from_slice(&20000u32.to_le_bytes()); // past the device
        assert!(read(&crate::device::MemDevice::new(bad)).is_err());
    }
}
