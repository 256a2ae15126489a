//! Personalization: after the image is written and verified (and the machine stopped seeding
//! it), the agent gives the restored system this machine's identity, as the server filled it
//! in ([`proto::api::Personalization`]). Each ext2/3/4, XFS, btrfs or NTFS filesystem of the
//! image is mounted in turn; one holding a Linux system (an `/etc/os-release`, at its top or
//! in a top-level subvolume such as Ubuntu's `@`) is personalized ([`linux`]), one holding
//! Windows through its sysprep answer file ([`windows`]). On a UEFI machine the restored
//! system then gets its boot entry ([`efi`]).

mod efi;
mod linux;
use imaging::mount;
mod windows;

use std::path::Path;

use anyhow::Context;
use imaging::fs::FsKind;
use imaging::manifest::{AreaKind, Manifest};
use proto::api::Personalization;

/// The filesystem type the kernel mounts a detected filesystem as, if personalization looks
/// into it.
fn mountable(kind: FsKind) -> Option<&'static str> {
    match kind {
        FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 => Some("ext4"),
        FsKind::Xfs => Some("xfs"),
        FsKind::Btrfs => Some("btrfs"),
        FsKind::Ntfs => Some("ntfs"),
        _ => None,
    }
}

/// The Linux system's root under a mounted filesystem: its top, or a top-level directory
/// (a btrfs subvolume) holding `etc/os-release`.
fn linux_root(top: &Path) -> Option<(std::path::PathBuf, String)> {
    if let Some(name) = linux::os_name(top) {
        return Some((top.to_path_buf(), name));
    }
    let mut dirs: Vec<_> = std::fs::read_dir(top)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .find_map(|d| linux::os_name(&d).map(|n| (d, n)))
}

/// Personalizes the systems on `disk` (written from `manifest`); returns what changed, a line
/// each. An error names the filesystem and what failed; what was written stays.
pub(crate) fn run(
    disk: &Path,
    manifest: &Manifest,
    p: &Personalization,
) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut systems = 0;
    for a in &manifest.areas {
        let Some(fs) = &a.fs else { continue };
        let Some(fstype) = mountable(fs.detected) else {
            continue;
        };
        let label = match a.kind {
            AreaKind::Partition { number } => format!("partition {number}"),
            AreaKind::Whole => "the disk".to_string(),
            AreaKind::Outside => continue,
        };
        let mut m = match mount::Mounted::new(disk, a.offset, a.len, fstype) {
            Ok(m) => m,
            // Said, not fatal: most NTFS partitions of Linux images are data.
            Err(e) if e.downcast_ref::<mount::NoNtfsDriver>().is_some() => {
                lines.push(format!("{label} (ntfs) not looked into: {e}"));
                continue;
            }
            Err(e) => {
                return Err(e.context(format!("{label} ({}): mounting it", fs.detected)));
            }
        };
        if fstype == "ntfs" {
            if windows::is_windows(m.dir()) {
                systems += 1;
                let label = format!("{label}: Windows");
                if !windows::answer_files(m.dir()).is_empty() {
                    m.make_writable().with_context(|| label.clone())?;
                }
                let changed =
                    windows::personalize(m.dir(), &p.hostname, &p.vars, p.first_boot.as_deref())
                        .with_context(|| label.clone())?;
                lines.extend(changed.into_iter().map(|l| format!("{l} ({label})")));
            }
        } else if let Some((root, name)) = linux_root(m.dir()) {
            systems += 1;
            m.make_writable()
                .with_context(|| format!("{label} ({name})"))?;
            let mut changed = linux::personalize(&root, &p.hostname)
                .with_context(|| format!("{label} ({name})"))?;
            changed.extend(
                linux::place(&root, &p.files, p.first_boot.as_deref())
                    .with_context(|| format!("{label} ({name})"))?,
            );
            lines.extend(
                changed
                    .into_iter()
                    .map(|l| format!("{l} ({label}: {name})")),
            );
        }
        m.unmount()
            .with_context(|| format!("{label}: unmounting it"))?;
    }
    if systems == 0 {
        lines.push(
            "no Linux or Windows system found (no /etc/os-release on an ext2/3/4, XFS or \
             btrfs filesystem, no Windows\\System32\\config\\SYSTEM on an NTFS one): \
             nothing personalized"
                .to_string(),
        );
    }
    // What the filesystems wrote through the loop devices is on the disk.
    std::fs::File::open(disk)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", disk.display()))?;
    if let Some(line) = boot_entry(disk, manifest, p.keep_network_first)? {
        lines.push(line);
    }
    Ok(lines)
}

/// On a UEFI machine whose own disk was written: the boot entry of the restored system's
/// loader ([`efi`]). None on BIOS machines and when the target is not a block device (an
/// image file is not what this machine boots).
fn boot_entry(
    disk: &Path,
    manifest: &Manifest,
    keep_network_first: bool,
) -> anyhow::Result<Option<String>> {
    use std::os::unix::fs::FileTypeExt;
    if !Path::new("/sys/firmware/efi").is_dir()
        || !std::fs::metadata(disk).is_ok_and(|m| m.file_type().is_block_device())
    {
        return Ok(None);
    }
    let t = &manifest.table;
    let esp = t.partitions.iter().find(|p| {
        p.type_guid
            .as_deref()
            .is_some_and(|g| g.eq_ignore_ascii_case("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"))
            || p.mbr_type == Some(0xef)
    });
    let Some(esp) = esp else {
        return Ok(Some(
            "UEFI: the image has no EFI system partition: boot entries unchanged".into(),
        ));
    };
    let sector = u64::from(t.sector_size.max(512));
    let signature = match (&esp.guid, t.kind) {
        (Some(g), imaging::table::TableKind::Gpt) => efi::guid_bytes(g)
            .with_context(|| format!("partition {}: malformed GUID {g:?}", esp.number))?,
        _ => {
            let mut s = [0u8; 16];
            s[..4].copy_from_slice(manifest.table_raw.get(440..444).unwrap_or(&[0; 4]));
            s
        }
    };
    let r = efi::EspRef {
        number: esp.number,
        start_lba: esp.start / sector,
        size_lba: esp.size / sector,
        signature,
        gpt: t.kind == imaging::table::TableKind::Gpt,
    };
    let label = format!("partition {} (EFI system partition)", esp.number);
    let m = mount::Mounted::new(disk, esp.start, esp.size, "vfat")
        .with_context(|| format!("{label}: mounting it"))?;
    let found = efi::find_loader(m.dir());
    m.unmount()
        .with_context(|| format!("{label}: unmounting it"))?;
    let Some((loader, description)) = found else {
        return Ok(Some(format!(
            "UEFI: no boot loader on {label} (no \\EFI\\<vendor>\\shimx64.efi or grubx64.efi, \
             Windows Boot Manager or \\EFI\\BOOT\\BOOTX64.EFI): boot entries unchanged"
        )));
    };
    let vars = Path::new(efi::EFIVARS);
    mount::efivarfs(vars).context("mounting efivarfs")?;
    efi::ensure_entry(
        &efi::Vars::new(vars),
        &r,
        &loader,
        &description,
        keep_network_first,
    )
    .map(Some)
}
