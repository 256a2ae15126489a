//! Two `drover serve` sharing one PostgreSQL database and one S3 bucket (SeaweedFS in a
//! network namespace, reached over a veth link): a golden machine captured through the first
//! server is deployed, from the first, to three agents that talk to the second (another site).
//! The second runs the deployment (multicast on loopback), starts it when asked on the first,
//! stops a session cancelled on the first, and runs a schedule added on the first for its
//! machines. It read each of the image's chunks from the bucket once (its cache answered the
//! rest); its verify reads the bucket again and names a chunk damaged there.

use std::time::{Duration, Instant};

use drover_tests::deploy::{agent, lab_disk, output_within, task_of};
use drover_tests::lab::Lab;
use drover_tests::server::{http, Server};
use drover_tests::{require, run, text, Env};

const LIMIT: Duration = Duration::from_secs(180);
const GOLDEN: &str = "02:00:00:00:0a:01";
use drover_tests::object_store::{KEY_ID, SECRET};

#[test]
fn two_servers_share_one_database_and_one_bucket() {
    if !require(
        "shared_store",
        &["root", "ip", "weed", "sgdisk", "mkfs.ext4", "mkntfs", "cmp"],
    ) {
        return;
    }
    if !drover_tests::postgres::available() {
        let msg = "shared_store: needs PostgreSQL (deploy/install-test-deps) and root";
        assert!(!drover_tests::in_ci(), "{msg}; a skip in CI is a failure");
        eprintln!("SKIPPED {msg}");
        return;
    }
    // These variables reach the servers and the CLI the test starts.
    std::env::set_var("AWS_ACCESS_KEY_ID", KEY_ID);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
    let pg = drover_tests::postgres::Postgres::start();
    let env = Env::new();
    let mut lab = Lab::new("shs", 1);
    let s3_ip = lab.link_to_test(0);
    drover_tests::object_store::start_weed(&mut lab, 0, &env, &s3_ip.to_string());
    let endpoint = format!("http://{s3_ip}:8333");
    let store = "s3://images/campus";
    let store_args = ["--store", store, "--s3-endpoint", &endpoint];
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = env.drover(&[&["image", "list"][..], &store_args].concat());
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the bucket never answered: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let token = env
        .ok(&["token", "create", "admin", "--database-url", &pg.url])
        .trim()
        .to_string();
    let serve_args = |extra: &[&str]| {
        let mut v = vec!["--database-url", pg.url.as_str()];
        v.extend(store_args);
        v.extend(extra);
        v.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let data1 = env.path("server1");
    let data2 = env.path("server2");
    let a1 = serve_args(&[]);
    let a2 = serve_args(&[]);
    let srv1 = Server::start(&data1, &a1.iter().map(String::as_str).collect::<Vec<_>>());
    let srv2 = Server::start(&data2, &a2.iter().map(String::as_str).collect::<Vec<_>>());

    // The golden machine is captured through the first server.
    let golden = lab_disk(&env, 8 << 20, 71);
    srv1.ok(&env, &token, &["machine", "add", GOLDEN]);
    srv1.ok(&env, &token, &["capture", GOLDEN, "--name", "golden"]);
    let o = output_within(
        agent(
            &srv1.url,
            &golden,
            &["--mac", GOLDEN, "--iface", "lo", "--max-idle", "60s"],
        ),
        LIMIT,
    );
    assert!(o.status.success(), "capture agent: {}", text(&o));

    // The second server lists it (same bucket) and knows the machine (same database).
    let (status, images) = http(&srv2.addr, "GET", "/api/v1/images", Some(&token), None);
    assert!(
        status == 200 && images.contains("\"golden\""),
        "{status} {images}"
    );
    let (status, machines) = http(&srv2.addr, "GET", "/api/v1/machines", Some(&token), None);
    assert!(
        status == 200 && machines.contains(GOLDEN),
        "{status} {machines}"
    );

    // Three machines whose agents talk to the second server (it booted them: another site)
    // are deployed from the first: the deployment is run by the second, which takes it up,
    // sends its stream, and starts it when asked on the first.
    let macs = [
        "02:00:00:00:0a:11",
        "02:00:00:00:0a:12",
        "02:00:00:00:0a:13",
    ];
    for m in macs {
        srv2.ok(&env, &token, &["machine", "add", m, "--group", "site-b"]);
    }
    let agents: Vec<_> = macs
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let target = env.path(&format!("t{i}.img"));
            drover_tests::sparse_file(&target, std::fs::metadata(&golden).unwrap().len());
            let c = agent(
                &srv2.url,
                &target,
                &[
                    "--mac",
                    m,
                    "--iface",
                    "lo",
                    "--read-back",
                    "--max-idle",
                    "600s",
                ],
            );
            std::thread::spawn(move || output_within(c, LIMIT))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = http(&srv1.addr, "GET", "/api/v1/machines", Some(&token), None);
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let seen = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| macs.contains(&m["mac"].as_str().unwrap()) && !m["last_seen_ms"].is_null())
            .count();
        if seen == macs.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agents never said hello: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let srv2_id = std::fs::read_to_string(data2.join("server-id"))
        .unwrap()
        .trim()
        .to_string();
    let out = srv1.ok(
        &env,
        &token,
        &[
            "deploy",
            "golden",
            "--to",
            "site-b",
            "--start-at",
            "2099-01-01T00:00:00Z",
        ],
    );
    // "deployment ID: ..."
    let id = out
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no deployment id in {out:?}"))
        .trim_end_matches(':')
        .to_string();
    let d = drover_tests::deploy::deployment(&srv1.addr, &token, &id);
    assert_eq!(
        d["owner"],
        srv2_id.as_str(),
        "not run by the machines' server: {d:#}"
    );
    // Both servers are listed alive, the second with the three machines, the first with the
    // golden one.
    let (status, body) = http(&srv1.addr, "GET", "/api/v1/servers", Some(&token), None);
    assert_eq!(status, 200, "{body}");
    let servers: serde_json::Value = serde_json::from_str(&body).unwrap();
    let of = |id: &str| {
        servers
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("server {id} not listed: {servers:#}"))
            .clone()
    };
    let srv1_id = std::fs::read_to_string(data1.join("server-id"))
        .unwrap()
        .trim()
        .to_string();
    let (one, two) = (of(&srv1_id), of(&srv2_id));
    assert_eq!(
        (&one["alive"], &one["this"], &one["machines"]),
        (&true.into(), &true.into(), &1.into()),
        "{servers:#}"
    );
    assert_eq!(
        (&two["alive"], &two["this"], &two["machines"]),
        (&true.into(), &false.into(), &3.into()),
        "{servers:#}"
    );
    // Started once every agent waits in the second server's session.
    let mut log2 = String::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while log2.matches(" joined from ").count() < macs.len() {
        assert!(Instant::now() < deadline, "the agents never joined: {log2}");
        std::thread::sleep(Duration::from_millis(200));
        log2.push_str(&srv2.log());
    }
    srv1.ok(&env, &token, &["deployment", "start", &id]);
    for (i, a) in agents.into_iter().enumerate() {
        let o = a.join().unwrap();
        assert!(o.status.success(), "agent {i}: {}", text(&o));
        run(
            "cmp",
            &[
                env.path(&format!("t{i}.img")).to_str().unwrap(),
                golden.to_str().unwrap(),
            ],
        );
    }
    log2.push_str(&srv2.log());
    assert!(
        log2.contains("taking up a deployment created on another server"),
        "{log2}"
    );
    let d = drover_tests::deploy::deployment(&srv2.addr, &token, &id);
    assert_eq!(d["state"], "done", "{d:#}");
    let multicast: i64 = macs
        .iter()
        .map(|m| task_of(&d, m)["multicast_chunks"].as_i64().unwrap())
        .sum();
    assert!(
        multicast > 0,
        "nothing came by multicast: {d:#}\nthe second server's log: {log2}"
    );

    // The second server read each chunk of the image from the bucket once.
    let s = stores::open(
        Some(store),
        &env.path("unused"),
        &stores::Options {
            s3_endpoint: Some(endpoint.clone()),
            ..Default::default()
        }
        .with_env(),
    )
    .unwrap();
    let img = s.resolve("golden").unwrap();
    let unique = img
        .manifest
        .chunks()
        .map(|(_, c)| c.hash)
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    let info = |srv: &Server| -> serde_json::Value {
        let (status, body) = http(&srv.addr, "GET", "/api/v1/store", Some(&token), None);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let s2 = info(&srv2);
    assert_eq!(
        s2["location"].as_str().unwrap().split(' ').next(),
        Some(store)
    );
    let cache = &s2["cache"];
    assert_eq!(
        cache["store_reads"].as_u64().unwrap(),
        unique,
        "the second server should read each of the image's {unique} chunks once: {s2:#}"
    );
    assert_eq!(cache["damaged_in_cache"], 0, "{s2:#}");
    // A verify checks the bucket itself, not the cache: every chunk is read from it again.
    let before = cache["store_reads"].as_u64().unwrap();
    let refs = img.manifest.chunks().count() as u64;
    let (status, body) = http(
        &srv2.addr,
        "POST",
        "/api/v1/images/golden/verify",
        Some(&token),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        info(&srv2)["cache"]["store_reads"].as_u64().unwrap(),
        before + refs
    );

    // A deployment waiting on the second server, cancelled on the first: its session stops.
    let out = srv1.ok(
        &env,
        &token,
        &[
            "deploy",
            "golden",
            "--to",
            "site-b",
            "--start-at",
            "2099-01-01T00:00:00Z",
        ],
    );
    let waiting = out
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while drover_tests::deploy::deployment(&srv1.addr, &token, &waiting)["session"].is_null() {
        assert!(
            Instant::now() < deadline,
            "the second server never announced its session"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    srv1.ok(&env, &token, &["deployment", "cancel", &waiting]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log2
        .lines()
        .any(|l| l.contains("stopping its session") && l.contains(&waiting))
    {
        assert!(
            Instant::now() < deadline,
            "the second server kept its session: {log2}"
        );
        std::thread::sleep(Duration::from_millis(200));
        log2.push_str(&srv2.log());
    }

    // A schedule added on the first server for the second's machines is run by the second:
    // the run is its, and so is the deployment the run makes.
    let at = (chrono::Utc::now() + chrono::Duration::seconds(3)).to_rfc3339();
    srv1.ok(
        &env,
        &token,
        &[
            "schedule",
            "add",
            "site-b-once",
            "--image",
            "golden",
            "--to",
            "site-b",
            "--at",
            &at,
            "--wake-lead",
            "0",
            "--transport",
            "unicast",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let run = loop {
        let (status, body) = http(
            &srv1.addr,
            "GET",
            "/api/v1/schedules/site-b-once",
            Some(&token),
            None,
        );
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if let Some(r) = v["runs"].as_array().and_then(|r| r.first()) {
            if !r["deployment_id"].is_null() {
                break r.clone();
            }
        }
        assert!(Instant::now() < deadline, "the schedule never ran: {v:#}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(run["server"], srv2_id.as_str(), "{run:#}");
    let sd = drover_tests::deploy::deployment(
        &srv1.addr,
        &token,
        run["deployment_id"].as_str().unwrap(),
    );
    assert_eq!(sd["owner"], srv2_id.as_str(), "{sd:#}");
    srv1.ok(
        &env,
        &token,
        &[
            "deployment",
            "cancel",
            run["deployment_id"].as_str().unwrap(),
        ],
    );

    // A chunk damaged in the bucket is named by a verify through the second server, although
    // its cache holds a good copy of every chunk.
    let (_, victim) = img.manifest.chunks().next().unwrap();
    s.backend()
        .write(&s.chunk_key(&victim.hash), b"not a chunk any more")
        .unwrap();
    s.backend().sync().unwrap();
    let (status, body) = http(
        &srv2.addr,
        "POST",
        "/api/v1/images/golden/verify",
        Some(&token),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ok"], false, "{v:#}");
    assert!(
        body.contains(&victim.hash.to_hex()),
        "the damaged chunk is not named: {v:#}"
    );
    drop(srv1);
    drop(srv2);
}
