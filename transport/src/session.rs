//! What both ends agree on: the session description a receiver fetches from the sender
//! (`GET /session`), its registration (`POST /register`), and the chunk sources and sinks.
//!
//! A session carries either an image (the payload of chunk `i` is a zstd frame of the i-th
//! chunk of the manifest, in manifest order) or a plain file (chunk `i` is bytes
//! `i * chunk_size ..` of the file, as they are). Every chunk's plaintext hash is in the
//! description, so a receiver checks each chunk before it writes it, whatever path it came by.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use imaging::device::{BlockDevice, FileDevice};
use imaging::manifest::{Hash, Manifest};
use imaging::store::Store;
use serde::{Deserialize, Serialize};

/// Version of the description format.
pub const DESCRIPTION_FORMAT: u32 = 1;

/// Chunk size of a file session.
pub const FILE_CHUNK: u64 = 4 << 20;

/// One chunk of a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkDesc {
    /// Bytes sent (the payload).
    pub len: u32,
    /// Bytes of plaintext.
    pub plain_len: u32,
    /// BLAKE3 of the plaintext.
    pub hash: Hash,
}

/// What the session carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Content {
    /// A file of `size` bytes.
    File { size: u64 },
    /// An image.
    Image { id: String, manifest: Box<Manifest> },
}

/// The session description.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Description {
    pub format: u32,
    pub session: u32,
    pub name: String,
    pub symbol_size: u16,
    pub max_block_symbols: u32,
    pub chunks: Vec<ChunkDesc>,
    pub content: Content,
    /// A stream straight from a machine's disk ([`crate::live`]): the manifest is the
    /// capture's outline (hashes pending) and each payload is a hash, then the plaintext.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub live: bool,
}

impl Description {
    /// The description of an image for a receiver that fetches every chunk over unicast
    /// (payload lengths unknown: 0; no multicast layout).
    pub fn unicast(id: &str, manifest: Manifest) -> Self {
        let cs = manifest.chunk_size;
        let chunks = manifest
            .chunks()
            .map(|(a, c)| ChunkDesc {
                len: 0,
                plain_len: a.region_len(c.index, cs) as u32,
                hash: c.hash,
            })
            .collect();
        Self {
            format: DESCRIPTION_FORMAT,
            session: 0,
            name: format!("{}@{}", manifest.name, manifest.name_version),
            symbol_size: proto::wire::DEFAULT_SYMBOL_SIZE,
            max_block_symbols: proto::layout::DEFAULT_MAX_BLOCK_SYMBOLS,
            chunks,
            content: Content::Image {
                id: id.to_string(),
                manifest: Box::new(manifest),
            },
            live: false,
        }
    }

    /// The description of a live stream's outline for a receiver that may fetch chunks over
    /// unicast ([`crate::live`]).
    pub fn live(outline: Manifest) -> Self {
        let mut d = Self::unicast("", outline);
        for c in &mut d.chunks {
            c.len = c.plain_len + crate::live::HEADER as u32;
        }
        d.live = true;
        d
    }

    /// The RaptorQ layout, checked.
    pub fn layout(&self) -> anyhow::Result<proto::Layout> {
        ensure!(
            self.format == DESCRIPTION_FORMAT,
            "the sender speaks session description format {}, this build {DESCRIPTION_FORMAT}",
            self.format
        );
        let layout = proto::Layout::new(
            self.symbol_size,
            self.max_block_symbols,
            self.chunks.iter().map(|c| c.len).collect(),
        )
        .context("the session description is inconsistent")?;
        match &self.content {
            Content::File { size } => {
                let want = size.div_ceil(FILE_CHUNK);
                ensure!(
                    want == self.chunks.len() as u64,
                    "a {size}-byte file has {want} chunks, the description lists {}",
                    self.chunks.len()
                );
            }
            Content::Image { manifest, .. } => {
                manifest
                    .validate()
                    .context("the session's manifest is invalid")?;
                let n = manifest.chunks().count();
                ensure!(
                    n == self.chunks.len(),
                    "the image has {n} chunks, the description lists {}",
                    self.chunks.len()
                );
                for ((a, c), d) in manifest.chunks().zip(&self.chunks) {
                    ensure!(
                        c.hash == d.hash
                            && a.region_len(c.index, manifest.chunk_size) == d.plain_len as u64,
                        "chunk {} of the description does not match the manifest",
                        c.hash
                    );
                }
            }
        }
        Ok(layout)
    }

