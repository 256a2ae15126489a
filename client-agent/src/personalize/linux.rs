//! Personalizing a restored Linux system, given its root directory: its hostname
//! (`/etc/hostname`, the `127.0.1.1` line of `/etc/hosts`), a new `/etc/machine-id` (and
//! `/var/lib/dbus/machine-id` where it is a file of its own), new SSH host keys of the types it
//! had, and no leftover udev network names or cloud-init instance state. A path that is a
//! symbolic link is never written through (it could point anywhere on the agent's side):
//! such a file is said to be left as it is.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::RngCore;
use ssh_key::{Algorithm, EcdsaCurve, LineEnding, PrivateKey};

/// `rel` under `root`, following symbolic links as the restored system would (absolute ones
/// from its root), never leaving it. `None` when it does not exist.
fn resolve(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut parts: Vec<String> = rel
        .split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    parts.reverse();
    let mut at: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(p) = parts.pop() {
        match p.as_str() {
            "." => continue,
            ".." => {
                at.pop();
                continue;
            }
            _ => {}
        }
        at.push(p);
        let here = at.iter().fold(root.to_path_buf(), |a, b| a.join(b));
        let meta = fs::symlink_metadata(&here).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 16 {
                return None;
            }
            let target = fs::read_link(&here).ok()?;
            let target = target.to_string_lossy().to_string();
            at.pop();
            if target.starts_with('/') {
                at.clear();
            }
            let mut more: Vec<String> = target
                .split('/')
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect();
            more.reverse();
            parts.extend(more);
        }
    }
    Some(at.iter().fold(root.to_path_buf(), |a, b| a.join(b)))
}

/// The system's name (`PRETTY_NAME` of its os-release), when `root` holds a Linux system.
pub(crate) fn os_name(root: &Path) -> Option<String> {
    let p = resolve(root, "etc/os-release").or_else(|| resolve(root, "usr/lib/os-release"))?;
    let text = fs::read_to_string(p).ok()?;
    let field = |k: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(k)
                .and_then(|v| v.strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_string())
        })
    };
    Some(
        field("PRETTY_NAME")
            .or_else(|| field("NAME"))
            .unwrap_or_else(|| "Linux".into()),
    )
}

/// What a path of the restored system is.
enum Kind {
    Missing,
    File,
    Link,
    Other,
}

fn kind(p: &Path) -> Kind {
    match fs::symlink_metadata(p) {
        Err(_) => Kind::Missing,
        Ok(m) if m.file_type().is_symlink() => Kind::Link,
        Ok(m) if m.is_file() => Kind::File,
        Ok(_) => Kind::Other,
    }
}

/// Replaces the file at `p` (not a link) with `content`, keeping its mode (else `mode`),
/// through a new file renamed over it.
fn replace(p: &Path, content: &[u8], mode: u32) -> anyhow::Result<()> {
    let mode = fs::symlink_metadata(p)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(mode);
    replace_as(p, content, mode)
}

/// [`replace`] with exactly `mode` (a private key is `0600` whatever it was before).
fn replace_as(p: &Path, content: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = p.with_extension("drover-new");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(content)?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.sync_all()?;
    fs::rename(&tmp, p).with_context(|| format!("replacing {}", p.display()))?;
    Ok(())
}

