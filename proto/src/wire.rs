//! The datagrams of a multicast session, byte for byte.
//!
//! Every datagram starts with the same four bytes: [`MAGIC`], [`VERSION`], its [`Kind`] and a
//! flags byte. All integers are little-endian. Data, feedback and reply datagrams end with a
//! 16-byte authentication tag over everything before it (see [`SessionKey`]), so a datagram
//! from another session, a stale one or an injected one is dropped before any of its bytes
//! reach a decoder. Announces carry no tag: they only say where to register, and the key is
//! handed out by that registration.
//!
//! ```text
//! data     magic ver kind flags | session seq chunk | block<<24|esi | chunk-base frontier-chunk | time | symbol | tag
//!          1     1   1    1     | 4       4   4     | 4             | 2          2              | 4    | rest   | 16
//! announce magic ver kind flags | session http_port state receivers min_receivers chunks bytes name_len name
//! feedback magic ver kind flags | session receiver seq first_missing seen_frontier rate_kbit loss_ppm
//!          delay_us high_seq count 0u16 | count × (chunk u32, block u16, need u16) | tag
//! reply    magic ver kind flags | session receiver seq status base frontier | tag
//! ```

use std::fmt;

use aes::cipher::{BlockEncrypt, KeyInit};
use polyval::universal_hash::UniversalHash;
use polyval::Polyval;
use subtle::ConstantTimeEq;

/// First byte of every drover multicast datagram.
pub const MAGIC: u8 = 0xD7;
/// Wire format version; a datagram of any other version is dropped. Version 3 changed the tag
/// from keyed BLAKE3 to POLYVAL-then-AES (see [`SessionKey`]).
pub const VERSION: u8 = 3;
/// Bytes of the authentication tag that ends data, feedback and reply datagrams.
pub const TAG_LEN: usize = 16;
/// Bytes of a data datagram's header (before the symbol).
pub const DATA_HEADER_LEN: usize = 28;
/// Largest UDP payload that fits a 1500-byte Ethernet MTU with IPv4 and UDP headers.
pub const MAX_UDP_PAYLOAD: usize = 1500 - 20 - 8;
/// Default RaptorQ symbol size: a data datagram fills exactly [`MAX_UDP_PAYLOAD`].
pub const DEFAULT_SYMBOL_SIZE: u16 = (MAX_UDP_PAYLOAD - DATA_HEADER_LEN - TAG_LEN) as u16;
/// Bytes of the fixed part of a feedback datagram.
pub const FEEDBACK_HEADER_LEN: usize = 44;
/// Bytes of one feedback entry.
pub const FEEDBACK_ENTRY_LEN: usize = 8;
/// Most entries one feedback datagram carries (it stays within [`MAX_UDP_PAYLOAD`]).
pub const MAX_FEEDBACK_ENTRIES: usize =
    (MAX_UDP_PAYLOAD - FEEDBACK_HEADER_LEN - TAG_LEN) / FEEDBACK_ENTRY_LEN;
/// Encoding symbol ids are 24-bit (RFC 6330).
pub const MAX_ESI: u32 = 1 << 24;
/// Longest session name an announce carries.
pub const MAX_NAME_LEN: usize = 200;

/// What a datagram is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// One encoding symbol, sender to group.
    Data = 1,
    /// "A session is here, register at ...", sender to group.
    Announce = 2,
    /// A receiver's state, receiver to sender.
    Feedback = 3,
    /// The sender's answer to a feedback, sender to receiver.
    Reply = 4,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Data,
            2 => Self::Announce,
            3 => Self::Feedback,
            4 => Self::Reply,
            _ => return None,
        })
    }
}

