//! The daemon and 40 agents in network namespaces (TESTING.md), one deployment over
//! BitTorrent: the server's upload capped at 40 Mbit/s, so the machines must trade pieces
//! with each other (most bytes come from peers, not the server); one agent killed mid-way and
//! started again. Every disk must equal the image; every agent stays within its memory budget;
//! a machine the swarm gives nothing finishes over unicast, which only a few may need.

use std::fs;
use std::time::{Duration, Instant};

use drover_tests::deploy::{lab_disk, task_of, wait_deployment};
use drover_tests::lab::Lab;
use drover_tests::server::Server;
use drover_tests::{agent_bin, drover_bin, require, run, Env};

const AGENTS: usize = 40;
const SERVER: &str = "10.77.0.10:8080";
/// The agent's memory budget (it runs from an initramfs on machines with little RAM).
const AGENT_BUDGET_MIB: u64 = 128;

fn mac(i: usize) -> String {
    format!("02:00:00:00:07:{i:02x}")
}

/// `drover ARGS` inside host 0 (the server's), against its API.
fn cli(lab: &Lab, token: &str, args: &[&str]) -> serde_json::Value {
    let out = lab
        .cmd(0, drover_bin().to_str().unwrap())
        .arg("--json")
        .args(args)
        .args(["--server", &format!("http://{SERVER}"), "--token", token])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "drover {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn agent(lab: &mut Lab, env: &Env, i: usize, run_no: u32) -> usize {
    let mut c = lab.cmd(i, agent_bin().to_str().unwrap());
    c.args(["--server", &format!("http://{SERVER}"), "--disk"])
        .arg(env.path(&format!("disk{i}.img")))
        .args(["--iface", "eth0", "--max-idle", "120s"]);
    c.stdout(fs::File::create(env.path(&format!("agent{i}-{run_no}.log"))).unwrap());
    c.stderr(fs::File::create(env.path(&format!("agent{i}-{run_no}.err"))).unwrap());
    lab.spawn(c)
}

fn agent_log(env: &Env, i: usize, run_no: u32) -> String {
    fs::read_to_string(env.path(&format!("agent{i}-{run_no}.err"))).unwrap_or_default()
}

