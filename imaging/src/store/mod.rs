//! The image store: content-addressed chunks plus manifests, as objects in a [`Backend`]: a
//! local directory by default, or an object store (S3, WebDAV, SFTP) supplied by the caller.
//!
//! ```text
//! chunks/ab/abcdef…   one zstd frame per chunk, named by the BLAKE3 of its plaintext
//! manifests/<id>.json one manifest per image version; id = BLAKE3 of the file's bytes
//! tmp/                files being written (directory stores); cleaned by `gc`
//! lock                flock (directory stores): shared while capturing or restoring,
//!                     exclusive for gc
//! locks/…             lock objects (object stores): the same, see [`lock`]
//! ```
//!
//! Every object is written whole (a directory store writes to `tmp/`, fsyncs and renames), so
//! a reader never sees a partial chunk or manifest; a capture commits its manifest last, so an
//! interrupted capture never lists a half image (its chunks are garbage that `gc` frees).
//!
//! A chunk file is either a *full* chunk (one zstd frame of the plaintext) or a *delta* chunk:
//! `DRVD`, the base's plaintext length (u32 LE) and BLAKE3 name, then a zstd frame compressed
//! with the base's plaintext as its prefix (zstd's "patch-from"). A recapture passes each
//! region's previous chunk as the base, so a 4 MiB region in which one file changed costs about
//! the changed bytes, not the whole region. A delta's base is always a full chunk (chains are
//! one step deep), `gc` keeps the bases of live deltas, and reading a delta checks the base's
//! hash as well as its own.

pub mod backend;
pub mod cache;
pub mod crypt;
pub mod lock;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use backend::{free_space_at, Backend, BackendError, Entry, LocalDir, ReadStats};
pub use crypt::{Crypt, Secret, SecretError};
pub use lock::StoreLock;

use crate::manifest::{Hash, Manifest, ManifestError};

/// zstd level for chunks: level 3 (zstd's default) is the speed/size point partclone users
/// pair with `zstd -3`; higher levels cost far more CPU than they save on disk data.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// Magic of a delta chunk file.
const DELTA_MAGIC: &[u8; 4] = b"DRVD";
/// Magic + base length + base hash.
const DELTA_HEADER: usize = 4 + 4 + 32;
/// A delta smaller than this fraction of the plaintext is kept without also trying a full frame.
const DELTA_GOOD_ENOUGH: usize = 8;
/// Largest plaintext a chunk may hold (the manifest's chunk size limit).
const MAX_CHUNK: u64 = 64 << 20;
/// Requests in flight at once when many chunks of a remote store (object store, WebDAV, SFTP)
/// are checked or read: each is a round trip, which one thread at a time would wait out in
/// turn.
pub const REMOTE_PARALLEL: usize = 16;

/// Store errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An operation on the store's storage failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// No image matches the name or id.
    #[error("no image named or with id {0:?} in the store")]
    NotFound(String),
    /// An id prefix matches several images.
    #[error("{0:?} matches several images; give more of the id")]
    Ambiguous(String),
    /// A manifest file is damaged.
    #[error("manifest {at}")]
    BadManifest {
        /// The object.
        at: String,
        /// What is wrong.
        #[source]
        source: ManifestError,
    },
    /// A chunk is missing from the store.
    #[error("chunk {0} is missing from the store")]
    MissingChunk(Hash),
    /// The store is encrypted and no key was given.
    #[error(
        "store {0} is encrypted: give its key (--encrypt-key-file FILE or \
         --encrypt-passphrase-file FILE)"
    )]
    KeyNeeded(String),
    /// The key given does not open the store.
    #[error("store {location}")]
    Key {
        /// The store.
        location: String,
        /// What is wrong.
        #[source]
        source: crypt::KeyError,
    },
    /// A key was given for a store that holds unencrypted images.
    #[error(
        "store {0} holds unencrypted images: a store is encrypted when it is made; copy the \
         images into a new store with `drover image copy NAME --to URL` and the key"
    )]
    NotEncrypted(String),
    /// A chunk's bytes do not decompress to the plaintext its name promises.
    #[error("chunk {hash} is corrupt: {why}")]
    CorruptChunk {
        /// The chunk.
        hash: Hash,
        /// What is wrong.
        why: String,
    },
}

/// An image in the store: its id and manifest.
#[derive(Debug, Clone)]
pub struct StoredImage {
    /// BLAKE3 of the manifest file, hex.
    pub id: String,
    /// The manifest.
    pub manifest: Manifest,
}

/// An image store. Cloning it is cheap: clones share the backend and the manifest cache.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    /// The key of an encrypted store.
    crypt: Option<Arc<Crypt>>,
    /// Manifests read so far, by object key: a manifest never changes once written (its id is
    /// its hash), so a listing reads each one once.
    manifests: Arc<Mutex<HashMap<String, Manifest>>>,
}

