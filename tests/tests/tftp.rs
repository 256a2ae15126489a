//! drover's TFTP against real clients on loopback: curl (`tftp://`, with blksize), tftp-hpa
//! and atftp (with blksize and windowsize) fetch files byte for byte, 20 at once; names
//! outside the boot directory (`..`, absolute names taken inside it, a symlink leading out), missing files and
//! write requests are refused, and the server goes on serving.

use std::path::Path;
use std::process::{Command, Output};

use drover_tests::server::{free_port, Server};
use drover_tests::{random_file, require, Env};

fn fetch(prog: &str, args: &[&str]) -> Output {
    Command::new(prog).args(args).output().expect(prog)
}

fn same(a: &Path, b: &Path) -> bool {
    std::fs::read(a).ok() == std::fs::read(b).ok()
}

#[test]
fn real_clients_fetch_files_and_everything_outside_is_refused() {
    if !require("tftp_clients", &["curl", "tftp", "atftp"]) {
        return;
    }
    let env = Env::new();
    let boot = env.path("boot");
    std::fs::create_dir_all(boot.join("efi")).unwrap();
    let ipxe = boot.join("undionly.kpxe");
    random_file(&ipxe, 300_000, 3);
    random_file(&boot.join("efi/snponly.efi"), 1468 * 40, 4); // an exact number of blocks
    std::fs::write(boot.join("empty"), b"").unwrap();
    let secret = env.path("secret");
    std::fs::write(&secret, b"not for TFTP").unwrap();
    std::os::unix::fs::symlink(&secret, boot.join("escape")).unwrap();
    std::os::unix::fs::symlink("undionly.kpxe", boot.join("alias.kpxe")).unwrap();
    let port = free_port().to_string();
    let bind = format!("127.0.0.1:{port}");
    let _srv = Server::start(
        &env.data(),
        &["--tftp", &bind, "--boot-dir", boot.to_str().unwrap()],
    );
    let url = |f: &str| format!("tftp://127.0.0.1:{port}/{f}");
    let out = |n: &str| env.path(n);

    // curl with blksize.
    for (file, blk) in [("undionly.kpxe", "1468"), ("efi/snponly.efi", "1468")] {
        let o = out("curl.out");
        let r = fetch(
            "curl",
            &[
                "-sS",
                "--tftp-blksize",
                blk,
                "-o",
                o.to_str().unwrap(),
                &url(file),
            ],
        );
        assert!(
            r.status.success(),
            "curl {file}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(same(&o, &boot.join(file)), "curl {file}: wrong bytes");
    }
    // An empty file (curl 7.88 fails on those against any server: tftp-hpa instead).
    let o = out("empty.out");
    let r = fetch(
        "tftp",
        &[
            "-m",
            "binary",
            "127.0.0.1",
            &port,
            "-c",
            "get",
            "empty",
            o.to_str().unwrap(),
        ],
    );
    assert!(
        r.status.success() && std::fs::read(&o).unwrap().is_empty(),
        "{r:?}"
    );
    // A symlink inside the directory is followed.
    let o = out("alias.out");
    assert!(fetch(
        "curl",
        &["-sS", "-o", o.to_str().unwrap(), &url("alias.kpxe")]
    )
    .status
    .success());
    assert!(same(&o, &ipxe));
    // tftp-hpa (plain 512-byte blocks).
    let o = out("hpa.out");
    let r = fetch(
        "tftp",
        &[
            "-m",
            "binary",
            "127.0.0.1",
            &port,
            "-c",
            "get",
            "undionly.kpxe",
            o.to_str().unwrap(),
        ],
    );
    assert!(same(&o, &ipxe), "tftp-hpa: {:?}", r);
    // atftp with blksize and windowsize.
    let o = out("atftp.out");
    let r = fetch(
        "atftp",
        &[
            "--get",
            "-r",
            "undionly.kpxe",
            "-l",
            o.to_str().unwrap(),
            "--option",
            "blksize 1428",
            "--option",
            "windowsize 8",
            "--option",
            "tsize 0",
            "127.0.0.1",
            &port,
        ],
    );
    assert!(
        r.status.success(),
        "atftp: {}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(same(&o, &ipxe), "atftp: wrong bytes");

    // 20 clients at once.
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let (o, u) = (out(&format!("many{i}.out")), url("undionly.kpxe"));
            std::thread::spawn(move || {
                fetch(
                    "curl",
                    &[
                        "-sS",
                        "--tftp-blksize",
                        "1468",
                        "-o",
                        o.to_str().unwrap(),
                        &u,
                    ],
                );
                o
            })
        })
        .collect();
    for h in handles {
        let o = h.join().unwrap();
        assert!(same(&o, &ipxe), "{} differs", o.display());
    }

    // Refusals, each with its reason (atftp prints the server's error message).
    let o = out("refused.out");
    for (file, why) in [
        ("../secret", "only names inside the boot directory"),
        ("a/../../secret", "only names inside the boot directory"),
        ("escape", "leads out of the boot directory"),
        ("nosuch", "no such file"),
        ("efi", "no such file"),
        // An absolute name is looked up inside the boot directory, as tftpd-hpa --secure.
        (secret.to_str().unwrap(), "no such file"),
    ] {
        let _ = std::fs::remove_file(&o);
        let r = fetch(
            "atftp",
            &[
                "--get",
                "-r",
                file,
                "-l",
                o.to_str().unwrap(),
                "127.0.0.1",
                &port,
            ],
        );
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success() && err.contains(why), "{file}: {err}");
        assert!(
            !std::fs::read(&o).is_ok_and(|b| b == b"not for TFTP"),
            "{file} leaked"
        );
    }
    // A write request.
    let up = out("up.txt");
    std::fs::write(&up, b"upload").unwrap();
    let r = fetch(
        "atftp",
        &[
            "--put",
            "-r",
            "up.txt",
            "-l",
            up.to_str().unwrap(),
            "127.0.0.1",
            &port,
        ],
    );
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("takes none"), "{err}");
    assert!(!boot.join("up.txt").exists());
    // GRUB's scripts are made by the server, for the machine asking (here the server's own
    // host): the first one sources the machine's own, which for an unknown machine boots
    // its local disk; a name that is no MAC is refused. GRUB asks with a leading '/'.
    let grub = |name: &str| {
        let o = out("grub.out");
        let _ = std::fs::remove_file(&o);
        let r = fetch("curl", &["-sS", "-o", o.to_str().unwrap(), &url(name)]);
        (r, std::fs::read_to_string(&o).unwrap_or_default())
    };
    let (r, main) = grub("/grub/grub.cfg");
    assert!(r.status.success(), "{r:?}");
    assert!(
        main.contains("source \"$prefix/mac/${net_default_mac}.cfg\""),
        "{main}"
    );
    let (r, own) = grub("grub/mac/52:54:00:00:00:99.cfg");
    assert!(r.status.success(), "{r:?}");
    assert!(
        own.contains("'drover: unknown machine: booting the local disk'"),
        "{own}"
    );
    assert!(own.contains("chainloader"), "{own}");
    let (r, _) = grub("grub/mac/nonsense.cfg");
    assert!(!r.status.success(), "{r:?}");
    // Still serving.
    let o = out("after.out");
    assert!(fetch(
        "curl",
        &["-sS", "-o", o.to_str().unwrap(), &url("undionly.kpxe")]
    )
    .status
    .success());
    assert!(same(&o, &ipxe));
}
