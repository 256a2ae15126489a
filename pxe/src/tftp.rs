//! TFTP, read requests only (RFC 1350), with the options PXE firmware and iPXE use: blksize
//! (RFC 2348), tsize and timeout (RFC 2349), windowsize (RFC 7440), negotiated through OACK
//! (RFC 2347). Sans-IO: [`parse`] and the `encode_*` functions are the wire format;
//! [`Transfer`] is one read transfer's state machine — the driver feeds it the client's
//! packets and the time, and it answers with what to send (which block: the driver reads those
//! bytes of the file) and when it wants to be woken. Write requests are refused.
//!
//! [`resolve`] turns a requested file name into a path under the boot directory, refusing
//! absolute paths, `..` and anything that is not a plain relative name; the driver then
//! refuses symlinks that lead out of the directory (that needs the filesystem).

// TFTP's numbers are in network byte order (RFC 1350); drover's own formats are little-endian.
#![allow(clippy::big_endian_bytes)]

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// Opcodes.
const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// The block size without a blksize option.
pub const DEFAULT_BLKSIZE: usize = 512;
/// The largest blksize RFC 2348 allows.
pub const MAX_BLKSIZE: usize = 65464;
/// The server's default retransmission timeout (a client may ask for another, 1..=255 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Retransmissions of one window before the transfer is given up.
pub const MAX_RETRIES: u32 = 6;
/// The largest window the server agrees to (RFC 7440 allows 65535).
pub const MAX_WINDOW: u16 = 64;

/// TFTP error codes (RFC 1350, 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    DiskFull = 3,
    IllegalOperation = 4,
    UnknownTransferId = 5,
    FileExists = 6,
    NoSuchUser = 7,
    OptionRefused = 8,
}

impl ErrorCode {
    fn from_u16(v: u16) -> Self {
        match v {
            1 => Self::FileNotFound,
            2 => Self::AccessViolation,
            3 => Self::DiskFull,
            4 => Self::IllegalOperation,
            5 => Self::UnknownTransferId,
            6 => Self::FileExists,
            7 => Self::NoSuchUser,
            8 => Self::OptionRefused,
            _ => Self::NotDefined,
        }
    }
}

/// A request (RRQ or WRQ).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub filename: String,
    /// `octet` or `netascii` (lowercased).
    pub mode: String,
    /// Options in the order sent, names lowercased.
    pub options: Vec<(String, String)>,
}

/// A decoded packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Read(Request),
    Write(Request),
    Data { block: u16, data: &'a [u8] },
    Ack(u16),
    Error { code: ErrorCode, message: String },
    OptionAck(Vec<(String, String)>),
}

/// Why a datagram is not a TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed TFTP packet: {}", self.0)
    }
}

impl std::error::Error for ParseError {}

fn bad(why: impl Into<String>) -> ParseError {
    ParseError(why.into())
}

/// Splits NUL-terminated strings (every one must be terminated).
fn strings(mut b: &[u8]) -> Result<Vec<String>, ParseError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let end = b
            .iter()
            .position(|&c| c == 0)
            .ok_or_else(|| bad("a string without its terminating NUL"))?;
        let s = std::str::from_utf8(&b[..end]).map_err(|_| bad("a string that is not UTF-8"))?;
        out.push(s.to_string());
        b = &b[end + 1..];
    }
    Ok(out)
}

fn request(body: &[u8]) -> Result<Request, ParseError> {
    let s = strings(body)?;
    if s.len() < 2 {
        return Err(bad("a request without file name and mode"));
    }
    if s.len() % 2 != 0 {
        return Err(bad("an option without its value"));
    }
    if s[0].is_empty() {
        return Err(bad("an empty file name"));
    }
    let options = s[2..]
        .chunks(2)
        .map(|kv| (kv[0].to_ascii_lowercase(), kv[1].clone()))
        .collect();
    Ok(Request {
        filename: s[0].clone(),
        mode: s[1].to_ascii_lowercase(),
        options,
    })
}

