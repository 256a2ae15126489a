//! Restoring an image onto a target smaller than the disk it was captured from.
//!
//! Each partition whose filesystem can shrink (ext2/3/4, NTFS, btrfs) is first restored alone
//! into a sparse scratch file (only its used blocks take space), where its filesystem's own
//! tool says how small it can get (`resize2fs -P`, `ntfsresize --info`, `btrfs inspect-internal
//! min-dev-size`). From those minimums [`plan`] shrinks the last partition first, then the ones
//! before it, moving the later ones left, until the layout ends inside the target; when it
//! cannot, it refuses before a byte of the target is written, naming the partition and the
//! bytes it needs.
//!
//! [`restore_shrunk`] then shrinks each such filesystem in its scratch file with the same tool
//! (resize2fs; ntfsresize, then `ntfsfix -d`, which also writes the alternate boot sector at
//! the partition's new end; `btrfs filesystem resize`), reads the shrunk filesystem's used
//! blocks with drover's own readers and copies them to their new place on the target, reading
//! each back. The other partitions are restored straight from the store at their (possibly
//! moved) places, read back against their chunks' hashes, and the partition table is
//! rewritten for the target.
//!
//! FAT16 and FAT32 are shrunk by drover itself ([`crate::fat_resize`]). XFS cannot shrink,
//! and drover does not shrink FAT12, swap, LVM, LUKS or raw copies: such a
//! partition keeps its size (and may move). Moving an MBR's logical partitions is refused.
//! Needs root for btrfs (a mount); ext and NTFS are shrunk in plain files.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::device::{BlockDevice, FileDevice};
use crate::fs::{self, FsKind};
use crate::manifest::{Area, AreaKind, FsInfo, Manifest};
use crate::progress::{NoProgress, Progress};
use crate::relayout::{self, LayoutMode, Placed, Relayout};
use crate::restore;
use crate::store::Store;
use crate::table::{Layout, TableKind};

/// How small one partition can get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Minimum {
    /// The partition's number (0: a filesystem without a table).
    pub number: u32,
    /// Its filesystem, if one was read.
    pub fs: Option<FsKind>,
    /// Its size as captured.
    pub size: u64,
    /// The least it can take: its size when it cannot shrink.
    pub min: u64,
    /// Where the number comes from, or why it cannot shrink.
    pub why: String,
}

/// Why a target is too small.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShrinkError {
    /// A partition cannot fit, even with every partition before it shrunk to its minimum.
    #[error("{image} does not fit on the {disk}-byte target: {what} needs at least {needs} bytes ({why}), and only {left} are left for it on this target; the smallest target it fits is {min_disk} bytes")]
    TooSmall {
        /// The image.
        image: String,
        /// The partition, named with its filesystem.
        what: String,
        /// The bytes it needs.
        needs: u64,
        /// What the target leaves for it.
        left: u64,
        /// Where the minimum comes from.
        why: String,
        /// The target's size.
        disk: u64,
        /// The smallest target the image fits, shrunk.
        min_disk: u64,
    },
    /// A logical partition of an MBR would move.
    #[error("shrinking would move logical partition {0} of the MBR's extended partition, which drover does not relocate")]
    MovesLogical(u32),
}

/// The filesystems drover shrinks.
pub fn can_shrink(kind: FsKind) -> bool {
    matches!(
        kind,
        FsKind::Ext2
            | FsKind::Ext3
            | FsKind::Ext4
            | FsKind::Ntfs
            | FsKind::Btrfs
            | FsKind::Fat16
            | FsKind::Fat32
    )
}

fn number_of(a: &Area) -> Option<u32> {
    match a.kind {
        AreaKind::Partition { number } => Some(number),
        AreaKind::Whole => Some(0),
        AreaKind::Outside => None,
    }
}

fn what(number: u32, fs: Option<FsKind>) -> String {
    let part = if number == 0 {
        "the filesystem".to_string()
    } else {
        format!("partition {number}")
    };
    match fs {
        Some(k) if number == 0 => format!("the {k} filesystem"),
        Some(k) => format!("{part} ({k})"),
        None => part,
    }
}

