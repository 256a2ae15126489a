//! Full DHCP for an isolated lab, sans-IO: one address pool, leases, reservations per
//! machine, DISCOVER/OFFER/REQUEST/ACK/NAK/RELEASE/DECLINE/INFORM, requests relayed by agents
//! (giaddr) from the pool's subnet. PXE clients get their boot file in the same answers (no
//! proxyDHCP needed).
//!
//! The driver owns the sockets and the database: it loads the leases it persisted
//! ([`Server::load`]), hands over each decoded request with the time, sends the answer, and
//! persists the [`Change`]s that come back.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};

use crate::dhcp::{boot_target, classify, reply_to_request, set_boot_file, BootConfig};

/// An offer is held this long for its REQUEST.
const OFFER_SECS: u64 = 60;
/// A declined address (in use by someone else) is not offered again for this long.
const DECLINE_SECS: u64 = 600;

/// The address pool and what comes with a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub lease_secs: u32,
}

impl Pool {
    /// Checks the range: ordered, inside one subnet of `netmask`, not holding `server`.
    pub fn check(&self, server: Ipv4Addr) -> Result<(), String> {
        let (f, l, m) = (
            u32::from(self.first),
            u32::from(self.last),
            u32::from(self.netmask),
        );
        if f > l {
            return Err(format!(
                "DHCP range {}-{}: the first address is after the last",
                self.first, self.last
            ));
        }
        if f & m != l & m {
            return Err(format!(
                "DHCP range {}-{} spans more than one subnet of {}",
                self.first, self.last, self.netmask
            ));
        }
        if f & m != u32::from(server) & m {
            return Err(format!(
                "DHCP range {}-{} is not in the server's subnet ({server}/{})",
                self.first, self.last, self.netmask
            ));
        }
        if (f..=l).contains(&u32::from(server)) {
            return Err(format!(
                "DHCP range {}-{} holds the server's own address {server}",
                self.first, self.last
            ));
        }
        Ok(())
    }

    /// Checks a fixed address for a machine: in the pool's subnet (inside the range or not),
    /// neither the server's own address nor the subnet's network or broadcast address.
    pub fn check_reservation(&self, ip: Ipv4Addr, server: Ipv4Addr) -> Result<(), String> {
        let m = u32::from(self.netmask);
        let net = u32::from(self.first) & m;
        if !self.same_subnet(ip) {
            return Err(format!(
                "reservation {ip}: not in the lab's subnet {}/{}",
                Ipv4Addr::from(net),
                self.netmask
            ));
        }
        if ip == server {
            return Err(format!(
                "reservation {ip}: that is the server's own address"
            ));
        }
        if u32::from(ip) == net || u32::from(ip) == net | !m {
            return Err(format!(
                "reservation {ip}: the subnet's network or broadcast address"
            ));
        }
        Ok(())
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.first)..=u32::from(self.last)).contains(&u32::from(ip))
    }

    fn same_subnet(&self, ip: Ipv4Addr) -> bool {
        let m = u32::from(self.netmask);
        u32::from(ip) & m == u32::from(self.first) & m
    }
}

/// A lease (or an offer waiting for its REQUEST).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    /// Unix seconds.
    pub expires: u64,
    /// Bound by an ACK (else only offered).
    pub bound: bool,
}

/// What the driver persists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Bound(Lease),
    Released { mac: [u8; 6], ip: Ipv4Addr },
    Declined { mac: [u8; 6], ip: Ipv4Addr },
}

/// The full DHCP server's state.
#[derive(Debug)]
pub struct Server {
    pool: Pool,
    boot: BootConfig,
    leases: HashMap<[u8; 6], Lease>,
    /// Who holds each leased or offered address (an index of `leases`).
    holders: HashMap<Ipv4Addr, [u8; 6]>,
    reservations: HashMap<[u8; 6], Ipv4Addr>,
    /// Who has each reserved address (an index of `reservations`).
    reserved: HashMap<Ipv4Addr, [u8; 6]>,
    declined: HashMap<Ipv4Addr, u64>,
}

impl Server {
    pub fn new(pool: Pool, boot: BootConfig) -> Result<Self, String> {
        pool.check(boot.server)?;
        Ok(Self {
            pool,
            boot,
            leases: HashMap::new(),
            holders: HashMap::new(),
            reserved: HashMap::new(),
            reservations: HashMap::new(),
            declined: HashMap::new(),
        })
    }

    /// The machines whose group chose their UEFI loader (the inventory changed).
    pub fn set_uefi_loaders(&mut self, loaders: HashMap<[u8; 6], super::dhcp::UefiLoader>) {
        self.boot.uefi_loaders = loaders;
    }

