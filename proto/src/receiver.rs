//! The receiving side of a multicast session.
//!
//! A receiver decodes symbols into chunks and hands each finished chunk to its driver
//! ([`ReceiverEvent::Chunk`]), which checks the chunk's hash, writes it and confirms
//! ([`Receiver::chunk_stored`]) or rejects it ([`Receiver::chunk_rejected`]). Chunks that
//! left the sender's window before this receiver had them (it joined late, or lost too much),
//! chunks it was told to finish over unicast (it was demoted), and rejected chunks are
//! fetched by the driver over unicast: [`Receiver::poll_fetch`] names them, one or two at a
//! time, and [`Receiver::fetch_finished`] reports the outcome.
//!
//! Every [`ReceiverConfig::feedback_interval`] it reports to the sender: what it has, what
//! each incomplete block still lacks, its receive rate, loss and queueing delay. Once every
//! chunk is stored it reports that until the sender acknowledges, then it is finished.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use raptorq::{EncodingPacket, PayloadId, SourceBlockDecoder};
use tracing::{debug, info};

use crate::layout::{Block, Layout};
use crate::wire::{
    self, DataHeader, Feedback, Kind, Need, ReceiverStatus, Reply, SenderState, SessionKey,
    FEEDBACK_DONE,
};

/// Default feedback interval. 40 receivers send 400 small datagrams a second; a repair round
/// costs about one interval plus the round trip.
pub const DEFAULT_FEEDBACK_INTERVAL: Duration = Duration::from_millis(100);
/// Default number of chunks fetched over unicast at once.
pub const DEFAULT_PARALLEL_FETCHES: usize = 2;
/// Default silence of the sender after which the receiver finishes over unicast.
pub const DEFAULT_SENDER_TIMEOUT: Duration = Duration::from_secs(5);
/// How many "done" reports go unanswered before the receiver stops waiting for the sender.
/// With 5 % loss each way, ten in a row fail once in 10^10; a sender that already left (it
/// leaves once every receiver said done) answers none.
const DONE_REPORTS: u32 = 10;
/// Interval of "done" reports: the sender and the admin wait on them, the stream is over.
const DONE_INTERVAL: Duration = Duration::from_millis(20);
/// Undecoded chunks held at most; the sender's window keeps the real number far lower.
const MAX_PARTIAL_CHUNKS: usize = 256;
/// With the stream running and the sender answering, this long without a chunk decoded or
/// fetched means the stream cannot give this receiver what it lacks (whatever the cause, on
/// either side): it finishes over unicast rather than wait for good.
pub const NO_PROGRESS: Duration = Duration::from_secs(30);
/// First wait before a failed unicast fetch is retried; it doubles up to 8 s.
const FETCH_RETRY: Duration = Duration::from_millis(250);

/// A receiver's settings.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Session id.
    pub session: u32,
    /// Session key.
    pub key: SessionKey,
    /// The id the sender gave at registration.
    pub receiver_id: u32,
    /// Feedback interval.
    pub feedback_interval: Duration,
    /// Unicast fetches at once.
    pub parallel_fetches: usize,
    /// Silence of the sender after which everything missing is fetched over unicast.
    pub sender_timeout: Duration,
    /// Seed of the feedback jitter.
    pub rng_seed: u64,
}

impl ReceiverConfig {
    /// Defaults for a receiver registered as `receiver_id`.
    pub fn new(session: u32, key: SessionKey, receiver_id: u32) -> Self {
        Self {
            session,
            key,
            receiver_id,
            feedback_interval: DEFAULT_FEEDBACK_INTERVAL,
            parallel_fetches: DEFAULT_PARALLEL_FETCHES,
            sender_timeout: DEFAULT_SENDER_TIMEOUT,
            rng_seed: receiver_id as u64,
        }
    }
}

