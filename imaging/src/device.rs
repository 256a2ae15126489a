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
    /// Makes `len` bytes at `offset` read as zeros. The default writes zeros; a device may do
    /// it cheaper where the result is guaranteed to read as zeros (a block device's zero-out,
    /// a hole punched in a file), never by a discard that may leave old data readable.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        write_zero_buffers(self, offset, len)
    }
}

/// The error every write to a device that is read-only here returns (an image opened in
/// place, a logical volume seen through its segments, a qcow2 file being imported).
pub fn read_only(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{what} is read-only here"),
    )
}

/// Writes `len` zero bytes at `offset` through [`BlockDevice::write_at`].
fn write_zero_buffers<D: BlockDevice + ?Sized>(dev: &D, offset: u64, len: u64) -> io::Result<()> {
    const PIECE: u64 = 1 << 20;
    let zeros = vec![0u8; PIECE.min(len) as usize];
    let mut pos = offset;
    let end = offset
        .checked_add(len)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "zero range overflows"))?;
    while pos < end {
        let n = (end - pos).min(PIECE) as usize;
        dev.write_at(&zeros[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
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
// _IO(0x12, 127): zero a byte range given as two u64s (start, length), both sector-aligned; the
// kernel uses the device's write-zeroes command or writes zero pages, and drops its page cache
// over the range. Unlike BLKDISCARD, the range is guaranteed to read back as zeros.
const BLKZEROOUT: libc::c_ulong = 0x127f;

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

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        check_range(offset, len as usize, self.len)?;
        if self.is_block {
            // The sector-aligned middle by the kernel, the unaligned ends (if any) by writes.
            let ss = u64::from(self.sector_size.max(512));
            let a = offset.div_ceil(ss) * ss;
            let b = ((offset + len) / ss * ss).max(a);
            if b > a {
                let range = [a, b - a];
                // SAFETY: BLKZEROOUT reads two u64s from `range`, which outlives the call.
                let r =
                    unsafe { libc::ioctl(self.file.as_raw_fd(), BLKZEROOUT as _, range.as_ptr()) };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    if !matches!(
                        e.raw_os_error(),
                        Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL)
                    ) {
                        return Err(e);
                    }
                    write_zero_buffers(self, a, b - a)?;
                }
                write_zero_buffers(self, offset, a - offset)?;
                return write_zero_buffers(self, b, offset + len - b);
            }
            return write_zero_buffers(self, offset, len);
        }
        // A regular file: a hole reads as zeros and takes no space.
        // SAFETY: fallocate on our own descriptor; no memory is passed.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) {
                return Err(e);
            }
            return write_zero_buffers(self, offset, len);
        }
        Ok(())
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

impl<T: BlockDevice + ?Sized> BlockDevice for std::sync::Arc<T> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        (**self).sync()
    }
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn sector_size(&self) -> u32 {
        (**self).sector_size()
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        (**self).write_zeroes(offset, len)
    }
}

/// Several devices written as one: every write goes to each, and every read reads each and
/// fails (`InvalidData`, naming the device and the byte) where one differs from the first, so
/// what is read back from it was read back from every device. As long as the shortest; the
/// devices must share a sector size ([`Mirror::new`] checks).
pub struct Mirror {
    devs: Vec<Box<dyn BlockDevice>>,
    names: Vec<String>,
}

impl Mirror {
    /// The devices `devs`, named `names` in errors.
    pub fn new(devs: Vec<Box<dyn BlockDevice>>, names: Vec<String>) -> io::Result<Self> {
        if devs.is_empty() || devs.len() != names.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no devices"));
        }
        if let Some(i) = devs
            .iter()
            .position(|d| d.sector_size() != devs[0].sector_size())
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} has {}-byte sectors, {} {}-byte ones",
                    names[i],
                    devs[i].sector_size(),
                    names[0],
                    devs[0].sector_size()
                ),
            ));
        }
        Ok(Self { devs, names })
    }
}

