//! A bounded local cache of a remote store's chunks: read through, least recently used out.
//!
//! A server deploying from an object store reads each chunk from the store once; later reads
//! (the multicast sender's repairs, unicast catch-up, the next deployment of the image) come
//! from files on the server's own disk. The cache holds chunk objects exactly as the store
//! holds them (sealed, in an encrypted store), so it never holds plaintext the store would not.
//!
//! Nothing read from the cache is trusted: the [`super::Store`] checks every chunk against its
//! hash whichever way it came, and a chunk that fails from the cache is evicted and read again
//! from the store ([`Backend::evict`]), the damage logged; only a chunk bad in the store itself
//! is an error.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::backend::{Backend, BackendError, Entry, ReadStats};

#[derive(Debug, Default)]
struct Lru {
    /// Key → (size, last use).
    files: HashMap<String, (u64, u64)>,
    /// Keys whose cached copy was just read from the store and not yet read from the cache: a
    /// failed check of such a read is the store's fault, and reading again would not help.
    fresh: std::collections::HashSet<String>,
    bytes: u64,
    tick: u64,
}

/// A backend whose chunk reads go through a local cache directory.
#[derive(Debug)]
pub struct Cached {
    origin: Arc<dyn Backend>,
    dir: PathBuf,
    max_bytes: u64,
    lru: Mutex<Lru>,
    origin_reads: AtomicU64,
    origin_bytes: AtomicU64,
    hits: AtomicU64,
    evicted_bad: AtomicU64,
    /// Chunks being read from the store now: a second reader of the same chunk waits for the
    /// first and takes its copy from the cache (forty agents asking for the same chunk at once
    /// make one read of the store).
    inflight: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// Names for files being written into the cache, unique within the process.
static SEQ: AtomicU64 = AtomicU64::new(0);

impl Cached {
    /// `origin` with a cache of at most `max_bytes` in `dir` (created if needed; files already
    /// there are kept, oldest first out).
    pub fn new(origin: Arc<dyn Backend>, dir: &Path, max_bytes: u64) -> Result<Self, BackendError> {
        fs::create_dir_all(dir.join("tmp"))
            .map_err(|e| BackendError::new("creating cache directory", dir.display(), e))?;
        let mut lru = Lru::default();
        let mut found = Vec::new();
        let mut stack = vec![dir.join("chunks")];
        while let Some(d) = stack.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                let Ok(m) = e.metadata() else { continue };
                if m.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(dir) {
                    let when = m.modified().ok();
                    found.push((when, rel.to_string_lossy().into_owned(), m.len()));
                }
            }
        }
        found.sort();
        for (_, key, size) in found {
            lru.tick += 1;
            lru.bytes += size;
            lru.files.insert(key, (size, lru.tick));
        }
        // Stale temporary files of an earlier run.
        if let Ok(rd) = fs::read_dir(dir.join("tmp")) {
            for e in rd.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let c = Self {
            origin,
            dir: dir.to_owned(),
            max_bytes,
            lru: Mutex::new(lru),
            origin_reads: AtomicU64::new(0),
            origin_bytes: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            evicted_bad: AtomicU64::new(0),
            inflight: Mutex::new(HashMap::new()),
        };
        c.shrink();
        Ok(c)
    }

    fn lru(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes least recently used files until the cache fits.
    fn shrink(&self) {
        let mut out = Vec::new();
        {
            let mut l = self.lru();
            while l.bytes > self.max_bytes {
                let Some((k, (size, _))) = l
                    .files
                    .iter()
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(k, v)| (k.clone(), *v))
                else {
                    break;
                };
                l.files.remove(&k);
                l.fresh.remove(&k);
                l.bytes -= size;
                out.push(k);
            }
        }
        for k in out {
            let _ = fs::remove_file(self.dir.join(k));
        }
    }

