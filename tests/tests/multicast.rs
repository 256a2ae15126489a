//! `drover multicast send|receive` over real sockets in network namespaces: a bridge, veth
//! pairs, nftables loss and tbf rate limits (TESTING.md).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drover_tests::lab::Lab;
use drover_tests::{drover_bin, random_file, require, Env, Loop};

/// Waits for `child` at most `limit`; kills it and panics on timeout.
fn wait_for(lab: &mut Lab, k: usize, limit: Duration, what: &str) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = lab.child(k).try_wait().expect("wait") {
            return st;
        }
        if t0.elapsed() > limit {
            let _ = lab.child(k).kill();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `drover` command inside host `i`, output to files in `env`.
fn drover(lab: &Lab, env: &Env, i: usize, log: &str, args: &[&str]) -> Command {
    let mut c = lab.cmd(i, drover_bin().to_str().unwrap());
    c.arg("--data-dir").arg(env.data()).args(args);
    c.stdout(fs::File::create(env.path(&format!("{log}.out"))).unwrap());
    c.stderr(fs::File::create(env.path(&format!("{log}.err"))).unwrap());
    c
}

fn log(env: &Env, name: &str) -> String {
    let out = fs::read_to_string(env.path(&format!("{name}.out"))).unwrap_or_default();
    let err = fs::read_to_string(env.path(&format!("{name}.err"))).unwrap_or_default();
    format!("--- {name} stdout:\n{out}--- {name} stderr:\n{err}")
}

fn summary(env: &Env, name: &str) -> serde_json::Value {
    let out = fs::read_to_string(env.path(&format!("{name}.out"))).unwrap();
    let line = out
        .lines()
        .last()
        .unwrap_or_else(|| panic!("{}", log(env, name)));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {}", log(env, name)))
}

/// Waits until `name`'s stderr contains `text`.
fn wait_log(env: &Env, name: &str, text: &str, limit: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        let err = fs::read_to_string(env.path(&format!("{name}.err"))).unwrap_or_default();
        if err.contains(text) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{name} never logged {text:?}:\n{}", log(env, name));
}

/// Waits until `name` (a sender) reports having sent at least `percent` % once.
fn wait_progress(env: &Env, name: &str, percent: u32, limit: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        let err = fs::read_to_string(env.path(&format!("{name}.err"))).unwrap_or_default();
        let done = err.lines().filter_map(|l| {
            let rest = &l[l.find("sent ")? + 5..];
            rest.split_whitespace().next()?.parse::<u32>().ok()
        });
        if done.max().is_some_and(|p| p >= percent) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{name} never reached {percent} %:\n{}", log(env, name));
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    let (a, b) = (fs::read(a).unwrap(), fs::read(b).unwrap_or_default());
    a.len() == b.len() && a == b
}

/// The issue's scenario: 40 receivers, random and bursty loss on some (all their UDP:
/// data, replies and feedback alike), one killed mid-way, one late, one behind a switch port
/// throttled to a tenth of the rate. Every surviving output is byte-identical to the source.
#[test]
fn forty_receivers_with_loss_a_death_a_late_joiner_and_a_slow_port() {
    if !require(
        "multicast forty receivers",
        &["root", "ip", "nft", "tc", "ethtool"],
    ) {
        return;
    }
    let env = Env::new();
    let src = env.path("source.bin");
    random_file(&src, 24 << 20, 40);
    let n = 40;
    let mut lab = Lab::new("m40", n + 1);
    lab.segment_on_the_wire(0);
    for i in 1..=6 {
        lab.random_loss(i, 5);
    }
    for i in 7..=8 {
        lab.random_loss(i, 15);
    }
    for i in 9..=11 {
        lab.burst_loss(i, 40, 800);
    }
    let (killed, late, slow) = (20, 30, 40);
    lab.throttle_in(slow, "8mbit");
    let out = |i: usize| env.path(&format!("out{i}"));
    let mut rx = vec![usize::MAX; n + 1];
    let receive = |lab: &Lab, i: usize| {
        let o = out(i);
        let args = [
            "--json",
            "multicast",
            "receive",
            "--iface",
            "eth0",
            "--out",
            o.to_str().unwrap(),
            "--wait",
            "60s",
        ];
        drover(lab, &env, i, &format!("r{i}"), &args)
    };
    for i in (1..=n).filter(|&i| i != late) {
        let c = receive(&lab, i);
        rx[i] = lab.spawn(c);
    }
    let sender = {
        let c = drover(
            &lab,
            &env,
            0,
            "sender",
            &[
                "--json",
                "multicast",
                "send",
                src.to_str().unwrap(),
                "--iface",
                "eth0",
                "--rate",
                "20M",
                "--min-receivers",
                &(n - 1).to_string(),
                "--max-wait",
                "90s",
                "--dead-after",
                "3s",
                "--window",
                "8M",
            ],
        );
        lab.spawn(c)
    };
    wait_log(&env, "sender", "started with", Duration::from_secs(90));
    wait_progress(&env, "sender", 30, Duration::from_secs(60));
    lab.child(rx[killed]).kill().unwrap();
    wait_progress(&env, "sender", 50, Duration::from_secs(60));
    let c = receive(&lab, late);
    rx[late] = lab.spawn(c);

    let st = wait_for(&mut lab, sender, Duration::from_secs(240), "the sender");
    assert!(st.success(), "sender failed\n{}", log(&env, "sender"));
    for i in (1..=n).filter(|&i| i != killed) {
        let st = wait_for(&mut lab, rx[i], Duration::from_secs(30), "a receiver");
        assert!(
            st.success(),
            "receiver {i} failed\n{}",
            log(&env, &format!("r{i}"))
        );
        assert!(
            same_bytes(&src, &out(i)),
            "receiver {i}'s output differs from the source\n{}",
            log(&env, &format!("r{i}"))
        );
    }
    let s = summary(&env, "sender");
    assert_eq!(s["receivers"], n, "{s}");
    assert_eq!(s["finished"], n - 1, "{s}");
    assert_eq!(s["dead"].as_array().unwrap().len(), 1, "{s}");
    assert!(
        !s["demoted"].as_array().unwrap().is_empty(),
        "the slow receiver: {s}"
    );
    let late_s = summary(&env, &format!("r{late}"));
    assert!(late_s["chunks_unicast"].as_u64().unwrap() > 0, "{late_s}");
    for i in [1, 7, 9] {
        assert!(lab.dropped(i).unwrap_or(0) > 0, "host {i} lost nothing");
    }
    eprintln!("sender: {s}");
}

/// An image (ext4 in a GPT disk) to two receivers over the subnet's broadcast address: one
/// writes a loop device, one a file that does not exist yet. Both come out identical to a
/// local `drover image restore`.
#[test]
fn image_over_broadcast_to_a_device_and_a_file() {
    if !require(
        "multicast image",
        &["root", "ip", "mkfs.ext4", "sgdisk", "losetup"],
    ) {
        return;
    }
    let env = Env::new();
    let disk = env.path("disk.img");
    drover_tests::sparse_file(&disk, 64 << 20);
    drover_tests::run(
        "sgdisk",
        &["-o", "-n1:2048:+40M", "-t1:8300", disk.to_str().unwrap()],
    );
    let part = env.path("part.img");
    let tree = env.path("tree");
    drover_tests::make_tree(&tree, 12 << 20, 7);
    drover_tests::sparse_file(&part, 40 << 20);
    drover_tests::run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            tree.to_str().unwrap(),
            part.to_str().unwrap(),
        ],
    );
    drover_tests::run(
        "dd",
        &[
            &format!("if={}", part.display()),
            &format!("of={}", disk.display()),
            "bs=1M",
            "seek=1",
            "conv=notrunc",
            "status=none",
        ],
    );
    env.capture(&disk, "lab");
    let reference = env.path("reference.img");
    drover_tests::sparse_file(&reference, 64 << 20);
    env.restore("lab", &reference);

    let dev_file = env.path("dev.img");
    drover_tests::sparse_file(&dev_file, 64 << 20);
    let dev = Loop::attach(&dev_file, 0, None);
    let file_out = env.path("new/out.img");
    fs::create_dir_all(file_out.parent().unwrap()).unwrap();

    let mut lab = Lab::new("mimg", 3);
    let recv = |lab: &mut Lab, i: usize, out: &Path| {
        let c = drover(
            lab,
            &env,
            i,
            &format!("r{i}"),
            &[
                "--json",
                "multicast",
                "receive",
                "--out",
                out.to_str().unwrap(),
                "--wait",
                "30s",
            ],
        );
        lab.spawn(c)
    };
    let r1 = recv(&mut lab, 1, &dev.dev);
    let r2 = recv(&mut lab, 2, &file_out);
    let c = drover(
        &lab,
        &env,
        0,
        "sender",
        &[
            "--json",
            "multicast",
            "send",
            "lab",
            "--broadcast",
            "--rate",
            "200M",
            "--min-receivers",
            "2",
            "--max-wait",
            "30s",
        ],
    );
    let s = lab.spawn(c);
    let st = wait_for(&mut lab, s, Duration::from_secs(60), "the sender");
    assert!(st.success(), "{}", log(&env, "sender"));
    for (k, name) in [(r1, "r1"), (r2, "r2")] {
        let st = wait_for(&mut lab, k, Duration::from_secs(20), name);
        assert!(st.success(), "{}", log(&env, name));
    }
    let sum = summary(&env, "sender");
    assert_eq!(sum["finished"], 2, "{sum}");
    drop(dev);
    assert!(same_bytes(&reference, &dev_file), "the loop device differs");
    assert!(same_bytes(&reference, &file_out), "the new file differs");
}

