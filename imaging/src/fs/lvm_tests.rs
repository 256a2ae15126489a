//! The LVM2 reader on synthetic PVs: what lvm2 cannot make without device-mapper (thin pools,
//! LVs on other PVs), the text format, wrapped metadata and the refusals. A PV made by Debian's
//! lvm2, with XFS and ext4 LVs, is captured and restored end to end in `tests/tests/volumes.rs`.

use super::*;
use crate::device::MemDevice;
use crate::fs::scan;

const MIB: u64 = 1 << 20;

/// A PV of `mib` MiB with one metadata area holding `text`: label in sector 1, metadata area
/// from 4 KiB, extents from 1 MiB, the uuid `PVUUIDabcd...`.
fn synthetic_pv(mib: u64, text: &str) -> Vec<u8> {
    pv_with(mib * MIB, MIB, text)
}

/// A PV of `len` bytes whose extents start at `data` (the metadata area fills the space from
/// 4 KiB up to there).
fn pv_with(len: u64, data: u64, text: &str) -> Vec<u8> {
    let mut d = vec![0u8; len as usize];
    let l = &mut d[512..1024];
    l[..8].copy_from_slice(b"LABELONE");
    l[8..16].copy_from_slice(&1u64.to_le_bytes());
    l[20..24].copy_from_slice(&32u32.to_le_bytes());
    l[24..32].copy_from_slice(b"LVM2 001");
    l[32..64].copy_from_slice(b"PVUUIDabcdefghijklmnopqrstuvwxyz");
    l[64..72].copy_from_slice(&len.to_le_bytes());
    l[72..80].copy_from_slice(&data.to_le_bytes()); // data area, to the end
    l[104..112].copy_from_slice(&4096u64.to_le_bytes()); // metadata area
    l[112..120].copy_from_slice(&(data - 4096).to_le_bytes());
    l[136..140].copy_from_slice(&1u32.to_le_bytes()); // extension, no boot loader area
    let c = lvm_crc(CRC_INIT, &l[20..]);
    l[16..20].copy_from_slice(&c.to_le_bytes());
    let h = &mut d[4096..4608];
    h[4..20].copy_from_slice(MDA_MAGIC);
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[24..32].copy_from_slice(&4096u64.to_le_bytes());
    h[32..40].copy_from_slice(&(data - 4096).to_le_bytes());
    h[40..48].copy_from_slice(&512u64.to_le_bytes());
    h[48..56].copy_from_slice(&(text.len() as u64).to_le_bytes());
    h[56..60].copy_from_slice(&lvm_crc(CRC_INIT, text.as_bytes()).to_le_bytes());
    let c = lvm_crc(CRC_INIT, &h[4..]);
    h[..4].copy_from_slice(&c.to_le_bytes());
    d[4608..4608 + text.len()].copy_from_slice(text.as_bytes());
    d
}

/// Metadata for an 8 MiB synthetic PV (`pv0`, 7 extents of 1 MiB): a plain LV, a thin pool's
/// hidden data LV and its thin volume, an LV partly on another PV, one wholly there.
pub(crate) const THIN_AND_SPREAD: &str = r#"vg0 {
id = "vg"
seqno = 3
extent_size = 2048 # 1 MiB
physical_volumes {
pv0 { id = "PVUUID-abcd-efgh-ijkl-mnop-qrst-uvwxyz" pe_start = 2048 pe_count = 7 }
pv1 { id = "other" pe_start = 2048 pe_count = 100 }
}
logical_volumes {
plain { status = ["READ", "WRITE", "VISIBLE"] segment_count = 1
  segment1 { start_extent = 0 extent_count = 1 type = "striped" stripe_count = 1 stripes = ["pv0", 0] } }
pool { status = ["READ", "WRITE", "VISIBLE"] segment_count = 1
  segment1 { start_extent = 0 extent_count = 2 type = "thin-pool" metadata = "pool_tmeta" pool = "pool_tdata" } }
pool_tdata { status = ["READ", "WRITE"] segment_count = 1
  segment1 { start_extent = 0 extent_count = 2 type = "striped" stripe_count = 1 stripes = ["pv0", 1] } }
thin { status = ["READ", "WRITE", "VISIBLE"] segment_count = 1
  segment1 { start_extent = 0 extent_count = 4 type = "thin" thin_pool = "pool" device_id = 1 } }
spread { status = ["READ", "WRITE", "VISIBLE"] segment_count = 2
  segment1 { start_extent = 0 extent_count = 1 type = "striped" stripe_count = 1 stripes = ["pv1", 0] }
  segment2 { start_extent = 1 extent_count = 2 type = "striped" stripe_count = 1 stripes = ["pv0", 3] } }
elsewhere { status = ["READ", "WRITE", "VISIBLE"] segment_count = 1
  segment1 { start_extent = 0 extent_count = 5 type = "striped" stripe_count = 1 stripes = ["pv1", 10] } }
}
}
contents = "Text Format Volume Group"
version = 1
"#;

