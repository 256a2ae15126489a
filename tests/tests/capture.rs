//! Capture over the network: `drover capture MAC --name N` and the machine's `drover-agent`
//! take its disk (GPT, ext4, NTFS) into the server's store, chunk for chunk what a local
//! `drover image capture` makes; a second capture after a few files changed uploads only
//! the changed chunks. A manifest naming chunks that never arrived commits nothing, a chunk
//! that does not match its hash is refused, and a server whose store is full fails the
//! capture with that reason, keeping everything it had.

use std::path::Path;
use std::time::Duration;

use drover_tests::deploy::{agent, lab_disk, output_within};
use drover_tests::server::Server;
use drover_tests::{extract, random_file, require, run, text, write_into, Env, Mount};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(120);
const GOLDEN: &str = "02:00:00:00:06:01";
/// Where lab_disk's ext4 partition starts, and its size.
const EXT4: (u64, u64) = (2048 * 512, 36 << 20);

/// The (area, index, hash) of every chunk of a manifest.
fn chunk_list(m: &imaging::manifest::Manifest) -> Vec<(u64, u64, String)> {
    m.chunks()
        .map(|(a, c)| (a.offset, c.index, c.hash.to_hex()))
        .collect()
}

/// Runs the machine's agent until its task is over; returns its output.
fn run_agent(srv: &Server, disk: &Path) -> std::process::Output {
    let c = agent(
        &srv.url,
        disk,
        &["--mac", GOLDEN, "--iface", "lo", "--max-idle", "60s"],
    );
    output_within(c, LIMIT)
}

/// Adds two files to the disk's ext4 partition (debugfs on a copy, written back).
fn change_files(env: &Env, disk: &Path) {
    let part = env.path("p1.img");
    extract(disk, EXT4.0, EXT4.1, &part);
    for (i, seed) in [(1, 71), (2, 72)] {
        let f = env.path(&format!("new{i}.bin"));
        random_file(&f, 100 << 10, seed);
        run(
            "debugfs",
            &[
                "-w",
                "-R",
                &format!("write {} new{i}.bin", f.display()),
                part.to_str().unwrap(),
            ],
        );
    }
    run("e2fsck", &["-fn", part.to_str().unwrap()]);
    write_into(disk, EXT4.0, &part);
}

