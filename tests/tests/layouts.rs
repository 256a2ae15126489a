//! Restoring onto a disk larger than the image's: the last partition and its filesystem grow
//! to the disk's end by default (`--layout grow`), `--layout keep` leaves the captured layout,
//! `--layout proportional` scales every partition. Onto a smaller disk the filesystems shrink
//! to fit, or the restore is refused naming the partition. Each result is checked as a user would:
//! the partition table's own checker, the filesystem's checker, the filesystem's size as its
//! superblock says, and the files read back by the filesystem's own tools.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use drover_tests::*;

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A partition as `sgdisk -i` or `sfdisk -J` tells it: first byte and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    start: u64,
    size: u64,
}

fn gpt_part(disk: &Path, n: u32) -> Extent {
    let info = run("sgdisk", &[&format!("-i{n}"), s(disk)]);
    let num = |key: &str| -> u64 {
        info.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().find_map(|w| w.parse().ok()))
            .unwrap_or_else(|| panic!("{key} in {info}"))
    };
    let (first, last) = (num("First sector:"), num("Last sector:"));
    Extent {
        start: first * 512,
        size: (last - first + 1) * 512,
    }
}

fn sgdisk_ok(disk: &Path, what: &str) {
    let out = run("sgdisk", &["-v", s(disk)]);
    assert!(
        out.contains("No problems found"),
        "{what}: sgdisk -v: {out}"
    );
}

/// Where a partition may end on a GPT disk of `size` bytes: before the backup table, on a
/// MiB boundary.
fn gpt_end(size: u64) -> u64 {
    (size - 33 * 512) / MIB * MIB
}

/// The size in bytes a filesystem's own superblock gives itself.
fn fs_size(disk: &Path, p: Extent, kind: &str) -> u64 {
    let sb = read_range(disk, p.start, 128 << 10);
    let le = |o: usize, n: usize| -> u64 {
        sb[o..o + n]
            .iter()
            .rev()
            .fold(0u64, |v, &b| (v << 8) | u64::from(b))
    };
    let be = |o: usize, n: usize| -> u64 {
        sb[o..o + n].iter().fold(0, |v, &b| (v << 8) | u64::from(b))
    };
    match kind {
        "ext4" => le(1024 + 4, 4) * (1024 << le(1024 + 24, 4)),
        "xfs" => be(8, 8) * be(4, 4),
        "btrfs" => le(0x10000 + 0x70, 8),
        "ntfs" => le(0x28, 8) * le(0x0B, 2),
        "fat32" => le(0x20, 4) * le(0x0B, 2),
        "fat16" => {
            let sectors = match le(0x13, 2) {
                0 => le(0x20, 4),
                n => n,
            };
            sectors * le(0x0B, 2)
        }
        other => panic!("no size for {other}"),
    }
}

/// The partition `p` of `disk` as a file of its own, for the checkers.
fn part_file(env: &Env, disk: &Path, p: Extent, name: &str) -> PathBuf {
    let f = env.path(name);
    extract(disk, p.start, p.size, &f);
    f
}

