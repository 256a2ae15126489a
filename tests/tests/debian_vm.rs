//! A real operating system, restored and booted: a Debian 12 disk built from Debian's packages
//! (tests/scripts/build-debian12: GPT with a BIOS boot partition, an ESP holding Debian's
//! signed shim and GRUB in `\EFI\debian` only, an ext4 root; GRUB for BIOS and UEFI; serial
//! console; openssh-server) is captured and deployed over PXE to two VMs with different names,
//! one BIOS and one UEFI with Secure Boot on (OVMF with Microsoft's keys, firmware PXE, the
//! signed chain), under TCG. Each is personalized and reboots; at its next power-on the BIOS
//! machine is sent to its disk by its iPXE script, the UEFI one (network boot kept first) by
//! its GRUB script, which chains the disk's shim; that system boots with Secure Boot still
//! on. Each restored system comes up to a login prompt on its serial console with its own
//! name. Read from the two disks afterwards: machine-ids and SSH host
//! keys of their own, neither the golden image's nor each other's; the first-boot script ran
//! once and its unit is gone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_tests::vm::{debian12, Firmware, Site, Vm};
use drover_tests::{extract, require, run, sparse_file};

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
/// stopped, not shut down): `None` for a file that is not there.
fn read_root(disk: &Path, scratch: &Path, paths: &[&str]) -> Vec<Option<String>> {
    let (at, len) = root_partition(disk);
    extract(disk, at, len, scratch);
    let fsck = std::process::Command::new("e2fsck")
        .args(["-fy", scratch.to_str().unwrap()])
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
    std::fs::remove_file(scratch).unwrap();
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
fn a_debian_system_deployed_to_a_bios_and_a_uefi_vm_boots_as_two_machines() {
    if !require("debian_vm", NEEDS) {
        return;
    }
    let golden = debian12();
    let site = Site::new("deb", false);
    let env = &site.env;
    env.capture(&golden, "debian12");
    let golden_files = read_root(&golden, &env.path("golden-root.img"), PATHS);
    assert_eq!(golden_files[0].as_deref(), Some("golden\n"));

    let (bios, uefi) = ("52:54:00:de:b0:01", "52:54:00:de:b0:02");
    site.cli(&[
        "machine", "add", bios, "--name", "lab-bios", "--group", "lab",
    ]);
    site.cli(&[
        "machine", "add", uefi, "--name", "lab-uefi", "--group", "lab",
    ]);
    // The lab keeps network boot first on its UEFI machines.
    site.cli(&["group", "set", "lab", "--keep-network-first", "on"]);
    let groups = site.cli(&["group", "list"]);
    assert!(groups.contains("UEFI: network boot first"), "{groups}");
    let script = env.path("first-boot.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"first boot of {name}\" >>/var/lib/drover-first-boot.log\nsync\n",
    )
    .unwrap();
    let d: serde_json::Value = serde_json::from_str(&site.cli(&[
        "--json",
        "deploy",
        "debian12",
        "--to",
        &format!("{bios},{uefi}"),
        "--first-boot",
        script.to_str().unwrap(),
    ]))
    .unwrap();
    let id = d["id"].as_str().unwrap().to_string();

    let size = std::fs::metadata(&golden).unwrap().len();
    let disks: Vec<PathBuf> = ["bios", "uefi"]
        .iter()
        .map(|n| {
            let p = env.path(&format!("{n}-disk.img"));
            sparse_file(&p, size);
            p
        })
        .collect();
    site.lab.tap("tap0");
    site.lab.tap("tap1");
    let dir = env.path("vm");
    std::fs::create_dir_all(&dir).unwrap();
    let start = |tap: &str, mac: &str, disk: &Path, fw: Firmware| {
        Vm::start(&site.lab, tap, mac, &[(disk, None)], fw, &dir)
    };
    let mut vms = [
        start("tap0", bios, &disks[0], Firmware::Bios),
        start("tap1", uefi, &disks[1], Firmware::UefiSecureBoot),
    ];
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
    assert!(lines(bios).contains("hostname lab-bios"), "{show}");
    assert!(!lines(bios).contains("UEFI boot entry"), "{show}");
    assert!(
        lines(uefi).contains("UEFI boot entry")
            && lines(uefi).contains("\\\\EFI\\\\debian\\\\shimx64.efi")
            && lines(uefi).contains("after network boot"),
        "{show}"
    );

    // Power on again: each boots its restored system to a login prompt with its own name.
    let mut vms = [
        start("tap0", bios, &disks[0], Firmware::Bios),
        start("tap1", uefi, &disks[1], Firmware::UefiSecureBoot),
    ];
    for (vm, name) in vms.iter_mut().zip(["lab-bios", "lab-uefi"]) {
        let up = vm.wait_for(&format!("{name} login:"), Duration::from_secs(600));
        let console = vm.console();
        assert!(up, "{name} did not come up: {console}");
        assert!(
            console.contains("no task for this machine: booting the local disk"),
            "{console}"
        );
        assert!(console.contains("Debian GNU/Linux 12"), "{console}");
        if name == "lab-uefi" {
            // GRUB chained the restored disk's shim, and its kernel saw Secure Boot on.
            assert!(
                console.contains("chaining (hd0,gpt2)/EFI/debian/shimx64.efi"),
                "{console}"
            );
            assert!(console.contains("Secure boot enabled"), "{console}");
        }
    }
    drop(vms);

    let golden_key = golden_files[2]
        .clone()
        .expect("the golden image's host key");
    let golden_id = golden_files[1]
        .clone()
        .expect("the golden image's machine-id");
    let mut seen = Vec::new();
    for (disk, name) in disks.iter().zip(["lab-bios", "lab-uefi"]) {
        let f = read_root(disk, &env.path("root.img"), PATHS);
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
    assert_ne!(seen[0].0, seen[1].0, "the two machines share a machine-id");
    assert_ne!(seen[0].1, seen[1].1, "the two machines share a host key");
}