#[test]
fn network_capture_matches_a_local_one_and_uploads_only_what_changed() {
    if !require(
        "network_capture",
        &["sgdisk", "mkfs.ext4", "mkntfs", "debugfs", "e2fsck"],
    ) {
        return;
    }
    let env = Env::new();
    let disk = lab_disk(&env, 12 << 20, 61);
    let srv = Server::start(&env.data(), &[]);
    let t = env.ok(&["token", "create", "admin"]).trim().to_string();

    // Bad requests: nothing created.
    let e = srv.fails(&env, &t, &["capture", GOLDEN, "--name", "golden"]);
    assert!(e.contains("not in the inventory"), "{e}");
    srv.ok(&env, &t, &["machine", "add", GOLDEN]);
    for bad in ["a/b", "x@2", ""] {
        let e = srv.fails(&env, &t, &["capture", GOLDEN, "--name", bad]);
        assert!(e.contains("image name"), "{bad:?}: {e}");
    }

    // The first capture: every distinct chunk is uploaded.
    let out = srv.ok(&env, &t, &["capture", GOLDEN, "--name", "golden"]);
    assert!(out.contains("waiting for its agent"), "{out}");
    let e = srv.fails(&env, &t, &["capture", GOLDEN, "--name", "golden"]);
    assert!(e.contains("already"), "{e}");
    let o = run_agent(&srv, &disk);
    assert!(o.status.success(), "agent: {}", text(&o));
    let first = env.manifest("golden");
    assert_eq!(first.name_version, 1);
    // Chunk for chunk what a local capture of the same disk makes.
    let local = Env::new();
    local.capture(&disk, "golden");
    assert_eq!(chunk_list(&first), chunk_list(&local.manifest("golden")));
    env.ok(&["image", "verify", "golden"]);
    let d = &srv.json(&env, &t, &["deployment", "list"])[0];
    assert_eq!(d["kind"], "capture");
    assert_eq!(d["state"], "done", "{d:#}");
    assert_eq!(d["image_name"], "golden@1");
    let task = &d["tasks"][0];
    let total = first.chunks().count() as i64;
    let uploaded1 = task["unicast_chunks"].as_i64().unwrap();
    assert!(uploaded1 > 0, "{task:#}");
    assert_eq!(
        uploaded1 + task["kept_chunks"].as_i64().unwrap(),
        total,
        "{task:#}"
    );

    // A few files change; the second capture uploads only the chunks they touched.
    change_files(&env, &disk);
    let a = {
        let (url, disk) = (srv.url.clone(), disk.clone());
        std::thread::spawn(move || {
            let c = agent(
                &url,
                &disk,
                &["--mac", GOLDEN, "--iface", "lo", "--max-idle", "60s"],
            );
            output_within(c, LIMIT)
        })
    };
    let out = srv.ok(&env, &t, &["capture", GOLDEN, "--name", "golden", "--wait"]);
    assert!(out.contains("image golden@2"), "{out}");
    let o = a.join().unwrap();
    assert!(o.status.success(), "agent: {}", text(&o));
    let second = env.manifest("golden");
    assert_eq!(second.name_version, 2);
    let local2 = Env::new();
    local2.capture(&disk, "golden");
    assert_eq!(chunk_list(&second), chunk_list(&local2.manifest("golden")));
    let changed = chunk_list(&second)
        .iter()
        .filter(|c| !chunk_list(&first).contains(c))
        .count() as i64;
    let d = &srv.json(&env, &t, &["deployment", "list"])[0];
    let task = &d["tasks"][0];
    let uploaded2 = task["unicast_chunks"].as_i64().unwrap();
    assert!(
        changed > 0 && uploaded2 <= changed,
        "{uploaded2} uploaded, {changed} changed"
    );
    assert!(
        uploaded2 * 2 < uploaded1,
        "{uploaded2} uploaded again of {uploaded1}"
    );
    eprintln!(
        "second capture: {uploaded2} of {total} chunk(s) uploaded ({uploaded1} the first time)"
    );
    let restored = env.path("restored.img");
    drover_tests::sparse_file(&restored, 64 << 20);
    env.restore("golden", &restored);
    run("cmp", &[restored.to_str().unwrap(), disk.to_str().unwrap()]);

    // By hand: a chunk that is not what its hash says is refused; a manifest naming a
    // chunk that never arrived commits nothing.
    srv.ok(&env, &t, &["capture", GOLDEN, "--name", "partial"]);
    let (status, hello) = srv.http(
        "POST",
        "/api/v1/agent/hello",
        None,
        Some(&json!({ "mac": GOLDEN }).to_string()),
    );
    assert_eq!(status, 200, "{hello}");
    let hello: Value = serde_json::from_str(&hello).unwrap();
    let token = hello["token"].as_str().unwrap();
    let (status, body) = srv.http(
        "PUT",
        &format!("/api/v1/agent/capture/chunks/{}?len=5", "ab".repeat(32)),
        Some(token),
        Some("hello"),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("refused"), "{body}");
    let mut m = serde_json::to_value(&first).unwrap();
    m["name"] = json!("partial");
    let area = (0..first.areas.len())
        .find(|&i| !first.areas[i].chunks.is_empty())
        .unwrap();
    m["areas"][area]["chunks"][0]["hash"] = json!("cd".repeat(32));
    let (status, body) = srv.http(
        "POST",
        "/api/v1/agent/capture/commit",
        Some(token),
        Some(&m.to_string()),
    );
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("not on the server"), "{body}");
    let (status, body) = srv.http(
        "POST",
        "/api/v1/agent/result",
        Some(token),
        Some(r#"{"ok": true}"#),
    );
    assert_eq!(status, 409, "{body}");
    let images = env.json(&["image", "list"]).to_string();
    assert!(!images.contains("partial"), "{images}");
    // The real agent finishes it: every chunk is on the server already.
    let o = run_agent(&srv, &disk);
    assert!(o.status.success(), "agent: {}", text(&o));
    assert!(text(&o).contains("0 chunk(s) uploaded"), "{}", text(&o));
    assert_eq!(env.manifest("partial").name_version, 1);
}

