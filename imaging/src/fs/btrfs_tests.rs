//! The btrfs reader against filesystems made by Debian's mkfs.btrfs (files placed with
//! `--rootdir`): every byte outside the map is overwritten, and `btrfs check` and `btrfs restore`
//! (both in userspace, no mount) must still find a sound filesystem with the same files. Then
//! its refusals: several devices, a pending log, damaged tree blocks, DUP's second copy.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::device::{BlockDevice, FileDevice, MemDevice};
use crate::fs::scan;
use crate::fs::test_support::{run, scribble_outside};

/// btrfs-progs present, or (outside CI) `None` and the test says it skipped.
fn tools() -> Option<()> {
    super::super::test_support::have_tools(&["mkfs.btrfs", "btrfs"]).then_some(())
}

/// The files put into each test filesystem, in `dir/root`.
fn files(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    for (i, size) in [1usize, 3000, 70_000, 300_000, 3 << 20].iter().enumerate() {
        let data: Vec<u8> = (0..*size)
            .map(|j| (j * 13 + i * 7 + j / 511) as u8)
            .collect();
        std::fs::write(root.join(format!("f{i}")), &data).unwrap();
        std::fs::write(root.join("sub").join(format!("g{i}")), &data[..size / 2]).unwrap();
    }
    root
}

/// A btrfs image of `mib` MiB over stale bytes (0xEE everywhere, kept: no discard) holding
/// [`files`]; `args` go to mkfs.btrfs.
fn make(dir: &Path, mib: u64, args: &[&str]) -> PathBuf {
    let root = files(dir);
    let img = dir.join("btrfs.img");
    std::fs::write(&img, vec![0xEEu8; (mib << 20) as usize]).unwrap();
    run(Command::new("mkfs.btrfs")
        .args(["-q", "-f", "-K", "--rootdir"])
        .arg(&root)
        .args(args)
        .arg(&img));
    img
}

/// `btrfs check` passes on `img` and `btrfs restore` gives back [`files`] exactly.
fn sound_with_files(dir: &Path, img: &Path) {
    run(Command::new("btrfs").args(["check", "--readonly"]).arg(img));
    let out = dir.join("restored");
    std::fs::create_dir_all(&out).unwrap();
    run(Command::new("btrfs").arg("restore").arg(img).arg(&out));
    let root = dir.join("root");
    let mut n = 0;
    for sub in ["", "sub"] {
        for e in std::fs::read_dir(root.join(sub)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                let name = Path::new(sub).join(e.file_name());
                assert!(
                    std::fs::read(root.join(&name)).unwrap()
                        == std::fs::read(out.join(&name)).unwrap(),
                    "{} differs after restore",
                    name.display()
                );
                n += 1;
            }
        }
    }
    assert_eq!(n, 10);
}

fn check(args: &[&str]) {
    if tools().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = make(dir.path(), 256, args);
    let dev = FileDevice::open_read(&img).unwrap();
    let rep = read(&dev).unwrap();
    assert_eq!(rep.fs_size, dev.len());
    assert!(rep.used.is_normalized());
    // The files (5.2 MiB) are in; most of the 256 MiB is not.
    let used = rep.used.total();
    assert!(
        used > 5 << 20 && used < 64 << 20,
        "{used} bytes used of a 256 MiB filesystem"
    );
    let s = scan(&dev, 4 << 20).unwrap();
    assert!(s.warning.is_none(), "{:?}", s.warning);
    assert_eq!(s.detected, FsKind::Btrfs);
    drop(dev);
    scribble_outside(&img, &rep.used);
    sound_with_files(dir.path(), &img);
}

#[test]
fn default_profiles_metadata_dup() {
    check(&[]);
}

#[test]
fn single_profiles_small_nodes() {
    check(&["-m", "single", "-d", "single", "--nodesize", "4096"]);
}

#[test]
fn without_skinny_metadata() {
    // Metadata recorded as EXTENT_ITEMs, and mixed data and metadata groups.
    check(&["-O", "^skinny-metadata", "--mixed"]);
}

