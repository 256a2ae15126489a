//! Sends wake-on-LAN magic packets ([`pxe::wol`]) out of the lab interface, for the API and
//! the scheduler ([`Waker`]).

use std::net::{SocketAddr, UdpSocket};

use anyhow::Context;

use crate::serve::db::{Db, DbError};
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

/// Wakes machines for the API and the scheduler alike: sends their magic packets to the lab
/// interface's subnet broadcast and writes the wake-up in the audit log.
pub(crate) struct Waker {
    db: Db,
    iface: Option<Iface>,
    port: u16,
}

impl Waker {
    pub(crate) fn new(db: Db, iface: Option<Iface>, port: u16) -> Self {
        Self { db, iface, port }
    }

    /// Sends the machines' magic packets (to port `port` of the subnet broadcast) off the
    /// async threads and audits it as `actor`'s. Returns where they went.
    pub(crate) async fn wake(&self, actor: &str, macs: &[Mac]) -> Result<SocketAddr, DbError> {
        let Some(iface) = self.iface.clone() else {
            return Err(DbError::Unavailable(NO_IFACE.into()));
        };
        let to = SocketAddr::from((iface.broadcast(), self.port));
        let list = macs.to_vec();
        tokio::task::spawn_blocking(move || send(&iface, to, &list))
            .await
            .map_err(anyhow::Error::from)??;
        let names: Vec<String> = macs.iter().map(Mac::to_string).collect();
        self.db
            .audit(actor, "wake", &format!("{} via {to}", names.join(" ")))
            .await?;
        Ok(to)
    }
}
