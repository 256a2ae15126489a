//! proxyDHCP decisions on the requests real clients send: a BIOS PXE ROM's DISCOVER (and its
//! REQUEST to port 4011), a UEFI x64 firmware's, iPXE's own, and a plain client's that
//! proxyDHCP must leave alone. The BIOS DISCOVER is a byte-for-byte packet as SeaBIOS's iPXE
//! ROM and Intel's PXE ROM lay it out (header, magic cookie, options 53, 57, 93, 94, 97, 60,
//! 55); the others are built with the codec the same way.

// DHCP's numbers are in network byte order.
#![allow(clippy::big_endian_bytes)]

use super::*;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn cfg() -> BootConfig {
    BootConfig::new(SERVER, "http://10.0.0.1:8080")
}

/// A BIOS PXE DISCOVER, as bytes.
fn bios_discover_bytes() -> Vec<u8> {
    let mut b = vec![1, 1, 6, 0]; // BOOTREQUEST, Ethernet, hlen 6, hops 0
    b.extend_from_slice(&0x1234_5678u32.to_be_bytes()); // xid
    b.extend_from_slice(&[0, 4, 0x80, 0]); // secs 4, broadcast flag
    b.extend_from_slice(&[0; 16]); // ciaddr yiaddr siaddr giaddr
    b.extend_from_slice(&MAC);
    b.extend_from_slice(&[0; 10]); // chaddr padding
    b.extend_from_slice(&[0; 64 + 128]); // sname, file
    b.extend_from_slice(&[99, 130, 83, 99]); // magic cookie
    b.extend_from_slice(&[53, 1, 1]); // DISCOVER
    b.extend_from_slice(&[57, 2, 0x05, 0xc0]); // max message size 1472
    b.extend_from_slice(&[93, 2, 0, 0]); // architecture: x86 BIOS
    b.extend_from_slice(&[94, 3, 1, 2, 1]); // UNDI 2.1
    b.push(97);
    b.push(17);
    b.push(0);
    b.extend_from_slice(&[0xab; 16]); // machine UUID
    let class = b"PXEClient:Arch:00000:UNDI:002001";
    b.push(60);
    b.push(class.len() as u8);
    b.extend_from_slice(class);
    b.extend_from_slice(&[55, 8, 1, 2, 3, 4, 5, 6, 12, 43]);
    b.push(255);
    b
}

fn built(msg_type: MessageType, class: Option<&[u8]>, arch: Option<u16>) -> Message {
    let mut m = Message::default();
    m.set_opcode(v4::Opcode::BootRequest)
        .set_chaddr(&MAC)
        .set_xid(0x9abc_def0);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(msg_type));
    if let Some(c) = class {
        o.insert(DhcpOption::ClassIdentifier(c.to_vec()));
    }
    if let Some(a) = arch {
        o.insert(DhcpOption::ClientSystemArchitecture(a.into()));
    }
    m
}

fn boot_file(r: &Message) -> String {
    match r.opts().get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(f)) => String::from_utf8(f.clone()).unwrap(),
        o => panic!("no boot file: {o:?}"),
    }
}

#[test]
fn a_bios_pxe_discover_gets_undionly_and_no_address() {
    let m = decode(&bios_discover_bytes()).unwrap();
    let c = classify(&m).unwrap();
    assert_eq!(
        c,
        Client {
            mac: MAC,
            pxe: true,
            arch: Some(0),
            ipxe: false,
            http: false,
        }
    );
    let r = proxy_reply(&m, 67, &cfg()).unwrap();
    assert_eq!(r.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(
        r.yiaddr(),
        Ipv4Addr::UNSPECIFIED,
        "proxyDHCP never offers an address"
    );
    assert_eq!(r.siaddr(), SERVER);
    assert_eq!(r.xid(), 0x1234_5678);
    assert!(r.flags().broadcast());
    assert_eq!(boot_file(&r), "undionly.kpxe");
    assert_eq!(r.fname_str().unwrap().unwrap(), "undionly.kpxe");
    assert!(matches!(r.opts().get(OptionCode::ClassIdentifier),
        Some(DhcpOption::ClassIdentifier(c)) if c == b"PXEClient"));
    assert!(matches!(r.opts().get(OptionCode::ClientMachineIdentifier),
        Some(DhcpOption::ClientMachineIdentifier(u)) if u.len() == 17));
    assert!(r.opts().get(OptionCode::AddressLeaseTime).is_none());
    // The encoded answer decodes to the same.
    let again = decode(&encode(&r).unwrap()).unwrap();
    assert_eq!(boot_file(&again), "undionly.kpxe");
    // Its REQUEST to the boot-server port gets the ACK.
    let mut req = m.clone();
    req.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Request));
    let ack = proxy_reply(&req, PXE_PORT, &cfg()).unwrap();
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(boot_file(&ack), "undionly.kpxe");
    // A DISCOVER on 4011 is not how PXE works.
    assert!(matches!(
        proxy_reply(&m, PXE_PORT, &cfg()),
        Err(Ignored::MessageType(_))
    ));
}

