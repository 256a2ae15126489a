//! Wake-on-LAN through the server, checked on the wire: a listener in another namespace
//! receives the magic packets the server broadcasts out of its lab interface.

use std::process::Stdio;

use drover_tests::lab::Lab;
use drover_tests::server::Server;
use drover_tests::{drover_bin, require, Env};

#[test]
fn wake_sends_magic_packets_to_the_subnet_broadcast() {
    if !require("wake-on-LAN", &["root", "ip", "python3"]) {
        return;
    }
    let env = Env::new();
    let mut lab = Lab::new("wol", 2);
    // Host 1 listens on port 9 for broadcasts and prints each datagram in hex.
    let listener = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", 9))
s.settimeout(30)
print("ready", flush=True)
seen = 0
while seen < 6:
    d, (ip, port) = s.recvfrom(2048)
    print(ip, d.hex(), flush=True)
    seen += 1
"#;
    let mut l = lab.cmd(1, "python3");
    l.args(["-u", "-c", listener])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let k = lab.spawn(l);
    let mut out = std::io::BufReader::new(lab.child(k).stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");

    let bin = drover_bin().to_str().unwrap();
    let data = env.data();
    let mut cmd = lab.cmd(0, bin);
    cmd.arg("--data-dir")
        .arg(&data)
        .args(["serve", "--http", "127.0.0.1:0", "--iface", "eth0"]);
    let srv = Server::start_cmd(cmd);
    let token = lab.token(0, &data, "wol");
    let run = |args: &[&str]| {
        let mut c = lab.cmd(0, bin);
        c.args(args).args(["--server", &srv.url, "--token", &token]);
        c.output().unwrap()
    };
    let o = run(&["machine", "add", "52:54:00:aa:00:01", "--group", "lab"]);
    assert!(o.status.success(), "{o:?}");
    let o = run(&["wake", "--group", "lab", "52-54-00-AA-00-02"]);
    assert!(o.status.success(), "{o:?}");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("2 machine(s) via 10.77.0.255:9"), "{text}");

    // Three copies of each of the two packets, from the server's address.
    let mut got = Vec::new();
    for _ in 0..6 {
        line.clear();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let (ip, hex) = line.trim().split_once(' ').expect("a datagram line");
        assert_eq!(ip, lab.addr(0).to_string());
        got.push(hex.to_string());
    }
    let magic = |mac: &str| format!("{}{}", "ff".repeat(6), mac.replace(':', "").repeat(16));
    for mac in ["52:54:00:aa:00:01", "52:54:00:aa:00:02"] {
        assert_eq!(
            got.iter().filter(|h| **h == magic(mac)).count(),
            3,
            "{mac}: {got:?}"
        );
    }
    // Nothing to wake, an unknown group: clear errors.
    let o = run(&["wake", "--group", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));
    let o = run(&["wake"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing to wake"));
    drop(srv);
}
