//! The TFTP server (read requests only) for PXE's first stage: drives [`pxe::tftp`] on tokio
//! UDP sockets. Requests arrive on the listening socket (port 69); each transfer gets a
//! socket of its own (its transfer id) and a task. Files come from the boot directory only:
//! names are checked by [`pxe::tftp::resolve`], then the path's real location must still be
//! inside the directory (a symlink out of it is refused). Files are read whole into a cache
//! shared by concurrent transfers (40 machines booting fetch the same iPXE binary), up to
//! `MAX_FILE` each. GRUB's scripts (`grub/grub.cfg`, `grub/mac/MAC.cfg`) are made per request
//! by [`super::grub`], for the machine asking.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use pxe::tftp::{self, Action, ErrorCode, Packet, Transfer};
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use crate::serve::web::api::Shared;

/// The largest file served (iPXE binaries are ~100 KiB–1 MiB; kernels go over HTTP).
const MAX_FILE: u64 = 256 << 20;
/// The largest block: a 1500-byte Ethernet frame less the IP, UDP and TFTP headers.
pub(crate) const MAX_BLKSIZE: usize = 1468;

/// A file as read, with the modification time it had.
type Cached = (SystemTime, Arc<Vec<u8>>);

/// Files read once and shared, by path.
#[derive(Default)]
struct Cache(Mutex<HashMap<PathBuf, Cached>>);

impl Cache {
    async fn get(&self, path: &Path) -> std::io::Result<Arc<Vec<u8>>> {
        let meta = tokio::fs::metadata(path).await?;
        if !meta.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not a regular file",
            ));
        }
        if meta.len() > MAX_FILE {
            return Err(std::io::Error::other(format!(
                "{} bytes is more than TFTP serves here ({MAX_FILE}); serve it over HTTP",
                meta.len()
            )));
        }
        let mtime = meta.modified()?;
        if let Some((t, b)) = self.0.lock().expect("lock").get(path) {
            if *t == mtime {
                return Ok(b.clone());
            }
        }
        let bytes = Arc::new(tokio::fs::read(path).await?);
        self.0
            .lock()
            .expect("lock")
            .insert(path.to_path_buf(), (mtime, bytes.clone()));
        Ok(bytes)
    }
}

/// What PXE firmware can load from `dir` (the start-up banner): the first stages present,
/// or what is missing and how to get it.
pub(crate) fn first_stages(dir: &Path) -> String {
    let present: Vec<String> = [
        ("undionly.kpxe", "BIOS"),
        ("snponly.efi", "UEFI x64"),
        ("ipxe.efi", "UEFI x64"),
    ]
    .iter()
    .filter(|(f, _)| dir.join(f).is_file())
    .map(|(f, who)| format!("{f} ({who})"))
    .collect();
    if present.is_empty() {
        "no iPXE binaries yet (run deploy/build-boot-env)".into()
    } else {
        present.join(", ")
    }
}

/// Serves `root` on an already bound socket, with GRUB's scripts from `server`.
pub(crate) async fn serve(sock: UdpSocket, root: PathBuf, server: Shared) -> anyhow::Result<()> {
    let local = sock.local_addr()?;
    info!(%local, root = %root.display(), "TFTP serving");
    let cache = Arc::new(Cache::default());
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // An ICMP error from an earlier reply; the socket goes on.
                debug!(error = %e, "TFTP receive");
                continue;
            }
        };
        match tftp::parse(&buf[..n]) {
            Ok(Packet::Read(req)) => {
                let (root, cache, server) = (root.clone(), cache.clone(), server.clone());
                tokio::spawn(async move {
                    if let Err(e) = transfer(req, peer, local, root, cache, server).await {
                        warn!(%peer, error = %format!("{e:#}"), "TFTP transfer");
                    }
                });
            }
            Ok(Packet::Write(req)) => {
                info!(%peer, file = %req.filename, "TFTP write refused");
                let e = tftp::encode_error(
                    ErrorCode::AccessViolation,
                    "drover serves files over TFTP; it takes none",
                );
                let _ = sock.send_to(&e, peer).await;
            }
            // Stray packets of a transfer that ended: nothing to answer.
            Ok(_) => {}
            Err(e) => {
                debug!(%peer, error = %e, "TFTP");
                let e = tftp::encode_error(ErrorCode::IllegalOperation, &e.to_string());
                let _ = sock.send_to(&e, peer).await;
            }
        }
    }
}

