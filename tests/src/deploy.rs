//! What the deployment tests share: a small real disk (GPT, ext4 with files, NTFS), an agent
//! command, and waiting on the server's view of a deployment.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::server::http;
use crate::{agent_bin, make_tree, run, sparse_file, write_into, Env};

const MIB: u64 = 1 << 20;

/// A 64 MiB GPT disk: an ext4 partition holding ~`fill` bytes of files, and an NTFS one.
pub fn lab_disk(env: &Env, fill: u64, seed: u64) -> PathBuf {
    let disk = env.path("lab-disk.img");
    sparse_file(&disk, 64 * MIB);
    let d = disk.to_str().unwrap();
    run(
        "sgdisk",
        &[
            "-o",
            "-n1:2048:+36M",
            "-t1:8300",
            "-n2:0:+24M",
            "-t2:0700",
            d,
        ],
    );
    let tree = env.path("lab-tree");
    make_tree(&tree, fill, seed);
    let ext4 = env.path("lab-p1.img");
    sparse_file(&ext4, 36 * MIB);
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            tree.to_str().unwrap(),
            ext4.to_str().unwrap(),
        ],
    );
    write_into(&disk, 2048 * 512, &ext4);
    let ntfs = env.path("lab-p2.img");
    sparse_file(&ntfs, 24 * MIB);
    run("mkntfs", &["-Q", "-F", "-L", "LAB", ntfs.to_str().unwrap()]);
    write_into(&disk, (2048 + 36 * 2048) * 512, &ntfs);
    std::fs::remove_file(ext4).unwrap();
    std::fs::remove_file(ntfs).unwrap();
    disk
}

/// `drover-agent --server URL --disk DISK ARGS...`
pub fn agent(server: &str, disk: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(agent_bin());
    c.args(["--server", server, "--disk"]).arg(disk).args(args);
    c
}

/// `GET /api/v1/deployments/ID` with an admin token.
pub fn deployment(addr: &str, token: &str, id: &str) -> serde_json::Value {
    let (code, body) = http(
        addr,
        "GET",
        &format!("/api/v1/deployments/{id}"),
        Some(token),
        None,
    );
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Fetches a deployment view with `fetch` until `f` holds; panics with the last view after
/// `limit`.
pub fn wait_deployment(
    limit: Duration,
    what: &str,
    mut fetch: impl FnMut() -> serde_json::Value,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let d = fetch();
        if f(&d) {
            eprintln!("{what}: after {:.1} s", t0.elapsed().as_secs_f64());
            return d;
        }
        assert!(
            t0.elapsed() < limit,
            "{what} not within {limit:?}:\n{}\n{d:#}",
            unfinished(&d)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// One line per task of a deployment view that is not done: its machine, state and reason
/// (what a failed wait shows first, before the whole view).
pub fn unfinished(d: &serde_json::Value) -> String {
    let lines: Vec<String> = d["tasks"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter(|t| t["state"] != "done")
                .map(|t| {
                    format!(
                        "  {} {}: {} ({}%)",
                        t["mac"].as_str().unwrap_or("?"),
                        t["state"].as_str().unwrap_or("?"),
                        t["reason"].as_str().unwrap_or("-"),
                        t["percent"]
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!("tasks not done: {}\n{}", lines.len(), lines.join("\n"))
}

/// The task of machine `mac` in a deployment view.
pub fn task_of<'a>(d: &'a serde_json::Value, mac: &str) -> &'a serde_json::Value {
    d["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["mac"] == mac)
        .unwrap_or_else(|| panic!("no task for {mac} in {d:#}"))
}

/// Runs `cmd` to its end, killing it (and panicking) after `limit`; returns its output.
pub fn output_within(mut cmd: Command, limit: Duration) -> std::process::Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let err = e.join().unwrap();
            panic!(
                "{cmd:?} did not finish within {limit:?}:\n{}",
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::process::Output {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}
