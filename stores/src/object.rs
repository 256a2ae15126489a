//! An OpenDAL operator as an `imaging` [`Backend`].
//!
//! The imaging pipelines are synchronous and call the store from their worker threads (and
//! the server from blocking tasks), so every operation is spawned on one small tokio runtime
//! owned by this module and waited for on a channel: that works from any thread, inside another
//! runtime or not.
//!
//! Objects are written whole: S3 makes a PUT visible all at once; on WebDAV and SFTP, where a
//! reader could see a file being written, each object is written under `tmp/` and renamed into
//! place.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use imaging::store::{Backend, BackendError, Entry};
use opendal::layers::{RetryEvent, RetryLayer, TimeoutLayer};
use opendal::{services, ErrorKind, Operator};

use crate::{OpenError, Options, Target};

/// Requests in flight at once are bounded by the callers (the capture and restore pipelines'
/// workers); two runtime threads drive them.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        opendal::install_default();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("store-io")
            .enable_all()
            .build()
            .expect("starting the object store's runtime")
    })
}

/// Runs `f` on the store runtime and waits for it.
fn block<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv()
        .expect("the object store's runtime dropped a request")
}

/// Names for temporary objects, unique within the process.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Chunk uploads in flight at once (each holds its bytes: 16 × 4 MiB).
const WRITES_IN_FLIGHT: usize = 16;

/// Chunk uploads under way: a capture's workers hand a chunk over and go on compressing the
/// next while it uploads (an upload's round trip would otherwise idle them).
#[derive(Debug, Default)]
struct Pending {
    /// Keys being written, with their bytes (reads and sizes of them are answered from here).
    writes: std::collections::HashMap<String, std::sync::Arc<Vec<u8>>>,
    /// The first upload that failed since the last [`Backend::sync`].
    failed: Option<(String, String)>,
}

/// A store kept in an object store or a remote folder.
#[derive(Debug)]
pub struct ObjectBackend {
    op: Operator,
    location: String,
    /// Write under `tmp/` and rename (WebDAV, SFTP) rather than write in place (S3).
    rename: bool,
    pending: std::sync::Arc<(std::sync::Mutex<Pending>, std::sync::Condvar)>,
    /// Chunk objects read, and their bytes (what a server without a cache reads).
    chunk_reads: AtomicU64,
    chunk_bytes: AtomicU64,
}

