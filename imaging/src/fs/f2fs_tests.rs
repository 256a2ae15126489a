//! The f2fs reader against filesystems made by Debian's mkfs.f2fs and filled by sload.f2fs
//! (this kernel has no f2fs driver): every byte outside the map is overwritten, and fsck.f2fs
//! must still pass and dump.f2fs give back the same files; the used bytes are measured against
//! partclone.f2fs's. Then a hand-built filesystem (the fuzz seed) for the checkpoint choice,
//! the SIT journal and the refusals.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::*;
use crate::device::{FileDevice, MemDevice};
use crate::fs::scan;
use crate::fs::test_support::{partclone_copied, run};

fn tools() -> bool {
    super::super::test_support::have_tools(&[
        "mkfs.f2fs",
        "sload.f2fs",
        "fsck.f2fs",
        "dump.f2fs",
        "partclone.f2fs",
    ])
}

/// Files of assorted sizes in `dir/root`, flat (dump.f2fs gives files back by name only).
fn files(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    for (i, size) in [0usize, 1, 3000, 70_000, 300_000, 3 << 20, 9 << 20]
        .iter()
        .enumerate()
    {
        let data: Vec<u8> = (0..*size)
            .map(|j| (j * 31 + i * 7 + j / 4093) as u8)
            .collect();
        std::fs::write(root.join(format!("f{i}")), &data).unwrap();
    }
    std::fs::write(root.join("zeros"), vec![0u8; 2 << 20]).unwrap();
    root
}

/// A 256 MiB f2fs image over stale bytes (0xEE, kept: no discard), made with `features`,
/// holding [`files`] when `fill`.
fn make(dir: &Path, features: &[&str], fill: bool) -> PathBuf {
    let img = dir.join("f2fs.img");
    std::fs::write(&img, vec![0xEEu8; 256 << 20]).unwrap();
    let mut mkfs = Command::new("mkfs.f2fs");
    mkfs.args(["-q", "-f", "-t", "0", "-l", "lab-f2fs"]);
    if !features.is_empty() {
        mkfs.arg("-O").arg(features.join(","));
    }
    run(mkfs.arg(&img));
    if fill {
        run(Command::new("sload.f2fs")
            .arg("-f")
            .arg(files(dir))
            .arg(&img));
    }
    img
}

/// fsck.f2fs passes on `img`: it may exit 0 after finding problems, so each check's line must
/// say Ok too.
fn fsck(img: &Path, what: &str) {
    let text = run(Command::new("fsck.f2fs").args(["-f", "--dry-run"]).arg(img));
    assert!(
        text.contains("[Ok..]") && !text.contains("[Fail]"),
        "{what}: fsck.f2fs:\n{text}"
    );
}

/// Every file dump.f2fs finds in `img` (inodes 4 to 40; it asks before writing each one),
/// as `name -> bytes`.
fn dumped(dir: &Path, img: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let cwd = dir.join("dump");
    std::fs::create_dir_all(&cwd).unwrap();
    for ino in 4..40 {
        let mut child = Command::new("dump.f2fs")
            .args(["-i", &format!("{ino:#x}")])
            .arg(img)
            .current_dir(&cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        let _ = child.stdin.take().unwrap().write_all(b"y\n");
        child.wait().unwrap();
    }
    let found = cwd.join("lost_found");
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(&found).unwrap() {
        let e = e.unwrap();
        out.insert(
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read(e.path()).unwrap(),
        );
    }
    std::fs::remove_dir_all(&cwd).unwrap();
    out
}

/// Made, read, measured against partclone, everything outside the map overwritten, then
/// checked by fsck.f2fs and by its files.
fn check(features: &[&str], fill: bool) {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = make(dir.path(), features, fill);
    let want = fill.then(|| dumped(dir.path(), &img));
    if let Some(w) = &want {
        assert_eq!(w.len(), 8, "{:?}", w.keys());
    }
    let dev = FileDevice::open_read(&img).unwrap();
    let rep = read(&dev).unwrap();
    assert_eq!(rep.label.as_deref(), Some("lab-f2fs"));
    assert_eq!(rep.fs_size, dev.len());
    let used = rep.used.total();
    // The metadata areas (some 14 MiB at this size) and the 14.4 MiB of files; not the rest.
    let files = if fill { 14 << 20 } else { 0 };
    assert!(
        used > files && used < files + (40 << 20),
        "{features:?}: {used} bytes used"
    );
    let s = scan(&dev, 4 << 20).unwrap();
    assert!(s.warning.is_none(), "{:?}", s.warning);
    assert_eq!(s.detected, FsKind::F2fs);
    drop(dev);
    let theirs = partclone_copied("partclone.f2fs", &img, dir.path());
    eprintln!("f2fs {features:?}: drover {used} bytes, partclone.f2fs {theirs}");
    assert!(
        used as f64 <= theirs as f64 * 1.02,
        "drover {used}, partclone.f2fs {theirs}"
    );
    super::super::test_support::scribble_outside(&img, &rep.used);
    fsck(&img, "after the scribble");
    if let Some(w) = want {
        assert!(
            dumped(dir.path(), &img) == w,
            "files differ after the scribble"
        );
    }
}

#[test]
fn empty_with_compacted_summaries() {
    check(&[], false);
}

#[test]
fn files_placed_by_sload() {
    check(&[], true);
}

#[test]
fn files_with_checksummed_superblock_and_inodes() {
    check(&["extra_attr", "inode_checksum", "sb_checksum"], true);
}

#[test]
fn several_devices_are_refused() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    for p in [&a, &b] {
        std::fs::write(p, vec![0u8; 128 << 20]).unwrap();
    }
    run(Command::new("mkfs.f2fs")
        .args(["-q", "-f", "-c"])
        .arg(&b)
        .arg(&a));
    let e = read(&FileDevice::open_read(&a).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("several devices"), "{e}");
}

