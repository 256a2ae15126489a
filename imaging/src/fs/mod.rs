//! Used-block readers: which bytes of a filesystem hold data, read from its own allocation
//! structures.
//!
//! [`scan`] is the entry point: it recognises the filesystem by its signature, runs the matching
//! reader, and falls back to [`raw`] ("every region that is not all zeroes") with a warning when
//! the filesystem is unknown or its metadata does not hold together. A reader must never produce a
//! map that misses a used block: when in doubt it returns an error and the fallback takes over.
//!
//! Every map also covers the bytes no allocation structure describes: boot blocks and boot
//! regions (added by each reader) and whatever lies between the end of the filesystem and the end
//! of its partition (added here, zero-skipped), where NTFS keeps its backup boot sector.

mod apfs;
mod btrfs;
mod exfat;
mod ext;
mod f2fs;
mod fat;
mod hfsplus;
mod jfs;
mod known;
mod luks;
mod lvm;
mod minix;
mod nilfs2;
mod ntfs;
pub mod raw;
mod reiserfs;
mod swap;
#[cfg(test)]
pub(crate) mod test_support;
mod ufs;
mod xfs;

use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};

use crate::device::BlockDevice;
use crate::extent::ExtentMap;

/// A filesystem drover recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum FsKind {
    /// ext2 (no journal).
    Ext2,
    /// ext3 (journal, no ext4 features).
    Ext3,
    /// ext4.
    Ext4,
    /// FAT12.
    Fat12,
    /// FAT16.
    Fat16,
    /// FAT32.
    Fat32,
    /// exFAT.
    Exfat,
    /// NTFS.
    Ntfs,
    /// Linux swap (only its header is kept).
    Swap,
    /// XFS (v4 and v5).
    Xfs,
    /// btrfs (single device).
    Btrfs,
    /// minix (v1, v2 and v3).
    Minix,
    /// f2fs (single device).
    F2fs,
    /// HFS+ or HFSX.
    Hfsplus,
    /// APFS container (one device).
    Apfs,
    /// LVM2 physical volume (each logical volume read by its own filesystem's reader).
    Lvm2,
    /// LUKS1 or LUKS2 encrypted volume (with a key, its inner filesystem's used blocks as
    /// ciphertext; without one, a raw copy).
    Luks,
    /// BitLocker encrypted volume (recognised; stored as a raw copy).
    Bitlocker,
    /// JFS.
    Jfs,
    /// NILFS2.
    Nilfs2,
    /// reiserfs (formats 3.5 and 3.6).
    Reiserfs,
    /// UFS1 and UFS2 (the BSDs' FFS).
    Ufs,
    /// Not recognised: stored as every non-zero region.
    Unknown,
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::Ext2 => "ext2",
            Self::Ext3 => "ext3",
            Self::Ext4 => "ext4",
            Self::Fat12 => "fat12",
            Self::Fat16 => "fat16",
            Self::Fat32 => "fat32",
            Self::Exfat => "exfat",
            Self::Ntfs => "ntfs",
            Self::Swap => "swap",
            Self::Xfs => "xfs",
            Self::Btrfs => "btrfs",
            Self::Minix => "minix",
            Self::F2fs => "f2fs",
            Self::Hfsplus => "hfsplus",
            Self::Apfs => "apfs",
            Self::Lvm2 => "lvm2",
            Self::Luks => "luks",
            Self::Bitlocker => "bitlocker",
            Self::Jfs => "jfs",
            Self::Nilfs2 => "nilfs2",
            Self::Reiserfs => "reiserfs",
            Self::Ufs => "ufs",
            Self::Unknown => "unknown",
        };
        f.write_str(s)
    }
}

/// Why a reader could not produce a used-block map.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// Reading the device failed.
    #[error("read error")]
    Io(#[from] io::Error),
    /// The metadata contradicts itself or points outside the filesystem.
    #[error("{fs} metadata is inconsistent: {reason}")]
    Corrupt {
        /// The filesystem being read.
        fs: FsKind,
        /// What is wrong.
        reason: String,
    },
    /// An encrypted volume no given key opens: nothing inside can be read.
    #[error("{reason}")]
    Locked {
        /// Which volume, and what would open it.
        reason: String,
    },
    /// A feature this reader does not understand well enough to trust its bitmaps.
    #[error("{fs} feature not supported: {feature}")]
    Unsupported {
        /// The filesystem being read.
        fs: FsKind,
        /// The feature.
        feature: String,
    },
}

pub(crate) fn corrupt(fs: FsKind, reason: impl Into<String>) -> FsError {
    FsError::Corrupt {
        fs,
        reason: reason.into(),
    }
}

