//! The sending side of a multicast session.
//!
//! The sender streams chunks in order. Each chunk is cut into source blocks
//! ([`crate::layout`]); a block's source symbols go out once, followed by proactive repair
//! symbols ([`Fec`]: by default as many as the lossiest receiver's reported loss calls for,
//! so most blocks decode without a repair round), with the blocks of a chunk interleaved so that a burst of loss hits several
//! blocks a little rather than one block a lot. Chunks stay in a *window* until every active
//! receiver has them; receivers report, per incomplete block, how many symbols they still
//! lack and the highest symbol id they saw, and the sender queues that many *fresh* repair
//! symbols for the neediest, minus those already on their way. One repair symbol heals a
//! different loss at every receiver. Repairs alternate with new data, so the stream never
//! stops for a repair round.
//!
//! Nobody holds the group back: a receiver whose loss exceeds
//! [`SenderConfig::max_receiver_loss`], whose rate is under
//! [`SenderConfig::min_receiver_rate_bps`], or who alone keeps the window from moving for
//! [`SenderConfig::stall_timeout`], is *demoted*: its feedback stops steering repairs, and it
//! fetches what it lacks over unicast. A receiver silent for [`SenderConfig::dead_after`] is
//! declared dead. Chunks that left the window are served over unicast too, which is how a
//! receiver that joins late catches up.
//!
//! The send rate is a token bucket ([`SenderConfig::rate_bps`]) that backs off when the
//! median receiver's queueing delay grows (congestion) and creeps back up otherwise. Random
//! loss alone does not slow it down: that is what the repair symbols are for.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use raptorq::{EncodingPacket, SourceBlockEncoder};
use tracing::{debug, info};

pub use crate::fec::Fec;
use crate::layout::{Block, Layout};
use crate::rate::{TokenBucket, WIRE_OVERHEAD};
use crate::wire::{
    self, Announce, DataHeader, Feedback, Kind, ReceiverStatus, Reply, SenderState, SessionKey,
    FEEDBACK_DONE, FLAG_REPAIR,
};

/// Default send rate: 900 Mbit/s, a gigabit link with room for other traffic.
pub const DEFAULT_RATE_BPS: u64 = 900_000_000;
/// Default least proactive repair share: 0.5 % extra symbols per block, so that a stray lost
/// datagram on a lossless network costs no repair round; with [`Fec::Auto`] the share grows
/// with the loss the receivers report.
pub const DEFAULT_FEC_OVERHEAD: f64 = 0.005;
/// Default window: 32 MiB of chunks in flight. A receiver holds at most this much undecoded;
/// at 1 Gbit/s it is a quarter-second, several feedback rounds.
pub const DEFAULT_WINDOW_BYTES: u64 = 32 << 20;
/// Default silence after which a receiver is declared dead.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(10);
/// Default loss (fraction) above which a receiver is demoted to unicast. A receiver losing
/// half of the stream costs the group more in repairs than unicast costs it.
pub const DEFAULT_MAX_RECEIVER_LOSS: f64 = 0.5;
/// Default time one receiver may keep the window from moving before it is demoted. A
/// receiver with heavy but healthy loss needs a few repair rounds of a round trip each.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Default silence after which a receiver stops steering the group (it is demoted; it is
/// declared dead only after [`DEFAULT_DEAD_AFTER`]): thirty feedback intervals, so that a
/// machine busy for a moment (or a burst of lost feedback) does not lose the group.
pub const DEFAULT_SILENT_AFTER: Duration = Duration::from_secs(3);
/// Default queueing delay (median over receivers) above which the rate backs off.
pub const DEFAULT_DELAY_TARGET: Duration = Duration::from_millis(40);
/// Default interval of session announces.
pub const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_millis(500);

/// How often the sender re-evaluates receivers, the window and the rate.
const TICK: Duration = Duration::from_millis(50);
/// The rate backs off at most this often: a queue takes a while to drain after a decrease.
const DECREASE_INTERVAL: Duration = Duration::from_millis(500);
/// Payloads the sender asks for ahead of the chunk it is sending.
const LOOKAHEAD: usize = 2;
/// How long a repair symbol is presumed on its way, beyond twice the receiver's queueing delay.
const MIN_FLIGHT: Duration = Duration::from_millis(20);
/// A receiver's reports are ignored for demotion this long after it starts receiving.
const SETTLE: Duration = Duration::from_secs(1);
/// Repairs one block may be assigned, as a multiple of its source symbols, so that a broken
/// receiver cannot make the sender stream one block forever.
const MAX_REPAIR_FACTOR: u32 = 4;

