//! Filesystems this machine's kernel has no driver for, written and read back by a real one:
//! Debian's kernel (the boot environment's) in a QEMU VM with a busybox initramfs. Each image
//! is made on the host by its own tool, then the VM mounts it, writes a stale file, syncs,
//! deletes it and copies a tree of files in (so freed blocks hold old data) and unmounts.
//! drover captures it by its used blocks and restores it over random bytes and over a disk
//! that held another filesystem; the host's checker passes where Debian has one, and a second
//! VM boot mounts every restored image read-only and checks every file's MD5 against the
//! tree's (the sources too, as the control of what the fill left). JFS, reiserfs, NILFS2 and
//! UFS1 (built from the tree by makefs; Linux reads UFS only) here: this machine's kernel has
//! no driver for them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drover_tests::vm::{build_boot_env, qemu_dir};
use drover_tests::*;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 128 * MIB;

const NEEDS: &[&str] = &[
    "root",
    "qemu",
    "cpio",
    "busybox",
    "mkfs.jfs",
    "fsck.jfs",
    "mkreiserfs",
    "reiserfsck",
    "mkfs.nilfs2",
    "makefs",
    "mkfs.ext4",
];

/// A filesystem under test: its image's name, drover's name for it, the kernel's (and its
/// mount options), how the host makes it (the image, then for `from_tree` the tree, are
/// appended to `mkfs`), and how the host checks it (when Debian has a checker). One made from
/// the tree is only read by the VM (this kernel writes no UFS); the others are filled by it.
struct Kind {
    name: &'static str,
    drover: &'static str,
    mount: (&'static str, &'static str),
    mkfs: &'static [&'static str],
    from_tree: bool,
    check: Option<&'static [&'static str]>,
}

const KINDS: &[Kind] = &[
    Kind {
        name: "jfs",
        drover: "jfs",
        mount: ("jfs", "-"),
        mkfs: &["mkfs.jfs", "-q"],
        from_tree: false,
        check: Some(&["fsck.jfs", "-n", "-f"]),
    },
    Kind {
        name: "reiserfs",
        drover: "reiserfs",
        mount: ("reiserfs", "-"),
        mkfs: &["mkreiserfs", "-q", "-f"],
        from_tree: false,
        check: Some(&["reiserfsck", "--check", "-y", "-q"]),
    },
    // 4 MiB segments: the default 8 MiB ones need more than 128 MiB. Debian has no checker.
    Kind {
        name: "nilfs2",
        drover: "nilfs2",
        mount: ("nilfs2", "-"),
        mkfs: &["mkfs.nilfs2", "-q", "-f", "-B", "1024"],
        from_tree: false,
        check: None,
    },
    // NetBSD's makefs builds UFS from a folder; Debian has no UFS checker. Not its UFS2:
    // makefs puts that superblock at 8 KiB, where Linux does not look for one (FreeBSD's newfs
    // puts it at 64 KiB).
    Kind {
        name: "ufs1",
        drover: "ufs",
        mount: ("ufs", "ufstype=44bsd"),
        mkfs: &["makefs", "-t", "ffs", "-o", "version=1", "-s", "128m"],
        from_tree: true,
        check: None,
    },
];

/// Whether a console line ends with `line` (the first may carry the firmware's escapes).
fn said(console: &str, line: &str) -> bool {
    console.lines().any(|l| l.trim_end().ends_with(line))
}

