//! qcow2 (version 3), QEMU's disk image format: a writer that stores only non-zero clusters
//! ([`Qcow2Writer`]) and a reader that serves a qcow2 file as a [`BlockDevice`]
//! ([`Qcow2File`]).
//!
//! The writer puts the data clusters first, in the order they arrive (from several threads),
//! and the metadata last: the L2 tables, the L1 table, then refcount blocks counting every
//! cluster of the file once. Every cluster is referenced exactly once, so every table entry
//! carries the "copied" flag, and `qemu-img check` finds no leak and no error.
//!
//! The reader takes plain and deflate-compressed clusters and zero clusters; it refuses, by
//! name, what it does not read: a backing file, encryption, an external data file, extended
//! L2 entries, zstd compression, snapshots' internal state is ignored (the active layer is
//! read). Every offset from the file is checked against the file's size.
#![allow(clippy::big_endian_bytes)] // qcow2's fields are big-endian.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use crate::device::BlockDevice;

const MAGIC: u32 = 0x5146_49fb; // "QFI\xfb"
/// Bits of a cluster's size the writer uses: 64 KiB, QEMU's default.
pub const CLUSTER_BITS: u32 = 16;
/// The writer's cluster size.
pub const CLUSTER: u64 = 1 << CLUSTER_BITS;
const HEADER_LEN: u32 = 104;
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
const ZERO: u64 = 1;
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// 16-bit refcounts (refcount_order 4), QEMU's default.
const REFCOUNT_ORDER: u32 = 4;

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

fn bad(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("qcow2: {}", why.into()))
}

/// Whether `head` (a file's first bytes) starts a qcow2 image.
pub fn is_qcow2(head: &[u8]) -> bool {
    head.len() >= 4 && be32(head, 0) == MAGIC
}

/// Writes a qcow2 image of a disk of a given size, one cluster at a time, from any thread.
pub struct Qcow2Writer {
    file: File,
    size: u64,
    state: Mutex<WriterState>,
}

struct WriterState {
    /// The next free host cluster (cluster 0 is the header).
    next: u64,
    /// Guest cluster -> host cluster.
    map: HashMap<u64, u64>,
}

impl Qcow2Writer {
    /// Creates (truncates) `path` for a disk of `size` bytes.
    pub fn create(path: &Path, size: u64) -> io::Result<Self> {
        let file = File::create(path)?;
        Ok(Self {
            file,
            size,
            state: Mutex::new(WriterState {
                next: 1,
                map: HashMap::new(),
            }),
        })
    }

