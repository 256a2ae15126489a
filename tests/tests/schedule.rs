//! Schedules against the real daemon (loopback): a one-shot redeploy fires its wake lead
//! ahead of its due time, creates its deployment and sends its machines' magic packets; a
//! cron wake-up fires on its seconds; a run due while the server was down is run once when
//! it is back (within the grace period) and never again after another restart; bad
//! schedules are refused with a clear reason. On PostgreSQL, two servers sharing the
//! database fire a schedule exactly once.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use drover_tests::server::Server;
use drover_tests::{random_file, require, Env};
use serde_json::Value;

const M1: &str = "02:00:00:00:05:01";
const M2: &str = "02:00:00:00:05:02";

/// `now + secs` as RFC 3339, and as Unix milliseconds.
fn in_secs(secs: i64) -> (String, i64) {
    let t = chrono::Utc::now() + chrono::Duration::seconds(secs);
    (t.to_rfc3339(), t.timestamp_millis())
}

/// A data directory with a small image `lab`, a token, a config file.
fn setup(env: &Env, config: &str) -> (String, std::path::PathBuf) {
    let src = env.path("src.img");
    random_file(&src, 4 << 20, 7);
    env.capture(&src, "lab");
    let cfg = env.path("drover.toml");
    std::fs::write(&cfg, config).unwrap();
    let t = env.ok(&["token", "create", "admin"]).trim().to_string();
    (t, cfg)
}