#[test]
fn a_second_device_is_refused_by_name() {
    if tools().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    for p in [&a, &b] {
        std::fs::File::create(p)
            .unwrap()
            .set_len(200 << 20)
            .unwrap();
    }
    run(Command::new("mkfs.btrfs")
        .args(["-q", "-f", "-K"])
        .arg(&a)
        .arg(&b));
    let dev = FileDevice::open_read(&a).unwrap();
    let e = read(&dev).unwrap_err().to_string();
    assert!(e.contains("2 devices"), "{e}");
    let s = scan(&dev, 4 << 20).unwrap();
    assert_eq!(s.detected, FsKind::Btrfs);
    assert!(
        s.warning
            .as_deref()
            .is_some_and(|w| w.contains("2 devices")),
        "{:?}",
        s.warning
    );
}

/// Rewrites the superblock field at `at` to `v` and fixes the superblock's checksum.
fn patch_super(img: &Path, at: usize, v: u64) {
    let mut b = std::fs::read(img).unwrap();
    let sb = &mut b[0x1_0000..0x1_1000];
    sb[at..at + 8].copy_from_slice(&v.to_le_bytes());
    let c = !crc32c(!0, &sb[0x20..]);
    sb[..4].copy_from_slice(&c.to_le_bytes());
    std::fs::write(img, b).unwrap();
}

#[test]
fn refusals_name_what_is_wrong() {
    if tools().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = make(dir.path(), 128, &["-m", "single"]);
    let pristine = std::fs::read(&img).unwrap();
    let err = |img: &Path| {
        read(&FileDevice::open_read(img).unwrap())
            .unwrap_err()
            .to_string()
    };

    patch_super(&img, 0x60, 0x123_4000);
    assert!(err(&img).contains("log tree"), "{}", err(&img));

    std::fs::write(&img, &pristine).unwrap();
    patch_super(&img, 0x78, le64(&pristine[0x1_0000..], 0x78) + 4096);
    assert!(err(&img).contains("the superblock says"), "{}", err(&img));

    // A superblock byte changed without its checksum.
    let mut b = pristine.clone();
    b[0x1_0000 + 0x100] ^= 1;
    std::fs::write(&img, &b).unwrap();
    assert!(err(&img).contains("superblock checksum"), "{}", err(&img));

    // The extent tree's root block damaged: with single metadata there is no other copy.
    std::fs::write(&img, &pristine).unwrap();
    let dev = FileDevice::open_read(&img).unwrap();
    let at = extent_root_place(&dev);
    drop(dev);
    let mut b = pristine.clone();
    b[at as usize + 0x200] ^= 0xFF;
    std::fs::write(&img, &b).unwrap();
    let e = err(&img);
    assert!(e.contains("checksum mismatch"), "{e}");

    // Not btrfs at all.
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    assert!(err(&img).contains("too small") || err(&img).contains("no btrfs"));
}

/// Device offsets of the extent tree's root block copies.
fn extent_root_copies(dev: &dyn BlockDevice) -> Vec<u64> {
    let (mut fs, sb) = open(dev).unwrap();
    let (root, _) = extent_root(&mut fs, &sb).unwrap();
    let (chunk, off) = fs.locate(root, 1).unwrap();
    chunk.copies.iter().map(|c| c + off).collect()
}

fn extent_root_place(dev: &dyn BlockDevice) -> u64 {
    extent_root_copies(dev)[0]
}

#[test]
fn dup_metadata_survives_one_damaged_copy_not_two() {
    if tools().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = make(dir.path(), 128, &["-m", "dup"]);
    let dev = FileDevice::open_read(&img).unwrap();
    let copies = extent_root_copies(&dev);
    let good = read(&dev).unwrap();
    drop(dev);
    assert_eq!(copies.len(), 2, "DUP keeps two copies");
    let mut b = std::fs::read(&img).unwrap();
    b[copies[0] as usize + 0x300] ^= 0xFF;
    std::fs::write(&img, &b).unwrap();
    let rep = read(&FileDevice::open_read(&img).unwrap()).unwrap();
    assert_eq!(rep.used, good.used);
    b[copies[1] as usize + 0x300] ^= 0xFF;
    std::fs::write(&img, &b).unwrap();
    let e = read(&FileDevice::open_read(&img).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("checksum mismatch"), "{e}");
}

