//! `drover-agent`: the program a lab machine runs (from the PXE initramfs, or as a normal
//! process against a disk file, a loop device or a block device). It says hello to the server
//! with its MAC and disk, waits for its task, receives the image (joining the deployment's
//! multicast session, or over unicast), writes the partition table and the used blocks
//! straight to the disk, checks every chunk's hash before writing it and reads it back after,
//! reports progress and the result, and exits.
//!
//! It keeps going through a server restart (retries with backoff) and resumes an interrupted
//! write: chunks already on the disk (hash checked) are neither received nor fetched again.
//! Run as a normal program it writes the disk it is given and exits. As the boot
//! environment's `/init` (PID 1) it brings the machine up itself, picks the disk the task
//! names, and reboots or powers off afterwards ([`boot`]).
//!
//! Exit codes: 0 the task is done; 1 it failed, was cancelled, or the agent could not work;
//! 2 bad usage; 3 no task came within `--max-idle`.

mod api;
mod boot;
mod capture;
mod fetch;
mod personalize;
mod swarm;
mod task;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

use api::{Api, CallError};
use proto::api as contract;

#[derive(Debug, Parser)]
#[command(
    name = "drover-agent",
    version,
    about = "Writes drover images to this machine's disk"
)]
pub(crate) struct Args {
    /// The drover server's URL (http://10.0.0.1:8080).
    #[arg(long, env = "DROVER_SERVER")]
    server: String,
    /// This machine's MAC address (default: the network interface's).
    #[arg(long)]
    mac: Option<String>,
    /// The task token (from the boot command line); without one, the server hands it out.
    #[arg(long, env = "DROVER_TASK_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The disk to write: a block device, or a file (created, or grown to the image's size).
    /// Repeat it to write several disks at once: each chunk received once, written to every
    /// disk and read back from each, each disk laid out and personalized.
    #[arg(long = "disk", required = true, value_name = "DISK")]
    disks: Vec<PathBuf>,
    /// The first of `disks` (what reads one disk uses: a capture, the hello).
    #[arg(skip)]
    disk: PathBuf,
    /// Network interface for multicast (default: the only one with an IPv4 address).
    #[arg(long)]
    iface: Option<String>,
    /// After writing, read every chunk back from the disk once more and check its hash.
    #[arg(long)]
    read_back: bool,
    /// Give up (exit 3) when no task came within this long (default: wait forever).
    #[arg(long, value_parser = transport::fmt::parse_duration)]
    max_idle: Option<Duration>,
    /// Boot environment: the disk is chosen among the machine's after the task names it.
    #[arg(skip)]
    choose_disk: bool,
    /// Boot environment: registering an unknown machine (hello, then back to its disk).
    #[arg(skip)]
    register: bool,
    /// Boot environment: devices whose firmware file was missing (told to the server).
    #[arg(skip)]
    missing_firmware: Vec<String>,
}

fn main() -> ExitCode {
    if std::process::id() == 1 {
        return boot::main();
    }
    let args = match Args::try_parse() {
        Ok(mut a) => {
            a.disk = a.disks[0].clone();
            a
        }
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging();
    let rt = match transport::session_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drover-agent: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let code = match rt.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("drover-agent: {e:#}");
            ExitCode::FAILURE
        }
    };
    if let Some(kib) = peak_memory_kib() {
        eprintln!("peak memory: {} MiB", kib.div_ceil(1024));
    }
    code
}

/// This process's peak resident memory (VmHWM), KiB.
fn peak_memory_kib() -> Option<u64> {
    memory_kib("VmHWM:")
}

/// A memory figure of this process's `/proc/self/status` (`VmHWM:`, `VmRSS:`), KiB.
pub(crate) fn memory_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub(crate) fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

