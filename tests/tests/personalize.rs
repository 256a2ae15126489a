//! Personalization end to end, on one host: a golden Linux root (ext4 on GPT, with a hostname,
//! a machine-id, SSH host keys, udev and cloud-init leftovers) captured, then deployed to two
//! machines whose hostnames come from a template and variables set per group and per machine
//! (the machine's winning). Read back from each disk: its own hostname and `127.0.1.1` line, a
//! machine-id and SSH host keys of its own (the golden one's and each other's differ), the
//! leftovers gone, a placed file filled in for each machine, the first-boot script and its
//! unit in place, every other file as it was. A template naming a variable a machine lacks is
//! refused when the deployment is made, naming both; `--personalize off` writes the image
//! untouched.

use std::path::Path;
use std::time::Duration;

use drover_tests::deploy::{agent, deployment, output_within, task_of};
use drover_tests::server::Server;
use drover_tests::{extract, require, run, sparse_file, write_into, Env};

const LIMIT: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;
/// The root partition: sectors 2048.. of a 48 MiB disk, 40 MiB long.
const ROOT_AT: u64 = 2048 * 512;
const ROOT_LEN: u64 = 40 * MIB;

fn golden_tree(dir: &Path) {
    for d in [
        "etc/ssh",
        "usr/lib",
        "var/lib/dbus",
        "etc/udev/rules.d",
        "var/lib/cloud/instances/i-0",
        "home/student",
        "usr/lib/systemd",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let w = |p: &str, s: &str| std::fs::write(dir.join(p), s).unwrap();
    w(
        "usr/lib/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nID=debian\n",
    );
    std::os::unix::fs::symlink("../usr/lib/os-release", dir.join("etc/os-release")).unwrap();
    w("etc/hostname", "golden\n");
    w(
        "etc/hosts",
        "127.0.0.1\tlocalhost\n127.0.1.1\tgolden\n\n::1\tlocalhost ip6-localhost\n",
    );
    w("etc/machine-id", "00112233445566778899aabbccddeeff\n");
    w(
        "var/lib/dbus/machine-id",
        "00112233445566778899aabbccddeeff\n",
    );
    w("etc/ssh/ssh_host_ed25519_key", "golden private key\n");
    w(
        "etc/ssh/ssh_host_ed25519_key.pub",
        "ssh-ed25519 AAAA golden\n",
    );
    w(
        "etc/udev/rules.d/70-persistent-net.rules",
        "# golden NIC names\n",
    );
    w("var/lib/cloud/instances/i-0/obj.pkl", "state");
    std::os::unix::fs::symlink(
        "/var/lib/cloud/instances/i-0",
        dir.join("var/lib/cloud/instance"),
    )
    .unwrap();
    w("home/student/notes.txt", "the same on every machine\n");
    w("usr/lib/systemd/systemd", "");
}

/// A 48 MiB GPT disk with the golden root on partition 1.
fn golden_disk(env: &Env) -> std::path::PathBuf {
    let disk = env.path("golden.img");
    sparse_file(&disk, 48 * MIB);
    run(
        "sgdisk",
        &["-o", "-n1:2048:+40M", "-t1:8300", disk.to_str().unwrap()],
    );
    let tree = env.path("golden-tree");
    golden_tree(&tree);
    let root = env.path("golden-root.img");
    sparse_file(&root, ROOT_LEN);
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            tree.to_str().unwrap(),
            root.to_str().unwrap(),
        ],
    );
    write_into(&disk, ROOT_AT, &root);
    std::fs::remove_file(root).unwrap();
    disk
}

