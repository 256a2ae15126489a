//! Clonezilla images imported as a user meets them: Debian's `ocs-sr` saves a disk (a GPT one
//! with ext4, NTFS and a partition of unknown bytes; an MBR one with logical partitions, a swap
//! partition and data hidden after the MBR) in batch mode, split into 1 MiB pieces;
//! `drover image import DIR` makes an ordinary image of it, which is restored over random
//! bytes and checked with the filesystems' own tools and by reading the files back. The same
//! pieces recompressed with every compressor drover reads import to the same chunks, and a
//! damaged or missing piece is refused with its name. A FOG directory (made with Debian's
//! partclone, pigz/zstd and split under the names FOS's scripts write) imports the same way.

use std::fs;
use std::path::{Path, PathBuf};

use drover_tests::*;

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const NEEDS: &[&str] = &[
    "root",
    "ocs-sr",
    "partx",
    "losetup",
    "sgdisk",
    "sfdisk",
    "mkfs.ext4",
    "mkntfs",
    "ntfs-3g",
    "mkfs.fat",
    "mcopy",
    "fsck.fat",
    "mkswap",
    "blkid",
    "zstd",
    "gzip",
    "xz",
    "lz4",
    "bzip2",
];

/// Saves `disk` with `ocs-sr savedisk` (partclone, zstd, 1 MiB pieces, SHA1SUMS) into
/// `root/NAME`; returns the image directory and the loop device's name the files carry.
fn ocs_savedisk(env: &Env, disk: &Path, name: &str) -> (PathBuf, String) {
    let root = env.path("partimag");
    fs::create_dir_all(&root).unwrap();
    let lo = Loop::attach(disk, 0, None);
    // The kernel here does not scan a loop device's partitions by itself; partx adds them.
    run("partx", &["-a", s(&lo.dev)]);
    let dev = lo.dev.file_name().unwrap().to_str().unwrap().to_string();
    let out = run_any(
        "ocs-sr",
        &[
            "-q2",
            "-b",
            "-j2",
            "-z9p",
            "-i",
            "1",
            "-gs",
            "-sfsck",
            "-scs",
            "-senc",
            "-p",
            "true",
            "-or",
            s(&root),
            "savedisk",
            name,
            &dev,
        ],
    );
    let _ = run_any("partx", &["-d", s(&lo.dev)]);
    drop(lo);
    let dir = root.join(name);
    assert!(
        out.status.success() && dir.join("disk").is_file(),
        "ocs-sr savedisk failed: {}",
        text(&out)
    );
    (dir, dev)
}

/// The files under `dir` of a filesystem `mount` can read, at `offset` of `img`.
fn files_at(
    env: &Env,
    img: &Path,
    offset: u64,
    len: u64,
    how: &str,
) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let lo = Loop::attach(img, offset, Some(len));
    let dir = env.path(&format!("mnt-{offset}"));
    let m = match how {
        "ntfs" => Mount::new("ntfs-3g", &["-o", "ro", s(&lo.dev)], &dir),
        _ => Mount::new("mount", &["-o", "ro", s(&lo.dev)], &dir),
    };
    let files = read_tree(&m.dir);
    drop(m);
    drop(lo);
    files
}

fn import(env: &Env, dir: &Path, name: &str) -> String {
    let out = env.drover(&["image", "import", s(dir), "--name", name]);
    let all = text(&out);
    assert!(
        out.status.success(),
        "import of {} failed:\n{all}",
        dir.display()
    );
    all
}

