//! Sans-IO network-boot cores of drover: what goes into and comes out of the packets that wake
//! and boot a lab's machines, with no sockets, no clocks and no tokio (the server drives them).
//!
//! Today: wake-on-LAN magic packets ([`wol`]). proxyDHCP/DHCP and the TFTP server join with the
//! PXE issue.

pub mod wol;