// The hand-built filesystem: superblock, both checkpoint packs, one SIT block, one main
// segment. Block numbers as in `synthetic`.
const SEG0: u64 = 2;
const SIT: u64 = SEG0 + 2 * 512;
const MAIN: u64 = SIT + 3 * 2 * 512 - 512;
const PACK1: u64 = SEG0;
const PACK2: u64 = SEG0 + 512;

fn put32(d: &mut [u8], at: u64, v: u32) {
    d[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(d: &mut [u8], at: u64, v: u64) {
    d[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
}

/// Seals the checkpoint header at block `blk`: its crc at 4092.
fn seal_cp(d: &mut [u8], blk: u64) {
    let at = (blk * BLOCK) as usize;
    let c = crc(&d[at..at + 4092]);
    put32(d, blk * BLOCK + 4092, c);
}

/// A checkpoint pack header at `blk` (and its closing copy).
fn cp_header(d: &mut [u8], blk: u64, version: u64, valid: u64, flags: u32, total: u32) {
    for b in [blk, blk + u64::from(total) - 1] {
        let at = b * BLOCK;
        put64(d, at, version);
        put64(d, at + 16, valid);
        put32(d, at + 132, flags);
        put32(d, at + 136, total);
        put32(d, at + 140, 1);
        put32(d, at + 156, 64);
        put32(d, at + 160, 64);
        put32(d, at + 164, 4092);
        d[(at + 192) as usize] = 0x80; // SIT block 0 is in the second copy
        seal_cp(d, b);
    }
}

/// 16 MiB: pack 1 (version 5, compacted summaries) journals segment 0 as blocks 0, 1 and 5;
/// pack 2 (version 6, normal summaries, empty journal) leaves it to the SIT block in the
/// second copy: blocks 0 and 1.
fn synthetic() -> Vec<u8> {
    let mut d = vec![0u8; ((MAIN + 512) * BLOCK) as usize];
    let sb = 1024;
    put32(&mut d, sb, MAGIC);
    for (o, v) in [
        (8, 9),
        (12, 3),
        (16, 12),
        (20, 9),
        (24, 1),
        (28, 1),
        (32, 3068),
    ] {
        put32(&mut d, sb + o, v);
    }
    put64(&mut d, sb + 36, MAIN + 512);
    let fields = [
        (44, 8),
        (48, 8),
        (52, 2),
        (56, 2),
        (60, 2),
        (64, 1),
        (68, 1),
        (72, SEG0),
        (76, SEG0),
        (80, SIT),
        (84, SIT + 1024),
        (88, SIT + 2048),
        (92, MAIN),
        (96, 3),
    ];
    for (o, v) in fields {
        put32(&mut d, sb + o, v as u32);
    }
    for (i, c) in "seed".encode_utf16().enumerate() {
        d[(sb + 124) as usize + 2 * i..][..2].copy_from_slice(&c.to_le_bytes());
    }
    put32(&mut d, sb + 2180, FEATURE_SB_CHKSUM);
    let c = crc(&d[1024..1024 + 3068]);
    put32(&mut d, sb + 3068, c);

    // Pack 1: header, one compacted summary block, three node summaries, closing header.
    cp_header(&mut d, PACK1, 5, 3, CP_UMOUNT | CP_COMPACT_SUM, 6);
    let j = ((PACK1 + 1) * BLOCK) as usize + JOURNAL_LEN;
    d[j] = 1; // one SIT journal entry: segment 0
    d[j + 6] = 3; // three valid blocks
    d[j + 8] = 0b1100_0100;
    seal_cp(&mut d, PACK1);
    // Pack 2: header, three data and three node summaries, closing header.
    cp_header(&mut d, PACK2, 6, 2, CP_UMOUNT, 8);
    // The SIT block in the second copy: segment 0 has blocks 0 and 1.
    let e = ((SIT + 512) * BLOCK) as usize;
    d[e..e + 2].copy_from_slice(&(2u16 | 1 << 10).to_le_bytes());
    d[e + 2] = 0b1100_0000;
    d
}

fn used_of(d: Vec<u8>) -> Result<Vec<(u64, u64)>, FsError> {
    let rep = read(&MemDevice::new(d))?;
    Ok(rep.used.iter().map(|e| (e.start, e.len)).collect())
}

#[test]
fn newer_pack_and_the_sit_journal() {
    let d = synthetic();
    super::super::test_support::pinned_seed("seed-f2fs", &d);
    let meta = MAIN * BLOCK;
    assert_eq!(used_of(d.clone()).unwrap(), [(0, meta + 2 * BLOCK)]);
    let rep = read(&MemDevice::new(d.clone())).unwrap();
    assert_eq!(rep.label.as_deref(), Some("seed"));
    // Pack 2 torn (its closing copy damaged): pack 1, whose journal adds block 5.
    let mut torn = d.clone();
    torn[((PACK2 + 7) * BLOCK + 40) as usize] ^= 1;
    assert_eq!(
        used_of(torn).unwrap(),
        [(0, meta + 2 * BLOCK), (meta + 5 * BLOCK, BLOCK)]
    );
}

#[test]
fn refusals_name_what_is_wrong() {
    let err = |d: Vec<u8>| used_of(d).unwrap_err().to_string();
    let reflag = |flags: u32| {
        let mut d = synthetic();
        put32(&mut d, PACK2 * BLOCK + 132, flags);
        seal_cp(&mut d, PACK2);
        d
    };
    assert!(err(reflag(0)).contains("not cleanly unmounted"));
    assert!(err(reflag(CP_UMOUNT | CP_FSCK)).contains("fsck"));
    assert!(err(reflag(CP_UMOUNT | CP_DISABLED)).contains("checkpointing disabled"));
    // A SIT entry whose count disagrees with its map.
    let mut d = synthetic();
    d[((SIT + 512) * BLOCK + 2) as usize] = 0b1110_0000;
    assert!(err(d).contains("2 valid blocks but 3 bits set"));
    // The SIT agreeing with itself but not with the checkpoint.
    let mut d = synthetic();
    put64(&mut d, PACK2 * BLOCK + 16, 7);
    seal_cp(&mut d, PACK2);
    assert!(err(d).contains("the SIT counts 2 valid blocks, the checkpoint 7"));
    // Both packs damaged.
    let mut d = synthetic();
    for b in [PACK1, PACK2] {
        d[(b * BLOCK + 8) as usize] ^= 1;
    }
    assert!(err(d).contains("neither checkpoint pack"));
    // The superblock's crc wrong and no copy in block 1.
    let mut d = synthetic();
    d[1024 + 100] ^= 1;
    assert!(err(d).contains("superblock checksum"));
    // ... but a good copy in block 1 is used.
    let mut d = synthetic();
    let sb: Vec<u8> = d[1024..4096].to_vec();
    d[BLOCK as usize + 1024..2 * BLOCK as usize].copy_from_slice(&sb);
    d[1024 + 100] ^= 1;
    assert!(used_of(d).is_ok());
    // Areas that do not follow each other.
    let mut d = synthetic();
    put32(&mut d, 1024 + 84, (SIT + 1000) as u32);
    let c = crc(&d[1024..1024 + 3068]);
    put32(&mut d, 1024 + 3068, c);
    assert!(err(d).contains("do not follow each other"));
    // The journal naming a segment past the main area.
    let mut d = synthetic();
    d[((PACK2 + 7) * BLOCK + 40) as usize] ^= 1; // pack 2 torn: pack 1 and its journal
    let j = ((PACK1 + 1) * BLOCK) as usize + JOURNAL_LEN;
    d[j + 2] = 9;
    assert!(err(d).contains("SIT journal names segment 9"));
}

/// Random bytes changed in the metadata blocks the reader reads, checksums resealed half the
/// time so the changes get past them: never a panic, and an accepted map stays inside.
#[test]
fn mutated_metadata_never_panics() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let seed = synthetic();
    let blocks = [0, PACK1, PACK1 + 1, PACK2, PACK2 + 3, SIT + 512];
    for _ in 0..400 {
        let mut d = seed.clone();
        for _ in 0..rng.gen_range(1..6) {
            let blk = blocks[rng.gen_range(0..blocks.len())];
            let at = blk * BLOCK + rng.gen_range(0..if blk == 0 { 4096 } else { 256 });
            d[at as usize] = rng.gen();
        }
        if rng.gen_bool(0.5) {
            for b in [PACK1, PACK1 + 5, PACK2, PACK2 + 7] {
                seal_cp(&mut d, b);
            }
            let c = crc(&d[1024..1024 + 3068]);
            put32(&mut d, 1024 + 3068, c);
        }
        let len = d.len() as u64;
        if let Ok(rep) = read(&MemDevice::new(d)) {
            assert!(rep.used.end() <= len);
        }
    }
}