#[test]
fn volumes_that_are_not_filesystems_here_are_raw_copies_by_name() {
    let mut d = synthetic_pv(8, THIN_AND_SPREAD);
    // Bytes in the pool's data (extent 1, at PV byte 2 MiB) and in spread's part (extent 3).
    d[(2 * MIB + 10) as usize] = 1;
    d[(4 * MIB + 10) as usize] = 2;
    // Stale bytes in a free extent (6) are not kept.
    d[(7 * MIB + 10) as usize] = 3;
    let dev = MemDevice::new(d);
    let rep = read(&dev, 512 * 1024, &ScanOptions::default(), &[]).unwrap();
    let v: Vec<(&str, FsKind, u64)> = rep
        .volumes
        .iter()
        .map(|v| (v.name.as_str(), v.kind, v.used_bytes))
        .collect();
    assert_eq!(
        v,
        [
            ("vg0/plain", FsKind::Unknown, 0),
            ("vg0/pool_tdata", FsKind::Unknown, 512 * 1024),
            ("vg0/spread", FsKind::Unknown, 512 * 1024),
        ]
    );
    let w = |i: usize| rep.volumes[i].warning.clone().unwrap();
    assert!(w(0).contains("every byte is zero"), "{}", w(0));
    assert!(w(1).contains("hidden volume of a thin pool"), "{}", w(1));
    assert!(
        w(2).contains("spans physical volume pv1, not on this disk"),
        "{}",
        w(2)
    );
    assert_eq!(rep.volumes[2].extents.total(), 2 * MIB);
    // Label and metadata area (the first MiB), the two raw regions; not the free extent.
    let got: Vec<(u64, u64)> = rep.used.iter().map(|e| (e.start, e.len)).collect();
    assert_eq!(got, [(0, MIB), (2 * MIB, MIB / 2), (4 * MIB, MIB / 2)]);
}

#[test]
fn damaged_labels_and_metadata_are_refused_by_name() {
    let good = synthetic_pv(8, THIN_AND_SPREAD);
    let err = |d: Vec<u8>| {
        read(&MemDevice::new(d), MIB, &ScanOptions::default(), &[])
            .unwrap_err()
            .to_string()
    };
    let mut d = good.clone();
    d[600] ^= 1; // inside the label's crc range
    assert!(err(d).contains("label checksum"));
    let mut d = good.clone();
    d[4096 + 100] ^= 1; // inside the metadata header
    assert!(err(d).contains("metadata header at 4096: checksum"));
    let mut d = good.clone();
    d[4608 + 20] ^= 1; // the text
    assert!(err(d).contains("metadata text checksum"));
    // Valid crcs, but metadata that does not name this PV, or puts an LV past it.
    let e = err(synthetic_pv(
        8,
        &THIN_AND_SPREAD.replace("PVUUID-abcd", "XXXXXX-abcd"),
    ));
    assert!(e.contains("does not list this PV"), "{e}");
    let e = err(synthetic_pv(
        8,
        &THIN_AND_SPREAD.replace("[\"pv0\", 3]", "[\"pv0\", 6]"),
    ));
    assert!(e.contains("past PV pv0's 7"), "{e}");
    let e = err(synthetic_pv(8, &THIN_AND_SPREAD.replace("pv0 {", "pv0 [")));
    assert!(e.contains("metadata text, byte"), "{e}");
    // Through scan: the raw copy with the reason.
    let mut d = good;
    d[600] ^= 1;
    let s = scan(&MemDevice::new(d), MIB).unwrap();
    assert_eq!(s.detected, FsKind::Lvm2);
    assert!(s.warning.unwrap().contains("label checksum"));
}

#[test]
fn the_text_format_parses_lvm_s_own_output() {
    let v = parse(
        "# comment\nvg {\nid = \"a-b\"\nseqno = 12\nflags = []\nx = [\"A\", \"B\"] # trailing\n\
         sub { n = -3 f = 1.5 s = \"q\\\"uote\" }\n}\ncontents = \"Text\"\n\0\0",
    )
    .unwrap();
    let vg = v.get("vg").unwrap();
    assert_eq!(vg.str("id"), Some("a-b"));
    assert_eq!(vg.num("seqno").unwrap(), 12);
    assert!(vg.has_flag("x", "B") && !vg.has_flag("x", "C"));
    let sub = vg.get("sub").unwrap();
    assert_eq!(sub.get("n"), Some(&Value::Num(-3)));
    assert_eq!(sub.str("s"), Some("q\"uote"));
    assert!(parse("vg { a = }").is_err());
    assert!(parse("vg { a = \"open").is_err());
    assert!(parse(&"a { ".repeat(100)).is_err());
}