/// The file a request names, if it may be served: its bytes, or the error to send.
async fn open(
    req: &tftp::Request,
    root: &Path,
    cache: &Cache,
) -> Result<Arc<Vec<u8>>, (ErrorCode, String)> {
    let path = tftp::resolve(root, &req.filename).map_err(|e| (ErrorCode::AccessViolation, e.0))?;
    let not_found = || {
        (
            ErrorCode::FileNotFound,
            format!("{}: no such file", req.filename),
        )
    };
    let real = tokio::fs::canonicalize(&path)
        .await
        .map_err(|_| not_found())?;
    let real_root = tokio::fs::canonicalize(root)
        .await
        .map_err(|_| not_found())?;
    if !real.starts_with(&real_root) {
        return Err((
            ErrorCode::AccessViolation,
            format!("{}: leads out of the boot directory", req.filename),
        ));
    }
    cache.get(&real).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => not_found(),
        _ => (ErrorCode::AccessViolation, format!("{}: {e}", req.filename)),
    })
}

/// One read transfer, on a socket of its own.
async fn transfer(
    req: tftp::Request,
    peer: SocketAddr,
    local: SocketAddr,
    root: PathBuf,
    cache: Arc<Cache>,
    server: Shared,
) -> anyhow::Result<()> {
    let sock = UdpSocket::bind(SocketAddr::new(local.ip(), 0)).await?;
    sock.connect(peer).await?;
    let opened = match super::grub::script(&server, &req.filename, peer.ip()).await {
        Some(Ok(script)) => Ok(Arc::new(script)),
        Some(Err(e)) => Err((
            ErrorCode::FileNotFound,
            format!("{}: {}", req.filename, e.message()),
        )),
        None => open(&req, &root, &cache).await,
    };
    let data = match opened {
        Ok(d) => d,
        Err((code, msg)) => {
            info!(%peer, file = %req.filename, "TFTP refused: {msg}");
            sock.send(&tftp::encode_error(code, &msg)).await?;
            return Ok(());
        }
    };
    let started = Instant::now();
    let (mut t, mut actions) = Transfer::start(&req, data.len() as u64, MAX_BLKSIZE, started);
    debug!(%peer, file = %req.filename, params = ?t.params(), "TFTP transfer");
    let mut buf = vec![0u8; 2048];
    let mut out = Vec::with_capacity(4 + MAX_BLKSIZE);
    loop {
        for a in actions.drain(..) {
            match a {
                Action::SendOack(p) | Action::SendError(p) => {
                    sock.send(&p).await?;
                }
                Action::SendBlock { block, offset, len } => {
                    out.clear();
                    out.extend_from_slice(&tftp::data_header(block as u16));
                    out.extend_from_slice(&data[offset as usize..offset as usize + len]);
                    // A full socket buffer or an ICMP error: the retransmission mends it.
                    let _ = sock.send(&out).await;
                }
                Action::Done => {
                    debug!(%peer, file = %req.filename, bytes = data.len(), secs = started.elapsed().as_secs_f64(), "TFTP sent");
                    return Ok(());
                }
                Action::Abort(why) => {
                    info!(%peer, file = %req.filename, "TFTP transfer ended: {why}");
                    return Ok(());
                }
            }
        }
        if t.is_over() {
            return Ok(());
        }
        let deadline = t.deadline().unwrap_or_else(Instant::now);
        tokio::select! {
            r = sock.recv(&mut buf) => {
                // An ICMP "port unreachable" for an earlier block: the client is gone, or
                // will ask again; the timeout decides.
                let Ok(n) = r else { continue };
                match tftp::parse(&buf[..n]) {
                    Ok(p) => actions = t.on_packet(&p, Instant::now()),
                    Err(e) => debug!(%peer, error = %e, "TFTP"),
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                actions = t.on_timeout(Instant::now());
            }
        }
    }
}
