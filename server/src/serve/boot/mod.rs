//! Bringing machines up: proxy and full DHCP with their leases, TFTP, the per-machine iPXE
//! and GRUB scripts, and wake-on-LAN.

pub(crate) mod dhcp;
pub(crate) mod grub;
pub(crate) mod ipxe;
pub(crate) mod leases;
pub(crate) mod tftp;
pub(crate) mod wol;
