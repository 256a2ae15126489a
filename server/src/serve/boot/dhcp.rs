//! DHCP on the lab interface. proxyDHCP (`--dhcp proxy`) drives [`pxe::dhcp`] on UDP ports
//! 67 and 4011, both bound to the interface: PXE clients get the boot server and file (iPXE
//! gets its script's URL); everything else is left to the lab's own DHCP server, and no
//! address is ever offered. Full DHCP (`--dhcp full`, for an isolated lab) drives
//! [`pxe::dhcp_full`] on port 67: addresses from `--dhcp-range`, leases kept in the database.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use anyhow::Context;
use pxe::dhcp::{self, BootConfig, Ignored, PXE_PORT};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};
use transport::net::Iface;

/// A UDP socket on `port` of every address, sending and receiving on `iface` only.
fn socket(iface: &Iface, port: u16) -> anyhow::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(iface.name.as_bytes()))
        .with_context(|| format!("binding to interface {}", iface.name))?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())
        .with_context(|| format!("binding UDP port {port} (another DHCP server running?)"))?;
    s.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(s.into())?)
}

/// Full DHCP's socket, bound (an error now if another DHCP server holds port 67).
pub(crate) fn bind_full(iface: &Iface) -> anyhow::Result<UdpSocket> {
    socket(iface, 67)
}

/// Serves addresses from `server`'s pool until the task is dropped, persisting leases.
pub(crate) async fn full(
    sock: UdpSocket,
    iface: Iface,
    mut server: pxe::dhcp_full::Server,
    db: crate::serve::db::Db,
    inventory_changed: std::sync::Arc<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    let now = || (crate::serve::db::now_ms() / 1000) as u64;
    server.load(
        db.leases()
            .dhcp_leases()
            .await?
            .into_iter()
            .map(|(m, ip, exp)| pxe::dhcp_full::Lease {
                mac: m.0,
                ip,
                expires: (exp / 1000) as u64,
                bound: true,
            }),
    );
    reserve(&mut server, &db).await?;
    info!(iface = %iface.name, "full DHCP serving addresses on port 67");
    let mut buf = vec![0u8; 1500];
    loop {
        let r = tokio::select! {
            r = sock.recv_from(&mut buf) => r,
            () = inventory_changed.notified() => {
                if let Err(e) = reserve(&mut server, &db).await {
                    warn!(error = %format!("{e:#}"), "DHCP: reading reservations");
                }
                continue;
            }
        };
        let (n, from) = match r {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "DHCP receive");
                continue;
            }
        };
        let msg = match dhcp::decode(&buf[..n]) {
            Ok(m) => m,
            Err(e) => {
                debug!(%from, "{e}");
                continue;
            }
        };
        let (reply, changes) = server.handle(&msg, now());
        for c in changes {
            use pxe::dhcp_full::Change;
            let r = match &c {
                Change::Bound(l) => {
                    info!(mac = %crate::serve::inventory::mac::Mac(l.mac), ip = %l.ip, "DHCP lease");
                    db.leases()
                        .save_dhcp_lease(
                            crate::serve::inventory::mac::Mac(l.mac),
                            l.ip,
                            l.expires as i64 * 1000,
                        )
                        .await
                }
                Change::Released { mac, ip } | Change::Declined { mac, ip } => {
                    info!(mac = %crate::serve::inventory::mac::Mac(*mac), %ip, "DHCP {c:?}");
                    db.leases()
                        .remove_dhcp_lease(crate::serve::inventory::mac::Mac(*mac))
                        .await
                }
            };
            if let Err(e) = r {
                warn!(error = %format!("{e:#}"), "DHCP: recording a lease");
            }
        }
        let Some(reply) = reply else { continue };
        let to = SocketAddr::V4(dhcp::destination(&msg));
        match dhcp::encode(&reply) {
            Ok(b) => {
                if let Err(e) = sock.send_to(&b, to).await {
                    warn!(%to, error = %e, "DHCP: sending the answer");
                }
            }
            Err(e) => warn!("{e}"),
        }
    }
}

