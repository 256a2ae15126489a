//! Who is asking: whether a request that claims to come from a machine (an agent's hello, a
//! PXE boot script) really comes from it, before anything that opens its task is handed out.
//!
//! A request is the machine's when:
//! - it comes from the server's own host (loopback: the admin's own agent runs, tests);
//! - the server's neighbour table (`/proc/net/arp` of the server's network namespace) maps
//!   the requesting address to the claimed MAC: the machine is on one of the server's links
//!   and answered ARP with that MAC;
//! - drover's own full DHCP server leased the requesting address to that MAC;
//! - or the address lies in one of the `agent_networks` the admin listed: networks reached
//!   through a router (a DHCP relay), whose machines the server cannot see on a link and
//!   trusts to name their own MAC. None by default.
//!
//! Anything else is refused, naming the address and why: another machine on the link
//! claiming the MAC, an address routed from elsewhere, an IPv6 address (no neighbour lookup).
//! This is not cryptographic: a machine on the link that changes its own MAC to the target's
//! passes, as it would pass the switch. It stops every other host of the lab network.

use std::net::{IpAddr, Ipv4Addr};

use crate::serve::inventory::mac::Mac;
use crate::serve::web::api::Shared;

/// Why a request was taken for the machine's own.
pub(crate) type Vouched = &'static str;

/// Decides whether a request from `peer` may act for the machine `mac`.
pub(crate) async fn vouch(s: &Shared, peer: IpAddr, mac: Mac) -> Result<Vouched, String> {
    let peer = peer.to_canonical();
    if peer.is_loopback() {
        return Ok("the server's own host");
    }
    let mut seen_as = None;
    if let IpAddr::V4(v4) = peer {
        match tokio::fs::read_to_string("/proc/net/arp").await {
            Ok(table) => match neighbour(&table, v4) {
                Some(m) if m == mac => return Ok("on the server's link (neighbour table)"),
                other => seen_as = other,
            },
            Err(e) => tracing::warn!("reading the neighbour table: {e}"),
        }
        if s.inventory.full_dhcp() {
            let leases =
                s.db.leases()
                    .dhcp_leases()
                    .await
                    .map_err(|e| e.to_string())?;
            if leases.iter().any(|(m, ip, _)| *m == mac && *ip == v4) {
                return Ok("leased to it by drover's DHCP");
            }
        }
    }
    if s.agent_networks.iter().any(|n| n.contains(&peer)) {
        return Ok("from a network listed in agent_networks");
    }
    Err(match seen_as {
        Some(other) => format!("{peer} is {other} on the server's link, not {mac}"),
        None => format!(
            "{peer} is not on the server's link (no neighbour entry) nor in agent_networks, \
             so nothing shows it is {mac}"
        ),
    })
}

/// [`vouch`], with a refusal written to the audit log (`action`, naming the address and
/// `asked`, what the request wanted) and the server's log. The outer error is the database
/// failing; the inner one the refusal's reason.
pub(crate) async fn vouch_or_audit(
    s: &Shared,
    peer: IpAddr,
    mac: Mac,
    action: &str,
    asked: &str,
) -> anyhow::Result<Result<Vouched, String>> {
    let why = match vouch(s, peer, mac).await {
        Ok(v) => return Ok(Ok(v)),
        Err(why) => why,
    };
    let peer = peer.to_canonical();
    s.db.audit(
        &format!("address:{peer}"),
        action,
        &format!("{asked}: {why}"),
    )
    .await?;
    tracing::warn!(%mac, %peer, action, "refused: {why}");
    Ok(Err(why))
}

/// The MAC that a complete entry of the kernel's ARP table (`/proc/net/arp`) gives `ip`.
fn neighbour(table: &str, ip: Ipv4Addr) -> Option<Mac> {
    // IP address  HW type  Flags  HW address  Mask  Device
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || f[0].parse::<Ipv4Addr>().ok()? != ip {
            return None;
        }
        let flags = u32::from_str_radix(f[2].trim_start_matches("0x"), 16).ok()?;
        // ATF_COM: the entry is complete (resolved); incomplete ones show 00:00:...
        if flags & 0x2 == 0 {
            return None;
        }
        f[3].parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
IP address       HW type     Flags       HW address            Mask     Device
10.77.0.11       0x1         0x2         02:00:00:00:00:0b     *        eth0
10.77.0.12       0x1         0x0         00:00:00:00:00:00     *        eth0
10.77.0.13       0x1         0x6         02:00:00:00:00:0d     *        eth1
";

    #[test]
    fn reads_complete_entries_only() {
        let ip = |s: &str| s.parse().unwrap();
        assert_eq!(
            neighbour(TABLE, ip("10.77.0.11")),
            Some("02:00:00:00:00:0b".parse().unwrap())
        );
        assert_eq!(neighbour(TABLE, ip("10.77.0.12")), None, "incomplete");
        assert_eq!(
            neighbour(TABLE, ip("10.77.0.13")),
            Some("02:00:00:00:00:0d".parse().unwrap())
        );
        assert_eq!(neighbour(TABLE, ip("10.77.0.1")), None);
        assert_eq!(neighbour("", ip("10.77.0.11")), None);
        assert_eq!(neighbour("garbage\n1 2\nx y z w", ip("10.77.0.11")), None);
    }
}