impl BlockDevice for Mirror {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len(), self.len())?;
        self.devs[0].read_at(buf, offset)?;
        let mut other = vec![0u8; buf.len()];
        for (d, name) in self.devs.iter().zip(&self.names).skip(1) {
            d.read_at(&mut other, offset)?;
            if let Some(i) = other.iter().zip(buf.iter()).position(|(a, b)| a != b) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{name} differs from {} at byte {}",
                        self.names[0],
                        offset + i as u64
                    ),
                ));
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len(), self.len())?;
        self.devs.iter().try_for_each(|d| d.write_at(buf, offset))
    }

    fn sync(&self) -> io::Result<()> {
        self.devs.iter().try_for_each(|d| d.sync())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(offset, len as usize, self.len())?;
        self.devs
            .iter()
            .try_for_each(|d| d.write_zeroes(offset, len))
    }

    fn len(&self) -> u64 {
        self.devs.iter().map(|d| d.len()).min().unwrap_or(0)
    }

    fn sector_size(&self) -> u32 {
        self.devs[0].sector_size()
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

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(offset, len as usize, self.len)?;
        self.inner.write_zeroes(self.start + offset, len)
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
    fn a_mirror_writes_every_device_and_reads_back_from_each() {
        let a = std::sync::Arc::new(MemDevice::new(vec![0; 8192]));
        let b = std::sync::Arc::new(MemDevice::new(vec![7; 12288]));
        let m = Mirror::new(
            vec![Box::new(a.clone()), Box::new(b.clone())],
            vec!["a".into(), "b".into()],
        )
        .unwrap();
        assert_eq!(m.len(), 8192, "the shortest");
        m.write_at(&[1, 2, 3], 100).unwrap();
        m.write_zeroes(4096, 4096).unwrap();
        assert_eq!(
            (&a.to_vec()[100..103], &b.to_vec()[100..103]),
            (&[1, 2, 3][..], &[1, 2, 3][..])
        );
        assert!(b.to_vec()[4096..8192].iter().all(|&x| x == 0));
        let mut buf = [0u8; 3];
        m.read_at(&mut buf, 100).unwrap();
        assert_eq!(buf, [1, 2, 3]);
        // A byte that differs on the second device is found, and named.
        b.write_at(&[9], 102).unwrap();
        let e = m.read_at(&mut buf, 100).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(e.to_string(), "b differs from a at byte 102");
        assert!(m.write_at(&[0], 8192).is_err(), "past the shortest");
        let four_k = MemDevice::new(vec![0; 8192]).with_sector_size(4096);
        let e = Mirror::new(
            vec![Box::new(a), Box::new(four_k)],
            vec!["a".into(), "c".into()],
        );
        assert!(e.is_err_and(|e| e.to_string().contains("c has 4096-byte sectors")));
    }

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
    fn write_zeroes_on_files_memory_and_windows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0xFFu8; 3 << 20]).unwrap();
        let f = FileDevice::open_write(&path).unwrap();
        // Unaligned on both ends, across a hole-punchable middle.
        f.write_zeroes(100, (2 << 20) + 5000).unwrap();
        assert!(f.write_zeroes(3 << 20, 1).is_err(), "past the end");
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), 3 << 20, "the file keeps its size");
        let end = 100 + (2 << 20) + 5000;
        assert!(got[..100].iter().all(|&b| b == 0xFF));
        assert!(got[100..end].iter().all(|&b| b == 0));
        assert!(got[end..].iter().all(|&b| b == 0xFF));

        let m = MemDevice::new(vec![7; 4096]);
        let s = SubDevice::new(&m, 1000, 2000);
        s.write_zeroes(10, 20).unwrap();
        assert!(s.write_zeroes(1990, 11).is_err());
        let v = m.to_vec();
        assert!(v[1010..1030].iter().all(|&b| b == 0));
        assert_eq!(v.iter().filter(|&&b| b == 0).count(), 20);
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
