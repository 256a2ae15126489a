//! Fitting an image's partition layout to a larger target disk, after its chunks are written:
//! the last partition (or, in proportion, every partition) grows into the extra space, the
//! partition table is rewritten for it, and the filesystems grow to fill their partitions with
//! their own tools (resize2fs, ntfsresize, xfs_growfs, `btrfs filesystem resize`), FAT32 by
//! drover itself ([`crate::fat_resize`]).
//!
//! Restore itself never moves a byte: every area lands where it was captured, so multicast,
//! the swarm and unicast fill the disk the same way whatever its size. A layout that moves
//! partitions (proportional) moves them here, from the last to the first, copying only what the
//! image wrote (used extents and zero-filled stretches), then reads every moved chunk back
//! against its hash. Filesystems this module cannot grow (FAT12/16, raw copies, LVM, LUKS, ...)
//! keep their size, and their partitions too, and [`Relayout::notes`] says so.
//!
//! It does not shrink: a target smaller than the image's disk goes through [`crate::shrink`].

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::device::{read_vec, BlockDevice, FileDevice};
use crate::fs::{self, FsKind};
use crate::manifest::{Area, AreaKind, Manifest};
use crate::table::{self, TableKind};

/// How partitions use a target larger than the image's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayoutMode {
    /// The last partition grows to the disk's end, with its filesystem (the default).
    #[default]
    Grow,
    /// The layout stays as captured; the extra space is left unpartitioned.
    Keep,
    /// Every partition's start and size scale with the disk (Clonezilla's `-k1`).
    Proportional,
}

impl LayoutMode {
    /// The name used on command lines and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grow => "grow",
            Self::Keep => "keep",
            Self::Proportional => "proportional",
        }
    }
}

impl std::fmt::Display for LayoutMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LayoutMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "grow" => Ok(Self::Grow),
            "keep" => Ok(Self::Keep),
            "proportional" => Ok(Self::Proportional),
            _ => Err(format!(
                "unknown layout {s:?}: expected grow, keep or proportional"
            )),
        }
    }
}

/// Where one partition (or, for an image without a table, the whole filesystem) goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placed {
    /// The partition's number (0: the whole device of an image without a table).
    pub number: u32,
    /// The filesystem read in it, if any.
    pub fs: Option<FsKind>,
    /// Where it was captured: first byte and length.
    pub start: u64,
    /// Its length as captured.
    pub size: u64,
    /// Its first byte on the target.
    pub new_start: u64,
    /// Its length on the target.
    pub new_size: u64,
}

impl Placed {
    /// Whether its bytes move.
    pub fn moves(&self) -> bool {
        self.new_start != self.start
    }

    /// Whether it grows.
    pub fn grows(&self) -> bool {
        self.new_size > self.size
    }
}

/// A target's layout: where every partition goes, and what keeps its size and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Relayout {
    /// The mode it was planned with.
    pub mode: LayoutMode,
    /// The target's size.
    pub disk_size: u64,
    /// Every partition, by start.
    pub parts: Vec<Placed>,
    /// What keeps its size and why, a line each.
    pub notes: Vec<String>,
}

impl Relayout {
    /// Whether nothing changes: the layout is the captured one.
    pub fn is_identity(&self) -> bool {
        self.parts.iter().all(|p| !p.moves() && !p.grows())
    }

    /// Image `m` as the target holds it once this layout is applied: its partitions and
    /// their areas where they now lie, with their new sizes (the chunks as they were). What
    /// looks at the restored disk afterwards (personalization) reads this.
    pub fn placed(&self, m: &Manifest) -> Manifest {
        let mut out = m.clone();
        out.disk_size = self.disk_size;
        for p in &self.parts {
            for t in out
                .table
                .partitions
                .iter_mut()
                .filter(|t| t.number == p.number)
            {
                t.start = p.new_start;
                t.size = p.new_size;
            }
            for a in &mut out.areas {
                let hit = match a.kind {
                    AreaKind::Partition { number } => number == p.number,
                    AreaKind::Whole => p.number == 0,
                    AreaKind::Outside => false,
                };
                if hit {
                    a.offset = p.new_start;
                    a.len = p.new_size;
                    if let Some(f) = a.fs.as_mut().filter(|_| p.new_size != p.size) {
                        f.fs_size = p.new_size;
                    }
                }
            }
        }
        out
    }
}