/// An MBR disk's partitions as `sfdisk -J` lists them: first byte, length and type.
fn mbr_parts(disk: &Path) -> Vec<(u64, u64, String)> {
    let v: serde_json::Value = serde_json::from_str(&run("sfdisk", &["-J", s(disk)])).unwrap();
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap() * 512,
                p["size"].as_u64().unwrap() * 512,
                p["type"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn check_ok(prog: &str, args: &[&str], what: &str) {
    let out = run_any(prog, args);
    assert!(
        out.status.success(),
        "{what}: {prog} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Checks the ext4 at `p`: e2fsck clean, the files `want`.
fn check_ext4(env: &Env, disk: &Path, p: Extent, want: &BTreeMap<PathBuf, Vec<u8>>, what: &str) {
    let f = part_file(env, disk, p, "check-ext4.img");
    check_ok("e2fsck", &["-fn", s(&f)], what);
    let out = env.path("readback-ext4");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).unwrap();
    run("debugfs", &["-R", &format!("rdump / {}", s(&out)), s(&f)]);
    let mut got = read_tree(&out);
    got.retain(|k, _| !k.starts_with("lost+found"));
    assert_same_files(want, &got, what);
    fs::remove_file(&f).unwrap();
}

/// Checks the FAT at `p`: fsck.vfat clean, the files `want`.
fn check_fat(env: &Env, disk: &Path, p: Extent, want: &BTreeMap<PathBuf, Vec<u8>>, what: &str) {
    let f = part_file(env, disk, p, "check-fat.img");
    check_ok("fsck.vfat", &["-n", s(&f)], what);
    let out = env.path("readback-fat");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).unwrap();
    run("mcopy", &["-s", "-n", "-i", s(&f), "::*", s(&out)]);
    assert_same_files(want, &read_tree(&out), what);
    fs::remove_file(&f).unwrap();
}

/// A FAT32 of `size` bytes holding a tree made from `seed`; returns the file and the tree.
fn fat32(env: &Env, size: u64, seed: u64) -> (PathBuf, BTreeMap<PathBuf, Vec<u8>>) {
    let f = env.path(&format!("fat-{seed}.img"));
    sparse_file(&f, size);
    run("mkfs.vfat", &["-F", "32", s(&f)]);
    let tree = env.path(&format!("tree-{seed}"));
    make_tree(&tree, size / 5, seed);
    mcopy_tree(&f, &tree);
    (f, read_tree(&tree))
}

/// Copies the tree `dir` into the root of the FAT in `img`.
fn mcopy_tree(img: &Path, dir: &Path) {
    let tops: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path().to_str().unwrap().to_string())
        .collect();
    let mut a = vec!["-s", "-i", s(img)];
    a.extend(tops.iter().map(String::as_str));
    a.push("::/");
    run("mcopy", &a);
}

/// An ext4 of `size` bytes holding a tree made from `seed`.
fn ext4(env: &Env, size: u64, seed: u64) -> (PathBuf, BTreeMap<PathBuf, Vec<u8>>) {
    let f = env.path(&format!("ext4-{seed}.img"));
    sparse_file(&f, size);
    let tree = env.path(&format!("tree-{seed}"));
    make_tree(&tree, size / 4, seed);
    run("mkfs.ext4", &["-q", "-F", "-d", s(&tree), s(&f)]);
    (f, read_tree(&tree))
}

const GPT_TOOLS: &[&str] = &[
    "root",
    "sgdisk",
    "mkfs.ext4",
    "e2fsck",
    "resize2fs",
    "debugfs",
    "mkfs.vfat",
    "fsck.vfat",
    "mcopy",
];

/// The golden disk, captured as `golden`: 256 MiB, GPT, an EFI system partition (FAT32) and
/// an ext4 root to the disk's end, both holding files.
struct Golden {
    disk: PathBuf,
    esp: Extent,
    root: Extent,
    esp_files: BTreeMap<PathBuf, Vec<u8>>,
    root_files: BTreeMap<PathBuf, Vec<u8>>,
}

fn golden(env: &Env) -> Golden {
    let disk = env.path("golden.img");
    sparse_file(&disk, 256 * MIB);
    run(
        "sgdisk",
        &[
            "-o",
            "-n1:2048:+64M",
            "-t1:EF00",
            "-n2:0:0",
            "-t2:8300",
            s(&disk),
        ],
    );
    let (esp, root) = (gpt_part(&disk, 1), gpt_part(&disk, 2));
    let (esp_img, esp_files) = fat32(env, esp.size, 1);
    let (root_img, root_files) = ext4(env, root.size, 2);
    write_into(&disk, esp.start, &esp_img);
    write_into(&disk, root.start, &root_img);
    env.capture(&disk, "golden");
    Golden {
        disk,
        esp,
        root,
        esp_files,
        root_files,
    }
}

#[test]
fn a_gpt_disk_grows_onto_a_target_twice_its_size() {
    if !require("layout grow", GPT_TOOLS) {
        return;
    }
    let env = Env::new();
    let Golden {
        disk,
        esp,
        root,
        esp_files,
        root_files,
    } = golden(&env);

    // Grow (the default): the root partition reaches the end, its ext4 fills it.
    let size = 512 * MIB;
    let target = env.path("twice.img");
    random_file(&target, size, 3);
    let r = env.restore("golden", &target);
    assert_eq!(
        r["read_back"], false,
        "one target is read back when asked: {r}"
    );
    let changes = r["layout_changes"].to_string();
    assert!(changes.contains("partition 2 (ext4) grown"), "{r}");
    sgdisk_ok(&target, "grown");
    assert_eq!(gpt_part(&target, 1), esp, "the ESP stays as it was");
    let grown = gpt_part(&target, 2);
    assert_eq!(grown.start, root.start);
    assert_eq!(
        grown.start + grown.size,
        gpt_end(size),
        "root reaches the disk's end"
    );
    let fs = fs_size(&target, grown, "ext4");
    assert!(
        fs <= grown.size && grown.size - fs < 4096,
        "ext4 of {fs} bytes in a {}-byte partition",
        grown.size
    );
    check_ext4(&env, &target, grown, &root_files, "grown");
    check_fat(&env, &target, esp, &esp_files, "grown");
    fs::remove_file(&target).unwrap();

    // Keep: the captured layout, the root filesystem its captured size.
    random_file(&target, size, 4);
    let r = env.json(&[
        "image",
        "restore",
        "golden",
        s(&target),
        "--layout",
        "keep",
        "--read-back",
    ]);
    assert_eq!(r["layout_changes"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["read_back"], true, "{r}");
    sgdisk_ok(&target, "kept");
    assert_eq!(gpt_part(&target, 2), root);
    assert_eq!(fs_size(&target, root, "ext4"), fs_size(&disk, root, "ext4"));
    check_ext4(&env, &target, root, &root_files, "kept");
    fs::remove_file(&target).unwrap();

    // Proportional: the FAT32 ESP grows to its scaled size (its FAT grows, its clusters move
    // up), the root moves to its scaled place and fills the rest.
    random_file(&target, size, 5);
    let r = env.json(&[
        "image",
        "restore",
        "golden",
        s(&target),
        "--layout",
        "proportional",
    ]);
    let changes = r["layout_changes"].to_string();
    assert!(changes.contains("partition 1 (fat32) grown"), "{r}");
    assert!(changes.contains("partition 2 moved"), "{r}");
    sgdisk_ok(&target, "proportional");
    let esp2 = gpt_part(&target, 1);
    assert_eq!(esp2.start, esp.start);
    assert!(esp2.size > esp.size * 3 / 2, "{esp2:?}");
    let fat = fs_size(&target, esp2, "fat32");
    assert!(
        fat <= esp2.size && esp2.size - fat < 4096,
        "FAT32 of {fat} bytes in {esp2:?}"
    );
    let scaled = gpt_part(&target, 2);
    assert!(
        scaled.start > root.start && scaled.start.is_multiple_of(MIB),
        "{scaled:?}"
    );
    assert_eq!(scaled.start + scaled.size, gpt_end(size));
    let fs = fs_size(&target, scaled, "ext4");
    assert!(scaled.size - fs < 4096, "ext4 of {fs} bytes in {scaled:?}");
    check_ext4(&env, &target, scaled, &root_files, "proportional");
    check_fat(&env, &target, esp2, &esp_files, "proportional");
}

/// A GPT disk of `size` bytes with one partition from 1 MiB to its end; returns the disk
/// and the partition.
fn one_partition_disk(env: &Env, name: &str, size: u64) -> (PathBuf, Extent) {
    let disk = env.path(name);
    sparse_file(&disk, size);
    run("sgdisk", &["-o", "-n1:2048:0", "-t1:8300", s(&disk)]);
    let p = gpt_part(&disk, 1);
    (disk, p)
}

#[test]
fn xfs_btrfs_ntfs_and_fat32_grow_with_their_partition() {
    if !require(
        "layout grow xfs btrfs ntfs fat32",
        &[
            "root",
            "sgdisk",
            "mkfs.vfat",
            "fsck.vfat",
            "mcopy",
            "mkfs.xfs",
            "xfs_repair",
            "xfs_growfs",
            "mkfs.btrfs",
            "btrfs",
            "mkntfs",
            "ntfsresize",
            "ntfsfix",
            "ntfscp",
            "ntfscat",
        ],
    ) {
        return;
    }
    let env = Env::new();
    let tree = env.path("tree");
    make_tree(&tree, 40 * MIB, 7);
    let want = read_tree(&tree);
    for kind in ["xfs", "btrfs", "ntfs", "fat32"] {
        let (disk, p) = one_partition_disk(&env, &format!("{kind}.img"), 340 * MIB);
        let f = env.path(&format!("{kind}-fs.img"));
        sparse_file(&f, p.size);
        match kind {
            "xfs" => {
                run("mkfs.xfs", &["-q", "-f", s(&f)]);
                let lo = Loop::attach(&f, 0, None);
                let m = Mount::new("mount", &[s(&lo.dev)], &env.path("mnt-src"));
                run("cp", &["-a", &format!("{}/.", s(&tree)), s(&m.dir)]);
                drop(m);
            }
            "btrfs" => {
                run("mkfs.btrfs", &["-q", "-f", "--rootdir", s(&tree), s(&f)]);
            }
            "fat32" => {
                run("mkfs.vfat", &["-F", "32", s(&f)]);
                mcopy_tree(&f, &tree);
            }
            _ => {
                run("mkntfs", &["-Q", "-F", s(&f)]);
                for path in want.keys() {
                    // ntfscp writes files, not directories: the tree's top level only.
                    if path.components().count() == 1 {
                        run("ntfscp", &["-f", s(&f), s(&tree.join(path)), s(path)]);
                    }
                }
            }
        }
        write_into(&disk, p.start, &f);
        fs::remove_file(&f).unwrap();
        env.capture(&disk, kind);

        let size = 700 * MIB;
        let target = env.path("target.img");
        random_file(&target, size, 8);
        let r = env.restore(kind, &target);
        assert!(
            r["layout_changes"]
                .to_string()
                .contains(&format!("partition 1 ({kind}) grown")),
            "{r}"
        );
        sgdisk_ok(&target, kind);
        let grown = gpt_part(&target, 1);
        assert_eq!(grown.start + grown.size, gpt_end(size), "{kind}");
        let fs_bytes = fs_size(&target, grown, kind);
        assert!(
            fs_bytes <= grown.size && grown.size - fs_bytes < MIB,
            "{kind} of {fs_bytes} bytes in a {}-byte partition",
            grown.size
        );
        let lo = Loop::attach(&target, grown.start, Some(grown.size));
        match kind {
            "xfs" => check_ok("xfs_repair", &["-n", s(&lo.dev)], kind),
            "btrfs" => check_ok("btrfs", &["check", "--readonly", s(&lo.dev)], kind),
            "fat32" => check_ok("fsck.vfat", &["-n", s(&lo.dev)], kind),
            _ => check_ok("ntfsfix", &["-n", s(&lo.dev)], kind),
        }
        if kind == "fat32" {
            let out = env.path("readback-fat32");
            fs::create_dir_all(&out).unwrap();
            run("mcopy", &["-s", "-n", "-i", s(&lo.dev), "::*", s(&out)]);
            assert_same_files(&want, &read_tree(&out), kind);
        } else if kind == "ntfs" {
            for (path, data) in &want {
                if path.components().count() == 1 {
                    let out = run_any("ntfscat", &[s(&lo.dev), s(path)]);
                    assert!(out.stdout == *data, "ntfs: {} differs", path.display());
                }
            }
        } else {
            let m = Mount::new("mount", &["-o", "ro", s(&lo.dev)], &env.path("mnt"));
            assert_same_files(&want, &read_tree(&m.dir), kind);
            drop(m);
        }
        drop(lo);
        fs::remove_file(&target).unwrap();
        fs::remove_file(&disk).unwrap();
    }
}

#[test]
fn an_mbr_disk_grows_its_last_logical_partition() {
    if !require(
        "layout grow mbr",
        &[
            "root",
            "sfdisk",
            "mkfs.ext4",
            "e2fsck",
            "resize2fs",
            "debugfs",
            "mkntfs",
            "ntfsfix",
        ],
    ) {
        return;
    }
    let env = Env::new();
    let disk = env.path("mbr.img");
    sparse_file(&disk, 300 * MIB);
    run_stdin(
        "sfdisk",
        &["-q", s(&disk)],
        "label: dos\nstart=2048, size=100MiB, type=7, bootable\ntype=5\ntype=83\n",
    );
    let parts = mbr_parts;
    let before = parts(&disk);
    assert_eq!(before.len(), 3, "{before:?}");
    let ntfs = Extent {
        start: before[0].0,
        size: before[0].1,
    };
    let logical = Extent {
        start: before[2].0,
        size: before[2].1,
    };
    let f = env.path("ntfs.img");
    sparse_file(&f, ntfs.size);
    run("mkntfs", &["-Q", "-F", s(&f)]);
    write_into(&disk, ntfs.start, &f);
    let (root, files) = ext4(&env, logical.size, 9);
    write_into(&disk, logical.start, &root);
    env.capture(&disk, "mbr");

    let size = 600 * MIB;
    let target = env.path("target.img");
    random_file(&target, size, 10);
    let r = env.restore("mbr", &target);
    assert!(
        r["layout_changes"]
            .to_string()
            .contains("partition 5 (ext4) grown"),
        "{r}"
    );
    let after = parts(&target);
    assert_eq!(after[0], before[0], "the NTFS stays");
    let end = size / MIB * MIB;
    assert_eq!(
        after[1].0 + after[1].1,
        end,
        "the extended partition reaches the end"
    );
    assert_eq!(after[2].0, logical.start);
    assert_eq!(
        after[2].0 + after[2].1,
        end,
        "the logical partition reaches the end"
    );
    // sfdisk reads the grown EBR chain back the same way.
    let dump = run("sfdisk", &["-d", s(&target)]);
    assert!(
        dump.lines()
            .any(|l| l.contains("img5") && l.contains(&format!(" {},", after[2].1 / 512))),
        "{dump}"
    );
    let grown = Extent {
        start: after[2].0,
        size: after[2].1,
    };
    let fs = fs_size(&target, grown, "ext4");
    assert!(grown.size - fs < 4096, "ext4 of {fs} bytes in {grown:?}");
    check_ext4(&env, &target, grown, &files, "mbr logical");
    let nf = part_file(&env, &target, ntfs, "check-ntfs.img");
    check_ok("ntfsfix", &["-n", s(&nf)], "mbr ntfs");
    fs::remove_file(&nf).unwrap();

    // Onto a smaller disk the last logical partition shrinks, the extended one with it.
    let size = 200 * MIB;
    random_file(&target, size, 11);
    let r = env.restore("mbr", &target);
    assert_eq!(r["shrunk"], true, "{r}");
    let after = parts(&target);
    assert_eq!(after[0], before[0], "the NTFS stays");
    let end = size / MIB * MIB;
    assert_eq!(
        after[1].0 + after[1].1,
        end,
        "the extended partition ends at the disk's end"
    );
    assert_eq!(after[2].0, logical.start);
    assert_eq!(after[2].0 + after[2].1, end, "{after:?}");
    let shrunk = Extent {
        start: after[2].0,
        size: after[2].1,
    };
    let fs = fs_size(&target, shrunk, "ext4");
    assert!(shrunk.size - fs < 4096, "ext4 of {fs} bytes in {shrunk:?}");
    check_ext4(&env, &target, shrunk, &files, "mbr logical shrunk");
}

#[test]
fn one_restore_writes_several_targets_each_laid_out_and_read_back() {
    if !require("several targets", GPT_TOOLS) {
        return;
    }
    let env = Env::new();
    let g = golden(&env);
    // Three targets: the golden size, 1.5 times and twice it; each grows its own way.
    let sizes = [256 * MIB, 384 * MIB, 512 * MIB];
    let targets: Vec<PathBuf> = sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let t = env.path(&format!("t{i}.img"));
            random_file(&t, size, 20 + i as u64);
            t
        })
        .collect();
    let mut args = vec!["image", "restore", "golden"];
    args.extend(targets.iter().map(|t| s(t)));
    let r = env.json(&args);
    let each = r["targets"].as_array().unwrap();
    assert_eq!(each.len(), 3, "{r}");
    for ((t, &size), j) in targets.iter().zip(&sizes).zip(each) {
        let what = t.file_name().unwrap().to_str().unwrap();
        assert_eq!(j["target"], s(t), "{r}");
        assert_eq!(j["read_back"], true, "{r}");
        sgdisk_ok(t, what);
        assert_eq!(gpt_part(t, 1), g.esp, "{what}");
        let root = gpt_part(t, 2);
        assert_eq!(root.start, g.root.start, "{what}");
        if size == 256 * MIB {
            assert_eq!(root, g.root, "{what}: the golden size keeps the layout");
        } else {
            assert_eq!(root.start + root.size, gpt_end(size), "{what}");
        }
        check_ext4(&env, t, root, &g.root_files, what);
        check_fat(&env, t, g.esp, &g.esp_files, what);
    }

    // Two targets, one of them too small: refused before a byte is written to either, the
    // small one named.
    let small = env.path("small.img");
    random_file(&small, 80 * MIB, 30);
    random_file(&targets[0], 256 * MIB, 31);
    let (before_a, before_b) = (fs::read(&targets[0]).unwrap(), fs::read(&small).unwrap());
    let err = env.fails(&["image", "restore", "golden", s(&targets[0]), s(&small)]);
    assert!(
        err.contains(s(&small)) && err.contains("needs at least"),
        "{err}"
    );
    assert!(
        fs::read(&targets[0]).unwrap() == before_a,
        "a refused restore wrote"
    );
    assert!(
        fs::read(&small).unwrap() == before_b,
        "a refused restore wrote"
    );
    // The same target twice is refused too.
    let err = env.fails(&["image", "restore", "golden", s(&targets[1]), s(&targets[1])]);
    assert!(err.contains("named twice"), "{err}");
}