/// A minimal btrfs built by hand, 1 MiB and 64 KiB: one mixed chunk (logical 1 MiB, 48 KiB
/// at device byte 1 MiB, after the area btrfs leaves to boot loaders) holding the chunk tree, the root tree and the extent tree (one leaf, or when
/// `deep` a node over two leaves), and one 8 KiB data extent. Returns the image and the device
/// ranges that must be used.
fn synthetic(deep: bool) -> (Vec<u8>, Vec<(u64, u64)>) {
    const L: u64 = 0x10_0000;
    const PHYS: u64 = 0x10_0000;
    const SIZE: u64 = 0x11_0000;
    const NODE: usize = 4096;
    let fsid = [0x42u8; 16];
    let mut d = vec![0u8; SIZE as usize];
    let chunk = {
        let mut c = vec![0u8; 80];
        c[0..8].copy_from_slice(&0xC000u64.to_le_bytes());
        c[8..16].copy_from_slice(&2u64.to_le_bytes());
        c[16..24].copy_from_slice(&0x1_0000u64.to_le_bytes());
        c[24..32].copy_from_slice(&7u64.to_le_bytes()); // data | system | metadata
        c[40..44].copy_from_slice(&4096u32.to_le_bytes());
        c[44..46].copy_from_slice(&1u16.to_le_bytes());
        c[48..56].copy_from_slice(&1u64.to_le_bytes());
        c[56..64].copy_from_slice(&PHYS.to_le_bytes());
        c
    };
    let key = |objectid: u64, kind: u8, offset: u64| {
        let mut k = objectid.to_le_bytes().to_vec();
        k.push(kind);
        k.extend(offset.to_le_bytes());
        k
    };
    // A tree block at logical `at`: a leaf of (key, data) items or a node of (key, child).
    let mut put = |at: u64, level: u8, leaf: &[(Vec<u8>, Vec<u8>)], node: &[(Vec<u8>, u64)]| {
        let mut b = vec![0u8; NODE];
        b[0x20..0x30].copy_from_slice(&fsid);
        b[0x30..0x38].copy_from_slice(&at.to_le_bytes());
        b[0x64] = level;
        if level == 0 {
            b[0x60..0x64].copy_from_slice(&(leaf.len() as u32).to_le_bytes());
            let mut end = NODE - HEADER;
            for (i, (k, data)) in leaf.iter().enumerate() {
                end -= data.len();
                let o = HEADER + i * ITEM;
                b[o..o + 17].copy_from_slice(k);
                b[o + 17..o + 21].copy_from_slice(&(end as u32).to_le_bytes());
                b[o + 21..o + 25].copy_from_slice(&(data.len() as u32).to_le_bytes());
                b[HEADER + end..HEADER + end + data.len()].copy_from_slice(data);
            }
        } else {
            b[0x60..0x64].copy_from_slice(&(node.len() as u32).to_le_bytes());
            for (i, (k, child)) in node.iter().enumerate() {
                let o = HEADER + i * KEY_PTR;
                b[o..o + 17].copy_from_slice(k);
                b[o + 17..o + 25].copy_from_slice(&child.to_le_bytes());
            }
        }
        let c = !crc32c(!0, &b[0x20..]);
        b[..4].copy_from_slice(&c.to_le_bytes());
        let p = (PHYS + at - L) as usize;
        d[p..p + NODE].copy_from_slice(&b);
    };
    let blocks: Vec<u64> = (0..if deep { 5 } else { 3 })
        .map(|i| L + i * 0x1000)
        .collect();
    put(L, 0, &[(key(256, CHUNK_ITEM, L), chunk.clone())], &[]);
    let mut root_item = vec![0u8; 439];
    root_item[176..184].copy_from_slice(&(L + 0x2000).to_le_bytes());
    root_item[238] = u8::from(deep);
    put(
        L + 0x1000,
        0,
        &[(key(EXTENT_TREE, ROOT_ITEM, 0), root_item)],
        &[],
    );
    let data_at = L + 0x8000;
    let mut items: Vec<(Vec<u8>, Vec<u8>)> = blocks
        .iter()
        .map(|&b| (key(b, METADATA_ITEM, 0), vec![0u8; 33]))
        .collect();
    items.push((key(data_at, EXTENT_ITEM, 0x2000), vec![0u8; 24]));
    if deep {
        let (a, b) = items.split_at(3);
        put(
            L + 0x2000,
            1,
            &[],
            &[(a[0].0.clone(), L + 0x3000), (b[0].0.clone(), L + 0x4000)],
        );
        put(L + 0x3000, 0, a, &[]);
        put(L + 0x4000, 0, b, &[]);
    } else {
        put(L + 0x2000, 0, &items, &[]);
    }
    let data = (PHYS + data_at - L) as usize;
    d[data..data + 0x2000].fill(0xDA);

    let sb = &mut d[0x1_0000..0x1_1000];
    sb[0x20..0x30].copy_from_slice(&fsid);
    sb[0x30..0x38].copy_from_slice(&0x1_0000u64.to_le_bytes());
    sb[0x40..0x48].copy_from_slice(b"_BHRfS_M");
    sb[0x50..0x58].copy_from_slice(&(L + 0x1000).to_le_bytes());
    sb[0x58..0x60].copy_from_slice(&L.to_le_bytes());
    sb[0x70..0x78].copy_from_slice(&SIZE.to_le_bytes());
    let bytes_used = blocks.len() as u64 * 0x1000 + 0x2000;
    sb[0x78..0x80].copy_from_slice(&bytes_used.to_le_bytes());
    sb[0x88..0x90].copy_from_slice(&1u64.to_le_bytes());
    sb[0x90..0x94].copy_from_slice(&4096u32.to_le_bytes());
    sb[0x94..0x98].copy_from_slice(&4096u32.to_le_bytes());
    sb[0xA0..0xA4].copy_from_slice(&97u32.to_le_bytes());
    sb[0xC9..0xD1].copy_from_slice(&1u64.to_le_bytes());
    sb[0xD1..0xD9].copy_from_slice(&SIZE.to_le_bytes());
    sb[0x12B..0x12F].copy_from_slice(b"syn\0");
    sb[0x32B..0x33C].copy_from_slice(&key(256, CHUNK_ITEM, L));
    sb[0x33C..0x33C + 80].copy_from_slice(&chunk);
    let c = !crc32c(!0, &sb[0x20..]);
    sb[..4].copy_from_slice(&c.to_le_bytes());
    let want = vec![
        (0, PHYS + blocks.len() as u64 * 0x1000),
        (data as u64, 0x2000),
    ];
    (d, want)
}