/// When a session starts.
#[derive(Debug, Clone, Default)]
pub struct StartPolicy {
    /// Start once this many receivers registered (0: at once).
    pub min_receivers: usize,
    /// Start this long after the session was created, however many joined.
    pub max_wait: Option<Duration>,
    /// Start at this time, however many joined.
    pub start_at: Option<Instant>,
}

/// A sender's settings.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Session id (random per session).
    pub session: u32,
    /// Session key (random per session, handed out at registration).
    pub key: SessionKey,
    /// Name shown in announces.
    pub name: String,
    /// TCP port of the sender's HTTP service, announced.
    pub http_port: u16,
    /// Highest send rate, bits per second on the wire.
    pub rate_bps: u64,
    /// The rate never backs off below this.
    pub min_rate_bps: u64,
    /// Proactive repair symbols per source symbol.
    pub fec: Fec,
    /// Bytes of chunks in flight at most (at least two chunks).
    pub window_bytes: u64,
    /// When to start.
    pub start: StartPolicy,
    /// Announce interval.
    pub announce_interval: Duration,
    /// Silence after which a receiver is demoted.
    pub silent_after: Duration,
    /// Silence after which a receiver is dead.
    pub dead_after: Duration,
    /// Loss above which a receiver is demoted.
    pub max_receiver_loss: f64,
    /// Receive rate under which a receiver is demoted (0: no floor).
    pub min_receiver_rate_bps: u64,
    /// Time one receiver may hold the window before it is demoted.
    pub stall_timeout: Duration,
    /// Median queueing delay above which the rate backs off.
    pub delay_target: Duration,
}

impl SenderConfig {
    /// Settings with every default, for a session with this id and key.
    pub fn new(session: u32, key: SessionKey) -> Self {
        Self {
            session,
            key,
            name: String::new(),
            http_port: 0,
            rate_bps: DEFAULT_RATE_BPS,
            min_rate_bps: DEFAULT_RATE_BPS / 10,
            fec: Fec::Auto {
                floor: DEFAULT_FEC_OVERHEAD,
            },
            window_bytes: DEFAULT_WINDOW_BYTES,
            start: StartPolicy {
                min_receivers: 1,
                ..StartPolicy::default()
            },
            announce_interval: DEFAULT_ANNOUNCE_INTERVAL,
            silent_after: DEFAULT_SILENT_AFTER,
            dead_after: DEFAULT_DEAD_AFTER,
            max_receiver_loss: DEFAULT_MAX_RECEIVER_LOSS,
            min_receiver_rate_bps: 0,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            delay_target: DEFAULT_DELAY_TARGET,
        }
    }
}

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The session's group (or broadcast address).
    Group,
    /// One receiver.
    Unicast(SocketAddr),
}

/// Why a receiver was demoted.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum DemoteReason {
    /// Its loss was above the limit.
    Loss(f64),
    /// Its receive rate was under the floor (bits/s).
    Rate(u64),
    /// It kept the window from moving.
    Stalled,
    /// Its feedback stopped.
    Silent,
}

/// Something the driver should know.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SenderEvent {
    /// A receiver registered.
    Joined {
        /// Its id.
        id: u32,
        /// Where it registered from.
        addr: SocketAddr,
        /// It joined after the stream started.
        late: bool,
    },
    /// The stream started.
    Started {
        /// Receivers registered at the start.
        receivers: usize,
    },
    /// A receiver was dropped from the group's pacing; it finishes over unicast.
    Demoted {
        /// Its id.
        id: u32,
        /// Why.
        reason: DemoteReason,
    },
    /// A receiver went silent.
    Dead {
        /// Its id.
        id: u32,
    },
    /// A receiver has everything, verified.
    Finished {
        /// Its id.
        id: u32,
    },
    /// Every chunk left the window: multicast is over, unicast serves the rest.
    MulticastDone,
    /// Every receiver finished or is dead.
    Done,
}

/// Why a call into the sender was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// A payload was provided for a chunk the sender did not ask for.
    #[error("chunk {0} was not requested")]
    NotRequested(u32),
    /// A payload has the wrong length.
    #[error("chunk {chunk} has {got} bytes, the session says {want}")]
    ChunkLength {
        /// The chunk.
        chunk: u32,
        /// Its length.
        got: usize,
        /// The length in the layout.
        want: usize,
    },
    /// The session no longer takes receivers.
    #[error("the session is over")]
    Over,
}