impl ObjectBackend {
    /// The backend for `target` (not a directory), configured by `opts`.
    pub fn new(target: &Target, opts: &Options) -> Result<Self, OpenError> {
        let (op, location, rename) = match target {
            Target::Dir(_) => unreachable!("directories are LocalDir stores"),
            Target::S3 { bucket, prefix } => {
                let mut b = services::S3::default()
                    .bucket(bucket)
                    .root(&format!("/{prefix}"))
                    .region(opts.s3_region.as_deref().unwrap_or("us-east-1"))
                    // The keys come from the options (and their environment variables), never
                    // from an instance metadata service: nothing is asked of the network but
                    // the store itself.
                    .disable_config_load()
                    .disable_ec2_metadata();
                if let Some(e) = &opts.s3_endpoint {
                    b = b.endpoint(e);
                }
                match (&opts.s3_access_key_id, &opts.s3_secret_access_key) {
                    (Some(k), Some(s)) => b = b.access_key_id(k).secret_access_key(s),
                    _ => b = b.skip_signature(),
                }
                if let Some(t) = &opts.s3_session_token {
                    b = b.session_token(t);
                }
                let mut location = format!("s3://{bucket}/{prefix}");
                if let Some(e) = &opts.s3_endpoint {
                    location.push_str(&format!(" at {e}"));
                }
                let op = Operator::new(b).map_err(|source| OpenError::Config {
                    location: location.clone(),
                    source,
                })?;
                (op, location, false)
            }
            Target::WebDav {
                https,
                host,
                path,
                user,
                password,
            } => {
                let scheme = if *https { "https" } else { "http" };
                let mut b = services::Webdav::default()
                    .endpoint(&format!("{scheme}://{host}"))
                    .root(path);
                let user = user.as_ref().or(opts.webdav_user.as_ref());
                if let Some(u) = user {
                    b = b.username(u);
                }
                if let Some(p) = password.as_ref().or(opts.webdav_password.as_ref()) {
                    b = b.password(p);
                }
                let who = user.map(|u| format!("{u}@")).unwrap_or_default();
                let s = if *https { "s" } else { "" };
                let location = format!("webdav{s}://{who}{host}{path}");
                let op = Operator::new(b).map_err(|source| OpenError::Config {
                    location: location.clone(),
                    source,
                })?;
                (op, location, true)
            }
            Target::Sftp { user, host, path } => {
                let mut b = services::Sftp::default()
                    .endpoint(&format!("ssh://{host}"))
                    .root(path)
                    .known_hosts_strategy(opts.sftp_known_hosts.as_deref().unwrap_or("strict"));
                if let Some(u) = user {
                    b = b.user(u);
                }
                if let Some(k) = &opts.sftp_key {
                    b = b.key(&k.display().to_string());
                }
                let who = user.as_ref().map(|u| format!("{u}@")).unwrap_or_default();
                let location = format!("sftp://{who}{host}{path}");
                let op = Operator::new(b).map_err(|source| OpenError::Config {
                    location: location.clone(),
                    source,
                })?;
                (op, location, true)
            }
        };
        let op = op
            .layer(
                TimeoutLayer::new()
                    .with_timeout(Duration::from_secs(60))
                    .with_io_timeout(Duration::from_secs(30)),
            )
            .layer(
                RetryLayer::new()
                    .with_max_times(4)
                    .with_min_delay(Duration::from_millis(100))
                    .with_jitter()
                    .with_notify(|e: RetryEvent<'_>| {
                        tracing::info!(
                            attempt = e.attempt,
                            error = %Compact(e.err),
                            "retrying a store request"
                        )
                    }),
            );
        Ok(Self {
            op,
            location,
            rename,
            pending: Default::default(),
            chunk_reads: AtomicU64::new(0),
            chunk_bytes: AtomicU64::new(0),
        })
    }

    fn at(&self, key: &str) -> String {
        format!("{}/{key}", self.location.split(' ').next().unwrap_or(""))
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts uploading a chunk and returns; [`Backend::sync`] waits for every upload and
    /// reports the first that failed.
    fn write_behind(&self, key: &str, bytes: &[u8]) -> Result<(), BackendError> {
        let bytes = std::sync::Arc::new(bytes.to_vec());
        {
            let (_, cv) = &*self.pending;
            let mut p = self.pending();
            while p.writes.len() >= WRITES_IN_FLIGHT {
                p = cv.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            if let Some((k, e)) = &p.failed {
                return Err(BackendError::new("writing", self.at(k), e.clone()));
            }
            p.writes.insert(key.to_string(), bytes.clone());
        }
        let (op, rename, pending, k) = (
            self.op.clone(),
            self.rename,
            self.pending.clone(),
            key.to_string(),
        );
        runtime().spawn(async move {
            let r = put(&op, rename, &k, bytes.to_vec()).await;
            let (m, cv) = &*pending;
            let mut p = m.lock().unwrap_or_else(|e| e.into_inner());
            p.writes.remove(&k);
            if let Err(e) = r {
                p.failed.get_or_insert((k, e));
            }
            cv.notify_all();
        });
        Ok(())
    }
}

impl Backend for ObjectBackend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        if let Some(b) = self.pending().writes.get(key) {
            return Ok(Some(b.to_vec()));
        }
        let op = self.op.clone();
        let k = key.to_string();
        match block(async move { op.read(&k).await }) {
            Ok(b) => {
                if key.starts_with("chunks/") {
                    self.chunk_reads.fetch_add(1, Ordering::Relaxed);
                    self.chunk_bytes
                        .fetch_add(b.len() as u64, Ordering::Relaxed);
                }
                Ok(Some(b.to_vec()))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err("reading", self.at(key), e)),
        }
    }

    fn read_stats(&self) -> Option<imaging::store::ReadStats> {
        Some(imaging::store::ReadStats {
            store_reads: self.chunk_reads.load(Ordering::Relaxed),
            store_bytes: self.chunk_bytes.load(Ordering::Relaxed),
            ..Default::default()
        })
    }

    fn size(&self, key: &str) -> Result<Option<u64>, BackendError> {
        if let Some(b) = self.pending().writes.get(key) {
            return Ok(Some(b.len() as u64));
        }
        let op = self.op.clone();
        let k = key.to_string();
        match block(async move { op.stat(&k).await }) {
            Ok(m) => Ok(Some(m.content_length())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err("reading", self.at(key), e)),
        }
    }

    fn write(&self, key: &str, bytes: &[u8]) -> Result<(), BackendError> {
        if key.starts_with("chunks/") {
            return self.write_behind(key, bytes);
        }
        let (op, rename, k, b) = (
            self.op.clone(),
            self.rename,
            key.to_string(),
            bytes.to_vec(),
        );
        block(async move { put(&op, rename, &k, b).await })
            .map_err(|e| BackendError::new("writing", self.at(key), e))
    }

    /// Waits for every chunk upload under way; the first that failed is the error.
    fn sync(&self) -> Result<(), BackendError> {
        let (_, cv) = &*self.pending;
        let mut p = self.pending();
        while !p.writes.is_empty() {
            p = cv.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        match p.failed.take() {
            Some((k, e)) => Err(BackendError::new("writing", self.at(&k), e)),
            None => Ok(()),
        }
    }

    fn delete(&self, key: &str) -> Result<(), BackendError> {
        let op = self.op.clone();
        let k = key.to_string();
        match block(async move { op.delete(&k).await }) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err("removing", self.at(key), e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<Entry>, BackendError> {
        let op = self.op.clone();
        let p = prefix.to_string();
        let listed = block(async move { op.list_with(&p).recursive(true).await });
        let entries = match listed {
            Ok(e) => e,
            // A folder not made yet (WebDAV, SFTP) holds nothing.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(err("listing", self.at(prefix), e)),
        };
        Ok(entries
            .into_iter()
            .filter(|e| e.metadata().is_file())
            .map(|e| Entry {
                key: e.path().trim_start_matches('/').to_string(),
                size: e.metadata().content_length(),
            })
            .collect())
    }
}

/// Writes `bytes` as object `key` whole: in place (S3, where a PUT is atomic), or under `tmp/`
/// and renamed into place (WebDAV, SFTP). Errors come back as one line.
async fn put(op: &Operator, rename: bool, key: &str, bytes: Vec<u8>) -> Result<(), String> {
    if !rename {
        return op
            .write(key, bytes)
            .await
            .map(|_| ())
            .map_err(|e| Compact(&e).to_string());
    }
    let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = format!("tmp/{}-{}-{n}.tmp", host_tag(), std::process::id());
    op.write(&tmp, bytes)
        .await
        .map_err(|e| Compact(&e).to_string())?;
    if let Err(e) = op.rename(&tmp, key).await {
        let _ = op.delete(&tmp).await;
        // Chunks and manifests are named by their contents: one already in place (another
        // writer won the race) is the same bytes.
        if !key.starts_with("locks/") && op.stat(key).await.is_ok() {
            return Ok(());
        }
        return Err(format!("renaming into place: {}", Compact(&e)));
    }
    Ok(())
}

/// An OpenDAL error in one line: its kind, its message and its cause, without the request's
/// context (URLs, headers) that OpenDAL's own rendering adds.
struct Compact<'a>(&'a opendal::Error);

impl std::fmt::Display for Compact<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0.kind(), self.0.message())?;
        let mut cause = std::error::Error::source(self.0);
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

fn err(what: &'static str, at: String, e: opendal::Error) -> BackendError {
    BackendError::new(what, at, Compact(&e).to_string())
}

/// This machine's name, so temporary objects of several servers never collide.
fn host_tag() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().replace('/', "_"))
            .unwrap_or_else(|_| "host".into())
    })
}
