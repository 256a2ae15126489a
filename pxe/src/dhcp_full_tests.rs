//! Full DHCP's decisions: the four-message exchange, sticky addresses across a restart,
//! reservations, NAKs, another server's offer taken, RELEASE, DECLINE, a full pool, INFORM,
//! PXE clients, relays.

use super::*;
use dhcproto::v4;
use std::collections::HashMap;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const T0: u64 = 1_800_000_000;

fn pool(first: u8, last: u8) -> Pool {
    Pool {
        first: Ipv4Addr::new(10, 9, 0, first),
        last: Ipv4Addr::new(10, 9, 0, last),
        netmask: Ipv4Addr::new(255, 255, 255, 0),
        router: Some(Ipv4Addr::new(10, 9, 0, 254)),
        dns: vec![Ipv4Addr::new(10, 9, 0, 53)],
        lease_secs: 3600,
    }
}

fn server(first: u8, last: u8) -> Server {
    Server::new(
        pool(first, last),
        BootConfig::new(SERVER, "http://10.9.0.1:8080"),
    )
    .unwrap()
}

fn mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x09, n]
}

fn msg(t: MessageType, m: u8, opts: Vec<DhcpOption>) -> Message {
    let mut x = Message::default();
    x.set_opcode(v4::Opcode::BootRequest)
        .set_chaddr(&mac(m))
        .set_xid(u32::from(m));
    x.opts_mut().insert(DhcpOption::MessageType(t));
    for o in opts {
        x.opts_mut().insert(o);
    }
    x
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 9, 0, last)
}

/// DISCOVER then REQUEST; returns the bound address.
fn dora(s: &mut Server, m: u8, now: u64) -> Ipv4Addr {
    let (offer, ch) = s.handle(&msg(MessageType::Discover, m, vec![]), now);
    let offer = offer.expect("an offer");
    assert!(ch.is_empty());
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    let a = offer.yiaddr();
    let (ack, ch) = s.handle(
        &msg(
            MessageType::Request,
            m,
            vec![
                DhcpOption::RequestedIpAddress(a),
                DhcpOption::ServerIdentifier(SERVER),
            ],
        ),
        now,
    );
    let ack = ack.expect("an ACK");
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), a);
    assert_eq!(
        ch,
        vec![Change::Bound(Lease {
            mac: mac(m),
            ip: a,
            expires: now + 3600,
            bound: true
        })]
    );
    a
}

#[test]
fn the_exchange_gives_each_machine_its_own_address_with_the_pools_options() {
    let mut s = server(100, 110);
    assert_eq!(dora(&mut s, 1, T0), ip(100));
    assert_eq!(dora(&mut s, 2, T0), ip(101));
    let (offer, _) = s.handle(&msg(MessageType::Discover, 3, vec![]), T0);
    let o = offer.unwrap();
    let opts = o.opts();
    assert!(
        matches!(opts.get(OptionCode::SubnetMask), Some(DhcpOption::SubnetMask(m)) if *m == Ipv4Addr::new(255, 255, 255, 0))
    );
    assert!(
        matches!(opts.get(OptionCode::Router), Some(DhcpOption::Router(r)) if r == &vec![ip(254)])
    );
    assert!(
        matches!(opts.get(OptionCode::DomainNameServer), Some(DhcpOption::DomainNameServer(d)) if d == &vec![ip(53)])
    );
    assert!(matches!(
        opts.get(OptionCode::AddressLeaseTime),
        Some(DhcpOption::AddressLeaseTime(3600))
    ));
    assert!(
        matches!(opts.get(OptionCode::ServerIdentifier), Some(DhcpOption::ServerIdentifier(x)) if *x == SERVER)
    );
    // Not a PXE client: no boot file.
    assert!(opts.get(OptionCode::BootfileName).is_none());
    // The same machine asking again keeps its address; so after a restart with the leases
    // the driver persisted.
    assert_eq!(dora(&mut s, 1, T0 + 10), ip(100));
    let mut s2 = server(100, 110);
    s2.load(vec![Lease {
        mac: mac(2),
        ip: ip(101),
        expires: T0 + 3600,
        bound: true,
    }]);
    assert_eq!(dora(&mut s2, 1, T0 + 20), ip(100));
    assert_eq!(dora(&mut s2, 2, T0 + 20), ip(101));
}