    /// Bytes a receiver writes.
    pub fn plain_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.plain_len as u64).sum()
    }
}

/// The answer to `POST /register`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    pub receiver_id: u32,
    /// The session key, hex.
    pub key: String,
}

/// Where a sender's chunks come from.
pub enum Source {
    File {
        file: File,
        size: u64,
    },
    Image {
        store: Store,
        id: String,
        manifest: Box<Manifest>,
        /// Hash and plaintext length of every chunk, in order.
        chunks: Vec<(Hash, usize)>,
    },
    /// A capture in progress ([`crate::live`]): each chunk once its source uploaded it.
    Live {
        store: Store,
        live: std::sync::Arc<crate::live::Live>,
    },
}

/// How long a live chunk's payload waits for the source machine to read and upload it.
pub const LIVE_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

impl Source {
    /// A file session over `path`.
    pub fn file(path: &Path) -> anyhow::Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let meta = file.metadata()?;
        let size = if meta.is_file() {
            meta.len()
        } else {
            FileDevice::open_read(path)
                .with_context(|| format!("opening {}", path.display()))?
                .len()
        };
        ensure!(size > 0, "{} is empty", path.display());
        Ok(Self::File { file, size })
    }

    /// An image session.
    pub fn image(store: Store, id: String, manifest: Manifest) -> anyhow::Result<Self> {
        let cs = manifest.chunk_size;
        let chunks: Vec<(Hash, usize)> = manifest
            .chunks()
            .map(|(a, c)| (c.hash, a.region_len(c.index, cs) as usize))
            .collect();
        ensure!(!chunks.is_empty(), "the image holds no data");
        let mut hashes: Vec<Hash> = chunks.iter().map(|(h, _)| *h).collect();
        hashes.sort_unstable();
        hashes.dedup();
        if let Some(h) = store.first_missing(&hashes) {
            bail!("the image's chunk {h} is missing from the store");
        }
        Ok(Self::Image {
            store,
            id,
            manifest: Box::new(manifest),
            chunks,
        })
    }

    pub fn chunk_count(&self) -> usize {
        match self {
            Self::File { size, .. } => size.div_ceil(FILE_CHUNK) as usize,
            Self::Image { chunks, .. } => chunks.len(),
            Self::Live { live, .. } => live.chunks(),
        }
    }

    /// The payload of chunk `i`.
    pub fn payload(&self, i: usize) -> anyhow::Result<Vec<u8>> {
        match self {
            Self::File { file, size } => {
                let start = i as u64 * FILE_CHUNK;
                let len = (size - start).min(FILE_CHUNK) as usize;
                let mut buf = vec![0; len];
                file.read_exact_at(&mut buf, start)
                    .with_context(|| format!("reading chunk {i} of the file"))?;
                Ok(buf)
            }
            Self::Image { store, chunks, .. } => {
                let (h, len) = chunks[i];
                Ok(store.read_frame(&h, len)?)
            }
            Self::Live { store, live } => {
                let len = live.plain_len(i).context("no such chunk")?;
                let h = live.hash(i, LIVE_WAIT)?;
                let plain = store.read_chunk(&h, len)?;
                Ok(crate::live::payload(&h, &plain))
            }
        }
    }

    /// The description, with payload lengths (reading or recompressing what it must, on
    /// `threads` threads).
    pub fn describe(&self, session: u32, name: &str) -> anyhow::Result<Description> {
        if let Self::Live { live, .. } = self {
            let mut d = Description::live(live.outline().clone());
            d.session = session;
            d.name = name.to_string();
            return Ok(d);
        }
        let chunks = match self {
            Self::File { size, .. } => (0..self.chunk_count())
                .map(|i| {
                    let data = self.payload(i)?;
                    let _ = size;
                    Ok(ChunkDesc {
                        len: data.len() as u32,
                        plain_len: data.len() as u32,
                        hash: Hash::of(&data),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
            Self::Live { .. } => unreachable!("described above"),
            Self::Image { chunks, .. } => {
                let lens = parallel_map(chunks.len(), |i| Ok(self.payload(i)?.len()))?;
                chunks
                    .iter()
                    .zip(lens)
                    .map(|(&(hash, plain_len), len)| ChunkDesc {
                        len: len as u32,
                        plain_len: plain_len as u32,
                        hash,
                    })
                    .collect()
            }
        };
        let content = match self {
            Self::File { size, .. } => Content::File { size: *size },
            Self::Image { id, manifest, .. } => Content::Image {
                id: id.clone(),
                manifest: manifest.clone(),
            },
            Self::Live { .. } => unreachable!("described above"),
        };
        Ok(Description {
            format: DESCRIPTION_FORMAT,
            session,
            name: name.to_string(),
            symbol_size: proto::wire::DEFAULT_SYMBOL_SIZE,
            max_block_symbols: proto::layout::DEFAULT_MAX_BLOCK_SYMBOLS,
            chunks,
            content,
            live: false,
        })
    }
}

/// `f(0..n)` on one thread per core, in order.
fn parallel_map<T: Send>(
    n: usize,
    f: impl Fn(usize) -> anyhow::Result<T> + Sync,
) -> anyhow::Result<Vec<T>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let parts = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.min(n.max(1)))
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok::<_, anyhow::Error>(out);
                        }
                        out.push((i, f(i)?));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .collect::<Vec<_>>()
    });
    let mut all = Vec::with_capacity(n);
    for p in parts {
        all.extend(p?);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, v)| v).collect())
}

