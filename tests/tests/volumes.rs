//! Volumes, as a RHEL-style disk holds them: a GPT disk with an EFI partition and an LVM2 PV
//! whose logical volumes carry XFS (root, grown into a second run of extents) and ext4 (home),
//! made by Debian's lvm2 on a loop device without device-mapper (`--activate n --zero n`),
//! the filesystems written into the LVs' extents at the offsets LVM reports. Captured through
//! the CLI, each LV read by its filesystem's reader (inspect names them); restored over random
//! bytes and over a disk that held another PV; LVM reads the restored PV, each LV passes its
//! checker and holds the same files.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use drover_tests::*;

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// LVM's tools confined to one device and a private configuration directory, without
/// device-mapper or udev.
struct Lvm {
    dev: String,
    more: Vec<String>,
    sys: PathBuf,
}

impl Lvm {
    fn new(dev: &Path, sys: PathBuf) -> Self {
        fs::create_dir_all(sys.join("lock")).unwrap();
        Self {
            dev: s(dev).to_string(),
            more: Vec::new(),
            sys,
        }
    }

    /// Confined to `devs` (several PVs).
    fn on(devs: &[&Path], sys: PathBuf) -> Self {
        let mut l = Self::new(devs[0], sys);
        l.more = devs[1..].iter().map(|d| s(d).to_string()).collect();
        l
    }

    fn cmd(&self, tool: &str, args: &[&str]) -> String {
        let accept: String = std::iter::once(&self.dev)
            .chain(&self.more)
            .map(|d| format!("\"a|^{d}$|\","))
            .collect();
        let conf = format!(
            "devices {{ filter=[{accept}\"r|.*|\"] obtain_device_list_from_udev=0 }} \
             activation {{ udev_sync=0 udev_rules=0 }} global {{ locking_dir=\"{}\" }}",
            self.sys.join("lock").display()
        );
        let out = Command::new(tool)
            .env("LVM_SYSTEM_DIR", &self.sys)
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .args(["--config", &conf])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// An LV's runs on the PV as LVM reports them: `(pv offset, len)` in bytes, in LV order.
    fn runs(&self, lv: &str) -> Vec<(u64, u64)> {
        let q = |tool: &str, field: &str| -> u64 {
            let a = ["--noheadings", "--nosuffix", "--units", "b", "-o", field];
            self.cmd(tool, &a).trim().parse().unwrap()
        };
        let (pe_start, extent) = (q("pvs", "pe_start"), q("vgs", "vg_extent_size"));
        let out = self.cmd(
            "lvs",
            &[
                "--noheadings",
                "--segments",
                "-o",
                "lv_name,seg_start_pe,seg_pe_ranges",
            ],
        );
        let mut runs: Vec<(u64, u64, u64)> = out
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.first() == Some(&lv))
            .map(|f| {
                let (a, b) = f[2].rsplit(':').next().unwrap().split_once('-').unwrap();
                let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
                let le: u64 = f[1].parse().unwrap();
                (le, pe_start + a * extent, (b - a + 1) * extent)
            })
            .collect();
        runs.sort_unstable();
        assert!(!runs.is_empty(), "no segments of {lv} in {out}");
        runs.into_iter().map(|(_, p, n)| (p, n)).collect()
    }
}

/// Copies an LV's bytes out of the PV (at `base` in `disk`) into `dst`, or back in.
fn lv_out(disk: &Path, base: u64, runs: &[(u64, u64)], dst: &Path) {
    let mut data = Vec::new();
    for &(p, n) in runs {
        data.extend(read_range(disk, base + p, n));
    }
    fs::write(dst, data).unwrap();
}

fn lv_in(disk: &Path, base: u64, runs: &[(u64, u64)], src: &Path) {
    let data = fs::read(src).unwrap();
    let mut at = 0usize;
    for &(p, n) in runs {
        patch(disk, base + p, &data[at..at + n as usize]);
        at += n as usize;
    }
}

