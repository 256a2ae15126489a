//! GRUB's scripts for the Secure Boot chain, served over TFTP beside the boot directory's
//! files: UEFI firmware runs the Microsoft-signed `shimx64.efi`, which runs the Debian-signed
//! network GRUB (`grubx64.efi`, from the same directory), which reads `grub/grub.cfg` from the
//! server it was loaded from. That script only sources the machine's own one,
//! `grub/mac/MAC.cfg` (by the MAC of the card GRUB booted from), which says what
//! [`ipxe::decide`] says for an iPXE machine: the Debian-signed kernel and drover's initramfs
//! with a fresh task token, or the local disk. Both come from here, never from files: a file of
//! that name in the boot directory is not served.
//!
//! GRUB loads the kernel and initramfs over TFTP too: Debian's signed network GRUB has no HTTP
//! client (which is also why UEFI HTTP Boot clients are sent to iPXE, not to this chain). The
//! local disk is booted by chaining the first loader found on it, in the order the agent writes
//! boot entries (a vendor's shim, its GRUB, Windows Boot Manager, the removable-media path):
//! under Secure Boot the firmware checks that loader's signature as at any boot.

use std::net::IpAddr;

use crate::serve::boot::ipxe::{self, Boot, INITRD, KERNEL};
use crate::serve::web::api::{parse_mac, ApiResult, Shared};

/// The script the network GRUB reads first (its prefix is `/grub` on the server).
pub(crate) const MAIN: &str = "grub/grub.cfg";
/// Where the machines' own scripts are: `grub/mac/aa:bb:cc:dd:ee:ff.cfg`.
const PER_MACHINE: &str = "grub/mac/";

/// Loaders looked for on the local disks, in order: the vendors' shims (Secure Boot passes
/// them), their GRUBs, Windows Boot Manager, the removable-media path.
const LOCAL_LOADERS: &[&str] = &[
    "/EFI/debian/shimx64.efi",
    "/EFI/ubuntu/shimx64.efi",
    "/EFI/fedora/shimx64.efi",
    "/EFI/redhat/shimx64.efi",
    "/EFI/centos/shimx64.efi",
    "/EFI/rocky/shimx64.efi",
    "/EFI/almalinux/shimx64.efi",
    "/EFI/opensuse/shimx64.efi",
    "/EFI/sles/shimx64.efi",
    "/EFI/debian/grubx64.efi",
    "/EFI/ubuntu/grubx64.efi",
    "/EFI/fedora/grubx64.efi",
    "/EFI/Microsoft/Boot/bootmgfw.efi",
    "/EFI/BOOT/BOOTX64.EFI",
];

/// The script of a GRUB script's TFTP name (`None`: not one), for the machine asking from
/// `peer`. The error names what was asked wrong.
pub(crate) async fn script(s: &Shared, name: &str, peer: IpAddr) -> Option<ApiResult<Vec<u8>>> {
    let name = name.replace('\\', "/");
    let name = name.trim_start_matches('/');
    if name == MAIN {
        return Some(Ok(main().into_bytes()));
    }
    let mac = name.strip_prefix(PER_MACHINE)?;
    Some(machine(s, mac, peer).await.map(String::into_bytes))
}

/// `grub/grub.cfg`: the machine's own script, else the local disk.
fn main() -> String {
    format!(
        "# drover: each machine reads its own script, by the MAC of the card GRUB booted from\n\
         set timeout=0\n\
         if [ -n \"$net_default_mac\" ]; then\n\
         \x20 source \"$prefix/mac/${{net_default_mac}}.cfg\"\n\
         fi\n\
         echo 'drover: no script for this machine from the server'\n\
         {}",
        local_boot()
    )
}

async fn machine(s: &Shared, file: &str, peer: IpAddr) -> ApiResult<String> {
    let mac = file.strip_suffix(".cfg").unwrap_or(file);
    let mac = parse_mac(mac)?;
    Ok(match ipxe::decide(s, mac, peer, "GRUB").await? {
        Boot::Local(why) => format!(
            "echo {}\n{}",
            quote(&format!("drover: {why}: booting the local disk")),
            local_boot()
        ),
        Boot::Agent { what, args } => {
            let server = format!("drover.server={}", s.boot.public_url);
            let words: Vec<String> = s
                .boot
                .args
                .split_whitespace()
                .chain([server.as_str()])
                .chain(args.split_whitespace())
                .map(quote)
                .collect();
            format!(
                "echo {}\n\
                 linux /{KERNEL} {}\n\
                 initrd /{INITRD}\n\
                 boot\n\
                 echo 'drover: the boot environment did not load; booting the local disk'\n\
                 sleep 10\n\
                 {}",
                quote(&format!("drover: {what}")),
                words.join(" "),
                local_boot()
            )
        }
    })
}

/// Chains the first loader found on a local disk; leaves GRUB when there is none. The loader
/// is started on its own disk (GRUB's chainloader hands it `$root`'s device, not the one in
/// its path): shim and GRUB look for their next stage and their script beside themselves.
fn local_boot() -> String {
    format!(
        "for drover_loader in {}; do\n\
         \x20 if search --no-floppy --file --set=drover_disk \"$drover_loader\"; then\n\
         \x20   echo \"drover: chaining ($drover_disk)$drover_loader\"\n\
         \x20   set root=\"$drover_disk\"\n\
         \x20   chainloader \"$drover_loader\"\n\
         \x20   boot\n\
         \x20 fi\n\
         done\n\
         echo 'drover: no boot loader on the local disks'\n\
         sleep 10\n\
         exit\n",
        LOCAL_LOADERS.join(" ")
    )
}

/// One word for GRUB's script: single-quoted, a quote inside written as `'\''`.
fn quote(w: &str) -> String {
    format!("'{}'", w.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_grub() {
        assert_eq!(quote("drover.then=reboot"), "'drover.then=reboot'");
        assert_eq!(quote("it's $x"), "'it'\\''s $x'");
    }

    #[test]
    fn the_main_script_sources_the_machines_own_then_boots_the_local_disk() {
        let m = main();
        let own = m
            .find("source \"$prefix/mac/${net_default_mac}.cfg\"")
            .unwrap();
        let local = m.find("chainloader").unwrap();
        assert!(own < local, "{m}");
        // Shims first: under Secure Boot the firmware runs a vendor's GRUB only through one.
        let l = local_boot();
        assert!(
            l.find("/EFI/debian/shimx64.efi").unwrap() < l.find("/EFI/debian/grubx64.efi").unwrap()
        );
        assert!(l.find("grubx64.efi").unwrap() < l.find("bootmgfw.efi").unwrap());
        // The loader runs on its own disk: chainloader takes $root's device.
        assert!(
            l.find("set root=\"$drover_disk\"").unwrap() < l.find("chainloader").unwrap(),
            "{l}"
        );
    }
}
