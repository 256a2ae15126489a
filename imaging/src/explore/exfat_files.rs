//! The files of an exFAT volume, read without mounting: the boot sector's geometry, the FAT
//! (followed unless a stream says its clusters are contiguous), directory entry sets (file,
//! stream extension, names) with their set checksums checked. Names are matched
//! case-insensitively, as Windows does; a file's bytes past its valid data length read as
//! zeros. Read-only; no other part of exFAT (bitmap, up-case table) is needed to read files.

use std::io::{self, Write};

use super::files::{copy_all, Entry, EntryKind, FileTree, FilesError};
use crate::device::{read_vec, BlockDevice};

/// An exFAT volume opened for reading files.
pub(super) struct Exfat {
    dev: Box<dyn BlockDevice>,
    cluster: u64,
    heap: u64,
    clusters: u64,
    fat_at: u64,
    root: u32,
}

/// One directory entry set.
#[derive(Debug, Clone)]
struct Node {
    name: String,
    dir: bool,
    first: u32,
    contiguous: bool,
    valid_len: u64,
    len: u64,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn bad(what: impl std::fmt::Display) -> FilesError {
    FilesError::Read(format!("exFAT: {what}"))
}

fn io_err(path: &str, e: io::Error) -> FilesError {
    FilesError::Read(format!("{path}: {e}"))
}

impl Exfat {
    pub(super) fn load(dev: Box<dyn BlockDevice>) -> Result<Self, FilesError> {
        let b = read_vec(dev.as_ref(), 0, 512).map_err(|e| io_err("exFAT boot sector", e))?;
        if b.get(3..11) != Some(b"EXFAT   ") {
            return Err(bad("no exFAT signature"));
        }
        let bps_shift = u32::from(b[0x6C]);
        let spc_shift = u32::from(b[0x6D]);
        if !(9..=12).contains(&bps_shift) || spc_shift > 25 - bps_shift {
            return Err(bad(format!(
                "sector shift {bps_shift}, cluster shift {spc_shift}"
            )));
        }
        let bps = 1u64 << bps_shift;
        let fats = u64::from(b[0x6E]);
        let fat_offset = u64::from(le32(&b, 0x50));
        let fat_len = u64::from(le32(&b, 0x54));
        let active = if fats == 2 && le16(&b, 0x6A) & 1 != 0 {
            fat_offset + fat_len
        } else {
            fat_offset
        };
        let t = Self {
            cluster: bps << spc_shift,
            heap: u64::from(le32(&b, 0x58)) * bps,
            clusters: u64::from(le32(&b, 0x5C)),
            fat_at: active * bps,
            root: le32(&b, 0x60),
            dev,
        };
        if t.heap + t.clusters * t.cluster > t.dev.len() || fat_len * bps < (t.clusters + 2) * 4 {
            return Err(bad("the cluster heap or FAT lies outside the volume"));
        }
        Ok(t)
    }

    fn valid(&self, c: u32) -> bool {
        u64::from(c) >= 2 && u64::from(c) < self.clusters + 2
    }

    /// The clusters holding `len` bytes (all of the chain when `None`) from `first`.
    fn chain(
        &self,
        first: u32,
        contiguous: bool,
        len: Option<u64>,
    ) -> Result<Vec<u32>, FilesError> {
        let want = len.map(|l| l.div_ceil(self.cluster));
        if want == Some(0) {
            return Ok(Vec::new());
        }
        if !self.valid(first) {
            return Err(bad(format!("cluster {first} out of range")));
        }
        if contiguous {
            let n = want.ok_or_else(|| bad("a contiguous run without a length"))?;
            if u64::from(first) - 2 + n > self.clusters {
                return Err(bad("a file runs past the cluster heap"));
            }
            return Ok((0..n as u32).map(|i| first + i).collect());
        }
        let mut out = vec![first];
        let mut c = first;
        while want.is_none_or(|w| (out.len() as u64) < w) {
            let next = le32(
                &read_vec(self.dev.as_ref(), self.fat_at + u64::from(c) * 4, 4)
                    .map_err(|e| io_err("exFAT FAT", e))?,
                0,
            );
            if next >= 0xFFFF_FFF8 {
                if want.is_some() {
                    return Err(bad("a cluster chain ends before its file does"));
                }
                break;
            }
            if !self.valid(next) || out.len() as u64 > self.clusters {
                return Err(bad(format!(
                    "cluster chain through {next} is broken or loops"
                )));
            }
            out.push(next);
            c = next;
        }
        Ok(out)
    }

    fn read_cluster(&self, c: u32, buf: &mut [u8]) -> io::Result<()> {
        self.dev
            .read_at(buf, self.heap + (u64::from(c) - 2) * self.cluster)
    }