/// Why a datagram was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not a drover datagram (wrong magic byte or too short for the common header).
    #[error("not a drover datagram")]
    NotOurs,
    /// A drover datagram of a wire version this build does not speak.
    #[error("unsupported wire version {0}")]
    Version(u8),
    /// An unknown datagram kind.
    #[error("unknown datagram kind {0}")]
    Kind(u8),
    /// The datagram is shorter or longer than its fields say.
    #[error("{kind:?} datagram has {len} bytes, which does not match its fields")]
    Length {
        /// The kind from the header.
        kind: Kind,
        /// The datagram's length.
        len: usize,
    },
    /// A field holds a value the format does not allow.
    #[error("{0}")]
    Field(&'static str),
    /// The datagram belongs to another session.
    #[error("datagram of session {0:08x}, not ours")]
    Session(u32),
    /// The authentication tag is wrong: forged, corrupted or made with another key.
    #[error("bad authentication tag")]
    Tag,
}

/// A session's 256-bit key: authenticates data, feedback and replies.
///
/// The tag of a datagram is `AES-256(k2, POLYVAL(k1, datagram ‖ bit length))`: an almost
/// universal hash under a secret key, encrypted by a block cipher. That is the tag of
/// AES-GCM-SIV (RFC 8452) with fixed subkeys and no nonce, a MAC that needs no per-datagram
/// nonce (nothing to keep unique across senders, receivers and restarts) and costs about half
/// of the keyed BLAKE3 it replaced on a full datagram: every receiver checks some 700 of them
/// per MiB, and that was a quarter of its CPU under loss. `k1` and `k2` are derived from the
/// session key with BLAKE3's key derivation, once per session.
#[derive(Clone)]
pub struct SessionKey {
    bytes: [u8; 32],
    hash_key: polyval::Key,
    cipher: aes::Aes256,
}

impl PartialEq for SessionKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes.ct_eq(&other.bytes).into()
    }
}

impl Eq for SessionKey {}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    /// The key made from a session's 32 secret bytes (as registration hands them out).
    pub fn new(bytes: [u8; 32]) -> Self {
        let hash_key = blake3::derive_key("drover multicast datagram tag v3: POLYVAL key", &bytes);
        let cipher_key =
            blake3::derive_key("drover multicast datagram tag v3: AES-256 key", &bytes);
        Self {
            bytes,
            hash_key: *polyval::Key::from_slice(&hash_key[..16]),
            cipher: aes::Aes256::new(&cipher_key.into()),
        }
    }

    /// The 32 secret bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// The tag of `bytes`.
    pub fn tag(&self, bytes: &[u8]) -> [u8; TAG_LEN] {
        let mut hash = Polyval::new(&self.hash_key);
        hash.update_padded(bytes);
        // The length block (as RFC 8452 lays it out for associated data) keeps messages that
        // differ only in trailing zero bytes apart.
        let mut lengths = [0u8; 16];
        lengths[..8].copy_from_slice(&(bytes.len() as u64 * 8).to_le_bytes());
        hash.update(&[lengths.into()]);
        let mut block = hash.finalize();
        self.cipher.encrypt_block(&mut block);
        block.into()
    }

    /// Appends the tag of everything in `buf`.
    fn seal(&self, buf: &mut Vec<u8>) {
        let t = self.tag(buf);
        buf.extend_from_slice(&t);
    }

    /// Checks the tag at the end of `datagram` (in constant time) and returns what it covers.
    fn open<'a>(&self, datagram: &'a [u8]) -> Result<&'a [u8], DecodeError> {
        let (body, tag) = datagram.split_at(datagram.len() - TAG_LEN);
        if bool::from(self.tag(body).ct_eq(tag)) {
            Ok(body)
        } else {
            Err(DecodeError::Tag)
        }
    }
}