/// Lower bounds of every partition's minimum from the manifest alone: its used bytes for a
/// filesystem drover shrinks, its size otherwise. A target these do not fit is refused
/// without reading a chunk.
pub fn lower_bounds(m: &Manifest) -> Vec<Minimum> {
    m.areas
        .iter()
        .filter_map(|a| {
            let number = number_of(a)?;
            let fs = relayout::read_fs(a);
            let (min, why) = match fs {
                Some(k) if can_shrink(k) => (a.used.total().max(1), "its used bytes".to_string()),
                _ => (a.len, cannot(fs)),
            };
            Some(Minimum {
                number,
                fs,
                size: a.len,
                min,
                why,
            })
        })
        .collect()
}

fn cannot(fs: Option<FsKind>) -> String {
    match fs {
        Some(FsKind::Xfs) => "XFS cannot shrink".into(),
        Some(k) => format!("drover does not shrink {k}"),
        None => "a raw copy cannot shrink".into(),
    }
}

/// The usable end of a target of `disk` bytes for image `m`'s table, and the alignment its
/// partitions keep.
fn ends(m: &Manifest, disk: u64) -> (u64, u64) {
    let ss = u64::from(m.table.sector_size);
    let align = (1u64 << 20).max(ss);
    match m.table.kind {
        TableKind::Gpt => {
            let end = disk - m.table.gpt_backup.map_or(0, |(_, l)| l).min(disk);
            (end / align * align, align)
        }
        TableKind::Mbr => (disk.min(u64::from(u32::MAX) * ss) / align * align, align),
        TableKind::None => (disk, 1),
    }
}

/// Plans image `m` (named `image`) on a target of `disk` bytes with partitions no smaller than
/// `mins`: the last partition shrinks first, then each one before it, the later ones moving
/// left, until the layout ends within the target. A layout that already fits is kept.
pub fn plan(
    image: &str,
    m: &Manifest,
    disk: u64,
    mins: &[Minimum],
) -> Result<Relayout, ShrinkError> {
    let (end, align) = ends(m, disk);
    let mut parts = relayout::as_captured(m);
    let min_of = |n: u32| mins.iter().find(|x| x.number == n);
    let floor = |p: &Placed| -> u64 {
        let min = min_of(p.number).map_or(p.size, |x| x.min.min(p.size));
        // A shrunk partition ends on the alignment (unless it keeps its exact size).
        if min == p.size {
            min
        } else {
            min.next_multiple_of(align).min(p.size)
        }
    };
    let Some(last) = parts.last() else {
        return Ok(relayout_of(disk, parts));
    };
    if last.start + last.size <= end || m.min_size <= disk {
        return Ok(relayout_of(disk, parts));
    }
    // How far the last partition's floor overshoots the end: taken from the partitions before
    // it, last first, each giving whole alignment units down to its floor.
    let n = parts.len();
    let mut need = (last.start + floor(last)).saturating_sub(end);
    let mut shifts = vec![0u64; n];
    for i in (0..n - 1).rev() {
        if need == 0 {
            break;
        }
        let p = &parts[i];
        let spare = (p.size - floor(p)) / align * align;
        let take = spare.min(need.next_multiple_of(align));
        shifts[i] = take;
        need = need.saturating_sub(take);
    }
    let mut moved = 0u64;
    for (i, p) in parts.iter_mut().enumerate() {
        p.new_start = p.start - moved;
        p.new_size = p.size - shifts[i];
        moved += shifts[i];
    }
    let last = parts.last().expect("not empty").clone();
    let left = end.saturating_sub(last.new_start);
    let needs = floor(&last);
    if needs > left {
        let x = min_of(last.number);
        // The smallest target: every partition at its floor (the gaps between them kept),
        // the backup GPT after them.
        let mut gone = 0;
        let mut min_end = 0;
        for p in &parts {
            let f = floor(p);
            min_end = p.start - gone + f;
            gone += (p.size - f) / align * align;
        }
        let tail = match m.table.kind {
            TableKind::Gpt => m.table.gpt_backup.map_or(0, |(_, l)| l),
            _ => 0,
        };
        return Err(ShrinkError::TooSmall {
            image: image.into(),
            what: what(last.number, last.fs),
            needs,
            left,
            why: x.map_or_else(|| cannot(last.fs), |x| x.why.clone()),
            disk,
            min_disk: min_end.next_multiple_of(align) + tail,
        });
    }
    parts.last_mut().expect("not empty").new_size = left.min(last.size);
    for p in &parts {
        if p.new_start != p.start && m.table.kind == TableKind::Mbr && p.number >= 5 {
            return Err(ShrinkError::MovesLogical(p.number));
        }
    }
    Ok(relayout_of(disk, parts))
}