#[test]
fn a_gpt_disk_shrinks_onto_a_target_of_two_thirds_or_is_refused() {
    if !require("layout shrink gpt", GPT_TOOLS) {
        return;
    }
    let env = Env::new();
    let g = golden(&env);
    let m = env.manifest("golden");
    let inspect = env.json(&["image", "inspect", "golden", "--min-size"]);
    let min_kept = inspect["min_disk_size"].as_u64().unwrap();
    let min_shrunk = inspect["min_disk_size_shrunk"].as_u64().unwrap();
    assert_eq!(min_kept, m.min_size, "{inspect}");
    assert!(min_shrunk < min_kept, "{inspect}");

    // Two thirds of the golden disk: the root partition shrinks, its ext4 with it.
    let size = 256 * MIB * 2 / 3 / MIB * MIB;
    assert!(size >= min_shrunk, "{inspect}");
    let target = env.path("small.img");
    random_file(&target, size, 40);
    let r = env.restore("golden", &target);
    assert_eq!(r["shrunk"], true, "{r}");
    assert!(
        r["layout_changes"]
            .to_string()
            .contains("partition 2 (ext4) shrunk"),
        "{r}"
    );
    sgdisk_ok(&target, "shrunk");
    assert_eq!(gpt_part(&target, 1), g.esp, "the ESP stays as it was");
    let root = gpt_part(&target, 2);
    assert_eq!(root.start, g.root.start);
    assert_eq!(
        root.start + root.size,
        gpt_end(size),
        "root reaches the disk's end"
    );
    let fs = fs_size(&target, root, "ext4");
    assert!(
        fs <= root.size && root.size - fs < 4096,
        "ext4 of {fs} bytes in a {}-byte partition",
        root.size
    );
    check_ext4(&env, &target, root, &g.root_files, "shrunk");
    check_fat(&env, &target, g.esp, &g.esp_files, "shrunk");

    // Two such targets and one of the golden size in one restore: the small ones share one
    // shrink; each is laid out for its size and read back.
    let (a, b, c) = (env.path("a.img"), env.path("b.img"), env.path("c.img"));
    random_file(&a, size, 45);
    random_file(&b, size, 46);
    random_file(&c, 256 * MIB, 47);
    let r = env.json(&["image", "restore", "golden", s(&a), s(&b), s(&c)]);
    let each = r["targets"].as_array().unwrap();
    for (t, j) in [&a, &b, &c].into_iter().zip(each) {
        let small = t != &c;
        assert_eq!(j["shrunk"], small, "{r}");
        assert_eq!(j["read_back"], true, "{r}");
        sgdisk_ok(t, "one of three");
        let root = gpt_part(t, 2);
        if small {
            assert_eq!(root.start + root.size, gpt_end(size), "{r}");
        } else {
            assert_eq!(root, g.root, "{r}");
        }
        check_ext4(&env, t, root, &g.root_files, "one of three");
        check_fat(&env, t, g.esp, &g.esp_files, "one of three");
        fs::remove_file(t).unwrap();
    }

    // Smaller than the used data: refused, the partition and its bytes named, nothing
    // written.
    let tiny = env.path("tiny.img");
    random_file(&tiny, min_shrunk - 4 * MIB, 41);
    let before = fs::read(&tiny).unwrap();
    let err = env.fails(&["image", "restore", "golden", s(&tiny)]);
    assert!(
        err.contains("partition 2 (ext4)") && err.contains("needs at least"),
        "{err}"
    );
    assert!(
        fs::read(&tiny).unwrap() == before,
        "a refused restore wrote"
    );

    // A scratch directory without room for the staged partition: refused before it fills.
    let small_tmp = Mount::new(
        "mount",
        &["-t", "tmpfs", "-o", "size=8m", "tmpfs"],
        &env.path("small-tmp"),
    );
    random_file(&target, size, 48);
    let before = fs::read(&target).unwrap();
    let err = env.fails(&[
        "image",
        "restore",
        "golden",
        s(&target),
        "--scratch",
        s(&small_tmp.dir),
    ]);
    assert!(
        err.contains("scratch directory") && err.contains("partition 2 (ext4)"),
        "{err}"
    );
    assert!(
        fs::read(&target).unwrap() == before,
        "a refused restore wrote"
    );
}

