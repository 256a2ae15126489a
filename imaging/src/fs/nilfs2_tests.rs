//! The NILFS2 reader against filesystems made by Debian's mkfs.nilfs2 (files are written into
//! them by a real kernel in tests/tests/foreign_fs_vm.rs), then a hand-built filesystem (the
//! fuzz seed) for the DAT translation, the B-tree lookup and the refusals.

use std::process::Command;

use super::*;
use crate::device::FileDevice;
use crate::fs::scan;

#[test]
fn mkfs_filesystem_by_its_segment_usage() {
    if !super::super::test_support::have_tools(&["mkfs.nilfs2"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("nilfs2.img");
    std::fs::write(&img, vec![0xEEu8; 256 << 20]).unwrap();
    let out = Command::new("mkfs.nilfs2")
        .args(["-q", "-f", "-L", "lab-nilfs"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success(), "mkfs.nilfs2: {out:?}");
    let dev = FileDevice::open_read(&img).unwrap();
    let rep = read(&dev).unwrap();
    assert_eq!(rep.label.as_deref(), Some("lab-nilfs"));
    // mkfs writes its first log into segment 0 and allocates segment 1 as the next one: those
    // two segments (8 MiB each) and the superblock copy.
    let got: Vec<(u64, u64)> = rep.used.iter().map(|e| (e.start, e.len)).collect();
    assert_eq!(got, [(0, 16 << 20), ((256 << 20) - 4096, 4096)]);
    let s = scan(&dev, 4 << 20).unwrap();
    assert!(s.warning.is_none(), "{:?}", s.warning);
    assert_eq!(s.detected, FsKind::Nilfs2);
}

const BS: usize = 4096;

fn put16(d: &mut [u8], at: usize, v: u16) {
    d[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(d: &mut [u8], at: usize, v: u32) {
    d[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(d: &mut [u8], at: usize, v: u64) {
    d[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

const SEED: u32 = 0x1234_5678;

/// Seals the superblock's crc (over its first 280 bytes, the sum field as zero).
fn seal_sb(d: &mut [u8]) {
    let sb = 1024;
    put32(d, sb + 16, 0);
    let c = crc(SEED, &d[sb..sb + 280]);
    put32(d, sb + 16, c);
}

/// Seals the super root's crc (over its 400 bytes after the sum).
fn seal_sr(d: &mut [u8]) {
    let sr = 4 * BS;
    let c = crc(SEED, &d[sr + 4..sr + 400]);
    put32(d, sr, c);
}

/// 68 blocks of 4 KiB: four segments of 16 blocks from block 1, the first log in segment 0
/// (summary, the sufile's block, the DAT's entry block, the super root), segments 0 and 1 in
/// use, 2 and 3 clean; the sufile's block 0 is virtual block 5, which the DAT maps to block 2.
fn synthetic() -> Vec<u8> {
    let mut d = vec![0u8; 68 * BS];
    let sb = 1024;
    put32(&mut d, sb, 2);
    put16(&mut d, sb + 6, MAGIC);
    put16(&mut d, sb + 8, 280);
    put32(&mut d, sb + 12, SEED);
    put32(&mut d, sb + 20, 2);
    put64(&mut d, sb + 24, 4);
    put64(&mut d, sb + 32, 68 * BS as u64);
    put64(&mut d, sb + 40, 1);
    put32(&mut d, sb + 48, 16);
    put64(&mut d, sb + 0x40, 1);
    put16(&mut d, sb + 0x74, VALID_FS);
    put16(&mut d, sb + 0x90, 128);
    put16(&mut d, sb + 0x92, 32);
    put16(&mut d, sb + 0x96, 16);
    d[sb + 0xA8..sb + 0xAC].copy_from_slice(b"seed");
    seal_sb(&mut d);
    // The partial segment's summary: four blocks, ending with a super root.
    let ss = BS;
    put32(&mut d, ss + 8, SEGSUM_MAGIC);
    put16(&mut d, ss + 14, 0x7);
    put32(&mut d, ss + 40, 4);
    // The sufile's block: two clean segments; 0 active and dirty, 1 dirty.
    let su = 2 * BS;
    put64(&mut d, su, 2);
    put64(&mut d, su + 8, 2);
    put32(&mut d, su + 32 + 12, 0b11);
    put32(&mut d, su + 48 + 12, 0b10);
    // The DAT's entry block (its logical block 2): entry 5 is block 2.
    put64(&mut d, 3 * BS + 5 * 32, 2);
    // The super root: the DAT's bmap maps logical block 2 to block 3 (direct), the sufile's
    // maps block 0 to virtual block 5.
    let sr = 4 * BS;
    put16(&mut d, sr + 4, 400);
    put64(&mut d, sr + 16 + 56 + 3 * 8, 3);
    put64(&mut d, sr + 16 + 2 * 128 + 56 + 8, 5);
    seal_sr(&mut d);
    d
}

fn blocks_of(d: Vec<u8>) -> Result<Vec<(u64, u64)>, FsError> {
    let rep = read(&crate::device::MemDevice::new(d))?;
    Ok(rep
        .used
        .iter()
        .map(|e| (e.start / BS as u64, e.len / BS as u64))
        .collect())
}

#[test]
fn the_segment_usage_through_the_dat() {
    let d = synthetic();
    super::super::test_support::pinned_seed("seed-nilfs2", &d);
    assert_eq!(blocks_of(d).unwrap(), [(0, 32), (67, 1)]);
}

#[test]
fn refusals_name_what_is_wrong() {
    let err = |d: Vec<u8>| blocks_of(d).unwrap_err().to_string();
    let mut d = synthetic();
    put16(&mut d, 1024 + 0x74, 0);
    seal_sb(&mut d);
    assert!(err(d).contains("not cleanly unmounted"));
    let mut d = synthetic();
    d[1024 + 100] ^= 1;
    assert!(err(d).contains("superblock checksum"));
    let mut d = synthetic();
    d[4 * BS + 300] ^= 1;
    assert!(err(d).contains("super root checksum"));
    // Segment 2 in use too, but the header still counts two clean.
    let mut d = synthetic();
    put32(&mut d, 2 * BS + 64 + 12, 0b10);
    assert!(err(d).contains("1 clean segments counted, the segment usage file says 2"));
    // The DAT entry of the sufile's block empty.
    let mut d = synthetic();
    put64(&mut d, 3 * BS + 5 * 32, 0);
    assert!(err(d).contains("virtual block 5 has no physical block"));
    // The sufile's block unmapped.
    let mut d = synthetic();
    put64(&mut d, 4 * BS + 16 + 2 * 128 + 56 + 8, 0);
    seal_sr(&mut d);
    assert!(err(d).contains("metadata block 0 is not mapped"));
    // The summary without a super root.
    let mut d = synthetic();
    put16(&mut d, BS + 14, 0x3);
    assert!(err(d).contains("has no super root"));
}

/// Random bytes changed in the blocks the reader reads, checksums resealed half the time:
/// never a panic, and an accepted map stays inside.
#[test]
fn mutated_metadata_never_panics() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let seed = synthetic();
    for _ in 0..600 {
        let mut d = seed.clone();
        for _ in 0..rng.gen_range(1..5) {
            let blk = rng.gen_range(0..5);
            let at = blk * BS + if blk == 0 { 1024 } else { 0 } + rng.gen_range(0..512);
            d[at] = rng.gen();
        }
        if rng.gen_bool(0.5) {
            seal_sb(&mut d);
            seal_sr(&mut d);
        }
        let len = d.len() as u64;
        if let Ok(rep) = read(&crate::device::MemDevice::new(d)) {
            assert!(rep.used.end() <= len);
        }
    }
}
