//! Growing a FAT32, and shrinking a FAT16 or FAT32, in place.
//!
//! No tool in Debian does this reliably (fatresize goes through libparted, which refuses small
//! FAT32 volumes and miscounts `max` on image files), so drover does it itself.
//!
//! **Growing** ([`grow`]): more clusters need a larger FAT, and the data area begins right
//! after the FATs: when the FAT grows, every used cluster (as the FAT says) moves up by the
//! FATs' growth, the highest first so that an overlap never reads what it wrote. Then the FATs
//! are written at their new size (the old entries, the new ones free), the boot sector and its
//! backup get the new size, and FSInfo its exact free count. Cluster numbers do not change, so
//! no directory entry does.
//!
//! **Shrinking** ([`shrink`], down to [`min_size`]): the FAT keeps its size (a little of it is
//! then unused) and every used cluster past the new end is copied into a free one below it;
//! the FAT's chains, every directory entry (`.` and `..` included) and the root cluster in the
//! boot sector are renumbered to match, by walking the whole directory tree (a FAT16's from its
//! fixed root directory). A FAT32 keeps at least 65525 clusters and a FAT16 4085 (fewer would
//! make them another FAT by definition).
//!
//! FAT12 volumes keep their size, and a FAT16 does not grow (past 65524 clusters it would be
//! a FAT32, and its fixed root directory sits between the FATs and the data). The filesystem
//! is inconsistent while its clusters move; a restore that fails there is simply run again
//! (shrinking happens in a scratch file).

use std::collections::{HashMap, HashSet, VecDeque};

use anyhow::{bail, Context};

use crate::device::{read_vec, BlockDevice};
use crate::fs::{le16, le32};

/// The most clusters a FAT32 may have (entries are 28 bits; the top values are reserved).
const MAX_CLUSTERS: u64 = 0x0FFF_FFF5;
/// The largest FAT held in memory while it grows.
const MAX_FAT_BYTES: u64 = 512 << 20;
/// Bytes moved at a time.
const STEP: u64 = 4 << 20;
/// The fewest clusters of a FAT32.
const MIN_CLUSTERS: u64 = 65525;
/// The fewest and most clusters of a FAT16.
const MIN_CLUSTERS_16: u64 = 4085;
const MAX_CLUSTERS_16: u64 = 65524;

/// The width of a FAT's entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Width {
    Fat16,
    Fat32,
}

impl Width {
    /// Entry values that point at a next cluster (above: bad, reserved or end of chain).
    fn last_pointer(self) -> u32 {
        match self {
            Self::Fat16 => 0xFFEF,
            Self::Fat32 => 0x0FFF_FFEF,
        }
    }

    fn min_clusters(self) -> u64 {
        match self {
            Self::Fat16 => MIN_CLUSTERS_16,
            Self::Fat32 => MIN_CLUSTERS,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Fat16 => "FAT16",
            Self::Fat32 => "FAT32",
        }
    }

    /// Entry `c` of `fat`.
    fn get(self, fat: &[u8], c: u64) -> u32 {
        match self {
            Self::Fat16 => u32::from(le16(fat, (c * 2) as usize)),
            Self::Fat32 => le32(fat, (c * 4) as usize) & 0x0FFF_FFFF,
        }
    }

    /// Sets entry `c` of `fat` to `v` (a FAT32 entry's reserved top bits kept).
    fn put(self, fat: &mut [u8], c: u64, v: u32) {
        match self {
            Self::Fat16 => {
                let o = (c * 2) as usize;
                fat[o..o + 2].copy_from_slice(&(v as u16).to_le_bytes());
            }
            Self::Fat32 => {
                let o = (c * 4) as usize;
                let top = le32(fat, o) & 0xF000_0000;
                fat[o..o + 4].copy_from_slice(&(top | v).to_le_bytes());
            }
        }
    }
}

/// What a FAT16's or FAT32's size fields say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    width: Width,
    bps: u64,
    spc: u64,
    reserved: u64,
    fats: u64,
    fat_sectors: u64,
    /// A FAT16's fixed root directory (0 for a FAT32).
    root_sectors: u64,
    total_sectors: u64,
    clusters: u64,
}

impl Geometry {
    fn root_start(&self) -> u64 {
        self.reserved + self.fats * self.fat_sectors
    }

    fn data_start(&self) -> u64 {
        self.root_start() + self.root_sectors
    }

