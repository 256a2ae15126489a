//! Layout planning and moving, on disks in memory (growing filesystems needs their tools and
//! root: tests/tests/layouts.rs).

use super::*;
use crate::capture::{capture, CaptureOptions};
use crate::device::MemDevice;
use crate::manifest::FsInfo;
use crate::progress::NoProgress;
use crate::restore::restore;
use crate::store::Store;
use crate::table::DevCursor;

const MIB: u64 = 1 << 20;

fn noise(len: u64, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

/// A 16 MiB GPT disk with partitions of noise at MiB 1..4, 4..10 and 10..15.
fn gpt_disk() -> MemDevice {
    let dev = MemDevice::new(vec![0u8; (16 * MIB) as usize]);
    let mut cur = DevCursor::new(&dev);
    let mut gpt = gptman::GPT::new_from(&mut cur, 512, [7; 16]).unwrap();
    for (i, (start, end)) in [(2048u64, 8191u64), (8192, 20479), (20480, 30719)]
        .into_iter()
        .enumerate()
    {
        gpt[i as u32 + 1] = gptman::GPTPartitionEntry {
            partition_type_guid: [0x11; 16],
            unique_partition_guid: [i as u8 + 1; 16],
            starting_lba: start,
            ending_lba: end,
            attribute_bits: 0,
            partition_name: "p".into(),
        };
        dev.write_at(&noise((end - start + 1) * 512, i as u32), start * 512)
            .unwrap();
    }
    gpt.write_into(&mut cur).unwrap();
    gptman::GPT::write_protective_mbr_into(&mut cur, 512).unwrap();
    dev
}

fn image(dev: &MemDevice, store: &Store) -> Manifest {
    let mut o = CaptureOptions::new("g");
    o.chunk_size = MIB;
    o.check_space = false;
    capture(dev, "mem", store, &o, &NoProgress)
        .unwrap()
        .manifest
}

/// Pretends area `i` holds a filesystem of `kind` read through its allocation data.
fn as_fs(m: &mut Manifest, i: usize, kind: FsKind) {
    let a = &mut m.areas[i];
    a.fs = Some(FsInfo {
        kind,
        detected: kind,
        block_size: 4096,
        fs_size: a.len,
        label: None,
        warning: None,
        volumes: Vec::new(),
    });
}

fn extents(r: &Relayout) -> Vec<(u32, u64, u64)> {
    r.parts
        .iter()
        .map(|p| (p.number, p.new_start / MIB, p.new_size / MIB))
        .collect()
}

#[test]
fn layout_modes_parse_and_print() {
    for m in [LayoutMode::Grow, LayoutMode::Keep, LayoutMode::Proportional] {
        assert_eq!(m.as_str().parse::<LayoutMode>(), Ok(m));
    }
    let e = "shrink".parse::<LayoutMode>().unwrap_err();
    assert!(e.contains("grow, keep or proportional"), "{e}");
}

#[test]
fn grow_extends_only_a_last_partition_whose_filesystem_can_grow() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut m = image(&gpt_disk(), &store);

    // Raw copies keep their size, and the plan says so.
    let r = plan(&m, 32 * MIB, LayoutMode::Grow).unwrap();
    assert!(r.is_identity());
    assert_eq!(r.notes.len(), 1, "{:?}", r.notes);
    assert!(
        r.notes[0].starts_with("partition 3 keeps its size"),
        "{:?}",
        r.notes
    );

    as_fs(&mut m, 3, FsKind::Ext4);
    let r = plan(&m, 32 * MIB, LayoutMode::Grow).unwrap();
    // To the last MiB boundary before the 33-sector backup GPT: MiB 31.
    assert_eq!(extents(&r), vec![(1, 1, 3), (2, 4, 6), (3, 10, 21)]);
    assert!(r.notes.is_empty());

    // A FAT32 grows (drover grows it itself); a FAT16 keeps its size; so does everything on
    // a same-size or smaller target, or kept.
    as_fs(&mut m, 3, FsKind::Fat32);
    let r = plan(&m, 32 * MIB, LayoutMode::Grow).unwrap();
    assert_eq!(extents(&r), vec![(1, 1, 3), (2, 4, 6), (3, 10, 21)]);
    as_fs(&mut m, 3, FsKind::Fat16);
    let r = plan(&m, 32 * MIB, LayoutMode::Grow).unwrap();
    assert!(r.is_identity());
    assert!(
        r.notes[0].contains("its fat16 filesystem cannot be grown"),
        "{:?}",
        r.notes
    );
    as_fs(&mut m, 3, FsKind::Xfs);
    for (size, mode) in [
        (16 * MIB, LayoutMode::Grow),
        (15 * MIB + 33 * 512, LayoutMode::Grow),
        (32 * MIB, LayoutMode::Keep),
    ] {
        assert!(plan(&m, size, mode).unwrap().is_identity(), "{size} {mode}");
    }
}

#[test]
fn a_filesystem_without_a_table_fills_its_whole_larger_device() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut m = image(&MemDevice::new(noise(3 * MIB, 5)), &store);
    assert_eq!(m.table.kind, TableKind::None);
    as_fs(&mut m, 0, FsKind::Xfs);
    let size = 7 * MIB + 4096;
    let r = plan(&m, size, LayoutMode::Grow).unwrap();
    assert_eq!((r.parts[0].number, r.parts[0].new_size), (0, size));
    let placed = r.placed(&m);
    assert_eq!((placed.areas[0].len, placed.disk_size), (size, size));
    assert_eq!(placed.areas[0].fs.as_ref().unwrap().fs_size, size);
}

