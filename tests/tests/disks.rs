//! Whole disks: MBR with extended/logical partitions and GPT, holding several filesystems plus
//! boot code where boot loaders hide it; restored to same-size, larger and smaller targets full
//! of random bytes; one partition captured alone through a loop device.

use std::fs;
use std::path::{Path, PathBuf};

use drover_tests::*;

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A partition of a test disk and the files in it.
struct Part {
    start: u64,
    size: u64,
    fs: &'static str,
}

/// Builds a filesystem of `kind` in a separate file, fills it (ext4/FAT), writes it into the
/// disk; returns the expected files.
fn put_fs(
    env: &Env,
    disk: &Path,
    p: &Part,
    seed: u64,
) -> Option<std::collections::BTreeMap<PathBuf, Vec<u8>>> {
    let f = env.path(&format!("part-{}.img", p.start));
    sparse_file(&f, p.size);
    let tree = env.path(&format!("tree-{seed}"));
    let files = match p.fs {
        "ext4" => {
            make_tree(&tree, p.size / 5, seed);
            run("mkfs.ext4", &["-q", "-F", "-d", s(&tree), s(&f)]);
            Some(read_tree(&tree))
        }
        "ext2" => {
            make_tree(&tree, p.size / 5, seed);
            run("mkfs.ext2", &["-q", "-F", "-d", s(&tree), s(&f)]);
            Some(read_tree(&tree))
        }
        "fat32" | "fat16" => {
            run("mkfs.vfat", &["-F", &p.fs[3..], s(&f)]);
            make_tree(&tree, p.size / 5, seed);
            let tops: Vec<String> = fs::read_dir(&tree)
                .unwrap()
                .map(|e| e.unwrap().path().to_str().unwrap().to_string())
                .collect();
            let mut a = vec!["-s", "-i", s(&f)];
            a.extend(tops.iter().map(String::as_str));
            a.push("::/");
            run("mcopy", &a);
            Some(read_tree(&tree))
        }
        "ntfs" => {
            run("mkntfs", &["-Q", "-F", s(&f)]);
            None
        }
        "swap" => {
            run("mkswap", &[s(&f)]);
            None
        }
        "raw" => {
            // A BIOS boot partition: GRUB's core image, unknown to any reader.
            random_file(&f, p.size, seed);
            None
        }
        other => panic!("unknown fs {other}"),
    };
    write_into(disk, p.start, &f);
    files
}

/// Builds a test disk with `layout` and fills its partitions; returns the disk, its
/// partitions and the files each should hold.
type Want = Option<std::collections::BTreeMap<PathBuf, Vec<u8>>>;

fn build_disk(
    env: &Env,
    layout: fn(&Env) -> (PathBuf, Vec<Part>),
    seed: u64,
) -> (PathBuf, Vec<Part>, Vec<Want>) {
    let (disk, parts) = layout(env);
    let want = parts
        .iter()
        .enumerate()
        .map(|(i, p)| put_fs(env, &disk, p, seed + i as u64))
        .collect();
    (disk, parts, want)
}

