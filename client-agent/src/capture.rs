//! A capture task (the golden machine): reads the disk's used blocks as `drover image capture`
//! does (the `imaging` crate's plan and pipeline), asks the server for each chunk whether it
//! has it, uploads the ones it lacks as zstd frames, and sends the manifest last. A capture
//! that stops half-way leaves no image; run again, it uploads only what is still missing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use imaging::capture::{
    capture_planned, outline, plan_with, CaptureError, CaptureOptions, ChunkSink,
};
use imaging::device::FileDevice;
use imaging::manifest::Hash;
use proto::api::{ChunkStored, Committed, HaveReply, HaveRequest};
use tracing::{info, warn};
use transport::target::Progress;

use crate::api::{Api, CallError};
use crate::task::{Reporter, Stop, Totals, SERVER_AWAY};
use crate::Args;

/// zstd level of uploaded chunks (the store's default).
const LEVEL: i32 = imaging::store::DEFAULT_ZSTD_LEVEL;

/// Uploads the chunks the server lacks; counts what it did.
struct Uploader {
    api: Api,
    rt: tokio::runtime::Handle,
    uploaded: AtomicU64,
    kept: AtomicU64,
    /// The capture streams to a deployment as it is read: each chunk's place goes along.
    live: bool,
}

impl Uploader {
    /// Runs one API call (retrying while the server is away) from a capture thread.
    fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, CaptureError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        self.rt
            .block_on(self.api.retry(what, Some(SERVER_AWAY), f))
            .map_err(|e| CaptureError::Sink(format!("{what}: {e}")))
    }
}

impl ChunkSink for Uploader {
    fn put(
        &self,
        hash: &Hash,
        plain: &[u8],
        _base: Option<&Hash>,
    ) -> Result<(u64, bool), CaptureError> {
        self.upload(None, hash, plain)
    }

    fn put_at(
        &self,
        seq: usize,
        hash: &Hash,
        plain: &[u8],
        _base: Option<&Hash>,
    ) -> Result<(u64, bool), CaptureError> {
        self.upload(self.live.then_some(seq as u64), hash, plain)
    }
}

impl Uploader {
    /// Uploads chunk `hash` unless the server has it; `at`: its place in a live stream,
    /// which the server learns either way.
    fn upload(
        &self,
        at: Option<u64>,
        hash: &Hash,
        plain: &[u8],
    ) -> Result<(u64, bool), CaptureError> {
        let hex = hash.to_hex();
        let have = HaveRequest {
            hashes: vec![hex.clone()],
            at: at.into_iter().collect(),
        };
        let r: HaveReply = self.call("asking for a chunk", || {
            self.api.post("/agent/capture/have", &have)
        })?;
        if r.missing.is_empty() {
            self.kept.fetch_add(1, Ordering::Relaxed);
            return Ok((0, false));
        }
        let frame = imaging::store::compress_frame(plain, LEVEL)
            .map_err(|e| CaptureError::Sink(format!("compressing chunk {hex}: {e}")))?;
        let mut path = format!("/agent/capture/chunks/{hex}?len={}", plain.len());
        if let Some(at) = at {
            path.push_str(&format!("&at={at}"));
        }
        let r: ChunkStored =
            self.call("uploading a chunk", || self.api.put(&path, frame.clone()))?;
        self.uploaded.fetch_add(1, Ordering::Relaxed);
        Ok((r.stored, r.new))
    }
}

/// Forwards the capture's progress to the server, at most twice a second.
struct Forward<'a> {
    reporter: Reporter,
    uploader: &'a Uploader,
    total: AtomicU64,
    done: AtomicU64,
    start: Instant,
    last: Mutex<Instant>,
}

impl Forward<'_> {
    fn send(&self, force: bool) {
        let mut last = self.last.lock().expect("lock");
        if !force && last.elapsed() < Duration::from_millis(500) {
            return;
        }
        *last = Instant::now();
        let done = self.done.load(Ordering::Relaxed);
        self.reporter.send(
            proto::api::TaskState::Receiving,
            Progress {
                stored_bytes: done,
                total_bytes: self.total.load(Ordering::Relaxed),
                rate_bps: (done as f64 * 8.0 / self.start.elapsed().as_secs_f64().max(0.001))
                    as u64,
                unicast_chunks: self.uploader.uploaded.load(Ordering::Relaxed),
                kept_chunks: self.uploader.kept.load(Ordering::Relaxed),
                ..Progress::default()
            },
        );
    }
}

