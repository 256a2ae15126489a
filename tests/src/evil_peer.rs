//! A misbehaving BitTorrent peer for tests: it claims every piece of a torrent and then either
//! answers every request with random bytes (pieces that fail their hash) or, after the
//! handshake, sends garbage instead of messages. It announces itself to a tracker as a seed.

// The peer wire protocol is big-endian.
#![allow(clippy::big_endian_bytes)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;

/// How the peer misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mischief {
    /// Valid messages, wrong data: every block is random.
    CorruptPieces,
    /// A valid handshake, then random bytes.
    Garbage,
}

pub struct EvilPeer {
    pub port: u16,
    /// Connections accepted.
    pub connections: Arc<AtomicU64>,
    /// Blocks answered (with random bytes).
    pub blocks: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl EvilPeer {
    /// Listens on loopback for peers of the torrent `info_hash` with `pieces` pieces.
    pub fn start(info_hash: [u8; 20], pieces: usize, mischief: Mischief) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (connections, blocks, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (c, b, s) = (connections.clone(), blocks.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        c.fetch_add(1, Ordering::Relaxed);
                        let b = b.clone();
                        std::thread::spawn(move || {
                            let _ = serve(conn, info_hash, pieces, mischief, &b);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Self {
            port,
            connections,
            blocks,
            stop,
        }
    }

    /// Announces the peer as a seed to the tracker at `addr` (`/announce`).
    pub fn announce(&self, addr: &str, info_hash: [u8; 20]) {
        let hash: String = info_hash.iter().map(|b| format!("%{b:02x}")).collect();
        let path = format!(
            "/announce?info_hash={hash}&peer_id=-EVIL00-0123456789ab&port={}&left=0&event=started&compact=1",
            self.port
        );
        let (status, body) = crate::server::http_bytes_auth(addr, &path, "none");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert!(
            !body.windows(7).any(|w| w == b"failure"),
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
}

impl Drop for EvilPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    mut c: TcpStream,
    info_hash: [u8; 20],
    pieces: usize,
    mischief: Mischief,
    blocks: &AtomicU64,
) -> std::io::Result<()> {
    c.set_nonblocking(false)?;
    c.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut hs = [0u8; 68];
    c.read_exact(&mut hs)?;
    let mut reply = Vec::with_capacity(68);
    reply.push(19);
    reply.extend_from_slice(b"BitTorrent protocol");
    reply.extend_from_slice(&[0; 8]);
    reply.extend_from_slice(&info_hash);
    reply.extend_from_slice(b"-EVIL00-0123456789ab");
    c.write_all(&reply)?;
    let mut rng = rand::thread_rng();
    if mischief == Mischief::Garbage {
        for _ in 0..64 {
            let mut junk = vec![0u8; 1024];
            rng.fill_bytes(&mut junk);
            c.write_all(&junk)?;
        }
        return Ok(());
    }
    // Every piece (the spare bits of the last byte clear), then unchoked.
    let mut bits = vec![0u8; pieces.div_ceil(8)];
    for i in 0..pieces {
        bits[i / 8] |= 0x80 >> (i % 8);
    }
    message(&mut c, 5, &bits)?;
    message(&mut c, 1, &[])?;
    loop {
        let mut len = [0u8; 4];
        c.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 {
            continue;
        }
        let mut msg = vec![0u8; len];
        c.read_exact(&mut msg)?;
        if msg[0] == 6 && msg.len() == 13 {
            // request: index, begin, length → piece: index, begin, random block.
            let n = u32::from_be_bytes(msg[9..13].try_into().unwrap()) as usize;
            let mut body = msg[1..9].to_vec();
            let mut block = vec![0u8; n.min(1 << 17)];
            rng.fill_bytes(&mut block);
            body.extend_from_slice(&block);
            message(&mut c, 7, &body)?;
            blocks.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn message(c: &mut TcpStream, id: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut m = Vec::with_capacity(5 + payload.len());
    m.extend_from_slice(&(1 + payload.len() as u32).to_be_bytes());
    m.push(id);
    m.extend_from_slice(payload);
    c.write_all(&m)
}
