//! A read-only NBD server (the fixed newstyle handshake and simple replies of the NBD protocol,
//! `doc/proto.md` of the NBD project) over an image's disk and partitions, for `qemu-img`,
//! `nbdcopy`, `nbd-client` and QEMU's `-drive file=nbd:...`.
//!
//! Each export is a piece of one [`BlockDevice`]: the empty name and `disk` are the whole
//! disk, `p1`, `p2`, ... its partitions, `vg-lv` its plain LVM logical volumes. Writes, trims and zeroing are refused with `EPERM`
//! (their payload is read and dropped, so the connection stays in step); structured replies,
//! TLS and metadata contexts are declined, which every client handles by falling back. One
//! thread per connection; the export may be read over several at once (`CAN_MULTI_CONN`).
#![allow(clippy::big_endian_bytes)] // NBD is big-endian on the wire.

use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::Arc;

use imaging::device::BlockDevice;
use imaging::explore::Piece;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const CLIENT_NO_ZEROES: u32 = 2;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_INVALID: u32 = (1 << 31) + 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

const TFLAG_HAS_FLAGS: u16 = 1;
const TFLAG_READ_ONLY: u16 = 2;
const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_CACHE: u16 = 5;

const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;

/// The largest read or write payload a request may carry (what the block-size info says).
pub(crate) const MAX_REQUEST: u32 = 32 << 20;
/// The longest option a client may send (names are short).
const MAX_OPTION: u32 = 64 << 10;

/// One export: a piece of the device (the disk, a partition, a logical volume), by its name.
pub(crate) type Export = Piece;

/// What the server serves and to whom.
pub(crate) struct Server {
    pub(crate) dev: Arc<dyn BlockDevice>,
    pub(crate) exports: Vec<Export>,
    /// Clients allowed besides loopback.
    pub(crate) allow: Vec<IpAddr>,
}

impl Server {
    fn export(&self, name: &str) -> Option<&Export> {
        let name = if name.is_empty() { "disk" } else { name };
        self.exports.iter().find(|e| e.name == name)
    }

    /// Accepts connections until the listener fails, one thread each.
    pub(crate) fn serve(self: Arc<Self>, listener: TcpListener) -> io::Result<()> {
        loop {
            let (stream, peer) = listener.accept()?;
            if !peer.ip().is_loopback() && !self.allow.contains(&peer.ip()) {
                eprintln!("nbd: refused {peer}: not loopback and not given with --allow");
                continue;
            }
            let me = self.clone();
            std::thread::spawn(move || {
                if let Err(e) = me.connection(stream) {
                    if e.kind() != io::ErrorKind::UnexpectedEof {
                        eprintln!("nbd: {peer}: {e}");
                    }
                }
            });
        }
    }

    /// One client: the handshake, then requests until it disconnects.
    pub(crate) fn connection(&self, mut s: TcpStream) -> io::Result<()> {
        s.set_nodelay(true)?;
        let export = match self.handshake(&mut s)? {
            Some(e) => e.clone(),
            None => return Ok(()),
        };
        self.transmission(&mut s, &export)
    }

