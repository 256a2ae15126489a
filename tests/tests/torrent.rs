//! Image torrents from the server: `GET /api/v1/images/{ref}/torrent` is the image's used
//! extents at their disk offsets, with piece hashes that match the source disk's bytes, the
//! server's tracker as announce; kept across requests and restarts; unknown images 404. Real
//! clients: aria2c downloads an image torrent from the server's seed through its tracker, and
//! a drover agent completes a download whose only seed is aria2c. BitTorrent deployments.

// Compact peers in the tracker's answers are in network byte order.
#![allow(clippy::big_endian_bytes)]

use std::time::Duration;

use drover_tests::deploy::{agent, lab_disk, output_within, task_of};
use drover_tests::server::{http_bytes_auth, Server};
use drover_tests::Env;
use imaging::device::{BlockDevice, FileDevice};
use imaging::torrent::{metainfo, Payload};

/// The longest any one agent or client may take here.
const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn an_image_torrent_is_its_used_extents_hashed_from_the_disk() {
    let env = Env::new();
    let disk = lab_disk(&env, 2 << 20, 5);
    env.capture(&disk, "lab");
    let m = env.manifest("lab");
    let srv = Server::start(&env.data(), &["--public-url", "http://10.0.0.1:8080"]);
    let t = env.ok(&["token", "create", "admin"]).trim().to_string();

    // What the torrent must be, computed from the source disk itself.
    let p = Payload::of(&m);
    let dev = FileDevice::open_read(&disk).unwrap();
    let hashes = p.piece_hashes(|off, buf| dev.read_at(buf, off)).unwrap();
    let id = env.json(&["image", "list"]);
    let id = id[0]["id"].as_str().unwrap().to_string();
    let want = metainfo(
        "http://10.0.0.1:8080/announce",
        &p.info(&format!("drover-{id}"), &hashes),
    );

    let (status, got) = http_bytes_auth(&srv.addr, "/api/v1/images/lab/torrent", &t);
    assert_eq!(status, 200);
    // The store gives the disk's bytes at every payload extent (the outside area spans the
    // whole disk around the partitions: the partition's chunk must be the one read).
    let store = env.store();
    let cache = imaging::torrent::ChunkCache::new(1);
    let r = imaging::torrent::ImageReader::new(&store, &m, &cache);
    for e in &p.extents {
        let (mut a, mut b) = (vec![0u8; e.len as usize], vec![0u8; e.len as usize]);
        r.read_at(e.disk_offset, &mut a).unwrap();
        dev.read_at(&mut b, e.disk_offset).unwrap();
        assert!(a == b, "extent at {} differs", e.disk_offset);
    }
    assert!(got == want, "the torrent differs from the disk's");
    assert!(p.extents.len() > 3 && p.total == m.used_bytes());
    // Cached: the same bytes by id, and after a restart (the cache file is there).
    let cache = env.data().join("torrents").join(format!("{id}.info"));
    assert!(cache.is_file());
    let (_, again) = http_bytes_auth(&srv.addr, &format!("/api/v1/images/{id}/torrent"), &t);
    assert!(again == want);
    let addr = srv.addr.clone();
    srv.stop();
    let srv = Server::start_at(
        &env.data(),
        &addr,
        &["--public-url", "http://10.0.0.1:8080"],
    );
    let (_, after) = http_bytes_auth(&srv.addr, "/api/v1/images/lab@1/torrent", &t);
    assert!(after == want);
    // Unknown image; no token.
    let (status, body) = srv.http("GET", "/api/v1/images/nope/torrent", Some(&t), None);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("nope"), "{body}");
    assert_eq!(
        srv.http("GET", "/api/v1/images/lab/torrent", None, None).0,
        401
    );
}

/// aria2c with drover's usual swarm settings: no DHT, no local discovery, no peer exchange.
fn aria(
    tfile: &std::path::Path,
    dir: &std::path::Path,
    port: &str,
    seed: bool,
) -> std::process::Command {
    let mut c = std::process::Command::new("aria2c");
    c.args([
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--file-allocation=none",
        "--console-log-level=warn",
        "--summary-interval=0",
        "--bt-stop-timeout=60",
        "--listen-port",
        port,
        // A seed stays (the test stops it): aria2c's leecher now and then finds a piece bad
        // and asks again, which a seed that left at ratio 1.0 could not answer.
        "--seed-ratio=0.0",
        "--seed-time",
        if seed { "30" } else { "0" },
        "--check-integrity=true",
        "--dir",
    ])
    .arg(dir)
    .arg(tfile)
    .stdin(std::process::Stdio::null());
    c
}

