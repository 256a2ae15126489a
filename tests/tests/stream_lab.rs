//! A deployment straight from a machine's disk (`drover deploy --from MAC --to GROUP
//! --keep-as NAME`), in network namespaces (TESTING.md): the daemon in host 0, the source
//! machine's agent in host 1 reading a real GPT disk (ext4 with files, NTFS), three target
//! agents in hosts 2–4. The targets' multicast stream carries the chunks as the source's agent
//! reads and uploads them; every target disk must end equal to the source disk, and the image
//! kept must restore to it too.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use drover_tests::deploy::{lab_disk, task_of, wait_deployment};
use drover_tests::lab::Lab;
use drover_tests::server::Server;
use drover_tests::{agent_bin, drover_bin, require, run, Env};

const SERVER_URL: &str = "http://10.77.0.10:8080";

fn mac(i: usize) -> String {
    format!("02:00:00:00:05:{i:02x}")
}

/// `drover --json ARGS` inside host 0, against its API; the JSON, or the failure's output.
fn cli_result(lab: &Lab, token: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = lab
        .cmd(0, drover_bin().to_str().unwrap())
        .arg("--json")
        .args(args)
        .args(["--server", SERVER_URL, "--token", token])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.success() {
        true => Ok(serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)),
        false => Err(text),
    }
}

fn cli(lab: &Lab, token: &str, args: &[&str]) -> serde_json::Value {
    cli_result(lab, token, args).unwrap_or_else(|e| panic!("drover {args:?}: {e}"))
}

fn server_cmd(lab: &Lab, env: &Env) -> Command {
    let mut c = lab.cmd(0, drover_bin().to_str().unwrap());
    c.arg("--data-dir").arg(env.data()).args([
        "serve",
        "--http",
        "10.77.0.10:8080",
        "--iface",
        "eth0",
    ]);
    c
}

fn agent(lab: &mut Lab, env: &Env, i: usize, disk: &std::path::Path) -> usize {
    let mut c = lab.cmd(i, agent_bin().to_str().unwrap());
    c.args(["--server", SERVER_URL, "--disk"]).arg(disk).args([
        "--iface",
        "eth0",
        "--max-idle",
        "120s",
    ]);
    c.stdout(fs::File::create(env.path(&format!("agent{i}.log"))).unwrap());
    c.stderr(fs::File::create(env.path(&format!("agent{i}.err"))).unwrap());
    lab.spawn(c)
}

fn agent_log(env: &Env, i: usize) -> String {
    fs::read_to_string(env.path(&format!("agent{i}.err"))).unwrap_or_default()
}

/// `drover image gc` on the server's data directory, which must not wait for long (a stream
/// holds the store while it runs); its output.
fn gc_within(env: &Env) -> String {
    let mut c = Command::new(drover_bin());
    c.arg("--data-dir").arg(env.data()).args(["image", "gc"]);
    let o = drover_tests::deploy::output_within(c, Duration::from_secs(60));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "drover image gc: {text}");
    text
}

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

