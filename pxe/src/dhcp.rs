//! DHCP for network boot, sans-IO, with dhcproto as the codec: which client is asking
//! ([`classify`]: PXE, UEFI HTTP Boot or neither, BIOS or UEFI, already iPXE), what it should
//! boot ([`boot_target`]), and the proxyDHCP answers ([`proxy_reply`]): boot information only,
//! never an address, so the lab's own DHCP server keeps its job.
//!
//! UEFI x64 machines start the Secure Boot chain by default (the Microsoft-signed
//! `shimx64.efi`, then Debian-signed GRUB), or iPXE's `snponly.efi` where the lab chose it
//! ([`UefiLoader`], per machine through its group); BIOS machines start iPXE. UEFI HTTP Boot
//! clients (architecture 16, class `HTTPClient`) get iPXE's `snponly.efi` as a URL, whatever
//! their loader: the signed chain cannot go on over HTTP (Debian's signed network GRUB has no
//! HTTP client, and takes its scripts from where it was loaded), so HTTP Boot reaches drover
//! with Secure Boot off; PXE (TFTP) is the way under Secure Boot.
//!
//! The driver hands over a decoded request and the port it came in on (67, or 4011 for the
//! PXE boot-server request), and sends what comes back. Full DHCP (an address pool, leases)
//! builds on the same classification.

use std::collections::HashMap;
use std::net::Ipv4Addr;

pub use dhcproto::v4::Message;
use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};
use dhcproto::{Decodable, Encodable, Encoder};

/// The PXE boot-server port (requests after a proxyDHCP offer).
pub const PXE_PORT: u16 = 4011;

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Hardware address (Ethernet).
    pub mac: [u8; 6],
    /// It says it is a PXE client (option 60 starts with `PXEClient`).
    pub pxe: bool,
    /// Client system architecture (option 93), if sent.
    pub arch: Option<u16>,
    /// It is iPXE already (user class `iPXE`, or iPXE's own option 175).
    pub ipxe: bool,
    /// A UEFI HTTP Boot client (option 60 starts with `HTTPClient`).
    pub http: bool,
}

/// The firmware families drover boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// Legacy BIOS PXE (architecture 0, or none given).
    Bios,
    /// UEFI x64 (architecture 7 or 9).
    Uefi64,
    /// UEFI x64 HTTP Boot (architecture 16).
    Uefi64Http,
}

/// What UEFI x64 machines start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UefiLoader {
    /// The Secure Boot chain: Microsoft-signed shim, Debian-signed GRUB and kernel.
    #[default]
    Shim,
    /// iPXE's `snponly.efi` (unsigned: Secure Boot must be off).
    Ipxe,
}

impl UefiLoader {
    /// The first file the firmware loads.
    pub fn file(self) -> &'static str {
        match self {
            Self::Shim => "shimx64.efi",
            Self::Ipxe => "snponly.efi",
        }
    }

    /// Its name in settings (`shim` or `ipxe`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Shim => "shim",
            Self::Ipxe => "ipxe",
        }
    }

    /// Reads a setting's value.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "shim" => Ok(Self::Shim),
            "ipxe" => Ok(Self::Ipxe),
            _ => Err(format!(
                "uefi_loader {s:?}: shim (Secure Boot chain) or ipxe"
            )),
        }
    }
}

/// What a client is told to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootTarget {
    /// A first-stage iPXE binary over TFTP.
    Tftp(String),
    /// iPXE's boot script over HTTP.
    Http(String),
}

/// Where the server is and what it hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// The server's address on the lab interface (next server, server identifier).
    pub server: Ipv4Addr,
    /// `http://ADDR:PORT` of the server's HTTP API, for iPXE's script URL.
    pub http_base: String,
    /// TFTP file for BIOS clients (Debian's ipxe: `undionly.kpxe`).
    pub bios_file: String,
    /// What UEFI x64 clients start, unless their machine says otherwise.
    pub uefi_loader: UefiLoader,
    /// Machines whose group chose their UEFI loader.
    pub uefi_loaders: HashMap<[u8; 6], UefiLoader>,
}

impl BootConfig {
    /// The usual file names; UEFI machines start the Secure Boot chain.
    pub fn new(server: Ipv4Addr, http_base: impl Into<String>) -> Self {
        Self {
            server,
            http_base: http_base.into(),
            bios_file: "undionly.kpxe".into(),
            uefi_loader: UefiLoader::default(),
            uefi_loaders: HashMap::new(),
        }
    }

    /// What the UEFI x64 machine `mac` starts.
    pub fn uefi_loader_of(&self, mac: [u8; 6]) -> UefiLoader {
        self.uefi_loaders
            .get(&mac)
            .copied()
            .unwrap_or(self.uefi_loader)
    }
}

