//! The daemon and 40 agents in network namespaces (TESTING.md): one multicast deployment of
//! a real ext4 + NTFS disk image to a group, with loss on some links; one agent killed
//! mid-way and restarted; the server killed and restarted mid-deployment; one machine that
//! comes after the stream and finishes over unicast. Every disk must equal the image.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use drover_tests::deploy::{lab_disk, task_of, wait_deployment};
use drover_tests::lab::Lab;
use drover_tests::server::Server;
use drover_tests::{agent_bin, drover_bin, require, run, Env};

const AGENTS: usize = 40;
const SERVER_URL: &str = "http://10.77.0.10:8080";

fn mac(i: usize) -> String {
    format!("02:00:00:00:02:{i:02x}")
}

/// `drover ARGS` inside host 0 (the server's), against its API.
fn cli(lab: &Lab, token: &str, args: &[&str]) -> serde_json::Value {
    let out = lab
        .cmd(0, drover_bin().to_str().unwrap())
        .arg("--json")
        .args(args)
        .args(["--server", SERVER_URL, "--token", token])
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

fn server_cmd(lab: &Lab, env: &Env) -> Command {
    let mut c = lab.cmd(0, drover_bin().to_str().unwrap());
    c.arg("--data-dir")
        .arg(env.data())
        .args(["serve", "--http", "10.77.0.10:8080", "--iface", "eth0"])
        // Slow enough that the test can kill things mid-way (40 receivers share 2 cores), and
        // a window of two chunks, so chunks complete one after another.
        .args(["--multicast-rate", "4M", "--multicast-window", "8M"]);
    c
}

fn agent(lab: &mut Lab, env: &Env, i: usize, run_no: u32) -> usize {
    let mut c = lab.cmd(i, agent_bin().to_str().unwrap());
    c.args(["--server", SERVER_URL, "--disk"])
        .arg(env.path(&format!("disk{i}.img")))
        .args(["--iface", "eth0", "--max-idle", "120s"]);
    c.stdout(fs::File::create(env.path(&format!("agent{i}-{run_no}.log"))).unwrap());
    c.stderr(fs::File::create(env.path(&format!("agent{i}-{run_no}.err"))).unwrap());
    lab.spawn(c)
}

fn agent_log(env: &Env, i: usize, run_no: u32) -> String {
    fs::read_to_string(env.path(&format!("agent{i}-{run_no}.err"))).unwrap_or_default()
}

/// Polls the deployment (through the CLI in host 0) until `f` holds.
fn wait_until(
    lab: &Lab,
    token: &str,
    id: &str,
    limit: Duration,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_deployment(
        limit,
        what,
        || cli(lab, token, &["deployment", "show", id]),
        f,
    )
}

/// Waits for an agent to exit (they give up on their own after --max-idle).
fn wait_child(lab: &mut Lab, k: usize) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = lab.child(k).try_wait().unwrap() {
            return st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "an agent did not exit"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn done_fraction(d: &serde_json::Value) -> f64 {
    d["bytes_done"].as_f64().unwrap_or(0.0) / d["bytes_total"].as_f64().unwrap_or(1.0).max(1.0)
}

#[test]
fn forty_agents_multicast_with_a_killed_agent_a_server_restart_and_a_late_machine() {
    if !require(
        "forty_agents",
        &[
            "ip",
            "nft",
            "ethtool",
            "sgdisk",
            "mkfs.ext4",
            "mkntfs",
            "cmp",
        ],
    ) {
        return;
    }
    let env = Env::new();
    let src = lab_disk(&env, 24 << 20, 77);
    env.capture(&src, "lab");
    let reference = env.path("reference.img");
    drover_tests::sparse_file(&reference, 64 << 20);
    env.restore("lab", &reference);
    fs::remove_file(&src).unwrap();
    let token = env.ok(&["token", "create", "admin"]).trim().to_string();

    let mut lab = Lab::new("dl", AGENTS + 1);
    lab.segment_on_the_wire(0);
    for i in 1..=AGENTS {
        lab.set_mac(i, &mac(i));
    }
    for i in 1..=8 {
        lab.random_loss(i, 3);
    }
    let srv = Server::start_cmd(server_cmd(&lab, &env));
    for i in 1..=AGENTS {
        cli(&lab, &token, &["machine", "add", &mac(i), "--group", "lab"]);
    }
    let d = cli(
        &lab,
        &token,
        &[
            "deploy",
            "lab",
            "--to",
            "lab",
            "--transport",
            "multicast",
            "--min-machines",
            &(AGENTS - 1).to_string(),
            "--max-wait",
            "120s",
        ],
    );
    let id = d["id"].as_str().unwrap().to_string();
    assert_eq!(d["machines"], AGENTS);
    assert_eq!(d["state"], "waiting");

    // Every machine but the last boots now (their agents learn their MAC from the NIC).
    let mut kids: Vec<usize> = (1..AGENTS).map(|i| agent(&mut lab, &env, i, 1)).collect();
    wait_until(
        &lab,
        &token,
        &id,
        Duration::from_secs(120),
        "the stream",
        |d| d["state"] == "running",
    );

    // Agent 3 is killed once its disk is partly written, and starts again.
    wait_until(
        &lab,
        &token,
        &id,
        Duration::from_secs(120),
        "agent 3's progress",
        |d| {
            let t = task_of(d, &mac(3));
            t["percent"].as_f64().unwrap_or(0.0) >= 15.0 || t["state"] == "done"
        },
    );
    let _ = lab.child(kids[2]).kill();
    let _ = lab.child(kids[2]).wait();
    kids[2] = agent(&mut lab, &env, 3, 2);

    // The server is killed (no goodbye) and comes back.
    wait_until(
        &lab,
        &token,
        &id,
        Duration::from_secs(120),
        "40 % of the deployment",
        |d| done_fraction(d) >= 0.4,
    );
    srv.kill();
    std::thread::sleep(Duration::from_secs(1));
    let srv = Server::start_cmd(server_cmd(&lab, &env));

    let d = wait_until(
        &lab,
        &token,
        &id,
        Duration::from_secs(300),
        "39 machines done (or one failed)",
        |d| {
            (1..AGENTS).all(|i| task_of(d, &mac(i))["state"] == "done")
                || (1..AGENTS).any(|i| task_of(d, &mac(i))["state"] == "failed")
        },
    );
    if let Some(i) = (1..AGENTS).find(|&i| task_of(&d, &mac(i))["state"] == "failed") {
        let run_no = if i == 3 { 2 } else { 1 };
        panic!(
            "agent {i} failed: {:#}\nits log: {}\nthe server: {}",
            task_of(&d, &mac(i)),
            agent_log(&env, i, run_no),
            srv.log()
        );
    }
    assert!(
        d["mcast_group"].is_null(),
        "the session should be over: {d:#}"
    );
    // The last machine comes late: it finishes over unicast.
    let late = agent(&mut lab, &env, AGENTS, 1);
    let d = wait_until(
        &lab,
        &token,
        &id,
        Duration::from_secs(120),
        "the late machine",
        |d| d["state"] != "running" && d["state"] != "waiting",
    );
    assert_eq!(d["state"], "done", "{d:#}");
    let status = wait_child(&mut lab, late);
    assert!(status.success(), "{}", agent_log(&env, AGENTS, 1));
    for (n, &k) in kids.iter().enumerate() {
        let i = n + 1;
        let run_no = if i == 3 { 2 } else { 1 };
        let st = wait_child(&mut lab, k);
        assert!(
            st.success(),
            "agent {i}: {}\nits first run: {}\nthe server: {}",
            agent_log(&env, i, run_no),
            agent_log(&env, i, 1),
            srv.log()
        );
    }

    let chunks = env.manifest("lab").chunks().count() as i64;
    let late_task = task_of(&d, &mac(AGENTS));
    assert_eq!(late_task["multicast_chunks"], 0, "{late_task:#}");
    assert_eq!(
        late_task["unicast_chunks"].as_i64().unwrap() + late_task["kept_chunks"].as_i64().unwrap(),
        chunks
    );
    let restarted = task_of(&d, &mac(3));
    assert!(
        restarted["kept_chunks"].as_i64().unwrap() > 0,
        "agent 3 should have kept what it wrote before it was killed: {restarted:#}"
    );
    let by_multicast: i64 = (1..AGENTS)
        .map(|i| task_of(&d, &mac(i))["multicast_chunks"].as_i64().unwrap())
        .sum();
    assert!(
        by_multicast as f64 >= 0.3 * ((AGENTS - 1) as i64 * chunks) as f64,
        "most of the first 40 % (and more) should have come by multicast: {by_multicast} of {}",
        (AGENTS - 1) as i64 * chunks
    );
    for i in 1..=AGENTS {
        run(
            "cmp",
            &[
                env.path(&format!("disk{i}.img")).to_str().unwrap(),
                reference.to_str().unwrap(),
            ],
        );
    }
    drop(srv);
}
