//! A stock BitTorrent client in a drover swarm: Debian's transmission-cli 3.00 with its
//! default settings (it offers an encrypted handshake first, which drover's peers do not
//! speak) downloads an image torrent from the server's seed through the server's tracker, then
//! seeds it to a BitTorrent deployment whose server does not upload at all: the machine's disk
//! is written from transmission alone, nothing over unicast.
//!
//! A lab of namespaces, not loopback: transmission never connects to a peer on 127.0.0.0/8.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drover_tests::deploy::{lab_disk, output_within, task_of};
use drover_tests::lab::Lab;
use drover_tests::server::Server;
use drover_tests::{agent_bin, drover_bin, require, Env};
use imaging::device::{BlockDevice, FileDevice};
use imaging::torrent::Payload;

const URL: &str = "http://10.77.0.10:8080";
const MACHINE: &str = "02:00:00:00:7a:02";
/// The longest a download may take here.
const LIMIT: Duration = Duration::from_secs(180);

/// The server on host 0 with `extra` flags.
fn server(lab: &Lab, data: &Path, extra: &[&str]) -> Server {
    let mut cmd = lab.cmd(0, drover_bin().to_str().unwrap());
    cmd.arg("--data-dir")
        .arg(data)
        .args(["serve", "--http", "10.77.0.10:8080", "--iface", "eth0"])
        .args(extra)
        .env("RUST_LOG", "info");
    Server::start_cmd(cmd)
}

/// transmission-cli on host 1 with its default settings, its state in `config`, saving into
/// `dir`; its output goes to `log`.
fn transmission(lab: &mut Lab, config: &Path, tfile: &Path, dir: &Path, log: &Path) -> usize {
    let out = std::fs::File::create(log).unwrap();
    let mut c = lab.cmd(1, "transmission-cli");
    c.arg("-g")
        .arg(config)
        // No port mapping (there is no router to ask); everything else as installed.
        .args(["-M", "-p", "51413", "-w"])
        .arg(dir)
        .arg(tfile)
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    lab.spawn(c)
}

/// The last lines of transmission's output (its progress lines end in carriage returns).
fn tail(log: &Path) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).replace('\r', "\n");
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The disk's bytes at each of the image torrent's files, by path under `top`.
fn expected_files(
    disk: &Path,
    m: &imaging::manifest::Manifest,
    top: &Path,
) -> Vec<(PathBuf, Vec<u8>)> {
    let dev = FileDevice::open_read(disk).unwrap();
    Payload::of(m)
        .extents
        .iter()
        .map(|e| {
            let mut b = vec![0u8; e.len as usize];
            dev.read_at(&mut b, e.disk_offset).unwrap();
            (top.join(e.name()), b)
        })
        .collect()
}

/// The admin CLI on host 0: its standard output.
fn cli(lab: &Lab, data: &Path, admin: &str, args: &[&str]) -> String {
    let o = lab.drover(0, data, URL, admin, args);
    assert!(o.status.success(), "drover {args:?}: {o:?}");
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn transmission_downloads_from_the_servers_seed_and_seeds_a_deployment() {
    if !require(
        "transmission",
        &[
            "root",
            "ip",
            "curl",
            "transmission-cli",
            "sgdisk",
            "mkfs.ext4",
            "mkntfs",
        ],
    ) {
        return;
    }
    let env = Env::new();
    let disk = lab_disk(&env, 6 << 20, 41);
    env.capture(&disk, "lab");
    let m = env.manifest("lab");
    let reference = env.path("reference.img");
    drover_tests::sparse_file(&reference, 64 << 20);
    env.restore("lab", &reference);
    let id = env.json(&["image", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let data = env.data();

    let mut lab = Lab::new("trm", 3);
    lab.set_mac(2, MACHINE);
    let srv = server(&lab, &data, &["--bittorrent-upload-rate", "100M"]);
    let admin = lab.token(0, &data, "admin");
    let tfile = env.path("lab.torrent");
    let out = lab
        .cmd(1, "curl")
        .args(["-sf", "-o"])
        .arg(&tfile)
        .args(["-H", &format!("Authorization: Bearer {admin}")])
        .arg(format!("{URL}/api/v1/images/lab/torrent"))
        .output()
        .unwrap();
    assert!(out.status.success(), "fetching the torrent: {out:?}");

    // 1. transmission downloads the image from the server's seed.
    let config = env.path("tr-config");
    let got = env.path("got");
    std::fs::create_dir_all(&got).unwrap();
    let log = env.path("transmission.log");
    let k = transmission(&mut lab, &config, &tfile, &got, &log);
    let want = expected_files(&disk, &m, &got.join(format!("drover-{id}")));
    let start = Instant::now();
    while !want
        .iter()
        .all(|(p, b)| std::fs::read(p).is_ok_and(|f| f == *b))
    {
        assert!(
            start.elapsed() < LIMIT,
            "transmission did not download the image:\n{}\nserver: {}",
            tail(&log),
            srv.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Stopped as a user stops it (Ctrl-C): it saves what it has.
    let pid = lab.child(k).id().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let _ = lab.child(k).wait();

    // 2. The server no longer uploads; transmission, started again on its files, is the
    // deployment's only seed.
    srv.stop();
    let srv = server(&lab, &data, &["--bittorrent-upload-rate", "0"]);
    let log = env.path("transmission-seed.log");
    let k = transmission(&mut lab, &config, &tfile, &got, &log);
    // It checks its files, then says it seeds.
    let start = Instant::now();
    while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains("Seeding")) {
        assert!(
            start.elapsed() < LIMIT,
            "transmission does not seed:\n{}",
            tail(&log)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    cli(&lab, &data, &admin, &["machine", "add", MACHINE]);
    cli(
        &lab,
        &data,
        &admin,
        &[
            "deploy",
            "lab",
            "--to",
            MACHINE,
            "--transport",
            "bittorrent",
        ],
    );
    let target = env.path("target.img");
    let mut a = lab.cmd(2, agent_bin().to_str().unwrap());
    a.args(["--server", URL, "--disk"])
        .arg(&target)
        .args(["--iface", "eth0"]);
    let o = output_within(a, LIMIT);
    let _ = lab.child(k).kill();
    let _ = lab.child(k).wait();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success(),
        "agent: {text}\ntransmission:\n{}\nserver: {}",
        tail(&log),
        srv.log()
    );
    assert!(
        std::fs::read(&target).unwrap() == std::fs::read(&reference).unwrap(),
        "the machine's disk differs from the image"
    );
    let d: serde_json::Value =
        serde_json::from_str(&cli(&lab, &data, &admin, &["--json", "deployment", "list"])).unwrap();
    let task = task_of(&d[0], MACHINE);
    assert_eq!(task["state"], "done", "{task:#}");
    assert_eq!(
        task["unicast_chunks"],
        0,
        "{task:#}\nagent: {text}\ntransmission:\n{}",
        tail(&log)
    );
    let swarm = task["swarm_bytes"].as_u64().unwrap();
    assert!(swarm > 0 && swarm <= m.used_bytes(), "{task:#}");
}