/// Why a request gets no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    /// Not a PXE client: the lab's DHCP server answers it.
    NotPxe,
    /// A PXE client of an architecture drover has no binary for.
    Architecture(u16),
    /// A message type proxyDHCP does not answer (RELEASE, DECLINE, ...).
    MessageType(String),
    /// Not a BOOTREQUEST of Ethernet.
    NotARequest,
    /// Meant for another server (its server identifier names someone else).
    OtherServer(Ipv4Addr),
}

/// Reads who is asking.
pub fn classify(msg: &Message) -> Option<Client> {
    if msg.opcode() != v4::Opcode::BootRequest || msg.chaddr().len() < 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&msg.chaddr()[..6]);
    let opts = msg.opts();
    let class = |prefix: &[u8]| {
        matches!(opts.get(OptionCode::ClassIdentifier),
            Some(DhcpOption::ClassIdentifier(c)) if c.starts_with(prefix))
    };
    let (pxe, http) = (class(b"PXEClient"), class(b"HTTPClient"));
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(a.0),
        _ => None,
    };
    let user_class_ipxe = matches!(opts.get(OptionCode::UserClass),
        Some(DhcpOption::UserClass(u)) if u.windows(4).any(|w| w == b"iPXE"));
    let ipxe = user_class_ipxe || opts.get(OptionCode::Unknown(175)).is_some();
    Some(Client {
        mac,
        pxe,
        arch,
        ipxe,
        http,
    })
}

/// The firmware of a client's architecture (RFC 4578 numbers).
pub fn firmware(arch: Option<u16>) -> Result<Firmware, u16> {
    match arch {
        None | Some(0) => Ok(Firmware::Bios),
        Some(7 | 9) => Ok(Firmware::Uefi64),
        Some(16) => Ok(Firmware::Uefi64Http),
        Some(a) => Err(a),
    }
}

/// What the client loads: iPXE gets its script over HTTP; PXE firmware gets its first
/// stage over TFTP (BIOS: iPXE; UEFI x64: its loader); HTTP Boot firmware gets iPXE's URL
/// (module doc: the signed chain has no way on over HTTP).
pub fn boot_target(c: &Client, cfg: &BootConfig) -> Result<BootTarget, Ignored> {
    if c.ipxe {
        let m = c.mac;
        return Ok(BootTarget::Http(format!(
            "{}/boot/{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}.ipxe",
            cfg.http_base, m[0], m[1], m[2], m[3], m[4], m[5]
        )));
    }
    match firmware(c.arch) {
        Ok(Firmware::Bios) => Ok(BootTarget::Tftp(cfg.bios_file.clone())),
        Ok(Firmware::Uefi64) => Ok(BootTarget::Tftp(
            cfg.uefi_loader_of(c.mac).file().to_string(),
        )),
        Ok(Firmware::Uefi64Http) => Ok(BootTarget::Http(format!(
            "{}/boot/files/{}",
            cfg.http_base,
            UefiLoader::Ipxe.file()
        ))),
        Err(a) => Err(Ignored::Architecture(a)),
    }
}

/// The proxyDHCP answer to a request that came in on `port` (67 or [`PXE_PORT`]): an OFFER
/// to a DISCOVER, an ACK to a REQUEST (or INFORM) — boot server and file, never an address.
pub fn proxy_reply(msg: &Message, port: u16, cfg: &BootConfig) -> Result<Message, Ignored> {
    let c = classify(msg).ok_or(Ignored::NotARequest)?;
    if !c.pxe && !c.ipxe && !c.http {
        return Err(Ignored::NotPxe);
    }
    let reply_type = match msg.opts().msg_type() {
        Some(MessageType::Discover) if port != PXE_PORT => MessageType::Offer,
        Some(MessageType::Request | MessageType::Inform) => {
            // A REQUEST on port 67 selects an offer: answer only if it selects ours
            // (or names no server, as some firmware does on 4011).
            if let Some(DhcpOption::ServerIdentifier(s)) =
                msg.opts().get(OptionCode::ServerIdentifier)
            {
                if *s != cfg.server && port != PXE_PORT {
                    return Err(Ignored::OtherServer(*s));
                }
            }
            MessageType::Ack
        }
        t => return Err(Ignored::MessageType(format!("{t:?}"))),
    };
    let target = boot_target(&c, cfg)?;
    let mut r = reply_to_request(msg);
    r.set_ciaddr(msg.ciaddr());
    let opts = r.opts_mut();
    opts.insert(DhcpOption::MessageType(reply_type));
    opts.insert(DhcpOption::ServerIdentifier(cfg.server));
    if let Some(DhcpOption::ClientMachineIdentifier(uuid)) =
        msg.opts().get(OptionCode::ClientMachineIdentifier)
    {
        opts.insert(DhcpOption::ClientMachineIdentifier(uuid.clone()));
    }
    if c.http && !c.ipxe {
        // HTTP Boot takes an offer for itself only with class `HTTPClient`.
        opts.insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
    } else {
        opts.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
        // PXE vendor options: discovery control 8 (boot the file named here, no boot-server
        // menu or multicast discovery), then the end tag.
        opts.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
    }
    if matches!(target, BootTarget::Tftp(_)) {
        opts.insert(DhcpOption::TFTPServerName(
            cfg.server.to_string().into_bytes(),
        ));
    }
    set_boot_file(&mut r, cfg.server, target);
    Ok(r)
}

