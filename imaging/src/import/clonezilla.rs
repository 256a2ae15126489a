//! A Clonezilla image directory, as `ocs-sr savedisk` writes it (names from ocs-functions):
//! `disk` (the saved disks' names), `parts`, `DISK-pt.sf` (`sfdisk --dump`), `DISK-pt.parted`
//! (the disk's size), `DISK-mbr` (its first sector), `DISK-hidden-data-after-mbr`,
//! `DISK-gpt-1st`/`DISK-gpt-2nd` (the primary and backup GPT), `PART-ebr` (an extended
//! partition's first sector), `swappt-PART.info` (a swap partition's UUID and label), and per
//! partition `PART.FS-ptcl-img.COMP` (partclone; `dd-ptcl-img` holds raw bytes) or the older
//! `PART.dd-img`, either split into `.aa`, `.ab`, ... pieces.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::pieces::{self, Pieces};
use super::table::{self, SfPart};
use super::write;
use super::{Assembly, ImportError, PartDone};

fn invalid(s: impl Into<String>) -> ImportError {
    ImportError::Invalid(s.into())
}

fn read_text(dir: &Path, name: &str) -> Result<Option<String>, ImportError> {
    match std::fs::read(dir.join(name)) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(invalid(format!("reading {name}: {e}"))),
    }
}

fn read_bytes(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, ImportError> {
    match std::fs::read(dir.join(name)) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(invalid(format!("reading {name}: {e}"))),
    }
}

/// Lays out the directory's disk `disk` (or its only one) into `out`.
pub fn assemble(dir: &Path, disk: Option<&str>, out: &File) -> Result<Assembly, ImportError> {
    if dir.join("lvm_vg_dev.list").exists() {
        return Err(invalid(
            "the image holds LVM volume groups (lvm_vg_dev.list), which drover does not import \
             yet: restore it with Clonezilla once and capture the disk with drover",
        ));
    }
    verify_sums(dir)?;
    let disks: Vec<String> = read_text(dir, "disk")?
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let parts_listed: Vec<String> = read_text(dir, "parts")?
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let name = match (disk, disks.as_slice()) {
        (Some(d), _) if disks.is_empty() || disks.iter().any(|x| x == d) => d.to_string(),
        (Some(d), _) => {
            return Err(invalid(format!(
                "the image has no disk {d} (it has {})",
                disks.join(", ")
            )));
        }
        (None, [one]) => one.clone(),
        (None, []) => {
            return Err(invalid(
                "the image saved partitions, not a disk (no `disk` file): name the disk they \
                 came from with --disk",
            ));
        }
        (None, many) => {
            return Err(invalid(format!(
                "the image holds {} disks ({}): choose one with --disk",
                many.len(),
                many.join(", ")
            )));
        }
    };
    let sf = read_text(dir, &format!("{name}-pt.sf"))?
        .ok_or_else(|| invalid(format!("no partition table dump {name}-pt.sf")))?;
    let dump = table::parse_sfdisk(&sf).map_err(|e| invalid(format!("{name}-pt.sf: {e}")))?;
    let ss = dump.sector_size;
    let mut notes = Vec::new();

    // The disk's size: parted's record, else what the table needs.
    let parted =
        read_text(dir, &format!("{name}-pt.parted"))?.and_then(|t| table::parted_disk_sectors(&t));
    let gpt_first = if dump.label == "gpt" {
        Some(
            read_bytes(dir, &format!("{name}-gpt-1st"))?
                .ok_or_else(|| invalid(format!("a GPT disk without its saved {name}-gpt-1st")))?,
        )
    } else {
        None
    };
    let needed = dump.end_bytes();
    let disk_size = match (parted, &gpt_first) {
        (Some(n), _) => n * ss,
        (None, Some(first)) => table::gpt_disk_size(first, ss)?,
        (None, None) => {
            notes.push(format!(
                "the image does not record {name}'s size ({name}-pt.parted is missing or empty): \
                 the disk ends where its last partition does"
            ));
            needed
        }
    };
    if disk_size < needed {
        return Err(invalid(format!(
            "{name}-pt.sf has partitions past the disk's end ({needed} > {disk_size} bytes)"
        )));
    }
    out.set_len(disk_size)?;

    // The table and what lies around it.
    match &gpt_first {
        Some(first) => {
            let saved = read_bytes(dir, &format!("{name}-gpt-2nd"))?;
            if let Some(n) = write::gpt(out, first, ss, disk_size, saved)? {
                notes.push(format!("{name}-gpt-2nd {n}"));
            }
        }
        None => {
            let mbr = read_bytes(dir, &format!("{name}-mbr"))?
                .filter(|b| b.len() >= 512)
                .ok_or_else(|| invalid(format!("an MBR disk without its saved {name}-mbr")))?;
            let mut first = mbr[..512].to_vec();
            if let Some(hidden) = read_bytes(dir, &format!("{name}-hidden-data-after-mbr"))? {
                first.extend_from_slice(&hidden);
            }
            let ext_boot = dump
                .parts
                .iter()
                .find(|p| p.is_extended())
                .map(|p| read_bytes(dir, &format!("{}-ebr", p.name)))
                .transpose()?
                .flatten();
            write::mbr(out, &first, &dump, ext_boot.as_deref())?;
        }
    }

    let mut parts = Vec::new();
    for p in &dump.parts {
        if p.is_extended() && p.number <= 4 {
            continue;
        }
        // ocs-sr leaves swap partitions out of `parts` and keeps their UUID and label aside.
        let swap = dir.join(format!("swappt-{}.info", p.name)).is_file();
        if !swap && !parts_listed.is_empty() && !parts_listed.contains(&p.name) {
            notes.push(format!(
                "{} was not saved in the image: it is left empty",
                p.name
            ));
            continue;
        }
        parts.push(lay_out(dir, p, ss, out)?);
    }
    out.sync_all()?;
    Ok(Assembly {
        disk_size,
        disk: name,
        parts,
        notes,
    })
}

