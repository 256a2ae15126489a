//! Restore: an image from the store onto a disk, partition or file, and verification of the
//! store's chunks.
//!
//! Restore checks the target (size, sector size, not mounted, every chunk present) before it
//! writes a byte, then writes only the used extents, chunk by chunk, each chunk's hash checked
//! before any of it is written. An area stored as a raw copy is restored byte for byte: its
//! all-zero regions, which have no chunk, are zeroed on the target ([`Area::zero_fill`]), so
//! nothing the target held before survives inside it. A GPT is rewritten for the target's size
//! (backup header and entries at its end, protective MBR resized); on a same-size target the
//! captured backup is written back as it was. Everything is synced at the end.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::device::BlockDevice;
use crate::manifest::{Area, ChunkRef, Hash, Manifest};
use crate::progress::Progress;
use crate::store::{Store, StoreError};
use crate::table::{self, TableError, TableKind};

/// Restore errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The target is smaller than the image needs.
    #[error(
        "target holds {target} bytes but image {image:?} needs at least {min} bytes ({} MiB)",
        min.div_ceil(1 << 20)
    )]
    TooSmall {
        /// The image.
        image: String,
        /// Minimum size in bytes.
        min: u64,
        /// Target size in bytes.
        target: u64,
    },
    /// The target's logical sector size differs from the source's.
    #[error("target has {target}-byte logical sectors but the image was captured with {image}-byte sectors")]
    SectorSize {
        /// The image's sector size.
        image: u32,
        /// The target's.
        target: u32,
    },
    /// The store failed or a chunk is missing or corrupt.
    #[error("image {image:?}")]
    Store {
        /// The image.
        image: String,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// Writing the target failed.
    #[error("writing the target")]
    Write(#[source] io::Error),
    /// The partition table could not be laid out on the target.
    #[error(transparent)]
    Table(#[from] TableError),
    /// One of several targets failed (1-based, in the order given).
    #[error("target {target}")]
    OnTarget {
        /// Which target.
        target: usize,
        /// What went wrong there.
        #[source]
        source: Box<Self>,
    },
    /// A chunk read back from a target does not match its hash.
    #[error("chunk {index} of area {area} reads back wrong")]
    ReadBack {
        /// The area's number in the manifest.
        area: usize,
        /// The chunk's region in it.
        index: u64,
    },
}

/// What a restore did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Restored {
    /// Bytes written to the target (used extents plus the table).
    pub bytes_written: u64,
    /// Chunks read and checked.
    pub chunks: u64,
    /// Whether the GPT was rewritten for a target of another size.
    pub gpt_relocated: bool,
    /// Bytes of raw-copied areas that held zeros on the source and were zeroed on the target.
    pub bytes_zeroed: u64,
}

/// What [`finish`] did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Finished {
    /// Bytes of the partition table written (the GPT backup, or the whole GPT when it moved).
    pub table_bytes: u64,
    /// Whether the GPT was rewritten for a target of another size.
    pub gpt_relocated: bool,
    /// Bytes zeroed in raw-copied areas.
    pub bytes_zeroed: u64,
}

/// Worker threads: one per core.
fn workers(threads: usize) -> usize {
    if threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        threads
    }
}