/// Checks one restored partition with its filesystem's checker and, when known, its files.
fn check_part(
    env: &Env,
    disk: &Path,
    p: &Part,
    want: &Option<std::collections::BTreeMap<PathBuf, Vec<u8>>>,
    what: &str,
) {
    let f = env.path(&format!("check-{}.img", p.start));
    extract(disk, p.start, p.size, &f);
    let fsck: &[&str] = match p.fs {
        "ext4" | "ext2" => &["e2fsck", "-fn"],
        "fat32" | "fat16" => &["fsck.vfat", "-n"],
        "ntfs" => &["ntfsfix", "-n"],
        _ => &[],
    };
    if let Some((prog, args)) = fsck.split_first() {
        let mut a = args.to_vec();
        a.push(s(&f));
        let out = run_any(prog, &a);
        assert!(
            out.status.success(),
            "{what}: {prog} on partition at {}: {}{}",
            p.start,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if let Some(want) = want {
        let out = env.path(&format!("readback-{}", p.start));
        let _ = fs::remove_dir_all(&out);
        fs::create_dir_all(&out).unwrap();
        if p.fs.starts_with("ext") {
            run("debugfs", &["-R", &format!("rdump / {}", s(&out)), s(&f)]);
        } else {
            run("mcopy", &["-s", "-n", "-i", s(&f), "::*", s(&out)]);
        }
        assert_same_files(want, &read_tree(&out), what);
    }
    fs::remove_file(&f).unwrap();
}

fn mbr_disk(env: &Env) -> (PathBuf, Vec<Part>) {
    let disk = env.path("mbr.img");
    sparse_file(&disk, 420 * MIB);
    run_stdin(
        "sfdisk",
        &["-q", s(&disk)],
        "label: dos\n\
         start=2048, size=100MiB, type=c, bootable\n\
         size=100MiB, type=83\n\
         type=5\n\
         size=80MiB, type=83\n\
         size=60MiB, type=7\n\
         size=40MiB, type=82\n",
    );
    let dump = run("sfdisk", &["-J", s(&disk)]);
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let kinds = ["fat32", "ext4", "", "ext2", "ntfs", "swap"];
    let mut parts = Vec::new();
    for (i, p) in v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        if kinds[i].is_empty() {
            continue; // the extended container
        }
        parts.push(Part {
            start: p["start"].as_u64().unwrap() * 512,
            size: p["size"].as_u64().unwrap() * 512,
            fs: kinds[i],
        });
    }
    (disk, parts)
}

#[test]
fn mbr_disk_with_logical_partitions_and_boot_code() {
    if !require(
        "mbr disk",
        &[
            "sfdisk",
            "mkfs.ext4",
            "mkfs.vfat",
            "mcopy",
            "mkntfs",
            "ntfsfix",
            "mkswap",
            "fsck.vfat",
            "e2fsck",
            "debugfs",
        ],
    ) {
        return;
    }
    let env = Env::new();
    let (disk, parts, want) = build_disk(&env, mbr_disk, 100);
    // Boot code in the MBR, GRUB's core image in the gap before the first partition.
    let mut boot = vec![0u8; 440];
    for (i, b) in boot.iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    patch(&disk, 0, &boot);
    let core = env.path("core.img");
    random_file(&core, 2047 * 512, 42);
    write_into(&disk, 512, &core);

    let cap = env.capture(&disk, "mbr");
    assert!(cap["warnings"].as_array().unwrap().is_empty(), "{cap}");
    let m = env.manifest("mbr");
    assert_eq!(m.table.kind, imaging::table::TableKind::Mbr);
    let numbers: Vec<u32> = m.table.partitions.iter().map(|p| p.number).collect();
    assert_eq!(numbers, vec![1, 2, 5, 6, 7]);
    let kinds: Vec<String> = m.areas[1..]
        .iter()
        .map(|a| a.fs.as_ref().unwrap().kind.to_string())
        .collect();
    assert_eq!(kinds, vec!["fat32", "ext4", "ext2", "ntfs", "swap"]);

    for (what, size) in [("same size", 420 * MIB), ("larger disk", 600 * MIB)] {
        let target = env.path("target.img");
        random_file(&target, size, 7);
        env.restore("mbr", &target);
        assert!(
            read_range(&disk, 0, MIB) == read_range(&target, 0, MIB),
            "{what}: MBR boot code, table or post-MBR gap differs"
        );
        // The extended partition's EBR chain survived: the same table is read back.
        let a = run("sfdisk", &["-d", s(&disk)]).replace(s(&disk), "D");
        let b = run("sfdisk", &["-d", s(&target)]).replace(s(&target), "D");
        assert_eq!(a, b, "{what}: partition table differs");
        for (p, w) in parts.iter().zip(&want) {
            check_part(&env, &target, p, w, what);
        }
        fs::remove_file(&target).unwrap();
    }
}

fn gpt_disk(env: &Env) -> (PathBuf, Vec<Part>) {
    let disk = env.path("gpt.img");
    sparse_file(&disk, 512 * MIB);
    run(
        "sgdisk",
        &[
            "-o",
            "-n1:2048:+1M",
            "-t1:EF02",
            "-n2:0:+100M",
            "-t2:EF00",
            "-n3:0:+200M",
            "-t3:8300",
            "-n4:0:+100M",
            "-t4:0700",
            s(&disk),
        ],
    );
    let mut parts = Vec::new();
    let kinds = ["raw", "fat32", "ext4", "ntfs"];
    for (i, k) in kinds.iter().enumerate() {
        let info = run("sgdisk", &[&format!("-i{}", i + 1), s(&disk)]);
        let num = |key: &str| -> u64 {
            info.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().find_map(|w| w.parse().ok()))
                .unwrap()
        };
        let (first, last) = (num("First sector:"), num("Last sector:"));
        parts.push(Part {
            start: first * 512,
            size: (last - first + 1) * 512,
            fs: k,
        });
    }
    (disk, parts)
}

fn sgdisk_ok(disk: &Path, what: &str) {
    let out = run("sgdisk", &["-v", s(disk)]);
    assert!(
        out.contains("No problems found"),
        "{what}: sgdisk -v: {out}"
    );
}

