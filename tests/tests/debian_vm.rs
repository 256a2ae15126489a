//! A real operating system, restored and booted: a Debian 12 disk built from Debian's packages
//! (tests/scripts/build-debian12: GPT with a BIOS boot partition, an ESP holding Debian's
//! signed shim and GRUB in `\EFI\debian` only, an ext4 root; GRUB for BIOS and UEFI; serial
//! console; openssh-server) is captured and deployed over PXE to three VMs with different
//! names, under TCG: one BIOS; one UEFI with Secure Boot on (OVMF with Microsoft's keys,
//! firmware PXE, the signed chain); one UEFI with Secure Boot off whose group chose iPXE. Each
//! is personalized and reboots; at its next power-on (network boot kept first) the BIOS
//! machine is sent to its disk by its iPXE script, the Secure Boot one by its GRUB script,
//! which chains the disk's shim (that system boots with Secure Boot still on), the iPXE one by
//! leaving iPXE for its next boot entry, the one the agent wrote. Each restored system comes
//! up to a login prompt on its serial console with its own name. Read from the disks
//! afterwards: machine-ids and SSH host keys of their own, neither the golden image's nor each
//! other's; the first-boot script ran once and its unit is gone. The BIOS machine's disk is
//! twice the golden one's: its root partition and filesystem grew to the disk's end (by the
//! boot environment's resize2fs) and that system boots too. Restored by `drover image restore`
//! onto a disk of two thirds its size (root shrunk), it boots as well.

use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_tests::vm::{debian12, Firmware, Site, Vm};
use drover_tests::{require, run, sparse_file, Loop};

const NEEDS: &[&str] = &[
    "root",
    "ip",
    "qemu",
    "cpio",
    "depmod",
    "mmdebstrap",
    "sgdisk",
    "mkfs.ext4",
    "mkfs.vfat",
    "mcopy",
    "e2fsck",
    "debugfs",
];

/// The root partition (3) of a disk: first byte and length, from its GPT.
fn root_partition(disk: &Path) -> (u64, u64) {
    let info = run("sgdisk", &["-i", "3", disk.to_str().unwrap()]);
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {info}"))
    };
    let (first, last) = (field("First sector:"), field("Last sector:"));
    (first * 512, (last - first + 1) * 512)
}

