//! `drover schedule add|list|show|rm`: scheduled redeploys and wake-ups over the server's API.

use std::time::Duration;

use clap::Subcommand;
use proto::api::{Fallback, NewSchedule, ScheduleAction, Then, Transport};
use serde_json::{json, Value};
use transport::fmt;

use crate::client::{call, print_json, Method, ServerArgs};

#[derive(Debug, Subcommand)]
pub(crate) enum ScheduleCommand {
    /// Add a schedule: redeploy an image (--image) or wake machines (--wake) at cron times
    /// (--cron) or once (--at).
    Add(Box<AddSchedule>),
    /// List schedules with their next and last runs.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// One schedule and its runs.
    Show {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove a schedule (a deployment it started goes on).
    Rm {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// `drover schedule add`'s arguments (boxed: the largest variant by far).
#[derive(Debug, clap::Args)]
pub(crate) struct AddSchedule {
    /// A name for it (unique).
    name: String,
    /// Cron expression in the server's local time: "minute hour day month weekday"
    /// (e.g. "0 2 * * 1-5"), or @daily, @weekly...
    #[arg(long, conflicts_with = "at", required_unless_present = "at")]
    cron: Option<String>,
    /// Once, at this time (RFC 3339, e.g. 2026-12-01T02:00:00+01:00).
    #[arg(long)]
    at: Option<String>,
    /// Redeploy this image (a name runs its newest version at each run).
    #[arg(long, conflicts_with = "wake", required_unless_present = "wake")]
    image: Option<String>,
    /// Only wake the machines.
    #[arg(long)]
    wake: bool,
    /// Machines (MAC) and groups, comma-separated or repeated.
    #[arg(long, required = true, value_delimiter = ',')]
    to: Vec<String>,
    /// multicast, bittorrent or unicast.
    #[arg(long, default_value = "multicast")]
    transport: Transport,
    /// Multicast: how stragglers and late joiners finish (unicast or bittorrent).
    #[arg(long, default_value = "unicast")]
    fallback: Fallback,
    /// Multicast: start once this many machines joined, before the due time.
    #[arg(long)]
    min_machines: Option<i64>,
    /// Multicast, for a run that starts late: start after this long with whoever joined.
    #[arg(long, value_parser = fmt::parse_duration)]
    max_wait: Option<Duration>,
    /// What machines do once written: reboot or poweroff.
    #[arg(long, default_value = "reboot")]
    then: Then,
    /// Create the deployment and wake the machines this long before the due time
    /// (default: the server's wake_lead, 5m; 0 for no wake-up).
    #[arg(long, value_parser = fmt::parse_duration)]
    wake_lead: Option<Duration>,
    #[command(flatten)]
    personalize: crate::deploy_cmd::PersonalizeArgs,
    /// On disks larger than the image's: grow, keep or proportional (default: each
    /// machine's group's choice, else grow).
    #[arg(long)]
    layout: Option<proto::api::Layout>,
    #[command(flatten)]
    server: ServerArgs,
}

fn secs(d: Option<Duration>) -> Option<String> {
    d.map(|d| format!("{}s", d.as_secs_f64()))
}

fn line(s: &Value) -> String {
    let t = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let when = match (&s["cron"], &s["at_ms"]) {
        (Value::String(c), _) => format!("cron {c:?}"),
        _ => "once".to_string(),
    };
    let what = match t(&s["action"]).as_str() {
        "deploy" if s["transport"] == "multicast" && s["fallback"] == "bittorrent" => format!(
            "deploy {} via multicast (stragglers: bittorrent)",
            t(&s["image"])
        ),
        "deploy" => format!("deploy {} via {}", t(&s["image"]), t(&s["transport"])),
        _ => "wake".to_string(),
    };
    let last = s["runs"]
        .as_array()
        .and_then(|r| r.first())
        .map(|r| format!("; last: {} ({})", t(&r["outcome"]), t(&r["detail"])))
        .unwrap_or_default();
    format!(
        "{:<16}  {when}  {what} to {}  next: {}{last}",
        t(&s["name"]),
        t(&s["targets"]),
        s["next_due"].as_str().unwrap_or("never"),
    )
}

/// `drover schedule ...`
pub(crate) fn schedule(cmd: ScheduleCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        ScheduleCommand::Add(add) => {
            let AddSchedule {
                name,
                cron,
                at,
                image,
                wake,
                to,
                transport,
                fallback,
                min_machines,
                max_wait,
                then,
                wake_lead,
                personalize,
                layout,
                server,
            } = *add;
            let s = call(
                &server,
                "/schedules",
                Method::post(&NewSchedule {
                    name,
                    cron,
                    at,
                    action: Some(if wake {
                        ScheduleAction::Wake
                    } else {
                        ScheduleAction::Deploy
                    }),
                    image,
                    to,
                    transport,
                    fallback,
                    min_machines,
                    max_wait: secs(max_wait),
                    then,
                    wake_lead: secs(wake_lead),
                    personalize: personalize.read()?,
                    layout,
                })?,
            )?;
            if json {
                print_json(&s);
            } else {
                println!("{}", line(&s));
            }
        }
        ScheduleCommand::List { server } => {
            let all = call(&server, "/schedules", Method::Get)?;
            if json {
                print_json(&all);
            } else {
                for s in all.as_array().into_iter().flatten() {
                    println!("{}", line(s));
                }
            }
        }
        ScheduleCommand::Show { name, server } => {
            let s = call(
                &server,
                &format!("/schedules/{}", crate::client::urlencode(&name)),
                Method::Get,
            )?;
            if json {
                print_json(&s);
                return Ok(());
            }
            println!("{}", line(&s));
            for r in s["runs"].as_array().into_iter().flatten() {
                println!(
                    "  due {}  {:<8}  {}",
                    r["due_ms"]
                        .as_i64()
                        .map(|ms| fmt::time((ms / 1000) as u64))
                        .unwrap_or_default(),
                    r["outcome"].as_str().unwrap_or("-"),
                    r["detail"].as_str().unwrap_or("")
                );
            }
        }
        ScheduleCommand::Rm { name, server } => {
            call(
                &server,
                &format!("/schedules/{}", crate::client::urlencode(&name)),
                Method::Delete,
            )?;
            if json {
                print_json(&json!({ "removed": name }));
            } else {
                println!("schedule {name:?} removed");
            }
        }
    }
    Ok(())
}
