//! Writing what an imported image holds into the disk file: a partition from its (split,
//! compressed) partclone or raw image, a swap header, a GPT with its backup, an MBR with the
//! data after it and the EBR chain of its logical partitions.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::partclone::{self, PartcloneError};
use super::pieces::{Pieces, Stream};
use super::table::{self, SfdiskDump};
use super::{ImportError, PartDone};

fn invalid(s: impl Into<String>) -> ImportError {
    ImportError::Invalid(s.into())
}

/// Writes partition `name` (`len` bytes at `start`) from image file `base` (`pieces`): the used
/// blocks of a partclone image, or every non-zero stretch of a raw one.
pub(super) fn partition(
    out: &File,
    start: u64,
    len: u64,
    name: &str,
    base: &str,
    pieces: &Pieces,
) -> Result<PartDone, ImportError> {
    let mut stream = Stream::open(pieces).map_err(invalid)?;
    let npieces = pieces.files.len();
    let comp = stream.compression;
    let mut head = [0u8; 15];
    let got = fill(&mut stream, &mut head).map_err(|e| damaged_io(&stream, e))?;
    let mut chained = io::Cursor::new(head[..got].to_vec()).chain(&mut stream);
    let mut write = |off: u64, data: &[u8]| -> io::Result<()> {
        if off + data.len() as u64 > len {
            return Err(io::Error::other(Target(format!(
                "{base} holds more than partition {}'s {len} bytes",
                name
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
                        h.device_size, name
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
            Err(e) => return Err(partclone_error(&stream, base, e)),
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
        name: name.to_string(),
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
/// and FOG make one again with mkswap.
pub(super) fn swap(
    out: &File,
    start: u64,
    len: u64,
    uuid: Option<&str>,
    label: Option<&str>,
) -> Result<(), ImportError> {
    if len < 10 * 4096 {
        return Err(invalid(format!(
            "swap partition of {len} bytes is too small"
        )));
    }
    let mut page = vec![0u8; 4096];
    page[1024..1028].copy_from_slice(&1u32.to_le_bytes());
    let last = u32::try_from(len / 4096 - 1).unwrap_or(u32::MAX);
    page[1028..1032].copy_from_slice(&last.to_le_bytes());
    if let Some(u) = uuid {
        let hex: String = u.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 {
            return Err(invalid(format!("swap UUID {u:?}")));
        }
        for i in 0..16 {
            page[1036 + i] = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| invalid(format!("swap UUID {u:?}")))?;
        }
    }
    if let Some(l) = label {
        let b = l.as_bytes();
        let n = b.len().min(15);
        page[1052..1052 + n].copy_from_slice(&b[..n]);
    }
    page[4086..4096].copy_from_slice(b"SWAPSPACE2");
    out.write_all_at(&page, start)?;
    Ok(())
}

/// Writes a GPT disk's first sectors (`first`: protective MBR, primary header and entries)
/// and its backup: `saved` when it is a whole one (entries and header), else made from the
/// primary. Returns a note when the backup had to be made.
pub(super) fn gpt(
    out: &File,
    first: &[u8],
    ss: u64,
    disk_size: u64,
    saved: Option<Vec<u8>>,
) -> Result<Option<&'static str>, ImportError> {
    out.write_all_at(first, 0)?;
    let (at, backup, note) = match saved {
        Some(b)
            if b.len() as u64 == 33 * ss && b[b.len() - ss as usize..].starts_with(b"EFI PART") =>
        {
            (disk_size - b.len() as u64, b, None)
        }
        _ => {
            let (at, b) = table::gpt_backup(first, ss, disk_size)?;
            (
                at,
                b,
                Some("is missing or incomplete: the backup GPT is made from the primary"),
            )
        }
    };
    out.write_all_at(&backup, at)?;
    Ok(note)
}

/// Writes an MBR disk's first sectors (`first`: the MBR, then whatever followed it, cut at the
/// first partition) and the EBR chain its logical partitions need.
pub(super) fn mbr(
    out: &File,
    first: &[u8],
    dump: &SfdiskDump,
    ext_boot: Option<&[u8]>,
) -> Result<(), ImportError> {
    let ss = dump.sector_size;
    let limit = dump.parts.iter().map(|p| p.start).min().unwrap_or(1) * ss;
    let n = (first.len() as u64).min(limit.max(512)) as usize;
    out.write_all_at(&first[..n], 0)?;
    for (sector, ebr) in table::ebr_chain(dump, ext_boot)? {
        out.write_all_at(&ebr, sector * ss)?;
    }
    Ok(())
}