    /// Leases persisted earlier (bound ones; the pool may have changed: others are dropped).
    pub fn load(&mut self, leases: impl IntoIterator<Item = Lease>) {
        for l in leases {
            if l.bound && self.pool.same_subnet(l.ip) {
                self.put(l);
            }
        }
    }

    /// A fixed address for a machine (inside or outside the range, in the subnet).
    pub fn reserve(&mut self, mac: [u8; 6], ip: Ipv4Addr) -> Result<(), String> {
        self.pool.check_reservation(ip, self.boot.server)?;
        if let Some(other) = self.reserved.get(&ip).filter(|m| **m != mac) {
            return Err(format!(
                "reservation {ip}: already reserved for {}",
                fmt_mac(*other)
            ));
        }
        if let Some(old) = self.reservations.insert(mac, ip) {
            self.reserved.remove(&old);
        }
        self.reserved.insert(ip, mac);
        Ok(())
    }

    /// Replaces every reservation (the inventory changed). Ones that cannot be kept are left
    /// out, each with its reason in the answer.
    pub fn set_reservations(
        &mut self,
        all: impl IntoIterator<Item = ([u8; 6], Ipv4Addr)>,
    ) -> Vec<String> {
        self.reservations.clear();
        self.reserved.clear();
        all.into_iter()
            .filter_map(|(mac, ip)| {
                self.reserve(mac, ip)
                    .err()
                    .map(|e| format!("{}: {e}", fmt_mac(mac)))
            })
            .collect()
    }

    /// Who holds `ip` now (a live lease or offer, or a reservation), other than `mac`.
    fn taken(&self, ip: Ipv4Addr, mac: [u8; 6], now: u64) -> bool {
        self.holders.get(&ip).is_some_and(|m| {
            *m != mac
                && self
                    .leases
                    .get(m)
                    .is_some_and(|l| l.ip == ip && l.expires > now)
        }) || self.reserved.get(&ip).is_some_and(|m| *m != mac)
            || self.declined.get(&ip).is_some_and(|&until| until > now)
    }

    /// Records a lease (replacing the machine's previous one) and its index entry.
    fn put(&mut self, l: Lease) {
        self.drop_lease(l.mac);
        self.holders.insert(l.ip, l.mac);
        self.leases.insert(l.mac, l);
    }

    fn drop_lease(&mut self, mac: [u8; 6]) {
        if let Some(old) = self.leases.remove(&mac) {
            if self.holders.get(&old.ip) == Some(&mac) {
                self.holders.remove(&old.ip);
            }
        }
    }

    /// The address for `mac`: its reservation, its lease, the one it asks for, or the first
    /// free one.
    fn pick(&self, mac: [u8; 6], requested: Option<Ipv4Addr>, now: u64) -> Option<Ipv4Addr> {
        if let Some(&ip) = self.reservations.get(&mac) {
            return Some(ip);
        }
        if let Some(l) = self.leases.get(&mac) {
            if !self.taken(l.ip, mac, now) && self.pool.contains(l.ip) {
                return Some(l.ip);
            }
        }
        if let Some(ip) =
            requested.filter(|&ip| self.pool.contains(ip) && !self.taken(ip, mac, now))
        {
            return Some(ip);
        }
        (u32::from(self.pool.first)..=u32::from(self.pool.last))
            .map(Ipv4Addr::from)
            .find(|&ip| !self.taken(ip, mac, now))
    }

