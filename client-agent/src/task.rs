//! Running one restore task: the manifest, a check that the disk fits, then multicast (the
//! deployment's session) and unicast for whatever multicast did not bring, progress reports
//! once a second, an optional read-back, and the result.

use std::collections::VecDeque;
use std::net::SocketAddrV4;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imaging::manifest::Manifest;
use proto::api::{
    AgentTask, DeploymentState, Fallback, MulticastAssignment, ProgressReport, ResultReport,
    StateReply, TaskKind, TaskReply, TaskState, Transport, WorkCounters,
};
use tokio::sync::{mpsc, Notify};
use tracing::{info, warn};
use transport::net::Iface;
use transport::receive::{self, ApiFetch, Progress, ReceiveOptions};
use transport::session::{Description, Sink};

use crate::api::{Api, CallError};
use crate::Args;

/// Unicast chunk downloads at once.
const PARALLEL_FETCHES: usize = 4;
/// How often a chunk that arrives wrong is fetched again before the task fails.
const MAX_BAD_FETCHES: u32 = 3;
/// How long to listen for the deployment's session before asking the server again.
const SESSION_WAIT: Duration = Duration::from_secs(20);
/// Seconds an agent asks again for a waiting multicast deployment's session before it takes
/// the image over unicast.
const SESSION_ANNOUNCE_WAIT_S: u32 = 60;
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
    /// Written and verified; over BitTorrent, the machine's seed for the others.
    Done(Totals, Option<crate::swarm::Seed>),
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
                match api.post_as::<_, StateReply>("/agent/progress", &body).await {
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
                .map(|t| (t, None))
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
        Ok((t, seeding)) => Outcome::Done(t, seeding),
        Err(Stop::Failed(m)) => Outcome::Failed(m, Totals::default()),
        Err(Stop::Over(m)) => Outcome::Over(m),
    }
}

async fn work(
    api: &Api,
    iface: &Iface,
    args: &Args,
    mut task: AgentTask,
    reporter: &Reporter,
) -> Result<(Totals, Option<crate::swarm::Seed>), Stop> {
    let m = api
        .retry("fetching the manifest", None, || api.get("/agent/manifest"))
        .await?;
    let id = m["id"].as_str().unwrap_or_default().to_string();
    let manifest: Manifest = serde_json::from_value(m["manifest"].clone())
        .map_err(|e| Stop::Failed(format!("the server sent a malformed manifest: {e}")))?;
    let desc = Description::unicast(&id, manifest.clone());
    // The disk must fit before anything is received (and nothing is written if it does not).
    {
        let (disk, d) = (args.disk.clone(), desc.clone());
        tokio::task::spawn_blocking(move || Sink::open(&disk, d).map(|_| ()))
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?
            .map_err(|e| Stop::Failed(format!("{}: {e:#}", args.disk.display())))?;
    }
    reporter.send(TaskState::Receiving, Progress::default());
    let mut totals = Totals::default();
    // A multicast deployment may send its stragglers and late joiners to the swarm.
    let swarm_fallback = task.fallback == Fallback::Bittorrent;
    let mut unheard = None;
    // A task can reach the agent before its deployment's session is announced (the server
    // starts the session right after creating the tasks): while the deployment waits for
    // its stream, ask again rather than take the whole image over unicast.
    let mut asked = 0;
    while task.transport == Transport::Multicast
        && task.multicast.is_none()
        && task.deployment_state == DeploymentState::Waiting
        && asked < SESSION_ANNOUNCE_WAIT_S
    {
        if asked == 0 {
            info!("the deployment's multicast session is not announced yet: waiting for it");
        }
        asked += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
        task = fetch_task(api).await?;
    }
    if task.transport == Transport::Multicast && task.multicast.is_none() {
        info!(
            "no multicast session for this deployment ({}): fetching the image over unicast",
            match task.deployment_state {
                DeploymentState::Waiting => "none announced within a minute",
                DeploymentState::Running => "its stream is over or was lost with a server restart",
                _ => "the deployment is over",
            }
        );
    }
    while let (Transport::Multicast, Some(mc)) = (task.transport, task.multicast.clone()) {
        match multicast(api, iface, args, &mc, reporter, swarm_fallback).await {
            Ok(t) => {
                totals = t;
                break;
            }
            Err(MulticastError::NoSession) => {
                // The session may have ended (late machine) or been replaced (server
                // restart): ask again. A session the server still names but that stays
                // silent (its server is gone) is given up after two tries.
                if unheard == Some(mc.session) {
                    warn!("the deployment's session is not heard here: finishing without it");
                    break;
                }
                unheard = Some(mc.session);
                task = fetch_task(api).await?;
            }
            Err(MulticastError::Other(e)) => {
                warn!("multicast failed: {e:#}; finishing without it");
                break;
            }
        }
    }
    let mut seeding = None;
    let multicast_chunks = totals.multicast;
    if task.transport == Transport::Bittorrent || (swarm_fallback && totals.bytes == 0) {
        let total = desc.plain_bytes();
        let s = crate::swarm::receive(api, args, &task, &manifest, total, reporter).await?;
        reporter
            .swarm_bytes
            .store(s.fetched, std::sync::atomic::Ordering::Relaxed);
        seeding = s.seeding.map(crate::swarm::Seed::Live);
    } else if swarm_fallback {
        // Done by multicast: it seeds for the stragglers once its result is in.
        seeding = Some(crate::swarm::Seed::Later {
            disk: args.disk.clone(),
            manifest: Box::new(manifest.clone()),
            limits: task.bittorrent,
        });
    }
    if totals.bytes == 0 {
        // After the swarm: every chunk is checked on the disk, the few wrong or missing
        // ones fetched (all of them, if the swarm gave nothing).
        totals = unicast(api, args, desc.clone(), reporter).await?;
    }
    totals.swarm_bytes = reporter
        .swarm_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    if totals.swarm_bytes > 0 {
        // The scan found the swarm's (and multicast's) chunks on the disk: not "kept".
        totals.kept = 0;
        totals.multicast = multicast_chunks;
    }
    if args.read_back {
        reporter.send(
            TaskState::Verifying,
            Progress {
                stored_bytes: totals.bytes,
                total_bytes: totals.bytes,
                ..Progress::default()
            },
        );
        let (disk, d) = (args.disk.clone(), desc);
        let bad = tokio::task::spawn_blocking(move || {
            let sink = Sink::open(&disk, d)?;
            let have = sink.scan()?;
            anyhow::Ok((have.iter().position(|&h| !h), sink.check_zero_fill()?))
        })
        .await
        .map_err(|e| Stop::Failed(e.to_string()))?
        .map_err(|e| Stop::Failed(format!("reading the disk back: {e:#}")))?;
        if let Some(i) = bad.0 {
            return Err(Stop::Failed(format!(
                "chunk {i} reads back wrong from {}",
                args.disk.display()
            )));
        }
        if let Some(at) = bad.1 {
            return Err(Stop::Failed(format!(
                "byte {at} of {} should read as zero (a raw-copied area) but does not",
                args.disk.display()
            )));
        }
        info!("read back: every chunk matches its hash, every zeroed region reads as zeros");
    }
    Ok((totals, seeding))
}

