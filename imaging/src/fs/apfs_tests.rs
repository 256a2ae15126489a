//! The APFS reader against containers made by Debian's mkapfs (this kernel has no APFS driver
//! and apfsprogs writes no files, so they hold an empty volume): every byte outside the map is
//! overwritten and apfsck must still pass; the used bytes are measured against
//! partclone.apfs's. A 40 GiB container spreads its chunks over several chunk-info blocks. Then
//! a hand-built container (the fuzz seed) for the checkpoint choice and the refusals.

use std::path::Path;
use std::process::Command;

use super::*;
use crate::device::{FileDevice, MemDevice};
use crate::fs::scan;
use crate::fs::test_support::{partclone_copied, run};

fn tools() -> bool {
    super::super::test_support::have_tools(&["mkapfs", "apfsck", "partclone.apfs"])
}

/// apfsck passes on `img`, reporting unknown and odd things too (`-cuw`).
fn apfsck(img: &Path, what: &str) {
    let out = Command::new("apfsck")
        .arg("-cuw")
        .arg(img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: apfsck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn mkapfs_container_by_its_bitmaps() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("apfs.img");
    // Stale bytes everywhere first: mkapfs leaves what it does not use.
    std::fs::write(&img, vec![0xEEu8; 256 << 20]).unwrap();
    run(Command::new("mkapfs").args(["-L", "lab"]).arg(&img));
    let dev = FileDevice::open_read(&img).unwrap();
    let rep = read(&dev).unwrap();
    assert_eq!(rep.fs_size, dev.len());
    let used = rep.used.total();
    // The checkpoint data area (some 23 MiB) and the metadata; not the free space.
    assert!(used > 20 << 20 && used < 40 << 20, "{used} bytes used");
    let s = scan(&dev, 4 << 20).unwrap();
    assert!(s.warning.is_none(), "{:?}", s.warning);
    assert_eq!(s.detected, FsKind::Apfs);
    drop(dev);
    let theirs = partclone_copied("partclone.apfs", &img, dir.path());
    eprintln!("apfs: drover {used} bytes, partclone.apfs {theirs}");
    assert!(
        used as f64 <= theirs as f64 * 1.02,
        "drover {used}, partclone.apfs {theirs}"
    );
    super::super::test_support::scribble_outside(&img, &rep.used);
    apfsck(&img, "after the scribble");
}

#[test]
fn large_container_over_several_chunk_info_blocks() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("apfs.img");
    // Sparse: mkapfs writes only its metadata. 126 chunks of 128 MiB per chunk-info block.
    std::fs::File::create(&img)
        .unwrap()
        .set_len(40 << 30)
        .unwrap();
    run(Command::new("mkapfs").arg(&img));
    apfsck(&img, "as made");
    let dev = FileDevice::open_read(&img).unwrap();
    let sm_cibs = {
        // The space manager's chunk-info block count, read the reader's way.
        let nx = Nx {
            dev: &dev,
            bs: 4096,
            blocks: dev.len() / 4096,
        };
        let b0 = nx.block(0).unwrap();
        let a = Areas {
            desc_base: le64(&b0, 0x70),
            desc_blocks: u64::from(le32(&b0, 0x68)),
            data_base: le64(&b0, 0x78),
            data_blocks: u64::from(le32(&b0, 0x6C)),
        };
        let sb = latest_super(&nx, &a).unwrap();
        le32(&spaceman(&nx, &a, &sb).unwrap(), 48 + 16)
    };
    assert_eq!(sm_cibs, 3);
    let rep = read(&dev).unwrap();
    let used = rep.used.total();
    assert!(used < 40 << 20, "{used} bytes used of 40 GiB");
    // Every chunk's bitmap was read: the space manager's blocks are inside the map.
    assert!(rep.used.covers(0, 4096));
}

