//! One filesystem of a restored disk, reached through a loop device over its bytes of the disk
//! (a block device or an image file alike, so no partition device nodes are needed): handed to
//! a tool as a device (resize2fs, ntfsresize), or mounted on a fresh directory — read-only for
//! personalization (looking changes nothing, not even a mount count), made writable only when
//! there is something to change — then unmounted and detached. Linux only, and root only.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

// <linux/loop.h>
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` (Linux 5.8 and later).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// A loop device over `len` bytes of `disk` from `offset`: the open device and its path. It
/// detaches itself once closed and unmounted (autoclear).
pub fn attach(disk: &Path, offset: u64, len: u64) -> anyhow::Result<(File, PathBuf)> {
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .with_context(|| format!("opening {}", disk.display()))?;
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .context("opening /dev/loop-control (is the loop module loaded?)")?;
    // Another process may take the free device first (forty agents of one lab finishing
    // together, or a host's own loop users): ask again, waiting a little longer each time
    // and not in step with the others, for up to a minute.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut pause_ms = 2 + u64::from(std::process::id() % 7);
    let mut tries = 0u32;
    loop {
        tries += 1;
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("finding a free loop device");
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut name = [0u8; 64];
        let src = disk.as_os_str().as_encoded_bytes();
        name[..src.len().min(63)].copy_from_slice(&src[..src.len().min(63)]);
        let cfg = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                device: 0,
                inode: 0,
                rdevice: 0,
                offset,
                sizelimit: len,
                number: 0,
                encrypt_type: 0,
                encrypt_key_size: 0,
                flags: LO_FLAGS_AUTOCLEAR,
                file_name: name,
                crypt_name: [0; 64],
                encrypt_key: [0; 32],
                init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `cfg` is, laid out as C.
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) };
        if r == 0 {
            return Ok((dev, path));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e).with_context(|| format!("setting up {}", path.display()));
        }
        if std::time::Instant::now() >= deadline {
            bail!("no free loop device: every one offered was taken first ({tries} tries in a minute)");
        }
        std::thread::sleep(std::time::Duration::from_millis(pause_ms));
        pause_ms = (pause_ms * 2).min(250);
    }
}

/// A mounted filesystem; [`unmount`](Self::unmount) it (dropping does too, quietly).
pub struct Mounted {
    dir: PathBuf,
    /// Held until unmounted: the loop device detaches once both are gone.
    _loop: File,
    dev: PathBuf,
    /// Mounted by ntfs-3g (FUSE), not by the kernel.
    fuse: bool,
    mounted: bool,
}

/// Mounts `dev` on `dir` with the kernel's `fstype` driver.
fn kernel_mount(dev: &Path, dir: &Path, fstype: &str, flags: libc::c_ulong) -> io::Result<()> {
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("no NUL");
    let (src, target) = (c(dev), c(dir));
    let fstype_c = std::ffi::CString::new(fstype).expect("no NUL");
    // SAFETY: every pointer is a NUL-terminated string that outlives the call; no data.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype_c.as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Neither the kernel's ntfs3 nor ntfs-3g is there (an agent run by hand on a machine without
/// them; the boot environment has ntfs-3g).
#[derive(Debug, thiserror::Error)]
#[error("no NTFS driver: the kernel has no ntfs3 and ntfs-3g is not installed")]
pub struct NoNtfsDriver;

/// Mounts the NTFS on `dev` on `dir` with ntfs-3g (a kernel without ntfs3, as Debian 12's).
/// It returns once the filesystem is mounted; its daemon serves it until it is unmounted.
fn ntfs_3g(dev: &Path, dir: &Path, read_only: bool) -> anyhow::Result<()> {
    let opts = if read_only { "ro,noatime" } else { "noatime" };
    let out = match std::process::Command::new("ntfs-3g")
        .args(["-o", opts])
        .arg(dev)
        .arg(dir)
        .output()
    {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(NoNtfsDriver.into()),
        r => r.context("the kernel has no ntfs3 driver and ntfs-3g did not start")?,
    };
    if !out.status.success() {
        bail!(
            "ntfs-3g: {}",
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', "; ")
        );
    }
    Ok(())
}

impl Mounted {
    /// Mounts the `fstype` filesystem at `offset..offset + len` of `disk`, read-only.
    pub fn new(disk: &Path, offset: u64, len: u64, fstype: &str) -> anyhow::Result<Self> {
        Self::mount(disk, offset, len, fstype, true)
    }

    /// Mounts the `fstype` filesystem at `offset..offset + len` of `disk`, read-write (to grow
    /// it while mounted, as XFS and btrfs grow).
    pub fn new_writable(disk: &Path, offset: u64, len: u64, fstype: &str) -> anyhow::Result<Self> {
        Self::mount(disk, offset, len, fstype, false)
    }

    fn mount(
        disk: &Path,
        offset: u64,
        len: u64,
        fstype: &str,
        read_only: bool,
    ) -> anyhow::Result<Self> {
        let (dev, path) = attach(disk, offset, len)?;
        let dir =
            std::env::temp_dir().join(format!("drover-mount-{}-{offset}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let flags = if read_only {
            libc::MS_RDONLY | libc::MS_NOATIME
        } else {
            libc::MS_NOATIME
        };
        // NTFS: the kernel's ntfs3 where it has one, else ntfs-3g.
        let kernel_type = if fstype == "ntfs" { "ntfs3" } else { fstype };
        let mut fuse = false;
        let r = match kernel_mount(&path, &dir, kernel_type, flags) {
            Err(e) if fstype == "ntfs" && e.raw_os_error() == Some(libc::ENODEV) => {
                fuse = true;
                ntfs_3g(&path, &dir, read_only)
            }
            r => r.with_context(|| format!("mounting it as {kernel_type}")),
        };
        if let Err(e) = r {
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
        Ok(Self {
            dir,
            _loop: dev,
            dev: path,
            fuse,
            mounted: true,
        })
    }

    /// Where it is mounted.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Remounts it read-write.
    pub fn make_writable(&mut self) -> anyhow::Result<()> {
        if self.fuse {
            // ntfs-3g cannot remount: mount it again, read-write.
            umount_keep(&self.dir)?;
            self.mounted = false;
            ntfs_3g(&self.dev, &self.dir, false).context("mounting it read-write")?;
            self.mounted = true;
            return Ok(());
        }
        let target = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes())
            .expect("no NUL in the path");
        // SAFETY: a NUL-terminated path that outlives the call; no source, type or data.
        let r = unsafe {
            libc::mount(
                std::ptr::null(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_NOATIME,
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error()).context("remounting it read-write");
        }
        Ok(())
    }

    /// Unmounts it (its changes are on the disk once this returns).
    pub fn unmount(mut self) -> anyhow::Result<()> {
        self.mounted = false;
        umount(&self.dir)
    }
}

/// Mounts efivarfs on `dir` unless something is mounted there already (its variables show).
pub fn efivarfs(dir: &Path) -> anyhow::Result<()> {
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Ok(());
    }
    let c = |s: &[u8]| std::ffi::CString::new(s).expect("no NUL");
    let (src, target) = (c(b"efivarfs"), c(dir.as_os_str().as_encoded_bytes()));
    // SAFETY: NUL-terminated strings that outlive the call; no data.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e).with_context(|| format!("on {}", dir.display()));
        }
    }
    Ok(())
}

fn umount(dir: &Path) -> anyhow::Result<()> {
    umount_keep(dir)?;
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

/// Unmounts `dir`, leaving the directory. For ntfs-3g's mounts (fuseblk) the kernel waits
/// until the daemon has written everything out.
fn umount_keep(dir: &Path) -> anyhow::Result<()> {
    let target =
        std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("no NUL in the path");
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(target.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("unmounting {}", dir.display()));
    }
    Ok(())
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = umount(&self.dir) {
                tracing::warn!("{e:#}");
            }
        }
    }
}
