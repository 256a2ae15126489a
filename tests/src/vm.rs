//! QEMU virtual machines as real PXE clients (TESTING.md): QEMU unpacked by
//! deploy/install-test-deps (not installed), run under TCG in a lab's switch namespace on a tap
//! of its bridge, with its serial console in a file the test reads for markers. The VM is
//! killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::lab::Lab;
use crate::server::{free_port, Server};
use crate::{agent_bin, drover_bin, Env};

/// Where deploy/install-test-deps unpacked QEMU.
pub fn qemu_dir() -> PathBuf {
    std::env::var_os("QEMU_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/drover-test/qemu"))
}

/// Whether QEMU, its firmware and the iPXE ROMs are there.
pub fn have_qemu() -> bool {
    qemu_dir().join("usr/bin/qemu-system-x86_64").exists()
        && Path::new("/usr/share/seabios/bios-256k.bin").exists()
        && Path::new("/usr/lib/ipxe/qemu/pxe-e1000.rom").exists()
        && Path::new("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd").exists()
}

/// Adds the project's QEMU (run through `env`, which `c` is) with its firmware paths, the
/// `machine` type, TCG, 512 MiB, one CPU, no display, no monitor and no reboot.
fn qemu(c: &mut Command, machine: &str) {
    let q = qemu_dir();
    c.arg(format!(
        "QEMU_MODULE_DIR={}",
        q.join("usr/lib/x86_64-linux-gnu/qemu").display()
    ))
    .arg(q.join("usr/bin/qemu-system-x86_64"))
    .args(["-L", "/usr/share/seabios", "-L", "/usr/lib/ipxe/qemu"])
    .arg("-L")
    .arg(q.join("usr/share/qemu"))
    .args(["-L", "/usr/share/qemu", "-machine", machine])
    .args(["-accel", "tcg", "-m", "512", "-smp", "1"])
    .args(["-nographic", "-monitor", "none", "-no-reboot"]);
}

/// How the VM's firmware boots from the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS with the e1000's iPXE option ROM (iPXE asks DHCP itself).
    Bios,
    /// OVMF with the e1000's iPXE option ROM.
    UefiIpxeRom,
    /// OVMF's own PXE client on virtio-net with no option ROM: firmware PXE, then the loader
    /// DHCP names (the shim, or snponly.efi).
    UefiPxe,
    /// As `UefiPxe`, with Secure Boot on: OVMF's Secure Boot build (SMM) with Microsoft's
    /// keys enrolled, as PCs ship.
    UefiSecureBoot,
    /// As `UefiPxe`, with OVMF's PXE turned off (its fw_cfg knobs): UEFI HTTP Boot, the
    /// loader's URL from DHCP (vendor class `HTTPClient`).
    UefiHttp,
}

/// A running VM.
pub struct Vm {
    child: Child,
    pub serial: PathBuf,
}

