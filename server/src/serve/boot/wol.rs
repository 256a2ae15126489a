//! Sends wake-on-LAN magic packets ([`pxe::wol`]) out of the lab interface.

use std::net::{SocketAddr, UdpSocket};

use anyhow::Context;

use crate::serve::inventory::mac::Mac;
use transport::net::Iface;

/// Copies of each packet: a lost broadcast is not retried by anyone, and a machine ignores
/// the extra ones.
const COPIES: usize = 3;

/// Sends each machine's magic packet to `to` (the subnet broadcast, usually port 9).
pub(crate) fn send(iface: &Iface, to: SocketAddr, macs: &[Mac]) -> anyhow::Result<()> {
    let sock = UdpSocket::bind((iface.addr, 0))
        .with_context(|| format!("binding a wake-on-LAN socket on {}", iface.addr))?;
    sock.set_broadcast(true)?;
    for mac in macs {
        let p = pxe::wol::magic_packet(mac.0);
        for _ in 0..COPIES {
            sock.send_to(&p, to)
                .with_context(|| format!("sending the magic packet for {mac} to {to}"))?;
        }
    }
    Ok(())
}

/// Why nothing can be woken without a lab interface.
pub(crate) const NO_IFACE: &str =
    "wake-on-LAN is off: the server has no lab interface (start it with --iface)";

/// Sends the machines' magic packets to the interface's subnet broadcast, port `port`, off
/// the async threads. Returns where they went.
pub(crate) async fn wake(iface: Iface, port: u16, macs: Vec<Mac>) -> anyhow::Result<SocketAddr> {
    let to = SocketAddr::from((iface.broadcast(), port));
    tokio::task::spawn_blocking(move || send(&iface, to, &macs)).await??;
    Ok(to)
}
