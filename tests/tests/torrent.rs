//! Image torrents from the server: `GET /api/v1/images/{ref}/torrent` is the image's used
//! extents at their disk offsets, with piece hashes that match the source disk's bytes, the
//! server's tracker as announce; kept across requests and restarts; unknown images 404. And a
//! real client: aria2c seeds and downloads an image torrent through the server's tracker.

// Compact peers in the tracker's answers are in network byte order.
#![allow(clippy::big_endian_bytes)]

use drover_tests::deploy::lab_disk;
use drover_tests::server::{http_bytes_auth, Server};
use drover_tests::Env;
use imaging::device::{BlockDevice, FileDevice};
use imaging::torrent::{metainfo, Payload};

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
    let mut r = imaging::torrent::ImageReader::new(&store, &m);
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

/// A real BitTorrent client takes the torrent and the tracker: aria2c seeds the payload (the
/// source disk's extents as files named by offset, its hash check passing on every piece), a
/// second aria2c finds it through drover's `/announce` and downloads identical bytes.
#[test]
fn aria2c_seeds_and_downloads_an_image_torrent_through_the_tracker() {
    if !drover_tests::require("torrent_aria2c", &["aria2c"]) {
        return;
    }
    let env = Env::new();
    let disk = lab_disk(&env, 2 << 20, 9);
    env.capture(&disk, "lab");
    let m = env.manifest("lab");
    let srv = Server::start(&env.data(), &[]);
    let t = env.ok(&["token", "create", "admin"]).trim().to_string();
    let (status, torrent) = http_bytes_auth(&srv.addr, "/api/v1/images/lab/torrent", &t);
    assert_eq!(status, 200);
    let tfile = env.path("lab.torrent");
    std::fs::write(&tfile, &torrent).unwrap();
    // The seed's files: each extent of the source disk, named by its offset.
    let id = env.json(&["image", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let p = Payload::of(&m);
    let seed_dir = env.path("seed");
    let top = seed_dir.join(format!("drover-{id}"));
    std::fs::create_dir_all(&top).unwrap();
    let dev = FileDevice::open_read(&disk).unwrap();
    for e in &p.extents {
        let mut b = vec![0u8; e.len as usize];
        dev.read_at(&mut b, e.disk_offset).unwrap();
        std::fs::write(top.join(e.name()), b).unwrap();
    }
    let aria = |dir: &std::path::Path, port: &str, seed: bool| {
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
            // The seed stays (the test stops it): aria2c's leecher now and then finds a piece
            // bad and asks again, which a seed that left at ratio 1.0 could not answer.
            "--seed-ratio=0.0",
            "--seed-time",
            if seed { "5" } else { "0" },
            "--check-integrity=true",
            "--dir",
        ])
        .arg(dir)
        .arg(&tfile)
        .stdin(std::process::Stdio::null());
        c
    };
    let seed_port = drover_tests::server::free_port().to_string();
    let seed_log = std::fs::File::create(env.path("seeder.log")).unwrap();
    let mut seeder = aria(&seed_dir, &seed_port, true)
        .stdout(seed_log.try_clone().unwrap())
        .stderr(seed_log)
        .spawn()
        .unwrap();
    // The seed announced (it checks its files first): the tracker names it to a probe.
    let info =
        &torrent[torrent.windows(6).position(|w| w == b"4:info").unwrap() + 6..torrent.len() - 1];
    let hash: String = imaging::torrent::info_hash(info)
        .iter()
        .map(|b| format!("%{b:02x}"))
        .collect();
    let probe = format!(
        "/announce?info_hash={hash}&peer_id=-PROBE-0123456789abc&port=9&left=1&event=stopped&compact=1"
    );
    let seed_entry = {
        let port: u16 = seed_port.parse().unwrap();
        let mut e = vec![127, 0, 0, 1];
        e.extend_from_slice(&port.to_be_bytes());
        e
    };
    let start = std::time::Instant::now();
    loop {
        let (_, body) = http_bytes_auth(&srv.addr, &probe, "none");
        if body.windows(6).any(|w| w == seed_entry.as_slice()) {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the seed never announced: {}",
            String::from_utf8_lossy(&body)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let got_dir = env.path("got");
    let leech_port = drover_tests::server::free_port().to_string();
    let out = drover_tests::deploy::output_within(
        aria(&got_dir, &leech_port, false),
        std::time::Duration::from_secs(120),
    );
    let _ = seeder.kill();
    let _ = seeder.wait();
    assert!(
        out.status.success(),
        "aria2c: {}{}\nseeder: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(env.path("seeder.log")).unwrap_or_default()
    );
    for e in &p.extents {
        let got = std::fs::read(got_dir.join(format!("drover-{id}")).join(e.name())).unwrap();
        let want = std::fs::read(top.join(e.name())).unwrap();
        assert!(got == want, "extent {} differs", e.name());
    }
}
