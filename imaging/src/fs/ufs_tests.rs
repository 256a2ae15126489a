//! The UFS reader against UFS1 and UFS2 images NetBSD's makefs (Debian's `makefs`) builds from
//! a folder (Debian has no UFS checker; a real kernel reads the files back after a restore in
//! tests/tests/foreign_fs_vm.rs), then a hand-built filesystem (the fuzz seed) for the
//! refusals.

use std::process::Command;

use super::*;
use crate::device::{FileDevice, MemDevice};
use crate::fs::scan;

#[test]
fn makefs_images_by_their_free_maps() {
    if !super::super::test_support::have_tools(&["makefs"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    for (i, size) in [1usize, 5000, 300_000, 3 << 20].iter().enumerate() {
        let data: Vec<u8> = (0..*size).map(|j| (j * 7 + i) as u8).collect();
        std::fs::write(tree.join(format!("f{i}")), &data).unwrap();
        std::fs::write(tree.join("sub").join(format!("g{i}")), &data).unwrap();
    }
    for v in ["1", "2"] {
        let img = dir.path().join(format!("ufs{v}.img"));
        let out = Command::new("makefs")
            .args(["-t", "ffs", "-o", &format!("version={v}"), "-s", "64m"])
            .arg(&img)
            .arg(&tree)
            .output()
            .unwrap();
        assert!(out.status.success(), "makefs: {out:?}");
        let dev = FileDevice::open_read(&img).unwrap();
        let rep = read(&dev).unwrap();
        assert_eq!(rep.fs_size, 64 << 20);
        let used = rep.used.total();
        // The files (6.6 MiB), the inode tables and the group headers; not the free space.
        assert!(
            used > 6 << 20 && used < 12 << 20,
            "UFS{v}: {used} bytes used"
        );
        let s = scan(&dev, 4 << 20).unwrap();
        assert!(s.warning.is_none(), "{:?}", s.warning);
        assert_eq!(s.detected, FsKind::Ufs);
    }
}

/// UFS2, 64 fragments of 1 KiB in 4 KiB blocks, one group: the superblock at 8192, the group's
/// header at fragment 12, fragments 0..20 and 40 used.
fn synthetic() -> Vec<u8> {
    let mut d = vec![0u8; 64 << 10];
    let put32 = |d: &mut [u8], at: usize, v: u32| d[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put64 = |d: &mut [u8], at: usize, v: u64| d[at..at + 8].copy_from_slice(&v.to_le_bytes());
    let sb = 8192;
    put32(&mut d, sb + 12, 12);
    put32(&mut d, sb + 44, 1);
    put32(&mut d, sb + 48, 4096);
    put32(&mut d, sb + 52, 1024);
    put32(&mut d, sb + 56, 4);
    put32(&mut d, sb + 188, 64);
    d[sb + 209] = 1;
    d[sb + 680..sb + 684].copy_from_slice(b"seed");
    put64(&mut d, sb + 1016, 10);
    put64(&mut d, sb + 1032, 3);
    put64(&mut d, sb + 1080, 64);
    put32(&mut d, sb + 1372, UFS2_MAGIC);
    let cg = 12 << 10;
    put32(&mut d, cg + 4, CG_MAGIC);
    put32(&mut d, cg + 20, 64);
    put32(&mut d, cg + 28, 10);
    put32(&mut d, cg + 36, 3);
    put32(&mut d, cg + 96, 168);
    // Free: fragments 20..40 and 41..64.
    let map: u64 = (((1u64 << 20) - 1) << 20) | (((1u64 << 23) - 1) << 41);
    d[cg + 168..cg + 176].copy_from_slice(&map.to_le_bytes());
    d
}

#[test]
fn refusals_name_what_is_wrong() {
    let d = synthetic();
    super::super::test_support::pinned_seed("seed-ufs", &d);
    let rep = read(&MemDevice::new(d.clone())).unwrap();
    let got: Vec<(u64, u64)> = rep.used.iter().map(|e| (e.start, e.len)).collect();
    assert_eq!(got, [(0, 20 << 10), (40 << 10, 1 << 10)]);
    assert_eq!(rep.label.as_deref(), Some("seed"));
    let err = |d: Vec<u8>| read(&MemDevice::new(d)).unwrap_err().to_string();
    let mut bad = d.clone();
    bad[8192 + 209] = 0;
    assert!(err(bad).contains("not marked clean"));
    let mut bad = d.clone();
    bad[(12 << 10) + 168 + 6] = 0; // fragments 48..56 used too
    assert!(err(bad).contains("group 0: 35 free fragments in its map, 10 free blocks and 3"));
    let mut bad = d.clone();
    bad[8192 + 1016] = 9;
    assert!(err(bad).contains("the superblock 9 and 3"));
    let mut bad = d.clone();
    bad[(12 << 10) + 12] = 1;
    assert!(err(bad).contains("index 1"));
    let mut bad = d;
    bad[8192 + 1080] = 65; // more fragments than the group holds
    assert!(err(bad).contains("65 fragments"));
}
