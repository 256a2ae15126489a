//! The image store: content-addressed chunks plus manifests, in one directory.
//!
//! ```text
//! STORE/chunks/ab/abcdef…   one zstd frame per chunk, named by the BLAKE3 of its plaintext
//! STORE/manifests/<id>.json one manifest per image version; id = BLAKE3 of the file's bytes
//! STORE/tmp/                files being written; cleaned by `gc`
//! STORE/lock                flock: shared while capturing or restoring, exclusive for gc
//! ```
//!
//! Every file is written to `tmp/`, fsynced, then renamed into place, so a reader never sees a
//! partial chunk or manifest; a capture commits its manifest last, so an interrupted capture
//! never lists a half image (its chunks are garbage that `gc` frees).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::manifest::{Hash, Manifest, ManifestError};

/// zstd level for chunks: level 3 (zstd's default) is the speed/size point partclone users
/// pair with `zstd -3`; higher levels cost far more CPU than they save on disk data.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// Store errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No image matches the name or id.
    #[error("no image named or with id {0:?} in the store")]
    NotFound(String),
    /// An id prefix matches several images.
    #[error("{0:?} matches several images; give more of the id")]
    Ambiguous(String),
    /// A manifest file is damaged.
    #[error("manifest {}", path.display())]
    BadManifest {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: ManifestError,
    },
    /// A chunk is missing from the store.
    #[error("chunk {0} is missing from the store")]
    MissingChunk(Hash),
    /// A chunk's bytes do not decompress to the plaintext its name promises.
    #[error("chunk {hash} is corrupt: {why}")]
    CorruptChunk {
        /// The chunk.
        hash: Hash,
        /// What is wrong.
        why: String,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// An image in the store: its id and manifest.
#[derive(Debug, Clone)]
pub struct StoredImage {
    /// BLAKE3 of the manifest file, hex.
    pub id: String,
    /// The manifest.
    pub manifest: Manifest,
}

/// A lock on the store, held for the life of the value.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

/// An image store in a directory.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    tmp_seq: AtomicU64,
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        for sub in ["chunks", "manifests", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err("creating store directory", &p))?;
        }
        Ok(Self {
            root: root.to_owned(),
            tmp_seq: AtomicU64::new(0),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self, op: libc::c_int) -> Result<StoreLock, StoreError> {
        let p = self.root.join("lock");
        let f = File::options()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(io_err("opening lock file", &p))?;
        // SAFETY: flock on an fd we own; the lock dies with the file.
        if unsafe { libc::flock(f.as_raw_fd(), op) } != 0 {
            return Err(io_err("locking", &p)(io::Error::last_os_error()));
        }
        Ok(StoreLock { _file: f })
    }

    /// A shared lock: held by captures and restores, so `gc` never frees a chunk they use.
    pub fn lock_shared(&self) -> Result<StoreLock, StoreError> {
        self.lock(libc::LOCK_SH)
    }

    /// The exclusive lock `gc` holds.
    pub fn lock_exclusive(&self) -> Result<StoreLock, StoreError> {
        self.lock(libc::LOCK_EX)
    }

    /// Where chunk `h` lives.
    pub fn chunk_path(&self, h: &Hash) -> PathBuf {
        let hex = h.to_hex();
        self.root.join("chunks").join(&hex[..2]).join(hex)
    }

    /// Whether chunk `h` is stored.
    pub fn has_chunk(&self, h: &Hash) -> bool {
        self.chunk_path(h).exists()
    }

    fn tmp_path(&self) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}.tmp", std::process::id()))
    }

    /// Writes `bytes` to `dest` atomically: temp file, fsync, rename.
    fn put_file(&self, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp = self.tmp_path();
        let res = (|| {
            let mut f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
            f.write_all(bytes).map_err(io_err("writing", &tmp))?;
            f.sync_all().map_err(io_err("syncing", &tmp))?;
            if let Some(dir) = dest.parent() {
                fs::create_dir_all(dir).map_err(io_err("creating directory", dir))?;
            }
            fs::rename(&tmp, dest).map_err(io_err("renaming into", dest))
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    /// Compresses and stores `plain` under `hash` unless it is already there. Returns the
    /// stored size and whether this call added it.
    pub fn put_chunk(
        &self,
        hash: &Hash,
        plain: &[u8],
        level: i32,
    ) -> Result<(u64, bool), StoreError> {
        let path = self.chunk_path(hash);
        if let Ok(m) = fs::metadata(&path) {
            return Ok((m.len(), false));
        }
        let z =
            zstd::bulk::compress(plain, level).map_err(io_err("compressing chunk for", &path))?;
        self.put_file(&path, &z)?;
        Ok((z.len() as u64, true))
    }

    /// Reads chunk `hash`, decompresses it to `expect_len` bytes and checks its hash.
    pub fn read_chunk(&self, hash: &Hash, expect_len: usize) -> Result<Vec<u8>, StoreError> {
        let path = self.chunk_path(hash);
        let z = match fs::read(&path) {
            Ok(z) => z,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::MissingChunk(*hash))
            }
            Err(e) => return Err(io_err("reading chunk", &path)(e)),
        };
        let corrupt = |why: String| StoreError::CorruptChunk { hash: *hash, why };
        // Decompress into a buffer one byte larger than expected, so an oversized frame is caught.
        let mut plain = Vec::with_capacity(expect_len + 1);
        let n = zstd::bulk::Decompressor::new()
            .and_then(|mut d| d.decompress_to_buffer(&z, &mut plain))
            .map_err(|e| corrupt(format!("does not decompress ({e})")))?;
        if n != expect_len {
            return Err(corrupt(format!("holds {n} bytes, expected {expect_len}")));
        }
        if Hash::of(&plain) != *hash {
            return Err(corrupt("content does not match its hash".into()));
        }
        Ok(plain)
    }

    /// Commits a manifest; returns the image id.
    pub fn put_manifest(&self, m: &Manifest) -> Result<String, StoreError> {
        let bytes = m.encode();
        let id = Hash::of(&bytes).to_hex();
        let path = self.root.join("manifests").join(format!("{id}.json"));
        self.put_file(&path, &bytes)?;
        self.sync_dirs()?;
        Ok(id)
    }

    /// Makes every rename in the store durable (one `syncfs` instead of a dirent fsync per chunk).
    pub fn sync_dirs(&self) -> Result<(), StoreError> {
        let d = File::open(&self.root).map_err(io_err("opening", &self.root))?;
        // SAFETY: syncfs on an fd we own.
        if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
            return Err(io_err("syncing", &self.root)(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Every image, oldest first. A damaged manifest is an error naming its file.
    pub fn list(&self) -> Result<Vec<StoredImage>, StoreError> {
        let dir = self.root.join("manifests");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let e = e.map_err(io_err("listing", &dir))?;
            let path = e.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            let bytes = fs::read(&path).map_err(io_err("reading", &path))?;
            let manifest = Manifest::decode(&bytes).map_err(|source| StoreError::BadManifest {
                path: path.clone(),
                source,
            })?;
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
        Ok(out)
    }

    /// Finds an image by `NAME` (its newest version), `NAME@VERSION`, or an id or id prefix
    /// (at least 6 hex digits).
    pub fn resolve(&self, reference: &str) -> Result<StoredImage, StoreError> {
        let all = self.list()?;
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

    /// The version number the next capture under `name` gets.
    pub fn next_version(&self, name: &str) -> Result<u32, StoreError> {
        Ok(self
            .list()?
            .iter()
            .filter(|i| i.manifest.name == name)
            .map(|i| i.manifest.name_version)
            .max()
            .unwrap_or(0)
            + 1)
    }

    /// Removes one image version (its chunks stay until [`Self::gc`]).
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let path = self.root.join("manifests").join(format!("{id}.json"));
        fs::remove_file(&path).map_err(io_err("removing", &path))?;
        self.sync_dirs()
    }

    /// How many images reference each chunk.
    pub fn chunk_refs(&self) -> Result<HashMap<Hash, u32>, StoreError> {
        let mut refs = HashMap::new();
        for img in self.list()? {
            let mut seen = HashSet::new();
            for (_, c) in img.manifest.chunks() {
                if seen.insert(c.hash) {
                    *refs.entry(c.hash).or_insert(0) += 1;
                }
            }
        }
        Ok(refs)
    }

    /// Deletes every chunk no manifest references and every stale temp file. Takes the
    /// exclusive lock, so it waits for running captures and restores.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let _lock = self.lock_exclusive()?;
        let live = self.chunk_refs()?;
        let mut report = GcReport::default();
        let chunks = self.root.join("chunks");
        for sub in fs::read_dir(&chunks).map_err(io_err("listing", &chunks))? {
            let sub = sub.map_err(io_err("listing", &chunks))?.path();
            if !sub.is_dir() {
                continue;
            }
            for f in fs::read_dir(&sub).map_err(io_err("listing", &sub))? {
                let f = f.map_err(io_err("listing", &sub))?.path();
                let keep = f
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(Hash::from_hex)
                    .is_some_and(|h| live.contains_key(&h));
                if keep {
                    report.kept_chunks += 1;
                    continue;
                }
                let len = fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&f).map_err(io_err("removing", &f))?;
                report.removed_chunks += 1;
                report.freed_bytes += len;
            }
        }
        let tmp = self.root.join("tmp");
        for f in fs::read_dir(&tmp).map_err(io_err("listing", &tmp))? {
            let f = f.map_err(io_err("listing", &tmp))?.path();
            report.freed_bytes += fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&f).map_err(io_err("removing", &f))?;
        }
        self.sync_dirs()?;
        Ok(report)
    }

    /// Free bytes on the filesystem holding the store.
    pub fn free_space(&self) -> Result<u64, StoreError> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(self.root.as_os_str().as_bytes()).map_err(|_| {
            io_err("checking free space of", &self.root)(io::ErrorKind::InvalidInput.into())
        })?;
        // SAFETY: statvfs fills the zeroed struct; the path is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(io_err("checking free space of", &self.root)(
                io::Error::last_os_error(),
            ));
        }
        Ok(st.f_bavail as u64 * st.f_frsize as u64)
    }
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

    #[test]
    fn chunk_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let data = vec![7u8; 100_000];
        let h = Hash::of(&data);
        let (_, new) = s.put_chunk(&h, &data, 3).unwrap();
        assert!(new);
        let (_, new) = s.put_chunk(&h, &data, 3).unwrap();
        assert!(!new);
        assert_eq!(s.read_chunk(&h, data.len()).unwrap(), data);
        assert!(matches!(
            s.read_chunk(&h, 5),
            Err(StoreError::CorruptChunk { .. })
        ));
        // Flip a byte in the stored frame.
        let p = s.chunk_path(&h);
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
}