#[test]
fn reservations_naks_and_other_servers() {
    let mut s = server(100, 110);
    s.reserve(mac(9), ip(50)).unwrap();
    assert!(s
        .reserve(mac(8), ip(50))
        .unwrap_err()
        .contains("already reserved"));
    assert!(s.reserve(mac(8), Ipv4Addr::new(192, 168, 1, 1)).is_err());
    assert_eq!(dora(&mut s, 9, T0), ip(50));
    assert_eq!(dora(&mut s, 1, T0), ip(100));
    // Asking for another's address, or a reserved one: NAK.
    for want in [ip(100), ip(50)] {
        let (r, ch) = s.handle(
            &msg(
                MessageType::Request,
                2,
                vec![DhcpOption::RequestedIpAddress(want)],
            ),
            T0,
        );
        assert_eq!(
            r.unwrap().opts().msg_type(),
            Some(MessageType::Nak),
            "{want}"
        );
        assert!(ch.is_empty());
    }
    // A machine that moved from another network, asking for its old address (INIT-REBOOT,
    // no server id): not ours to judge, stay silent.
    let (r, _) = s.handle(
        &msg(
            MessageType::Request,
            2,
            vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(
                192, 168, 7, 7,
            ))],
        ),
        T0,
    );
    assert!(r.is_none());
    // A client that takes another server's offer frees ours.
    let (offer, _) = s.handle(&msg(MessageType::Discover, 3, vec![]), T0);
    let offered = offer.unwrap().yiaddr();
    let (r, _) = s.handle(
        &msg(
            MessageType::Request,
            3,
            vec![
                DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 9, 0, 200)),
                DhcpOption::ServerIdentifier(ip(2)),
            ],
        ),
        T0,
    );
    assert!(r.is_none());
    assert_eq!(dora(&mut s, 4, T0), offered);
}

#[test]
fn release_decline_a_full_pool_and_expiry() {
    let mut s = server(100, 101);
    assert_eq!(dora(&mut s, 1, T0), ip(100));
    assert_eq!(dora(&mut s, 2, T0), ip(101));
    // Full: the third machine gets nothing.
    assert!(s
        .handle(&msg(MessageType::Discover, 3, vec![]), T0)
        .0
        .is_none());
    // A RELEASE frees an address.
    let mut rel = msg(MessageType::Release, 1, vec![]);
    rel.set_ciaddr(ip(100));
    assert_eq!(
        s.handle(&rel, T0).1,
        vec![Change::Released {
            mac: mac(1),
            ip: ip(100)
        }]
    );
    assert_eq!(dora(&mut s, 3, T0), ip(100));
    // A DECLINE (the address answers ARP: someone has it) keeps it out for a while.
    let (_, ch) = s.handle(
        &msg(
            MessageType::Decline,
            3,
            vec![DhcpOption::RequestedIpAddress(ip(100))],
        ),
        T0,
    );
    assert_eq!(
        ch,
        vec![Change::Declined {
            mac: mac(3),
            ip: ip(100)
        }]
    );
    assert!(s
        .handle(&msg(MessageType::Discover, 4, vec![]), T0 + 5)
        .0
        .is_none());
    assert_eq!(dora(&mut s, 4, T0 + DECLINE_SECS + 1), ip(100));
    // Leases run out: an expired one's address goes to whoever asks.
    let later = T0 + 3700; // mac 2's lease is over, mac 4's (from T0 + 601) is not
    assert!(s.lease(mac(2), later).is_none());
    assert_eq!(dora(&mut s, 5, later), ip(101));
}

