//! Capture: a disk, partition or image file into the store.
//!
//! 1. [`plan`] reads the partition table and each filesystem's allocation data and decides the
//!    used bytes of every area (see [`crate::manifest`]).
//! 2. One reader thread reads the used bytes region by region into recycled buffers (unused
//!    bytes zeroed); worker threads, one per core, hash, compress and store each region while
//!    the reader goes on. Memory is bounded by the buffer pool: `2 × workers + 1` regions.
//! 3. The manifest is committed last, after every chunk is durable.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;
use std::time::Instant;

use crate::device::{read_vec, BlockDevice, SubDevice};
use crate::extent::ExtentMap;
use crate::fs;
use crate::manifest::{
    Area, AreaKind, CaptureStats, ChunkRef, FsInfo, Hash, Manifest, DEFAULT_CHUNK_SIZE, FORMAT,
    VERSION,
};
use crate::progress::Progress;
use crate::store::{Store, StoreError, DEFAULT_ZSTD_LEVEL};
use crate::table::{self, Layout, TableKind};

/// Free space kept in reserve on the store's filesystem beyond what a capture may need.
pub const SPACE_RESERVE: u64 = 32 << 20;

/// How to capture.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// The image's name.
    pub name: String,
    /// Region size (power of two, 4 KiB..64 MiB).
    pub chunk_size: u64,
    /// zstd level.
    pub zstd_level: i32,
    /// Worker threads for hashing and compression (0: one per core).
    pub threads: usize,
    /// Refuse to start when the store's free space is below the source's used bytes.
    pub check_space: bool,
    /// Keys for encrypted volumes (LUKS passphrases); used to read, never stored.
    pub scan: fs::ScanOptions,
}

impl CaptureOptions {
    /// Defaults for an image named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            threads: 0,
            check_space: true,
            scan: fs::ScanOptions::default(),
        }
    }
}

/// Capture errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// Reading the source failed.
    #[error("reading the source")]
    Read(#[source] io::Error),
    /// The store failed (full disk, permissions, ...).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Not enough free space in the store.
    #[error(
        "the store at {store} has {free} bytes free; this capture may need up to {needed} \
         (the source's used bytes before compression and deduplication, plus a reserve). \
         Free space with `drover image gc` or `drover image rm`, or skip this check"
    )]
    NoSpace {
        /// The store's directory.
        store: String,
        /// Bytes free.
        free: u64,
        /// Bytes that may be needed.
        needed: u64,
    },
    /// Bad options.
    #[error("invalid capture options: {0}")]
    Options(String),
    /// A [`ChunkSink`] other than the store failed (the server of a network capture).
    #[error("{0}")]
    Sink(String),
}

/// Where a capture's chunks go: the local store, or (a network capture by the agent) a
/// server that keeps the ones it lacks. Called from several threads at once.
pub trait ChunkSink: Sync {
    /// Keeps chunk `hash` (its plaintext `plain`) unless it is kept already. `base` is the
    /// same region's chunk in the image's previous version (a delta base, for a sink that
    /// stores deltas). Returns the stored size and whether this call added it.
    fn put(
        &self,
        hash: &Hash,
        plain: &[u8],
        base: Option<&Hash>,
    ) -> Result<(u64, bool), CaptureError>;

    /// [`put`](Self::put) for the capture's `seq`-th region, numbered as [`outline`] lists
    /// the chunks: a sink that streams chunks as they are read (a deployment straight from a
    /// machine's disk) says where each one goes.
    fn put_at(
        &self,
        seq: usize,
        hash: &Hash,
        plain: &[u8],
        base: Option<&Hash>,
    ) -> Result<(u64, bool), CaptureError> {
        let _ = seq;
        self.put(hash, plain, base)
    }
}

/// The local store as a sink.
struct StoreSink<'a> {
    store: &'a Store,
    level: i32,
}

impl ChunkSink for StoreSink<'_> {
    fn put(
        &self,
        hash: &Hash,
        plain: &[u8],
        base: Option<&Hash>,
    ) -> Result<(u64, bool), CaptureError> {
        Ok(self.store.put_chunk(hash, plain, self.level, base)?)
    }
}

/// What [`plan`] decided: everything but the chunks.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The partition table.
    pub table: Layout,
    /// Raw primary table sectors.
    pub table_raw: Vec<u8>,
    /// Raw GPT backup.
    pub gpt_backup_raw: Vec<u8>,
    /// Areas with their used maps (no chunks yet).
    pub areas: Vec<Area>,
    /// Smallest target size.
    pub min_size: u64,
    /// Warnings for the operator (fallbacks).
    pub warnings: Vec<String>,
}

