//! Filesystems made by their real tools, captured and restored over random bytes and over a disk
//! that held another filesystem: XFS, btrfs, f2fs, APFS, HFS+, reiserfs and JFS, read by their used
//! blocks, and data drover does not recognise, stored as a raw copy. A raw copy must come back byte
//! for byte, its all-zero regions included; used blocks must leave nothing of the old target where
//! the filesystem looks: XFS's zeroed log, a btrfs file of written zeros and f2fs's zero regions
//! broke when old target bytes survived there. Each restore is checked by the filesystem's own
//! checker and by its files (mounted read-only where this kernel has a driver, dumped by dump.f2fs
//! for f2fs; APFS, HFS+, reiserfs and JFS have no tool here that writes files). The used bytes are
//! measured against partclone's where Debian's partclone reads the filesystem, in the same test.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use drover_tests::*;

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts that two files hold the same bytes, naming the first 4 MiB region that differs.
fn assert_same_bytes(a: &Path, b: &Path, what: &str) {
    let (x, y) = (fs::read(a).unwrap(), fs::read(b).unwrap());
    assert_eq!(x.len(), y.len(), "{what}: sizes differ");
    if let Some(i) = x
        .chunks(4 * MIB as usize)
        .zip(y.chunks(4 * MIB as usize))
        .position(|(p, q)| p != q)
    {
        panic!("{what}: 4 MiB region {i} differs from the source after restore");
    }
}

/// A tree of files plus `zeros.bin`: 8 MiB of written (not sparse) zeros, the file btrfs read
/// back with checksum errors when its zero regions were left holding old bytes.
fn tree_with_zeros(env: &Env, seed: u64) -> (PathBuf, BTreeMap<PathBuf, Vec<u8>>) {
    let tree = env.path(&format!("tree-{seed}"));
    make_tree(&tree, 24 * MIB, seed);
    fs::write(tree.join("zeros.bin"), vec![0u8; 8 * MIB as usize]).unwrap();
    let want = read_tree(&tree);
    (tree, want)
}

/// Makes `kind` in `img` (a file of its final size) and copies `tree` into it through a
/// read-write mount; deletes a few files so freed blocks hold stale data.
fn mkfs_and_fill(env: &Env, kind: &str, img: &Path, tree: &Path) {
    match kind {
        "xfs" => run("mkfs.xfs", &["-q", "-f", s(img)]),
        "btrfs" => run("mkfs.btrfs", &["-q", "-f", s(img)]),
        other => panic!("no mkfs for {other}"),
    };
    let m = Mount::new("mount", &["-o", "loop", s(img)], &env.path("mnt-fill"));
    let stale = m.dir.join("stale.bin");
    random_file(&stale, 6 * MIB, 99);
    run("sync", &[]);
    run("cp", &["-r", &format!("{}/.", s(tree)), s(&m.dir)]);
    fs::remove_file(&stale).unwrap();
    run("sync", &[]);
}

fn check_fs(kind: &str, img: &Path, what: &str) {
    let (prog, args): (&str, &[&str]) = match kind {
        "xfs" => ("xfs_repair", &["-n"]),
        "btrfs" => ("btrfs", &["check", "--readonly"]),
        "f2fs" => ("fsck.f2fs", &["-f", "--dry-run"]),
        other => panic!("no checker for {other}"),
    };
    let mut a = args.to_vec();
    a.push(s(img));
    let out = run_any(prog, &a);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what}: {prog} found problems:\n{text}"
    );
    if kind == "f2fs" {
        // fsck.f2fs may exit 0 after finding problems; each check's line says Ok or Fail.
        assert!(
            text.contains("[Ok..]") && !text.contains("[Fail]"),
            "{what}: {prog}:\n{text}"
        );
    }
}

fn read_mounted(env: &Env, img: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let m = Mount::new(
        "mount",
        &["-o", "loop,ro", s(img)],
        &env.path("mnt-readback"),
    );
    read_tree(&m.dir)
}

