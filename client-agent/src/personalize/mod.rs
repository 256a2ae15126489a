//! Personalization: after the image is written and verified (and the machine stopped seeding
//! it), the agent gives the restored system this machine's identity, as the server filled it
//! in ([`proto::api::Personalization`]). Each ext2/3/4, XFS or btrfs filesystem of the image
//! is mounted in turn; one holding a Linux system (an `/etc/os-release`, at its top or in a
//! top-level subvolume such as Ubuntu's `@`) is personalized ([`linux`]).

mod linux;
mod mount;

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
        let m = mount::Mounted::new(disk, a.offset, a.len, fstype)
            .with_context(|| format!("{label} ({}): mounting it", fs.detected))?;
        if let Some((root, name)) = linux_root(m.dir()) {
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
            "no Linux system found (no /etc/os-release on an ext2/3/4, XFS or btrfs \
             filesystem): nothing personalized"
                .to_string(),
        );
    }
    // What the filesystems wrote through the loop devices is on the disk.
    std::fs::File::open(disk)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", disk.display()))?;
    Ok(lines)
}
