//! Bad input never panics and never loses stored data: truncated and garbage filesystems fall
//! back to the raw map with a warning; damaged or missing chunks and manifests give errors that
//! name the image and the chunk or file.

use std::fs;
use std::path::Path;

use drover_tests::*;

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ext4(env: &Env, name: &str, size: u64) -> std::path::PathBuf {
    ext4_with(env, name, size, "64bit")
}

fn ext4_with(env: &Env, name: &str, size: u64, features: &str) -> std::path::PathBuf {
    let img = env.path(name);
    sparse_file(&img, size);
    let tree = env.path(&format!("{name}-tree"));
    make_tree(&tree, size / 6, 3);
    let args = [
        "-q",
        "-F",
        "-b",
        "4096",
        "-O",
        features,
        "-d",
        s(&tree),
        s(&img),
    ];
    run("mkfs.ext4", &args);
    img
}

/// Captures `img`; asserts a raw fallback for `fs` with a warning containing `why`, then
/// restores onto random bytes and checks the raw copy came back byte for byte (its all-zero
/// regions too: nothing of the random bytes may survive).
fn expect_fallback(env: &Env, img: &Path, name: &str, fs_name: &str, why: &str) {
    let cap = env.capture(img, name);
    let w = cap["warnings"].to_string();
    assert!(
        w.contains(fs_name) && w.contains(why),
        "{name}: warnings {w}"
    );
    let m = env.manifest(name);
    let info = m.areas[0].fs.as_ref().unwrap();
    assert_eq!(info.kind.to_string(), "unknown");
    assert_eq!(info.detected.to_string(), fs_name);
    let size = fs::metadata(img).unwrap().len();
    let target = env.path(&format!("{name}-target"));
    random_file(&target, size, 8);
    env.restore(name, &target);
    let (a, b) = (fs::read(img).unwrap(), fs::read(&target).unwrap());
    assert!(w.contains("restored byte for byte"), "{name}: warnings {w}");
    for (i, (x, y)) in a
        .chunks(4 * MIB as usize)
        .zip(b.chunks(4 * MIB as usize))
        .enumerate()
    {
        assert!(x == y, "{name}: region {i} differs after restore");
    }
}

#[test]
fn truncated_filesystem_images_fall_back_to_raw() {
    if !require("truncated", &["mkfs.ext4", "mkfs.vfat", "mkntfs"]) {
        return;
    }
    let env = Env::new();
    let img = ext4(&env, "ext.img", 64 * MIB);
    fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(40 * MIB)
        .unwrap();
    expect_fallback(&env, &img, "ext-trunc", "ext4", "do not fit");

    let fat = env.path("fat.img");
    sparse_file(&fat, 64 * MIB);
    run("mkfs.vfat", &["-F", "32", s(&fat)]);
    fs::OpenOptions::new()
        .write(true)
        .open(&fat)
        .unwrap()
        .set_len(30 * MIB)
        .unwrap();
    expect_fallback(&env, &fat, "fat-trunc", "fat32", "volume of");

    let ntfs = env.path("ntfs.img");
    sparse_file(&ntfs, 64 * MIB);
    run("mkntfs", &["-Q", "-F", s(&ntfs)]);
    fs::OpenOptions::new()
        .write(true)
        .open(&ntfs)
        .unwrap()
        .set_len(32 * MIB)
        .unwrap();
    expect_fallback(&env, &ntfs, "ntfs-trunc", "ntfs", "volume of");
}

