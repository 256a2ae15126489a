//! A FOG image directory, as FOS's `fog.upload` writes it (names from its funcs.sh):
//! `dN.partitions` (`sfdisk -d` of disk N), `dN.mbr` (an MBR disk's sectors before its first
//! partition, at most 1 MiB; a GPT disk's `sgdisk -b` backup: protective MBR, primary header,
//! backup header, entries), `dN.grub.mbr` (a GPT disk's sectors before its first partition,
//! when GRUB lives there), `dNpM.img` or `dNpM.img.000`, `.001`, ... (partclone images
//! compressed with pigz or zstd, split every 200 MiB), `dN.original.swapuuids` (`M UUID` per
//! swap partition) and `dNpM.ebr`. LVM logical volumes (`dNpM.LV.img`) are refused.

use std::fs::File;
use std::io;
use std::path::Path;

use super::pieces;
use super::table;
use super::write;
use super::{Assembly, ImportError, PartDone};

fn invalid(s: impl Into<String>) -> ImportError {
    ImportError::Invalid(s.into())
}

fn read(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, ImportError> {
    match std::fs::read(dir.join(name)) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(invalid(format!("reading {name}: {e}"))),
    }
}

/// The disks (`d1`, `d2`, ...) a FOG directory holds: those with a partition table dump.
fn disks(dir: &Path) -> Result<Vec<String>, ImportError> {
    let mut v: Vec<(u32, String)> = std::fs::read_dir(dir)
        .map_err(|e| invalid(format!("reading {}: {e}", dir.display())))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let num = n.strip_prefix('d')?.strip_suffix(".partitions")?;
            let k: u32 = num.parse().ok()?;
            Some((k, format!("d{k}")))
        })
        .collect();
    v.sort();
    Ok(v.into_iter().map(|(_, n)| n).collect())
}

/// Whether `dir` looks like a FOG image directory.
pub fn is_fog(dir: &Path) -> bool {
    disks(dir).is_ok_and(|d| !d.is_empty())
}

/// Lays out FOG disk `disk` (`d1`, or `1`; the only one when not given) into `out`.
pub fn assemble(dir: &Path, disk: Option<&str>, out: &File) -> Result<Assembly, ImportError> {
    let all = disks(dir)?;
    let name = match disk {
        Some(d) => {
            let d = if d.starts_with('d') {
                d.to_string()
            } else {
                format!("d{d}")
            };
            if !all.contains(&d) {
                return Err(invalid(format!(
                    "the image has no disk {d} (it has {})",
                    all.join(", ")
                )));
            }
            d
        }
        None => match all.as_slice() {
            [one] => one.clone(),
            many => {
                return Err(invalid(format!(
                    "the image holds {} disks ({}): choose one with --disk",
                    many.len(),
                    many.join(", ")
                )));
            }
        },
    };
    let text = read(dir, &format!("{name}.partitions"))?.unwrap_or_default();
    let dump = table::parse_sfdisk(&String::from_utf8_lossy(&text))
        .map_err(|e| invalid(format!("{name}.partitions: {e}")))?;
    let ss = dump.sector_size;
    let mbr = read(dir, &format!("{name}.mbr"))?
        .ok_or_else(|| invalid(format!("no {name}.mbr (the disk's first sectors)")))?;
    let mut notes = Vec::new();
    let needed = dump.end_bytes();

    let disk_size = if dump.label == "gpt" {
        let first = gpt_from_sgdisk_backup(&mbr, ss)
            .ok_or_else(|| invalid(format!("{name}.mbr is not an sgdisk backup of a GPT")))?;
        let size = table::gpt_disk_size(&first, ss)?;
        check_fits(&name, needed, size)?;
        out.set_len(size)?;
        if let Some(grub) = read(dir, &format!("{name}.grub.mbr"))? {
            // The boot code and embedding area before the first partition; the GPT goes
            // over it from the backup.
            write::mbr(out, &grub, &dump, None)?;
        }
        write::gpt(out, &first, ss, size, None)?;
        size
    } else {
        notes.push(format!(
            "FOG does not record {name}'s size: the disk ends where its last partition does"
        ));
        out.set_len(needed)?;
        let ext_boot = dump
            .parts
            .iter()
            .find(|p| p.is_extended())
            .map(|p| read(dir, &format!("{name}p{}.ebr", p.number)))
            .transpose()?
            .flatten()
            .filter(|b| b.len() >= 446);
        write::mbr(out, &mbr, &dump, ext_boot.as_deref())?;
        needed
    };

    let swaps = String::from_utf8_lossy(
        &read(dir, &format!("{name}.original.swapuuids"))?.unwrap_or_default(),
    )
    .into_owned();
    let mut parts = Vec::new();
    for p in &dump.parts {
        if p.is_extended() && p.number <= 4 {
            continue;
        }
        let start = p.start * ss;
        let len = p.size * ss;
        let base = format!("{name}p{}.img", p.number);
        if let Some(pieces) = pieces::find(dir, &base).map_err(invalid)? {
            parts.push(write::partition(out, start, len, &p.name, &base, &pieces)?);
            continue;
        }
        if let Some(uuid) = swap_uuid(&swaps, p.number) {
            write::swap(out, start, len, Some(&uuid), None)?;
            parts.push(PartDone {
                name: p.name.clone(),
                from: format!("{name}.original.swapuuids (swap made again)"),
                bytes: 4096,
            });
            continue;
        }
        let lv = std::fs::read_dir(dir)?.filter_map(|e| e.ok()).any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&format!("{name}p{}.", p.number))
                && n.contains(".img")
                && !n.starts_with(&base)
        });
        if lv {
            return Err(invalid(format!(
                "partition {} holds LVM logical volumes ({name}p{}.LV.img), which drover does \
                 not import yet",
                p.name, p.number
            )));
        }
        notes.push(format!(
            "{} has no image in the directory: it is left empty",
            p.name
        ));
    }
    out.sync_all()?;
    Ok(Assembly {
        disk_size,
        disk: name,
        parts,
        notes,
    })
}