/// A copy of image directory `src` with partition file `base`'s pieces recompressed by
/// `cmd` (`None`: stored uncompressed) under the suffix Clonezilla gives them.
fn recompressed(env: &Env, src: &Path, base: &str, suffix: &str, cmd: Option<&str>) -> PathBuf {
    let dir = env.path(&format!("re-{suffix}"));
    fs::create_dir_all(&dir).unwrap();
    let mut pieces: Vec<PathBuf> = Vec::new();
    for e in fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let n = p.file_name().unwrap().to_str().unwrap().to_string();
        if n.starts_with(&format!("{base}.")) {
            pieces.push(p);
        } else if n != "SHA1SUMS" {
            fs::copy(&p, dir.join(&n)).unwrap();
        }
    }
    pieces.sort();
    let whole = env.path(&format!("whole-{suffix}"));
    let mut data = Vec::new();
    for p in &pieces {
        data.extend_from_slice(&fs::read(p).unwrap());
    }
    fs::write(env.path("joined.zst"), &data).unwrap();
    run(
        "sh",
        &[
            "-c",
            &format!("zstd -dc {} > {}", s(&env.path("joined.zst")), s(&whole)),
        ],
    );
    let stem = base.trim_end_matches(".zst").to_string();
    let packed = env.path(&format!("packed-{suffix}"));
    match cmd {
        Some(c) => run(
            "sh",
            &["-c", &format!("{c} < {} > {}", s(&whole), s(&packed))],
        ),
        None => {
            fs::rename(&whole, &packed).unwrap();
            String::new()
        }
    };
    let prefix = dir.join(format!("{stem}.{suffix}."));
    run("split", &["-b", "1M", "-a", "2", s(&packed), s(&prefix)]);
    dir
}