    /// The entry sets of a directory.
    fn list_dir(
        &self,
        first: u32,
        contiguous: bool,
        len: Option<u64>,
    ) -> Result<Vec<Node>, FilesError> {
        let mut raw = Vec::new();
        let mut buf = vec![0u8; self.cluster as usize];
        'read: for c in self.chain(first, contiguous, len)? {
            self.read_cluster(c, &mut buf)
                .map_err(|e| io_err("exFAT directory", e))?;
            for e in buf.chunks_exact(32) {
                if e[0] == 0 {
                    break 'read;
                }
                raw.extend_from_slice(e);
            }
        }
        let mut out = Vec::new();
        let mut i = 0;
        while i + 32 <= raw.len() {
            let e = &raw[i..i + 32];
            if e[0] != 0x85 {
                i += 32;
                continue;
            }
            let count = usize::from(e[1]);
            let set_len = 32 * (count + 1);
            if count < 2 || i + set_len > raw.len() {
                return Err(bad("a directory entry set is cut short"));
            }
            let set = &raw[i..i + set_len];
            // The set checksum covers every byte of the set but its own field.
            let mut sum: u16 = 0;
            for (k, &b) in set.iter().enumerate() {
                if k == 2 || k == 3 {
                    continue;
                }
                sum = sum.rotate_right(1).wrapping_add(u16::from(b));
            }
            if sum != le16(set, 2) {
                return Err(bad("a directory entry set's checksum does not match"));
            }
            let stream = &set[32..64];
            if stream[0] != 0xC0 {
                return Err(bad("a file entry without its stream extension"));
            }
            let name_len = usize::from(stream[3]);
            let mut units = Vec::with_capacity(name_len);
            for n in set[64..].chunks_exact(32).filter(|n| n[0] == 0xC1) {
                for k in 0..15 {
                    if units.len() < name_len {
                        units.push(le16(n, 2 + 2 * k));
                    }
                }
            }
            out.push(Node {
                name: String::from_utf16_lossy(&units),
                dir: le16(e, 4) & 0x10 != 0,
                first: le32(stream, 20),
                contiguous: stream[1] & 2 != 0,
                valid_len: le64(stream, 8),
                len: le64(stream, 24),
            });
            i += set_len;
        }
        Ok(out)
    }

    fn root_node(&self) -> Node {
        Node {
            name: "/".into(),
            dir: true,
            first: self.root,
            contiguous: false,
            valid_len: 0,
            len: 0,
        }
    }

    fn children(&self, n: &Node) -> Result<Vec<Node>, FilesError> {
        if n.name == "/" && n.len == 0 {
            self.list_dir(n.first, false, None)
        } else {
            self.list_dir(n.first, n.contiguous, Some(n.len))
        }
    }

    /// What `path` names.
    fn walk(&self, path: &str) -> Result<Node, FilesError> {
        let mut cur = self.root_node();
        for name in path.split('/').filter(|c| !c.is_empty()) {
            if !cur.dir {
                return Err(FilesError::Kind {
                    path: path.into(),
                    why: "not a directory",
                });
            }
            let want = name.to_lowercase();
            cur = self
                .children(&cur)?
                .into_iter()
                .find(|c| c.name.to_lowercase() == want)
                .ok_or_else(|| FilesError::NotFound(path.into()))?;
        }
        Ok(cur)
    }
}

fn entry(n: &Node) -> Entry {
    Entry {
        name: n.name.clone(),
        kind: if n.dir {
            EntryKind::Dir
        } else {
            EntryKind::File
        },
        size: if n.dir { 0 } else { n.len },
        mode: None,
    }
}

/// A file's bytes: its clusters up to the valid data length, zeros after it.
struct FileReader<'a> {
    fs: &'a Exfat,
    clusters: Vec<u32>,
    valid: u64,
    len: u64,
    pos: u64,
}

impl io::Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len {
            return Ok(0);
        }
        let cl = self.fs.cluster;
        let in_cluster = self.pos % cl;
        let n = (buf.len() as u64)
            .min(cl - in_cluster)
            .min(self.len - self.pos) as usize;
        if self.pos >= self.valid {
            buf[..n].fill(0);
        } else {
            let n = n.min((self.valid - self.pos) as usize);
            let c = self.clusters[(self.pos / cl) as usize];
            let at = self.fs.heap + (u64::from(c) - 2) * cl + in_cluster;
            self.fs.dev.read_at(&mut buf[..n], at)?;
            self.pos += n as u64;
            return Ok(n);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl FileTree for Exfat {
    fn list(&self, path: &str) -> Result<Vec<Entry>, FilesError> {
        let n = self.walk(path)?;
        if !n.dir {
            return Err(FilesError::Kind {
                path: path.into(),
                why: "not a directory",
            });
        }
        let mut out: Vec<Entry> = self.children(&n)?.iter().map(entry).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn stat(&self, path: &str) -> Result<Entry, FilesError> {
        self.walk(path).map(|n| entry(&n))
    }

    fn copy(&self, path: &str, out: &mut dyn Write) -> Result<u64, FilesError> {
        let n = self.walk(path)?;
        if n.dir {
            return Err(FilesError::Kind {
                path: path.into(),
                why: "a directory",
            });
        }
        if n.valid_len > n.len {
            return Err(bad(format!("{path}: valid length past the file's end")));
        }
        let clusters = self.chain(n.first, n.contiguous, Some(n.valid_len))?;
        let mut r = FileReader {
            fs: self,
            clusters,
            valid: n.valid_len,
            len: n.len,
            pos: 0,
        };
        copy_all(path, &mut r, out)
    }
}