/// Why a layout cannot be planned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// The layout would move a logical partition, whose EBR chain this module does not move.
    #[error("--layout proportional would move logical partition {0} of the MBR's extended partition, which drover does not relocate: use --layout grow or keep")]
    MovesLogical(u32),
    /// The planned partitions do not fit the disk (a bug, or a disk far too small).
    #[error(
        "partition {number} would end at byte {end}, past the usable end of the {disk}-byte target"
    )]
    DoesNotFit {
        /// The partition.
        number: u32,
        /// Where it would end.
        end: u64,
        /// The target's size.
        disk: u64,
    },
}

/// The filesystems this module grows, and the tool each needs.
fn grow_tool(kind: FsKind) -> Option<&'static str> {
    match kind {
        FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 => Some("resize2fs"),
        FsKind::Ntfs => Some("ntfsresize"),
        FsKind::Xfs => Some("xfs_growfs"),
        FsKind::Btrfs => Some("btrfs"),
        // Grown by drover itself (crate::fat_resize).
        FsKind::Fat32 => Some("drover"),
        _ => None,
    }
}

/// The filesystem read through its allocation data in `a`, if any.
pub(crate) fn read_fs(a: &Area) -> Option<FsKind> {
    a.fs.as_ref()
        .map(|f| f.kind)
        .filter(|&k| k != FsKind::Unknown)
}

/// Every partition of `m` (or its one filesystem without a table) where it was captured, by
/// start: the identity layout each plan starts from.
pub(crate) fn as_captured(m: &Manifest) -> Vec<Placed> {
    let mut parts: Vec<Placed> = m
        .areas
        .iter()
        .filter_map(|a| {
            let number = match a.kind {
                AreaKind::Partition { number } => number,
                AreaKind::Whole => 0,
                AreaKind::Outside => return None,
            };
            Some(Placed {
                number,
                fs: read_fs(a),
                start: a.offset,
                size: a.len,
                new_start: a.offset,
                new_size: a.len,
            })
        })
        .collect();
    parts.sort_by_key(|p| p.start);
    parts
}

/// Plans the layout of image `m` on a target of `disk` bytes. A target no larger than the
/// image's disk, [`LayoutMode::Keep`], or an image without a partition to grow gives the
/// captured layout.
pub fn plan(m: &Manifest, disk: u64, mode: LayoutMode) -> Result<Relayout, LayoutError> {
    let ss = u64::from(m.table.sector_size);
    let align = (1u64 << 20).max(ss);
    let mut notes = Vec::new();
    let mut parts = as_captured(m);
    let grows = disk > m.disk_size && mode != LayoutMode::Keep;
    if !grows || parts.is_empty() {
        return Ok(Relayout {
            mode,
            disk_size: disk,
            parts,
            notes,
        });
    }
    // The end partitions may reach: before the GPT backup, within what an MBR can address.
    let usable_end = |size: u64| -> u64 {
        match m.table.kind {
            TableKind::Gpt => size - m.table.gpt_backup.map_or(0, |(_, l)| l),
            TableKind::Mbr => size.min(u64::from(u32::MAX) * ss),
            TableKind::None => size,
        }
    };
    // Partitions end on the alignment too (as parted ends them), wasting less than one unit.
    let (old_end, hard_end) = (usable_end(m.disk_size), usable_end(disk));
    // A filesystem without a table fills its whole device.
    let new_end = if m.table.kind == TableKind::None {
        hard_end
    } else {
        hard_end / align * align
    };
    let keeps = |p: &Placed, notes: &mut Vec<String>| -> bool {
        if p.fs.and_then(grow_tool).is_some() {
            return false;
        }
        let what = match p.fs {
            Some(k) => format!("its {k} filesystem"),
            None => "it is a raw copy, whose contents".into(),
        };
        notes.push(format!(
            "{} keeps its size: {what} cannot be grown by drover",
            name(p.number)
        ));
        true
    };
    match mode {
        LayoutMode::Keep => {}
        LayoutMode::Grow => {
            let last = parts.last_mut().expect("not empty");
            if !keeps(last, &mut notes) && new_end > last.start + last.size {
                last.new_size = new_end - last.start;
            }
        }
        LayoutMode::Proportional => {
            let first = parts[0].start;
            let scale = |x: u64| -> u64 {
                first
                    + ((u128::from(x - first) * u128::from(new_end - first))
                        / u128::from(old_end - first)) as u64
            };
            let mut prev_end = first;
            let n = parts.len();
            for (i, p) in parts.iter_mut().enumerate() {
                let start = scale(p.start).next_multiple_of(align).max(prev_end);
                let start = if i == 0 { p.start } else { start };
                if start != p.start && m.table.kind == TableKind::Mbr && p.number >= 5 {
                    return Err(LayoutError::MovesLogical(p.number));
                }
                p.new_start = start;
                let end = if i + 1 == n {
                    new_end
                } else {
                    scale(p.start + p.size) / align * align
                };
                if !keeps(p, &mut notes) && end > start + p.size {
                    p.new_size = end - start;
                }
                prev_end = p.new_start + p.new_size;
            }
        }
    }
    for p in &parts {
        if p.new_start + p.new_size > hard_end {
            return Err(LayoutError::DoesNotFit {
                number: p.number,
                end: p.new_start + p.new_size,
                disk,
            });
        }
    }
    Ok(Relayout {
        mode,
        disk_size: disk,
        parts,
        notes,
    })
}

