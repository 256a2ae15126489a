//! Image torrents from the server: `GET /api/v1/images/{ref}/torrent` is the image's used
//! extents at their disk offsets, with piece hashes that match the source disk's bytes, the
//! server's tracker as announce; kept across requests and restarts; unknown images 404.

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
