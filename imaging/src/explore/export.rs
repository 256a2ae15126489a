//! An image written out as one disk image file: sparse raw, or qcow2.
//!
//! Only the stretches that can hold a non-zero byte are read (each area's used bytes and the
//! GPT backup), in chunk-sized windows on several threads; a 64 KiB cluster of zeros is never
//! written (a hole in a raw file, an unallocated cluster in a qcow2 file). The file is written
//! under a temporary name beside `out` and renamed when complete, so a failed export leaves
//! no half-written file under the name asked for.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::qcow2::{Qcow2Writer, CLUSTER};
use super::ImageDisk;
use crate::device::BlockDevice;
use crate::extent::ExtentMap;
use crate::progress::Progress;
use crate::table::TableKind;

/// The file format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The disk's bytes, zeros as holes.
    Raw,
    /// QEMU's qcow2 (version 3, 64 KiB clusters, no compression).
    Qcow2,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(Self::Raw),
            "qcow2" => Ok(Self::Qcow2),
            _ => Err(format!("unknown format {s:?} (raw or qcow2)")),
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    /// The disk's size.
    pub disk_size: u64,
    /// Bytes of data clusters written (the rest are holes or unallocated).
    pub data_bytes: u64,
    /// The file's size.
    pub file_size: u64,
}

/// The disk ranges of `disk` that may hold a non-zero byte.
pub fn data_ranges(disk: &ImageDisk) -> ExtentMap {
    let m = disk.manifest();
    let mut out = ExtentMap::new();
    for a in &m.areas {
        for e in a.used.iter() {
            out.push(a.offset + e.start, e.len);
        }
    }
    if m.table.kind == TableKind::Gpt {
        if let Some((start, len)) = m.table.gpt_backup {
            out.push(start, len);
        }
    }
    out.normalize();
    out
}

/// Writes `disk` to `out` as `format`, on `threads` workers (0: one per core). Refuses an
/// `out` that exists.
pub fn export(
    disk: &ImageDisk,
    out: &Path,
    format: Format,
    threads: usize,
    progress: &dyn Progress,
) -> io::Result<Exported> {
    if out.symlink_metadata().is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists; export writes a new file", out.display()),
        ));
    }
    let tmp = temp_name(out);
    let res = write(disk, &tmp, format, threads, progress);
    match res {
        Ok(r) => {
            std::fs::rename(&tmp, out)?;
            Ok(r)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn temp_name(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".part-{}", std::process::id()));
    out.with_file_name(name)
}

/// Where the clusters go.
enum Sink {
    Raw(std::fs::File),
    Qcow2(Qcow2Writer),
}

fn write(
    disk: &ImageDisk,
    path: &Path,
    format: Format,
    threads: usize,
    progress: &dyn Progress,
) -> io::Result<Exported> {
    let size = disk.len();
    let sink = match format {
        Format::Raw => {
            let f = OpenOptions::new().write(true).create_new(true).open(path)?;
            f.set_len(size)?;
            Sink::Raw(f)
        }
        Format::Qcow2 => Sink::Qcow2(Qcow2Writer::create(path, size)?),
    };
    // Windows of one chunk (a whole number of clusters), each read once.
    let win = disk.manifest().chunk_size.max(CLUSTER);
    let ranges = data_ranges(disk);
    let mut windows: Vec<u64> = Vec::new();
    for e in ranges.iter() {
        for w in e.start / win..=(e.end() - 1) / win {
            if windows.last() != Some(&w) {
                windows.push(w);
            }
        }
    }
    progress.start(ranges.total(), "export");
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let data = AtomicU64::new(0);
    let err: Mutex<Option<io::Error>> = Mutex::new(None);
    let workers = if threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        threads
    };
    std::thread::scope(|s| {
        for _ in 0..workers.min(windows.len().max(1)) {
            s.spawn(|| {
                let mut buf = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&w) = windows.get(i) else { return };
                    let r = window(disk, &sink, w * win, win.min(size - w * win), &mut buf);
                    match r {
                        Ok(n) => {
                            data.fetch_add(n, Ordering::Relaxed);
                            let start = w * win;
                            let covered: u64 = ranges.clip(start, start + win).map(|e| e.len).sum();
                            progress.advance(covered);
                        }
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            err.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let file_size = match sink {
        Sink::Raw(f) => {
            f.sync_all()?;
            size
        }
        Sink::Qcow2(q) => q.finish()?,
    };
    Ok(Exported {
        disk_size: size,
        data_bytes: data.into_inner(),
        file_size,
    })
}

/// Writes the non-zero clusters of disk bytes `start..start + len`; returns the bytes written.
fn window(
    disk: &ImageDisk,
    sink: &Sink,
    start: u64,
    len: u64,
    buf: &mut Vec<u8>,
) -> io::Result<u64> {
    buf.resize(len as usize, 0);
    disk.read_at(buf, start)?;
    let mut written = 0;
    for (k, c) in buf.chunks(CLUSTER as usize).enumerate() {
        if c.iter().all(|&b| b == 0) {
            continue;
        }
        let at = start + k as u64 * CLUSTER;
        match sink {
            Sink::Raw(f) => f.write_all_at(c, at)?,
            Sink::Qcow2(q) => q.write_cluster(at / CLUSTER, c)?,
        }
        written += c.len() as u64;
    }
    Ok(written)
}