/// A receiver whose device is too small says so and never joins; nothing is written.
#[test]
fn receiver_refuses_a_too_small_device_before_joining() {
    if !require("multicast too small", &["root", "ip", "losetup"]) {
        return;
    }
    let env = Env::new();
    let src = env.path("src.bin");
    random_file(&src, 6 << 20, 3);
    let small = env.path("small.img");
    drover_tests::sparse_file(&small, 4 << 20);
    let dev = Loop::attach(&small, 0, None);
    let mut lab = Lab::new("msmall", 2);
    let c = drover(
        &lab,
        &env,
        0,
        "sender",
        &[
            "multicast",
            "send",
            src.to_str().unwrap(),
            "--max-wait",
            "8s",
        ],
    );
    let s = lab.spawn(c);
    let c = drover(
        &lab,
        &env,
        1,
        "r1",
        &[
            "multicast",
            "receive",
            "--out",
            dev.dev.to_str().unwrap(),
            "--wait",
            "20s",
        ],
    );
    let r = lab.spawn(c);
    let st = wait_for(&mut lab, r, Duration::from_secs(30), "the receiver");
    assert_eq!(st.code(), Some(1), "{}", log(&env, "r1"));
    let err = log(&env, "r1");
    assert!(
        err.contains("holds 4194304 bytes, the file needs 6291456"),
        "{err}"
    );
    // Nobody joined: the sender streams once after --max-wait and reports it.
    let st = wait_for(&mut lab, s, Duration::from_secs(60), "the sender");
    assert_eq!(st.code(), Some(1), "{}", log(&env, "sender"));
    assert!(log(&env, "sender").contains("no receiver joined"));
    drop(dev);
    assert!(fs::read(&small).unwrap().iter().all(|&b| b == 0));
}