#[test]
fn uefi_x64_discovers_get_the_shim_or_ipxe_where_chosen() {
    for arch in [7, 9] {
        let m = built(
            MessageType::Discover,
            Some(b"PXEClient:Arch:00007:UNDI:003016"),
            Some(arch),
        );
        let r = proxy_reply(&m, 67, &cfg()).unwrap();
        assert_eq!(boot_file(&r), "shimx64.efi", "arch {arch}");
    }
    // The server's choice, and a machine's own (its group's) over it.
    let m = built(MessageType::Discover, Some(b"PXEClient"), Some(7));
    let mut c = cfg();
    c.uefi_loader = UefiLoader::Ipxe;
    assert_eq!(boot_file(&proxy_reply(&m, 67, &c).unwrap()), "snponly.efi");
    c.uefi_loaders.insert(MAC, UefiLoader::Shim);
    assert_eq!(boot_file(&proxy_reply(&m, 67, &c).unwrap()), "shimx64.efi");
    let mut c = cfg();
    c.uefi_loaders.insert([2, 0, 0, 0, 0, 1], UefiLoader::Shim);
    c.uefi_loaders.insert(MAC, UefiLoader::Ipxe);
    assert_eq!(boot_file(&proxy_reply(&m, 67, &c).unwrap()), "snponly.efi");
    // BIOS machines start iPXE whatever UEFI ones do.
    let m = built(MessageType::Discover, Some(b"PXEClient"), Some(0));
    assert_eq!(
        boot_file(&proxy_reply(&m, 67, &c).unwrap()),
        "undionly.kpxe"
    );
    assert_eq!(UefiLoader::parse("ipxe"), Ok(UefiLoader::Ipxe));
    assert!(UefiLoader::parse("grub").unwrap_err().contains("shim"));
    // An ARM64 client: nothing to give it.
    let m = built(
        MessageType::Discover,
        Some(b"PXEClient:Arch:00011"),
        Some(11),
    );
    assert_eq!(proxy_reply(&m, 67, &cfg()), Err(Ignored::Architecture(11)));
}

/// HTTP Boot gets iPXE's URL, whatever the loader: Debian's signed GRUB cannot go on by HTTP.
#[test]
fn http_boot_clients_get_ipxe_as_a_url() {
    let m = built(
        MessageType::Discover,
        Some(b"HTTPClient:Arch:00016:UNDI:003001"),
        Some(16),
    );
    let r = proxy_reply(&m, 67, &cfg()).unwrap();
    assert_eq!(r.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(boot_file(&r), "http://10.0.0.1:8080/boot/files/snponly.efi");
    assert!(matches!(r.opts().get(OptionCode::ClassIdentifier),
        Some(DhcpOption::ClassIdentifier(c)) if c == b"HTTPClient"));
    assert!(r.opts().get(OptionCode::VendorExtensions).is_none());
    let mut c = cfg();
    c.uefi_loader = UefiLoader::Ipxe;
    let r = proxy_reply(&m, 67, &c).unwrap();
    assert_eq!(boot_file(&r), "http://10.0.0.1:8080/boot/files/snponly.efi");
}

#[test]
fn ipxe_gets_its_script_over_http() {
    let mut m = built(
        MessageType::Discover,
        Some(b"PXEClient:Arch:00000:UNDI:002001"),
        Some(0),
    );
    m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    let r = proxy_reply(&m, 67, &cfg()).unwrap();
    assert_eq!(
        boot_file(&r),
        "http://10.0.0.1:8080/boot/52:54:00:12:34:56.ipxe"
    );
    // iPXE's encapsulated options (175) alone say the same.
    let mut m = built(MessageType::Request, Some(b"PXEClient"), Some(7));
    m.opts_mut()
        .insert(DhcpOption::Unknown(v4::UnknownOption::new(
            OptionCode::Unknown(175),
            vec![177, 5, 1, 0x80, 0x86, 0x10, 0x0e],
        )));
    let r = proxy_reply(&m, 67, &cfg()).unwrap();
    assert_eq!(r.opts().msg_type(), Some(MessageType::Ack));
    assert!(boot_file(&r).starts_with("http://"));
    // A URL longer than the header's file field goes in option 67 alone.
    let long = BootConfig::new(
        SERVER,
        format!("http://{}.example.org:8080", "x".repeat(120)),
    );
    let r = proxy_reply(&m, 67, &long).unwrap();
    assert!(boot_file(&r).len() > 128);
    assert!(r.fname().is_none());
}

#[test]
fn plain_clients_and_other_messages_are_left_to_the_lab_dhcp() {
    // dhclient / udhcpc: no PXE class.
    let m = built(MessageType::Discover, Some(b"udhcp 1.35.0"), None);
    assert_eq!(proxy_reply(&m, 67, &cfg()), Err(Ignored::NotPxe));
    let m = built(MessageType::Discover, None, None);
    assert_eq!(proxy_reply(&m, 67, &cfg()), Err(Ignored::NotPxe));
    // A PXE client's REQUEST selecting another server's offer.
    let mut m = built(MessageType::Request, Some(b"PXEClient"), Some(0));
    m.opts_mut()
        .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 254)));
    assert_eq!(
        proxy_reply(&m, 67, &cfg()),
        Err(Ignored::OtherServer(Ipv4Addr::new(10, 0, 0, 254)))
    );
    for t in [
        MessageType::Release,
        MessageType::Decline,
        MessageType::Offer,
    ] {
        let m = built(t, Some(b"PXEClient"), Some(0));
        assert!(
            matches!(proxy_reply(&m, 67, &cfg()), Err(Ignored::MessageType(_))),
            "{t:?}"
        );
    }
    // A reply (BOOTREPLY) is not a request.
    let mut m = built(MessageType::Discover, Some(b"PXEClient"), Some(0));
    m.set_opcode(v4::Opcode::BootReply);
    assert_eq!(proxy_reply(&m, 67, &cfg()), Err(Ignored::NotARequest));
}

#[test]
fn malformed_datagrams_are_errors() {
    for bad in [&b""[..], &[1, 1, 6][..], &bios_discover_bytes()[..200]] {
        assert!(
            decode(bad).unwrap_err().contains("malformed DHCP"),
            "{bad:?}"
        );
    }
}