    /// Stores guest cluster `index` (the disk's bytes `index * CLUSTER..`), `data` of at most
    /// [`CLUSTER`] bytes (a short last cluster reads as zeros after its end). A cluster not
    /// stored reads as zeros; each may be stored once.
    pub fn write_cluster(&self, index: u64, data: &[u8]) -> io::Result<()> {
        if data.len() as u64 > CLUSTER || index >= self.size.div_ceil(CLUSTER) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cluster {index} outside the disk"),
            ));
        }
        let host = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if s.map.contains_key(&index) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("cluster {index} written twice"),
                ));
            }
            let h = s.next;
            s.next += 1;
            s.map.insert(index, h);
            h
        };
        self.file.write_all_at(data, host * CLUSTER)?;
        if (data.len() as u64) < CLUSTER {
            // A full cluster on disk, so the next one starts aligned and the file is whole.
            self.file.write_all_at(
                &vec![0u8; CLUSTER as usize - data.len()],
                host * CLUSTER + data.len() as u64,
            )?;
        }
        Ok(())
    }

    /// Writes the tables and the header; returns the file's size.
    pub fn finish(self) -> io::Result<u64> {
        let s = self.state.into_inner().unwrap_or_else(|p| p.into_inner());
        let entries = CLUSTER / 8; // per L2 table
        let l1_size = self.size.div_ceil(CLUSTER * entries);
        // L2 tables, by L1 index.
        let mut l2: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
        for (&g, &h) in &s.map {
            let t = l2
                .entry(g / entries)
                .or_insert_with(|| vec![0u64; entries as usize]);
            t[(g % entries) as usize] = (h * CLUSTER) | COPIED;
        }
        let mut next = s.next;
        let mut l1 = vec![0u64; l1_size as usize];
        let mut buf = vec![0u8; CLUSTER as usize];
        for (&i, t) in &l2 {
            for (k, e) in t.iter().enumerate() {
                buf[k * 8..k * 8 + 8].copy_from_slice(&e.to_be_bytes());
            }
            self.file.write_all_at(&buf, next * CLUSTER)?;
            l1[i as usize] = (next * CLUSTER) | COPIED;
            next += 1;
        }
        let l1_offset = next * CLUSTER;
        let l1_clusters = (l1_size * 8).div_ceil(CLUSTER).max(1);
        let mut l1_bytes = vec![0u8; (l1_clusters * CLUSTER) as usize];
        for (k, e) in l1.iter().enumerate() {
            l1_bytes[k * 8..k * 8 + 8].copy_from_slice(&e.to_be_bytes());
        }
        self.file.write_all_at(&l1_bytes, l1_offset)?;
        next += l1_clusters;
        // Refcount blocks and table, which count themselves too.
        let per_block = CLUSTER * 8 / (1 << REFCOUNT_ORDER); // 32768 with 16-bit refcounts
        let (mut blocks, mut table_clusters) = (0u64, 0u64);
        loop {
            let total = next + blocks + table_clusters;
            let b = total.div_ceil(per_block);
            let t = (b * 8).div_ceil(CLUSTER).max(1);
            if b == blocks && t == table_clusters {
                break;
            }
            (blocks, table_clusters) = (b, t);
        }
        let total = next + blocks + table_clusters;
        let first_block = next;
        for b in 0..blocks {
            let mut rb = vec![0u8; CLUSTER as usize];
            for k in 0..per_block {
                let cluster = b * per_block + k;
                if cluster >= total {
                    break;
                }
                rb[(k * 2) as usize..(k * 2 + 2) as usize].copy_from_slice(&1u16.to_be_bytes());
            }
            self.file.write_all_at(&rb, (first_block + b) * CLUSTER)?;
        }
        let table_offset = (first_block + blocks) * CLUSTER;
        let mut table = vec![0u8; (table_clusters * CLUSTER) as usize];
        for b in 0..blocks {
            let at = (b * 8) as usize;
            table[at..at + 8].copy_from_slice(&((first_block + b) * CLUSTER).to_be_bytes());
        }
        self.file.write_all_at(&table, table_offset)?;

        let mut h = vec![0u8; CLUSTER as usize];
        let mut put32 = |o: usize, v: u32| h[o..o + 4].copy_from_slice(&v.to_be_bytes());
        put32(0, MAGIC);
        put32(4, 3);
        put32(20, CLUSTER_BITS);
        put32(36, l1_size as u32);
        put32(56, table_clusters as u32);
        put32(96, REFCOUNT_ORDER);
        put32(100, HEADER_LEN);
        h[24..32].copy_from_slice(&self.size.to_be_bytes());
        h[40..48].copy_from_slice(&l1_offset.to_be_bytes());
        h[48..56].copy_from_slice(&table_offset.to_be_bytes());
        // Bytes 104..112 stay zero: the end of the (empty) header extension list.
        self.file.write_all_at(&h, 0)?;
        self.file.sync_all()?;
        Ok(total * CLUSTER)
    }
}

/// A qcow2 file read as the disk it holds.
pub struct Qcow2File {
    file: File,
    file_len: u64,
    size: u64,
    cluster_bits: u32,
    l1: Vec<u64>,
    /// L2 tables read so far, by their file offset.
    l2: Mutex<HashMap<u64, std::sync::Arc<Vec<u64>>>>,
}

