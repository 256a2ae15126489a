//! Image stores beyond a local directory, against real servers started here: SeaweedFS's S3
//! (`weed mini`, telemetry off), rclone's WebDAV server and OpenSSH's SFTP, each inside a
//! network namespace of the test's own (its loopback is private, so nothing can reach out and
//! fixed ports never collide). Every case captures a real ext4 into the store, restores it and
//! compares bytes; the S3 case also kills a capture half-way (no image is left, what was
//! stored still restores) and runs gc during a capture (it waits for the capture, which then
//! commits a whole image).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use drover_tests::lab::Lab;
use drover_tests::object_store::{start_weed, KEY_ID, SECRET};
use drover_tests::*;

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `drover ARGS` inside the lab's host, with the object stores' settings in its environment.
fn drover<A: AsRef<str>>(lab: &Lab, env: &Env, args: &[A]) -> Command {
    let mut c = lab.cmd(0, s(drover_bin()));
    c.arg("--data-dir")
        .arg(env.data())
        .args(args.iter().map(|a| a.as_ref()))
        .env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")
        .env("RUST_BACKTRACE", "0");
    c
}

fn ok<A: AsRef<str> + std::fmt::Debug>(lab: &Lab, env: &Env, args: &[A]) -> String {
    let out = drover(lab, env, args).output().expect("running drover");
    assert!(
        out.status.success(),
        "drover {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails<A: AsRef<str> + std::fmt::Debug>(lab: &Lab, env: &Env, args: &[A]) -> String {
    let out: Output = drover(lab, env, args).output().expect("running drover");
    assert!(!out.status.success(), "drover {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits until `drover image list --store URL` answers (the server is up).
fn wait_for_store(lab: &Lab, env: &Env, store: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = drover(lab, env, &["image", "list", "--store", store])
            .output()
            .expect("running drover");
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "store {store} never answered: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A 64 MiB ext4 holding 24 MiB of files.
fn source_disk(env: &Env) -> std::path::PathBuf {
    let img = env.path("disk.img");
    sparse_file(&img, 64 * MIB);
    let tree = env.path("tree");
    make_tree(&tree, 24 * MIB, 7);
    run("mkfs.ext4", &["-q", "-F", "-d", s(&tree), s(&img)]);
    img
}

/// Capture into `store`, restore onto a fresh file, compare; the image is listed.
fn round_trip(lab: &Lab, env: &Env, store: &str, disk: &Path) {
    ok(
        lab,
        env,
        &[
            "image",
            "capture",
            s(disk),
            "--name",
            "lab",
            "--store",
            store,
        ],
    );
    let listed = ok(lab, env, &["image", "list", "--store", store]);
    assert!(listed.contains("lab"), "{listed}");
    let out = env.path("restored.img");
    let _ = std::fs::remove_file(&out);
    sparse_file(&out, 64 * MIB);
    ok(
        lab,
        env,
        &["image", "restore", "lab", s(&out), "--store", store],
    );
    assert_eq!(
        std::fs::read(disk).unwrap(),
        std::fs::read(&out).unwrap(),
        "the restore from {store} differs from the source"
    );
    let v = ok(lab, env, &["image", "verify", "lab", "--store", store]);
    assert!(!v.to_lowercase().contains("bad"), "{v}");
    run("e2fsck", &["-fn", s(&out)]);
}

#[test]
fn s3_store_round_trip_interrupted_capture_and_gc_during_a_capture() {
    if !require(
        "s3_store",
        &["root", "ip", "weed", "mkfs.ext4", "e2fsck", "tc"],
    ) {
        return;
    }
    let env = Env::new();
    let mut lab = Lab::new("s3", 1);
    let weed_dir = start_weed(&mut lab, 0, &env, "127.0.0.1");
    let _ = &weed_dir;
    let store = "s3://images/site-a";
    wait_for_store(&lab, &env, store);

    let disk = source_disk(&env);
    round_trip(&lab, &env, store, &disk);

    // A wrong key is refused, naming the store; a bucket that is not there too.
    let mut c = drover(&lab, &env, &["image", "list", "--store", store]);
    let out = c.env("AWS_SECRET_ACCESS_KEY", "wrong").output().unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("s3://images/site-a") && e.contains("Denied"),
        "{e}"
    );

    let big = env.path("big.img");
    random_file(&big, 48 * MIB, 99);
    // Requests to the S3 port slowed to ~16 Mbit/s on the namespace's loopback (answers and
    // everything else at full speed): a capture of 48 MiB takes ~25 s.
    let ns = lab.host(0);
    let tc = |args: &str| {
        let mut v = vec!["netns", "exec", &ns, "tc"];
        v.extend(args.split(' '));
        run("ip", &v);
    };
    tc("qdisc add dev lo root handle 1: htb default 10 r2q 100000");
    tc("class add dev lo parent 1: classid 1:10 htb rate 10gbit");
    tc("class add dev lo parent 1: classid 1:20 htb rate 16mbit ceil 16mbit");
    tc("filter add dev lo parent 1: protocol ip u32 match ip dport 8333 0xffff flowid 1:20");
    // gc during a (slowed) capture waits for it: the capture commits a whole image.
    let mut capture = drover(
        &lab,
        &env,
        &[
            "image",
            "capture",
            s(&big),
            "--name",
            "big2",
            "--store",
            store,
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let mut gc = drover(&lab, &env, &["image", "gc", "--store", store])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(240);
    while first.is_none() {
        assert!(
            Instant::now() < deadline,
            "neither the capture nor gc ended"
        );
        if capture.try_wait().unwrap().is_some() {
            first = Some("capture");
        } else if gc.try_wait().unwrap().is_some() {
            first = Some("gc");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        first,
        Some("capture"),
        "gc ended while a capture was still uploading"
    );
    let cap = capture.wait_with_output().unwrap();
    assert!(cap.status.success(), "{cap:?}");
    let gc = gc.wait_with_output().unwrap();
    assert!(gc.status.success(), "{gc:?}");
    eprintln!(
        "gc during the capture: {}",
        String::from_utf8_lossy(&gc.stdout)
    );
    // A capture killed half-way leaves no image (its lock object goes stale; its chunks wait
    // for a later gc); what the store held still restores.
    let other = env.path("other.img");
    random_file(&other, 48 * MIB, 100);
    let mut killed = drover(
        &lab,
        &env,
        &[
            "image",
            "capture",
            s(&other),
            "--name",
            "big",
            "--store",
            store,
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        killed.try_wait().unwrap().is_none(),
        "the slowed capture ended within 6 s: nothing was interrupted"
    );
    killed.kill().unwrap();
    killed.wait().unwrap();

    tc("qdisc del dev lo root");
    let listed = ok(&lab, &env, &["image", "list", "--store", store]);
    assert!(
        !listed.lines().any(|l| l.starts_with("big ")),
        "the killed capture left an image: {listed}"
    );
    assert!(
        listed.contains("big2") && listed.contains("lab"),
        "{listed}"
    );
    // gc freed none of the committed images' chunks.
    let v = ok(&lab, &env, &["image", "verify", "big2", "--store", store]);
    assert!(!v.to_lowercase().contains("bad"), "{v}");
    let out = env.path("big2.img");
    sparse_file(&out, 48 * MIB);
    ok(
        &lab,
        &env,
        &["image", "restore", "big2", s(&out), "--store", store],
    );
    assert_eq!(std::fs::read(&big).unwrap(), std::fs::read(&out).unwrap());
    round_trip(&lab, &env, store, &disk);
}

/// Whether any file under `dir` holds `needle`.
fn found_in(dir: &Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
            {
                return true;
            }
        }
    }
    false
}

#[test]
fn an_encrypted_s3_store_shows_nothing_of_its_images_and_needs_its_key() {
    if !require(
        "encrypted_s3_store",
        &["root", "ip", "weed", "mkfs.ext4", "e2fsck"],
    ) {
        return;
    }
    let env = Env::new();
    let mut lab = Lab::new("enc", 1);
    let weed_dir = start_weed(&mut lab, 0, &env, "127.0.0.1");
    let secret_store = "s3://images/secret";
    wait_for_store(&lab, &env, secret_store);
    // A file whose marker zstd keeps as it is (random bytes around it are stored raw).
    let tree = env.path("tree");
    make_tree(&tree, 8 * MIB, 3);
    let marker = b"drover-plaintext-marker-5f0c9e1d7a";
    let mut doc = vec![0u8; 256 << 10];
    let mut x = 0x9e3779b97f4a7c15u64;
    for b in doc.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    doc[100_000..100_000 + marker.len()].copy_from_slice(marker);
    std::fs::write(tree.join("secret.doc"), &doc).unwrap();
    let disk = env.path("disk.img");
    sparse_file(&disk, 64 * MIB);
    run("mkfs.ext4", &["-q", "-F", "-d", s(&tree), s(&disk)]);
    let key = env.path("store.key");
    ok(&lab, &env, &["image", "keygen", s(&key)]);
    let with_key = ["--store", secret_store, "--encrypt-key-file", s(&key)];
    let args =
        |a: &[&str]| -> Vec<String> { a.iter().chain(&with_key).map(|x| x.to_string()).collect() };
    ok(
        &lab,
        &env,
        &args(&[
            "image",
            "capture",
            s(&disk),
            "--name",
            "payroll-workstation",
        ]),
    );
    assert!(
        !found_in(&weed_dir, marker),
        "a plaintext string of the source is in the bucket"
    );
    assert!(
        !found_in(&weed_dir, b"payroll-workstation"),
        "the image's name is in the bucket"
    );
    // The image restores, verifies and inspects with the key.
    let out = env.path("restored.img");
    sparse_file(&out, 64 * MIB);
    ok(
        &lab,
        &env,
        &args(&["image", "restore", "payroll-workstation", s(&out)]),
    );
    assert_eq!(std::fs::read(&disk).unwrap(), std::fs::read(&out).unwrap());
    run("e2fsck", &["-fn", s(&out)]);
    ok(
        &lab,
        &env,
        &args(&["image", "verify", "payroll-workstation"]),
    );
    ok(
        &lab,
        &env,
        &args(&["image", "inspect", "payroll-workstation"]),
    );
    // Without the key, or with another, nothing opens: each says why.
    let e = fails(&lab, &env, &["image", "list", "--store", secret_store]);
    assert!(
        e.contains("is encrypted") && e.contains("--encrypt-key-file"),
        "{e}"
    );
    let other = env.path("other.key");
    ok(&lab, &env, &["image", "keygen", s(&other)]);
    let e = fails(
        &lab,
        &env,
        &[
            "image",
            "restore",
            "payroll-workstation",
            s(&out),
            "--store",
            secret_store,
            "--encrypt-key-file",
            s(&other),
        ],
    );
    assert!(e.contains("does not open this store"), "{e}");
    // A passphrase store: the right passphrase opens it, a wrong one is named as such.
    let pass = env.path("pass");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    let wrong = env.path("wrong");
    std::fs::write(&wrong, "incorrect horse\n").unwrap();
    let pstore = "s3://images/pass";
    ok(
        &lab,
        &env,
        &[
            "image",
            "capture",
            s(&disk),
            "--name",
            "p",
            "--store",
            pstore,
            "--encrypt-passphrase-file",
            s(&pass),
        ],
    );
    let e = fails(
        &lab,
        &env,
        &[
            "image",
            "list",
            "--store",
            pstore,
            "--encrypt-passphrase-file",
            s(&wrong),
        ],
    );
    assert!(e.contains("does not open this store"), "{e}");
    // Copied into a plain directory store, then back into a new encrypted prefix with the
    // passphrase: every chunk checked on the way, the copy restores the same bytes.
    let plain = env.path("plain-store");
    ok(
        &lab,
        &env,
        &args(&["image", "copy", "payroll-workstation", "--to", s(&plain)]),
    );
    let back = "s3://images/copied";
    let copied = ok(
        &lab,
        &env,
        &[
            "image",
            "copy",
            "payroll-workstation",
            "--store",
            s(&plain),
            "--to",
            back,
            "--to-encrypt-passphrase-file",
            s(&pass),
        ],
    );
    assert!(copied.contains("chunks sent"), "{copied}");
    let again = ok(
        &lab,
        &env,
        &[
            "image",
            "copy",
            "payroll-workstation",
            "--store",
            s(&plain),
            "--to",
            back,
            "--to-encrypt-passphrase-file",
            s(&pass),
        ],
    );
    assert!(again.contains("already in"), "{again}");
    let out2 = env.path("restored2.img");
    sparse_file(&out2, 64 * MIB);
    ok(
        &lab,
        &env,
        &[
            "image",
            "restore",
            "payroll-workstation",
            s(&out2),
            "--store",
            back,
            "--encrypt-passphrase-file",
            s(&pass),
        ],
    );
    assert_eq!(std::fs::read(&disk).unwrap(), std::fs::read(&out2).unwrap());
    // The check can fail: the plain copy's chunks in a bucket show the marker.
    ok(
        &lab,
        &env,
        &[
            "image",
            "copy",
            "payroll-workstation",
            "--store",
            s(&plain),
            "--to",
            "s3://images/plain",
        ],
    );
    assert!(
        found_in(&weed_dir, marker),
        "the plaintext marker is not found even in an unencrypted copy: the check proves nothing"
    );
}

#[test]
fn webdav_store_round_trip() {
    if !require(
        "webdav_store",
        &["root", "ip", "rclone", "mkfs.ext4", "e2fsck"],
    ) {
        return;
    }
    let env = Env::new();
    let mut lab = Lab::new("dav", 1);
    let served = env.path("dav");
    std::fs::create_dir_all(&served).unwrap();
    let mut dav = lab.cmd(0, "rclone");
    dav.args([
        "serve",
        "webdav",
        s(&served),
        "--addr",
        "127.0.0.1:8080",
        "--user",
        "lab",
        "--pass",
        "lab-secret",
        "--config",
        "/dev/null",
    ])
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(env.path("rclone.log")).unwrap());
    lab.spawn(dav);
    let store = "webdav://lab:lab-secret@127.0.0.1:8080/images";
    wait_for_store(&lab, &env, store);
    let disk = source_disk(&env);
    round_trip(&lab, &env, store, &disk);
    // The objects are where WebDAV put them; the password never shows in messages.
    assert!(served.join("images/manifests").is_dir());
    let e = fails(
        &lab,
        &env,
        &[
            "image",
            "list",
            "--store",
            "webdav://lab:wrong-secret@127.0.0.1:8080/images",
        ],
    );
    assert!(
        e.contains("Unauthorized") && !e.contains("wrong-secret"),
        "{e}"
    );
}

#[test]
fn sftp_store_round_trip() {
    if !require(
        "sftp_store",
        &[
            "root",
            "ip",
            "sshd",
            "ssh",
            "ssh-keygen",
            "mkfs.ext4",
            "e2fsck",
        ],
    ) {
        return;
    }
    let env = Env::new();
    let mut lab = Lab::new("sftp", 1);
    let keys = env.path("keys");
    std::fs::create_dir_all(&keys).unwrap();
    for k in ["host", "user"] {
        run(
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-f", s(&keys.join(k))],
        );
    }
    std::fs::copy(keys.join("user.pub"), keys.join("authorized_keys")).unwrap();
    let config = env.path("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port 22\nListenAddress 127.0.0.1\nHostKey {k}/host\nAuthorizedKeysFile \
             {k}/authorized_keys\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nSubsystem sftp \
             internal-sftp\nPidFile {k}/sshd.pid\n",
            k = s(&keys)
        ),
    )
    .unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    // The client checks the server's host key strictly (drover's default) against a
    // known_hosts file that exists only inside the lab's namespace: `ip netns exec` mounts
    // /etc/netns/NS/ssh over /etc/ssh, so the machine's own ssh settings are never touched.
    let netns_etc = NetnsEtc(Path::new("/etc/netns").join(lab.host(0)));
    let known = netns_etc.0.join("ssh/ssh_known_hosts");
    std::fs::create_dir_all(known.parent().unwrap()).unwrap();
    let host_pub = std::fs::read_to_string(keys.join("host.pub")).unwrap();
    std::fs::write(&known, format!("127.0.0.1 {host_pub}")).unwrap();
    let sshd = which("sshd");
    let mut d = lab.cmd(0, &sshd);
    d.args(["-D", "-e", "-f", s(&config)])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(env.path("sshd.log")).unwrap());
    lab.spawn(d);
    let root = env.path("sftp-images");
    let store = format!("sftp://root@127.0.0.1{}", s(&root));
    let with_key = |c: &mut Command| {
        c.env("DROVER_SFTP_KEY", keys.join("user"));
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = drover(&lab, &env, &["image", "list", "--store", &store]);
        with_key(&mut c);
        let out = c.output().unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sftp never answered: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let disk = source_disk(&env);
    for args in [
        vec![
            "image",
            "capture",
            s(&disk),
            "--name",
            "lab",
            "--store",
            &store,
        ],
        vec!["image", "verify", "lab", "--store", &store],
    ] {
        let mut c = drover(&lab, &env, &args);
        with_key(&mut c);
        let out = c.output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let out = env.path("restored.img");
    sparse_file(&out, 64 * MIB);
    let mut c = drover(
        &lab,
        &env,
        &["image", "restore", "lab", s(&out), "--store", &store],
    );
    with_key(&mut c);
    assert!(c.output().unwrap().status.success());
    assert_eq!(std::fs::read(&disk).unwrap(), std::fs::read(&out).unwrap());
    // The files are the store's layout on the SFTP server's disk.
    assert!(root.join("manifests").is_dir() && root.join("chunks").is_dir());
    // Strict host-key checking (the default) refuses a server whose key is not the known one.
    let other = std::fs::read_to_string(keys.join("user.pub")).unwrap();
    std::fs::write(&known, format!("127.0.0.1 {other}")).unwrap();
    let mut c = drover(&lab, &env, &["image", "list", "--store", &store]);
    with_key(&mut c);
    let out = c.output().unwrap();
    assert!(
        !out.status.success(),
        "a server with an unknown host key was used"
    );
    drop(netns_etc);
}

/// `/etc/netns/NS`, removed when the test ends.
struct NetnsEtc(std::path::PathBuf);

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn unknown_schemes_are_refused_and_write_nothing() {
    let env = Env::new();
    for (store, says) in [
        ("gs://bucket/x", "\"gs\""),
        ("s3:bucket", "s3://"),
        ("nfs://server/export", "mounted"),
    ] {
        let e = env.fails(&["image", "list", "--store", store]);
        assert!(e.contains(says), "{store}: {e}");
        let e = env.fails(&[
            "image",
            "capture",
            "/dev/null",
            "--name",
            "x",
            "--store",
            store,
        ]);
        assert!(e.contains(says), "{store}: {e}");
    }
    // Nothing was created in the working directory or the data directory.
    for dir in [std::env::current_dir().unwrap(), env.data()] {
        for name in ["s3:", "s3:bucket", "gs:", "nfs:"] {
            assert!(!dir.join(name).exists(), "{} was created", name);
        }
    }
}

fn which(tool: &str) -> String {
    for d in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(d).join(tool);
        if p.exists() {
            return p.display().to_string();
        }
    }
    tool.to_string()
}