impl Store {
    /// Opens (creating if needed) the store in the directory `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        Ok(Self::with_backend(Arc::new(LocalDir::open(root)?)))
    }

    /// A store kept in `backend`.
    pub fn with_backend(backend: Arc<dyn Backend>) -> Self {
        Self {
            backend,
            crypt: None,
            manifests: Arc::default(),
        }
    }

    /// This store opened with `secret` (or without a key): checks that the key opens an
    /// encrypted store, that a store needing a key gets one, and makes a new (empty) store
    /// encrypted when a key is given. Use it wherever a user names a store.
    pub fn unlock(mut self, secret: Option<&Secret>) -> Result<Self, StoreError> {
        let location = self.location();
        let config = match self.backend.read(crypt::CONFIG_KEY)? {
            Some(bytes) => Some(
                serde_json::from_slice::<crypt::StoreConfig>(&bytes).map_err(|e| {
                    StoreError::Key {
                        location: location.clone(),
                        source: crypt::KeyError::BadConfig(e.to_string()),
                    }
                })?,
            ),
            None => None,
        };
        match (config.and_then(|c| c.encryption), secret) {
            (None, None) => Ok(self),
            (Some(_), None) => Err(StoreError::KeyNeeded(location)),
            (Some(e), Some(secret)) => {
                let c = Crypt::open_with(secret, &e)
                    .map_err(|source| StoreError::Key { location, source })?;
                self.crypt = Some(Arc::new(c));
                Ok(self)
            }
            (None, Some(secret)) => {
                let used = ["manifests/", "chunks/"]
                    .iter()
                    .map(|p| self.backend.list(p).map(|l| !l.is_empty()))
                    .collect::<Result<Vec<_>, _>>()?;
                if used.contains(&true) {
                    return Err(StoreError::NotEncrypted(location));
                }
                let (c, cfg) = Crypt::create(secret);
                let bytes = serde_json::to_vec_pretty(&cfg).expect("settings serialize");
                self.backend.write(crypt::CONFIG_KEY, &bytes)?;
                self.backend.sync()?;
                self.crypt = Some(Arc::new(c));
                Ok(self)
            }
        }
    }

    /// Reads from the store and from the local cache, when the store has one.
    pub fn read_stats(&self) -> Option<ReadStats> {
        self.backend.read_stats()
    }

    /// Whether the store is encrypted (and open).
    pub fn encrypted(&self) -> bool {
        self.crypt.is_some()
    }

    /// `bytes` as stored under `key`: sealed in an encrypted store.
    fn seal(&self, bytes: Vec<u8>, key: &str) -> Vec<u8> {
        match &self.crypt {
            Some(c) => c.seal(&bytes, key),
            None => bytes,
        }
    }

    /// An object's bytes as written: opened in an encrypted store (`None` when it does not
    /// open with the key).
    fn unseal(&self, bytes: Vec<u8>, key: &str) -> Option<Vec<u8>> {
        match &self.crypt {
            Some(c) => c.open(&bytes, key),
            None => Some(bytes),
        }
    }

    /// Where the store is: a directory, or a URL without credentials.
    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// The store's directory, when it is one on this machine.
    pub fn local_dir(&self) -> Option<&Path> {
        self.backend.local_dir()
    }

    /// This store read without its local cache (the same key): what `verify` reads, so that it
    /// checks the store itself, not a copy.
    pub fn bypassing_cache(&self) -> Self {
        match self.backend.origin() {
            Some(origin) => Self {
                backend: origin,
                crypt: self.crypt.clone(),
                manifests: self.manifests.clone(),
            },
            None => self.clone(),
        }
    }

    /// The backend the store keeps its objects in.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    fn lock(&self, exclusive: bool) -> Result<StoreLock, StoreError> {
        match self.backend.local_dir() {
            Some(dir) => {
                let p = dir.join("lock");
                let f = File::options()
                    .create(true)
                    .append(true)
                    .open(&p)
                    .map_err(|e| BackendError::new("opening lock file", p.display(), e))?;
                Ok(lock::lock_file(f, exclusive)
                    .map_err(|e| BackendError::new("locking", p.display(), e))?)
            }
            None => Ok(lock::lock_objects(self.backend.clone(), exclusive)?),
        }
    }

    /// A shared lock: held by captures and restores, so `gc` never frees a chunk they use.
    pub fn lock_shared(&self) -> Result<StoreLock, StoreError> {
        self.lock(false)
    }

    /// The exclusive lock `gc` holds.
    pub fn lock_exclusive(&self) -> Result<StoreLock, StoreError> {
        self.lock(true)
    }

    /// The object key of chunk `h`.
    pub fn chunk_key(&self, h: &Hash) -> String {
        let hex = match &self.crypt {
            Some(c) => c.chunk_name(h).to_hex(),
            None => h.to_hex(),
        };
        format!("chunks/{}/{hex}", &hex[..2])
    }

    /// The file holding chunk `h`, when the store is a directory on this machine.
    pub fn chunk_file(&self, h: &Hash) -> Option<PathBuf> {
        let key = self.chunk_key(h);
        self.backend.local_dir().map(|d| d.join(key))
    }

    fn manifest_key(id: &str) -> String {
        format!("manifests/{id}.json")
    }

    /// The stored size of chunk `h`, or `None` when the store lacks it.
    pub fn chunk_size(&self, h: &Hash) -> Result<Option<u64>, StoreError> {
        Ok(self.backend.size(&self.chunk_key(h))?)
    }

    /// Whether chunk `h` is stored (an unreadable store counts as not: the caller then stores
    /// it, and that write reports the problem).
    pub fn has_chunk(&self, h: &Hash) -> bool {
        matches!(self.chunk_size(h), Ok(Some(_)))
    }

    /// The first of `hashes` the store lacks, if any. On a remote store the checks (one
    /// request each) run [`REMOTE_PARALLEL`] at a time.
    pub fn first_missing(&self, hashes: &[Hash]) -> Option<Hash> {
        if self.local_dir().is_some() || hashes.len() < 2 {
            return hashes.iter().find(|h| !self.has_chunk(h)).copied();
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let first = std::sync::atomic::AtomicUsize::new(usize::MAX);
        std::thread::scope(|s| {
            for _ in 0..REMOTE_PARALLEL.min(hashes.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= hashes.len() || i > first.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    if !self.has_chunk(&hashes[i]) {
                        first.fetch_min(i, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        hashes.get(first.into_inner()).copied()
    }

    /// Compresses and stores `plain` under `hash` unless it is already there. With a `base`
    /// (the same region's chunk in the previous version) the chunk may be stored as a delta
    /// against it, when that is smaller. Returns the stored size and whether this call added it.
    pub fn put_chunk(
        &self,
        hash: &Hash,
        plain: &[u8],
        level: i32,
        base: Option<&Hash>,
    ) -> Result<(u64, bool), StoreError> {
        let key = self.chunk_key(hash);
        if let Some(len) = self.backend.size(&key)? {
            return Ok((len, false));
        }
        let compress_err = |e| StoreError::from(BackendError::new("compressing chunk", &key, e));
        let delta = match base {
            Some(b) if b != hash => self.delta_base(b).and_then(|(bh, bp)| {
                let z = compress_delta(plain, &bp, level).ok()?;
                let mut out = Vec::with_capacity(DELTA_HEADER + z.len());
                out.extend_from_slice(DELTA_MAGIC);
                out.extend_from_slice(&(bp.len() as u32).to_le_bytes());
                out.extend_from_slice(&bh.0);
                out.extend_from_slice(&z);
                Some(out)
            }),
            _ => None,
        };
        let bytes = match delta {
            Some(d) if d.len() < plain.len() / DELTA_GOOD_ENOUGH => d,
            Some(d) => {
                let full = compress_full(plain, level).map_err(compress_err)?;
                if d.len() < full.len() {
                    d
                } else {
                    full
                }
            }
            None => compress_full(plain, level).map_err(compress_err)?,
        };
        let bytes = self.seal(bytes, &key);
        self.backend.write(&key, &bytes)?;
        Ok((bytes.len() as u64, true))
    }

    /// The full chunk a delta against `b` should reference, with its plaintext: `b` itself
    /// when it is full, else `b`'s own base (chains stay one step deep). `None` when `b` is
    /// missing or unreadable: the caller then stores a full chunk.
    fn delta_base(&self, b: &Hash) -> Option<(Hash, Vec<u8>)> {
        let z = self.read_file(b).ok()?;
        let (bh, z) = match parse_delta_header(&z) {
            Some((_, base)) => (base, self.read_file(&base).ok()?),
            None => (*b, z),
        };
        if parse_delta_header(&z).is_some() {
            return None;
        }
        let len = zstd::zstd_safe::get_frame_content_size(&z).ok().flatten()?;
        if len > MAX_CHUNK {
            return None;
        }
        let plain = self.read_full(&bh, &z, len as usize).ok()?;
        Some((bh, plain))
    }

    fn read_full(&self, hash: &Hash, z: &[u8], expect_len: usize) -> Result<Vec<u8>, StoreError> {
        let plain = decompress_frame(z, expect_len)
            .map_err(|why| StoreError::CorruptChunk { hash: *hash, why })?;
        if Hash::of(&plain) != *hash {
            return Err(StoreError::CorruptChunk {
                hash: *hash,
                why: "content does not match its hash".into(),
            });
        }
        Ok(plain)
    }

    fn read_file(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        let key = self.chunk_key(hash);
        let bytes = self
            .backend
            .read(&key)?
            .ok_or(StoreError::MissingChunk(*hash))?;
        self.unseal(bytes, &key)
            .ok_or_else(|| StoreError::CorruptChunk {
                hash: *hash,
                why: format!(
                    "{} does not open with the store's key (damaged, or written with another)",
                    self.describe(&key)
                ),
            })
    }

    /// Stores a chunk that arrived as a zstd frame (a network capture) as it is, after
    /// checking it: it must decompress to exactly `expect_len` bytes whose BLAKE3 hash is
    /// `hash`. Returns the stored size and whether this call added it.
    pub fn put_frame(
        &self,
        hash: &Hash,
        frame: &[u8],
        expect_len: usize,
    ) -> Result<(u64, bool), StoreError> {
        if expect_len as u64 > MAX_CHUNK {
            return Err(StoreError::CorruptChunk {
                hash: *hash,
                why: format!("{expect_len} bytes is more than a chunk may hold"),
            });
        }
        let key = self.chunk_key(hash);
        if let Some(len) = self.backend.size(&key)? {
            return Ok((len, false));
        }
        self.read_full(hash, frame, expect_len)?;
        let bytes = self.seal(frame.to_vec(), &key);
        self.backend.write(&key, &bytes)?;
        Ok((bytes.len() as u64, true))
    }

    /// Runs `read` on chunk `hash`; when it finds the chunk corrupt and the backend held a
    /// cached copy, the copy is dropped, the damage logged, and the chunk read again from the
    /// store itself. A delta's base gets the same second chance.
    fn checked<T>(
        &self,
        hash: &Hash,
        read: impl Fn() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match read() {
            Err(StoreError::CorruptChunk { hash: bad, why }) => {
                let mut again = self.backend.evict(&self.chunk_key(hash));
                if bad != *hash || why.contains("base") {
                    if let Some(base) = self.chunk_base(hash) {
                        again |= self.backend.evict(&self.chunk_key(&base));
                    }
                }
                if !again {
                    return Err(StoreError::CorruptChunk { hash: bad, why });
                }
                tracing::warn!(
                    chunk = %hash,
                    problem = %why,
                    "a chunk in the local cache was damaged: read again from the store"
                );
                read()
            }
            r => r,
        }
    }

    /// Reads chunk `hash` (resolving a delta through its base), decompresses it to
    /// `expect_len` bytes and checks its hash.
    pub fn read_chunk(&self, hash: &Hash, expect_len: usize) -> Result<Vec<u8>, StoreError> {
        self.checked(hash, || self.read_chunk_once(hash, expect_len))
    }

    fn read_chunk_once(&self, hash: &Hash, expect_len: usize) -> Result<Vec<u8>, StoreError> {
        let z = self.read_file(hash)?;
        let Some((base_len, base)) = parse_delta_header(&z) else {
            return self.read_full(hash, &z, expect_len);
        };
        let corrupt = |why: String| StoreError::CorruptChunk { hash: *hash, why };
        let bz = match self.read_file(&base) {
            Err(StoreError::MissingChunk(_)) => {
                return Err(corrupt(format!("its base chunk {base} is missing")))
            }
            r => r?,
        };
        if parse_delta_header(&bz).is_some() || base_len as u64 > MAX_CHUNK {
            return Err(corrupt(format!(
                "its base chunk {base} is not a full chunk"
            )));
        }
        let base_plain = self
            .read_full(&base, &bz, base_len as usize)
            .map_err(|e| corrupt(format!("its base: {e}")))?;
        let plain = decompress_delta(&z[DELTA_HEADER..], &base_plain, expect_len)
            .map_err(|e| corrupt(format!("does not decompress ({e})")))?;
        if plain.len() != expect_len {
            return Err(corrupt(format!(
                "holds {} bytes, expected {expect_len}",
                plain.len()
            )));
        }
        if Hash::of(&plain) != *hash {
            return Err(corrupt("content does not match its hash".into()));
        }
        Ok(plain)
    }

    /// A self-contained zstd frame of chunk `hash` (`expect_len` bytes of plaintext), for
    /// sending to another machine: a full chunk's stored frame as it is, a delta chunk
    /// decoded through its base and compressed again. From a directory store a full chunk is
    /// sent unchecked (the receiver checks the plaintext's hash, [`decompress_frame`]); from
    /// any other store every chunk is checked here, so a damaged object is named at the
    /// server and never sent.
    pub fn read_frame(&self, hash: &Hash, expect_len: usize) -> Result<Vec<u8>, StoreError> {
        self.checked(hash, || self.read_frame_once(hash, expect_len))
    }

    fn read_frame_once(&self, hash: &Hash, expect_len: usize) -> Result<Vec<u8>, StoreError> {
        let z = self.read_file(hash)?;
        if parse_delta_header(&z).is_none() {
            if self.backend.local_dir().is_none() {
                self.read_full(hash, &z, expect_len)?;
            }
            return Ok(z);
        }
        let plain = self.read_chunk_once(hash, expect_len)?;
        compress_full(&plain, DEFAULT_ZSTD_LEVEL)
            .map_err(|e| BackendError::new("compressing chunk", self.chunk_key(hash), e).into())
    }

    /// The base a stored delta chunk references, if `hash` is a delta.
    pub fn chunk_base(&self, hash: &Hash) -> Option<Hash> {
        if let Some(p) = self.chunk_file(hash).filter(|_| self.crypt.is_none()) {
            // A directory store reads only the header.
            use std::io::Read;
            let mut head = [0u8; DELTA_HEADER];
            let mut f = File::open(p).ok()?;
            f.read_exact(&mut head).ok()?;
            return parse_delta_header(&head).map(|(_, b)| b);
        }
        let z = self.read_file(hash).ok()?;
        parse_delta_header(&z).map(|(_, b)| b)
    }

    /// Commits a manifest; returns the image id. Every chunk written before is made durable
    /// first (a backend may still be uploading some), so a manifest never lists a chunk that
    /// failed to reach the store.
    pub fn put_manifest(&self, m: &Manifest) -> Result<String, StoreError> {
        self.sync_dirs()?;
        let bytes = m.encode();
        let id = match &self.crypt {
            Some(c) => c.manifest_id(&bytes),
            None => Hash::of(&bytes),
        }
        .to_hex();
        let key = Self::manifest_key(&id);
        let sealed = self.seal(bytes, &key);
        self.backend.write(&key, &sealed)?;
        self.sync_dirs()?;
        Ok(id)
    }

    /// Makes every write so far durable.
    pub fn sync_dirs(&self) -> Result<(), StoreError> {
        Ok(self.backend.sync()?)
    }

    /// Every image, oldest first. A damaged manifest is an error naming its file: use this
    /// where an unreadable manifest must stop the work (gc would free its chunks).
    pub fn list(&self) -> Result<Vec<StoredImage>, StoreError> {
        let (images, mut problems) = self.scan()?;
        match problems.pop() {
            Some(p) => Err(p),
            None => Ok(images),
        }
    }

    /// Every readable image, oldest first, and a problem per damaged manifest: one bad file
    /// never hides the other images.
    pub fn scan(&self) -> Result<(Vec<StoredImage>, Vec<StoreError>), StoreError> {
        let mut out = Vec::new();
        let mut problems = Vec::new();
        let entries = self.backend.list("manifests/")?;
        let mut cache = self.manifests.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|k, _| entries.iter().any(|e| &e.key == k));
        for e in entries {
            let Some(id) = e
                .key
                .strip_prefix("manifests/")
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            if let Some(m) = cache.get(&e.key) {
                out.push(StoredImage {
                    id: id.to_string(),
                    manifest: m.clone(),
                });
                continue;
            }
            let bytes = match self.backend.read(&e.key) {
                Ok(Some(b)) => match self.unseal(b, &e.key) {
                    Some(b) => b,
                    None => {
                        problems.push(StoreError::BadManifest {
                            at: self.describe(&e.key),
                            source: ManifestError::Sealed,
                        });
                        continue;
                    }
                },
                // Removed since the listing.
                Ok(None) => continue,
                Err(e) => {
                    problems.push(e.into());
                    continue;
                }
            };
            let manifest = match Manifest::decode(&bytes) {
                Ok(m) => m,
                Err(source) => {
                    problems.push(StoreError::BadManifest {
                        at: self.describe(&e.key),
                        source,
                    });
                    continue;
                }
            };
            cache.insert(e.key.clone(), manifest.clone());
            out.push(StoredImage {
                id: id.to_string(),
                manifest,
            });
        }
        out.sort_by(|a, b| {
            (
                a.manifest.created,
                &a.manifest.name,
                a.manifest.name_version,
            )
                .cmp(&(
                    b.manifest.created,
                    &b.manifest.name,
                    b.manifest.name_version,
                ))
        });
        Ok((out, problems))
    }

    /// An object's place, for messages: its file, or its key under the store's URL.
    fn describe(&self, key: &str) -> String {
        match self.backend.local_dir() {
            Some(d) => d.join(key).display().to_string(),
            None => format!("{}/{key}", self.backend.location().trim_end_matches('/')),
        }
    }

    /// Finds an image by `NAME` (its newest version), `NAME@VERSION`, or an id or id prefix
    /// (at least 6 hex digits).
    pub fn resolve(&self, reference: &str) -> Result<StoredImage, StoreError> {
        let (all, _) = self.scan()?;
        let (name, version) = match reference.rsplit_once('@') {
            Some((n, v)) => match v.parse::<u32>() {
                Ok(v) => (n, Some(v)),
                Err(_) => (reference, None),
            },
            None => (reference, None),
        };
        let by_name: Vec<&StoredImage> = all
            .iter()
            .filter(|i| {
                i.manifest.name == name && version.is_none_or(|v| i.manifest.name_version == v)
            })
            .collect();
        if let Some(best) = by_name.iter().max_by_key(|i| i.manifest.name_version) {
            return Ok((*best).clone());
        }
        if reference.len() >= 6 && reference.chars().all(|c| c.is_ascii_hexdigit()) {
            let r = reference.to_ascii_lowercase();
            let hits: Vec<&StoredImage> = all.iter().filter(|i| i.id.starts_with(&r)).collect();
            return match hits.len() {
                0 => Err(StoreError::NotFound(reference.into())),
                1 => Ok(hits[0].clone()),
                _ => Err(StoreError::Ambiguous(reference.into())),
            };
        }
        Err(StoreError::NotFound(reference.into()))
    }

    /// Removes one image version (its chunks stay until [`Self::gc`]).
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let key = Self::manifest_key(id);
        if self.backend.size(&key)?.is_none() {
            return Err(StoreError::NotFound(id.into()));
        }
        self.backend.delete(&key)?;
        self.sync_dirs()
    }

    /// How many images reference each chunk (every manifest must be readable).
    pub fn chunk_refs(&self) -> Result<HashMap<Hash, u32>, StoreError> {
        Ok(chunk_refs_of(&self.list()?))
    }

    /// Deletes every chunk no manifest references and every stale temp file. Takes the
    /// exclusive lock, so it waits for running captures and restores.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let _lock = self.lock_exclusive()?;
        let mut live = self.chunk_refs()?;
        let bases: Vec<Hash> = live.keys().filter_map(|h| self.chunk_base(h)).collect();
        for b in bases {
            live.entry(b).or_insert(0);
        }
        let live: HashSet<String> = live.keys().map(|h| self.chunk_key(h)).collect();
        let mut report = GcReport::default();
        for e in self.backend.list("chunks/")? {
            let keep = live.contains(&e.key);
            if keep {
                report.kept_chunks += 1;
                continue;
            }
            self.backend.delete(&e.key)?;
            report.removed_chunks += 1;
            report.freed_bytes += e.size;
        }
        for e in self.backend.list("tmp/")? {
            self.backend.delete(&e.key)?;
            report.freed_bytes += e.size;
        }
        self.sync_dirs()?;
        Ok(report)
    }

    /// Free bytes where the store keeps its objects; `None` when the backend cannot tell (an
    /// object store).
    pub fn free_space(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.backend.free_space()?)
    }
}

/// What [`copy_image`] did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CopyReport {
    /// The image's id at the destination.
    pub id: String,
    /// Its name and version at the destination.
    pub name: String,
    /// The version it got there.
    pub version: u32,
    /// Chunks copied (the destination lacked them).
    pub copied_chunks: u64,
    /// Chunks the destination had already.
    pub present_chunks: u64,
    /// Bytes written to the destination.
    pub copied_bytes: u64,
    /// Whether the destination held this very image already (nothing was written).
    pub already_there: bool,
}