/// What a reader found.
#[derive(Debug, Clone)]
pub struct FsReport {
    /// The filesystem.
    pub kind: FsKind,
    /// Allocation unit in bytes (block or cluster).
    pub block_size: u32,
    /// The filesystem's own idea of its size in bytes (may be less than the partition).
    pub fs_size: u64,
    /// Used bytes, relative to the start of the filesystem, normalized.
    pub used: ExtentMap,
    /// Volume label, when the filesystem has one (for LVM2, the volume group's name).
    pub label: Option<String>,
    /// The volumes inside (LVM2's logical volumes), each read by its own reader.
    pub volumes: Vec<Volume>,
}

/// A volume inside a container (an LVM2 logical volume) and how it was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Its name (`vg/lv`).
    pub name: String,
    /// The filesystem whose allocation data was used (`unknown` for a raw copy).
    pub kind: FsKind,
    /// The filesystem its signature suggested.
    pub detected: FsKind,
    /// Its size in bytes.
    pub size: u64,
    /// Its used bytes.
    pub used_bytes: u64,
    /// Where its bytes lie in the container (container-relative, normalized).
    pub extents: ExtentMap,
    /// Its filesystem's label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Why it is a raw copy, or what else an operator should know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// Where its bytes lie, in its own order: set for a plain logical volume held wholly by
    /// this container, so that it can be opened on its own (`drover image mount`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<VolumeSegment>,
}

/// A run of a volume's bytes: `len` bytes from volume offset `at`, laid over `areas`
/// (container offsets) in stripes of `stripe` bytes taken in turn (one area: a linear run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSegment {
    /// First byte in the volume.
    pub at: u64,
    /// Length in bytes.
    pub len: u64,
    /// Stripe size in bytes (the whole segment for a linear one).
    pub stripe: u64,
    /// Where each stripe's run starts in the container.
    pub areas: Vec<u64>,
}

impl Volume {
    /// Whether it was stored as a raw copy: its zero stretches are restored as zeros.
    pub fn is_raw_copy(&self) -> bool {
        self.kind == FsKind::Unknown
    }
}

/// The result of [`scan`]: a report plus the warning that explains a fallback, if any.
#[derive(Debug, Clone)]
pub struct Scan {
    /// The map to store.
    pub report: FsReport,
    /// The filesystem's signature, even when its reader failed.
    pub detected: FsKind,
    /// Set when the raw fallback was used for a recognised filesystem, or for anything else
    /// worth an operator's attention.
    pub warning: Option<String>,
}

/// What a scan may use beyond the device itself.
#[derive(Clone, Default)]
pub struct ScanOptions {
    /// Passphrases for LUKS volumes (each tried on every key slot); never stored.
    pub luks_keys: Vec<Vec<u8>>,
    /// The most work a LUKS key slot may ask of its KDF (the fuzz entry points lower it).
    pub(crate) kdf_limit: luks::KdfLimit,
}

impl ScanOptions {
    /// Options that open LUKS volumes with these passphrases.
    pub fn with_luks_keys(luks_keys: Vec<Vec<u8>>) -> Self {
        Self {
            luks_keys,
            ..Self::default()
        }
    }
}

impl fmt::Debug for ScanOptions {
    // Never the keys themselves: options end up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScanOptions")
            .field(
                "luks_keys",
                &format_args!("{} redacted", self.luks_keys.len()),
            )
            .finish()
    }
}

/// Recognises a filesystem by its signature only (no bitmap is read).
pub fn probe(dev: &dyn BlockDevice) -> io::Result<FsKind> {
    let len = dev.len();
    let mut head = vec![0u8; 4096.min(len) as usize];
    dev.read_at(&mut head, 0)?;
    if head.starts_with(b"LUKS\xba\xbe") {
        return Ok(FsKind::Luks);
    }
    if ntfs::probe(&head) {
        return Ok(FsKind::Ntfs);
    }
    if exfat::probe(&head) {
        return Ok(FsKind::Exfat);
    }
    if let Some(k) = ext::probe(&head) {
        return Ok(k);
    }
    if let Some(k) = fat::probe(&head) {
        return Ok(k);
    }
    // An LVM2 label may sit in any of the first four sectors.
    if (0..4).any(|i| {
        head.get(i * 512..i * 512 + 8) == Some(b"LABELONE")
            && head.get(i * 512 + 24..i * 512 + 32) == Some(b"LVM2 001")
    }) {
        return Ok(FsKind::Lvm2);
    }
    if swap::probe(dev)?.is_some() {
        return Ok(FsKind::Swap);
    }
    if head.starts_with(b"XFSB") {
        return Ok(FsKind::Xfs);
    }
    if hfsplus::probe(&head) {
        return Ok(FsKind::Hfsplus);
    }
    if head.get(32..36) == Some(b"NXSB") {
        return Ok(FsKind::Apfs);
    }
    if le32(&head, 1024) == 0xF2F5_2010 {
        return Ok(FsKind::F2fs);
    }
    if len >= 0x9000 {
        let mut magic = [0u8; 4];
        dev.read_at(&mut magic, 0x8000)?;
        if &magic == b"JFS1" {
            return Ok(FsKind::Jfs);
        }
    }
    if ufs::probe(dev)? {
        return Ok(FsKind::Ufs);
    }
    if nilfs2::probe(&head) {
        return Ok(FsKind::Nilfs2);
    }
    if minix::probe(dev, &head) {
        return Ok(FsKind::Minix);
    }
    // btrfs and reiserfs keep their superblocks at 64 KiB.
    if len >= 0x1_1000 {
        let mut at64k = vec![0u8; 4096];
        dev.read_at(&mut at64k, 0x1_0000)?;
        if &at64k[0x40..0x48] == b"_BHRfS_M" {
            return Ok(FsKind::Btrfs);
        }
        if reiserfs::probe(&at64k) {
            return Ok(FsKind::Reiserfs);
        }
    }
    Ok(FsKind::Unknown)
}