/// Fills a mounted filesystem: a stale file written and deleted, then the tree.
fn fill(img: &Path, tree: &Path, mnt: &Path) {
    let m = Mount::new("mount", &["-o", "loop", s(img)], mnt);
    random_file(&m.dir.join("stale.bin"), 8 * MIB, 41);
    run("sync", &[]);
    run("cp", &["-r", &format!("{}/.", s(tree)), s(&m.dir)]);
    fs::remove_file(m.dir.join("stale.bin")).unwrap();
}

const P2: u64 = 18 * MIB;
const PV_LEN: u64 = 460 * MIB;
const DISK: u64 = P2 + PV_LEN + MIB;

/// A GPT disk of `P2 + len + 1 MiB` over random bytes: partition 1 (16 MiB, EFI) and
/// partition 2 (`len` bytes from `P2`, of type `kind`).
fn gpt_disk_of(path: &Path, seed: u64, len: u64, kind: &str) {
    random_file(path, P2 + len + MIB, seed);
    run_stdin(
        "sfdisk",
        &["-q", s(path)],
        &format!(
            "label: gpt\nstart=2048, size=32768, type=uefi\nstart={}, size={}, type={kind}\n",
            P2 / 512,
            len / 512
        ),
    );
}

/// The RHEL-style disk: partition 2 an LVM PV of `PV_LEN`.
fn gpt_disk(path: &Path, seed: u64) {
    gpt_disk_of(path, seed, PV_LEN, "lvm");
}

/// Makes the PV in partition 2 with LVs root (XFS, in two runs) and home (ext4); returns
/// their runs.
fn make_pv(env: &Env, disk: &Path, vg: &str) -> [Vec<(u64, u64)>; 2] {
    let lo = Loop::attach(disk, P2, Some(PV_LEN));
    let lvm = Lvm::new(&lo.dev, env.path(&format!("lvm-{vg}")));
    lvm.cmd("pvcreate", &[&lvm.dev]);
    lvm.cmd("vgcreate", &[vg, &lvm.dev]);
    let create = ["--driverloaded", "n", "--activate", "n", "--zero", "n"];
    lvm.cmd(
        "lvcreate",
        &[&create[..], &["-n", "root", "-L", "320M", vg]].concat(),
    );
    lvm.cmd(
        "lvcreate",
        &[&create[..], &["-n", "home", "-L", "64M", vg]].concat(),
    );
    lvm.cmd(
        "lvextend",
        &["--driverloaded", "n", "-L", "+40M", &format!("{vg}/root")],
    );
    [lvm.runs("root"), lvm.runs("home")]
}

