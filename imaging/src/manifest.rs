//! The image manifest: what a disk looked like and which chunks rebuild it.
//!
//! A manifest is JSON (human-readable, diffable, and its schema is easy to evolve), identified by
//! the BLAKE3 hash of its bytes as stored. [`Manifest::decode`] treats its input as untrusted:
//! every offset, length, extent and chunk reference is checked before anything acts on it.
//!
//! Layout: the disk is a set of [`Area`]s (the bytes outside every partition, then each
//! partition; or the whole device for a bare filesystem). Each area is cut into fixed regions
//! of `chunk_size` bytes counted from the area's start, so a partition's chunks are the same
//! whether it was captured alone or inside its disk. A region holding a used byte has one chunk:
//! the region's bytes with every unused byte zeroed, zstd-compressed, named by the BLAKE3 hash of
//! the uncompressed bytes.

use serde::{Deserialize, Serialize};

use crate::extent::ExtentMap;
use crate::fs::FsKind;
use crate::table::{Layout, TableKind};

/// The `format` field of every manifest.
pub const FORMAT: &str = "drover-image";
/// The manifest version this build writes; it reads this and every older one.
pub const VERSION: u32 = 1;
/// Default chunk (region) size: 4 MiB of disk address space. Large enough that per-chunk
/// overhead (a file, a hash, a network round trip) is small, small enough that a changed file
/// dirties little and that the multicast engine's blocks stay short.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;

/// A BLAKE3 hash, as 64 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The placeholder of a chunk not read yet ([`crate::capture::outline`]): all zeros, which
    /// no data hashes to in practice.
    pub const PENDING: Self = Self([0; 32]);

    /// The hash of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(out))
    }
}

impl std::fmt::Display for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

/// What an area of the disk is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AreaKind {
    /// The bytes outside every partition of a partitioned disk (boot code, tables, gaps, EBRs).
    Outside,
    /// A partition, by its number in [`Layout::partitions`].
    Partition {
        /// The partition's number.
        number: u32,
    },
    /// The whole device, which holds one filesystem (or unknown data) from byte 0.
    Whole,
}

/// What the used-block scan found in an area.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsInfo {
    /// The filesystem whose allocation data was used (`unknown` for raw).
    pub kind: FsKind,
    /// The filesystem the signature suggested (differs from `kind` after a fallback).
    pub detected: FsKind,
    /// Allocation unit in bytes (0 for raw).
    pub block_size: u32,
    /// The filesystem's size in bytes.
    pub fs_size: u64,
    /// Volume label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Why the raw fallback was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// The volumes inside (an LVM2 PV's logical volumes), each with how it was read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<crate::fs::Volume>,
}

/// One stored chunk of an area.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Region number within the area (the region starts at `index * chunk_size`).
    pub index: u64,
    /// BLAKE3 of the region's plaintext (unused bytes zeroed).
    pub hash: Hash,
    /// Bytes the chunk takes in the store (compressed).
    pub stored: u64,
}

/// A contiguous range of the disk with its used bytes and chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Area {
    /// What the area is.
    #[serde(flatten)]
    pub kind: AreaKind,
    /// First byte on the disk.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// The filesystem found (absent for the outside area).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<FsInfo>,
    /// Used bytes, relative to `offset`.
    pub used: ExtentMap,
    /// One chunk per region holding a used byte, by index.
    pub chunks: Vec<ChunkRef>,
}

impl Area {
    /// The length of region `index` (the last one may be short).
    pub fn region_len(&self, index: u64, chunk_size: u64) -> u64 {
        (self.len - index * chunk_size).min(chunk_size)
    }

    /// Whether the area was stored as a raw copy (no allocation data was used): every byte of
    /// it is restored, the all-zero regions that have no chunk as zeros.
    pub fn is_raw_copy(&self) -> bool {
        match self.kind {
            AreaKind::Outside => false,
            AreaKind::Partition { .. } | AreaKind::Whole => {
                self.fs.as_ref().is_none_or(|f| f.kind == FsKind::Unknown)
            }
        }
    }

