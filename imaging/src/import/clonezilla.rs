//! A Clonezilla image directory, as `ocs-sr savedisk` writes it (names from ocs-functions):
//! `disk` (the saved disks' names), `parts`, `DISK-pt.sf` (`sfdisk --dump`), `DISK-pt.parted`
//! (the disk's size), `DISK-mbr` (its first sector), `DISK-hidden-data-after-mbr`,
//! `DISK-gpt-1st`/`DISK-gpt-2nd` (the primary and backup GPT), `PART-ebr` (an extended
//! partition's first sector), `swappt-PART.info` (a swap partition's UUID and label), and per
//! partition `PART.FS-ptcl-img.COMP` (partclone; `dd-ptcl-img` holds raw bytes) or the older
//! `PART.dd-img`, either split into `.aa`, `.ab`, ... pieces.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::partclone::{self, PartcloneError};
use super::pieces::{self, Pieces, Stream};
use super::table::{self, SfPart};
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
    let needed = dump
        .parts
        .iter()
        .map(|p| (p.start + p.size) * ss)
        .max()
        .unwrap_or(0);
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
            out.write_all_at(first, 0)?;
            let (at, backup) = match read_bytes(dir, &format!("{name}-gpt-2nd"))? {
                Some(b)
                    if b.len() as u64 == 33 * ss
                        && b[b.len() - ss as usize..].starts_with(b"EFI PART") =>
                {
                    (disk_size - b.len() as u64, b)
                }
                _ => {
                    notes.push(format!(
                        "{name}-gpt-2nd is missing or incomplete: the backup GPT is made from the primary"
                    ));
                    table::gpt_backup(first, ss, disk_size)?
                }
            };
            out.write_all_at(&backup, at)?;
        }
        None => {
            let mbr = read_bytes(dir, &format!("{name}-mbr"))?
                .filter(|b| b.len() >= 512)
                .ok_or_else(|| invalid(format!("an MBR disk without its saved {name}-mbr")))?;
            out.write_all_at(&mbr[..512], 0)?;
            if let Some(hidden) = read_bytes(dir, &format!("{name}-hidden-data-after-mbr"))? {
                let first = dump.parts.iter().map(|p| p.start).min().unwrap_or(1) * ss;
                let n = (hidden.len() as u64).min(first.saturating_sub(512)) as usize;
                out.write_all_at(&hidden[..n], 512)?;
            }
            let ext_boot = dump
                .parts
                .iter()
                .find(|p| p.is_extended())
                .map(|p| read_bytes(dir, &format!("{}-ebr", p.name)))
                .transpose()?
                .flatten();
            for (sector, ebr) in table::ebr_chain(&dump, ext_boot.as_deref())? {
                out.write_all_at(&ebr, sector * ss)?;
            }
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
        write_swap(out, start, len, &info)?;
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
    let mut stream = Stream::open(&pieces).map_err(invalid)?;
    let npieces = pieces.files.len();
    let comp = stream.compression;
    let mut head = [0u8; 15];
    let got = fill(&mut stream, &mut head).map_err(|e| damaged_io(&stream, e))?;
    let mut chained = io::Cursor::new(head[..got].to_vec()).chain(&mut stream);
    let mut write = |off: u64, data: &[u8]| -> io::Result<()> {
        if off + data.len() as u64 > len {
            return Err(io::Error::other(Target(format!(
                "{base} holds more than partition {}'s {len} bytes",
                p.name
            ))));
        }
        out.write_all_at(data, start + off)
            .map_err(|e| io::Error::other(Target(format!("writing the disk file: {e}"))))
    };
    let (from, bytes) = if &head[..got] == partclone::MAGIC {
        let res = partclone::restore(&mut chained, &mut write);
        drop(chained);
        match res {
            Ok((h, done)) => {
                if h.device_size > len {
                    return Err(invalid(format!(
                        "{base} was taken from a {}-byte partition; the table gives {} {len} bytes",
                        h.device_size, p.name
                    )));
                }
                (
                    format!(
                        "partclone {} image (format {:04}), {comp}, {npieces} piece{}, {} checksum{} checked",
                        h.fs,
                        h.version,
                        if npieces == 1 { "" } else { "s" },
                        done.checksums,
                        if done.checksums == 1 { "" } else { "s" }
                    ),
                    done.bytes,
                )
            }
            Err(e) => return Err(partclone_error(&stream, &base, e)),
        }
    } else {
        let n = copy_raw(&mut chained, &mut write);
        drop(chained);
        let n = n.map_err(|e| damaged_io(&stream, e))?;
        (
            format!(
                "raw image, {comp}, {npieces} piece{}",
                if npieces == 1 { "" } else { "s" }
            ),
            n,
        )
    };
    Ok(PartDone {
        name: p.name.clone(),
        from: format!("{base}: {from}"),
        bytes,
    })
}

