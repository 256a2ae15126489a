//! End to end with a real PXE client: QEMU VMs (TCG) on a lab's bridge boot from drover alone
//! (full DHCP, or proxyDHCP beside the lab's own; kernel and initramfs built by
//! deploy/build-boot-env). A machine with a task runs the agent, which gets its own address,
//! receives a GPT disk with ext4 and NTFS by multicast, writes it to its virtio disk, reports,
//! and reboots; the test then checks the VM's disk file (byte for byte, and e2fsck). A machine
//! without a task boots its local disk; so does the imaged machine at its next boot. BIOS
//! through QEMU's iPXE ROM (iPXE script over HTTP); UEFI (OVMF) through the iPXE ROM, as a
//! firmware PXE client started on iPXE by its group (TFTP → snponly.efi → iPXE), and through
//! the Secure Boot chain (TFTP → shimx64.efi → grubx64.efi → its script over TFTP → the
//! signed kernel), without and with Secure Boot on.

use std::time::Duration;

use drover_tests::deploy::lab_disk;
use drover_tests::vm::{Firmware, Site, Vm};
use drover_tests::{require, run, sparse_file};

const NEEDS: &[&str] = &[
    "root",
    "ip",
    "qemu",
    "cpio",
    "depmod",
    "mkfs.ext4",
    "e2fsck",
    "sgdisk",
    "mkntfs",
];

/// How the machine is set up: `proxy` runs proxyDHCP beside the lab's own DHCP server
/// (else full DHCP); `pinned` gives it a second disk and pins the target by serial; `then`
/// is the deployment's `--then`; `loader` its group's UEFI loader (None: the server's, the
/// Secure Boot chain).
fn deploy_to_a_vm(
    fw: Firmware,
    tag: &str,
    proxy: bool,
    pinned: bool,
    then: &str,
    loader: Option<&str>,
) {
    let site = Site::new(tag, proxy);
    let env = &site.env;
    let source = lab_disk(env, 3 << 20, 41);
    env.capture(&source, "lab");
    let mac = "52:54:00:d0:00:01";
    let idle = "52:54:00:d0:00:02";
    if pinned {
        site.cli(&[
            "machine",
            "add",
            mac,
            "--group",
            "lab",
            "--disk",
            "serial:drover-target",
        ]);
    } else {
        site.cli(&["machine", "add", mac, "--group", "lab"]);
    }
    site.cli(&["machine", "add", idle, "--group", "lab"]);
    if let Some(l) = loader {
        site.cli(&["group", "set", "lab", "--uefi-loader", l]);
    }
    let d: serde_json::Value = serde_json::from_str(&site.cli(&[
        "--json",
        "deploy",
        "lab",
        "--to",
        mac,
        "--transport",
        "multicast",
        "--then",
        then,
    ]))
    .unwrap();
    let id = d["id"].as_str().unwrap().to_string();

    let target = env.path("vm-disk.img");
    sparse_file(&target, 64 << 20);
    let other = env.path("idle-disk.img");
    sparse_file(&other, 64 << 20);
    // A second disk of the same size: only the serial tells them apart.
    let spare = env.path("spare-disk.img");
    sparse_file(&spare, 64 << 20);
    let mut disks = vec![(target.as_path(), Some("drover-target"))];
    if pinned {
        disks.insert(0, (spare.as_path(), Some("spare")));
    }
    site.lab.tap("tap0");
    site.lab.tap("tap1");
    let dir = env.path("vm");
    std::fs::create_dir_all(&dir).unwrap();
    if fw == Firmware::UefiSecureBoot {
        // The control: the same firmware refuses an unsigned loader (iPXE), so Secure Boot
        // is on and the signed chain is what passes it.
        site.cli(&["group", "set", "lab", "--uefi-loader", "ipxe"]);
        let mut vm = Vm::start(&site.lab, "tap0", mac, &disks, fw, &dir);
        let refused = vm.wait_for("Access Denied", Duration::from_secs(300));
        let console = vm.console();
        drop(vm);
        assert!(refused, "the firmware ran iPXE: {console}");
        assert!(!console.contains("iPXE"), "{console}");
        assert!(site.srv.log().contains("snponly.efi"), "{}", site.srv.log());
        site.cli(&["group", "set", "lab", "--uefi-loader", "default"]);
    }
    let mut vm = Vm::start(&site.lab, "tap0", mac, &disks, fw, &dir);
    let mut idle_vm = Vm::start(&site.lab, "tap1", idle, &[(&other, None)], fw, &dir);

    // The idle machine is sent to its local disk by its script.
    let local = idle_vm.wait_for(
        "no task for this machine: booting the local disk",
        Duration::from_secs(240),
    );
    assert!(local, "idle VM: {}", idle_vm.console());
    drop(idle_vm);

    // The machine with a task writes its disk and reboots or powers off (QEMU exits either
    // way: -no-reboot).
    let exited = vm.wait_exit(Duration::from_secs(600));
    let console = vm.console();
    assert!(
        exited,
        "the VM did not finish: {console}\n{}",
        site.srv.log()
    );
    assert!(console.contains("written and verified"), "{console}");
    match (fw, loader) {
        (Firmware::UefiPxe | Firmware::UefiSecureBoot, None) => {
            // The signed chain: GRUB read the machine's script and loaded the kernel.
            assert!(console.contains("drover: restore lab"), "{console}");
            assert!(!console.contains("iPXE"), "{console}");
        }
        (Firmware::UefiPxe, Some("ipxe")) | (Firmware::UefiHttp, _) => {
            assert!(console.contains("iPXE"), "{console}")
        }
        _ => {}
    }
    if fw == Firmware::UefiSecureBoot {
        assert!(console.contains("Secure boot enabled"), "{console}");
    }
    if fw == Firmware::UefiHttp {
        // The firmware's HTTP Boot, given iPXE's URL on the server's port, not PXE.
        assert!(console.contains("Start HTTP Boot over IPv4"), "{console}");
        assert!(
            console.contains(&format!("URI: {}/boot/files/snponly.efi", site.url)),
            "{console}"
        );
        assert!(!console.contains("Start PXE"), "{console}");
    }
    let how = if then == "poweroff" {
        "drover-agent: powering off"
    } else {
        "drover-agent: rebooting"
    };
    assert!(console.contains(how), "{console}");
    let show: serde_json::Value =
        serde_json::from_str(&site.cli(&["--json", "deployment", "show", &id])).unwrap();
    assert_eq!(show["state"], "done", "{show}");
    assert!(
        show["tasks"][0]["multicast_chunks"].as_u64().unwrap_or(0) > 0,
        "{show}"
    );

    // The VM's disk is the image, byte for byte; its ext4 checks clean.
    assert!(
        std::fs::read(&source).unwrap() == std::fs::read(&target).unwrap(),
        "the VM's disk differs from the source disk"
    );
    let p1 = env.path("vm-p1.img");
    run(
        "dd",
        &[
            &format!("if={}", target.display()),
            &format!("of={}", p1.display()),
            "bs=1M",
            "skip=1",
            "count=36",
            "status=none",
        ],
    );
    run("e2fsck", &["-fn", p1.to_str().unwrap()]);
    if pinned {
        assert!(console.contains("writing vdb"), "{console}");
        assert!(
            std::fs::read(&spare).unwrap().iter().all(|&b| b == 0),
            "the other disk was written"
        );
    }
    // Its task is over: the next boot goes to the local disk, never into reimaging.
    let mut again = Vm::start(&site.lab, "tap0", mac, &disks, fw, &dir);
    assert!(
        again.wait_for(
            "no task for this machine: booting the local disk",
            Duration::from_secs(240)
        ),
        "{}",
        again.console()
    );
}