#[test]
fn an_mbr_disk_with_ntfs_and_ext4_shrinks_onto_a_smaller_target() {
    if !require(
        "layout shrink mbr",
        &[
            "root",
            "sfdisk",
            "mkfs.ext4",
            "e2fsck",
            "resize2fs",
            "debugfs",
            "mkntfs",
            "ntfsresize",
            "ntfsfix",
            "ntfscp",
            "ntfscat",
        ],
    ) {
        return;
    }
    let env = Env::new();
    let disk = env.path("mbr.img");
    sparse_file(&disk, 300 * MIB);
    run_stdin(
        "sfdisk",
        &["-q", s(&disk)],
        "label: dos\nstart=2048, size=150MiB, type=7, bootable\ntype=83\n",
    );
    let parts = |d: &Path| -> Vec<Extent> {
        mbr_parts(d)
            .into_iter()
            .map(|(start, size, _)| Extent { start, size })
            .collect()
    };
    let before = parts(&disk);
    let (ntfs, linux) = (before[0], before[1]);
    let tree = env.path("ntfs-tree");
    make_tree(&tree, 20 * MIB, 42);
    let ntfs_files = read_tree(&tree);
    let f = env.path("ntfs.img");
    sparse_file(&f, ntfs.size);
    run("mkntfs", &["-Q", "-F", s(&f)]);
    for path in ntfs_files.keys() {
        if path.components().count() == 1 {
            run("ntfscp", &["-f", s(&f), s(&tree.join(path)), s(path)]);
        }
    }
    write_into(&disk, ntfs.start, &f);
    fs::remove_file(&f).unwrap();
    let (root, root_files) = ext4(&env, linux.size, 43);
    write_into(&disk, linux.start, &root);
    fs::remove_file(&root).unwrap();
    env.capture(&disk, "mbr");

    // 130 MiB: the ext4 alone would fit only if the NTFS shrinks and the ext4 moves left.
    let size = 130 * MIB;
    let target = env.path("target.img");
    random_file(&target, size, 44);
    let r = env.restore("mbr", &target);
    assert_eq!(r["shrunk"], true, "{r}");
    let changes = r["layout_changes"].to_string();
    assert!(changes.contains("partition 1 (ntfs) shrunk"), "{r}");
    assert!(changes.contains("partition 2 (ext4)"), "{r}");
    let after = parts(&target);
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after[0].start, ntfs.start);
    assert!(after[0].size < ntfs.size, "{after:?}");
    assert!(
        after[1].start < linux.start,
        "the ext4 moved left: {after:?}"
    );
    assert!(after[1].start + after[1].size <= size, "{after:?}");
    let fs = fs_size(&target, after[0], "ntfs");
    assert!(fs <= after[0].size, "ntfs of {fs} bytes in {:?}", after[0]);

    check_ext4(&env, &target, after[1], &root_files, "moved ext4");
    let lo = Loop::attach(&target, after[0].start, Some(after[0].size));
    check_ok("ntfsfix", &["-n", s(&lo.dev)], "shrunk ntfs");
    for (path, data) in &ntfs_files {
        if path.components().count() == 1 {
            let out = run_any("ntfscat", &[s(&lo.dev), s(path)]);
            assert!(out.stdout == *data, "ntfs: {} differs", path.display());
        }
    }
}