/// The capture names `kind` in its one warning and says the area is a raw copy.
fn assert_raw_capture(env: &Env, cap: &serde_json::Value, name: &str, kind: &str) {
    let w = cap["warnings"].as_array().unwrap();
    assert_eq!(w.len(), 1, "{cap}");
    let w = w[0].as_str().unwrap();
    assert!(
        w.starts_with(kind) && w.contains("raw copy") && w.contains("restored byte for byte"),
        "{w}"
    );
    let m = env.manifest(name);
    let info = m.areas[0].fs.as_ref().unwrap();
    assert_eq!(info.kind.to_string(), "unknown");
    assert_eq!(info.detected.to_string(), kind);
    assert!(m.areas[0].is_raw_copy());
}

/// Targets for an image of `size` bytes: random bytes (written through a loop device, so the
/// block device's zero-out is used), and a disk that held the filesystem `other`.
fn targets(env: &Env, size: u64, other: &str) -> Vec<(String, PathBuf)> {
    let noisy = env.path("target-random.img");
    random_file(&noisy, size, 77);
    let prev = env.path(&format!("target-{other}.img"));
    random_file(&prev, size, 78);
    match other {
        "ext4" => {
            let t = env.path("tree-prev");
            make_tree(&t, size / 4, 5);
            run("mkfs.ext4", &["-q", "-F", "-d", s(&t), s(&prev)]);
        }
        _ => {
            let (t, _) = tree_with_zeros(env, 6);
            mkfs_and_fill(env, other, &prev, &t);
        }
    }
    vec![
        ("over random bytes".into(), noisy),
        (format!("over a disk that held {other}"), prev),
    ]
}

/// Restores `name` onto `target`: through a loop device when `via_loop`.
fn restore(env: &Env, name: &str, target: &Path, via_loop: bool) -> serde_json::Value {
    if via_loop {
        let lo = Loop::attach(target, 0, None);
        let r = env.restore(name, &lo.dev);
        drop(lo);
        r
    } else {
        env.restore(name, target)
    }
}

/// The bytes partclone stores for `img` (its tool: `tool`): the blocks in its image `out`.
/// Not its "Space in use" line, which is no measure of what it copies: partclone.btrfs prints
/// the superblock's `bytes_used` there (one copy of the data and metadata) but copies more
/// (DUP metadata's mirror, the superblocks), and partclone.f2fs prints more than it copies.
/// Its image (format v2) is a 110-byte header, the bitmap (a bit per block) and its 4-byte crc,
/// then the used blocks with a 4-byte crc after each run of them (1 MiB here, so the crcs add
/// up to less than a block): the payload over the block size, rounded down, is the block
/// count.
fn partclone_used(tool: &str, img: &Path, out: &Path) -> u64 {
    let o = run_any(tool, &["-c", "-s", s(img), "-O", s(out)]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    )
    .replace('\r', "\n");
    assert!(o.status.success(), "{tool}: {text}");
    let field = |name: &str, unit: &str| -> u64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|r| r.rsplit('=').next())
            .and_then(|r| r.trim().strip_suffix(unit))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let (block, blocks) = (
        field("Block size:", "Byte"),
        field("Device size:", "Blocks"),
    );
    let size = fs::metadata(out).unwrap().len();
    let _ = fs::remove_file(out);
    let copied = (size - 110 - blocks.div_ceil(8) - 4) / block;
    assert!(
        copied > 0 && copied <= blocks,
        "{tool}: {copied} blocks in its image of a {blocks}-block device"
    );
    copied * block
}