/// Where a receiver writes: a file or device, for a file session or an image. Every transport
/// writes through it (multicast, unicast, and the swarm's check): each chunk is checked against
/// its hash before it is written and read back after, and [`scan`](Self::scan) finds what an
/// interrupted write left, so a resumed one fetches only the rest.
pub struct Sink {
    dev: Box<dyn BlockDevice>,
    desc: Description,
    /// For an image: the (area, chunk) index of each session chunk.
    image_chunks: Vec<(usize, usize)>,
    /// A live stream's: the hash each written chunk came with ([`crate::live`]).
    live: Option<std::sync::Mutex<Vec<Option<Hash>>>>,
    pub path: PathBuf,
}

impl Sink {
    /// Opens `path` for `desc`: an existing device must be large enough (and not in use); a
    /// regular file is created or resized to the session's size (an image's: grown to it,
    /// never shrunk).
    pub fn open(path: &Path, desc: Description) -> anyhow::Result<Self> {
        let dev = Self::open_dev(path, &desc)?;
        Self::on(Box::new(dev), path, desc)
    }

    /// Opens every one of `paths` as [`open`](Self::open) does and writes them as one
    /// ([`imaging::device::Mirror`]): each chunk goes to every disk, and every read back reads
    /// each (a disk that differs fails it, named). Messages name the first path.
    pub fn open_all(paths: &[PathBuf], desc: Description) -> anyhow::Result<Self> {
        let [first, ..] = paths else {
            bail!("no disk to write");
        };
        if paths.len() == 1 {
            return Self::open(first, desc);
        }
        let mut devs: Vec<Box<dyn BlockDevice>> = Vec::new();
        for p in paths {
            devs.push(Box::new(Self::open_dev(p, &desc)?));
        }
        let names = paths.iter().map(|p| p.display().to_string()).collect();
        let dev = imaging::device::Mirror::new(devs, names)?;
        Self::on(Box::new(dev), first, desc)
    }

    fn open_dev(path: &Path, desc: &Description) -> anyhow::Result<FileDevice> {
        let need = match &desc.content {
            Content::File { size } => *size,
            Content::Image { manifest, .. } => manifest.disk_size,
        };
        let meta = std::fs::metadata(path);
        let is_file = meta.as_ref().map_or(true, |m| m.is_file());
        if meta.is_ok() {
            if let Some(why) = imaging::usage::in_use(path)
                .with_context(|| format!("checking whether {} is in use", path.display()))?
            {
                bail!("refusing to write {}: it is {why}", path.display());
            }
        }
        if is_file {
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            // An image keeps a larger file's size (its layout may grow into it); a plain
            // file is sized to the session's.
            let keep = matches!(desc.content, Content::Image { .. })
                && f.metadata().is_ok_and(|m| m.len() >= need);
            if !keep {
                f.set_len(need)
                    .with_context(|| format!("sizing {} to {need} bytes", path.display()))?;
            }
        }
        FileDevice::open_write(path)
            .with_context(|| format!("opening {} for writing", path.display()))
    }

