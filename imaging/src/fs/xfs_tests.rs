//! The XFS reader against filesystems made by Debian's mkfs.xfs (v5 and v4), with files placed
//! by a protofile, checked against `xfs_db`'s own count of free blocks; and its refusals.

#![allow(clippy::big_endian_bytes)] // XFS's fields are big-endian.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::device::{read_vec, BlockDevice, FileDevice};
use crate::extent::ExtentMap;
use crate::fs::scan;

/// mkfs.xfs and xfs_db present, or (outside CI) `None` and the test says it skipped.
fn tools() -> Option<()> {
    super::super::test_support::have_tools(&["mkfs.xfs", "xfs_db"]).then_some(())
}

/// A sparse XFS image of `mib` MiB (mkfs.xfs's smallest is 300 MB), in `dir` holding a few files of different sizes; `args` go to mkfs.xfs.
fn make(dir: &Path, mib: u64, args: &[&str]) -> PathBuf {
    let img = dir.join("xfs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    let mut proto = String::from("/dummy\n0 0\nd--755 0 0\n");
    for (i, size) in [1usize, 5000, 300_000, 4 << 20].iter().enumerate() {
        let f = dir.join(format!("f{i}"));
        let data: Vec<u8> = (0..*size).map(|j| (j * 7 + i) as u8).collect();
        std::fs::write(&f, data).unwrap();
        proto.push_str(&format!("f{i} ---644 0 0 {}\n", f.display()));
    }
    proto.push_str("$\n");
    std::fs::write(dir.join("proto"), proto).unwrap();
    let out = Command::new("mkfs.xfs")
        .args(["-f", "-q"])
        .args(args)
        .arg("-p")
        .arg(dir.join("proto"))
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mkfs.xfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

/// `xfs_db`'s free blocks (the by-block btrees' records, all groups) and the block size.
fn xfs_db_free(img: &Path) -> (u64, u64) {
    let q = |cmds: &[&str]| {
        let mut c = Command::new("xfs_db");
        c.arg("-r");
        for x in cmds {
            c.args(["-c", x]);
        }
        let out = c.arg(img).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let freesp = q(&["freesp -s"]);
    let free = freesp
        .lines()
        .find_map(|l| l.trim().strip_prefix("total free blocks "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no total in {freesp}"));
    let bs = q(&["sb 0", "print blocksize"]);
    let block = bs
        .trim()
        .strip_prefix("blocksize = ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{bs}"));
    (free, block)
}

fn check(mib: u64, args: &[&str]) {
    if tools().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = make(dir.path(), mib, args);
    let dev = FileDevice::open_read(&img).unwrap();
    let rep = read(&dev).unwrap();
    let (free, block) = xfs_db_free(&img);
    assert_eq!(u64::from(rep.block_size), block);
    assert_eq!(rep.fs_size, dev.len());
    assert!(rep.used.is_normalized());
    // Used is exactly what the free-space btrees do not hold. xfs_db also counts the blocks on
    // each group's free list (AGFL) as free; the reader keeps them (a few blocks a group).
    let head = std::fs::read(&img).unwrap()[..512].to_vec();
    let (ag_blocks, ag_count, sector) = (
        u64::from(be32(&head, 84)),
        u64::from(be32(&head, 88)),
        u64::from(be16(&head, 102)),
    );
    let on_free_lists: u64 = (0..ag_count)
        .map(|ag| {
            let agf = read_vec(&dev, ag * ag_blocks * block + sector, 512).unwrap();
            u64::from(be32(&agf, 48))
        })
        .sum();
    assert!(on_free_lists < 16 * ag_count, "{on_free_lists}");
    assert_eq!(
        rep.used.total(),
        rep.fs_size - (free - on_free_lists) * block,
        "{args:?}"
    );
    // The files' 4.3 MiB and the 64 MiB log are among the used bytes; the rest is not.
    assert!(rep.used.total() > 68 << 20, "{}", rep.used.total());
    assert!(rep.used.total() < 80 << 20, "{}", rep.used.total());
    // The superblock and the first group's headers are used.
    assert!(rep.used.covers(0, 4 * 512));
    assert_eq!(rep.label.as_deref(), Some("lab"));
    // Through scan: no warning, the same map (the filesystem fills its device).
    let sc = scan(&dev, 4 << 20).unwrap();
    assert_eq!(sc.detected, FsKind::Xfs);
    assert!(sc.warning.is_none(), "{:?}", sc.warning);
    assert_eq!(sc.report.used.total(), rep.used.total());
}

#[test]
fn v5_used_blocks_are_what_the_free_space_btrees_leave() {
    check(320, &["-L", "lab"]);
}

#[test]
fn v4_and_small_blocks_and_many_groups_read_the_same_way() {
    check(
        1024,
        &[
            "-L",
            "lab",
            "-m",
            "crc=0",
            "-b",
            "size=1024",
            "-d",
            "agcount=9",
        ],
    );
}

/// A damaged filesystem is refused, naming what is wrong, and scan falls back to the raw copy.
#[test]
fn inconsistent_metadata_is_refused_and_falls_back() {
    if tools().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = make(dir.path(), 320, &["-L", "lab"]);
    let head = std::fs::read(&img).unwrap()[..65536].to_vec();
    let sector = u64::from(be16(&head, 102));
    let block = u64::from(be32(&head, 4));
    let agf_root = u64::from(be32(&head, sector as usize + 16));
    // Each case patches the image in place, reads it, and puts the bytes back.
    let patched = |at: u64, bytes: &[u8], why: &str| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        let mut was = vec![0u8; bytes.len()];
        std::fs::File::open(&img)
            .unwrap()
            .read_exact_at(&mut was, at)
            .unwrap();
        f.write_all_at(bytes, at).unwrap();
        let dev = FileDevice::open_read(&img).unwrap();
        let err = read(&dev).unwrap_err().to_string();
        let sc = scan(&dev, 4 << 20).unwrap();
        f.write_all_at(&was, at).unwrap();
        assert!(err.contains(why), "{why}: {err}");
        assert_eq!(sc.detected, FsKind::Xfs);
        let w = sc.warning.unwrap();
        assert!(
            w.contains("xfs found but its allocation data could not be used"),
            "{w}"
        );
    };
    let free = be32(&head, sector as usize + 52);
    // The first AGF's free block count, off by one.
    patched(sector + 52, &(free + 1).to_be_bytes(), "the AGF says");
    // The AGF's magic.
    patched(sector, b"XAGX", "no AGF");
    // The group count: the groups no longer make the block count.
    patched(88, &1u32.to_be_bytes(), "do not make");
    // The block size.
    patched(4, &768u32.to_be_bytes(), "block size 768");
    // The by-block btree's root block: the walk refuses it.
    patched(agf_root * block, b"XXXX", "not a free-space btree block");
    // Put back, it reads again.
    assert!(read(&FileDevice::open_read(&img).unwrap()).is_ok());
}

/// A small XFS built here, byte by byte: 512-byte blocks, two groups of 64 blocks, each
/// group's by-block btree two levels deep (a node over two leaves), which mkfs.xfs never
/// makes on a fresh filesystem. Also the fuzz corpus's XFS seeds (`seed-xfs-v4`, `-v5`).
fn synthetic(v5: bool) -> Vec<u8> {
    const B: usize = 512;
    let (ag_blocks, ags) = (64usize, 2usize);
    let mut d = vec![0u8; B * ag_blocks * ags];
    let put32 = |d: &mut Vec<u8>, o: usize, v: u32| d[o..o + 4].copy_from_slice(&v.to_be_bytes());
    let header = if v5 { 56 } else { 16 };
    for ag in 0..ags {
        let base = ag * ag_blocks * B;
        // Superblock (primary and copy).
        d[base..base + 4].copy_from_slice(b"XFSB");
        put32(&mut d, base + 4, B as u32);
        d[base + 8..base + 16].copy_from_slice(&((ag_blocks * ags) as u64).to_be_bytes());
        put32(&mut d, base + 84, ag_blocks as u32);
        put32(&mut d, base + 88, ags as u32);
        d[base + 100..base + 102]
            .copy_from_slice(&(if v5 { 0xb4a5u16 } else { 0xb4a4 }).to_be_bytes());
        d[base + 102..base + 104].copy_from_slice(&(B as u16).to_be_bytes());
        d[base + 108..base + 111].copy_from_slice(b"syn");
        // The AGF: root node at block 4, two levels, 20 free blocks.
        let agf = base + B;
        d[agf..agf + 4].copy_from_slice(b"XAGF");
        put32(&mut d, agf + 4, 1);
        put32(&mut d, agf + 8, ag as u32);
        put32(&mut d, agf + 12, ag_blocks as u32);
        put32(&mut d, agf + 16, 4);
        put32(&mut d, agf + 28, 2);
        put32(&mut d, agf + 52, 20);
        let block = |d: &mut Vec<u8>, bno: usize, level: u16, n: u16| {
            let o = base + bno * B;
            d[o..o + 4].copy_from_slice(if v5 { b"AB3B" } else { b"ABTB" });
            d[o + 4..o + 6].copy_from_slice(&level.to_be_bytes());
            d[o + 6..o + 8].copy_from_slice(&n.to_be_bytes());
            if v5 {
                d[o + 16..o + 24].copy_from_slice(&((o / 512) as u64).to_be_bytes());
                d[o + 48..o + 52].copy_from_slice(&(ag as u32).to_be_bytes());
            }
            o
        };
        let node = block(&mut d, 4, 1, 2);
        let max = (B - header) / 12;
        for (i, (key, ptr)) in [(10u32, 5u32), (20, 6)].into_iter().enumerate() {
            put32(&mut d, node + header + i * 8, key);
            put32(&mut d, node + header + max * 8 + i * 4, ptr);
        }
        for (bno, recs) in [(5, [(10u32, 2u32), (14, 3)]), (6, [(20, 5), (40, 10)])] {
            let leaf = block(&mut d, bno, 0, 2);
            for (i, (start, count)) in recs.into_iter().enumerate() {
                put32(&mut d, leaf + header + i * 8, start);
                put32(&mut d, leaf + header + i * 8 + 4, count);
            }
        }
    }
    d
}

#[test]
fn a_two_level_btree_gives_exactly_the_free_extents_of_its_leaves() {
    for v5 in [false, true] {
        let dev = crate::device::MemDevice::new(synthetic(v5));
        let rep = read(&dev).unwrap();
        assert_eq!(rep.fs_size, 128 * 512);
        assert_eq!(rep.label.as_deref(), Some("syn"));
        let mut free = ExtentMap::new();
        for ag in [0u64, 64] {
            for (s, n) in [(10, 2), (14, 3), (20, 5), (40, 10)] {
                free.push((ag + s) * 512, n * 512);
            }
        }
        free.normalize();
        assert_eq!(rep.used, free.gaps(0, 128 * 512), "v5 {v5}");
        // A node pointing back at itself is refused, not walked for ever.
        let mut looped = synthetic(v5);
        let header = if v5 { 56 } else { 16 };
        let ptr = 4 * 512 + header + (512 - header) / 12 * 8;
        looped[ptr..ptr + 4].copy_from_slice(&4u32.to_be_bytes());
        let err = read(&crate::device::MemDevice::new(looped))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not a free-space btree block of level 0"),
            "{err}"
        );
        // The leaves out of order: refused.
        let mut swapped = synthetic(v5);
        swapped[ptr..ptr + 4].copy_from_slice(&6u32.to_be_bytes());
        swapped[ptr + 4..ptr + 8].copy_from_slice(&5u32.to_be_bytes());
        let err = read(&crate::device::MemDevice::new(swapped))
            .unwrap_err()
            .to_string();
        assert!(err.contains("out of order"), "{err}");
    }
}

/// The fuzz corpus's XFS seeds are this generator's output.
#[test]
fn the_fuzz_corpus_holds_the_synthetic_filesystems() {
    for (v5, name) in [(false, "seed-xfs-v4"), (true, "seed-xfs-v5")] {
        super::super::test_support::pinned_seed(name, &synthetic(v5));
    }
}