#[test]
fn a_full_server_store_fails_the_capture_and_keeps_what_it_had() {
    if !require(
        "capture_full_store",
        &["sgdisk", "mkfs.ext4", "mkntfs", "mount"],
    ) {
        return;
    }
    if !drover_tests::is_root() {
        let msg = "capture_full_store: needs root (a small tmpfs as the server's data directory)";
        assert!(!drover_tests::in_ci(), "{msg}; a skip in CI is a failure");
        eprintln!("SKIPPED {msg}");
        return;
    }
    let env = Env::new();
    let disk = lab_disk(&env, 24 << 20, 62);
    let data = env.path("small");
    let _mnt = Mount::new("mount", &["-t", "tmpfs", "-o", "size=24m", "tmpfs"], &data);
    // One image there already, which must survive.
    let small = env.path("small.img");
    random_file(&small, 1 << 20, 5);
    let ok = |args: &[&str]| {
        let out = std::process::Command::new(drover_tests::drover_bin())
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(&[
        "image",
        "capture",
        small.to_str().unwrap(),
        "--name",
        "keep",
        "--skip-space-check",
    ]);
    let t = ok(&["token", "create", "admin"]).trim().to_string();
    let srv = Server::start(&data, &[]);
    srv.ok(&env, &t, &["machine", "add", GOLDEN]);
    srv.ok(&env, &t, &["capture", GOLDEN, "--name", "big"]);
    let o = run_agent(&srv, &disk);
    assert_eq!(o.status.code(), Some(1), "agent: {}", text(&o));
    assert!(text(&o).contains("is full"), "{}", text(&o));
    let d = &srv.json(&env, &t, &["deployment", "list"])[0];
    assert_eq!(d["state"], "failed", "{d:#}");
    assert!(
        d["tasks"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("is full"),
        "{d:#}"
    );
    let images = ok(&["--json", "image", "list"]);
    assert!(
        images.contains("keep") && !images.contains("big"),
        "{images}"
    );
    ok(&["image", "verify", "keep"]);
    drop(srv);
}

#[test]
fn an_encrypted_disk_is_captured_over_the_network_with_its_passphrase() {
    if !require("capture_luks", &["cryptsetup", "mkfs.ext4"]) {
        return;
    }
    let env = Env::new();
    // A LUKS2 disk (PBKDF2, to stay quick) holding ext4 with files, encrypted in place by
    // cryptsetup.
    let tree = env.path("tree");
    drover_tests::make_tree(&tree, 6 << 20, 3);
    let disk = env.path("laptop.img");
    random_file(&disk, 64 << 20, 8);
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            tree.to_str().unwrap(),
            disk.to_str().unwrap(),
            "48M",
        ],
    );
    let key = env.path("luks.key");
    std::fs::write(&key, "lab secret 7").unwrap();
    let k = key.to_str().unwrap();
    run(
        "cryptsetup",
        &[
            "reencrypt",
            "--encrypt",
            "--batch-mode",
            "--type",
            "luks2",
            "--reduce-device-size",
            "16M",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            k,
            disk.to_str().unwrap(),
        ],
    );
    let srv = Server::start(&env.data(), &[]);
    let t = env.ok(&["token", "create", "admin"]).trim().to_string();
    srv.ok(&env, &t, &["machine", "add", GOLDEN]);
    let out = srv.ok(
        &env,
        &t,
        &["capture", GOLDEN, "--name", "laptop", "--luks-key-file", k],
    );
    assert!(out.contains("waiting for its agent"), "{out}");
    let o = run_agent(&srv, &disk);
    assert!(o.status.success(), "agent: {}", text(&o));
    // The agent read the volume through its passphrase: the ext4 inside, its used blocks.
    let m = env.manifest("laptop");
    let f = m.areas[0].fs.as_ref().unwrap();
    assert_eq!(f.kind.to_string(), "luks", "{f:?}");
    assert_eq!(f.volumes[0].kind.to_string(), "ext4", "{f:?}");
    assert!(f.warning.is_none(), "{f:?}");
    assert!(m.used_bytes() < 40 << 20, "{}", m.used_bytes());
    // Chunk for chunk what a local capture with the same key makes.
    let local = Env::new();
    local.json(&[
        "image",
        "capture",
        disk.to_str().unwrap(),
        "--name",
        "laptop",
        "--luks-key-file",
        k,
    ]);
    assert_eq!(chunk_list(&m), chunk_list(&local.manifest("laptop")));
    // The passphrase is nowhere the server shows or keeps: not in the deployment, not in its
    // database (audit log included).
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode("lab secret 7");
    let mut kept = srv
        .json(&env, &t, &["deployment", "list"])
        .to_string()
        .into_bytes();
    for f in ["drover.db", "drover.db-wal"] {
        kept.extend(std::fs::read(env.data().join(f)).unwrap_or_default());
    }
    for secret in ["lab secret 7", b64.as_str()] {
        assert!(
            !kept.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret:?} is kept"
        );
    }
    assert!(
        kept.windows(8).any(|w| w == b"LUKS key"),
        "the audit log says a key was given"
    );
}
