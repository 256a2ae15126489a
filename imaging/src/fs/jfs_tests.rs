//! The JFS reader against aggregates made by Debian's mkfs.jfs (this kernel has no JFS driver
//! and jfsutils writes no files, so they hold the root directory, the inline log and the fsck
//! workspace): every byte outside the map is overwritten and `fsck.jfs -n -f` must still pass.
//! A 40 GiB aggregate puts dmaps past the first level 0 control page. Then a hand-built
//! aggregate (the fuzz seed) for the refusals.

use std::path::Path;
use std::process::Command;

use super::*;
use crate::device::{FileDevice, MemDevice};
use crate::fs::scan;

fn tools() -> bool {
    super::super::test_support::have_tools(&["mkfs.jfs", "fsck.jfs"])
}

fn fsck(img: &Path, what: &str) {
    let out = Command::new("fsck.jfs")
        .args(["-n", "-f"])
        .arg(img)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what}: fsck.jfs: {text}");
    assert!(text.contains("is clean"), "{what}: fsck.jfs: {text}");
}

fn mkfs(img: &Path) {
    let out = Command::new("mkfs.jfs")
        .args(["-q", "-L", "lab-jfs"])
        .arg(img)
        .output()
        .unwrap();
    assert!(out.status.success(), "mkfs.jfs: {out:?}");
}

#[test]
fn mkfs_aggregate_by_its_dmaps() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("jfs.img");
    std::fs::write(&img, vec![0xEEu8; 512 << 20]).unwrap();
    mkfs(&img);
    fsck(&img, "as made");
    let dev = FileDevice::open_read(&img).unwrap();
    let rep = read(&dev).unwrap();
    assert_eq!(rep.fs_size, dev.len());
    assert_eq!(rep.label.as_deref(), Some("lab-jfs"));
    let used = rep.used.total();
    // The inline log (2 MiB), the fsck workspace, the maps and inode tables; not the rest.
    assert!(used > 2 << 20 && used < 8 << 20, "{used} bytes used");
    let s = scan(&dev, 4 << 20).unwrap();
    assert!(s.warning.is_none(), "{:?}", s.warning);
    assert_eq!(s.detected, FsKind::Jfs);
    drop(dev);
    super::super::test_support::scribble_outside(&img, &rep.used);
    fsck(&img, "after the scribble");
}

#[test]
fn large_aggregate_past_the_first_level_0_page() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("jfs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(40 << 30)
        .unwrap();
    mkfs(&img);
    let dev = FileDevice::open_read(&img).unwrap();
    let rep = read(&dev).unwrap();
    // More than 2^23 blocks: dmaps behind a second level 0 control page were found and held
    // together (a misplaced one fails its start check).
    assert!(rep.fs_size > (1u64 << 23) * 4096);
    let used = rep.used.total();
    assert!(used < 200 << 20, "{used} bytes used of 40 GiB");
    drop(dev);
    fsck(&img, "as made");
}

/// 64 blocks: fixed metadata 0..16, the map file 16..21 (control, L2, L1, L0, the dmap), 56
/// blocks mapped, the fsck workspace 56..60 and an inline log 60..64; blocks 0..21 and 30
/// used.
fn synthetic() -> Vec<u8> {
    let mut d = vec![0u8; 64 * 4096];
    let put32 = |d: &mut [u8], at: usize, v: u32| d[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put64 = |d: &mut [u8], at: usize, v: u64| d[at..at + 8].copy_from_slice(&v.to_le_bytes());
    let sb = SUPER_AT as usize;
    d[sb..sb + 4].copy_from_slice(b"JFS1");
    put32(&mut d, sb + 4, 1);
    put64(&mut d, sb + 8, 56 * 8);
    put32(&mut d, sb + 16, 4096);
    put32(&mut d, sb + 24, 512);
    put32(&mut d, sb + 36, INLINE_LOG);
    put32(&mut d, sb + 72, 4);
    put32(&mut d, sb + 76, 60);
    put32(&mut d, sb + 80, 4);
    put32(&mut d, sb + 84, 56);
    d[sb + 152..sb + 156].copy_from_slice(b"seed");
    let ino = (AIT_AT + 2 * 512) as usize;
    put32(&mut d, ino + 8, 2);
    let root = ino + 224;
    d[root + 16] = 0x03;
    d[root + 18..root + 20].copy_from_slice(&3u16.to_le_bytes());
    d[root + 20..root + 22].copy_from_slice(&18u16.to_le_bytes());
    put32(&mut d, root + 32 + 8, 5);
    put32(&mut d, root + 32 + 12, 16);
    let ctl = 16 * 4096;
    put64(&mut d, ctl, 56);
    put64(&mut d, ctl + 8, 34);
    let dm = 20 * 4096;
    put32(&mut d, dm, 56);
    put32(&mut d, dm + 4, 34);
    put32(&mut d, dm + 3072, 0xFFFF_F802);
    d
}

#[test]
fn refusals_name_what_is_wrong() {
    let d = synthetic();
    super::super::test_support::pinned_seed("seed-jfs", &d);
    let rep = read(&MemDevice::new(d.clone())).unwrap();
    let got: Vec<(u64, u64)> = rep
        .used
        .iter()
        .map(|e| (e.start / 4096, e.len / 4096))
        .collect();
    assert_eq!(got, [(0, 21), (30, 1), (56, 8)]);
    let err = |d: Vec<u8>| read(&MemDevice::new(d)).unwrap_err().to_string();
    let sb = SUPER_AT as usize;
    let mut bad = d.clone();
    bad[sb + 40] = 2;
    assert!(err(bad).contains("not cleanly unmounted"));
    let mut bad = d.clone();
    bad[20 * 4096 + 3072] = 0x06; // block 29 used too
    assert!(err(bad).contains("dmap 0: 34 free blocks recorded, 33 in its map"));
    let mut bad = d.clone();
    bad[16 * 4096 + 8] = 35;
    assert!(err(bad).contains("the dmaps leave 34 blocks free, the map's control page 35"));
    let mut bad = d.clone();
    bad[20 * 4096 + 8] = 1;
    assert!(err(bad).contains("dmap 0: 56 blocks from 1"));
    let mut bad = d.clone();
    bad[(AIT_AT + 2 * 512) as usize + 224 + 32 + 12] = 200; // the map file past the end
    assert!(err(bad).contains("outside the aggregate"));
    let mut bad = d;
    bad[(AIT_AT + 2 * 512) as usize + 224 + 32 + 8] = 3; // the map file too short
    assert!(err(bad).contains("block map page 4 is in no extent"));
}