fn check_fits(name: &str, needed: u64, size: u64) -> Result<(), ImportError> {
    if size < needed {
        return Err(invalid(format!(
            "{name}.partitions has partitions past the disk's end ({needed} > {size} bytes)"
        )));
    }
    Ok(())
}

/// The disk's first sectors (protective MBR, primary header, entries at their LBA) from an
/// `sgdisk -b` backup (protective MBR, primary header, backup header, entries; one sector
/// each for the first three).
fn gpt_from_sgdisk_backup(b: &[u8], ss: u64) -> Option<Vec<u8>> {
    let ss = ss as usize;
    if b.len() < 3 * ss || !b[ss..].starts_with(b"EFI PART") {
        return None;
    }
    let hdr = &b[ss..2 * ss];
    let entries_lba = u64::from_le_bytes(hdr[72..80].try_into().ok()?) as usize;
    let entries = &b[3 * ss..];
    if !(2..=64).contains(&entries_lba) {
        return None;
    }
    let mut first = vec![0u8; entries_lba * ss + entries.len()];
    first[..ss].copy_from_slice(&b[..ss]);
    first[ss..2 * ss].copy_from_slice(hdr);
    first[entries_lba * ss..].copy_from_slice(entries);
    Some(first)
}

/// The UUID `dN.original.swapuuids` gives partition `number` ("5 UUID", or "/dev/sda5 UUID").
fn swap_uuid(text: &str, number: u32) -> Option<String> {
    text.lines().find_map(|l| {
        let (part, uuid) = l.trim().split_once(char::is_whitespace)?;
        let digits = part.len() - part.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let n: u32 = part[part.len() - digits..].parse().ok()?;
        (n == number).then(|| uuid.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_uuids_are_found_by_partition_number() {
        let t = "5 0b1c2d3e-0000-4000-8000-000000000001\n/dev/sda6 0b1c2d3e-0000-4000-8000-000000000002\n";
        assert_eq!(
            swap_uuid(t, 5).unwrap(),
            "0b1c2d3e-0000-4000-8000-000000000001"
        );
        assert_eq!(
            swap_uuid(t, 6).unwrap(),
            "0b1c2d3e-0000-4000-8000-000000000002"
        );
        assert!(swap_uuid(t, 1).is_none());
        assert!(swap_uuid(t, 15).is_none());
    }
}