pub(crate) async fn run(mut args: Args) -> anyhow::Result<ExitCode> {
    let iface = transport::net::iface(args.iface.as_deref())?;
    let mac = match &args.mac {
        Some(m) => m.clone(),
        None => std::fs::read_to_string(format!("/sys/class/net/{}/address", iface.name))
            .with_context(|| format!("reading the MAC address of {} (give --mac)", iface.name))?
            .trim()
            .to_string(),
    };
    let mut api = Api::new(&args.server)?;
    api.token = args.token.clone();
    let disks = if args.choose_disk {
        machine_disks()
            .iter()
            .map(|d| contract::HelloDisk {
                path: Some(d.path.display().to_string()),
                size: Some(d.size),
                serial: d.serial.clone(),
                model: d.model.clone(),
                removable: d.removable,
            })
            .collect()
    } else {
        args.disks.iter().map(|d| disk_inventory(d)).collect()
    };
    eprintln!(
        "drover-agent {}: {mac} on {} ({}), disk {}, server {}",
        env!("CARGO_PKG_VERSION"),
        iface.name,
        iface.addr,
        if args.choose_disk {
            "chosen by the task".to_string()
        } else {
            args.disks
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
        api.base
    );
    let started = Instant::now();
    let hello = contract::Hello {
        mac: mac.clone(),
        disks,
        version: Some(env!("CARGO_PKG_VERSION").to_string()),
        wait: true,
        missing_firmware: args.missing_firmware.clone(),
    };
    let task = loop {
        let r = api
            .retry("hello", None, || {
                api.post::<_, contract::HelloReply>("/agent/hello", &hello)
            })
            .await;
        let r = match r {
            Ok(r) => r,
            // A stale token from the command line (its task is over): ask without it.
            Err(CallError::Refused(..) | CallError::Over(_)) if api.token.is_some() => {
                api.token = None;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(t) = r.token {
            api.token = Some(t);
        }
        if let (Some(task), Some(_)) = (r.task, &api.token) {
            break task;
        }
        if args.register {
            eprintln!(
                "registered as {} ({}); no task for it yet",
                r.machine.name, r.machine.mac
            );
            return Ok(ExitCode::from(3));
        }
        if args.max_idle.is_some_and(|m| started.elapsed() >= m) {
            eprintln!("no task within {:?}", args.max_idle.unwrap_or_default());
            return Ok(ExitCode::from(3));
        }
        // 0 after a waiting hello (the server held it until a task came, or for a while).
        let poll = r.poll_ms.min(60_000);
        tokio::time::sleep(Duration::from_millis(poll)).await;
    };
    eprintln!(
        "task {} of deployment {}: {} over {}",
        task.id, task.deployment, task.image.name, task.transport,
    );
    if args.choose_disk {
        let sel = match task
            .disk
            .as_deref()
            .map(str::parse::<imaging::disks::Selector>)
        {
            None => None,
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                let why = format!("the task's disk: {e}");
                return task::report(&api, task::Outcome::Failed(why, Default::default())).await;
            }
        };
        let all = machine_disks();
        match imaging::disks::choose_all(&all, sel.as_ref()) {
            Ok(chosen) => {
                for d in &chosen {
                    eprintln!("writing {d}");
                }
                args.disks = chosen.iter().map(|d| d.path.clone()).collect();
                args.disk = args.disks[0].clone();
            }
            Err(why) => {
                return task::report(&api, task::Outcome::Failed(why, Default::default())).await;
            }
        }
    }
    let outcome = task::run(&api, &iface, &args, task).await;
    task::report(&api, outcome).await
}

/// The machine's whole disks (in the boot environment).
fn machine_disks() -> Vec<imaging::disks::Disk> {
    imaging::disks::scan(
        std::path::Path::new("/sys/block"),
        std::path::Path::new("/dev"),
    )
    .unwrap_or_default()
}

/// The disk as the server's inventory records it: size, and serial for a block device.
fn disk_inventory(path: &std::path::Path) -> contract::HelloDisk {
    use imaging::device::BlockDevice;
    let size = imaging::device::FileDevice::open_read(path)
        .ok()
        .map(|d| d.len());
    let serial = std::fs::canonicalize(path)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .and_then(|name| {
            ["serial", "device/serial", "wwid", "device/wwid"]
                .iter()
                .find_map(|f| std::fs::read_to_string(format!("/sys/class/block/{name}/{f}")).ok())
        })
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    contract::HelloDisk {
        path: Some(path.display().to_string()),
        size,
        serial,
        ..contract::HelloDisk::default()
    }
}
