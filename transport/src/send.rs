//! `drover multicast send`: drives a [`proto::Sender`] with tokio, serves registration and
//! unicast chunks over HTTP.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use proto::{Destination, ReceiverState, Sender, SenderConfig, SenderEvent, SessionKey};
use rand::RngCore;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::fmt;
use crate::hex;
use crate::net::{self, Iface};
use crate::session::{Registration, Source};

/// The sending thread's nice value: a little ahead of ordinary work.
const SENDER_NICE: libc::c_int = -5;

/// What the sender was asked to do.
pub struct SendOptions {
    pub source: Source,
    pub name: String,
    pub iface: Iface,
    pub group: SocketAddrV4,
    pub broadcast: bool,
    pub ttl: u32,
    pub http_port: u16,
    /// Unicast rate while the multicast stream runs, bits/s.
    pub unicast_rate: u64,
    pub config: SenderConfig,
    /// Set when the session runs inside the daemon: it is steered through these rather than
    /// by a signal.
    pub hooks: Option<Hooks>,
    /// Where to tell what happens (the command line prints it); None: the log (`tracing`).
    pub events: Option<mpsc::UnboundedSender<Event>>,
}

/// What happens in a session, for its caller to show (every one has a line as its
/// `Display`). `at`: seconds since the session began.
#[derive(Debug, Clone)]
pub enum Event {
    /// The session announces.
    Announcing {
        session: u32,
        name: String,
        bytes: u64,
        chunks: usize,
        to: String,
        iface: String,
        addr: std::net::Ipv4Addr,
        registration: String,
    },
    /// It starts at a set time.
    StartingIn(Duration),
    /// It starts once this many receivers joined.
    WaitingFor(usize),
    Joined {
        at: f64,
        id: u32,
        from: std::net::IpAddr,
        late: bool,
    },
    Started {
        at: f64,
        receivers: usize,
    },
    Demoted {
        at: f64,
        id: u32,
        reason: String,
    },
    Dead {
        at: f64,
        id: u32,
    },
    Finished {
        at: f64,
        id: u32,
    },
    /// Told to start now (a signal, the daemon).
    StartingNow {
        session: u32,
    },
    Cancelled {
        session: u32,
    },
    /// Once a second (the command line's; the daemon shows its own).
    Progress(SendProgress),
}

/// The sender's state, once a second.
#[derive(Debug, Clone)]
pub struct SendProgress {
    pub at: f64,
    pub state: String,
    /// Share of the chunks sent at least once.
    pub sent: f64,
    pub bytes: u64,
    pub rate_bps: u64,
    pub repairs: u64,
    /// Receivers active, on unicast, done, dead.
    pub receivers: [usize; 4],
    pub mean_loss: f64,
    pub median_delay_ms: f64,
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Announcing {
                session,
                name,
                bytes,
                chunks,
                to,
                iface,
                addr,
                registration,
            } => write!(
                f,
                "session {session:08x}: {name} ({} in {chunks} chunks) to {to} from {iface} ({addr}), {registration}",
                fmt::bytes(*bytes)
            ),
            Self::StartingIn(d) => write!(
                f,
                "starting in {:.0} s; send SIGUSR1 to start now",
                d.as_secs_f64()
            ),
            Self::WaitingFor(n) => write!(f, "waiting for {n} receiver(s); send SIGUSR1 to start now"),
            Self::Joined { at, id, from, late } => write!(
                f,
                "[{at:7.2}s] receiver {id} joined from {from}{}",
                if *late {
                    " (late: catches up over unicast)"
                } else {
                    ""
                }
            ),
            Self::Started { at, receivers } => {
                write!(f, "[{at:7.2}s] started with {receivers} receiver(s)")
            }
            Self::Demoted { at, id, reason } => {
                write!(f, "[{at:7.2}s] receiver {id} demoted to unicast ({reason})")
            }
            Self::Dead { at, id } => write!(f, "[{at:7.2}s] receiver {id} went silent: declared dead"),
            Self::Finished { at, id } => write!(f, "[{at:7.2}s] receiver {id} finished"),
            Self::StartingNow { session } => write!(f, "session {session:08x}: starting now"),
            Self::Cancelled { session } => write!(f, "session {session:08x}: cancelled"),
            Self::Progress(p) => write!(
                f,
                "[{:7.2}s] {}: sent {:.0} % of {} at {}, repairs {}, receivers {} active {} unicast {} done {} dead, mean loss {:.1} %, median queue delay {:.0} ms",
                p.at,
                p.state,
                100.0 * p.sent,
                fmt::bytes(p.bytes),
                fmt::rate(p.rate_bps as f64),
                p.repairs,
                p.receivers[0],
                p.receivers[1],
                p.receivers[2],
                p.receivers[3],
                100.0 * p.mean_loss,
                p.median_delay_ms
            ),
        }
    }
}

