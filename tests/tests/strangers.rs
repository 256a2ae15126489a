//! A stranger on the lab network, during a multicast deployment: another host claims the
//! target machine's MAC, asks for its boot script, says hello in its name and probes every TCP
//! port the server listens on. Nothing it gets reads the image or changes the task; the real
//! machine then boots its task, receives a second token without losing the first, and is
//! imaged by multicast through the server's API. Every hand-out and refusal is in the audit
//! log with the address.

use std::time::Duration;

use drover_tests::deploy::{lab_disk, output_within};
use drover_tests::lab::Lab;
use drover_tests::server::Server;
use drover_tests::{agent_bin, drover_bin, require, run, Env};

const URL: &str = "http://10.77.0.10:8080";
const MACHINE: &str = "02:00:00:00:5e:01";
const STRANGER: &str = "02:00:00:00:5e:02";

/// `curl` run inside lab host `i`: (HTTP status, body).
fn curl(lab: &Lab, i: usize, args: &[&str]) -> (u16, String) {
    let mut c = lab.cmd(i, "curl");
    c.args(["-s", "-m", "10", "-w", "\n%{http_code}"])
        .args(args);
    let out = c.output().expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// `GET {URL}PATH` from host `i` with a bearer token.
fn get_as(lab: &Lab, i: usize, token: &str, path: &str) -> (u16, String) {
    curl(
        lab,
        i,
        &[
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("{URL}{path}"),
        ],
    )
}

fn hello(lab: &Lab, i: usize, mac: &str) -> (u16, String) {
    curl(
        lab,
        i,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            &format!(r#"{{"mac": "{mac}"}}"#),
            &format!("{URL}/api/v1/agent/hello"),
        ],
    )
}

/// Whether `text` holds a task token (`drt_` and its hex id; "Bearer drt_..." in an error
/// message is none).
fn has_token(text: &str) -> bool {
    text.match_indices("drt_")
        .any(|(i, _)| text[i + 4..].starts_with(|c: char| c.is_ascii_hexdigit()))
}

/// The TCP ports host `i` listens on.
fn tcp_ports(lab: &Lab, i: usize) -> Vec<u16> {
    let mut c = lab.cmd(i, "ss");
    c.args(["-H", "-ltn"]);
    let out = String::from_utf8(c.output().unwrap().stdout).unwrap();
    let mut ports: Vec<u16> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|a| a.rsplit_once(':')?.1.parse().ok())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[test]
fn a_stranger_gets_nothing_that_reads_the_image_or_changes_the_task() {
    if !require(
        "strangers",
        &[
            "root",
            "ip",
            "curl",
            "ss",
            "sgdisk",
            "mkfs.ext4",
            "mkntfs",
            "cmp",
        ],
    ) {
        return;
    }
    let env = Env::new();
    let disk = lab_disk(&env, 6 << 20, 17);
    env.capture(&disk, "lab");
    let lab = Lab::new("strg", 3);
    lab.set_mac(1, MACHINE);
    lab.set_mac(2, STRANGER);
    // A boot environment (its bytes do not matter here: no machine boots it).
    let boot = env.path("boot");
    std::fs::create_dir_all(&boot).unwrap();
    drover_tests::random_file(&boot.join("vmlinuz"), 4096, 1);
    drover_tests::random_file(&boot.join("initrd.img"), 4096, 2);
    let bin = drover_bin().to_str().unwrap();
    let data = env.data();
    let mut cmd = lab.cmd(0, bin);
    cmd.arg("--data-dir")
        .arg(&data)
        .args(["serve", "--http", "10.77.0.10:8080", "--iface", "eth0"])
        .arg("--boot-dir")
        .arg(&boot)
        .env("RUST_LOG", "info");
    let srv = Server::start_cmd(cmd);
    let admin = lab.token(0, &data, "admin");
    let cli = |args: &[&str]| {
        let o = lab.drover(0, &data, URL, &admin, args);
        assert!(o.status.success(), "drover {args:?}: {o:?}");
        String::from_utf8(o.stdout).unwrap()
    };
    cli(&["machine", "add", MACHINE, "--name", "pc-1"]);
    let out = cli(&[
        "deploy",
        "lab",
        "--to",
        MACHINE,
        "--transport",
        "multicast",
        "--min-machines",
        "1",
    ]);
    let id = out
        .split_whitespace()
        .map(|w| w.trim_end_matches(':'))
        .find(|w| w.len() == 8 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no deployment id in {out}"))
        .to_string();

    // The stranger claims the machine's MAC: no hello, no token, no task.
    let (code, body) = hello(&lab, 2, MACHINE);
    assert_eq!(code, 403, "{body}");
    assert!(!has_token(&body) && !body.contains("task\""), "{body}");
    assert!(
        body.contains("10.77.0.12") && body.contains(STRANGER) && body.contains(MACHINE),
        "{body}"
    );
    // Its boot script says to boot the local disk and carries no token.
    let (code, script) = curl(&lab, 2, &[&format!("{URL}/boot/{MACHINE}.ipxe")]);
    assert_eq!(code, 200, "{script}");
    assert!(
        script.contains("booting the local disk") && !has_token(&script),
        "{script}"
    );

    // Every TCP port the server listens on, every path that reads the image, the session or
    // the task, and the standalone sender's old registration paths: nothing opens.
    let ports = tcp_ports(&lab, 0);
    assert!(ports.contains(&8080), "{ports:?}");
    let get = [
        "/session",
        "/chunks/0",
        "/api/v1/agent/session",
        "/api/v1/agent/session/session",
        "/api/v1/agent/task",
        "/api/v1/agent/manifest",
        "/api/v1/agent/stream/0",
        "/api/v1/agent/torrent",
        "/api/v1/images",
        "/api/v1/deployments",
        "/api/v1/audit",
    ];
    let post = [
        "/register",
        "/api/v1/agent/session/register",
        "/api/v1/agent/capture/outline",
        "/api/v1/agent/progress",
        "/api/v1/agent/result",
    ];
    for port in &ports {
        let base = format!("http://10.77.0.10:{port}");
        for p in get {
            let (code, body) = curl(&lab, 2, &[&format!("{base}{p}")]);
            assert!(
                !(200..300).contains(&code) && !body.contains("\"key\"") && !has_token(&body),
                "GET {base}{p} answered {code}: {body}"
            );
        }
        for p in post {
            let (code, body) = curl(
                &lab,
                2,
                &[
                    "-X",
                    "POST",
                    "-H",
                    "Content-Type: application/json",
                    "-d",
                    r#"{"ok": false, "reason": "stranger"}"#,
                    &format!("{base}{p}"),
                ],
            );
            assert!(
                !(200..300).contains(&code) && !body.contains("\"key\""),
                "POST {base}{p} answered {code}: {body}"
            );
        }
    }
    let d = cli(&["--json", "deployment", "show", &id]);
    let d: serde_json::Value = serde_json::from_str(&d).unwrap();
    assert_eq!(d["tasks"][0]["state"], "waiting", "{d:#}");

    // The machine itself: its boot script carries a token, its hello another; the first
    // still opens the task.
    let (code, script) = curl(&lab, 1, &[&format!("{URL}/boot/{MACHINE}.ipxe")]);
    assert_eq!(code, 200, "{script}");
    let first = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("drover.token="))
        .unwrap_or_else(|| panic!("no token in {script}"))
        .to_string();
    let (code, body) = hello(&lab, 1, MACHINE);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let second = v["token"].as_str().expect("a second token").to_string();
    assert_ne!(first, second);
    for t in [&first, &second] {
        let (code, body) = get_as(&lab, 1, t, "/api/v1/agent/task");
        assert_eq!(code, 200, "{body}");
    }
    // A token opens the session only for its own machine's deployment, and from the API.
    let (code, body) = get_as(&lab, 1, &first, "/api/v1/agent/session");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"chunks\""), "{body}");

    // The real agent, with the boot script's token, is imaged by multicast.
    let target = env.path("target.img");
    drover_tests::sparse_file(&target, std::fs::metadata(&disk).unwrap().len());
    let mut a = lab.cmd(1, agent_bin().to_str().unwrap());
    a.args(["--server", URL, "--disk"]).arg(&target).args([
        "--iface",
        "eth0",
        "--token",
        &first,
        "--max-idle",
        "60s",
    ]);
    let o = output_within(a, Duration::from_secs(180));
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "agent: {log}");
    run("cmp", &[disk.to_str().unwrap(), target.to_str().unwrap()]);
    let d = cli(&["--json", "deployment", "show", &id]);
    let d: serde_json::Value = serde_json::from_str(&d).unwrap();
    assert_eq!(d["tasks"][0]["state"], "done", "{d:#}");
    assert!(
        d["tasks"][0]["multicast_chunks"].as_i64().unwrap() > 0,
        "nothing came by multicast: {d:#}\n{log}"
    );

    // The audit log names every refusal and hand-out with its address.
    let (code, audit) = get_as(&lab, 0, &admin, "/api/v1/audit?limit=1000");
    assert_eq!(code, 200, "{audit}");
    for (action, addr) in [
        ("agent.hello.refused", "10.77.0.12"),
        ("boot.refused", "10.77.0.12"),
        ("boot.agent", "10.77.0.11"),
        ("task.token", "10.77.0.11"),
    ] {
        let v: serde_json::Value = serde_json::from_str(&audit).unwrap();
        assert!(
            v.as_array()
                .unwrap()
                .iter()
                .any(|e| { e.to_string().contains(action) && e.to_string().contains(addr) }),
            "no {action} naming {addr} in {audit}"
        );
    }
    drop(srv);
}
