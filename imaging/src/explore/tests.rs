use super::export::{export, Format};
use std::io;
use std::sync::Arc;

use super::qcow2::Qcow2File;
use super::*;
use crate::capture::{capture, CaptureOptions};
use crate::device::{BlockDevice, FileDevice, MemDevice};
use crate::manifest::Manifest;
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

/// A 24 MiB GPT disk: partition 1 noise throughout, partition 2 zeros but for its second
/// MiB, a gap of noise between them (outside every partition), zeros after.
fn disk() -> MemDevice {
    let dev = MemDevice::new(vec![0u8; (24 * MIB) as usize]);
    let mut cur = DevCursor::new(&dev);
    let mut gpt = gptman::GPT::new_from(&mut cur, 512, [7; 16]).unwrap();
    for (i, (start, end)) in [(2048u64, 8191u64), (10240, 30719)].into_iter().enumerate() {
        gpt[i as u32 + 1] = gptman::GPTPartitionEntry {
            partition_type_guid: [0x11; 16],
            unique_partition_guid: [i as u8 + 1; 16],
            starting_lba: start,
            ending_lba: end,
            attribute_bits: 0,
            partition_name: "p".into(),
        };
    }
    gpt.write_into(&mut cur).unwrap();
    gptman::GPT::write_protective_mbr_into(&mut cur, 512).unwrap();
    dev.write_at(&noise(6144 * 512, 1), 2048 * 512).unwrap();
    dev.write_at(&noise(100_000, 2), 8192 * 512 + 12345)
        .unwrap();
    dev.write_at(&noise(MIB, 3), 10240 * 512 + MIB).unwrap();
    dev
}

fn image(dev: &MemDevice, store: &Store) -> Manifest {
    let mut o = CaptureOptions::new("x");
    o.chunk_size = MIB;
    o.check_space = false;
    capture(dev, "mem", store, &o, &NoProgress)
        .unwrap()
        .manifest
}

fn all(d: &dyn BlockDevice) -> Vec<u8> {
    let mut v = vec![0u8; d.len() as usize];
    d.read_at(&mut v, 0).unwrap();
    v
}

#[test]
fn an_image_reads_as_what_a_restore_onto_zeros_writes_at_any_offset() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let src = disk();
    let m = image(&src, &store);
    let restored = MemDevice::new(vec![0u8; m.disk_size as usize]);
    restore("x", &m, &store, &restored, 2, &NoProgress).unwrap();
    let want = restored.to_vec();
    // The source itself, here, since every byte of it is stored (raw copies).
    assert_eq!(want, src.to_vec());

    let d = ImageDisk::new(m.clone(), store.clone(), 2 * MIB);
    assert_eq!(d.len(), m.disk_size);
    assert_eq!(all(&d), want, "the whole disk");
    // Reads of every size straddling chunk, partition and GPT-backup boundaries.
    let mut x = 5u64;
    for _ in 0..300 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let len = (x >> 40) % (3 * MIB) + 1;
        let off = (x >> 8) % (m.disk_size - len + 1);
        let mut buf = vec![0xEEu8; len as usize];
        d.read_at(&mut buf, off).unwrap();
        assert!(
            buf == want[off as usize..(off + len) as usize],
            "{len} bytes at {off}"
        );
    }
    let mut past = [0u8; 2];
    assert!(d.read_at(&mut past, m.disk_size - 1).is_err());
    assert!(d.write_at(&[1], 0).is_err(), "read-only");
    // The cache bounded the store reads: a chunk is not read again while it is cached.
    let c = d.read_counts();
    assert!(c.cache_hits > 0 && c.chunk_reads > 0, "{c:?}");
}

#[test]
fn a_damaged_chunk_is_an_error_naming_it_never_other_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let m = image(&disk(), &store);
    let (a, c) = m.chunks().find(|(a, _)| a.offset == 2048 * 512).unwrap();
    let at = a.offset + c.index * m.chunk_size;
    let f = store.chunk_file(&c.hash).unwrap();
    let mut z = std::fs::read(&f).unwrap();
    let n = z.len();
    z[n / 2] ^= 0x40;
    std::fs::write(&f, z).unwrap();
    let d = ImageDisk::new(m.clone(), store, MIB);
    let mut buf = vec![0u8; 4096];
    let e = d.read_at(&mut buf, at + 4096).unwrap_err();
    assert!(e.to_string().contains(&c.hash.to_hex()), "{e}");
}