/// Reads the common header: the kind, if the datagram is ours.
pub fn peek(datagram: &[u8]) -> Result<(Kind, u32), DecodeError> {
    if datagram.len() < 8 || datagram[0] != MAGIC {
        return Err(DecodeError::NotOurs);
    }
    if datagram[1] != VERSION {
        return Err(DecodeError::Version(datagram[1]));
    }
    let kind = Kind::from_u8(datagram[2]).ok_or(DecodeError::Kind(datagram[2]))?;
    Ok((kind, u32_at(datagram, 4)))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn common(buf: &mut Vec<u8>, kind: Kind, flags: u8, session: u32) {
    buf.clear();
    buf.extend_from_slice(&[MAGIC, VERSION, kind as u8, flags]);
    buf.extend_from_slice(&session.to_le_bytes());
}

/// Checks kind, session and tag of an authenticated datagram; returns the covered bytes.
fn open_authenticated<'a>(
    datagram: &'a [u8],
    want: Kind,
    min_len: usize,
    session: u32,
    key: &SessionKey,
) -> Result<&'a [u8], DecodeError> {
    let (kind, s) = peek(datagram)?;
    if kind != want {
        return Err(DecodeError::Kind(kind as u8));
    }
    if datagram.len() < min_len + TAG_LEN {
        return Err(DecodeError::Length {
            kind,
            len: datagram.len(),
        });
    }
    if s != session {
        return Err(DecodeError::Session(s));
    }
    key.open(datagram)
}

/// Flag of a data datagram: the symbol is a repair symbol.
pub const FLAG_REPAIR: u8 = 0x01;

/// The header of a data datagram (one encoding symbol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    /// Flags ([`FLAG_REPAIR`]).
    pub flags: u8,
    /// Datagram sequence number of the sender's data stream (for loss estimates).
    pub seq: u32,
    /// Chunk index in the session.
    pub chunk: u32,
    /// Source block within the chunk.
    pub block: u16,
    /// RaptorQ encoding symbol id within the block.
    pub esi: u32,
    /// The lowest chunk the sender still serves by multicast; older ones come over unicast.
    pub window_base: u32,
    /// Every chunk below this one has had all its source symbols sent once.
    pub frontier: u32,
    /// The sender's clock when sent, microseconds (wrapping): one-way delay trends.
    pub time_us: u32,
}

impl DataHeader {
    /// Writes the datagram for `symbol`, zero-padded to `symbol_len` bytes, into `buf`.
    pub fn encode(
        &self,
        session: u32,
        key: &SessionKey,
        symbol: &[u8],
        symbol_len: usize,
        buf: &mut Vec<u8>,
    ) {
        let symbol_len = symbol_len.max(symbol.len());
        common(buf, Kind::Data, self.flags, session);
        buf.extend_from_slice(&self.seq.to_le_bytes());
        buf.extend_from_slice(&self.chunk.to_le_bytes());
        // The layout keeps blocks under 256 and ids under 2^24 (RFC 6330).
        buf.extend_from_slice(
            &((self.block as u32) << 24 | (self.esi & (MAX_ESI - 1))).to_le_bytes(),
        );
        // The window, relative to the chunk. Beyond 65535 chunks the base reads lower and the
        // frontier lower than they are: receivers then fetch and report a little later,
        // never wrongly.
        let behind = self
            .chunk
            .saturating_sub(self.window_base)
            .min(u16::MAX as u32) as u16;
        let ahead = self
            .frontier
            .saturating_sub(self.chunk)
            .min(u16::MAX as u32) as u16;
        buf.extend_from_slice(&behind.to_le_bytes());
        buf.extend_from_slice(&ahead.to_le_bytes());
        buf.extend_from_slice(&self.time_us.to_le_bytes());
        buf.extend_from_slice(symbol);
        buf.resize(buf.len() + symbol_len - symbol.len(), 0);
        key.seal(buf);
    }

    /// Authenticates and decodes a data datagram; returns the header and the symbol (the
    /// rest of the datagram).
    pub fn decode<'a>(
        datagram: &'a [u8],
        session: u32,
        key: &SessionKey,
    ) -> Result<(Self, &'a [u8]), DecodeError> {
        let body = open_authenticated(datagram, Kind::Data, DATA_HEADER_LEN, session, key)?;
        if body.len() == DATA_HEADER_LEN {
            return Err(DecodeError::Length {
                kind: Kind::Data,
                len: datagram.len(),
            });
        }
        let chunk = u32_at(body, 12);
        let id = u32_at(body, 16);
        let window_base = chunk
            .checked_sub(u16_at(body, 20) as u32)
            .ok_or(DecodeError::Field("window base below chunk 0"))?;
        let frontier = chunk
            .checked_add(u16_at(body, 22) as u32)
            .ok_or(DecodeError::Field("frontier beyond the last chunk"))?;
        let h = Self {
            flags: body[3],
            seq: u32_at(body, 8),
            chunk,
            block: (id >> 24) as u16,
            esi: id & (MAX_ESI - 1),
            window_base,
            frontier,
            time_us: u32_at(body, 24),
        };
        Ok((h, &body[DATA_HEADER_LEN..]))
    }
}