/// A file of a disk's root filesystem (debugfs: no mount needed), or `None` when it is not
/// there.
fn read(env: &Env, disk: &Path, path: &str) -> Option<String> {
    let part = env.path("read-part.img");
    extract(disk, ROOT_AT, ROOT_LEN, &part);
    let out = std::process::Command::new("debugfs")
        .args(["-R", &format!("cat {path}"), part.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    (!err.contains("File not found")).then_some(text)
}

#[test]
fn each_machine_gets_its_own_hostname_machine_id_and_host_keys() {
    if !require(
        "each_machine_gets_its_own_hostname_machine_id_and_host_keys",
        &["sgdisk", "mkfs.ext4", "debugfs", "root"],
    ) {
        return;
    }
    let env = Env::new();
    let golden = golden_disk(&env);
    env.capture(&golden, "debian");
    let srv = Server::start(&env.data(), &[]);
    let t = env.ok(&["token", "create", "admin"]).trim().to_string();
    let (m1, m2, m3) = (
        "02:00:00:00:0b:01",
        "02:00:00:00:0b:02",
        "02:00:00:00:0b:03",
    );
    srv.ok(
        &env,
        &t,
        &["machine", "add", m1, "--name", "PC 01", "--group", "b12"],
    );
    srv.ok(
        &env,
        &t,
        &["machine", "add", m2, "--name", "pc-02", "--group", "b12"],
    );
    srv.ok(&env, &t, &["machine", "add", m3, "--name", "pc-03"]);
    srv.ok(
        &env,
        &t,
        &[
            "group", "set", "b12", "--var", "room=b12", "--var", "os=deb",
        ],
    );
    // The machine's own value wins over its group's.
    srv.ok(&env, &t, &["machine", "set", m2, "--var", "room=b14"]);
    let g = srv.ok(&env, &t, &["group", "list"]);
    assert!(g.contains("room=b12"), "{g}");
    // Built-in names cannot be set by hand; an unset variable is refused, named.
    let e = srv.fails(&env, &t, &["machine", "set", m1, "--var", "name=x"]);
    assert!(e.contains("set by drover"), "{e}");
    let e = srv.fails(
        &env,
        &t,
        &[
            "deploy",
            "debian",
            "--to",
            "b12",
            "--transport",
            "unicast",
            "--hostname",
            "{seat}-{name}",
        ],
    );
    assert!(
        e.contains("{seat}") && e.contains("PC 01") && e.contains(m1) && e.contains("400"),
        "{e}"
    );
    let e = srv.fails(
        &env,
        &t,
        &[
            "deploy",
            "debian",
            "--to",
            "b12",
            "--transport",
            "unicast",
            "--hostname",
            "{room",
        ],
    );
    assert!(e.contains("without its '}'"), "{e}");
    let motd = env.path("motd");
    std::fs::write(&motd, "Welcome to {name} in room {room} ({os})\n").unwrap();
    let bad = env.path("bad-motd");
    std::fs::write(&bad, "{desk}\n").unwrap();
    let file_arg = format!("/etc/motd={}", bad.display());
    let e = srv.fails(
        &env,
        &t,
        &[
            "deploy",
            "debian",
            "--to",
            "b12",
            "--transport",
            "unicast",
            "--file",
            &file_arg,
        ],
    );
    assert!(e.contains("file /etc/motd") && e.contains("{desk}"), "{e}");
    let (_, list) = srv.http("GET", "/api/v1/deployments", Some(&t), None);
    assert_eq!(
        list.trim(),
        "[]",
        "a refused deployment left something behind"
    );
    let first_boot = env.path("first-boot.sh");
    std::fs::write(
        &first_boot,
        "#!/bin/sh\necho first boot of {name} > /var/tmp/first-boot.log\n",
    )
    .unwrap();
    let file_arg = format!("/etc/motd={}", motd.display());
    let first_boot_arg = first_boot.display().to_string();

    let out = srv.ok(
        &env,
        &t,
        &[
            "deploy",
            "debian",
            "--to",
            "b12",
            "--transport",
            "unicast",
            "--hostname",
            "{room}-{name}",
            "--file",
            &file_arg,
            "--first-boot",
            &first_boot_arg,
        ],
    );
    let id = out
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_string();
    let mut disks = Vec::new();
    for mac in [m1, m2] {
        let disk = env.path(&format!("disk-{}.img", &mac[15..]));
        let a = output_within(
            agent(
                &srv.url,
                &disk,
                &["--mac", mac, "--iface", "lo", "--read-back"],
            ),
            LIMIT,
        );
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&a.stdout),
            String::from_utf8_lossy(&a.stderr)
        );
        assert!(a.status.success(), "{log}");
        assert!(log.contains("personalized: hostname"), "{log}");
        disks.push(disk);
    }
    let d = deployment(&srv.addr, &t, &id);
    assert_eq!(d["state"], "done", "{d:#}");
    assert_eq!(d["personalize"]["hostname"], "{room}-{name}");
    let said = task_of(&d, m1)["personalized"].to_string();
    assert!(
        said.contains("hostname b12-pc-01 (partition 1: Debian GNU/Linux 12 (bookworm))")
            && said.contains("new machine-id")
            && said.contains("new SSH host keys: ed25519"),
        "{said}"
    );
    let shown = srv.ok(&env, &t, &["deployment", "show", &id]);
    assert!(shown.contains("b12-pc-01"), "deployment show: {shown}");

    let mut ids = vec!["00112233445566778899aabbccddeeff".to_string()];
    let mut keys = vec!["ssh-ed25519 AAAA golden".to_string()];
    for (disk, host) in disks.iter().zip(["b12-pc-01", "b14-pc-02"]) {
        assert_eq!(
            read(&env, disk, "/etc/hostname").unwrap(),
            format!("{host}\n")
        );
        let hosts = read(&env, disk, "/etc/hosts").unwrap();
        assert!(hosts.contains(&format!("127.0.1.1\t{host}\n")), "{hosts}");
        assert!(hosts.contains("::1\tlocalhost ip6-localhost"), "{hosts}");
        let id = read(&env, disk, "/etc/machine-id")
            .unwrap()
            .trim()
            .to_string();
        assert_eq!(id.len(), 32);
        assert_eq!(
            read(&env, disk, "/var/lib/dbus/machine-id").unwrap().trim(),
            id
        );
        let private = read(&env, disk, "/etc/ssh/ssh_host_ed25519_key").unwrap();
        assert!(
            private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"),
            "{private}"
        );
        let public = read(&env, disk, "/etc/ssh/ssh_host_ed25519_key.pub").unwrap();
        assert!(
            public.starts_with("ssh-ed25519 ") && public.trim().ends_with(&format!("root@{host}")),
            "{public}"
        );
        assert!(!ids.contains(&id), "machine-id {id} repeats");
        assert!(
            !keys.contains(&public.trim().to_string()),
            "host key repeats"
        );
        ids.push(id);
        keys.push(public.trim().to_string());
        assert!(read(&env, disk, "/etc/udev/rules.d/70-persistent-net.rules").is_none());
        assert!(read(&env, disk, "/var/lib/cloud/instances/i-0/obj.pkl").is_none());
        assert_eq!(
            read(&env, disk, "/home/student/notes.txt").unwrap(),
            "the same on every machine\n"
        );
        let (name, room) = if host == "b12-pc-01" {
            ("PC 01", "b12")
        } else {
            ("pc-02", "b14")
        };
        assert_eq!(
            read(&env, disk, "/etc/motd").unwrap(),
            format!("Welcome to {name} in room {room} (deb)\n")
        );
        assert_eq!(
            read(&env, disk, "/etc/drover/first-boot.sh").unwrap(),
            format!("#!/bin/sh\necho first boot of {name} > /var/tmp/first-boot.log\n")
        );
        assert!(
            read(&env, disk, "/etc/systemd/system/drover-first-boot.service")
                .unwrap()
                .contains("ExecStart=")
        );
        // The filesystem is clean after the agent's changes.
        let part = env.path("check-part.img");
        extract(disk, ROOT_AT, ROOT_LEN, &part);
        run("e2fsck", &["-fn", part.to_str().unwrap()]);
    }

    // Personalization off: the disk is the image, byte for byte.
    let out = srv.ok(
        &env,
        &t,
        &[
            "deploy",
            "debian",
            "--to",
            m3,
            "--transport",
            "unicast",
            "--personalize",
            "off",
        ],
    );
    assert!(out.contains("deployment"), "{out}");
    let disk3 = env.path("disk-03.img");
    let a = output_within(
        agent(&srv.url, &disk3, &["--mac", m3, "--iface", "lo"]),
        LIMIT,
    );
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let reference = env.path("reference.img");
    sparse_file(&reference, 48 * MIB);
    env.restore("debian", &reference);
    run(
        "cmp",
        &[disk3.to_str().unwrap(), reference.to_str().unwrap()],
    );
    assert_eq!(read(&env, &disk3, "/etc/hostname").unwrap(), "golden\n");
}