fn name(number: u32) -> String {
    if number == 0 {
        "the filesystem".into()
    } else {
        format!("partition {number}")
    }
}

/// Applies `r` to `target` (opened as `dev`), onto which image `m` was just restored: moves
/// partitions, rewrites the partition table, grows filesystems. Returns what it changed, a
/// line each (the notes of what kept its size first). Needs root for the loop devices and
/// mounts once a filesystem grows.
pub fn apply(
    target: &Path,
    dev: &dyn BlockDevice,
    m: &Manifest,
    r: &Relayout,
) -> anyhow::Result<Vec<String>> {
    let mut done = r.notes.clone();
    if r.is_identity() {
        return Ok(done);
    }
    let ss = u64::from(m.table.sector_size);
    // Moves go right (the disk is larger): the last partition first, so none overwrites one
    // not moved yet.
    for p in r.parts.iter().rev().filter(|p| p.moves()) {
        let a = area(m, p.number)?;
        move_area(dev, a, p.new_start).with_context(|| format!("moving {}", name(p.number)))?;
        let moved = Area {
            offset: p.new_start,
            ..a.clone()
        };
        for c in &a.chunks {
            if !crate::restore::check_written(m, &moved, c, dev)? {
                bail!(
                    "{}: chunk {} reads back wrong after the move",
                    name(p.number),
                    c.index
                );
            }
        }
        fix_hidden_sectors(dev, p, ss)?;
        done.push(format!(
            "{} moved from byte {} to {}",
            name(p.number),
            p.start,
            p.new_start
        ));
    }
    rewrite_table(dev, m, r)?;
    dev.sync().context("syncing the target")?;
    for p in r.parts.iter().filter(|p| p.grows()) {
        let kind = p.fs.context("a growing partition has a filesystem")?;
        grow(target, p.new_start, p.new_size, kind)
            .with_context(|| format!("growing {} ({kind})", name(p.number)))?;
        done.push(format!(
            "{} ({kind}) grown from {} to {} bytes",
            name(p.number),
            p.size,
            p.new_size
        ));
    }
    Ok(done)
}

/// Rewrites the partition table of image `m` on `dev` for layout `r`.
pub(crate) fn rewrite_table(
    dev: &dyn BlockDevice,
    m: &Manifest,
    r: &Relayout,
) -> anyhow::Result<()> {
    match m.table.kind {
        TableKind::Gpt => {
            let changes: Vec<_> = r
                .parts
                .iter()
                .map(|p| (p.number, p.new_start, p.new_size))
                .collect();
            table::rewrite_gpt(dev, &m.table_raw, m.table.sector_size, &changes)?;
        }
        TableKind::Mbr => rewrite_mbr(dev, m, r)?,
        TableKind::None => {}
    }
    Ok(())
}

fn area(m: &Manifest, number: u32) -> anyhow::Result<&Area> {
    m.areas
        .iter()
        .find(|a| match a.kind {
            AreaKind::Partition { number: n } => n == number,
            AreaKind::Whole => number == 0,
            AreaKind::Outside => false,
        })
        .with_context(|| format!("the image has no area for {}", name(number)))
}