/// Polls `schedule show NAME` until `f` holds, for at most `limit`.
fn wait_schedule(
    env: &Env,
    srv: &Server,
    t: &str,
    name: &str,
    limit: Duration,
    f: impl Fn(&Value) -> bool,
) -> Value {
    let end = Instant::now() + limit;
    loop {
        let s = srv.json(env, t, &["schedule", "show", name]);
        if f(&s) {
            return s;
        }
        assert!(
            Instant::now() < end,
            "schedule {name} never got there: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Magic packets heard on `sock` until `want` came or `limit` passed: the MACs they wake,
/// with when.
fn magic_packets(sock: &UdpSocket, want: usize, limit: Duration) -> Vec<(String, Instant)> {
    let end = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 200];
    while let Some(left) = end
        .checked_duration_since(Instant::now())
        .filter(|_| out.len() < want)
    {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let Ok(n) = sock.recv(&mut buf) else { break };
        if n == 102 && buf[..6] == [0xff; 6] {
            let mac = buf[6..12]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":");
            out.push((mac, Instant::now()));
        }
    }
    out
}

fn runs(s: &Value) -> &Vec<Value> {
    s["runs"].as_array().unwrap()
}

#[test]
fn schedules_fire_on_time_once_across_a_restart_and_refuse_bad_input() {
    let env = Env::new();
    // The magic packets go to the loopback's broadcast, on a port of this test's own.
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    let (t, cfg) = setup(
        &env,
        &format!("wol_port = {port}\nwake_lead = \"3s\"\nschedule_grace = \"1h\"\n"),
    );
    let cfg = cfg.to_str().unwrap();
    let srv = Server::start(&env.data(), &["--config", cfg]);
    srv.ok(&env, &t, &["machine", "add", M1, "--group", "room"]);
    srv.ok(&env, &t, &["machine", "add", M2, "--group", "room"]);

    // Bad schedules, each refused with its reason.
    let (soon, _) = in_secs(6);
    for (args, why) in [
        (
            add(
                "x",
                &["--cron", "61 * * * *", "--image", "lab", "--to", "room"],
            ),
            "cron expression \"61 * * * *\"",
        ),
        (
            add("x", &["--cron", "nonsense", "--wake", "--to", "room"]),
            "cron expression",
        ),
        (
            add(
                "x",
                &[
                    "--at",
                    "2020-01-01T00:00:00Z",
                    "--image",
                    "lab",
                    "--to",
                    "room",
                ],
            ),
            "in the past",
        ),
        (
            add("x", &["--at", "tomorrow", "--image", "lab", "--to", "room"]),
            "RFC 3339",
        ),
        (
            add(
                "x",
                &[
                    "--cron",
                    "* * * * *",
                    "--image",
                    "lab",
                    "--to",
                    "room",
                    "--wake-lead",
                    "5m",
                ],
            ),
            "wake lead",
        ),
        (
            add("x", &["--at", &soon, "--image", "nosuch", "--to", "room"]),
            "image \"nosuch\"",
        ),
        (
            add("x", &["--at", &soon, "--image", "lab", "--to", "lab9"]),
            "neither a MAC address nor a group",
        ),
        (
            add(
                "x",
                &["--at", &soon, "--image", "lab", "--to", "02:00:00:00:05:99"],
            ),
            "not in the inventory",
        ),
        (
            add("", &["--at", &soon, "--wake", "--to", "room"]),
            "1 to 64",
        ),
        (
            add(
                "x",
                &[
                    "--at",
                    &soon,
                    "--image",
                    "lab",
                    "--to",
                    "room",
                    "--transport",
                    "unicast",
                    "--fallback",
                    "bittorrent",
                ],
            ),
            "fallback bittorrent is for multicast deployments",
        ),
    ] {
        let err = srv.fails(&env, &t, &args);
        assert!(err.contains(why), "{args:?}: {err}");
    }
    assert_eq!(
        srv.json(&env, &t, &["schedule", "list"]),
        serde_json::json!([])
    );

    // A one-shot redeploy due in 6 s, with a 3 s wake lead: it fires 3 s ahead, creating the
    // deployment and waking both machines.
    let (soon, soon_ms) = in_secs(6);
    let added = Instant::now();
    let s = srv.json(
        &env,
        &t,
        &[
            "schedule",
            "add",
            "soon",
            "--at",
            &soon,
            "--image",
            "lab",
            "--to",
            "room",
            "--transport",
            "unicast",
        ],
    );
    assert_eq!(s["next_due_ms"].as_i64(), Some(soon_ms));
    assert_eq!(s["next_fire_ms"].as_i64(), Some(soon_ms - 3000));
    let dup = srv.fails(
        &env,
        &t,
        &add("soon", &["--at", &soon, "--wake", "--to", "room"]),
    );
    assert!(dup.contains("already exists"), "{dup}");
    let heard = magic_packets(&sock, 6, Duration::from_secs(12));
    let first = heard.first().map(|h| h.1.duration_since(added));
    assert!(
        first.is_some_and(|f| f >= Duration::from_millis(2000)),
        "the wake-up came {first:?} after adding (due in 6 s, lead 3 s): not before its lead"
    );
    for m in [M1, M2] {
        // Three copies of each machine's packet.
        assert_eq!(heard.iter().filter(|h| h.0 == m).count(), 3, "{heard:?}");
    }
    let s = wait_schedule(&env, &srv, &t, "soon", Duration::from_secs(10), |s| {
        runs(s).first().is_some_and(|r| r["outcome"] != "running")
    });
    let run = &runs(&s)[0];
    assert_eq!(run["outcome"], "done", "{s:#}");
    assert_eq!(run["due_ms"].as_i64(), Some(soon_ms));
    let dep = run["deployment_id"].as_str().unwrap().to_string();
    let d = srv.json(&env, &t, &["deployment", "show", &dep]);
    assert_eq!(d["created_by"], "schedule:soon");
    assert_eq!(d["machines"], 2);
    assert!(
        s["next_due_ms"].is_null(),
        "a one-shot schedule is done: {s:#}"
    );
    srv.ok(&env, &t, &["deployment", "cancel", &dep]);

    // A multicast redeploy whose stragglers finish from the swarm: its deployment says so.
    let (at, at_ms) = in_secs(3);
    let s = srv.json(
        &env,
        &t,
        &add(
            "swarmy",
            &[
                "--at",
                &at,
                "--image",
                "lab",
                "--to",
                M1,
                "--fallback",
                "bittorrent",
                "--wake-lead",
                "0",
            ],
        ),
    );
    assert_eq!(s["fallback"], "bittorrent", "{s:#}");
    let s = wait_schedule(&env, &srv, &t, "swarmy", Duration::from_secs(15), |s| {
        runs(s).first().is_some_and(|r| r["outcome"] != "running")
    });
    let run = &runs(&s)[0];
    assert_eq!(run["outcome"], "done", "{s:#}");
    assert_eq!(run["due_ms"].as_i64(), Some(at_ms));
    let dep = run["deployment_id"].as_str().unwrap().to_string();
    let d = srv.json(&env, &t, &["deployment", "show", &dep]);
    assert_eq!(
        (&d["transport"], &d["fallback"]),
        (&"multicast".into(), &"bittorrent".into()),
        "{d:#}"
    );
    srv.ok(&env, &t, &["deployment", "cancel", &dep]);
    // A wake lead of 0: no wake-up.
    let heard = magic_packets(&sock, 1, Duration::from_millis(500));
    assert!(heard.is_empty(), "{heard:?}");
    assert!(
        run["detail"].as_str().unwrap().contains("no wake-up"),
        "{s:#}"
    );

    // A cron wake-up every 5 seconds fires on its seconds.
    srv.ok(
        &env,
        &t,
        &[
            "schedule",
            "add",
            "tick",
            "--cron",
            "*/5 * * * * *",
            "--wake",
            "--to",
            M1,
        ],
    );
    let heard = magic_packets(&sock, 3, Duration::from_secs(12));
    assert!(heard.len() >= 3, "{heard:?}");
    let s = srv.json(&env, &t, &["schedule", "show", "tick"]);
    let r = &runs(&s)[0];
    assert_eq!(r["due_ms"].as_i64().unwrap() % 5000, 0, "{s:#}");
    assert!(
        r["at_ms"].as_i64().unwrap() - r["due_ms"].as_i64().unwrap() < 2000,
        "{s:#}"
    );
    srv.ok(&env, &t, &["schedule", "rm", "tick"]);
    let gone = srv.fails(&env, &t, &["schedule", "show", "tick"]);
    assert!(gone.contains("not found"), "{gone}");

    // A run due while the server is down runs once when it is back, and not again after
    // another restart. One of its machines is busy in another deployment: the run goes on
    // without it and says so.
    srv.ok(
        &env,
        &t,
        &["deploy", "lab", "--to", M2, "--transport", "unicast"],
    );
    let (later, later_ms) = in_secs(8);
    srv.ok(
        &env,
        &t,
        &[
            "schedule",
            "add",
            "later",
            "--at",
            &later,
            "--image",
            "lab",
            "--to",
            "room",
            "--transport",
            "unicast",
            "--wake-lead",
            "0",
        ],
    );
    let addr = srv.addr.clone();
    srv.stop();
    std::thread::sleep(Duration::from_millis(
        (later_ms - in_secs(0).1 + 1500).max(0) as u64,
    ));
    let srv = Server::start_at(&env.data(), &addr, &["--config", cfg]);
    let s = wait_schedule(&env, &srv, &t, "later", Duration::from_secs(10), |s| {
        runs(s).first().is_some_and(|r| r["outcome"] != "running")
    });
    assert_eq!(runs(&s).len(), 1, "{s:#}");
    assert_eq!(runs(&s)[0]["outcome"], "done", "{s:#}");
    assert!(
        runs(&s)[0]["at_ms"].as_i64().unwrap() > later_ms + 1000,
        "{s:#}"
    );
    let detail = runs(&s)[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("left out, busy: {M2}")),
        "{detail}"
    );
    let dep = runs(&s)[0]["deployment_id"].as_str().unwrap().to_string();
    let d = srv.json(&env, &t, &["deployment", "show", &dep]);
    assert_eq!(d["machines"], 1, "{d:#}");
    srv.stop();
    let srv = Server::start_at(&env.data(), &addr, &["--config", cfg]);
    std::thread::sleep(Duration::from_secs(2));
    let s = srv.json(&env, &t, &["schedule", "show", "later"]);
    assert_eq!(runs(&s).len(), 1, "{s:#}");
    let deployments = srv.json(&env, &t, &["deployment", "list"]);
    // soon's, swarmy's, later's and the one that kept M2 busy.
    assert_eq!(deployments.as_array().unwrap().len(), 4, "{deployments:#}");
    let (status, audit) = srv.http("GET", "/api/v1/audit", Some(&t), None);
    assert_eq!(status, 200);
    assert!(
        audit.contains("schedule.done") && audit.contains("schedule:soon"),
        "{audit}"
    );
    let (_, metrics) = srv.http("GET", "/metrics", None, None);
    assert!(metrics.contains("drover_schedules 3"), "{metrics}");
    assert!(
        metrics.contains("drover_schedule_runs_total{outcome=\"done\"}"),
        "{metrics}"
    );
    // A malformed body is a 400 naming what is wrong.
    let (status, body) = srv.http("POST", "/api/v1/schedules", Some(&t), Some("{\"name\": 5}"));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("name"), "{body}");
}

