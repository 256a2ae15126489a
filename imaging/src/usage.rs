//! Is a restore target in use? A mounted filesystem or active swap on the device (or on one of
//! its partitions), or on a loop device backed by the target file, makes it refuse.
//!
//! Linux only: reads `/proc/self/mountinfo`, `/proc/swaps` and `/sys`.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

fn major(dev: u64) -> u64 {
    libc::major(dev) as u64
}

fn minor(dev: u64) -> u64 {
    libc::minor(dev) as u64
}

/// The sysfs device directory of block device number `dev`, resolved (`/sys/devices/.../sda`).
fn sys_dir(dev: u64) -> Option<PathBuf> {
    fs::canonicalize(format!("/sys/dev/block/{}:{}", major(dev), minor(dev))).ok()
}

/// Block devices that hold `path`'s bytes: the device itself, or every loop device backed by
/// the file.
fn backing_devices(path: &Path) -> io::Result<Vec<u64>> {
    let meta = fs::metadata(path)?;
    if meta.file_type().is_block_device() {
        return Ok(vec![meta.rdev()]);
    }
    let want = fs::canonicalize(path)?;
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/sys/block") else {
        return Ok(out);
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        if Path::new(backing.trim_end()) != want {
            continue;
        }
        if let Ok(d) = fs::read_to_string(e.path().join("dev")) {
            if let Some((ma, mi)) = d.trim().split_once(':') {
                if let (Ok(ma), Ok(mi)) = (ma.parse::<u32>(), mi.parse::<u32>()) {
                    out.push(libc::makedev(ma, mi));
                }
            }
        }
    }
    Ok(out)
}

/// Why `path` must not be written now, if it is in use: `Some("mounted at /mnt (ext4)")`.
pub fn in_use(path: &Path) -> io::Result<Option<String>> {
    let devs = backing_devices(path)?;
    if devs.is_empty() {
        return Ok(None);
    }
    let dirs: Vec<PathBuf> = devs.iter().filter_map(|&d| sys_dir(d)).collect();
    // A mount on the device, or on a partition of it (a sysfs child directory).
    let holds = |mounted: u64| {
        devs.contains(&mounted)
            || sys_dir(mounted).is_some_and(|m| dirs.iter().any(|d| m.starts_with(d)))
    };
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (Some(devno), Some(point)) = (f.get(2), f.get(4)) else {
            continue;
        };
        let Some((ma, mi)) = devno.split_once(':') else {
            continue;
        };
        let (Ok(ma), Ok(mi)) = (ma.parse::<u32>(), mi.parse::<u32>()) else {
            continue;
        };
        if ma == 0 {
            continue; // virtual filesystems
        }
        if holds(libc::makedev(ma, mi)) {
            let fstype = f
                .iter()
                .position(|x| *x == "-")
                .and_then(|i| f.get(i + 1))
                .unwrap_or(&"?");
            return Ok(Some(format!("mounted at {point} ({fstype})")));
        }
    }
    let swaps = fs::read_to_string("/proc/swaps").unwrap_or_default();
    for line in swaps.lines().skip(1) {
        let Some(p) = line.split_whitespace().next() else {
            continue;
        };
        if let Ok(m) = fs::metadata(p) {
            if m.file_type().is_block_device() && holds(m.rdev()) {
                return Ok(Some(format!("in use as swap ({p})")));
            }
        }
    }
    Ok(None)
}
