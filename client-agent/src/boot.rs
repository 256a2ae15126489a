//! The agent as the boot environment's program: the kernel runs it as `/init` (PID 1) from the
//! initramfs `deploy/build-boot-env` builds. It mounts /proc, /sys and /dev, copies its output
//! to every active console, reads `drover.*` from the kernel command line, loads the NIC and
//! disk modules listed in `/lib/modules/drover.load`, brings up the NIC (the one with
//! `drover.mac`), gets an address by DHCP itself ([`pxe::dhcp_client`]), waits for the disks,
//! runs the task (the disk it writes is chosen by [`imaging::disks::choose`]), and then reboots
//! or powers off as `drover.then` says. A machine whose task failed stays on with the reason on
//! its screen (the server has it too); its next PXE boot goes to the local disk.
//!
//! Kernel command line: `drover.server=URL` (required), `drover.token=drt_...`,
//! `drover.mac=MAC`, `drover.then=reboot|poweroff`, `drover.mode=register` (say hello with the
//! disks, then reboot), `drover.readback=1`.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Runs as PID 1; never returns.
pub(crate) fn main() -> ExitCode {
    if let Err(e) = mount_all() {
        // Without /dev there may be no console: the kernel's panic shows it.
        panic!("drover-agent: {e:#}");
    }
    tee_consoles();
    crate::init_logging();
    let rt = transport::session_runtime();
    let code = match rt {
        Ok(rt) => match boot() {
            Ok(args) => rt.block_on(crate::run(args)).unwrap_or_else(|e| {
                eprintln!("drover-agent: {e:#}");
                ExitCode::FAILURE
            }),
            Err(e) => {
                eprintln!("drover-agent: {e:#}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("drover-agent: {e:#}");
            ExitCode::FAILURE
        }
    };
    finish(code)
}

/// What the kernel command line says.
#[derive(Debug, Default, PartialEq, Eq)]
struct Cmdline {
    server: Option<String>,
    token: Option<String>,
    mac: Option<String>,
    then: String,
    register: bool,
    read_back: bool,
}

fn parse_cmdline(text: &str) -> Cmdline {
    let kv: HashMap<&str, &str> = text
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("drover."))
        .filter_map(|w| w.split_once('='))
        .collect();
    Cmdline {
        server: kv.get("server").map(|s| s.to_string()),
        token: kv.get("token").map(|s| s.to_string()),
        mac: kv.get("mac").map(|s| s.to_ascii_lowercase()),
        then: kv.get("then").unwrap_or(&"reboot").to_string(),
        register: kv.get("mode") == Some(&"register"),
        read_back: kv.get("readback") == Some(&"1"),
    }
}

static THEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Brings the machine up to the point where the agent's normal run can begin.
fn boot() -> anyhow::Result<crate::Args> {
    let text = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    let c = parse_cmdline(&text);
    let _ = THEN.set(if c.register {
        "reboot".into()
    } else {
        c.then.clone()
    });
    let server = c
        .server
        .clone()
        .context("no drover.server= on the kernel command line")?;
    eprintln!(
        "drover-agent {} starting (server {server})",
        env!("CARGO_PKG_VERSION")
    );
    load_modules(Path::new("/lib/modules/drover.load"));
    let nic = find_nic(c.mac.as_deref(), Duration::from_secs(30))?;
    eprintln!("network: {nic}");
    set_up(&nic)?;
    wait_carrier(&nic, Duration::from_secs(15));
    let mac = std::fs::read_to_string(format!("/sys/class/net/{nic}/address"))
        .with_context(|| format!("reading the MAC address of {nic}"))?
        .trim()
        .to_string();
    let lease = dhcp(&nic, &mac, Duration::from_secs(120))?;
    eprintln!(
        "network: {nic} {}/{} (gateway {}, from {})",
        lease.ip,
        lease.prefix(),
        lease.router.map_or("none".into(), |r| r.to_string()),
        lease.server
    );
    configure(&nic, &lease)?;
    let disks = wait_disks(Duration::from_secs(30));
    eprintln!(
        "disks: {}",
        if disks.is_empty() {
            "none".to_string()
        } else {
            disks
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let missing_firmware = missing_firmware(&kernel_log());
    for m in &missing_firmware {
        eprintln!(
            "firmware: {m} is missing from the boot environment; that device may not work \
             (deploy/build-boot-env --firmware-dir DIR adds it)"
        );
    }
    Ok(crate::Args {
        server,
        mac: Some(mac),
        token: c.token,
        disks: Vec::new(),
        disk: PathBuf::new(),
        iface: Some(nic),
        read_back: c.read_back,
        // A machine booted for a task that went away meanwhile: back to its disk.
        max_idle: Some(Duration::from_secs(if c.register { 0 } else { 120 })),
        choose_disk: true,
        register: c.register,
        missing_firmware,
    })
}

/// The kernel's log so far (syslog(2) READ_ALL).
fn kernel_log() -> String {
    let mut buf = vec![0u8; 1 << 20];
    // SAFETY: READ_ALL (3) copies at most `len` bytes of the log into the buffer.
    let n = unsafe { libc::klogctl(3, buf.as_mut_ptr().cast(), buf.len() as libc::c_int) };
    buf.truncate(usize::try_from(n).unwrap_or(0));
    String::from_utf8_lossy(&buf).into_owned()
}

/// The firmware files drivers asked for and did not get, from the kernel's log: `DRIVER
/// DEVICE: FILE` each, once.
fn missing_firmware(log: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in log.lines() {
        let Some((who, rest)) = line.split_once(": Direct firmware load for ") else {
            continue;
        };
        let Some(file) = rest.split_whitespace().next() else {
            continue;
        };
        // "<4>[    3.210000] r8169 0000:03:00.0" → "r8169 0000:03:00.0"
        let who = who.rsplit_once("] ").map_or(who, |(_, w)| w).trim();
        let who = who.trim_start_matches(|c: char| c == '<' || c == '>' || c.is_ascii_digit());
        let entry = format!("{who}: {file}");
        if !out.contains(&entry) {
            out.push(entry);
        }
    }
    out
}

/// After the run: reboot or power off when it went well (the task is reported done before),
/// else stay with the reason on the screen.
fn finish(code: ExitCode) -> ! {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let then = THEN.get().map_or("reboot", String::as_str);
    // 0 done; 3 no task (registered, or the task went away): the local disk boots next.
    let ok = code == ExitCode::SUCCESS || code == ExitCode::from(3);
    if ok {
        let how = if then == "poweroff" {
            libc::RB_POWER_OFF
        } else {
            libc::RB_AUTOBOOT
        };
        eprintln!(
            "drover-agent: {}",
            if how == libc::RB_POWER_OFF {
                "powering off"
            } else {
                "rebooting"
            }
        );
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: reboot(2) with a valid command; as PID 1 with CAP_SYS_BOOT it does not return.
        unsafe { libc::reboot(how) };
    }
    eprintln!(
        "drover-agent: the task did not finish (the reason is above and on the server). \
         This machine stays on; its next network boot starts its local disk."
    );
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn mount_all() -> anyhow::Result<()> {
    for (src, dir, fs) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
    ] {
        let _ = std::fs::create_dir_all(dir);
        let (s, d, f) = (CString::new(src)?, CString::new(dir)?, CString::new(fs)?);
        // SAFETY: valid NUL-terminated strings; no data argument.
        let r = unsafe { libc::mount(s.as_ptr(), d.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBUSY) {
                bail!("mounting {fs} on {dir}: {e}");
            }
        }
    }
    Ok(())
}

/// Standard output and error go through a pipe to every active console (screen and serial).
fn tee_consoles() {
    let names = std::fs::read_to_string("/sys/class/tty/console/active").unwrap_or_default();
    let mut outs: Vec<std::fs::File> = names
        .split_whitespace()
        .filter_map(|n| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(format!("/dev/{n}"))
                .ok()
        })
        .collect();
    if outs.is_empty() {
        if let Ok(c) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
            outs.push(c);
        }
    }
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe(2) writes.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return;
    }
    // SAFETY: dup2 onto stdout and stderr of descriptors we own.
    unsafe {
        libc::dup2(fds[1], 1);
        libc::dup2(fds[1], 2);
        libc::close(fds[1]);
    }
    // SAFETY: fds[0] is the pipe's read end, owned by nobody else.
    let mut rd = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = rd.read(&mut buf) {
            if n == 0 {
                break;
            }
            for o in &mut outs {
                // Consoles want CR LF.
                let text = buf[..n]
                    .iter()
                    .flat_map(|&b| {
                        if b == b'\n' {
                            vec![b'\r', b'\n']
                        } else {
                            vec![b]
                        }
                    })
                    .collect::<Vec<u8>>();
                let _ = o.write_all(&text);
            }
        }
    });
}

