//! `drover multicast receive`: finds a session on the group, registers, drives a
//! [`proto::Receiver`] with tokio, writes and verifies chunks on a writer thread, and fetches
//! over HTTP what multicast did not bring.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use proto::wire::{self, Announce, Kind, SenderState};
use proto::{Receiver, ReceiverConfig, ReceiverEvent, SessionKey};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::fmt;
use crate::net::{self, Iface};
use crate::session::{Description, Registration, Sink};
use crate::unhex;

/// Decoded chunks waiting for the disk at most; beyond that a chunk is dropped and fetched
/// over unicast later, so a slow disk costs memory only up to this bound (16 × 4 MiB).
const MAX_PENDING_WRITES: usize = 16;
/// Datagrams handled per wake-up at most, before timers and feedback get their turn.
const RECV_BATCH: usize = 256;
/// After the group socket runs dry, the receiver sleeps before it reads again, so it wakes
/// once per batch of datagrams rather than once per datagram: at most this long, and never
/// longer than it takes the current rate to fill a quarter of the socket buffer. The sleep
/// blocks the thread: an async wait would still be woken by every datagram's epoll event
/// (measured: 12 000 context switches a second at 300 Mbit/s). 8 ms halved the CPU of 40
/// receivers at 30 Mbit/s against 2 ms; the kernel stamps each datagram's arrival, so the
/// sleep does not distort the queueing delay the receiver reports.
const MAX_RECV_COALESCE: Duration = Duration::from_millis(8);
const MIN_RECV_COALESCE: Duration = Duration::from_millis(1);

/// How long to let the group socket fill, given its buffer and the receive rate.
fn coalesce(recv_buffer: usize, rate_bps: u64) -> Duration {
    if rate_bps == 0 {
        return MAX_RECV_COALESCE;
    }
    let fill = Duration::from_secs_f64(recv_buffer as f64 / 4.0 * 8.0 / rate_bps as f64);
    fill.clamp(MIN_RECV_COALESCE, MAX_RECV_COALESCE)
}

/// The error when no session was announced within the wait: a caller tells it from other
/// failures by its type (`anyhow::Error::downcast_ref`), never by its words.
#[derive(Debug, Clone, Copy)]
pub struct NoSession(pub Duration);

impl std::fmt::Display for NoSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no session announced within {:?}", self.0)
    }
}

impl std::error::Error for NoSession {}

/// Failed unicast fetches in a row, with the sender silent, after which the receiver gives up.
const MAX_FETCH_FAILURES: u32 = 30;

/// What the receiver was asked to do.
pub struct ReceiveOptions {
    pub iface: Iface,
    pub group: SocketAddrV4,
    pub out: PathBuf,
    pub wait: Option<Duration>,
    pub json: bool,
    /// Only this session (the daemon names it in the task); otherwise the first announced.
    pub session: Option<u32>,
    /// Fetch missing chunks from the daemon's API rather than from the sender, so a
    /// receiver finishes even when the sender is gone (a server restart).
    pub fetch_from: Option<ApiFetch>,
    /// First check which chunks the output already holds (a resumed write) and receive
    /// only the others.
    pub resume: bool,
    /// Where to report progress once a second (the agent); `None` prints it.
    pub progress: Option<mpsc::UnboundedSender<Progress>>,
    /// Leave, rather than fetch the rest, once what is missing would come over unicast
    /// only (the stream is over, the receiver demoted, the sender silent): the caller
    /// finishes elsewhere (a BitTorrent swarm). Repairs during the stream are fetched.
    pub leave_missing: bool,
}

/// The daemon's chunk endpoint: `GET {base}/api/v1/chunks/{hash}` with a bearer token.
#[derive(Debug, Clone)]
pub struct ApiFetch {
    pub base: String,
    pub token: String,
}

/// How far a receiver got.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Plaintext bytes stored and verified.
    pub stored_bytes: u64,
    pub total_bytes: u64,
    /// Receive rate, bits/s.
    pub rate_bps: u64,
    pub multicast_chunks: u64,
    pub unicast_chunks: u64,
    /// Chunks found already written when a write resumed.
    pub kept_chunks: u64,
}

enum Outcome {
    Stored,
    /// The data was wrong (hash, decompression): fetch it again.
    Bad(String),
}

