//! An image as a BitTorrent payload: the used extents in plaintext, each a torrent "file" named
//! by its byte offset on the disk (16 hex digits), in disk order — as Clonezilla's EZIO does. A
//! piece therefore maps to fixed places on the target disk: an agent writes what it receives
//! straight to the disk and seeds from it, and an ordinary client that downloads the torrent
//! gets one file per extent, holding exactly the disk's bytes there.
//!
//! This module computes the layout, the piece hashes (SHA-1, as BitTorrent v1 needs) from any
//! reader of disk offsets ([`ImageReader`] reads them from the store), and the bencoded
//! metainfo. It does no networking; the tracker and the swarm live in the daemon and the agent.

use std::io;

use sha1::{Digest, Sha1};

use crate::manifest::{Hash, Manifest};
use crate::store::{Store, StoreError};

/// One torrent file: a used extent at `disk_offset`, `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First byte on the disk.
    pub disk_offset: u64,
    /// Bytes.
    pub len: u64,
}

impl Extent {
    /// Its name in the torrent: the disk offset in 16 hex digits.
    pub fn name(&self) -> String {
        format!("{:016x}", self.disk_offset)
    }
}

/// The payload: extents in disk order, adjacent ones merged, cut into files of at most
/// [`segment_len`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// The torrent's files, in disk (and payload) order.
    pub extents: Vec<Extent>,
    /// Payload bytes: the image's used bytes.
    pub total: u64,
    /// Bytes per piece (a power of two).
    pub piece_len: u64,
}

/// Pieces of at least 256 KiB and at most 16 MiB, about 4000 of them (a small .torrent, and
/// pieces small enough that a bad one costs little to fetch again).
pub fn piece_len_for(total: u64) -> u64 {
    (total / 4000)
        .max(1)
        .next_power_of_two()
        .clamp(256 << 10, 16 << 20)
}

/// The largest torrent file: four pieces, at least 1 MiB. Many files of a bounded size let
/// each machine of a swarm begin with a different part of the image (clients take a
/// torrent's files in name order), so they have pieces to trade from the start.
pub fn segment_len(piece_len: u64) -> u64 {
    (4 * piece_len).max(1 << 20)
}

impl Payload {
    /// The payload of `m`'s used extents.
    pub fn of(m: &Manifest) -> Self {
        let mut extents: Vec<Extent> = Vec::new();
        let mut all: Vec<(u64, u64)> = m
            .areas
            .iter()
            .flat_map(|a| a.used.iter().map(move |e| (a.offset + e.start, e.len)))
            .filter(|&(_, len)| len > 0)
            .collect();
        all.sort_unstable();
        for (start, len) in all {
            match extents.last_mut() {
                Some(last) if last.disk_offset + last.len == start => last.len += len,
                _ => extents.push(Extent {
                    disk_offset: start,
                    len,
                }),
            }
        }
        let total = extents.iter().map(|e| e.len).sum();
        let piece_len = piece_len_for(total);
        let seg = segment_len(piece_len);
        let extents = extents
            .into_iter()
            .flat_map(|e| {
                (0..e.len.div_ceil(seg)).map(move |i| Extent {
                    disk_offset: e.disk_offset + i * seg,
                    len: seg.min(e.len - i * seg),
                })
            })
            .collect();
        Self {
            extents,
            total,
            piece_len,
        }
    }

    /// Number of pieces.
    pub fn pieces(&self) -> u64 {
        self.total.div_ceil(self.piece_len)
    }

    /// Where payload bytes `[pos, pos + len)` lie on the disk: (disk offset, length) runs.
    pub fn runs(&self, mut pos: u64, mut len: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut base = 0;
        for e in &self.extents {
            if len == 0 {
                break;
            }
            if pos < base + e.len {
                let off = pos - base;
                let n = (e.len - off).min(len);
                out.push((e.disk_offset + off, n));
                pos += n;
                len -= n;
            }
            base += e.len;
        }
        out
    }

