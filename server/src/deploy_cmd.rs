//! `drover deploy` and `drover deployment list|show|start|cancel`: deployments over the
//! server's API. `deploy --wait` follows the deployment until every machine is done and exits
//! 1 if any failed (or it was cancelled).

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use transport::fmt;

use proto::api::{Deployment, Fallback, Layout, NewCapture, NewDeployment, Then, Transport};

use crate::client::{call, print_json, typed, Method, ServerArgs};

/// `drover deploy IMAGE --to ...`
#[derive(Debug, Args)]
pub(crate) struct DeployArgs {
    /// Image name (its newest version), NAME@VERSION or id (or --from).
    #[arg(required_unless_present = "from", conflicts_with = "from")]
    image: Option<String>,
    /// Rather than an image, the disk of this machine (MAC): its agent reads the used blocks
    /// and they stream to the targets as they are read (multicast, or unicast).
    #[arg(long, value_name = "MAC")]
    from: Option<String>,
    /// With --from: also keep what was read as an image of this name.
    #[arg(long, value_name = "NAME", requires = "from")]
    keep_as: Option<String>,
    /// Machines (MAC) and groups, comma-separated or repeated.
    #[arg(long, required = true, value_delimiter = ',')]
    to: Vec<String>,
    /// multicast (one stream to all, stragglers finish by the fallback), bittorrent (a swarm
    /// of the machines and the server's seed) or unicast.
    #[arg(long, default_value = "multicast")]
    transport: Transport,
    /// Multicast: where stragglers and late joiners finish: unicast, or bittorrent (the
    /// swarm of machines that have the image).
    #[arg(long, default_value = "unicast")]
    fallback: Fallback,
    /// Multicast: start once this many machines joined (default: all of them).
    #[arg(long)]
    min_machines: Option<i64>,
    /// Multicast: start after this long with whoever joined (e.g. 5m; default 10m unless
    /// --min-machines or --start-at is given).
    #[arg(long, value_parser = fmt::parse_duration)]
    max_wait: Option<Duration>,
    /// Multicast: start at this time (RFC 3339), whoever joined.
    #[arg(long)]
    start_at: Option<String>,
    /// What machines do once written: reboot or poweroff.
    #[arg(long, default_value = "reboot")]
    then: Then,
    #[command(flatten)]
    personalize: PersonalizeArgs,
    /// On a disk larger than the image's: `grow` the last partition and its filesystem to the
    /// disk's end, `keep` the image's layout, or scale every partition `proportional`ly
    /// (default: each machine's group's choice, else grow).
    #[arg(long)]
    layout: Option<Layout>,
    /// Wait until every machine is done; exit 1 if any failed.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// How a deployment (or a schedule's) personalizes its machines.
#[derive(Debug, Args)]
pub(crate) struct PersonalizeArgs {
    /// on: each machine's restored system gets its own hostname, machine-id and SSH host
    /// keys; off: the image is written untouched.
    #[arg(long = "personalize", default_value = "on", value_parser = ["on", "off"])]
    personalize: String,
    /// The hostname's template: {name} (the default), {mac}, {ip}, {group} and any variable
    /// set with `drover machine set --var` or `drover group set --var`.
    #[arg(long, value_name = "TEMPLATE")]
    hostname: Option<String>,
    /// Places a file into each restored system: PATH there, its content from LOCAL here (a
    /// template filled per machine), with LOCAL's mode. Repeatable.
    #[arg(long = "file", value_name = "PATH=LOCAL")]
    files: Vec<String>,
    /// A script run once at the restored system's first boot (a template).
    #[arg(long, value_name = "LOCAL")]
    first_boot: Option<std::path::PathBuf>,
    /// UEFI machines keep network boot first, the restored system next (so the lab can be
    /// redeployed without touching them); `off`: the restored system first. Unless given,
    /// each machine's group says (`drover group set G --keep-network-first on`).
    #[arg(long, value_name = "on|off", num_args = 0..=1, default_missing_value = "on",
          value_parser = ["on", "off"])]
    keep_network_first: Option<String>,
}

impl PersonalizeArgs {
    /// The personalization, with the local files read.
    pub(crate) fn read(self) -> anyhow::Result<proto::api::Personalize> {
        use std::os::unix::fs::PermissionsExt;
        let mut files = Vec::new();
        for f in &self.files {
            let Some((path, local)) = f.split_once('=') else {
                bail!("--file {f:?}: PATH=LOCAL (the path in the restored system, a local file)");
            };
            let content = std::fs::read_to_string(local)
                .map_err(|e| anyhow::anyhow!("--file {f:?}: reading {local}: {e}"))?;
            let mode = std::fs::metadata(local)?.permissions().mode() & 0o7777;
            files.push(proto::api::PlacedFile {
                path: path.to_string(),
                content,
                mode: Some(format!("{mode:04o}")),
            });
        }
        let first_boot = self
            .first_boot
            .map(|p| {
                std::fs::read_to_string(&p)
                    .map_err(|e| anyhow::anyhow!("--first-boot {}: {e}", p.display()))
            })
            .transpose()?;
        Ok(proto::api::Personalize {
            enabled: self.personalize == "on",
            hostname: self.hostname,
            files,
            first_boot,
            keep_network_first: self.keep_network_first.map(|k| k == "on"),
        })
    }
}