/// Something the driver should act on.
#[derive(Debug, PartialEq)]
#[non_exhaustive]
pub enum ReceiverEvent {
    /// A chunk was decoded: check, write, then call `chunk_stored` or `chunk_rejected`.
    Chunk {
        /// Its index.
        index: u32,
        /// Its bytes.
        data: Vec<u8>,
    },
    /// The sender demoted this receiver: the rest comes over unicast.
    Demoted,
    /// The sender went silent: the rest comes over unicast.
    SenderSilent,
    /// The silent sender answered again, still counting this receiver: back to multicast.
    SenderBack,
    /// The stream runs and the sender answers, but nothing came for [`NO_PROGRESS`]: the
    /// rest comes over unicast.
    Stuck,
    /// The sender does not know this receiver (it restarted, or declared it dead).
    Unknown,
    /// Every chunk is stored and the sender knows (or stopped answering).
    Finished,
}

/// Counters of a receiver.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReceiverStats {
    /// Data datagrams accepted.
    pub datagrams: u64,
    /// Accepted datagrams that added nothing (duplicates, chunks already done).
    pub redundant: u64,
    /// Datagrams of another session.
    pub foreign: u64,
    /// Datagrams with a bad tag or malformed.
    pub rejected: u64,
    /// Chunks decoded from multicast.
    pub decoded_chunks: u32,
    /// Chunks fetched over unicast.
    pub fetched_chunks: u32,
    /// Chunks stored.
    pub stored_chunks: u32,
    /// Bytes of stored chunks.
    pub stored_bytes: u64,
    /// Current loss estimate (fraction).
    pub loss: f64,
    /// Receive rate over the last interval, bits/s.
    pub rate_bps: u64,
}

/// One source block being received. Source symbols go straight to their place in `buf`;
/// only a block that lost some needs RaptorQ, with the repair symbols kept aside.
struct BlockRx {
    /// `symbols × symbol_size` bytes once the first symbol arrived.
    buf: Vec<u8>,
    have: Vec<bool>,
    sources: u32,
    repairs: Vec<(u32, Vec<u8>)>,
    /// Symbols held when a decode last failed: retry only with more.
    tried: u32,
    done: bool,
}

impl BlockRx {
    fn new() -> Self {
        Self {
            buf: Vec::new(),
            have: Vec::new(),
            sources: 0,
            repairs: Vec::new(),
            tried: 0,
            done: false,
        }
    }

    fn held(&self) -> u32 {
        self.sources + self.repairs.len() as u32
    }

    /// Takes one symbol; returns false when it added nothing.
    fn add(&mut self, layout: &Layout, k: u32, esi: u32, symbol: &[u8]) -> bool {
        if self.done {
            return false;
        }
        let t = symbol.len();
        if esi < k {
            if self.buf.is_empty() {
                self.buf = vec![0; k as usize * t];
                self.have = vec![false; k as usize];
            }
            if self.have[esi as usize] {
                return false;
            }
            self.have[esi as usize] = true;
            self.sources += 1;
            self.buf[esi as usize * t..(esi as usize + 1) * t].copy_from_slice(symbol);
        } else {
            if self.repairs.iter().any(|&(e, _)| e == esi) {
                return false;
            }
            self.repairs.push((esi, symbol.to_vec()));
        }
        if self.sources == k {
            self.finish();
        } else if self.held() >= k && self.held() > self.tried {
            self.decode(layout, k, t);
        }
        true
    }

    fn decode(&mut self, layout: &Layout, k: u32, t: usize) {
        let mut dec = SourceBlockDecoder::new(0, &layout.oti(k), k as u64 * t as u64);
        let sources = self
            .have
            .iter()
            .enumerate()
            .filter(|(_, h)| **h)
            .map(|(i, _)| {
                EncodingPacket::new(
                    PayloadId::new(0, i as u32),
                    self.buf[i * t..(i + 1) * t].to_vec(),
                )
            });
        let repairs = self
            .repairs
            .iter()
            .map(|(e, d)| EncodingPacket::new(PayloadId::new(0, *e), d.clone()));
        match dec.decode(sources.chain(repairs)) {
            Some(out) => {
                self.buf = out;
                self.finish();
            }
            // RaptorQ fails now and then with exactly K symbols; one or two more do it.
            None => self.tried = self.held(),
        }
    }

    fn finish(&mut self) {
        self.done = true;
        self.have = Vec::new();
        self.repairs = Vec::new();
    }

    /// Symbols still needed.
    fn need(&self, k: u32) -> u32 {
        if self.done {
            0
        } else {
            k.saturating_sub(self.held()).max(1)
        }
    }
}