/// Copies what a restore wrote of area `a` (its used extents and zero-filled stretches) to
/// `to`, which lies after it: from the end backwards, so an overlap never reads what it wrote.
fn move_area(dev: &dyn BlockDevice, a: &Area, to: u64) -> anyhow::Result<()> {
    const STEP: u64 = 4 << 20;
    let ranges = a.used.union(&a.zero_fill());
    let mut buf = vec![0u8; STEP as usize];
    for e in ranges.iter().collect::<Vec<_>>().into_iter().rev() {
        let mut end = e.end();
        while end > e.start {
            let start = end.saturating_sub(STEP).max(e.start);
            let b = &mut buf[..(end - start) as usize];
            dev.read_at(b, a.offset + start)?;
            dev.write_at(b, to + start)?;
            end = start;
        }
    }
    Ok(())
}

/// A moved FAT or NTFS keeps its partition's first sector in its boot sector ("hidden
/// sectors"), which Windows and some loaders use to find it: it is set to the new start where
/// it held the old one, in the backup boot sector too.
pub(crate) fn fix_hidden_sectors(dev: &dyn BlockDevice, p: &Placed, ss: u64) -> anyhow::Result<()> {
    let Some(kind) = p.fs else { return Ok(()) };
    let (old, new) = (p.start / ss, p.new_start / ss);
    let (Ok(old), Ok(new)) = (u32::try_from(old), u32::try_from(new)) else {
        return Ok(());
    };
    let mut sectors = vec![0u64];
    let boot = read_vec(dev, p.new_start, 512)?;
    match kind {
        FsKind::Ntfs => {
            // The backup boot sector follows the volume's last sector.
            let total = fs::le64(&boot, 0x28);
            if let Some(at) = total.checked_mul(u64::from(fs::le16(&boot, 0x0B))) {
                if at + 512 <= p.new_size {
                    sectors.push(at);
                }
            }
        }
        FsKind::Fat32 => {
            let backup = u64::from(fs::le16(&boot, 0x32));
            if backup != 0 {
                sectors.push(backup * u64::from(fs::le16(&boot, 0x0B)));
            }
        }
        FsKind::Fat12 | FsKind::Fat16 => {}
        _ => return Ok(()),
    }
    for at in sectors {
        let mut s = read_vec(dev, p.new_start + at, 512)?;
        if fs::le32(&s, 0x1C) == old {
            s[0x1C..0x20].copy_from_slice(&new.to_le_bytes());
            dev.write_at(&s, p.new_start + at)?;
        }
    }
    Ok(())
}

/// Rewrites the MBR entries (and, for a growing last logical partition, its EBR and the
/// extended partition) for the new layout.
fn rewrite_mbr(dev: &dyn BlockDevice, m: &Manifest, r: &Relayout) -> anyhow::Result<()> {
    let ss = u64::from(m.table.sector_size);
    let lba = |x: u64| -> anyhow::Result<[u8; 4]> {
        Ok(u32::try_from(x / ss)
            .context("an MBR partition past 2 TiB of sectors")?
            .to_le_bytes())
    };
    let mut s0 = read_vec(dev, 0, 512)?;
    let entry = |n: usize| 446 + 16 * n;
    let ext = (0..4).find(|&i| matches!(s0[entry(i) + 4], 0x05 | 0x0F | 0x85));
    for p in r.parts.iter().filter(|p| p.moves() || p.new_size != p.size) {
        if (1..=4).contains(&p.number) {
            let o = entry(p.number as usize - 1);
            s0[o + 8..o + 12].copy_from_slice(&lba(p.new_start)?);
            s0[o + 12..o + 16].copy_from_slice(&lba(p.new_size)?);
            continue;
        }
        // A logical partition (only the last one grows or shrinks; none moves): its EBR's
        // first entry, the previous EBR's link to it, and the extended partition all end at
        // its new end.
        let e = ext.context("a logical partition without an extended one")?;
        let ext_start = u64::from(fs::le32(&s0, entry(e) + 8));
        let (mut rel, mut prev) = (0u64, None);
        for _ in 5..p.number {
            let ebr = read_vec(dev, (ext_start + rel) * ss, 512)?;
            prev = Some(rel);
            rel = u64::from(fs::le32(&ebr, entry(1) + 8));
            if rel == 0 {
                bail!("the EBR chain ends before logical partition {}", p.number);
            }
        }
        let at = (ext_start + rel) * ss;
        let mut ebr = read_vec(dev, at, 512)?;
        ebr[entry(0) + 12..entry(0) + 16].copy_from_slice(&lba(p.new_size)?);
        dev.write_at(&ebr, at)?;
        let end = (p.new_start + p.new_size) / ss;
        if let Some(prev) = prev {
            let pat = (ext_start + prev) * ss;
            let mut pe = read_vec(dev, pat, 512)?;
            pe[entry(1) + 12..entry(1) + 16].copy_from_slice(&lba((end - ext_start - rel) * ss)?);
            dev.write_at(&pe, pat)?;
        }
        s0[entry(e) + 12..entry(e) + 16].copy_from_slice(&lba((end - ext_start) * ss)?);
    }
    dev.write_at(&s0, 0)?;
    Ok(())
}