/// Where a sender is in its session, as announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SenderState {
    /// Waiting for receivers (the start policy has not fired).
    Waiting = 1,
    /// Streaming.
    Running = 2,
    /// Multicast finished; serving the rest over unicast until every receiver is done.
    Draining = 3,
    /// Finished.
    Done = 4,
}

impl SenderState {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Waiting,
            2 => Self::Running,
            3 => Self::Draining,
            4 => Self::Done,
            _ => return None,
        })
    }
}

/// A session announce: where receivers register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// The session id.
    pub session: u32,
    /// TCP port of the sender's HTTP service (registration, session description, chunks), on
    /// the announce's source address.
    pub http_port: u16,
    /// The sender's state.
    pub state: SenderState,
    /// Receivers registered so far.
    pub receivers: u16,
    /// Receivers the sender waits for (0: none).
    pub min_receivers: u16,
    /// Chunks in the session.
    pub chunks: u32,
    /// Bytes the session carries (sum of chunk payloads).
    pub bytes: u64,
    /// The image or file name.
    pub name: String,
}

impl Announce {
    const FIXED: usize = 8 + 2 + 1 + 2 + 2 + 4 + 8 + 1;

    /// Writes the datagram into `buf`.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        common(buf, Kind::Announce, 0, self.session);
        buf.extend_from_slice(&self.http_port.to_le_bytes());
        buf.push(self.state as u8);
        buf.extend_from_slice(&self.receivers.to_le_bytes());
        buf.extend_from_slice(&self.min_receivers.to_le_bytes());
        buf.extend_from_slice(&self.chunks.to_le_bytes());
        buf.extend_from_slice(&self.bytes.to_le_bytes());
        let mut name = self.name.as_bytes();
        if name.len() > MAX_NAME_LEN {
            let mut end = MAX_NAME_LEN;
            while !self.name.is_char_boundary(end) {
                end -= 1;
            }
            name = &name[..end];
        }
        buf.push(name.len() as u8);
        buf.extend_from_slice(name);
    }

    /// Decodes an announce.
    pub fn decode(datagram: &[u8]) -> Result<Self, DecodeError> {
        let (kind, session) = peek(datagram)?;
        if kind != Kind::Announce {
            return Err(DecodeError::Kind(kind as u8));
        }
        let bad_len = DecodeError::Length {
            kind,
            len: datagram.len(),
        };
        if datagram.len() < Self::FIXED {
            return Err(bad_len);
        }
        let name_len = datagram[Self::FIXED - 1] as usize;
        if datagram.len() != Self::FIXED + name_len {
            return Err(bad_len);
        }
        let name = std::str::from_utf8(&datagram[Self::FIXED..])
            .map_err(|_| DecodeError::Field("session name is not UTF-8"))?;
        Ok(Self {
            session,
            http_port: u16_at(datagram, 8),
            state: SenderState::from_u8(datagram[10])
                .ok_or(DecodeError::Field("unknown sender state"))?,
            receivers: u16_at(datagram, 11),
            min_receivers: u16_at(datagram, 13),
            chunks: u32_at(datagram, 15),
            bytes: u64_at(datagram, 19),
            name: name.to_string(),
        })
    }
}

/// Feedback flag: every chunk is written and verified.
pub const FEEDBACK_DONE: u8 = 0x01;

/// One incomplete block in a feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// Chunk index.
    pub chunk: u32,
    /// Source block within the chunk.
    pub block: u16,
    /// Symbols the receiver still lacks to decode the block.
    pub need: u16,
}