/// Runs the reader for the filesystem on `dev`; on a filesystem without a reader, or on any
/// reader error, falls back to the raw copy with a warning that names what was found and why.
/// `region` is the granularity of the raw copy and of the tail after the filesystem (the chunk
/// size). Only I/O errors of the raw scan itself are returned.
pub fn scan(dev: &dyn BlockDevice, region: u64) -> io::Result<Scan> {
    scan_with(dev, region, &ScanOptions::default())
}

/// [`scan`] with keys for encrypted volumes.
pub fn scan_with(dev: &dyn BlockDevice, region: u64, opts: &ScanOptions) -> io::Result<Scan> {
    scan_in(dev, region, opts, &[])
}

/// [`scan_with`] of one partition with the disk's `others` at hand: an LVM2 PV reads the
/// logical volumes its volume group spreads over the PVs among them.
pub fn scan_in(
    dev: &dyn BlockDevice,
    region: u64,
    opts: &ScanOptions,
    others: &[&dyn BlockDevice],
) -> io::Result<Scan> {
    let detected = probe(dev)?;
    let result = match detected {
        FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 => ext::read(dev),
        FsKind::Fat12 | FsKind::Fat16 | FsKind::Fat32 => fat::read(dev),
        FsKind::Exfat => exfat::read(dev),
        FsKind::Ntfs => ntfs::read(dev),
        FsKind::Swap => swap::read(dev),
        FsKind::Xfs => xfs::read(dev),
        FsKind::Btrfs => btrfs::read(dev),
        FsKind::Minix => minix::read(dev),
        FsKind::F2fs => f2fs::read(dev),
        FsKind::Apfs => apfs::read(dev),
        FsKind::Hfsplus => hfsplus::read(dev),
        FsKind::Reiserfs => reiserfs::read(dev),
        FsKind::Jfs => jfs::read(dev),
        FsKind::Nilfs2 => nilfs2::read(dev),
        FsKind::Ufs => ufs::read(dev),
        FsKind::Lvm2 => lvm::read(dev, region, opts, others),
        FsKind::Luks => luks::read(dev, region, opts),
        _ => {
            let report = raw_report(dev, region)?;
            let named = known::identify(dev)?;
            let warning = match named {
                Some(kind) => format!("{kind}: {}; {}", known::why_raw(kind), raw_note(region)),
                None if report.used.is_empty() => format!(
                    "unknown (no filesystem signature; every byte is zero); {}",
                    raw_note(region)
                ),
                None => format!(
                    "unknown (no filesystem signature drover knows); {}",
                    raw_note(region)
                ),
            };
            return Ok(Scan {
                report,
                detected: named.unwrap_or(FsKind::Unknown),
                warning: Some(warning),
            });
        }
    };
    match result {
        Ok(mut report) if report.fs_size <= dev.len() => {
            report.used.normalize();
            if report.used.end() > report.fs_size {
                return fallback(
                    dev,
                    detected,
                    region,
                    "used map reaches past the filesystem's end",
                );
            }
            // Whatever lies between the filesystem's end and the partition's end is kept too.
            let tail = raw::nonzero_regions(dev, report.fs_size, dev.len(), region)?;
            report.used = report.used.union(&tail);
            // The volumes' own warnings (a logical volume stored as a raw copy) are the area's.
            let notes: Vec<String> = report
                .volumes
                .iter()
                .filter_map(|v| v.warning.as_ref().map(|w| format!("{}: {w}", v.name)))
                .collect();
            Ok(Scan {
                report,
                detected,
                warning: (!notes.is_empty()).then(|| notes.join("; ")),
            })
        }
        Ok(report) => fallback(
            dev,
            detected,
            region,
            &format!(
                "filesystem claims {} bytes but the device holds only {}",
                report.fs_size,
                dev.len()
            ),
        ),
        Err(FsError::Locked { reason }) => {
            let mut scan = fallback(dev, detected, region, &reason)?;
            scan.warning = Some(format!("{reason}; {}", raw_note(region)));
            Ok(scan)
        }
        Err(e) => fallback(dev, detected, region, &e.to_string()),
    }
}

