//! `drover serve` end to end: no config file, an embedded SQLite database, the API with its
//! token rule, the machine and group CLI on top of it, images captured by the CLI showing up
//! at once, and a restart that loses nothing.

use drover_tests::server::Server;
use drover_tests::{random_file, Env};

fn token(env: &Env, name: &str) -> String {
    env.ok(&["token", "create", name]).trim().to_string()
}

#[test]
fn inventory_through_the_api_and_the_cli_survives_a_restart() {
    let env = Env::new();
    let srv = Server::start(&env.data(), &[]);
    // Public paths answer without a token.
    assert_eq!(srv.http("GET", "/healthz", None, None).0, 200);
    let (code, spec) = srv.http("GET", "/api/v1/openapi.json", None, None);
    assert_eq!(code, 200);
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    assert!(spec["paths"]["/api/v1/machines"]["post"].is_object());
    assert!(spec["paths"]["/api/v1/schedules"]["post"].is_object());
    assert!(spec["paths"]["/api/v1/captures"]["post"].is_object());
    // The document is the router: every operation it names is routed (no "no such endpoint",
    // no 405), and every one it does not mark public refuses a caller without a token.
    let mut checked = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        let concrete: String = path
            .split('/')
            .map(|seg| {
                if seg.starts_with('{') {
                    "aa:bb:cc:dd:ee:ff"
                } else {
                    seg
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for (method, op) in item.as_object().unwrap() {
            let m = method.to_uppercase();
            let (code, body) = srv.http(&m, &concrete, None, Some("{}"));
            assert!(
                code != 405 && !body.contains("no such endpoint"),
                "{m} {path} is in the document but not routed: {code} {body}"
            );
            if op.get("security").is_none() {
                assert_eq!(code, 401, "{m} {path} without a token: {body}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 45, "{checked} operations");
    // Everything else needs one.
    for (m, p) in [
        ("GET", "/api/v1/machines"),
        ("POST", "/api/v1/machines"),
        ("GET", "/api/v1/images"),
        ("DELETE", "/api/v1/groups/x"),
        ("GET", "/api/v1/schedules"),
        ("DELETE", "/api/v1/schedules/x"),
    ] {
        let (code, body) = srv.http(m, p, None, Some("{}"));
        assert_eq!(code, 401, "{m} {p}: {body}");
        assert!(body.contains("token"), "{body}");
        assert_eq!(srv.http(m, p, Some("drv_0000_1111"), Some("{}")).0, 401);
    }

    let t = token(&env, "admin");
    let cli = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend_from_slice(&["--server", &srv.url, "--token", &t]);
        env.ok(&a)
    };
    let out = cli(&["machine", "add", "AA-BB-CC-00-00-01", "--group", "lab-a"]);
    assert!(
        out.contains("aa:bb:cc:00:00:01") && out.contains("pc-000001"),
        "{out}"
    );
    cli(&[
        "machine",
        "add",
        "aa:bb:cc:00:00:02",
        "--name",
        "front",
        "--group",
        "lab-a",
    ]);
    cli(&["machine", "add", "aa:bb:cc:00:00:03"]);
    let listed = env.json(&[
        "machine", "list", "--group", "lab-a", "--server", &srv.url, "--token", &t,
    ]);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["front", "pc-000001"]);
    cli(&[
        "machine",
        "set",
        "aa:bb:cc:00:00:03",
        "--name",
        "back",
        "--group",
        "lab-b",
    ]);
    let groups = cli(&["group", "list"]);
    assert!(
        groups.contains("lab-a") && groups.contains("2 machine(s)"),
        "{groups}"
    );
    assert!(groups.contains("lab-b"), "{groups}");

    // Clear errors for bad input; nothing stored changes.
    let fail = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend_from_slice(&["--server", &srv.url, "--token", &t]);
        env.fails(&a)
    };
    assert!(fail(&["machine", "add", "aa:bb:cc:00:00:01"]).contains("already exists"));
    assert!(fail(&["machine", "add", "nonsense"]).contains("not a MAC address"));
    assert!(fail(&["machine", "rm", "aa:bb:cc:99:99:99"]).contains("not found"));
    assert!(fail(&["group", "rm", "lab-z"]).contains("not found"));
    let no_token = env.fails(&["machine", "list", "--server", &srv.url]);
    assert!(no_token.contains("--token"), "{no_token}");
    for body in [
        "{",
        "[]",
        "{\"mac\": 5}",
        "{\"mac\": \"aa:bb:cc:00:00:09\", \"colour\": 1}",
    ] {
        let (code, msg) = srv.http("POST", "/api/v1/machines", Some(&t), Some(body));
        assert_eq!(code, 400, "{body}: {msg}");
        assert!(msg.contains("malformed request body"), "{msg}");
    }
    let (code, msg) = srv.http(
        "PATCH",
        "/api/v1/machines/aa:bb:cc:00:00:02",
        Some(&t),
        Some("{\"state\": \"done\"}"),
    );
    assert_eq!(code, 400, "{msg}");
    let (code, _) = srv.http("GET", "/api/v1/nothing", Some(&t), None);
    assert_eq!(code, 404);

    // An image captured by the CLI into the server's data directory shows up at once.
    let src = env.path("disk.img");
    random_file(&src, 6 << 20, 3);
    env.capture(&src, "golden");
    let (code, images) = srv.http("GET", "/api/v1/images", Some(&t), None);
    assert_eq!(code, 200);
    let images: serde_json::Value = serde_json::from_str(&images).unwrap();
    let img = &images[0];
    assert_eq!(img["name"], "golden");
    assert_eq!(img["size"], 6 << 20);
    for k in ["id", "used_bytes", "created"] {
        assert!(!img[k].is_null(), "{k} missing: {img}");
    }
    let (code, metrics) = srv.http("GET", "/metrics", None, None);
    assert_eq!(code, 200);
    assert!(
        metrics.contains("drover_machines{state=\"registered\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("drover_images 1"), "{metrics}");

    // The audit log says who did what.
    let (_, audit) = srv.http("GET", "/api/v1/audit", Some(&t), None);
    assert!(
        audit.contains("token:admin") && audit.contains("machine.add"),
        "{audit}"
    );

    // A restart loses nothing.
    srv.stop();
    let srv = Server::start(&env.data(), &[]);
    let all = env.json(&["machine", "list", "--server", &srv.url, "--token", &t]);
    assert_eq!(all.as_array().unwrap().len(), 3, "{all}");
    let mut a = vec!["machine", "rm", "aa:bb:cc:00:00:03"];
    a.extend_from_slice(&["--server", &srv.url, "--token", &t]);
    env.ok(&a);
    let mut a = vec!["group", "rm", "lab-a"];
    a.extend_from_slice(&["--server", &srv.url, "--token", &t]);
    env.ok(&a);
    let (_, m) = srv.http("GET", "/api/v1/machines/aa:bb:cc:00:00:02", Some(&t), None);
    let m: serde_json::Value = serde_json::from_str(&m).unwrap();
    assert!(m["group"].is_null(), "{m}");
}

#[test]
fn a_bad_config_or_database_is_a_clear_error() {
    let env = Env::new();
    let cfg = env.path("bad.toml");
    std::fs::write(&cfg, "htp = \"0.0.0.0:1\"\n").unwrap();
    let err = env.fails(&["serve", "--config", cfg.to_str().unwrap()]);
    assert!(
        err.contains("bad.toml") && err.contains("unknown field"),
        "{err}"
    );
    let err = env.fails(&["serve", "--database-url", "mysql://x/y", "--iface", "lo"]);
    assert!(err.contains("only sqlite:// and postgres://"), "{err}");
    let err = env.fails(&["token", "create", ""]);
    assert!(err.contains("token name"), "{err}");
    env.ok(&["token", "create", "ci"]);
    let err = env.fails(&["token", "create", "ci"]);
    assert!(err.contains("already exists"), "{err}");
}
