//! The agent's DHCP client against drover's own full DHCP server core, in simulated time:
//! a lost DISCOVER and a lost ACK retransmitted with backoff, offers that are not for it
//! ignored, a NAK starting over.

use super::*;
use crate::dhcp::BootConfig;
use crate::dhcp_full::{Pool, Server};

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const SRV: Ipv4Addr = Ipv4Addr::new(10, 5, 0, 1);

fn server() -> Server {
    Server::new(
        Pool {
            first: Ipv4Addr::new(10, 5, 0, 100),
            last: Ipv4Addr::new(10, 5, 0, 110),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: Some(Ipv4Addr::new(10, 5, 0, 254)),
            dns: vec![],
            lease_secs: 3600,
        },
        BootConfig::new(SRV, "http://10.5.0.1:8080"),
    )
    .unwrap()
}

/// Runs the exchange in simulated time; `lose(n)` drops the n-th message sent either way.
fn run(lose: impl Fn(usize) -> bool) -> (Lease, u64, usize) {
    let mut s = server();
    let mut c = Client::new(MAC, 0xdead_beef, 0);
    let mut now = 0;
    let mut n = 0;
    while c.lease().is_none() {
        assert!(now < 120_000, "no lease within two minutes");
        now = c.deadline().unwrap().max(now);
        let Some(req) = c.poll_transmit(now) else {
            continue;
        };
        // Through the codec, as on the wire.
        let req = crate::dhcp::decode(&crate::dhcp::encode(&req).unwrap()).unwrap();
        assert!(req.flags().broadcast());
        n += 1;
        if lose(n) {
            continue;
        }
        let (reply, _) = s.handle(&req, 1_800_000_000 + now / 1000);
        let Some(reply) = reply else { continue };
        n += 1;
        if lose(n) {
            continue;
        }
        c.handle(&reply, now + 5);
    }
    (c.lease().unwrap().clone(), now, n)
}

#[test]
fn gets_a_lease_from_drovers_server() {
    let (l, now, n) = run(|_| false);
    assert_eq!(
        l,
        Lease {
            ip: Ipv4Addr::new(10, 5, 0, 100),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: Some(Ipv4Addr::new(10, 5, 0, 254)),
            server: SRV,
            lease_secs: Some(3600),
        }
    );
    assert_eq!(l.prefix(), 24);
    assert_eq!((now, n), (5, 4), "DISCOVER, OFFER, REQUEST, ACK at once");
}

#[test]
fn lost_messages_are_sent_again_with_a_doubling_wait() {
    // The first DISCOVER and the first ACK are lost.
    let (l, now, _) = run(|n| n == 1 || n == 5);
    assert_eq!(l.ip, Ipv4Addr::new(10, 5, 0, 100));
    // DISCOVER at 0 (lost), again at 4 s; REQUEST at once, its ACK lost, again 4 s later.
    assert_eq!(now, 8005);
}

#[test]
fn answers_not_for_it_are_ignored_and_a_nak_starts_over() {
    let mut c = Client::new(MAC, 7, 0);
    let discover = c.poll_transmit(0).unwrap();
    assert_eq!(c.poll_transmit(1), None, "nothing due before the timeout");
    let mut s = server();
    let (offer, _) = s.handle(&discover, 1_800_000_000);
    let offer = offer.unwrap();
    // Another client's xid, a proxyDHCP offer (no address), a request's echo: ignored.
    let mut other = offer.clone();
    other.set_xid(8);
    assert_eq!(c.handle(&other, 10), None);
    let mut proxy = offer.clone();
    proxy.set_yiaddr(Ipv4Addr::UNSPECIFIED);
    assert_eq!(c.handle(&proxy, 10), None);
    assert_eq!(c.handle(&discover, 10), None);
    assert_eq!(c.poll_transmit(10), None, "still selecting");
    c.handle(&offer, 20);
    let req = c.poll_transmit(20).unwrap();
    assert_eq!(req.opts().msg_type(), Some(MessageType::Request));
    // An ACK from another server is not the one asked.
    let (ack, _) = s.handle(&req, 1_800_000_000);
    let mut foreign = ack.clone().unwrap();
    foreign
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 5, 0, 2)));
    assert_eq!(c.handle(&foreign, 30), None);
    // A NAK: DISCOVER again at once.
    let mut nak = ack.unwrap();
    nak.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Nak));
    assert_eq!(c.handle(&nak, 40), None);
    let again = c.poll_transmit(40).unwrap();
    assert_eq!(again.opts().msg_type(), Some(MessageType::Discover));
    assert_eq!(c.deadline(), Some(4040));
}