#[test]
fn xfs_and_ext4_on_lvm_restore_as_working_volumes() {
    if !require(
        "lvm volumes",
        &[
            "root",
            "pvcreate",
            "mkfs.xfs",
            "xfs_repair",
            "mkfs.ext4",
            "e2fsck",
            "mkfs.vfat",
            "sfdisk",
            "losetup",
            "mount",
            "fuse",
        ],
    ) {
        return;
    }
    let env = Env::new();
    let disk = env.path("rhel.img");
    gpt_disk(&disk, 1);
    run(
        "mkfs.vfat",
        &["-F", "32", "--offset", "2048", s(&disk), "16384"],
    );
    let [root, home] = make_pv(&env, &disk, "rhel");
    assert_eq!(root.len(), 2, "root in two runs: {root:?}");
    let len = |r: &[(u64, u64)]| r.iter().map(|x| x.1).sum::<u64>();

    let tree_root = env.path("tree-root");
    make_tree(&tree_root, 40 * MIB, 1);
    let tree_home = env.path("tree-home");
    make_tree(&tree_home, 12 * MIB, 2);
    let root_img = env.path("root.img");
    random_file(&root_img, len(&root), 3);
    run("mkfs.xfs", &["-q", "-f", s(&root_img)]);
    fill(&root_img, &tree_root, &env.path("mnt"));
    let home_img = env.path("home.img");
    random_file(&home_img, len(&home), 4);
    run("mkfs.ext4", &["-q", "-F", s(&home_img)]);
    fill(&home_img, &tree_home, &env.path("mnt"));
    lv_in(&disk, P2, &root, &root_img);
    lv_in(&disk, P2, &home, &home_img);
    let want: [BTreeMap<PathBuf, Vec<u8>>; 2] = [read_tree(&tree_root), read_tree(&tree_home)];

    let cap = env.capture(&disk, "rhel");
    assert_eq!(cap["warnings"].as_array().unwrap().len(), 0, "{cap}");
    let used = cap["used_bytes"].as_u64().unwrap();
    // The files (52 MiB), XFS's log, the metadata: far less than the 460 MiB PV's old bytes.
    assert!(used < 160 * MIB, "{used} bytes used");
    let insp = env.json(&["image", "inspect", "rhel"]);
    let pv = &insp["areas"][2]["fs"];
    assert_eq!(pv["kind"], "lvm2", "{insp}");
    assert_eq!(pv["label"], "rhel");
    let vols: Vec<(String, String)> = pv["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().into(),
                v["kind"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        vols,
        [
            ("rhel/root".to_string(), "xfs".to_string()),
            ("rhel/home".into(), "ext4".into())
        ]
    );
    let text = env.ok(&["image", "inspect", "rhel"]);
    assert!(
        text.lines()
            .any(|l| l.contains("rhel/root") && l.contains("xfs") && l.contains("allocation")),
        "{text}"
    );

    // Opened without restoring it: each logical volume is a file of the mounted image, its
    // runs in their own order (root's second run after its first), and mounts as its
    // filesystem with the files captured.
    {
        let dir = env.path("opened");
        fs::create_dir(&dir).unwrap();
        let mut bg = Bg::start(&env, &["image", "mount", "rhel", s(&dir)]);
        bg.wait_for("the mount", || dir.join("rhel-home").exists());
        assert_eq!(
            fs::metadata(dir.join("rhel-root")).unwrap().len(),
            len(&root)
        );
        let m = Mount::new(
            "mount",
            &["-o", "ro,loop,norecovery", s(&dir.join("rhel-root"))],
            &env.path("lv-root"),
        );
        assert_same_files(&want[0], &read_tree(&m.dir), "XFS root through the mount");
        drop(m);
        let m = Mount::new(
            "mount",
            &["-o", "ro,loop", s(&dir.join("rhel-home"))],
            &env.path("lv-home"),
        );
        assert_same_files(&want[1], &read_tree(&m.dir), "ext4 home through the mount");
        drop(m);
        let st = bg.stop();
        assert!(st.success(), "{st}");
    }

    // Targets: random bytes, and a disk whose PV held other LVs at other places.
    let noisy = env.path("target-random.img");
    random_file(&noisy, DISK, 77);
    let prev = env.path("target-prev.img");
    gpt_disk(&prev, 78);
    let lo = Loop::attach(&prev, P2, Some(PV_LEN));
    let lvm = Lvm::new(&lo.dev, env.path("lvm-prev"));
    lvm.cmd("pvcreate", &[&lvm.dev]);
    lvm.cmd("vgcreate", &["old", &lvm.dev]);
    lvm.cmd(
        "lvcreate",
        &[
            "--driverloaded",
            "n",
            "--activate",
            "n",
            "--zero",
            "n",
            "-n",
            "x",
            "-L",
            "200M",
            "old",
        ],
    );
    drop(lo);

    for (what, target) in [("over random bytes", &noisy), ("over another PV", &prev)] {
        let lo = Loop::attach(target, 0, None);
        env.restore("rhel", &lo.dev);
        drop(lo);
        // LVM reads the restored PV and places the LVs where they were.
        let lo = Loop::attach(target, P2, Some(PV_LEN));
        let lvm = Lvm::new(&lo.dev, env.path(&format!("lvm-check-{}", what.len())));
        assert_eq!(lvm.runs("root"), root, "{what}");
        assert_eq!(lvm.runs("home"), home, "{what}");
        drop(lo);
        for (i, (runs, check)) in [(&root, ["xfs_repair", "-n"]), (&home, ["e2fsck", "-fn"])]
            .into_iter()
            .enumerate()
        {
            let out = env.path(&format!("lv{i}.img"));
            lv_out(target, P2, runs, &out);
            run(check[0], &[check[1], s(&out)]);
            let m = Mount::new("mount", &["-o", "loop,ro", s(&out)], &env.path("mnt-check"));
            assert_same_files(&want[i], &read_tree(&m.dir), &format!("LV {i} {what}"));
        }
    }
}

/// Decrypts `len` bytes of a LUKS2 volume's data segment (aes-xts-plain64, IVs counting
/// 512-byte sectors) with Python's `cryptography`, independent of drover's own code; the
/// volume key comes from `cryptsetup luksDump --dump-volume-key`.
fn decrypt_with_python(env: &Env, vol: &Path, key_file: &Path, out: &Path) {
    let dump = run(
        "cryptsetup",
        &[
            "luksDump",
            "--batch-mode",
            "--dump-volume-key",
            "--key-file",
            s(key_file),
            s(vol),
        ],
    );
    let hex: String = dump
        .split("MK dump:")
        .nth(1)
        .unwrap_or_else(|| panic!("no volume key in {dump}"))
        .lines()
        .take_while(|l| l.trim().chars().all(|c| c.is_ascii_hexdigit() || c == ' '))
        .flat_map(|l| l.split_whitespace())
        .collect();
    let info = run("cryptsetup", &["luksDump", s(vol)]);
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {info}"))
    };
    let (offset, sector) = (field("offset:"), field("sector:"));
    let len = fs::metadata(vol).unwrap().len() - offset;
    let script = env.path("decrypt.py");
    fs::write(
        &script,
        "import sys\n\
         from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes\n\
         vol, off, n, sector, key, out = sys.argv[1:]\n\
         off, n, sector, key = int(off), int(n), int(sector), bytes.fromhex(key)\n\
         with open(vol, 'rb') as f, open(out, 'wb') as o:\n\
         \x20   f.seek(off)\n\
         \x20   for pos in range(0, n - n % sector, sector):\n\
         \x20       d = Cipher(algorithms.AES(key), modes.XTS((pos // 512).to_bytes(16, 'little'))).decryptor()\n\
         \x20       o.write(d.update(f.read(sector)) + d.finalize())\n",
    )
    .unwrap();
    run(
        "python3",
        &[
            s(&script),
            s(vol),
            &offset.to_string(),
            &len.to_string(),
            &sector.to_string(),
            &hex,
            s(out),
        ],
    );
}