/// Decodes one datagram.
pub fn parse(b: &[u8]) -> Result<Packet<'_>, ParseError> {
    if b.len() < 2 {
        return Err(bad(format!("{} byte(s)", b.len())));
    }
    let op = u16::from_be_bytes([b[0], b[1]]);
    let body = &b[2..];
    let num = || {
        if body.len() < 2 {
            Err(bad("a block number cut short"))
        } else {
            Ok(u16::from_be_bytes([body[0], body[1]]))
        }
    };
    match op {
        RRQ => Ok(Packet::Read(request(body)?)),
        WRQ => Ok(Packet::Write(request(body)?)),
        DATA => Ok(Packet::Data {
            block: num()?,
            data: &body[2..],
        }),
        ACK if body.len() == 2 => Ok(Packet::Ack(num()?)),
        ACK => Err(bad(format!("an ACK of {} bytes", b.len()))),
        ERROR => {
            let code = ErrorCode::from_u16(num()?);
            let msg = strings(&body[2..]).unwrap_or_default();
            Ok(Packet::Error {
                code,
                message: msg.into_iter().next().unwrap_or_default(),
            })
        }
        OACK => {
            let s = strings(body)?;
            if s.len() % 2 != 0 {
                return Err(bad("an option without its value"));
            }
            Ok(Packet::OptionAck(
                s.chunks(2)
                    .map(|kv| (kv[0].to_ascii_lowercase(), kv[1].clone()))
                    .collect(),
            ))
        }
        op => Err(bad(format!("opcode {op}"))),
    }
}

/// A DATA packet's header; the block's bytes follow it.
pub fn data_header(block: u16) -> [u8; 4] {
    let b = block.to_be_bytes();
    [0, DATA as u8, b[0], b[1]]
}

/// An ERROR packet.
pub fn encode_error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut out = vec![0, ERROR as u8];
    out.extend_from_slice(&(code as u16).to_be_bytes());
    out.extend(message.bytes().filter(|&c| c != 0));
    out.push(0);
    out
}

/// An OACK packet.
pub fn encode_oack(options: &[(String, String)]) -> Vec<u8> {
    let mut out = vec![0, OACK as u8];
    for (k, v) in options {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// An ACK packet (for tests and clients).
pub fn encode_ack(block: u16) -> Vec<u8> {
    let b = block.to_be_bytes();
    vec![0, ACK as u8, b[0], b[1]]
}

/// A read request (for tests and clients).
pub fn encode_rrq(filename: &str, mode: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut out = vec![0, RRQ as u8];
    for s in [filename, mode]
        .into_iter()
        .chain(options.iter().flat_map(|(k, v)| [*k, *v]))
    {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    out
}

/// Why a requested file name is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// The path under `root` of a requested file: names of normal components only (`\` taken
/// as `/`, as Windows-minded firmware sends it). A leading `/` means the boot directory
/// itself, as with tftpd-hpa's `--secure` (GRUB asks for `/grub/grub.cfg`); `..`, `.` tricks
/// and NUL are refused.
pub fn resolve(root: &Path, requested: &str) -> Result<PathBuf, Refused> {
    let name = requested.replace('\\', "/");
    let name = name.trim_start_matches('/');
    if name.contains('\0') || name.is_empty() {
        return Err(Refused(format!("{requested:?}: not a file name")));
    }
    let mut out = root.to_path_buf();
    for c in Path::new(&name).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => {
                return Err(Refused(format!(
                    "{requested:?}: only names inside the boot directory are served"
                )))
            }
        }
    }
    if out == root {
        return Err(Refused(format!("{requested:?}: not a file name")));
    }
    Ok(out)
}

/// What the server agreed to for one transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub blksize: usize,
    pub windowsize: u16,
    pub timeout: Duration,
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this OACK packet.
    SendOack(Vec<u8>),
    /// Send block `block` (wire number `block as u16`): bytes `offset..offset + len` of the
    /// file after [`data_header`].
    SendBlock { block: u64, offset: u64, len: usize },
    /// Send this ERROR packet; the transfer is over.
    SendError(Vec<u8>),
    /// The last block was acknowledged: the transfer is over.
    Done,
    /// The client gave up (it sent an ERROR), or retries ran out: over, nothing to send.
    Abort(String),
}

/// One read transfer, from the request to the last ACK.
#[derive(Debug)]
pub struct Transfer {
    params: Params,
    file_len: u64,
    /// Blocks in the file, counting the final short (maybe empty) one.
    blocks: u64,
    /// The highest block the client acknowledged (0: none; the OACK is "block 0").
    acked: u64,
    /// Waiting for the ACK of the OACK before any data.
    oack_sent: Option<Vec<u8>>,
    /// When the current window (or OACK) was sent.
    sent_at: Instant,
    retries: u32,
    over: bool,
}