/// Runs `f` over every chunk reference of `m` on `threads` workers, stopping at the first error.
fn for_each_chunk<E: Send>(
    m: &Manifest,
    threads: usize,
    f: impl Fn(&Area, &ChunkRef) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let all: Vec<(&Area, &ChunkRef)> = m.chunks().collect();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let err: Mutex<Option<E>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers(threads).min(all.len().max(1)) {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((a, c)) = all.get(i) else { return };
                    if let Err(e) = f(a, c) {
                        stop.store(true, Ordering::Relaxed);
                        err.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    match err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Checks that `target` can take image `m` (named `image` in messages): sector size and size.
pub fn check_target(
    image: &str,
    m: &Manifest,
    target: &dyn BlockDevice,
) -> Result<(), RestoreError> {
    if m.table.kind != TableKind::None && target.sector_size() != m.table.sector_size {
        return Err(RestoreError::SectorSize {
            image: m.table.sector_size,
            target: target.sector_size(),
        });
    }
    if target.len() < m.min_size {
        return Err(RestoreError::TooSmall {
            image: image.into(),
            min: m.min_size,
            target: target.len(),
        });
    }
    Ok(())
}

/// Writes the used extents of chunk `c` of area `a`, given its plaintext `plain` (already
/// checked against `c.hash`), onto `target`; returns the bytes written.
pub fn write_chunk(
    m: &Manifest,
    a: &Area,
    c: &ChunkRef,
    plain: &[u8],
    target: &dyn BlockDevice,
) -> Result<u64, RestoreError> {
    let rs = c.index * m.chunk_size;
    let len = a.region_len(c.index, m.chunk_size);
    let mut written = 0;
    for e in a.used.clip(rs, rs + len) {
        let o = (e.start - rs) as usize;
        target
            .write_at(&plain[o..o + e.len as usize], a.offset + e.start)
            .map_err(RestoreError::Write)?;
        written += e.len;
    }
    Ok(written)
}

/// Reads back the used extents of chunk `c` of area `a` from `target` and checks their hash:
/// what a restore wrote is what the image holds.
pub fn check_written(
    m: &Manifest,
    a: &Area,
    c: &ChunkRef,
    target: &dyn BlockDevice,
) -> Result<bool, RestoreError> {
    let rs = c.index * m.chunk_size;
    let len = a.region_len(c.index, m.chunk_size);
    let mut plain = vec![0u8; len as usize];
    for e in a.used.clip(rs, rs + len) {
        let o = (e.start - rs) as usize;
        target
            .read_at(&mut plain[o..o + e.len as usize], a.offset + e.start)
            .map_err(RestoreError::Write)?;
    }
    Ok(Hash::of(&plain) == c.hash)
}

/// Reads back the used extents of chunk `c` of area `a` from `target` and compares them with
/// `plain`, the chunk's plaintext already checked against its hash: what [`check_written`]
/// proves, without hashing again.
pub fn written_matches(
    m: &Manifest,
    a: &Area,
    c: &ChunkRef,
    plain: &[u8],
    target: &dyn BlockDevice,
) -> Result<bool, RestoreError> {
    let rs = c.index * m.chunk_size;
    let len = a.region_len(c.index, m.chunk_size);
    let mut buf = Vec::new();
    for e in a.used.clip(rs, rs + len) {
        let o = (e.start - rs) as usize;
        buf.resize(e.len as usize, 0);
        target
            .read_at(&mut buf, a.offset + e.start)
            .map_err(RestoreError::Write)?;
        if buf[..] != plain[o..o + e.len as usize] {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Zeroes every byte of `m`'s raw-copied areas that the source held as zeros and no chunk
/// carries ([`Area::zero_fill`]), up to the target's end; returns the bytes zeroed. Touches
/// nothing a chunk writes, so it may run before, between or after the chunks.
pub fn zero_fill(m: &Manifest, target: &dyn BlockDevice) -> Result<u64, RestoreError> {
    let mut zeroed = 0;
    for (start, end) in zero_ranges(m, target.len()) {
        target
            .write_zeroes(start, end - start)
            .map_err(RestoreError::Write)?;
        zeroed += end - start;
    }
    Ok(zeroed)
}

/// The disk ranges `start..end` of every area's zero fill, clipped to a target of `len` bytes.
fn zero_ranges(m: &Manifest, len: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
    m.areas.iter().flat_map(move |a| {
        a.zero_fill()
            .iter()
            .map(|e| (a.offset + e.start, (a.offset + e.end()).min(len)))
            .filter(|(start, end)| start < end)
            .collect::<Vec<_>>()
    })
}

/// The first byte of a raw-copied area's zero fill that does not read as zero on `target`:
/// the read-back check of what [`zero_fill`] did.
pub fn check_zero_fill(
    m: &Manifest,
    target: &dyn BlockDevice,
) -> Result<Option<u64>, RestoreError> {
    let mut buf = vec![0u8; 1 << 20];
    for (mut pos, end) in zero_ranges(m, target.len()) {
        while pos < end {
            let n = (end - pos).min(buf.len() as u64) as usize;
            target
                .read_at(&mut buf[..n], pos)
                .map_err(RestoreError::Write)?;
            if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
                return Ok(Some(pos + i as u64));
            }
            pos += n as u64;
        }
    }
    Ok(None)
}

/// Finishes a restore once every chunk is written: the zero fill of raw-copied areas, the GPT
/// backup (rewritten for a target of another size), then a sync.
pub fn finish(m: &Manifest, target: &dyn BlockDevice) -> Result<Finished, RestoreError> {
    let mut out = Finished {
        bytes_zeroed: zero_fill(m, target)?,
        ..Finished::default()
    };
    if m.table.kind == TableKind::Gpt {
        // `validate` checked that a GPT manifest has its backup location and bytes.
        let (start, len) = m.table.gpt_backup.unwrap_or_default();
        if target.len() == m.disk_size {
            target
                .write_at(&m.gpt_backup_raw, start)
                .map_err(RestoreError::Write)?;
            out.table_bytes = len;
        } else {
            table::relocate_gpt(target, &m.table_raw, m.table.sector_size)?;
            out.table_bytes = 2 * m.table_raw.len() as u64;
            out.gpt_relocated = true;
        }
    }
    target.sync().map_err(RestoreError::Write)?;
    Ok(out)
}

/// Restores the image `m` (named `image` in messages) from `store` onto `target`.
pub fn restore(
    image: &str,
    m: &Manifest,
    store: &Store,
    target: &dyn BlockDevice,
    threads: usize,
    progress: &dyn Progress,
) -> Result<Restored, RestoreError> {
    let mut all = restore_to_all(image, m, store, &[target], threads, false, progress).map_err(
        |e| match e {
            RestoreError::OnTarget { source, .. } => *source,
            e => e,
        },
    )?;
    Ok(all.remove(0))
}

/// Restores the image `m` onto every one of `targets` at once: each chunk is read from the
/// store and checked once, then written to every target; with `read_back`, each target's
/// bytes of it are read back and checked against its hash. Every target is checked before a
/// byte is written to any. A failure names the target (1-based, [`RestoreError::OnTarget`]).
pub fn restore_to_all(
    image: &str,
    m: &Manifest,
    store: &Store,
    targets: &[&dyn BlockDevice],
    threads: usize,
    read_back: bool,
    progress: &dyn Progress,
) -> Result<Vec<Restored>, RestoreError> {
    let store_err = |source| RestoreError::Store {
        image: image.to_string(),
        source,
    };
    let on = |target: usize| {
        move |e: RestoreError| RestoreError::OnTarget {
            target: target + 1,
            source: Box::new(e),
        }
    };
    for (i, t) in targets.iter().enumerate() {
        check_target(image, m, *t).map_err(on(i))?;
    }
    let _lock = store.lock_shared().map_err(store_err)?;
    let mut hashes: Vec<Hash> = m.chunks().map(|(_, c)| c.hash).collect();
    hashes.sort_unstable();
    hashes.dedup();
    if let Some(h) = store.first_missing(&hashes) {
        return Err(store_err(StoreError::MissingChunk(h)));
    }
    // A remote store answers each chunk read after a round trip: more workers keep more
    // reads in flight (decompressing and writing still use the cores there are).
    let threads = match store.local_dir() {
        Some(_) => threads,
        None => threads.max(crate::store::REMOTE_PARALLEL / 2),
    };
    progress.start(m.used_bytes(), "restore");
    let cs = m.chunk_size;
    let area_of = |a: &Area| m.areas.iter().position(|b| std::ptr::eq(a, b)).unwrap_or(0);
    let written: Vec<std::sync::atomic::AtomicU64> =
        targets.iter().map(|_| Default::default()).collect();
    for_each_chunk::<RestoreError>(m, threads, |a, c| {
        let len = a.region_len(c.index, cs) as usize;
        let plain = store.read_chunk(&c.hash, len).map_err(store_err)?;
        let mut n = 0;
        for (i, t) in targets.iter().enumerate() {
            n = write_chunk(m, a, c, &plain, *t).map_err(on(i))?;
            if read_back && !written_matches(m, a, c, &plain, *t).map_err(on(i))? {
                return Err(on(i)(RestoreError::ReadBack {
                    area: area_of(a),
                    index: c.index,
                }));
            }
            written[i].fetch_add(n, Ordering::Relaxed);
        }
        progress.advance(n);
        Ok(())
    })?;
    let mut out = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let f = finish(m, *t).map_err(on(i))?;
        if read_back {
            if let Some(at) = check_zero_fill(m, *t).map_err(on(i))? {
                return Err(on(i)(RestoreError::Write(io::Error::other(format!(
                    "byte {at} should read as zero (a raw-copied area) but does not"
                )))));
            }
        }
        out.push(Restored {
            bytes_written: written[i].load(Ordering::Relaxed) + f.table_bytes,
            chunks: m.chunks().count() as u64,
            gpt_relocated: f.gpt_relocated,
            bytes_zeroed: f.bytes_zeroed,
        });
    }
    Ok(out)
}

/// A chunk that failed verification.
#[derive(Debug, Clone, Serialize)]
pub struct BadChunk {
    /// The chunk.
    pub hash: Hash,
    /// Where its region starts on the disk.
    pub disk_offset: u64,
    /// What is wrong.
    pub error: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verified {
    /// Chunk references checked.
    pub chunks: u64,
    /// Stored bytes read.
    pub stored_bytes: u64,
    /// The chunks that are missing or corrupt.
    pub bad: Vec<BadChunk>,
}

/// Re-reads, decompresses and re-hashes every chunk of `m`. Never stops early: every bad
/// chunk is listed.
pub fn verify(m: &Manifest, store: &Store, threads: usize, progress: &dyn Progress) -> Verified {
    progress.start(m.stored_bytes(), "verify");
    let threads = match store.local_dir() {
        Some(_) => threads,
        None => threads.max(crate::store::REMOTE_PARALLEL / 2),
    };
    let bad = Mutex::new(Vec::new());
    let cs = m.chunk_size;
    let _ = for_each_chunk::<()>(m, threads, |a, c| {
        if let Err(e) = store.read_chunk(&c.hash, a.region_len(c.index, cs) as usize) {
            bad.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(BadChunk {
                    hash: c.hash,
                    disk_offset: a.offset + c.index * cs,
                    error: e.to_string(),
                });
        }
        progress.advance(c.stored);
        Ok(())
    });
    let mut bad = bad.into_inner().unwrap_or_else(|p| p.into_inner());
    bad.sort_by_key(|b| b.disk_offset);
    Verified {
        chunks: m.chunks().count() as u64,
        stored_bytes: m.stored_bytes(),
        bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{capture, CaptureOptions};
    use crate::device::MemDevice;
    use crate::progress::NoProgress;
    use crate::table::DevCursor;

    const MIB: u64 = 1 << 20;

    /// A 16 MiB disk with a GPT holding two partitions of noise.
    fn gpt_disk() -> MemDevice {
        let dev = MemDevice::new(vec![0u8; (16 * MIB) as usize]);
        let mut cur = DevCursor::new(&dev);
        let mut gpt = gptman::GPT::new_from(&mut cur, 512, [7; 16]).unwrap();
        for (i, (start, end)) in [(2048u64, 8191u64), (8192, 20479)].into_iter().enumerate() {
            gpt[i as u32 + 1] = gptman::GPTPartitionEntry {
                partition_type_guid: [0x11; 16],
                unique_partition_guid: [i as u8 + 1; 16],
                starting_lba: start,
                ending_lba: end,
                attribute_bits: 0,
                partition_name: "p".into(),
            };
            let mut x = 0x1234_5678u32 ^ i as u32;
            let noise: Vec<u8> = (0..(end - start + 1) * 512)
                .map(|_| {
                    x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (x >> 24) as u8
                })
                .collect();
            dev.write_at(&noise, start * 512).unwrap();
        }
        gpt.write_into(&mut cur).unwrap();
        gptman::GPT::write_protective_mbr_into(&mut cur, 512).unwrap();
        dev
    }

    fn image(dev: &MemDevice, store: &Store) -> Manifest {
        let mut o = CaptureOptions::new("g");
        o.chunk_size = MIB;
        o.check_space = false;
        capture(dev, "mem", store, &o, &NoProgress)
            .unwrap()
            .manifest
    }

    /// A 16 MiB GPT disk whose second partition holds unknown data: noise in its second MiB
    /// only, zeros elsewhere; the first partition is noise throughout.
    fn raw_partition_disk() -> MemDevice {
        let dev = gpt_disk();
        dev.write_at(&vec![0u8; (6 * MIB) as usize], 8192 * 512)
            .unwrap();
        let mut x = 99u32;
        let noise: Vec<u8> = (0..MIB)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 24) as u8
            })
            .collect();
        dev.write_at(&noise, 8192 * 512 + MIB).unwrap();
        dev
    }

    #[test]
    fn a_raw_copy_comes_back_byte_for_byte_over_old_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let src = raw_partition_disk();
        let m = image(&src, &store);
        let p2 = &m.areas[2];
        assert!(p2.is_raw_copy(), "{:?}", p2.fs);
        assert_eq!(p2.used.total(), MIB, "only the noisy region is stored");
        assert_eq!(p2.zero_fill().total(), p2.len - MIB);
        assert!(m.areas[0].zero_fill().is_empty(), "outside area");
        for size in [16 * MIB, 32 * MIB] {
            let t = MemDevice::new(vec![0xCD; size as usize]);
            let r = restore("g", &m, &store, &t, 2, &NoProgress).unwrap();
            assert_eq!(r.bytes_zeroed, p2.len - MIB);
            let (a, b) = (src.to_vec(), t.to_vec());
            assert!(
                a[2048 * 512..20480 * 512] == b[2048 * 512..20480 * 512],
                "both partitions equal the source on a {size}-byte target"
            );
            assert_eq!(check_zero_fill(&m, &t).unwrap(), None);
            // A byte of old data left behind is found by the read-back check.
            t.write_at(&[1], 8192 * 512 + 5 * MIB + 7).unwrap();
            assert_eq!(
                check_zero_fill(&m, &t).unwrap(),
                Some(8192 * 512 + 5 * MIB + 7)
            );
        }
    }

    #[test]
    fn a_raw_whole_device_is_zero_filled_and_a_filesystem_tail_too() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut data = vec![0u8; (8 * MIB) as usize];
        data[(3 * MIB) as usize + 5] = 0x42;
        let src = MemDevice::new(data.clone());
        let m = image(&src, &store);
        assert!(m.areas[0].is_raw_copy());
        let t = MemDevice::new(vec![0xEE; (8 * MIB) as usize]);
        let r = restore("g", &m, &store, &t, 1, &NoProgress).unwrap();
        assert_eq!(r.bytes_zeroed, 7 * MIB);
        assert!(t.to_vec() == data);

        // A filesystem read through its allocation data: only the stretch after its end is
        // filled, never its unused blocks.
        let mut a = m.areas[0].clone();
        a.fs = Some(crate::manifest::FsInfo {
            kind: crate::fs::FsKind::Ext4,
            detected: crate::fs::FsKind::Ext4,
            block_size: 4096,
            fs_size: 6 * MIB,
            label: None,
            warning: None,
            volumes: Vec::new(),
        });
        assert!(!a.is_raw_copy());
        let z: Vec<_> = a.zero_fill().iter().map(|e| (e.start, e.len)).collect();
        assert_eq!(z, vec![(6 * MIB, 2 * MIB)]);

        // A volume inside it stored as a raw copy (an LVM2 thin pool's data): its zero
        // stretches are filled too, a read one's are not.
        let vol = |kind, start, len| {
            let mut extents = crate::extent::ExtentMap::new();
            extents.push(start, len);
            crate::fs::Volume {
                name: "vg/lv".into(),
                kind,
                detected: kind,
                size: len,
                used_bytes: 0,
                extents,
                label: None,
                segments: Vec::new(),
                warning: None,
            }
        };
        a.used = crate::extent::ExtentMap::new();
        a.used.push(0, MIB);
        a.used.push(2 * MIB + 4096, 4096);
        let f = a.fs.as_mut().unwrap();
        f.volumes = vec![
            vol(crate::fs::FsKind::Unknown, 2 * MIB, MIB),
            vol(crate::fs::FsKind::Ext4, 4 * MIB, MIB),
        ];
        let z: Vec<_> = a.zero_fill().iter().map(|e| (e.start, e.len)).collect();
        assert_eq!(
            z,
            vec![
                (2 * MIB, 4096),
                (2 * MIB + 8192, MIB - 8192),
                (6 * MIB, 2 * MIB)
            ]
        );
    }

    /// A device that drops every write at or past `from` (a disk that lies).
    struct Forgetful {
        inner: MemDevice,
        from: u64,
    }

    impl BlockDevice for Forgetful {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.inner.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            if offset >= self.from {
                return Ok(());
            }
            self.inner.write_at(buf, offset)
        }
        fn sync(&self) -> io::Result<()> {
            Ok(())
        }
        fn len(&self) -> u64 {
            self.inner.len()
        }
    }

    #[test]
    fn several_targets_get_the_image_each_read_back_and_a_lying_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let src = gpt_disk();
        let m = image(&src, &store);
        let (a, b) = (
            MemDevice::new(vec![0xCD; (16 * MIB) as usize]),
            MemDevice::new(vec![0x11; (32 * MIB) as usize]),
        );
        let rs = restore_to_all("g", &m, &store, &[&a, &b], 2, true, &NoProgress).unwrap();
        assert_eq!(rs.len(), 2);
        assert!(!rs[0].gpt_relocated && rs[1].gpt_relocated);
        let s = src.to_vec();
        for t in [&a, &b] {
            assert!(s[2048 * 512..20480 * 512] == t.to_vec()[2048 * 512..20480 * 512]);
        }
        // Target 2 drops the writes of the second partition: found, and named.
        let liar = Forgetful {
            inner: MemDevice::new(vec![0; (16 * MIB) as usize]),
            from: 8192 * 512,
        };
        let e = restore_to_all("g", &m, &store, &[&a, &liar], 1, true, &NoProgress).unwrap_err();
        assert!(
            matches!(&e, RestoreError::OnTarget { target: 2, source } if matches!(**source, RestoreError::ReadBack { area: 2, .. })),
            "{e:?}"
        );
        // A target too small for the image: refused before anything is written to any.
        let fresh = MemDevice::new(vec![0xEE; (16 * MIB) as usize]);
        let small = MemDevice::new(vec![0xEE; (8 * MIB) as usize]);
        let e =
            restore_to_all("g", &m, &store, &[&fresh, &small], 1, true, &NoProgress).unwrap_err();
        assert!(
            matches!(e, RestoreError::OnTarget { target: 2, .. }),
            "{e:?}"
        );
        assert!(
            fresh.to_vec().iter().all(|&x| x == 0xEE),
            "a refused restore wrote"
        );
    }

    #[test]
    fn refuses_other_sector_sizes_and_small_targets_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let m = image(&gpt_disk(), &store);
        assert_eq!(m.min_size, 20480 * 512 + 33 * 512);

        let t = MemDevice::new(vec![0xAB; (16 * MIB) as usize]).with_sector_size(4096);
        let e = restore("g", &m, &store, &t, 1, &NoProgress).unwrap_err();
        assert!(
            matches!(
                e,
                RestoreError::SectorSize {
                    image: 512,
                    target: 4096
                }
            ),
            "{e}"
        );

        let t = MemDevice::new(vec![0xAB; (m.min_size - 512) as usize]);
        let e = restore("g", &m, &store, &t, 1, &NoProgress).unwrap_err();
        assert!(e.to_string().contains(&m.min_size.to_string()), "{e}");
        assert!(
            t.to_vec().iter().all(|&b| b == 0xAB),
            "a refused restore wrote"
        );
    }

    #[test]
    fn gpt_moves_to_the_end_of_a_larger_disk_and_shrinks_to_a_smaller_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let src = gpt_disk();
        let m = image(&src, &store);
        for size in [32 * MIB, m.min_size, 16 * MIB] {
            let t = MemDevice::new(vec![0xCD; size as usize]);
            let r = restore("g", &m, &store, &t, 2, &NoProgress).unwrap();
            assert_eq!(r.gpt_relocated, size != 16 * MIB);
            let mut cur = DevCursor::new(&t);
            let gpt = gptman::GPT::read_from(&mut cur, 512).unwrap();
            assert_eq!(gpt.header.backup_lba, size / 512 - 1);
            // The backup header is readable where the primary says, and agrees.
            let mut b = vec![0u8; 512];
            t.read_at(&mut b, (size / 512 - 1) * 512).unwrap();
            assert_eq!(&b[..8], b"EFI PART");
            let used: Vec<_> = gpt
                .iter()
                .filter(|(_, p)| p.is_used())
                .map(|(_, p)| (p.starting_lba, p.ending_lba))
                .collect();
            assert_eq!(used, vec![(2048, 8191), (8192, 20479)]);
            // Partition contents are the source's.
            let (a, b) = (src.to_vec(), t.to_vec());
            assert!(a[2048 * 512..20480 * 512] == b[2048 * 512..20480 * 512]);
            // Protective MBR sized to the disk.
            assert_eq!(
                u32::from_le_bytes(b[446 + 12..446 + 16].try_into().unwrap()) as u64,
                size / 512 - 1
            );
        }
    }
}
