//! Partition tables: recognising MBR (with extended/logical partitions) and GPT, through
//! mbrman and gptman, and rewriting a GPT for a target disk of another size.
//!
//! A disk whose sector 0 is a filesystem boot sector (FAT, NTFS, exFAT, ext, swap) is a bare
//! filesystem with no table: FAT and NTFS boot sectors also end in 0x55AA, so the filesystem
//! signature is checked before sector 0 is read as an MBR.

use std::io::{self, Read, Seek, SeekFrom, Write};

use serde::{Deserialize, Serialize};

use crate::device::{read_vec, BlockDevice};
use crate::fs::{self, FsKind};

/// The kind of partition table on a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// No table: the device holds one filesystem (or unknown data) from byte 0.
    None,
    /// DOS/MBR, possibly with an extended partition holding logical ones.
    Mbr,
    /// GUID partition table.
    Gpt,
}

/// One partition, as the table describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// The number Linux gives it (`sda1`..; logical MBR partitions from 5).
    pub number: u32,
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// MBR partition type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mbr_type: Option<u8>,
    /// GPT partition type GUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_guid: Option<String>,
    /// GPT unique partition GUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guid: Option<String>,
    /// GPT partition name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// MBR active flag or GPT legacy-BIOS-bootable attribute.
    #[serde(default)]
    pub bootable: bool,
}

impl Partition {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// A disk's partition table as found at capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// The kind of table.
    pub kind: TableKind,
    /// Logical sector size the table was read with.
    pub sector_size: u32,
    /// The partitions, by start.
    pub partitions: Vec<Partition>,
    /// GPT only: where the backup entries and header lie (first byte, length). They are not
    /// part of any data area: restore rewrites them for the target's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpt_backup: Option<(u64, u64)>,
    /// Set when the table was found but could not be used (the disk is then stored raw).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Errors of reading or rewriting a partition table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// Reading or writing the device failed.
    #[error("i/o error on the partition table")]
    Io(#[from] io::Error),
    /// The GPT cannot be laid out on the target.
    #[error("cannot rewrite the GPT for the target disk: {0}")]
    Gpt(String),
}

/// `Read + Seek + Write` over a [`BlockDevice`], for gptman and mbrman.
pub(crate) struct DevCursor<'a> {
    dev: &'a dyn BlockDevice,
    pos: u64,
}

impl<'a> DevCursor<'a> {
    pub(crate) fn new(dev: &'a dyn BlockDevice) -> Self {
        Self { dev, pos: 0 }
    }
}

impl Read for DevCursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.dev.len().saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        self.dev.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for DevCursor<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.dev.write_at(buf, self.pos)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for DevCursor<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.dev.len().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos =
            new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))?;
        Ok(self.pos)
    }
}

/// Formats a GPT GUID (mixed-endian on disk) the usual way.
pub fn guid_string(g: &[u8; 16]) -> String {
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]
    )
}

/// Reads the partition table of `dev`. Never fails on a malformed table: such a disk is
/// described as [`TableKind::None`] with a warning, and stored raw.
pub fn detect(dev: &dyn BlockDevice) -> io::Result<Layout> {
    let ss = dev.sector_size();
    let none = |warning: Option<String>| Layout {
        kind: TableKind::None,
        sector_size: ss,
        partitions: Vec::new(),
        gpt_backup: None,
        warning,
    };
    if dev.len() < 2 * u64::from(ss) {
        return Ok(none(None));
    }
    let lba1 = read_vec(dev, u64::from(ss), 8)?;
    if lba1 == b"EFI PART" {
        return Ok(match read_gpt(dev) {
            Ok(l) => l,
            Err(why) => none(Some(format!(
                "GPT signature found but the table is unusable: {why}"
            ))),
        });
    }
    if fs::probe(dev)? != FsKind::Unknown {
        return Ok(none(None));
    }
    let s0 = read_vec(dev, 0, 512)?;
    if s0[510] == 0x55 && s0[511] == 0xAA {
        return Ok(match read_mbr(dev) {
            Ok(Some(l)) => l,
            Ok(None) => none(None),
            Err(why) => none(Some(format!("MBR found but the table is unusable: {why}"))),
        });
    }
    Ok(none(None))
}

fn check_partitions(parts: &mut [Partition], disk: u64) -> Result<(), String> {
    parts.sort_by_key(|p| p.start);
    for p in parts.iter() {
        if p.size == 0 || p.end() > disk {
            return Err(format!(
                "partition {} ({}..{}) lies outside the {disk}-byte disk",
                p.number,
                p.start,
                p.end()
            ));
        }
    }
    for w in parts.windows(2) {
        if w[0].end() > w[1].start {
            return Err(format!(
                "partitions {} and {} overlap",
                w[0].number, w[1].number
            ));
        }
    }
    Ok(())
}