/// The capture read `kind` by its used blocks, with no warning, storing no more than
/// `partclone` by 2 % (measured here), and far from the whole `size`.
fn assert_used_blocks(
    env: &Env,
    cap: &serde_json::Value,
    kind: &str,
    img: &Path,
    partclone: &str,
    size: u64,
) {
    assert_eq!(cap["warnings"].as_array().unwrap().len(), 0, "{cap}");
    let m = env.manifest(kind);
    assert_eq!(m.areas[0].fs.as_ref().unwrap().kind.to_string(), kind);
    assert!(!m.areas[0].is_raw_copy());
    let ours = cap["used_bytes"].as_u64().unwrap();
    let theirs = partclone_used(partclone, img, &env.path("partclone.img"));
    eprintln!(
        "{kind}: drover stores {ours} used bytes, {partclone} {theirs} ({:.3}x)",
        ours as f64 / theirs as f64
    );
    assert!(
        ours as f64 <= theirs as f64 * 1.02,
        "{kind}: {ours} used bytes stored, {partclone} uses {theirs}"
    );
    // Far from the whole disk: the files and the metadata, not the free space.
    assert!(ours < size / 2, "{ours} of {size}");
}

/// Made, filled, captured by used blocks (no more than partclone's, its tool `partclone`, by
/// 2 %) and restored twice.
fn mountable_roundtrip(kind: &str, other: &str, size: u64, needs: &[&str], partclone: &str) {
    if !require(kind, needs) {
        return;
    }
    let env = Env::new();
    let img = env.path("source.img");
    sparse_file(&img, size);
    let (tree, want) = tree_with_zeros(&env, 1);
    mkfs_and_fill(&env, kind, &img, &tree);
    check_fs(kind, &img, "source");

    let cap = env.capture(&img, kind);
    assert_used_blocks(&env, &cap, kind, &img, partclone, size);
    for (i, (what, target)) in targets(&env, size, other).into_iter().enumerate() {
        let what = format!("{kind} {what}");
        restore(&env, kind, &target, i == 0);
        check_fs(kind, &target, &what);
        assert_same_files(&want, &read_mounted(&env, &target), &what);
    }
}

#[test]
fn xfs_used_blocks_restore_over_old_data() {
    mountable_roundtrip(
        "xfs",
        "btrfs",
        320 * MIB,
        &[
            "root",
            "mkfs.xfs",
            "xfs_repair",
            "mkfs.btrfs",
            "partclone.xfs",
            "losetup",
            "mount",
        ],
        "partclone.xfs",
    );
}

#[test]
fn btrfs_used_blocks_restore_over_old_data() {
    mountable_roundtrip(
        "btrfs",
        "xfs",
        320 * MIB,
        &[
            "root",
            "mkfs.btrfs",
            "btrfs",
            "mkfs.xfs",
            "partclone.btrfs",
            "losetup",
            "mount",
        ],
        "partclone.btrfs",
    );
}

/// Every file dump.f2fs finds in `img`, by name (it writes them flat into `lost_found`, asking
/// before each; [`make_tree`]'s names are unique across folders). Inodes 4 on: the root is 3.
fn dump_f2fs(env: &Env, img: &Path, inodes: u32) -> BTreeMap<PathBuf, Vec<u8>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let cwd = env.path("f2fs-dump");
    fs::create_dir_all(&cwd).unwrap();
    for ino in 4..4 + inodes {
        let mut child = Command::new("dump.f2fs")
            .args(["-i", &format!("{ino:#x}"), s(img)])
            .current_dir(&cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(b"y\n");
        child.wait().unwrap();
    }
    let got = read_tree(&cwd.join("lost_found"));
    fs::remove_dir_all(&cwd).unwrap();
    got
}

/// `tree`'s files by name alone, as [`dump_f2fs`] gives them.
fn flat(tree: &BTreeMap<PathBuf, Vec<u8>>) -> BTreeMap<PathBuf, Vec<u8>> {
    tree.iter()
        .map(|(p, v)| (PathBuf::from(p.file_name().unwrap()), v.clone()))
        .collect()
}