/// The VM's name for virtio disk `i`.
fn dev(i: usize) -> String {
    format!("vd{}", (b'a' + i as u8) as char)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `cmd` (program and arguments) with `img` appended; asserts success.
fn with_img(cmd: &[&str], img: &Path, what: &str) {
    let mut a = cmd[1..].to_vec();
    a.push(s(img));
    let out = run_any(cmd[0], &a);
    assert!(
        out.status.success(),
        "{what}: {cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The kernel's directory of modules in the boot environment's cache, and its version.
fn kernel_modules() -> (PathBuf, String) {
    for e in fs::read_dir("/var/cache/drover/boot-env").unwrap() {
        let p = e.unwrap().path().join("lib/modules");
        if let Ok(mut d) = fs::read_dir(&p) {
            if let Some(Ok(v)) = d.next() {
                return (p, v.file_name().to_string_lossy().into_owned());
            }
        }
    }
    panic!("no kernel modules in /var/cache/drover/boot-env (build-boot-env unpacks them)");
}

/// An initramfs: busybox, the modules for virtio disks and `fs` with their dependencies (in
/// load order), the tree of files under /files with its MD5 list, and `/init`, which fills
/// (`drover.phase=fill`) or verifies each disk named in /disks, then powers off.
fn initramfs(dir: &Path, tree: &Path, modules: &[&str]) -> PathBuf {
    let (mods, kver) = kernel_modules();
    let stage = dir.join("initramfs");
    let _ = fs::remove_dir_all(&stage);
    for d in ["bin", "dev", "proc", "sys", "mnt", "lib/modules"] {
        fs::create_dir_all(stage.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", stage.join("bin/busybox")).unwrap();
    let mut load = Vec::<String>::new();
    for m in ["virtio_pci", "virtio_blk"].iter().chain(modules.iter()) {
        let out = Command::new("modprobe")
            .args(["-d"])
            .arg(mods.parent().unwrap().parent().unwrap())
            .args(["-S", &kver, "--show-depends", m])
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(path) = line.strip_prefix("insmod ") {
                let path = path.split_whitespace().next().unwrap();
                let name = Path::new(path).file_name().unwrap().to_string_lossy();
                if !load.iter().any(|l| l == name.as_ref()) {
                    // Debian compresses its modules; busybox's insmod reads them as they are.
                    fs::copy(path, stage.join("lib/modules").join(name.as_ref())).unwrap();
                    load.push(name.into_owned());
                }
            }
        }
    }
    fs::write(stage.join("modules"), load.join("\n") + "\n").unwrap();
    run(
        "cp",
        &["-a", &format!("{}/.", s(tree)), s(&stage.join("files"))],
    );
    // The MD5 list, by paths relative to the tree (what the VM checks inside its mount).
    let out = Command::new("sh")
        .arg("-c")
        .arg("find . -type f -exec md5sum {} +")
        .current_dir(tree)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        read_tree(tree).len()
    );
    fs::write(stage.join("files.md5"), &out.stdout).unwrap();
    let init = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules); do insmod /lib/modules/$m || echo "DROVER-VM insmod $m failed"; done
phase=fill
for a in $(cat /proc/cmdline); do case $a in drover.phase=*) phase=${a#drover.phase=} ;; esac; done
sleep 1
while read dev fs opts; do
  [ "$opts" = - ] && opts= || opts=",$opts"
  if [ "$phase" = fill ]; then
    if mount -t $fs -o rw$opts /dev/$dev /mnt; then
      dd if=/dev/urandom of=/mnt/stale.bin bs=1M count=6 2>/dev/null
      sync
      rm /mnt/stale.bin
      cp -a /files/. /mnt/
      sync
      umount /mnt && echo "DROVER-VM filled $dev"
    fi
  else
    if mount -t $fs -o ro$opts /dev/$dev /mnt; then
      # Every file but the one mkfs.nilfs2 puts in the root for its tools.
      n=$(find /mnt -type f ! -path /mnt/.nilfs | wc -l)
      if (cd /mnt && md5sum -c -s /files.md5) && [ "$n" = "$(wc -l < /files.md5)" ]; then
        echo "DROVER-VM verified $dev"
      else
        echo "DROVER-VM mismatch $dev ($n files)"
        (cd /mnt && md5sum -c /files.md5 2>&1 | grep -v ': OK$' | head -5)
      fi
      umount /mnt
    fi
  fi
done < /disks
echo DROVER-VM done
poweroff -f
"#;
    fs::write(stage.join("init"), init).unwrap();
    run("chmod", &["+x", s(&stage.join("init"))]);
    let img = dir.join("initramfs.cpio");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc --quiet > {}",
            s(&stage),
            s(&img)
        ))
        .status()
        .unwrap();
    assert!(out.success());
    img
}