impl imaging::progress::Progress for Forward<'_> {
    fn start(&self, total: u64, _what: &str) {
        self.total.store(total, Ordering::Relaxed);
        info!("{} used on the disk to read", transport::fmt::bytes(total));
        self.send(true);
    }

    fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
        self.send(false);
    }

    fn note(&self, msg: &str) {
        warn!("{msg}");
    }
}

/// Captures the disk into image `task.image.name` on the server.
pub(crate) async fn work(
    api: &Api,
    args: &Args,
    task: &proto::api::AgentTask,
    reporter: &Reporter,
) -> Result<Totals, Stop> {
    if task.image.name.is_empty() {
        return Err(Stop::Failed("the task names no image".into()));
    }
    if args.disks.len() > 1 {
        return Err(Stop::Failed(format!(
            "a capture reads one disk, and this agent was given {}",
            args.disks.len()
        )));
    }
    let name = task.image.name.clone();
    let mut luks_keys = Vec::new();
    for (i, k) in task.luks_keys.0.iter().enumerate() {
        use base64::Engine;
        luks_keys.push(
            base64::engine::general_purpose::STANDARD
                .decode(k)
                .map_err(|_| Stop::Failed(format!("LUKS key {} is not base64", i + 1)))?,
        );
    }
    let disk = args.disk.clone();
    let dev = FileDevice::open_read(&disk)
        .map_err(|e| Stop::Failed(format!("opening {}: {e}", disk.display())))?;
    let uploader = Uploader {
        api: api.clone(),
        rt: tokio::runtime::Handle::current(),
        uploaded: AtomicU64::new(0),
        kept: AtomicU64::new(0),
        live: task.live,
    };
    let reporter = reporter.clone();
    let start = Instant::now();
    let (captured, uploader) = tokio::task::spawn_blocking(move || {
        let progress = Forward {
            reporter,
            uploader: &uploader,
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            start: Instant::now(),
            last: Mutex::new(Instant::now()),
        };
        let mut opts = CaptureOptions::new(name);
        opts.check_space = false;
        opts.scan.luks_keys = luks_keys;
        let source = disk.display().to_string();
        let r = (|| {
            let plan = plan_with(&dev, opts.chunk_size, &opts.scan).map_err(CaptureError::Read)?;
            if uploader.live {
                // The deployment's machines learn what is coming before a byte is read.
                let o = outline(&dev, &source, &opts, &plan);
                uploader.call("announcing the disk's outline", || {
                    uploader
                        .api
                        .post::<_, serde_json::Value>("/agent/capture/outline", &o)
                })?;
                info!("outline announced: streaming the disk to the deployment as it is read");
            }
            capture_planned(&dev, &source, &uploader, &opts, plan, &progress)
        })();
        progress.send(true);
        (r, uploader)
    })
    .await
    .map_err(|e| Stop::Failed(format!("the capture stopped: {e}")))?;
    let c = captured.map_err(|e| Stop::Failed(format!("{}: {e}", args.disk.display())))?;
    let (uploaded, kept) = (
        uploader.uploaded.load(Ordering::Relaxed),
        uploader.kept.load(Ordering::Relaxed),
    );
    info!(
        "read {} in {:.1} s: {uploaded} chunk(s) uploaded, {kept} already on the server",
        transport::fmt::bytes(c.manifest.used_bytes()),
        start.elapsed().as_secs_f64()
    );
    let r: Committed = api
        .retry("committing the image", Some(SERVER_AWAY), || {
            api.post("/agent/capture/commit", &c.manifest)
        })
        .await?;
    eprintln!("image {}@{} ({}) committed", r.name, r.version, r.id);
    Ok(Totals {
        swarm_bytes: 0,
        bytes: c.manifest.used_bytes(),
        multicast: 0,
        unicast: uploaded,
        kept,
        captured: true,
    })
}