/// The image file for partition `name`: the base name (split suffix removed) of the files
/// `NAME.*-ptcl-img*` or `NAME.dd-img*`.
fn image_of(dir: &Path, name: &str) -> Result<Option<(String, Pieces)>, ImportError> {
    let prefix = format!("{name}.");
    let mut bases: Vec<String> = Vec::new();
    for e in
        std::fs::read_dir(dir).map_err(|e| invalid(format!("reading {}: {e}", dir.display())))?
    {
        let n = e?.file_name().to_string_lossy().into_owned();
        let Some(rest) = n.strip_prefix(&prefix) else {
            continue;
        };
        if rest.ends_with(".info") || rest.ends_with(".info.gz") {
            continue;
        }
        if rest.starts_with("ntfs-img") {
            return Err(invalid(format!(
                "{n} is an ntfsclone image, which drover does not read: save the partition with \
                 partclone (ocs-sr -q2)"
            )));
        }
        // `FS-ptcl-img.COMP` or `dd-img`, then maybe a split suffix.
        let stem = if let Some(i) = rest.find("-ptcl-img.") {
            let after = &rest[i + "-ptcl-img.".len()..];
            let comp = after.split('.').next().unwrap_or_default();
            &rest[..i + "-ptcl-img.".len() + comp.len()]
        } else if let Some(i) = rest.find("dd-img") {
            &rest[..i + "dd-img".len()]
        } else if rest.len() == 3 && rest.bytes().all(|c| c.is_ascii_digit()) {
            return Err(invalid(format!(
                "{n} is a partimage image, which drover does not read: save the partition \
                 with partclone (ocs-sr -q2)"
            )));
        } else {
            continue;
        };
        let base = format!("{prefix}{stem}");
        if !bases.contains(&base) {
            bases.push(base);
        }
    }
    match bases.as_slice() {
        [] => Ok(None),
        [one] => {
            let p = pieces::find(dir, one).map_err(invalid)?;
            Ok(p.map(|p| (one.clone(), p)))
        }
        many => Err(invalid(format!(
            "partition {name} has several images: {}",
            many.join(", ")
        ))),
    }
}

/// Writes one partition's contents.
fn lay_out(dir: &Path, p: &SfPart, ss: u64, out: &File) -> Result<PartDone, ImportError> {
    let start = p.start * ss;
    let len = p.size * ss;
    if let Some(info) = read_text(dir, &format!("swappt-{}.info", p.name))? {
        let field = |k: &str| {
            info.split_whitespace().find_map(|w| {
                w.strip_prefix(&format!("{k}="))
                    .map(|v| v.trim_matches('"').to_string())
            })
        };
        write::swap(
            out,
            start,
            len,
            field("UUID").as_deref(),
            field("LABEL").as_deref(),
        )?;
        return Ok(PartDone {
            name: p.name.clone(),
            from: format!("swappt-{}.info (swap made again)", p.name),
            bytes: 4096,
        });
    }
    let Some((base, pieces)) = image_of(dir, &p.name)? else {
        return Err(invalid(format!(
            "partition {} has no image file ({}.*-ptcl-img.* or {}.dd-img)",
            p.name, p.name, p.name
        )));
    };
    write::partition(out, start, len, &p.name, &base, &pieces)
}

/// Checks the files `MD5SUMS`, `SHA1SUMS` and `B2SUMS` list (`ocs-sr -gm/-gs/-gb`), naming the
/// first that differs.
fn verify_sums(dir: &Path) -> Result<(), ImportError> {
    use sha1::Digest;
    type Hasher = fn(&Path) -> io::Result<String>;
    fn hash_with<D: Digest>(path: &Path) -> io::Result<String> {
        let mut f = File::open(path)?;
        let mut d = D::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            d.update(&buf[..n]);
        }
        Ok(d.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }
    let lists: [(&str, Hasher); 3] = [
        ("MD5SUMS", hash_with::<md5::Md5>),
        ("SHA1SUMS", hash_with::<sha1::Sha1>),
        ("B2SUMS", hash_with::<blake2::Blake2b512>),
    ];
    for (list, hash) in lists {
        let Some(text) = read_text(dir, list)? else {
            continue;
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Some((sum, name)) = line.split_once(char::is_whitespace) else {
                continue;
            };
            let name = name.trim_start().trim_start_matches('*');
            if name.contains('/') || name == list {
                continue;
            }
            let path: PathBuf = dir.join(name);
            let got = match hash(&path) {
                Ok(h) => h,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(ImportError::Damaged {
                        file: name.to_string(),
                        detail: format!("it is listed in {list} but missing"),
                    });
                }
                Err(e) => return Err(e.into()),
            };
            if !got.eq_ignore_ascii_case(sum) {
                return Err(ImportError::Damaged {
                    file: name.to_string(),
                    detail: format!("its checksum differs from the one in {list}"),
                });
            }
        }
    }
    Ok(())
}
