//! Block devices: the one interface every reader and writer in this crate goes through.
//!
//! [`BlockDevice`] is positional (`read_at`/`write_at`), so readers never share a cursor and the
//! restore pipeline can write chunks in whatever order they finish. [`FileDevice`] covers regular
//! files, sparse files and real block devices; [`MemDevice`] is the in-memory fake the tests use.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A disk, a partition or a disk image file, addressed by byte offset.
///
/// Implementations must be usable from several threads at once (`&self` methods).
pub trait BlockDevice: Send + Sync {
    /// Fills `buf` from `offset`. Reading past the end is an error (`UnexpectedEof`).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`. Writing past the end is an error.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable.
    fn sync(&self) -> io::Result<()>;
    /// The size in bytes.
    fn len(&self) -> u64;
    /// The logical sector size in bytes (512 for files).
    fn sector_size(&self) -> u32 {
        512
    }
    /// Whether the device has zero length.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A regular file or a block device opened from a path.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    path: PathBuf,
    len: u64,
    sector_size: u32,
    is_block: bool,
    rdev: u64,
}

// From <linux/fs.h>: _IO(0x12, 104) and _IOR(0x12, 114, size_t).
const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

impl FileDevice {
    /// Opens `path` for reading only (capture, inspect).
    pub fn open_read(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        Self::from_file(file, path)
    }

    /// Opens `path` for reading and writing (restore). The file or device must already exist:
    /// restore never creates a target of a size it guessed.
    pub fn open_write(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Self::from_file(file, path)
    }

    fn from_file(file: File, path: &Path) -> io::Result<Self> {
        let meta = file.metadata()?;
        let is_block = meta.file_type().is_block_device();
        let (len, sector_size) = if is_block {
            (
                ioctl_u64(&file, BLKGETSIZE64)?,
                ioctl_u32(&file, BLKSSZGET)?,
            )
        } else if meta.is_file() {
            (meta.len(), 512)
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is neither a regular file nor a block device",
                    path.display()
                ),
            ));
        };
        Ok(Self {
            file,
            path: path.to_owned(),
            len,
            sector_size,
            is_block,
            rdev: meta.rdev(),
        })
    }

    /// The path this device was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this is a block device (as opposed to a regular file).
    pub fn is_block_device(&self) -> bool {
        self.is_block
    }

    /// The device number (`st_rdev`) of a block device; 0 for a file.
    pub fn rdev(&self) -> u64 {
        self.rdev
    }
}

fn ioctl_u64(file: &File, req: libc::c_ulong) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut v: u64 = 0;
    // SAFETY: the request writes one u64 into `v`, which outlives the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), req as _, &mut v as *mut u64) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

fn ioctl_u32(file: &File, req: libc::c_ulong) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut v: libc::c_int = 0;
    // SAFETY: the request writes one int into `v`, which outlives the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), req as _, &mut v as *mut libc::c_int) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v as u32)
}

fn check_range(offset: u64, n: usize, len: u64) -> io::Result<()> {
    match offset.checked_add(n as u64) {
        Some(end) if end <= len => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("access of {n} bytes at offset {offset} is past the end of the device ({len} bytes)"),
        )),
    }
}

impl BlockDevice for FileDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len(), self.len)?;
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len(), self.len)?;
        self.file.write_all_at(buf, offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn sector_size(&self) -> u32 {
        self.sector_size
    }
}

/// A device held in memory: the fake for tests and fuzzing.
#[derive(Debug)]
pub struct MemDevice {
    data: Mutex<Vec<u8>>,
    sector_size: u32,
}

impl MemDevice {
    /// A device holding `data`, with 512-byte sectors.
    pub fn new(data: Vec<u8>) -> Self {
        Self {
            data: Mutex::new(data),
            sector_size: 512,
        }
    }

    /// Sets the logical sector size the device reports.
    pub fn with_sector_size(mut self, sector_size: u32) -> Self {
        self.sector_size = sector_size;
        self
    }

    /// A copy of the device's bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        // A panic while holding the lock leaves plain bytes behind; they are still readable.
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl BlockDevice for MemDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let data = self.lock();
        check_range(offset, buf.len(), data.len() as u64)?;
        let o = offset as usize;
        buf.copy_from_slice(&data[o..o + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut data = self.lock();
        check_range(offset, buf.len(), data.len() as u64)?;
        let o = offset as usize;
        data[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> u64 {
        self.lock().len() as u64
    }

    fn sector_size(&self) -> u32 {
        self.sector_size
    }
}

/// A window onto part of another device (a partition), addressed from 0.
pub struct SubDevice<'a> {
    inner: &'a dyn BlockDevice,
    start: u64,
    len: u64,
}

impl<'a> SubDevice<'a> {
    /// The bytes `start..start+len` of `inner`; clipped to the end of `inner`.
    pub fn new(inner: &'a dyn BlockDevice, start: u64, len: u64) -> Self {
        let len = len.min(inner.len().saturating_sub(start));
        Self { inner, start, len }
    }
}

impl BlockDevice for SubDevice<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len(), self.len)?;
        self.inner.read_at(buf, self.start + offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len(), self.len)?;
        self.inner.write_at(buf, self.start + offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn sector_size(&self) -> u32 {
        self.inner.sector_size()
    }
}

/// Reads `len` bytes at `offset` into a new buffer.
pub fn read_vec(dev: &dyn BlockDevice, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    dev.read_at(&mut buf, offset)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_device_bounds() {
        let d = MemDevice::new(vec![0; 1024]);
        d.write_at(&[1, 2, 3], 1021).unwrap();
        assert!(d.write_at(&[1, 2], 1023).is_err());
        let mut b = [0u8; 3];
        d.read_at(&mut b, 1021).unwrap();
        assert_eq!(b, [1, 2, 3]);
        assert!(d.read_at(&mut b, u64::MAX - 1).is_err());
    }

    #[test]
    fn sub_device_offsets_and_clips() {
        let d = MemDevice::new((0..=255u8).collect());
        let s = SubDevice::new(&d, 250, 100);
        assert_eq!(s.len(), 6);
        let mut b = [0u8; 2];
        s.read_at(&mut b, 4).unwrap();
        assert_eq!(b, [254, 255]);
        assert!(s.read_at(&mut b, 5).is_err());
    }
}
