//! Images opened without restoring them, as a user meets it: `drover image mount` (FUSE) whose
//! partition files loop-mount and show the files, `drover image nbd` read by the stock NBD
//! clients (nbdcopy, qemu-img), `drover image export` to raw and to qcow2 that `qemu-img
//! check` accepts, and `drover image import` of raw and (compressed) qcow2 files made by
//! qemu-img, deduplicated against the store. Every byte is compared with a restore of the
//! same image onto zeros.

use std::fs;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use drover_tests::deploy::lab_disk;
use drover_tests::*;

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn mountpoint(dir: &Path) -> bool {
    Command::new("mountpoint")
        .arg("-q")
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The lab disk (GPT: ext4 with files, NTFS), captured as `lab`, and its restore onto zeros.
fn setup(env: &Env) -> (Vec<u8>, std::path::PathBuf) {
    let disk = lab_disk(env, 10 * MIB, 23);
    env.capture(&disk, "lab");
    let restored = env.path("restored.img");
    sparse_file(&restored, 64 * MIB);
    env.restore("lab", &restored);
    (fs::read(&restored).unwrap(), restored)
}

#[test]
fn a_mounted_image_shows_its_disk_and_partitions_and_the_files_inside() {
    if !require(
        "image_mount",
        &["fuse", "sgdisk", "mkfs.ext4", "mkntfs", "ntfs-3g"],
    ) {
        return;
    }
    let env = Env::new();
    let (want, _) = setup(&env);
    let dir = env.path("m");
    fs::create_dir(&dir).unwrap();
    let mut bg = Bg::start(&env, &["image", "mount", "lab", s(&dir)]);
    bg.wait_for("the mount", || dir.join("disk").exists());
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["disk", "p1", "p2"]);
    assert_eq!(fs::metadata(dir.join("p1")).unwrap().len(), 36 * MIB);
    assert!(
        fs::read(dir.join("disk")).unwrap() == want,
        "the whole disk file equals a restore"
    );
    let p2 = fs::read(dir.join("p2")).unwrap();
    let at = ((2048 + 36 * 2048) * 512) as usize;
    assert!(p2 == want[at..at + p2.len()], "p2 is the partition's bytes");
    let e = fs::OpenOptions::new()
        .write(true)
        .open(dir.join("disk"))
        .unwrap_err();
    assert!(
        matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES)),
        "{e}"
    );

    // The partitions mount as the filesystems they hold, with the files captured.
    let tree = read_tree(&env.path("lab-tree"));
    {
        let m = Mount::new(
            "mount",
            &["-o", "ro,loop", s(&dir.join("p1"))],
            &env.path("p1"),
        );
        assert_same_files(&tree, &read_tree(&m.dir), "ext4 through the mount");
    }
    {
        let m = Mount::new(
            "ntfs-3g",
            &["-o", "ro", s(&dir.join("p2"))],
            &env.path("p2"),
        );
        assert!(fs::read_dir(&m.dir).is_ok(), "NTFS mounts");
    }
    let st = bg.stop();
    assert!(st.success(), "{st}: {}", bg.output());
    assert!(!mountpoint(&dir), "unmounted when stopped");

    // Unmounted from outside, the command ends by itself.
    let mut bg = Bg::start(&env, &["image", "mount", "lab@1", s(&dir)]);
    bg.wait_for("the mount", || dir.join("disk").exists());
    run("umount", &[s(&dir)]);
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = bg.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "still running after umount"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(st.success(), "{st}");

    // A missing image or mount point is an error naming it.
    let e = env.fails(&["image", "mount", "nope", s(&dir)]);
    assert!(e.contains("nope"), "{e}");
    let e = env.fails(&["image", "mount", "lab", s(&env.path("absent"))]);
    assert!(e.contains("absent"), "{e}");
}