/// `drover capture MAC --name NAME`
#[derive(Debug, Args)]
pub(crate) struct CaptureArgs {
    /// The machine whose disk becomes the image (its agent reads and uploads it).
    mac: String,
    /// The image's name (a new version if it exists).
    #[arg(long)]
    name: String,
    /// What the machine does afterwards: reboot or poweroff.
    #[arg(long, default_value = "reboot")]
    then: Then,
    /// Wait until the image is committed; exit 1 if the capture failed.
    #[arg(long)]
    wait: bool,
    /// A LUKS passphrase, read from FILE as `cryptsetup --key-file` reads it (every byte):
    /// the machine's encrypted volumes it opens are stored as the ciphertext of their used
    /// blocks. Repeat for several. The server holds it in memory for the capture's agent only.
    #[arg(long, value_name = "FILE")]
    luks_key_file: Vec<std::path::PathBuf>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeploymentCommand {
    /// List deployments, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// One deployment with every machine's progress.
    Show {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Start a multicast deployment's stream now, with the machines that joined.
    Start {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Cancel a deployment: its machines stop.
    Cancel {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// `drover deploy`
pub(crate) fn deploy(a: DeployArgs, json: bool) -> anyhow::Result<()> {
    let max_wait = a.max_wait.map(|d| format!("{}s", d.as_secs_f64()));
    let d = call(
        &a.server,
        "/deployments",
        Method::post(&NewDeployment {
            image: a.image.unwrap_or_default(),
            from: a.from,
            keep_as: a.keep_as,
            to: a.to,
            transport: a.transport,
            fallback: a.fallback,
            min_machines: a.min_machines,
            max_wait,
            start_at: a.start_at,
            then: a.then,
            personalize: a.personalize.read()?,
            layout: a.layout,
        })?,
    )?;
    let id = d["id"].as_str().unwrap_or("?").to_string();
    if !a.wait {
        if json {
            print_json(&d);
        } else {
            println!(
                "deployment {id}: {} to {} machine(s) over {} ({})",
                d["image_name"].as_str().unwrap_or("?"),
                d["machines"],
                d["transport"].as_str().unwrap_or("?"),
                d["state"].as_str().unwrap_or("?"),
            );
        }
        return Ok(());
    }
    if !json {
        eprintln!(
            "deployment {id}: {} to {} machine(s) over {}",
            d["image_name"].as_str().unwrap_or("?"),
            d["machines"],
            d["transport"].as_str().unwrap_or("?")
        );
    }
    let end = follow(&a.server, &id, json)?;
    if json {
        print_json(&end);
    } else {
        print_deployment(&end)?;
    }
    match end["state"].as_str() {
        Some("done") => Ok(()),
        Some(s) => bail!("deployment {id} ended {s}"),
        None => bail!("deployment {id}: no state"),
    }
}

/// Key files as the API takes them (base64 of each file's bytes).
fn luks_keys(files: &[std::path::PathBuf]) -> anyhow::Result<proto::api::LuksKeys> {
    use base64::Engine;
    let mut keys = Vec::new();
    for f in files {
        let k = std::fs::read(f)
            .with_context(|| format!("reading the LUKS key file {}", f.display()))?;
        anyhow::ensure!(!k.is_empty(), "the LUKS key file {} is empty", f.display());
        keys.push(base64::engine::general_purpose::STANDARD.encode(k));
    }
    Ok(proto::api::LuksKeys(keys))
}

/// `drover capture`
pub(crate) fn capture(a: CaptureArgs, json: bool) -> anyhow::Result<()> {
    let d = call(
        &a.server,
        "/captures",
        Method::post(&NewCapture {
            mac: a.mac.clone(),
            name: a.name.clone(),
            then: a.then,
            luks_keys: luks_keys(&a.luks_key_file)?,
        })?,
    )?;
    let id = d["id"].as_str().unwrap_or("?").to_string();
    let line = format!("capture {id}: {} to image {:?}", a.mac, a.name);
    if !a.wait {
        if json {
            print_json(&d);
        } else {
            println!("{line} (waiting for its agent)");
        }
        return Ok(());
    }
    if !json {
        eprintln!("{line}");
    }
    let end = follow(&a.server, &id, json)?;
    if json {
        print_json(&end);
    }
    let task = &end["tasks"][0];
    match end["state"].as_str() {
        Some("done") => {
            if !json {
                println!(
                    "image {}: {} used, {} chunk(s) uploaded, {} already on the server",
                    end["image_name"].as_str().unwrap_or("?"),
                    fmt::bytes(task["bytes_done"].as_u64().unwrap_or(0)),
                    task["unicast_chunks"],
                    task["kept_chunks"]
                );
            }
            Ok(())
        }
        Some(s) => bail!(
            "capture {id} ended {s}: {}",
            task["reason"].as_str().unwrap_or("no reason given")
        ),
        None => bail!("capture {id}: no state"),
    }
}

/// Polls the deployment until it is over; the server may restart meanwhile.
fn follow(server: &ServerArgs, id: &str, json: bool) -> anyhow::Result<Value> {
    let mut last_line = String::new();
    let mut failures = 0;
    loop {
        match call(server, &format!("/deployments/{id}"), Method::Get) {
            Ok(v) => {
                failures = 0;
                let d: Deployment = typed(&v)?;
                if !d.state.active() {
                    return Ok(v);
                }
                let line = summary_line(&d);
                if !json && line != last_line {
                    eprintln!("{line}");
                    last_line = line;
                }
            }
            Err(e) => {
                failures += 1;
                // A server restart takes seconds; give it a few minutes.
                if failures > 480 {
                    return Err(e);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn summary_line(d: &Deployment) -> String {
    let states = d
        .task_states
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{}: {:.0} % of {}, {}; {states}",
        d.state,
        100.0 * d.bytes_done as f64 / d.bytes_total.max(1) as f64,
        fmt::bytes(d.bytes_total.max(1)),
        fmt::rate(d.rate_bps as f64),
    )
}

fn print_deployment(d: &Value) -> anyhow::Result<()> {
    let d: Deployment = typed(d)?;
    let mut personalize = match (&d.personalize.enabled, &d.personalize.hostname) {
        (false, _) => "not personalized".to_string(),
        (true, Some(h)) => format!("hostname {h}"),
        (true, None) => "hostname {name}".to_string(),
    };
    if d.personalize.enabled {
        personalize.push_str(match d.personalize.keep_network_first {
            Some(true) => ", UEFI: network boot first",
            Some(false) => ", UEFI: the restored system first",
            None => "",
        });
    }
    println!(
        "deployment {}: {} to {} via {}, {personalize}, {}",
        d.id, d.image_name, d.targets, d.transport, d.state
    );
    for t in &d.tasks {
        let eta = t
            .eta_seconds
            .map(|e| format!(", ETA {}", fmt::span(e as u64)))
            .unwrap_or_default();
        let c = &t.counters;
        println!(
            "  {:<17}  {:<16}  {:<10}  {:>5.1} %  {}{}  multicast {} unicast {} kept {}{}{}",
            t.mac,
            t.name.as_deref().unwrap_or("-"),
            t.state,
            t.percent,
            fmt::rate(t.rate_bps as f64),
            eta,
            c.multicast_chunks,
            c.unicast_chunks,
            c.kept_chunks,
            if c.swarm_bytes > 0 {
                format!(" swarm {}", fmt::bytes(c.swarm_bytes))
            } else {
                String::new()
            },
            t.reason
                .as_deref()
                .map(|r| format!("  ({r})"))
                .unwrap_or_default()
        );
        for l in &t.personalized {
            println!("      personalized: {l}");
        }
    }
    Ok(())
}

/// `drover deployment ...`
pub(crate) fn deployment(cmd: DeploymentCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        DeploymentCommand::List { limit, server } => {
            let all = call(&server, &format!("/deployments?limit={limit}"), Method::Get)?;
            if json {
                print_json(&all);
                return Ok(());
            }
            for d in all.as_array().into_iter().flatten() {
                println!(
                    "{}  {:<24}  {:<9}  {:<9}  {:>3} machine(s)  {}",
                    d["id"].as_str().unwrap_or("?"),
                    d["image_name"].as_str().unwrap_or("?"),
                    d["transport"].as_str().unwrap_or("?"),
                    d["state"].as_str().unwrap_or("?"),
                    d["machines"],
                    d["targets"].as_str().unwrap_or("")
                );
            }
        }
        DeploymentCommand::Show { id, server } => {
            let d = call(&server, &format!("/deployments/{id}"), Method::Get)?;
            if json {
                print_json(&d);
            } else {
                print_deployment(&d)?;
            }
        }
        DeploymentCommand::Start { id, server } => {
            act(&server, &id, "start", "starting now", json)?
        }
        DeploymentCommand::Cancel { id, server } => act(&server, &id, "cancel", "cancelled", json)?,
    }
    Ok(())
}

/// `POST /deployments/{id}/{verb}`, then says `done` (or prints the JSON).
fn act(server: &ServerArgs, id: &str, verb: &str, done: &str, json: bool) -> anyhow::Result<()> {
    let d = call(
        server,
        &format!("/deployments/{id}/{verb}"),
        Method::Post(json!({})),
    )?;
    if json {
        print_json(&d);
    } else {
        println!("deployment {id}: {done}");
    }
    Ok(())
}