/// Reads the table and every filesystem's allocation data.
pub fn plan(dev: &dyn BlockDevice, chunk_size: u64) -> io::Result<Plan> {
    plan_with(dev, chunk_size, &fs::ScanOptions::default())
}

/// [`plan`] with keys for encrypted volumes.
pub fn plan_with(
    dev: &dyn BlockDevice,
    chunk_size: u64,
    scan: &fs::ScanOptions,
) -> io::Result<Plan> {
    let layout = table::detect(dev)?;
    let disk = dev.len();
    let ss = u64::from(layout.sector_size);
    let mut warnings: Vec<String> = layout.warning.iter().cloned().collect();
    let mut areas = Vec::new();
    let mut table_raw = Vec::new();
    let mut gpt_backup_raw = Vec::new();
    let mut min_size;
    match layout.kind {
        TableKind::None => {
            let s = fs::scan_with(dev, chunk_size, scan)?;
            warnings.extend(s.warning.clone());
            min_size = if s.report.kind == fs::FsKind::Unknown {
                disk
            } else {
                s.report.fs_size.max(s.report.used.end())
            };
            areas.push(Area {
                kind: AreaKind::Whole,
                offset: 0,
                len: disk,
                fs: Some(fs_info(&s)),
                used: s.report.used,
                chunks: Vec::new(),
            });
        }
        TableKind::Mbr | TableKind::Gpt => {
            table_raw = read_vec(dev, 0, primary_table_len(dev, &layout)? as usize)?;
            if let Some((start, len)) = layout.gpt_backup {
                gpt_backup_raw = read_vec(dev, start, len as usize)?;
            }
            // The bytes outside every partition (and outside the GPT backup), zero-skipped.
            let mut inside = ExtentMap::new();
            for p in &layout.partitions {
                inside.push(p.start, p.size);
            }
            if let Some((s, l)) = layout.gpt_backup {
                inside.push(s, l);
            }
            inside.normalize();
            let mut outside = ExtentMap::new();
            for gap in inside.gaps(0, disk).iter() {
                let m = fs::raw::nonzero_regions(dev, gap.start, gap.end(), chunk_size)?;
                outside = outside.union(&m);
            }
            min_size = outside.end();
            areas.push(Area {
                kind: AreaKind::Outside,
                offset: 0,
                len: disk,
                fs: None,
                used: outside,
                chunks: Vec::new(),
            });
            let subs: Vec<SubDevice<'_>> = layout
                .partitions
                .iter()
                .map(|p| SubDevice::new(dev, p.start, p.size))
                .collect();
            for (i, p) in layout.partitions.iter().enumerate() {
                // The other partitions: an LVM2 PV reads LVs spread over PVs among them.
                let others: Vec<&dyn BlockDevice> = subs
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, d)| d as &dyn BlockDevice)
                    .collect();
                let s = fs::scan_in(&subs[i], chunk_size, scan, &others)?;
                if let Some(w) = &s.warning {
                    warnings.push(format!("partition {}: {w}", p.number));
                }
                min_size = min_size.max(p.end());
                areas.push(Area {
                    kind: AreaKind::Partition { number: p.number },
                    offset: p.start,
                    len: p.size,
                    fs: Some(fs_info(&s)),
                    used: s.report.used,
                    chunks: Vec::new(),
                });
            }
            if let Some((_, l)) = layout.gpt_backup {
                // The backup entries and header follow the last partition on any target.
                let last = layout
                    .partitions
                    .last()
                    .map_or(table_raw.len() as u64, |p| p.end());
                min_size = min_size.max(last.div_ceil(ss) * ss + l);
            }
        }
    }
    Ok(Plan {
        table: layout,
        table_raw,
        gpt_backup_raw,
        areas,
        min_size: min_size.min(disk),
        warnings,
    })
}

fn fs_info(s: &fs::Scan) -> FsInfo {
    FsInfo {
        kind: s.report.kind,
        detected: s.detected,
        block_size: s.report.block_size,
        fs_size: s.report.fs_size,
        label: s.report.label.clone(),
        warning: s.warning.clone(),
        volumes: s.report.volumes.clone(),
    }
}