#[test]
fn a_clonezilla_gpt_disk_imports_restores_and_every_compressor_reads_the_same() {
    if !require("clonezilla_gpt", NEEDS) {
        return;
    }
    let env = Env::new();
    let disk = env.path("source.img");
    sparse_file(&disk, 96 * MIB);
    run(
        "sgdisk",
        &[
            "-o",
            "-n1:2048:+40M",
            "-t1:8300",
            "-n2:0:+24M",
            "-t2:0700",
            "-n3:0:+8M",
            "-t3:8300",
            s(&disk),
        ],
    );
    let tree = env.path("tree");
    make_tree(&tree, 12 * MIB, 61);
    let ext4 = env.path("p1.img");
    sparse_file(&ext4, 40 * MIB);
    run("mkfs.ext4", &["-q", "-F", "-d", s(&tree), s(&ext4)]);
    write_into(&disk, 2048 * 512, &ext4);
    let ntfs = env.path("p2.img");
    sparse_file(&ntfs, 24 * MIB);
    run("mkntfs", &["-Q", "-F", "-L", "CZ", s(&ntfs)]);
    write_into(&disk, (2048 + 40 * 2048) * 512, &ntfs);
    let raw = env.path("p3.img");
    random_file(&raw, 8 * MIB, 62);
    write_into(&disk, (2048 + 64 * 2048) * 512, &raw);
    let ntfs_files = files_at(&env, &disk, (2048 + 40 * 2048) * 512, 24 * MIB, "ntfs");

    let (dir, dev) = ocs_savedisk(&env, &disk, "gpt-img");
    let listing: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let p1 = format!("{dev}p1.ext4-ptcl-img.zst");
    assert!(
        listing.contains(&format!("{p1}.ab")),
        "no split pieces: {listing:?}"
    );

    let out = import(&env, &dir, "cz");
    assert!(
        out.contains("partclone EXTFS image (format 0002), zstd"),
        "{out}"
    );
    assert!(out.contains("partclone NTFS image"), "{out}");
    assert!(
        out.contains(&format!("{dev}p3.dd-ptcl-img.zst: raw image")),
        "{out}"
    );

    // Restored over random bytes: the table checks, each filesystem is clean, files equal.
    let target = env.path("target.img");
    random_file(&target, 96 * MIB, 63);
    env.restore("cz", &target);
    let v = run("sgdisk", &["-v", s(&target)]);
    assert!(v.contains("No problems found"), "{v}");
    assert_eq!(
        run("sfdisk", &["-d", s(&target)]).replace(s(&target), "D"),
        run("sfdisk", &["-d", s(&disk)]).replace(s(&disk), "D")
    );
    let p1_off = 2048 * 512;
    let lo = Loop::attach(&target, p1_off, Some(40 * MIB));
    run("e2fsck", &["-fn", s(&lo.dev)]);
    drop(lo);
    assert_same_files(
        &read_tree(&tree),
        &files_at(&env, &target, p1_off, 40 * MIB, "ext4"),
        "ext4 from Clonezilla",
    );
    assert_same_files(
        &ntfs_files,
        &files_at(&env, &target, (2048 + 40 * 2048) * 512, 24 * MIB, "ntfs"),
        "NTFS from Clonezilla",
    );
    assert_eq!(
        read_range(&target, (2048 + 64 * 2048) * 512, 8 * MIB),
        fs::read(&raw).unwrap()
    );

    // Every compressor Clonezilla offers that drover reads: the same data, no new chunks.
    for (suffix, cmd) in [
        ("gz", Some("gzip -c")),
        ("xz", Some("xz -c -T1")),
        ("lz4", Some("lz4 -c")),
        ("bz2", Some("bzip2 -c")),
        ("uncomp", None),
    ] {
        let d = recompressed(&env, &dir, &p1, suffix, cmd);
        let name = format!("cz-{suffix}");
        let j = env.json(&["image", "import", s(&d), "--name", &name]);
        assert_eq!(j["new_chunks"], 0, "{suffix}: {j}");
        assert_eq!(
            env.manifest(&name).areas,
            env.manifest("cz").areas,
            "{suffix}"
        );
    }

    // Damage: SHA1SUMS names the piece; without the sums, partclone's checksums catch it and
    // the message names the pieces the failing group was read from.
    let d = recompressed(&env, &dir, &p1, "gz-damaged", Some("gzip -c"));
    let ab = dir.join(format!("{p1}.ab"));
    let mut bytes = fs::read(&ab).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&ab, &bytes).unwrap();
    let err = env.fails(&["image", "import", s(&dir), "--name", "bad"]);
    assert!(
        err.contains(&format!("{p1}.ab is damaged")) && err.contains("SHA1SUMS"),
        "{err}"
    );
    let piece = d.join(format!("{}.gz-damaged.ab", p1.trim_end_matches(".zst")));
    let mut bytes = fs::read(&piece).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&piece, &bytes).unwrap();
    let err = env.fails(&["image", "import", s(&d), "--name", "bad"]);
    assert!(
        err.contains("is damaged") && err.contains(".gz-damaged.ab"),
        "{err}"
    );
    fs::remove_file(&piece).unwrap();
    let err = env.fails(&["image", "import", s(&d), "--name", "bad"]);
    assert!(err.contains(".gz-damaged.ab is missing"), "{err}");
    assert!(
        env.store().resolve("bad").is_err(),
        "a damaged import left an image"
    );
}