/// Runs a tool, naming it (and its Debian package) when it is missing or fails; `ok` lists the
/// exit codes that are success.
pub(crate) fn run(cmd: &mut Command, package: &str, ok: &[i32]) -> anyhow::Result<()> {
    run_out(cmd, package, ok).map(drop)
}

/// [`run`], returning what the tool printed on its standard output.
pub(crate) fn run_out(cmd: &mut Command, package: &str, ok: &[i32]) -> anyhow::Result<String> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out = match cmd.output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{tool} is not installed (Debian package {package})")
        }
        r => r.with_context(|| format!("running {tool}"))?,
    };
    if !out.status.code().is_some_and(|c| ok.contains(&c)) {
        let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let text = if text.is_empty() {
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        } else {
            text
        };
        let tail: Vec<&str> = text.lines().rev().take(4).collect();
        bail!(
            "{tool} failed ({}): {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("; ")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Grows the `kind` filesystem at `start..start + size` of `target` to fill that range.
fn grow(target: &Path, start: u64, size: u64, kind: FsKind) -> anyhow::Result<()> {
    match kind {
        FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 => {
            let (_dev, path) = crate::mount::attach(target, start, size)?;
            // resize2fs wants a freshly checked filesystem; 1 is "errors corrected".
            run(
                Command::new("e2fsck").args(["-f", "-y"]).arg(&path),
                "e2fsprogs",
                &[0, 1],
            )?;
            run(Command::new("resize2fs").arg(&path), "e2fsprogs", &[0])
        }
        FsKind::Ntfs => {
            let (_dev, path) = crate::mount::attach(target, start, size)?;
            run(
                Command::new("ntfsresize")
                    .args(["--force", "--force", "--no-progress-bar"])
                    .arg(&path),
                "ntfs-3g",
                &[0],
            )?;
            // ntfsresize marks the volume for a check at Windows' next boot; the volume is
            // consistent, so the mark is cleared (ntfsfix -n then finds nothing to do).
            run(
                Command::new("ntfsfix").arg("-d").arg(&path),
                "ntfs-3g",
                &[0],
            )
        }
        FsKind::Xfs | FsKind::Btrfs => {
            let fstype = if kind == FsKind::Xfs { "xfs" } else { "btrfs" };
            let mounted = crate::mount::Mounted::new_writable(target, start, size, fstype)?;
            let r = if kind == FsKind::Xfs {
                run(
                    Command::new("xfs_growfs").arg("-d").arg(mounted.dir()),
                    "xfsprogs",
                    &[0],
                )
            } else {
                run(
                    Command::new("btrfs")
                        .args(["filesystem", "resize", "max"])
                        .arg(mounted.dir()),
                    "btrfs-progs",
                    &[0],
                )
            };
            mounted.unmount()?;
            r
        }
        FsKind::Fat32 => {
            let dev = FileDevice::open_write(target)
                .with_context(|| format!("opening {}", target.display()))?;
            crate::fat_resize::grow(&crate::device::SubDevice::new(&dev, start, size)).map(drop)
        }
        other => bail!("drover cannot grow {other}"),
    }
}

#[cfg(test)]
#[path = "relayout_tests.rs"]
mod tests;