/// The task as the server has it now.
async fn fetch_task(api: &Api) -> Result<AgentTask, Stop> {
    let r = api
        .retry("fetching the task", None, || {
            api.get_as::<TaskReply>("/agent/task")
        })
        .await?;
    Ok(r.task)
}

/// Why joining the multicast session ended without the image.
enum MulticastError {
    /// No session was heard on the group (over, or replaced after a server restart).
    NoSession,
    /// Anything else: the machine finishes without multicast.
    Other(anyhow::Error),
}

/// Joins the deployment's session; whatever multicast misses comes from the API, or with
/// `leave_missing` from elsewhere (the totals' bytes are then 0, the chunk counts what came).
async fn multicast(
    api: &Api,
    iface: &Iface,
    args: &Args,
    mc: &MulticastAssignment,
    reporter: &Reporter,
    leave_missing: bool,
) -> Result<Totals, MulticastError> {
    let group: SocketAddrV4 = mc.group.parse().map_err(|e| {
        MulticastError::Other(anyhow::anyhow!(
            "the task's multicast group {:?}: {e}",
            mc.group
        ))
    })?;
    let session = mc.session;
    let (ptx, mut prx) = mpsc::unbounded_channel();
    let fwd = {
        let r = reporter.clone();
        tokio::spawn(async move {
            while let Some(p) = prx.recv().await {
                r.send(TaskState::Receiving, p);
            }
        })
    };
    info!(%group, session = format!("{session:08x}"), "joining the multicast session");
    let r = receive::run(ReceiveOptions {
        iface: iface.clone(),
        group,
        out: args.disk.clone(),
        wait: Some(SESSION_WAIT),
        json: false,
        session: Some(session),
        fetch_from: Some(ApiFetch {
            base: api.base.clone(),
            token: api.token.clone().unwrap_or_default(),
        }),
        resume: true,
        progress: Some(ptx),
        leave_missing,
    })
    .await;
    fwd.abort();
    let r = r.map_err(|e| match e.downcast_ref::<receive::NoSession>() {
        Some(_) => MulticastError::NoSession,
        None => MulticastError::Other(e),
    })?;
    info!(
        "received in {:.1} s: {} chunk(s) by multicast, {} over unicast, {} already on the disk",
        r.seconds, r.multicast_chunks, r.unicast_chunks, r.kept_chunks
    );
    if r.missing_chunks > 0 {
        info!("{} chunk(s) left for the swarm", r.missing_chunks);
    }
    Ok(Totals {
        bytes: if r.missing_chunks > 0 { 0 } else { r.bytes },
        multicast: r.multicast_chunks,
        unicast: r.unicast_chunks,
        kept: r.kept_chunks,
        swarm_bytes: 0,
        captured: false,
    })
}