/// What a receiver is to the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverState {
    /// In the group.
    Active,
    /// Finishing over unicast.
    Demoted,
    /// Done.
    Finished,
    /// Silent too long.
    Dead,
}

/// A receiver as the sender sees it.
#[derive(Debug, Clone)]
pub struct ReceiverInfo {
    /// Its id.
    pub id: u32,
    /// Its address.
    pub addr: SocketAddr,
    /// Its state.
    pub state: ReceiverState,
    /// Chunks below this one it has.
    pub first_missing: u32,
    /// Its reported loss (fraction).
    pub loss: f64,
    /// Its reported receive rate, bits/s.
    pub rate_bps: u64,
    /// It joined after the start.
    pub late: bool,
    /// Its reported queueing delay, microseconds.
    pub delay_us: u32,
    last_heard: Instant,
    active_since: Option<Instant>,
    seen_frontier: u32,
    needs: Vec<(u32, u16)>,
    feedback_at: Option<Instant>,
}

impl ReceiverInfo {
    fn has(&self, chunk: u32) -> bool {
        chunk < self.first_missing
            || (chunk < self.seen_frontier && !self.needs.iter().any(|&(c, _)| c == chunk))
    }

    fn live(&self) -> bool {
        matches!(self.state, ReceiverState::Active | ReceiverState::Demoted)
    }
}

/// Counters of a sender.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SenderStats {
    /// Data datagrams sent.
    pub datagrams: u64,
    /// Source symbols sent.
    pub source_symbols: u64,
    /// Proactive repair symbols sent.
    pub proactive_symbols: u64,
    /// Repair symbols sent in answer to feedback.
    pub repair_symbols: u64,
    /// Bytes on the wire (with IP, UDP and Ethernet headers).
    pub wire_bytes: u64,
    /// Feedback datagrams accepted.
    pub feedback: u64,
    /// Datagrams dropped: another session, a bad tag, malformed, or from an unknown receiver.
    pub dropped: u64,
    /// The current send rate, bits/s.
    pub rate_bps: u64,
    /// Lowest chunk still in the window.
    pub window_base: u32,
    /// Chunks sent once.
    pub frontier: u32,
}

struct BlockTx {
    block: Block,
    encoder: Option<SourceBlockEncoder>,
    /// Proactive repairs in the first pass.
    proactive: u32,
    /// Repair symbols committed to.
    assigned: u32,
    /// Repair symbols sent.
    sent: u32,
    /// Data sequence numbers and send times of the repair symbols sent, ascending.
    sent_seqs: Vec<(u64, Instant)>,
    queued: bool,
    /// Rounds of [`MAX_REPAIR_FACTOR`] more repairs granted because the whole group waited
    /// on this block (see [`Sender::check_stall`]).
    rounds: u32,
}

impl BlockTx {
    /// Repairs this block may be assigned in all.
    fn cap(&self) -> u32 {
        self.block.symbols * (MAX_REPAIR_FACTOR + self.rounds) + 16
    }
}

struct ChunkTx {
    index: u32,
    payload: Vec<u8>,
    blocks: Vec<BlockTx>,
    /// First-pass position: symbol step and block.
    step: u32,
    next_block: usize,
    first_pass_done: bool,
}

impl ChunkTx {
    fn steps(&self) -> u32 {
        self.blocks
            .iter()
            .map(|b| b.block.symbols + b.proactive)
            .max()
            .unwrap_or(0)
    }
}

/// The sending side of one multicast session. See the module docs.
pub struct Sender {
    cfg: SenderConfig,
    layout: Layout,
    created: Instant,
    epoch: Instant,
    state: SenderState,
    started_at: Option<Instant>,
    start_now: bool,
    receivers: BTreeMap<u32, ReceiverInfo>,
    next_id: u32,
    window: VecDeque<ChunkTx>,
    base: u32,
    frontier: u32,
    next_load: u32,
    loaded: BTreeMap<u32, Vec<u8>>,
    repairs: VecDeque<(u32, usize)>,
    prefer_repair: bool,
    stalled_since: Option<Instant>,
    bucket: TokenBucket,
    rate_bps: u64,
    last_decrease: Option<Instant>,
    next_tick: Instant,
    next_announce: Instant,
    replies: VecDeque<(SocketAddr, Reply)>,
    events: VecDeque<SenderEvent>,
    seq: u64,
    stats: SenderStats,
    multicast_done: bool,
    ever_joined: bool,
}