/// How a session went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sent {
    /// Hex.
    pub session: String,
    pub name: String,
    pub bytes: u64,
    pub chunks: usize,
    pub seconds: f64,
    /// From the stream's start to its end.
    pub multicast_seconds: Option<f64>,
    pub receivers: usize,
    pub finished: usize,
    pub dead: Vec<u32>,
    pub demoted: Vec<u32>,
    pub datagrams: u64,
    pub source_symbols: u64,
    pub proactive_symbols: u64,
    pub repair_symbols: u64,
    pub wire_bytes: u64,
    pub send_errors: u64,
    /// Whether any receiver joined (a session nobody joined failed).
    #[serde(skip)]
    pub joined: bool,
}

impl std::fmt::Display for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.multicast_seconds.unwrap_or(self.seconds).max(1e-6);
        write!(
            f,
            "sent {} to {} receiver(s) in {:.1} s ({} goodput), {} finished, {} dead, {} demoted to unicast; repairs {:.1} % of source symbols",
            fmt::bytes(self.bytes),
            self.receivers,
            self.seconds,
            fmt::rate(self.bytes as f64 * 8.0 / secs),
            self.finished,
            self.dead.len(),
            self.demoted.len(),
            100.0 * (self.repair_symbols + self.proactive_symbols) as f64
                / self.source_symbols.max(1) as f64
        )
    }
}

/// What the daemon may tell a running session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Start the stream now, whoever joined.
    StartNow,
    /// One machine the start waits for will not join (it gets its image over unicast).
    OneFewer,
    /// Stop: receivers finish over unicast elsewhere.
    Cancel,
}

/// A daemon's session, once it announces: its id, and its HTTP routes (`GET /session`,
/// `POST /register`, `GET /chunks/{i}`), which the daemon serves behind its own API and task
/// tokens. A daemon's session opens no port of its own; its announcements say so with HTTP
/// port 0.
pub struct Ready {
    pub session: u32,
    pub routes: Router,
}

/// The daemon's handles on a session it runs.
pub struct Hooks {
    pub control: mpsc::Receiver<Control>,
    pub ready: oneshot::Sender<Ready>,
    /// Fired when the stream starts (the start policy was met, or told to).
    pub started: oneshot::Sender<()>,
}

enum Cmd {
    Register {
        from: SocketAddr,
        reply: oneshot::Sender<Option<u32>>,
    },
}

struct Http {
    description: Bytes,
    key_hex: String,
    source: Arc<Source>,
    cmds: mpsc::Sender<Cmd>,
    pacer: Pacer,
}

/// Paces unicast chunk downloads, all together, to a share of the link while the multicast
/// stream runs (so catching up late or demoted receivers never slows the group), and to the
/// whole rate once it is over.
struct Pacer {
    during_multicast_bps: u64,
    after_bps: u64,
    multicast_on: std::sync::atomic::AtomicBool,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Pacer {
    /// Waits for the turn to send `bytes`.
    async fn take(&self, bytes: usize) {
        let on = self.multicast_on.load(std::sync::atomic::Ordering::Relaxed);
        let bps = if on {
            self.during_multicast_bps
        } else {
            self.after_bps
        };
        let at = {
            let mut next = self.next.lock().await;
            let now = tokio::time::Instant::now();
            let at = (*next).max(now);
            *next = at + Duration::from_secs_f64(bytes as f64 * 8.0 / bps.max(1) as f64);
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

struct HttpError(StatusCode, String);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.0, Json(proto::api::ErrorBody { error: self.1 })).into_response()
    }
}

async fn session_handler(State(h): State<Arc<Http>>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        h.description.clone(),
    )
        .into_response()
}

async fn register(
    State(h): State<Arc<Http>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
) -> Result<Json<Registration>, HttpError> {
    let (tx, rx) = oneshot::channel();
    let gone = || HttpError(StatusCode::GONE, "the session is over".into());
    h.cmds
        .send(Cmd::Register { from, reply: tx })
        .await
        .map_err(|_| gone())?;
    let id = rx.await.map_err(|_| gone())?.ok_or_else(gone)?;
    Ok(Json(Registration {
        receiver_id: id,
        key: h.key_hex.clone(),
    }))
}