impl Transfer {
    /// Starts a transfer for `req` of a file of `file_len` bytes. `max_blksize` is the
    /// largest block the link carries (1468 on a 1500-byte MTU). Returns the transfer and
    /// what to send first.
    pub fn start(
        req: &Request,
        file_len: u64,
        max_blksize: usize,
        now: Instant,
    ) -> (Self, Vec<Action>) {
        let mut params = Params {
            blksize: DEFAULT_BLKSIZE,
            windowsize: 1,
            timeout: DEFAULT_TIMEOUT,
        };
        let mut agreed = Vec::new();
        for (k, v) in &req.options {
            match k.as_str() {
                "blksize" => {
                    if let Ok(n) = v.parse::<usize>() {
                        if (8..=MAX_BLKSIZE).contains(&n) {
                            params.blksize = n.min(max_blksize.max(8));
                            agreed.push((k.clone(), params.blksize.to_string()));
                        }
                    }
                }
                "tsize" => agreed.push((k.clone(), file_len.to_string())),
                "timeout" => {
                    if let Ok(n) = v.parse::<u64>() {
                        if (1..=255).contains(&n) {
                            params.timeout = Duration::from_secs(n);
                            agreed.push((k.clone(), n.to_string()));
                        }
                    }
                }
                "windowsize" => {
                    if let Ok(n) = v.parse::<u16>() {
                        if n >= 1 {
                            params.windowsize = n.min(MAX_WINDOW);
                            agreed.push((k.clone(), params.windowsize.to_string()));
                        }
                    }
                }
                // Unknown options are left out of the OACK (RFC 2347).
                _ => {}
            }
        }
        let blocks = file_len / params.blksize as u64 + 1;
        let mut t = Self {
            params,
            file_len,
            blocks,
            acked: 0,
            oack_sent: None,
            sent_at: now,
            retries: 0,
            over: false,
        };
        let first = if agreed.is_empty() {
            t.window()
        } else {
            let oack = encode_oack(&agreed);
            t.oack_sent = Some(oack.clone());
            vec![Action::SendOack(oack)]
        };
        (t, first)
    }

    /// What was agreed.
    pub fn params(&self) -> Params {
        self.params
    }

    /// Whether the transfer is over.
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// The blocks of the window after the last acknowledged one.
    fn window(&self) -> Vec<Action> {
        let bs = self.params.blksize as u64;
        (self.acked + 1..=(self.acked + u64::from(self.params.windowsize)).min(self.blocks))
            .map(|b| {
                let offset = (b - 1) * bs;
                Action::SendBlock {
                    block: b,
                    offset,
                    len: (self.file_len.saturating_sub(offset)).min(bs) as usize,
                }
            })
            .collect()
    }

    /// The full block number an ACK's 16-bit number stands for: the one nearest the window,
    /// so block numbers may wrap past 65535.
    fn unwrap_block(&self, n: u16) -> u64 {
        let base = self.acked;
        let cand = (base & !0xffff) | u64::from(n);
        [cand.wrapping_sub(0x10000), cand, cand + 0x10000]
            .into_iter()
            .filter(|&c| c <= self.blocks)
            .min_by_key(|&c| c.abs_diff(base))
            .unwrap_or(cand)
    }

    /// A packet from the client's transfer port.
    pub fn on_packet(&mut self, p: &Packet<'_>, now: Instant) -> Vec<Action> {
        if self.over {
            return Vec::new();
        }
        match p {
            Packet::Ack(n) => {
                let block = self.unwrap_block(*n);
                if self.oack_sent.is_some() {
                    if *n != 0 {
                        return Vec::new();
                    }
                    self.oack_sent = None;
                } else if block <= self.acked || block > self.blocks {
                    // A duplicate or stale ACK: the window in flight answers it.
                    return Vec::new();
                }
                self.acked = block.max(self.acked);
                self.retries = 0;
                self.sent_at = now;
                if self.acked >= self.blocks {
                    self.over = true;
                    return vec![Action::Done];
                }
                // A window is acknowledged by its last block; an earlier ACK means the
                // client lost what followed: either way, the next window starts after it.
                self.window()
            }
            Packet::Error { code, message } => {
                self.over = true;
                vec![Action::Abort(format!(
                    "the client ended it: {code:?} {message}"
                ))]
            }
            _ => {
                self.over = true;
                vec![Action::SendError(encode_error(
                    ErrorCode::IllegalOperation,
                    "only ACKs are expected during a read",
                ))]
            }
        }
    }

    /// When the driver should call [`on_timeout`](Self::on_timeout).
    pub fn deadline(&self) -> Option<Instant> {
        (!self.over).then(|| self.sent_at + self.params.timeout)
    }

    /// No ACK came in time: send the OACK or the window again, or give up.
    pub fn on_timeout(&mut self, now: Instant) -> Vec<Action> {
        if self.over || now < self.sent_at + self.params.timeout {
            return Vec::new();
        }
        self.retries += 1;
        if self.retries > MAX_RETRIES {
            self.over = true;
            return vec![Action::Abort(format!(
                "no acknowledgement after {MAX_RETRIES} retransmissions"
            ))];
        }
        self.sent_at = now;
        match &self.oack_sent {
            Some(o) => vec![Action::SendOack(o.clone())],
            None => self.window(),
        }
    }
}

#[cfg(test)]
#[path = "tftp_tests.rs"]
mod tests;