impl Sender {
    /// A session over `layout`, created at `now`.
    pub fn new(cfg: SenderConfig, layout: Layout, now: Instant) -> Self {
        let rate_bps = cfg.rate_bps.max(1);
        Self {
            bucket: TokenBucket::new(rate_bps),
            rate_bps,
            layout,
            created: now,
            epoch: now,
            state: SenderState::Waiting,
            started_at: None,
            start_now: false,
            receivers: BTreeMap::new(),
            next_id: 1,
            window: VecDeque::new(),
            base: 0,
            frontier: 0,
            next_load: 0,
            loaded: BTreeMap::new(),
            repairs: VecDeque::new(),
            prefer_repair: false,
            stalled_since: None,
            last_decrease: None,
            next_tick: now,
            next_announce: now,
            replies: VecDeque::new(),
            events: VecDeque::new(),
            seq: 0,
            stats: SenderStats::default(),
            multicast_done: false,
            ever_joined: false,
            cfg,
        }
    }

    /// The session's layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The session's state.
    pub fn state(&self) -> SenderState {
        self.state
    }

    /// Counters.
    pub fn stats(&self) -> SenderStats {
        SenderStats {
            rate_bps: self.rate_bps,
            window_base: self.base,
            frontier: self.frontier,
            ..self.stats.clone()
        }
    }

    /// The receivers, by id.
    pub fn receivers(&self) -> impl Iterator<Item = &ReceiverInfo> {
        self.receivers.values()
    }

    /// Registers a receiver that asked from `addr`; returns its id.
    pub fn add_receiver(&mut self, now: Instant, addr: SocketAddr) -> Result<u32, SessionError> {
        if self.state == SenderState::Done {
            return Err(SessionError::Over);
        }
        let id = self.next_id;
        self.next_id += 1;
        let late = self.state != SenderState::Waiting;
        self.receivers.insert(
            id,
            ReceiverInfo {
                id,
                addr,
                state: ReceiverState::Active,
                first_missing: 0,
                loss: 0.0,
                rate_bps: 0,
                late,
                last_heard: now,
                active_since: self.started_at.map(|_| now),
                seen_frontier: 0,
                delay_us: 0,
                needs: Vec::new(),
                feedback_at: None,
            },
        );
        self.ever_joined = true;
        info!(id, %addr, late, "receiver joined");
        self.events
            .push_back(SenderEvent::Joined { id, addr, late });
        Ok(id)
    }

    /// Starts the stream now, whoever joined.
    pub fn start_now(&mut self) {
        self.start_now = true;
    }

    /// One of the receivers the start waits for will not join (its machine gets its data
    /// elsewhere): the stream starts once one fewer joined (never waiting for none).
    pub fn one_fewer(&mut self) {
        let m = &mut self.cfg.start.min_receivers;
        if *m != usize::MAX {
            *m = m.saturating_sub(1).max(1);
        }
    }

    /// The next chunk whose payload the driver should load and [`provide`](Self::provide).
    pub fn poll_load(&mut self) -> Option<u32> {
        if self.next_load >= self.layout.chunks() {
            return None;
        }
        // Requested but not provided yet, provided but not started, and in its first pass.
        let requested = (self.next_load - self.base) as usize;
        let started = self.window.iter().filter(|c| c.first_pass_done).count();
        let ahead = requested.saturating_sub(started);
        if ahead > LOOKAHEAD {
            return None;
        }
        let i = self.next_load;
        self.next_load += 1;
        Some(i)
    }

    /// The payload of chunk `index`, as requested by [`poll_load`](Self::poll_load).
    pub fn provide(&mut self, index: u32, payload: Vec<u8>) -> Result<(), SessionError> {
        if index >= self.next_load || index < self.base || self.loaded.contains_key(&index) {
            return Err(SessionError::NotRequested(index));
        }
        let want = self.layout.chunk_len(index);
        if payload.len() != want {
            return Err(SessionError::ChunkLength {
                chunk: index,
                got: payload.len(),
                want,
            });
        }
        self.loaded.insert(index, payload);
        Ok(())
    }