async fn chunk(
    State(h): State<Arc<Http>>,
    UrlPath(i): UrlPath<usize>,
) -> Result<Vec<u8>, HttpError> {
    if i >= h.source.chunk_count() {
        return Err(HttpError(StatusCode::NOT_FOUND, format!("no chunk {i}")));
    }
    let src = h.source.clone();
    let data = tokio::task::spawn_blocking(move || src.payload(i))
        .await
        .map_err(|e| HttpError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| HttpError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    h.pacer.take(data.len()).await;
    Ok(data)
}

/// Runs a session to its end.
pub async fn run(o: SendOptions) -> anyhow::Result<Sent> {
    // Every receiver waits on this thread's pacing: a late wake-up is rate lost for the
    // whole group (the token bucket holds 20 ms). Ahead of disk, HTTP and other work on a
    // busy server, when allowed (root or CAP_SYS_NICE); otherwise as it is.
    // SAFETY: setpriority on the calling thread (who = 0) has no memory effects.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, SENDER_NICE) };
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let session = rand::rngs::OsRng.next_u32();
    let source = Arc::new(o.source);
    let desc = {
        let src = source.clone();
        let name = o.name.clone();
        tokio::task::spawn_blocking(move || src.describe(session, &name))
            .await?
            .context("preparing the session")?
    };
    let layout = desc.layout()?;
    let total = desc.plain_bytes();

    let socket = net::sender_socket(&o.iface, o.ttl, 0)?;
    let daemon = o.hooks.is_some();
    // The command line's session opens its own registration port, to anyone (documented);
    // a daemon's is served through the daemon's API with task tokens.
    let listener = match daemon {
        true => None,
        false => Some(
            tokio::net::TcpListener::bind((o.iface.addr, o.http_port))
                .await
                .with_context(|| format!("listening on {}:{}", o.iface.addr, o.http_port))?,
        ),
    };
    let http_addr = listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let dest_group = if o.broadcast {
        SocketAddr::from((o.iface.broadcast(), o.group.port()))
    } else {
        SocketAddr::V4(o.group)
    };

    let (mut control, ready, mut on_start) = match o.hooks {
        Some(h) => (Some(h.control), Some(h.ready), Some(h.started)),
        None => (None, None, None),
    };
    let mut cfg = o.config;
    let rate_bps = cfg.rate_bps;
    cfg.session = session;
    cfg.key = SessionKey::new(key);
    cfg.name = o.name.clone();
    cfg.http_port = http_addr.map_or(0, |a| a.port());
    let (min_receivers, start_at) = (cfg.start.min_receivers, cfg.start.start_at);
    let mut sender = Sender::new(cfg, layout, Instant::now());

    let (cmd_tx, mut cmd_rx) = mpsc::channel(64);
    let http = Arc::new(Http {
        description: Bytes::from(serde_json::to_vec(&desc)?),
        key_hex: hex(&key),
        source: source.clone(),
        cmds: cmd_tx,
        pacer: Pacer {
            during_multicast_bps: o.unicast_rate,
            after_bps: rate_bps,
            multicast_on: true.into(),
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        },
    });
    let pacer_http = http.clone();
    let app = Router::new()
        .route("/session", get(session_handler))
        .route("/register", post(register))
        .route("/chunks/{i}", get(chunk))
        .with_state(http);
    let (server, routes) = match listener {
        Some(listener) => {
            let server = tokio::spawn(async move {
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .await
            });
            (Some(server), None)
        }
        None => (None, Some(app)),
    };
    let registration = match http_addr {
        Some(a) => format!("registration on http://{a}"),
        None => "registration through the daemon's API".to_string(),
    };

    let target = if o.broadcast {
        format!("broadcast {dest_group}")
    } else {
        format!("group {dest_group}")
    };
    let events = o.events;
    let tell = |e: Event| match &events {
        Some(tx) => {
            let _ = tx.send(e);
        }
        None => info!("{e}"),
    };
    tell(Event::Announcing {
        session,
        name: o.name.clone(),
        bytes: total,
        chunks: desc.chunks.len(),
        to: target,
        iface: o.iface.name.clone(),
        addr: o.iface.addr,
        registration,
    });
    match (min_receivers, start_at) {
        (_, Some(at)) if min_receivers == usize::MAX => tell(Event::StartingIn(
            at.saturating_duration_since(Instant::now()),
        )),
        (0, _) => {}
        (n, _) => tell(Event::WaitingFor(n)),
    }
    // The command line starts early on SIGUSR1; the daemon through its control channel.
    let mut start_signal = match daemon {
        false => Some(tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::user_defined1(),
        )?),
        true => None,
    };
    if let (Some(r), Some(routes)) = (ready, routes) {
        let _ = r.send(Ready { session, routes });
    }

    let (load_tx, mut load_rx) = mpsc::unbounded_channel::<(u32, anyhow::Result<Vec<u8>>)>();
    let mut buf = Vec::with_capacity(2048);
    let mut rbuf = vec![0u8; 65536];
    let t0 = Instant::now();
    let mut started_at = None;
    let mut multicast_done_at = None;
    let mut out = Outbox::default();
    let mut last_progress = Instant::now();
    let mut dead = Vec::new();
    let mut demoted = Vec::new();
    loop {
        let now = Instant::now();
        sender.handle_timeout(now);
        while let Some(i) = sender.poll_load() {
            let src = source.clone();
            let tx = load_tx.clone();
            tokio::task::spawn_blocking(move || {
                let _ = tx.send((i, src.payload(i as usize)));
            });
        }
        // Send what is due; the token bucket in the core paces it. Runs of same-sized group
        // datagrams go out together with segmentation offload.
        let mut burst = 0;
        while let Some(dest) = sender.poll_transmit(now, &mut buf) {
            match dest {
                Destination::Group if out.gso => {
                    if !out.fits(buf.len()) {
                        out.flush(&socket, dest_group).await;
                    }
                    out.push(&buf);
                }
                Destination::Group => out.send_one(&socket, &buf, dest_group).await,
                Destination::Unicast(a) => {
                    out.flush(&socket, dest_group).await;
                    out.send_one(&socket, &buf, a).await;
                }
            }
            burst += 1;
            if burst >= 256 {
                // Let the receive side and the timers run.
                break;
            }
        }
        out.flush(&socket, dest_group).await;
        let mut done = false;
        while let Some(e) = sender.poll_event() {
            match e {
                SenderEvent::Joined { id, addr, late } => tell(Event::Joined {
                    at: t0.elapsed().as_secs_f64(),
                    id,
                    from: addr.ip(),
                    late,
                }),
                SenderEvent::Started { receivers } => {
                    started_at = Some(Instant::now());
                    if let Some(tx) = on_start.take() {
                        let _ = tx.send(());
                    }
                    tell(Event::Started {
                        at: t0.elapsed().as_secs_f64(),
                        receivers,
                    });
                }
                SenderEvent::Demoted { id, reason } => {
                    demoted.push(id);
                    tell(Event::Demoted {
                        at: t0.elapsed().as_secs_f64(),
                        id,
                        reason: format!("{reason:?}"),
                    });
                }
                SenderEvent::Dead { id } => {
                    dead.push(id);
                    tell(Event::Dead {
                        at: t0.elapsed().as_secs_f64(),
                        id,
                    });
                }
                SenderEvent::Finished { id } => tell(Event::Finished {
                    at: t0.elapsed().as_secs_f64(),
                    id,
                }),
                SenderEvent::MulticastDone => {
                    multicast_done_at = Some(Instant::now());
                    pacer_http
                        .pacer
                        .multicast_on
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                }
                SenderEvent::Done => done = true,
                _ => {}
            }
        }
        if done {
            break;
        }
        if !daemon && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            tell(Event::Progress(progress(&sender, total, t0)));
        }
        let wake = sender
            .poll_timeout(now)
            .unwrap_or(now + Duration::from_millis(100));
        let wake = tokio::time::Instant::from_std(wake);
        if burst >= 256 {
            tokio::task::yield_now().await;
        }
        tokio::select! {
            biased;
            r = socket.recv_from(&mut rbuf) => match r {
                Ok((n, from)) => sender.handle_datagram(Instant::now(), from, &rbuf[..n]),
                Err(e) => warn!(error = %e, "receive failed"),
            },
            Some(cmd) = cmd_rx.recv() => match cmd {
                Cmd::Register { from, reply } => {
                    let id = sender.add_receiver(Instant::now(), from).ok();
                    let _ = reply.send(id);
                }
            },
            Some((i, payload)) = load_rx.recv() => {
                let payload = payload.with_context(|| format!("reading chunk {i}"))?;
                sender.provide(i, payload)?;
            }
            Some(()) = async {
                match start_signal.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                tell(Event::StartingNow { session });
                sender.start_now();
            }
            c = async {
                match control.as_mut() {
                    Some(c) => c.recv().await,
                    None => std::future::pending().await,
                }
            } => match c {
                Some(Control::StartNow) => {
                    tell(Event::StartingNow { session });
                    sender.start_now();
                }
                Some(Control::OneFewer) => sender.one_fewer(),
                // Cancelled, or the daemon dropped its handle: the session is over.
                Some(Control::Cancel) | None => {
                    tell(Event::Cancelled { session });
                    break;
                }
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    if let Some(server) = server {
        server.abort();
    }
    let elapsed = t0.elapsed();
    let streamed = started_at.map(|s| multicast_done_at.unwrap_or_else(Instant::now) - s);
    let st = sender.stats();
    let recv: Vec<_> = sender.receivers().collect();
    let finished = recv
        .iter()
        .filter(|r| r.state == ReceiverState::Finished)
        .count();
    let sent = Sent {
        session: format!("{session:08x}"),
        name: o.name,
        bytes: total,
        chunks: desc.chunks.len(),
        seconds: elapsed.as_secs_f64(),
        multicast_seconds: streamed.map(|d| d.as_secs_f64()),
        receivers: recv.len(),
        finished,
        dead,
        demoted,
        datagrams: st.datagrams,
        source_symbols: st.source_symbols,
        proactive_symbols: st.proactive_symbols,
        repair_symbols: st.repair_symbols,
        wire_bytes: st.wire_bytes,
        send_errors: out.errors,
        joined: sender.ever_joined(),
    };
    info!(
        finished,
        dead = sent.dead.len(),
        demoted = sent.demoted.len(),
        "session {session:08x} over: {sent}"
    );
    Ok(sent)
}

fn progress(s: &Sender, total: u64, t0: Instant) -> SendProgress {
    let st = s.stats();
    let chunks = s.layout().chunks().max(1);
    let mut receivers = [0usize; 4];
    let mut loss = 0.0;
    let mut n = 0;
    let mut delays = Vec::new();
    for r in s.receivers() {
        receivers[r.state as usize] += 1;
        if r.state == ReceiverState::Active {
            loss += r.loss;
            n += 1;
            delays.push(r.delay_us);
        }
    }
    delays.sort_unstable();
    SendProgress {
        at: t0.elapsed().as_secs_f64(),
        state: format!("{:?}", s.state()),
        sent: st.frontier as f64 / chunks as f64,
        bytes: total,
        rate_bps: st.rate_bps,
        repairs: st.repair_symbols + st.proactive_symbols,
        receivers,
        mean_loss: if n > 0 { loss / n as f64 } else { 0.0 },
        median_delay_ms: delays
            .get(delays.len() / 2)
            .map_or(0.0, |&d| d as f64 / 1000.0),
    }
}

/// Group datagrams gathered for one segmentation-offload send (see [`net::send_segments`]),
/// and the send errors so far.
struct Outbox {
    buf: Vec<u8>,
    segment: usize,
    count: usize,
    /// The last datagram was shorter than the segment size: nothing may follow it.
    closed: bool,
    /// Segmentation offload works on this route (until a send says otherwise).
    gso: bool,
    errors: u64,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            buf: Vec::with_capacity(net::MAX_SEGMENTS * 1500),
            segment: 0,
            count: 0,
            closed: false,
            gso: true,
            errors: 0,
        }
    }
}

