//! Running one task: for a restore, the manifest, the disk opened and scanned once, the
//! plan's sources in turn ([`crate::fetch`]), progress reports once a second from the disk's
//! state, an optional read-back, seeding the swarm while other machines still lack the image,
//! personalization ([`crate::personalize`]), and the result; a capture is
//! [`crate::capture`]'s.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imaging::manifest::Manifest;
use proto::api::{
    AgentTask, ManifestReply, ProgressReport, ResultReport, StateReply, TaskKind, TaskState,
    Transport, WorkCounters,
};
use tokio::sync::{mpsc, Notify};
use tracing::{info, warn};
use transport::net::Iface;
use transport::session::Description;
use transport::target::{Progress, Target};

use crate::api::{Api, CallError};
use crate::fetch::{self, Fetch, Filled};
use crate::Args;

/// How long the server may stay away while chunks are fetched before the task fails.
pub(crate) const SERVER_AWAY: Duration = Duration::from_secs(600);

/// What was received, and how.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Totals {
    pub(crate) bytes: u64,
    pub(crate) multicast: u64,
    /// Chunks fetched over unicast (a capture: uploaded).
    pub(crate) unicast: u64,
    /// Chunks already on the disk (a capture: already on the server).
    pub(crate) kept: u64,
    /// Payload bytes received from the BitTorrent swarm.
    pub(crate) swarm_bytes: u64,
    /// The task was a capture.
    pub(crate) captured: bool,
}

/// How a task ended.
pub(crate) enum Outcome {
    /// Written, verified and personalized (what that changed, a line each).
    Done(Totals, Vec<String>),
    Failed(String, Totals),
    /// The server ended it (cancelled).
    Over(String),
}

pub(crate) enum Stop {
    Failed(String),
    Over(String),
}

impl From<CallError> for Stop {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Over(m) => Self::Over(m),
            e => Self::Failed(e.to_string()),
        }
    }
}

/// Sends progress to the server once a second and notices when the task was ended there.
#[derive(Clone)]
pub(crate) struct Reporter {
    tx: mpsc::UnboundedSender<(TaskState, Progress)>,
    /// Payload bytes from the swarm so far (sent with every report).
    pub(crate) swarm_bytes: Arc<std::sync::atomic::AtomicU64>,
    over: Arc<Mutex<Option<String>>>,
    notify: Arc<Notify>,
}

impl Reporter {
    fn start(api: &Api) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(TaskState, Progress)>();
        let over = Arc::new(Mutex::new(None));
        let notify = Arc::new(Notify::new());
        let swarm_bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (api, o, n, sb) = (
            api.clone(),
            over.clone(),
            notify.clone(),
            swarm_bytes.clone(),
        );
        tokio::spawn(async move {
            while let Some((mut state, mut p)) = rx.recv().await {
                // Only the latest report matters.
                while let Ok((s, q)) = rx.try_recv() {
                    (state, p) = (s, q);
                }
                let body = ProgressReport {
                    state,
                    bytes_done: p.stored_bytes,
                    bytes_total: Some(p.total_bytes),
                    rate_bps: p.rate_bps,
                    multicast_chunks: p.multicast_chunks,
                    unicast_chunks: p.unicast_chunks,
                    kept_chunks: p.kept_chunks,
                    swarm_bytes: sb.load(std::sync::atomic::Ordering::Relaxed),
                };
                match api.post::<_, StateReply>("/agent/progress", &body).await {
                    Ok(_) => {}
                    Err(CallError::Over(m)) => {
                        *o.lock().expect("lock") = Some(m);
                        n.notify_one();
                        return;
                    }
                    // The server is away or refused: the work goes on, the next report may land.
                    Err(e) => warn!("progress not reported: {e}"),
                }
            }
        });
        Self {
            tx,
            swarm_bytes,
            over,
            notify,
        }
    }

    pub(crate) fn send(&self, state: TaskState, p: Progress) {
        let _ = self.tx.send((state, p));
    }

    /// Waits until the server says the task is over; returns its words.
    async fn ended(&self) -> String {
        loop {
            if let Some(m) = self.over.lock().expect("lock").clone() {
                return m;
            }
            self.notify.notified().await;
        }
    }
}