fn read_gpt(dev: &dyn BlockDevice) -> Result<Layout, String> {
    let ss = u64::from(dev.sector_size());
    let mut cur = DevCursor::new(dev);
    let gpt = gptman::GPT::read_from(&mut cur, ss).map_err(|e| e.to_string())?;
    if !gpt.header.is_primary() {
        return Err("primary GPT header is damaged (only the backup is readable)".into());
    }
    let h = &gpt.header;
    let disk = dev.len();
    let mut parts = Vec::new();
    for (i, p) in gpt.iter() {
        if p.is_unused() {
            continue;
        }
        let size = p
            .ending_lba
            .checked_sub(p.starting_lba)
            .and_then(|n| n.checked_add(1))
            .and_then(|n| n.checked_mul(ss))
            .ok_or_else(|| format!("partition {i} ends before it starts"))?;
        parts.push(Partition {
            number: i,
            start: p
                .starting_lba
                .checked_mul(ss)
                .ok_or("partition start overflows")?,
            size,
            mbr_type: None,
            type_guid: Some(guid_string(&p.partition_type_guid)),
            guid: Some(guid_string(&p.unique_partition_guid)),
            name: Some(p.partition_name.as_str().to_string()).filter(|s| !s.is_empty()),
            bootable: p.attribute_bits & 0x4 != 0,
        });
    }
    check_partitions(&mut parts, disk)?;
    // Backup entries then header, at the end of the disk as the header says.
    let entries = (u64::from(h.number_of_partition_entries) * u64::from(h.size_of_partition_entry))
        .div_ceil(ss);
    let backup_end = (h.backup_lba + 1) * ss;
    if backup_end > disk || h.backup_lba < entries + 1 {
        return Err(format!(
            "backup GPT header at LBA {} is outside the disk",
            h.backup_lba
        ));
    }
    let backup_start = (h.backup_lba - entries) * ss;
    if parts.last().is_some_and(|p| p.end() > backup_start) {
        return Err("a partition overlaps the backup GPT".into());
    }
    Ok(Layout {
        kind: TableKind::Gpt,
        sector_size: ss as u32,
        partitions: parts,
        gpt_backup: Some((backup_start, backup_end - backup_start)),
        warning: None,
    })
}

fn mbr_partition(number: u32, p: &mbrman::MBRPartitionEntry, sector: u64) -> Partition {
    Partition {
        number,
        start: u64::from(p.starting_lba) * sector,
        size: u64::from(p.sectors) * sector,
        mbr_type: Some(p.sys),
        type_guid: None,
        guid: None,
        name: None,
        bootable: p.is_active(),
    }
}

/// Checks the primary entries and walks the EBR chain with checked arithmetic before mbrman
/// sees them: mbrman adds EBR offsets in u32 and unwraps an alignment that does not exist when
/// every partition starts at LBA 0, so hostile tables must be rejected first.
fn precheck_mbr(dev: &dyn BlockDevice) -> Result<(), String> {
    let ss = u64::from(dev.sector_size());
    let sectors = dev.len() / ss;
    let s0 = read_vec(dev, 0, 512).map_err(|e| e.to_string())?;
    let entry = |b: &[u8], i: usize| {
        let o = 446 + 16 * i;
        (
            b[o + 4],
            u64::from(fs::le32(b, o + 8)),
            u64::from(fs::le32(b, o + 12)),
        )
    };
    let mut extended = None;
    for i in 0..4 {
        let (ty, start, len) = entry(&s0, i);
        if ty == 0 {
            continue;
        }
        if start == 0 || start + len > sectors {
            return Err(format!(
                "entry {} ({start}+{len} sectors) lies outside the disk",
                i + 1
            ));
        }
        if matches!(ty, 0x05 | 0x0F | 0x85 | 0xC5 | 0xD5) {
            extended = Some((start, len));
        }
    }
    let Some((ext, ext_len)) = extended else {
        return Ok(());
    };
    let mut rel = 0u64;
    for _ in 0..256 {
        let ebr = read_vec(dev, (ext + rel) * ss, 512).map_err(|e| e.to_string())?;
        if ebr[510] != 0x55 || ebr[511] != 0xAA {
            return if rel == 0 {
                Ok(())
            } else {
                Err(format!("EBR at sector {} has no signature", ext + rel))
            };
        }
        let (ty, start, len) = entry(&ebr, 0);
        if ty != 0
            && (start == 0
                || rel + start + len > ext_len
                || ext + rel + start > u64::from(u32::MAX))
        {
            return Err(format!(
                "logical partition in the EBR at sector {} lies outside the extended partition",
                ext + rel
            ));
        }
        let (_, next, _) = entry(&ebr, 1);
        if next == 0 {
            return Ok(());
        }
        if next <= rel || next >= ext_len {
            return Err(format!(
                "EBR chain at sector {} points backwards or outside",
                ext + rel
            ));
        }
        rel = next;
    }
    Err("more than 256 logical partitions".into())
}