enum ChunkRx {
    Missing,
    Partial(Vec<BlockRx>),
    Delivered,
    Fetching,
    Stored,
}

/// The receiving side of one multicast session. See the module docs.
pub struct Receiver {
    cfg: ReceiverConfig,
    layout: Layout,
    chunks: Vec<ChunkRx>,
    partial: usize,
    first_missing: u32,
    stored: u32,
    window_base: u32,
    frontier: u32,
    sender_state: SenderState,
    demoted: bool,
    /// Finishing over unicast because the sender went silent (not demoted): undone when
    /// the sender answers again and still counts this receiver in the group.
    silent_fallback: bool,
    /// When a chunk last came (decoded or fetched), or the stream last (re)started.
    last_progress: Instant,
    unicast_all: bool,
    finished: bool,
    done_reports: u32,
    fetching: usize,
    retry: BTreeMap<u32, (Instant, Duration)>,
    next_feedback: Instant,
    last_feedback: Instant,
    feedback_seq: u32,
    last_from_sender: Instant,
    events: VecDeque<ReceiverEvent>,
    stats: ReceiverStats,
    rng: StdRng,
    // Interval measurements.
    interval_start: Instant,
    interval_datagrams: u64,
    interval_bytes: u64,
    interval_high_seq: Option<u32>,
    last_high_seq: Option<u32>,
    high_seq: Option<u32>,
    min_owd: Option<u32>,
    delay_sum: u64,
    delay_n: u64,
    delay_us: u32,
    epoch: Instant,
}

impl Receiver {
    /// A receiver for a session of `layout`, registered at `now`.
    pub fn new(cfg: ReceiverConfig, layout: Layout, now: Instant) -> Self {
        let n = layout.chunks() as usize;
        let mut rng = StdRng::seed_from_u64(cfg.rng_seed);
        let first = now + cfg.feedback_interval.mul_f64(rng.gen_range(0.0..1.0));
        Self {
            chunks: (0..n).map(|_| ChunkRx::Missing).collect(),
            partial: 0,
            first_missing: 0,
            stored: 0,
            window_base: 0,
            frontier: 0,
            sender_state: SenderState::Waiting,
            demoted: false,
            unicast_all: false,
            silent_fallback: false,
            finished: false,
            done_reports: 0,
            fetching: 0,
            retry: BTreeMap::new(),
            next_feedback: first,
            last_feedback: now,
            feedback_seq: 0,
            last_from_sender: now,
            last_progress: now,
            events: VecDeque::new(),
            stats: ReceiverStats::default(),
            rng,
            interval_start: now,
            interval_datagrams: 0,
            interval_bytes: 0,
            interval_high_seq: None,
            last_high_seq: None,
            high_seq: None,
            min_owd: None,
            delay_sum: 0,
            delay_n: 0,
            delay_us: 0,
            epoch: now,
            layout,
            cfg,
        }
    }

    /// Counters.
    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    /// The session's layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Whether the sender demoted this receiver.
    pub fn demoted(&self) -> bool {
        self.demoted
    }

    /// Whether every chunk is stored.
    pub fn complete(&self) -> bool {
        self.stored == self.layout.chunks()
    }

    /// Whether what is missing now comes over unicast only: the stream is over or draining,
    /// this receiver was demoted or rejoined, or the sender went silent.
    pub fn unicast_all(&self) -> bool {
        self.unicast_all
    }

    /// Whether the receiver is finished (complete, and the sender knows or went away).
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The sender's state as last heard.
    pub fn sender_state(&self) -> SenderState {
        self.sender_state
    }