#[test]
fn f2fs_used_blocks_restore_over_old_data() {
    if !require(
        "f2fs",
        &[
            "root",
            "mkfs.f2fs",
            "sload.f2fs",
            "fsck.f2fs",
            "dump.f2fs",
            "partclone.f2fs",
            "mkfs.ext4",
            "losetup",
        ],
    ) {
        return;
    }
    // No f2fs driver in this kernel: filled by sload.f2fs, checked by fsck.f2fs, files read
    // back by dump.f2fs.
    let env = Env::new();
    let size = 128 * MIB;
    let img = env.path("source.img");
    sparse_file(&img, size);
    let (tree, want) = tree_with_zeros(&env, 2);
    let want = flat(&want);
    run("mkfs.f2fs", &["-q", "-f", s(&img)]);
    run("sload.f2fs", &["-f", s(&tree), s(&img)]);
    check_fs("f2fs", &img, "source");
    // Inodes: the files, the folders and some to spare.
    let inodes = want.len() as u32 + 10;
    assert_same_files(&want, &dump_f2fs(&env, &img, inodes), "f2fs source");

    let cap = env.capture(&img, "f2fs");
    assert_used_blocks(&env, &cap, "f2fs", &img, "partclone.f2fs", size);
    for (i, (what, target)) in targets(&env, size, "ext4").into_iter().enumerate() {
        let what = format!("f2fs {what}");
        restore(&env, "f2fs", &target, i == 0);
        check_fs("f2fs", &target, &what);
        assert_same_files(&want, &dump_f2fs(&env, &target, inodes), &what);
    }
}