#[test]
fn metadata_wrapping_round_the_area_end_is_read() {
    // The committed text starts 100 bytes before the area's end and continues after its header.
    let text = THIN_AND_SPREAD;
    let mut d = synthetic_pv(8, text);
    let size = MIB - 4096;
    let off = size - 100;
    d[4608..4608 + text.len()].fill(0);
    let (a, b) = text.as_bytes().split_at(100);
    let at = (4096 + off) as usize;
    d[at..at + 100].copy_from_slice(a);
    d[4608..4608 + b.len()].copy_from_slice(b);
    let h = &mut d[4096..4608];
    h[40..48].copy_from_slice(&off.to_le_bytes());
    let c = lvm_crc(CRC_INIT, &h[4..]);
    h[..4].copy_from_slice(&c.to_le_bytes());
    let rep = read(&MemDevice::new(d), MIB, &ScanOptions::default(), &[]).unwrap();
    assert_eq!(rep.volumes.len(), 3);
}

/// The fuzz seed: a 144 KiB PV (extents of 16 KiB from 64 KiB) with an empty plain LV, a thin
/// pool's data and an LV partly on another PV.
fn seed() -> Vec<u8> {
    let text = THIN_AND_SPREAD
        .replace("extent_size = 2048 # 1 MiB", "extent_size = 32")
        .replace(
            "pe_start = 2048 pe_count = 7",
            "pe_start = 128 pe_count = 5",
        );
    let mut d = pv_with(144 << 10, 64 << 10, &text);
    d[(64 << 10) + 16 * 1024 + 5] = 0xAA;
    d
}

#[test]
fn the_fuzz_corpus_holds_the_synthetic_pv() {
    let d = seed();
    let rep = read(
        &MemDevice::new(d.clone()),
        1 << 14,
        &ScanOptions::default(),
        &[],
    )
    .unwrap();
    assert_eq!(rep.volumes.len(), 3);
    super::super::test_support::pinned_seed("seed-lvm2", &d);
}

#[test]
fn mutated_metadata_text_is_refused_or_read_never_a_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let base = THIN_AND_SPREAD.as_bytes();
    let (mut read_ok, mut refused) = (0, 0);
    for _ in 0..400 {
        let mut t = base.to_vec();
        for _ in 0..rng.gen_range(1..4) {
            let at = rng.gen_range(0..t.len());
            // Digits, brackets, quotes and letters: the characters the format turns on.
            let alphabet = b"0123456789-[]{}\",= #apv\n";
            t[at] = alphabet[rng.gen_range(0..alphabet.len())];
        }
        let text = String::from_utf8_lossy(&t).into_owned();
        // The crcs are made to match: the parser and the checks behind it are what is tried.
        match read(
            &MemDevice::new(synthetic_pv(8, &text)),
            MIB,
            &ScanOptions::default(),
            &[],
        ) {
            Ok(rep) => {
                read_ok += 1;
                assert!(rep.used.is_normalized());
                assert!(rep.used.end() <= 8 * MIB);
            }
            Err(_) => refused += 1,
        }
    }
    assert!(
        read_ok > 0 && refused > 0,
        "{read_ok} read, {refused} refused"
    );
}

/// A striped LV read through its stripes: 64 KiB chunks taken in turn from two devices, a
/// linear segment after them on the first; and the pieces of an LV range on each device.
#[test]
fn striped_segments_interleave_their_devices() {
    let (a, b) = (
        MemDevice::new(vec![0xAA; 4 * MIB as usize]),
        MemDevice::new(vec![0xBB; 4 * MIB as usize]),
    );
    for (dev, tag) in [(&a, 1u8), (&b, 2u8)] {
        let mut d = vec![0u8; 4 * MIB as usize];
        for (i, x) in d.iter_mut().enumerate() {
            *x = tag.wrapping_mul(100).wrapping_add((i / (64 << 10)) as u8);
        }
        dev.write_at(&d, 0).unwrap();
    }
    let lv = LvDevice {
        devs: vec![&a, &b],
        segs: vec![
            Seg {
                lv: 0,
                len: 2 * MIB,
                stripe: 64 << 10,
                areas: vec![(0, 0), (1, MIB)],
            },
            Seg {
                lv: 2 * MIB,
                len: MIB,
                stripe: MIB,
                areas: vec![(0, 2 * MIB)],
            },
        ],
        len: 3 * MIB,
    };
    let mut buf = vec![0u8; 3 * MIB as usize];
    lv.read_at(&mut buf, 0).unwrap();
    // LV chunk c of the striped segment: device c % 2, its chunk c / 2 (b's from 1 MiB on).
    for c in 0..32usize {
        let want = if c % 2 == 0 {
            100 + (c / 2) as u8
        } else {
            200u8.wrapping_add(16 + (c / 2) as u8)
        };
        assert_eq!(buf[c * (64 << 10)], want, "chunk {c}");
    }
    assert_eq!(buf[2 * MIB as usize], 100 + 32);
    let pieces: Vec<(usize, u64, u64)> = lv.pieces(60 << 10, 72 << 10).collect();
    assert_eq!(
        pieces,
        [
            (0, 60 << 10, 4 << 10),
            (1, MIB, 64 << 10),
            (0, 64 << 10, 4 << 10)
        ]
    );
    assert!(lv.read_at(&mut [0u8; 2], 3 * MIB - 1).is_err());
}