    fn read(b: &[u8]) -> anyhow::Result<Self> {
        let bps = u64::from(le16(b, 0x0B));
        let spc = u64::from(b[0x0D]);
        let reserved = u64::from(le16(b, 0x0E));
        let fats = u64::from(b[0x10]);
        let (root_entries, total16, fat16) = (le16(b, 0x11), le16(b, 0x13), le16(b, 0x16));
        if !(512..=4096).contains(&bps) || !bps.is_power_of_two() {
            bail!("FAT: {bps} bytes per sector");
        }
        if spc == 0 || !spc.is_power_of_two() || reserved == 0 || !(1..=4).contains(&fats) {
            bail!("FAT: cluster size, reserved sectors or FAT count out of range");
        }
        let g = if fat16 == 0 {
            let fat_sectors = u64::from(le32(b, 0x24));
            if root_entries != 0 || total16 != 0 || fat_sectors == 0 {
                bail!("FAT32: its FAT12/16 fields are set");
            }
            Self {
                width: Width::Fat32,
                bps,
                spc,
                reserved,
                fats,
                fat_sectors,
                root_sectors: 0,
                total_sectors: u64::from(le32(b, 0x20)),
                clusters: 0,
            }
        } else {
            Self {
                width: Width::Fat16,
                bps,
                spc,
                reserved,
                fats,
                fat_sectors: u64::from(fat16),
                root_sectors: (u64::from(root_entries) * 32).div_ceil(bps),
                total_sectors: match total16 {
                    0 => u64::from(le32(b, 0x20)),
                    n => u64::from(n),
                },
                clusters: 0,
            }
        };
        let name = g.width.name();
        let data = g.data_start();
        if data >= g.total_sectors {
            bail!("{name}: its data area starts past its end");
        }
        let clusters = (g.total_sectors - data) / spc;
        if g.width == Width::Fat16 && clusters < MIN_CLUSTERS_16 {
            bail!("a FAT12 keeps its size");
        }
        let (entry, max) = match g.width {
            Width::Fat16 => (2, MAX_CLUSTERS_16),
            Width::Fat32 => (4, MAX_CLUSTERS),
        };
        if clusters < g.width.min_clusters()
            || clusters > max
            || (clusters + 2) * entry > g.fat_sectors * bps
        {
            bail!(
                "{name}: {clusters} clusters do not match a FAT of {} sectors",
                g.fat_sectors
            );
        }
        Ok(Self { clusters, ..g })
    }

    /// The geometry on `sectors` sectors: the smallest FAT (never smaller than it was) that
    /// describes every cluster that fits after it.
    fn grown(&self, sectors: u64) -> Self {
        let sectors = sectors.min(u64::from(u32::MAX));
        let at = |fat: u64| -> Self {
            let g = Self {
                fat_sectors: fat,
                ..*self
            };
            let clusters = (sectors.saturating_sub(g.data_start()) / self.spc).min(MAX_CLUSTERS);
            // At the cluster limit the volume ends after its last cluster.
            let total = if clusters == MAX_CLUSTERS {
                g.data_start() + clusters * self.spc
            } else {
                sectors
            };
            Self {
                clusters,
                total_sectors: total,
                ..g
            }
        };
        let fits = |fat: u64| ((at(fat).clusters + 2) * 4).div_ceil(self.bps) <= fat;
        // More FAT leaves fewer clusters, so `fits` turns true once and stays: the first
        // such size, between the old FAT and one large enough for every sector.
        let (mut lo, mut hi) = (
            self.fat_sectors,
            self.fat_sectors.max(((sectors + 2) * 4).div_ceil(self.bps)),
        );
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if fits(mid) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        at(lo)
    }
}