fn fill(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Copies a raw stream, leaving all-zero stretches unwritten (the file is sparse).
fn copy_raw(
    r: &mut dyn Read,
    write: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = fill(r, &mut buf)?;
        if n == 0 {
            return Ok(at);
        }
        for (i, block) in buf[..n].chunks(64 << 10).enumerate() {
            if block.iter().any(|&b| b != 0) {
                write(at + (i * (64 << 10)) as u64, block)?;
            }
        }
        at += n as u64;
    }
}

/// A failure on the writing side (the disk file, or data that does not fit the partition),
/// told apart from damage in what is read.
#[derive(Debug)]
struct Target(String);

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Target {}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// An error reading the stream: the decompressor's or the file system's, in the piece being
/// read.
fn damaged_io(stream: &Stream, e: io::Error) -> ImportError {
    if let Some(t) = e.get_ref().and_then(|x| x.downcast_ref::<Target>()) {
        return invalid(t.0.clone());
    }
    ImportError::Damaged {
        file: file_name(stream.current_piece()),
        detail: format!("{} data does not decode: {e}", stream.compression),
    }
}

fn partclone_error(stream: &Stream, base: &str, e: PartcloneError) -> ImportError {
    match e {
        PartcloneError::Io(e) => damaged_io(stream, e),
        PartcloneError::Checksum { start, end, .. } => {
            // `start`/`end` count from after the 15 bytes read to recognise the image.
            let names: Vec<String> = stream
                .pieces_for(start, end + 15)
                .into_iter()
                .map(file_name)
                .collect();
            ImportError::Damaged {
                file: names.join(" or "),
                detail: e.to_string(),
            }
        }
        PartcloneError::Truncated { .. } => ImportError::Damaged {
            file: file_name(stream.current_piece()),
            detail: e.to_string(),
        },
        other => ImportError::Damaged {
            file: base.to_string(),
            detail: other.to_string(),
        },
    }
}

/// A Linux swap header (format 1, 4 KiB pages) with the saved UUID and label, as Clonezilla
/// makes one again with mkswap.
fn write_swap(out: &File, start: u64, len: u64, info: &str) -> Result<(), ImportError> {
    let field = |k: &str| {
        info.split_whitespace().find_map(|w| {
            w.strip_prefix(&format!("{k}="))
                .map(|v| v.trim_matches('"').to_string())
        })
    };
    if len < 10 * 4096 {
        return Err(invalid(format!(
            "swap partition of {len} bytes is too small"
        )));
    }
    let mut page = vec![0u8; 4096];
    page[1024..1028].copy_from_slice(&1u32.to_le_bytes());
    let last = u32::try_from(len / 4096 - 1).unwrap_or(u32::MAX);
    page[1028..1032].copy_from_slice(&last.to_le_bytes());
    if let Some(u) = field("UUID") {
        let hex: String = u.chars().filter(|c| *c != '-').collect();
        if hex.len() == 32 {
            for i in 0..16 {
                page[1036 + i] = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                    .map_err(|_| invalid(format!("swap UUID {u:?}")))?;
            }
        }
    }
    if let Some(l) = field("LABEL") {
        let b = l.as_bytes();
        let n = b.len().min(15);
        page[1052..1052 + n].copy_from_slice(&b[..n]);
    }
    page[4086..4096].copy_from_slice(b"SWAPSPACE2");
    out.write_all_at(&page, start)?;
    Ok(())
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
