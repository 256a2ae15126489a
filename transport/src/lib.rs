//! drover's networking drivers, shared by the daemon (`drover`) and the agent (`drover-agent`):
//! tokio + socket2 around the sans-IO multicast cores of `proto` — the sender (with its HTTP
//! registration and unicast chunk service), the receiver (which writes and verifies chunks
//! through `imaging`), the session description both ends agree on, the sockets (segmentation
//! and receive offload, buffer sizes, interface lookup) — and the byte, rate and duration
//! formats every command line uses.
//!
//! It does not know about the daemon's database, deployments or the admin CLI; the callers
//! decide what to send, to whom and when.

pub mod fmt;
pub mod live;
pub mod net;
pub mod receive;
pub mod send;
pub mod session;
pub mod swarm;
pub mod target;

/// The default group and port: in the IPv4 organisation-local scope (239.255.0.0/16, RFC
/// 2365), which routers at a site's edge do not forward.
pub const DEFAULT_GROUP: &str = "239.255.77.77:9077";

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The bytes of lowercase or uppercase hex, if it is hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The runtime a session (sender or receiver) runs on: one thread, as the protocol work is
/// sequential and a second worker only adds wake-ups and cross-thread hand-offs per datagram.
/// Disk and file work runs on its blocking threads.
pub fn session_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Disk and file threads run at ordinary priority, whatever the sending thread (which
        // raises its own) had when they were created. (A receiver, which lowers its own, is
        // not allowed to raise them back unless root: they then stay as low as it.)
        // SAFETY: setpriority on the calling thread (who = 0) has no memory effects.
        .on_thread_start(|| unsafe {
            libc::setpriority(libc::PRIO_PROCESS, 0, 0);
        })
        .build()
        .context("starting the runtime")
}