/// Bytes from LBA 0 to the end of the primary structures: the MBR sector, or for GPT the
/// header and the whole entry array.
fn primary_table_len(dev: &dyn BlockDevice, layout: &Layout) -> io::Result<u64> {
    let ss = u64::from(layout.sector_size);
    if layout.kind != TableKind::Gpt {
        return Ok(ss.max(512));
    }
    let h = read_vec(dev, ss, 92)?;
    let lba = fs::le64(&h, 72);
    let entries = u64::from(fs::le32(&h, 80)) * u64::from(fs::le32(&h, 84));
    // detect() read this GPT successfully, so the array lies on the disk; cap it anyway.
    Ok(((lba * ss + entries).div_ceil(ss) * ss)
        .min(dev.len())
        .min(1 << 20))
}

/// The result of a capture.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The new image's id.
    pub id: String,
    /// Its manifest.
    pub manifest: Manifest,
    /// Warnings for the operator.
    pub warnings: Vec<String>,
}

struct Job {
    area: usize,
    index: u64,
    /// The region's place among every region the capture reads.
    seq: usize,
    /// The same region's chunk in the image's previous version: the delta base.
    base: Option<Hash>,
    buf: Vec<u8>,
    len: usize,
}

struct Done {
    area: usize,
    chunk: ChunkRef,
    new: bool,
    buf: Vec<u8>,
}

/// Captures `dev` into `store` as a new version of `opts.name`.
pub fn capture(
    dev: &dyn BlockDevice,
    source: &str,
    store: &Store,
    opts: &CaptureOptions,
    progress: &dyn Progress,
) -> Result<Captured, CaptureError> {
    check_options(opts)?;
    let cs = opts.chunk_size;
    let t0 = Instant::now();
    let _lock = store.lock_shared()?;
    let mut plan = plan_with(dev, cs, &opts.scan).map_err(CaptureError::Read)?;
    for w in &plan.warnings {
        progress.note(&format!("warning: {w}"));
    }
    let used: u64 = plan.areas.iter().map(|a| a.used.total()).sum();
    if opts.check_space {
        let needed = used + SPACE_RESERVE;
        if let Some(free) = store.free_space()?.filter(|f| *f < needed) {
            return Err(CaptureError::NoSpace {
                store: store.location(),
                free,
                needed,
            });
        }
    }
    // A remote store answers each "is this chunk there?" after a round trip: more workers
    // keep the cores busy meanwhile (their uploads are written behind anyway).
    let workers = match store.local_dir() {
        Some(_) => workers(opts),
        None => workers(opts).max(crate::store::REMOTE_PARALLEL / 2),
    };
    progress.start(used, "capture");

    // The previous version's chunks, by area and region: the bases for delta chunks.
    let mut prev = HashMap::new();
    // One pass over the store gives both the previous version (delta bases) and the next
    // version number.
    let (images, _) = store.scan()?;
    let previous = images
        .iter()
        .filter(|i| i.manifest.name == opts.name)
        .max_by_key(|i| i.manifest.name_version);
    let name_version = previous.map_or(1, |p| p.manifest.name_version + 1);
    if let Some(p) = previous {
        for (a, c) in p.manifest.chunks() {
            prev.insert((area_key(a), c.index), c.hash);
        }
    }
    let sink = StoreSink {
        store,
        level: opts.zstd_level,
    };
    let mut stats = pipeline(dev, &mut plan, cs, &sink, workers, &prev, progress)?;
    stats.seconds = t0.elapsed().as_secs_f64();
    let warnings = plan.warnings.clone();
    let manifest = manifest(dev, source, opts, name_version, plan, stats);
    // Every chunk file was fsynced before its rename; make the renames durable, then commit.
    store.sync_dirs()?;
    let id = store.put_manifest(&manifest)?;
    Ok(Captured {
        id,
        manifest,
        warnings,
    })
}

fn workers(opts: &CaptureOptions) -> usize {
    if opts.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.threads
    }
}

/// The manifest of a finished capture.
fn manifest(
    dev: &dyn BlockDevice,
    source: &str,
    opts: &CaptureOptions,
    name_version: u32,
    plan: Plan,
    stats: CaptureStats,
) -> Manifest {
    Manifest {
        format: FORMAT.into(),
        version: VERSION,
        name: opts.name.clone(),
        name_version,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        source: source.into(),
        disk_size: dev.len(),
        chunk_size: opts.chunk_size,
        table: plan.table,
        table_raw: plan.table_raw,
        gpt_backup_raw: plan.gpt_backup_raw,
        areas: plan.areas,
        min_size: plan.min_size,
        stats,
    }
}