#[test]
fn garbage_superblocks_and_bitmaps_fall_back_to_raw() {
    if !require("garbage", &["mkfs.ext4", "mkntfs", "mkfs.exfat"]) {
        return;
    }
    let env = Env::new();
    // ext4: block size field out of range.
    let img = ext4(&env, "bs.img", 64 * MIB);
    patch(&img, 1024 + 0x18, &[9, 0, 0, 0]);
    expect_fallback(&env, &img, "ext-bs", "ext4", "block size");

    // ext4 with metadata_csum: any damaged descriptor fails its checksum (a flipped
    // BLOCK_UNINIT flag would otherwise hide a whole group's data).
    let img = ext4(&env, "csum.img", 256 * MIB);
    patch(&img, 4096 + 64 + 0x12, &[0x02, 0]);
    expect_fallback(&env, &img, "ext-csum", "ext4", "checksum");
    let img = ext4(&env, "sbcsum.img", 64 * MIB);
    patch(&img, 1024 + 0x78, b"garbage label");
    expect_fallback(&env, &img, "ext-sb-csum", "ext4", "superblock checksum");

    // Without checksums, the structural checks still hold: group 1's block bitmap pointing
    // past the end of the filesystem...
    let img = ext4_with(&env, "bm.img", 256 * MIB, "64bit,^metadata_csum,^uninit_bg");
    patch(&img, 4096 + 64, &0xFFFF_FF00u32.to_le_bytes());
    expect_fallback(&env, &img, "ext-bitmap", "ext4", "block bitmap");

    // ...and a descriptor whose free count is below what its bitmap shows free (the bitmap
    // cannot be trusted to list every used block).
    let img = ext4_with(
        &env,
        "cnt.img",
        256 * MIB,
        "64bit,^metadata_csum,^uninit_bg",
    );
    patch(&img, 4096 + 0x0C, &[0, 0]);
    patch(&img, 4096 + 0x2C, &[0, 0]);
    expect_fallback(&env, &img, "ext-count", "ext4", "free blocks");

    // NTFS: $Bitmap's MFT record is torn (its update sequence no longer matches).
    let ntfs = env.path("ntfs.img");
    sparse_file(&ntfs, 64 * MIB);
    run("mkntfs", &["-Q", "-F", s(&ntfs)]);
    let b = read_range(&ntfs, 0, 512);
    let cluster = u64::from(u16::from_le_bytes([b[11], b[12]])) * u64::from(b[13]);
    let mft = u64::from_le_bytes(b[0x30..0x38].try_into().unwrap()) * cluster;
    patch(&ntfs, mft + 6 * 1024 + 510, &[0xDE, 0xAD]);
    expect_fallback(&env, &ntfs, "ntfs-torn", "ntfs", "torn");

    // exFAT: sector shift out of range.
    let ex = env.path("exfat.img");
    sparse_file(&ex, 64 * MIB);
    run("mkfs.exfat", &[s(&ex)]);
    patch(&ex, 0x6C, &[20]);
    expect_fallback(&env, &ex, "exfat-shift", "exfat", "sector shift");
}

#[test]
fn bitmap_bits_past_the_end_are_ignored() {
    if !require("bitmap past end", &["mkfs.exfat", "fsck.exfat"]) {
        return;
    }
    let env = Env::new();
    let ex = env.path("exfat.img");
    sparse_file(&ex, 64 * MIB);
    run("mkfs.exfat", &[s(&ex)]);
    let cap1 = env.capture(&ex, "exfat-clean");
    // Set every bit of the bitmap's last byte: bits past ClusterCount claim clusters that do
    // not exist. They must neither crash the reader nor reach past the volume.
    let b = read_range(&ex, 0, 512);
    let bps = 1u64 << b[0x6C];
    let spc = 1u64 << b[0x6D];
    let heap = u64::from(u32::from_le_bytes(b[0x58..0x5C].try_into().unwrap())) * bps;
    let count = u64::from(u32::from_le_bytes(b[0x5C..0x60].try_into().unwrap()));
    // mkfs.exfat puts the bitmap in the first heap cluster.
    let last = heap + count.div_ceil(8) - 1;
    patch(&ex, last, &[0xFF]);
    let cap2 = env.capture(&ex, "exfat-bits");
    assert!(cap2["warnings"].as_array().unwrap().is_empty(), "{cap2}");
    let m = env.manifest("exfat-bits");
    assert!(m.areas[0].used.end() <= heap + count * bps * spc);
    assert!(cap2["used_bytes"].as_u64() >= cap1["used_bytes"].as_u64());
}