/// Grows the FAT32 that starts at byte 0 of `dev` to fill `dev`; returns its new size in
/// bytes. A volume that already fills it is left as it is.
pub(crate) fn grow(dev: &dyn BlockDevice) -> anyhow::Result<u64> {
    let mut boot = read_vec(dev, 0, 512)?;
    let old = Geometry::read(&boot)?;
    if old.width == Width::Fat16 {
        bail!("a FAT16 keeps its size when its partition grows");
    }
    let bps = old.bps;
    if bps != 512 {
        boot = read_vec(dev, 0, bps as usize)?;
    }
    let new = old.grown(dev.len() / bps);
    if new.clusters <= old.clusters {
        return Ok(old.total_sectors * bps);
    }
    let fat_bytes = old.fat_sectors * bps;
    if new.fat_sectors * bps > MAX_FAT_BYTES {
        bail!(
            "FAT32: a FAT of {} bytes is more than drover grows in memory",
            new.fat_sectors * bps
        );
    }
    let mut fat = read_vec(dev, old.reserved * bps, fat_bytes as usize)?;
    let entry = |fat: &[u8], c: u64| le32(fat, (c * 4) as usize) & 0x0FFF_FFFF;
    let cluster = old.spc * bps;
    let shift = (new.data_start() - old.data_start()) * bps;
    if shift > 0 {
        // Runs of used clusters, moved up from the highest down.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for c in 2..old.clusters + 2 {
            if entry(&fat, c) == 0 {
                continue;
            }
            match runs.last_mut() {
                Some((_, end)) if *end == c => *end = c + 1,
                _ => runs.push((c, c + 1)),
            }
        }
        let at = |c: u64| old.data_start() * bps + (c - 2) * cluster;
        let mut buf = vec![0u8; STEP as usize];
        for &(first, end) in runs.iter().rev() {
            let (lo, mut hi) = (at(first), at(end));
            while hi > lo {
                let from = hi.saturating_sub(STEP).max(lo);
                let n = (hi - from) as usize;
                dev.read_at(&mut buf[..n], from)
                    .with_context(|| format!("FAT32: reading bytes {from}..{hi}"))?;
                dev.write_at(&buf[..n], from + shift)
                    .with_context(|| format!("FAT32: moving bytes {from}..{hi}"))?;
                hi = from;
            }
        }
    }
    fat.resize((new.fat_sectors * bps) as usize, 0);
    for i in 0..new.fats {
        dev.write_at(&fat, (new.reserved + i * new.fat_sectors) * bps)
            .context("FAT32: writing its FAT")?;
    }
    let free = (2..new.clusters + 2)
        .filter(|&c| entry(&fat, c) == 0)
        .count() as u32;
    boot[0x20..0x24].copy_from_slice(&(new.total_sectors as u32).to_le_bytes());
    boot[0x24..0x28].copy_from_slice(&(new.fat_sectors as u32).to_le_bytes());
    write_boot(dev, &boot, new.reserved, free)?;
    Ok(new.total_sectors * bps)
}

/// A FAT16 or FAT32 read in full: its boot sector, geometry and first FAT.
struct Volume {
    boot: Vec<u8>,
    g: Geometry,
    fat: Vec<u8>,
}

impl Volume {
    fn read(dev: &dyn BlockDevice) -> anyhow::Result<Self> {
        let boot = read_vec(dev, 0, 512)?;
        let g = Geometry::read(&boot)?;
        let boot = read_vec(dev, 0, g.bps as usize)?;
        let fat_bytes = g.fat_sectors * g.bps;
        if fat_bytes > MAX_FAT_BYTES {
            bail!("FAT: a FAT of {fat_bytes} bytes is more than drover resizes in memory");
        }
        let fat = read_vec(dev, g.reserved * g.bps, fat_bytes as usize)?;
        Ok(Self { boot, g, fat })
    }

    fn entry(&self, c: u64) -> u32 {
        self.g.width.get(&self.fat, c)
    }

    fn used(&self) -> u64 {
        (2..self.g.clusters + 2)
            .filter(|&c| self.entry(c) != 0)
            .count() as u64
    }

    fn cluster_at(&self, c: u64) -> u64 {
        (self.g.data_start() + (c - 2) * self.g.spc) * self.g.bps
    }
}

/// The least size in bytes the FAT16 or FAT32 at byte 0 of `dev` can shrink to: its FATs,
/// reserved sectors (and a FAT16's root directory), then as many clusters as it uses (at
/// least 4085 for a FAT16, 65525 for a FAT32).
pub(crate) fn min_size(dev: &dyn BlockDevice) -> anyhow::Result<u64> {
    let v = Volume::read(dev)?;
    let least = v.used().max(v.g.width.min_clusters());
    Ok((v.g.data_start() + least * v.g.spc) * v.g.bps)
}