    /// SHA-1 of every piece, reading the disk bytes through `read_at(disk_offset, buf)`.
    pub fn piece_hashes(
        &self,
        mut read_at: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    ) -> io::Result<Vec<[u8; 20]>> {
        let mut out = Vec::with_capacity(self.pieces() as usize);
        let mut buf = vec![0u8; self.piece_len as usize];
        for p in 0..self.pieces() {
            let start = p * self.piece_len;
            let n = self.piece_len.min(self.total - start);
            let mut h = Sha1::new();
            for (off, len) in self.runs(start, n) {
                let b = &mut buf[..len as usize];
                read_at(off, b)?;
                h.update(&*b);
            }
            out.push(h.finalize().into());
        }
        Ok(out)
    }

    /// The bencoded info dictionary (multi-file, one file per extent, under `name`).
    pub fn info(&self, name: &str, hashes: &[[u8; 20]]) -> Vec<u8> {
        let mut b = Vec::new();
        b.push(b'd');
        bytes(&mut b, b"files");
        b.push(b'l');
        for e in &self.extents {
            b.push(b'd');
            bytes(&mut b, b"length");
            int(&mut b, e.len);
            bytes(&mut b, b"path");
            b.push(b'l');
            bytes(&mut b, e.name().as_bytes());
            b.push(b'e');
            b.push(b'e');
        }
        b.push(b'e');
        bytes(&mut b, b"name");
        bytes(&mut b, name.as_bytes());
        bytes(&mut b, b"piece length");
        int(&mut b, self.piece_len);
        bytes(&mut b, b"pieces");
        bytes(&mut b, &hashes.concat());
        // Private: clients use only the tracker (no DHT, no peer exchange).
        bytes(&mut b, b"private");
        int(&mut b, 1);
        b.push(b'e');
        b
    }
}

/// The info hash of a bencoded info dictionary.
pub fn info_hash(info: &[u8]) -> [u8; 20] {
    Sha1::digest(info).into()
}

/// A `.torrent` file: `announce` (the server's tracker) and the info dictionary.
pub fn metainfo(announce: &str, info: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.push(b'd');
    bytes(&mut b, b"announce");
    bytes(&mut b, announce.as_bytes());
    bytes(&mut b, b"info");
    b.extend_from_slice(info);
    b.push(b'e');
    b
}

/// A bencoded byte string.
pub fn bytes(b: &mut Vec<u8>, s: &[u8]) {
    b.extend_from_slice(s.len().to_string().as_bytes());
    b.push(b':');
    b.extend_from_slice(s);
}

/// A bencoded integer.
pub fn int(b: &mut Vec<u8>, n: u64) {
    b.push(b'i');
    b.extend_from_slice(n.to_string().as_bytes());
    b.push(b'e');
}

/// Decompressed chunks kept for readers of one image: the `max` most recently used.
pub struct ChunkCache {
    max: usize,
    kept: std::sync::Mutex<std::collections::VecDeque<(Hash, std::sync::Arc<Vec<u8>>)>>,
}

impl ChunkCache {
    /// A cache of at most `max` chunks (at least one).
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            kept: std::sync::Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// Chunk `hash` (`len` plaintext bytes), from the cache or decompressed from `store`
    /// (outside the lock: readers on other threads go on meanwhile).
    pub fn get(
        &self,
        store: &Store,
        hash: Hash,
        len: usize,
    ) -> Result<std::sync::Arc<Vec<u8>>, StoreError> {
        {
            let mut kept = self.kept.lock().expect("lock");
            if let Some(i) = kept.iter().position(|(h, _)| *h == hash) {
                let e = kept.remove(i).expect("present");
                let data = e.1.clone();
                kept.push_front(e);
                return Ok(data);
            }
        }
        let data = std::sync::Arc::new(store.read_chunk(&hash, len)?);
        let mut kept = self.kept.lock().expect("lock");
        if !kept.iter().any(|(h, _)| *h == hash) {
            kept.push_front((hash, data.clone()));
            kept.truncate(self.max);
        }
        Ok(data)
    }
}