#[test]
fn proportional_scales_starts_and_grows_what_can_grow() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut m = image(&gpt_disk(), &store);
    as_fs(&mut m, 2, FsKind::Ntfs);
    as_fs(&mut m, 3, FsKind::Btrfs);
    let r = plan(&m, 64 * MIB, LayoutMode::Proportional).unwrap();
    // The span from the first partition to the usable end, MiB 1..~15.98, becomes 1..63:
    // 4.14 times. Partition 1 (raw) keeps its start and size; 2 starts at its scaled start
    // rounded up (MiB 13.4 -> 14) and ends at its scaled end rounded down (38.2 -> 38); 3
    // starts at 38.2 rounded up and reaches the aligned end.
    assert_eq!(extents(&r), vec![(1, 1, 3), (2, 14, 24), (3, 39, 24)]);
    assert_eq!(r.notes.len(), 1);
    for w in r.parts.windows(2) {
        assert!(w[0].new_start + w[0].new_size <= w[1].new_start, "{r:?}");
    }
}

#[test]
fn proportional_moves_partitions_and_rewrites_the_gpt() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let src = gpt_disk();
    let m = image(&src, &store);
    let t = MemDevice::new(noise(48 * MIB, 99));
    let r = plan(&m, t.len(), LayoutMode::Proportional).unwrap();
    assert!(r.parts.iter().skip(1).all(Placed::moves), "{r:?}");
    assert!(
        r.parts.iter().all(|p| !p.grows()),
        "raw copies keep their size"
    );
    restore("g", &m, &store, &t, 2, &NoProgress).unwrap();
    let done = apply(Path::new("/nonexistent"), &t, &m, &r).unwrap();
    assert_eq!(
        done.iter().filter(|l| l.contains("moved")).count(),
        2,
        "{done:?}"
    );

    let gpt = gptman::GPT::read_from(&mut DevCursor::new(&t), 512).unwrap();
    assert_eq!(gpt.header.backup_lba, 48 * MIB / 512 - 1);
    let (a, b) = (src.to_vec(), t.to_vec());
    for p in &r.parts {
        let e = &gpt[p.number];
        assert_eq!(
            (e.starting_lba * 512, (e.ending_lba + 1) * 512),
            (p.new_start, p.new_start + p.new_size)
        );
        let (s, n) = (p.start as usize, p.size as usize);
        assert!(
            a[s..s + n] == b[p.new_start as usize..p.new_start as usize + n],
            "partition {} holds its bytes at its new place",
            p.number
        );
    }
    // A moved chunk that reads back wrong is caught: damage partition 3 at its old place
    // after a fresh restore, so the move carries the damage.
    let t = MemDevice::new(vec![0; (48 * MIB) as usize]);
    restore("g", &m, &store, &t, 2, &NoProgress).unwrap();
    t.write_at(&[0x5A; 16], r.parts[2].start + MIB).unwrap();
    let e = apply(Path::new("/nonexistent"), &t, &m, &r).unwrap_err();
    assert!(
        format!("{e:#}").contains("reads back wrong after the move"),
        "{e:#}"
    );
}

#[test]
fn proportional_refuses_to_move_logical_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut m = image(&gpt_disk(), &store);
    m.table.kind = TableKind::Mbr;
    m.table.partitions[2].number = 5;
    m.areas[3].kind = AreaKind::Partition { number: 5 };
    let e = plan(&m, 64 * MIB, LayoutMode::Proportional).unwrap_err();
    assert!(matches!(e, LayoutError::MovesLogical(5)), "{e}");
    assert!(e.to_string().contains("use --layout grow or keep"), "{e}");
    // Growing it in place is fine.
    as_fs(&mut m, 3, FsKind::Ext4);
    let r = plan(&m, 64 * MIB, LayoutMode::Grow).unwrap();
    assert_eq!(r.parts[2].new_start, r.parts[2].start);
    assert!(r.parts[2].grows());
}

#[test]
fn a_moved_ntfs_gets_its_new_start_in_both_boot_sectors() {
    let dev = MemDevice::new(vec![0u8; (8 * MIB) as usize]);
    let p = Placed {
        number: 2,
        fs: Some(FsKind::Ntfs),
        start: MIB,
        size: 2 * MIB,
        new_start: 4 * MIB,
        new_size: 2 * MIB,
    };
    let mut boot = vec![0u8; 512];
    boot[0x0B..0x0D].copy_from_slice(&512u16.to_le_bytes());
    boot[0x1C..0x20].copy_from_slice(&2048u32.to_le_bytes());
    let total = 2 * MIB / 512 - 1;
    boot[0x28..0x30].copy_from_slice(&total.to_le_bytes());
    dev.write_at(&boot, p.new_start).unwrap();
    dev.write_at(&boot, p.new_start + total * 512).unwrap();
    fix_hidden_sectors(&dev, &p, 512).unwrap();
    for at in [p.new_start, p.new_start + total * 512] {
        let s = read_vec(&dev, at, 512).unwrap();
        assert_eq!(fs::le32(&s, 0x1C), 8192, "at {at}");
    }
    // A boot sector that did not hold the old start (a filesystem made in a file) is left.
    let mut other = boot.clone();
    other[0x1C..0x20].copy_from_slice(&0u32.to_le_bytes());
    dev.write_at(&other, p.new_start).unwrap();
    fix_hidden_sectors(&dev, &p, 512).unwrap();
    assert_eq!(
        fs::le32(&read_vec(&dev, p.new_start, 512).unwrap(), 0x1C),
        0
    );
}