    /// Handles a datagram that arrived on the control socket from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        match wire::peek(datagram) {
            Ok((Kind::Feedback, _)) => {}
            // Our own announces and data looped back, or another sender's: not for us.
            Ok(_) | Err(_) => {
                self.stats.dropped += 1;
                return;
            }
        }
        let fb = match Feedback::decode(datagram, self.cfg.session, &self.cfg.key) {
            Ok(fb) => fb,
            Err(e) => {
                debug!(%from, error = %e, "feedback dropped");
                self.stats.dropped += 1;
                return;
            }
        };
        self.stats.feedback += 1;
        let status = self.on_feedback(now, from, &fb);
        self.replies.push_back((
            from,
            Reply {
                receiver: fb.receiver,
                seq: fb.seq,
                status,
                state: self.state,
                window_base: self.base,
                frontier: self.frontier,
            },
        ));
    }

    fn on_feedback(&mut self, now: Instant, from: SocketAddr, fb: &Feedback) -> ReceiverStatus {
        let running = self.state == SenderState::Running;
        let cfg = &self.cfg;
        let Some(r) = self.receivers.get_mut(&fb.receiver) else {
            self.stats.dropped += 1;
            return ReceiverStatus::Unknown;
        };
        match r.state {
            ReceiverState::Dead => return ReceiverStatus::Unknown,
            ReceiverState::Finished => return ReceiverStatus::Finished,
            ReceiverState::Active | ReceiverState::Demoted => {}
        }
        r.last_heard = now;
        r.addr = from;
        r.feedback_at = Some(now);
        r.first_missing = fb.first_missing.min(self.layout.chunks());
        r.seen_frontier = fb.seen_frontier.min(self.frontier);
        r.loss = fb.loss_ppm.min(1_000_000) as f64 / 1e6;
        r.rate_bps = fb.rate_kbit as u64 * 1000;
        r.delay_us = fb.delay_us;
        if fb.flags & FEEDBACK_DONE != 0 {
            r.state = ReceiverState::Finished;
            r.needs.clear();
            info!(id = r.id, "receiver finished");
            self.events.push_back(SenderEvent::Finished { id: r.id });
            return ReceiverStatus::Finished;
        }
        if r.state == ReceiverState::Demoted {
            return ReceiverStatus::Demoted;
        }
        r.needs = fb.needs.iter().map(|n| (n.chunk, n.block)).collect();
        let settled = r.active_since.is_some_and(|t| now >= t + SETTLE);
        let demote = if !running || !settled {
            None
        } else if r.loss > cfg.max_receiver_loss {
            Some(DemoteReason::Loss(r.loss))
        } else if cfg.min_receiver_rate_bps > 0 && r.rate_bps < cfg.min_receiver_rate_bps {
            Some(DemoteReason::Rate(r.rate_bps))
        } else {
            None
        };
        if let Some(reason) = demote {
            let id = r.id;
            if self.is_minority(1) {
                self.demote(id, reason);
                return ReceiverStatus::Demoted;
            }
            // A quarter of the group is demoted already: this one's trouble is the group's
            // (the sender or the network too fast for it), so the stream slows down.
            self.slow_down(now, "many receivers losing");
        }
        let minority = self.is_minority(1);
        let cfg = &self.cfg;
        let Some(r) = self.receivers.get_mut(&fb.receiver) else {
            return ReceiverStatus::Unknown;
        };
        if r.loss > cfg.max_receiver_loss && minority {
            // About to be demoted: repairs for it would cost the group more than they help.
            // (Past the group's quarter it will not be: it gets its repairs like anyone, or
            // the window would wait on it for good.)
            self.release_window(now);
            return ReceiverStatus::Active;
        }
        // Queue fresh repairs for what this receiver lacks, minus what is already on its way.
        let loss = r.loss.min(0.5);
        let flight = MIN_FLIGHT + Duration::from_micros(2 * r.delay_us as u64);
        let high = if fb.high_seq == u32::MAX {
            u64::MAX
        } else {
            widen(fb.high_seq, self.seq)
        };
        for n in &fb.needs {
            if n.need == 0 || n.chunk < self.base || n.chunk >= self.frontier {
                continue;
            }
            let c = &mut self.window[(n.chunk - self.base) as usize];
            let Some(b) = c.blocks.get_mut(n.block as usize) else {
                continue;
            };
            // Repairs not sent yet, and those sent after the last datagram the receiver got,
            // may still reach it; the others arrived or were lost, and its need counts them.
            // A repair sent longer ago than a round trip (with this receiver's queueing
            // delay) that it has not reported is lost too: at the end of the stream nothing
            // newer arrives to tell.
            let horizon = now.checked_sub(flight).unwrap_or(now);
            let after = b.sent_seqs.partition_point(|&(s, _)| s <= high);
            let recent = b.sent_seqs[after..]
                .iter()
                .filter(|&&(_, at)| at > horizon)
                .count();
            let in_flight = (b.assigned - b.sent) + recent as u32;
            let need = n.need as u32;
            let want = need + (need as f64 * loss * 1.5).ceil() as u32 + 1;
            let cap = b.cap();
            if want > in_flight && b.assigned < cap {
                b.assigned = (b.assigned + want - in_flight).min(cap);
                if !b.queued {
                    b.queued = true;
                    self.repairs.push_back((n.chunk, n.block as usize));
                }
            }
        }
        self.release_window(now);
        ReceiverStatus::Active
    }

    fn demote(&mut self, id: u32, reason: DemoteReason) {
        if let Some(r) = self.receivers.get_mut(&id) {
            if r.state == ReceiverState::Active {
                r.state = ReceiverState::Demoted;
                r.needs.clear();
                info!(id, ?reason, "receiver demoted to unicast");
                self.events.push_back(SenderEvent::Demoted { id, reason });
            }
        }
    }

    /// Drops chunks every active receiver has from the front of the window.
    fn release_window(&mut self, now: Instant) {
        let before = self.base;
        while self.base < self.frontier {
            let base = self.base;
            if self
                .receivers
                .values()
                .any(|r| r.state == ReceiverState::Active && !r.has(base))
            {
                break;
            }
            self.window.pop_front();
            self.base += 1;
        }
        if self.base != before {
            self.stalled_since = None;
            self.repairs.retain(|&(c, _)| c >= self.base);
        }
        if self.base == self.layout.chunks()
            && self.frontier == self.layout.chunks()
            && self.state == SenderState::Running
        {
            self.state = SenderState::Draining;
            self.multicast_done = true;
            info!("multicast done");
            self.events.push_back(SenderEvent::MulticastDone);
        }
        let _ = now;
    }

    /// Handles timers; call when [`poll_timeout`](Self::poll_timeout) passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + TICK;
        match self.state {
            SenderState::Waiting => self.maybe_start(now),
            SenderState::Running | SenderState::Draining => {}
            SenderState::Done => return,
        }
        // Declare silent receivers dead.
        let dead: Vec<u32> = self
            .receivers
            .values()
            .filter(|r| {
                r.live() && now.saturating_duration_since(r.last_heard) > self.cfg.dead_after
            })
            .map(|r| r.id)
            .collect();
        for id in dead {
            if let Some(r) = self.receivers.get_mut(&id) {
                r.state = ReceiverState::Dead;
                r.needs.clear();
            }
            info!(id, "receiver declared dead");
            self.events.push_back(SenderEvent::Dead { id });
        }
        if self.state == SenderState::Running {
            let silent: Vec<u32> = self
                .receivers
                .values()
                .filter(|r| {
                    r.state == ReceiverState::Active
                        && now.saturating_duration_since(r.last_heard) > self.cfg.silent_after
                })
                .map(|r| r.id)
                .collect();
            // Most of the group silent at once is not their fault: the sender itself was
            // starved of CPU, or the network failed. Demoting them all would turn the session
            // into unicast; the dead rule still catches receivers that are really gone.
            if self.is_minority(silent.len()) {
                for id in silent {
                    self.demote(id, DemoteReason::Silent);
                }
            }
            self.check_stall(now);
            self.control_rate(now);
            self.release_window(now);
        }
        if matches!(self.state, SenderState::Running | SenderState::Draining)
            && self.multicast_done
            && !self.receivers.values().any(ReceiverInfo::live)
        {
            self.state = SenderState::Done;
            info!("session done");
            self.events.push_back(SenderEvent::Done);
        }
    }

    fn maybe_start(&mut self, now: Instant) {
        let joined = self.receivers.values().filter(|r| r.live()).count();
        let p = &self.cfg.start;
        let go = self.start_now
            || joined >= p.min_receivers
            || p.max_wait.is_some_and(|w| now >= self.created + w)
            || p.start_at.is_some_and(|t| now >= t);
        if !go {
            return;
        }
        self.state = SenderState::Running;
        self.started_at = Some(now);
        self.epoch = now;
        for r in self.receivers.values_mut() {
            r.active_since = Some(now);
        }
        info!(receivers = joined, "stream started");
        self.events
            .push_back(SenderEvent::Started { receivers: joined });
        if self.layout.chunks() == 0 {
            self.multicast_done = true;
            self.state = SenderState::Draining;
            self.events.push_back(SenderEvent::MulticastDone);
        }
    }

    fn window_full(&self) -> bool {
        let bytes: u64 = self.window.iter().map(|c| c.payload.len() as u64).sum();
        self.window.len() >= 2 && bytes >= self.cfg.window_bytes
    }

    /// The next datagram to send, written into `buf`, and where it goes.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Destination> {
        if let Some((to, reply)) = self.replies.pop_front() {
            reply.encode(self.cfg.session, &self.cfg.key, buf);
            return Some(Destination::Unicast(to));
        }
        if now >= self.next_announce && self.state != SenderState::Done {
            // While it waits, the session is announced five times as often: a receiver that
            // missed one announce (a lost datagram) does not hold up the start for long.
            self.next_announce = now
                + if self.state == SenderState::Waiting {
                    self.cfg.announce_interval / 5
                } else {
                    self.cfg.announce_interval
                };
            self.announce().encode(buf);
            return Some(Destination::Group);
        }
        if self.state != SenderState::Running || !self.bucket.ready(now) {
            return None;
        }
        let time_us = now.saturating_duration_since(self.epoch).as_micros() as u32;
        let sent = self.next_symbol(now, time_us, buf);
        if sent {
            self.stats.datagrams += 1;
            self.stats.wire_bytes += (buf.len() + WIRE_OVERHEAD) as u64;
            self.bucket.take(buf.len() + WIRE_OVERHEAD);
            Some(Destination::Group)
        } else {
            None
        }
    }

    fn announce(&self) -> Announce {
        Announce {
            session: self.cfg.session,
            http_port: self.cfg.http_port,
            state: self.state,
            receivers: self
                .receivers
                .values()
                .filter(|r| r.live())
                .count()
                .min(u16::MAX as usize) as u16,
            min_receivers: self.cfg.start.min_receivers.min(u16::MAX as usize) as u16,
            chunks: self.layout.chunks(),
            bytes: self.layout.total_bytes(),
            name: self.cfg.name.clone(),
        }
    }

    /// The highest loss an active receiver reported (demotion takes care of those above the
    /// limit).
    fn group_loss(&self) -> f64 {
        self.receivers
            .values()
            .filter(|r| r.state == ReceiverState::Active && r.feedback_at.is_some())
            .map(|r| r.loss)
            .filter(|&l| l <= self.cfg.max_receiver_loss)
            .fold(0.0, f64::max)
    }

    /// Whether a data datagram could go if the bucket allowed it.
    fn has_data(&self) -> bool {
        if self.state != SenderState::Running {
            return false;
        }
        if !self.repairs.is_empty() {
            return true;
        }
        match self.window.back() {
            Some(c) if !c.first_pass_done => true,
            _ => !self.window_full() && self.loaded.contains_key(&self.frontier),
        }
    }

    /// Picks and writes the next symbol: repairs and new data alternate.
    fn next_symbol(&mut self, now: Instant, time_us: u32, buf: &mut Vec<u8>) -> bool {
        self.prefer_repair = !self.prefer_repair;
        if self.prefer_repair && self.next_repair(now, time_us, buf) {
            return true;
        }
        self.next_fresh(now, time_us, buf) || self.next_repair(now, time_us, buf)
    }

    fn next_fresh(&mut self, now: Instant, time_us: u32, buf: &mut Vec<u8>) -> bool {
        let need_new = self.window.back().is_none_or(|c| c.first_pass_done);
        if need_new {
            if self.window_full() {
                return false;
            }
            let Some(payload) = self.loaded.remove(&self.frontier) else {
                return false;
            };
            let index = self.frontier;
            let loss = self.group_loss();
            let fec = self.cfg.fec;
            let blocks = self
                .layout
                .blocks(index)
                .into_iter()
                .map(|block| BlockTx {
                    proactive: fec.proactive(block.symbols, loss),
                    block,
                    encoder: None,
                    sent_seqs: Vec::new(),
                    assigned: 0,
                    sent: 0,
                    queued: false,
                    rounds: 0,
                })
                .collect();
            self.window.push_back(ChunkTx {
                index,
                payload,
                blocks,
                step: 0,
                next_block: 0,
                first_pass_done: false,
            });
        }
        // The back of the window is the chunk in its first pass.
        let c = self.window.back_mut().unwrap();
        let steps = c.steps();
        while c.step < steps {
            let (step, b) = (c.step, c.next_block);
            c.next_block += 1;
            if c.next_block == c.blocks.len() {
                c.next_block = 0;
                c.step += 1;
            }
            let bt = &mut c.blocks[b];
            if step < bt.block.symbols {
                let t = self.layout.symbol_size() as usize;
                let start = bt.block.offset + step as usize * t;
                let end = (start + t).min(bt.block.offset + bt.block.len);
                let h = DataHeader {
                    flags: 0,
                    seq: self.seq as u32,
                    chunk: c.index,
                    block: b as u16,
                    esi: step,
                    window_base: self.base,
                    frontier: self.frontier,
                    time_us,
                };
                h.encode(
                    self.cfg.session,
                    &self.cfg.key,
                    &c.payload[start..end],
                    t,
                    buf,
                );
                self.seq += 1;
                self.stats.source_symbols += 1;
                return true;
            }
            if step < bt.block.symbols + bt.proactive {
                bt.assigned = bt.assigned.max(step + 1 - bt.block.symbols);
                let (base, frontier, seq) = (self.base, self.frontier, self.seq);
                emit_repair(
                    &self.layout,
                    &self.cfg,
                    c.index,
                    b,
                    &c.payload,
                    bt,
                    (seq, base, frontier, time_us),
                    now,
                    buf,
                );
                self.seq += 1;
                self.stats.proactive_symbols += 1;
                return true;
            }
        }
        c.first_pass_done = true;
        // Encoders are rebuilt on demand (a few ms per 4 MiB block): holding one per chunk
        // in the window would triple the sender's memory.
        for b in &mut c.blocks {
            if b.sent >= b.assigned {
                b.encoder = None;
            }
        }
        self.frontier = c.index + 1;
        self.stats.frontier = self.frontier;
        // Move on to the next chunk at once.
        self.next_fresh(now, time_us, buf)
    }

    fn next_repair(&mut self, now: Instant, time_us: u32, buf: &mut Vec<u8>) -> bool {
        while let Some((chunk, b)) = self.repairs.pop_front() {
            if chunk < self.base {
                continue;
            }
            let c = &mut self.window[(chunk - self.base) as usize];
            let bt = &mut c.blocks[b];
            if bt.sent >= bt.assigned {
                bt.queued = false;
                continue;
            }
            emit_repair(
                &self.layout,
                &self.cfg,
                chunk,
                b,
                &c.payload,
                bt,
                (self.seq, self.base, self.frontier, time_us),
                now,
                buf,
            );
            self.seq += 1;
            self.stats.repair_symbols += 1;
            if bt.sent < bt.assigned {
                self.repairs.push_back((chunk, b));
            } else {
                bt.queued = false;
                if c.first_pass_done {
                    bt.encoder = None;
                }
            }
            return true;
        }
        false
    }

    /// When [`handle_timeout`](Self::handle_timeout) or
    /// [`poll_transmit`](Self::poll_transmit) has work next.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        if self.state == SenderState::Done {
            return None;
        }
        let mut t = self.next_tick.min(self.next_announce);
        if !self.replies.is_empty() {
            return Some(now);
        }
        if self.has_data() {
            t = t.min(self.bucket.next_ready(now));
        }
        Some(t)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        self.events.pop_front()
    }

    /// Whether anyone ever registered.
    pub fn ever_joined(&self) -> bool {
        self.ever_joined
    }
}

