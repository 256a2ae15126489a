//! The multicast receiver's driver: finds a session on the group, registers, drives a
//! [`proto::Receiver`] with tokio, stores chunks in a [`Target`] on a writer thread, and
//! fetches over HTTP what multicast did not bring (or, asked to, leaves that to the caller).
//!
//! It prints nothing: what happens is told as [`Event`]s, which `drover multicast receive`
//! prints and the agent logs, and the result is a [`Received`].

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use proto::wire::{self, Announce, Kind, SenderState};
use proto::{Receiver, ReceiverConfig, ReceiverEvent, SessionKey};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::fmt;
use crate::net::{self, Iface};
use crate::session::{Description, Registration};
use crate::target::{Stored, Target, Via};
use crate::unhex;

/// Decoded chunks waiting for the disk at most; beyond that the receive loop waits for the
/// writer, so a slow disk costs memory only up to this bound (16 × 4 MiB).
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
    /// Where the chunks go.
    pub out: Out,
    pub wait: Option<Duration>,
    /// Only this session (the daemon names it in the task); otherwise the first announced.
    pub session: Option<u32>,
    /// Fetch missing chunks from the daemon's API rather than from the sender, so a
    /// receiver finishes even when the sender is gone (a server restart).
    pub fetch_from: Option<ApiFetch>,
    /// Where to tell what happens (the caller shows or logs it); None: nowhere.
    pub events: Option<mpsc::UnboundedSender<Event>>,
    /// Leave, rather than fetch the rest, once what is missing would come over unicast
    /// only (the stream is over, the receiver demoted, the sender silent): the caller
    /// finishes elsewhere (a BitTorrent swarm). Repairs during the stream are fetched.
    pub leave_missing: bool,
}

/// Where a receiver writes.
pub enum Out {
    /// A file or device, opened once the session's description is known; with `resume`,
    /// first checked for the chunks it holds already (only the others are received).
    Path { path: PathBuf, resume: bool },
    /// A target the caller opened and scanned (an agent's disk, filled by several sources):
    /// the session must carry the same chunks.
    Target(Arc<Target>),
}

/// The daemon's chunk endpoint: `GET {base}/api/v1/chunks/{hash}` with a bearer token.
#[derive(Debug, Clone)]
pub struct ApiFetch {
    pub base: String,
    pub token: String,
}

/// What happens in a receiver, for its caller to show (every one has a line as its
/// `Display`).
#[derive(Debug, Clone)]
pub enum Event {
    /// Listening on the group.
    Waiting {
        group: SocketAddrV4,
        iface: String,
        addr: std::net::Ipv4Addr,
    },
    /// A session was found and its description read.
    Found {
        session: u32,
        name: String,
        bytes: u64,
        chunks: usize,
        from: std::net::IpAddr,
    },
    /// Chunks the output held already.
    Kept(u64),
    Registered(u32),
    /// The sender dropped this receiver from the stream.
    Demoted,
    SenderSilent,
    /// The silent sender answered again: the rest comes by multicast again.
    SenderBack,
    /// The stream ran but gave nothing for [`proto::receiver::NO_PROGRESS`]: the rest over
    /// unicast.
    Stuck,
    /// The sender forgot this receiver: it registers again.
    Registering,
    /// The receiver leaves with chunks missing (`leave_missing`).
    Leaving {
        missing: usize,
    },
    /// Once a second.
    Stats(Stats),
}