#[test]
fn a_bios_machine_pxe_boots_from_drover_and_is_imaged_by_multicast() {
    if !require("pxe_vm_bios", NEEDS) {
        return;
    }
    deploy_to_a_vm(Firmware::Bios, "vmb", false, false, "reboot", None);
}

/// Two disks of one size, the target pinned by serial; the machine powers off when done.
#[test]
fn a_uefi_machine_with_the_ipxe_rom_writes_its_pinned_disk_and_powers_off() {
    if !require("pxe_vm_uefi_rom", NEEDS) {
        return;
    }
    deploy_to_a_vm(Firmware::UefiIpxeRom, "vmu", false, true, "poweroff", None);
}

/// OVMF's own PXE client (no option ROM) whose group chose iPXE: DHCP gives it snponly.efi
/// over TFTP, which starts iPXE, which asks again and gets its script's URL.
#[test]
fn a_uefi_machine_whose_group_chose_ipxe_pxe_boots_through_snponly_efi_and_is_imaged() {
    if !require("pxe_vm_uefi_pxe", NEEDS) {
        return;
    }
    deploy_to_a_vm(
        Firmware::UefiPxe,
        "vmp",
        false,
        false,
        "reboot",
        Some("ipxe"),
    );
}

/// A PC as shipped: OVMF with Secure Boot on and Microsoft's keys, its own PXE client, drover
/// as proxyDHCP beside the lab's DHCP server. It refuses iPXE (the control), then boots the
/// agent through shim, GRUB and the signed kernel, and is imaged.
#[test]
fn a_secure_boot_machine_refuses_ipxe_and_is_imaged_through_the_signed_chain() {
    if !require("pxe_vm_secure_boot", &[NEEDS, &["busybox"]].concat()) {
        return;
    }
    deploy_to_a_vm(Firmware::UefiSecureBoot, "vms", true, false, "reboot", None);
}

/// The default mode on a lab's network: the lab's DHCP server gives addresses (to the firmware
/// and to the agent), drover's proxyDHCP only the boot file; a UEFI firmware PXE client (Secure
/// Boot off) starts the default chain, shim and GRUB. The server is started with `--dhcp
/// proxy` alone: TFTP follows it (the firmware's first file).
#[test]
fn a_uefi_machine_boots_through_proxy_dhcp_beside_the_labs_own_dhcp_server() {
    if !require("pxe_vm_proxy", &[NEEDS, &["busybox"]].concat()) {
        return;
    }
    deploy_to_a_vm(Firmware::UefiPxe, "vmx", true, false, "reboot", None);
}

/// UEFI HTTP Boot (OVMF's, its PXE turned off; Secure Boot off): DHCP answers its
/// `HTTPClient` request with iPXE's URL (the signed GRUB has no HTTP), the firmware fetches it
/// by HTTP from the server's port, and iPXE boots the agent, which images the machine.
#[test]
fn a_uefi_http_boot_machine_fetches_its_loader_by_http_and_is_imaged() {
    if !require("pxe_vm_http_boot", NEEDS) {
        return;
    }
    deploy_to_a_vm(Firmware::UefiHttp, "vmh", false, false, "reboot", None);
}