#[test]
fn inform_pxe_clients_and_relays() {
    let mut s = server(100, 110);
    let mut inf = msg(MessageType::Inform, 1, vec![]);
    inf.set_ciaddr(ip(7));
    let (r, ch) = s.handle(&inf, T0);
    let r = r.unwrap();
    assert_eq!(r.opts().msg_type(), Some(MessageType::Ack));
    assert!(r.yiaddr().is_unspecified() && ch.is_empty());
    assert!(r.opts().get(OptionCode::AddressLeaseTime).is_none());
    // A PXE client gets an address and its boot file together.
    let pxe = msg(
        MessageType::Discover,
        2,
        vec![
            DhcpOption::ClassIdentifier(b"PXEClient:Arch:00007:UNDI:003016".to_vec()),
            DhcpOption::ClientSystemArchitecture(7.into()),
        ],
    );
    let o = s.handle(&pxe, T0).0.unwrap();
    assert_eq!(o.yiaddr(), ip(100));
    assert_eq!(o.siaddr(), SERVER);
    assert_eq!(crate::dhcp::boot_file(&o).as_deref(), Some("shimx64.efi"));
    // Its group chose iPXE for it.
    let mut loaders = HashMap::new();
    loaders.insert(
        pxe.chaddr()[..6].try_into().unwrap(),
        crate::dhcp::UefiLoader::Ipxe,
    );
    s.set_uefi_loaders(loaders);
    let o = s.handle(&pxe, T0).0.unwrap();
    assert_eq!(crate::dhcp::boot_file(&o).as_deref(), Some("snponly.efi"));
    // A UEFI HTTP Boot client: iPXE's URL (not the shim's), and the class it looks for.
    let http = msg(
        MessageType::Discover,
        4,
        vec![
            DhcpOption::ClassIdentifier(b"HTTPClient:Arch:00016:UNDI:003001".to_vec()),
            DhcpOption::ClientSystemArchitecture(16.into()),
        ],
    );
    let o = s.handle(&http, T0).0.unwrap();
    assert_eq!(
        crate::dhcp::boot_file(&o).as_deref(),
        Some("http://10.9.0.1:8080/boot/files/snponly.efi")
    );
    assert!(matches!(o.opts().get(OptionCode::ClassIdentifier),
        Some(DhcpOption::ClassIdentifier(c)) if c == b"HTTPClient"));
    // Relayed from the pool's subnet: answered, giaddr kept; from another subnet: not ours.
    let mut relayed = msg(MessageType::Discover, 3, vec![]);
    relayed.set_giaddr(ip(254));
    assert_eq!(s.handle(&relayed, T0).0.unwrap().giaddr(), ip(254));
    relayed.set_giaddr(Ipv4Addr::new(10, 10, 0, 1));
    assert!(s.handle(&relayed, T0).0.is_none());
}

#[test]
fn bad_pools_are_refused_with_the_reason() {
    let boot = BootConfig::new(SERVER, "http://x");
    for (p, why) in [
        (pool(110, 100), "after the last"),
        (
            Pool {
                last: Ipv4Addr::new(10, 9, 1, 5),
                ..pool(100, 110)
            },
            "more than one subnet",
        ),
        (pool(1, 20), "server's own address"),
        (
            Pool {
                first: Ipv4Addr::new(10, 8, 0, 1),
                last: Ipv4Addr::new(10, 8, 0, 9),
                ..pool(1, 2)
            },
            "not in the server's subnet",
        ),
    ] {
        let e = Server::new(p, boot.clone()).unwrap_err();
        assert!(e.contains(why), "{e}");
    }
}

#[test]
fn reservations_follow_the_inventory() {
    let mut s = server(100, 110);
    assert_eq!(dora(&mut s, 1, T0), ip(100));
    // The admin pins machine 1 to .60 and machine 2 to .100 (machine 1's old lease).
    let errors = s.set_reservations([
        (mac(1), ip(60)),
        (mac(2), ip(100)),
        (mac(3), ip(0)),
        (mac(4), ip(255)),
        (mac(5), SERVER),
        (mac(6), Ipv4Addr::new(10, 9, 1, 7)),
    ]);
    assert_eq!(errors.len(), 4, "{errors:?}");
    for (e, why) in errors.iter().zip([
        "network or broadcast",
        "network or broadcast",
        "server's own address",
        "not in the lab's subnet 10.9.0.0/255.255.255.0",
    ]) {
        assert!(e.contains(why), "{e}");
    }
    assert_eq!(dora(&mut s, 1, T0 + 10), ip(60));
    assert_eq!(dora(&mut s, 2, T0 + 10), ip(100));
    // Reservations taken away: machine 2 keeps its lease, machine 3 gets a free address.
    assert!(s.set_reservations([]).is_empty());
    assert_eq!(dora(&mut s, 2, T0 + 20), ip(100));
    assert_ne!(dora(&mut s, 3, T0 + 20), ip(100));
}