    /// The bytes (relative to `offset`) that a restore writes as zeros because the source held
    /// zeros there and no chunk carries them: for a raw copy, every region without a chunk; for
    /// a filesystem read through its allocation data, the zero regions of the stretch between
    /// the filesystem's end and the partition's end (kept raw too). Unused blocks of a
    /// filesystem are not in it: the filesystem never reads them. Derived from the fields every
    /// manifest version has, so older images restore exactly too.
    pub fn zero_fill(&self) -> ExtentMap {
        let from = match (&self.kind, &self.fs) {
            (AreaKind::Outside, _) => return ExtentMap::new(),
            _ if self.is_raw_copy() => 0,
            (_, Some(f)) => f.fs_size.min(self.len),
            (_, None) => 0,
        };
        let mut fill = self.used.gaps(from, self.len);
        // Volumes stored as raw copies (inside a read container) are restored exactly too.
        for v in self.fs.iter().flat_map(|f| &f.volumes) {
            if v.is_raw_copy() {
                for e in v.extents.iter() {
                    let end = e.end().min(from).min(self.len);
                    if e.start < end {
                        fill = fill.union(&self.used.gaps(e.start, end));
                    }
                }
            }
        }
        fill
    }
}

/// Counters of the capture that made the image.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CaptureStats {
    /// Chunks this capture added to the store (the others were there already).
    pub new_chunks: u64,
    /// Stored bytes of those new chunks.
    pub new_bytes: u64,
    /// Seconds the capture took.
    #[serde(default)]
    pub seconds: f64,
}

/// An image manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// The manifest version ([`VERSION`] for new images).
    pub version: u32,
    /// The image's name (several versions may share it).
    pub name: String,
    /// Version number under that name, from 1.
    pub name_version: u32,
    /// Capture time, seconds since the Unix epoch.
    pub created: u64,
    /// The device or file it was captured from.
    pub source: String,
    /// Size of the source in bytes.
    pub disk_size: u64,
    /// Region size in bytes.
    pub chunk_size: u64,
    /// The partition table, with its raw sectors.
    pub table: Layout,
    /// Raw bytes of the primary table structures (MBR sector; for GPT also the primary header
    /// and entry array), hex. Restore rewrites the GPT from them for a target of another size.
    #[serde(default, with = "hex_bytes")]
    pub table_raw: Vec<u8>,
    /// GPT only: the raw backup entries and header, hex, written as-is to a same-size target.
    #[serde(default, with = "hex_bytes")]
    pub gpt_backup_raw: Vec<u8>,
    /// The areas, outside area first, then partitions by start.
    pub areas: Vec<Area>,
    /// The smallest target this image can be restored to, in bytes.
    pub min_size: u64,
    /// Capture counters.
    #[serde(default)]
    pub stats: CaptureStats,
}

/// Why a manifest was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// In an encrypted store, the object does not open with the store's key.
    #[error("does not open with the store's key (damaged, or written with another key)")]
    Sealed,
    /// Not JSON, or not the manifest schema.
    #[error("manifest is not valid: {0}")]
    Syntax(#[from] serde_json::Error),
    /// Another format, or a newer version than this build reads.
    #[error("unsupported manifest: format {format:?} version {version} (this build reads {FORMAT:?} up to version {VERSION})")]
    Unsupported {
        /// The format found.
        format: String,
        /// The version found.
        version: u32,
    },
    /// The fields contradict each other.
    #[error("manifest is inconsistent: {0}")]
    Inconsistent(String),
}