/// Loads the modules listed (paths relative to /lib/modules/VERSION), in order: a module
/// already there (built in, or loaded as a dependency) is fine.
fn load_modules(list: &Path) {
    let Ok(text) = std::fs::read_to_string(list) else {
        eprintln!(
            "modules: no {} (a kernel with built-in drivers?)",
            list.display()
        );
        return;
    };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let base = Path::new("/lib/modules").join(release.trim());
    let (mut loaded, mut failed) = (0, Vec::new());
    for rel in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let p = base.join(rel);
        let r = std::fs::File::open(&p).and_then(|f| {
            // SAFETY: finit_module(2) with an open module file, empty parameters, no flags.
            let r =
                unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), c"".as_ptr(), 0) };
            if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
        match r {
            Ok(()) => loaded += 1,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            // A driver for hardware the machine lacks may refuse; the others go on.
            Err(e) => failed.push(format!("{rel}: {e}")),
        }
    }
    eprintln!("modules: {loaded} loaded");
    for f in failed {
        eprintln!("modules: {f}");
    }
}

/// The NIC with `mac`, or the first Ethernet interface, waiting for drivers to register it.
fn find_nic(mac: Option<&str>, limit: Duration) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        let mut all: Vec<(String, String)> = std::fs::read_dir("/sys/class/net")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        let kind = std::fs::read_to_string(e.path().join("type")).ok()?;
                        let addr = std::fs::read_to_string(e.path().join("address")).ok()?;
                        (kind.trim() == "1").then(|| (n, addr.trim().to_ascii_lowercase()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        all.sort();
        let found = match mac {
            Some(m) => all.iter().find(|(_, a)| a == m),
            None => all.first(),
        };
        if let Some((n, _)) = found {
            return Ok(n.clone());
        }
        if start.elapsed() > limit {
            bail!(
                "no network interface{} after {}s (interfaces: {}); is its driver in the boot environment?",
                mac.map_or(String::new(), |m| format!(" with MAC {m}")),
                limit.as_secs(),
                if all.is_empty() {
                    "none".to_string()
                } else {
                    all.iter()
                        .map(|(n, a)| format!("{n} {a}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ifreq(name: &str) -> anyhow::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    anyhow::ensure!(
        name.len() < libc::IFNAMSIZ,
        "interface name {name:?} too long"
    );
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

fn ctl_socket() -> anyhow::Result<std::net::UdpSocket> {
    std::net::UdpSocket::bind("0.0.0.0:0").context("a socket for interface settings")
}

fn ioctl(
    sock: &std::net::UdpSocket,
    req: libc::c_ulong,
    arg: *mut libc::c_void,
    what: &str,
) -> anyhow::Result<()> {
    // SAFETY: `arg` points at the structure `req` expects, alive for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), req, arg) } != 0 {
        bail!("{what}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn set_up(nic: &str) -> anyhow::Result<()> {
    let s = ctl_socket()?;
    let mut r = ifreq(nic)?;
    ioctl(
        &s,
        libc::SIOCGIFFLAGS,
        (&raw mut r).cast(),
        "reading the interface flags",
    )?;
    // SAFETY: SIOCGIFFLAGS filled the flags member.
    unsafe { r.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ioctl(
        &s,
        libc::SIOCSIFFLAGS,
        (&raw mut r).cast(),
        &format!("bringing {nic} up"),
    )
}

fn wait_carrier(nic: &str, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if std::fs::read_to_string(format!("/sys/class/net/{nic}/carrier"))
            .is_ok_and(|c| c.trim() == "1")
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "network: {nic} has no link after {}s; trying anyway",
        limit.as_secs()
    );
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads it as sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// The kernel's `struct rtentry` (linux/route.h, 64-bit), which glibc's libc crate lacks.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn configure(nic: &str, l: &pxe::dhcp_client::Lease) -> anyhow::Result<()> {
    let s = ctl_socket()?;
    let mut r = ifreq(nic)?;
    r.ifr_ifru.ifru_addr = sockaddr(l.ip);
    ioctl(
        &s,
        libc::SIOCSIFADDR,
        (&raw mut r).cast(),
        &format!("setting {nic}'s address"),
    )?;
    r.ifr_ifru.ifru_netmask = sockaddr(l.netmask);
    ioctl(
        &s,
        libc::SIOCSIFNETMASK,
        (&raw mut r).cast(),
        &format!("setting {nic}'s netmask"),
    )?;
    if let Some(gw) = l.router {
        let dev = CString::new(nic)?;
        let mut rt = RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr(Ipv4Addr::UNSPECIFIED),
            rt_gateway: sockaddr(gw),
            rt_genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
            rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: dev.as_ptr().cast_mut(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        if let Err(e) = ioctl(
            &s,
            libc::SIOCADDRT,
            (&raw mut rt).cast(),
            "adding the default route",
        ) {
            // The server is usually on the lab's own subnet: go on.
            eprintln!("network: {e:#}");
        }
    }
    Ok(())
}

/// DHCP on `nic` with our own client: broadcasts from port 68, answers taken from port 68.
fn dhcp(nic: &str, mac: &str, limit: Duration) -> anyhow::Result<pxe::dhcp_client::Lease> {
    use socket2::{Domain, Protocol, Socket, Type};
    let m: Vec<u8> = mac
        .split(':')
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect();
    let mac6: [u8; 6] = m.try_into().map_err(|_| anyhow::anyhow!("MAC {mac:?}"))?;
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(nic.as_bytes()))?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())
        .context("binding UDP port 68")?;
    let sock: std::net::UdpSocket = s.into();
    let start = Instant::now();
    let now = || start.elapsed().as_millis() as u64;
    let xid = u32::from_le_bytes(rand_bytes());
    let mut c = pxe::dhcp_client::Client::new(mac6, xid, now());
    let mut buf = vec![0u8; 1500];
    loop {
        if let Some(msg) = c.poll_transmit(now()) {
            let b = pxe::dhcp::encode(&msg).map_err(anyhow::Error::msg)?;
            if let Err(e) = sock.send_to(&b, (Ipv4Addr::BROADCAST, 67)) {
                eprintln!("network: sending DHCP: {e}");
            }
        }
        if let Some(l) = c.lease() {
            return Ok(l.clone());
        }
        if start.elapsed() > limit {
            bail!(
                "no DHCP answer with an address on {nic} within {}s (is a DHCP server on this network? \
                 with `drover serve --dhcp proxy` the lab's own server gives addresses)",
                limit.as_secs()
            );
        }
        let wait = c
            .deadline()
            .map_or(500, |d| d.saturating_sub(now()))
            .clamp(10, 500);
        sock.set_read_timeout(Some(Duration::from_millis(wait)))?;
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if let Ok(msg) = pxe::dhcp::decode(&buf[..n]) {
                c.handle(&msg, now());
            }
        }
    }
}

fn rand_bytes() -> [u8; 4] {
    let mut b = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    b
}

/// The machine's disks once drivers stopped adding any (the set unchanged for 2 s).
fn wait_disks(limit: Duration) -> Vec<imaging::disks::Disk> {
    let start = Instant::now();
    let mut last = Vec::new();
    let mut since = Instant::now();
    loop {
        let now =
            imaging::disks::scan(Path::new("/sys/block"), Path::new("/dev")).unwrap_or_default();
        if now != last {
            last = now;
            since = Instant::now();
        } else if !last.is_empty() && since.elapsed() >= Duration::from_secs(2) {
            return last;
        }
        if start.elapsed() > limit {
            return last;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_firmware_is_read_from_the_kernel_log_once_per_device_and_file() {
        let log = "<6>[    1.000000] e1000e 0000:00:19.0 eth0: registered PHC clock\n\
                   <4>[    3.210000] r8169 0000:03:00.0: Direct firmware load for rtl_nic/rtl8168h-2.fw failed with error -2\n\
                   <3>[    3.220000] r8169 0000:03:00.0: Unable to load firmware rtl_nic/rtl8168h-2.fw (-2)\n\
                   <4>[    3.300000] r8169 0000:03:00.0: Direct firmware load for rtl_nic/rtl8168h-2.fw failed with error -2\n\
                   bnx2 0000:04:00.0: Direct firmware load for bnx2/bnx2-mips-09-6.2.1b.fw failed with error -2\n";
        assert_eq!(
            missing_firmware(log),
            [
                "r8169 0000:03:00.0: rtl_nic/rtl8168h-2.fw",
                "bnx2 0000:04:00.0: bnx2/bnx2-mips-09-6.2.1b.fw"
            ]
        );
        assert!(missing_firmware("<6>[    0.0] Linux version 6.1\n").is_empty());
    }

    #[test]
    fn the_kernel_command_line_is_read() {
        let c = parse_cmdline(
            "BOOT_IMAGE=vmlinuz initrd=initrd.img console=ttyS0 drover.server=http://10.0.0.1:8080 \
             drover.token=drt_a_b drover.mac=52:54:00:AA:BB:CC drover.then=poweroff quiet\n",
        );
        assert_eq!(
            c,
            Cmdline {
                server: Some("http://10.0.0.1:8080".into()),
                token: Some("drt_a_b".into()),
                mac: Some("52:54:00:aa:bb:cc".into()),
                then: "poweroff".into(),
                register: false,
                read_back: false,
            }
        );
        let c = parse_cmdline("drover.server=http://s drover.mode=register drover.readback=1");
        assert!(c.register && c.read_back && c.token.is_none());
        assert_eq!(c.then, "reboot");
        assert_eq!(parse_cmdline("quiet").server, None);
    }
}