fn relayout_of(disk: u64, parts: Vec<Placed>) -> Relayout {
    Relayout {
        mode: LayoutMode::Keep,
        disk_size: disk,
        parts,
        notes: Vec::new(),
    }
}

/// The smallest disk image `m` fits on with each partition at its minimum in `mins`.
pub fn min_disk(m: &Manifest, mins: &[Minimum]) -> u64 {
    // `plan` reports it when it refuses; a target of one byte is always refused.
    match plan(
        "",
        m,
        1.max(m.table.gpt_backup.map_or(0, |(_, l)| l) + 1),
        mins,
    ) {
        Err(ShrinkError::TooSmall { min_disk, .. }) => min_disk,
        _ => m.min_size,
    }
}

/// Room kept free in the scratch directory beyond the staged used bytes (what the tools
/// write while they shrink).
const SCRATCH_SPARE: u64 = 64 << 20;

/// Scratch files holding partitions restored alone, removed when dropped.
pub struct Scratch {
    dir: tempfile::TempDir,
    staged: Vec<(u32, PathBuf)>,
    threads: usize,
}

impl Scratch {
    /// A new scratch directory inside `parent`; partitions are restored into it with
    /// `threads` threads.
    pub fn new(parent: &Path, threads: usize) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("drover-shrink-")
            .tempdir_in(parent)
            .with_context(|| format!("creating a scratch directory in {}", parent.display()))?;
        Ok(Self {
            dir,
            staged: Vec::new(),
            threads,
        })
    }

    fn path(&self, number: u32) -> Option<&Path> {
        self.staged
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, p)| p.as_path())
    }

    /// Restores area `a` of image `m` alone into a sparse file (its first byte at the file's
    /// first byte), checking every chunk.
    fn stage(
        &mut self,
        image: &str,
        m: &Manifest,
        a: &Area,
        store: &Store,
    ) -> anyhow::Result<PathBuf> {
        let number = number_of(a).context("the outside area is never staged")?;
        // It takes its used bytes: refused up front on a scratch filesystem without room for
        // them, rather than failing half-way.
        let dir = self.dir.path();
        let free = crate::store::free_space_at(dir)
            .with_context(|| format!("checking free space in {}", dir.display()))?;
        let need = a.used.total() + SCRATCH_SPARE;
        if need > free {
            bail!(
                "the scratch directory {} has {free} bytes free, and staging {} takes {need} (name a roomier scratch directory)",
                dir.display(),
                what(number, relayout::read_fs(a)),
            );
        }
        let path = self.dir.path().join(format!("part{number}.img"));
        File::create(&path)
            .and_then(|f| f.set_len(a.len))
            .with_context(|| format!("creating {}", path.display()))?;
        let dev = FileDevice::open_write(&path)?;
        let alone = Manifest {
            table: Layout {
                kind: TableKind::None,
                sector_size: m.table.sector_size,
                partitions: Vec::new(),
                gpt_backup: None,
                warning: None,
            },
            table_raw: Vec::new(),
            gpt_backup_raw: Vec::new(),
            disk_size: a.len,
            min_size: 0,
            areas: vec![Area {
                kind: AreaKind::Whole,
                offset: 0,
                ..a.clone()
            }],
            ..m.clone()
        };
        restore::restore(image, &alone, store, &dev, self.threads, &NoProgress).with_context(
            || {
                format!(
                    "restoring {} into the scratch file {} (is its disk full?)",
                    what(number, relayout::read_fs(a)),
                    path.display()
                )
            },
        )?;
        self.staged.push((number, path.clone()));
        Ok(path)
    }
}

