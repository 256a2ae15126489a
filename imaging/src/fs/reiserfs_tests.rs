//! The reiserfs reader against filesystems made by Debian's mkreiserfs (this kernel has no
//! reiserfs driver and reiserfsprogs writes no files, so they hold the root directory and the
//! journal): every byte outside the map is overwritten and `reiserfsck --check` must still pass.
//! Then a hand-built filesystem (the fuzz seed) for the refusals.

use std::path::Path;
use std::process::Command;

use super::*;
use crate::device::{FileDevice, MemDevice};
use crate::fs::scan;

fn tools() -> bool {
    super::super::test_support::have_tools(&["mkreiserfs", "reiserfsck"])
}

fn reiserfsck(img: &Path, what: &str) {
    let out = Command::new("reiserfsck")
        .args(["--check", "-y", "-q"])
        .arg(img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: reiserfsck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `bytes` of stale 0xEE, then mkreiserfs with `args`; read, scribbled outside the map, checked.
fn check(bytes: usize, args: &[&str]) {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("reiserfs.img");
    std::fs::write(&img, vec![0xEEu8; bytes]).unwrap();
    let out = Command::new("mkreiserfs")
        .args(["-q", "-f", "-l", "lab-reiser"])
        .args(args)
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success(), "mkreiserfs {args:?}: {out:?}");
    reiserfsck(&img, "as made");
    let dev = FileDevice::open_read(&img).unwrap();
    let rep = read(&dev).unwrap();
    assert_eq!(rep.fs_size, bytes as u64 / 4096 * 4096);
    let used = rep.used.total();
    // The journal (32 MiB) and a few blocks more; not the free space.
    assert!(
        used > 32 << 20 && used < 34 << 20,
        "{args:?}: {used} bytes used"
    );
    let s = scan(&dev, 4 << 20).unwrap();
    assert!(s.warning.is_none(), "{:?}", s.warning);
    assert_eq!(s.detected, FsKind::Reiserfs);
    drop(dev);
    super::super::test_support::scribble_outside(&img, &rep.used);
    reiserfsck(&img, "after the scribble");
}

#[test]
fn format_3_6_over_four_bitmaps() {
    // Four bitmaps, the last one partly past the filesystem's end.
    check((512 << 20) + 12 * 1024, &[]);
}

#[test]
fn format_3_5() {
    check(256 << 20, &["--format", "3.5"]);
}

/// 24 blocks of 4 KiB: the superblock in block 16, the bitmap in 17, blocks 0 to 17 and 20
/// used.
fn synthetic() -> Vec<u8> {
    let mut d = vec![0u8; 24 * 4096];
    let sb = 65536;
    d[sb..sb + 4].copy_from_slice(&24u32.to_le_bytes());
    d[sb + 4..sb + 8].copy_from_slice(&5u32.to_le_bytes());
    d[sb + 44..sb + 46].copy_from_slice(&4096u16.to_le_bytes());
    d[sb + 50..sb + 52].copy_from_slice(&1u16.to_le_bytes());
    d[sb + 52..sb + 62].copy_from_slice(b"ReIsEr2Fs\0");
    d[sb + 70..sb + 72].copy_from_slice(&1u16.to_le_bytes());
    d[sb + 72..sb + 74].copy_from_slice(&2u16.to_le_bytes());
    d[sb + 100..sb + 104].copy_from_slice(b"seed");
    let map = 17 * 4096;
    d[map..map + 2].fill(0xFF);
    d[map + 2] = 0b0001_0011;
    d
}

#[test]
fn refusals_name_what_is_wrong() {
    let d = synthetic();
    super::super::test_support::pinned_seed("seed-reiserfs", &d);
    let rep = read(&MemDevice::new(d.clone())).unwrap();
    let got: Vec<(u64, u64)> = rep
        .used
        .iter()
        .map(|e| (e.start / 4096, e.len / 4096))
        .collect();
    assert_eq!(got, [(0, 18), (20, 1)]);
    assert_eq!(rep.label.as_deref(), Some("seed"));
    let err = |d: Vec<u8>| read(&MemDevice::new(d)).unwrap_err().to_string();
    let mut bad = d.clone();
    bad[65536 + 50] = 2;
    assert!(err(bad).contains("not cleanly unmounted"));
    let mut bad = d.clone();
    bad[65536 + 4] = 6;
    assert!(err(bad).contains("the bitmaps leave 5 blocks free, the superblock 6"));
    let mut bad = d.clone();
    bad[17 * 4096 + 2] = 0b0001_0001;
    bad[65536 + 4] = 6;
    assert!(err(bad).contains("bitmap 0 at block 17 marks itself free"));
    let mut bad = d.clone();
    bad[65536 + 70] = 2;
    assert!(err(bad).contains("2 bitmaps for 24 blocks"));
    let mut bad = d;
    bad[65536..65540].copy_from_slice(&100u32.to_le_bytes());
    assert!(err(bad).contains("100 blocks"));
}