/// Reads an image's disk bytes from the store, a chunk at a time, through a [`ChunkCache`].
pub struct ImageReader<'a> {
    store: &'a Store,
    manifest: &'a Manifest,
    cache: &'a ChunkCache,
}

impl<'a> ImageReader<'a> {
    /// A reader of `manifest`'s image, its chunks from `store` through `cache`.
    pub fn new(store: &'a Store, manifest: &'a Manifest, cache: &'a ChunkCache) -> Self {
        Self {
            store,
            manifest,
            cache,
        }
    }

    /// Fills `buf` with the disk's bytes at `disk_offset`; bytes no chunk holds read as zeroes.
    pub fn read_at(&self, mut disk_offset: u64, mut buf: &mut [u8]) -> Result<(), StoreError> {
        let cs = self.manifest.chunk_size;
        while !buf.is_empty() {
            // The outside area spans the whole disk around the partitions: the innermost area
            // holding the byte (the one that starts last) has it.
            let areas = &self.manifest.areas;
            let area = areas
                .iter()
                .filter(|a| (a.offset..a.offset + a.len).contains(&disk_offset))
                .max_by_key(|a| a.offset);
            let next_start = areas
                .iter()
                .map(|a| a.offset)
                .filter(|&o| o > disk_offset)
                .min()
                .unwrap_or(u64::MAX);
            let Some(area) = area else {
                // Outside every area: nothing stored there.
                let n = buf
                    .len()
                    .min(usize::try_from(next_start - disk_offset).unwrap_or(usize::MAX));
                buf[..n].fill(0);
                disk_offset += n as u64;
                buf = &mut buf[n..];
                continue;
            };
            let rel = disk_offset - area.offset;
            let index = rel / cs;
            let in_region = rel - index * cs;
            let region_len = area.region_len(index, cs);
            let n = ((region_len - in_region) as usize)
                .min(buf.len())
                .min((area.offset + area.len - disk_offset) as usize)
                .min(usize::try_from(next_start - disk_offset).unwrap_or(usize::MAX));
            match area.chunks.binary_search_by_key(&index, |c| c.index) {
                Ok(i) => {
                    let plain =
                        self.cache
                            .get(self.store, area.chunks[i].hash, region_len as usize)?;
                    buf[..n].copy_from_slice(&plain[in_region as usize..in_region as usize + n]);
                }
                Err(_) => buf[..n].fill(0),
            }
            disk_offset += n as u64;
            buf = &mut buf[n..];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(extents: &[(u64, u64)], piece_len: u64) -> Payload {
        let extents: Vec<Extent> = extents
            .iter()
            .map(|&(disk_offset, len)| Extent { disk_offset, len })
            .collect();
        Payload {
            total: extents.iter().map(|e| e.len).sum(),
            extents,
            piece_len,
        }
    }

    #[test]
    fn pieces_map_to_fixed_places_on_the_disk() {
        let p = payload(&[(4096, 1000), (10_000, 500), (20_000, 3000)], 1024);
        assert_eq!(p.pieces(), 5);
        assert_eq!(p.runs(0, 1024), vec![(4096, 1000), (10_000, 24)]);
        assert_eq!(p.runs(1024, 1024), vec![(10_024, 476), (20_000, 548)]);
        assert_eq!(p.runs(4096, 1024), vec![(22_596, 404)]);
        assert_eq!(p.runs(4500, 10), vec![]);
        // Hashes from a disk image equal SHA-1 of the concatenated extents.
        let disk: Vec<u8> = (0..30_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let hashes = p
            .piece_hashes(|off, buf| {
                buf.copy_from_slice(&disk[off as usize..off as usize + buf.len()]);
                Ok(())
            })
            .unwrap();
        let cat: Vec<u8> = [
            &disk[4096..5096],
            &disk[10_000..10_500],
            &disk[20_000..23_000],
        ]
        .concat();
        let want: Vec<[u8; 20]> = cat.chunks(1024).map(|c| Sha1::digest(c).into()).collect();
        assert_eq!(hashes, want);
    }

    #[test]
    fn a_captured_image_reads_back_through_the_store_as_its_payload() {
        use crate::capture::{capture, CaptureOptions};
        use crate::device::{BlockDevice, MemDevice};
        use crate::progress::NoProgress;
        // A bare disk (no table, no filesystem): the raw reader keeps the non-zero regions.
        let mut disk = vec![0u8; 8 << 20];
        for (start, len) in [(0usize, 4096usize), (1 << 20, 2_600_000), (5 << 20, 4096)] {
            for (i, b) in disk[start..start + len].iter_mut().enumerate() {
                *b = (i % 253) as u8 + 1;
            }
        }
        let dev = MemDevice::new(disk.clone());
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut o = CaptureOptions::new("t");
        o.chunk_size = 1 << 20;
        o.check_space = false;
        let m = capture(&dev, "mem", &store, &o, &NoProgress)
            .unwrap()
            .manifest;
        let p = Payload::of(&m);
        assert_eq!(p.total, m.used_bytes());
        // Every non-zero byte is in the payload; the files are sorted, disjoint and at most
        // a segment long.
        for w in p.extents.windows(2) {
            assert!(w[0].disk_offset + w[0].len <= w[1].disk_offset, "{w:?}");
        }
        assert!(p.extents.iter().all(|e| e.len <= segment_len(p.piece_len)));
        // The 2.6 MB region is cut into 1 MiB files named by their own offsets.
        assert!(p.extents.len() >= 5, "{:?}", p.extents);
        assert!(p.extents.iter().any(|e| e.disk_offset == 2 << 20));
        let covered = |i: u64| {
            p.extents
                .iter()
                .any(|e| (e.disk_offset..e.disk_offset + e.len).contains(&i))
        };
        assert!(disk
            .iter()
            .enumerate()
            .all(|(i, &b)| b == 0 || covered(i as u64)));
        // The store gives the disk's bytes, so the piece hashes are the disk's.
        let cache = ChunkCache::new(2);
        let r = ImageReader::new(&store, &m, &cache);
        let from_store = p
            .piece_hashes(|off, buf| r.read_at(off, buf).map_err(io::Error::other))
            .unwrap();
        let from_disk = p
            .piece_hashes(|off, buf| dev.read_at(buf, off).map_err(io::Error::other))
            .unwrap();
        assert_eq!(from_store, from_disk);
        assert_eq!(from_store.len() as u64, p.pieces());
    }

    #[test]
    fn piece_sizes_scale_with_the_image() {
        assert_eq!(piece_len_for(0), 256 << 10);
        assert_eq!(piece_len_for(256 << 20), 256 << 10);
        assert_eq!(piece_len_for(8 << 30), 4 << 20);
        assert_eq!(piece_len_for(1 << 40), 16 << 20);
    }

    #[test]
    fn metainfo_is_bencoded_with_sorted_keys() {
        let p = payload(&[(4096, 3)], 262_144);
        let info = p.info("lab", &[[0xab; 20]]);
        let mut want = b"d5:filesld6:lengthi3e4:pathl16:0000000000001000eee4:name3:lab12:piece lengthi262144e6:pieces20:".to_vec();
        want.extend_from_slice(&[0xab; 20]);
        want.extend_from_slice(b"7:privatei1ee");
        assert_eq!(info, want);
        let t = metainfo("http://10.0.0.1:8080/announce", &info);
        assert!(t.starts_with(b"d8:announce29:http://10.0.0.1:8080/announce4:infod5:files"));
        assert!(t.ends_with(b"ee"));
        assert_eq!(info_hash(&info), <[u8; 20]>::from(Sha1::digest(&info)));
    }
}