    fn keep(&self, key: &str, bytes: &[u8]) {
        if bytes.len() as u64 > self.max_bytes {
            return;
        }
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join("tmp").join(format!("{n}.tmp"));
        let dest = self.dir.join(key);
        let stored = (|| -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            if let Some(d) = dest.parent() {
                fs::create_dir_all(d)?;
            }
            fs::rename(&tmp, &dest)
        })();
        if let Err(e) = stored {
            let _ = fs::remove_file(&tmp);
            tracing::warn!(error = %e, cache = %self.dir.display(), "could not keep a chunk in the cache");
            return;
        }
        {
            let mut l = self.lru();
            l.tick += 1;
            let t = l.tick;
            if let Some((old, _)) = l.files.insert(key.to_string(), (bytes.len() as u64, t)) {
                l.bytes -= old;
            }
            l.fresh.insert(key.to_string());
            l.bytes += bytes.len() as u64;
        }
        self.shrink();
    }

    /// The cached copy of `key`. `settled`: the copy is no longer "just fetched" (a reader
    /// that waited for another's fetch leaves it fresh: a bad copy is then still the store's).
    fn cached(&self, key: &str, settled: bool) -> Option<Vec<u8>> {
        {
            let mut l = self.lru();
            l.tick += 1;
            let t = l.tick;
            l.files.get_mut(key)?.1 = t;
            if settled {
                l.fresh.remove(key);
            }
        }
        match fs::read(self.dir.join(key)) {
            Ok(b) => Some(b),
            Err(_) => {
                let mut l = self.lru();
                if let Some((size, _)) = l.files.remove(key) {
                    l.bytes -= size;
                }
                None
            }
        }
    }
}