#[test]
fn stock_nbd_clients_read_the_disk_and_each_partition() {
    if !require(
        "image_nbd",
        &["sgdisk", "mkfs.ext4", "mkntfs", "nbdcopy", "qemu-img"],
    ) {
        return;
    }
    let env = Env::new();
    let (want, restored) = setup(&env);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut bg = Bg::start(&env, &["image", "nbd", "lab", "--listen", &listen]);
    bg.wait_for("the NBD listener", || TcpStream::connect(&listen).is_ok());

    let out = env.path("nbdcopy.raw");
    sparse_file(&out, 0);
    run("nbdcopy", &[&format!("nbd://{listen}"), s(&out)]);
    assert!(
        fs::read(&out).unwrap() == want,
        "nbdcopy of the export equals a restore"
    );
    let cmp = run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            &format!("nbd://{listen}/disk"),
            s(&restored),
        ],
    );
    assert!(cmp.contains("identical"), "{cmp}");
    let p1 = env.path("p1.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &format!("nbd://{listen}/p1"),
            s(&p1),
        ],
    );
    let at = (2048 * 512) as usize;
    assert!(
        fs::read(&p1).unwrap() == want[at..at + (36 * MIB) as usize],
        "the p1 export is the partition"
    );
    // Read-only: a write through the stock client fails.
    let w = run_any(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write 0 512",
            &format!("nbd://{listen}/p2"),
        ],
    );
    let said = text(&w);
    assert!(!said.contains("wrote 512"), "{said}");
    assert!(fs::read(env.path("restored.img")).unwrap() == want);
    let st = bg.stop();
    assert!(st.success(), "stops cleanly: {st}");
}

#[test]
fn exports_are_accepted_by_qemu_img_and_imports_dedupe_against_the_store() {
    if !require(
        "image_export",
        &["sgdisk", "mkfs.ext4", "mkntfs", "qemu-img"],
    ) {
        return;
    }
    let env = Env::new();
    let (want, restored) = setup(&env);
    let (raw, q) = (env.path("out.raw"), env.path("out.qcow2"));
    let r = env.json(&["image", "export", "lab", s(&raw)]);
    assert_eq!(r["disk_size"], 64 * MIB);
    assert!(
        fs::read(&raw).unwrap() == want,
        "the raw export equals a restore"
    );
    let used_blocks = run("du", &["-B1", s(&raw)]);
    let used: u64 = used_blocks
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        used < 40 * MIB,
        "the raw export is sparse: {used} bytes allocated"
    );
    env.ok(&["image", "export", "lab", s(&q), "--format", "qcow2"]);
    let check = run("qemu-img", &["check", s(&q)]);
    assert!(check.contains("No errors were found"), "{check}");
    let cmp = run("qemu-img", &["compare", s(&q), s(&raw)]);
    assert!(cmp.contains("Images are identical"), "{cmp}");
    let e = env.fails(&["image", "export", "lab", s(&q), "--format", "qcow2"]);
    assert!(e.contains("exists"), "{e}");

    // Imports: the chunks are those of `lab` already (unused blocks are zeros either way).
    let cq = env.path("compressed.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            s(&restored),
            s(&cq),
        ],
    );
    for (file, name) in [(&cq, "from-qcow2"), (&raw, "from-raw")] {
        let r = env.json(&["image", "import", s(file), "--name", name]);
        assert_eq!(r["new_chunks"], 0, "{name}: {r}");
        let back = env.path(&format!("{name}.img"));
        sparse_file(&back, 64 * MIB);
        env.restore(name, &back);
        assert!(
            fs::read(&back).unwrap() == want,
            "{name} restores the same disk"
        );
    }
    // Bad input: a qcow2 cut short, a directory.
    let bytes = fs::read(&q).unwrap();
    let cut = env.path("cut.qcow2");
    fs::write(&cut, &bytes[..bytes.len() - 300_000]).unwrap();
    let e = env.fails(&["image", "import", s(&cut), "--name", "cut"]);
    assert!(e.contains("qcow2"), "{e}");
    let d = env.path("a-directory");
    fs::create_dir(&d).unwrap();
    let e = env.fails(&["image", "import", s(&d), "--name", "d"]);
    assert!(e.contains("a-directory"), "{e}");
    assert_eq!(env.json(&["image", "list"]).as_array().unwrap().len(), 3);
}