/// A receiver's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    /// Flags ([`FEEDBACK_DONE`]).
    pub flags: u8,
    /// The receiver's id (from its registration).
    pub receiver: u32,
    /// Feedback sequence number.
    pub seq: u32,
    /// Every chunk below this one is complete.
    pub first_missing: u32,
    /// The highest frontier the receiver has seen: it reports needs only below it.
    pub seen_frontier: u32,
    /// Receive rate of session data, kbit/s, over the last interval.
    pub rate_kbit: u32,
    /// Estimated loss, parts per million.
    pub loss_ppm: u32,
    /// Queueing delay (one-way delay above its minimum), microseconds.
    pub delay_us: u32,
    /// The highest data sequence number received: symbols sent after it may still be on
    /// their way, those before it arrived or were lost (and counted in the needs).
    pub high_seq: u32,
    /// Incomplete blocks below `seen_frontier`, oldest first.
    pub needs: Vec<Need>,
}

impl Feedback {
    /// Writes the datagram into `buf` (at most [`MAX_FEEDBACK_ENTRIES`] needs are sent).
    pub fn encode(&self, session: u32, key: &SessionKey, buf: &mut Vec<u8>) {
        common(buf, Kind::Feedback, self.flags, session);
        for v in [
            self.receiver,
            self.seq,
            self.first_missing,
            self.seen_frontier,
            self.rate_kbit,
            self.loss_ppm,
            self.delay_us,
            self.high_seq,
        ] {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        let n = self.needs.len().min(MAX_FEEDBACK_ENTRIES);
        buf.extend_from_slice(&(n as u16).to_le_bytes());
        buf.extend_from_slice(&[0, 0]);
        for e in &self.needs[..n] {
            buf.extend_from_slice(&e.chunk.to_le_bytes());
            buf.extend_from_slice(&e.block.to_le_bytes());
            buf.extend_from_slice(&e.need.to_le_bytes());
        }
        key.seal(buf);
    }

    /// Authenticates and decodes a feedback datagram.
    pub fn decode(datagram: &[u8], session: u32, key: &SessionKey) -> Result<Self, DecodeError> {
        let body = open_authenticated(datagram, Kind::Feedback, FEEDBACK_HEADER_LEN, session, key)?;
        let n = u16_at(body, 40) as usize;
        if n > MAX_FEEDBACK_ENTRIES || body.len() != FEEDBACK_HEADER_LEN + n * FEEDBACK_ENTRY_LEN {
            return Err(DecodeError::Length {
                kind: Kind::Feedback,
                len: datagram.len(),
            });
        }
        let needs = body[FEEDBACK_HEADER_LEN..]
            .chunks_exact(FEEDBACK_ENTRY_LEN)
            .map(|e| Need {
                chunk: u32_at(e, 0),
                block: u16_at(e, 4),
                need: u16_at(e, 6),
            })
            .collect();
        Ok(Self {
            flags: body[3],
            receiver: u32_at(body, 8),
            seq: u32_at(body, 12),
            first_missing: u32_at(body, 16),
            seen_frontier: u32_at(body, 20),
            rate_kbit: u32_at(body, 24),
            loss_ppm: u32_at(body, 28),
            delay_us: u32_at(body, 32),
            high_seq: u32_at(body, 36),
            needs,
        })
    }
}

/// What the sender thinks of a receiver, as replied to its feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReceiverStatus {
    /// Part of the group: its feedback steers repairs and rate.
    Active = 1,
    /// Dropped from the group's pacing: finish over unicast.
    Demoted = 2,
    /// Its completion is recorded; it may exit.
    Finished = 3,
    /// The sender does not know it (never registered, or declared dead).
    Unknown = 4,
}

/// The sender's answer to a feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The receiver's id.
    pub receiver: u32,
    /// The feedback's sequence number.
    pub seq: u32,
    /// The receiver's status.
    pub status: ReceiverStatus,
    /// The sender's state.
    pub state: SenderState,
    /// The lowest chunk still served by multicast.
    pub window_base: u32,
    /// Chunks below this have been sent once.
    pub frontier: u32,
}

impl Reply {
    const LEN: usize = 8 + 4 + 4 + 1 + 1 + 4 + 4;