/// Takes the inventory's reservations (ones it cannot keep are logged with their reason)
/// and the machines' UEFI loaders.
async fn reserve(
    server: &mut pxe::dhcp_full::Server,
    db: &crate::serve::db::Db,
) -> anyhow::Result<()> {
    let all = db.inventory().reservations().await?;
    let n = all.len();
    for e in server.set_reservations(all.into_iter().map(|(m, ip)| (m.0, ip))) {
        warn!("DHCP: reservation left out: {e}");
    }
    server.set_uefi_loaders(db.inventory().uefi_loaders().await?);
    debug!(reservations = n, "DHCP reservations loaded");
    Ok(())
}

/// proxyDHCP's two sockets, bound.
pub(crate) struct Proxy {
    iface: Iface,
    s67: UdpSocket,
    s4011: UdpSocket,
}

/// Binds ports 67 and 4011 on `iface` (an error now if another DHCP server holds them).
pub(crate) fn bind(iface: Iface) -> anyhow::Result<Proxy> {
    Ok(Proxy {
        s67: socket(&iface, 67)?,
        s4011: socket(&iface, PXE_PORT)?,
        iface,
    })
}

/// Answers PXE clients until the task is dropped; what each UEFI machine starts follows its
/// group (read again when the inventory changes).
pub(crate) async fn proxy(
    p: Proxy,
    mut cfg: BootConfig,
    db: crate::serve::db::Db,
    inventory_changed: std::sync::Arc<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    let Proxy { iface, s67, s4011 } = p;
    cfg.uefi_loaders = db.inventory().uefi_loaders().await?;
    info!(iface = %iface.name, server = %iface.addr, "proxyDHCP answering PXE clients on ports 67 and 4011");
    let mut b67 = vec![0u8; 1500];
    let mut b4011 = vec![0u8; 1500];
    loop {
        let (sock, buf, port, r) = tokio::select! {
            r = s67.recv_from(&mut b67) => (&s67, &b67, 67, r),
            r = s4011.recv_from(&mut b4011) => (&s4011, &b4011, PXE_PORT, r),
            () = inventory_changed.notified() => {
                match db.inventory().uefi_loaders().await {
                    Ok(l) => cfg.uefi_loaders = l,
                    Err(e) => warn!(error = %format!("{e:#}"), "proxyDHCP: reading the groups' UEFI loaders"),
                }
                continue;
            }
        };
        let (n, from) = match r {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "DHCP receive");
                continue;
            }
        };
        if let Some((reply, to)) = answer(&buf[..n], from, port, &cfg) {
            if let Err(e) = sock.send_to(&reply, to).await {
                warn!(%to, error = %e, "proxyDHCP: sending the answer");
            }
        }
    }
}

/// The answer to one datagram and where it goes, if it gets one.
fn answer(
    data: &[u8],
    from: SocketAddr,
    port: u16,
    cfg: &BootConfig,
) -> Option<(Vec<u8>, SocketAddr)> {
    let msg = match dhcp::decode(data) {
        Ok(m) => m,
        Err(e) => {
            debug!(%from, "{e}");
            return None;
        }
    };
    let reply = match dhcp::proxy_reply(&msg, port, cfg) {
        Ok(r) => r,
        Err(Ignored::NotPxe | Ignored::MessageType(_) | Ignored::OtherServer(_)) => return None,
        Err(why) => {
            info!(%from, ?why, "proxyDHCP: not answered");
            return None;
        }
    };
    let c = dhcp::classify(&msg)?;
    let file = reply
        .fname_str()
        .and_then(Result::ok)
        .unwrap_or("(option 67)");
    info!(
        mac = %crate::serve::inventory::mac::Mac(c.mac),
        arch = ?c.arch,
        ipxe = c.ipxe,
        port,
        "proxyDHCP: {:?} → {file}",
        reply.opts().msg_type().map_or(String::new(), |t| format!("{t:?}"))
    );
    let to = if port == PXE_PORT {
        // The boot-server request came from an address: answer it there.
        from
    } else {
        SocketAddr::V4(dhcp::destination(&msg))
    };
    match dhcp::encode(&reply) {
        Ok(b) => Some((b, to)),
        Err(e) => {
            warn!("{e}");
            None
        }
    }
}