impl Backend for Cached {
    fn location(&self) -> String {
        self.origin.location()
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        if !key.starts_with("chunks/") {
            return self.origin.read(key);
        }
        if let Some(b) = self.cached(key, true) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(b));
        }
        let gate = self
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone();
        let got = {
            let _one = gate.lock().unwrap_or_else(|e| e.into_inner());
            // Fetched by the reader this one waited for?
            if let Some(b) = self.cached(key, false) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Ok(Some(b))
            } else {
                self.origin.read(key).inspect(|got| {
                    if let Some(b) = got {
                        self.origin_reads.fetch_add(1, Ordering::Relaxed);
                        self.origin_bytes
                            .fetch_add(b.len() as u64, Ordering::Relaxed);
                        self.keep(key, b);
                    }
                })
            }
        };
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if inflight.get(key).is_some_and(|g| Arc::ptr_eq(g, &gate)) {
            inflight.remove(key);
        }
        got
    }

    /// Asks the store, never the cache: "is this chunk stored?" decides whether a capture
    /// uploads it, and another server's gc may have removed a chunk this cache still holds.
    fn size(&self, key: &str) -> Result<Option<u64>, BackendError> {
        self.origin.size(key)
    }

    fn write(&self, key: &str, bytes: &[u8]) -> Result<(), BackendError> {
        self.origin.write(key, bytes)
    }

    fn delete(&self, key: &str) -> Result<(), BackendError> {
        self.evict(key);
        self.origin.delete(key)
    }

    fn list(&self, prefix: &str) -> Result<Vec<Entry>, BackendError> {
        self.origin.list(prefix)
    }

    fn sync(&self) -> Result<(), BackendError> {
        self.origin.sync()
    }

    fn free_space(&self) -> Result<Option<u64>, BackendError> {
        self.origin.free_space()
    }

    fn evict(&self, key: &str) -> bool {
        let had = {
            let mut l = self.lru();
            let fresh = l.fresh.remove(key);
            match l.files.remove(key) {
                Some((size, _)) => {
                    l.bytes -= size;
                    !fresh
                }
                None => false,
            }
        };
        let _ = fs::remove_file(self.dir.join(key));
        if had {
            self.evicted_bad.fetch_add(1, Ordering::Relaxed);
        }
        had
    }

    fn origin(&self) -> Option<Arc<dyn Backend>> {
        Some(self.origin.clone())
    }

    fn read_stats(&self) -> Option<ReadStats> {
        let l = self.lru();
        // The store's own count, when it keeps one, includes the reads that passed the cache
        // by (a verify).
        let (store_reads, store_bytes) = match self.origin.read_stats() {
            Some(o) => (o.store_reads, o.store_bytes),
            None => (
                self.origin_reads.load(Ordering::Relaxed),
                self.origin_bytes.load(Ordering::Relaxed),
            ),
        };
        Some(ReadStats {
            store_reads,
            store_bytes,
            cache_hits: self.hits.load(Ordering::Relaxed),
            cache_bytes: l.bytes,
            cache_max_bytes: self.max_bytes,
            cache_files: l.files.len() as u64,
            damaged_in_cache: self.evicted_bad.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalDir;

    #[test]
    fn reads_go_through_once_and_the_least_recently_used_leave() {
        let origin_dir = tempfile::tempdir().unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let origin: Arc<dyn Backend> = Arc::new(LocalDir::open(origin_dir.path()).unwrap());
        for i in 0..4u8 {
            origin
                .write(&format!("chunks/0{i}/c{i}"), &vec![i; 1000])
                .unwrap();
        }
        let c = Cached::new(origin.clone(), cache_dir.path(), 2500).unwrap();
        assert_eq!(c.read("chunks/00/c0").unwrap().unwrap(), vec![0; 1000]);
        assert_eq!(c.read("chunks/00/c0").unwrap().unwrap(), vec![0; 1000]);
        let s = c.read_stats().unwrap();
        assert_eq!((s.store_reads, s.cache_hits), (1, 1));
        c.read("chunks/01/c1").unwrap();
        // c0 used again: c1 is now the least recently used and goes when c2 arrives.
        c.read("chunks/00/c0").unwrap();
        c.read("chunks/02/c2").unwrap();
        let s = c.read_stats().unwrap();
        assert_eq!(s.cache_files, 2);
        assert!(s.cache_bytes <= 2500);
        assert!(cache_dir.path().join("chunks/00/c0").exists());
        assert!(!cache_dir.path().join("chunks/01/c1").exists());
        // A damaged cached copy is evicted; the next read goes to the store.
        fs::write(cache_dir.path().join("chunks/02/c2"), b"garbage").unwrap();
        assert_eq!(c.read("chunks/02/c2").unwrap().unwrap(), b"garbage");
        assert!(c.evict("chunks/02/c2"));
        assert_eq!(c.read("chunks/02/c2").unwrap().unwrap(), vec![2; 1000]);
        // Removed from the store (another server's gc): "is it stored?" says no, even though
        // the cache still holds it (a capture must upload it again).
        origin.delete("chunks/00/c0").unwrap();
        assert!(cache_dir.path().join("chunks/00/c0").exists());
        assert_eq!(c.size("chunks/00/c0").unwrap(), None);
        origin.write("chunks/00/c0", &[0; 1000]).unwrap();
        // A restart keeps what the cache holds.
        drop(c);
        let again = Cached::new(origin, cache_dir.path(), 2500).unwrap();
        assert_eq!(again.read_stats().unwrap().cache_files, 2);
        again.read("chunks/00/c0").unwrap();
        assert_eq!(again.read_stats().unwrap().store_reads, 0);
    }

    /// An origin that counts its reads and takes a while over each.
    #[derive(Debug)]
    struct Slow {
        inner: LocalDir,
        reads: AtomicU64,
    }

    impl Backend for Slow {
        fn location(&self) -> String {
            self.inner.location()
        }
        fn read(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(100));
            self.inner.read(key)
        }
        fn size(&self, key: &str) -> Result<Option<u64>, BackendError> {
            self.inner.size(key)
        }
        fn write(&self, key: &str, bytes: &[u8]) -> Result<(), BackendError> {
            self.inner.write(key, bytes)
        }
        fn delete(&self, key: &str) -> Result<(), BackendError> {
            self.inner.delete(key)
        }
        fn list(&self, prefix: &str) -> Result<Vec<Entry>, BackendError> {
            self.inner.list(prefix)
        }
        fn sync(&self) -> Result<(), BackendError> {
            self.inner.sync()
        }
        fn free_space(&self) -> Result<Option<u64>, BackendError> {
            self.inner.free_space()
        }
    }

    #[test]
    fn readers_of_one_chunk_at_once_make_one_read_of_the_store() {
        let origin_dir = tempfile::tempdir().unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let slow = Arc::new(Slow {
            inner: LocalDir::open(origin_dir.path()).unwrap(),
            reads: AtomicU64::new(0),
        });
        slow.write("chunks/00/c0", &[7; 1000]).unwrap();
        slow.write("chunks/01/c1", &[8; 1000]).unwrap();
        let c = Arc::new(Cached::new(slow.clone(), cache_dir.path(), 1 << 20).unwrap());
        let readers: Vec<_> = (0..16)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || {
                    let key = if i % 2 == 0 {
                        "chunks/00/c0"
                    } else {
                        "chunks/01/c1"
                    };
                    c.read(key).unwrap().unwrap()
                })
            })
            .collect();
        for (i, r) in readers.into_iter().enumerate() {
            assert_eq!(
                r.join().unwrap(),
                vec![if i % 2 == 0 { 7 } else { 8 }; 1000]
            );
        }
        assert_eq!(slow.reads.load(Ordering::SeqCst), 2);
        let s = c.read_stats().unwrap();
        assert_eq!((s.store_reads, s.cache_hits), (2, 14));
        assert!(c.inflight.lock().unwrap().is_empty());
    }
}