/// How small each partition of `m` can get: each one whose filesystem drover shrinks is
/// restored alone into `scratch` and its tool asked, the last partition first (the one
/// [`plan`] shrinks first). With `target` (the smallest target's size), it stops as soon as
/// the layout fits that target with the others at their full size (which they then keep:
/// a large partition earlier on the disk is not staged for nothing); without, it measures
/// every one. Nothing is written but the scratch files, which [`restore_shrunk`] then
/// shrinks.
pub fn minimums(
    image: &str,
    m: &Manifest,
    store: &Store,
    scratch: &mut Scratch,
    target: Option<u64>,
) -> anyhow::Result<Vec<Minimum>> {
    let mut out = lower_bounds(m);
    let mut order: Vec<usize> = (0..out.len())
        .filter(|&i| out[i].fs.is_some_and(can_shrink))
        .collect();
    for &i in &order {
        out[i].min = out[i].size;
        out[i].why = "not measured: the target fits without shrinking it".into();
    }
    let start = |x: &Minimum| {
        m.areas
            .iter()
            .find(|a| number_of(a) == Some(x.number))
            .map_or(0, |a| a.offset)
    };
    order.sort_by_key(|&i| std::cmp::Reverse(start(&out[i])));
    for i in order {
        if target.is_some_and(|disk| plan(image, m, disk, &out).is_ok()) {
            break;
        }
        let x = &mut out[i];
        let kind = x.fs.expect("a shrinkable partition has a filesystem");
        let a = m
            .areas
            .iter()
            .find(|a| number_of(a) == Some(x.number))
            .expect("lower_bounds lists areas");
        let path = match scratch.path(x.number) {
            Some(p) => p.to_path_buf(),
            None => scratch.stage(image, m, a, store)?,
        };
        let bs =
            a.fs.as_ref()
                .map_or(4096, |f| u64::from(f.block_size.max(1)));
        let (min, why) = tool_minimum(&path, kind, bs, a.len)
            .with_context(|| format!("finding how small {} can get", what(x.number, x.fs)))?;
        x.min = min.min(a.len);
        x.why = why;
    }
    Ok(out)
}

/// The filesystem tool's minimum for the `kind` filesystem in file `path` (`len` bytes).
fn tool_minimum(path: &Path, kind: FsKind, bs: u64, len: u64) -> anyhow::Result<(u64, String)> {
    match kind {
        FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 => {
            // resize2fs wants a freshly checked filesystem; 1 is "errors corrected".
            relayout::run(
                Command::new("e2fsck").args(["-f", "-y"]).arg(path),
                "e2fsprogs",
                &[0, 1],
            )?;
            let out = relayout::run_out(
                Command::new("resize2fs").arg("-P").arg(path),
                "e2fsprogs",
                &[0],
            )?;
            let blocks = number_after(&out, "minimum size of the filesystem:")
                .with_context(|| format!("resize2fs -P printed no minimum: {out}"))?;
            Ok((blocks * bs, "resize2fs -P".into()))
        }
        FsKind::Ntfs => {
            let out = relayout::run_out(
                Command::new("ntfsresize")
                    .args(["--info", "--force", "--no-progress-bar"])
                    .arg(path),
                "ntfs-3g",
                &[0],
            )?;
            let bytes = number_after(&out, "You might resize at")
                .with_context(|| format!("ntfsresize --info printed no minimum: {out}"))?;
            Ok((bytes, "ntfsresize --info".into()))
        }
        FsKind::Btrfs => {
            let mounted = crate::mount::Mounted::new(path, 0, len, "btrfs")?;
            let out = relayout::run_out(
                Command::new("btrfs")
                    .args(["inspect-internal", "min-dev-size"])
                    .arg(mounted.dir()),
                "btrfs-progs",
                &[0],
            );
            mounted.unmount()?;
            let out = out?;
            let bytes = number_after(&out, "")
                .with_context(|| format!("btrfs inspect-internal printed no size: {out}"))?;
            // The kernel refuses to resize a btrfs device below 256 MiB.
            const BTRFS_FLOOR: u64 = 256 << 20;
            if bytes < BTRFS_FLOOR {
                return Ok((
                    BTRFS_FLOOR,
                    "the kernel does not resize btrfs below 256 MiB".into(),
                ));
            }
            Ok((bytes, "btrfs inspect-internal min-dev-size".into()))
        }
        FsKind::Fat16 | FsKind::Fat32 => {
            let dev = FileDevice::open_read(path)?;
            Ok((
                crate::fat_resize::min_size(&dev)?,
                "its used clusters, and a FAT16 keeps 4085 at least, a FAT32 65525".into(),
            ))
        }
        other => bail!("drover does not shrink {other}"),
    }
}