#[test]
fn a_machines_disk_streams_to_three_agents_as_it_is_read_and_is_kept_as_an_image() {
    if !require(
        "stream_from_a_machine",
        &["ip", "sgdisk", "mkfs.ext4", "mkntfs", "cmp"],
    ) {
        return;
    }
    let env = Env::new();
    let src = lab_disk(&env, 20 << 20, 55);
    let token = env.ok(&["token", "create", "admin"]).trim().to_string();

    let mut lab = Lab::new("st", 5);
    lab.segment_on_the_wire(0);
    // The source's uploads (what host 0 receives) take seconds: the stream runs meanwhile.
    lab.throttle_in(0, "24mbit");
    for i in 1..=4 {
        lab.set_mac(i, &mac(i));
    }
    let srv = Server::start_cmd(server_cmd(&lab, &env));
    cli(&lab, &token, &["machine", "add", &mac(1)]);
    for i in 2..=4 {
        cli(&lab, &token, &["machine", "add", &mac(i), "--group", "lab"]);
    }

    // Bad requests first: nothing is created.
    let e = cli_result(
        &lab,
        &token,
        &[
            "deploy",
            "--from",
            &mac(1),
            "--to",
            "lab",
            "--transport",
            "bittorrent",
        ],
    )
    .unwrap_err();
    assert!(e.contains("multicast or unicast"), "{e}");
    let e = cli_result(
        &lab,
        &token,
        &["deploy", "--from", "02:00:00:00:05:99", "--to", "lab"],
    )
    .unwrap_err();
    assert!(e.contains("not in the inventory"), "{e}");
    let e = cli_result(
        &lab,
        &token,
        &["deploy", "--from", &mac(2), "--to", &mac(2)],
    )
    .unwrap_err();
    assert!(e.contains("no targets but the source"), "{e}");

    let d = cli(
        &lab,
        &token,
        &[
            "deploy",
            "--from",
            &mac(1),
            "--to",
            "lab",
            "--keep-as",
            "copy",
            "--min-machines",
            "3",
        ],
    );
    let id = d["id"].as_str().unwrap().to_string();
    assert_eq!(d["machines"], 3, "{d:#}");
    assert_eq!(d["transport"], "multicast", "{d:#}");

    // The targets boot first and wait for the source's outline; then the source.
    let targets: Vec<usize> = (2..=4)
        .map(|i| {
            let disk = env.path(&format!("disk{i}.img"));
            drover_tests::sparse_file(&disk, 64 << 20);
            agent(&mut lab, &env, i, &disk)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let source = agent(&mut lab, &env, 1, &src);

    let d = wait_deployment(
        Duration::from_secs(240),
        "the three targets",
        || cli(&lab, &token, &["deployment", "show", &id]),
        |d| {
            (2..=4).all(|i| task_of(d, &mac(i))["state"] == "done")
                || (2..=4).any(|i| {
                    let s = &task_of(d, &mac(i))["state"];
                    s == "failed" || s == "cancelled"
                })
        },
    );
    for i in 2..=4 {
        assert_eq!(
            task_of(&d, &mac(i))["state"],
            "done",
            "target {i}: {:#}\nits log: {}\nthe source's: {}\nthe server: {}",
            task_of(&d, &mac(i)),
            agent_log(&env, i),
            agent_log(&env, 1),
            srv.log()
        );
    }
    let st = wait_child(&mut lab, source);
    assert!(st.success(), "the source: {}", agent_log(&env, 1));
    for (n, &k) in targets.iter().enumerate() {
        let st = wait_child(&mut lab, k);
        assert!(st.success(), "target {}: {}", n + 2, agent_log(&env, n + 2));
    }
    let multicast: i64 = (2..=4)
        .map(|i| task_of(&d, &mac(i))["multicast_chunks"].as_i64().unwrap())
        .sum();
    assert!(multicast > 0, "nothing came by multicast: {d:#}");
    for i in 2..=4 {
        let log = agent_log(&env, i);
        assert!(
            log.contains("streams straight from")
                && log.contains("matches the source's committed image"),
            "target {i} should say where the image came from and that it was confirmed: {log}"
        );
        run(
            "cmp",
            &[
                env.path(&format!("disk{i}.img")).to_str().unwrap(),
                src.to_str().unwrap(),
            ],
        );
    }

    // The targets joined the stream before the source had read its disk to the end.
    let at = |log: &str, what: &str| -> String {
        log.lines()
            .find(|l| l.contains(what))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {what:?} in {log}"))
            .to_string()
    };
    let read_done = at(&agent_log(&env, 1), "chunk(s) uploaded");
    for i in 2..=4 {
        let joined = at(&agent_log(&env, i), "registered as receiver");
        assert!(
            joined < read_done,
            "target {i} joined at {joined}, after the source finished reading at {read_done}"
        );
    }

    // The kept image is the source's disk.
    let m = env.manifest("copy");
    let chunks = m.chunks().count() as i64;
    for i in 2..=4 {
        let t = task_of(&d, &mac(i));
        assert_eq!(
            t["multicast_chunks"].as_i64().unwrap() + t["unicast_chunks"].as_i64().unwrap(),
            chunks,
            "{t:#}"
        );
    }
    // Both deployments are over: the stream no longer holds the store, and gc keeps the
    // image.
    gc_within(&env);
    let again = env.path("again.img");
    drover_tests::sparse_file(&again, 64 << 20);
    env.restore("copy", &again);
    run("cmp", &[again.to_str().unwrap(), src.to_str().unwrap()]);
    drop(srv);
}

#[test]
fn cancelling_a_stream_from_a_machine_stops_its_source_and_its_targets_and_keeps_nothing() {
    if !require("stream_cancelled", &["ip", "sgdisk", "mkfs.ext4", "mkntfs"]) {
        return;
    }
    let env = Env::new();
    let src = lab_disk(&env, 20 << 20, 56);
    let token = env.ok(&["token", "create", "admin"]).trim().to_string();
    let mut lab = Lab::new("sc", 3);
    // The source's uploads crawl: the stream is cancelled while it runs.
    lab.throttle_in(0, "2mbit");
    for i in 1..=2 {
        lab.set_mac(i, &mac(i));
    }
    let srv = Server::start_cmd(server_cmd(&lab, &env));
    for i in 1..=2 {
        cli(&lab, &token, &["machine", "add", &mac(i)]);
    }
    let d = cli(
        &lab,
        &token,
        &["deploy", "--from", &mac(1), "--to", &mac(2)],
    );
    let id = d["id"].as_str().unwrap().to_string();
    let disk = env.path("disk2.img");
    drover_tests::sparse_file(&disk, 64 << 20);
    let target = agent(&mut lab, &env, 2, &disk);
    let source = agent(&mut lab, &env, 1, &src);
    wait_deployment(
        Duration::from_secs(120),
        "the stream",
        || cli(&lab, &token, &["deployment", "show", &id]),
        |d| d["state"] == "running" && task_of(d, &mac(2))["bytes_done"].as_u64() > Some(0),
    );
    cli(&lab, &token, &["deployment", "cancel", &id]);
    for (k, who) in [(source, 1), (target, 2)] {
        wait_child(&mut lab, k);
        let log = agent_log(&env, who);
        assert!(
            log.contains("cancelled"),
            "agent {who} should say it was cancelled: {log}"
        );
    }
    let list = cli(&lab, &token, &["deployment", "list"]);
    let capture = list
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "capture")
        .unwrap_or_else(|| panic!("no capture deployment in {list:#}"));
    assert_eq!(capture["state"], "cancelled", "{capture:#}");
    let c = cli(
        &lab,
        &token,
        &["deployment", "show", capture["id"].as_str().unwrap()],
    );
    let reason = task_of(&c, &mac(1))["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains(&id) && reason.contains("cancelled"),
        "{c:#}"
    );
    let images = env.ok(&["image", "list"]);
    assert!(
        !images.contains("from-"),
        "nothing should be kept: {images}"
    );
    // The cancelled stream no longer holds the store: gc runs and removes what was uploaded.
    let gc = gc_within(&env);
    assert!(!gc.contains("removed 0 "), "{gc}");
    drop(srv);
}