#[test]
fn a_clonezilla_mbr_disk_keeps_its_logical_partitions_swap_and_hidden_data() {
    if !require("clonezilla_mbr", NEEDS) {
        return;
    }
    let env = Env::new();
    let disk = env.path("source.img");
    sparse_file(&disk, 80 * MIB);
    run_stdin(
        "sfdisk",
        &["-q", s(&disk)],
        "label: dos\n2048,40960,83\n43008,,5\n45056,20480,c\n67584,,82\n",
    );
    // Boot-loader bytes between the MBR and the first partition (as GRUB's core image sits).
    let hidden: Vec<u8> = (0..2047 * 512).map(|i| (i * 7 % 251) as u8).collect();
    patch(&disk, 512, &hidden);
    let tree = env.path("tree");
    make_tree(&tree, 6 * MIB, 71);
    let ext4 = env.path("p1.img");
    sparse_file(&ext4, 20 * MIB);
    run("mkfs.ext4", &["-q", "-F", "-d", s(&tree), s(&ext4)]);
    write_into(&disk, 2048 * 512, &ext4);
    let fat = env.path("p5.img");
    sparse_file(&fat, 10 * MIB);
    run("mkfs.fat", &["-F", "16", "-n", "CZFAT", s(&fat)]);
    let note = env.path("NOTE.TXT");
    fs::write(&note, b"from a logical partition\n").unwrap();
    run("mcopy", &["-i", s(&fat), s(&note), "::NOTE.TXT"]);
    write_into(&disk, 45056 * 512, &fat);
    let lo = Loop::attach(&disk, 67584 * 512, None);
    run(
        "mkswap",
        &[
            "-L",
            "czswap",
            "-U",
            "6f0e3f2a-8d55-4b9e-9a51-0a8e7f3c2b11",
            s(&lo.dev),
        ],
    );
    drop(lo);

    let (dir, dev) = ocs_savedisk(&env, &disk, "mbr-img");
    assert!(dir.join(format!("{dev}-hidden-data-after-mbr")).is_file());
    assert!(dir.join(format!("swappt-{dev}p6.info")).is_file());
    let out = import(&env, &dir, "czmbr");
    assert!(out.contains("swap made again"), "{out}");

    let target = env.path("target.img");
    random_file(&target, 80 * MIB, 72);
    env.restore("czmbr", &target);
    assert_eq!(
        run("sfdisk", &["-d", s(&target)]).replace(s(&target), "D"),
        run("sfdisk", &["-d", s(&disk)]).replace(s(&disk), "D")
    );
    assert_eq!(
        read_range(&target, 0, 2048 * 512),
        read_range(&disk, 0, 2048 * 512)
    );
    let lo = Loop::attach(&target, 2048 * 512, Some(20 * MIB));
    run("e2fsck", &["-fn", s(&lo.dev)]);
    drop(lo);
    assert_same_files(
        &read_tree(&tree),
        &files_at(&env, &target, 2048 * 512, 20 * MIB, "ext4"),
        "ext4",
    );
    let p5 = env.path("p5-back.img");
    extract(&target, 45056 * 512, 10 * MIB, &p5);
    run("fsck.fat", &["-n", s(&p5)]);
    let back = env.path("NOTE-back.TXT");
    run("mcopy", &["-i", s(&p5), "::NOTE.TXT", s(&back)]);
    assert_eq!(fs::read(&back).unwrap(), fs::read(&note).unwrap());
    let swap = env.path("swap-back.img");
    extract(&target, 67584 * 512, (80 * MIB) - 67584 * 512, &swap);
    let id = run("blkid", &["-o", "export", s(&swap)]);
    assert!(
        id.contains("TYPE=swap")
            && id.contains("LABEL=czswap")
            && id.contains("UUID=6f0e3f2a-8d55-4b9e-9a51-0a8e7f3c2b11"),
        "{id}"
    );
}