/// Files of a disk's root filesystem, read after its journal is replayed (the VM was
/// stopped, not shut down), through a loop device over it: `None` for a file that is not
/// there. The golden disk (`fix` false) is only checked, never changed.
fn read_root(disk: &Path, paths: &[&str], fix: bool) -> Vec<Option<String>> {
    let (at, len) = root_partition(disk);
    let lo = Loop::attach(disk, at, Some(len));
    let scratch = &lo.dev;
    let fsck = std::process::Command::new("e2fsck")
        .args([if fix { "-fy" } else { "-fn" }, scratch.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        fsck.status.code().is_some_and(|c| c <= 1),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let r = paths
        .iter()
        .map(|p| {
            let out = std::process::Command::new("debugfs")
                .args(["-R", &format!("cat {p}"), scratch.to_str().unwrap()])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            (!err.contains("File not found")).then(|| String::from_utf8_lossy(&out.stdout).into())
        })
        .collect();
    drop(lo);
    r
}

const PATHS: &[&str] = &[
    "/etc/hostname",
    "/etc/machine-id",
    "/etc/ssh/ssh_host_ed25519_key.pub",
    "/var/lib/drover-first-boot.log",
    "/etc/systemd/system/drover-first-boot.service",
];

#[test]
fn a_debian_system_deployed_to_bios_and_uefi_vms_boots_as_machines_of_their_own() {
    if !require("debian_vm", NEEDS) {
        return;
    }
    let golden = debian12();
    let site = Site::new("deb", false);
    let env = &site.env;
    env.capture(&golden, "debian12");
    let golden_files = read_root(&golden, PATHS, false);
    assert_eq!(golden_files[0].as_deref(), Some("golden\n"));

    // The machines: BIOS; UEFI with Secure Boot on (the signed chain, the server's default);
    // UEFI with Secure Boot off whose group chose iPXE. Both labs keep network boot first.
    let machines = [
        ("52:54:00:de:b0:01", "lab-bios", "lab", Firmware::Bios),
        (
            "52:54:00:de:b0:02",
            "lab-uefi",
            "lab",
            Firmware::UefiSecureBoot,
        ),
        (
            "52:54:00:de:b0:03",
            "lab-ipxe",
            "lab-ipxe",
            Firmware::UefiPxe,
        ),
    ];
    for (mac, name, group, _) in machines {
        site.cli(&["machine", "add", mac, "--name", name, "--group", group]);
    }
    site.cli(&["group", "set", "lab", "--keep-network-first", "on"]);
    site.cli(&["group", "set", "lab-ipxe", "--keep-network-first", "on"]);
    site.cli(&["group", "set", "lab-ipxe", "--uefi-loader", "ipxe"]);
    let groups = site.cli(&["group", "list"]);
    assert!(groups.contains("UEFI: network boot first"), "{groups}");
    let script = env.path("first-boot.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"first boot of {name}\" >>/var/lib/drover-first-boot.log\nsync\n",
    )
    .unwrap();
    let macs: Vec<&str> = machines.iter().map(|m| m.0).collect();
    let d: serde_json::Value = serde_json::from_str(&site.cli(&[
        "--json",
        "deploy",
        "debian12",
        "--to",
        &macs.join(","),
        "--first-boot",
        script.to_str().unwrap(),
    ]))
    .unwrap();
    let id = d["id"].as_str().unwrap().to_string();

    // The BIOS machine's disk is twice the golden one: its root partition and filesystem
    // grow to its end (the deployment's default layout).
    let size = std::fs::metadata(&golden).unwrap().len();
    let disks: Vec<PathBuf> = machines
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let p = env.path(&format!("{}-disk.img", m.1));
            sparse_file(&p, if i == 0 { 2 * size } else { size });
            p
        })
        .collect();
    let taps: Vec<String> = (0..machines.len()).map(|i| format!("tap{i}")).collect();
    for t in &taps {
        site.lab.tap(t);
    }
    let dir = env.path("vm");
    std::fs::create_dir_all(&dir).unwrap();
    let start_all = || -> Vec<Vm> {
        machines
            .iter()
            .zip(&taps)
            .zip(&disks)
            .map(|(((mac, _, _, fw), tap), disk)| {
                Vm::start(&site.lab, tap, mac, &[(disk, None)], *fw, &dir)
            })
            .collect()
    };
    let mut vms = start_all();
    for vm in &mut vms {
        let exited = vm.wait_exit(Duration::from_secs(900));
        let console = vm.console();
        assert!(
            exited,
            "the VM did not finish: {console}\n{}",
            site.srv.log()
        );
        assert!(console.contains("written and verified"), "{console}");
        assert!(console.contains("drover-agent: rebooting"), "{console}");
    }
    let show: serde_json::Value =
        serde_json::from_str(&site.cli(&["--json", "deployment", "show", &id])).unwrap();
    assert_eq!(show["state"], "done", "{show}");
    let lines = |mac: &str| -> String {
        let t = show["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["mac"] == mac)
            .unwrap_or_else(|| panic!("no task for {mac}: {show}"));
        t["personalized"].to_string()
    };
    let (bios, uefi, ipxe) = (macs[0], macs[1], macs[2]);
    assert!(lines(bios).contains("hostname lab-bios"), "{show}");
    assert!(lines(bios).contains("partition 3 (ext4) grown"), "{show}");
    assert!(!lines(uefi).contains("grown"), "{show}");
    assert!(!lines(bios).contains("UEFI boot entry"), "{show}");
    for mac in [uefi, ipxe] {
        assert!(
            lines(mac).contains("UEFI boot entry")
                && lines(mac).contains("\\\\EFI\\\\debian\\\\shimx64.efi")
                && lines(mac).contains("after network boot"),
            "{show}"
        );
    }

    // Power on again: each boots its restored system to a login prompt with its own name,
    // sent to its disk by its network boot: iPXE's script on BIOS; GRUB's script chaining the
    // disk's shim under Secure Boot; iPXE leaving for the next boot entry, the agent's.
    let mut vms = start_all();
    for (vm, (_, name, _, _)) in vms.iter_mut().zip(machines) {
        let up = vm.wait_for(&format!("{name} login:"), Duration::from_secs(600));
        let console = vm.console();
        assert!(up, "{name} did not come up: {console}");
        assert!(
            console.contains("no task for this machine: booting the local disk"),
            "{console}"
        );
        assert!(console.contains("Debian GNU/Linux 12"), "{console}");
        match name {
            "lab-uefi" => {
                // GRUB chained the restored disk's shim, and its kernel saw Secure Boot on.
                assert!(
                    console.contains("chaining (hd0,gpt2)/EFI/debian/shimx64.efi"),
                    "{console}"
                );
                assert!(console.contains("Secure boot enabled"), "{console}");
            }
            "lab-ipxe" => assert!(console.contains("iPXE"), "{console}"),
            _ => {}
        }
    }
    drop(vms);

    // The grown root reaches the end of the larger disk (its last MiB boundary before the
    // backup GPT), and its ext4 fills it.
    let (at, len) = root_partition(&disks[0]);
    assert_eq!(
        at + len,
        (2 * size - 33 * 512) >> 20 << 20,
        "root partition end"
    );
    let sb = drover_tests::read_range(&disks[0], at + 1024, 32);
    let blocks = u64::from(u32::from_le_bytes(sb[4..8].try_into().unwrap()));
    let block = 1024u64 << u32::from_le_bytes(sb[24..28].try_into().unwrap());
    assert!(
        blocks * block <= len && len - blocks * block < block,
        "an ext4 of {blocks} {block}-byte blocks in a {len}-byte partition"
    );

    let golden_key = golden_files[2]
        .clone()
        .expect("the golden image's host key");
    let golden_id = golden_files[1]
        .clone()
        .expect("the golden image's machine-id");
    let mut seen = Vec::new();
    for (disk, (_, name, _, _)) in disks.iter().zip(machines) {
        let f = read_root(disk, PATHS, true);
        assert_eq!(f[0].as_deref(), Some(&*format!("{name}\n")), "{name}");
        let id = f[1].clone().expect("a machine-id");
        let key = f[2].clone().expect("an ed25519 host key");
        assert_eq!(id.trim().len(), 32, "{name}: {id:?}");
        assert_ne!(id, golden_id, "{name} kept the golden machine-id");
        assert_ne!(key, golden_key, "{name} kept the golden host key");
        assert_eq!(
            f[3].as_deref(),
            Some(&*format!("first boot of {name}\n")),
            "{name}: the first-boot script ran once"
        );
        assert_eq!(f[4], None, "{name}: the first-boot unit removed itself");
        seen.push((id, key));
    }
    for (i, a) in seen.iter().enumerate() {
        for b in &seen[i + 1..] {
            assert_ne!(a.0, b.0, "two machines share a machine-id");
            assert_ne!(a.1, b.1, "two machines share a host key");
        }
    }
}

/// The golden Debian disk restored with `drover image restore` onto a disk of two thirds its
/// size: its root partition and ext4 shrink to fit (the image's layout does not), and the
/// system boots from that disk to its login prompt with its root filesystem clean.
#[test]
fn a_debian_system_restored_onto_a_smaller_disk_boots() {
    if !require("debian_vm shrink", NEEDS) {
        return;
    }
    let golden = debian12();
    let env = drover_tests::Env::new();
    env.capture(&golden, "debian12");
    let size = (std::fs::metadata(&golden).unwrap().len() * 2 / 3) >> 20 << 20;
    let disk = env.path("small-disk.img");
    sparse_file(&disk, size);
    let r = env.restore("debian12", &disk);
    assert_eq!(r["shrunk"], true, "{r}");
    assert!(
        r["layout_changes"]
            .to_string()
            .contains("partition 3 (ext4) shrunk"),
        "{r}"
    );
    let (at, len) = root_partition(&disk);
    assert_eq!(
        at + len,
        (size - 33 * 512) >> 20 << 20,
        "root partition end"
    );
    // The shrunk root passes e2fsck before the system ever runs.
    let root = env.path("root.img");
    drover_tests::extract(&disk, at, len, &root);
    run("e2fsck", &["-fn", root.to_str().unwrap()]);
    std::fs::remove_file(&root).unwrap();
    let dir = env.path("vm");
    std::fs::create_dir_all(&dir).unwrap();
    let mut vm = Vm::boot_disk(&disk, &dir);
    let up = vm.wait_for("golden login:", Duration::from_secs(600));
    let console = vm.console();
    assert!(up, "the shrunk system did not come up: {console}");
    assert!(console.contains("Debian GNU/Linux 12"), "{console}");
    assert!(
        console.contains("EXT4-fs (vda3): mounted") && !console.contains("EXT4-fs error"),
        "{console}"
    );
}

/// The golden Debian image served by `drover image nbd` and booted by a VM straight from the
/// export (QEMU's NBD client, with a snapshot overlay taking the system's writes): it comes up
/// to its login prompt, and the image is as it was.
#[test]
fn a_debian_system_boots_straight_from_its_image_over_nbd() {
    if !require("debian_vm nbd", NEEDS) {
        return;
    }
    let golden = debian12();
    let env = drover_tests::Env::new();
    env.capture(&golden, "debian12");
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut nbd = drover_tests::Bg::start(&env, &["image", "nbd", "debian12", "--listen", &listen]);
    nbd.wait_for("the NBD listener", || {
        std::net::TcpStream::connect(&listen).is_ok()
    });
    let dir = env.path("vm");
    std::fs::create_dir_all(&dir).unwrap();
    let mut vm = Vm::boot_drive(
        &format!("file=nbd://{listen}/disk,format=raw,snapshot=on"),
        &dir,
    );
    let up = vm.wait_for("golden login:", Duration::from_secs(600));
    let console = vm.console();
    assert!(
        up,
        "the system did not come up from the NBD export: {console}"
    );
    assert!(console.contains("Debian GNU/Linux 12"), "{console}");
    assert!(!console.contains("EXT4-fs error"), "{console}");
    drop(vm);
    nbd.stop();
    env.ok(&["image", "verify", "debian12"]);
}