#[test]
fn btrfs_shrinks_an_xfs_after_an_ext4_moves_and_a_lone_xfs_is_refused() {
    if !require(
        "layout shrink btrfs xfs",
        &[
            "root",
            "sgdisk",
            "mkfs.btrfs",
            "btrfs",
            "mkfs.xfs",
            "xfs_repair",
            "mkfs.ext4",
            "e2fsck",
            "resize2fs",
            "debugfs",
        ],
    ) {
        return;
    }
    let env = Env::new();
    let tree = env.path("tree");
    make_tree(&tree, 40 * MIB, 50);
    let want = read_tree(&tree);

    let (disk, p) = one_partition_disk(&env, "btrfs.img", 600 * MIB);
    let f = env.path("btrfs-fs.img");
    sparse_file(&f, p.size);
    run("mkfs.btrfs", &["-q", "-f", "--rootdir", s(&tree), s(&f)]);
    write_into(&disk, p.start, &f);
    fs::remove_file(&f).unwrap();
    env.capture(&disk, "btrfs");
    let size = 400 * MIB;
    let target = env.path("target.img");
    random_file(&target, size, 51);
    let r = env.restore("btrfs", &target);
    assert!(
        r["layout_changes"]
            .to_string()
            .contains("partition 1 (btrfs) shrunk"),
        "{r}"
    );
    sgdisk_ok(&target, "btrfs");
    let small = gpt_part(&target, 1);
    assert_eq!(small.start + small.size, gpt_end(size));
    assert_eq!(fs_size(&target, small, "btrfs"), small.size);
    let lo = Loop::attach(&target, small.start, Some(small.size));
    check_ok(
        "btrfs",
        &["check", "--readonly", s(&lo.dev)],
        "shrunk btrfs",
    );
    let m = Mount::new("mount", &["-o", "ro", s(&lo.dev)], &env.path("mnt"));
    assert_same_files(&want, &read_tree(&m.dir), "shrunk btrfs");
    drop(m);
    drop(lo);

    // XFS cannot shrink: refused, saying so, before a byte is written.
    let (disk, p) = one_partition_disk(&env, "xfs.img", 600 * MIB);
    let f = env.path("xfs-fs.img");
    sparse_file(&f, p.size);
    run("mkfs.xfs", &["-q", "-f", s(&f)]);
    write_into(&disk, p.start, &f);
    fs::remove_file(&f).unwrap();
    env.capture(&disk, "xfs");
    random_file(&target, size, 52);
    let before = fs::read(&target).unwrap();
    let err = env.fails(&["image", "restore", "xfs", s(&target)]);
    assert!(
        err.contains("partition 1 (xfs)") && err.contains("XFS cannot shrink"),
        "{err}"
    );
    assert!(
        fs::read(&target).unwrap() == before,
        "a refused restore wrote"
    );

    // An XFS after an ext4: the ext4 shrinks and the XFS, which keeps its size, moves left.
    let disk = env.path("ext4-xfs.img");
    sparse_file(&disk, 900 * MIB);
    run(
        "sgdisk",
        &[
            "-o",
            "-n1:2048:+400M",
            "-t1:8300",
            "-n2:0:0",
            "-t2:8300",
            s(&disk),
        ],
    );
    let (p1, p2) = (gpt_part(&disk, 1), gpt_part(&disk, 2));
    let (root, root_files) = ext4(&env, p1.size, 53);
    write_into(&disk, p1.start, &root);
    fs::remove_file(&root).unwrap();
    let f = env.path("xfs2-fs.img");
    sparse_file(&f, p2.size);
    run("mkfs.xfs", &["-q", "-f", s(&f)]);
    let lo = Loop::attach(&f, 0, None);
    let m = Mount::new("mount", &[s(&lo.dev)], &env.path("mnt-xfs"));
    run("cp", &["-a", &format!("{}/.", s(&tree)), s(&m.dir)]);
    drop(m);
    drop(lo);
    write_into(&disk, p2.start, &f);
    fs::remove_file(&f).unwrap();
    env.capture(&disk, "ext4-xfs");
    let size = 700 * MIB;
    random_file(&target, size, 54);
    let r = env.restore("ext4-xfs", &target);
    let changes = r["layout_changes"].to_string();
    assert!(changes.contains("partition 1 (ext4) shrunk"), "{r}");
    assert!(changes.contains("partition 2 (xfs) moved"), "{r}");
    sgdisk_ok(&target, "ext4 + xfs");
    let (q1, q2) = (gpt_part(&target, 1), gpt_part(&target, 2));
    assert_eq!(q1.start, p1.start);
    assert!(q1.size < p1.size, "{q1:?}");
    assert_eq!(q2.size, p2.size, "the XFS keeps its size");
    assert!(
        q2.start < p2.start && q2.start >= q1.start + q1.size,
        "{q2:?}"
    );
    check_ext4(&env, &target, q1, &root_files, "shrunk before an xfs");
    let lo = Loop::attach(&target, q2.start, Some(q2.size));
    check_ok("xfs_repair", &["-n", s(&lo.dev)], "moved xfs");
    let m = Mount::new("mount", &["-o", "ro", s(&lo.dev)], &env.path("mnt-moved"));
    assert_same_files(&want, &read_tree(&m.dir), "moved xfs");
}