/// Garbage, forged and foreign datagrams on the group are counted and dropped; the output
/// is still right.
#[test]
fn forged_and_foreign_datagrams_are_dropped() {
    if !require("multicast forged", &["root", "ip", "python3"]) {
        return;
    }
    let env = Env::new();
    let src = env.path("src.bin");
    random_file(&src, 12 << 20, 5);
    let mut lab = Lab::new("mforge", 3);
    let out = env.path("out.bin");
    let c = drover(
        &lab,
        &env,
        1,
        "r1",
        &[
            "--json",
            "multicast",
            "receive",
            "--out",
            out.to_str().unwrap(),
            "--wait",
            "30s",
        ],
    );
    let r = lab.spawn(c);
    // Host 2 floods the group with datagrams that look like drover's (right magic, version
    // and kind, every session id, random tags) and with plain garbage.
    let script = r#"
import socket, os, struct, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", 9077))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             socket.inet_aton("239.255.77.77") + socket.inet_aton("0.0.0.0"))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
# Learn the wire version and session id from the sender's announce, then forge data with them.
while True:
    d, _ = s.recvfrom(65536)
    if len(d) > 8 and d[0] == 0xD7 and d[2] == 2:
        ver, session = d[1], d[4:8]
        break
end = time.time() + 12
while time.time() < end:
    for kind in (1, 3, 4):
        hdr = bytes([0xD7, ver, kind, 0]) + session + os.urandom(20)
        s.sendto(hdr + os.urandom(1428 + 16), ("239.255.77.77", 9077))
    s.sendto(bytes([0xD7, ver, 1, 0]) + os.urandom(1470), ("239.255.77.77", 9077))
    s.sendto(os.urandom(200), ("239.255.77.77", 9077))
    time.sleep(0.002)
"#;
    let mut c = lab.cmd(2, "python3");
    c.args(["-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    lab.spawn(c);
    let c = drover(
        &lab,
        &env,
        0,
        "sender",
        &[
            "--json",
            "multicast",
            "send",
            src.to_str().unwrap(),
            "--rate",
            "50M",
        ],
    );
    let s = lab.spawn(c);
    let st = wait_for(&mut lab, s, Duration::from_secs(60), "the sender");
    assert!(st.success(), "{}", log(&env, "sender"));
    let st = wait_for(&mut lab, r, Duration::from_secs(20), "the receiver");
    assert!(st.success(), "{}", log(&env, "r1"));
    assert!(same_bytes(&src, &out));
    let sum = summary(&env, "r1");
    // Forged datagrams of our session fail their tag; the others are foreign or garbage.
    assert!(sum["rejected_datagrams"].as_u64().unwrap() > 100, "{sum}");
    assert!(sum["foreign_datagrams"].as_u64().unwrap() > 100, "{sum}");
}
