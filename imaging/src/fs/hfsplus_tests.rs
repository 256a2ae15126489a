//! The HFS+ reader against the HFS+ volume xorriso builds into an ISO hybrid (Debian 12 has no
//! mkfs for HFS+; that volume lays its catalog over the ISO's files, so every block is in use),
//! measured against partclone.hfsp, then a hand-built volume (the fuzz seed) with free blocks,
//! and the refusals.

// The volume header is big-endian.
#![allow(clippy::big_endian_bytes)]

use std::process::Command;

use super::*;
use crate::device::{FileDevice, MemDevice};
use crate::fs::scan;

#[test]
fn xorriso_volume_by_its_allocation_file() {
    if !super::super::test_support::have_tools(&["xorriso", "partclone.hfsp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    for (i, size) in [1usize, 5000, 300_000, 1 << 20].iter().enumerate() {
        let data: Vec<u8> = (0..*size).map(|j| (j * 7 + i) as u8).collect();
        std::fs::write(tree.join(format!("f{i}")), &data).unwrap();
        std::fs::write(tree.join("sub").join(format!("g{i}")), &data).unwrap();
    }
    let iso = dir.path().join("x.iso");
    let out = Command::new("xorriso")
        .args(["-as", "mkisofs", "-hfsplus", "-o"])
        .arg(&iso)
        .arg(&tree)
        .output()
        .unwrap();
    assert!(out.status.success(), "xorriso: {out:?}");
    // The HFS+ volume is the ISO's Apple partition: find its header (at 1024 into it).
    let data = std::fs::read(&iso).unwrap();
    let start = (0..data.len() - 2048)
        .step_by(512)
        .find(|&p| probe(&data[p..p + 2048]))
        .expect("an HFS+ volume in the ISO");
    let img = dir.path().join("hfsplus.img");
    std::fs::write(&img, &data[start..]).unwrap();
    let dev = FileDevice::open_read(&img).unwrap();
    let rep = read(&dev).unwrap();
    let used = rep.used.total();
    let s = scan(&dev, 4 << 20).unwrap();
    assert!(s.warning.is_none(), "{:?}", s.warning);
    assert_eq!(s.detected, FsKind::Hfsplus);
    drop(dev);
    let o = Command::new("partclone.hfsp")
        .args(["-c", "-s"])
        .arg(&img)
        .args(["-O"])
        .arg(dir.path().join("pc.img"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr).replace('\r', "\n");
    assert!(o.status.success(), "partclone.hfsp: {text}");
    let field = |name: &str, unit: &str| -> u64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|r| r.rsplit('=').next())
            .and_then(|r| r.trim().strip_suffix(unit))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let theirs = field("Space in use:", "Blocks") * field("Block size:", "Byte");
    eprintln!("hfsplus: drover {used} bytes, partclone.hfsp {theirs}");
    assert!(
        used as f64 <= theirs as f64 * 1.02,
        "drover {used}, partclone {theirs}"
    );
    // Every block in use, as the volume header says.
    assert_eq!(used, rep.fs_size);
}

/// 64 blocks of 4 KiB; the allocation file in block 1; blocks 0..5, 10 and 63 (which holds
/// the alternate volume header) in use.
fn synthetic() -> Vec<u8> {
    let mut d = vec![0u8; 64 * 4096];
    let h = 1024;
    d[h..h + 2].copy_from_slice(b"H+");
    d[h + 2..h + 4].copy_from_slice(&4u16.to_be_bytes());
    d[h + 4..h + 8].copy_from_slice(&UNMOUNTED.to_be_bytes());
    d[h + 40..h + 44].copy_from_slice(&4096u32.to_be_bytes());
    d[h + 44..h + 48].copy_from_slice(&64u32.to_be_bytes());
    d[h + 48..h + 52].copy_from_slice(&57u32.to_be_bytes());
    let fork = h + 112;
    d[fork..fork + 8].copy_from_slice(&4096u64.to_be_bytes());
    d[fork + 12..fork + 16].copy_from_slice(&1u32.to_be_bytes());
    d[fork + 16..fork + 20].copy_from_slice(&1u32.to_be_bytes());
    d[fork + 20..fork + 24].copy_from_slice(&1u32.to_be_bytes());
    let map = 4096;
    d[map] = 0b1111_1000;
    d[map + 1] = 0b0010_0000;
    d[map + 7] = 0b0000_0001;
    d
}

#[test]
fn refusals_name_what_is_wrong() {
    let d = synthetic();
    super::super::test_support::pinned_seed("seed-hfsplus", &d);
    let rep = read(&MemDevice::new(d.clone())).unwrap();
    let got: Vec<(u64, u64)> = rep
        .used
        .iter()
        .map(|e| (e.start / 4096, e.len / 4096))
        .collect();
    assert_eq!(got, [(0, 5), (10, 1), (63, 1)]);
    let err = |d: Vec<u8>| read(&MemDevice::new(d)).unwrap_err().to_string();
    let mut bad = d.clone();
    bad[1024 + 6] = 0; // the unmounted bit
    assert!(err(bad).contains("not cleanly unmounted"));
    let mut bad = d.clone();
    bad[1024 + 51] = 56;
    assert!(err(bad).contains("leaves 57 blocks free, the volume header 56"));
    let mut bad = d.clone();
    bad[1024 + 112 + 15] = 2; // the fork has more blocks than its extents
    assert!(err(bad).contains("extents overflow"));
    let mut bad = d.clone();
    bad[1024 + 112 + 19] = 64; // the allocation file past the volume
    assert!(err(bad).contains("outside the volume"));
    let mut bad = d;
    bad[1024..1026].copy_from_slice(b"BD");
    assert!(err(bad).contains("classic HFS"));
}