/// The second half of every raw-copy warning: what is stored and how it comes back.
fn raw_note(region: u64) -> String {
    format!(
        "stored as a raw copy (every {} with a non-zero byte), restored byte for byte",
        region_name(region)
    )
}

fn region_name(region: u64) -> String {
    if region >= 1 << 20 && region % (1 << 20) == 0 {
        format!("{} MiB region", region >> 20)
    } else {
        format!("{region}-byte region")
    }
}

fn fallback(dev: &dyn BlockDevice, detected: FsKind, region: u64, why: &str) -> io::Result<Scan> {
    let warning = format!(
        "{detected} found but its allocation data could not be used ({why}); {}",
        raw_note(region)
    );
    tracing::warn!(fs = %detected, reason = why, "falling back to raw used-block map");
    Ok(Scan {
        report: raw_report(dev, region)?,
        detected,
        warning: Some(warning),
    })
}

/// The raw map of the whole device as a report.
fn raw_report(dev: &dyn BlockDevice, region: u64) -> io::Result<FsReport> {
    Ok(FsReport {
        kind: FsKind::Unknown,
        block_size: 0,
        fs_size: dev.len(),
        used: raw::nonzero_regions(dev, 0, dev.len(), region)?,
        label: None,
        volumes: Vec::new(),
    })
}

/// `sectors × sector_size` bytes, checked to fit the device.
pub(crate) fn volume_size(
    fs: FsKind,
    sectors: u64,
    sector_size: u64,
    dev: &dyn BlockDevice,
) -> Result<u64, FsError> {
    sectors
        .checked_mul(sector_size)
        .filter(|&s| s <= dev.len())
        .ok_or_else(|| {
            corrupt(
                fs,
                format!("volume of {sectors} sectors on a {}-byte device", dev.len()),
            )
        })
}

// Little-endian field readers over untrusted bytes: out-of-range reads give 0 rather than panic;
// every reader validates the values it relies on.
pub(crate) fn le16(b: &[u8], o: usize) -> u16 {
    b.get(o..o + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

pub(crate) fn le32(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

pub(crate) fn le64(b: &[u8], o: usize) -> u64 {
    b.get(o..o + 8).map_or(0, |s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

/// The byte table of a reflected CRC-32 with polynomial `poly` (reversed form).
pub(crate) const fn crc_table(poly: u32) -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ poly } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

/// crc32c (Castagnoli, reflected) without pre- or post-inversion: ext4's `ext4_chksum` uses it
/// as is, btrfs inverts before and after. A byte table built at compile time.
pub(crate) fn crc32c(mut crc: u32, data: &[u8]) -> u32 {
    const T: [u32; 256] = crc_table(0x82F6_3B78);
    for &b in data {
        crc = (crc >> 8) ^ T[((crc ^ u32::from(b)) & 0xFF) as usize];
    }
    crc
}

/// Each reader over a device, for the fuzz entry points in [`crate::fuzzing`].
pub(crate) mod fuzzing {
    use super::*;

    fn lvm_fuzz(dev: &dyn BlockDevice) -> Result<FsReport, FsError> {
        lvm::read(dev, 1 << 20, &ScanOptions::default(), &[])
    }

    fn luks_fuzz(dev: &dyn BlockDevice) -> Result<FsReport, FsError> {
        // A mutated header may ask for billions of PBKDF2 rounds or gigabytes of Argon2
        // memory: refused here long before a real volume's limits.
        let opts = ScanOptions {
            luks_keys: vec![b"fuzz".to_vec()],
            kdf_limit: luks::KdfLimit::FUZZ,
        };
        luks::read(dev, 1 << 20, &opts)
    }

    /// The reports of every reader that accepted the device.
    pub(crate) fn each_reader(dev: &dyn BlockDevice) -> Vec<FsReport> {
        let mut out = Vec::new();
        for r in [
            ext::read,
            fat::read,
            exfat::read,
            ntfs::read,
            swap::read,
            xfs::read,
            btrfs::read,
            minix::read,
            f2fs::read,
            apfs::read,
            hfsplus::read,
            reiserfs::read,
            jfs::read,
            nilfs2::read,
            ufs::read,
            lvm_fuzz,
            luks_fuzz,
        ] {
            if let Ok(mut rep) = r(dev) {
                rep.used.normalize();
                out.push(rep);
            }
        }
        out
    }
}