/// A receiver's state, once a second.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// Payload bytes stored, of `payload_total`.
    pub payload_stored: u64,
    pub payload_total: u64,
    pub stored_chunks: u32,
    pub chunks: usize,
    pub rate_bps: u64,
    pub loss: f64,
    pub fetched_chunks: u32,
    pub demoted: bool,
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Waiting { group, iface, addr } => write!(
                f,
                "waiting for a session on {group} (or broadcast) via {iface} ({addr})"
            ),
            Self::Found {
                session,
                name,
                bytes,
                chunks,
                from,
            } => write!(
                f,
                "session {session:08x}: {name} ({} in {chunks} chunks) from {from}",
                fmt::bytes(*bytes)
            ),
            Self::Kept(n) => write!(f, "{n} chunk(s) already written: receiving the rest"),
            Self::Registered(id) => write!(f, "registered as receiver {id}"),
            Self::Demoted => f.write_str("demoted by the sender: finishing over unicast"),
            Self::SenderSilent => f.write_str("the sender went silent: finishing over unicast"),
            Self::SenderBack => f.write_str("the sender is back: receiving by multicast again"),
            Self::Stuck => write!(
                f,
                "nothing came for {} s though the sender answers: finishing over unicast",
                proto::receiver::NO_PROGRESS.as_secs()
            ),
            Self::Registering => {
                f.write_str("the sender no longer knows this receiver: registering again")
            }
            Self::Leaving { missing } => write!(
                f,
                "leaving the session with {missing} chunk(s) missing: the rest comes from elsewhere"
            ),
            Self::Stats(s) => write!(
                f,
                "received {} of {} ({:.0} %), {} , loss {:.1} %, {} chunk(s) over unicast{}",
                fmt::bytes(s.payload_stored),
                fmt::bytes(s.payload_total),
                100.0 * f64::from(s.stored_chunks) / s.chunks.max(1) as f64,
                fmt::rate(s.rate_bps as f64),
                100.0 * s.loss,
                s.fetched_chunks,
                if s.demoted { " (demoted)" } else { "" }
            ),
        }
    }
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

/// What a receiver got, and how.
#[derive(Debug, Clone)]
pub struct Received {
    pub session: u32,
    pub name: String,
    /// Plaintext bytes of the session.
    pub bytes: u64,
    pub seconds: f64,
    /// Chunks decoded from the stream and fetched over unicast by this receiver.
    pub multicast_chunks: u64,
    pub unicast_chunks: u64,
    /// Chunks the output held before.
    pub kept_chunks: u64,
    /// Chunks not stored (the receiver left, `leave_missing`); 0 when complete.
    pub missing_chunks: u64,
    pub datagrams: u64,
    /// Datagrams dropped as bad (authentication, format) or of another session.
    pub rejected_datagrams: u64,
    pub foreign_datagrams: u64,
    pub demoted: bool,
}