/// Boots the kernel with `initrd` (its /disks listing `disks`' filesystems in order) and the
/// `disks` as virtio disks; returns the serial console once the VM has powered off.
fn boot(dir: &Path, kernel: &Path, initrd: &Path, phase: &str, disks: &[(&Path, &Kind)]) -> String {
    // /disks goes in a second cpio appended to the first: the kernel unpacks both.
    let extra = dir.join("disks-stage");
    let _ = fs::remove_dir_all(&extra);
    fs::create_dir_all(&extra).unwrap();
    let list: String = disks
        .iter()
        .enumerate()
        .map(|(i, (_, k))| format!("{} {} {}\n", dev(i), k.mount.0, k.mount.1))
        .collect();
    fs::write(extra.join("disks"), list).unwrap();
    let both = dir.join(format!("initrd-{phase}.cpio"));
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cp {} {} && cd {} && echo disks | cpio -o -H newc --quiet >> {}",
            s(initrd),
            s(&both),
            s(&extra),
            s(&both)
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let serial = dir.join(format!("serial-{phase}.log"));
    let q = qemu_dir();
    let mut c = Command::new(q.join("usr/bin/qemu-system-x86_64"));
    c.env("QEMU_MODULE_DIR", q.join("usr/lib/x86_64-linux-gnu/qemu"))
        .arg("-L")
        .arg(q.join("usr/share/qemu"))
        .args(["-L", "/usr/share/seabios", "-L", "/usr/share/qemu"])
        .args(["-machine", "q35", "-accel", "tcg", "-m", "512", "-smp", "1"])
        .args([
            "-nographic",
            "-monitor",
            "none",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(&both)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 quiet drover.phase={phase}"))
        .arg("-serial")
        .arg(format!("file:{}", s(&serial)));
    for (i, (disk, _)) in disks.iter().enumerate() {
        c.arg("-drive")
            .arg(format!("file={},format=raw,if=virtio,index={i}", s(disk)));
    }
    let mut child: Child = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting QEMU");
    let start = Instant::now();
    let done = loop {
        if let Ok(Some(_)) = child.try_wait() {
            break true;
        }
        if start.elapsed() > Duration::from_secs(600) {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let console = String::from_utf8_lossy(&fs::read(&serial).unwrap_or_default()).into_owned();
    assert!(done, "the {phase} VM did not power off:\n{console}");
    assert!(
        console.contains("DROVER-VM done"),
        "the {phase} VM did not finish:\n{console}"
    );
    console
}

#[test]
fn written_by_a_real_kernel_restored_and_read_back() {
    if !require("foreign filesystems in a VM", NEEDS) {
        return;
    }
    let env = Env::new();
    build_boot_env(&env.data());
    let kernel = env.data().join("boot/vmlinuz");
    let tree = env.path("tree");
    make_tree(&tree, 10 * MIB, 31);
    let mut modules: Vec<&str> = KINDS.iter().map(|k| k.mount.0).collect();
    modules.dedup();
    let initrd = initramfs(&env.path("vm"), &tree, &modules);

    // Made on the host; filled by the VM's kernel unless made from the tree.
    let sources: Vec<PathBuf> = KINDS
        .iter()
        .map(|k| {
            let img = env.path(&format!("{}.img", k.name));
            let mut a = k.mkfs[1..].to_vec();
            if !k.from_tree {
                sparse_file(&img, SIZE);
            }
            a.push(s(&img));
            if k.from_tree {
                a.push(s(&tree));
            }
            let out = run_any(k.mkfs[0], &a);
            assert!(out.status.success(), "{}: {:?}: {out:?}", k.name, k.mkfs);
            assert_eq!(fs::metadata(&img).unwrap().len(), SIZE, "{}", k.name);
            img
        })
        .collect();
    let fill: Vec<(&Path, &Kind)> = sources
        .iter()
        .zip(KINDS)
        .filter(|(_, k)| !k.from_tree)
        .map(|(p, k)| (p.as_path(), k))
        .collect();
    let console = boot(&env.path("vm"), &kernel, &initrd, "fill", &fill);
    for (i, (_, k)) in fill.iter().enumerate() {
        assert!(
            said(&console, &format!("DROVER-VM filled {}", dev(i))),
            "{}: the VM did not fill it:\n{console}",
            k.name
        );
    }

    // Captured by used blocks, restored twice each.
    let mut restored: Vec<(PathBuf, &Kind)> = Vec::new();
    let mut used = BTreeMap::new();
    for (k, img) in KINDS.iter().zip(&sources) {
        if let Some(check) = k.check {
            with_img(check, img, &format!("{} as the VM left it", k.name));
        }
        let cap = env.capture(img, k.name);
        assert_eq!(cap["warnings"].as_array().unwrap().len(), 0, "{cap}");
        let m = env.manifest(k.name);
        assert_eq!(m.areas[0].fs.as_ref().unwrap().kind.to_string(), k.drover);
        let bytes = cap["used_bytes"].as_u64().unwrap();
        // The files (10 MiB) are in; most of the free space is not.
        assert!(bytes > 10 * MIB && bytes < SIZE / 2, "{}: {bytes}", k.name);
        used.insert(k.name, bytes);
        let noisy = env.path(&format!("{}-over-random.img", k.name));
        random_file(&noisy, SIZE, 7);
        let prev = env.path(&format!("{}-over-ext4.img", k.name));
        random_file(&prev, SIZE, 8);
        let t = env.path("prev-tree");
        let _ = fs::remove_dir_all(&t);
        make_tree(&t, 40 * MIB, 9);
        run("mkfs.ext4", &["-q", "-F", "-d", s(&t), s(&prev)]);
        for target in [noisy, prev] {
            env.restore(k.name, &target);
            if let Some(check) = k.check {
                with_img(check, &target, &format!("{} restored", k.name));
            }
            restored.push((target, k));
        }
    }
    eprintln!("used bytes stored: {used:?}");

    // Every restored image read back by the real kernel, after the sources themselves (the
    // control: what the fill or makefs left).
    let disks: Vec<(&Path, &Kind)> = sources
        .iter()
        .zip(KINDS)
        .map(|(p, k)| (p.as_path(), k))
        .chain(restored.iter().map(|(p, k)| (p.as_path(), *k)))
        .collect();
    let console = boot(&env.path("vm"), &kernel, &initrd, "verify", &disks);
    for (i, (p, _)) in disks.iter().enumerate() {
        assert!(
            said(&console, &format!("DROVER-VM verified {}", dev(i))),
            "{}: not every file read back:\n{console}",
            p.display()
        );
    }
}
