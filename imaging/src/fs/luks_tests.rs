//! The LUKS reader against volumes cryptsetup made and encrypted itself (offline
//! `reencrypt --encrypt` of an ext4 image, in userspace: no device-mapper): LUKS2 with PBKDF2
//! and 4 KiB sectors, LUKS2 with Argon2id, LUKS1 (converted by cryptsetup). The inner filesystem is found and read; the
//! wrong key, no key and a damaged header are refused by name.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::device::FileDevice;
use crate::fs::scan_with;

const MIB: u64 = 1 << 20;

/// cryptsetup and e2fsprogs present, or (outside CI) `None` and a skip message.
fn tools() -> Option<()> {
    super::super::test_support::have_tools(&["cryptsetup", "mkfs.ext4"]).then_some(())
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `mib` MiB file holding an ext4 with a few files (in its first `mib - 16` MiB), encrypted
/// in place by cryptsetup with passphrase `pass`; `args` choose the format and KDF.
fn encrypted_ext4(dir: &Path, mib: u64, pass: &[u8], args: &[&str]) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    for (i, size) in [10_000usize, 300_000, 2 << 20].iter().enumerate() {
        let data: Vec<u8> = (0..*size).map(|j| (j * 7 + i) as u8).collect();
        std::fs::write(root.join(format!("f{i}")), data).unwrap();
    }
    let img = dir.join("luks.img");
    std::fs::write(&img, vec![0x11u8; (mib * MIB) as usize]).unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(&root)
        .arg(&img)
        .arg(format!("{}M", mib - 16)));
    let key = dir.join("key");
    std::fs::write(&key, pass).unwrap();
    run(Command::new("cryptsetup")
        .args([
            "reencrypt",
            "--encrypt",
            "--batch-mode",
            "--reduce-device-size",
            "16M",
        ])
        .arg("--key-file")
        .arg(&key)
        .args(args)
        .arg(&img));
    img
}

fn keys(k: &[&[u8]]) -> ScanOptions {
    ScanOptions::with_luks_keys(k.iter().map(|k| k.to_vec()).collect())
}

/// Reads `img` with `pass` (after a wrong key), expecting ext4 inside; returns the report.
fn opens(img: &Path, pass: &[u8]) -> FsReport {
    let dev = FileDevice::open_read(img).unwrap();
    let rep = read(&dev, 4 * MIB, &keys(&[b"not it", pass])).unwrap();
    assert_eq!(rep.kind, FsKind::Luks);
    assert_eq!(rep.volumes.len(), 1);
    let v = &rep.volumes[0];
    assert_eq!(v.kind, FsKind::Ext4, "{v:?}");
    assert!(v.warning.is_none(), "{v:?}");
    // The header and key slots whole, then a few MiB of the 48 MiB inside.
    let data = v.extents.iter().next().unwrap().start;
    assert!(rep.used.covers(0, data));
    let inside = rep.used.total() - data;
    // (ext4's 16 MiB journal, the files' 2.3 MiB, its metadata.)
    assert!(inside > 2 * MIB && inside < 24 * MIB, "{inside}");
    // Whole encryption sectors only.
    let sector = u64::from(rep.block_size);
    assert!(rep
        .used
        .iter()
        .all(|e| (e.start.max(data) - data) % sector == 0 && (e.end() - data) % sector == 0));
    rep
}

#[test]
fn luks2_pbkdf2_with_4k_sectors() {
    if tools().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = encrypted_ext4(
        dir.path(),
        64,
        b"correct horse",
        &[
            "--type",
            "luks2",
            "--sector-size",
            "4096",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
        ],
    );
    let rep = opens(&img, b"correct horse");
    assert_eq!(rep.block_size, 4096);
}