#[test]
fn a_fat32_whose_files_lie_past_the_new_end_shrinks() {
    // 512-byte clusters, so that it may shrink well below its size (a FAT32 keeps 65525).
    fat_shrinks("32", 300 * MIB, "1", 200 * MIB, 30 * MIB, 120 * MIB);
}

#[test]
fn a_fat16_whose_files_lie_past_the_new_end_shrinks() {
    // 2 KiB clusters: 61000 of them, under a FAT16's 65524 (it keeps 4085).
    fat_shrinks("16", 120 * MIB, "4", 80 * MIB, 10 * MIB, 48 * MIB);
}

/// A FAT`bits` of `part` bytes (`spc` sectors a cluster) whose `tree` bytes of files lie past
/// where it ends once restored onto a `size`-byte target: a filler first, the files after
/// it, then the filler deleted, so the files and their directories must move. The shrunk
/// volume passes fsck.vfat and holds the same files.
fn fat_shrinks(bits: &str, part: u64, spc: &str, filler: u64, tree: u64, size: u64) {
    let kind = format!("fat{bits}");
    if !require(
        &format!("layout shrink {kind}"),
        &["sgdisk", "mkfs.vfat", "fsck.vfat", "mcopy", "mdel"],
    ) {
        return;
    }
    let env = Env::new();
    let (disk, p) = one_partition_disk(&env, "fat.img", part);
    let f = env.path("fat-fs.img");
    sparse_file(&f, p.size);
    run("mkfs.vfat", &["-F", bits, "-s", spc, s(&f)]);
    let fill = env.path("filler");
    random_file(&fill, filler, 60);
    run("mcopy", &["-i", s(&f), s(&fill), "::/FILLER"]);
    fs::remove_file(&fill).unwrap();
    let dir = env.path("tree");
    make_tree(&dir, tree, 61);
    let want = read_tree(&dir);
    mcopy_tree(&f, &dir);
    run("mdel", &["-i", s(&f), "::/FILLER"]);
    write_into(&disk, p.start, &f);
    fs::remove_file(&f).unwrap();
    env.capture(&disk, "fat");

    let target = env.path("target.img");
    random_file(&target, size, 62);
    let r = env.restore("fat", &target);
    assert_eq!(r["shrunk"], true, "{r}");
    assert!(
        r["layout_changes"]
            .to_string()
            .contains(&format!("partition 1 ({kind}) shrunk")),
        "{r}"
    );
    sgdisk_ok(&target, &kind);
    let small = gpt_part(&target, 1);
    assert_eq!(small.start + small.size, gpt_end(size));
    assert_eq!(fs_size(&target, small, &kind), small.size);
    check_fat(&env, &target, small, &want, &format!("shrunk {kind}"));
}