#[test]
fn a_fog_directory_imports_and_restores() {
    if !require(
        "fog_import",
        &[
            "root",
            "sgdisk",
            "sfdisk",
            "partclone.extfs",
            "partclone.ntfs",
            "mkntfs",
            "ntfs-3g",
            "pigz",
            "zstd",
            "mkswap",
            "blkid",
            "losetup",
        ],
    ) {
        return;
    }
    let env = Env::new();
    let disk = env.path("source.img");
    sparse_file(&disk, 80 * MIB);
    run(
        "sgdisk",
        &[
            "-o",
            "-n1:2048:+40M",
            "-t1:8300",
            "-n2:0:+24M",
            "-t2:0700",
            "-n3:0:0",
            "-t3:8200",
            s(&disk),
        ],
    );
    let tree = env.path("tree");
    make_tree(&tree, 10 * MIB, 81);
    let ext4 = env.path("p1.img");
    sparse_file(&ext4, 40 * MIB);
    run("mkfs.ext4", &["-q", "-F", "-d", s(&tree), s(&ext4)]);
    write_into(&disk, 2048 * 512, &ext4);
    let ntfs = env.path("p2.img");
    sparse_file(&ntfs, 24 * MIB);
    run("mkntfs", &["-Q", "-F", "-L", "FOG", s(&ntfs)]);
    write_into(&disk, (2048 + 40 * 2048) * 512, &ntfs);
    let ntfs_files = files_at(&env, &disk, (2048 + 40 * 2048) * 512, 24 * MIB, "ntfs");
    let swap_at = (2048 + 64 * 2048) * 512;
    let uuid = "3c0a9d7e-52b1-4f7a-b0c4-9e1d2f3a4b5c";
    let lo = Loop::attach(&disk, swap_at, None);
    run("mkswap", &["-U", uuid, s(&lo.dev)]);
    drop(lo);

    // The directory FOS's fog.upload leaves (partclone images through pigz and split -a 3 -d,
    // or zstd into .000; the table from sfdisk -d and sgdisk -b; the swap partition's UUID).
    let dir = env.path("fog/lab-image");
    fs::create_dir_all(&dir).unwrap();
    run("sgdisk", &["-b", s(&dir.join("d1.mbr")), s(&disk)]);
    let dump = run("sfdisk", &["-d", s(&disk)]).replace(s(&disk), "/dev/sda");
    fs::write(dir.join("d1.partitions"), dump).unwrap();
    fs::write(dir.join("d1.original.swapuuids"), format!("3 {uuid}\n")).unwrap();
    let sh = |cmd: String| run("bash", &["-c", &format!("set -o pipefail; {cmd}")]);
    sh(format!(
        "partclone.extfs -q -c -s {} -o - | pigz -c | split -a 3 -d -b 1m - {}/d1p1.img.",
        s(&ext4),
        s(&dir)
    ));
    sh(format!(
        "partclone.ntfs -q -c -s {} -o - | zstd -q -c > {}/d1p2.img.000",
        s(&ntfs),
        s(&dir)
    ));
    assert!(dir.join("d1p1.img.001").is_file());

    let out = import(&env, &dir, "fog");
    assert!(
        out.contains("d1p1.img: partclone EXTFS image (format 0002), gzip"),
        "{out}"
    );
    assert!(
        out.contains("d1p2.img: partclone NTFS image (format 0002), zstd"),
        "{out}"
    );
    assert!(out.contains("swap made again"), "{out}");
    let target = env.path("target.img");
    random_file(&target, 80 * MIB, 82);
    env.restore("fog", &target);
    let v = run("sgdisk", &["-v", s(&target)]);
    assert!(v.contains("No problems found"), "{v}");
    let lo = Loop::attach(&target, 2048 * 512, Some(40 * MIB));
    run("e2fsck", &["-fn", s(&lo.dev)]);
    drop(lo);
    assert_same_files(
        &read_tree(&tree),
        &files_at(&env, &target, 2048 * 512, 40 * MIB, "ext4"),
        "ext4 from FOG",
    );
    assert_same_files(
        &ntfs_files,
        &files_at(&env, &target, (2048 + 40 * 2048) * 512, 24 * MIB, "ntfs"),
        "NTFS from FOG",
    );
    let swap = env.path("swap-back.img");
    extract(&target, swap_at, 80 * MIB - swap_at - 33 * 512, &swap);
    let id = run("blkid", &["-o", "export", s(&swap)]);
    assert!(
        id.contains("TYPE=swap") && id.contains(&format!("UUID={uuid}")),
        "{id}"
    );

    // A damaged piece: partclone's checksums catch it, and the message names the piece.
    let piece = dir.join("d1p1.img.001");
    let mut bytes = fs::read(&piece).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&piece, &bytes).unwrap();
    let err = env.fails(&["image", "import", s(&dir), "--name", "fog-bad"]);
    assert!(
        err.contains("is damaged") && err.contains("d1p1.img.001"),
        "{err}"
    );
}