/// Shrinks the FAT16 or FAT32 at byte 0 of `dev` to `size` bytes (at least [`min_size`]);
/// the caller cuts the device. Returns the new size in bytes.
pub(crate) fn shrink(dev: &dyn BlockDevice, size: u64) -> anyhow::Result<u64> {
    let v = Volume::read(dev)?;
    let g = v.g;
    let (w, name) = (g.width, g.width.name());
    let last = w.last_pointer();
    let total = (size / g.bps).min(g.total_sectors);
    let clusters = total.saturating_sub(g.data_start()) / g.spc;
    let used = v.used();
    let least = used.max(w.min_clusters());
    if clusters < least {
        bail!("{name}: {size} bytes hold {clusters} clusters, and it needs {least}");
    }
    let end = clusters + 2;
    // Every used cluster past the new end gets a free one below it, in order.
    let mut free = (2..end).filter(|&c| v.entry(c) == 0);
    let mut remap: HashMap<u32, u32> = HashMap::new();
    for h in (end..g.clusters + 2).filter(|&c| v.entry(c) != 0) {
        let l = free
            .next()
            .with_context(|| format!("{name}: no free cluster left below the new end"))?;
        remap.insert(h as u32, l as u32);
    }
    let map = |c: u32| -> u32 { remap.get(&c).copied().unwrap_or(c) };
    let csize = (g.spc * g.bps) as usize;
    let mut buf = vec![0u8; csize];
    for (&h, &l) in &remap {
        dev.read_at(&mut buf, v.cluster_at(u64::from(h)))?;
        dev.write_at(&buf, v.cluster_at(u64::from(l)))
            .with_context(|| format!("{name}: moving cluster {h} to {l}"))?;
    }
    // The FAT renumbered: each entry at its cluster's new place, pointing at the next
    // cluster's new number; entries past the end free.
    let mut fat = v.fat.clone();
    for c in 2..g.clusters + 2 {
        w.put(&mut fat, c, 0);
    }
    for c in 2..g.clusters + 2 {
        let e = v.entry(c);
        if e == 0 || (c >= end && !remap.contains_key(&(c as u32))) {
            continue;
        }
        let e = if (2..=last).contains(&e) { map(e) } else { e };
        w.put(&mut fat, u64::from(map(c as u32)), e);
    }
    // Every directory entry, from the root down, renumbered: the entries of one directory
    // cluster (or a FAT16's root directory) in `buf`; returns whether any changed, and queues
    // the subdirectories.
    let fix = |buf: &mut [u8], todo: &mut VecDeque<u32>| -> bool {
        let mut changed = false;
        for o in (0..buf.len()).step_by(32) {
            let e = &mut buf[o..o + 32];
            if e[0] == 0 {
                break;
            }
            let attr = e[11];
            if e[0] == 0xE5 || attr & 0x3F == 0x0F || attr & 0x08 != 0 {
                continue;
            }
            let high = match w {
                Width::Fat32 => u32::from(le16(e, 0x14)) << 16,
                // A FAT16 entry's high word is not a cluster number's.
                Width::Fat16 => 0,
            };
            let fc = high | u32::from(le16(e, 0x1A));
            if fc == 0 {
                continue;
            }
            let nc = map(fc);
            if nc != fc {
                if w == Width::Fat32 {
                    e[0x14..0x16].copy_from_slice(&((nc >> 16) as u16).to_le_bytes());
                }
                e[0x1A..0x1C].copy_from_slice(&(nc as u16).to_le_bytes());
                changed = true;
            }
            let dot = e[0] == b'.' && (e[1] == b' ' || e[1] == b'.');
            if attr & 0x10 != 0 && !dot {
                todo.push_back(nc);
            }
        }
        changed
    };
    let next = |c: u32| w.get(&fat, u64::from(c));
    let mut todo = VecDeque::new();
    let root = match w {
        Width::Fat32 => {
            let r = map(le32(&v.boot, 0x2C));
            todo.push_back(r);
            r
        }
        Width::Fat16 => {
            let at = g.root_start() * g.bps;
            let mut dir = read_vec(dev, at, (g.root_sectors * g.bps) as usize)?;
            if fix(&mut dir, &mut todo) {
                dev.write_at(&dir, at)
                    .context("FAT16: writing its root directory")?;
            }
            0
        }
    };
    let mut seen = HashSet::new();
    while let Some(first) = todo.pop_front() {
        if !seen.insert(first) {
            continue;
        }
        let mut c = first;
        let mut steps = 0u64;
        while (2..=last).contains(&c) && u64::from(c) < end {
            steps += 1;
            if steps > clusters {
                bail!("{name}: the directory at cluster {first} loops");
            }
            let at = v.cluster_at(u64::from(c));
            dev.read_at(&mut buf, at)?;
            if fix(&mut buf, &mut todo) {
                dev.write_at(&buf, at)
                    .with_context(|| format!("{name}: writing the directory at cluster {c}"))?;
            }
            c = next(c);
        }
    }
    for i in 0..g.fats {
        dev.write_at(&fat, (g.reserved + i * g.fat_sectors) * g.bps)
            .with_context(|| format!("{name}: writing its FAT"))?;
    }
    let mut boot = v.boot.clone();
    match w {
        Width::Fat32 => {
            let free = (2..end).filter(|&c| next(c as u32) == 0).count() as u32;
            boot[0x20..0x24].copy_from_slice(&(total as u32).to_le_bytes());
            boot[0x2C..0x30].copy_from_slice(&root.to_le_bytes());
            write_boot(dev, &boot, g.reserved, free)?;
        }
        Width::Fat16 => {
            // The total in whichever field held it (a smaller total fits the same one).
            if le16(&boot, 0x13) != 0 {
                boot[0x13..0x15].copy_from_slice(&(total as u16).to_le_bytes());
            } else {
                boot[0x20..0x24].copy_from_slice(&(total as u32).to_le_bytes());
            }
            dev.write_at(&boot, 0)
                .context("FAT16: writing its boot sector")?;
            dev.sync().context("FAT16: syncing")?;
        }
    }
    Ok(total * g.bps)
}