/// The number following `label` in `text` (the first number when `label` is empty).
fn number_after(text: &str, label: &str) -> Option<u64> {
    let rest = if label.is_empty() {
        text
    } else {
        &text[text.find(label)? + label.len()..]
    };
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Shrinks the `kind` filesystem in file `path` to `size` bytes, then cuts the file there.
fn shrink_fs(path: &Path, kind: FsKind, bs: u64, size: u64) -> anyhow::Result<()> {
    match kind {
        FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 => {
            relayout::run(
                Command::new("resize2fs")
                    .arg(path)
                    .arg((size / bs).to_string()),
                "e2fsprogs",
                &[0],
            )?;
            cut(path, size)
        }
        FsKind::Ntfs => {
            relayout::run(
                Command::new("ntfsresize")
                    .args(["--force", "--force", "--no-progress-bar", "--size"])
                    .arg(size.to_string())
                    .arg(path),
                "ntfs-3g",
                &[0],
            )?;
            cut(path, size)?;
            // ntfsresize leaves the volume marked for a check and its alternate boot sector
            // where the old end was: ntfsfix writes it at the new end and clears the mark.
            relayout::run(Command::new("ntfsfix").arg("-d").arg(path), "ntfs-3g", &[0])
        }
        FsKind::Btrfs => {
            let len = std::fs::metadata(path)?.len();
            let mounted = crate::mount::Mounted::new_writable(path, 0, len, "btrfs")?;
            let r = relayout::run(
                Command::new("btrfs")
                    .args(["filesystem", "resize"])
                    .arg(size.to_string())
                    .arg(mounted.dir()),
                "btrfs-progs",
                &[0],
            );
            mounted.unmount()?;
            r?;
            cut(path, size)
        }
        FsKind::Fat16 | FsKind::Fat32 => {
            let dev = FileDevice::open_write(path)?;
            crate::fat_resize::shrink(&dev, size)?;
            cut(path, size)
        }
        other => bail!("drover does not shrink {other}"),
    }
}

fn cut(path: &Path, size: u64) -> anyhow::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(size))
        .with_context(|| format!("cutting {} to {size} bytes", path.display()))
}

/// What [`restore_shrunk`] did.
#[derive(Debug, Clone, Default)]
pub struct Shrunk {
    /// Bytes written to the target (each read back).
    pub bytes_written: u64,
    /// What changed, a line each.
    pub changes: Vec<String>,
}