/// `/etc/hosts` with its `127.0.1.1` line naming `hostname` (added after `127.0.0.1`'s when
/// there is none).
pub(crate) fn hosts(text: &str, hostname: &str) -> String {
    let names = match hostname.split_once('.') {
        Some((short, _)) => format!("{hostname} {short}"),
        None => hostname.to_string(),
    };
    let line = format!("127.0.1.1\t{names}");
    let mut out = Vec::new();
    let mut done = false;
    for l in text.lines() {
        if l.split_whitespace().next() == Some("127.0.1.1") {
            if !done {
                out.push(line.clone());
                done = true;
            }
        } else {
            out.push(l.to_string());
        }
    }
    if !done {
        let at = out
            .iter()
            .position(|l| l.split_whitespace().next() == Some("127.0.0.1"))
            .map_or(0, |i| i + 1);
        out.insert(at, line);
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

fn new_machine_id() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    // A version 4 UUID's bits, as systemd makes them.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A new host key of `kind` (`rsa`, `ecdsa`, `ed25519`), as OpenSSH writes them.
fn host_key(kind: &str, comment: &str) -> anyhow::Result<(String, String)> {
    let mut rng = rand::rngs::OsRng;
    let mut key = match kind {
        "ed25519" => PrivateKey::random(&mut rng, Algorithm::Ed25519)?,
        "ecdsa" => PrivateKey::random(
            &mut rng,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
        )?,
        "rsa" => {
            let pair = ssh_key::private::RsaKeypair::random(&mut rng, 3072)?;
            PrivateKey::new(ssh_key::private::KeypairData::from(pair), comment)?
        }
        other => anyhow::bail!("host key type {other}"),
    };
    key.set_comment(comment);
    let private = key.to_openssh(LineEnding::LF)?.to_string();
    let public = format!("{}\n", key.public_key().to_openssh()?);
    Ok((private, public))
}

/// The first-boot unit: runs the script once, then removes it and itself, whatever the
/// script's exit status (which the journal keeps). Logins wait for it (the login prompt
/// comes after `systemd-user-sessions`), so nobody uses the machine half set up.
const FIRST_BOOT_UNIT: &str = "[Unit]
Description=drover: this machine's first-boot script (runs once)
Wants=network-online.target
After=network-online.target
Before=systemd-user-sessions.service
ConditionPathExists=/etc/drover/first-boot.sh

[Service]
Type=oneshot
ExecStart=/bin/sh -c '/bin/sh /etc/drover/first-boot.sh; rc=$$?; rm -f /etc/drover/first-boot.sh /etc/systemd/system/multi-user.target.wants/drover-first-boot.service /etc/systemd/system/drover-first-boot.service; sync; exit $$rc'
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
";

/// Creates the directories of `rel` (absolute in the restored system) under `root`, none of
/// them through a symbolic link; returns the file's path.
fn make_parents(root: &Path, rel: &str) -> anyhow::Result<PathBuf> {
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    let Some((name, dirs)) = parts.split_last() else {
        anyhow::bail!("{rel:?}: not a file's path");
    };
    let mut at = root.to_path_buf();
    for d in dirs {
        at.push(d);
        match kind(&at) {
            Kind::Missing => {
                fs::create_dir(&at).with_context(|| format!("creating {}", at.display()))?
            }
            Kind::Other => {}
            Kind::Link | Kind::File => anyhow::bail!(
                "{rel}: /{} is a symbolic link or a file, not a directory",
                at.strip_prefix(root).unwrap_or(&at).display()
            ),
        }
    }
    let p = at.join(name);
    if let Kind::Link | Kind::Other = kind(&p) {
        anyhow::bail!("{rel}: there is a symbolic link or a directory there");
    }
    Ok(p)
}

/// Places the files and the first-boot script into the system at `root`.
pub(crate) fn place(
    root: &Path,
    files: &[proto::api::PlacedFile],
    first_boot: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    for f in files {
        let mode = f.check().map_err(anyhow::Error::msg)?;
        let p = make_parents(root, &f.path)?;
        replace_as(&p, f.content.as_bytes(), mode)?;
        done.push(format!("file {} ({mode:04o})", f.path));
    }
    if let Some(script) = first_boot {
        if resolve(root, "lib/systemd/systemd").is_none()
            && resolve(root, "usr/lib/systemd/systemd").is_none()
        {
            anyhow::bail!("a first-boot script needs systemd, which this system does not have");
        }
        let p = make_parents(root, "/etc/drover/first-boot.sh")?;
        replace_as(&p, script.as_bytes(), 0o700)?;
        let unit = make_parents(root, "/etc/systemd/system/drover-first-boot.service")?;
        replace_as(&unit, FIRST_BOOT_UNIT.as_bytes(), 0o644)?;
        let wants = make_parents(
            root,
            "/etc/systemd/system/multi-user.target.wants/drover-first-boot.service",
        )?;
        let _ = fs::remove_file(&wants);
        std::os::unix::fs::symlink("../drover-first-boot.service", &wants)
            .with_context(|| format!("enabling {}", unit.display()))?;
        done.push("first-boot script (drover-first-boot.service, runs once)".into());
    }
    Ok(done)
}

/// The host key types drover renews.
const KEY_TYPES: [&str; 3] = ["rsa", "ecdsa", "ed25519"];

/// Gives the Linux system at `root` the machine's identity; returns what it changed, a line
/// each.
pub(crate) fn personalize(root: &Path, hostname: &str) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    let left = |what: &str, p: &Path| {
        format!(
            "{what}: /{} is a symbolic link, left as it is",
            p.strip_prefix(root).unwrap_or(p).display()
        )
    };
    let etc = root.join("etc");
    // The hostname.
    let p = etc.join("hostname");
    match kind(&p) {
        Kind::Link => done.push(left("hostname", &p)),
        Kind::Other => {}
        Kind::File | Kind::Missing => {
            replace(&p, format!("{hostname}\n").as_bytes(), 0o644)?;
            done.push(format!("hostname {hostname}"));
        }
    }
    let p = etc.join("hosts");
    match kind(&p) {
        Kind::Link => done.push(left("hosts", &p)),
        Kind::File => {
            let text = fs::read_to_string(&p).context("reading /etc/hosts")?;
            replace(&p, hosts(&text, hostname).as_bytes(), 0o644)?;
            done.push(format!("/etc/hosts: 127.0.1.1 is {hostname}"));
        }
        Kind::Missing | Kind::Other => {}
    }
    // The machine id: only where the image has one (absent, systemd makes one at boot).
    let p = etc.join("machine-id");
    match kind(&p) {
        Kind::Link => done.push(left("machine-id", &p)),
        Kind::File => {
            let id = new_machine_id();
            replace(&p, format!("{id}\n").as_bytes(), 0o444)?;
            done.push(format!("new machine-id {id}"));
            let dbus = root.join("var/lib/dbus/machine-id");
            if let Kind::File = kind(&dbus) {
                replace(&dbus, format!("{id}\n").as_bytes(), 0o444)?;
                done.push("/var/lib/dbus/machine-id: the same".into());
            }
        }
        Kind::Missing | Kind::Other => {}
    }
    // SSH host keys, of the types the image had.
    let mut renewed = Vec::new();
    for t in KEY_TYPES {
        let p = etc.join(format!("ssh/ssh_host_{t}_key"));
        match kind(&p) {
            Kind::File => {
                let (private, public) = host_key(t, &format!("root@{hostname}"))
                    .with_context(|| format!("making a new {t} host key"))?;
                replace_as(&p, private.as_bytes(), 0o600)?;
                let pubp = etc.join(format!("ssh/ssh_host_{t}_key.pub"));
                if let Kind::Link = kind(&pubp) {
                    done.push(left("SSH host key", &pubp));
                } else {
                    replace(&pubp, public.as_bytes(), 0o644)?;
                }
                renewed.push(t);
            }
            Kind::Link => done.push(left("SSH host key", &p)),
            Kind::Missing | Kind::Other => {}
        }
    }
    if !renewed.is_empty() {
        done.push(format!("new SSH host keys: {}", renewed.join(", ")));
    }
    // State that names the golden machine's hardware or instance.
    for (rel, what) in [
        (
            "etc/udev/rules.d/70-persistent-net.rules",
            "udev's persistent network names",
        ),
        ("var/lib/cloud/instance", "cloud-init's instance state"),
        ("var/lib/cloud/instances", "cloud-init's instances"),
        ("var/lib/cloud/data", "cloud-init's data"),
    ] {
        let p = root.join(rel);
        let removed = match kind(&p) {
            Kind::Missing => false,
            Kind::File | Kind::Link => fs::remove_file(&p).is_ok(),
            Kind::Other => fs::remove_dir_all(&p).is_ok(),
        };
        if removed {
            done.push(format!("removed {what} (/{rel})"));
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn the_127_0_1_1_line_names_the_machine() {
        let debian = "127.0.0.1\tlocalhost\n127.0.1.1\tgolden\n\n::1 localhost ip6-localhost\n";
        assert_eq!(
            hosts(debian, "pc-07"),
            "127.0.0.1\tlocalhost\n127.0.1.1\tpc-07\n\n::1 localhost ip6-localhost\n"
        );
        assert_eq!(
            hosts("127.0.0.1 localhost\n", "pc-07.lab.example"),
            "127.0.0.1 localhost\n127.0.1.1\tpc-07.lab.example pc-07\n"
        );
        assert_eq!(hosts("", "x"), "127.0.1.1\tx\n");
    }

    #[test]
    fn links_are_followed_inside_the_root_only() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(
            root.join("usr/lib/os-release"),
            "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
        )
        .unwrap();
        symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
        assert_eq!(
            os_name(root).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        // An absolute link is the restored system's, not the agent's.
        symlink("/usr/lib/os-release", root.join("etc/abs")).unwrap();
        assert_eq!(
            resolve(root, "etc/abs"),
            Some(root.join("usr/lib/os-release"))
        );
        symlink("../../../../../../etc/passwd", root.join("etc/out")).unwrap();
        assert_eq!(resolve(root, "etc/out"), None, "stays in the root");
        assert!(os_name(&root.join("usr")).is_none());
    }

    fn golden(root: &Path) {
        for d in [
            "etc/ssh",
            "var/lib/dbus",
            "etc/udev/rules.d",
            "var/lib/cloud/instances/i-1",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("etc/os-release"), "PRETTY_NAME=\"Test\"\n").unwrap();
        fs::write(root.join("etc/hostname"), "golden\n").unwrap();
        fs::write(
            root.join("etc/hosts"),
            "127.0.0.1 localhost\n127.0.1.1 golden\n",
        )
        .unwrap();
        fs::write(
            root.join("etc/machine-id"),
            "0123456789abcdef0123456789abcdef\n",
        )
        .unwrap();
        fs::write(
            root.join("var/lib/dbus/machine-id"),
            "0123456789abcdef0123456789abcdef\n",
        )
        .unwrap();
        for t in ["ed25519", "ecdsa", "rsa"] {
            fs::write(root.join(format!("etc/ssh/ssh_host_{t}_key")), "old").unwrap();
            fs::write(root.join(format!("etc/ssh/ssh_host_{t}_key.pub")), "old").unwrap();
        }
        fs::write(root.join("etc/udev/rules.d/70-persistent-net.rules"), "x").unwrap();
        symlink(
            "/var/lib/cloud/instances/i-1",
            root.join("var/lib/cloud/instance"),
        )
        .unwrap();
    }

    #[test]
    fn files_and_the_first_boot_script_are_placed() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        golden(root);
        fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
        fs::write(root.join("usr/lib/systemd/systemd"), "").unwrap();
        let file = |path: &str, content: &str, mode: Option<&str>| proto::api::PlacedFile {
            path: path.into(),
            content: content.into(),
            mode: mode.map(str::to_string),
        };
        let lines = place(
            root,
            &[
                file("/etc/motd", "Welcome to pc-07\n", None),
                file("/opt/lab/new/secret", "s3", Some("0600")),
            ],
            Some("#!/bin/sh\necho first boot of pc-07\n"),
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(root.join("etc/motd")).unwrap(),
            "Welcome to pc-07\n"
        );
        let secret = fs::metadata(root.join("opt/lab/new/secret")).unwrap();
        assert_eq!(secret.permissions().mode() & 0o777, 0o600);
        let unit =
            fs::read_to_string(root.join("etc/systemd/system/drover-first-boot.service")).unwrap();
        assert!(unit.contains("rc=$$?") && unit.contains("WantedBy=multi-user.target"));
        assert_eq!(
            fs::read_link(
                root.join("etc/systemd/system/multi-user.target.wants/drover-first-boot.service")
            )
            .unwrap(),
            Path::new("../drover-first-boot.service")
        );
        assert!(fs::read_to_string(root.join("etc/drover/first-boot.sh"))
            .unwrap()
            .contains("first boot of pc-07"));
        assert_eq!(lines.len(), 3, "{lines:?}");
        // Never through a link, never outside the root.
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), root.join("opt/out")).unwrap();
        let e = place(root, &[file("/opt/out/x", "x", None)], None).unwrap_err();
        assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
        assert!(!outside.path().join("x").exists());
        assert!(place(root, &[file("/etc/../x", "x", None)], None).is_err());
        // No systemd, no first-boot script: said, not ignored.
        fs::remove_file(root.join("usr/lib/systemd/systemd")).unwrap();
        let e = place(root, &[], Some("echo")).unwrap_err();
        assert!(format!("{e:#}").contains("systemd"), "{e:#}");
    }

    #[test]
    fn a_golden_system_gets_its_own_identity() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        golden(root);
        let lines = personalize(root, "pc-07").unwrap();
        let read = |p: &str| fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(read("etc/hostname"), "pc-07\n");
        assert!(read("etc/hosts").contains("127.0.1.1\tpc-07\n"));
        let id = read("etc/machine-id");
        assert_ne!(id, "0123456789abcdef0123456789abcdef\n");
        assert_eq!(id.trim().len(), 32);
        assert_eq!(read("var/lib/dbus/machine-id"), id);
        for t in ["ed25519", "ecdsa", "rsa"] {
            let private = read(&format!("etc/ssh/ssh_host_{t}_key"));
            let k = PrivateKey::from_openssh(&private).unwrap();
            assert_eq!(k.comment(), "root@pc-07");
            let public = read(&format!("etc/ssh/ssh_host_{t}_key.pub"));
            assert_eq!(public.trim(), k.public_key().to_openssh().unwrap());
            let mode = fs::metadata(root.join(format!("etc/ssh/ssh_host_{t}_key")))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!root
            .join("etc/udev/rules.d/70-persistent-net.rules")
            .exists());
        assert!(fs::symlink_metadata(root.join("var/lib/cloud/instance")).is_err());
        assert!(!root.join("var/lib/cloud/instances").exists());
        let text = lines.join("\n");
        for said in [
            "hostname pc-07",
            "new machine-id",
            "new SSH host keys: rsa, ecdsa, ed25519",
            "udev",
            "cloud-init",
        ] {
            assert!(text.contains(said), "{said}: {text}");
        }
        // Two machines from one image differ.
        let d2 = tempfile::tempdir().unwrap();
        golden(d2.path());
        personalize(d2.path(), "pc-08").unwrap();
        assert_ne!(
            fs::read_to_string(d2.path().join("etc/machine-id")).unwrap(),
            id
        );
        assert_ne!(
            fs::read_to_string(d2.path().join("etc/ssh/ssh_host_ed25519_key.pub")).unwrap(),
            read("etc/ssh/ssh_host_ed25519_key.pub")
        );
    }

    #[test]
    fn files_that_are_links_are_not_written_through() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        symlink(&victim, root.join("etc/hostname")).unwrap();
        symlink(&victim, root.join("etc/machine-id")).unwrap();
        let lines = personalize(root, "pc-07").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        assert!(
            lines.iter().any(|l| l.contains("symbolic link")),
            "{lines:?}"
        );
    }
}
