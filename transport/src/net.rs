//! Sockets for a multicast session: interface lookup, the sender's socket, the receiver's
//! group socket, socket buffers.

use std::ffi::CStr;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use anyhow::{bail, Context};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

/// Socket buffers asked for: 64 MiB absorbs a long burst while the process is descheduled.
/// As root the kernel's `rmem_max` is bypassed (`SO_RCVBUFFORCE`); otherwise it caps it.
const SOCKET_BUFFER: usize = 64 << 20;

/// A network interface with its IPv4 address.
#[derive(Debug, Clone)]
pub struct Iface {
    pub name: String,
    pub addr: Ipv4Addr,
    pub prefix: u32,
}

impl Iface {
    /// The subnet's broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        };
        Ipv4Addr::from(u32::from(self.addr) | !mask)
    }
}

/// Every interface with an IPv4 address.
fn interfaces() -> io::Result<Vec<Iface>> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut p = head;
    while !p.is_null() {
        // SAFETY: `p` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*p };
        p = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_netmask.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family we check before casting.
        if unsafe { (*ifa.ifa_addr).sa_family } as i32 != libc::AF_INET {
            continue;
        }
        // SAFETY: AF_INET addresses (and their netmasks) are sockaddr_in.
        let (addr, mask) = unsafe {
            let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
            let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
            (
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u32::from_be(m.sin_addr.s_addr),
            )
        };
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        out.push(Iface {
            name,
            addr,
            prefix: mask.leading_ones(),
        });
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The interface named `name`, or, without a name, the only non-loopback one.
pub fn iface(name: Option<&str>) -> anyhow::Result<Iface> {
    let all = interfaces().context("listing network interfaces")?;
    match name {
        Some(n) => all
            .into_iter()
            .find(|i| i.name == n)
            .with_context(|| format!("interface {n:?} does not exist or has no IPv4 address")),
        None => {
            let mut up: Vec<Iface> = all.into_iter().filter(|i| !i.addr.is_loopback()).collect();
            match up.len() {
                1 => Ok(up.remove(0)),
                0 => bail!("no network interface with an IPv4 address; name one with --iface"),
                _ => bail!(
                    "several interfaces have IPv4 addresses ({}); choose one with --iface",
                    up.iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    }
}

fn force_buffers(s: &Socket) {
    let size = SOCKET_BUFFER as libc::c_int;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        if set_int(s, libc::SOL_SOCKET, opt, size).is_err() {
            // Not root: ask within the kernel's limits.
            let _ = if opt == libc::SO_RCVBUFFORCE {
                s.set_recv_buffer_size(SOCKET_BUFFER)
            } else {
                s.set_send_buffer_size(SOCKET_BUFFER)
            };
        }
    }
}

fn udp() -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_nonblocking(true)?;
    force_buffers(&s);
    Ok(s)
}

/// The sender's socket: bound to the interface's address, multicast out of that interface
/// with `ttl`, broadcast allowed.
pub fn sender_socket(iface: &Iface, ttl: u32, port: u16) -> anyhow::Result<UdpSocket> {
    let s = udp().context("creating the sender's socket")?;
    s.set_multicast_if_v4(&iface.addr)?;
    s.set_multicast_ttl_v4(ttl)?;
    s.set_multicast_loop_v4(false)?;
    s.set_broadcast(true)?;
    s.bind(&SocketAddr::from((iface.addr, port)).into())
        .with_context(|| format!("binding {}:{port}", iface.addr))?;
    Ok(UdpSocket::from_std(s.into())?)
}

/// The receiver's data socket: the group's port on every address (so a broadcast session is
/// heard too), a member of `group` on `iface`.
pub fn group_socket(iface: &Iface, group: SocketAddrV4) -> anyhow::Result<UdpSocket> {
    let s = udp().context("creating the group socket")?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, group.port())).into())
        .with_context(|| format!("binding port {}", group.port()))?;
    if group.ip().is_multicast() {
        s.join_multicast_v4(group.ip(), &iface.addr)
            .with_context(|| format!("joining {} on {}", group.ip(), iface.name))?;
    }
    enable_timestamps(&s).context("asking for receive timestamps")?;
    // Let the kernel hand over runs of same-sized datagrams of one flow as one buffer (what a
    // segmentation-offload sender sent, or what the NIC's GRO merged): one system call for
    // dozens of datagrams. Kernels before 5.0 lack it; then each datagram comes alone.
    let _ = set_int(&s, libc::SOL_UDP, libc::UDP_GRO, 1);
    Ok(UdpSocket::from_std(s.into())?)
}

/// The socket's receive buffer in bytes as the kernel granted it (it counts its own
/// overhead in it too, so a quarter of it is a safe fill).
pub fn recv_buffer(sock: &UdpSocket) -> usize {
    socket2::SockRef::from(sock)
        .recv_buffer_size()
        .unwrap_or(212_992)
}

