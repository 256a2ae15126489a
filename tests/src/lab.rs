//! A lab on one machine: a switch namespace with a bridge, and host namespaces joined to it
//! by veth pairs (TESTING.md). Host 0 is usually the sender. Names carry the test's tag and
//! the process id, so tests run in parallel; everything is deleted on drop, processes first.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};

/// Runs `ip ARGS`, panicking with its output on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bridge and `n` hosts on 10.77.0.0/24 (host `i` is 10.77.0.(10+i)).
pub struct Lab {
    tag: String,
    n: usize,
    children: Vec<Child>,
}

impl Lab {
    /// Creates the switch and `n` hosts.
    pub fn new(tag: &str, n: usize) -> Self {
        assert!(n <= 200);
        raise_limits();
        let tag = format!("{tag}{}", std::process::id() % 100_000);
        let lab = Self {
            tag,
            n: 0,
            children: Vec::new(),
        };
        lab.cleanup_names(n);
        let mut lab = lab;
        let sw = lab.switch();
        ip(&["netns", "add", &sw]);
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        // No IGMP snooping surprises: flood multicast to every port, as most lab switches do.
        ip(&[
            "-n",
            &sw,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for i in 0..n {
            let h = lab.host(i);
            ip(&["netns", "add", &h]);
            lab.n = i + 1;
            let v = format!("v{}x{i}", &lab.tag[lab.tag.len().saturating_sub(8)..]);
            ip(&[
                "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns", &h,
            ]);
            ip(&["link", "set", &v, "netns", &sw]);
            let port = format!("p{i}");
            ip(&["-n", &sw, "link", "set", &v, "name", &port]);
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"]);
            let addr = format!("{}/24", lab.addr(i));
            ip(&["-n", &h, "addr", "add", &addr, "brd", "+", "dev", "eth0"]);
            ip(&["-n", &h, "link", "set", "eth0", "up"]);
            ip(&["-n", &h, "link", "set", "lo", "up"]);
            ip(&["-n", &h, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
        }
        lab
    }

    fn switch(&self) -> String {
        format!("drv-{}-sw", self.tag)
    }

    /// The namespace of host `i`.
    pub fn host(&self, i: usize) -> String {
        format!("drv-{}-{i}", self.tag)
    }

    /// The address of host `i`.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, 10 + i as u8)
    }

    /// A direct link from the test's own namespace to host `i` (for a browser the test runs
    /// to reach a server in the lab): the host gets `10.78.K.2/30` on `eth1`, this side
    /// `10.78.K.1/30`, K from the lab's name. Host `i`'s address on it is returned; the link
    /// goes with the host's namespace.
    pub fn link_to_test(&self, i: usize) -> Ipv4Addr {
        let k = (std::process::id() % 250) as u8 + 1;
        let outside = format!("drvt{}", &self.tag[self.tag.len().saturating_sub(8)..]);
        let h = self.host(i);
        ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", "eth1", "netns", &h,
        ]);
        ip(&["addr", "add", &format!("10.78.{k}.1/30"), "dev", &outside]);
        ip(&["link", "set", &outside, "up"]);
        ip(&[
            "-n",
            &h,
            "addr",
            "add",
            &format!("10.78.{k}.2/30"),
            "dev",
            "eth1",
        ]);
        ip(&["-n", &h, "link", "set", "eth1", "up"]);
        Ipv4Addr::new(10, 78, k, 2)
    }

    /// `drover --data-dir DATA token create NAME` on host `i` (where the server runs): the
    /// admin token it prints.
    pub fn token(&self, i: usize, data: &std::path::Path, name: &str) -> String {
        let mut c = self.cmd(i, crate::drover_bin().to_str().expect("UTF-8 path"));
        let out = c
            .arg("--data-dir")
            .arg(data)
            .args(["token", "create", name])
            .output()
            .expect("running drover token create");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .expect("UTF-8 token")
            .trim()
            .to_string()
    }

    /// Gives host `i`'s NIC this MAC address.
    pub fn set_mac(&self, i: usize, mac: &str) {
        ip(&["-n", &self.host(i), "link", "set", "eth0", "address", mac]);
    }

    /// A tap device `name` on the switch's bridge (for a VM run with [`switch_cmd`](Self::switch_cmd)).
    pub fn tap(&self, name: &str) {
        let sw = self.switch();
        ip(&["-n", &sw, "tuntap", "add", name, "mode", "tap"]);
        ip(&["-n", &sw, "link", "set", name, "master", "br0", "up"]);
    }

    /// A command run in the switch's namespace (where the taps are).
    pub fn switch_cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.switch(), program]);
        c.stdin(Stdio::null());
        c
    }

    /// `drover --data-dir DATA ARGS --server URL --token TOKEN` run inside host `i` (the admin
    /// CLI against a server listening in the lab).
    pub fn drover(
        &self,
        i: usize,
        data: &std::path::Path,
        url: &str,
        token: &str,
        args: &[&str],
    ) -> std::process::Output {
        let mut c = self.cmd(i, crate::drover_bin().to_str().expect("UTF-8 path"));
        c.arg("--data-dir")
            .arg(data)
            .args(args)
            .args(["--server", url, "--token", token]);
        c.output().expect("running drover")
    }

    /// A command run inside host `i`.
    pub fn cmd(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.host(i), program]);
        c.stdin(Stdio::null());
        c
    }

    /// Starts `cmd` and keeps it to be killed on drop.
    pub fn spawn(&mut self, mut cmd: Command) -> usize {
        self.children.push(cmd.spawn().expect("spawning"));
        self.children.len() - 1
    }

    /// The child started as number `k`.
    pub fn child(&mut self, k: usize) -> &mut Child {
        &mut self.children[k]
    }

    fn nft(&self, i: usize, rule: &str) {
        let script = format!(
            "table inet loss {{\n  chain pre {{\n    type filter hook prerouting priority -300;\n    {rule}\n  }}\n}}\n"
        );
        let mut c = self.cmd(i, "nft");
        c.args(["-f", "-"]).stdin(Stdio::piped());
        let mut child = c.spawn().expect("nft");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "nft on host {i} failed");
    }

    /// Makes host `i`'s NIC cut UDP segmentation-offload sends into datagrams itself, as a
    /// real NIC's wire does: without it a veth passes the whole batch on, and a loss rule
    /// elsewhere would drop 32 datagrams at a time.
    pub fn segment_on_the_wire(&self, i: usize) {
        let out = self
            .cmd(i, "ethtool")
            .args(["-K", "eth0", "tx-udp-segmentation", "off"])
            .output()
            .unwrap();
        assert!(out.status.success(), "ethtool on host {i} failed: {out:?}");
    }

    /// Drops `percent` % of the UDP host `i` receives (data, replies, everything), at random.
    pub fn random_loss(&self, i: usize, percent: u32) {
        self.nft(
            i,
            &format!("udp dport != 67 numgen random mod 100 < {percent} counter drop"),
        );
    }

    /// Drops `burst` UDP datagrams in a row out of every `every` that host `i` receives (the
    /// last ones of each period, so the first datagrams a host sees get through).
    pub fn burst_loss(&self, i: usize, burst: u32, every: u32) {
        self.nft(
            i,
            &format!(
                "udp dport != 67 numgen inc mod {every} >= {} counter drop",
                every - burst
            ),
        );
    }

    /// Packets dropped by host `i`'s loss rule so far (from the rule's counter).
    pub fn dropped(&self, i: usize) -> Option<u64> {
        let out = self
            .cmd(i, "nft")
            .args(["-a", "list", "table", "inet", "loss"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let at = text.find("packets ")? + "packets ".len();
        text[at..].split_whitespace().next()?.parse().ok()
    }

    /// Limits what host `i` receives to `rate` (a tc rate like `4mbit`), on its switch port.
    pub fn throttle_in(&self, i: usize, rate: &str) {
        let port = format!("p{i}");
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.switch(),
                "tc",
                "qdisc",
                "add",
                "dev",
                &port,
            ])
            .args([
                "root", "tbf", "rate", rate, "burst", "32kb", "latency", "200ms",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn cleanup_names(&self, n: usize) {
        for i in 0..n {
            kill_and_delete(&self.host(i));
        }
        kill_and_delete(&self.switch());
    }
}

fn kill_and_delete(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).output();
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .output();
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.cleanup_names(self.n);
    }
}

/// Kernel limits that are per host on a real network but shared by every namespace here,
/// raised (never lowered) to what 40 hosts in one kernel need:
/// - every veth frame goes through the receiving CPU's backlog queue, 1000 packets by
///   default: 40 hosts on 2 CPUs overflow it and the kernel drops SYNs and ARP;
/// - the ARP table is one for all namespaces (its limit, gc_thresh3, is 1024 entries): 41
///   hosts that each talk to all the others need ~1700, and a host whose neighbour entries
///   cannot be made sends nothing to its peers ("neighbor table overflow" in the kernel log;
///   a BitTorrent agent then connects to no one).
fn raise_limits() {
    for (path, want) in [
        ("/proc/sys/net/core/netdev_max_backlog", 10_000u64),
        ("/proc/sys/net/ipv4/neigh/default/gc_thresh1", 4_096),
        ("/proc/sys/net/ipv4/neigh/default/gc_thresh2", 8_192),
        ("/proc/sys/net/ipv4/neigh/default/gc_thresh3", 16_384),
    ] {
        let now: u64 = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(want);
        if now < want {
            let _ = std::fs::write(path, want.to_string());
        }
    }
}