/// The full sequence number of `low`, the low 32 bits of one sent at or before `current`.
fn widen(low: u32, current: u64) -> u64 {
    let candidate = (current & !0xFFFF_FFFF) | low as u64;
    if candidate > current {
        candidate.saturating_sub(1 << 32)
    } else {
        candidate
    }
}

/// Writes the next repair symbol of block `b` of `chunk` (building its encoder if needed).
#[allow(clippy::too_many_arguments)]
fn emit_repair(
    layout: &Layout,
    cfg: &SenderConfig,
    chunk: u32,
    b: usize,
    payload: &[u8],
    bt: &mut BlockTx,
    (seq, base, frontier, time_us): (u64, u32, u32, u32),
    now: Instant,
    buf: &mut Vec<u8>,
) {
    let encoder = bt.encoder.get_or_insert_with(|| {
        let t = layout.symbol_size() as usize;
        let mut data = payload[bt.block.offset..bt.block.offset + bt.block.len].to_vec();
        data.resize(bt.block.symbols as usize * t, 0);
        SourceBlockEncoder::new(0, &layout.oti(bt.block.symbols), &data)
    });
    let packet: EncodingPacket = encoder
        .repair_packets(bt.sent, 1)
        .pop()
        // `repair_packets(_, 1)` returns exactly one packet.
        .unwrap();
    let esi = packet.payload_id().encoding_symbol_id();
    bt.sent += 1;
    bt.sent_seqs.push((seq, now));
    let h = DataHeader {
        flags: FLAG_REPAIR,
        seq: seq as u32,
        chunk,
        block: b as u16,
        esi,
        window_base: base,
        frontier,
        time_us,
    };
    h.encode(
        cfg.session,
        &cfg.key,
        packet.data(),
        packet.data().len(),
        buf,
    );
}

mod pace;
#[cfg(test)]
mod tests;