impl Manifest {
    /// Serialises the manifest; the BLAKE3 hash of these bytes is the image id.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data into a Vec cannot fail.
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serialises");
        v.push(b'\n');
        v
    }

    /// Parses and checks a manifest from untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        #[derive(Deserialize)]
        struct Head {
            format: String,
            version: u32,
        }
        let head: Head = serde_json::from_slice(bytes)?;
        if head.format != FORMAT || head.version == 0 || head.version > VERSION {
            return Err(ManifestError::Unsupported {
                format: head.format,
                version: head.version,
            });
        }
        let m: Self = serde_json::from_slice(bytes)?;
        m.check().map_err(ManifestError::Inconsistent)?;
        Ok(m)
    }

    /// Total used bytes over every area.
    pub fn used_bytes(&self) -> u64 {
        self.areas.iter().map(|a| a.used.total()).sum()
    }

    /// Total stored (compressed) bytes of every chunk reference (shared chunks counted once
    /// per reference).
    pub fn stored_bytes(&self) -> u64 {
        self.chunks().map(|(_, c)| c.stored).sum()
    }

    /// Every chunk reference with its area.
    pub fn chunks(&self) -> impl Iterator<Item = (&Area, &ChunkRef)> {
        self.areas
            .iter()
            .flat_map(|a| a.chunks.iter().map(move |c| (a, c)))
    }

    /// Checks the manifest's internal consistency (what [`decode`](Self::decode) checks), for
    /// a manifest that arrived some other way.
    pub fn validate(&self) -> Result<(), ManifestError> {
        self.check().map_err(ManifestError::Inconsistent)
    }

    fn check(&self) -> Result<(), String> {
        let cs = self.chunk_size;
        if !(4096..=(64 << 20)).contains(&cs) || !cs.is_power_of_two() {
            return Err(format!("chunk size {cs}"));
        }
        if self.name.is_empty() {
            return Err("empty name".into());
        }
        if ![512, 1024, 2048, 4096].contains(&self.table.sector_size) {
            return Err(format!("sector size {}", self.table.sector_size));
        }
        if self.min_size > self.disk_size {
            return Err("minimum size larger than the disk".into());
        }
        for p in &self.table.partitions {
            if p.start
                .checked_add(p.size)
                .is_none_or(|e| e > self.disk_size)
            {
                return Err(format!("partition {} outside the disk", p.number));
            }
        }
        match self.table.kind {
            TableKind::Gpt => {
                let (s, l) = self
                    .table
                    .gpt_backup
                    .ok_or("GPT without a backup location")?;
                if s.checked_add(l).is_none_or(|e| e > self.disk_size)
                    || self.gpt_backup_raw.len() as u64 != l
                {
                    return Err("GPT backup location or bytes inconsistent".into());
                }
                if self.table_raw.len() < 2 * self.table.sector_size as usize {
                    return Err("GPT without its primary header".into());
                }
            }
            TableKind::Mbr => {
                if self.table_raw.len() < 512 {
                    return Err("MBR without its sector".into());
                }
            }
            TableKind::None => {}
        }
        let mut prev_end = 0;
        for (i, a) in self.areas.iter().enumerate() {
            let end = a.offset.checked_add(a.len).ok_or("area overflows")?;
            if end > self.disk_size {
                return Err(format!("area {i} ends past the disk"));
            }
            if !matches!(a.kind, AreaKind::Outside) {
                if a.offset < prev_end {
                    return Err(format!("area {i} overlaps the previous one"));
                }
                prev_end = end;
            }
            if !a.used.is_normalized() || a.used.end() > a.len {
                return Err(format!(
                    "area {i}: used map unsorted or past the area's end"
                ));
            }
            // The regions holding a used byte, in order, must be exactly the chunk indices.
            // Walked lazily against the chunk list, so a hostile map cannot make this loop
            // longer than the list itself.
            let mut chunks = a.chunks.iter().map(|c| c.index);
            let mut last = None;
            let mismatch = || {
                format!("area {i}: the chunk list does not match the regions that hold used bytes (chunks listed: {})", a.chunks.len())
            };
            for e in a.used.iter() {
                let first = (e.start / cs).max(last.map_or(0, |l: u64| l + 1));
                for r in first..=(e.end() - 1) / cs {
                    if chunks.next() != Some(r) {
                        return Err(mismatch());
                    }
                    last = Some(r);
                }
            }
            if chunks.next().is_some() {
                return Err(mismatch());
            }
        }
        Ok(())
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() % 2 != 0 || !s.is_ascii() {
            return Err(serde::de::Error::custom("odd-length or non-ASCII hex"));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_hex_round_trip() {
        let h = Hash::of(b"drover");
        assert_eq!(Hash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(Hash::from_hex("zz"), None);
        assert_eq!(Hash::from_hex(&"é".repeat(32)), None);
    }

    #[test]
    fn rejects_other_formats_and_versions() {
        let e = Manifest::decode(br#"{"format":"drover-image","version":99}"#).unwrap_err();
        assert!(e.to_string().contains("version 99"), "{e}");
        let e = Manifest::decode(br#"{"format":"other","version":1}"#).unwrap_err();
        assert!(matches!(e, ManifestError::Unsupported { .. }));
        assert!(Manifest::decode(b"\x00garbage").is_err());
    }
}