/// Runs a receiver to the end of its session.
pub async fn run(o: ReceiveOptions) -> anyhow::Result<Received> {
    // SAFETY: setpriority on the calling thread (who = 0) has no memory effects.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, RECEIVER_NICE) };
    let tell = |e: Event| {
        if let Some(tx) = &o.events {
            let _ = tx.send(e);
        }
    };
    let group = net::group_socket(&o.iface, o.group)?;
    let recv_buffer = net::recv_buffer(&group);
    tell(Event::Waiting {
        group: o.group,
        iface: o.iface.name.clone(),
        addr: o.iface.addr,
    });
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
    tell(Event::Found {
        session: desc.session,
        name: desc.name.clone(),
        bytes: total,
        chunks: desc.chunks.len(),
        from: sender_addr.ip(),
    });
    // Check the output before registering: a receiver that cannot write never joins.
    let target = match o.out {
        Out::Target(t) => {
            let ours = &t.sink().desc().chunks;
            ensure!(
                t.sink().desc().live == desc.live
                    && ours.len() == desc.chunks.len()
                    && ours
                        .iter()
                        .zip(&desc.chunks)
                        .all(|(a, b)| a.hash == b.hash && a.plain_len == b.plain_len),
                "session {:08x} carries other chunks than the task's image",
                desc.session
            );
            t
        }
        Out::Path { path, resume } => {
            let d = desc.clone();
            Arc::new(tokio::task::spawn_blocking(move || Target::open(&path, d, resume)).await??)
        }
    };
    if target.complete() {
        let t = target.clone();
        tokio::task::spawn_blocking(move || t.finish()).await??;
    }
    let held = target.held();
    let kept = held.iter().filter(|&&h| h).count() as u64;
    if kept > 0 {
        tell(Event::Kept(kept));
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
    let mut cfg = ReceiverConfig::new(desc.session, SessionKey::new(key), reg.receiver_id);
    cfg.rng_seed = u64::from(reg.receiver_id) ^ u64::from(u32::from(o.iface.addr));
    let mut rx = Receiver::new(cfg, layout, Instant::now());
    for (i, _) in held.iter().enumerate().filter(|(_, &h)| h) {
        rx.already_stored(i as u32);
    }
    tell(Event::Registered(reg.receiver_id));

    // The writer thread: checks, writes and reads back every chunk, then finishes the output.
    let (job_tx, job_rx) = std_mpsc::channel::<Job>();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(u32, bool, anyhow::Result<Outcome>)>();
    let n_chunks = desc.chunks.len();
    let writer = {
        let target = target.clone();
        std::thread::spawn(move || {
            // Writing is behind a queue and may lag; the receive loop and the feedback may not.
            // SAFETY: setpriority on the calling thread (tid 0 = self) has no memory effects.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, WRITER_NICE) };
            writer(&target, job_rx, done_tx)
        })
    };

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
                // A live stream's chunk has no hash yet to ask by: the server's copy of the
                // source's upload, by its place.
                Some(api) if desc.live => (
                    format!("{}/api/v1/agent/stream/{i}", api.base),
                    Some(api.token.clone()),
                ),
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
                    // A decoded chunk is never thrown away: with the writer this far behind,
                    // the loop waits for its next write. Datagrams that arrive meanwhile wait
                    // in the socket's buffer (what overflows is repaired as any loss);
                    // dropping the chunk instead would cost its whole decode again, and on
                    // a starved CPU that made receivers fall further behind.
                    while pending_writes >= MAX_PENDING_WRITES {
                        let (i, unicast, r) = done_rx.recv().await.context("the writer stopped")?;
                        on_written(&mut rx, &mut pending_writes, i, unicast, r)?;
                    }
                    pending_writes += 1;
                    job_tx
                        .send(Job {
                            index,
                            data,
                            unicast: false,
                        })
                        .context("the writer stopped")?;
                }
                ReceiverEvent::Demoted => {
                    demoted = true;
                    tell(Event::Demoted);
                }
                ReceiverEvent::SenderSilent => tell(Event::SenderSilent),
                ReceiverEvent::SenderBack => tell(Event::SenderBack),
                ReceiverEvent::Stuck => tell(Event::Stuck),
                ReceiverEvent::Unknown => {
                    tell(Event::Registering);
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
            tell(Event::Leaving {
                missing: rx.missing().len(),
            });
            break;
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            let s = rx.stats();
            tell(Event::Stats(Stats {
                payload_stored: s.stored_bytes,
                payload_total: desc.chunks.iter().map(|c| u64::from(c.len)).sum(),
                stored_chunks: s.stored_chunks,
                chunks: n_chunks,
                rate_bps: s.rate_bps,
                loss: s.loss,
                fetched_chunks: s.fetched_chunks,
                demoted,
            }));
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
    Ok(Received {
        session: desc.session,
        name: desc.name,
        bytes: total,
        seconds: t0.elapsed().as_secs_f64(),
        multicast_chunks: u64::from(s.decoded_chunks),
        unicast_chunks: u64::from(s.fetched_chunks),
        kept_chunks: kept,
        missing_chunks: rx.missing().len() as u64,
        datagrams: s.datagrams,
        rejected_datagrams: s.rejected,
        foreign_datagrams: s.foreign,
        demoted,
    })
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
    target: &Target,
    jobs: std_mpsc::Receiver<Job>,
    done: mpsc::UnboundedSender<(u32, bool, anyhow::Result<Outcome>)>,
) {
    for job in jobs {
        let via = if job.unicast {
            Via::Unicast
        } else {
            Via::Multicast
        };
        // Wrong data is fetched again; the output failing is fatal (`?`).
        let r = target
            .store(job.index as usize, &job.data, via)
            .and_then(|stored| match stored {
                Stored::Wrong(why) => Ok(Outcome::Bad(why)),
                Stored::Held => Ok(Outcome::Stored),
                Stored::Written { complete } => {
                    if complete {
                        // The last chunk: finish the output (GPT backup, sync) before the
                        // sender hears that this receiver is done.
                        target.finish()?;
                    }
                    Ok(Outcome::Stored)
                }
            });
        let fatal = r.is_err();
        if done.send((job.index, job.unicast, r)).is_err() || fatal {
            return;
        }
    }
}