// The hand-built container: 64 blocks of 4 KiB, one chunk, one chunk-info block.
const BS: u64 = 4096;
const DESC: u64 = 1; // 4 blocks: the map (1), the superblock (2), an older superblock (3)
const DATA: u64 = 9; // 4 blocks: the space manager (9)
const IP_BM: u64 = 16;
const IP: u64 = 20; // 3 blocks: the chunk-info block (20), the chunk's bitmap (21)
const SM_OID: u64 = 0x400;

fn put32(d: &mut [u8], at: u64, v: u32) {
    d[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(d: &mut [u8], at: u64, v: u64) {
    d[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
}

/// Writes the object header of block `n` (oid, xid, type) and seals its checksum.
fn object(d: &mut [u8], n: u64, oid: u64, xid: u64, kind: u32) {
    let at = n * BS;
    put64(d, at + 8, oid);
    put64(d, at + 16, xid);
    put32(d, at + 24, kind);
    seal(d, n);
}

fn seal(d: &mut [u8], n: u64) {
    let at = (n * BS) as usize;
    let c = fletcher64(&d[at + 8..at + BS as usize]);
    put64(d, n * BS, c);
}

/// A container superblock at block `n`, of transaction `xid`.
fn nx_super(d: &mut [u8], n: u64, xid: u64, desc_index: u32) {
    let at = n * BS;
    d[(at + 32) as usize..(at + 36) as usize].copy_from_slice(b"NXSB");
    put32(d, at + 36, BS as u32);
    put64(d, at + 40, 64);
    put64(d, at + 0x40, INCOMPAT_VERSION2);
    put32(d, at + 0x68, 4);
    put32(d, at + 0x6C, 4);
    put64(d, at + 0x70, DESC);
    put64(d, at + 0x78, DATA);
    put32(d, at + 0x88, desc_index);
    put32(d, at + 0x8C, 2);
    put32(d, at + 0x94, 1);
    put64(d, at + 0x98, SM_OID);
    object(d, n, 1, xid, 0x8000_0001);
}

/// Used: blocks 0 to 23 (the metadata) and 40, 41 (data); 38 of the 64 free.
fn synthetic() -> Vec<u8> {
    let mut d = vec![0u8; (64 * BS) as usize];
    nx_super(&mut d, 0, 5, 0);
    nx_super(&mut d, DESC + 1, 5, 0);
    nx_super(&mut d, DESC + 2, 3, 0); // older, its map long overwritten
                                      // The checkpoint map: last, one mapping (the space manager).
    let m = DESC * BS;
    put32(&mut d, m + 32, 1);
    put32(&mut d, m + 36, 1);
    put32(&mut d, m + 40, 0x8000_0005);
    put32(&mut d, m + 48, BS as u32);
    put64(&mut d, m + 64, SM_OID);
    put64(&mut d, m + 72, DATA);
    object(&mut d, DESC, DESC, 5, 0x4000_000c);
    // The space manager.
    let s = DATA * BS;
    for (o, v) in [
        (32, BS),
        (36, 8 * BS),
        (40, (BS - 40) / 32),
        (44, (BS - 40) / 8),
    ] {
        put32(&mut d, s + o, v as u32);
    }
    put64(&mut d, s + 48, 64); // blocks
    put64(&mut d, s + 56, 1); // chunks
    put32(&mut d, s + 64, 1); // chunk-info blocks
    put64(&mut d, s + 72, 38); // free
    put32(&mut d, s + 80, 512); // address table offset
    put64(&mut d, s + 512, IP);
    put64(&mut d, s + 152, 3);
    put32(&mut d, s + 160, 1);
    put32(&mut d, s + 164, 1);
    put64(&mut d, s + 168, IP_BM);
    put64(&mut d, s + 176, IP);
    object(&mut d, DATA, SM_OID, 5, 0x8000_0005);
    // The chunk-info block and the chunk's bitmap.
    let c = IP * BS;
    put32(&mut d, c + 36, 1);
    put64(&mut d, c + 40, 5);
    put32(&mut d, c + 56, 64);
    put32(&mut d, c + 60, 38);
    put64(&mut d, c + 64, IP + 1);
    object(&mut d, IP, IP, 5, 0x4000_0007);
    let b = ((IP + 1) * BS) as usize;
    d[b..b + 3].fill(0xFF);
    d[b + 5] = 0b11;
    d
}

fn used_of(d: Vec<u8>) -> Result<Vec<(u64, u64)>, FsError> {
    let rep = read(&MemDevice::new(d))?;
    Ok(rep
        .used
        .iter()
        .map(|e| (e.start / BS, e.len / BS))
        .collect())
}

#[test]
fn latest_checkpoint_and_its_bitmaps() {
    let d = synthetic();
    super::super::test_support::pinned_seed("seed-apfs", &d);
    assert_eq!(used_of(d.clone()).unwrap(), [(0, 24), (40, 2)]);
    // The newest superblock damaged: the older one's map is of another transaction.
    let mut d = synthetic();
    d[((DESC + 1) * BS + 200) as usize] ^= 1;
    let e = used_of(d).unwrap_err().to_string();
    assert!(
        e.contains("checkpoint map at block 1 is of transaction 5"),
        "{e}"
    );
}

#[test]
fn refusals_name_what_is_wrong() {
    let err = |d: Vec<u8>| used_of(d).unwrap_err().to_string();
    // Fusion, version 1 and unknown incompatible features.
    for (bits, want) in [
        (INCOMPAT_VERSION2 | INCOMPAT_FUSION, "Fusion"),
        (INCOMPAT_VERSION1, "version 1"),
        (INCOMPAT_VERSION2 | 0x8000, "incompatible features 0x8002"),
    ] {
        let mut d = synthetic();
        put64(&mut d, 0x40, bits);
        seal(&mut d, 0);
        let e = err(d);
        assert!(e.contains(want), "{e}");
    }
    // A chunk whose free count disagrees with its bitmap.
    let mut d = synthetic();
    d[((IP + 1) * BS + 7) as usize] = 1;
    assert!(err(d).contains("38 free blocks recorded, 37 in its bitmap"));
    // Chunks and bitmap agreeing, but not with the space manager's total.
    let mut d = synthetic();
    put64(&mut d, DATA * BS + 72, 30);
    seal(&mut d, DATA);
    assert!(err(d).contains("with 38 free; the space manager says 64 with 30"));
    // A chunk-info block of the wrong index.
    let mut d = synthetic();
    put32(&mut d, IP * BS + 32, 1);
    seal(&mut d, IP);
    assert!(err(d).contains("chunk-info block 0 at block 20: index 1"));
    // Checksums.
    let mut d = synthetic();
    d[(IP * BS + 100) as usize] ^= 1;
    assert!(err(d).contains("chunk-info block at block 20: checksum mismatch"));
    let mut d = synthetic();
    d[100] ^= 1;
    assert!(err(d).contains("block 0"));
    // The geometry not what the block size implies.
    let mut d = synthetic();
    put32(&mut d, DATA * BS + 36, 4096);
    seal(&mut d, DATA);
    assert!(err(d).contains("geometry"));
}

/// Random bytes changed in the blocks the reader reads, checksums resealed half the time so
/// the changes get past them: never a panic, and an accepted map stays inside.
#[test]
fn mutated_metadata_never_panics() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let seed = synthetic();
    let blocks = [0, DESC, DESC + 1, DATA, IP, IP + 1];
    for _ in 0..600 {
        let mut d = seed.clone();
        for _ in 0..rng.gen_range(1..5) {
            let blk = blocks[rng.gen_range(0..blocks.len())];
            let at = blk * BS + rng.gen_range(0..600);
            d[at as usize] = rng.gen();
        }
        if rng.gen_bool(0.5) {
            for b in [0, DESC, DESC + 1, DATA, IP] {
                seal(&mut d, b);
            }
        }
        let len = d.len() as u64;
        if let Ok(rep) = read(&MemDevice::new(d)) {
            assert!(rep.used.end() <= len);
        }
    }
}