#[test]
fn two_servers_on_postgresql_fire_a_schedule_once() {
    if !require("postgresql_schedules", &["runuser"]) {
        return;
    }
    if !drover_tests::postgres::available() {
        let msg = "postgresql_schedules: needs PostgreSQL (deploy/install-test-deps) and root";
        assert!(!drover_tests::in_ci(), "{msg}; a skip in CI is a failure");
        eprintln!("SKIPPED {msg}");
        return;
    }
    let pg = drover_tests::postgres::Postgres::start();
    let (a, b) = (Env::new(), Env::new());
    for env in [&a, &b] {
        let src = env.path("src.img");
        random_file(&src, 4 << 20, 8);
        env.capture(&src, "lab");
    }
    let t = a
        .ok(&["token", "create", "admin", "--database-url", &pg.url])
        .trim()
        .to_string();
    let sa = Server::start(&a.data(), &["--database-url", &pg.url]);
    let sb = Server::start(&b.data(), &["--database-url", &pg.url]);
    sa.ok(&a, &t, &["machine", "add", M1]);
    let (at, _) = in_secs(3);
    sb.ok(
        &b,
        &t,
        &[
            "schedule",
            "add",
            "both",
            "--at",
            &at,
            "--image",
            "lab",
            "--to",
            M1,
            "--transport",
            "unicast",
            "--wake-lead",
            "0",
        ],
    );
    let s = wait_schedule(&a, &sa, &t, "both", Duration::from_secs(15), |s| {
        runs(s).first().is_some_and(|r| r["outcome"] != "running")
    });
    // Both servers looked at it; give the slower one time to try.
    std::thread::sleep(Duration::from_secs(2));
    let s2 = sb.json(&b, &t, &["schedule", "show", "both"]);
    assert_eq!(runs(&s2).len(), 1, "{s2:#}");
    assert_eq!(runs(&s)[0]["outcome"], "done", "{s:#}");
    let deployments = sa.json(&a, &t, &["deployment", "list"]);
    assert_eq!(deployments.as_array().unwrap().len(), 1, "{deployments:#}");
}

/// `schedule add NAME EXTRA...`
fn add<'a>(name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["schedule", "add", name];
    a.extend_from_slice(extra);
    a
}