/// Restores image `m` (named `image`) from `store` onto `devs`, targets of one size smaller
/// than its disk, on layout `r` from [`plan`]: each filesystem is shrunk once, and every chunk
/// read once, for all of them. `scratch` holds what [`minimums`] staged (each staged file is
/// used up: another call stages it again). Every byte written is read back.
pub fn restore_shrunk(
    image: &str,
    m: &Manifest,
    store: &Store,
    devs: &[&dyn BlockDevice],
    r: &Relayout,
    scratch: &mut Scratch,
    progress: &dyn Progress,
) -> anyhow::Result<Shrunk> {
    let mut done = r.notes.clone();
    let shrinking: Vec<&Placed> = r.parts.iter().filter(|p| p.new_size < p.size).collect();
    // The partitions that keep their size come from the store, at their new places. Bytes
    // outside every partition past the first one that changes lay between partitions as
    // captured (never a table: those are rewritten below) and are left out.
    let first_change = r
        .parts
        .iter()
        .filter(|p| p.new_size != p.size || p.new_start != p.start)
        .map(|p| p.new_start)
        .min()
        .unwrap_or(r.disk_size);
    let mut rest = m.clone();
    rest.min_size = 0;
    // The table is written for the target below, once: the restore itself must not relocate
    // the image's GPT onto a disk its partitions do not fit as captured.
    rest.table.kind = TableKind::None;
    rest.areas
        .retain(|a| number_of(a).is_none_or(|n| !shrinking.iter().any(|p| p.number == n)));
    for a in &mut rest.areas {
        match number_of(a) {
            None => {
                let mut kept = crate::extent::ExtentMap::new();
                for e in a.used.clip(0, first_change.min(r.disk_size)) {
                    kept.push(e.start, e.len);
                }
                a.used = kept;
                let used = &a.used;
                a.chunks.retain(|c| {
                    let rs = c.index * m.chunk_size;
                    used.intersects(rs, rs + m.chunk_size)
                });
            }
            Some(n) => {
                if let Some(p) = r.parts.iter().find(|p| p.number == n) {
                    a.offset = p.new_start;
                }
            }
        }
    }
    // Every filesystem is shrunk in its scratch file before the target is touched: a tool
    // that fails leaves the target as it was.
    let mut shrunk = Vec::new();
    for p in &shrinking {
        let kind = p.fs.context("a shrinking partition has a filesystem")?;
        let a = m
            .areas
            .iter()
            .find(|a| number_of(a) == Some(p.number))
            .context("a shrinking partition has an area")?;
        let path = match scratch.path(p.number) {
            Some(path) => path.to_path_buf(),
            None => scratch.stage(image, m, a, store)?,
        };
        let bs =
            a.fs.as_ref()
                .map_or(4096, |f| u64::from(f.block_size.max(1)));
        progress.note(&format!("shrinking {}", what(p.number, p.fs)));
        shrink_fs(&path, kind, bs, p.new_size).with_context(|| {
            format!("shrinking {} to {} bytes", what(p.number, p.fs), p.new_size)
        })?;
        shrunk.push((p, path));
    }
    let on = |i: usize| format!("target {} of {}", i + 1, devs.len());
    let restored =
        restore::restore_to_all(image, &rest, store, devs, scratch.threads, true, progress)
            .map_err(|e| match e {
                restore::RestoreError::OnTarget { target, source } => {
                    anyhow::Error::from(*source).context(on(target - 1))
                }
                e => anyhow::Error::from(e),
            })?;
    let mut bytes_written = restored[0].bytes_written;
    for (p, path) in shrunk {
        let mut n = 0;
        for (i, dev) in devs.iter().enumerate() {
            n = copy_used(&path, *dev, p.new_start, m.chunk_size).with_context(|| {
                format!("writing the shrunk {} to {}", what(p.number, p.fs), on(i))
            })?;
        }
        scratch.staged.retain(|(n, _)| *n != p.number);
        std::fs::remove_file(&path).ok();
        bytes_written += n;
        done.push(format!(
            "{} shrunk from {} to {} bytes ({} written, read back)",
            what(p.number, p.fs),
            p.size,
            p.new_size,
            n
        ));
    }
    for p in r.parts.iter().filter(|p| p.moves()) {
        for dev in devs {
            relayout::fix_hidden_sectors(*dev, p, u64::from(m.table.sector_size))?;
        }
        done.push(format!(
            "{} moved from byte {} to {}",
            what(p.number, p.fs),
            p.start,
            p.new_start
        ));
    }
    for (i, dev) in devs.iter().enumerate() {
        relayout::rewrite_table(*dev, m, r).with_context(|| on(i))?;
        dev.sync().with_context(|| format!("syncing {}", on(i)))?;
    }
    Ok(Shrunk {
        bytes_written,
        changes: done,
    })
}

/// Copies the used blocks of the filesystem in file `path` (as drover's readers find them,
/// plus the zeros its partition's tail holds) to `dev` at `at`, reading each piece back;
/// returns the bytes written.
fn copy_used(path: &Path, dev: &dyn BlockDevice, at: u64, chunk: u64) -> anyhow::Result<u64> {
    let src = FileDevice::open_read(path)?;
    let scan = fs::scan(&src, chunk)?;
    let area = Area {
        kind: AreaKind::Whole,
        offset: 0,
        len: src.len(),
        fs: Some(FsInfo {
            kind: scan.report.kind,
            detected: scan.detected,
            block_size: scan.report.block_size,
            fs_size: scan.report.fs_size,
            label: None,
            warning: None,
            volumes: scan.report.volumes.clone(),
        }),
        used: scan.report.used.clone(),
        chunks: Vec::new(),
    };
    const STEP: u64 = 4 << 20;
    let mut buf = vec![0u8; STEP as usize];
    let mut back = vec![0u8; STEP as usize];
    let mut written = 0;
    for e in area.used.iter() {
        let mut pos = e.start;
        while pos < e.end() {
            let n = (e.end() - pos).min(STEP) as usize;
            src.read_at(&mut buf[..n], pos)?;
            dev.write_at(&buf[..n], at + pos)?;
            dev.read_at(&mut back[..n], at + pos)?;
            if buf[..n] != back[..n] {
                bail!(
                    "byte range {}..{} reads back wrong",
                    at + pos,
                    at + pos + n as u64
                );
            }
            pos += n as u64;
            written += n as u64;
        }
    }
    for e in area.zero_fill().iter() {
        dev.write_zeroes(at + e.start, e.len)?;
        written += e.len;
    }
    Ok(written)
}