fn partition_lines(disk: &Path) -> Vec<String> {
    run("sgdisk", &["-p", s(disk)])
        .lines()
        .skip_while(|l| !l.starts_with("Number"))
        .map(str::to_string)
        .collect()
}

/// A GPT target restored from the `gpt_disk` image: a valid GPT with the source's partitions,
/// each passing its checker with the right files.
fn check_gpt_target(
    env: &Env,
    disk: &Path,
    target: &Path,
    parts: &[Part],
    want: &[Want],
    what: &str,
) {
    sgdisk_ok(target, what);
    assert_eq!(partition_lines(disk), partition_lines(target));
    for (p, w) in parts.iter().zip(want) {
        check_part(env, target, p, w, what);
    }
}

/// A `gpt_disk` capture warns once: its BIOS boot partition (random bytes, no filesystem) is
/// a raw copy.
fn assert_raw_bios_boot_warning(cap: &serde_json::Value) {
    let w = cap["warnings"].as_array().unwrap();
    assert_eq!(w.len(), 1, "{cap}");
    let w = w[0].as_str().unwrap();
    assert!(
        w.starts_with("partition 1: unknown") && w.contains("raw copy"),
        "{w}"
    );
}

/// What building and checking a `gpt_disk` needs.
const GPT_TOOLS: &[&str] = &[
    "sgdisk",
    "mkfs.ext4",
    "mkfs.vfat",
    "mcopy",
    "mkntfs",
    "ntfsfix",
    "ntfsresize",
    "fsck.vfat",
    "e2fsck",
    "debugfs",
];

#[test]
fn gpt_disk_same_larger_and_smaller_targets() {
    if !require("gpt disk", GPT_TOOLS) {
        return;
    }
    let env = Env::new();
    let (disk, parts, want) = build_disk(&env, gpt_disk, 200);
    sgdisk_ok(&disk, "source");
    let cap = env.capture(&disk, "gpt");
    assert_raw_bios_boot_warning(&cap);
    let m = env.manifest("gpt");
    assert_eq!(m.table.kind, imaging::table::TableKind::Gpt);
    let kinds: Vec<String> = m.areas[1..]
        .iter()
        .map(|a| a.fs.as_ref().unwrap().kind.to_string())
        .collect();
    assert_eq!(kinds, vec!["unknown", "fat32", "ext4", "ntfs"]);
    let last_end = parts.last().unwrap().start + parts.last().unwrap().size;
    assert_eq!(
        m.min_size,
        last_end + 33 * 512,
        "min size = last partition + backup GPT"
    );

    // Same size: byte-identical tables, the backup included.
    let target = env.path("same.img");
    random_file(&target, 512 * MIB, 1);
    let r = env.restore("gpt", &target);
    assert_eq!(r["gpt_relocated"], false);
    assert!(read_range(&disk, 0, MIB) == read_range(&target, 0, MIB));
    assert!(
        read_range(&disk, 512 * MIB - 33 * 512, 33 * 512)
            == read_range(&target, 512 * MIB - 33 * 512, 33 * 512)
    );
    sgdisk_ok(&target, "same size");
    for (p, w) in parts.iter().zip(&want) {
        check_part(&env, &target, p, w, "same size");
    }
    fs::remove_file(&target).unwrap();

    // Larger, the layout kept: the backup GPT moves to the new end; the partitions stay
    // where they were (growing them is tests/tests/layouts.rs's).
    let target = env.path("larger.img");
    random_file(&target, 800 * MIB, 2);
    let r = env.json(&["image", "restore", "gpt", s(&target), "--layout", "keep"]);
    assert_eq!(r["gpt_relocated"], true);
    check_gpt_target(&env, &disk, &target, &parts, &want, "larger disk");
    let info = run("sgdisk", &["-p", s(&target)]);
    assert!(
        info.contains(&format!("{} sectors", 800 * MIB / 512)),
        "{info}"
    );
    // The protective MBR now covers the larger disk.
    let mbr = read_range(&target, 446, 16);
    assert_eq!(mbr[4], 0xEE);
    assert_eq!(
        u32::from_le_bytes(mbr[12..16].try_into().unwrap()) as u64,
        800 * MIB / 512 - 1
    );
    fs::remove_file(&target).unwrap();

    // Smaller but big enough for every partition: accepted, GPT valid.
    let target = env.path("smaller.img");
    random_file(&target, m.min_size, 3);
    env.restore("gpt", &target);
    check_gpt_target(&env, &disk, &target, &parts, &want, "smaller disk");
    fs::remove_file(&target).unwrap();

    // A MiB short of the captured layout: the last partition (NTFS) shrinks to fit
    // (tests/tests/layouts.rs checks shrunk filesystems in depth).
    let target = env.path("short.img");
    random_file(&target, m.min_size - MIB, 4);
    let r = env.restore("gpt", &target);
    assert_eq!(r["shrunk"], true, "{r}");
    assert!(
        r["layout_changes"].to_string().contains("(ntfs) shrunk"),
        "{r}"
    );
    sgdisk_ok(&target, "shrunk");
    fs::remove_file(&target).unwrap();

    // Too small for the partitions' data: refused before writing, naming the partition
    // left without room and the smallest target that would do.
    let target = env.path("tiny.img");
    random_file(&target, 32 * MIB, 5);
    let before = fs::read(&target).unwrap();
    let err = env.fails(&["image", "restore", "gpt", s(&target)]);
    assert!(
        err.contains("(ntfs) needs at least") && err.contains("the smallest target it fits is"),
        "{err}"
    );
    assert!(
        fs::read(&target).unwrap() == before,
        "a refused restore wrote to the target"
    );
}

