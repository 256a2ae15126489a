//! iPXE's HTTP side: `GET /boot/{mac}.ipxe` boots the agent for a machine with a pending
//! task (kernel and initramfs from the boot directory, a working task token on the command
//! line) and the local disk for every other machine — unknown, idle, or whose task is over —
//! and `GET /boot/files/...` serves the boot directory and nothing outside it.

use drover_tests::server::Server;
use drover_tests::{random_file, Env};

const MAC: &str = "52:54:00:00:08:01";

fn get(srv: &Server, path: &str, token: Option<&str>) -> (u16, String) {
    srv.http("GET", path, token, None)
}

#[test]
fn boot_scripts_follow_the_machines_task_and_files_stay_inside_the_boot_directory() {
    let env = Env::new();
    let src = env.path("src.img");
    random_file(&src, 1 << 20, 11);
    env.capture(&src, "lab");
    let boot = env.path("boot");
    std::fs::create_dir_all(&boot).unwrap();
    random_file(&boot.join("vmlinuz"), 300_000, 12);
    std::fs::write(env.path("secret"), b"SECRET-CONTENT-42").unwrap();
    std::os::unix::fs::symlink(env.path("secret"), boot.join("escape")).unwrap();
    let srv = Server::start(
        &env.data(),
        &[
            "--boot-dir",
            boot.to_str().unwrap(),
            "--public-url",
            "http://10.0.0.1:8080",
        ],
    );
    let t = env.ok(&["token", "create", "admin"]).trim().to_string();
    let script = |mac: &str| {
        let (status, body) = get(&srv, &format!("/boot/{mac}.ipxe"), None);
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("#!ipxe\n"), "{body}");
        body
    };
    let local = |body: &str, why: &str| {
        assert!(body.contains(why), "{body}");
        assert!(body.contains("sanboot --no-describe --drive 0x80") && body.contains("exit"));
        assert!(!body.contains("kernel "), "{body}");
    };
    // Unknown and idle machines boot their disk; a malformed name is a 400.
    local(&script(MAC), "unknown machine");
    srv.ok(&env, &t, &["machine", "add", MAC]);
    local(&script(MAC), "no task for this machine");
    assert_eq!(get(&srv, "/boot/nonsense.ipxe", None).0, 400);
    assert_eq!(get(&srv, "/boot/52:54:00:00:08:01", None).0, 400);

    // A task, but no boot environment yet: says so and boots the disk.
    srv.ok(
        &env,
        &t,
        &["deploy", "lab", "--to", MAC, "--transport", "unicast"],
    );
    local(
        &script(MAC),
        "initrd.img missing; run deploy/build-boot-env",
    );
    // With it: the agent's kernel, with a token that opens the task.
    random_file(&boot.join("initrd.img"), 500_000, 13);
    let body = script(MAC);
    assert!(
        body.contains("kernel http://10.0.0.1:8080/boot/files/vmlinuz "),
        "{body}"
    );
    assert!(
        body.contains("initrd http://10.0.0.1:8080/boot/files/initrd.img"),
        "{body}"
    );
    assert!(
        body.contains("drover.server=http://10.0.0.1:8080 "),
        "{body}"
    );
    assert!(body.contains(&format!("drover.mac={MAC} ")), "{body}");
    assert!(body.contains("drover.then=reboot "), "{body}");
    let token = body
        .split_whitespace()
        .find_map(|w| w.strip_prefix("drover.token="))
        .expect("a token on the command line");
    let (status, task) = get(&srv, "/api/v1/agent/task", Some(token));
    assert_eq!(status, 200, "{task}");
    assert!(task.contains("lab@1"), "{task}");
    // The task ends: the next boot is the local disk again, never a reimaging loop.
    let (status, r) = srv.http(
        "POST",
        "/api/v1/agent/result",
        Some(token),
        Some(r#"{"ok": false, "reason": "test"}"#),
    );
    assert_eq!(status, 200, "{r}");
    local(&script(MAC), "no task for this machine");

    // Files: the boot directory's, byte for byte; nothing outside it.
    let (status, _) = get(&srv, "/boot/files/vmlinuz", None);
    assert_eq!(status, 200);
    let got = drover_tests::server::http_bytes(&srv.addr, "/boot/files/vmlinuz");
    assert_eq!(got, std::fs::read(boot.join("vmlinuz")).unwrap());
    for (path, code) in [
        ("/boot/files/escape", 403),
        ("/boot/files/nosuch", 404),
        ("/boot/files/..%2Fsecret", 403),
        // An absolute name is looked for inside the boot directory.
        ("/boot/files/%2Fetc%2Fpasswd", 404),
    ] {
        let (status, body) = get(&srv, path, None);
        assert_eq!(status, code, "{path}: {body}");
        assert!(!body.contains("SECRET-CONTENT-42"), "{path} leaked");
    }
}

/// `--register-unknown`: an unknown machine boots the agent in register mode (no token), a
/// known one still boots its disk; the admin's `boot_args` come before drover's arguments.
#[test]
fn unknown_machines_boot_the_agent_to_register_when_the_setting_says_so() {
    let env = Env::new();
    let boot = env.path("boot");
    std::fs::create_dir_all(&boot).unwrap();
    for f in ["vmlinuz", "initrd.img"] {
        random_file(&boot.join(f), 1000, 3);
    }
    let config = env.path("drover.toml");
    std::fs::write(
        &config,
        "register_unknown = true\nboot_args = \"console=tty0 nomodeset\"\n",
    )
    .unwrap();
    let srv = Server::start(
        &env.data(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--boot-dir",
            boot.to_str().unwrap(),
            "--public-url",
            "http://10.0.0.1:8080",
        ],
    );
    let (status, body) = get(&srv, &format!("/boot/{MAC}.ipxe"), None);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(
            "initrd=initrd.img console=tty0 nomodeset drover.server=http://10.0.0.1:8080 \
             drover.mac=52:54:00:00:08:01 drover.mode=register drover.then=reboot"
        ),
        "{body}"
    );
    assert!(!body.contains("drover.token"), "{body}");
    // The agent's hello registers it; from then on it is known and boots its disk. It says
    // which device's firmware the boot environment lacked: the audit log keeps it.
    let (status, hello) = srv.http(
        "POST",
        "/api/v1/agent/hello",
        None,
        Some(&format!(
            r#"{{"mac": "{MAC}", "disks": [{{"path": "/dev/sda", "size": 1000, "serial": "S1", "model": "M", "removable": false}}],
                "missing_firmware": ["r8169 0000:03:00.0: rtl_nic/rtl8168h-2.fw"]}}"#
        )),
    );
    assert_eq!(status, 200, "{hello}");
    let (_, body) = get(&srv, &format!("/boot/{MAC}.ipxe"), None);
    assert!(body.contains("no task for this machine"), "{body}");
    let t = env.ok(&["token", "create", "admin"]).trim().to_string();
    let m = srv.json(&env, &t, &["machine", "list"]);
    assert_eq!(m[0]["registered"], "hello", "{m}");
    assert_eq!(m[0]["disk_serial"], "S1", "{m}");
    let (_, audit) = srv.http("GET", "/api/v1/audit", Some(&t), None);
    assert!(
        audit.contains("agent.firmware_missing")
            && audit.contains("r8169 0000:03:00.0: rtl_nic/rtl8168h-2.fw"),
        "{audit}"
    );
}