#[test]
fn a_hand_built_filesystem_maps_exactly_one_level_or_two() {
    for deep in [false, true] {
        let (d, want) = synthetic(deep);
        let rep = read(&MemDevice::new(d.clone())).unwrap();
        let got: Vec<(u64, u64)> = rep.used.iter().map(|e| (e.start, e.len)).collect();
        assert_eq!(got, want, "deep: {deep}");
        assert_eq!(rep.label.as_deref(), Some("syn"));
        // The extent tree reached twice (a node pointing at the same leaf) is refused.
        if deep {
            let mut d = d;
            let node = 0x10_0000 + 0x2000;
            let second_ptr = node + HEADER + KEY_PTR + 17;
            let first = d[node + HEADER + 17..node + HEADER + 25].to_vec();
            d[second_ptr..second_ptr + 8].copy_from_slice(&first);
            let c = !crc32c(!0, &d[node + 0x20..node + 4096]);
            d[node..node + 4].copy_from_slice(&c.to_le_bytes());
            let e = read(&MemDevice::new(d)).unwrap_err().to_string();
            assert!(e.contains("reached twice"), "{e}");
        }
    }
}

#[test]
fn the_fuzz_corpus_holds_the_synthetic_filesystems() {
    for (deep, name) in [(false, "seed-btrfs"), (true, "seed-btrfs-deep")] {
        super::super::test_support::pinned_seed(name, &synthetic(deep).0);
    }
}