    /// Handles a datagram from the group or from the sender.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) {
        let kind = match wire::peek(datagram) {
            Ok((kind, session)) if session == self.cfg.session => kind,
            Ok(_) => {
                self.stats.foreign += 1;
                return;
            }
            Err(_) => {
                self.stats.rejected += 1;
                return;
            }
        };
        match kind {
            Kind::Data => match DataHeader::decode(datagram, self.cfg.session, &self.cfg.key) {
                Ok((h, symbol)) => self.on_data(now, h, symbol),
                Err(e) => {
                    debug!(error = %e, "data datagram rejected");
                    self.stats.rejected += 1;
                }
            },
            Kind::Reply => match Reply::decode(datagram, self.cfg.session, &self.cfg.key) {
                Ok(r) if r.receiver == self.cfg.receiver_id => self.on_reply(now, r),
                Ok(_) => self.stats.rejected += 1,
                Err(e) => {
                    debug!(error = %e, "reply rejected");
                    self.stats.rejected += 1;
                }
            },
            // Announces of our own session say nothing new; feedback is not for receivers.
            Kind::Announce => self.last_from_sender = now,
            Kind::Feedback => self.stats.foreign += 1,
        }
    }

    fn learn_window(&mut self, now: Instant, base: u32, frontier: u32) {
        let n = self.layout.chunks();
        self.window_base = self.window_base.max(base.min(n));
        let frontier = frontier.min(n);
        if frontier > self.frontier {
            // A chunk's first pass just ended: report what it lacks soon rather than at the
            // next regular feedback, so repairs come one round trip later, not an interval.
            let incomplete = (self.frontier.max(self.first_missing)..frontier).any(|i| {
                matches!(
                    self.chunks[i as usize],
                    ChunkRx::Missing | ChunkRx::Partial(_)
                )
            });
            if incomplete && !self.demoted {
                let soon = self.last_feedback + self.cfg.feedback_interval / 4;
                self.next_feedback = self.next_feedback.min(soon.max(now));
            }
            self.frontier = frontier;
        }
        // Partial chunks that left the window will come over unicast instead.
        for i in self.first_missing..self.window_base {
            if let ChunkRx::Partial(_) = self.chunks[i as usize] {
                self.chunks[i as usize] = ChunkRx::Missing;
                self.partial -= 1;
            }
        }
    }

    fn on_data(&mut self, now: Instant, h: DataHeader, symbol: &[u8]) {
        let n = self.layout.chunks();
        let t = self.layout.symbol_size() as usize;
        if h.chunk >= n || symbol.len() != t {
            self.stats.rejected += 1;
            return;
        }
        self.last_from_sender = now;
        if self.sender_state == SenderState::Waiting {
            self.sender_state = SenderState::Running;
            self.last_progress = now;
        }
        self.stats.datagrams += 1;
        self.interval_datagrams += 1;
        self.interval_bytes += (symbol.len() + wire::DATA_HEADER_LEN + wire::TAG_LEN) as u64;
        self.interval_high_seq = Some(match self.interval_high_seq {
            Some(s) if s.wrapping_sub(h.seq) < 1 << 31 => s,
            _ => h.seq,
        });
        self.high_seq = Some(match self.high_seq {
            Some(s) if s.wrapping_sub(h.seq) < 1 << 31 => s,
            _ => h.seq,
        });
        self.observe_delay(now, h.time_us);
        self.learn_window(now, h.window_base, h.frontier);

        let c = h.chunk as usize;
        if h.chunk < self.window_base && !matches!(self.chunks[c], ChunkRx::Partial(_)) {
            self.stats.redundant += 1;
            return;
        }
        if matches!(self.chunks[c], ChunkRx::Missing) {
            if self.partial >= MAX_PARTIAL_CHUNKS {
                self.stats.redundant += 1;
                return;
            }
            let n = self.layout.blocks(h.chunk).len();
            self.chunks[c] = ChunkRx::Partial((0..n).map(|_| BlockRx::new()).collect());
            self.partial += 1;
        }
        let ChunkRx::Partial(blocks) = &mut self.chunks[c] else {
            self.stats.redundant += 1;
            return;
        };
        let specs = self.layout.blocks(h.chunk);
        let (Some(b), Some(spec)) = (
            blocks.get_mut(h.block as usize),
            specs.get(h.block as usize),
        ) else {
            self.stats.rejected += 1;
            return;
        };
        if !b.add(&self.layout, spec.symbols, h.esi, symbol) {
            self.stats.redundant += 1;
            return;
        }
        if blocks.iter().all(|b| b.done) {
            let data = if blocks.len() == 1 {
                // One block (the usual case): its buffer is the chunk.
                let mut d = std::mem::take(&mut blocks[0].buf);
                d.truncate(specs[0].len);
                d
            } else {
                let mut d = Vec::with_capacity(self.layout.chunk_len(h.chunk));
                for (b, spec) in blocks.iter().zip(&specs) {
                    d.extend_from_slice(&b.buf[..spec.len]);
                }
                d
            };
            self.chunks[c] = ChunkRx::Delivered;
            self.last_progress = now;
            self.partial -= 1;
            self.stats.decoded_chunks += 1;
            self.advance_first_missing();
            self.events.push_back(ReceiverEvent::Chunk {
                index: h.chunk,
                data,
            });
        }
    }

    fn observe_delay(&mut self, now: Instant, time_us: u32) {
        let now_us = now.saturating_duration_since(self.epoch).as_micros() as u32;
        let owd = now_us.wrapping_sub(time_us);
        let min = *self.min_owd.get_or_insert(owd);
        let q = owd.wrapping_sub(min) as i32;
        if q < 0 {
            self.min_owd = Some(owd);
        } else {
            self.delay_sum += q as u64;
            self.delay_n += 1;
        }
    }

    fn advance_first_missing(&mut self) {
        while let Some(ChunkRx::Delivered | ChunkRx::Stored) =
            self.chunks.get(self.first_missing as usize)
        {
            self.first_missing += 1;
        }
    }

    fn on_reply(&mut self, now: Instant, r: Reply) {
        self.last_from_sender = now;
        if self.sender_state != SenderState::Running && r.state == SenderState::Running {
            // The stream (re)starts: the wait for it is no stall.
            self.last_progress = now;
        }
        self.sender_state = r.state;
        self.learn_window(now, r.window_base, r.frontier);
        if matches!(r.state, SenderState::Draining | SenderState::Done) {
            self.unicast_all = true;
        }
        match r.status {
            ReceiverStatus::Active => {
                // The sender was starved or the network hiccupped, not gone: the stream still
                // counts this receiver, so what it lacks comes by multicast again (each
                // machine fetching the rest on its own would multiply the server's traffic).
                if self.silent_fallback && r.state == SenderState::Running && !self.demoted {
                    info!("the sender is back: receiving by multicast again");
                    self.silent_fallback = false;
                    self.unicast_all = false;
                    self.last_progress = now;
                    self.events.push_back(ReceiverEvent::SenderBack);
                }
            }
            ReceiverStatus::Demoted => {
                if !self.demoted {
                    info!("demoted by the sender: finishing over unicast");
                    self.demoted = true;
                    self.unicast_all = true;
                    self.events.push_back(ReceiverEvent::Demoted);
                }
            }
            ReceiverStatus::Finished => {
                if self.complete() && !self.finished {
                    self.finished = true;
                    self.events.push_back(ReceiverEvent::Finished);
                }
            }
            ReceiverStatus::Unknown => {
                if !self.finished {
                    self.events.push_back(ReceiverEvent::Unknown);
                }
            }
        }
    }

    /// Registered again under a new id (after [`ReceiverEvent::Unknown`]): the sender counts
    /// this receiver again; what is missing comes over unicast.
    pub fn rejoin(&mut self, receiver_id: u32) {
        self.cfg.receiver_id = receiver_id;
        self.unicast_all = true;
    }

    /// Chunk `index` is on the output already (a resumed write found it there, checked): it
    /// is neither decoded nor fetched. Call before the session's data arrives.
    pub fn already_stored(&mut self, index: u32) {
        if let Some(c @ ChunkRx::Missing) = self.chunks.get_mut(index as usize) {
            *c = ChunkRx::Stored;
            self.stored += 1;
            self.stats.stored_chunks += 1;
            self.stats.stored_bytes += self.layout.chunk_len(index) as u64;
            self.advance_first_missing();
            self.report_if_complete();
        }
    }

    /// The driver stored chunk `index` (from a [`ReceiverEvent::Chunk`]).
    pub fn chunk_stored(&mut self, index: u32) {
        if let Some(c @ ChunkRx::Delivered) = self.chunks.get_mut(index as usize) {
            *c = ChunkRx::Stored;
            self.stored += 1;
            self.stats.stored_chunks += 1;
            self.stats.stored_bytes += self.layout.chunk_len(index) as u64;
            self.report_if_complete();
        }
    }

    /// Once the last chunk is stored, the sender hears it at once rather than at the next
    /// feedback tick: it is what the sender (and the machine's admin) waits for.
    fn report_if_complete(&mut self) {
        if self.complete() {
            self.next_feedback = self.next_feedback.min(self.last_feedback);
        }
    }

    /// The driver found chunk `index` wrong: it will be fetched over unicast.
    pub fn chunk_rejected(&mut self, index: u32) {
        if let Some(c @ ChunkRx::Delivered) = self.chunks.get_mut(index as usize) {
            *c = ChunkRx::Missing;
            self.first_missing = self.first_missing.min(index);
            self.retry
                .insert(index, (self.last_from_sender, Duration::ZERO));
        }
    }

    /// The next chunk to fetch over unicast, if any (call until `None`).
    pub fn poll_fetch(&mut self, now: Instant) -> Option<u32> {
        // A sender silent for less than twice its timeout is more often starved (one process
        // among many on a busy server) than gone: until then one chunk at a time, and not the
        // ones multicast already half gave, so a pause costs the server little unicast.
        let probing = self.silent_fallback
            && now < self.last_from_sender + self.cfg.sender_timeout.saturating_mul(2);
        let at_once = if probing {
            1
        } else {
            self.cfg.parallel_fetches.max(1)
        };
        if self.fetching >= at_once {
            return None;
        }
        let limit = if self.unicast_all {
            self.layout.chunks()
        } else {
            self.window_base
        };
        let mut i = self.first_missing;
        while i < limit {
            let due = self.retry.get(&i).is_none_or(|&(at, _)| now >= at);
            match self.chunks[i as usize] {
                ChunkRx::Missing if due => break,
                ChunkRx::Partial(_) if due && self.unicast_all && !probing => break,
                _ => i += 1,
            }
        }
        if i >= limit {
            return None;
        }
        if let ChunkRx::Partial(_) = self.chunks[i as usize] {
            self.partial -= 1;
        }
        self.chunks[i as usize] = ChunkRx::Fetching;
        self.fetching += 1;
        Some(i)
    }

    /// The driver fetched chunk `index` over unicast and stored it (`ok`), or failed.
    pub fn fetch_finished(&mut self, now: Instant, index: u32, ok: bool) {
        let Some(c @ ChunkRx::Fetching) = self.chunks.get_mut(index as usize) else {
            return;
        };
        self.fetching -= 1;
        if ok {
            *c = ChunkRx::Stored;
            self.last_progress = now;
            self.retry.remove(&index);
            self.stored += 1;
            self.stats.fetched_chunks += 1;
            self.stats.stored_chunks += 1;
            self.stats.stored_bytes += self.layout.chunk_len(index) as u64;
            self.advance_first_missing();
            self.report_if_complete();
        } else {
            *c = ChunkRx::Missing;
            let wait = match self.retry.get(&index) {
                Some(&(_, w)) if !w.is_zero() => (w * 2).min(Duration::from_secs(8)),
                _ => FETCH_RETRY,
            };
            self.retry.insert(index, (now + wait, wait));
        }
    }

    /// Handles timers; call when [`poll_timeout`](Self::poll_timeout) passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_from_sender) > self.cfg.sender_timeout
            && !self.unicast_all
            && !self.finished
        {
            info!("the sender went silent: finishing over unicast");
            self.unicast_all = true;
            self.silent_fallback = true;
            self.events.push_back(ReceiverEvent::SenderSilent);
        }
        if !self.unicast_all
            && !self.finished
            && !self.complete()
            && self.sender_state == SenderState::Running
            && now.saturating_duration_since(self.last_progress) > NO_PROGRESS
        {
            info!(
                "nothing came for {} s though the sender answers: finishing over unicast",
                NO_PROGRESS.as_secs()
            );
            self.unicast_all = true;
            self.events.push_back(ReceiverEvent::Stuck);
        }
    }

    /// The next datagram for the sender, written into `buf`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool {
        if self.finished || now < self.next_feedback {
            return false;
        }
        self.last_feedback = now;
        let jitter = self.rng.gen_range(0.9..1.1);
        self.next_feedback = now
            + if self.complete() {
                DONE_INTERVAL.mul_f64(jitter)
            } else {
                self.cfg.feedback_interval.mul_f64(jitter)
            };
        let fb = self.feedback(now);
        fb.encode(self.cfg.session, &self.cfg.key, buf);
        if fb.flags & FEEDBACK_DONE != 0 {
            self.done_reports += 1;
            if self.done_reports > DONE_REPORTS {
                // The sender stopped answering; what matters, the data, is complete.
                self.finished = true;
                self.events.push_back(ReceiverEvent::Finished);
            }
        }
        true
    }

    fn feedback(&mut self, now: Instant) -> Feedback {
        let dt = now
            .saturating_duration_since(self.interval_start)
            .as_secs_f64();
        if dt > 0.0 {
            self.stats.rate_bps = (self.interval_bytes as f64 * 8.0 / dt) as u64;
        }
        // Loss over the interval from the data sequence numbers.
        if let Some(high) = self.interval_high_seq {
            if let Some(last) = self.last_high_seq {
                let expected = high.wrapping_sub(last) as u64;
                if expected > 0 && expected < 1 << 30 {
                    let sample = 1.0 - (self.interval_datagrams as f64 / expected as f64).min(1.0);
                    self.stats.loss = 0.7 * self.stats.loss + 0.3 * sample;
                }
            }
            self.last_high_seq = Some(high);
        }
        // An interval without data says nothing: the sender may be idle (its window full).
        // A receiver that hears nothing at all is caught by the sender's stall and silence
        // rules instead.
        if let Some(mean) = self.delay_sum.checked_div(self.delay_n) {
            self.delay_us = mean.min(u32::MAX as u64) as u32;
        }
        self.interval_start = now;
        self.interval_datagrams = 0;
        self.interval_bytes = 0;
        self.interval_high_seq = None;
        self.delay_sum = 0;
        self.delay_n = 0;

        let mut needs = Vec::new();
        if !self.demoted {
            let from = self.first_missing.max(self.window_base);
            for i in from..self.frontier {
                if needs.len() >= wire::MAX_FEEDBACK_ENTRIES {
                    break;
                }
                match &self.chunks[i as usize] {
                    ChunkRx::Missing => {
                        for (b, spec) in self.layout.blocks(i).iter().enumerate() {
                            needs.push(need(i, b, spec, None));
                        }
                    }
                    ChunkRx::Partial(blocks) => {
                        for (b, (rx, spec)) in blocks.iter().zip(self.layout.blocks(i)).enumerate()
                        {
                            if !rx.done {
                                needs.push(need(i, b, &spec, Some(rx)));
                            }
                        }
                    }
                    _ => {}
                }
            }
            needs.truncate(wire::MAX_FEEDBACK_ENTRIES);
        }
        self.feedback_seq = self.feedback_seq.wrapping_add(1);
        Feedback {
            flags: if self.complete() { FEEDBACK_DONE } else { 0 },
            receiver: self.cfg.receiver_id,
            seq: self.feedback_seq,
            first_missing: self.first_missing,
            seen_frontier: self.frontier,
            rate_kbit: (self.stats.rate_bps / 1000).min(u32::MAX as u64) as u32,
            loss_ppm: (self.stats.loss * 1e6) as u32,
            delay_us: self.delay_us,
            high_seq: self.high_seq.unwrap_or(u32::MAX),
            needs,
        }
    }

    /// When the receiver has work next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        let mut t = self.next_feedback;
        if let Some((&_, &(at, _))) = self.retry.iter().min_by_key(|(_, (at, _))| *at) {
            t = t.min(at);
        }
        Some(t)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.events.pop_front()
    }

    /// Chunks not yet stored, lowest first (for progress displays).
    pub fn missing(&self) -> BTreeSet<u32> {
        self.chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| !matches!(c, ChunkRx::Stored))
            .map(|(i, _)| i as u32)
            .collect()
    }
}