/// Fetches every chunk the disk lacks from the API, `PARALLEL_FETCHES` at a time.
async fn unicast(
    api: &Api,
    args: &Args,
    desc: Description,
    reporter: &Reporter,
) -> Result<Totals, Stop> {
    let disk = args.disk.clone();
    let (sink, have) = tokio::task::spawn_blocking(move || {
        let sink = Sink::open(&disk, desc)?;
        let have = sink.scan()?;
        anyhow::Ok((sink, have))
    })
    .await
    .map_err(|e| Stop::Failed(e.to_string()))?
    .map_err(|e| Stop::Failed(format!("{e:#}")))?;
    let sink = Arc::new(sink);
    let hashes: Vec<String> = (0..sink.chunks()).map(|i| sink.hash_hex(i)).collect();
    let total: u64 = (0..sink.chunks()).map(|i| sink.plain_len(i)).sum();
    let mut t = Totals::default();
    let mut stored = 0u64;
    let mut queue = VecDeque::new();
    for (i, &h) in have.iter().enumerate() {
        if h {
            t.kept += 1;
            stored += sink.plain_len(i);
        } else {
            queue.push_back(i);
        }
    }
    if t.kept > 0 {
        info!(
            "{} chunk(s) already on the disk: fetching the other {}",
            t.kept,
            queue.len()
        );
    }
    let mut bad = vec![0u32; sink.chunks()];
    let mut running = tokio::task::JoinSet::new();
    let start = Instant::now();
    let mut last = Instant::now();
    let mut fetched_bytes = 0u64;
    loop {
        while running.len() < PARALLEL_FETCHES {
            let Some(i) = queue.pop_front() else { break };
            let (api, sink, hash) = (api.clone(), sink.clone(), hashes[i].clone());
            running.spawn(async move {
                let data = api
                    .retry("fetching a chunk", Some(SERVER_AWAY), || api.chunk(&hash))
                    .await;
                let data = match data {
                    Ok(d) => d,
                    Err(e) => return (i, Err(Stop::from(e))),
                };
                let r = tokio::task::spawn_blocking(move || sink.write(i, &data)).await;
                match r {
                    Ok(Ok(Ok(()))) => (i, Ok(true)),
                    Ok(Ok(Err(why))) => {
                        warn!("{why}: fetching it again");
                        (i, Ok(false))
                    }
                    Ok(Err(e)) => (i, Err(Stop::Failed(format!("writing the disk: {e:#}")))),
                    Err(e) => (i, Err(Stop::Failed(e.to_string()))),
                }
            });
        }
        let Some(r) = running.join_next().await else {
            break;
        };
        let (i, r) = r.map_err(|e| Stop::Failed(e.to_string()))?;
        match r? {
            true => {
                t.unicast += 1;
                stored += sink.plain_len(i);
                fetched_bytes += sink.plain_len(i);
            }
            false => {
                bad[i] += 1;
                if bad[i] >= MAX_BAD_FETCHES {
                    return Err(Stop::Failed(format!(
                        "chunk {i} arrived wrong {MAX_BAD_FETCHES} times"
                    )));
                }
                queue.push_back(i);
            }
        }
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            reporter.send(
                TaskState::Receiving,
                Progress {
                    stored_bytes: stored,
                    total_bytes: total,
                    rate_bps: (fetched_bytes as f64 * 8.0 / start.elapsed().as_secs_f64()) as u64,
                    unicast_chunks: t.unicast,
                    kept_chunks: t.kept,
                    ..Progress::default()
                },
            );
        }
    }
    let s = sink.clone();
    tokio::task::spawn_blocking(move || s.finish())
        .await
        .map_err(|e| Stop::Failed(e.to_string()))?
        .map_err(|e| Stop::Failed(format!("finishing the disk: {e:#}")))?;
    t.bytes = total;
    info!(
        "fetched {} chunk(s) in {:.1} s, {} already on the disk",
        t.unicast,
        start.elapsed().as_secs_f64(),
        t.kept
    );
    Ok(t)
}

/// Tells the server how the task ended; returns the exit code.
pub(crate) async fn report(api: &Api, mut outcome: Outcome) -> anyhow::Result<ExitCode> {
    let seeding = match &mut outcome {
        Outcome::Done(_, s) => s.take(),
        _ => None,
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
    };
    match api
        .retry("reporting the result", Some(SERVER_AWAY), || {
            api.post_as::<_, StateReply>("/agent/result", &body)
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
        if let Some(s) = seeding {
            s.until_released(api).await;
        }
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("failed: {}", reason.unwrap_or_default());
        Ok(ExitCode::FAILURE)
    }
}
