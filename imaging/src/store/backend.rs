//! Where a store's objects live: the [`Backend`] trait (named byte strings, written whole) and
//! its local-directory implementation. Object stores (S3, WebDAV, SFTP) implement the same trait
//! outside this crate, so `imaging` stays free of network code.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A failed operation on a backend, naming the object (or directory) and what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what} {at}")]
pub struct BackendError {
    /// What was being done ("reading", "writing", ...).
    pub what: &'static str,
    /// The object or directory: a path, or a URL without credentials.
    pub at: String,
    /// The cause.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl BackendError {
    /// An error from `source` while doing `what` at `at`.
    pub fn new(
        what: &'static str,
        at: impl fmt::Display,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            what,
            at: at.to_string(),
            source: source.into(),
        }
    }
}

/// One object a listing found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its key, relative to the store's root (`chunks/ab/abcd…`).
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// What a cached store read: from the store itself and from its local cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReadStats {
    /// Chunk objects read from the store.
    pub store_reads: u64,
    /// Their bytes.
    pub store_bytes: u64,
    /// Chunk reads the cache answered.
    pub cache_hits: u64,
    /// Bytes the cache holds now.
    pub cache_bytes: u64,
    /// The most it may hold.
    pub cache_max_bytes: u64,
    /// Chunks it holds.
    pub cache_files: u64,
    /// Cached chunks found damaged (evicted and read again from the store).
    pub damaged_in_cache: u64,
}

/// A store's storage: objects named by `/`-separated keys, each written whole and replaced
/// atomically (a reader sees the old object, the new one, or none, never a part).
///
/// Every method blocks; callers in async code run them on blocking threads.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Where the store is, for messages: a directory, or a URL without credentials.
    fn location(&self) -> String;
    /// An object's bytes; `None` when there is no such object.
    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError>;
    /// An object's size; `None` when there is no such object.
    fn size(&self, key: &str) -> Result<Option<u64>, BackendError>;
    /// Writes an object whole; readers never see part of it.
    fn write(&self, key: &str, bytes: &[u8]) -> Result<(), BackendError>;
    /// Removes an object; removing one that is not there is not an error.
    fn delete(&self, key: &str) -> Result<(), BackendError>;
    /// Every object whose key starts with `prefix` (a folder, ending in `/`), at any depth.
    fn list(&self, prefix: &str) -> Result<Vec<Entry>, BackendError>;
    /// Makes every write so far durable.
    fn sync(&self) -> Result<(), BackendError> {
        Ok(())
    }
    /// Free bytes, when the backend can tell (an object store cannot).
    fn free_space(&self) -> Result<Option<u64>, BackendError> {
        Ok(None)
    }
    /// The directory, when the store is one on this machine (`flock` locks it; tools may
    /// read its files).
    fn local_dir(&self) -> Option<&Path> {
        None
    }
    /// Drops a cached copy of `key` (it failed its check); `true` when the failed read came
    /// from the cache, so a second read from the store itself may succeed.
    fn evict(&self, _key: &str) -> bool {
        false
    }
    /// The store behind a local cache, when this backend is one.
    fn origin(&self) -> Option<Arc<dyn Backend>> {
        None
    }
    /// Reads from the store and from a local cache, when the backend keeps one.
    fn read_stats(&self) -> Option<ReadStats> {
        None
    }
}

/// Temporary file numbers, one sequence for the whole process: several stores on the same
/// directory (a server's concurrent requests) must never pick the same name.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A store in a local directory (or a mounted NFS/SMB share): every object a file under the
/// root, written to `tmp/`, fsynced and renamed into place.
#[derive(Debug)]
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    /// The store at `root` (created if missing, with its `tmp/` folder).
    pub fn open(root: &Path) -> Result<Self, BackendError> {
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp)
            .map_err(|e| BackendError::new("creating store directory", tmp.display(), e))?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// The file holding `key`.
    pub fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn tmp_path(&self) -> PathBuf {
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}.tmp", std::process::id()))
    }

    fn list_into(&self, dir: &Path, out: &mut Vec<Entry>) -> Result<(), BackendError> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(BackendError::new("listing", dir.display(), e)),
        };
        for e in entries {
            let e = e.map_err(|e| BackendError::new("listing", dir.display(), e))?;
            let path = e.path();
            let ft = e
                .file_type()
                .map_err(|e| BackendError::new("listing", path.display(), e))?;
            if ft.is_dir() {
                self.list_into(&path, out)?;
            } else if ft.is_file() {
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let Some(key) = rel.to_str() else { continue };
                let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                out.push(Entry {
                    key: key.to_string(),
                    size,
                });
            }
        }
        Ok(())
    }
}

impl Backend for LocalDir {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        let p = self.path(key);
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BackendError::new("reading", p.display(), e)),
        }
    }

    fn size(&self, key: &str) -> Result<Option<u64>, BackendError> {
        let p = self.path(key);
        match fs::metadata(&p) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BackendError::new("reading", p.display(), e)),
        }
    }

    fn write(&self, key: &str, bytes: &[u8]) -> Result<(), BackendError> {
        let dest = self.path(key);
        let tmp = self.tmp_path();
        let res = (|| {
            let mut f =
                File::create(&tmp).map_err(|e| BackendError::new("creating", tmp.display(), e))?;
            f.write_all(bytes)
                .map_err(|e| BackendError::new("writing", tmp.display(), e))?;
            f.sync_all()
                .map_err(|e| BackendError::new("syncing", tmp.display(), e))?;
            if let Some(dir) = dest.parent() {
                fs::create_dir_all(dir)
                    .map_err(|e| BackendError::new("creating directory", dir.display(), e))?;
            }
            fs::rename(&tmp, &dest)
                .map_err(|e| BackendError::new("renaming into", dest.display(), e))
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    fn delete(&self, key: &str) -> Result<(), BackendError> {
        let p = self.path(key);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BackendError::new("removing", p.display(), e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<Entry>, BackendError> {
        let mut out = Vec::new();
        self.list_into(&self.path(prefix), &mut out)?;
        Ok(out)
    }

    /// One `syncfs` makes every rename durable (instead of a directory fsync per chunk).
    fn sync(&self) -> Result<(), BackendError> {
        let d = File::open(&self.root)
            .map_err(|e| BackendError::new("opening", self.root.display(), e))?;
        // SAFETY: syncfs on an fd we own.
        if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
            return Err(BackendError::new(
                "syncing",
                self.root.display(),
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    fn free_space(&self) -> Result<Option<u64>, BackendError> {
        free_space_at(&self.root)
            .map(Some)
            .map_err(|e| BackendError::new("checking free space of", self.root.display(), e))
    }

    fn local_dir(&self) -> Option<&Path> {
        Some(&self.root)
    }
}

/// Free bytes (for an unprivileged user) on the filesystem holding `path`.
pub fn free_space_at(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}
