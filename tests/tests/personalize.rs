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
use drover_tests::{extract, random_file, require, run, sparse_file, write_into, Env};

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
        let log = restore_as(&srv, mac, &disk);
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

/// Runs the agent for `mac` onto `disk` (unicast, read back); returns its log.
fn restore_as(srv: &Server, mac: &str, disk: &Path) -> String {
    let a = output_within(
        agent(
            &srv.url,
            disk,
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
    log
}

/// An NTFS filesystem (a file) mounted with ntfs-3g, unmounted on drop.
struct Ntfs(std::path::PathBuf);

impl Ntfs {
    fn mount(fs: &Path, dir: &Path, read_only: bool) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut args = vec![];
        if read_only {
            args.extend(["-o", "ro"]);
        }
        args.extend([fs.to_str().unwrap(), dir.to_str().unwrap()]);
        run("ntfs-3g", &args);
        Self(dir.to_path_buf())
    }
}

impl Drop for Ntfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// The NTFS partition of the Windows-shaped disks: sectors 2048.. of a 64 MiB disk.
const NTFS_AT: u64 = 2048 * 512;
const NTFS_LEN: u64 = 56 * MIB;

/// The answer file sysprep leaves in `Windows\Panther`.
const UNATTEND: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<unattend xmlns="urn:schemas-microsoft-com:unattend">
    <settings pass="specialize">
        <component name="Microsoft-Windows-Shell-Setup" processorArchitecture="amd64" publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS" xmlns:wcm="http://schemas.microsoft.com/WMIConfig/2002/State">
            <ComputerName>GOLDEN-PC</ComputerName>
            <RegisteredOrganization>Golden</RegisteredOrganization>
        </component>
    </settings>
    <settings pass="oobeSystem">
        <component name="Microsoft-Windows-Shell-Setup" processorArchitecture="amd64" publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS">
            <OOBE><HideEULAPage>true</HideEULAPage><SkipMachineOOBE>true</SkipMachineOOBE></OOBE>
        </component>
    </settings>
</unattend>
"#;

/// A GPT disk whose NTFS partition holds a Windows-shaped tree (a `SYSTEM` hive, programs,
/// user files) and, when `generalized`, a sysprep answer file. Returns the disk and the tree
/// it was made from.
fn windows_disk(
    env: &Env,
    tag: &str,
    generalized: bool,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let tree = env.path(&format!("{tag}-tree"));
    for d in [
        "Windows/System32/config",
        "Windows/System32/Sysprep",
        "Windows/Panther",
        "Users/Public/Documents",
    ] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    random_file(&tree.join("Windows/System32/config/SYSTEM"), 3 * MIB, 71);
    random_file(&tree.join("Windows/System32/notepad.exe"), 2 * MIB + 77, 72);
    std::fs::write(
        tree.join("Users/Public/Documents/readme.txt"),
        "the same on every machine\r\n",
    )
    .unwrap();
    if generalized {
        std::fs::write(tree.join("Windows/Panther/unattend.xml"), UNATTEND).unwrap();
    }
    let fs = env.path(&format!("{tag}-ntfs.img"));
    sparse_file(&fs, NTFS_LEN);
    run(
        "mkntfs",
        &["-F", "-Q", "-q", "-L", "Windows", fs.to_str().unwrap()],
    );
    {
        let _m = Ntfs::mount(&fs, &env.path(&format!("{tag}-mnt")), false);
        run(
            "cp",
            &[
                "-a",
                &format!("{}/.", tree.display()),
                env.path(&format!("{tag}-mnt")).to_str().unwrap(),
            ],
        );
    }
    let disk = env.path(&format!("{tag}.img"));
    sparse_file(&disk, 64 * MIB);
    run(
        "sgdisk",
        &["-o", "-n1:2048:+56M", "-t1:0700", disk.to_str().unwrap()],
    );
    write_into(&disk, NTFS_AT, &fs);
    (disk, tree)
}

/// Every file under `dir`, relative, with its bytes.
fn files_under(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                todo.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A Windows-shaped image without Windows: the generalized one gets the machine's name (and
/// a variable's value) in its answer file, still valid XML, and a `SetupComplete.cmd`; every
/// other file is byte-identical. One not generalized is said so and left byte for byte.
#[test]
fn a_generalized_windows_gets_its_computer_name_in_its_answer_file() {
    if !require(
        "a_generalized_windows_gets_its_computer_name_in_its_answer_file",
        &["sgdisk", "mkntfs", "ntfs-3g", "python3", "root"],
    ) {
        return;
    }
    let env = Env::new();
    let (sysprepped, tree) = windows_disk(&env, "win", true);
    let (plain, _) = windows_disk(&env, "plain", false);
    env.capture(&sysprepped, "win11");
    env.capture(&plain, "win11-plain");
    let srv = Server::start(&env.data(), &[]);
    let t = env.ok(&["token", "create", "admin"]).trim().to_string();
    let (w1, w2, w3) = (
        "02:00:00:00:0c:01",
        "02:00:00:00:0c:02",
        "02:00:00:00:0c:03",
    );
    srv.ok(
        &env,
        &t,
        &[
            "machine",
            "add",
            w1,
            "--name",
            "lab-pc-07",
            "--group",
            "b12",
        ],
    );
    srv.ok(&env, &t, &["machine", "add", w2, "--name", "lab-pc-08"]);
    srv.ok(
        &env,
        &t,
        &[
            "group",
            "set",
            "b12",
            "--var",
            "unattend:Microsoft-Windows-Shell-Setup/RegisteredOrganization=Lab B12",
        ],
    );
    let script = env.path("setup-complete.cmd");
    std::fs::write(&script, "@echo off\nrem first boot of {name}\n").unwrap();
    let out = srv.ok(
        &env,
        &t,
        &[
            "--json",
            "deploy",
            "win11",
            "--to",
            w1,
            "--transport",
            "unicast",
            "--first-boot",
            script.to_str().unwrap(),
        ],
    );
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let disk = env.path("w1.img");
    let log = restore_as(&srv, w1, &disk);
    assert!(log.contains("ComputerName lab-pc-07"), "{log}");
    let d = deployment(&srv.addr, &t, &id);
    assert_eq!(d["state"], "done", "{d:#}");
    let said = task_of(&d, w1)["personalized"].to_string();
    assert!(
        said.contains("Windows\\\\Panther\\\\unattend.xml: ComputerName lab-pc-07")
            && said.contains("SetupComplete.cmd")
            && said.contains("partition 1: Windows"),
        "{said}"
    );

    let part = env.path("w1-part.img");
    extract(&disk, NTFS_AT, NTFS_LEN, &part);
    let after = {
        let _m = Ntfs::mount(&part, &env.path("w1-mnt"), true);
        files_under(&env.path("w1-mnt"))
    };
    let mut before = files_under(&tree);
    let answer = String::from_utf8(after["Windows/Panther/unattend.xml"].clone()).unwrap();
    assert_eq!(
        answer,
        UNATTEND
            .replace(">GOLDEN-PC<", ">lab-pc-07<")
            .replace(">Golden<", ">Lab B12<"),
        "only the computer name and the variable's value change"
    );
    let xml = env.path("answer.xml");
    std::fs::write(&xml, &answer).unwrap();
    run(
        "python3",
        &[
            "-c",
            "import sys, xml.dom.minidom; xml.dom.minidom.parse(sys.argv[1])",
            xml.to_str().unwrap(),
        ],
    );
    assert_eq!(
        after["Windows/Setup/Scripts/SetupComplete.cmd"],
        b"@echo off\r\nrem first boot of lab-pc-07\r\n"
    );
    // Every other file, byte for byte; nothing else added.
    before.remove("Windows/Panther/unattend.xml");
    let mut rest = after.clone();
    rest.remove("Windows/Panther/unattend.xml");
    rest.remove("Windows/Setup/Scripts/SetupComplete.cmd");
    assert!(
        rest == before,
        "other files changed: {:?}",
        rest.keys().collect::<Vec<_>>()
    );

    // Not generalized: said, and the disk is the image byte for byte.
    srv.ok(
        &env,
        &t,
        &[
            "deploy",
            "win11-plain",
            "--to",
            w2,
            "--transport",
            "unicast",
        ],
    );
    let disk2 = env.path("w2.img");
    let log = restore_as(&srv, w2, &disk2);
    assert!(log.contains("Windows not generalized"), "{log}");
    let reference = env.path("plain-reference.img");
    sparse_file(&reference, 64 * MIB);
    env.restore("win11-plain", &reference);
    run(
        "cmp",
        &[disk2.to_str().unwrap(), reference.to_str().unwrap()],
    );
    // An agent with no NTFS driver at all (no ntfs-3g on its PATH, and no ntfs3 in the
    // kernel here) says so and finishes: the disk is the image. Where the kernel has ntfs3,
    // it personalizes through it.
    srv.ok(&env, &t, &["machine", "add", w3]);
    srv.ok(
        &env,
        &t,
        &["deploy", "win11", "--to", w3, "--transport", "unicast"],
    );
    let disk3 = env.path("w3.img");
    let mut a = agent(&srv.url, &disk3, &["--mac", w3, "--iface", "lo"]);
    a.env("PATH", "/nonexistent");
    let a = output_within(a, LIMIT);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&a.stdout)
    );
    assert!(a.status.success(), "{log}");
    if log.contains("partition 1 (ntfs) not looked into: no NTFS driver") {
        let reference = env.path("win-reference.img");
        sparse_file(&reference, 64 * MIB);
        env.restore("win11", &reference);
        run(
            "cmp",
            &[disk3.to_str().unwrap(), reference.to_str().unwrap()],
        );
    } else {
        assert!(log.contains("ComputerName"), "{log}");
    }
}
