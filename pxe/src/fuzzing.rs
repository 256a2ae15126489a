//! Entry points shared by the fuzz targets (`fuzz/`) and the corpus replay test: each takes
//! arbitrary bytes and must never panic.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::tftp::{self, Packet, Transfer};

/// Decodes a TFTP datagram; a read request then starts a transfer of a file whose length
/// comes from the input, fed ACKs and timeouts made of the input's bytes, and its file name
/// goes through [`tftp::resolve`].
pub fn tftp(data: &[u8]) {
    let Ok(p) = tftp::parse(data) else { return };
    let Packet::Read(req) = p else { return };
    let _ = tftp::resolve(Path::new("/srv/boot"), &req.filename);
    let len = data.iter().map(|&b| u64::from(b)).sum::<u64>() * 97;
    let mut now = Instant::now();
    let (mut t, _) = Transfer::start(&req, len, 1468, now);
    for pair in data.chunks(2) {
        let n = u16::from_le_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        if n % 5 == 0 {
            now += Duration::from_secs(300);
            let _ = t.on_timeout(now);
        } else {
            let _ = t.on_packet(&Packet::Ack(n), now);
        }
        if t.is_over() {
            break;
        }
    }
}

/// Decodes a DHCP datagram; a request then goes through the proxyDHCP decisions on both
/// ports and full DHCP, and an answer is encoded; the agent's client takes it as an answer
/// (with the datagram's own xid and MAC, so it gets past the first checks).
pub fn dhcp(data: &[u8]) {
    use crate::dhcp;
    let Ok(m) = dhcp::decode(data) else { return };
    let cfg = dhcp::BootConfig::new(std::net::Ipv4Addr::new(10, 0, 0, 1), "http://10.0.0.1:8080");
    for port in [67, dhcp::PXE_PORT] {
        if let Ok(r) = dhcp::proxy_reply(&m, port, &cfg) {
            let _ = dhcp::encode(&r);
        }
    }
    let pool = crate::dhcp_full::Pool {
        first: std::net::Ipv4Addr::new(10, 0, 0, 100),
        last: std::net::Ipv4Addr::new(10, 0, 0, 102),
        netmask: std::net::Ipv4Addr::new(255, 255, 255, 0),
        router: None,
        dns: Vec::new(),
        lease_secs: 60,
    };
    if let Ok(mut full) = crate::dhcp_full::Server::new(pool, cfg) {
        // The same request twice, a minute apart: the second meets the first's lease.
        for now in [1_000, 1_060] {
            if let (Some(r), _) = full.handle(&m, now) {
                let _ = dhcp::encode(&r);
            }
        }
    }
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(m.chaddr()) {
        *d = *s;
    }
    let mut client = crate::dhcp_client::Client::new(mac, m.xid(), 0);
    let _ = client.poll_transmit(0);
    // As an offer, then (if it bound nothing) as the answer to the request that follows.
    client.handle(&m, 10);
    let _ = client.poll_transmit(10);
    client.handle(&m, 20);
    if let Some(l) = client.lease() {
        let _ = l.prefix();
    }
}