/// A marker that must never appear in what drover stores of an encrypted volume.
const MARKER: &[u8] = b"drover-plaintext-marker-5a17c3";

#[test]
fn lvm_on_luks_is_stored_as_the_ciphertext_of_its_used_blocks() {
    if !require(
        "lvm on luks",
        &[
            "root",
            "cryptsetup",
            "python3",
            "pvcreate",
            "mkfs.ext4",
            "e2fsck",
            "debugfs",
            "mkswap",
            "mkfs.vfat",
            "sfdisk",
            "losetup",
        ],
    ) {
        return;
    }
    let env = Env::new();
    // An encrypted laptop as Ubuntu installs it: LUKS2 (Argon2id) holding an LVM PV with
    // root (ext4) and swap LVs. Made inside out: the PV and its filesystems in a file, then
    // encrypted in place by cryptsetup, which takes 16 MiB for its header.
    const CRYPT: u64 = 220 * MIB;
    let inner = env.path("crypt.img");
    random_file(&inner, CRYPT, 5);
    let [root, swap] = {
        let lo = Loop::attach(&inner, 0, Some(CRYPT - 16 * MIB));
        let lvm = Lvm::new(&lo.dev, env.path("lvm-luks"));
        lvm.cmd("pvcreate", &[&lvm.dev]);
        lvm.cmd("vgcreate", &["ubuntu-vg", &lvm.dev]);
        let create = ["--driverloaded", "n", "--activate", "n", "--zero", "n"];
        lvm.cmd(
            "lvcreate",
            &[&create[..], &["-n", "root", "-L", "150M", "ubuntu-vg"]].concat(),
        );
        lvm.cmd(
            "lvcreate",
            &[&create[..], &["-n", "swap", "-L", "24M", "ubuntu-vg"]].concat(),
        );
        [lvm.runs("root"), lvm.runs("swap")]
    };
    let len = |r: &[(u64, u64)]| r.iter().map(|x| x.1).sum::<u64>();
    let tree = env.path("tree");
    make_tree(&tree, 20 * MIB, 9);
    fs::write(tree.join("marker.txt"), MARKER.repeat(1000)).unwrap();
    let want = read_tree(&tree);
    let root_img = env.path("root.img");
    sparse_file(&root_img, len(&root));
    run("mkfs.ext4", &["-q", "-F", "-d", s(&tree), s(&root_img)]);
    lv_in(&inner, 0, &root, &root_img);
    let swap_img = env.path("swap.img");
    sparse_file(&swap_img, len(&swap));
    run("mkswap", &["-q", s(&swap_img)]);
    lv_in(&inner, 0, &swap, &swap_img);
    let key = env.path("luks.key");
    fs::write(&key, "lab passphrase\n").unwrap();
    run(
        "cryptsetup",
        &[
            "reencrypt",
            "--encrypt",
            "--batch-mode",
            "--type",
            "luks2",
            "--sector-size",
            "4096",
            "--reduce-device-size",
            "16M",
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "16384",
            "--pbkdf-parallel",
            "1",
            "--pbkdf-force-iterations",
            "4",
            "--key-file",
            s(&key),
            s(&inner),
        ],
    );
    let disk = env.path("laptop.img");
    gpt_disk_of(&disk, 6, CRYPT, "linux");
    run(
        "mkfs.vfat",
        &["-F", "32", "--offset", "2048", s(&disk), "16384"],
    );
    write_into(&disk, P2, &inner);
    let has_marker = |p: &Path| {
        fs::read(p)
            .unwrap()
            .windows(MARKER.len())
            .any(|w| w == MARKER)
    };
    assert!(!has_marker(&disk), "the source must hold no plaintext");

    // Without a key: the raw copy of partition 2, saying so.
    let cap = env.capture(&disk, "laptop-raw");
    let w = cap["warnings"].as_array().unwrap();
    assert!(
        w.len() == 1
            && w[0]
                .as_str()
                .unwrap()
                .starts_with("partition 2: LUKS2 volume")
            && w[0].as_str().unwrap().contains("opened without a key")
            && w[0].as_str().unwrap().contains("raw copy"),
        "{cap}"
    );
    assert!(
        cap["used_bytes"].as_u64().unwrap() > CRYPT * 9 / 10,
        "{cap}"
    );

    // With the key: the used blocks of root and swap, as ciphertext.
    let cap = env.json(&[
        "image",
        "capture",
        s(&disk),
        "--name",
        "laptop",
        "--luks-key-file",
        s(&key),
    ]);
    assert_eq!(cap["warnings"].as_array().unwrap().len(), 0, "{cap}");
    let used = cap["used_bytes"].as_u64().unwrap();
    assert!(used < 90 * MIB, "{used} of a {CRYPT}-byte volume");
    let insp = env.json(&["image", "inspect", "laptop"]);
    let f = &insp["areas"][2]["fs"];
    let vols: Vec<(&str, &str)> = f["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(f["kind"], "luks", "{insp}");
    assert_eq!(vols.len(), 3, "{insp}");
    assert!(
        vols[0].0.starts_with("luks-") && vols[0].1 == "lvm2",
        "{vols:?}"
    );
    assert_eq!(
        &vols[1..],
        [("ubuntu-vg/root", "ext4"), ("ubuntu-vg/swap", "swap")]
    );
    // A wrong key is not an error of the capture: the raw copy, naming why.
    let wrong = env.path("wrong.key");
    fs::write(&wrong, "not it").unwrap();
    let cap = env.json(&[
        "image",
        "capture",
        s(&disk),
        "--name",
        "laptop-wrong",
        "--luks-key-file",
        s(&wrong),
    ]);
    assert!(cap.to_string().contains("no key given opens"), "{cap}");

    let target = env.path("target.img");
    random_file(&target, fs::metadata(&disk).unwrap().len(), 7);
    let lo = Loop::attach(&target, 0, None);
    env.restore("laptop", &lo.dev);
    drop(lo);
    assert!(!has_marker(&target), "plaintext reached the target");
    let vol = env.path("restored-crypt.img");
    extract(&target, P2, CRYPT, &vol);
    // The restored volume opens with the same passphrase, and its contents decrypt (by
    // independent code) to an LVM PV whose root passes e2fsck with the same files.
    run(
        "cryptsetup",
        &["open", "--test-passphrase", "--key-file", s(&key), s(&vol)],
    );
    let plain = env.path("plain.img");
    decrypt_with_python(&env, &vol, &key, &plain);
    let out = env.path("root-out.img");
    lv_out(&plain, 0, &root, &out);
    run("e2fsck", &["-fn", s(&out)]);
    let m = Mount::new("mount", &["-o", "loop,ro", s(&out)], &env.path("mnt-luks"));
    assert_same_files(&want, &read_tree(&m.dir), "root inside LUKS");
    drop(m);
    let out = env.path("swap-out.img");
    lv_out(&plain, 0, &swap, &out);
    assert_eq!(&read_range(&out, 4096 - 10, 10), b"SWAPSPACE2");
}

/// A striped LV's bytes, chunk by chunk: LV chunk `c` of `stripe` bytes is on PV `c % 2`, its
/// row `c / 2`, from `starts[pv]` (disk offsets). Out of `disk` into `img`, or back in.
fn stripes(disk: &Path, starts: [u64; 2], stripe: u64, img: &Path, into_disk: bool) {
    let len = if into_disk {
        fs::metadata(img).unwrap().len()
    } else {
        fs::metadata(img).map(|m| m.len()).unwrap_or(0)
    };
    assert!(len > 0 && len % (2 * stripe) == 0);
    let mut data = if into_disk {
        fs::read(img).unwrap()
    } else {
        vec![0u8; len as usize]
    };
    for c in 0..len / stripe {
        let at = starts[(c % 2) as usize] + (c / 2) * stripe;
        let piece = &mut data[(c * stripe) as usize..((c + 1) * stripe) as usize];
        if into_disk {
            patch(disk, at, piece);
        } else {
            piece.copy_from_slice(&read_range(disk, at, stripe));
        }
    }
    if !into_disk {
        fs::write(img, data).unwrap();
    }
}

#[test]
fn a_striped_lv_over_two_partitions_is_read_through_its_stripes() {
    if !require(
        "striped lvm volume",
        &[
            "root",
            "pvcreate",
            "lvcreate",
            "mkfs.ext4",
            "e2fsck",
            "sfdisk",
            "losetup",
            "mount",
        ],
    ) {
        return;
    }
    const PV: u64 = 200 * MIB;
    const P3: u64 = P2 + PV;
    let env = Env::new();
    let disk = env.path("striped.img");
    random_file(&disk, P3 + PV + MIB, 11);
    run_stdin(
        "sfdisk",
        &["-q", s(&disk)],
        &format!(
            "label: gpt\nstart=2048, size=32768, type=uefi\nstart={}, size={}, type=lvm\n\
             start={}, size={}, type=lvm\n",
            P2 / 512,
            PV / 512,
            P3 / 512,
            PV / 512
        ),
    );
    run(
        "mkfs.vfat",
        &["-F", "32", "--offset", "2048", s(&disk), "16384"],
    );
    // Two PVs, one VG, an LV striped over both in 64 KiB chunks.
    let (stripe, lv_len, starts) = {
        let a = Loop::attach(&disk, P2, Some(PV));
        let b = Loop::attach(&disk, P3, Some(PV));
        let lvm = Lvm::on(&[&a.dev, &b.dev], env.path("lvm-striped"));
        lvm.cmd("pvcreate", &[s(&a.dev), s(&b.dev)]);
        lvm.cmd("vgcreate", &["data", s(&a.dev), s(&b.dev)]);
        lvm.cmd(
            "lvcreate",
            &[
                "--driverloaded",
                "n",
                "--activate",
                "n",
                "--zero",
                "n",
                "-i",
                "2",
                "-I",
                "64k",
                "-n",
                "store",
                "-L",
                "160M",
                "data",
            ],
        );
        let q = |tool: &str, args: &[&str]| {
            lvm.cmd(
                tool,
                &[&["--noheadings", "--nosuffix", "--units", "b"], args].concat(),
            )
        };
        let extent: u64 = q("vgs", &["-o", "vg_extent_size"]).trim().parse().unwrap();
        let seg = q(
            "lvs",
            &[
                "--segments",
                "-o",
                "stripes,stripe_size,seg_pe_ranges,lv_size",
            ],
        );
        let f: Vec<&str> = seg.split_whitespace().collect();
        assert_eq!(f[0], "2", "{seg}");
        let stripe: u64 = f[1].parse().unwrap();
        let lv_len: u64 = f[4].parse().unwrap();
        let pes = q("pvs", &["-o", "pv_name,pe_start"]);
        let start_of = |dev: &Path| -> u64 {
            pes.lines()
                .find(|l| l.contains(s(dev)))
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap()
                .parse()
                .unwrap()
        };
        // "/dev/loopA:0-79 /dev/loopB:0-79": each stripe's first extent.
        let first = |dev: &Path| -> u64 {
            let r = [f[2], f[3]]
                .into_iter()
                .find(|r| r.starts_with(s(dev)))
                .unwrap();
            r.rsplit(':')
                .next()
                .unwrap()
                .split('-')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        let starts = [
            P2 + start_of(&a.dev) + first(&a.dev) * extent,
            P3 + start_of(&b.dev) + first(&b.dev) * extent,
        ];
        // Stripe 0 is on the first PV named.
        assert!(f[2].starts_with(s(&a.dev)), "{seg}");
        (stripe, lv_len, starts)
    };
    assert_eq!(stripe, 64 << 10);
    let tree = env.path("tree");
    make_tree(&tree, 40 * MIB, 12);
    let img = env.path("store.img");
    random_file(&img, lv_len, 13);
    run("mkfs.ext4", &["-q", "-F", s(&img)]);
    fill(&img, &tree, &env.path("mnt"));
    stripes(&disk, starts, stripe, &img, true);

    let cap = env.capture(&disk, "striped");
    assert_eq!(cap["warnings"].as_array().unwrap().len(), 0, "{cap}");
    let used = cap["used_bytes"].as_u64().unwrap();
    // The files (40 MiB) and the metadata: far less than the 160 MiB LV's old bytes.
    assert!(used > 40 * MIB && used < 100 * MIB, "{used} bytes used");
    let insp = env.json(&["image", "inspect", "striped"]);
    for area in [2, 3] {
        let pv = &insp["areas"][area]["fs"];
        assert_eq!(pv["kind"], "lvm2", "{insp}");
        let v = &pv["volumes"][0];
        assert_eq!(v["name"], "data/store", "{insp}");
        assert_eq!(v["kind"], "ext4", "{insp}");
    }

    let target = env.path("target.img");
    random_file(&target, P3 + PV + MIB, 14);
    env.restore("striped", &target);
    let back = env.path("store-back.img");
    fs::write(&back, vec![0u8; lv_len as usize]).unwrap();
    stripes(&target, starts, stripe, &back, false);
    run("e2fsck", &["-fn", s(&back)]);
    let m = Mount::new("mount", &["-o", "loop,ro", s(&back)], &env.path("mnt-back"));
    assert_same_files(
        &read_tree(&tree),
        &read_tree(&m.dir),
        "the striped LV restored",
    );
}