    /// A sink over an opened device (`path`: its name in messages).
    pub fn on(dev: Box<dyn BlockDevice>, path: &Path, desc: Description) -> anyhow::Result<Self> {
        let mut image_chunks = Vec::new();
        match &desc.content {
            Content::File { size } => ensure!(
                dev.len() >= *size,
                "{} holds {} bytes, the file needs {size}",
                path.display(),
                dev.len()
            ),
            Content::Image { manifest, .. } => {
                imaging::restore::check_target(&desc.name, manifest, &*dev)?;
                for (ai, a) in manifest.areas.iter().enumerate() {
                    for ci in 0..a.chunks.len() {
                        image_chunks.push((ai, ci));
                    }
                }
            }
        }
        let live = desc
            .live
            .then(|| std::sync::Mutex::new(vec![None; desc.chunks.len()]));
        Ok(Self {
            dev,
            desc,
            image_chunks,
            live,
            path: path.to_owned(),
        })
    }

    /// Checks chunk `i`'s payload against its hash, writes it and reads it back. The inner
    /// error is wrong data (nothing written); the outer one the output failing.
    pub fn write(&self, i: usize, payload: &[u8]) -> anyhow::Result<Result<(), String>> {
        let d = &self.desc.chunks[i];
        let mismatch = || Ok(Err(format!("chunk {i} does not match its hash")));
        match &self.desc.content {
            Content::File { .. } => {
                if Hash::of(payload) != d.hash {
                    return mismatch();
                }
                let at = i as u64 * FILE_CHUNK;
                self.dev
                    .write_at(payload, at)
                    .with_context(|| format!("writing chunk {i}"))?;
                let mut back = vec![0; payload.len()];
                self.dev
                    .read_at(&mut back, at)
                    .with_context(|| format!("reading chunk {i} back"))?;
                ensure!(
                    back == payload,
                    "chunk {i} reads back wrong from the output"
                );
            }
            Content::Image { manifest, .. } if self.live.is_some() => {
                let (hash, plain) = match crate::live::open(payload, d.plain_len as usize) {
                    Ok(x) => x,
                    Err(e) => return Ok(Err(format!("chunk {i} {e}"))),
                };
                let (ai, ci) = self.image_chunks[i];
                let a = &manifest.areas[ai];
                let c = imaging::manifest::ChunkRef {
                    hash,
                    ..a.chunks[ci].clone()
                };
                imaging::restore::write_chunk(manifest, a, &c, plain, &*self.dev)
                    .with_context(|| format!("writing chunk {i}"))?;
                ensure!(
                    imaging::restore::check_written(manifest, a, &c, &*self.dev)?,
                    "chunk {i} reads back wrong from the output"
                );
                self.live_hashes()[i] = Some(hash);
            }
            Content::Image { manifest, .. } => {
                let plain = match imaging::store::decompress_frame(payload, d.plain_len as usize) {
                    Ok(p) => p,
                    Err(e) => return Ok(Err(format!("chunk {i} {e}"))),
                };
                if Hash::of(&plain) != d.hash {
                    return mismatch();
                }
                let (ai, ci) = self.image_chunks[i];
                let (a, c) = (&manifest.areas[ai], &manifest.areas[ai].chunks[ci]);
                imaging::restore::write_chunk(manifest, a, c, &plain, &*self.dev)
                    .with_context(|| format!("writing chunk {i}"))?;
                ensure!(
                    imaging::restore::check_written(manifest, a, c, &*self.dev)?,
                    "chunk {i} reads back wrong from the output"
                );
            }
        }
        Ok(Ok(()))
    }

    /// Whether the output already holds chunk `i` (its used bytes hash right): what a
    /// resumed write need not fetch again.
    pub fn holds(&self, i: usize) -> anyhow::Result<bool> {
        let d = &self.desc.chunks[i];
        match &self.desc.content {
            Content::File { .. } => {
                let mut back = vec![0; d.plain_len as usize];
                self.dev
                    .read_at(&mut back, i as u64 * FILE_CHUNK)
                    .with_context(|| format!("reading chunk {i}"))?;
                Ok(Hash::of(&back) == d.hash)
            }
            Content::Image { manifest, .. } => {
                let (ai, ci) = self.image_chunks[i];
                let (a, mut c) = (&manifest.areas[ai], manifest.areas[ai].chunks[ci].clone());
                if self.live.is_some() {
                    // A live chunk is known by the hash it came with, once written.
                    match self.live_hashes()[i] {
                        Some(h) => c.hash = h,
                        None => return Ok(false),
                    }
                }
                Ok(imaging::restore::check_written(
                    manifest, a, &c, &*self.dev,
                )?)
            }
        }
    }

