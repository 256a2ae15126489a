//! Sans-IO network-boot cores of drover: what goes into and comes out of the packets that wake
//! and boot a lab's machines, with no sockets, no clocks and no tokio (the server drives them).
//!
//! Today: wake-on-LAN magic packets ([`wol`]) and the TFTP server's core ([`tftp`]: read
//! requests with blksize, tsize, timeout and windowsize). proxyDHCP and full DHCP join them
//! with the PXE issue.

pub mod dhcp;
pub mod fuzzing;
pub mod tftp;
pub mod wol;
