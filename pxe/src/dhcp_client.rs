//! The agent's own DHCP client, sans-IO: DISCOVER, the first OFFER with an address, REQUEST,
//! ACK (a NAK starts over), retransmitting with a doubling timeout (4 s, 8 s, … at most 16 s,
//! RFC 2131 §4.1). The driver sends what [`Client::poll_transmit`] gives (broadcast, from port
//! 68 to 67), feeds every datagram it receives to [`Client::handle`], and configures the
//! interface from the [`Lease`]. Times are milliseconds of the driver's clock.
//!
//! It asks with the broadcast flag set, so servers answer to the broadcast address: the
//! interface has no address to be answered at yet. It does not renew (the agent's work is
//! minutes, leases are an hour or more) and ignores offers for another client (other xid or
//! MAC) and offers without an address (proxyDHCP's).

use std::net::Ipv4Addr;

use dhcproto::v4::{self, DhcpOption, Flags, Message, MessageType, OptionCode};

/// What the agent got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub server: Ipv4Addr,
    pub lease_secs: Option<u32>,
}

impl Lease {
    /// The prefix length of the netmask.
    pub fn prefix(&self) -> u32 {
        u32::from(self.netmask).leading_ones()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Selecting,
    Requesting { offer: Lease },
    Bound(Lease),
}

/// One client exchange on one interface.
#[derive(Debug)]
pub struct Client {
    mac: [u8; 6],
    xid: u32,
    state: State,
    /// When to send next, and how long the current wait is.
    next_send: u64,
    wait_ms: u64,
    /// Requests sent in the current state (a REQUEST unanswered 4 times starts over).
    tries: u32,
    started: u64,
}

const FIRST_WAIT_MS: u64 = 4000;
const MAX_WAIT_MS: u64 = 16_000;

impl Client {
    /// A client for the NIC with `mac`; `xid` should be random, `now` the driver's clock.
    pub fn new(mac: [u8; 6], xid: u32, now: u64) -> Self {
        Self {
            mac,
            xid,
            state: State::Selecting,
            next_send: now,
            wait_ms: FIRST_WAIT_MS,
            tries: 0,
            started: now,
        }
    }

    /// The lease, once the server acknowledged it.
    pub fn lease(&self) -> Option<&Lease> {
        match &self.state {
            State::Bound(l) => Some(l),
            _ => None,
        }
    }

    /// When the driver should call [`poll_transmit`](Self::poll_transmit) next (none once bound).
    pub fn deadline(&self) -> Option<u64> {
        (!matches!(self.state, State::Bound(_))).then_some(self.next_send)
    }

    fn base(&self, t: MessageType, now: u64) -> Message {
        let mut m = Message::default();
        m.set_opcode(v4::Opcode::BootRequest)
            .set_xid(self.xid)
            .set_secs(((now.saturating_sub(self.started)) / 1000).min(65_535) as u16)
            .set_flags(Flags::default().set_broadcast())
            .set_chaddr(&self.mac);
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(t));
        o.insert(DhcpOption::ClassIdentifier(b"drover-agent".to_vec()));
        o.insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::ServerIdentifier,
            OptionCode::AddressLeaseTime,
        ]));
        m
    }

    /// The message to send now, if one is due.
    pub fn poll_transmit(&mut self, now: u64) -> Option<Message> {
        if now < self.next_send {
            return None;
        }
        let msg = match &self.state {
            State::Bound(_) => return None,
            State::Selecting => self.base(MessageType::Discover, now),
            State::Requesting { .. } if self.tries >= 4 => {
                // The server went quiet after its offer: look again.
                self.state = State::Selecting;
                self.tries = 0;
                self.wait_ms = FIRST_WAIT_MS;
                self.base(MessageType::Discover, now)
            }
            State::Requesting { offer } => {
                let (ip, server) = (offer.ip, offer.server);
                let mut m = self.base(MessageType::Request, now);
                m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
                m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
                m
            }
        };
        self.tries += 1;
        self.next_send = now + self.wait_ms;
        self.wait_ms = (self.wait_ms * 2).min(MAX_WAIT_MS);
        Some(msg)
    }

    /// A datagram from port 67; answers for other clients and from other servers than the
    /// one requested are ignored. Returns the lease when this message bound it.
    pub fn handle(&mut self, msg: &Message, now: u64) -> Option<Lease> {
        if msg.opcode() != v4::Opcode::BootReply
            || msg.xid() != self.xid
            || msg.chaddr().get(..6) != Some(&self.mac[..])
        {
            return None;
        }
        let opts = msg.opts();
        let server = match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(s)) => *s,
            _ => return None,
        };
        match (opts.msg_type(), &self.state) {
            (Some(MessageType::Offer), State::Selecting) => {
                let offer = lease_of(msg, server)?;
                self.state = State::Requesting { offer };
                self.tries = 0;
                self.wait_ms = FIRST_WAIT_MS;
                self.next_send = now;
                None
            }
            (Some(MessageType::Ack), State::Requesting { offer }) if offer.server == server => {
                let l = lease_of(msg, server)?;
                self.state = State::Bound(l.clone());
                Some(l)
            }
            (Some(MessageType::Nak), State::Requesting { offer }) if offer.server == server => {
                self.state = State::Selecting;
                self.tries = 0;
                self.wait_ms = FIRST_WAIT_MS;
                self.next_send = now;
                None
            }
            _ => None,
        }
    }
}

/// The lease an OFFER or ACK describes; none without an address (a proxyDHCP answer).
fn lease_of(msg: &Message, server: Ipv4Addr) -> Option<Lease> {
    let ip = msg.yiaddr();
    if ip.is_unspecified() || ip.is_broadcast() {
        return None;
    }
    let opts = msg.opts();
    let netmask = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(m)) => *m,
        // No mask given: the classful default, as clients do.
        _ => match ip.octets()[0] {
            0..=127 => Ipv4Addr::new(255, 0, 0, 0),
            128..=191 => Ipv4Addr::new(255, 255, 0, 0),
            _ => Ipv4Addr::new(255, 255, 255, 0),
        },
    };
    let router = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied(),
        _ => None,
    };
    let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(s)) => Some(*s),
        _ => None,
    };
    Some(Lease {
        ip,
        netmask,
        router,
        server,
        lease_secs,
    })
}

#[cfg(test)]
#[path = "dhcp_client_tests.rs"]
mod tests;