/// The image's torrent from the server, written to `env`'s `lab.torrent`; and its info hash
/// percent-encoded for an announce.
fn fetch_torrent(env: &Env, srv: &Server, t: &str) -> (std::path::PathBuf, String) {
    let (path, hash) = fetch_torrent_raw(env, srv, t);
    (path, hash.iter().map(|b| format!("%{b:02x}")).collect())
}

/// As [`fetch_torrent`], the info hash as bytes.
fn fetch_torrent_raw(env: &Env, srv: &Server, t: &str) -> (std::path::PathBuf, [u8; 20]) {
    let (status, torrent) = http_bytes_auth(&srv.addr, "/api/v1/images/lab/torrent", t);
    assert_eq!(status, 200);
    let tfile = env.path("lab.torrent");
    std::fs::write(&tfile, &torrent).unwrap();
    let info =
        &torrent[torrent.windows(6).position(|w| w == b"4:info").unwrap() + 6..torrent.len() - 1];
    (tfile, imaging::torrent::info_hash(info))
}

/// A real BitTorrent client downloads from drover: aria2c takes the image's torrent, finds the
/// server's seed through `/announce`, and ends with the source disk's bytes in every file.
#[test]
fn aria2c_downloads_an_image_torrent_from_the_servers_seed() {
    if !drover_tests::require("torrent_aria2c", &["aria2c"]) {
        return;
    }
    let env = Env::new();
    let disk = lab_disk(&env, 2 << 20, 9);
    env.capture(&disk, "lab");
    let m = env.manifest("lab");
    let srv = Server::start(&env.data(), &["--bittorrent", "0.0.0.0:0"]);
    let t = token(&env);
    let (tfile, _) = fetch_torrent(&env, &srv, &t);
    let id = env.json(&["image", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let got_dir = env.path("got");
    let port = drover_tests::server::free_port().to_string();
    let out = output_within(aria(&tfile, &got_dir, &port, false), LIMIT);
    assert!(
        out.status.success(),
        "aria2c: {}{}\nserver: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        srv.log()
    );
    let dev = FileDevice::open_read(&disk).unwrap();
    for e in &Payload::of(&m).extents {
        let got = std::fs::read(got_dir.join(format!("drover-{id}")).join(e.name())).unwrap();
        let mut want = vec![0u8; e.len as usize];
        dev.read_at(&mut want, e.disk_offset).unwrap();
        assert!(got == want, "extent {} differs", e.name());
    }
    assert!(server_uploaded(&srv) >= m.used_bytes());
}

/// A drover agent in a swarm whose only seed is aria2c (the server does not seed: its upload
/// rate is 0): it writes the disk from aria2c alone, every chunk checked, nothing over unicast.
#[test]
fn an_agent_completes_with_aria2c_as_the_only_seed() {
    if !drover_tests::require("torrent_aria2c_seed", &["aria2c", "sgdisk", "mkntfs"]) {
        return;
    }
    let env = Env::new();
    let (disk, m, reference) = lab_image(&env, 2 << 20, 13);
    let srv = Server::start(&env.data(), &["--bittorrent-upload-rate", "0"]);
    let t = token(&env);
    let (tfile, hash) = fetch_torrent(&env, &srv, &t);
    // aria2c's files: each extent of the source disk, named by its offset.
    let id = env.json(&["image", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let seed_dir = env.path("seed");
    let top = seed_dir.join(format!("drover-{id}"));
    std::fs::create_dir_all(&top).unwrap();
    let dev = FileDevice::open_read(&disk).unwrap();
    for e in &Payload::of(&m).extents {
        let mut b = vec![0u8; e.len as usize];
        dev.read_at(&mut b, e.disk_offset).unwrap();
        std::fs::write(top.join(e.name()), b).unwrap();
    }
    let seed_port = drover_tests::server::free_port();
    let seed_log = std::fs::File::create(env.path("seeder.log")).unwrap();
    let mut seeder = aria(&tfile, &seed_dir, &seed_port.to_string(), true)
        .stdout(seed_log.try_clone().unwrap())
        .stderr(seed_log)
        .spawn()
        .unwrap();
    // The seed announced (it checks its files first): the tracker names it, and nothing
    // else, to a probe.
    let probe = format!(
        "/announce?info_hash={hash}&peer_id=-PROBE-0123456789abc&port=9&left=1&event=stopped&compact=1"
    );
    let mut entry = vec![127, 0, 0, 1];
    entry.extend_from_slice(&seed_port.to_be_bytes());
    let want = [b"5:peers6:".as_slice(), &entry].concat();
    let start = std::time::Instant::now();
    loop {
        let (_, body) = http_bytes_auth(&srv.addr, &probe, "none");
        if body.windows(want.len()).any(|w| w == want.as_slice()) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the seed never announced: {}",
            String::from_utf8_lossy(&body)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mac = "02:00:00:00:06:11";
    srv.ok(&env, &t, &["machine", "add", mac]);
    srv.ok(
        &env,
        &t,
        &["deploy", "lab", "--to", mac, "--transport", "bittorrent"],
    );
    let target = env.path("target.img");
    let o = output_within(
        agent(&srv.url, &target, &["--mac", mac, "--iface", "lo"]),
        LIMIT,
    );
    let _ = seeder.kill();
    let _ = seeder.wait();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success(),
        "{text}\nseeder: {}",
        std::fs::read_to_string(env.path("seeder.log")).unwrap_or_default()
    );
    assert!(std::fs::read(&target).unwrap() == std::fs::read(&reference).unwrap());
    let d = &env.json(&["deployment", "list", "--server", &srv.url, "--token", &t])[0];
    let task = task_of(d, mac);
    assert_eq!(task["unicast_chunks"], 0, "{task:#}");
    // Pieces the fresh disk held already (all zeroes) were not fetched.
    let swarm = task["swarm_bytes"].as_u64().unwrap();
    assert!(swarm > 0 && swarm <= m.used_bytes(), "{task:#}");
    assert_eq!(server_uploaded(&srv), 0);
}

/// A lab disk of `size` bytes of files captured as image "lab", its manifest, and the image
/// restored onto a 64 MiB file (what every machine's disk must equal).
fn lab_image(
    env: &Env,
    size: u64,
    seed: u64,
) -> (
    std::path::PathBuf,
    imaging::manifest::Manifest,
    std::path::PathBuf,
) {
    let disk = lab_disk(env, size, seed);
    env.capture(&disk, "lab");
    let reference = env.path("reference.img");
    drover_tests::sparse_file(&reference, 64 << 20);
    env.restore("lab", &reference);
    (disk, env.manifest("lab"), reference)
}

fn token(env: &Env) -> String {
    env.ok(&["token", "create", "admin"]).trim().to_string()
}

/// The server's seed's bytes uploaded so far (from `/metrics`).
fn server_uploaded(srv: &Server) -> u64 {
    let (_, m) = srv.http("GET", "/metrics", None, None);
    m.lines()
        .filter(|l| l.starts_with("drover_bittorrent_uploaded_bytes{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A BitTorrent deployment on one host: three agents write their disks from the server's seed
/// and each other, every disk equal to the image, every chunk checked; each reports what came
/// from the swarm; they seed until the deployment is over, then exit.
#[test]
fn a_bittorrent_deployment_to_three_agents() {
    if !drover_tests::require("bittorrent_deploy", &["sgdisk", "mkfs.ext4", "mkntfs"]) {
        return;
    }
    let env = Env::new();
    let (_, m, reference) = lab_image(&env, 8 << 20, 21);
    let srv = Server::start(&env.data(), &["--bittorrent", "0.0.0.0:0"]);
    let t = token(&env);
    let macs = [
        "02:00:00:00:06:01",
        "02:00:00:00:06:02",
        "02:00:00:00:06:03",
    ];
    for mac in macs {
        srv.ok(&env, &t, &["machine", "add", mac, "--group", "bt"]);
    }
    let out = srv.ok(
        &env,
        &t,
        &["deploy", "lab", "--to", "bt", "--transport", "bittorrent"],
    );
    assert!(out.contains("bittorrent"), "{out}");
    let agents: Vec<_> = macs
        .iter()
        .enumerate()
        .map(|(i, mac)| {
            let disk = env.path(&format!("disk{i}.img"));
            let c = agent(&srv.url, &disk, &["--mac", mac, "--iface", "lo"]);
            (disk, std::thread::spawn(move || output_within(c, LIMIT)))
        })
        .collect();
    for (disk, a) in agents {
        let o = a.join().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "{text}");
        assert!(text.contains("from the swarm"), "{text}");
        assert!(
            std::fs::read(&disk).unwrap() == std::fs::read(&reference).unwrap(),
            "{} differs from the image",
            disk.display()
        );
    }
    let d = &env.json(&["deployment", "list", "--server", &srv.url, "--token", &t])[0];
    assert_eq!(d["state"], "done", "{d:#}");
    assert_eq!(d["transport"], "bittorrent");
    let mut from_swarm = 0;
    for mac in macs {
        let task = task_of(d, mac);
        assert_eq!(task["state"], "done", "{task:#}");
        assert_eq!(task["unicast_chunks"], 0, "{task:#}");
        from_swarm += task["swarm_bytes"].as_u64().unwrap();
    }
    assert!(from_swarm > 0 && from_swarm <= 3 * m.used_bytes(), "{d:#}");
    let up = server_uploaded(&srv);
    assert!(up > 0 && up <= 3 * m.used_bytes(), "server uploaded {up}");
}

/// Hybrid: a multicast deployment whose stragglers finish from the swarm. Two machines take
/// the stream, then seed; a third comes after the stream ended and gets the image from the
/// swarm (the server's seed, capped at 4 Mbit/s, and the two machines), nothing over unicast.
#[test]
fn a_late_joiner_of_a_multicast_deployment_finishes_from_the_swarm() {
    if !drover_tests::require("bittorrent_fallback", &["sgdisk", "mkfs.ext4", "mkntfs"]) {
        return;
    }
    let env = Env::new();
    let (_, m, reference) = lab_image(&env, 8 << 20, 23);
    let srv = Server::start(
        &env.data(),
        &[
            "--bittorrent",
            "0.0.0.0:0",
            "--bittorrent-upload-rate",
            "4M",
        ],
    );
    let t = token(&env);
    let macs = [
        "02:00:00:00:06:21",
        "02:00:00:00:06:22",
        "02:00:00:00:06:23",
    ];
    for mac in macs {
        srv.ok(&env, &t, &["machine", "add", mac, "--group", "hy"]);
    }
    let out = srv.ok(
        &env,
        &t,
        &[
            "deploy",
            "lab",
            "--to",
            "hy",
            "--min-machines",
            "2",
            "--fallback",
            "bittorrent",
        ],
    );
    let id = out
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_string();
    let start = |i: usize| {
        let disk = env.path(&format!("hy{i}.img"));
        let c = agent(&srv.url, &disk, &["--mac", macs[i], "--iface", "lo"]);
        (disk, std::thread::spawn(move || output_within(c, LIMIT)))
    };
    let first = [start(0), start(1)];
    drover_tests::deploy::wait_deployment(
        LIMIT,
        "the first two machines written and seeding",
        || drover_tests::deploy::deployment(&srv.addr, &t, &id),
        |d| {
            // Written and verified, they seed while a machine still lacks the image (and
            // personalize, then report done, only afterwards).
            macs[..2]
                .iter()
                .all(|mac| task_of(d, mac)["state"] == "seeding")
        },
    );
    // They seed (with the server): the tracker counts three seeds.
    let (_, hash) = fetch_torrent(&env, &srv, &t);
    let probe = format!(
        "/announce?info_hash={hash}&peer_id=-PROBE-0123456789abc&port=9&left=1&event=stopped&compact=1"
    );
    let t0 = std::time::Instant::now();
    while !http_bytes_auth(&srv.addr, &probe, "none")
        .1
        .starts_with(b"d8:completei3e")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the machines do not seed: {}",
            String::from_utf8_lossy(&http_bytes_auth(&srv.addr, &probe, "none").1)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let late = start(2);
    let mut outputs = Vec::new();
    for (disk, a) in first.into_iter().chain([late]) {
        let o = a.join().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "{text}");
        assert!(
            std::fs::read(&disk).unwrap() == std::fs::read(&reference).unwrap(),
            "{} differs from the image: {text}",
            disk.display()
        );
        outputs.push(text);
    }
    let d = drover_tests::deploy::deployment(&srv.addr, &t, &id);
    assert_eq!(d["state"], "done", "{d:#}");
    assert_eq!(d["fallback"], "bittorrent", "{d:#}");
    // The first two seeded for the late one, and gave it pieces.
    for o in &outputs[..2] {
        assert!(o.contains("seeding for the other machines"), "{o}");
    }
    assert!(
        outputs[..2]
            .iter()
            .any(|o| o.contains("seeded ") && !o.contains("seeded 0 B")),
        "no machine uploaded to the late one: {outputs:#?}"
    );
    let late = task_of(&d, macs[2]);
    assert_eq!(late["unicast_chunks"], 0, "{d:#}");
    assert_eq!(late["multicast_chunks"], 0, "{d:#}");
    let swarm = late["swarm_bytes"].as_u64().unwrap();
    assert!(swarm > 0 && swarm <= m.used_bytes(), "{d:#}");
}

/// A BitTorrent deployment with a misbehaving peer in the swarm (announced as a seed, the
/// server's seed slowed to 24 Mbit/s so the agent asks it for pieces too): the agent's disk
/// ends right, nothing over unicast.
fn with_a_bad_peer(mischief: drover_tests::evil_peer::Mischief, seed: u64) {
    let env = Env::new();
    let (_, m, reference) = lab_image(&env, 8 << 20, seed);
    let srv = Server::start(
        &env.data(),
        &[
            "--bittorrent",
            "0.0.0.0:0",
            "--bittorrent-upload-rate",
            "24M",
        ],
    );
    let t = token(&env);
    let (_, hash) = fetch_torrent_raw(&env, &srv, &t);
    let evil =
        drover_tests::evil_peer::EvilPeer::start(hash, Payload::of(&m).pieces() as usize, mischief);
    evil.announce(&srv.addr, hash);
    let mac = "02:00:00:00:06:31";
    srv.ok(&env, &t, &["machine", "add", mac]);
    srv.ok(
        &env,
        &t,
        &["deploy", "lab", "--to", mac, "--transport", "bittorrent"],
    );
    let target = env.path("target.img");
    let o = output_within(
        agent(&srv.url, &target, &["--mac", mac, "--iface", "lo"]),
        LIMIT,
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}");
    assert!(
        std::fs::read(&target).unwrap() == std::fs::read(&reference).unwrap(),
        "{text}"
    );
    let d = &env.json(&["deployment", "list", "--server", &srv.url, "--token", &t])[0];
    let task = task_of(d, mac);
    assert_eq!(task["state"], "done", "{task:#}");
    assert_eq!(task["unicast_chunks"], 0, "{task:#}");
    // The agent did talk to the bad peer (and, for corrupt pieces, took blocks from it).
    use std::sync::atomic::Ordering;
    assert!(evil.connections.load(Ordering::Relaxed) > 0, "{text}");
    if mischief == drover_tests::evil_peer::Mischief::CorruptPieces {
        assert!(evil.blocks.load(Ordering::Relaxed) > 0, "{text}");
        assert!(text.contains("did not validate"), "{text}");
    }
}

/// Pieces from a peer that fail their hash are rejected (the peer dropped) and fetched again.
#[test]
fn a_corrupt_piece_from_a_peer_is_rejected_and_fetched_again() {
    if !drover_tests::require(
        "bittorrent_corrupt_peer",
        &["sgdisk", "mkfs.ext4", "mkntfs"],
    ) {
        return;
    }
    with_a_bad_peer(drover_tests::evil_peer::Mischief::CorruptPieces, 31);
}

/// A peer that sends garbage instead of messages does not stop the deployment.
#[test]
fn a_peer_sending_garbage_does_not_stop_the_deployment() {
    if !drover_tests::require(
        "bittorrent_garbage_peer",
        &["sgdisk", "mkfs.ext4", "mkntfs"],
    ) {
        return;
    }
    with_a_bad_peer(drover_tests::evil_peer::Mischief::Garbage, 33);
}

/// The server's seed is kept across a restart (librqbit's session state and fastresume in
/// `DATA/bt`): after the restart it seeds the image again at once, without hashing it again,
/// and a client downloads it.
#[test]
fn the_servers_seed_survives_a_restart_without_hashing_the_image_again() {
    if !drover_tests::require("bittorrent_restart", &["aria2c"]) {
        return;
    }
    let env = Env::new();
    let disk = lab_disk(&env, 2 << 20, 17);
    env.capture(&disk, "lab");
    let m = env.manifest("lab");
    let srv = Server::start(&env.data(), &["--bittorrent", "0.0.0.0:0"]);
    let t = token(&env);
    let (tfile, hash) = fetch_torrent(&env, &srv, &t);
    let first = srv.log();
    assert!(
        first.contains("Doing initial checksum validation"),
        "{first}"
    );
    let addr = srv.addr.clone();
    srv.stop();
    let srv = Server::start_at(&env.data(), &addr, &["--bittorrent", "0.0.0.0:0"]);
    // The tracker names the server's seed again, with no torrent asked for.
    let probe = format!(
        "/announce?info_hash={hash}&peer_id=-PROBE-0123456789abc&port=9&left=1&event=stopped&compact=1"
    );
    let t0 = std::time::Instant::now();
    while !http_bytes_auth(&srv.addr, &probe, "none")
        .1
        .starts_with(b"d8:completei1e")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the seed is not back: {}",
            srv.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let got_dir = env.path("got");
    let port = drover_tests::server::free_port().to_string();
    let out = output_within(aria(&tfile, &got_dir, &port, false), LIMIT);
    assert!(out.status.success(), "{}", srv.log());
    let after = srv.log();
    assert!(
        !after.contains("Doing initial checksum validation"),
        "the image was hashed again: {after}"
    );
    assert!(server_uploaded(&srv) >= m.used_bytes() / 2);
}