fn wait_child(lab: &mut Lab, k: usize) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = lab.child(k).try_wait().unwrap() {
            return st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(240),
            "an agent did not exit"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn forty_agents_over_bittorrent_trade_pieces_with_a_capped_server() {
    if !require(
        "forty_agents_bittorrent",
        &["ip", "sgdisk", "mkfs.ext4", "mkntfs", "cmp", "curl"],
    ) {
        return;
    }
    let env = Env::new();
    let src = lab_disk(&env, 24 << 20, 78);
    env.capture(&src, "lab");
    let m = env.manifest("lab");
    let reference = env.path("reference.img");
    drover_tests::sparse_file(&reference, 64 << 20);
    env.restore("lab", &reference);
    fs::remove_file(&src).unwrap();
    let token = env.ok(&["token", "create", "admin"]).trim().to_string();

    let mut lab = Lab::new("sw", AGENTS + 1);
    for i in 1..=AGENTS {
        lab.set_mac(i, &mac(i));
    }
    let mut c = lab.cmd(0, drover_bin().to_str().unwrap());
    c.arg("--data-dir")
        .arg(env.data())
        .args(["serve", "--http", SERVER, "--iface", "eth0"])
        .args(["--bittorrent-upload-rate", "40M"]);
    let srv = Server::start_cmd(c);
    for i in 1..=AGENTS {
        cli(&lab, &token, &["machine", "add", &mac(i), "--group", "lab"]);
    }
    let d = cli(
        &lab,
        &token,
        &["deploy", "lab", "--to", "lab", "--transport", "bittorrent"],
    );
    let id = d["id"].as_str().unwrap().to_string();
    assert_eq!(d["machines"], AGENTS);
    // Agent 3 gets its pieces through an 8 Mbit/s port, so that it is still writing when it is
    // killed: the others can finish a 24 MiB image within one poll of its progress.
    lab.throttle_in(3, "8mbit");
    let mut kids: Vec<usize> = (1..=AGENTS).map(|i| agent(&mut lab, &env, i, 1)).collect();
    let show = |lab: &Lab| cli(lab, &token, &["deployment", "show", &id]);

    // Agent 3 is killed once its disk is partly written, and starts again.
    let d = wait_deployment(
        Duration::from_secs(180),
        "agent 3's progress",
        || show(&lab),
        |d| task_of(d, &mac(3))["percent"].as_f64().unwrap_or(0.0) >= 15.0,
    );
    let t = task_of(&d, &mac(3));
    assert_ne!(
        t["state"], "done",
        "agent 3 finished before it could be killed mid-way: {t:#}"
    );
    let _ = lab.child(kids[2]).kill();
    let _ = lab.child(kids[2]).wait();
    kids[2] = agent(&mut lab, &env, 3, 2);

    let d = wait_deployment(
        Duration::from_secs(300),
        "every machine done",
        || show(&lab),
        |d| d["state"] != "running" && d["state"] != "waiting",
    );
    assert_eq!(d["state"], "done", "{d:#}\nserver: {}", srv.log());
    let mut peaks = Vec::new();
    for (n, &k) in kids.iter().enumerate() {
        let i = n + 1;
        let run_no = if i == 3 { 2 } else { 1 };
        let st = wait_child(&mut lab, k);
        let log = agent_log(&env, i, run_no);
        assert!(st.success(), "agent {i}: {log}");
        let peak: u64 = log
            .split("peak memory: ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("agent {i} did not say its peak memory: {log}"));
        peaks.push((peak, i, log));
    }
    peaks.sort_unstable_by_key(|p| p.0);
    eprintln!(
        "agents' peak memory (MiB): least {}, median {}, most {}",
        peaks[0].0,
        peaks[peaks.len() / 2].0,
        peaks[peaks.len() - 1].0
    );
    for (peak, i, log) in &peaks {
        assert!(
            *peak <= AGENT_BUDGET_MIB,
            "agent {i} used {peak} MiB: {log}"
        );
    }
    let mut from_swarm = 0u64;
    let mut by_unicast = Vec::new();
    for i in 1..=AGENTS {
        let t = task_of(&d, &mac(i));
        assert_eq!(t["state"], "done", "{t:#}");
        // A machine the swarm gives nothing for a minute finishes over unicast (the last
        // resort). In this lab none may: every one has 39 peers and the seed. (Machines that
        // did were the namespaces' shared neighbour table overflowing, which left a host
        // unable to reach any peer: `tests::lab` raises its limits.)
        if t["unicast_chunks"].as_u64().unwrap() > 0 {
            let run_no = if i == 3 { 2 } else { 1 };
            by_unicast.push(format!("agent {i}: {}", agent_log(&env, i, run_no)));
        }
        from_swarm += t["swarm_bytes"].as_u64().unwrap();
        run(
            "cmp",
            &[
                env.path(&format!("disk{i}.img")).to_str().unwrap(),
                reference.to_str().unwrap(),
            ],
        );
    }
    eprintln!(
        "machines that left the swarm for unicast: {} of {AGENTS}",
        by_unicast.len()
    );
    assert!(
        by_unicast.is_empty(),
        "{} machines left the swarm for unicast (their peers gave them nothing for a \
         minute; look for \"neighbor table overflow\" in the kernel log, and at each \
         agent's peer connections):\n{}",
        by_unicast.len(),
        by_unicast.join("\n")
    );
    // The server's seed gave a small part of what the machines received: peers gave the rest.
    let metrics = lab
        .cmd(0, "curl")
        .args(["-s", &format!("http://{SERVER}/metrics")])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    let served: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("drover_bittorrent_uploaded_bytes{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        from_swarm >= (AGENTS as u64 - 1) * m.used_bytes() / 2,
        "{from_swarm}"
    );
    assert!(
        served > 0 && served * 2 < from_swarm,
        "the server uploaded {served} of the {from_swarm} bytes the machines received"
    );
    eprintln!(
        "server uploaded {served} of {from_swarm} bytes received ({:.0} %)",
        100.0 * served as f64 / from_swarm as f64
    );
    drop(srv);
}