    /// Writes the datagram into `buf`.
    pub fn encode(&self, session: u32, key: &SessionKey, buf: &mut Vec<u8>) {
        common(buf, Kind::Reply, 0, session);
        buf.extend_from_slice(&self.receiver.to_le_bytes());
        buf.extend_from_slice(&self.seq.to_le_bytes());
        buf.push(self.status as u8);
        buf.push(self.state as u8);
        buf.extend_from_slice(&self.window_base.to_le_bytes());
        buf.extend_from_slice(&self.frontier.to_le_bytes());
        key.seal(buf);
    }

    /// Authenticates and decodes a reply.
    pub fn decode(datagram: &[u8], session: u32, key: &SessionKey) -> Result<Self, DecodeError> {
        let body = open_authenticated(datagram, Kind::Reply, Self::LEN, session, key)?;
        if body.len() != Self::LEN {
            return Err(DecodeError::Length {
                kind: Kind::Reply,
                len: datagram.len(),
            });
        }
        let status = match body[16] {
            1 => ReceiverStatus::Active,
            2 => ReceiverStatus::Demoted,
            3 => ReceiverStatus::Finished,
            4 => ReceiverStatus::Unknown,
            _ => return Err(DecodeError::Field("unknown receiver status")),
        };
        let state =
            SenderState::from_u8(body[17]).ok_or(DecodeError::Field("unknown sender state"))?;
        let r = Self {
            receiver: u32_at(body, 8),
            seq: u32_at(body, 12),
            status,
            state,
            window_base: u32_at(body, 18),
            frontier: u32_at(body, 22),
        };
        if r.window_base > r.frontier {
            return Err(DecodeError::Field("window base beyond the frontier"));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static KEY: std::sync::LazyLock<SessionKey> =
        std::sync::LazyLock::new(|| SessionKey::new([7; 32]));

    #[test]
    fn the_tag_depends_on_the_key_every_byte_and_the_length() {
        let msg = [5u8; 40];
        let t = KEY.tag(&msg);
        assert_eq!(t, SessionKey::new([7; 32]).tag(&msg), "deterministic");
        assert_ne!(t, SessionKey::new([6; 32]).tag(&msg));
        // POLYVAL pads to 16 bytes: trailing zeros must still change the tag.
        let mut longer = msg.to_vec();
        longer.extend_from_slice(&[0; 8]);
        assert_ne!(t, KEY.tag(&longer));
        assert_ne!(KEY.tag(&[]), KEY.tag(&[0]));
        for i in 0..msg.len() {
            let mut m = msg;
            m[i] ^= 0x80;
            assert_ne!(t, KEY.tag(&m), "byte {i}");
        }
    }

    #[test]
    fn data_round_trip_and_sizes() {
        let h = DataHeader {
            flags: FLAG_REPAIR,
            seq: 9,
            chunk: 3,
            block: 1,
            esi: 4000,
            window_base: 2,
            frontier: 5,
            time_us: 123456,
        };
        let sym = vec![0xAB; DEFAULT_SYMBOL_SIZE as usize];
        let mut buf = Vec::new();
        h.encode(0x1234, &KEY, &sym, sym.len(), &mut buf);
        assert_eq!(buf.len(), MAX_UDP_PAYLOAD);
        let (d, s) = DataHeader::decode(&buf, 0x1234, &KEY).unwrap();
        assert_eq!((d, s), (h, &sym[..]));
        assert_eq!(
            DataHeader::decode(&buf, 0x1235, &KEY),
            Err(DecodeError::Session(0x1234))
        );
        assert_eq!(
            DataHeader::decode(&buf, 0x1234, &SessionKey::new([8; 32])),
            Err(DecodeError::Tag)
        );
        // Any flipped bit fails the tag.
        for i in [0usize, 3, 12, 40, buf.len() - 1] {
            let mut b = buf.clone();
            b[i] ^= 0x10;
            assert!(DataHeader::decode(&b, 0x1234, &KEY).is_err(), "byte {i}");
        }
        // Truncation is a length error or a tag error, never a panic.
        for n in 0..buf.len() {
            assert!(DataHeader::decode(&buf[..n], 0x1234, &KEY).is_err());
        }
    }

    #[test]
    fn data_window_saturates_toward_the_safe_side() {
        let h = DataHeader {
            flags: 0,
            seq: 1,
            chunk: 100_000,
            block: 255,
            esi: MAX_ESI - 1,
            window_base: 1,
            frontier: 200_000,
            time_us: 0,
        };
        let mut buf = Vec::new();
        h.encode(1, &KEY, &[1, 2, 3], 3, &mut buf);
        assert_eq!(buf.len(), DATA_HEADER_LEN + 3 + TAG_LEN);
        let (d, s) = DataHeader::decode(&buf, 1, &KEY).unwrap();
        assert_eq!(s, &[1, 2, 3]);
        assert_eq!((d.block, d.esi), (255, MAX_ESI - 1));
        // Too far to tell: the base reads lower, the frontier lower, than they are.
        assert_eq!(d.window_base, 100_000 - 65_535);
        assert_eq!(d.frontier, 100_000 + 65_535);
        // A datagram without a symbol is malformed.
        buf.clear();
        h.encode(1, &KEY, &[], 0, &mut buf);
        assert!(matches!(
            DataHeader::decode(&buf, 1, &KEY),
            Err(DecodeError::Length { .. })
        ));
    }

    #[test]
    fn announce_round_trip() {
        let a = Announce {
            session: 77,
            http_port: 40000,
            state: SenderState::Waiting,
            receivers: 3,
            min_receivers: 40,
            chunks: 1000,
            bytes: 1 << 40,
            name: "lab-2026@3".into(),
        };
        let mut buf = Vec::new();
        a.encode(&mut buf);
        assert_eq!(Announce::decode(&buf).unwrap(), a);
        for n in 0..buf.len() {
            assert!(Announce::decode(&buf[..n]).is_err());
        }
        let long = Announce {
            name: "é".repeat(150),
            ..a
        };
        long.encode(&mut buf);
        assert_eq!(Announce::decode(&buf).unwrap().name, "é".repeat(100));
    }

    #[test]
    fn feedback_and_reply_round_trip() {
        let f = Feedback {
            flags: FEEDBACK_DONE,
            receiver: 5,
            seq: 77,
            first_missing: 10,
            seen_frontier: 14,
            rate_kbit: 300_000,
            loss_ppm: 50_000,
            delay_us: 1500,
            high_seq: 99,
            needs: (0..(MAX_FEEDBACK_ENTRIES as u32 + 5))
                .map(|i| Need {
                    chunk: 10 + i,
                    block: 0,
                    need: 3,
                })
                .collect(),
        };
        let mut buf = Vec::new();
        f.encode(1, &KEY, &mut buf);
        assert!(buf.len() <= MAX_UDP_PAYLOAD);
        let d = Feedback::decode(&buf, 1, &KEY).unwrap();
        assert_eq!(d.needs.len(), MAX_FEEDBACK_ENTRIES);
        assert_eq!(d.needs[..], f.needs[..MAX_FEEDBACK_ENTRIES]);
        assert_eq!(d.rate_kbit, 300_000);

        let r = Reply {
            receiver: 5,
            seq: 77,
            status: ReceiverStatus::Demoted,
            state: SenderState::Running,
            window_base: 3,
            frontier: 9,
        };
        r.encode(1, &KEY, &mut buf);
        assert_eq!(Reply::decode(&buf, 1, &KEY).unwrap(), r);
        assert_eq!(Feedback::decode(&buf, 1, &KEY), Err(DecodeError::Kind(4)));
    }

    #[test]
    fn foreign_bytes_are_not_ours() {
        assert_eq!(peek(b"GET / HTTP/1.1"), Err(DecodeError::NotOurs));
        assert_eq!(
            peek(&[MAGIC, 9, 1, 0, 0, 0, 0, 0]),
            Err(DecodeError::Version(9))
        );
        assert_eq!(
            peek(&[MAGIC, VERSION, 99, 0, 0, 0, 0, 0]),
            Err(DecodeError::Kind(99))
        );
    }
}