    fn live_hashes(&self) -> std::sync::MutexGuard<'_, Vec<Option<Hash>>> {
        self.live
            .as_ref()
            .expect("a live sink")
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A live stream's written chunks against the source's committed manifest (the outline's
    /// chunks with their hashes): the error names the first chunk that was written with
    /// another hash, or not at all. Nothing to check for any other sink.
    pub fn confirm(&self, m: &Manifest) -> anyhow::Result<()> {
        if self.live.is_none() {
            return Ok(());
        }
        let Content::Image { manifest, .. } = &self.desc.content else {
            bail!("a live stream carries an image");
        };
        let ours = self.live_hashes();
        let theirs: Vec<_> = m.chunks().collect();
        ensure!(
            theirs.len() == ours.len(),
            "the source's image has {} chunks, the stream {}",
            theirs.len(),
            ours.len()
        );
        for (i, (((a, c), (oa, oc)), got)) in theirs
            .iter()
            .zip(manifest.chunks())
            .zip(ours.iter())
            .enumerate()
        {
            ensure!(
                a.offset == oa.offset && a.len == oa.len && c.index == oc.index,
                "chunk {i} of the source's image is not where the stream put it"
            );
            match got {
                Some(h) if *h == c.hash => {}
                Some(h) => bail!(
                    "chunk {i} was written as {h}, the source's image says {}",
                    c.hash
                ),
                None => bail!("chunk {i} was never written"),
            }
        }
        Ok(())
    }

    /// The chunks the output already holds, checked on `threads` threads.
    pub fn scan(&self) -> anyhow::Result<Vec<bool>> {
        parallel_map(self.desc.chunks.len(), |i| self.holds(i))
    }

    /// The session (or image) this sink writes.
    pub fn desc(&self) -> &Description {
        &self.desc
    }

    /// Chunks in the session.
    pub fn chunks(&self) -> usize {
        self.desc.chunks.len()
    }

    /// The hash of chunk `i`'s plaintext, hex.
    pub fn hash_hex(&self, i: usize) -> String {
        self.desc.chunks[i].hash.to_hex()
    }

    /// Plaintext length of chunk `i`.
    pub fn plain_len(&self, i: usize) -> u64 {
        u64::from(self.desc.chunks[i].plain_len)
    }

    /// Writes what follows the chunks (the GPT backup) and syncs. Every chunk was checked
    /// against its hash before it was written and read back after.
    pub fn finish(&self) -> anyhow::Result<()> {
        match &self.desc.content {
            Content::File { .. } => self.dev.sync().context("syncing the output")?,
            Content::Image { manifest, .. } => {
                let f = imaging::restore::finish(manifest, &*self.dev)?;
                if f.bytes_zeroed > 0 {
                    tracing::info!(
                        bytes = f.bytes_zeroed,
                        "zeroed the all-zero regions of raw-copied areas"
                    );
                }
            }
        }
        Ok(())
    }

    /// The first byte of a raw-copied area's zero fill that does not read back as zero.
    pub fn check_zero_fill(&self) -> anyhow::Result<Option<u64>> {
        match &self.desc.content {
            Content::File { .. } => Ok(None),
            Content::Image { manifest, .. } => {
                Ok(imaging::restore::check_zero_fill(manifest, &*self.dev)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use imaging::capture::{capture, CaptureOptions};
    use imaging::device::MemDevice;
    use imaging::progress::NoProgress;

    use super::*;

    const MIB: u64 = 1 << 20;

    /// A disk that takes `budget` bytes; the write that goes past lands only what fits and
    /// fails, as does every later one (a disk that dies, or a machine switched off, mid-write).
    struct Failing {
        disk: Arc<MemDevice>,
        budget: AtomicU64,
    }

    impl Failing {
        fn new(disk: &Arc<MemDevice>, budget: u64) -> Box<Self> {
            Box::new(Self {
                disk: disk.clone(),
                budget: AtomicU64::new(budget),
            })
        }
    }

    impl BlockDevice for Failing {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.disk.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            let left = self.budget.load(Ordering::SeqCst);
            let lands = left.min(buf.len() as u64);
            self.budget.store(left - lands, Ordering::SeqCst);
            self.disk.write_at(&buf[..lands as usize], offset)?;
            if lands < buf.len() as u64 {
                return Err(io::Error::other("the disk stopped mid-write"));
            }
            Ok(())
        }
        fn sync(&self) -> io::Result<()> {
            Ok(())
        }
        fn len(&self) -> u64 {
            self.disk.len()
        }
    }

    /// A 24 MiB disk without a partition table (a raw copy: its non-zero MiB regions), noise
    /// in twelve of them.
    fn source() -> MemDevice {
        let mut x = 7u32;
        let mut data = vec![0u8; (24 * MIB) as usize];
        for (i, b) in data.iter_mut().enumerate() {
            if (i as u64 / MIB) % 2 == 0 {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *b = (x >> 24) as u8;
            }
        }
        MemDevice::new(data)
    }

    /// A live stream's sink: each payload is checked against the hash it carries before it
    /// is written; at the end what was written is confirmed against the committed manifest,
    /// and a manifest that says otherwise is refused, naming the chunk.
    #[test]
    fn a_live_sink_checks_each_chunk_and_confirms_the_committed_manifest() {
        use imaging::capture::{outline, plan};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let src = source();
        let mut o = CaptureOptions::new("g");
        o.chunk_size = MIB;
        o.check_space = false;
        let p = plan(&src, MIB).unwrap();
        let desc = Description::live(outline(&src, "mem", &o, &p));
        let c = capture(&src, "mem", &store, &o, &NoProgress).unwrap();
        let disk = Arc::new(MemDevice::new(vec![0xa5; (24 * MIB) as usize]));
        let sink = Sink::on(Failing::new(&disk, u64::MAX), Path::new("mem"), desc).unwrap();
        let chunks: Vec<_> = c.manifest.chunks().map(|(_, c)| c.hash).collect();
        assert_eq!(sink.chunks(), chunks.len());
        for (i, h) in chunks.iter().enumerate() {
            let plain = store.read_chunk(h, MIB as usize).unwrap();
            let mut wrong = crate::live::payload(h, &plain);
            wrong[40] ^= 1;
            assert!(sink.write(i, &wrong).unwrap().is_err(), "a tampered chunk");
            assert!(!sink.holds(i).unwrap());
            sink.write(i, &crate::live::payload(h, &plain))
                .unwrap()
                .unwrap();
            assert!(sink.holds(i).unwrap());
        }
        let mut other = c.manifest.clone();
        other.areas[0].chunks[3].hash = Hash::of(b"other");
        let e = sink.confirm(&other).unwrap_err();
        assert!(format!("{e}").contains("chunk 3 was written as"), "{e}");
        sink.confirm(&c.manifest).unwrap();
        sink.finish().unwrap();
        assert!(
            disk.to_vec() == src.to_vec(),
            "the disk differs from the source"
        );
    }

    #[test]
    fn a_write_cut_off_mid_way_resumes_with_only_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let src = source();
        let mut o = CaptureOptions::new("g");
        o.chunk_size = MIB;
        o.check_space = false;
        let c = capture(&src, "mem", &store, &o, &NoProgress).unwrap();
        let source = Source::image(store, c.id, c.manifest).unwrap();
        let n = source.chunk_count();
        assert_eq!(n, 12);
        let desc = || source.describe(1, "lab").unwrap();
        // The target held other data before.
        let disk = Arc::new(MemDevice::new(vec![0xa5; (24 * MIB) as usize]));
        let name = Path::new("mem");

        // Five chunks land; the sixth is half written when the disk stops.
        let sink = Sink::on(Failing::new(&disk, 5 * MIB + MIB / 2), name, desc()).unwrap();
        let mut written = 0;
        for i in 0..n {
            match sink.write(i, &source.payload(i).unwrap()) {
                Ok(Ok(())) => written += 1,
                Ok(Err(wrong)) => panic!("{wrong}"),
                Err(e) => {
                    assert!(
                        format!("{e:#}").contains(&format!("writing chunk {i}")),
                        "{e:#}"
                    );
                    break;
                }
            }
        }
        assert_eq!(written, 5);
        assert!(sink.finish().is_err(), "a stopped disk cannot be finished");

        // Started again on the same disk: the five are found, the torn one is not.
        let sink = Sink::on(Failing::new(&disk, u64::MAX), name, desc()).unwrap();
        let have = sink.scan().unwrap();
        assert_eq!(have, (0..n).map(|i| i < 5).collect::<Vec<_>>());
        let mut fetched = 0;
        for i in (0..n).filter(|&i| !have[i]) {
            sink.write(i, &source.payload(i).unwrap()).unwrap().unwrap();
            fetched += 1;
        }
        assert_eq!(fetched, n - 5);
        sink.finish().unwrap();
        assert_eq!(sink.check_zero_fill().unwrap(), None);
        assert!(
            disk.to_vec() == src.to_vec(),
            "the resumed disk differs from the source"
        );
    }
}
