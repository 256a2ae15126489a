//! [`ImageDisk`]: an image read as the disk it was captured from, at any offset.
//!
//! Every byte of the disk comes from the one place a restore onto a zeroed disk of the same
//! size would put it: a partition's bytes from its area's chunks, the bytes between partitions
//! from the outside area's, the GPT backup from the manifest, and everything no chunk carries
//! (unused blocks, zero stretches of raw copies) as zeros. Chunks are read from the store on
//! demand, checked against their hashes by the store, and kept in a small LRU cache of
//! plaintexts so that a filesystem's many small reads inside one chunk cost one store read.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex};

use crate::device::BlockDevice;
use crate::manifest::{Area, AreaKind, Hash, Manifest};
use crate::store::Store;
use crate::table::TableKind;

/// Default bytes of chunk plaintexts an [`ImageDisk`] keeps: 16 chunks of the default size.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// An image as a read-only [`BlockDevice`] of the captured disk's size.
pub struct ImageDisk {
    m: Arc<Manifest>,
    store: Store,
    /// Area indices of the partitions (and a whole-device area), by offset: non-overlapping.
    parts: Vec<usize>,
    /// The outside area, if the image has one.
    outside: Option<usize>,
    /// The GPT backup's place and bytes (written by a restore to a same-size disk).
    gpt_backup: Option<(u64, Arc<[u8]>)>,
    cache: Mutex<Lru>,
    stats: Mutex<ReadCounts>,
}

/// How an [`ImageDisk`] was read so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCounts {
    /// Chunks read from the store (cache misses).
    pub chunk_reads: u64,
    /// Reads answered from the cache.
    pub cache_hits: u64,
}

/// Chunk plaintexts by hash, least recently used first out, bounded in bytes.
struct Lru {
    max: u64,
    held: u64,
    map: HashMap<Hash, Arc<Vec<u8>>>,
    order: VecDeque<Hash>,
}

impl Lru {
    fn get(&mut self, h: &Hash) -> Option<Arc<Vec<u8>>> {
        let v = self.map.get(h)?.clone();
        if let Some(i) = self.order.iter().position(|x| x == h) {
            self.order.remove(i);
        }
        self.order.push_back(*h);
        Some(v)
    }

    fn put(&mut self, h: Hash, v: Arc<Vec<u8>>) {
        if self.map.contains_key(&h) {
            return;
        }
        self.held += v.len() as u64;
        self.map.insert(h, v);
        self.order.push_back(h);
        // Keep at least the newest chunk, whatever the bound.
        while self.held > self.max && self.order.len() > 1 {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(v) = self.map.remove(&old) {
                self.held -= v.len() as u64;
            }
        }
    }
}

impl ImageDisk {
    /// Opens image `m` of `store`, caching up to `cache_bytes` of chunk plaintexts.
    pub fn new(m: Manifest, store: Store, cache_bytes: u64) -> Self {
        let mut parts: Vec<usize> = (0..m.areas.len())
            .filter(|&i| !matches!(m.areas[i].kind, AreaKind::Outside))
            .collect();
        parts.sort_by_key(|&i| m.areas[i].offset);
        let outside = m
            .areas
            .iter()
            .position(|a| matches!(a.kind, AreaKind::Outside));
        let gpt_backup = match (m.table.kind, m.table.gpt_backup) {
            (TableKind::Gpt, Some((start, _))) => Some((start, m.gpt_backup_raw.clone().into())),
            _ => None,
        };
        Self {
            m: Arc::new(m),
            store,
            parts,
            outside,
            gpt_backup,
            cache: Mutex::new(Lru {
                max: cache_bytes,
                held: 0,
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
            stats: Mutex::new(ReadCounts::default()),
        }
    }

    /// The image's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.m
    }

    /// How the image was read so far.
    pub fn read_counts(&self) -> ReadCounts {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The area that holds disk byte `o`, and how many bytes from `o` stay in it (or in the
    /// gap before the next partition, for the outside area).
    fn area_at(&self, o: u64) -> (Option<&Area>, u64) {
        let areas = &self.m.areas;
        let i = self.parts.partition_point(|&i| areas[i].offset <= o);
        if i > 0 {
            let a = &areas[self.parts[i - 1]];
            if o < a.offset + a.len {
                return (Some(a), a.offset + a.len - o);
            }
        }
        let next = self
            .parts
            .get(i)
            .map_or(self.m.disk_size, |&n| areas[n].offset);
        let a = self.outside.map(|i| &areas[i]);
        (
            a.filter(|a| o >= a.offset && o < a.offset + a.len),
            next - o,
        )
    }

    /// The plaintext of chunk `index` of area `a`, if it has one.
    fn chunk(&self, a: &Area, index: u64) -> io::Result<Option<Arc<Vec<u8>>>> {
        let Ok(k) = a.chunks.binary_search_by_key(&index, |c| c.index) else {
            return Ok(None);
        };
        let h = a.chunks[k].hash;
        if let Some(v) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&h) {
            self.stats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .cache_hits += 1;
            return Ok(Some(v));
        }
        let len = a.region_len(index, self.m.chunk_size) as usize;
        let v = Arc::new(
            self.store
                .read_chunk(&h, len)
                .map_err(|e| io::Error::other(format!("chunk {h}: {e}")))?,
        );
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .chunk_reads += 1;
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(h, v.clone());
        Ok(Some(v))
    }

    /// Fills `buf` with the bytes of area `a` from area offset `rel` (within the area).
    fn read_area(&self, a: &Area, buf: &mut [u8], rel: u64) -> io::Result<()> {
        let cs = self.m.chunk_size;
        let mut done = 0usize;
        while done < buf.len() {
            let at = rel + done as u64;
            let index = at / cs;
            let within = (at % cs) as usize;
            let n = (buf.len() - done).min((cs - at % cs) as usize);
            let out = &mut buf[done..done + n];
            match self.chunk(a, index)? {
                Some(p) => {
                    let src = p.get(within..within + n).ok_or_else(|| {
                        io::Error::other(format!("chunk {index} shorter than its region"))
                    })?;
                    out.copy_from_slice(src);
                }
                None => out.fill(0),
            }
            done += n;
        }
        Ok(())
    }
}

impl BlockDevice for ImageDisk {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.m.disk_size)
        {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at {offset} past the image's disk ({} bytes)",
                    buf.len(),
                    self.m.disk_size
                ),
            ));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let o = offset + done as u64;
            let (area, left) = self.area_at(o);
            let n = (buf.len() - done).min(left.max(1) as usize);
            let out = &mut buf[done..done + n];
            match area {
                Some(a) => self.read_area(a, out, o - a.offset)?,
                None => out.fill(0),
            }
            done += n;
        }
        if let Some((start, raw)) = &self.gpt_backup {
            overlay(buf, offset, raw, *start);
        }
        Ok(())
    }

    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(crate::device::read_only("an image"))
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> u64 {
        self.m.disk_size
    }

    fn sector_size(&self) -> u32 {
        self.m.table.sector_size
    }
}

/// Copies the part of `src` (which lies at disk offset `at`) that falls inside `buf` (at disk
/// offset `offset`).
fn overlay(buf: &mut [u8], offset: u64, src: &[u8], at: u64) {
    let start = offset.max(at);
    let end = (offset + buf.len() as u64).min(at + src.len() as u64);
    if start < end {
        buf[(start - offset) as usize..(end - offset) as usize]
            .copy_from_slice(&src[(start - at) as usize..(end - at) as usize]);
    }
}