fn need(chunk: u32, block: usize, spec: &Block, rx: Option<&BlockRx>) -> Need {
    let need = rx.map_or(spec.symbols, |r| r.need(spec.symbols));
    Need {
        chunk,
        block: block as u16,
        need: need.min(u16::MAX as u32) as u16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(rx: &Receiver, status: ReceiverStatus, state: SenderState) -> Vec<u8> {
        let mut buf = Vec::new();
        Reply {
            receiver: rx.cfg.receiver_id,
            seq: 1,
            status,
            state,
            window_base: 0,
            frontier: 1,
        }
        .encode(rx.cfg.session, &rx.cfg.key, &mut buf);
        buf
    }

    /// A sender that went silent and answers again, still counting the receiver, gets it back
    /// on multicast; a demoted receiver stays on unicast.
    #[test]
    fn a_silent_sender_that_answers_again_gets_its_receiver_back() {
        let t0 = Instant::now();
        let layout = Layout::new(1000, 64, vec![10_000; 8]).unwrap();
        let cfg = ReceiverConfig::new(7, SessionKey::new([3; 32]), 2);
        let mut rx = Receiver::new(cfg, layout, t0);
        let later = t0 + DEFAULT_SENDER_TIMEOUT + Duration::from_secs(1);
        rx.handle_timeout(later);
        assert!(rx.unicast_all());
        assert_eq!(rx.poll_event(), Some(ReceiverEvent::SenderSilent));
        // Only unicast for now, one chunk at a time while the silence may be a pause.
        assert_eq!(rx.poll_fetch(later), Some(0));
        assert_eq!(rx.poll_fetch(later), None);
        let back = reply(&rx, ReceiverStatus::Active, SenderState::Running);
        rx.handle_datagram(later, &back);
        assert!(!rx.unicast_all());
        assert_eq!(rx.poll_event(), Some(ReceiverEvent::SenderBack));
        // The fetch under way finishes; no new one starts beyond the multicast window.
        assert_eq!(rx.poll_fetch(later), None);

        // Silent again, and for twice the timeout: gone, so fetches run at full width.
        rx.fetch_finished(later, 0, true);
        let again = later + DEFAULT_SENDER_TIMEOUT + Duration::from_secs(1);
        rx.handle_timeout(again);
        assert!(rx.unicast_all());
        assert_eq!(rx.poll_fetch(again), Some(1));
        assert_eq!(rx.poll_fetch(again), None);
        let gone = later + DEFAULT_SENDER_TIMEOUT * 2;
        assert_eq!(rx.poll_fetch(gone), Some(2));
        assert_eq!(
            rx.poll_fetch(gone),
            None,
            "{DEFAULT_PARALLEL_FETCHES} at once"
        );
        // This time the answer is a demotion: unicast it stays.
        let demoted = reply(&rx, ReceiverStatus::Demoted, SenderState::Running);
        rx.handle_datagram(again, &demoted);
        rx.handle_datagram(again, &back);
        assert!(rx.unicast_all() && rx.demoted());
    }

    /// A running stream that gives nothing while its sender keeps answering does not hold
    /// the receiver: after NO_PROGRESS it fetches the rest. Waiting for the stream to start
    /// is no stall.
    #[test]
    fn a_stream_that_gives_nothing_is_left_for_unicast() {
        let t0 = Instant::now();
        let layout = Layout::new(1000, 64, vec![10_000; 8]).unwrap();
        let cfg = ReceiverConfig::new(7, SessionKey::new([3; 32]), 2);
        let mut rx = Receiver::new(cfg, layout, t0);
        let waiting = reply(&rx, ReceiverStatus::Active, SenderState::Waiting);
        let running = reply(&rx, ReceiverStatus::Active, SenderState::Running);
        // A minute of waiting for the start, the sender answering every second.
        let mut t = t0;
        for _ in 0..60 {
            t += Duration::from_secs(1);
            rx.handle_datagram(t, &waiting);
            rx.handle_timeout(t);
        }
        assert!(!rx.unicast_all() && rx.poll_event().is_none());
        // Then it runs, and answers, but nothing arrives.
        let started = t;
        while t < started + NO_PROGRESS {
            t += Duration::from_secs(1);
            rx.handle_datagram(t, &running);
            rx.handle_timeout(t);
            assert!(!rx.unicast_all(), "after {:?}", t - started);
        }
        // (It first heard "running" a second after `started`.)
        t += Duration::from_secs(2);
        rx.handle_datagram(t, &running);
        rx.handle_timeout(t);
        assert!(rx.unicast_all());
        assert_eq!(rx.poll_event(), Some(ReceiverEvent::Stuck));
        assert_eq!(rx.poll_fetch(t), Some(0));
    }
}