    fn handshake(&self, s: &mut TcpStream) -> io::Result<Option<&Export>> {
        let mut hello = Vec::with_capacity(18);
        hello.extend(NBDMAGIC.to_be_bytes());
        hello.extend(IHAVEOPT.to_be_bytes());
        hello.extend((FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        s.write_all(&hello)?;
        let client_flags = read_u32(s)?;
        let no_zeroes = client_flags & CLIENT_NO_ZEROES != 0;
        loop {
            if read_u64(s)? != IHAVEOPT {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "bad option magic",
                ));
            }
            let opt = read_u32(s)?;
            let len = read_u32(s)?;
            if len > MAX_OPTION {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("option of {len} bytes"),
                ));
            }
            let mut data = vec![0u8; len as usize];
            s.read_exact(&mut data)?;
            match opt {
                OPT_EXPORT_NAME => {
                    let name = String::from_utf8_lossy(&data);
                    let Some(e) = self.export(&name) else {
                        // The old-style option has no error reply: the connection ends.
                        return Ok(None);
                    };
                    let mut r = Vec::with_capacity(134);
                    r.extend(e.len.to_be_bytes());
                    r.extend(transmission_flags().to_be_bytes());
                    if !no_zeroes {
                        r.extend([0u8; 124]);
                    }
                    s.write_all(&r)?;
                    return Ok(Some(e));
                }
                OPT_ABORT => {
                    reply(s, opt, REP_ACK, &[])?;
                    return Ok(None);
                }
                OPT_LIST => {
                    for e in &self.exports {
                        let mut d = Vec::new();
                        d.extend((e.name.len() as u32).to_be_bytes());
                        d.extend(e.name.as_bytes());
                        reply(s, opt, REP_SERVER, &d)?;
                    }
                    reply(s, opt, REP_ACK, &[])?;
                }
                OPT_INFO | OPT_GO => {
                    let Some(name) = go_name(&data) else {
                        reply(s, opt, REP_ERR_INVALID, b"malformed NBD_OPT_GO")?;
                        continue;
                    };
                    let Some(e) = self.export(&name) else {
                        let msg = format!("no export {name:?}");
                        reply(s, opt, REP_ERR_UNKNOWN, msg.as_bytes())?;
                        continue;
                    };
                    let mut info = Vec::new();
                    info.extend(INFO_EXPORT.to_be_bytes());
                    info.extend(e.len.to_be_bytes());
                    info.extend(transmission_flags().to_be_bytes());
                    reply(s, opt, REP_INFO, &info)?;
                    let mut bs = Vec::new();
                    bs.extend(INFO_BLOCK_SIZE.to_be_bytes());
                    bs.extend(1u32.to_be_bytes());
                    bs.extend(4096u32.to_be_bytes());
                    bs.extend(MAX_REQUEST.to_be_bytes());
                    reply(s, opt, REP_INFO, &bs)?;
                    reply(s, opt, REP_ACK, &[])?;
                    if opt == OPT_GO {
                        return Ok(Some(e));
                    }
                }
                _ => reply(s, opt, REP_ERR_UNSUP, &[])?,
            }
        }
    }

    fn transmission(&self, s: &mut TcpStream, e: &Export) -> io::Result<()> {
        let mut buf = Vec::new();
        loop {
            let mut req = [0u8; 28];
            s.read_exact(&mut req)?;
            let magic = u32::from_be_bytes(req[0..4].try_into().expect("4"));
            if magic != REQUEST_MAGIC {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "bad request magic",
                ));
            }
            let kind = u16::from_be_bytes(req[6..8].try_into().expect("2"));
            let handle = &req[8..16];
            let offset = u64::from_be_bytes(req[16..24].try_into().expect("8"));
            let len = u32::from_be_bytes(req[24..28].try_into().expect("4"));
            let in_range = offset
                .checked_add(len as u64)
                .is_some_and(|end| end <= e.len);
            match kind {
                CMD_READ => {
                    if len > MAX_REQUEST || !in_range {
                        simple(s, handle, EINVAL, &[])?;
                        continue;
                    }
                    buf.resize(len as usize, 0);
                    match e.read(self.dev.as_ref(), &mut buf, offset) {
                        Ok(()) => simple(s, handle, 0, &buf)?,
                        Err(err) => {
                            eprintln!("nbd: read of {len} bytes at {offset} of {}: {err}", e.name);
                            simple(s, handle, EIO, &[])?;
                        }
                    }
                }
                CMD_WRITE => {
                    // Read the payload and drop it, to stay in step with the client.
                    if len > MAX_REQUEST {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("write of {len} bytes"),
                        ));
                    }
                    io::copy(&mut (&mut *s).take(len as u64), &mut io::sink())?;
                    simple(s, handle, EPERM, &[])?;
                }
                CMD_DISC => return Ok(()),
                CMD_FLUSH | CMD_CACHE => simple(s, handle, 0, &[])?,
                _ => simple(s, handle, EPERM, &[])?,
            }
        }
    }
}

fn transmission_flags() -> u16 {
    TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_CAN_MULTI_CONN
}

/// The export name of an `NBD_OPT_GO`/`NBD_OPT_INFO` payload.
fn go_name(data: &[u8]) -> Option<String> {
    let n = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let name = data.get(4..4 + n)?;
    let reqs = u16::from_be_bytes(data.get(4 + n..6 + n)?.try_into().ok()?) as usize;
    if data.len() != 6 + n + 2 * reqs {
        return None;
    }
    Some(String::from_utf8_lossy(name).into_owned())
}

fn reply(s: &mut TcpStream, opt: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    let mut r = Vec::with_capacity(20 + data.len());
    r.extend(REPLY_MAGIC.to_be_bytes());
    r.extend(opt.to_be_bytes());
    r.extend(kind.to_be_bytes());
    r.extend((data.len() as u32).to_be_bytes());
    r.extend(data);
    s.write_all(&r)
}

fn simple(s: &mut TcpStream, handle: &[u8], error: u32, data: &[u8]) -> io::Result<()> {
    let mut head = [0u8; 16];
    head[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    head[4..8].copy_from_slice(&error.to_be_bytes());
    head[8..16].copy_from_slice(handle);
    if data.is_empty() {
        return s.write_all(&head);
    }
    // One write for small replies; a large one without copying it.
    s.write_all(&head)?;
    s.write_all(data)
}

fn read_u32(s: &mut TcpStream) -> io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(s: &mut TcpStream) -> io::Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

#[cfg(test)]
mod tests;