/// A BOOTREPLY to `msg`: its hardware type and address, transaction id, flags and relay.
pub(crate) fn reply_to_request(msg: &Message) -> Message {
    let mut r = Message::default();
    r.set_opcode(v4::Opcode::BootReply)
        .set_htype(msg.htype())
        .set_xid(msg.xid())
        .set_flags(msg.flags())
        .set_chaddr(msg.chaddr())
        .set_giaddr(msg.giaddr());
    r
}

/// Names the boot server and file in a reply: `siaddr`, option 67, and the header's file
/// field (128 bytes: a longer URL goes in option 67 alone).
pub(crate) fn set_boot_file(r: &mut Message, server: Ipv4Addr, target: BootTarget) {
    let file = match target {
        BootTarget::Tftp(f) | BootTarget::Http(f) => f,
    };
    r.set_siaddr(server);
    r.opts_mut()
        .insert(DhcpOption::BootfileName(file.clone().into_bytes()));
    if file.len() < 128 {
        r.set_fname_str(&file);
    }
}

/// Where a server's answer to `msg` goes (on port 67): to the relay agent that forwarded it,
/// to the client's address if it has one, else broadcast on the link.
pub fn destination(msg: &Message) -> std::net::SocketAddrV4 {
    use std::net::SocketAddrV4;
    if !msg.giaddr().is_unspecified() {
        SocketAddrV4::new(msg.giaddr(), 67)
    } else if !msg.ciaddr().is_unspecified() {
        SocketAddrV4::new(msg.ciaddr(), 68)
    } else {
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
    }
}

/// The boot file a reply names (option 67), if any.
pub fn boot_file(m: &Message) -> Option<String> {
    match m.opts().get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(f)) => Some(String::from_utf8_lossy(f).into_owned()),
        _ => None,
    }
}

/// Options whose length dhcproto 0.15 only checks with `debug_assert!` (a panic in debug
/// builds, found by fuzzing): code and the lengths allowed.
type LengthRule = (u8, fn(usize) -> bool);

const CHECKED_LENGTHS: &[LengthRule] = &[
    (80, |n| n == 0),  // rapid commit
    (81, |n| n >= 3),  // client FQDN
    (94, |n| n == 3),  // client network interface (UNDI version)
    (152, |n| n == 4), // bulk leasequery times
    (153, |n| n == 4),
    (154, |n| n == 4),
    (155, |n| n == 4),
];

/// Walks the options after the magic cookie; refuses lengths the decoder would trip on.
fn check_options(b: &[u8]) -> Result<(), String> {
    let mut i = 240;
    while i < b.len() {
        match b[i] {
            0 => i += 1,
            255 => break,
            code => {
                let Some(&len) = b.get(i + 1) else { break };
                if let Some((_, ok)) = CHECKED_LENGTHS.iter().find(|(c, _)| *c == code) {
                    if !ok(len as usize) {
                        return Err(format!(
                            "malformed DHCP message: option {code} of {len} byte(s)"
                        ));
                    }
                }
                i += 2 + len as usize;
            }
        }
    }
    Ok(())
}

/// Decodes a datagram. What dhcproto 0.15 decodes but then panics on (found by fuzzing) is
/// refused here: a hardware address length over 16, and a few options of the wrong length;
/// any other panic of the decoder is caught and reported as a malformed message.
pub fn decode(b: &[u8]) -> Result<Message, String> {
    if b.len() > 2 && b[2] > 16 {
        return Err(format!(
            "malformed DHCP message: hardware address length {} (at most 16)",
            b[2]
        ));
    }
    check_options(b)?;
    std::panic::catch_unwind(|| Message::from_bytes(b))
        .map_err(|_| "malformed DHCP message: the decoder failed on it".to_string())?
        .map_err(|e| format!("malformed DHCP message: {e}"))
}

/// Encodes a message.
pub fn encode(m: &Message) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(576);
    m.encode(&mut Encoder::new(&mut out))
        .map_err(|e| format!("encoding a DHCP message: {e}"))?;
    Ok(out)
}

#[cfg(test)]
#[path = "dhcp_tests.rs"]
mod tests;