/// Reads the used regions of `plan`'s areas, hashes them and hands each to `sink` (on
/// `workers` threads); fills in the areas' chunk lists. `prev`: the previous version's chunk
/// of each (area, region), the delta bases.
fn pipeline(
    dev: &dyn BlockDevice,
    plan: &mut Plan,
    cs: u64,
    sink: &dyn ChunkSink,
    workers: usize,
    prev: &HashMap<((u32, u64), u64), Hash>,
    progress: &dyn Progress,
) -> Result<CaptureStats, CaptureError> {
    let stop = AtomicBool::new(false);
    let first_err: Mutex<Option<CaptureError>> = Mutex::new(None);
    let fail = |e: CaptureError| {
        stop.store(true, Ordering::Relaxed);
        let mut g = first_err.lock().unwrap_or_else(|p| p.into_inner());
        g.get_or_insert(e);
    };
    let (job_tx, job_rx) = sync_channel::<Job>(workers);
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = sync_channel::<Done>(workers * 2 + 1);
    let (pool_tx, pool_rx) = sync_channel::<Vec<u8>>(workers * 2 + 1);
    for _ in 0..workers * 2 + 1 {
        // The pool's capacity equals the number of buffers sent, so this never blocks.
        pool_tx.send(vec![0u8; cs as usize]).expect("pool has room");
    }
    let mut stats = CaptureStats::default();
    let areas = &plan.areas;
    let mut chunks: Vec<Vec<ChunkRef>> = vec![Vec::new(); areas.len()];

    let (stop, fail) = (&stop, &fail);
    std::thread::scope(|s| {
        // Reader.
        s.spawn(move || {
            let mut seq = 0;
            for (ai, a) in areas.iter().enumerate() {
                let regions = a.len.div_ceil(cs);
                for r in 0..regions {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let rs = r * cs;
                    let re = (rs + cs).min(a.len);
                    if !a.used.intersects(rs, re) {
                        continue;
                    }
                    let Ok(mut buf) = pool_rx.recv() else { return };
                    let len = (re - rs) as usize;
                    match read_region(dev, a, rs, re, &mut buf[..len]) {
                        Ok(n) => progress.advance(n),
                        Err(e) => return fail(CaptureError::Read(e)),
                    }
                    let base = prev.get(&(area_key(a), r)).copied();
                    seq += 1;
                    if job_tx
                        .send(Job {
                            area: ai,
                            index: r,
                            seq: seq - 1,
                            base,
                            buf,
                            len,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        // Hash, then compress and keep (the sink).
        for _ in 0..workers {
            let done_tx = done_tx.clone();
            let pool_tx = pool_tx.clone();
            let job_rx = &job_rx;
            s.spawn(move || loop {
                let job = {
                    let rx = job_rx.lock().unwrap_or_else(|p| p.into_inner());
                    rx.recv()
                };
                let Ok(job) = job else { return };
                // After a failure keep draining the queue (dropping jobs) until the reader
                // stops, so it is never left blocked on a full queue.
                if stop.load(Ordering::Relaxed) {
                    let _ = pool_tx.send(job.buf);
                    continue;
                }
                let plain = &job.buf[..job.len];
                let hash = Hash::of(plain);
                match sink.put_at(job.seq, &hash, plain, job.base.as_ref()) {
                    Ok((stored, new)) => {
                        let d = Done {
                            area: job.area,
                            chunk: ChunkRef {
                                index: job.index,
                                hash,
                                stored,
                            },
                            new,
                            buf: job.buf,
                        };
                        if done_tx.send(d).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        fail(e);
                        let _ = pool_tx.send(job.buf);
                    }
                }
            });
        }
        drop(done_tx);
        // Collector (this thread): return buffers to the pool, gather chunk refs.
        for d in done_rx.iter() {
            if d.new {
                stats.new_chunks += 1;
                stats.new_bytes += d.chunk.stored;
            }
            chunks[d.area].push(d.chunk);
            let _ = pool_tx.send(d.buf);
        }
        drop(pool_tx);
    });
    for (a, mut c) in plan.areas.iter_mut().zip(chunks) {
        c.sort_by_key(|c| c.index);
        a.chunks = c;
    }
    if let Some(e) = first_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(stats)
}

fn check_options(opts: &CaptureOptions) -> Result<(), CaptureError> {
    let cs = opts.chunk_size;
    if !(4096..=(64 << 20)).contains(&cs) || !cs.is_power_of_two() {
        return Err(CaptureError::Options(format!(
            "chunk size {cs} is not a power of two in 4 KiB..64 MiB"
        )));
    }
    if opts.name.is_empty()
        || opts.name.contains(['/', '@'])
        || opts.name.chars().any(char::is_control)
    {
        return Err(CaptureError::Options(format!(
            "image name {:?} must be non-empty without '/', '@' or control characters",
            opts.name
        )));
    }
    Ok(())
}

/// Captures `dev` into `sink` (a server, for the agent's network capture) rather than a
/// store: no delta bases, no version number (0: whoever commits the manifest numbers it),
/// no free-space check. The manifest is returned, not committed.
pub fn capture_to(
    dev: &dyn BlockDevice,
    source: &str,
    sink: &dyn ChunkSink,
    opts: &CaptureOptions,
    progress: &dyn Progress,
) -> Result<Captured, CaptureError> {
    check_options(opts)?;
    let plan = plan_with(dev, opts.chunk_size, &opts.scan).map_err(CaptureError::Read)?;
    capture_planned(dev, source, sink, opts, plan, progress)
}

/// [`capture_to`] with its plan made already ([`plan_with`] with `opts`' chunk size and
/// keys): a caller that announces the [`outline`] first.
pub fn capture_planned(
    dev: &dyn BlockDevice,
    source: &str,
    sink: &dyn ChunkSink,
    opts: &CaptureOptions,
    mut plan: Plan,
    progress: &dyn Progress,
) -> Result<Captured, CaptureError> {
    check_options(opts)?;
    let t0 = Instant::now();
    let cs = opts.chunk_size;
    for w in &plan.warnings {
        progress.note(&format!("warning: {w}"));
    }
    let used: u64 = plan.areas.iter().map(|a| a.used.total()).sum();
    progress.start(used, "capture");
    let workers = workers(opts);
    let mut stats = pipeline(dev, &mut plan, cs, sink, workers, &HashMap::new(), progress)?;
    stats.seconds = t0.elapsed().as_secs_f64();
    let warnings = plan.warnings.clone();
    let manifest = manifest(dev, source, opts, 0, plan, stats);
    Ok(Captured {
        id: String::new(),
        manifest,
        warnings,
    })
}

/// The manifest a capture of `plan` ends with, before a byte is read: every region the
/// capture reads has its chunk, in the order [`ChunkSink::put_at`] numbers them, with
/// [`Hash::PENDING`] for its hash and no stored size. What a deployment straight from a
/// machine's disk announces before the disk is read; the finished capture's manifest lists the
/// same chunks with their hashes.
pub fn outline(
    dev: &dyn BlockDevice,
    source: &str,
    opts: &CaptureOptions,
    plan: &Plan,
) -> Manifest {
    let cs = opts.chunk_size;
    let mut plan = plan.clone();
    for a in &mut plan.areas {
        a.chunks = (0..a.len.div_ceil(cs))
            .filter(|r| a.used.intersects(r * cs, ((r + 1) * cs).min(a.len)))
            .map(|index| ChunkRef {
                index,
                hash: Hash::PENDING,
                stored: 0,
            })
            .collect();
    }
    manifest(dev, source, opts, 0, plan, CaptureStats::default())
}

/// Identifies an area across versions: its kind and where it starts.
fn area_key(a: &Area) -> (u32, u64) {
    let k = match a.kind {
        AreaKind::Outside => 0,
        AreaKind::Whole => 1,
        AreaKind::Partition { number } => 2 + number,
    };
    (k, a.offset)
}

/// Reads the used bytes of region `rs..re` of area `a` into `buf` (zeroing the rest); returns
/// the used bytes read. A mostly-used region is read in one request and its gaps zeroed.
fn read_region(
    dev: &dyn BlockDevice,
    a: &Area,
    rs: u64,
    re: u64,
    buf: &mut [u8],
) -> io::Result<u64> {
    let used: Vec<_> = a.used.clip(rs, re).collect();
    let n: u64 = used.iter().map(|e| e.len).sum();
    if n * 2 >= re - rs {
        dev.read_at(buf, a.offset + rs)?;
        let mut pos = rs;
        for e in used.iter().chain(std::iter::once(&crate::extent::Extent {
            start: re,
            len: 0,
        })) {
            buf[(pos - rs) as usize..(e.start - rs) as usize].fill(0);
            pos = e.end();
        }
    } else {
        buf.fill(0);
        for e in &used {
            let o = (e.start - rs) as usize;
            dev.read_at(&mut buf[o..o + e.len as usize], a.offset + e.start)?;
        }
    }
    Ok(n)
}

/// Reads the used bytes of region `index` of `area`, as captured: the chunk's plaintext.
pub fn region_plaintext(
    dev: &dyn BlockDevice,
    area: &Area,
    index: u64,
    chunk_size: u64,
) -> io::Result<Vec<u8>> {
    let rs = index * chunk_size;
    let re = (rs + chunk_size).min(area.len);
    let mut buf = vec![0u8; (re - rs) as usize];
    read_region(dev, area, rs, re, &mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;
    use crate::progress::NoProgress;
    use std::sync::atomic::AtomicUsize;

    /// Fails every read after the first `ok` ones.
    struct Countdown {
        inner: MemDevice,
        left: AtomicUsize,
    }

    impl BlockDevice for Countdown {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            if self
                .left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
            {
                return Err(io::Error::other("injected read error"));
            }
            self.inner.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            self.inner.write_at(buf, offset)
        }
        fn sync(&self) -> io::Result<()> {
            Ok(())
        }
        fn len(&self) -> u64 {
            self.inner.len()
        }
    }

    fn noisy(len: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn read_errors_fail_the_capture_without_a_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for ok in [0usize, 3, 9, 20] {
            let dev = Countdown {
                inner: MemDevice::new(noisy(24 << 20)),
                left: AtomicUsize::new(ok),
            };
            let mut opts = CaptureOptions::new("x");
            opts.chunk_size = 1 << 20;
            opts.threads = 2;
            opts.check_space = false;
            let err = capture(&dev, "mem", &store, &opts, &NoProgress).unwrap_err();
            assert!(format!("{err:?}").contains("injected"), "{err:?}");
            assert!(store.list().unwrap().is_empty());
        }
        // And the same source, readable, captures fine.
        let dev = MemDevice::new(noisy(24 << 20));
        let mut opts = CaptureOptions::new("x");
        opts.chunk_size = 1 << 20;
        opts.check_space = false;
        let c = capture(&dev, "mem", &store, &opts, &NoProgress).unwrap();
        assert_eq!(c.manifest.used_bytes(), 24 << 20);
        assert_eq!(store.list().unwrap().len(), 1);
    }

    /// Keeps hashes in memory; fails after `fail_after` puts.
    struct Recorder {
        seen: Mutex<HashMap<Hash, usize>>,
        fail_after: usize,
    }

    impl ChunkSink for Recorder {
        fn put(
            &self,
            hash: &Hash,
            plain: &[u8],
            _base: Option<&Hash>,
        ) -> Result<(u64, bool), CaptureError> {
            let mut seen = self.seen.lock().unwrap();
            if seen.len() >= self.fail_after {
                return Err(CaptureError::Sink("the server went away".into()));
            }
            assert_eq!(Hash::of(plain), *hash);
            let new = seen.insert(*hash, plain.len()).is_none();
            Ok((plain.len() as u64, new))
        }
    }

    #[test]
    fn a_capture_into_another_sink_makes_the_stores_manifest_but_commits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut data = noisy(12 << 20);
        // Two equal regions: one is new, the other is not.
        data.copy_within(0..1 << 20, 5 << 20);
        let dev = MemDevice::new(data);
        let mut opts = CaptureOptions::new("x");
        opts.chunk_size = 1 << 20;
        opts.check_space = false;
        let sink = Recorder {
            seen: Mutex::new(HashMap::new()),
            fail_after: usize::MAX,
        };
        let c = capture_to(&dev, "mem", &sink, &opts, &NoProgress).unwrap();
        assert_eq!(c.manifest.name_version, 0);
        assert_eq!(sink.seen.lock().unwrap().len(), 11);
        assert_eq!(c.manifest.stats.new_chunks, 11);
        assert!(store.list().unwrap().is_empty());
        let local = capture(&dev, "mem", &store, &opts, &NoProgress).unwrap();
        let hashes = |m: &Manifest| {
            m.chunks()
                .map(|(_, c)| (c.index, c.hash))
                .collect::<Vec<_>>()
        };
        assert_eq!(hashes(&c.manifest), hashes(&local.manifest));
        // A sink that fails fails the capture, with its words.
        let sink = Recorder {
            seen: Mutex::new(HashMap::new()),
            fail_after: 3,
        };
        let e = capture_to(&dev, "mem", &sink, &opts, &NoProgress).unwrap_err();
        assert!(e.to_string().contains("went away"), "{e}");
    }
}