impl Qcow2File {
    /// Opens `path`, checking its header and reading its L1 table.
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut file = File::open(path)?;
        let file_len = file.metadata()?.len();
        let mut h = vec![0u8; 112];
        let n = file.read(&mut h)?;
        if n < 72 || be32(&h, 0) != MAGIC {
            return Err(bad("not a qcow2 image (no QFI\\xfb magic)"));
        }
        let version = be32(&h, 4);
        if !(2..=3).contains(&version) {
            return Err(bad(format!("version {version} (this reads 2 and 3)")));
        }
        if be64(&h, 8) != 0 {
            return Err(bad(
                "the image has a backing file: import the backing chain flattened (qemu-img convert -O qcow2)",
            ));
        }
        let cluster_bits = be32(&h, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(bad(format!("cluster_bits {cluster_bits}")));
        }
        let size = be64(&h, 24);
        if be32(&h, 32) != 0 {
            return Err(bad("the image is encrypted"));
        }
        if version == 3 {
            if n < 104 {
                return Err(bad("header shorter than version 3's"));
            }
            let incompatible = be64(&h, 72);
            // Bit 0 (dirty) and bit 1 (corrupt) do not change how data is read.
            let unknown = incompatible & !0b11;
            if unknown & (1 << 2) != 0 {
                return Err(bad("the image keeps its data in an external file"));
            }
            if unknown & (1 << 3) != 0 {
                return Err(bad("the image uses zstd compression (this reads deflate)"));
            }
            if unknown & (1 << 4) != 0 {
                return Err(bad("the image has extended L2 entries (subclusters)"));
            }
            if unknown != 0 {
                return Err(bad(format!("incompatible features {unknown:#x}")));
            }
        }
        let l1_size = be32(&h, 36) as u64;
        let l1_offset = be64(&h, 40);
        let l2_covers = 1u64 << (2 * cluster_bits - 3);
        if l1_size < size.div_ceil(l2_covers) || l1_size > (32 << 20) {
            return Err(bad(format!(
                "L1 table of {l1_size} entries for {size} bytes"
            )));
        }
        if l1_offset
            .checked_add(l1_size * 8)
            .is_none_or(|e| e > file_len)
        {
            return Err(bad("L1 table past the end of the file (truncated?)"));
        }
        let mut raw = vec![0u8; (l1_size * 8) as usize];
        file.read_exact_at(&mut raw, l1_offset)?;
        let l1 = raw.chunks(8).map(|c| be64(c, 0)).collect();
        Ok(Self {
            file,
            file_len,
            size,
            cluster_bits,
            l1,
            l2: Mutex::new(HashMap::new()),
        })
    }

    fn cluster(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn l2_table(&self, offset: u64) -> io::Result<std::sync::Arc<Vec<u64>>> {
        if let Some(t) = self
            .l2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&offset)
        {
            return Ok(t.clone());
        }
        let c = self.cluster();
        if offset % c != 0 || offset.checked_add(c).is_none_or(|e| e > self.file_len) {
            return Err(bad(format!(
                "L2 table at {offset} misplaced or past the file's end"
            )));
        }
        let mut raw = vec![0u8; c as usize];
        self.file.read_exact_at(&mut raw, offset)?;
        let t = std::sync::Arc::new(raw.chunks(8).map(|c| be64(c, 0)).collect::<Vec<_>>());
        let mut cache = self.l2.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(offset, t.clone());
        Ok(t)
    }

    /// Fills `out` (inside one guest cluster, from `within` bytes into it) for guest cluster
    /// `index`.
    fn read_cluster(&self, index: u64, within: u64, out: &mut [u8]) -> io::Result<()> {
        let c = self.cluster();
        let entries = c / 8;
        let l1e = self.l1[(index / entries) as usize];
        let l2_off = l1e & OFFSET_MASK;
        if l2_off == 0 {
            out.fill(0);
            return Ok(());
        }
        let e = self.l2_table(l2_off)?[(index % entries) as usize];
        if e & COMPRESSED != 0 {
            let x = 62 - (self.cluster_bits - 8);
            let host = e & ((1 << x) - 1);
            let sectors = (e >> x) & ((1 << (self.cluster_bits - 8)) - 1);
            let len = (sectors + 1) * 512 - (host & 511);
            let len = len.min(self.file_len.saturating_sub(host));
            if host >= self.file_len {
                return Err(bad(format!(
                    "compressed cluster {index} past the file's end"
                )));
            }
            let mut z = vec![0u8; len as usize];
            self.file.read_exact_at(&mut z, host)?;
            let mut plain = Vec::with_capacity(c as usize);
            flate2::read::DeflateDecoder::new(&z[..])
                .take(c)
                .read_to_end(&mut plain)
                .map_err(|e| bad(format!("compressed cluster {index} does not inflate: {e}")))?;
            plain.resize(c as usize, 0);
            out.copy_from_slice(&plain[within as usize..within as usize + out.len()]);
            return Ok(());
        }
        let host = e & OFFSET_MASK;
        if e & ZERO != 0 || host == 0 {
            out.fill(0);
            return Ok(());
        }
        if host % c != 0
            || host
                .checked_add(c)
                .is_none_or(|end| end > self.file_len + c)
        {
            return Err(bad(format!(
                "cluster {index} at {host}: misplaced or past the file's end"
            )));
        }
        // A last cluster may be short in the file: what is missing reads as zeros.
        let avail = self
            .file_len
            .saturating_sub(host + within)
            .min(out.len() as u64) as usize;
        self.file.read_exact_at(&mut out[..avail], host + within)?;
        out[avail..].fill(0);
        Ok(())
    }
}

impl BlockDevice for Qcow2File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.size)
        {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let c = self.cluster();
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let n = (buf.len() - done).min((c - at % c) as usize);
            self.read_cluster(at / c, at % c, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(crate::device::read_only("a qcow2 image"))
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> u64 {
        self.size
    }
}