#[test]
fn damaged_and_missing_chunks_are_named() {
    if !require("chunks", &["mkfs.ext4"]) {
        return;
    }
    let env = Env::new();
    let img = ext4(&env, "src.img", 64 * MIB);
    env.capture(&img, "lab");
    let store = env.store();
    let m = env.manifest("lab");
    let id = store.resolve("lab").unwrap().id;
    let chunks: Vec<_> = m.chunks().map(|(_, c)| c.hash).collect();
    assert!(chunks.len() >= 3);

    // A flipped byte.
    let bad = chunks[1];
    let p = store.chunk_file(&bad).unwrap();
    let mut z = fs::read(&p).unwrap();
    let mid = z.len() / 2;
    z[mid] ^= 0x01;
    fs::write(&p, &z).unwrap();
    let err = env.fails(&["image", "verify", "lab"]);
    assert!(
        err.contains(&bad.to_hex()) && err.contains("lab@1") && err.contains(&id[..12]),
        "{err}"
    );
    assert!(err.contains("1 of"), "{err}");
    let v = env.drover(&["--json", "image", "verify", "lab"]);
    assert_eq!(v.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(j["ok"], false);
    assert_eq!(j["bad"][0]["hash"], bad.to_hex());

    // Restore stops at the bad chunk and names it.
    let target = env.path("t.img");
    random_file(&target, 64 * MIB, 1);
    let err = env.fails(&["image", "restore", "lab", s(&target)]);
    assert!(
        err.contains(&bad.to_hex()) && err.contains("corrupt"),
        "{err}"
    );

    // A truncated chunk file.
    let t = chunks[2];
    let p2 = store.chunk_file(&t).unwrap();
    let z2 = fs::read(&p2).unwrap();
    fs::write(&p2, &z2[..z2.len() / 3]).unwrap();
    let err = env.fails(&["image", "verify", "lab"]);
    assert!(err.contains(&t.to_hex()) && err.contains("2 of"), "{err}");

    // A missing chunk: restore refuses before writing anything.
    let gone = chunks[0];
    fs::remove_file(store.chunk_file(&gone).unwrap()).unwrap();
    let err = env.fails(&["image", "verify", "lab"]);
    assert!(
        err.contains(&gone.to_hex()) && err.contains("missing"),
        "{err}"
    );
    let before = fs::read(&target).unwrap();
    let err = env.fails(&["image", "restore", "lab", s(&target)]);
    assert!(
        err.contains(&gone.to_hex()) && err.contains("missing"),
        "{err}"
    );
    assert!(
        fs::read(&target).unwrap() == before,
        "restore wrote before finding the missing chunk"
    );
}

#[test]
fn damaged_manifests_and_unknown_images() {
    if !require("manifests", &["mkfs.ext4"]) {
        return;
    }
    let env = Env::new();
    let img = ext4(&env, "src.img", 32 * MIB);
    env.capture(&img, "good");
    let err = env.fails(&["image", "inspect", "nosuch"]);
    assert!(
        err.contains("no image named") && err.contains("nosuch"),
        "{err}"
    );
    let target = env.path("t.img");
    sparse_file(&target, 32 * MIB);
    let err = env.fails(&[
        "image",
        "restore",
        "good",
        s(&env.path("missing-target.img")),
    ]);
    assert!(err.contains("missing-target.img"), "{err}");
    // A manifest that is not JSON, one with an impossible chunk list: named, never a panic.
    let dir = env.data().join("images/manifests");
    let bad = dir.join(format!("{}.json", "ab".repeat(32)));
    fs::write(
        &bad,
        b"{\"format\":\"drover-image\",\"version\":1,\"name\":",
    )
    .unwrap();
    let err = env.fails(&["image", "list"]);
    assert!(
        err.contains(bad.file_name().unwrap().to_str().unwrap()),
        "{err}"
    );
    // One damaged manifest hides nothing else: the good image is still listed, verified and
    // restored; gc refuses to run (it could free chunks the damaged manifest references).
    let out = env.drover(&["--json", "image", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["name"], "good");
    env.ok(&["image", "verify", "good"]);
    env.restore("good", &target);
    let err = env.fails(&["image", "gc"]);
    assert!(
        err.contains(bad.file_name().unwrap().to_str().unwrap()),
        "{err}"
    );
    let good = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| *p != bad)
        .unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&good).unwrap()).unwrap();
    m["areas"][0]["chunks"].as_array_mut().unwrap().pop();
    fs::write(&bad, serde_json::to_vec(&m).unwrap()).unwrap();
    let err = env.fails(&["image", "list"]);
    assert!(
        err.contains("inconsistent") && err.contains("chunks listed"),
        "{err}"
    );
    fs::remove_file(&bad).unwrap();
    env.ok(&["image", "verify", "good"]);
}