    /// Answers one request at `now` (Unix seconds): the reply (if any) and what to persist.
    pub fn handle(&mut self, msg: &Message, now: u64) -> (Option<Message>, Vec<Change>) {
        let Some(c) = classify(msg) else {
            return (None, Vec::new());
        };
        let mac = c.mac;
        // Relayed from another subnet: not ours to serve.
        if !msg.giaddr().is_unspecified() && !self.pool.same_subnet(msg.giaddr()) {
            return (None, Vec::new());
        }
        let requested = match msg.opts().get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
            _ => None,
        };
        let server_id = match msg.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(s)) => Some(*s),
            _ => None,
        };
        match msg.opts().msg_type() {
            Some(MessageType::Discover) => {
                let Some(ip) = self.pick(mac, requested, now) else {
                    return (None, Vec::new()); // the pool is full
                };
                let bound = self.leases.get(&mac).is_some_and(|l| l.ip == ip && l.bound);
                let expires = if bound {
                    self.leases[&mac].expires.max(now + OFFER_SECS)
                } else {
                    now + OFFER_SECS
                };
                self.put(Lease {
                    mac,
                    ip,
                    expires,
                    bound,
                });
                (
                    Some(self.reply(msg, MessageType::Offer, Some(ip))),
                    Vec::new(),
                )
            }
            Some(MessageType::Request) => {
                if server_id.is_some_and(|s| s != self.boot.server) {
                    // It took another server's offer: ours is free again.
                    if self.leases.get(&mac).is_some_and(|l| !l.bound) {
                        self.drop_lease(mac);
                    }
                    return (None, Vec::new());
                }
                let want = requested.or((!msg.ciaddr().is_unspecified()).then(|| msg.ciaddr()));
                let Some(want) = want else {
                    return (Some(self.reply(msg, MessageType::Nak, None)), Vec::new());
                };
                let ok = match self.reservations.get(&mac) {
                    Some(&r) => r == want,
                    None => self.pool.contains(want) && !self.taken(want, mac, now),
                };
                if !ok {
                    // An address we cannot give (another's, outside the range, moved
                    // subnets): NAK only if the subnet is ours to judge.
                    if self.pool.same_subnet(want) || server_id.is_some() {
                        return (Some(self.reply(msg, MessageType::Nak, None)), Vec::new());
                    }
                    return (None, Vec::new());
                }
                let lease = Lease {
                    mac,
                    ip: want,
                    expires: now + u64::from(self.pool.lease_secs),
                    bound: true,
                };
                self.put(lease.clone());
                self.declined.remove(&want);
                (
                    Some(self.reply(msg, MessageType::Ack, Some(want))),
                    vec![Change::Bound(lease)],
                )
            }
            Some(MessageType::Release) => match self.leases.get(&mac) {
                Some(l) if l.ip == msg.ciaddr() => {
                    let ip = l.ip;
                    self.drop_lease(mac);
                    (None, vec![Change::Released { mac, ip }])
                }
                _ => (None, Vec::new()),
            },
            Some(MessageType::Decline) => match (requested, self.leases.get(&mac)) {
                (Some(ip), Some(l)) if l.ip == ip => {
                    self.drop_lease(mac);
                    self.declined.insert(ip, now + DECLINE_SECS);
                    (None, vec![Change::Declined { mac, ip }])
                }
                _ => (None, Vec::new()),
            },
            Some(MessageType::Inform) => {
                (Some(self.reply(msg, MessageType::Ack, None)), Vec::new())
            }
            _ => (None, Vec::new()),
        }
    }

    /// An answer: `ip` offered or acknowledged (none for a NAK or an INFORM's ACK), with the
    /// pool's options and, for PXE clients, their boot file.
    fn reply(&self, msg: &Message, t: MessageType, ip: Option<Ipv4Addr>) -> Message {
        let mut r = reply_to_request(msg);
        if t == MessageType::Nak {
            let o = r.opts_mut();
            o.insert(DhcpOption::MessageType(t));
            o.insert(DhcpOption::ServerIdentifier(self.boot.server));
            return r;
        }
        if let Some(ip) = ip {
            r.set_yiaddr(ip);
        } else {
            r.set_ciaddr(msg.ciaddr());
        }
        let pool = &self.pool;
        let o = r.opts_mut();
        o.insert(DhcpOption::MessageType(t));
        o.insert(DhcpOption::ServerIdentifier(self.boot.server));
        o.insert(DhcpOption::SubnetMask(pool.netmask));
        if let Some(gw) = pool.router {
            o.insert(DhcpOption::Router(vec![gw]));
        }
        if !pool.dns.is_empty() {
            o.insert(DhcpOption::DomainNameServer(pool.dns.clone()));
        }
        if ip.is_some() {
            o.insert(DhcpOption::AddressLeaseTime(pool.lease_secs));
            o.insert(DhcpOption::Renewal(pool.lease_secs / 2));
            o.insert(DhcpOption::Rebinding(pool.lease_secs / 8 * 7));
        }
        let Some(c) = classify(msg) else { return r };
        if c.http && !c.ipxe {
            // HTTP Boot takes an offer for itself only with class `HTTPClient`.
            if let Ok(target) = boot_target(&c, &self.boot) {
                r.opts_mut()
                    .insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
                set_boot_file(&mut r, self.boot.server, target);
            }
        } else if c.pxe || c.ipxe {
            // The file and next server only, without option 60 "PXEClient": a UEFI PXE client
            // (EDK2) takes an offer that carries that class without PXE vendor options for a
            // BINL offer and asks a boot server on port 4011 first; a plain DHCP offer with a
            // file it downloads at once, as BIOS PXE ROMs and iPXE do.
            if let Ok(target) = boot_target(&c, &self.boot) {
                set_boot_file(&mut r, self.boot.server, target);
            }
        }
        r
    }

    /// The lease of a machine, if it has a live one.
    pub fn lease(&self, mac: [u8; 6], now: u64) -> Option<&Lease> {
        self.leases.get(&mac).filter(|l| l.expires > now)
    }
}

fn fmt_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
#[path = "dhcp_full_tests.rs"]
mod tests;