/// `drover image ls` and `get` against the filesystems themselves: a disk with ext4, FAT32,
/// NTFS and exFAT partitions is captured; every directory `ls` lists and every file `get`
/// returns equals what the mounted filesystem (the kernel's ext4, ntfs-3g, exfat-fuse; for FAT,
/// whose kernel driver this machine lacks, mtools' copy of the tree) shows.
#[test]
fn ls_and_get_agree_with_the_mounted_filesystems() {
    if !require(
        "image_ls_get",
        &[
            "root",
            "sgdisk",
            "mkfs.ext4",
            "mkfs.fat",
            "mcopy",
            "mkntfs",
            "ntfs-3g",
            "mkfs.exfat",
            "mount.exfat-fuse",
            "losetup",
        ],
    ) {
        return;
    }
    let env = Env::new();
    let disk = env.path("files.img");
    sparse_file(&disk, 200 * MIB);
    run(
        "sgdisk",
        &[
            "-o",
            "-n1:2048:+40M",
            "-t1:8300",
            "-n2:0:+48M",
            "-t2:0700",
            "-n3:0:+40M",
            "-t3:0700",
            "-n4:0:+40M",
            "-t4:0700",
            s(&disk),
        ],
    );
    let part = |i: u64| {
        (
            2048 * 512 + [0, 40, 88, 128][i as usize - 1] * MIB,
            [40, 48, 40, 40][i as usize - 1] * MIB,
        )
    };
    let tree = env.path("tree");
    make_tree(&tree, 3 * MIB, 31);
    fs::create_dir_all(tree.join("Mixed Case/Deeper")).unwrap();
    fs::write(tree.join("Mixed Case/Deeper/Notes.TXT"), b"found by name\n").unwrap();

    let (o1, l1) = part(1);
    let f = env.path("p1.img");
    sparse_file(&f, l1);
    run("mkfs.ext4", &["-q", "-F", "-d", s(&tree), s(&f)]);
    write_into(&disk, o1, &f);
    let (o2, l2) = part(2);
    let f = env.path("p2.img");
    sparse_file(&f, l2);
    run("mkfs.fat", &["-F", "32", s(&f)]);
    for e in fs::read_dir(&tree).unwrap() {
        run("mcopy", &["-s", "-i", s(&f), s(&e.unwrap().path()), "::/"]);
    }
    write_into(&disk, o2, &f);
    for (i, how) in [(3u64, "ntfs"), (4, "exfat")] {
        let (o, l) = part(i);
        let lo = Loop::attach(&disk, o, Some(l));
        let m = match how {
            "ntfs" => {
                run("mkntfs", &["-Q", "-F", "-q", s(&lo.dev)]);
                Mount::new("ntfs-3g", &[s(&lo.dev)], &env.path("fill-ntfs"))
            }
            _ => {
                run("mkfs.exfat", &[s(&lo.dev)]);
                Mount::new("mount.exfat-fuse", &[s(&lo.dev)], &env.path("fill-exfat"))
            }
        };
        run("cp", &["-r", &format!("{}/.", s(&tree)), s(&m.dir)]);
        drop(m);
        drop(lo);
    }
    env.capture(&disk, "files");

    // What each filesystem shows when mounted (FAT: the tree mtools copied in).
    let shown = |i: u64| -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
        let (o, l) = part(i);
        let lo = Loop::attach(&disk, o, Some(l));
        let dir = env.path(&format!("shown-{i}"));
        let m = match i {
            1 => Mount::new("mount", &["-o", "ro", s(&lo.dev)], &dir),
            3 => Mount::new("ntfs-3g", &["-o", "ro", s(&lo.dev)], &dir),
            _ => Mount::new("mount.exfat-fuse", &["-o", "ro", s(&lo.dev)], &dir),
        };
        let mut t = read_tree(&m.dir);
        t.retain(|p, _| !p.starts_with("lost+found"));
        t
    };
    for i in 1..=4u64 {
        let want = if i == 2 { read_tree(&tree) } else { shown(i) };
        assert!(want.len() > 5, "p{i}: {} files", want.len());
        let mut dirs = std::collections::BTreeSet::new();
        for (p, data) in &want {
            let path = format!("p{i}:/{}", p.display());
            let got = env.drover(&["image", "get", "files", &path, "-"]);
            assert!(got.status.success(), "get {path}: {}", text(&got));
            assert!(
                got.stdout == *data,
                "get {path} differs from the mounted file"
            );
            let mut d = p.parent();
            while let Some(x) = d {
                dirs.insert(x.to_path_buf());
                d = x.parent();
            }
        }
        for d in dirs {
            let mut names: Vec<String> = want
                .keys()
                .filter_map(|p| p.strip_prefix(&d).ok())
                .filter_map(|r| r.components().next())
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names.dedup();
            let path = format!("p{i}:/{}", d.display());
            let listed: Vec<serde_json::Value> =
                serde_json::from_str(&env.ok(&["--json", "image", "ls", "files", &path])).unwrap();
            let mut got: Vec<String> = listed
                .iter()
                .map(|e| e["name"].as_str().unwrap().to_string())
                .filter(|n| !(i == 1 && d.as_os_str().is_empty() && n == "lost+found"))
                .collect();
            got.sort();
            assert_eq!(got, names, "ls {path}");
        }
        // Names match in any case where the filesystem does.
        if i > 1 {
            let got = env.ok(&[
                "image",
                "get",
                "files",
                &format!("p{i}:/mixed case/deeper/notes.txt"),
                "-",
            ]);
            assert_eq!(got, "found by name\n", "p{i}");
        }
    }
}