struct Job {
    index: u32,
    data: Vec<u8>,
    unicast: bool,
}

/// The receive loop's nice value: on a lab machine the receiver is alone and this changes
/// nothing; on a shared host (a test lab, a server receiving its own stream) it leaves the CPU
/// to the kernel's packet processing and to the sender first, whose delays would cost every
/// receiver (40 receivers decoding at once on 2 cores: 17.5 s at nice 0, 16.8 s at 5).
const RECEIVER_NICE: libc::c_int = 5;
/// The writer's, behind its queue: later still.
const WRITER_NICE: libc::c_int = 10;

/// A line for the terminal, or for the log when an agent drives the receiver.
macro_rules! say {
    ($quiet:expr, $($t:tt)*) => {
        if $quiet {
            tracing::info!($($t)*)
        } else {
            eprintln!($($t)*)
        }
    };
}

/// What a receiver got, and how.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub bytes: u64,
    pub seconds: f64,
    pub multicast_chunks: u64,
    pub unicast_chunks: u64,
    pub kept_chunks: u64,
    /// Chunks not stored (the receiver left, `leave_missing`); 0 when complete.
    pub missing_chunks: u64,
}

/// Runs a receiver to the end of its session.
pub async fn run(o: ReceiveOptions) -> anyhow::Result<Received> {
    // SAFETY: setpriority on the calling thread (who = 0) has no memory effects.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, RECEIVER_NICE) };
    let quiet = o.progress.is_some();
    let group = net::group_socket(&o.iface, o.group)?;
    let recv_buffer = net::recv_buffer(&group);
    eprintln!(
        "waiting for a session on {} (or broadcast) via {} ({})",
        o.group, o.iface.name, o.iface.addr
    );
    let (announce, sender_addr) = find_session(&group, o.wait, o.session).await?;
    // A daemon's session (HTTP port 0) is joined through the daemon's API, with the task's
    // token; the command line's sender serves its own port.
    let (base, token) = match (announce.http_port, &o.fetch_from) {
        (0, Some(api)) => (
            format!("{}/api/v1/agent/session", api.base),
            Some(api.token.clone()),
        ),
        (0, None) => bail!(
            "session {:08x} is a drover serve deployment: its machines join it through the \
             server's API with their task's token (drover-agent), not with drover multicast receive",
            announce.session
        ),
        (port, _) => (format!("http://{}:{port}", sender_addr.ip()), None),
    };
    let client = {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = &token {
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
                .context("the task token is not a valid header value")?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        reqwest::Client::builder()
            .no_proxy()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .build()?
    };
    let desc: Description = client
        .get(format!("{base}/session"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("fetching the session description from {base}"))?
        .json()
        .await
        .context("reading the session description")?;
    let layout = desc.layout()?;
    let total = desc.plain_bytes();
    eprintln!(
        "session {:08x}: {} ({} in {} chunks) from {}",
        desc.session,
        desc.name,
        fmt::bytes(total),
        desc.chunks.len(),
        sender_addr.ip()
    );
    // Check the output before registering: a receiver that cannot write never joins.
    let resume = o.resume;
    let (sink, have) = {
        let out = o.out.clone();
        let d = desc.clone();
        tokio::task::spawn_blocking(move || {
            let sink = Sink::open(&out, d)?;
            let have = if resume {
                sink.scan()?
            } else {
                vec![false; sink.chunks()]
            };
            if have.iter().all(|&h| h) {
                sink.finish()?;
            }
            anyhow::Ok((sink, have))
        })
        .await??
    };
    let kept = have.iter().filter(|&&h| h).count() as u64;
    if kept > 0 {
        say!(quiet, "{kept} chunk(s) already written: receiving the rest");
    }
    let hashes: Vec<String> = desc.chunks.iter().map(|c| c.hash.to_hex()).collect();
    let register = || async {
        let r: Registration = client
            .post(format!("{base}/register"))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("registering with {base}"))?
            .json()
            .await
            .context("reading the registration")?;
        anyhow::Ok(r)
    };
    let reg = register().await?;
    let key = unhex(&reg.key)
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .context("the sender sent a malformed session key")?;
    let feedback = net::unicast_socket(&o.iface)?;
    let mut cfg = ReceiverConfig::new(desc.session, SessionKey(key), reg.receiver_id);
    cfg.rng_seed = u64::from(reg.receiver_id) ^ u64::from(u32::from(o.iface.addr));
    let mut rx = Receiver::new(cfg, layout, Instant::now());
    for (i, _) in have.iter().enumerate().filter(|(_, &h)| h) {
        rx.already_stored(i as u32);
    }
    eprintln!("registered as receiver {}", reg.receiver_id);

    // The writer thread: checks, writes and reads back every chunk, then finishes the output.
    let (job_tx, job_rx) = std_mpsc::channel::<Job>();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(u32, bool, anyhow::Result<Outcome>)>();
    let n_chunks = desc.chunks.len();
    let writer = std::thread::spawn(move || {
        // Writing is behind a queue and may lag; the receive loop and the feedback may not.
        // SAFETY: setpriority on the calling thread (tid 0 = self) has no memory effects.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, WRITER_NICE) };
        writer(sink, job_rx, done_tx, have)
    });

    let (fetch_tx, mut fetch_rx) = mpsc::unbounded_channel::<(u32, anyhow::Result<Vec<u8>>)>();
    let mut gbuf = vec![0u8; 65536];
    let mut ubuf = vec![0u8; 65536];
    let mut buf = Vec::with_capacity(2048);
    let mut pending_writes = 0usize;
    let mut fetch_failures = 0u32;
    let mut last_progress = Instant::now();
    let t0 = Instant::now();
    let mut demoted = false;
    loop {
        // The writer's results and unicast downloads are taken here as well as in the select
        // below: while the stream runs, the group socket (its first, biased branch) is ready
        // at every turn, and they would wait for the stream's end.
        while let Ok((index, unicast, r)) = done_rx.try_recv() {
            on_written(&mut rx, &mut pending_writes, index, unicast, r)?;
        }
        while let Ok((index, r)) = fetch_rx.try_recv() {
            on_fetched(&mut rx, &mut fetch_failures, &job_tx, &base, index, r)?;
        }
        let now = Instant::now();
        rx.handle_timeout(now);
        while let Some(i) = rx.poll_fetch(now) {
            let (url, token) = match &o.fetch_from {
                Some(api) => (
                    format!("{}/api/v1/chunks/{}", api.base, hashes[i as usize]),
                    Some(api.token.clone()),
                ),
                None => (format!("{base}/chunks/{i}"), None),
            };
            let client = client.clone();
            let tx = fetch_tx.clone();
            tokio::spawn(async move {
                let r = async {
                    let mut req = client.get(&url);
                    if let Some(t) = token {
                        req = req.bearer_auth(t);
                    }
                    let resp = req.send().await?.error_for_status()?;
                    anyhow::Ok(resp.bytes().await?.to_vec())
                }
                .await;
                let _ = tx.send((i, r));
            });
        }
        while rx.poll_transmit(now, &mut buf) {
            if let Err(e) = feedback.send_to(&buf, sender_addr).await {
                debug!(error = %e, "feedback not sent");
            }
        }
        while let Some(e) = rx.poll_event() {
            match e {
                ReceiverEvent::Chunk { index, data } => {
                    if pending_writes >= MAX_PENDING_WRITES {
                        rx.chunk_rejected(index);
                    } else {
                        pending_writes += 1;
                        job_tx
                            .send(Job {
                                index,
                                data,
                                unicast: false,
                            })
                            .context("the writer stopped")?;
                    }
                }
                ReceiverEvent::Demoted => {
                    demoted = true;
                    eprintln!("demoted by the sender: finishing over unicast");
                }
                ReceiverEvent::SenderSilent => {
                    eprintln!("the sender went silent: finishing over unicast")
                }
                ReceiverEvent::Unknown => {
                    eprintln!("the sender no longer knows this receiver: registering again");
                    let reg = register().await?;
                    rx.rejoin(reg.receiver_id);
                }
                ReceiverEvent::Finished => {}
                _ => {}
            }
        }
        if rx.finished() {
            break;
        }
        if o.leave_missing && rx.unicast_all() {
            eprintln!(
                "leaving the session with {} chunk(s) missing: the rest comes from elsewhere",
                rx.missing().len()
            );
            break;
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            let s = rx.stats();
            if let Some(p) = &o.progress {
                // The receiver counts payload (compressed) bytes; the agent reports plaintext.
                let missing: u64 = rx
                    .missing()
                    .iter()
                    .map(|&i| u64::from(desc.chunks[i as usize].plain_len))
                    .sum();
                let s = rx.stats();
                let _ = p.send(Progress {
                    stored_bytes: total - missing,
                    total_bytes: total,
                    rate_bps: s.rate_bps,
                    multicast_chunks: u64::from(s.decoded_chunks),
                    unicast_chunks: u64::from(s.fetched_chunks),
                    kept_chunks: kept,
                });
            } else {
                eprintln!(
                    "received {} of {} ({:.0} %), {} , loss {:.1} %, {} chunk(s) over unicast{}",
                    fmt::bytes(s.stored_bytes),
                    fmt::bytes(desc.chunks.iter().map(|c| c.len as u64).sum()),
                    100.0 * s.stored_chunks as f64 / n_chunks.max(1) as f64,
                    fmt::rate(s.rate_bps as f64),
                    100.0 * s.loss,
                    s.fetched_chunks,
                    if demoted { " (demoted)" } else { "" }
                );
            }
        }
        let wake = rx
            .poll_timeout()
            .unwrap_or(now + Duration::from_millis(100))
            .min(now + Duration::from_millis(250));
        tokio::select! {
            biased;
            r = group.readable() => match r {
                Ok(()) => {
                    // Drain what is queued: one wake-up per batch, not per datagram. Each
                    // datagram is handled at its kernel arrival time, so a busy moment here
                    // does not look like a queue in the network.
                    let mut drained = false;
                    for _ in 0..RECV_BATCH {
                        match net::recv_stamped(&group, &mut gbuf) {
                            Ok((n, at, segment)) => {
                                let at = at.unwrap_or_else(Instant::now);
                                for d in gbuf[..n].chunks(segment.unwrap_or(n).max(1)) {
                                    rx.handle_datagram(at, d);
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                drained = true;
                                break;
                            }
                            Err(e) => {
                                warn!(error = %e, "receive failed");
                                break;
                            }
                        }
                    }
                    if drained {
                        // The queue is empty: let it fill for a moment. This runtime is this
                        // receiver's alone; what else it serves (the writer's replies, unicast
                        // fetches, feedback) can wait a few milliseconds.
                        std::thread::sleep(coalesce(recv_buffer, rx.stats().rate_bps));
                        // Let this runtime's other tasks (an agent's progress reports) run.
                        tokio::task::yield_now().await;
                    }
                }
                Err(e) => warn!(error = %e, "receive failed"),
            },
            r = feedback.recv_from(&mut ubuf) => match r {
                Ok((n, _)) => rx.handle_datagram(Instant::now(), &ubuf[..n]),
                Err(e) => debug!(error = %e, "receive failed"),
            },
            Some((index, unicast, r)) = done_rx.recv() => {
                on_written(&mut rx, &mut pending_writes, index, unicast, r)?;
            }
            Some((index, r)) = fetch_rx.recv() => {
                on_fetched(&mut rx, &mut fetch_failures, &job_tx, &base, index, r)?;
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
        }
    }
    drop(job_tx);
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer panicked"))?;
    let s = rx.stats();
    let secs = t0.elapsed().as_secs_f64();
    let received = Received {
        bytes: total,
        seconds: secs,
        multicast_chunks: u64::from(s.decoded_chunks),
        unicast_chunks: u64::from(s.fetched_chunks),
        kept_chunks: kept,
        missing_chunks: rx.missing().len() as u64,
    };
    if quiet {
        return Ok(received);
    }
    if o.json {
        println!(
            "{}",
            json!({
                "session": format!("{:08x}", desc.session),
                "name": desc.name,
                "out": o.out.display().to_string(),
                "bytes": total,
                "seconds": secs,
                "chunks_multicast": s.decoded_chunks,
                "chunks_unicast": s.fetched_chunks,
                "datagrams": s.datagrams,
                "rejected_datagrams": s.rejected,
                "foreign_datagrams": s.foreign,
                "demoted": demoted,
            })
        );
    } else {
        println!(
            "received {} into {} in {secs:.1} s, verified: {} chunk(s) by multicast, {} over unicast{}",
            fmt::bytes(total),
            o.out.display(),
            s.decoded_chunks,
            s.fetched_chunks,
            if s.rejected > 0 {
                format!(", {} bad datagram(s) dropped", s.rejected)
            } else {
                String::new()
            }
        );
    }
    Ok(received)
}

/// The writer stored chunk `index` (or found it wrong).
fn on_written(
    rx: &mut Receiver,
    pending_writes: &mut usize,
    index: u32,
    unicast: bool,
    r: anyhow::Result<Outcome>,
) -> anyhow::Result<()> {
    if !unicast {
        *pending_writes -= 1;
    }
    match r? {
        Outcome::Stored if unicast => rx.fetch_finished(Instant::now(), index, true),
        Outcome::Stored => rx.chunk_stored(index),
        Outcome::Bad(why) => {
            warn!(index, %why, "chunk rejected; fetching it again");
            if unicast {
                rx.fetch_finished(Instant::now(), index, false);
            } else {
                rx.chunk_rejected(index);
            }
        }
    }
    Ok(())
}

/// A unicast download of chunk `index` ended.
fn on_fetched(
    rx: &mut Receiver,
    failures: &mut u32,
    job_tx: &std_mpsc::Sender<Job>,
    base: &str,
    index: u32,
    r: anyhow::Result<Vec<u8>>,
) -> anyhow::Result<()> {
    match r {
        Ok(data) => {
            *failures = 0;
            job_tx
                .send(Job {
                    index,
                    data,
                    unicast: true,
                })
                .context("the writer stopped")?;
        }
        Err(e) => {
            *failures += 1;
            debug!(index, error = %e, "unicast fetch failed");
            if *failures >= MAX_FETCH_FAILURES {
                bail!("fetching chunk {index} from {base} failed {failures} times in a row: {e:#}");
            }
            rx.fetch_finished(Instant::now(), index, false);
        }
    }
    Ok(())
}

/// Waits for a session announce; returns it and the sender's control address.
async fn find_session(
    group: &tokio::net::UdpSocket,
    wait: Option<Duration>,
    session: Option<u32>,
) -> anyhow::Result<(Announce, SocketAddr)> {
    let mut buf = vec![0u8; 65536];
    let look = async {
        loop {
            let (n, from) = group.recv_from(&mut buf).await?;
            let d = &buf[..n];
            if let Ok((Kind::Announce, _)) = wire::peek(d) {
                match Announce::decode(d) {
                    Ok(a)
                        if a.state != SenderState::Done
                            && session.is_none_or(|s| s == a.session) =>
                    {
                        return anyhow::Ok((a, from))
                    }
                    Ok(_) => {}
                    Err(e) => debug!(%from, error = %e, "bad announce"),
                }
            }
        }
    };
    match wait {
        Some(w) => tokio::time::timeout(w, look)
            .await
            .map_err(|_| anyhow::Error::new(NoSession(w)))?,
        None => look.await,
    }
}

fn writer(
    sink: Sink,
    jobs: std_mpsc::Receiver<Job>,
    done: mpsc::UnboundedSender<(u32, bool, anyhow::Result<Outcome>)>,
    have: Vec<bool>,
) {
    let n = have.len();
    let mut count = have.iter().filter(|&&h| h).count();
    let mut written = have;
    for job in jobs {
        let i = job.index as usize;
        let r = (|| {
            // Wrong data is fetched again; the output failing is fatal (`?`).
            if let Err(why) = sink.write(i, &job.data)? {
                return Ok(Outcome::Bad(why));
            }
            if !written[i] {
                written[i] = true;
                count += 1;
            }
            if count == n {
                // The last chunk: finish the output (GPT backup, sync) before the sender hears
                // that this receiver is done.
                sink.finish()
                    .with_context(|| format!("finishing {}", sink.path.display()))?;
            }
            Ok(Outcome::Stored)
        })();
        let fatal = r.is_err();
        if done.send((job.index, job.unicast, r)).is_err() || fatal {
            return;
        }
    }
}