/// Copies image `img` from `from` into `to`: every chunk `to` lacks is read from `from`,
/// checked against its hash (decompressed and hashed) and written; then the manifest, last, so
/// an interrupted copy leaves no image at the destination. Either store may be encrypted (with
/// its own key). The image keeps its name; it keeps its version unless the destination already
/// has that version of the name, when it gets the next one. `threads` chunks move at once.
pub fn copy_image(
    from: &Store,
    img: &StoredImage,
    to: &Store,
    threads: usize,
) -> Result<CopyReport, StoreError> {
    let m = &img.manifest;
    let (existing, _) = to.scan()?;
    let same = |o: &StoredImage| {
        o.manifest.name == m.name
            && o.manifest.created == m.created
            && o.manifest.areas.len() == m.areas.len()
            && o.manifest
                .chunks()
                .map(|(_, c)| c.hash)
                .eq(m.chunks().map(|(_, c)| c.hash))
    };
    if let Some(o) = existing.iter().find(|o| same(o)) {
        return Ok(CopyReport {
            id: o.id.clone(),
            name: o.manifest.name.clone(),
            version: o.manifest.name_version,
            present_chunks: o.manifest.chunks().count() as u64,
            already_there: true,
            ..Default::default()
        });
    }
    let _hold = to.lock_shared()?;
    let mut todo: Vec<(Hash, usize)> = Vec::new();
    let mut seen = HashSet::new();
    for a in &m.areas {
        for c in &a.chunks {
            if seen.insert(c.hash) {
                todo.push((c.hash, a.region_len(c.index, m.chunk_size) as usize));
            }
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let totals = Mutex::new((0u64, 0u64, 0u64));
    let first_err: Mutex<Option<StoreError>> = Mutex::new(None);
    std::thread::scope(|sc| {
        for _ in 0..threads.max(1) {
            sc.spawn(|| loop {
                if first_err.lock().map_or(true, |e| e.is_some()) {
                    return;
                }
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((h, len)) = todo.get(i) else { return };
                let r = (|| -> Result<(u64, bool), StoreError> {
                    if to.has_chunk(h) {
                        return Ok((0, false));
                    }
                    let frame = from.read_frame(h, *len)?;
                    to.put_frame(h, &frame, *len)
                })();
                match r {
                    Ok((n, added)) => {
                        let mut t = totals.lock().unwrap_or_else(|e| e.into_inner());
                        if added {
                            t.0 += 1;
                            t.2 += n;
                        } else {
                            t.1 += 1;
                        }
                    }
                    Err(e) => {
                        let mut f = first_err.lock().unwrap_or_else(|e| e.into_inner());
                        f.get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let (copied_chunks, present_chunks, copied_bytes) =
        totals.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut out = m.clone();
    for a in &mut out.areas {
        for c in &mut a.chunks {
            c.stored = to
                .chunk_size(&c.hash)?
                .ok_or(StoreError::MissingChunk(c.hash))?;
        }
    }
    if existing
        .iter()
        .any(|o| o.manifest.name == m.name && o.manifest.name_version == m.name_version)
    {
        out.name_version = existing
            .iter()
            .filter(|o| o.manifest.name == m.name)
            .map(|o| o.manifest.name_version)
            .max()
            .unwrap_or(0)
            + 1;
    }
    to.sync_dirs()?;
    let id = to.put_manifest(&out)?;
    Ok(CopyReport {
        id,
        name: out.name.clone(),
        version: out.name_version,
        copied_chunks,
        present_chunks,
        copied_bytes,
        already_there: false,
    })
}

/// How many of `images` reference each chunk.
pub fn chunk_refs_of(images: &[StoredImage]) -> HashMap<Hash, u32> {
    let mut refs = HashMap::new();
    for img in images {
        let mut seen = HashSet::new();
        for (_, c) in img.manifest.chunks() {
            if seen.insert(c.hash) {
                *refs.entry(c.hash).or_insert(0) += 1;
            }
        }
    }
    refs
}

fn parse_delta_header(z: &[u8]) -> Option<(u32, Hash)> {
    if z.len() < DELTA_HEADER || &z[..4] != DELTA_MAGIC {
        return None;
    }
    let len = u32::from_le_bytes([z[4], z[5], z[6], z[7]]);
    let mut h = [0u8; 32];
    h.copy_from_slice(&z[8..40]);
    Some((len, Hash(h)))
}

/// zstd window (log2) covering the base and the chunk, so every byte of the base can match.
fn delta_window_log(base_len: usize, len: usize) -> u32 {
    ((base_len + len).max(1 << 10) as u64)
        .next_power_of_two()
        .trailing_zeros()
        .clamp(10, 27)
}

/// Decompresses a frame made by [`Store::read_frame`], which must hold exactly `expect_len`
/// bytes; the caller checks the hash.
pub fn decompress_frame(z: &[u8], expect_len: usize) -> Result<Vec<u8>, String> {
    // One byte of room beyond the expected size, so an oversized frame is caught.
    let mut plain = Vec::with_capacity(expect_len + 1);
    let n = zstd::bulk::Decompressor::new()
        .and_then(|mut d| d.decompress_to_buffer(z, &mut plain))
        .map_err(|e| format!("does not decompress ({e})"))?;
    if n != expect_len {
        return Err(format!("holds {n} bytes, expected {expect_len}"));
    }
    Ok(plain)
}

/// A chunk's plaintext as one self-contained zstd frame, as the store keeps a full chunk
/// (for sending to a server that keeps it with [`Store::put_frame`]).
pub fn compress_frame(plain: &[u8], level: i32) -> io::Result<Vec<u8>> {
    compress_full(plain, level)
}

/// One zstd frame of a whole chunk, with a window covering the chunk so a match may reach back
/// to its first byte (level 3 alone would stop at 2 MiB).
fn compress_full(plain: &[u8], level: i32) -> io::Result<Vec<u8>> {
    use zstd::zstd_safe::CParameter;
    let mut c = zstd::bulk::Compressor::new(level)?;
    c.set_parameter(CParameter::WindowLog(delta_window_log(0, plain.len())))?;
    c.compress(plain)
}

fn compress_delta(plain: &[u8], base: &[u8], level: i32) -> io::Result<Vec<u8>> {
    use zstd::zstd_safe::CParameter;
    let mut c = zstd::bulk::Compressor::new(level)?;
    c.set_parameter(CParameter::WindowLog(delta_window_log(
        base.len(),
        plain.len(),
    )))?;
    c.set_parameter(CParameter::EnableLongDistanceMatching(true))?;
    c.context_mut()
        .ref_prefix(base)
        .map_err(|code| io::Error::other(zstd::zstd_safe::get_error_name(code)))?;
    c.compress(plain)
}

fn decompress_delta(z: &[u8], base: &[u8], expect_len: usize) -> io::Result<Vec<u8>> {
    use zstd::zstd_safe::{DCtx, DParameter};
    let err = |code| io::Error::other(zstd::zstd_safe::get_error_name(code));
    let mut d = DCtx::create();
    d.set_parameter(DParameter::WindowLogMax(27)).map_err(err)?;
    d.ref_prefix(base).map_err(err)?;
    let mut out = Vec::with_capacity(expect_len + 1);
    d.decompress(&mut out, z).map_err(err)?;
    Ok(out)
}

/// What [`Store::gc`] did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    /// Chunks deleted.
    pub removed_chunks: u64,
    /// Chunks still referenced.
    pub kept_chunks: u64,
    /// Bytes freed (chunks and temp files).
    pub freed_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn chunk_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let data = vec![7u8; 100_000];
        let h = Hash::of(&data);
        let (_, new) = s.put_chunk(&h, &data, 3, None).unwrap();
        assert!(new);
        let (_, new) = s.put_chunk(&h, &data, 3, None).unwrap();
        assert!(!new);
        assert_eq!(s.read_chunk(&h, data.len()).unwrap(), data);
        assert!(matches!(
            s.read_chunk(&h, 5),
            Err(StoreError::CorruptChunk { .. })
        ));
        // Flip a byte in the stored frame.
        let p = s.chunk_file(&h).unwrap();
        let mut z = fs::read(&p).unwrap();
        let n = z.len();
        z[n / 2] ^= 0x40;
        fs::write(&p, z).unwrap();
        assert!(matches!(
            s.read_chunk(&h, data.len()),
            Err(StoreError::CorruptChunk { .. })
        ));
        let other = Hash::of(b"x");
        assert!(matches!(
            s.read_chunk(&other, 1),
            Err(StoreError::MissingChunk(_))
        ));
    }

    #[test]
    fn delta_chunks_store_only_the_change_and_keep_their_base() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut x = 1u64;
        let old: Vec<u8> = (0..4 << 20)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                (x >> 56) as u8
            })
            .collect();
        let ho = Hash::of(&old);
        let (full, _) = s.put_chunk(&ho, &old, 3, None).unwrap();
        let mut new = old.clone();
        for b in &mut new[1 << 20..(1 << 20) + (64 << 10)] {
            *b ^= 0x5A;
        }
        let hn = Hash::of(&new);
        let (delta, added) = s.put_chunk(&hn, &new, 3, Some(&ho)).unwrap();
        assert!(added);
        assert!(delta < full / 20, "delta {delta} vs full {full}");
        assert_eq!(s.chunk_base(&hn), Some(ho));
        assert_eq!(s.read_chunk(&hn, new.len()).unwrap(), new);
        // A third version deltas against the full chunk, never against the delta.
        let mut third = new.clone();
        third[3 << 20] ^= 1;
        let ht = Hash::of(&third);
        s.put_chunk(&ht, &third, 3, Some(&hn)).unwrap();
        assert_eq!(s.chunk_base(&ht), Some(ho));
        assert_eq!(s.read_chunk(&ht, third.len()).unwrap(), third);
        // A damaged base is reported through the delta.
        let p = s.chunk_file(&ho).unwrap();
        let mut z = fs::read(&p).unwrap();
        let n = z.len();
        z[n / 2] ^= 1;
        fs::write(&p, &z).unwrap();
        let e = s.read_chunk(&hn, new.len()).unwrap_err();
        assert!(e.to_string().contains("base"), "{e}");
    }

    #[test]
    fn a_damaged_cached_chunk_is_read_again_from_the_store_and_a_damaged_stored_one_named() {
        let origin_dir = tempfile::tempdir().unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let h = Hash::of(&data);
        Store::open(origin_dir.path())
            .unwrap()
            .put_chunk(&h, &data, 3, None)
            .unwrap();
        let origin: Arc<dyn Backend> = Arc::new(LocalDir::open(origin_dir.path()).unwrap());
        let cached = cache::Cached::new(origin, cache_dir.path(), 1 << 30).unwrap();
        let s = Store::with_backend(Arc::new(cached));
        assert_eq!(s.read_chunk(&h, data.len()).unwrap(), data);
        let key = s.chunk_key(&h);
        let in_cache = cache_dir.path().join(&key);
        let mut z = fs::read(&in_cache).unwrap();
        let n = z.len();
        z[n / 2] ^= 0x10;
        fs::write(&in_cache, &z).unwrap();
        // From the cache the frame is checked too (the store is not a local directory).
        let frame = s.read_frame(&h, data.len()).unwrap();
        assert_eq!(decompress_frame(&frame, data.len()).unwrap(), data);
        let st = s.read_stats().unwrap();
        assert_eq!((st.store_reads, st.damaged_in_cache), (2, 1));
        // Damaged in the store itself: an error naming the chunk, nothing sent.
        let stored = origin_dir.path().join(&key);
        let mut z = fs::read(&stored).unwrap();
        z[n / 2] ^= 0x10;
        fs::write(&stored, &z).unwrap();
        fs::write(&in_cache, &z).unwrap();
        let e = s.read_frame(&h, data.len()).unwrap_err();
        assert!(
            matches!(&e, StoreError::CorruptChunk { hash, .. } if *hash == h),
            "{e}"
        );
    }

    #[test]
    fn the_first_missing_chunk_is_found_checking_a_remote_store_in_parallel() {
        let origin_dir = tempfile::tempdir().unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let plain = Store::open(origin_dir.path()).unwrap();
        let hashes: Vec<Hash> = (0..40u32)
            .map(|i| {
                let data = vec![i as u8; 1000 + i as usize];
                let h = Hash::of(&data);
                plain.put_chunk(&h, &data, 3, None).unwrap();
                h
            })
            .collect();
        let origin: Arc<dyn Backend> = Arc::new(LocalDir::open(origin_dir.path()).unwrap());
        // Through a cache the store is not a local directory: the checks run in parallel.
        let cached = cache::Cached::new(origin.clone(), cache_dir.path(), 1 << 30).unwrap();
        let s = Store::with_backend(Arc::new(cached));
        assert!(s.local_dir().is_none());
        assert_eq!(s.first_missing(&hashes), None);
        for i in [30, 7, 31] {
            origin.delete(&s.chunk_key(&hashes[i])).unwrap();
        }
        assert_eq!(s.first_missing(&hashes), Some(hashes[7]));
        assert_eq!(plain.first_missing(&hashes), Some(hashes[7]));
        assert_eq!(s.first_missing(&hashes[8..]), Some(hashes[30]));
        assert_eq!(s.first_missing(&hashes[..7]), None);
    }
}
