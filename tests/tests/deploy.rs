//! Deployments on one host (loopback): `drover deploy` over unicast to `drover-agent`s writing
//! disk files and a loop device, the agent's token rules, and every bad input the issue names
//! — a missing image, unknown machines and groups, malformed bodies, a disk too small — each
//! a clear error with nothing lost; cancelling; `deploy --wait`'s exit status; an agent
//! killed mid-way resuming; the server restarted mid-deployment.

use std::time::{Duration, Instant};

use drover_tests::deploy::{agent, lab_disk, output_within, task_of};
use drover_tests::server::Server;
use drover_tests::{drover_bin, require, run, Env, Loop};

/// The longest any one agent or command may take here.
const LIMIT: Duration = Duration::from_secs(120);

fn token(env: &Env) -> String {
    env.ok(&["token", "create", "admin"]).trim().to_string()
}

fn srv_url(addr: &str) -> String {
    format!("http://{addr}")
}

fn deploy_id(out: &str) -> String {
    out.split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_string()
}

/// The agent's whole output.
fn output(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn unicast_deployments_bad_input_tokens_cancel_and_resume() {
    if !require(
        "unicast_deployments",
        &["sgdisk", "mkfs.ext4", "mkntfs", "losetup", "cmp"],
    ) {
        return;
    }
    let env = Env::new();
    let src = lab_disk(&env, 10 << 20, 41);
    env.capture(&src, "lab");
    let reference = env.path("reference.img");
    drover_tests::sparse_file(&reference, 64 << 20);
    env.restore("lab", &reference);
    let srv = Server::start(&env.data(), &[]);
    let t = token(&env);
    for (mac, group) in [
        ("02:00:00:00:01:01", "room1"),
        ("02:00:00:00:01:02", "room1"),
        ("02:00:00:00:01:03", "room2"),
        ("02:00:00:00:01:04", "room2"),
    ] {
        srv.ok(&env, &t, &["machine", "add", mac, "--group", group]);
    }

    // Bad requests: each named, nothing created.
    let e = srv.fails(&env, &t, &["deploy", "nope", "--to", "room1"]);
    assert!(e.contains("image \"nope\"") && e.contains("404"), "{e}");
    let e = srv.fails(&env, &t, &["deploy", "lab", "--to", "02:00:00:00:09:09"]);
    assert!(e.contains("not in the inventory"), "{e}");
    let e = srv.fails(&env, &t, &["deploy", "lab", "--to", "room9"]);
    assert!(e.contains("neither a MAC address nor a group"), "{e}");
    let e = srv.fails(
        &env,
        &t,
        &["deploy", "lab", "--to", "room1", "--min-machines", "5"],
    );
    assert!(e.contains("min machines 5"), "{e}");
    for (body, want) in [
        ("{\"image\": \"lab\"", "malformed request body"),
        (
            "{\"image\": \"lab\", \"to\": [\"room1\"], \"transport\": \"pigeon\"}",
            "transport",
        ),
        (
            "{\"image\": \"lab\", \"to\": [\"room1\"], \"max_wait\": \"soon\"}",
            "soon",
        ),
        (
            "{\"image\": \"lab\", \"to\": [], \"transport\": \"unicast\"}",
            "no targets",
        ),
        (
            "{\"image\": \"lab\", \"to\": [\"room1\"], \"colour\": 1}",
            "unknown field",
        ),
    ] {
        let (code, text) = srv.http("POST", "/api/v1/deployments", Some(&t), Some(body));
        assert_eq!(code, 400, "{body}: {text}");
        assert!(text.contains(want), "{body}: {text}");
    }
    let (_, list) = srv.http("GET", "/api/v1/deployments", Some(&t), None);
    assert_eq!(
        list.trim(),
        "[]",
        "a refused deployment left something behind"
    );

    // An unknown machine that says hello is registered and gets nothing, no token either.
    let (code, hello) = srv.http(
        "POST",
        "/api/v1/agent/hello",
        None,
        Some(r#"{"mac": "02:00:00:00:07:07", "disks": [{"size": 1000}]}"#),
    );
    assert_eq!(code, 200, "{hello}");
    let hello: serde_json::Value = serde_json::from_str(&hello).unwrap();
    assert!(
        hello["task"].is_null() && hello["token"].is_null(),
        "{hello}"
    );
    assert_eq!(hello["machine"]["registered"], "hello");
    let (code, text) = srv.http(
        "POST",
        "/api/v1/agent/hello",
        None,
        Some(r#"{"mac": "zz"}"#),
    );
    assert_eq!(code, 400, "{text}");

    // A unicast deployment to a group: one agent writes a file; the other's disk (a 16 MiB
    // loop device) is too small: that task fails with the reason, the deployment fails,
    // and `deploy --wait` says so.
    let small = env.path("small.img");
    drover_tests::sparse_file(&small, 16 << 20);
    let lo = Loop::attach(&small, 0, None);
    let waiter = {
        let mut c = std::process::Command::new(drover_bin());
        c.args([
            "deploy",
            "lab",
            "--to",
            "room1",
            "--transport",
            "unicast",
            "--wait",
        ])
        .args(["--server", &srv.url, "--token", &t]);
        std::thread::spawn(move || output_within(c, LIMIT))
    };
    // A second deployment to a machine that has a task is refused.
    let t0 = Instant::now();
    while srv
        .http("GET", "/api/v1/deployments", Some(&t), None)
        .1
        .trim()
        == "[]"
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "deploy --wait created nothing"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let e = srv.fails(
        &env,
        &t,
        &[
            "deploy",
            "lab",
            "--to",
            "02:00:00:00:01:01",
            "--transport",
            "unicast",
        ],
    );
    assert!(e.contains("already") && e.contains("409"), "{e}");
    let disk1 = env.path("disk1.img");
    let a1 = output_within(
        agent(
            &srv.url,
            &disk1,
            &["--mac", "02:00:00:00:01:01", "--iface", "lo", "--read-back"],
        ),
        LIMIT,
    );
    assert!(a1.status.success(), "{}", output(&a1));
    run(
        "cmp",
        &[disk1.to_str().unwrap(), reference.to_str().unwrap()],
    );
    let a2 = output_within(
        agent(
            &srv.url,
            &lo.dev,
            &["--mac", "02:00:00:00:01:02", "--iface", "lo"],
        ),
        LIMIT,
    );
    assert_eq!(a2.status.code(), Some(1), "{}", output(&a2));
    // Too small even with its filesystems shrunk: the shrink's reason, with the partition.
    assert!(
        output(&a2).contains("does not fit") && output(&a2).contains("partition 2"),
        "{}",
        output(&a2)
    );
    let w = waiter.join().unwrap();
    assert!(
        !w.status.success(),
        "deploy --wait should fail: {}",
        output(&w)
    );
    assert!(output(&w).contains("failed"), "{}", output(&w));
    let listed = env.json(&["deployment", "list", "--server", &srv.url, "--token", &t]);
    let d = &listed[0];
    assert_eq!(d["state"], "failed", "{d:#}");
    let failed = task_of(d, "02:00:00:00:01:02");
    assert_eq!(failed["state"], "failed");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains(lo.dev.to_str().unwrap()),
        "{failed:#}"
    );
    assert_eq!(task_of(d, "02:00:00:00:01:01")["state"], "done");
    // Nothing was written to the small disk.
    assert!(std::fs::read(&small).unwrap().iter().all(|&b| b == 0));
    drop(lo);

    // Tokens: an agent's opens only its own task's endpoints; an admin's none of them.
    let out = srv.ok(
        &env,
        &t,
        &["deploy", "lab", "--to", "room2", "--transport", "unicast"],
    );
    let id = deploy_id(&out);
    let (_, hello) = srv.http(
        "POST",
        "/api/v1/agent/hello",
        None,
        Some(r#"{"mac": "02:00:00:00:01:03"}"#),
    );
    let hello: serde_json::Value = serde_json::from_str(&hello).unwrap();
    let task_token = hello["token"].as_str().unwrap().to_string();
    assert_eq!(hello["task"]["deployment"], id.as_str());
    assert_eq!(
        srv.http("GET", "/api/v1/machines", Some(&task_token), None)
            .0,
        403
    );
    assert_eq!(
        srv.http(
            "GET",
            &format!("/api/v1/deployments/{id}"),
            Some(&task_token),
            None
        )
        .0,
        403
    );
    assert_eq!(srv.http("GET", "/api/v1/agent/task", Some(&t), None).0, 403);
    assert_eq!(srv.http("GET", "/api/v1/agent/task", None, None).0, 401);
    assert_eq!(
        srv.http("GET", "/api/v1/agent/task", Some("drt_00_11"), None)
            .0,
        401
    );
    let (code, _) = srv.http("GET", "/api/v1/agent/task", Some(&task_token), None);
    assert_eq!(code, 200);
    let (code, text) = srv.http(
        "GET",
        &format!("/api/v1/chunks/{}", "ab".repeat(32)),
        Some(&task_token),
        None,
    );
    assert_eq!(code, 404, "{text}");
    let (code, text) = srv.http(
        "POST",
        "/api/v1/agent/progress",
        Some(&task_token),
        Some(r#"{"state": "receiving", "bytes_done": -5}"#),
    );
    assert_eq!(code, 400, "{text}");

    // The agent of .04 finds its disk half written (an interrupted write): it fetches only
    // what is missing. It starts while the server is down, and waits for it to come back.
    let disk4 = env.path("disk4.img");
    drover_tests::sparse_file(&disk4, 64 << 20);
    let half = drover_tests::read_range(&reference, 0, 24 << 20);
    drover_tests::patch(&disk4, 0, &half);
    let addr = srv.addr.clone();
    srv.kill();
    let a4 = {
        let c = agent(
            &srv_url(&addr),
            &disk4,
            &["--mac", "02:00:00:00:01:04", "--iface", "lo"],
        );
        std::thread::spawn(move || output_within(c, LIMIT))
    };
    std::thread::sleep(Duration::from_secs(2));
    let srv = Server::start_at(&env.data(), &addr, &[]);
    let a4 = a4.join().unwrap();
    assert!(a4.status.success(), "{}", output(&a4));
    assert!(
        output(&a4).contains("the server is away"),
        "{}",
        output(&a4)
    );
    run(
        "cmp",
        &[disk4.to_str().unwrap(), reference.to_str().unwrap()],
    );
    let d = drover_tests::deploy::deployment(&srv.addr, &t, &id);
    let t4 = task_of(&d, "02:00:00:00:01:04");
    assert_eq!(t4["state"], "done", "{d:#}");
    let kept = t4["kept_chunks"].as_i64().unwrap();
    let fetched = t4["unicast_chunks"].as_i64().unwrap();
    let chunks = env.manifest("lab").chunks().count() as i64;
    assert!(
        kept >= 4 && kept + fetched == chunks,
        "kept {kept} fetched {fetched} of {chunks}"
    );

    // Cancel: the .03 task (its token in hand) ends; its token then says so (410).
    let out = srv.ok(&env, &t, &["deployment", "cancel", &id]);
    assert!(out.contains("cancelled"), "{out}");
    let (code, text) = srv.http("GET", "/api/v1/agent/task", Some(&task_token), None);
    assert_eq!(code, 410, "{text}");
    assert!(text.contains("cancelled"), "{text}");
    let e = srv.fails(&env, &t, &["deployment", "cancel", &id]);
    assert!(e.contains("already over"), "{e}");
    // With no task left, an agent waits, then gives up with exit status 3.
    let a3 = output_within(
        agent(
            &srv.url,
            &env.path("disk3.img"),
            &[
                "--mac",
                "02:00:00:00:01:03",
                "--iface",
                "lo",
                "--max-idle",
                "1s",
            ],
        ),
        LIMIT,
    );
    assert_eq!(a3.status.code(), Some(3), "{}", output(&a3));
    let shown = srv.ok(&env, &t, &["deployment", "show", &id]);
    assert!(
        shown.contains("cancelled") && shown.contains("done"),
        "{shown}"
    );
    // Live progress as server-sent events: a deployment that is over sends itself once and
    // ends the stream.
    let (code, events) = srv.http(
        "GET",
        &format!("/api/v1/deployments/{id}/events"),
        Some(&t),
        None,
    );
    assert_eq!(code, 200, "{events}");
    let data = events
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("no event: {events}"));
    assert!(events.contains("event: deployment"), "{events}");
    let ev: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(ev["state"], "cancelled");
    assert_eq!(task_of(&ev, "02:00:00:00:01:04")["percent"], 100.0);
    let metrics = srv.http("GET", "/metrics", None, None).1;
    for line in [
        "drover_deployments{state=\"cancelled\"} 1",
        "drover_deployments{state=\"failed\"} 1",
        "drover_tasks{state=\"done\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    let audit = srv.http("GET", "/api/v1/audit", Some(&t), None).1;
    for action in [
        "deployment.create",
        "deployment.cancel",
        "task.done",
        "task.failed",
    ] {
        assert!(
            audit.contains(action),
            "{action} missing from the audit log: {audit}"
        );
    }
}

/// The same daemon on PostgreSQL: a multicast deployment to three agents (on loopback), and
/// the deployment is still there after a restart.
#[test]
fn multicast_deployment_to_three_agents_on_postgresql() {
    if !require(
        "postgresql_deployment",
        &["sgdisk", "mkfs.ext4", "mkntfs", "runuser", "cmp"],
    ) {
        return;
    }
    if !drover_tests::postgres::available() {
        let msg = "postgresql_deployment: needs PostgreSQL (deploy/install-test-deps) and root";
        assert!(!drover_tests::in_ci(), "{msg}; a skip in CI is a failure");
        eprintln!("SKIPPED {msg}");
        return;
    }
    let pg = drover_tests::postgres::Postgres::start();
    let env = Env::new();
    let src = lab_disk(&env, 8 << 20, 43);
    env.capture(&src, "lab");
    let reference = env.path("reference.img");
    drover_tests::sparse_file(&reference, 64 << 20);
    env.restore("lab", &reference);
    let t = env
        .ok(&["token", "create", "admin", "--database-url", &pg.url])
        .trim()
        .to_string();
    let srv = Server::start(&env.data(), &["--database-url", &pg.url]);
    let macs = [
        "02:00:00:00:03:01",
        "02:00:00:00:03:02",
        "02:00:00:00:03:03",
    ];
    for m in macs {
        srv.ok(&env, &t, &["machine", "add", m, "--group", "pg"]);
    }
    let out = srv.ok(&env, &t, &["deploy", "lab", "--to", "pg"]);
    let id = deploy_id(&out);
    // The third machine has two equal disks: both are written from the one stream.
    let second = env.path("pg2-second.img");
    let agents: Vec<_> = macs
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut args = vec!["--mac", m, "--iface", "lo", "--read-back"];
            if i == 2 {
                args.extend(["--disk", second.to_str().unwrap()]);
            }
            let c = agent(&srv.url, &env.path(&format!("pg{i}.img")), &args);
            std::thread::spawn(move || output_within(c, LIMIT))
        })
        .collect();
    for (i, a) in agents.into_iter().enumerate() {
        let o = a.join().unwrap();
        assert!(o.status.success(), "agent {i}: {}", output(&o));
        run(
            "cmp",
            &[
                env.path(&format!("pg{i}.img")).to_str().unwrap(),
                reference.to_str().unwrap(),
            ],
        );
    }
    run(
        "cmp",
        &[second.to_str().unwrap(), reference.to_str().unwrap()],
    );
    let d = drover_tests::deploy::deployment(&srv.addr, &t, &id);
    assert_eq!(d["state"], "done", "{d:#}");
    let multicast: i64 = macs
        .iter()
        .map(|m| task_of(&d, m)["multicast_chunks"].as_i64().unwrap())
        .sum();
    assert!(multicast > 0, "nothing came by multicast: {d:#}");
    assert!(
        task_of(&d, macs[2])["multicast_chunks"].as_i64().unwrap() > 0,
        "the two-disk machine got nothing by multicast: {d:#}"
    );
    let addr = srv.addr.clone();
    srv.stop();
    let srv = Server::start_at(&env.data(), &addr, &["--database-url", &pg.url]);
    let shown = srv.ok(&env, &t, &["deployment", "show", &id]);
    assert!(shown.contains("done") && shown.contains(macs[2]), "{shown}");
}

/// An agent's hello with `"wait": true` is held until its machine gets a task (then answered
/// at once, with the task and a token) or for the poll interval.
#[test]
fn a_waiting_hello_answers_when_the_task_comes() {
    let env = Env::new();
    let src = env.path("src.img");
    drover_tests::random_file(&src, 2 << 20, 9);
    env.capture(&src, "small");
    let srv = Server::start(&env.data(), &[]);
    let t = token(&env);
    let mac = "02:00:00:00:07:01";
    srv.ok(&env, &t, &["machine", "add", mac]);
    let hello = format!(r#"{{"mac": "{mac}", "wait": true}}"#);
    // No task: held for the poll interval, then told to ask again at once.
    let t0 = Instant::now();
    let (status, body) = srv.http("POST", "/api/v1/agent/hello", None, Some(&hello));
    let held = t0.elapsed();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["task"].is_null() && v["poll_ms"] == 0, "{v}");
    assert!(
        held >= Duration::from_millis(1900),
        "answered after {held:?}"
    );
    // A task created while it waits: answered then, with the task.
    let addr = srv.addr.clone();
    let waiter = std::thread::spawn(move || {
        let t0 = Instant::now();
        let r =
            drover_tests::server::http(&addr, "POST", "/api/v1/agent/hello", None, Some(&hello));
        (r, t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    srv.ok(
        &env,
        &t,
        &["deploy", "small", "--to", mac, "--transport", "unicast"],
    );
    let ((status, body), _) = waiter.join().unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["task"]["image"]["name"], "small@1", "{v}");
    assert!(
        v["token"].as_str().is_some_and(|t| t.starts_with("drt_")),
        "{v}"
    );
    // One held request carried the task: it was answered when the task came, not at the end
    // of its poll interval with nothing.
}

#[test]
fn an_agent_grows_the_last_partition_onto_its_larger_disk_unless_told_to_keep() {
    if !require(
        "agent layout",
        &[
            "root",
            "sgdisk",
            "mkfs.ext4",
            "mkntfs",
            "ntfsresize",
            "ntfsfix",
        ],
    ) {
        return;
    }
    let env = Env::new();
    let src = lab_disk(&env, 4 << 20, 43);
    env.capture(&src, "lab");
    let srv = Server::start(&env.data(), &[]);
    let t = token(&env);
    let ntfs_part = |disk: &std::path::Path| -> (u64, u64) {
        let info = run("sgdisk", &["-i2", disk.to_str().unwrap()]);
        let num = |key: &str| -> u64 {
            info.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().find_map(|w| w.parse().ok()))
                .unwrap()
        };
        (num("First sector:"), num("Last sector:"))
    };
    let captured = ntfs_part(&src);
    // A group that keeps the layout: its machine keeps it unless the deployment says.
    srv.ok(&env, &t, &["group", "add", "kept"]);
    srv.ok(&env, &t, &["group", "set", "kept", "--layout", "keep"]);
    for (mac, layout, group, grows) in [
        ("02:00:00:00:08:01", "grow", None, true),
        ("02:00:00:00:08:02", "keep", None, false),
        ("02:00:00:00:08:03", "", Some("kept"), false),
        ("02:00:00:00:08:04", "grow", Some("kept"), true),
    ] {
        let mut add = vec!["machine", "add", mac];
        add.extend(group.iter().flat_map(|g| ["--group", *g]));
        srv.ok(&env, &t, &add);
        let mut deploy = vec![
            "deploy",
            "lab",
            "--to",
            mac,
            "--transport",
            "unicast",
            "--personalize",
            "off",
        ];
        if !layout.is_empty() {
            deploy.extend(["--layout", layout]);
        }
        srv.ok(&env, &t, &deploy);
        // The machine's disk: twice the golden disk's 64 MiB.
        let disk = env.path(&format!("disk-{}.img", &mac[15..]));
        drover_tests::sparse_file(&disk, 128 << 20);
        let a = output_within(
            agent(
                &srv.url,
                &disk,
                &["--mac", mac, "--iface", "lo", "--read-back"],
            ),
            LIMIT,
        );
        assert!(a.status.success(), "{layout}: {}", output(&a));
        run("sgdisk", &["-v", disk.to_str().unwrap()]);
        let (first, last) = ntfs_part(&disk);
        assert_eq!(first, captured.0, "{layout}");
        if grows {
            // To the last MiB boundary before the backup GPT.
            assert_eq!(
                last + 1,
                ((128 << 20) - 33 * 512) / (1 << 20) * 2048,
                "{layout}"
            );
            assert!(
                output(&a).contains("partition 2 (ntfs) grown"),
                "{}",
                output(&a)
            );
        } else {
            assert_eq!(last, captured.1, "{layout}");
        }
        let lo = Loop::attach(&disk, first * 512, Some((last + 1 - first) * 512));
        run("ntfsfix", &["-n", lo.dev.to_str().unwrap()]);
        let fs_sectors = u64::from_le_bytes(
            drover_tests::read_range(&disk, first * 512 + 0x28, 8)
                .try_into()
                .unwrap(),
        );
        // Less than a 4 KiB cluster short of the partition (the last sector holds the
        // backup boot sector).
        assert!(
            fs_sectors <= last - first && last - first - fs_sectors < 8,
            "{layout}: an NTFS of {fs_sectors} sectors in sectors {first}..={last}"
        );
        drop(lo);
        let listed = env.json(&["deployment", "list", "--server", &srv.url, "--token", &t]);
        let d = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["targets"] == mac)
            .unwrap();
        if layout.is_empty() {
            assert!(d["layout"].is_null(), "{d:#}");
        } else {
            assert_eq!(d["layout"], layout, "{d:#}");
        }
        assert_eq!(task_of(d, mac)["state"], "done", "{d:#}");
    }
}

#[test]
fn an_agent_writes_two_disks_of_different_sizes_each_laid_out() {
    if !require(
        "agent two disks",
        &[
            "root",
            "sgdisk",
            "mkfs.ext4",
            "mkntfs",
            "ntfsresize",
            "ntfsfix",
            "cmp",
        ],
    ) {
        return;
    }
    let env = Env::new();
    let src = lab_disk(&env, 4 << 20, 44);
    env.capture(&src, "lab");
    let reference = env.path("reference.img");
    drover_tests::sparse_file(&reference, 64 << 20);
    env.restore("lab", &reference);
    let srv = Server::start(&env.data(), &[]);
    let t = token(&env);
    let mac = "02:00:00:00:09:01";
    srv.ok(&env, &t, &["machine", "add", mac]);
    srv.ok(
        &env,
        &t,
        &[
            "deploy",
            "lab",
            "--to",
            mac,
            "--transport",
            "unicast",
            "--personalize",
            "off",
        ],
    );
    // The golden disk's size, and twice it (pre-filled with other bytes).
    let (a, b) = (env.path("a.img"), env.path("b.img"));
    drover_tests::random_file(&a, 64 << 20, 1);
    drover_tests::random_file(&b, 128 << 20, 2);
    let o = output_within(
        agent(
            &srv.url,
            &a,
            &[
                "--disk",
                b.to_str().unwrap(),
                "--mac",
                mac,
                "--iface",
                "lo",
                "--read-back",
            ],
        ),
        LIMIT,
    );
    assert!(o.status.success(), "{}", output(&o));
    // The golden size: byte for byte where the image has data (the GPT and partitions).
    run("sgdisk", &["-v", a.to_str().unwrap()]);
    run("sgdisk", &["-v", b.to_str().unwrap()]);
    let parts = |d: &std::path::Path| run("sgdisk", &["-p", d.to_str().unwrap()]);
    let table = |s: String| {
        s.lines()
            .skip_while(|l| !l.starts_with("Number"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(table(parts(&a)), table(parts(&reference)));
    // The larger one: its NTFS partition grew, and the result says so, naming the disk.
    assert_ne!(table(parts(&b)), table(parts(&reference)));
    assert!(
        output(&o).contains(&format!("{}: partition 2 (ntfs) grown", b.display())),
        "{}",
        output(&o)
    );
    let listed = env.json(&["deployment", "list", "--server", &srv.url, "--token", &t]);
    let task = task_of(&listed[0], mac);
    assert_eq!(task["state"], "done", "{task:#}");
    assert!(
        task["personalized"]
            .to_string()
            .contains("b.img: partition 2 (ntfs) grown"),
        "{task:#}"
    );
}

/// A lab with one machine whose disk is smaller than the image's layout: the server fits the
/// image to that disk once (its NTFS shrunk with ntfsresize, as `drover image restore` does)
/// and that machine gets it over unicast while the other is imaged by multicast, whose stream
/// starts without waiting for the small machine. The small disk must pass the filesystems'
/// checkers and equal a local restore onto a disk of its size; a disk too small for the used
/// data fails its task naming the partition.
#[test]
fn a_machine_with_a_smaller_disk_gets_the_image_fitted_to_it() {
    if !require(
        "fitted deployment",
        &[
            "root",
            "sgdisk",
            "mkfs.ext4",
            "mkntfs",
            "ntfsresize",
            "ntfsfix",
            "cmp",
            "e2fsck",
        ],
    ) {
        return;
    }
    let env = Env::new();
    let src = lab_disk(&env, 8 << 20, 47);
    env.capture(&src, "lab");
    let srv = Server::start(&env.data(), &[]);
    let t = token(&env);
    let macs = [
        "02:00:00:00:0f:01",
        "02:00:00:00:0f:02",
        "02:00:00:00:0f:03",
    ];
    for m in &macs[..2] {
        srv.ok(&env, &t, &["machine", "add", m, "--group", "mixed"]);
    }
    srv.ok(&env, &t, &["machine", "add", macs[2]]);
    let out = srv.ok(
        &env,
        &t,
        &["deploy", "lab", "--to", "mixed", "--personalize", "off"],
    );
    let id = deploy_id(&out);
    let big = env.path("big.img");
    let small = env.path("small.img");
    drover_tests::sparse_file(&small, 48 << 20);
    let agents: Vec<_> = [(macs[0], &big), (macs[1], &small)]
        .into_iter()
        .map(|(m, disk)| {
            let c = agent(&srv.url, disk, &["--mac", m, "--iface", "lo"]);
            std::thread::spawn(move || output_within(c, LIMIT))
        })
        .collect();
    for (i, a) in agents.into_iter().enumerate() {
        let o = a.join().unwrap();
        assert!(o.status.success(), "agent {i}: {}", output(&o));
        if i == 1 {
            assert!(output(&o).contains("fitted"), "{}", output(&o));
        }
    }
    let d = drover_tests::deploy::deployment(&srv.addr, &t, &id);
    assert_eq!(d["state"], "done", "{d:#}");
    assert!(
        task_of(&d, macs[0])["multicast_chunks"].as_i64().unwrap() > 0,
        "{d:#}"
    );
    assert_eq!(task_of(&d, macs[1])["multicast_chunks"], 0, "{d:#}");
    // The small machine's task counts the fitted image's bytes, all of them written.
    let (b, s) = (task_of(&d, macs[0]), task_of(&d, macs[1]));
    assert!(
        s["bytes_total"].as_u64() < b["bytes_total"].as_u64() && s["percent"] == 100.0,
        "{d:#}"
    );
    run("cmp", &[big.to_str().unwrap(), src.to_str().unwrap()]);
    // The small disk: what a local restore makes of the image on a disk of its size.
    let reference = env.path("small-reference.img");
    drover_tests::sparse_file(&reference, 48 << 20);
    env.restore("lab", &reference);
    run(
        "cmp",
        &[small.to_str().unwrap(), reference.to_str().unwrap()],
    );
    run("sgdisk", &["-v", small.to_str().unwrap()]);
    let part = |n: u32, name: &str| -> std::path::PathBuf {
        let info = run("sgdisk", &[&format!("-i{n}"), small.to_str().unwrap()]);
        let num = |key: &str| -> u64 {
            info.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().find_map(|w| w.parse().ok()))
                .unwrap()
        };
        let (first, last) = (num("First sector:"), num("Last sector:"));
        let out = env.path(name);
        run(
            "dd",
            &[
                &format!("if={}", small.display()),
                &format!("of={}", out.display()),
                "bs=512",
                &format!("skip={first}"),
                &format!("count={}", last - first + 1),
                "status=none",
            ],
        );
        out
    };
    run("e2fsck", &["-fn", part(1, "p1.img").to_str().unwrap()]);
    run("ntfsfix", &["-n", part(2, "p2.img").to_str().unwrap()]);

    // A disk too small for the used data: its task fails, saying which partition.
    let out = srv.ok(
        &env,
        &t,
        &["deploy", "lab", "--to", macs[2], "--transport", "unicast"],
    );
    let id = deploy_id(&out);
    let tiny = env.path("tiny.img");
    drover_tests::sparse_file(&tiny, 8 << 20);
    let o = output_within(
        agent(&srv.url, &tiny, &["--mac", macs[2], "--iface", "lo"]),
        LIMIT,
    );
    assert!(!o.status.success(), "{}", output(&o));
    let d = drover_tests::deploy::deployment(&srv.addr, &t, &id);
    let reason = task_of(&d, macs[2])["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("partition"), "{d:#}");
}
