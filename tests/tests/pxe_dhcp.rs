//! proxyDHCP on the wire: `drover serve --dhcp proxy` in one namespace, clients in another on
//! the same bridge. A BIOS PXE client's DISCOVER (broadcast to port 67) gets an OFFER with the
//! boot server and `undionly.kpxe` and no address; its REQUEST to port 4011 gets the ACK; a
//! plain DISCOVER gets nothing, and busybox's udhcpc gets no lease.

use std::io::BufRead;
use std::process::Stdio;

use drover_tests::lab::Lab;
use drover_tests::server::Server;
use drover_tests::{drover_bin, require, Env};
use pxe::dhcp;

/// A DHCP client in Python: sends a BIOS PXE DISCOVER, then a REQUEST to the server's port
/// 4011, then a plain DISCOVER; prints each answer in hex (or "none").
const CLIENT: &str = r#"
import socket, struct, sys
server = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
s.bind(("", 68))
mac = bytes([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
def msg(mtype, pxe):
    b = bytes([1, 1, 6, 0]) + struct.pack(">I", 0x12345678) + bytes([0, 4, 0x80, 0])
    b += bytes(16) + mac + bytes(10) + bytes(192) + bytes([99, 130, 83, 99])
    b += bytes([53, 1, mtype])
    if pxe:
        cls = b"PXEClient:Arch:00000:UNDI:002001"
        b += bytes([93, 2, 0, 0, 94, 3, 1, 2, 1, 60, len(cls)]) + cls
    return b + bytes([255])
def ask(data, to, what):
    s.sendto(data, to)
    s.settimeout(4)
    try:
        while True:
            d, src = s.recvfrom(2048)
            if d[0] == 2:
                print(what, src[0], src[1], d.hex(), flush=True)
                return
    except socket.timeout:
        print(what, "none", flush=True)
ask(msg(1, True), ("255.255.255.255", 67), "offer")
ask(msg(3, True), (server, 4011), "ack")
ask(msg(1, False), ("255.255.255.255", 67), "plain")
"#;

/// A DHCP message the client printed in hex.
fn decode_hex(hex: &str) -> dhcp::Message {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    dhcp::decode(&bytes).unwrap()
}

#[test]
fn proxy_dhcp_answers_pxe_clients_only_and_never_with_an_address() {
    if !require("proxy_dhcp", &["root", "ip", "python3", "busybox"]) {
        return;
    }
    let env = Env::new();
    let lab = Lab::new("pxd", 2);
    let server_ip = lab.addr(0).to_string();
    let bin = drover_bin().to_str().unwrap();
    let mut cmd = lab.cmd(0, bin);
    cmd.arg("--data-dir").arg(env.data()).args([
        "serve",
        "--http",
        "127.0.0.1:0",
        "--iface",
        "eth0",
        "--dhcp",
        "proxy",
        "--public-url",
        &format!("http://{server_ip}:8080"),
    ]);
    let _srv = Server::start_cmd(cmd);

    let mut c = lab.cmd(1, "python3");
    c.args(["-u", "-c", CLIENT, &server_ip])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = c.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<String> = out.stdout.lines().map(Result::unwrap).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let reply = |line: &str, what: &str| {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f[0], what, "{line}");
        assert_ne!(f[1], "none", "no {what}");
        assert_eq!(f[1], server_ip, "{what} from elsewhere");
        decode_hex(f[3])
    };
    for (line, what, port, mtype) in [
        (&lines[0], "offer", "67", "Offer"),
        (&lines[1], "ack", "4011", "Ack"),
    ] {
        let m = reply(line, what);
        assert!(line.split(' ').nth(2) == Some(port), "{line}");
        assert_eq!(format!("{:?}", m.opts().msg_type().unwrap()), mtype);
        assert!(
            m.yiaddr().is_unspecified(),
            "an address was offered: {}",
            m.yiaddr()
        );
        assert_eq!(m.siaddr().to_string(), server_ip);
        assert_eq!(m.xid(), 0x1234_5678);
        assert_eq!(dhcp::boot_file(&m).as_deref(), Some("undionly.kpxe"));
    }
    assert_eq!(lines[2], "plain none");

    // A real DHCP client gets no lease from proxyDHCP.
    let mut u = lab.cmd(1, "busybox");
    u.args([
        "udhcpc",
        "-i",
        "eth0",
        "-n",
        "-q",
        "-f",
        "-t",
        "2",
        "-T",
        "1",
        "-s",
        "/bin/true",
    ]);
    let o = u.output().unwrap();
    assert!(!o.status.success(), "udhcpc got a lease: {o:?}");
}

/// Full DHCP: busybox's udhcpc gets an address from the range with the gateway, the lease
/// is kept in the database (the same address after a restart), and a PXE client gets an
/// address and its boot file in one answer.
#[test]
fn full_dhcp_leases_addresses_and_keeps_them_across_a_restart() {
    if !require("full_dhcp", &["root", "ip", "python3", "busybox"]) {
        return;
    }
    let env = Env::new();
    let lab = Lab::new("fdh", 2);
    lab.set_mac(1, "02:77:00:00:00:01");
    let token = env.ok(&["token", "create", "admin"]).trim().to_string();
    let bin = drover_bin().to_str().unwrap();
    let start = || {
        let mut cmd = lab.cmd(0, bin);
        cmd.arg("--data-dir").arg(env.data()).args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--iface",
            "eth0",
            "--dhcp",
            "full",
            "--dhcp-range",
            "10.77.0.100-10.77.0.120",
            "--dhcp-router",
            "10.77.0.254",
        ]);
        Server::start_cmd(cmd)
    };
    let script = env.path("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n[ \"$1\" = bound ] && echo \"lease $ip $subnet $router\"\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let lease = || {
        let mut u = lab.cmd(1, "busybox");
        u.args([
            "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "4", "-T", "1", "-s",
        ])
        .arg(&script);
        let o = u.output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "udhcpc: {o:?}");
        text.lines()
            .find_map(|l| l.strip_prefix("lease "))
            .unwrap_or_else(|| panic!("no lease: {text}"))
            .to_string()
    };
    let srv = start();
    let first = lease();
    assert_eq!(first, "10.77.0.100 255.255.255.0 10.77.0.254", "{first}");
    srv.stop();
    let srv = start();
    assert_eq!(lease(), first, "the address changed across a restart");

    // A reservation in the inventory wins over the lease, at once (no restart).
    let cli = |args: &[&str]| lab.drover(0, &env.data(), &srv.url, &token, args);
    let o = cli(&["machine", "add", "02:77:00:00:00:01", "--ip", "10.77.0.50"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(lease(), "10.77.0.50 255.255.255.0 10.77.0.254");
    for (args, why) in [
        (
            ["machine", "add", "02:77:00:00:00:02", "--ip", "10.77.0.50"],
            "a reservation of 10.77.0.50 (for 02:77:00:00:00:01) already exists",
        ),
        (
            ["machine", "add", "02:77:00:00:00:03", "--ip", "10.78.0.9"],
            "not in the lab's subnet 10.77.0.0/255.255.255.0",
        ),
        (
            ["machine", "add", "02:77:00:00:00:04", "--ip", "10.77.0.10"],
            "the server's own address",
        ),
        (
            ["machine", "set", "02:77:00:00:00:01", "--ip", "ten"],
            "not an IPv4 address",
        ),
        (
            ["machine", "set", "02:77:00:00:00:01", "--disk", "sda"],
            "serial:SERIAL, size:BYTES or all-size:BYTES",
        ),
    ] {
        let o = cli(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(why), "{args:?}: {err}");
    }
    let o = cli(&["machine", "set", "02:77:00:00:00:01", "--ip", "10.77.0.60"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(lease(), "10.77.0.60 255.255.255.0 10.77.0.254");

    // A PXE client (another MAC) gets an address and its boot file together.
    let mut c = lab.cmd(1, "python3");
    c.args(["-u", "-c", CLIENT, &lab.addr(0).to_string()]);
    let out = c.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let offer = text.lines().next().unwrap_or_default();
    let hex = offer.split(' ').nth(3).unwrap_or_else(|| panic!("{text}"));
    let m = decode_hex(hex);
    // Machine 1 moved to its reservation: its old address is free again.
    assert_eq!(m.yiaddr().to_string(), "10.77.0.100");
    // The reservation dropped: the machine goes back to an address of the range.
    let o = cli(&["machine", "set", "02:77:00:00:00:01", "--no-ip"]);
    assert!(o.status.success(), "{o:?}");
    let l = lease();
    assert!(l.starts_with("10.77.0.1"), "{l}");
    assert_eq!(dhcp::boot_file(&m).as_deref(), Some("undionly.kpxe"));
    drop(srv);
}