#[test]
fn pieces_are_the_disk_and_each_partition() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let m = image(&disk(), &store);
    let p = pieces(&m);
    let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["disk", "p1", "p2"]);
    assert_eq!((p[2].offset, p[2].len), (10240 * 512, 20480 * 512));
    assert_eq!(piece(&m, "2"), Some(p[2].clone()));
    assert_eq!(piece(&m, "p9"), None);
    assert_eq!(piece(&m, ""), None);
}

#[test]
fn exports_raw_and_qcow2_read_back_as_the_disk_and_refuse_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s")).unwrap();
    let m = image(&disk(), &store);
    let d = ImageDisk::new(m.clone(), store, 4 * MIB);
    let want = all(&d);

    let raw = dir.path().join("d.raw");
    let r = export(&d, &raw, Format::Raw, 2, &NoProgress).unwrap();
    assert_eq!(std::fs::read(&raw).unwrap(), want);
    assert_eq!(r.file_size, m.disk_size);
    assert!(r.data_bytes < m.disk_size, "zeros are holes: {r:?}");

    let q = dir.path().join("d.qcow2");
    let r = export(&d, &q, Format::Qcow2, 3, &NoProgress).unwrap();
    assert_eq!(std::fs::metadata(&q).unwrap().len(), r.file_size);
    let back = Qcow2File::open(&q).unwrap();
    assert_eq!(back.len(), m.disk_size);
    assert_eq!(all(&back), want);
    assert!(r.file_size < m.disk_size, "{r:?}");

    let e = export(&d, &q, Format::Qcow2, 1, &NoProgress).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    assert_eq!(
        all(&Qcow2File::open(&q).unwrap()),
        want,
        "the existing file is untouched"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 3, "no temporary file left: {left:?}");
    // A raw file reads back through FileDevice too (what `import` takes).
    assert_eq!(all(&FileDevice::open_read(&raw).unwrap()), want);
}

#[test]
fn a_truncated_or_foreign_qcow2_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    std::fs::write(&p, b"not an image at all, just some text here............................................................................").unwrap();
    let e = Qcow2File::open(&p).err().unwrap();
    assert!(e.to_string().contains("not a qcow2"), "{e}");

    let store = Store::open(&dir.path().join("s")).unwrap();
    let m = image(&disk(), &store);
    let d = ImageDisk::new(m, store, 4 * MIB);
    let q = dir.path().join("d.qcow2");
    export(&d, &q, Format::Qcow2, 1, &NoProgress).unwrap();
    let bytes = std::fs::read(&q).unwrap();
    // Cut inside the tables at the end (refcounts, L1 table, an L2 table).
    std::fs::write(&q, &bytes[..bytes.len() - 4 * 65536]).unwrap();
    let r = Qcow2File::open(&q).and_then(|f| {
        let mut v = vec![0u8; f.len() as usize];
        f.read_at(&mut v, 0)
    });
    let e = r.unwrap_err();
    assert!(e.to_string().contains("qcow2"), "{e}");
}

#[test]
fn a_logical_volume_reads_its_runs_in_its_own_order_and_its_stripes_in_turn() {
    let disk = Arc::new(MemDevice::new(noise(64 * 1024, 9)));
    let seg = |at, len, stripe, areas: Vec<u64>| VolumeSegment {
        at,
        len,
        stripe,
        areas,
    };
    // 8 KiB linear from disk 40 KiB, then 16 KiB striped 4 KiB over disk 0 and disk 20 KiB.
    let lv = Piece {
        name: "vg-lv".into(),
        offset: 0,
        len: 24 << 10,
        fs: None,
        label: None,
        segments: vec![
            seg(0, 8 << 10, 8 << 10, vec![40 << 10]),
            seg(8 << 10, 16 << 10, 4 << 10, vec![0, 20 << 10]),
        ],
    };
    let d = disk.to_vec();
    let mut want = Vec::new();
    want.extend_from_slice(&d[40 << 10..48 << 10]);
    for k in 0..4usize {
        let base = if k % 2 == 0 { 0 } else { 20 << 10 } + (k / 2) * 4096;
        want.extend_from_slice(&d[base..base + 4096]);
    }
    let dev = PieceDevice {
        disk: disk.clone(),
        piece: lv,
    };
    assert_eq!(all(&dev), want);
    let mut buf = vec![0u8; 5000];
    dev.read_at(&mut buf, 7000).unwrap();
    assert_eq!(buf, want[7000..12000]);
    assert!(dev.read_at(&mut buf, (24 << 10) - 10).is_err());
    assert_eq!(dm_name("my-vg/lv_1-a"), "my--vg-lv_1--a");
}