#[test]
fn apfs_used_blocks_restore_over_old_data() {
    if !require(
        "apfs",
        &[
            "root",
            "mkapfs",
            "apfsck",
            "partclone.apfs",
            "mkfs.ext4",
            "losetup",
        ],
    ) {
        return;
    }
    // No APFS driver here and no tool that writes files: the container mkapfs makes, with its
    // empty volume, checked by apfsck (-cuw: unknown and odd things are reported too), which
    // reads every object and compares the space manager's bitmaps with what they hold.
    let env = Env::new();
    let size = 256 * MIB;
    let img = env.path("source.img");
    sparse_file(&img, size);
    run("mkapfs", &["-L", "lab", s(&img)]);
    run("apfsck", &["-cuw", s(&img)]);
    let cap = env.capture(&img, "apfs");
    assert_used_blocks(&env, &cap, "apfs", &img, "partclone.apfs", size);
    for (i, (what, target)) in targets(&env, size, "ext4").into_iter().enumerate() {
        restore(&env, "apfs", &target, i == 0);
        let out = run_any("apfsck", &["-cuw", s(&target)]);
        assert!(
            out.status.success(),
            "apfs {what}: apfsck: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A filesystem this kernel has no driver for and its tools write no files into: made by
/// `mkfs` (its arguments, then the image), captured by its used blocks with no warning, and
/// restored over random bytes and over an ext4; `checker` (its arguments, then the image)
/// passes on each.
fn checked_roundtrip(kind: &str, mkfs: &[&str], checker: &[&str], needs: &[&str]) {
    if !require(kind, needs) {
        return;
    }
    let env = Env::new();
    let size = 256 * MIB;
    let img = env.path("source.img");
    sparse_file(&img, size);
    let with_img = |cmd: &[&str], img: &Path| -> std::process::Output {
        let mut a = cmd[1..].to_vec();
        a.push(s(img));
        run_any(cmd[0], &a)
    };
    let out = with_img(mkfs, &img);
    assert!(out.status.success(), "{kind}: {mkfs:?}: {out:?}");
    let cap = env.capture(&img, kind);
    assert_eq!(cap["warnings"].as_array().unwrap().len(), 0, "{cap}");
    let m = env.manifest(kind);
    assert_eq!(m.areas[0].fs.as_ref().unwrap().kind.to_string(), kind);
    let used = cap["used_bytes"].as_u64().unwrap();
    assert!(used < size / 2, "{kind}: {used} of {size}");
    for (i, (what, target)) in targets(&env, size, "ext4").into_iter().enumerate() {
        restore(&env, kind, &target, i == 0);
        let out = with_img(checker, &target);
        assert!(
            out.status.success(),
            "{kind} {what}: {checker:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn reiserfs_used_blocks_restore_over_old_data() {
    checked_roundtrip(
        "reiserfs",
        &["mkreiserfs", "-q", "-f"],
        &["reiserfsck", "--check", "-y", "-q"],
        &["root", "mkreiserfs", "reiserfsck", "mkfs.ext4", "losetup"],
    );
}

#[test]
fn jfs_used_blocks_restore_over_old_data() {
    checked_roundtrip(
        "jfs",
        &["mkfs.jfs", "-q"],
        &["fsck.jfs", "-n", "-f"],
        &["root", "mkfs.jfs", "fsck.jfs", "mkfs.ext4", "losetup"],
    );
}

#[test]
fn hfsplus_used_blocks_restore_over_old_data() {
    if !require(
        "hfsplus",
        &["xorriso", "partclone.hfsp", "mkfs.ext4", "losetup", "root"],
    ) {
        return;
    }
    // Debian 12 has no mkfs for HFS+: xorriso's ISO hybrid carries an HFS+ volume (its Apple
    // partition) whose catalog lies over the ISO's files, every block in use. Cut out, it is
    // captured by its allocation file and must come back byte for byte.
    let env = Env::new();
    let (tree, _) = tree_with_zeros(&env, 3);
    let iso = env.path("hybrid.iso");
    run(
        "xorriso",
        &["-as", "mkisofs", "-hfsplus", "-o", s(&iso), s(&tree)],
    );
    let data = fs::read(&iso).unwrap();
    let start = (0..data.len() - 2048)
        .step_by(512)
        .find(|&p| matches!(&data[p + 1024..p + 1028], b"H+\0\x04" | b"HX\0\x05"))
        .expect("an HFS+ volume in the ISO");
    // The volume header is big-endian.
    #[allow(clippy::big_endian_bytes)]
    let be32 = |o: usize| u32::from_be_bytes(data[o..o + 4].try_into().unwrap());
    let size = u64::from(be32(start + 1024 + 40)) * u64::from(be32(start + 1024 + 44));
    let img = env.path("hfsplus.img");
    fs::write(&img, &data[start..start + size as usize]).unwrap();
    let cap = env.capture(&img, "hfsplus");
    assert_used_blocks(&env, &cap, "hfsplus", &img, "partclone.hfsp", u64::MAX);
    for (i, (what, target)) in targets(&env, size, "ext4").into_iter().enumerate() {
        restore(&env, "hfsplus", &target, i == 0);
        assert_same_bytes(&img, &target, &format!("hfsplus {what}"));
    }
}

#[test]
fn unknown_data_restores_byte_for_byte_over_old_data() {
    if !require("unknown data", &["mkfs.ext4"]) {
        return;
    }
    let env = Env::new();
    let size = 64 * MIB;
    let img = env.path("blob.img");
    sparse_file(&img, size);
    // Non-zero bytes in regions 1 and 9 (4 MiB regions); everything else zero.
    let mut data = fs::read(&img).unwrap();
    data[(4 << 20) + 17] = 0xAA;
    data[(36 << 20) + 4095] = 0x55;
    fs::write(&img, &data).unwrap();
    let cap = env.capture(&img, "blob");
    assert_eq!(cap["used_bytes"].as_u64().unwrap(), 8 * MIB, "{cap}");
    assert_raw_capture(&env, &cap, "blob", "unknown");
    for (what, target) in targets(&env, size, "ext4") {
        let r = env.restore("blob", &target);
        assert_eq!(r["bytes_zeroed"].as_u64().unwrap(), size - 8 * MIB, "{r}");
        assert_same_bytes(&img, &target, &format!("unknown data {what}"));
    }
}