#[test]
fn luks2_argon2id() {
    if tools().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = encrypted_ext4(
        dir.path(),
        64,
        b"battery staple\n",
        &[
            "--type",
            "luks2",
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "8192",
            "--pbkdf-parallel",
            "1",
            "--pbkdf-force-iterations",
            "4",
        ],
    );
    // The trailing newline is part of the passphrase, as cryptsetup reads a key file.
    opens(&img, b"battery staple\n");
    let dev = FileDevice::open_read(&img).unwrap();
    let e = read(&dev, MIB, &keys(&[b"battery staple"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no key given opens"), "{e}");
}

#[test]
fn luks1_pbkdf2() {
    if tools().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // cryptsetup encrypts LUKS1 offline only through device-mapper; a LUKS2 volume it
    // encrypted, converted to LUKS1 by cryptsetup (header and key slot rewritten) is the same.
    let img = encrypted_ext4(
        dir.path(),
        64,
        b"old laptop",
        &[
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
        ],
    );
    run(Command::new("cryptsetup")
        .args(["convert", "--type", "luks1", "--batch-mode"])
        .arg(&img));
    let h = std::fs::read(&img).unwrap();
    assert_eq!(&h[..8], b"LUKS\xba\xbe\x00\x01");
    opens(&img, b"old laptop");
}

#[test]
fn refusals_name_what_is_missing_or_wrong() {
    if tools().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = encrypted_ext4(
        dir.path(),
        40,
        b"pw",
        &[
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
        ],
    );
    let dev = FileDevice::open_read(&img).unwrap();
    let e = read(&dev, MIB, &ScanOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("LUKS2 volume") && e.contains("--luks-key-file"),
        "{e}"
    );
    // Through the scan: the raw copy of everything, saying why.
    let s = scan_with(&dev, MIB, &ScanOptions::default()).unwrap();
    assert_eq!(s.detected, FsKind::Luks);
    assert!(s.warning.unwrap().contains("without a key"));
    let e = read(&dev, MIB, &keys(&[b"wrong"])).unwrap_err().to_string();
    assert!(e.contains("no key given opens"), "{e}");
    drop(dev);
    // A JSON byte changed: the header's checksum catches it.
    let mut b = std::fs::read(&img).unwrap();
    b[4096 + 10] ^= 1;
    std::fs::write(&img, &b).unwrap();
    let dev = FileDevice::open_read(&img).unwrap();
    let e = read(&dev, MIB, &keys(&[b"pw"])).unwrap_err().to_string();
    assert!(e.contains("header checksum mismatch"), "{e}");
}

#[test]
#[allow(clippy::big_endian_bytes)] // the diffusion hashes a big-endian block index
fn af_merge_inverts_a_split() {
    // Split a key by hand as LUKS does (random stripes, the last one solving), then merge.
    let key: Vec<u8> = (0..64u8).collect();
    let stripes = 5;
    let hash = Hash::Sha256;
    let mut material = Vec::new();
    let mut d = vec![0u8; 64];
    for i in 0..stripes - 1 {
        let s: Vec<u8> = (0..64).map(|j| (i * 31 + j * 17) as u8).collect();
        for (a, b) in d.iter_mut().zip(&s) {
            *a ^= b;
        }
        let mut out = Vec::new();
        for (j, block) in d.chunks(32).enumerate() {
            out.extend_from_slice(&hash.digest(&[&(j as u32).to_be_bytes(), block]));
        }
        d = out;
        material.extend(s);
    }
    material.extend(d.iter().zip(&key).map(|(a, b)| a ^ b));
    assert_eq!(af_merge(&material, 64, stripes, hash), key);
}

/// A LUKS1 volume built by hand, 16 KiB: one key slot (PBKDF2-SHA256, one iteration, one AF
/// stripe) that the passphrase `fuzz` opens, AES-128-XTS, data from 4 KiB holding an encrypted
/// swap header page, then free space. The fuzz seed of the LUKS reader.
#[allow(clippy::big_endian_bytes)] // LUKS1's header is big-endian
fn synthetic_luks1() -> Vec<u8> {
    use aes::cipher::KeyInit;
    let master: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ 0x5C).collect();
    let mut d = vec![0u8; 16 << 10];
    let h = &mut d[..592];
    h[..6].copy_from_slice(MAGIC);
    h[6..8].copy_from_slice(&1u16.to_be_bytes());
    h[8..11].copy_from_slice(b"aes");
    h[40..52].copy_from_slice(b"xts-plain64\0");
    h[72..78].copy_from_slice(b"sha256");
    h[104..108].copy_from_slice(&8u32.to_be_bytes()); // data at sector 8
    h[108..112].copy_from_slice(&32u32.to_be_bytes());
    let mk_salt = [7u8; 32];
    let mut digest = [0u8; 20];
    Hash::Sha256.pbkdf2(&master, &mk_salt, 1, &mut digest);
    h[112..132].copy_from_slice(&digest);
    h[132..164].copy_from_slice(&mk_salt);
    h[164..168].copy_from_slice(&1u32.to_be_bytes());
    h[168..172].copy_from_slice(b"syn1");
    let slot_salt = [9u8; 32];
    let s = &mut h[208..256];
    s[..4].copy_from_slice(&0x00AC_71F3u32.to_be_bytes());
    s[4..8].copy_from_slice(&1u32.to_be_bytes());
    s[8..40].copy_from_slice(&slot_salt);
    s[40..44].copy_from_slice(&2u32.to_be_bytes()); // key material at sector 2
    s[44..48].copy_from_slice(&1u32.to_be_bytes()); // one stripe: the material is the key
    for i in 1..8 {
        // The other slots are disabled.
        d[208 + i * 48..212 + i * 48].copy_from_slice(&0x0000_DEADu32.to_be_bytes());
    }
    let xts = |key: &[u8]| {
        Xts128::new(
            Aes128::new_from_slice(&key[..16]).unwrap(),
            Aes128::new_from_slice(&key[16..]).unwrap(),
        )
    };
    let mut derived = [0u8; 32];
    Hash::Sha256.pbkdf2(b"fuzz", &slot_salt, 1, &mut derived);
    let mut material = vec![0u8; 512];
    material[..32].copy_from_slice(&master);
    xts(&derived).encrypt_area(&mut material, 512, 0, xts_mode::get_tweak_default);
    d[1024..1536].copy_from_slice(&material);
    let mut page = vec![0u8; 4096];
    page[4086..].copy_from_slice(b"SWAPSPACE2");
    page[1028..1032].copy_from_slice(&2u32.to_le_bytes()); // last page: the volume's third
    xts(&master).encrypt_area(&mut page, 512, 0, xts_mode::get_tweak_default);
    d[4096..8192].copy_from_slice(&page);
    d
}

#[test]
fn a_hand_built_luks1_opens_and_seeds_the_fuzz_corpus() {
    let d = synthetic_luks1();
    let dev = crate::device::MemDevice::new(d.clone());
    let rep = read(&dev, 4096, &keys(&[b"fuzz"])).unwrap();
    assert_eq!(rep.volumes[0].kind, FsKind::Swap, "{:?}", rep.volumes);
    // The header and key material, and the one encrypted page that holds used bytes.
    let got: Vec<(u64, u64)> = rep.used.iter().map(|e| (e.start, e.len)).collect();
    assert_eq!(got, [(0, 8192)]);
    let e = read(&dev, 4096, &keys(&[b"fuzZ"])).unwrap_err().to_string();
    assert!(e.contains("no key given opens"), "{e}");
    // A header asking for more KDF work than the limit is refused before any is done.
    let mut big = d.clone();
    big[208 + 4..208 + 8].copy_from_slice(&[0xFF; 4]);
    let dev = crate::device::MemDevice::new(big);
    let e = read(&dev, 4096, &keys(&[b"fuzz"])).unwrap_err().to_string();
    assert!(e.contains("4294967295 PBKDF2 rounds"), "{e}");
    super::super::test_support::pinned_seed("seed-luks1", &d);
}