/// Asks the kernel to stamp every datagram `sock` receives with its arrival time, read by
/// [`recv_stamped`]: the receiver's queueing-delay estimate must not count the time a busy
/// process took to get to the datagram, only the network's.
fn enable_timestamps(s: &Socket) -> io::Result<()> {
    set_int(s, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
}

fn set_int(s: &Socket, level: libc::c_int, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    let fd = std::os::fd::AsRawFd::as_raw_fd(s);
    // SAFETY: setsockopt reads an int from a valid pointer on a socket we own.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &value as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Receives without blocking; returns the length, when the kernel received it (as an
/// `Instant`, if the kernel stamped it), and, when the kernel coalesced several datagrams
/// of one flow into the buffer (UDP GRO, see [`group_socket`]), their size: the buffer
/// then holds datagrams of that size back to back, the last one possibly shorter.
pub fn recv_stamped(
    sock: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, Option<std::time::Instant>, Option<usize>)> {
    sock.try_io(tokio::io::Interest::READABLE, || {
        let fd = std::os::fd::AsRawFd::as_raw_fd(sock);
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // Room for a timespec cmsg and an int cmsg, 8-byte aligned.
        let mut control = [0u64; 12];
        // SAFETY: msghdr is plain data; every pointer set below outlives the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = size_of_val(&control);
        // SAFETY: recvmsg writes at most iov_len bytes into buf and msg_controllen into control.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut stamp = None;
        let mut segment = None;
        // SAFETY: the CMSG macros walk the control buffer recvmsg filled, within its length.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let data = libc::CMSG_DATA(c);
                match ((*c).cmsg_level, (*c).cmsg_type) {
                    (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) => {
                        let ts = std::ptr::read_unaligned(data as *const libc::timespec);
                        stamp = Some(std::time::Duration::new(
                            ts.tv_sec as u64,
                            ts.tv_nsec as u32,
                        ));
                    }
                    (libc::SOL_UDP, libc::UDP_GRO) => {
                        let size = std::ptr::read_unaligned(data as *const libc::c_int);
                        segment = usize::try_from(size).ok().filter(|&s| s > 0);
                    }
                    _ => {}
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        // The stamp is wall-clock time; turn it into an Instant by its age.
        let at = stamp.and_then(|s| {
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?;
            let age = wall.checked_sub(s).unwrap_or_default();
            std::time::Instant::now().checked_sub(age)
        });
        Ok((n as usize, at, segment))
    })
}

/// Datagrams per segmentation-offload send at most. A batch leaves at line rate, so this is
/// also the sender's burst: 32 overflowed the kernel's 1000-packet backlog when a bridge
/// fanned it out to 40 receivers (2 % loss); 8 lost nothing and cost the same time.
pub const MAX_SEGMENTS: usize = 8;

/// Sends `buf`, datagrams of `segment` bytes back to back (the last one may be shorter), to
/// `to` in one system call with UDP generic segmentation offload: the NIC, or the kernel at
/// the last moment, cuts it into datagrams, so the stack (and a bridge, and a qdisc) handle
/// one buffer instead of dozens. Fails with `EIO`/`EINVAL` where the route's device cannot
/// take it; the caller then sends datagram by datagram.
pub async fn send_segments(
    sock: &UdpSocket,
    buf: &[u8],
    segment: usize,
    to: SocketAddr,
) -> io::Result<()> {
    let addr = socket2::SockAddr::from(to);
    let seg = u16::try_from(segment).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    sock.async_io(tokio::io::Interest::WRITABLE, || {
        let fd = std::os::fd::AsRawFd::as_raw_fd(sock);
        let mut iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut control = [0u64; 4];
        // SAFETY: msghdr is plain data; every pointer set below outlives the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = addr.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = addr.len();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        // SAFETY: CMSG_SPACE/CMSG_LEN are arithmetic; the cmsg written lies within `control`
        // (CMSG_SPACE(2) = 24 bytes of its 32).
        unsafe {
            msg.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, seg);
        }
        // SAFETY: sendmsg reads the buffers described by `msg`, all alive and in bounds.
        let n = unsafe { libc::sendmsg(fd, &msg, 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    })
    .await
}

/// A unicast socket on `iface` (the receiver's feedback and the sender's replies).
pub fn unicast_socket(iface: &Iface) -> anyhow::Result<UdpSocket> {
    let s = udp().context("creating the feedback socket")?;
    s.bind(&SocketAddr::from((iface.addr, 0)).into())
        .with_context(|| format!("binding {}", iface.addr))?;
    Ok(UdpSocket::from_std(s.into())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_address() {
        let i = Iface {
            name: "x".into(),
            addr: "10.77.0.11".parse().unwrap(),
            prefix: 24,
        };
        assert_eq!(i.broadcast(), "10.77.0.255".parse::<Ipv4Addr>().unwrap());
        let lo = interfaces().unwrap();
        assert!(lo.iter().any(|i| i.addr.is_loopback() && i.prefix == 8));
    }
}