/// Writes boot sector `boot` at sector 0 and its backup, and `free` into both FSInfo sectors.
fn write_boot(dev: &dyn BlockDevice, boot: &[u8], reserved: u64, free: u32) -> anyhow::Result<()> {
    let bps = u64::from(le16(boot, 0x0B));
    let fsinfo = u64::from(le16(boot, 0x30));
    let backup = u64::from(le16(boot, 0x32));
    dev.write_at(boot, 0)
        .context("FAT32: writing its boot sector")?;
    let mut infos = vec![fsinfo];
    if backup != 0 && backup != 0xFFFF && backup < reserved {
        dev.write_at(boot, backup * bps)
            .context("FAT32: writing its backup boot sector")?;
        infos.push(backup + fsinfo);
    }
    for s in infos.into_iter().filter(|&s| s != 0 && s < reserved) {
        let mut info = read_vec(dev, s * bps, 512)?;
        if le32(&info, 0) == 0x4161_5252 && le32(&info, 484) == 0x6141_7272 {
            info[488..492].copy_from_slice(&free.to_le_bytes());
            // The next-free hint: unknown, so drivers search from the start.
            info[492..496].copy_from_slice(&u32::MAX.to_le_bytes());
            dev.write_at(&info, s * bps)
                .context("FAT32: writing its FSInfo sector")?;
        }
    }
    dev.sync().context("FAT32: syncing")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(total: u64, fat: u64) -> Geometry {
        Geometry {
            width: Width::Fat32,
            bps: 512,
            spc: 1,
            reserved: 32,
            fats: 2,
            fat_sectors: fat,
            root_sectors: 0,
            total_sectors: total,
            clusters: total - 32 - 2 * fat,
        }
    }

    #[test]
    fn a_grown_fat_describes_every_cluster_and_wastes_little() {
        let old = geometry(131072, 1016);
        for sectors in [
            131072 + 1,
            262144,
            1 << 24,
            1 << 30,
            u64::from(u32::MAX) * 2,
        ] {
            let g = old.grown(sectors);
            assert!(g.fat_sectors >= old.fat_sectors);
            assert!((g.clusters + 2) * 4 <= g.fat_sectors * g.bps, "{g:?}");
            assert!(
                g.data_start() + g.clusters * g.spc <= g.total_sectors,
                "{g:?}"
            );
            assert!(g.total_sectors <= sectors.min(u64::from(u32::MAX)), "{g:?}");
            assert!(g.clusters <= MAX_CLUSTERS);
            // One sector less of FAT would not describe the clusters it would leave.
            if g.fat_sectors > old.fat_sectors {
                let smaller = g.fat_sectors - 1;
                let clusters = ((sectors.min(u64::from(u32::MAX)) - 32 - 2 * smaller) / g.spc)
                    .min(MAX_CLUSTERS);
                assert!((clusters + 2) * 4 > smaller * 512, "{g:?}");
            }
        }
        assert_eq!(old.grown(131072).clusters, old.clusters);
    }
}