impl Vm {
    /// Starts a VM with `mac` on tap `tap` of `lab`'s switch, booting from the network, with
    /// `disks` (raw files, each with an optional serial) as its virtio disks. `dir` holds its
    /// serial log and firmware variables (kept from an earlier start with the same tap).
    pub fn start(
        lab: &Lab,
        tap: &str,
        mac: &str,
        disks: &[(&Path, Option<&str>)],
        fw: Firmware,
        dir: &Path,
    ) -> Self {
        let serial = dir.join(format!("serial-{tap}.log"));
        let _ = std::fs::remove_file(&serial);
        let mut c = lab.switch_cmd("env");
        qemu(
            &mut c,
            if fw == Firmware::UefiSecureBoot {
                "q35,smm=on"
            } else {
                "q35"
            },
        );
        c.arg("-netdev")
            .arg(format!("tap,id=n0,ifname={tap},script=no,downscript=no"))
            .arg("-device")
            .arg(match fw {
                Firmware::UefiPxe | Firmware::UefiSecureBoot | Firmware::UefiHttp => {
                    format!("virtio-net-pci,netdev=n0,mac={mac},romfile=")
                }
                _ => format!("e1000,netdev=n0,mac={mac}"),
            })
            .args(["-boot", "n"]);
        if fw == Firmware::UefiHttp {
            // Neither PXE over IPv4 nor over IPv6, nor IPv6 at all: HTTP Boot over IPv4 is
            // the network boot left.
            for knob in ["IPv4PXESupport", "IPv6PXESupport", "IPv6Support"] {
                c.arg("-fw_cfg")
                    .arg(format!("name=opt/org.tianocore/{knob},string=no"));
            }
        }
        c
            // The serial console, logged to a file the test reads, and on a socket beside it
            // where one debugging the test can type (socat - UNIX-CONNECT:serial-TAP.sock).
            .arg("-chardev")
            .arg(format!(
                "socket,id=s0,path={},server=on,wait=off,logfile={}",
                dir.join(format!("serial-{tap}.sock")).display(),
                serial.display()
            ))
            .args(["-serial", "chardev:s0"]);
        for (i, (disk, serial)) in disks.iter().enumerate() {
            c.arg("-drive")
                .arg(format!(
                    "file={},format=raw,if=none,id=d{i}",
                    disk.display()
                ))
                .arg("-device")
                .arg(match serial {
                    Some(s) => format!("virtio-blk-pci,drive=d{i},serial={s}"),
                    None => format!("virtio-blk-pci,drive=d{i}"),
                });
        }
        if fw != Firmware::Bios {
            // The machine's NVRAM: fresh at its first start, kept across its restarts (the
            // boot entries the agent writes are there at the next power-on).
            let (code, fresh) = if fw == Firmware::UefiSecureBoot {
                // Only SMM may write the variables: the guest cannot turn Secure Boot off.
                c.args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
                ("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd")
            } else {
                ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd")
            };
            let vars = dir.join(format!("vars-{tap}.fd"));
            if !vars.exists() {
                std::fs::copy(Path::new("/usr/share/OVMF").join(fresh), &vars).expect(fresh);
            }
            c.arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/{code}"
                ))
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,file={}", vars.display()));
        }
        Self::spawn(c, serial)
    }

    /// Starts a BIOS VM without a network that boots `disk` (a raw file, its virtio disk),
    /// its serial console logged in `dir`.
    pub fn boot_disk(disk: &Path, dir: &Path) -> Self {
        Self::boot_drive(&format!("file={},format=raw", disk.display()), dir)
    }

    /// Starts a BIOS VM without a network that boots the drive QEMU's `-drive` option
    /// `spec` describes (its virtio disk), its serial console logged in `dir`.
    pub fn boot_drive(spec: &str, dir: &Path) -> Self {
        let serial = dir.join("serial-disk.log");
        let _ = std::fs::remove_file(&serial);
        let mut c = Command::new("env");
        qemu(&mut c, "q35");
        c.args(["-nic", "none", "-serial"])
            .arg(format!("file:{}", serial.display()))
            .arg("-drive")
            .arg(format!("{spec},if=none,id=d0"))
            .args(["-device", "virtio-blk-pci,drive=d0"]);
        Self::spawn(c, serial)
    }

    /// Runs QEMU as `c` says, its console in `serial`.
    fn spawn(mut c: Command, serial: PathBuf) -> Self {
        let child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting QEMU");
        Self { child, serial }
    }

    /// The serial console so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits until the console shows `marker`; false after `limit` or when the VM ended.
    pub fn wait_for(&mut self, marker: &str, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.console().contains(marker) {
                return true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.console().contains(marker);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        false
    }

    /// Waits until QEMU exits (the guest rebooted or powered off: `-no-reboot`).
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        false
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The boot environment, built once per data directory by the real script.
pub fn build_boot_env(data: &Path) {
    script(
        "../deploy/build-boot-env",
        &[
            "--data-dir".as_ref(),
            data.as_os_str(),
            "--agent".as_ref(),
            agent_bin().as_os_str(),
            "--cache".as_ref(),
            "/var/cache/drover/boot-env".as_ref(),
        ],
    );
    for f in [
        "vmlinuz",
        "initrd.img",
        "undionly.kpxe",
        "snponly.efi",
        "ipxe.efi",
        "shimx64.efi",
        "mmx64.efi",
        "grubx64.efi",
    ] {
        assert!(data.join("boot").join(f).is_file(), "{f} missing");
    }
}

/// A lab whose server PXE-boots its VMs.
pub struct Site {
    pub env: Env,
    pub lab: Lab,
    pub srv: Server,
    pub url: String,
    pub token: String,
}

impl Site {
    /// A lab with the server on host 0 (TFTP, HTTP on 10.77.0.10): full DHCP with an explicit
    /// `--tftp`, or proxyDHCP beside the lab's own DHCP server (busybox udhcpd on host 1:
    /// addresses, and drover as the next server, no boot file) with TFTP left to its default.
    /// The next server is what Debian 12's network GRUB reads (from the lab's answer, never
    /// the proxy's) to find drover: the README's proxyDHCP setup.
    pub fn new(tag: &str, proxy: bool) -> Self {
        let env = Env::new();
        build_boot_env(&env.data());
        let mut lab = Lab::new(tag, if proxy { 2 } else { 1 });
        if proxy {
            let conf = env.path("udhcpd.conf");
            std::fs::write(
                &conf,
                format!(
                    "start 10.77.0.100\nend 10.77.0.150\ninterface eth0\nlease_file {}\n\
                     option subnet 255.255.255.0\noption lease 3600\nsiaddr {}\n",
                    env.path("udhcpd.leases").display(),
                    lab.addr(0)
                ),
            )
            .unwrap();
            std::fs::write(env.path("udhcpd.leases"), b"").unwrap();
            let mut d = lab.cmd(1, "busybox");
            d.arg("udhcpd").arg("-f").arg(&conf);
            d.stdout(Stdio::null()).stderr(Stdio::null());
            lab.spawn(d);
        }
        let token = env.ok(&["token", "create", "admin"]).trim().to_string();
        let port = free_port();
        let url = format!("http://{}:{port}", lab.addr(0));
        // Kernel messages on the serial console only: the test reads them.
        let config = env.path("drover.toml");
        std::fs::write(&config, "boot_args = \"console=ttyS0,115200n8 panic=10\"\n").unwrap();
        let mut cmd = lab.cmd(0, drover_bin().to_str().unwrap());
        cmd.arg("--data-dir").arg(env.data()).arg("serve");
        cmd.arg("--config").arg(&config).args([
            "--http",
            &format!("0.0.0.0:{port}"),
            "--public-url",
            &url,
            "--iface",
            "eth0",
        ]);
        if proxy {
            // TFTP on port 69 follows --dhcp by default: a new user's command line.
            cmd.args(["--dhcp", "proxy"]);
        } else {
            cmd.args(["--dhcp", "full", "--dhcp-range", "10.77.0.100-10.77.0.150"]);
            cmd.args(["--tftp", "0.0.0.0:69"]);
        }
        let srv = Server::start_cmd(cmd);
        Self {
            env,
            lab,
            srv,
            url,
            token,
        }
    }

    /// `drover ARGS` against the server, from inside the lab.
    pub fn cli(&self, args: &[&str]) -> String {
        let o = self
            .lab
            .drover(0, &self.env.data(), &self.url, &self.token, args);
        assert!(
            o.status.success(),
            "drover {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

const CACHE: &str = "/var/cache/drover/debian12";

/// The golden Debian 12 disk (tests/scripts/build-debian12), built or found cached in
/// /var/cache/drover/debian12.
pub fn debian12() -> PathBuf {
    script("scripts/build-debian12", &[CACHE.as_ref()]);
    Path::new(CACHE).join("golden.img")
}

/// Runs one of the project's bash scripts (a path from the tests crate); panics with its
/// output when it fails.
fn script(rel: &str, args: &[&std::ffi::OsStr]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let out = Command::new("bash").arg(&path).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