/// Runs the task to its end.
pub(crate) async fn run(api: &Api, iface: &Iface, args: &Args, task: AgentTask) -> Outcome {
    let reporter = Reporter::start(api);
    let capture = task.kind == TaskKind::Capture;
    let work = async {
        if capture {
            crate::capture::work(api, args, &task, &reporter)
                .await
                .map(|t| (t, Vec::new()))
        } else {
            work(api, iface, args, task.clone(), &reporter).await
        }
    };
    let r = tokio::select! {
        biased;
        r = work => r,
        m = reporter.ended() => Err(Stop::Over(m)),
    };
    match r {
        Ok((t, personalized)) => Outcome::Done(t, personalized),
        Err(Stop::Failed(m)) => Outcome::Failed(m, Totals::default()),
        Err(Stop::Over(m)) => Outcome::Over(m),
    }
}

async fn work(
    api: &Api,
    iface: &Iface,
    args: &Args,
    task: AgentTask,
    reporter: &Reporter,
) -> Result<(Totals, Vec<String>), Stop> {
    // The smallest disk's size: when the image does not fit it as captured, the server
    // fits the image to it (its filesystems shrunk) and says so by its id.
    // (A file that does not exist yet is made the image's size.)
    let (mut smallest, mut smallest_disk) = (u64::MAX, &args.disk);
    for disk in args.disks.iter().filter(|d| d.exists()) {
        let len =
            block_len(disk).map_err(|e| Stop::Failed(format!("{}: {e:#}", disk.display())))?;
        if len < smallest {
            (smallest, smallest_disk) = (len, disk);
        }
    }
    let path = match smallest {
        u64::MAX => "/agent/manifest".to_string(),
        n => format!("/agent/manifest?disk_size={n}"),
    };
    let ManifestReply::<Manifest> {
        id,
        mut manifest,
        live,
    } = api
        .retry("fetching the manifest", None, || api.get(&path))
        .await
        .map_err(|e| match Stop::from(e) {
            // Refused (a disk too small even with the image fitted to it): name the disk.
            Stop::Failed(m) => Stop::Failed(format!("{}: {m}", smallest_disk.display())),
            over => over,
        })?;
    manifest
        .validate()
        .map_err(|e| Stop::Failed(format!("the server sent a malformed manifest: {e}")))?;
    if live {
        info!(
            "the image streams straight from the source machine's disk ({}) as it is read",
            manifest.source
        );
    }
    // The disks must fit before anything is received (and nothing is written if one does
    // not); one disk is scanned once for what an interrupted run left, which no source
    // fetches again (several start afresh: what each holds may differ).
    let several = args.disks.len() > 1;
    let target = {
        let (disks, d) = (
            args.disks.clone(),
            match live {
                true => Description::live(manifest.clone()),
                false => Description::unicast(&id, manifest.clone()),
            },
        );
        // A live stream's chunks have no hashes to look for yet: it starts afresh.
        let resume = !several && !live;
        tokio::task::spawn_blocking(move || Target::open_all(&disks, d, resume))
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?
            .map_err(|e| Stop::Failed(format!("{}: {e:#}", args.disk.display())))?
    };
    // Each disk's layout is planned before anything is received: one that cannot be is
    // refused first.
    let mut layouts = Vec::new();
    for disk in &args.disks {
        let len =
            block_len(disk).map_err(|e| Stop::Failed(format!("{}: {e:#}", disk.display())))?;
        let l = imaging::relayout::plan(&manifest, len, layout_mode(task.layout))
            .map_err(|e| Stop::Failed(format!("{}: {e}", disk.display())))?;
        layouts.push((disk.clone(), l));
    }
    let target = Arc::new(target);
    let kept = target.progress().kept_chunks;
    if kept > 0 {
        info!(
            "{kept} chunk(s) already on the disk: fetching the other {}",
            target.missing().len()
        );
    }
    let sampler = tokio::spawn(report_progress(target.clone(), reporter.clone()));
    // The swarm reads and writes one disk beside the target: a machine writing several
    // fetches over multicast and unicast only.
    let mut plan = task.plan();
    if several && plan.contains(&Transport::Bittorrent) {
        info!("writing several disks: the BitTorrent swarm is left out");
        plan.retain(|&t| t != Transport::Bittorrent);
    }
    if live {
        // A swarm shares an image's pieces by hash, which a live stream learns as it goes.
        plan.retain(|&t| t != Transport::Bittorrent);
    }
    if !live && id != task.image.id {
        info!(
            "the server fitted {} to this {}-byte disk ({}): fetching it over unicast",
            task.image.name, smallest, manifest.name
        );
        plan = vec![Transport::Unicast];
    }
    let mut multicast = fetch::Multicast {
        api,
        iface,
        leave_missing: plan.contains(&Transport::Bittorrent),
        task: task.clone(),
    };
    let mut swarm = fetch::Swarm {
        api,
        args,
        task: &task,
        manifest: &manifest,
        reporter,
        seeding: None,
    };
    let mut unicast = fetch::Unicast { api };
    let mut done_by = None;
    for (k, &via) in plan.iter().enumerate() {
        if target.complete() {
            break;
        }
        let source: &mut dyn Fetch = match via {
            Transport::Multicast => &mut multicast,
            Transport::Bittorrent => &mut swarm,
            Transport::Unicast => &mut unicast,
        };
        match source.fill(&target).await {
            Ok(Filled::Complete) => {
                done_by = Some(via);
                break;
            }
            Ok(Filled::Partial(why)) => info!(
                "{}",
                fetch::next_line(via, &why, target.missing().len(), plan.get(k + 1).copied())
            ),
            Err(e) => {
                sampler.abort();
                return Err(e);
            }
        }
    }
    sampler.abort();
    if !target.complete() {
        return Err(Stop::Failed(format!(
            "{} chunk(s) missing after every source ({})",
            target.missing().len(),
            plan.iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut committed = None;
    if live {
        // Every chunk was checked against the hash it came with; those hashes must be the
        // ones the source committed.
        let m = committed_manifest(api).await?;
        committed = Some(m.clone());
        let t = target.clone();
        tokio::task::spawn_blocking(move || t.sink().confirm(&m))
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?
            .map_err(|e| Stop::Failed(format!("{}: {e:#}", args.disk.display())))?;
        info!("every chunk matches the source's committed image");
    }
    let seeding = match swarm.seeding.take() {
        Some(s) => Some(crate::swarm::Seed::Live(s)),
        // Done by multicast in a deployment whose stragglers finish from the swarm: the
        // machine seeds for them once its result is in.
        None if done_by == Some(Transport::Multicast) && plan.contains(&Transport::Bittorrent) => {
            Some(crate::swarm::Seed::Later {
                disk: args.disk.clone(),
                manifest: Box::new(manifest.clone()),
                limits: task.bittorrent,
            })
        }
        None => None,
    };
    if let Some(m) = committed {
        manifest = m;
    }
    let p = target.progress();
    let totals = Totals {
        bytes: p.total_bytes,
        multicast: p.multicast_chunks,
        unicast: p.unicast_chunks,
        kept: p.kept_chunks,
        swarm_bytes: reporter
            .swarm_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        captured: false,
    };
    if args.read_back {
        reporter.send(
            TaskState::Verifying,
            Progress {
                stored_bytes: totals.bytes,
                total_bytes: totals.bytes,
                ..Progress::default()
            },
        );
        // The chunks are read back before the table is finished: a larger disk's GPT is
        // rewritten for its size, so its sectors no longer hold the captured bytes.
        let t = target.clone();
        let bad = tokio::task::spawn_blocking(move || {
            let sink = t.sink();
            let have = sink.scan()?;
            anyhow::Ok(have.iter().position(|&h| !h))
        })
        .await
        .map_err(|e| Stop::Failed(e.to_string()))?
        .map_err(|e| Stop::Failed(format!("reading the disk back: {e:#}")))?;
        if let Some(i) = bad {
            return Err(Stop::Failed(format!(
                "chunk {i} reads back wrong from {}",
                args.disk.display()
            )));
        }
    }
    let written = Progress {
        stored_bytes: totals.bytes,
        total_bytes: totals.bytes,
        ..Progress::default()
    };
    // Seeding serves the disk as the image has it: finishing it (a larger disk's GPT
    // rewritten for its size), laying it out and personalizing come after. A seed that joins
    // now checks its pieces on the disk, and one that failed would be fetched again from
    // peers over whatever changed it.
    if let Some(s) = seeding {
        reporter.send(TaskState::Seeding, written);
        s.until_released(api).await;
    }
    {
        let t = target.clone();
        tokio::task::spawn_blocking(move || t.finish())
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?
            .map_err(|e| Stop::Failed(format!("finishing the disk: {e:#}")))?;
    }
    if args.read_back {
        let t = target.clone();
        let bad = tokio::task::spawn_blocking(move || t.sink().check_zero_fill())
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?
            .map_err(|e| Stop::Failed(format!("reading the disk back: {e:#}")))?;
        if let Some(at) = bad {
            return Err(Stop::Failed(format!(
                "byte {at} of {} should read as zero (a raw-copied area) but does not",
                args.disk.display()
            )));
        }
        info!("read back: every chunk matches its hash, every zeroed region reads as zeros");
    }
    // Each disk is laid out once it holds the image (and no longer serves it as written),
    // then personalized; with several, each line names its disk.
    let mut personalized = Vec::new();
    for (disk, layout) in layouts {
        let name = |l: String| {
            if several {
                format!("{}: {l}", disk.display())
            } else {
                l
            }
        };
        let (d, m, l) = (disk.clone(), manifest.clone(), layout.clone());
        let changed = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
            let dev = imaging::device::FileDevice::open_write(&d)?;
            imaging::relayout::apply(&d, &dev, &m, &l)
        })
        .await
        .map_err(|e| Stop::Failed(e.to_string()))?
        .map_err(|e| Stop::Failed(format!("laying the image out on {}: {e:#}", disk.display())))?;
        for l in changed.into_iter().map(name) {
            info!("layout: {l}");
            personalized.push(l);
        }
        let Some(p) = task.personalize.clone() else {
            continue;
        };
        reporter.send(TaskState::Personalizing, written);
        // The partitions where the layout put them.
        let (d, m) = (disk.clone(), layout.placed(&manifest));
        // Its own peak, not the write's: the kernel restarts the count (clear_refs 5).
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let started = Instant::now();
        let changed = tokio::task::spawn_blocking(move || crate::personalize::run(&d, &m, &p))
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?
            .map_err(|e| Stop::Failed(format!("personalization of {}: {e:#}", disk.display())))?;
        for l in changed.into_iter().map(name) {
            info!("personalized: {l}");
            personalized.push(l);
        }
        info!(
            "personalization took {:.1} s, peak memory {}",
            started.elapsed().as_secs_f64(),
            peak_memory().unwrap_or_else(|| "unknown".into())
        );
    }
    Ok((totals, personalized))
}

/// A live stream's image once its source committed it (waiting for the source to finish
/// reading and uploading: the server holds each ask for a while).
async fn committed_manifest(api: &Api) -> Result<Manifest, Stop> {
    loop {
        let r: ManifestReply<Manifest> = api
            .retry("fetching the committed manifest", None, || {
                api.get("/agent/manifest")
            })
            .await?;
        if !r.live {
            r.manifest
                .validate()
                .map_err(|e| Stop::Failed(format!("the server sent a malformed manifest: {e}")))?;
            return Ok(r.manifest);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Sends the target's progress once a second, whichever source fills it, with the rate of
/// the last second.
async fn report_progress(target: Arc<Target>, reporter: Reporter) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last: Option<(Instant, u64)> = None;
    loop {
        tick.tick().await;
        let mut p = target.progress();
        let now = Instant::now();
        if let Some((t, b)) = last {
            let secs = now.duration_since(t).as_secs_f64().max(0.001);
            p.rate_bps = (p.stored_bytes.saturating_sub(b) as f64 * 8.0 / secs) as u64;
        }
        last = Some((now, p.stored_bytes));
        reporter.send(TaskState::Receiving, p);
    }
}

/// Tells the server how the task ended; returns the exit code.
pub(crate) async fn report(api: &Api, mut outcome: Outcome) -> anyhow::Result<ExitCode> {
    let personalized = match &mut outcome {
        Outcome::Done(_, p) => std::mem::take(p),
        _ => Vec::new(),
    };
    let (ok, reason, t) = match &outcome {
        Outcome::Done(t, _) => (true, None, *t),
        Outcome::Failed(m, t) => (false, Some(m.clone()), *t),
        Outcome::Over(m) => {
            eprintln!("the server ended the task: {m}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let body = ResultReport {
        ok,
        reason: reason.clone(),
        counters: Some(WorkCounters {
            bytes_done: t.bytes,
            multicast_chunks: t.multicast,
            unicast_chunks: t.unicast,
            kept_chunks: t.kept,
            swarm_bytes: t.swarm_bytes,
        }),
        personalized,
    };
    match api
        .retry("reporting the result", Some(SERVER_AWAY), || {
            api.post::<_, StateReply>("/agent/result", &body)
        })
        .await
    {
        Ok(_) => {}
        // Recorded already (an answer lost on the way), or cancelled meanwhile.
        Err(CallError::Over(m)) => eprintln!("the server had the task over already: {m}"),
        Err(e) => eprintln!("the result could not be reported: {e}"),
    }
    if ok && t.captured {
        eprintln!(
            "done: {} read, {} chunk(s) uploaded, {} already on the server",
            transport::fmt::bytes(t.bytes),
            t.unicast,
            t.kept
        );
        Ok(ExitCode::SUCCESS)
    } else if ok {
        eprintln!(
            "done: {} written and verified ({} chunk(s) by multicast, {} over unicast, {} already there{})",
            transport::fmt::bytes(t.bytes),
            t.multicast,
            t.unicast,
            t.kept,
            if t.swarm_bytes > 0 {
                format!(", {} from the swarm", transport::fmt::bytes(t.swarm_bytes))
            } else {
                String::new()
            }
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("failed: {}", reason.unwrap_or_default());
        Ok(ExitCode::FAILURE)
    }
}

/// The process's peak resident memory (VmHWM), as /proc tells it.
fn peak_memory() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(format!("{:.1} MiB", kib as f64 / 1024.0))
}

/// The size of the disk (or file) at `path`.
fn block_len(path: &std::path::Path) -> anyhow::Result<u64> {
    use imaging::device::BlockDevice as _;
    Ok(imaging::device::FileDevice::open_read(path)?.len())
}

/// The layout mode the task names.
fn layout_mode(l: proto::api::Layout) -> imaging::relayout::LayoutMode {
    use imaging::relayout::LayoutMode;
    match l {
        proto::api::Layout::Grow => LayoutMode::Grow,
        proto::api::Layout::Keep => LayoutMode::Keep,
        proto::api::Layout::Proportional => LayoutMode::Proportional,
    }
}