#[test]
fn one_partition_captured_alone_shares_chunks_with_its_disk() {
    if !(require("partition capture", &["root", "losetup"])
        && require("partition capture", GPT_TOOLS))
    {
        return;
    }
    let env = Env::new();
    let (disk, parts, want) = build_disk(&env, gpt_disk, 300);
    env.capture(&disk, "disk");
    let p = &parts[2];
    let lo = Loop::attach(&disk, p.start, Some(p.size));
    let cap = env.capture(&lo.dev, "part3");
    drop(lo);
    let m = env.manifest("part3");
    assert_eq!(m.table.kind, imaging::table::TableKind::None);
    assert_eq!(m.areas[0].fs.as_ref().unwrap().kind.to_string(), "ext4");
    // The partition's chunks are the disk image's chunks: nothing new was stored.
    assert_eq!(cap["new_chunks"], 0, "{cap}");
    let inspect = env.json(&["image", "inspect", "part3"]);
    assert_eq!(inspect["shared_chunks"], inspect["chunks"], "{inspect}");

    let target = env.path("p.img");
    random_file(&target, p.size, 9);
    env.restore("part3", &target);
    let single = Part {
        start: 0,
        size: p.size,
        fs: "ext4",
    };
    check_part(&env, &target, &single, &want[2], "single partition");
}

#[test]
fn restore_refuses_a_mounted_target() {
    if !require("mounted target", &["root", "losetup", "mkfs.ext4", "mount"]) {
        return;
    }
    let env = Env::new();
    let img = env.path("fs.img");
    sparse_file(&img, 64 * MIB);
    run("mkfs.ext4", &["-q", "-F", s(&img)]);
    env.capture(&img, "small");
    let target = env.path("mounted.img");
    sparse_file(&target, 64 * MIB);
    run("mkfs.ext4", &["-q", "-F", s(&target)]);
    let lo = Loop::attach(&target, 0, None);
    let mnt = Mount::new("mount", &[s(&lo.dev)], &env.path("mnt"));
    let err = env.fails(&["image", "restore", "small", s(&lo.dev)]);
    assert!(err.contains("mounted at"), "{err}");
    // The file behind the mounted loop device is refused too.
    let err = env.fails(&["image", "restore", "small", s(&target)]);
    assert!(err.contains("mounted at"), "{err}");
    drop(mnt);
    drop(lo);
    env.restore("small", &target);
}

#[test]
fn whole_disk_block_devices_capture_and_restore() {
    if !(require("block devices", &["root", "losetup"]) && require("block devices", GPT_TOOLS)) {
        return;
    }
    let env = Env::new();
    let (disk, parts, want) = build_disk(&env, gpt_disk, 400);
    // Capture through a loop device (BLKGETSIZE64, BLKSSZGET) and restore onto another one.
    let src = Loop::attach(&disk, 0, None);
    let cap = env.capture(&src.dev, "blk");
    assert_raw_bios_boot_warning(&cap);
    drop(src);
    let m = env.manifest("blk");
    assert_eq!(m.table.kind, imaging::table::TableKind::Gpt);
    assert_eq!(m.table.partitions.len(), 4);
    let target = env.path("target.img");
    random_file(&target, 640 * MIB, 11);
    let dst = Loop::attach(&target, 0, None);
    let r = env.json(&["image", "restore", "blk", s(&dst.dev), "--layout", "keep"]);
    assert_eq!(r["gpt_relocated"], true, "{r}");
    drop(dst);
    check_gpt_target(&env, &disk, &target, &parts, &want, "block device target");
}