impl Outbox {
    /// Whether a datagram of `len` bytes may join the gathered ones.
    fn fits(&self, len: usize) -> bool {
        self.count == 0 || (!self.closed && len <= self.segment && self.count < net::MAX_SEGMENTS)
    }

    fn push(&mut self, d: &[u8]) {
        if self.count == 0 {
            self.segment = d.len();
        }
        self.closed = d.len() < self.segment;
        self.buf.extend_from_slice(d);
        self.count += 1;
    }

    async fn flush(&mut self, socket: &UdpSocket, to: SocketAddr) {
        match self.count {
            0 => return,
            1 => {
                let d = std::mem::take(&mut self.buf);
                self.send_one(socket, &d, to).await;
                self.buf = d;
            }
            _ => match net::send_segments(socket, &self.buf, self.segment, to).await {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {
                    // The route cannot segment (no checksum offload, an old kernel):
                    // datagram by datagram from now on.
                    warn!(error = %e, "segmentation offload refused; sending datagrams singly");
                    self.gso = false;
                    let d = std::mem::take(&mut self.buf);
                    for one in d.chunks(self.segment) {
                        self.send_one(socket, one, to).await;
                    }
                    self.buf = d;
                }
                Err(e) => self.failed(&e, to),
            },
        }
        self.buf.clear();
        self.count = 0;
        self.closed = false;
    }

    async fn send_one(&mut self, socket: &UdpSocket, d: &[u8], to: SocketAddr) {
        if let Err(e) = socket.send_to(d, to).await {
            self.failed(&e, to);
        }
    }

    fn failed(&mut self, e: &std::io::Error, to: SocketAddr) {
        self.errors += 1;
        if self.errors.is_power_of_two() {
            warn!(error = %e, %to, count = self.errors, "send failed");
        }
    }
}