fn read_mbr(dev: &dyn BlockDevice) -> Result<Option<Layout>, String> {
    precheck_mbr(dev)?;
    let ss = dev.sector_size();
    let mut cur = DevCursor::new(dev);
    // mbrman adds EBR-relative offsets in u32 without overflow checks; a hostile EBR must give
    // an error, not a panic, so a panic inside it is turned into one.
    let mbr = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        mbrman::MBR::read_from(&mut cur, ss)
    }))
    .map_err(|_| "malformed extended partition chain".to_string())?
    .map_err(|e| e.to_string())?;
    let s = u64::from(ss);
    let mut parts = Vec::new();
    for (i, p) in mbr.header.iter() {
        if p.is_unused() || p.is_extended() {
            continue;
        }
        if p.sys == 0xEE {
            return Err("protective MBR without a readable GPT".into());
        }
        parts.push(mbr_partition(i as u32, p, s));
    }
    for (k, l) in mbr.logical_partitions.iter().enumerate() {
        let p = &l.partition;
        if p.is_unused() {
            continue;
        }
        parts.push(mbr_partition(5 + k as u32, p, s));
    }
    if parts.is_empty() && mbr.logical_partitions.is_empty() {
        // A boot sector with no partitions: treat the disk as having no table.
        return Ok(None);
    }
    if parts.iter().any(|p| p.start == 0) {
        return Err("a partition starts at sector 0, over the MBR itself".into());
    }
    check_partitions(&mut parts, dev.len())?;
    Ok(Some(Layout {
        kind: TableKind::Mbr,
        sector_size: ss,
        partitions: parts,
        gpt_backup: None,
        warning: None,
    }))
}

/// Rewrites the GPT (primary and backup) of `target` for its size, from the primary header and
/// entries found in `primary` (the bytes of LBA 0 up to the end of the entry array), and fixes
/// the protective MBR's size. Used when the target's size differs from the source's.
pub fn relocate_gpt(
    target: &dyn BlockDevice,
    primary: &[u8],
    sector_size: u32,
) -> Result<(), TableError> {
    rewrite_gpt(target, primary, sector_size, &[])
}

/// [`relocate_gpt`] with partitions placed anew: each `(number, start, size)` (bytes) replaces
/// that partition's extent; the others stay as captured.
pub fn rewrite_gpt(
    target: &dyn BlockDevice,
    primary: &[u8],
    sector_size: u32,
    changes: &[(u32, u64, u64)],
) -> Result<(), TableError> {
    let ss = u64::from(sector_size);
    let src = crate::device::MemDevice::new(primary.to_vec()).with_sector_size(sector_size);
    let mut gpt = gptman::GPT::read_from(&mut DevCursor::new(&src), ss)
        .map_err(|e| TableError::Gpt(e.to_string()))?;
    let first_usable = gpt.header.first_usable_lba;
    let mut cur = DevCursor::new(target);
    gpt.header
        .update_from(&mut cur, ss)
        .map_err(|e| TableError::Gpt(e.to_string()))?;
    gpt.header.first_usable_lba = first_usable;
    for &(number, start, size) in changes {
        if number == 0 || number > gpt.header.number_of_partition_entries {
            return Err(TableError::Gpt(format!("no partition entry {number}")));
        }
        let (first, last) = (start / ss, (start + size) / ss - 1);
        if first < gpt.header.first_usable_lba || last > gpt.header.last_usable_lba {
            return Err(TableError::Gpt(format!(
                "partition {number} (sectors {first}..={last}) outside the usable sectors {}..={}",
                gpt.header.first_usable_lba, gpt.header.last_usable_lba
            )));
        }
        gpt[number].starting_lba = first;
        gpt[number].ending_lba = last;
    }
    gpt.write_into(&mut cur)
        .map_err(|e| TableError::Gpt(e.to_string()))?;
    // Protective MBR: the 0xEE entry covers the whole disk (capped at 2^32-1 sectors).
    let mut s0 = read_vec(target, 0, 512)?;
    let sectors = (target.len() / ss - 1).min(u64::from(u32::MAX)) as u32;
    for e in 0..4 {
        let o = 446 + 16 * e;
        if s0[o + 4] == 0xEE
            && u32::from_le_bytes([s0[o + 8], s0[o + 9], s0[o + 10], s0[o + 11]]) == 1
        {
            s0[o + 12..o + 16].copy_from_slice(&sectors.to_le_bytes());
        }
    }
    target.write_at(&s0, 0)?;
    Ok(())
}
