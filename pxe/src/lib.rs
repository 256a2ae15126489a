//! Sans-IO network-boot cores of drover: what goes into and comes out of the packets that wake
//! and boot a lab's machines, with no sockets, no clocks and no tokio (the server drives them).
//!
//! Wake-on-LAN magic packets ([`wol`]), the TFTP server's core ([`tftp`]: read requests with
//! blksize, tsize, timeout and windowsize), proxyDHCP decisions ([`dhcp`]) and full DHCP with
//! an address pool and leases ([`dhcp_full`]), and the agent's own DHCP client ([`dhcp_client`]).

pub mod dhcp;
pub mod dhcp_client;
pub mod dhcp_full;
pub mod fuzzing;
pub mod tftp;
pub mod wol;
